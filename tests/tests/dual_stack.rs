//! Dual-stack (issue 11) end to end on the real kernel: the real agent serving IPv6-only and
//! dual-stack pods, the real plugin wiring them (docs/dual-stack.md, "Protocol and plugin"),
//! 30 pods on one node each reaching every other pod and the host over every family they
//! have, no address tentative after ADD, CHECK naming the missing IPv6 piece, DEL twice, a
//! failed IPv6 step undone for both families, and bad IPv6 flags refused naming the flag.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::{in_cidr, netns::OneShotListener, CniOutput, Lab};

const GATEWAY: &str = "169.254.1.1";
const GATEWAY6: &str = "fe80::1";
const VPC4: &str = "10.240.0.0/16";
const VPC6: &str = "fd00:10::/64";
/// The host namespace's own addresses (a node has a node IP that pods answer; the lab's host
/// namespace has none, so it gets one per family on its `lo`; private namespace only).
const HOST4: &str = "192.168.255.1";
const HOST6: &str = "fd00:ffff::1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V6Only,
    Dual,
}

/// One pod after ADD.
#[derive(Debug, Clone)]
struct Pod {
    cid: String,
    ns: String,
    v4: Option<Ipv4Addr>,
    v6: Ipv6Addr,
    host_veth: String,
    host_mac: String,
    pod_mac: String,
    result: Value,
}

/// The lab and agent of `mode`: IPv6-only (`--vpc-cidr fd00:10::/64`) or dual (the IPv4 VPC
/// plus the IPv6 one). The host namespace gets an address per family on `lo`.
fn lab(mode: Mode, extra: &[&str]) -> Lab {
    let mut lab = match mode {
        Mode::V6Only => Lab::new(VPC6),
        Mode::Dual => Lab::new(VPC4),
    };
    let mut args: Vec<&str> = Vec::new();
    if mode == Mode::Dual {
        args.extend(["--vpc-cidr", VPC6]);
    }
    args.extend_from_slice(extra);
    lab.start_agent(&args);
    let host = lab.host();
    vpcnet_tests::sh(&format!(
        "ip -n {host} addr add {HOST4}/32 dev lo && ip -n {host} -6 addr add {HOST6}/128 dev lo nodad"
    ));
    lab
}

