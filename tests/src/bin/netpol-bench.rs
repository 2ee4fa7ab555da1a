//! NetworkPolicy benchmarks (issue 13), driven by `bench/netpol-propagation.sh` and
//! `bench/netpol-dataplane.sh` (docs/benchmarks.md):
//!
//! ```text
//! netpol-bench propagation [CHANGES]      (default 55)
//! netpol-bench dataplane [RUNS] [SECONDS] (default 5 runs of 5 s)
//! netpol-bench connrate IP:PORT SECONDS   (inside a pod: sequential connect/read/close)
//! ```
//!
//! Both build the multi-node lab of `vpcnet_tests::cluster` (a switch, node namespaces, a real
//! etcd, the real `vpcnetd --network-policy=true` per node), fed by the fake Kubernetes API
//! server (`tests/datastore_contract/fake_kube.rs`) over HTTP, pods ADDed by the real plugin
//! and published to the API as a kubelet would.
//!
//! **propagation**: 3 nodes × 100 pods, 10 namespaces, 100 background policies (peers by pod,
//! by namespace, both, ipBlocks with except, ports, endPort, named ports, egress); then
//! CHANGES changes, one at a time, each timed from the API write to the moment *every* node's
//! kernel shows it: a poller per node lists one set of `table inet vpcnet-policy`
//! (`nft -j list set …` in the node's namespace, back to back) until the change's element is
//! there (or gone). The changes, in rounds of five: create a NetworkPolicy selecting the three
//! target pods (one per node) with a fresh ipBlock, update its CIDR, delete it, relabel a pod
//! so a standing policy's podSelector peer matches it, and relabel it back. Printed beside:
//! the agents' own `vpcnet_network_policy_change_to_kernel_seconds` histogram over the same
//! changes (bucket upper bounds, summed over the nodes).
//!
//! **dataplane**: 2 nodes; a server pod on node 1 (iperf3 server on 5201, `netpol-probe
//! serve` on 80), a client on node 1 (same node) and one on node 2 (cross node). Mode
//! `none`: no policy; mode `100`: 100 policies in the server's namespace all selecting it,
//! with realistic sets (300 API pods in 10 namespaces as peers by pod label, namespaces,
//! ipBlocks with except, single ports, ranges, named ports), one of which admits the clients.
//! Per run and mode (alternated, so load drift hits both): `iperf3 -t SECONDS` from each
//! client, and `netpol-bench connrate` (new TCP connections per second, each one a fresh
//! conntrack entry that walks the policy chain) from each client. Medians printed.
//!
//! The namespaces are `vt<pid>x…` (the scripts' traps remove them if this process is killed).

#[path = "../../tests/datastore_contract/fake_kube.rs"]
mod fake_kube;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_kube::FakeApiServer;
use serde_json::{json, Value};
use vpcnet_tests::cluster::{Cluster, CNI_TIMEOUT_S, SWITCH_IP};
use vpcnet_tests::{bin, cni, host_veth_name, netns, par_map, Proc};

const VPC: &str = "10.240.0.0/16";
const METRICS: &str = "127.0.0.1:9961";
const HIST: &str = "vpcnet_network_policy_change_to_kernel_seconds";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| {
        args.get(i)
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(d)
    };
    match args.first().map(String::as_str) {
        Some("propagation") => propagation(num(1, 55)),
        Some("dataplane") => dataplane(num(1, 5), num(2, 5)),
        Some("connrate") if args.len() == 3 => {
            let (Ok(to), Ok(secs)) = (args[1].parse::<SocketAddr>(), args[2].parse::<u64>()) else {
                return usage();
            };
            connrate(to, Duration::from_secs(secs))
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: netpol-bench propagation [CHANGES]\n       netpol-bench dataplane [RUNS] [SECONDS]\n       netpol-bench connrate IP:PORT SECONDS"
    );
    ExitCode::from(2)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ---- the lab ----

struct Lab {
    api: Arc<FakeApiServer>,
    /// Servers (iperf3, netpol-probe) in pods: dropped before the cluster.
    procs: Vec<Proc>,
    cluster: Cluster,
}

/// One pod ADDed by the real plugin.
#[derive(Debug, Clone)]
struct BPod {
    ns: String,
    name: String,
    node: usize,
    netns: String,
    cid: String,
    ip: std::net::Ipv4Addr,
    labels: Value,
}

fn pod_object(ns: &str, name: &str, node: &str, ip: &str, labels: &Value) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 80, "protocol": "TCP"},
            {"name": "iperf", "containerPort": 5201, "protocol": "TCP"},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

