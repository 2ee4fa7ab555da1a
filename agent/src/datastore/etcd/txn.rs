//! The claim operations as etcd transactions: claim (create-if-absent, on no lease; this
//! node's own claim counts as won, and one still on a lease — written before claims stopped
//! hanging off the lease — is moved off it), release (delete guarded by the `mod_revision`
//! read), list, and the encoding of a claim as a key and a JSON value.

use std::collections::BTreeMap;
use std::sync::MutexGuard;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use ipnetwork::IpNetwork;

use super::{claim_key, invalid, EtcdBackend, TXN_ATTEMPTS};
use crate::datastore::common::Backend;
use crate::datastore::{DatastoreError, PrefixClaim};

/// How a full list reads etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// The default: etcd first confirms (ReadIndex) that the answer includes every write
    /// committed before the request, waiting for its apply loop to get there. What a list
    /// that must be fresh needs (`list_fresh`: "VPC exhausted" only when a fresh read proves
    /// it; the adoption's list while the cache is out of sync).
    Linearizable,
    /// Answered from the member's applied state at once, at the revision of that state (which
    /// the answer carries). Enough for the watch's fill (issue 10): the watch starts at that
    /// revision + 1 and replays every event after it, so nothing between the read and the
    /// watch is missed; a view a little behind is what the cache is anyway, and a claim taken
    /// from it stays safe (the claim txn compares `create_revision == 0`). Under a cold start
    /// of N agents the linearizable read waited behind etcd's apply loop (1–2 s at N = 400).
    Serializable,
}

impl EtcdBackend {
    pub(super) fn mine(&self) -> MutexGuard<'_, BTreeMap<IpNetwork, PrefixClaim>> {
        self.mine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn key(&self, prefix: IpNetwork) -> String {
        claim_key(&self.claims_prefix, prefix)
    }

