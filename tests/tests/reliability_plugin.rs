//! Issue 9, the plugin's and the agent's servers' items ("never a duplicate, never a
//! casualty"): one test per item, each reproducing the failure the issue describes and
//! asserting the invariant that docs/reliability.md states for it.
//!
//! Everything runs in the lab's private namespaces; "the host" below is the lab's host
//! namespace, never the machine's own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpcnet_tests::{host_veth_name, status_allocs, CniOutput, Lab};

/// What must not change when an input is refused.
#[derive(Debug, PartialEq)]
struct Snapshot {
    host_links: Vec<String>,
    host_routes: String,
    allocations: Vec<(String, String, String)>,
    assigned: u64,
}

fn snapshot(lab: &Lab) -> Snapshot {
    let st = lab.status();
    let mut allocations: Vec<_> = status_allocs(&st)
        .into_iter()
        .map(|a| (a.container_id, a.ifname, a.ip.to_string()))
        .collect();
    allocations.sort();
    let mut host_links = lab.links_in(&lab.host());
    host_links.sort();
    Snapshot {
        host_links,
        // Every route but the agent's own prefix routes, which the warm pool may add any time.
        host_routes: lab
            .ip(&lab.host(), "-4 route show table all")
            .lines()
            .filter(|l| !l.starts_with("unreachable"))
            .collect::<Vec<_>>()
            .join("\n"),
        allocations,
        assigned: st["stats"]["assigned"].as_u64().expect("stats.assigned"),
    }
}

fn env<'a>(cmd: &'a str, cid: &'a str, ifname: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vpcnet_tests::cni::env(cmd, cid, ifname, netns).to_vec()
}

#[track_caller]
fn assert_refused(what: &str, out: &CniOutput, code: u64, names: &str) {
    out.expect_refused(what, code, names);
}

/// CHECK of `cid`/`ifname` in `ns` against `prev`.
fn check(lab: &Lab, cid: &str, ifname: &str, ns: &str, prev: &Value) -> CniOutput {
    let mut conf = lab.conf();
    conf["prevResult"] = prev.clone();
    lab.cni("CHECK", cid, ifname, &Lab::netns_path(ns), &conf)
}

/// The plugin run inside namespace `ns` (not the lab host), as a runtime living there would.
fn cni_in(ns: &str, stdin: &[u8], env: &[(&str, &str)]) -> CniOutput {
    vpcnet_tests::cni_in(ns, stdin, env)
}

// ---- item 2 ----

/// CNI_NETNS naming the host's own namespace (the plugin's, or the agent's) is refused with
/// code 4 naming CNI_NETNS, and nothing changes: no eth0 on the host, its default route stays.
#[test]
fn item2_host_namespace_is_never_wired_as_a_pod() {
    let mut lab = Lab::new("10.240.0.0/16");
    let host = lab.host();
    // The lab host gets an uplink and a default route, like a node has.
    lab.ip(&host, "link add vtup0 type veth peer name vtup1");
    lab.ip(&host, "link set vtup0 up");
    lab.ip(&host, "link set vtup1 up");
    lab.ip(&host, "addr add 192.0.2.1/24 dev vtup0");
    lab.ip(&host, "route add default via 192.0.2.254 dev vtup0");
    lab.start_agent(&[]);
    let before = snapshot(&lab);
    assert!(before.host_routes.contains("default via 192.0.2.254"));
    let agent_ns = format!("/proc/{}/ns/net", lab.agent_pid());
    let host_path = Lab::netns_path(&host);

    for mtu in [None, Some(1400)] {
        let mut conf = lab.conf();
        if let Some(m) = mtu {
            conf["mtu"] = m.into();
        }
        for netns in [host_path.as_str(), agent_ns.as_str()] {
            let what = format!("ADD into {netns} (mtu {mtu:?})");
            let out = lab.cni_env(&conf, &env("ADD", "hostns", "eth0", netns));
            assert_refused(&what, &out, 4, "CNI_NETNS");
            assert_eq!(snapshot(&lab), before, "{what}: the host changed");
        }
    }

    // Also while vpcnetd is unreachable: code 4 naming CNI_NETNS, not code 11 (retry forever).
    let mut down = lab.conf();
    down["socket"] = json!(lab.dir.join("nobody.sock"));
    let out = lab.cni_env(&down, &env("ADD", "hostns", "eth0", &host_path));
    assert_refused("ADD into the host, agent unreachable", &out, 4, "CNI_NETNS");
    assert_eq!(snapshot(&lab), before, "the host changed");

    // A plugin that runs in another namespace than the agent (here: pod namespace p9) must
    // still refuse the agent's namespace: that is the node's, whatever the plugin's own is.
    let other = lab.pod(9);
    let conf = lab.conf().to_string();
    let out = cni_in(
        &other,
        conf.as_bytes(),
        &env("ADD", "agentns", "eth0", &agent_ns),
    );
    assert_refused("ADD into the agent's namespace", &out, 4, "CNI_NETNS");
    assert_eq!(snapshot(&lab), before, "the agent's namespace changed");
    assert_eq!(lab.links_in(&other), vec!["lo".to_string()], "p9 changed");

    // A real pod still works, and its DEL leaves the host's default route alone.
    let pod = lab.pod(1);
    lab.add("c1", &pod).expect_ok("ADD c1");
    lab.del("c1", &pod).expect_ok("DEL c1");
    let routes = lab.ip(&host, "-4 route show default");
    assert!(routes.contains("via 192.0.2.254 dev vtup0"), "{routes}");
}

