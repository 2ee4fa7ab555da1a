//! The datastore contract: the SAME cases run against every backend (`local`, `etcd`,
//! `kubernetes` over an in-memory fake API server, see `fake_kube`). They
//! drive the library directly (`vpcnet_agent::datastore`), each node being its own
//! datastore instance, as each node runs its own agent.
//!
//! Where a case does not apply to a backend, the backend's capability constant says so and
//! why; the case then checks what does apply (or logs "not applicable").
//!
//! At the end: vpcnetd itself against etcd, end to end (ADD a pod, its prefix claim is in etcd,
//! `kill -9` + restart: the claim survives, the node announced on a live lease).
//!
//! etcd runs as a real `/usr/bin/etcd` on 127.0.0.1 with free ports and a private data dir,
//! one per test, killed and removed on drop (see `vpcnet_tests::Etcd`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use vpcnet_agent::datastore::etcd::{EtcdConfig, EtcdDatastore, LEASE_FILE};
use vpcnet_agent::datastore::kubernetes::KubernetesDatastore;
use vpcnet_agent::datastore::local::LocalDatastore;
use vpcnet_agent::datastore::{ClaimDelta, Datastore, DatastoreError, PrefixClaim};
use vpcnet_tests::{in_netns, Etcd, Lab};

#[path = "datastore_contract/fake_kube.rs"]
mod fake_kube;

/// Lease TTL of the etcd nodes in these tests (etcd's minimum is 2 s with default timings).
const TTL: Duration = Duration::from_secs(2);
/// How long an etcd node must be without liveness before another sweeps its claims.
const GRACE: Duration = Duration::from_secs(3);
/// An operation against a datastore that is down must fail within this.
const DOWN_BOUND: Duration = Duration::from_secs(3);

/// One backend under test: makes datastore instances ("nodes") that share one cluster state.
trait Backend: Sized {
    type D: Datastore;
    /// `changed()` resolves when another node claims. local: one node, nothing to watch —
    /// its `changed()` never resolves by design, so the case is not applicable.
    const WATCH: bool;
    /// Claims of a node that stops renewing are taken back (etcd: swept by another node once
    /// the node's lease has lapsed for the claim grace). local: a single node's file has no
    /// liveness — not applicable.
    const LIVENESS: bool;
    /// How long after a node's death its claims are gone, at most (where LIVENESS).
    const LAPSE: Duration = Duration::ZERO;
    /// Claiming a prefix one already holds answers `true` (etcd: an existing claim named
    /// after the node counts as won; that is how a restarted agent keeps its claims). local answers
    /// `false` (plain create-if-absent); harmless today because node.rs never re-claims what
    /// the datastore lists as its own, but see the report.
    const RECLAIM_OWN: bool;
    /// There is a server that can go down (and come back with the same data).
    const SERVER: bool;

    async fn new() -> Self;
    /// A new instance (a new agent process) for node `name`; same name = same node, same
    /// state directory.
    async fn node(&self, name: &str) -> Self::D;
    /// Stops / restarts the server (same data).
    fn stop_server(&self) {}
    fn start_server(&self) {}
    /// Text every `Unavailable` error must contain (the endpoints).
    fn endpoint(&self) -> String {
        String::new()
    }
    /// The node's claims are held by something alive (etcd: `d`'s lease has TTL > 0, the
    /// node's `alive` key is on it, and every claim of `node` is on no lease).
    async fn attached(&self, _d: &Self::D, _node: &str) -> bool {
        true
    }
    /// Full lists of the claims `d` has sent to the server (None: the backend has no view).
    fn lists(_d: &Self::D) -> Option<u64> {
        None
    }
}

// ---- local ----

struct Local {
    dir: PathBuf,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Backend for Local {
    type D = LocalDatastore;
    const WATCH: bool = false;
    const LIVENESS: bool = false;
    const RECLAIM_OWN: bool = false;
    const SERVER: bool = false;

    async fn new() -> Local {
        let dir = unique_dir("local");
        Local { dir }
    }

    /// Every node opens the same directory: its flock serialises the instances, as it does
    /// processes.
    async fn node(&self, _name: &str) -> LocalDatastore {
        LocalDatastore::open(&self.dir).expect("open local datastore")
    }
}

fn unique_dir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir()
        .join("vpcnet-tests")
        .join(format!("{what}{}x{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ---- etcd ----

struct EtcdBackend {
    etcd: Mutex<Etcd>,
    endpoint: String,
    /// Per-node state directories (the lease file lives there).
    states: PathBuf,
}

fn etcd_config(endpoint: &str, state_dir: PathBuf, node: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: "/vpcnet".into(),
        lease_ttl: TTL,
        claim_grace: GRACE,
        state_dir,
        node: node.into(),
        ca: None,
        cert: None,
        key: None,
    }
}

impl EtcdBackend {
    fn state_dir(&self, node: &str) -> PathBuf {
        self.states.join(node)
    }

    async fn raw(&self) -> etcd_client::Client {
        raw_client(&self.endpoint).await
    }
}

async fn raw_client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("raw etcd client")
}

impl Backend for EtcdBackend {
    type D = EtcdDatastore;
    const WATCH: bool = true;
    const LIVENESS: bool = true;
    /// The lease lapses (≤ TTL), another node sees it within a sweep round or two, then the
    /// grace and a round.
    const LAPSE: Duration = Duration::from_secs(TTL.as_secs() + GRACE.as_secs() + 4);
    const RECLAIM_OWN: bool = true;
    const SERVER: bool = true;

    async fn new() -> EtcdBackend {
        let etcd = Etcd::start();
        let states = etcd.dir.join("nodes");
        EtcdBackend {
            endpoint: etcd.endpoint(),
            etcd: Mutex::new(etcd),
            states,
        }
    }

    async fn node(&self, name: &str) -> EtcdDatastore {
        EtcdDatastore::connect(etcd_config(&self.endpoint, self.state_dir(name), name))
            .await
            .expect("connect never fails on a valid config")
    }

    fn stop_server(&self) {
        self.etcd.lock().expect("etcd").stop();
    }

