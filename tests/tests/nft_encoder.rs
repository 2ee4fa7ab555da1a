//! The nf_tables netlink encoder (`vpcnet_netlink::nftables`) against `nft -j -f` on the
//! real kernel: the same transaction (the policy renderer's and the SNAT tables') applied by
//! `nft` in one private namespace and by the encoder in another must leave the same tables —
//! compared as `nft -j list table` (handles aside) and as the kernel's bytecode
//! (`nft --debug=netlink list table`, handles aside). A transaction the kernel rejects names
//! the object and leaves the old table in force.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use vpcnet_netlink::nftables::json::batch_from_json;
use vpcnet_policy::compile::{Allow, NodePolicy, Peer, PodPolicy, PortMatch};
use vpcnet_policy::Protocol;
use vpcnet_tests::netns::{in_netns, Namespaces};
use vpcnet_tests::unique_prefix;

fn nft_available() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn nft_in(ns: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns, "nft"]).args(args);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn nft");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write nft stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("nft output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `v` without `handle` members (they count differently in the two namespaces).
fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            o.values_mut().for_each(strip_handles);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// The kernel's bytecode of `table`, without handles and with anonymous set names as
/// numbered by each namespace kept (they are assigned in the same order).
fn bytecode(ns: &str, family: &str, table: &str) -> String {
    let (ok, out, err) = nft_in(
        ns,
        &["--debug=netlink", "list", "table", family, table],
        None,
    );
    assert!(ok, "nft list in {ns}: {err}");
    // Elements of a hash set list in the order of its (randomly seeded) hash: sorted here.
    let mut lines: Vec<String> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    for l in out.lines() {
        if l.starts_with("\telement") {
            run.push(l.to_owned());
            continue;
        }
        run.sort();
        lines.append(&mut run);
        lines.push(l.to_owned());
    }
    run.sort();
    lines.append(&mut run);
    lines
        .iter()
        .map(|l| {
            // Rule headers: "<family> <table> <chain> <handle> [<position>]".
            if l.starts_with(&format!("{family} {table} ")) && !l.contains('@') {
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            } else {
                l.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn listing(ns: &str, family: &str, table: &str) -> Value {
    let (ok, out, err) = nft_in(ns, &["-j", "list", "table", family, table], None);
    assert!(ok, "nft -j list in {ns}: {err}");
    let mut v: Value = serde_json::from_str(&out).expect("nft -j output");
    strip_handles(&mut v);
    v
}

/// Applies `ruleset` with nft in one namespace and with the encoder in another, and asserts
/// the listed tables are the same.
fn assert_same(ruleset: &Value, tables: &[(&str, &str)], absent: &[(&str, &str)]) {
    let p = unique_prefix();
    let mut nss = Namespaces::default();
    let (by_nft, by_enc) = (format!("{p}-nft"), format!("{p}-enc"));
    nss.add_batch([by_nft.as_str(), by_enc.as_str()]);
    let (ok, _, err) = nft_in(&by_nft, &["-j", "-f", "-"], Some(&ruleset.to_string()));
    assert!(ok, "nft -j -f: {err}");
    in_netns(Some(&by_enc), || {
        batch_from_json(ruleset)
            .expect("translates")
            .commit()
            .expect("the kernel takes the encoder's batch")
    });
    for (family, table) in tables {
        let (a, b) = (
            listing(&by_nft, family, table),
            listing(&by_enc, family, table),
        );
        assert_eq!(
            a,
            b,
            "table {family} {table}: nft\n{}\nencoder\n{}",
            serde_json::to_string_pretty(&a).unwrap_or_default(),
            serde_json::to_string_pretty(&b).unwrap_or_default()
        );
        let (a, b) = (
            bytecode(&by_nft, family, table),
            bytecode(&by_enc, family, table),
        );
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(8)
            .map(|(x, y)| format!("nft:     {x}\nencoder: {y}"))
            .collect();
        assert!(
            a == b,
            "bytecode of table {family} {table} differs ({} vs {} lines):\n{}",
            a.lines().count(),
            b.lines().count(),
            diff.join("\n")
        );
        assert!(a.contains('['), "the listing shows rules: {a}");
    }
    for (family, table) in absent {
        let (ok, _, _) = nft_in(&by_enc, &["list", "table", family, table], None);
        assert!(!ok, "table {family} {table} must not exist");
    }
}

fn net(s: &str) -> ipnetwork::Ipv4Network {
    s.parse().expect("cidr")
}

fn allow(peer: Peer, port: PortMatch) -> Allow {
    Allow { peer, port }
}

fn ports(proto: Protocol, first: u16, last: u16) -> PortMatch {
    PortMatch::Ports { proto, first, last }
}

/// A node with every shape the renderer makes: pods isolated for ingress, egress, both;
/// pod peers, ipBlocks with except (intervals), the whole address space, ports and port
/// ranges of TCP, UDP and SCTP (concatenated intervals), an isolated direction with nothing
/// allowed.
pub fn sample_policy() -> NodePolicy {
    let pod = |name: &str, ip: [u8; 4], veth: &str| PodPolicy {
        namespace: "x".into(),
        name: name.into(),
        ip: Some(Ipv4Addr::from(ip)),
        ip6: None,
        host_veth: veth.into(),
        ingress: None,
        egress: None,
        policies: vec!["x/p".into()],
    };
    let mut a = pod("a", [10, 9, 0, 2], "veth1a2b3c4d5e");
    a.ingress = Some(BTreeSet::from([
        allow(Peer::Pod(Ipv4Addr::new(10, 9, 1, 7)), PortMatch::Any),
        allow(
            Peer::Block {
                cidr: net("192.168.0.0/16"),
                except: vec![net("192.168.3.0/24"), net("192.168.77.128/25")],
            },
            ports(Protocol::Tcp, 80, 81),
        ),
        allow(
            Peer::Pod(Ipv4Addr::new(10, 9, 1, 8)),
            ports(Protocol::Udp, 53, 53),
        ),
        allow(
            Peer::Pod(Ipv4Addr::new(10, 9, 1, 9)),
            ports(Protocol::Sctp, 1000, 2000),
        ),
        allow(
            Peer::Pod(Ipv4Addr::new(10, 9, 1, 9)),
            ports(Protocol::Tcp, 8000, 65535),
        ),
    ]));
    a.egress = Some(BTreeSet::from([allow(
        Peer::anyone(),
        ports(Protocol::Udp, 53, 53),
    )]));
    let mut b = pod("b", [10, 9, 0, 3], "veth0000000001");
    b.egress = Some(BTreeSet::new());
    let mut c = pod("c", [10, 9, 0, 4], "veth0000000002");
    c.ingress = Some(BTreeSet::from([
        allow(Peer::anyone(), PortMatch::Any),
        allow(
            Peer::Pod(Ipv4Addr::new(10, 9, 1, 7)),
            ports(Protocol::Tcp, 443, 443),
        ),
        // Dual-stack: c's IPv6 twin sets exist (a removal must take them out too).
        allow(
            Peer::Pod6("fd00:9::1:7".parse().expect("v6")),
            ports(Protocol::Tcp, 443, 443),
        ),
    ]));
    c.egress = Some(BTreeSet::from([allow(
        Peer::Block {
            cidr: net("0.0.0.0/0"),
            except: vec![net("10.0.0.0/8")],
        },
        PortMatch::Any,
    )]));
    NodePolicy {
        pods: vec![a, b, c, pod("d", [10, 9, 0, 5], "veth0000000003")],
        warnings: Vec::new(),
    }
}

#[test]
fn policy_table_from_the_encoder_equals_nft() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    let rs = vpcnet_policy::render::render(&sample_policy());
    assert_same(&rs, &[("inet", "vpcnet-policy")], &[]);
    // An empty policy: the table with its empty maps and the forward chain.
    let empty = vpcnet_policy::render::render(&NodePolicy::default());
    assert_same(&empty, &[("inet", "vpcnet-policy")], &[]);
}

#[test]
fn snat_tables_from_the_encoder_equal_nft() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    use vpcnet_agent::snat::{ruleset, SnatConfig, SnatV6};
    let ip = SnatConfig {
        vpc_cidrs: vec![net("10.240.0.0/16"), net("10.250.0.0/15")],
        exclude: vec![net("192.168.0.0/16"), net("172.16.0.0/12")],
        ..SnatConfig::default()
    };
    let v = serde_json::to_value(ruleset(&ip)).expect("json");
    assert_same(&v, &[("ip", "vpcnet")], &[("inet", "vpcnet")]);
    // One CIDR each: nft turns a one-element set into a prefix match; so must we.
    let one = SnatConfig {
        vpc_cidrs: vec![net("10.240.0.0/12")],
        ..SnatConfig::default()
    };
    let v = serde_json::to_value(ruleset(&one)).expect("json");
    assert_same(&v, &[("ip", "vpcnet")], &[]);
    let dual = SnatConfig {
        vpc_cidrs: vec![net("10.240.0.0/16")],
        exclude: vec![net("192.168.0.0/16")],
        vpc_cidrs_v6: vec![
            "fd00:10::/48".parse().expect("v6"),
            "2001:db8:1::/48".parse().expect("v6"),
        ],
        exclude_v6: vec!["2001:db8:ff::/48".parse().expect("v6")],
        v6: SnatV6::Always,
    };
    let v = serde_json::to_value(ruleset(&dual)).expect("json");
    assert_same(&v, &[("inet", "vpcnet")], &[("ip", "vpcnet")]);
}

#[test]
fn a_rejected_transaction_names_the_object_and_changes_nothing() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    let p = unique_prefix();
    let mut nss = Namespaces::default();
    let ns = format!("{p}-rej");
    nss.add(&ns);
    let good = vpcnet_policy::render::render(&sample_policy());
    in_netns(Some(&ns), || batch_from_json(&good).expect("json").commit()).expect("first apply");
    let before = listing(&ns, "inet", "vpcnet-policy");
    // The same table, but one dispatch element jumps to a chain that does not exist.
    let mut bad = good.clone();
    let cmds = bad["nftables"].as_array_mut().expect("array");
    cmds.push(
        json!({"add": {"element": {"family": "inet", "table": "vpcnet-policy",
        "name": "egress_dispatch", "elem": [["veth0000000009", {"jump": {"target": "nope"}}]]}}}),
    );
    let err = in_netns(Some(&ns), || batch_from_json(&bad).expect("json").commit())
        .expect_err("the kernel rejects a jump to a missing chain");
    let msg = err.to_string();
    assert!(
        msg.contains("egress_dispatch") && msg.contains("vpcnet-policy"),
        "names the object: {msg}"
    );
    assert_eq!(err.errno(), Some(libc_enoent()), "{msg}");
    assert_eq!(
        listing(&ns, "inet", "vpcnet-policy"),
        before,
        "nothing applied"
    );
    // Removal of a present table, then of an absent one.
    let removal = vpcnet_policy::render::removal();
    for _ in 0..2 {
        in_netns(Some(&ns), || {
            batch_from_json(&removal).expect("json").commit()
        })
        .expect("removal");
        let (ok, _, _) = nft_in(&ns, &["list", "table", "inet", "vpcnet-policy"], None);
        assert!(!ok, "removed");
    }
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn unsupported_json_is_an_error_not_a_guess() {
    let rs = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": "t"}}},
        {"add": {"chain": {"family": "inet", "table": "t", "name": "c"}}},
        {"add": {"rule": {"family": "inet", "table": "t", "chain": "c",
            "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp",
                "field": "length"}}, "right": 8}}, {"accept": null}]}}}
    ]});
    let err = batch_from_json(&rs).expect_err("udp length is not in the subset");
    let msg = err.to_string();
    assert!(msg.contains("\"length\"") && msg.contains("udp"), "{msg}");
}

