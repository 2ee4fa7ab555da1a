//! One test per kernel object, each in its own private namespaces. Needs root:
//! `cargo test -p vpcnet-netlink --features test_as_root`.
#![cfg(feature = "test_as_root")]

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use common::{mac_str, Ns};
use vpcnet_netlink::route::{RouteV4, RTN_UNICAST, RTN_UNREACHABLE, RT_SCOPE_LINK};
use vpcnet_netlink::veth::VethSpec;
use vpcnet_netlink::RTPROT_VPCNET;
use vpcnet_netlink::{address, link, neighbour, netns, route, sysctl, veth, NetlinkError};

const HOST_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const PEER_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

/// A veth `vpctest0` (host ns) <-> `eth0` (pod ns); returns the host ifindex.
fn make_veth(host: &Ns, pod: &Ns, mtu: Option<u32>) -> Result<u32, NetlinkError> {
    let pod_fd = pod.fd.as_fd();
    host.run(|h| async move {
        let spec = VethSpec {
            host_name: "vpctest0",
            host_mac: HOST_MAC,
            peer_name: "eth0",
            peer_mac: PEER_MAC,
            peer_netns: pod_fd,
            peer_up: true,
            mtu,
        };
        veth::create(&h, &spec).await
    })
}

#[test]
fn veth_create_exists_and_delete() {
    let host = Ns::new();
    let pod = Ns::new();
    let index = make_veth(&host, &pod, Some(1400)).expect("create veth");
    assert!(index > 0);

    // `ip -n POD -o link show eth0`: peer born in the pod ns, UP, right MAC and MTU.
    let peer = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(peer.contains("mtu 1400"), "{peer}");
    assert!(peer.contains(",UP"), "{peer}");
    assert!(peer.contains(&mac_str(PEER_MAC)), "{peer}");
    // `ip -n HOST -o link show vpctest0`: host end UP with its MAC, index as returned.
    let hl = host.ip(&["-o", "link", "show", "vpctest0"]);
    assert!(hl.starts_with(&format!("{index}: vpctest0@")), "{hl}");
    assert!(hl.contains(",UP"), "{hl}");
    assert!(hl.contains("mtu 1400"), "{hl}");
    assert!(hl.contains(&mac_str(HOST_MAC)), "{hl}");
    // The peer must not have appeared in the host ns.
    assert!(!host.ip(&["-o", "link"]).contains("eth0"));
    // One TX and one RX queue per end, from creation (issue 14: no shrink, no RCU wait).
    for d in [
        pod.ip(&["-d", "-o", "link", "show", "eth0"]),
        host.ip(&["-d", "-o", "link", "show", "vpctest0"]),
    ] {
        assert!(d.contains("numtxqueues 1 numrxqueues 1"), "{d}");
    }

    // Our own view agrees with `ip`.
    let info = host
        .run(|h| async move { link::get_by_name(&h, "vpctest0").await })
        .expect("get")
        .expect("present");
    assert_eq!(info.index, index);
    assert_eq!(info.mac, Some(HOST_MAC));
    assert!(info.up);
    assert_eq!(info.mtu, Some(1400));
    assert_eq!(info.kind.as_deref(), Some("veth"));
    let pod_info = pod
        .run(|h| async move { link::list(&h).await })
        .expect("list");
    assert!(pod_info.iter().any(|l| l.name == "lo"));
    assert!(pod_info
        .iter()
        .any(|l| l.name == "eth0" && l.mac == Some(PEER_MAC) && l.up));

    // Second create: EEXIST.
    let err = make_veth(&host, &pod, Some(1400)).expect_err("second create must fail");
    assert!(err.is_exists(), "{err:?}");
    assert_eq!(err.errno(), Some(libc::EEXIST));

    // Delete is idempotent; deleting the host end removes the peer too.
    let (first, second, idx) = host.run(|h| async move {
        let first = link::delete_by_name(&h, "vpctest0").await;
        let second = link::delete_by_name(&h, "vpctest0").await;
        let idx = link::index_by_name(&h, "vpctest0").await;
        (first, second, idx)
    });
    assert!(first.expect("delete"));
    assert!(!second.expect("delete again"));
    assert_eq!(idx.expect("lookup"), None);
    // `ip -n POD -o link show`: only lo is left.
    assert!(!pod.ip(&["-o", "link", "show"]).contains("eth0"));
    let by_index = host.run(|h| async move { link::delete_by_index(&h, index).await });
    assert!(!by_index.expect("delete_by_index of a gone link"));
}

