//! The enforcement loop (`--network-policy=true`): three watches (Pods, Namespaces,
//! NetworkPolicies, all namespaces) feed one [`View`]; after each batch of events, and every
//! [`RECHECK`] (this node's pods come and go with ADD/DEL), the policy of this node's pods is
//! compiled, rendered, and applied as one nftables transaction — only when the rendered
//! ruleset differs from the one last applied (the renderer is deterministic).
//!
//! * Nothing is applied before all three kinds are listed once: a view without the
//!   policies would allow everything, one without the pods would deny every peer.
//! * This node's pods are the pool's allocations that carry a pod namespace and name (the
//!   plugin passes `K8S_POD_NAMESPACE`/`K8S_POD_NAME`), with the address the pool gave and
//!   the host veth named as the plugin names it.
//! * The netlink batch is committed on tokio's blocking pool, in the network namespace the agent runs in (the
//!   host's); nothing here enters another namespace.
//! * A ruleset the kernel refuses is counted and logged, and retried at the next pass; the
//!   table keeps the last one applied (one transaction: all or nothing).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use vpcnet_policy::{compile, render, Allow, LocalPod, NodePolicy, PodPolicy};

use super::admit;
use super::view::{Event, Kind, View};
use super::watch;
use crate::datastore::Datastore;
use crate::node::Node;
use crate::obs::metrics;

/// How often this node's pods are compared with the last compiled set even without an API
/// event (a pod's own MODIFIED event with its address normally comes sooner).
pub const RECHECK: Duration = Duration::from_secs(1);
/// How long a pass waits after a watch event for more before it applies (a burst of pod
/// events — a Deployment scaling — is one apply, not one each). An ADD waiting for its
/// decision never waits for it.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Where the inputs come from: a client of the API server, and its URL for the log.
#[derive(Clone)]
pub struct Source {
    pub client: kube::Client,
    pub server: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// One watch event, of any of the three kinds (boxed: a Pod is large).
#[derive(Debug)]
pub enum Input {
    Pods(Box<Event<Pod>>),
    Namespaces(Box<Event<Namespace>>),
    Policies(Box<Event<NetworkPolicy>>),
}

/// The loop's state: the view, and what was last compiled and applied.
#[derive(Debug, Default)]
pub struct Enforcer {
    view: View,
    /// The view or this node's pods changed since the last ruleset was applied (or found
    /// unchanged). A pod-only pass ([`Enforcer::plan`]'s fast path) is taken only from a
    /// clean state: every other pod's rules are then what is in force.
    dirty: bool,
    /// When the oldest change not yet in the kernel was seen.
    since: Option<Instant>,
    /// The local pods of the last pass.
    local: Vec<LocalPod>,
    /// What the ruleset in force was compiled from (for ADD admission and conntrack;
    /// `None` before this run's first apply). The kernel's table is what
    /// `render::render` of it gives.
    in_force: Option<NodePolicy>,
    /// The size of the ruleset in force: rules, sets plus maps.
    size: (usize, usize),
    /// The compiler's warnings last logged.
    warnings: Vec<String>,
}

/// What a pass decided to hand to the kernel.
#[derive(Debug)]
pub struct Plan {
    /// The whole table (`render::render`); `None` for a pod-only pass (the fast path of
    /// an ADD or DEL), which has only the delta.
    pub ruleset: Option<Value>,
    /// The text of what was rendered (the delta of a pod-only pass).
    pub text: String,
    /// The same change as a delta (`render::render_change`): only pods of this node added
    /// or removed, every other pod's rules unchanged. Tried first; the full `ruleset` if
    /// it fails.
    pub delta: Option<Value>,
    /// Local pods isolated in at least one direction.
    pub pods: usize,
    /// What it was rendered from.
    pub compiled: NodePolicy,
    /// Its rules, and its sets plus maps.
    pub rules: usize,
    pub sets: usize,
    /// A pod-only pass: the host veths of the pods it compiled (the only ones whose rules
    /// can have changed). `None`: a full pass.
    pub touched: Option<Vec<String>>,
    /// Where the pass's time went (debug log, docs/benchmarks.md).
    pub timing: Timing,
}

/// Where a pass's time went, before the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    pub compile: Duration,
    pub render: Duration,
}

/// The isolated pods of `p` as the renderer sees them (host veth, ingress, egress), sorted
/// by veth: two policies with the same of these render to the same table.
type RenderKey<'a> = Vec<(
    &'a str,
    &'a Option<BTreeSet<Allow>>,
    &'a Option<BTreeSet<Allow>>,
)>;

fn render_key(p: &NodePolicy) -> RenderKey<'_> {
    let mut v: Vec<_> = p
        .pods
        .iter()
        .filter(|pp| pp.ingress.is_some() || pp.egress.is_some())
        .map(|pp| (pp.host_veth.as_str(), &pp.ingress, &pp.egress))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// The isolated pods to add to a table holding `old`, and those to take out of it, when
/// that is all that changed: every pod in both has the same rules in both (an ADD, or a DEL,
/// of a pod no other pod's policy names). `None`: a full apply is needed.
type Change<'a> = (Vec<&'a PodPolicy>, Vec<&'a PodPolicy>);

