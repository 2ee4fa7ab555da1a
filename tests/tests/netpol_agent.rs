//! NetworkPolicy end to end on one node (issue 13, the agent wiring): the real `vpcnetd` with
//! `--network-policy=true` in a lab namespace, reading Pods, Namespaces and NetworkPolicies
//! from the fake API server (`datastore_contract/fake_kube.rs`, served over HTTP inside the
//! lab's namespace, `--kubeconfig` pointing at it); two pods attached by the real plugin. A
//! deny-all ingress policy posted to the API makes a probe between the pods fail; deleting
//! it makes the probe work again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vpcnet_tests::{cni, in_netns, sh, Lab};

/// The agent's metrics address inside the lab's own namespace.
const METRICS: &str = "127.0.0.1:9961";

#[path = "datastore_contract/fake_kube.rs"]
mod fake_kube;

use fake_kube::FakeApiServer;

/// Starts `server` over HTTP on 127.0.0.1 inside namespace `ns` (a thread with its own
/// runtime, living until the test process ends); returns the port.
fn serve_in(ns: &str, server: Arc<FakeApiServer>) -> u16 {
    let listener = in_netns(Some(ns), || std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the fake API server in the lab");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fake_kube::serve_http(server, listener));
    });
    port
}

/// ADD through the real plugin with the pod's namespace and name in CNI_ARGS, as a runtime
/// passes them; returns the pod's address.
fn add_pod(lab: &Lab, cid: &str, netns: &str, namespace: &str, name: &str) -> String {
    let path = Lab::netns_path(netns);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
    let mut env: Vec<(&str, &str)> = cni::env("ADD", cid, "eth0", &path).to_vec();
    env.push(("CNI_ARGS", &args));
    let out = lab.cni_env(&lab.conf(), &env);
    out.expect_ok(&format!("ADD {namespace}/{name}"));
    out.ip().expect("ADD result has an address").to_string()
}

/// A sample of the agent's /metrics (`name` with its labels, e.g. `x_total{result="ok"}`).
fn metric(host: &str, name: &str) -> Option<f64> {
    let (code, body) = vpcnet_tests::http::get(host, METRICS.parse().expect("addr"), "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Writes a kubeconfig for the fake API server at `port` into the lab's dir.
fn kubeconfig(lab: &Lab, port: u16) -> String {
    let path = lab.dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user:\n    token: t\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n"
        ),
    )
    .expect("kubeconfig");
    path.display().to_string()
}