// ---- item 5 ----

/// Asserts c1 (in `ns`, address `ip`) is fully working: its veth, address, allocation, CHECK,
/// and traffic both ways with c2 (in `peer_ns`, `peer_ip`).
#[track_caller]
fn assert_working(
    lab: &Lab,
    ns: &str,
    ip: &str,
    prev: &Value,
    peer_ns: &str,
    peer_ip: &str,
    what: &str,
) {
    let veth = host_veth_name("c1", "eth0");
    assert!(
        lab.host_veths().contains(&veth),
        "{what}: host veth {veth} of the working pod is gone: {:?}",
        lab.host_veths()
    );
    assert_eq!(lab.addrs_in(ns, "eth0"), vec![ip.to_string()], "{what}");
    let held: Vec<_> = status_allocs(&lab.status())
        .into_iter()
        .filter(|a| a.container_id == "c1")
        .map(|a| a.ip.to_string())
        .collect();
    assert_eq!(held, vec![ip.to_string()], "{what}: c1's allocation");
    let c = check(lab, "c1", "eth0", ns, prev);
    assert!(c.ok(), "{what}: CHECK of the working pod: {}", c.stdout);
    assert!(lab.ping(ns, peer_ip), "{what}: c1 -> c2");
    assert!(lab.ping(peer_ns, ip), "{what}: c2 -> c1");
}

/// A repeated ADD of a working attachment that fails (here: the kernel refuses the veth,
/// EEXIST, because CNI_NETNS names a namespace whose eth0 is taken) never harms the
/// attachment that works: its veth is not deleted as stale, its address is not released.
#[test]
fn item5_failed_repeat_add_never_harms_the_working_attachment() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let p1 = lab.pod(1);
    let p2 = lab.pod(2);
    let p3 = lab.pod(3);
    let a = lab.add("c1", &p1);
    a.expect_ok("ADD c1");
    let b = lab.add("c2", &p2);
    b.expect_ok("ADD c2");
    let ip1 = a.ip().expect("ip1").to_string();
    let ip2 = b.ip().expect("ip2").to_string();
    assert_working(&lab, &p1, &ip1, &a.json, &p2, &ip2, "before");

    for mtu in [None, Some(1400)] {
        let mut conf = lab.conf();
        if let Some(m) = mtu {
            conf["mtu"] = m.into();
        }
        let what = format!("repeat ADD c1 into p2 (mtu {mtu:?})");
        let out = lab.cni("ADD", "c1", "eth0", &Lab::netns_path(&p2), &conf);
        assert!(!out.ok(), "{what} succeeded: {}", out.stdout);
        assert_working(&lab, &p1, &ip1, &a.json, &p2, &ip2, &what);
        // p2's own pod is untouched too.
        let c = check(&lab, "c2", "eth0", &p2, &b.json);
        assert!(c.ok(), "{what}: CHECK c2: {}", c.stdout);
    }

    // A repeat ADD naming an empty namespace must not move the working pod there.
    let out = lab.cni("ADD", "c1", "eth0", &Lab::netns_path(&p3), &lab.conf());
    assert!(!out.ok(), "repeat ADD c1 into p3 succeeded: {}", out.stdout);
    assert_eq!(out.code(), Some(4), "{}", out.stdout);
    assert_eq!(lab.links_in(&p3), vec!["lo".to_string()], "p3 changed");
    assert_working(
        &lab,
        &p1,
        &ip1,
        &a.json,
        &p2,
        &ip2,
        "after repeat ADD into p3",
    );

    // The repeat ADD in the pod's own namespace still succeeds, with the same address and
    // nothing doubled (with and without mtu: the veth is created before or after the reply).
    for mtu in [None, Some(1500)] {
        let mut conf = lab.conf();
        if let Some(m) = mtu {
            conf["mtu"] = m.into();
        }
        let again = lab.cni("ADD", "c1", "eth0", &Lab::netns_path(&p1), &conf);
        again.expect_ok(&format!("repeat ADD c1 in place (mtu {mtu:?})"));
        assert_eq!(again.ip().map(|i| i.to_string()), Some(ip1.clone()));
        assert_eq!(lab.host_veths().len(), 2, "{:?}", lab.host_veths());
        assert_working(
            &lab,
            &p1,
            &ip1,
            &again.json,
            &p2,
            &ip2,
            "after repeat ADD in place",
        );
    }
}

