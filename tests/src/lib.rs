//! Fixtures for the integration tests: a private "host" network namespace per test, pod
//! namespaces, the real `vpcnetd` running in the host namespace, and the real `vpcnet` binary
//! invoked the way a runtime does (CNI_* env + netconf on stdin).
//!
//! Nothing here touches the machine's root namespace. Every namespace and file a [`Lab`]
//! makes carries its unique prefix and is removed when the lab is dropped — also when the
//! test panics.

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where the workspace's binaries are (built by `cargo build --workspace` first).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VPCNET_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs a command, returns stdout; panics with its stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd}: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returns whether it succeeded (for pings and negative checks).
pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates network namespace `name` (the caller registers it for cleanup) as
/// [`add_netns_batch`] does.
pub fn add_netns(name: &str) {
    add_netns_batch([name]);
}

/// What a new namespace would have inherited on another machine: a new network namespace
/// takes its IPv4 settings from the machine's root namespace (`devconf_inherit_init_net=0`),
/// so the suite must pass whatever those are. `VPCNET_TEST_INHERIT="ip_forward=1
/// conf/all/rp_filter=1"` writes these `net/ipv4/…` sysctls into every namespace the fixtures
/// create, right after creating it: the suite can be run as if on a forwarding host without
/// touching this machine's own root namespace.
fn apply_inherited_sysctls(names: &[String]) {
    let Ok(spec) = std::env::var("VPCNET_TEST_INHERIT") else {
        return;
    };
    for name in names {
        for kv in spec.split_whitespace() {
            let (key, value) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("VPCNET_TEST_INHERIT: {kv:?} is not key=value"));
            assert!(
                !key.contains("..")
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)),
                "VPCNET_TEST_INHERIT: bad key {key:?}"
            );
            let ok = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{name}"))
                .args([
                    "sh",
                    "-c",
                    &format!("echo {value} > /proc/sys/net/ipv4/{key}"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "VPCNET_TEST_INHERIT: setting net/ipv4/{key}={value} in {name}"
            );
        }
    }
}

/// Creates the network namespaces `names` with one `ip -batch` (much faster than one `ip`
/// per namespace). The caller registers them for cleanup.
pub fn add_netns_batch<'a>(names: impl IntoIterator<Item = &'a str>) {
    let names: Vec<String> = names.into_iter().map(str::to_string).collect();
    add_netns_batch_raw(&names);
    apply_inherited_sysctls(&names);
}

fn add_netns_batch_raw(names: &[String]) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for n in names {
            writeln!(stdin, "netns add {n}").expect("write ip batch");
        }
    }
    assert!(
        child.wait().expect("ip -batch").success(),
        "ip -batch netns add failed"
    );
}

