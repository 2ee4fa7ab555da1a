//! CPU per peer route: one request each through the rtnetlink connection task (32 in flight,
//! as the agent's peer loop did) against [`RouteBatch`] (many to one `sendmsg`). Run as root
//! inside a private namespace that has an underlay for the gateways (docs/benchmarks.md §
//! Scale, thirteenth part):
//!   ip netns add vcrb; ip -n vcrb link add d0 type veth peer name d1
//!   ip -n vcrb addr add 172.30.0.2/16 dev d0; ip -n vcrb link set d0 up; ip -n vcrb link set d1 up
//!   ip netns exec vcrb target/release/examples/route_batch [ROUTES] [ROUNDS]; ip netns del vcrb
//! Each round replaces ROUTES /28 routes (default 4000) via a new gateway, both ways; the
//! figure is the thread's run time (`/proc/thread-self/schedstat`: the connection task runs
//! on the same current-thread runtime) per route.
use std::net::Ipv4Addr;

use futures::StreamExt;
use vpcnet_netlink::route::{self, RouteV4};
use vpcnet_netlink::route_batch::{RouteBatch, RouteChange};

fn run_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat")
}

fn routes(n: u32, gw: Ipv4Addr) -> Vec<RouteV4> {
    (0..n)
        .map(|i| RouteV4 {
            dst: Ipv4Addr::from(0x0a80_0000 + i * 16),
            dst_len: 28,
            gateway: Some(gw),
            oif: None,
            protocol: vpcnet_netlink::RTPROT_VPCNET,
            scope: route::RT_SCOPE_UNIVERSE,
            kind: route::RTN_UNICAST,
            table: route::RT_TABLE_MAIN,
            metric: 0,
        })
        .collect()
}

fn main() {
    let arg = |i: usize, d: u32| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (n, rounds) = (arg(1, 4000), arg(2, 3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let h = vpcnet_netlink::connect().expect("netlink");
        let mut batch = RouteBatch::open().expect("route batch socket");
        for round in 0..rounds {
            let gw = |k: u32| Ipv4Addr::new(172, 30, 0, u8::try_from(10 + 2 * round + k).unwrap_or(250));
            let rs = routes(n, gw(0));
            let t = run_ns();
            let done: Vec<_> = futures::stream::iter(rs.iter())
                .map(|r| route::add_route(&h, r, true))
                .buffer_unordered(32)
                .collect()
                .await;
            let one = (run_ns() - t) as f64 / 1e3 / f64::from(n);
            assert!(done.iter().all(Result::is_ok), "rtnetlink: a route failed");
            let changes: Vec<_> = routes(n, gw(1)).into_iter().map(RouteChange::Replace).collect();
            let t = run_ns();
            let done = batch.apply(&changes);
            let many = (run_ns() - t) as f64 / 1e3 / f64::from(n);
            assert!(done.iter().all(Result::is_ok), "batch: a route failed");
            println!("round {round}: {n} routes, CPU per route: one request each {one:.1} µs, batched {many:.1} µs");
        }
    });
}
