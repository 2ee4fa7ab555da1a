//! The agent's state and every operation on it. The pool decides; this module makes each
//! decision durable (journal) before anyone is told, and does the host-side follow-up
//! (route removal, veth deletion).
//!
//! * this file — [`Node`] (its fields private: the loops go through its methods), [`State`]
//!   (pool + journal, changed together), [`Health`];
//! * [`ops`] — the CNI operations: assign (ADD), release (DEL), get (CHECK), gc, status;
//! * [`claims`] — prefixes from the datastore: grow, shrink, reconcile of claims;
//! * [`host`] — the host side of a release: the pod's route, its veth, its conntrack entries;
//! * [`store`] — the journal and snapshot; [`audit`] — the start-up audit and `rebuild-state`;
//! * [`error`] — [`NodeError`], mapped to CNI codes by [`crate::server`].

pub mod audit;
pub mod claims;
pub mod error;
pub mod host;
pub mod ops;
pub mod store;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};

use crate::datastore::Datastore;
use crate::loops::reap::Activity;
use crate::node::store::{Store, StoreError};
use vpcnet_pool::{AllocKey, Millis, Pool, PoolEvent};
use vpcnet_proto::naming;

pub use error::NodeError;

/// The allocation `key` names: itself, or — when it holds nothing — the allocation
/// `vpcnetd rebuild-state` adopted for its host veth (see [`naming::REBUILT_NETWORK`]), so a
/// DEL or CHECK of a pod that was running when the state was rebuilt finds its address.
pub fn resolve(pool: &Pool, key: &AllocKey) -> AllocKey {
    if pool.get(key).is_some() || key.network == naming::REBUILT_NETWORK {
        return key.clone();
    }
    let rebuilt = naming::rebuilt_key(&naming::host_veth_name(&key.container_id, &key.ifname));
    if pool.get(&rebuilt).is_some() {
        rebuilt
    } else {
        key.clone()
    }
}

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Pool and its journal, always changed together under one lock.
#[derive(Debug)]
pub struct State {
    pub pool: Pool,
    pub store: Store,
}

impl State {
    /// Runs `f` on the pool and makes the events it returns durable before anyone acts on
    /// them.
    ///
    /// Invariant (issue 9, item 8): **memory never runs ahead of the disk.** If the events
    /// cannot be journalled (disk full, I/O error) the pool is put back exactly as it was
    /// and the error returned: the request fails (CNI code 5), the agent keeps serving, and
    /// a later request writes again (the store cuts the failed write back off the journal,
    /// or rewrites the whole state when it cannot). The copy costs one clone of the pool per
    /// change — microseconds next to the `fdatasync` every change already pays.
    pub fn change<T>(
        &mut self,
        f: impl FnOnce(&mut Pool) -> (T, Vec<PoolEvent>),
    ) -> Result<T, StoreError> {
        let before = self.pool.clone();
        let (out, evs) = f(&mut self.pool);
        if let Err(e) = self.store.persist(&evs, &self.pool) {
            self.pool = before;
            tracing::error!(events = evs.len(), error = %e, "cannot persist pool change");
            return Err(e);
        }
        if self.store.needs_compaction() {
            // The events are durable in the journal already; a failed compaction only
            // leaves the journal longer. Retried after the next change.
            if let Err(e) = self.store.compact(&self.pool) {
                tracing::warn!(error = %e, "compacting state (retrying later)");
            }
        }
        Ok(out)
    }

    /// Releases every allocation of `keys` (cooling down) in one durable change; returns
    /// what was released. GC and reconcile both release this way.
    pub fn release_all(
        &mut self,
        keys: Vec<AllocKey>,
        now: Millis,
    ) -> Result<Vec<(Ipv4Addr, AllocKey)>, StoreError> {
        self.change(|pool| {
            let mut evs = Vec::new();
            let mut out = Vec::new();
            for key in keys {
                if let Some(ev) = pool.release(&key, now) {
                    if let PoolEvent::Released { ip, .. } = &ev {
                        out.push((*ip, key));
                    }
                    evs.push(ev);
                }
            }
            (out, evs)
        })
    }
}

/// What a node can be degraded in (shown by status, `/readyz`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// The datastore cannot be reached or refused a request.
    Datastore,
    /// The pool cannot grow (the VPC is exhausted).
    Pool,
    /// A prefix in use here is claimed by another node.
    Claims,
    /// Peer routes could not be installed.
    Peers,
}

impl Area {
    /// Every area, so `vpcnet_degraded` shows each one (0 when healthy), not only the bad.
    pub const ALL: [Area; 4] = [Area::Datastore, Area::Pool, Area::Claims, Area::Peers];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Datastore => "datastore",
            Area::Pool => "pool",
            Area::Claims => "claims",
            Area::Peers => "peers",
        }
    }
}

