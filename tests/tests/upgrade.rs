//! Rolling upgrade in the lab (issue 12, "Prove"): three nodes on etcd, long-lived pods on
//! each, continuous same-node and cross-node pings between them, a continuous ADD/DEL loop
//! of short-lived pods on every node — and meanwhile the agents are replaced one by one the
//! way a DaemonSet RollingUpdate does it: SIGTERM, the old process exits, a pause with no
//! agent (the new pod being created), then the "new version" starts on the same state,
//! socket and flags. The new version is the same build copied to another directory, so it
//! is a distinct executable (checked through `/proc/<pid>/exe`); what is proven is the
//! procedure (stop, gap, start over the old state), which is what a version change goes
//! through as well.
//!
//! Asserted: not one ping between running pods is lost; every ADD either succeeds or fails
//! with code 11 ("try again later", which the runtime retries; one ADD per node is made while
//! it has no agent, so that path is always taken) and such a failed ADD leaves nothing behind (no host veth, nothing in the pod); every DEL succeeds; after the roll
//! every pod still has its address, no address is held twice across the cluster, the new
//! agents hold the old pods (CHECK passes on each) and etcd, pools and routes agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::cluster::{Cluster, CNI_TIMEOUT_S};
use vpcnet_tests::{cni, host_veth_name, netns, sh, sh_ok, status_allocs, CniOutput};

/// What the plugin returns while its node has no agent: CNI's "try again later".
const RETRYABLE: u64 = 11;
/// Ping interval (seconds): 20 probes a second per pair.
const PING_INTERVAL: &str = "0.05";
/// How long each node has no agent during its roll (image pull and pod start in a cluster).
const GAP: Duration = Duration::from_millis(1500);

/// Node `k`'s plugin, invoked the way `Cluster::cni` does it, with `conf` as netconf.
fn cni_on(node_ns: &str, conf: &Value, command: &str, cid: &str, netns: &str) -> CniOutput {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={cid}");
    let mut env = cni::env(command, cid, "eth0", netns).to_vec();
    env.push(("CNI_ARGS", &args));
    cni::invoke(
        node_ns,
        conf.to_string().as_bytes(),
        &env,
        Some(CNI_TIMEOUT_S),
    )
}

