//! The `vpcnet` front's socket (issue 14): vpcnetd runs a whole CNI command that the front
//! the runtime execs hands it, so that a pod event pays the exec of a ~2 KB program without
//! libc instead of a glibc program's start (docs/benchmarks.md, issue 14 round 9).
//!
//! The wire format is [`vpcnet_proto::front`]. The command itself is the plugin's own code
//! ([`vpcnet::run`]), unchanged: it takes the same in-flight lock and writes the same plugin
//! log as the standalone plugin; its requests for this vpcnetd's plugin socket go straight
//! to the socket's dispatch ([`crate::server::InProcess`], set by [`set_in_process`]) as a
//! root connection's would, requests for any other socket over that socket.
//!
//! Each command runs on a thread of its own, never on the tokio runtime: the plugin's code
//! enters the pod's network namespace (`setns` changes only the calling thread, and the
//! plugin's code returns to vpcnetd's at once or aborts) and blocks. Up to [`MAX_WARM`]
//! threads stay warm between commands and keep the command's runtime and host netlink socket
//! (per thread, in the plugin's code), checking before each wait that they are in vpcnetd's
//! network namespace; commands beyond them run on threads that end with the command.
//!
//! Invariant: **vpcnetd runs only what the standalone plugin would have run the same way**.
//! It declines ([`vpcnet_proto::front::DECLINED`]; the front then execs `vpcnet-standalone`)
//! a peer that is not root, a front in another network namespace than vpcnetd's (the plugin's
//! host side is the namespace it runs in), and anything malformed or over the bounds.

use std::collections::HashMap;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vpcnet_netlink::netns::{self, NetnsId};
use vpcnet_proto::front::{self, DECLINED, FLAG_POD_NETNS, HEADER_LEN, MAX_ENV};

/// From accept to the last byte of the request: the front sends it all at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The plugin's stdin bound plus the one byte that shows it was exceeded.
const MAX_STDIN: usize = (1 << 20) + 1;

/// `CAP_SYS_ADMIN`'s bit in `CapEff` (linux/capability.h): entering a pod's network
/// namespace (`setns`) needs it.
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the plugin's commands can run in this process: they enter pod network namespaces.
/// A vpcnetd without `CAP_SYS_ADMIN` (a DaemonSet that drops it) does not serve the front.
pub fn can_enter_namespaces() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Whether `/proc/sys` is mounted read-only here, as in a container that is not privileged.
/// An IPv6 ADD writes `accept_ra` of both veth ends there.
pub fn proc_sys_read_only() -> bool {
    nix::sys::statvfs::statvfs("/proc/sys/net")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(true)
}

/// Why vpcnetd does not serve the front: every command then runs in `vpcnet-standalone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    #[error("no CAP_SYS_ADMIN: the commands enter pod network namespaces")]
    NoSysAdmin,
    #[error("/proc/sys is read-only here and an IPv6 ADD writes accept_ra there")]
    ProcSysReadOnly,
}

/// Whether this process can run the plugin's commands; `ipv6`: the node serves IPv6.
pub fn check_can_serve(ipv6: bool) -> Result<(), NotServed> {
    if !can_enter_namespaces() {
        return Err(NotServed::NoSysAdmin);
    }
    if ipv6 && proc_sys_read_only() {
        return Err(NotServed::ProcSysReadOnly);
    }
    Ok(())
}

/// Binds `<socket>.exec` beside the plugin socket (mode 0660, a stale one replaced) and
/// serves it on a thread of its own until the process ends; `Ok(Err(why))`, without
/// binding, when this process cannot run the commands ([`check_can_serve`]). Either way, or
/// on an error, the front runs each command it is not answered on through
/// `vpcnet-standalone`, as before the front existed.
pub fn serve(socket: &Path, ipv6: bool) -> std::io::Result<Result<(), NotServed>> {
    let path = front::socket_for(socket);
    if let Err(why) = check_can_serve(ipv6) {
        // A front socket left by an earlier vpcnetd that could would still be connected to.
        let _ = std::fs::remove_file(&path);
        return Ok(Err(why));
    }
    let listener = crate::server::bind(&path)?.into_std()?;
    listener.set_nonblocking(false)?;
    let own = netns::id_of_path(Path::new("/proc/self/ns/net")).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("front-accept".into())
        .spawn(move || accept_loop(&listener, own))?;
    tracing::debug!(socket = %path.display(), "serving the vpcnet front");
    Ok(Ok(()))
}

/// This vpcnetd's request handler for the commands it runs ([`set_in_process`]).
static IN_PROCESS: OnceLock<Arc<dyn vpcnet::LocalAgent>> = OnceLock::new();

