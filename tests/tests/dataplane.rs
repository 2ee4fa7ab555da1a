//! The data plane on the real kernel: many pods wired by the real plugin and agent, every pod
//! reaching every other pod and the host, CHECK catching broken pieces, DEL tearing it all
//! down, re-ADD after DEL, and the address cooldown.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpcnet_tests::{in_cidr, CniOutput, Lab};

const GATEWAY: &str = "169.254.1.1";

fn stats(lab: &Lab) -> Value {
    lab.status()["stats"].clone()
}

fn stat(lab: &Lab, key: &str) -> u64 {
    stats(lab)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no stats.{key}: {}", lab.status()))
}

/// Container IDs the agent holds an address for, with the address.
fn allocations(lab: &Lab) -> Vec<(String, String)> {
    vpcnet_tests::status_allocs(&lab.status())
        .into_iter()
        .map(|a| (a.container_id, a.ip.to_string()))
        .collect()
}

/// CHECK for `cid` in `ns` with `prev` (the ADD result) as prevResult.
fn check(lab: &Lab, cid: &str, ns: &str, prev: &Value) -> CniOutput {
    let mut conf = lab.conf();
    conf["prevResult"] = prev.clone();
    lab.cni("CHECK", cid, "eth0", &Lab::netns_path(ns), &conf)
}

/// The pod side of one attachment, as DESIGN.md §3 describes it.
fn assert_pod_wired(lab: &Lab, ns: &str, ip: Ipv4Addr, host_mac: &str) {
    let addr = lab.ip(ns, "-4 -o addr show dev eth0");
    assert!(
        addr.contains(&format!("inet {ip}/32 ")),
        "{ns}: eth0 lacks {ip}/32: {addr}"
    );
    let eth0 = lab.ip(ns, "-o link show eth0");
    assert!(
        eth0.contains(",UP") || eth0.contains("<UP"),
        "{ns}: eth0 not up: {eth0}"
    );
    let lo = lab.ip(ns, "-o link show lo");
    assert!(
        lo.contains(",UP") || lo.contains("<UP"),
        "{ns}: lo not up: {lo}"
    );
    let routes = lab.ip(ns, "-4 route show");
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0 proto 171")),
        "{ns}: no default route: {routes}"
    );
    assert!(
        routes.contains(&format!("{GATEWAY} dev eth0 proto 171 scope link")),
        "{ns}: no gateway route: {routes}"
    );
    let neigh = lab.ip(ns, &format!("neigh show {GATEWAY} dev eth0"));
    assert!(
        neigh.contains(&format!("lladdr {} PERMANENT", host_mac.to_lowercase())),
        "{ns}: gateway neighbour not permanent → {host_mac}: {neigh}"
    );
}

fn assert_host_wired(lab: &Lab, ip: Ipv4Addr, host_veth: &str) {
    // `ip route show proto 171` leaves the protocol out of its output: list them all.
    let routes = lab.ip(&lab.host(), "-4 route show");
    let want = format!("{ip} dev {host_veth} proto 171 scope link");
    assert!(
        routes.lines().any(|r| r.trim() == want),
        "host lacks `{want}`: {routes:?}"
    );
    let link = lab.ip(&lab.host(), &format!("-o link show {host_veth}"));
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "{host_veth} not up: {link}"
    );
    assert!(
        !lab.ip(&lab.host(), &format!("-4 -o addr show dev {host_veth}"))
            .contains("inet "),
        "{host_veth} must carry no address"
    );
}

fn host_route_for(lab: &Lab, ip: Ipv4Addr) -> Option<String> {
    let prefix = format!("{ip} ");
    lab.host_routes()
        .into_iter()
        .find(|r| r.starts_with(&prefix))
}

