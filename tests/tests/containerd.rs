//! The closest thing to kubelet that runs here: containerd 1.6's CRI plugin (Debian's package)
//! runs vpcnet (chained with the reference `portmap`) for real pod sandboxes.
//!
//! tests/cri/lab.sh starts containerd and vpcnetd inside one private network namespace (the
//! node's "host" side) with everything under a temp dir; tests/cri/cri_client.py speaks CRI
//! runtime.v1 the way kubelet does. RunPodSandbox ×2 → addresses from the agent, pod ↔ pod
//! ping, then StopPodSandbox + RemovePodSandbox leave no veth, route, allocation or netns.
//!
//! Needs containerd, runc, busybox-static and a python venv with grpcio + grpcio-tools
//! (scripts/deps.sh installs them). Missing ones fail the test unless VPCNET_SKIP_CONTAINERD=1,
//! which skips it (vpcnet_tests::skip: counted as skipped, and scripts/test.sh fails under CI).
//! The conflist is the one vpcnetd writes (`--cni-conf-dir`); LAB_CONFLIST=lab makes lab.sh
//! write its own (vpcnet + portmap, cniVersion 1.0.0) instead. Either one sends the plugin's log
//! to the lab's plugin.log (the agent's with `--cni-log-file`), which the test reads to check
//! every ADD and DEL containerd ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::{bin, host_veth_name, sh, sh_ok, skip, stat, status_allocs, wait_until};

const VPC: &str = "10.245.0.0/16";
const POD_NS: &str = "vpcnet-e2e";

fn cri_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cri")
}

/// One containerd + vpcnetd "node" made by lab.sh; `down` runs on drop, also on panic.
struct CriLab {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl CriLab {
    /// `None` when the prerequisites are missing and VPCNET_SKIP_CONTAINERD=1.
    fn up() -> Option<CriLab> {
        CriLab::up_with("", &[])
    }

    /// [`CriLab::up`] with `agent_flags` added to vpcnetd's; `tag` tells this lab's directory
    /// and namespace from another test's in the same process.
    fn up_with(tag: &str, agent_flags: &[&str]) -> Option<CriLab> {
        let lab_sh = cri_dir().join("lab.sh");
        let check = Command::new(&lab_sh)
            .arg("check")
            .output()
            .expect("run lab.sh check");
        if !check.status.success() {
            let why = String::from_utf8_lossy(&check.stderr).trim().to_string();
            if std::env::var("VPCNET_SKIP_CONTAINERD").as_deref() == Ok("1") {
                skip(
                    "containerd::containerd_cri_runs_pods_on_vpcnet",
                    &format!("VPCNET_SKIP_CONTAINERD=1 and {why}"),
                );
                return None;
            }
            panic!(
                "containerd test prerequisites: {why}; install them with scripts/deps.sh \
                 (VPCNET_VENV points at another venv), or set VPCNET_SKIP_CONTAINERD=1 to skip"
            );
        }
        let _ = bin("vpcnet"); // asserts the workspace was built
        let root = std::env::temp_dir().join("vpcnet-cri");
        // Labs of killed earlier runs (their owner process is gone).
        let _ = Command::new(&lab_sh).arg("reap").arg(&root).status();
        let dir = root.join(format!("t{}{tag}", std::process::id()));
        let out = Command::new(&lab_sh)
            .arg("up")
            .arg(&dir)
            .arg("vpcnet")
            .args(agent_flags)
            .env("VPCNET_BIN_DIR", bin("vpcnet").parent().expect("bin dir"))
            .env("LAB_VPC_CIDR", VPC)
            .env("LAB_NETNS", format!("vt{}xcri{tag}", std::process::id()))
            .env("LAB_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("run lab.sh up");
        assert!(
            out.status.success(),
            "lab.sh up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(CriLab { dir, env })
    }

    fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("lab.env has no {k}: {:?}", self.env))
    }

    /// `cri_client.py <sock> args…` → its JSON output.
    fn cri(&self, args: &[&str]) -> Value {
        let out = Command::new(self.var("PY"))
            .arg(self.var("CLIENT"))
            .arg(self.var("CRI_SOCK"))
            .args(args)
            .output()
            .expect("run cri_client.py");
        assert!(
            out.status.success(),
            "cri_client {args:?} failed: {}\ncontainerd log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("containerd.log", 15)
        );
        serde_json::from_slice(&out.stdout).expect("cri_client prints JSON")
    }

