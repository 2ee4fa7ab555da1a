//! Dual-stack (issue 11) on many nodes, end to end on the real kernel: the multi-node lab of
//! `vpcnet_tests::cluster` (a switch namespace, three node namespaces, a real etcd, one real
//! `vpcnetd` per node on etcd, pods wired by the real plugin) with an IPv6 underlay beside the
//! IPv4 one (`fd00:199::1k/64` on every node's `eth0`, given to the agent as its IPv6
//! `--node-ip`: peers route its IPv6 prefix via it).
//!
//! * dual-stack and IPv6-only, 3 nodes × 10 pods: every pod reaches every other pod over each
//!   family it has, and its own node (ping), a sample of cross-node TCP connections arrives
//!   from the pod's own address (routed, not translated);
//! * kill -9 of one dual-stack agent mid-churn (an ADD/DEL loop of short-lived pods on its
//!   node) and a restart: no address of either family held twice cluster-wide (CNI results and
//!   every agent's `status --json` allocations), none leaked once the churn pods are DELeted,
//!   every surviving pod passes CHECK and is still reachable across nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::cluster::{node_ip, Cluster, CNI_TIMEOUT_S};
use vpcnet_tests::netns::{self, connect_from, OneShotListener};
use vpcnet_tests::{cni, sh, wait_until, CniOutput};

const VPC4: &str = "10.240.0.0/16";
const VPC6: &str = "fd00:70::/64";

/// Node `k`'s IPv6 underlay address.
fn node_ip6(k: usize) -> Ipv6Addr {
    let low = u16::try_from(0x10 + k).expect("small node number");
    Ipv6Addr::new(0xfd00, 0x199, 0, 0, 0, 0, 0, low)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V6Only,
    Dual,
}

/// One pod after a successful ADD.
#[derive(Debug, Clone)]
struct Pod {
    node: usize,
    ns: String,
    cid: String,
    v4: Option<Ipv4Addr>,
    v6: Ipv6Addr,
    result: Value,
}

impl Pod {
    fn addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.v4.map(IpAddr::V4).into_iter().collect();
        v.push(IpAddr::V6(self.v6));
        v
    }
}

/// The cluster of `mode` (VPC per mode), the IPv6 underlay, agents running.
fn cluster(mode: Mode, extra: &[&str]) -> Cluster {
    let vpc = match mode {
        Mode::V6Only => VPC6.to_string(),
        Mode::Dual => format!("{VPC4},{VPC6}"),
    };
    let mut c = Cluster::new(3, &vpc);
    for k in 1..=3 {
        sh(&format!(
            "ip -n {} addr add {}/64 dev eth0 nodad",
            c.node(k).ns,
            node_ip6(k)
        ));
    }
    for k in 1..=3 {
        start_agent(&mut c, k, extra);
    }
    c
}

/// Node `k`'s agent with its IPv6 `--node-ip` (the IPv4 one is the cluster's own flag).
fn start_agent(c: &mut Cluster, k: usize, extra: &[&str]) {
    let ip6 = node_ip6(k).to_string();
    let mut args = vec!["--node-ip", ip6.as_str(), "--peer-sync-interval", "500ms"];
    args.extend_from_slice(extra);
    c.start_agent(k, &args);
}