/// `nft -j list table` as a set of objects: sets, maps and chains in any order, the rules of
/// each chain in their order (a delta creates its objects after the dispatch maps).
fn canonical(v: &Value) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
    let mut objs = Vec::new();
    let mut rules: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for o in v["nftables"].as_array().into_iter().flatten() {
        if let Some(r) = o.get("rule") {
            let chain = r["chain"].as_str().unwrap_or_default().to_owned();
            rules.entry(chain).or_default().push(r.to_string());
        } else {
            objs.push(o.to_string());
        }
    }
    objs.sort();
    (objs, rules)
}

#[test]
fn delta_adds_leave_the_table_a_full_render_makes() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    let p = unique_prefix();
    let mut nss = Namespaces::default();
    let (delta_ns, full_ns) = (format!("{p}-dlt"), format!("{p}-full"));
    nss.add_batch([delta_ns.as_str(), full_ns.as_str()]);
    let all = sample_policy();
    // The node before: pod d (not isolated) and pod a; then b and c come, one ADD each.
    let mut node = NodePolicy {
        pods: vec![all.pods[0].clone(), all.pods[3].clone()],
        warnings: Vec::new(),
    };
    let apply_in = |ns: &str, rs: &Value| {
        in_netns(Some(ns), || batch_from_json(rs).expect("json").commit())
            .unwrap_or_else(|e| panic!("apply in {ns}: {e}\n{rs}"))
    };
    apply_in(&delta_ns, &vpcnet_policy::render::render(&node));
    for added in [&all.pods[1], &all.pods[2]] {
        let delta = vpcnet_policy::render::render_delta(&[added]);
        node.pods.push(added.clone());
        let full = vpcnet_policy::render::render(&node);
        let n = |v: &Value| v["nftables"].as_array().map_or(0, Vec::len);
        assert!(n(&delta) < n(&full), "a delta is less than the whole table");
        apply_in(&delta_ns, &delta);
    }
    apply_in(&full_ns, &vpcnet_policy::render::render(&all));
    let (d, f) = (
        listing(&delta_ns, "inet", "vpcnet-policy"),
        listing(&full_ns, "inet", "vpcnet-policy"),
    );
    assert_eq!(
        canonical(&d),
        canonical(&f),
        "after deltas:\n{d}\nfresh:\n{f}"
    );
    // A delta applied twice (a retried ADD) doubles nothing.
    apply_in(
        &delta_ns,
        &vpcnet_policy::render::render_delta(&[&all.pods[2]]),
    );
    assert_eq!(
        canonical(&listing(&delta_ns, "inet", "vpcnet-policy")),
        canonical(&f),
        "a repeated delta changed the table"
    );
    // And the next full apply yields the same table.
    apply_in(&delta_ns, &vpcnet_policy::render::render(&all));
    assert_eq!(
        canonical(&listing(&delta_ns, "inet", "vpcnet-policy")),
        canonical(&f)
    );
    // An ADD after a DEL not yet applied: c goes (chains, sets, dispatch entries), b comes.
    let (a, b, c, d) = (&all.pods[0], &all.pods[1], &all.pods[2], &all.pods[3]);
    let before = NodePolicy {
        pods: vec![a.clone(), c.clone(), d.clone()],
        warnings: Vec::new(),
    };
    let after = NodePolicy {
        pods: vec![a.clone(), b.clone(), d.clone()],
        warnings: Vec::new(),
    };
    apply_in(&delta_ns, &vpcnet_policy::render::render(&before));
    apply_in(&delta_ns, &vpcnet_policy::render::render_change(&[b], &[c]));
    apply_in(&full_ns, &vpcnet_policy::render::render(&after));
    let (d1, f1) = (
        listing(&delta_ns, "inet", "vpcnet-policy"),
        listing(&full_ns, "inet", "vpcnet-policy"),
    );
    assert_eq!(
        canonical(&d1),
        canonical(&f1),
        "after a change:\n{d1}\nfresh:\n{f1}"
    );
    assert!(!d1.to_string().contains(&c.host_veth), "c is gone: {d1}");
}

