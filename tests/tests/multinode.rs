//! Many nodes sharing one VPC through etcd (root): a switch namespace, N node namespaces, a
//! real etcd, one real vpcnetd per node (`--datastore etcd`), pods wired by the real plugin.
//! See `vpcnet_tests::cluster` for the topology.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use vpcnet_tests::cluster::{Cluster, Pod, ETCD_URL, OUTSIDE_IP, SWITCH_IP};
use vpcnet_tests::in_cidr;
use vpcnet_tests::netns::{connect_from, OneShotListener};

fn elapsed(t0: Instant) -> String {
    format!("{:.1}s", t0.elapsed().as_secs_f64())
}

/// The lab itself: switch, nodes on the underlay, etcd answering from every node.
#[test]
fn topology_underlay_and_etcd() {
    let t0 = Instant::now();
    let mut c = Cluster::new(3, "10.240.0.0/16");
    let out = c.add_outside();
    assert!(c.etcd_healthy());
    // Node to node, node to switch and to the outside namespace, over the bridge.
    let mut pairs = Vec::new();
    for a in &c.nodes {
        for b in &c.nodes {
            if a.k != b.k {
                pairs.push((a.ns.clone(), b.ip));
            }
        }
        pairs.push((a.ns.clone(), SWITCH_IP));
        pairs.push((a.ns.clone(), OUTSIDE_IP));
    }
    let failed = Cluster::ping_all(&pairs, 8);
    assert!(failed.is_empty(), "underlay pings failed: {failed:?}");
    // etcd's gateway answers from the switch; a range on an empty keyspace is empty.
    assert_eq!(c.etcd_range("/vpcnet/").expect("range"), vec![]);
    // etcd is reachable from inside a node (what the agent does).
    let n1 = c.node(1).ns.clone();
    assert!(
        vpcnet_tests::sh_ok(&format!(
            "nsenter --net=/var/run/netns/{n1} curl -sf -m 3 {ETCD_URL}/health"
        )),
        "etcd not reachable from node1"
    );
    // A TCP round trip between two namespaces with the std-thread helpers.
    let l = OneShotListener::start(&out, OUTSIDE_IP, Duration::from_secs(5)).expect("listen");
    let local = connect_from(&n1, l.addr, Duration::from_secs(3)).expect("connect");
    assert_eq!(local.ip(), c.node(1).ip);
    assert_eq!(l.peer().expect("peer").ip(), c.node(1).ip);
    // stop/start keeps the data directory.
    c.stop_etcd();
    assert!(!c.etcd_healthy());
    c.start_etcd();
    assert!(c.etcd_healthy());
    eprintln!("topology: {}", elapsed(t0));
}

