//! `vpcnetd`: the node agent. A thin async shell around the pure [`vpcnet_pool`]: it loads
//! the pool from disk, reconciles it with the host, then serves the plugin while the warm
//! loop, the periodic reconcile, the peer routes and the veth reaper run beside it.
//!
//! * [`node`] — the node's state and the operations on it (assign, release, claims), its
//!   journal ([`node::store`]) and the start-up audit ([`node::audit`]).
//! * [`server`] — the plugin's socket: decodes requests, calls [`node`], maps errors to CNI codes.
//! * [`exec`] — the `vpcnet` front's socket: whole CNI commands, run with the plugin's code.
//! * [`datastore`] — where nodes meet: prefix claims in a local file, etcd or Kubernetes.
//! * [`loops`] — what runs beside the server: warm pool, reconcile, peer routes, veth reaper.
//! * [`netpol`] — NetworkPolicy (`--network-policy`): the API's view, compile, apply.
//! * [`obs`] — metrics and the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`, `/pool`).
//! * [`cni_conf`], [`snat`], [`config`] — the conflist, the SNAT rules, the flags.
//! * [`cli`] — the other subcommands: `status`, `install-cni`.

pub mod cli {
    //! Subcommands other than `run`.
    pub mod bundle;
    pub mod install;
    pub mod status;
    pub mod uninstall;
}
pub mod backoff;
pub mod cni_conf;
pub mod config;
pub mod datastore;
pub mod error;
pub mod exec;
pub mod ipv6_forwarding;
pub mod loops {
    //! The agent's background loops, each beside the socket server.
    pub mod peers;
    pub mod reap;
    pub mod reconcile;
    pub mod warm;
}
pub mod netpol;
pub mod node;
pub mod obs {
    //! What the agent shows of itself: Prometheus metrics and the HTTP endpoints.
    pub mod counted;
    pub mod http;
    pub mod log;
    pub mod metrics;
    pub mod process;
}
pub mod server;
pub mod snat;
pub mod tasks;

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use vpcnet_netlink::{link, route, sysctl};

use crate::config::{DatastoreKind, RunArgs};
use crate::datastore::etcd::{EtcdConfig, EtcdDatastore};
use crate::datastore::kubernetes::{KubernetesConfig, KubernetesDatastore};
use crate::datastore::local::LocalDatastore;
use crate::datastore::Datastore;
pub use crate::error::AgentError;
use crate::loops::{peers, reap, reconcile, warm};
use crate::node::audit;
use crate::node::store::{self, StateDir, Store, StoreError};
use crate::node::{Area, Node, NodeParts, State};
use crate::obs::{counted, http, metrics};
use crate::tasks::{Task, Tasks};
use vpcnet_pool::{Pool, Pool6};

/// The flock that makes a vpcnetd the only one on its socket, held for the process's life.
#[derive(Debug)]
pub struct SocketLock {
    _lock: nix::fcntl::Flock<File>,
}

/// `<socket>.lock`, next to the socket.
pub fn socket_lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Invariant (issue 9, item 1): **one agent per socket, proven before the host is touched.**
/// A second vpcnetd on the same socket (even with its own state dir) would reconcile away
/// every pod of the first (their veths and routes are not in its pool). So the very first
/// thing a vpcnetd does — before its state dir, the datastore, sysctl, SNAT or reconcile — is
/// take an exclusive flock on `<socket>.lock`; then it checks nobody answers on the socket
/// (an older vpcnetd that takes no lock). Either failing, it refuses with nothing changed.
/// The lock file is never removed (removing it would let two agents lock different files).
pub fn lock_socket(socket: &Path) -> Result<SocketLock, AgentError> {
    let path = socket_lock_path(socket);
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            AgentError::io(format!("creating socket directory {}", dir.display()), e)
        })?;
    }
    let file = store::create_private(&path, false)
        .map_err(|e| AgentError::io(format!("opening lock {}", path.display()), e))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |_| AgentError::AlreadyRunning {
            socket: socket.to_path_buf(),
            lock: path.clone(),
        },
    )?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(AgentError::UnlockedAgent(socket.to_path_buf()));
    }
    Ok(SocketLock { _lock: lock })
}

