//! The agent writes the node's CNI network config (`--cni-conf-dir`/`--cni-conf-name`,
//! e.g. `/etc/cni/net.d/10-vpcnet.conflist`) — but only once pods can really get an address:
//! the start-up reconcile is done, the pool holds at least one address, and an ADD can be
//! served (`ready && can_assign && stats.total > 0`). The kubelet reports a node's network
//! Ready as soon as the runtime finds a conflist, so writing it earlier would let pods be
//! scheduled onto a node that can only answer them with "try again later" (the Amazon VPC
//! CNI's most reported start-up problem).
//!
//! The file is written atomically (temporary file in the same directory, fsync, rename, fsync
//! of the directory: the runtime never reads half a file) and only when its content differs
//! from what is on disk. The condition is re-checked every [`POLL`] (500 ms: a stat-and-read
//! of a few hundred bytes), so the file appears within half a second of the first prefix
//! claim, and a deleted or stale file (say, an older agent's, with another MTU) is put back.
//!
//! **Shutdown and an emptied pool: the file is left in place, never removed.** A DaemonSet
//! rolling update or an agent crash must not flip the node NotReady and get pods evicted or
//! rescheduled; pods that start meanwhile get CNI code 11 from the plugin and the runtime
//! retries, and from containerd 2.0 on, the plugin's STATUS (agent down, not ready, pool
//! unable to assign) already tells the runtime the network is not ready. Removing vpcnet from
//! a node (uninstalling the DaemonSet) is the place to delete the file, not the agent's exit.
//!
//! With every warm target at 0 (`--warm-prefix-target 0`, `--warm-ip-target 0`,
//! `--minimum-ip-target 0`) the pool stays empty until the first ADD, so the file is never
//! written: keep a warm target (the default `--warm-prefix-target 1` does).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::datastore::Datastore;
use crate::node::store::write_atomic;
use crate::node::Node;

/// How often the agent re-checks whether the file should be (re)written.
pub const POLL: Duration = Duration::from_millis(500);

/// Where the conflist goes and what it points the plugin at.
#[derive(Clone, Debug)]
pub struct ConfTarget {
    pub dir: PathBuf,
    pub name: String,
    /// The agent's socket, as the plugin (in the host's mount namespace) sees it.
    pub socket: PathBuf,
    /// The plugin's `logFile` (`--cni-log-file`; None: the plugin's default).
    pub log_file: Option<PathBuf>,
    /// The plugin's `logLevel` (`--cni-log-level`; None: the plugin's default).
    pub log_level: Option<String>,
}

impl ConfTarget {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

#[derive(Serialize)]
struct Conflist<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(rename = "cniVersions")]
    cni_versions: [&'static str; 2],
    name: &'static str,
    plugins: (VpcnetPlugin<'a>, PortmapPlugin),
}

#[derive(Serialize)]
struct VpcnetPlugin<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    socket: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(rename = "logFile", skip_serializing_if = "Option::is_none")]
    log_file: Option<&'a Path>,
    #[serde(rename = "logLevel", skip_serializing_if = "Option::is_none")]
    log_level: Option<&'a str>,
}

#[derive(Serialize)]
struct PortmapPlugin {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: PortmapCaps,
}

#[derive(Serialize)]
struct PortmapCaps {
    #[serde(rename = "portMappings")]
    port_mappings: bool,
}

