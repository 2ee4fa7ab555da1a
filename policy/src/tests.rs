//! Truth tables for the compiler, one per case of the upstream e2e `Netpol` suite (and the
//! semantics around it): namespaces x, y, z x pods a, b, c, each namespace labelled
//! `ns: <name>`, each pod `pod: <name>`, each serving ports 80 and 81 on TCP and UDP (named
//! `serve-80-tcp`, `serve-81-udp`, …) and UDP 53 (`dns`). Every pair and port is evaluated on
//! the *rendered sets* (so the normalisation is checked too) and compared with the expected
//! truth table; a difference prints the whole matrix. The cluster is dual-stack (each pod
//! also has an IPv6 address): every case is checked over both families, with the same
//! expectation unless it names IPv4 `ipBlock`s (those have their own IPv6 expectation).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use crate::compile::{compile, ClusterView, NodePolicy};
use crate::model::{LocalPod, NamedPort, NamespaceInfo, PodInfo, Protocol};
use crate::render::{set_contents, set_contents6, SetContents, SetContents6};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PROBES: [(Protocol, u16); 5] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
    (Protocol::Udp, 53),
];

fn ip_of(ns: &str, pod: &str) -> Ipv4Addr {
    let idx = |list: &[&str], s: &str| {
        list.iter()
            .position(|x| *x == s)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(9)
    };
    Ipv4Addr::new(10, 0, idx(&NS, ns), idx(&PODS, pod) + 10)
}

/// The pod's IPv6 address: `fd00:10:<ns>::<pod + 10>` (x/a = fd00:10:0::a, z/c = fd00:10:2::c).
fn ip6_of(ns: &str, pod: &str) -> Ipv6Addr {
    let v4 = ip_of(ns, pod).octets();
    Ipv6Addr::new(0xfd00, 0x10, u16::from(v4[2]), 0, 0, 0, 0, u16::from(v4[3]))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The 3x3 cluster, with label overrides (`"x"` -> namespace labels, `"x/a"` -> pod labels).
fn cluster(policies: Vec<Value>, overrides: &[(&str, &[(&str, &str)])]) -> ClusterView {
    let find = |key: &str| {
        overrides
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, l)| labels(l))
    };
    let mut view = ClusterView::default();
    for ns in NS {
        view.namespaces.push(NamespaceInfo::new(
            ns,
            find(ns).unwrap_or_else(|| labels(&[("ns", ns)])),
        ));
        for pod in PODS {
            let mut p = PodInfo::new(
                ns,
                pod,
                find(&format!("{ns}/{pod}")).unwrap_or_else(|| labels(&[("pod", pod)])),
                Some(ip_of(ns, pod)),
            );
            p.ip6 = Some(ip6_of(ns, pod));
            for (proto, port) in [
                (Protocol::Tcp, 80),
                (Protocol::Tcp, 81),
                (Protocol::Udp, 80),
                (Protocol::Udp, 81),
            ] {
                p.named_ports.push(NamedPort {
                    name: format!("serve-{port}-{}", proto.nft_name()),
                    protocol: proto,
                    port,
                });
            }
            p.named_ports.push(NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
            });
            view.pods.push(p);
        }
    }
    view.policies = policies
        .into_iter()
        .map(|v| serde_json::from_value::<NetworkPolicy>(v).expect("policy JSON"))
        .collect();
    view
}

