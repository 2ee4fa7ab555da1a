//! SNAT for pod traffic leaving the VPC.
//!
//! Pod addresses are VPC addresses: the nodes route them among themselves (see
//! [`crate::loops::peers`]), but nothing outside the VPC knows a route back to them. So
//! traffic from a pod to anything outside the VPC is masqueraded, i.e. rewritten to carry the
//! node's own address, like kindnet and the Amazon VPC CNI's external SNAT do:
//!
//! ```text
//! table ip vpcnet {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr { <vpc cidrs> } ip daddr != { <vpc cidrs>, <--snat-exclude> } masquerade
//!     }
//! }
//! ```
//!
//! * Only packets from the VPC (pods) are touched, and only when going to a destination
//!   outside the VPC and outside `--snat-exclude` (e.g. a corporate network that routes the
//!   VPC itself). Pod-to-pod traffic, on this node or another, keeps the pod address.
//! * `masquerade` rather than `snat to <ip>`: the source becomes the primary address of the
//!   interface the packet leaves through, chosen per packet by routing. The agent needs no
//!   configuration of which interface or address is the uplink, nodes with several uplinks
//!   work, and a DHCP address change is picked up by itself (masquerade also drops the
//!   connections of an interface that goes down, which is what we want for a lost address).
//! * Being in postrouting, the rule applies after routing decisions; connection tracking
//!   translates the replies back to the pod.
//!
//! The table is ours alone: [`apply`] replaces the whole of it in one nftables transaction
//! (add table, delete it, add it again with its chain and rule), so re-applying is idempotent
//! and never leaves a moment with a half-built table. [`remove`] deletes it (absent is fine).
//! The ruleset is built as typed JSON with the `nftables` crate (the one description of it),
//! translated by `vpcnet_netlink::nftables::json` into one nf_tables netlink batch and
//! committed over a netlink socket: no `nft` process, no command string.
//!
//! IPv6 (issue 11, docs/dual-stack.md § SNAT). With an IPv6 `--vpc-cidr` the table is one
//! `table inet vpcnet` for both families: the IPv4 rule is the same statements as above
//! (`ip saddr … ip daddr != … masquerade`, which in an `inet` table matches IPv4 packets only),
//! and IPv6 gets `ip6 saddr { <masqueraded IPv6 vpc cidrs> } ip6 daddr != { <IPv6 vpc cidrs>,
//! <IPv6 --snat-exclude> } masquerade`. Which IPv6 VPC CIDRs are masqueraded is
//! `--snat-v6`: `auto` (default) those inside `fc00::/7` (unique local addresses: nothing
//! outside routes them back), none of the global unicast ones (their pod addresses are
//! routable: that is the point of IPv6); `always` all; `never` none. An IPv4-only node keeps
//! today's `table ip vpcnet`, byte for byte; whichever of the two tables the flags do not call
//! for is deleted when the other is installed (a node changing mode keeps no stale rule).

use std::borrow::Cow;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// `table ip vpcnet`.
pub const TABLE: &str = "vpcnet";
/// Its NAT chain.
pub const CHAIN: &str = "postrouting";
/// `priority srcnat`.
const PRIO_SRCNAT: i32 = 100;

/// `--snat-v6`: which IPv6 VPC CIDRs are masqueraded when their traffic leaves the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SnatV6 {
    /// Unique local (`fc00::/7`) VPC CIDRs only.
    #[default]
    Auto,
    /// Every IPv6 VPC CIDR.
    Always,
    /// None.
    Never,
}

impl std::fmt::Display for SnatV6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnatV6::Auto => "auto",
            SnatV6::Always => "always",
            SnatV6::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct SnatConfig {
    pub vpc_cidrs: Vec<Ipv4Network>,
    pub exclude: Vec<Ipv4Network>,
    /// The IPv6 `--vpc-cidr`s; any makes the table `inet`.
    pub vpc_cidrs_v6: Vec<Ipv6Network>,
    pub exclude_v6: Vec<Ipv6Network>,
    pub v6: SnatV6,
}

/// A unique local IPv6 network: inside `fc00::/7`.
pub fn is_ula(n: &Ipv6Network) -> bool {
    n.prefix() >= 7 && (n.network().octets()[0] & 0xfe) == 0xfc
}

impl SnatConfig {
    /// The IPv6 VPC CIDRs whose traffic leaving the VPC is masqueraded (`--snat-v6`).
    pub fn masqueraded_v6(&self) -> Vec<Ipv6Network> {
        match self.v6 {
            SnatV6::Never => Vec::new(),
            SnatV6::Always => self.vpc_cidrs_v6.clone(),
            SnatV6::Auto => self.vpc_cidrs_v6.iter().copied().filter(is_ula).collect(),
        }
    }

