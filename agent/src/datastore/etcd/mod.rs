//! etcd v3 backend: many nodes share one VPC through prefix claims in etcd.
//!
//! Layout: `<prefix>/claims/<a.b.c.d>-<len>` → JSON [`PrefixClaim`], on **no lease**: ownership
//! does not expire with liveness. Liveness is apart (`liveness.rs`): `<prefix>/nodes/<node>/alive`
//! on the node's lease (TTL `lease_ttl`, kept alive by a background task) and
//! `<prefix>/nodes/<node>/announced`, rewritten whenever the node starts using a lease. A node
//! that shows no liveness for `claim_grace` (crashed, partitioned, deleted) has its claims
//! deleted by another node's sweep (`sweep.rs`: one txn that compares that it is still without
//! liveness and not announced since first seen so). Until issue 10's fix the claims hung off the
//! lease, so a live node whose renewals etcd refused for a TTL (an overloaded etcd refuses them
//! while its apply loop is over 1 s behind) lost them while its pods kept their addresses,
//! and another node could claim them: a path to a duplicate address.
//!
//! - claim: one txn `create_revision == 0 → put / else get`, which also rewrites this node's
//!   `announced` record (and puts `alive` on the lease once one is known): a claim never waits
//!   for the lease, which only the keep-alive task grants. An existing claim of *this* node (e.g. the agent restarted) counts as
//!   won; one still on a lease (written by an agent from before this model) is moved off it with
//!   a txn guarded by its `mod_revision`.
//! - release: read, then delete guarded by the `mod_revision` read, only if still the caller's.
//! - list: answered from an in-memory cache of every claim while it is in sync (no request);
//!   `list_fresh` (and `list` while out of sync) reads etcd. The background watch keeps the
//!   cache: it lists once (revision R of the response), watches `<prefix>/claims/` from R+1
//!   and applies each PUT/DELETE. That list is *serializable* (answered from etcd's applied
//!   state, no ReadIndex round, no wait for the apply loop — issue 10: 1–2 s at N = 400
//!   agents starting together): the watch replays every event after R, so the cache misses
//!   nothing, and a claim picked from a view a little behind stays safe (its txn compares).
//!   Every other full list (`list_fresh`, the adoption's own list) stays linearizable: "VPC
//!   exhausted" needs a read that includes every claim made before it. A broken stream (or a failed operation, which may mean
//!   etcd is unreachable) marks the cache out of sync until the watch is re-created, resuming
//!   from the last applied revision; if etcd compacted past it, the watch is canceled with the
//!   compact revision and the cache re-lists. A re-list every [`CACHE_RELIST`] is a safety net.
//!   So while etcd is unreachable `list` fails as before (peers keep their routes).
//! - changed: notified on every applied watch event (and after the watch is re-created).
//! - deltas: every PUT/DELETE the watch applies to the cache is also published as a
//!   [`ClaimDelta`] (a DELETE carries the claim the cache held), and every re-list as
//!   [`ClaimDelta::Resync`]: the peer routes follow the deltas one route at a time.
//! - The lease ID is remembered in `<state_dir>/etcd-lease` and reused after a restart while
//!   etcd still knows it. Whenever this node starts using a lease (first one, or a new one after
//!   the old expired), the keep-alive task announces the node on it, moves off a lease every
//!   claim in etcd named after this node that still hangs off one, and re-puts
//!   (create-if-absent) those it remembers claiming that etcd no longer has (swept).
//!   It finds them in the claim cache (which also keeps each of *our* claims' key-value, with
//!   its lease and `mod_revision`), waiting for the watch's first fill if that is on its way;
//!   only while the cache is out of sync does it list etcd itself (issue 10: one list per
//!   agent start instead of two). The cache is fresh enough for this: only this node writes
//!   claims named after it (under its write lock), every move off a lease is
//!   guarded by the `mod_revision` it read (a claim deleted meanwhile, with an expired lease,
//!   fails the guard and is left alone), and a claim of ours the cache does not show yet is
//!   in `mine` and goes through the create-if-absent claim, which counts an existing claim of
//!   ours as won.
//! - Every full list (fill, re-fill, `list_fresh`) waits up to [`LIST_TIMEOUT`], longer than
//!   the [`OP_TIMEOUT`] of every other operation; so does a claim's txn, and the keep-alive
//!   task's grant (or look-up) of the lease up to [`GRANT_TIMEOUT`] — requests etcd carries
//!   out however late it answers, so one cut off was done twice.
//! - Sweep (`sweep.rs`, pure bookkeeping in `suspects.rs`): each round (grace/4, at most a
//!   minute, jittered) an agent looks at two claim owners at random (a serializable read of
//!   their liveness keys) and sweeps those without liveness, and with the same `announced`
//!   revision, for the whole grace; claims still on a lease are left to it.
//! - Keep-alive (`keepalive.rs`): a renewal every TTL/3 on one stream, each answer awaited up
//!   to TTL/3 (never less than [`OP_TIMEOUT`]), the stream's first answer too. A lease just
//!   granted is first renewed TTL/3 after the grant, not at once (opening the stream renews):
//!   N agents starting together no longer renew N brand-new leases while etcd applies their
//!   grants and claims (etcd refuses a renewal while its apply loop is over 1 s behind:
//!   "waiting for the applied index took too long", which closed the stream and was retried).
//!   A lost lease is still seen within its TTL: the first renewal comes at TTL/3 and answers
//!   TTL 0 for a lease etcd no longer has.
//! - Degraded mode: nothing here waits on etcd at start. Each operation gives up after
//!   [`OP_TIMEOUT`] with [`DatastoreError::Unavailable`] naming the endpoints; the background
//!   tasks retry with the agent's jittered back-off ([`crate::backoff`], [`BACKOFF_MIN`] …
//!   [`BACKOFF_MAX`]; the lease task never waits longer than its keep-alive interval, TTL/3)
//!   and converge when etcd comes back, each node on its own schedule.
//!
//! Files: `tls.rs` (TLS options from the flags), `lease.rs` (establishing the lease, the lease
//! file), `liveness.rs` (the node's liveness keys, announcing it on a lease), `keepalive.rs`
//! (the task keeping the lease alive, announcing the node on a new one and checking its
//! claims), `sweep.rs` and `suspects.rs` (taking back a dead node's claims), `txn.rs` (the claim/release/list transactions), `watch.rs` (the claim cache and the
//! watch that keeps it); this file holds the configuration, the shared state and the wiring
//! into [`Cluster`] (whose [`Datastore`](super::Datastore) impl bounds every operation by
//! [`OP_TIMEOUT`]).