pub fn changed_pods<'a>(old: &'a NodePolicy, new: &'a NodePolicy) -> Option<Change<'a>> {
    let isolated = |p: &&PodPolicy| p.ingress.is_some() || p.egress.is_some();
    let old_pods: Vec<&PodPolicy> = old.pods.iter().filter(isolated).collect();
    let new_pods: Vec<&PodPolicy> = new.pods.iter().filter(isolated).collect();
    let unique = |v: &[&PodPolicy]| {
        let mut names: Vec<&str> = v.iter().map(|p| p.host_veth.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len() == v.len()
    };
    if !unique(&old_pods) || !unique(&new_pods) {
        return None;
    }
    let mut added = Vec::new();
    for p in &new_pods {
        match old_pods.iter().find(|o| o.host_veth == p.host_veth) {
            Some(o) if o.ingress == p.ingress && o.egress == p.egress => {}
            Some(_) => return None,
            None => added.push(*p),
        }
    }
    let removed: Vec<&PodPolicy> = old_pods
        .iter()
        .filter(|o| !new_pods.iter().any(|p| p.host_veth == o.host_veth))
        .copied()
        .collect();
    (!added.is_empty()).then_some((added, removed))
}

/// How many rules, and sets plus maps, the transaction `ruleset` adds.
fn count(ruleset: &Value) -> (usize, usize) {
    let adds = ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("add"));
    let (mut rules, mut sets) = (0, 0);
    for a in adds {
        if a.get("rule").is_some() {
            rules += 1;
        } else if a.get("set").is_some() || a.get("map").is_some() {
            sets += 1;
        }
    }
    (rules, sets)
}