// ---- item 6 ----

/// Two interfaces of one container (eth0 and net1): only eth0 owns the main table's routes;
/// net1 gets its address, neighbour and routes in a table of its own chosen by its source
/// address; deleting net1 leaves eth0 working. Strict rp_filter everywhere (as on a node that
/// sets it: new namespaces inherit it), so asymmetric routing of net1's traffic would show.
#[test]
fn item6_second_interface_never_takes_the_pods_routes() {
    let mut lab = Lab::new("10.240.0.0/16");
    let p1 = lab.pod(1);
    let p2 = lab.pod(2);
    for ns in [lab.host(), p1.clone(), p2.clone()] {
        vpcnet_tests::sh(&format!(
            "ip netns exec {ns} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter; \
             echo 1 > /proc/sys/net/ipv4/conf/default/rp_filter'"
        ));
    }
    lab.start_agent(&[]);
    let peer = lab.add("c2", &p2);
    peer.expect_ok("ADD c2");
    let ip_peer = peer.ip().expect("peer ip").to_string();
    let e = lab.add("c1", &p1);
    e.expect_ok("ADD c1 eth0");
    let ip_e = e.ip().expect("eth0 ip").to_string();
    let n = lab.cni("ADD", "c1", "net1", &Lab::netns_path(&p1), &lab.conf());
    n.expect_ok("ADD c1 net1");
    let ip_n = n.ip().expect("net1 ip").to_string();
    assert_ne!(ip_e, ip_n);

    let default = lab.ip(&p1, "-4 route show default");
    assert!(
        default.contains("dev eth0") && !default.contains("net1"),
        "the default route must stay on eth0: {default}"
    );
    let net1_routes = lab.ip(&p1, "-4 route show dev net1");
    assert!(net1_routes.trim().is_empty(), "net1 routes: {net1_routes}");
    // The results say so: eth0's reports the default route, net1's reports none.
    assert_eq!(e.json["routes"][0]["dst"], "0.0.0.0/0", "{}", e.stdout);
    let n_routes = n.json["routes"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        n_routes, 0,
        "net1's result must report no routes: {}",
        n.stdout
    );
    assert!(check(&lab, "c1", "eth0", &p1, &e.json).ok(), "CHECK eth0");
    let c = check(&lab, "c1", "net1", &p1, &n.json);
    assert!(c.ok(), "CHECK net1: {}", c.stdout);
    assert!(lab.ping(&p2, &ip_n), "peer -> net1's address");
    let rules = lab.ip(&p1, "-4 rule show");
    assert!(
        rules.contains(&format!("from {ip_n} lookup")),
        "no source rule for net1: {rules}"
    );
    assert!(
        vpcnet_tests::sh_ok(&format!(
            "ip netns exec {p1} ping -c1 -W2 -q -I {ip_n} {ip_peer}"
        )),
        "net1's address -> peer (must leave through net1)"
    );

    lab.cni("DEL", "c1", "net1", &Lab::netns_path(&p1), &lab.conf())
        .expect_ok("DEL c1 net1");
    let c = check(&lab, "c1", "eth0", &p1, &e.json);
    assert!(c.ok(), "CHECK eth0 after DEL net1: {}", c.stdout);
    assert!(lab.ping(&p1, &ip_peer), "eth0 -> peer after DEL net1");
    assert!(lab.ping(&p2, &ip_e), "peer -> eth0 after DEL net1");
}

// ---- item 7 ----

const METRICS: &str = "127.0.0.1:9961";

