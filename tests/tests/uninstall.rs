//! `vpcnetd uninstall` (issue 12, item 1), on the real kernel in a private "node" namespace:
//! after install (install-cni, the agent, a pod ADD/DEL) and uninstall, the node's namespace
//! and the paths vpcnet owns are exactly as before install — links, IPv4/IPv6 routes of every
//! table, rules, the nft ruleset, the files under the paths given — while what was there
//! before (a foreign conflist, a foreign plugin, a foreign route and nft table) stays. With a
//! pod present, or an agent running, it refuses and changes nothing; run twice is fine;
//! `--force` takes the pods' network away and leaves no route of ours.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vpcnet_tests::{bin, sh, Lab};

/// The paths the test installs vpcnet into (all in the lab's scratch dir).
struct Paths {
    conf_dir: PathBuf,
    bin_dir: PathBuf,
}

impl Paths {
    fn new(lab: &Lab) -> Paths {
        let p = Paths {
            conf_dir: lab.dir.join("net.d"),
            bin_dir: lab.dir.join("bin"),
        };
        std::fs::create_dir_all(&p.conf_dir).expect("net.d");
        std::fs::create_dir_all(&p.bin_dir).expect("bin");
        p
    }
}

/// Everything uninstall must put back, as text: a diff of two of these is the change.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    links: Vec<String>,
    routes: Vec<String>,
    rules: Vec<String>,
    nft: String,
    files: Vec<String>,
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// `path size mode` of every file and directory under `root` (recursively), and whether the
/// socket-side paths exist.
fn files_under(root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        use std::os::unix::fs::PermissionsExt;
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push(format!(
            "{} {} {:o}",
            p.display(),
            if m.is_dir() { 0 } else { m.len() },
            m.permissions().mode()
        ));
        if m.is_dir() {
            files_under(&p, out);
        }
    }
}

fn snapshot(lab: &Lab, paths: &Paths) -> Snapshot {
    let h = lab.host();
    let mut files = Vec::new();
    for root in [&paths.conf_dir, &paths.bin_dir] {
        files_under(root, &mut files);
    }
    // The state dir and the socket's files live in the lab dir itself (beside logs the test
    // and the plugin write): those paths exactly.
    let sock = lab.socket();
    for p in [
        lab.state_dir(),
        sock.clone(),
        PathBuf::from(format!("{}.lock", sock.display())),
        lab.dir.join("inflight"),
    ] {
        if p.exists() {
            files.push(format!("{} exists", p.display()));
            files_under(&p, &mut files);
        }
    }
    files.sort();
    Snapshot {
        links: lines(&sh(&format!("ip -n {h} -o link show"))),
        routes: lines(&format!(
            "{}{}",
            sh(&format!("ip -n {h} -4 route show table all")),
            sh(&format!("ip -n {h} -6 route show table all"))
        )),
        rules: lines(&format!(
            "{}{}",
            sh(&format!("ip -n {h} -4 rule show")),
            sh(&format!("ip -n {h} -6 rule show"))
        )),
        nft: sh(&format!("ip netns exec {h} nft list ruleset")),
        files,
    }
}

#[track_caller]
fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    assert_eq!(
        before.links, after.links,
        "{what}: links differ\nbefore {before:#?}\nafter {after:#?}"
    );
    assert_eq!(before.routes, after.routes, "{what}: routes differ");
    assert_eq!(before.rules, after.rules, "{what}: rules differ");
    assert_eq!(before.nft, after.nft, "{what}: nft ruleset differs");
    assert_eq!(before.files, after.files, "{what}: files differ");
}

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// `vpcnetd … uninstall` inside the lab's node namespace, with the agent's flags.
fn uninstall(lab: &Lab, paths: &Paths, force: bool) -> Run {
    uninstall_with_mounts(lab, paths, force, &[])
}

