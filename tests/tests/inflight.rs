//! Issue 9, item 4: an ADD stalled between the agent's reply and its kernel work must keep its
//! address, however long it stalls; a plugin that dies instead must not keep it forever.
//!
//! The stall is real time spent in the real plugin (test builds have the `failpoints` feature:
//! `VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS`), against the real agent with a short
//! `--reconcile-grace` and `--reconcile-interval`, so reconcile runs many times during it.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpcnet_proto::naming;
use vpcnet_tests::{bin, host_veth_name, status_allocs, wait_until, Lab};

/// Starts `vpcnet-standalone ADD` for `cid` in pod namespace `ns` with the stall failpoint,
/// without waiting for it. The standalone plugin, not the front: these tests kill the process
/// that runs the command (with the front, a killed front leaves vpcnetd running it, and a
/// killed vpcnetd is `front::agent_killed_mid_add_the_add_fails_and_del_cleans_up`).
fn spawn_stalled_add(lab: &Lab, cid: &str, ns: &str, stall_ms: u64) -> Child {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnet-standalone"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", Lab::netns_path(ns))
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS",
            stall_ms.to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpcnet");
    // The netconf has no mtu: the plugin creates its veth only after the agent's reply, so
    // during the stall the allocation exists and its veth does not.
    let conf = lab.conf();
    assert!(
        conf.get("mtu").is_none(),
        "the lab netconf must not set mtu"
    );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write netconf");
    child
}

fn held_by(lab: &Lab, cid: &str) -> Option<std::net::Ipv4Addr> {
    status_allocs(&lab.status())
        .into_iter()
        .find(|a| a.container_id == cid)
        .map(|a| a.ip)
}

#[test]
fn stalled_add_keeps_its_address_through_reconcile() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[
        "--reconcile-grace",
        "300ms",
        "--reconcile-interval",
        "300ms",
    ]);
    let slow_ns = lab.pod(0);
    let next_ns = lab.pod(1);

    let started = Instant::now();
    let child = spawn_stalled_add(&lab, "slow", &slow_ns, 4000);
    assert!(
        wait_until(Duration::from_secs(5), || held_by(&lab, "slow").is_some()),
        "the stalled ADD never got an allocation"
    );
    let ip = held_by(&lab, "slow").expect("allocation");
    assert!(
        !lab.host_veths().contains(&host_veth_name("slow", "eth0")),
        "the veth exists already: the failpoint did not stall before the kernel work"
    );
    // Many reconcile rounds (every 300 ms, grace 300 ms) while the plugin is stalled.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        held_by(&lab, "slow"),
        Some(ip),
        "reconcile released the address of an ADD still in flight; agent log:\n{}",
        lab.agent.as_ref().expect("agent").log_text()
    );
    // Meanwhile another pod must not get that address.
    let other = lab.add("next", &next_ns);
    other.expect_ok("ADD next");
    assert_ne!(other.ip(), Some(ip), "two pods were given {ip}");

    let out = child.wait_with_output().expect("wait stalled ADD");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stalled ADD failed: {stdout}");
    assert!(
        took >= Duration::from_millis(4000),
        "ADD took {took:?}: the stall failpoint is not compiled in (build with --features vpcnet/failpoints)"
    );
    assert!(stdout.contains(&ip.to_string()), "result: {stdout}");
    // After it: the pod works and keeps its address; the lock file is gone.
    assert_eq!(held_by(&lab, "slow"), Some(ip));
    assert!(
        lab.ping(&next_ns, &ip.to_string()),
        "pod next cannot reach {ip}"
    );
    let lock = lab
        .socket()
        .with_file_name("inflight")
        .join(host_veth_name("slow", "eth0"));
    assert!(!lock.exists(), "{} left behind", lock.display());
}

#[test]
fn crashed_add_does_not_hold_its_address_forever() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[
        "--reconcile-grace",
        "300ms",
        "--reconcile-interval",
        "300ms",
    ]);
    let ns = lab.pod(0);
    let mut child = spawn_stalled_add(&lab, "crash", &ns, 60_000);
    assert!(
        wait_until(Duration::from_secs(5), || held_by(&lab, "crash").is_some()),
        "the ADD never got an allocation"
    );
    // Still protected while it lives.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(held_by(&lab, "crash").is_some(), "released while in flight");
    // kill -9: the kernel drops its lock; the next reconcile releases the address.
    child.kill().expect("kill plugin");
    let _ = child.wait();
    assert!(
        wait_until(Duration::from_secs(5), || held_by(&lab, "crash").is_none()),
        "the address of a dead ADD was never released"
    );
    let lock = lab
        .socket()
        .with_file_name("inflight")
        .join(host_veth_name("crash", "eth0"));
    assert!(
        !lock.exists(),
        "leftover lock {} not removed",
        lock.display()
    );
}

