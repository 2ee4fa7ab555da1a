//! etcd v3 backend: many nodes share one VPC through prefix claims in etcd.
//!
//! Layout: `<prefix>/claims/<a.b.c.d>-<len>` → JSON [`PrefixClaim`]. Every claim of a node hangs
//! off that node's lease (TTL `lease_ttl`), which a background task keeps alive; a node that
//! stops renewing (crashed, partitioned for longer than the TTL) loses its prefixes.
//!
//! - claim: one txn `create_revision == 0 → put(lease) / else get`. An existing claim of
//!   *this* node (e.g. the agent restarted and holds a new lease) is re-attached to the current
//!   lease with a txn guarded by its `mod_revision`, and counts as won.
//! - release: read, then delete guarded by the `mod_revision` read, only if still the caller's.
//! - list: answered from an in-memory cache of every claim while it is in sync (no request);
//!   `list_fresh` (and `list` while out of sync) reads etcd. The background watch keeps the
//!   cache: it lists once (revision R of the response), watches `<prefix>/claims/` from R+1
//!   and applies each PUT/DELETE. A broken stream (or a failed operation, which may mean
//!   etcd is unreachable) marks the cache out of sync until the watch is re-created, resuming
//!   from the last applied revision; if etcd compacted past it, the watch is canceled with the
//!   compact revision and the cache re-lists. A re-list every [`CACHE_RELIST`] is a safety net.
//!   So while etcd is unreachable `list` fails as before (peers keep their routes).
//! - changed: notified on every applied watch event (and after the watch is re-created).
//! - The lease ID is remembered in `<state_dir>/etcd-lease` and reused after a restart while
//!   etcd still knows it. Whenever this node starts using a lease (first one, or a new one after
//!   the old expired), the keep-alive task re-attaches every claim in etcd named after this node
//!   and re-puts (create-if-absent) those it remembers claiming that etcd lost with the lease.
//! - Degraded mode: nothing here waits on etcd at start. Each operation gives up after
//!   [`OP_TIMEOUT`] with [`DatastoreError::Unavailable`] naming the endpoints; the background
//!   tasks retry with exponential back-off ([`BACKOFF_MIN`] … [`BACKOFF_MAX`]; the lease task
//!   never waits longer than its keep-alive interval, TTL/3) and converge when etcd comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use ipnetwork::Ipv4Network;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Datastore, DatastoreError, PrefixClaim};

const BACKEND: &str = "etcd";
/// Longest any one datastore operation waits for etcd.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
use super::Backoff;
/// Back-off of the background tasks (lease, watch) while etcd is unreachable.
pub use super::{BACKOFF_MAX, BACKOFF_MIN};
/// File in the state directory that remembers the lease ID across restarts.
pub const LEASE_FILE: &str = "etcd-lease";
/// How many times a txn that lost a race on the same key is retried.
const TXN_ATTEMPTS: usize = 4;
/// The claim cache re-lists this often even when the watch looks healthy (safety net).
pub const CACHE_RELIST: Duration = Duration::from_secs(600);

/// How to reach etcd and how claims live there.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/vpcnet`; claims live under `<prefix>/claims/`.
    pub prefix: String,
    /// Claims hang off a lease with this TTL, kept alive by the agent.
    pub lease_ttl: Duration,
    /// Where the current lease ID is remembered across restarts.
    pub state_dir: std::path::PathBuf,
    pub node: String,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// The etcd datastore. Dropping it stops its background tasks without revoking the lease