/// The conflist's bytes: vpcnet (with its agent's socket, the plugin log settings when
/// given and, when known, the uplink MTU) chained with portmap.
///
/// Versions: `"cniVersion": "1.0.0"` plus `"cniVersions": ["1.0.0", "1.1.0"]` (spec 1.1.0).
/// A runtime whose libcni knows `cniVersions` (1.2+, containerd 2.x, CRI-O 1.30+) takes the
/// newest entry it supports, 1.1.0, and so sends GC and STATUS; older ones (containerd 1.6/1.7,
/// libcni 1.1) ignore the list and use 1.0.0 — with `"cniVersion": "1.1.0"` they fail every
/// ADD ("unsupported CNI result version"), as does a portmap that predates spec 1.1.0
/// (Debian 12's speaks at most 1.0.0).
pub fn render(target: &ConfTarget, mtu: Option<u32>) -> Vec<u8> {
    let conf = Conflist {
        cni_version: "1.0.0",
        cni_versions: ["1.0.0", "1.1.0"],
        name: "vpcnet",
        plugins: (
            VpcnetPlugin {
                kind: "vpcnet",
                socket: &target.socket,
                mtu,
                log_file: target.log_file.as_deref(),
                log_level: target.log_level.as_deref(),
            },
            PortmapPlugin {
                kind: "portmap",
                capabilities: PortmapCaps {
                    port_mappings: true,
                },
            },
        ),
    };
    // Plain structs of strings and numbers always serialise.
    let mut out = serde_json::to_vec_pretty(&conf).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Whether pods can get addresses, i.e. whether the node may be declared network-ready.
pub fn should_write(ready: bool, can_assign: bool, total: u32) -> bool {
    ready && can_assign && total > 0
}

/// Writes `bytes` to `target` unless the file already holds exactly them. Returns whether it
/// wrote.
pub fn ensure(target: &ConfTarget, bytes: &[u8]) -> io::Result<bool> {
    match std::fs::read(target.path()) {
        Ok(old) if old == bytes => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&target.dir)?;
    write_atomic(&target.dir, &target.name, bytes)?;
    Ok(true)
}

/// The background task: polls the pool and writes the conflist when (and while) pods can get
/// addresses. Never removes it (see the module docs).
pub async fn run<D: Datastore>(node: Arc<Node<D>>, target: ConfTarget) {
    let mut last_err: Option<String> = None;
    let mut waiting_logged = false;
    loop {
        let s = node.status(false);
        if should_write(s.ready, s.can_assign, s.stats.total) {
            let mtu = node.health().mtu;
            match ensure(&target, &render(&target, mtu)) {
                Ok(wrote) => {
                    if wrote {
                        tracing::info!(
                            path = %target.path().display(),
                            addresses = s.stats.total,
                            "wrote the conflist"
                        );
                    }
                    last_err = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_err.as_deref() != Some(msg.as_str()) {
                        tracing::error!(path = %target.path().display(), "writing the conflist: {msg}");
                    }
                    last_err = Some(msg);
                }
            }
        } else if !waiting_logged && s.ready {
            waiting_logged = true;
            tracing::info!(
                path = %target.path().display(),
                "not writing the conflist yet: the pool has no address to give ({} total{})",
                s.stats.total,
                if s.degraded.is_empty() {
                    String::new()
                } else {
                    format!("; {}", s.degraded.join("; "))
                }
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(socket: &str) -> ConfTarget {
        ConfTarget {
            dir: "/etc/cni/net.d".into(),
            name: "10-vpcnet.conflist".into(),
            socket: socket.into(),
            log_file: None,
            log_level: None,
        }
    }

    #[test]
    fn renders_the_conflist() {
        let b = render(&target("/run/vpcnet/vpcnetd.sock"), Some(9001));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "cniVersions": ["1.0.0", "1.1.0"],
                "name": "vpcnet",
                "plugins": [
                    {"type": "vpcnet", "socket": "/run/vpcnet/vpcnetd.sock", "mtu": 9001},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
        );
        let b = render(&target("/s"), None);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["plugins"][0],
            serde_json::json!({"type": "vpcnet", "socket": "/s"}),
            "no mtu, logFile or logLevel unless known/given"
        );
        let mut t = target("/s");
        t.log_file = Some("/var/log/x/plugin.log".into());
        t.log_level = Some("debug".into());
        let v: serde_json::Value = serde_json::from_slice(&render(&t, None)).unwrap();
        assert_eq!(
            v["plugins"][0],
            serde_json::json!({
                "type": "vpcnet", "socket": "/s",
                "logFile": "/var/log/x/plugin.log", "logLevel": "debug"
            })
        );
    }

    #[test]
    fn written_only_when_pods_can_get_addresses() {
        assert!(should_write(true, true, 16));
        assert!(!should_write(false, true, 16));
        assert!(!should_write(true, true, 0));
        assert!(!should_write(true, false, 16));
    }

    #[test]
    fn ensure_is_atomic_and_idempotent() {
        let dir = std::env::temp_dir().join(format!("vpcnet-cniconf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = ConfTarget {
            dir: dir.join("net.d"),
            ..target("/s")
        };
        let bytes = render(&t, None);
        assert!(ensure(&t, &bytes).unwrap());
        assert!(!ensure(&t, &bytes).unwrap());
        assert_eq!(std::fs::read(t.path()).unwrap(), bytes);
        let names: Vec<_> = std::fs::read_dir(&t.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-vpcnet.conflist")]);
        let other = render(&t, Some(1500));
        assert!(ensure(&t, &other).unwrap());
        assert_eq!(std::fs::read(t.path()).unwrap(), other);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
