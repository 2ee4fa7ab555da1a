//! Peer routing: direct routes to every other node's prefixes, like kindnet and flannel
//! host-gw, and an unreachable route for each prefix this node holds.
//!
//! * Another node's claim `prefix -> {node, nodeIP}` becomes `prefix via nodeIP proto 171`
//!   (main table, no oif: the kernel resolves the next hop, so nodes must share a link or the
//!   underlay must already route node IPs). A next hop the kernel cannot reach fails that one
//!   route; it is retried on the next round and reported as degraded area "peers".
//! * Both kinds go at a metric derived from the prefix ([`metric_of`]), not one for all.
//! * Each prefix in our pool (the pool, not the datastore, is the truth for our own prefixes)
//!   becomes `unreachable prefix proto 171`: a packet for an unassigned address of ours is
//!   refused here instead of following the default route back out and looping. Pod `/32`
//!   routes are more specific and win. With `--prefix-len 32` a prefix *is* one pod address
//!   and the unreachable route would collide with (and could replace) the pod's own
//!   `/32 dev vpcXXX` route, so none is installed then.
//!
//! What this module owns among the `proto 171` routes: every route shorter than /32, every
//! unreachable route and every route with a gateway ([`is_managed`]). The pods' `/32 dev
//! vpcXXX scope link` routes belong to the plugin and [`crate::loops::reconcile`].
//!
//! A full re-plan: list the claims (the datastore's watch-fed view: no request while it is in
//! sync) and our routes, compute the difference ([`plan`], pure), then add/replace what is
//! missing or moved and delete what is no longer wanted (a dead peer's claims are swept or
//! garbage-collected, so its routes are withdrawn). If the datastore cannot be listed, peer routes stay
//! as they are (a datastore outage must not cut pods off from each other); only our own
//! unreachable routes still follow the pool. Nothing is withdrawn at shutdown: routes stay
//! for the pods that keep running.
//!
//! Between re-plans (issue 10), with a datastore that streams [`ClaimDelta`]s (etcd,
//! Kubernetes): each delta changes at most one route ([`change_for`], pure): another node's
//! claim appears → `prefix via nodeIP` is added; it goes → exactly that route is deleted. A
//! cluster of N nodes where one claims costs each other node one route, not a re-plan of N.
//! The deltas already queued behind one go with it: their routes go to the kernel together,
//! many to one `sendmsg` ([`vpcnet_netlink::route_batch`]), and are logged in one
//! `peers: routes installed n=K routes=…` line.
//! A full re-plan runs only at start, when the datastore re-lists (etcd compaction, `410
//! Gone`, its long timer: [`ClaimDelta::Resync`], or this loop fell behind the deltas), every
//! `--peer-sync-interval` (which also reconciles our claims with the pool, never waiting for
//! the claim path: [`Node::reconcile_claims_nowait`]), and — from the view, routes only —
//! when the pool's prefixes change or a delta's route failed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tokio::time::Instant;

use crate::datastore::{ClaimDelta, Datastore, PrefixClaim};
use crate::node::{Area, Node};
use vpcnet_netlink::route_batch::{RouteBatch, RouteChange};
use vpcnet_netlink::{route, RTPROT_VPCNET};

/// How often the pool's held prefixes are compared with what the last round routed, so a
/// prefix the warm loop claims or releases gets its unreachable route promptly.
const POOL_POLL: Duration = Duration::from_millis(500);
/// A datastore list that takes longer counts as failed (routes kept, retried next round),
/// so a hung backend does not also stop our own routes from following the pool.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most deltas taken in one batch (their route changes go to the kernel
/// [`vpcnet_netlink::route_batch::PER_SEND`] to a `sendmsg`).
const MAX_BATCH: usize = 1024;
/// Least time between two rounds (a level-triggered watch that keeps firing must not spin).
const MIN_GAP: Duration = Duration::from_millis(100);

/// Where a prefix should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Another node's prefix: `via` its node IP.
    Via(Ipv4Addr),
    /// One of ours: `unreachable`.
    Unreachable,
}

/// Desired routes by prefix, plus notes on claims that could not be routed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<Ipv4Network, Target>,
    pub notes: Vec<String>,
}

fn normalize(p: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(p.network(), p.prefix()).unwrap_or(p)
}

/// The unreachable routes for the prefixes we hold (none for /32 prefixes, see module doc).
fn own_routes(held: &[Ipv4Network]) -> BTreeMap<Ipv4Network, Target> {
    held.iter()
        .map(|p| normalize(*p))
        .filter(|p| p.prefix() < 32)
        .map(|p| (p, Target::Unreachable))
        .collect()
}

/// The route another node's claim `c` asks for; `Err`: why it gets none (a note).
fn peer_route(
    c: &PrefixClaim,
    my_ip: Option<Ipv4Addr>,
    held: &[Ipv4Network],
) -> Result<(Ipv4Network, Target), String> {
    let IpNetwork::V4(prefix) = c.prefix else {
        return Err(format!(
            "{} is not IPv4 (routed by the IPv6 half)",
            c.prefix
        ));
    };
    let prefix = normalize(prefix);
    let Some(gw) = c.node_ip else {
        return Err(format!(
            "{prefix} of node {} has no node IP (--node-ip): not routed",
            c.node
        ));
    };
    if Some(gw) == my_ip {
        return Err(format!(
            "{prefix} of node {} names our own IP {gw}: not routed",
            c.node
        ));
    }
    if held.iter().any(|h| normalize(*h) == prefix) {
        return Err(format!(
            "{prefix} is claimed by node {} but held here: kept unreachable here",
            c.node
        ));
    }
    Ok((prefix, Target::Via(gw)))
}

/// One route change that follows from one watch delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add (or replace) `prefix via gw`.
    Install(Ipv4Network, Ipv4Addr),
    /// Delete exactly `prefix via gw` (nothing if the route at that prefix is another one).
    Withdraw(Ipv4Network, Ipv4Addr),
}

/// The route change a claim delta makes on this node (issue 10: one route per delta, no
/// re-plan): another node's claim appears → its route; it goes → that route goes. Our own
/// claims change nothing (the pool, not the datastore, is the truth for our prefixes; the
/// pool poll follows it), nor does a claim over a prefix our pool holds (kept unreachable).
/// `None` also for [`ClaimDelta::Resync`], which the caller answers with a full re-plan.
pub fn change_for(
    delta: &ClaimDelta,
    me: &str,
    my_ip: Option<Ipv4Addr>,
    held: &[Ipv4Network],
) -> Option<Change> {
    match delta {
        ClaimDelta::Put(c) if c.node != me => match peer_route(c, my_ip, held) {
            Ok((p, Target::Via(gw))) => Some(Change::Install(p, gw)),
            _ => None,
        },
        ClaimDelta::Removed(c) if c.node != me => match peer_route(c, my_ip, held) {
            Ok((p, Target::Via(gw))) => Some(Change::Withdraw(p, gw)),
            _ => None,
        },
        _ => None,
    }
}