/// The agent's pod-only passes (an ADD or DEL when nothing else changed: only that pod
/// compiled, only its delta sent, `Enforcer::plan`), applied one after the other through the
/// encoder on a kept-open `Session`, leave exactly the table a full render of the same node
/// makes in a fresh namespace — with an IPv6-only pod among them, and a pod a policy names
/// (a full pass) in between.
#[test]
fn pod_only_passes_leave_the_table_a_full_render_makes() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use vpcnet_agent::netpol::enforce::{Enforcer, Input};
    use vpcnet_agent::netpol::view::Event;
    use vpcnet_policy::LocalPod;

    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    let p = unique_prefix();
    let mut nss = Namespaces::default();
    let (delta_ns, full_ns) = (format!("{p}-pod"), format!("{p}-full"));
    nss.add_batch([delta_ns.as_str(), full_ns.as_str()]);
    let pod = |name: &str, labels: Value, ip6: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIPs": [{"ip": ip6}]},
        }))
        .expect("pod")
    };
    let mut e = Enforcer::default();
    e.input(Input::Pods(Box::new(Event::Listed(vec![
        pod("a", json!({"pod": "a"}), "fd00:7::a"),
        pod("b", json!({"pod": "b"}), "fd00:7::b"),
        pod("c", json!({"pod": "c", "role": "client"}), "fd00:7::c"),
        pod("d", json!({"pod": "d"}), "fd00:7::d"),
        pod("e", json!({"pod": "e", "role": "client"}), "fd00:8::e"),
    ]))));
    e.input(Input::Namespaces(Box::new(Event::Listed(vec![
        serde_json::from_value::<Namespace>(json!({"metadata": {"name": "x"}})).expect("ns"),
    ]))));
    let policies: Vec<NetworkPolicy> = [
        json!({"metadata": {"namespace": "x", "name": "deny"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}],
                                    "ports": [{"port": 53, "protocol": "UDP"}]}]}}),
        json!({"metadata": {"namespace": "x", "name": "clients-to-a"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                     "ports": [{"port": 80}, {"port": 8000, "endPort": 8100}]}]}}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).expect("policy"))
    .collect();
    e.input(Input::Policies(Box::new(Event::Listed(policies))));
    let key = |cid: &str| vpcnet_pool::AllocKey {
        network: "vpcnet".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
    };
    let a = LocalPod::new("x", "a", Ipv4Addr::new(10, 9, 0, 1), &key("ca"))
        .with_ip6(Some("fd00:7::a".parse().expect("ip6")));
    let b = LocalPod::new("x", "b", Ipv4Addr::new(10, 9, 0, 2), &key("cb"));
    let c = LocalPod::new("x", "c", Ipv4Addr::new(10, 9, 0, 3), &key("cc"));
    let d = LocalPod::ipv6_only("x", "d", "fd00:7::d".parse().expect("ip6"), &key("cd"));
    let sorted = |mut v: Vec<LocalPod>| {
        v.sort_by(|x, y| x.host_veth.cmp(&y.host_veth));
        v
    };
    // Opened in delta_ns: its batches go there whatever thread sends them.
    let mut session = in_netns(Some(&delta_ns), vpcnet_netlink::nftables::Session::open)
        .unwrap_or_else(|err| panic!("session: {err}"));
    let mut kinds = Vec::new();
    // The node's pods over time: a; +b; +d (IPv6-only); +c (named by a's policy: full);
    // -b; -d +b again.
    for local in [
        vec![a.clone()],
        vec![a.clone(), b.clone()],
        vec![a.clone(), b.clone(), d.clone()],
        vec![a.clone(), b.clone(), c.clone(), d.clone()],
        vec![a.clone(), c.clone(), d.clone()],
        vec![a.clone(), b.clone(), c.clone()],
    ] {
        let local = sorted(local);
        let plan = e.plan(local.clone()).expect("a change");
        kinds.push(if plan.touched.is_some() {
            "pod"
        } else {
            "full"
        });
        let send = plan
            .delta
            .clone()
            .or(plan.ruleset.clone())
            .expect("something to send");
        batch_from_json(&send)
            .expect("json")
            .commit_in(&mut session)
            .unwrap_or_else(|err| panic!("{kinds:?}: {err}\n{send}"));
        e.applied(plan);
        let fresh =
            vpcnet_policy::render::render(&vpcnet_policy::compile(&e.view().cluster(), &local));
        in_netns(Some(&full_ns), || {
            batch_from_json(&fresh).expect("json").commit()
        })
        .unwrap_or_else(|err| panic!("full apply: {err}"));
        let (d, f) = (
            listing(&delta_ns, "inet", "vpcnet-policy"),
            listing(&full_ns, "inet", "vpcnet-policy"),
        );
        assert_eq!(
            canonical(&d),
            canonical(&f),
            "after {kinds:?}:\n{d}\nfresh:\n{f}"
        );
    }
    assert_eq!(kinds, ["full", "pod", "pod", "full", "pod", "pod"]);
    let t = listing(&delta_ns, "inet", "vpcnet-policy").to_string();
    assert!(
        t.contains("fd00:7::c"),
        "c's IPv6 address is a peer of a: {t}"
    );
}

