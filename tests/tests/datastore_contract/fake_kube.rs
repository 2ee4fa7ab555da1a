//! An in-memory fake of the few Kubernetes API server endpoints the `kubernetes` datastore
//! uses, as a tower service a `kube::Client` runs over (no HTTP, no TLS). One
//! [`FakeApiServer`] is shared by every datastore instance ("node") of a test, so they race
//! on the same state, as agents do on one API server.
//!
//! Supported:
//! - `PrefixClaim` objects (cluster-scoped, `/apis/vpcnet.io/v1alpha1/prefixclaims`):
//!   `POST` (create; the name is unique: `409 AlreadyExists` if taken; the server sets
//!   `uid`, `resourceVersion`, `creationTimestamp`), `GET` one (`404 NotFound`), `LIST`
//!   (with the list's `resourceVersion`), `DELETE` with `preconditions {uid,
//!   resourceVersion}` (mismatch: `409 Conflict`; missing: `404 NotFound`).
//! - `WATCH` (`?watch=true&resourceVersion=N`): replays every change after `N` (the whole
//!   history is kept until [`FakeApiServer::compact`], after which a watch from an older
//!   resourceVersion is answered `410 Gone`), then streams new `ADDED` / `DELETED` events as
//!   newline-delimited JSON, for as long as the client holds the request.
//! - `GET /api/v1/nodes/<name>`: every node exists, with a uid derived from its name.
//! - An outage: [`FakeApiServer::stop`] refuses every request (a connection error, as from
//!   a server that is down) and ends the open watches; [`FakeApiServer::start`] serves
//!   again with the same data.
//!
//! - NetworkPolicy's inputs, read-only over the API (`LIST` and `WATCH` of all namespaces):
//!   `/api/v1/pods`, `/api/v1/namespaces`, `/apis/networking.k8s.io/v1/networkpolicies`.
//!   The test changes them directly ([`FakeApiServer::put`] = `ADDED`/`MODIFIED`,
//!   [`FakeApiServer::remove`] = `DELETED`), as controllers and users would.
//! - [`serve_http`]: the same server over plain HTTP/1.1 on a TCP listener, for a real
//!   `vpcnetd` process (`--kubeconfig` pointing at `http://<addr>`).
//!
//! Not supported: updates of claims (`PUT`/`PATCH`), bookmarks, label/field selectors,
//! `timeoutSeconds`, and garbage collection (deleting a Node does nothing to the claims it
//! owns).
//!
//! Shared by several test files, each using part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// The URL the datastores are told they talk to (it appears in their error messages).
pub const URL: &str = "https://fake-apiserver.test:6443";
const CLAIMS: &str = "/apis/vpcnet.io/v1alpha1/prefixclaims";
const NODES: &str = "/api/v1/nodes/";
/// The read-only kinds NetworkPolicy watches: (kind, collection path).
pub const POLICY_KINDS: [(&str, &str); 3] = [
    ("Pod", "/api/v1/pods"),
    ("Namespace", "/api/v1/namespaces"),
    (
        "NetworkPolicy",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ),
];

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
enum Event {
    /// One watch event line (JSON + `\n`) of a collection (its path) at this resourceVersion.
    Line(u64, &'static str, Bytes),
    /// The server stops: open watches end.
    Down,
}

#[derive(Debug, Default)]
struct State {
    /// The last resourceVersion handed out.
    rv: u64,
    next_uid: u64,
    /// name → object.
    claims: BTreeMap<String, Value>,
    /// (collection path, namespace, name) → object, of [`POLICY_KINDS`].
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Every change (collection path, line), oldest first, for watches that resume from a
    /// resourceVersion.
    history: Vec<(u64, &'static str, Bytes)>,
    /// Watches from an older resourceVersion are answered `410 Gone` ([`FakeApiServer::compact`]).
    compacted: u64,
    /// LISTs of the claims served.
    lists: u64,
    /// LISTs and WATCHes of [`POLICY_KINDS`] served.
    policy_requests: u64,
}

#[derive(Debug)]
pub struct FakeApiServer {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    down: AtomicBool,
}

fn json_response(status: u16, body: &Value) -> Response<RespBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON"));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed_unsync())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn not_found(name: &str) -> Response<RespBody> {
    status(
        404,
        "NotFound",
        &format!("prefixclaims.vpcnet.io \"{name}\" not found"),
    )
}

fn node_uid(name: &str) -> String {
    format!("node-uid-{name}")
}

impl FakeApiServer {
    pub fn new() -> Arc<FakeApiServer> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(FakeApiServer {
            state: Mutex::new(State::default()),
            events,
            down: AtomicBool::new(false),
        })
    }