/// What should be routed, from every node's claims and the prefixes our pool holds.
pub fn desired(
    claims: &[PrefixClaim],
    me: &str,
    my_ip: Option<Ipv4Addr>,
    held: &[Ipv4Network],
) -> Desired {
    let mut out = Desired {
        routes: own_routes(held),
        notes: Vec::new(),
    };
    for c in claims.iter().filter(|c| c.node != me && c.prefix.is_ipv4()) {
        match peer_route(c, my_ip, held) {
            Ok((prefix, t)) => {
                out.routes.insert(prefix, t);
            }
            Err(note) => out.notes.push(note),
        }
    }
    out
}

/// Whether a `proto 171` route is one of the routes this module manages (not a pod's
/// `/32 dev vpcXXX` route).
pub fn is_managed(r: &route::RouteV4) -> bool {
    r.protocol == RTPROT_VPCNET
        && r.table == route::RT_TABLE_MAIN
        && !vpcnet_proto::attachment::is_host_route_shape(r)
}

fn key(r: &route::RouteV4) -> Option<Ipv4Network> {
    Ipv4Network::new(r.dst, r.dst_len).ok()
}

/// The metric of our route to prefix `p` (peer `via` and own `unreachable` alike): 1 + the
/// low 16 bits of the prefix's index (its network address shifted right by its host bits).
///
/// Why not one metric for all (issue 10): the kernel's IPv4 `fib_info` hash covers protocol,
/// scope, prefsrc, metric and output devices, not the gateway, so N peer routes with one
/// metric share one hash bucket and every insert compares against every earlier route
/// (O(N²) per agent start). One metric per prefix spreads them. It depends on the prefix only,
/// so a moved gateway or via ↔ unreachable is still one `replace` of the route at that
/// metric. Routes an older agent left at metric 0 are migrated by the re-plan ([`plan`]).
pub fn metric_of(p: Ipv4Network) -> u32 {
    let index = u32::from(p.network())
        .checked_shr(32 - u32::from(p.prefix()))
        .unwrap_or(0);
    1 + (index & 0xffff)
}

fn matches(r: &route::RouteV4, p: Ipv4Network, t: Target) -> bool {
    r.metric == metric_of(p)
        && match t {
            Target::Via(gw) => r.kind == route::RTN_UNICAST && r.gateway == Some(gw),
            Target::Unreachable => r.kind == route::RTN_UNREACHABLE,
        }
}

/// Our route to `p` going to `t`, at `p`'s metric ([`metric_of`]).
pub fn route_for(p: Ipv4Network, t: Target) -> route::RouteV4 {
    route::RouteV4 {
        dst: p.network(),
        dst_len: p.prefix(),
        gateway: match t {
            Target::Via(gw) => Some(gw),
            Target::Unreachable => None,
        },
        oif: None,
        protocol: RTPROT_VPCNET,
        scope: route::RT_SCOPE_UNIVERSE,
        kind: match t {
            Target::Via(_) => route::RTN_UNICAST,
            Target::Unreachable => route::RTN_UNREACHABLE,
        },
        table: route::RT_TABLE_MAIN,
        metric: metric_of(p),
    }
}

/// When the claims cannot be listed: keep every peer route we have (except over a prefix we
/// now hold), and let our own unreachable routes follow the pool.
pub fn desired_degraded(current: &[route::RouteV4], held: &[Ipv4Network]) -> Desired {
    let mut routes = own_routes(held);
    for r in current.iter().filter(|r| is_managed(r)) {
        if let (Some(k), Some(gw), route::RTN_UNICAST) = (key(r), r.gateway, r.kind) {
            routes.entry(k).or_insert(Target::Via(gw));
        }
    }
    Desired {
        routes,
        notes: Vec::new(),
    }
}

/// The changes that take the host from `current` (all `proto 171` routes; those not
/// [`is_managed`] are ignored) to `desired`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Add, or replace the route at that prefix (`ip route replace`).
    pub install: Vec<(Ipv4Network, Target)>,
    /// Delete exactly these routes.
    pub delete: Vec<route::RouteV4>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.delete.is_empty()
    }
}

pub fn plan(desired: &BTreeMap<Ipv4Network, Target>, current: &[route::RouteV4]) -> Plan {
    let mut by_prefix: BTreeMap<Ipv4Network, Vec<&route::RouteV4>> = BTreeMap::new();
    for r in current.iter().filter(|r| is_managed(r)) {
        match key(r) {
            Some(k) => by_prefix.entry(k).or_default().push(r),
            None => continue,
        }
    }
    let mut out = Plan::default();
    for (p, t) in desired {
        let ok = by_prefix
            .get(p)
            .is_some_and(|rs| rs.iter().any(|r| matches(r, *p, *t)));
        if !ok {
            // Replace semantics: overwrites a route of ours at that prefix and metric (gateway
            // moved, unreachable <-> via) in one step, without a window with no route.
            out.install.push((*p, *t));
        }
    }
    for (p, rs) in &by_prefix {
        match desired.get(p) {
            None => out.delete.extend(rs.iter().map(|r| (*r).clone())),
            Some(t) => {
                // Every other route of ours at that prefix goes once the right one is in
                // (the caller installs before it deletes): those at another metric (an older
                // agent's, at metric 0) and, when nothing is installed, wrong ones at ours.
                // The one at our metric that the install replaces is not deleted again.
                let installing = !rs.iter().any(|r| matches(r, *p, *t));
                out.delete.extend(
                    rs.iter()
                        .filter(|r| !matches(r, *p, *t))
                        .filter(|r| !(installing && r.metric == metric_of(*p)))
                        .map(|r| (*r).clone()),
                );
            }
        }
    }
    out
}

/// What the loop remembers between rounds.
#[derive(Debug, Default)]
pub struct SyncState {
    /// We set degraded area "datastore" (and so may clear it).
    datastore_degraded: bool,
    /// Last notes and failures logged (logged again only when they change).
    notes: Vec<String>,
    failures: Vec<String>,
    /// The socket route changes go to in batches (opened at first use; a round that cannot
    /// open it fails its changes, reported and retried like any failed route).
    routes: Option<RouteBatch>,
}

