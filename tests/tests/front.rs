//! The `vpcnet` front (front/, issue 14): the runtime execs it, it hands the command to
//! vpcnetd, which runs it with the plugin's code; whenever vpcnetd does not take it, the front
//! execs `vpcnet-standalone`. Every other test runs the front too (it is `vpcnet`); these
//! check which of the two ran, and that both give the same answers.
//!
//! Each test runs a copy of the front beside a `vpcnet-standalone` that notes each of its
//! runs in a file, then execs the real one: no note means the agent ran the command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vpcnet_tests::cni::{self, CniOutput};
use vpcnet_tests::{bin, host_veth_name, Lab};

/// A copy of the front in the lab's dir with a noting `vpcnet-standalone` beside it.
struct Front {
    front: PathBuf,
    notes: PathBuf,
}

impl Front {
    fn new(lab: &Lab) -> Front {
        let dir = lab.dir.join("front-bin");
        std::fs::create_dir_all(&dir).expect("front dir");
        let front = dir.join("vpcnet");
        std::fs::copy(bin("vpcnet"), &front).expect("copy the front");
        let notes = lab.dir.join("standalone-runs");
        let script = format!(
            "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >>{}\nexec {} \"$@\"\n",
            notes.display(),
            bin("vpcnet-standalone").display()
        );
        let standalone = dir.join("vpcnet-standalone");
        std::fs::write(&standalone, script).expect("standalone wrapper");
        sh_chmod(&standalone);
        Front { front, notes }
    }

    /// Runs the front in namespace `ns`.
    fn run(&self, ns: &str, stdin: &[u8], env: &[(&str, &str)]) -> CniOutput {
        cni::invoke_bin(&self.front, ns, stdin, env, Some(60))
    }

    /// The commands `vpcnet-standalone` ran so far ("ADD c1", …).
    fn standalone_runs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.notes)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// ADDs through the front, all at once, one per pod (container `{prefix}{i}`); the outputs