/// The state of both families: the IPv4 pool (empty without IPv4 VPC CIDRs) and, with an
/// IPv6 `--vpc-cidr`, the IPv6 pool (docs/dual-stack.md).
fn open_state(args: &RunArgs) -> Result<(Store, Pool, Option<Pool6>), AgentError> {
    let (mut store, pool, pool6) =
        Store::open_dual(&args.state_dir, args.pool_config(), args.pool_config6()).map_err(
            |e| match e {
                StoreError::Corrupt { .. } => AgentError::StateRefused {
                    dir: args.state_dir.clone(),
                    what: e.to_string(),
                },
                e => e.into(),
            },
        )?;
    store.set_sync(args.journal_sync);
    Ok((store, pool, pool6))
}

/// One thread: the agent's work is a few syscalls per request; a small footprint matters
/// more on a node than parallelism (RSS target < 15 MiB).
fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::io("starting the runtime", e))
}

pub fn run(args: RunArgs) -> Result<(), AgentError> {
    args.validate().map_err(AgentError::Config)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name(),
        datastore = ?args.datastore,
        socket = %args.socket.display(),
        "vpcnetd starting"
    );
    // Proof of being the only agent comes first (item 1), the state second (item 3).
    let socket_lock = lock_socket(&args.socket)?;
    let (store, pool, pool6) = open_state(&args)?;
    runtime()?.block_on(async move {
        obs::process::startup_phase("runtime");
        let net = vpcnet_netlink::connect().map_err(AgentError::netlink("opening netlink"))?;
        audit_host(&net, &args, &store, &pool, pool6.as_ref()).await?;
        obs::process::startup_phase("host audit");
        let policy = policy_source(&args).await?;
        match args.datastore {
            DatastoreKind::Local => {
                let ds = LocalDatastore::open(&args.state_dir)?;
                let ds = counted::Counted::new(ds, args.vpc_cidrs_v4(), args.prefix_len);
                serve(args, ds, store, (pool, pool6), net, policy).await
            }
            DatastoreKind::Etcd => {
                let ds = EtcdDatastore::connect(EtcdConfig {
                    endpoints: args.etcd_endpoints.clone(),
                    prefix: args.etcd_prefix.clone(),
                    lease_ttl: args.etcd_lease_ttl,
                    claim_grace: args.etcd_claim_grace,
                    state_dir: args.state_dir.clone(),
                    node: args.node_name(),
                    ca: args.etcd_ca.clone(),
                    cert: args.etcd_cert.clone(),
                    key: args.etcd_key.clone(),
                })
                .await?;
                obs::process::startup_phase("datastore client");
                let ds = counted::Counted::new(ds, args.vpc_cidrs_v4(), args.prefix_len);
                serve(args, ds, store, (pool, pool6), net, policy).await
            }
            DatastoreKind::Kubernetes => {
                let ds = KubernetesDatastore::connect(KubernetesConfig {
                    kubeconfig: args.kubeconfig.clone(),
                    node: args.node_name(),
                })
                .await?;
                let mut args = args;
                let mut pool = pool;
                let mut pool6 = pool6;
                if args.max_pods.is_none() {
                    node_max_pods(&mut args, &mut pool, &ds).await;
                    // The IPv6 pool has the same limit (one pod, one address per family).
                    if let (Some(p6), Some(cfg6)) = (pool6.as_mut(), args.pool_config6()) {
                        p6.set_config(cfg6);
                    }
                }
                let ds = counted::Counted::new(ds, args.vpc_cidrs_v4(), args.prefix_len);
                serve(args, ds, store, (pool, pool6), net, policy).await
            }
        }
    })?;
    drop(socket_lock);
    Ok(())
}

/// `--network-policy=true`: a client of the API server (`--kubeconfig` or the in-cluster
/// service account, whatever `--datastore`) for the policy watches; `None` when off.
async fn policy_source(args: &RunArgs) -> Result<Option<netpol::enforce::Source>, AgentError> {
    if !args.network_policy {
        return Ok(None);
    }
    let (client, server) = datastore::kubernetes::client(args.kubeconfig.as_deref()).await?;
    Ok(Some(netpol::enforce::Source { client, server }))
}

/// `--max-pods` unset with the Kubernetes datastore: the kubelet's `maxPods` as the Node's
/// capacity shows it, so nobody has to keep the two equal by hand. Sets `args.max_pods` and
/// the pool's limit; if the Node cannot be read, keeps [`config::DEFAULT_MAX_PODS`] and says so.
pub async fn node_max_pods(args: &mut RunArgs, pool: &mut Pool, ds: &KubernetesDatastore) {
    match ds.node_max_pods().await {
        Ok(n) => {
            tracing::info!(max_pods = n, "max-pods from the Node's capacity.pods");
            args.max_pods = Some(n);
            pool.set_config(args.pool_config());
        }
        Err(e) => tracing::warn!(
            max_pods = config::DEFAULT_MAX_PODS,
            error = %e,
            "--max-pods unset and the Node's pod capacity cannot be read: using the default \
             (set VPCNET_MAX_PODS to the kubelet's maxPods)"
        ),
    }
}