/// Invokes the real plugin inside namespace `ns` with exactly these env vars (plus PATH) and
/// `stdin` as netconf, as a runtime living in that namespace would.
pub fn cni_in(ns: &str, stdin: &[u8], env: &[(&str, &str)]) -> CniOutput {
    use std::io::Write;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{ns}"))
        .arg(bin("vpcnet"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vpcnet");
    if let Some(mut stdin_pipe) = child.stdin.take() {
        let _ = stdin_pipe.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait vpcnet");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    CniOutput {
        exit: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Output of one plugin invocation.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub exit: i32,
    pub stdout: String,
    pub json: Value,
}

impl CniOutput {
    pub fn ok(&self) -> bool {
        self.exit == 0
    }
    /// The CNI error code, when the call failed.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
    pub fn msg(&self) -> String {
        self.json
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
    /// The pod address from an ADD result.
    pub fn ip(&self) -> Option<std::net::Ipv4Addr> {
        let a = self.json.get("ips")?.get(0)?.get("address")?.as_str()?;
        a.split('/').next()?.parse().ok()
    }
    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Self {
        assert!(self.ok(), "{what} failed: {}", self.stdout);
        self
    }
}

/// One test's world: a host namespace, pod namespaces, a scratch dir, maybe an agent.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pods: Vec<String>,
    pub agent: Option<Agent>,
    pub vpc: String,
}

impl Lab {
    /// A fresh lab whose VPC is `vpc` (e.g. "10.240.0.0/16"). Names start with `vt`.
    pub fn new(vpc: &str) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("vt{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join("vpcnet-tests").join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let lab = Lab {
            prefix,
            dir,
            pods: Vec::new(),
            agent: None,
            vpc: vpc.to_string(),
        };
        add_netns(&lab.host());
        sh(&format!("ip -n {} link set lo up", lab.host()));
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
        if !self.pods.contains(&name) {
            add_netns(&name);
            self.pods.push(name.clone());
        }
        name
    }

    /// Deletes pod namespace `name` (as the runtime does after DEL).
    pub fn remove_pod(&mut self, name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        self.pods.retain(|p| p != name);
    }

    pub fn netns_path(ns: &str) -> String {
        format!("/var/run/netns/{ns}")
    }

    /// The netconf tests use, pointing at this lab's agent and log.
    pub fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "vpctest",
            "type": "vpcnet",
            "socket": self.socket(),
            "logFile": self.dir.join("plugin.log"),
            "logLevel": "debug",
        })
    }

    /// Starts vpcnetd in the host namespace with the lab's socket/state/VPC plus `extra` flags,
    /// and waits until it serves.
    pub fn start_agent(&mut self, extra: &[&str]) -> &mut Agent {
        let agent = Agent::start(self, extra);
        self.agent = Some(agent);
        self.agent.as_mut().expect("just set")
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
        self.cni_env(
            conf,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container_id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", netns),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
        )
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
        cni_in(&self.host(), stdin, env)
    }

    /// `ip -n <ns> <args>` output.
    pub fn ip(&self, ns: &str, args: &str) -> String {
        sh(&format!("ip -n {ns} {args}"))
    }

    /// Host-side links named like ours (`vpc` + 11 hex digits).
    pub fn host_veths(&self) -> Vec<String> {
        self.ip(&self.host(), "-o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("vpc") && n.len() == 14)
            .collect()
    }

    /// The pods' host routes (`IP dev vpc… scope link`, protocol 171), as `ip route` lines.
    /// The agent's prefix routes (unreachable own prefixes, peers' `via` routes) also carry
    /// protocol 171 and are left out: see [`Lab::prefix_routes`].
    pub fn host_routes(&self) -> Vec<String> {
        self.ip(&self.host(), "-4 route show proto 171")
            .lines()
            .filter(|l| !l.starts_with("unreachable") && !l.contains(" via "))
            .map(str::to_string)
            .collect()
    }

    /// Every protocol-171 route of the host namespace (pods' and prefixes').
    pub fn proto_routes(&self) -> Vec<String> {
        self.ip(&self.host(), "-4 route show proto 171")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The agent's prefix routes with protocol 171 (unreachable own prefixes, peers' routes).
    pub fn prefix_routes(&self) -> Vec<String> {
        self.ip(&self.host(), "-4 route show proto 171")
            .lines()
            .filter(|l| l.starts_with("unreachable") || l.contains(" via "))
            .map(str::to_string)
            .collect()
    }

    pub fn ping(&self, from_ns: &str, to: &str) -> bool {
        sh_ok(&format!("ip netns exec {from_ns} ping -c1 -W2 -q {to}"))
    }

    /// `vpcnetd status --json` from the running agent.
    pub fn status(&self) -> Value {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.host()))
            .arg(bin("vpcnetd"))
            .arg("status")
            .arg("--json")
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("vpcnetd status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status not JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Polls `f` every 50 ms until it returns true or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, f: impl FnMut() -> bool) -> bool {
        wait_until(timeout, f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        for p in std::mem::take(&mut self.pods) {
            let _ = Command::new("ip").args(["netns", "del", &p]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host()])
            .status();
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

/// A running `vpcnetd` in the lab's host namespace.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    host: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(lab: &Lab, extra: &[&str]) -> Agent {
        let mut args = vec![
            "--socket".to_string(),
            lab.socket().display().to_string(),
            "--state-dir".to_string(),
            lab.state_dir().display().to_string(),
            "--vpc-cidr".to_string(),
            lab.vpc.clone(),
            "--node-name".to_string(),
            format!("{}-node", lab.prefix),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = Agent {
            child: None,
            args,
            host: lab.host(),
            socket: lab.socket(),
            log: lab.dir.join("vpcnetd.log"),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.host))
            .arg(bin("vpcnetd"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn vpcnetd");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("vpcnetd exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < end,
                "vpcnetd did not serve within 15 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a crash, nothing gets to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same flags (after [`Agent::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- helpers for the agent tests (warm_pool, crash, agent_down, gc_status) ----

/// The host veth name vpcnet gives (container ID, ifname): `vpc` + 11 hex digits of FNV-1a 64.
/// A copy of `vpcnet_proto::naming::host_veth_name`, kept independent on purpose: if the two
/// ever disagree, the tests that look veths up by name fail.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in [container_id, ifname].iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("vpc{:011x}", h >> 20)
}

/// One allocation from `vpcnetd status --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusAlloc {
    pub ip: std::net::Ipv4Addr,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// The fields of an allocation's `key` in `vpcnetd status --json`, spelled exactly as the
/// agent writes them (`AllocKey`): a rename is a change of the status format and must fail here.
pub const STATUS_KEY_FIELDS: [&str; 3] = ["container_id", "ifname", "network"];

/// The allocations in a status reply (panics if the reply has none: status is run as root).
/// Each `key` must have exactly [`STATUS_KEY_FIELDS`]; no other spelling is accepted.
pub fn status_allocs(status: &Value) -> Vec<StatusAlloc> {
    let s = |v: &Value, k: &str| -> String {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("allocation without string field {k:?}: {v}"))
            .to_string()
    };
    status
        .get("allocations")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("status without allocations: {status}"))
        .iter()
        .map(|a| {
            let key = &a["key"];
            let mut fields: Vec<&str> = key
                .as_object()
                .unwrap_or_else(|| panic!("allocation without key object: {a}"))
                .keys()
                .map(String::as_str)
                .collect();
            fields.sort_unstable();
            assert_eq!(
                fields, STATUS_KEY_FIELDS,
                "allocation key fields drifted from the status format: {a}"
            );
            StatusAlloc {
                ip: s(a, "ip").parse().expect("allocation ip"),
                network: s(key, "network"),
                container_id: s(key, "container_id"),
                ifname: s(key, "ifname"),
            }
        })
        .collect()
}

/// The fields of `status.stats` (`PoolStats`), spelled exactly as the agent writes them.
pub const STATUS_STATS_FIELDS: [&str; 6] = [
    "assigned",
    "available",
    "cooling",
    "free_prefixes",
    "prefixes",
    "total",
];

/// `status.stats.<key>` as a number. `key` must be one of [`STATUS_STATS_FIELDS`], and the
/// reply's `stats` must have exactly those fields: no other spelling is accepted, so a renamed
/// or missing field fails the test instead of being read under another name.
#[track_caller]
pub fn stat(status: &Value, key: &str) -> u64 {
    assert!(
        STATUS_STATS_FIELDS.contains(&key),
        "stat({key:?}): not a status.stats field ({STATUS_STATS_FIELDS:?})"
    );
    let stats = status
        .get("stats")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("status without stats object: {status}"));
    let mut fields: Vec<&str> = stats.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields, STATUS_STATS_FIELDS,
        "status.stats fields drifted from the status format: {status}"
    );
    stats
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("status.stats.{key} is not a number: {status}"))
}

