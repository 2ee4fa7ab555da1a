//! The NetworkPolicy truth-table lab (issue 13), driven by `scripts/netpol-matrix.sh`:
//!
//! ```text
//! netpol-matrix [--json] [--ipv6] CASE_OR_DIR...
//! ```
//!
//! `--ipv6`: the same lab dual-stack (VPC `10.240.0.0/16` and `fd00:70::/64`, an IPv6 underlay
//! `fd00:199::1k` on every node given to its agent as IPv6 `--node-ip`, the pods published
//! with both addresses in `status.podIPs`), every probe over IPv6: the pods' IPv6 addresses,
//! and `${x/a}`, `${vpc}`, `${hostlen}` in a case stand for the IPv6 address, the IPv6 VPC
//! and 128 (32 in the IPv4 lab).
//!
//! Builds the lab once — the multi-node [`Cluster`] (a switch, 3 node namespaces, etcd), one
//! fake Kubernetes API server (`tests/datastore_contract/fake_kube.rs`, served over HTTP on
//! the switch), the real `vpcnetd --network-policy=true` on every node reading it, and nine
//! pods `x/a … z/c` spread over the nodes, ADDed by the real plugin and published to the API
//! as a kubelet would (labels, `spec.nodeName`, named container ports, `status.podIP`). Every
//! pod runs `netpol-probe serve` (TCP and UDP on 80 and 81). Then, per case (a YAML file, see
//! `docs/network-policy.md`): the API objects are reset to the case's, the run waits until
//! every node's agent has the case's policies in its view and its applied ruleset has been
//! stable for [`SETTLE`], every pod probes every pod on tcp/80, tcp/81, udp/80, udp/81, and the
//! observed matrix is printed against `expect:`; every node also probes its own pods (always
//! allowed). Cells that differ are probed once more (a probe can time out on a loaded
//! machine); the second result counts, and how many cells were re-probed is printed. A case's
//! `steps:` are later phases run the same way, with TCP connections held across a change
//! (`held:`) and pods recreated with their first packets probed right after ADD
//! (`recreate:`).
//!
//! Exit status: 0 every case matched, 1 a difference (or a case could not run), 2 bad usage
//! or a case file that does not parse. The namespaces and processes go when the lab is
//! dropped; the script's trap removes them when this process is killed.

#[path = "../../tests/datastore_contract/fake_kube.rs"]
mod fake_kube;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fake_kube::FakeApiServer;
use serde_json::{json, Map, Value};
use vpcnet_tests::cluster::{Cluster, CNI_TIMEOUT_S, SWITCH_IP};
use vpcnet_tests::{bin, cni, netns, par_map, Proc};

/// The nine pods, `namespace/name`.
const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The probed (protocol, port)s, as `expect:` keys.
const PORTS: [(&str, &str, u16); 4] = [
    ("tcp/80", "tcp", 80),
    ("tcp/81", "tcp", 81),
    ("udp/80", "udp", 80),
    ("udp/81", "udp", 81),
];
const NODES: usize = 3;
/// The nodes as sources of node-to-pod probes (cell source index `PODS.len() + k - 1`).
const NODE_NAMES: [&str; NODES] = ["node1", "node2", "node3"];
const VPC: &str = "10.240.0.0/16";
/// The IPv6 VPC of the `--ipv6` lab.
const VPC6: &str = "fd00:70::/64";
/// Whether this run is the `--ipv6` lab (set once in `main`).
static IPV6: OnceLock<bool> = OnceLock::new();

fn ipv6() -> bool {
    IPV6.get().copied().unwrap_or(false)
}

/// Node `k`'s IPv6 underlay address (the `--ipv6` lab).
fn node_ip6(k: usize) -> Ipv6Addr {
    let low = u16::try_from(0x10 + k).unwrap_or(0xffff);
    Ipv6Addr::new(0xfd00, 0x199, 0, 0, 0, 0, 0, low)
}

/// The IPv6 address of an ADD result, if any.
fn result_ip6(out: &vpcnet_tests::CniOutput) -> Option<Ipv6Addr> {
    out.json["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        a.split('/').next()?.parse::<Ipv6Addr>().ok()
    })
}
/// Every agent's /metrics, inside its node's namespace.
const METRICS: &str = "127.0.0.1:9961";
/// How long each probe may take (TCP connect + reply; UDP echo, datagram resent every 250 ms).
const PROBE_TIMEOUT_MS: u64 = 1500;
/// A node's ruleset counts as applied once its view has the case's policies and its apply
/// counters have not moved for this long (the agent applies within milliseconds of an event,
/// and re-checks every second).
const SETTLE: Duration = Duration::from_millis(1500);
/// Longest a case may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const CASE_KEYS: [&str; 6] = [
    "description",
    "policies",
    "namespaceLabels",
    "podLabels",
    "expect",
    "steps",
];
const STEP_KEYS: [&str; 7] = [
    "name",
    "policies",
    "namespaceLabels",
    "podLabels",
    "expect",
    "recreate",
    "held",
];

/// The node (1-based) pod `i` of [`PODS`] lives on: every node gets one pod of each
/// namespace and one of each name, so the matrix has same-node and cross-node pairs.
fn node_of(i: usize) -> usize {
    (i / 3 + i % 3) % NODES + 1
}

fn pod_index(name: &str) -> Option<usize> {
    PODS.iter().position(|p| *p == name)
}

// ---- cases ----

/// namespace (or `x/a`) → labels.
type Labels = BTreeMap<String, Map<String, Value>>;
/// port key → from → to → allow? (`*` wildcards; see [`expected`]).
type Expect = BTreeMap<String, BTreeMap<String, BTreeMap<String, bool>>>;
/// (from pod, to pod, port) indexes into [`PODS`] and [`PORTS`].
type Cell = (usize, usize, usize);

