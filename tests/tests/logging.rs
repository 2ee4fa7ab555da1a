//! Logs and shutdown, with the real binaries:
//!
//! * the agent's log (`--log-format`, `--log-level`): JSON lines only on stderr, each with
//!   level, target and message, from the start-up line to the last; `warn` hides the info
//!   start-up line; `check-config` refuses bad values naming the flag (the IPv6 ones of
//!   issue 11 too), and `run` refuses an IPv6 `--vpc-cidr` with many nodes and no IPv6
//!   `--node-ip` before touching anything;
//! * SIGTERM: the socket goes at once, a request already accepted is still answered, then the
//!   agent exits 0 within a bound;
//! * the plugin's log: rotated to `<logFile>.1` at `logMaxBytes` (also under concurrent
//!   plugins: whole lines only, one old file), and no line for a successful STATUS at info.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpcnet_tests::{bin, sh, wait_until, Lab};

/// A vpcnetd in the lab's host namespace with stdout and stderr in files of their own.
struct Agent {
    child: Child,
    stderr: PathBuf,
    stdout: PathBuf,
}

impl Agent {
    fn start(lab: &Lab, extra: &[&str]) -> Agent {
        let stderr = lab.dir.join("vpcnetd.stderr");
        let stdout = lab.dir.join("vpcnetd.stdout");
        let file = |p: &Path| std::fs::File::create(p).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", lab.host()))
            .arg(bin("vpcnetd"))
            .args(["--socket", &lab.socket().display().to_string()])
            .args(["--state-dir", &lab.state_dir().display().to_string()])
            .args(["--vpc-cidr", &lab.vpc, "--node-name", "log-node"])
            .args(["--metrics-addr", "off"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .expect("spawn vpcnetd");
        let mut a = Agent {
            child,
            stderr,
            stdout,
        };
        // The socket file, not a probe connection: a connection closed unanswered is a line
        // in the log too.
        let up = wait_until(Duration::from_secs(15), || {
            lab.socket().exists() || matches!(a.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            up && matches!(a.child.try_wait(), Ok(None)),
            "vpcnetd did not serve: {}",
            a.stderr()
        );
        a
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn sigterm(&self) {
        sh(&format!("kill -TERM {}", self.child.id()));
    }

    /// Its exit status, if it exits within `bound`.
    fn wait(&mut self, bound: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + bound;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM, then: exit 0 within 5 s.
fn stop(agent: &mut Agent) {
    agent.sigterm();
    let st = agent.wait(Duration::from_secs(5));
    assert!(
        st.is_some_and(|s| s.success()),
        "vpcnetd did not exit 0 within 5 s of SIGTERM ({st:?}): {}",
        agent.stderr()
    );
}

#[test]
fn json_log_is_only_json_lines_from_the_start_up_line_on() {
    let mut lab = Lab::new("10.241.0.0/16");
    let mut agent = Agent::start(&lab, &["--log-format", "json"]);
    // Some work, so there is more to log than start and stop.
    let ns = lab.pod(0);
    lab.add("json-log", &ns).expect_ok("ADD");
    lab.del("json-log", &ns).expect_ok("DEL");
    stop(&mut agent);
    let text = agent.stderr();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{text}"))
        })
        .collect();
    for (v, l) in lines.iter().zip(text.lines()) {
        for field in ["level", "target", "message", "timestamp"] {
            assert!(v[field].is_string(), "no string {field:?} in {l}");
        }
    }
    let first = lines.first().expect("a log line");
    assert_eq!(first["message"], "vpcnetd starting", "{text}");
    assert_eq!(first["level"], "INFO");
    assert_eq!(
        first["node"], "log-node",
        "structured fields are fields: {text}"
    );
    assert!(first["target"]
        .as_str()
        .is_some_and(|t| t.starts_with("vpcnet_agent")));
    assert_eq!(lines.last().expect("lines")["message"], "stopped", "{text}");
    assert_eq!(
        std::fs::read_to_string(&agent.stdout).expect("stdout"),
        "",
        "the agent logs to stderr only"
    );
}

#[test]
fn warn_level_hides_the_info_start_up_line() {
    let lab = Lab::new("10.242.0.0/16");
    let mut agent = Agent::start(&lab, &["--log-level", "warn"]);
    stop(&mut agent);
    let text = agent.stderr();
    assert!(!text.contains("starting"), "{text}");
    assert!(!text.contains("INFO"), "{text}");
    // The same agent at the default level does say it.
    let mut agent = Agent::start(&lab, &[]);
    stop(&mut agent);
    let text = agent.stderr();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("INFO") && first.contains("vpcnetd starting"),
        "{text}"
    );
}

#[test]
fn check_config_refuses_bad_log_flags_naming_them() {
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("vpcnetd"))
            .args(["--vpc-cidr", "10.0.0.0/16"])
            .args(args)
            .arg("check-config")
            .env_remove("VPCNET_LOG_LEVEL")
            .env_remove("VPCNET_LOG_FORMAT")
            .envs(env.iter().copied())
            .output()
            .expect("vpcnetd check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(&["--log-format", "xml"], &[]);
    assert!(!ok && err.contains("--log-format"), "{err}");
    let (ok, err) = check(&[], &[("VPCNET_LOG_FORMAT", "xml")]);
    assert!(!ok && err.contains("--log-format"), "{err}");
    let (ok, err) = check(&["--log-level", "loud"], &[]);
    assert!(!ok && err.contains("--log-level"), "{err}");
    let (ok, err) = check(&[], &[("VPCNET_LOG_LEVEL", "info,kube=noisy")]);
    assert!(!ok && err.contains("--log-level"), "{err}");
    let (ok, err) = check(
        &["--log-format", "json"],
        &[("VPCNET_LOG_LEVEL", "info,vpcnet_agent::loops=debug")],
    );
    assert!(ok, "{err}");
}

/// `--vpc-cidr` takes IPv6 (the family decides the mode) and `--prefix-len-v6` is checked:
/// bad values name the flag. A valid dual-stack configuration passes on one node; with many
/// nodes (a shared datastore) it needs an IPv6 `--node-ip` and is refused naming it.
#[test]
fn check_config_checks_the_ipv6_flags_naming_them() {
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("vpcnetd"))
            .args(args)
            .arg("check-config")
            .env_remove("VPCNET_VPC_CIDR")
            .env_remove("VPCNET_PREFIX_LEN_V6")
            .envs(env.iter().copied())
            .output()
            .expect("vpcnetd check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // IPv4-only: unchanged, whatever the (valid) IPv6 prefix length.
    let (ok, err) = check(&["--vpc-cidr", "10.0.0.0/16", "--prefix-len-v6", "96"], &[]);
    assert!(ok, "{err}");
    let (ok, err) = check(&["--vpc-cidr", "fd00::/64", "--prefix-len-v6", "60"], &[]);
    assert!(
        !ok && err.contains("--prefix-len-v6 60: shorter than /64"),
        "{err}"
    );
    let (ok, err) = check(
        &["--vpc-cidr", "10.0.0.0/16"],
        &[("VPCNET_PREFIX_LEN_V6", "121")],
    );
    assert!(!ok && err.contains("--prefix-len-v6 121"), "{err}");
    let (ok, err) = check(&["--vpc-cidr", "fd00::1::/64"], &[]);
    assert!(!ok && err.contains("--vpc-cidr"), "{err}");
    // Valid dual-stack flags, from the environment as the DaemonSet sets them: served.
    let (ok, err) = check(&[], &[("VPCNET_VPC_CIDR", "10.0.0.0/16,fd00:10::/64")]);
    assert!(ok, "{err}");
    // Many nodes without an IPv6 node address: refused naming --node-ip and the IPv6 CIDR;
    // with one (a comma list, as VPCNET_NODE_IP holds it), fine.
    let etcd = [
        ("VPCNET_VPC_CIDR", "10.0.0.0/16,fd00:10::/64"),
        ("VPCNET_DATASTORE", "etcd"),
        ("VPCNET_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
    ];
    let (ok, err) = check(&["--node-ip", "192.0.2.7"], &etcd);
    assert!(
        !ok && err.contains("--node-ip") && err.contains("fd00:10::/64") && err.contains("IPv6"),
        "{err}"
    );
    let (ok, err) = check(&["--node-ip", "192.0.2.7,fd00:1::7"], &etcd);
    assert!(ok, "{err}");
}

/// `run` with an IPv6 `--vpc-cidr` and many nodes (etcd) but no IPv6 `--node-ip` exits 1
/// naming the flag, before any lock, socket, state file, route or sysctl.
#[test]
fn run_refuses_an_ipv6_vpc_without_an_ipv6_node_ip_before_touching_anything() {
    let lab = Lab::new("10.244.0.0/16");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .args(["--socket", &lab.socket().display().to_string()])
        .args(["--state-dir", &lab.state_dir().display().to_string()])
        .args(["--vpc-cidr", &lab.vpc, "--vpc-cidr", "fd00:44::/64"])
        .args(["--metrics-addr", "off", "--node-name", "v6-node"])
        .args([
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ])
        .args(["--node-ip", "192.0.2.7"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpcnetd");
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("vpcnetd output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "vpcnetd kept running with an IPv6 VPC: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--node-ip") && err.contains("fd00:44::/64"),
        "{err}"
    );
    let forwarding = sh(&format!(
        "ip netns exec {} cat /proc/sys/net/ipv6/conf/all/forwarding",
        lab.host()
    ));
    assert_eq!(forwarding.trim(), "0", "IPv6 forwarding changed");
    assert!(!lab.socket().exists(), "socket created");
    assert!(!lab.state_dir().exists(), "state dir created");
    assert!(lab.proto_routes().is_empty(), "{:?}", lab.proto_routes());
}

#[test]
fn sigterm_answers_the_request_in_flight_then_exits_0_without_its_socket() {
    let lab = Lab::new("10.243.0.0/16");
    let mut agent = Agent::start(&lab, &[]);
    // A client connected before the signal, its request not yet sent.
    let mut conn = UnixStream::connect(lab.socket()).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    agent.sigterm();
    assert!(
        wait_until(Duration::from_secs(2), || !lab.socket().exists()),
        "socket not removed on SIGTERM: {}",
        agent.stderr()
    );
    assert!(
        UnixStream::connect(lab.socket()).is_err(),
        "still accepting after SIGTERM"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.wait(Duration::ZERO).is_none(),
        "exited with a request in flight: {}",
        agent.stderr()
    );
    // Its request is still answered, in full.
    conn.write_all(b"{\"v\":1,\"op\":\"status\"}\n")
        .expect("send");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).expect("reply");
    let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
    assert!(
        reply["status"]["ready"].is_boolean(),
        "not a status reply: {reply}"
    );
    drop(conn);
    let st = agent.wait(Duration::from_secs(5));
    assert!(
        st.is_some_and(|s| s.success()),
        "not exit 0 after the drain ({st:?}): {}",
        agent.stderr()
    );
    assert!(!lab.socket().exists());
}

/// The plugin's log lines: `<ts> <LEVEL> pid=<n> <text>`, each whole.
fn assert_whole_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "torn last line in {}",
        path.display()
    );
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert!(
            w.len() >= 4
                && w[0].parse::<f64>().is_ok()
                && ["ERROR", "INFO", "DEBUG"].contains(&w[1])
                && w[2].starts_with("pid="),
            "not a whole log line in {}: {l:?}",
            path.display()
        );
    }
    text.lines().count()
}

fn status_env() -> [(&'static str, &'static str); 2] {
    [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")]
}

#[test]
fn plugin_log_rotates_at_the_cap_keeping_one_old_file() {
    let mut lab = Lab::new("10.244.0.0/16");
    lab.start_agent(&[]);
    const CAP: u64 = 2048;
    let log = lab.dir.join("rot.log");
    let old = lab.dir.join("rot.log.1");
    let mut conf = lab.conf();
    conf["logFile"] = json!(log);
    conf["logLevel"] = json!("debug");
    conf["logMaxBytes"] = json!(CAP);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    // A successful STATUS is one debug line (~70 bytes): 30 fill the file past 2 KiB.
    let mut calls = 0;
    while !old.exists() {
        assert!(
            calls < 100,
            "no rotation after {calls} calls: {} bytes",
            size(&log)
        );
        lab.cni_env(&conf, &status_env()).expect_ok("STATUS");
        calls += 1;
    }
    assert!(
        calls > 10,
        "rotated after only {calls} calls of a 2 KiB cap"
    );
    let rotated = std::fs::read(&old).expect(".1");
    assert!(
        (CAP..CAP + 200).contains(&(rotated.len() as u64)),
        "rotated at {} bytes (cap {CAP})",
        rotated.len()
    );
    assert_eq!(
        assert_whole_lines(&log),
        1,
        "the new file starts with the line that rotated it"
    );
    assert_eq!(assert_whole_lines(&old) + 1, calls, "no line lost");
    // Concurrent plugins: still whole lines, still one old file, each under the cap + slack.
    for _ in 0..6 {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let conf = conf.clone();
                let host = lab.host();
                std::thread::spawn(move || {
                    vpcnet_tests::cni_in(&host, conf.to_string().as_bytes(), &status_env())
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("thread").ok());
        }
    }
    assert_ne!(std::fs::read(&old).expect(".1"), rotated, "rotated again");
    for p in [&log, &old] {
        assert_whole_lines(p);
        assert!(
            size(p) < CAP + 1024,
            "{} has {} bytes",
            p.display(),
            size(p)
        );
    }
    let names: Vec<String> = std::fs::read_dir(&lab.dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("rot.log"))
        .collect();
    assert_eq!(names.len(), 2, "only the log and one old file: {names:?}");
}

#[test]
fn status_writes_no_line_at_info() {
    let mut lab = Lab::new("10.245.0.0/16");
    lab.start_agent(&[]);
    let log = lab.dir.join("info.log");
    let mut conf = lab.conf();
    conf["logFile"] = json!(log);
    conf["logLevel"] = json!("info");
    for _ in 0..3 {
        lab.cni_env(&conf, &status_env()).expect_ok("STATUS");
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("Status"), "STATUS logged at info: {text}");
    // The same log does get the info line of an ADD, and a failing STATUS is an error line.
    let ns = lab.pod(0);
    let out = lab.cni("ADD", "info-pod", "eth0", &Lab::netns_path(&ns), &conf);
    out.expect_ok("ADD");
    let mut dead = conf.clone();
    dead["socket"] = json!(lab.dir.join("nobody.sock"));
    assert_eq!(lab.cni_env(&dead, &status_env()).code(), Some(50));
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(" INFO ") && lines[0].contains("Add container=info-pod ok"),
        "{text}"
    );
    assert!(
        lines[1].contains(" ERROR ") && lines[1].contains("Status"),
        "{text}"
    );
    // At debug it is there: the filter, not a missing log, kept it out.
    conf["logLevel"] = json!("debug");
    lab.cni_env(&conf, &status_env()).expect_ok("STATUS");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains(" DEBUG ") && l.contains("Status")),
        "{text}"
    );
}
