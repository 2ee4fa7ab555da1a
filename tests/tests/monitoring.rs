//! The monitoring kit in `manifests/` against the real agent and the DaemonSets:
//!
//! 1. every metric `manifests/grafana-dashboard.json` queries is one a running `vpcnetd` (in a
//!    private network namespace) exports on /metrics, and one `agent/src/obs/metrics.rs` (or
//!    `process.rs`) documents in its table; the agent's `process_*` metrics agree with what
//!    the kernel shows of its process;
//! 2. `manifests/podmonitor.yaml` selects the DaemonSet's pods (labels, namespace) and scrapes
//!    the agent container's named metrics port, and adds the `node` label the dashboard's
//!    variable reads.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vpcnet_tests::manifests::{read, repo, yaml_docs};
use vpcnet_tests::{free_port, http, Lab};

fn dashboard() -> Value {
    let path = repo().join("manifests/grafana-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::Object(q)) => {
                            if let Some(Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(d, &mut out);
    out
}

/// The agent's metric names (`vpcnet_*`, `process_*`) in a PromQL expression: identifiers
/// outside label values and strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_string = false;
    let mut ident = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_') {
            ident.push(c);
            continue;
        }
        if ident.starts_with("vpcnet_") || ident.starts_with("process_") {
            out.insert(std::mem::take(&mut ident));
        }
        ident.clear();
    }
    out
}

/// The sample names an OpenMetrics exposition can have: each `# TYPE` family expanded as
/// Prometheus stores it (counter `_total`, histogram `_bucket`/`_sum`/`_count`), and every
/// sample line's name.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                panic!("bad TYPE line {l:?}");
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            out.insert(l[..end].to_string());
        }
    }
    out
}

/// The metric names of the tables in `agent/src/obs/metrics.rs`'s and `process.rs`'s module
/// docs (labels cut), expanded like [`exported`] (a `histogram` row gives `_bucket`, `_sum`,
/// `_count`).
fn documented() -> BTreeSet<String> {
    let text = read(&repo().join("agent/src/obs/metrics.rs"))
        + &read(&repo().join("agent/src/obs/process.rs"));
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let Some(row) = l.strip_prefix("//! | `") else {
            continue;
        };
        let Some((name, rest)) = row.split_once('`') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name).to_string();
        let kind = rest.split('|').nth(1).unwrap_or("").trim();
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{s}"));
            }
        }
        out.insert(name);
    }
    out
}