/// `vpcnetd rebuild-state`: with no agent running (it takes the same locks), replaces the
/// state with one built from the kernel's pod routes and host veths ([`audit::rebuild`]).
pub fn rebuild_state(args: RunArgs) -> Result<(), AgentError> {
    args.validate().map_err(AgentError::Config)?;
    let _socket_lock = lock_socket(&args.socket)?;
    let dir = StateDir::lock(&args.state_dir)?;
    let (routes, routes6, links) = runtime()?.block_on(async {
        let net = vpcnet_netlink::connect().map_err(AgentError::netlink("opening netlink"))?;
        let routes = route::list_v4(&net, Some(vpcnet_netlink::RTPROT_VPCNET))
            .await
            .map_err(AgentError::netlink("listing routes"))?;
        let routes6 = route::list_v6(&net, Some(vpcnet_netlink::RTPROT_VPCNET))
            .await
            .map_err(AgentError::netlink("listing IPv6 routes"))?;
        let links = link::list(&net)
            .await
            .map_err(AgentError::netlink("listing links"))?;
        Ok::<_, AgentError>((routes, routes6, links))
    })?;
    let (old, old6) = readable_state(dir.path(), &args);
    let mut pool = Pool::new(args.pool_config());
    let mut pool6 = args.pool_config6().map(vpcnet_pool::Pool6::new);
    let now = node::now_ms();
    let kernel = audit::KernelPods {
        routes: &routes,
        routes6: &routes6,
        links: &links,
    };
    let r = audit::rebuild(
        &mut pool,
        old.as_ref(),
        pool6.as_mut().map(|p| (p, old6.as_ref())),
        &kernel,
        now,
    );
    for (ip, veth) in &r.adopted {
        let key = match ip {
            IpAddr::V4(ip) => pool.owner_of(*ip).map(|a| &a.key),
            IpAddr::V6(ip) => pool6.as_ref().and_then(|p| p.owner_of(*ip)).map(|a| &a.key),
        };
        match key {
            Some(k) if k.network != vpcnet_proto::naming::REBUILT_NETWORK => println!(
                "kept {ip} (host veth {veth}) of container {} as the old state had it",
                k.container_id
            ),
            _ => println!("adopted {ip} (host veth {veth})"),
        }
    }
    for s in &r.skipped {
        println!("not adopted: {s}");
    }
    let stamp = now / 1000;
    Store::replace(dir, &pool, pool6.as_ref(), stamp)?;
    println!(
        "rebuilt {}: {} allocations ({} as the old state had them) in {} prefixes (previous \
         files kept as pool.*.bad-{stamp})",
        args.state_dir.display(),
        r.adopted.len(),
        r.known,
        pool.held_prefixes().count() + pool6.as_ref().map_or(0, |p| p.held_prefixes().count())
    );
    Ok(())
}

/// Whatever of the old state can still be read, for `rebuild-state` to keep the real keys of
/// the pods it knows: snapshot and journal, else the snapshot alone, else nothing (each
/// family's pool; the IPv6 one only with an IPv6 VPC).
fn readable_state(dir: &Path, args: &RunArgs) -> (Option<Pool>, Option<vpcnet_pool::Pool6>) {
    let snap = std::fs::read(dir.join(store::SNAPSHOT)).ok();
    let journal = std::fs::read(dir.join(store::JOURNAL)).unwrap_or_default();
    let load = |journal: &[u8]| {
        store::load_dual(
            snap.as_deref(),
            journal,
            args.pool_config(),
            args.pool_config6(),
        )
    };
    match load(&journal).or_else(|_| load(&[])) {
        Ok((pool, pool6, _)) => (Some(pool), pool6),
        Err(_) => (None, None),
    }
}

/// MTU of the interface the default route leaves through, if there is one.
async fn uplink_mtu(net: &rtnetlink::Handle) -> Option<u32> {
    let routes = route::list_v4(net, None).await.ok()?;
    let oif = routes.iter().find(|r| r.dst_len == 0)?.oif?;
    link::list(net)
        .await
        .ok()?
        .into_iter()
        .find(|l| l.index == oif)?
        .mtu
}

