//! Issue 9, "never a duplicate, never a casualty", agent side: a second vpcnetd on the same
//! socket (item 1), lost or damaged state (item 3), a full disk (item 8), and who may read
//! the state (item 9). Each test reproduces the failure on the real kernel in a private host
//! namespace and checks that the running pods come through untouched.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::{bin, host_veth_name, sh_ok, stat, status_allocs, wait_until, Lab};

/// The flags the lab's own agent runs with (see `Lab::start_agent`), for a second process.
fn lab_flags(lab: &Lab) -> Vec<String> {
    lab.agent_flags()
}

/// Runs `vpcnetd <args>` in the lab's host namespace and waits up to `timeout` for it to
/// exit. Returns its exit code (`None`: still running after `timeout`, then killed) and its
/// output.
fn run_vpcnetd(lab: &Lab, args: &[String], timeout: Duration) -> (Option<i32>, String) {
    let log = lab.dir.join(format!(
        "run-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let f = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log fd"))
        .stderr(f)
        .spawn()
        .expect("spawn vpcnetd");
    let end = Instant::now() + timeout;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st.code().unwrap_or(-1));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The pod routes of the host namespace as (address, device).
fn pod_routes(lab: &Lab) -> BTreeSet<(Ipv4Addr, String)> {
    lab.host_routes()
        .iter()
        .filter_map(|r| {
            let mut w = r.split_whitespace();
            let ip = w.next()?.trim_end_matches("/32").parse().ok()?;
            let dev = r.split(" dev ").nth(1)?.split_whitespace().next()?;
            Some((ip, dev.to_string()))
        })
        .collect()
}

/// `n` running pods: (container ID, netns, address), each with its veth and route checked.
fn start_pods(lab: &mut Lab, tag: &str, n: usize) -> Vec<(String, String, Ipv4Addr)> {
    let names = lab.pods(0..n);
    names
        .into_iter()
        .enumerate()
        .map(|(i, ns)| {
            let cid = format!("{tag}{i}");
            let ip = lab.add(&cid, &ns).expect_ok(&cid).ip().expect("ip");
            (cid, ns, ip)
        })
        .collect()
}

/// The kernel still carries every pod: its host veth, its /32 route through that veth, and
/// its address in the pod (reachable from the host).
#[track_caller]
fn assert_pods_untouched(lab: &Lab, pods: &[(String, String, Ipv4Addr)], what: &str) {
    let veths: BTreeSet<String> = lab.host_veths().into_iter().collect();
    let routes = pod_routes(lab);
    for (cid, ns, ip) in pods {
        let v = host_veth_name(cid, "eth0");
        assert!(
            veths.contains(&v),
            "{what}: pod {cid} lost its host veth {v} (veths now {veths:?})"
        );
        assert!(
            routes.contains(&(*ip, v.clone())),
            "{what}: pod {cid} lost its route {ip}/32 dev {v} (routes now {routes:?})"
        );
        assert_eq!(lab.addrs_in(ns, "eth0"), vec![ip.to_string()], "{what}");
        assert!(
            lab.ping(&lab.host(), &ip.to_string()),
            "{what}: host → {ip}"
        );
    }
}

/// Gives the host namespace an address so pings from it have a source the pods answer.
fn host_address(lab: &Lab) {
    vpcnet_tests::sh(&format!(
        "ip -n {} addr replace 192.0.2.1/32 dev lo",
        lab.host()
    ));
}

/// When an agent that should have refused started instead: what it did, for the failure
/// message (does a new ADD get a live pod's address?).
fn evidence(lab: &mut Lab, pods: &[(String, String, Ipv4Addr)]) -> String {
    let veths = lab.host_veths();
    let lost: Vec<&str> = pods
        .iter()
        .filter(|(c, _, _)| !veths.contains(&host_veth_name(c, "eth0")))
        .map(|(c, _, _)| c.as_str())
        .collect();
    format!("pods whose host veth it deleted: {lost:?}")
}

// ---- item 1 ----

