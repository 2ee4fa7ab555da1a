//! The agent's Prometheus metrics (`prometheus-client`, OpenMetrics text), served on
//! `--metrics-addr` by [`crate::obs::http`].
//!
//! Pool gauges are not updated on every change: they are read from the pool when scraped
//! ([`Metrics::encode`]), so the ADD path pays nothing for them. Counters and the claim
//! histogram are process-wide (one agent per process) and cost one atomic add where they
//! are counted.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `vpcnet_addresses{family}` | gauge | usable addresses the node holds (`stats.total`); `family` is `ipv4`, and `ipv6` on a node with an IPv6 VPC (IPv6 counts saturate at 2^32-1) |
//! | `vpcnet_addresses_assigned{family}` | gauge | addresses assigned to pods |
//! | `vpcnet_addresses_cooling{family}` | gauge | released addresses still cooling down |
//! | `vpcnet_addresses_available{family}` | gauge | `total - assigned - cooling` |
//! | `vpcnet_prefixes{family}` | gauge | prefixes the node holds |
//! | `vpcnet_prefixes_free{family}` | gauge | held prefixes with no assigned or cooling address |
//! | `vpcnet_max_pods` | gauge | `--max-pods` |
//! | `vpcnet_ready` | gauge | 1 once start-up reconcile is done |
//! | `vpcnet_can_assign` | gauge | 1 when an ADD can get an address (now, or by growing) |
//! | `vpcnet_degraded{area}` | gauge | per area (`datastore`, `pool`, `claims`, `peers`, `network-policy`): 1 degraded, 0 not (every area always shown) |
//! | `vpcnet_cni_requests_total{op,result}` | counter | ADD/DEL/GC served (`result="ok"`) and failed (`"error"`) |
//! | `vpcnet_prefix_claims_total{result}` | counter | prefix claim attempts: `claimed`, `taken` (by another node), `error` |
//! | `vpcnet_prefix_claim_duration_seconds` | histogram | latency of one datastore claim |
//! | `vpcnet_cni_plugin_duration_seconds{op,result}` | histogram | ADD/DEL as the runtime saw them: the plugin's own start-to-result time, `ok` or `error` (a data-plane failure after an ok assign counts as `error` here) |
//! | `vpcnet_datastore_errors_total{op}` | counter | failed datastore calls by operation: `claim`, `release`, `list` ([`crate::obs::counted`]) |
//! | `vpcnet_vpc_prefixes` | gauge | prefixes of `--prefix-len` the VPC CIDRs hold |
//! | `vpcnet_vpc_prefixes_claimed` | gauge | of those, claimed by any node (cluster-wide, as of the last listing) |
//! | `vpcnet_vpc_prefixes_free` | gauge | `vpc_prefixes - vpc_prefixes_claimed`: what the cluster can still grow by |
//! | `vpcnet_datastore_requests_total{op}` | counter | requests sent to etcd: `list` (every claim), `get` (one claim), `txn`, `watch` (created), `lease` (grant, look-up, keep-alive) |
//! | `vpcnet_etcd_claims_swept_total` | counter | claims of other nodes this agent deleted because their node showed no liveness for `--etcd-claim-grace` (etcd) |
//! | `vpcnet_reconcile_actions_total{action}` | counter | `released`, `veths_deleted`, `routes_deleted`, `routes_restored` |
//! | `vpcnet_reconcile_runs_total{result}` | counter | reconcile passes, `ok` or `error` |
//! | `vpcnet_peer_route_updates_total{how}` | counter | peer routing work: `delta` (one route added or withdrawn for one watch delta), `replan` (a full re-plan of every peer route: start, re-list, pool change, the `--peer-sync-interval` timer) |
//! | `vpcnet_journal_syncs_total` | counter | `fdatasync`s of the pool journal: one per change, or one per batch of ADDs that arrived together (group commit) |
//! | `vpcnet_journal_records_total` | counter | records those syncs made durable (one per change) |
//! | `vpcnet_pool_waiting_for_prefix` | gauge | 1 while the last claim attempt lost every race (contention, not exhaustion: the node retries with back-off), else 0 |
//! | `vpcnet_network_policies` | gauge | NetworkPolicy objects in the agent's view (`--network-policy=true`) |
//! | `vpcnet_network_policy_pods` | gauge | this node's pods isolated in a direction, as last applied |
//! | `vpcnet_network_policy_rules`, `vpcnet_network_policy_sets` | gauge | rules, and sets plus maps, of `table inet vpcnet-policy` as last applied |
//! | `vpcnet_network_policy_applies_total{result}` | counter | rulesets handed to the kernel, `ok` or `error` |
//! | `vpcnet_network_policy_change_to_kernel_seconds` | histogram | from a change the policy view saw to its ruleset in the kernel |
//! | `vpcnet_build_info{version}` | gauge | always 1; `version` is vpcnetd's (which build runs where, mid-upgrade) |
//!
//! Beside these, without the `vpcnet_` prefix, the standard process metrics
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_cpu_seconds_total`, …),
//! read from `/proc/self` at scrape time: [`crate::obs::process`].

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::obs::process::ProcessMetrics;
use vpcnet_proto::api::{AgentStatus, Reply};

/// One label: `(name, value)`.
type Label = (&'static str, &'static str);

/// Which plugin request a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Gc,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
            Op::Gc => "gc",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The unprefixed `process_*` metrics.
    process_registry: Registry,
    process: ProcessMetrics,
    /// The pool gauges, by `family` (`ipv4`, and `ipv6` on a node with an IPv6 VPC).
    addresses: Family<[Label; 1], Gauge>,
    assigned: Family<[Label; 1], Gauge>,
    cooling: Family<[Label; 1], Gauge>,
    available: Family<[Label; 1], Gauge>,
    prefixes: Family<[Label; 1], Gauge>,
    free_prefixes: Family<[Label; 1], Gauge>,
    max_pods: Gauge,
    ready: Gauge,
    can_assign: Gauge,
    degraded: Family<[Label; 1], Gauge>,
    cni: Family<[Label; 2], Counter>,
    claims: Family<[Label; 1], Counter>,
    claim_seconds: Histogram,
    plugin_seconds: Family<[Label; 2], Histogram, fn() -> Histogram>,
    datastore_errors: Family<[Label; 1], Counter>,
    vpc_prefixes: Gauge,
    vpc_claimed: Gauge,
    vpc_free: Gauge,
    datastore_requests: Family<[Label; 1], Counter>,
    reconcile_actions: Family<[Label; 1], Counter>,
    reconcile_runs: Family<[Label; 1], Counter>,
    peer_updates: Family<[Label; 1], Counter>,
    journal_syncs: Counter,
    journal_records: Counter,
    claims_swept: Counter,
    waiting: Gauge,
    policy_objects: Gauge,
    policy_pods: Gauge,
    policy_rules: Gauge,
    policy_sets: Gauge,
    policy_applies: Family<[Label; 1], Counter>,
    policy_apply_seconds: Histogram,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("vpcnet");
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let by_family = |r: &mut Registry, name: &str, help: &str| {
            let g = Family::<[Label; 1], Gauge>::default();
            r.register(name, help, g.clone());
            g
        };
        let addresses = by_family(
            &mut r,
            "addresses",
            "Usable addresses this node holds, by family (IPv6 saturates at 2^32-1)",
        );
        let assigned = by_family(&mut r, "addresses_assigned", "Addresses assigned to pods");
        let cooling = by_family(
            &mut r,
            "addresses_cooling",
            "Released addresses still cooling down",
        );
        let available = by_family(
            &mut r,
            "addresses_available",
            "Addresses free to assign now (total - assigned - cooling)",
        );
        let prefixes = by_family(&mut r, "prefixes", "Prefixes this node holds");
        let free_prefixes = by_family(
            &mut r,
            "prefixes_free",
            "Held prefixes with no assigned and no cooling address",
        );
        let max_pods = gauge(&mut r, "max_pods", "Most pods on this node (--max-pods)");
        let ready = gauge(&mut r, "ready", "1 once the start-up reconcile is done");
        let can_assign = gauge(
            &mut r,
            "can_assign",
            "1 when an ADD can get an address (the pool has one or can grow)",
        );
        let degraded = Family::<[Label; 1], Gauge>::default();
        r.register(
            "degraded",
            "1 for each area the agent reports as degraded",
            degraded.clone(),
        );
        let cni = Family::<[Label; 2], Counter>::default();
        r.register(
            "cni_requests",
            "Plugin requests served (result=ok) and failed (result=error), by op",
            cni.clone(),
        );
        for op in [Op::Add, Op::Del, Op::Gc] {
            for result in ["ok", "error"] {
                let _ = cni.get_or_create(&[("op", op.name()), ("result", result)]);
            }
        }
        let claims = Family::<[Label; 1], Counter>::default();
        r.register(
            "prefix_claims",
            "Prefix claim attempts: claimed, taken (by another node), error",
            claims.clone(),
        );
        for result in ["claimed", "taken", "error"] {
            let _ = claims.get_or_create(&[("result", result)]);
        }
        // 1 ms … ~16 s.
        let claim_seconds = Histogram::new(doubling_buckets(0.001, 15));
        let plugin_seconds: Family<[Label; 2], Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(doubling_buckets(0.0005, 16)));
        r.register(
            "cni_plugin_duration_seconds",
            "ADD/DEL as the runtime saw them: the plugin's time from start to result, by op and result (reported by the plugin)",
            plugin_seconds.clone(),
        );
        r.register(
            "prefix_claim_duration_seconds",
            "Latency of one prefix claim in the datastore",
            claim_seconds.clone(),
        );
        let datastore_requests = Family::<[Label; 1], Counter>::default();
        r.register(
            "datastore_requests",
            "Requests sent to the datastore (etcd) by op: list, get, txn, watch, lease",
            datastore_requests.clone(),
        );
        for op in ["list", "get", "txn", "watch", "lease"] {
            let _ = datastore_requests.get_or_create(&[("op", op)]);
        }
        let datastore_errors = Family::<[Label; 1], Counter>::default();
        r.register(
            "datastore_errors",
            "Failed datastore calls by operation: claim, release, list",
            datastore_errors.clone(),
        );
        for op in ["claim", "release", "list"] {
            let _ = datastore_errors.get_or_create(&[("op", op)]);
        }
        let vpc_prefixes = gauge(
            &mut r,
            "vpc_prefixes",
            "Prefixes of --prefix-len the VPC CIDRs hold",
        );
        let vpc_claimed = gauge(
            &mut r,
            "vpc_prefixes_claimed",
            "VPC prefixes claimed by any node, cluster-wide (as of the last listing)",
        );
        let vpc_free = gauge(
            &mut r,
            "vpc_prefixes_free",
            "VPC prefixes no node has claimed (as of the last listing)",
        );
        let reconcile_actions = Family::<[Label; 1], Counter>::default();
        r.register(
            "reconcile_actions",
            "What reconcile fixed: released (allocation without veth), veths_deleted, routes_deleted, routes_restored (allocation with veth, route missing)",
            reconcile_actions.clone(),
        );
        for action in [
            "released",
            "veths_deleted",
            "routes_deleted",
            "routes_restored",
        ] {
            let _ = reconcile_actions.get_or_create(&[("action", action)]);
        }
        let reconcile_runs = Family::<[Label; 1], Counter>::default();
        r.register(
            "reconcile_runs",
            "Reconcile passes, by result",
            reconcile_runs.clone(),
        );
        for result in ["ok", "error"] {
            let _ = reconcile_runs.get_or_create(&[("result", result)]);
        }
        let peer_updates = Family::<[Label; 1], Counter>::default();
        r.register(
            "peer_route_updates",
            "Peer routing work: delta (one route for one watch delta), replan (every peer route)",
            peer_updates.clone(),
        );
        for how in ["delta", "replan"] {
            let _ = peer_updates.get_or_create(&[("how", how)]);
        }
        let journal_syncs = Counter::default();
        r.register(
            "journal_syncs",
            "fdatasyncs of the pool journal (one per prefix change; with --journal-sync every-change one per change, or per batch of ADDs that arrived together)",
            journal_syncs.clone(),
        );
        let journal_records = Counter::default();
        r.register(
            "journal_records",
            "Journal records (changes) written to the pool journal",
            journal_records.clone(),
        );
        let claims_swept = Counter::default();
        r.register(
            "etcd_claims_swept",
            "Claims of other nodes deleted because their node showed no liveness for --etcd-claim-grace",
            claims_swept.clone(),
        );
        let waiting = gauge(
            &mut r,
            "pool_waiting_for_prefix",
            "1 while the last claim lost every race (waiting for a prefix, not exhausted)",
        );
        let policy_objects = gauge(
            &mut r,
            "network_policies",
            "NetworkPolicy objects in the agent's view of the cluster (--network-policy)",
        );
        let policy_pods = gauge(
            &mut r,
            "network_policy_pods",
            "This node's pods some NetworkPolicy selects, as last applied to the kernel",
        );
        let policy_rules = gauge(
            &mut r,
            "network_policy_rules",
            "Rules in table inet vpcnet-policy, as last applied",
        );
        let policy_sets = gauge(
            &mut r,
            "network_policy_sets",
            "Sets and maps in table inet vpcnet-policy, as last applied",
        );
        let policy_applies = Family::<[Label; 1], Counter>::default();
        r.register(
            "network_policy_applies",
            "Rulesets handed to the kernel (table inet vpcnet-policy), by result: ok, error",
            policy_applies.clone(),
        );
        for result in ["ok", "error"] {
            let _ = policy_applies.get_or_create(&[("result", result)]);
        }
        // 1 ms … ~16 s.
        let policy_apply_seconds = Histogram::new(doubling_buckets(0.001, 15));
        r.register(
            "network_policy_change_to_kernel_seconds",
            "From a change the policy view saw (API event, pod attached or gone) to its ruleset in the kernel",
            policy_apply_seconds.clone(),
        );
        let build_info = Family::<[Label; 1], Gauge>::default();
        r.register(
            "build_info",
            "Always 1; the version label is this vpcnetd's",
            build_info.clone(),
        );
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        let mut process_registry = Registry::default();
        let process = ProcessMetrics::register(&mut process_registry);
        Metrics {
            registry: r,
            process_registry,
            process,
            addresses,
            assigned,
            cooling,
            available,
            prefixes,
            free_prefixes,
            max_pods,
            ready,
            can_assign,
            degraded,
            cni,
            claims,
            claim_seconds,
            plugin_seconds,
            datastore_errors,
            vpc_prefixes,
            vpc_claimed,
            vpc_free,
            datastore_requests,
            reconcile_actions,
            reconcile_runs,
            peer_updates,
            journal_syncs,
            journal_records,
            claims_swept,
            waiting,
            policy_objects,
            policy_pods,
            policy_rules,
            policy_sets,
            policy_applies,
            policy_apply_seconds,
        }
    }

    /// Peer routing work: `delta` (one route for one watch delta) or `replan`.
    pub fn peer_update(&self, how: &'static str) {
        self.peer_updates(how, 1);
    }

    /// `n` peer route updates of one kind at once (a batch of deltas).
    pub fn peer_updates(&self, how: &'static str, n: u64) {
        if n > 0 {
            self.peer_updates.get_or_create(&[("how", how)]).inc_by(n);
        }
    }

    /// One journal append of `records` records, flushed with one sync if `synced`.
    pub fn journal_appended(&self, records: usize, synced: bool) {
        if synced {
            self.journal_syncs.inc();
        }
        self.journal_records
            .inc_by(u64::try_from(records).unwrap_or(u64::MAX));
    }

    /// `n` claims of a node without liveness swept (etcd).
    pub fn claims_swept(&self, n: usize) {
        self.claims_swept
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// NetworkPolicy: how many objects the view holds.
    pub fn network_policies(&self, n: usize) {
        self.policy_objects
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// NetworkPolicy: one ruleset handed to the kernel: `Some` on success, with how many
    /// local pods it isolates and how long since the change it carries was seen; `None` when
    /// the kernel (or nft) refused it.
    pub fn network_policy_applied(&self, ok: Option<(usize, Duration)>) {
        let label = if ok.is_some() { "ok" } else { "error" };
        self.policy_applies
            .get_or_create(&[("result", label)])
            .inc();
        if let Some((pods, took)) = ok {
            self.policy_pods
                .set(i64::try_from(pods).unwrap_or(i64::MAX));
            self.policy_apply_seconds.observe(took.as_secs_f64());
        }
    }

    /// NetworkPolicy: the rules and sets (maps included) of the ruleset in force.
    pub fn network_policy_size(&self, rules: usize, sets: usize) {
        self.policy_rules
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.policy_sets
            .set(i64::try_from(sets).unwrap_or(i64::MAX));
    }

    /// Whether the node is waiting for a prefix (lost every race of its last claim).
    pub fn waiting_for_prefix(&self, waiting: bool) {
        self.waiting.set(b(waiting));
    }

    /// Counts a plugin request by its reply, and hands the reply back.
    pub fn cni_reply(&self, op: Op, reply: Reply) -> Reply {
        let result = if matches!(reply, Reply::Error { .. }) {
            "error"
        } else {
            "ok"
        };
        self.cni
            .get_or_create(&[("op", op.name()), ("result", result)])
            .inc();
        reply
    }

    /// An ADD or DEL as the plugin saw it (`Request::Observed`).
    pub fn plugin_observed(&self, op: &'static str, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.plugin_seconds
            .get_or_create(&[("op", op), ("result", result)])
            .observe(took.as_secs_f64());
    }

    /// One datastore claim: how long it took and how it ended (`Ok(true)` claimed,
    /// `Ok(false)` taken by someone else).
    pub fn claim_observed<E>(&self, took: Duration, outcome: &Result<bool, E>) {
        self.claim_seconds.observe(took.as_secs_f64());
        let result = match outcome {
            Ok(true) => "claimed",
            Ok(false) => "taken",
            Err(_) => "error",
        };
        self.claims.get_or_create(&[("result", result)]).inc();
    }

    /// A failed datastore call (`op`: `claim`, `release`, `list`).
    pub fn datastore_error(&self, op: &'static str) {
        self.datastore_errors.get_or_create(&[("op", op)]).inc();
    }

    /// The VPC's size in prefixes and, once listed, how many any node has claimed.
    pub fn vpc_capacity(&self, total: u64, claimed: Option<u64>) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.vpc_prefixes.set(g(total));
        if let Some(c) = claimed {
            self.vpc_claimed.set(g(c));
            self.vpc_free.set(g(total.saturating_sub(c)));
        }
    }

    /// One request sent to the datastore (`op`: `list`, `get`, `txn`, `watch`, `lease`).
    pub fn datastore_request(&self, op: &'static str) {
        self.datastore_requests.get_or_create(&[("op", op)]).inc();
    }

    /// A reconcile pass: what it did, by action (see `loops::reconcile::Report::actions`),
    /// or `None` when it failed.
    pub fn reconciled(&self, actions: Option<[(&'static str, usize); 4]>) {
        let Some(actions) = actions else {
            self.reconcile_runs
                .get_or_create(&[("result", "error")])
                .inc();
            return;
        };
        self.reconcile_runs.get_or_create(&[("result", "ok")]).inc();
        for (action, n) in actions {
            if n > 0 {
                self.reconcile_actions
                    .get_or_create(&[("action", action)])
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }

    /// The OpenMetrics text, with the pool gauges set from `status` (read at scrape time).
    /// `areas`: every area with whether it is degraded (each is shown, 0 or 1, so a
    /// dashboard or alert sees 0 rather than no data on a healthy node).
    pub fn encode(&self, status: &AgentStatus, areas: &[(&'static str, bool)]) -> String {
        let families = std::iter::once(("ipv4", &status.stats))
            .chain(status.pool6.as_ref().map(|p| ("ipv6", &p.stats)));
        for g in [
            &self.addresses,
            &self.assigned,
            &self.cooling,
            &self.available,
            &self.prefixes,
            &self.free_prefixes,
        ] {
            g.clear();
        }
        for (family, s) in families {
            let l = [("family", family)];
            self.addresses.get_or_create(&l).set(i64::from(s.total));
            self.assigned.get_or_create(&l).set(i64::from(s.assigned));
            self.cooling.get_or_create(&l).set(i64::from(s.cooling));
            self.available.get_or_create(&l).set(i64::from(s.available));
            self.prefixes.get_or_create(&l).set(i64::from(s.prefixes));
            self.free_prefixes
                .get_or_create(&l)
                .set(i64::from(s.free_prefixes));
        }
        self.max_pods.set(i64::from(status.max_pods));
        self.ready.set(b(status.ready));
        self.can_assign.set(b(status.can_assign));
        self.degraded.clear();
        for (area, bad) in areas {
            self.degraded.get_or_create(&[("area", area)]).set(b(*bad));
        }
        self.process.update();
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.process_registry);
        let _ = encode_eof(&mut out);
        out
    }
}

/// `count` histogram bounds from `start`, each twice the one before: prometheus-client's
/// `exponential_buckets(start, 2.0, count)`, bit for bit (doubling is exact), without its
/// `powf`. That call was vpcnetd's only use of libm: without it the linker (`--as-needed`)
/// drops libm, and each agent ~0.5 MiB of resident mappings (issue 10: agent RSS at 1 000
/// nodes; docs/benchmarks.md, § Scale, seventeenth part).
fn doubling_buckets(start: f64, count: usize) -> impl Iterator<Item = f64> {
    std::iter::successors(Some(start), |b| Some(b * 2.0)).take(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vpcnet_pool::PoolStats;

    fn status() -> AgentStatus {
        AgentStatus {
            node: "n".into(),
            datastore: "local".into(),
            ready: true,
            can_assign: true,
            degraded: vec![],
            stats: PoolStats {
                total: 32,
                assigned: 3,
                cooling: 1,
                available: 28,
                prefixes: 2,
                free_prefixes: 1,
            },
            max_pods: 110,
            prefixes: vec![],
            allocations: None,
            pool6: None,
            network_policy: None,
        }
    }

    #[test]
    fn doubling_buckets_are_prometheus_exponential_buckets_bit_for_bit() {
        use prometheus_client::metrics::histogram::exponential_buckets;
        for (start, count) in [(0.001, 15u16), (0.0005, 16)] {
            let ours: Vec<u64> = doubling_buckets(start, usize::from(count))
                .map(f64::to_bits)
                .collect();
            let theirs: Vec<u64> = exponential_buckets(start, 2.0, count)
                .map(f64::to_bits)
                .collect();
            assert_eq!(ours, theirs, "start {start}, count {count}");
        }
    }

    /// The value of the sample line starting with `name` (name plus labels, exactly).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn encodes_pool_and_counters() {
        let m = Metrics::new();
        m.cni_reply(
            Op::Add,
            Reply::Released {
                ip: None,
                ip6: None,
            }, // any non-error reply counts as ok
        );
        m.cni_reply(
            Op::Add,
            Reply::error(vpcnet_proto::codes::CniCode::TryAgainLater, "full"),
        );
        m.claim_observed::<()>(Duration::from_millis(3), &Ok(true));
        m.datastore_error("release");
        m.vpc_capacity(4096, Some(10));
        m.reconciled(Some([
            ("released", 2),
            ("veths_deleted", 0),
            ("routes_deleted", 1),
            ("routes_restored", 0),
        ]));
        let text = m.encode(&status(), &[("datastore", true), ("pool", false)]);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            sample(&text, "vpcnet_datastore_errors_total{op=\"release\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_datastore_errors_total{op=\"claim\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "vpcnet_vpc_prefixes"), Some(4096.0));
        assert_eq!(sample(&text, "vpcnet_vpc_prefixes_claimed"), Some(10.0));
        assert_eq!(sample(&text, "vpcnet_vpc_prefixes_free"), Some(4086.0));
        assert_eq!(
            sample(
                &text,
                &format!(
                    "vpcnet_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "vpcnet_addresses{family=\"ipv4\"}"),
            Some(32.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_addresses_assigned{family=\"ipv4\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_addresses_available{family=\"ipv4\"}"),
            Some(28.0)
        );
        assert_eq!(sample(&text, "vpcnet_prefixes{family=\"ipv4\"}"), Some(2.0));
        // No IPv6 pool: no IPv6 samples. With one: both families, each its own.
        assert_eq!(sample(&text, "vpcnet_addresses{family=\"ipv6\"}"), None);
        let mut dual = status();
        dual.pool6 = Some(vpcnet_proto::api::Pool6Status {
            stats: PoolStats {
                total: u32::MAX,
                assigned: 7,
                cooling: 0,
                available: u32::MAX,
                prefixes: 1,
                free_prefixes: 0,
            },
            prefixes: vec![],
            allocations: None,
        });
        let areas = [("datastore", true), ("pool", false)];
        let text = m.encode(&dual, &areas);
        assert_eq!(
            sample(&text, "vpcnet_addresses_assigned{family=\"ipv4\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_addresses_assigned{family=\"ipv6\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_addresses{family=\"ipv6\"}"),
            Some(f64::from(u32::MAX))
        );
        assert_eq!(sample(&text, "vpcnet_prefixes{family=\"ipv6\"}"), Some(1.0));
        let text = m.encode(&status(), &areas);
        assert_eq!(
            sample(&text, "vpcnet_cni_requests_total{op=\"add\",result=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "vpcnet_cni_requests_total{op=\"add\",result=\"error\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_cni_requests_total{op=\"del\",result=\"ok\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_prefix_claim_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_reconcile_actions_total{action=\"released\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "vpcnet_degraded{area=\"datastore\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "vpcnet_degraded{area=\"pool\"}"), Some(0.0));
        // Degradation that cleared shows 0 (not no data); an area not passed is not shown.
        let text = m.encode(&status(), &[("datastore", false)]);
        assert_eq!(
            sample(&text, "vpcnet_degraded{area=\"datastore\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "vpcnet_degraded{area=\"pool\"}"), None);
    }

    /// Process metrics are this process's, read at scrape time: memory agrees with
    /// /proc/self/status, descriptors opened show up, CPU burnt counts.
    #[test]
    fn process_metrics_are_read_at_scrape_time() {
        let m = Metrics::new();
        let text = m.encode(&status(), &[]);
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
        for t in [
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_cpu_seconds counter",
        ] {
            assert!(text.contains(t), "{t}:\n{text}");
        }
        let rss = sample(&text, "process_resident_memory_bytes").unwrap();
        let vm_rss_kib: f64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let kernel = vm_rss_kib * 1024.0;
        assert!(
            rss > 0.5 * kernel && rss < 2.0 * kernel,
            "rss {rss} vs VmRSS {kernel}"
        );
        assert!(sample(&text, "process_max_fds").unwrap() >= 64.0, "{text}");
        assert!(sample(&text, "process_threads").unwrap() >= 1.0, "{text}");
        let start = sample(&text, "process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 2.0 && start > now - 3600.0,
            "start {start}, now {now}"
        );

        // Other tests run in this process too: open many, demand most of them.
        let fds_before = sample(&text, "process_open_fds").unwrap();
        let files: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let cpu_before = sample(&text, "process_cpu_seconds_total").unwrap();
        // Burn 300 ms of CPU by the process CPU clock (not wall time: the machine is shared).
        let cpu_clock = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0);
            Duration::new(
                u64::try_from(ts.tv_sec).unwrap(),
                u32::try_from(ts.tv_nsec).unwrap(),
            )
        };
        let t = cpu_clock();
        let mut x: u64 = 1;
        while cpu_clock() < t + Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        let text = m.encode(&status(), &[]);
        let fds_after = sample(&text, "process_open_fds").unwrap();
        assert!(
            fds_after >= fds_before + 48.0,
            "open fds {fds_before} -> {fds_after} with 64 more open"
        );
        drop(files);
        let cpu_after = sample(&text, "process_cpu_seconds_total").unwrap();
        assert!(
            cpu_after >= cpu_before + 0.2,
            "cpu {cpu_before} -> {cpu_after} after burning 300 ms of CPU"
        );
    }
}
