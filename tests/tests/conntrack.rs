//! Issue 9, item 11: a released address takes its connection-tracking entries with it, so the
//! next pod given the address never inherits the old pod's flows (the Amazon VPC CNI's
//! tracker: a 30 s cooldown against a 120 s SYN_SENT entry). Real conntrack in the lab's
//! private host namespace (the agent's SNAT table turns connection tracking on there).

use std::time::Duration;

use vpcnet_tests::{sh, wait_until, Lab};

/// The host namespace's conntrack entries that mention `ip` (as src= or dst=, either direction).
fn entries_of(lab: &Lab, ip: &str) -> Vec<String> {
    let table = sh(&format!(
        "ip netns exec {} cat /proc/net/nf_conntrack",
        lab.host()
    ));
    table
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w == format!("src={ip}") || w == format!("dst={ip}"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn released_address_leaves_no_conntrack_entry() {
    let mut lab = Lab::new("10.245.0.0/24");
    lab.start_agent(&["--ip-cooldown", "60s"]);
    let (pa, pb, pc) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let a = lab
        .add("ct-a", &pa)
        .expect_ok("ADD a")
        .ip()
        .expect("ip")
        .to_string();
    lab.add("ct-b", &pb).expect_ok("ADD b");
    let c = lab
        .add("ct-c", &pc)
        .expect_ok("ADD c")
        .ip()
        .expect("ip")
        .to_string();
    assert!(lab.ping(&pb, &a), "b cannot reach a");
    assert!(lab.ping(&pb, &c), "b cannot reach c");
    // Without entries to begin with the test would prove nothing.
    assert!(
        !entries_of(&lab, &a).is_empty(),
        "no conntrack entry for {a}: connection tracking is off in the host namespace"
    );
    assert!(
        !entries_of(&lab, &c).is_empty(),
        "no conntrack entry for {c}"
    );

    lab.del("ct-a", &pa).expect_ok("DEL a");
    assert!(
        wait_until(Duration::from_secs(3), || entries_of(&lab, &a).is_empty()),
        "conntrack entries of released {a} left: {:?}",
        entries_of(&lab, &a)
    );
    // Nobody else's entries are touched.
    assert!(
        !entries_of(&lab, &c).is_empty(),
        "entries of {c} were flushed too"
    );
    let log = lab.agent.as_ref().expect("agent").log_text();
    assert!(log.contains(&format!("conntrack entries of {a}")), "{log}");
}
