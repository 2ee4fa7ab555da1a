//! `vpcnetd`: the node agent. A thin async shell around the pure [`vpcnet_pool`]: it loads
//! the pool from disk, reconciles it with the host, then serves the plugin while the warm
//! loop, the periodic reconcile, the peer routes and the veth reaper run beside it.
//!
//! * [`node`] — the node's state and the operations on it (assign, release, claims), its
//!   journal ([`node::store`]) and the start-up audit ([`node::audit`]).
//! * [`server`] — the plugin's socket: decodes requests, calls [`node`], maps errors to CNI codes.
//! * [`datastore`] — where nodes meet: prefix claims in a local file, etcd or Kubernetes.
//! * [`loops`] — what runs beside the server: warm pool, reconcile, peer routes, veth reaper.
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
pub mod cni_conf;
pub mod config;
pub mod datastore;
pub mod loops {
    //! The agent's background loops, each beside the socket server.
    pub mod peers;
    pub mod reap;
    pub mod reconcile;
    pub mod warm;
}
pub mod node;
pub mod obs {
    //! What the agent shows of itself: Prometheus metrics and the HTTP endpoints.
    pub mod counted;
    pub mod http;
    pub mod metrics;
}
pub mod server;
pub mod snat;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use vpcnet_netlink::{link, route, sysctl};

use crate::config::{DatastoreKind, RunArgs};
use crate::datastore::etcd::{EtcdConfig, EtcdDatastore};
use crate::datastore::kubernetes::{KubernetesConfig, KubernetesDatastore};
use crate::datastore::local::LocalDatastore;
use crate::datastore::Datastore;
use crate::loops::{peers, reap, reconcile, warm};
use crate::node::audit;
use crate::node::store::{self, StateDir, Store, StoreError};
use crate::node::{Health, Node, State};
use crate::obs::{counted, http, metrics};
use vpcnet_pool::Pool;

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
pub fn lock_socket(socket: &Path) -> Result<SocketLock, String> {
    let path = socket_lock_path(socket);
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating socket directory {}: {e}", dir.display()))?;
    }
    let file = store::create_private(&path, false)
        .map_err(|e| format!("opening lock {}: {e}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |_| {
            format!(
                "another vpcnetd is running on socket {} (it holds {}); refusing to start, \
                 nothing on this host was changed",
                socket.display(),
                path.display()
            )
        },
    )?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "another vpcnetd (one that takes no lock: an older version?) serves socket {}; \
             refusing to start, nothing on this host was changed",
            socket.display()
        ));
    }
    Ok(SocketLock { _lock: lock })
}

/// A refusal to start over the state in `dir`, with the way out.
fn state_refusal(dir: &Path, what: &str) -> String {
    format!(
        "refusing to start: {what}; nothing on this host was changed. The state in {} \
         (pool.json, pool.journal) cannot be trusted: inspect it, or run `vpcnetd \
         rebuild-state` with the same flags to rebuild it from the pods the kernel has \
         (the old files are kept)",
        dir.display()
    )
}

fn open_state(args: &RunArgs) -> Result<(Store, Pool), String> {
    Store::open(&args.state_dir, args.pool_config()).map_err(|e| match e {
        StoreError::Corrupt { .. } => state_refusal(&args.state_dir, &e.to_string()),
        e => e.to_string(),
    })
}

pub fn run(args: RunArgs) -> Result<(), String> {
    args.validate()?;
    // Proof of being the only agent comes first (item 1), the state second (item 3).
    let socket_lock = lock_socket(&args.socket)?;
    let (store, pool) = open_state(&args)?;
    // One thread: the agent's work is a few syscalls per request; a small footprint matters
    // more on a node than parallelism (RSS target < 15 MiB).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    rt.block_on(async move {
        let net = vpcnet_netlink::connect().map_err(|e| format!("netlink: {e}"))?;
        audit_host(&net, &args, &store, &pool).await?;
        match args.datastore {
            DatastoreKind::Local => {
                let ds = LocalDatastore::open(&args.state_dir).map_err(|e| e.to_string())?;
                {
                    let ds = counted::Counted::new(ds, args.vpc_cidrs.clone(), args.prefix_len);
                    serve(args, ds, store, pool, net).await
                }
            }
            DatastoreKind::Etcd => {
                let ds = EtcdDatastore::connect(EtcdConfig {
                    endpoints: args.etcd_endpoints.clone(),
                    prefix: args.etcd_prefix.clone(),
                    lease_ttl: args.etcd_lease_ttl,
                    state_dir: args.state_dir.clone(),
                    node: args.node_name(),
                    ca: args.etcd_ca.clone(),
                    cert: args.etcd_cert.clone(),
                    key: args.etcd_key.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
                {
                    let ds = counted::Counted::new(ds, args.vpc_cidrs.clone(), args.prefix_len);
                    serve(args, ds, store, pool, net).await
                }
            }
            DatastoreKind::Kubernetes => {
                let ds = KubernetesDatastore::connect(KubernetesConfig {
                    kubeconfig: args.kubeconfig.clone(),
                    node: args.node_name(),
                })
                .await
                .map_err(|e| e.to_string())?;
                {
                    let ds = counted::Counted::new(ds, args.vpc_cidrs.clone(), args.prefix_len);
                    serve(args, ds, store, pool, net).await
                }
            }
        }
    })?;
    drop(socket_lock);
    Ok(())
}