impl Lab {
    fn build(nodes: usize) -> Lab {
        let cluster = Cluster::new(nodes, VPC);
        let api = FakeApiServer::new();
        let port = fake_kube::serve_http_in(cluster.switch_ns(), SWITCH_IP.into(), api.clone());
        let kc =
            fake_kube::write_kubeconfig(&cluster.dir.join("kubeconfig"), SWITCH_IP.into(), port);
        let mut lab = Lab {
            api,
            procs: Vec::new(),
            cluster,
        };
        lab.cluster.start_agents(&[
            "--peer-sync-interval",
            "1s",
            "--network-policy=true",
            "--kubeconfig",
            &kc,
            "--metrics-addr",
            METRICS,
        ]);
        lab
    }

    fn namespace(&self, name: &str, labels: Value) {
        self.api.put(
            "Namespace",
            json!({"metadata": {"name": name, "labels": labels}}),
        );
    }

    /// ADDs `specs` ((k8s namespace, name, node, labels)) through the real plugin, 4 at a
    /// time, each Pod object published first with a placeholder address, then with its own.
    fn add_pods(&mut self, specs: &[(String, String, usize, Value)]) -> Vec<BPod> {
        let slots: Vec<(usize, String, String)> = specs
            .iter()
            .enumerate()
            .map(|(i, (_, _, k, _))| {
                let (netns, _) = self
                    .cluster
                    .new_pod_namespaces(*k, 1)
                    .pop()
                    .expect("one namespace");
                (i, netns, format!("nb-{i}"))
            })
            .collect();
        let c = &self.cluster;
        let api = &self.api;
        let ips = par_map(&slots, 4, |(i, netns, cid)| {
            let (ns, name, k, labels) = &specs[*i];
            let n = c.node(*k);
            // Known to the API before the ADD, as a kubelet's pod is.
            api.put("Pod", pod_object(ns, name, &n.name, "", labels));
            let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
            let path = netns::path(netns);
            let mut env = cni::env("ADD", cid, "eth0", &path).to_vec();
            env.push(("CNI_ARGS", &args));
            let out = cni::invoke(
                &n.ns,
                n.conf().to_string().as_bytes(),
                &env,
                Some(CNI_TIMEOUT_S),
            );
            out.expect_ok(&format!("ADD {ns}/{name} on {}", n.name));
            let ip = out.ip().expect("ADD result has an address");
            api.put(
                "Pod",
                pod_object(ns, name, &n.name, &ip.to_string(), labels),
            );
            ip
        });
        slots
            .into_iter()
            .zip(ips)
            .map(|((i, netns, cid), ip)| {
                let (ns, name, node, labels) = specs[i].clone();
                BPod {
                    ns,
                    name,
                    node,
                    netns,
                    cid,
                    ip,
                    labels,
                }
            })
            .collect()
    }

