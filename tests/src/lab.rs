//! One test's world on one node: a private "host" namespace, pod namespaces, a scratch dir,
//! maybe the real `vpcnetd` running in the host namespace, and the real `vpcnet` invoked
//! there the way a runtime does.
//!
//! Nothing here touches the machine's root namespace. Every namespace and file a [`Lab`]
//! makes carries its unique prefix and is removed when the lab is dropped — also when the
//! test panics (then the scratch dir with the logs is kept).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{self, Agent};
use crate::cni::{self, CniOutput};
use crate::netns::{self, Namespaces};
use crate::{scratch_dir, sh, sh_ok, unique_prefix, wait_until};

/// One test's world: a host namespace, pod namespaces, a scratch dir, maybe an agent.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub agent: Option<Agent>,
    pub vpc: String,
    /// The host namespace and the pods (dropped after the agent: see [`Drop`]).
    ns: Namespaces,
}

impl Lab {
    /// A fresh lab whose VPC is `vpc` (e.g. "10.240.0.0/16"). Names start with `vt`.
    pub fn new(vpc: &str) -> Lab {
        let prefix = unique_prefix();
        let dir = scratch_dir(&prefix);
        let mut lab = Lab {
            prefix,
            dir,
            agent: None,
            vpc: vpc.to_string(),
            ns: Namespaces::default(),
        };
        let host = lab.host();
        lab.ns.add(&host);
        sh(&format!("ip -n {host} link set lo up"));
        lab
    }

