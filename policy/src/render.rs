//! The renderer: a compiled [`NodePolicy`] -> one nftables transaction (JSON, as `nft -j -f`
//! reads it) that replaces `table inet vpcnet-policy` as a whole:
//!
//! ```text
//! table inet vpcnet-policy {
//!     set egress_<veth>_any   { type ipv4_addr; flags interval; }          # any port
//!     set egress_<veth>_ports { type ipv4_addr . inet_proto . inet_service; flags interval; }
//!     set egress_<veth>_any6   { type ipv6_addr; flags interval; }         # IPv6 twins, only
//!     set egress_<veth>_ports6 { type ipv6_addr . inet_proto . inet_service; flags interval; }
//!     set ingress_<veth>_any / ingress_<veth>_ports (/ _any6 / _ports6)     # likewise
//!     chain egress_<veth> {
//!         ip daddr @egress_<veth>_any return
//!         ip daddr . meta l4proto . th dport @egress_<veth>_ports return
//!         ip6 daddr @egress_<veth>_any6 return                              # when not empty
//!         ip6 daddr . meta l4proto . th dport @egress_<veth>_ports6 return  # when not empty
//!         drop
//!     }
//!     chain ingress_<veth> { ... accept ... drop }
//!     map egress_dispatch  { type ifname : verdict; elements = { "<veth>" : jump egress_<veth> } }
//!     map ingress_dispatch { type ifname : verdict; ... }
//!     set ingress_isolated { type ifname; elements = { "<veth>", … } }   # the map's keys
//!     set egress_isolated  { type ifname; … }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ct state established,related accept
//!         tcp flags & (fin|syn|rst|ack) != syn ct state new iifname @ingress_isolated drop
//!         tcp flags & (fin|syn|rst|ack) != syn ct state new oifname @egress_isolated drop
//!         iifname vmap @egress_dispatch      # the packet comes from a pod: its egress
//!         oifname vmap @ingress_dispatch     # the packet goes to a pod: its ingress
//!     }
//! }
//! ```
//!
//! Only *forwarded* packets are filtered: the node's own traffic to its pods (output hook)
//! and from them (input hook) is never touched, and a pod reaching itself never leaves its
//! namespace. A pod whose direction is not isolated has no dispatch entry for it. Egress
//! `return`s (the destination's ingress, on this node or its own, still decides); ingress
//! `accept`s. The sets are normalised to disjoint elements (interval sets reject overlaps), and
//! everything is sorted: the same policy renders to the same bytes.
//!
//! IPv6 (dual-stack pods): the same chains match `ip6 saddr`/`ip6 daddr` against the `_any6`
//! and `_ports6` sets of type `ipv6_addr`. Those two sets and their rules are rendered only
//! when they have elements (an IPv4-only cluster's ruleset is unchanged); without them the
//! IPv6 traffic of an isolated direction falls to `drop`, which is what an empty set would
//! give. Everything else (dispatch by interface, conntrack, the TCP-flags rules) is
//! family-agnostic in the `inet` table.
//!
//! The two `tcp flags` rules close what deleting a disallowed connection's conntrack entry
//! leaves open: the kernel picks a TCP connection up mid-stream (`nf_conntrack_tcp_loose`),
//! so a retransmission from the *isolated* side (the pod that accepted a connection its
//! ingress no longer allows, or the peer of one its egress no longer allows) would create a
//! new entry in the reverse direction, which its own unisolated direction lets through, and
//! the rest of the connection would then pass as replies. A new TCP connection starts with a
//! SYN; anything else with no conntrack entry, sent by a pod isolated for ingress (or to a
//! pod isolated for egress), is dropped.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::compile::{NodePolicy, PodPolicy, PortMatch};
use crate::model::Protocol;

