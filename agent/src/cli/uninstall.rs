//! `vpcnetd uninstall [--force]`: takes vpcnet off a node — exactly what vpcnet put there, and
//! nothing else:
//!
//! * the conflist the agent wrote (`--cni-conf-dir`/`--cni-conf-name`), and only when it is a
//!   vpcnet conflist (its first plugin has `"type": "vpcnet"`): the node's network goes
//!   NotReady until the next CNI writes its own, instead of every new pod failing with code 11;
//! * the plugin binary `install-cni` put into `--cni-bin-dir` (`vpcnet`, leftover temporary
//!   files of an interrupted install, and the helper plugins it recorded as installed by it in
//!   [`crate::cli::install::RECORD`]; a `portmap` the node already had stays);
//! * every IPv4 route with protocol 171 (`proto 171`) in every routing table — pods' host
//!   routes, peers' `via` routes and the `unreachable` routes of this node's own prefixes,
//!   which would black-hole the next CNI's traffic if it reuses the range;
//! * host veths of ours that the reaper had marked for deletion (released pods), and, with
//!   `--force`, every host veth of ours;
//! * every IPv6 route with protocol 171 in every routing table (dual-stack: pods' `/128` host
//!   routes, peers' routes, our `unreachable` ones);
//! * `table ip vpcnet` and `table inet vpcnet` (SNAT; the latter with an IPv6 VPC);
//! * the IPv6 sysctls the agent changed for an IPv6 VPC (recorded in the state directory,
//!   [`crate::ipv6_forwarding`]): `accept_ra` back to 1 where it is still the agent's 2, and
//!   `net.ipv6.conf.all.forwarding` back to what it was;
//! * the state directory's files (snapshot, journal, locks, claims, etcd lease, kept `*.bad-*`
//!   files), then the directory if that left it empty;
//! * the socket, its lock, the in-flight lock directory, and the socket's directory when it is
//!   the default `/run/vpcnet` and now empty.
//!
//! Left on purpose: the plugin's log (`/var/log/vpcnet`, for the post-mortem), the
//! `ip_forward` sysctl (every Kubernetes node needs it), and what lives in the cluster rather
//! than on the node (PrefixClaims: deleted with the CRD or with their Node; etcd claims: swept
//! by another node once this one has shown no liveness for `--etcd-claim-grace`).
//!
//! **Refusals, with nothing changed**: an agent running on the socket (it holds
//! `<socket>.lock`, or answers on the socket) or on the state directory (it holds its lock) —
//! uninstalling under it would race its reconcile; pods still having vpcnet addresses
//! (assignments in the state, host veths of ours outside the reaper's group) — unless
//! `--force`, which then deletes their host veths too (those pods lose their network).
//!
//! Safe to run twice: everything absent is skipped.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use vpcnet_netlink::{link, route, RTPROT_VPCNET};
use vpcnet_proto::api::DEFAULT_SOCKET;
use vpcnet_proto::naming::{is_our_host_veth, is_our_retired_veth};

use crate::cli::install::{self, PLUGIN_NAME};
use crate::config::RunArgs;
use crate::loops::reap::REAP_GROUP;
use crate::node::store;
use crate::snat;

/// The state directory's lock file (`node::store`'s `LOCK`).
const STATE_LOCK: &str = "lock";

/// What `uninstall` works on: the agent's flags plus the CNI bin directory.
#[derive(Debug, Clone)]
pub struct Targets {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// `None`: the agent wrote no conflist (`--cni-conf-dir` empty).
    pub conflist: Option<PathBuf>,
    pub cni_bin_dir: PathBuf,
}

impl Targets {
    pub fn from_args(args: &RunArgs, cni_bin_dir: &Path) -> Targets {
        Targets {
            socket: args.socket.clone(),
            state_dir: args.state_dir.clone(),
            conflist: (!args.cni_conf_dir.is_empty())
                .then(|| Path::new(&args.cni_conf_dir).join(&args.cni_conf_name)),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(
        "a vpcnetd is running ({0}); stop it first (delete the DaemonSet, or stop the service). \
         Nothing was changed"
    )]
    AgentRunning(String),
    #[error(
        "{n} pod(s) still have vpcnet addresses: {list}. Delete them first (or drain the \
         node), or run `vpcnetd uninstall --force` to take their network away. Nothing was \
         changed",
        n = .0.len(),
        list = shown(.0)
    )]
    PodsPresent(Vec<String>),
    #[error(
        "cannot read the state in {dir} ({msg}), so cannot tell whether pods still have \
         addresses; run with --force to uninstall anyway. Nothing was changed"
    )]
    StateUnreadable { dir: String, msg: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {msg}")]
    Kernel { what: String, msg: String },
}