fn pod_object(namespace: &str, name: &str, node: &str, ip: &str) -> serde_json::Value {
    json!({
        "metadata": {"namespace": namespace, "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip},
    })
}

#[test]
fn deny_all_ingress_posted_to_the_api_blocks_a_probe_and_deleting_it_restores_it() {
    let mut lab = Lab::new("10.236.0.0/16");
    let host = lab.host();
    let node = format!("{}-node", lab.prefix);
    let api = FakeApiServer::new();
    api.put(
        "Namespace",
        json!({"metadata": {"name": "x", "labels": {"ns": "x"}}}),
    );
    let port = serve_in(&host, api.clone());
    let kc = kubeconfig(&lab, port);
    lab.start_agent(&[
        "--network-policy=true",
        "--kubeconfig",
        &kc,
        "--metrics-addr",
        METRICS,
    ]);

    let pa = lab.pod(0);
    let pb = lab.pod(1);
    let ip_a = add_pod(&lab, "cid-a", &pa, "x", "a");
    let ip_b = add_pod(&lab, "cid-b", &pb, "x", "b");
    api.put("Pod", pod_object("x", "a", &node, &ip_a));
    api.put("Pod", pod_object("x", "b", &node, &ip_b));

    let log = |lab: &Lab| {
        lab.agent
            .as_ref()
            .map(vpcnet_tests::Agent::log_text)
            .unwrap_or_default()
    };
    let table = |host: &str| {
        sh(&format!(
            "ip netns exec {host} nft list table inet vpcnet-policy 2>&1 || true"
        ))
    };
    // In sync and applied (an empty table: no policy yet), and the pods reach each other.
    assert!(
        lab.wait_for(Duration::from_secs(10), || table(&host)
            .contains("ingress_dispatch")),
        "no policy table after the view synced: {}\n{}",
        table(&host),
        log(&lab)
    );
    assert!(lab.ping(&pa, &ip_b), "a -> b before any policy");
    assert!(lab.ping(&pb, &ip_a), "b -> a before any policy");

    // Deny all ingress in namespace x.
    api.put(
        "NetworkPolicy",
        json!({"metadata": {"namespace": "x", "name": "deny-ingress"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    assert!(
        lab.wait_for(Duration::from_secs(10), || !lab.ping(&pa, &ip_b)),
        "a -> b still answers under deny-all ingress: {}\n{}",
        table(&host),
        log(&lab)
    );
    assert!(
        !lab.ping(&pb, &ip_a),
        "b -> a answers under deny-all ingress"
    );
    let t = table(&host);
    assert!(
        t.contains("jump ingress_"),
        "no ingress dispatch for the pods: {t}"
    );

    assert_eq!(metric(&host, "vpcnet_network_policies"), Some(1.0));
    assert_eq!(metric(&host, "vpcnet_network_policy_pods"), Some(2.0));
    let applied = metric(&host, "vpcnet_network_policy_applies_total{result=\"ok\"}");
    assert!(
        applied >= Some(2.0),
        "empty table, then the deny: {applied:?}"
    );
    assert_eq!(
        metric(
            &host,
            "vpcnet_network_policy_applies_total{result=\"error\"}"
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &host,
            "vpcnet_network_policy_change_to_kernel_seconds_count"
        ) >= Some(2.0)
    );

    // Deleted: both directions work again.
    assert!(api.remove("NetworkPolicy", "x", "deny-ingress"));
    assert!(
        lab.wait_for(Duration::from_secs(10), || lab.ping(&pa, &ip_b)),
        "a -> b does not answer after the policy was deleted: {}\n{}",
        table(&host),
        log(&lab)
    );
    assert!(lab.ping(&pb, &ip_a), "b -> a after the policy was deleted");
    assert!(!table(&host).contains("jump ingress_"), "{}", table(&host));

    for (cid, ns) in [("cid-a", &pa), ("cid-b", &pb)] {
        lab.del(cid, ns).expect_ok("DEL");
    }
}

#[test]
fn without_the_flag_the_agent_neither_watches_nor_filters_and_drops_a_stale_table() {
    let mut lab = Lab::new("10.237.0.0/16");
    let host = lab.host();
    let api = FakeApiServer::new();
    api.put(
        "NetworkPolicy",
        json!({"metadata": {"namespace": "x", "name": "deny-ingress"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    let port = serve_in(&host, api.clone());
    let kc = kubeconfig(&lab, port);
    // A table an earlier run with the flag on left behind, denying all ingress.
    let stale = "table inet vpcnet-policy { chain forward { type filter hook forward priority filter; policy drop; }; }";
    sh(&format!(
        "ip netns exec {host} nft -f - <<'EOF'\n{stale}\nEOF"
    ));
    // --kubeconfig given, --network-policy left at its default.
    lab.start_agent(&["--kubeconfig", &kc, "--metrics-addr", METRICS]);
    let pa = lab.pod(0);
    let pb = lab.pod(1);
    let ip_a = add_pod(&lab, "cid-a", &pa, "x", "a");
    let ip_b = add_pod(&lab, "cid-b", &pb, "x", "b");
    assert!(lab.ping(&pa, &ip_b), "a -> b");
    assert!(lab.ping(&pb, &ip_a), "b -> a");
    let t = sh(&format!(
        "ip netns exec {host} nft list table inet vpcnet-policy 2>&1 || true"
    ));
    assert!(
        !t.contains("ingress_dispatch"),
        "a policy table without the flag: {t}"
    );
    assert_eq!(
        metric(&host, "vpcnet_network_policy_applies_total{result=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(
        api.policy_requests(),
        0,
        "the agent watched the API without the flag"
    );
    for (cid, ns) in [("cid-a", &pa), ("cid-b", &pb)] {
        lab.del(cid, ns).expect_ok("DEL");
    }
}
