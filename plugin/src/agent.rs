//! The plugin's view of vpcnetd: one call per request, errors mapped to CNI codes.

use std::cell::RefCell;
use std::path::Path;
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
    let kept = KEPT.with(|slot| slot.borrow_mut().take());
    let _ = match kept {
        Some(kept) => kept.notify(report),
        None => client::notify(socket, report, Duration::from_millis(100)),
    };
}

pub fn call(socket: &Path, request: Request) -> Result<Outcome, CniError> {
    map(keep(client::call_keep(socket, request, TIMEOUT)))
}

/// Connects without sending: ADD first checks who serves the socket (its network namespace
/// must not be the pod's). An unreachable agent is an error naming the `socket` field.
pub fn connect(socket: &Path) -> Result<client::Connection, CniError> {
    client::connect(socket, TIMEOUT).map_err(|e| match e {
        ClientError::Connect { .. } => unreachable_error(&e),
        other => CniError::TryAgainLater(other.to_string()),
    })
}

/// Sends on a connection made with [`connect`], without waiting.
pub fn send_on(conn: client::Connection, request: Request) -> Result<client::Pending, CniError> {
    conn.send(request)
        .map_err(|e| CniError::TryAgainLater(e.to_string()))
}

/// Waits for a reply sent with [`send`].
pub fn wait(pending: client::Pending) -> Result<Reply, CniError> {
    match map(keep(pending.wait_keep()))? {
        Outcome::Reply(r) => Ok(r),
        Outcome::Unreachable(e) => Err(unreachable_error(&e)),
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