impl Enforcer {
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Applies one event to the view.
    pub fn input(&mut self, input: Input) {
        let changed = match input {
            Input::Pods(e) => self.view.pods(*e),
            Input::Namespaces(e) => self.view.namespaces(*e),
            Input::Policies(e) => self.view.policies(*e),
        };
        if changed {
            self.dirty = true;
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// The next pass compiles the whole node (a pod-only delta was refused).
    pub fn force_full(&mut self) {
        self.dirty = true;
        self.since.get_or_insert_with(Instant::now);
    }

    fn log_warnings(&mut self, warnings: &[String]) {
        if warnings != self.warnings {
            for w in warnings.iter().filter(|w| !self.warnings.contains(w)) {
                tracing::warn!(warning = %w, "network policy: skipped");
            }
            self.warnings = warnings.to_vec();
        }
    }

    /// What to apply for this node's pods `local` (sorted), or `None`: not synced yet, or
    /// nothing changed, or the ruleset renders to the same table as the one in force.
    ///
    /// When only this node's pods changed since the last pass (no API event: an ADD or a
    /// DEL) and no policy in force can name the pods that came or went, only the new pods
    /// are compiled, and the plan is their delta (`render::render_change`): no whole-node
    /// compile or render on the ADD path.
    pub fn plan(&mut self, local: Vec<LocalPod>) -> Option<Plan> {
        if local != self.local {
            let previous = std::mem::replace(&mut self.local, local);
            // Everything before this change is in force (or was found unchanged).
            let clean = !self.dirty;
            self.dirty = true;
            self.since.get_or_insert_with(Instant::now);
            if clean && self.view.synced() {
                if let Some(fast) = self.plan_pods(&previous) {
                    return fast;
                }
            }
        }
        if !self.view.synced() || !self.dirty {
            return None;
        }
        let t = Instant::now();
        let compiled = compile(&self.view.cluster(), &self.local);
        let compile_took = t.elapsed();
        self.log_warnings(&compiled.warnings);
        if let Some(old) = self.in_force.as_ref() {
            if render_key(old) == render_key(&compiled) {
                self.dirty = false;
                self.since = None;
                // Same table, but the pods' names or policies may differ: keep what is in
                // force current for the ADD gate.
                self.in_force = Some(compiled);
                return None;
            }
        }
        let t = Instant::now();
        let ruleset = render::render(&compiled);
        let text = ruleset.to_string();
        let (rules, sets) = count(&ruleset);
        let delta = self
            .in_force
            .as_ref()
            .and_then(|old| changed_pods(old, &compiled))
            .map(|(new, gone)| render::render_change(&new, &gone));
        let render_took = t.elapsed();
        Some(Plan {
            rules,
            sets,
            ruleset: Some(ruleset),
            text,
            delta,
            pods: isolated_count(&compiled),
            compiled,
            touched: None,
            timing: Timing {
                compile: compile_took,
                render: render_took,
            },
        })
    }

    /// The fast path of [`plan`](Self::plan): this node's pods went from `previous` to
    /// `self.local` and nothing else changed since the ruleset in force. `None`: a full
    /// pass is needed (nothing applied yet; a pod the API does not know; a pod that a
    /// policy in force may name as a peer, so other pods' sets change; the same veth
    /// both gone and come). `Some(None)`: nothing to apply.
    fn plan_pods(&mut self, previous: &[LocalPod]) -> Option<Option<Plan>> {
        let t = Instant::now();
        let in_force = self.in_force.as_ref()?;
        let added: Vec<&LocalPod> = self
            .local
            .iter()
            .filter(|p| !previous.contains(p))
            .collect();
        let removed: Vec<&LocalPod> = previous
            .iter()
            .filter(|p| !self.local.contains(p))
            .collect();
        if added
            .iter()
            .any(|a| removed.iter().any(|r| r.host_veth == a.host_veth))
        {
            return None;
        }
        // The policies in force on this node: only their sets could name the pods.
        let names: BTreeSet<&String> = in_force.pods.iter().flat_map(|p| &p.policies).collect();
        let policies: Vec<&NetworkPolicy> = names
            .iter()
            .filter_map(|n| {
                let (ns, name) = n.split_once('/')?;
                self.view.policy(ns, name)
            })
            .collect();
        if policies.len() != names.len() {
            return None;
        }
        for lp in added.iter().chain(&removed) {
            let vp = self.view.pod(&lp.namespace, &lp.name)?;
            let ns_labels = self.view.namespace_labels(&lp.namespace);
            if vpcnet_policy::may_name(policies.iter().copied(), &vp.info, ns_labels) {
                return None;
            }
        }
        let new =
            vpcnet_policy::compile_for(&self.view.cluster(), &self.local, |lp| added.contains(&lp));
        let compile_took = t.elapsed();
        if new.pods.iter().any(|n| {
            in_force.pods.iter().any(|o| o.host_veth == n.host_veth)
                && !removed.iter().any(|r| r.host_veth == n.host_veth)
        }) {
            return None;
        }
        let t = Instant::now();
        let gone: Vec<&PodPolicy> = in_force
            .pods
            .iter()
            .filter(|p| removed.iter().any(|r| r.host_veth == p.host_veth))
            .collect();
        let isolated = |p: &&PodPolicy| p.ingress.is_some() || p.egress.is_some();
        let new_iso: Vec<&PodPolicy> = new.pods.iter().filter(isolated).collect();
        let gone_iso: Vec<&PodPolicy> = gone.iter().copied().filter(isolated).collect();
        let (mut rules, mut sets) = self.size;
        for p in &new_iso {
            let (r, s) = render::pod_size(p);
            rules += r;
            sets += s;
        }
        for p in &gone_iso {
            let (r, s) = render::pod_size(p);
            rules = rules.saturating_sub(r);
            sets = sets.saturating_sub(s);
        }
        let delta = (!new_iso.is_empty() || !gone_iso.is_empty())
            .then(|| render::render_change(&new_iso, &gone_iso));
        let touched: Vec<String> = new.pods.iter().map(|p| p.host_veth.clone()).collect();
        let mut merged = NodePolicy {
            pods: in_force
                .pods
                .iter()
                .filter(|p| !removed.iter().any(|r| r.host_veth == p.host_veth))
                .cloned()
                .chain(new.pods)
                .collect(),
            warnings: in_force.warnings.clone(),
        };
        merged.pods.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
        let render_took = t.elapsed();
        let Some(delta) = delta else {
            // Pods no policy isolates: nothing for the kernel.
            self.in_force = Some(merged);
            self.dirty = false;
            self.since = None;
            return Some(None);
        };
        Some(Some(Plan {
            text: delta.to_string(),
            ruleset: None,
            delta: Some(delta),
            pods: isolated_count(&merged),
            compiled: merged,
            rules,
            sets,
            touched: Some(touched),
            timing: Timing {
                compile: compile_took,
                render: render_took,
            },
        }))
    }

    /// The kernel took `plan`: it is in force. Returns how long the change took to get there,
    /// and the directions of pods that were attached before and are now isolated with other
    /// rules than before (their conntrack entries must be checked against the new rules).
    pub fn applied(&mut self, plan: Plan) -> (Duration, Vec<Tightened>) {
        self.dirty = false;
        self.size = (plan.rules, plan.sets);
        let tightened = tightened(
            self.in_force.as_ref().unwrap_or(&NodePolicy::default()),
            &plan.compiled,
            plan.touched.as_deref(),
        );
        self.in_force = Some(plan.compiled);
        (
            self.since.take().map_or(Duration::ZERO, |t| t.elapsed()),
            tightened,
        )
    }

    /// What the ruleset in force was compiled from (`None` before the first apply).
    pub fn in_force(&self) -> Option<&NodePolicy> {
        self.in_force.as_ref()
    }
}

fn isolated_count(p: &NodePolicy) -> usize {
    p.pods
        .iter()
        .filter(|p| p.ingress.is_some() || p.egress.is_some())
        .count()
}

/// A local pod whose ingress and/or egress rules changed to an isolating set: the
/// connection-tracking entries of that direction the new set does not allow are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// Its IPv4 address (`None`: an IPv6-only pod).
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (a dual-stack or IPv6-only pod): its IPv6 connections are checked.
    pub ip6: Option<Ipv6Addr>,
    pub host_veth: String,
    /// The new ingress rules, when they changed to an isolating set.
    pub ingress: Option<BTreeSet<Allow>>,
    pub egress: Option<BTreeSet<Allow>>,
}

/// The pods of `new` whose direction changed to an isolating set since `old` (a pod `old`
/// does not have, with the same veth and address, counts as unisolated there: the loop may
/// learn of a pod only after it has been running for a while, and after an agent restart
/// `old` is empty while the kernel still has the connections).
/// `only`: the host veths whose rules may have changed (a pod-only pass); `None`: any.
fn tightened(old: &NodePolicy, new: &NodePolicy, only: Option<&[String]>) -> Vec<Tightened> {
    new.pods
        .iter()
        .filter(|np| only.is_none_or(|o| o.contains(&np.host_veth)))
        .filter_map(|np| {
            let op = old
                .pods
                .iter()
                .find(|o| o.host_veth == np.host_veth && o.ip == np.ip && o.ip6 == np.ip6);
            let changed = |o: Option<&BTreeSet<Allow>>, n: &Option<BTreeSet<Allow>>| match n {
                Some(set) if o != Some(set) => Some(set.clone()),
                _ => None,
            };
            let t = Tightened {
                ip: np.ip,
                ip6: np.ip6,
                host_veth: np.host_veth.clone(),
                ingress: changed(op.and_then(|o| o.ingress.as_ref()), &np.ingress),
                egress: changed(op.and_then(|o| o.egress.as_ref()), &np.egress),
            };
            (t.ingress.is_some() || t.egress.is_some()).then_some(t)
        })
        .collect()
}

/// This node's pods: the allocations with a pod namespace and name, sorted — of the IPv4
/// pool (with the same attachment's IPv6 address on a dual-stack node), and of the IPv6
/// pool that have no IPv4 address (an IPv6-only node's pods).
fn local_pods<D: Datastore>(node: &Node<D>) -> Vec<LocalPod> {
    let st = node.state();
    let mut v: Vec<LocalPod> = st
        .pool
        .allocations()
        .filter_map(|a| {
            let ns = a.meta.namespace.as_deref()?;
            let name = a.meta.name.as_deref()?;
            let ip6 = st
                .pool6
                .as_ref()
                .and_then(|p6| p6.get(&a.key))
                .map(|a6| a6.ip);
            Some(LocalPod::new(ns, name, a.ip, &a.key).with_ip6(ip6))
        })
        .collect();
    if let Some(p6) = st.pool6.as_ref() {
        v.extend(
            p6.allocations()
                .filter(|a6| st.pool.get(&a6.key).is_none())
                .filter_map(|a6| {
                    let ns = a6.meta.namespace.as_deref()?;
                    let name = a6.meta.name.as_deref()?;
                    Some(LocalPod::ipv6_only(ns, name, a6.ip, &a6.key))
                }),
        );
    }
    v.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
    v
}

/// Runs the watches and enforces what they show, until the agent stops. `admits`: the ADDs
/// waiting for their decision ([`admit`](super::admit)), answered after each pass.
pub async fn run<D: Datastore>(node: Arc<Node<D>>, source: Source, inbox: admit::Inbox) {
    let admit::Inbox {
        rx: mut admits,
        shared,
    } = inbox;
    let health = Arc::new(watch::Health::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Aborted when this future is dropped (the agent stops).
    let mut watches = JoinSet::new();
    let c = &source.client;
    watches.spawn(watch::run(
        Api::<Pod>::all(c.clone()),
        Kind::Pods,
        source.server.clone(),
        tx.clone(),
        |e| Input::Pods(Box::new(e)),
        health.clone(),
    ));
    watches.spawn(watch::run(
        Api::<Namespace>::all(c.clone()),
        Kind::Namespaces,
        source.server.clone(),
        tx.clone(),
        |e| Input::Namespaces(Box::new(e)),
        health.clone(),
    ));
    watches.spawn(watch::run(
        Api::<NetworkPolicy>::all(c.clone()),
        Kind::Policies,
        source.server.clone(),
        tx,
        |e| Input::Policies(Box::new(e)),
        health.clone(),
    ));
    tracing::info!(server = %source.server, "network policy: watching pods, namespaces, networkpolicies");
    let mut e = Enforcer::default();
    let session = SharedSession::default();
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut was_synced = false;
    let mut pending: Vec<admit::Request> = Vec::new();
    // Set by a watch event: no full apply before it (unless an ADD waits).
    let mut hold: Option<tokio::time::Instant> = None;
    loop {
        let hold_wait = async {
            match hold {
                Some(h) => tokio::time::sleep_until(h).await,
                None => std::future::pending().await,
            }
        };
        // The earliest deadline of a waiting ADD: answered then even without an event.
        let deadline = pending.iter().map(|r| r.deadline).min();
        let wait_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => match input {
                Some(i) => {
                    e.input(i);
                    // The whole batch that arrived together: one compile.
                    while let Ok(i) = rx.try_recv() {
                        e.input(i);
                    }
                    // At once, before this pass's apply: the server admits ADDs in namespaces
                    // without a policy from this.
                    shared.set_policy_namespaces(e.view().policy_namespaces());
                    hold.get_or_insert_with(|| tokio::time::Instant::now() + DEBOUNCE);
                }
                None => {
                    tracing::error!("network policy: every watch ended");
                    return;
                }
            },
            Some(req) = admits.recv() => {
                pending.push(req);
                while let Ok(req) = admits.try_recv() {
                    pending.push(req);
                }
            },
            _ = wait_deadline => {}
            _ = hold_wait => {}
            _ = tick.tick() => {}
        }
        if pending.is_empty() && hold.is_some_and(|h| tokio::time::Instant::now() < h) {
            continue;
        }
        hold = None;
        metrics::get().network_policies(e.view().policy_count());
        if !was_synced && e.view().synced() {
            was_synced = true;
            tracing::info!(
                pods = e.view().pod_count(),
                namespaces = e.view().namespace_count(),
                policies = e.view().policy_count(),
                "network policy: view in sync"
            );
        }
        let mut tightened = Vec::new();
        // At most twice: a pod-only delta the kernel refuses is followed by a full pass.
        for _ in 0..2 {
            let Some(plan) = e.plan(local_pods(&node)) else {
                break;
            };
            let size = (plan.rules, plan.sets);
            let fast = plan.touched.is_some();
            if let Some(t) = apply(&mut e, plan, &session, &mut last_error).await {
                tightened = t;
                metrics::get().network_policy_size(size.0, size.1);
                let mut st = lock(&shared);
                st.rules = u32::try_from(size.0).unwrap_or(u32::MAX);
                st.sets = u32::try_from(size.1).unwrap_or(u32::MAX);
                st.last_apply_ms = Some(crate::node::now_ms());
                break;
            }
            if !fast {
                break;
            }
            e.force_full();
        }
        // The ADDs first: a pod just admitted has no connection to check.
        let fresh = answer(&e, last_error.as_deref(), &mut pending);
        tightened.retain(|t| !fresh.contains(&t.host_veth));
        flush(tightened, node.ip(), node.ip6()).await;
        report(&node, &e, &shared, &health, last_error.as_deref());
    }
}

fn lock(shared: &admit::Shared) -> std::sync::MutexGuard<'_, vpcnet_proto::api::PolicyStatus> {
    shared
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Updates what `vpcnetd status` shows, and the `network-policy` degraded area: failing
/// watches (the view may be stale), or a ruleset the kernel refused.
fn report<D: Datastore>(
    node: &Node<D>,
    e: &Enforcer,
    shared: &admit::Shared,
    health: &watch::Health,
    last_error: Option<&str>,
) {
    let watch_errors = health.errors();
    let mut degraded: Vec<String> = watch_errors.clone();
    if let Some(err) = last_error {
        degraded.push(format!("ruleset not applied: {err}"));
    }
    node.set_degraded(
        crate::node::Area::NetworkPolicy,
        (!degraded.is_empty()).then(|| degraded.join("; ")),
    );
    let mut st = lock(shared);
    st.synced = e.view().synced();
    st.policies = u32::try_from(e.view().policy_count()).unwrap_or(u32::MAX);
    st.watch_errors = watch_errors;
    st.last_error = last_error.map(str::to_string);
    if let Some(p) = e.in_force() {
        let isolated: Vec<&vpcnet_policy::PodPolicy> = p
            .pods
            .iter()
            .filter(|pp| pp.ingress.is_some() || pp.egress.is_some())
            .collect();
        st.isolated_pods = u32::try_from(isolated.len()).unwrap_or(u32::MAX);
        let mut pods: Vec<String> = isolated
            .iter()
            .map(|pp| format!("{}/{}", pp.namespace, pp.name))
            .collect();
        pods.sort();
        st.isolated_pod_names = Some(pods);
        let mut names: Vec<String> = isolated
            .iter()
            .flat_map(|pp| pp.policies.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        st.policies_in_force = names;
    }
}

/// Applies `plan`. On success returns the directions whose conntrack entries must be
/// checked against the new rules ([`flush`], after the waiting ADDs are answered).
async fn apply(
    e: &mut Enforcer,
    plan: Plan,
    session: &SharedSession,
    last_error: &mut Option<String>,
) -> Option<Vec<Tightened>> {
    let ruleset = plan.ruleset.clone();
    let delta = plan.delta.clone();
    let t = Instant::now();
    let session = session.clone();
    let work = move || {
        let mut took = StepTimes::default();
        let mut session = session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(d) = delta {
            match send(&mut session, &d, &mut took) {
                Ok(()) => return (Ok(()), true, took),
                Err(e) if ruleset.is_some() => {
                    tracing::warn!(error = %e, "network policy: the delta was not applied; applying the whole ruleset")
                }
                Err(e) => return (Err(e), true, took),
            }
        }
        let r = match ruleset {
            Some(r) => send(&mut session, &r, &mut took),
            None => Ok(()),
        };
        (r, false, took)
    };
    // A pod-only delta (an ADD's) is a few kilobytes and one syscall (~0.2 ms in the
    // kernel): sent right here, without the hop to the blocking pool and back (a thread
    // wake-up each way, several ms on a loaded node). A whole table can take the kernel
    // hundreds of ms: on the blocking pool, off the runtime's thread.
    let r = if plan.ruleset.is_none() {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await
    };
    let r = r.map(|(r, as_delta, took)| {
        tracing::debug!(
            pod_only = plan.touched.is_some(),
            as_delta,
            compile_us = us(plan.timing.compile),
            render_us = us(plan.timing.render),
            translate_us = us(took.translate),
            kernel_us = us(took.kernel),
            apply_us = us(t.elapsed()),
            "network policy: pass"
        );
        r
    });
    match r {
        Ok(Ok(())) => {
            let pods = plan.pods;
            let (took, tightened) = e.applied(plan);
            metrics::get().network_policy_applied(Some((pods, took)));
            if last_error.take().is_some() {
                tracing::info!("network policy: applying rulesets again");
            }
            tracing::debug!(pods, took = ?took, "network policy: ruleset applied");
            Some(tightened)
        }
        Ok(Err(err)) => {
            metrics::get().network_policy_applied(None);
            let msg = err.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::error!(error = %msg, "network policy: the ruleset was not applied (retrying; the previous one stays in force)");
                *last_error = Some(msg);
            }
            None
        }
        Err(join) => {
            metrics::get().network_policy_applied(None);
            tracing::error!(error = %join, "network policy: applying panicked");
            *last_error = Some(join.to_string());
            None
        }
    }
}

/// Microseconds, for the debug log.
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Where an apply's time went on the blocking pool.
#[derive(Debug, Default, Clone, Copy)]
struct StepTimes {
    /// JSON -> netlink batch.
    translate: Duration,
    /// The batch's round trip through the kernel.
    kernel: Duration,
}

/// The loop's nf_tables socket, kept open across applies (closing one after a batch that
/// deleted chains or sets waits for an RCU grace period: ~10 ms on every ADD that follows
/// a DEL; `vpcnet_netlink::nftables::Session`). Opened on first use, in the agent's
/// (host) namespace; dropped after an error and opened again.
type SharedSession = Arc<std::sync::Mutex<Option<vpcnet_netlink::nftables::Session>>>;

/// Translates and commits `ruleset` on `session`, adding to `took`.
fn send(
    session: &mut Option<vpcnet_netlink::nftables::Session>,
    ruleset: &Value,
    took: &mut StepTimes,
) -> Result<(), vpcnet_policy::apply::ApplyError> {
    let t = Instant::now();
    let batch = vpcnet_policy::apply::batch(ruleset)?;
    took.translate += t.elapsed();
    let t = Instant::now();
    let s = match session {
        Some(s) => s,
        None => session.insert(
            vpcnet_netlink::nftables::Session::open()
                .map_err(vpcnet_policy::apply::ApplyError::Kernel)?,
        ),
    };
    let r = batch
        .commit_in(s)
        .map_err(vpcnet_policy::apply::ApplyError::Kernel);
    if r.is_err() {
        *session = None;
    }
    took.kernel += t.elapsed();
    r
}

/// Removes the conntrack entries the rules just applied no longer allow ([`flush_disallowed`]).
async fn flush(tightened: Vec<Tightened>, node_ip: Option<Ipv4Addr>, node_ip6: Option<Ipv6Addr>) {
    if tightened.is_empty() {
        return;
    }
    let r =
        tokio::task::spawn_blocking(move || flush_disallowed(&tightened, node_ip, node_ip6)).await;
    match r {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(
                entries = n,
                "network policy: deleted connections the new rules do not allow"
            );
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "network policy: deleting connections the new rules do not allow");
        }
        Err(join) => tracing::error!(error = %join, "network policy: conntrack panicked"),
    }
}