/// Issue 14: the agent deletes DEL'd veths (a batch holds rtnl_lock ~20 ms, stalling any ADD)
/// only while no ADD is in flight, and still within its bound (5 s) when one stays in flight.
#[test]
fn veth_reaper_waits_for_adds_in_flight_within_a_bound() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let quick_ns = lab.pod(0);
    let slow_ns = lab.pod(1);
    let quick_veth = host_veth_name("quick", "eth0");

    // Nothing in flight: the veth goes soon after DEL (the node is quiet 150 ms later).
    lab.add("quick", &quick_ns).expect_ok("ADD quick");
    lab.del("quick", &quick_ns).expect_ok("DEL quick");
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || !lab
            .host_veths()
            .contains(&quick_veth)),
        "veth of a DEL'd pod left 2 s after DEL with nothing in flight"
    );
    eprintln!("idle node: veth deleted {:?} after DEL", t.elapsed());

    // Re-ADD the same attachment, then DEL it while another ADD stalls in flight.
    lab.add("quick", &quick_ns).expect_ok("re-ADD quick");
    let slow = spawn_stalled_add(&lab, "slow", &slow_ns, 9000);
    assert!(
        wait_until(Duration::from_secs(5), || held_by(&lab, "slow").is_some()),
        "the stalled ADD never got an allocation"
    );
    lab.del("quick", &quick_ns).expect_ok("DEL quick again");
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.host_veths().contains(&quick_veth),
        "veth deleted while an ADD was in flight"
    );
    // The bound: deleted within 5 s of DEL (plus polling) though the slow ADD is still going.
    assert!(
        wait_until(Duration::from_secs(6), || !lab
            .host_veths()
            .contains(&quick_veth)),
        "veth still there {:?} after DEL: the reaper's bound did not hold",
        t.elapsed()
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(4500),
        "deleted after {waited:?}: before the bound though an ADD was in flight"
    );
    let out = slow.wait_with_output().expect("slow ADD");
    assert!(
        out.status.success(),
        "slow ADD failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab.host_veths().contains(&host_veth_name("slow", "eth0")));
}

/// The retired veths (`vpx` + 11 hex digits) in namespace `ns`, with their MAC and link group.
fn retired_in(lab: &Lab, ns: &str) -> Vec<(String, String, String)> {
    lab.ip(ns, "-o -d link show")
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?.to_string();
            if !(name.starts_with("vpx") && name.len() == 14) {
                return None;
            }
            let word_after = |w: &str| {
                l.split_whitespace()
                    .skip_while(|x| *x != w)
                    .nth(1)
                    .unwrap_or("")
                    .to_string()
            };
            Some((name, word_after("link/ether"), word_after("group")))
        })
        .collect()
}