/// From the moment vpcnetd serves its plugin socket: the commands it runs for the front send
/// their requests for that socket (Assign, Release, the report…) straight to its handler
/// ([`crate::server::InProcess`]) instead of connecting to it (issue 14). Before (a command
/// that comes in while vpcnetd starts) they connect, as the standalone plugin does.
pub fn set_in_process(agent: Arc<dyn vpcnet::LocalAgent>) {
    let _ = IN_PROCESS.set(agent);
}

/// Commands run here at once, at most; the front runs any beyond in `vpcnet-standalone` (a
/// process each, as without the front), so a burst never grows this process without bound.
const MAX_RUNNING: usize = 64;

/// Threads kept warm between commands, at most: each keeps its runtime and host netlink
/// socket ([`vpcnet::run`] keeps them per thread), so a command on one pays neither nor a
/// thread's start (issue 14). Started on demand: a node without pods has none. Commands
/// beyond them (a burst) run on threads that end with their command.
const MAX_WARM: usize = 4;

/// One accepted command on its way to a thread.
struct Job {
    stream: UnixStream,
    running: Running,
}

/// Warm threads waiting for a command; the accept loop takes one of them (decrements) before
/// it hands a job to [`Warm::jobs`], so a job sent there always has a thread to take it.
static IDLE: AtomicUsize = AtomicUsize::new(0);
/// Warm threads running ([`WarmSlot`]).
static WARM: AtomicUsize = AtomicUsize::new(0);