    /// The agents' change-to-kernel histogram, summed over the nodes: (le, cumulative count).
    fn histogram(&self, nodes: usize) -> Vec<(f64, f64)> {
        let mut sum: BTreeMap<String, f64> = BTreeMap::new();
        for k in 1..=nodes {
            let text = self
                .cluster
                .http_get(k, METRICS, "/metrics")
                .unwrap_or_default();
            for line in text.lines() {
                let Some(rest) = line.strip_prefix(&format!("{HIST}_bucket{{le=\"")) else {
                    continue;
                };
                let Some((le, v)) = rest.split_once("\"} ") else {
                    continue;
                };
                *sum.entry(le.to_string()).or_default() += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
        let mut v: Vec<(f64, f64)> = sum
            .into_iter()
            .map(|(le, n)| (le.parse::<f64>().unwrap_or(f64::INFINITY), n))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The quantile `q` of a histogram delta (bucket upper bound, as Prometheus would bound it).
fn hist_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, m)| *m);
            (*le, n - b)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = (q * total).ceil();
    delta
        .iter()
        .find(|(_, n)| *n >= want)
        .map(|(le, _)| (*le, total))
}

/// The `permille`/1000 quantile (nearest rank).
fn pct(v: &[f64], permille: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = (permille * s.len()).div_ceil(1000).clamp(1, s.len()) - 1;
    s[i]
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// `nft -j list set inet vpcnet-policy SET` in node namespace `ns` (empty when absent).
fn list_set(ns: &str, set: &str) -> String {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "set", "inet"])
        .args(["vpcnet-policy", set])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

// ---- propagation ----

/// The 100 background policies: 10 per namespace, each selecting one app of it, with the
/// kinds of peers and ports a production cluster has.
fn background_policies(namespaces: usize, apps: usize) -> Vec<Value> {
    let mut v = Vec::new();
    for n in 0..namespaces {
        for j in 0..10 {
            let ns = format!("ns{n}");
            let app = format!("app{}", (n * 10 + j) % apps);
            let peer_app = format!("app{}", (n * 10 + j + 1) % apps);
            let team = format!("t{}", (n + j) % 3);
            let spec = match j % 5 {
                0 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}],
                                 "ports": [{"port": 80}, {"port": 8080, "endPort": 8090}]}]}),
                1 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                                 "ports": [{"port": "http"}]}]}),
                2 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                                           "podSelector": {"matchExpressions": [
                                               {"key": "app", "operator": "In",
                                                "values": [peer_app, format!("app{}", (j + 7) % apps)]}]}}]}]}),
                3 => json!({"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.16.{}.0/24", n * 10 + j),
                                                       "except": [format!("172.16.{}.128/25", n * 10 + j)]}},
                                          {"ipBlock": {"cidr": "10.240.0.0/16",
                                                       "except": [format!("10.240.{}.0/24", j)]}}],
                                 "ports": [{"port": 443}, {"port": 53, "protocol": "UDP"}]}]}),
                _ => json!({"podSelector": {"matchLabels": {"app": app}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {}}]}],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns0"}},
                                        "podSelector": {"matchLabels": {"app": "app0"}}}],
                                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
                               {"to": [{"podSelector": {"matchLabels": {"app": peer_app}}}]}]}),
            };
            v.push(json!({"metadata": {"namespace": ns, "name": format!("bg-{j}")}, "spec": spec}));
        }
    }
    v
}

