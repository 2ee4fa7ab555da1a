//! The agent's state and every operation on it. The pool decides; this module makes each
//! decision durable (journal) before anyone is told, and does the host-side follow-up
//! (route removal, veth deletion).

pub mod audit;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};

use crate::datastore::{Datastore, PrefixClaim};
use crate::node::store::{Store, StoreError};
use vpcnet_netlink::{conntrack, link, route, RTPROT_VPCNET};
use vpcnet_pool::{AllocKey, Millis, PodMeta, Pool, PoolError, PoolEvent};
use vpcnet_proto::api::{codes, AgentStatus, Attachment, Reply};
use vpcnet_proto::naming;

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

/// Rounds of (fresh read, a few candidates) one grow tries before giving up for now.
const CLAIM_ROUNDS: u32 = 4;

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
            eprintln!(
                "vpcnetd: cannot persist pool change ({} events): {e}",
                evs.len()
            );
            return Err(e);
        }
        if self.store.needs_compaction() {
            // The events are durable in the journal already; a failed compaction only
            // leaves the journal longer. Retried after the next change.
            if let Err(e) = self.store.compact(&self.pool) {
                eprintln!("vpcnetd: compacting state: {e} (retrying later)");
            }
        }
        Ok(out)
    }
}

/// Removes every conntrack entry of released address `ip`, in the background (a dump of the
/// node's table can take a while and DEL should not wait for it).
///
/// **Invariant**: once an address is released, no connection-tracking entry of its old pod
/// survives to steer traffic of the pod that gets the address next. The flush finishes within
/// milliseconds, far inside the cooldown (`--ip-cooldown`, 30 s) that must pass before the
/// address is handed out again; an address released as unused (a failed ADD) never carried
/// a packet.
pub fn flush_conntrack(ip: Ipv4Addr) {
    tokio::task::spawn_blocking(move || match conntrack::flush_address(ip.into()) {
        Ok(0) => {}
        Ok(n) => eprintln!("vpcnetd: flushed {n} conntrack entries of {ip}"),
        Err(e) => eprintln!("vpcnetd: flushing conntrack entries of {ip}: {e}"),
    });
}

/// The message of a request that failed because its change could not be journalled.
pub fn persist_error(e: &StoreError) -> Reply {
    let msg = if e.is_disk_full() {
        format!("disk full: cannot record the change: {e}")
    } else {
        format!("cannot record the change: {e}")
    };
    Reply::error(codes::IO, msg)
}

/// What the agent reports as degraded, by area.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: bool,
    pub degraded: BTreeMap<&'static str, String>,
    pub mtu: Option<u32>,
}