fn all_local() -> Vec<LocalPod> {
    let mut v = Vec::new();
    for ns in NS {
        for pod in PODS {
            let key = vpcnet_pool::AllocKey {
                network: "vpcnet".into(),
                container_id: format!("{ns}-{pod}"),
                ifname: "eth0".into(),
            };
            v.push(LocalPod::new(ns, pod, ip_of(ns, pod), &key).with_ip6(Some(ip6_of(ns, pod))));
        }
    }
    v
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn set_allows(c: &SetContents, peer: Ipv4Addr, proto: Protocol, port: u16) -> bool {
    let x = u32::from(peer);
    let inr = |r: &[(u32, u32)]| r.iter().any(|&(s, e)| s <= x && x <= e);
    inr(&c.any)
        || c.ports.get(&proto).is_some_and(|segs| {
            segs.iter()
                .any(|((s, e), addrs)| *s <= port && port <= *e && inr(addrs))
        })
}

fn set_allows6(c: &SetContents6, peer: Ipv6Addr, proto: Protocol, port: u16) -> bool {
    let x = u128::from(peer);
    let inr = |r: &[(u128, u128)]| r.iter().any(|&(s, e)| s <= x && x <= e);
    inr(&c.any)
        || c.ports.get(&proto).is_some_and(|segs| {
            segs.iter()
                .any(|((s, e), addrs)| *s <= port && port <= *e && inr(addrs))
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// What the rendered ruleset would do with a new connection `from` -> `to` over IPv4.
fn verdict(np: &NodePolicy, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    verdict_over(Family::V4, np, from, to, proto, port)
}

/// What the rendered ruleset would do with a new connection `from` -> `to` over `family`
/// (the IPv6 sets for IPv6: a pod without an IPv6 address fails the test).
fn verdict_over(
    family: Family,
    np: &NodePolicy,
    from: &str,
    to: &str,
    proto: Protocol,
    port: u16,
) -> bool {
    if family == Family::V6 {
        if from == to {
            return true;
        }
        let find = |s: &str| {
            let (ns, name) = s.split_once('/').unwrap_or((s, ""));
            np.pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .expect("pod compiled")
        };
        let (src, dst) = (find(from), find(to));
        let (sip, dip) = (
            src.ip6.expect("dual-stack pod"),
            dst.ip6.expect("dual-stack pod"),
        );
        let egress_ok = src
            .egress
            .as_ref()
            .is_none_or(|a| set_allows6(&set_contents6(a), dip, proto, port));
        let ingress_ok = dst
            .ingress
            .as_ref()
            .is_none_or(|a| set_allows6(&set_contents6(a), sip, proto, port));
        return egress_ok && ingress_ok;
    }
    if from == to {
        return true; // never leaves the pod
    }
    let find = |s: &str| {
        let (ns, name) = s.split_once('/').unwrap_or((s, ""));
        np.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .expect("pod compiled")
    };
    let (src, dst) = (find(from), find(to));
    let egress_ok = src
        .egress
        .as_ref()
        .is_none_or(|a| set_allows(&set_contents(a), dst.ip.expect("IPv4 pod"), proto, port));
    let ingress_ok = dst
        .ingress
        .as_ref()
        .is_none_or(|a| set_allows(&set_contents(a), src.ip.expect("IPv4 pod"), proto, port));
    egress_ok && ingress_ok
}

type Expect = fn(&str, &str, Protocol, u16) -> bool;

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    overrides: &'static [(&'static str, &'static [(&'static str, &'static str)])],
    expect: Expect,
}

/// Whether a case names an `ipBlock` (its IPv6 verdicts differ from the IPv4 ones).
fn has_ip_block(policies: &[Value]) -> bool {
    policies.iter().any(|p| p.to_string().contains("ipBlock"))
}

fn pods() -> Vec<String> {
    NS.iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn run(case: &Case) {
    run_over(Family::V4, case, false);
    if !has_ip_block(&case.policies) {
        run_over(Family::V6, case, false);
        // An IPv6-only cluster: no pod has an IPv4 address, this node's pods come from its
        // IPv6 pool alone (`LocalPod::ipv6_only`).
        run_over(Family::V6, case, true);
    }
}

fn run_over(family: Family, case: &Case, ipv6_only: bool) {
    let mut view = cluster(case.policies.clone(), case.overrides);
    let mut local = all_local();
    if ipv6_only {
        view.pods.iter_mut().for_each(|p| p.ip = None);
        for l in &mut local {
            l.ip = None;
        }
    }
    let compiled = compile(&view, &local);
    if ipv6_only {
        assert_eq!(compiled.pods.len(), local.len(), "{}", case.name);
        assert!(compiled
            .pods
            .iter()
            .all(|p| p.ip.is_none() && p.ip6.is_some()));
        // Nothing of IPv4 is left to allow between pods: every IPv4 set is empty or a block.
        let r = crate::render::render(&compiled).to_string();
        assert!(
            !r.contains("\"10.0."),
            "{}: an IPv4 pod address in {r}",
            case.name
        );
    }
    assert!(
        compiled.warnings.is_empty(),
        "{}: warnings {:?}",
        case.name,
        compiled.warnings
    );
    let mut diffs = Vec::new();
    let mut matrix = String::new();
    for (proto, port) in PROBES {
        matrix += &format!(
            "{}/{port} over {family:?} (observed vs expected; X = wrong)\n",
            proto.nft_name()
        );
        for from in pods() {
            matrix += &format!("  {from}: ");
            for to in pods() {
                let got = verdict_over(family, &compiled, &from, &to, proto, port);
                let want = (case.expect)(&from, &to, proto, port) || from == to;
                matrix += match (got, want) {
                    (true, true) => ".",
                    (false, false) => "-",
                    _ => "X",
                };
                if got != want {
                    diffs.push(format!(
                        "{from} -> {to} {}/{port} {family:?}: got {got}, want {want}",
                        proto.nft_name()
                    ));
                }
            }
            matrix += "\n";
        }
    }
    assert!(
        diffs.is_empty(),
        "case {}: {} differences:\n{}\n{matrix}",
        case.name,
        diffs.len(),
        diffs.join("\n")
    );
}

fn ns_of(p: &str) -> &str {
    p.split_once('/').map_or(p, |(n, _)| n)
}

#[test]
fn netpol_truth_tables() {
    use Protocol::{Tcp, Udp};
    let cases = vec![
        Case {
            name: "no policy: all allowed",
            policies: vec![],
            overrides: &[],
            expect: |_, _, _, _| true,
        },
        Case {
            name: "deny-all ingress in x",
            policies: vec![np(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            overrides: &[],
            expect: |_, to, _, _| ns_of(to) != "x",
        },
        Case {
            name: "deny-all ingress, no policyTypes (defaults to Ingress)",
            policies: vec![np("x", "deny", json!({"podSelector": {}}))],
            overrides: &[],
            expect: |_, to, _, _| ns_of(to) != "x",
        },
        Case {
            name: "deny-all egress in x",
            policies: vec![np(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            overrides: &[],
            expect: |from, _, _, _| ns_of(from) != "x",
        },
        Case {
            name: "deny-all ingress and egress in x",
            policies: vec![np(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| ns_of(from) != "x" && ns_of(to) != "x",
        },
        Case {
            name: "allow-all ingress with an empty rule",
            policies: vec![
                np("x", "deny", json!({"podSelector": {}})),
                np("x", "allow", json!({"podSelector": {}, "ingress": [{}]})),
            ],
            overrides: &[],
            expect: |_, _, _, _| true,
        },
        Case {
            name: "x/a allows ingress from pod b of its namespace",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || from == "x/b",
        },
        Case {
            name: "x/a allows ingress from namespace y",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || ns_of(from) == "y",
        },
        Case {
            name: "x/a allows ingress from pod c in namespaces y or z (both selectors = AND)",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{
                           "namespaceSelector": {"matchExpressions": [
                               {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
                           "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || from == "y/c" || from == "z/c",
        },
        Case {
            name: "x/a allows ingress from namespace y OR pod c of x (two peers)",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [
                           {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                           {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || ns_of(from) == "y" || from == "x/c",
        },
        Case {
            name: "empty namespaceSelector = pods of every namespace",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {},
                                              "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || from.ends_with("/b"),
        },
        Case {
            name: "matchExpressions NotIn / DoesNotExist",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchExpressions": [
                           {"key": "pod", "operator": "NotIn", "values": ["a", "b"]}]},
                       "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                           {"key": "team", "operator": "DoesNotExist"}]}}]}]}),
            )],
            overrides: &[("z", &[("ns", "z"), ("team", "blue")])],
            // x/c is selected; everyone but z's pods reaches it.
            expect: |from, to, _, _| to != "x/c" || ns_of(from) != "z",
        },
        Case {
            name: "NotIn selects pods without the key; Exists does not",
            policies: vec![
                np(
                    "x",
                    "deny",
                    json!({"podSelector": {"matchExpressions": [
                               {"key": "pod", "operator": "NotIn", "values": ["a"]}]},
                           "policyTypes": ["Ingress"]}),
                ),
                np(
                    "y",
                    "deny",
                    json!({"podSelector": {"matchExpressions": [
                               {"key": "pod", "operator": "Exists"}]},
                           "policyTypes": ["Ingress"]}),
                ),
            ],
            overrides: &[("x/c", &[("app", "web")]), ("y/c", &[("app", "web")])],
            expect: |_, to, _, _| !["x/b", "x/c", "y/a", "y/b"].contains(&to),
        },
        Case {
            name: "ingress on TCP 81 only, from anyone",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"port": 81, "protocol": "TCP"}]}]}),
            )],
            overrides: &[],
            expect: |_, to, proto, port| to != "x/a" || (proto == Tcp && port == 81),
        },
        Case {
            name: "ingress on a protocol without port (all UDP), from namespace y",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"protocol": "UDP"}]}]}),
            )],
            overrides: &[],
            expect: |from, to, proto, _| to != "x/a" || (ns_of(from) == "y" && proto == Udp),
        },
        Case {
            name: "ingress on a named port (resolved on the destination pod)",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]}),
            )],
            overrides: &[],
            expect: |_, to, proto, port| to != "x/a" || (proto == Tcp && port == 80),
        },
        Case {
            name: "named port with the wrong protocol matches nothing",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"ports": [{"port": "serve-80-tcp", "protocol": "UDP"}]}]}),
            )],
            overrides: &[],
            expect: |_, to, _, _| to != "x/a",
        },
        Case {
            name: "egress on a named port to namespace y (resolved on each destination)",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                   "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
            )],
            overrides: &[],
            expect: |from, to, proto, port| {
                from != "x/a" || (ns_of(to) == "y" && proto == Udp && port == 81)
            },
        },
        Case {
            name: "endPort: TCP 80-81",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [
                    {"port": 80, "endPort": 81, "protocol": "TCP"}]}]}),
            )],
            overrides: &[],
            expect: |_, to, proto, port| {
                ns_of(to) != "x" || (proto == Tcp && (80..=81).contains(&port))
            },
        },
        Case {
            name: "overlapping port ranges and peers add up",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                     "ports": [{"port": 53, "endPort": 81, "protocol": "UDP"}]},
                    {"from": [{"podSelector": {}, "namespaceSelector": {}}],
                     "ports": [{"port": 80, "protocol": "UDP"}, {"port": 81, "protocol": "TCP"}]}]}),
            )],
            overrides: &[],
            expect: |from, to, proto, port| {
                to != "x/a"
                    || (ns_of(from) == "y" && proto == Udp)
                    || (proto == Udp && port == 80)
                    || (proto == Tcp && port == 81)
            },
        },
        Case {
            name: "ipBlock with except (pod addresses too)",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                          "except": ["10.0.2.0/24", "10.0.1.11/32"]}}]}]}),
            )],
            overrides: &[],
            expect: |from, to, _, _| to != "x/a" || (ns_of(from) != "z" && from != "y/b"),
        },
        Case {
            name: "egress ipBlock with except",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24",
                                                       "except": ["10.0.1.12/32"]}}],
                                   "ports": [{"port": 80}]}]}),
            )],
            overrides: &[],
            expect: |from, to, proto, port| {
                from != "x/b" || (ns_of(to) == "y" && to != "y/c" && proto == Tcp && port == 80)
            },
        },
        Case {
            name: "egress to DNS only (z/c UDP 53)",
            policies: vec![np(
                "x",
                "dns-only",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}},
                                           "podSelector": {"matchLabels": {"pod": "c"}}}],
                                   "ports": [{"port": 53, "protocol": "UDP"}]}]}),
            )],
            overrides: &[],
            expect: |from, to, proto, port| {
                ns_of(from) != "x" || (to == "z/c" && proto == Udp && port == 53)
            },
        },
        Case {
            name: "egress rules without policyTypes isolate egress too",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "egress": [{"to": [{"podSelector": {}}]}]}),
            )],
            overrides: &[],
            // Ingress isolated with no rule (deny), egress only to x's pods.
            expect: |from, to, _, _| to != "x/a" && (from != "x/a" || ns_of(to) == "x"),
        },
        Case {
            name: "multiple policies add up",
            policies: vec![
                np(
                    "y",
                    "from-x",
                    json!({"podSelector": {}, "ingress": [{"from": [
                        {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
                ),
                np(
                    "y",
                    "from-z-udp",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                        "ports": [{"port": 80, "protocol": "UDP"}]}]}),
                ),
            ],
            overrides: &[],
            expect: |from, to, proto, port| {
                ns_of(to) != "y"
                    || ns_of(from) == "x"
                    || (to == "y/a" && ns_of(from) == "z" && proto == Udp && port == 80)
            },
        },
        Case {
            name: "policies of another namespace do not select",
            policies: vec![np(
                "z",
                "deny",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
            )],
            overrides: &[],
            expect: |_, to, _, _| to != "z/a",
        },
        Case {
            name: "relabelled pod: x/b now pod=a, selected and allowed like a",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
            overrides: &[("x/b", &[("pod", "a")])],
            expect: |from, to, _, _| {
                !(to == "x/a" || to == "x/b") || from == "x/a" || from == "x/b"
            },
        },
        Case {
            name: "relabelled namespace: z now ns=y",
            policies: vec![np(
                "x",
                "p",
                json!({"podSelector": {},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            overrides: &[("z", &[("ns", "y")])],
            expect: |from, to, _, _| ns_of(to) != "x" || ns_of(from) != "x",
        },
    ];
    for case in &cases {
        run(case);
    }
}

#[test]
fn local_pods_take_the_nodes_address_and_unknown_pods_are_reported() {
    let mut view = cluster(vec![np("x", "deny", json!({"podSelector": {}}))], &[]);
    view.pods.iter_mut().for_each(|p| p.ip = None);
    let key = vpcnet_pool::AllocKey {
        network: "vpcnet".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    let local = vec![
        LocalPod::new("x", "a", Ipv4Addr::new(10, 9, 0, 1), &key),
        LocalPod::new("x", "new", Ipv4Addr::new(10, 9, 0, 2), &key),
    ];
    let c = compile(&view, &local);
    assert_eq!(c.pods.len(), 2);
    assert!(c.pods.iter().all(|p| p.ingress == Some(Default::default())));
    assert_eq!(
        c.pods[0].host_veth,
        vpcnet_proto::naming::host_veth_name("c1", "eth0")
    );
    assert!(c
        .pods
        .iter()
        .any(|p| p.ip == Some(Ipv4Addr::new(10, 9, 0, 1))));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("x/new"), "{:?}", c.warnings);
}

#[test]
fn a_namespace_the_view_lacks_is_selected_by_empty_selector_only() {
    let mut view = cluster(
        vec![
            np(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            ),
            np(
                "x",
                "q",
                json!({"podSelector": {"matchLabels": {"pod": "b"}},
                       "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            ),
        ],
        &[],
    );
    view.namespaces.retain(|n| n.name != "y");
    let c = compile(&view, &all_local());
    assert!(!verdict(&c, "y/a", "x/a", Protocol::Tcp, 80));
    assert!(verdict(&c, "y/a", "x/b", Protocol::Tcp, 80));
    assert!(verdict(&c, "z/a", "x/b", Protocol::Tcp, 80));
}

#[test]
fn host_network_and_terminated_pods() {
    let mut view = cluster(
        vec![np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        )],
        &[],
    );
    for p in view.pods.iter_mut() {
        if p.name == "b" {
            p.host_network = true;
        }
        if p.name == "c" {
            p.terminated = true;
        }
    }
    let c = compile(&view, &all_local());
    let xa = c
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "a")
        .expect("x/a");
    let peers: Vec<_> = xa
        .ingress
        .iter()
        .flatten()
        .map(|a| a.peer.clone())
        .collect();
    assert_eq!(
        peers,
        vec![
            crate::Peer::Pod(ip_of("x", "a")),
            crate::Peer::Pod6(ip6_of("x", "a"))
        ]
    );
    let xb = c
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "b")
        .expect("x/b");
    assert_eq!(xb.ingress, None, "host-network pods are never selected");
}

#[test]
fn invalid_input_is_skipped_with_a_warning() {
    let view = cluster(
        vec![np(
            "x",
            "bad",
            json!({"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {},
                          {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "bad"]}}]},
                {"ports": [{"port": 80, "protocol": "ICMP"}, {"port": 90, "endPort": 85}]},
                {"from": [{"ipBlock": {"cidr": "fd00::/8", "except": ["10.0.0.0/8"]}},
                          {"ipBlock": {"cidr": "fd00::/129"}}]}]}),
        )],
        &[],
    );
    let c = compile(&view, &all_local());
    assert_eq!(c.warnings.len(), 7, "{:#?}", c.warnings);
    let xa = c.pods.iter().find(|p| p.namespace == "x").expect("x pod");
    assert_eq!(
        xa.ingress,
        Some(Default::default()),
        "nothing valid: deny all"
    );
}

