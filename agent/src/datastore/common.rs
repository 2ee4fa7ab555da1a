//! What the cluster backends (etcd, Kubernetes) share, written once: the [`Datastore`] impl
//! around a [`Backend`] (every operation bounded by the backend's timeout, `list` from its
//! cache when it keeps one), the background tasks that stop with the datastore, the error
//! helpers and the back-off of their retry loops.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{ClaimDelta, Datastore, DatastoreError, PrefixClaim};
use crate::backoff::Backoff;

/// First retry delay of a backend's background tasks (reconnect, watch, lease keep-alive).
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay of those tasks.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a `list` waiting for the watch's first fill looks again.
const FIRST_FILL_POLL: Duration = Duration::from_millis(20);

/// The back-off of a backend's background task: [`BACKOFF_MIN`] up to `max`, jittered.
pub fn backoff(max: Duration) -> Backoff {
    Backoff::new(BACKOFF_MIN, max)
}

/// A cluster datastore's own operations, unbounded; [`Cluster`] turns them into a
/// [`Datastore`].
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// `etcd`, `kubernetes`: status output and error messages.
    const NAME: &'static str;
    /// Longest any one datastore operation waits for the backend.
    const OP_TIMEOUT: Duration;

    /// The error of an operation that could not reach the backend (retrying may fix it).
    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError;

    /// See [`Datastore::claim`].
    fn claim(
        &self,
        claim: &PrefixClaim,
    ) -> impl Future<Output = Result<bool, DatastoreError>> + Send;

    /// See [`Datastore::release`].
    fn release(
        &self,
        prefix: IpNetwork,
        node: &str,
    ) -> impl Future<Output = Result<(), DatastoreError>> + Send;

    /// Every claim, read from the backend itself.
    fn list(&self) -> impl Future<Output = Result<Vec<PrefixClaim>, DatastoreError>> + Send;

    /// Every claim from a watch-fed cache, while it is in sync; `None`: ask the backend.
    fn cached(&self) -> Option<Vec<PrefixClaim>> {
        None
    }

    /// The watch's first fill of the cache is on its way (started, neither done nor failed
    /// yet): a `list` now waits for it (bounded) instead of sending a second full list.
    fn first_fill_pending(&self) -> bool {
        false
    }

    /// Signalled when the claims may have changed (see [`Datastore::changed`]).
    fn changed(&self) -> &Notify;

    /// Where the watch publishes what it applies to the cache (see [`Datastore::deltas`]).
    fn deltas(&self) -> Option<&tokio::sync::broadcast::Sender<ClaimDelta>> {
        None
    }
}

/// A cluster datastore: a [`Backend`] shared with its background tasks (watch, lease), which
/// stop when this is dropped (without undoing anything: like a crash, the claims live on).
pub struct Cluster<B> {
    backend: Arc<B>,
    tasks: Vec<JoinHandle<()>>,
    /// Lists sent to the backend so far (numbering [`LastList::seq`]).
    lists_started: AtomicU64,
    /// The last list's answer; held while a list is in flight, so concurrent callers wait for
    /// it instead of sending their own (see [`Cluster::list_fresh`]).
    last_list: tokio::sync::Mutex<Option<LastList>>,
}

/// What the last full list sent to the backend answered.
struct LastList {
    /// Its number: it was sent after every caller that arrived while `lists_started` was
    /// below this.
    seq: u64,
    result: Result<Vec<PrefixClaim>, DatastoreError>,
}

impl<B: Backend> Cluster<B> {
    /// Wraps `backend`, whose background tasks are `tasks`.
    pub(crate) fn new(backend: Arc<B>, tasks: Vec<JoinHandle<()>>) -> Cluster<B> {
        Cluster {
            backend,
            tasks,
            lists_started: AtomicU64::new(0),
            last_list: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: fmt::Debug> fmt::Debug for Cluster<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.backend.fmt(f)
    }
}

impl<B> Drop for Cluster<B> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The [`DatastoreError::Invalid`] of `backend`: a configuration or an answer that retrying
/// cannot fix.
pub fn invalid(backend: &'static str, msg: impl Into<String>) -> DatastoreError {
    DatastoreError::Invalid {
        backend,
        msg: msg.into(),
    }
}

/// Runs `fut` for at most [`Backend::OP_TIMEOUT`]; then it is `what` that got no answer.
pub async fn bounded<B: Backend, T>(
    backend: &B,
    what: &str,
    fut: impl Future<Output = Result<T, DatastoreError>>,
) -> Result<T, DatastoreError> {
    match tokio::time::timeout(B::OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => {
            Err(backend.unavailable(what, format_args!("no answer within {:?}", B::OP_TIMEOUT)))
        }
    }
}

impl<B: Backend> Datastore for Cluster<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        let what = format!("claiming {}", claim.prefix);
        bounded(self.backend(), &what, self.backend.claim(claim)).await
    }

    async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
        let what = format!("releasing {prefix}");
        bounded(self.backend(), &what, self.backend.release(prefix, node)).await
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        if let Some(claims) = self.backend.cached() {
            return Ok(claims);
        }
        // Start-up (issue 10): the watch's first fill is a full list already on its way; the
        // start-up claims reconcile, the first claim and the first peer round asking for
        // their own would make N agents starting together send etcd 4 N lists instead of N.
        // Wait for it, at most one operation bound, then ask.
        let deadline = tokio::time::Instant::now() + B::OP_TIMEOUT;
        while self.backend.first_fill_pending() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(FIRST_FILL_POLL).await;
            if let Some(claims) = self.backend.cached() {
                return Ok(claims);
            }
        }
        self.list_fresh().await
    }

    /// One full list in flight per agent (issue 10): the warm loop, the peer loop, the
    /// reconcile and the claim path each used to send their own when the cache was out of
    /// sync — under load every one was cut off at the operation bound and sent again, and
    /// 1000 agents kept etcd busy with lists it could no longer finish. A caller that arrives
    /// while a list is in flight waits for the next one to be *sent after it arrived* — or for
    /// one already sent after it arrived — and takes its answer (or its error). So every
    /// answer is still fresh for the caller (read after its call began: what "VPC exhausted"
    /// needs), and a burst of N callers costs at most two lists instead of N.
    async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let arrived = self.lists_started.load(Ordering::SeqCst);
        let mut last = self.last_list.lock().await;
        if let Some(l) = last.as_ref().filter(|l| l.seq > arrived) {
            return l.result.clone();
        }
        let seq = self.lists_started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = bounded(self.backend(), "listing claims", self.backend.list()).await;
        *last = Some(LastList {
            seq,
            result: result.clone(),
        });
        result
    }

    async fn changed(&self) {
        self.backend.changed().notified().await
    }

    fn deltas(&self) -> Option<tokio::sync::broadcast::Receiver<ClaimDelta>> {
        self.backend.deltas().map(|tx| tx.subscribe())
    }
}