/// [`uninstall`], in a private mount namespace where each of `mounts` is a bind mount of
/// itself, as the directories are in the cleanup DaemonSet's container (hostPath volumes).
fn uninstall_with_mounts(lab: &Lab, paths: &Paths, force: bool, mounts: &[&Path]) -> Run {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{}", lab.host()));
    if !mounts.is_empty() {
        // The mounts vanish with the namespace when the command exits.
        let binds: Vec<String> = mounts
            .iter()
            .map(|m| format!("mount --bind '{0}' '{0}'", m.display()))
            .collect();
        cmd.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{} && exec \"$0\" \"$@\"", binds.join(" && ")));
    }
    cmd.arg(bin("vpcnetd"))
        .arg("--socket")
        .arg(lab.socket())
        .arg("--state-dir")
        .arg(lab.state_dir())
        .arg("--cni-conf-dir")
        .arg(&paths.conf_dir)
        .arg("uninstall")
        .arg("--cni-bin-dir")
        .arg(&paths.bin_dir);
    if force {
        cmd.arg("--force");
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("VPCNET_") {
            cmd.env_remove(k);
        }
    }
    let o = cmd.output().expect("run vpcnetd uninstall");
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// What was on the node before vpcnet, and must stay: a veth pair with a route of another
/// protocol in table 100, an nft table of someone else, another CNI's conflist and plugin.
fn foreign_things(lab: &Lab, paths: &Paths) {
    let h = lab.host();
    sh(&format!(
        "ip -n {h} link add {p}d type veth peer name {p}e \
         && ip -n {h} link set {p}d addrgenmode none && ip -n {h} link set {p}e addrgenmode none \
         && ip -n {h} link set {p}d up && ip -n {h} link set {p}e up \
         && ip -n {h} route add 198.51.100.0/24 dev {p}d table 100 proto static",
        p = lab.prefix
    ));
    sh(&format!(
        "ip netns exec {h} nft add table inet {p}other && \
         ip netns exec {h} nft add chain inet {p}other input '{{ type filter hook input priority 0; }}'",
        p = lab.prefix
    ));
    std::fs::write(
        paths.conf_dir.join("99-other.conflist"),
        br#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
    )
    .expect("foreign conflist");
    std::fs::write(paths.bin_dir.join("bridge"), b"#!/bin/sh\nexit 0\n").expect("foreign plugin");
    // The node has its own loopback (install-cni must leave it, uninstall too) but no portmap.
    std::fs::write(paths.bin_dir.join("loopback"), b"#!/bin/sh\necho node\n").expect("loopback");
}

/// install-cni into the lab's bin dir, and the agent writing its conflist into net.d.
fn install(lab: &mut Lab, paths: &Paths) {
    // What the image ships beside the plugin: portmap and loopback.
    let helpers = lab.dir.join("helpers");
    std::fs::create_dir_all(&helpers).expect("helpers");
    for h in ["portmap", "loopback"] {
        std::fs::write(helpers.join(h), format!("#!/bin/sh\necho shipped {h}\n")).expect(h);
    }
    let node_loopback = std::fs::read(paths.bin_dir.join("loopback")).ok();
    let out = Command::new(bin("vpcnetd"))
        .arg("install-cni")
        .arg("--plugin-src")
        .arg(bin("vpcnet"))
        .arg("--cni-bin-dir")
        .arg(&paths.bin_dir)
        .arg("--cni-helpers-src")
        .arg(&helpers)
        .env_remove("VPCNET_CNI_BIN_DIR")
        .output()
        .expect("install-cni");
    assert!(
        out.status.success(),
        "install-cni: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(paths.bin_dir.join("portmap")).expect("portmap installed"),
        b"#!/bin/sh\necho shipped portmap\n"
    );
    if let Some(node) = node_loopback {
        assert_eq!(
            std::fs::read(paths.bin_dir.join("loopback")).expect("loopback"),
            node,
            "the node's own loopback is left alone"
        );
    }
    let conf = paths.conf_dir.display().to_string();
    lab.start_agent(&["--cni-conf-dir", &conf]);
    let conflist = paths.conf_dir.join("10-vpcnet.conflist");
    assert!(
        lab.wait_for(Duration::from_secs(10), || conflist.exists()),
        "the agent wrote no conflist"
    );
}

