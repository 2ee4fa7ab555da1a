//! Results in the shape of every supported cniVersion, and chaining after another plugin.

use serde_json::{json, Value};
use vpcnet_tests::{CniOutput, Lab};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const GATEWAY: &str = "169.254.1.1";

fn conf_v(lab: &Lab, v: &str) -> Value {
    let mut c = lab.conf();
    c["cniVersion"] = json!(v);
    c
}

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':').all(|b| {
            b.len() == 2
                && b.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// `link/ether …` and `mtu …` of a link, from `ip -o link show`.
fn link_facts(lab: &Lab, ns: &str, dev: &str) -> (String, u64) {
    let l = lab.ip(ns, &format!("-o link show {dev}"));
    let words: Vec<&str> = l.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_else(|| panic!("no {k} in {l}"))
    };
    (after("link/ether"), after("mtu").parse().expect("mtu"))
}

fn add_v(lab: &Lab, conf: &Value, cid: &str, ns: &str) -> CniOutput {
    lab.cni("ADD", cid, "eth0", &Lab::netns_path(ns), conf)
}

/// Asserts the exact shape of our (unchained) ADD result for version `v`.
fn assert_shape(lab: &Lab, v: &str, ns: &str, r: &Value, mtu: Option<u64>) {
    let old = v.starts_with("0.");
    assert_eq!(r["cniVersion"], v, "{r}");
    let keys: Vec<&str> = r
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in &keys {
        assert!(
            ["cniVersion", "interfaces", "ips", "routes", "dns"].contains(k),
            "{v}: unexpected key {k}: {r}"
        );
    }
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "{v}: {r}");
    let host = &ifs[0];
    let pod = &ifs[1];
    let host_name = host["name"].as_str().expect("host name");
    assert!(
        host_name.starts_with("vpc") && host_name.len() == 14,
        "{v}: {host_name}"
    );
    assert!(
        host.get("sandbox").is_none(),
        "{v}: host interface has a sandbox: {r}"
    );
    assert_eq!(pod["name"], "eth0");
    assert_eq!(pod["sandbox"], Lab::netns_path(ns));
    for i in ifs {
        assert!(
            is_mac(i["mac"].as_str().unwrap_or_default()),
            "{v}: mac {i}"
        );
    }
    // The MACs and MTUs the result reports are the kernel's.
    let (host_mac, host_mtu) = link_facts(lab, &lab.host(), host_name);
    let (pod_mac, pod_mtu) = link_facts(lab, ns, "eth0");
    assert_eq!(host["mac"], host_mac, "{v}");
    assert_eq!(pod["mac"], pod_mac, "{v}");
    assert_eq!(host_mtu, pod_mtu);
    if let Some(m) = mtu {
        assert_eq!(pod_mtu, m, "{v}: netconf mtu not applied");
    }
    for i in ifs {
        match i.get("mtu") {
            // Only 1.1.0 results carry mtu, and only when it is known.
            Some(m) => {
                assert_eq!(v, "1.1.0", "{v}: mtu in a pre-1.1 result: {r}");
                assert_eq!(m.as_u64(), Some(pod_mtu), "{v}: {r}");
            }
            None => assert!(
                v != "1.1.0" || mtu.is_none(),
                "{v}: mtu {mtu:?} was set but the result omits it: {r}"
            ),
        }
    }
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{v}: {r}");
    let ip = &ips[0];
    let addr = ip["address"].as_str().expect("address");
    assert!(
        addr.ends_with("/32") && addr.starts_with("10.240."),
        "{v}: {addr}"
    );
    assert_eq!(ip["gateway"], GATEWAY);
    assert_eq!(
        ip["interface"], 1,
        "{v}: ips[0].interface must point at eth0: {r}"
    );
    if old {
        assert_eq!(
            ip["version"], "4",
            "{v}: 0.3.x/0.4.0 need ips[].version: {r}"
        );
    } else {
        assert!(
            ip.get("version").is_none(),
            "{v}: 1.x has no ips[].version: {r}"
        );
    }
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]),
        "{v}"
    );
    let pod_addr = lab.ip(ns, "-4 -o addr show dev eth0");
    assert!(
        pod_addr.contains(&format!("inet {addr} ")),
        "{v}: {pod_addr}"
    );
}

#[test]
fn add_check_del_in_every_version() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    for (i, v) in VERSIONS.iter().enumerate() {
        let ns = lab.pod(i);
        let cid = format!("ver-{v}");
        let conf = conf_v(&lab, v);
        let r = add_v(&lab, &conf, &cid, &ns);
        r.expect_ok(&format!("ADD {v}"));
        assert_shape(&lab, v, &ns, &r.json, None);

        // CHECK exists from 0.4.0 on; before, it is an incompatible-version error.
        let mut c = conf.clone();
        c["prevResult"] = r.json.clone();
        let chk = lab.cni("CHECK", &cid, "eth0", &Lab::netns_path(&ns), &c);
        if v.starts_with("0.3") {
            assert_eq!(chk.code(), Some(1), "CHECK {v}: {}", chk.stdout);
            assert_eq!(
                chk.json["cniVersion"], *v,
                "error result in the requested version"
            );
        } else {
            assert!(chk.ok(), "CHECK {v}: {}", chk.stdout);
        }

        let d = lab.cni("DEL", &cid, "eth0", &Lab::netns_path(&ns), &conf);
        d.expect_ok(&format!("DEL {v}"));
        let ip = r.ip().expect("ip").to_string();
        assert!(
            !lab.host_routes()
                .iter()
                .any(|l| l.starts_with(&format!("{ip} "))),
            "{v}: route left after DEL"
        );
    }
    // Errors come back in the requested version, too.
    let mut bad = conf_v(&lab, "0.4.0");
    bad["mtu"] = json!(1);
    let ns = lab.pod(99);
    let e = add_v(&lab, &bad, "bad", &ns);
    assert_eq!(e.code(), Some(7), "{}", e.stdout);
    assert_eq!(e.json["cniVersion"], "0.4.0", "{}", e.stdout);
}

