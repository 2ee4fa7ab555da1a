//! The agent socket: mode 0660, and only root peers (SO_PEERCRED) may change anything. A
//! non-root member of the socket's group may read status, without container IDs.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;
use vpcnet_tests::{bin, Lab};

/// Runs `vpcnetd status --json` as uid 65534 with gid 0 (the socket's group) in the lab host.
fn status_as_nobody(lab: &Lab) -> (bool, Value, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "0",
            "--clear-groups",
        ])
        .arg(bin("vpcnetd"))
        .args(["status", "--json", "--socket"])
        .arg(lab.socket())
        .output()
        .expect("run status as nobody");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn socket_is_0660_and_only_root_mutates() {
    let mut lab = Lab::new("10.243.0.0/24");
    lab.start_agent(&["--warm-ip-target", "2"]);
    // The lab dir must be traversable for the unprivileged caller.
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mode = std::fs::metadata(lab.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    // Root gets an address and sees container IDs in status.
    let pod = lab.pod(1);
    lab.add("c-root", &pod).expect_ok("root ADD");
    let st = lab.status();
    let allocs = st["allocations"].as_array().expect("root sees allocations");
    assert_eq!(allocs.len(), 1);

    // A non-root group member reads status but sees no container IDs.
    let (ok, st, err) = status_as_nobody(&lab);
    assert!(ok, "status as nobody: {err}");
    assert_eq!(st["stats"]["assigned"], 1, "{st}");
    assert!(st["allocations"].is_null(), "container IDs leaked: {st}");

    // …and may not assign: the plugin run as that user fails with the agent's code 101.
    let pod2 = lab.pod(2);
    let conf = lab.conf().to_string();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "0",
            "--clear-groups",
        ])
        .arg(bin("vpcnet"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-nobody")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", Lab::netns_path(&pod2))
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn plugin as nobody");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(conf.as_bytes()).expect("write conf");
    }
    let out = child.wait_with_output().expect("plugin as nobody");
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(v["code"], 101, "{v}");
    assert!(
        v["msg"].as_str().unwrap_or_default().contains("root"),
        "{v}"
    );
    assert_eq!(
        lab.status()["stats"]["assigned"],
        1,
        "nothing assigned by nobody"
    );
}