/// SIGTERM, as a DaemonSet deletion does, and wait for the exit.
fn stop_agent(lab: &mut Lab) {
    let pid = lab.agent_pid();
    sh(&format!("kill -TERM {pid}"));
    let agent = lab.agent.as_mut().expect("agent");
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(10), || !agent.is_running()),
        "agent did not stop on SIGTERM"
    );
    lab.agent = None;
}

/// A pod ADD then DEL, its namespace deleted as the runtime does, and the reaper's work done.
fn pod_add_del(lab: &mut Lab, i: usize) {
    let ns = lab.pod(i);
    let cid = format!("{}c{i}", lab.prefix);
    lab.add(&cid, &ns).expect_ok("ADD");
    lab.del(&cid, &ns).expect_ok("DEL");
    lab.remove_pod(&ns);
    assert!(
        lab.wait_for(Duration::from_secs(10), || lab.host_veths().is_empty()),
        "host veth still there after DEL: {:?}",
        lab.host_veths()
    );
}

#[test]
fn uninstall_restores_the_node_exactly_refuses_with_pods_and_runs_twice() {
    let mut lab = Lab::new("10.231.0.0/16");
    let paths = Paths::new(&lab);
    foreign_things(&lab, &paths);
    let before = snapshot(&lab, &paths);

    install(&mut lab, &paths);
    pod_add_del(&mut lab, 1);
    let ns2 = lab.pod(2);
    let cid2 = format!("{}c2", lab.prefix);
    lab.add(&cid2, &ns2).expect_ok("ADD of the pod that stays");
    assert!(
        lab.prefix_routes()
            .iter()
            .any(|r| r.starts_with("unreachable")),
        "the agent's own prefix should have its unreachable route: {:?}",
        lab.proto_routes()
    );

    // The agent's own routes settle first: the warm loop may claim a spare prefix after the
    // ADD, and its unreachable route follows the claim at once — between the two snapshots
    // below it would read as a change made by the refused uninstall.
    let mut last = lab.prefix_routes();
    assert!(
        vpcnet_tests::wait_until(Duration::from_secs(15), || {
            std::thread::sleep(Duration::from_millis(1000));
            let now = lab.prefix_routes();
            let same = now == last;
            last = now;
            same
        }),
        "the agent's prefix routes never settled: {last:?}"
    );

    // An agent running: refused, nothing changed.
    let s = snapshot(&lab, &paths);
    let r = uninstall(&lab, &paths, false);
    assert_ne!(r.code, 0, "uninstall under a running agent: {}", r.out);
    assert!(r.err.contains("vpcnetd is running"), "{}", r.err);
    assert!(r.err.contains("Nothing was changed"), "{}", r.err);
    assert_same(&s, &snapshot(&lab, &paths), "refused (agent running)");

    stop_agent(&mut lab);
    // A route of ours in another table (an older version's, say): every table is ours to clean.
    sh(&format!(
        "ip -n {h} route add 10.231.99.0/24 dev {p}d table 100 proto 171",
        h = lab.host(),
        p = lab.prefix
    ));

    // A pod still has its address: refused, nothing changed; the message names it.
    let s = snapshot(&lab, &paths);
    let r = uninstall(&lab, &paths, false);
    assert_ne!(r.code, 0, "uninstall with a pod present: {}", r.out);
    assert!(r.err.contains("still have vpcnet addresses"), "{}", r.err);
    assert!(r.err.contains("--force"), "{}", r.err);
    assert!(
        r.err.contains(&format!("container {cid2}")) && r.err.contains("host veth vpc"),
        "names the pod by its state entry and its host veth: {}",
        r.err
    );
    assert_same(&s, &snapshot(&lab, &paths), "refused (pod present)");

    // The pod goes (agent up again for its DEL), the agent stops: uninstall takes it all.
    let conf = paths.conf_dir.display().to_string();
    lab.start_agent(&["--cni-conf-dir", &conf]);
    lab.del(&cid2, &ns2).expect_ok("DEL");
    lab.remove_pod(&ns2);
    assert!(lab.wait_for(Duration::from_secs(10), || lab.host_veths().is_empty()));
    stop_agent(&mut lab);
    assert!(!lab.proto_routes().is_empty(), "routes of ours to remove");
    // A network policy table (an agent with --network-policy=true leaves it across restarts).
    sh(&format!(
        "ip netns exec {} nft add table inet vpcnet-policy",
        lab.host()
    ));

    let r = uninstall(&lab, &paths, false);
    assert_eq!(r.code, 0, "uninstall: {}{}", r.out, r.err);
    for what in [
        "10-vpcnet.conflist",
        "bin/vpcnet",
        "bin/portmap",
        "unreachable 10.231.",
        "table 100 proto 171",
        "table ip vpcnet",
        "table inet vpcnet-policy",
    ] {
        assert!(r.out.contains(what), "report mentions {what}: {}", r.out);
    }
    assert!(lab.proto_routes().is_empty(), "{:?}", lab.proto_routes());
    assert_same(&before, &snapshot(&lab, &paths), "after uninstall");

    // Twice: fine, and still nothing else touched.
    let r = uninstall(&lab, &paths, false);
    assert_eq!(r.code, 0, "second uninstall: {}{}", r.out, r.err);
    assert_same(&before, &snapshot(&lab, &paths), "after a second uninstall");
}

