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
/// Shortest wait of a retry loop after [`DatastoreError::Busy`] (issue 10): the datastore is
/// at least this far behind (the bound of the request it did not answer, or its own request
/// timeout), and anything sent sooner queues behind what it has not done yet — at N = 1000
/// agents etcd got 8.4 lease grants per agent (each that timed out in etcd granted anyway: 4
/// leases per agent) and 8 claim txns per agent, retried 0.2–2 s after each refusal.
pub const BUSY_RETRY_FLOOR: Duration = Duration::from_secs(5);
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
    /// Longest a full list of every claim waits for its answer (the watch's fill,
    /// [`Datastore::list_fresh`]), and a `list` for the watch's first fill. Longer than
    /// [`Backend::OP_TIMEOUT`] where a list is the expensive request (issue 10): a list cut off
    /// and sent again costs the backend twice, one answered a little late costs it once. A
    /// claim waits as long (a late txn is still written; see [`Cluster`]'s `claim`).
    const LIST_TIMEOUT: Duration = Self::OP_TIMEOUT;

    /// The error of an operation that could not reach the backend (retrying may fix it).
    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError;

    /// The error of an operation the backend did not answer within `limit`: as
    /// [`Backend::unavailable`], unless the backend knows better (etcd: a late answer says the
    /// server is busy, not gone; its watch stream, not this, decides the cache's sync).
    fn late(&self, what: &str, limit: Duration) -> DatastoreError {
        match self.unavailable(what, format_args!("no answer within {limit:?}")) {
            DatastoreError::Unavailable { backend, msg } => DatastoreError::Busy { backend, msg },
            e => e,
        }
    }

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
    bounded_by(backend, B::OP_TIMEOUT, what, fut).await
}

/// Runs `fut` for at most `limit`; then it is `what` that got no answer.
pub async fn bounded_by<B: Backend, T>(
    backend: &B,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, DatastoreError>>,
) -> Result<T, DatastoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(backend.late(what, limit)),
    }
}

/// A full list of the claims, bounded by [`Backend::LIST_TIMEOUT`].
pub async fn bounded_list<B: Backend, T>(
    backend: &B,
    fut: impl Future<Output = Result<T, DatastoreError>>,
) -> Result<T, DatastoreError> {
    bounded_by(backend, B::LIST_TIMEOUT, "listing claims", fut).await
}

/// Waits while the watch's first fill of `backend`'s cache is on its way, at most
/// [`Backend::LIST_TIMEOUT`] (the fill's own bound); `true` if it is done (or failed).
pub async fn first_fill_settled<B: Backend>(backend: &B) -> bool {
    let deadline = tokio::time::Instant::now() + B::LIST_TIMEOUT;
    while backend.first_fill_pending() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(FIRST_FILL_POLL).await;
    }
    true
}