#[test]
fn fifty_pods_all_pairs_check_and_delete() {
    const PODS: usize = 50;
    let mut lab = Lab::new("10.240.0.0/16");
    // Pod 4's host veth is deleted by hand below; a periodic reconcile must not release it
    // behind the test's back (the counts are asserted).
    lab.start_agent(&["--reconcile-interval", "600s"]);

    let mut pods = Vec::new();
    let started = Instant::now();
    for i in 0..PODS {
        let ns = lab.pod(i);
        let cid = format!("c{i}");
        let out = lab.add(&cid, &ns);
        out.expect_ok(&format!("ADD {cid}"));
        let ip = out
            .ip()
            .unwrap_or_else(|| panic!("ADD {cid}: no ip: {}", out.stdout));
        pods.push((cid, ns, ip, out.json.clone()));
    }
    eprintln!("{PODS} ADDs in {:?}", started.elapsed());

    // Unique /32s inside the VPC.
    let ips: HashSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses handed out");
    for (cid, _, ip, res) in &pods {
        assert!(in_cidr(*ip, &lab.vpc), "{cid}: {ip} outside {}", lab.vpc);
        assert_eq!(res["ips"][0]["address"], format!("{ip}/32"), "{cid}");
        assert_eq!(res["ips"][0]["gateway"], GATEWAY, "{cid}");
    }
    assert_eq!(stat(&lab, "assigned"), PODS as u64);
    assert_eq!(lab.host_veths().len(), PODS, "{:?}", lab.host_veths());
    assert_eq!(lab.host_routes().len(), PODS, "{:?}", lab.host_routes());

    // Every attachment as the recipe says, on both sides.
    for (cid, ns, ip, res) in &pods {
        let host_veth = res["interfaces"][0]["name"]
            .as_str()
            .expect("host veth name");
        let host_mac = res["interfaces"][0]["mac"].as_str().expect("host veth mac");
        assert!(
            host_veth.len() == 14
                && host_veth.starts_with("vpc")
                && host_veth[3..].chars().all(|c| c.is_ascii_hexdigit()),
            "{cid}: host veth name {host_veth}"
        );
        assert_eq!(res["interfaces"][1]["name"], "eth0", "{cid}");
        assert_eq!(
            res["interfaces"][1]["sandbox"],
            Lab::netns_path(ns),
            "{cid}"
        );
        assert_pod_wired(&lab, ns, *ip, host_mac);
        assert_host_wired(&lab, *ip, host_veth);
    }

    // Every pod reaches every other pod, and the host namespace reaches every pod.
    let t = Instant::now();
    // A node has an address of its own (its node IP) that pods answer. The lab's host
    // namespace has none, and without one the host's pings carry no usable source address:
    // give it one on its `lo` (this kernel has no dummy devices). Private namespace only.
    vpcnet_tests::sh(&format!(
        "ip -n {} addr add 192.168.255.1/32 dev lo",
        lab.host()
    ));
    let mut jobs: Vec<(String, Vec<String>)> = pods
        .iter()
        .map(|(_, ns, me, _)| {
            let targets = pods
                .iter()
                .filter(|p| p.2 != *me)
                .map(|p| p.2.to_string())
                .collect();
            (ns.clone(), targets)
        })
        .collect();
    jobs.push((lab.host(), pods.iter().map(|p| p.2.to_string()).collect()));
    let failures = vpcnet_tests::ping::ping_matrix(&jobs, 3);
    assert!(
        failures.is_empty(),
        "{} pings failed: {failures:?}",
        failures.len()
    );
    eprintln!("{} pings in {:?}", PODS * (PODS - 1) + PODS, t.elapsed());
    // The matrix can fail: an address nobody has does not answer.
    assert!(
        !lab.ping(&pods[0].1, "10.240.255.254"),
        "ping to an unassigned address succeeded"
    );

    // CHECK passes for every pod while all is intact.
    for (cid, ns, _, res) in &pods {
        let c = check(&lab, cid, ns, res);
        assert!(c.ok(), "CHECK {cid}: {}", c.stdout);
    }

    // Break one piece per pod; CHECK names it.
    let (ip1, ip4) = (pods[1].2, pods[4].2);
    let breakages: [(usize, String, &str); 5] = [
        (
            0,
            format!("ip -n {} route del default", pods[0].1),
            "default route",
        ),
        (
            1,
            format!("ip -n {} route del {ip1}/32", lab.host()),
            "host route",
        ),
        (
            2,
            format!("ip -n {} route del {GATEWAY} dev eth0", pods[2].1),
            "pod route 169.254.1.1",
        ),
        (
            3,
            format!("ip -n {} addr flush dev eth0", pods[3].1),
            "pod address",
        ),
        (
            4,
            format!(
                "ip -n {} link del {}",
                lab.host(),
                pods[4].3["interfaces"][0]["name"].as_str().expect("name")
            ),
            "host veth",
        ),
    ];
    for (i, cmd, what) in &breakages {
        let (cid, ns, _, res) = &pods[*i];
        vpcnet_tests::sh(cmd);
        let c = check(&lab, cid, ns, res);
        assert!(!c.ok(), "CHECK {cid} passed after `{cmd}`");
        assert_eq!(
            c.code(),
            Some(110),
            "CHECK {cid} after `{cmd}`: {}",
            c.stdout
        );
        assert!(
            c.msg().contains(what),
            "CHECK {cid} after `{cmd}`: msg should name {what:?}: {}",
            c.msg()
        );
    }
    assert!(
        host_route_for(&lab, ip4).is_none(),
        "route went with its veth"
    );
    // The untouched pods still pass.
    for (cid, ns, _, res) in &pods[5..8] {
        let c = check(&lab, cid, ns, res);
        assert!(c.ok(), "CHECK {cid} (untouched): {}", c.stdout);
    }

    // DEL everything. Pod 10 is deleted the way a runtime does after the namespace is gone:
    // CNI_NETNS empty.
    let t = Instant::now();
    for (i, (cid, ns, ip, _)) in pods.iter().enumerate() {
        let out = if i == 10 {
            lab.cni("DEL", cid, "eth0", "", &lab.conf())
        } else {
            lab.del(cid, ns)
        };
        out.expect_ok(&format!("DEL {cid}"));
        assert!(
            out.stdout.trim().is_empty(),
            "DEL {cid} printed {}",
            out.stdout
        );
        // The host route goes synchronously with DEL.
        assert_eq!(
            host_route_for(&lab, *ip),
            None,
            "route of {cid} left after DEL"
        );
        if i % 10 == 0 {
            let allocs = allocations(&lab);
            assert!(
                !allocs.iter().any(|(c, _)| c == cid),
                "{cid} still assigned after DEL: {allocs:?}"
            );
            assert_eq!(stat(&lab, "assigned"), (PODS - i - 1) as u64);
        }
    }
    eprintln!("{PODS} DELs in {:?}", t.elapsed());
    assert!(lab.host_routes().is_empty(), "{:?}", lab.host_routes());
    let st = stats(&lab);
    assert_eq!(st["assigned"], 0, "{st}");
    assert_eq!(st["cooling"], PODS as u64, "{st}");
    assert!(allocations(&lab).is_empty());
    // The host veths are deleted in the background, promptly.
    let gone = lab.wait_for(Duration::from_secs(5), || lab.host_veths().is_empty());
    assert!(
        gone,
        "host veths left 5 s after DEL: {:?}",
        lab.host_veths()
    );
    // … and with them the pod ends.
    for (cid, ns, _, _) in &pods {
        let links = lab.ip(ns, "-o link show");
        assert!(!links.contains("eth0"), "{cid}: eth0 left in pod: {links}");
    }
    // Deleted pods are unreachable.
    assert!(
        !lab.ping(&lab.host(), &pods[20].2.to_string()),
        "deleted pod still answers"
    );

    // DEL is idempotent, with and without a netns.
    for (cid, ns, _, _) in &pods[..3] {
        lab.del(cid, ns).expect_ok(&format!("second DEL {cid}"));
        lab.cni("DEL", cid, "eth0", "", &lab.conf())
            .expect_ok(&format!("DEL {cid} with empty CNI_NETNS"));
    }
    // Never-added containers, too.
    lab.cni("DEL", "never-added", "eth0", "", &lab.conf())
        .expect_ok("DEL of an unknown container");
    assert_eq!(
        stat(&lab, "cooling"),
        PODS as u64,
        "a repeated DEL changed the pool"
    );
}

