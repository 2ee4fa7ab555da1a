//! The multi-node lab, built from the one-node pieces ([`crate::netns`], [`crate::etcd`],
//! [`crate::agent`], [`crate::cni`]): a "VPC switch" namespace with a Linux bridge, N node namespaces wired
//! to it, one real etcd on the switch, one real `vpcnetd` per node on the etcd datastore, and
//! pods per node wired through the real `vpcnet` binary.
//!
//! ```text
//!            <prefix>sw  (br0 10.199.0.1/24, etcd on http://10.199.0.1:2379)
//!        ┌────────┬──────────┴──┬───────────────┐
//!   <prefix>n1  <prefix>n2  <prefix>n3 …   <prefix>out (10.199.0.100, optional)
//!   10.199.0.11 10.199.0.12 10.199.0.13
//!   vpcnetd     vpcnetd     vpcnetd
//!   pods <prefix>n1p1 … (VPC addresses, e.g. 10.240.0.0/16)
//! ```
//!
//! The underlay (10.199.0.0/24) lies outside the VPC, so pod traffic to it is what SNAT
//! masquerades. Every node has a default route via the switch's address. Nothing touches the
//! machine's root namespace; every namespace, process and file is removed when the
//! [`Cluster`] is dropped, also when the test panics (then the logs are kept and their tails
//! printed).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{self, Agent};
use crate::cni::{self, CniOutput};
use crate::etcd::Etcd;
use crate::netns::{self, Namespaces};
use crate::{par_map, scratch_dir, sh, sh_ok, tail, unique_prefix};

/// The switch's address on the underlay: nodes' default gateway and etcd's client address.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
/// The "outside" namespace's address (see [`Cluster::add_outside`]).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 100);
/// etcd's client port on [`SWITCH_IP`].
pub const ETCD_PORT: u16 = 2379;
/// etcd's client URL, reachable from every node.
pub const ETCD_URL: &str = "http://10.199.0.1:2379";
/// Longest any single plugin invocation may take before the test calls it a hang.
pub const CNI_TIMEOUT_S: u32 = 30;

/// Node `k`'s underlay address: 10.199.0.1k (k = 1..=9), then 10.199.0.(10+k).
pub fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        199,
        0,
        u8::try_from(10 + k).expect("node number below 245"),
    )
}

/// One node: its namespace, its agent (if started) and its files.
#[derive(Debug)]
pub struct ClusterNode {
    /// 1-based.
    pub k: usize,
    /// Name in the datastore: `node<k>`.
    pub name: String,
    /// Network namespace name: `<prefix>n<k>`.
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub agent: Option<Agent>,
    /// Bumped by [`Cluster::reset_node_state`]: a fresh state directory.
    generation: u32,
}

impl ClusterNode {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("vpcnetd.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(format!("state{}", self.generation))
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("vpcnetd.log")
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
    /// The netconf pointing at this node's agent.
    pub fn conf(&self) -> Value {
        cni::netconf("vpcnet", &self.socket(), &self.dir.join("plugin.log"))
    }
}

/// A pod that went through ADD.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Node number (1-based).
    pub node: usize,
    pub ns: String,
    pub cid: String,
    pub ip: Ipv4Addr,
}

/// One prefix claim as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdClaim {
    pub key: String,
    pub prefix: String,
    pub node: String,
    pub node_ip: Option<Ipv4Addr>,
    /// Lease ID (0 = none).
    pub lease: i64,
    /// etcd's create_revision of the key: unchanged = the claim was never deleted/re-made.
    pub create_revision: i64,
}

/// One route of ours (`ip route show proto 171`), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurRoute {
    /// `10.240.0.16/28`, or `10.240.0.3` for a pod's /32.
    pub dst: String,
    /// `unreachable` / `blackhole` / `prohibit` (local prefix), else `unicast`.
    pub kind: String,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    /// `metric N` (`None`: none shown, i.e. 0 for IPv4).
    pub metric: Option<u32>,
}

impl OurRoute {
    pub fn is_local_prefix(&self) -> bool {
        matches!(self.kind.as_str(), "unreachable" | "blackhole" | "prohibit")
    }
}