impl SyncState {
    /// Makes `changes` in their order ([`RouteBatch::apply`]); an error as its message.
    fn apply(&mut self, changes: &[RouteChange]) -> Vec<Result<bool, String>> {
        let batch = match self.routes.take().map_or_else(RouteBatch::open, Ok) {
            Ok(b) => self.routes.insert(b),
            Err(e) => return changes.iter().map(|_| Err(e.to_string())).collect(),
        };
        batch
            .apply(changes)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// Our held prefixes of both families, sorted: the cheap fingerprint the loop polls.
fn held<D: Datastore>(node: &Node<D>) -> Vec<IpNetwork> {
    let mut v = node.state().held_all();
    v.sort();
    v
}

/// The IPv4 ones of `held`.
fn v4(held: &[IpNetwork]) -> Vec<Ipv4Network> {
    held.iter()
        .filter_map(|p| match p {
            IpNetwork::V4(p) => Some(*p),
            IpNetwork::V6(_) => None,
        })
        .collect()
}

/// The IPv6 ones of `held`.
fn v6(held: &[IpNetwork]) -> Vec<Ipv6Network> {
    held.iter()
        .filter_map(|p| match p {
            IpNetwork::V6(p) => Some(*p),
            IpNetwork::V4(_) => None,
        })
        .collect()
}

/// A full re-plan: every peer route from the claims (the datastore's view), our unreachable
/// routes from the pool. With `reconcile` the claims are also reconciled with the pool
/// ([`Node::reconcile_claims_nowait`]: never making the claim path wait). Returns the held
/// prefixes it routed (for the loop's fingerprint).
pub async fn sync<D: Datastore>(
    node: &Node<D>,
    st: &mut SyncState,
    reconcile: bool,
) -> Vec<IpNetwork> {
    crate::obs::metrics::get().peer_update("replan");
    let listed = async {
        if reconcile {
            // Also reconciles ours with the pool (re-claims lapsed ones, releases leftovers,
            // reports conflicts).
            node.reconcile_claims_nowait().await
        } else {
            node.datastore().list().await
        }
    };
    let claims = match tokio::time::timeout(LIST_TIMEOUT, listed).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "datastore {}: listing claims timed out after {LIST_TIMEOUT:?}",
            node.datastore().name()
        )),
    };
    let held_all = held(node);
    let held = v4(&held_all);
    let current = match route::list_v4(node.net(), Some(RTPROT_VPCNET)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("peers: listing routes: {e}");
            return held_all;
        }
    };
    let claims6 = claims.as_ref().ok().cloned();
    let want = match claims {
        Ok(claims) => {
            // Reachable: whoever marked it degraded (start-up, a failed claim, us), it is not
            // any more.
            node.set_degraded(Area::Datastore, None);
            if st.datastore_degraded {
                st.datastore_degraded = false;
                tracing::info!("peers: datastore reachable again");
            }
            desired(&claims, node.name(), node.ip(), &held)
        }
        Err(msg) => {
            if !st.datastore_degraded {
                tracing::warn!("peers: listing claims: {msg} (keeping peer routes)");
            }
            node.set_degraded(Area::Datastore, Some(msg));
            st.datastore_degraded = true;
            desired_degraded(&current, &held)
        }
    };
    if want.notes != st.notes {
        for n in &want.notes {
            tracing::warn!("peers: {n}");
        }
        st.notes = want.notes.clone();
    }
    let plan = plan(&want.routes, &current);
    // The installs go to the kernel many to one `sendmsg` (a full plan at start is N - 1
    // routes; one request each cost a round trip through the netlink connection task).
    let changes: Vec<RouteChange> = plan
        .install
        .iter()
        .map(|(p, t)| RouteChange::Replace(route_for(*p, *t)))
        .collect();
    let (mut installed, mut not_installed, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for ((p, t), r) in plan.install.iter().zip(st.apply(&changes)) {
        match r {
            Ok(_) => installed.push((*p, *t)),
            Err(e) => {
                not_installed.push(*p);
                failures.push(format!("route {}: {e}", describe(*p, *t)));
            }
        }
    }
    log_installed(&installed);
    // A route at another metric (an older agent's) stays while ours at that prefix failed.
    let withdraw: Vec<&route::RouteV4> = plan
        .delete
        .iter()
        .filter(|r| key(r).is_none_or(|k| !not_installed.contains(&k)))
        .collect();
    let changes: Vec<RouteChange> = withdraw
        .iter()
        .map(|r| RouteChange::Delete((*r).clone()))
        .collect();
    for (r, done) in withdraw.iter().zip(st.apply(&changes)) {
        let what = describe_route(r.dst, r.dst_len, r.kind, r.gateway);
        match done {
            Ok(_) => tracing::info!(route = %what, "peers: route withdrawn"),
            Err(e) => failures.push(format!("withdrawing route {what}: {e}")),
        }
    }
    let held6 = v6(&held_all);
    if node.state().serves(crate::node::Family::V6) || !held6.is_empty() {
        failures.extend(sync6(node, st, claims6.as_deref(), &held6).await);
    } else {
        // No IPv6 pool (any more): withdraw IPv6 routes of ours a previous run left.
        failures.extend(sync6(node, st, Some(&[]), &[]).await);
    }
    report_failures(node, st, failures);
    held_all
}

// ---- IPv6 (docs/dual-stack.md): the same routes, per family. Another node's IPv6 prefix
// goes `via` its IPv6 node address (`nodeIp6` of its claim); each IPv6 prefix of ours is
// `unreachable` (none for /128 prefixes: a pod's /128 host route is more specific). The pods'
// `/128 dev vpcXXX` host routes are the plugin's and reconcile's, never touched here. Claims
// of IPv6 prefixes are rare (one per node), so a delta of one re-plans the IPv6 routes from
// the view instead of changing one route. ----

/// Where an IPv6 prefix should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target6 {
    Via(Ipv6Addr),
    Unreachable,
}

/// Desired IPv6 routes from the claims (`None`: the datastore cannot be listed: keep every
/// IPv6 peer route we have) and our held IPv6 prefixes, plus notes on unroutable claims.
pub fn desired6(
    claims: Option<&[PrefixClaim]>,
    me: &str,
    my_ip6: Option<Ipv6Addr>,
    held: &[Ipv6Network],
    current: &[route::RouteV6],
) -> (BTreeMap<Ipv6Network, Target6>, Vec<String>) {
    let norm = |p: Ipv6Network| Ipv6Network::new(p.network(), p.prefix()).unwrap_or(p);
    let held: Vec<Ipv6Network> = held.iter().map(|p| norm(*p)).collect();
    let mut routes: BTreeMap<Ipv6Network, Target6> = held
        .iter()
        .filter(|p| p.prefix() < 128)
        .map(|p| (*p, Target6::Unreachable))
        .collect();
    let mut notes = Vec::new();
    match claims {
        Some(claims) => {
            for c in claims.iter().filter(|c| c.node != me) {
                let IpNetwork::V6(p) = c.prefix else {
                    continue;
                };
                let p = norm(p);
                match c.node_ip6 {
                    None => notes.push(format!(
                        "{p} of node {} has no IPv6 node IP (--node-ip): not routed",
                        c.node
                    )),
                    Some(gw) if Some(gw) == my_ip6 => notes.push(format!(
                        "{p} of node {} names our own IP {gw}: not routed",
                        c.node
                    )),
                    Some(_) if held.contains(&p) => notes.push(format!(
                        "{p} is claimed by node {} but held here: kept unreachable here",
                        c.node
                    )),
                    Some(gw) => {
                        routes.insert(p, Target6::Via(gw));
                    }
                }
            }
        }
        None => {
            for r in current.iter().filter(|r| is_managed6(r)) {
                if let (Ok(k), Some(gw), route::RTN_UNICAST) =
                    (Ipv6Network::new(r.dst, r.dst_len), r.gateway, r.kind)
                {
                    routes.entry(k).or_insert(Target6::Via(gw));
                }
            }
        }
    }
    (routes, notes)
}

