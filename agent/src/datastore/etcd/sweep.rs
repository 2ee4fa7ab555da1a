//! Taking back a dead node's claims: claims hang off no lease (a live node keeps them however
//! long etcd fails to renew its lease), so a node that is gone for good has them deleted on
//! purpose, by another node, once it has shown no liveness for `--etcd-claim-grace`.
//!
//! Every round (a quarter of the grace, at most a minute, jittered) each agent looks at a
//! few claim owners at random ([`suspects::pick`]; one serializable read of the node's
//! liveness keys each) and remembers those without liveness ([`Suspects`]). A suspect due
//! (absent for the whole grace) is swept by one txn per up to [`MAX_TXN_CLAIMS`] claims:
//! *if* its `alive` key is still absent, its `announced` record still at the revision first
//! seen, and each claim still the key-value just read (same `mod_revision`, this node's,
//! on no lease), delete them (the last txn also deletes the record). Anything changed: not
//! swept, looked at again. Claims on a lease (written by an agent before this model) are left
//! to their lease. Several agents may sweep one node at once: the compares let one win.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use ipnetwork::IpNetwork;

use super::suspects::{self, Seen, Suspects};
use super::EtcdBackend;
use crate::datastore::common::Backend;
use crate::datastore::DatastoreError;

/// Owners looked at per round by each agent.
const SAMPLE: usize = 2;
/// Suspects swept per round at most (each is a few txns).
const SWEEPS_PER_ROUND: usize = 4;
/// Claims deleted per txn (etcd's default limit is 128 operations per txn).
const MAX_TXN_CLAIMS: usize = 60;
/// Bounds of a round's period.
const ROUND_MIN: Duration = Duration::from_millis(200);
const ROUND_MAX: Duration = Duration::from_secs(60);

/// What one sweep of a node did.
#[derive(Debug, PartialEq, Eq)]
enum Swept {
    /// Its claims (this many) and its record are deleted.
    Done(usize),
    /// It came back, or a claim changed, between the read and the delete.
    Changed,
}

impl EtcdBackend {
    /// The claim owners in the cache and their prefixes, while the cache is in sync.
    fn cached_owners(&self) -> Option<BTreeMap<String, Vec<IpNetwork>>> {
        let c = self.cache();
        if !c.synced {
            return None;
        }
        let mut by: BTreeMap<String, Vec<IpNetwork>> = BTreeMap::new();
        for claim in c.claims.values() {
            by.entry(claim.node.clone()).or_default().push(claim.prefix);
        }
        Some(by)
    }