#[test]
fn ranges_of_blocks() {
    let p = crate::Peer::Block {
        cidr: "10.0.0.0/24".parse().expect("cidr"),
        except: vec![
            "10.0.0.0/30".parse().expect("cidr"),
            "10.0.0.128/25".parse().expect("cidr"),
            "192.168.0.0/16".parse().expect("cidr"),
        ],
    };
    let a = |s: &str| u32::from(s.parse::<Ipv4Addr>().expect("ip"));
    assert_eq!(p.ranges(), vec![(a("10.0.0.4"), a("10.0.0.127"))]);
    assert_eq!(crate::Peer::anyone().ranges(), vec![(0, u32::MAX)]);
}

#[test]
fn rendering_is_deterministic_and_normalised() {
    let policies = vec![
        np(
            "x",
            "p1",
            json!({"podSelector": {}, "ingress": [{"ports": [
                {"port": 80, "endPort": 90}, {"port": 85, "endPort": 100}, {"port": 81}]}]}),
        ),
        np(
            "x",
            "p2",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
                {"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/24"}}]}]}),
        ),
    ];
    let view = cluster(policies.clone(), &[]);
    let mut local = all_local();
    let a = crate::render::render(&compile(&view, &local));
    local.reverse();
    let mut view2 = cluster(policies.into_iter().rev().collect(), &[]);
    view2.pods.reverse();
    let b = crate::render::render(&compile(&view2, &local));
    assert_eq!(
        a.to_string(),
        b.to_string(),
        "input order changed the output"
    );

    // Overlapping port ranges collapse into one disjoint element per address range.
    let c = compile(&view, &all_local());
    let xa = c
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "a")
        .expect("x/a");
    let sc = set_contents(xa.ingress.as_ref().expect("isolated"));
    assert_eq!(
        sc.ports[&Protocol::Tcp],
        vec![((80, 100), vec![(0, u32::MAX)])]
    );
    // Egress: the pods of x and 10.0.0.0/24 merge into one range.
    let se = set_contents(xa.egress.as_ref().expect("isolated"));
    assert_eq!(
        se.any,
        vec![(
            u32::from(Ipv4Addr::new(10, 0, 0, 0)),
            u32::from(Ipv4Addr::new(10, 0, 0, 255))
        )]
    );

    // The JSON is what the `nftables` crate's schema accepts, except the verdict maps: its
    // `SetType` has no `verdict` (docs/network-policy.md), so those are checked by the kernel
    // test only.
    let objs = a["nftables"].as_array().expect("array");
    let maps = objs.iter().filter(|o| o["add"]["map"].is_object()).count();
    assert_eq!(maps, 2, "egress and ingress dispatch");
    for o in objs.iter().filter(|o| !o["add"]["map"].is_object()) {
        let parsed: Result<nftables::schema::NfObject, _> = serde_json::from_value(o.clone());
        assert!(parsed.is_ok(), "{o}: {parsed:?}");
    }
    assert_eq!(
        objs[1],
        json!({"delete": {"table": {"family": "inet", "name": "vpcnet-policy"}}})
    );
}

