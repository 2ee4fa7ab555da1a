//! Shared helpers of the root-only integration tests: private namespaces with RAII cleanup
//! and `ip` output for assertions. Nothing here touches the root network namespace.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vpcnet_netlink::netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private network namespace `vnlt<pid>-<n>`, deleted on drop (also when the test panics).
pub struct Ns {
    pub name: String,
    pub fd: OwnedFd,
    _guard: NsName,
}

impl Ns {
    pub fn new() -> Ns {
        let name = format!(
            "vnlt{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // The guard exists before anything else can fail, so the namespace is always removed.
        let guard = NsName(name.clone());
        // As tests/src/lib.rs does: VTEST_INHERIT="ip_forward=1 …" writes what a new
        // namespace inherits from a different machine's root namespace.
        if let Ok(spec) = std::env::var("VTEST_INHERIT") {
            for kv in spec.split_whitespace() {
                let (key, value) = kv.split_once('=').expect("VTEST_INHERIT: key=value");
                let script = format!("echo {value} > /proc/sys/net/ipv4/{key}");
                let net = format!("--net=/var/run/netns/{name}");
                run("nsenter", &[net.as_str(), "sh", "-c", script.as_str()]);
            }
        }
        let fd = netns::open(&Ns::path_of(&name)).expect("open fresh netns");
        Ns {
            name,
            fd,
            _guard: guard,
        }
    }

    pub fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(name)
    }

    pub fn path(&self) -> PathBuf {
        Ns::path_of(&self.name)
    }

    /// `ip -n NAME args...` stdout; panics when `ip` fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` inside this namespace with a handle there.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        netns::run_in(self.fd.as_fd(), f).expect("run_in")
    }
}

struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a command, returns stdout, panics with stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and reports only whether it succeeded.
pub fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