    /// One serializable read of `node`'s liveness keys.
    async fn look(&self, node: &str) -> Result<Seen, DatastoreError> {
        self.count("get");
        let r = self
            .client
            .clone()
            .get(
                self.node_keys(node),
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .map_err(|e| self.unavailable("reading a node's liveness", e))?;
        Ok(seen_in(
            r.kvs(),
            &self.alive_key(node),
            &self.announced_key(node),
        ))
    }

    /// Deletes `node`'s claims of `prefixes` and its record if it is still without liveness
    /// and not announced since revision `announced`.
    async fn sweep_node(
        &self,
        node: &str,
        announced: i64,
        prefixes: &[IpNetwork],
    ) -> Result<Swept, DatastoreError> {
        let (alive, record) = (self.alive_key(node), self.announced_key(node));
        let still_dead = [
            Compare::create_revision(alive.as_str(), CompareOp::Equal, 0),
            Compare::mod_revision(record.as_str(), CompareOp::Equal, announced),
        ];
        let keys: Vec<String> = prefixes.iter().map(|p| self.key(*p)).collect();
        let chunks: Vec<&[String]> = keys.chunks(MAX_TXN_CLAIMS).collect();
        let mut deleted = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            // Read the claims and the node's keys together (one snapshot).
            let mut reads: Vec<TxnOp> =
                chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            reads.push(TxnOp::get(
                self.node_keys(node),
                Some(GetOptions::new().with_prefix()),
            ));
            self.count("txn");
            let r = self
                .client
                .clone()
                .txn(Txn::new().and_then(reads))
                .await
                .map_err(|e| self.unavailable("reading a dead node's claims", e))?;
            let mut gets: Vec<Vec<KeyValue>> = r
                .op_responses()
                .into_iter()
                .filter_map(|op| match op {
                    TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
                    _ => None,
                })
                .collect();
            let Some(liveness) = gets.pop() else {
                return Ok(Swept::Changed);
            };
            if seen_in(&liveness, &alive, &record) != (Seen::Absent { announced }) {
                return Ok(Swept::Changed);
            }
            let claims: Vec<KeyValue> = gets
                .into_iter()
                .flatten()
                .filter(|kv| kv.lease() == 0 && self.decode(kv).is_some_and(|c| c.node == node))
                .collect();
            let mut when: Vec<Compare> = still_dead.to_vec();
            let mut then: Vec<TxnOp> = Vec::new();
            for kv in &claims {
                when.push(Compare::mod_revision(
                    kv.key(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                then.push(TxnOp::delete(kv.key(), None));
            }
            if i + 1 == chunks.len() {
                then.push(TxnOp::delete(record.as_str(), None));
            }
            self.count("txn");
            let r = self
                .client
                .clone()
                .txn(Txn::new().when(when).and_then(then))
                .await
                .map_err(|e| self.unavailable("deleting a dead node's claims", e))?;
            if !r.succeeded() {
                return Ok(Swept::Changed);
            }
            deleted += claims.len();
        }
        Ok(Swept::Done(deleted))
    }
}

/// What `node`'s liveness keys (`alive`, `announced`) among `kvs` say.
fn seen_in(kvs: &[KeyValue], alive: &str, announced: &str) -> Seen {
    if kvs.iter().any(|kv| kv.key() == alive.as_bytes()) {
        return Seen::Alive;
    }
    let announced = kvs
        .iter()
        .find(|kv| kv.key() == announced.as_bytes())
        .map_or(0, KeyValue::mod_revision);
    Seen::Absent { announced }
}

/// A round's period: a quarter of the grace within [`ROUND_MIN`, `ROUND_MAX`], ±25 %.
fn round_period(grace: Duration, rng: &mut fastrand::Rng) -> Duration {
    let base = (grace / 4).clamp(ROUND_MIN, ROUND_MAX);
    base.mul_f64(0.75 + rng.f64() / 2.0)
}

/// Background: sweeps the claims of nodes without liveness for the grace period (never, when
/// the grace is 0).
pub(super) async fn sweep_dead_nodes(inner: Arc<EtcdBackend>) {
    if inner.claim_grace.is_zero() {
        return;
    }
    let mut rng = fastrand::Rng::with_seed(crate::backoff::random_seed());
    let mut suspects = Suspects::new(inner.claim_grace);
    loop {
        tokio::time::sleep(round_period(inner.claim_grace, &mut rng)).await;
        let Some(owners) = inner.cached_owners() else {
            continue;
        };
        let names: BTreeSet<String> = owners.keys().cloned().collect();
        suspects.retain_owners(&names);
        let now = tokio::time::Instant::now().into_std();
        for node in suspects::pick(&names, &inner.node, &suspects, SAMPLE, &mut rng) {
            match inner.look(node).await {
                Ok(seen) => suspects.observe(node, seen, now),
                Err(e) => {
                    tracing::debug!(node, error = %e, "etcd: sweep: looking at a node failed");
                    break;
                }
            }
        }
        for (node, announced) in suspects.due(now).into_iter().take(SWEEPS_PER_ROUND) {
            let prefixes = owners.get(&node).map_or(&[][..], Vec::as_slice);
            match inner.sweep_node(&node, announced, prefixes).await {
                Ok(Swept::Done(0)) => suspects.forget(&node),
                Ok(Swept::Done(n)) => {
                    suspects.forget(&node);
                    crate::obs::metrics::get().claims_swept(n);
                    tracing::warn!(
                        node,
                        claims = n,
                        prefixes = ?prefixes,
                        grace = ?inner.claim_grace,
                        "etcd: swept the claims of a node without liveness for the grace period"
                    );
                }
                Ok(Swept::Changed) => match inner.look(&node).await {
                    Ok(seen) => suspects.observe(&node, seen, now),
                    Err(e) => {
                        tracing::debug!(node, error = %e, "etcd: sweep: looking at a node failed")
                    }
                },
                Err(e) => {
                    tracing::warn!(node, error = %e, "etcd: sweeping a dead node's claims failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_a_quarter_of_the_grace_bounded_and_jittered() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let p = round_period(Duration::from_secs(600), &mut rng);
            assert!(
                p >= ROUND_MAX.mul_f64(0.75) && p <= ROUND_MAX.mul_f64(1.25),
                "{p:?}"
            );
            let q = round_period(Duration::from_secs(2), &mut rng);
            assert!(
                q >= Duration::from_millis(375) && q <= Duration::from_millis(625),
                "{q:?}"
            );
            let r = round_period(Duration::from_millis(10), &mut rng);
            assert!(r >= ROUND_MIN.mul_f64(0.75), "{r:?}");
        }
    }
}
