//! Reconcile the pool with the host: an allocation whose host veth is gone is released; a
//! host veth or /32 (IPv6: /128) route of ours with no allocation is removed; an allocation whose host veth
//! is there but whose /32 host route is missing (deleted by hand or by another program) gets
//! its route back, or the pod would stay unreachable until it is deleted.
//!
//! Restoring is safe against DEL: a release takes the address out of the pool *before* it
//! deletes the route, and the kernel is listed before the pool is read, so a route seen missing
//! while its allocation is still in the pool was not removed by a DEL.
//!
//! Ordering makes this safe against ADDs in flight: the kernel is listed *before* the pool is
//! read, and an ADD takes its address before it creates its veth — so every veth seen already
//! has its allocation in the pool. An allocation whose ADD is still in flight (its plugin holds
//! the attachment's lock, [`vpcnet_proto::inflight`]) is left alone however old it is: the plugin may
//! be stalled between the agent's reply and creating its veth. `grace` still covers a plugin of
//! an older version, which holds no lock.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::datastore::Datastore;
use crate::node::host::{host_route6, is_host_route6_shape};
use crate::node::{now_ms, Node};
use vpcnet_netlink::{link, route, NetlinkError, RTPROT_VPCNET};
use vpcnet_pool::AllocKey;
use vpcnet_proto::inflight;
use vpcnet_proto::{attachment, naming};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub released: usize,
    pub veths_deleted: usize,
    pub routes_deleted: usize,
    pub routes_restored: usize,
}