/// The multi-node world. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    pub vpc: String,
    pub nodes: Vec<ClusterNode>,
    /// Flags every agent gets on top of the cluster's own (datastore, node, VPC).
    pub agent_flags: Vec<String>,
    /// Where [`Cluster::check_consistency`] reads claims: `<--etcd-prefix>/claims/`.
    pub claims_key: String,
    /// On the switch, at [`ETCD_URL`]; data and log in `<dir>/etcd`.
    etcd: Etcd,
    switch: String,
    /// Switch, nodes, outside and pods (dropped after agents and etcd: see [`Drop`]).
    ns: Namespaces,
    pods_seq: BTreeMap<usize, usize>,
}

impl Cluster {
    /// Switch + `nodes` nodes + etcd (running and healthy); no agents yet.
    pub fn new(nodes: usize, vpc: &str) -> Cluster {
        assert!((1..=200).contains(&nodes), "1..=200 nodes");
        let prefix = unique_prefix();
        let dir = scratch_dir(&prefix);
        let mut c = Cluster {
            switch: format!("{prefix}sw"),
            etcd: Etcd::stopped_at(
                &format!("{prefix}sw"),
                dir.join("etcd"),
                SWITCH_IP,
                ETCD_PORT,
                2380,
            ),
            prefix,
            dir,
            vpc: vpc.to_string(),
            nodes: Vec::new(),
            agent_flags: Vec::new(),
            claims_key: "/vpcnet/claims/".to_string(),
            ns: Namespaces::default(),
            pods_seq: BTreeMap::new(),
        };
        // From here on, a panic drops `c`, which removes whatever was made so far.
        let sw = c.switch.clone();
        c.ns.add(&sw);
        sh(&format!(
            "ip -n {sw} link set lo up && \
             ip -n {sw} link add br0 type bridge && \
             ip -n {sw} addr add {SWITCH_IP}/24 dev br0 && ip -n {sw} link set br0 up"
        ));
        for k in 1..=nodes {
            let node = ClusterNode {
                k,
                name: format!("node{k}"),
                ns: format!("{}n{k}", c.prefix),
                ip: node_ip(k),
                dir: c.dir.join(format!("n{k}")),
                agent: None,
                generation: 0,
            };
            std::fs::create_dir_all(&node.dir).expect("node dir");
            let ns = node.ns.clone();
            let ip = node.ip;
            c.nodes.push(node);
            c.attach(&ns, &format!("n{k}"), ip, true);
        }
        assert_eq!(c.etcd.endpoint(), ETCD_URL);
        c.start_etcd();
        c
    }

    /// Creates namespace `ns` and plugs it into the switch: `eth0` (address `ip`/24) in `ns`,
    /// `port` enslaved to the bridge in the switch namespace.
    fn attach(&mut self, ns: &str, port: &str, ip: Ipv4Addr, default_route: bool) {
        self.ns.add(ns);
        let sw = &self.switch;
        let route = if default_route {
            format!(" && ip -n {ns} route add default via {SWITCH_IP}")
        } else {
            String::new()
        };
        sh(&format!(
            "ip -n {ns} link set lo up && \
             ip -n {sw} link add {port} type veth peer name eth0 netns {ns} && \
             ip -n {sw} link set {port} master br0 up && \
             ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up{route}"
        ));
    }

    /// Adds namespace `<prefix>out` on the switch with [`OUTSIDE_IP`] (no route to the VPC:
    /// only SNAT'd traffic can be answered). Returns its name.
    pub fn add_outside(&mut self) -> String {
        let ns = format!("{}out", self.prefix);
        self.attach(&ns, "out", OUTSIDE_IP, false);
        ns
    }

    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    pub fn node(&self, k: usize) -> &ClusterNode {
        &self.nodes[k - 1]
    }

    fn node_mut(&mut self, k: usize) -> &mut ClusterNode {
        &mut self.nodes[k - 1]
    }

    // ---- etcd ----