    /// `table inet vpcnet` (some IPv6 VPC CIDR) rather than `table ip vpcnet`.
    pub fn is_inet(&self) -> bool {
        !self.vpc_cidrs_v6.is_empty()
    }
}

/// `cidrs` normalised (host bits cleared), without duplicates and without any network
/// contained in another one of the list. CIDRs either nest or are disjoint, so the result is
/// disjoint: nftables rejects overlapping intervals in a set.
pub fn minimal_cidrs(cidrs: impl IntoIterator<Item = Ipv4Network>) -> Vec<Ipv4Network> {
    let all = minimal(cidrs.into_iter().map(IpNetwork::V4));
    all.into_iter()
        .filter_map(|c| match c {
            IpNetwork::V4(c) => Some(c),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

/// [`minimal_cidrs`] for IPv6.
pub fn minimal_cidrs_v6(cidrs: impl IntoIterator<Item = Ipv6Network>) -> Vec<Ipv6Network> {
    let all = minimal(cidrs.into_iter().map(IpNetwork::V6));
    all.into_iter()
        .filter_map(|c| match c {
            IpNetwork::V6(c) => Some(c),
            IpNetwork::V4(_) => None,
        })
        .collect()
}

/// [`minimal_cidrs`] of either family (a network never contains one of the other family).
fn minimal(cidrs: impl IntoIterator<Item = IpNetwork>) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = cidrs
        .into_iter()
        .filter_map(|c| IpNetwork::new(c.network(), c.prefix()).ok())
        .collect();
    // Wider first, so a contained network always comes after its container.
    v.sort_by_key(|c| (c.prefix(), c.network()));
    let mut out: Vec<IpNetwork> = Vec::new();
    for c in v {
        if !out.iter().any(|o| o.contains(c.network())) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.network(), c.prefix()));
    out
}

fn table() -> Table<'static> {
    table_of(NfFamily::IP)
}

fn table_of(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn prefix_item(addr: String, len: u8) -> SetItem<'static> {
    SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(addr))),
        len: u32::from(len),
    })))
}

fn cidr_set(cidrs: &[Ipv4Network]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        cidrs
            .iter()
            .map(|c| prefix_item(c.network().to_string(), c.prefix()))
            .collect(),
    ))
}

fn cidr_set_v6(cidrs: &[Ipv6Network]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        cidrs
            .iter()
            .map(|c| prefix_item(c.network().to_string(), c.prefix()))
            .collect(),
    ))
}

fn ip_field(field: &'static str) -> Expression<'static> {
    proto_field("ip", field)
}

fn proto_field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// The statements of the IPv6 masquerade rule, `None` when no IPv6 VPC CIDR is masqueraded.
fn rule_exprs_v6(cfg: &SnatConfig) -> Option<Vec<Statement<'static>>> {
    let src = minimal_cidrs_v6(cfg.masqueraded_v6());
    if src.is_empty() {
        return None;
    }
    // Never towards any VPC address, masqueraded or not.
    let keep = minimal_cidrs_v6(cfg.vpc_cidrs_v6.iter().chain(&cfg.exclude_v6).copied());
    Some(vec![
        Statement::Match(Match {
            left: proto_field("ip6", "saddr"),
            right: cidr_set_v6(&src),
            op: Operator::EQ,
        }),
        Statement::Match(Match {
            left: proto_field("ip6", "daddr"),
            right: cidr_set_v6(&keep),
            op: Operator::NEQ,
        }),
        Statement::Masquerade(None),
    ])
}

/// The statements of the masquerade rule, `None` when there is no VPC CIDR (nothing to do).
fn rule_exprs(cfg: &SnatConfig) -> Option<Vec<Statement<'static>>> {
    let vpc = minimal_cidrs(cfg.vpc_cidrs.iter().copied());
    if vpc.is_empty() {
        return None;
    }
    let keep = minimal_cidrs(cfg.vpc_cidrs.iter().chain(&cfg.exclude).copied());
    Some(vec![
        Statement::Match(Match {
            left: ip_field("saddr"),
            right: cidr_set(&vpc),
            op: Operator::EQ,
        }),
        Statement::Match(Match {
            left: ip_field("daddr"),
            right: cidr_set(&keep),
            op: Operator::NEQ,
        }),
        Statement::Masquerade(None),
    ])
}