fn shown(items: &[String]) -> String {
    let mut s = items.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 8 {
        s.push_str(", …");
    }
    s
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UninstallError {
    let what = what.into();
    move |source| UninstallError::Io { what, source }
}

fn kernel(what: &str) -> impl FnOnce(vpcnet_netlink::NetlinkError) -> UninstallError + '_ {
    move |e| UninstallError::Kernel {
        what: what.to_string(),
        msg: e.to_string(),
    }
}

/// One line of the report: what was removed (or found absent).
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

impl Report {
    fn note(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Exclusive, non-blocking flock on an existing file; `Ok(None)` when the file is absent
/// (nobody can hold a lock on a file that is not there — and nothing gets created).
fn lock_existing(path: &Path) -> Result<Option<nix::fcntl::Flock<File>>, String> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(Some)
        .map_err(|_| format!("it holds {}", path.display()))
}

/// The locks uninstall holds while it works, so no agent starts under it.
#[derive(Debug)]
struct Locks {
    _socket: Option<nix::fcntl::Flock<File>>,
    _state: Option<nix::fcntl::Flock<File>>,
}

fn check_no_agent(t: &Targets) -> Result<Locks, UninstallError> {
    let socket =
        lock_existing(&crate::socket_lock_path(&t.socket)).map_err(UninstallError::AgentRunning)?;
    if std::os::unix::net::UnixStream::connect(&t.socket).is_ok() {
        return Err(UninstallError::AgentRunning(format!(
            "it answers on {}",
            t.socket.display()
        )));
    }
    let state =
        lock_existing(&t.state_dir.join(STATE_LOCK)).map_err(UninstallError::AgentRunning)?;
    Ok(Locks {
        _socket: socket,
        _state: state,
    })
}

/// The pods the state still has an address for, as `IP (namespace/name or container)`.
fn assigned_in_state(dir: &Path) -> Result<Vec<String>, UninstallError> {
    let read = |name: &str| match fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UninstallError::StateUnreadable {
            dir: dir.display().to_string(),
            msg: e.to_string(),
        }),
    };
    let snap = read(store::SNAPSHOT)?;
    let journal = read(store::JOURNAL)?.unwrap_or_default();
    if snap.is_none() && journal.is_empty() {
        return Ok(Vec::new());
    }
    // Both families: a dual-stack state holds IPv6 allocations too.
    let (pool, pool6, _) = store::load_dual(
        snap.as_deref(),
        &journal,
        vpcnet_pool::PoolConfig::default(),
        Some(vpcnet_pool::PoolConfig6::default()),
    )
    .map_err(|e| UninstallError::StateUnreadable {
        dir: dir.display().to_string(),
        msg: e.to_string(),
    })?;
    let describe = |ip: String, a_meta: &vpcnet_pool::PodMeta, c: &str| match (
        &a_meta.namespace,
        &a_meta.name,
    ) {
        (Some(ns), Some(n)) => format!("{ip} ({ns}/{n})"),
        _ => format!("{ip} (container {c})"),
    };
    Ok(pool
        .allocations()
        .map(|a| describe(a.ip.to_string(), &a.meta, &a.key.container_id))
        .chain(pool6.iter().flat_map(|p| {
            p.allocations()
                .map(|a| describe(a.ip.to_string(), &a.meta, &a.key.container_id))
        }))
        .collect())
}

/// Whether `path` holds a conflist of vpcnet's (its first plugin is of type `vpcnet`).
fn is_our_conflist(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| {
        v.get("plugins")
            .and_then(|p| p.get(0))
            .and_then(|p| p.get("type"))
            .and_then(serde_json::Value::as_str)
            == Some(PLUGIN_NAME)
    })
}

