//! Network interfaces (RTM_*LINK): look up, list, bring up, delete.

use netlink_packet_route::link::{
    self, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

/// Maximum interface name length in bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// What this crate reports about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address when it is a 6-byte Ethernet address.
    pub mac: Option<[u8; 6]>,
    /// IFF_UP is set (administratively up).
    pub up: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// IFLA_INFO_KIND, e.g. `"veth"`; `None` for devices without link info (e.g. `lo`).
    pub kind: Option<String>,
    /// IFLA_LINK: the ifindex of the link this one is tied to, in *that* link's namespace
    /// (a veth's peer); `None` when the kernel sends none (the link is its own).
    pub link: Option<u32>,
}

impl LinkInfo {
    /// Extracts the fields from a kernel RTM_NEWLINK message.
    pub fn from_message(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            mtu: None,
            kind: None,
            link: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name.clone_from(n),
                LinkAttribute::Address(a) => info.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                LinkAttribute::Link(l) => info.link = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let link::LinkInfo::Kind(k) = i {
                            info.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// Rejects names the kernel would reject anyway, before a round trip.
pub(crate) fn check_name(name: &str) -> Result<(), NetlinkError> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(NetlinkError::InvalidArgument(format!(
            "interface name {name:?} (1..={IFNAME_MAX} bytes, no '/', NUL or whitespace)"
        )));
    }
    Ok(())
}

fn by_name_message(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg
}

fn not_found_to_none<T>(r: Result<T, NetlinkError>) -> Result<Option<T>, NetlinkError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `ip link show NAME`: one RTM_GETLINK by name. `Ok(None)` when there is no such link.
pub async fn get_by_name(handle: &Handle, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    check_name(name)?;
    let replies = not_found_to_none(
        nl::get(
            handle,
            "RTM_GETLINK",
            RouteNetlinkMessage::GetLink(by_name_message(name)),
        )
        .await,
    )?;
    Ok(replies.and_then(|replies| {
        replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::from_message(l)),
            _ => None,
        })
    }))
}

/// The ifindex of `name`, `Ok(None)` when there is no such link.
pub async fn index_by_name(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    Ok(get_by_name(handle, name).await?.map(|l| l.index))
}

/// `ip link show`: every link of the handle's namespace.
pub async fn list(handle: &Handle) -> Result<Vec<LinkInfo>, NetlinkError> {
    let replies = nl::dump(
        handle,
        "RTM_GETLINK",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
    .await?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::from_message(l)),
            _ => None,
        })
        .collect())
}

/// `ip link show group GROUP`: the links of link group `group`.
pub async fn list_group(handle: &Handle, group: u32) -> Result<Vec<LinkInfo>, NetlinkError> {
    let replies = nl::dump(
        handle,
        "RTM_GETLINK",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
    .await?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l)
                if l.attributes.contains(&LinkAttribute::Group(group)) =>
            {
                Some(LinkInfo::from_message(l))
            }
            _ => None,
        })
        .collect())
}

/// `ip link del NAME`. `Ok(false)` when it was already absent. Deleting one end of a veth
/// pair deletes both.
pub async fn delete_by_name(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    check_name(name)?;
    let r = nl::request(
        handle,
        "RTM_DELLINK",
        RouteNetlinkMessage::DelLink(by_name_message(name)),
        0,
    )
    .await;
    Ok(not_found_to_none(r)?.is_some())
}

/// `ip link del dev <ifindex>`. `Ok(false)` when it was already absent.
pub async fn delete_by_index(handle: &Handle, index: u32) -> Result<bool, NetlinkError> {
    if index == 0 {
        return Err(NetlinkError::InvalidArgument("ifindex 0".to_owned()));
    }
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let r = nl::request(handle, "RTM_DELLINK", RouteNetlinkMessage::DelLink(msg), 0).await;
    Ok(not_found_to_none(r)?.is_some())
}

/// `ip link set dev <ifindex> up`.
pub async fn set_up(handle: &Handle, index: u32) -> Result<(), NetlinkError> {
    if index == 0 {
        return Err(NetlinkError::InvalidArgument("ifindex 0".to_owned()));
    }
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    nl::request(handle, "RTM_SETLINK", RouteNetlinkMessage::SetLink(msg), 0).await?;
    Ok(())
}

/// `ip link set dev <ifindex> group GROUP`.
pub async fn set_group(handle: &Handle, index: u32, group: u32) -> Result<(), NetlinkError> {
    if index == 0 {
        return Err(NetlinkError::InvalidArgument("ifindex 0".to_owned()));
    }
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Group(group));
    nl::request(handle, "RTM_SETLINK", RouteNetlinkMessage::SetLink(msg), 0).await?;
    Ok(())
}

/// `ip link del group GROUP`: every link of the group in one request. The kernel unregisters
/// them as one batch (one RCU grace period for all instead of one each), which is what makes
/// deleting many veths cheap. Group 0 (the default group) is refused.
pub async fn delete_group(handle: &Handle, group: u32) -> Result<(), NetlinkError> {
    if group == 0 {
        return Err(NetlinkError::InvalidArgument(
            "refusing to delete the default link group".to_owned(),
        ));
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(group));
    match nl::request(handle, "RTM_DELLINK", RouteNetlinkMessage::DelLink(msg), 0).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `ip link set dev <ifindex> name NAME [address MAC] [group GROUP]`, in one RTM_SETLINK: the
/// link keeps its ifindex, state and peer. Renaming an UP link needs kernel 6.2 or later
/// (older kernels refuse with EBUSY). `NotFound` when the link is gone, `is_exists` when
/// the name is taken.
pub async fn rename(
    handle: &Handle,
    index: u32,
    name: &str,
    mac: Option<[u8; 6]>,
    group: Option<u32>,
) -> Result<(), NetlinkError> {
    if index == 0 {
        return Err(NetlinkError::InvalidArgument("ifindex 0".to_owned()));
    }
    check_name(name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(group) = group {
        msg.attributes.push(LinkAttribute::Group(group));
    }
    nl::request(
        handle,
        "RTM_SETLINK rename",
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
    .await?;
    Ok(())
}

/// A link named by ifindex or by name.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    Index(u32),
    Name(&'a str),
}

/// `ip link set dev <link> addrgenmode none`: the link never generates an IPv6 link-local
/// (or any SLAAC) address of its own, so it never starts duplicate address detection, MLD
/// reports or router solicitations (the kernel's per-link deferred work that takes rtnl_lock,
/// issue 14). Static IPv6 addresses and neighbours can still be added. Takes effect for
/// addresses generated after it: set it before the link gets its carrier (both veth ends
/// UP). EAFNOSUPPORT when the kernel has no IPv6 for the link.
pub async fn no_ipv6_link_local(handle: &Handle, which: Which<'_>) -> Result<(), NetlinkError> {
    let mut msg = LinkMessage::default();
    match which {
        Which::Index(0) => return Err(NetlinkError::InvalidArgument("ifindex 0".to_owned())),
        Which::Index(i) => msg.header.index = i,
        Which::Name(n) => {
            check_name(n)?;
            msg.attributes.push(LinkAttribute::IfName(n.to_owned()));
        }
    }
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    nl::request(
        handle,
        "RTM_SETLINK addrgenmode none",
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
    .await?;
    Ok(())
}
