//! Quick end-to-end sanity: one agent, two pods, ping, DEL.

use vpcnet_tests::Lab;

#[test]
fn two_pods_ping_and_delete() {
    let mut lab = Lab::new("10.240.0.0/24");
    lab.start_agent(&["--warm-ip-target", "2"]);
    let p1 = lab.pod(1);
    let p2 = lab.pod(2);
    let a = lab.add("c1", &p1);
    a.expect_ok("ADD c1");
    let b = lab.add("c2", &p2);
    b.expect_ok("ADD c2");
    let ip2 = b.ip().expect("c2 ip").to_string();
    assert!(lab.ping(&p1, &ip2), "pod1 → pod2 ({ip2})");
    lab.del("c1", &p1).expect_ok("DEL c1");
    lab.del("c1", &p1).expect_ok("DEL c1 again");
    assert_eq!(lab.host_routes().len(), 1, "{:?}", lab.host_routes());
}