/// Answers the waiting ADDs that can be decided now, and fails closed those past their
/// deadline.
/// Returns the host veths of the fresh ADDs admitted with their rules in force (no
/// connection to check).
fn answer(
    e: &Enforcer,
    last_error: Option<&str>,
    pending: &mut Vec<admit::Request>,
) -> Vec<String> {
    let now = Instant::now();
    let mut fresh = Vec::new();
    let mut still = Vec::with_capacity(pending.len());
    for req in pending.drain(..) {
        let d = admit::decide(
            e.view(),
            e.in_force(),
            last_error,
            &req.namespace,
            &req.name,
            &req.host_veth,
        );
        match d {
            admit::Decision::Admit(how) => {
                // From the server's request to this answer (the ADD's whole wait).
                let waited = now.saturating_duration_since(req.deadline - admit::ADMIT_WAIT);
                tracing::debug!(pod = %format!("{}/{}", req.namespace, req.name), ?how,
                    waited_us = us(waited), "network policy: ADD admitted");
                if req.fresh && how == admit::Admitted::Enforced {
                    fresh.push(req.host_veth.clone());
                }
                let _ = req.reply.send(Ok(how));
            }
            admit::Decision::Wait(why) if now >= req.deadline => {
                tracing::warn!(error = %why, "network policy: ADD refused");
                let _ = req.reply.send(Err(why));
            }
            admit::Decision::Wait(_) => still.push(req),
        }
    }
    *pending = still;
    fresh
}

