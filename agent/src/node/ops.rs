//! The CNI operations on a node, as the socket server calls them: ADD (assign), DEL
//! (release), CHECK (get), GC and STATUS. Each changes the pool through
//! [`State::change`](super::State::change), so nothing is answered before it is durable.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::store::FamilyEvent;
use super::{assign_both, now_ms, resolve, Area, Family, Node, NodeError};
use crate::datastore::Datastore;
use vpcnet_pool::{AllocKey, Allocation, Allocation6, PodMeta, PoolError, PoolEvent, PoolEvent6};
use vpcnet_proto::api::{AgentStatus, Attachment, Pool6Status};
use vpcnet_proto::naming;

use tokio::sync::oneshot;

/// The error of the family whose pool refused.
fn family_error((fam, e): (Family, PoolError)) -> NodeError {
    match fam {
        Family::V4 => NodeError::Pool(e),
        Family::V6 => NodeError::Pool6(e),
    }
}

/// What an ADD gets: one address per family the node serves (docs/dual-stack.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    /// The attachment held this address already (a repeated ADD).
    pub existing: bool,
    /// The node's uplink MTU, for a netconf that names none.
    pub mtu: Option<u32>,
}

type Ips = (Option<Ipv4Addr>, Option<Ipv6Addr>);

type AssignResult = Result<(Ips, bool), NodeError>;

/// An ADD waiting in [`Node`]'s queue for the batch that assigns it.
#[derive(Debug)]
pub struct QueuedAssign {
    key: AllocKey,
    meta: PodMeta,
    reply: oneshot::Sender<AssignResult>,
}

/// Assigns the queued ADDs if the leader's future is dropped before it did (the batch is
/// synchronous, so it runs here in full): no follower is left waiting for a leader that is
/// gone.
struct Leader<'a, D: Datastore> {
    node: &'a Node<D>,
    done: bool,
}

impl<D: Datastore> Leader<'_, D> {
    fn run(&mut self) {
        self.done = true;
        let batch = std::mem::take(&mut *self.node.assign_queue());
        self.node.assign_batch(batch);
    }
}

impl<D: Datastore> Drop for Leader<'_, D> {
    fn drop(&mut self) {
        if !self.done {
            self.run();
        }
    }
}

impl<D: Datastore> Node<D> {
    /// One address of each family present, in one durable change ([`assign_both`]).
    fn try_assign(&self, key: &AllocKey, meta: &PodMeta) -> AssignResult {
        let now = now_ms();
        let r = self.state().change_both(|pool, pool6| {
            match assign_both(pool, pool6, key.clone(), meta.clone(), now) {
                Ok((ips, evs)) => (Ok((ips, evs.is_empty())), evs),
                Err(e) => (Err(e), Vec::new()),
            }
        })?;
        r.map_err(family_error)
    }

    /// [`Node::try_assign`], group-committed (issue 14): the first ADD to find the queue
    /// empty leads; it yields once, so that the requests ready at the same moment (parallel
    /// ADDs) queue behind it, then assigns the whole queue with one journal sync
    /// ([`State::change_both_many`](super::State::change_both_many)); the others wait for
    /// their answer. A lone ADD pays one pass through the scheduler for it.
    async fn try_assign_together(&self, key: &AllocKey, meta: &PodMeta) -> AssignResult {
        let (reply, answer) = oneshot::channel();
        let leads = {
            let mut q = self.assign_queue();
            q.push(QueuedAssign {
                key: key.clone(),
                meta: meta.clone(),
                reply,
            });
            q.len() == 1
        };
        if leads {
            let mut leader = Leader {
                node: self,
                done: false,
            };
            tokio::task::yield_now().await;
            leader.run();
        }
        match answer.await {
            Ok(r) => r,
            // Never: every queued ADD is answered by its batch. Should it happen, this ADD
            // is still served, alone.
            Err(_) => self.try_assign(key, meta),
        }
    }

