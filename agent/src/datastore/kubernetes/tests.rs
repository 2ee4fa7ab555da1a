//! Request/response-level tests: a `kube::Client` over a `tower_test` mock service; each test
//! plays the API server, checking every request and scripting its answer.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::datastore::Datastore;

const SERVER: &str = "https://apiserver.test:6443";
const CLAIMS: &str = "/apis/vpcnet.io/v1alpha1/prefixclaims";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, ApiHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn inner() -> (Arc<KubernetesBackend>, ApiHandle) {
    let (client, handle) = mock_client();
    (
        Arc::new(KubernetesBackend::new(
            client,
            SERVER.into(),
            "node-a".into(),
        )),
        handle,
    )
}

/// One request as the mock API server sees it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

async fn next(h: &mut ApiHandle) -> (Seen, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .expect("the client sent no request within 5 s")
        .expect("mock closed");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        body,
    };
    (seen, send)
}

/// The next request, which must be `method path`.
async fn expect(
    h: &mut ApiHandle,
    method: &str,
    path: &str,
) -> (Seen, SendResponse<Response<Body>>) {
    let (seen, send) = next(h).await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        (method, path),
        "{seen:?}"
    );
    (seen, send)
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn respond_raw(send: SendResponse<Response<Body>>, status: u16, body: String) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(body.into_bytes()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn node_json(name: &str, uid: &str) -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": uid, "resourceVersion": "1"},
    })
}

fn claim_json(prefix: &str, node: &str, uid: &str, rv: &str) -> Value {
    let net: IpNetwork = prefix.parse().unwrap();
    json!({
        "apiVersion": "vpcnet.io/v1alpha1", "kind": "PrefixClaim",
        "metadata": {
            "name": name_of(net), "uid": uid, "resourceVersion": rv,
            "creationTimestamp": "2025-01-02T03:04:05Z",
        },
        "spec": {"cidr": prefix, "node": node, "nodeIP": "192.0.2.1"},
    })
}

fn claim(prefix: &str) -> PrefixClaim {
    PrefixClaim {
        prefix: prefix.parse().unwrap(),
        node: "node-a".into(),
        node_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
        node_ip6: None,
        claimed_at: 1,
    }
}

fn claim_path(prefix: &str) -> String {
    format!("{CLAIMS}/{}", name_of(prefix.parse().unwrap()))
}

#[test]
fn names_round_trip() {
    let p: IpNetwork = "10.240.0.16/28".parse().unwrap();
    assert_eq!(name_of(p), "10-240-0-16-28");
    assert_eq!(prefix_of_name("10-240-0-16-28"), Some(p));
    // Host bits are dropped: one name per prefix.
    assert_eq!(name_of("10.240.0.17/28".parse().unwrap()), "10-240-0-16-28");
    for s in [
        "0.0.0.0/0",
        "255.255.255.255/32",
        "192.168.0.0/16",
        "10.0.0.64/26",
    ] {
        let p: IpNetwork = s.parse().unwrap();
        assert_eq!(prefix_of_name(&name_of(p)), Some(p), "{s}");
    }
    for bad in [
        "",
        "10-240-0-16",
        "10-240-0-16-28-1",
        "10-240-0-17-28", // host bits set: name_of never makes it
        "10-240-0-016-28",
        "10-240-0-16-33",
        "10-256-0-16-28",
        "10-240-0-+1-28",
        "a-b-c-d-e",
        "10.240.0.16-28",
    ] {
        assert_eq!(prefix_of_name(bad), None, "{bad}");
    }
}