    /// `cmd` inside the node namespace.
    fn node(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.var("NETNS")))
    }

    fn agent_status(&self) -> Value {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.var("NETNS")))
            .arg(bin("vpcnetd"))
            .args(["status", "--json", "--socket", self.var("AGENT_SOCK")])
            .output()
            .expect("vpcnetd status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "vpcnetd status not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn host_links(&self) -> Vec<String> {
        self.node("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The plugin's log (the lab points `logFile` at DIR/plugin.log in either conflist).
    fn plugin_log(&self) -> String {
        let p = self.dir.join("plugin.log");
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "no plugin log {} ({e}): the conflist (by {}) does not point logFile there",
                p.display(),
                self.var("CONFLIST_BY")
            )
        })
    }

    /// The outcome (true: ok) of every `verb` ("Add", "Del") for container `id`, in order,
    /// from the plugin's closing line per call: `<ts> <LEVEL> pid=<n> <Verb> container=<id>
    /// ok in <ms> ms` or `... failed in <ms> ms: code <n> <msg>` (plugin/src/main.rs).
    fn plugin_calls(&self, verb: &str, id: &str) -> Vec<bool> {
        let container = format!("container={id}");
        self.plugin_log()
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() < 6 || w[3] != verb || w[4] != container {
                    return None;
                }
                match (w[1], w[5]) {
                    ("INFO", "ok") => Some(true),
                    ("ERROR", "failed") => Some(false),
                    _ => panic!("unexpected plugin log line: {l}"),
                }
            })
            .collect()
    }

    fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for CriLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (log, n) in [
                ("containerd.log", 30),
                ("vpcnetd.log", 30),
                ("plugin.log", 30),
            ] {
                eprintln!("--- {log} (tail)\n{}", self.log_tail(log, n));
            }
        }
        let st = Command::new(cri_dir().join("lab.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("lab.sh down {} failed: {st:?}", self.dir.display());
        }
    }
}

/// The agent's record of sandbox `id` (ifname eth0), if any. The key is read as the agent
/// writes it (`container_id`, [`vpcnet_tests::STATUS_KEY_FIELDS`]), no other spelling.
fn allocation<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    // Asserts every allocation's key has exactly the agent's fields, so a renamed field
    // cannot turn "no allocation left" into a vacuous pass.
    let _ = status_allocs(status);
    status["allocations"]
        .as_array()
        .expect("status has allocations (run as root)")
        .iter()
        .find(|a| a["key"]["container_id"].as_str() == Some(id) && a["key"]["ifname"] == "eth0")
}