/// A second vpcnetd pointed at the socket of a running one (with its own state dir) must
/// refuse before it touches the host: no veth, route or SNAT rule of the first one's pods
/// may go, and the first agent keeps serving.
#[test]
fn second_agent_on_the_same_socket_refuses_and_touches_nothing() {
    let mut lab = Lab::new("10.244.0.0/24");
    lab.start_agent(&["--reconcile-grace", "0s"]);
    host_address(&lab);
    let pods = start_pods(&mut lab, "one", 3);
    assert_pods_untouched(&lab, &pods, "before");
    let nft = format!("ip netns exec {} nft list table ip vpcnet", lab.host());
    assert!(sh_ok(&nft), "the first agent's SNAT table is missing");

    let state2 = lab.dir.join("state-second");
    let args: Vec<String> = [
        "--socket",
        &lab.socket().display().to_string(),
        "--state-dir",
        &state2.display().to_string(),
        "--vpc-cidr",
        &lab.vpc,
        "--node-name",
        "second",
        "--reconcile-grace",
        "0s",
        "--snat",
        "false",
        "--metrics-addr",
        "off",
    ]
    .map(String::from)
    .to_vec();
    let (code, log) = run_vpcnetd(&lab, &args, Duration::from_secs(20));
    assert!(
        matches!(code, Some(c) if c != 0),
        "the second vpcnetd did not refuse (exit {code:?}): {log}"
    );
    assert!(
        log.contains("another vpcnetd") && log.contains(&lab.socket().display().to_string()),
        "refusal does not say why: {log}"
    );
    assert_pods_untouched(&lab, &pods, "after the second vpcnetd");
    assert!(
        sh_ok(&nft),
        "the second vpcnetd removed the first one's SNAT table: {log}"
    );
    assert!(
        !state2.exists(),
        "the second vpcnetd created its state dir before refusing"
    );
    let s = lab.status();
    assert_eq!(stat(&s, "assigned"), 3, "{s:#}");
    assert!(lab.agent.as_mut().expect("agent").is_running());
    // The first agent still serves ADD.
    let p = lab.pod(10);
    lab.add("after", &p)
        .expect_ok("ADD after the second vpcnetd");
}

// ---- item 3 ----

/// State lost (pool.json gone, journal empty) while pods run: the agent refuses to start
/// (naming the state dir and `rebuild-state`) instead of deleting the pods' veths and routes
/// and re-issuing their addresses; `vpcnetd rebuild-state` adopts the running pods from the
/// kernel, after which the agent starts, keeps them, hands out other addresses, and a DEL
/// of an adopted pod releases its address.
#[test]
fn lost_state_refuses_then_rebuild_state_adopts_the_running_pods() {
    let mut lab = Lab::new("10.245.0.0/24");
    lab.start_agent(&["--reconcile-grace", "0s", "--ip-cooldown", "0s"]);
    host_address(&lab);
    let pods = start_pods(&mut lab, "lost", 3);
    lab.agent.as_mut().expect("agent").kill();
    let state = lab.state_dir();
    std::fs::remove_file(state.join("pool.json")).expect("rm pool.json");
    std::fs::write(state.join("pool.journal"), b"").expect("empty journal");

    let mut flags = lab_flags(&lab);
    flags.extend(["--reconcile-grace".into(), "0s".into()]);
    let (code, log) = run_vpcnetd(&lab, &flags, Duration::from_secs(15));
    if code.is_none() {
        let ev = evidence(&mut lab, &pods);
        panic!("vpcnetd started on lost state instead of refusing; {ev}; log: {log}");
    }
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(&state.display().to_string()) && log.contains("rebuild-state"),
        "refusal does not name the state or the way out: {log}"
    );
    assert_pods_untouched(&lab, &pods, "after the refused start");

    // The operator rebuilds the pool from the kernel.
    let mut rebuild = lab_flags(&lab);
    rebuild.push("rebuild-state".into());
    let (code, out) = run_vpcnetd(&lab, &rebuild, Duration::from_secs(15));
    assert_eq!(code, Some(0), "rebuild-state failed: {out}");
    for (_, _, ip) in &pods {
        assert!(out.contains(&ip.to_string()), "{ip} not adopted: {out}");
    }
    assert_pods_untouched(&lab, &pods, "after rebuild-state");

    lab.agent.as_mut().expect("agent").restart();
    let s = lab.status();
    let held: BTreeSet<Ipv4Addr> = status_allocs(&s).iter().map(|a| a.ip).collect();
    let live: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    assert_eq!(held, live, "{s:#}");
    assert_pods_untouched(&lab, &pods, "after the restart on the rebuilt state");
    // New pods get other addresses.
    let p = lab.pod(20);
    let ip = lab.add("new", &p).expect_ok("ADD new").ip().expect("ip");
    assert!(!live.contains(&ip), "{ip} handed out twice");
    // DEL of an adopted pod (by its real container ID) releases its address.
    let (cid0, ns0, ip0) = &pods[0];
    lab.del(cid0, ns0).expect_ok("DEL adopted pod");
    let gone = wait_until(Duration::from_secs(5), || {
        !status_allocs(&lab.status()).iter().any(|a| a.ip == *ip0)
    });
    assert!(gone, "{ip0} still held after DEL: {:#}", lab.status());
    assert_pods_untouched(&lab, &pods[1..], "after DEL of another pod");
}