fn propagation(changes: usize) -> ExitCode {
    const NODES: usize = 3;
    const PER_NODE: usize = 100;
    const NAMESPACES: usize = 10;
    const APPS: usize = 20;
    let t0 = Instant::now();
    let load0 = load();
    let mut lab = Lab::build(NODES);
    for n in 0..NAMESPACES {
        lab.namespace(&format!("ns{n}"), json!({"team": format!("t{}", n % 3)}));
    }
    for p in background_policies(NAMESPACES, APPS) {
        lab.api.put("NetworkPolicy", p);
    }
    // The standing policy the relabel changes act on: the targets admit pods labelled
    // probe=on, from any namespace.
    lab.api.put(
        "NetworkPolicy",
        json!({"metadata": {"namespace": "ns0", "name": "probe-peers"},
               "spec": {"podSelector": {"matchLabels": {"bench": "target"}},
                        "ingress": [{"from": [{"namespaceSelector": {},
                                               "podSelector": {"matchLabels": {"probe": "on"}}}]}]}}),
    );
    // 300 pods: pod i on node i % 3 + 1; the first pod of each node in ns0 is a target.
    let specs: Vec<(String, String, usize, Value)> = (0..NODES * PER_NODE)
        .map(|i| {
            let node = i % NODES + 1;
            let ns = format!("ns{}", (i / NODES) % NAMESPACES);
            let labels = if i < NODES {
                json!({"bench": "target", "app": "target"})
            } else {
                json!({"app": format!("app{}", i % APPS)})
            };
            let ns = if i < NODES { "ns0".to_string() } else { ns };
            (ns, format!("p{i}"), node, labels)
        })
        .collect();
    let ta = Instant::now();
    let pods = lab.add_pods(&specs);
    eprintln!(
        "{} pods ADDed in {:.1} s",
        pods.len(),
        ta.elapsed().as_secs_f64()
    );
    let targets: Vec<(String, String)> = pods[..NODES]
        .iter()
        .map(|p| {
            (
                lab.cluster.node(p.node).ns.clone(),
                format!("ingress_{}_any", host_veth_name(&p.cid, "eth0")),
            )
        })
        .collect();
    // Settled: every target's set exists, and the table's size stopped moving.
    let ok = vpcnet_tests::wait_until(Duration::from_secs(120), || {
        targets
            .iter()
            .all(|(ns, set)| list_set(ns, set).contains("\"set\""))
    });
    if !ok {
        lab.cluster.dump_logs(30);
        eprintln!("netpol-bench: the targets' sets never appeared");
        return ExitCode::FAILURE;
    }
    std::thread::sleep(Duration::from_secs(3));
    let sizes: Vec<String> = (1..=NODES)
        .map(|k| {
            let rules = lab
                .cluster
                .metric(k, METRICS, "vpcnet_network_policy_rules")
                .unwrap_or(f64::NAN);
            let sets = lab
                .cluster
                .metric(k, METRICS, "vpcnet_network_policy_sets")
                .unwrap_or(f64::NAN);
            let isolated = lab
                .cluster
                .metric(k, METRICS, "vpcnet_network_policy_pods")
                .unwrap_or(f64::NAN);
            format!("node{k}: {isolated} isolated pods, {rules} rules, {sets} sets+maps")
        })
        .collect();
    eprintln!("ruleset per node: {}", sizes.join("; "));

    let hist0 = lab.histogram(NODES);
    let mut kinds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut polls = Vec::new();
    let mut rounds = 0;
    while all.len() < changes {
        rounds += 1;
        let n = rounds;
        let name = format!("marker-{n}");
        let marker = |cidr: &str| {
            json!({"metadata": {"namespace": "ns0", "name": name},
                   "spec": {"podSelector": {"matchLabels": {"bench": "target"}},
                            "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}})
        };
        let a = format!("198.18.{}.0", n % 250);
        let b = format!("198.19.{}.0", n % 250);
        // The pod relabelled: one of the 297 others, on any node.
        let q = &pods[NODES + (n * 37) % (pods.len() - NODES)];
        let q_ip = q.ip.to_string();
        let relabel = |on: bool| {
            let mut l = q.labels.clone();
            if on {
                l["probe"] = json!("on");
            }
            lab.api.put(
                "Pod",
                pod_object(&q.ns, &q.name, &lab.cluster.node(q.node).name, &q_ip, &l),
            );
        };
        type Step<'a> = (&'static str, Box<dyn FnMut() + 'a>, String, bool);
        let api = lab.api.clone();
        let (ma, mb) = (marker(&format!("{a}/24")), marker(&format!("{b}/24")));
        let name2 = name.clone();
        let mut steps: Vec<Step> = vec![
            (
                "create policy",
                Box::new(move || api.put("NetworkPolicy", ma.clone())),
                a.clone(),
                true,
            ),
            (
                "update policy",
                Box::new({
                    let api = lab.api.clone();
                    move || api.put("NetworkPolicy", mb.clone())
                }),
                b.clone(),
                true,
            ),
            (
                "delete policy",
                Box::new({
                    let api = lab.api.clone();
                    move || {
                        api.remove("NetworkPolicy", "ns0", &name2);
                    }
                }),
                b.clone(),
                false,
            ),
        ];
        for (kind, f, elem, present) in steps.iter_mut() {
            let (dt, p) = timed_change(&targets, f.as_mut(), elem, *present);
            kinds.entry(kind).or_default().push(dt);
            all.push(dt);
            polls.extend(p);
        }
        drop(steps);
        for (kind, on) in [
            ("relabel pod (peer in)", true),
            ("relabel pod (peer out)", false),
        ] {
            let (dt, p) = timed_change(&targets, &mut || relabel(on), &q_ip, on);
            kinds.entry(kind).or_default().push(dt);
            all.push(dt);
            polls.extend(p);
        }
    }
    // The agents' histogram once the last apply has been counted.
    std::thread::sleep(Duration::from_millis(1500));
    let hist1 = lab.histogram(NODES);
    let load1 = load();
    println!(
        "## policy change -> enforced on every node ({} nodes x {} pods, {} policies; load {load0} -> {load1})\n",
        NODES,
        PER_NODE,
        NAMESPACES * 10 + 1
    );
    println!("| change | n | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let row = |label: &str, v: &[f64]| {
        println!(
            "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            pct(v, 500),
            pct(v, 900),
            pct(v, 990),
            pct(v, 1000)
        );
    };
    for (k, v) in &kinds {
        row(k, v);
    }
    row("**all changes**", &all);
    println!(
        "\nkernel poll (one `nft -j list set` per node, back to back): p50 {:.1} ms, p90 {:.1} ms — the resolution of the figures above",
        pct(&polls, 500),
        pct(&polls, 900)
    );
    match (
        hist_quantile(&hist0, &hist1, 0.5),
        hist_quantile(&hist0, &hist1, 0.99),
    ) {
        (Some((p50, n)), Some((p99, _))) => println!(
            "agents' own `{HIST}` over the same period ({n} observations, all nodes): p50 <= {} ms, p99 <= {} ms (bucket bounds)",
            p50 * 1000.0,
            p99 * 1000.0
        ),
        _ => println!("agents' own `{HIST}`: no observations"),
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    drop(lab);
    ExitCode::SUCCESS
}

/// Makes one change and polls every target until `elem` (a quoted string of the set's JSON)
/// is there (`present`) or gone; returns the time from the change to the last node seeing
/// it (ms), and the poll durations (ms).
fn timed_change(
    targets: &[(String, String)],
    change: &mut dyn FnMut(),
    elem: &str,
    present: bool,
) -> (f64, Vec<f64>) {
    let quoted = format!("\"{elem}\"");
    let start = Instant::now();
    change();
    let results: Vec<(f64, Vec<f64>)> = par_map(targets, targets.len(), |(ns, set)| {
        let mut polls = Vec::new();
        loop {
            let t = Instant::now();
            let s = list_set(ns, set);
            polls.push(t.elapsed().as_secs_f64() * 1000.0);
            if s.contains(&quoted) == present {
                return (start.elapsed().as_secs_f64() * 1000.0, polls);
            }
            if start.elapsed() > Duration::from_secs(60) {
                eprintln!("netpol-bench: {ns} {set}: {elem} present={present} not seen in 60 s");
                return (f64::NAN, polls);
            }
        }
    });
    let worst = results.iter().map(|r| r.0).fold(0.0, f64::max);
    (worst, results.into_iter().flat_map(|r| r.1).collect())
}

// ---- dataplane ----

fn dataplane(runs: usize, secs: usize) -> ExitCode {
    let load0 = load();
    let mut lab = Lab::build(2);
    for n in 0..10 {
        lab.namespace(&format!("ns{n}"), json!({"team": format!("t{}", n % 3)}));
    }
    lab.namespace("srv", json!({"team": "server"}));
    lab.namespace("cli", json!({"team": "client"}));
    // 300 pods elsewhere in the cluster, known to the API only (peers in the sets, as a
    // production node's sets hold the addresses of pods on other nodes).
    for i in 0..300u32 {
        let ip = format!("10.240.{}.{}", 200 + i / 250, i % 250 + 1);
        lab.api.put(
            "Pod",
            pod_object(
                &format!("ns{}", i % 10),
                &format!("bg{i}"),
                "elsewhere",
                &ip,
                &json!({"app": format!("app{}", i % 20), "tier": format!("t{}", i % 4)}),
            ),
        );
    }
    let specs = vec![
        (
            "srv".to_string(),
            "server".to_string(),
            1,
            json!({"app": "server"}),
        ),
        (
            "cli".to_string(),
            "client-same".to_string(),
            1,
            json!({"role": "client"}),
        ),
        (
            "cli".to_string(),
            "client-cross".to_string(),
            2,
            json!({"role": "client"}),
        ),
    ];
    let pods = lab.add_pods(&specs);
    let server = &pods[0];
    let server_veth = host_veth_name(&server.cid, "eth0");
    // Servers in the server pod: iperf3 and netpol-probe (accepts, writes its name, echoes).
    for cmd in [
        vec![
            "iperf3".to_string(),
            "-s".into(),
            "-p".into(),
            "5201".into(),
        ],
        vec![
            bin("netpol-probe").display().to_string(),
            "serve".into(),
            "server".into(),
            "80".into(),
        ],
    ] {
        let child = Command::new("ip")
            .args(["netns", "exec", &server.netns])
            .args(&cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning a server");
        let mut p = Proc::default();
        p.set(child);
        lab.procs.push(p);
    }
    std::thread::sleep(Duration::from_millis(500));
    let policies = dataplane_policies();
    let node1 = lab.cluster.node(1).ns.clone();
    let mut results: BTreeMap<(&str, &str, &str), Vec<f64>> = BTreeMap::new();
    let mut sizes = String::new();
    for run in 0..runs {
        // Alternate which mode goes first.
        let order: [&str; 2] = if run % 2 == 0 {
            ["none", "100"]
        } else {
            ["100", "none"]
        };
        for mode in order {
            set_policies(&lab.api, &policies, mode == "100");
            let want = mode == "100";
            let ok = vpcnet_tests::wait_until(Duration::from_secs(60), || {
                list_set(&node1, &format!("ingress_{server_veth}_ports")).contains("\"set\"")
                    == want
            });
            assert!(ok, "mode {mode}: the server's sets did not follow");
            std::thread::sleep(Duration::from_secs(1));
            if want && sizes.is_empty() {
                let m = |n: &str| lab.cluster.metric(1, METRICS, n).unwrap_or(f64::NAN);
                let ports = list_set(&node1, &format!("ingress_{server_veth}_ports"));
                let any = list_set(&node1, &format!("ingress_{server_veth}_any"));
                let count = |s: &str| s.matches("\"concat\"").count();
                let count_any = |s: &str| {
                    serde_json::from_str::<Value>(s)
                        .ok()
                        .and_then(|v| {
                            v["nftables"].as_array().and_then(|a| {
                                a.iter()
                                    .find_map(|o| o["set"]["elem"].as_array().map(Vec::len))
                            })
                        })
                        .unwrap_or(0)
                };
                sizes = format!(
                    "node1 with 100 policies: {} rules, {} sets+maps; the server's ingress sets: {} (addr . proto . port) elements, {} any-port elements",
                    m("vpcnet_network_policy_rules"),
                    m("vpcnet_network_policy_sets"),
                    count(&ports),
                    count_any(&any)
                );
                eprintln!("{sizes}");
            }
            for client in &pods[1..] {
                let place = if client.node == server.node {
                    "same node"
                } else {
                    "cross node"
                };
                let gbps = iperf(&client.netns, &server.ip.to_string(), secs);
                results
                    .entry(("TCP throughput (Gbit/s)", place, mode))
                    .or_default()
                    .push(gbps);
                let rate = connrate_in(&client.netns, &format!("{}:80", server.ip), secs.min(3));
                results
                    .entry(("new connections/s", place, mode))
                    .or_default()
                    .push(rate);
                eprintln!(
                    "run {run} mode {mode} {place}: {gbps:.2} Gbit/s, {rate:.0} conn/s (load {})",
                    load()
                );
            }
        }
    }
    let load1 = load();
    println!(
        "## pod -> pod with 100 policies vs none ({runs} runs, medians; load {load0} -> {load1})\n"
    );
    println!("{sizes}\n");
    println!("| measure | path | no policy | 100 policies | ratio |");
    println!("|---|---|---|---|---|");
    for what in ["TCP throughput (Gbit/s)", "new connections/s"] {
        for place in ["same node", "cross node"] {
            let none = median(
                results
                    .get(&(what, place, "none"))
                    .map_or(&[][..], Vec::as_slice),
            );
            let with = median(
                results
                    .get(&(what, place, "100"))
                    .map_or(&[][..], Vec::as_slice),
            );
            println!(
                "| {what} | {place} | {none:.2} | {with:.2} | {:.3} |",
                with / none
            );
        }
    }
    println!("\nper run (none / 100):");
    for ((what, place, mode), v) in &results {
        println!(
            "  {what} {place} {mode}: {}",
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    drop(pods);
    drop(lab);
    ExitCode::SUCCESS
}

/// 100 policies in namespace `srv`, all selecting the server; one of them admits the
/// clients (role=client in namespace cli) on 5201 and 80.
fn dataplane_policies() -> Vec<Value> {
    let mut v = Vec::new();
    for j in 0..100u32 {
        let app = format!("app{}", j % 20);
        let spec = match j % 5 {
            0 => json!({"ingress": [{"from": [{"namespaceSelector": {},
                                               "podSelector": {"matchLabels": {"app": app}}}],
                                     "ports": [{"port": 8000 + j}, {"port": 9000, "endPort": 9100}]}]}),
            1 => {
                json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 3)}}}],
                                     "ports": [{"port": "http"}, {"port": 443}]}]})
            }
            2 => {
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + j % 16),
                                                           "except": [format!("172.{}.{}.0/24", 16 + j % 16, j)]}},
                                              {"ipBlock": {"cidr": format!("192.168.{j}.0/24")}}],
                                     "ports": [{"port": 10000 + j, "protocol": "UDP"}]}]})
            }
            3 => {
                json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns{}", j % 10)}},
                                               "podSelector": {"matchExpressions": [
                                                   {"key": "tier", "operator": "In", "values": [format!("t{}", j % 4)]}]}}]}]})
            }
            _ => json!({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}},
                                              {"ipBlock": {"cidr": format!("10.{}.0.0/16", 100 + j)}}],
                                     "ports": [{"port": 7000 + j}, {"port": 53, "protocol": "UDP"}]}]}),
        };
        let mut spec = spec;
        spec["podSelector"] = json!({"matchLabels": {"app": "server"}});
        if j == 99 {
            spec["ingress"].as_array_mut().expect("ingress").push(
                json!({"from": [{"namespaceSelector": {"matchLabels": {"team": "client"}},
                                       "podSelector": {"matchLabels": {"role": "client"}}}],
                             "ports": [{"port": 5201}, {"port": 80}]}),
            );
        }
        v.push(json!({"metadata": {"namespace": "srv", "name": format!("p{j}")}, "spec": spec}));
    }
    v
}

