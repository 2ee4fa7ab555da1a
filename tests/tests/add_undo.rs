//! A failed ADD undoes everything it did: no veth, no route, no allocation left behind.

use vpcnet_tests::Lab;

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
        assert_eq!(st["stats"]["assigned"], 0, "allocation left: {st}");
        assert!(
            st["allocations"].as_array().is_some_and(|a| a.is_empty()),
            "{st}"
        );
        // The pod's own eth0 is untouched.
        assert!(lab.ip(&pod, "link show eth0").contains("other0"));
    }
    // The addresses the failed ADDs took are cooling, not leaked.
    let st = lab.status();
    assert_eq!(st["stats"]["cooling"], 2, "{st}");
    assert!(st["stats"]["total"].as_u64() >= before["stats"]["total"].as_u64());

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
