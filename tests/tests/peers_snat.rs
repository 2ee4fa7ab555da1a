//! SNAT and peer routing on the real kernel, everything inside the lab's private namespaces:
//!
//! * SNAT: pod traffic to an address outside the VPC leaves with the node's uplink address
//!   (nftables `table ip vpcnet`, masquerade); `--snat-exclude` keeps the pod address for a
//!   destination; `--snat=false` removes the table; pod-to-pod traffic is never translated.
//! * IPv6 SNAT (issue 11): with an IPv6 VPC one `table inet vpcnet` for both families; a
//!   dual-stack pod's IPv6 traffic to an outside namespace arrives masqueraded for a ULA VPC
//!   (`fd00:10::/64`) and with the pod's own address for a global one (`2001:db8:10::/64`, a
//!   documentation prefix, only inside the lab's namespaces), `--snat-v6=always|never` and an
//!   IPv6 `--snat-exclude` override that, pod-to-pod IPv6 is never translated, and a table of
//!   the other family left by an earlier run is deleted.
//! * Peer routing (local datastore, a fake peer's claim written into `claims.json`): another
//!   node's prefix is routed `via` its node IP, our own prefix is `unreachable`, an
//!   unreachable next hop does not stop the rest, a datastore that cannot be read keeps the
//!   routes, a claim that disappears is withdrawn, and a stopped agent withdraws nothing.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpcnet_tests::netns::{connect_from, OneShotListener};
use vpcnet_tests::{sh, CniOutput, Lab};

const VPC: &str = "10.240.0.0/16";

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn flock(fd: i32, operation: i32) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;
const LOCK_EX: i32 = 2;