#[derive(Debug)]
pub struct Node<D> {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub state: Mutex<State>,
    pub health: Mutex<Health>,
    pub datastore: D,
    pub net: rtnetlink::Handle,
    /// Host veths to delete in the background (by ifindex, so a re-created veth of the same
    /// name is never hit).
    pub reaper: mpsc::UnboundedSender<u32>,
    /// When the last CNI request came: the reaper deletes veths when the node is quiet.
    pub activity: std::sync::Arc<crate::loops::reap::Activity>,
    /// Wakes the warm-pool loop after a change.
    pub wake: Notify,
    /// One prefix claim at a time.
    pub claim_lock: tokio::sync::Mutex<()>,
    /// Where plugins hold their in-flight ADD locks ([`vpcnet_proto::inflight`]).
    pub inflight_dir: std::path::PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would have aborted the process (panic = abort in
    // release); in debug builds take the data as it is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<D: Datastore> Node<D> {
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    pub fn set_degraded(&self, area: &'static str, msg: Option<String>) {
        let mut h = self.health();
        match msg {
            Some(m) => {
                h.degraded.insert(area, m);
            }
            None => {
                h.degraded.remove(area);
            }
        }
    }

    fn try_assign(
        &self,
        key: &AllocKey,
        meta: &PodMeta,
    ) -> Result<Result<(Ipv4Addr, bool), PoolError>, StoreError> {
        let now = now_ms();
        self.state()
            .change(|pool| match pool.assign(key.clone(), meta.clone(), now) {
                Ok((ip, ev)) => (Ok((ip, ev.is_none())), ev.into_iter().collect()),
                Err(e) => (Err(e), Vec::new()),
            })
    }

    /// ADD. Served from the warm pool; only when it is empty does the caller wait for a claim.
    pub async fn assign(&self, key: AllocKey, meta: PodMeta) -> Reply {
        self.activity.touch();
        let mut grew = false;
        loop {
            let attempt = match self.try_assign(&key, &meta) {
                Ok(r) => r,
                Err(e) => return persist_error(&e),
            };
            match attempt {
                Ok((ip, existing)) => {
                    self.wake.notify_one();
                    let mtu = self.health().mtu;
                    return Reply::Assigned { ip, existing, mtu };
                }
                Err(PoolError::Exhausted { .. }) if !grew => {
                    grew = true;
                    if let Err(msg) = self.claim_prefixes(1, true).await {
                        return Reply::error(
                            codes::TRY_AGAIN_LATER,
                            format!("no free address: {msg}"),
                        );
                    }
                }
                Err(e) => return Reply::error(codes::TRY_AGAIN_LATER, e.to_string()),
            }
        }
    }

    /// DEL: release, remove the host route, schedule the veth's deletion. Idempotent.
    /// `unused` (a failed ADD's new address): free at once instead of cooling down.
    pub async fn release(&self, key: &AllocKey, unused: bool) -> Reply {
        self.activity.touch();
        let now = now_ms();
        let released = self.state().change(|pool| {
            let key = resolve(pool, key);
            let ev = if unused {
                pool.release_unused(&key, now)
            } else {
                pool.release(&key, now)
            };
            let ip = match &ev {
                Some(PoolEvent::Released { ip, .. }) => Some(*ip),
                _ => None,
            };
            (ip, ev.into_iter().collect())
        });
        let ip = match released {
            Ok(ip) => ip,
            // Not released: the allocation stays (and so do its route and veth) until a
            // DEL can be recorded; the runtime retries DEL.
            Err(e) => return persist_error(&e),
        };
        self.wake.notify_one();
        self.teardown(ip, &naming::host_veth_name(&key.container_id, &key.ifname))
            .await;
        Reply::Released { ip }
    }

    /// Removes our host route for `ip` and queues `host_veth` for deletion.
    pub async fn teardown(&self, ip: Option<Ipv4Addr>, host_veth: &str) {
        // Only a link that proves to be ours (name-derived MAC) is deleted, and only a route
        // through it (or, when it is gone, the route the plugin made) is removed.
        let index = match link::get_by_name(&self.net, host_veth).await {
            Ok(Some(l)) if naming::is_our_host_veth(&l.name, l.mac) => Some(l.index),
            Ok(Some(_)) => {
                eprintln!("vpcnetd: {host_veth} is not a veth vpcnet made (MAC): left alone");
                return;
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("vpcnetd: looking up {host_veth}: {e}");
                None
            }
        };
        if let Some(ip) = ip {
            let r = route::RouteV4 {
                dst: ip,
                dst_len: 32,
                gateway: None,
                oif: index,
                protocol: RTPROT_VPCNET,
                scope: route::RT_SCOPE_LINK,
                kind: route::RTN_UNICAST,
                table: route::RT_TABLE_MAIN,
            };
            if let Err(e) = route::delete(&self.net, &r).await {
                eprintln!("vpcnetd: deleting route {ip}/32: {e}");
            }
            flush_conntrack(ip);
        }
        if let Some(index) = index {
            let _ = self.reaper.send(index);
        }
    }

    pub fn get(&self, key: &AllocKey) -> Reply {
        let st = self.state();
        Reply::Allocation {
            allocation: st.pool.get(&resolve(&st.pool, key)).cloned(),
        }
    }

    /// GC: releases every allocation of `network` the runtime no longer lists.
    pub async fn gc(&self, network: &str, valid: &[Attachment]) -> Reply {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let now = now_ms();
        let released = self.state().change(|pool| {
            let stale: Vec<AllocKey> = pool
                .allocations()
                .filter(|a| {
                    a.key.network == network
                        && !valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str()))
                })
                .map(|a| a.key.clone())
                .collect();
            let mut evs = Vec::new();
            let mut out = Vec::new();
            for key in stale {
                if let Some(ev) = pool.release(&key, now) {
                    if let PoolEvent::Released { ip, .. } = &ev {
                        out.push((*ip, key));
                    }
                    evs.push(ev);
                }
            }
            (out, evs)
        });
        let released: Vec<(Ipv4Addr, AllocKey)> = match released {
            Ok(r) => r,
            Err(e) => return persist_error(&e),
        };
        for (ip, key) in &released {
            self.teardown(Some(*ip), &naming::key_host_veth(key)).await;
        }
        self.wake.notify_one();
        Reply::Collected {
            released: released.into_iter().map(|(ip, _)| ip).collect(),
        }
    }

    pub fn status(&self, with_allocations: bool) -> AgentStatus {
        let now = now_ms();
        let st = self.state();
        let stats = st.pool.stats(now);
        let max_pods = st.pool.config().max_pods;
        let h = self.health();
        // Growing needs a prefix of the VPC this node does not hold yet (other nodes' claims
        // are only learnt on a claim attempt: that is what the "pool" degradation records).
        let can_grow =
            !h.degraded.contains_key("pool") && st.pool.unheld_prefixes().next().is_some();
        AgentStatus {
            node: self.name.clone(),
            datastore: self.datastore.name().to_string(),
            ready: h.ready,
            // A node at max-pods is full, not broken: STATUS must not mark its network
            // NotReady for that (the scheduler already stops at max-pods), so max-pods is
            // not part of this.
            can_assign: stats.available > 0 || can_grow,
            degraded: h
                .degraded
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect(),
            stats,
            max_pods,
            prefixes: st.pool.prefixes(now),
            allocations: with_allocations.then(|| {
                let mut v: Vec<_> = st.pool.allocations().cloned().collect();
                v.sort_by_key(|a| a.ip);
                v
            }),
        }
    }

    /// Claims up to `want` prefixes from the datastore into the pool. Returns how many it
    /// got; an error (with a message for the user) when it got none.
    pub async fn grow(&self, want: u32) -> Result<u32, String> {
        self.claim_prefixes(want, false).await
    }

    /// [`Node::grow`]; with `only_if_empty` (the ADD path) it claims nothing when an address
    /// has come free meanwhile (another ADD or the warm loop grew the pool while this one
    /// waited for the claim lock). The warm loop must not take that shortcut: it grows while
    /// addresses are still available (warm targets).
    async fn claim_prefixes(&self, want: u32, only_if_empty: bool) -> Result<u32, String> {
        let _g = self.claim_lock.lock().await;
        let per_round = usize::try_from(want).unwrap_or(1).saturating_mul(4).max(8);
        let mut got = 0;
        let mut lost = 0u32;
        // Invariant (issue 10): a lost race means "try another", never "exhausted". Each round
        // reads the claims (round 0: `list`, the datastore's cache where it has one, which may
        // lag; later rounds, after lost races: `list_fresh`) and tries candidates spread over
        // the VPC from a point derived from this node's name (so N nodes starting together
        // rarely pick the same prefix); "VPC exhausted" is reported only when a fresh read
        // (`list_fresh`, never a cache) shows no free prefix.
        for round in 0..CLAIM_ROUNDS {
            let mut fresh = false;
            let mut taken: HashSet<ipnetwork::Ipv4Network> = HashSet::new();
            let mut candidates = Vec::new();
            for read in 0..2 {
                // Round 0 may use the cached view; a later round follows a round that lost
                // every try, i.e. the view was stale: read afresh.
                let listed = if read == 0 && round == 0 {
                    self.datastore.list().await
                } else {
                    fresh = true;
                    self.datastore.list_fresh().await
                };
                taken = match listed {
                    Ok(claims) => claims.into_iter().map(|c| c.prefix).collect(),
                    Err(e) => {
                        let msg = e.to_string();
                        self.set_degraded("datastore", Some(msg.clone()));
                        return if got > 0 { Ok(got) } else { Err(msg) };
                    }
                };
                candidates = {
                    let st = self.state();
                    // Someone else may have grown the pool while we waited for the claim lock.
                    if round == 0 && only_if_empty && st.pool.stats(now_ms()).available > 0 {
                        return Ok(0);
                    }
                    let seed = if self.datastore.shared() {
                        naming::claim_seed(&self.name, round)
                    } else {
                        0
                    };
                    st.pool.claim_candidates(&taken, seed, per_round)
                };
                if !candidates.is_empty() || got > 0 || fresh {
                    break;
                }
                // No free prefix in the (possibly cached) view: prove it with a fresh read
                // before calling the VPC exhausted.
            }
            if candidates.is_empty() {
                debug_assert!(fresh || got > 0);
                self.set_degraded("datastore", None);
                if got > 0 {
                    break;
                }
                let msg = self.exhausted_message(taken.len());
                self.set_degraded("pool", Some(msg.clone()));
                return Err(msg);
            }
            for prefix in candidates {
                if got >= want {
                    break;
                }
                let claim = PrefixClaim {
                    prefix,
                    node: self.name.clone(),
                    node_ip: self.ip,
                    claimed_at: now_ms(),
                };
                let started = std::time::Instant::now();
                let claimed = self.datastore.claim(&claim).await;
                crate::obs::metrics::get().claim_observed(started.elapsed(), &claimed);
                match claimed {
                    Ok(true) => {
                        let now = now_ms();
                        let added =
                            self.state()
                                .change(|pool| match pool.add_prefix(prefix, now) {
                                    Ok(ev) => (Ok(()), vec![ev]),
                                    Err(e) => (Err(e), Vec::new()),
                                });
                        match added {
                            Ok(Ok(())) => got += 1,
                            Ok(Err(e)) => {
                                eprintln!("vpcnetd: claimed {prefix} but pool refused it: {e}")
                            }
                            // Claimed but not recorded: not ours to use. The claim is released
                            // by the next claims reconcile (or adopted at the next start).
                            Err(e) => {
                                let msg = format!("claimed {prefix} but cannot record it: {e}");
                                return if got > 0 { Ok(got) } else { Err(msg) };
                            }
                        }
                    }
                    Ok(false) => lost += 1,
                    Err(e) => {
                        let msg = e.to_string();
                        self.set_degraded("datastore", Some(msg.clone()));
                        return if got > 0 { Ok(got) } else { Err(msg) };
                    }
                }
            }
            if got > 0 {
                break;
            }
        }
        self.set_degraded("datastore", None);
        if got == 0 {
            // Every try lost a race, yet the last read showed free prefixes: contention, not
            // exhaustion. Not degraded; the caller retries (ADD: code 11, try again).
            return Err(format!(
                "lost {lost} prefix claim races to other nodes in {CLAIM_ROUNDS} rounds; \
                 free prefixes remain, try again"
            ));
        }
        self.set_degraded("pool", None);
        Ok(got)
    }

    /// "VPC exhausted", with the figures that prove it (a fresh read of `taken_by_nodes`).
    fn exhausted_message(&self, taken_by_nodes: usize) -> String {
        let st = self.state();
        let cfg = st.pool.config();
        let vpc: Vec<String> = cfg.vpc_cidrs.iter().map(|c| c.to_string()).collect();
        format!(
            "VPC exhausted: every /{} prefix of {} is claimed (--vpc-cidr): {} prefixes exist, \
             {taken_by_nodes} are claimed by nodes ({} by this one)",
            cfg.prefix_len,
            vpc.join(", "),
            st.pool.vpc_prefix_count(),
            st.pool.held_prefixes().count(),
        )
    }

    /// Gives a wholly free prefix back: out of the pool first (durably), then the datastore.
    pub async fn shrink(&self, prefix: ipnetwork::Ipv4Network) -> Result<(), String> {
        let _g = self.claim_lock.lock().await;
        let now = now_ms();
        self.state()
            .change(|pool| match pool.remove_prefix(prefix, now) {
                Ok(ev) => (Ok(()), vec![ev]),
                Err(e) => (Err(e.to_string()), Vec::new()),
            })
            .map_err(|e| e.to_string())??;
        self.datastore
            .release(prefix, &self.name)
            .await
            .map_err(|e| e.to_string())
    }

    /// Makes the pool and the datastore agree on which prefixes are ours; returns the claims
    /// it listed (every node's), for the peer routes. Runs at start and on every peer sync.
    ///
    /// * a prefix the pool holds and the datastore lists as ours: fine;
    /// * held, but listed as another node's: conflict — dropped from the pool if wholly free,
    ///   otherwise reported as degraded (`claims`) and kept (pods use it);
    /// * held, not listed (the claim lapsed, e.g. a long datastore outage outlived the lease):
    ///   claimed again, create-if-absent; losing that race is the conflict above next round;
    /// * listed as ours, not held: at start (`adopt`) a crash fell between claim and journal,
    ///   so it is adopted; later a release after shrink failed, so it is released again.
    ///
    /// Holds the claim lock so it never interleaves with grow or shrink. Acts only on a fresh
    /// read (`list_fresh`) whenever the (possibly cached) `list` disagrees with the pool.
    pub async fn reconcile_claims(&self, adopt: bool) -> Result<Vec<PrefixClaim>, String> {
        let _g = self.claim_lock.lock().await;
        let mut claims = self.datastore.list().await.map_err(|e| e.to_string())?;
        // `list` may answer from a watch-fed cache a moment behind (our own claim or release
        // not seen yet, another node's release not seen yet): whenever it disagrees with the
        // pool, act only on a fresh read. In agreement (the steady state) nothing is asked.
        let listed_ours: HashSet<_> = claims
            .iter()
            .filter(|c| c.node == self.name)
            .map(|c| c.prefix)
            .collect();
        let pool_held: HashSet<_> = self.state().pool.held_prefixes().collect();
        if listed_ours != pool_held {
            claims = self
                .datastore
                .list_fresh()
                .await
                .map_err(|e| e.to_string())?;
        }
        let ours: HashSet<_> = claims
            .iter()
            .filter(|c| c.node == self.name)
            .map(|c| c.prefix)
            .collect();
        let others: BTreeMap<_, _> = claims
            .iter()
            .filter(|c| c.node != self.name)
            .map(|c| (c.prefix, c.node.clone()))
            .collect();
        let held: Vec<_> = self.state().pool.held_prefixes().collect();
        let mut conflicts = Vec::new();
        for p in &held {
            if ours.contains(p) {
                continue;
            }
            let owner = match others.get(p) {
                Some(owner) => Some(owner.clone()),
                None => {
                    let claim = PrefixClaim {
                        prefix: *p,
                        node: self.name.clone(),
                        node_ip: self.ip,
                        claimed_at: now_ms(),
                    };
                    match self.datastore.claim(&claim).await {
                        Ok(true) => {
                            eprintln!("vpcnetd: re-claimed {p}: its claim had lapsed");
                            None
                        }
                        Ok(false) => Some("another node".to_string()),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            };
            if let Some(owner) = owner {
                let now = now_ms();
                let dropped = matches!(
                    self.state()
                        .change(|pool| match pool.remove_prefix(*p, now) {
                            Ok(ev) => (true, vec![ev]),
                            Err(_) => (false, Vec::new()),
                        }),
                    Ok(true)
                );
                if dropped {
                    eprintln!("vpcnetd: dropped {p} from the pool: claimed by {owner}");
                } else {
                    conflicts.push(format!("prefix {p} is in use here but claimed by {owner}"));
                }
            }
        }
        for p in ours {
            if held.contains(&p) {
                continue;
            }
            // Outside today's --vpc-cidr or misaligned (or not recordable): give it back.
            let now = now_ms();
            let adopted = adopt
                && matches!(
                    self.state().change(|pool| match pool.add_prefix(p, now) {
                        Ok(ev) => (true, vec![ev]),
                        Err(_) => (false, Vec::new()),
                    }),
                    Ok(true)
                );
            if !adopted {
                if let Err(e) = self.datastore.release(p, &self.name).await {
                    return Err(e.to_string());
                }
            }
        }
        self.set_degraded(
            "claims",
            (!conflicts.is_empty()).then(|| conflicts.join("; ")),
        );
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Datastore, DatastoreError};
    use crate::node::store::Store;
    use vpcnet_pool::PoolConfig;

    /// `list` answers a stale view (every prefix of the VPC claimed by another node, as a
    /// lagging cache might); `list_fresh` answers the truth (`fresh`).
    struct StaleList {
        stale: Vec<PrefixClaim>,
        fresh: Mutex<Vec<PrefixClaim>>,
    }

    impl Datastore for StaleList {
        fn name(&self) -> &'static str {
            "stale"
        }
        async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
            let mut f = lock(&self.fresh);
            if f.iter().any(|c| c.prefix == claim.prefix) {
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
        Node {
            name: "me".into(),
            ip: None,
            state: Mutex::new(State { pool, store }),
            health: Mutex::new(Health::default()),
            datastore: ds,
            net,
            reaper,
            wake: Notify::new(),
            claim_lock: tokio::sync::Mutex::new(()),
            inflight_dir: dir.join("inflight"),
            activity: std::sync::Arc::new(crate::loops::reap::Activity::default()),
        }
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
            },
            "fresh-free",
        )
        .await;
        assert_eq!(n.grow(1).await, Ok(1), "the fresh read shows a free prefix");
        assert_eq!(
            n.state().pool.held_prefixes().collect::<Vec<_>>(),
            vec!["10.0.0.16/28".parse::<ipnetwork::Ipv4Network>().expect("p")]
        );

        let n = node(
            StaleList {
                stale: Vec::new(),
                fresh: Mutex::new(all),
            },
            "fresh-full",
        )
        .await;
        // The stale view shows free prefixes: they are tried and lost; the next round reads
        // afresh, which proves exhaustion.
        let e = n.grow(1).await.expect_err("nothing free");
        assert!(
            e.contains("VPC exhausted") && e.contains("2 are claimed"),
            "{e}"
        );

        let n = node(
            StaleList {
                stale: vec![other("10.0.0.0/28"), other("10.0.0.16/28")],
                fresh: Mutex::new(vec![other("10.0.0.0/28"), other("10.0.0.16/28")]),
            },
            "all-taken",
        )
        .await;
        let e = n.grow(1).await.expect_err("exhausted");
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
}
