//! The one way the tests invoke the real `vpcnet` plugin: inside a namespace, as a runtime
//! living there would (CNI_* env + netconf on stdin), and read what it printed. `vpcnet` is
//! the front (front/): with an agent that serves it, the command runs in the agent; without,
//! in `vpcnet-standalone`, which the front execs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::{bin, netns};

/// The `CNI_PATH` every invocation gets.
pub const CNI_PATH: &str = "/usr/lib/cni";

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
    /// The call failed with CNI error `code`, and its message names `names`.
    #[track_caller]
    pub fn expect_refused(&self, what: &str, code: u64, names: &str) -> &Self {
        assert_ne!(self.exit, 0, "{what}: succeeded: {}", self.stdout);
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: wrong code: {}",
            self.stdout
        );
        assert!(
            self.msg().contains(names),
            "{what}: message should name {names:?}: {}",
            self.msg()
        );
        self
    }
}

/// The netconf the fixtures use: network `name`, the agent at `socket`, the plugin's debug
/// log at `log_file`.
pub fn netconf(name: &str, socket: &Path, log_file: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "vpcnet",
        "socket": socket,
        "logFile": log_file,
        "logLevel": "debug",
    })
}

/// The env of one call of `command` for (`container_id`, `ifname`) in `netns` (a path).
pub fn env<'a>(
    command: &'a str,
    container_id: &'a str,
    ifname: &'a str,
    netns: &'a str,
) -> [(&'static str, &'a str); 5] {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_IFNAME", ifname),
        ("CNI_NETNS", netns),
        ("CNI_PATH", CNI_PATH),
    ]
}

/// Invokes the real plugin inside namespace `ns` with exactly these env vars (plus PATH) and
/// `stdin` as netconf, as a runtime living in that namespace would.
pub fn cni_in(ns: &str, stdin: &[u8], env: &[(&str, &str)]) -> CniOutput {
    invoke(ns, stdin, env, None)
}

/// [`cni_in`], killed (SIGKILL) after `timeout_s` seconds when given: a hang then shows as a
/// failed call instead of a stuck test.
pub fn invoke(ns: &str, stdin: &[u8], env: &[(&str, &str)], timeout_s: Option<u32>) -> CniOutput {
    invoke_bin(&bin("vpcnet"), ns, stdin, env, timeout_s)
}

/// [`invoke`] of the program `plugin` (e.g. `vpcnet-standalone`, or a copy of the front).
pub fn invoke_bin(
    plugin: &Path,
    ns: &str,
    stdin: &[u8],
    env: &[(&str, &str)],
    timeout_s: Option<u32>,
) -> CniOutput {
    let mut child = command_of(plugin, ns, env, timeout_s)
        .spawn()
        .expect("spawn vpcnet");
    if let Some(mut stdin_pipe) = child.stdin.take() {
        let _ = stdin_pipe.write_all(stdin);
    }
    output(child.wait_with_output().expect("wait vpcnet"))
}

/// The plugin's command line in namespace `ns`: exactly `env` (plus PATH), stdin, stdout
/// and stderr piped; under `timeout -s KILL` when `timeout_s` is given. For a test that
/// must feed stdin itself (see [`invoke`] for the usual call).
pub fn command(ns: &str, env: &[(&str, &str)], timeout_s: Option<u32>) -> Command {
    command_of(&bin("vpcnet"), ns, env, timeout_s)
}

/// [`command`] of the program `plugin`.
pub fn command_of(
    plugin: &Path,
    ns: &str,
    env: &[(&str, &str)],
    timeout_s: Option<u32>,
) -> Command {
    let mut cmd = match timeout_s {
        Some(t) => {
            let mut c = Command::new("timeout");
            c.args(["-s", "KILL", &t.to_string(), "nsenter"]);
            c
        }
        None => Command::new("nsenter"),
    };
    cmd.arg(format!("--net={}", netns::path(ns)))
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What a finished plugin process printed, read as a CNI result or error.
pub fn output(out: std::process::Output) -> CniOutput {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    CniOutput {
        exit: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
    }
}

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

/// The IPv4 (`/32`) and IPv6 (`/128`) addresses an ADD result lists; each must be on the
/// result's interface 1 (the pod's eth0), any other prefix length fails the test.
pub fn result_ips(out: &CniOutput) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in out.json["ips"].as_array().into_iter().flatten() {
        assert_eq!(ip["interface"], 1, "{}", out.stdout);
        let addr = ip["address"].as_str().unwrap_or_default();
        match addr.split_once('/') {
            Some((a, "32")) => v4 = a.parse().ok(),
            Some((a, "128")) => v6 = a.parse().ok(),
            _ => panic!("unexpected address {addr}: {}", out.stdout),
        }
    }
    (v4, v6)
}