#[test]
fn allows_matches_what_the_sets_match() {
    use crate::compile::{allows, Allow, Peer, PortMatch};
    use std::collections::BTreeSet;
    let peer: Ipv4Addr = "10.0.0.7".parse().expect("literal");
    let other: Ipv4Addr = "10.0.0.8".parse().expect("literal");
    let none = BTreeSet::new();
    assert!(!allows(&none, peer, 6, 80), "isolated with nothing allowed");
    let mut set = BTreeSet::new();
    set.insert(Allow {
        peer: Peer::Pod(peer),
        port: PortMatch::Ports {
            proto: Protocol::Tcp,
            first: 80,
            last: 81,
        },
    });
    assert!(allows(&set, peer, 6, 80));
    assert!(allows(&set, peer, 6, 81));
    assert!(!allows(&set, peer, 6, 82));
    assert!(!allows(&set, peer, 17, 80), "UDP is not TCP");
    assert!(!allows(&set, other, 6, 80));
    assert!(!allows(&set, peer, 1, 0), "ICMP needs a rule without ports");
    set.insert(Allow {
        peer: Peer::Block {
            cidr: "10.0.0.0/24".parse().expect("literal"),
            except: vec!["10.0.0.8/32".parse().expect("literal")],
        },
        port: PortMatch::Any,
    });
    assert!(allows(&set, peer, 1, 0));
    assert!(!allows(&set, other, 6, 80), "the except hole");
}