/// A node of 300 selected pods under 100 policies: each pod isolated both ways, its peers
/// the pods of its "policy" (3 of them, any port), an ipBlock with an except on TCP 80-81,
/// and DNS.
fn big_policy() -> NodePolicy {
    let pods = (0..300u32)
        .map(|i| {
            let policy = i % 100;
            let peers: BTreeSet<Allow> = (0..3u32)
                .map(|k| {
                    let j = policy + 100 * k;
                    allow(
                        Peer::Pod(Ipv4Addr::from(0x0a09_0000 + j)),
                        if k == 0 {
                            PortMatch::Any
                        } else {
                            ports(Protocol::Tcp, 8000, 8000 + u16::try_from(k).unwrap_or(0))
                        },
                    )
                })
                .chain([
                    allow(
                        Peer::Block {
                            cidr: net("192.168.0.0/16"),
                            except: vec![net(&format!("192.168.{policy}.0/24"))],
                        },
                        ports(Protocol::Tcp, 80, 81),
                    ),
                    allow(
                        Peer::Pod(Ipv4Addr::new(10, 96, 0, 10)),
                        ports(Protocol::Udp, 53, 53),
                    ),
                ])
                .collect();
            PodPolicy {
                namespace: format!("ns{policy}"),
                name: format!("p{i}"),
                ip: Some(Ipv4Addr::from(0x0a09_0000 + i)),
                ip6: None,
                host_veth: format!("veth{i:010x}"),
                ingress: Some(peers.clone()),
                egress: Some(peers),
                policies: vec![format!("ns{policy}/np{policy}")],
            }
        })
        .collect();
    NodePolicy {
        pods,
        warnings: Vec::new(),
    }
}