fn remove_file(path: &Path, report: &mut Report) -> Result<bool, UninstallError> {
    match fs::remove_file(path) {
        Ok(()) => {
            report.note(format!("removed {}", path.display()));
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

fn remove_conflist(t: &Targets, report: &mut Report) -> Result<(), UninstallError> {
    let Some(path) = &t.conflist else {
        report.note("conflist: --cni-conf-dir not set (the agent wrote none), skipped");
        return Ok(());
    };
    match fs::read(path) {
        Ok(b) if is_our_conflist(&b) => {
            remove_file(path, report)?;
        }
        Ok(_) => report.note(format!(
            "kept {}: not a vpcnet conflist (its first plugin is not of type vpcnet)",
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    }
    // The agent's own temporary file of an interrupted write (store::write_atomic).
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        remove_file(
            &dir.join(format!(".{}.tmp", name.to_string_lossy())),
            report,
        )?;
    }
    Ok(())
}

fn remove_binaries(t: &Targets, report: &mut Report) -> Result<(), UninstallError> {
    let dir = &t.cni_bin_dir;
    // The front first: never a front without the program it falls back to.
    remove_file(&dir.join(PLUGIN_NAME), report)?;
    remove_file(&dir.join(install::STANDALONE), report)?;
    for name in install::recorded(dir) {
        remove_file(&dir.join(name), report)?;
    }
    remove_file(&dir.join(install::RECORD), report)?;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if install::is_leftover(&e.file_name().to_string_lossy()) {
                remove_file(&e.path(), report)?;
            }
        }
    }
    Ok(())
}

/// Names of the files vpcnet keeps in its state directory (the agent's journal and snapshot,
/// their locks, the boot that last wrote them, the local datastore's claims, the etcd lease,
/// and their temporary files).
fn is_state_file(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        store::SNAPSHOT,
        store::JOURNAL,
        store::BOOT_ID,
        STATE_LOCK,
        "claims.json",
        ".claims.lock",
        crate::datastore::etcd::LEASE_FILE,
        crate::ipv6_forwarding::RECORD,
    ];
    let base = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .unwrap_or(name);
    NAMES.contains(&base) || base.starts_with("pool.")
}

fn remove_state_dir(dir: &Path, report: &mut Report) -> Result<(), UninstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    let mut foreign = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_state_file(&name) {
            remove_file(&e.path(), report)?;
        } else {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        match fs::remove_dir(dir) {
            Ok(()) => report.note(format!("removed {}", dir.display())),
            // A mount point (the cleanup DaemonSet mounts the node's directory there): the
            // node's directory is empty now, and only the node can remove it.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                report.note(format!("kept {}: a mount point, emptied", dir.display()))
            }
            Err(e) => return Err(io_err(format!("removing {}", dir.display()))(e)),
        }
    } else {
        foreign.sort();
        report.note(format!(
            "kept {}: it holds files that are not vpcnet's ({})",
            dir.display(),
            shown(&foreign)
        ));
    }
    Ok(())
}

