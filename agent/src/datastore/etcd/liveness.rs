//! This node's liveness in etcd, apart from its claims (issue 10's known gap: a live node
//! whose lease etcd let lapse lost its claims with it, and another node could take them while
//! its pods still used the addresses).
//!
//! Two keys per node under `<prefix>/nodes/<node>/`:
//! - `alive`: on the node's lease — gone when the lease expires (the node dead, or etcd not
//!   renewing it). Says nothing about the claims, which hang off no lease.
//! - `announced`: no lease; rewritten (new `mod_revision`) every time the node starts using a
//!   lease. A sweeper that saw `alive` missing and `announced` at revision M, and finds the
//!   same a grace period later, knows the node has not held a lease in between (`sweep.rs`).
//!
//! Both are written together ([`EtcdBackend::announce_ops`]) by the keep-alive task whenever it
//! starts using a new lease. Every claim's txn rewrites `announced` too (and `alive`, when a
//! lease is known and not announced yet): a claim never waits for a lease — issue 10: at
//! N = 1000 agents starting together etcd answered grants after 22 s (median) — and a node
//! that claims is alive, so no sweeper's grace may run on from before it.

use std::sync::atomic::Ordering;

use etcd_client::{PutOptions, Txn, TxnOp};

use super::{EtcdBackend, Hex};
use crate::datastore::common::Backend;
use crate::datastore::DatastoreError;

impl EtcdBackend {
    /// `<prefix>/nodes/<node>/`: the keys of `node`'s liveness.
    pub(super) fn node_keys(&self, node: &str) -> String {
        format!("{}{node}/", self.nodes_prefix)
    }

    /// `<prefix>/nodes/<node>/alive`, on `node`'s lease.
    pub(super) fn alive_key(&self, node: &str) -> String {
        format!("{}alive", self.node_keys(node))
    }

    /// `<prefix>/nodes/<node>/announced`, no lease.
    pub(super) fn announced_key(&self, node: &str) -> String {
        format!("{}announced", self.node_keys(node))
    }

    /// The puts that say in etcd this node lives: `announced` rewritten (a new `mod_revision`
    /// restarts every sweeper's grace for this node), and with `lease`, `alive` on it. A txn
    /// carrying `alive` fails with "lease not found" when etcd no longer has `lease`.
    pub(super) fn announce_ops(&self, lease: Option<i64>) -> Vec<TxnOp> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let hex = lease.map(|l| Hex(l).to_string());
        let announced = serde_json::json!({ "lease": hex, "atMs": at_ms }).to_string();
        let mut ops = vec![TxnOp::put(self.announced_key(&self.node), announced, None)];
        if let Some(lease) = lease {
            let alive = serde_json::json!({ "lease": hex }).to_string();
            ops.push(TxnOp::put(
                self.alive_key(&self.node),
                alive,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        ops
    }

    /// Notes that a txn carrying [`EtcdBackend::announce_ops`] for `lease` succeeded.
    pub(super) fn announced_on(&self, lease: i64) {
        self.announced.store(lease, Ordering::SeqCst);
        tracing::debug!(node = %self.node, lease = %Hex(lease), "etcd: node announced");
    }

    /// Announces this node on `lease` unless that is done.
    pub(super) async fn announce(&self, lease: i64) -> Result<(), DatastoreError> {
        if self.announced.load(Ordering::SeqCst) == lease {
            return Ok(());
        }
        self.count("txn");
        self.client
            .clone()
            .txn(Txn::new().and_then(self.announce_ops(Some(lease))))
            .await
            .map_err(|e| self.unavailable("announcing this node", e))?;
        self.announced_on(lease);
        Ok(())
    }

    /// `Some(lease)` while there is a lease and this node is not announced on it yet: a claim's
    /// txn carries `alive` too then (one txn, not two).
    pub(super) fn announcement_due(&self, lease: i64) -> Option<i64> {
        (lease != 0 && self.announced.load(Ordering::SeqCst) != lease).then_some(lease)
    }
}