#[test]
fn readd_after_del_and_repeated_add() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let p1 = lab.pod(1);
    let p2 = lab.pod(2);
    let a = lab.add("c1", &p1);
    a.expect_ok("ADD c1");
    let b = lab.add("c2", &p2);
    b.expect_ok("ADD c2");
    let (ip1, ip2) = (a.ip().expect("ip1"), b.ip().expect("ip2"));

    // ADD twice for the same key without DEL: the same address, nothing doubled.
    let again = lab.add("c1", &p1);
    again.expect_ok("second ADD c1");
    assert_eq!(again.ip(), Some(ip1), "{}", again.stdout);
    assert_eq!(stat(&lab, "assigned"), 2);
    assert_eq!(lab.host_veths().len(), 2, "{:?}", lab.host_veths());
    let routes = lab.host_routes();
    assert_eq!(routes.len(), 2, "{routes:?}");
    let addr = lab.ip(&p1, "-4 -o addr show dev eth0");
    assert_eq!(addr.matches("inet ").count(), 1, "{addr}");
    assert!(
        lab.ping(&p1, &ip2.to_string()),
        "c1 → c2 after repeated ADD"
    );
    assert!(
        check(&lab, "c1", &p1, &again.json).ok(),
        "CHECK after repeated ADD"
    );

    // DEL then immediate re-ADD of the same container, several times: the plugin must
    // replace the veth whose background deletion is still pending, and the background
    // deletion must not take the new one.
    let mut prev_ip = ip1;
    let mut seen = HashSet::from([ip1, ip2]);
    let mut last = again;
    for round in 0..5 {
        lab.del("c1", &p1)
            .expect_ok(&format!("DEL c1 round {round}"));
        let r = lab.add("c1", &p1);
        r.expect_ok(&format!("re-ADD c1 round {round}"));
        let ip = r.ip().expect("re-ADD ip");
        // The old address is cooling down (30 s default): a fresh one.
        assert_ne!(
            ip, prev_ip,
            "round {round}: re-ADD reused a cooling address"
        );
        assert!(seen.insert(ip), "round {round}: {ip} handed out twice");
        prev_ip = ip;
        assert!(lab.ping(&p1, &ip2.to_string()), "round {round}: c1 → c2");
        assert!(
            lab.ping(&p2, &ip.to_string()),
            "round {round}: c2 → c1 ({ip})"
        );
        last = r;
    }
    // Give the background deleter time to act on everything queued, then look again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.host_veths().len(), 2, "{:?}", lab.host_veths());
    let c = check(&lab, "c1", &p1, &last.json);
    assert!(c.ok(), "CHECK after re-ADDs: {}", c.stdout);
    assert!(
        lab.ping(&p2, &prev_ip.to_string()),
        "c2 → c1 after the deleter ran"
    );
    let st = stats(&lab);
    assert_eq!(st["assigned"], 2, "{st}");
    assert_eq!(st["cooling"], 5, "{st}");
}