/// The transaction [`apply`] hands to nft: our table replaced as a whole.
pub fn ruleset(cfg: &SnatConfig) -> Nftables<'static> {
    if cfg.is_inet() {
        return ruleset_inet(cfg);
    }
    let mut b = Batch::new();
    // `add table` does not fail when it exists, so the delete that follows always has
    // something to delete; the three run as one transaction.
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(PRIO_SRCNAT),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    if let Some(expr) = rule_exprs(cfg) {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(CHAIN),
            expr: Cow::Owned(expr),
            comment: Some(Cow::Borrowed(
                "vpcnet: masquerade pod traffic leaving the VPC",
            )),
            ..Rule::default()
        }));
    }
    b.to_nftables()
}

/// With an IPv6 VPC CIDR: `table ip vpcnet` deleted (an IPv4-only run's) and `table inet
/// vpcnet` replaced as a whole, with the IPv4 rule (same statements as the `ip` table's) and
/// the IPv6 one (if `--snat-v6` masquerades any IPv6 VPC CIDR). One transaction.
fn ruleset_inet(cfg: &SnatConfig) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    let inet = || table_of(NfFamily::INet);
    b.add(NfListObject::Table(inet()));
    b.delete(NfListObject::Table(inet()));
    b.add(NfListObject::Table(inet()));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(PRIO_SRCNAT),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    let rules = [
        (
            rule_exprs(cfg),
            "vpcnet: masquerade pod traffic leaving the VPC",
        ),
        (
            rule_exprs_v6(cfg),
            "vpcnet: masquerade IPv6 pod traffic leaving the VPC",
        ),
    ];
    for (expr, comment) in rules {
        if let Some(expr) = expr {
            b.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: Cow::Borrowed(TABLE),
                chain: Cow::Borrowed(CHAIN),
                expr: Cow::Owned(expr),
                comment: Some(Cow::Borrowed(comment)),
                ..Rule::default()
            }));
        }
    }
    b.to_nftables()
}

/// The transaction [`remove`] hands to nft: delete our table, present or not.
pub fn removal() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// Delete `table inet vpcnet` (a dual-stack or IPv6 run's), present or not.
pub fn removal_inet() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table_of(NfFamily::INet)));
    b.delete(NfListObject::Table(table_of(NfFamily::INet)));
    b.to_nftables()
}

/// Whether an `nft` command is installed: only to list tables (support bundle); the agent
/// makes and deletes its tables over netlink without it.
pub use vpcnet_policy::apply::{nft_found, nft_program};

/// Why the SNAT table could not be installed or removed; each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error("{what}: encoding the ruleset: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what}: {source} (needs root/CAP_NET_ADMIN and a kernel with nf_tables and NAT)")]
    Kernel {
        what: &'static str,
        source: vpcnet_netlink::NetlinkError,
    },
}

/// Hands the transaction to the kernel as one nf_tables netlink batch (no `nft` process).
fn run_nft(what: &'static str, rs: &Nftables<'_>) -> Result<(), SnatError> {
    let json = serde_json::to_value(rs).map_err(|source| SnatError::Encode { what, source })?;
    vpcnet_netlink::nftables::json::batch_from_json(&json)
        .and_then(|b| b.commit())
        .map_err(|source| SnatError::Kernel { what, source })
}

/// Installs (or replaces) `table ip vpcnet` (IPv4-only) or `table inet vpcnet` (some IPv6
/// VPC CIDR) with the masquerade rules for `cfg`, and deletes the other one.
pub fn apply(cfg: &SnatConfig) -> Result<(), SnatError> {
    if cfg.is_inet() {
        // Deletes `table ip vpcnet` in the same transaction.
        return run_nft("installing nftables table inet vpcnet", &ruleset(cfg));
    }
    run_nft("installing nftables table ip vpcnet", &ruleset(cfg))?;
    run_nft("deleting nftables table inet vpcnet", &removal_inet())
}