/// `table inet vpcnet-policy`.
pub const TABLE: &str = "vpcnet-policy";
pub const FORWARD_CHAIN: &str = "forward";
pub const EGRESS_MAP: &str = "egress_dispatch";
pub const INGRESS_MAP: &str = "ingress_dispatch";
pub const INGRESS_ISOLATED: &str = "ingress_isolated";
pub const EGRESS_ISOLATED: &str = "egress_isolated";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The chain of one pod's direction.
pub fn chain_name(dir: Direction, veth: &str) -> String {
    format!("{}_{veth}", dir.word())
}

/// Its sets: addresses allowed on any port, and (address . protocol . port) triples.
pub fn set_names(dir: Direction, veth: &str) -> (String, String) {
    (
        format!("{}_{veth}_any", dir.word()),
        format!("{}_{veth}_ports", dir.word()),
    )
}

/// Its IPv6 sets (`ipv6_addr`), rendered when not empty.
pub fn set_names6(dir: Direction, veth: &str) -> (String, String) {
    (
        format!("{}_{veth}_any6", dir.word()),
        format!("{}_{veth}_ports6", dir.word()),
    )
}

/// Merges inclusive ranges into disjoint, sorted, non-adjacent ones.
pub fn merge_ranges<T: Addr>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            // Adjacent (`last.1 + 1 == s`) or overlapping; `last.1` at the top overlaps all.
            Some(last) if last.1.succ().is_none_or(|n| s <= n) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// An address as a number: `u32` (IPv4) or `u128` (IPv6).
pub trait Addr: Copy + Ord + std::fmt::Debug {
    /// The next address, `None` at the top.
    fn succ(self) -> Option<Self>;
}

impl Addr for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl Addr for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
}

/// Disjoint, sorted, inclusive address ranges (IPv4 as `u32`).
pub type Ranges = Vec<(u32, u32)>;
/// Disjoint, sorted address ranges of either family (`u32` or `u128`).
pub type RangesOf<T> = Vec<(T, T)>;
/// Disjoint, sorted port ranges, each with the addresses (of either family) allowed on it.
pub type PortSegmentsOf<T> = Vec<((u16, u16), RangesOf<T>)>;
/// Disjoint, sorted port ranges, each with the addresses allowed on it.
pub type PortSegments = Vec<((u16, u16), Ranges)>;

/// The elements of one pod direction's sets, disjoint: (any-port address ranges, and per
/// protocol a list of (port range, address ranges) with disjoint port ranges). `T` is `u32`
/// for the IPv4 sets, `u128` for the IPv6 ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetContentsOf<T> {
    pub any: Vec<(T, T)>,
    pub ports: BTreeMap<Protocol, PortSegmentsOf<T>>,
}

impl<T> Default for SetContentsOf<T> {
    fn default() -> Self {
        SetContentsOf {
            any: Vec::new(),
            ports: BTreeMap::new(),
        }
    }
}

impl<T> SetContentsOf<T> {
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.ports.values().all(Vec::is_empty)
    }
}

/// The IPv4 sets' contents.
pub type SetContents = SetContentsOf<u32>;
/// The IPv6 sets' contents.
pub type SetContents6 = SetContentsOf<u128>;

/// The IPv4 sets of one pod direction.
pub fn set_contents(allows: &std::collections::BTreeSet<crate::compile::Allow>) -> SetContents {
    contents_of(allows, crate::compile::Peer::ranges)
}

/// The IPv6 sets of one pod direction.
pub fn set_contents6(allows: &std::collections::BTreeSet<crate::compile::Allow>) -> SetContents6 {
    contents_of(allows, crate::compile::Peer::ranges6)
}

