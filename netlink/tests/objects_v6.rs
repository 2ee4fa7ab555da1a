//! The IPv6 objects of a pod attachment (issue 11), each on the real kernel in private
//! namespaces. Needs root: `cargo test -p vpcnet-netlink --features test_as_root`.
#![cfg(feature = "test_as_root")]

mod common;

use std::net::Ipv6Addr;
use std::os::fd::AsFd;

use common::{mac_str, Ns};
use vpcnet_netlink::route::{RouteV6, RTN_UNICAST, RT_TABLE_MAIN};
use vpcnet_netlink::veth::VethSpec;
use vpcnet_netlink::RTPROT_VPCNET;
use vpcnet_netlink::{address, link, neighbour, netns, route, rule, sysctl, veth, NetlinkError};

const HOST_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x66];
const PEER_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xef];
const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 5);

/// A veth `vpctest6` (host ns, UP) <-> `peer` (pod ns, UP when `peer_up`); the host ifindex.
fn make_veth(host: &Ns, pod: &Ns, peer: &str, peer_up: bool) -> u32 {
    let pod_fd = pod.fd.as_fd();
    host.run(|h| async move {
        let spec = VethSpec {
            host_name: "vpctest6",
            host_mac: HOST_MAC,
            peer_name: peer,
            peer_mac: PEER_MAC,
            peer_netns: pod_fd,
            peer_up,
            mtu: None,
        };
        veth::create(&h, &spec).await
    })
    .expect("create veth")
}

fn index_in(ns: &Ns, name: &'static str) -> u32 {
    ns.run(|h| async move { link::index_by_name(&h, name).await })
        .expect("lookup")
        .expect("link present")
}

#[test]
fn address_v6_nodad_is_never_tentative() {
    let host = Ns::new();
    let pod = Ns::new();
    make_veth(&host, &pod, "eth0", true);
    // DAD runs only where it is enabled: make sure it is, so `nodad` is what prevents it.
    pod.run(|_h| async move { sysctl::set("net/ipv6/conf/eth0/accept_dad", "1") })
        .expect("accept_dad=1");
    let eth0 = index_in(&pod, "eth0");
    let (again, bad, list) = pod
        .run(|h| async move {
            address::add_v6_nodad(&h, eth0, POD6, 128).await?;
            let list = address::list_v6(&h, eth0).await?;
            let again = address::add_v6_nodad(&h, eth0, POD6, 128).await;
            let bad = address::add_v6_nodad(&h, eth0, POD6, 129).await;
            Ok::<_, NetlinkError>((again, bad, list))
        })
        .expect("address ops");
    // Read straight after the add: no DAD, so not tentative, and flagged nodad.
    let ours = list
        .iter()
        .find(|a| a.ip == POD6)
        .unwrap_or_else(|| panic!("fd00:10::5 listed: {list:?}"));
    assert_eq!(ours.prefix_len, 128);
    assert!(ours.is_nodad(), "{ours:?}");
    assert!(!ours.is_tentative(), "{ours:?}");
    assert!(again.expect_err("duplicate").is_exists());
    assert!(
        matches!(bad, Err(NetlinkError::InvalidArgument(_))),
        "{bad:?}"
    );
    let out = pod.ip(&["-6", "-o", "addr", "show", "dev", "eth0"]);
    let line = out
        .lines()
        .find(|l| l.contains("inet6 fd00:10::5/128"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("nodad"), "{line}");
    assert!(!line.contains("tentative"), "{line}");

    // The control: the same kind of address added with DAD on this link is tentative at
    // first, so the check above means something on this kernel.
    pod.ip(&["-6", "addr", "add", "fd00:10::6/128", "dev", "eth0"]);
    let list = pod
        .run(|h| async move { address::list_v6(&h, eth0).await })
        .expect("list");
    let dad = list
        .iter()
        .find(|a| a.ip == Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 6))
        .unwrap_or_else(|| panic!("fd00:10::6 listed: {list:?}"));
    assert!(dad.is_tentative() && !dad.is_nodad(), "{dad:?}");
}