/// `create_pair` reports the pod end's ifindex as the pod namespace numbers it (the host end's
/// IFLA_LINK), so the plugin configures the pod end without looking it up there (issue 14);
/// and the host end is created UP, its peer down, as the plugin asks.
#[test]
fn veth_create_pair_reports_the_pod_ends_index() {
    let host = Ns::new();
    let pod = Ns::new();
    // Something else in the pod first, so the pod end's index is neither 1 nor 2, and the
    // host side gets links of its own so the two namespaces' numbering differs.
    pod.ip(&["link", "add", "x7", "type", "veth", "peer", "name", "x8"]);
    host.ip(&["link", "add", "x9", "type", "veth", "peer", "name", "x10"]);
    host.ip(&["link", "add", "x11", "type", "veth", "peer", "name", "x12"]);
    let pod_fd = pod.fd.as_fd();
    let made = host
        .run(|h| async move {
            let spec = VethSpec {
                host_name: "vpctest0",
                host_mac: HOST_MAC,
                peer_name: "eth0",
                peer_mac: PEER_MAC,
                peer_netns: pod_fd,
                peer_up: false,
                mtu: None,
            };
            veth::create_pair(&h, &spec).await
        })
        .expect("create veth");
    let pod_index = pod
        .run(|h| async move { link::get_by_name(&h, "eth0").await })
        .expect("get")
        .expect("eth0 in the pod")
        .index;
    assert_eq!(made.peer_index, Some(pod_index));
    let hl = host.ip(&["-o", "link", "show", "vpctest0"]);
    assert!(
        hl.starts_with(&format!("{}: vpctest0@", made.index)),
        "{hl}"
    );
    assert!(hl.contains(",UP"), "{hl}");
    let peer = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(peer.starts_with(&format!("{pod_index}: eth0@")), "{peer}");
    assert!(!peer.contains(",UP"), "{peer}");
}