fn contents_of<T: Addr>(
    allows: &std::collections::BTreeSet<crate::compile::Allow>,
    ranges: fn(&crate::compile::Peer) -> Vec<(T, T)>,
) -> SetContentsOf<T> {
    let mut any = Vec::new();
    type Entry<T> = (u32, u32, Vec<(T, T)>);
    let mut by_proto: BTreeMap<Protocol, Vec<Entry<T>>> = BTreeMap::new();
    for a in allows {
        let r = ranges(&a.peer);
        if r.is_empty() {
            continue;
        }
        match a.port {
            PortMatch::Any => any.extend(r),
            PortMatch::Ports { proto, first, last } => {
                by_proto
                    .entry(proto)
                    .or_default()
                    .push((u32::from(first), u32::from(last), r))
            }
        }
    }
    let mut ports = BTreeMap::new();
    for (proto, entries) in by_proto {
        // Elementary port segments between every range boundary.
        let mut bounds: Vec<u32> = entries.iter().flat_map(|(f, l, _)| [*f, l + 1]).collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut segs: Vec<((u32, u32), RangesOf<T>)> = Vec::new();
        for w in bounds.windows(2) {
            let (s, e) = (w[0], w[1] - 1);
            let addrs = merge_ranges(
                entries
                    .iter()
                    .filter(|(f, l, _)| *f <= s && e <= *l)
                    .flat_map(|(_, _, r)| r.iter().copied())
                    .collect(),
            );
            if addrs.is_empty() {
                continue;
            }
            match segs.last_mut() {
                // Adjacent segment with the same addresses: one element.
                Some(((_, pe), pa)) if *pe + 1 == s && *pa == addrs => *pe = e,
                _ => segs.push(((s, e), addrs)),
            }
        }
        let segs = segs
            .into_iter()
            .map(|((s, e), a)| {
                // Both come from u16 ports (bounds <= 65536, segments end below it).
                let s = u16::try_from(s).unwrap_or(u16::MAX);
                let e = u16::try_from(e).unwrap_or(u16::MAX);
                ((s, e), a)
            })
            .collect();
        ports.insert(proto, segs);
    }
    SetContentsOf {
        any: merge_ranges(any),
        ports,
    }
}

fn addr_elem((s, e): (u32, u32)) -> Value {
    let a = std::net::Ipv4Addr::from(s).to_string();
    if s == e {
        return json!(a);
    }
    let size = u64::from(e) - u64::from(s) + 1;
    if size.is_power_of_two() && u64::from(s) % size == 0 {
        let len = 32 - size.trailing_zeros();
        return json!({"prefix": {"addr": a, "len": len}});
    }
    json!({"range": [a, std::net::Ipv4Addr::from(e).to_string()]})
}

fn addr_elem6((s, e): (u128, u128)) -> Value {
    let a = std::net::Ipv6Addr::from(s).to_string();
    if s == e {
        return json!(a);
    }
    // A prefix when the range is an aligned power of two (`e - s + 1` overflows only for
    // `::/0`).
    let len = match (e - s).checked_add(1) {
        None => Some(0),
        Some(size) if size.is_power_of_two() && s % size == 0 => Some(128 - size.trailing_zeros()),
        Some(_) => None,
    };
    match len {
        Some(len) => json!({"prefix": {"addr": a, "len": len}}),
        None => json!({"range": [a, std::net::Ipv6Addr::from(e).to_string()]}),
    }
}

fn port_elem((s, e): (u16, u16)) -> Value {
    if s == e {
        json!(s)
    } else {
        json!({"range": [s, e]})
    }
}

fn obj(kind: &str, mut body: Value) -> Value {
    body["family"] = json!("inet");
    body["table"] = json!(TABLE);
    json!({"add": {kind: body}})
}

fn table() -> Value {
    json!({"table": {"family": "inet", "name": TABLE}})
}

