//! The CNI operations on a node, as the socket server calls them: ADD (assign), DEL
//! (release), CHECK (get), GC and STATUS. Each changes the pool through
//! [`State::change`](super::State::change), so nothing is answered before it is durable.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::{now_ms, resolve, Area, Node, NodeError};
use crate::datastore::Datastore;
use vpcnet_pool::{AllocKey, Allocation, PodMeta, PoolError, PoolEvent};
use vpcnet_proto::api::{AgentStatus, Attachment};
use vpcnet_proto::naming;

/// What an ADD gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    /// The attachment held this address already (a repeated ADD).
    pub existing: bool,
    /// The node's uplink MTU, for a netconf that names none.
    pub mtu: Option<u32>,
}

impl<D: Datastore> Node<D> {
    fn try_assign(&self, key: &AllocKey, meta: &PodMeta) -> Result<(Ipv4Addr, bool), NodeError> {
        let now = now_ms();
        let r = self
            .state()
            .change(|pool| match pool.assign(key.clone(), meta.clone(), now) {
                Ok((ip, ev)) => (Ok((ip, ev.is_none())), ev.into_iter().collect()),
                Err(e) => (Err(e), Vec::new()),
            })?;
        Ok(r?)
    }

    /// ADD. Served from the warm pool; only when it is empty does the caller wait for a claim.
    pub async fn assign(&self, key: AllocKey, meta: PodMeta) -> Result<Assigned, NodeError> {
        self.activity.touch();
        let mut grew = false;
        loop {
            match self.try_assign(&key, &meta) {
                Ok((ip, existing)) => {
                    self.wake_warm();
                    let mtu = self.health().mtu;
                    return Ok(Assigned { ip, existing, mtu });
                }
                Err(NodeError::Pool(PoolError::Exhausted { .. })) if !grew => {
                    grew = true;
                    if let Err(e) = self.claim_prefixes(1, true).await {
                        return Err(NodeError::NoFreeAddress(Box::new(e)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// DEL: release, remove the host route, schedule the veth's deletion. Idempotent.
    /// `unused` (a failed ADD's new address): free at once instead of cooling down.
    /// Not recordable: the allocation stays (and so do its route and veth) until a DEL can
    /// be recorded; the runtime retries DEL.
    pub async fn release(
        &self,
        key: &AllocKey,
        unused: bool,
    ) -> Result<Option<Ipv4Addr>, NodeError> {
        self.activity.touch();
        let now = now_ms();
        let ip = self.state().change(|pool| {
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
        })?;
        self.wake_warm();
        self.teardown(ip, &naming::host_veth_name(&key.container_id, &key.ifname))
            .await;
        Ok(ip)
    }

    /// CHECK: the allocation `key` holds, if any.
    pub fn get(&self, key: &AllocKey) -> Option<Allocation> {
        let st = self.state();
        st.pool.get(&resolve(&st.pool, key)).cloned()
    }

    /// GC: releases every allocation of `network` the runtime no longer lists; returns the
    /// addresses released.
    pub async fn gc(
        &self,
        network: &str,
        valid: &[Attachment],
    ) -> Result<Vec<Ipv4Addr>, NodeError> {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let released = {
            let mut st = self.state();
            let stale: Vec<AllocKey> = st
                .pool
                .allocations()
                .filter(|a| {
                    a.key.network == network
                        && !valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str()))
                })
                .map(|a| a.key.clone())
                .collect();
            st.release_all(stale, now_ms())?
        };
        for (ip, key) in &released {
            self.teardown(Some(*ip), &naming::key_host_veth(key)).await;
        }
        self.wake_warm();
        Ok(released.into_iter().map(|(ip, _)| ip).collect())
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
            !h.degraded.contains_key(&Area::Pool) && st.pool.unheld_prefixes().next().is_some();
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
            // Filled by the server from the policy loop (crate::netpol).
            network_policy: None,
        }
    }
}
