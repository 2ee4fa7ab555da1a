//! The observability endpoint on `--metrics-addr` (default `127.0.0.1:9961`): a deliberately
//! tiny HTTP/1.1 server (GET and HEAD only, one request per connection, `Connection: close`)
//! on tokio's `TcpListener`, so the agent carries no HTTP stack for four read-only pages.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | OpenMetrics text (see [`crate::obs::metrics`]) |
//! | `/healthz` | 200 `ok` whenever the agent's event loop runs (it serves this page) |
//! | `/readyz` | 200 when start-up reconcile is done **and** an ADD can get an address; else 503 with the reason |
//! | `/pool` | the pool as JSON: `vpcnetd status --json` without `allocations` (no container IDs over HTTP) |
//!
//! Anything else: 404; other methods: 405; a malformed request line: 400; headers over
//! [`MAX_REQUEST`] bytes: 431.
//!
//! Invariant (issue 9 item 7): a probe is answered whatever other clients do. The accept
//! loop never waits for anything but the next connection; every connection is accepted at
//! once and then bounded: [`READ_TIMEOUT`] for the whole request head (408 after), at most
//! [`MAX_REQUEST`] bytes of it, [`CONNECTION_TIMEOUT`] for the connection as a whole
//! (writing the answer included), and [`MAX_CONNECTIONS`] open at once. When that many are
//! open, the newcomer is not turned away: the connection that has waited longest for its
//! request head is ended (503) to make room, so a client that sends its request at once — a
//! probe, a scraper — is served however many slow or idle ones (slow-loris) hang on. Only
//! when every open connection has sent its request is a newcomer closed at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::datastore::Datastore;
use crate::node::Node;
use crate::obs::metrics;

/// Request line and headers together; a GET has no body.
pub const MAX_REQUEST: usize = 8 * 1024;
/// For the whole request head, from accept. Probes and scrapers send theirs at once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// For a whole connection, from accept (reading, answering, writing).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once (see the module doc for what happens at the cap). Each costs a
/// small task and a descriptor; far more than probes and scrapers ever open, far below the
/// agent's descriptor limit.
pub const MAX_CONNECTIONS: usize = 256;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// `""` or `off`: no endpoint; otherwise `host:port`.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!(
            "--metrics-addr {s:?} is not host:port (e.g. 127.0.0.1:9961, 0.0.0.0:9961) or \"off\""
        )
    })
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve<D: Datastore>(listener: TcpListener, node: Arc<Node<D>>) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Accept first, then decide; the loop never waits for a slot.
                let Some((slot, evicted)) = admit(&conns) else {
                    drop(stream);
                    continue;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    // A client hanging up early, too slow, or pushed out is not the agent's
                    // problem: say nothing.
                    let served = handle(stream, &node, &slot, &evicted);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
                });
            }
            Err(e) => {
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The connections open now, and those still waiting for their request head, oldest first
/// (each with the [`Notify`] that ends its wait).
#[derive(Debug, Default)]
struct Conns {
    open: usize,
    next_id: u64,
    waiting: VecDeque<(u64, Arc<Notify>)>,
}

/// One admitted connection; gives its place back when its task ends, however it ends.
#[derive(Debug)]
struct Slot {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request head is in: this connection can no longer be pushed out.
    fn head_done(&self) {
        self.lock().waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let id = self.id;
        let mut c = self.lock();
        c.open = c.open.saturating_sub(1);
        c.waiting.retain(|(i, _)| *i != id);
    }
}

/// Admits a new connection. At [`MAX_CONNECTIONS`] the one waiting longest for its request
/// head is told to end (it gives its place back within a moment); `None` when every open
/// connection has sent its request already.
fn admit(conns: &Arc<Mutex<Conns>>) -> Option<(Slot, Arc<Notify>)> {
    let mut c = conns.lock().unwrap_or_else(PoisonError::into_inner);
    if c.open >= MAX_CONNECTIONS {
        let (_, oldest) = c.waiting.pop_front()?;
        // Stored if that task is not waiting yet: the eviction is never lost.
        oldest.notify_one();
    }
    c.open += 1;
    c.next_id += 1;
    let id = c.next_id;
    let evicted = Arc::new(Notify::new());
    c.waiting.push_back((id, evicted.clone()));
    drop(c);
    Some((
        Slot {
            conns: conns.clone(),
            id,
        },
        evicted,
    ))
}

/// A response before it is written.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Extra header lines (without CRLF).
    pub headers: Vec<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What reading a request gave.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Method and path (query stripped).
    Request {
        method: String,
        path: String,
    },
    Bad(Response),
}

/// Parses the request head (everything up to the blank line).
fn parse_head(head: &[u8]) -> Head {
    let bad = |msg: &str| Head::Bad(Response::text(400, format!("{msg}\n")));
    let Ok(text) = std::str::from_utf8(head) else {
        return bad("request is not UTF-8");
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return bad("only HTTP/1.x is spoken here");
    }
    if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        return bad("malformed method");
    }
    if !target.starts_with('/') {
        return bad("request target must be a path");
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Head::Request {
        method: method.to_string(),
        path: path.to_string(),
    }
}

