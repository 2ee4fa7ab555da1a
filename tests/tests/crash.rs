//! Concurrency and crashes: parallel ADDs, `kill -9` of vpcnetd in the middle of parallel
//! ADD/DEL churn, and the journal surviving a crash (allocations and cooldown deadlines).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vpcnet_tests::{host_veth_name, par_map, sh, stat, status_allocs, Lab};

/// The lab's host namespace has no address of its own (a real node has one): give it a
/// TEST-NET address so pings from the host have a source the pods can answer.
fn host_with_address(lab: &Lab) -> String {
    let host = lab.host();
    sh(&format!("ip -n {host} addr replace 192.0.2.1/32 dev lo"));
    host
}

#[test]
fn fifty_parallel_adds_get_distinct_reachable_addresses() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--warm-ip-target", "8", "--pool-check-interval", "200ms"]);
    let pods: Vec<(String, String)> = lab
        .pods(0..50)
        .into_iter()
        .enumerate()
        .map(|(i, ns)| (format!("par{i}"), ns))
        .collect();
    // One thread per pod: all 50 plugin processes race each other.
    let adds = par_map(&pods, 50, |(cid, ns)| lab.add(cid, ns));
    let mut ips = BTreeMap::new();
    for (o, (cid, _)) in adds.iter().zip(&pods) {
        o.expect_ok(cid);
        let ip = o.ip().expect("ip");
        assert!(
            ips.insert(ip, cid.clone()).is_none(),
            "{ip} handed out twice"
        );
    }
    assert_eq!(ips.len(), 50);
    let s = lab.status();
    let allocs = status_allocs(&s);
    assert_eq!(allocs.len(), 50, "{s:#}");
    for a in &allocs {
        assert_eq!(
            ips.get(&a.ip),
            Some(&a.container_id),
            "agent and plugin disagree on {}",
            a.ip
        );
    }
    assert_eq!(lab.host_veths().len(), 50);
    assert_eq!(lab.host_routes().len(), 50);
    // Every 7th pod, from the host namespace and from another pod.
    let host = host_with_address(&lab);
    for (i, (o, (cid, ns))) in adds.iter().zip(&pods).enumerate().step_by(7) {
        let ip = o.ip().expect("ip").to_string();
        assert!(lab.ping(&host, &ip), "host → {cid} ({ip})");
        let (_, other_ns) = &pods[(i + 25) % 50];
        assert!(lab.ping(other_ns, &ip), "pod → {cid} ({ip})");
        assert_eq!(lab.addrs_in(ns, "eth0"), vec![ip]);
    }
}

/// What a churn thread leaves behind.
#[derive(Default)]
struct Churn {
    /// Successful ADDs that were not DELeted: (container ID, netns, address).
    kept: Vec<(String, String, Ipv4Addr)>,
    adds_ok: usize,
    adds_failed: usize,
    /// DELs whose first try overlapped the kill (the agent died under them) and were retried.
    dels_retried_across_kill: usize,
    /// DELs that failed on the first try although the agent was up (or already dead) for the
    /// whole try: each one is a defect (a DEL must succeed with or without the agent).
    dels_failed_first_try: Vec<String>,
}

/// The agent's life as the churn threads see it, set by the killer: up, being killed (from
/// just before `kill -9` until the process is gone), dead.
const AGENT_UP: u8 = 0;
const AGENT_DYING: u8 = 1;
const AGENT_DEAD: u8 = 2;

/// Shared by the churn threads and the killer.
struct Agent {
    state: AtomicU8,
    /// DELs that ran wholly while the agent was up (and so must have succeeded).
    dels_while_up: AtomicUsize,
}

