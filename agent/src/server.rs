//! The unix socket the plugin talks to: one request line, one reply line per connection.
//! Mode 0660; only root peers (SO_PEERCRED) may change anything or read an allocation, others
//! may read status without container IDs.
//!
//! Invariant (issue 9, item 9): **pod metadata (container IDs, pod names) is for root only**:
//! `get` returns an allocation with its metadata, so like the per-pod status list it is
//! refused to non-root peers (code 101).
//!
//! Invariant (issue 9 item 7): every connection ends, and every request line gets a reply.
//! A client has [`REQUEST_TIMEOUT`] to send its line (the plugin sends it right after
//! connecting) and [`REPLY_TIMEOUT`] to take the reply; an idle or slow one is told so with
//! an error reply (code 6) and closed, so it cannot hold a task and a descriptor forever.
//! Bytes that are not UTF-8 JSON, and a line over [`MAX_REQUEST`], get an error reply with
//! code 6 instead of a silently closed connection. Only the work of a request (an ADD may
//! wait for a prefix to be claimed) is not timed here: the plugin's own timeout bounds it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::datastore::Datastore;
use crate::netpol::admit::Gate;
use crate::node::{Node, NodeError};
use crate::obs::metrics::{self, Op};
use vpcnet_pool::{AllocKey, PodMeta};
use vpcnet_proto::api::{Envelope, Reply, Request, PROTOCOL_VERSION};
use vpcnet_proto::codes::CniCode;