/// IPv6 claim names: no `:` or `/` (not allowed in a name), every group written out.
#[test]
fn ipv6_names_round_trip() {
    let p: IpNetwork = "fd00:10::/80".parse().unwrap();
    assert_eq!(name_of(p), "fd00-10-0-0-0-0-0-0-80");
    assert_eq!(prefix_of_name("fd00-10-0-0-0-0-0-0-80"), Some(p));
    assert_eq!(
        name_of("fd00:10::1:2/80".parse().unwrap()),
        "fd00-10-0-0-0-0-0-0-80",
        "host bits dropped"
    );
    for s in [
        "::/0",
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ff00/120",
        "fd00:abcd:1::/64",
    ] {
        let p: IpNetwork = s.parse().unwrap();
        let n = name_of(p);
        assert!(!n.contains(':') && !n.contains('/'), "{n}");
        assert_eq!(prefix_of_name(&n), Some(p), "{s}");
    }
    for bad in [
        "fd00-10-0-0-0-0-0-80",     // seven groups
        "fd00-10-0-0-0-0-0-0-0-80", // nine groups
        "fd00-10-0-0-0-0-0-1-80",   // host bits set
        "fd00-010-0-0-0-0-0-0-80",  // leading zero
        "FD00-10-0-0-0-0-0-0-80",   // uppercase: name_of never makes it
        "fd00-10-0-0-0-0-0-0-129",
        "fd00-10-0-0-0-0-0-10000-80",
        "fd00-10-0-0-0-0-0-g-80",
        "fd00:10::-80",
    ] {
        assert_eq!(prefix_of_name(bad), None, "{bad}");
    }
}

#[test]
fn ipv6_objects_round_trip() {
    let c = PrefixClaim {
        prefix: "fd00:10::/80".parse().unwrap(),
        node_ip6: Some("fd00:1::1".parse().unwrap()),
        ..claim("10.240.0.16/28")
    };
    let obj = claim_object(&c, "uid-a");
    assert_eq!(obj.metadata.name.as_deref(), Some("fd00-10-0-0-0-0-0-0-80"));
    let v = serde_json::to_value(&obj).unwrap();
    assert_eq!(
        v["spec"],
        json!({"cidr": "fd00:10::/80", "node": "node-a", "nodeIP": "192.0.2.1", "nodeIPv6": "fd00:1::1"})
    );
    assert_eq!(claim_of(&obj), Some(PrefixClaim { claimed_at: 0, ..c }));
    let mut wrong = obj.clone();
    wrong.spec.cidr = "fd00:11::/80".into();
    assert_eq!(claim_of(&wrong), None, "spec.cidr must match the name");
    let mut wrong = obj;
    wrong.spec.node_ip6 = Some("10.0.0.1".into());
    assert_eq!(claim_of(&wrong), None, "nodeIPv6 must be IPv6");
}

#[test]
fn objects_round_trip_and_bad_ones_are_skipped() {
    let c = claim("10.240.0.16/28");
    let obj = claim_object(&c, "uid-a");
    let v = serde_json::to_value(&obj).unwrap();
    assert_eq!(v["apiVersion"], "vpcnet.io/v1alpha1");
    assert_eq!(v["kind"], "PrefixClaim");
    assert_eq!(
        v["spec"],
        json!({"cidr": "10.240.0.16/28", "node": "node-a", "nodeIP": "192.0.2.1"})
    );
    let back = claim_of(&obj).unwrap();
    assert_eq!(
        (back.prefix, &back.node, back.node_ip),
        (c.prefix, &c.node, c.node_ip)
    );

    let mut wrong = obj.clone();
    wrong.spec.cidr = "10.240.0.32/28".into();
    assert_eq!(claim_of(&wrong), None);
    let mut wrong = obj.clone();
    wrong.metadata.name = Some("my-claim".into());
    assert_eq!(claim_of(&wrong), None);
    let mut wrong = obj;
    wrong.spec.node.clear();
    assert_eq!(claim_of(&wrong), None);
}