fn add_pod(lab: &mut Lab, mode: Mode, i: usize) -> Pod {
    let ns = lab.pod(i);
    let cid = format!("c{i}");
    let out = lab.add(&cid, &ns);
    out.expect_ok(&format!("ADD {cid}"));
    // Straight after ADD returns: the IPv6 address is usable (no DAD ran), never tentative.
    let addr6 = lab.ip(&ns, "-6 -o addr show dev eth0");
    let (v4, v6) = vpcnet_tests::cni::result_ips(&out);
    let v6 = v6.unwrap_or_else(|| panic!("ADD {cid}: no IPv6 address: {}", out.stdout));
    assert!(
        addr6.contains(&format!("inet6 {v6}/128 scope global nodad")),
        "{cid}: eth0 lacks {v6}/128 nodad right after ADD: {addr6}"
    );
    assert!(
        !addr6.contains("tentative"),
        "{cid}: tentative address right after ADD: {addr6}"
    );
    match mode {
        Mode::V6Only => assert_eq!(v4, None, "{cid}: IPv4 in an IPv6-only pod: {}", out.stdout),
        Mode::Dual => assert!(v4.is_some(), "{cid}: no IPv4 in a dual pod: {}", out.stdout),
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Pod {
        cid,
        ns,
        v4,
        v6,
        host_veth: s(&out.json["interfaces"][0]["name"]),
        host_mac: s(&out.json["interfaces"][0]["mac"]),
        pod_mac: s(&out.json["interfaces"][1]["mac"]),
        result: out.json.clone(),
    }
}

/// The result, both sides of the IPv6 attachment, and (dual) the IPv4 one, as the design says.
fn assert_wired(lab: &Lab, p: &Pod) {
    let routes = p.result["routes"].as_array().cloned().unwrap_or_default();
    let six = serde_json::json!({"dst": "::/0", "gw": GATEWAY6});
    let four = serde_json::json!({"dst": "0.0.0.0/0", "gw": GATEWAY});
    match p.v4 {
        Some(_) => assert_eq!(routes, vec![four, six], "{}: routes", p.cid),
        None => assert_eq!(routes, vec![six], "{}: routes", p.cid),
    }
    let pod_routes = lab.ip(&p.ns, "-6 route show");
    assert!(
        pod_routes.contains(&format!("default via {GATEWAY6} dev eth0 proto 171")),
        "{}: no IPv6 default route: {pod_routes}",
        p.cid
    );
    let neigh = lab.ip(&p.ns, &format!("-6 neigh show {GATEWAY6} dev eth0"));
    assert!(
        neigh.contains(&format!("lladdr {} PERMANENT", p.host_mac)),
        "{}: fe80::1 not permanent → {}: {neigh}",
        p.cid,
        p.host_mac
    );
    let host = lab.host();
    let host_routes = lab.ip(&host, "-6 route show");
    assert!(
        host_routes
            .lines()
            .any(|l| l.starts_with(&format!("{} dev {} proto 171 ", p.v6, p.host_veth))),
        "{}: host lacks `{} dev {} proto 171`: {host_routes}",
        p.cid,
        p.v6,
        p.host_veth
    );
    let host_neigh = lab.ip(
        &host,
        &format!("-6 neigh show {} dev {}", p.v6, p.host_veth),
    );
    assert!(
        host_neigh.contains(&format!("lladdr {} PERMANENT", p.pod_mac)),
        "{}: host neighbour {} not permanent → {}: {host_neigh}",
        p.cid,
        p.v6,
        p.pod_mac
    );
    // No link-local address on either end (no DAD, no router solicitation).
    assert!(!lab.ip(&p.ns, "-6 -o addr show dev eth0").contains("fe80"));
    assert!(!lab
        .ip(&host, &format!("-6 -o addr show dev {}", p.host_veth))
        .contains("fe80"));
    // Router advertisements ignored on both ends (the pod end's knob is written through a
    // file opened inside the pod namespace: it must be the pod's, not the host's).
    for (ns, dev) in [(&p.ns, "eth0"), (&host, p.host_veth.as_str())] {
        let ra = vpcnet_tests::sh(&format!(
            "ip netns exec {ns} cat /proc/sys/net/ipv6/conf/{dev}/accept_ra"
        ));
        assert_eq!(ra.trim(), "0", "{}: accept_ra of {dev} in {ns}", p.cid);
    }
    if let Some(v4) = p.v4 {
        let addr = lab.ip(&p.ns, "-4 -o addr show dev eth0");
        assert!(
            addr.contains(&format!("inet {v4}/32 ")),
            "{}: {addr}",
            p.cid
        );
        let r4 = lab.ip(&p.ns, "-4 route show");
        assert!(
            r4.contains(&format!("default via {GATEWAY} dev eth0 proto 171")),
            "{}: {r4}",
            p.cid
        );
        let want = format!("{v4} dev {} proto 171 scope link", p.host_veth);
        assert!(
            lab.ip(&host, "-4 route show")
                .lines()
                .any(|l| l.trim() == want),
            "{}: host lacks `{want}`",
            p.cid
        );
    }
}

/// accept_ra on both ends of a pod's veth (sysctl files of each namespace).
fn accept_ra(lab: &Lab, p: &Pod) -> (String, String) {
    let read = |ns: &str, ifname: &str| {
        vpcnet_tests::sh(&format!(
            "ip netns exec {ns} cat /proc/sys/net/ipv6/conf/{ifname}/accept_ra"
        ))
        .trim()
        .to_string()
    };
    (read(&p.ns, "eth0"), read(&lab.host(), &p.host_veth))
}

/// Every pod pings every other pod's address of one family, and the host pings every pod.
fn all_pairs(lab: &Lab, pods: &[Pod], addr: impl Fn(&Pod) -> String) -> Vec<String> {
    let mut jobs: Vec<(String, Vec<String>)> = pods
        .iter()
        .map(|me| {
            let targets = pods.iter().filter(|p| p.cid != me.cid).map(&addr).collect();
            (me.ns.clone(), targets)
        })
        .collect();
    jobs.push((lab.host(), pods.iter().map(&addr).collect()));
    vpcnet_tests::ping::ping_matrix(&jobs, 3)
}

/// A TCP connection from `from` to a listener in `to` on `to_ip`: the listener sees the
/// connection come from `from_ip` (routed, not translated).
fn tcp(lab: &Lab, from: &Pod, from_ip: IpAddr, to_ns: &str, to_ip: IpAddr) {
    let _ = lab;
    let l = OneShotListener::start(to_ns, to_ip, Duration::from_secs(5)).expect("listen");
    let local = vpcnet_tests::netns::connect_from(&from.ns, l.addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}: TCP to {}: {e}", from.cid, l.addr));
    let peer: SocketAddr = l.peer().expect("accepted");
    assert_eq!(peer.ip(), from_ip, "{} -> {}", from.cid, to_ip);
    assert_eq!(local.ip(), from_ip);
}

fn check(lab: &Lab, p: &Pod) -> CniOutput {
    let mut conf = lab.conf();
    conf["prevResult"] = p.result.clone();
    lab.cni("CHECK", &p.cid, "eth0", &Lab::netns_path(&p.ns), &conf)
}

fn thirty_pods(mode: Mode) {
    const PODS: usize = 30;
    // Pods' host veths are broken by hand below: no periodic reconcile behind the test's back.
    let mut lab = lab(mode, &["--reconcile-interval", "600s"]);
    let t = Instant::now();
    let pods: Vec<Pod> = (0..PODS).map(|i| add_pod(&mut lab, mode, i)).collect();
    eprintln!("{mode:?}: {PODS} ADDs in {:?}", t.elapsed());

    let v6s: HashSet<Ipv6Addr> = pods.iter().map(|p| p.v6).collect();
    assert_eq!(v6s.len(), PODS, "duplicate IPv6 addresses");
    assert!(
        pods.iter().all(|p| vpcnet_tests::in_cidr6(p.v6, VPC6)),
        "{pods:?}"
    );
    if mode == Mode::Dual {
        let v4s: HashSet<Ipv4Addr> = pods.iter().filter_map(|p| p.v4).collect();
        assert_eq!(v4s.len(), PODS, "duplicate IPv4 addresses");
        assert!(pods.iter().filter_map(|p| p.v4).all(|ip| in_cidr(ip, VPC4)));
    }
    for p in &pods {
        assert_wired(&lab, p);
    }
    for p in &pods[..3] {
        assert_eq!(accept_ra(&lab, p), ("0".into(), "0".into()), "{}", p.cid);
    }
    // The host forwards IPv6 (the agent turned it on in its namespace).
    let fwd = vpcnet_tests::sh(&format!(
        "ip netns exec {} cat /proc/sys/net/ipv6/conf/all/forwarding",
        lab.host()
    ));
    assert_eq!(fwd.trim(), "1");

    // Every pod reaches every other pod, and the host reaches every pod, over each family.
    let t = Instant::now();
    let failed6 = all_pairs(&lab, &pods, |p| p.v6.to_string());
    assert!(
        failed6.is_empty(),
        "{} IPv6 pings failed: {failed6:?}",
        failed6.len()
    );
    if mode == Mode::Dual {
        let failed4 = all_pairs(&lab, &pods, |p| {
            p.v4.map(|a| a.to_string()).unwrap_or_default()
        });
        assert!(
            failed4.is_empty(),
            "{} IPv4 pings failed: {failed4:?}",
            failed4.len()
        );
    }
    eprintln!("{mode:?}: ping matrix in {:?}", t.elapsed());
    // The matrix can fail: an address nobody has does not answer.
    assert!(
        !lab.ping(&pods[0].ns, "fd00:10::dead:beef"),
        "ping to an unassigned IPv6 address succeeded"
    );
    // TCP for a sample: pod → pod per family, and pod → host.
    let host = lab.host();
    for (a, b) in [(0, 7), (13, 29), (21, 2)] {
        tcp(
            &lab,
            &pods[a],
            pods[a].v6.into(),
            &pods[b].ns,
            pods[b].v6.into(),
        );
        if let (Some(x), Some(y)) = (pods[a].v4, pods[b].v4) {
            tcp(&lab, &pods[a], x.into(), &pods[b].ns, y.into());
        }
    }
    let host6: Ipv6Addr = HOST6.parse().expect("host address");
    tcp(&lab, &pods[5], pods[5].v6.into(), &host, host6.into());

    // CHECK passes for every pod while all is intact.
    for p in &pods {
        let c = check(&lab, p);
        assert!(c.ok(), "CHECK {}: {}", p.cid, c.stdout);
    }
    // Break one IPv6 piece per pod; CHECK fails naming it.
    let breakages: [(usize, String, String); 4] = [
        (
            1,
            format!("ip -n {host} -6 route del {}/128", pods[1].v6),
            format!(
                "host route {}/128 dev {} is missing",
                pods[1].v6, pods[1].host_veth
            ),
        ),
        (
            2,
            format!("ip -n {} -6 route del default", pods[2].ns),
            format!("pod IPv6 default route via {GATEWAY6} dev eth0 is missing"),
        ),
        (
            3,
            format!(
                "ip -n {} -6 addr del {}/128 dev eth0",
                pods[3].ns, pods[3].v6
            ),
            format!("pod address {}/128 on eth0 is missing", pods[3].v6),
        ),
        (
            4,
            format!("ip -n {} -6 neigh del {GATEWAY6} dev eth0", pods[4].ns),
            format!(
                "pod neighbour {GATEWAY6} lladdr {} PERMANENT is missing",
                pods[4].host_mac
            ),
        ),
    ];
    for (i, cmd, what) in &breakages {
        vpcnet_tests::sh(cmd);
        let c = check(&lab, &pods[*i]);
        assert_eq!(
            c.code(),
            Some(110),
            "CHECK {} after `{cmd}`: {}",
            pods[*i].cid,
            c.stdout
        );
        assert!(
            c.msg().contains(what.as_str()),
            "CHECK {} after `{cmd}`: msg should name {what:?}: {}",
            pods[*i].cid,
            c.msg()
        );
    }
    // The untouched pods still pass.
    for p in &pods[5..8] {
        let c = check(&lab, p);
        assert!(c.ok(), "CHECK {} (untouched): {}", p.cid, c.stdout);
    }

    // DEL everything, twice; the host routes and neighbours of both families go.
    for p in &pods {
        lab.del(&p.cid, &p.ns).expect_ok(&format!("DEL {}", p.cid));
        let routes6 = lab.ip(&host, "-6 route show");
        assert!(
            !routes6.contains(&format!("{} dev", p.v6)),
            "{}: IPv6 host route left after DEL: {routes6}",
            p.cid
        );
        if let Some(v4) = p.v4 {
            assert!(
                !lab.host_routes()
                    .iter()
                    .any(|r| r.starts_with(&format!("{v4} "))),
                "{}: IPv4 host route left after DEL",
                p.cid
            );
        }
    }
    for p in &pods {
        lab.del(&p.cid, &p.ns)
            .expect_ok(&format!("second DEL {}", p.cid));
    }
    let gone = lab.wait_for(Duration::from_secs(5), || lab.host_veths().is_empty());
    assert!(gone, "host veths left after DEL: {:?}", lab.host_veths());
    let neigh6 = lab.ip(&host, "-6 neigh show");
    assert!(
        !pods.iter().any(|p| neigh6.contains(&p.v6.to_string())),
        "IPv6 neighbours left: {neigh6}"
    );
    assert!(
        !lab.ping(&host, &pods[9].v6.to_string()),
        "deleted pod still answers over IPv6"
    );
}

#[test]
fn ipv6_only_thirty_pods() {
    thirty_pods(Mode::V6Only);
}

#[test]
fn dual_stack_thirty_pods() {
    thirty_pods(Mode::Dual);
}

/// A dual-stack ADD whose IPv6 step fails (the pod's namespace has IPv6 disabled) undoes both
/// families: no veth, no route, and both addresses free at once (released `unused`).
#[test]
fn failed_ipv6_step_undoes_both_families() {
    let mut lab = lab(Mode::Dual, &[]);
    let ns = lab.pod(1);
    vpcnet_tests::sh(&format!(
        "ip netns exec {ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'"
    ));
    let out = lab.add("c1", &ns);
    assert_eq!(out.code(), Some(100), "{}", out.stdout);
    assert!(out.msg().contains("/128 to eth0"), "{}", out.msg());
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
    // (The agent's `unreachable` route for its own IPv6 prefix is proto 171 too: look for
    // routes through a veth.)
    let routes6 = lab.ip(&lab.host(), "-6 route show proto 171");
    assert!(
        !routes6.lines().any(|l| l.contains(" dev vpc")),
        "IPv6 host route left: {routes6}"
    );
    assert!(
        routes6
            .lines()
            .any(|l| l.starts_with("unreachable fd00:10::")),
        "the agent's own prefix route is expected here: {routes6}"
    );
    assert_eq!(lab.links_in(&ns), vec!["lo".to_string()]);
    // The agent had given c1 one address per family (its journal says which) ...
    let given = journal_assigned(&lab, "c1");
    assert_eq!(given.len(), 2, "c1's assignment in the journal: {given:?}");
    // ... and took both back unused: free at once, no cooldown, so the next pod gets exactly
    // them (the pool hands out the lowest free address of each family).
    let p = add_pod(&mut lab, Mode::Dual, 2);
    let mut got = vec![p.v6.to_string()];
    got.extend(p.v4.map(|a| a.to_string()));
    got.sort();
    assert_eq!(got, given, "c2 should reuse c1's released addresses");
    assert_wired(&lab, &p);
    let st = lab.status();
    assert_eq!(st["stats"]["cooling"], 0, "{st}");
}

/// The addresses (both families, sorted) the agent's journal records as assigned to `cid`.
fn journal_assigned(lab: &Lab, cid: &str) -> Vec<String> {
    fn walk(v: &Value, cid: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if m.get("ev").and_then(Value::as_str) == Some("assigned")
                    && m["alloc"]["key"]["container_id"] == cid
                {
                    if let Some(ip) = m["alloc"]["ip"].as_str() {
                        out.push(ip.to_string());
                    }
                }
                m.values().for_each(|x| walk(x, cid, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, cid, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(lab.state_dir().join("pool.journal")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        // `<checksum> <json>` per record.
        let json = line.split_once(' ').map_or(line, |(_, j)| j);
        if let Ok(v) = serde_json::from_str::<Value>(json) {
            walk(&v, cid, &mut out);
        }
    }
    out.sort();
    out
}

/// Bad IPv6 flags: the agent refuses to start naming the flag, and changes nothing (no
/// socket, no state, no route in its namespace).
#[test]
fn bad_ipv6_flags_are_refused_naming_them() {
    for (extra, names) in [
        (vec!["--prefix-len-v6", "130"], "--prefix-len-v6 130"),
        (
            vec!["--prefix-len-v6", "60"],
            "--prefix-len-v6 60: shorter than /64",
        ),
    ] {
        let lab = Lab::new(VPC6);
        let mut args = lab.agent_flags();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.host()])
            .arg(vpcnet_tests::bin("vpcnetd"))
            .args(&args)
            .output()
            .expect("run vpcnetd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: started: {err}");
        assert!(
            err.contains(names),
            "{extra:?}: should name {names:?}: {err}"
        );
        assert!(!lab.socket().exists(), "{extra:?}: socket made");
        assert!(!lab.state_dir().exists(), "{extra:?}: state dir made");
        let routes = lab.ip(&lab.host(), "-6 route show proto 171");
        assert!(routes.trim().is_empty(), "{extra:?}: {routes}");
        let fwd = vpcnet_tests::sh(&format!(
            "ip netns exec {} cat /proc/sys/net/ipv6/conf/all/forwarding",
            lab.host()
        ));
        assert_eq!(fwd.trim(), "0", "{extra:?}: forwarding turned on");
    }
}

/// A second interface of a dual-stack pod (`net1`, as Multus adds it) gets both addresses and
/// its IPv6 default route in a table of its own selected by `from IP/128`; `eth0` keeps the
/// main table's IPv6 default route; traffic sourced from `net1`'s IPv6 address flows; CHECK
/// passes and then names the missing IPv6 rule.
#[test]
fn secondary_interface_gets_its_own_ipv6_table() {
    let mut lab = lab(Mode::Dual, &[]);
    let a = add_pod(&mut lab, Mode::Dual, 1);
    let b = add_pod(&mut lab, Mode::Dual, 2);
    let out = lab.cni("ADD", &a.cid, "net1", &Lab::netns_path(&a.ns), &lab.conf());
    out.expect_ok("ADD net1");
    let (n4, n6) = vpcnet_tests::cni::result_ips(&out);
    let n6 = n6.expect("net1 IPv6");
    assert!(n4.is_some(), "{}", out.stdout);
    assert_eq!(out.json["routes"], serde_json::json!([]), "{}", out.stdout);
    let index: u32 = lab
        .ip(&a.ns, "-o link show net1")
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("net1 ifindex");
    let table = 10_000 + index;
    let t6 = lab.ip(&a.ns, &format!("-6 route show table {table}"));
    assert!(
        t6.contains(&format!("default via {GATEWAY6} dev net1 proto 171")),
        "table {table}: {t6}"
    );
    let rules = lab.ip(&a.ns, "-6 rule show");
    assert!(
        rules.contains(&format!("from {n6} lookup {table}")),
        "{rules}"
    );
    let main6 = lab.ip(&a.ns, "-6 route show");
    assert!(
        main6.contains(&format!("default via {GATEWAY6} dev eth0 proto 171")),
        "eth0 lost the main IPv6 default route: {main6}"
    );
    assert!(!main6.contains("dev net1 proto 171"), "{main6}");
    // From net1's IPv6 address to another pod, and back through net1.
    assert!(
        vpcnet_tests::sh_ok(&format!(
            "ip netns exec {} ping -c1 -W2 -q -I {n6} {}",
            a.ns, b.v6
        )),
        "ping from {n6} (net1) to {}",
        b.v6
    );
    let mut conf = lab.conf();
    conf["prevResult"] = out.json.clone();
    let c = lab.cni("CHECK", &a.cid, "net1", &Lab::netns_path(&a.ns), &conf);
    assert!(c.ok(), "CHECK net1: {}", c.stdout);
    vpcnet_tests::sh(&format!(
        "ip -n {} -6 rule del from {n6} lookup {table}",
        a.ns
    ));
    let c = lab.cni("CHECK", &a.cid, "net1", &Lab::netns_path(&a.ns), &conf);
    assert_eq!(c.code(), Some(110), "{}", c.stdout);
    assert!(
        c.msg()
            .contains(&format!("pod rule from {n6} lookup {table} is missing")),
        "{}",
        c.msg()
    );
    // eth0 is untouched by all this.
    assert!(check(&lab, &a).ok());
}

/// Every cniVersion with `ips` gets both addresses on the pod interface and both default
/// routes from the real plugin and agent (0.3.x/0.4.0 tag each with its family); CHECK
/// compares prevResult with the agent per family and names an address the result lacks.
#[test]
fn every_version_lists_both_families_and_check_compares_them() {
    let mut lab = lab(Mode::Dual, &[]);
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let ns = lab.pod(i);
        let mut conf = lab.conf();
        conf["cniVersion"] = (*v).into();
        let cid = format!("v{i}");
        let out = lab.cni("ADD", &cid, "eth0", &Lab::netns_path(&ns), &conf);
        out.expect_ok(&format!("ADD {v}"));
        assert_eq!(out.json["cniVersion"], *v);
        let ips = out.json["ips"].as_array().cloned().unwrap_or_default();
        assert_eq!(ips.len(), 2, "{v}: {}", out.stdout);
        assert!(
            ips.iter().all(|ip| ip["interface"] == 1),
            "{v}: {}",
            out.stdout
        );
        assert_eq!(ips[1]["gateway"], GATEWAY6, "{v}");
        let versions: Vec<&str> = ips.iter().filter_map(|ip| ip["version"].as_str()).collect();
        if v.starts_with('0') {
            assert_eq!(versions, ["4", "6"], "{v}: {}", out.stdout);
        } else {
            assert!(versions.is_empty(), "{v}: {}", out.stdout);
        }
        assert_eq!(
            out.json["routes"],
            serde_json::json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}, {"dst": "::/0", "gw": GATEWAY6}]),
            "{v}"
        );
        let (v4, v6) = vpcnet_tests::cni::result_ips(&out);
        let (v4, v6) = (v4.expect("IPv4"), v6.expect("IPv6"));
        if *v == "0.4.0" || v.starts_with('1') {
            conf["prevResult"] = out.json.clone();
            let c = lab.cni("CHECK", &cid, "eth0", &Lab::netns_path(&ns), &conf);
            assert!(c.ok(), "CHECK {v}: {}", c.stdout);
            // A prevResult without the IPv6 address: the agent holds one, CHECK says so.
            let mut only4 = out.json.clone();
            only4["ips"] = serde_json::json!([ips[0].clone()]);
            conf["prevResult"] = only4;
            let c = lab.cni("CHECK", &cid, "eth0", &Lab::netns_path(&ns), &conf);
            assert_eq!(c.code(), Some(110), "{v}: {}", c.stdout);
            assert!(c.msg().contains(&v6.to_string()), "{v}: {}", c.msg());
            // Another IPv4 address than the agent's: named too.
            let mut wrong = out.json.clone();
            wrong["ips"][0]["address"] = "10.240.255.254/32".into();
            conf["prevResult"] = wrong;
            let c = lab.cni("CHECK", &cid, "eth0", &Lab::netns_path(&ns), &conf);
            assert_eq!(c.code(), Some(110), "{v}: {}", c.stdout);
            assert!(
                c.msg().contains(&v4.to_string()) && c.msg().contains("10.240.255.254"),
                "{v}: {}",
                c.msg()
            );
        }
        lab.cni("DEL", &cid, "eth0", &Lab::netns_path(&ns), &lab.conf())
            .expect_ok(&format!("DEL {v}"));
    }
}