/// Item 3: read-only, before anything on the host (or in the datastore) changes.
async fn audit_host(
    net: &rtnetlink::Handle,
    args: &RunArgs,
    store: &Store,
    pool: &Pool,
    pool6: Option<&Pool6>,
) -> Result<(), AgentError> {
    let links = link::list(net)
        .await
        .map_err(AgentError::netlink("listing links"))?;
    let routes = route::list_v4(net, Some(vpcnet_netlink::RTPROT_VPCNET))
        .await
        .map_err(AgentError::netlink("listing routes"))?;
    let mut missing = audit::unaccounted(pool, store.fresh(), &routes, &links);
    if let Some(p6) = pool6 {
        let routes6 = route::list_v6(net, Some(vpcnet_netlink::RTPROT_VPCNET))
            .await
            .map_err(AgentError::netlink("listing IPv6 routes"))?;
        missing.extend(audit::unaccounted6(p6, &routes6, &links));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let n = missing.len();
    let shown: Vec<_> = missing.into_iter().take(8).collect();
    Err(AgentError::StateRefused {
        dir: args.state_dir.clone(),
        what: format!(
            "the state does not account for {n} pod(s) running on this host: {}{}",
            shown.join(", "),
            if n > shown.len() { ", …" } else { "" }
        ),
    })
}

async fn serve<D: Datastore>(
    args: RunArgs,
    ds: D,
    mut store: Store,
    (pool, pool6): (Pool, Option<Pool6>),
    net: rtnetlink::Handle,
    policy: Option<netpol::enforce::Source>,
) -> Result<(), AgentError> {
    // Fold the journal into a fresh snapshot (this also rewrites a journal of an older
    // format in the checksummed one).
    store.compact_dual(&pool, pool6.as_ref())?;
    // Pods route through this namespace.
    sysctl::set("net/ipv4/ip_forward", "1").map_err(AgentError::netlink("enabling ip_forward"))?;
    if pool6.is_some() {
        ipv6_forwarding::enable(&args.state_dir)?;
    }
    let (reaper_tx, reaper_rx) = mpsc::unbounded_channel();
    let activity = Arc::new(reap::Activity::default());
    let node = Arc::new(Node::new(NodeParts {
        name: args.node_name(),
        ip: args.node_ip(),
        ip6: args.node_ip6(),
        state: State { pool, pool6, store },
        mtu: uplink_mtu(&net).await,
        datastore: ds,
        net: net.clone(),
        reaper: reaper_tx,
        activity: activity.clone(),
        inflight_dir: vpcnet_proto::inflight::dir_for(&args.socket),
    }));
    let grace = u64::try_from(args.reconcile_grace.as_millis()).unwrap_or(u64::MAX);
    let mut tasks = Tasks::default();
    tasks.spawn(
        Task::Reaper,
        reap::run(
            net.clone(),
            reaper_rx,
            activity,
            node.inflight_dir().to_path_buf(),
            reap::flush_within(args.ip_cooldown),
        ),
    );
    // Up before the start-up work, so /healthz answers and /readyz says "starting" meanwhile.
    // A port that cannot be bound costs the metrics, not the pods: log it and go on.
    if let Some(addr) = http::parse_addr(&args.metrics_addr).map_err(AgentError::Config)? {
        match http::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics, /healthz, /readyz, /pool on http://{addr}");
                tasks.spawn(Task::Metrics, http::serve(l, node.clone()));
            }
            Err(e) => tracing::error!(
                %addr,
                "cannot serve --metrics-addr {addr}: {e} (going on without)"
            ),
        }
    }
    // Issue 10: a node whose pool holds no prefix claims its first ones while the start-up
    // waits for the claims view (`Node::claim_at_start`), not one full list after it; the
    // start-up reconcile waits for the claim lock, so it runs after that claim, never across.
    let (_, started) = tokio::join!(node.claim_at_start(), start_up(&args, &node, &net, grace));
    let listener = match started {
        Ok(l) => l,
        Err(e) => {
            tasks.shutdown().await;
            return Err(e);
        }
    };
    node.set_ready();
    obs::process::startup_phase("serving");
    {
        let st = node.state();
        let s = st.pool.stats(node::now_ms());
        tracing::info!(
            node = %node.name(),
            socket = %args.socket.display(),
            datastore = node.datastore().name(),
            addresses = s.total,
            prefixes = s.prefixes,
            assigned = s.assigned,
            "serving"
        );
    }
    // With --network-policy=true, ADDs wait for the enforcement loop's decision.
    let (gate, admits) = match policy {
        Some(source) => {
            let (gate, inbox) = netpol::admit::Gate::new();
            (Some(gate), Some((source, inbox)))
        }
        None => (None, None),
    };
    exec::set_in_process(Arc::new(server::InProcess::new(
        &node,
        gate.clone(),
        &args.socket,
    )));
    tasks.spawn(Task::Server, server::serve(listener, node.clone(), gate));
    tasks.spawn(Task::Warm, {
        let node = node.clone();
        let interval = args.pool_check_interval;
        async move { warm::run(&node, interval).await }
    });
    tasks.spawn(Task::Reconcile, {
        let node = node.clone();
        let every = args.reconcile_interval;
        async move { reconcile_every(&node, every, grace).await }
    });
    tasks.spawn(Task::Peers, {
        let node = node.clone();
        let every = args.peer_sync_interval;
        async move { peers::run(&node, every).await }
    });
    if let Some((source, inbox)) = admits {
        tasks.spawn(
            Task::NetworkPolicy,
            netpol::enforce::run(node.clone(), source, inbox),
        );
    }
    if !args.cni_conf_dir.is_empty() {
        let target = cni_conf::ConfTarget {
            dir: args.cni_conf_dir.clone().into(),
            name: args.cni_conf_name.clone(),
            socket: std::path::absolute(&args.socket).unwrap_or_else(|_| args.socket.clone()),
            log_file: args.cni_log_file.clone(),
            log_level: args.cni_log_level.clone(),
        };
        tasks.spawn(Task::Conflist, cni_conf::run(node.clone(), target));
    }
    // Runs until a signal, or until a vital task ends (see `tasks`: never up but deaf).
    let failed = {
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                sig = &mut signal => {
                    tracing::info!(signal = sig, "stopping: no new requests");
                    break None;
                }
                (task, how) = tasks.next() => {
                    if task.vital() {
                        tracing::error!(task = task.name(), "{} {how}: stopping the agent", task.name());
                        break Some(format!("{} {how}", task.name()));
                    }
                    tracing::error!(task = task.name(), "{} {how} (going on without)", task.name());
                }
            }
        }
    };
    // Orderly: stop accepting, let the requests in flight finish (bounded), stop the rest.
    tasks.stop(Task::Server).await;
    let _ = std::fs::remove_file(&args.socket);
    let _ = std::fs::remove_file(vpcnet_proto::front::socket_for(&args.socket));
    if failed.is_none() {
        let started = std::time::Instant::now();
        let left = tasks.drain(&node, DRAIN_TIMEOUT).await;
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "requests still running after {DRAIN_TIMEOUT:?}; stopping them"
            );
        }
        // The front's commands (each may still be wiring its veth after its Assign): the
        // rest of the same bound.
        let left = exec::drain(DRAIN_TIMEOUT.saturating_sub(started.elapsed())).await;
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "front commands still running after {DRAIN_TIMEOUT:?}; stopping them"
            );
        }
    }
    // The conflist stays (see cni_conf): a restarting agent must not flip the node NotReady.
    tasks.shutdown().await;
    match failed {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(why) => Err(AgentError::TaskEnded(why)),
    }
}