    /// Starts etcd in the switch namespace (same data directory every time) and waits until
    /// it reports healthy.
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.pid().is_none(), "etcd already running");
        self.etcd.launch();
    }

    /// Kills etcd (SIGKILL; the data directory stays for [`Cluster::start_etcd`]).
    pub fn stop_etcd(&mut self) {
        self.etcd.stop();
    }

    pub fn etcd_pid(&self) -> Option<u32> {
        self.etcd.pid()
    }

    /// etcd's `/health` (asked from inside the switch namespace) says healthy.
    pub fn etcd_healthy(&self) -> bool {
        self.etcd.healthy()
    }

    /// Every key under `prefix` in etcd: (key, value, lease, create_revision).
    pub fn etcd_range(&self, prefix: &str) -> Result<Vec<(String, String, i64, i64)>, String> {
        self.etcd.range(prefix)
    }

    /// `put key value` in etcd (no lease): e.g. another node's claim, written by hand.
    pub fn etcd_put(&self, key: &str, value: &str) -> Result<(), String> {
        self.etcd.put(key, value)
    }

    /// `del key` in etcd; how many keys went.
    pub fn etcd_delete(&self, key: &str) -> Result<u64, String> {
        self.etcd.delete(key)
    }

    /// `GET path` from the HTTP endpoint (`--metrics-addr`) node `k`'s agent serves at `addr`
    /// inside its namespace; the body of a 200 reply.
    pub fn http_get(&self, k: usize, addr: &str, path: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let ns = self.node(k).ns.clone();
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let path = path.to_string();
        crate::netns::in_netns(Some(&ns), move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(|e| e.to_string())?;
            let (head, body) = out
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("no header end: {out:?}"))?;
            if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                return Err(format!("GET {path}: {head}"));
            }
            Ok(body.to_string())
        })
    }

    /// The value of metric sample `name` (labels included, exactly as printed) that node
    /// `k`'s agent serves at `addr`.
    pub fn metric(&self, k: usize, addr: &str, name: &str) -> Result<f64, String> {
        let text = self.http_get(k, addr, "/metrics")?;
        crate::http::sample(&text, name)
            .ok_or_else(|| format!("no sample {name} in node{k}'s /metrics"))
    }

    /// The prefix claims in etcd under [`Cluster::claims_key`] (default `/vpcnet/claims/`).
    pub fn claims(&self) -> Result<Vec<EtcdClaim>, String> {
        self.claims_under(&self.claims_key)
    }

    /// The prefix claims under `key_prefix` (e.g. `/race3/claims/` for `--etcd-prefix /race3`).
    /// The prefix comes from the value's `prefix`, else from the key (`10.240.0.16/28` or
    /// `10.240.0.16-28`).
    pub fn claims_under(&self, key_prefix: &str) -> Result<Vec<EtcdClaim>, String> {
        let kvs = self.etcd_range(key_prefix)?;
        kvs.into_iter()
            .map(|(key, value, lease, create_revision)| {
                let v: Value = serde_json::from_str(&value)
                    .map_err(|e| format!("claim {key}: value not JSON ({e}): {value}"))?;
                let prefix = v
                    .get("prefix")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        key.trim_start_matches(key_prefix)
                            .replace(['-', '_'], "/")
                            .to_string()
                    });
                let node = v
                    .get("node")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("claim {key} without node: {value}"))?
                    .to_string();
                let node_ip = v
                    .get("nodeIp")
                    .or_else(|| v.get("node_ip"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok());
                Ok(EtcdClaim {
                    key,
                    prefix,
                    node,
                    node_ip,
                    lease,
                    create_revision,
                })
            })
            .collect()
    }

    /// Prefixes node `name` holds in etcd, sorted.
    pub fn claims_of(claims: &[EtcdClaim], name: &str) -> Vec<String> {
        let mut v: Vec<String> = claims
            .iter()
            .filter(|c| c.node == name)
            .map(|c| c.prefix.clone())
            .collect();
        v.sort();
        v
    }

    // ---- agents ----

    fn agent_args(&self, k: usize, extra: &[&str]) -> Vec<String> {
        let n = self.node(k);
        let mut args: Vec<String> = [
            "--socket",
            &n.socket().display().to_string(),
            "--state-dir",
            &n.state_dir().display().to_string(),
            "--vpc-cidr",
            &self.vpc,
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            ETCD_URL,
            "--node-name",
            &n.name,
            "--node-ip",
            &n.ip.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.agent_flags.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn new_agent(&self, k: usize, extra: &[&str]) -> Agent {
        let n = self.node(k);
        Agent::new(&n.ns, n.socket(), n.log(), self.agent_args(k, extra))
    }

    /// Starts node `k`'s agent with the cluster's flags plus `extra`; waits until it serves.
    pub fn start_agent(&mut self, k: usize, extra: &[&str]) {
        assert!(self.node(k).agent.is_none(), "node{k}'s agent is running");
        let mut a = self.new_agent(k, extra);
        a.spawn();
        self.node_mut(k).agent = Some(a);
    }

    /// Starts every node's agent at the same moment (one thread each, released together);
    /// waits until all serve.
    pub fn start_agents(&mut self, extra: &[&str]) {
        let ks: Vec<usize> = (1..=self.nodes.len())
            .filter(|&k| self.node(k).agent.is_none())
            .collect();
        let agents: Vec<Agent> = ks.iter().map(|&k| self.new_agent(k, extra)).collect();
        let barrier = std::sync::Barrier::new(agents.len());
        let started: Vec<Agent> = std::thread::scope(|s| {
            let hs: Vec<_> = agents
                .into_iter()
                .map(|mut a| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        a.spawn();
                        a
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("agent start panicked"))
                .collect()
        });
        for (k, a) in ks.into_iter().zip(started) {
            self.node_mut(k).agent = Some(a);
        }
    }

    /// Node `k`'s agent replaced the way a DaemonSet RollingUpdate does it: SIGTERM, the old
    /// process exits cleanly (else panic), `in_gap` runs with no agent, then `exe` starts with
    /// the same flags and state; waits until it serves. Returns how long no agent was running
    /// (from the old one's exit until the new one serves).
    pub fn roll_agent(
        &mut self,
        k: usize,
        exe: &std::path::Path,
        in_gap: impl FnOnce(),
    ) -> Duration {
        let a = self.node_mut(k).agent.as_mut().expect("agent was started");
        a.roll(exe.to_path_buf(), in_gap, Duration::from_secs(25))
    }

    /// kill -9 of node `k`'s agent (its socket file and state stay, as after a crash).
    pub fn kill_agent(&mut self, k: usize) {
        if let Some(mut a) = self.node_mut(k).agent.take() {
            a.kill();
        }
    }

    /// kill -9, then start again with the same flags and state; waits until it serves.
    pub fn restart_agent(&mut self, k: usize) {
        let n = self.node_mut(k);
        let a = n.agent.as_mut().expect("agent was started");
        a.restart();
    }

    /// Kills node `k`'s agent and gives it a fresh, empty state directory (a new node).
    pub fn reset_node_state(&mut self, k: usize) {
        self.kill_agent(k);
        self.node_mut(k).generation += 1;
    }

    /// `vpcnetd status --json` of node `k` (Err when it does not answer).
    pub fn try_status(&self, k: usize) -> Result<Value, String> {
        let n = self.node(k);
        agent::try_status(&n.ns, &n.socket()).map_err(|e| format!("node{k} {e}"))
    }

    #[track_caller]
    pub fn status(&self, k: usize) -> Value {
        self.try_status(k).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The prefixes node `k`'s pool holds (from its status), sorted.
    pub fn pool_prefixes(&self, k: usize) -> Result<Vec<String>, String> {
        let st = self.try_status(k)?;
        let mut v: Vec<String> = st
            .get("prefixes")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("node{k} status without prefixes: {st}"))?
            .iter()
            .filter_map(|p| p.get("prefix").and_then(Value::as_str).map(str::to_string))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Node `k`'s `degraded` list from its status.
    pub fn degraded(&self, k: usize) -> Result<Vec<String>, String> {
        let st = self.try_status(k)?;
        Ok(st
            .get("degraded")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    // ---- pods ----

    /// Invokes the real plugin inside node `k`'s namespace; killed after [`CNI_TIMEOUT_S`].
    pub fn cni(&self, k: usize, command: &str, cid: &str, netns: &str) -> CniOutput {
        let n = self.node(k);
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={cid}");
        let mut env = cni::env(command, cid, "eth0", netns).to_vec();
        env.push(("CNI_ARGS", &args));
        cni::invoke(
            &n.ns,
            n.conf().to_string().as_bytes(),
            &env,
            Some(CNI_TIMEOUT_S),
        )
    }

    /// Creates `count` new pod namespaces on node `k` (`<prefix>n<k>p<i>`, one `ip -batch`).
    /// Returns (namespace, container ID) pairs; nothing is ADDed yet.
    pub fn new_pod_namespaces(&mut self, k: usize, count: usize) -> Vec<(String, String)> {
        let first = *self.pods_seq.get(&k).unwrap_or(&0) + 1;
        self.pods_seq.insert(k, first + count - 1);
        let v: Vec<(String, String)> = (first..first + count)
            .map(|i| (format!("{}n{k}p{i}", self.prefix), format!("n{k}-c{i}")))
            .collect();
        self.ns.add_batch(v.iter().map(|(ns, _)| ns.as_str()));
        v
    }

    /// `count` new pods on node `k`, ADDed `threads` at a time; panics on any failed ADD.
    pub fn add_pods(&mut self, k: usize, count: usize, threads: usize) -> Vec<Pod> {
        let nss = self.new_pod_namespaces(k, count);
        let outs = par_map(&nss, threads, |(ns, cid)| {
            self.cni(k, "ADD", cid, &netns::path(ns))
        });
        nss.into_iter()
            .zip(outs)
            .map(|((ns, cid), out)| {
                out.expect_ok(&format!("ADD {cid} on node{k}"));
                Pod {
                    node: k,
                    ns,
                    cid,
                    ip: out.ip().expect("ADD result has an address"),
                }
            })
            .collect()
    }

    /// ADD one pod on node `k` in a new namespace; returns the namespace, ID and raw output.
    pub fn try_add_pod(&mut self, k: usize) -> (String, String, CniOutput) {
        let (ns, cid) = self.new_pod_namespaces(k, 1).pop().expect("one namespace");
        let out = self.cni(k, "ADD", &cid, &netns::path(&ns));
        (ns, cid, out)
    }

    // ---- kernel state ----

    /// Node `k`'s routes with protocol 171, parsed.
    pub fn routes(&self, k: usize) -> Vec<OurRoute> {
        sh(&format!(
            "ip -n {} -4 route show proto 171",
            self.node(k).ns
        ))
        .lines()
        .filter_map(parse_route)
        .collect()
    }

    /// Checks that etcd, every running agent's pool and every node's kernel routes agree:
    /// each node's pool = its claims = its `unreachable` prefixes; every other claim is routed
    /// `via` its owner's node IP; no prefix is local on two nodes; claims carry the right
    /// node IP. `dead` nodes (agent not running) are skipped as route holders, and their
    /// claims must be absent. Err names the first disagreement.
    pub fn check_consistency(&self) -> Result<(), String> {
        let claims = self.claims()?;
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for c in &claims {
            if let Some(prev) = owners.insert(&c.prefix, &c.node) {
                return Err(format!("{} claimed twice ({prev}, {})", c.prefix, c.node));
            }
            if let Some(n) = self.nodes.iter().find(|n| n.name == c.node) {
                if c.node_ip != Some(n.ip) {
                    return Err(format!("claim {c:?}: node IP is not {}", n.ip));
                }
            }
        }
        let mut local_on: BTreeMap<String, usize> = BTreeMap::new();
        for n in &self.nodes {
            let running = n.agent.is_some();
            let mine = Self::claims_of(&claims, &n.name);
            if !running {
                if !mine.is_empty() {
                    return Err(format!("{} is down but still claims {mine:?}", n.name));
                }
                continue;
            }
            let pool = self.pool_prefixes(n.k)?;
            if pool != mine {
                return Err(format!(
                    "{}: pool holds {pool:?}, etcd says {mine:?}",
                    n.name
                ));
            }
            let routes = self.routes(n.k);
            let mut unreachable: Vec<String> = routes
                .iter()
                .filter(|r| r.is_local_prefix())
                .map(|r| r.dst.clone())
                .collect();
            unreachable.sort();
            if unreachable != mine {
                return Err(format!(
                    "{}: unreachable routes {unreachable:?}, claims {mine:?}",
                    n.name
                ));
            }
            for p in &unreachable {
                if let Some(other) = local_on.insert(p.clone(), n.k) {
                    return Err(format!(
                        "{p} unreachable-local on node{other} and {}",
                        n.name
                    ));
                }
            }
            for c in claims.iter().filter(|c| c.node != n.name) {
                let Some(r) = routes.iter().find(|r| r.dst == c.prefix) else {
                    return Err(format!(
                        "{}: no route to {} (claimed by {})",
                        n.name, c.prefix, c.node
                    ));
                };
                if r.via != c.node_ip || r.via.is_none() {
                    return Err(format!(
                        "{}: {} routed {r:?}, owner {} at {:?}",
                        n.name, c.prefix, c.node, c.node_ip
                    ));
                }
            }
            // Prefix routes (not /32 pod routes) must all be backed by a claim.
            for r in routes.iter().filter(|r| r.dst.contains('/')) {
                if !owners.contains_key(r.dst.as_str()) {
                    return Err(format!("{}: stale route {r:?} (no claim)", n.name));
                }
            }
        }
        Ok(())
    }

    /// Polls [`Cluster::check_consistency`] until it holds or `timeout` passes; returns the
    /// time it took, or the last disagreement.
    pub fn wait_consistent(&self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            match self.check_consistency() {
                Ok(()) => return Ok(t0.elapsed()),
                Err(e) if t0.elapsed() >= timeout => {
                    return Err(format!("not consistent after {timeout:?}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    // ---- traffic ----

    /// One ping (two tries, 2 s each) from namespace `from` to `to`.
    pub fn ping(from: &str, to: Ipv4Addr) -> bool {
        let cmd = format!("nsenter --net={} ping -c1 -W2 -q {to}", netns::path(from));
        sh_ok(&cmd) || sh_ok(&cmd)
    }

    /// Pings every (namespace, address) pair, `threads` at a time; returns the failures.
    pub fn ping_all(pairs: &[(String, Ipv4Addr)], threads: usize) -> Vec<(String, Ipv4Addr)> {
        let ok = par_map(pairs, threads, |(ns, ip)| Self::ping(ns, *ip));
        pairs
            .iter()
            .zip(ok)
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Full-mesh (or sampled) reachability: pairs (from pod, to pod) over `pods`.
    pub fn ping_pods(pairs: &[(&Pod, &Pod)], threads: usize) -> Vec<String> {
        let v: Vec<(String, Ipv4Addr)> = pairs.iter().map(|(a, b)| (a.ns.clone(), b.ip)).collect();
        let failed = Self::ping_all(&v, threads);
        failed
            .iter()
            .map(|(ns, ip)| {
                let from = pairs
                    .iter()
                    .find(|(a, _)| &a.ns == ns)
                    .map(|(a, _)| format!("{}@node{} {}", a.cid, a.node, a.ip))
                    .unwrap_or_default();
                format!("{from} -> {ip}")
            })
            .collect()
    }

    /// Prints every log's tail (used on failure).
    pub fn dump_logs(&self, lines: usize) {
        eprintln!(
            "---- etcd ({}) ----\n{}",
            self.etcd.log().display(),
            tail(&self.etcd.log(), lines)
        );
        for n in &self.nodes {
            eprintln!(
                "---- {} vpcnetd ({}) ----\n{}",
                n.name,
                n.log().display(),
                tail(&n.log(), lines)
            );
            if let Ok(r) = Command::new("ip")
                .args(["-n", &n.ns, "-4", "route", "show", "proto", "171"])
                .output()
            {
                let r = String::from_utf8_lossy(&r.stdout);
                let prefixes: Vec<&str> = r.lines().filter(|l| l.contains('/')).collect();
                eprintln!("{} prefix routes: {prefixes:#?}", n.name);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.dump_logs(25);
        }
        for n in &mut self.nodes {
            if let Some(mut a) = n.agent.take() {
                a.kill();
            }
        }
        self.stop_etcd();
        // The namespaces (pods and outside, nodes, switch: newest first) go when `ns` drops.
        if failed {
            eprintln!(
                "cluster {} failed; logs kept in {}",
                self.prefix,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `unreachable 10.240.0.0/28 proto 171 metric 1024`, `10.240.0.16/28 via 10.199.0.12 dev eth0
/// proto 171`, `10.240.0.3 dev vpc0123456789a scope link proto 171`.
pub fn parse_route(line: &str) -> Option<OurRoute> {
    let mut w = line.split_whitespace().peekable();
    let first = w.next()?;
    let (kind, dst) = if matches!(
        first,
        "unreachable" | "blackhole" | "prohibit" | "throw" | "local" | "broadcast"
    ) {
        (first.to_string(), w.next()?.to_string())
    } else {
        ("unicast".to_string(), first.to_string())
    };
    let words: Vec<&str> = w.collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|x| *x == k)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    Some(OurRoute {
        dst: dst.trim_end_matches("/32").to_string(),
        kind,
        via: after("via").and_then(|s| s.parse().ok()),
        dev: after("dev"),
        metric: after("metric").and_then(|s| s.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let r = parse_route("unreachable 10.240.0.0/28 proto 171 metric 1024").expect("route");
        assert!(r.is_local_prefix());
        assert_eq!(r.dst, "10.240.0.0/28");
        assert_eq!(r.metric, Some(1024));
        let r = parse_route("10.240.0.16/28 via 10.199.0.12 dev eth0 proto 171").expect("route");
        assert_eq!(r.via, Some(Ipv4Addr::new(10, 199, 0, 12)));
        assert!(!r.is_local_prefix());
        assert_eq!(r.metric, None);
        let r = parse_route("10.240.0.3 dev vpc0123456789a proto 171 scope link").expect("r");
        assert_eq!(r.dev.as_deref(), Some("vpc0123456789a"));
        assert_eq!(r.dst, "10.240.0.3");
    }
}
