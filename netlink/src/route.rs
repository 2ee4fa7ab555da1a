//! Routes (RTM_*ROUTE): IPv4 ([`RouteV4`]) and IPv6 ([`RouteV6`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

/// Route type: gateway or direct route.
pub const RTN_UNICAST: u8 = 1;
/// Route type: silently drop.
pub const RTN_BLACKHOLE: u8 = 6;
/// Route type: destination unreachable (ICMP).
pub const RTN_UNREACHABLE: u8 = 7;
/// Route scope: global.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// Route scope: on-link.
pub const RT_SCOPE_LINK: u8 = 253;
/// Route scope: "any" (used in deletes).
pub const RT_SCOPE_NOWHERE: u8 = 255;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// One IPv4 route as this crate reports and deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteV4 {
    /// Destination network (0.0.0.0 with `dst_len` 0 for the default route).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Next hop (RTA_GATEWAY).
    pub gateway: Option<Ipv4Addr>,
    /// Output interface (RTA_OIF).
    pub oif: Option<u32>,
    /// Route protocol (`proto`), e.g. [`crate::RTPROT_VPCNET`].
    pub protocol: u8,
    /// Route scope, e.g. [`RT_SCOPE_LINK`].
    pub scope: u8,
    /// Route type: [`RTN_UNICAST`], [`RTN_BLACKHOLE`], [`RTN_UNREACHABLE`], ...
    pub kind: u8,
    /// Routing table id.
    pub table: u32,
}

fn check_prefix(dst: Ipv4Addr, dst_len: u8) -> Result<(), NetlinkError> {
    if dst_len > 32 {
        return Err(NetlinkError::InvalidArgument(format!(
            "IPv4 prefix length {dst_len}"
        )));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(dst_len)).unwrap_or(0);
    if u32::from(dst) & !mask != 0 {
        // The kernel rejects this too (EINVAL, "Invalid prefix for given prefix length").
        return Err(NetlinkError::InvalidArgument(format!(
            "{dst}/{dst_len} has host bits set"
        )));
    }
    Ok(())
}

