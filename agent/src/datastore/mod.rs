//! The cluster-wide side: who holds which prefix. Nodes only ever meet here, through
//! prefix claims; per-pod allocation stays local to the node.
//!
//! Contract (every backend): `claim` is an atomic create-if-absent — of several concurrent
//! claimants of one prefix exactly one gets `true`; `release` deletes a claim only if it is
//! still the caller's; `list` shows every node's claims (possibly from a watch-fed cache, a
//! little behind); `list_fresh` reads the datastore itself; `deltas` (cluster backends)
//! streams each change the watch applies to that cache, so a caller can keep derived state
//! (peer routes) without re-listing.
//!
//! Layout: [`local`] (one JSON file, one node), [`etcd`] and [`kubernetes`] (the cluster
//! backends, a directory each, one file per job), [`common`] (what the cluster backends share:
//! the one [`Datastore`] impl over their [`common::Backend`], the operation time bound, the
//! background tasks, the retry back-off).

pub mod common;
pub mod etcd;
pub mod kubernetes;
pub mod local;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use vpcnet_pool::Millis;

pub use common::{BACKOFF_MAX, BACKOFF_MIN};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixClaim {
    /// The claimed prefix, of either family (docs/dual-stack.md). Serialised as its text
    /// (`10.1.2.16/28`, `fd00:10::/80`), as before dual-stack.
    pub prefix: IpNetwork,
    pub node: String,
    /// The node's IPv4 address: peers route IPv4 prefixes via it.
    pub node_ip: Option<Ipv4Addr>,
    /// The node's IPv6 address: peers route IPv6 prefixes via it. Absent from the JSON when
    /// unset, so an IPv4-only node's claims read exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip6: Option<Ipv6Addr>,
    pub claimed_at: Millis,
}

impl PrefixClaim {
    /// The node address peers route this claim's prefix via: the node's address of the
    /// prefix's family.
    pub fn via(&self) -> Option<std::net::IpAddr> {
        match self.prefix {
            IpNetwork::V4(_) => self.node_ip.map(Into::into),
            IpNetwork::V6(_) => self.node_ip6.map(Into::into),
        }
    }
}

/// One change to the cluster's claims, as the datastore's watch applied it to its view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimDelta {
    /// A claim appeared (or its value changed).
    Put(PrefixClaim),
    /// A claim went; this is what it was.
    Removed(PrefixClaim),
    /// The view was rebuilt from a full list (start, etcd compaction, `410 Gone`, the long
    /// re-list timer) or may have missed changes: rebuild whatever was derived from it.
    Resync,
}

/// Buffer of a [`ClaimDelta`] subscription: a subscriber further behind than this gets
/// `Lagged` and must treat it as [`ClaimDelta::Resync`].
pub const DELTA_BUFFER: usize = 4096;