/// What comes between the metrics endpoint and serving: claims, SNAT, the start-up
/// reconcile, the veths left marked; then the socket.
async fn start_up<D: Datastore>(
    args: &RunArgs,
    node: &Arc<Node<D>>,
    net: &rtnetlink::Handle,
    grace: u64,
) -> Result<tokio::net::UnixListener, AgentError> {
    // Until this succeeds once (the datastore may be down at start), the peer loop keeps
    // reconciling claims with adoption off: adopting is only right before serving.
    if let Err(e) = node.reconcile_claims(true).await {
        tracing::warn!("reconciling claims with the datastore: {e} (serving from the pool)");
        node.set_degraded(Area::Datastore, Some(e.to_string()));
    }
    obs::process::startup_phase("claims reconciled");
    if args.snat {
        snat::apply(&args.snat_config())?;
        if !args.network_policy {
            remove_policy_table();
        }
    } else if args.network_policy || !remove_tables_at_once() {
        snat::remove()?;
        if !args.network_policy {
            remove_policy_table();
        }
    }
    let report = reconcile::run(node, grace)
        .await
        .map_err(AgentError::netlink("start-up reconcile"))?;
    metrics::get().reconciled(Some(report.actions()));
    tracing::info!(report = ?report, "start-up reconcile done");
    // Veths a previous run marked for deletion but did not get to.
    if let Err(e) = link::delete_group(net, REAP_GROUP).await {
        tracing::warn!("deleting veths marked by a previous run: {e}");
    }
    // Conntrack flushes a previous run queued but did not get to (a crash inside the reaper's
    // batching window loses them): every released address not reused since, flushed in one
    // walk before the socket is bound, so no ADD is handed one of them with the old pod's
    // entries still in the table (docs/reliability.md). Its veth is gone (the line above).
    let released: Vec<IpAddr> = {
        let st = node.state();
        let v4 = st.pool.released().map(IpAddr::from);
        let v6 = st.pool6.iter().flat_map(|p| p.released().map(IpAddr::from));
        v4.chain(v6).collect()
    };
    reap::flush(released).await;
    // The front's socket first: once the plugin socket is there (what a runtime, or a test,
    // waits for), so is this one, and no front falls back for want of it. A command it takes
    // before the plugin socket exists fails its Assign as the standalone's would (code 11).
    serve_front(args);
    server::bind(&args.socket)
        .map_err(|e| AgentError::io(format!("binding socket {}", args.socket.display()), e))
}