/// DEL as a runtime does it: retried until it succeeds. A first try that failed is recorded
/// in `out` as a defect unless the agent was killed during it ([`AGENT_DYING`] at either end,
/// or a change between start and end).
#[track_caller]
fn del_until_ok(lab: &Lab, cid: &str, ns: &str, agent: &Agent, out: &mut Churn) {
    let before = agent.state.load(Ordering::SeqCst);
    let first = lab.del(cid, ns);
    let after = agent.state.load(Ordering::SeqCst);
    if before == AGENT_UP && after == AGENT_UP {
        agent.dels_while_up.fetch_add(1, Ordering::SeqCst);
    }
    if first.ok() {
        return;
    }
    if before == after && before != AGENT_DYING {
        let state = if before == AGENT_UP { "up" } else { "dead" };
        out.dels_failed_first_try.push(format!(
            "DEL {cid} (agent {state} throughout): {}",
            first.stdout.trim()
        ));
    } else {
        out.dels_retried_across_kill += 1;
    }
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if lab.del(cid, ns).ok() {
            return;
        }
    }
    let o = lab.del(cid, ns);
    assert!(o.ok(), "DEL {cid} keeps failing: {}", o.stdout);
}

/// Whether process `pid` is gone or a zombie (its sockets are closed either way).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Checks the node against what the runtime believes: `kept` pods are exactly the
/// allocations, each with its veth, route and address; nothing is held twice; no orphans.
fn check_node(lab: &Lab, kept: &[(String, String, Ipv4Addr)], cycle: usize) {
    let s = lab.status_when_up();
    let allocs = status_allocs(&s);
    let mut seen = HashSet::new();
    for a in &allocs {
        assert!(
            seen.insert(a.ip),
            "cycle {cycle}: {} held by two allocations: {s:#}",
            a.ip
        );
    }
    // Start-up reconcile ran before serving: every allocation has its host veth.
    let veths: BTreeSet<String> = lab.host_veths().into_iter().collect();
    for a in &allocs {
        let v = host_veth_name(&a.container_id, &a.ifname);
        assert!(
            veths.contains(&v),
            "cycle {cycle}: allocation {} of {} has no host veth {v}",
            a.ip,
            a.container_id
        );
    }
    // Every pod the runtime still has kept its address and its allocation.
    let by_cid: BTreeMap<&str, Ipv4Addr> = allocs
        .iter()
        .map(|a| (a.container_id.as_str(), a.ip))
        .collect();
    for (cid, ns, ip) in kept {
        assert_eq!(
            by_cid.get(cid.as_str()),
            Some(ip),
            "cycle {cycle}: pod {cid} lost its allocation {ip}"
        );
        assert_eq!(
            lab.addrs_in(ns, "eth0"),
            vec![ip.to_string()],
            "cycle {cycle}: {cid}"
        );
    }
    // Nothing leaked: exactly the kept pods are allocated (failed ADDs were DELeted, and
    // the start-up reconcile released what a DEL without the agent left recorded).
    let want: BTreeSet<&str> = kept.iter().map(|(c, _, _)| c.as_str()).collect();
    let have: BTreeSet<&str> = by_cid.keys().copied().collect();
    assert_eq!(
        have, want,
        "cycle {cycle}: allocations vs pods the runtime has"
    );
    // No orphan veth or route (orphan veths are deleted in the background).
    let want_veths: BTreeSet<String> = kept
        .iter()
        .map(|(c, _, _)| host_veth_name(c, "eth0"))
        .collect();
    let want_routes: BTreeSet<Ipv4Addr> = kept.iter().map(|(_, _, ip)| *ip).collect();
    let routes = || -> BTreeSet<Ipv4Addr> {
        lab.host_routes()
            .iter()
            .filter_map(|r| r.split_whitespace().next())
            .map(|d| d.trim_end_matches("/32").parse().expect("route dst"))
            .collect()
    };
    let clean = lab.wait_for(Duration::from_secs(10), || {
        lab.host_veths().into_iter().collect::<BTreeSet<_>>() == want_veths
            && routes() == want_routes
    });
    assert!(
        clean,
        "cycle {cycle}: orphans: veths {:?} (want {}), routes {:?} (want {:?})",
        lab.host_veths(),
        want_veths.len(),
        routes(),
        want_routes
    );
}