/// in the pods' order.
fn adds_at_once(
    f: &std::sync::Arc<Front>,
    host: &str,
    conf: &[u8],
    pods: &[String],
    prefix: &str,
) -> Vec<CniOutput> {
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (f, conf, host) = (f.clone(), conf.to_vec(), host.to_string());
            let ns = Lab::netns_path(p);
            let cid = format!("{prefix}{i}");
            std::thread::spawn(move || f.run(&host, &conf, &cni::env("ADD", &cid, "eth0", &ns)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect()
}

fn sh_chmod(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// What a bad-input case is called, its stdin and its environment.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>);

fn conf(lab: &Lab) -> Vec<u8> {
    lab.conf().to_string().into_bytes()
}

#[test]
fn the_agent_runs_add_check_del_and_without_it_the_standalone_does() {
    let mut lab = Lab::new("10.243.0.0/16");
    lab.start_agent(&[]);
    let f = Front::new(&lab);
    let (p0, p1) = (lab.pod(0), lab.pod(1));
    let host = lab.host();
    let ns0 = Lab::netns_path(&p0);
    let ns1 = Lab::netns_path(&p1);

    let a0 = f.run(&host, &conf(&lab), &cni::env("ADD", "f0", "eth0", &ns0));
    a0.expect_ok("ADD f0 through the front");
    let a1 = f.run(&host, &conf(&lab), &cni::env("ADD", "f1", "eth0", &ns1));
    a1.expect_ok("ADD f1 through the front");
    let (ip0, ip1) = (a0.ip().expect("ip0"), a1.ip().expect("ip1"));
    assert_ne!(ip0, ip1);
    assert!(lab.ping(&p0, &ip1.to_string()), "pod 0 → pod 1");
    assert!(lab.ping(&p1, &ip0.to_string()), "pod 1 → pod 0");
    // CHECK with the ADD's result, as the runtime sends it.
    let mut check = lab.conf();
    check["prevResult"] = a0.json.clone();
    f.run(
        &host,
        check.to_string().as_bytes(),
        &cni::env("CHECK", "f0", "eth0", &ns0),
    )
    .expect_ok("CHECK f0 through the front");
    f.run(&host, &conf(&lab), &cni::env("DEL", "f0", "eth0", &ns0))
        .expect_ok("DEL f0 through the front");
    // The agent deletes the veth in the background (its reaper), as for the standalone's DEL.
    let v0 = host_veth_name("f0", "eth0");
    assert!(lab.wait_for(Duration::from_secs(10), || !lab.host_veths().contains(&v0)));
    assert_eq!(
        f.standalone_runs(),
        Vec::<String>::new(),
        "the agent ran them all"
    );
    // The agent's plugin log has the commands, as the standalone plugin writes it.
    let log = std::fs::read_to_string(lab.dir.join("plugin.log")).expect("plugin log");
    assert!(log.contains("Add container=f0 ok"), "{log}");
    assert!(log.contains("Del container=f0 ok"), "{log}");

    // Agent down: the front execs the standalone, which answers as it always did.
    lab.agent.as_mut().expect("agent").kill();
    let a2 = f.run(&host, &conf(&lab), &cni::env("ADD", "f2", "eth0", &ns0));
    a2.expect_refused("ADD without the agent", 11, "socket");
    f.run(&host, &conf(&lab), &cni::env("DEL", "f1", "eth0", &ns1))
        .expect_ok("DEL f1 without the agent");
    assert!(!lab.host_veths().contains(&host_veth_name("f1", "eth0")));
    assert_eq!(f.standalone_runs(), ["ADD f2", "DEL f1"]);
    // VERSION never goes to the agent.
    let v = f.run(&host, b"", &[("CNI_COMMAND", "VERSION")]);
    assert!(v.ok(), "{}", v.stdout);
    assert_eq!(
        v.json["supportedVersions"].as_array().map(Vec::len),
        Some(5),
        "{}",
        v.stdout
    );
}

/// Bad input through the agent gets the standalone's answer, byte for byte, and changes nothing.
#[test]
fn bad_input_gets_the_same_answer_from_the_agent_as_from_the_standalone() {
    let mut lab = Lab::new("10.244.0.0/16");
    lab.start_agent(&[]);
    let f = Front::new(&lab);
    let p0 = lab.pod(0);
    let host = lab.host();
    let ns0 = Lab::netns_path(&p0);
    let host_ns = Lab::netns_path(&host);
    let with = |k: &str, v: Value| {
        let mut c = lab.conf();
        c[k] = v;
        c.to_string().into_bytes()
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "mtu a string",
            with("mtu", json!("x")),
            cni::env("ADD", "b0", "eth0", &ns0).to_vec(),
        ),
        (
            "cniVersion 9.9.9",
            with("cniVersion", json!("9.9.9")),
            cni::env("ADD", "b1", "eth0", &ns0).to_vec(),
        ),
        (
            "no CNI_IFNAME",
            conf(&lab),
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "b2"),
                ("CNI_NETNS", &ns0),
                ("CNI_PATH", cni::CNI_PATH),
            ],
        ),
        (
            "CNI_NETNS missing",
            conf(&lab),
            cni::env("ADD", "b3", "eth0", "/run/netns/vpcnet-no-such-ns").to_vec(),
        ),
        (
            "CNI_NETNS a plain file",
            conf(&lab),
            cni::env("ADD", "b4", "eth0", "/etc/hostname").to_vec(),
        ),
        (
            "CNI_NETNS the host's",
            conf(&lab),
            cni::env("ADD", "b5", "eth0", &host_ns).to_vec(),
        ),
        (
            "CHECK without prevResult",
            conf(&lab),
            cni::env("CHECK", "b6", "eth0", &ns0).to_vec(),
        ),
        (
            "bad CNI_COMMAND",
            conf(&lab),
            cni::env("FROB", "b7", "eth0", &ns0).to_vec(),
        ),
    ];
    for (what, stdin, env) in &cases {
        let via_front = f.run(&host, stdin, env);
        let direct = cni::invoke_bin(&bin("vpcnet-standalone"), &host, stdin, env, Some(60));
        assert_ne!(via_front.exit, 0, "{what}: {}", via_front.stdout);
        assert_eq!(via_front.exit, direct.exit, "{what}");
        assert_eq!(via_front.stdout, direct.stdout, "{what}");
        assert!(
            via_front.code().is_some(),
            "{what}: a CNI error: {}",
            via_front.stdout
        );
    }
    // Only the unknown command went to the standalone (the front forwards the five verbs).
    let runs = f.standalone_runs();
    assert_eq!(runs, ["FROB b7"], "the agent answered the others");
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert_eq!(lab.links_in(&p0), ["lo"]);
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
}