    pub(super) fn decode(&self, kv: &KeyValue) -> Option<PrefixClaim> {
        match serde_json::from_slice::<PrefixClaim>(kv.value()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "etcd: skipping an undecodable claim");
                None
            }
        }
    }

    pub(super) fn encode(&self, claim: &PrefixClaim) -> Result<Vec<u8>, DatastoreError> {
        serde_json::to_vec(claim).map_err(|e| invalid(format!("encoding claim: {e}")))
    }

    pub(super) async fn get_claim_kv(&self, key: &str) -> Result<Option<KeyValue>, DatastoreError> {
        self.count("get");
        let mut r = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| self.unavailable("reading claim", e))?;
        Ok(r.take_kvs().into_iter().next())
    }

    pub(super) async fn list_kvs(&self) -> Result<Vec<KeyValue>, DatastoreError> {
        Ok(self.list_kvs_at(Read::Linearizable).await?.0)
    }

    /// Every claim's key-value, with the revision of the read.
    pub(super) async fn list_kvs_at(
        &self,
        read: Read,
    ) -> Result<(Vec<KeyValue>, i64), DatastoreError> {
        self.count("list");
        let mut opts = GetOptions::new().with_prefix();
        if read == Read::Serializable {
            opts = opts.with_serializable();
        }
        let mut r = self
            .client
            .clone()
            .get(self.claims_prefix.as_str(), Some(opts))
            .await
            .map_err(|e| self.unavailable("listing claims", e))?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok((r.take_kvs(), revision))
    }

    /// Rewrites our claim in `kv` on no lease (with `claim` as its new value) unless it
    /// changed since it was read: a claim written by an agent from before claims stopped
    /// hanging off the lease would otherwise expire with it. `Ok(false)`: it changed.
    pub(super) async fn detach(
        &self,
        key: &str,
        kv: &KeyValue,
        claim: &PrefixClaim,
    ) -> Result<bool, DatastoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(key, self.encode(claim)?, None)]);
        self.count("txn");
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("moving a claim off its lease", e))?;
        Ok(r.succeeded())
    }

    /// Create-if-absent of `claim` (on no lease: ownership does not expire with liveness);
    /// an existing claim of this node counts as won (moved off a lease if it hangs off one).
    /// The txn also rewrites this node's `announced` record, and with `announce` puts its
    /// `alive` key on that lease (both branches; see `liveness.rs`).
    pub(super) async fn claim_key_value(
        &self,
        claim: &PrefixClaim,
        mut announce: Option<i64>,
    ) -> Result<bool, DatastoreError> {
        let key = self.key(claim.prefix);
        let value = self.encode(claim)?;
        for _ in 0..TXN_ATTEMPTS {
            let mut then = vec![TxnOp::put(key.as_str(), value.clone(), None)];
            let mut otherwise = vec![TxnOp::get(key.as_str(), None)];
            then.extend(self.announce_ops(announce));
            otherwise.extend(self.announce_ops(announce));
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then(then)
                .or_else(otherwise);
            self.count("txn");
            let r = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.unavailable(&format!("claiming {}", claim.prefix), e))?;
            self.claimed_since_start
                .store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(lease) = announce.take() {
                self.announced_on(lease);
            }
            if r.succeeded() {
                return Ok(true);
            }
            let existing = r.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            });
            let Some(kv) = existing else {
                continue; // deleted between compare and get: try again
            };
            let Some(held) = self.decode(&kv) else {
                return Ok(false); // someone's, unreadable: not ours to take
            };
            if held.node != self.node {
                return Ok(false);
            }
            if kv.lease() == 0 {
                return Ok(true);
            }
            // Ours, on a lease (an older agent's claim): keep it, on none.
            let moved = PrefixClaim {
                claimed_at: held.claimed_at,
                ..claim.clone()
            };
            if self.detach(&key, &kv, &moved).await? {
                return Ok(true);
            }
        }
        Err(self.unavailable(
            &format!("claiming {}", claim.prefix),
            "the key kept changing under us",
        ))
    }

    pub(super) async fn claim_prefix(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        if claim.node != self.node {
            return Err(invalid(format!(
                "node {} cannot claim {} for node {}",
                self.node, claim.prefix, claim.node
            )));
        }
        let _w = self.write_lock.lock().await;
        // No wait for a lease (the keep-alive task grants it): the txn rewrites this node's
        // `announced` record, which restarts every sweeper's grace, and puts `alive` on the
        // lease once one is known (see `liveness.rs`).
        let lease = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        let won = match self
            .claim_key_value(claim, self.announcement_due(lease))
            .await
        {
            Err(e) if lease != 0 && e.to_string().contains("lease not found") => {
                // Expired under us (the keep-alive task will notice too): claim without it.
                self.forget_lease(lease);
                self.claim_key_value(claim, None).await?
            }
            r => r?,
        };
        if won {
            self.mine().insert(claim.prefix, claim.clone());
        }
        Ok(won)
    }

    pub(super) async fn release_prefix(
        &self,
        prefix: IpNetwork,
        node: &str,
    ) -> Result<(), DatastoreError> {
        let _w = self.write_lock.lock().await;
        if node == self.node {
            // Forgotten first: even if etcd cannot be told now, a later re-attach (new lease)
            // must not put it back.
            self.mine().remove(&prefix);
        }
        let key = self.key(prefix);
        for _ in 0..TXN_ATTEMPTS {
            let Some(kv) = self.get_claim_kv(&key).await? else {
                return Ok(());
            };
            if self.decode(&kv).is_none_or(|c| c.node != node) {
                return Ok(());
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            self.count("txn");
            let r = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.unavailable(&format!("releasing {prefix}"), e))?;
            if r.succeeded() {
                return Ok(());
            }
        }
        Err(self.unavailable(
            &format!("releasing {prefix}"),
            "the key kept changing under us",
        ))
    }

    pub(super) async fn list_claims(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        Ok(self
            .list_kvs()
            .await?
            .iter()
            .filter_map(|kv| self.decode(kv))
            .collect())
    }
}
