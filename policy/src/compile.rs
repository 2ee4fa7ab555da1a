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
//! * Both families: a pod peer stands for its IPv4 and (dual-stack) IPv6 address; an
//!   `ipBlock` is IPv4 or IPv6 (its `except`s must be of the same family, else the peer is
//!   dropped with a warning: dropping the hole would widen the block); an absent or empty
//!   `from`/`to` allows every address of both families.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Labels, LocalPod, NamespaceInfo, PodInfo, Protocol};

/// Who is at the other end of an allowed connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// One pod's IPv4 address.
    Pod(Ipv4Addr),
    /// `cidr` minus the `except` CIDRs (an ipBlock; `0.0.0.0/0` without except = anyone).
    Block {
        cidr: Ipv4Network,
        except: Vec<Ipv4Network>,
    },
    /// One pod's IPv6 address (a dual-stack pod).
    Pod6(Ipv6Addr),
    /// An IPv6 ipBlock (`::/0` without except = anyone over IPv6).
    Block6 {
        cidr: Ipv6Network,
        except: Vec<Ipv6Network>,
    },
}

/// `whole` minus the `holes`, as disjoint sorted inclusive ranges (`u128` holds both
/// families' addresses).
fn subtract(whole: (u128, u128), holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = vec![whole];
    for &(a, b) in holes {
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

impl Peer {
    /// Every IPv4 address.
    pub fn anyone() -> Peer {
        // 0.0.0.0/0: prefix 0 is always valid.
        let cidr = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)
            .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED));
        Peer::Block {
            cidr,
            except: Vec::new(),
        }
    }

    /// Every IPv6 address.
    pub fn anyone6() -> Peer {
        // ::/0: prefix 0 is always valid.
        let cidr = Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0)
            .unwrap_or_else(|_| Ipv6Network::from(Ipv6Addr::UNSPECIFIED));
        Peer::Block6 {
            cidr,
            except: Vec::new(),
        }
    }

    /// Its IPv4 addresses as disjoint, sorted, inclusive ranges (none for an IPv6 peer).
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        match self {
            Peer::Pod(ip) => vec![(u32::from(*ip), u32::from(*ip))],
            Peer::Block { cidr, except } => {
                let holes: Vec<(u128, u128)> = except.iter().map(net_range).collect();
                subtract(net_range(cidr), &holes)
                    .into_iter()
                    // IPv4 ranges: both ends fit.
                    .filter_map(|(s, e)| Some((u32::try_from(s).ok()?, u32::try_from(e).ok()?)))
                    .collect()
            }
            Peer::Pod6(_) | Peer::Block6 { .. } => Vec::new(),
        }
    }

    /// Its IPv6 addresses as disjoint, sorted, inclusive ranges (none for an IPv4 peer).
    pub fn ranges6(&self) -> Vec<(u128, u128)> {
        match self {
            Peer::Pod6(ip) => vec![(u128::from(*ip), u128::from(*ip))],
            Peer::Block6 { cidr, except } => {
                let holes: Vec<(u128, u128)> = except.iter().map(net_range6).collect();
                subtract(net_range6(cidr), &holes)
            }
            Peer::Pod(_) | Peer::Block { .. } => Vec::new(),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                let x = u32::from(ip);
                self.ranges().iter().any(|&(s, e)| s <= x && x <= e)
            }
            IpAddr::V6(ip) => {
                let x = u128::from(ip);
                self.ranges6().iter().any(|&(s, e)| s <= x && x <= e)
            }
        }
    }
}

fn net_range(n: &Ipv4Network) -> (u128, u128) {
    (
        u128::from(u32::from(n.network())),
        u128::from(u32::from(n.broadcast())),
    )
}

fn net_range6(n: &Ipv6Network) -> (u128, u128) {
    let first = u128::from(n.network());
    let host_bits = 128 - u32::from(n.prefix());
    let last = if host_bits >= 128 {
        u128::MAX
    } else {
        first | ((1u128 << host_bits) - 1)
    };
    (first, last)
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
    /// Its IPv4 address (`None`: an IPv6-only pod).
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (dual-stack and IPv6-only pods).
    pub ip6: Option<Ipv6Addr>,
    pub host_veth: String,
    pub ingress: Option<BTreeSet<Allow>>,
    pub egress: Option<BTreeSet<Allow>>,
    /// `namespace/name` of the policies that select the pod, sorted.
    pub policies: Vec<String>,
}