#[tokio::test]
async fn claim_creates_object_owned_by_the_node() {
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "GET", "/api/v1/nodes/node-a").await;
    respond(send, 200, &node_json("node-a", "uid-a"));
    let (seen, send) = expect(&mut h, "POST", CLAIMS).await;
    let b = &seen.body;
    assert_eq!(b["apiVersion"], "vpcnet.io/v1alpha1");
    assert_eq!(b["kind"], "PrefixClaim");
    assert_eq!(b["metadata"]["name"], "10-240-0-16-28");
    assert_eq!(
        b["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-a"}])
    );
    assert_eq!(
        b["spec"],
        json!({"cidr": "10.240.0.16/28", "node": "node-a", "nodeIP": "192.0.2.1"})
    );
    respond(
        send,
        201,
        &claim_json("10.240.0.16/28", "node-a", "c1", "10"),
    );
    assert!(op.await.unwrap().unwrap());

    // The Node's uid is looked up once.
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.32/28")).await }
    });
    let (seen, send) = expect(&mut h, "POST", CLAIMS).await;
    assert_eq!(seen.body["metadata"]["name"], "10-240-0-32-28");
    assert_eq!(seen.body["metadata"]["ownerReferences"][0]["uid"], "uid-a");
    respond(
        send,
        201,
        &claim_json("10.240.0.32/28", "node-a", "c2", "11"),
    );
    assert!(op.await.unwrap().unwrap());
}

#[tokio::test]
async fn claim_conflict_with_another_node_is_taken() {
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "GET", "/api/v1/nodes/node-a").await;
    respond(send, 200, &node_json("node-a", "uid-a"));
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(
        send,
        409,
        &status(
            409,
            "AlreadyExists",
            "prefixclaims.vpcnet.io \"10-240-0-16-28\" already exists",
        ),
    );
    let (_, send) = expect(&mut h, "GET", &claim_path("10.240.0.16/28")).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-b", "c1", "10"),
    );
    assert!(!op.await.unwrap().unwrap());
}

#[tokio::test]
async fn claim_conflict_with_our_own_object_is_won() {
    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(send, 409, &status(409, "AlreadyExists", "already exists"));
    let (_, send) = expect(&mut h, "GET", &claim_path("10.240.0.16/28")).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "10"),
    );
    assert!(op.await.unwrap().unwrap());
}

#[tokio::test]
async fn claim_conflict_whose_object_vanished_is_retried() {
    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(send, 409, &status(409, "AlreadyExists", "already exists"));
    let (_, send) = expect(&mut h, "GET", &claim_path("10.240.0.16/28")).await;
    respond(send, 404, &status(404, "NotFound", "not found"));
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(
        send,
        201,
        &claim_json("10.240.0.16/28", "node-a", "c2", "12"),
    );
    assert!(op.await.unwrap().unwrap());
}

#[tokio::test]
async fn claim_for_another_node_is_refused_without_a_request() {
    let (ds, _h) = inner();
    let mut c = claim("10.240.0.16/28");
    c.node = "node-b".into();
    assert!(matches!(
        ds.claim(&c).await,
        Err(DatastoreError::Invalid { .. })
    ));
}

#[tokio::test]
async fn claim_errors_name_the_cause() {
    // No Node of that name: a configuration error.
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "GET", "/api/v1/nodes/node-a").await;
    respond(
        send,
        404,
        &status(404, "NotFound", "nodes \"node-a\" not found"),
    );
    let e = op.await.unwrap().unwrap_err();
    assert!(matches!(e, DatastoreError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("--node-name"), "{e}");

    // CRD not installed: the create is a 404.
    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(
        send,
        404,
        &status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    );
    let e = op.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("CRD"), "{e}");

    // RBAC.
    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(send, 403, &status(403, "Forbidden", "forbidden"));
    let e = op.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("RBAC"), "{e}");

    // Transport failure and 5xx: unavailable, naming the server.
    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ));
    let e = op.await.unwrap().unwrap_err();
    assert!(matches!(e, DatastoreError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(SERVER), "{e}");

    let (ds, mut h) = inner();
    ds.node_uid.set("uid-a".into()).unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.claim(&claim("10.240.0.16/28")).await }
    });
    let (_, send) = expect(&mut h, "POST", CLAIMS).await;
    respond(
        send,
        503,
        &status(503, "ServiceUnavailable", "etcd is down"),
    );
    let e = op.await.unwrap().unwrap_err();
    assert!(matches!(e, DatastoreError::Unavailable { .. }), "{e}");
}

