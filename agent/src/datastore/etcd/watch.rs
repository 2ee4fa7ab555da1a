//! The claim cache and the watch that keeps it: `list` answers from it while it is in sync
//! (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};

use super::txn::Read;
use super::{EtcdBackend, BACKOFF_MAX, CACHE_RELIST, LIST_TIMEOUT};
use crate::datastore::common;
use crate::datastore::{ClaimDelta, PrefixClaim};

/// The claim cache kept by the watch task.
#[derive(Debug, Default)]
pub(super) struct Cache {
    /// The watch is established and every event up to `revision` is applied: `list` may
    /// answer from `claims`.
    pub(super) synced: bool,
    /// The etcd revision `claims` reflects.
    pub(super) revision: i64,
    /// Key → claim (undecodable values are left out, as `list` always did).
    pub(super) claims: BTreeMap<Vec<u8>, PrefixClaim>,
    /// Key → key-value (lease, `mod_revision`) of the claims naming this node: what the
    /// lease's adoption needs, without a list of its own.
    pub(super) own: BTreeMap<Vec<u8>, KeyValue>,
}

impl EtcdBackend {
    pub(super) fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached claims, if the cache is in sync.
    pub(super) fn cached_claims(&self) -> Option<Vec<PrefixClaim>> {
        let c = self.cache();
        c.synced.then(|| c.claims.values().cloned().collect())
    }

    /// The key-values of this node's claims, if the cache is in sync.
    pub(super) fn cached_own(&self) -> Option<Vec<KeyValue>> {
        let c = self.cache();
        c.synced.then(|| c.own.values().cloned().collect())
    }

    /// Replaces the cache with a full list at `revision` (still out of sync: the watch from
    /// `revision + 1` is not established yet).
    pub(super) fn cache_fill(&self, kvs: &[KeyValue], revision: i64) {
        let mut own = BTreeMap::new();
        let claims = kvs
            .iter()
            .filter_map(|kv| {
                let claim = self.decode(kv)?;
                if claim.node == self.node {
                    own.insert(kv.key().to_vec(), kv.clone());
                }
                Some((kv.key().to_vec(), claim))
            })
            .collect();
        *self.cache() = Cache {
            synced: false,
            revision,
            claims,
            own,
        };
        // No subscriber is not an error.
        let _ = self.deltas.send(ClaimDelta::Resync);
    }

    /// Applies watch events and publishes each change as a [`ClaimDelta`] (under the cache
    /// lock, so subscribers see them in the cache's order); returns the revision the cache
    /// now reflects.
    pub(super) fn cache_apply(&self, events: &[etcd_client::Event]) -> i64 {
        let mut c = self.cache();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let put = match ev.event_type() {
                EventType::Put => Some(self.decode(kv)),
                EventType::Delete => None,
            };
            if put
                .as_ref()
                .is_some_and(|c| c.as_ref().is_some_and(|c| c.node == self.node))
            {
                c.own.insert(kv.key().to_vec(), kv.clone());
            } else {
                c.own.remove(kv.key());
            }
            // A PUT of a claim; a DELETE, or a PUT of an undecodable value, removes it.
            let delta = match put {
                Some(Some(claim)) => {
                    let d = ClaimDelta::Put(claim.clone());
                    (c.claims.insert(kv.key().to_vec(), claim.clone()) != Some(claim)).then_some(d)
                }
                Some(None) | None => c.claims.remove(kv.key()).map(ClaimDelta::Removed),
            };
            if let Some(d) = delta {
                let _ = self.deltas.send(d);
            }
            c.revision = c.revision.max(kv.mod_revision());
        }
        c.revision
    }
}

/// Background: keeps the claim cache — list, then a watch from the list's revision, re-created
/// with back-off (resuming from the last applied revision; re-listing when etcd compacted past
/// it, and every [`CACHE_RELIST`]). Every applied event (and every re-creation, which may have
/// missed some) signals `changed`.
pub(super) async fn watch_claims(inner: Arc<EtcdBackend>) {
    let mut backoff = common::backoff(BACKOFF_MAX);
    let mut established_before = false;
    let mut last_err: Option<String> = None;
    // The revision the cache reflects; 0: (re-)list first.
    let mut revision = 0i64;
    let mut relist_at = tokio::time::Instant::now() + CACHE_RELIST;
    loop {
        while inner.watch_paused.load(Ordering::SeqCst) {
            inner.cache().synced = false;
            tokio::select! {
                _ = inner.resync.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if revision == 0 || tokio::time::Instant::now() >= relist_at {
            match common::bounded_list(&*inner, inner.list_kvs_at(Read::Serializable)).await {
                Ok((kvs, rev)) => {
                    inner.cache_fill(&kvs, rev);
                    revision = rev;
                    relist_at = tokio::time::Instant::now() + CACHE_RELIST;
                }
                Err(e) => {
                    inner.first_fill.store(false, Ordering::SeqCst);
                    let msg = format!("filling the claim cache: {e}");
                    let delay = backoff.next_delay();
                    if last_err.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, retry_in = ?delay, "etcd: watch failed; retrying with back-off");
                        last_err = Some(msg);
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        inner.count("watch");
        // Bounded like a list (issue 10): a busy etcd (N = 1000 agents) sets the watch up
        // however late it answers; cut off at OP_TIMEOUT (483 times in one 1 000-node cold
        // start) it was set up again, and meanwhile the cache was out of sync, so every `list`
        // of this agent went to etcd itself.
        let err = match tokio::time::timeout(
            LIST_TIMEOUT,
            inner.client.clone().watch(
                inner.claims_prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision.saturating_add(1)),
                ),
            ),
        )
        .await
        {
            Err(_) => Some(format!("no answer within {LIST_TIMEOUT:?}")),
            Ok(Err(e)) => Some(e.to_string()),
            Ok(Ok(mut stream)) => loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = inner.resync.notified() => break None,
                    _ = tokio::time::sleep_until(relist_at) => break None,
                };
                match msg {
                    Ok(Some(r)) => {
                        if r.canceled() {
                            if r.compact_revision() > 0 {
                                tracing::info!(
                                    compact_revision = r.compact_revision(),
                                    cache_revision = revision,
                                    "etcd: claims compacted past the cache's revision: re-listing"
                                );
                                revision = 0;
                                break None;
                            }
                            break Some(format!("watch canceled: {}", r.cancel_reason()));
                        }
                        if r.created() {
                            backoff.reset();
                            if last_err.take().is_some() {
                                tracing::info!("etcd: watching claims again");
                            }
                            inner.cache().synced = true;
                            inner.first_fill.store(false, Ordering::SeqCst);
                            crate::obs::process::startup_phase("watch synced");
                            if established_before {
                                inner.changed.notify_one();
                            }
                            established_before = true;
                        }
                        if !r.events().is_empty() {
                            revision = inner.cache_apply(r.events());
                            inner.changed.notify_one();
                        }
                    }
                    Ok(None) => break Some("watch stream closed".to_string()),
                    Err(e) => break Some(e.to_string()),
                }
            },
        };
        inner.cache().synced = false;
        let Some(err) = err else { continue };
        inner.first_fill.store(false, Ordering::SeqCst);
        let msg = format!("watching claims at {}: {err}", inner.endpoints);
        let delay = backoff.next_delay();
        if last_err.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, retry_in = ?delay, "etcd: watch failed; retrying with back-off");
            last_err = Some(msg);
        }
        tokio::time::sleep(delay).await;
    }
}