/// A test that cannot run what it checks (a tool is missing and a `VPCNET_SKIP_*` variable
/// allows it) calls this and returns: it prints `SKIPPED <test>: <reason>` and, when
/// `VPCNET_SKIP_LOG` names a file (scripts/test.sh sets it), appends the line
/// `<test>: <reason>` to it, so the suite counts the test as skipped, not passed (and fails
/// under CI).
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let reason = reason.replace('\n', " ");
    eprintln!("SKIPPED {test}: {reason}");
    match std::env::var_os("VPCNET_SKIP_LOG") {
        Some(path) if !path.is_empty() => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening VPCNET_SKIP_LOG {path:?}: {e}"));
            writeln!(f, "{test}: {reason}")
                .unwrap_or_else(|e| panic!("writing VPCNET_SKIP_LOG {path:?}: {e}"));
        }
        _ => eprintln!(
            "SKIPPED {test}: (VPCNET_SKIP_LOG is unset: this run's totals count it as passed)"
        ),
    }
}

impl Lab {
    /// Creates pod namespaces for all `ids` with one `ip -batch` (much faster than one `ip`
    /// per namespace), registered for cleanup like [`Lab::pod`]. Returns their names.
    pub fn pods(&mut self, ids: impl IntoIterator<Item = usize>) -> Vec<String> {
        let names: Vec<String> = ids
            .into_iter()
            .map(|i| format!("{}p{i}", self.prefix))
            .filter(|n| !self.pods.contains(n))
            .collect();
        if !names.is_empty() {
            // Registered first, so a failed batch still cleans up what it made.
            self.pods.extend(names.iter().cloned());
            add_netns_batch(names.iter().map(String::as_str));
        }
        names
    }