/// What the agent reports as degraded, by area.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: bool,
    pub degraded: BTreeMap<Area, String>,
    pub mtu: Option<u32>,
    /// "pool: waiting for a prefix" (issue 10): the last claim lost every race. Contention,
    /// not exhaustion: shown by status and `/pool`, but no degraded area, so `/readyz`
    /// stays 200 while the pool can still grow.
    pub waiting: Option<String>,
}

/// Everything a [`Node`] is made from (see `serve` in `lib.rs`).
#[derive(Debug)]
pub struct NodeParts<D> {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub state: State,
    pub mtu: Option<u32>,
    pub datastore: D,
    pub net: rtnetlink::Handle,
    /// Host veths to delete in the background (by ifindex, so a re-created veth of the same
    /// name is never hit).
    pub reaper: mpsc::UnboundedSender<u32>,
    /// When the last CNI request came: the reaper deletes veths when the node is quiet.
    pub activity: Arc<Activity>,
    /// Where plugins hold their in-flight ADD locks ([`vpcnet_proto::inflight`]).
    pub inflight_dir: PathBuf,
}

/// One node: its state, its health, its datastore and its host. Shared by the server and
/// the loops through an `Arc`.
#[derive(Debug)]
pub struct Node<D> {
    name: String,
    ip: Option<Ipv4Addr>,
    state: Mutex<State>,
    health: Mutex<Health>,
    datastore: D,
    net: rtnetlink::Handle,
    reaper: mpsc::UnboundedSender<u32>,
    activity: Arc<Activity>,
    /// Wakes the warm-pool loop after a change.
    wake: Notify,
    /// One prefix claim at a time.
    claim_lock: tokio::sync::Mutex<()>,
    inflight_dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would have aborted the process (panic = abort in
    // release); in debug builds take the data as it is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<D: Datastore> Node<D> {
    pub fn new(p: NodeParts<D>) -> Self {
        Node {
            name: p.name,
            ip: p.ip,
            state: Mutex::new(p.state),
            health: Mutex::new(Health {
                mtu: p.mtu,
                ..Health::default()
            }),
            datastore: p.datastore,
            net: p.net,
            reaper: p.reaper,
            activity: p.activity,
            wake: Notify::new(),
            claim_lock: tokio::sync::Mutex::new(()),
            inflight_dir: p.inflight_dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    pub fn datastore(&self) -> &D {
        &self.datastore
    }

    /// The netlink handle of the node's (host) namespace.
    pub fn net(&self) -> &rtnetlink::Handle {
        &self.net
    }

    pub fn inflight_dir(&self) -> &Path {
        &self.inflight_dir
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    /// Marks the node ready: state loaded, start-up reconcile done, socket bound.
    pub fn set_ready(&self) {
        self.health().ready = true;
    }

    /// Datastore failures are counted by operation where they happen
    /// ([`crate::obs::counted`]), not here.
    pub fn set_degraded(&self, area: Area, msg: Option<String>) {
        let mut h = self.health();
        match msg {
            Some(m) => {
                h.degraded.insert(area, m);
            }
            None => {
                h.degraded.remove(&area);
            }
        }
    }

    /// Sets (or clears) "pool: waiting for a prefix", and its gauge.
    pub fn set_waiting(&self, msg: Option<String>) {
        crate::obs::metrics::get().waiting_for_prefix(msg.is_some());
        self.health().waiting = msg;
    }

    /// Tells the warm-pool loop the pool changed.
    pub fn wake_warm(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`Node::wake_warm`] was called.
    pub async fn warm_woken(&self) {
        self.wake.notified().await
    }

    /// Queues host veth `index` for deletion by the reaper.
    pub fn queue_veth_deletion(&self, index: u32) {
        // The reaper only stops with the agent.
        let _ = self.reaper.send(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Datastore, DatastoreError, PrefixClaim};
    use crate::node::store::Store;
    use vpcnet_pool::PoolConfig;

    /// `list` answers a stale view (every prefix of the VPC claimed by another node, as a
    /// lagging cache might); `list_fresh` answers the truth (`fresh`).
    #[derive(Default)]
    struct StaleList {
        stale: Vec<PrefixClaim>,
        fresh: Mutex<Vec<PrefixClaim>>,
        /// Every claim loses its race (another node got there first) while set.
        lose: std::sync::atomic::AtomicBool,
    }

    impl Datastore for StaleList {
        fn name(&self) -> &'static str {
            "stale"
        }
        async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
            let mut f = lock(&self.fresh);
            if self.lose.load(std::sync::atomic::Ordering::SeqCst)
                || f.iter().any(|c| c.prefix == claim.prefix)
            {
                return Ok(false);
            }
            f.push(claim.clone());
            Ok(true)
        }
        async fn release(
            &self,
            prefix: ipnetwork::Ipv4Network,
            node: &str,
        ) -> Result<(), DatastoreError> {
            lock(&self.fresh).retain(|c| c.prefix != prefix || c.node != node);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
            Ok(self.stale.clone())
        }
        async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
            Ok(lock(&self.fresh).clone())
        }
        async fn changed(&self) {
            std::future::pending().await
        }
    }

    fn other(prefix: &str) -> PrefixClaim {
        PrefixClaim {
            prefix: prefix.parse().expect("prefix"),
            node: "other".into(),
            node_ip: None,
            claimed_at: 1,
        }
    }

    async fn node(ds: StaleList, what: &str) -> Node<StaleList> {
        let dir =
            std::env::temp_dir().join(format!("vpcnet-node-test-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = PoolConfig {
            vpc_cidrs: vec!["10.0.0.0/27".parse().expect("cidr")],
            ..Default::default()
        };
        let (store, pool) = Store::open(&dir, cfg).expect("store");
        let (conn, net, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        let (reaper, _rx) = mpsc::unbounded_channel();
        Node::new(NodeParts {
            name: "me".into(),
            ip: None,
            state: State { pool, store },
            mtu: None,
            datastore: ds,
            net,
            reaper,
            activity: Arc::new(Activity::default()),
            inflight_dir: dir.join("inflight"),
        })
    }

    /// Issue 10: a (cached) list that shows no free prefix is not proof of exhaustion; a fresh
    /// read that shows one is used instead.
    #[tokio::test]
    async fn exhaustion_is_proven_by_a_fresh_read() {
        let all = vec![other("10.0.0.0/28"), other("10.0.0.16/28")];
        let n = node(
            StaleList {
                stale: all.clone(),
                fresh: Mutex::new(vec![other("10.0.0.0/28")]),
                ..StaleList::default()
            },
            "fresh-free",
        )
        .await;
        assert_eq!(
            n.grow(1).await.ok(),
            Some(1),
            "the fresh read shows a free prefix"
        );
        assert_eq!(
            n.state().pool.held_prefixes().collect::<Vec<_>>(),
            vec!["10.0.0.16/28".parse::<ipnetwork::Ipv4Network>().expect("p")]
        );

        let n = node(
            StaleList {
                stale: Vec::new(),
                fresh: Mutex::new(all),
                ..StaleList::default()
            },
            "fresh-full",
        )
        .await;
        // The stale view shows free prefixes: they are tried and lost; the next round reads
        // afresh, which proves exhaustion.
        let e = n.grow(1).await.expect_err("nothing free").to_string();
        assert!(
            e.contains("VPC exhausted") && e.contains("2 are claimed"),
            "{e}"
        );

        let n = node(
            StaleList {
                stale: vec![other("10.0.0.0/28"), other("10.0.0.16/28")],
                fresh: Mutex::new(vec![other("10.0.0.0/28"), other("10.0.0.16/28")]),
                ..StaleList::default()
            },
            "all-taken",
        )
        .await;
        let e = n.grow(1).await.expect_err("exhausted").to_string();
        assert!(
            e.contains("VPC exhausted") && e.contains("2 are claimed"),
            "{e}"
        );
        for what in ["fresh-free", "fresh-full", "all-taken"] {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir()
                    .join(format!("vpcnet-node-test-{}-{what}", std::process::id())),
            );
        }
    }

    /// Issue 10: a node that loses every race is "pool: waiting for a prefix" (status, gauge),
    /// never "VPC exhausted", and stays ready (it can still grow); a won claim clears it.
    #[tokio::test]
    async fn lost_races_are_waiting_not_exhausted() {
        let n = node(
            StaleList {
                lose: std::sync::atomic::AtomicBool::new(true),
                ..StaleList::default()
            },
            "waiting",
        )
        .await;
        let e = n.grow(1).await.expect_err("every race lost");
        assert!(matches!(e, NodeError::ClaimRacesLost { .. }), "{e}");
        let s = n.status(false);
        assert!(
            s.degraded
                .iter()
                .any(|d| d.starts_with("pool: waiting for a prefix")),
            "{:?}",
            s.degraded
        );
        assert!(
            !s.degraded.iter().any(|d| d.contains("exhausted")),
            "{:?}",
            s.degraded
        );
        assert!(
            s.can_assign,
            "waiting is not exhausted: the pool can still grow"
        );
        n.set_ready();
        let s = n.status(false);
        assert_eq!(
            crate::obs::http::not_ready_reason(s.ready, s.can_assign, &s.degraded),
            None
        );
        assert!(!n.health().degraded.contains_key(&Area::Pool));
        // The races stop being lost: the next claim clears it.
        n.datastore()
            .lose
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(n.grow(1).await.ok(), Some(1));
        assert!(n.health().waiting.is_none());
        assert!(n.status(false).degraded.is_empty());
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("vpcnet-node-test-{}-waiting", std::process::id())),
        );
    }
}