/// (like a crash: the claims live on until the lease expires, or a restart re-adopts them).
pub struct EtcdDatastore {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for EtcdDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDatastore")
            .field("endpoints", &self.inner.endpoints)
            .field("claims_prefix", &self.inner.claims_prefix)
            .field("node", &self.inner.node)
            .field("lease", &self.lease_id())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    client: Client,
    node: String,
    /// For error messages: "http://a:2379, http://b:2379".
    endpoints: String,
    /// `<prefix>/claims/`.
    claims_prefix: String,
    ttl_secs: i64,
    keepalive_every: Duration,
    state_dir: PathBuf,
    /// The lease this node's claims hang off; 0 while none is known to be alive.
    lease: AtomicI64,
    /// Serialises establishing a lease (grant or reuse).
    lease_lock: tokio::sync::Mutex<()>,
    /// Wakes the keep-alive task out of its back-off (a lease was established by an operation).
    lease_kick: Notify,
    /// Serialises this node's writes (claim, release, re-attach) so a re-attach never
    /// resurrects a prefix released meanwhile.
    write_lock: tokio::sync::Mutex<()>,
    /// What this node holds, as far as it knows: re-put if etcd lost it with the lease.
    mine: Mutex<BTreeMap<Ipv4Network, PrefixClaim>>,
    /// Signalled on every watch event (and after the watch is re-created).
    changed: Notify,
    /// Every claim, as the watch has seen them.
    cache: Mutex<Cache>,
    /// Asks the watch task to re-create its watch (an operation failed: etcd may be gone).
    resync: Notify,
    /// Test hook: the watch task holds its watch down while set.
    watch_paused: AtomicBool,
    /// Full lists of the claims sent to etcd by this instance.
    list_requests: AtomicU64,
}

/// The claim cache kept by the watch task.
#[derive(Debug, Default)]
struct Cache {
    /// The watch is established and every event up to `revision` is applied: `list` may
    /// answer from `claims`.
    synced: bool,
    /// The etcd revision `claims` reflects.
    revision: i64,
    /// Key → claim (undecodable values are left out, as `list` always did).
    claims: BTreeMap<Vec<u8>, PrefixClaim>,
}

fn claim_key(claims_prefix: &str, prefix: Ipv4Network) -> String {
    format!("{claims_prefix}{}-{}", prefix.network(), prefix.prefix())
}

fn invalid(msg: impl Into<String>) -> DatastoreError {
    DatastoreError::Invalid {
        backend: BACKEND,
        msg: msg.into(),
    }
}

/// Outcome of keeping one lease alive.
enum KeepAlive {
    /// etcd says the lease is gone (expired or revoked): a new one is needed.
    Lost(i64),
    /// Connection trouble: retry the same lease after a back-off.
    Failed(String),
    /// Another code path replaced the lease.
    Replaced,
}