    fn start_server(&self) {
        self.etcd.lock().expect("etcd").restart();
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn attached(&self, d: &EtcdDatastore, node: &str) -> bool {
        let Some(lease) = d.lease_id() else {
            return false;
        };
        let mut c = self.raw().await;
        let Ok(ttl) = c.lease_time_to_live(lease, None).await else {
            return false;
        };
        if ttl.ttl() <= 0 {
            return false;
        }
        let alive = format!("/vpcnet/nodes/{node}/alive");
        let Ok(a) = c.get(alive.as_str(), None).await else {
            return false;
        };
        if a.kvs().first().is_none_or(|kv| kv.lease() != lease) {
            return false;
        }
        let Ok(r) = c
            .get(
                "/vpcnet/claims/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
        else {
            return false;
        };
        r.kvs().iter().all(|kv| {
            serde_json::from_slice::<serde_json::Value>(kv.value())
                .map(|v| v["node"] != node || kv.lease() == 0)
                .unwrap_or(true)
        })
    }

    fn lists(d: &EtcdDatastore) -> Option<u64> {
        Some(d.list_requests())
    }
}

// ---- kubernetes (over the in-memory fake API server) ----

/// Every node is its own `KubernetesDatastore` with its own client, all over one shared
/// [`fake_kube::FakeApiServer`].
struct Kube {
    server: Arc<fake_kube::FakeApiServer>,
}

impl Backend for Kube {
    type D = KubernetesDatastore;
    /// LIST + WATCH from the list's resourceVersion; the fake streams ADDED/DELETED events.
    const WATCH: bool = true;
    /// Not applicable: a claim is owned by its Node object (ownerReference), not by the
    /// agent process, so it outlives a dead agent by design; only deleting the Node frees it
    /// (the garbage collector), and the fake has no garbage collector. `attached` checks the
    /// ownerReference instead.
    const LIVENESS: bool = false;
    /// `409 AlreadyExists` on an object naming this node counts as won.
    const RECLAIM_OWN: bool = true;
    /// The fake can be stopped (requests refused, watches ended) and started again.
    const SERVER: bool = true;

    async fn new() -> Kube {
        Kube {
            server: fake_kube::FakeApiServer::new(),
        }
    }

    async fn node(&self, name: &str) -> KubernetesDatastore {
        KubernetesDatastore::with_client(self.server.client(), fake_kube::URL, name)
    }

    fn stop_server(&self) {
        self.server.stop();
    }

    fn start_server(&self) {
        self.server.start();
    }

    fn endpoint(&self) -> String {
        fake_kube::URL.to_string()
    }

    /// Every claim of `node` carries an ownerReference to its Node (uid included).
    async fn attached(&self, _d: &KubernetesDatastore, node: &str) -> bool {
        self.server.owned_by_node(node)
    }

    fn lists(d: &KubernetesDatastore) -> Option<u64> {
        Some(d.list_requests())
    }
}

// ---- helpers ----

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

fn claim(prefix: IpNetwork, node: &str) -> PrefixClaim {
    PrefixClaim {
        prefix,
        node: node.to_string(),
        node_ip: Some("192.0.2.1".parse().expect("ip")),
        node_ip6: None,
        claimed_at: 1,
    }
}

/// A claim carrying the node's address of each family (dual-stack).
fn claim6(prefix: IpNetwork, node: &str) -> PrefixClaim {
    PrefixClaim {
        node_ip6: Some("fd00:1::1".parse().expect("ip6")),
        ..claim(prefix, node)
    }
}

/// prefix → owner, as `d` lists it; panics on a prefix listed twice.
/// Who holds what, read from the datastore itself (`list_fresh`: read-your-writes).
async fn owners<D: Datastore>(d: &D) -> BTreeMap<IpNetwork, String> {
    owners_of(d.list_fresh().await.expect("list_fresh"))
}

/// Who holds what as `list` answers (etcd: the watch-fed cache while it is in sync).
async fn owners_listed<D: Datastore>(d: &D) -> Option<BTreeMap<IpNetwork, String>> {
    d.list().await.ok().map(owners_of)
}

fn owners_of(list: Vec<PrefixClaim>) -> BTreeMap<IpNetwork, String> {
    let mut m = BTreeMap::new();
    for c in list {
        let p = c.prefix;
        if let Some(other) = m.insert(p, c.node.clone()) {
            panic!("{p} listed twice: {other} and {}", c.node);
        }
    }
    m
}

/// Polls `f` every 100 ms until true; returns how long it took, or None after `timeout`.
async fn eventually<F: Future<Output = bool>>(
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f().await {
            return Some(t.elapsed());
        }
        if t.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `d` every 100 ms until `until`: every prefix of `held` must be listed (fresh) as
/// owned by its node throughout; `what` says what must not have taken it.
async fn held_until<D: Datastore>(d: &D, held: &[(IpNetwork, &str)], until: Instant, what: &str) {
    let t = Instant::now();
    while Instant::now() < until {
        let o = owners(d).await;
        for (p, node) in held {
            assert_eq!(
                o.get(p).map(String::as_str),
                Some(*node),
                "{p}: {what}, {:?} in",
                t.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits out spurious wake-ups of the level-triggered `changed()`.
async fn drain_changed<D: Datastore>(d: &D) {
    while tokio::time::timeout(Duration::from_millis(300), d.changed())
        .await
        .is_ok()
    {}
}

#[track_caller]
fn expect_unavailable<T: std::fmt::Debug>(
    r: Result<T, DatastoreError>,
    took: Duration,
    endpoint: &str,
    what: &str,
) {
    match r {
        Err(DatastoreError::Unavailable { msg, .. }) => {
            assert!(
                msg.contains(endpoint),
                "{what}: error does not name the endpoint {endpoint}: {msg}"
            );
        }
        other => panic!("{what} with the server down: want Unavailable, got {other:?}"),
    }
    assert!(
        took < DOWN_BOUND,
        "{what} took {took:?} with the server down"
    );
}

// ---- the cases ----

/// (1) Three nodes race for the same prefix, 50 rounds: exactly one wins each round, and
/// every node lists exactly that owner.
async fn concurrent_claims_one_winner<B: Backend>(b: &B) {
    let names = ["n0", "n1", "n2"];
    let nodes = [
        b.node(names[0]).await,
        b.node(names[1]).await,
        b.node(names[2]).await,
    ];
    let mut winners = BTreeMap::new();
    let mut wins = [0usize; 3];
    for round in 0..50u8 {
        let p = net(&format!("10.9.{round}.16/28"));
        // Rotate who is polled first, so the race is not always decided the same way.
        let i = [
            usize::from(round) % 3,
            (usize::from(round) + 1) % 3,
            (usize::from(round) + 2) % 3,
        ];
        let (c0, c1, c2) = (
            claim(p, names[i[0]]),
            claim(p, names[i[1]]),
            claim(p, names[i[2]]),
        );
        let (r0, r1, r2) = tokio::join!(
            nodes[i[0]].claim(&c0),
            nodes[i[1]].claim(&c1),
            nodes[i[2]].claim(&c2)
        );
        let results = [
            (i[0], r0.expect("claim")),
            (i[1], r1.expect("claim")),
            (i[2], r2.expect("claim")),
        ];
        let won: Vec<usize> = results
            .iter()
            .filter(|(_, w)| *w)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(won.len(), 1, "round {round} ({p}): winners {won:?}");
        wins[won[0]] += 1;
        winners.insert(p, names[won[0]].to_string());
    }
    for (k, d) in nodes.iter().enumerate() {
        assert_eq!(owners(d).await, winners, "as node n{k} lists them");
    }
    eprintln!("wins per node over 50 rounds: {wins:?}");
}

/// (2) Release by the owner frees the prefix; release by anyone else is a no-op; releasing
/// what is not held is not an error.
async fn release_only_by_owner<B: Backend>(b: &B) {
    let (n0, n1) = (b.node("n0").await, b.node("n1").await);
    let p = net("10.9.200.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    assert!(!n1.claim(&claim(p, "n1")).await.expect("claim"), "taken");
    n1.release(p, "n1").await.expect("release by non-owner");
    assert_eq!(
        owners(&n1).await.get(&p).map(String::as_str),
        Some("n0"),
        "a non-owner's release must not free it"
    );
    n0.release(p, "n0").await.expect("release by owner");
    assert_eq!(owners(&n0).await.get(&p), None, "released");
    n0.release(p, "n0").await.expect("release again");
    n1.release(net("10.9.201.0/28"), "n1")
        .await
        .expect("release of a never-claimed prefix");
    assert!(
        n1.claim(&claim(p, "n1")).await.expect("claim"),
        "free again"
    );
    assert!(!n0.claim(&claim(p, "n0")).await.expect("claim"));
    assert_eq!(owners(&n0).await.get(&p).map(String::as_str), Some("n1"));
}

/// (2b) IPv6 prefixes (docs/dual-stack.md): three nodes race for each of 20 IPv6 prefixes,
/// exactly one wins; IPv4 and IPv6 claims live side by side; every node reads the exact
/// prefix and both node addresses back; release only by the owner, for IPv6 as for IPv4.
async fn ipv6_claims<B: Backend>(b: &B) {
    let names = ["n0", "n1", "n2"];
    let nodes = [
        b.node(names[0]).await,
        b.node(names[1]).await,
        b.node(names[2]).await,
    ];
    let mut winners = BTreeMap::new();
    for round in 0..20u8 {
        let p = net(&format!("fd00:10:0:{round:x}:1::/80"));
        let i = [
            usize::from(round) % 3,
            (usize::from(round) + 1) % 3,
            (usize::from(round) + 2) % 3,
        ];
        let (c0, c1, c2) = (
            claim6(p, names[i[0]]),
            claim6(p, names[i[1]]),
            claim6(p, names[i[2]]),
        );
        let (r0, r1, r2) = tokio::join!(
            nodes[i[0]].claim(&c0),
            nodes[i[1]].claim(&c1),
            nodes[i[2]].claim(&c2)
        );
        let won: Vec<usize> = [(i[0], r0), (i[1], r1), (i[2], r2)]
            .into_iter()
            .filter(|(_, r)| *r.as_ref().expect("claim"))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(won.len(), 1, "round {round} ({p}): winners {won:?}");
        winners.insert(p, names[won[0]].to_string());
    }
    // An IPv4 claim beside them; a /80 that differs from a held one only past /64 is its own
    // prefix (no key or name collision).
    let v4 = net("10.9.210.0/28");
    assert!(nodes[0].claim(&claim6(v4, "n0")).await.expect("claim v4"));
    winners.insert(v4, "n0".to_string());
    let near = net("fd00:10:0:0:2::/80");
    assert!(nodes[1]
        .claim(&claim6(near, "n1"))
        .await
        .expect("claim near"));
    winners.insert(near, "n1".to_string());
    for (k, d) in nodes.iter().enumerate() {
        assert_eq!(owners(d).await, winners, "as node n{k} lists them");
    }
    // Read back exactly: the prefix and both node addresses.
    let listed = nodes[2].list_fresh().await.expect("list");
    let c = listed
        .iter()
        .find(|c| c.prefix == near)
        .expect("the IPv6 claim is listed");
    assert_eq!(
        (c.prefix, c.node.as_str(), c.node_ip, c.node_ip6),
        (
            near,
            "n1",
            Some("192.0.2.1".parse().expect("ip")),
            Some("fd00:1::1".parse().expect("ip6"))
        )
    );
    // Release: a non-owner's is a no-op, the owner's frees it for another node.
    nodes[0]
        .release(near, "n0")
        .await
        .expect("release by non-owner");
    assert_eq!(
        owners(&nodes[0]).await.get(&near).map(String::as_str),
        Some("n1")
    );
    nodes[1]
        .release(near, "n1")
        .await
        .expect("release by owner");
    assert_eq!(owners(&nodes[1]).await.get(&near), None, "released");
    assert!(
        nodes[2].claim(&claim6(near, "n2")).await.expect("claim"),
        "free again"
    );
    assert_eq!(
        owners(&nodes[0]).await.get(&near).map(String::as_str),
        Some("n2")
    );
}

/// (3) `changed()` resolves after another node claims (and releases).
async fn changed_after_other_node_claims<B: Backend>(b: &B) {
    if !B::WATCH {
        eprintln!("not applicable: this backend has no watch (single node)");
        return;
    }
    let (n0, n1) = (b.node("n0").await, b.node("n1").await);
    // n1's view is filled first (a `list` waits for the watch's first fill): a claim made
    // before that fill is in the fill, not an event, and signals nothing — a race since a
    // claim no longer waits for n0's lease (stop 26).
    n1.list().await.expect("n1's first list");
    // Warm-up: proves n1's watch is live before the measured claim.
    assert!(n0
        .claim(&claim(net("10.9.100.0/28"), "n0"))
        .await
        .expect("claim"));
    tokio::time::timeout(Duration::from_secs(5), n1.changed())
        .await
        .expect("changed() after the warm-up claim");
    drain_changed(&n1).await;
    let p = net("10.9.101.0/28");
    let t = Instant::now();
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    tokio::time::timeout(Duration::from_secs(2), n1.changed())
        .await
        .expect("changed() resolves after another node's claim");
    eprintln!("changed() after a claim: {:?}", t.elapsed());
    assert_eq!(owners(&n1).await.get(&p).map(String::as_str), Some("n0"));
    drain_changed(&n1).await;
    n0.release(p, "n0").await.expect("release");
    tokio::time::timeout(Duration::from_secs(2), n1.changed())
        .await
        .expect("changed() resolves after another node's release");
    assert_eq!(owners(&n1).await.get(&p), None);
}

/// (4) A node that stops renewing (crash: its datastore dropped, nothing revoked) loses its
/// claims within `LAPSE` (etcd: its lease lapses, another node sweeps them after the grace),
/// and others can claim them.
async fn dead_node_loses_claims<B: Backend>(b: &B) {
    if !B::LIVENESS {
        eprintln!("not applicable: this backend's claims have no liveness (see its LIVENESS)");
        return;
    }
    let (n0, n1) = (b.node("n0").await, b.node("n1").await);
    let ps = [
        net("10.9.50.0/28"),
        net("10.9.51.0/28"),
        net("10.9.52.0/28"),
    ];
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    drop(n0);
    let t = Instant::now();
    let listed = owners(&n1).await;
    assert!(
        ps.iter()
            .all(|p| listed.get(p).map(String::as_str) == Some("n0")),
        "claims must outlive the process (nothing revoked on drop): {listed:?}"
    );
    let gone = eventually(B::LAPSE, || async {
        let o = owners(&n1).await;
        ps.iter().all(|p| !o.contains_key(p))
    })
    .await;
    let took = t.elapsed();
    assert!(
        gone.is_some(),
        "claims of a dead node still there after {took:?}"
    );
    eprintln!(
        "dead node's claims gone after {took:?} (at most {:?})",
        B::LAPSE
    );
    assert!(n1.claim(&claim(ps[0], "n1")).await.expect("claim"));
}

/// (5) A restarted node (new instance, same name and state dir) keeps its claims: same
/// keys, still its own, claiming again succeeds, and they stay alive past the TTL.
async fn restarted_node_keeps_claims<B: Backend>(b: &B) {
    let n0 = b.node("n0").await;
    let ps = [net("10.9.60.0/28"), net("10.9.61.0/28")];
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    drop(n0); // the agent dies…
    let n0 = b.node("n0").await; // …and comes back
    let o = owners(&n0).await;
    for p in ps {
        assert_eq!(
            o.get(&p).map(String::as_str),
            Some("n0"),
            "{p} after restart"
        );
    }
    if B::RECLAIM_OWN {
        for p in ps {
            assert!(
                n0.claim(&claim(p, "n0")).await.expect("claim"),
                "re-claiming one's own {p} after a restart"
            );
        }
    }
    if B::LIVENESS {
        tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
        let o = owners(&n0).await;
        for p in ps {
            assert_eq!(
                o.get(&p).map(String::as_str),
                Some("n0"),
                "{p} past the TTL"
            );
        }
        assert!(b.attached(&n0, "n0").await, "claims on the live lease");
    }
}

/// (6) Server down: operations fail with Unavailable (naming the endpoints) within a bounded
/// time; after the server returns (same data) the same instance converges by itself.
async fn server_outage_then_converges<B: Backend>(b: &B) {
    if !B::SERVER {
        eprintln!("not applicable: no server to lose (embedded file)");
        return;
    }
    let n0 = b.node("n0").await;
    let p = net("10.9.70.0/28");
    let q = net("10.9.71.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    b.stop_server();
    let t = Instant::now();
    let r = n0.claim(&claim(q, "n0")).await;
    expect_unavailable(r, t.elapsed(), &b.endpoint(), "claim");
    // Not the last view either (etcd: a failed operation un-syncs the cache): a caller that
    // cannot list keeps what it has (peer routes), it is not fed a view of unknown age.
    let t = Instant::now();
    let r = n0.list().await;
    expect_unavailable(r, t.elapsed(), &b.endpoint(), "list");
    let t = Instant::now();
    let r = n0.list_fresh().await;
    expect_unavailable(r, t.elapsed(), &b.endpoint(), "list_fresh");
    let t = Instant::now();
    let r = n0.release(q, "n0").await;
    expect_unavailable(r, t.elapsed(), &b.endpoint(), "release");
    b.start_server();
    let t = Instant::now();
    let back = eventually(Duration::from_secs(15), || async {
        n0.list()
            .await
            .is_ok_and(|l| l.iter().any(|c| c.prefix == p && c.node == "n0"))
            && b.attached(&n0, "n0").await
    })
    .await;
    assert!(
        back.is_some(),
        "not converged 15 s after the server returned"
    );
    eprintln!("converged {:?} after the server returned", t.elapsed());
    assert!(n0.claim(&claim(q, "n0")).await.expect("claim after outage"));
}

/// (7) `list` (which may answer from a watch-fed cache) follows other nodes: a claim by n0
/// shows in n1's `list` within a bound, and its release disappears.
async fn list_follows_other_nodes<B: Backend>(b: &B) {
    let n0 = b.node("n0").await;
    let n1 = b.node("n1").await;
    let _ = n1.list().await;
    let p = net("10.9.60.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    let seen = eventually(Duration::from_secs(5), || async {
        owners_listed(&n1)
            .await
            .is_some_and(|o| o.get(&p).map(String::as_str) == Some("n0"))
    })
    .await;
    assert!(seen.is_some(), "n0's claim not in n1's list within 5 s");
    eprintln!("claim listed by the other node after {seen:?}");
    n0.release(p, "n0").await.expect("release");
    let gone = eventually(Duration::from_secs(5), || async {
        owners_listed(&n1)
            .await
            .is_some_and(|o| !o.contains_key(&p))
    })
    .await;
    assert!(
        gone.is_some(),
        "released claim still in n1's list after 5 s"
    );
    eprintln!("release seen by the other node after {gone:?}");
}

/// The next delta of `rx` that is not a `Resync` and concerns `p` (5 s at most).
async fn next_delta_of(
    rx: &mut tokio::sync::broadcast::Receiver<ClaimDelta>,
    p: IpNetwork,
) -> Option<ClaimDelta> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Ok(ClaimDelta::Put(c)) if c.prefix == p => return Some(ClaimDelta::Put(c)),
                Ok(ClaimDelta::Removed(c)) if c.prefix == p => return Some(ClaimDelta::Removed(c)),
                Ok(_) => continue,
                Err(e) => panic!("deltas: {e}"),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// (8) Issue 10: `deltas` streams another node's claim (`Put`) and its release (`Removed`,
/// carrying the claim that went), and the view that `list` answers from follows them without
/// a single LIST to the server.
async fn deltas_follow_other_nodes<B: Backend>(b: &B) {
    if !B::WATCH {
        eprintln!("not applicable: this backend has no watch (single node)");
        return;
    }
    let (n0, n1) = (b.node("n0").await, b.node("n1").await);
    let mut rx = n1.deltas().expect("a cluster backend streams deltas");
    // n1's view is filled first (see `changed_after_other_node_claims`: a claim made before
    // the fill is in it, a `Resync`, not a `Put`).
    n1.list().await.expect("n1's first list");
    // Warm-up: n1's view is filled and its watch live.
    let w = net("10.9.70.0/28");
    assert!(n0.claim(&claim(w, "n0")).await.expect("claim"));
    assert!(
        matches!(next_delta_of(&mut rx, w).await, Some(ClaimDelta::Put(_))),
        "warm-up claim not streamed"
    );
    // Warm-up, too: n1's start-up lists are done. etcd: the lease's adoption of n1's claims
    // is one LIST once the lease is kept alive, which may come after the first delta on a
    // loaded machine (seen in the full suite): wait until the count holds still for 1 s.
    let last = std::cell::Cell::new(B::lists(&n1).expect("list count"));
    let steady = eventually(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = B::lists(&n1).expect("list count");
        last.replace(now) == now
    })
    .await;
    assert!(steady.is_some(), "n1 kept listing for 10 s after start");
    let lists = last.get();
    let p = net("10.9.71.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    match next_delta_of(&mut rx, p).await {
        Some(ClaimDelta::Put(c)) => assert_eq!((c.prefix, c.node.as_str()), (p, "n0")),
        other => panic!("after n0's claim: {other:?}"),
    }
    let listed = owners_listed(&n1).await.expect("list");
    assert_eq!(listed.get(&p).map(String::as_str), Some("n0"));
    n0.release(p, "n0").await.expect("release");
    match next_delta_of(&mut rx, p).await {
        Some(ClaimDelta::Removed(c)) => assert_eq!((c.prefix, c.node.as_str()), (p, "n0")),
        other => panic!("after n0's release: {other:?}"),
    }
    assert_eq!(owners_listed(&n1).await.expect("list").get(&p), None);
    assert_eq!(
        B::lists(&n1),
        Some(lists),
        "n1 listed the claims while following deltas"
    );
}

macro_rules! contract {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn concurrent_claims_one_winner() {
                super::concurrent_claims_one_winner(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn release_only_by_owner() {
                super::release_only_by_owner(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn ipv6_claims() {
                super::ipv6_claims(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn changed_after_other_node_claims() {
                super::changed_after_other_node_claims(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn dead_node_loses_claims() {
                super::dead_node_loses_claims(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn restarted_node_keeps_claims() {
                super::restarted_node_keeps_claims(&<$backend>::new().await).await
            }
            #[tokio::test]
            async fn deltas_follow_other_nodes() {
                super::deltas_follow_other_nodes(&<$backend>::new().await).await;
            }
            #[tokio::test]
            async fn list_follows_other_nodes() {
                super::list_follows_other_nodes(&<$backend>::new().await).await;
            }

            #[tokio::test]
            async fn server_outage_then_converges() {
                super::server_outage_then_converges(&<$backend>::new().await).await
            }
        }
    };
}

contract!(local, Local);
contract!(etcd, EtcdBackend);
contract!(kubernetes, Kube);

// ---- etcd specifics ----

/// The agent must come up with etcd unreachable: `connect` succeeds at once, operations fail
/// fast, and the same instance converges once etcd appears.
#[tokio::test]
async fn etcd_connect_while_down_then_converges() {
    let mut etcd = Etcd::stopped(None);
    let states = etcd.dir.join("nodes");
    let t = Instant::now();
    let n0 = EtcdDatastore::connect(etcd_config(&etcd.endpoint(), states.join("n0"), "n0"))
        .await
        .expect("connect must not fail while etcd is down");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "connect waited for etcd"
    );
    let t = Instant::now();
    let r = n0.list().await;
    expect_unavailable(r, t.elapsed(), &etcd.endpoint(), "list");
    let p = net("10.9.80.0/28");
    let t = Instant::now();
    let r = n0.claim(&claim(p, "n0")).await;
    expect_unavailable(r, t.elapsed(), &etcd.endpoint(), "claim");
    etcd.restart();
    let t = Instant::now();
    let up = eventually(Duration::from_secs(15), || async {
        n0.claim(&claim(p, "n0")).await.unwrap_or(false)
    })
    .await;
    assert!(up.is_some(), "no claim 15 s after etcd appeared");
    eprintln!("first claim {:?} after etcd appeared", t.elapsed());
    // The keep-alive task grants the lease (a claim does not wait for one).
    let lease = eventually(Duration::from_secs(5), || async { n0.lease_id().is_some() }).await;
    assert!(lease.is_some(), "no lease 5 s after the first claim");
    let lease = n0.lease_id().expect("a lease once etcd is up");
    let stored = std::fs::read_to_string(states.join("n0").join(LEASE_FILE)).expect("lease file");
    assert_eq!(stored.trim().parse::<i64>().ok(), Some(lease));
}

/// Issue 10's known gap, closed: the lease is lost while the node runs (revoked here; in life:
/// an overloaded etcd refusing renewals for a TTL, or a partition). The claims do not go with
/// it — another node cannot take them meanwhile — and the node announces itself on a new
/// lease by itself; past the claim grace the other node's sweep has left them alone.
#[tokio::test]
async fn etcd_lost_lease_keeps_claims_and_is_replaced() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let n1 = b.node("n1").await;
    let ps = [net("10.9.90.0/28"), net("10.9.91.0/28")];
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    announced(&b, &n0, "n0").await;
    let old = n0.lease_id().expect("lease");
    b.raw().await.lease_revoke(old).await.expect("revoke");
    let t = Instant::now();
    let o = owners(&n1).await;
    assert!(
        ps.iter()
            .all(|p| o.get(p).map(String::as_str) == Some("n0")),
        "the claims went with the lease: {o:?}"
    );
    assert!(
        !n1.claim(&claim(ps[0], "n1")).await.expect("claim"),
        "another node took a prefix of a live node whose lease was lost"
    );
    let back = eventually(Duration::from_secs(5), || async {
        n0.lease_id().is_some_and(|l| l != old) && b.attached(&n0, "n0").await
    })
    .await;
    assert!(
        back.is_some(),
        "not announced on a new lease 5 s after the old was lost"
    );
    eprintln!("announced on a new lease after {:?}", t.elapsed());
    // The other node's sweep saw n0 without liveness (maybe) and then announced again: past
    // the grace and a few rounds the claims are still n0's.
    let held = ps.map(|p| (p, "n0"));
    let until = t + GRACE + Duration::from_secs(2);
    held_until(&n1, &held, until, "lost with the lease or swept").await;
}

/// A node that came back, even briefly, within the grace is not swept at the end of the grace
/// that began before (its new announcement restarts it), only a whole grace after it was last
/// announced. n0 dies (lease revoked: no liveness at once; n1 looks every ~0.75 s and sees
/// it), comes back after 2.5 s (a new process announces it), dies again at once; its claims
/// must be there until a grace after that (a sweep that kept the first death's time would
/// take them at ~3.5–4.7 s, 1–2.2 s after it) and gone a few rounds later.
#[tokio::test]
async fn etcd_sweep_waits_a_whole_grace_after_the_last_announcement() {
    let b = EtcdBackend::new().await;
    let n1 = b.node("n1").await;
    let ps = [net("10.9.92.0/28"), net("10.9.93.0/28")];
    let n0 = b.node("n0").await;
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    announced(&b, &n0, "n0").await;
    let t = Instant::now();
    kill(&b, n0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Back: a new process of n0 (state dir kept, but its remembered lease is gone).
    let n0 = b.node("n0").await;
    let announced = eventually(Duration::from_secs(3), || async {
        b.attached(&n0, "n0").await
    })
    .await;
    assert!(announced.is_some(), "n0 never announced itself again");
    let last = Instant::now();
    kill(&b, n0).await;
    eprintln!("died at 0, back and died again at {:?}", last - t);
    let held = ps.map(|p| (p, "n0"));
    let until = last + GRACE - Duration::from_millis(200);
    held_until(
        &n1,
        &held,
        until,
        "swept before a grace after the last announcement",
    )
    .await;
    let gone = eventually(Duration::from_secs(5), || async {
        let o = owners(&n1).await;
        ps.iter().all(|p| !o.contains_key(p))
    })
    .await;
    assert!(
        gone.is_some(),
        "not swept {:?} after the last announcement",
        last.elapsed()
    );
    eprintln!("swept {:?} after the last announcement", last.elapsed());
    let mut raw = b.raw().await;
    let left = raw
        .get(
            "/vpcnet/nodes/n0/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert!(
        left.kvs().is_empty(),
        "n0's record outlived its sweep: {:?}",
        left.kvs()
    );
    assert!(
        n1.claim(&claim(ps[0], "n1")).await.expect("claim"),
        "a swept prefix is free"
    );
}

/// A live node in a liveness gap longer than the grace keeps its claims (a path to a
/// duplicate address until stop 32): with a 30 s lease a node that has claimed is announced
/// (`alive`) only at its lease's first renewal, 10 s after the grant, and a grace of 2 s ran out
/// before that — another node swept the live node's claim at ~3 s and could take the prefix
/// while its pods used it. Now the node rewrites `announced` every quarter of the grace while
/// it shows no `alive`: nothing is swept over 6 s, another node's claim of the prefix fails,
/// and once the node is dead (no more writes) the claim is swept within a grace and a few
/// rounds.
#[tokio::test]
async fn etcd_live_node_keeps_claims_through_a_gap_longer_than_the_grace() {
    let b = EtcdBackend::new().await;
    let cfg = |node: &str| EtcdConfig {
        lease_ttl: Duration::from_secs(30),
        claim_grace: Duration::from_secs(2),
        ..etcd_config(&b.endpoint, b.state_dir(node), node)
    };
    let n1 = EtcdDatastore::connect(cfg("n1")).await.expect("connect");
    // The gap exists when the node is not announced on its lease once it has one: its claim
    // came before the grant (a claim's txn carries `alive` once a lease is known) and the
    // announcement waits for the first renewal. The keep-alive task grants in the background,
    // so a node whose grant won that race (or announced at once) is left dead and a fresh one
    // tried: the test never passes without a gap to bridge.
    let mut attempt = 0u8;
    let (n0, name, p) = loop {
        attempt += 1;
        assert!(
            attempt <= 8,
            "no node claimed before its lease in 8 attempts"
        );
        let name = format!("n0-{attempt}");
        let p = net(&format!("10.9.{}.0/28", 110 + attempt));
        let n0 = EtcdDatastore::connect(cfg(&name)).await.expect("connect");
        assert!(n0.claim(&claim(p, &name)).await.expect("claim"));
        let granted =
            eventually(Duration::from_secs(5), || async { n0.lease_id().is_some() }).await;
        assert!(granted.is_some(), "{name}: no lease within 5 s");
        if !b.attached(&n0, &name).await {
            break (n0, name, p);
        }
        eprintln!("{name} was announced on its lease at once: no gap, another node");
        drop(n0);
    };
    let t = Instant::now();
    held_until(
        &n1,
        &[(p, name.as_str())],
        t + Duration::from_secs(6),
        "a live node's claim swept during its liveness gap",
    )
    .await;
    assert!(
        !b.attached(&n0, &name).await,
        "{name} was announced on its lease before its first renewal: no gap was tested"
    );
    assert!(
        !n1.claim(&claim(p, "n1")).await.expect("claim"),
        "another node took a prefix of a live node"
    );
    kill(&b, n0).await;
    let dead = Instant::now();
    let gone = eventually(Duration::from_secs(6), || async {
        !owners(&n1).await.contains_key(&p)
    })
    .await;
    assert!(
        gone.is_some(),
        "a dead node's claim not swept {:?} after its death",
        dead.elapsed()
    );
    eprintln!("swept {:?} after the node died", dead.elapsed());
}

/// Waits until `d` (node `node`) is announced on a live lease with its claims on none: the
/// keep-alive task grants the lease in the background (a claim does not wait for one).
async fn announced(b: &EtcdBackend, d: &EtcdDatastore, node: &str) {
    let ok = eventually(Duration::from_secs(5), || async {
        b.attached(d, node).await
    })
    .await;
    assert!(
        ok.is_some(),
        "{node} not announced on a live lease within 5 s"
    );
}

/// A node's death as the others see it at once: its process gone and its lease revoked.
async fn kill(b: &EtcdBackend, d: EtcdDatastore) {
    let lease = d.lease_id().expect("lease");
    drop(d);
    b.raw().await.lease_revoke(lease).await.expect("revoke");
}

/// Upgrade from claims on the lease: a node's own claim still on a lease is moved off it when
/// the new agent starts (revoking that lease then leaves it), and another node's claim on a
/// lease (an agent not upgraded yet, which writes no liveness keys) is left to its lease, not
/// swept, however long it shows no liveness.
#[tokio::test]
async fn etcd_claims_on_a_lease_are_moved_off_it_or_left_to_it() {
    let b = EtcdBackend::new().await;
    let mut raw = b.raw().await;
    let put_on_lease = |p: &str, node: &str, lease: i64| {
        let key = format!("/vpcnet/claims/{}", p.replace('/', "-"));
        let value = serde_json::to_vec(&claim(net(p), node)).expect("json");
        (key, value, lease)
    };
    let mine = raw.lease_grant(60, None).await.expect("grant").id();
    let theirs = raw.lease_grant(60, None).await.expect("grant").id();
    for (key, value, lease) in [
        put_on_lease("10.9.94.0/28", "n0", mine),
        put_on_lease("10.9.98.0/28", "old", theirs),
    ] {
        raw.put(
            key,
            value,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
    }
    let n0 = b.node("n0").await;
    let moved = eventually(Duration::from_secs(5), || async {
        b.attached(&n0, "n0").await
    })
    .await;
    assert!(
        moved.is_some(),
        "n0's claim was not moved off the old lease"
    );
    raw.lease_revoke(mine).await.expect("revoke");
    let held = [(net("10.9.94.0/28"), "n0"), (net("10.9.98.0/28"), "old")];
    let until = Instant::now() + GRACE + Duration::from_secs(3);
    held_until(
        &n0,
        &held,
        until,
        "moved claim lost, or a claim on a live lease swept",
    )
    .await;
    raw.lease_revoke(theirs).await.expect("revoke");
    let gone = eventually(Duration::from_secs(2), || async {
        !owners(&n0).await.contains_key(&net("10.9.98.0/28"))
    })
    .await;
    assert!(gone.is_some(), "an older agent's claim outlived its lease");
}

/// Issue 10: an operation etcd answers late (here etcd is frozen with SIGSTOP, so a release
/// gets no answer within its bound) fails as Unavailable, but the claim cache stays in sync —
/// the watch stream, not a late answer, says whether etcd is gone — so `list` still answers
/// from it without a request. At N = 1000 every late answer made its agent re-create the watch
/// and list every claim again. (The check is made within 2 s of the freeze: HTTP/2 pings,
/// every 10 s with a 5 s timeout, would declare the connection dead only later.)
#[tokio::test]
async fn etcd_late_answer_keeps_the_cache_in_sync() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let p = net("10.9.99.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    cache_synced(&n0).await;
    let lists = n0.list_requests();
    let pid = b.etcd.lock().expect("etcd").pid().expect("etcd runs");
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP etcd");
    let t = Instant::now();
    let r = n0.release(p, "n0").await;
    let took = t.elapsed();
    let synced = n0.cache_synced();
    let listed = owners_listed(&n0).await;
    kill(pid, Signal::SIGCONT).expect("SIGCONT etcd");
    // Late is busy (reachable, behind: retry loops wait longer), not unavailable.
    match &r {
        Err(e) if e.is_busy() => {
            let msg = e.to_string();
            assert!(msg.contains("no answer within"), "{msg}");
            assert!(
                msg.contains(&b.endpoint),
                "does not name the endpoint: {msg}"
            );
        }
        other => panic!("release with etcd frozen: want Busy, got {other:?}"),
    }
    assert!(took < DOWN_BOUND, "release took {took:?} with etcd frozen");
    assert!(synced, "a late answer marked the claim cache out of sync");
    assert!(
        listed.is_some(),
        "list failed while etcd was late (the cache is in sync)"
    );
    assert_eq!(n0.list_requests(), lists, "a list request was sent");
    // etcd runs again: the node converges (the release goes through when retried).
    let done = eventually(Duration::from_secs(5), || async {
        n0.release(p, "n0").await.is_ok() && !owners(&n0).await.contains_key(&p)
    })
    .await;
    assert!(done.is_some(), "release never went through after SIGCONT");
}

/// Waits until `d`'s claim cache is in sync (its watch established).
async fn cache_synced(d: &EtcdDatastore) {
    let synced = eventually(Duration::from_secs(5), || async { d.cache_synced() }).await;
    assert!(synced.is_some(), "claim cache not in sync within 5 s");
}

/// Issue 10: while its cache is in sync, `list` is a memory read (no request to etcd) that
/// follows other nodes' claims and releases; `list_fresh` always asks etcd. When etcd stops,
/// `list` stops answering from the cache (Unavailable, like every operation); when etcd
/// returns the cache is in sync again and right.
#[tokio::test]
async fn etcd_synced_list_sends_no_request() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let n1 = b.node("n1").await;
    cache_synced(&n1).await;
    let ps = [net("10.9.100.0/28"), net("10.9.101.0/28")];
    let before = n1.list_requests();
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    let seen = eventually(Duration::from_secs(5), || async {
        owners_listed(&n1).await.is_some_and(|o| {
            ps.iter()
                .all(|p| o.get(p).map(String::as_str) == Some("n0"))
        })
    })
    .await;
    assert!(seen.is_some(), "claims not in n1's list within 5 s");
    n0.release(ps[0], "n0").await.expect("release");
    let gone = eventually(Duration::from_secs(5), || async {
        owners_listed(&n1)
            .await
            .is_some_and(|o| !o.contains_key(&ps[0]) && o.contains_key(&ps[1]))
    })
    .await;
    assert!(gone.is_some(), "release not in n1's list within 5 s");
    for _ in 0..100 {
        assert_eq!(
            owners_listed(&n1).await.map(|o| o.len()),
            Some(1),
            "cached list"
        );
    }
    assert!(n1.cache_synced());
    assert_eq!(
        n1.list_requests(),
        before,
        "a synced list must not ask etcd"
    );
    assert_eq!(owners(&n1).await.len(), 1, "fresh list");
    assert_eq!(n1.list_requests(), before + 1, "list_fresh asks etcd");

    b.stop_server();
    let t = Instant::now();
    let down = eventually(DOWN_BOUND, || async { n1.list().await.is_err() }).await;
    assert!(
        down.is_some(),
        "list kept answering from the cache {:?} after etcd stopped",
        t.elapsed()
    );
    eprintln!("list failing {down:?} after etcd stopped");
    b.start_server();
    let back = eventually(Duration::from_secs(15), || async {
        n1.cache_synced()
            && owners_listed(&n1)
                .await
                .is_some_and(|o| o.get(&ps[1]).map(String::as_str) == Some("n0") && o.len() == 1)
    })
    .await;
    assert!(
        back.is_some(),
        "cache not back in sync 15 s after etcd returned"
    );
    eprintln!("cache in sync {back:?} after etcd returned");
}

/// Issue 10 (start-up): a `list` right after connecting, while the watch's first fill is on
/// its way, waits for that fill instead of sending a LIST of its own (N agents starting
/// together: fewer lists per agent) — and answers what etcd holds. One list per start: the
/// watch's fill; the lease's adoption of our claims reads the claim cache (which keeps our
/// claims' revisions and leases) instead of listing again.
#[tokio::test]
async fn etcd_list_at_start_waits_for_the_watch_fill() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let p = net("10.9.102.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    let n1 = b.node("n1").await;
    assert!(!n1.cache_synced(), "connect does not wait for the watch");
    let listed = owners_listed(&n1).await.expect("list at start");
    assert_eq!(listed.get(&p).map(String::as_str), Some("n0"), "{listed:?}");
    assert!(n1.cache_synced(), "answered from the filled cache");
    let leased = eventually(Duration::from_secs(5), || async { n1.lease_id().is_some() }).await;
    assert!(leased.is_some(), "n1's lease within 5 s");
    // The adoption runs once the keep-alive stream is open: give it time to (not) list.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        n1.list_requests(),
        1,
        "the watch's fill only (the start-up list waits for it, the adoption reads the cache)"
    );
}

/// Issue 10 (1000 nodes): concurrent `list_fresh` calls share the list in flight — 20 at once
/// cost at most two requests to etcd, not 20 (each used to send its own, cut off and re-sent
/// under load) — and every answer is still fresh: it holds a claim made before the calls,
/// and a call after them sends its own and sees a release made meanwhile.
#[tokio::test]
async fn etcd_concurrent_fresh_lists_share_the_request_in_flight() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let n1 = b.node("n1").await;
    cache_synced(&n1).await;
    // The start-up list (the watch's fill) and the lease's adoption (from the cache) are done.
    let started = eventually(Duration::from_secs(5), || async {
        n1.list_requests() >= 1 && n1.lease_id().is_some()
    })
    .await;
    assert!(started.is_some(), "start-up within 5 s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = net("10.9.103.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    let before = n1.list_requests();
    let answers = futures::future::join_all((0..20).map(|_| n1.list_fresh())).await;
    for a in answers {
        let o = owners_of(a.expect("list_fresh"));
        assert_eq!(o.get(&p).map(String::as_str), Some("n0"), "{o:?}");
    }
    let sent = n1.list_requests() - before;
    assert!(
        (1..=2).contains(&sent),
        "{sent} lists sent to etcd for 20 concurrent list_fresh calls"
    );
    n0.release(p, "n0").await.expect("release");
    assert!(
        !owners(&n1).await.contains_key(&p),
        "a later call read an old answer"
    );
    assert_eq!(n1.list_requests() - before, sent + 1);
}

/// Issue 10: a watch re-created after a break resumes from the cache's revision (no re-list);
/// if etcd compacted past that revision meanwhile, the watch is canceled with the compact
/// revision and the cache re-lists — and stays right, and keeps following.
#[tokio::test]
async fn etcd_cache_relists_after_compaction() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let n1 = b.node("n1").await;
    cache_synced(&n1).await;
    let ps = [
        net("10.9.110.0/28"),
        net("10.9.111.0/28"),
        net("10.9.112.0/28"),
        net("10.9.113.0/28"),
    ];
    let wait_listed = |want: BTreeMap<IpNetwork, String>| {
        let n1 = &n1;
        async move {
            eventually(Duration::from_secs(5), || {
                let want = want.clone();
                async move {
                    n1.cache_synced() && owners_listed(n1).await.is_some_and(|o| o == want)
                }
            })
            .await
        }
    };
    let held = |ps: &[IpNetwork]| -> BTreeMap<IpNetwork, String> {
        ps.iter().map(|p| (*p, "n0".to_string())).collect()
    };

    // Break without compaction: resumed from the revision, nothing re-listed.
    n1.pause_watch(true);
    assert!(
        eventually(Duration::from_secs(2), || async { !n1.cache_synced() })
            .await
            .is_some(),
        "pausing the watch un-syncs the cache"
    );
    assert!(n0.claim(&claim(ps[0], "n0")).await.expect("claim"));
    let lists = n1.list_requests();
    n1.pause_watch(false);
    assert!(
        wait_listed(held(&ps[..1])).await.is_some(),
        "resumed watch did not deliver the claim made while it was down"
    );
    assert_eq!(
        n1.list_requests(),
        lists,
        "a resumed watch needs no re-list"
    );

    // Break, claims and releases, compaction past the cache's revision.
    n1.pause_watch(true);
    assert!(
        eventually(Duration::from_secs(2), || async { !n1.cache_synced() })
            .await
            .is_some(),
        "pausing the watch un-syncs the cache"
    );
    let cached_at = n1.cache_revision();
    for p in &ps[1..3] {
        assert!(n0.claim(&claim(*p, "n0")).await.expect("claim"));
    }
    n0.release(ps[0], "n0").await.expect("release");
    let mut raw = b.raw().await;
    let rev = raw
        .get("/vpcnet/claims/", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .expect("header");
    assert!(rev > cached_at + 1, "the test needs events past the cache");
    raw.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    let lists = n1.list_requests();
    let mut rx = n1.deltas().expect("deltas");
    n1.pause_watch(false);
    let t = Instant::now();
    assert!(
        wait_listed(held(&ps[1..3])).await.is_some(),
        "cache not right after compaction: {:?}",
        owners_listed(&n1).await
    );
    eprintln!("cache right {:?} after a compaction", t.elapsed());
    assert!(
        n1.list_requests() > lists,
        "compaction past the cache must re-list"
    );
    assert!(n1.cache_revision() >= rev);
    // Subscribers are told to rebuild (the events in between are gone).
    let mut resynced = false;
    while let Ok(d) = rx.try_recv() {
        resynced |= d == ClaimDelta::Resync;
    }
    assert!(resynced, "a re-list after compaction publishes Resync");

    // And it follows again, delta by delta.
    assert!(n0.claim(&claim(ps[3], "n0")).await.expect("claim"));
    assert!(
        matches!(next_delta_of(&mut rx, ps[3]).await, Some(ClaimDelta::Put(c)) if c.node == "n0"),
        "no delta after the re-list"
    );
    assert!(
        wait_listed(held(&ps[1..4])).await.is_some(),
        "cache stopped following after the re-list"
    );
}

/// Restart without the remembered lease (state file lost): the claims named after this node
/// are adopted onto its new lease before the old one lapses — no gap, no re-claim needed.
#[tokio::test]
async fn etcd_restart_without_lease_file_adopts_claims() {
    let b = EtcdBackend::new().await;
    let n0 = b.node("n0").await;
    let ps = [net("10.9.95.0/28"), net("10.9.96.0/28")];
    for p in ps {
        assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    }
    announced(&b, &n0, "n0").await;
    let old = n0.lease_id().expect("lease");
    drop(n0);
    std::fs::remove_file(b.state_dir("n0").join(LEASE_FILE)).expect("remove lease file");
    let n0 = b.node("n0").await;
    let observer = b.node("obs").await;
    // Polled throughout: the claims must never disappear.
    let held = ps.map(|p| (p, "n0"));
    let until = Instant::now() + TTL + Duration::from_millis(1500);
    held_until(&observer, &held, until, "vanished after the restart").await;
    assert_ne!(n0.lease_id(), Some(old), "a new lease was granted");
    assert!(
        b.attached(&n0, "n0").await,
        "claims moved onto the new lease"
    );
    // Issue 10: the adoption found them in the claim cache (the watch's fill), not by a list
    // of its own.
    assert_eq!(
        n0.list_requests(),
        1,
        "one list at start: the watch's fill, which the adoption reads"
    );
}

/// The LeaseKeepAlive messages etcd at `endpoint` has received (its own `/metrics`).
async fn lease_keepalives(endpoint: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to etcd's metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("ask for etcd's metrics");
    let mut text = String::new();
    s.read_to_string(&mut text)
        .await
        .expect("read etcd's metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_msg_received_total{")
                && l.contains("grpc_method=\"LeaseKeepAlive\"")
        })
        // Counters print as integers while small (a test's are).
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Issue 10: a lease just granted is not renewed before a third of its TTL (opening the
/// keep-alive stream renews at once: that waits now; N agents starting together renewed N
/// brand-new leases while etcd applied their grants and claims), and from then on it is kept
/// alive as before — past its TTL, with the claim on it.
#[tokio::test]
async fn etcd_fresh_lease_is_first_renewed_after_a_third_of_its_ttl() {
    let b = EtcdBackend::new().await;
    let ttl = Duration::from_secs(6);
    let t = Instant::now();
    let n0 = EtcdDatastore::connect(EtcdConfig {
        lease_ttl: ttl,
        ..etcd_config(&b.endpoint, b.state_dir("n0"), "n0")
    })
    .await
    .expect("connect");
    assert!(n0
        .claim(&claim(net("10.9.97.0/28"), "n0"))
        .await
        .expect("claim"));
    let early = lease_keepalives(&b.endpoint).await;
    // The grant was sent after `t`: nothing is due before `t + ttl / 3`. (A test thread held
    // up past that cannot tell; the rest still holds.)
    if t.elapsed() < ttl / 3 {
        assert_eq!(early, 0, "a lease just granted was renewed at once");
    } else {
        eprintln!(
            "read too late ({:?}) to check the first renewal's time",
            t.elapsed()
        );
    }
    let renewed = eventually(ttl, || async { lease_keepalives(&b.endpoint).await >= 1 }).await;
    assert!(renewed.is_some(), "the lease was never renewed");
    tokio::time::sleep_until((t + ttl + ttl / 3).into()).await;
    assert!(
        b.attached(&n0, "n0").await,
        "the lease (and the claim on it) kept alive past its TTL"
    );
}

// ---- vpcnetd end to end ----

/// vpcnetd with `--datastore etcd`: a pod's ADD makes the agent claim a prefix in etcd (seen
/// with a plain etcd client), and after `kill -9` + restart the claim is still there, its node
/// announced on a live lease, past the old lease's TTL. Then etcd goes down and the agent restarts: it
/// serves from its warm pool, reports etcd as degraded, and keeps its claim. etcd runs inside the lab's namespace (the agent
/// lives there); the test talks to it from a thread that entered that namespace.
#[test]
fn agent_with_etcd_keeps_claims_across_kill9() {
    let mut lab = Lab::new("10.241.0.0/16");
    let mut etcd = Etcd::start_in(&lab.host());
    let endpoint = etcd.endpoint();
    let node = format!("{}-node", lab.prefix);
    lab.start_agent(&[
        "--datastore",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-lease-ttl",
        "2s",
        "--warm-prefix-target",
        "0",
        "--warm-ip-target",
        "1",
        "--snat",
        "false",
    ]);
    let ns = lab.pod(0);
    let out = lab.add("e2e0", &ns);
    out.expect_ok("ADD");
    let ip = out.ip().expect("pod ip");
    let host = lab.host();
    let claims = || {
        in_netns(Some(&host), || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut c = raw_client(&endpoint).await;
                let r = c
                    .get(
                        "/vpcnet/claims/",
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                    .await
                    .expect("get claims");
                // Held: the claim on no lease, its node announced on a live lease.
                let mut alive = BTreeMap::new();
                let mut m = BTreeMap::new();
                for kv in r.kvs() {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let v: serde_json::Value =
                        serde_json::from_slice(kv.value()).expect("claim JSON");
                    let owner = v["node"].as_str().unwrap_or_default().to_string();
                    if !alive.contains_key(&owner) {
                        let lease = c
                            .get(format!("/vpcnet/nodes/{owner}/alive"), None)
                            .await
                            .ok()
                            .and_then(|a| a.kvs().first().map(|kv| kv.lease()));
                        let live = match lease {
                            Some(l) => c
                                .lease_time_to_live(l, None)
                                .await
                                .is_ok_and(|t| t.ttl() > 0),
                            None => false,
                        };
                        alive.insert(owner.clone(), live);
                    }
                    let held = kv.lease() == 0 && alive[&owner];
                    m.insert(key, (v, held));
                }
                m
            })
        })
    };
    let holding = |m: &BTreeMap<String, (serde_json::Value, bool)>| -> Vec<String> {
        m.iter()
            .filter(|(_, (v, alive))| {
                *alive
                    && v["node"] == node.as_str()
                    && v["prefix"]
                        .as_str()
                        .and_then(|p| p.parse::<IpNetwork>().ok())
                        .is_some_and(|p| p.contains(ip.into()))
            })
            .map(|(k, _)| k.clone())
            .collect()
    };
    // The claim is there once the ADD returned; the node's `alive` key on its lease may come
    // up to TTL/3 later: a new node claims at start, before its lease is granted (the claim's
    // txn rewrites `announced`, which is what a sweeper's grace needs), and the keep-alive
    // puts `alive` at the lease's first renewal (docs/reliability.md, issue 10).
    let deadline = Instant::now() + TTL + Duration::from_secs(1);
    let mut before = claims();
    assert!(
        before.values().any(|(v, _)| v["node"] == node.as_str()
            && v["prefix"]
                .as_str()
                .and_then(|p| p.parse::<IpNetwork>().ok())
                .is_some_and(|p| p.contains(ip.into()))),
        "a claim of {node} covers {ip} once the ADD returned: {before:#?}"
    );
    while holding(&before).len() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        before = claims();
    }
    let keys = holding(&before);
    assert_eq!(
        keys.len(),
        1,
        "one live claim of {node} covers {ip}: {before:#?}"
    );

    let key = &keys[0];
    assert!(
        key.starts_with("/vpcnet/claims/10.241.") && key.ends_with("-28"),
        "key format <prefix>/claims/<a.b.c.d>-<len>: {key}"
    );
    let agent = lab.agent.as_mut().expect("agent");
    agent.restart(); // SIGKILL, then start again with the same flags
    std::thread::sleep(TTL + Duration::from_millis(1500));
    let after = claims();
    assert_eq!(
        holding(&after),
        keys,
        "the claim survives kill -9 + restart past the TTL: {after:#?}\nagent log:\n{}",
        lab.agent.as_ref().map(|a| a.log_text()).unwrap_or_default()
    );
    let s = lab.status_when_up();
    assert_eq!(s["datastore"], "etcd", "{s:#}");
    assert!(
        s["degraded"].as_array().is_none_or(|d| d.is_empty()),
        "agent degraded after restart: {s:#}"
    );
    let ns1 = lab.pod(1);
    lab.add("e2e1", &ns1).expect_ok("ADD after restart");

    // etcd down while the agent (re)starts: it comes up anyway, serves from its warm pool
    // and says it is degraded; when etcd returns, its claim is still there, the node announced.
    etcd.stop();
    let t = Instant::now();
    lab.agent.as_mut().expect("agent").restart(); // waits until it serves
    eprintln!(
        "agent serving {:?} after a restart with etcd down",
        t.elapsed()
    );
    let ns2 = lab.pod(2);
    lab.add("e2e2", &ns2)
        .expect_ok("ADD from the warm pool with etcd down");
    let s = lab.status();
    assert!(
        s["degraded"].as_array().is_some_and(|d| d
            .iter()
            .any(|m| m.as_str().is_some_and(|m| m.contains(&endpoint)))),
        "status names the unreachable etcd: {s:#}"
    );
    etcd.restart();
    std::thread::sleep(TTL + Duration::from_millis(1500));
    let after = claims();
    assert_eq!(
        holding(&after),
        keys,
        "the claim survives an etcd outage during the agent's start: {after:#?}\nagent log:\n{}",
        lab.agent.as_ref().map(|a| a.log_text()).unwrap_or_default()
    );
    drop(etcd);
}

// ---- Kubernetes specifics ----

/// Issue 10: `410 Gone` (the server compacted past the watch's resourceVersion) makes the
/// view re-list (one LIST, a `Resync` delta), and deltas flow again from the new list.
#[tokio::test]
async fn kubernetes_410_gone_relists_and_deltas_resume() {
    let b = Kube::new().await;
    let (n0, n1) = (b.node("n0").await, b.node("n1").await);
    let mut rx = n1.deltas().expect("deltas");
    let w = net("10.9.80.0/28");
    assert!(n0.claim(&claim(w, "n0")).await.expect("claim"));
    assert!(matches!(
        next_delta_of(&mut rx, w).await,
        Some(ClaimDelta::Put(_))
    ));
    let lists = n1.list_requests();
    b.server.compact();
    let resync = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(ClaimDelta::Resync) = rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "no Resync after 410 Gone");
    assert!(
        n1.list_requests() > lists,
        "n1 did not re-list after 410 Gone"
    );
    assert!(b.server.lists() > 0);
    assert_eq!(owners(&n1).await.get(&w).map(String::as_str), Some("n0"));
    let p = net("10.9.81.0/28");
    assert!(n0.claim(&claim(p, "n0")).await.expect("claim"));
    match next_delta_of(&mut rx, p).await {
        Some(ClaimDelta::Put(c)) => assert_eq!(c.node, "n0"),
        other => panic!("no delta after the re-list: {other:?}"),
    }
}