#[test]
fn containerd_cri_runs_pods_on_vpcnet() {
    let started = Instant::now();
    let Some(lab) = CriLab::up() else { return };
    eprintln!(
        "containerd {} up in {:?}; conflist written by {}",
        lab.cri(&["version"])["runtime_version"],
        started.elapsed(),
        lab.var("CONFLIST_BY")
    );

    // containerd 1.6 (libcni 1.1.x) and Debian's portmap 1.1.1 top out at cniVersion 1.0.0: a
    // newer conflist makes every RunPodSandbox fail ("unsupported CNI result version") and its
    // clean-up DEL fail in portmap, leaving the sandbox SANDBOX_UNKNOWN. (Spec 1.1.0 runtimes
    // pick the newest of a conflist's `cniVersions` list they support.)
    let conf_path = lab.dir.join("net.d/10-vpcnet.conflist");
    let conf: Value = serde_json::from_slice(&std::fs::read(&conf_path).expect("conflist"))
        .expect("conflist is JSON");
    assert!(
        ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].contains(&conf["cniVersion"].as_str().unwrap_or("")),
        "the conflist ({} by {}) has cniVersion {}: containerd 1.6 / Debian's portmap accept at \
         most 1.0.0 (write \"cniVersion\": \"1.0.0\" plus \"cniVersions\": [\"1.0.0\", \"1.1.0\"])",
        conf_path.display(),
        lab.var("CONFLIST_BY"),
        conf["cniVersion"]
    );

    assert_eq!(
        conf["plugins"][0]["logFile"].as_str(),
        lab.dir.join("plugin.log").to_str(),
        "the conflist ({} by {}) must send the plugin's log to the lab",
        conf_path.display(),
        lab.var("CONFLIST_BY")
    );

    // RunPodSandbox ×2 (the first with a host port: portmap chains on vpcnet's result).
    let mut pods = Vec::new();
    for (name, port) in [("web-1", Some("18080:80")), ("web-2", None)] {
        let mut args = vec!["run", name, POD_NS];
        args.extend(port);
        let r = lab.cri(&args);
        let id = r["id"].as_str().expect("sandbox id").to_string();
        eprintln!("RunPodSandbox {name}: {} ms", r["ms"]);
        pods.push((name, id));
    }

    let vpc: ipnetwork::Ipv4Network = VPC.parse().expect("vpc");
    let status = lab.agent_status();
    let mut ips = Vec::new();
    let mut netns_paths = Vec::new();
    for (name, id) in &pods {
        let st = lab.cri(&["podstatus", id]);
        assert_eq!(st["state"], "SANDBOX_READY", "{st}");
        let ip: std::net::Ipv4Addr = st["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("sandbox {name} has no IPv4 in PodSandboxStatus: {st}"));
        assert!(vpc.contains(ip), "{name}: {ip} is not in the VPC {VPC}");
        let netns = st["netns"].as_str().expect("netns path").to_string();
        assert!(
            netns.starts_with(&lab.dir.display().to_string()) && Path::new(&netns).exists(),
            "{name}: netns {netns} not under the lab's state dir"
        );

        // The agent's record: same address, containerd's CNI_ARGS as pod metadata.
        let a = allocation(&status, id)
            .unwrap_or_else(|| panic!("no allocation for {name} ({id}) in {status}"));
        assert_eq!(a["ip"], ip.to_string(), "{a}");
        assert_eq!(a["key"]["network"], "vpcnet", "{a}");
        assert_eq!(a["meta"]["namespace"], POD_NS, "K8S_POD_NAMESPACE: {a}");
        assert_eq!(a["meta"]["name"], *name, "K8S_POD_NAME: {a}");

        // Data plane: eth0 IP/32 in the pod, veth + /32 proto-171 route on the host.
        let eth0 = sh(&format!(
            "nsenter --net={netns} ip -4 -o addr show dev eth0"
        ));
        assert!(eth0.contains(&format!("{ip}/32")), "{name} eth0: {eth0}");
        let veth = host_veth_name(id, "eth0");
        assert!(lab.host_links().contains(&veth), "no host veth {veth}");
        let route = lab.node(&format!("ip -4 route show {ip}/32 proto 171"));
        assert!(
            route.contains(&format!("dev {veth}")),
            "route for {ip}: {route:?}"
        );
        ips.push(ip);
        netns_paths.push(netns);
    }
    assert_ne!(ips[0], ips[1], "two sandboxes, one address");

    // portmap got vpcnet's result as prevResult: its DNAT points at sandbox 1's address.
    let nat = lab.node("iptables -t nat -S");
    assert!(
        nat.contains(&format!("--to-destination {}:80", ips[0])),
        "no hostPort DNAT to {}:80:\n{nat}",
        ips[0]
    );

    // Sandbox 1 reaches sandbox 2 and back, through the node namespace.
    for (from, to) in [(0, 1), (1, 0)] {
        let ok = (0..3).any(|_| {
            sh_ok(&format!(
                "nsenter --net={} ping -c1 -W2 -q {}",
                netns_paths[from], ips[to]
            ))
        });
        assert!(
            ok,
            "sandbox {} cannot ping sandbox {} ({})",
            from + 1,
            to + 1,
            ips[to]
        );
    }

    // Each sandbox's ADD: exactly one, and it succeeded.
    for (name, id) in &pods {
        let adds = lab.plugin_calls("Add", id);
        assert_eq!(
            adds,
            [true],
            "{name}: want one successful ADD of {id} in the plugin log:\n{}",
            lab.plugin_log()
        );
    }

    // StopPodSandbox + RemovePodSandbox: containerd runs DEL at StopPodSandbox and again at
    // RemovePodSandbox (which stops the sandbox once more, now with the netns gone); each
    // DEL must succeed, as the plugin's log says (DIR/plugin.log, whoever wrote the conflist).
    for (name, id) in &pods {
        let stop = lab.cri(&["stop", id]);
        let at_stop = lab.plugin_calls("Del", id);
        let rm = lab.cri(&["rm", id]);
        let at_rm = lab.plugin_calls("Del", id);
        eprintln!(
            "StopPodSandbox {name}: {} ms ({} DEL), RemovePodSandbox: {} ms ({} DEL)",
            stop["ms"],
            at_stop.len(),
            rm["ms"],
            at_rm.len() - at_stop.len()
        );
        assert!(
            !at_stop.is_empty() && at_rm.len() > at_stop.len(),
            "{name}: want a DEL of {id} at StopPodSandbox and another at RemovePodSandbox, \
             got {} then {}:\n{}",
            at_stop.len(),
            at_rm.len() - at_stop.len(),
            lab.plugin_log()
        );
        assert!(
            at_rm.iter().all(|ok| *ok),
            "{name}: a DEL of {id} failed (ok/failed in order: {at_rm:?}):\n{}",
            lab.plugin_log()
        );
    }
    assert_eq!(lab.cri(&["list"]), Value::Array(vec![]), "sandboxes left");

    // Nothing left behind: netns, veths, routes, DNAT, allocations (released into cooldown).
    for p in &netns_paths {
        assert!(!Path::new(p).exists(), "pod netns {p} still there");
    }
    let vpc_links = || -> Vec<String> {
        lab.host_links()
            .into_iter()
            .filter(|l| l.starts_with("vpc"))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || vpc_links().is_empty()),
        "host veths left 5 s after RemovePodSandbox: {:?}",
        vpc_links()
    );
    for ip in &ips {
        let r = lab.node(&format!("ip -4 route show {ip}/32 proto 171"));
        assert!(r.trim().is_empty(), "route for {ip} left: {r}");
    }
    let pod_routes: Vec<String> = lab
        .node("ip -4 route show proto 171")
        .lines()
        .filter(|l| l.contains(" dev vpc"))
        .map(str::to_string)
        .collect();
    assert!(
        pod_routes.is_empty(),
        "proto-171 pod routes left: {pod_routes:?}"
    );
    let nat = lab.node("iptables -t nat -S");
    assert!(!nat.contains("CNI-DN-"), "portmap chains left:\n{nat}");
    let status = lab.agent_status();
    for (name, id) in &pods {
        assert!(
            allocation(&status, id).is_none(),
            "allocation of {name} left: {status}"
        );
    }
    assert!(
        stat(&status, "cooling") >= 2,
        "released addresses not in cooldown: {}",
        status["stats"]
    );
    for (_, id) in &pods {
        let cached = sh(&format!(
            "ls /var/lib/cni/results/ | grep -c -- '-{id}-' || true"
        ));
        assert_eq!(cached.trim(), "0", "libcni result cache of {id} left");
    }

    // Nothing the plugin did failed (an unreachable agent, a failed GC, ...).
    let log = lab.plugin_log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors in the plugin log: {errors:#?}");
    eprintln!("containerd test done in {:?}", started.elapsed());
}