#[test]
fn kill_9_during_parallel_add_del_churn() {
    const THREADS: usize = 30;
    const PER_THREAD: usize = 12;
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[
        "--warm-ip-target",
        "16",
        "--ip-cooldown",
        "1s",
        "--reconcile-grace",
        "0s",
        "--pool-check-interval",
        "200ms",
    ]);
    let mut kept: Vec<(String, String, Ipv4Addr)> = Vec::new();
    for cycle in 0..3 {
        let base = cycle * THREADS * PER_THREAD;
        let names = lab.pods(base..base + THREADS * PER_THREAD);
        let stop = AtomicBool::new(false);
        let agent_state = Agent {
            state: AtomicU8::new(AGENT_UP),
            dels_while_up: AtomicUsize::new(0),
        };
        let adds_ok = AtomicUsize::new(0);
        let results = Mutex::new(Vec::new());
        let pid = lab.agent_pid();
        let killed_at = std::thread::scope(|sc| {
            for t in 0..THREADS {
                let (lab, stop, results, names, adds_ok, agent_state) =
                    (&lab, &stop, &results, &names, &adds_ok, &agent_state);
                sc.spawn(move || {
                    let mut out = Churn::default();
                    for k in 0..PER_THREAD {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let ns = &names[t * PER_THREAD + k];
                        let cid = format!("k{cycle}-{t}-{k}");
                        let add = lab.add(&cid, ns);
                        if !add.ok() {
                            // What a runtime does after a failed ADD.
                            out.adds_failed += 1;
                            del_until_ok(lab, &cid, ns, agent_state, &mut out);
                            continue;
                        }
                        out.adds_ok += 1;
                        adds_ok.fetch_add(1, Ordering::SeqCst);
                        let ip = add.ip().expect("ADD result has an ip");
                        if (t + k) % 3 == 0 {
                            out.kept.push((cid, ns.clone(), ip));
                        } else {
                            del_until_ok(lab, &cid, ns, agent_state, &mut out);
                        }
                    }
                    results.lock().expect("results").push(out);
                });
            }
            // ~300 ms into the churn, and not before some ADDs and DELs got through with the
            // agent up (a loaded machine).
            std::thread::sleep(Duration::from_millis(300));
            let busy = lab.wait_for(Duration::from_secs(20), || {
                adds_ok.load(Ordering::SeqCst) >= 10
                    && agent_state.dels_while_up.load(Ordering::SeqCst) >= 10
            });
            agent_state.state.store(AGENT_DYING, Ordering::SeqCst);
            sh(&format!("kill -9 {pid}"));
            let gone = lab.wait_for(Duration::from_secs(5), || exited(pid));
            agent_state.state.store(AGENT_DEAD, Ordering::SeqCst);
            assert!(
                gone,
                "cycle {cycle}: vpcnetd {pid} still running 5 s after kill -9"
            );
            assert!(
                busy,
                "cycle {cycle}: fewer than 10 ADDs and 10 DELs with the agent up in 20 s"
            );
            let killed_at = Instant::now();
            // Let the threads run into the dead agent for a while.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::SeqCst);
            killed_at
        });
        let results = results.into_inner().expect("results");
        let (ok, failed, retried) = results.iter().fold((0, 0, 0), |acc, c| {
            (
                acc.0 + c.adds_ok,
                acc.1 + c.adds_failed,
                acc.2 + c.dels_retried_across_kill,
            )
        });
        let del_failed: Vec<&String> = results
            .iter()
            .flat_map(|c| &c.dels_failed_first_try)
            .collect();
        eprintln!(
            "cycle {cycle}: {ok} ADDs ok, {failed} failed; {} DELs with the agent up, {retried} \
             retried across the kill, {} failed on the first try otherwise; joined {:?} after \
             the kill",
            agent_state.dels_while_up.load(Ordering::SeqCst),
            del_failed.len(),
            killed_at.elapsed()
        );
        assert!(
            del_failed.is_empty(),
            "cycle {cycle}: {} DELs failed on the first try with the agent up (or already \
             dead) throughout: {del_failed:#?}",
            del_failed.len()
        );
        assert!(ok > 0, "cycle {cycle}: no ADD succeeded before the kill");
        assert!(
            failed > 0,
            "cycle {cycle}: the kill hit no ADD (threads finished too early)"
        );
        kept.extend(results.into_iter().flat_map(|c| c.kept));
        let agent = lab.agent.as_mut().expect("agent");
        assert!(!agent.is_running(), "kill -9 did not stop the agent");
        agent.restart();
        check_node(&lab, &kept, cycle);
    }
    // The survivors still work after three crashes.
    let host = host_with_address(&lab);
    for (cid, _, ip) in kept.iter().step_by(5) {
        assert!(lab.ping(&host, &ip.to_string()), "host → {cid} ({ip})");
    }
}

