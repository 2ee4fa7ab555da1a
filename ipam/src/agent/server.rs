//! The unix socket the plugin talks to: one request line, one reply line per connection.
//! Mode 0660; only root peers (SO_PEERCRED) may change anything or read an allocation, others
//! may read status without container IDs.
//!
//! Invariant (issue 9, item 9): **pod metadata (container IDs, pod names) is for root only**:
//! `get` returns an allocation with its metadata, so like the per-pod status list it is
//! refused to non-root peers (code 101).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::datastore::Datastore;
use crate::agent::metrics::{self, Op};
use crate::agent::node::Node;
use crate::api::{codes, Envelope, Reply, Request, PROTOCOL_VERSION};

/// Requests are small; anything larger is not ours.
const MAX_REQUEST: u64 = 1 << 20;

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

pub async fn serve<D: Datastore>(listener: UnixListener, node: Arc<Node<D>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &node).await {
                        eprintln!("vpcnetd: connection: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("vpcnetd: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle<D: Datastore>(stream: UnixStream, node: &Node<D>) -> std::io::Result<()> {
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Envelope>(&line) {
        Err(e) => {
            // Tell an old or new client which version we speak even if the body is foreign.
            let v = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("v").and_then(serde_json::Value::as_u64));
            match v {
                Some(v) if v != u64::from(PROTOCOL_VERSION) => version_error(v),
                _ => Reply::error(codes::DECODE, format!("undecodable request: {e}")),
            }
        }
        Ok(env) if env.v != PROTOCOL_VERSION => version_error(u64::from(env.v)),
        Ok(env) => dispatch(env.request, root, node).await,
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn version_error(v: u64) -> Reply {
    Reply::error(
        codes::PROTOCOL_VERSION,
        format!("protocol version {v} not supported; this vpcnetd speaks {PROTOCOL_VERSION}"),
    )
}

async fn dispatch<D: Datastore>(req: Request, root: bool, node: &Node<D>) -> Reply {
    if !root {
        match req {
            Request::Status { .. } => {}
            Request::Get { .. } => {
                return Reply::error(
                    codes::PERMISSION_DENIED,
                    "only root may read allocations (they carry pod metadata)",
                )
            }
            _ => {
                return Reply::error(
                    codes::PERMISSION_DENIED,
                    "only root may assign or release addresses",
                )
            }
        }
    }
    let m = metrics::get();
    match req {
        Request::Assign { key, meta } => m.cni_reply(Op::Add, node.assign(key, meta).await),
        Request::Release { key } => m.cni_reply(Op::Del, node.release(&key).await),
        Request::Get { key } => node.get(&key),
        Request::Gc { network, valid } => m.cni_reply(Op::Gc, node.gc(&network, &valid).await),
        Request::Status { allocations } => {
            Reply::Status(Box::new(node.status(root && allocations)))
        }
    }
}