fn set_policies(api: &FakeApiServer, policies: &[Value], on: bool) {
    for p in policies {
        if on {
            api.put("NetworkPolicy", p.clone());
        } else {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            api.remove("NetworkPolicy", "srv", name);
        }
    }
}

/// `iperf3 -c` from `netns` for `secs`: received Gbit/s (NaN on failure).
fn iperf(netns: &str, server: &str, secs: usize) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iperf3", "-J", "-c", server])
        .args(["-p", "5201", "-t", &secs.to_string()])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return f64::NAN };
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["end"]["sum_received"]["bits_per_second"].as_f64())
        .map_or(f64::NAN, |b| b / 1e9)
}

/// `netpol-bench connrate` in `netns`: connections per second.
fn connrate_in(netns: &str, to: &str, secs: usize) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin("netpol-bench"))
        .args(["connrate", to, &secs.to_string()])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return f64::NAN };
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

/// Sequential connect, read the server's greeting, close, for `dur`: prints connections per
/// second (only completed ones count).
fn connrate(to: SocketAddr, dur: Duration) -> ExitCode {
    let start = Instant::now();
    let mut n = 0u64;
    let mut failed = 0u64;
    let mut buf = [0u8; 64];
    while start.elapsed() < dur {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if matches!(s.read(&mut buf), Ok(k) if k > 0) {
                    n += 1;
                } else {
                    failed += 1;
                }
                // RST instead of TIME_WAIT: the client's ports stay available.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            Err(_) => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:.1}", n as f64 / secs);
    if failed > 0 {
        eprintln!("connrate: {failed} failed");
    }
    ExitCode::SUCCESS
}
