//! `/proc/sys` knobs. Files under `/proc/sys/net` belong to the network namespace of the
//! thread that opens them, so call these inside [`crate::netns::run_in`] to touch a pod's.

use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;

use crate::NetlinkError;

fn full_path(path: &str) -> Result<PathBuf, NetlinkError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(NetlinkError::InvalidArgument(format!(
            "sysctl path {path:?} (want e.g. \"net/ipv4/ip_forward\")"
        )));
    }
    Ok(PathBuf::from("/proc/sys").join(path))
}

/// `sysctl -n` of `path` (e.g. `"net/ipv4/ip_forward"`), without the trailing newline.
pub fn get(path: &str) -> Result<String, NetlinkError> {
    let full = full_path(path)?;
    let mut s = std::fs::read_to_string(full).map_err(NetlinkError::Io)?;
    let trimmed = s.trim_end_matches('\n').len();
    s.truncate(trimmed);
    Ok(s)
}

/// `sysctl -w path=value`; does not write when the current value is already `value`.
pub fn set(path: &str, value: &str) -> Result<(), NetlinkError> {
    if get(path)?.trim() == value.trim() {
        return Ok(());
    }
    let full = full_path(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(full)
        .map_err(NetlinkError::Io)?;
    f.write_all(value.as_bytes()).map_err(NetlinkError::Io)
}

/// [`set`] inside the network namespace `ns`, from a short-lived OS thread that entered it
/// (setns changes only the calling thread, and a `/proc/sys/net` file belongs to the
/// namespace of the thread that opens it). The calling thread never changes namespace, so
/// this is safe from any thread, including a tokio worker; it blocks for the thread's life
/// (tens of microseconds).
pub fn set_in(ns: BorrowedFd<'_>, path: &str, value: &str) -> Result<(), NetlinkError> {
    full_path(path)?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vpcnet-sysctl".to_owned())
            .spawn_scoped(scope, move || {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetlinkError::Io(e.into()))?;
                set(path, value)
            })
            .map_err(NetlinkError::Io)?;
        worker.join().map_err(|_| NetlinkError::ThreadPanicked)?
    })
}

/// The `/proc/sys` path of IPv6 knob `key` of interface `ifname`
/// (`net/ipv6/conf/IFNAME/KEY`), for [`set`] and [`set_in`]; refuses a name that is not a
/// valid interface name.
pub fn ipv6_conf(ifname: &str, key: &str) -> Result<String, NetlinkError> {
    crate::link::check_name(ifname)?;
    Ok(format!("net/ipv6/conf/{ifname}/{key}"))
}

/// Writes `value` to `path` without reading it first (one open and one write): for knobs
/// whose wanted value is known and whose write is idempotent.
pub fn write(path: &str, value: &str) -> Result<(), NetlinkError> {
    let full = full_path(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(full)
        .map_err(NetlinkError::Io)?;
    f.write_all(value.as_bytes()).map_err(NetlinkError::Io)
}

/// Opens `path` for writing, without writing: the file keeps the network namespace of the
/// thread that opened it (see [`crate::netns::connect_in_opening`]); [`write_file`] writes
/// it later from anywhere.
pub fn open_for_write(path: &str) -> Result<std::fs::File, NetlinkError> {
    let full = full_path(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(full)
        .map_err(NetlinkError::Io)
}

/// Writes `value` to a knob opened with [`open_for_write`] (one write, at offset 0).
pub fn write_file(mut f: std::fs::File, value: &str) -> Result<(), NetlinkError> {
    f.write_all(value.as_bytes()).map_err(NetlinkError::Io)
}

/// [`write`] inside the network namespace `ns`, on a new OS thread that enters it, started
/// at once: the caller goes on (e.g. with its own netlink work) and joins the handle for the
/// outcome. The thread owns `ns` (a duplicate of the caller's descriptor is fine) and ends
/// after the one write; the caller's thread never changes namespace.
pub fn write_in_spawned(
    ns: OwnedFd,
    path: String,
    value: &'static str,
) -> Result<std::thread::JoinHandle<Result<(), NetlinkError>>, NetlinkError> {
    full_path(&path)?;
    std::thread::Builder::new()
        .name("vpcnet-sysctl".to_owned())
        .spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetlinkError::Io(e.into()))?;
            write(&path, value)
        })
        .map_err(NetlinkError::Io)
}

/// Joins a [`write_in_spawned`] thread.
pub fn join(handle: std::thread::JoinHandle<Result<(), NetlinkError>>) -> Result<(), NetlinkError> {
    handle.join().map_err(|_| NetlinkError::ThreadPanicked)?
}

/// `accept_ra=0` on `ifname` in the namespace `ns` (see [`set_in`]): the interface ignores
/// router advertisements, so no router or prefix it did not get from us ever lands on it.
pub fn no_accept_ra_in(ns: BorrowedFd<'_>, ifname: &str) -> Result<(), NetlinkError> {
    set_in(ns, &ipv6_conf(ifname, "accept_ra")?, "0")
}
