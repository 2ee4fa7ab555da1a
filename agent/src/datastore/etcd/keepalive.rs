//! Keeping the lease alive: the background task that establishes the lease, renews it every
//! TTL/3, replaces it when etcd lost it, and then announces the node on the new lease and
//! checks its claims (moving off a lease those an older agent left on one, re-creating those
//! swept meanwhile, where still free).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{EtcdBackend, Hex, BACKOFF_MAX, GRANT_TIMEOUT, LIST_TIMEOUT, OP_TIMEOUT};
use crate::backoff::Backoff;
use crate::datastore::common;
use crate::datastore::{DatastoreError, PrefixClaim};

/// Longest the adoption of our claims onto a lease takes (the wait for the watch's first
/// fill, or a list, the announcement and the txns on our claims); it is retried after the
/// next keep-alive.
const ADOPT_TIMEOUT: std::time::Duration = LIST_TIMEOUT;

/// Outcome of keeping one lease alive.
enum KeepAlive {
    /// etcd says the lease is gone (expired or revoked): a new one is needed.
    Lost(i64),
    /// Connection trouble: retry the same lease after a back-off.
    Failed(String),
    /// No lease could be established because etcd is behind (`DatastoreError::Busy`): a grant
    /// it timed out on may still be granted, and one sent again soon is one more lease for
    /// it to grant and later revoke (issue 10: 4 030 leases for 1 000 agents). Retried no
    /// sooner than `BUSY_RETRY_FLOOR`, growing to `GRANT_TIMEOUT`; there is no lease to save
    /// meanwhile (claims do not wait for one).
    Busy(String),
    /// Another code path replaced the lease.
    Replaced,
}

impl EtcdBackend {
    /// After this node starts using `lease`: the node is announced on it, every claim in etcd
    /// named after this node that still hangs off a lease (an older agent's) is moved off it,
    /// and claims this node made that etcd no longer has (swept while this node showed no
    /// liveness for the grace period, or deleted by hand) are created again where still free.
    async fn adopt_claims(&self, lease: i64) -> Result<(), DatastoreError> {
        self.announce(lease).await?;
        // From the claim cache (see the module docs: why it is fresh enough), once the watch's
        // first fill (if on its way) is in — waited for before taking the write lock, so the
        // claim path is not held up meanwhile; a list of our own only while the cache is out
        // of sync.
        let settled = common::first_fill_settled(self).await;
        let _w = self.write_lock.lock().await;
        let mut seen = BTreeSet::new();
        let (mut moved, mut lost) = (0, Vec::new());
        let cached = if settled { self.cached_own() } else { None };
        let kvs = match cached {
            Some(kvs) => kvs,
            None => self.list_kvs().await?,
        };
        for kv in kvs {
            let Some(c) = self.decode(&kv) else { continue };
            if c.node != self.node {
                continue;
            }
            seen.insert(c.prefix);
            if kv.lease() != 0 {
                let key = self.key(c.prefix);
                if self.detach(&key, &kv, &c).await? {
                    moved += 1;
                } else {
                    tracing::info!(prefix = %c.prefix, "etcd: claim changed while being moved off its lease");
                }
            }
            self.mine().insert(c.prefix, c);
        }
        let missing: Vec<PrefixClaim> = self
            .mine()
            .values()
            .filter(|c| !seen.contains(&c.prefix))
            .cloned()
            .collect();
        for c in missing {
            if self.claim_key_value(&c, None).await? {
                moved += 1;
            } else {
                lost.push(c.prefix);
                self.mine().remove(&c.prefix);
            }
        }
        if moved > 0 {
            tracing::info!(node = %self.node, lease = %Hex(lease), claims = moved, "etcd: claims moved off a lease or re-created");
        }
        for p in lost {
            tracing::error!(
                node = %self.node,
                prefix = %p,
                "etcd: CONFLICT: prefix was claimed by another node after this node's claims were swept"
            );
        }
        Ok(())
    }