impl<B: Backend> Datastore for Cluster<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        // Bounded like a list, not like the other operations (issue 10): a busy etcd (N agents
        // starting together) answers a claim's txn later than OP_TIMEOUT but writes it; cut
        // off, the claim was retried after a back-off (one more txn for that etcd) and the
        // node claimed seconds later than the answer would have come.
        let what = format!("claiming {}", claim.prefix);
        bounded_by(
            self.backend(),
            B::LIST_TIMEOUT,
            &what,
            self.backend.claim(claim),
        )
        .await
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
        // Wait for it (as long as the fill itself may take: a list of our own sent meanwhile
        // would be answered no sooner by the same busy backend), then ask.
        if first_fill_settled(self.backend()).await {
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
        let result = bounded_list(self.backend(), self.backend.list()).await;
        *last = Some(LastList {
            seq,
            result: result.clone(),
        });
        result
    }

    fn list_now(&self) -> Option<Vec<PrefixClaim>> {
        self.backend.cached()
    }

    async fn changed(&self) {
        self.backend.changed().notified().await
    }

    fn deltas(&self) -> Option<tokio::sync::broadcast::Receiver<ClaimDelta>> {
        self.backend.deltas().map(|tx| tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use super::*;

    /// A backend that answers every request after [`Slow::DELAY`]: longer than its operation
    /// bound, shorter than its list bound.
    #[derive(Debug, Default)]
    struct Slow {
        lists: AtomicU64,
        changed: Notify,
        /// The watch's first fill is on its way.
        filling: AtomicBool,
        /// The cache, once filled.
        cache: Mutex<Option<Vec<PrefixClaim>>>,
    }

    impl Slow {
        const DELAY: Duration = Duration::from_millis(300);
    }

    fn claim() -> PrefixClaim {
        PrefixClaim {
            prefix: "10.1.2.16/28".parse().expect("prefix"),
            node: "n1".into(),
            node_ip: None,
            node_ip6: None,
            claimed_at: 1,
        }
    }

    impl Backend for Slow {
        const NAME: &'static str = "slow";
        const OP_TIMEOUT: Duration = Duration::from_millis(100);
        const LIST_TIMEOUT: Duration = Duration::from_millis(800);

        fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError {
            DatastoreError::Unavailable {
                backend: Self::NAME,
                msg: format!("{what}: {e}"),
            }
        }

        async fn claim(&self, _claim: &PrefixClaim) -> Result<bool, DatastoreError> {
            tokio::time::sleep(Self::DELAY).await;
            Ok(true)
        }

        async fn release(&self, _prefix: IpNetwork, _node: &str) -> Result<(), DatastoreError> {
            tokio::time::sleep(Self::DELAY).await;
            Ok(())
        }

        async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Self::DELAY).await;
            Ok(vec![claim()])
        }

        fn cached(&self) -> Option<Vec<PrefixClaim>> {
            self.cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }

        fn first_fill_pending(&self) -> bool {
            self.filling.load(Ordering::SeqCst)
        }

        fn changed(&self) -> &Notify {
            &self.changed
        }
    }

    /// Issue 10: a full list or a claim answered later than the operation bound (a busy etcd
    /// answering N agents) is taken, not cut off and sent again; every other operation still
    /// gives up at the operation bound.
    #[tokio::test]
    async fn a_list_waits_for_the_list_bound_other_operations_for_the_operation_bound() {
        let backend = Arc::new(Slow::default());
        let ds = Cluster::new(backend.clone(), Vec::new());
        let listed = ds
            .list_fresh()
            .await
            .expect("a list answered within LIST_TIMEOUT");
        assert_eq!(listed, vec![claim()]);
        assert_eq!(backend.lists.load(Ordering::SeqCst), 1, "sent once");
        // A claim too (issue 10: a busy etcd's late answer to a txn it wrote).
        assert!(ds
            .claim(&claim())
            .await
            .expect("a claim answered within LIST_TIMEOUT"));
        let err = ds
            .release(claim().prefix, "n1")
            .await
            .expect_err("release past OP_TIMEOUT");
        // Late is busy (reachable, behind), not unavailable: retry loops wait longer.
        assert!(err.is_busy(), "{err:?}");
        assert!(err.to_string().contains("no answer within 100ms"), "{err}");
    }

    /// Issue 10: a `list` while the watch's first fill is on its way waits for it past the
    /// operation bound (up to the list bound) and answers from the filled cache, sending no
    /// list of its own.
    #[tokio::test]
    async fn a_list_at_start_waits_past_the_operation_bound_for_the_first_fill() {
        let backend = Arc::new(Slow::default());
        backend.filling.store(true, Ordering::SeqCst);
        let ds = Cluster::new(backend.clone(), Vec::new());
        let filler = {
            let backend = backend.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Slow::DELAY).await;
                *backend
                    .cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(vec![claim()]);
                backend.filling.store(false, Ordering::SeqCst);
            })
        };
        let t = tokio::time::Instant::now();
        let listed = ds.list().await.expect("list");
        assert!(t.elapsed() >= Slow::DELAY, "answered before the fill");
        assert_eq!(listed, vec![claim()]);
        assert_eq!(
            backend.lists.load(Ordering::SeqCst),
            0,
            "no list of its own"
        );
        filler.await.expect("filler");
        // A fill that never comes: the wait ends at the list bound, then it asks.
        backend.filling.store(true, Ordering::SeqCst);
        *backend
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let t = tokio::time::Instant::now();
        ds.list().await.expect("list after the wait");
        assert!(t.elapsed() >= Slow::LIST_TIMEOUT, "{:?}", t.elapsed());
        assert_eq!(backend.lists.load(Ordering::SeqCst), 1);
    }

    /// The etcd backend's list bound is longer than its operation bound (issue 10).
    #[test]
    fn etcd_lists_are_bounded_longer_than_other_operations() {
        use crate::datastore::etcd::{LIST_TIMEOUT, OP_TIMEOUT};
        assert!(LIST_TIMEOUT > OP_TIMEOUT);
    }
}