/// One case with its own expectation per family.
fn run_both(name: &str, policies: Vec<Value>, expect4: Expect, expect6: Expect) {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    for (family, expect) in [(Family::V4, expect4), (Family::V6, expect6)] {
        run_over(
            family,
            &Case {
                name: leak(format!("{name} ({family:?})")),
                policies: policies.clone(),
                overrides: &[],
                expect,
            },
            false,
        );
    }
}

#[test]
fn ipv6_ip_blocks_truth_tables() {
    use Protocol::{Tcp, Udp};
    // The IPv4 ipBlock cases of `netpol_truth_tables`, over IPv6: an IPv4 block matches no
    // IPv6 address, so the isolated pod allows (sends) nothing over IPv6.
    run_both(
        "IPv4 ipBlock with except",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                      "except": ["10.0.2.0/24", "10.0.1.11/32"]}}]}]}),
        )],
        |from, to, _, _| to != "x/a" || (ns_of(from) != "z" && from != "y/b"),
        |_, to, _, _| to != "x/a",
    );
    run_both(
        "IPv4 egress ipBlock with except",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24",
                                                   "except": ["10.0.1.12/32"]}}],
                               "ports": [{"port": 80}]}]}),
        )],
        |from, to, proto, port| {
            from != "x/b" || (ns_of(to) == "y" && to != "y/c" && proto == Tcp && port == 80)
        },
        |from, _, _, _| from != "x/b",
    );
    // The same, written in IPv6: the mirror image.
    run_both(
        "IPv6 ipBlock with except",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:10::/32",
                                                      "except": ["fd00:10:2::/48", "fd00:10:1::b/128"]}}]}]}),
        )],
        |_, to, _, _| to != "x/a",
        |from, to, _, _| to != "x/a" || (ns_of(from) != "z" && from != "y/b"),
    );
    run_both(
        "IPv6 egress ipBlock with except, UDP ports 80-81",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "fd00:10:1::/64",
                                                   "except": ["fd00:10:1::c/127"]}}],
                               "ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]}),
        )],
        |from, _, _, _| from != "x/b",
        // fd00:10:1::c/127 = ::c and ::d: y/c only.
        |from, to, proto, port| {
            from != "x/b" || (ns_of(to) == "y" && to != "y/c" && proto == Udp && port != 53)
        },
    );
    // Both families in one rule: IPv4 from y, IPv6 from z.
    run_both(
        "ipBlocks of both families in one rule",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.0.1.0/24"}},
                {"ipBlock": {"cidr": "fd00:10:2::/48"}}], "ports": [{"port": 81}]}]}),
        )],
        |from, to, proto, port| {
            ns_of(to) != "x" || (ns_of(from) == "y" && proto == Tcp && port == 81)
        },
        |from, to, proto, port| {
            ns_of(to) != "x" || (ns_of(from) == "z" && proto == Tcp && port == 81)
        },
    );
    // `::/0` with a hole, and `0.0.0.0/0`: anyone but the hole.
    run_both(
        "::/0 except z's /48, and 0.0.0.0/0",
        vec![np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"ipBlock": {"cidr": "::/0", "except": ["fd00:10:2::/48"]}},
                {"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        )],
        |_, _, _, _| true,
        |from, to, _, _| ns_of(to) != "x" || ns_of(from) != "z",
    );
}