/// Applies `delta` to a view of the claims by prefix; returns what the prefix was claimed
/// as before (`None`: it was free). [`ClaimDelta::Resync`] changes nothing here (the caller
/// re-lists).
pub fn apply_delta(
    view: &mut std::collections::BTreeMap<IpNetwork, PrefixClaim>,
    delta: &ClaimDelta,
) -> Option<PrefixClaim> {
    match delta {
        ClaimDelta::Put(c) => view.insert(c.prefix, c.clone()),
        ClaimDelta::Removed(c) => match view.get(&c.prefix) {
            // Only the claim that went: a newer claim of the prefix stays.
            Some(v) if v.node == c.node => view.remove(&c.prefix),
            _ => None,
        },
        ClaimDelta::Resync => None,
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DatastoreError {
    #[error("datastore {backend} unavailable: {msg}")]
    Unavailable { backend: &'static str, msg: String },
    /// The datastore is reachable but behind: it did not answer within the bound, or answered
    /// that it is overloaded (etcd: "too many requests", "request timed out"). The request may
    /// still take effect; one sent again now queues behind it (retry loops wait at least
    /// [`common::BUSY_RETRY_FLOOR`]). Says nothing against the watch-fed view.
    #[error("datastore {backend} unavailable: {msg}")]
    Busy { backend: &'static str, msg: String },
    #[error("datastore {backend}: {msg}")]
    Invalid { backend: &'static str, msg: String },
}

impl DatastoreError {
    /// Whether this is [`DatastoreError::Busy`].
    pub fn is_busy(&self) -> bool {
        matches!(self, DatastoreError::Busy { .. })
    }
}

pub trait Datastore: Send + Sync + 'static {
    /// Short name for status output (`local`, `etcd`, …).
    fn name(&self) -> &'static str;
    /// Atomic create-if-absent. `Ok(false)`: someone holds it already.
    fn claim(
        &self,
        claim: &PrefixClaim,
    ) -> impl Future<Output = Result<bool, DatastoreError>> + Send;
    /// Deletes the claim if `node` still holds it. Releasing what is not held is not an error.
    fn release(
        &self,
        prefix: IpNetwork,
        node: &str,
    ) -> impl Future<Output = Result<(), DatastoreError>> + Send;
    /// Every node's claims. May answer from a watch-fed cache (etcd), so it can lag the
    /// datastore by the watch's delay: fine for peer routes and reconcile, which re-run.
    fn list(&self) -> impl Future<Output = Result<Vec<PrefixClaim>, DatastoreError>> + Send;
    /// Every node's claims, read from the datastore itself (never a cache): for decisions a
    /// stale view would make wrong, such as "the VPC is exhausted".
    fn list_fresh(&self) -> impl Future<Output = Result<Vec<PrefixClaim>, DatastoreError>> + Send {
        self.list()
    }
    /// The claims as the datastore's watch-fed view has them now, without asking or waiting;
    /// `None` while no view is in sync (at start, before the watch's first fill) and for
    /// backends without one. For the start-up claim, which must not wait for the first fill
    /// (issue 10, [`crate::node::Node::claim_at_start`]).
    fn list_now(&self) -> Option<Vec<PrefixClaim>> {
        None
    }
    /// Resolves when the claims may have changed (etcd: a watch event). Level-triggered: the
    /// caller re-lists; backends without a watch never resolve, and callers also re-list on a
    /// timer, so a missed event only delays convergence.
    fn changed(&self) -> impl Future<Output = ()> + Send;
    /// A subscription to the changes the datastore's watch applies to its view of the
    /// claims, in order, each once ([`ClaimDelta::Resync`] after every re-list). `None`:
    /// this backend keeps no such view (callers re-list on `changed` and on a timer).
    fn deltas(&self) -> Option<tokio::sync::broadcast::Receiver<ClaimDelta>> {
        None
    }
    /// Whether other nodes claim from the same datastore. Only then do nodes race for
    /// prefixes, and only then does the claim path spread its search over the VPC; a
    /// node alone (the local datastore) takes the lowest free prefix, predictably.
    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn claim(p: &str, node: &str) -> PrefixClaim {
        PrefixClaim {
            prefix: p.parse().expect("cidr"),
            node: node.to_string(),
            node_ip: None,
            node_ip6: None,
            claimed_at: 1,
        }
    }

    #[test]
    fn deltas_keep_a_view() {
        let mut view = BTreeMap::new();
        let a = claim("10.0.0.0/28", "a");
        assert_eq!(apply_delta(&mut view, &ClaimDelta::Put(a.clone())), None);
        assert_eq!(view.get(&a.prefix), Some(&a));
        // A removal of another node's (older) claim of the prefix leaves the current one.
        assert_eq!(
            apply_delta(&mut view, &ClaimDelta::Removed(claim("10.0.0.0/28", "b"))),
            None
        );
        assert_eq!(view.len(), 1);
        assert_eq!(apply_delta(&mut view, &ClaimDelta::Resync), None);
        assert_eq!(view.len(), 1);
        assert_eq!(
            apply_delta(&mut view, &ClaimDelta::Removed(a.clone())),
            Some(a)
        );
        assert!(view.is_empty());
    }
}