    /// `vpcnetd status --json`, retried until the agent answers (e.g. right after a restart).
    pub fn status_when_up(&self) -> Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", self.host()))
                .arg(bin("vpcnetd"))
                .args(["status", "--json", "--socket"])
                .arg(self.socket())
                .output()
                .expect("vpcnetd status");
            if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                return v;
            }
            assert!(Instant::now() < end, "agent status unavailable for 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Interface names inside namespace `ns` (e.g. `["lo", "eth0"]`).
    pub fn links_in(&self, ns: &str) -> Vec<String> {
        self.ip(ns, "-o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The IPv4 addresses (without length) on `ifname` inside namespace `ns`.
    pub fn addrs_in(&self, ns: &str, ifname: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", ns, "-4", "-o", "addr", "show", "dev", ifname])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect()
    }

    /// Pid of the running agent (for `kill -9` from another thread while the lab is shared).
    pub fn agent_pid(&self) -> u32 {
        self.agent
            .as_ref()
            .and_then(Agent::pid)
            .expect("agent running")
    }
}

/// Runs `f` on every item, `threads` at a time (scoped threads), results in input order.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicU32::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

// ---- a real etcd for the datastore tests (datastore_contract) ----

/// Runs `f` on a thread that has entered network namespace `ns` (`None`: this namespace).
/// Sockets made there live in `ns`, so a test can talk to a server inside a lab.
pub fn in_netns<R: Send>(ns: Option<&str>, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                let path = Lab::netns_path(ns);
                let fd =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, let it go).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A single-member etcd (`/usr/bin/etcd`) on 127.0.0.1 with free ports and a private data
/// dir, in this namespace or in a lab's. Killed and its dir removed on drop, also when the
/// test panics (its log is printed then).
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    netns: Option<String>,
}

impl Etcd {
    /// Starts etcd in this network namespace and waits until it is healthy.
    pub fn start() -> Etcd {
        let mut e = Etcd::stopped(None);
        e.spawn();
        e
    }

    /// Starts etcd inside network namespace `ns` (e.g. a [`Lab::host`]).
    pub fn start_in(ns: &str) -> Etcd {
        let mut e = Etcd::stopped(Some(ns));
        e.spawn();
        e
    }

    /// Ports and data dir chosen, not running yet ([`Etcd::restart`] starts it).
    pub fn stopped(ns: Option<&str>) -> Etcd {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir()
            .join("vpcnet-tests")
            .join(format!("etcd{}x{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        Etcd {
            child: None,
            dir,
            client_port,
            peer_port,
            netns: ns.map(str::to_string),
        }
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", Lab::netns_path(ns)))
                    .arg("/usr/bin/etcd");
                c
            }
            None => Command::new("/usr/bin/etcd"),
        };
        cmd.arg("--name")
            .arg("vt")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("vt={peer}"))
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn /usr/bin/etcd"));
        let end = Instant::now() + Duration::from_secs(15);
        let port = self.client_port;
        while !in_netns(self.netns.as_deref(), || etcd_healthy(port)) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < end,
                "etcd not healthy within 15 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (an outage; the data dir stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts it with the same ports and data and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

/// `GET /health` on etcd's client port says `"health":"true"`.
fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("etcd log (last 30 lines, newest first):");
            for l in tail {
                eprintln!("  {l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
