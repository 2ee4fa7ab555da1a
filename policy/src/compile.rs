//! The pure compiler: cluster view + this node's pods -> for each local pod, whether its
//! ingress and egress are isolated and which (peer, port) pairs are allowed. No I/O.
//!
//! Semantics of `networking.k8s.io/v1` (API reference, and upstream behaviour where the
//! reference is silent):
//! * A pod is isolated for ingress (egress) when at least one policy of its namespace selects
//!   it (`spec.podSelector`, empty = every pod of the namespace) and lists `Ingress`
//!   (`Egress`) in `policyTypes`. Absent `policyTypes` defaults as the API server does:
//!   `Ingress`, plus `Egress` when `spec.egress` has at least one rule.
//! * An isolated direction allows the union of all rules of all policies selecting the pod
//!   (rules and peers OR, policies add up). No rule at all = deny all (default deny).
//! * A rule allows traffic matching one of its peers AND one of its ports; `from`/`to`
//!   absent or empty = every peer, `ports` absent or empty = every port and protocol.
//! * A peer: `podSelector` alone = pods of the policy's namespace; `namespaceSelector` alone
//!   = every pod of the matching namespaces; both = the selected pods of the selected
//!   namespaces (AND); empty selectors select everything; `ipBlock` = a CIDR minus its
//!   `except` CIDRs, applied to any address, pod addresses included (as upstream
//!   implementations do; the reference only says it "should" be cluster-external).
//! * A port: `protocol` defaults to TCP; no `port` = every port of that protocol; a number
//!   with `endPort` = the range; a name resolves against the *destination* pod's container
//!   ports of that name and protocol (ingress: the selected pod; egress: each peer pod, and
//!   nothing for addresses that are no pod's): a name a pod lacks matches nothing there.
//! * Host-network pods are neither selected nor peers; pods without an address are not
//!   peers; terminated pods are not peers (their address may be reused).
//! * Not compiled: traffic between a pod and its own node, and a pod reaching itself, are
//!   always allowed; the renderer gets that by filtering forwarded traffic only (the node's
//!   own traffic to and from its pods is not forwarded, and a pod reaching itself never
//!   leaves it).
//! * IPv6 `ipBlock`s are ignored (vpcnet is IPv4): an IPv6-only peer allows nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Labels, LocalPod, NamespaceInfo, PodInfo, Protocol};

/// Who is at the other end of an allowed connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// One pod's address.
    Pod(Ipv4Addr),
    /// `cidr` minus the `except` CIDRs (an ipBlock; `0.0.0.0/0` without except = anyone).
    Block {
        cidr: Ipv4Network,
        except: Vec<Ipv4Network>,
    },
}

impl Peer {
    pub fn anyone() -> Peer {
        // 0.0.0.0/0: prefix 0 is always valid.
        let cidr = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)
            .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED));
        Peer::Block {
            cidr,
            except: Vec::new(),
        }
    }

    /// The addresses as disjoint, sorted, inclusive ranges.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        match self {
            Peer::Pod(ip) => vec![(u32::from(*ip), u32::from(*ip))],
            Peer::Block { cidr, except } => {
                let mut out = vec![net_range(cidr)];
                for ex in except {
                    let (a, b) = net_range(ex);
                    out = out
                        .into_iter()
                        .flat_map(|(s, e)| {
                            let mut parts = Vec::new();
                            if b < s || a > e {
                                parts.push((s, e));
                            } else {
                                if a > s {
                                    parts.push((s, a - 1));
                                }
                                if b < e {
                                    parts.push((b + 1, e));
                                }
                            }
                            parts
                        })
                        .collect();
                }
                out
            }
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        self.ranges().iter().any(|&(s, e)| s <= x && x <= e)
    }
}

fn net_range(n: &Ipv4Network) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

/// Which ports of an allowed peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every protocol and port (a rule without `ports`).
    Any,
    /// Destination ports `first..=last` of `proto`.
    Ports {
        proto: Protocol,
        first: u16,
        last: u16,
    },
}

/// One allowed (peer, ports) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    pub peer: Peer,
    pub port: PortMatch,
}