/// One damaged byte in the last complete (acknowledged) journal record is not a torn write:
/// the agent refuses, names the journal, and the pod the record describes keeps its veth,
/// route and address.
#[test]
fn damaged_acknowledged_journal_record_refuses() {
    let mut lab = Lab::new("10.246.0.0/24");
    // No warm targets: the journal ends with the last pod's assignment.
    lab.start_agent(&[
        "--reconcile-grace",
        "0s",
        "--warm-prefix-target",
        "0",
        "--pool-check-interval",
        "1h",
    ]);
    host_address(&lab);
    let pods = start_pods(&mut lab, "dmg", 3);
    lab.agent.as_mut().expect("agent").kill();
    let journal = lab.state_dir().join("pool.journal");
    let mut bytes = std::fs::read(&journal).expect("journal");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let last = text
        .lines()
        .last()
        .expect("journal has records")
        .to_string();
    assert!(
        last.contains(&pods[2].0),
        "last record is not the last pod's: {text}"
    );
    // Damage one byte of the last complete record: its closing brace.
    assert_eq!(bytes.pop(), Some(b'\n'));
    let at = bytes.len() - 1;
    assert_eq!(bytes[at], b'}', "{text}");
    bytes[at] = b'x';
    bytes.push(b'\n');
    std::fs::write(&journal, &bytes).expect("write journal");

    let (code, log) = run_vpcnetd(&lab, &lab_flags(&lab), Duration::from_secs(15));
    if code.is_none() {
        let ev = evidence(&mut lab, &pods);
        panic!("vpcnetd took the damaged record for a torn write and started; {ev}; log: {log}");
    }
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("pool.journal"),
        "refusal does not name the file: {log}"
    );
    assert_pods_untouched(&lab, &pods, "after the refused start");
    // The damaged file is left as it was, for the operator.
    assert_eq!(std::fs::read(&journal).expect("journal"), bytes);

    // The way out: rebuild from the kernel (the damaged journal is kept aside), start again.
    let mut rebuild = lab_flags(&lab);
    rebuild.push("rebuild-state".into());
    let (code, out) = run_vpcnetd(&lab, &rebuild, Duration::from_secs(15));
    assert_eq!(code, Some(0), "rebuild-state failed: {out}");
    let kept_aside = std::fs::read_dir(lab.state_dir())
        .expect("state dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pool.journal.bad-")
        });
    assert!(kept_aside, "damaged journal not kept: {out}");
    lab.agent.as_mut().expect("agent").restart();
    let live: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    let held: BTreeSet<Ipv4Addr> = status_allocs(&lab.status()).iter().map(|a| a.ip).collect();
    assert_eq!(held, live);
    let p = lab.pod(9);
    let ip = lab
        .add("dmg-new", &p)
        .expect_ok("ADD new")
        .ip()
        .expect("ip");
    assert!(!live.contains(&ip), "{ip} handed out twice");
    assert_pods_untouched(&lab, &pods, "after rebuild and restart");
}

// ---- item 8 ----

