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
//!
//! The gap bridge ([`bridge_gaps`]): a live node holding claims has gaps without `alive` — from
//! its first claim to its first renewal (a grant can take up to `GRANT_TIMEOUT` under load, and
//! the announcement then waits TTL/3, `keepalive.rs`), and from a lost lease to the next one
//! announced. A sweeper takes the claims of a node whose gap outlasts the grace, so with a grace
//! shorter than a gap (e.g. `--etcd-claim-grace 5s` beside `--etcd-lease-ttl 30s`) a *live*
//! node's prefixes could be swept and claimed by another while its pods use them: a duplicate
//! address. So every quarter of the grace, while this node holds claims and is not surely
//! announced on a lease etcd still has, it rewrites `announced` (no lease) — what a claim's txn
//! does — which restarts every sweeper's grace. A dead process writes nothing, so its claims
//! are still swept a grace after its last write. With the default grace (10 min) the bridge
//! never writes in practice (a gap lasts seconds).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};

use super::{EtcdBackend, Hex, OP_TIMEOUT};
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

    /// Whether `alive` is surely in etcd now: this node is announced on its current lease and
    /// etcd still has that lease (by the last grant or renewal's answer).
    fn surely_alive(&self, now: tokio::time::Instant) -> bool {
        let lease = self.lease.load(Ordering::SeqCst);
        let held = *self
            .alive_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lease != 0
            && self.announced.load(Ordering::SeqCst) == lease
            && held.is_some_and(|(l, until)| l == lease && now < until)
    }

    /// Whether this node holds claims in etcd, as far as it knows.
    fn holds_claims(&self) -> bool {
        !self.mine().is_empty() || self.cached_own().is_some_and(|own| !own.is_empty())
    }

    /// Rewrites `announced` (no lease): this node lives, whatever its lease does.
    async fn bridge(&self) -> Result<(), DatastoreError> {
        self.count("txn");
        self.client
            .clone()
            .txn(Txn::new().and_then(self.announce_ops(None)))
            .await
            .map_err(|e| self.unavailable("announcing this node without a lease", e))?;
        Ok(())
    }
}

/// How often the bridge looks: a quarter of the grace (a write then lands well within any
/// sweeper's grace), at least 100 ms, at most a minute.
fn bridge_period(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Background (etcd with a claim grace): while this node holds claims and shows no `alive`
/// key, `announced` is rewritten every quarter of the grace (see the module docs).
pub(super) async fn bridge_gaps(inner: Arc<EtcdBackend>) {
    if inner.claim_grace.is_zero() {
        return;
    }
    let period = bridge_period(inner.claim_grace);
    let mut failing = false;
    loop {
        tokio::time::sleep(period).await;
        if inner.surely_alive(tokio::time::Instant::now()) || !inner.holds_claims() {
            continue;
        }
        match tokio::time::timeout(OP_TIMEOUT, inner.bridge()).await {
            Ok(Ok(())) => {
                failing = false;
                tracing::debug!(node = %inner.node, "etcd: no live lease announced; node announced without one");
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, grace = ?inner.claim_grace, "etcd: no live lease announced and announcing without one failed: past the grace other nodes may sweep this node's claims");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!(endpoints = %inner.endpoints, grace = ?inner.claim_grace, "etcd: no live lease announced and announcing without one got no answer: past the grace other nodes may sweep this node's claims");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_writes_well_within_the_grace() {
        assert_eq!(
            bridge_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            bridge_period(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            bridge_period(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