#[test]
fn a_pod_without_ipv6_is_no_ipv6_peer() {
    // x/b has no IPv6 address (an IPv4-only pod in a dual-stack cluster): x/a's pod-selector
    // rule allows b's IPv4 only, and the IPv6 sets hold only the other pods.
    let mut view = cluster(
        vec![np(
            "x",
            "p",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"podSelector": {}}]}]}),
        )],
        &[],
    );
    for p in view.pods.iter_mut() {
        if p.namespace == "x" && p.name == "b" {
            p.ip6 = None;
        }
    }
    let local: Vec<LocalPod> = all_local()
        .into_iter()
        .map(|l| {
            if l.namespace == "x" && l.name == "b" {
                l.with_ip6(None)
            } else {
                l
            }
        })
        .collect();
    let c = compile(&view, &local);
    let xa = c
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "a")
        .expect("x/a");
    let ing = xa.ingress.as_ref().expect("isolated");
    let v6 = set_contents6(ing);
    let a6 = |p: &str| u128::from(ip6_of("x", p));
    assert_eq!(v6.any, vec![(a6("a"), a6("a")), (a6("c"), a6("c"))]);
    let v4 = set_contents(ing);
    assert_eq!(v4.any.len(), 1, "x/a..x/c are adjacent: {:?}", v4.any);
}