fn accept_loop(listener: &UnixListener, own: NetnsId) {
    let (jobs, waiting) = std::sync::mpsc::channel::<Job>();
    let waiting = std::sync::Arc::new(std::sync::Mutex::new(waiting));
    loop {
        match listener.accept() {
            Ok((mut stream, _)) if RUNNING.load(Ordering::SeqCst) >= MAX_RUNNING => {
                let _ = stream.write_all(&front::reply(DECLINED, b""));
            }
            Ok((stream, _)) => {
                // Counted from here, so the bound above sees it before its thread runs.
                let job = Job {
                    stream,
                    running: Running::start(),
                };
                if take_one(&IDLE) {
                    if let Err(back) = jobs.send(job) {
                        // Cannot happen while this loop holds `waiting`'s other end.
                        run_on_own_thread(back.0, own);
                    }
                } else if take_one_up(&WARM, MAX_WARM) {
                    let waiting = std::sync::Arc::clone(&waiting);
                    let slot = WarmSlot;
                    // On failure the slot goes back with the closure.
                    spawn_command_thread(move || warm_thread(slot, job, &waiting, own));
                } else {
                    run_on_own_thread(job, own);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "front: accepting a connection");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Decrements `n` if it is above zero; whether it did.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

/// Increments `n` if it is below `max`; whether it did.
fn take_one_up(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        (v < max).then_some(v + 1)
    })
    .is_ok()
}

/// A command beyond the warm threads: a thread of its own that ends with it.
fn run_on_own_thread(job: Job, own: NetnsId) {
    spawn_command_thread(move || serve_one(job.stream, own, job.running));
}

/// Starts a `front-cmd` thread. If it cannot start, `f` is dropped with the job's
/// connection, which closes unanswered: the front runs the command itself.
fn spawn_command_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("front-cmd".into())
        .spawn(f)
    {
        tracing::warn!(error = %e, "front: starting a command thread");
    }
}

/// One of the [`MAX_WARM`] warm threads, counted in [`WARM`] while it lives (a thread that
/// ends, however, gives its place back).
struct WarmSlot;

impl Drop for WarmSlot {
    fn drop(&mut self) {
        WARM.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A warm thread: its first command, then one command after another from the accept loop.
/// After each reply it settles the command's kept runtime ([`vpcnet::settle_kept`]). Before
/// waiting for the next, it checks that it is in vpcnetd's network namespace (the
/// plugin's code returns to it after every visit to a pod's, or aborts); a thread that is
/// not ends.
fn warm_thread(
    _slot: WarmSlot,
    first: Job,
    waiting: &std::sync::Mutex<Receiver<Job>>,
    own: NetnsId,
) {
    let mut job = first;
    loop {
        serve_one(job.stream, own, job.running);
        // The reply is out: what the command left on its kept runtime ends now, or the
        // runtime goes (a pod-side socket must not outlive the command here).
        vpcnet::settle_kept();
        if netns::id_of_path(Path::new("/proc/thread-self/ns/net")).ok() != Some(own) {
            tracing::error!(
                "front: a command thread is not in vpcnetd's network namespace; ending it"
            );
            return;
        }
        IDLE.fetch_add(1, Ordering::SeqCst);
        let next = match waiting.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match next {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

/// Why a request is not run here.
#[derive(Debug, thiserror::Error)]
enum Decline {
    #[error("peer is not root")]
    NotRoot,
    #[error("front in another network namespace")]
    OtherNetns,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

/// Commands running now (their threads), for the shutdown's drain ([`drain`]).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts one running command while it lives.
struct Running;

impl Running {
    fn start() -> Running {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// At shutdown, once `<socket>.exec` is removed (no new command can reach this process):
/// waits, at most `bound`, for the commands still running; returns how many are left. A
/// command cut short by the exit leaves its front unanswered, which then runs
/// `vpcnet-standalone` — so letting them finish is what keeps an upgrade from failing ADDs.
pub async fn drain(bound: Duration) -> usize {
    let until = std::time::Instant::now() + bound;
    loop {
        let left = RUNNING.load(Ordering::SeqCst);
        if left == 0 || std::time::Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One command: the request, the plugin's code on this thread, the reply.
fn serve_one(mut stream: UnixStream, own: NetnsId, _running: Running) {
    let code_and_out = match read_request(&stream, own) {
        Ok(req) => {
            let env = req.env;
            let get = |k: &str| env.get(k).cloned();
            let mut out = Vec::new();
            let code = vpcnet::run(vpcnet::Invocation {
                get: &get,
                stdin: &mut &req.stdin[..],
                stdout: &mut out,
                pod_netns: req.pod_netns,
                agent: IN_PROCESS.get().cloned(),
            });
            (code, out)
        }
        Err(e) => {
            tracing::debug!(reason = %e, "front: declined, the front runs vpcnet-standalone");
            (DECLINED, Vec::new())
        }
    };
    let (code, out) = code_and_out;
    // A front that is gone (the runtime's timeout) gets nothing; the command's effect stands,
    // as the standalone plugin's would after its result could not be written.
    let _ = stream.write_all(&front::reply(code, &out));
}

struct Request {
    env: HashMap<String, String>,
    stdin: Vec<u8>,
    pod_netns: Option<OwnedFd>,
}

fn read_request(stream: &UnixStream, own: NetnsId) -> Result<Request, Decline> {
    let root = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid() == 0)
        .unwrap_or(false);
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut header = [0u8; HEADER_LEN];
    let (got, fds) = recv_with_fds(stream, &mut header)?;
    // Owned from here on, whatever is declined below: the descriptors close with them.
    let mut fds = fds.into_iter();
    let front_netns = fds.next();
    let pod_netns = fds.next();
    if !root {
        return Err(Decline::NotRoot);
    }
    if got == 0 {
        return Err(Decline::Malformed("empty"));
    }
    let mut reader = stream;
    reader.read_exact(&mut header[got..])?;
    let (flags, env_len, stdin_len) =
        front::parse_header(&header).ok_or(Decline::Malformed("header"))?;
    let front_netns = front_netns.ok_or(Decline::Malformed("no namespace descriptor"))?;
    let theirs = netns::id(front_netns.as_fd()).map_err(|_| Decline::Malformed("namespace"))?;
    if theirs != own {
        return Err(Decline::OtherNetns);
    }
    let pod_netns = if flags & FLAG_POD_NETNS != 0 {
        Some(pod_netns.ok_or(Decline::Malformed("no CNI_NETNS descriptor"))?)
    } else {
        None
    };
    if env_len > MAX_ENV || stdin_len > MAX_STDIN {
        return Err(Decline::Malformed("over the bounds"));
    }
    let mut env_bytes = vec![0u8; env_len];
    reader.read_exact(&mut env_bytes)?;
    let mut stdin = vec![0u8; stdin_len];
    reader.read_exact(&mut stdin)?;
    Ok(Request {
        env: parse_env(&env_bytes),
        stdin,
        pod_netns,
    })
}

/// `KEY=VALUE\0…` as the process environment would read: entries that are not UTF-8 are
/// absent, as `std::env::var` has them for the standalone plugin; the first of a repeated key
/// wins, as `getenv` finds it.
fn parse_env(bytes: &[u8]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for entry in bytes.split(|b| *b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some((k, v)) = entry.split_once('=') {
            if !k.is_empty() {
                env.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    env
}

/// The first read of a request: up to `buf.len()` bytes and the descriptors riding on them.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in this process for this message
                // (SCM_RIGHTS); nothing else refers to it, so it is ours to own and close.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_reads_like_the_process_environment() {
        let env = parse_env(b"CNI_COMMAND=ADD\0A=1=2\0A=3\0\xff=x\0=y\0NOEQ\0");
        assert_eq!(env.get("CNI_COMMAND").map(String::as_str), Some("ADD"));
        assert_eq!(env.get("A").map(String::as_str), Some("1=2"));
        assert_eq!(env.len(), 2, "{env:?}");
    }
}
