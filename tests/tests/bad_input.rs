//! Bad input from the runtime: every malformed netconf or CNI_* environment is refused with the
//! right CNI error code, a message naming the culprit, and no change anywhere — no host veth, no
//! route, no address taken, nothing in the pod namespace.

use serde_json::{json, Value};
use vpcnet_tests::{CniOutput, Lab};

/// What the world looks like; bad input must leave it exactly so.
#[derive(Debug, PartialEq)]
struct Snapshot {
    host_veths: Vec<String>,
    host_routes: Vec<String>,
    assigned: u64,
    cooling: u64,
    allocations: Vec<(String, String)>,
}

fn snapshot(lab: &Lab) -> Snapshot {
    let st = lab.status();
    let mut allocations: Vec<(String, String)> = vpcnet_tests::status_allocs(&st)
        .into_iter()
        .map(|a| (a.container_id, a.ip.to_string()))
        .collect();
    allocations.sort();
    let mut host_veths = lab.host_veths();
    host_veths.sort();
    Snapshot {
        host_veths,
        host_routes: lab.host_routes(),
        assigned: st["stats"]["assigned"].as_u64().expect("stats.assigned"),
        cooling: st["stats"]["cooling"].as_u64().expect("stats.cooling"),
        allocations,
    }
}

/// A lab with an agent and one good pod ("good", in pod 0), so "nothing changed" has
/// something to compare against, plus a spare pod namespace for the bad ADDs.
fn lab_with_one_pod() -> (Lab, String, String, Value) {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let good = lab.pod(0);
    let out = lab.add("good", &good);
    out.expect_ok("ADD good");
    let spare = lab.pod(1);
    (lab, good, spare, out.json)
}

fn env<'a>(
    command: &'a str,
    cid: &'a str,
    ifname: &'a str,
    netns: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vpcnet_tests::cni::env(command, cid, ifname, netns).to_vec()
}

#[track_caller]
fn assert_refused(what: &str, out: &CniOutput, code: u64, names: &str) {
    out.expect_refused(what, code, names);
    // The error result is a proper CNI error: a cniVersion the runtime understands.
    let v = out.json["cniVersion"].as_str().unwrap_or_default();
    assert!(
        ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].contains(&v),
        "{what}: error result cniVersion {v:?}"
    );
}

#[track_caller]
fn assert_pod_untouched(lab: &Lab, ns: &str, what: &str) {
    let links = lab.ip(ns, "-o link show");
    assert!(
        !links.contains("eth0") && links.lines().count() == 1,
        "{what}: pod namespace changed: {links}"
    );
}

