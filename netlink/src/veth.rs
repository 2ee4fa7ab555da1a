//! veth pairs, created in one request with the peer born inside the pod namespace.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use crate::{link, nl, NetlinkError};

/// Everything about a veth pair that is set in its creating request.
#[derive(Debug)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in the handle's namespace (<= 15 bytes).
    pub host_name: &'a str,
    /// MAC of the host end.
    pub host_mac: [u8; 6],
    /// Name of the end created in `peer_netns` (e.g. `"eth0"`).
    pub peer_name: &'a str,
    /// MAC of the peer end.
    pub peer_mac: [u8; 6],
    /// Network namespace the peer is created in (fd of /var/run/netns/X or /proc/PID/ns/net).
    pub peer_netns: BorrowedFd<'a>,
    /// MTU of both ends; kernel default (1500) when `None`.
    pub mtu: Option<u32>,
    /// Create the peer UP. `false`: the peer is created down, so the pair has no carrier
    /// until the caller sets it up (after [`link::no_ipv6_link_local`] on it, in the pod
    /// namespace): neither end then ever generates an IPv6 link-local address.
    pub peer_up: bool,
}

/// One end's attributes. Both ends are created with **one** TX and one RX queue: without
/// IFLA_NUM_TX/RX_QUEUES the kernel allocates one per possible CPU and `veth_newlink` then
/// cuts the real number back to 1 on the registered device — `netif_set_real_num_tx_queues`
/// shrinking a live device waits for an expedited RCU grace period (`synchronize_net`), under
/// rtnl_lock, once per end: two per ADD, which every concurrent ADD waits behind (issue 14,
/// perf sched profile in docs/benchmarks.md). The resulting device is the same (one real
/// queue each way); only the ceiling for a later `ethtool -L` is gone, which pods never use.
fn new_message(name: &str, mac: [u8; 6], mtu: Option<u32>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    msg.attributes.push(LinkAttribute::NumTxQueues(1));
    msg.attributes.push(LinkAttribute::NumRxQueues(1));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg
}

/// The RTM_NEWLINK message [`create`] sends first (exposed for tests and debugging).
///
/// The pod end is the *main* device of the request (IFLA_NET_NS_FD at top level, IFF_UP in
/// its ifinfomsg) and the host end is the VETH_INFO_PEER, which the kernel creates in the
/// socket's namespace. This orientation matters: veth_newlink() configures the peer (applies
/// its ifinfomsg flags) before it links the two ends, so IFF_UP in the *peer* header always
/// fails with ENOTCONN from veth_open() (`ip link add a up type veth peer name b up` fails
/// the same way). The main device is configured after the pair is linked, so it can be
/// created UP. The host end, in the handle's namespace, is then set UP by name.
pub fn create_message(spec: &VethSpec<'_>) -> LinkMessage {
    let host = new_message(spec.host_name, spec.host_mac, spec.mtu);
    let mut pod = new_message(spec.peer_name, spec.peer_mac, spec.mtu);
    if spec.peer_up {
        pod.header.flags = LinkFlags::Up;
        pod.header.change_mask = LinkFlags::Up;
    }
    pod.attributes
        .push(LinkAttribute::NetNsFd(spec.peer_netns.as_raw_fd()));
    pod.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(host))),
    ]));
    pod
}

/// What [`create_pair`] made: the host end's ifindex and, when the kernel said, the pod end's
/// ifindex in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// ifindex of the host end (in the handle's namespace).
    pub index: u32,
    /// ifindex of the pod end in `peer_netns` (the host end's IFLA_LINK), so the caller needs
    /// no lookup there; `None` if the kernel did not report it.
    pub peer_index: Option<u32>,
}

/// Creates the veth pair with one RTM_NEWLINK (`NLM_F_CREATE|NLM_F_EXCL`): the pod end is
/// born directly in `peer_netns` (IFLA_NET_NS_FD), UP if [`VethSpec::peer_up`]; the host end
/// in the handle's namespace; MACs and MTU of both set in the same request. Then, pipelined
/// in one round trip, the host end's ifindex (and its peer's, IFLA_LINK) is read back, it
/// gets IPv6 address generation mode `none` (see [`link::no_ipv6_link_local`]; before it is
/// UP, since the kernel refuses IFLA_AF_SPEC in a creating request and handles it after the
/// flags in one setting request) and is set UP by name. See [`create_message`] for why both
/// ends cannot be created UP in one request.
///
/// The RTM_GETLINK goes **before** the UP (issue 14): the kernel's RTM_GETLINK first runs the
/// link's pending link-watch event (`linkwatch_sync_dev`; the pair was created without carrier).
/// Run while the host end is still down, that event does nothing; run once it is UP without
/// carrier (its peer is still down), it deactivated the device's queues
/// (`dev_deactivate` → `synchronize_net`): an expedited RCU grace period under rtnl_lock on
/// every ADD, which every concurrent ADD waited behind. When the pod end comes UP, both ends
/// get carrier and are activated (no grace period).
///
/// An existing host name, or an existing peer name in the pod namespace, fails with EEXIST
/// ([`NetlinkError::is_exists`]), and nothing is created or deleted. If the second step
/// fails, the pair this call created is deleted again before the error is returned: a
/// failed call leaves nothing behind and never touches a link it did not create.
pub async fn create_pair(handle: &Handle, spec: &VethSpec<'_>) -> Result<Created, NetlinkError> {
    link::check_name(spec.host_name)?;
    link::check_name(spec.peer_name)?;
    nl::request(
        handle,
        "RTM_NEWLINK veth",
        RouteNetlinkMessage::NewLink(create_message(spec)),
        nl::CREATE_EXCL,
    )
    .await?;
    let mut up = LinkMessage::default();
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    up.attributes
        .push(LinkAttribute::IfName(spec.host_name.to_owned()));
    // Pipelined: the requests are queued on the socket before any reply is awaited, and the
    // kernel handles them in order (get, mode, then set UP), so this costs one round trip.
    // (do_setlink() does not honour NLM_F_ECHO, so the ifindex needs the get.)
    let (got, _mode, up) = futures::join!(
        link::get_by_name(handle, spec.host_name),
        // Best effort: a kernel without IPv6 refuses it (EAFNOSUPPORT) and needs none.
        link::no_ipv6_link_local(handle, link::Which::Name(spec.host_name)),
        nl::request(
            handle,
            "RTM_NEWLINK veth host up",
            RouteNetlinkMessage::NewLink(up),
            0,
        ),
    );
    let done = up.and_then(|_| {
        let host = got?.ok_or(NetlinkError::kernel(
            "RTM_GETLINK after veth create",
            libc::ENODEV,
        ))?;
        Ok(Created {
            index: host.index,
            peer_index: host.link.filter(|i| *i != 0),
        })
    });
    if done.is_err() {
        // The pair is this call's own (the EXCL create succeeded): remove it, both ends.
        let _ = link::delete_by_name(handle, spec.host_name).await;
    }
    done
}

/// [`create_pair`], returning the host end's ifindex only.
pub async fn create(handle: &Handle, spec: &VethSpec<'_>) -> Result<u32, NetlinkError> {
    create_pair(handle, spec).await.map(|c| c.index)
}