fn remove_socket_files(socket: &Path, report: &mut Report) -> Result<(), UninstallError> {
    remove_file(socket, report)?;
    let inflight = vpcnet_proto::inflight::dir_for(socket);
    if let Ok(entries) = fs::read_dir(&inflight) {
        for e in entries.flatten() {
            remove_file(&e.path(), report)?;
        }
    }
    match fs::remove_dir(&inflight) {
        Ok(()) => report.note(format!("removed {}", inflight.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing {}", inflight.display()))(e)),
    }
    // Last: it is what stops an agent from starting meanwhile.
    remove_file(&crate::socket_lock_path(socket), report)?;
    let default_dir = Path::new(DEFAULT_SOCKET).parent();
    if let Some(dir) = socket.parent().filter(|d| Some(*d) == default_dir) {
        if fs::remove_dir(dir).is_ok() {
            report.note(format!("removed {}", dir.display()));
        }
    }
    Ok(())
}

/// The kernel's side: veths of ours, then every proto-171 route of every table.
async fn clean_kernel(force: bool, report: &mut Report) -> Result<(), UninstallError> {
    let net = vpcnet_netlink::connect().map_err(kernel("netlink"))?;
    let marked = link::list_group(&net, REAP_GROUP)
        .await
        .map_err(kernel("listing links"))?;
    if !marked.is_empty() {
        link::delete_group(&net, REAP_GROUP)
            .await
            .map_err(kernel("deleting released pods' host veths"))?;
        for l in &marked {
            report.note(format!("deleted host veth {} (released pod)", l.name));
        }
    }
    // Retired veths (a re-ADD moved a released pod's stale pair aside, issue 14) are released
    // pods' too: normally in the group above, deleted here in case they were not.
    for l in link::list(&net).await.map_err(kernel("listing links"))? {
        if is_our_retired_veth(&l.name, l.mac)
            && link::delete_by_index(&net, l.index)
                .await
                .map_err(kernel("deleting a retired host veth"))?
        {
            report.note(format!("deleted host veth {} (released pod)", l.name));
        }
    }
    if force {
        for l in link::list(&net).await.map_err(kernel("listing links"))? {
            if is_our_host_veth(&l.name, l.mac)
                && link::delete_by_index(&net, l.index)
                    .await
                    .map_err(kernel("deleting a host veth"))?
            {
                report.note(format!("deleted host veth {} (--force)", l.name));
            }
        }
    }
    let routes = route::list_v4_all(&net, Some(RTPROT_VPCNET))
        .await
        .map_err(kernel("listing routes"))?;
    for r in &routes {
        // A route through a veth just deleted went with it: ESRCH is fine.
        if route::delete(&net, r)
            .await
            .map_err(kernel("deleting a proto 171 route"))?
        {
            report.note(format!("deleted route {}", describe_route(r)));
        }
    }
    // IPv6 (dual-stack): pods' /128 host routes, peers' via routes, our unreachable ones.
    for r in route::list_v6_all(&net, Some(RTPROT_VPCNET))
        .await
        .map_err(kernel("listing IPv6 routes"))?
    {
        if route::delete_v6(&net, &r)
            .await
            .map_err(kernel("deleting a proto 171 IPv6 route"))?
        {
            report.note(format!("deleted route {}", describe_route6(&r)));
        }
    }
    let left6 = route::list_v6_all(&net, Some(RTPROT_VPCNET))
        .await
        .map_err(kernel("listing IPv6 routes"))?;
    if !left6.is_empty() {
        return Err(UninstallError::Kernel {
            what: "deleting proto 171 IPv6 routes".into(),
            msg: format!(
                "{} remain: {}",
                left6.len(),
                shown(&left6.iter().map(describe_route6).collect::<Vec<_>>())
            ),
        });
    }
    let left = route::list_v4_all(&net, Some(RTPROT_VPCNET))
        .await
        .map_err(kernel("listing routes"))?;
    if !left.is_empty() {
        return Err(UninstallError::Kernel {
            what: "deleting proto 171 routes".into(),
            msg: format!(
                "{} remain: {}",
                left.len(),
                shown(&left.iter().map(describe_route).collect::<Vec<_>>())
            ),
        });
    }
    Ok(())
}

/// `[unreachable ]DST/LEN [via GW] [oif N] proto 171` of an IPv6 route.
pub fn describe_route6(r: &route::RouteV6) -> String {
    let mut s = String::new();
    if r.kind == route::RTN_UNREACHABLE {
        s.push_str("unreachable ");
    }
    s.push_str(&format!("{}/{}", r.dst, r.dst_len));
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" oif {oif}"));
    }
    s.push_str(&format!(" table {} proto {}", r.table, r.protocol));
    s
}

/// `[unreachable ]DST/LEN [via GW] [oif N] table T proto 171`.
pub fn describe_route(r: &route::RouteV4) -> String {
    let kind = match r.kind {
        route::RTN_UNREACHABLE => "unreachable ",
        route::RTN_BLACKHOLE => "blackhole ",
        _ => "",
    };
    let mut s = format!("{kind}{}/{}", r.dst, r.dst_len);
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" oif {oif}"));
    }
    s.push_str(&format!(" table {} proto 171", r.table));
    s
}