/// What one local pod may send and receive. `None` = that direction is not isolated
/// (everything allowed); `Some(empty)` = isolated with nothing allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub ingress: Option<BTreeSet<Allow>>,
    pub egress: Option<BTreeSet<Allow>>,
    /// `namespace/name` of the policies that select the pod, sorted.
    pub policies: Vec<String>,
}

/// Whether `allows` (one direction of a [`PodPolicy`]) lets the connection with `peer` to
/// destination port `port` of IP protocol `proto` through — what the rendered sets match
/// (`PortMatch::Any` covers every protocol, ICMP included). For deciding which existing
/// connections a changed policy no longer allows.
pub fn allows(allows: &BTreeSet<Allow>, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
    allows.iter().any(|a| {
        a.peer.contains(peer)
            && match a.port {
                PortMatch::Any => true,
                PortMatch::Ports {
                    proto: p,
                    first,
                    last,
                } => p.number() == proto && first <= port && port <= last,
            }
    })
}

/// The compiled policy of one node: its pods sorted by host veth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePolicy {
    pub pods: Vec<PodPolicy>,
    /// What was skipped and why (an invalid CIDR, an unknown protocol, a pod the API does not
    /// know yet): the rest still compiles.
    pub warnings: Vec<String>,
}

/// Everything the compiler reads.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub pods: Vec<PodInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    pub policies: Vec<NetworkPolicy>,
}

/// Whether `sel` selects `labels` (an empty selector selects everything; an unknown operator
/// nothing, as the API server would have rejected it).
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            let have = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => !have.is_some_and(|v| values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// `policyTypes`, defaulted as the API server does: (ingress, egress).
pub fn policy_types(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = np.spec.as_ref() else {
        return (true, false);
    };
    match spec.policy_types.as_ref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

struct Ctx<'a> {
    pods: Vec<PodInfo>,
    namespaces: BTreeMap<&'a str, &'a Labels>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    /// Pods that can be peers.
    fn peer_pods(&self) -> impl Iterator<Item = (&PodInfo, Ipv4Addr)> {
        self.pods
            .iter()
            .filter(|p| !p.host_network && !p.terminated)
            .filter_map(|p| p.ip.map(|ip| (p, ip)))
    }

    /// What one peer of a policy in namespace `ns` stands for: pods, or an address block.
    fn expand(&mut self, ns: &str, peer: &NetworkPolicyPeer, what: &str) -> Expanded {
        if let Some(block) = &peer.ip_block {
            let cidr = match block.cidr.parse::<Ipv4Network>() {
                Ok(c) => c,
                Err(_) => {
                    if !block.cidr.contains(':') {
                        self.warnings
                            .push(format!("{what}: ipBlock cidr {:?} is invalid", block.cidr));
                    }
                    return Expanded::Pods(Vec::new());
                }
            };
            let mut except = Vec::new();
            for e in block.except.iter().flatten() {
                match e.parse::<Ipv4Network>() {
                    Ok(n) => except.push(n),
                    // Dropping the hole would widen the block: drop the peer instead.
                    Err(_) => {
                        self.warnings.push(format!(
                            "{what}: ipBlock except {e:?} is invalid: peer ignored"
                        ));
                        return Expanded::Pods(Vec::new());
                    }
                }
            }
            except.sort();
            except.dedup();
            return Expanded::Block(Peer::Block { cidr, except });
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            self.warnings.push(format!(
                "{what}: a peer without selector or ipBlock: ignored"
            ));
            return Expanded::Pods(Vec::new());
        }
        let in_ns = |pod_ns: &str| match &peer.namespace_selector {
            None => pod_ns == ns,
            // A namespace not seen (yet) has no labels but its name: `{}` still selects it.
            Some(sel) => match self.namespaces.get(pod_ns) {
                Some(labels) => selector_matches(sel, labels),
                None => {
                    let mut labels = Labels::new();
                    labels.insert("kubernetes.io/metadata.name".into(), pod_ns.into());
                    selector_matches(sel, &labels)
                }
            },
        };
        let pods = self
            .peer_pods()
            .filter(|(p, _)| in_ns(&p.namespace))
            .filter(|(p, _)| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector_matches(sel, &p.labels))
            })
            .map(|(p, ip)| (p.clone(), ip))
            .collect();
        Expanded::Pods(pods)
    }
}