impl EtcdDatastore {
    /// Builds the client and starts the lease and watch tasks. Never waits for etcd: while it
    /// is unreachable operations fail fast with `Unavailable` and the tasks keep retrying.
    /// Fails only on configuration errors (no endpoints, bad URLs, unreadable TLS files).
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdDatastore, DatastoreError> {
        if cfg.endpoints.is_empty() {
            return Err(invalid("no endpoints given (--etcd-endpoints)"));
        }
        let endpoints = cfg.endpoints.join(", ");
        // HTTP/2 pings find a dead connection under the watch stream. etcd answers pings more
        // frequent than --grpc-keepalive-min-time (5 s), or sent without an open stream, with
        // GOAWAY "too_many_pings": stay well above it, and only while a stream is open (the
        // watch and the lease keep-alive always are).
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(OP_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let Some(tls) = tls_options(&cfg)? {
            if let Some(e) = cfg.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(invalid(format!(
                    "TLS files given (--etcd-ca/--etcd-cert) but endpoint {e} is plain http: use https://"
                )));
            }
            opts = opts.with_tls(tls);
        }
        // The client's channel connects lazily: this does no network I/O (no auth configured),
        // but bound it anyway so a future client version cannot hang the agent's start.
        let client = match tokio::time::timeout(
            OP_TIMEOUT,
            Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(invalid(format!("connecting to {endpoints}: {e}"))),
            Err(_) => {
                return Err(DatastoreError::Unavailable {
                    backend: BACKEND,
                    msg: format!("connecting to {endpoints}: no answer within {OP_TIMEOUT:?}"),
                })
            }
        };
        let ttl_secs = i64::try_from(cfg.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let keepalive_every = (cfg.lease_ttl / 3).max(Duration::from_millis(100));
        let inner = Arc::new(Inner {
            client,
            node: cfg.node.clone(),
            endpoints,
            claims_prefix: format!("{}/claims/", cfg.prefix.trim_end_matches('/')),
            ttl_secs,
            keepalive_every,
            state_dir: cfg.state_dir.clone(),
            lease: AtomicI64::new(0),
            lease_lock: tokio::sync::Mutex::new(()),
            lease_kick: Notify::new(),
            write_lock: tokio::sync::Mutex::new(()),
            mine: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            cache: Mutex::new(Cache::default()),
            resync: Notify::new(),
            watch_paused: AtomicBool::new(false),
            list_requests: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(keep_lease(inner.clone())),
            tokio::spawn(watch_claims(inner.clone())),
        ];
        Ok(EtcdDatastore { inner, tasks })
    }

    /// The lease this node's claims hang off, once one is established.
    pub fn lease_id(&self) -> Option<i64> {
        match self.inner.lease.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// The key a claim of `prefix` lives under.
    pub fn key_of(&self, prefix: Ipv4Network) -> String {
        claim_key(&self.inner.claims_prefix, prefix)
    }

    /// Whether `list` answers from the claim cache now (no request to etcd).
    pub fn cache_synced(&self) -> bool {
        self.inner.cache().synced
    }

    /// The etcd revision the claim cache reflects (0 before the first list).
    pub fn cache_revision(&self) -> i64 {
        self.inner.cache().revision
    }

    /// How many full lists of the claims this instance has sent to etcd (cache fills and
    /// `list_fresh`, or `list` while the cache is out of sync).
    pub fn list_requests(&self) -> u64 {
        self.inner.list_requests.load(Ordering::SeqCst)
    }

    /// Test hook: while paused the watch task holds its watch down (the cache is out of sync
    /// and `list` reads etcd); on resume it re-creates the watch from the cache's revision,
    /// as after a broken stream.
    #[doc(hidden)]
    pub fn pause_watch(&self, paused: bool) {
        self.inner.watch_paused.store(paused, Ordering::SeqCst);
        self.inner.resync.notify_one();
    }
}

fn tls_options(cfg: &EtcdConfig) -> Result<Option<etcd_client::TlsOptions>, DatastoreError> {
    if cfg.ca.is_none() && cfg.cert.is_none() && cfg.key.is_none() {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| invalid(format!("reading {}: {e}", p.display())))
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &cfg.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err(invalid("--etcd-cert and --etcd-key go together")),
    }
    Ok(Some(tls))
}

impl Inner {
    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError {
        // etcd may be unreachable: stop trusting the cache until the watch is re-created.
        self.cache().synced = false;
        self.resync.notify_one();
        DatastoreError::Unavailable {
            backend: BACKEND,
            msg: format!("{what} at {}: {e}", self.endpoints),
        }
    }

    /// Runs `fut` for at most [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, DatastoreError>>,
    ) -> Result<T, DatastoreError> {
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(what, format_args!("no answer within {OP_TIMEOUT:?}"))),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one request to etcd (metric, and this instance's list count).
    fn count(&self, op: &'static str) {
        if op == "list" {
            self.list_requests.fetch_add(1, Ordering::SeqCst);
        }
        crate::obs::metrics::get().datastore_request(op);
    }

    /// The cached claims, if the cache is in sync.
    fn cached(&self) -> Option<Vec<PrefixClaim>> {
        let c = self.cache();
        c.synced.then(|| c.claims.values().cloned().collect())
    }

    /// Replaces the cache with a full list at `revision` (still out of sync: the watch from
    /// `revision + 1` is not established yet).
    fn cache_fill(&self, kvs: &[KeyValue], revision: i64) {
        let claims = kvs
            .iter()
            .filter_map(|kv| Some((kv.key().to_vec(), self.decode(kv)?)))
            .collect();
        *self.cache() = Cache {
            synced: false,
            revision,
            claims,
        };
    }

    /// Applies watch events; returns the revision the cache now reflects.
    fn cache_apply(&self, events: &[etcd_client::Event]) -> i64 {
        let mut c = self.cache();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => match self.decode(kv) {
                    Some(claim) => {
                        c.claims.insert(kv.key().to_vec(), claim);
                    }
                    None => {
                        c.claims.remove(kv.key());
                    }
                },
                EventType::Delete => {
                    c.claims.remove(kv.key());
                }
            }
            c.revision = c.revision.max(kv.mod_revision());
        }
        c.revision
    }