#[tokio::test]
async fn release_deletes_with_preconditions_of_what_was_read() {
    let (ds, mut h) = inner();
    let p: IpNetwork = "10.240.0.16/28".parse().unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.release(p, "node-a").await }
    });
    let path = claim_path("10.240.0.16/28");
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "7"),
    );
    let (seen, send) = expect(&mut h, "DELETE", &path).await;
    assert_eq!(
        seen.body["preconditions"],
        json!({"uid": "c1", "resourceVersion": "7"})
    );
    respond(
        send,
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
    );
    op.await.unwrap().unwrap();
}

#[tokio::test]
async fn release_retries_once_after_a_failed_precondition() {
    let (ds, mut h) = inner();
    let p: IpNetwork = "10.240.0.16/28".parse().unwrap();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.release(p, "node-a").await }
    });
    let path = claim_path("10.240.0.16/28");
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "7"),
    );
    let (_, send) = expect(&mut h, "DELETE", &path).await;
    respond(
        send,
        409,
        &status(
            409,
            "Conflict",
            "Precondition failed: ResourceVersion in precondition: 7, in object meta: 8",
        ),
    );
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "8"),
    );
    let (seen, send) = expect(&mut h, "DELETE", &path).await;
    assert_eq!(
        seen.body["preconditions"],
        json!({"uid": "c1", "resourceVersion": "8"})
    );
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "9"),
    );
    op.await.unwrap().unwrap();
}

#[tokio::test]
async fn release_of_what_is_gone_or_not_ours_is_done() {
    let p: IpNetwork = "10.240.0.16/28".parse().unwrap();
    let path = claim_path("10.240.0.16/28");

    // Gone between read and delete: 404 is success.
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.release(p, "node-a").await }
    });
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-a", "c1", "7"),
    );
    let (_, send) = expect(&mut h, "DELETE", &path).await;
    respond(send, 404, &status(404, "NotFound", "not found"));
    op.await.unwrap().unwrap();

    // Gone already: no DELETE at all.
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.release(p, "node-a").await }
    });
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(send, 404, &status(404, "NotFound", "not found"));
    op.await.unwrap().unwrap();

    // Another node's: left alone.
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.release(p, "node-a").await }
    });
    let (_, send) = expect(&mut h, "GET", &path).await;
    respond(
        send,
        200,
        &claim_json("10.240.0.16/28", "node-b", "c1", "7"),
    );
    op.await.unwrap().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), h.next_request())
            .await
            .is_err(),
        "no DELETE of another node's claim"
    );
}

#[tokio::test]
async fn list_decodes_every_claim_and_skips_malformed_ones() {
    let (ds, mut h) = inner();
    let op = tokio::spawn({
        let ds = ds.clone();
        async move { ds.list().await }
    });
    let (_, send) = expect(&mut h, "GET", CLAIMS).await;
    let mut bad = claim_json("10.240.0.48/28", "node-c", "c3", "12");
    bad["metadata"]["name"] = json!("not-a-prefix");
    let mut no_ip = claim_json("10.240.0.32/28", "node-b", "c2", "11");
    no_ip["spec"].as_object_mut().unwrap().remove("nodeIP");
    respond(
        send,
        200,
        &json!({
            "apiVersion": "vpcnet.io/v1alpha1", "kind": "PrefixClaimList",
            "metadata": {"resourceVersion": "12"},
            "items": [claim_json("10.240.0.16/28", "node-a", "c1", "10"), no_ip, bad],
        }),
    );
    let claims = op.await.unwrap().unwrap();
    assert_eq!(
        claims,
        vec![
            PrefixClaim {
                prefix: "10.240.0.16/28".parse().unwrap(),
                node: "node-a".into(),
                node_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
                node_ip6: None,
                claimed_at: 1_735_787_045_000,
            },
            PrefixClaim {
                prefix: "10.240.0.32/28".parse().unwrap(),
                node: "node-b".into(),
                node_ip: None,
                node_ip6: None,
                claimed_at: 1_735_787_045_000,
            },
        ]
    );
}

fn list_json(rv: &str) -> Value {
    json!({
        "apiVersion": "vpcnet.io/v1alpha1", "kind": "PrefixClaimList",
        "metadata": {"resourceVersion": rv}, "items": [],
    })
}