#[test]
fn journal_survives_kill_9() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--warm-ip-target", "4"]);
    let pods = lab.pods(0..10);
    let mut want = BTreeMap::new();
    for (i, ns) in pods.iter().enumerate() {
        let o = lab.add(&format!("j{i}"), ns);
        o.expect_ok("ADD");
        want.insert(o.ip().expect("ip"), format!("j{i}"));
    }
    let before = status_allocs(&lab.status());
    let agent = lab.agent.as_mut().expect("agent");
    agent.kill();
    agent.restart();
    let s = lab.status();
    let after = status_allocs(&s);
    assert_eq!(after, before, "allocations changed across kill -9");
    let got: BTreeMap<Ipv4Addr, String> =
        after.into_iter().map(|a| (a.ip, a.container_id)).collect();
    assert_eq!(got, want);
    // Re-ADD of a pod returns its address (idempotent after a restart too).
    let o = lab.add("j3", &pods[3]);
    o.expect_ok("re-ADD j3");
    assert_eq!(
        want.get(&o.ip().expect("ip")).map(String::as_str),
        Some("j3")
    );
    assert_eq!(stat(&lab.status(), "assigned"), 10);
}

#[test]
fn cooldown_survives_kill_9() {
    // One /28 prefix: 14 usable addresses.
    let mut lab = Lab::new("10.242.0.0/28");
    lab.start_agent(&["--ip-cooldown", "20s"]);
    let pods = lab.pods(0..15);
    let mut ips = Vec::new();
    for (i, ns) in pods.iter().take(10).enumerate() {
        let o = lab.add(&format!("d{i}"), &ns.clone());
        o.expect_ok("ADD");
        ips.push(o.ip().expect("ip"));
    }
    lab.del("d4", &pods[4]).expect_ok("DEL d4");
    let released = ips[4];
    let agent = lab.agent.as_mut().expect("agent");
    agent.kill();
    agent.restart();
    let s = lab.status();
    assert_eq!(
        stat(&s, "cooling"),
        1,
        "cooldown lost across restart: {s:#}"
    );
    assert_eq!(stat(&s, "assigned"), 9, "{s:#}");
    // Fill the pool: 14 - 9 assigned - 1 cooling = 4 more, then exhausted.
    let mut new_ips = Vec::new();
    for (i, ns) in pods.iter().enumerate().skip(10) {
        let o = lab.add(&format!("d{i}"), ns);
        if !o.ok() {
            assert_eq!(o.code(), Some(11), "{}", o.stdout);
            break;
        }
        new_ips.push(o.ip().expect("ip"));
    }
    assert_eq!(new_ips.len(), 4, "got {new_ips:?}");
    assert!(
        !new_ips.contains(&released),
        "{released} handed out again while cooling (deadline lost in the restart)"
    );
}
