//! What the cluster backends (etcd, Kubernetes) share, written once: the [`Datastore`] impl
//! around a [`Backend`] (every operation bounded by the backend's timeout, `list` from its
//! cache when it keeps one), the background tasks that stop with the datastore, the error
//! helpers and the back-off of their retry loops.

use std::fmt;
use std::future::Future;
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
}

impl<B: Backend> Cluster<B> {
    /// Wraps `backend`, whose background tasks are `tasks`.
    pub(crate) fn new(backend: Arc<B>, tasks: Vec<JoinHandle<()>>) -> Cluster<B> {
        Cluster { backend, tasks }
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

    async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        bounded(self.backend(), "listing claims", self.backend.list()).await
    }

    async fn changed(&self) {
        self.backend.changed().notified().await
    }

    fn deltas(&self) -> Option<tokio::sync::broadcast::Receiver<ClaimDelta>> {
        self.backend.deltas().map(|tx| tx.subscribe())
    }
}