/// Deletes the conntrack entries (in the agent's namespace, the host's) that the tightened
/// directions no longer allow: for ingress, the connections the pod accepted (its address
/// is the responder: `reply.src`, after any DNAT) from a peer the rules do not allow on
/// that port; for egress, the connections the pod opened (`orig.src`) to a peer and port
/// the rules do not allow. Connections of the other direction are the pod's own business
/// (replies are never filtered). Connections with the node's own address `node_ip` are
/// never filtered (input/output hooks) and stay; likewise its IPv6 address `node_ip6`.
/// Both families: a dual-stack pod's IPv6 connections are checked against its address
/// `ip6`. Returns how many were deleted.
pub fn flush_disallowed(
    tightened: &[Tightened],
    node_ip: Option<Ipv4Addr>,
    node_ip6: Option<Ipv6Addr>,
) -> Result<usize, vpcnet_netlink::NetlinkError> {
    let doomed = |f: &vpcnet_netlink::conntrack::Flow| {
        let (src, dst) = (f.orig.src, f.reply.src);
        let node = |a: IpAddr| match a {
            IpAddr::V4(a) => node_ip == Some(a),
            IpAddr::V6(a) => node_ip6 == Some(a),
        };
        if node(src) || node(dst) || src.is_ipv4() != dst.is_ipv4() {
            return false;
        }
        let port = f.reply.sport;
        tightened.iter().any(|t| {
            let me = |a: IpAddr| match a {
                IpAddr::V4(a) => t.ip == Some(a),
                IpAddr::V6(a) => t.ip6 == Some(a),
            };
            let ingress = t.ingress.as_ref().is_some_and(|a| {
                me(dst) && !me(src) && !vpcnet_policy::allows(a, src, f.proto, port)
            });
            let egress = t.egress.as_ref().is_some_and(|a| {
                me(src) && !me(dst) && !vpcnet_policy::allows(a, dst, f.proto, port)
            });
            ingress || egress
        })
    };
    let mut n = 0;
    if tightened.iter().any(|t| t.ip.is_some()) {
        n += vpcnet_netlink::conntrack::delete_where(false, doomed)?;
    }
    if tightened.iter().any(|t| t.ip6.is_some()) {
        n += vpcnet_netlink::conntrack::delete_where(true, doomed)?;
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"containers": []},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    fn np(ns: &str, name: &str) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .unwrap()
    }

    fn local(ns: &str, name: &str, ip: &str, cid: &str) -> LocalPod {
        let key = vpcnet_pool::AllocKey {
            network: "vpcnet".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
        };
        LocalPod::new(ns, name, ip.parse().unwrap(), &key)
    }

    fn synced(e: &mut Enforcer) {
        e.input(Input::Pods(Box::new(Event::Listed(vec![pod(
            "x", "a", "10.0.0.1",
        )]))));
        e.input(Input::Namespaces(Box::new(Event::Listed(vec![]))));
        e.input(Input::Policies(Box::new(Event::Listed(vec![]))));
    }

    #[test]
    fn nothing_is_applied_before_every_kind_is_listed() {
        let mut e = Enforcer::default();
        e.input(Input::Pods(Box::new(Event::Listed(vec![pod(
            "x", "a", "10.0.0.1",
        )]))));
        e.input(Input::Policies(Box::new(Event::Put(np("x", "deny")))));
        assert!(e.plan(vec![local("x", "a", "10.0.0.1", "c1")]).is_none());
        e.input(Input::Namespaces(Box::new(Event::Listed(vec![]))));
        assert!(e.plan(vec![local("x", "a", "10.0.0.1", "c1")]).is_none());
        e.input(Input::Policies(Box::new(Event::Listed(vec![np(
            "x", "deny",
        )]))));
        let p = e.plan(vec![local("x", "a", "10.0.0.1", "c1")]).unwrap();
        assert_eq!(p.pods, 1);
    }

    #[test]
    fn a_dual_stack_pod_is_tightened_with_its_ipv6_address_and_rendered_with_ipv6_sets() {
        let mut e = Enforcer::default();
        e.input(Input::Pods(Box::new(Event::Listed(vec![
            pod("x", "a", "10.0.0.1"),
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": "b", "labels": {"pod": "b"}},
                "spec": {"containers": []},
                "status": {"podIP": "10.0.0.2", "podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}]},
            }))
            .unwrap(),
        ]))));
        e.input(Input::Namespaces(Box::new(Event::Listed(vec![]))));
        e.input(Input::Policies(Box::new(Event::Listed(vec![
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": "from-b"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]},
            }))
            .unwrap(),
        ]))));
        // a's IPv6 address comes from the node (its IPv6 pool), not the API.
        let a = vec![local("x", "a", "10.0.0.1", "c1").with_ip6(Some("fd00::1".parse().unwrap()))];
        let p = e.plan(a).unwrap();
        assert!(p.text.contains("ipv6_addr"), "{}", p.text);
        assert!(
            p.text.contains("\"fd00::2\""),
            "b's IPv6 address is a peer: {}",
            p.text
        );
        let (_, tightened) = e.applied(p);
        assert_eq!(tightened.len(), 1);
        assert_eq!(tightened[0].ip6, Some("fd00::1".parse().unwrap()));
        let ing = tightened[0].ingress.as_ref().unwrap();
        assert!(vpcnet_policy::allows(
            ing,
            "fd00::2".parse::<Ipv6Addr>().unwrap(),
            6,
            80
        ));
        assert!(!vpcnet_policy::allows(
            ing,
            "fd00::3".parse::<Ipv6Addr>().unwrap(),
            6,
            80
        ));
        assert!(vpcnet_policy::allows(
            ing,
            "10.0.0.2".parse::<Ipv4Addr>().unwrap(),
            6,
            80
        ));
    }

    fn labelled(ns: &str, name: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": []},
        }))
        .unwrap()
    }

    fn sorted(mut v: Vec<LocalPod>) -> Vec<LocalPod> {
        v.sort_by(|a, b| a.host_veth.cmp(&b.host_veth));
        v
    }

    #[test]
    fn an_add_or_del_no_policy_in_force_names_is_a_pod_only_pass_equal_to_a_full_one() {
        let mut e = Enforcer::default();
        e.input(Input::Pods(Box::new(Event::Listed(vec![
            labelled("x", "a", json!({"pod": "a"})),
            labelled("x", "b", json!({"pod": "b"})),
            labelled("x", "c", json!({"pod": "c", "role": "client"})),
            labelled("x", "d", json!({"pod": "d"})),
        ]))));
        e.input(Input::Namespaces(Box::new(Event::Listed(vec![]))));
        e.input(Input::Policies(Box::new(Event::Listed(vec![
            np("x", "deny"),
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": "clients-to-a"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]},
            }))
            .unwrap(),
        ]))));
        let a = local("x", "a", "10.0.0.1", "c1");
        let b = local("x", "b", "10.0.0.2", "c2");
        let c = local("x", "c", "10.0.0.3", "c3");
        // d is IPv6-only.
        let d = LocalPod::ipv6_only(
            "x",
            "d",
            "fd00::4".parse().unwrap(),
            &vpcnet_pool::AllocKey {
                network: "vpcnet".into(),
                container_id: "c4".into(),
                ifname: "eth0".into(),
            },
        );
        let full = |e: &Enforcer, l: &[LocalPod]| compile(&e.view().cluster(), l);
        let p = e.plan(vec![a.clone()]).unwrap();
        assert!(p.touched.is_none(), "the first pass is a full one");
        e.applied(p);
        // b comes; no policy in force names b: only b is compiled, only its delta is sent.
        let ab = sorted(vec![a.clone(), b.clone()]);
        let p = e.plan(ab.clone()).unwrap();
        assert_eq!(p.touched.as_deref(), Some(&[b.host_veth.clone()][..]));
        assert!(p.ruleset.is_none());
        let delta = p.delta.as_ref().unwrap().to_string();
        assert!(
            delta.contains(&b.host_veth) && !delta.contains(&a.host_veth),
            "{delta}"
        );
        assert_eq!(render_key(&p.compiled), render_key(&full(&e, &ab)));
        let (_, tightened) = e.applied(p);
        assert_eq!(tightened.len(), 1, "b, newly isolated");
        // d comes, IPv6-only: a pod-only pass too, and it is isolated.
        let abd = sorted(vec![a.clone(), b.clone(), d.clone()]);
        let p = e.plan(abd.clone()).unwrap();
        assert_eq!(p.touched.as_deref(), Some(&[d.host_veth.clone()][..]));
        let pd = p
            .compiled
            .pods
            .iter()
            .find(|x| x.host_veth == d.host_veth)
            .unwrap();
        assert_eq!((pd.ip, pd.ip6), (None, d.ip6));
        assert!(pd.ingress.is_some());
        assert_eq!(render_key(&p.compiled), render_key(&full(&e, &abd)));
        let (_, tightened) = e.applied(p);
        assert_eq!(tightened[0].ip, None);
        // c comes: a's policy names it (role=client), so a's set changes: a full pass.
        let abcd = sorted(vec![a.clone(), b.clone(), c.clone(), d.clone()]);
        let p = e.plan(abcd.clone()).unwrap();
        assert!(p.touched.is_none() && p.ruleset.is_some());
        assert_eq!(render_key(&p.compiled), render_key(&full(&e, &abcd)));
        e.applied(p);
        // b goes (DEL): a pod-only removal.
        let acd = sorted(vec![a.clone(), c.clone(), d.clone()]);
        let p = e.plan(acd.clone()).unwrap();
        assert_eq!(p.touched.as_deref(), Some(&[][..]));
        let delta = p.delta.as_ref().unwrap().to_string();
        assert!(
            delta.contains("delete") && delta.contains(&b.host_veth),
            "{delta}"
        );
        assert_eq!(render_key(&p.compiled), render_key(&full(&e, &acd)));
        let size = (p.rules, p.sets);
        e.applied(p);
        // The size kept by pod-only passes is the size of a full render.
        let whole = render::render(&full(&e, &acd));
        assert_eq!(size, count(&whole));
        // An API event since the last pass: the next ADD is a full pass.
        e.input(Input::Pods(Box::new(Event::Put(pod("y", "z", "10.9.0.1")))));
        let p = e.plan(sorted(vec![a, b, c, d])).unwrap();
        assert!(p.touched.is_none());
    }

    #[test]
    fn applies_only_what_changed_the_ruleset() {
        let mut e = Enforcer::default();
        synced(&mut e);
        let a = vec![local("x", "a", "10.0.0.1", "c1")];
        // No policy: an empty table still goes in once (replacing whatever was there).
        let p = e.plan(a.clone()).unwrap();
        assert_eq!(p.pods, 0);
        assert!(e.applied(p).1.is_empty());
        assert!(e.plan(a.clone()).is_none(), "nothing changed");
        // A policy selecting a.
        e.input(Input::Policies(Box::new(Event::Put(np("x", "deny")))));
        let p = e.plan(a.clone()).unwrap();
        assert_eq!(p.pods, 1);
        assert!(p.text.contains("jump"), "{}", p.text);
        let (took, tightened) = e.applied(p);
        assert!(took < Duration::from_secs(5));
        // a was attached before and is isolated now: its connections are checked.
        assert_eq!(tightened.len(), 1);
        assert_eq!(
            tightened[0].ip,
            Some("10.0.0.1".parse::<Ipv4Addr>().unwrap())
        );
        assert_eq!(tightened[0].ingress.as_ref().map(BTreeSet::len), Some(0));
        assert!(tightened[0].egress.is_none());
        // An event that changes nothing the compiler reads: no pass at all.
        e.input(Input::Policies(Box::new(Event::Put(np("x", "deny")))));
        assert!(e.plan(a.clone()).is_none());
        // A pod on another node changes the view but not this node's ruleset.
        e.input(Input::Pods(Box::new(Event::Put(pod("y", "z", "10.9.0.1")))));
        assert!(e.plan(a.clone()).is_none(), "same bytes: not applied again");
        // This node gets a second pod: new chains.
        let ab = vec![
            local("x", "a", "10.0.0.1", "c1"),
            local("x", "b", "10.0.0.2", "c2"),
        ];
        let p = e.plan(ab.clone()).unwrap();
        assert_eq!(p.pods, 2);
        // a's rules are unchanged and no rule names b: the ADD is a delta of b alone.
        let d = p.delta.as_ref().expect("a delta").to_string();
        assert!(d.contains(ab[1].host_veth.as_str()), "{d}");
        assert!(!d.contains(ab[0].host_veth.as_str()), "{d}");
        // Not applied (the kernel refused): the next pass offers it again.
        let p = e.plan(ab.clone()).unwrap();
        e.applied(p);
        // The policy is deleted: the pods are no longer isolated.
        e.input(Input::Policies(Box::new(Event::Deleted(np("x", "deny")))));
        let p = e.plan(ab).unwrap();
        assert_eq!(p.pods, 0);
        assert!(p.delta.is_none(), "a policy change is a full apply");
        assert!(!p.text.contains("jump"), "{}", p.text);
    }
}
