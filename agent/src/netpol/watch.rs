//! The list+watch of one kind of object (Pods, Namespaces or NetworkPolicies, all
//! namespaces) that feeds the policy [`View`](super::view::View): LIST (sent on as
//! [`Event::Listed`]), WATCH from the list's resourceVersion (each ADDED/MODIFIED/DELETED
//! sent on as it arrives), resume from the last resourceVersion seen (events and bookmarks)
//! when the stream ends, re-list when the server answers `410 Gone`, back off while the API
//! server is away. Ends when the receiver is dropped.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::view::{Event, Kind};
use crate::datastore::common::{self, BACKOFF_MAX};
use crate::datastore::kubernetes::OP_TIMEOUT;

/// The watches failing now, by kind (for `vpcnetd status` and the degraded area).
#[derive(Debug, Default)]
pub struct Health(std::sync::Mutex<std::collections::BTreeMap<Kind, String>>);

impl Health {
    fn set(&self, kind: Kind, err: Option<String>) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match err {
            Some(e) => {
                m.insert(kind, e);
            }
            None => {
                m.remove(&kind);
            }
        }
    }

    /// `kind: error` of each failing watch.
    pub fn errors(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, e)| format!("{}: {e}", k.name()))
            .collect()
    }
}

/// A watch request with no answer this long was taken by the server (a refusal comes at once).
const ACCEPTED_AFTER: Duration = Duration::from_secs(1);

/// Server-side timeout of one watch request (the server ends the stream; we resume).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// How one watch request ended.
enum WatchEnd {
    /// The server closed the stream (its timeout): resume from the last resourceVersion.
    Closed,
    /// 410 Gone: the resourceVersion is too old; re-list.
    Gone,
    /// Anything else: back off, then resume.
    Failed(String),
    /// Nobody listens any more.
    Stopped,
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 410)
}

/// One watch request from `rv`; `rv` follows the events and bookmarks. Returns how it ended
/// and whether anything arrived.
///
/// `accepted` is called once the server has evidently taken the request: an item arrived,
/// or none within [`ACCEPTED_AFTER`] (a refused watch answers at once), so a quiet watch
/// after an outage counts as working again.
async fn watch_once<K, U>(
    api: &Api<K>,
    rv: &mut String,
    tx: &mpsc::UnboundedSender<U>,
    wrap: fn(Event<K>) -> U,
    accepted: impl Fn(),
) -> (WatchEnd, bool)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS); // bookmarks on by default
    let stream = match api.watch(&wp, rv).await {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return (WatchEnd::Gone, false),
        Err(e) => return (WatchEnd::Failed(e.to_string()), false),
    };
    let mut stream = std::pin::pin!(stream);
    let mut progressed = false;
    let first = match tokio::time::timeout(ACCEPTED_AFTER, stream.next()).await {
        Ok(item) => item,
        Err(_) => {
            accepted();
            stream.next().await
        }
    };
    let mut next = first;
    while let Some(ev) = next.take() {
        let (event, version) = match ev {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                let v = o.meta().resource_version.clone();
                (Some(Event::Put(o)), v)
            }
            Ok(WatchEvent::Deleted(o)) => {
                let v = o.meta().resource_version.clone();
                (Some(Event::Deleted(o)), v)
            }
            Ok(WatchEvent::Bookmark(b)) => (None, Some(b.metadata.resource_version)),
            Ok(WatchEvent::Error(e)) if e.code == 410 => return (WatchEnd::Gone, progressed),
            // A non-2xx answer to the watch request itself arrives as the stream's first item.
            Err(e) if is_gone(&e) => return (WatchEnd::Gone, progressed),
            Ok(WatchEvent::Error(e)) => {
                return (WatchEnd::Failed(format!("watch error: {e}")), progressed)
            }
            Err(e) => return (WatchEnd::Failed(e.to_string()), progressed),
        };
        if !progressed {
            accepted();
        }
        progressed = true;
        if let Some(event) = event {
            if tx.send(wrap(event)).is_err() {
                return (WatchEnd::Stopped, progressed);
            }
        }
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            *rv = v;
        }
        next = stream.next().await;
    }
    (WatchEnd::Closed, progressed)
}