/// Reads until the end of the head; `Err(response)` when the request was cut short, too
/// large or too slow.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, Response>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Err(Response::text(400, "incomplete request\n")));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find_head_end(&buf) {
                buf.truncate(end);
                return Ok(Ok(std::mem::take(&mut buf)));
            }
            if buf.len() > MAX_REQUEST {
                return Ok(Err(Response::text(431, "request too large\n")));
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Ok(Err(Response::text(408, "request timeout\n"))),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn handle<D: Datastore>(
    mut stream: TcpStream,
    node: &Node<D>,
    slot: &Slot,
    evicted: &Notify,
) -> std::io::Result<()> {
    let head = tokio::select! {
        head = read_head(&mut stream) => head?,
        () = evicted.notified() => Err(Response::text(503, "too many connections\n")),
    };
    slot.head_done();
    let (resp, head_only) = match head {
        Err(resp) => (resp, false),
        Ok(head) => match parse_head(&head) {
            Head::Bad(resp) => (resp, false),
            Head::Request { method, path } => match method.as_str() {
                "GET" => (route(&path, node), false),
                "HEAD" => (route(&path, node), true),
                _ => {
                    let mut r = Response::text(405, "only GET and HEAD\n");
                    r.headers.push("Allow: GET, HEAD");
                    (r, false)
                }
            },
        },
    };
    stream.write_all(&resp.to_bytes(head_only)).await?;
    stream.shutdown().await
}

fn route<D: Datastore>(path: &str, node: &Node<D>) -> Response {
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let s = node.status(false);
            match not_ready_reason(s.ready, s.can_assign, &s.degraded) {
                None => Response::text(200, "ready\n"),
                Some(why) => Response::text(503, format!("{why}\n")),
            }
        }
        "/metrics" => {
            let s = node.status(false);
            let areas: Vec<(&'static str, bool)> = {
                let h = node.health();
                crate::node::Area::ALL
                    .iter()
                    .map(|a| (a.as_str(), h.degraded.contains_key(a)))
                    .collect()
            };
            Response {
                status: 200,
                content_type: OPENMETRICS,
                body: metrics::get().encode(&s, &areas),
                headers: Vec::new(),
            }
        }
        "/pool" => {
            let s = node.status(false);
            let mut v = match serde_json::to_value(&s) {
                Ok(v) => v,
                Err(e) => return Response::text(500, format!("encoding the pool: {e}\n")),
            };
            if let Some(o) = v.as_object_mut() {
                o.remove("allocations");
            }
            Response {
                status: 200,
                content_type: JSON,
                body: format!("{v}\n"),
                headers: Vec::new(),
            }
        }
        _ => Response::text(404, "not found: try /metrics, /healthz, /readyz or /pool\n"),
    }
}

/// Why `/readyz` says 503, or `None` when ready.
pub fn not_ready_reason(ready: bool, can_assign: bool, degraded: &[String]) -> Option<String> {
    if !ready {
        return Some("starting: start-up reconcile not finished".into());
    }
    if !can_assign {
        return Some(format!(
            "cannot assign addresses: {}",
            if degraded.is_empty() {
                "pool empty".to_string()
            } else {
                degraded.join("; ")
            }
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(m: &str, p: &str) -> Head {
        Head::Request {
            method: m.into(),
            path: p.into(),
        }
    }

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            req("GET", "/metrics")
        );
        assert_eq!(parse_head(b"HEAD /pool?x=1 HTTP/1.0"), req("HEAD", "/pool"));
        for bad in [
            &b"GET /metrics"[..],
            b"GET  /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"get /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(parse_head(bad), Head::Bad(Response { status: 400, .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn full_house_pushes_out_the_oldest_waiting_connection() {
        let conns = Arc::new(Mutex::new(Conns::default()));
        let mut slots: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| admit(&conns).unwrap())
            .collect();
        // Full: the newcomer is admitted and the oldest waiting one (id 1) is evicted.
        let (newcomer, _) = admit(&conns).unwrap();
        assert_eq!(conns.lock().unwrap().waiting.front().map(|w| w.0), Some(2));
        // The evicted task ends: its place is given back.
        drop(slots.remove(0));
        assert_eq!(conns.lock().unwrap().open, MAX_CONNECTIONS);
        // Everyone has sent a request: nobody can be pushed out, the newcomer is closed.
        for s in &slots {
            s.0.head_done();
        }
        newcomer.head_done();
        assert!(admit(&conns).is_none());
        drop(slots);
        assert_eq!(conns.lock().unwrap().open, 1);
        assert!(admit(&conns).is_some());
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn addr_parsing() {
        assert_eq!(parse_addr(""), Ok(None));
        assert_eq!(parse_addr("off"), Ok(None));
        assert_eq!(
            parse_addr("127.0.0.1:9961"),
            Ok(Some("127.0.0.1:9961".parse().unwrap()))
        );
        assert!(parse_addr("localhost")
            .unwrap_err()
            .contains("--metrics-addr"));
    }

    #[test]
    fn readiness_reasons() {
        assert_eq!(not_ready_reason(true, true, &[]), None);
        assert!(not_ready_reason(false, true, &[])
            .unwrap()
            .contains("starting"));
        assert!(
            not_ready_reason(true, false, &["pool: VPC exhausted".into()])
                .unwrap()
                .contains("VPC exhausted")
        );
    }

    #[test]
    fn response_bytes() {
        let r = Response::text(404, "nope\n");
        let s = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(s.contains("Content-Length: 5\r\n"));
        assert!(s.ends_with("\r\n\r\nnope\n"));
        let h = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(h.ends_with("\r\n\r\n"));
    }
}