/// Kills (and reaps) a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A full disk fails the ADD that hits it with CNI code 5 ("disk full: …"); the agent keeps
/// serving (status), memory stays what is durable (the failed ADD holds nothing, also on
/// disk), and ADDs succeed again once there is space.
#[test]
fn full_disk_fails_the_add_with_code_5_and_the_agent_recovers() {
    let mut lab = Lab::new("10.247.0.0/24");
    host_address(&lab);
    let state = lab.state_dir();
    std::fs::create_dir_all(&state).expect("state dir");
    let mut flags = lab_flags(&lab);
    flags.extend(
        [
            "--warm-ip-target",
            "40",
            "--pool-check-interval",
            "200ms",
            "--metrics-addr",
            "off",
        ]
        .map(String::from),
    );
    // The state dir is a 256 KiB tmpfs in a private mount namespace: nothing outside sees it,
    // and it goes away with the agent.
    let log = std::fs::File::create(lab.dir.join("vpcnetd.log")).expect("log");
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=256k vpcnet-test \"$0\" && exec \"$@\"")
        .arg(&state)
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .args(&flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn vpcnetd");
    let mut agent = Reaped(child);
    let log_path = lab.dir.join("vpcnetd.log");
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let up = wait_until(Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(lab.socket()).is_ok()
    });
    assert!(up, "agent did not serve: {}", agent_log());
    let warm = wait_until(Duration::from_secs(10), || {
        stat(&lab.status(), "available") >= 40
    });
    assert!(warm, "warm pool not filled: {:#}", lab.status());
    // The agent's view of its state dir (its mount namespace).
    let inside = PathBuf::from(format!("/proc/{}/root", agent.0.id()))
        .join(state.strip_prefix("/").expect("absolute state dir"));
    assert!(inside.join("pool.journal").exists(), "{}", inside.display());

    let mut ok = start_pods(&mut lab, "full", 2);
    // Fill the tmpfs.
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Records fill the journal's last page first; within a page's worth of ADDs one must hit
    // the full disk.
    let names = lab.pods(2..40);
    let mut failed = None;
    for (i, ns) in names.iter().enumerate() {
        let cid = format!("full{}", i + 2);
        let o = lab.add(&cid, ns);
        if o.ok() {
            ok.push((cid, ns.clone(), o.ip().expect("ip")));
            continue;
        }
        failed = Some((cid, ns.clone(), o));
        break;
    }
    let (fcid, fns, o) = failed.unwrap_or_else(|| panic!("no ADD failed on a full disk"));
    assert!(
        matches!(agent.0.try_wait(), Ok(None)),
        "the agent died on the full disk: {}",
        agent_log()
    );
    assert_eq!(o.code(), Some(5), "{}", o.stdout);
    assert!(o.msg().contains("disk full"), "{}", o.stdout);
    // Reads are served; the failed ADD holds nothing, the others keep theirs.
    let s = lab.status();
    let held: BTreeSet<(String, Ipv4Addr)> = status_allocs(&s)
        .into_iter()
        .map(|a| (a.container_id, a.ip))
        .collect();
    let want: BTreeSet<(String, Ipv4Addr)> = ok.iter().map(|(c, _, ip)| (c.clone(), *ip)).collect();
    assert_eq!(held, want, "{s:#}");
    assert!(!lab.host_veths().contains(&host_veth_name(&fcid, "eth0")));
    // Still full: the retry fails the same way, the agent still up.
    let o = lab.add(&fcid, &fns);
    assert_eq!(o.code(), Some(5), "{}", o.stdout);
    assert!(matches!(agent.0.try_wait(), Ok(None)), "{}", agent_log());
    // A DEL that cannot be recorded fails and changes nothing: the allocation, its veth and
    // route stay (the runtime retries DEL). A release record is shorter than an assignment,
    // so one may still fit the journal's last page: DEL pods until one fails.
    let mut del_failed = None;
    while let Some((dcid, dns, dip)) = ok.first().cloned() {
        let o = lab.del(&dcid, &dns);
        if o.ok() {
            ok.remove(0);
            continue;
        }
        assert_eq!(o.code(), Some(5), "{}", o.stdout);
        del_failed = Some((dcid, dns, dip));
        break;
    }
    let (dcid, dns, dip) =
        del_failed.unwrap_or_else(|| panic!("every DEL succeeded on a full disk"));
    assert!(
        status_allocs(&lab.status())
            .iter()
            .any(|a| a.container_id == dcid && a.ip == dip),
        "DEL that failed released {dip} anyway"
    );
    assert_pods_untouched(&lab, &ok[..1], "after a failed DEL");
    let want: BTreeSet<(String, Ipv4Addr)> = ok.iter().map(|(c, _, ip)| (c.clone(), *ip)).collect();

    // Space returns: the next ADD goes through.
    std::fs::remove_file(&filler).expect("rm filler");
    let ip = lab
        .add(&fcid, &fns)
        .expect_ok("ADD once space returned")
        .ip()
        .expect("ip");
    assert!(!want.iter().any(|(_, i)| *i == ip), "{ip} handed out twice");
    ok.push((fcid, fns, ip));
    let s = lab.status();
    let held: BTreeSet<(String, Ipv4Addr)> = status_allocs(&s)
        .into_iter()
        .map(|a| (a.container_id, a.ip))
        .collect();
    let want: BTreeSet<(String, Ipv4Addr)> = ok.iter().map(|(c, _, ip)| (c.clone(), *ip)).collect();
    assert_eq!(held, want, "{s:#}");
    // What is on disk is exactly what was acknowledged: load a copy of the state.
    let copy = lab.dir.join("state-copy");
    std::fs::create_dir_all(&copy).expect("copy dir");
    for f in ["pool.json", "pool.journal"] {
        std::fs::copy(inside.join(f), copy.join(f)).expect("copy state");
    }
    let cfg = vpcnet_pool::PoolConfig {
        vpc_cidrs: vec![lab.vpc.parse().expect("vpc")],
        ..Default::default()
    };
    let (_store, pool) = vpcnet_agent::node::store::Store::open(&copy, cfg).expect("load copy");
    let durable: BTreeSet<(String, Ipv4Addr)> = pool
        .allocations()
        .map(|a| (a.key.container_id.clone(), a.ip))
        .collect();
    assert_eq!(durable, want, "disk and memory disagree");
    assert_pods_untouched(&lab, &ok, "after the full disk");
    // The DEL the runtime retries goes through now.
    lab.del(&dcid, &dns).expect_ok("DEL once space returned");
    assert!(!status_allocs(&lab.status()).iter().any(|a| a.ip == dip));
}

