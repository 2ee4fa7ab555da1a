//! A failed ADD undoes everything it did: no veth, no route, no allocation left behind.

use vpcnet_tests::{stat, Lab};

#[test]
fn add_into_a_pod_whose_ifname_is_taken_fails_and_leaves_nothing() {
    let mut lab = Lab::new("10.244.0.0/24");
    lab.start_agent(&["--warm-ip-target", "2"]);
    let pod = lab.pod(1);
    // Something else already owns eth0 in the pod (a second CNI, a leftover).
    lab.ip(&pod, "link add eth0 type veth peer name other0");
    let before = lab.status();

    for conf_mtu in [None, Some(1400)] {
        let mut conf = lab.conf();
        if let Some(m) = conf_mtu {
            // With an MTU the plugin overlaps the agent request and veth creation: that
            // path must undo just as well.
            conf["mtu"] = m.into();
        }
        let out = lab.cni("ADD", "c-taken", "eth0", &Lab::netns_path(&pod), &conf);
        assert!(!out.ok(), "ADD must fail: {}", out.stdout);
        // Code 4 naming CNI_IFNAME: the runtime's interface name cannot be used in this pod
        // (issue 9 item 10; it was code 100 naming neither).
        assert_eq!(out.code(), Some(4), "{}", out.stdout);
        assert!(
            out.msg().contains("CNI_IFNAME") && out.msg().contains("eth0"),
            "message names CNI_IFNAME and the interface: {}",
            out.msg()
        );
        assert!(
            lab.host_veths().is_empty(),
            "veth left: {:?}",
            lab.host_veths()
        );
        assert!(
            lab.host_routes().is_empty(),
            "route left: {:?}",
            lab.host_routes()
        );
        let st = lab.status();
        assert_eq!(stat(&st, "assigned"), 0, "allocation left: {st}");
        assert!(
            st["allocations"].as_array().is_some_and(|a| a.is_empty()),
            "{st}"
        );
        // The pod's own eth0 is untouched.
        assert!(lab.ip(&pod, "link show eth0").contains("other0"));
    }
    // The addresses the failed ADDs took were never used by a pod: free at once (issue 9.11),
    // neither leaked nor cooling.
    let st = lab.status();
    assert_eq!(stat(&st, "cooling"), 0, "{st}");
    assert_eq!(stat(&st, "assigned"), 0, "{st}");
    assert!(
        stat(&st, "total") >= stat(&before, "total"),
        "the pool shrank: {before} -> {st}"
    );

    // A DEL after the failed ADD (what containerd does) succeeds and changes nothing.
    lab.cni(
        "DEL",
        "c-taken",
        "eth0",
        &Lab::netns_path(&pod),
        &lab.conf(),
    )
    .expect_ok("DEL after failed ADD");
    assert!(lab.ip(&pod, "link show eth0").contains("other0"));
}

/// Issue 9.11: the address a failed ADD was given goes straight back to free — the next pod
/// gets that very address, not one after a cooldown — while an address a pod really used
/// (released by DEL) still cools down.
#[test]
fn failed_add_address_is_free_at_once_but_a_deleted_pods_cools() {
    let mut lab = Lab::new("10.244.1.0/24");
    lab.start_agent(&["--ip-cooldown", "60s"]);
    let taken = lab.pod(1);
    lab.ip(&taken, "link add eth0 type veth peer name other0");
    let failed = lab.add("c-fail", &taken);
    assert_eq!(failed.code(), Some(4), "{}", failed.stdout);
    let st = lab.status();
    assert_eq!(
        stat(&st, "cooling"),
        0,
        "failed ADD's address cooling: {st}"
    );

    let p2 = lab.pod(2);
    let first = lab.add("c-ok", &p2);
    first.expect_ok("ADD after the failed one");
    let ip = first.ip().expect("ip");
    // The same ADD again fails, and must hand back exactly the address it was given.
    let p3 = lab.pod(3);
    lab.ip(&p3, "link add eth0 type veth peer name other3");
    let failed2 = lab.add("c-fail2", &p3);
    assert_eq!(failed2.code(), Some(4), "{}", failed2.stdout);
    let p4 = lab.pod(4);
    let after_fail = lab.add("c-next", &p4);
    after_fail.expect_ok("ADD after the second failed one");
    let reused = after_fail.ip().expect("ip");
    lab.del("c-next", &p4).expect_ok("DEL c-next");
    // c-next's address was used by a pod: it cools (60 s), so the next ADD gets another.
    let p5 = lab.pod(5);
    let later = lab.add("c-later", &p5);
    later.expect_ok("ADD c-later");
    assert_ne!(
        later.ip(),
        Some(reused),
        "a deleted pod's address was reused at once"
    );
    assert_ne!(later.ip(), Some(ip));
    let st = lab.status();
    assert_eq!(
        stat(&st, "cooling"),
        1,
        "exactly the deleted pod's address cools: {st}"
    );
}