/// Whether `allows` (one direction of a [`PodPolicy`]) lets the connection with `peer` to
/// destination port `port` of IP protocol `proto` through — what the rendered sets match
/// (`PortMatch::Any` covers every protocol, ICMP included). For deciding which existing
/// connections a changed policy no longer allows. `peer` of either family.
pub fn allows(allows: &BTreeSet<Allow>, peer: impl Into<IpAddr>, proto: u8, port: u16) -> bool {
    let peer = peer.into();
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

/// Whether a rule of `policies` may name `pod` (in a namespace labelled `ns_labels`; `None`:
/// not seen) among its peers, so that the pod's address — appearing, changing or going —
/// may change the sets those policies compile to: a `from`/`to` peer whose selectors match
/// it, or any egress rule with a named port (those resolve against every pod inside an
/// `ipBlock`, and of an absent `to`). Conservative: `true` whenever it may. `false` means
/// the sets of the pods these policies select do not depend on `pod` at all.
pub fn may_name<'a>(
    policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    pod: &PodInfo,
    ns_labels: Option<&Labels>,
) -> bool {
    let default_labels: Labels = [(
        "kubernetes.io/metadata.name".to_string(),
        pod.namespace.clone(),
    )]
    .into_iter()
    .collect();
    let ns_labels = ns_labels.unwrap_or(&default_labels);
    let selects = |ns: &str, peer: &NetworkPolicyPeer| {
        if peer.ip_block.is_some()
            || (peer.pod_selector.is_none() && peer.namespace_selector.is_none())
        {
            return false;
        }
        let in_ns = match &peer.namespace_selector {
            None => pod.namespace == ns,
            Some(sel) => selector_matches(sel, ns_labels),
        };
        in_ns
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selector_matches(sel, &pod.labels))
    };
    policies.into_iter().any(|np| {
        let ns = np.metadata.namespace.as_deref().unwrap_or_default();
        let Some(spec) = np.spec.as_ref() else {
            return false;
        };
        let egress = spec.egress.iter().flatten();
        let named = egress.clone().any(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| matches!(p.port, Some(IntOrString::String(_))))
        });
        named
            || spec
                .ingress
                .iter()
                .flatten()
                .filter_map(|r| r.from.as_ref())
                .chain(egress.filter_map(|r| r.to.as_ref()))
                .flatten()
                .any(|peer| selects(ns, peer))
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
    /// Pods that can be peers, once per address (a dual-stack pod twice).
    fn peer_pods(&self) -> impl Iterator<Item = (&PodInfo, IpAddr)> {
        self.pods
            .iter()
            .filter(|p| !p.host_network && !p.terminated)
            .flat_map(|p| {
                let v4 = p.ip.map(|ip| (p, IpAddr::V4(ip)));
                let v6 = p.ip6.map(|ip| (p, IpAddr::V6(ip)));
                v4.into_iter().chain(v6)
            })
    }

    /// What one peer of a policy in namespace `ns` stands for: pods, or an address block.
    fn expand(&mut self, ns: &str, peer: &NetworkPolicyPeer, what: &str) -> Expanded {
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = block.cidr.parse::<IpNetwork>() else {
                self.warnings
                    .push(format!("{what}: ipBlock cidr {:?} is invalid", block.cidr));
                return Expanded::Pods(Vec::new());
            };
            let (mut except4, mut except6) = (Vec::new(), Vec::new());
            for e in block.except.iter().flatten() {
                match (cidr, e.parse::<IpNetwork>()) {
                    (IpNetwork::V4(_), Ok(IpNetwork::V4(n))) => except4.push(n),
                    (IpNetwork::V6(_), Ok(IpNetwork::V6(n))) => except6.push(n),
                    // Dropping the hole would widen the block: drop the peer instead.
                    _ => {
                        self.warnings.push(format!(
                            "{what}: ipBlock except {e:?} is invalid for cidr {:?}: peer ignored",
                            block.cidr
                        ));
                        return Expanded::Pods(Vec::new());
                    }
                }
            }
            return Expanded::Block(match cidr {
                IpNetwork::V4(cidr) => {
                    except4.sort();
                    except4.dedup();
                    Peer::Block {
                        cidr,
                        except: except4,
                    }
                }
                IpNetwork::V6(cidr) => {
                    except6.sort();
                    except6.dedup();
                    Peer::Block6 {
                        cidr,
                        except: except6,
                    }
                }
            });
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
    Pods(Vec<(PodInfo, IpAddr)>),
    Block(Peer),
}

/// The address peer of one pod address.
fn pod_peer(ip: IpAddr) -> Peer {
    match ip {
        IpAddr::V4(ip) => Peer::Pod(ip),
        IpAddr::V6(ip) => Peer::Pod6(ip),
    }
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
    compile_for(view, local, |_| true)
}

/// [`compile`] for only the local pods `want` picks (every pod of `local` still lends its
/// node-known address to the others' peers): an ADD compiles its own pod, not the node.
pub fn compile_for(
    view: &ClusterView,
    local: &[LocalPod],
    want: impl Fn(&LocalPod) -> bool,
) -> NodePolicy {
    let mut warnings = Vec::new();
    // The pods as the compiler sees them: the API's, with the addresses of the local pods
    // taken from the node (which knows them before the API does).
    let mut pods = view.pods.clone();
    for lp in local {
        match pods
            .iter_mut()
            .find(|p| p.namespace == lp.namespace && p.name == lp.name)
        {
            Some(p) => {
                if lp.ip.is_some() {
                    p.ip = lp.ip;
                }
                if lp.ip6.is_some() {
                    p.ip6 = lp.ip6;
                }
            }
            None => {
                warnings.push(format!(
                    "pod {}/{} is attached here but not known from the API: compiled without labels",
                    lp.namespace, lp.name
                ));
                let mut p = PodInfo::new(&lp.namespace, &lp.name, Labels::new(), lp.ip);
                p.ip6 = lp.ip6;
                pods.push(p);
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
    for lp in local.iter().filter(|lp| want(lp)) {
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
            ip: me.ip,
            ip6: me.ip6,
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
        return vec![Peer::anyone(), Peer::anyone6()];
    }
    let mut out = Vec::new();
    for peer in list {
        match ctx.expand(ns, peer, what) {
            Expanded::Pods(pods) => out.extend(pods.into_iter().map(|(_, ip)| pod_peer(ip))),
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
        vec![
            Expanded::Block(Peer::anyone()),
            Expanded::Block(Peer::anyone6()),
        ]
    } else {
        list.iter().map(|p| ctx.expand(ns, p, what)).collect()
    };
    let mut out = Vec::new();
    for e in expanded {
        match e {
            Expanded::Pods(pods) => out.extend(pods.into_iter().map(|(pod, ip)| EgressPeer {
                peer: pod_peer(ip),
                pod: Some(pod),
                named_only: false,
            })),
            Expanded::Block(b) => {
                out.extend(
                    ctx.peer_pods()
                        .filter(|(_, ip)| b.contains(*ip))
                        .map(|(pod, ip)| EgressPeer {
                            peer: pod_peer(ip),
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