    /// A client of this server (one per datastore instance, as each agent has its own).
    pub fn client(self: &Arc<Self>) -> kube::Client {
        let server = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| server.clone().handle(req));
        kube::Client::new(svc, "default")
    }

    /// From now on every request is refused and open watches end.
    pub fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        let _ = self.events.send(Event::Down);
    }

    /// Compacts the history (as if a change the watches never saw was compacted away): a
    /// watch from any resourceVersion handed out so far is answered `410 Gone` (the client
    /// must re-list); open watches end (they resume, and get the 410).
    pub fn compact(&self) {
        let mut st = self.state.lock().expect("state");
        st.rv += 1;
        st.compacted = st.rv;
        st.history.clear();
        let _ = self.events.send(Event::Down);
    }

    /// How many LISTs and WATCHes of Pods, Namespaces or NetworkPolicies were served.
    pub fn policy_requests(&self) -> u64 {
        self.state.lock().expect("state").policy_requests
    }

    /// How many LISTs of the claims were served.
    pub fn lists(&self) -> u64 {
        self.state.lock().expect("state").lists
    }

    /// Serves again, with the same data.
    pub fn start(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Every claim of `node` is owned by its Node (the ownerReference the garbage collector
    /// would follow), and there is at least one.
    pub fn owned_by_node(&self, node: &str) -> bool {
        let st = self.state.lock().expect("state");
        let mine: Vec<&Value> = st
            .claims
            .values()
            .filter(|o| o["spec"]["node"] == node)
            .collect();
        !mine.is_empty()
            && mine.iter().all(|o| {
                let r = &o["metadata"]["ownerReferences"][0];
                r["kind"] == "Node" && r["name"] == node && r["uid"] == node_uid(node).as_str()
            })
    }

    async fn handle(self: Arc<Self>, req: Request<Body>) -> Result<Response<RespBody>, io::Error> {
        let refused = || {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused (the fake API server is stopped)",
            )
        };
        if self.down.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.map_err(io::Error::other)?;
        if self.down.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(io::Error::other)?
        };
        let query: BTreeMap<&str, &str> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        let path = parts.uri.path();
        let method = &parts.method;
        let resp = if let Some(name) = path.strip_prefix(NODES) {
            match *method {
                Method::GET => json_response(
                    200,
                    &json!({
                        "kind": "Node", "apiVersion": "v1",
                        "metadata": {"name": name, "uid": node_uid(name), "resourceVersion": "1"},
                    }),
                ),
                _ => status(405, "MethodNotAllowed", "nodes: only GET"),
            }
        } else if let Some((_, coll)) = POLICY_KINDS.iter().find(|(_, c)| *c == path) {
            self.state.lock().expect("state").policy_requests += 1;
            match *method {
                Method::GET if query.get("watch") == Some(&"true") => {
                    let from = query
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    self.watch(coll, from)
                }
                Method::GET => self.list_objects(coll),
                _ => status(405, "MethodNotAllowed", "read-only here"),
            }
        } else if path == CLAIMS {
            match *method {
                Method::GET if query.get("watch") == Some(&"true") => {
                    let from = query
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    self.watch(CLAIMS, from)
                }
                Method::GET => self.list(),
                Method::POST => self.create(body),
                _ => status(405, "MethodNotAllowed", "prefixclaims: GET or POST"),
            }
        } else if let Some(name) = path.strip_prefix(CLAIMS).and_then(|p| p.strip_prefix('/')) {
            match *method {
                Method::GET => self.get(name),
                Method::DELETE => self.delete(name, &body),
                _ => status(
                    405,
                    "MethodNotAllowed",
                    "prefixclaims/<name>: GET or DELETE",
                ),
            }
        } else {
            status(404, "NotFound", &format!("the fake serves no {path}"))
        };
        Ok(resp)
    }

    /// Records a change (under the state lock, so watchers see changes in order).
    fn record(&self, st: &mut State, coll: &'static str, kind: &str, obj: &Value) {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("JSON");
        line.push(b'\n');
        let line = Bytes::from(line);
        st.history.push((st.rv, coll, line.clone()));
        let _ = self.events.send(Event::Line(st.rv, coll, line));
    }

    /// The collection path of `kind` (`Pod`, `Namespace`, `NetworkPolicy`).
    fn coll(kind: &str) -> &'static str {
        POLICY_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("the fake serves no kind {kind}"))
    }

    /// Creates or replaces an object of [`POLICY_KINDS`] (`ADDED` / `MODIFIED`): `obj` needs
    /// `metadata.name` (and `metadata.namespace` unless a Namespace); kind and apiVersion are
    /// filled in.
    pub fn put(&self, kind: &str, mut obj: Value) {
        let coll = Self::coll(kind);
        let api_version = if kind == "NetworkPolicy" {
            "networking.k8s.io/v1"
        } else {
            "v1"
        };
        obj["kind"] = json!(kind);
        obj["apiVersion"] = json!(api_version);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let mut st = self.state.lock().expect("state");
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = (coll, ns, name);
        let ev = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, obj.clone());
        self.record(&mut st, coll, ev, &obj);
    }

    /// Deletes an object of [`POLICY_KINDS`] (`DELETED`); `namespace` is "" for a Namespace.
    /// Returns whether it existed.
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let coll = Self::coll(kind);
        let mut st = self.state.lock().expect("state");
        let Some(mut obj) = st
            .objects
            .remove(&(coll, namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record(&mut st, coll, "DELETED", &obj);
        true
    }

    fn list_objects(&self, coll: &'static str) -> Response<RespBody> {
        let st = self.state.lock().expect("state");
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((c, _, _), _)| *c == coll)
            .map(|(_, o)| o)
            .collect();
        json_response(
            200,
            &json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn create(&self, mut obj: Value) -> Response<RespBody> {
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
            return status(422, "Invalid", "metadata.name: Required value");
        };
        let mut st = self.state.lock().expect("state");
        if st.claims.contains_key(&name) {
            return json_response(
                409,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "AlreadyExists", "code": 409,
                    "message": format!("prefixclaims.vpcnet.io \"{name}\" already exists"),
                    "details": {"name": name, "group": "vpcnet.io", "kind": "prefixclaims"},
                }),
            );
        }
        st.rv += 1;
        st.next_uid += 1;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(format!("claim-uid-{}", st.next_uid));
        meta["resourceVersion"] = json!(st.rv.to_string());
        // Fixed: the contract does not look at claimedAt.
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        st.claims.insert(name, obj.clone());
        self.record(&mut st, CLAIMS, "ADDED", &obj);
        json_response(201, &obj)
    }

    fn get(&self, name: &str) -> Response<RespBody> {
        let st = self.state.lock().expect("state");
        match st.claims.get(name) {
            Some(o) => json_response(200, o),
            None => not_found(name),
        }
    }

    fn list(&self) -> Response<RespBody> {
        let mut st = self.state.lock().expect("state");
        st.lists += 1;
        let items: Vec<&Value> = st.claims.values().collect();
        json_response(
            200,
            &json!({
                "apiVersion": "vpcnet.io/v1alpha1", "kind": "PrefixClaimList",
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn delete(&self, name: &str, opts: &Value) -> Response<RespBody> {
        let mut st = self.state.lock().expect("state");
        let Some(obj) = st.claims.get(name) else {
            return not_found(name);
        };
        let pre = &opts["preconditions"];
        for (field, want) in [
            ("uid", &pre["uid"]),
            ("resourceVersion", &pre["resourceVersion"]),
        ] {
            let have = &obj["metadata"][field];
            if let Some(want) = want.as_str() {
                if have.as_str() != Some(want) {
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Precondition failed: {field} in precondition: {want}, \
                             {field} in object meta: {have}"
                        ),
                    );
                }
            }
        }
        let mut obj = st.claims.remove(name).expect("present");
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record(&mut st, CLAIMS, "DELETED", &obj);
        json_response(200, &obj)
    }

    /// Every change of collection `coll` after `from`, then the new ones as they happen,
    /// until the server stops or the client drops the stream.
    fn watch(&self, coll: &'static str, from: u64) -> Response<RespBody> {
        let (backlog, rx) = {
            let st = self.state.lock().expect("state");
            if from < st.compacted {
                return status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", st.compacted + 1),
                );
            }
            let backlog: Vec<Bytes> = st
                .history
                .iter()
                .filter(|(rv, c, _)| *rv > from && *c == coll)
                .map(|(_, _, line)| line.clone())
                .collect();
            // Subscribed under the lock: nothing falls between the backlog and the stream.
            (backlog, self.events.subscribe())
        };
        let live = futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(Event::Line(rv, c, line)) if rv > from && c == coll => {
                        return Some((line, rx))
                    }
                    Ok(Event::Line(..)) => continue,
                    // Stopped, or lagged behind: end the stream (the client resumes).
                    Ok(Event::Down) | Err(_) => return None,
                }
            }
        });
        let frames = futures::stream::iter(backlog)
            .chain(live)
            .map(|line| Ok::<_, Infallible>(Frame::data(line)));
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .expect("response")
    }
}