#[test]
fn routes_v6_default_via_link_local_and_host_route() {
    let host = Ns::new();
    let pod = Ns::new();
    let hidx = make_veth(&host, &pod, "eth0", true);
    let eth0 = index_in(&pod, "eth0");
    // Pod: `default via fe80::1 dev eth0 proto 171` — no link-local address and no
    // fe80::/64 route are needed for a link-local gateway with a device.
    let default = RouteV6 {
        dst: Ipv6Addr::UNSPECIFIED,
        dst_len: 0,
        gateway: Some(GW6),
        oif: Some(eth0),
        protocol: RTPROT_VPCNET,
        kind: RTN_UNICAST,
        table: RT_TABLE_MAIN,
    };
    let d = default.clone();
    let pod_routes = pod
        .run(|h| async move {
            route::add_route_v6(&h, &d, false).await?;
            route::add_route_v6(&h, &d, true).await?; // replace: no EEXIST
            let dup = route::add_route_v6(&h, &d, false).await;
            let ours = route::list_v6(&h, Some(RTPROT_VPCNET)).await?;
            Ok::<_, NetlinkError>((dup, ours))
        })
        .expect("pod routes");
    assert!(pod_routes.0.expect_err("EXCL").is_exists());
    assert_eq!(pod_routes.1, vec![default.clone()]);
    let shown = pod.ip(&["-6", "route", "show", "proto", "171"]);
    assert!(shown.contains("default via fe80::1 dev eth0"), "{shown}");

    // Host: `fd00:10::5/128 dev vpctest6 proto 171`.
    let host_route = RouteV6 {
        dst: POD6,
        dst_len: 128,
        gateway: None,
        oif: Some(hidx),
        protocol: RTPROT_VPCNET,
        kind: RTN_UNICAST,
        table: RT_TABLE_MAIN,
    };
    let hr = host_route.clone();
    let (ours, bad) = host
        .run(|h| async move {
            route::add_route_v6(&h, &hr, true).await?;
            let ours = route::list_v6(&h, Some(RTPROT_VPCNET)).await?;
            let mut bad = hr.clone();
            bad.dst_len = 64; // host bits set
            let bad = route::add_route_v6(&h, &bad, true).await;
            Ok::<_, NetlinkError>((ours, bad))
        })
        .expect("host route");
    assert_eq!(ours, vec![host_route.clone()]);
    assert!(
        matches!(bad, Err(NetlinkError::InvalidArgument(_))),
        "{bad:?}"
    );
    let shown = host.ip(&["-6", "route", "show", "proto", "171"]);
    assert!(shown.contains("fd00:10::5 dev vpctest6"), "{shown}");
    // Other routes (the kernel's own) are not ours.
    let all = host
        .run(|h| async move { route::list_v6(&h, None).await })
        .expect("list all");
    assert!(all.len() >= ours.len());

    let (d1, d2, left) = host.run(|h| async move {
        let d1 = route::delete_v6(&h, &host_route).await;
        let d2 = route::delete_v6(&h, &host_route).await;
        let left = route::list_v6(&h, Some(RTPROT_VPCNET)).await;
        (d1, d2, left)
    });
    assert!(d1.expect("delete"));
    assert!(!d2.expect("delete again"));
    assert!(left.expect("list").is_empty());
    assert!(!host
        .ip(&["-6", "route", "show", "proto", "171"])
        .contains("fd00:10::5"));
}

#[test]
fn neighbour_v6_permanent() {
    let host = Ns::new();
    let pod = Ns::new();
    make_veth(&host, &pod, "eth0", true);
    let eth0 = index_in(&pod, "eth0");
    let (before, after) = pod
        .run(|h| async move {
            let before = neighbour::get_v6(&h, eth0, GW6).await?;
            neighbour::add_permanent_v6(&h, eth0, GW6, [0x02, 0, 0, 0, 0, 1]).await?;
            // replace semantics: a second call with another MAC wins, no EEXIST.
            neighbour::add_permanent_v6(&h, eth0, GW6, HOST_MAC).await?;
            let after = neighbour::get_v6(&h, eth0, GW6).await?;
            Ok::<_, NetlinkError>((before, after))
        })
        .expect("neighbour ops");
    assert_eq!(before, None);
    assert_eq!(after, Some((HOST_MAC, neighbour::NUD_PERMANENT)));
    let out = pod.ip(&["-6", "neigh", "show", "fe80::1", "dev", "eth0"]);
    assert!(
        out.contains(&format!("fe80::1 lladdr {} PERMANENT", mac_str(HOST_MAC))),
        "{out}"
    );
}