fn base_message(route: &RouteV4) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = route.dst_len;
    msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = RouteScope::from(route.scope);
    msg.header.kind = RouteType::from(route.kind);
    if route.dst_len > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
    }
    if route.table > 255 {
        msg.attributes.push(RouteAttribute::Table(route.table));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

async fn add(handle: &Handle, route: &RouteV4, replace: bool) -> Result<(), NetlinkError> {
    check_prefix(route.dst, route.dst_len)?;
    let flags = if replace {
        nl::CREATE_REPLACE
    } else {
        nl::CREATE_EXCL
    };
    nl::request(
        handle,
        "RTM_NEWROUTE",
        RouteNetlinkMessage::NewRoute(base_message(route)),
        flags,
    )
    .await?;
    Ok(())
}

/// `ip route add DST/LEN dev OIF scope link proto PROTO` (main table); `replace` turns it
/// into `ip route replace`, else an existing route fails with EEXIST.
pub async fn add_link_scope(
    handle: &Handle,
    dst: Ipv4Addr,
    dst_len: u8,
    oif: u32,
    protocol: u8,
    replace: bool,
) -> Result<(), NetlinkError> {
    let route = RouteV4 {
        dst,
        dst_len,
        gateway: None,
        oif: Some(oif),
        protocol,
        scope: RT_SCOPE_LINK,
        kind: RTN_UNICAST,
        table: RT_TABLE_MAIN,
    };
    add(handle, &route, replace).await
}

/// `ip route add DST/LEN via GW [dev OIF] proto PROTO` (scope universe, main table).
/// `dst_len` 0 is the default route.
pub async fn add_via(
    handle: &Handle,
    dst: Ipv4Addr,
    dst_len: u8,
    gateway: Ipv4Addr,
    oif: Option<u32>,
    protocol: u8,
    replace: bool,
) -> Result<(), NetlinkError> {
    let route = RouteV4 {
        dst,
        dst_len,
        gateway: Some(gateway),
        oif,
        protocol,
        scope: RT_SCOPE_UNIVERSE,
        kind: RTN_UNICAST,
        table: RT_TABLE_MAIN,
    };
    add(handle, &route, replace).await
}

/// `ip route add|replace` of exactly `route` (any table).
pub async fn add_route(
    handle: &Handle,
    route: &RouteV4,
    replace: bool,
) -> Result<(), NetlinkError> {
    add(handle, route, replace).await
}

/// `ip route add unreachable DST/LEN proto PROTO` (type RTN_UNREACHABLE, main table).
pub async fn add_unreachable(
    handle: &Handle,
    dst: Ipv4Addr,
    dst_len: u8,
    protocol: u8,
    replace: bool,
) -> Result<(), NetlinkError> {
    let route = RouteV4 {
        dst,
        dst_len,
        gateway: None,
        oif: None,
        protocol,
        scope: RT_SCOPE_UNIVERSE,
        kind: RTN_UNREACHABLE,
        table: RT_TABLE_MAIN,
    };
    add(handle, &route, replace).await
}

fn from_message(msg: &RouteMessage) -> Option<RouteV4> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut route = RouteV4 {
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        protocol: msg.header.protocol.into(),
        scope: msg.header.scope.into(),
        kind: msg.header.kind.into(),
        table: u32::from(msg.header.table),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    Some(route)
}

/// `ip -4 route show table main [proto PROTO]`: the main table's IPv4 routes, only those
/// with `protocol` when it is `Some`.
pub async fn list_v4(handle: &Handle, protocol: Option<u8>) -> Result<Vec<RouteV4>, NetlinkError> {
    list_v4_in(handle, RT_TABLE_MAIN, protocol).await
}

/// Like [`list_v4`], for routing table `table`.
pub async fn list_v4_in(
    handle: &Handle,
    table: u32,
    protocol: Option<u8>,
) -> Result<Vec<RouteV4>, NetlinkError> {
    let keep = |r: &RouteV4| r.table == table && protocol.is_none_or(|p| p == r.protocol);
    dump_routes(handle, AddressFamily::Inet, from_message, keep).await
}

/// `ip -4 route show table all [proto PROTO]`: the IPv4 routes of every routing table, only
/// those with `protocol` when it is `Some`.
pub async fn list_v4_all(
    handle: &Handle,
    protocol: Option<u8>,
) -> Result<Vec<RouteV4>, NetlinkError> {
    let keep = |r: &RouteV4| protocol.is_none_or(|p| p == r.protocol);
    dump_routes(handle, AddressFamily::Inet, from_message, keep).await
}

/// One `RTM_GETROUTE` dump of `family`: the routes `parse` reads that `keep` keeps.
async fn dump_routes<R>(
    handle: &Handle,
    family: AddressFamily,
    parse: fn(&RouteMessage) -> Option<R>,
    keep: impl Fn(&R) -> bool,
) -> Result<Vec<R>, NetlinkError> {
    let mut req = RouteMessage::default();
    req.header.address_family = family;
    let replies = nl::dump(handle, "RTM_GETROUTE", RouteNetlinkMessage::GetRoute(req)).await?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => parse(r),
            _ => None,
        })
        .filter(|r| keep(r))
        .collect())
}