/// Moves the calling thread into namespace `ns` (only ever called on a thread of our own
/// that is discarded afterwards).
fn enter(ns: &str) {
    let f = File::open(Lab::netns_path(ns)).unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
    // SAFETY: setns only reads the fd, which `f` keeps open for the call; it changes the
    // namespace of this thread alone.
    let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// An extra namespace of the test (named with the lab's unique prefix), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(lab: &Lab, suffix: &str) -> Netns {
        let name = format!("{}{suffix}", lab.prefix);
        vpcnet_tests::add_netns(&name);
        sh(&format!("ip -n {name} link set lo up"));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A veth between the lab host and `other`: `host_if` with `host_addr`, `other_if` with
/// `other_addr` (both CIDR notation), both up. Created inside the host namespace, the peer
/// born in `other`: the machine's root namespace is never touched.
fn uplink(lab: &Lab, other: &str, host_addr: &str, other_addr: &str) {
    let h = lab.host();
    sh(&format!(
        "ip -n {h} link add up0 type veth peer name out0 netns {other}"
    ));
    sh(&format!("ip -n {h} addr add {host_addr} dev up0"));
    sh(&format!("ip -n {h} link set up0 up"));
    sh(&format!("ip -n {other} addr add {other_addr} dev out0"));
    sh(&format!("ip -n {other} link set out0 up"));
}

/// Listens on `listen_ip` inside `listen_ns`, connects from inside `from_ns`, and returns the
/// source address the listener saw.
fn seen_source(listen_ns: &str, listen_ip: Ipv4Addr, from_ns: &str) -> Result<Ipv4Addr, String> {
    let (port_tx, port_rx) = mpsc::channel();
    let listen_ns = listen_ns.to_string();
    let listener = std::thread::spawn(move || -> Result<SocketAddr, String> {
        enter(&listen_ns);
        let l = TcpListener::bind((listen_ip, 0)).map_err(|e| format!("bind: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let _ = port_tx.send(port);
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match l.accept() {
                Ok((_, peer)) => return Ok(peer),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > end {
                        return Err("no connection within 10 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    });
    let Ok(port) = port_rx.recv_timeout(Duration::from_secs(5)) else {
        return Err(format!(
            "listener did not start: {}",
            listener_err(listener)
        ));
    };
    let from_ns = from_ns.to_string();
    let connector = std::thread::spawn(move || -> Result<(), String> {
        enter(&from_ns);
        TcpStream::connect_timeout(&SocketAddr::from((listen_ip, port)), Duration::from_secs(5))
            .map(drop)
            .map_err(|e| format!("connect to {listen_ip}:{port}: {e}"))
    });
    let connected = connector.join().map_err(|_| "connector panicked")?;
    let seen = listener.join().map_err(|_| "listener panicked")?;
    connected?;
    match seen? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(a) => Err(format!("IPv6 peer {a}")),
    }
}

fn listener_err(h: std::thread::JoinHandle<Result<SocketAddr, String>>) -> String {
    match h.join() {
        Ok(Err(e)) => e,
        Ok(Ok(a)) => format!("accepted {a}?"),
        Err(_) => "panicked".into(),
    }
}

fn nft_tables(lab: &Lab) -> String {
    sh(&format!("ip netns exec {} nft list tables", lab.host()))
}

/// Stops the lab's agent (SIGKILL) so another can be started with other flags.
fn stop_agent(lab: &mut Lab) {
    drop(lab.agent.take());
}

#[test]
fn snat_masquerades_traffic_leaving_the_vpc_only() {
    let mut lab = Lab::new(VPC);
    let outside = Netns::new(&lab, "o");
    uplink(&lab, &outside.0, "10.250.99.1/24", "10.250.99.100/24");
    // So the pod address, when it is not translated, can be answered.
    sh(&format!(
        "ip -n {} route add {VPC} via 10.250.99.1",
        outside.0
    ));
    let outside_ip: Ipv4Addr = "10.250.99.100".parse().expect("ip");
    let node_ip: Ipv4Addr = "10.250.99.1".parse().expect("ip");

    // An `inet vpcnet` table a dual-stack run left: an IPv4-only agent deletes it.
    sh(&format!(
        "ip netns exec {} nft add table inet vpcnet",
        lab.host()
    ));
    lab.start_agent(&[]);
    let table = sh(&format!(
        "ip netns exec {} nft list table ip vpcnet",
        lab.host()
    ));
    assert!(
        table.contains("masquerade") && table.contains("ip saddr 10.240.0.0/16"),
        "{table}"
    );
    let tables = nft_tables(&lab);
    assert!(!has_table(&tables, "inet"), "{tables}");
    let ns1 = lab.pod(1);
    let ns2 = lab.pod(2);
    let ip1 = lab
        .add("snat1", &ns1)
        .expect_ok("ADD 1")
        .ip()
        .expect("ip 1");
    let ip2 = lab
        .add("snat2", &ns2)
        .expect_ok("ADD 2")
        .ip()
        .expect("ip 2");

    let seen = seen_source(&outside.0, outside_ip, &ns1).expect("pod -> outside");
    assert_eq!(seen, node_ip, "leaving the VPC: the node's uplink address");
    let seen = seen_source(&ns2, ip2, &ns1).expect("pod -> pod");
    assert_eq!(seen, ip1, "inside the VPC: the pod's own address");

    // Re-applying on restart is idempotent (the table is replaced, not duplicated).
    stop_agent(&mut lab);
    lab.start_agent(&["--snat-exclude", "10.250.99.0/24"]);
    let table = sh(&format!(
        "ip netns exec {} nft list table ip vpcnet",
        lab.host()
    ));
    assert_eq!(table.matches("ip saddr").count(), 1, "{table}");
    assert!(table.contains("10.250.99.0/24"), "{table}");
    let seen = seen_source(&outside.0, outside_ip, &ns1).expect("pod -> excluded");
    assert_eq!(seen, ip1, "--snat-exclude: the pod's own address");
    let seen = seen_source(&ns2, ip2, &ns1).expect("pod -> pod");
    assert_eq!(seen, ip1);

    stop_agent(&mut lab);
    lab.start_agent(&["--snat=false"]);
    let tables = nft_tables(&lab);
    assert!(!tables.contains("vpcnet"), "--snat=false: {tables}");
    let seen = seen_source(&outside.0, outside_ip, &ns1).expect("pod -> outside, no SNAT");
    assert_eq!(seen, ip1);
    // And once more with the table already gone.
    stop_agent(&mut lab);
    lab.start_agent(&["--snat=false"]);
    assert!(!nft_tables(&lab).contains("vpcnet"));
}

/// The IPv6 address an ADD result lists (`…/128`).
fn ip6_of(out: &CniOutput) -> Ipv6Addr {
    out.json["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|a| a.strip_suffix("/128").and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no IPv6 address in {}", out.stdout))
}

/// Listens on `ip` inside `listen_ns`, connects from `from_ns` (TCP): the source address the
/// listener saw.
fn seen_from(listen_ns: &str, ip: IpAddr, from_ns: &str) -> Result<IpAddr, String> {
    let l = OneShotListener::start(listen_ns, ip, Duration::from_secs(10))
        .map_err(|e| format!("listen on {ip} in {listen_ns}: {e}"))?;
    connect_from(from_ns, l.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect from {from_ns} to {}: {e}", l.addr))?;
    l.peer().map(|a| a.ip()).map_err(|e| e.to_string())
}

/// `nft list tables` lists our SNAT table of `family`.
fn has_table(tables: &str, family: &str) -> bool {
    let want = format!("table {family} vpcnet");
    tables.lines().any(|l| l.trim() == want)
}

fn nft_list(lab: &Lab, what: &str) -> String {
    sh(&format!("ip netns exec {} nft list {what}", lab.host()))
}

/// A dual-stack lab (`VPC` and `vpc6`), an outside namespace on an uplink with an address of
/// each family (`uplink6` is the /64 of the IPv6 uplink: `::1` the node, `::100` outside;
/// `nodad`), the outside routing both VPCs back via the node, and two dual-stack pods.
struct Dual {
    lab: Lab,
    outside: Netns,
    pods: [(String, Ipv4Addr, Ipv6Addr); 2],
    node6: Ipv6Addr,
    outside6: Ipv6Addr,
}

const OUTSIDE4: &str = "10.250.99.100";
const NODE4: &str = "10.250.99.1";

fn dual_lab(vpc6: &str, uplink6: &str, extra: &[&str]) -> Dual {
    let mut lab = Lab::new(VPC);
    let outside = Netns::new(&lab, "o");
    uplink(&lab, &outside.0, "10.250.99.1/24", "10.250.99.100/24");
    let node6: Ipv6Addr = format!("{uplink6}1").parse().expect("node6");
    let outside6: Ipv6Addr = format!("{uplink6}100").parse().expect("outside6");
    let (h, o) = (lab.host(), outside.0.clone());
    sh(&format!("ip -n {h} -6 addr add {node6}/64 dev up0 nodad"));
    sh(&format!(
        "ip -n {o} -6 addr add {outside6}/64 dev out0 nodad"
    ));
    sh(&format!("ip -n {o} route add {VPC} via {NODE4}"));
    sh(&format!("ip -n {o} -6 route add {vpc6} via {node6}"));
    let mut args = vec!["--vpc-cidr", vpc6];
    args.extend_from_slice(extra);
    lab.start_agent(&args);
    let mut pod = |i: usize| {
        let ns = lab.pod(i);
        let out = lab.add(&format!("snat6-{i}"), &ns);
        out.expect_ok(&format!("ADD {i}"));
        let v4 = out.ip().expect("IPv4 of a dual pod");
        (ns, v4, ip6_of(&out))
    };
    let pods = [pod(1), pod(2)];
    Dual {
        lab,
        outside,
        pods,
        node6,
        outside6,
    }
}

impl Dual {
    /// The source the outside namespace sees for pod 1, over IPv6.
    fn outside_sees6(&self) -> IpAddr {
        seen_from(&self.outside.0, self.outside6.into(), &self.pods[0].0)
            .expect("pod -> outside over IPv6")
    }

    fn outside_sees4(&self) -> IpAddr {
        let ip: Ipv4Addr = OUTSIDE4.parse().expect("ip");
        seen_from(&self.outside.0, ip.into(), &self.pods[0].0).expect("pod -> outside over IPv4")
    }

    /// Pod 2 sees pod 1's own addresses, over both families.
    fn assert_pod_to_pod_untranslated(&self) {
        let (ns1, a4, a6) = &self.pods[0];
        let (ns2, b4, b6) = &self.pods[1];
        let seen = seen_from(ns2, (*b6).into(), ns1).expect("pod -> pod over IPv6");
        assert_eq!(
            seen,
            IpAddr::from(*a6),
            "pod -> pod IPv6: the pod's own address"
        );
        let seen = seen_from(ns2, (*b4).into(), ns1).expect("pod -> pod over IPv4");
        assert_eq!(
            seen,
            IpAddr::from(*a4),
            "pod -> pod IPv4: the pod's own address"
        );
    }

    fn restart(&mut self, vpc6: &str, extra: &[&str]) {
        stop_agent(&mut self.lab);
        let mut args = vec!["--vpc-cidr", vpc6];
        args.extend_from_slice(extra);
        self.lab.start_agent(&args);
    }
}

#[test]
fn snat_v6_masquerades_a_ula_vpc_leaving_it_only() {
    const VPC6: &str = "fd00:10::/64";
    let mut d = dual_lab(VPC6, "fd99::", &[]);
    let table = nft_list(&d.lab, "table inet vpcnet");
    assert!(
        table.contains("ip6 saddr fd00:10::/64") && table.contains("ip saddr 10.240.0.0/16"),
        "one inet table for both families: {table}"
    );
    assert_eq!(table.matches(" masquerade comment").count(), 2, "{table}");
    let tables = nft_list(&d.lab, "tables");
    assert!(
        !has_table(&tables, "ip"),
        "no ip table beside the inet one: {tables}"
    );

    assert_eq!(
        d.outside_sees6(),
        IpAddr::from(d.node6),
        "ULA VPC: masqueraded"
    );
    assert_eq!(
        d.outside_sees4(),
        NODE4.parse::<IpAddr>().expect("ip"),
        "IPv4 still masqueraded from the inet table"
    );
    d.assert_pod_to_pod_untranslated();

    // A stale `table ip vpcnet` (an earlier IPv4-only run) goes when the inet one is applied.
    sh(&format!(
        "ip netns exec {} nft add table ip vpcnet",
        d.lab.host()
    ));
    // An IPv6 --snat-exclude keeps the pod address towards it.
    d.restart(VPC6, &["--snat-exclude", "fd99::/64"]);
    let tables = nft_list(&d.lab, "tables");
    assert!(!has_table(&tables, "ip"), "{tables}");
    let table = nft_list(&d.lab, "table inet vpcnet");
    assert!(table.contains("fd99::/64"), "{table}");
    assert_eq!(d.outside_sees6(), IpAddr::from(d.pods[0].2), "excluded");
    assert_eq!(d.outside_sees4(), NODE4.parse::<IpAddr>().expect("ip"));

    // --snat-v6=never: the pod's own address; IPv4 unchanged.
    d.restart(VPC6, &["--snat-v6", "never"]);
    let table = nft_list(&d.lab, "table inet vpcnet");
    assert!(!table.contains("ip6 saddr"), "{table}");
    assert_eq!(
        d.outside_sees6(),
        IpAddr::from(d.pods[0].2),
        "--snat-v6=never"
    );
    assert_eq!(d.outside_sees4(), NODE4.parse::<IpAddr>().expect("ip"));

    // --snat=false: neither table.
    d.restart(VPC6, &["--snat=false"]);
    let tables = nft_list(&d.lab, "tables");
    assert!(!has_table(&tables, "inet"), "{tables}");
    assert!(!has_table(&tables, "ip"), "{tables}");
    assert_eq!(d.outside_sees6(), IpAddr::from(d.pods[0].2));
}

#[test]
fn snat_v6_leaves_a_global_vpc_alone_unless_always() {
    const VPC6: &str = "2001:db8:10::/64";
    let mut d = dual_lab(VPC6, "2001:db8:99::", &[]);
    let table = nft_list(&d.lab, "table inet vpcnet");
    assert!(
        !table.contains("ip6 saddr"),
        "auto, global VPC: no IPv6 rule: {table}"
    );
    assert!(table.contains("ip saddr 10.240.0.0/16"), "{table}");
    assert_eq!(
        d.outside_sees6(),
        IpAddr::from(d.pods[0].2),
        "global VPC: the pod's own address"
    );
    assert_eq!(d.outside_sees4(), NODE4.parse::<IpAddr>().expect("ip"));
    d.assert_pod_to_pod_untranslated();

    d.restart(VPC6, &["--snat-v6", "always"]);
    let table = nft_list(&d.lab, "table inet vpcnet");
    assert!(table.contains("ip6 saddr 2001:db8:10::/64"), "{table}");
    assert_eq!(d.outside_sees6(), IpAddr::from(d.node6), "--snat-v6=always");
    // Never towards another VPC address.
    d.assert_pod_to_pod_untranslated();
}

/// Read-modify-write of the lab's claims file under the local datastore's lock.
fn edit_claims(lab: &Lab, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let dir = lab.state_dir();
    std::fs::create_dir_all(&dir).expect("state dir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".claims.lock"))
        .expect("lock file");
    // SAFETY: flock on an fd `lock` keeps open; released when `lock` is closed.
    let rc = unsafe { flock(lock.as_raw_fd(), LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    let path = dir.join("claims.json");
    let mut claims = match File::open(&path) {
        Ok(mut file) => {
            let mut s = String::new();
            file.read_to_string(&mut s).expect("read claims");
            serde_json::from_str::<Value>(&s)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default()
        }
        Err(_) => serde_json::Map::new(),
    };
    f(&mut claims);
    let tmp = dir.join("claims.json.test-tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&Value::Object(claims)).expect("json"),
    )
    .expect("write claims");
    std::fs::rename(&tmp, &path).expect("rename claims");
    drop(lock);
}

/// Overwrites the claims file with something that is not JSON (the datastore fails to list).
fn corrupt_claims(lab: &Lab) {
    std::fs::write(lab.state_dir().join("claims.json"), b"{ not json").expect("corrupt");
}

fn fake_claim(prefix: &str, node: &str, node_ip: &str) -> Value {
    json!({"prefix": prefix, "node": node, "nodeIp": node_ip, "claimedAt": 1})
}

fn has_route(lab: &Lab, needle: &str) -> bool {
    lab.proto_routes().iter().any(|r| r.starts_with(needle))
}

#[track_caller]
fn wait_route(lab: &Lab, needle: &str, present: bool) {
    let ok = lab.wait_for(Duration::from_secs(5), || has_route(lab, needle) == present);
    assert!(
        ok,
        "route `{needle}` {} within 5 s: {:#?}\nagent log:\n{}",
        if present {
            "not installed"
        } else {
            "not withdrawn"
        },
        lab.proto_routes(),
        lab.agent.as_ref().map(|a| a.log_text()).unwrap_or_default()
    );
}

fn degraded(lab: &Lab) -> Vec<String> {
    lab.status()["degraded"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn peer_prefixes_are_routed_and_withdrawn() {
    let mut lab = Lab::new(VPC);
    let peer = Netns::new(&lab, "n");
    uplink(&lab, &peer.0, "10.250.98.1/24", "10.250.98.2/24");
    edit_claims(&lab, |c| {
        c.insert(
            "10.240.0.16/28".into(),
            fake_claim("10.240.0.16/28", "peer-node", "10.250.98.2"),
        );
        // A next hop nobody can reach: that route fails, the others must not.
        c.insert(
            "10.240.0.32/28".into(),
            fake_claim("10.240.0.32/28", "ghost-node", "10.99.0.1"),
        );
    });
    lab.start_agent(&[
        "--node-ip",
        "10.250.98.1",
        "--peer-sync-interval",
        "500ms",
        "--pool-check-interval",
        "200ms",
    ]);
    // The peer's prefix via its node IP, ours unreachable. Which /28 is ours depends on the
    // node's name (claims spread over the VPC from a node-derived seed, issue 10).
    wait_route(&lab, "10.240.0.16/28 via 10.250.98.2 dev up0", true);
    let mut ours = String::new();
    let found = lab.wait_for(Duration::from_secs(5), || {
        match lab
            .proto_routes()
            .into_iter()
            .find(|r| r.starts_with("unreachable 10.240.") && r.contains("/28"))
        {
            Some(r) => {
                ours = r.trim().to_string();
                true
            }
            None => false,
        }
    });
    assert!(
        found,
        "no unreachable route for our prefix within 5 s: {:#?}",
        lab.proto_routes()
    );
    assert!(
        !has_route(&lab, "10.240.0.32/28"),
        "{:#?}",
        lab.proto_routes()
    );
    let d = degraded(&lab);
    assert!(
        d.iter()
            .any(|m| m.starts_with("peers:") && m.contains("10.240.0.32/28")),
        "unreachable next hop reported: {d:?}"
    );

    // A pod gets its /32 next to the unreachable /28, and peer sync leaves it alone.
    let ns = lab.pod(1);
    let ip = lab.add("peer1", &ns).expect_ok("ADD").ip().expect("ip");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        has_route(&lab, &format!("{ip} dev vpc")),
        "pod route kept: {:#?}",
        lab.proto_routes()
    );
    // The pod's /32 beats our unreachable /28.
    assert!(lab.ping(&lab.host(), &ip.to_string()), "host -> pod {ip}");
    // The pool grew (one wholly free prefix is kept warm): its prefix becomes unreachable too.
    let ok = lab.wait_for(Duration::from_secs(5), || {
        let prefixes = lab.status()["prefixes"].as_array().map_or(0, Vec::len);
        let unreachable = lab
            .proto_routes()
            .iter()
            .filter(|r| r.starts_with("unreachable "))
            .count();
        prefixes >= 2 && unreachable == prefixes
    });
    assert!(
        ok,
        "an unreachable route per held prefix: {:#?} {:#}",
        lab.proto_routes(),
        lab.status()["prefixes"]
    );
    let own: Vec<Value> = {
        let mut v = Vec::new();
        edit_claims(&lab, |c| {
            v = c
                .values()
                .filter(|c| c["node"] == json!(format!("{}-node", lab.prefix)))
                .cloned()
                .collect();
        });
        v
    };
    assert!(!own.is_empty(), "the agent's own claims are in the file");

    // The datastore cannot be read: routes are kept, status says why.
    corrupt_claims(&lab);
    let ok = lab.wait_for(Duration::from_secs(5), || {
        degraded(&lab).iter().any(|m| m.starts_with("datastore:"))
    });
    assert!(ok, "datastore degradation reported: {:?}", degraded(&lab));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        has_route(&lab, "10.240.0.16/28 via 10.250.98.2"),
        "peer route kept while the datastore is down: {:#?}",
        lab.proto_routes()
    );
    assert!(has_route(&lab, &ours));

    // The peer's claim disappears (its lease expired): its route is withdrawn, ours stays.
    edit_claims(&lab, |c| {
        c.clear();
        for o in &own {
            c.insert(o["prefix"].as_str().expect("prefix").to_string(), o.clone());
        }
    });
    wait_route(&lab, "10.240.0.16/28", false);
    assert!(has_route(&lab, &ours));
    let ok = lab.wait_for(Duration::from_secs(3), || {
        !degraded(&lab)
            .iter()
            .any(|m| m.starts_with("datastore:") || m.starts_with("peers:"))
    });
    assert!(ok, "degradation cleared: {:?}", degraded(&lab));

    // The peer moves to another address: the route follows (replace).
    edit_claims(&lab, |c| {
        c.insert(
            "10.240.200.0/28".into(),
            fake_claim("10.240.200.0/28", "peer-node", "10.250.98.2"),
        );
    });
    wait_route(&lab, "10.240.200.0/28 via 10.250.98.2", true);
    edit_claims(&lab, |c| {
        c.insert(
            "10.240.200.0/28".into(),
            fake_claim("10.240.200.0/28", "peer-node", "10.250.98.4"),
        );
    });
    wait_route(&lab, "10.240.200.0/28 via 10.250.98.4", true);
    assert_eq!(
        lab.proto_routes()
            .iter()
            .filter(|r| r.starts_with("10.240.200.0/28"))
            .count(),
        1,
        "{:#?}",
        lab.proto_routes()
    );

    // A stopping agent withdraws nothing: pods keep their connectivity.
    let pid = lab.agent_pid();
    sh(&format!("kill -TERM {pid}"));
    let end = Instant::now() + Duration::from_secs(5);
    while lab.agent.as_mut().is_some_and(|a| a.is_running()) {
        assert!(Instant::now() < end, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(has_route(&lab, "10.240.200.0/28 via 10.250.98.4"));
    assert!(has_route(&lab, &ours));
}