mod keepalive;
mod lease;
mod liveness;
mod suspects;
mod sweep;
mod tls;
mod txn;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;

use super::common::{self, Backend, Cluster};
use super::{ClaimDelta, DatastoreError, PrefixClaim};
use watch::Cache;

const BACKEND: &str = "etcd";
/// Longest any one datastore operation waits for etcd.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a full list of the claims waits for etcd (the watch's fill and re-fills,
/// `list_fresh`): N agents starting together make etcd answer lists of N claims in 2–3 s
/// (issue 10, N = 400 on 2 cores); cut off at [`OP_TIMEOUT`] each was sent again, and etcd,
/// which had done the work anyway, got it twice — a retry storm that at N = 1000 never ended.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the keep-alive task waits for a lease grant (or the look-up of the remembered
/// lease). Longer than a list's: a grant is not cut off because etcd is late (issue 10: at
/// N = 1000 agents etcd's apply loop ran more than 5 s behind, and each grant cut off at 5 s
/// and sent again was one more lease etcd granted — 6 160 for 1 000 agents); a dead
/// connection still fails it sooner (HTTP/2 pings).
pub const GRANT_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off of the background tasks (lease, watch) while etcd is unreachable.
pub use super::common::{BACKOFF_MAX, BACKOFF_MIN};
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
    /// TTL of the lease that says this node lives (`<prefix>/nodes/<node>/alive`), kept alive
    /// by the agent.
    pub lease_ttl: Duration,
    /// How long a node must be without liveness before another node sweeps its claims
    /// (`sweep.rs`); zero: never.
    pub claim_grace: Duration,
    /// Where the current lease ID is remembered across restarts.
    pub state_dir: std::path::PathBuf,
    pub node: String,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// The etcd datastore. Dropping it stops its background tasks without revoking the lease
/// (like a crash: the claims live on; the lease expires, and after the claim grace another
/// node sweeps them unless a restart announced the node again).
pub type EtcdDatastore = Cluster<EtcdBackend>;