#[test]
fn bad_netconf_is_refused_and_changes_nothing() {
    let (lab, _good, spare, _) = lab_with_one_pod();
    let before = snapshot(&lab);
    assert_eq!(before.assigned, 1);
    assert_eq!(before.host_veths.len(), 1);
    let netns = Lab::netns_path(&spare);
    let add_env = env("ADD", "bad1", "eth0", &netns);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = lab.conf();
        f(&mut c);
        c.to_string().into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "malformed JSON",
            b"{\"cniVersion\": \"1.1.0\", \"name\": ".to_vec(),
            6,
            "decode",
        ),
        ("not an object", b"[1,2,3]".to_vec(), 6, "decode"),
        ("empty stdin", Vec::new(), 6, "decode"),
        (
            "unknown cniVersion",
            with(&|c| c["cniVersion"] = json!("9.9.9")),
            1,
            "9.9.9",
        ),
        (
            "pre-0.3 cniVersion",
            with(&|c| c["cniVersion"] = json!("0.2.0")),
            1,
            "cniVersion",
        ),
        (
            "missing cniVersion",
            with(&|c| {
                c.as_object_mut().expect("obj").remove("cniVersion");
            }),
            7,
            "cniVersion",
        ),
        (
            "missing name",
            with(&|c| {
                c.as_object_mut().expect("obj").remove("name");
            }),
            7,
            "name",
        ),
        ("empty name", with(&|c| c["name"] = json!("")), 7, "name"),
        ("mtu 0", with(&|c| c["mtu"] = json!(0)), 7, "mtu"),
        ("mtu 67", with(&|c| c["mtu"] = json!(67)), 7, "mtu"),
        ("mtu 65536", with(&|c| c["mtu"] = json!(65536)), 7, "mtu"),
        ("mtu -1", with(&|c| c["mtu"] = json!(-1)), 7, "mtu"),
        (
            "mtu a string",
            with(&|c| c["mtu"] = json!("1500")),
            7,
            "mtu",
        ),
        (
            "ipam present",
            with(&|c| c["ipam"] = json!({"type": "host-local", "subnet": "10.1.0.0/24"})),
            2,
            "ipam",
        ),
        (
            "socket nobody listens on",
            with(&|c| c["socket"] = json!(lab.dir.join("nobody.sock"))),
            11,
            "socket",
        ),
        (
            "relative socket",
            with(&|c| c["socket"] = json!("vpcnetd.sock")),
            7,
            "socket",
        ),
    ];
    for (what, stdin, code, names) in &cases {
        let out = lab.cni_raw(stdin, &add_env);
        assert_refused(what, &out, *code, names);
        assert_eq!(snapshot(&lab), before, "{what}: state changed");
        assert_pod_untouched(&lab, &spare, what);
    }
    // The same netconf faults refuse DEL and CHECK too, without touching the good pod.
    for (what, stdin, code, names) in cases.iter().filter(|c| c.2 != 11) {
        for cmd in ["DEL", "CHECK"] {
            let out = lab.cni_raw(stdin, &env(cmd, "good", "eth0", &netns));
            assert_refused(&format!("{cmd}: {what}"), &out, *code, names);
        }
    }
    assert_eq!(
        snapshot(&lab),
        before,
        "DEL/CHECK with bad netconf changed state"
    );
    // In-range MTUs at the edges are fine (the bounds are 68..=65535, inclusive).
    let ok = lab.cni_raw(&with(&|c| c["mtu"] = json!(68)), &add_env);
    assert!(ok.ok(), "mtu 68 refused: {}", ok.stdout);
    let mtu = lab.ip(&spare, "-o link show eth0");
    assert!(mtu.contains("mtu 68 "), "{mtu}");
}