/// Interface names in namespace `ns`.
fn links_in(ns: &str) -> Vec<String> {
    sh(&format!("ip -n {ns} -o link show"))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// IPv4 addresses on `eth0` in namespace `ns`.
fn eth0_addrs(ns: &str) -> Vec<Ipv4Addr> {
    sh(&format!("ip -n {ns} -4 -o addr show dev eth0"))
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// A long-lived pod, with its ADD result (for CHECK).
#[derive(Debug, Clone)]
struct LongPod {
    node: usize,
    ns: String,
    cid: String,
    ip: Ipv4Addr,
    result: Value,
}

/// `ping -i 0.05` from one pod to another for the whole test, its output in a file. Killed
/// on drop (also when the test panics).
struct Pinger {
    what: String,
    out: PathBuf,
    child: Option<Child>,
}

/// What one pinger saw.
#[derive(Debug)]
struct PingCount {
    what: String,
    sent: u64,
    answered: u64,
    /// Sequence numbers without a reply (the last probe, in flight at SIGINT, excluded).
    lost: Vec<u64>,
}

impl Pinger {
    fn start(dir: &Path, from: &LongPod, to: &LongPod) -> Pinger {
        let what = format!(
            "{}@node{} -> {}@node{} ({})",
            from.cid, from.node, to.cid, to.node, to.ip
        );
        let out = dir.join(format!("ping-{}-{}.txt", from.cid, to.cid));
        let f = File::create(&out).expect("ping output file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(&from.ns)))
            .args(["ping", "-n", "-i", PING_INTERVAL, &to.ip.to_string()])
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        Pinger {
            what,
            out,
            child: Some(child),
        }
    }

    /// SIGINT (ping prints its summary), then counts every probe by its sequence number.
    fn stop(mut self) -> PingCount {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let sent: u64 = text
            .lines()
            .find(|l| l.contains(" packets transmitted"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no ping summary in {text}", self.what));
        let replies: BTreeSet<u64> = text
            .lines()
            .filter(|l| l.contains(" bytes from ") && !l.contains("DUP!"))
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect();
        let lost: Vec<u64> = (1..sent).filter(|s| !replies.contains(s)).collect();
        PingCount {
            what: self.what.clone(),
            sent,
            answered: replies.len() as u64,
            lost,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one node's ADD/DEL loop saw.
#[derive(Debug, Default)]
struct Churn {
    added: u64,
    retryable: u64,
    deleted: u64,
    /// Anything else: a failed ADD with another code, a failed DEL, leftovers, a taken address.
    errors: Vec<String>,
}

/// One node's world as the loop needs it (no borrow of the cluster, which the roll mutates).
struct ChurnNode {
    k: usize,
    ns: String,
    conf: Value,
    /// Prefix of the loop's pod namespaces (the cluster's, so leftovers are found by it).
    prefix: String,
}

/// One short-lived pod on node `n`, as a runtime runs it: a fresh namespace, ADD, DEL (also
/// after a failed ADD), the namespace deleted. Counts into `r`; anything but an ok ADD with a
/// fresh address or a clean code-11 failure, or a failed DEL, goes to `r.errors`. Returns the
/// ADD's code (`None`: it succeeded).
fn pod_cycle(
    n: &ChurnNode,
    tag: &str,
    taken: &BTreeSet<Ipv4Addr>,
    spaces: &mut netns::Namespaces,
    r: &mut Churn,
) -> Option<u64> {
    let cid = format!("n{}-{tag}", n.k);
    let pod = format!("{}n{}{tag}", n.prefix, n.k);
    spaces.add(&pod);
    let path = netns::path(&pod);
    let veth = host_veth_name(&cid, "eth0");
    let add = cni_on(&n.ns, &n.conf, "ADD", &cid, &path);
    if add.ok() {
        r.added += 1;
        match add.ip() {
            Some(ip) if taken.contains(&ip) => r
                .errors
                .push(format!("ADD {cid} got {ip}, a long-lived pod's address")),
            Some(ip) if eth0_addrs(&pod) != vec![ip] => r.errors.push(format!(
                "ADD {cid}: result {ip}, pod has {:?}",
                eth0_addrs(&pod)
            )),
            Some(_) => {}
            None => r
                .errors
                .push(format!("ADD {cid}: no address: {}", add.stdout)),
        }
    } else if add.code() == Some(RETRYABLE) {
        r.retryable += 1;
        // Nothing left behind: no host veth, nothing but lo in the pod.
        if sh_ok(&format!("ip -n {} link show dev {veth}", n.ns)) {
            r.errors
                .push(format!("failed ADD {cid} left host veth {veth}"));
        }
        if links_in(&pod) != vec!["lo".to_string()] {
            r.errors.push(format!(
                "failed ADD {cid} left {:?} in the pod",
                links_in(&pod)
            ));
        }
    } else {
        r.errors.push(format!(
            "ADD {cid} on node{} failed with code {:?}: {}",
            n.k,
            add.code(),
            add.stdout
        ));
    }
    // The runtime DELs after a failed ADD too, then deletes the namespace.
    let del = cni_on(&n.ns, &n.conf, "DEL", &cid, &path);
    if del.ok() {
        r.deleted += 1;
    } else {
        r.errors
            .push(format!("DEL {cid} on node{} failed: {}", n.k, del.stdout));
    }
    spaces.remove(&pod);
    add.code()
}

/// Short-lived pods ([`pod_cycle`]) one after another on node `n` until `stop`.
fn churn(n: &ChurnNode, taken: &BTreeSet<Ipv4Addr>, stop: &AtomicBool) -> Churn {
    let mut r = Churn::default();
    let mut spaces = netns::Namespaces::default();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        pod_cycle(n, &format!("q{i}"), taken, &mut spaces, &mut r);
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

fn pid_exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/<pid>/exe")
}

#[test]
fn rolling_upgrade_loses_no_ping_and_no_pod() {
    let t0 = Instant::now();
    let nodes = 3;
    let mut c = Cluster::new(nodes, "10.240.0.0/16");
    // Short reconcile period: addresses of pods DELed while their agent was down are
    // released by the new agent's reconcile (after the grace), so the end state is exact.
    c.start_agents(&["--peer-sync-interval", "1s", "--reconcile-interval", "2s"]);
    let old_exe = pid_exe(c.node(1).agent.as_ref().and_then(|a| a.pid()).expect("pid"));

    // The "new version": the same build, a distinct executable.
    let v2 = c.dir.join("v2");
    std::fs::create_dir_all(&v2).expect("v2 dir");
    let new_exe = v2.join("vpcnetd");
    std::fs::copy(vpcnet_tests::bin("vpcnetd"), &new_exe).expect("copy vpcnetd");
    assert_ne!(old_exe, new_exe);

    // Long-lived pods: three per node.
    let mut pods: Vec<LongPod> = Vec::new();
    for k in 1..=nodes {
        for (ns, cid) in c.new_pod_namespaces(k, 3) {
            let out = c.cni(k, "ADD", &cid, &netns::path(&ns));
            out.expect_ok(&format!("ADD {cid}"));
            pods.push(LongPod {
                node: k,
                ns,
                cid,
                ip: out.ip().expect("address"),
                result: out.json.clone(),
            });
        }
    }
    let taken: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(taken.len(), pods.len(), "duplicate addresses: {pods:?}");
    c.wait_consistent(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let on = |k: usize| -> Vec<&LongPod> { pods.iter().filter(|p| p.node == k).collect() };

    // Pings: on every node, pod 1 -> pod 2 (same node), pod 1 -> next node's pod 1 and
    // pod 3 -> previous node's pod 3 (across nodes, both directions of the ring).
    let mut pingers = Vec::new();
    for k in 1..=nodes {
        let next = k % nodes + 1;
        let prev = (k + nodes - 2) % nodes + 1;
        pingers.push(Pinger::start(&c.dir, on(k)[0], on(k)[1]));
        pingers.push(Pinger::start(&c.dir, on(k)[0], on(next)[0]));
        pingers.push(Pinger::start(&c.dir, on(k)[2], on(prev)[2]));
    }

    let churn_nodes: Vec<ChurnNode> = (1..=nodes)
        .map(|k| ChurnNode {
            k,
            ns: c.node(k).ns.clone(),
            conf: c.node(k).conf(),
            prefix: c.prefix.clone(),
        })
        .collect();
    let stop = AtomicBool::new(false);
    let mut downtime = BTreeMap::new();
    let mut gap_probe = Churn::default();
    let mut gap_spaces = netns::Namespaces::default();
    let churns: Vec<Churn> = std::thread::scope(|s| {
        let hs: Vec<_> = churn_nodes
            .iter()
            .map(|n| {
                let (taken, stop) = (&taken, &stop);
                s.spawn(move || churn(n, taken, stop))
            })
            .collect();
        // Traffic and churn before the roll, then one node at a time, like maxUnavailable: 1.
        std::thread::sleep(Duration::from_secs(2));
        for k in 1..=nodes {
            // In the gap, besides the loops: one ADD on the node, which must fail with 11
            // and leave nothing (deterministic, whatever the loops' timing).
            let down = c.roll_agent(k, &new_exe, || {
                std::thread::sleep(GAP / 2);
                let code = pod_cycle(
                    &churn_nodes[k - 1],
                    "gap",
                    &taken,
                    &mut gap_spaces,
                    &mut gap_probe,
                );
                assert_eq!(code, Some(RETRYABLE), "ADD on node{k} without its agent");
                std::thread::sleep(GAP / 2);
            });
            let pid = c.node(k).agent.as_ref().and_then(|a| a.pid()).expect("pid");
            assert_eq!(pid_exe(pid), new_exe, "node{k} runs the new executable");
            downtime.insert(k, down);
            c.wait_consistent(Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("after rolling node{k}: {e}"));
            // The rollout waits for the new pod to be ready before the next node.
            std::thread::sleep(Duration::from_secs(2));
        }
        stop.store(true, Ordering::SeqCst);
        hs.into_iter()
            .map(|h| h.join().expect("churn thread panicked"))
            .collect()
    });
    let counts: Vec<PingCount> = pingers.into_iter().map(Pinger::stop).collect();

    // Not one ping lost, and each pair pinged through the whole roll.
    let (sent, answered): (u64, u64) = counts
        .iter()
        .fold((0, 0), |(s, a), p| (s + p.sent, a + p.answered));
    let lossy: Vec<&PingCount> = counts.iter().filter(|p| !p.lost.is_empty()).collect();
    assert!(lossy.is_empty(), "pings lost during the roll: {lossy:#?}");
    let rolled_for = downtime.values().sum::<Duration>();
    for p in &counts {
        assert!(
            p.sent >= 100,
            "{}: only {} probes sent (pinger not running through the roll?)",
            p.what,
            p.sent
        );
    }
    // Every ADD ok or retryable (and clean), every DEL ok; the window was really hit.
    let errors: Vec<&String> = churns
        .iter()
        .chain([&gap_probe])
        .flat_map(|c| &c.errors)
        .collect();
    assert!(errors.is_empty(), "ADD/DEL: {errors:#?}");
    assert_eq!(gap_probe.retryable, nodes as u64, "{gap_probe:?}");
    for (k, ch) in (1..=nodes).zip(&churns) {
        assert!(ch.added > 0, "node{k}: no ADD succeeded: {ch:?}");
    }

    // After the roll: every pod still has its address; CHECK passes against the new agents.
    for p in &pods {
        assert_eq!(eth0_addrs(&p.ns), vec![p.ip], "{} lost its address", p.cid);
        let mut conf = c.node(p.node).conf();
        conf["prevResult"] = p.result.clone();
        cni_on(
            &c.node(p.node).ns,
            &conf,
            "CHECK",
            &p.cid,
            &netns::path(&p.ns),
        )
        .expect_ok(&format!("CHECK {} after the roll", p.cid));
    }
    // Each node's pod routes are exactly its long-lived pods (no churn leftovers), and its
    // agent's allocations converge to exactly those pods (with their container IDs); no
    // address is held twice across the cluster.
    for k in 1..=nodes {
        let mut routes: Vec<String> = c
            .routes(k)
            .into_iter()
            .filter(|r| !r.dst.contains('/'))
            .map(|r| r.dst)
            .collect();
        routes.sort();
        let mut want: Vec<String> = on(k).iter().map(|p| p.ip.to_string()).collect();
        want.sort();
        assert_eq!(routes, want, "node{k}'s pod routes after the roll");
    }
    let want: BTreeSet<(String, Ipv4Addr)> = pods.iter().map(|p| (p.cid.clone(), p.ip)).collect();
    let mut last = BTreeSet::new();
    let converged = vpcnet_tests::wait_until(Duration::from_secs(30), || {
        let all: Vec<(String, Ipv4Addr)> = (1..=nodes)
            .flat_map(|k| status_allocs(&c.status(k)))
            .map(|a| (a.container_id, a.ip))
            .collect();
        let ips: BTreeSet<Ipv4Addr> = all.iter().map(|a| a.1).collect();
        assert_eq!(ips.len(), all.len(), "an address held twice: {all:?}");
        last = all.into_iter().collect();
        last == want
    });
    assert!(
        converged,
        "allocations after the roll: {last:?}, want exactly the long-lived pods {want:?}"
    );
    c.wait_consistent(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("after the roll: {e}"));

    let adds: u64 = churns.iter().map(|c| c.added).sum();
    let retried: u64 = churns.iter().chain([&gap_probe]).map(|c| c.retryable).sum();
    let dels: u64 = churns.iter().chain([&gap_probe]).map(|c| c.deleted).sum();
    eprintln!(
        "upgrade: {nodes} agents rolled (no agent for {rolled_for:.1?} in all: {downtime:?}); \
         pings {sent} sent / {answered} answered / 0 lost over {} pairs; \
         ADD {adds} ok + {retried} code {RETRYABLE}; DEL {dels} ok; total {:.1}s",
        counts.len(),
        t0.elapsed().as_secs_f64()
    );
}
