//! Network namespaces: open and verify a namespace file, run code inside a namespace.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;

use crate::NetlinkError;

/// `statfs.f_type` of nsfs (the filesystem behind /proc/PID/ns/* and bind mounts of them).
pub const NSFS_MAGIC: i64 = 0x6e73_6673;

/// `NS_GET_NSTYPE` ioctl, `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens a network namespace file (e.g. /var/run/netns/foo or /proc/PID/ns/net) and
/// verifies it is one: its filesystem must be nsfs and `NS_GET_NSTYPE` must say
/// `CLONE_NEWNET`. A non-namespace file gives [`NetlinkError::NotNetns`]; a missing path
/// gives [`NetlinkError::Io`] with ENOENT.
pub fn open(path: &Path) -> Result<OwnedFd, NetlinkError> {
    let fd = OwnedFd::from(std::fs::File::open(path).map_err(NetlinkError::Io)?);
    check(fd.as_fd(), path)?;
    Ok(fd)
}

/// Verifies that an open file is a network namespace, as [`open`] does; `path` names it in
/// the error. For a descriptor another process opened and passed on (the `vpcnet` front).
pub fn check(fd: BorrowedFd<'_>, path: &Path) -> Result<(), NetlinkError> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(|e| NetlinkError::Io(e.into()))?;
    #[allow(clippy::useless_conversion)] // f_type's width differs between libcs/arches
    let f_type = i64::from(st.filesystem_type().0);
    if f_type != NSFS_MAGIC {
        return Err(NetlinkError::NotNetns(path.to_path_buf()));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace behind the fd,
    // which is open (borrowed) for the duration of the call.
    let nstype = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype < 0 {
        return Err(NetlinkError::Io(std::io::Error::last_os_error()));
    }
    if nstype != libc::CLONE_NEWNET {
        return Err(NetlinkError::NotNetns(path.to_path_buf()));
    }
    Ok(())
}

/// The identity of a network namespace: the nsfs device and inode behind its file. Two
/// paths or descriptors name the same namespace exactly when their identities are equal
/// (e.g. /var/run/netns/foo, a bind mount of /proc/PID/ns/net, and that /proc file itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino`: the namespace's inode number (what `ls -L -i /proc/PID/ns/net` shows).
    pub ino: u64,
}

/// The identity of the namespace behind an open namespace file (see [`open`]).
pub fn id(ns: BorrowedFd<'_>) -> Result<NetnsId, NetlinkError> {
    let st = nix::sys::stat::fstat(ns).map_err(|e| NetlinkError::Io(e.into()))?;
    #[allow(clippy::useless_conversion)] // st_dev/st_ino widths differ between libcs/arches
    let id = NetnsId {
        dev: u64::from(st.st_dev),
        ino: u64::from(st.st_ino),
    };
    Ok(id)
}

/// The identity of the namespace a path names (following /proc's magic links), e.g.
/// `/proc/self/ns/net` for the caller's own.
pub fn id_of_path(path: &Path) -> Result<NetnsId, NetlinkError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(NetlinkError::Io)?;
    Ok(NetnsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Runs `f` on a dedicated OS thread that has entered the namespace `ns` (setns
/// CLONE_NEWNET), with a fresh current-thread tokio runtime and a netlink handle created
/// inside that namespace; /proc/sys/net opened from `f` is that namespace's too. Joins the
/// thread and returns `f`'s output. The calling thread's namespace is never changed, and the
/// worker thread is discarded afterwards.
pub fn run_in<F, Fut, T>(ns: BorrowedFd<'_>, f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vpcnet-netns".to_owned())
            .spawn_scoped(scope, move || -> Result<T, NetlinkError> {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetlinkError::Io(e.into()))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(NetlinkError::Io)?;
                rt.block_on(async move {
                    let handle = crate::connect()?;
                    Ok(f(handle).await)
                })
            })
            .map_err(NetlinkError::Io)?;
        worker.join().map_err(|_| NetlinkError::ThreadPanicked)?
    })
}

/// Opens a netlink route socket that lives in the namespace `ns`, from the calling thread,
/// and spawns its connection task on the current tokio runtime. Returns a handle whose every
/// request acts inside `ns`, while the calling thread stays in its own namespace.
///
/// A netlink socket belongs to the namespace it was created in, for its whole life. So the
/// thread enters `ns` only for the `socket()` call and returns at once: no task runs while
/// it is away. This is the "create the socket inside the namespace" pattern; it is only safe
/// where nothing else can run on this thread meanwhile — true for the plugin's
/// single-threaded, current-thread runtime; never use it from a worker of a multi-threaded
/// runtime (use [`run_in`] there).
pub fn connect_in(ns: BorrowedFd<'_>) -> Result<rtnetlink::Handle, NetlinkError> {
    let made = while_in(ns, || {
        rtnetlink::new_connection().map_err(NetlinkError::Socket)
    })?;
    let (conn, handle, _) = made?;
    tokio::spawn(crate::nl::Eager(conn));
    Ok(handle)
}

/// [`connect_in`], and in the same visit to `ns` opens the `/proc/sys` knob `sysctl_path`
/// for writing (see [`crate::sysctl::open_for_write`]). A `/proc/sys/net` file binds the
/// namespace of the thread that opens it, for its whole life: written later from the home
/// namespace, it still sets `ns`'s knob. So a pod's sysctl costs no thread of its own and no
/// second `setns` pair (issue 14). Same rules as [`connect_in`].
pub fn connect_in_opening(
    ns: BorrowedFd<'_>,
    sysctl_path: &str,
) -> Result<(rtnetlink::Handle, std::fs::File), NetlinkError> {
    let (made, opened) = while_in(ns, || {
        (
            rtnetlink::new_connection().map_err(NetlinkError::Socket),
            crate::sysctl::open_for_write(sysctl_path),
        )
    })?;
    let (conn, handle, _) = made?;
    let file = opened?;
    tokio::spawn(crate::nl::Eager(conn));
    Ok((handle, file))
}

/// Runs `f` on this thread inside `ns` and returns to the thread's own namespace right
/// after. `f` must not run anything else (no task, no await): see [`connect_in`].
fn while_in<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> Result<T, NetlinkError> {
    let home = std::fs::File::open("/proc/thread-self/ns/net").map_err(NetlinkError::Io)?;
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetlinkError::Io(e.into()))?;
    let out = f();
    if let Err(e) = nix::sched::setns(&home, CloneFlags::CLONE_NEWNET) {
        // Staying in the pod's namespace would make every later host-side step act on the
        // pod: there is no safe way on from here.
        eprintln!("vpcnet: FATAL: cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    Ok(out)
}