#[test]
fn veth_default_mtu_and_name_checks() {
    let host = Ns::new();
    let pod = Ns::new();
    make_veth(&host, &pod, None).expect("create veth");
    // `ip -n POD -o link show eth0`: kernel default MTU.
    assert!(pod.ip(&["-o", "link", "show", "eth0"]).contains("mtu 1500"));
    let pod_fd = pod.fd.as_fd();
    let err = host
        .run(|h| async move {
            let spec = VethSpec {
                host_name: "a-name-longer-than-15",
                host_mac: HOST_MAC,
                peer_name: "eth0",
                peer_mac: PEER_MAC,
                peer_netns: pod_fd,
                peer_up: true,
                mtu: None,
            };
            veth::create(&h, &spec).await
        })
        .expect_err("long name");
    assert!(matches!(err, NetlinkError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn address_add_and_list() {
    let ns = Ns::new();
    let r = ns.run(|h| async move {
        let lo = link::index_by_name(&h, "lo")
            .await?
            .ok_or(NetlinkError::ThreadPanicked)?;
        link::set_up(&h, lo).await?;
        address::add(&h, lo, Ipv4Addr::new(10, 99, 0, 5), 32).await?;
        address::add(&h, lo, Ipv4Addr::new(192, 168, 7, 1), 24).await?;
        let again = address::add(&h, lo, Ipv4Addr::new(10, 99, 0, 5), 32).await;
        let list = address::list_v4(&h, lo).await?;
        Ok::<_, NetlinkError>((again, list))
    });
    let (again, list) = r.expect("address ops");
    assert!(again.expect_err("duplicate").is_exists());
    assert!(
        list.contains(&(Ipv4Addr::new(10, 99, 0, 5), 32)),
        "{list:?}"
    );
    assert!(
        list.contains(&(Ipv4Addr::new(192, 168, 7, 1), 24)),
        "{list:?}"
    );
    assert!(list.contains(&(Ipv4Addr::LOCALHOST, 8)), "{list:?}");
    // `ip -n NS -4 -o addr show dev lo`
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", "lo"]);
    assert!(out.contains("inet 10.99.0.5/32"), "{out}");
    assert!(out.contains("inet 192.168.7.1/24"), "{out}");
}

#[test]
fn routes_add_list_delete() {
    let host = Ns::new();
    let pod = Ns::new();
    let ifindex = make_veth(&host, &pod, None).expect("veth");
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    let r = host.run(|h| async move {
        route::add_link_scope(&h, gw, 32, ifindex, RTPROT_VPCNET, false).await?;
        route::add_link_scope(
            &h,
            Ipv4Addr::new(10, 99, 0, 5),
            32,
            ifindex,
            RTPROT_VPCNET,
            false,
        )
        .await?;
        let dup = route::add_link_scope(
            &h,
            Ipv4Addr::new(10, 99, 0, 5),
            32,
            ifindex,
            RTPROT_VPCNET,
            false,
        )
        .await;
        route::add_link_scope(
            &h,
            Ipv4Addr::new(10, 99, 0, 5),
            32,
            ifindex,
            RTPROT_VPCNET,
            true,
        )
        .await?;
        route::add_via(
            &h,
            Ipv4Addr::UNSPECIFIED,
            0,
            gw,
            Some(ifindex),
            RTPROT_VPCNET,
            false,
        )
        .await?;
        route::add_via(&h, Ipv4Addr::new(172, 16, 0, 0), 16, gw, None, 4, false).await?;
        route::add_unreachable(&h, Ipv4Addr::new(10, 99, 0, 0), 24, RTPROT_VPCNET, false).await?;
        let bad = route::add_unreachable(&h, Ipv4Addr::new(10, 99, 0, 1), 24, 4, false).await;
        let ours = route::list_v4(&h, Some(RTPROT_VPCNET)).await?;
        let all = route::list_v4(&h, None).await?;
        Ok::<_, NetlinkError>((dup, bad, ours, all))
    });
    let (dup, bad, ours, all) = r.expect("route ops");
    assert!(dup.expect_err("EXCL").is_exists());
    assert!(matches!(bad, Err(NetlinkError::InvalidArgument(_))));
    assert_eq!(ours.len(), 4, "{ours:#?}");
    assert_eq!(all.len(), 5, "{all:#?}");
    assert!(ours
        .iter()
        .all(|r| r.protocol == RTPROT_VPCNET && r.table == 254));
    let link_route = RouteV4 {
        dst: Ipv4Addr::new(10, 99, 0, 5),
        dst_len: 32,
        gateway: None,
        oif: Some(ifindex),
        protocol: RTPROT_VPCNET,
        scope: RT_SCOPE_LINK,
        kind: RTN_UNICAST,
        table: 254,
        metric: 0,
    };
    assert!(ours.contains(&link_route), "{ours:#?}");
    let default = ours
        .iter()
        .find(|r| r.dst_len == 0)
        .expect("default route listed");
    assert_eq!(default.gateway, Some(gw));
    assert_eq!(default.scope, 0);
    let unreachable = ours
        .iter()
        .find(|r| r.kind == RTN_UNREACHABLE)
        .expect("unreachable listed")
        .clone();
    assert_eq!(
        (unreachable.dst, unreachable.dst_len),
        (Ipv4Addr::new(10, 99, 0, 0), 24)
    );
    assert!(all.iter().any(|r| r.protocol == 4 && r.dst_len == 16));

    // `ip -n HOST route show proto 171`
    let shown = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(
        shown.contains("default via 169.254.1.1 dev vpctest0"),
        "{shown}"
    );
    assert!(
        shown.contains("10.99.0.5 dev vpctest0 scope link"),
        "{shown}"
    );
    assert!(
        shown.contains("169.254.1.1 dev vpctest0 scope link"),
        "{shown}"
    );
    assert!(shown.contains("unreachable 10.99.0.0/24"), "{shown}");

    let (d1, d2, d3, d4, left) = host.run(|h| async move {
        let lr = link_route.clone();
        let d1 = route::delete(&h, &lr).await;
        let d2 = route::delete(&h, &lr).await;
        let d3 = route::delete(&h, &unreachable).await;
        // Wrong protocol: no match, so nothing is deleted.
        let mut other = lr;
        other.dst = Ipv4Addr::new(169, 254, 1, 1);
        other.protocol = 4;
        let d4 = route::delete(&h, &other).await;
        let left = route::list_v4(&h, Some(RTPROT_VPCNET)).await;
        (d1, d2, d3, d4, left)
    });
    assert!(d1.expect("delete"));
    assert!(!d2.expect("delete again"));
    assert!(d3.expect("delete unreachable"));
    assert!(!d4.expect("delete with other proto"));
    assert_eq!(left.expect("list").len(), 2);
    // `ip -n HOST route show proto 171`
    let shown = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(!shown.contains("10.99.0.5"), "{shown}");
    assert!(!shown.contains("unreachable"), "{shown}");
}

/// A namespace with an underlay the batch tests' gateways are on: a veth pair, both ends
/// here and UP, `vbt0` with 172.30.0.2/16 and fd00:30::2/64.
fn underlay() -> Ns {
    let host = Ns::new();
    host.ip(&[
        "link", "add", "vbt0", "type", "veth", "peer", "name", "vbt1",
    ]);
    host.ip(&["addr", "add", "172.30.0.2/16", "dev", "vbt0"]);
    host.ip(&["-6", "addr", "add", "fd00:30::2/64", "dev", "vbt0", "nodad"]);
    host.ip(&["link", "set", "vbt0", "up"]);
    host.ip(&["link", "set", "vbt1", "up"]);
    host
}

/// The batch tests' IPv4 peer route: the `i`-th /28 of 10.128.0.0/9 via `gw`.
fn via_route(i: u32, gw: [u8; 4]) -> RouteV4 {
    RouteV4 {
        dst: Ipv4Addr::from(0x0a80_0000 + i * 16),
        dst_len: 28,
        gateway: Some(Ipv4Addr::from(gw)),
        oif: None,
        protocol: RTPROT_VPCNET,
        scope: 0,
        kind: RTN_UNICAST,
        table: 254,
        metric: 0,
    }
}

/// `route_batch`: many changes per `sendmsg`, each answered on its own, in order (issue 10).
#[test]
fn route_batch_changes_many_routes_per_send() {
    use vpcnet_netlink::route_batch::{RouteBatch, RouteChange, PER_SEND};
    let host = underlay();
    let via = via_route;
    // More than two sends' worth, a bad prefix (never sent), a gateway nothing routes to
    // (refused by the kernel), a replace of one of this batch, then deletes: one present and
    // one absent, in order behind the installs.
    let n = u32::try_from(PER_SEND * 2 + 5).expect("small");
    let mut changes: Vec<RouteChange> = (0..n)
        .map(|i| RouteChange::Replace(via(i, [172, 30, 0, 10])))
        .collect();
    let mut bad = via(n, [172, 30, 0, 10]);
    bad.dst = Ipv4Addr::new(10, 128, 9, 1);
    changes.push(RouteChange::Replace(bad));
    changes.push(RouteChange::Replace(via(n + 1, [192, 0, 2, 1])));
    changes.push(RouteChange::Replace(via(3, [172, 30, 0, 11])));
    changes.push(RouteChange::Delete(via(5, [172, 30, 0, 10])));
    changes.push(RouteChange::Delete(via(n + 2, [172, 30, 0, 10])));
    let results = host.run(|_| async move {
        let mut b = RouteBatch::open().expect("open");
        let first = b.apply(&changes);
        // The same batch again: every replace succeeds (route 5 is made again), and route 5's
        // delete, behind it in the batch, finds it: the changes are made in their order.
        let again = b.apply(&changes);
        (first, again)
    });
    let (first, again) = results;
    let k = n as usize;
    assert_eq!(first.len(), k + 5);
    assert!(
        first[..k].iter().all(|r| matches!(r, Ok(true))),
        "{first:?}"
    );
    assert!(
        matches!(first[k], Err(NetlinkError::InvalidArgument(_))),
        "{:?}",
        first[k]
    );
    assert_eq!(
        first[k + 1].as_ref().err().and_then(|e| e.errno()),
        Some(libc::ENETUNREACH),
        "{:?}",
        first[k + 1]
    );
    assert!(matches!(first[k + 2], Ok(true)), "{:?}", first[k + 2]);
    assert!(matches!(first[k + 3], Ok(true)), "{:?}", first[k + 3]);
    assert!(matches!(first[k + 4], Ok(false)), "{:?}", first[k + 4]);
    assert!(
        again[..k].iter().all(|r| matches!(r, Ok(true))),
        "{again:?}"
    );
    assert!(matches!(again[k + 3], Ok(true)), "{:?}", again[k + 3]);
    assert!(matches!(again[k + 4], Ok(false)), "{:?}", again[k + 4]);
    // `ip -n HOST route show proto 171`: n - 1 routes (one deleted), 10.128.0.48/28 replaced.
    let shown = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert_eq!(shown.lines().count(), k - 1, "{shown}");
    assert!(
        shown.contains("10.128.0.48/28 via 172.30.0.11 dev vbt0"),
        "{shown}"
    );
    assert!(!shown.contains("10.128.0.80/28"), "{shown}");
    let last = format!(
        "{}/28 via 172.30.0.10",
        Ipv4Addr::from(0x0a80_0000 + (n - 1) * 16)
    );
    assert!(shown.contains(&last), "{shown}");
}

/// `route_batch` with IPv6 changes (and IPv4 ones in the same batch): replaces via a
/// gateway and `unreachable`, deletes of present and absent routes, in order.
#[test]
fn route_batch_changes_ipv6_routes_too() {
    use std::net::Ipv6Addr;
    use vpcnet_netlink::route::RouteV6;
    use vpcnet_netlink::route_batch::{RouteBatch, RouteChange, PER_SEND};
    let host = underlay();
    let via6 = |i: u16, gw: Ipv6Addr| RouteV6 {
        dst: Ipv6Addr::new(0xfd00, 0x10, 0, i, 0, 0, 0, 0),
        dst_len: 80,
        gateway: Some(gw),
        oif: None,
        protocol: RTPROT_VPCNET,
        kind: RTN_UNICAST,
        table: 254,
    };
    let gw = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0x10);
    let n = u16::try_from(PER_SEND + 3).expect("small");
    let mut changes: Vec<RouteChange> =
        (0..n).map(|i| RouteChange::Replace6(via6(i, gw))).collect();
    let mine = RouteV6 {
        gateway: None,
        kind: RTN_UNREACHABLE,
        ..via6(0x99, gw)
    };
    changes.push(RouteChange::Replace6(mine.clone()));
    changes.push(RouteChange::Replace(via_route(1, [172, 30, 0, 10])));
    // Host bits set: not sent.
    let mut bad = via6(n, gw);
    bad.dst = Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 1);
    changes.push(RouteChange::Replace6(bad));
    changes.push(RouteChange::Delete6(via6(2, gw)));
    changes.push(RouteChange::Delete6(via6(n + 1, gw)));
    let (first, again) = host.run(|_| async move {
        let mut b = RouteBatch::open().expect("open");
        let first = b.apply(&changes);
        let again = b.apply(&changes);
        (first, again)
    });
    let k = usize::from(n);
    assert_eq!(first.len(), k + 5);
    for results in [&first, &again] {
        assert!(
            results[..k + 2].iter().all(|r| matches!(r, Ok(true))),
            "{results:?}"
        );
        assert!(
            matches!(results[k + 2], Err(NetlinkError::InvalidArgument(_))),
            "{:?}",
            results[k + 2]
        );
        assert!(matches!(results[k + 3], Ok(true)), "{:?}", results[k + 3]);
        assert!(matches!(results[k + 4], Ok(false)), "{:?}", results[k + 4]);
    }
    // `ip -n HOST -6 route show proto 171`: n - 1 via routes and the unreachable one.
    let shown = host.ip(&["-6", "route", "show", "proto", "171"]);
    assert_eq!(shown.lines().count(), k, "{shown}");
    assert!(
        shown.contains("fd00:10:0:1::/80 via fd00:30::10 dev vbt0"),
        "{shown}"
    );
    assert!(!shown.contains("fd00:10:0:2::/80"), "{shown}");
    assert!(shown.contains("unreachable fd00:10:0:99::/80"), "{shown}");
    let shown4 = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(
        shown4.contains("10.128.0.16/28 via 172.30.0.10 dev vbt0"),
        "{shown4}"
    );
}

/// Metrics (issue 10: one per peer prefix): a route at a metric reads back with it; routes of
/// one prefix at two metrics coexist; `replace` swaps only the route at its own metric; a
/// delete without a metric takes the lowest-metric match (what the peer loop's migration of an
/// older agent's metric-0 routes relies on), one with a metric exactly that route.
#[test]
fn routes_at_metrics() {
    let host = Ns::new();
    let pod = Ns::new();
    let ifindex = make_veth(&host, &pod, None).expect("veth");
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    let gw2 = Ipv4Addr::new(169, 254, 1, 2);
    let peer = |gateway: Ipv4Addr, metric: u32| RouteV4 {
        dst: Ipv4Addr::new(10, 98, 0, 16),
        dst_len: 28,
        gateway: Some(gateway),
        oif: None,
        protocol: RTPROT_VPCNET,
        scope: 0,
        kind: RTN_UNICAST,
        table: 254,
        metric,
    };
    let (both, after_wild, replaced, after_exact) = host
        .run(|h| async move {
            route::add_link_scope(&h, gw, 32, ifindex, RTPROT_VPCNET, false).await?;
            route::add_link_scope(&h, gw2, 32, ifindex, RTPROT_VPCNET, false).await?;
            let peers = |h: rtnetlink::Handle| async move {
                let mut v: Vec<RouteV4> = route::list_v4(&h, Some(RTPROT_VPCNET))
                    .await?
                    .into_iter()
                    .filter(|r| r.dst_len == 28)
                    .map(|mut r| {
                        r.oif = None;
                        r
                    })
                    .collect();
                v.sort_by_key(|r| r.metric);
                Ok::<_, NetlinkError>(v)
            };
            route::add_route(&h, &peer(gw, 0), false).await?;
            route::add_route(&h, &peer(gw, 17), false).await?;
            let both = peers(h.clone()).await?;
            route::delete(&h, &peer(gw, 0)).await?;
            let after_wild = peers(h.clone()).await?;
            route::add_route(&h, &peer(gw2, 17), true).await?;
            let replaced = peers(h.clone()).await?;
            route::add_route(&h, &peer(gw2, 5), false).await?;
            route::delete(&h, &peer(gw2, 17)).await?;
            let after_exact = peers(h.clone()).await?;
            Ok::<_, NetlinkError>((both, after_wild, replaced, after_exact))
        })
        .expect("route ops");
    assert_eq!(both, vec![peer(gw, 0), peer(gw, 17)]);
    assert_eq!(
        after_wild,
        vec![peer(gw, 17)],
        "the metric-0 route went first"
    );
    assert_eq!(replaced, vec![peer(gw2, 17)]);
    assert_eq!(after_exact, vec![peer(gw2, 5)]);
    let shown = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(
        shown.contains("10.98.0.16/28 via 169.254.1.2 dev vpctest0 metric 5"),
        "{shown}"
    );
}

/// Two dumps at once on one socket (the agent's peer re-plan and reconcile listing routes
/// together): both answered, none refused with EBUSY.
#[test]
fn dumps_at_once_on_one_socket() {
    let host = Ns::new();
    let results = host.run(|h| async move {
        route::add_unreachable(&h, Ipv4Addr::new(10, 97, 0, 0), 24, RTPROT_VPCNET, false).await?;
        let lists = (0..8).map(|_| route::list_v4(&h, Some(RTPROT_VPCNET)));
        Ok::<_, NetlinkError>(futures::future::join_all(lists).await)
    });
    for r in results.expect("set-up") {
        assert_eq!(r.expect("dump").len(), 1);
    }
}

#[test]
fn neighbour_permanent() {
    let host = Ns::new();
    let pod = Ns::new();
    make_veth(&host, &pod, None).expect("veth");
    let ip = Ipv4Addr::new(169, 254, 1, 1);
    let r = pod.run(|h| async move {
        let eth0 = link::index_by_name(&h, "eth0")
            .await?
            .ok_or(NetlinkError::ThreadPanicked)?;
        let before = neighbour::get_v4(&h, eth0, ip).await?;
        neighbour::add_permanent(&h, eth0, ip, [0x02, 0, 0, 0, 0, 1]).await?;
        // replace semantics: a second call with another MAC wins, no EEXIST.
        neighbour::add_permanent(&h, eth0, ip, HOST_MAC).await?;
        let after = neighbour::get_v4(&h, eth0, ip).await?;
        Ok::<_, NetlinkError>((before, after))
    });
    let (before, after) = r.expect("neighbour ops");
    assert_eq!(before, None);
    assert_eq!(after, Some((HOST_MAC, neighbour::NUD_PERMANENT)));
    // `ip -n POD neigh show 169.254.1.1`
    let out = pod.ip(&["neigh", "show", "169.254.1.1"]);
    assert!(
        out.contains(&format!(
            "169.254.1.1 dev eth0 lladdr {} PERMANENT",
            mac_str(HOST_MAC)
        )),
        "{out}"
    );
}

#[test]
fn sysctl_in_private_ns() {
    let ns = Ns::new();
    let r = ns.run(|_h| async move {
        // A new namespace inherits ip_forward from the machine's root namespace
        // (devconf_inherit_init_net=0): put the private one in a known state first, so the
        // test means the same on a forwarding host (every Kubernetes node) and elsewhere.
        sysctl::set("net/ipv4/ip_forward", "0")?;
        let before = sysctl::get("net/ipv4/ip_forward")?;
        sysctl::set("net/ipv4/ip_forward", "1")?;
        sysctl::set("net/ipv4/ip_forward", "1")?; // already equal: no write
        let after = sysctl::get("net/ipv4/ip_forward")?;
        Ok::<_, NetlinkError>((before, after))
    });
    let (before, after) = r.expect("sysctl");
    assert_eq!(before, "0");
    assert_eq!(after, "1");
    // `ip netns exec NS sysctl -n net.ipv4.ip_forward` reads the same file.
    let out = common::run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ],
    );
    assert_eq!(out.trim(), "1");
    assert!(matches!(
        sysctl::set("../etc/passwd", "x"),
        Err(NetlinkError::InvalidArgument(_))
    ));
    assert!(sysctl::get("net/ipv4/does_not_exist")
        .expect_err("missing")
        .is_not_found());
}

#[test]
fn netns_open_rejects_non_netns() {
    let dir = std::env::temp_dir().join(format!("vnlt{}-file", std::process::id()));
    std::fs::write(&dir, b"not a namespace").expect("write temp file");
    let r = netns::open(&dir);
    let _ = std::fs::remove_file(&dir);
    assert!(matches!(r, Err(NetlinkError::NotNetns(_))), "{r:?}");

    let missing = netns::open(std::path::Path::new("/var/run/netns/vnlt-does-not-exist"));
    let err = missing.expect_err("missing");
    assert!(matches!(err, NetlinkError::Io(_)), "{err:?}");
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.is_not_found());

    // A namespace file of another type (uts) is nsfs but not a network namespace.
    let uts = netns::open(std::path::Path::new("/proc/self/ns/uts"));
    assert!(matches!(uts, Err(NetlinkError::NotNetns(_))), "{uts:?}");
    // /proc/self/ns/net is one.
    netns::open(std::path::Path::new("/proc/self/ns/net")).expect("own netns");
}
