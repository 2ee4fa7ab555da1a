//! The warm pool, end to end: the real agent claims and releases /28 prefixes from its VPC as
//! pods come and go, honours --warm-ip-target / --warm-prefix-target / --max-pods, and fails
//! ADD with CNI code 11 (naming the limit) when it cannot hand out an address.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::{par_map, stat, status_allocs, Lab};

const SETTLE: Duration = Duration::from_secs(10);

/// Polls the agent's status until `f` holds; panics with the last status otherwise.
#[track_caller]
fn wait_status(lab: &Lab, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = lab.wait_for(SETTLE, || {
        last = lab.status();
        f(&last)
    });
    assert!(
        ok,
        "{what}: not reached within {SETTLE:?}; last status: {last:#}"
    );
    last
}

fn prefixes(s: &Value) -> u64 {
    stat(s, "prefixes")
}

#[test]
fn warm_ip_target_is_held_and_refilled() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[
        "--warm-ip-target",
        "5",
        "--warm-prefix-target",
        "0",
        "--pool-check-interval",
        "200ms",
    ]);
    let s = wait_status(&lab, "5 warm addresses", |s| stat(s, "available") >= 5);
    eprintln!("status after start: {s:#}");
    // One /28 satisfies a target of 5; give the loop a few check intervals to over-claim.
    std::thread::sleep(Duration::from_millis(800));
    let s = lab.status();
    assert_eq!(
        prefixes(&s),
        1,
        "one /28 is enough for 5 warm addresses: {s:#}"
    );
    // The first /28 of the VPC holds the VPC's network address, which is never handed out.
    assert_eq!(stat(&s, "total"), 15, "{s:#}");
    assert_eq!(stat(&s, "available"), 15, "{s:#}");
    assert!(s["ready"].as_bool().unwrap_or(false), "{s:#}");

    // 10 pods leave 5 available: still no need to grow.
    let pods = lab.pods(0..11);
    for (i, ns) in pods.iter().take(10).enumerate() {
        lab.add(&format!("c{i}"), ns).expect_ok("ADD");
    }
    std::thread::sleep(Duration::from_millis(800));
    let s = lab.status();
    assert_eq!(
        prefixes(&s),
        1,
        "15 - 10 = 5 available meets the target: {s:#}"
    );
    // The 11th leaves 4 < 5: the agent claims a second prefix in the background.
    lab.add("c10", &pods[10]).expect_ok("ADD c10");
    let s = wait_status(&lab, "grown to 2 prefixes", |s| prefixes(s) == 2);
    assert_eq!(stat(&s, "available"), 4 + 16, "{s:#}");
    assert_eq!(stat(&s, "assigned"), 11, "{s:#}");
}

#[test]
fn default_warm_prefix_target_keeps_one_free_prefix() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--pool-check-interval", "200ms"]);
    let s = wait_status(&lab, "one wholly free prefix", |s| {
        stat(s, "free_prefixes") == 1
    });
    std::thread::sleep(Duration::from_millis(600));
    let s2 = lab.status();
    assert_eq!(prefixes(&s2), 1, "{s:#}");
    assert_eq!(stat(&s2, "free_prefixes"), 1, "{s2:#}");
    // One pod makes that prefix not wholly free: the agent claims another one.
    let ns = lab.pod(0);
    lab.add("c0", &ns).expect_ok("ADD c0");
    let s = wait_status(&lab, "a new free prefix", |s| {
        prefixes(s) == 2 && stat(s, "free_prefixes") == 1
    });
    // The pod went into the first (packing), not into the free one.
    let p = s["prefixes"].as_array().expect("prefixes");
    assert_eq!(p[0]["assigned"], 1, "{s:#}");
    assert_eq!(p[1]["assigned"], 0, "{s:#}");
}

