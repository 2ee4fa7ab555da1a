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
//! The ruleset is built as typed JSON with the `nftables` crate and handed to `nft -j -f -`:
//! no command string is built by hand, but the `nft` command must be installed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::helper::NftablesError;
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// `table ip vpcnet`.
pub const TABLE: &str = "vpcnet";
/// Its NAT chain.
pub const CHAIN: &str = "postrouting";
/// `priority srcnat`.
const PRIO_SRCNAT: i32 = 100;

#[derive(Debug, Clone)]
pub struct SnatConfig {
    pub vpc_cidrs: Vec<Ipv4Network>,
    pub exclude: Vec<Ipv4Network>,
}

/// `cidrs` normalised (host bits cleared), without duplicates and without any network
/// contained in another one of the list. CIDRs either nest or are disjoint, so the result is
/// disjoint: nftables rejects overlapping intervals in a set.
pub fn minimal_cidrs(cidrs: impl IntoIterator<Item = Ipv4Network>) -> Vec<Ipv4Network> {
    let mut v: Vec<Ipv4Network> = cidrs
        .into_iter()
        .filter_map(|c| Ipv4Network::new(c.network(), c.prefix()).ok())
        .collect();
    // Wider first, so a contained network always comes after its container.
    v.sort_by_key(|c| (c.prefix(), c.network()));
    let mut out: Vec<Ipv4Network> = Vec::new();
    for c in v {
        if !out.iter().any(|o| o.contains(c.network())) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.network(), c.prefix()));
    out
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn cidr_set(cidrs: &[Ipv4Network]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        cidrs
            .iter()
            .map(|c| {
                SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(Cow::Owned(c.network().to_string()))),
                    len: u32::from(c.prefix()),
                })))
            })
            .collect(),
    ))
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
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

/// The transaction [`remove`] hands to nft: delete our table, present or not.
pub fn removal() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// The `nft` to run, and whether one is installed (without it no table of ours can exist:
/// the agent makes its tables with `nft`): one lookup for SNAT and NetworkPolicy.
pub use vpcnet_policy::apply::{nft_found, nft_program};

/// Why the SNAT table could not be installed or removed; each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error("{what}: encoding the ruleset: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "{what}: the nftables command `nft` was not found (looked in PATH, /usr/sbin, /sbin, \
         /usr/local/sbin): install nftables (Debian/Ubuntu: apt-get install nftables), or run \
         with --snat=false"
    )]
    NftNotFound { what: &'static str },
    #[error(
        "{what}: running {} failed: {source} (the nftables command `nft` must be installed \
         and executable)",
        program.display()
    )]
    NftNotRunnable {
        what: &'static str,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what}: {} -j -f - failed: {} (needs root/CAP_NET_ADMIN and a kernel with nf_tables \
         and NAT)",
        program.display(),
        stderr.trim()
    )]
    NftFailed {
        what: &'static str,
        program: PathBuf,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Other {
        what: &'static str,
        source: NftablesError,
    },
}

fn run_nft(what: &'static str, rs: &Nftables<'_>) -> Result<(), SnatError> {
    let program = nft_program();
    let payload = serde_json::to_string(rs).map_err(|source| SnatError::Encode { what, source })?;
    nftables::helper::apply_ruleset_raw(&payload, Some(&program), nftables::helper::DEFAULT_ARGS)
        .map(|_| ())
        .map_err(|e| describe(what, &program, e))
}

fn describe(what: &'static str, program: &Path, e: NftablesError) -> SnatError {
    match e {
        NftablesError::NftExecution { inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            SnatError::NftNotFound { what }
        }
        NftablesError::NftExecution { inner, .. } => SnatError::NftNotRunnable {
            what,
            program: program.to_path_buf(),
            source: inner,
        },
        NftablesError::NftFailed { stderr, .. } => SnatError::NftFailed {
            what,
            program: program.to_path_buf(),
            stderr,
        },
        source => SnatError::Other { what, source },
    }
}

/// Installs (or replaces) `table ip vpcnet` with the masquerade rule for `cfg`.
pub fn apply(cfg: &SnatConfig) -> Result<(), SnatError> {
    run_nft("installing nftables table ip vpcnet", &ruleset(cfg))
}

/// Deletes `table ip vpcnet` if it exists.
pub fn remove() -> Result<(), SnatError> {
    run_nft("deleting nftables table ip vpcnet", &removal())
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
        }
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
    fn missing_nft_is_explained() {
        let e = NftablesError::NftExecution {
            program: "nft".into(),
            inner: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let msg = describe("installing nftables table ip vpcnet", Path::new("nft"), e).to_string();
        assert!(msg.contains("`nft` was not found"), "{msg}");
        assert!(msg.contains("install nftables"), "{msg}");
    }
}