    /// Whether announcing a lease just granted (and checking our claims) can wait for its first
    /// renewal, TTL/3 later (issue 10: in a cold start of N agents that is N txns fewer while
    /// etcd applies the N grants and claims). It can when nothing here needs it sooner: this
    /// node holds no claim in etcd (nothing for a sweep to take; a claim made meanwhile rewrites
    /// `announced` itself), or a claim txn of this process has rewritten `announced` already —
    /// and no claim of ours hangs off a lease (an older agent's, which must be moved off before
    /// that lease lapses). Not while the claim cache cannot tell.
    async fn announcement_can_wait(&self) -> bool {
        if !common::first_fill_settled(self).await {
            return false;
        }
        let Some(own) = self.cached_own() else {
            return false;
        };
        own.iter().all(|kv| kv.lease() == 0)
            && (own.is_empty() || self.claimed_since_start.load(Ordering::SeqCst))
    }

    /// Announces the node on `lease` and checks our claims (`adopt_claims`) unless that is done
    /// (`adopted`); a failure is retried at the next keep-alive.
    async fn adopt(&self, lease: i64, adopted: &mut i64) {
        if *adopted == lease {
            return;
        }
        match tokio::time::timeout(ADOPT_TIMEOUT, self.adopt_claims(lease)).await {
            Ok(Ok(())) => *adopted = lease,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "etcd: announcing the node / checking its claims failed")
            }
            Err(_) => tracing::warn!(
                endpoints = %self.endpoints,
                timeout = ?ADOPT_TIMEOUT,
                "etcd: announcing the node / checking its claims: no answer"
            ),
        }
    }

    /// Keeps `lease` alive until it is lost, replaced or the connection fails.
    async fn keep_alive(&self, lease: i64, adopted: &mut i64, backoff: &mut Backoff) -> KeepAlive {
        // The request is sent: etcd renews the lease when it reads it, however late its
        // answer. A busy etcd (N agents starting together, issue 10) answering after
        // OP_TIMEOUT is not a failure; giving up on it was (a new stream and a TimeToLive
        // per agent, i.e. more work for the etcd that was already late: a retry storm).
        // So wait up to the next keep-alive (TTL/3), never less than OP_TIMEOUT — for the
        // first answer on a new stream as for every later one.
        let answer_within = OP_TIMEOUT.max(self.keepalive_every);
        // A lease just granted has its whole TTL: no renewal before TTL/3 (issue 10). Opening
        // the keep-alive stream sends one at once, so it waits until then; in a cold start of
        // N agents those N renewals came while etcd applied the N grants and claims, and etcd
        // (3.4+) refuses a renewal when its apply loop is 1 s behind ("waiting for the applied
        // index took too long"): each refusal closed the stream and was retried. The claims'
        // adoption does not need the stream: it is done first — unless it can wait too.
        if let Some(due) = self.take_first_renew(lease) {
            backoff.reset();
            if !self.announcement_can_wait().await {
                self.adopt(lease, adopted).await;
            }
            tokio::time::sleep_until(due).await;
            if self.lease.load(Ordering::SeqCst) != lease {
                return KeepAlive::Replaced;
            }
        }
        let mut client = self.client.clone();
        let (mut keeper, mut stream) =
            match tokio::time::timeout(answer_within, client.lease_keep_alive(lease)).await {
                Ok(Ok(ks)) => ks,
                Ok(Err(e)) if opening_failed(&e) == Opening::LeaseGone => {
                    return KeepAlive::Lost(lease)
                }
                Ok(Err(e)) if opening_failed(&e) == Opening::Busy => {
                    return KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}"))
                }
                Ok(Err(e)) => {
                    // Gone, or could not ask? TimeToLive tells.
                    return match tokio::time::timeout(
                        OP_TIMEOUT,
                        client.lease_time_to_live(lease, None),
                    )
                    .await
                    {
                        Ok(Ok(r)) if r.ttl() <= 0 => KeepAlive::Lost(lease),
                        _ => KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}")),
                    };
                }
                Err(_) => {
                    return KeepAlive::Failed(format!(
                        "keeping lease {lease:x} alive: no answer within {answer_within:?}"
                    ))
                }
            };
        backoff.reset();
        loop {
            if self.lease.load(Ordering::SeqCst) != lease {
                return KeepAlive::Replaced;
            }
            self.adopt(lease, adopted).await;
            tokio::time::sleep(self.keepalive_every).await;
            self.count("lease");
            let sent = tokio::time::Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                return KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}"));
            }
            match tokio::time::timeout(answer_within, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => self.held_until(lease, sent, r.ttl()),
                Ok(Ok(Some(_))) => return KeepAlive::Lost(lease),
                Ok(Ok(None)) => {
                    return KeepAlive::Failed(format!("lease {lease:x}: keep-alive stream closed"))
                }
                Ok(Err(e)) => {
                    return KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}"))
                }
                Err(_) => {
                    return KeepAlive::Failed(format!(
                        "keeping lease {lease:x} alive: no answer within {answer_within:?}"
                    ))
                }
            }
        }
    }
}

