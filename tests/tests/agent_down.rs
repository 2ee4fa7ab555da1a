//! The plugin without its agent: DEL must still tear the pod down (and quickly), ADD must
//! fail cleanly with code 11, and the agent catches up on the DELs it missed when it returns.

use std::time::{Duration, Instant};

use vpcnet_tests::{host_veth_name, stat, status_allocs, Lab};

fn route_for(lab: &Lab, ip: &str) -> bool {
    lab.host_routes()
        .iter()
        .any(|r| r.split_whitespace().next() == Some(ip))
}

#[test]
fn del_without_agent_tears_down_and_agent_releases_later() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--reconcile-grace", "0s", "--pool-check-interval", "200ms"]);
    let p0 = lab.pod(0);
    let p1 = lab.pod(1);
    let ip0 = lab
        .add("gone", &p0)
        .expect_ok("ADD gone")
        .ip()
        .expect("ip")
        .to_string();
    let ip1 = lab
        .add("stays", &p1)
        .expect_ok("ADD stays")
        .ip()
        .expect("ip")
        .to_string();
    let v0 = host_veth_name("gone", "eth0");
    let v1 = host_veth_name("stays", "eth0");
    assert!(lab.host_veths().contains(&v0), "{:?}", lab.host_veths());
    assert!(route_for(&lab, &ip0));

    lab.agent.as_mut().expect("agent").kill();
    let started = Instant::now();
    let o = lab.del("gone", &p0);
    let took = started.elapsed();
    assert!(o.ok(), "DEL without the agent must succeed: {}", o.stdout);
    assert!(
        took < Duration::from_secs(5),
        "DEL without the agent took {took:?}"
    );
    // The plugin deleted the host veth itself, and the route with it (synchronously).
    assert!(
        !lab.host_veths().contains(&v0),
        "{v0} still there: {:?}",
        lab.host_veths()
    );
    assert!(
        !route_for(&lab, &ip0),
        "route to {ip0} left: {:?}",
        lab.host_routes()
    );
    assert_eq!(
        lab.links_in(&p0),
        vec!["lo".to_string()],
        "pod side of the veth left"
    );
    // The other pod is untouched.
    assert!(lab.host_veths().contains(&v1));
    assert!(route_for(&lab, &ip1));
    // Repeated DEL, and DEL with an empty CNI_NETNS for something never added: still fine.
    lab.del("gone", &p0)
        .expect_ok("DEL again without the agent");
    let o = lab.cni("DEL", "never-added", "eth0", "", &lab.conf());
    assert!(
        o.ok(),
        "DEL of an unknown container without the agent: {}",
        o.stdout
    );

    // The agent comes back: its start-up reconcile sees the veth gone and releases the address.
    lab.agent.as_mut().expect("agent").restart();
    let s = lab.status();
    let allocs = status_allocs(&s);
    assert!(
        !allocs
            .iter()
            .any(|a| a.container_id == "gone" || a.ip.to_string() == ip0),
        "{ip0} still assigned after restart: {s:#}"
    );
    assert!(
        allocs
            .iter()
            .any(|a| a.container_id == "stays" && a.ip.to_string() == ip1),
        "{s:#}"
    );
    assert_eq!(stat(&s, "assigned"), 1, "{s:#}");
    // Released, hence cooling (default 30 s), not lost.
    assert_eq!(stat(&s, "cooling"), 1, "{s:#}");
    assert_eq!(lab.addrs_in(&p1, "eth0"), vec![ip1.clone()]);
    // A new ADD for the same container works and does not reuse the cooling address.
    let o = lab.add("gone", &p0);
    o.expect_ok("re-ADD after the agent returned");
    assert_ne!(
        o.ip().expect("ip").to_string(),
        ip0,
        "cooling address reused"
    );
}

#[test]
fn add_without_agent_fails_with_code_11_and_leaves_nothing() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    lab.agent.as_mut().expect("agent").kill();
    let p0 = lab.pod(0);
    let started = Instant::now();
    let o = lab.add("c0", &p0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.exit, 1, "{}", o.stdout);
    assert_eq!(o.code(), Some(11), "{}", o.stdout);
    assert!(
        o.msg().contains("socket"),
        "message should name the socket: {}",
        o.msg()
    );
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
    assert_eq!(lab.links_in(&p0), vec!["lo".to_string()]);
    // The runtime's DEL after the failed ADD succeeds too.
    lab.del("c0", &p0).expect_ok("DEL after failed ADD");
}

#[test]
fn add_with_no_agent_ever_started_fails_with_code_11() {
    let mut lab = Lab::new("10.240.0.0/16");
    let p0 = lab.pod(0);
    let o = lab.add("c0", &p0);
    assert_eq!(o.exit, 1, "{}", o.stdout);
    assert_eq!(o.code(), Some(11), "{}", o.stdout);
    assert!(o.msg().contains("socket"), "{}", o.msg());
    assert_eq!(lab.links_in(&p0), vec!["lo".to_string()]);
}