/// What the API holds during a phase.
#[derive(Debug, Clone, Default)]
struct State {
    policies: Vec<Value>,
    ns_labels: Labels,
    pod_labels: Labels,
}

/// The case's own state and expectation (phase 0), or one of its `steps:`.
#[derive(Debug)]
struct Phase {
    /// "" for the case's own, else the step's `name` (default `step N`).
    name: String,
    state: State,
    expect: Expect,
    /// Pods DELeted and ADDed again after the state settled (a new pod of the same name and
    /// labels): the cells to and from them are probed right after ADD returns, before the
    /// pod's address is published — its first packets — and again once settled.
    recreate: Vec<usize>,
    /// TCP connections opened before this phase's change (under the previous phase's rules)
    /// and held open: after the change, does each still carry data?
    held: Vec<(Cell, bool)>,
}

/// One case file, checked.
#[derive(Debug)]
struct Case {
    name: String,
    path: PathBuf,
    phases: Vec<Phase>,
}

/// Expected verdict: the exact pair; else (a pod to itself: allow); else `from → "*"`,
/// `"*" → to`, `"*" → "*"`; else allow.
fn expected(expect: &Expect, port: &str, from: &str, to: &str) -> bool {
    let Some(m) = expect.get(port) else {
        return true;
    };
    let look = |f: &str, t: &str| m.get(f).and_then(|r| r.get(t)).copied();
    if let Some(v) = look(from, to) {
        return v;
    }
    if from == to {
        return true;
    }
    look(from, "*")
        .or_else(|| look("*", to))
        .or_else(|| look("*", "*"))
        .unwrap_or(true)
}

/// Label values as strings (YAML may read `1` or `true` as numbers/bools).
fn labels(v: &Value, what: &str) -> Result<Map<String, Value>, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{what}: a mapping of labels"))?;
    m.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("{what}.{k}: a label value is a string")),
            };
            Ok((k.clone(), Value::String(s)))
        })
        .collect()
}

fn verdict(v: &Value, what: &str) -> Result<bool, String> {
    match v.as_str() {
        Some("allow") => Ok(true),
        Some("deny") => Ok(false),
        _ => Err(format!("{what}: allow or deny, not {v}")),
    }
}

fn parse_policies(v: &Value, p: &str) -> Result<Vec<Value>, String> {
    let policies = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.clone(),
        _ => return Err(format!("{p}: a list of NetworkPolicy objects")),
    };
    for (i, pol) in policies.iter().enumerate() {
        let meta = &pol["metadata"];
        let ns = meta["namespace"].as_str();
        if !ns.is_some_and(|n| NAMESPACES.contains(&n)) || meta["name"].as_str().is_none() {
            return Err(format!(
                "{p}[{i}]: metadata.name and metadata.namespace (x, y or z) are required"
            ));
        }
        if !pol["spec"].is_object() {
            return Err(format!("{p}[{i}]: spec is required"));
        }
    }
    Ok(policies)
}

fn parse_ns_labels(v: &Value, p: &str) -> Result<Labels, String> {
    let mut out = BTreeMap::new();
    for (ns, l) in v
        .as_object()
        .ok_or_else(|| format!("{p}: {{ns: {{k: v}}}}"))?
    {
        if !NAMESPACES.contains(&ns.as_str()) {
            return Err(format!("{p}: no namespace {ns:?} (x, y, z)"));
        }
        out.insert(ns.clone(), labels(l, &format!("{p}.{ns}"))?);
    }
    Ok(out)
}

fn parse_pod_labels(v: &Value, p: &str) -> Result<Labels, String> {
    let mut out = BTreeMap::new();
    for (pod, l) in v
        .as_object()
        .ok_or_else(|| format!("{p}: {{ns/pod: {{k: v}}}}"))?
    {
        if pod_index(pod).is_none() {
            return Err(format!("{p}: no pod {pod:?} (x/a … z/c)"));
        }
        out.insert(pod.clone(), labels(l, &format!("{p}.{pod}"))?);
    }
    Ok(out)
}

fn parse_expect(e: &Value, p: &str) -> Result<Expect, String> {
    let mut expect = BTreeMap::new();
    let e = e
        .as_object()
        .ok_or_else(|| format!("{p}: a mapping of tcp/80, tcp/81, udp/80, udp/81"))?;
    for (port, rows) in e {
        if !PORTS.iter().any(|(k, _, _)| k == port) {
            return Err(format!(
                "{p}: no port {port:?} (tcp/80, tcp/81, udp/80, udp/81)"
            ));
        }
        let mut m = BTreeMap::new();
        for (from, row) in rows
            .as_object()
            .ok_or_else(|| format!("{p}.{port}: {{from: {{to: allow|deny}}}}"))?
        {
            if from != "*" && pod_index(from).is_none() {
                return Err(format!("{p}.{port}: no pod {from:?}"));
            }
            let mut r = BTreeMap::new();
            for (to, v) in row
                .as_object()
                .ok_or_else(|| format!("{p}.{port}.{from}: {{to: allow|deny}}"))?
            {
                if to != "*" && pod_index(to).is_none() {
                    return Err(format!("{p}.{port}.{from}: no pod {to:?}"));
                }
                r.insert(to.clone(), verdict(v, &format!("{p}.{port}.{from}.{to}"))?);
            }
            m.insert(from.clone(), r);
        }
        expect.insert(port.clone(), m);
    }
    Ok(expect)
}

/// `"x/b -> x/a tcp/80"` (TCP only: a held connection).
fn parse_connection(k: &str, p: &str) -> Result<Cell, String> {
    let bad = || format!("{p}: {k:?} is not \"<from> -> <to> tcp/80|tcp/81\"");
    let w: Vec<&str> = k.split_whitespace().collect();
    let [from, "->", to, port] = w.as_slice() else {
        return Err(bad());
    };
    let f = pod_index(from).ok_or_else(bad)?;
    let t = pod_index(to).ok_or_else(bad)?;
    let port = PORTS
        .iter()
        .position(|(key, proto, _)| key == port && *proto == "tcp")
        .ok_or_else(bad)?;
    Ok((f, t, port))
}