/// The agent runs only what the standalone would have run the same way: a front in another
/// network namespace (its host side would be another namespace) is declined, and the
/// standalone runs there.
#[test]
fn a_front_in_another_namespace_runs_the_standalone() {
    let mut lab = Lab::new("10.245.0.0/16");
    lab.start_agent(&[]);
    let f = Front::new(&lab);
    let other = lab.pod(9);
    let o = f.run(
        &other,
        &conf(&lab),
        &cni::env("DEL", "elsewhere", "eth0", ""),
    );
    o.expect_ok("DEL from another namespace");
    assert_eq!(f.standalone_runs(), ["DEL elsewhere"]);
}

#[test]
fn parallel_adds_through_the_front_get_distinct_working_addresses() {
    let mut lab = Lab::new("10.246.0.0/16");
    lab.start_agent(&[]);
    let f = std::sync::Arc::new(Front::new(&lab));
    let host = lab.host();
    let pods = lab.pods(0..8);
    let conf = conf(&lab);
    let outs = adds_at_once(&f, &host, &conf, &pods, "par");
    let mut ips = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        o.expect_ok(&format!("ADD par{i}"));
        ips.push(o.ip().expect("ip"));
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ips.len(), "one address each: {ips:?}");
    for (i, p) in pods.iter().enumerate() {
        let to = ips[(i + 1) % ips.len()].to_string();
        assert!(lab.ping(p, &to), "pod {i} → {to}");
    }
    assert_eq!(f.standalone_runs(), Vec::<String>::new());
    for (i, p) in pods.iter().enumerate() {
        f.run(
            &host,
            &conf,
            &cni::env("DEL", &format!("par{i}"), "eth0", &Lab::netns_path(p)),
        )
        .expect_ok("DEL");
    }
    assert!(lab.wait_for(Duration::from_secs(10), || lab.host_veths().is_empty()));
}

/// vpcnetd killed while it runs an ADD: the front sees the connection close unanswered and
/// runs the standalone, which finds no agent and fails the ADD (code 11); the runtime's DEL
/// then removes whatever the interrupted ADD left, and nothing is left on the host.
#[test]
fn agent_killed_mid_add_the_add_fails_and_del_cleans_up() {
    let mut lab = Lab::new("10.247.0.0/16");
    lab.start_agent(&[]);
    let f = Front::new(&lab);
    let p0 = lab.pod(0);
    let host = lab.host();
    let ns0 = Lab::netns_path(&p0);
    // The agent binds its front socket before its plugin socket (what start_agent waits for):
    // this ADD cannot reach the standalone for want of it, and so stall there instead.
    let mut exec_socket = lab.socket().into_os_string();
    exec_socket.push(".exec");
    assert!(Path::new(&exec_socket).exists(), "{exec_socket:?}");
    let mut c = lab.conf();
    c["mtu"] = json!(1400); // the veth is created before the agent's reply: there is one to leave
    let conf = c.to_string().into_bytes();
    let pid = lab.agent_pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // A syscall, not `kill(1)`: a minimal root (the fresh-machine check) has no procps.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the agent");
    });
    let mut env = cni::env("ADD", "k0", "eth0", &ns0).to_vec();
    env.push(("VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS", "4000"));
    let o = f.run(&host, &conf, &env);
    killer.join().expect("killer");
    o.expect_refused("ADD whose agent died", 11, "socket");
    assert_eq!(f.standalone_runs(), ["ADD k0"], "the front fell back");
    f.run(&host, &conf, &cni::env("DEL", "k0", "eth0", &ns0))
        .expect_ok("DEL after the failed ADD");
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert_eq!(lab.links_in(&p0), ["lo"]);
}