/// Issue 14: an ADD of an attachment that was DEL'd moments ago, whose veth the reaper has not
/// deleted yet, must not delete it itself (~20 ms under rtnl_lock): it renames the stale pair
/// out of its way (host end and pod end) into the reaper's group, the reaper deletes it
/// later, and nothing is left. Held deterministic by an ADD stalled in flight, which keeps
/// the reaper from running until it ends.
#[test]
fn re_add_before_reap_retires_the_stale_pair_for_the_reaper() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let ns = lab.pod(0);
    let slow_ns = lab.pod(1);
    let peer_ns = lab.pod(2);
    let host = lab.host();
    let veth = host_veth_name("again", "eth0");
    lab.add("peer", &peer_ns).expect_ok("ADD peer");

    let first = lab.add("again", &ns);
    first.expect_ok("ADD again");
    let slow = spawn_stalled_add(&lab, "slow", &slow_ns, 3000);
    assert!(
        wait_until(Duration::from_secs(5), || held_by(&lab, "slow").is_some()),
        "the stalled ADD never got an allocation"
    );
    // Twice: a second re-ADD before the reaper ran retires the second stale pair beside the
    // first (retired names come from the ifindex and never collide).
    let mut retired_names = Vec::new();
    for round in 1..=2 {
        lab.del("again", &ns).expect_ok("DEL again");
        assert!(
            lab.host_veths().contains(&veth),
            "round {round}: the stale veth is gone before the re-ADD: the reaper ran while an \
             ADD was in flight"
        );
        let old_index = lab.ip(&host, &format!("-o link show {veth}"));
        let again = lab.add("again", &ns);
        again.expect_ok(&format!("round {round}: re-ADD before the reaper"));
        let ip = again.ip().expect("ip").to_string();
        let new_index = lab.ip(&host, &format!("-o link show {veth}"));
        assert_ne!(
            old_index.split(':').next(),
            new_index.split(':').next(),
            "round {round}: the host veth was not replaced"
        );
        // The stale pair is renamed aside, not deleted: host end with the MAC its new name
        // proves, in the reaper's group; pod end beside the new eth0 in the pod.
        let on_host = retired_in(&lab, &host);
        assert_eq!(
            on_host.len(),
            round,
            "round {round}: retired on host {on_host:?}"
        );
        for (name, mac, group) in &on_host {
            let want = naming::format_mac(&naming::host_mac_for_name(name));
            assert_eq!(mac, &want, "round {round}: MAC of {name}");
            assert!(naming::is_retired_veth_name(name), "{name}");
            assert_eq!(
                group,
                &naming::REAP_GROUP.to_string(),
                "round {round}: {name} is not in the reaper's group"
            );
        }
        let in_pod: Vec<String> = retired_in(&lab, &ns).into_iter().map(|r| r.0).collect();
        let host_names: Vec<String> = on_host.iter().map(|r| r.0.clone()).collect();
        assert_eq!(
            in_pod, host_names,
            "round {round}: pod ends retired as their host ends"
        );
        assert!(lab.links_in(&ns).contains(&"eth0".to_string()));
        assert_eq!(lab.addrs_in(&ns, "eth0"), vec![ip.clone()], "round {round}");
        // CHECK sees the new attachment, whole, and the pod is reachable through it.
        let mut conf = lab.conf();
        conf["prevResult"] = again.json.clone();
        let check = lab.cni("CHECK", "again", "eth0", &Lab::netns_path(&ns), &conf);
        assert!(check.ok(), "round {round}: CHECK: {}", check.stdout);
        assert!(
            lab.ping(&peer_ns, &ip),
            "round {round}: {ip} unreachable from pod peer"
        );
        retired_names = host_names;
    }
    assert_eq!(retired_names.len(), 2);

    // Once the stalled ADD is done, the reaper deletes both retired pairs; the live one stays.
    let out = slow.wait_with_output().expect("slow ADD");
    assert!(
        out.status.success(),
        "slow ADD failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        wait_until(Duration::from_secs(6), || retired_in(&lab, &host)
            .is_empty()
            && retired_in(&lab, &ns).is_empty()),
        "retired veths left after the reaper's bound: host {:?}, pod {:?}",
        retired_in(&lab, &host),
        retired_in(&lab, &ns)
    );
    assert!(lab.host_veths().contains(&veth), "the live veth was reaped");
    let ip = lab.addrs_in(&ns, "eth0");
    assert_eq!(ip.len(), 1, "{ip:?}");
    assert!(lab.ping(&slow_ns, &ip[0]), "pod unreachable after the reap");
    assert!(lab.ping(&peer_ns, &ip[0]), "pod unreachable after the reap");

    // DEL stays idempotent, and nothing of either attachment is left.
    lab.del("again", &ns).expect_ok("DEL again");
    lab.del("again", &ns).expect_ok("DEL again, repeated");
    lab.del("slow", &slow_ns).expect_ok("DEL slow");
    lab.del("peer", &peer_ns).expect_ok("DEL peer");
    assert!(
        wait_until(Duration::from_secs(6), || lab.host_veths().is_empty()
            && retired_in(&lab, &host).is_empty()),
        "left over: {:?} {:?}",
        lab.host_veths(),
        retired_in(&lab, &host)
    );
    assert_eq!(lab.links_in(&ns), vec!["lo".to_string()]);
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
}