/// Runs `f` on a thread inside namespace `ns` (sockets it makes live there).
fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    vpcnet_tests::in_netns(Some(ns), f)
}

/// One GET with a probe's patience (2 s to connect and to answer). Returns the status line.
fn probe(path: &str) -> Result<String, String> {
    let addr: SocketAddr = METRICS.parse().map_err(|e| format!("{e}"))?;
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Slow-loris connections (a request head that never ends) do not keep /healthz and
/// /metrics from answering within a probe's timeout — 100 of them, as in the issue, and 300,
/// more than the server holds at once — and the server ends them on its own.
#[test]
fn item7_probes_answer_during_a_slow_loris_attack() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&["--metrics-addr", METRICS]);
    let host = lab.host();
    in_ns(&host, || {
        assert_eq!(probe("/healthz").as_deref(), Ok("HTTP/1.1 200 OK"));
        let addr: SocketAddr = METRICS.parse().expect("addr");
        let mut loris = Vec::new();
        for i in 0..300 {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("slow-loris connection {i}: {e}"));
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .expect("partial head");
            loris.push(s);
            if i == 99 || i == 299 {
                std::thread::sleep(Duration::from_millis(200));
                for path in ["/healthz", "/metrics", "/readyz"] {
                    let t = Instant::now();
                    let r = probe(path);
                    assert!(
                        r.as_deref().is_ok_and(|l| l.starts_with("HTTP/1.1 200")),
                        "{path} with {} slow connections: {r:?} after {:?}",
                        i + 1,
                        t.elapsed()
                    );
                }
            }
        }
        // Each slow connection is bounded: the server gives up on the newest (which no
        // probe pushed out) by itself, after its read timeout.
        let s = loris.last_mut().expect("connections");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let t = Instant::now();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "slow-loris connection never ended: {r:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    });
}

