//! CNI GC (release what the runtime no longer lists) and STATUS (code 50 when no pod can be
//! set up), against the real agent.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use vpcnet_tests::{host_veth_name, status_allocs, CniOutput, Lab};

fn gc(lab: &Lab, conf: &Value) -> CniOutput {
    lab.cni_env(conf, &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")])
}

fn status_cmd(lab: &Lab) -> CniOutput {
    lab.cni_env(
        &lab.conf(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
    )
}

fn attachments(cids: &[&str]) -> Value {
    Value::Array(
        cids.iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect(),
    )
}

fn allocated(lab: &Lab) -> BTreeSet<String> {
    status_allocs(&lab.status())
        .into_iter()
        .map(|a| a.container_id)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn gc_releases_exactly_the_unlisted_attachments() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let pods = lab.pods(0..4);
    let cids = ["g0", "g1", "g2", "g3"];
    let ips: Vec<String> = cids
        .iter()
        .zip(&pods)
        .map(|(c, ns)| lab.add(c, ns).expect_ok(c).ip().expect("ip").to_string())
        .collect();
    let mut conf = lab.conf();
    conf["cni.dev/valid-attachments"] = attachments(&["g0", "g2"]);
    let o = gc(&lab, &conf);
    assert!(o.ok(), "GC: {}", o.stdout);

    assert_eq!(allocated(&lab), set(&["g0", "g2"]));
    let routes = lab.host_routes().join("\n");
    for (i, ip) in ips.iter().enumerate() {
        let has = routes
            .lines()
            .any(|r| r.split_whitespace().next() == Some(ip.as_str()));
        assert_eq!(has, i % 2 == 0, "route to {ip} of {}: {routes}", cids[i]);
    }
    let want: BTreeSet<String> = ["g0", "g2"]
        .iter()
        .map(|c| host_veth_name(c, "eth0"))
        .collect();
    assert!(
        lab.wait_for(Duration::from_secs(5), || {
            lab.host_veths().into_iter().collect::<BTreeSet<_>>() == want
        }),
        "veths after GC: {:?}, want {want:?}",
        lab.host_veths()
    );
    // The listed two keep working.
    assert!(lab.ping(&pods[0], &ips[2]), "g0 → g2");
    assert!(lab.ping(&pods[2], &ips[0]), "g2 → g0");
    // GC is idempotent.
    gc(&lab, &conf).expect_ok("second GC");
    assert_eq!(allocated(&lab), set(&["g0", "g2"]));
}

#[test]
fn gc_without_a_list_releases_that_network_only() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let pods = lab.pods(0..4);
    let mut other = lab.conf();
    other["name"] = json!("othernet");
    lab.add("a0", &pods[0]).expect_ok("a0");
    lab.add("a1", &pods[1]).expect_ok("a1");
    lab.cni("ADD", "b0", "eth0", &Lab::netns_path(&pods[2]), &other)
        .expect_ok("b0");
    lab.cni("ADD", "b1", "eth0", &Lab::netns_path(&pods[3]), &other)
        .expect_ok("b1");
    assert_eq!(allocated(&lab), set(&["a0", "a1", "b0", "b1"]));

    // The 1.1.0 spec tag's key works as well; an empty list means "none valid".
    let mut conf = other.clone();
    conf["cni.dev/attachments"] = attachments(&["b1"]);
    gc(&lab, &conf).expect_ok("GC othernet keeping b1");
    assert_eq!(allocated(&lab), set(&["a0", "a1", "b1"]));

    gc(&lab, &other).expect_ok("GC othernet without a list");
    assert_eq!(allocated(&lab), set(&["a0", "a1"]));
    assert_eq!(lab.host_routes().len(), 2, "{:?}", lab.host_routes());
    assert!(
        lab.ping(&pods[0], &lab.addrs_in(&pods[1], "eth0")[0]),
        "a0 → a1"
    );

    gc(&lab, &lab.conf()).expect_ok("GC vpctest without a list");
    assert!(allocated(&lab).is_empty());
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
    assert!(
        lab.wait_for(Duration::from_secs(5), || lab.host_veths().is_empty()),
        "{:?}",
        lab.host_veths()
    );
}

#[test]
fn status_ok_when_healthy_50_when_agent_down() {
    let mut lab = Lab::new("10.240.0.0/16");
    let o = status_cmd(&lab);
    assert_eq!(
        (o.exit, o.code()),
        (1, Some(50)),
        "no agent yet: {}",
        o.stdout
    );
    lab.start_agent(&[]);
    let o = status_cmd(&lab);
    assert_eq!(o.exit, 0, "healthy agent: {}", o.stdout);
    lab.agent.as_mut().expect("agent").kill();
    let o = status_cmd(&lab);
    assert_eq!(o.exit, 1, "{}", o.stdout);
    assert_eq!(o.code(), Some(50), "{}", o.stdout);
    assert_eq!(o.json["cniVersion"], "1.1.0", "{}", o.stdout);
    lab.agent.as_mut().expect("agent").restart();
    status_cmd(&lab).expect_ok("STATUS after restart");
}

#[test]
fn status_50_when_vpc_is_full() {
    // One /28: 14 usable addresses, and nothing to grow into.
    let mut lab = Lab::new("10.243.0.0/28");
    lab.start_agent(&["--ip-cooldown", "500ms", "--pool-check-interval", "200ms"]);
    let pods = lab.pods(0..15);
    for (i, ns) in pods.iter().take(14).enumerate() {
        lab.add(&format!("s{i}"), ns).expect_ok("ADD");
    }
    // No ADD has failed yet: STATUS must see by itself that the pool cannot grow.
    let o = status_cmd(&lab);
    assert_eq!(
        o.exit, 1,
        "pool full, VPC exhausted, STATUS said ok: {}",
        o.stdout
    );
    assert_eq!(o.code(), Some(50), "{}", o.stdout);
    let o = lab.add("s14", &pods[14]);
    assert_eq!(o.code(), Some(11), "{}", o.stdout);
    assert_eq!(status_cmd(&lab).code(), Some(50));
    // One pod goes; once its address has cooled down the node can take a pod again.
    lab.del("s0", &pods[0]).expect_ok("DEL s0");
    assert!(
        lab.wait_for(Duration::from_secs(5), || status_cmd(&lab).ok()),
        "STATUS still failing after a release: {}",
        status_cmd(&lab).stdout
    );
}
