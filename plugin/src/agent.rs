//! The plugin's view of vpcnetd: one call per request, errors mapped to CNI codes.

use std::cell::RefCell;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use vpcnet_proto::api::{ObservedOp, Reply, Request};
use vpcnet_proto::client::{self, ClientError};

use crate::error::CniError;

/// Long enough for the agent to claim a prefix when its pool is empty; short enough that the
/// runtime's own timeout (kubelet: minutes) is never the one that fires.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Nobody listens on the socket (agent down, or `socket` names the wrong path), or the
    /// agent went away before it replied (killed mid-request: connection reset, closed).
    /// Whether it acted on the request is unknown; DEL, which must not block pod deletion,
    /// then tears down locally and the agent's start-up reconcile settles the rest.
    Unreachable(ClientError),
}

/// vpcnetd running this command itself ([`crate::Invocation::agent`]): a request for the
/// socket it serves goes straight to its handler, as from root, without a connection
/// (issue 14: no connect, accept, encoding and decoding on the ADD's path).
pub trait LocalAgent: Send + Sync {
    /// The plugin socket this vpcnetd serves: only requests for it are taken in process (a
    /// netconf naming another socket is answered by whoever serves that one).
    fn socket(&self) -> &Path;
    /// Starts `request`; its reply comes on the receiver, which closes unanswered when
    /// vpcnetd stops first (then as an agent gone mid-request: [`Outcome::Unreachable`]).
    fn send(&self, request: Request) -> Receiver<Reply>;
}

thread_local! {
    /// The agent that runs the command on this thread, for the command's duration.
    static LOCAL: RefCell<Option<Arc<dyn LocalAgent>>> = const { RefCell::new(None) };
}

/// Sets this thread's [`LocalAgent`] until the scope is dropped (the command's end).
pub struct LocalScope(());

pub fn enter_local(agent: Option<Arc<dyn LocalAgent>>) -> LocalScope {
    LOCAL.with(|slot| *slot.borrow_mut() = agent);
    LocalScope(())
}

impl Drop for LocalScope {
    fn drop(&mut self) {
        LOCAL.with(|slot| slot.borrow_mut().take());
    }
}

fn local_for(socket: &Path) -> Option<Arc<dyn LocalAgent>> {
    LOCAL.with(|slot| {
        slot.borrow()
            .as_ref()
            .filter(|a| a.socket() == socket)
            .cloned()
    })
}

/// A connection to the agent, nothing sent yet ([`connect`]).
pub enum Connection {
    Socket(client::Connection),
    Local(Arc<dyn LocalAgent>, String),
}

impl Connection {
    /// The pid of the process serving the socket: this one, for vpcnetd's own command.
    pub fn peer_pid(&self) -> Option<u32> {
        match self {
            Connection::Socket(c) => c.peer_pid(),
            Connection::Local(..) => Some(std::process::id()),
        }
    }
}

/// A request sent, its reply not read yet ([`send_on`], [`wait`]).
pub enum Pending {
    Socket(client::Pending),
    Local(Receiver<Reply>, String),
}

thread_local! {
    /// The connection of this command's last answered request, kept for [`observe`]: one
    /// connection per pod event instead of two (issue 14). Per thread, because a command runs
    /// on one thread from start to end and vpcnetd runs several at once (each on its own
    /// thread, [`crate::run`]).
    static KEPT: RefCell<Option<client::Kept>> = const { RefCell::new(None) };
}

fn keep(r: Result<(Reply, client::Kept), ClientError>) -> Result<Reply, ClientError> {
    r.map(|(reply, kept)| {
        // An earlier one (an ADD's Assign before its Release) closes here.
        KEPT.with(|slot| *slot.borrow_mut() = Some(kept));
        reply
    })
}

/// Reports an ADD or DEL as the runtime saw it ([`Request::Observed`]); never waits for the
/// agent and never fails the command (an agent that is down simply misses the sample). Sent
/// on the connection of the command's last request when there is one (the agent reads one
/// report there after its reply), else on a new connection.
pub fn observe(socket: &Path, verb: ObservedOp, micros: u64, ok: bool) {
    let report = Request::Observed { verb, micros, ok };
    if let Some(local) = local_for(socket) {
        // Not waited for: the receiver goes at once.
        drop(local.send(report));
        return;
    }
    let kept = KEPT.with(|slot| slot.borrow_mut().take());
    let _ = match kept {
        Some(kept) => kept.notify(report),
        None => client::notify(socket, report, Duration::from_millis(100)),
    };
}