fn events(evs: &[Value]) -> String {
    evs.iter().map(|e| format!("{e}\n")).collect()
}

/// The next request must be a WATCH of the claims from `rv`.
async fn expect_watch(h: &mut ApiHandle, rv: &str) -> SendResponse<Response<Body>> {
    let (seen, send) = expect(h, "GET", CLAIMS).await;
    assert_eq!(
        seen.query.get("watch").map(String::as_str),
        Some("true"),
        "{seen:?}"
    );
    assert_eq!(
        seen.query.get("resourceVersion").map(String::as_str),
        Some(rv),
        "{seen:?}"
    );
    send
}

/// The next request must be a LIST of the claims.
async fn expect_list(h: &mut ApiHandle) -> SendResponse<Response<Body>> {
    let (seen, send) = expect(h, "GET", CLAIMS).await;
    assert!(!seen.query.contains_key("watch"), "{seen:?}");
    send
}

/// Whether `changed()` resolves within `within`.
async fn resolves_within(ds: &KubernetesDatastore, within: Duration) -> bool {
    tokio::time::timeout(within, ds.changed()).await.is_ok()
}

async fn resolves(ds: &KubernetesDatastore) -> bool {
    resolves_within(ds, Duration::from_secs(5)).await
}

#[tokio::test]
async fn watch_resumes_after_410_gone_by_relisting() {
    let (client, mut h) = mock_client();
    let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
    respond(expect_list(&mut h).await, 200, &list_json("100"));
    // The resourceVersion expired: the server says so in an ERROR event...
    respond_raw(
        expect_watch(&mut h, "100").await,
        200,
        events(&[
            json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 100 (150)")}),
        ]),
    );
    respond(expect_list(&mut h).await, 200, &list_json("200"));
    // Events may have been missed meanwhile: the re-list signals a change.
    assert!(resolves(&ds).await);
    // ... or as the watch request's HTTP status.
    respond(
        expect_watch(&mut h, "200").await,
        410,
        &status(410, "Gone", "too old resource version"),
    );
    respond(expect_list(&mut h).await, 200, &list_json("300"));
    let send = expect_watch(&mut h, "300").await;
    assert!(resolves(&ds).await);
    drop(send);
}

#[tokio::test]
async fn watch_event_signals_changed_and_resumes_from_its_version() {
    let (client, mut h) = mock_client();
    let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
    respond(expect_list(&mut h).await, 200, &list_json("100"));
    let send = expect_watch(&mut h, "100").await;
    // The first list signals nothing (the agent lists at start anyway).
    assert!(!resolves_within(&ds, Duration::from_millis(200)).await);
    respond_raw(
        send,
        200,
        events(&[
            json!({"type": "ADDED", "object": claim_json("10.240.0.16/28", "node-b", "c1", "101")}),
            json!({"type": "BOOKMARK", "object": {
                "apiVersion": "vpcnet.io/v1alpha1", "kind": "PrefixClaim",
                "metadata": {"resourceVersion": "105"},
            }}),
        ]),
    );
    assert!(resolves(&ds).await);
    // The stream ended (server timeout): the watch resumes from the bookmark, no re-list.
    let send = expect_watch(&mut h, "105").await;
    respond_raw(
        send,
        200,
        events(&[
            json!({"type": "DELETED", "object": claim_json("10.240.0.16/28", "node-b", "c1", "106")}),
        ]),
    );
    assert!(resolves(&ds).await);
    let _send = expect_watch(&mut h, "106").await;
}

#[tokio::test]
async fn watch_backs_off_and_recovers_while_the_server_is_away() {
    let (client, mut h) = mock_client();
    let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
    let (_, send) = expect(&mut h, "GET", CLAIMS).await;
    send.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ));
    let t = Instant::now();
    respond(expect_list(&mut h).await, 200, &list_json("100"));
    assert!(t.elapsed() >= BACKOFF_MIN / 2, "retried without back-off");
    let _send = expect_watch(&mut h, "100").await;
    assert_eq!(ds.name(), "kubernetes");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vpcnet-k8s-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Degraded mode with a real client: connect does no I/O, and operations against a server