/// `vpcnetd rebuild-state`: with no agent running (it takes the same locks), replaces the
/// state with one built from the kernel's pod routes and host veths ([`audit::rebuild`]).
pub fn rebuild_state(args: RunArgs) -> Result<(), String> {
    args.validate()?;
    let _socket_lock = lock_socket(&args.socket)?;
    let dir = StateDir::lock(&args.state_dir).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    let (routes, links) = rt.block_on(async {
        let net = vpcnet_netlink::connect().map_err(|e| format!("netlink: {e}"))?;
        let routes = route::list_v4(&net, Some(vpcnet_netlink::RTPROT_VPCNET))
            .await
            .map_err(|e| format!("listing routes: {e}"))?;
        let links = link::list(&net)
            .await
            .map_err(|e| format!("listing links: {e}"))?;
        Ok::<_, String>((routes, links))
    })?;
    let old = readable_state(dir.path(), &args);
    let mut pool = Pool::new(args.pool_config());
    let now = node::now_ms();
    let r = audit::rebuild(&mut pool, old.as_ref(), &routes, &links, now);
    for (ip, veth) in &r.adopted {
        match pool.owner_of(*ip) {
            Some(a) if a.key.network != vpcnet_proto::naming::REBUILT_NETWORK => println!(
                "kept {ip} (host veth {veth}) of container {} as the old state had it",
                a.key.container_id
            ),
            _ => println!("adopted {ip} (host veth {veth})"),
        }
    }
    for s in &r.skipped {
        println!("not adopted: {s}");
    }
    let stamp = now / 1000;
    Store::replace(dir, &pool, stamp).map_err(|e| e.to_string())?;
    println!(
        "rebuilt {}: {} allocations ({} as the old state had them) in {} prefixes (previous \
         files kept as pool.*.bad-{stamp})",
        args.state_dir.display(),
        r.adopted.len(),
        r.known,
        pool.held_prefixes().count()
    );
    Ok(())
}

/// Whatever of the old state can still be read, for `rebuild-state` to keep the real keys of
/// the pods it knows: snapshot and journal, else the snapshot alone, else nothing.
fn readable_state(dir: &Path, args: &RunArgs) -> Option<Pool> {
    let snap = std::fs::read(dir.join(store::SNAPSHOT)).ok();
    let journal = std::fs::read(dir.join(store::JOURNAL)).unwrap_or_default();
    store::load(snap.as_deref(), &journal, args.pool_config())
        .or_else(|_| store::load(snap.as_deref(), &[], args.pool_config()))
        .ok()
        .map(|(pool, _)| pool)
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
) -> Result<(), String> {
    let links = link::list(net)
        .await
        .map_err(|e| format!("listing links: {e}"))?;
    let routes = route::list_v4(net, Some(vpcnet_netlink::RTPROT_VPCNET))
        .await
        .map_err(|e| format!("listing routes: {e}"))?;
    let missing = audit::unaccounted(pool, store.fresh(), &routes, &links);
    if missing.is_empty() {
        return Ok(());
    }
    let n = missing.len();
    let shown: Vec<_> = missing.into_iter().take(8).collect();
    Err(state_refusal(
        &args.state_dir,
        &format!(
            "the state does not account for {n} pod(s) running on this host: {}{}",
            shown.join(", "),
            if n > shown.len() { ", …" } else { "" }
        ),
    ))
}