    pub fn host(&self) -> String {
        format!("{}h", self.prefix)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("vpcnetd.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Creates pod namespace `i` (idempotent) and returns its name.
    pub fn pod(&mut self, i: usize) -> String {
        let name = format!("{}p{i}", self.prefix);
        if !self.ns.contains(&name) {
            self.ns.add(&name);
        }
        name
    }

    /// Creates pod namespaces for all `ids` with one `ip -batch` (much faster than one `ip`
    /// per namespace), registered for cleanup like [`Lab::pod`]. Returns their names.
    pub fn pods(&mut self, ids: impl IntoIterator<Item = usize>) -> Vec<String> {
        let names: Vec<String> = ids
            .into_iter()
            .map(|i| format!("{}p{i}", self.prefix))
            .filter(|n| !self.ns.contains(n))
            .collect();
        self.ns.add_batch(names.iter().map(String::as_str));
        names
    }

    /// Deletes pod namespace `name` (as the runtime does after DEL).
    pub fn remove_pod(&mut self, name: &str) {
        self.ns.remove(name);
    }

    pub fn netns_path(ns: &str) -> String {
        netns::path(ns)
    }

    /// The netconf tests use, pointing at this lab's agent and log.
    pub fn conf(&self) -> Value {
        cni::netconf("vpctest", &self.socket(), &self.dir.join("plugin.log"))
    }

    /// The flags the lab's own agent runs with: its socket, state dir, VPC and node name (for
    /// [`Lab::start_agent`], or a second process on the same state).
    pub fn agent_flags(&self) -> Vec<String> {
        vec![
            "--socket".to_string(),
            self.socket().display().to_string(),
            "--state-dir".to_string(),
            self.state_dir().display().to_string(),
            "--vpc-cidr".to_string(),
            self.vpc.clone(),
            "--node-name".to_string(),
            format!("{}-node", self.prefix),
        ]
    }

    /// Starts vpcnetd in the host namespace with [`Lab::agent_flags`] plus `extra` flags, and
    /// waits until it serves.
    pub fn start_agent(&mut self, extra: &[&str]) -> &mut Agent {
        let mut args = self.agent_flags();
        args.extend(extra.iter().map(|s| s.to_string()));
        let agent = Agent::start(
            &self.host(),
            self.socket(),
            self.dir.join("vpcnetd.log"),
            args,
        );
        self.agent.insert(agent)
    }

    /// Pid of the running agent (for `kill -9` from another thread while the lab is shared).
    pub fn agent_pid(&self) -> u32 {
        self.agent
            .as_ref()
            .and_then(Agent::pid)
            .expect("agent running")
    }

    /// Invokes the real plugin in the host namespace.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        ifname: &str,
        netns: &str,
        conf: &Value,
    ) -> CniOutput {
        self.cni_env(conf, &cni::env(command, container_id, ifname, netns))
    }

    /// ADD for pod namespace `ns` with container ID `cid`, ifname eth0.
    pub fn add(&self, cid: &str, ns: &str) -> CniOutput {
        self.cni("ADD", cid, "eth0", &Self::netns_path(ns), &self.conf())
    }

    /// DEL for `cid`/eth0 (netns given).
    pub fn del(&self, cid: &str, ns: &str) -> CniOutput {
        self.cni("DEL", cid, "eth0", &Self::netns_path(ns), &self.conf())
    }

    /// Invokes the plugin with exactly these env vars (plus PATH) and `stdin` as netconf.
    pub fn cni_env(&self, conf: &Value, env: &[(&str, &str)]) -> CniOutput {
        self.cni_raw(conf.to_string().as_bytes(), env)
    }

    pub fn cni_raw(&self, stdin: &[u8], env: &[(&str, &str)]) -> CniOutput {
        cni::cni_in(&self.host(), stdin, env)
    }

    /// `ip -n <ns> <args>` output.
    pub fn ip(&self, ns: &str, args: &str) -> String {
        sh(&format!("ip -n {ns} {args}"))
    }

    /// Interface names inside namespace `ns` (e.g. `["lo", "eth0"]`).
    pub fn links_in(&self, ns: &str) -> Vec<String> {
        self.ip(ns, "-o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Host-side links named like ours (`vpc` + 11 hex digits).
    pub fn host_veths(&self) -> Vec<String> {
        self.links_in(&self.host())
            .into_iter()
            .filter(|n| n.starts_with("vpc") && n.len() == 14)
            .collect()
    }

    /// The IPv4 addresses (without length) on `ifname` inside namespace `ns`.
    pub fn addrs_in(&self, ns: &str, ifname: &str) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-4", "-o", "addr", "show", "dev", ifname])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect()
    }

    /// Every protocol-171 route of the host namespace (pods' and prefixes').
    pub fn proto_routes(&self) -> Vec<String> {
        self.ip(&self.host(), "-4 route show proto 171")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The pods' host routes (`IP dev vpc… scope link`, protocol 171), as `ip route` lines.
    /// The agent's prefix routes (unreachable own prefixes, peers' `via` routes) also carry
    /// protocol 171 and are left out: see [`Lab::prefix_routes`].
    pub fn host_routes(&self) -> Vec<String> {
        self.proto_routes()
            .into_iter()
            .filter(|l| !is_prefix_route(l))
            .collect()
    }

    /// The agent's prefix routes with protocol 171 (unreachable own prefixes, peers' routes).
    pub fn prefix_routes(&self) -> Vec<String> {
        self.proto_routes()
            .into_iter()
            .filter(|l| is_prefix_route(l))
            .collect()
    }

    pub fn ping(&self, from_ns: &str, to: &str) -> bool {
        sh_ok(&format!("ip netns exec {from_ns} ping -c1 -W2 -q {to}"))
    }

    /// `vpcnetd status --json` from the running agent.
    pub fn status(&self) -> Value {
        agent::try_status(&self.host(), &self.socket()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `vpcnetd status --json`, retried until the agent answers (e.g. right after a restart).
    pub fn status_when_up(&self) -> Value {
        agent::status_when_up(&self.host(), &self.socket(), Duration::from_secs(10))
    }

    /// Polls `f` every 50 ms until it returns true or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, f: impl FnMut() -> bool) -> bool {
        wait_until(timeout, f)
    }
}

/// An `ip route` line of the agent's prefix routes (unreachable own prefix, peer's `via`).
fn is_prefix_route(line: &str) -> bool {
    line.starts_with("unreachable") || line.contains(" via ")
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The agent first (it holds the namespace's links); the namespaces go when `ns` drops.
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "lab {} failed; agent log kept in {}",
                self.prefix,
                self.dir.display()
            );
        }
    }
}