/// 3 nodes × 20 pods: every pod reaches pods on every node; no prefix is held twice, in etcd
/// or in the kernel.
#[test]
fn mesh_three_nodes_twenty_pods() {
    let t0 = Instant::now();
    let mut c = Cluster::new(3, "10.240.0.0/16");
    c.start_agents(&["--peer-sync-interval", "1s"]);
    let mut pods: Vec<Pod> = Vec::new();
    for k in 1..=3 {
        pods.extend(c.add_pods(k, 20, 4));
    }
    let t_add = elapsed(t0);
    // Addresses are unique.
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), pods.len(), "duplicate pod addresses");
    c.wait_consistent(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    // Each pod's address lies in a prefix its own node claimed.
    let claims = c.claims().expect("claims");
    for p in &pods {
        let owner = claims
            .iter()
            .find(|cl| in_cidr(p.ip, &cl.prefix))
            .unwrap_or_else(|| panic!("{} ({}) in no claimed prefix", p.cid, p.ip));
        assert_eq!(owner.node, format!("node{}", p.node), "{p:?} vs {owner:?}");
        assert_eq!(
            owner.lease, 0,
            "claim {} hangs off a lease (ownership must not expire with liveness)",
            owner.key
        );
    }
    // Liveness apart from the claims: each node's alive key, on a lease (a node whose first
    // claim came before its lease writes it at the lease's first renewal, TTL/3 = 5 s).
    for k in 1..=3 {
        let key = format!("/vpcnet/nodes/node{k}/alive");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive = c.etcd_range(&key).expect("alive key");
            if alive.len() == 1 && alive[0].2 != 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{k} not announced on a lease: {alive:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Reachability: one pod per node pings every other pod, plus 300 random cross pairs.
    let mut pairs: Vec<(&Pod, &Pod)> = Vec::new();
    for k in 1..=3 {
        let src = pods.iter().find(|p| p.node == k).expect("pod on node");
        pairs.extend(pods.iter().filter(|p| p.ns != src.ns).map(|p| (src, p)));
    }
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sampled = 0;
    while sampled < 300 {
        let a = &pods[rng.usize(..pods.len())];
        let b = &pods[rng.usize(..pods.len())];
        if a.ns != b.ns {
            pairs.push((a, b));
            sampled += 1;
        }
    }
    let cross = pairs.iter().filter(|(a, b)| a.node != b.node).count();
    let failed = Cluster::ping_pods(&pairs, 16);
    assert!(
        failed.is_empty(),
        "{} of {} pings failed (seed {seed}): {failed:#?}",
        failed.len(),
        pairs.len()
    );
    eprintln!(
        "mesh: 60 pods ADDed in {t_add}, {} pings ({cross} across nodes) ok, total {}",
        pairs.len(),
        elapsed(t0)
    );
}

/// Three agents start at once against a VPC of four /28s, ten times: never an overlap. With
/// a VPC of two /28s, the node left without a prefix fails ADD with code 11, promptly.
#[test]
fn claim_race_never_overlaps() {
    let t0 = Instant::now();
    let mut c = Cluster::new(3, "10.240.0.0/26");
    for round in 0..10 {
        for k in 1..=3 {
            c.reset_node_state(k);
        }
        let ks = format!("/race{round}");
        c.start_agents(&[
            "--etcd-prefix",
            &ks,
            "--warm-prefix-target",
            "1",
            "--peer-sync-interval",
            "1s",
        ]);
        // Each agent wants one wholly free prefix: three of the four end up claimed, by
        // three different nodes, and every pool holds exactly its claims.
        let key_prefix = format!("{ks}/claims/");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        loop {
            let claims = c.claims_under(&key_prefix).expect("claims");
            let pools: Vec<Vec<String>> = (1..=3)
                .map(|k| c.pool_prefixes(k).expect("status"))
                .collect();
            let mut seen = BTreeMap::new();
            for (i, pool) in pools.iter().enumerate() {
                for p in pool {
                    if let Some(other) = seen.insert(p.clone(), i + 1) {
                        panic!(
                            "round {round}: {p} in the pools of node{other} and node{}",
                            i + 1
                        );
                    }
                }
            }
            let ok = (1..=3).all(|k| {
                let mine = Cluster::claims_of(&claims, &format!("node{k}"));
                mine.len() == 1 && pools[k - 1] == mine
            });
            if ok {
                break;
            }
            last = format!("claims {claims:?}, pools {pools:?}");
            assert!(Instant::now() < deadline, "round {round}: {last}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = last;
        // And the kernel agrees: each node's unreachable prefix is its claim, peers route it.
        c.claims_key = key_prefix;
        c.wait_consistent(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let t_rounds = elapsed(t0);
    // Too small for everyone: two /28s, three nodes.
    let mut c2 = Cluster::new(3, "10.240.0.0/27");
    c2.start_agents(&["--warm-prefix-target", "1", "--peer-sync-interval", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c2.claims().expect("claims").len() < 2 {
        assert!(Instant::now() < deadline, "two claims never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let claims = c2.claims().expect("claims");
    let owners: BTreeSet<String> = claims.iter().map(|cl| cl.node.clone()).collect();
    assert_eq!(
        owners.len(),
        2,
        "two different nodes hold the two prefixes: {claims:?}"
    );
    let unlucky = (1..=3)
        .find(|k| !owners.contains(&format!("node{k}")))
        .expect("one node without a prefix");
    let ta = Instant::now();
    let (_, cid, out) = c2.try_add_pod(unlucky);
    let took = ta.elapsed();
    assert!(
        !out.ok(),
        "ADD {cid} on node{unlucky} succeeded: {}",
        out.stdout
    );
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    let msg = out.msg().to_lowercase();
    assert!(
        msg.contains("exhausted") || msg.contains("no free") || msg.contains("vpc"),
        "unclear message: {}",
        out.stdout
    );
    assert!(took < Duration::from_secs(10), "ADD took {took:?}");
    // The lucky ones still serve.
    for k in (1..=3).filter(|&k| k != unlucky) {
        c2.add_pods(k, 2, 2);
    }
    eprintln!(
        "claim race: 10 rounds in {t_rounds}; unlucky ADD: code 11 in {took:?} ({}); total {}",
        out.msg(),
        elapsed(t0)
    );
}

/// kill -9 with a 3 s lease and a 2 s claim grace: a restart within the TTL keeps the claims
/// (pods keep working); a node that stays dead has them swept by a peer once its lease lapsed
/// for the grace, peers withdraw its routes, another node reuses them.
#[test]
fn dead_node_loses_prefixes_restart_keeps_them() {
    const SWEEP_METRICS: &str = "127.0.0.1:9972";
    let t0 = Instant::now();
    let ttl = 3;
    let grace = 2;
    let sync = 1;
    // Four /28s: each node holds one (warm-ip-target 2, no wholly-free target), one is spare.
    let mut c = Cluster::new(3, "10.240.0.0/26");
    c.agent_flags = [
        "--etcd-lease-ttl",
        "3s",
        "--etcd-claim-grace",
        "2s",
        "--metrics-addr",
        SWEEP_METRICS,
        "--peer-sync-interval",
        "1s",
        "--warm-prefix-target",
        "0",
        "--warm-ip-target",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.start_agents(&[]);
    let p1 = c.add_pods(1, 1, 1);
    let p3 = c.add_pods(3, 3, 3);
    c.wait_consistent(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = Cluster::claims_of(&c.claims().expect("claims"), "node3");
    assert!(!before.is_empty(), "node3 holds no prefix");
    let revisions = |c: &Cluster| -> Vec<(String, i64)> {
        let mut v: Vec<_> = c
            .claims()
            .expect("claims")
            .into_iter()
            .filter(|cl| cl.node == "node3")
            .map(|cl| (cl.prefix, cl.create_revision))
            .collect();
        v.sort();
        v
    };
    let revs_before = revisions(&c);

    // Crash and restart within the TTL: same claims, pods still reachable.
    c.restart_agent(3);
    std::thread::sleep(Duration::from_secs(ttl + 2));
    let after = Cluster::claims_of(&c.claims().expect("claims"), "node3");
    assert_eq!(
        before, after,
        "node3's claims changed across a restart within the TTL"
    );
    assert_eq!(
        revs_before,
        revisions(&c),
        "node3's claim keys were deleted and re-created across the restart (churn)"
    );
    assert_eq!(c.pool_prefixes(3).expect("status"), before);
    c.wait_consistent(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("after restart: {e}"));
    let pairs: Vec<(&Pod, &Pod)> = p3.iter().map(|p| (&p1[0], p)).collect();
    let failed = Cluster::ping_pods(&pairs, 4);
    assert!(failed.is_empty(), "after restart: {failed:?}");

    // Crash for good.
    c.kill_agent(3);
    let tk = Instant::now();
    // The lease lapses (≤ ttl), a peer's sweep sees it within a round (grace/4 = 0.5 s), sweeps
    // after the grace and up to a round; then the peers' routes follow.
    let bound = Duration::from_secs(ttl + grace + sync + 5);
    let gone = c
        .wait_consistent(bound)
        .unwrap_or_else(|e| panic!("dead node3: {e}"));
    eprintln!(
        "dead node3: claims gone and routes withdrawn after {:?}",
        tk.elapsed()
    );
    let _ = gone;
    // Taken back by a peer's sweep (one of them, or both each a part: their txns compare).
    let swept: f64 = (1..=2)
        .map(|k| {
            c.metric(k, SWEEP_METRICS, "vpcnet_etcd_claims_swept_total")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .sum();
    assert_eq!(
        swept,
        before.len() as f64,
        "the peers' vpcnet_etcd_claims_swept_total vs node3's {before:?}"
    );
    for k in 1..=2 {
        let routes = c.routes(k);
        for p in &before {
            assert!(
                routes.iter().all(|r| &r.dst != p),
                "node{k} still routes {p}: {routes:?}"
            );
        }
    }
    // A burst on node2 needs three prefixes: its own, the spare, and node3's old one(s).
    let burst = c.add_pods(2, 40, 4);
    let reused: Vec<_> = burst
        .iter()
        .filter(|p| before.iter().any(|pre| in_cidr(p.ip, pre)))
        .collect();
    assert!(
        !reused.is_empty(),
        "no burst address came from node3's old prefixes {before:?}"
    );
    c.wait_consistent(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("after burst: {e}"));
    let pairs: Vec<(&Pod, &Pod)> = burst.iter().take(8).map(|p| (&p1[0], p)).collect();
    let failed = Cluster::ping_pods(&pairs, 4);
    assert!(failed.is_empty(), "node1 → node2 burst pods: {failed:?}");
    eprintln!(
        "dead node: {} burst pods from node3's old prefixes; total {}",
        reused.len(),
        elapsed(t0)
    );
}

/// etcd down: ADDs from the warm pool still succeed, status says degraded; etcd back: the
/// agents recover, claim again, and etcd, pools and routes converge.
#[test]
fn etcd_outage_serves_from_pool_and_recovers() {
    let t0 = Instant::now();
    let mut c = Cluster::new(3, "10.240.0.0/16");
    c.agent_flags = [
        "--warm-ip-target",
        "5",
        "--warm-prefix-target",
        "0",
        "--peer-sync-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.start_agents(&[]);
    c.wait_consistent(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let held: Vec<usize> = (1..=3)
        .map(|k| c.pool_prefixes(k).expect("status").len())
        .collect();
    c.stop_etcd();
    let t_stop = Instant::now();
    // 12 of each node's 16 addresses: served from the pool; the warm loop then wants more
    // (available 4 < 5) and cannot reach etcd.
    let mut pods = Vec::new();
    for k in 1..=3 {
        pods.extend(c.add_pods(k, 12, 4));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for k in 1..=3 {
        loop {
            let d = c.degraded(k).expect("status while etcd is down");
            if !d.is_empty() {
                eprintln!("node{k} degraded after {:?}: {d:?}", t_stop.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "node{k} never reported degraded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Peer routes stay during the outage (a few peer-sync rounds): pods made meanwhile reach
    // each other across nodes.
    std::thread::sleep(Duration::from_secs(2));
    let pairs: Vec<(&Pod, &Pod)> = (1..=3)
        .flat_map(|k| {
            let src = pods.iter().find(|p| p.node == k).expect("pod");
            pods.iter()
                .filter(move |p| p.node != k)
                .take(6)
                .map(move |b| (src, b))
        })
        .collect();
    let failed = Cluster::ping_pods(&pairs, 8);
    assert!(failed.is_empty(), "during the outage: {failed:?}");
    let outage = t_stop.elapsed();
    c.start_etcd();
    let t_back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(40);
    for k in 1..=3 {
        loop {
            let d = c.degraded(k).expect("status");
            let grown = c.pool_prefixes(k).expect("status").len() > held[k - 1];
            if d.is_empty() && grown {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{k} still degraded ({d:?}) or not grown 40 s after etcd returned"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let recovered = t_back.elapsed();
    c.wait_consistent(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("after etcd returned: {e}"));
    // Pods made during the outage reach each other across nodes.
    let pairs: Vec<(&Pod, &Pod)> = pods
        .iter()
        .filter(|p| p.node == 1)
        .take(2)
        .flat_map(|a| pods.iter().filter(|p| p.node != 1).map(move |b| (a, b)))
        .collect();
    let failed = Cluster::ping_pods(&pairs, 8);
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!(
        "etcd outage: {outage:?} down, recovered {recovered:?} after restart; total {}",
        elapsed(t0)
    );
}

/// Pod → outside the VPC leaves with the node's address; pod → pod keeps the pod's.
#[test]
fn snat_outside_only() {
    let t0 = Instant::now();
    let mut c = Cluster::new(2, "10.240.0.0/16");
    let out = c.add_outside();
    c.start_agents(&["--peer-sync-interval", "1s"]);
    let a = c.add_pods(1, 1, 1).remove(0);
    let b = c.add_pods(2, 1, 1).remove(0);
    c.wait_consistent(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let timeout = Duration::from_secs(5);
    for (pod, node_ip) in [(&a, c.node(1).ip), (&b, c.node(2).ip)] {
        let l = OneShotListener::start(&out, OUTSIDE_IP, timeout).expect("listen outside");
        let local = connect_from(&pod.ns, l.addr, timeout)
            .unwrap_or_else(|e| panic!("{} → outside: {e}", pod.cid));
        assert_eq!(local.ip(), pod.ip, "the pod's own view of its address");
        let peer = l.peer().expect("outside saw a connection");
        assert_eq!(peer.ip(), node_ip, "outside must see the node address");
    }
    // Pod to pod across nodes: no SNAT.
    let l = OneShotListener::start(&b.ns, b.ip, timeout).expect("listen in pod b");
    connect_from(&a.ns, SocketAddr::from((b.ip, l.addr.port())), timeout)
        .unwrap_or_else(|e| panic!("a → b: {e}"));
    assert_eq!(l.peer().expect("b saw a connection").ip(), a.ip);
    eprintln!("snat: {}", elapsed(t0));
}

/// Issue 10: routes follow watch deltas. A claim of another node appearing in etcd adds
/// exactly its route on the other nodes; its removal withdraws exactly that route; neither
/// lists the claims (`vpcnet_datastore_requests_total{op="list"}` unchanged) nor re-plans
/// every route (`vpcnet_peer_route_updates_total{how="replan"}` unchanged, `delta` +1 each).
#[test]
fn peer_claim_delta_changes_exactly_one_route_without_listing() {
    const METRICS: &str = "127.0.0.1:9971";
    const LIST: &str = "vpcnet_datastore_requests_total{op=\"list\"}";
    const REPLAN: &str = "vpcnet_peer_route_updates_total{how=\"replan\"}";
    const DELTA: &str = "vpcnet_peer_route_updates_total{how=\"delta\"}";
    let mut c = Cluster::new(2, "10.240.0.0/16");
    // The long timer out of the way: any re-plan during the test would be the delta path's.
    c.start_agents(&["--metrics-addr", METRICS, "--peer-sync-interval", "1h"]);
    c.wait_consistent(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let routes = |k: usize| -> BTreeSet<String> {
        c.routes(k)
            .iter()
            .map(|r| format!("{} {} {:?}", r.dst, r.kind, r.via))
            .collect()
    };
    let counters = |k: usize| -> [f64; 3] {
        [LIST, REPLAN, DELTA].map(|m| c.metric(k, METRICS, m).unwrap_or_else(|e| panic!("{e}")))
    };
    // Settled: the warm pool no longer changes (no more pool-change re-plans).
    let mut last = (routes(1), routes(2), counters(1), counters(2));
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(15), || {
            std::thread::sleep(Duration::from_millis(1500));
            let now = (routes(1), routes(2), counters(1), counters(2));
            let same = now == last;
            last = now;
            same
        }),
        "routes and counters never settled"
    );
    let (before1, before2, m1, m2) = last;
    // A claim of a third node ("ghost", next hop the switch's address, on every node's link),
    // written straight into etcd.
    let key = format!("{}10.240.200.0-28", c.claims_key);
    let gw = SWITCH_IP;
    let value = serde_json::json!({
        "prefix": "10.240.200.0/28", "node": "ghost", "nodeIp": gw.to_string(), "claimedAt": 1
    })
    .to_string();
    c.etcd_put(&key, &value).expect("put");
    let added = format!("10.240.200.0/28 unicast {:?}", Some(gw));
    let mut want1 = before1.clone();
    want1.insert(added.clone());
    let mut want2 = before2.clone();
    want2.insert(format!("10.240.200.0/28 unicast {:?}", Some(gw)));
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(5), || routes(1) == want1
            && routes(2) == want2),
        "after the put: node1 {:?} (want {want1:?}), node2 {:?}",
        routes(1),
        routes(2)
    );
    for (k, m) in [(1, m1), (2, m2)] {
        let now = counters(k);
        assert_eq!(now[0], m[0], "node{k} listed the claims for one delta");
        assert_eq!(now[1], m[1], "node{k} re-planned every route for one delta");
        assert_eq!(now[2], m[2] + 1.0, "node{k}: one delta, one route change");
    }
    // The claim goes: exactly that route goes.
    assert_eq!(c.etcd_delete(&key).expect("delete"), 1);
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(5), || routes(1) == before1
            && routes(2) == before2),
        "after the delete: node1 {:?} (want {before1:?}), node2 {:?}",
        routes(1),
        routes(2)
    );
    for (k, m) in [(1, m1), (2, m2)] {
        let now = counters(k);
        assert_eq!(now[0], m[0], "node{k} listed the claims for a removal");
        assert_eq!(now[1], m[1], "node{k} re-planned every route for a removal");
        assert_eq!(now[2], m[2] + 2.0, "node{k}: two deltas, two route changes");
    }
    c.wait_consistent(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Peer and own prefix routes go at one metric per prefix (issue 10: the kernel's IPv4
/// fib_info hash does not cover the gateway, so one metric for all put every route in one
/// bucket), and the routes an older agent left at metric 0 are replaced when the new one
/// starts: the right route first, then the old one deleted, so no prefix is ever unrouted.
#[test]
fn routes_at_metric_0_from_an_older_agent_are_migrated() {
    let mut c = Cluster::new(3, "10.240.0.0/16");
    c.start_agents(&[]);
    c.wait_consistent(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = c.node(1).ns.clone();
    // Node 1's peer `via` and own `unreachable` routes (not the pods').
    let managed = || -> Vec<vpcnet_tests::cluster::OurRoute> {
        vpcnet_tests::sh(&format!("ip -n {ns} -4 route show proto 171"))
            .lines()
            .filter_map(vpcnet_tests::cluster::parse_route)
            .filter(|r| r.via.is_some() || r.is_local_prefix())
            .collect()
    };
    let before = managed();
    assert!(before.len() >= 3, "{before:?}");
    let metrics: BTreeSet<u32> = before.iter().filter_map(|r| r.metric).collect();
    assert_eq!(
        metrics.len(),
        before.len(),
        "one metric per prefix: {before:?}"
    );
    assert!(!metrics.contains(&0));
    // What an agent of before this change left: every one of these at metric 0. The agent is
    // stopped meanwhile (its routes stay: nothing is withdrawn at shutdown).
    let exe = vpcnet_tests::bin("vpcnetd");
    c.roll_agent(1, &exe, || {
        for r in &before {
            let (what, via) = match r.via {
                Some(gw) => ("", format!("via {gw}")),
                None => (r.kind.as_str(), String::new()),
            };
            let metric = r.metric.expect("metric");
            vpcnet_tests::sh(&format!(
                "ip -n {ns} route del {what} {} {via} proto 171 metric {metric} && \
                 ip -n {ns} route add {what} {} {via} proto 171",
                r.dst, r.dst
            ));
        }
        let old = managed();
        assert!(
            old.len() == before.len() && old.iter().all(|r| r.metric.is_none()),
            "set-up: {old:?}"
        );
    });
    // The new agent's start-up re-plan: each at its metric again, the metric-0 ones gone.
    let migrated = || {
        let now = managed();
        now.len() == before.len() && now.iter().all(|r| before.contains(r))
    };
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(10), migrated),
        "not migrated: {:?} (before: {before:?})",
        managed()
    );
    c.wait_consistent(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
}