/// Whether a `proto 171` IPv6 route is one this module manages: in the main table, not a
/// pod's `/128` host route (no gateway, unicast).
pub fn is_managed6(r: &route::RouteV6) -> bool {
    r.protocol == RTPROT_VPCNET
        && r.table == route::RT_TABLE_MAIN
        && !(r.dst_len == 128 && r.kind == route::RTN_UNICAST && r.gateway.is_none())
}

fn matches6(r: &route::RouteV6, t: Target6) -> bool {
    match t {
        Target6::Via(gw) => r.kind == route::RTN_UNICAST && r.gateway == Some(gw),
        Target6::Unreachable => r.kind == route::RTN_UNREACHABLE,
    }
}

/// The IPv6 routes to install (replace) and to delete to go from `current` to `desired`.
pub fn plan6(
    desired: &BTreeMap<Ipv6Network, Target6>,
    current: &[route::RouteV6],
) -> (Vec<(Ipv6Network, Target6)>, Vec<route::RouteV6>) {
    let mut by_prefix: BTreeMap<Ipv6Network, Vec<&route::RouteV6>> = BTreeMap::new();
    for r in current.iter().filter(|r| is_managed6(r)) {
        if let Ok(k) = Ipv6Network::new(r.dst, r.dst_len) {
            by_prefix.entry(k).or_default().push(r);
        }
    }
    let mut install = Vec::new();
    let mut delete = Vec::new();
    for (p, t) in desired {
        if !by_prefix
            .get(p)
            .is_some_and(|rs| rs.iter().any(|r| matches6(r, *t)))
        {
            install.push((*p, *t));
        }
    }
    for (p, rs) in &by_prefix {
        match desired.get(p) {
            None => delete.extend(rs.iter().map(|r| (*r).clone())),
            Some(t) => {
                if rs.iter().any(|r| matches6(r, *t)) {
                    delete.extend(rs.iter().filter(|r| !matches6(r, *t)).map(|r| (*r).clone()));
                } else {
                    // No replace for IPv6 across route types: the wrong ones go first.
                    delete.extend(rs.iter().map(|r| (*r).clone()));
                }
            }
        }
    }
    (install, delete)
}

impl Target6 {
    fn gateway(self) -> Option<Ipv6Addr> {
        match self {
            Target6::Via(gw) => Some(gw),
            Target6::Unreachable => None,
        }
    }

    fn kind(self) -> u8 {
        match self {
            Target6::Via(_) => route::RTN_UNICAST,
            Target6::Unreachable => route::RTN_UNREACHABLE,
        }
    }
}

fn route6(p: Ipv6Network, t: Target6) -> route::RouteV6 {
    route::RouteV6 {
        dst: p.network(),
        dst_len: p.prefix(),
        gateway: t.gateway(),
        oif: None,
        protocol: RTPROT_VPCNET,
        kind: t.kind(),
        table: route::RT_TABLE_MAIN,
    }
}

/// The IPv6 half of [`sync`]; returns the failures. The withdrawals go first (no replace
/// across IPv6 route types), then the installs, all through the batch socket.
async fn sync6<D: Datastore>(
    node: &Node<D>,
    st: &mut SyncState,
    claims: Option<&[PrefixClaim]>,
    held: &[Ipv6Network],
) -> Vec<String> {
    let current = match route::list_v6(node.net(), Some(RTPROT_VPCNET)).await {
        Ok(r) => r,
        Err(e) => return vec![format!("listing IPv6 routes: {e}")],
    };
    let (want, notes) = desired6(claims, node.name(), node.ip6(), held, &current);
    for n in notes {
        tracing::debug!("peers: {n}");
    }
    let (install, delete) = plan6(&want, &current);
    let changes: Vec<RouteChange> = delete
        .iter()
        .map(|r| RouteChange::Delete6(r.clone()))
        .chain(
            install
                .iter()
                .map(|(p, t)| RouteChange::Replace6(route6(*p, *t))),
        )
        .collect();
    let results = st.apply(&changes);
    let (withdrawn, installed) = results.split_at(delete.len().min(results.len()));
    let mut failures = Vec::new();
    for (r, done) in delete.iter().zip(withdrawn) {
        let what = describe_route(r.dst, r.dst_len, r.kind, r.gateway);
        match done {
            Ok(_) => tracing::info!(route = %what, "peers: route withdrawn"),
            Err(e) => failures.push(format!("withdrawing route {what}: {e}")),
        }
    }
    for ((p, t), done) in install.iter().zip(installed) {
        let what = describe_route(p.network(), p.prefix(), t.kind(), t.gateway());
        match done {
            Ok(_) => tracing::info!(route = %what, "peers: route installed"),
            Err(e) => failures.push(format!("route {what}: {e}")),
        }
    }
    failures
}

/// How a route reads in the log and in a failure (either family): `P via GW`,
/// `unreachable P`, or `P`.
fn describe_route<A: std::fmt::Display>(
    dst: A,
    dst_len: u8,
    kind: u8,
    gateway: Option<A>,
) -> String {
    match (kind, gateway) {
        (route::RTN_UNREACHABLE, _) => format!("unreachable {dst}/{dst_len}"),
        (_, Some(gw)) => format!("{dst}/{dst_len} via {gw}"),
        _ => format!("{dst}/{dst_len}"),
    }
}

/// [`describe_route`] of a planned IPv4 route.
fn describe(p: Ipv4Network, t: Target) -> String {
    let (kind, gateway) = match t {
        Target::Via(gw) => (route::RTN_UNICAST, Some(gw)),
        Target::Unreachable => (route::RTN_UNREACHABLE, None),
    };
    describe_route(p.network(), p.prefix(), kind, gateway)
}

/// Routes of one line of `peers: routes installed` at most: a start-up re-plan of N - 1
/// routes is N / 64 lines, not N.
const ROUTES_PER_LINE: usize = 64;