async fn serve<D: Datastore>(
    args: RunArgs,
    ds: D,
    mut store: Store,
    pool: Pool,
    net: rtnetlink::Handle,
) -> Result<(), String> {
    // Fold the journal into a fresh snapshot (this also rewrites a journal of an older
    // format in the checksummed one).
    store
        .compact(&pool)
        .map_err(|e| format!("compacting state: {e}"))?;
    // Pods route through this namespace.
    sysctl::set("net/ipv4/ip_forward", "1").map_err(|e| format!("enabling ip_forward: {e}"))?;
    let (reaper_tx, reaper_rx) = mpsc::unbounded_channel();
    let activity = Arc::new(reap::Activity::default());
    let node = Arc::new(Node {
        name: args.node_name(),
        ip: args.node_ip,
        state: Mutex::new(State { pool, store }),
        health: Mutex::new(Health {
            mtu: uplink_mtu(&net).await,
            ..Health::default()
        }),
        datastore: ds,
        net: net.clone(),
        reaper: reaper_tx,
        activity: activity.clone(),
        wake: Notify::new(),
        claim_lock: tokio::sync::Mutex::new(()),
        inflight_dir: vpcnet_proto::inflight::dir_for(&args.socket),
    });
    tokio::spawn(reap::run(
        net.clone(),
        reaper_rx,
        activity,
        node.inflight_dir.clone(),
    ));
    // Up before the start-up work, so /healthz answers and /readyz says "starting" meanwhile.
    // A port that cannot be bound costs the metrics, not the pods: log it and go on.
    let metrics_server = match http::parse_addr(&args.metrics_addr)? {
        Some(addr) => match http::bind(addr).await {
            Ok(l) => {
                eprintln!("vpcnetd: metrics, /healthz, /readyz, /pool on http://{addr}");
                Some(tokio::spawn(http::serve(l, node.clone())))
            }
            Err(e) => {
                eprintln!("vpcnetd: cannot serve --metrics-addr {addr}: {e} (going on without)");
                None
            }
        },
        None => None,
    };
    // Until this succeeds once (the datastore may be down at start), the peer loop keeps
    // reconciling claims with adoption off: adopting is only right before serving.
    if let Err(e) = node.reconcile_claims(true).await {
        eprintln!("vpcnetd: reconciling claims with the datastore: {e} (serving from the pool)");
        node.set_degraded("datastore", Some(e));
    }
    if args.snat {
        snat::apply(&snat::SnatConfig {
            vpc_cidrs: args.vpc_cidrs.clone(),
            exclude: args.snat_exclude.clone(),
        })
        .map_err(|e| format!("installing SNAT rules: {e}"))?;
    } else {
        snat::remove().map_err(|e| format!("removing SNAT rules: {e}"))?;
    }
    let grace = u64::try_from(args.reconcile_grace.as_millis()).unwrap_or(u64::MAX);
    let report = reconcile::run(&node, grace)
        .await
        .map_err(|e| format!("start-up reconcile: {e}"))?;
    metrics::get().reconciled(Some(&report));
    eprintln!("vpcnetd: start-up reconcile: {report:?}");
    // Veths a previous run marked for deletion but did not get to.
    if let Err(e) = link::delete_group(&net, REAP_GROUP).await {
        eprintln!("vpcnetd: deleting veths marked by a previous run: {e}");
    }
    let listener = server::bind(&args.socket)
        .map_err(|e| format!("binding socket {}: {e}", args.socket.display()))?;
    node.health().ready = true;
    {
        let st = node.state();
        let s = st.pool.stats(node::now_ms());
        eprintln!(
            "vpcnetd: node {} serving on {} ({} datastore): {} addresses in {} prefixes, {} assigned",
            node.name,
            args.socket.display(),
            node.datastore.name(),
            s.total,
            s.prefixes,
            s.assigned
        );
    }
    let warm = {
        let node = node.clone();
        let interval = args.pool_check_interval;
        tokio::spawn(async move { warm::run(&node, interval).await })
    };
    let periodic = {
        let node = node.clone();
        let every = args.reconcile_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = reconcile::run(&node, grace).await;
                metrics::get().reconciled(r.as_ref().ok());
                match r {
                    Ok(r) if r != reconcile::Report::default() => {
                        eprintln!("vpcnetd: reconcile: {r:?}")
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("vpcnetd: reconcile: {e}"),
                }
            }
        })
    };
    let peers = {
        let node = node.clone();
        let every = args.peer_sync_interval;
        tokio::spawn(async move { peers::run(&node, every).await })
    };
    let server = tokio::spawn(server::serve(listener, node.clone()));
    let conflist = (!args.cni_conf_dir.is_empty()).then(|| {
        let target = cni_conf::ConfTarget {
            dir: args.cni_conf_dir.clone().into(),
            name: args.cni_conf_name.clone(),
            socket: std::path::absolute(&args.socket).unwrap_or_else(|_| args.socket.clone()),
            log_file: args.cni_log_file.clone(),
            log_level: args.cni_log_level.clone(),
        };
        tokio::spawn(cni_conf::run(node.clone(), target))
    });
    shutdown_signal().await;
    server.abort();
    warm.abort();
    periodic.abort();
    peers.abort();
    // The conflist stays (see cni_conf): a restarting agent must not flip the node NotReady.
    for t in [metrics_server, conflist].into_iter().flatten() {
        t.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    eprintln!("vpcnetd: stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

pub use reap::REAP_GROUP;

/// For the CLI: how long to wait for a status reply.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