/// `cargo test … --test nft_encoder bench_one_apply -- --ignored --nocapture`: one apply of
/// the 100-policy/300-pod table, by the encoder and by `nft -j -f`, N times each
/// (alternating), p50/p90 in ms; and one pod's delta.
#[test]
#[ignore = "benchmark: docs/benchmarks.md"]
fn bench_one_apply_encoder_vs_nft() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    let n: usize = std::env::var("NFT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let p = unique_prefix();
    let mut nss = Namespaces::default();
    let ns = format!("{p}-bench");
    nss.add(&ns);
    let policy = big_policy();
    let rs = vpcnet_policy::render::render(&policy);
    let text = rs.to_string();
    let (mut enc, mut nft, mut delta) = (Vec::new(), Vec::new(), Vec::new());
    let one = NodePolicy {
        pods: policy.pods[..299].to_vec(),
        warnings: Vec::new(),
    };
    for _ in 0..n {
        let t = std::time::Instant::now();
        in_netns(Some(&ns), || batch_from_json(&rs).expect("json").commit()).expect("encoder");
        enc.push(t.elapsed());
        let t = std::time::Instant::now();
        let (ok, _, err) = nft_in(&ns, &["-j", "-f", "-"], Some(&text));
        nft.push(t.elapsed());
        assert!(ok, "{err}");
        // The table without the last pod, then that pod's ADD as a delta.
        in_netns(Some(&ns), || {
            batch_from_json(&vpcnet_policy::render::render(&one))
                .expect("json")
                .commit()
        })
        .expect("encoder");
        let t = std::time::Instant::now();
        let d = vpcnet_policy::render::render_delta(&[&policy.pods[299]]);
        in_netns(Some(&ns), || batch_from_json(&d).expect("json").commit()).expect("delta");
        delta.push(t.elapsed());
    }
    // Percentile `pct` (0-100) by nearest rank.
    let q = |v: &mut Vec<std::time::Duration>, pct: usize| {
        v.sort();
        let i = (v.len().saturating_sub(1) * pct + 50) / 100;
        v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let objs = rs["nftables"].as_array().map_or(0, Vec::len);
    println!("load average: {}", load.trim());
    println!(
        "table: 100 policies, 300 pods, {objs} commands, {} bytes of JSON",
        text.len()
    );
    println!("| one apply ×{n} (ms) | p50 | p90 |");
    println!("|---|---|---|");
    println!(
        "| `nft -j -f -` (process incl.) | {:.2} | {:.2} |",
        q(&mut nft, 50),
        q(&mut nft, 90)
    );
    println!(
        "| encoder, whole table (translate + batch) | {:.2} | {:.2} |",
        q(&mut enc, 50),
        q(&mut enc, 90)
    );
    println!(
        "| encoder, one pod's delta (render + translate + batch) | {:.2} | {:.2} |",
        q(&mut delta, 50),
        q(&mut delta, 90)
    );
}

#[test]
fn ipv6_sets_and_concatenations_equal_nft() {
    if !nft_available() {
        vpcnet_tests::skip("nft_encoder", "nft is not installed");
        return;
    }
    // The shapes IPv6 NetworkPolicy will need: ipv6_addr interval sets, ipv6_addr .
    // inet_proto . inet_service with ranges, ip6 saddr/daddr lookups next to IPv4 ones.
    let t = |kind: &str, body: Value| {
        let mut b = body;
        b["family"] = json!("inet");
        b["table"] = json!("v6");
        json!({"add": {kind: b}})
    };
    let rs = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": "v6"}}},
        {"delete": {"table": {"family": "inet", "name": "v6"}}},
        {"add": {"table": {"family": "inet", "name": "v6"}}},
        t("set", json!({"name": "any6", "type": "ipv6_addr", "flags": ["interval"]})),
        t("element", json!({"name": "any6", "elem": [
            "fd00::1",
            {"prefix": {"addr": "fd00:10::", "len": 48}},
            {"range": ["2001:db8::5", "2001:db8::9"]},
            {"prefix": {"addr": "ff00::", "len": 8}}
        ]})),
        t("set", json!({"name": "ports6", "type": ["ipv6_addr", "inet_proto", "inet_service"],
            "flags": ["interval"]})),
        t("element", json!({"name": "ports6", "elem": [
            {"concat": [{"prefix": {"addr": "fd00:20::", "len": 64}}, "tcp", {"range": [80, 81]}]},
            {"concat": ["fd00::7", "udp", 53]},
            {"concat": [{"prefix": {"addr": "::", "len": 0}}, "sctp", 9]}
        ]})),
        t("chain", json!({"name": "c"})),
        t("rule", json!({"chain": "c", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                "right": "@any6"}},
            {"accept": null}]})),
        t("rule", json!({"chain": "c", "expr": [
            {"match": {"op": "==", "left": {"concat": [
                {"payload": {"protocol": "ip6", "field": "daddr"}},
                {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}]},
                "right": "@ports6"}},
            {"return": null}]})),
        t("rule", json!({"chain": "c", "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                "right": {"set": [{"prefix": {"addr": "fd00::", "len": 8}},
                                  {"prefix": {"addr": "2001:db8::", "len": 32}}]}}},
            {"counter": null},
            {"drop": null}]})),
        t("chain", json!({"name": "fwd", "type": "filter", "hook": "forward", "prio": 0,
            "policy": "accept"})),
        t("rule", json!({"chain": "fwd", "expr": [{"jump": {"target": "c"}}]}))
    ]});
    assert_same(&rs, &[("inet", "v6")], &[]);
}