/// The lines that log `installed`: (how many, `P via GW, unreachable P, …`), at most
/// [`ROUTES_PER_LINE`] routes each.
fn installed_lines(installed: &[(Ipv4Network, Target)]) -> Vec<(usize, String)> {
    installed
        .chunks(ROUTES_PER_LINE)
        .map(|chunk| {
            let routes = chunk
                .iter()
                .map(|(p, t)| describe(*p, *t))
                .collect::<Vec<_>>()
                .join(", ");
            (chunk.len(), routes)
        })
        .collect()
}

/// Logs the routes a round or a batch of deltas installed: `peers: routes installed n=K
/// routes=P via GW, …`, one line per batch rather than one per route (a cold start of N nodes
/// installs N - 1 routes on every node).
fn log_installed(installed: &[(Ipv4Network, Target)]) {
    for (n, routes) in installed_lines(installed) {
        tracing::info!(n, routes = %routes, "peers: routes installed");
    }
}

/// Logs and reports (degraded area "peers") the routes that failed, when that changes.
fn report_failures<D: Datastore>(node: &Node<D>, st: &mut SyncState, failures: Vec<String>) {
    if failures != st.failures {
        for f in &failures {
            tracing::warn!("peers: {f} (retrying)");
        }
        node.set_degraded(
            Area::Peers,
            (!failures.is_empty()).then(|| failures.join("; ")),
        );
        st.failures = failures;
    }
}

/// `first` and the IPv4 deltas already queued behind it (at most [`MAX_BATCH`]),
/// and the re-plan that one taken off the queue asks for (a re-list, an IPv6 claim, a lag).
fn queued_behind(
    first: ClaimDelta,
    rx: &mut Option<tokio::sync::broadcast::Receiver<ClaimDelta>>,
) -> (Vec<ClaimDelta>, Option<Replan>) {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut batch = vec![first];
    let Some(r) = rx.as_mut() else {
        return (batch, None);
    };
    while batch.len() < MAX_BATCH {
        match r.try_recv() {
            Ok(ClaimDelta::Resync) => return (batch, Some(Replan::Full)),
            Ok(ClaimDelta::Put(c) | ClaimDelta::Removed(c)) if c.prefix.is_ipv6() => {
                return (batch, Some(Replan::Routes))
            }
            Ok(d) => batch.push(d),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(n)) => {
                tracing::info!(
                    missed = n,
                    "peers: fell behind the claim deltas: re-planning"
                );
                return (batch, Some(Replan::Full));
            }
            Err(TryRecvError::Closed) => {
                *rx = None;
                return (batch, Some(Replan::Full));
            }
        }
    }
    (batch, None)
}

/// Applies `deltas`: the route change of each ([`change_for`], at most one), in their order
/// (a claim, its release and a new claim of one prefix keep theirs), many to one `sendmsg`,
/// and logs what they installed in one go. `false` if any route change failed.
async fn apply_batch<D: Datastore>(
    node: &Node<D>,
    st: &mut SyncState,
    deltas: Vec<ClaimDelta>,
) -> bool {
    let held = v4(&held(node));
    let wanted: Vec<Change> = deltas
        .iter()
        .filter_map(|d| change_for(d, node.name(), node.ip(), &held))
        .collect();
    crate::obs::metrics::get().peer_updates("delta", wanted.len() as u64);
    let changes: Vec<RouteChange> = wanted
        .iter()
        .map(|c| match *c {
            Change::Install(p, gw) => RouteChange::Replace(route_for(p, Target::Via(gw))),
            Change::Withdraw(p, gw) => RouteChange::Delete(route_for(p, Target::Via(gw))),
        })
        .collect();
    let mut installed = Vec::new();
    let mut ok = true;
    for (c, r) in wanted.iter().zip(st.apply(&changes)) {
        match (*c, r) {
            (Change::Install(p, gw), Ok(_)) => installed.push((p, Target::Via(gw))),
            // `false`: no such route (never installed, or the prefix moved): nothing to do.
            (Change::Withdraw(p, gw), Ok(gone)) => {
                if gone {
                    tracing::info!(route = %format!("{p} via {gw}"), "peers: route withdrawn");
                }
            }
            (Change::Install(p, gw) | Change::Withdraw(p, gw), Err(e)) => {
                tracing::debug!("peers: {p} via {gw}: {e} (re-planning)");
                ok = false;
            }
        }
    }
    log_installed(&installed);
    ok
}

/// The next claim delta; `None` when the subscription lagged or closed (re-plan). Never
/// resolves without a subscription.
async fn next_delta(
    rx: &mut Option<tokio::sync::broadcast::Receiver<ClaimDelta>>,
) -> Option<ClaimDelta> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(d) => Some(d),
        Err(RecvError::Lagged(n)) => {
            tracing::info!(
                missed = n,
                "peers: fell behind the claim deltas: re-planning"
            );
            None
        }
        Err(RecvError::Closed) => {
            *rx = None;
            None
        }
    }
}

/// Why the loop re-plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replan {
    /// The long timer (`--peer-sync-interval`), start, a re-list of the datastore's view:
    /// also reconcile the claims with the pool.
    Full,
    /// The pool's prefixes changed, or a delta's route failed: routes only, from the view.
    Routes,
}