/// The etcd side of an [`EtcdDatastore`], shared with its lease and watch tasks.
pub struct EtcdBackend {
    client: Client,
    node: String,
    /// For error messages: "http://a:2379, http://b:2379".
    endpoints: String,
    /// `<prefix>/claims/`.
    claims_prefix: String,
    /// `<prefix>/nodes/`: each node's liveness keys (`liveness.rs`).
    nodes_prefix: String,
    /// See [`EtcdConfig::claim_grace`].
    claim_grace: Duration,
    ttl_secs: i64,
    keepalive_every: Duration,
    state_dir: PathBuf,
    /// The lease this node's liveness hangs off; 0 while none is known to be alive.
    lease: AtomicI64,
    /// The lease this node was last announced on (`liveness.rs`); 0: none yet.
    announced: AtomicI64,
    /// A claim txn of this process has rewritten this node's `announced` record.
    claimed_since_start: AtomicBool,
    /// A lease and the instant before which etcd surely still has it (the grant's or last
    /// renewal's send time plus the TTL etcd answered): `alive` on it is in etcd until then if
    /// this node is announced on it (`liveness.rs`, the gap bridge).
    alive_until: Mutex<Option<(i64, tokio::time::Instant)>>,
    /// Serialises establishing a lease (grant or reuse).
    lease_lock: tokio::sync::Mutex<()>,
    /// Wakes the keep-alive task out of its back-off (a lease was established by an operation).
    lease_kick: Notify,
    /// A lease just granted and when its first renewal is due (TTL/3 after the grant was
    /// sent): the keep-alive task renews it no earlier (see `keepalive.rs`).
    first_renew: Mutex<Option<(i64, tokio::time::Instant)>>,
    /// Serialises this node's writes (claim, release, move off a lease) so a re-put never
    /// resurrects a prefix released meanwhile.
    write_lock: tokio::sync::Mutex<()>,
    /// What this node holds, as far as it knows: re-put if etcd lost it (swept).
    mine: Mutex<BTreeMap<IpNetwork, PrefixClaim>>,
    /// Signalled on every watch event (and after the watch is re-created).
    changed: Notify,
    /// Every claim, as the watch has seen them.
    cache: Mutex<Cache>,
    /// Asks the watch task to re-create its watch (an operation failed: etcd may be gone).
    resync: Notify,
    /// Test hook: the watch task holds its watch down while set.
    watch_paused: AtomicBool,
    /// The watch task has not yet filled the cache and established the watch once, nor
    /// failed trying ([`Backend::first_fill_pending`]).
    first_fill: AtomicBool,
    /// Full lists of the claims sent to etcd by this instance.
    list_requests: AtomicU64,
    /// What the watch applies to the cache, for [`super::Datastore::deltas`].
    deltas: tokio::sync::broadcast::Sender<ClaimDelta>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDatastore")
            .field("endpoints", &self.endpoints)
            .field("claims_prefix", &self.claims_prefix)
            .field("node", &self.node)
            .field("lease", &self.lease.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// The key of the claim of `prefix`: IPv4 `<a.b.c.d>-<len>` (as before dual-stack); IPv6 the
/// prefix as text, `fd00:10::/80` (`:` and `/` are fine in etcd keys; docs/dual-stack.md).
/// Always the network address, so host bits never make a second key for one prefix.
fn claim_key(claims_prefix: &str, prefix: IpNetwork) -> String {
    match prefix {
        IpNetwork::V4(p) => format!("{claims_prefix}{}-{}", p.network(), p.prefix()),
        IpNetwork::V6(p) => format!("{claims_prefix}{}/{}", p.network(), p.prefix()),
    }
}

fn invalid(msg: impl Into<String>) -> DatastoreError {
    common::invalid(BACKEND, msg)
}

/// Whether an error's text is etcd's own answer that it is behind: its apply loop too far
/// behind its log to take more ("etcdserver: too many requests") or a proposal not applied
/// within its request timeout ("etcdserver: request timed out", with or without a reason —
/// the proposal may still be applied). Not a transport error, not a refusal on the merits.
fn overloaded(msg: &str) -> bool {
    msg.contains("etcdserver: too many requests") || msg.contains("etcdserver: request timed out")
}

/// A lease ID as etcd's tools print it (hex).
struct Hex(i64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl Cluster<EtcdBackend> {
    /// Builds the client and starts the lease, watch and sweep tasks. Never waits for etcd: while it
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
        if let Some(tls) = tls::tls_options(&cfg)? {
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
        let inner = Arc::new(EtcdBackend {
            client,
            node: cfg.node.clone(),
            endpoints,
            claims_prefix: format!("{}/claims/", cfg.prefix.trim_end_matches('/')),
            nodes_prefix: format!("{}/nodes/", cfg.prefix.trim_end_matches('/')),
            claim_grace: cfg.claim_grace,
            ttl_secs,
            keepalive_every,
            state_dir: cfg.state_dir.clone(),
            lease: AtomicI64::new(0),
            announced: AtomicI64::new(0),
            claimed_since_start: AtomicBool::new(false),
            alive_until: Mutex::new(None),
            lease_lock: tokio::sync::Mutex::new(()),
            lease_kick: Notify::new(),
            first_renew: Mutex::new(None),
            write_lock: tokio::sync::Mutex::new(()),
            mine: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            cache: Mutex::new(Cache::default()),
            resync: Notify::new(),
            watch_paused: AtomicBool::new(false),
            first_fill: AtomicBool::new(true),
            list_requests: AtomicU64::new(0),
            deltas: tokio::sync::broadcast::channel(super::DELTA_BUFFER).0,
        });
        let tasks = vec![
            tokio::spawn(keepalive::keep_lease(inner.clone())),
            tokio::spawn(watch::watch_claims(inner.clone())),
            tokio::spawn(sweep::sweep_dead_nodes(inner.clone())),
            tokio::spawn(liveness::bridge_gaps(inner.clone())),
        ];
        Ok(Cluster::new(inner, tasks))
    }

    /// The lease this node's liveness hangs off, once one is established.
    pub fn lease_id(&self) -> Option<i64> {
        match self.backend().lease.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// The key a claim of `prefix` lives under.
    pub fn key_of(&self, prefix: IpNetwork) -> String {
        claim_key(&self.backend().claims_prefix, prefix)
    }

    /// Whether `list` answers from the claim cache now (no request to etcd).
    pub fn cache_synced(&self) -> bool {
        self.backend().cache().synced
    }

    /// The etcd revision the claim cache reflects (0 before the first list).
    pub fn cache_revision(&self) -> i64 {
        self.backend().cache().revision
    }

    /// How many full lists of the claims this instance has sent to etcd (cache fills and
    /// `list_fresh`, or `list` while the cache is out of sync).
    pub fn list_requests(&self) -> u64 {
        self.backend().list_requests.load(Ordering::SeqCst)
    }

    /// Test hook: while paused the watch task holds its watch down (the cache is out of sync
    /// and `list` reads etcd); on resume it re-creates the watch from the cache's revision,
    /// as after a broken stream.
    #[doc(hidden)]
    pub fn pause_watch(&self, paused: bool) {
        self.backend().watch_paused.store(paused, Ordering::SeqCst);
        self.backend().resync.notify_one();
    }
}

impl EtcdBackend {
    /// Counts one request to etcd (metric, and this instance's list count).
    fn count(&self, op: &'static str) {
        if op == "list" {
            self.list_requests.fetch_add(1, Ordering::SeqCst);
        }
        crate::obs::metrics::get().datastore_request(op);
    }
}

impl Backend for EtcdBackend {
    const NAME: &'static str = BACKEND;
    const OP_TIMEOUT: Duration = OP_TIMEOUT;
    const LIST_TIMEOUT: Duration = LIST_TIMEOUT;

    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError {
        let msg = format!("{what} at {}: {e}", self.endpoints);
        // etcd answered that it is behind: reachable, and its watch stream goes on (issue 10:
        // at N = 1000 every such refusal made its agent re-create the watch, and every list
        // meanwhile went to etcd itself — 4.6 full lists per agent in a cold start).
        if overloaded(&msg) {
            return DatastoreError::Busy {
                backend: BACKEND,
                msg,
            };
        }
        // etcd may be unreachable: stop trusting the cache until the watch is re-created.
        self.cache().synced = false;
        self.resync.notify_one();
        DatastoreError::Unavailable {
            backend: BACKEND,
            msg,
        }
    }

    /// A late answer does not mark the claim cache out of sync (an error does, above): etcd
    /// behind its apply loop answers late while the watch stream goes on delivering every
    /// event; a connection that is really gone breaks that stream itself (or fails its HTTP/2
    /// pings within 15 s). Issue 10: at N = 1000 each late claim or grant made its agent
    /// re-create the watch and list every claim again — 8.5 lists per agent in the cold
    /// start, 990 agents timing out on them, more load for the etcd that was late.
    fn late(&self, what: &str, limit: Duration) -> DatastoreError {
        DatastoreError::Busy {
            backend: BACKEND,
            msg: format!("{what} at {}: no answer within {limit:?}", self.endpoints),
        }
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        self.claim_prefix(claim).await
    }

    async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
        self.release_prefix(prefix, node).await
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        self.list_claims().await
    }

    fn cached(&self) -> Option<Vec<PrefixClaim>> {
        self.cached_claims()
    }

    fn first_fill_pending(&self) -> bool {
        self.first_fill.load(Ordering::SeqCst) && !self.watch_paused.load(Ordering::SeqCst)
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn deltas(&self) -> Option<&tokio::sync::broadcast::Sender<ClaimDelta>> {
        Some(&self.deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are the ones a 1000-node cold start logged (bench/scale.sh, issue 10).
    #[test]
    fn etcd_saying_it_is_behind_is_busy_anything_else_is_not() {
        assert!(overloaded(
            "granting lease at http://172.25.0.1:2379: grpc request error: code: 'The service \
             is currently unavailable', message: \"etcdserver: request timed out\""
        ));
        assert!(overloaded(
            "claiming 10.1.2.16/28 at http://e:2379: grpc request error: code: 'Unknown error', \
             message: \"etcdserver: too many requests\""
        ));
        assert!(overloaded(
            "x: message: \"etcdserver: request timed out, waiting for the applied index took too long\""
        ));
        assert!(!overloaded(
            "claiming at http://e:2379: grpc request error: transport error: Connection refused"
        ));
        assert!(!overloaded(
            "x: message: \"etcdserver: requested lease not found\""
        ));
    }

    /// etcd saying it is behind is `Busy` and leaves the claim cache in sync (its watch stream
    /// goes on); a transport error is `Unavailable` and marks the cache out of sync until the
    /// watch is re-created. (No etcd: the client connects lazily, nothing is sent.)
    #[tokio::test]
    async fn a_busy_answer_keeps_the_cache_a_transport_error_drops_it() {
        let ds = EtcdDatastore::connect(EtcdConfig {
            endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: "/vpcnet".into(),
            lease_ttl: Duration::from_secs(15),
            claim_grace: Duration::ZERO,
            state_dir: std::env::temp_dir().join(format!("vpcnet-busy-{}", std::process::id())),
            node: "n1".into(),
            ca: None,
            cert: None,
            key: None,
        })
        .await
        .expect("a valid config");
        let b = ds.backend();
        b.cache().synced = true;
        let e = b.unavailable(
            "claiming 10.1.2.16/28",
            "message: \"etcdserver: too many requests\"",
        );
        assert!(e.is_busy(), "{e:?}");
        assert!(
            b.cache().synced,
            "a busy answer marked the cache out of sync"
        );
        let e = b.late("claiming 10.1.2.16/28", OP_TIMEOUT);
        assert!(e.is_busy(), "{e:?}");
        assert!(
            b.cache().synced,
            "a late answer marked the cache out of sync"
        );
        let e = b.unavailable(
            "claiming 10.1.2.16/28",
            "transport error: Connection refused",
        );
        assert!(!e.is_busy(), "{e:?}");
        assert!(
            !b.cache().synced,
            "a transport error left the cache in sync"
        );
    }

    #[test]
    fn claim_keys_are_address_dash_length() {
        let p: IpNetwork = "10.1.2.16/28".parse().expect("prefix");
        assert_eq!(
            claim_key("/vpcnet/claims/", p),
            "/vpcnet/claims/10.1.2.16-28"
        );
        // Host bits never leak into the key.
        let q: IpNetwork = "10.1.2.17/28".parse().expect("prefix");
        assert_eq!(
            claim_key("/vpcnet/claims/", q),
            "/vpcnet/claims/10.1.2.16-28"
        );
        // IPv6: the prefix as text, canonical (compressed, network address).
        let p6: IpNetwork = "fd00:10:0:0:0:1:2:3/80".parse().expect("prefix6");
        assert_eq!(
            claim_key("/vpcnet/claims/", p6),
            "/vpcnet/claims/fd00:10::/80"
        );
    }

    #[test]
    fn claims_are_camel_case_json() {
        let c = PrefixClaim {
            prefix: "10.1.2.16/28".parse().expect("prefix"),
            node: "n1".into(),
            node_ip: Some("192.0.2.7".parse().expect("ip")),
            node_ip6: None,
            claimed_at: 5,
        };
        let v: serde_json::Value = serde_json::to_value(&c).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"prefix": "10.1.2.16/28", "node": "n1", "nodeIp": "192.0.2.7", "claimedAt": 5})
        );
        // An IPv6 claim with the node's address of each family; read back exactly.
        let c6 = PrefixClaim {
            prefix: "fd00:10::/80".parse().expect("prefix6"),
            node_ip6: Some("fd00:1::7".parse().expect("ip6")),
            ..c
        };
        let v: serde_json::Value = serde_json::to_value(&c6).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"prefix": "fd00:10::/80", "node": "n1", "nodeIp": "192.0.2.7", "nodeIp6": "fd00:1::7", "claimedAt": 5})
        );
        assert_eq!(
            serde_json::from_value::<PrefixClaim>(v).expect("decode"),
            c6
        );
    }
}