#[test]
fn uninstall_force_takes_the_pods_network_and_leaves_no_route_of_ours() {
    let mut lab = Lab::new("10.232.0.0/16");
    let paths = Paths::new(&lab);
    let before = snapshot(&lab, &paths);
    install(&mut lab, &paths);
    let ns = lab.pod(1);
    let cid = format!("{}c1", lab.prefix);
    let ip = lab.add(&cid, &ns).expect_ok("ADD").ip().expect("pod ip");
    assert_eq!(lab.host_veths().len(), 1);
    // A crash, not a clean stop: the socket file stays behind too.
    lab.agent.as_mut().expect("agent").kill();
    lab.agent = None;
    assert!(lab.socket().exists());

    let r = uninstall(&lab, &paths, true);
    assert_eq!(r.code, 0, "uninstall --force: {}{}", r.out, r.err);
    assert!(r.out.contains("--force"), "{}", r.out);
    assert!(r.out.contains(&ip.to_string()), "names the pod: {}", r.out);
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert!(lab.proto_routes().is_empty(), "{:?}", lab.proto_routes());
    assert_eq!(
        lab.links_in(&ns),
        vec!["lo".to_string()],
        "the pod lost its interface"
    );
    assert_same(&before, &snapshot(&lab, &paths), "after uninstall --force");
}

/// As `manifests/uninstall.yaml` runs it: the state, CNI conf and CNI bin directories are
/// mount points in its container, which cannot be removed. Uninstall empties them of what is
/// ours, keeps them (saying so) and succeeds; everything else is gone as usual.
#[test]
fn uninstall_in_the_cleanup_daemonset_keeps_its_mount_points() {
    let mut lab = Lab::new("10.232.0.0/16");
    let paths = Paths::new(&lab);
    install(&mut lab, &paths);
    pod_add_del(&mut lab, 0);
    stop_agent(&mut lab);
    let state = lab.state_dir();
    let r = uninstall_with_mounts(
        &lab,
        &paths,
        false,
        &[&state, &paths.conf_dir, &paths.bin_dir],
    );
    assert_eq!(r.code, 0, "uninstall with mount points: {}{}", r.out, r.err);
    assert!(
        r.out
            .contains(&format!("kept {}: a mount point", state.display())),
        "{}",
        r.out
    );
    let left = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert!(state.is_dir(), "the mount point stays");
    assert_eq!(left(&state), Vec::<String>::new(), "state dir emptied");
    assert_eq!(
        left(&paths.conf_dir),
        Vec::<String>::new(),
        "conflist removed"
    );
    assert_eq!(
        left(&paths.bin_dir),
        Vec::<String>::new(),
        "plugins removed"
    );
    assert_eq!(
        sh(&format!(
            "ip -n {} -4 route show table all proto 171",
            lab.host()
        )),
        "",
        "routes of ours left"
    );
    // Again (a restarted pod): nothing to do, still fine.
    let r = uninstall_with_mounts(&lab, &paths, false, &[&state]);
    assert_eq!(r.code, 0, "second run: {}{}", r.out, r.err);
}
