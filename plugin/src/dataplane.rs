//! The data plane recipe (DESIGN.md §3), built with rtnetlink, every step undoable.
//!
//! Pod namespace: `$IFNAME` with `IP/32`, up, no IPv6 address generation (both veth ends);
//! `lo` up; permanent neighbour
//! `169.254.1.1 → host veth MAC`; and, for the default interface (`eth0`) only,
//! `169.254.1.1 dev $IFNAME scope link` and `default via 169.254.1.1`.
//! Host namespace: host veth up, no address; `IP/32 dev <host veth> scope link proto 171`.
//!
//! IPv6 (dual-stack, issue 11; docs/dual-stack.md), when the agent gave an IPv6 address: both
//! veth ends `accept_ra=0` before the pair has carrier; pod: `IP/128` with `IFA_F_NODAD` (never
//! tentative), permanent neighbour `fe80::1 → host veth MAC` and, for `eth0`, `default via
//! fe80::1 dev eth0`; host: `IP/128 dev <host veth> proto 171` and a permanent neighbour
//! `IP → pod veth MAC`. Neither side ever sends NDP and no link-local address is needed.
//!
//! The veth is created in one request with the peer born in the pod namespace (no link moves,
//! no rtnl_lock contention from moving). The pod side is configured on a dedicated thread that
//! entered the pod namespace (setns is per thread) while the host route goes in from this one.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

use rtnetlink::Handle;
use vpcnet_netlink::{
    address, link, neighbour, netns, route, rule, sysctl, veth, NetlinkError, RTPROT_VPCNET,
};
use vpcnet_proto::naming;

use crate::error::CniError;
use crate::result::Wired;
use vpcnet_proto::attachment::{self, GATEWAY, GATEWAY6, POD_PREFIX_LEN6};

/// A pod attachment's addresses: one per family the agent serves, at least one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl std::fmt::Display for PodIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} and {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => write!(f, "no address"),
        }
    }
}

/// What a new attachment needs.
#[derive(Debug)]
pub struct Plan<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns_path: &'a str,
    pub netns: &'a OwnedFd,
    pub ips: PodIps,
    pub mtu: Option<u32>,
}

const LOOPBACK_INDEX: u32 = 1;

/// Opens the pod namespace, refusing anything that is not one (code 4, naming CNI_NETNS).
/// `given`: the caller already opened CNI_NETNS (the `vpcnet` front, in the runtime's mount
/// namespace); it is checked the same way and used instead of the path.
pub fn open_netns(path: &std::path::Path, given: Option<&OwnedFd>) -> Result<OwnedFd, CniError> {
    let env_err =
        |e: &dyn std::fmt::Display| CniError::env("CNI_NETNS", format!("{}: {e}", path.display()));
    match given {
        Some(fd) => {
            let fd = fd.try_clone().map_err(|e| env_err(&e))?;
            netns::check(fd.as_fd(), path).map_err(|e| env_err(&e))?;
            Ok(fd)
        }
        None => netns::open(path).map_err(|e| env_err(&e)),
    }
}

