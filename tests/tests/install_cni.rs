//! The Kubernetes install path: `vpcnetd install-cni` (the init container) copies the plugin
//! into the CNI bin dir atomically and idempotently; the agent writes its conflist only once
//! pods can get addresses, with the right content, and leaves it on shutdown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vpcnet_tests::{bin, sh, stat, Lab};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join("vpcnet-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn install_cni(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("vpcnetd"))
        .arg("install-cni")
        .args(args)
        .env_remove("VPCNET_CNI_BIN_DIR")
        .env_remove("VPCNET_PLUGIN_SRC")
        .output()
        .expect("run vpcnetd install-cni");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// (inode, mtime in ns)
fn identity(p: &Path) -> (u64, i128) {
    let m = std::fs::metadata(p).expect("stat");
    (
        m.ino(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    )
}

#[test]
fn install_cni_copies_the_plugin_atomically_and_idempotently() {
    let dir = scratch("install-cni");
    let bin_dir = dir.join("opt/cni/bin");
    let bin_arg = bin_dir.display().to_string();

    // Default source: `vpcnet` next to vpcnetd. The bin dir is created.
    let (ok, err) = install_cni(&["--cni-bin-dir", &bin_arg]);
    assert!(ok, "install-cni failed: {err}");
    let dst = bin_dir.join("vpcnet");
    let want = std::fs::read(bin("vpcnet")).expect("read built plugin");
    assert_eq!(
        std::fs::read(&dst).expect("installed plugin"),
        want,
        "identical bytes"
    );
    let mode = std::fs::metadata(&dst).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "mode {mode:o}");
    assert_eq!(
        names_in(&bin_dir),
        ["vpcnet", "vpcnet-standalone"],
        "no temporary file left"
    );
    // It runs.
    let out = Command::new(&dst)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("run installed plugin");
    let v: Value = serde_json::from_slice(&out.stdout).expect("VERSION output");
    assert_eq!(v["cniVersion"], "1.1.0");

    // Second run: nothing written (same inode, same mtime).
    let before = identity(&dst);
    std::thread::sleep(Duration::from_millis(20));
    let (ok, err) = install_cni(&["--cni-bin-dir", &bin_arg]);
    assert!(ok, "second install-cni failed: {err}");
    assert!(err.contains("up to date"), "{err}");
    assert_eq!(identity(&dst), before, "idempotent run rewrote the file");

    // A new version replaces it by rename (new inode), leftovers of a killed run go.
    std::fs::write(bin_dir.join(".vpcnet.tmp-99999"), b"half a binary").expect("leftover");
    let src = dir.join("vpcnet-v2");
    std::fs::write(&src, b"#!/bin/sh\necho v2\n").expect("v2");
    std::fs::write(dir.join("vpcnet-standalone"), b"#!/bin/sh\necho v2s\n").expect("v2s");
    let src_arg = src.display().to_string();
    let (ok, err) = install_cni(&["--cni-bin-dir", &bin_arg, "--plugin-src", &src_arg]);
    assert!(ok, "install of v2 failed: {err}");
    assert_eq!(std::fs::read(&dst).expect("read"), b"#!/bin/sh\necho v2\n");
    assert_ne!(identity(&dst).0, before.0, "replaced by rename");
    assert_eq!(
        std::fs::metadata(&dst).expect("stat").permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(names_in(&bin_dir), ["vpcnet", "vpcnet-standalone"]);

    // Env works too (the DaemonSet's way); a missing source fails and leaves the file alone.
    let out = Command::new(bin("vpcnetd"))
        .arg("install-cni")
        .env("VPCNET_CNI_BIN_DIR", &bin_dir)
        .env("VPCNET_PLUGIN_SRC", dir.join("missing"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "error names the source"
    );
    assert_eq!(std::fs::read(&dst).expect("read"), b"#!/bin/sh\necho v2\n");
    assert_eq!(names_in(&bin_dir), ["vpcnet", "vpcnet-standalone"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every /28 of `vpc` (a /24) claimed by another node, in the local datastore's format.
fn claims_of_other_node(vpc_base: [u8; 3]) -> Value {
    let mut m = serde_json::Map::new();
    for i in 0..16u8 {
        let p = format!(
            "{}.{}.{}.{}/28",
            vpc_base[0],
            vpc_base[1],
            vpc_base[2],
            i * 16
        );
        m.insert(
            p.clone(),
            json!({"prefix": p, "node": "someone-else", "nodeIp": null, "claimedAt": 1}),
        );
    }
    Value::Object(m)
}

#[test]
fn conflist_appears_only_once_the_pool_has_addresses() {
    let mut lab = Lab::new("10.233.7.0/24");
    let state = lab.state_dir();
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(
        state.join("claims.json"),
        serde_json::to_vec_pretty(&claims_of_other_node([10, 233, 7])).expect("json"),
    )
    .expect("write claims");
    let conf_dir = lab.dir.join("net.d");
    let conf = conf_dir.join("10-vpcnet.conflist");
    let conf_dir_arg = conf_dir.display().to_string();
    lab.start_agent(&["--cni-conf-dir", &conf_dir_arg, "--metrics-addr", "off"]);

    // The VPC is someone else's: the agent is up, but no pod could get an address.
    let mut status = Value::Null;
    let exhausted = lab.wait_for(Duration::from_secs(10), || {
        status = lab.status();
        status["degraded"].as_array().is_some_and(|d| {
            d.iter()
                .any(|m| m.as_str().is_some_and(|m| m.contains("VPC exhausted")))
        })
    });
    assert!(exhausted, "agent never saw the VPC exhausted: {status:#}");
    assert_eq!(status["ready"], Value::Bool(true));
    assert_eq!(status["canAssign"], Value::Bool(false), "{status:#}");
    assert_eq!(stat(&status, "total"), 0);
    std::thread::sleep(Duration::from_millis(1500)); // three polls
    assert!(!conf.exists(), "conflist written while the pool is empty");

    // The other node goes away: the warm loop claims a prefix, the conflist appears.
    std::fs::remove_file(state.join("claims.json")).expect("free the VPC");
    let appeared = lab.wait_for(Duration::from_secs(45), || conf.exists());
    assert!(
        appeared,
        "no conflist 45 s after the VPC was freed: {:#}\n{}",
        lab.status(),
        lab.agent.as_ref().map(|a| a.log_text()).unwrap_or_default()
    );
    let status = lab.status();
    assert!(stat(&status, "total") > 0, "{status:#}");

    let bytes = std::fs::read(&conf).expect("read conflist");
    let v: Value = serde_json::from_slice(&bytes).expect("conflist is JSON");
    // 1.0.0 for runtimes before libcni 1.2 (containerd 1.6/1.7); 1.1.0 (GC, STATUS) for
    // those that read `cniVersions`.
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["cniVersions"], json!(["1.0.0", "1.1.0"]));
    assert_eq!(v["name"], "vpcnet");
    let plugins = v["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 2, "{v:#}");
    // Just the socket: the lab's host namespace has no default route, so no uplink MTU is
    // known, and without --cni-log-file/--cni-log-level the plugin keeps its log defaults.
    assert_eq!(
        plugins[0],
        json!({"type": "vpcnet", "socket": lab.socket()}),
        "{v:#}"
    );
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
    assert_eq!(
        names_in(&conf_dir),
        ["10-vpcnet.conflist"],
        "no temp file left"
    );

    // The plugin works with it, as the runtime would use it.
    let ns = lab.pod(0);
    let mut netconf = plugins[0].clone();
    netconf["cniVersion"] = json!("1.1.0");
    netconf["name"] = json!("vpcnet");
    netconf["logFile"] = json!(lab.dir.join("plugin.log"));
    let out = lab.cni(
        "ADD",
        "conflist-pod",
        "eth0",
        &Lab::netns_path(&ns),
        &netconf,
    );
    out.expect_ok("ADD with the written conflist's plugin config");

    // Not rewritten while unchanged.
    let before = identity(&conf);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(identity(&conf), before, "identical conflist rewritten");

    // Deleted by someone: put back.
    std::fs::remove_file(&conf).expect("rm conflist");
    assert!(
        lab.wait_for(Duration::from_secs(5), || conf.exists()),
        "deleted conflist not restored"
    );
    assert_eq!(std::fs::read(&conf).expect("read"), bytes);

    // Shutdown (SIGTERM, as a DaemonSet rollout does) leaves it: the node stays Ready.
    let pid = lab.agent_pid();
    sh(&format!("kill -TERM {pid}"));
    let agent = lab.agent.as_mut().expect("agent");
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !agent.is_running()
    });
    assert!(stopped, "agent did not stop on SIGTERM");
    assert!(conf.exists(), "conflist removed on shutdown");
    assert_eq!(std::fs::read(&conf).expect("read"), bytes);
}