/// An agent told to stop (SIGTERM: an upgrade) lets the front's commands still running finish
/// — an ADD past its Assign, wiring its veth — before it exits; the front gets its answer.
#[test]
fn a_stopping_agent_finishes_the_front_commands_it_runs() {
    let mut lab = Lab::new("10.248.0.0/16");
    lab.start_agent(&[]);
    let f = std::sync::Arc::new(Front::new(&lab));
    let p0 = lab.pod(0);
    let host = lab.host();
    let ns0 = Lab::netns_path(&p0);
    let conf = conf(&lab);
    let add = {
        let f = f.clone();
        std::thread::spawn(move || {
            let mut env = cni::env("ADD", "s0", "eth0", &ns0).to_vec();
            env.push(("VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS", "1500"));
            f.run(&host, &conf, &env)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let stopped = lab
        .agent
        .as_mut()
        .expect("agent")
        .terminate(Duration::from_secs(15));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "agent exit: {stopped:?}"
    );
    let o = add.join().expect("ADD thread");
    o.expect_ok("ADD running while the agent stopped");
    assert_eq!(
        f.standalone_runs(),
        Vec::<String>::new(),
        "the agent answered it"
    );
    let ip = o.ip().expect("ip").to_string();
    assert!(
        lab.addrs_in(&p0, "eth0").contains(&ip),
        "{:?}",
        lab.addrs_in(&p0, "eth0")
    );
}

/// The agent's command threads stay warm between commands (issue 14: each keeps its runtime
/// and host netlink socket) and keep nothing of a pod: after ADD and CHECK of three pods, one
/// after another, no agent thread is in a pod's network namespace, the agent holds no socket
/// in a pod's namespace (a kept pod-side netlink socket would keep a deleted pod's namespace
/// alive), and a warm thread is there for the next command. A burst of 8 beyond the warm
/// threads runs on threads that end with their command.
#[test]
fn warm_command_threads_keep_nothing_of_a_pod() {
    let mut lab = Lab::new("10.249.0.0/16");
    lab.start_agent(&[]);
    let f = std::sync::Arc::new(Front::new(&lab));
    let host = lab.host();
    let pid = lab.agent_pid();
    let pods = lab.pods(0..3);
    for (i, p) in pods.iter().enumerate() {
        let ns = Lab::netns_path(p);
        let cid = format!("w{i}");
        let a = f.run(&host, &conf(&lab), &cni::env("ADD", &cid, "eth0", &ns));
        a.expect_ok(&format!("ADD {cid}"));
        let mut check = lab.conf();
        check["prevResult"] = a.json.clone();
        f.run(
            &host,
            check.to_string().as_bytes(),
            &cni::env("CHECK", &cid, "eth0", &ns),
        )
        .expect_ok(&format!("CHECK {cid}"));
    }
    assert_eq!(f.standalone_runs(), Vec::<String>::new());
    let threads = |name: &str| agent_threads(pid, name);
    let agent_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("agent netns");
    for t in threads("") {
        let ns = std::fs::read_link(format!("{t}/ns/net")).expect("thread netns");
        assert_eq!(
            ns, agent_ns,
            "thread {t} of the agent is in another namespace"
        );
    }
    let warm = threads("front-cmd").len();
    assert!((1..=4).contains(&warm), "warm command threads: {warm}");
    // The probe sees the agent's own sockets where it has them (its namespace).
    assert!(
        !rtnl_sockets(&host).is_empty(),
        "no rtnetlink socket seen in {host}"
    );
    // The last command's runtime is settled after its reply: give it that moment.
    lab.wait_for(Duration::from_secs(5), || {
        pods.iter().all(|p| rtnl_sockets(p).is_empty())
    });
    for p in &pods {
        let held = rtnl_sockets(p);
        assert!(
            held.is_empty(),
            "a route netlink socket open in {p}: {held:?}"
        );
    }

    // A burst beyond the warm threads: every command answered, the extra threads gone after.
    let more = lab.pods(3..11);
    let outs = adds_at_once(&f, &host, &conf(&lab), &more, "b");
    for (i, o) in outs.iter().enumerate() {
        o.expect_ok(&format!("ADD b{i}"));
    }
    assert_eq!(f.standalone_runs(), Vec::<String>::new());
    assert!(
        lab.wait_for(Duration::from_secs(5), || threads("front-cmd").len() <= 4),
        "command threads after the burst: {}",
        threads("front-cmd").len()
    );
    lab.wait_for(Duration::from_secs(5), || {
        pods.iter()
            .chain(more.iter())
            .all(|p| rtnl_sockets(p).is_empty())
    });
    for p in pods.iter().chain(more.iter()) {
        let held = rtnl_sockets(p);
        assert!(
            held.is_empty(),
            "a route netlink socket open in {p}: {held:?}"
        );
    }
}

/// The threads (`/proc/<pid>/task/<tid>`) of process `pid` named `name` (all if empty).
fn agent_threads(pid: u32, name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .map(|t| t.path())
        .filter(|t| {
            name.is_empty()
                || std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|t| t.display().to_string())
        .collect()
}

/// The route netlink sockets open in namespace `ns` other than the kernel's (`ss -n`: local
/// address `0:<port id>`, the kernel's is `0:0`). Nothing in a test pod's namespace opens
/// one but the plugin's code while it wires the pod, so one there after the command is a
/// socket the agent kept.
fn rtnl_sockets(ns: &str) -> Vec<String> {
    vpcnet_tests::sh(&format!("ip netns exec {ns} ss -a -n -f netlink"))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .filter(|local| local.starts_with("0:") && local != "0:0")
        .collect()
}

/// The commands vpcnetd runs for the front send their requests for its socket straight to its
/// handler (issue 14): with the socket's file gone (the agent still serves the front's), an
/// ADD, CHECK, STATUS and DEL through the front still work, and only the standalone — which
/// must connect — finds no agent. A netconf naming another socket is not taken in process.
#[test]
fn the_agent_answers_its_own_commands_without_its_socket() {
    let mut lab = Lab::new("10.250.0.0/16");
    lab.start_agent(&[]);
    let f = Front::new(&lab);
    let p0 = lab.pod(0);
    let host = lab.host();
    let ns0 = Lab::netns_path(&p0);
    std::fs::remove_file(lab.socket()).expect("remove the plugin socket");

    let a = f.run(&host, &conf(&lab), &cni::env("ADD", "l0", "eth0", &ns0));
    a.expect_ok("ADD with the plugin socket gone");
    let ip = a.ip().expect("ip").to_string();
    assert!(lab.addrs_in(&p0, "eth0").contains(&ip));
    let mut check = lab.conf();
    check["prevResult"] = a.json.clone();
    f.run(
        &host,
        check.to_string().as_bytes(),
        &cni::env("CHECK", "l0", "eth0", &ns0),
    )
    .expect_ok("CHECK");
    f.run(&host, &conf(&lab), &[("CNI_COMMAND", "STATUS")])
        .expect_ok("STATUS");
    assert_eq!(f.standalone_runs(), Vec::<String>::new());

    // A netconf naming another socket whose front socket leads to this agent (a symlink):
    // the agent runs the command, but its requests go to the socket the netconf names,
    // where nobody listens.
    let mut other = lab.conf();
    let elsewhere = lab.dir.join("elsewhere.sock");
    other["socket"] = json!(elsewhere.display().to_string());
    let mut exec_socket = lab.socket().into_os_string();
    exec_socket.push(".exec");
    let mut elsewhere_exec = elsewhere.into_os_string();
    elsewhere_exec.push(".exec");
    std::os::unix::fs::symlink(&exec_socket, &elsewhere_exec).expect("symlink");
    let o = f.run(
        &host,
        other.to_string().as_bytes(),
        &cni::env("ADD", "l1", "eth0", &ns0),
    );
    o.expect_refused("ADD for a socket nobody serves", 11, "socket");
    assert_eq!(
        f.standalone_runs(),
        Vec::<String>::new(),
        "the agent ran it"
    );

    f.run(&host, &conf(&lab), &cni::env("DEL", "l0", "eth0", &ns0))
        .expect_ok("DEL with the plugin socket gone");
    let v0 = host_veth_name("l0", "eth0");
    assert!(lab.wait_for(Duration::from_secs(10), || !lab.host_veths().contains(&v0)));
    // The address went back: restarted (its socket is there again), the agent holds none.
    let agent = lab.agent.as_mut().expect("agent");
    assert!(agent.terminate(Duration::from_secs(15)).is_some());
    agent.restart();
    let held = vpcnet_tests::agent::status_allocs(&lab.status_when_up());
    assert!(held.is_empty(), "{held:?}");
}

/// vpcnetd runs at most 64 front commands at once: with 64 ADDs running (stalled after their
/// Assign), the 65th is declined and the front runs it in `vpcnet-standalone`, which works as
/// always; the 64 then finish. Every pod gets its own address.
#[test]
fn commands_beyond_the_bound_run_in_the_standalone() {
    const BOUND: usize = 64;
    let mut lab = Lab::new("10.251.0.0/16");
    lab.start_agent(&[]);
    let f = std::sync::Arc::new(Front::new(&lab));
    let host = lab.host();
    let pid = lab.agent_pid();
    let pods = lab.pods(0..=BOUND);
    let conf = conf(&lab);
    let stalled: Vec<_> = pods[..BOUND]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (f, conf, host) = (f.clone(), conf.clone(), host.clone());
            let ns = Lab::netns_path(p);
            std::thread::spawn(move || {
                let cid = format!("m{i}");
                let mut env = cni::env("ADD", &cid, "eth0", &ns).to_vec();
                env.push(("VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS", "10000"));
                f.run(&host, &conf, &env)
            })
        })
        .collect();
    let command_threads = || agent_threads(pid, "front-cmd").len();
    assert!(
        lab.wait_for(Duration::from_secs(30), || command_threads() == BOUND),
        "command threads running: {}",
        command_threads()
    );
    assert_eq!(f.standalone_runs(), Vec::<String>::new());
    let last = format!("m{BOUND}");
    let o = f.run(
        &host,
        &conf,
        &cni::env("ADD", &last, "eth0", &Lab::netns_path(&pods[BOUND])),
    );
    o.expect_ok("the ADD beyond the bound");
    assert_eq!(f.standalone_runs(), [format!("ADD {last}")]);
    let mut ips = vec![o.ip().expect("ip")];
    for (i, h) in stalled.into_iter().enumerate() {
        let o = h.join().expect("join");
        o.expect_ok(&format!("ADD m{i}"));
        ips.push(o.ip().expect("ip"));
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), BOUND + 1, "one address each");
    assert_eq!(
        f.standalone_runs().len(),
        1,
        "only the one beyond the bound"
    );
}