fn load_case(path: &Path) -> Result<Case, String> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{p}: {e}"))?;
    let v: Value = serde_norway::from_str(&text).map_err(|e| format!("{p}: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{p}: the case is a mapping"))?;
    if let Some(k) = obj.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
        return Err(format!("{p}: unknown key {k:?} (known: {CASE_KEYS:?})"));
    }
    let mut state = State::default();
    if let Some(v) = obj.get("policies") {
        state.policies = parse_policies(v, &format!("{p}: policies"))?;
    }
    if let Some(v) = obj.get("namespaceLabels") {
        state.ns_labels = parse_ns_labels(v, &format!("{p}: namespaceLabels"))?;
    }
    if let Some(v) = obj.get("podLabels") {
        state.pod_labels = parse_pod_labels(v, &format!("{p}: podLabels"))?;
    }
    let expect = match obj.get("expect") {
        Some(e) => parse_expect(e, &format!("{p}: expect"))?,
        None => BTreeMap::new(),
    };
    let mut phases = vec![Phase {
        name: String::new(),
        state: state.clone(),
        expect,
        recreate: Vec::new(),
        held: Vec::new(),
    }];
    let steps = match obj.get("steps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(format!("{p}: steps: a list")),
    };
    for (i, step) in steps.iter().enumerate() {
        let sp = format!("{p}: steps[{i}]");
        let o = step.as_object().ok_or_else(|| format!("{sp}: a mapping"))?;
        if let Some(k) = o.keys().find(|k| !STEP_KEYS.contains(&k.as_str())) {
            return Err(format!("{sp}: unknown key {k:?} (known: {STEP_KEYS:?})"));
        }
        // Keys a step leaves out keep the previous phase's value.
        if let Some(v) = o.get("policies") {
            state.policies = parse_policies(v, &format!("{sp}.policies"))?;
        }
        if let Some(v) = o.get("namespaceLabels") {
            state.ns_labels = parse_ns_labels(v, &format!("{sp}.namespaceLabels"))?;
        }
        if let Some(v) = o.get("podLabels") {
            state.pod_labels = parse_pod_labels(v, &format!("{sp}.podLabels"))?;
        }
        let expect = parse_expect(
            o.get("expect")
                .ok_or_else(|| format!("{sp}: expect is required in a step"))?,
            &format!("{sp}.expect"),
        )?;
        let mut recreate = Vec::new();
        if let Some(v) = o.get("recreate") {
            for pod in v
                .as_array()
                .ok_or_else(|| format!("{sp}.recreate: a list of pods"))?
            {
                let i = pod
                    .as_str()
                    .and_then(pod_index)
                    .ok_or_else(|| format!("{sp}.recreate: no pod {pod}"))?;
                recreate.push(i);
            }
        }
        let mut held = Vec::new();
        if let Some(v) = o.get("held") {
            for (k, v) in v
                .as_object()
                .ok_or_else(|| format!("{sp}.held: {{\"<from> -> <to> tcp/80\": allow|deny}}"))?
            {
                let cell = parse_connection(k, &format!("{sp}.held"))?;
                held.push((cell, verdict(v, &format!("{sp}.held.{k}"))?));
            }
        }
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("step {}", i + 1), str::to_string);
        phases.push(Phase {
            name,
            state: state.clone(),
            expect,
            recreate,
            held,
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.clone());
    Ok(Case {
        name,
        path: path.to_path_buf(),
        phases,
    })
}

/// The case files named on the command line (a directory: its `*.yaml`, sorted).
fn case_files(args: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| format!("{a}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(format!("{a}: no *.yaml case in it"));
            }
            out.extend(v);
        } else if p.is_file() {
            out.push(p);
        } else {
            return Err(format!("{a}: no such case file or directory"));
        }
    }
    Ok(out)
}