/// [`serve_http`] on a listener bound to `addr` (port 0) inside network namespace `ns`, in a
/// thread with its own runtime that lives until the process ends; returns the port. With
/// [`write_kubeconfig`], what a real `vpcnetd --kubeconfig` in a lab needs.
#[allow(dead_code)] // not every file that includes this module runs a real vpcnetd
pub fn serve_http_in(ns: &str, addr: std::net::IpAddr, server: Arc<FakeApiServer>) -> u16 {
    let listener = vpcnet_tests::in_netns(Some(ns), || std::net::TcpListener::bind((addr, 0)))
        .expect("binding the fake API server in the lab");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(serve_http(server, listener));
    });
    port
}

/// Writes a kubeconfig for the server at `http://addr:port` (any token) to `path`; returns
/// the path as text, for `--kubeconfig`.
#[allow(dead_code)] // as serve_http_in
pub fn write_kubeconfig(path: &std::path::Path, addr: std::net::IpAddr, port: u16) -> String {
    let server = std::net::SocketAddr::new(addr, port);
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{server}\n\
             users:\n- name: u\n  user:\n    token: t\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n"
        ),
    )
    .expect("kubeconfig");
    path.display().to_string()
}

/// Serves `server` over plain HTTP/1.1 on `listener` (already bound: a test binds it inside
/// a lab's namespace so the lab's `vpcnetd` reaches it), one request per connection
/// (`Connection: close`), responses chunked so watches stream. Runs until its runtime stops.
/// While the server is [stopped](FakeApiServer::stop) connections are closed unanswered.
pub async fn serve_http(server: Arc<FakeApiServer>, listener: std::net::TcpListener) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((sock, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(serve_conn(server.clone(), sock));
    }
}

async fn serve_conn(server: Arc<FakeApiServer>, mut sock: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return;
    };
    let (method, target) = (method.to_string(), target.to_string());
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let Ok(req) = Request::builder()
        .method(method.as_str())
        .uri(target)
        .body(Body::from(body))
    else {
        return;
    };
    let Ok(resp) = server.handle(req).await else {
        return; // stopped: as if nobody answered
    };
    let code = resp.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        code.as_u16(),
        code.canonical_reason().unwrap_or("")
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut body = resp.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let _ = sock.shutdown().await;
}
