//! Fixtures for the integration tests, one module per thing:
//! - [`netns`]: private network namespaces (created in batches, deleted on drop even on
//!   panic) and running code inside one on a dedicated thread;
//! - [`cni`]: the one invoker of the real `vpcnet` plugin, and its output;
//! - [`agent`]: starting/stopping the real `vpcnetd`, its readiness check, its status;
//! - [`etcd`]: the one etcd launcher and health check;
//! - [`lab`]: one node's world ([`Lab`]); [`cluster`]: many nodes on a switch with etcd;
//! - [`http`]: HTTP to the agent's endpoint inside a namespace; [`manifests`]: the YAML of
//!   `manifests/`.
//!
//! This file re-exports what the tests use and keeps the few helpers that are truly general.
//! Nothing touches the machine's root namespace: every namespace and file a fixture makes
//! carries a unique prefix ([`unique_prefix`]) and is removed when the fixture is dropped —
//! also when the test panics.

pub mod agent;
pub mod cluster;
pub mod cni;
pub mod etcd;
pub mod http;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod ping;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use agent::{stat, status_allocs, Agent, StatusAlloc, STATUS_KEY_FIELDS, STATUS_STATS_FIELDS};
pub use cni::{cni_in, host_veth_name, CniOutput};
pub use etcd::Etcd;
pub use lab::Lab;
pub use netns::{add_netns, add_netns_batch, in_netns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name prefix no other fixture of this or another test process uses: `vt<pid>x<n>`
/// (scripts/test.sh removes leftovers of dead processes by this shape).
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("vt{}x{n}", std::process::id())
}

/// A fresh, empty scratch directory `<tmp>/vpcnet-tests/<name>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("vpcnet-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

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

/// A test that cannot run what it checks (a tool is missing and a `VPCNET_SKIP_*` variable
/// allows it) calls this and returns: it prints `SKIPPED <test>: <reason>` and, when
/// `VTEST_SKIP_LOG` names a file (scripts/test.sh sets it), appends the line
/// `<test>: <reason>` to it, so the suite counts the test as skipped, not passed (and fails
/// under CI).
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let reason = reason.replace('\n', " ");
    eprintln!("SKIPPED {test}: {reason}");
    match std::env::var_os("VTEST_SKIP_LOG") {
        Some(path) if !path.is_empty() => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening VTEST_SKIP_LOG {path:?}: {e}"));
            writeln!(f, "{test}: {reason}")
                .unwrap_or_else(|e| panic!("writing VTEST_SKIP_LOG {path:?}: {e}"));
        }
        _ => eprintln!(
            "SKIPPED {test}: (VTEST_SKIP_LOG is unset: this run's totals count it as passed)"
        ),
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

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, let it go).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Is `ip` inside `cidr` (e.g. "10.240.0.0/16")?
pub fn in_cidr(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("cidr");
    let net: std::net::Ipv4Addr = net.parse().expect("cidr address");
    let len: u32 = len.parse().expect("cidr length");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Is `ip` inside the IPv6 `cidr` (e.g. "fd00:10::/64")? A malformed `cidr` is outside.
pub fn in_cidr6(ip: std::net::Ipv6Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv6Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// A fixture's child process (an agent, an etcd): SIGKILLed and reaped by [`Proc::kill`]
/// and when dropped, also when the test panics.
#[derive(Debug, Default)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Takes over `child` (after killing the one it had, if any).
    pub fn set(&mut self, child: Child) {
        self.kill();
        self.0 = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// SIGKILL and wait (nothing gets to clean up); no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; its status, or `None` (and SIGKILL)
    /// if it did not exit in time or was not running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.0.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                self.0 = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Its exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.0.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
