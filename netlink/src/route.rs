//! Routes (RTM_*ROUTE): IPv4 ([`RouteV4`]) and IPv6 ([`RouteV6`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// Route metric (RTA_PRIORITY; `ip route ... metric N`), 0 for none. IPv4 routes that
    /// differ only in their metric are distinct routes; `replace` swaps the route of the same
    /// destination, table and metric; a delete with metric 0 matches any metric (the lowest
    /// first).
    pub metric: u32,
}

/// A route of either family as it goes over the wire: what [`RouteV4`] and [`RouteV6`] share
/// (one encoder, one decoder, one request path for both).
pub(crate) struct Wire {
    dst: IpAddr,
    dst_len: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    protocol: u8,
    scope: u8,
    kind: u8,
    table: u32,
    /// RTA_PRIORITY, 0 for none (not sent; read back as 0 when the kernel reports none).
    metric: u32,
}

impl From<&RouteV4> for Wire {
    fn from(r: &RouteV4) -> Wire {
        Wire {
            dst: r.dst.into(),
            dst_len: r.dst_len,
            gateway: r.gateway.map(IpAddr::from),
            oif: r.oif,
            protocol: r.protocol,
            scope: r.scope,
            kind: r.kind,
            table: r.table,
            metric: r.metric,
        }
    }
}