#[test]
fn dashboard_queries_only_metrics_the_agent_exports() {
    let d = dashboard();
    let exprs = exprs(&d);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // The scan itself works (a test that finds nothing would pass anything).
    assert_eq!(
        metric_names(
            r#"sum by (op) (rate(vpcnet_a_total{x="vpcnet_no"}[5m])) / vpcnet_b + process_c"#
        ),
        ["process_c", "vpcnet_a_total", "vpcnet_b"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(queried.len() >= 15, "too few metrics found: {queried:?}");

    let mut lab = Lab::new("10.236.0.0/16");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    lab.start_agent(&["--metrics-addr", &addr.to_string()]);
    let ns = lab.pod(0);
    lab.add(&format!("{}mon", lab.prefix), &ns).expect_ok("ADD");
    // The plugin reports its ADD to the agent after its result is out: wait for that sample,
    // so the plugin-latency panels are checked against a live series, not only a TYPE line.
    let plugin_ok = r#"vpcnet_cni_plugin_duration_seconds_count{op="add",result="ok"} "#;
    let mut text = String::new();
    let reported = lab.wait_for(Duration::from_secs(5), || {
        let (code, t) = http::get(&lab.host(), addr, "/metrics");
        assert_eq!(code, 200, "/metrics: {t}");
        text = t;
        text.lines().any(|l| l.starts_with(plugin_ok))
    });
    assert!(reported, "no {plugin_ok}after an ADD:\n{text}");
    // Its panels: p50 and p99 by op, and the rate of result="error" by op.
    let plugin: Vec<&String> = exprs
        .iter()
        .filter(|e| e.contains("vpcnet_cni_plugin_duration_seconds"))
        .collect();
    for (what, parts) in [
        (
            "p50 by op",
            &["histogram_quantile(0.5,", "by (op, le)", "_bucket"][..],
        ),
        (
            "p99 by op",
            &["histogram_quantile(0.99,", "by (op, le)", "_bucket"][..],
        ),
        (
            "error rate by op",
            &["rate(", r#"result="error""#, "by (op)", "_count"][..],
        ),
    ] {
        assert!(
            plugin.iter().any(|e| parts.iter().all(|p| e.contains(p))),
            "no dashboard query for the plugin's {what}: {plugin:?}"
        );
    }
    let exported = exported(&text);
    assert!(
        exported.contains("vpcnet_cni_requests_total"),
        "{exported:?}"
    );
    assert!(!exported.contains("vpcnet_no_such_metric"));
    let documented = documented();
    assert!(
        documented.contains("vpcnet_build_info"),
        "metrics.rs table not parsed: {documented:?}"
    );

    assert!(
        documented.contains("process_resident_memory_bytes"),
        "process.rs table not parsed: {documented:?}"
    );
    // The process metrics are the agent's own: compare with what the kernel says of it.
    let pid = lab.agent.as_ref().and_then(|a| a.pid()).expect("agent pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("agent exe");
    assert!(exe.ends_with("vpcnetd"), "pid {pid} is {}", exe.display());
    let value = |name: &str| -> f64 {
        vpcnet_tests::http::sample(&text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    let open_fds = value("process_open_fds");
    assert!(
        (open_fds - fds as f64).abs() <= 3.0,
        "process_open_fds {open_fds} vs /proc/{pid}/fd {fds}"
    );
    let vm_rss: f64 = read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let rss = value("process_resident_memory_bytes");
    assert!(
        rss > 0.5 * vm_rss * 1024.0 && rss < 2.0 * vm_rss * 1024.0,
        "process_resident_memory_bytes {rss} vs VmRSS {vm_rss} kB"
    );
    // Present (a young agent may not have used one clock tick yet; the unit test in
    // metrics.rs checks it grows with CPU burnt).
    assert!(value("process_cpu_seconds_total") >= 0.0, "{text}");

    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the agent does not export: {missing:?}\n/metrics:\n{text}"
    );
    let undocumented: Vec<&String> = queried.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "the dashboard queries metrics metrics.rs does not document: {undocumented:?}"
    );
    // Every panel has a query, and every target of a non-row panel one non-empty expr.
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert!(
                t["expr"]
                    .as_str()
                    .is_some_and(|e| !metric_names(e).is_empty()),
                "panel {}: {t}",
                p["title"]
            );
        }
    }
}

#[test]
fn podmonitor_selects_the_agent_pods_and_metrics_port() {
    let pm_docs = yaml_docs(&repo().join("manifests/podmonitor.yaml"));
    assert_eq!(pm_docs.len(), 1, "one PodMonitor");
    let pm = &pm_docs[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    let pm_ns = pm["metadata"]["namespace"].as_str().expect("namespace");
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("spec.selector.matchLabels");
    assert!(!selector.is_empty());
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let ep = &endpoints[0];
    assert_eq!(ep["path"], "/metrics");
    let port = ep["port"].as_str().expect("port by name");
    // The dashboard's `node` variable reads a label this PodMonitor adds.
    assert!(
        ep["relabelings"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| {
                r["targetLabel"] == "node"
                    && r["sourceLabels"] == serde_json::json!(["__meta_kubernetes_pod_node_name"])
            })),
        "no node relabeling: {ep}"
    );
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(vars.iter().any(|v| v["name"] == "node"
        && v["definition"]
            .as_str()
            .is_some_and(|q| q.contains(", node)"))));

    for file in [
        "install.yaml",
        "vpcnet-kubernetes.yaml",
        "vpcnet-etcd.yaml",
        "vpcnet-local.yaml",
    ] {
        let docs = yaml_docs(&repo().join("manifests").join(file));
        let ds = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .unwrap_or_else(|| panic!("{file}: no DaemonSet"));
        let ds_ns = ds["metadata"]["namespace"].as_str().expect("namespace");
        let in_ns = pm["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .map_or(pm_ns == ds_ns, |n| n.iter().any(|n| n == ds_ns));
        assert!(in_ns, "{file}: PodMonitor does not look in {ds_ns}");
        let labels = ds["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .expect("pod labels");
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{file}: pod label {k}");
        }
        let containers = ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        let agent = containers
            .iter()
            .find(|c| {
                c["ports"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["name"] == port))
            })
            .unwrap_or_else(|| panic!("{file}: no container has a port named {port:?}"));
        // That port is the one /metrics is served on: the probes' /healthz is on it too,
        // and the agent's --metrics-addr binds its number (tests/tests/manifests.rs).
        assert_eq!(
            agent["livenessProbe"]["httpGet"]["port"], port,
            "{file}: metrics port vs probes"
        );
        let number = agent["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == port))
            .map(|p| p["containerPort"].clone())
            .expect("containerPort");
        let args: Vec<&str> = agent["args"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            args.iter()
                .any(|a| *a == format!("--metrics-addr=0.0.0.0:{number}")),
            "{file}: --metrics-addr vs port {number}: {args:?}"
        );
    }
}
