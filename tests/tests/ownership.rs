//! Issue 9, item 11: reconcile deletes only links and routes it can prove are its own. A link
//! someone else named like ours (`vpc` + 11 hex digits) and a proto-171 /32 route through it
//! used to be deleted at the agent's start (and, with the start-up audit, made it refuse to
//! start); a leftover veth that carries vpcnet's proof (the MAC derived from its name) is
//! still deleted.

use std::time::Duration;

use vpcnet_proto::naming;
use vpcnet_tests::{wait_until, Lab};

#[test]
fn reconcile_leaves_look_alike_links_and_routes_alone() {
    let mut lab = Lab::new("10.246.0.0/24");
    let h = lab.host();
    // Someone else's veth with a name of our shape, a MAC of its own, and a /32 route through
    // it with our route protocol.
    let foreign = "vpc0123456789a";
    assert!(naming::is_host_veth_name(foreign));
    lab.ip(
        &h,
        &format!("link add {foreign} address 02:11:22:33:44:55 type veth peer name fgnpeer"),
    );
    lab.ip(&h, &format!("link set {foreign} up"));
    lab.ip(
        &h,
        &format!("route add 10.246.0.77/32 dev {foreign} scope link proto 171"),
    );
    // The agent starts although a look-alike pod route exists: its start-up audit (which
    // refuses to start when the state cannot account for a pod) counts only what is ours.
    lab.start_agent(&["--reconcile-grace", "0s", "--reconcile-interval", "300ms"]);
    // A leftover of vpcnet itself (made after the start, so the state exists): our name
    // shape and the MAC derived from it, no allocation.
    let leftover = naming::host_veth_name("gone-container", "eth0");
    let mac = naming::format_mac(&naming::host_veth_mac("gone-container", "eth0"));
    lab.ip(
        &h,
        &format!("link add {leftover} address {mac} type veth peer name lftpeer"),
    );

    // Issue 14: a retired veth (a re-ADD renamed a stale pair aside) that is not in the
    // reaper's group (say the agent died before marking it) is ours by its name-derived MAC
    // and goes; a look-alike retired name with a MAC of its own stays.
    let retired = naming::retired_veth_name(4242);
    let retired_mac = naming::format_mac(&naming::host_mac_for_name(&retired));
    lab.ip(
        &h,
        &format!("link add {retired} address {retired_mac} type veth peer name retpeer"),
    );
    let fake_retired = naming::retired_veth_name(4243);
    lab.ip(
        &h,
        &format!("link add {fake_retired} address 02:11:22:33:44:56 type veth peer name fkrpeer"),
    );
    let has = |name: &str| lab.links_in(&h).iter().any(|l| l == name);
    assert!(has(&retired) && has(&fake_retired));

    assert!(
        wait_until(Duration::from_secs(5), || !lab
            .host_veths()
            .contains(&leftover)),
        "vpcnet's own leftover {leftover} was not deleted: {:?}",
        lab.host_veths()
    );
    assert!(
        wait_until(Duration::from_secs(5), || !has(&retired)),
        "vpcnet's own retired veth {retired} was not deleted"
    );
    // Several reconcile rounds later the look-alike and its route are still there.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        lab.host_veths().contains(&foreign.to_string()),
        "reconcile deleted someone else's {foreign}: {:?}\n{}",
        lab.host_veths(),
        lab.agent.as_ref().expect("agent").log_text()
    );
    assert!(
        has(&fake_retired),
        "reconcile deleted someone else's {fake_retired}"
    );
    let routes = lab.ip(&h, "route show proto 171");
    assert!(
        routes.contains("10.246.0.77 dev vpc0123456789a"),
        "reconcile deleted the route through {foreign}: {routes}"
    );
    // Pods still work beside it.
    let p = lab.pod(0);
    let q = lab.pod(1);
    lab.add("own-a", &p).expect_ok("ADD a");
    let b = lab
        .add("own-b", &q)
        .expect_ok("ADD b")
        .ip()
        .expect("ip")
        .to_string();
    assert!(lab.ping(&p, &b));
}

/// A pod's /32 host route deleted by someone else (an operator's `ip route flush`, another
/// agent) is put back by the next reconcile, through the pod's own veth and with our protocol;
/// until then the pod is unreachable, after it answers again.
#[test]
fn reconcile_restores_a_deleted_pod_route() {
    let mut lab = Lab::new("10.246.1.0/24");
    let h = lab.host();
    lab.start_agent(&["--reconcile-grace", "0s", "--reconcile-interval", "300ms"]);
    let p = lab.pod(0);
    let q = lab.pod(1);
    lab.add("rr-a", &p).expect_ok("ADD a");
    let b = lab
        .add("rr-b", &q)
        .expect_ok("ADD b")
        .ip()
        .expect("ip")
        .to_string();
    assert!(lab.ping(&p, &b));
    let veth = naming::host_veth_name("rr-b", "eth0");
    let before = lab.ip(&h, &format!("route show {b}/32"));
    assert!(
        before.contains(&veth) && before.contains("proto 171"),
        "{before}"
    );
    lab.ip(&h, &format!("route del {b}/32 dev {veth}"));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = lab.ip(&h, &format!("route show {b}/32"));
            r.contains(&veth) && r.contains("proto 171") && r.contains("scope link")
        }),
        "the route to {b} was not restored: {}\n{}",
        lab.ip(&h, "route show"),
        lab.agent.as_ref().expect("agent").log_text()
    );
    assert!(lab.ping(&p, &b), "{b} unreachable after the restore");
    let log = lab.agent.as_ref().expect("agent").log_text();
    assert!(
        log.contains("restored a missing pod route"),
        "no log line for the restore:\n{log}"
    );
    // Exactly one route to the pod, and the other pod's route untouched.
    assert_eq!(lab.ip(&h, &format!("route show {b}/32")).lines().count(), 1);
    assert_eq!(lab.host_routes().len(), 2, "{:?}", lab.host_routes());
}