    fn mine(&self) -> MutexGuard<'_, BTreeMap<Ipv4Network, PrefixClaim>> {
        self.mine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, prefix: Ipv4Network) -> String {
        claim_key(&self.claims_prefix, prefix)
    }

    fn decode(&self, kv: &KeyValue) -> Option<PrefixClaim> {
        match serde_json::from_slice::<PrefixClaim>(kv.value()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!(
                    "vpcnetd: etcd: skipping undecodable claim {}: {e}",
                    String::from_utf8_lossy(kv.key())
                );
                None
            }
        }
    }

    fn encode(&self, claim: &PrefixClaim) -> Result<Vec<u8>, DatastoreError> {
        serde_json::to_vec(claim).map_err(|e| invalid(format!("encoding claim: {e}")))
    }

    fn lease_file(&self) -> PathBuf {
        self.state_dir.join(LEASE_FILE)
    }

    fn stored_lease(&self) -> Option<i64> {
        let text = std::fs::read_to_string(self.lease_file()).ok()?;
        match text.trim().parse::<i64>() {
            Ok(id) if id != 0 => Some(id),
            _ => {
                eprintln!(
                    "vpcnetd: etcd: ignoring malformed {}",
                    self.lease_file().display()
                );
                None
            }
        }
    }

    fn store_lease(&self, id: i64) {
        let r = std::fs::create_dir_all(&self.state_dir).and_then(|()| {
            crate::node::store::write_atomic(
                &self.state_dir,
                LEASE_FILE,
                format!("{id}\n").as_bytes(),
            )
        });
        if let Err(e) = r {
            // Not fatal: a restart then grants a new lease and re-attaches the claims.
            eprintln!(
                "vpcnetd: etcd: remembering lease in {}: {e}",
                self.lease_file().display()
            );
        }
    }

    /// The live lease: the current one, else the remembered one if etcd still knows it, else
    /// a new grant.
    async fn ensure_lease(&self) -> Result<i64, DatastoreError> {
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0 {
            return Ok(id);
        }
        let _g = self.lease_lock.lock().await;
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0 {
            return Ok(id);
        }
        let mut c = self.client.clone();
        if let Some(old) = self.stored_lease() {
            self.count("lease");
            let r = c
                .lease_time_to_live(old, None)
                .await
                .map_err(|e| self.unavailable("looking up lease", e))?;
            if r.ttl() > 0 && r.granted_ttl() == self.ttl_secs {
                eprintln!("vpcnetd: etcd: reusing lease {old:x} ({} s left)", r.ttl());
                self.lease.store(old, Ordering::SeqCst);
                self.lease_kick.notify_one();
                return Ok(old);
            }
        }
        self.count("lease");
        let r = c
            .lease_grant(self.ttl_secs, None)
            .await
            .map_err(|e| self.unavailable("granting lease", e))?;
        let id = r.id();
        if id == 0 {
            return Err(self.unavailable("granting lease", "etcd returned lease 0"));
        }
        eprintln!("vpcnetd: etcd: granted lease {id:x} (TTL {} s)", r.ttl());
        self.store_lease(id);
        self.lease.store(id, Ordering::SeqCst);
        self.lease_kick.notify_one();
        Ok(id)
    }

    /// Forgets `id` (if still current) so the next user establishes a new lease.
    fn forget_lease(&self, id: i64) {
        let _ = self
            .lease
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.lease_kick.notify_one();
    }

    async fn get_claim_kv(&self, key: &str) -> Result<Option<KeyValue>, DatastoreError> {
        self.count("get");
        let mut r = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| self.unavailable("reading claim", e))?;
        Ok(r.take_kvs().into_iter().next())
    }

    async fn list_kvs(&self) -> Result<Vec<KeyValue>, DatastoreError> {
        Ok(self.list_kvs_at().await?.0)
    }

    /// Every claim's key-value, with the revision of the read.
    async fn list_kvs_at(&self) -> Result<(Vec<KeyValue>, i64), DatastoreError> {
        self.count("list");
        let mut r = self
            .client
            .clone()
            .get(
                self.claims_prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.unavailable("listing claims", e))?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok((r.take_kvs(), revision))
    }

    /// Moves our claim in `kv` onto `lease` (with `claim` as its new value) unless it changed
    /// since it was read. `Ok(false)`: it changed.
    async fn reattach(
        &self,
        key: &str,
        kv: &KeyValue,
        claim: &PrefixClaim,
        lease: i64,
    ) -> Result<bool, DatastoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(
                key,
                self.encode(claim)?,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.count("txn");
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("re-attaching claim", e))?;
        Ok(r.succeeded())
    }

    /// Create-if-absent of `claim` on `lease`; an existing claim of this node counts as won
    /// (re-attached to `lease` if it hangs off another one).
    async fn claim_on(&self, claim: &PrefixClaim, lease: i64) -> Result<bool, DatastoreError> {
        let key = self.key(claim.prefix);
        let value = self.encode(claim)?;
        for _ in 0..TXN_ATTEMPTS {
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            self.count("txn");
            let r = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.unavailable(&format!("claiming {}", claim.prefix), e))?;
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
            if kv.lease() == lease {
                return Ok(true);
            }
            // Ours, on another (older) lease: keep it, on the live lease.
            let moved = PrefixClaim {
                claimed_at: held.claimed_at,
                ..claim.clone()
            };
            if self.reattach(&key, &kv, &moved, lease).await? {
                return Ok(true);
            }
        }
        Err(self.unavailable(
            &format!("claiming {}", claim.prefix),
            "the key kept changing under us",
        ))
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        if claim.node != self.node {
            return Err(invalid(format!(
                "node {} cannot claim {} for node {}",
                self.node, claim.prefix, claim.node
            )));
        }
        let _w = self.write_lock.lock().await;
        let lease = self.ensure_lease().await?;
        let won = match self.claim_on(claim, lease).await {
            Err(e) if e.to_string().contains("lease not found") => {
                // Expired under us (the keep-alive task will notice too): take a new one.
                self.forget_lease(lease);
                let lease = self.ensure_lease().await?;
                self.claim_on(claim, lease).await?
            }
            r => r?,
        };
        if won {
            self.mine().insert(claim.prefix, claim.clone());
        }
        Ok(won)
    }

    async fn release(&self, prefix: Ipv4Network, node: &str) -> Result<(), DatastoreError> {
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

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        Ok(self
            .list_kvs()
            .await?
            .iter()
            .filter_map(|kv| self.decode(kv))
            .collect())
    }

    /// After this node starts using `lease`: every claim in etcd named after this node moves
    /// onto it, and claims this node made that etcd no longer has (deleted with an expired
    /// lease) are created again where still free.
    async fn adopt_claims(&self, lease: i64) -> Result<(), DatastoreError> {
        let _w = self.write_lock.lock().await;
        let mut seen = BTreeSet::new();
        let (mut moved, mut lost) = (0, Vec::new());
        for kv in self.list_kvs().await? {
            let Some(c) = self.decode(&kv) else { continue };
            if c.node != self.node {
                continue;
            }
            seen.insert(c.prefix);
            if kv.lease() != lease {
                let key = self.key(c.prefix);
                if self.reattach(&key, &kv, &c, lease).await? {
                    moved += 1;
                } else {
                    eprintln!(
                        "vpcnetd: etcd: claim {} changed while being re-attached",
                        c.prefix
                    );
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
            if self.claim_on(&c, lease).await? {
                moved += 1;
            } else {
                lost.push(c.prefix);
                self.mine().remove(&c.prefix);
            }
        }
        if moved > 0 {
            eprintln!(
                "vpcnetd: etcd: {moved} claim(s) of {} now on lease {lease:x}",
                self.node
            );
        }
        for p in lost {
            eprintln!(
                "vpcnetd: etcd: CONFLICT: prefix {p} was claimed by another node while lease of {} was lost",
                self.node
            );
        }
        Ok(())
    }

    /// Keeps `lease` alive until it is lost, replaced or the connection fails.
    async fn keep_alive(&self, lease: i64, adopted: &mut i64, backoff: &mut Backoff) -> KeepAlive {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) =
            match tokio::time::timeout(OP_TIMEOUT, client.lease_keep_alive(lease)).await {
                Ok(Ok(ks)) => ks,
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
                        "keeping lease {lease:x} alive: no answer within {OP_TIMEOUT:?}"
                    ))
                }
            };
        backoff.reset();
        loop {
            if self.lease.load(Ordering::SeqCst) != lease {
                return KeepAlive::Replaced;
            }
            if *adopted != lease {
                match tokio::time::timeout(OP_TIMEOUT * 2, self.adopt_claims(lease)).await {
                    Ok(Ok(())) => *adopted = lease,
                    Ok(Err(e)) => eprintln!("vpcnetd: etcd: re-attaching claims: {e}"),
                    Err(_) => eprintln!(
                        "vpcnetd: etcd: re-attaching claims at {}: no answer within {:?}",
                        self.endpoints,
                        OP_TIMEOUT * 2
                    ),
                }
            }
            tokio::time::sleep(self.keepalive_every).await;
            self.count("lease");
            if let Err(e) = keeper.keep_alive().await {
                return KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}"));
            }
            match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return KeepAlive::Lost(lease),
                Ok(Ok(None)) => {
                    return KeepAlive::Failed(format!("lease {lease:x}: keep-alive stream closed"))
                }
                Ok(Err(e)) => {
                    return KeepAlive::Failed(format!("keeping lease {lease:x} alive: {e}"))
                }
                Err(_) => {
                    return KeepAlive::Failed(format!(
                        "keeping lease {lease:x} alive: no answer within {OP_TIMEOUT:?}"
                    ))
                }
            }
        }
    }
}

