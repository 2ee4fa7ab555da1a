//! What one pod attachment is on the host, as both binaries must agree: the plugin builds it,
//! the agent tears it down, reconciles it and routes around it.
//!
//! * host side: a veth named and MAC'd from the container ID and ifname ([`crate::naming`]),
//!   and a host route `<pod ip>/32 dev <host veth> scope link proto 171` ([`host_route`]);
//! * pod side: `<pod ip>/32` on the interface, a permanent neighbour and a link route for the
//!   link-local [`GATEWAY`], and `default via GATEWAY`;
//! * IPv6 (dual-stack, issue 11), the same shape: `<pod ip6>/128` on the interface (no DAD),
//!   `default via fe80::1` ([`GATEWAY6`]) with a permanent neighbour for it in the pod, and on
//!   the host a route `<pod ip6>/128 dev <host veth> proto 171` ([`host_route6`]) with a
//!   permanent neighbour `<pod ip6> -> pod veth MAC`.

use std::net::{Ipv4Addr, Ipv6Addr};

use vpcnet_netlink::route::{self, RouteV4, RouteV6};
use vpcnet_netlink::RTPROT_VPCNET;

/// The pod's default gateway: link-local, answered by the host veth's MAC (a permanent
/// neighbour entry), so no address is spent on it and no ARP is needed.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Prefix length of a pod address (and so of its host route).
pub const POD_PREFIX_LEN: u8 = 32;

/// The host route of pod address `ip` through host veth `oif` (`None`: any device, e.g. to
/// delete the route once the veth is gone).
pub fn host_route(ip: Ipv4Addr, oif: Option<u32>) -> RouteV4 {
    RouteV4 {
        dst: ip,
        dst_len: POD_PREFIX_LEN,
        gateway: None,
        oif,
        protocol: RTPROT_VPCNET,
        scope: route::RT_SCOPE_LINK,
        kind: route::RTN_UNICAST,
        table: route::RT_TABLE_MAIN,
        metric: 0,
    }
}

/// Whether `r` has the shape of a pod host route (`/32`, unicast, no gateway), whatever its
/// protocol and table: callers decide whose it is by its device (one of our veths) or its
/// protocol.
pub fn is_host_route_shape(r: &RouteV4) -> bool {
    r.dst_len == POD_PREFIX_LEN && r.kind == route::RTN_UNICAST && r.gateway.is_none()
}

/// A host route the plugin installed: the pod route shape with our protocol.
pub fn is_our_host_route(r: &RouteV4) -> bool {
    is_host_route_shape(r) && r.protocol == RTPROT_VPCNET
}

/// The pod's IPv6 default gateway (dual-stack, issue 11): link-local, answered by the host
/// veth's MAC (a permanent neighbour entry in the pod), so the pod never sends NDP for it and
/// neither veth end needs a link-local address.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Prefix length of a pod's IPv6 address (and so of its host route).
pub const POD_PREFIX_LEN6: u8 = 128;

/// The host route of pod IPv6 address `ip` through host veth `oif`: `IP/128 dev <host veth>
/// proto 171` (main table).
pub fn host_route6(ip: Ipv6Addr, oif: Option<u32>) -> RouteV6 {
    RouteV6 {
        dst: ip,
        dst_len: POD_PREFIX_LEN6,
        gateway: None,
        oif,
        protocol: RTPROT_VPCNET,
        kind: route::RTN_UNICAST,
        table: route::RT_TABLE_MAIN,
    }
}

/// Whether `r` has the shape of a pod IPv6 host route (`/128`, unicast, no gateway).
pub fn is_host_route6_shape(r: &RouteV6) -> bool {
    r.dst_len == POD_PREFIX_LEN6 && r.kind == route::RTN_UNICAST && r.gateway.is_none()
}

/// An IPv6 host route the plugin installed: the pod route shape with our protocol.
pub fn is_our_host_route6(r: &RouteV6) -> bool {
    is_host_route6_shape(r) && r.protocol == RTPROT_VPCNET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_route_is_recognised_and_peer_routes_are_not() {
        let r = host_route(Ipv4Addr::new(10, 0, 0, 5), Some(7));
        assert!(is_our_host_route(&r));
        let mut via = r.clone();
        via.gateway = Some(Ipv4Addr::new(192, 168, 0, 2));
        assert!(!is_host_route_shape(&via));
        let mut prefix = r.clone();
        prefix.dst_len = 28;
        assert!(!is_host_route_shape(&prefix));
        let mut unreachable = r.clone();
        unreachable.kind = route::RTN_UNREACHABLE;
        assert!(!is_host_route_shape(&unreachable));
        let mut foreign = r;
        foreign.protocol = 4;
        assert!(is_host_route_shape(&foreign) && !is_our_host_route(&foreign));
    }

    #[test]
    fn host_route6_is_recognised() {
        let r = host_route6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5), Some(7));
        assert!(is_our_host_route6(&r));
        let mut via = r.clone();
        via.gateway = Some(GATEWAY6);
        assert!(!is_host_route6_shape(&via));
        let mut prefix = r.clone();
        prefix.dst_len = 80;
        assert!(!is_host_route6_shape(&prefix));
        let mut foreign = r;
        foreign.protocol = 4;
        assert!(is_host_route6_shape(&foreign) && !is_our_host_route6(&foreign));
    }
}