impl From<&RouteV6> for Wire {
    fn from(r: &RouteV6) -> Wire {
        Wire {
            dst: r.dst.into(),
            dst_len: r.dst_len,
            gateway: r.gateway.map(IpAddr::from),
            oif: r.oif,
            protocol: r.protocol,
            scope: RT_SCOPE_UNIVERSE,
            kind: r.kind,
            table: r.table,
            metric: 0,
        }
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

impl Wire {
    /// The kernel rejects a destination with host bits set too (EINVAL, "Invalid prefix for
    /// given prefix length"); this names it.
    pub(crate) fn check_prefix(&self) -> Result<(), NetlinkError> {
        let (bits, width, family) = match self.dst {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32, "IPv4"),
            IpAddr::V6(a) => (u128::from(a), 128, "IPv6"),
        };
        let len = u32::from(self.dst_len);
        if len > width {
            return Err(NetlinkError::InvalidArgument(format!(
                "{family} prefix length {len}"
            )));
        }
        let host = 1u128.checked_shl(width - len).map_or(u128::MAX, |v| v - 1);
        if bits & host != 0 {
            return Err(NetlinkError::InvalidArgument(format!(
                "{}/{} has host bits set",
                self.dst, self.dst_len
            )));
        }
        Ok(())
    }

    pub(crate) fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match self.dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = self.dst_len;
        msg.header.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = RouteScope::from(self.scope);
        msg.header.kind = RouteType::from(self.kind);
        if self.dst_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(self.dst)));
        }
        if self.table > 255 {
            msg.attributes.push(RouteAttribute::Table(self.table));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if self.metric != 0 {
            msg.attributes.push(RouteAttribute::Priority(self.metric));
        }
        msg
    }

    /// Reads a route of `family` from a kernel message (`None`: another family).
    fn read(msg: &RouteMessage, family: AddressFamily) -> Option<Wire> {
        if msg.header.address_family != family {
            return None;
        }
        let mut w = Wire {
            dst: match family {
                AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
                _ => Ipv4Addr::UNSPECIFIED.into(),
            },
            dst_len: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            protocol: msg.header.protocol.into(),
            scope: msg.header.scope.into(),
            kind: msg.header.kind.into(),
            table: u32::from(msg.header.table),
            metric: 0,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => w.dst = (*ip).into(),
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => w.dst = (*ip).into(),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => w.gateway = Some((*ip).into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => w.gateway = Some((*ip).into()),
                RouteAttribute::Oif(oif) => w.oif = Some(*oif),
                RouteAttribute::Table(t) => w.table = *t,
                RouteAttribute::Priority(m) => w.metric = *m,
                _ => {}
            }
        }
        Some(w)
    }

    /// RTM_NEWROUTE: create (EEXIST if present) or, with `replace`, create or replace.
    async fn add(&self, handle: &Handle, replace: bool) -> Result<(), NetlinkError> {
        self.check_prefix()?;
        let flags = if replace {
            nl::CREATE_REPLACE
        } else {
            nl::CREATE_EXCL
        };
        let msg = RouteNetlinkMessage::NewRoute(self.message());
        nl::request(handle, "RTM_NEWROUTE", msg, flags).await?;
        Ok(())
    }

    /// RTM_DELROUTE of exactly this route; `Ok(false)` when it was already gone (ESRCH).
    async fn delete(&self, handle: &Handle) -> Result<bool, NetlinkError> {
        self.check_prefix()?;
        let msg = RouteNetlinkMessage::DelRoute(self.message());
        match nl::request(handle, "RTM_DELROUTE", msg, 0).await {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

async fn add(handle: &Handle, route: &RouteV4, replace: bool) -> Result<(), NetlinkError> {
    Wire::from(route).add(handle, replace).await
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
        metric: 0,
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
        metric: 0,
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
        metric: 0,
    };
    add(handle, &route, replace).await
}

fn from_message(msg: &RouteMessage) -> Option<RouteV4> {
    let w = Wire::read(msg, AddressFamily::Inet)?;
    let (IpAddr::V4(dst), gateway) = (w.dst, w.gateway) else {
        return None;
    };
    let gateway = match gateway {
        Some(IpAddr::V4(g)) => Some(g),
        None | Some(IpAddr::V6(_)) => None,
    };
    Some(RouteV4 {
        dst,
        dst_len: w.dst_len,
        gateway,
        oif: w.oif,
        protocol: w.protocol,
        scope: w.scope,
        kind: w.kind,
        table: w.table,
        metric: w.metric,
    })
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
    deletion(route).delete(handle).await
}

/// What an RTM_DELROUTE of exactly `route` sends: any scope.
pub(crate) fn deletion(route: &RouteV4) -> Wire {
    let mut w = Wire::from(route);
    w.scope = RT_SCOPE_NOWHERE;
    w
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

/// `ip -6 route add|replace` of exactly `route` (any table). A gateway that is link-local
/// (`fe80::/10`) needs [`RouteV6::oif`]; the kernel takes it as on-link without a route to it.
pub async fn add_route_v6(
    handle: &Handle,
    route: &RouteV6,
    replace: bool,
) -> Result<(), NetlinkError> {
    Wire::from(route).add(handle, replace).await
}

fn from_message_v6(msg: &RouteMessage) -> Option<RouteV6> {
    let w = Wire::read(msg, AddressFamily::Inet6)?;
    let IpAddr::V6(dst) = w.dst else {
        return None;
    };
    let gateway = match w.gateway {
        Some(IpAddr::V6(g)) => Some(g),
        None | Some(IpAddr::V4(_)) => None,
    };
    Some(RouteV6 {
        dst,
        dst_len: w.dst_len,
        gateway,
        oif: w.oif,
        protocol: w.protocol,
        kind: w.kind,
        table: w.table,
    })
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
    Wire::from(route).delete(handle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(dst: &str, dst_len: u8) -> Result<(), NetlinkError> {
        let r = RouteV4 {
            dst: dst.parse().expect("ip"),
            dst_len,
            gateway: None,
            oif: None,
            protocol: 171,
            scope: RT_SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            table: RT_TABLE_MAIN,
            metric: 0,
        };
        Wire::from(&r).check_prefix()
    }

    fn v6(dst: &str, dst_len: u8) -> Result<(), NetlinkError> {
        let r = RouteV6 {
            dst: dst.parse().expect("ip"),
            dst_len,
            gateway: None,
            oif: None,
            protocol: 171,
            kind: RTN_UNICAST,
            table: RT_TABLE_MAIN,
        };
        Wire::from(&r).check_prefix()
    }

    #[test]
    fn prefix_checks_of_both_families() {
        assert!(v4("0.0.0.0", 0).is_ok());
        assert!(v4("10.0.0.16", 28).is_ok());
        assert!(v4("10.0.0.17", 32).is_ok());
        assert!(v4("10.0.0.17", 28).is_err());
        assert!(v4("10.0.0.0", 33).is_err());
        assert!(v4("128.0.0.0", 0).is_err());
        assert!(v6("::", 0).is_ok());
        assert!(v6("fd00:10::", 80).is_ok());
        assert!(v6("fd00:10::1", 128).is_ok());
        assert!(v6("fd00:10::1", 64).is_err());
        assert!(v6("::", 129).is_err());
        assert!(v6("8000::", 0).is_err());
        let e = v6("fd00:10::1", 64).expect_err("host bits");
        assert!(e.to_string().contains("fd00:10::1/64"), "{e}");
    }

    #[test]
    fn a_route_reads_back_as_it_was_encoded() {
        let r = RouteV6 {
            dst: "fd00:10::".parse().expect("ip"),
            dst_len: 80,
            gateway: Some("fe80::1".parse().expect("gw")),
            oif: Some(7),
            protocol: 171,
            kind: RTN_UNICAST,
            table: 1000,
        };
        let msg = Wire::from(&r).message();
        assert_eq!(from_message_v6(&msg), Some(r));
        assert_eq!(from_message(&msg), None, "an IPv6 message read as IPv4");
        let r4 = RouteV4 {
            dst: "10.0.0.16".parse().expect("ip"),
            dst_len: 28,
            gateway: Some("192.0.2.1".parse().expect("gw")),
            oif: None,
            protocol: 171,
            scope: RT_SCOPE_UNIVERSE,
            kind: RTN_UNREACHABLE,
            table: RT_TABLE_MAIN,
            metric: 1_040,
        };
        let msg = Wire::from(&r4).message();
        assert_eq!(from_message(&msg), Some(r4));
        assert_eq!(from_message_v6(&msg), None);
    }
}