/// Dual-stack (issue 11): a sandbox of a node serving both families reports both addresses
/// through CRI, as kubelet reads them (PodSandboxStatus `ip` = the IPv4 one, `additional_ips`
/// = the IPv6 one); both are wired in the sandbox, and RemovePodSandbox takes both routes.
#[test]
fn containerd_dual_stack_sandbox_reports_both_ips() {
    const VPC6: &str = "fd00:45::/64";
    let Some(lab) = CriLab::up_with("d", &["--vpc-cidr", VPC6]) else {
        return;
    };
    let r = lab.cri(&["run", "dual-1", POD_NS]);
    let id = r["id"].as_str().expect("sandbox id").to_string();
    let st = lab.cri(&["podstatus", &id]);
    assert_eq!(st["state"], "SANDBOX_READY", "{st}");
    let ip: std::net::Ipv4Addr = st["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 as the primary IP: {st}"));
    let vpc: ipnetwork::Ipv4Network = VPC.parse().expect("vpc");
    assert!(vpc.contains(ip), "{ip} not in {VPC}: {st}");
    let extra = st["additional_ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(extra.len(), 1, "want one additional IP: {st}");
    let ip6: std::net::Ipv6Addr = extra[0]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("additional IP is not IPv6: {st}"));
    let vpc6: ipnetwork::Ipv6Network = VPC6.parse().expect("vpc6");
    assert!(vpc6.contains(ip6), "{ip6} not in {VPC6}: {st}");
    let netns = st["netns"].as_str().expect("netns path").to_string();
    let eth0 = sh(&format!("nsenter --net={netns} ip -o addr show dev eth0"));
    assert!(eth0.contains(&format!("inet {ip}/32")), "{eth0}");
    assert!(
        eth0.contains(&format!("inet6 {ip6}/128")) && !eth0.contains("tentative"),
        "{eth0}"
    );
    let veth = host_veth_name(&id, "eth0");
    let r6 = lab.node(&format!("ip -6 route show {ip6}/128 proto 171"));
    assert!(r6.contains(&format!("dev {veth}")), "IPv6 route: {r6:?}");
    // The node reaches the sandbox over IPv6 (a node address of its own on lo: private ns).
    lab.node("ip -6 addr add fd00:ffff::1/128 dev lo nodad");
    assert!(
        (0..3).any(|_| sh_ok(&format!(
            "ip netns exec {} ping -c1 -W2 -q {ip6}",
            lab.var("NETNS")
        ))),
        "node cannot ping the sandbox at {ip6}"
    );
    lab.cri(&["stop", &id]);
    lab.cri(&["rm", &id]);
    assert!(
        lab.plugin_calls("Del", &id).iter().all(|ok| *ok),
        "{}",
        lab.plugin_log()
    );
    let left6 = lab.node(&format!("ip -6 route show {ip6}/128"));
    assert!(left6.trim().is_empty(), "IPv6 route left: {left6}");
    let status = lab.agent_status();
    assert!(allocation(&status, &id).is_none(), "{status}");
}