/// The checks (refusing with nothing changed), then the removal. Runs in the calling thread's
/// network namespace (the node's; `ip netns exec` for a test namespace).
pub fn uninstall(t: &Targets, force: bool) -> Result<Report, UninstallError> {
    let _locks = check_no_agent(t)?;
    let mut report = Report::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting runtime"))?;
    let mut pods = match assigned_in_state(&t.state_dir) {
        Ok(p) => p,
        Err(e) if force => {
            report.note(format!("{e} (going on: --force)"));
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let veths = rt.block_on(async {
        let net = vpcnet_netlink::connect().map_err(kernel("netlink"))?;
        let marked: Vec<u32> = link::list_group(&net, REAP_GROUP)
            .await
            .map_err(kernel("listing links"))?
            .iter()
            .map(|l| l.index)
            .collect();
        Ok::<_, UninstallError>(
            link::list(&net)
                .await
                .map_err(kernel("listing links"))?
                .into_iter()
                .filter(|l| is_our_host_veth(&l.name, l.mac) && !marked.contains(&l.index))
                .map(|l| format!("host veth {}", l.name))
                .collect::<Vec<_>>(),
        )
    })?;
    pods.extend(veths);
    if !pods.is_empty() {
        if !force {
            return Err(UninstallError::PodsPresent(pods));
        }
        report.note(format!(
            "--force: taking the network of {} pod(s) away: {}",
            pods.len(),
            shown(&pods)
        ));
    }
    // First the conflist: from here on the runtime stops sending pods to vpcnet.
    remove_conflist(t, &mut report)?;
    remove_binaries(t, &mut report)?;
    rt.block_on(clean_kernel(force, &mut report))?;
    // Over netlink: no `nft` needed. A kernel without nf_tables cannot hold a table of ours,
    // so a failure there is only an error when the tools to make one are installed.
    let snat = snat::remove().map_err(|e| e.to_string());
    let policy =
        vpcnet_policy::apply::apply(&vpcnet_policy::render::removal()).map_err(|e| e.to_string());
    match (snat, policy) {
        (Ok(()), Ok(())) => {
            report.note(format!(
                "deleted nftables table ip {0} and table inet {0} (SNAT, if present)",
                snat::TABLE
            ));
            report.note(format!(
                "deleted nftables table inet {} (network policy, if present)",
                vpcnet_policy::render::TABLE
            ));
        }
        (Err(msg), _) | (_, Err(msg)) if snat::nft_found() => {
            return Err(UninstallError::Kernel {
                what: "nftables".into(),
                msg,
            });
        }
        (Err(msg), _) | (_, Err(msg)) => report.note(format!(
            "no nftables table to delete: nf_tables is not available ({msg})"
        )),
    }
    // What the agent changed for IPv6 forwarding (recorded in the state directory): put
    // back before the directory goes.
    for line in
        crate::ipv6_forwarding::restore(&t.state_dir).map_err(|msg| UninstallError::Kernel {
            what: "restoring IPv6 sysctls".into(),
            msg,
        })?
    {
        report.note(line);
    }
    remove_state_dir(&t.state_dir, &mut report)?;
    remove_socket_files(&t.socket, &mut report)?;
    Ok(report)
}

/// The subcommand: returns the process exit code.
pub fn run(args: &RunArgs, cni_bin_dir: &Path, force: bool) -> i32 {
    let t = Targets::from_args(args, cni_bin_dir);
    match uninstall(&t, force) {
        Ok(report) => {
            print!("{report}");
            println!("vpcnetd uninstall: done; vpcnet is off this node");
            0
        }
        Err(e) => {
            eprintln!("vpcnetd uninstall: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_known_by_name() {
        for n in [
            "pool.json",
            "pool.journal",
            "lock",
            "claims.json",
            ".claims.lock",
            "etcd-lease",
            ".pool.json.tmp",
            ".claims.json.tmp",
            "pool.json.bad-1700000000",
            "pool.journal.bad-1700000000",
        ] {
            assert!(is_state_file(n), "{n}");
        }
        for n in ["notes.txt", "kubeconfig", ".bashrc", "lockfile"] {
            assert!(!is_state_file(n), "{n}");
        }
    }

    #[test]
    fn only_vpcnet_conflists_are_ours() {
        assert!(is_our_conflist(
            br#"{"name":"vpcnet","plugins":[{"type":"vpcnet"},{"type":"portmap"}]}"#
        ));
        assert!(!is_our_conflist(
            br#"{"name":"x","plugins":[{"type":"bridge"},{"type":"vpcnet"}]}"#
        ));
        assert!(!is_our_conflist(b"not json"));
    }
}