#[test]
fn burst_grows_pool_and_dels_shrink_it_back() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[
        "--warm-ip-target",
        "4",
        "--warm-prefix-target",
        "0",
        "--ip-cooldown",
        "500ms",
        "--min-prefix-age",
        "1s",
        "--pool-check-interval",
        "200ms",
    ]);
    wait_status(&lab, "warm pool", |s| stat(s, "available") >= 4);
    let pods: Vec<(String, String)> = lab
        .pods(0..40)
        .into_iter()
        .enumerate()
        .map(|(i, ns)| (format!("burst{i}"), ns))
        .collect();
    let adds = par_map(&pods, 8, |(cid, ns)| lab.add(cid, ns));
    let mut ips = HashSet::new();
    for (o, (cid, _)) in adds.iter().zip(&pods) {
        o.expect_ok(cid);
        assert!(
            ips.insert(o.ip().expect("ip")),
            "duplicate address {:?}",
            o.ip()
        );
    }
    // 40 assigned + 4 warm need 3 /28s (15 + 16 + 16); an over-claim during the burst is
    // given back once it is old enough.
    let s = wait_status(&lab, "grown to 3 prefixes with 4 warm", |s| {
        prefixes(s) == 3 && stat(s, "available") >= 4 && stat(s, "assigned") == 40
    });
    assert_eq!(status_allocs(&s).len(), 40);
    assert_eq!(lab.host_veths().len(), 40);

    let dels = par_map(&pods, 8, |(cid, ns)| lab.del(cid, ns));
    for (o, (cid, _)) in dels.iter().zip(&pods) {
        o.expect_ok(cid);
    }
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
    // Cooldown (0.5 s) ends, the prefixes are wholly free and older than 1 s: back to one.
    let s = wait_status(&lab, "shrunk back to 1 prefix", |s| {
        prefixes(s) == 1 && stat(s, "cooling") == 0
    });
    assert!(stat(&s, "available") >= 4, "{s:#}");
    assert_eq!(stat(&s, "assigned"), 0, "{s:#}");
    // And it stays there (shrinking did not re-trigger growth).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(prefixes(&lab.status()), 1);
    assert!(
        lab.wait_for(SETTLE, || lab.host_veths().is_empty()),
        "veths left: {:?}",
        lab.host_veths()
    );
}

#[test]
fn max_pods_caps_adds_and_growth() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--max-pods", "5", "--pool-check-interval", "200ms"]);
    let pods = lab.pods(0..6);
    for (i, ns) in pods.iter().take(5).enumerate() {
        lab.add(&format!("m{i}"), ns)
            .expect_ok("ADD within max-pods");
    }
    let sixth = lab.add("m5", &pods[5]);
    assert_eq!(sixth.exit, 1, "6th ADD must fail: {}", sixth.stdout);
    assert_eq!(sixth.code(), Some(11), "{}", sixth.stdout);
    let msg = sixth.msg();
    assert!(
        msg.contains("max-pods") && msg.contains('5'),
        "message: {msg}"
    );
    assert_eq!(lab.host_veths().len(), 5, "{:?}", lab.host_veths());
    assert_eq!(lab.host_routes().len(), 5, "{:?}", lab.host_routes());
    assert_eq!(lab.links_in(&pods[5]), vec!["lo".to_string()]);
    // max-pods 5 needs one /28: the default warm-prefix-target must not claim a second.
    std::thread::sleep(Duration::from_millis(800));
    let s = lab.status();
    assert_eq!(prefixes(&s), 1, "{s:#}");
    assert_eq!(stat(&s, "assigned"), 5, "{s:#}");
    assert_eq!(s["maxPods"], 5, "{s:#}");
    assert!(!status_allocs(&s).iter().any(|a| a.container_id == "m5"));
    // The limit counts pods, not history: after one DEL the 6th fits.
    lab.del("m0", &pods[0]).expect_ok("DEL m0");
    lab.add("m5", &pods[5]).expect_ok("ADD m5 after a DEL");
}

#[test]
fn vpc_exhausted_fails_fast_with_code_11() {
    let mut lab = Lab::new("10.241.0.0/28");
    lab.start_agent(&["--pool-check-interval", "200ms"]);
    let s = wait_status(&lab, "the only prefix", |s| prefixes(s) == 1);
    // 16 addresses minus the VPC's network and broadcast address.
    assert_eq!(stat(&s, "total"), 14, "{s:#}");
    let pods = lab.pods(0..15);
    let mut ips = HashSet::new();
    for (i, ns) in pods.iter().take(14).enumerate() {
        let o = lab.add(&format!("x{i}"), ns);
        o.expect_ok("ADD while the VPC has room");
        let ip = o.ip().expect("ip");
        assert!(ips.insert(ip), "duplicate {ip}");
        let last = ip.octets()[3];
        assert!(
            (1..=14).contains(&last),
            "VPC network/broadcast handed out: {ip}"
        );
    }
    let started = Instant::now();
    let o = lab.add("x14", &pods[14]);
    let took = started.elapsed();
    assert_eq!(o.exit, 1, "{}", o.stdout);
    assert_eq!(o.code(), Some(11), "{}", o.stdout);
    let msg = o.msg().to_lowercase();
    assert!(
        msg.contains("vpc") && msg.contains("exhausted"),
        "message: {}",
        o.msg()
    );
    assert!(took < Duration::from_secs(5), "exhausted ADD took {took:?}");
    assert_eq!(lab.links_in(&pods[14]), vec!["lo".to_string()]);
    assert_eq!(lab.host_veths().len(), 14);
    let s = lab.status();
    assert_eq!(stat(&s, "assigned"), 14, "{s:#}");
    assert_eq!(s["canAssign"], false, "{s:#}");
}