    /// Assigns `batch` in order, durably with one sync, and answers each. If the journal
    /// write fails, every ADD of the batch fails with that error (nothing of the batch is
    /// kept: see [`State::change_both_many`](super::State::change_both_many)).
    fn assign_batch(&self, batch: Vec<QueuedAssign>) {
        if batch.is_empty() {
            return;
        }
        let now = now_ms();
        let (asks, replies): (Vec<(AllocKey, PodMeta)>, Vec<oneshot::Sender<AssignResult>>) = batch
            .into_iter()
            .map(|q| ((q.key, q.meta), q.reply))
            .unzip();
        let done =
            self.state()
                .change_both_many(asks, |pool, pool6, (key, meta)| {
                    match assign_both(pool, pool6, key, meta, now) {
                        Ok((ips, evs)) => (Ok((ips, evs.is_empty())), evs),
                        Err(e) => (Err(e), Vec::new()),
                    }
                });
        match done {
            Ok(results) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r.map_err(family_error));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(NodeError::Persist(e.copy())));
                }
            }
        }
    }

    /// ADD. Served from the warm pool; only when a family's pool is empty does the caller
    /// wait for a claim (of that family).
    pub async fn assign(&self, key: AllocKey, meta: PodMeta) -> Result<Assigned, NodeError> {
        self.activity.touch();
        let mut grew = [false, false];
        loop {
            match self.try_assign_together(&key, &meta).await {
                Ok(((ip, ip6), existing)) => {
                    self.wake_warm();
                    let mtu = self.health().mtu;
                    return Ok(Assigned {
                        ip,
                        ip6,
                        existing,
                        mtu,
                    });
                }
                Err(NodeError::Pool(PoolError::Exhausted { .. })) if !grew[0] => {
                    grew[0] = true;
                    if let Err(e) = self.claim_prefixes(Family::V4, 1, true).await {
                        return Err(NodeError::NoFreeAddress(Box::new(e)));
                    }
                }
                Err(NodeError::Pool6(PoolError::Exhausted { .. })) if !grew[1] => {
                    grew[1] = true;
                    if let Err(e) = self.claim_prefixes(Family::V6, 1, true).await {
                        return Err(NodeError::NoFreeAddress(Box::new(e)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// DEL: release both families (one durable record), remove the host routes (`/32`,
    /// `/128`), schedule the veth's deletion. Idempotent.
    /// `unused` (a failed ADD's new address): free at once instead of cooling down.
    /// Not recordable: the allocation stays (and so do its routes and veth) until a DEL can
    /// be recorded; the runtime retries DEL.
    pub async fn release(&self, key: &AllocKey, unused: bool) -> Result<Ips, NodeError> {
        self.activity.touch();
        let now = now_ms();
        let ips = self.state().change_both(|pool, pool6| {
            let key = resolve(pool, key);
            let mut evs = Vec::new();
            let ev = if unused {
                pool.release_unused(&key, now)
            } else {
                pool.release(&key, now)
            };
            let ip = match &ev {
                Some(PoolEvent::Released { ip, .. }) => Some(*ip),
                _ => None,
            };
            evs.extend(ev.map(FamilyEvent::V4));
            let ev6 = pool6.and_then(|p6| {
                if unused {
                    p6.release_unused(&key, now)
                } else {
                    p6.release(&key, now)
                }
            });
            let ip6 = match &ev6 {
                Some(PoolEvent6::Released { ip, .. }) => Some(*ip),
                _ => None,
            };
            evs.extend(ev6.map(FamilyEvent::V6));
            ((ip, ip6), evs)
        })?;
        self.wake_warm();
        self.teardown(
            ips.0,
            ips.1,
            &naming::host_veth_name(&key.container_id, &key.ifname),
        )
        .await;
        Ok(ips)
    }

    /// CHECK: the allocation of each family `key` holds, if any.
    pub fn get(&self, key: &AllocKey) -> (Option<Allocation>, Option<Allocation6>) {
        let st = self.state();
        let key = resolve(&st.pool, key);
        (
            st.pool.get(&key).cloned(),
            st.pool6.as_ref().and_then(|p| p.get(&key)).cloned(),
        )
    }

    /// GC: releases every allocation (both families, one record) of `network` the runtime
    /// no longer lists; returns the addresses released per family.
    pub async fn gc(
        &self,
        network: &str,
        valid: &[Attachment],
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), NodeError> {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let released = {
            let mut st = self.state();
            let stale = |k: &AllocKey| {
                k.network == network
                    && !valid.contains(&(k.container_id.as_str(), k.ifname.as_str()))
            };
            let mut keys: Vec<AllocKey> = st
                .pool
                .allocations()
                .map(|a| &a.key)
                .chain(
                    st.pool6
                        .iter()
                        .flat_map(|p| p.allocations().map(|a| &a.key)),
                )
                .filter(|k| stale(k))
                .cloned()
                .collect();
            keys.sort();
            keys.dedup();
            st.release_all(keys, now_ms())?
        };
        for (key, ip, ip6) in &released {
            self.teardown(*ip, *ip6, &naming::key_host_veth(key)).await;
        }
        self.wake_warm();
        Ok((
            released.iter().filter_map(|r| r.1).collect(),
            released.iter().filter_map(|r| r.2).collect(),
        ))
    }

    pub fn status(&self, with_allocations: bool) -> AgentStatus {
        let now = now_ms();
        let st = self.state();
        let stats = st.pool.stats(now);
        let max_pods = st.pool.config().max_pods;
        let h = self.health();
        // Growing needs a prefix of the VPC this node does not hold yet (other nodes' claims
        // are only learnt on a claim attempt: that is what the "pool" degradation records).
        // Every family the node serves must be able to give an address (an ADD takes one of
        // each); an IPv6-only node has an empty IPv4 pool that never grows, and that is fine.
        let can_assign = Family::BOTH.into_iter().filter(|f| st.serves(*f)).all(|f| {
            st.available(f, now) > 0 || (!h.degraded.contains_key(&Area::Pool) && st.can_grow(f))
        });
        AgentStatus {
            node: self.name.clone(),
            datastore: self.datastore.name().to_string(),
            ready: h.ready,
            // A node at max-pods is full, not broken: STATUS must not mark its network
            // NotReady for that (the scheduler already stops at max-pods), so max-pods is
            // not part of this.
            can_assign,
            degraded: h
                .degraded
                .iter()
                .map(|(k, v)| format!("{}: {v}", k.as_str()))
                .chain(h.waiting.iter().map(|w| format!("pool: {w}")))
                .collect(),
            stats,
            max_pods,
            prefixes: st.pool.prefixes(now),
            allocations: with_allocations.then(|| {
                let mut v: Vec<_> = st.pool.allocations().cloned().collect();
                v.sort_by_key(|a| a.ip);
                v
            }),
            pool6: st.pool6.as_ref().map(|p6| Pool6Status {
                stats: p6.stats(now),
                prefixes: p6.prefixes(now),
                allocations: with_allocations.then(|| {
                    let mut v: Vec<_> = p6.allocations().cloned().collect();
                    v.sort_by_key(|a| a.ip);
                    v
                }),
            }),
            // Filled by the server from the policy loop (crate::netpol).
            network_policy: None,
        }
    }
}
