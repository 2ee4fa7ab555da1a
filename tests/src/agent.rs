//! The real `vpcnetd`: starting it inside a namespace, the one readiness check (its socket
//! accepts), stopping it (SIGKILL, also on drop), and reading `vpcnetd status --json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, netns, Proc};

/// How long a starting agent may take to serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A `vpcnetd` in network namespace `ns`, serving on `socket`, logging to `log`.
#[derive(Debug)]
pub struct Agent {
    /// Killed on drop.
    child: Proc,
    args: Vec<String>,
    ns: String,
    socket: PathBuf,
    log: PathBuf,
    /// The executable started; `None`: the workspace's `vpcnetd` ([`bin`]).
    exe: Option<PathBuf>,
}

impl Agent {
    /// Not running yet: `args` are its whole command line (`--socket` included).
    pub fn new(ns: &str, socket: PathBuf, log: PathBuf, args: Vec<String>) -> Agent {
        Agent {
            child: Proc::default(),
            args,
            ns: ns.to_string(),
            socket,
            log,
            exe: None,
        }
    }

    /// Starts it and waits until it serves (see [`Agent::spawn`]).
    pub fn start(ns: &str, socket: PathBuf, log: PathBuf, args: Vec<String>) -> Agent {
        let mut a = Agent::new(ns, socket, log, args);
        a.spawn();
        a
    }

    /// Starts the process (log appended) and waits until its socket accepts a connection;
    /// panics with the log if it exits first or does not serve within [`START_TIMEOUT`].
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let exe = self.exe.clone().unwrap_or_else(|| bin("vpcnetd"));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(&self.ns)))
            .arg(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn vpcnetd");
        self.child.set(child);
        let end = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.child.exited() {
                panic!("vpcnetd exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < end,
                "vpcnetd did not serve within {START_TIMEOUT:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// SIGKILL: a crash, nothing gets to clean up.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts it again with the same flags (after [`Agent::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The executable it runs (from the next [`Agent::spawn`] on).
    pub fn set_exe(&mut self, exe: PathBuf) {
        self.exe = Some(exe);
    }

    /// SIGTERM, as the kubelet stops a pod, and waits up to `timeout` for it to exit by
    /// itself; its exit status, or `None` if it was still running then (it is SIGKILLed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.terminate(timeout)
    }

    /// A DaemonSet RollingUpdate of this agent: SIGTERM and wait for the exit (panics if it
    /// does not exit cleanly within `timeout`), then `in_gap` runs while no agent is there (a
    /// new pod being pulled and started), then `exe` starts with the same flags, state and
    /// socket; waits until it serves. Returns how long no agent was running.
    pub fn roll(&mut self, exe: PathBuf, in_gap: impl FnOnce(), timeout: Duration) -> Duration {
        let st = self.terminate(timeout);
        assert!(
            st.is_some_and(|s| s.success()),
            "vpcnetd did not exit cleanly within {timeout:?} of SIGTERM ({st:?}): {}",
            self.log_text()
        );
        let t0 = Instant::now();
        in_gap();
        self.set_exe(exe);
        self.spawn();
        t0.elapsed()
    }
}

/// `vpcnetd status --json --socket <socket>` run inside `ns`; Err (with what it printed)
/// when the reply is not JSON, e.g. no agent answers.
pub fn try_status(ns: &str, socket: &Path) -> Result<Value, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(ns)))
        .arg(bin("vpcnetd"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .map_err(|e| format!("vpcnetd status: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "status not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// [`try_status`], retried every 50 ms until the agent answers (e.g. right after a restart);
/// panics after `timeout`.
pub fn status_when_up(ns: &str, socket: &Path, timeout: Duration) -> Value {
    let end = Instant::now() + timeout;
    loop {
        match try_status(ns, socket) {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < end,
                "agent status unavailable for {timeout:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