/// Background: LIST, then WATCH from the list's resourceVersion for as long as it lasts;
/// resume after the stream ends, re-list on 410 Gone, back off while the server is away.
/// `server` names the API server in the log; `health` records whether it is failing now.
/// Returns when `tx`'s receiver is gone.
pub async fn run<K, U>(
    api: Api<K>,
    kind: Kind,
    server: String,
    tx: mpsc::UnboundedSender<U>,
    wrap: fn(Event<K>) -> U,
    health: std::sync::Arc<Health>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let what = kind.name();
    let mut backoff = common::backoff(BACKOFF_MAX);
    let mut rv: Option<String> = None;
    let mut last_err: Option<String> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let mut failure = None;
        let mut version = match rv.take() {
            Some(v) => v,
            None => {
                match tokio::time::timeout(OP_TIMEOUT, api.list(&ListParams::default())).await {
                    Ok(Ok(list)) => match list.metadata.resource_version {
                        Some(v) if !v.is_empty() => {
                            if tx.send(wrap(Event::Listed(list.items))).is_err() {
                                return;
                            }
                            health.set(kind, None);
                            v
                        }
                        _ => {
                            failure = Some("LIST returned no resourceVersion".to_string());
                            String::new()
                        }
                    },
                    Ok(Err(e)) => {
                        failure = Some(format!("LIST: {e}"));
                        String::new()
                    }
                    Err(_) => {
                        failure = Some(format!("LIST: no answer within {OP_TIMEOUT:?}"));
                        String::new()
                    }
                }
            }
        };
        let end = match failure {
            Some(msg) => WatchEnd::Failed(msg),
            None => {
                if last_err.take().is_some() {
                    tracing::info!(kind = what, "network policy: watching {what} again");
                }
                let started = Instant::now();
                let (end, progressed) =
                    watch_once(&api, &mut version, &tx, wrap, || health.set(kind, None)).await;
                if progressed {
                    backoff.reset();
                    health.set(kind, None);
                }
                if matches!(end, WatchEnd::Closed) {
                    rv = Some(version.clone());
                    // A server that ends every watch at once must not make this spin.
                    if !progressed && started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                } else if matches!(end, WatchEnd::Failed(_)) {
                    rv = Some(version.clone());
                }
                end
            }
        };
        match end {
            WatchEnd::Closed => {}
            WatchEnd::Stopped => return,
            WatchEnd::Gone => {
                tracing::info!(
                    kind = what,
                    resource_version = %version,
                    "network policy: resourceVersion too old (410 Gone): re-listing {what}"
                );
            }
            WatchEnd::Failed(msg) => {
                let msg = format!("watching {what} at {server}: {msg}");
                health.set(kind, Some(msg.clone()));
                let delay = backoff.next_delay();
                if last_err.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, retry_in = ?delay, "network policy: watch failed; retrying with back-off");
                    last_err = Some(msg);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Pod;
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock::{self, Handle, SendResponse};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;
    const PODS: &str = "/api/v1/pods";

    async fn expect(h: &mut ApiHandle, watch_from: Option<&str>) -> SendResponse<Response<Body>> {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
            .await
            .expect("no request within 5 s")
            .expect("mock closed");
        assert_eq!(req.method(), "GET");
        assert_eq!(req.uri().path(), PODS);
        let q = req.uri().query().unwrap_or("").to_string();
        match watch_from {
            Some(rv) => {
                assert!(q.contains("watch=true"), "{q}");
                assert!(q.contains(&format!("resourceVersion={rv}")), "{q}");
            }
            None => assert!(!q.contains("watch="), "{q}"),
        }
        send
    }

    fn respond(send: SendResponse<Response<Body>>, status: u16, body: String) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(body.into_bytes()))
                .unwrap(),
        );
    }

    fn pod(name: &str, rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"namespace": "x", "name": name, "resourceVersion": rv}})
    }

    fn list(rv: &str, items: &[Value]) -> String {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv},
               "items": items})
        .to_string()
    }

    fn events(evs: &[Value]) -> String {
        evs.iter().map(|e| format!("{e}\n")).collect()
    }

    fn names(ev: &Event<Pod>) -> (String, Vec<String>) {
        let n = |p: &Pod| p.metadata.name.clone().unwrap();
        match ev {
            Event::Put(p) => ("put".into(), vec![n(p)]),
            Event::Deleted(p) => ("deleted".into(), vec![n(p)]),
            Event::Listed(ps) => ("listed".into(), ps.iter().map(n).collect()),
        }
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<Event<Pod>>) -> (String, Vec<String>) {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no event within 5 s")
            .expect("watch ended");
        names(&ev)
    }

    #[tokio::test]
    async fn lists_watches_resumes_and_relists_on_410() {
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::all(kube::Client::new(svc, "default"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            api,
            Kind::Pods,
            "test".into(),
            tx,
            |e| e,
            std::sync::Arc::default(),
        ));
        respond(
            expect(&mut h, None).await,
            200,
            list("10", &[pod("a", "9")]),
        );
        assert_eq!(recv(&mut rx).await, ("listed".into(), vec!["a".into()]));
        respond(
            expect(&mut h, Some("10")).await,
            200,
            events(&[
                json!({"type": "ADDED", "object": pod("b", "11")}),
                json!({"type": "MODIFIED", "object": pod("a", "12")}),
                json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"resourceVersion": "15"}}}),
            ]),
        );
        assert_eq!(recv(&mut rx).await, ("put".into(), vec!["b".into()]));
        assert_eq!(recv(&mut rx).await, ("put".into(), vec!["a".into()]));
        // The stream ended: resumed from the bookmark, no re-list.
        respond(
            expect(&mut h, Some("15")).await,
            200,
            events(&[json!({"type": "DELETED", "object": pod("b", "16")})]),
        );
        assert_eq!(recv(&mut rx).await, ("deleted".into(), vec!["b".into()]));
        // Compacted away: 410 as an ERROR event -> a new LIST replaces everything.
        respond(
            expect(&mut h, Some("16")).await,
            200,
            events(&[json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}})]),
        );
        respond(
            expect(&mut h, None).await,
            200,
            list("30", &[pod("c", "29")]),
        );
        assert_eq!(recv(&mut rx).await, ("listed".into(), vec!["c".into()]));
        // ... or as the watch request's status.
        respond(
            expect(&mut h, Some("30")).await,
            410,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "too old", "reason": "Gone", "code": 410})
            .to_string(),
        );
        respond(expect(&mut h, None).await, 200, list("40", &[]));
        assert_eq!(recv(&mut rx).await, ("listed".into(), vec![]));
        let send = expect(&mut h, Some("40")).await;
        // The receiver is gone: the task ends with its next event.
        drop(rx);
        respond(
            send,
            200,
            events(&[json!({"type": "ADDED", "object": pod("d", "41")})]),
        );
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch did not end")
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_list_is_retried_with_back_off() {
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::all(kube::Client::new(svc, "default"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let health = std::sync::Arc::new(Health::default());
        let task = tokio::spawn(run(
            api,
            Kind::Pods,
            "test".into(),
            tx,
            |e| e,
            health.clone(),
        ));
        expect(&mut h, None).await.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        let t = Instant::now();
        let retry = expect(&mut h, None).await;
        let errors = health.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("pods: watching pods at test: LIST"),
            "{errors:?}"
        );
        respond(retry, 200, list("5", &[]));
        assert!(
            t.elapsed() >= common::BACKOFF_MIN / 2,
            "retried without back-off"
        );
        assert_eq!(recv(&mut rx).await, ("listed".into(), vec![]));
        assert!(health.errors().is_empty(), "{:?}", health.errors());
        task.abort();
    }
}