/// The unix socket: an idle client is answered with an error (a code) and closed within
/// seconds instead of holding a task forever; bytes that are not UTF-8 get an error reply
/// with a code instead of no reply at all.
#[test]
fn item7_socket_times_out_idle_clients_and_answers_bad_bytes() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);

    let mut idle = UnixStream::connect(lab.socket()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let t = Instant::now();
    let mut reply = String::new();
    let r = idle.read_to_string(&mut reply);
    assert!(
        r.is_ok(),
        "idle connection kept open: {r:?} after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let v: Value = serde_json::from_str(reply.trim())
        .unwrap_or_else(|e| panic!("idle client got no error reply ({e}): {reply:?}"));
    assert!(v["error"]["code"].as_u64().is_some(), "{reply}");

    for bad in [&b"\xff\xfe\xfd\n"[..], b"{\"v\":1,\"op\":\"status\xff\"}\n"] {
        let mut s = UnixStream::connect(lab.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(bad).expect("write");
        let mut reply = String::new();
        let r = s.read_to_string(&mut reply);
        assert!(r.is_ok(), "{bad:?}: {r:?}");
        let v: Value = serde_json::from_str(reply.trim())
            .unwrap_or_else(|e| panic!("{bad:?}: no error reply ({e}): {reply:?}"));
        assert_eq!(v["error"]["code"], 6, "{bad:?}: {reply}");
    }
    // The agent still serves.
    assert!(lab.status()["ready"].as_bool().is_some());
}

// ---- item 10 ----

/// Feeds `stdin_len` bytes (a netconf whose `name` is that long) to an ADD through a pipe
/// and returns the plugin's output and how many bytes it took before it answered.
fn add_with_huge_stdin(lab: &Lab, netns: &str, stdin_len: usize) -> (CniOutput, usize) {
    let mut child =
        vpcnet_tests::cni::command(&lab.host(), &env("ADD", "huge", "eth0", netns), None)
            .spawn()
            .expect("spawn vpcnet");
    let mut pipe = child.stdin.take().expect("stdin");
    let mut conf = lab.conf();
    conf["name"] = json!("NAME");
    let text = conf.to_string();
    let (head, tail) = text.split_once("NAME").expect("placeholder");
    let (head, tail) = (head.to_string(), tail.to_string());
    let fill = stdin_len.saturating_sub(head.len() + tail.len());
    let writer = std::thread::spawn(move || {
        let mut sent = 0usize;
        let chunk = vec![b'n'; 64 * 1024];
        let mut send = |b: &[u8]| -> bool {
            match pipe.write_all(b) {
                Ok(()) => {
                    sent += b.len();
                    true
                }
                Err(_) => false,
            }
        };
        if send(head.as_bytes()) {
            let mut left = fill;
            while left > 0 {
                let n = left.min(chunk.len());
                if !send(&chunk[..n]) {
                    return sent;
                }
                left -= n;
            }
            send(tail.as_bytes());
        }
        sent
    });
    let out = vpcnet_tests::cni::output(child.wait_with_output().expect("wait vpcnet"));
    let sent = writer.join().expect("writer");
    (out, sent)
}

/// (what, stdin, CNI_* variables set to other values, code, what the message names)
type BoundCase = (
    String,
    Vec<u8>,
    Vec<(&'static str, String)>,
    u64,
    &'static str,
);

/// Inputs are bounded: stdin over 1 MiB is refused (code 7, the limit named) without being
/// read whole; over-long fields are refused with the code and name of the field (never
/// code 11, which a runtime retries forever); an interface of that name already in the pod
/// is refused with code 4 naming CNI_IFNAME. Nothing changes for any of them.
#[test]
fn item10_inputs_are_bounded_and_refusals_name_the_field() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let good = lab.pod(0);
    lab.add("good", &good).expect_ok("ADD good");
    let spare = lab.pod(1);
    let netns = Lab::netns_path(&spare);
    let before = snapshot(&lab);

    // 64 MiB of netconf: refused after reading little more than the limit.
    let (out, sent) = add_with_huge_stdin(&lab, &netns, 64 << 20);
    assert_refused("64 MiB stdin", &out, 7, "1 MiB");
    assert!(sent < 4 << 20, "the plugin read {sent} bytes of stdin");
    // A 2 MiB name: the same, never code 11.
    let (out, _) = add_with_huge_stdin(&lab, &netns, 2 << 20);
    assert_refused("2 MiB name", &out, 7, "1 MiB");
    assert_eq!(snapshot(&lab), before, "huge stdin changed state");

    let long = |n: usize| "a".repeat(n);
    let mut cases: Vec<BoundCase> = Vec::new();
    let mut conf = lab.conf();
    conf["name"] = json!(long(300 << 10));
    cases.push((
        "300 KiB name".into(),
        conf.to_string().into_bytes(),
        vec![],
        7,
        "name",
    ));
    let mut conf = lab.conf();
    conf["name"] = json!(long(254));
    cases.push((
        "254-byte name".into(),
        conf.to_string().into_bytes(),
        vec![],
        7,
        "name",
    ));
    let mut conf = lab.conf();
    conf["socket"] = json!(format!("/{}/vpcnetd.sock", long(200)));
    cases.push((
        "200-byte socket path".into(),
        conf.to_string().into_bytes(),
        vec![],
        7,
        "socket",
    ));
    let plain = lab.conf().to_string().into_bytes();
    cases.push((
        "100 KiB CNI_CONTAINERID".into(),
        plain.clone(),
        vec![("CNI_CONTAINERID", long(100 << 10))],
        4,
        "CNI_CONTAINERID",
    ));
    cases.push((
        "100 KiB K8S_POD_NAME in CNI_ARGS".into(),
        plain.clone(),
        vec![(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={}", long(100 << 10)),
        )],
        4,
        "CNI_ARGS",
    ));
    for (what, stdin, vars, code, names) in &cases {
        let mut e: Vec<(&str, String)> = env("ADD", "bounded", "eth0", &netns)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        for (k, v) in vars {
            e.retain(|(ek, _)| ek != k);
            e.push((k, v.clone()));
        }
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = lab.cni_raw(stdin, &e);
        assert_refused(what, &out, *code, names);
        assert_eq!(snapshot(&lab), before, "{what}: state changed");
        assert_eq!(lab.links_in(&spare), vec!["lo".to_string()], "{what}");
    }

    // An eth0 that is already in the pod (another plugin's, a leftover): code 4, CNI_IFNAME.
    lab.ip(&spare, "link add eth0 type veth peer name other0");
    for mtu in [None, Some(1400)] {
        let mut conf = lab.conf();
        if let Some(m) = mtu {
            conf["mtu"] = m.into();
        }
        let out = lab.cni("ADD", "taken", "eth0", &netns, &conf);
        assert_refused(&format!("eth0 taken (mtu {mtu:?})"), &out, 4, "CNI_IFNAME");
        assert!(lab.ip(&spare, "link show eth0").contains("other0"));
    }
    assert_eq!(snapshot(&lab), before, "eth0 taken: state changed");
}
