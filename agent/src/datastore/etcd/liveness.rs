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
//! Both are written in one txn ([`EtcdBackend::announce`]) before this node's first claim on a
//! lease and by the keep-alive task whenever it starts using a new one.

use std::sync::atomic::Ordering;

use etcd_client::{PutOptions, Txn, TxnOp};

use super::{invalid, EtcdBackend, Hex};
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

    /// Says in etcd that this node lives on `lease`: `alive` on the lease, `announced`
    /// rewritten. Fails with "lease not found" when etcd no longer has `lease`.
    pub(super) async fn announce(&self, lease: i64) -> Result<(), DatastoreError> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let alive = serde_json::json!({ "lease": Hex(lease).to_string() }).to_string();
        let announced =
            serde_json::json!({ "lease": Hex(lease).to_string(), "atMs": at_ms }).to_string();
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.alive_key(&self.node),
                alive,
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(self.announced_key(&self.node), announced, None),
        ]);
        self.count("txn");
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("announcing this node", e))?;
        if !r.succeeded() {
            return Err(invalid("announcing this node: an unconditional txn failed"));
        }
        self.announced.store(lease, Ordering::SeqCst);
        tracing::debug!(node = %self.node, lease = %Hex(lease), "etcd: node announced");
        Ok(())
    }

    /// The live lease, with this node announced on it: what a claim needs (a node claiming
    /// without liveness would look dead to the others' sweep). A lease etcd lost is replaced.
    pub(super) async fn ensure_announced(&self) -> Result<i64, DatastoreError> {
        let lease = self.ensure_lease().await?;
        if self.announced.load(Ordering::SeqCst) == lease {
            return Ok(lease);
        }
        match self.announce(lease).await {
            Err(e) if e.to_string().contains("lease not found") => {
                // Expired under us (the keep-alive task will notice too): take a new one.
                self.forget_lease(lease);
                let lease = self.ensure_lease().await?;
                self.announce(lease).await?;
                Ok(lease)
            }
            r => r.map(|()| lease),
        }
    }
}