/// Refuses a CNI_NETNS that names the host's namespace instead of a pod's (issue 9 item 2):
/// the plugin's own (`/proc/self/ns/net`: the runtime runs the plugin in the node's
/// namespace). [`refuse_agent_netns`] checks vpcnetd's once the agent is connected. Code 4
/// naming CNI_NETNS; both run before anything is asked or changed.
///
/// Invariant: the plugin only ever wires a namespace that is neither its own nor the
/// agent's, so no ADD can give the node an `eth0` with a pod address or replace the node's
/// default route, and no DEL can take the node's routes with it. Namespaces are compared by
/// identity (nsfs device and inode), so every path to the same namespace is caught —
/// `/run/netns/<name>` bind mounts, `/proc/<pid>/ns/net`, `/proc/self/ns/net`.
pub fn refuse_own_netns(ns: &OwnedFd, path: &std::path::Path) -> Result<(), CniError> {
    let id = netns_id(ns, path)?;
    let own = netns::id_of_path(std::path::Path::new("/proc/self/ns/net"))
        .map_err(|e| CniError::Io(format!("reading /proc/self/ns/net: {e}")))?;
    if id == own {
        return Err(CniError::env(
            "CNI_NETNS",
            format!(
                "{} is the host's network namespace (the plugin's own), not a pod's: \
                 refusing to wire it",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a CNI_NETNS that is vpcnetd's namespace (the node's): `agent_pid` is the peer of
/// the agent socket, when this process can see it. When it cannot (another pid namespace),
/// [`refuse_own_netns`] still holds in every supported deployment: vpcnetd runs with
/// hostNetwork, like the runtime that runs the plugin.
pub fn refuse_agent_netns(
    ns: &OwnedFd,
    path: &std::path::Path,
    agent_pid: Option<u32>,
) -> Result<(), CniError> {
    let id = netns_id(ns, path)?;
    let agent = agent_pid.and_then(|pid| {
        netns::id_of_path(std::path::Path::new(&format!("/proc/{pid}/ns/net"))).ok()
    });
    if agent == Some(id) {
        return Err(CniError::env(
            "CNI_NETNS",
            format!(
                "{} is vpcnetd's network namespace (the node's), not a pod's: \
                 refusing to wire it",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn netns_id(ns: &OwnedFd, path: &std::path::Path) -> Result<netns::NetnsId, CniError> {
    netns::id(ns.as_fd())
        .map_err(|e| CniError::env("CNI_NETNS", format!("{}: {e}", path.display())))
}

/// The interface that owns the pod's default route (issue 9 item 6). Runtimes (containerd,
/// CRI-O) name a pod's primary interface `eth0`; Multus names further ones `net1`, `net2`…
pub const DEFAULT_IFNAME: &str = "eth0";

/// Whether `ifname` gets the default route (and the route to the gateway) in the pod.
///
/// Invariant: the main table's routes belong to exactly one interface, `eth0`. Any other
/// interface of the same pod gets its address, the gateway's neighbour entry and routes in a
/// table of its own selected by its source address ([`secondary_table`]), so adding or
/// deleting it never replaces or removes the routes `eth0` depends on (the gateway and
/// default routes are keyed by destination alone and would otherwise be taken over).
pub fn owns_default_route(ifname: &str) -> bool {
    ifname == DEFAULT_IFNAME
}

/// Routing table of a secondary interface with pod ifindex `index`: `from <its address>`
/// looks up this table, whose default route leaves through that interface.
///
/// Invariant: traffic is routed symmetrically per interface. A reply sourced from a secondary
/// interface's address leaves through that interface, so strict `rp_filter` (the node's, which
/// new pod namespaces inherit, or the host's on the veths) never drops a secondary interface's
/// traffic, and the main table (eth0's) is never touched.
fn secondary_table(index: u32) -> u32 {
    SECONDARY_TABLE_BASE.saturating_add(index)
}
const SECONDARY_TABLE_BASE: u32 = 10_000;
/// Priority of the per-interface `from` rules: before the main table (32766).
const SECONDARY_RULE_PRIORITY: u32 = 1_000;

/// The routes of secondary interface `index` in its own table (gateway on-link, default).
fn secondary_routes(index: u32) -> [route::RouteV4; 2] {
    let table = secondary_table(index);
    [
        route::RouteV4 {
            dst: GATEWAY,
            dst_len: 32,
            gateway: None,
            oif: Some(index),
            protocol: RTPROT_VPCNET,
            scope: route::RT_SCOPE_LINK,
            kind: route::RTN_UNICAST,
            table,
            metric: 0,
        },
        route::RouteV4 {
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: Some(GATEWAY),
            oif: Some(index),
            protocol: RTPROT_VPCNET,
            scope: route::RT_SCOPE_UNIVERSE,
            kind: route::RTN_UNICAST,
            table,
            metric: 0,
        },
    ]
}

/// The IPv6 default route of a pod interface in `table` (`default via fe80::1 dev <index>`).
fn default_route6(index: u32, table: u32) -> route::RouteV6 {
    route::RouteV6 {
        dst: Ipv6Addr::UNSPECIFIED,
        dst_len: 0,
        gateway: Some(GATEWAY6),
        oif: Some(index),
        protocol: RTPROT_VPCNET,
        kind: route::RTN_UNICAST,
        table,
    }
}

/// Secondary interface: its table's routes, then the `from` rule that selects the table, per
/// family. (Deleting the interface takes the table's routes with it; the rule then finds an
/// empty table and falls through to the main one, and dies with the pod's namespace.)
async fn route_secondary(h: &Handle, index: u32, ips: PodIps) -> Result<(), CniError> {
    if let Some(ip) = ips.v4 {
        route_secondary_v4(h, index, ip).await?;
    }
    if let Some(ip6) = ips.v6 {
        route::add_route_v6(h, &default_route6(index, secondary_table(index)), true)
            .await
            .map_err(|e| {
                CniError::dataplane("adding the secondary interface's IPv6 default route", e)
            })?;
        rule::add_from_v6(h, ip6, secondary_table(index), SECONDARY_RULE_PRIORITY)
            .await
            .map_err(|e| {
                CniError::dataplane("adding the secondary interface's IPv6 source rule", e)
            })?;
    }
    Ok(())
}

async fn route_secondary_v4(h: &Handle, index: u32, ip: Ipv4Addr) -> Result<(), CniError> {
    let [gw, default] = secondary_routes(index);
    route::add_route(h, &gw, true)
        .await
        .map_err(|e| CniError::dataplane("adding the secondary interface's gateway route", e))?;
    route::add_route(h, &default, true)
        .await
        .map_err(|e| CniError::dataplane("adding the secondary interface's default route", e))?;
    rule::add_from(h, ip, secondary_table(index), SECONDARY_RULE_PRIORITY)
        .await
        .map_err(|e| CniError::dataplane("adding the secondary interface's source rule", e))
}

/// The host end of a freshly created veth pair.
#[derive(Debug, Clone)]
pub struct HostVeth {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// The pod end's ifindex in the pod namespace, when the creating ADD learnt it (the host
    /// end's IFLA_LINK): the pod side then needs no lookup.
    pub peer_index: Option<u32>,
}

/// What creating the veth pair gave.
#[derive(Debug)]
pub enum Created {
    /// This ADD created the pair: it is this ADD's to remove if a later step fails.
    New(HostVeth),
    /// A name was taken (EEXIST): the host veth's (an attachment of this container and
    /// interface exists) or `ifname` in the pod namespace. Nothing was created or deleted;
    /// [`resolve_taken`] decides what it is once the agent has said whether the address was
    /// already held.
    Taken,
}

/// Creates the veth pair: host end here (UP), peer born as `ifname` in the pod namespace (down:
/// `configure_pod` sets it UP once IPv6 address generation is off).
/// Deletes nothing: a taken name is reported as [`Created::Taken`], and a pair whose second
/// step failed is removed by [`veth::create`] itself (it is this call's own).
pub async fn create_veth(
    host: &Handle,
    container_id: &str,
    ifname: &str,
    netns_path: &str,
    netns: &OwnedFd,
    mtu: Option<u32>,
) -> Result<Created, CniError> {
    let name = naming::host_veth_name(container_id, ifname);
    let mac = naming::host_veth_mac(container_id, ifname);
    let spec = veth::VethSpec {
        host_name: &name,
        host_mac: mac,
        peer_name: ifname,
        peer_mac: naming::pod_mac(container_id, ifname),
        peer_netns: netns.as_fd(),
        mtu,
        // Set UP by `configure_pod`, after IPv6 address generation is off (issue 14).
        peer_up: false,
    };
    match veth::create_pair(host, &spec).await {
        Ok(made) => Ok(Created::New(HostVeth {
            name,
            index: made.index,
            mac,
            peer_index: made.peer_index,
        })),
        Err(e) if e.is_exists() => Ok(Created::Taken),
        Err(e) => Err(CniError::dataplane(
            &format!("creating veth {name} with peer {ifname} in {netns_path}"),
            e,
        )),
    }
}

/// Deleting the host end deletes the peer and with it every pod-side address, route and
/// neighbour; the host route goes with its device.
pub async fn remove_veth(host: &Handle, veth: &HostVeth) {
    let _ = link::delete_by_index(host, veth.index).await;
}

/// Addresses and routes on both sides of a veth. On failure the caller removes the veth if
/// this ADD created it.
///
/// The pod side goes through a netlink socket created inside the pod namespace (see
/// [`netns::connect_in`]), so both sides' requests run concurrently from this one thread.
///
/// IPv6: `accept_ra=0` goes on both ends first, while the pair has no carrier yet (the pod
/// end is still down; [`configure_pod`] sets it UP): the host end's from this thread, the
/// pod end's through a knob opened while this thread was in the pod namespace for its
/// netlink socket ([`netns::connect_in_opening`]). The host side's IPv6 route and neighbour ride in the same pipeline as the IPv4
/// route, so a dual-stack ADD costs no extra round trip on either socket.
pub async fn wire(host: &Handle, veth: &HostVeth, plan: &Plan<'_>) -> Result<(), CniError> {
    let ifname = plan.ifname;
    let ips = plan.ips;
    // The pod end's accept_ra knob is opened while this thread is in the pod namespace for
    // its netlink socket anyway (the file keeps that namespace), and written before anything
    // is sent that could bring the pod end UP: no thread and no setns of its own (issue 14).
    let ra_fail =
        |e| CniError::dataplane(&format!("setting accept_ra=0 on {ifname} in the pod"), e);
    let (pod, pod_ra) = match ips.v6 {
        Some(_) => {
            let knob = sysctl::ipv6_conf(ifname, "accept_ra").map_err(ra_fail)?;
            let (pod, ra) = netns::connect_in_opening(plan.netns.as_fd(), &knob)
                .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?;
            (pod, Some(ra))
        }
        None => (
            netns::connect_in(plan.netns.as_fd())
                .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?,
            None,
        ),
    };
    if let Some(pod_ra) = pod_ra {
        no_accept_ra_host(&veth.name)?;
        sysctl::write_file(pod_ra, "0").map_err(ra_fail)?;
    }
    let pod_mac = naming::pod_mac(plan.container_id, ifname);
    let (host_route, host_route6, host_neigh6, pod_side) = futures::join!(
        async {
            match ips.v4 {
                Some(ip) => {
                    route::add_route(host, &attachment::host_route(ip, Some(veth.index)), true)
                        .await
                        .map_err(|e| CniError::dataplane(&format!("adding host route {ip}/32"), e))
                }
                None => Ok(()),
            }
        },
        async {
            match ips.v6 {
                Some(ip6) => {
                    route::add_route_v6(host, &attachment::host_route6(ip6, Some(veth.index)), true)
                        .await
                        .map_err(|e| {
                            CniError::dataplane(
                                &format!(
                                    "adding host route {ip6}/{POD_PREFIX_LEN6} dev {}",
                                    veth.name
                                ),
                                e,
                            )
                        })
                }
                None => Ok(()),
            }
        },
        async {
            match ips.v6 {
                Some(ip6) => neighbour::add_permanent_v6(host, veth.index, ip6, pod_mac)
                    .await
                    .map_err(|e| {
                        CniError::dataplane(
                            &format!("adding host neighbour {ip6} dev {}", veth.name),
                            e,
                        )
                    }),
                None => Ok(()),
            }
        },
        configure_pod(&pod, ifname, ips, veth.mac, veth.peer_index),
    );
    host_route?;
    host_route6?;
    host_neigh6?;
    pod_side
}

/// `accept_ra=0` on the host end (this thread is in the host namespace).
fn no_accept_ra_host(host_veth: &str) -> Result<(), CniError> {
    let fail = |e| CniError::dataplane(&format!("setting accept_ra=0 on {host_veth}"), e);
    sysctl::write(
        &sysctl::ipv6_conf(host_veth, "accept_ra").map_err(fail)?,
        "0",
    )
    .map_err(fail)
}

/// Wires a veth this ADD created; removes it on failure.
pub async fn finish(host: &Handle, plan: &Plan<'_>, veth: HostVeth) -> Result<Wired, CniError> {
    if let Err(e) = wire(host, &veth, plan).await {
        remove_veth(host, &veth).await;
        return Err(e);
    }
    Ok(wired(plan, veth.name, veth.mac))
}

fn wired(plan: &Plan<'_>, host_veth: String, host_mac: [u8; 6]) -> Wired {
    Wired {
        host_veth,
        host_mac,
        ifname: plan.ifname.to_string(),
        pod_mac: naming::pod_mac(plan.container_id, plan.ifname),
        netns: plan.netns_path.to_string(),
        ip: plan.ips.v4,
        ip6: plan.ips.v6,
        mtu: plan.mtu,
        default_route: owns_default_route(plan.ifname),
    }
}

/// The veth could not be created because a name was taken ([`Created::Taken`]); `held`: the
/// agent said this attachment already held its address before this ADD (`existing`).
///
/// Invariant (issue 9 item 5): a repeated ADD never harms the attachment that works. A host
/// veth of this name whose address is still held belongs to a live attachment: it is never
/// deleted as stale. If its pod end is this very `ifname` in CNI_NETNS (same MAC), the ADD is
/// a repeat in place and is re-applied without deleting anything (address, routes and
/// neighbour are idempotent); if not, the ADD is refused (code 4) and nothing is touched.
/// Only a host veth whose address was released (DEL ran; the agent's background delete has
/// not yet) is stale and replaced. A name taken in the pod by something else is refused with
/// code 4 naming CNI_IFNAME (issue 9 item 10).
pub async fn resolve_taken(host: &Handle, plan: &Plan<'_>, held: bool) -> Result<Wired, CniError> {
    let name = naming::host_veth_name(plan.container_id, plan.ifname);
    let nl = |e: NetlinkError| CniError::dataplane("reading links", e);
    let host_link = link::get_by_name(host, &name).await.map_err(nl)?;
    let pod = netns::connect_in(plan.netns.as_fd())
        .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?;
    let pod_link = link::get_by_name(&pod, plan.ifname).await.map_err(nl)?;
    let ours_here = pod_link
        .as_ref()
        .is_some_and(|l| l.mac == Some(naming::pod_mac(plan.container_id, plan.ifname)));
    let taken_in_pod = || {
        CniError::env(
            "CNI_IFNAME",
            format!(
                "an interface named {} already exists in {}: choose another name or remove it",
                plan.ifname, plan.netns_path
            ),
        )
    };
    match host_link {
        None => Err(taken_in_pod()),
        Some(h) if held && ours_here => {
            let veth = HostVeth {
                name,
                index: h.index,
                mac: naming::host_veth_mac(plan.container_id, plan.ifname),
                peer_index: pod_link.as_ref().map(|l| l.index),
            };
            // Nothing here was created by this ADD: on failure nothing is undone.
            wire(host, &veth, plan).await?;
            Ok(wired(plan, veth.name, veth.mac))
        }
        Some(_) if held => Err(CniError::env(
            "CNI_IFNAME",
            format!(
                "container {} already has {} attached with {} (host veth {name}) in another \
                 network namespace than {}: DEL it first; nothing was changed",
                plan.container_id, plan.ifname, plan.ips, plan.netns_path
            ),
        )),
        Some(_) if pod_link.is_some() && !ours_here => Err(taken_in_pod()),
        Some(stale) => {
            // Its address was released: a DEL'd attachment whose background delete has not
            // run yet. Move it (and its pod end, when it is in this namespace) out of the
            // way for the reaper, then create the new pair.
            let pod_end = pod_link.map(|l| l.index);
            retire_stale(host, &pod, &name, stale.index, pod_end).await?;
            match create_veth(
                host,
                plan.container_id,
                plan.ifname,
                plan.netns_path,
                plan.netns,
                plan.mtu,
            )
            .await?
            {
                Created::New(v) => finish(host, plan, v).await,
                Created::Taken => Err(taken_in_pod()),
            }
        }
    }
}

/// Moves a stale veth pair (a DEL'd attachment's, address released, not yet deleted by the
/// agent's reaper) out of the way of the new pair without deleting it (issue 14).
///
/// Deleting a veth costs ~20–25 ms under rtnl_lock (the unregister's RCU grace periods);
/// renaming costs a short RTM_SETLINK. So the host end is renamed to
/// [`naming::retired_veth_name`] (from its ifindex: never taken), given that name's MAC (the
/// proof that it is ours, [`naming::is_our_retired_veth`]) and put in the reaper's link group
/// ([`naming::REAP_GROUP`]) in one request; its pod end, when it is in this ADD's namespace
/// (`pod_end`), gets the same name there. The agent's reaper deletes the group at its next
/// quiet moment (the DEL already queued this ifindex; reconcile queues any retired veth it
/// finds), taking both ends.
///
/// Until then the retired pod end stays in the pod namespace with the old address, no host
/// route and no route of the pod's (the new ADD replaces the gateway and default routes).
/// A link that vanished meanwhile (the reaper got there first) is fine. If a rename fails
/// otherwise (a kernel before 6.2 refuses to rename an UP link: EBUSY), the stale pair is
/// deleted here, synchronously, as before.
async fn retire_stale(
    host: &Handle,
    pod: &Handle,
    host_name: &str,
    host_index: u32,
    pod_end: Option<u32>,
) -> Result<(), CniError> {
    let retired = naming::retired_veth_name(host_index);
    let (host_end, pod_side) = futures::join!(
        link::rename(
            host,
            host_index,
            &retired,
            Some(naming::host_mac_for_name(&retired)),
            Some(naming::REAP_GROUP),
        ),
        async {
            match pod_end {
                Some(index) => link::rename(pod, index, &retired, None, None).await,
                None => Ok(()),
            }
        },
    );
    let failed = |r: &Result<(), NetlinkError>| r.as_ref().is_err_and(|e| !e.is_not_found());
    if failed(&host_end) || failed(&pod_side) {
        link::delete_by_index(host, host_index).await.map_err(|e| {
            CniError::dataplane(&format!("deleting stale host veth {host_name}"), e)
        })?;
    }
    Ok(())
}

/// `index`: the pod end's ifindex when known (from the veth's creation), else it is looked up
/// by name in the pod namespace first (one round trip more).
async fn configure_pod(
    h: &Handle,
    ifname: &str,
    ips: PodIps,
    host_mac: [u8; 6],
    index: Option<u32>,
) -> Result<(), CniError> {
    let index = match index {
        Some(i) => i,
        None => link::index_by_name(h, ifname)
            .await
            .map_err(|e| CniError::dataplane(&format!("finding {ifname} in pod"), e))?
            .ok_or_else(|| {
                CniError::Dataplane(format!("{ifname} missing in pod after creation"))
            })?,
    };
    // Sent back to back without waiting for each answer: the kernel handles one socket's
    // requests in order, so the gateway route exists before the default route that uses it.
    // Only the default interface gets routes (see `owns_default_route`).
    let routes = owns_default_route(ifname);
    let v4 = ips.v4.map(|ip| (ip, routes));
    let v6 = ips.v6.map(|ip| (ip, routes));
    // First, in the same pipeline: no IPv6 link-local on the pod end, then UP (the pair's
    // carrier comes on now; the host end's mode was set before it went UP). Without this,
    // every new veth pair generated two link-local addresses and started DAD, MLD and router
    // solicitations: kernel work under rtnl_lock that stalled the next ADDs under churn
    // (issue 14). Best effort: a kernel without IPv6 refuses it and needs none. Static IPv6
    // addresses and neighbours (dual stack) are not affected.
    // The IPv6 objects follow the IPv4 ones in the same pipeline (after UP: the kernel refuses
    // an IPv6 route through a device that is down); a family the pod has not costs nothing.
    let (_mode, up, addr, lo, neigh, gw, default, addr6, neigh6, default6) = futures::join!(
        link::no_ipv6_link_local(h, link::Which::Index(index)),
        link::set_up(h, index),
        async {
            match v4 {
                Some((ip, _)) => address::add(h, index, ip, 32).await,
                None => Ok(()),
            }
        },
        link::set_up(h, LOOPBACK_INDEX),
        async {
            match v4 {
                Some(_) => neighbour::add_permanent(h, index, GATEWAY, host_mac).await,
                None => Ok(()),
            }
        },
        async {
            match v4 {
                Some((_, true)) => {
                    route::add_link_scope(h, GATEWAY, 32, index, RTPROT_VPCNET, true).await
                }
                _ => Ok(()),
            }
        },
        async {
            match v4 {
                Some((_, true)) => {
                    route::add_via(
                        h,
                        Ipv4Addr::UNSPECIFIED,
                        0,
                        GATEWAY,
                        Some(index),
                        RTPROT_VPCNET,
                        true,
                    )
                    .await
                }
                _ => Ok(()),
            }
        },
        async {
            match v6 {
                Some((ip6, _)) => address::add_v6_nodad(h, index, ip6, POD_PREFIX_LEN6).await,
                None => Ok(()),
            }
        },
        async {
            match v6 {
                Some(_) => neighbour::add_permanent_v6(h, index, GATEWAY6, host_mac).await,
                None => Ok(()),
            }
        },
        async {
            match v6 {
                Some((_, true)) => {
                    route::add_route_v6(h, &default_route6(index, route::RT_TABLE_MAIN), true).await
                }
                _ => Ok(()),
            }
        },
    );
    up.map_err(|e| CniError::dataplane(&format!("setting {ifname} up"), e))?;
    match addr {
        // A repeat ADD in place: the address is there already.
        Err(e) if !e.is_exists() => {
            let ip = ips.v4.map(|ip| ip.to_string()).unwrap_or_default();
            return Err(CniError::dataplane(
                &format!("adding {ip}/32 to {ifname}"),
                e,
            ));
        }
        _ => {}
    }
    lo.map_err(|e| CniError::dataplane("setting lo up", e))?;
    neigh.map_err(|e| CniError::dataplane("adding gateway neighbour", e))?;
    gw.map_err(|e| CniError::dataplane("adding gateway route", e))?;
    default.map_err(|e| CniError::dataplane("adding default route", e))?;
    match addr6 {
        // A repeat ADD in place: the address is there already.
        Err(e) if !e.is_exists() => {
            let ip6 = ips.v6.map(|ip| ip.to_string()).unwrap_or_default();
            return Err(CniError::dataplane(
                &format!("adding {ip6}/{POD_PREFIX_LEN6} to {ifname}"),
                e,
            ));
        }
        _ => {}
    }
    neigh6.map_err(|e| CniError::dataplane("adding IPv6 gateway neighbour fe80::1", e))?;
    default6.map_err(|e| CniError::dataplane("adding IPv6 default route via fe80::1", e))?;
    if !routes {
        route_secondary(h, index, ips).await?;
    }
    Ok(())
}

/// Removes our host route for `ip` (if it is still ours) and the host veth. Used by DEL when
/// the agent is unreachable; idempotent.
pub async fn teardown_host(host: &Handle, host_veth: &str) -> Result<(), NetlinkError> {
    // Deleting the device removes every route through it, ours included.
    link::delete_by_name(host, host_veth).await.map(|_| ())
}

/// CHECK: compares the kernel with what ADD set up, for each family the pod has; names the
/// first missing piece.
pub async fn check(
    host: &Handle,
    netns_fd: &OwnedFd,
    container_id: &str,
    ifname: &str,
    ips: PodIps,
) -> Result<(), CniError> {
    let host_veth = naming::host_veth_name(container_id, ifname);
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading host state", e);
    let Some(hl) = link::get_by_name(host, &host_veth).await.map_err(nl)? else {
        return Err(fail(format!("host veth {host_veth} is missing")));
    };
    if !hl.up {
        return Err(fail(format!("host veth {host_veth} is down")));
    }
    if let Some(ip) = ips.v4 {
        let routes = route::list_v4(host, Some(RTPROT_VPCNET))
            .await
            .map_err(nl)?;
        if !routes
            .iter()
            .any(|r| r.dst == ip && attachment::is_host_route_shape(r) && r.oif == Some(hl.index))
        {
            return Err(fail(format!(
                "host route {ip}/32 dev {host_veth} is missing"
            )));
        }
    }
    if let Some(ip6) = ips.v6 {
        let routes = route::list_v6(host, Some(RTPROT_VPCNET))
            .await
            .map_err(nl)?;
        if !routes
            .iter()
            .any(|r| r.dst == ip6 && attachment::is_host_route6_shape(r) && r.oif == Some(hl.index))
        {
            return Err(fail(format!(
                "host route {ip6}/{POD_PREFIX_LEN6} dev {host_veth} is missing"
            )));
        }
        let pod_mac = naming::pod_mac(container_id, ifname);
        match neighbour::get_v6(host, hl.index, ip6).await.map_err(nl)? {
            Some((mac, state)) if mac == pod_mac && state == neighbour::NUD_PERMANENT => {}
            _ => {
                return Err(fail(format!(
                    "host neighbour {ip6} lladdr {} PERMANENT dev {host_veth} is missing",
                    naming::format_mac(&pod_mac)
                )))
            }
        }
    }
    let host_mac = naming::host_veth_mac(container_id, ifname);
    let pod = netns::connect_in(netns_fd.as_fd())
        .map_err(|e| CniError::dataplane("opening netlink in pod namespace", e))?;
    check_pod(&pod, ifname, ips, host_mac).await
}

async fn check_pod(
    h: &Handle,
    ifname: &str,
    ips: PodIps,
    host_mac: [u8; 6],
) -> Result<(), CniError> {
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading pod state", e);
    let Some(l) = link::get_by_name(h, ifname).await.map_err(nl)? else {
        return Err(fail(format!("pod interface {ifname} is missing")));
    };
    if !l.up {
        return Err(fail(format!("pod interface {ifname} is down")));
    }
    if let Some(ip) = ips.v4 {
        check_pod_v4(h, ifname, l.index, ip, host_mac).await?;
    }
    if let Some(ip6) = ips.v6 {
        check_pod_v6(h, ifname, l.index, ip6, host_mac).await?;
    }
    Ok(())
}

async fn check_pod_v4(
    h: &Handle,
    ifname: &str,
    index: u32,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<(), CniError> {
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading pod state", e);
    let addrs = address::list_v4(h, index).await.map_err(nl)?;
    if !addrs.contains(&(ip, 32)) {
        return Err(fail(format!("pod address {ip}/32 on {ifname} is missing")));
    }
    if owns_default_route(ifname) {
        let routes = route::list_v4(h, None).await.map_err(nl)?;
        if !routes.iter().any(|r| {
            r.dst == GATEWAY && r.dst_len == 32 && r.oif == Some(index) && r.gateway.is_none()
        }) {
            return Err(fail(format!(
                "pod route {GATEWAY} dev {ifname} scope link is missing"
            )));
        }
        if !routes
            .iter()
            .any(|r| r.dst_len == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(index))
        {
            return Err(fail(format!(
                "pod default route via {GATEWAY} dev {ifname} is missing"
            )));
        }
    } else {
        let table = secondary_table(index);
        let routes = route::list_v4_in(h, table, None).await.map_err(nl)?;
        for want in secondary_routes(index) {
            if !routes.iter().any(|r| {
                r.dst == want.dst
                    && r.dst_len == want.dst_len
                    && r.gateway == want.gateway
                    && r.oif == want.oif
            }) {
                return Err(fail(format!(
                    "pod route {}/{} dev {ifname} table {table} is missing",
                    want.dst, want.dst_len
                )));
            }
        }
        if !rule::has_from(h, ip, table).await.map_err(nl)? {
            return Err(fail(format!(
                "pod rule from {ip} lookup {table} is missing"
            )));
        }
    }
    match neighbour::get_v4(h, index, GATEWAY).await.map_err(nl)? {
        Some((mac, _)) if mac == host_mac => Ok(()),
        _ => Err(fail(format!(
            "pod neighbour {GATEWAY} lladdr {} is missing",
            naming::format_mac(&host_mac)
        ))),
    }
}

async fn check_pod_v6(
    h: &Handle,
    ifname: &str,
    index: u32,
    ip6: Ipv6Addr,
    host_mac: [u8; 6],
) -> Result<(), CniError> {
    let fail = |what: String| CniError::CheckFailed(what);
    let nl = |e: NetlinkError| CniError::dataplane("reading pod state", e);
    let addrs = address::list_v6(h, index).await.map_err(nl)?;
    match addrs
        .iter()
        .find(|a| a.ip == ip6 && a.prefix_len == POD_PREFIX_LEN6)
    {
        None => {
            return Err(fail(format!(
                "pod address {ip6}/{POD_PREFIX_LEN6} on {ifname} is missing"
            )))
        }
        Some(a) if a.is_tentative() => {
            return Err(fail(format!(
                "pod address {ip6}/{POD_PREFIX_LEN6} on {ifname} is tentative (DAD)"
            )))
        }
        Some(_) => {}
    }
    let table = if owns_default_route(ifname) {
        route::RT_TABLE_MAIN
    } else {
        secondary_table(index)
    };
    let want = default_route6(index, table);
    let routes = route::list_v6_in(h, table, None).await.map_err(nl)?;
    if !routes.iter().any(|r| {
        r.dst_len == 0 && r.gateway == want.gateway && r.oif == want.oif && r.kind == want.kind
    }) {
        let in_table = if table == route::RT_TABLE_MAIN {
            String::new()
        } else {
            format!(" table {table}")
        };
        return Err(fail(format!(
            "pod IPv6 default route via {GATEWAY6} dev {ifname}{in_table} is missing"
        )));
    }
    if table != route::RT_TABLE_MAIN && !rule::has_from_v6(h, ip6, table).await.map_err(nl)? {
        return Err(fail(format!(
            "pod rule from {ip6} lookup {table} is missing"
        )));
    }
    match neighbour::get_v6(h, index, GATEWAY6).await.map_err(nl)? {
        Some((mac, state)) if mac == host_mac && state == neighbour::NUD_PERMANENT => Ok(()),
        _ => Err(fail(format!(
            "pod neighbour {GATEWAY6} lladdr {} PERMANENT is missing",
            naming::format_mac(&host_mac)
        ))),
    }
}