/// Until every node routes every other node's claims of `family` (4 or 6) via that node's
/// address of the family and holds its own `unreachable`; every node holds one at least.
fn wait_routed(c: &Cluster, family: u8, timeout: Duration) {
    let mut last = String::new();
    let ok = wait_until(timeout, || {
        let Ok(kvs) = c.etcd_range("/vpcnet/claims/") else {
            last = "etcd range failed".into();
            return false;
        };
        let mut claims: Vec<(String, usize)> = Vec::new();
        for (_, value, _, _) in kvs {
            let v: Value = serde_json::from_str(&value).expect("claim JSON");
            let p = v["prefix"].as_str().expect("claim prefix").to_string();
            if p.contains(':') != (family == 6) {
                continue;
            }
            let node = v["node"].as_str().expect("claim node");
            let k: usize = node
                .trim_start_matches("node")
                .parse()
                .expect("node<k> name");
            claims.push((p, k));
        }
        if (1..=3).any(|k| !claims.iter().any(|(_, o)| *o == k)) {
            last = format!("not every node claims an IPv{family} prefix: {claims:?}");
            return false;
        }
        for k in 1..=3 {
            let r = sh(&format!(
                "ip -n {} -{family} route show proto 171",
                c.node(k).ns
            ));
            for (p, owner) in &claims {
                let want = if *owner == k {
                    format!("unreachable {p} ")
                } else if family == 6 {
                    format!("{p} via {} dev eth0 ", node_ip6(*owner))
                } else {
                    format!("{p} via {} dev eth0 ", node_ip(*owner))
                };
                if !r.lines().any(|l| l.starts_with(want.as_str())) {
                    last = format!("node{k} lacks `{want}`: {r}");
                    return false;
                }
            }
        }
        true
    });
    assert!(ok, "IPv{family} routes never converged: {last}");
}

/// The netconf of node `k`'s plugin.
fn conf(c: &Cluster, k: usize) -> Value {
    c.node(k).conf()
}

/// One plugin call on node `k` with netconf `conf` (no borrow of the cluster: usable from
/// a thread while the test kills and restarts agents).
fn cni_call(node_ns: &str, conf: &Value, command: &str, cid: &str, pod_ns: &str) -> CniOutput {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={cid}");
    let path = netns::path(pod_ns);
    let mut env = cni::env(command, cid, "eth0", &path).to_vec();
    env.push(("CNI_ARGS", &args));
    cni::invoke(
        node_ns,
        conf.to_string().as_bytes(),
        &env,
        Some(CNI_TIMEOUT_S),
    )
}

fn pod_of(mode: Mode, node: usize, ns: String, cid: String, out: &CniOutput) -> Pod {
    out.expect_ok(&format!("ADD {cid} on node{node}"));
    let (v4, v6) = vpcnet_tests::cni::result_ips(out);
    let v6 = v6.unwrap_or_else(|| panic!("ADD {cid}: no IPv6 address: {}", out.stdout));
    assert!(
        vpcnet_tests::in_cidr6(v6, VPC6),
        "{cid}: {v6} outside {VPC6}"
    );
    match mode {
        Mode::V6Only => assert_eq!(v4, None, "{cid}: IPv4 in an IPv6-only pod"),
        Mode::Dual => {
            let v4 = v4.unwrap_or_else(|| panic!("{cid}: no IPv4: {}", out.stdout));
            assert!(
                vpcnet_tests::in_cidr(v4, VPC4),
                "{cid}: {v4} outside {VPC4}"
            );
        }
    }
    Pod {
        node,
        ns,
        cid,
        v4,
        v6,
        result: out.json.clone(),
    }
}

/// `count` pods on node `k`, ADDed two at a time.
fn add_pods(c: &mut Cluster, mode: Mode, k: usize, count: usize) -> Vec<Pod> {
    let nss = c.new_pod_namespaces(k, count);
    let node_ns = c.node(k).ns.clone();
    let conf = conf(c, k);
    let outs = vpcnet_tests::par_map(&nss, 2, |(ns, cid)| {
        cni_call(&node_ns, &conf, "ADD", cid, ns)
    });
    nss.into_iter()
        .zip(outs)
        .map(|((ns, cid), out)| pod_of(mode, k, ns, cid, &out))
        .collect()
}

/// Every pod pings every other pod over each family it has, and its own node's address of
/// each family.
fn mesh(pods: &[Pod]) -> Vec<String> {
    let jobs: Vec<(String, Vec<String>)> = pods
        .iter()
        .map(|me| {
            let mut targets: Vec<String> = Vec::new();
            for p in pods.iter().filter(|p| p.cid != me.cid) {
                targets.push(p.v6.to_string());
                if let (Some(_), Some(v4)) = (me.v4, p.v4) {
                    targets.push(v4.to_string());
                }
            }
            targets.push(node_ip6(me.node).to_string());
            if me.v4.is_some() {
                targets.push(node_ip(me.node).to_string());
            }
            (me.ns.clone(), targets)
        })
        .collect();
    vpcnet_tests::ping::ping_matrix(&jobs, usize::MAX)
}