/// Requests are small; anything larger is not ours. The largest the plugin sends is a GC
/// with the runtime's valid-attachments list, never larger than the plugin's stdin bound
/// (1 MiB) plus the envelope: twice that leaves room.
const MAX_REQUEST: u64 = 2 << 20;
/// From accept to the end of the request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// For writing the reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the socket, replacing a stale one left by a crash (but never one somebody is
/// listening on).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by a running vpcnetd", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves the plugin's requests. `gate`: with `--network-policy=true`, the ADD gate of the
/// enforcement loop (no allow window, see [`crate::netpol::admit`]).
pub async fn serve<D: Datastore>(listener: UnixListener, node: Arc<Node<D>>, gate: Option<Gate>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let follow_up = handle(stream, &node, gate.as_ref()).await;
                    // The request is done: the report that may follow must not count as a
                    // request in flight (the shutdown drain counts holders of the node).
                    drop((node, gate));
                    match follow_up {
                        Ok(Some(mut reader)) => read_report(&mut reader).await,
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "plugin connection"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a plugin connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The handler of the commands vpcnetd runs for the `vpcnet` front (`exec.rs`): their
/// requests for this socket are dispatched as a root connection's would be — same checks,
/// same network policy gate, same metrics — without the connection (issue 14). Holds the
/// node weakly, so that the shutdown's drain still counts only requests in flight; once the
/// node is gone a request is left unanswered, as by an agent that went away.
pub struct InProcess<D: Datastore> {
    node: std::sync::Weak<Node<D>>,
    gate: Option<Gate>,
    socket: std::path::PathBuf,
    runtime: tokio::runtime::Handle,
}

impl<D: Datastore> std::fmt::Debug for InProcess<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl<D: Datastore> InProcess<D> {
    /// Must be called on the agent's runtime (whose handle runs the requests).
    pub fn new(node: &Arc<Node<D>>, gate: Option<Gate>, socket: &Path) -> InProcess<D> {
        InProcess {
            node: Arc::downgrade(node),
            gate,
            socket: socket.to_path_buf(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl<D: Datastore> vpcnet::LocalAgent for InProcess<D> {
    fn socket(&self) -> &Path {
        &self.socket
    }

    fn send(&self, request: Request) -> std::sync::mpsc::Receiver<Reply> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let node = self.node.clone();
        let gate = self.gate.clone();
        self.runtime.spawn(async move {
            let Some(node) = node.upgrade() else {
                return;
            };
            let reply = dispatch(request, true, &node, gate.as_ref()).await;
            let _ = tx.send(reply);
        });
        rx
    }
}

/// A connection's reader, when the plugin may still send its report ([`read_report`]).
type FollowUp = BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>;

/// Serves one request; returns the connection's reader when a report may follow (after an
/// Assign or Release from root).
async fn handle<D: Datastore>(
    stream: UnixStream,
    node: &Node<D>,
    gate: Option<&Gate>,
) -> std::io::Result<Option<FollowUp>> {
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let mut report_follows = false;
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let reply = match got {
        Err(_) => Reply::error(
            CniCode::Decode,
            format!(
                "no complete request line within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_REQUEST => Reply::error(
            CniCode::Decode,
            format!("request line longer than {MAX_REQUEST} bytes"),
        ),
        Ok(Ok(_)) => match decode(&line) {
            Err(reply) => *reply,
            Ok(env) => {
                report_follows = root
                    && matches!(
                        env.request,
                        Request::Assign { .. } | Request::Release { .. }
                    );
                dispatch(env.request, root, node, gate).await
            }
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    let send = async {
        write.write_all(&out).await?;
        write.shutdown().await
    };
    tokio::time::timeout(REPLY_TIMEOUT, send)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client took no reply"))??;
    Ok(report_follows.then_some(reader))
}

/// After its reply to an ADD's or DEL's request, the plugin may send one report on the same
/// connection — how long the runtime's command took ([`Request::Observed`]) — instead of
/// connecting again (issue 14). Read until that line or the plugin's exit (EOF), at most
/// [`REQUEST_TIMEOUT`]; anything but a report is ignored: one request per connection stays
/// the protocol, this is its only follow-up. A plugin older than this step closes at once.
async fn read_report<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) {
    let mut line = Vec::new();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    if !matches!(got, Ok(Ok(n)) if n > 0) {
        return;
    }
    match decode(&line) {
        Ok(Envelope {
            request: Request::Observed { verb, micros, ok },
            ..
        }) => metrics::get().plugin_observed(verb.name(), Duration::from_micros(micros), ok),
        _ => tracing::debug!("ignoring a follow-up that is not a report"),
    }
}

/// The request of one line, or the error reply for it (bytes that are not UTF-8 JSON
/// included: serde_json checks UTF-8 itself).
fn decode(line: &[u8]) -> Result<Envelope, Box<Reply>> {
    match serde_json::from_slice::<Envelope>(line) {
        Err(e) => {
            // Tell an old or new client which version we speak even if the body is foreign.
            let v = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("v").and_then(serde_json::Value::as_u64));
            Err(Box::new(match v {
                Some(v) if v != u64::from(PROTOCOL_VERSION) => version_error(v),
                _ => Reply::error(CniCode::Decode, format!("undecodable request: {e}")),
            }))
        }
        Ok(env) if env.v != PROTOCOL_VERSION => Err(Box::new(version_error(u64::from(env.v)))),
        Ok(env) => Ok(env),
    }
}

fn version_error(v: u64) -> Reply {
    Reply::error(
        CniCode::ProtocolVersion,
        format!("protocol version {v} not supported; this vpcnetd speaks {PROTOCOL_VERSION}"),
    )
}

async fn dispatch<D: Datastore>(
    req: Request,
    root: bool,
    node: &Node<D>,
    gate: Option<&Gate>,
) -> Reply {
    if !root {
        match req {
            Request::Status { .. } => {}
            Request::Get { .. } => {
                return Reply::error(
                    CniCode::PermissionDenied,
                    "only root may read allocations (they carry pod metadata)",
                )
            }
            _ => {
                return Reply::error(
                    CniCode::PermissionDenied,
                    "only root may assign or release addresses",
                )
            }
        }
    }
    let m = metrics::get();
    match req {
        Request::Assign { key, meta } => m.cni_reply(Op::Add, assign(node, gate, key, meta).await),
        Request::Release { key, unused } => m.cni_reply(
            Op::Del,
            reply(
                node.release(&key, unused)
                    .await
                    .map(|(ip, ip6)| Reply::Released { ip, ip6 }),
            ),
        ),
        Request::Get { key } => {
            let (allocation, allocation6) = node.get(&key);
            Reply::Allocation {
                allocation,
                allocation6: allocation6.map(Box::new),
            }
        }
        Request::Gc { network, valid } => m.cni_reply(
            Op::Gc,
            reply(
                node.gc(&network, &valid)
                    .await
                    .map(|(released, released6)| Reply::Collected {
                        released,
                        released6,
                    }),
            ),
        ),
        Request::Observed { verb, micros, ok } => {
            m.plugin_observed(verb.name(), Duration::from_micros(micros), ok);
            Reply::Noted
        }
        Request::Status { allocations } => {
            let mut s = node.status(root && allocations);
            s.network_policy = gate.map(|g| g.status(root));
            Reply::Status(Box::new(s))
        }
    }
}

/// ADD: the address, then (with `--network-policy=true`) the policy gate — the reply waits
/// until the pod's rules are in the kernel or it is decided no policy selects it. Refused by
/// the gate (fail closed): an address this ADD took goes straight back to free (no packet
/// can have used it; the plugin has not wired the pod), and the ADD fails with code 11
/// (try again later) and the gate's reason.
async fn assign<D: Datastore>(
    node: &Node<D>,
    gate: Option<&Gate>,
    key: AllocKey,
    meta: PodMeta,
) -> Reply {
    let a = match node.assign(key.clone(), meta.clone()).await {
        Ok(a) => a,
        Err(e) => return reply(Err(e)),
    };
    if let Some(gate) = gate {
        let veth = vpcnet_proto::naming::key_host_veth(&key);
        if let Err(e) = gate
            .admit(
                meta.namespace.as_deref(),
                meta.name.as_deref(),
                &veth,
                !a.existing,
            )
            .await
        {
            if !a.existing {
                if let Err(re) = node.release(&key, true).await {
                    tracing::error!(error = %re, "releasing the address of an ADD the network policy gate refused");
                }
            }
            return Reply::error(CniCode::TryAgainLater, e.to_string());
        }
    }
    Reply::Assigned {
        ip: a.ip,
        ip6: a.ip6,
        existing: a.existing,
        mtu: a.mtu,
    }
}

fn reply(r: Result<Reply, NodeError>) -> Reply {
    r.unwrap_or_else(|e| Reply::error(code(&e), e.to_string()))
}

/// The one place a node error becomes a CNI code.
pub fn code(e: &NodeError) -> CniCode {
    match e {
        // The change is not durable: the runtime retries the request.
        NodeError::Persist(_) | NodeError::ClaimNotRecorded { .. } => CniCode::Io,
        NodeError::Pool(_)
        | NodeError::Pool6(_)
        | NodeError::Datastore(_)
        | NodeError::VpcExhausted(_)
        | NodeError::ClaimRacesLost { .. } => CniCode::TryAgainLater,
        // An ADD that found no address and could not claim one: transient whatever the
        // reason (the runtime retries; status says why).
        NodeError::NoFreeAddress(_) => CniCode::TryAgainLater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bytes_get_a_decode_error() {
        for bad in [
            &b"\xff\xfe\n"[..],
            b"{\"v\":1,\"op\":\"status\xff\"}\n",
            b"",
            b"{",
        ] {
            match decode(bad).map_err(|r| *r) {
                Err(Reply::Error { code, .. }) => assert_eq!(code, CniCode::Decode.as_u32()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match decode(b"{\"v\":99,\"op\":\"status\"}\n").map_err(|r| *r) {
            Err(Reply::Error { code, .. }) => assert_eq!(code, CniCode::ProtocolVersion.as_u32()),
            other => panic!("{other:?}"),
        }
        assert!(decode(b"{\"v\":1,\"op\":\"status\"}\n").is_ok());
    }
}