/// that is not there fail fast with `Unavailable` naming it.
#[tokio::test]
async fn unreachable_server_fails_fast_and_names_it() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("kubeconfig");
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:{port}
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: abc
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
"
        ),
    )
    .unwrap();
    let ds = KubernetesDatastore::connect(KubernetesConfig {
        kubeconfig: Some(path),
        node: "node-a".into(),
    })
    .await
    .unwrap();
    let t = Instant::now();
    let e = ds.list().await.unwrap_err();
    assert!(t.elapsed() < OP_TIMEOUT, "{:?}", t.elapsed());
    assert!(matches!(e, DatastoreError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    let e = ds.claim(&claim("10.240.0.16/28")).await.unwrap_err();
    assert!(matches!(e, DatastoreError::Unavailable { .. }), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn config_errors_are_reported() {
    let e = KubernetesDatastore::connect(KubernetesConfig {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        node: "node-a".into(),
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("--kubeconfig"), "{e}");
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let e = KubernetesDatastore::connect(KubernetesConfig {
            kubeconfig: None,
            node: "node-a".into(),
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--kubeconfig"), "{e}");
    }
}

#[test]
fn command_line_selects_this_backend() {
    use crate::config::{Cli, DatastoreKind};
    use clap::Parser;
    let cli = Cli::parse_from([
        "vpcnetd",
        "--vpc-cidr",
        "10.0.0.0/16",
        "--datastore",
        "kubernetes",
        "--kubeconfig",
        "/etc/vpcnet/kubeconfig",
        "--node-name",
        "node-a",
    ]);
    assert_eq!(cli.run.datastore, DatastoreKind::Kubernetes);
    assert_eq!(
        cli.run.kubeconfig.as_deref(),
        Some(std::path::Path::new("/etc/vpcnet/kubeconfig"))
    );
    assert_eq!(cli.run.node_name(), "node-a");
    cli.run.validate().unwrap();
}

fn node_with_pods(name: &str, capacity: Option<&str>, allocatable: Option<&str>) -> Value {
    let mut n = node_json(name, "uid-a");
    let mut status = serde_json::Map::new();
    if let Some(c) = capacity {
        status.insert("capacity".into(), json!({"cpu": "2", "pods": c}));
    }
    if let Some(a) = allocatable {
        status.insert("allocatable".into(), json!({"cpu": "2", "pods": a}));
    }
    n["status"] = Value::Object(status);
    n
}

/// Plays an API server for a whole [`KubernetesDatastore`]: the Node GET gets `node` (an
/// answer of status `code`), the watch's LIST an empty list, its WATCH is held open.
/// Returns how many Node GETs it saw, once the mock closes.
fn serve_node(mut h: ApiHandle, code: u16, node: Value) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut node_gets = 0;
        while let Some((req, send)) = h.next_request().await {
            let path = req.uri().path().to_string();
            let watch = req.uri().query().unwrap_or("").contains("watch=true");
            if req.method() == http::Method::POST && path == CLAIMS {
                respond(
                    send,
                    201,
                    &claim_json("10.240.0.16/28", "node-a", "c1", "10"),
                );
            } else if path == "/api/v1/nodes/node-a" {
                node_gets += 1;
                respond(send, code, &node);
            } else if path == CLAIMS && watch {
                held.push(send);
            } else if path == CLAIMS {
                respond(send, 200, &list_json("1"));
            } else {
                respond(send, 404, &status(404, "NotFound", "not served"));
            }
        }
        node_gets
    })
}

fn args_and_pool(dir: &std::path::Path, extra: &[&str]) -> (crate::config::RunArgs, Store, Pool) {
    use clap::Parser;
    let mut argv = vec![
        "vpcnetd",
        "--vpc-cidr",
        "10.240.0.0/24",
        "--datastore",
        "kubernetes",
        "--node-name",
        "node-a",
    ];
    argv.extend_from_slice(extra);
    let args = crate::config::Cli::try_parse_from(argv).unwrap().run;
    let (store, pool) = Store::open(dir, args.pool_config()).unwrap();
    (args, store, pool)
}

use crate::node::store::Store;
use vpcnet_pool::Pool;

/// Issue 12: `--max-pods` unset → the Node's `status.capacity.pods`, and the agent's status
/// (what `vpcnetd status` and `vpcnet_max_pods` show, what ADD is refused beyond) says 42.
#[tokio::test]
async fn max_pods_comes_from_the_node_capacity_when_unset() {
    let dir = temp_dir("max-pods");
    let (client, h) = mock_client();
    let server = serve_node(h, 200, node_with_pods("node-a", Some("42"), Some("40")));
    let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
    let (mut args, store, mut pool) = args_and_pool(&dir, &[]);
    assert_eq!(args.max_pods, None);
    assert_eq!(pool.config().max_pods, crate::config::DEFAULT_MAX_PODS);
    crate::node_max_pods(&mut args, &mut pool, &ds).await;
    assert_eq!(args.max_pods, Some(42));
    assert_eq!(pool.config().max_pods, 42);

    // The uid came with that read: a claim needs no second Node GET.
    assert!(ds.claim(&claim("10.240.0.16/28")).await.unwrap());

    let (conn, net, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    let (reaper, _rx) = tokio::sync::mpsc::unbounded_channel();
    let node = crate::node::Node::new(crate::node::NodeParts {
        name: "node-a".into(),
        ip: None,
        ip6: None,
        state: crate::node::State {
            pool,
            pool6: None,
            store,
        },
        mtu: None,
        datastore: ds,
        net,
        reaper,
        activity: Arc::new(crate::loops::reap::Activity::default()),
        inflight_dir: dir.join("inflight"),
    });
    assert_eq!(node.status(false).max_pods, 42);
    drop(node);
    let gets = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the mock closes once the datastore is gone")
        .unwrap();
    assert_eq!(gets, 1, "one Node GET for capacity and uid");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn max_pods_falls_back_to_allocatable_then_to_the_default() {
    // No capacity: allocatable.
    let dir = temp_dir("max-pods-alloc");
    let (client, h) = mock_client();
    let _server = serve_node(h, 200, node_with_pods("node-a", None, Some("17")));
    let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
    let (mut args, _store, mut pool) = args_and_pool(&dir, &[]);
    crate::node_max_pods(&mut args, &mut pool, &ds).await;
    assert_eq!((args.max_pods, pool.config().max_pods), (Some(17), 17));
    drop(ds);
    let _ = std::fs::remove_dir_all(&dir);

    // Unreadable Node (RBAC) or no pods count: today's default, and the flag stays unset.
    for (code, node) in [
        (
            403,
            status(403, "Forbidden", "nodes \"node-a\" is forbidden"),
        ),
        (200, node_with_pods("node-a", None, None)),
        (200, node_with_pods("node-a", Some("lots"), None)),
    ] {
        let dir = temp_dir("max-pods-default");
        let (client, h) = mock_client();
        let _server = serve_node(h, code, node.clone());
        let ds = KubernetesDatastore::with_client(client, SERVER, "node-a");
        let (mut args, _store, mut pool) = args_and_pool(&dir, &[]);
        let e = ds.node_max_pods().await.unwrap_err();
        assert!(matches!(e, DatastoreError::Invalid { .. }), "{e}");
        crate::node_max_pods(&mut args, &mut pool, &ds).await;
        assert_eq!(
            (args.max_pods, pool.config().max_pods),
            (None, crate::config::DEFAULT_MAX_PODS),
            "{node}"
        );
        drop(ds);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A `--max-pods` that is set wins: `run` does not even read the Node for it.
#[test]
fn max_pods_flag_when_set_is_kept() {
    let dir = temp_dir("max-pods-flag");
    let (args, _store, pool) = args_and_pool(&dir, &["--max-pods", "7"]);
    assert_eq!((args.max_pods, pool.config().max_pods), (Some(7), 7));
    let _ = std::fs::remove_dir_all(&dir);
}