#[test]
fn ranges6_of_blocks() {
    let p = crate::Peer::Block6 {
        cidr: "fd00::/120".parse().expect("cidr"),
        except: vec![
            "fd00::/126".parse().expect("cidr"),
            "fd00::80/121".parse().expect("cidr"),
            "fe80::/10".parse().expect("cidr"),
        ],
    };
    let a = |s: &str| u128::from(s.parse::<Ipv6Addr>().expect("ip"));
    assert_eq!(p.ranges6(), vec![(a("fd00::4"), a("fd00::7f"))]);
    assert!(p.ranges().is_empty(), "an IPv6 peer has no IPv4 range");
    assert!(crate::Peer::anyone().ranges6().is_empty());
    assert_eq!(crate::Peer::anyone6().ranges6(), vec![(0, u128::MAX)]);
    assert_eq!(
        crate::render::merge_ranges(vec![(5u128, u128::MAX), (0, 4), (7, 9)]),
        vec![(0, u128::MAX)]
    );
}

#[test]
fn ipv6_render_shapes() {
    // The JSON shapes the IPv6 twins use (docs/network-policy.md): `ipv6_addr` interval sets,
    // `ip6 saddr`/`ip6 daddr` payload matches, prefix/range/single elements, concatenations.
    let view = cluster(
        vec![
            np(
                "x",
                "in",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                    {"from": [{"ipBlock": {"cidr": "::/0", "except": ["fd00:10:2::/48"]}}]},
                    {"from": [{"namespaceSelector": {}}], "ports": [{"port": 80, "endPort": 81}]}]}),
            ),
            np(
                "x",
                "out",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "fd00:10:1::a/127"}}]}]}),
            ),
        ],
        &[],
    );
    let c = compile(&view, &all_local());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let xa = c
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "a")
        .expect("x/a");
    let veth = xa.host_veth.clone();
    let r = crate::render::render(&c);
    let objs = r["nftables"].as_array().expect("array");
    let find = |kind: &str, name: &str| {
        objs.iter()
            .find(|o| o["add"][kind]["name"] == json!(name))
            .cloned()
    };
    let set = find("set", &format!("ingress_{veth}_any6")).expect("any6 set");
    assert_eq!(set["add"]["set"]["type"], json!("ipv6_addr"));
    assert_eq!(set["add"]["set"]["flags"], json!(["interval"]));
    let ports = find("set", &format!("ingress_{veth}_ports6")).expect("ports6 set");
    assert_eq!(
        ports["add"]["set"]["type"],
        json!(["ipv6_addr", "inet_proto", "inet_service"])
    );
    let elems = |name: String| {
        objs.iter()
            .find(|o| o["add"]["element"]["name"] == json!(name))
            .map(|o| o["add"]["element"]["elem"].clone())
            .expect("elements")
    };
    // ::/0 minus fd00:10:2::/48 = two ranges.
    assert_eq!(
        elems(format!("ingress_{veth}_any6")),
        json!([{"range": ["::", "fd00:10:1:ffff:ffff:ffff:ffff:ffff"]},
               {"range": ["fd00:10:3::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]}])
    );
    // Every pod on TCP 80-81 (the sets are not subtracted from each other), per namespace
    // one range of adjacent addresses.
    assert_eq!(
        elems(format!("ingress_{veth}_ports6")),
        json!([{"concat": [{"range": ["fd00:10::a", "fd00:10::c"]}, "tcp", {"range": [80, 81]}]},
               {"concat": [{"range": ["fd00:10:1::a", "fd00:10:1::c"]}, "tcp", {"range": [80, 81]}]},
               {"concat": [{"range": ["fd00:10:2::a", "fd00:10:2::c"]}, "tcp", {"range": [80, 81]}]}])
    );
    // Egress: a /127 is a prefix element; no ports6 set (nothing on ports).
    assert_eq!(
        elems(format!("egress_{veth}_any6")),
        json!([{"prefix": {"addr": "fd00:10:1::a", "len": 127}}])
    );
    assert!(find("set", &format!("egress_{veth}_ports6")).is_none());
    // The rules: `ip6 saddr @…` for ingress, `ip6 daddr @…` for egress, before the drop.
    let rules: Vec<&Value> = objs
        .iter()
        .filter(|o| o["add"]["rule"]["chain"] == json!(format!("egress_{veth}")))
        .collect();
    assert_eq!(rules.len(), 4, "any, ports, any6, drop: {rules:?}");
    assert_eq!(
        rules[2]["add"]["rule"]["expr"],
        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                          "right": format!("@egress_{veth}_any6")}}, {"return": null}])
    );
    let ing: Vec<&Value> = objs
        .iter()
        .filter(|o| o["add"]["rule"]["chain"] == json!(format!("ingress_{veth}")))
        .collect();
    assert_eq!(ing.len(), 5, "any, ports, any6, ports6, drop");
    assert_eq!(
        ing[3]["add"]["rule"]["expr"][0]["match"]["left"],
        json!({"concat": [{"payload": {"protocol": "ip6", "field": "saddr"}},
                          {"meta": {"key": "l4proto"}},
                          {"payload": {"protocol": "th", "field": "dport"}}]})
    );
    assert_eq!(ing[4]["add"]["rule"]["expr"], json!([{"drop": null}]));
    // Everything but the verdict maps parses with the `nftables` crate's schema.
    for o in objs.iter().filter(|o| !o["add"]["map"].is_object()) {
        let parsed: Result<nftables::schema::NfObject, _> = serde_json::from_value(o.clone());
        assert!(parsed.is_ok(), "{o}: {parsed:?}");
    }
    // An IPv4-only pod isolated in the same way renders no IPv6 set.
    let view4 = {
        let mut v = cluster(vec![], &[]);
        for p in v.pods.iter_mut() {
            p.ip6 = None;
        }
        v.policies = view.policies.clone();
        v
    };
    let local4: Vec<LocalPod> = all_local().into_iter().map(|l| l.with_ip6(None)).collect();
    let r4 = crate::render::render(&compile(&view4, &local4)).to_string();
    assert!(!r4.contains(&format!("ingress_{veth}_ports6")), "{r4}");
    // (the ipBlocks are IPv6: the any6 sets remain, with the blocks only)
    assert!(r4.contains(&format!("ingress_{veth}_any6")));
}