/// What a failed opening of the keep-alive stream says about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// etcd answered the first renewal with TTL 0: the lease is gone (no need to ask again).
    LeaseGone,
    /// gRPC UNAVAILABLE: etcd (or the way to it) cannot serve now — e.g. "waiting for the
    /// applied index took too long" under load (issue 10). Says nothing about the lease, and
    /// a TimeToLive sent to ask would be refused the same way: retry after the back-off.
    Busy,
    /// Anything else: ask TimeToLive whether the lease is gone.
    Ask,
}

/// gRPC status code UNAVAILABLE (the gRPC spec's code 14).
const GRPC_UNAVAILABLE: i32 = 14;

fn opening_failed(e: &etcd_client::Error) -> Opening {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("lease not found") => {
            Opening::LeaseGone
        }
        etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == GRPC_UNAVAILABLE => {
            Opening::Busy
        }
        _ => Opening::Ask,
    }
}

/// Background: establish the lease, keep it alive, replace it when lost, announce the node on
/// it and check its claims.
pub(super) async fn keep_lease(inner: Arc<EtcdBackend>) {
    // Never slower than the keep-alive itself: after a short outage (an etcd restart renews
    // every lease for one TTL) only a keep-alive within that TTL saves the lease; a 10 s
    // back-off would let it lapse and take the claims with it. A refused connection is cheap.
    let mut backoff = common::backoff(BACKOFF_MAX.min(inner.keepalive_every));
    let mut grant_backoff = common::backoff(GRANT_TIMEOUT);
    let mut adopted = 0i64;
    let mut down: Option<String> = None;
    loop {
        // A grant (or the look-up of the remembered lease) waits up to GRANT_TIMEOUT: etcd
        // answering it late has granted it anyway; cut off sooner, it was a lease granted for
        // nothing and a second grant sent to the busy etcd (issue 10, N = 1000). This task is
        // the only one that grants: a claim never waits for a lease.
        let outcome = match common::bounded_by(
            &*inner,
            GRANT_TIMEOUT,
            "establishing lease",
            inner.ensure_lease(),
        )
        .await
        {
            Ok(lease) => {
                grant_backoff.reset();
                inner.keep_alive(lease, &mut adopted, &mut backoff).await
            }
            Err(e) if e.is_busy() => KeepAlive::Busy(e.to_string()),
            Err(e) => KeepAlive::Failed(e.to_string()),
        };
        let (msg, delay) = match outcome {
            KeepAlive::Replaced => continue,
            KeepAlive::Lost(lease) => {
                tracing::warn!(node = %inner.node, lease = %Hex(lease), "etcd: lease expired; taking a new one");
                inner.forget_lease(lease);
                continue;
            }
            KeepAlive::Failed(msg) => (msg, backoff.next_delay()),
            KeepAlive::Busy(msg) => (
                msg,
                grant_backoff.next_delay_at_least(common::BUSY_RETRY_FLOOR),
            ),
        };
        if down.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, retry_in = ?delay, "etcd: lease keep-alive failed; retrying with back-off");
            down = Some(msg);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = inner.lease_kick.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: a refusal of a busy etcd is retried without a TimeToLive (which it would refuse
    /// the same way); "lease not found" is a lost lease at once; anything else is asked about.
    #[test]
    fn what_a_failed_keep_alive_opening_says() {
        let gone = etcd_client::Error::LeaseKeepAliveError("lease not found".into());
        assert_eq!(opening_failed(&gone), Opening::LeaseGone);
        // tonic maps a refused connection to UNAVAILABLE, as etcd's "request timed out,
        // waiting for the applied index took too long" is.
        let busy = etcd_client::Error::GRpcStatus(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        );
        assert_eq!(opening_failed(&busy), Opening::Busy);
        let other = etcd_client::Error::GRpcStatus(
            std::io::Error::from(std::io::ErrorKind::PermissionDenied).into(),
        );
        assert_eq!(opening_failed(&other), Opening::Ask);
        let closed = etcd_client::Error::WatchError("failed to create lease keeper".into());
        assert_eq!(opening_failed(&closed), Opening::Ask);
    }
}