impl Report {
    /// What the pass did, by metric label (`vpcnet_reconcile_actions_total{action}`).
    pub fn actions(&self) -> [(&'static str, usize); 4] {
        [
            ("released", self.released),
            ("veths_deleted", self.veths_deleted),
            ("routes_deleted", self.routes_deleted),
            ("routes_restored", self.routes_restored),
        ]
    }
}

pub async fn run<D: Datastore>(node: &Node<D>, grace_ms: u64) -> Result<Report, NetlinkError> {
    let links = link::list(node.net()).await?;
    let routes = route::list_v4(node.net(), Some(RTPROT_VPCNET)).await?;
    let routes6 = route::list_v6(node.net(), Some(RTPROT_VPCNET)).await?;
    let listed_at = now_ms();
    // Only links that carry our proof (name *and* name-derived MAC) count as ours.
    let ours: Vec<_> = links
        .iter()
        .filter(|l| naming::is_our_host_veth(&l.name, l.mac))
        .collect();
    let veths: HashSet<&str> = ours.iter().map(|l| l.name.as_str()).collect();
    // Retired veths (an ADD moved a DEL'd attachment's stale pair out of its way, issue 14)
    // are ours too, and never wanted: no allocation names them.
    let retired: Vec<_> = links
        .iter()
        .filter(|l| naming::is_our_retired_veth(&l.name, l.mac))
        .collect();
    let our_indexes: HashSet<u32> = ours.iter().chain(&retired).map(|l| l.index).collect();

    let mut report = Report::default();
    let (released, wanted_veths, owned_ips, unrouted) = {
        let mut st = node.state();
        // Every allocation of both families: (key, address, assigned at).
        let allocs: Vec<(AllocKey, IpAddr, u64)> = st
            .pool
            .allocations()
            .map(|a| (a.key.clone(), IpAddr::V4(a.ip), a.assigned_at))
            .chain(st.pool6.iter().flat_map(|p| {
                p.allocations()
                    .map(|a| (a.key.clone(), IpAddr::V6(a.ip), a.assigned_at))
            }))
            .collect();
        let mut stale: Vec<AllocKey> = allocs
            .iter()
            .filter(|(key, _, at)| {
                let veth = naming::key_host_veth(key);
                !veths.contains(veth.as_str())
                    && at.saturating_add(grace_ms) <= listed_at
                    && !inflight::is_in_flight(node.inflight_dir(), &veth)
            })
            .map(|(key, _, _)| key.clone())
            .collect();
        stale.sort();
        stale.dedup();
        let released = st.release_all(stale, listed_at);
        // Not recordable (disk full): release nothing this round; the pool is as before.
        let released = released.unwrap_or_else(|e| {
            tracing::error!("reconcile: not releasing allocations without a veth: {e}");
            Vec::new()
        });
        let gone: HashSet<&AllocKey> = released.iter().map(|(k, _, _)| k).collect();
        let left: Vec<_> = allocs
            .iter()
            .filter(|(k, _, _)| !gone.contains(k))
            .collect();
        let wanted: HashSet<String> = left
            .iter()
            .map(|(k, _, _)| naming::key_host_veth(k))
            .collect();
        let owned: HashSet<IpAddr> = left.iter().map(|(_, ip, _)| *ip).collect();
        // Allocations with their veth but without their host route (not while an ADD of
        // theirs may still be adding it): `/32` for IPv4, `/128` for IPv6.
        let unrouted: Vec<_> = left
            .iter()
            .filter_map(|(key, ip, at)| {
                let veth = naming::key_host_veth(key);
                let link = ours.iter().find(|l| l.name == veth)?;
                let routed = match ip {
                    IpAddr::V4(ip) => routes.iter().any(|r| {
                        attachment::is_host_route_shape(r)
                            && r.dst == *ip
                            && r.oif == Some(link.index)
                    }),
                    IpAddr::V6(ip) => routes6.iter().any(|r| {
                        is_host_route6_shape(r) && r.dst == *ip && r.oif == Some(link.index)
                    }),
                };
                (!routed
                    && at.saturating_add(grace_ms) <= listed_at
                    && !inflight::is_in_flight(node.inflight_dir(), &veth))
                .then_some((*ip, link.index, veth))
            })
            .collect();
        (released, wanted, owned, unrouted)
    };
    report.released = released.len();
    for (key, ip, ip6) in &released {
        if let Some(ip) = ip {
            node.queue_conntrack_flush(*ip);
        }
        if let Some(ip6) = ip6 {
            node.queue_conntrack_flush(*ip6);
        }
        tracing::info!(
            ip = ?ip,
            ip6 = ?ip6,
            container = %key.container_id,
            ifname = %key.ifname,
            "reconcile: released an allocation whose host veth is gone"
        );
    }
    for l in &retired {
        tracing::info!(veth = %l.name, "reconcile: deleting a retired veth");
        node.queue_veth_deletion(l.index);
        report.veths_deleted += 1;
    }
    for l in &ours {
        if !wanted_veths.contains(&l.name) {
            tracing::info!(veth = %l.name, "reconcile: deleting a veth without allocation");
            node.queue_veth_deletion(l.index);
            report.veths_deleted += 1;
        }
    }
    for r in &routes {
        // A pod route is ours only through one of our veths, whatever its protocol says.
        let pod_route =
            attachment::is_host_route_shape(r) && r.oif.is_some_and(|i| our_indexes.contains(&i));
        if pod_route
            && !owned_ips.contains(&IpAddr::V4(r.dst))
            && route::delete(node.net(), r).await?
        {
            tracing::info!(
                route = %format_args!("{}/32", r.dst),
                "reconcile: deleted a pod route without allocation"
            );
            report.routes_deleted += 1;
        }
    }
    for r in &routes6 {
        let pod_route = is_host_route6_shape(r) && r.oif.is_some_and(|i| our_indexes.contains(&i));
        if pod_route
            && !owned_ips.contains(&IpAddr::V6(r.dst))
            && route::delete_v6(node.net(), r).await?
        {
            tracing::info!(
                route = %format_args!("{}/128", r.dst),
                "reconcile: deleted a pod route without allocation"
            );
            report.routes_deleted += 1;
        }
    }
    for (ip, index, veth) in &unrouted {
        let added = match ip {
            IpAddr::V4(ip) => {
                route::add_route(node.net(), &attachment::host_route(*ip, Some(*index)), true).await
            }
            IpAddr::V6(ip) => {
                route::add_route_v6(node.net(), &host_route6(*ip, Some(*index)), true).await
            }
        };
        match added {
            Ok(()) => {
                tracing::warn!(%ip, %veth, "reconcile: restored a missing pod route");
                report.routes_restored += 1;
            }
            // The veth went away meanwhile (a DEL): nothing to restore.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::error!(%ip, %veth, "reconcile: could not restore the pod route: {e}")
            }
        }
    }
    if report.released > 0 {
        node.wake_warm();
    }
    Ok(report)
}