#[test]
fn accept_ra_off_in_another_namespace() {
    let host = Ns::new();
    let pod = Ns::new();
    // A name that exists in no other namespace: were the write to land in the caller's
    // namespace instead of the pod's, it would fail (no such file) rather than change it.
    let peer = format!("vra{}", std::process::id() % 1_000_000);
    make_veth(&host, &pod, &peer, false);
    let file = format!("/proc/sys/net/ipv6/conf/{peer}/accept_ra");
    let read = || common::run("ip", &["netns", "exec", &pod.name, "cat", &file]);
    // Put it in a known non-zero state first (a new namespace's default is 1).
    let one = common::run(
        "ip",
        &[
            "netns",
            "exec",
            &pod.name,
            "sh",
            "-c",
            &format!("echo 1 > {file}"),
        ],
    );
    assert!(one.is_empty());
    assert_eq!(read().trim(), "1");
    let me = netns::id_of_path(std::path::Path::new("/proc/thread-self/ns/net")).expect("id");
    sysctl::no_accept_ra_in(pod.fd.as_fd(), &peer).expect("accept_ra=0 in pod ns");
    assert_eq!(read().trim(), "0");
    // The calling thread never left its namespace.
    let after = netns::id_of_path(std::path::Path::new("/proc/thread-self/ns/net")).expect("id");
    assert_eq!(me, after);
    // The link is still down: this happened before it ever came up.
    assert!(!pod.ip(&["-o", "link", "show", &peer]).contains(",UP"));
    // Again: already 0, no write, still fine.
    sysctl::no_accept_ra_in(pod.fd.as_fd(), &peer).expect("again");
    // The host end, from a thread in the host namespace.
    host.run(|_h| async move { sysctl::set(&sysctl::ipv6_conf("vpctest6", "accept_ra")?, "0") })
        .expect("host end");
    let host_file = "/proc/sys/net/ipv6/conf/vpctest6/accept_ra";
    let v = common::run("ip", &["netns", "exec", &host.name, "cat", host_file]);
    assert_eq!(v.trim(), "0");
    // A link that is not in that namespace: an error naming nothing changed.
    let err = sysctl::no_accept_ra_in(pod.fd.as_fd(), "vpctest6").expect_err("not in pod ns");
    assert!(err.is_not_found(), "{err:?}");
    assert!(matches!(
        sysctl::ipv6_conf("a/b", "accept_ra"),
        Err(NetlinkError::InvalidArgument(_))
    ));
}

#[test]
fn rule_from_v6() {
    let ns = Ns::new();
    let (had, has, other_table, v4_same_bits) = ns
        .run(|h| async move {
            let had = rule::has_from_v6(&h, POD6, 10_007).await?;
            rule::add_from_v6(&h, POD6, 10_007, 1_000).await?;
            rule::add_from_v6(&h, POD6, 10_007, 1_000).await?; // identical: success
            let has = rule::has_from_v6(&h, POD6, 10_007).await?;
            let other_table = rule::has_from_v6(&h, POD6, 10_008).await?;
            let v4_same_bits =
                rule::has_from(&h, std::net::Ipv4Addr::new(253, 0, 0, 16), 10_007).await?;
            Ok::<_, NetlinkError>((had, has, other_table, v4_same_bits))
        })
        .expect("rule ops");
    assert!(!had);
    assert!(has);
    assert!(!other_table);
    assert!(!v4_same_bits);
    let out = ns.ip(&["-6", "rule", "show"]);
    assert!(
        out.contains("1000:\tfrom fd00:10::5 lookup 10007"),
        "{out:?}"
    );
    assert!(!ns.ip(&["-4", "rule", "show"]).contains("10007"));
}