/// [`exec::serve`], its outcome logged: not serving the front only costs speed.
fn serve_front(args: &RunArgs) {
    let ipv6 = args.vpc_cidrs.iter().any(ipnetwork::IpNetwork::is_ipv6);
    match exec::serve(&args.socket, ipv6) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => tracing::info!(
            reason = %why,
            "not serving the vpcnet front: it runs every command through vpcnet-standalone"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "the vpcnet front's socket: every command runs through vpcnet-standalone"
        ),
    }
}

/// `--snat=false --network-policy=false`: the SNAT tables (`ip vpcnet`, `inet vpcnet`) and
/// the policy table an earlier run may have left, deleted by one nf_tables batch instead of
/// three (issue 10: each was an exec of `nft`, a few ms of CPU at every agent start, before the
/// netlink encoder). `false`: the batch failed (the kernel refused it); the caller then runs
/// the removals one by one, which report what failed as before.
fn remove_tables_at_once() -> bool {
    let mut batch = Vec::new();
    for part in [
        serde_json::to_value(snat::removal()).ok(),
        serde_json::to_value(snat::removal_inet()).ok(),
        Some(vpcnet_policy::render::removal()),
    ] {
        match part.as_ref().and_then(|v| v.get("nftables")?.as_array()) {
            Some(cmds) => batch.extend(cmds.iter().cloned()),
            None => return false,
        }
    }
    vpcnet_policy::apply::apply(&serde_json::json!({ "nftables": batch })).is_ok()
}

/// `--network-policy=false`: a policy table an earlier run left (with the flag on) would go on
/// filtering with rules nobody updates; it goes (over netlink, no `nft` needed; where the
/// kernel lacks nf_tables the removal fails with a warning, and there is no table).
/// (With the flag on, the table stays across restarts: the loop replaces it once in sync.)
fn remove_policy_table() {
    if let Err(e) = vpcnet_policy::apply::apply(&vpcnet_policy::render::removal()) {
        tracing::warn!("removing a network policy table left by an earlier run: {e}");
    }
}

async fn reconcile_every<D: Datastore>(node: &Node<D>, every: Duration, grace: u64) {
    loop {
        tokio::time::sleep(every).await;
        let r = reconcile::run(node, grace).await;
        metrics::get().reconciled(r.as_ref().ok().map(reconcile::Report::actions));
        match r {
            Ok(r) if r != reconcile::Report::default() => {
                tracing::info!(report = ?r, "reconciled")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reconcile: {e}"),
        }
    }
}

/// How long the requests in flight get to finish after SIGTERM or SIGINT, once the socket
/// accepts no more (the DaemonSet's terminationGracePeriodSeconds is 30 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the first SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        }
        (t, i) => {
            tracing::error!("cannot catch SIGTERM/SIGINT: {:?}", t.err().or(i.err()));
            std::future::pending().await
        }
    }
}

pub use reap::REAP_GROUP;

/// For the CLI: how long to wait for a status reply.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