/// Deletes `table ip vpcnet` and `table inet vpcnet` if they exist.
pub fn remove() -> Result<(), SnatError> {
    run_nft("deleting nftables table ip vpcnet", &removal())?;
    run_nft("deleting nftables table inet vpcnet", &removal_inet())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    fn cfg(vpc: &[&str], exclude: &[&str]) -> SnatConfig {
        SnatConfig {
            vpc_cidrs: vpc.iter().map(|s| net(s)).collect(),
            exclude: exclude.iter().map(|s| net(s)).collect(),
            ..SnatConfig::default()
        }
    }

    fn net6(s: &str) -> Ipv6Network {
        s.parse().expect("cidr6")
    }

    fn cfg6(v4: &[&str], v6: &[&str], exclude6: &[&str], mode: SnatV6) -> SnatConfig {
        SnatConfig {
            vpc_cidrs: v4.iter().map(|s| net(s)).collect(),
            exclude: Vec::new(),
            vpc_cidrs_v6: v6.iter().map(|s| net6(s)).collect(),
            exclude_v6: exclude6.iter().map(|s| net6(s)).collect(),
            v6: mode,
        }
    }

    #[test]
    fn dual_stack_is_one_inet_table_with_the_ipv4_rule_unchanged() {
        let v4 = json_of(&ruleset(&cfg(&["10.240.0.0/16"], &[])));
        let v = json_of(&ruleset(&cfg6(
            &["10.240.0.0/16"],
            &["fd00:10::/48"],
            &["2001:db8:ff::/48"],
            SnatV6::Auto,
        )));
        let ip = json!({"table": {"family": "ip", "name": "vpcnet"}});
        let inet = json!({"table": {"family": "inet", "name": "vpcnet"}});
        let objs = v["nftables"].as_array().expect("array");
        assert_eq!(
            objs[..5],
            [
                json!({"add": ip}),
                json!({"delete": ip}),
                json!({"add": inet}),
                json!({"delete": inet}),
                json!({"add": inet}),
            ]
        );
        assert_eq!(objs[5]["add"]["chain"]["family"], "inet");
        assert_eq!(objs[5]["add"]["chain"]["hook"], "postrouting");
        // The IPv4 rule: the same statements as the `ip` table's.
        assert_eq!(objs[6]["add"]["rule"]["family"], "inet");
        assert_eq!(
            objs[6]["add"]["rule"]["expr"],
            v4["nftables"][4]["add"]["rule"]["expr"]
        );
        assert_eq!(
            objs[7]["add"]["rule"]["expr"],
            json!([
                {"match": {"op": "==",
                    "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                    "right": {"set": [prefix("fd00:10::", 48)]}}},
                {"match": {"op": "!=",
                    "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                    "right": {"set": [prefix("2001:db8:ff::", 48), prefix("fd00:10::", 48)]}}},
                {"masquerade": null}
            ])
        );
        assert_eq!(objs.len(), 8);
    }

    #[test]
    fn snat_v6_auto_masquerades_ula_only() {
        let c = cfg6(&[], &["fd00:10::/48", "2001:db8:1::/48"], &[], SnatV6::Auto);
        assert_eq!(c.masqueraded_v6(), vec![net6("fd00:10::/48")]);
        let v = json_of(&ruleset(&c));
        let objs = v["nftables"].as_array().expect("array");
        // No IPv4 VPC: only the IPv6 rule; it never masquerades towards the global VPC CIDR.
        let rules: Vec<&Value> = objs.iter().filter_map(|o| o["add"].get("rule")).collect();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0]["expr"][1]["match"]["right"]["set"],
            json!([prefix("2001:db8:1::", 48), prefix("fd00:10::", 48)])
        );
        // A global VPC alone: an inet table with an empty chain.
        let g = json_of(&ruleset(&cfg6(
            &[],
            &["2001:db8:1::/48"],
            &[],
            SnatV6::Auto,
        )));
        let objs = g["nftables"].as_array().expect("array");
        assert!(objs.iter().all(|o| o["add"].get("rule").is_none()), "{g}");
        assert_eq!(objs[2]["add"]["table"]["family"], "inet");
    }

    #[test]
    fn snat_v6_always_and_never() {
        let both = ["fd00:10::/48", "2001:db8:1::/48"];
        let a = cfg6(&[], &both, &[], SnatV6::Always);
        assert_eq!(
            minimal_cidrs_v6(a.masqueraded_v6()),
            vec![net6("2001:db8:1::/48"), net6("fd00:10::/48")]
        );
        let n = cfg6(&["10.240.0.0/16"], &both, &[], SnatV6::Never);
        assert!(n.masqueraded_v6().is_empty());
        let v = json_of(&ruleset(&n));
        let rules: Vec<Value> = v["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o["add"].get("rule").cloned())
            .collect();
        assert_eq!(rules.len(), 1, "only the IPv4 rule: {v}");
        assert_eq!(
            rules[0]["expr"][0]["match"]["left"]["payload"]["protocol"],
            "ip"
        );
    }

    #[test]
    fn ula_is_fc00_slash_7() {
        assert!(is_ula(&net6("fd00::/8")));
        assert!(is_ula(&net6("fc00::/7")));
        assert!(is_ula(&net6("fdab:1::/64")));
        assert!(!is_ula(&net6("fe80::/10")));
        assert!(!is_ula(&net6("2001:db8::/32")));
        assert!(!is_ula(&net6("::/0")));
        assert!(!is_ula(&net6("fc00::/6")));
    }

    #[test]
    fn removal_inet_tolerates_an_absent_table() {
        let v = json_of(&removal_inet());
        let table = json!({"table": {"family": "inet", "name": "vpcnet"}});
        assert_eq!(v, json!({"nftables": [{"add": table}, {"delete": table}]}));
    }

    fn json_of(rs: &Nftables<'_>) -> Value {
        serde_json::to_value(rs).expect("serialises")
    }

    fn prefix(addr: &str, len: u32) -> Value {
        json!({"prefix": {"addr": addr, "len": len}})
    }

    #[test]
    fn ruleset_replaces_the_table_with_one_masquerade_rule() {
        let v = json_of(&ruleset(&cfg(&["10.240.0.0/16"], &["192.168.0.0/16"])));
        let table = json!({"table": {"family": "ip", "name": "vpcnet"}});
        let want = json!({"nftables": [
            {"add": table},
            {"delete": table},
            {"add": table},
            {"add": {"chain": {
                "family": "ip", "table": "vpcnet", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"
            }}},
            {"add": {"rule": {
                "family": "ip", "table": "vpcnet", "chain": "postrouting",
                "expr": [
                    {"match": {"op": "==",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": {"set": [prefix("10.240.0.0", 16)]}}},
                    {"match": {"op": "!=",
                        "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                        "right": {"set": [prefix("10.240.0.0", 16), prefix("192.168.0.0", 16)]}}},
                    {"masquerade": null}
                ],
                "comment": "vpcnet: masquerade pod traffic leaving the VPC"
            }}}
        ]});
        assert_eq!(
            v,
            want,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
    }

    #[test]
    fn several_vpc_cidrs_and_overlapping_excludes_become_disjoint_sets() {
        let v = json_of(&ruleset(&cfg(
            &["10.240.0.0/16", "10.241.0.0/16", "10.240.5.0/24"],
            &["10.0.0.0/8", "172.16.0.0/12", "172.16.0.0/12"],
        )));
        let rule = &v["nftables"][4]["add"]["rule"]["expr"];
        assert_eq!(
            rule[0]["match"]["right"]["set"],
            json!([prefix("10.240.0.0", 16), prefix("10.241.0.0", 16)])
        );
        assert_eq!(
            rule[1]["match"]["right"]["set"],
            json!([prefix("10.0.0.0", 8), prefix("172.16.0.0", 12)])
        );
    }

    #[test]
    fn no_vpc_cidr_means_an_empty_chain() {
        let v = json_of(&ruleset(&cfg(&[], &["10.0.0.0/8"])));
        let objs = v["nftables"].as_array().expect("array");
        assert_eq!(objs.len(), 4);
        assert!(objs.iter().all(|o| o["add"].get("rule").is_none()));
    }

    #[test]
    fn removal_tolerates_an_absent_table() {
        let v = json_of(&removal());
        let table = json!({"table": {"family": "ip", "name": "vpcnet"}});
        assert_eq!(v, json!({"nftables": [{"add": table}, {"delete": table}]}));
    }

    #[test]
    fn minimal_cidrs_clears_host_bits_and_drops_contained() {
        let got = minimal_cidrs([
            net("10.240.3.7/16"),
            net("10.240.0.0/16"),
            net("10.240.9.0/24"),
            net("192.168.1.0/24"),
        ]);
        assert_eq!(got, vec![net("10.240.0.0/16"), net("192.168.1.0/24")]);
    }

    #[test]
    fn minimal_cidrs_v6_clears_host_bits_and_drops_contained() {
        let n = |s: &str| s.parse::<Ipv6Network>().expect("net");
        let got = minimal_cidrs_v6([
            n("fd00:10::7/48"),
            n("fd00:10::/48"),
            n("fd00:10:0:5::/64"),
            n("fd00:20::/64"),
        ]);
        assert_eq!(got, vec![n("fd00:10::/48"), n("fd00:20::/64")]);
    }

    #[test]
    fn every_ruleset_translates_to_one_netlink_batch() {
        // What `run_nft` hands the kernel: the translation accepts every ruleset shape.
        let shapes = [
            ruleset(&cfg(&["10.240.0.0/16"], &["192.168.0.0/16"])),
            ruleset(&cfg(&[], &[])),
            ruleset(&cfg6(
                &["10.240.0.0/16"],
                &["fd00:10::/48"],
                &[],
                SnatV6::Auto,
            )),
            removal(),
            removal_inet(),
        ];
        for rs in &shapes {
            let b = vpcnet_netlink::nftables::json::batch_from_json(&json_of(rs))
                .unwrap_or_else(|e| panic!("{e}: {}", json_of(rs)));
            assert!(!b.is_empty());
        }
    }
}