/// Closes the connection a command kept and did not report on (CHECK, GC, STATUS; an ADD or
/// DEL's is taken by [`observe`]): a thread that runs more commands (vpcnetd's) would hold it
/// open until its next one.
pub fn forget() {
    KEPT.with(|slot| slot.borrow_mut().take());
}

pub fn call(socket: &Path, request: Request) -> Result<Outcome, CniError> {
    match local_for(socket) {
        Some(local) => {
            let path = socket.display().to_string();
            wait_local(&local.send(request), path)
        }
        None => map(keep(client::call_keep(socket, request, TIMEOUT))),
    }
}

/// Connects without sending: ADD first checks who serves the socket (its network namespace
/// must not be the pod's). An unreachable agent is an error naming the `socket` field.
pub fn connect(socket: &Path) -> Result<Connection, CniError> {
    if let Some(local) = local_for(socket) {
        return Ok(Connection::Local(local, socket.display().to_string()));
    }
    client::connect(socket, TIMEOUT)
        .map(Connection::Socket)
        .map_err(|e| match e {
            ClientError::Connect { .. } => unreachable_error(&e),
            other => CniError::TryAgainLater(other.to_string()),
        })
}

/// Sends on a connection made with [`connect`], without waiting.
pub fn send_on(conn: Connection, request: Request) -> Result<Pending, CniError> {
    match conn {
        Connection::Socket(conn) => conn
            .send(request)
            .map(Pending::Socket)
            .map_err(|e| CniError::TryAgainLater(e.to_string())),
        Connection::Local(local, path) => Ok(Pending::Local(local.send(request), path)),
    }
}

/// Waits for a reply sent with [`send_on`].
pub fn wait(pending: Pending) -> Result<Reply, CniError> {
    let outcome = match pending {
        Pending::Socket(p) => map(keep(p.wait_keep()))?,
        Pending::Local(rx, path) => wait_local(&rx, path)?,
    };
    match outcome {
        Outcome::Reply(r) => Ok(r),
        Outcome::Unreachable(e) => Err(unreachable_error(&e)),
    }
}

/// A reply from vpcnetd's own handler, with the socket's timeout and its meaning of a
/// request left unanswered.
fn wait_local(rx: &Receiver<Reply>, path: String) -> Result<Outcome, CniError> {
    match rx.recv_timeout(TIMEOUT) {
        Ok(reply) => map(Ok(reply)),
        Err(RecvTimeoutError::Disconnected) => map(Err(ClientError::NoReply { path })),
        Err(RecvTimeoutError::Timeout) => Err(CniError::TryAgainLater(format!(
            "vpcnetd at socket {path} gave no reply within {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

fn unreachable_error(e: &ClientError) -> CniError {
    CniError::TryAgainLater(format!(
        "{e} (is vpcnetd running? check the netconf field socket)"
    ))
}

fn map(r: Result<Reply, ClientError>) -> Result<Outcome, CniError> {
    match r {
        Ok(Reply::Error { code, msg }) => Err(CniError::Agent { code, msg }),
        Ok(reply) => Ok(Outcome::Reply(reply)),
        Err(e) if agent_gone(&e) => Ok(Outcome::Unreachable(e)),
        Err(e) => Err(CniError::TryAgainLater(e.to_string())),
    }
}

/// The agent is not there, or died during the request. A timeout is not this: a slow agent
/// is alive, and the runtime should retry.
fn agent_gone(e: &ClientError) -> bool {
    use std::io::ErrorKind;
    match e {
        ClientError::Connect { .. } | ClientError::NoReply { .. } => true,
        ClientError::Io { source, .. } => matches!(
            source.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        ClientError::Decode { .. } => false,
    }
}

/// Like [`call`], but an unreachable agent is an error: code 11, naming the `socket` field.
pub fn call_required(socket: &Path, request: Request) -> Result<Reply, CniError> {
    match call(socket, request)? {
        Outcome::Reply(r) => Ok(r),
        Outcome::Unreachable(e) => Err(unreachable_error(&e)),
    }
}

pub fn unexpected(reply: &Reply) -> CniError {
    CniError::Io(format!("vpcnetd sent an unexpected reply: {reply:?}"))
}