#[test]
fn allows_over_ipv6() {
    use crate::compile::{allows, Allow, Peer, PortMatch};
    use std::collections::BTreeSet;
    let peer: Ipv6Addr = "fd00::7".parse().expect("literal");
    let v4: Ipv4Addr = "10.0.0.7".parse().expect("literal");
    let mut set = BTreeSet::new();
    set.insert(Allow {
        peer: Peer::Block6 {
            cidr: "fd00::/120".parse().expect("literal"),
            except: vec!["fd00::8/128".parse().expect("literal")],
        },
        port: PortMatch::Ports {
            proto: Protocol::Tcp,
            first: 80,
            last: 81,
        },
    });
    assert!(allows(&set, peer, 6, 81));
    assert!(!allows(&set, peer, 17, 81), "UDP");
    assert!(
        !allows(&set, "fd00::8".parse::<Ipv6Addr>().expect("l"), 6, 80),
        "except"
    );
    assert!(
        !allows(&set, v4, 6, 80),
        "an IPv6 block does not hold IPv4 addresses"
    );
    set.insert(Allow {
        peer: Peer::Pod(v4),
        port: PortMatch::Any,
    });
    assert!(allows(&set, v4, 1, 0));
    assert!(
        !allows(
            &set,
            "::ffff:10.0.0.7".parse::<Ipv6Addr>().expect("l"),
            1,
            0
        ),
        "mapped"
    );
}
