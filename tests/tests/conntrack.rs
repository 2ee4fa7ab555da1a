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

/// The host namespace's conntrack entries that mention `ip` in either direction, whatever
/// form the kernel prints the address in (IPv6 is printed uncompressed).
fn entries_of_addr(lab: &Lab, ip: std::net::IpAddr) -> Vec<String> {
    let table = sh(&format!(
        "ip netns exec {} cat /proc/net/nf_conntrack",
        lab.host()
    ));
    table
        .lines()
        .filter(|l| {
            l.split_whitespace().any(|w| {
                w.strip_prefix("src=")
                    .or_else(|| w.strip_prefix("dst="))
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    == Some(ip)
            })
        })
        .map(str::to_string)
        .collect()
}

/// Issue 14: a dual-stack release flushes both of its addresses in one walk of the table
/// (an `AF_UNSPEC` dump, each entry deleted with its own family), batched by the reaper:
/// the IPv4 and the IPv6 entries of the released pod go, the other pod's of both families
/// stay.
#[test]
fn dual_stack_release_flushes_both_families_and_nothing_else() {
    let mut lab = Lab::new("10.245.1.0/24");
    lab.start_agent(&["--ip-cooldown", "60s", "--vpc-cidr", "fd00:45::/64"]);
    let (pa, pb, pc) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let ips = |out: &vpcnet_tests::CniOutput| -> Vec<std::net::IpAddr> {
        out.json["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect()
    };
    let a = ips(lab.add("ct6-a", &pa).expect_ok("ADD a"));
    lab.add("ct6-b", &pb).expect_ok("ADD b");
    let c = ips(lab.add("ct6-c", &pc).expect_ok("ADD c"));
    assert_eq!(a.len(), 2, "a is not dual-stack: {a:?}");
    assert_eq!(c.len(), 2, "c is not dual-stack: {c:?}");
    for ip in a.iter().chain(&c) {
        assert!(lab.ping(&pb, &ip.to_string()), "b cannot reach {ip}");
    }
    // Without entries of both families to begin with the test would prove nothing.
    for ip in a.iter().chain(&c) {
        assert!(
            !entries_of_addr(&lab, *ip).is_empty(),
            "no conntrack entry for {ip}: connection tracking of its family is off in the host namespace"
        );
    }
    lab.del("ct6-a", &pa).expect_ok("DEL a");
    assert!(
        wait_until(Duration::from_secs(3), || a
            .iter()
            .all(|ip| entries_of_addr(&lab, *ip).is_empty())),
        "conntrack entries of released {a:?} left: {:?}",
        a.iter()
            .map(|ip| entries_of_addr(&lab, *ip))
            .collect::<Vec<_>>()
    );
    for ip in &c {
        assert!(
            !entries_of_addr(&lab, *ip).is_empty(),
            "entries of {ip} were flushed too"
        );
    }
}

/// A crash right after a DEL loses nothing: the reaper batches a released address's conntrack
/// flush (up to half the cooldown), so a `kill -9` inside that window takes the queued flush
/// with it. The restarted agent flushes every address released and not reused since, in one
/// walk, before it serves: by the time its socket accepts, the dead pod's entries of both
/// families are gone (the address would otherwise be handed out after its cooldown with the
/// old flows in the table) and the live pod's are kept.
#[test]
fn crash_after_del_still_flushes_before_the_address_is_reused() {
    let mut lab = Lab::new("10.245.2.0/24");
    let flags = ["--ip-cooldown", "60s", "--vpc-cidr", "fd00:46::/64"];
    lab.start_agent(&flags);
    let (pa, pb, pc) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let both = |out: &vpcnet_tests::CniOutput| -> Vec<std::net::IpAddr> {
        let (v4, v6) = vpcnet_tests::cni::result_ips(out);
        let v4 = v4.map(std::net::IpAddr::from);
        v4.into_iter()
            .chain(v6.map(std::net::IpAddr::from))
            .collect()
    };
    let a = both(lab.add("ctk-a", &pa).expect_ok("ADD a"));
    lab.add("ctk-b", &pb).expect_ok("ADD b");
    let c = both(lab.add("ctk-c", &pc).expect_ok("ADD c"));
    assert_eq!(a.len(), 2, "a is not dual-stack: {a:?}");
    assert_eq!(c.len(), 2, "c is not dual-stack: {c:?}");
    for ip in a.iter().chain(&c) {
        assert!(lab.ping(&pb, &ip.to_string()), "b cannot reach {ip}");
        assert!(
            !entries_of_addr(&lab, *ip).is_empty(),
            "no conntrack entry for {ip}: connection tracking is off in the host namespace"
        );
    }

    lab.del("ctk-a", &pa).expect_ok("DEL a");
    lab.agent.as_mut().expect("agent").kill();
    // The crash came inside the batching window (the reaper waits for 150 ms without
    // requests): otherwise this test would prove nothing.
    for ip in &a {
        assert!(
            !entries_of_addr(&lab, *ip).is_empty(),
            "the reaper flushed {ip} before the kill: the crash missed its window"
        );
    }

    lab.start_agent(&flags);
    // The socket accepts: the start-up flush is done (it runs before the bind), no waiting.
    for ip in &a {
        let left = entries_of_addr(&lab, *ip);
        assert!(
            left.is_empty(),
            "conntrack entries of {ip}, released before the crash, left after the restart: {left:?}"
        );
    }
    for ip in &c {
        assert!(
            !entries_of_addr(&lab, *ip).is_empty(),
            "entries of the live pod's {ip} were flushed too"
        );
    }
    let log = lab.agent.as_ref().expect("agent").log_text();
    assert!(log.contains("conntrack entries of"), "{log}");
}
