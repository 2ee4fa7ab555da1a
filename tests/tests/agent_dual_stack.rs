//! The agent serves IPv6 (issue 11, docs/dual-stack.md), driven through its socket with the
//! plugin's own client (no plugin: the data plane is the plugin's and is tested with it). A
//! real `vpcnetd` in a private "node" namespace:
//!
//! * dual-stack: 30 Assigns → 30 distinct IPv4 and 30 distinct IPv6 addresses inside the VPC
//!   CIDRs, one journal record holding both per assign; `kill -9` and restart → the same
//!   allocations; Release frees both (twice is fine); GC frees both; the node's own IPv6
//!   prefix is `unreachable` (proto 171) like its IPv4 ones; one IPv6 prefix only;
//! * the node namespace: `net.ipv6.conf.all.forwarding=1`, and an interface whose
//!   `accept_ra` was 1 now 2 (keeps SLAAC with forwarding on); `vpcnetd uninstall` puts both
//!   back;
//! * IPv6-only: IPv6 addresses alone, no IPv4 prefix claimed;
//! * bad input: an IPv6 VPC with many nodes and no IPv6 `--node-ip` is refused naming it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use vpcnet_pool::{AllocKey, PodMeta};
use vpcnet_proto::api::{Attachment, Reply, Request};
use vpcnet_proto::client;
use vpcnet_tests::{bin, sh, Lab};

const T: Duration = Duration::from_secs(10);

