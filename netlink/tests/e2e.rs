//! End-to-end: the full per-pod recipe for two pods behind one private "host" namespace,
//! then a ping between them. Needs root:
//! `cargo test -p vpcnet-netlink --features test_as_root`.
#![cfg(feature = "test_as_root")]

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use common::Ns;
use vpcnet_netlink::veth::VethSpec;
use vpcnet_netlink::{address, link, neighbour, route, sysctl, veth, NetlinkError, RTPROT_VPCNET};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What the plugin's ADD does for one pod: veth, pod side config, host side route.
fn add_pod(
    host: &Ns,
    pod: &Ns,
    host_veth: &str,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
    ip: Ipv4Addr,
) {
    let pod_fd = pod.fd.as_fd();
    let host_index = host
        .run(|h| async move {
            let spec = VethSpec {
                host_name: host_veth,
                host_mac,
                peer_name: "eth0",
                peer_mac: pod_mac,
                peer_netns: pod_fd,
                peer_up: true,
                mtu: Some(1450),
            };
            veth::create(&h, &spec).await
        })
        .expect("veth create");

    pod.run(|h| async move {
        let eth0 = link::index_by_name(&h, "eth0")
            .await?
            .ok_or(NetlinkError::InvalidArgument("no eth0".into()))?;
        let lo = link::index_by_name(&h, "lo")
            .await?
            .ok_or(NetlinkError::InvalidArgument("no lo".into()))?;
        address::add(&h, eth0, ip, 32).await?;
        link::set_up(&h, lo).await?;
        route::add_link_scope(&h, GATEWAY, 32, eth0, RTPROT_VPCNET, false).await?;
        route::add_via(
            &h,
            Ipv4Addr::UNSPECIFIED,
            0,
            GATEWAY,
            Some(eth0),
            RTPROT_VPCNET,
            false,
        )
        .await?;
        neighbour::add_permanent(&h, eth0, GATEWAY, host_mac).await
    })
    .expect("pod side");

    host.run(|h| async move {
        sysctl::set("net/ipv4/ip_forward", "1")?;
        route::add_link_scope(&h, ip, 32, host_index, RTPROT_VPCNET, false).await
    })
    .expect("host side");
}

#[test]
fn two_pods_ping() {
    let host = Ns::new();
    let pod1 = Ns::new();
    let pod2 = Ns::new();
    let ip1 = Ipv4Addr::new(10, 99, 0, 5);
    let ip2 = Ipv4Addr::new(10, 99, 0, 6);
    add_pod(
        &host,
        &pod1,
        "vpcpod1",
        [0xee, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 5],
        ip1,
    );
    add_pod(
        &host,
        &pod2,
        "vpcpod2",
        [0xee, 0, 0, 0, 0, 2],
        [0x02, 0, 0, 0, 0, 6],
        ip2,
    );

    // `ip -n HOST route show proto 171`
    let routes = host.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(
        routes.contains("10.99.0.5 dev vpcpod1 scope link"),
        "{routes}"
    );
    assert!(
        routes.contains("10.99.0.6 dev vpcpod2 scope link"),
        "{routes}"
    );
    // `ip -n POD1 route show proto 171`
    let pod_routes = pod1.ip(&["-4", "route", "show", "proto", "171"]);
    assert!(
        pod_routes.contains("default via 169.254.1.1 dev eth0"),
        "{pod_routes}"
    );
    assert!(
        pod_routes.contains("169.254.1.1 dev eth0 scope link"),
        "{pod_routes}"
    );

    let ok = common::succeeds(
        "ip",
        &[
            "netns",
            "exec",
            &pod1.name,
            "ping",
            "-c1",
            "-W1",
            "10.99.0.6",
        ],
    );
    assert!(ok, "ping pod1 -> pod2 failed");
    let ok = common::succeeds(
        "ip",
        &[
            "netns",
            "exec",
            &pod2.name,
            "ping",
            "-c1",
            "-W1",
            "10.99.0.5",
        ],
    );
    assert!(ok, "ping pod2 -> pod1 failed");
}