/// Background: establish the lease, keep it alive, replace it when lost, re-attach claims.
async fn keep_lease(inner: Arc<Inner>) {
    // Never slower than the keep-alive itself: after a short outage (an etcd restart renews
    // every lease for one TTL) only a keep-alive within that TTL saves the lease; a 10 s
    // back-off would let it lapse and take the claims with it. A refused connection is cheap.
    let mut backoff = Backoff::new(BACKOFF_MAX.min(inner.keepalive_every));
    let mut adopted = 0i64;
    let mut down: Option<String> = None;
    loop {
        let outcome = match inner
            .bounded("establishing lease", inner.ensure_lease())
            .await
        {
            Ok(lease) => inner.keep_alive(lease, &mut adopted, &mut backoff).await,
            Err(e) => KeepAlive::Failed(e.to_string()),
        };
        match outcome {
            KeepAlive::Replaced => continue,
            KeepAlive::Lost(lease) => {
                eprintln!(
                    "vpcnetd: etcd: lease {lease:x} of node {} expired; taking a new one",
                    inner.node
                );
                inner.forget_lease(lease);
                continue;
            }
            KeepAlive::Failed(msg) => {
                if down.as_deref() != Some(msg.as_str()) {
                    eprintln!("vpcnetd: etcd: {msg} (retrying with back-off)");
                    down = Some(msg);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = inner.lease_kick.notified() => {}
        }
    }
}

/// Background: keeps the claim cache — list, then a watch from the list's revision, re-created
/// with back-off (resuming from the last applied revision; re-listing when etcd compacted past
/// it, and every [`CACHE_RELIST`]). Every applied event (and every re-creation, which may have
/// missed some) signals `changed`.
async fn watch_claims(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(BACKOFF_MAX);
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
            match inner.bounded("listing claims", inner.list_kvs_at()).await {
                Ok((kvs, rev)) => {
                    inner.cache_fill(&kvs, rev);
                    revision = rev;
                    relist_at = tokio::time::Instant::now() + CACHE_RELIST;
                }
                Err(e) => {
                    let msg = format!("filling the claim cache: {e}");
                    if last_err.as_deref() != Some(msg.as_str()) {
                        eprintln!("vpcnetd: etcd: {msg} (retrying with back-off)");
                        last_err = Some(msg);
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        inner.count("watch");
        let err = match tokio::time::timeout(
            OP_TIMEOUT,
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
            Err(_) => Some(format!("no answer within {OP_TIMEOUT:?}")),
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
                                eprintln!(
                                    "vpcnetd: etcd: claims compacted at revision {} past the \
                                     cache's {revision}: re-listing",
                                    r.compact_revision()
                                );
                                revision = 0;
                                break None;
                            }
                            break Some(format!("watch canceled: {}", r.cancel_reason()));
                        }
                        if r.created() {
                            backoff.reset();
                            if last_err.take().is_some() {
                                eprintln!("vpcnetd: etcd: watching claims again");
                            }
                            inner.cache().synced = true;
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
        let msg = format!("watching claims at {}: {err}", inner.endpoints);
        if last_err.as_deref() != Some(msg.as_str()) {
            eprintln!("vpcnetd: etcd: {msg} (retrying with back-off)");
            last_err = Some(msg);
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

impl Datastore for EtcdDatastore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        let what = format!("claiming {}", claim.prefix);
        self.inner.bounded(&what, self.inner.claim(claim)).await
    }

    async fn release(&self, prefix: Ipv4Network, node: &str) -> Result<(), DatastoreError> {
        let what = format!("releasing {prefix}");
        self.inner
            .bounded(&what, self.inner.release(prefix, node))
            .await
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        if let Some(claims) = self.inner.cached() {
            return Ok(claims);
        }
        self.list_fresh().await
    }

    async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        self.inner
            .bounded("listing claims", self.inner.list())
            .await
    }

    async fn changed(&self) {
        self.inner.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_are_address_dash_length() {
        let p: Ipv4Network = "10.1.2.16/28".parse().expect("prefix");
        assert_eq!(
            claim_key("/vpcnet/claims/", p),
            "/vpcnet/claims/10.1.2.16-28"
        );
        // Host bits never leak into the key.
        let q: Ipv4Network = "10.1.2.17/28".parse().expect("prefix");
        assert_eq!(
            claim_key("/vpcnet/claims/", q),
            "/vpcnet/claims/10.1.2.16-28"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let seq: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
        let mut full = Backoff::new(BACKOFF_MAX);
        let last = (0..20).map(|_| full.next_delay()).last();
        assert_eq!(last, Some(BACKOFF_MAX));
    }

    #[test]
    fn claims_are_camel_case_json() {
        let c = PrefixClaim {
            prefix: "10.1.2.16/28".parse().expect("prefix"),
            node: "n1".into(),
            node_ip: Some("192.0.2.7".parse().expect("ip")),
            claimed_at: 5,
        };
        let v: serde_json::Value = serde_json::to_value(&c).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"prefix": "10.1.2.16/28", "node": "n1", "nodeIp": "192.0.2.7", "claimedAt": 5})
        );
    }
}