enum Expanded {
    Pods(Vec<(PodInfo, Ipv4Addr)>),
    Block(Peer),
}

/// A NetworkPolicyPort before named ports are resolved.
enum PortSpec {
    Resolved(PortMatch),
    Named { name: String, proto: Protocol },
}

impl PortSpec {
    fn resolve(&self, dest: &PodInfo) -> Option<PortMatch> {
        match self {
            PortSpec::Resolved(m) => Some(*m),
            PortSpec::Named { name, proto } => {
                dest.resolve_port(name, *proto).map(|p| PortMatch::Ports {
                    proto: *proto,
                    first: p,
                    last: p,
                })
            }
        }
    }
}

fn port_specs(
    ports: Option<&Vec<NetworkPolicyPort>>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Vec<PortSpec> {
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    if ports.is_empty() {
        return vec![PortSpec::Resolved(PortMatch::Any)];
    }
    let mut out = Vec::new();
    for p in ports {
        let proto_s = p.protocol.as_deref().unwrap_or("TCP");
        let Some(proto) = Protocol::from_api(proto_s) else {
            warnings.push(format!(
                "{what}: protocol {proto_s:?} is not supported: port ignored"
            ));
            continue;
        };
        match &p.port {
            None => out.push(PortSpec::Resolved(PortMatch::Ports {
                proto,
                first: 0,
                last: u16::MAX,
            })),
            Some(IntOrString::Int(n)) => {
                let first = u16::try_from(*n).ok();
                let last = match p.end_port {
                    Some(e) => u16::try_from(e).ok(),
                    None => first,
                };
                match (first, last) {
                    (Some(first), Some(last)) if first <= last && first > 0 => {
                        out.push(PortSpec::Resolved(PortMatch::Ports { proto, first, last }))
                    }
                    _ => warnings.push(format!(
                        "{what}: port {n} endPort {:?} is invalid: ignored",
                        p.end_port
                    )),
                }
            }
            Some(IntOrString::String(name)) => out.push(PortSpec::Named {
                name: name.clone(),
                proto,
            }),
        }
    }
    out
}

/// Compiles the policy of this node's pods `local`.
pub fn compile(view: &ClusterView, local: &[LocalPod]) -> NodePolicy {
    let mut warnings = Vec::new();
    // The pods as the compiler sees them: the API's, with the addresses of the local pods
    // taken from the node (which knows them before the API does).
    let mut pods = view.pods.clone();
    for lp in local {
        match pods
            .iter_mut()
            .find(|p| p.namespace == lp.namespace && p.name == lp.name)
        {
            Some(p) => p.ip = Some(lp.ip),
            None => {
                warnings.push(format!(
                    "pod {}/{} is attached here but not known from the API: compiled without labels",
                    lp.namespace, lp.name
                ));
                pods.push(PodInfo::new(
                    &lp.namespace,
                    &lp.name,
                    Labels::new(),
                    Some(lp.ip),
                ));
            }
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut ctx = Ctx {
        pods,
        namespaces: view
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect(),
        warnings,
    };
    let mut policies: Vec<&NetworkPolicy> = view.policies.iter().collect();
    let key = |np: &NetworkPolicy| {
        (
            np.metadata.namespace.clone().unwrap_or_default(),
            np.metadata.name.clone().unwrap_or_default(),
        )
    };
    policies.sort_by_key(|np| key(np));

    let mut out = Vec::new();
    for lp in local {
        let Some(me) = ctx
            .pods
            .iter()
            .find(|p| p.namespace == lp.namespace && p.name == lp.name)
            .cloned()
        else {
            continue;
        };
        let mut pp = PodPolicy {
            namespace: lp.namespace.clone(),
            name: lp.name.clone(),
            ip: lp.ip,
            host_veth: lp.host_veth.clone(),
            ingress: None,
            egress: None,
            policies: Vec::new(),
        };
        if !me.host_network {
            for np in &policies {
                let (ns, name) = key(np);
                let Some(spec) = np.spec.as_ref() else {
                    continue;
                };
                if ns != me.namespace
                    || !spec
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| selector_matches(sel, &me.labels))
                {
                    continue;
                }
                let what = format!("networkpolicy {ns}/{name}");
                pp.policies.push(format!("{ns}/{name}"));
                let (ingress, egress) = policy_types(np);
                if ingress {
                    let allowed = pp.ingress.get_or_insert_with(BTreeSet::new);
                    for rule in spec.ingress.iter().flatten() {
                        let ports = port_specs(rule.ports.as_ref(), &what, &mut ctx.warnings);
                        // Named ports resolve against this pod (the destination).
                        let ports: Vec<PortMatch> =
                            ports.iter().filter_map(|p| p.resolve(&me)).collect();
                        for peer in peers_of(&mut ctx, &ns, rule.from.as_ref(), &what) {
                            for port in &ports {
                                allowed.insert(Allow {
                                    peer: peer.clone(),
                                    port: *port,
                                });
                            }
                        }
                    }
                }
                if egress {
                    let allowed = pp.egress.get_or_insert_with(BTreeSet::new);
                    for rule in spec.egress.iter().flatten() {
                        let ports = port_specs(rule.ports.as_ref(), &what, &mut ctx.warnings);
                        let peers = egress_peers(&mut ctx, &ns, rule.to.as_ref(), &what);
                        for ep in peers {
                            for spec in &ports {
                                let port = match (spec, &ep.pod) {
                                    (PortSpec::Resolved(_), _) if ep.named_only => None,
                                    (PortSpec::Resolved(m), _) => Some(*m),
                                    (named, Some(dest)) => named.resolve(dest),
                                    (PortSpec::Named { .. }, None) => None,
                                };
                                if let Some(port) = port {
                                    allowed.insert(Allow {
                                        peer: ep.peer.clone(),
                                        port,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        out.push(pp);
    }
    out.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
    // The same problem, met once per selected pod, is reported once.
    let mut seen = std::collections::HashSet::new();
    let warnings = ctx
        .warnings
        .into_iter()
        .filter(|w| seen.insert(w.clone()))
        .collect();
    NodePolicy {
        pods: out,
        warnings,
    }
}

/// The peers of an ingress rule (`from`), as address peers.
fn peers_of(
    ctx: &mut Ctx<'_>,
    ns: &str,
    list: Option<&Vec<NetworkPolicyPeer>>,
    what: &str,
) -> Vec<Peer> {
    let list = list.map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return vec![Peer::anyone()];
    }
    let mut out = Vec::new();
    for peer in list {
        match ctx.expand(ns, peer, what) {
            Expanded::Pods(pods) => out.extend(pods.into_iter().map(|(_, ip)| Peer::Pod(ip))),
            Expanded::Block(b) => out.push(b),
        }
    }
    out
}

/// One destination of an egress rule. Pods found inside an address block come as
/// `named_only`: the block itself carries the numbered ports, they only the named ones.
struct EgressPeer {
    peer: Peer,
    pod: Option<PodInfo>,
    named_only: bool,
}

/// The peers of an egress rule (`to`), each with the pod behind it when there is exactly one
/// (named ports resolve against it).
fn egress_peers(
    ctx: &mut Ctx<'_>,
    ns: &str,
    list: Option<&Vec<NetworkPolicyPeer>>,
    what: &str,
) -> Vec<EgressPeer> {
    let list = list.map(Vec::as_slice).unwrap_or_default();
    let expanded: Vec<Expanded> = if list.is_empty() {
        vec![Expanded::Block(Peer::anyone())]
    } else {
        list.iter().map(|p| ctx.expand(ns, p, what)).collect()
    };
    let mut out = Vec::new();
    for e in expanded {
        match e {
            Expanded::Pods(pods) => out.extend(pods.into_iter().map(|(pod, ip)| EgressPeer {
                peer: Peer::Pod(ip),
                pod: Some(pod),
                named_only: false,
            })),
            Expanded::Block(b) => {
                out.extend(
                    ctx.peer_pods()
                        .filter(|(_, ip)| b.contains(*ip))
                        .map(|(pod, ip)| EgressPeer {
                            peer: Peer::Pod(ip),
                            pod: Some(pod.clone()),
                            named_only: true,
                        }),
                );
                out.push(EgressPeer {
                    peer: b,
                    pod: None,
                    named_only: false,
                });
            }
        }
    }
    out
}