/// `ip route del` of exactly this route (dst/len, protocol, oif, gateway, type, table;
/// any scope). `Ok(false)` when it was already gone (ESRCH).
pub async fn delete(handle: &Handle, route: &RouteV4) -> Result<bool, NetlinkError> {
    check_prefix(route.dst, route.dst_len)?;
    let mut msg = base_message(route);
    msg.header.scope = RouteScope::NoWhere;
    match nl::request(
        handle,
        "RTM_DELROUTE",
        RouteNetlinkMessage::DelRoute(msg),
        0,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One IPv6 route as this crate reports and deletes it. The kernel keeps no scope for IPv6
/// routes (it reports every one as universe), so there is none here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteV6 {
    /// Destination network (`::` with `dst_len` 0 for the default route).
    pub dst: Ipv6Addr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Next hop (RTA_GATEWAY), e.g. a link-local `fe80::1` with [`RouteV6::oif`] set.
    pub gateway: Option<Ipv6Addr>,
    /// Output interface (RTA_OIF).
    pub oif: Option<u32>,
    /// Route protocol (`proto`), e.g. [`crate::RTPROT_VPCNET`].
    pub protocol: u8,
    /// Route type: [`RTN_UNICAST`], [`RTN_BLACKHOLE`], [`RTN_UNREACHABLE`], ...
    pub kind: u8,
    /// Routing table id.
    pub table: u32,
}

fn check_prefix_v6(dst: Ipv6Addr, dst_len: u8) -> Result<(), NetlinkError> {
    if dst_len > 128 {
        return Err(NetlinkError::InvalidArgument(format!(
            "IPv6 prefix length {dst_len}"
        )));
    }
    let mask = u128::MAX.checked_shl(128 - u32::from(dst_len)).unwrap_or(0);
    if u128::from(dst) & !mask != 0 {
        return Err(NetlinkError::InvalidArgument(format!(
            "{dst}/{dst_len} has host bits set"
        )));
    }
    Ok(())
}

fn base_message_v6(route: &RouteV6) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet6;
    msg.header.destination_prefix_length = route.dst_len;
    msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::from(route.kind);
    if route.dst_len > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(route.dst)));
    }
    if route.table > 255 {
        msg.attributes.push(RouteAttribute::Table(route.table));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

/// `ip -6 route add|replace` of exactly `route` (any table). A gateway that is link-local
/// (`fe80::/10`) needs [`RouteV6::oif`]; the kernel takes it as on-link without a route to it.
pub async fn add_route_v6(
    handle: &Handle,
    route: &RouteV6,
    replace: bool,
) -> Result<(), NetlinkError> {
    check_prefix_v6(route.dst, route.dst_len)?;
    let flags = if replace {
        nl::CREATE_REPLACE
    } else {
        nl::CREATE_EXCL
    };
    nl::request(
        handle,
        "RTM_NEWROUTE",
        RouteNetlinkMessage::NewRoute(base_message_v6(route)),
        flags,
    )
    .await?;
    Ok(())
}

fn from_message_v6(msg: &RouteMessage) -> Option<RouteV6> {
    if msg.header.address_family != AddressFamily::Inet6 {
        return None;
    }
    let mut route = RouteV6 {
        dst: Ipv6Addr::UNSPECIFIED,
        dst_len: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        protocol: msg.header.protocol.into(),
        kind: msg.header.kind.into(),
        table: u32::from(msg.header.table),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => route.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    Some(route)
}

/// `ip -6 route show table TABLE [proto PROTO]`: the IPv6 routes of routing table `table`,
/// only those with `protocol` when it is `Some`.
pub async fn list_v6_in(
    handle: &Handle,
    table: u32,
    protocol: Option<u8>,
) -> Result<Vec<RouteV6>, NetlinkError> {
    let keep = |r: &RouteV6| r.table == table && protocol.is_none_or(|p| p == r.protocol);
    dump_routes(handle, AddressFamily::Inet6, from_message_v6, keep).await
}

/// `ip -6 route show table all [proto PROTO]`: the IPv6 routes of every routing table, only
/// those with `protocol` when it is `Some`.
pub async fn list_v6_all(
    handle: &Handle,
    protocol: Option<u8>,
) -> Result<Vec<RouteV6>, NetlinkError> {
    let keep = |r: &RouteV6| protocol.is_none_or(|p| p == r.protocol);
    dump_routes(handle, AddressFamily::Inet6, from_message_v6, keep).await
}

/// `ip -6 route show table main [proto PROTO]`.
pub async fn list_v6(handle: &Handle, protocol: Option<u8>) -> Result<Vec<RouteV6>, NetlinkError> {
    list_v6_in(handle, RT_TABLE_MAIN, protocol).await
}

/// `ip -6 route del` of exactly this route (dst/len, protocol, oif, gateway, type, table).
/// `Ok(false)` when it was already gone (ESRCH).
pub async fn delete_v6(handle: &Handle, route: &RouteV6) -> Result<bool, NetlinkError> {
    check_prefix_v6(route.dst, route.dst_len)?;
    match nl::request(
        handle,
        "RTM_DELROUTE",
        RouteNetlinkMessage::DelRoute(base_message_v6(route)),
        0,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}