#[test]
fn write_in_spawned_thread_lands_in_that_namespace() {
    let host = Ns::new();
    let pod = Ns::new();
    let peer = format!("vrb{}", std::process::id() % 1_000_000);
    make_veth(&host, &pod, &peer, false);
    let file = format!("/proc/sys/net/ipv6/conf/{peer}/accept_ra");
    let read = || common::run("ip", &["netns", "exec", &pod.name, "cat", &file]);
    common::run(
        "ip",
        &[
            "netns",
            "exec",
            &pod.name,
            "sh",
            "-c",
            &format!("echo 1 > {file}"),
        ],
    );
    assert_eq!(read().trim(), "1");
    let me = netns::id_of_path(std::path::Path::new("/proc/thread-self/ns/net")).expect("id");
    let ns = pod.fd.try_clone().expect("dup netns fd");
    let knob = sysctl::ipv6_conf(&peer, "accept_ra").expect("path");
    let handle = sysctl::write_in_spawned(ns, knob, "0").expect("spawn");
    sysctl::join(handle).expect("written");
    assert_eq!(read().trim(), "0");
    assert_eq!(
        me,
        netns::id_of_path(std::path::Path::new("/proc/thread-self/ns/net")).expect("id")
    );
    // The same knob name in another namespace (the host's, where no such link is): an error.
    let ns = host.fd.try_clone().expect("dup netns fd");
    let knob = sysctl::ipv6_conf(&peer, "accept_ra").expect("path");
    let err = sysctl::join(sysctl::write_in_spawned(ns, knob, "0").expect("spawn"))
        .expect_err("no such link in the host namespace");
    assert!(err.is_not_found(), "{err:?}");
    // A bad path is refused before any thread starts.
    let ns = pod.fd.try_clone().expect("dup netns fd");
    assert!(matches!(
        sysctl::write_in_spawned(ns, "../x".into(), "0"),
        Err(NetlinkError::InvalidArgument(_))
    ));
}

/// The plugin's IPv6 ADD opens the pod end's `accept_ra` while it is in the pod namespace
/// for its netlink socket (issue 14): the file keeps that namespace, so the write from the
/// home namespace sets the pod's knob; the handle acts in the pod; the thread is back home.
#[test]
fn knob_opened_with_the_pod_socket_is_the_pods() {
    let host = Ns::new();
    let pod = Ns::new();
    let peer = format!("vro{}", std::process::id() % 1_000_000);
    make_veth(&host, &pod, &peer, false);
    let file = format!("/proc/sys/net/ipv6/conf/{peer}/accept_ra");
    let read = || common::run("ip", &["netns", "exec", &pod.name, "cat", &file]);
    common::run(
        "ip",
        &[
            "netns",
            "exec",
            &pod.name,
            "sh",
            "-c",
            &format!("echo 1 > {file}"),
        ],
    );
    assert_eq!(read().trim(), "1");
    let here = || netns::id_of_path(std::path::Path::new("/proc/thread-self/ns/net")).expect("id");
    let me = here();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let knob = sysctl::ipv6_conf(&peer, "accept_ra").expect("path");
    let (h, f) = rt
        .block_on(async { netns::connect_in_opening(pod.fd.as_fd(), &knob) })
        .expect("socket and knob in the pod");
    assert_eq!(me, here(), "the thread did not come back home");
    sysctl::write_file(f, "0").expect("written");
    assert_eq!(read().trim(), "0");
    let index = rt
        .block_on(link::index_by_name(&h, &peer))
        .expect("link lookup through the pod's socket");
    assert!(index.is_some(), "the handle does not act in the pod");
    // The same knob where no such link is (the lab's host namespace): an error, and the
    // thread is back home all the same.
    let err = rt
        .block_on(async { netns::connect_in_opening(host.fd.as_fd(), &knob) })
        .expect_err("no such link in the host namespace");
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(me, here());
}