/// Replaces `${x/a}` (that pod's address) and `${vpc}` (the VPC CIDR) in every string.
fn substitute(v: &Value, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let after = &rest[i + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
                let key = &after[..end];
                out.push_str(vars.get(key).ok_or_else(|| {
                    format!("unknown ${{{key}}} in {s:?} (a pod x/a … z/c, or vpc)")
                })?);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

// ---- the lab ----

#[derive(Debug)]
struct LabPod {
    /// `x/a`.
    name: &'static str,
    namespace: &'static str,
    pod: &'static str,
    node: usize,
    netns: String,
    ip: Ipv4Addr,
    /// Its IPv6 address (the `--ipv6` lab).
    ip6: Option<Ipv6Addr>,
    /// Its container ID: `np-<ns>-<pod>`, then `…-<n>` once recreated (a new pod: a new ID,
    /// so a new host veth).
    cid: String,
}

/// Fields drop in order: the servers first, then the cluster (agents, etcd, namespaces).
#[derive(Debug)]
struct MatrixLab {
    servers: Vec<Proc>,
    pods: Vec<LabPod>,
    api: Arc<FakeApiServer>,
    cluster: Cluster,
    /// Policies in the API now: (namespace, name).
    policies: BTreeSet<(String, String)>,
    /// Probe rounds so far (each uses its own block of client source ports).
    rounds: u32,
    /// Held connections opened so far (each binds its own client source port).
    holds: u32,
    /// Pods recreated so far (numbers their new container IDs).
    recreated: u32,
}

fn pod_object(p: &LabPod, node: &str, labels: &Map<String, Value>) -> Value {
    let ports: Vec<Value> = PORTS
        .iter()
        .map(|(_, proto, port)| {
            json!({"name": format!("serve-{port}-{proto}"), "containerPort": port,
                   "protocol": proto.to_uppercase()})
        })
        .collect();
    json!({
        "metadata": {"namespace": p.namespace, "name": p.pod, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": p.ip.to_string(),
                   "podIPs": pod_ips(p)},
    })
}

fn pod_ips(p: &LabPod) -> Vec<Value> {
    let mut v = vec![json!({"ip": p.ip.to_string()})];
    if let Some(ip6) = p.ip6 {
        v.push(json!({"ip": ip6.to_string()}));
    }
    v
}

impl LabPod {
    /// The address the probes use: IPv6 in the `--ipv6` lab.
    fn addr(&self) -> IpAddr {
        match (ipv6(), self.ip6) {
            (true, Some(ip6)) => IpAddr::V6(ip6),
            _ => IpAddr::V4(self.ip),
        }
    }

    /// `addr:port` as a socket address string (`[v6]:port`).
    fn target(&self, port: u16) -> String {
        std::net::SocketAddr::new(self.addr(), port).to_string()
    }
}

fn default_ns_labels(ns: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ns".into(), json!(ns));
    m
}

fn default_pod_labels(pod: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("pod".into(), json!(pod));
    m
}

impl MatrixLab {
    fn build() -> MatrixLab {
        let t0 = Instant::now();
        let cluster = if ipv6() {
            let c = Cluster::new(NODES, &format!("{VPC},{VPC6}"));
            for k in 1..=NODES {
                let out = Command::new("ip")
                    .args(["-n", &c.node(k).ns, "addr", "add"])
                    .arg(format!("{}/64", node_ip6(k)))
                    .args(["dev", "eth0", "nodad"])
                    .status()
                    .expect("ip addr add");
                assert!(out.success(), "node{k}: adding its IPv6 underlay address");
            }
            c
        } else {
            Cluster::new(NODES, VPC)
        };
        let api = FakeApiServer::new();
        let port = fake_kube::serve_http_in(cluster.switch_ns(), SWITCH_IP.into(), api.clone());
        let kc =
            fake_kube::write_kubeconfig(&cluster.dir.join("kubeconfig"), SWITCH_IP.into(), port);
        for ns in NAMESPACES {
            api.put(
                "Namespace",
                json!({"metadata": {"name": ns, "labels": default_ns_labels(ns)}}),
            );
        }
        let mut lab = MatrixLab {
            servers: Vec::new(),
            pods: Vec::new(),
            api,
            cluster,
            policies: BTreeSet::new(),
            rounds: 0,
            holds: 0,
            recreated: 0,
        };
        let args = [
            "--peer-sync-interval",
            "1s",
            "--network-policy=true",
            "--kubeconfig",
            &kc,
            "--metrics-addr",
            METRICS,
        ];
        if ipv6() {
            for k in 1..=NODES {
                let ip6 = node_ip6(k).to_string();
                let mut a = vec!["--node-ip", ip6.as_str()];
                a.extend_from_slice(&args);
                lab.cluster.start_agent(k, &a);
            }
        } else {
            lab.cluster.start_agents(&args);
        }
        // Pod namespaces, then every ADD through the real plugin at once.
        let slots: Vec<(usize, String)> = (0..PODS.len())
            .map(|i| {
                let k = node_of(i);
                let (ns, _) = lab
                    .cluster
                    .new_pod_namespaces(k, 1)
                    .pop()
                    .expect("one namespace");
                (i, ns)
            })
            .collect();
        let c = &lab.cluster;
        let ips = par_map(&slots, PODS.len(), |(i, netns)| {
            let (namespace, pod) = PODS[*i].split_once('/').expect("ns/pod");
            let n = c.node(node_of(*i));
            let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}");
            let path = netns::path(netns);
            let cid = format!("np-{namespace}-{pod}");
            let mut env = cni::env("ADD", &cid, "eth0", &path).to_vec();
            env.push(("CNI_ARGS", &args));
            let out = cni::invoke(
                &n.ns,
                n.conf().to_string().as_bytes(),
                &env,
                Some(CNI_TIMEOUT_S),
            );
            out.expect_ok(&format!("ADD {} on {}", PODS[*i], n.name));
            let ip = out.ip().expect("ADD result has an address");
            let ip6 = result_ip6(&out);
            assert!(
                !ipv6() || ip6.is_some(),
                "ADD {}: no IPv6 address in a dual-stack lab: {}",
                PODS[*i],
                out.stdout
            );
            (ip, ip6)
        });
        for ((i, netns), (ip, ip6)) in slots.into_iter().zip(ips) {
            let (namespace, pod) = PODS[i].split_once('/').expect("ns/pod");
            lab.pods.push(LabPod {
                name: PODS[i],
                namespace,
                pod,
                node: node_of(i),
                netns,
                ip,
                ip6,
                cid: format!("np-{namespace}-{pod}"),
            });
        }
        for p in &lab.pods {
            let node = &lab.cluster.node(p.node).name;
            lab.api
                .put("Pod", pod_object(p, node, &default_pod_labels(p.pod)));
        }
        // IPv4 claims and routes (the check knows IPv4 pools only: the dual-stack lab waits
        // for reachability below instead).
        if !ipv6() {
            if let Err(e) = lab.cluster.wait_consistent(Duration::from_secs(30)) {
                panic!("the nodes' routes did not converge: {e}");
            }
        }
        for p in &lab.pods {
            let server = start_server(&p.netns, p.name).unwrap_or_else(|e| panic!("{e}"));
            lab.servers.push(server);
        }
        if ipv6() {
            // No policy yet: every pod reaches every pod over IPv6 once the IPv6 prefix
            // routes are in (the peers loop installs them from etcd).
            let cells: Vec<(usize, usize, usize)> = (0..PODS.len())
                .flat_map(|f| (0..PODS.len()).map(move |t| (f, t, 0)))
                .collect();
            let t0 = Instant::now();
            loop {
                let ok = lab.probe(&cells);
                if ok.iter().all(|b| *b) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    lab.cluster.dump_logs(30);
                    panic!(
                        "IPv6: {} of {} pod pairs still unreachable after 30 s",
                        ok.iter().filter(|b| !**b).count(),
                        ok.len()
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        // Every node's agent in sync with the API (its first ruleset in the kernel).
        for k in 1..=NODES {
            let ns = lab.cluster.node(k).ns.clone();
            let ok = vpcnet_tests::wait_until(Duration::from_secs(30), || {
                table(&ns).contains("ingress_dispatch")
            });
            if !ok {
                lab.cluster.dump_logs(30);
                panic!("node{k}: no vpcnet-policy table after 30 s");
            }
        }
        eprintln!(
            "lab ready in {:.1} s: {}",
            t0.elapsed().as_secs_f64(),
            lab.pods
                .iter()
                .map(|p| format!("{} node{} {}", p.name, p.node, p.addr()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        lab
    }

    /// `${x/a}` … and `${vpc}`.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = self
            .pods
            .iter()
            .map(|p| (p.name.to_string(), p.addr().to_string()))
            .collect();
        m.insert("vpc".into(), if ipv6() { VPC6 } else { VPC }.into());
        m.insert("hostlen".into(), if ipv6() { "128" } else { "32" }.into());
        m
    }

    /// The API objects become `case`'s: namespace and pod labels (defaults unless the case
    /// says otherwise), policies not in the case deleted, the case's put in order.
    fn reset(&mut self, case: &State) -> Result<(), String> {
        let vars = self.vars();
        let policies: Vec<Value> = case
            .policies
            .iter()
            .map(|p| substitute(p, &vars))
            .collect::<Result<_, _>>()?;
        for ns in NAMESPACES {
            let l = case
                .ns_labels
                .get(ns)
                .cloned()
                .unwrap_or_else(|| default_ns_labels(ns));
            self.api
                .put("Namespace", json!({"metadata": {"name": ns, "labels": l}}));
        }
        for p in &self.pods {
            let l = case
                .pod_labels
                .get(p.name)
                .cloned()
                .unwrap_or_else(|| default_pod_labels(p.pod));
            let node = &self.cluster.node(p.node).name;
            self.api.put("Pod", pod_object(p, node, &l));
        }
        let keep: BTreeSet<(String, String)> = policies.iter().map(policy_key).collect();
        for (ns, name) in std::mem::take(&mut self.policies) {
            if !keep.contains(&(ns.clone(), name.clone())) {
                self.api.remove("NetworkPolicy", &ns, &name);
            }
        }
        for p in policies {
            self.api.put("NetworkPolicy", p);
        }
        self.policies = keep;
        Ok(())
    }

    /// Per node: (policies in its view, applies ok, applies error).
    fn sample(&self) -> Result<Vec<(f64, f64, f64)>, String> {
        (1..=NODES)
            .map(|k| {
                let text = self.cluster.http_get(k, METRICS, "/metrics")?;
                let m = |name: &str| {
                    vpcnet_tests::http::sample(&text, name)
                        .ok_or_else(|| format!("node{k}: no {name} in /metrics"))
                };
                Ok((
                    m("vpcnet_network_policies")?,
                    m("vpcnet_network_policy_applies_total{result=\"ok\"}")?,
                    m("vpcnet_network_policy_applies_total{result=\"error\"}")?,
                ))
            })
            .collect()
    }

    /// Waits until every node's view has the case's policies and its apply counters stood
    /// still for [`SETTLE`]; an apply error is a failure.
    fn settle(&self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let want = self.policies.len() as f64;
        let first = self.sample()?;
        let mut last = first.clone();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let s = self.sample()?;
            if let Some(k) = s.iter().zip(&first).position(|(a, b)| a.2 > b.2) {
                return Err(format!("node{}: the kernel refused a ruleset", k + 1));
            }
            if s != last {
                last = s;
                since = Instant::now();
            } else if last.iter().all(|x| x.0 == want) && since.elapsed() >= SETTLE {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > SETTLE_TIMEOUT {
                return Err(format!(
                    "not settled after {SETTLE_TIMEOUT:?}: per node (policies in view, applies ok, errors) {last:?}, want {want} policies"
                ));
            }
        }
    }

    /// The namespace of probe source `f`: pod `f` of [`PODS`], or node `f - PODS.len() + 1`.
    fn source_ns(&self, f: usize) -> String {
        match self.pods.get(f) {
            Some(p) => p.netns.clone(),
            None => self.cluster.node(f - PODS.len() + 1).ns.clone(),
        }
    }

    /// Probes `cells` ((from, to, port) indexes; from: a pod or a node, see
    /// [`MatrixLab::source_ns`]), all at once: one `netpol-probe probe` per source. Returns
    /// allow? per cell.
    fn probe(&mut self, cells: &[(usize, usize, usize)]) -> Vec<bool> {
        self.rounds += 1;
        let base = 20000 + (self.rounds % 1000) * 40;
        let base = u16::try_from(base).expect("below 60000");
        let target = |to: usize, port: usize| {
            let (_, proto, p) = PORTS[port];
            format!("{proto}:{}", self.pods[to].target(p))
        };
        let by_from: Vec<(String, usize, Vec<String>)> = (0..PODS.len() + NODES)
            .map(|f| {
                let t: Vec<String> = cells
                    .iter()
                    .filter(|c| c.0 == f)
                    .map(|c| target(c.1, c.2))
                    .collect();
                (self.source_ns(f), f, t)
            })
            .filter(|(_, _, t)| !t.is_empty())
            .collect();
        let probe = bin("netpol-probe");
        let replies: Vec<BTreeMap<String, String>> =
            par_map(&by_from, by_from.len(), |(ns, _, t)| {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns])
                    .arg(&probe)
                    .args(["probe", &PROBE_TIMEOUT_MS.to_string(), &base.to_string()])
                    .args(t)
                    .stdin(Stdio::null())
                    .output()
                    .expect("running netpol-probe probe");
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            });
        let replies: BTreeMap<usize, BTreeMap<String, String>> =
            by_from.iter().map(|(_, f, _)| *f).zip(replies).collect();
        cells
            .iter()
            .map(|&(f, to, port)| {
                replies
                    .get(&f)
                    .and_then(|r| r.get(&target(to, port)))
                    .is_some_and(|reply| reply == self.pods[to].name)
            })
            .collect()
    }

    /// The pod objects of `pods` as the API shows a pod scheduled but not running yet: the
    /// same labels and node, no address.
    fn unpublish(&self, pods: &[usize], state: &State) {
        for &i in pods {
            let p = &self.pods[i];
            let l = state
                .pod_labels
                .get(p.name)
                .cloned()
                .unwrap_or_else(|| default_pod_labels(p.pod));
            let mut obj = pod_object(p, &self.cluster.node(p.node).name, &l);
            obj["status"] = json!({"phase": "Pending"});
            self.api.put("Pod", obj);
        }
    }

    /// DEL pod `i` and ADD it again through the real plugin, as a new pod of the same name:
    /// a new network namespace (its server started there) and a new container ID, so a new
    /// host veth; its new address replaces the old one.
    fn recreate(&mut self, i: usize) -> Result<(), String> {
        let k = self.pods[i].node;
        let (new_netns, _) = self
            .cluster
            .new_pod_namespaces(k, 1)
            .pop()
            .ok_or("no namespace")?;
        let p = &self.pods[i];
        let name = p.name;
        let n = self.cluster.node(p.node);
        let node_ns = n.ns.clone();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
            p.namespace, p.pod
        );
        let old_path = netns::path(&p.netns);
        let new_path = netns::path(&new_netns);
        self.recreated += 1;
        let new_cid = format!("np-{}-{}-{}", p.namespace, p.pod, self.recreated);
        let old_cid = p.cid.clone();
        let conf = n.conf().to_string();
        for (verb, cid, path) in [("DEL", &old_cid, &old_path), ("ADD", &new_cid, &new_path)] {
            let mut env = cni::env(verb, cid, "eth0", path).to_vec();
            env.push(("CNI_ARGS", &args));
            let out = cni::invoke(&node_ns, conf.as_bytes(), &env, Some(CNI_TIMEOUT_S));
            if !out.ok() {
                return Err(format!("{verb} {name}: {}", out.msg()));
            }
            if verb == "ADD" {
                let ip = out.ip().ok_or_else(|| format!("ADD {name}: no address"))?;
                self.pods[i].ip = ip;
                self.pods[i].ip6 = result_ip6(&out);
                if ipv6() && self.pods[i].ip6.is_none() {
                    return Err(format!("ADD {name}: no IPv6 address"));
                }
                self.pods[i].cid = new_cid.clone();
                self.pods[i].netns = new_netns.clone();
            }
        }
        Ok(())
    }

    /// Opens a TCP connection for `cell` from its source pod and holds it (`netpol-probe
    /// hold`); Err when it cannot be opened.
    fn hold(&mut self, (f, t, port): Cell) -> Result<Held, String> {
        self.holds += 1;
        let src = u16::try_from(10000 + self.holds % 9000).expect("below 19000");
        let (key, _, p) = PORTS[port];
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.pods[f].netns])
            .arg(bin("netpol-probe"))
            .args([
                "hold",
                &PROBE_TIMEOUT_MS.to_string(),
                &src.to_string(),
                &self.pods[t].target(p),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("netpol-probe hold: {e}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut proc = Proc::default();
        proc.set(child);
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let what = format!("{} -> {} {key}", PODS[f], PODS[t]);
        if line.trim() != format!("open {}", PODS[t]) {
            return Err(format!(
                "held connection {what} could not be opened: {line:?}"
            ));
        }
        Ok(Held {
            cell: (f, t, port),
            _proc: proc,
            stdin,
            stdout,
        })
    }

    fn run_case(&mut self, case: &Case) -> CaseResult {
        let t0 = Instant::now();
        let mut res = CaseResult {
            name: case.name.clone(),
            file: case.path.display().to_string(),
            error: None,
            phases: Vec::new(),
            seconds: 0.0,
        };
        let mut held: Vec<Held> = Vec::new();
        for phase in &case.phases {
            let mut pr = PhaseResult {
                name: phase.name.clone(),
                ..PhaseResult::default()
            };
            let r = self.run_phase(phase, &mut pr, &mut held);
            res.phases.push(pr);
            if let Err(e) = r {
                let at = if phase.name.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", phase.name)
                };
                res.error = Some(format!("{at}{e}"));
                self.cluster.dump_logs(20);
                break;
            }
        }
        res.seconds = t0.elapsed().as_secs_f64();
        res
    }

    /// One phase: open the connections the phase holds (under the rules in force), apply its
    /// state and settle, recreate its pods (probing their first packets), then probe the
    /// whole matrix and the held connections.
    fn run_phase(
        &mut self,
        phase: &Phase,
        res: &mut PhaseResult,
        held: &mut Vec<Held>,
    ) -> Result<(), String> {
        held.clear();
        for &(cell, _) in &phase.held {
            held.push(self.hold(cell)?);
        }
        self.reset(&phase.state)?;
        res.settle_s = self.settle()?.as_secs_f64();
        let expect = |&(f, t, p): &Cell| {
            f >= PODS.len() || expected(&phase.expect, PORTS[p].0, PODS[f], PODS[t])
        };
        if !phase.recreate.is_empty() {
            self.unpublish(&phase.recreate, &phase.state);
            for &i in &phase.recreate {
                self.recreate(i)?;
                // Its server, listening before anything probes it.
                self.servers[i] = start_server(&self.pods[i].netns, self.pods[i].name)?;
            }
            // Right after ADD returned: every cell to or from a recreated pod, once (no
            // second chance: a first packet that got through is the finding).
            let cells: Vec<Cell> = all_cells()
                .into_iter()
                .filter(|c| phase.recreate.contains(&c.0) || phase.recreate.contains(&c.1))
                .collect();
            let allow = self.probe(&cells);
            for (c, a) in cells.iter().zip(allow) {
                if a != expect(c) {
                    res.differences
                        .push(Difference::new("first packets", *c, expect(c), a));
                }
            }
            for &i in &phase.recreate {
                let p = &self.pods[i];
                let l = phase
                    .state
                    .pod_labels
                    .get(p.name)
                    .cloned()
                    .unwrap_or_else(|| default_pod_labels(p.pod));
                let obj = pod_object(p, &self.cluster.node(p.node).name, &l);
                self.api.put("Pod", obj);
            }
            res.settle_s += self.settle()?.as_secs_f64();
        }
        // Every pod to every pod, and every node to each of its own pods (always allowed).
        let mut cells = all_cells();
        for (t, pod) in self.pods.iter().enumerate() {
            cells.extend((0..PORTS.len()).map(|p| (PODS.len() + pod.node - 1, t, p)));
        }
        let mut allow = self.probe(&cells);
        let differing: Vec<usize> = (0..cells.len())
            .filter(|&i| allow[i] != expect(&cells[i]))
            .collect();
        if !differing.is_empty() {
            let again: Vec<Cell> = differing.iter().map(|&i| cells[i]).collect();
            let second = self.probe(&again);
            res.reprobed = differing.len();
            for (&i, a) in differing.iter().zip(second) {
                if a != allow[i] {
                    res.flipped += 1;
                }
                allow[i] = a;
            }
        }
        for (i, c) in cells.iter().enumerate() {
            let (f, t, p) = *c;
            let table = if f < PODS.len() {
                &mut res.observed
            } else {
                &mut res.node_to_pod
            };
            table
                .entry(PORTS[p].0.to_string())
                .or_default()
                .entry(source_name(f).to_string())
                .or_default()
                .insert(PODS[t].to_string(), verdict_str(allow[i]).to_string());
            if allow[i] != expect(c) {
                res.differences
                    .push(Difference::new("matrix", *c, expect(c), allow[i]));
            }
        }
        // The held connections, after the change.
        for (h, &(cell, want)) in held.iter_mut().zip(&phase.held) {
            let got = h.ping();
            let (f, t, p) = cell;
            res.held.push((
                format!("{} -> {} {}", PODS[f], PODS[t], PORTS[p].0),
                verdict_str(got),
            ));
            if got != want {
                res.differences
                    .push(Difference::new("held connection", h.cell, want, got));
            }
        }
        Ok(())
    }
}

/// Starts `netpol-probe serve NAME` in namespace `ns`; returns once it listens.
fn start_server(ns: &str, name: &str) -> Result<Proc, String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin("netpol-probe"))
        .args(["serve", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning netpol-probe serve: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut proc = Proc::default();
    proc.set(child);
    let mut line = String::new();
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    if line.trim() != "ready" {
        return Err(format!("netpol-probe serve in {ns}: {line:?}"));
    }
    Ok(proc)
}

/// A TCP connection held open by `netpol-probe hold` (killed when dropped).
#[derive(Debug)]
struct Held {
    cell: Cell,
    _proc: Proc,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Held {
    /// Sends one byte over the held connection: did the echo come back?
    fn ping(&mut self) -> bool {
        use std::io::Write;
        if writeln!(self.stdin, "ping").is_err() || self.stdin.flush().is_err() {
            return false;
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim() == "ok"
    }
}

/// Every pod-to-pod cell.
fn all_cells() -> Vec<Cell> {
    (0..PODS.len())
        .flat_map(|f| (0..PODS.len()).flat_map(move |t| (0..PORTS.len()).map(move |p| (f, t, p))))
        .collect()
}

/// A probe source's name: a pod (`x/a`) or a node (`node1`).
fn source_name(f: usize) -> &'static str {
    PODS.get(f)
        .copied()
        .unwrap_or_else(|| NODE_NAMES[f - PODS.len()])
}

fn verdict_str(allow: bool) -> &'static str {
    if allow {
        "allow"
    } else {
        "deny"
    }
}

fn policy_key(p: &Value) -> (String, String) {
    let m = &p["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// `nft list table inet vpcnet-policy` in namespace `ns` (empty when absent).
fn table(ns: &str) -> String {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "inet",
            "vpcnet-policy",
        ])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

// ---- results ----

#[derive(Debug)]
struct Difference {
    /// `matrix` (settled), `first packets` (right after a recreated pod's ADD returned),
    /// `held connection` (opened before the change).
    kind: &'static str,
    port: &'static str,
    from: &'static str,
    to: &'static str,
    expected: &'static str,
    observed: &'static str,
}

impl Difference {
    fn new(kind: &'static str, (f, t, p): Cell, expected: bool, observed: bool) -> Difference {
        Difference {
            kind,
            port: PORTS[p].0,
            from: source_name(f),
            to: PODS[t],
            expected: verdict_str(expected),
            observed: verdict_str(observed),
        }
    }
}

/// port → from → to → allow|deny.
type Observed = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

#[derive(Debug, Default)]
struct PhaseResult {
    name: String,
    observed: Observed,
    /// port → node → its own pod → allow|deny (always expected allow).
    node_to_pod: Observed,
    /// The held connections after the change: ("x/b -> x/a tcp/80", allow|deny).
    held: Vec<(String, &'static str)>,
    differences: Vec<Difference>,
    /// Cells that differed on the first probe and were probed again.
    reprobed: usize,
    /// Of those, how many gave another answer the second time.
    flipped: usize,
    settle_s: f64,
}

impl PhaseResult {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "settleSeconds": (self.settle_s * 10.0).round() / 10.0,
            "reprobed": self.reprobed,
            "flipped": self.flipped,
            "differences": self.differences.iter().map(|d| json!({
                "kind": d.kind, "port": d.port, "from": d.from, "to": d.to,
                "expected": d.expected, "observed": d.observed,
            })).collect::<Vec<_>>(),
            "observed": self.observed,
            "nodeToPod": self.node_to_pod,
            "held": self.held.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
        })
    }

    /// The matrices (rows: from, columns: to), ports with identical grids printed together:
    /// `.` allow, `X` deny, `!` after a cell that differs from `expect:`.
    fn print(&self, expect: &Expect) {
        if self.observed.is_empty() {
            return;
        }
        let grid = |port: &str| -> Vec<String> {
            PODS.iter()
                .map(|f| {
                    let cells: Vec<String> = PODS
                        .iter()
                        .map(|t| {
                            let obs = self.observed[port][*f][*t] == "allow";
                            let mark = if obs { "." } else { "X" };
                            let diff = if obs != expected(expect, port, f, t) {
                                "!"
                            } else {
                                " "
                            };
                            format!(" {mark}{diff} ")
                        })
                        .collect();
                    format!("{f:<6}{}", cells.concat())
                })
                .collect()
        };
        let mut groups: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
        for (port, _, _) in PORTS {
            let g = grid(port);
            match groups.iter_mut().find(|(_, og)| *og == g) {
                Some((ports, _)) => ports.push(port),
                None => groups.push((vec![port], g)),
            }
        }
        for (ports, g) in groups {
            println!("{}", ports.join(" "));
            println!(
                "{:<6}{}",
                "",
                PODS.iter().map(|p| format!("{p:<4}")).collect::<String>()
            );
            for row in g {
                println!("{row}");
            }
        }
        let n2p: Vec<&String> = self
            .node_to_pod
            .values()
            .flat_map(|rows| rows.values().flat_map(|r| r.values()))
            .collect();
        println!(
            "node -> its own pods ({} probes): {} allowed",
            n2p.len(),
            n2p.iter().filter(|v| v.as_str() == "allow").count()
        );
        for (k, v) in &self.held {
            println!("held connection {k}: {v}");
        }
        for d in &self.differences {
            println!(
                "  DIFFERENT {}{} {} -> {}: expected {}, observed {}",
                if d.kind == "matrix" {
                    String::new()
                } else {
                    format!("({}) ", d.kind)
                },
                d.port,
                d.from,
                d.to,
                d.expected,
                d.observed
            );
        }
    }
}

#[derive(Debug)]
struct CaseResult {
    name: String,
    file: String,
    /// The case could not run (its objects did not settle, a ruleset was refused, a held
    /// connection could not be opened, a recreated pod's ADD failed).
    error: Option<String>,
    /// The case's own (first), then its steps, as far as they ran.
    phases: Vec<PhaseResult>,
    seconds: f64,
}

impl CaseResult {
    fn differences(&self) -> usize {
        self.phases.iter().map(|p| p.differences.len()).sum()
    }

    fn ok(&self) -> bool {
        self.error.is_none() && self.differences() == 0
    }

    /// The case's own phase at the top level (`observed`, `nodeToPod`, `differences`…),
    /// its steps under `steps`.
    fn json(&self) -> Value {
        let mut v = self
            .phases
            .first()
            .map_or_else(|| json!({}), PhaseResult::json);
        v["name"] = json!(self.name);
        v["file"] = json!(self.file);
        v["ok"] = json!(self.ok());
        v["error"] = json!(self.error);
        v["seconds"] = json!((self.seconds * 10.0).round() / 10.0);
        v["steps"] = json!(self
            .phases
            .iter()
            .skip(1)
            .map(PhaseResult::json)
            .collect::<Vec<_>>());
        v
    }

    fn print(&self, case: &Case) {
        let status = match (&self.error, self.differences()) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, 0) => "ok".to_string(),
            (None, n) => format!("{n} DIFFERENCES"),
        };
        let first = self.phases.first();
        println!(
            "== {} ({}): {status} [{:.1} s, settled in {:.1} s, {} re-probed, {} flipped]",
            self.name,
            self.file,
            self.seconds,
            first.map_or(0.0, |p| p.settle_s),
            self.phases.iter().map(|p| p.reprobed).sum::<usize>(),
            self.phases.iter().map(|p| p.flipped).sum::<usize>(),
        );
        for (phase, r) in case.phases.iter().zip(&self.phases) {
            if !phase.name.is_empty() {
                println!("-- {}", phase.name);
            }
            r.print(&phase.expect);
        }
        println!();
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json_out = args.iter().any(|a| a == "--json");
    let v6 = args.iter().any(|a| a == "--ipv6");
    args.retain(|a| a != "--json" && a != "--ipv6");
    let _ = IPV6.set(v6);
    if args.is_empty() || args.iter().any(|a| a.starts_with('-')) {
        eprintln!("usage: netpol-matrix [--json] [--ipv6] CASE_OR_DIR...");
        return ExitCode::from(2);
    }
    let cases = match case_files(&args).and_then(|files| {
        files
            .iter()
            .map(|f| load_case(f))
            .collect::<Result<Vec<_>, _>>()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netpol-matrix: {e}");
            return ExitCode::from(2);
        }
    };
    let t0 = Instant::now();
    let mut lab = MatrixLab::build();
    let mut results = Vec::new();
    for case in &cases {
        eprintln!("case {} …", case.name);
        let r = lab.run_case(case);
        if !json_out {
            r.print(case);
        }
        results.push(r);
    }
    drop(lab);
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.name.as_str())
        .collect();
    if json_out {
        let v = json!({
            "ok": failed.is_empty(),
            "family": if ipv6() { "ipv6" } else { "ipv4" },
            "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "cases": results.iter().map(CaseResult::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
    } else {
        println!(
            "{} case(s), {} failed{} in {:.1} s",
            results.len(),
            failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" ({})", failed.join(", "))
            },
            t0.elapsed().as_secs_f64()
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