fn key(c: &str) -> AllocKey {
    AllocKey {
        network: "vpctest".into(),
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn call(lab: &Lab, r: Request) -> Reply {
    client::call(&lab.socket(), r, T).expect("agent reply")
}

fn assign(lab: &Lab, c: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    match call(
        lab,
        Request::Assign {
            key: key(c),
            meta: PodMeta::default(),
        },
    ) {
        Reply::Assigned { ip, ip6, .. } => (ip, ip6),
        other => panic!("assign {c}: {other:?}"),
    }
}

fn release(lab: &Lab, c: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    match call(
        lab,
        Request::Release {
            key: key(c),
            unused: false,
        },
    ) {
        Reply::Released { ip, ip6 } => (ip, ip6),
        other => panic!("release {c}: {other:?}"),
    }
}

fn get(lab: &Lab, c: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    match call(lab, Request::Get { key: key(c) }) {
        Reply::Allocation {
            allocation,
            allocation6,
        } => (allocation.map(|a| a.ip), allocation6.map(|a| a.ip)),
        other => panic!("get {c}: {other:?}"),
    }
}

/// `cat /proc/sys/<path>` in the lab's node namespace.
fn sysctl(lab: &Lab, path: &str) -> String {
    sh(&format!(
        "ip netns exec {} cat /proc/sys/{path}",
        lab.host()
    ))
    .trim()
    .to_string()
}

fn journal(lab: &Lab) -> Vec<String> {
    std::fs::read_to_string(lab.state_dir().join("pool.journal"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn routes6(lab: &Lab) -> String {
    sh(&format!("ip -n {} -6 route show proto 171", lab.host()))
}

#[test]
fn dual_stack_agent_assigns_both_families_durably_and_uninstall_restores_sysctls() {
    let v4: Ipv4Network = "10.240.0.0/16".parse().expect("v4");
    let v6: Ipv6Network = "fd00:10::/64".parse().expect("v6");
    let mut lab = Lab::new(&format!("{v4},{v6}"));
    // An "uplink" that takes router advertisements (accept_ra=1), as a SLAAC node's does
    // (a veth: the kernel may have no dummy module).
    let up = format!("{}u", lab.prefix);
    sh(&format!(
        "ip -n {h} link add {up} type veth peer name {up}p && ip netns exec {h} sh -c 'echo 1 > \
         /proc/sys/net/ipv6/conf/{up}/accept_ra'",
        h = lab.host()
    ));
    let ra = format!("net/ipv6/conf/{up}/accept_ra");
    assert_eq!(sysctl(&lab, &ra), "1");
    assert_eq!(sysctl(&lab, "net/ipv6/conf/all/forwarding"), "0");

    // These allocations have no veths (no plugin here): a long grace keeps reconcile (at the
    // restart below) from releasing them on a slow machine.
    lab.start_agent(&["--reconcile-grace", "3600s"]);
    assert_eq!(sysctl(&lab, "net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(sysctl(&lab, &ra), "2", "accept_ra 1 -> 2 before forwarding");

    // 30 Assigns: one address of each family each, all distinct, inside the VPC.
    let cids: Vec<String> = (0..30).map(|i| format!("ds{i}")).collect();
    let mut got = Vec::new();
    for c in &cids {
        let (ip, ip6) = assign(&lab, c);
        let (ip, ip6) = (ip.expect("IPv4"), ip6.expect("IPv6"));
        assert!(v4.contains(ip) && v6.contains(ip6), "{c}: {ip} {ip6}");
        got.push((ip, ip6));
    }
    let d4: BTreeSet<_> = got.iter().map(|g| g.0).collect();
    let d6: BTreeSet<_> = got.iter().map(|g| g.1).collect();
    assert_eq!((d4.len(), d6.len()), (30, 30), "distinct: {got:?}");
    // A repeated ADD gets the same pair.
    assert_eq!(assign(&lab, &cids[0]), (Some(got[0].0), Some(got[0].1)));
    // One durable record per assignment, holding both families.
    let j = journal(&lab);
    let both = j
        .iter()
        .filter(|l| {
            l.contains(r#"{"v4":{"ev":"assigned""#) && l.contains(r#"{"v6":{"ev":"assigned""#)
        })
        .count();
    let single = j
        .iter()
        .filter(|l| l.matches(r#""ev":"assigned""#).count() == 1)
        .count();
    assert_eq!((both, single), (30, 0), "journal:\n{}", j.join("\n"));
    // One IPv6 prefix (a /80 has 2^48 addresses), unreachable here like the IPv4 ones.
    let r6 = routes6(&lab);
    let unreachable: Vec<&str> = r6
        .lines()
        .filter(|l| l.starts_with("unreachable"))
        .collect();
    assert!(
        lab.wait_for(Duration::from_secs(5), || routes6(&lab)
            .lines()
            .filter(|l| l.starts_with("unreachable fd00:10::/80"))
            .count()
            == 1),
        "IPv6 routes: {r6} ({unreachable:?})"
    );
    let status = lab.status();
    assert!(status["ready"].as_bool().unwrap_or(false), "{status}");
    // Status shows each family: the IPv4 pool as before, the IPv6 one in `pool6`.
    assert_eq!(status["stats"]["assigned"], 30, "{status}");
    assert_eq!(status["pool6"]["stats"]["assigned"], 30, "{status}");
    assert_eq!(status["pool6"]["stats"]["prefixes"], 1, "{status}");
    assert_eq!(
        status["pool6"]["prefixes"][0]["prefix"], "fd00:10::/80",
        "{status}"
    );
    let text = sh(&format!(
        "ip netns exec {} {} status --socket {}",
        lab.host(),
        bin("vpcnetd").display(),
        lab.socket().display()
    ));
    assert!(
        text.contains("IPv6 addresses: very many total, 30 assigned, 0 cooling")
            && text.contains("IPv6 prefixes:  1 held, 0 wholly free")
            && text.lines().any(|l| l.starts_with("fd00:10::/80")),
        "{text}"
    );

    // kill -9 and restart: the same allocations, both families.
    lab.agent.as_mut().expect("agent").kill();
    lab.agent.as_mut().expect("agent").restart();
    for (c, (ip, ip6)) in cids.iter().zip(&got) {
        assert_eq!(get(&lab, c), (Some(*ip), Some(*ip6)), "{c} after kill -9");
    }
    assert_eq!(
        routes6(&lab)
            .lines()
            .filter(|l| l.starts_with("unreachable"))
            .count(),
        1,
        "still one IPv6 prefix after the restart: {}",
        routes6(&lab)
    );

    // Release frees both, once; again is fine and frees nothing.
    for (c, (ip, ip6)) in cids.iter().zip(&got).take(10) {
        assert_eq!(release(&lab, c), (Some(*ip), Some(*ip6)), "{c}");
        assert_eq!(release(&lab, c), (None, None), "{c} again");
        assert_eq!(get(&lab, c), (None, None), "{c} released");
    }
    // GC keeps the listed ten, frees the other ten in both families.
    let valid: Vec<Attachment> = cids[10..20]
        .iter()
        .map(|c| Attachment {
            container_id: c.clone(),
            ifname: "eth0".into(),
        })
        .collect();
    match call(
        &lab,
        Request::Gc {
            network: "vpctest".into(),
            valid,
        },
    ) {
        Reply::Collected {
            released,
            released6,
        } => {
            let want4: BTreeSet<_> = got[20..].iter().map(|g| g.0).collect();
            let want6: BTreeSet<_> = got[20..].iter().map(|g| g.1).collect();
            assert_eq!(released.into_iter().collect::<BTreeSet<_>>(), want4);
            assert_eq!(released6.into_iter().collect::<BTreeSet<_>>(), want6);
        }
        other => panic!("gc: {other:?}"),
    }
    for (i, c) in cids.iter().enumerate() {
        let want = if (10..20).contains(&i) {
            (Some(got[i].0), Some(got[i].1))
        } else {
            (None, None)
        };
        assert_eq!(get(&lab, c), want, "{c} after GC");
    }
    for c in &cids[10..20] {
        release(&lab, c);
    }

    // Uninstall (agent stopped): the sysctls as they were, the IPv6 routes gone.
    lab.agent.as_mut().expect("agent").kill();
    let bin_dir = lab.dir.join("cni-bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let o = uninstall(&lab, &bin_dir);
    assert!(o.0, "uninstall: {}", o.1);
    assert_eq!(sysctl(&lab, "net/ipv6/conf/all/forwarding"), "0", "{}", o.1);
    assert_eq!(sysctl(&lab, &ra), "1", "{}", o.1);
    assert!(o.1.contains("accept_ra=1"), "{}", o.1);
    assert_eq!(routes6(&lab).trim(), "", "IPv6 routes after uninstall");
}

fn uninstall(lab: &Lab, bin_dir: &Path) -> (bool, String) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .arg("--socket")
        .arg(lab.socket())
        .arg("--state-dir")
        .arg(lab.state_dir())
        .arg("uninstall")
        .arg("--cni-bin-dir")
        .arg(bin_dir)
        .output()
        .expect("run vpcnetd uninstall");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn ipv6_only_agent_assigns_ipv6_alone() {
    let v6: Ipv6Network = "fd00:20::/64".parse().expect("v6");
    let mut lab = Lab::new(&v6.to_string());
    lab.start_agent(&[]);
    let mut seen = BTreeSet::new();
    for i in 0..5 {
        let (ip, ip6) = assign(&lab, &format!("v6only{i}"));
        assert_eq!(ip, None, "no IPv4 on an IPv6-only node");
        let ip6 = ip6.expect("IPv6");
        assert!(v6.contains(ip6), "{ip6}");
        assert!(seen.insert(ip6), "{ip6} twice");
    }
    assert_eq!(release(&lab, "v6only0").1, seen.first().copied());
    // No IPv4 prefix claimed, no IPv4 route: the IPv4 pool is empty.
    let r4 = sh(&format!("ip -n {} route show proto 171", lab.host()));
    assert_eq!(r4.trim(), "", "IPv4 routes on an IPv6-only node");
    assert!(
        lab.wait_for(Duration::from_secs(5), || routes6(&lab)
            .lines()
            .any(|l| l.starts_with("unreachable fd00:20::/80"))),
        "{}",
        routes6(&lab)
    );
    assert_eq!(sysctl(&lab, "net/ipv6/conf/all/forwarding"), "1");
    // Ready to serve pods: the (empty, never growing) IPv4 pool does not count.
    let st = lab.status();
    assert_eq!(
        (st["ready"].as_bool(), st["canAssign"].as_bool()),
        (Some(true), Some(true)),
        "{st}"
    );
}

#[test]
fn ipv6_vpc_with_many_nodes_needs_an_ipv6_node_ip() {
    let lab = Lab::new("10.240.0.0/16,fd00:30::/64");
    let mut args = lab.agent_flags();
    args.extend(
        [
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--node-ip",
            "192.0.2.7",
        ]
        .map(String::from),
    );
    // `timeout`: an agent that wrongly starts must not hang the test.
    let o = Command::new("timeout")
        .arg("10")
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.host()))
        .arg(bin("vpcnetd"))
        .args(&args)
        .output()
        .expect("run vpcnetd");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--node-ip: an IPv6 --vpc-cidr (fd00:30::/64)"),
        "{err}"
    );
    // Nothing changed: no state, forwarding as it was.
    assert!(!lab.state_dir().join("pool.json").exists());
    assert_eq!(sysctl(&lab, "net/ipv6/conf/all/forwarding"), "0");
}

/// The host side of a dual-stack attachment, as the plugin leaves it (a host veth of ours,
/// `/32` and `/128` routes through it, proto 171): reconcile restores a deleted `/128` like a
/// `/32`, releases both families of an allocation whose veth is gone, and DEL removes both
/// host routes.
#[test]
fn reconcile_and_release_handle_the_ipv6_host_route() {
    let mut lab = Lab::new("10.240.0.0/16,fd00:40::/64");
    lab.start_agent(&["--reconcile-interval", "200ms", "--reconcile-grace", "0s"]);
    let h = lab.host();
    // `replace`, not `add`: reconcile (every 200 ms) may restore them first, once the veth
    // is there.
    let (ip, ip6) = assign(&lab, "hv0");
    let (ip, ip6) = (ip.expect("IPv4"), ip6.expect("IPv6"));
    let veth = vpcnet_proto::naming::host_veth_name("hv0", "eth0");
    let mac = vpcnet_proto::naming::format_mac(&vpcnet_proto::naming::host_veth_mac("hv0", "eth0"));
    sh(&format!(
        "ip -n {h} link add {veth} address {mac} type veth peer name {p}q && \
         ip -n {h} link set {veth} up && ip -n {h} link set {p}q up && \
         ip -n {h} route replace {ip}/32 dev {veth} scope link proto 171 && \
         ip -n {h} -6 route replace {ip6}/128 dev {veth} proto 171",
        p = lab.prefix
    ));
    let has6 = |lab: &Lab| {
        routes6(lab)
            .lines()
            .any(|l| l.starts_with(&format!("{ip6} dev {veth}")))
    };
    assert!(has6(&lab), "{}", routes6(&lab));
    // An allocation whose veth never came: reconcile releases both of its addresses.
    let (g4, g6) = assign(&lab, "gone0");
    assert!(g4.is_some() && g6.is_some());
    assert!(
        lab.wait_for(Duration::from_secs(5), || get(&lab, "gone0")
            == (None, None)),
        "reconcile released gone0: {:?}",
        get(&lab, "gone0")
    );
    assert_eq!(
        get(&lab, "hv0"),
        (Some(ip), Some(ip6)),
        "hv0 has its veth: kept"
    );
    // A deleted /128 comes back.
    // (Deleted for sure: `sh` fails otherwise. Reconcile may restore it any moment.)
    sh(&format!("ip -n {h} -6 route del {ip6}/128 dev {veth}"));
    assert!(
        lab.wait_for(Duration::from_secs(5), || has6(&lab)),
        "reconcile restored the /128: {}",
        routes6(&lab)
    );
    // DEL: both host routes go.
    assert_eq!(release(&lab, "hv0"), (Some(ip), Some(ip6)));
    assert!(!has6(&lab), "{}", routes6(&lab));
    let r4 = sh(&format!("ip -n {h} route show proto 171"));
    assert!(
        !r4.lines().any(|l| l.starts_with(&format!("{ip} "))),
        "{r4}"
    );
}

/// The start-up audit sees IPv6 pods too: a `/128` pod route of ours whose address the state
/// does not know makes the agent refuse to start (nothing touched), as a `/32` does.
#[test]
fn start_up_audit_refuses_an_unknown_ipv6_pod_route() {
    let mut lab = Lab::new("10.240.0.0/16,fd00:50::/64");
    lab.start_agent(&[]);
    let (_, ip6) = assign(&lab, "known0");
    assert!(ip6.is_some());
    lab.agent.as_mut().expect("agent").kill();
    let h = lab.host();
    let veth = vpcnet_proto::naming::host_veth_name("stray0", "eth0");
    let mac =
        vpcnet_proto::naming::format_mac(&vpcnet_proto::naming::host_veth_mac("stray0", "eth0"));
    let stray = "fd00:50::ab:cd";
    sh(&format!(
        "ip -n {h} link add {veth} address {mac} type veth peer name {p}s && \
         ip -n {h} link set {veth} up && ip -n {h} link set {p}s up && \
         ip -n {h} -6 route add {stray}/128 dev {veth} proto 171",
        p = lab.prefix
    ));
    let o = Command::new("timeout")
        .arg("10")
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{h}"))
        .arg(bin("vpcnetd"))
        .args(lab.agent_flags())
        .output()
        .expect("run vpcnetd");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "route {stray}/128 dev {veth} (address not in the state)"
        )),
        "{err}"
    );
    // Nothing touched: the stray route is still there.
    assert!(routes6(&lab).contains(stray), "{}", routes6(&lab));
}

/// Many nodes, IPv6 (local datastore with a peer's claims written into `claims.json`, as
/// `peers_snat` does for IPv4): another node's IPv6 prefix is routed `via` its IPv6 node
/// address (`nodeIp6` of its claim), its IPv4 prefix `via` its IPv4 one; our own claims carry
/// both of our addresses; a claim without an IPv6 node address is not routed; a claim that
/// goes is withdrawn.
#[test]
fn ipv6_peer_prefixes_are_routed_via_the_peers_ipv6_address() {
    let mut lab = Lab::new("10.240.0.0/16,fd00:60::/64");
    let h = lab.host();
    let up = format!("{}u", lab.prefix);
    sh(&format!(
        "ip -n {h} link add {up} type veth peer name {up}p && ip -n {h} link set {up} up && \
         ip -n {h} link set {up}p up && ip -n {h} addr add 10.250.98.1/24 dev {up} && \
         ip -n {h} addr add fd00:98::1/64 dev {up} nodad"
    ));
    let claims = lab.state_dir().join("claims.json");
    std::fs::create_dir_all(lab.state_dir()).expect("state dir");
    let peer = serde_json::json!({
            "10.240.0.16/28": {"prefix": "10.240.0.16/28", "node": "peer-node",
                               "nodeIp": "10.250.98.2", "nodeIp6": "fd00:98::2", "claimedAt": 1},
            "fd00:60:0:0:5::/80": {"prefix": "fd00:60:0:0:5::/80", "node": "peer-node",
                                   "nodeIp": "10.250.98.2", "nodeIp6": "fd00:98::2", "claimedAt": 1},
            "fd00:60:0:0:6::/80": {"prefix": "fd00:60:0:0:6::/80", "node": "old-node",
                                   "nodeIp": "10.250.98.3", "claimedAt": 1},
    });
    std::fs::write(&claims, serde_json::to_vec(&peer).expect("json")).expect("claims");
    lab.start_agent(&[
        "--node-ip",
        "10.250.98.1,fd00:98::1",
        "--peer-sync-interval",
        "300ms",
    ]);
    let want = format!("fd00:60:0:0:5::/80 via fd00:98::2 dev {up} ");
    let ok = lab.wait_for(Duration::from_secs(5), || {
        let r = routes6(&lab);
        r.lines().any(|l| l.starts_with(&want))
            && r.lines().any(|l| l.starts_with("unreachable fd00:60::/80"))
    });
    assert!(
        ok,
        "want `{want}` and our unreachable /80: {}",
        routes6(&lab)
    );
    let r4 = sh(&format!("ip -n {h} route show proto 171"));
    assert!(
        r4.contains(&format!("10.240.0.16/28 via 10.250.98.2 dev {up}")),
        "{r4}"
    );
    // No IPv6 node address on that claim: not routed.
    assert!(
        !routes6(&lab).contains("fd00:60:0:0:6::"),
        "{}",
        routes6(&lab)
    );
    // Our own IPv6 claim carries both of our node addresses.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&claims).expect("claims")).expect("json");
    let ours = &file["fd00:60::/80"];
    assert_eq!(
        (
            ours["node"].as_str(),
            ours["nodeIp"].as_str(),
            ours["nodeIp6"].as_str()
        ),
        (
            Some(format!("{}-node", lab.prefix).as_str()),
            Some("10.250.98.1"),
            Some("fd00:98::1")
        ),
        "{file:#}"
    );
    // The peer's IPv6 claim goes: its route is withdrawn, the IPv4 one stays.
    let mut now = file.clone();
    now.as_object_mut()
        .expect("map")
        .remove("fd00:60:0:0:5::/80");
    std::fs::write(&claims, serde_json::to_vec(&now).expect("json")).expect("claims");
    let gone = lab.wait_for(Duration::from_secs(5), || {
        !routes6(&lab).contains("fd00:60:0:0:5::")
    });
    assert!(gone, "{}", routes6(&lab));
    assert!(sh(&format!("ip -n {h} route show proto 171")).contains("10.240.0.16/28 via"));
}

/// Three dual-stack nodes on one switch with etcd (`vpcnet_tests::cluster`), the underlay
/// given IPv6 addresses too: each node claims one IPv6 /80 (its etcd key the prefix text)
/// and routes every other node's `via` that node's IPv6 address, its own `unreachable`.
#[test]
fn three_dual_stack_nodes_route_each_others_ipv6_prefixes() {
    use vpcnet_tests::cluster::Cluster;
    let mut c = Cluster::new(3, "10.240.0.0/16,fd00:70::/64");
    let ip6 = |k: usize| format!("fd00:199::{}", 10 + k);
    for k in 1..=3 {
        sh(&format!(
            "ip -n {} addr add {}/64 dev eth0 nodad",
            c.node(k).ns,
            ip6(k)
        ));
    }
    for k in 1..=3 {
        c.start_agent(k, &["--node-ip", &ip6(k), "--peer-sync-interval", "500ms"]);
    }
    // Every node's IPv6 claim, from etcd: key = the prefix as text.
    let mut prefix_of = std::collections::BTreeMap::new();
    let ok = vpcnet_tests::wait_until(Duration::from_secs(10), || {
        let Ok(kvs) = c.etcd_range("/vpcnet/claims/fd00") else {
            return false;
        };
        prefix_of.clear();
        for (key, value, _, _) in kvs {
            let v: serde_json::Value = serde_json::from_str(&value).expect("claim json");
            let p = v["prefix"].as_str().expect("prefix").to_string();
            assert_eq!(key, format!("/vpcnet/claims/{p}"), "{value}");
            prefix_of.insert(v["node"].as_str().expect("node").to_string(), (p, v));
        }
        prefix_of.len() == 3
    });
    assert!(ok, "one IPv6 claim per node: {prefix_of:?}");
    for k in 1..=3 {
        let (_, v) = &prefix_of[&format!("node{k}")];
        assert_eq!(v["nodeIp6"].as_str(), Some(ip6(k).as_str()), "{v}");
    }
    // Each node: the others' /80 via their IPv6 address, its own unreachable.
    for k in 1..=3 {
        let ns = c.node(k).ns.clone();
        let want: Vec<String> = (1..=3)
            .map(|j| {
                let p = &prefix_of[&format!("node{j}")].0;
                if j == k {
                    format!("unreachable {p} ")
                } else {
                    format!("{p} via {} dev eth0 ", ip6(j))
                }
            })
            .collect();
        let ok = vpcnet_tests::wait_until(Duration::from_secs(10), || {
            let r = sh(&format!("ip -n {ns} -6 route show proto 171"));
            want.iter()
                .all(|w| r.lines().any(|l| l.starts_with(w.as_str())))
        });
        assert!(
            ok,
            "node{k} wants {want:?}: {}",
            sh(&format!("ip -n {ns} -6 route show proto 171"))
        );
    }
}