// ---- item 9 ----

/// Sends one request line to the agent socket as `uid` (gid 0, the socket's group) and
/// returns the reply line.
fn request_as(lab: &Lab, uid: u32, req: &Value) -> Value {
    let script = r#"use IO::Socket::UNIX; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!"; print $s $ARGV[1], "\n"; my $r = <$s>; print $r;"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            "0",
            "--clear-groups",
            "perl",
            "-e",
            script,
        ])
        .arg(lab.socket())
        .arg(req.to_string())
        .output()
        .expect("perl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "reply not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Every file in `dir` (recursively) with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push((p.clone(), mode(&p)));
        if p.is_dir() {
            out.extend(modes(&p));
        }
    }
    out
}

/// The state dir is 0700 and its files 0600 (also ones an older version left world-readable),
/// and only root may `get` an allocation (it carries the pod's name and container ID).
#[test]
fn state_is_private_and_get_is_root_only() {
    let mut lab = Lab::new("10.248.0.0/24");
    lab.start_agent(&[]);
    let pods = start_pods(&mut lab, "priv", 1);
    // What an older vpcnetd left: a world-readable dir and files.
    lab.agent.as_mut().expect("agent").kill();
    let state = lab.state_dir();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (p, _) in modes(&state) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    lab.agent.as_mut().expect("agent").restart();
    let p = lab.pod(5);
    lab.add("priv-new", &p).expect_ok("ADD");
    assert_eq!(mode(&state), 0o700, "state dir mode");
    let files = modes(&state);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("pool.journal")),
        "{files:?}"
    );
    for (p, m) in &files {
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", p.display());
    }

    // `get` with the pod's metadata: root only.
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let req = serde_json::json!({
        "v": 1,
        "op": "get",
        "key": {"network": "vpctest", "container_id": pods[0].0, "ifname": "eth0"},
    });
    let root = request_as(&lab, 0, &req);
    assert_eq!(
        root["allocation"]["allocation"]["ip"],
        pods[0].2.to_string(),
        "{root}"
    );
    let nobody = request_as(&lab, 65534, &req);
    assert_eq!(nobody["error"]["code"], 101, "non-root got {nobody}");
    assert!(!nobody.to_string().contains(&pods[0].0), "{nobody}");
}