/// A repeated ADD of a dual-stack pod keeps both addresses and doubles nothing; DEL then an
/// immediate re-ADD (the old veth not yet reaped) gives a working pod on new addresses in
/// both families, reachable over IPv6, with the new IPv6 default route on the new eth0.
#[test]
fn dual_stack_repeated_add_and_readd_after_del() {
    let mut lab = lab(Mode::Dual, &[]);
    let a = add_pod(&mut lab, Mode::Dual, 1);
    let b = add_pod(&mut lab, Mode::Dual, 2);
    let again = lab.add(&a.cid, &a.ns);
    again.expect_ok("second ADD");
    assert_eq!(
        vpcnet_tests::cni::result_ips(&again),
        (a.v4, Some(a.v6)),
        "{}",
        again.stdout
    );
    let addr6 = lab.ip(&a.ns, "-6 -o addr show dev eth0");
    assert_eq!(addr6.matches("inet6 ").count(), 1, "{addr6}");
    let host6 = lab.ip(&lab.host(), "-6 route show proto 171");
    assert_eq!(
        host6.lines().filter(|l| l.contains(" dev vpc")).count(),
        2,
        "{host6}"
    );
    let mut conf = lab.conf();
    conf["prevResult"] = again.json.clone();
    assert!(lab
        .cni("CHECK", &a.cid, "eth0", &Lab::netns_path(&a.ns), &conf)
        .ok());

    for round in 0..3 {
        lab.del(&a.cid, &a.ns)
            .expect_ok(&format!("DEL round {round}"));
        let r = add_pod(&mut lab, Mode::Dual, 1);
        assert_ne!(r.v6, a.v6, "round {round}: a released address is cooling");
        assert_wired(&lab, &r);
        assert!(
            lab.ping(&r.ns, &b.v6.to_string()) && lab.ping(&b.ns, &r.v6.to_string()),
            "round {round}: {} <-> {} over IPv6",
            r.v6,
            b.v6
        );
        let main6 = lab.ip(&r.ns, "-6 route show default");
        assert_eq!(main6.lines().count(), 1, "round {round}: {main6}");
        assert!(main6.contains("dev eth0"), "round {round}: {main6}");
    }
}