fn rule(chain: &str, expr: Value) -> Value {
    obj("rule", json!({"chain": chain, "expr": expr}))
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

fn pod_direction(out: &mut Vec<Value>, pod: &PodPolicy, dir: Direction) {
    let allows = match dir {
        Direction::Ingress => &pod.ingress,
        Direction::Egress => &pod.egress,
    };
    let Some(allows) = allows else { return };
    let veth = &pod.host_veth;
    let chain = chain_name(dir, veth);
    let (any_set, ports_set) = set_names(dir, veth);
    let contents = set_contents(allows);
    out.push(obj(
        "set",
        json!({"name": any_set, "type": "ipv4_addr", "flags": ["interval"]}),
    ));
    if !contents.any.is_empty() {
        let elem: Vec<Value> = contents.any.iter().copied().map(addr_elem).collect();
        out.push(obj("element", json!({"name": any_set, "elem": elem})));
    }
    out.push(obj(
        "set",
        json!({"name": ports_set, "type": ["ipv4_addr", "inet_proto", "inet_service"],
               "flags": ["interval"]}),
    ));
    let mut elem = Vec::new();
    for (proto, segs) in &contents.ports {
        for (ports, addrs) in segs {
            for a in addrs {
                elem.push(json!({"concat": [addr_elem(*a), proto.nft_name(), port_elem(*ports)]}));
            }
        }
    }
    if !elem.is_empty() {
        out.push(obj("element", json!({"name": ports_set, "elem": elem})));
    }
    out.push(obj("chain", json!({"name": chain})));
    let (peer_field, verdict) = match dir {
        Direction::Ingress => ("saddr", json!({"accept": null})),
        Direction::Egress => ("daddr", json!({"return": null})),
    };
    out.push(rule(
        &chain,
        json!([
            {"match": {"op": "==", "left": payload("ip", peer_field), "right": format!("@{any_set}")}},
            verdict
        ]),
    ));
    out.push(rule(
        &chain,
        json!([
            {"match": {"op": "==",
                "left": {"concat": [payload("ip", peer_field), {"meta": {"key": "l4proto"}},
                                    payload("th", "dport")]},
                "right": format!("@{ports_set}")}},
            verdict
        ]),
    ));
    let contents6 = set_contents6(allows);
    if !contents6.any.is_empty() || !contents6.ports.is_empty() {
        let (any6, ports6) = set_names6(dir, veth);
        let mut rules = Vec::new();
        if !contents6.any.is_empty() {
            out.push(obj(
                "set",
                json!({"name": any6, "type": "ipv6_addr", "flags": ["interval"]}),
            ));
            let elem: Vec<Value> = contents6.any.iter().copied().map(addr_elem6).collect();
            out.push(obj("element", json!({"name": any6, "elem": elem})));
            rules.push(json!([
                {"match": {"op": "==", "left": payload("ip6", peer_field), "right": format!("@{any6}")}},
                verdict
            ]));
        }
        let mut elem = Vec::new();
        for (proto, segs) in &contents6.ports {
            for (ports, addrs) in segs {
                for a in addrs {
                    elem.push(
                        json!({"concat": [addr_elem6(*a), proto.nft_name(), port_elem(*ports)]}),
                    );
                }
            }
        }
        if !elem.is_empty() {
            out.push(obj(
                "set",
                json!({"name": ports6, "type": ["ipv6_addr", "inet_proto", "inet_service"],
                       "flags": ["interval"]}),
            ));
            out.push(obj("element", json!({"name": ports6, "elem": elem})));
            rules.push(json!([
                {"match": {"op": "==",
                    "left": {"concat": [payload("ip6", peer_field), {"meta": {"key": "l4proto"}},
                                        payload("th", "dport")]},
                    "right": format!("@{ports6}")}},
                verdict
            ]));
        }
        // The chain exists already (declared with the IPv4 sets above): its rules follow.
        for r in rules {
            out.push(rule(&chain, r));
        }
    }
    out.push(rule(&chain, json!([{"drop": null}])));
}

/// The transaction that makes `table inet vpcnet-policy` enforce `policy`, replacing whatever
/// the table held, in one atomic step.
pub fn render(policy: &NodePolicy) -> Value {
    let mut out = vec![
        // `add table` does not fail when it exists, so the delete always has something to
        // delete; all of it is one transaction.
        json!({"add": table()}),
        json!({"delete": table()}),
        json!({"add": table()}),
    ];
    let mut pods: Vec<&PodPolicy> = policy.pods.iter().collect();
    pods.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
    pods.dedup_by(|a, b| a.host_veth == b.host_veth);
    // Per direction: the dispatch map and its elements, the set of its keys and those.
    type Dispatch<'a> = (Direction, &'a str, Vec<Value>, &'a str, Vec<Value>);
    let mut dispatch: [Dispatch; 2] = [
        (
            Direction::Egress,
            EGRESS_MAP,
            Vec::new(),
            EGRESS_ISOLATED,
            Vec::new(),
        ),
        (
            Direction::Ingress,
            INGRESS_MAP,
            Vec::new(),
            INGRESS_ISOLATED,
            Vec::new(),
        ),
    ];
    for pod in &pods {
        for (dir, _, elems, _, keys) in dispatch.iter_mut() {
            let isolated = match dir {
                Direction::Ingress => pod.ingress.is_some(),
                Direction::Egress => pod.egress.is_some(),
            };
            if isolated {
                pod_direction(&mut out, pod, *dir);
                elems.push(json!([
                    pod.host_veth,
                    {"jump": {"target": chain_name(*dir, &pod.host_veth)}}
                ]));
                keys.push(json!(pod.host_veth));
            }
        }
    }
    for (_, map, elems, set, keys) in &dispatch {
        out.push(obj(
            "map",
            json!({"name": map, "type": "ifname", "map": "verdict"}),
        ));
        if !elems.is_empty() {
            out.push(obj("element", json!({"name": map, "elem": elems})));
        }
        out.push(obj("set", json!({"name": set, "type": "ifname"})));
        if !keys.is_empty() {
            out.push(obj("element", json!({"name": set, "elem": keys})));
        }
    }
    out.push(obj(
        "chain",
        json!({"name": FORWARD_CHAIN, "type": "filter", "hook": "forward", "prio": 0,
               "policy": "accept"}),
    ));
    out.push(rule(
        FORWARD_CHAIN,
        json!([
            {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                       "right": ["established", "related"]}},
            {"accept": null}
        ]),
    ));
    for (iface, set) in [("iifname", INGRESS_ISOLATED), ("oifname", EGRESS_ISOLATED)] {
        out.push(rule(
            FORWARD_CHAIN,
            json!([
                {"match": {"op": "!=",
                    "left": {"&": [payload("tcp", "flags"), ["fin", "syn", "rst", "ack"]]},
                    "right": "syn"}},
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                {"match": {"op": "==", "left": {"meta": {"key": iface}}, "right": format!("@{set}")}},
                {"drop": null}
            ]),
        ));
    }
    out.push(rule(
        FORWARD_CHAIN,
        json!([{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": format!("@{EGRESS_MAP}")}}]),
    ));
    out.push(rule(
        FORWARD_CHAIN,
        json!([{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": format!("@{INGRESS_MAP}")}}]),
    ));
    json!({"nftables": out})
}

/// How many rules, and sets, [`render`] gives `pod` (its chains' rules and its own sets;
/// not the dispatch elements): what its ADD or DEL adds to or takes from the table's size.
pub fn pod_size(pod: &PodPolicy) -> (usize, usize) {
    let mut objs = Vec::new();
    pod_direction(&mut objs, pod, Direction::Egress);
    pod_direction(&mut objs, pod, Direction::Ingress);
    let rules = objs
        .iter()
        .filter(|o| o["add"].get("rule").is_some())
        .count();
    let sets = objs
        .iter()
        .filter(|o| o["add"].get("set").is_some())
        .count();
    (rules, sets)
}

/// The transaction that deletes the table (absent is fine).
pub fn removal() -> Value {
    json!({"nftables": [{"add": table()}, {"delete": table()}]})
}

/// The transaction that adds `pods` (none of them in the table yet, every other pod's rules
/// unchanged) to a table [`render`] made: their sets, chains and rules, and their dispatch
/// and isolated-set elements — what an ADD of a selected pod changes. Their sets and chains
/// are flushed after being declared, so a leftover of the same name cannot double a rule.
/// The table afterwards holds what [`render`] of the whole node would put there (object
/// order aside); the caller only uses it where that holds.
pub fn render_delta(pods: &[&PodPolicy]) -> Value {
    render_change(pods, &[])
}

/// [`render_delta`] that also takes `removed` pods (no other pod's rules naming them) out:
/// their dispatch and isolated-set elements first, then their chains (with their rules) and
/// sets — an ADD after a DEL the loop has not applied yet.
pub fn render_change(pods: &[&PodPolicy], removed: &[&PodPolicy]) -> Value {
    let mut removal = Vec::new();
    let mut gone_objs = Vec::new();
    for (dir, map, set) in [
        (Direction::Egress, EGRESS_MAP, EGRESS_ISOLATED),
        (Direction::Ingress, INGRESS_MAP, INGRESS_ISOLATED),
    ] {
        let veths: Vec<&String> = removed
            .iter()
            .filter(|p| match dir {
                Direction::Ingress => p.ingress.is_some(),
                Direction::Egress => p.egress.is_some(),
            })
            .map(|p| &p.host_veth)
            .collect();
        if veths.is_empty() {
            continue;
        }
        removal.push(obj(
            "map",
            json!({"name": map, "type": "ifname", "map": "verdict"}),
        ));
        removal.push(
            json!({"delete": {"element": {"family": "inet", "table": TABLE,
            "name": map, "elem": veths}}}),
        );
        removal.push(obj("set", json!({"name": set, "type": "ifname"})));
        removal.push(
            json!({"delete": {"element": {"family": "inet", "table": TABLE,
            "name": set, "elem": veths}}}),
        );
        for pod in removed.iter().filter(|p| match dir {
            Direction::Ingress => p.ingress.is_some(),
            Direction::Egress => p.egress.is_some(),
        }) {
            gone_objs.push(
                json!({"delete": {"chain": {"family": "inet", "table": TABLE,
                "name": chain_name(dir, &pod.host_veth)}}}),
            );
            // Exactly the sets the full render gave this pod's direction (the IPv6 twins
            // exist only when they had elements).
            let mut rendered = Vec::new();
            pod_direction(&mut rendered, pod, dir);
            for name in rendered
                .iter()
                .filter_map(|o| o["add"].get("set")?.get("name"))
            {
                gone_objs.push(json!({"delete": {"set": {"family": "inet", "table": TABLE,
                    "name": name}}}));
            }
        }
    }
    removal.extend(gone_objs);
    let mut objs = Vec::new();
    let mut dispatch = Vec::new();
    for pod in pods {
        for dir in [Direction::Egress, Direction::Ingress] {
            let isolated = match dir {
                Direction::Ingress => pod.ingress.is_some(),
                Direction::Egress => pod.egress.is_some(),
            };
            if isolated {
                pod_direction(&mut objs, pod, dir);
                dispatch.push((dir, pod.host_veth.clone()));
            }
        }
    }
    let mut out = removal;
    for o in objs {
        let flush = ["set", "chain"].iter().find_map(|k| {
            o["add"].get(*k).map(
                |b| json!({"flush": {*k: {"family": "inet", "table": TABLE, "name": b["name"]}}}),
            )
        });
        out.push(o);
        out.extend(flush);
    }
    for (dir, map, set) in [
        (Direction::Egress, EGRESS_MAP, EGRESS_ISOLATED),
        (Direction::Ingress, INGRESS_MAP, INGRESS_ISOLATED),
    ] {
        let veths: Vec<&String> = dispatch
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, v)| v)
            .collect();
        if veths.is_empty() {
            continue;
        }
        let elems: Vec<Value> = veths
            .iter()
            .map(|v| json!([v, {"jump": {"target": chain_name(dir, v)}}]))
            .collect();
        // Declared again (the same definition: a no-op) so the transaction says its type.
        out.push(obj(
            "map",
            json!({"name": map, "type": "ifname", "map": "verdict"}),
        ));
        out.push(obj("element", json!({"name": map, "elem": elems})));
        out.push(obj("set", json!({"name": set, "type": "ifname"})));
        out.push(obj("element", json!({"name": set, "elem": veths})));
    }
    json!({"nftables": out})
}