/// The peer-routing loop. With a datastore that streams deltas (etcd): a full re-plan at
/// start, on every re-list of the datastore's view and every `interval`; in between, each
/// claim delta changes at most one route ([`change_for`]), and a change of the pool's
/// prefixes re-plans from the view (no request). Without deltas (local datastore): a full
/// round on a datastore change, a pool change and every `interval`, as before.
pub async fn run<D: Datastore>(node: &Node<D>, interval: Duration) {
    let mut st = SyncState::default();
    let mut deltas = node.datastore().deltas();
    let mut why = Replan::Full;
    let mut next_full = Instant::now();
    loop {
        let started = Instant::now();
        if let Some(rx) = deltas.as_mut() {
            // What is queued is already in the view the re-plan reads.
            while rx.try_recv().is_ok() {}
        }
        if why == Replan::Full || started >= next_full {
            next_full = started + interval;
            why = Replan::Full;
        }
        tracing::debug!(?why, "peers: re-plan");
        let routed = sync(node, &mut st, why == Replan::Full).await;
        crate::obs::process::startup_phase("first peer re-plan");
        tokio::time::sleep_until(started + MIN_GAP).await;
        // One schedule for the whole wait, not a fresh POOL_POLL sleep per select: deltas
        // arriving faster than POOL_POLL (N nodes claiming) must not keep postponing the pool
        // check (issue 10: our own prefix's unreachable route waited for the claim burst to
        // pause for POOL_POLL).
        let mut pool_poll = tokio::time::interval_at(Instant::now() + POOL_POLL, POOL_POLL);
        pool_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        why = loop {
            tokio::select! {
                d = next_delta(&mut deltas) => match d {
                    Some(ClaimDelta::Resync) | None => break Replan::Full,
                    // An IPv6 claim (one per node, rare): the IPv6 routes are re-planned
                    // from the view.
                    Some(ClaimDelta::Put(c) | ClaimDelta::Removed(c)) if c.prefix.is_ipv6() => {
                        break Replan::Routes;
                    }
                    Some(d) => {
                        // A burst (N nodes claiming at once): the deltas already queued
                        // behind this one go with it, their routes to the kernel together. (Not
                        // waited for: a 50 ms wait for more took ~40 % less CPU per claim
                        // but cost the churn's claim → route 0.03-0.15 s at the median,
                        // docs/benchmarks.md § Scale, twelfth part.)
                        let (batch, then) = queued_behind(d, &mut deltas);
                        if !apply_batch(node, &mut st, batch).await {
                            tokio::time::sleep(MIN_GAP * 10).await;
                            break Replan::Routes;
                        }
                        if let Some(why) = then {
                            break why;
                        }
                    }
                },
                _ = node.datastore().changed(), if deltas.is_none() => break Replan::Full,
                _ = tokio::time::sleep_until(next_full) => break Replan::Full,
                _ = pool_poll.tick() => {
                    if held(node) != routed {
                        break Replan::Routes;
                    }
                }
                _ = node.prefixes_changed_wait() => {
                    if held(node) != routed {
                        break Replan::Routes;
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_routes_are_logged_a_line_per_batch() {
        assert!(installed_lines(&[]).is_empty());
        let two = [
            (net("10.1.0.16/28"), Target::Via(ip("192.0.2.7"))),
            (net("10.1.0.32/28"), Target::Unreachable),
        ];
        assert_eq!(
            installed_lines(&two),
            vec![(
                2,
                "10.1.0.16/28 via 192.0.2.7, unreachable 10.1.0.32/28".to_owned()
            )]
        );
        // A start-up re-plan of many routes: ROUTES_PER_LINE to a line, none lost.
        let per_line = u32::try_from(ROUTES_PER_LINE).expect("a small constant");
        let many: Vec<(Ipv4Network, Target)> = (0..=per_line)
            .map(|k| {
                let p = Ipv4Network::new(Ipv4Addr::from(0x0a01_0000 + 16 * k), 28).expect("prefix");
                (p, Target::Via(ip("192.0.2.7")))
            })
            .collect();
        let lines = installed_lines(&many);
        assert_eq!(
            lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![ROUTES_PER_LINE, 1]
        );
        assert_eq!(
            lines
                .iter()
                .map(|(_, l)| l.matches(" via ").count())
                .sum::<usize>(),
            many.len()
        );
        assert!(lines[1]
            .1
            .starts_with(&format!("{} via", many[ROUTES_PER_LINE].0)));
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn claim(p: &str, node: &str, node_ip: Option<&str>) -> PrefixClaim {
        PrefixClaim {
            prefix: IpNetwork::V4(net(p)),
            node: node.to_string(),
            node_ip: node_ip.map(ip),
            node_ip6: None,
            claimed_at: 1,
        }
    }

    fn via(p: &str, gw: &str) -> route::RouteV4 {
        let n = net(p);
        route::RouteV4 {
            dst: n.network(),
            dst_len: n.prefix(),
            gateway: Some(ip(gw)),
            oif: Some(2),
            protocol: RTPROT_VPCNET,
            scope: route::RT_SCOPE_UNIVERSE,
            kind: route::RTN_UNICAST,
            table: route::RT_TABLE_MAIN,
            metric: metric_of(n),
        }
    }

    fn unreachable(p: &str) -> route::RouteV4 {
        let n = net(p);
        route::RouteV4 {
            dst: n.network(),
            dst_len: n.prefix(),
            gateway: None,
            oif: None,
            protocol: RTPROT_VPCNET,
            scope: route::RT_SCOPE_UNIVERSE,
            kind: route::RTN_UNREACHABLE,
            table: route::RT_TABLE_MAIN,
            metric: metric_of(n),
        }
    }

    fn pod(a: &str) -> route::RouteV4 {
        vpcnet_proto::attachment::host_route(ip(a), Some(7))
    }

    #[test]
    fn desired_routes_peers_via_their_ip_and_ours_unreachable() {
        let claims = [
            claim("10.240.0.0/28", "me", Some("10.0.0.1")),
            claim("10.240.0.16/28", "b", Some("10.0.0.2")),
            claim("10.240.0.32/28", "c", Some("10.0.0.3")),
        ];
        let d = desired(
            &claims,
            "me",
            Some(ip("10.0.0.1")),
            &[net("10.240.0.0/28"), net("10.240.0.48/28")],
        );
        let want: BTreeMap<_, _> = [
            (net("10.240.0.0/28"), Target::Unreachable),
            (net("10.240.0.16/28"), Target::Via(ip("10.0.0.2"))),
            (net("10.240.0.32/28"), Target::Via(ip("10.0.0.3"))),
            // Held but (not yet) claimed: the pool is the truth for our own prefixes.
            (net("10.240.0.48/28"), Target::Unreachable),
        ]
        .into_iter()
        .collect();
        assert_eq!(d.routes, want);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn unroutable_claims_are_skipped_with_a_note() {
        let claims = [
            claim("10.240.0.16/28", "b", None),
            claim("10.240.0.32/28", "c", Some("10.0.0.1")),
            claim("10.240.0.48/28", "d", Some("10.0.0.4")),
        ];
        let d = desired(
            &claims,
            "me",
            Some(ip("10.0.0.1")),
            &[net("10.240.0.48/28")],
        );
        let want: BTreeMap<_, _> = [(net("10.240.0.48/28"), Target::Unreachable)]
            .into_iter()
            .collect();
        assert_eq!(d.routes, want);
        assert_eq!(d.notes.len(), 3, "{:?}", d.notes);
    }

    #[test]
    fn slash_32_prefixes_get_no_unreachable_route() {
        let claims = [claim("10.240.0.9/32", "b", Some("10.0.0.2"))];
        let d = desired(&claims, "me", None, &[net("10.240.0.8/32")]);
        let want: BTreeMap<_, _> = [(net("10.240.0.9/32"), Target::Via(ip("10.0.0.2")))]
            .into_iter()
            .collect();
        assert_eq!(d.routes, want);
    }

    #[test]
    fn managed_routes_exclude_pod_routes() {
        assert!(is_managed(&via("10.240.0.16/28", "10.0.0.2")));
        assert!(is_managed(&via("10.240.0.9/32", "10.0.0.2")));
        assert!(is_managed(&unreachable("10.240.0.0/28")));
        assert!(is_managed(&unreachable("10.240.0.8/32")));
        assert!(!is_managed(&pod("10.240.0.3")));
        let mut other = via("10.240.0.16/28", "10.0.0.2");
        other.protocol = 4;
        assert!(!is_managed(&other));
    }

    #[test]
    fn plan_adds_missing_replaces_moved_deletes_extra_and_ignores_pods() {
        let desired: BTreeMap<_, _> = [
            (net("10.240.0.0/28"), Target::Unreachable),
            (net("10.240.0.16/28"), Target::Via(ip("10.0.0.2"))),
            (net("10.240.0.32/28"), Target::Via(ip("10.0.0.3"))),
            (net("10.240.0.64/28"), Target::Via(ip("10.0.0.5"))),
        ]
        .into_iter()
        .collect();
        let current = [
            unreachable("10.240.0.0/28"),      // right
            via("10.240.0.16/28", "10.0.0.9"), // gateway moved
            via("10.240.0.48/28", "10.0.0.4"), // peer gone
            unreachable("10.240.0.80/28"),     // prefix released
            pod("10.240.0.3"),                 // the plugin's
            pod("10.240.0.99"),                // the plugin's, even with no prefix
        ];
        let p = plan(&desired, &current);
        assert_eq!(
            p.install,
            vec![
                (net("10.240.0.16/28"), Target::Via(ip("10.0.0.2"))),
                (net("10.240.0.32/28"), Target::Via(ip("10.0.0.3"))),
                (net("10.240.0.64/28"), Target::Via(ip("10.0.0.5"))),
            ]
        );
        assert_eq!(
            p.delete,
            vec![
                via("10.240.0.48/28", "10.0.0.4"),
                unreachable("10.240.0.80/28")
            ]
        );
    }

    #[test]
    fn plan_is_empty_when_converged_and_removes_duplicates() {
        let desired: BTreeMap<_, _> = [(net("10.240.0.16/28"), Target::Via(ip("10.0.0.2")))]
            .into_iter()
            .collect();
        let current = [via("10.240.0.16/28", "10.0.0.2"), pod("10.240.0.1")];
        assert!(plan(&desired, &current).is_empty());
        let current = [
            via("10.240.0.16/28", "10.0.0.2"),
            unreachable("10.240.0.16/28"),
        ];
        let p = plan(&desired, &current);
        assert!(p.install.is_empty());
        assert_eq!(p.delete, vec![unreachable("10.240.0.16/28")]);
    }

    /// One metric per prefix, from the prefix alone (distinct for neighbouring prefixes).
    #[test]
    fn metrics_follow_the_prefix() {
        assert_eq!(
            metric_of(net("10.240.0.0/28")),
            metric_of(net("10.240.0.0/28"))
        );
        assert_ne!(
            metric_of(net("10.240.0.0/28")),
            metric_of(net("10.240.0.16/28"))
        );
        assert_eq!(
            metric_of(net("10.240.0.16/28")) + 1,
            metric_of(net("10.240.0.32/28"))
        );
        assert_eq!(metric_of(net("0.0.0.0/0")), 1);
        assert_eq!(metric_of(net("10.240.0.9/32")), 1 + 9);
        let r = route_for(net("10.240.0.16/28"), Target::Via(ip("10.0.0.2")));
        assert_eq!(r.metric, metric_of(net("10.240.0.16/28")));
        assert!(is_managed(&r));
        assert!(matches(
            &r,
            net("10.240.0.16/28"),
            Target::Via(ip("10.0.0.2"))
        ));
    }

    /// Routes an older agent left at metric 0: the right one is installed at the prefix's
    /// metric, then the old one deleted (never the other way round); a converged host with
    /// only metric-0 routes is not "converged".
    #[test]
    fn routes_at_metric_0_are_migrated() {
        let old = |mut r: route::RouteV4| {
            r.metric = 0;
            r
        };
        let desired: BTreeMap<_, _> = [
            (net("10.240.0.0/28"), Target::Unreachable),
            (net("10.240.0.16/28"), Target::Via(ip("10.0.0.2"))),
            (net("10.240.0.32/28"), Target::Via(ip("10.0.0.3"))),
        ]
        .into_iter()
        .collect();
        let current = [
            old(unreachable("10.240.0.0/28")),
            old(via("10.240.0.16/28", "10.0.0.2")),
            // Migrated already, the old one still there (an interrupted round).
            old(via("10.240.0.32/28", "10.0.0.3")),
            via("10.240.0.32/28", "10.0.0.3"),
            old(via("10.240.0.48/28", "10.0.0.4")), // peer gone
        ];
        let p = plan(&desired, &current);
        assert_eq!(
            p.install,
            vec![
                (net("10.240.0.0/28"), Target::Unreachable),
                (net("10.240.0.16/28"), Target::Via(ip("10.0.0.2"))),
            ]
        );
        assert_eq!(
            p.delete,
            vec![
                old(unreachable("10.240.0.0/28")),
                old(via("10.240.0.16/28", "10.0.0.2")),
                old(via("10.240.0.32/28", "10.0.0.3")),
                old(via("10.240.0.48/28", "10.0.0.4")),
            ]
        );
        // The gateway moved at our metric: replaced, not deleted after the replace.
        let p = plan(&desired, &[via("10.240.0.16/28", "10.0.0.9")]);
        assert_eq!(p.install.len(), 3);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
    }

    #[test]
    fn unreachable_and_via_swap_by_replace() {
        // A prefix a peer gave up that we now hold.
        let desired: BTreeMap<_, _> = [(net("10.240.0.16/28"), Target::Unreachable)]
            .into_iter()
            .collect();
        let p = plan(&desired, &[via("10.240.0.16/28", "10.0.0.2")]);
        assert_eq!(
            p.install,
            vec![(net("10.240.0.16/28"), Target::Unreachable)]
        );
        assert!(p.delete.is_empty());
    }

    #[test]
    fn degraded_keeps_peer_routes_and_follows_the_pool() {
        let current = [
            via("10.240.0.16/28", "10.0.0.2"),
            unreachable("10.240.0.0/28"),
            unreachable("10.240.0.80/28"),
            pod("10.240.0.3"),
        ];
        let d = desired_degraded(&current, &[net("10.240.0.0/28"), net("10.240.0.32/28")]);
        let p = plan(&d.routes, &current);
        assert_eq!(
            p.install,
            vec![(net("10.240.0.32/28"), Target::Unreachable)]
        );
        assert_eq!(p.delete, vec![unreachable("10.240.0.80/28")]);
    }

    #[test]
    fn claims_with_host_bits_are_normalised() {
        let claims = [claim("10.240.0.17/28", "b", Some("10.0.0.2"))];
        let d = desired(&claims, "me", None, &[]);
        assert_eq!(
            d.routes.keys().copied().collect::<Vec<_>>(),
            vec![net("10.240.0.16/28")]
        );
    }

    #[test]
    fn a_delta_changes_exactly_one_route() {
        let me = "me";
        let my_ip = Some(ip("10.0.0.1"));
        let held = [net("10.240.0.0/28")];
        let b = claim("10.240.0.16/28", "b", Some("10.0.0.2"));
        // Another node's claim appears: its route, nothing else.
        assert_eq!(
            change_for(&ClaimDelta::Put(b.clone()), me, my_ip, &held),
            Some(Change::Install(net("10.240.0.16/28"), ip("10.0.0.2")))
        );
        // It goes: exactly that route goes (with its gateway: a route the prefix has since
        // moved to is not touched).
        assert_eq!(
            change_for(&ClaimDelta::Removed(b), me, my_ip, &held),
            Some(Change::Withdraw(net("10.240.0.16/28"), ip("10.0.0.2")))
        );
        // Host bits are normalised, as in the full plan.
        assert_eq!(
            change_for(
                &ClaimDelta::Put(claim("10.240.0.17/28", "b", Some("10.0.0.2"))),
                me,
                my_ip,
                &held
            ),
            Some(Change::Install(net("10.240.0.16/28"), ip("10.0.0.2")))
        );
    }

    #[test]
    fn deltas_that_change_no_route() {
        let me = "me";
        let my_ip = Some(ip("10.0.0.1"));
        let held = [net("10.240.0.0/28")];
        let cases = [
            // Our own claims: the pool is the truth for them.
            ClaimDelta::Put(claim("10.240.0.32/28", "me", Some("10.0.0.1"))),
            ClaimDelta::Removed(claim("10.240.0.32/28", "me", Some("10.0.0.1"))),
            // Another node's claim over a prefix we hold: stays unreachable here.
            ClaimDelta::Put(claim("10.240.0.0/28", "b", Some("10.0.0.2"))),
            ClaimDelta::Removed(claim("10.240.0.0/28", "b", Some("10.0.0.2"))),
            // Unroutable claims (no node IP, our IP) were never routed.
            ClaimDelta::Put(claim("10.240.0.48/28", "c", None)),
            ClaimDelta::Removed(claim("10.240.0.48/28", "c", None)),
            ClaimDelta::Put(claim("10.240.0.64/28", "d", Some("10.0.0.1"))),
            // A re-list: the caller re-plans everything.
            ClaimDelta::Resync,
        ];
        for d in &cases {
            assert_eq!(change_for(d, me, my_ip, &held), None, "{d:?}");
        }
    }

    #[test]
    fn deltas_applied_one_by_one_reach_the_full_plan() {
        // Start from the routes a full plan of `before` installs, apply the deltas that take
        // the claims to `after` one route at a time: the result is what a full plan of
        // `after` wants.
        let me = "me";
        let my_ip = Some(ip("10.0.0.1"));
        let held = [net("10.240.0.0/28")];
        let before = [
            claim("10.240.0.16/28", "b", Some("10.0.0.2")),
            claim("10.240.0.32/28", "c", Some("10.0.0.3")),
        ];
        let deltas = [
            ClaimDelta::Removed(before[0].clone()),
            ClaimDelta::Put(claim("10.240.0.48/28", "d", Some("10.0.0.4"))),
            ClaimDelta::Put(claim("10.240.0.16/28", "e", Some("10.0.0.5"))),
            ClaimDelta::Removed(claim("10.240.0.48/28", "d", Some("10.0.0.4"))),
        ];
        let mut view: BTreeMap<IpNetwork, PrefixClaim> =
            before.iter().map(|c| (c.prefix, c.clone())).collect();
        let mut routes = desired(&before, me, my_ip, &held).routes;
        for d in &deltas {
            crate::datastore::apply_delta(&mut view, d);
            match change_for(d, me, my_ip, &held) {
                Some(Change::Install(p, gw)) => {
                    routes.insert(p, Target::Via(gw));
                }
                Some(Change::Withdraw(p, gw)) if routes.get(&p) == Some(&Target::Via(gw)) => {
                    routes.remove(&p);
                }
                Some(Change::Withdraw(..)) | None => {}
            }
        }
        let after: Vec<PrefixClaim> = view.into_values().collect();
        assert_eq!(routes, desired(&after, me, my_ip, &held).routes);
    }

    /// IPv6: another node's prefix via its IPv6 node address, ours unreachable, IPv4
    /// claims ignored; pod /128 host routes never touched; a wrong route is replaced.
    #[test]
    fn ipv6_routes_follow_claims_per_family() {
        let n6 = |s: &str| -> Ipv6Network { s.parse().expect("cidr6") };
        let ip6 = |s: &str| -> Ipv6Addr { s.parse().expect("ip6") };
        let c6 = |p: &str, node: &str, via: Option<&str>| PrefixClaim {
            prefix: IpNetwork::V6(n6(p)),
            node: node.into(),
            node_ip: Some(ip("10.0.0.9")),
            node_ip6: via.map(ip6),
            claimed_at: 1,
        };
        let claims = vec![
            c6("fd00:10::/80", "b", Some("fd00:1::2")),
            c6("fd00:10:0:0:1::/80", "c", None),
            c6("fd00:10:0:0:2::/80", "me", Some("fd00:1::1")),
            claim("10.240.0.16/28", "b", Some("10.0.0.2")),
        ];
        let held = [n6("fd00:10:0:0:2::/80")];
        let (want, notes) = desired6(Some(&claims), "me", Some(ip6("fd00:1::1")), &held, &[]);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![
                (n6("fd00:10::/80"), Target6::Via(ip6("fd00:1::2"))),
                (n6("fd00:10:0:0:2::/80"), Target6::Unreachable),
            ]
        );
        assert!(
            notes.len() == 1 && notes[0].contains("no IPv6 node IP (--node-ip)"),
            "{notes:?}"
        );
        let (want, _) = desired6(Some(&claims), "me", None, &held, &[]);
        // Current: a pod host route (left alone), a stale peer route, a wrong gateway.
        let pod = crate::node::host::host_route6(ip6("fd00:10:0:0:2::5"), Some(9));
        let stale = route6(n6("fd00:10:0:0:7::/80"), Target6::Via(ip6("fd00:1::7")));
        let moved = route6(n6("fd00:10::/80"), Target6::Via(ip6("fd00:1::99")));
        let current = vec![pod.clone(), stale.clone(), moved.clone()];
        let (install, delete) = plan6(&want, &current);
        assert_eq!(
            install,
            vec![
                (n6("fd00:10::/80"), Target6::Via(ip6("fd00:1::2"))),
                (n6("fd00:10:0:0:2::/80"), Target6::Unreachable),
            ]
        );
        assert_eq!(delete, vec![moved, stale]);
        // The datastore cannot be listed: peer routes kept, ours follow the pool.
        let (kept, _) = desired6(None, "me", None, &held, &current);
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(!is_managed6(&pod));
    }
}