/// Every allocation in a status reply, both families: (address, key).
fn held(status: &Value) -> Vec<(IpAddr, Value)> {
    let lists = [
        status.get("allocations"),
        status.get("pool6").and_then(|p| p.get("allocations")),
    ];
    lists
        .into_iter()
        .flatten()
        .flat_map(|l| l.as_array().cloned().unwrap_or_default())
        .map(|a| {
            let ip = a["ip"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("allocation without ip: {a}"));
            (ip, a["key"].clone())
        })
        .collect()
}

/// State lost on a dual-stack node while pods run (snapshot gone, journal empty):
/// `vpcnetd rebuild-state` adopts each pod's IPv4 and IPv6 address from the kernel as ONE
/// attachment (the same key in both pools); the agent then starts (the start-up audit of
/// both families passes), keeps every pod reachable over both families, hands out other
/// addresses of both families, and a DEL of an adopted pod releases both.
#[test]
fn rebuild_state_adopts_both_families_of_running_pods() {
    let mut lab = lab(Mode::Dual, &["--reconcile-grace", "0s"]);
    let pods: Vec<Pod> = (0..3).map(|i| add_pod(&mut lab, Mode::Dual, i)).collect();
    lab.agent.as_mut().expect("agent").kill();
    let state = lab.state_dir();
    std::fs::remove_file(state.join("pool.json")).expect("rm pool.json");
    std::fs::write(state.join("pool.journal"), b"").expect("empty journal");

    let mut flags = lab.agent_flags();
    flags.extend(["--vpc-cidr".into(), VPC6.into(), "rebuild-state".into()]);
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.host()])
        .arg(vpcnet_tests::bin("vpcnetd"))
        .args(&flags)
        .output()
        .expect("run rebuild-state");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rebuild-state failed: {text}");
    for p in &pods {
        let v4 = p.v4.expect("dual pod has IPv4");
        for ip in [IpAddr::V4(v4), IpAddr::V6(p.v6)] {
            assert!(
                text.contains(&format!("adopted {ip} (host veth {})", p.host_veth)),
                "{ip} not adopted: {text}"
            );
        }
    }

    lab.agent.as_mut().expect("agent").restart();
    let status = lab.status_when_up();
    let allocs = held(&status);
    let live: HashSet<IpAddr> = pods
        .iter()
        .flat_map(|p| [IpAddr::V4(p.v4.expect("v4")), IpAddr::V6(p.v6)])
        .collect();
    let got: HashSet<IpAddr> = allocs.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(got, live, "{status:#}");
    for p in &pods {
        let key = |ip: IpAddr| {
            allocs
                .iter()
                .find(|(a, _)| *a == ip)
                .map(|(_, k)| k.clone())
        };
        let (k4, k6) = (key(IpAddr::V4(p.v4.expect("v4"))), key(IpAddr::V6(p.v6)));
        assert!(
            k4.is_some() && k4 == k6,
            "{}: keys differ by family: {k4:?} vs {k6:?}",
            p.cid
        );
        assert_wired(&lab, p);
        assert!(
            lab.ping(&lab.host(), &p.v6.to_string()),
            "host -> {} after the restart",
            p.v6
        );
    }
    // New pods get other addresses of both families.
    let n = add_pod(&mut lab, Mode::Dual, 10);
    assert!(
        !live.contains(&IpAddr::V6(n.v6)) && !live.contains(&IpAddr::V4(n.v4.expect("v4"))),
        "an adopted address handed out again: {n:?}"
    );
    // DEL of an adopted pod, by its real container ID, releases both of its addresses.
    let p0 = &pods[0];
    lab.del(&p0.cid, &p0.ns).expect_ok("DEL adopted pod");
    let gone = vpcnet_tests::wait_until(Duration::from_secs(5), || {
        let now: HashSet<IpAddr> = held(&lab.status()).iter().map(|(ip, _)| *ip).collect();
        !now.contains(&IpAddr::V6(p0.v6)) && !now.contains(&IpAddr::V4(p0.v4.expect("v4")))
    });
    assert!(gone, "{p0:?} still held after DEL: {:#}", lab.status());
    for p in &pods[1..] {
        assert_wired(&lab, p);
    }
}