#[test]
fn released_address_cools_down_before_reuse() {
    // One /28 VPC = one prefix: the pool cannot grow, so reuse is forced once it is full.
    let cooldown = Duration::from_secs(3);
    let mut lab = Lab::new("10.240.0.0/28");
    lab.start_agent(&["--ip-cooldown", "3s", "--prefix-len", "28"]);
    let p0 = lab.pod(0);
    let first = lab.add("c0", &p0);
    first.expect_ok("ADD c0");
    let total = usize::try_from(stat(&lab, "total")).expect("total");
    assert!((4..=16).contains(&total), "pool of a /28: {}", lab.status());

    // Fill up to all but one address, then release one in the middle.
    let mut held: Vec<(String, String, Ipv4Addr)> = Vec::new();
    held.push(("c0".into(), p0.clone(), first.ip().expect("ip")));
    for i in 1..total - 1 {
        let ns = lab.pod(i);
        let cid = format!("c{i}");
        let out = lab.add(&cid, &ns);
        out.expect_ok(&format!("ADD {cid}"));
        held.push((cid, ns, out.ip().expect("ip")));
    }
    let (rcid, rns, released) = held.remove(1);
    let t0 = Instant::now();
    lab.del(&rcid, &rns)
        .expect_ok("DEL of the released container");
    let t1 = Instant::now();
    lab.remove_pod(&rns);
    assert_eq!(stat(&lab, "cooling"), 1);

    // Within the cooldown: the one free address goes, then the pool is exhausted: the
    // cooling address is not handed out.
    let ns = lab.pod(100);
    let out = lab.add("n0", &ns);
    out.expect_ok("ADD n0 (last free address)");
    assert_ne!(
        out.ip(),
        Some(released),
        "cooling address reused at {:?}",
        t0.elapsed()
    );
    let ns = lab.pod(101);
    let veths_before = lab.host_veths().len();
    let deny = lab.add("n1", &ns);
    let denied_at = t1.elapsed();
    assert!(
        denied_at < cooldown - Duration::from_millis(500),
        "test too slow to observe the cooldown ({denied_at:?})"
    );
    assert!(
        !deny.ok(),
        "ADD during cooldown got {:?} (released {released})",
        deny.ip()
    );
    assert_eq!(deny.code(), Some(11), "{}", deny.stdout);
    // … and left nothing behind.
    assert_eq!(lab.host_veths().len(), veths_before);
    assert!(!lab.ip(&ns, "-o link show").contains("eth0"));
    assert_eq!(stat(&lab, "assigned"), (total - 1) as u64);

    // After the cooldown the address is reusable, and being the only one, it is what n1 gets.
    let deadline = t1 + Duration::from_secs(15);
    let got = loop {
        let r = lab.add("n1", &ns);
        if r.ok() {
            break r;
        }
        assert_eq!(r.code(), Some(11), "{}", r.stdout);
        assert!(
            Instant::now() < deadline,
            "address still cooling 15 s after release: {}",
            r.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reused_after = t0.elapsed();
    assert_eq!(got.ip(), Some(released), "{}", got.stdout);
    assert!(
        reused_after >= cooldown,
        "released address reused after {reused_after:?}, before the {cooldown:?} cooldown"
    );
    assert!(
        lab.ping(&ns, &held[0].2.to_string()),
        "reused address works"
    );
    let st = stats(&lab);
    assert_eq!(st["cooling"], 0, "{st}");
    assert_eq!(st["assigned"].as_u64(), Some(total as u64), "{st}");
}

/// Issue 14: neither end of a pod's veth generates an IPv6 link-local address (no DAD, MLD or
/// router solicitation: per-link kernel work under rtnl_lock that slowed ADDs under churn),
/// and the pod still takes static IPv6 addresses and neighbours (what dual stack will add).
#[test]
fn veth_ends_have_no_ipv6_link_local_but_take_static_ipv6() {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        vpcnet_tests::skip(
            "veth_ends_have_no_ipv6_link_local_but_take_static_ipv6",
            "kernel without IPv6",
        );
        return;
    }
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    let ns = lab.pod(0);
    let peer = lab.pod(1);
    let host = lab.host();
    let out = lab.add("v6quiet", &ns);
    out.expect_ok("ADD v6quiet");
    let veth = vpcnet_tests::host_veth_name("v6quiet", "eth0");
    // DAD would have made the address permanent well within this; the RS goes out at once.
    std::thread::sleep(Duration::from_millis(300));
    let mode = |ns: &str, dev: &str| {
        vpcnet_tests::sh(&format!(
            "ip netns exec {ns} cat /proc/sys/net/ipv6/conf/{dev}/addr_gen_mode"
        ))
        .trim()
        .to_string()
    };
    assert_eq!(mode(&ns, "eth0"), "1", "pod end's addr_gen_mode (1: none)");
    assert_eq!(
        mode(&host, &veth),
        "1",
        "host end's addr_gen_mode (1: none)"
    );
    let v6 = |ns: &str, dev: &str| lab.ip(ns, &format!("-6 -o addr show dev {dev}"));
    assert_eq!(v6(&ns, "eth0").trim(), "", "pod end has IPv6 addresses");
    assert_eq!(v6(&host, &veth).trim(), "", "host end has IPv6 addresses");
    // Both ends UP, carrier on, and IPv4 works as before.
    assert!(lab.ip(&ns, "-o link show eth0").contains("LOWER_UP"));
    assert!(lab
        .ip(&host, &format!("-o link show {veth}"))
        .contains("LOWER_UP"));
    let ip = out.ip().expect("ip");
    let mut conf = lab.conf();
    conf["prevResult"] = out.json.clone();
    let c = lab.cni("CHECK", "v6quiet", "eth0", &Lab::netns_path(&ns), &conf);
    assert!(c.ok(), "CHECK: {}", c.stdout);
    lab.add("v6peer", &peer).expect_ok("ADD v6peer");
    assert!(
        lab.ping(&peer, &ip.to_string()),
        "{ip} unreachable from pod v6peer"
    );
    // What dual stack needs: a static /128 and a permanent fe80::1 neighbour on eth0.
    assert!(vpcnet_tests::sh_ok(&format!(
        "ip -n {ns} -6 addr add fd00:10::5/128 dev eth0 nodad && \
         ip -n {ns} -6 neigh add fe80::1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent"
    )));
    assert!(
        v6(&ns, "eth0").contains("fd00:10::5/128"),
        "{}",
        v6(&ns, "eth0")
    );
}