#[test]
fn mtu_in_results_only_from_1_1_0() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    for (i, v) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let ns = lab.pod(i);
        let mut conf = conf_v(&lab, v);
        conf["mtu"] = json!(1400);
        let r = add_v(&lab, &conf, &format!("mtu-{i}"), &ns);
        r.expect_ok(&format!("ADD {v} mtu 1400"));
        assert_shape(&lab, v, &ns, &r.json, Some(1400));
        if *v == "1.1.0" {
            assert_eq!(r.json["interfaces"][0]["mtu"], 1400, "{}", r.stdout);
            assert_eq!(r.json["interfaces"][1]["mtu"], 1400, "{}", r.stdout);
        }
    }
}

/// What a plugin before us in the chain (say, a bridge) reported.
fn foreign_result(v: &str, sandbox: &str) -> Value {
    let mut r = json!({
        "cniVersion": v,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
            {"name": "net1", "mac": "0a:58:0a:f4:00:05", "sandbox": sandbox},
        ],
        "ips": [{"address": "192.168.77.5/24", "gateway": "192.168.77.1", "interface": 1}],
        "routes": [{"dst": "192.168.0.0/16", "gw": "192.168.77.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    });
    if v.starts_with("0.") {
        r["ips"][0]["version"] = json!("4");
    }
    r
}

#[test]
fn chained_after_another_plugin_keeps_its_result() {
    let mut lab = Lab::new("10.240.0.0/16");
    lab.start_agent(&[]);
    for (i, v) in ["1.1.0", "1.0.0", "0.4.0"].iter().enumerate() {
        let ns = lab.pod(i);
        let path = Lab::netns_path(&ns);
        let prev = foreign_result(v, &path);
        let mut conf = conf_v(&lab, v);
        conf["prevResult"] = prev.clone();
        let cid = format!("chain-{i}");
        let r = add_v(&lab, &conf, &cid, &ns);
        r.expect_ok(&format!("chained ADD {v}"));
        let res = &r.json;
        assert_eq!(res["cniVersion"], *v);

        // The earlier plugin's entries come first, untouched.
        let ifs = res["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifs.len(), 4, "{v}: {res}");
        assert_eq!(ifs[0], prev["interfaces"][0], "{v}");
        assert_eq!(ifs[1], prev["interfaces"][1], "{v}");
        assert!(
            ifs[2]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("vpc")),
            "{v}: {res}"
        );
        assert_eq!(ifs[3]["name"], "eth0");
        assert_eq!(ifs[3]["sandbox"], path);
        let ips = res["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{v}: {res}");
        assert_eq!(
            ips[0], prev["ips"][0],
            "{v}: the earlier plugin's address changed"
        );
        assert_eq!(
            r.ip(),
            Some(std::net::Ipv4Addr::new(192, 168, 77, 5)),
            "{v}: ips[0] is the earlier plugin's address: {res}"
        );
        let addr = ips[1]["address"].as_str().expect("our address");
        assert!(
            addr.starts_with("10.240.") && addr.ends_with("/32"),
            "{v}: {res}"
        );
        assert_eq!(
            ips[1]["interface"], 3,
            "{v}: our ip must point at our eth0: {res}"
        );
        if v.starts_with("0.") {
            assert_eq!(ips[1]["version"], "4", "{v}: {res}");
        }
        let routes = res["routes"].as_array().expect("routes");
        assert!(
            routes.contains(&prev["routes"][0]),
            "{v}: foreign route lost: {res}"
        );
        assert!(
            routes.contains(&json!({"dst": "0.0.0.0/0", "gw": GATEWAY})),
            "{v}: our default route missing: {res}"
        );
        assert_eq!(res["dns"], prev["dns"], "{v}: dns lost");
        // The kernel has what we reported.
        let a = lab.ip(&ns, "-4 -o addr show dev eth0");
        assert!(a.contains(&format!("inet {addr} ")), "{v}: {a}");

        // CHECK of the chained result finds our part by interface name.
        let mut c = conf_v(&lab, v);
        c["prevResult"] = res.clone();
        let chk = lab.cni("CHECK", &cid, "eth0", &path, &c);
        assert!(chk.ok(), "chained CHECK {v}: {}", chk.stdout);

        // DEL in a chain prints nothing and removes our route.
        let mut d = conf_v(&lab, v);
        d["prevResult"] = res.clone();
        let out = lab.cni("DEL", &cid, "eth0", &path, &d);
        out.expect_ok(&format!("chained DEL {v}"));
        let ip = addr.trim_end_matches("/32");
        assert!(
            !lab.host_routes()
                .iter()
                .any(|l| l.starts_with(&format!("{ip} "))),
            "{v}: route left"
        );
    }
}
