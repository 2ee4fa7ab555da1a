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

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};

use crate::datastore::Datastore;
use crate::loops::reap::{Activity, Reap};
use crate::node::store::{FamilyEvent, Store, StoreError};
use vpcnet_pool::{AllocKey, Millis, PodMeta, Pool, Pool6, PoolError, PoolEvent};

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

/// What [`State::change_prefix`] does to a prefix.
#[derive(Clone, Copy)]
enum PrefixOp {
    Add,
    Remove,
}

/// Pools and their journal, always changed together under one lock.
#[derive(Debug)]
pub struct State {
    /// The IPv4 pool (empty, without VPC CIDRs, on an IPv6-only node).
    pub pool: Pool,
    /// The IPv6 pool, when an IPv6 `--vpc-cidr` is set (docs/dual-stack.md).
    pub pool6: Option<Pool6>,
    pub store: Store,
}

/// Which family of a dual-stack assignment failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `net`.
    pub fn of(net: &IpNetwork) -> Family {
        match net {
            IpNetwork::V4(_) => Family::V4,
            IpNetwork::V6(_) => Family::V6,
        }
    }

    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One address of each family present for `key`, as one change: the IPv4 address (when the
/// node has IPv4 VPC CIDRs), then the IPv6 one (when it has an IPv6 pool). If the second
/// fails, the first is undone in memory (the pool exactly as before) and no event is
/// returned: nothing is written. Idempotent like [`Pool::assign`] (an existing assignment
/// is returned again, without events).
#[allow(clippy::type_complexity)]
pub fn assign_both(
    pool: &mut Pool,
    pool6: Option<&mut Pool6>,
    key: AllocKey,
    meta: PodMeta,
    now: Millis,
) -> Result<((Option<Ipv4Addr>, Option<Ipv6Addr>), Vec<FamilyEvent>), (Family, PoolError)> {
    let mut evs = Vec::new();
    let sp = pool.savepoint();
    let ip4 = if pool.config().vpc_cidrs.is_empty() {
        None
    } else {
        match pool.assign(key.clone(), meta.clone(), now) {
            Ok((ip, ev)) => {
                evs.extend(ev.map(FamilyEvent::V4));
                Some(ip)
            }
            Err(e) => {
                pool.rollback_to(sp);
                return Err((Family::V4, e));
            }
        }
    };
    let ip6 = match pool6 {
        None => None,
        Some(p6) => match p6.assign(key, meta, now) {
            Ok((ip, ev)) => {
                evs.extend(ev.map(FamilyEvent::V6));
                Some(ip)
            }
            Err(e) => {
                pool.rollback_to(sp);
                return Err((Family::V6, e));
            }
        },
    };
    pool.commit(sp);
    Ok(((ip4, ip6), evs))
}

impl State {
    /// Runs `f` on the pool and makes the events it returns durable before anyone acts on
    /// them.
    ///
    /// Invariant (issue 9, item 8): **memory never runs ahead of the disk.** If the events
    /// cannot be journalled (disk full, I/O error) the pool is put back exactly as it was
    /// and the error returned: the request fails (CNI code 5), the agent keeps serving, and
    /// a later request writes again (the store cuts the failed write back off the journal,
    /// or rewrites the whole state when it cannot). The way back is a savepoint of the pool
    /// ([`Pool::savepoint`]): O(1) per change, where a clone of the pool cost a copy of every
    /// allocation on the node on every ADD and DEL.
    pub fn change<T>(
        &mut self,
        f: impl FnOnce(&mut Pool) -> (T, Vec<PoolEvent>),
    ) -> Result<T, StoreError> {
        let sp = self.pool.savepoint();
        let (out, evs) = f(&mut self.pool);
        let written = match &self.pool6 {
            // IPv4-only: one line per event, exactly as before dual-stack.
            None => self.store.persist(&evs, &self.pool),
            // With an IPv6 pool: one record, and a broken store's repair snapshot holds both.
            Some(p6) => {
                let fevs: Vec<FamilyEvent> = evs.iter().cloned().map(FamilyEvent::V4).collect();
                self.store.persist_change(&fevs, &self.pool, Some(p6))
            }
        };
        if let Err(e) = written {
            self.pool.rollback_to(sp);
            tracing::error!(events = evs.len(), error = %e, "cannot persist pool change");
            return Err(e);
        }
        self.pool.commit(sp);
        self.compact_if_due();
        Ok(out)
    }

    /// [`State::change`] of both pools: `f` gets the IPv4 pool and the IPv6 one (if any) and
    /// returns the events of both families; they are made durable as one record (one line,
    /// one checksum, replayed all-or-nothing) before anyone acts on them. If that fails,
    /// both pools are put back exactly as they were.
    pub fn change_both<T>(
        &mut self,
        f: impl FnOnce(&mut Pool, Option<&mut Pool6>) -> (T, Vec<FamilyEvent>),
    ) -> Result<T, StoreError> {
        self.change_durably(|pool, pool6| {
            let (out, evs) = f(pool, pool6);
            (out, vec![evs])
        })
    }

    /// Several [`State::change_both`]s, in order, made durable together: `f` runs once per
    /// item (each sees the pools as the items before it left them) and returns that change's
    /// events; then one write and **one `fdatasync`** for all of them (group commit, issue
    /// 14: N parallel ADDs cost one sync, not N), one journal record per change. Under the
    /// state lock throughout, so nobody sees a change before it is durable — exactly as for a
    /// single change. If the write or the sync fails, **every** change of the batch is undone
    /// (both pools exactly as before the batch: one savepoint around all of them) and the
    /// error returned: each request of the batch fails as it would have alone.
    pub fn change_both_many<I, T>(
        &mut self,
        items: Vec<I>,
        mut f: impl FnMut(&mut Pool, Option<&mut Pool6>, I) -> (T, Vec<FamilyEvent>),
    ) -> Result<Vec<T>, StoreError> {
        self.change_durably(|pool, mut pool6| {
            let mut outs = Vec::with_capacity(items.len());
            let mut changes = Vec::with_capacity(items.len());
            for item in items {
                let (out, evs) = f(pool, pool6.as_deref_mut(), item);
                outs.push(out);
                changes.push(evs);
            }
            (outs, changes)
        })
    }

    /// The one way a change reaches the pools and the journal: `apply` changes the pools and
    /// returns its result and the events of each change it made, in order; those are
    /// journalled with one sync, one record per change, and on failure both pools are put
    /// back as they were before `apply`.
    fn change_durably<R>(
        &mut self,
        apply: impl FnOnce(&mut Pool, Option<&mut Pool6>) -> (R, Vec<Vec<FamilyEvent>>),
    ) -> Result<R, StoreError> {
        let sp = self.pool.savepoint();
        let sp6 = self.pool6.as_mut().map(|p| p.savepoint());
        let (out, changes) = apply(&mut self.pool, self.pool6.as_mut());
        let written = match &self.pool6 {
            // IPv4-only (`f` had no IPv6 pool to change): today's lines, one per event.
            None => {
                let v4: Vec<PoolEvent> = changes
                    .iter()
                    .flatten()
                    .filter_map(|e| match e {
                        FamilyEvent::V4(e) => Some(e.clone()),
                        FamilyEvent::V6(_) => None,
                    })
                    .collect();
                self.store.persist(&v4, &self.pool)
            }
            Some(p6) => self.store.persist_changes(&changes, &self.pool, Some(p6)),
        };
        let ok = written.is_ok();
        if ok {
            self.pool.commit(sp);
        } else {
            self.pool.rollback_to(sp);
        }
        if let (Some(p6), Some(sp6)) = (self.pool6.as_mut(), sp6) {
            if ok {
                p6.commit(sp6);
            } else {
                p6.rollback_to(sp6);
            }
        }
        if let Err(e) = written {
            let events: usize = changes.iter().map(Vec::len).sum();
            tracing::error!(changes = changes.len(), events, error = %e, "cannot persist pool change");
            return Err(e);
        }
        self.compact_if_due();
        Ok(out)
    }

    /// Whether this node serves `fam` (has VPC CIDRs of it).
    pub fn serves(&self, fam: Family) -> bool {
        match fam {
            Family::V4 => !self.pool.config().vpc_cidrs.is_empty(),
            Family::V6 => self.pool6.is_some(),
        }
    }

    /// The prefixes the pool of `fam` holds (none for a family not served).
    pub fn held(&self, fam: Family) -> Vec<IpNetwork> {
        match fam {
            Family::V4 => self.pool.held_prefixes().map(IpNetwork::V4).collect(),
            Family::V6 => self
                .pool6
                .iter()
                .flat_map(|p| p.held_prefixes())
                .map(IpNetwork::V6)
                .collect(),
        }
    }

    /// How many prefixes of `fam` the warm-pool policy wants while the pool of `fam` holds
    /// none (0 when it holds any, serves no such family, or wants none): what the start-up
    /// claim ([`Node::claim_at_start`]) claims.
    pub fn wants_first_prefixes(&self, fam: Family, now: Millis) -> u32 {
        if !self.serves(fam) || !self.held(fam).is_empty() {
            return 0;
        }
        match fam {
            Family::V4 => match self.pool.plan(now) {
                vpcnet_pool::PoolPlan::Grow { prefixes, .. } => prefixes,
                _ => 0,
            },
            Family::V6 => match self.pool6.as_ref().map(|p| p.plan(now)) {
                Some(vpcnet_pool::PoolPlan6::Grow { prefixes, .. }) => prefixes,
                _ => 0,
            },
        }
    }

    /// The prefixes both pools hold.
    pub fn held_all(&self) -> Vec<IpNetwork> {
        let mut v = self.held(Family::V4);
        v.extend(self.held(Family::V6));
        v
    }

    /// Free addresses in the pool of `fam` (0 for a family not served).
    pub fn available(&self, fam: Family, now: Millis) -> u32 {
        match fam {
            Family::V4 => self.pool.stats(now).available,
            Family::V6 => self.pool6.as_ref().map_or(0, |p| p.stats(now).available),
        }
    }

    /// Whether the VPC of `fam` has a prefix this node does not hold.
    pub fn can_grow(&self, fam: Family) -> bool {
        match fam {
            Family::V4 => self.pool.unheld_prefixes().next().is_some(),
            Family::V6 => self
                .pool6
                .as_ref()
                .is_some_and(|p| p.unheld_prefixes().next().is_some()),
        }
    }

    /// [`vpcnet_pool::PoolOf::claim_candidates`] of the pool of `fam`; `taken` may hold
    /// prefixes of both families.
    pub fn claim_candidates(
        &self,
        fam: Family,
        taken: &HashSet<IpNetwork>,
        seed: u64,
        count: usize,
    ) -> Vec<IpNetwork> {
        match fam {
            Family::V4 => {
                let taken = taken
                    .iter()
                    .filter_map(|p| match p {
                        IpNetwork::V4(p) => Some(*p),
                        IpNetwork::V6(_) => None,
                    })
                    .collect();
                self.pool
                    .claim_candidates(&taken, seed, count)
                    .into_iter()
                    .map(IpNetwork::V4)
                    .collect()
            }
            Family::V6 => {
                let Some(p6) = &self.pool6 else {
                    return Vec::new();
                };
                let taken = taken
                    .iter()
                    .filter_map(|p| match p {
                        IpNetwork::V6(p) => Some(*p),
                        IpNetwork::V4(_) => None,
                    })
                    .collect();
                p6.claim_candidates(&taken, seed, count)
                    .into_iter()
                    .map(IpNetwork::V6)
                    .collect()
            }
        }
    }

    /// "VPC exhausted" figures of `fam`: prefix length, VPC CIDRs, prefixes in the VPC,
    /// prefixes held here.
    pub fn vpc_figures(&self, fam: Family) -> (u8, Vec<String>, u64, usize) {
        match (fam, &self.pool6) {
            (Family::V6, Some(p6)) => {
                let cfg = p6.config();
                (
                    cfg.prefix_len,
                    cfg.vpc_cidrs.iter().map(|c| c.to_string()).collect(),
                    p6.vpc_prefix_count(),
                    p6.held_prefixes().count(),
                )
            }
            _ => {
                let cfg = self.pool.config();
                (
                    cfg.prefix_len,
                    cfg.vpc_cidrs.iter().map(|c| c.to_string()).collect(),
                    self.pool.vpc_prefix_count(),
                    self.pool.held_prefixes().count(),
                )
            }
        }
    }

    /// Adds claimed `prefix` to the pool of its family, durably. Outer error: not
    /// recordable (nothing changed); inner: the pool refuses it (outside the VPC, no IPv6
    /// pool…).
    pub fn add_prefix(
        &mut self,
        prefix: IpNetwork,
        now: Millis,
    ) -> Result<Result<(), PoolError>, StoreError> {
        self.change_prefix(prefix, now, PrefixOp::Add)
    }

    /// Removes wholly free `prefix` from the pool of its family, durably (see
    /// [`State::add_prefix`] for the two errors).
    pub fn remove_prefix(
        &mut self,
        prefix: IpNetwork,
        now: Millis,
    ) -> Result<Result<(), PoolError>, StoreError> {
        self.change_prefix(prefix, now, PrefixOp::Remove)
    }

    /// [`State::add_prefix`] / [`State::remove_prefix`]: `op` on the pool of `prefix`'s family.
    fn change_prefix(
        &mut self,
        prefix: IpNetwork,
        now: Millis,
        op: PrefixOp,
    ) -> Result<Result<(), PoolError>, StoreError> {
        self.change_both(|pool, pool6| {
            let r = match (prefix, pool6, op) {
                (IpNetwork::V4(p), _, PrefixOp::Add) => {
                    pool.add_prefix(p, now).map(FamilyEvent::V4)
                }
                (IpNetwork::V4(p), _, PrefixOp::Remove) => {
                    pool.remove_prefix(p, now).map(FamilyEvent::V4)
                }
                (IpNetwork::V6(p), Some(p6), PrefixOp::Add) => {
                    p6.add_prefix(p, now).map(FamilyEvent::V6)
                }
                (IpNetwork::V6(p), Some(p6), PrefixOp::Remove) => {
                    p6.remove_prefix(p, now).map(FamilyEvent::V6)
                }
                (IpNetwork::V6(_), None, PrefixOp::Add) => Err(PoolError::PrefixOutsideVpc(prefix)),
                (IpNetwork::V6(_), None, PrefixOp::Remove) => Err(PoolError::PrefixNotHeld(prefix)),
            };
            match r {
                Ok(ev) => (Ok(()), vec![ev]),
                Err(e) => (Err(e), Vec::new()),
            }
        })
    }

    fn compact_if_due(&mut self) {
        if self.store.needs_compaction() {
            // The events are durable in the journal already; a failed compaction only
            // leaves the journal longer. Retried after the next change.
            if let Err(e) = self.store.compact_dual(&self.pool, self.pool6.as_ref()) {
                tracing::warn!(error = %e, "compacting state (retrying later)");
            }
        }
    }

    /// Releases every allocation of `keys` in both families (cooling down) in one durable
    /// change; returns what was released, per key. GC and reconcile both release this way.
    #[allow(clippy::type_complexity)]
    pub fn release_all(
        &mut self,
        keys: Vec<AllocKey>,
        now: Millis,
    ) -> Result<Vec<(AllocKey, Option<Ipv4Addr>, Option<Ipv6Addr>)>, StoreError> {
        self.change_both(|pool, mut pool6| {
            let mut evs = Vec::new();
            let mut out = Vec::new();
            for key in keys {
                let ev = pool.release(&key, now);
                let ip = match &ev {
                    Some(PoolEvent::Released { ip, .. }) => Some(*ip),
                    _ => None,
                };
                evs.extend(ev.map(FamilyEvent::V4));
                let ev6 = pool6.as_deref_mut().and_then(|p6| p6.release(&key, now));
                let ip6 = match &ev6 {
                    Some(vpcnet_pool::PoolEvent6::Released { ip, .. }) => Some(*ip),
                    _ => None,
                };
                evs.extend(ev6.map(FamilyEvent::V6));
                if ip.is_some() || ip6.is_some() {
                    out.push((key, ip, ip6));
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
    /// NetworkPolicy (`--network-policy=true`): a watch of the API is failing, or the
    /// ruleset could not be applied.
    NetworkPolicy,
}

impl Area {
    /// Every area, so `vpcnet_degraded` shows each one (0 when healthy), not only the bad.
    pub const ALL: [Area; 5] = [
        Area::Datastore,
        Area::Pool,
        Area::Claims,
        Area::Peers,
        Area::NetworkPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Datastore => "datastore",
            Area::Pool => "pool",
            Area::Claims => "claims",
            Area::Peers => "peers",
            Area::NetworkPolicy => "network-policy",
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
    /// The node's IPv6 address (`--node-ip` of IPv6): peers route our IPv6 prefixes via it.
    pub ip6: Option<Ipv6Addr>,
    pub state: State,
    pub mtu: Option<u32>,
    pub datastore: D,
    pub net: rtnetlink::Handle,
    /// Host veths to delete (by ifindex, so a re-created veth of the same name is never hit)
    /// and released addresses whose conntrack entries to flush, both in the background.
    pub reaper: mpsc::UnboundedSender<Reap>,
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
    ip6: Option<Ipv6Addr>,
    state: Mutex<State>,
    health: Mutex<Health>,
    datastore: D,
    net: rtnetlink::Handle,
    reaper: mpsc::UnboundedSender<Reap>,
    activity: Arc<Activity>,
    /// Wakes the warm-pool loop after a change.
    wake: Notify,
    /// The pool's prefixes changed (a claim, a shrink): for the peers loop.
    prefixes_moved: Notify,
    /// One prefix claim at a time. Holds the prefix whose last claim got no answer (issue 10:
    /// a busy etcd may still have written it): the next claim tries that one first, and a
    /// claim of ours counts as won, so a late write becomes the pool's prefix instead of a
    /// leftover claim beside a second one (every peer adds a route for each and withdraws it
    /// when the claims reconcile releases the leftover).
    claim_lock: tokio::sync::Mutex<Option<IpNetwork>>,
    /// Prefixes whose claim this process won, and when (`claims.rs`: a reconcile reading a
    /// view that does not show them yet takes that for the watch's lag).
    won: Mutex<BTreeMap<IpNetwork, std::time::Instant>>,
    inflight_dir: PathBuf,
    /// ADDs that arrived together, to be assigned with one journal sync ([`ops`]).
    assign_queue: Mutex<Vec<ops::QueuedAssign>>,
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
            ip6: p.ip6,
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
            prefixes_moved: Notify::new(),
            claim_lock: tokio::sync::Mutex::new(None),
            won: Mutex::new(BTreeMap::new()),
            assign_queue: Mutex::new(Vec::new()),
            inflight_dir: p.inflight_dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.ip6
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

    fn assign_queue(&self) -> MutexGuard<'_, Vec<ops::QueuedAssign>> {
        lock(&self.assign_queue)
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

    /// Tells the peers loop the pool's prefixes changed (it installs or withdraws our own
    /// prefix's unreachable route at once, instead of at its next poll).
    pub fn prefixes_changed(&self) {
        self.prefixes_moved.notify_one();
    }

    /// Resolves when [`Node::prefixes_changed`] was called (since the last time it resolved).
    pub async fn prefixes_changed_wait(&self) {
        self.prefixes_moved.notified().await
    }

    /// Queues host veth `index` for deletion by the reaper.
    pub fn queue_veth_deletion(&self, index: u32) {
        // The reaper only stops with the agent.
        let _ = self.reaper.send(Reap::Veth(index));
    }

    /// Queues the flush of released address `ip`'s conntrack entries: the reaper does it in
    /// one walk of the table with the other addresses released meanwhile, well inside the
    /// address cooldown ([`crate::loops::reap::run`]).
    pub fn queue_conntrack_flush(&self, ip: impl Into<std::net::IpAddr>) {
        let _ = self.reaper.send(Reap::Conntrack(ip.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Datastore, DatastoreError, PrefixClaim};
    use crate::node::store::Store;
    use vpcnet_pool::PoolConfig;

    /// A scratch state directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir()
                .join(format!("vpcnet-state-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(c: &str) -> AllocKey {
        AllocKey {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn cfgs(v4: bool) -> (PoolConfig, vpcnet_pool::PoolConfig6) {
        let cfg = PoolConfig {
            vpc_cidrs: if v4 {
                vec!["10.0.0.0/27".parse().expect("cidr")]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let cfg6 = vpcnet_pool::PoolConfig6 {
            vpc_cidrs: vec!["fd00:10::/64".parse().expect("cidr6")],
            prefix_len: 80,
            ..Default::default()
        };
        (cfg, cfg6)
    }

    fn open(dir: &Path, v4: bool, v6: bool) -> State {
        let (cfg, cfg6) = cfgs(v4);
        let (store, pool, pool6) = Store::open_dual(dir, cfg, v6.then_some(cfg6)).expect("store");
        State { pool, pool6, store }
    }

    fn journal_lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(store::JOURNAL))
            .expect("journal")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Dual-stack: one assignment takes an address of each family in one record; if the
    /// IPv6 half fails the IPv4 half is undone and nothing is written; release frees both;
    /// all of it survives a reopen.
    #[test]
    fn dual_assignment_is_one_change_of_both_pools() {
        let dir = Scratch::new("dual");
        let mut st = open(&dir.0, true, true);
        st.change(|p| {
            let ev = p.add_prefix("10.0.0.16/28".parse().expect("p"), 1);
            ((), ev.into_iter().collect())
        })
        .expect("v4 prefix");
        // No IPv6 prefix yet: the IPv6 half fails, the IPv4 half is rolled back, no record.
        let (before4, lines_before) = (st.pool.clone(), journal_lines(&dir.0));
        let r = st
            .change_both(
                |p, p6| match assign_both(p, p6, key("a"), PodMeta::default(), 2) {
                    Ok((ips, evs)) => (Ok(ips), evs),
                    Err(e) => (Err(e), Vec::new()),
                },
            )
            .expect("nothing to write");
        assert!(
            matches!(r, Err((Family::V6, PoolError::Exhausted { .. }))),
            "{r:?}"
        );
        assert_eq!(st.pool, before4);
        assert_eq!(journal_lines(&dir.0), lines_before);
        // With an IPv6 prefix: both addresses, one line holding both events.
        st.change_both(|_, p6| {
            let p6 = p6.expect("ipv6 pool");
            let ev = p6.add_prefix("fd00:10::/80".parse().expect("p6"), 1);
            ((), ev.into_iter().map(FamilyEvent::V6).collect())
        })
        .expect("v6 prefix");
        let assign = |st: &mut State, c: &str| {
            st.change_both(
                |p, p6| match assign_both(p, p6, key(c), PodMeta::default(), 3) {
                    Ok((ips, evs)) => (Ok(ips), evs),
                    Err(e) => (Err(e), Vec::new()),
                },
            )
            .expect("persist")
        };
        let (ip4, ip6) = assign(&mut st, "a").expect("assigned");
        assert_eq!(ip4, Some("10.0.0.16".parse().expect("ip")));
        assert_eq!(ip6, Some("fd00:10::1".parse().expect("ip6")));
        let lines = journal_lines(&dir.0);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let last = lines.last().expect("line");
        assert!(
            last.contains(r#""evs":[{"v4":{"ev":"assigned""#)
                && last.contains(r#"{"v6":{"ev":"assigned""#),
            "{last}"
        );
        // Idempotent: the same key again, the same addresses, nothing written.
        assert_eq!(assign(&mut st, "a").expect("again"), (ip4, ip6));
        assert_eq!(journal_lines(&dir.0).len(), 3);
        let _ = assign(&mut st, "b").expect("b");
        // Release of both families, one record.
        st.change_both(|p, p6| {
            let mut evs: Vec<FamilyEvent> = p
                .release(&key("a"), 4)
                .map(FamilyEvent::V4)
                .into_iter()
                .collect();
            evs.extend(
                p6.and_then(|p6| p6.release(&key("a"), 4))
                    .map(FamilyEvent::V6),
            );
            ((), evs)
        })
        .expect("release");
        assert_eq!(journal_lines(&dir.0).len(), 5);
        let (p4, p6) = (st.pool.clone(), st.pool6.clone());
        drop(st);
        let st = open(&dir.0, true, true);
        assert_eq!((&st.pool, &st.pool6), (&p4, &p6));
        assert!(st.pool.get(&key("a")).is_none() && st.pool.get(&key("b")).is_some());
        let p6 = st.pool6.as_ref().expect("pool6");
        assert!(p6.get(&key("a")).is_none() && p6.get(&key("b")).is_some());
    }

    /// Group commit (issue 14): a batch of assignments is one sync and one record per change
    /// that changed something (a repeat of a key in the batch is answered from the first
    /// without a record), each change sees the ones before it, and a reopen finds them all;
    /// when the write fails, every change of the batch is undone in both pools and nothing of
    /// it is in the journal — also for an IPv4-only node, whose journal keeps one line per
    /// event.
    #[test]
    fn a_batch_of_assignments_is_one_sync_and_all_or_nothing() {
        use crate::node::store::JournalSync;
        for (dual, sync) in [
            (true, JournalSync::EveryChange),
            (false, JournalSync::EveryChange),
            (true, JournalSync::Prefixes),
            (false, JournalSync::Prefixes),
        ] {
            let dir = Scratch::new(if dual { "batch-dual" } else { "batch-v4" });
            let mut st = open(&dir.0, true, dual);
            st.store.set_sync(sync);
            st.change_both(|p, p6| {
                let mut evs: Vec<FamilyEvent> = p
                    .add_prefix("10.0.0.16/28".parse().expect("p"), 1)
                    .map(FamilyEvent::V4)
                    .into_iter()
                    .collect();
                if let Some(p6) = p6 {
                    evs.extend(
                        p6.add_prefix("fd00:10::/80".parse().expect("p6"), 1)
                            .map(FamilyEvent::V6),
                    );
                }
                ((), evs)
            })
            .expect("prefixes");
            assert_eq!(st.store.syncs(), 1, "a prefix change is flushed ({sync:?})");
            let assign_all = |st: &mut State, keys: &[&str]| {
                let asks: Vec<AllocKey> = keys.iter().map(|k| key(k)).collect();
                st.change_both_many(asks, |p, p6, k| {
                    match assign_both(p, p6, k, PodMeta::default(), 2) {
                        Ok((ips, evs)) => (Ok((ips, evs.is_empty())), evs),
                        Err(e) => (Err(e), Vec::new()),
                    }
                })
            };
            let (syncs, lines) = (st.store.syncs(), journal_lines(&dir.0).len());
            let got = assign_all(&mut st, &["a", "b", "a", "c"]).expect("batch");
            // Pods' changes: one sync for the batch, or (by default) written but not flushed.
            let flushed = u64::from(sync == JournalSync::EveryChange);
            assert_eq!(st.store.syncs(), syncs + flushed, "{sync:?}");
            assert_eq!(
                journal_lines(&dir.0).len(),
                lines + 3,
                "a, b, c; not the repeat"
            );
            type Got = Result<((Option<Ipv4Addr>, Option<Ipv6Addr>), bool), (Family, PoolError)>;
            fn ip(r: &Got) -> Option<(Option<Ipv4Addr>, bool, bool)> {
                r.as_ref()
                    .ok()
                    .map(|((v4, v6), existing)| (*v4, v6.is_some(), *existing))
            }
            let first: Option<std::net::Ipv4Addr> = "10.0.0.16".parse().ok();
            assert_eq!(ip(&got[0]), Some((first, dual, false)));
            assert_eq!(
                ip(&got[2]),
                Some((first, dual, true)),
                "the repeat: a's address"
            );
            let distinct: HashSet<_> = got
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|r| r.0)
                .collect();
            assert_eq!(distinct.len(), 3, "{got:?}");
            // The write fails (disk full): the whole batch is undone, nothing is written.
            let (p4, p6) = (st.pool.clone(), st.pool6.clone());
            let real = st.store.swap_journal(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open("/dev/full")
                    .expect("/dev/full"),
            );
            let err = assign_all(&mut st, &["d", "e", "b"]).expect_err("disk full");
            assert!(err.is_disk_full(), "{err}");
            assert_eq!((&st.pool, &st.pool6), (&p4, &p6), "the batch is undone");
            let _ = st.store.swap_journal(real);
            assert_eq!(journal_lines(&dir.0).len(), lines + 3);
            // And it all survives a reopen.
            drop(st);
            let st = open(&dir.0, true, dual);
            assert_eq!((&st.pool, &st.pool6), (&p4, &p6));
            assert!(st.pool.get(&key("c")).is_some() && st.pool.get(&key("d")).is_none());
        }
    }

    /// IPv4-only: `assign_both` is today's assignment and the journal today's lines; an
    /// IPv6-only node gets an IPv6 address alone.
    #[test]
    fn single_family_assignments() {
        let dir = Scratch::new("v4");
        let mut st = open(&dir.0, true, false);
        st.change(|p| {
            let ev = p.add_prefix("10.0.0.0/28".parse().expect("p"), 1);
            ((), ev.into_iter().collect())
        })
        .expect("prefix");
        let r = st
            .change_both(|p, p6| {
                let (ips, evs) =
                    assign_both(p, p6, key("a"), PodMeta::default(), 2).expect("assign");
                (ips, evs)
            })
            .expect("persist");
        assert_eq!(r, (Some("10.0.0.1".parse().expect("ip")), None));
        for line in journal_lines(&dir.0) {
            assert!(
                !line.contains("evs") && line.contains(r#"{"seq":"#),
                "{line}"
            );
        }
        let dir = Scratch::new("v6");
        let mut st = open(&dir.0, false, true);
        st.change_both(|_, p6| {
            let ev = p6
                .expect("p6")
                .add_prefix("fd00:10::/80".parse().expect("p6"), 1);
            ((), ev.into_iter().map(FamilyEvent::V6).collect())
        })
        .expect("prefix");
        let r = st
            .change_both(|p, p6| {
                assign_both(p, p6, key("a"), PodMeta::default(), 2).expect("assign")
            })
            .expect("persist");
        assert_eq!(r, (None, Some("fd00:10::1".parse().expect("ip6"))));
        assert_eq!(st.pool.allocations().count(), 0);
    }

    /// `list` answers a stale view (every prefix of the VPC claimed by another node, as a
    /// lagging cache might); `list_fresh` answers the truth (`fresh`).
    #[derive(Default)]
    struct StaleList {
        stale: Mutex<Vec<PrefixClaim>>,
        fresh: Mutex<Vec<PrefixClaim>>,
        /// Every claim loses its race (another node got there first) while set.
        lose: std::sync::atomic::AtomicBool,
        /// The next claim is written but answered with an error (a busy etcd's late write).
        unanswered: std::sync::atomic::AtomicBool,
        /// Fresh reads (`list_fresh`) and claim txns asked so far.
        fresh_reads: std::sync::atomic::AtomicUsize,
        claims: std::sync::atomic::AtomicUsize,
    }

    impl Datastore for StaleList {
        fn name(&self) -> &'static str {
            "stale"
        }
        async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
            self.claims
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut f = lock(&self.fresh);
            if self.lose.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(false);
            }
            if let Some(held) = f.iter().find(|c| c.prefix == claim.prefix) {
                // The contract: an existing claim of ours counts as won.
                return Ok(held.node == claim.node);
            }
            f.push(claim.clone());
            if self
                .unanswered
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(DatastoreError::Unavailable {
                    backend: "stale",
                    msg: format!("claiming {}: no answer within 2s", claim.prefix),
                });
            }
            Ok(true)
        }
        async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
            lock(&self.fresh).retain(|c| c.prefix != prefix || c.node != node);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
            Ok(lock(&self.stale).clone())
        }
        async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
            self.fresh_reads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(lock(&self.fresh).clone())
        }
        async fn changed(&self) {
            std::future::pending().await
        }
    }

    impl StaleList {
        fn fresh_reads(&self) -> usize {
            self.fresh_reads.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn claims(&self) -> usize {
            self.claims.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn other(prefix: &str) -> PrefixClaim {
        PrefixClaim {
            prefix: prefix.parse().expect("prefix"),
            node: "other".into(),
            node_ip: None,
            node_ip6: None,
            claimed_at: 1,
        }
    }

    /// The state directory of the test node `what`.
    fn test_dir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vpcnet-node-test-{}-{what}", std::process::id()))
    }

    /// A test node whose datastore writes its next claim but answers it with an error.
    async fn node_with_an_unanswered_claim(what: &str) -> Node<StaleList> {
        let ds = StaleList {
            unanswered: std::sync::atomic::AtomicBool::new(true),
            ..StaleList::default()
        };
        node(ds, what).await
    }

    /// A test node whose every claim loses its race (another node got there first).
    async fn node_losing_every_race(what: &str) -> Node<StaleList> {
        let ds = StaleList {
            lose: std::sync::atomic::AtomicBool::new(true),
            ..StaleList::default()
        };
        node(ds, what).await
    }

    async fn node(ds: StaleList, what: &str) -> Node<StaleList> {
        let dir = test_dir(what);
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
            ip6: None,
            state: State {
                pool,
                pool6: None,
                store,
            },
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
                stale: Mutex::new(all.clone()),
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
            n.state().held(Family::V4),
            vec!["10.0.0.16/28".parse::<IpNetwork>().expect("p")]
        );

        let n = node(
            StaleList {
                stale: Mutex::new(Vec::new()),
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
                stale: Mutex::new(vec![other("10.0.0.0/28"), other("10.0.0.16/28")]),
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
            let _ = std::fs::remove_dir_all(test_dir(what));
        }
    }

    /// Issue 10: a claim that got no answer but was written (a busy etcd) is tried first by
    /// the next grow, even when the view shows it (as ours) among the taken prefixes, and
    /// becomes the pool's: one claim of ours, no leftover beside a second one.
    #[tokio::test]
    async fn an_unanswered_claim_is_tried_first_next_time() {
        let n = node_with_an_unanswered_claim("unanswered").await;
        n.grow(1).await.expect_err("no answer");
        assert!(n.state().held(Family::V4).is_empty());
        let written = lock(&n.datastore().fresh).clone();
        assert_eq!(written.len(), 1, "{written:?}");
        // The watch has delivered it meanwhile: the view shows the claim as ours.
        *lock(&n.datastore().stale) = written.clone();
        assert_eq!(n.grow(1).await.ok(), Some(1));
        assert_eq!(n.state().held(Family::V4), vec![written[0].prefix]);
        assert_eq!(*lock(&n.datastore().fresh), written, "no second claim");
        let _ = std::fs::remove_dir_all(test_dir("unanswered"));
    }

    /// Issue 10: the claims reconcile of the peers loop, running between a claim that got no
    /// answer but was written and the claim's retry, takes that prefix into the pool (what
    /// the answer would have said) instead of releasing it as a leftover — released, the
    /// retry claimed it again and every peer withdrew and re-installed its route. Any other
    /// claim of ours the pool does not hold is still released.
    #[tokio::test]
    async fn a_reconcile_takes_an_unanswered_but_written_claim() {
        let n = node_with_an_unanswered_claim("late-write").await;
        n.grow(1).await.expect_err("no answer");
        let written = lock(&n.datastore().fresh).clone();
        assert_eq!(written.len(), 1, "{written:?}");
        // A leftover of ours too: a release after a shrink that failed.
        // (The VPC is two /28s: the leftover is the other one.)
        let mut leftover = if written[0].prefix.to_string() == "10.0.0.0/28" {
            other("10.0.0.16/28")
        } else {
            other("10.0.0.0/28")
        };
        leftover.node = n.name().to_owned();
        lock(&n.datastore().fresh).push(leftover);
        *lock(&n.datastore().stale) = lock(&n.datastore().fresh).clone();
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.state().held(Family::V4), vec![written[0].prefix]);
        assert_eq!(
            *lock(&n.datastore().fresh),
            written,
            "kept; the leftover released"
        );
        // The slot is cleared: the next grow claims another prefix, not that one again.
        *lock(&n.datastore().stale) = written.clone();
        assert_eq!(n.grow(1).await.ok(), Some(1));
        assert_eq!(n.state().held(Family::V4).len(), 2);
        assert_eq!(lock(&n.datastore().fresh).len(), 2);
        let _ = std::fs::remove_dir_all(test_dir("late-write"));
    }

    /// Issue 10: a new node claims its first prefix at start without any list (its view is
    /// not in sync: `list_now` is `None`), by the same create-if-absent claim; a node that
    /// holds a prefix claims nothing there; a lost race is left to the warm loop.
    #[tokio::test]
    async fn a_new_node_claims_at_start_without_listing() {
        let n = node(StaleList::default(), "at-start").await;
        assert_eq!(n.claim_at_start().await, 1);
        let held = n.state().held(Family::V4);
        assert_eq!(held.len(), 1);
        let written = lock(&n.datastore().fresh).clone();
        assert_eq!(written.len(), 1);
        assert_eq!(
            (written[0].prefix, written[0].node.as_str()),
            (held[0], "me")
        );
        assert_eq!(n.datastore().fresh_reads(), 0, "no list asked");
        assert_eq!(n.claim_at_start().await, 0, "it holds a prefix now");
        assert_eq!(n.datastore().claims(), 1);
        let _ = std::fs::remove_dir_all(test_dir("at-start"));

        // Every candidate lost: nothing claimed, no list, the warm loop's to do.
        let n = node_losing_every_race("at-start-lost").await;
        assert_eq!(n.claim_at_start().await, 0);
        assert!(n.state().held(Family::V4).is_empty());
        assert_eq!(n.datastore().fresh_reads(), 0);
        assert!(n.datastore().claims() >= 1);
        let _ = std::fs::remove_dir_all(test_dir("at-start-lost"));
    }

    /// Issue 10: a view that does not show a claim this process won moments ago is the
    /// watch's lag: the reconcile neither reads afresh (a full list at 1000 nodes) nor claims
    /// it again. Any other disagreement still means a fresh read, and on a fresh read a
    /// missing claim of ours is claimed again, however recently it was won.
    #[tokio::test]
    async fn a_reconcile_takes_a_just_won_claim_missing_from_the_view_for_lag() {
        let n = node(StaleList::default(), "lag").await;
        assert_eq!(n.grow(1).await.ok(), Some(1));
        let won = n.state().held(Family::V4)[0];
        let txns = n.datastore().claims();
        // The view (`list`) does not show it yet.
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.datastore().fresh_reads(), 0, "lag, not a disagreement");
        assert_eq!(n.datastore().claims(), txns, "not claimed again");
        assert_eq!(n.state().held(Family::V4), vec![won]);

        // Once a view has shown it, a view without it is a deletion: a fresh read decides
        // (it is there: nothing to do).
        *lock(&n.datastore().stale) = lock(&n.datastore().fresh).clone();
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.datastore().fresh_reads(), 0, "in agreement");
        lock(&n.datastore().stale).clear();
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.datastore().fresh_reads(), 1, "seen, then gone: not lag");
        assert_eq!(n.datastore().claims(), txns);

        // The view shows another node on it: not lag, a fresh read decides (ours there).
        *lock(&n.datastore().stale) = vec![PrefixClaim {
            prefix: won,
            ..other("10.0.0.0/28")
        }];
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.datastore().fresh_reads(), 2);
        assert_eq!(n.state().held(Family::V4), vec![won]);

        // An unexplained disagreement (a leftover of ours in the view) and our won claim
        // gone from the datastore (an operator deleted it): the fresh read shows neither, and
        // the won claim is claimed again although it was won moments ago.
        let spare = if won.to_string() == "10.0.0.0/28" {
            "10.0.0.16/28"
        } else {
            "10.0.0.0/28"
        };
        *lock(&n.datastore().stale) = vec![PrefixClaim {
            node: "me".into(),
            ..other(spare)
        }];
        lock(&n.datastore().fresh).clear();
        n.won_now(won); // as if won again just now, not seen by any view since
        n.reconcile_claims_nowait().await.expect("reconcile");
        assert_eq!(n.datastore().fresh_reads(), 3);
        let now: Vec<_> = lock(&n.datastore().fresh)
            .iter()
            .map(|c| c.prefix)
            .collect();
        assert_eq!(now, vec![won], "claimed again on the fresh read");
        assert_eq!(n.state().held(Family::V4), vec![won]);
        let _ = std::fs::remove_dir_all(test_dir("lag"));
    }

    /// Issue 10: a node that loses every race is "pool: waiting for a prefix" (status, gauge),
    /// never "VPC exhausted", and stays ready (it can still grow); a won claim clears it.
    #[tokio::test]
    async fn lost_races_are_waiting_not_exhausted() {
        let n = node_losing_every_race("waiting").await;
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
        let _ = std::fs::remove_dir_all(test_dir("waiting"));
    }
}