/// A TCP connection from pod `a` to a listener in pod `b` on `to`: it arrives from `from`.
fn tcp(a: &Pod, from: IpAddr, b: &Pod, to: IpAddr) {
    let l = OneShotListener::start(&b.ns, to, Duration::from_secs(8)).expect("listen");
    let local = connect_from(&a.ns, l.addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}@node{} -> {}: TCP {e}", a.cid, a.node, l.addr));
    let peer: SocketAddr = l.peer().expect("accepted");
    assert_eq!(peer.ip(), from, "{} -> {}: seen from {peer}", a.cid, b.cid);
    assert_eq!(local.ip(), from);
}

/// TCP over each family between a pod of every node and a pod of every other node.
fn tcp_samples(pods: &[Pod]) -> usize {
    let mut n = 0;
    for a in 1..=3 {
        for b in (1..=3).filter(|&b| b != a) {
            let pa = pods.iter().rev().find(|p| p.node == a).expect("pod on a");
            let pb = pods.iter().find(|p| p.node == b).expect("pod on b");
            tcp(pa, pa.v6.into(), pb, pb.v6.into());
            n += 1;
            if let (Some(x), Some(y)) = (pa.v4, pb.v4) {
                tcp(pa, x.into(), pb, y.into());
                n += 1;
            }
        }
    }
    n
}

