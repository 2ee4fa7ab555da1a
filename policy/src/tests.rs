//! Truth tables for the compiler, one per case of the upstream e2e `Netpol` suite (and the
//! semantics around it): namespaces x, y, z x pods a, b, c, each namespace labelled
//! `ns: <name>`, each pod `pod: <name>`, each serving ports 80 and 81 on TCP and UDP (named
//! `serve-80-tcp`, `serve-81-udp`, …) and UDP 53 (`dns`). Every pair and port is evaluated on
//! the *rendered sets* (so the normalisation is checked too) and compared with the expected
//! truth table; a difference prints the whole matrix.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use crate::compile::{compile, ClusterView, NodePolicy};
use crate::model::{LocalPod, NamedPort, NamespaceInfo, PodInfo, Protocol};
use crate::render::{set_contents, SetContents};

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
            v.push(LocalPod::new(ns, pod, ip_of(ns, pod), &key));
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

/// What the rendered ruleset would do with a new connection `from` -> `to`.
fn verdict(np: &NodePolicy, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
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
        .is_none_or(|a| set_allows(&set_contents(a), dst.ip, proto, port));
    let ingress_ok = dst
        .ingress
        .as_ref()
        .is_none_or(|a| set_allows(&set_contents(a), src.ip, proto, port));
    egress_ok && ingress_ok
}

type Expect = fn(&str, &str, Protocol, u16) -> bool;

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    overrides: &'static [(&'static str, &'static [(&'static str, &'static str)])],
    expect: Expect,
}

fn pods() -> Vec<String> {
    NS.iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn run(case: &Case) {
    let view = cluster(case.policies.clone(), case.overrides);
    let compiled = compile(&view, &all_local());
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
            "{}/{port}  (observed vs expected; X = wrong)\n",
            proto.nft_name()
        );
        for from in pods() {
            matrix += &format!("  {from}: ");
            for to in pods() {
                let got = verdict(&compiled, &from, &to, proto, port);
                let want = (case.expect)(&from, &to, proto, port) || from == to;
                matrix += match (got, want) {
                    (true, true) => ".",
                    (false, false) => "-",
                    _ => "X",
                };
                if got != want {
                    diffs.push(format!(
                        "{from} -> {to} {}/{port}: got {got}, want {want}",
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
    assert!(c.pods.iter().any(|p| p.ip == Ipv4Addr::new(10, 9, 0, 1)));
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
    assert_eq!(peers, vec![crate::Peer::Pod(ip_of("x", "a"))]);
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
                {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}),
        )],
        &[],
    );
    let c = compile(&view, &all_local());
    assert_eq!(c.warnings.len(), 5, "{:#?}", c.warnings);
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