/// (what, variables set to other values, variable removed, CNI code, what the message names)
type EnvCase = (
    String,
    Vec<(&'static str, String)>,
    Option<&'static str>,
    u64,
    &'static str,
);

#[test]
fn bad_environment_is_refused_and_changes_nothing() {
    let (lab, good, spare, _) = lab_with_one_pod();
    let before = snapshot(&lab);
    let netns = Lab::netns_path(&spare);
    let regular_file = lab.dir.join("not-a-netns");
    std::fs::write(&regular_file, b"hello").expect("write file");
    let regular_file = regular_file.display().to_string();
    let missing = lab.dir.join("no-such-netns").display().to_string();
    let conf = lab.conf().to_string();

    let base = env("ADD", "bad1", "eth0", &netns);
    let set = |k: &'static str, v: &'static str| -> Vec<(&'static str, String)> {
        vec![(k, v.to_string())]
    };
    // (what, overrides, removed var, code, names)
    let mut cases: Vec<EnvCase> = vec![
        (
            "missing CNI_CONTAINERID".into(),
            vec![],
            Some("CNI_CONTAINERID"),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "empty CNI_CONTAINERID".into(),
            set("CNI_CONTAINERID", ""),
            None,
            4,
            "CNI_CONTAINERID",
        ),
        (
            "missing CNI_IFNAME".into(),
            vec![],
            Some("CNI_IFNAME"),
            4,
            "CNI_IFNAME",
        ),
        (
            "missing CNI_NETNS on ADD".into(),
            vec![],
            Some("CNI_NETNS"),
            4,
            "CNI_NETNS",
        ),
        (
            "empty CNI_NETNS on ADD".into(),
            set("CNI_NETNS", ""),
            None,
            4,
            "CNI_NETNS",
        ),
        (
            "CNI_NETNS a regular file".into(),
            vec![("CNI_NETNS", regular_file.clone())],
            None,
            4,
            "CNI_NETNS",
        ),
        (
            "CNI_NETNS missing path".into(),
            vec![("CNI_NETNS", missing.clone())],
            None,
            4,
            "CNI_NETNS",
        ),
        (
            "CNI_NETNS a directory".into(),
            set("CNI_NETNS", "/tmp"),
            None,
            4,
            "CNI_NETNS",
        ),
        (
            "unknown CNI_COMMAND".into(),
            set("CNI_COMMAND", "FROB"),
            None,
            4,
            "CNI_COMMAND",
        ),
        (
            "malformed CNI_ARGS".into(),
            set("CNI_ARGS", "K8S_POD_NAME"),
            None,
            4,
            "CNI_ARGS",
        ),
    ];
    for id in ["a/b", ".hidden", "..", ".", "../good", "-x", "a b", "a;b"] {
        cases.push((
            format!("CNI_CONTAINERID {id:?}"),
            vec![("CNI_CONTAINERID", id.to_string())],
            None,
            4,
            "CNI_CONTAINERID",
        ));
    }
    for ifname in ["sixteen_chars_xx", "a/b", "eth:0", "..", "eth 0"] {
        cases.push((
            format!("CNI_IFNAME {ifname:?}"),
            vec![("CNI_IFNAME", ifname.to_string())],
            None,
            4,
            "CNI_IFNAME",
        ));
    }
    for (what, overrides, removed, code, names) in &cases {
        let mut e: Vec<(&str, &str)> = base
            .iter()
            .copied()
            .filter(|(k, _)| Some(*k) != *removed && !overrides.iter().any(|(o, _)| o == k))
            .collect();
        for (k, v) in overrides {
            e.push((k, v.as_str()));
        }
        let out = lab.cni_raw(conf.as_bytes(), &e);
        assert_refused(what, &out, *code, names);
        assert_eq!(snapshot(&lab), before, "{what}: state changed");
        assert_pod_untouched(&lab, &spare, what);
        assert!(
            std::fs::read(&regular_file).is_ok_and(|b| b == b"hello"),
            "{what}: the regular file was touched"
        );
    }

    // DEL and CHECK validate the same way; a bad container ID must never reach the good
    // pod's allocation (e.g. "../good").
    for (cmd, id, ifname, names) in [
        ("DEL", "../good", "eth0", "CNI_CONTAINERID"),
        ("DEL", "", "eth0", "CNI_CONTAINERID"),
        ("DEL", "good", "sixteen_chars_xx", "CNI_IFNAME"),
        ("DEL", "good", "a/b", "CNI_IFNAME"),
        ("CHECK", "/good", "eth0", "CNI_CONTAINERID"),
        ("CHECK", "good", "", "CNI_IFNAME"),
    ] {
        let good_path = Lab::netns_path(&good);
        let out = lab.cni_raw(conf.as_bytes(), &env(cmd, id, ifname, &good_path));
        assert_refused(
            &format!("{cmd} id={id:?} ifname={ifname:?}"),
            &out,
            4,
            names,
        );
        assert_eq!(
            snapshot(&lab),
            before,
            "{cmd} {id:?}/{ifname:?}: state changed"
        );
    }
    // CHECK with a bad netns names it too.
    let mut c = lab.conf();
    c["prevResult"] = lab.add("good", &good).json;
    let out = lab.cni_env(&c, &env("CHECK", "good", "eth0", &regular_file));
    assert_refused("CHECK with a regular file as netns", &out, 4, "CNI_NETNS");
    assert_eq!(snapshot(&lab), before);
}

#[test]
fn gc_status_version_need_no_container_env() {
    let (lab, _good, _spare, _) = lab_with_one_pod();
    let before = snapshot(&lab);
    let only = |cmd: &'static str| vec![("CNI_COMMAND", cmd), ("CNI_PATH", "/usr/lib/cni")];

    // VERSION: exactly the supported list, whatever stdin says.
    let v = lab.cni_raw(b"{\"cniVersion\":\"1.1.0\"}", &only("VERSION"));
    assert!(v.ok(), "VERSION: {}", v.stdout);
    assert_eq!(
        v.json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        "{}",
        v.stdout
    );
    assert_eq!(v.json["cniVersion"], "1.1.0");
    let v = lab.cni_raw(b"", &only("VERSION"));
    assert!(v.ok(), "VERSION with empty stdin: {}", v.stdout);

    // STATUS: the agent is up and can assign.
    let s = lab.cni_env(&lab.conf(), &only("STATUS"));
    assert!(s.ok(), "STATUS: {}", s.stdout);
    assert!(
        s.stdout.trim().is_empty(),
        "STATUS prints nothing on success: {}",
        s.stdout
    );
    // … and says so when it cannot be reached (code 50), not with a container-env error.
    let mut dead = lab.conf();
    dead["socket"] = json!(lab.dir.join("nobody.sock"));
    let s = lab.cni_env(&dead, &only("STATUS"));
    assert_eq!(s.code(), Some(50), "STATUS without agent: {}", s.stdout);

    // GC of another network: nothing of ours released. GC listing our pod as valid: kept.
    let mut other = lab.conf();
    other["name"] = json!("othernet");
    let g = lab.cni_env(&other, &only("GC"));
    assert!(g.ok(), "GC othernet: {}", g.stdout);
    assert_eq!(snapshot(&lab), before, "GC of another network changed ours");
    let mut keep = lab.conf();
    keep["cni.dev/valid-attachments"] = json!([{"containerID": "good", "ifname": "eth0"}]);
    let g = lab.cni_env(&keep, &only("GC"));
    assert!(g.ok(), "GC with good valid: {}", g.stdout);
    assert_eq!(snapshot(&lab), before, "GC released a valid attachment");

    // GC with no list: nothing is valid, the pod's address and route go.
    let g = lab.cni_env(&lab.conf(), &only("GC"));
    assert!(g.ok(), "GC: {}", g.stdout);
    let after = snapshot(&lab);
    assert_eq!(after.assigned, 0, "{after:?}");
    assert!(after.host_routes.is_empty(), "{after:?}");
    assert!(
        lab.wait_for(std::time::Duration::from_secs(5), || lab
            .host_veths()
            .is_empty()),
        "veth left after GC: {:?}",
        lab.host_veths()
    );
}

/// CNI convention (libcni's `skel`): run without CNI_COMMAND (unset or empty, e.g. by hand),
/// the plugin prints what it is and the CNI versions it speaks (those VERSION reports) on
/// stderr, nothing on stdout, and exits 0, whatever else is set; it reads no stdin and
/// touches nothing. (An unknown CNI_COMMAND is still error 4, in the table above.)
#[test]
fn without_cni_command_it_prints_the_about_text() {
    let run = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(vpcnet_tests::bin("vpcnet"));
        c.env_clear()
            .stdin(std::process::Stdio::null())
            .envs(env.iter().copied());
        c.output().expect("run vpcnet")
    };
    let v = run(&[("CNI_COMMAND", "VERSION")]);
    let versions: Vec<String> = serde_json::from_slice::<Value>(&v.stdout).expect("VERSION output")
        ["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .map(|x| x.as_str().expect("version").to_string())
        .collect();
    let want = format!("CNI protocol versions supported: {}", versions.join(", "));
    for env in [
        &[][..],
        &[("CNI_COMMAND", "")][..],
        &[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/none"),
        ][..],
    ] {
        let o = run(env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "env {env:?}: {err}");
        assert!(o.stdout.is_empty(), "env {env:?}: stdout {:?}", o.stdout);
        assert!(
            err.starts_with(&format!("vpcnet CNI plugin v{}", env!("CARGO_PKG_VERSION"))),
            "env {env:?}: {err}"
        );
        assert!(
            err.lines().any(|l| l == want),
            "env {env:?}: {err} (want {want})"
        );
    }
}