fn three_by_ten(mode: Mode) {
    let t0 = Instant::now();
    let mut c = cluster(mode, &[]);
    let mut pods: Vec<Pod> = Vec::new();
    for k in 1..=3 {
        pods.extend(add_pods(&mut c, mode, k, 10));
    }
    let t_add = t0.elapsed();
    let v6: BTreeSet<Ipv6Addr> = pods.iter().map(|p| p.v6).collect();
    assert_eq!(v6.len(), pods.len(), "duplicate IPv6 addresses: {pods:#?}");
    if mode == Mode::Dual {
        let v4: BTreeSet<Ipv4Addr> = pods.iter().filter_map(|p| p.v4).collect();
        assert_eq!(v4.len(), pods.len(), "duplicate IPv4 addresses");
    }
    // Each node's pods lie in its own IPv6 claim (one /80 per node, not another node's).
    let kvs = c.etcd_range("/vpcnet/claims/fd00").expect("claims");
    for p in &pods {
        let owner: Vec<String> = kvs
            .iter()
            .filter_map(|(_, v, _, _)| serde_json::from_str::<Value>(v).ok())
            .filter(|v| vpcnet_tests::in_cidr6(p.v6, v["prefix"].as_str().unwrap_or_default()))
            .map(|v| v["node"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(owner, vec![format!("node{}", p.node)], "{p:?}");
    }
    wait_routed(&c, 6, Duration::from_secs(15));
    if mode == Mode::Dual {
        wait_routed(&c, 4, Duration::from_secs(15));
    } else {
        // IPv6-only: no IPv4 prefix was claimed, no IPv4 route of ours exists.
        let v4 = c.claims().expect("claims");
        assert!(
            v4.iter().all(|cl| cl.prefix.contains(':')),
            "IPv4 claims in an IPv6-only cluster: {v4:?}"
        );
        for k in 1..=3 {
            assert_eq!(c.routes(k), vec![], "node{k}: IPv4 routes of ours");
        }
    }
    let t1 = Instant::now();
    let failed = mesh(&pods);
    assert!(
        failed.is_empty(),
        "{mode:?}: {} pings failed: {failed:#?}",
        failed.len()
    );
    let t_mesh = t1.elapsed();
    let n_tcp = tcp_samples(&pods);
    eprintln!(
        "{mode:?}: 30 pods ADDed in {t_add:?}, mesh pings in {t_mesh:?}, {n_tcp} TCP samples, \
         total {:?}",
        t0.elapsed()
    );
}

#[test]
fn dual_stack_three_nodes_ten_pods_each_reach_everyone() {
    three_by_ten(Mode::Dual);
}

#[test]
fn ipv6_only_three_nodes_ten_pods_each_reach_everyone() {
    three_by_ten(Mode::V6Only);
}

/// Every allocation in node `k`'s status: (address, container ID), both families.
fn status_allocs(c: &Cluster, k: usize) -> Vec<(IpAddr, String)> {
    let st = c.status(k);
    let mut v = Vec::new();
    let lists = [
        st.get("allocations").cloned(),
        st.get("pool6").and_then(|p| p.get("allocations")).cloned(),
    ];
    for list in lists.into_iter().flatten() {
        for a in list.as_array().into_iter().flatten() {
            let ip: IpAddr = a["ip"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("node{k}: allocation without ip: {a}"));
            let key = &a["key"];
            let cid = key
                .get("container_id")
                .or_else(|| key.get("containerId"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("node{k}: allocation without container: {a}"));
            v.push((ip, cid.to_string()));
        }
    }
    v
}

/// kill -9 of node2's agent while short-lived pods come and go on it, a restart: no address
/// of either family twice, none leaked, surviving pods pass CHECK and still reach the others.
#[test]
fn kill_dash_nine_mid_churn_holds_no_address_twice() {
    let t0 = Instant::now();
    let mode = Mode::Dual;
    let quick = ["--reconcile-interval", "1s", "--reconcile-grace", "2s"];
    let mut c = cluster(mode, &quick);
    let mut pods: Vec<Pod> = Vec::new();
    for k in 1..=3 {
        pods.extend(add_pods(&mut c, mode, k, 5));
    }
    wait_routed(&c, 6, Duration::from_secs(15));
    wait_routed(&c, 4, Duration::from_secs(15));

    // The churn on node2: ADD then DEL (as kubelet does, also after a failed ADD; a short
    // back-off after a failure), each in a fresh namespace, until told to stop.
    let churn_ns = c.new_pod_namespaces(2, 250);
    let node_ns = c.node(2).ns.clone();
    let conf2 = conf(&c, 2);
    let stop = AtomicBool::new(false);
    let restarted = AtomicBool::new(false);
    let ok_before = AtomicUsize::new(0);
    let ok_after = AtomicUsize::new(0);
    // (cid, ns, ADD output, DEL ok)
    let (churned, killed_at) = std::thread::scope(|s| {
        let churn = s.spawn(|| {
            let mut log: Vec<(String, String, CniOutput, bool)> = Vec::new();
            for (ns, cid) in &churn_ns {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let after = restarted.load(Ordering::SeqCst);
                let add = cni_call(&node_ns, &conf2, "ADD", cid, ns);
                if add.ok() {
                    let n = if after { &ok_after } else { &ok_before };
                    n.fetch_add(1, Ordering::SeqCst);
                }
                let del = cni_call(&node_ns, &conf2, "DEL", cid, ns);
                if !add.ok() || !del.ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                log.push((cid.clone(), ns.clone(), add, del.ok()));
            }
            log
        });
        let ok = wait_until(Duration::from_secs(20), || {
            ok_before.load(Ordering::SeqCst) >= 10
        });
        assert!(ok, "the churn never got going");
        c.kill_agent(2);
        let killed_at = t0.elapsed();
        std::thread::sleep(Duration::from_millis(700));
        start_agent(&mut c, 2, &quick);
        restarted.store(true, Ordering::SeqCst);
        let ok = wait_until(Duration::from_secs(30), || {
            ok_after.load(Ordering::SeqCst) >= 10
        });
        stop.store(true, Ordering::SeqCst);
        let log = churn.join().expect("churn thread");
        assert!(ok, "no 10 churn ADDs after the restart: {log:#?}");
        (log, killed_at)
    });
    let adds_ok = churned.iter().filter(|(_, _, a, _)| a.ok()).count();
    let adds_failed = churned.len() - adds_ok;
    assert!(adds_ok > 0, "no churn ADD succeeded: {churned:#?}");

    // What kubelet does for every pod whose DEL did not succeed: DEL again (agent is back).
    for (cid, ns, _, del_ok) in &churned {
        if !*del_ok {
            let out = cni_call(&node_ns, &conf2, "DEL", cid, ns);
            out.expect_ok(&format!("DEL {cid} after the restart"));
        }
    }

    // A churn pod whose ADD failed (agent gone) left nothing behind in its namespace.
    for (cid, ns, add, _) in &churned {
        if !add.ok() {
            let links = sh(&format!("ip -n {ns} -o link show"));
            assert!(
                !links.contains("eth0"),
                "{cid}: eth0 left after failed ADD + DEL: {links}"
            );
        }
    }

    // No churn pod ever held a surviving pod's address, in either family.
    let survivors: BTreeMap<IpAddr, &Pod> = pods
        .iter()
        .flat_map(|p| p.addrs().into_iter().map(move |a| (a, p)))
        .collect();
    assert_eq!(survivors.len(), pods.len() * 2, "duplicate pod addresses");
    for (cid, _, add, _) in &churned {
        if add.ok() {
            let (v4, v6) = vpcnet_tests::cni::result_ips(add);
            for a in v4.map(IpAddr::V4).into_iter().chain(v6.map(IpAddr::V6)) {
                if let Some(p) = survivors.get(&a) {
                    panic!("churn pod {cid} got {a}, held by {}@node{}", p.cid, p.node);
                }
            }
        }
    }

    // The agents agree: every address at most once cluster-wide, exactly the survivors'.
    let ok = wait_until(Duration::from_secs(10), || c.try_status(2).is_ok());
    assert!(ok, "node2's agent does not answer after the restart");
    let held_now = || {
        let mut held: BTreeMap<IpAddr, (usize, String)> = BTreeMap::new();
        for k in 1..=3 {
            for (ip, cid) in status_allocs(&c, k) {
                if let Some(prev) = held.insert(ip, (k, cid.clone())) {
                    panic!(
                        "{ip} held twice: node{} {} and node{k} {cid}",
                        prev.0, prev.1
                    );
                }
            }
        }
        held
    };
    let want: BTreeMap<IpAddr, (usize, String)> = survivors
        .iter()
        .map(|(a, p)| (*a, (p.node, p.cid.clone())))
        .collect();
    // An ADD the kill -9 cut short may have left its allocation journaled with no reply; the
    // plugin's DEL then found no agent and deleted the veth alone ("vpcnetd releases the
    // address when it runs again"): reconcile (every 1 s here, grace 2 s) frees it.
    let orphans: Vec<(IpAddr, (usize, String))> = held_now()
        .into_iter()
        .filter(|(a, _)| !want.contains_key(a))
        .collect();
    let mut held = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(20), || {
        held = held_now();
        held == want
    });
    assert!(
        ok,
        "allocations (all agents) vs surviving pods: {held:#?} vs {want:#?}"
    );

    // Every surviving pod passes CHECK against its ADD result.
    for p in &pods {
        let mut conf = conf(&c, p.node);
        conf["prevResult"] = p.result.clone();
        let node_ns = c.node(p.node).ns.clone();
        let out = cni_call(&node_ns, &conf, "CHECK", &p.cid, &p.ns);
        out.expect_ok(&format!("CHECK {} on node{}", p.cid, p.node));
    }

    // And node2's pods still reach (and are reached from) the others over both families.
    wait_routed(&c, 6, Duration::from_secs(15));
    wait_routed(&c, 4, Duration::from_secs(15));
    let failed = mesh(&pods);
    assert!(
        failed.is_empty(),
        "pings failed after the restart: {failed:#?}"
    );
    let n_tcp = tcp_samples(&pods);
    eprintln!(
        "churn: {} ADD/DEL rounds on node2 ({} ADDs ok before the kill -9 at {killed_at:?}, \
         {adds_failed} failed, {} ok after the restart); orphans released by reconcile: \
         {orphans:?}; {} addresses held once each, CHECK ok, \
         {n_tcp} TCP samples; total {:?}",
        churned.len(),
        ok_before.load(Ordering::SeqCst),
        ok_after.load(Ordering::SeqCst),
        held.len(),
        t0.elapsed()
    );
}
