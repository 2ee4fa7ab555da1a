//! Kubernetes API backend: prefix claims are cluster-scoped `PrefixClaim` objects
//! (`prefixclaims.vpcnet.io/v1alpha1`, CRD in `manifests/crd-prefixclaims.yaml`).
//!
//! - Name: the prefix, dashed (`10.240.0.16/28` → `10-240-0-16-28`, see [`name_of`]), so the
//!   API server's name uniqueness is the claim's atomicity.
//! - claim: `POST` the object. `201` → won. `409 AlreadyExists` → taken, unless the existing
//!   object (read back) names this node: then it is ours already (e.g. after a restart) and
//!   counts as won. Every claim carries an ownerReference to this node's `Node` object (its
//!   uid is looked up once, on first use), so deleting the Node garbage-collects its claims:
//!   the Kubernetes counterpart of etcd's lease. A Node deleted and re-created under the same
//!   name also gets its pods (this agent) deleted, so a uid cached for the process's life
//!   never outlives its Node.
//! - release: read the object, and if it still names the node, `DELETE` it with
//!   `preconditions {uid, resourceVersion}` of what was read. `404` → already gone; `409`
//!   (precondition failed: it changed under us) → read again and retry once.
//! - list: one `LIST` of all PrefixClaims. `claimedAt` is the object's creationTimestamp.
//! - changed: a background `LIST` + `WATCH` from the list's resourceVersion (bookmarks on),
//!   resumed from the last seen resourceVersion when the stream ends, re-listed when the
//!   server answers `410 Gone` (resourceVersion compacted away). Every event, and every
//!   re-list after the first (events may have been missed), signals `changed`.
//! - Degraded mode: nothing here talks to the API server at start (the client connects
//!   lazily). Each operation gives up after [`OP_TIMEOUT`] with
//!   [`DatastoreError::Unavailable`] naming the server; the watch retries with exponential
//!   back-off ([`BACKOFF_MIN`] … [`BACKOFF_MAX`]). Answers that retrying cannot fix (RBAC
//!   403, CRD not installed, Node not found) are [`DatastoreError::Invalid`] with a hint.
//!
//! The resource type is written by hand ([`ClaimObject`] implements [`kube::Resource`])
//! rather than with `#[derive(CustomResource)]`: the derive needs kube's `derive` feature,
//! which brings `kube-derive` and `schemars` (+ proc-macro crates) into the build only to
//! generate a CRD schema the agent never installs (the CRD is a manifest).

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ClusterResourceScope, ErrorResponse, ObjectMeta};
use kube::{Client, Config, Resource};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use super::{Datastore, DatastoreError, PrefixClaim};

#[cfg(test)]
mod tests;

const BACKEND: &str = "kubernetes";
pub const GROUP: &str = "vpcnet.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "PrefixClaim";
pub const PLURAL: &str = "prefixclaims";
/// Longest any one datastore operation waits for the API server (a claim is up to four
/// requests: the Node lookup, the create, the read-back, one retry).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP/TLS connect timeout of the client: an unreachable server fails fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
use super::Backoff;
/// Back-off of the watch while the API server is unreachable.
pub use super::{BACKOFF_MAX, BACKOFF_MIN};
/// Server-side timeout of one watch request (the server ends the stream; we resume).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// How many times a claim whose object vanished between create and read-back is retried.
const CLAIM_ATTEMPTS: usize = 3;

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None`: in-cluster (service account token, `KUBERNETES_SERVICE_*`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's Kubernetes `Node` name (the DaemonSet passes `spec.nodeName`).
    pub node: String,
}

/// `spec` of a PrefixClaim. Fields default to empty so one malformed object cannot make a
/// whole LIST undecodable; [`claim_of`] skips it instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSpec {
    /// The claimed prefix, e.g. `10.240.0.16/28` (the name says the same).
    #[serde(default)]
    pub cidr: String,
    /// The claiming node's name.
    #[serde(default)]
    pub node: String,
    /// The address peers route the prefix via.
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
}

/// A `PrefixClaim` object as the API server stores it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimObject {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClaimSpec,
}

impl Resource for ClaimObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Object name of the claim of `prefix`: `10.240.0.16/28` → `10-240-0-16-28` (a valid DNS
/// subdomain, unique per prefix). The network address is used, so `10.240.0.17/28` names
/// the same claim.
pub fn name_of(prefix: Ipv4Network) -> String {
    let [a, b, c, d] = prefix.network().octets();
    format!("{a}-{b}-{c}-{d}-{}", prefix.prefix())
}

/// Inverse of [`name_of`]: `None` for a name [`name_of`] does not produce (wrong shape,
/// leading zeros, host bits set, length > 32).
pub fn prefix_of_name(name: &str) -> Option<Ipv4Network> {
    let parts: Vec<&str> = name.split('-').collect();
    let [a, b, c, d, len] = parts.as_slice() else {
        return None;
    };
    let num = |s: &str| -> Option<u8> {
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        s.parse().ok()
    };
    let ip = Ipv4Addr::new(num(a)?, num(b)?, num(c)?, num(d)?);
    let net = Ipv4Network::new(ip, num(len)?).ok()?;
    (net.network() == ip).then_some(net)
}

/// The object that claims `claim.prefix` for `claim.node`, owned by the Node with `node_uid`.
pub fn claim_object(claim: &PrefixClaim, node_uid: &str) -> ClaimObject {
    ClaimObject {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        metadata: ObjectMeta {
            name: Some(name_of(claim.prefix)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: claim.node.clone(),
                uid: node_uid.into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: ClaimSpec {
            cidr: claim.prefix.to_string(),
            node: claim.node.clone(),
            node_ip: claim.node_ip.map(|ip| ip.to_string()),
        },
    }
}

/// The claim an object records; `None` (with a log line) for one that is not a well-formed
/// claim: unparsable name, or a `spec.cidr` that disagrees with the name (the name is what
/// the API server keeps unique, so it is authoritative).
pub fn claim_of(obj: &ClaimObject) -> Option<PrefixClaim> {
    let name = obj.metadata.name.as_deref().unwrap_or("");
    let skip = |why: &str| {
        eprintln!("vpcnetd: kubernetes: skipping PrefixClaim {name:?}: {why}");
        None
    };
    let Some(prefix) = prefix_of_name(name) else {
        return skip("name is not a prefix like 10-240-0-16-28");
    };
    match obj.spec.cidr.parse::<Ipv4Network>() {
        Ok(c) if c == prefix => {}
        _ => {
            return skip(&format!(
                "spec.cidr {:?} does not match the name",
                obj.spec.cidr
            ))
        }
    }
    if obj.spec.node.is_empty() {
        return skip("spec.node is empty");
    }
    let node_ip = match obj.spec.node_ip.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => return skip(&format!("spec.nodeIP {s:?} is not an IPv4 address")),
        },
    };
    let claimed_at = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.timestamp_millis()).ok())
        .unwrap_or(0);
    Some(PrefixClaim {
        prefix,
        node: obj.spec.node.clone(),
        node_ip,
        claimed_at,
    })
}

/// The Kubernetes datastore. Dropping it stops its watch task; claims stay (owned by the
/// Node, like a crash: a restarted agent re-adopts them).
pub struct KubernetesDatastore {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for KubernetesDatastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesDatastore")
            .field("server", &self.inner.server)
            .field("node", &self.inner.node)
            .field("node_uid", &self.inner.node_uid.get())
            .finish_non_exhaustive()
    }
}

impl Drop for KubernetesDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    claims: Api<ClaimObject>,
    nodes: Api<Node>,
    node: String,
    /// For error messages: the API server's URL.
    server: String,
    /// uid of this node's `Node` object, the owner of its claims; looked up on first use.
    node_uid: OnceCell<String>,
    /// Signalled on every watch event (and after every re-list but the first).
    changed: Notify,
}

fn invalid(msg: impl Into<String>) -> DatastoreError {
    DatastoreError::Invalid {
        backend: BACKEND,
        msg: msg.into(),
    }
}

fn api_error(e: &kube::Error) -> Option<&ErrorResponse> {
    match e {
        kube::Error::Api(r) => Some(r),
        _ => None,
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    api_error(e).is_some_and(|r| r.code == code)
}

impl KubernetesDatastore {
    /// Builds the client from `--kubeconfig` or the in-cluster service account and starts the
    /// watch. Never waits for the API server: while it is unreachable operations fail fast
    /// with `Unavailable` and the watch keeps retrying. Fails only on configuration errors
    /// (no in-cluster environment, unreadable kubeconfig).
    pub async fn connect(cfg: KubernetesConfig) -> Result<KubernetesDatastore, DatastoreError> {
        if cfg.node.is_empty() {
            return Err(invalid("no node name (--node-name)"));
        }
        let mut config = match &cfg.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    invalid(format!("reading --kubeconfig {}: {e}", path.display()))
                })?;
                match tokio::time::timeout(
                    OP_TIMEOUT,
                    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()),
                )
                .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        return Err(invalid(format!("--kubeconfig {}: {e}", path.display())))
                    }
                    Err(_) => {
                        return Err(invalid(format!(
                            "--kubeconfig {}: no answer within {OP_TIMEOUT:?}",
                            path.display()
                        )))
                    }
                }
            }
            None => Config::incluster().map_err(|e| {
                invalid(format!(
                    "in-cluster config (service account; outside a pod pass --kubeconfig): {e}"
                ))
            })?,
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| invalid(format!("building a client for {server}: {e}")))?;
        Ok(KubernetesDatastore::with_client(client, server, cfg.node))
    }

    /// Uses `client` (any tower service: tests pass a mock) and starts the watch task.
    /// `server` names the API server in error messages. Needs a tokio runtime.
    pub fn with_client(
        client: Client,
        server: impl Into<String>,
        node: impl Into<String>,
    ) -> KubernetesDatastore {
        let inner = Arc::new(Inner::new(client, server.into(), node.into()));
        let tasks = vec![tokio::spawn(watch_claims(inner.clone()))];
        KubernetesDatastore { inner, tasks }
    }
}

impl Inner {
    fn new(client: Client, server: String, node: String) -> Inner {
        Inner {
            claims: Api::all(client.clone()),
            nodes: Api::all(client),
            node,
            server,
            node_uid: OnceCell::new(),
            changed: Notify::new(),
        }
    }

    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError {
        DatastoreError::Unavailable {
            backend: BACKEND,
            msg: format!("{what} at {}: {e}", self.server),
        }
    }

    /// Maps a client error: what retrying can fix is `Unavailable`, the rest `Invalid`
    /// with a hint at the cause.
    fn error(&self, what: &str, e: kube::Error) -> DatastoreError {
        let hint = match api_error(&e).map(|r| r.code) {
            Some(401) => "the service account token was refused",
            Some(403) => {
                "RBAC: the agent needs get/list/watch/create/delete on prefixclaims.vpcnet.io \
                 and get on nodes"
            }
            Some(404) => {
                "is the PrefixClaim CRD installed? (kubectl apply -f manifests/crd-prefixclaims.yaml)"
            }
            Some(400 | 422) => "the API server rejected the object",
            _ => return self.unavailable(what, e),
        };
        invalid(format!("{what} at {}: {e} ({hint})", self.server))
    }

    /// Runs `fut` for at most [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, DatastoreError>>,
    ) -> Result<T, DatastoreError> {
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable(what, format_args!("no answer within {OP_TIMEOUT:?}"))),
        }
    }

    /// uid of this node's `Node` object (looked up once).
    async fn node_uid(&self) -> Result<&str, DatastoreError> {
        self.node_uid
            .get_or_try_init(|| async {
                let what = format!("looking up Node {}", self.node);
                match self.nodes.get_opt(&self.node).await {
                    Ok(Some(n)) => n.metadata.uid.ok_or_else(|| {
                        invalid(format!("{what} at {}: the Node has no uid", self.server))
                    }),
                    Ok(None) => Err(invalid(format!(
                        "{what} at {}: no such Node (--node-name must be this node's Kubernetes name)",
                        self.server
                    ))),
                    Err(e) => Err(self.error(&what, e)),
                }
            })
            .await
            .map(String::as_str)
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        if claim.node != self.node {
            return Err(invalid(format!(
                "node {} cannot claim {} for node {}",
                self.node, claim.prefix, claim.node
            )));
        }
        let what = format!("claiming {}", claim.prefix);
        let obj = claim_object(claim, self.node_uid().await?);
        let name = name_of(claim.prefix);
        for _ in 0..CLAIM_ATTEMPTS {
            let err = match self.claims.create(&PostParams::default(), &obj).await {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            if !is_code(&err, 409) {
                return Err(self.error(&what, err));
            }
            // AlreadyExists: whose?
            match self.claims.get_opt(&name).await {
                Ok(Some(held)) => {
                    // Ours already (a restart, or a create whose answer was lost), unless it
                    // is on its way out.
                    return Ok(
                        held.spec.node == self.node && held.metadata.deletion_timestamp.is_none()
                    );
                }
                Ok(None) => continue, // deleted between create and read: try again
                Err(e) => return Err(self.error(&what, e)),
            }
        }
        Err(self.unavailable(&what, "the object kept appearing and vanishing"))
    }

    async fn release(&self, prefix: Ipv4Network, node: &str) -> Result<(), DatastoreError> {
        let what = format!("releasing {prefix}");
        let name = name_of(prefix);
        // The first precondition failure (it changed since read) is retried once.
        for _ in 0..2 {
            let held = match self.claims.get_opt(&name).await {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.error(&what, e)),
            };
            if held.spec.node != node {
                return Ok(());
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: held.metadata.uid.clone(),
                    resource_version: held.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match self.claims.delete(&name, &dp).await {
                Ok(_) => return Ok(()),
                Err(e) if is_code(&e, 404) => return Ok(()),
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => return Err(self.error(&what, e)),
            }
        }
        Err(self.unavailable(&what, "the object kept changing under us"))
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let list = self
            .claims
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error("listing claims", e))?;
        Ok(list.items.iter().filter_map(claim_of).collect())
    }
}

/// Logs the end of an outage the watch had reported.
fn recovered(last_err: &mut Option<String>) {
    if last_err.take().is_some() {
        eprintln!("vpcnetd: kubernetes: watching claims again");
    }
}

/// How one watch request ended.
enum WatchEnd {
    /// The server closed the stream (its timeout): resume from the last resourceVersion.
    Closed,
    /// 410 Gone: the resourceVersion is too old; re-list.
    Gone,
    /// Anything else: back off, then resume (or re-list if no resourceVersion is known).
    Failed(String),
}

/// One watch request from `rv`; `rv` follows the events and bookmarks. Returns how it ended
/// and whether any event arrived.
async fn watch_once(
    inner: &Inner,
    rv: &mut String,
    last_err: &mut Option<String>,
) -> (WatchEnd, bool) {
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let stream = match inner.claims.watch(&wp, rv).await {
        Ok(s) => s,
        Err(e) if is_code(&e, 410) => return (WatchEnd::Gone, false),
        Err(e) => return (WatchEnd::Failed(e.to_string()), false),
    };
    let mut stream = std::pin::pin!(stream);
    let mut progressed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => {
                recovered(last_err);
                if let Some(v) = o.metadata.resource_version {
                    *rv = v;
                }
                progressed = true;
                inner.changed.notify_one();
            }
            Ok(WatchEvent::Bookmark(b)) => {
                recovered(last_err);
                *rv = b.metadata.resource_version;
                progressed = true;
            }
            Ok(WatchEvent::Error(e)) if e.code == 410 => return (WatchEnd::Gone, progressed),
            // A non-2xx answer to the watch request itself arrives as the stream's first item.
            Err(e) if is_code(&e, 410) => return (WatchEnd::Gone, progressed),
            Ok(WatchEvent::Error(e)) => {
                return (WatchEnd::Failed(format!("watch error: {e}")), progressed)
            }
            Err(e) => return (WatchEnd::Failed(e.to_string()), progressed),
        }
    }
    (WatchEnd::Closed, progressed)
}

/// Background: LIST for a resourceVersion, then WATCH from it for as long as it lasts;
/// resume after the stream ends, re-list on 410 Gone, back off while the server is away.
async fn watch_claims(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(BACKOFF_MAX);
    let mut rv: Option<String> = None;
    let mut listed_before = false;
    let mut last_err: Option<String> = None;
    let report = |last_err: &mut Option<String>, msg: String| {
        let msg = format!("watching claims at {}: {msg}", inner.server);
        if last_err.as_deref() != Some(msg.as_str()) {
            eprintln!("vpcnetd: kubernetes: {msg} (retrying with back-off)");
            *last_err = Some(msg);
        }
    };
    loop {
        let mut version = match rv.take() {
            Some(v) => v,
            None => {
                let listed =
                    tokio::time::timeout(OP_TIMEOUT, inner.claims.list(&ListParams::default()))
                        .await;
                match listed {
                    Ok(Ok(list)) => match list.metadata.resource_version {
                        Some(v) if !v.is_empty() => {
                            recovered(&mut last_err);
                            if listed_before {
                                // Events may have been missed while not watching.
                                inner.changed.notify_one();
                            }
                            listed_before = true;
                            v
                        }
                        _ => {
                            report(&mut last_err, "LIST returned no resourceVersion".into());
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        }
                    },
                    Ok(Err(e)) => {
                        report(&mut last_err, e.to_string());
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    Err(_) => {
                        report(
                            &mut last_err,
                            format!("LIST: no answer within {OP_TIMEOUT:?}"),
                        );
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let (end, progressed) = watch_once(&inner, &mut version, &mut last_err).await;
        if progressed {
            backoff.reset();
        }
        match end {
            WatchEnd::Closed => {
                rv = Some(version);
                // A server that ends every watch at once must not make this spin.
                if !progressed && started.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(backoff.next_delay()).await;
                } else {
                    backoff.reset();
                }
            }
            WatchEnd::Gone => {
                eprintln!(
                    "vpcnetd: kubernetes: resourceVersion {version} is too old (410 Gone): re-listing claims"
                );
            }
            WatchEnd::Failed(msg) => {
                report(&mut last_err, msg);
                rv = Some(version);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

impl Datastore for KubernetesDatastore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        let what = format!("claiming {}", claim.prefix);
        self.inner.bounded(&what, self.inner.claim(claim)).await
    }

    async fn release(&self, prefix: Ipv4Network, node: &str) -> Result<(), DatastoreError> {
        let what = format!("releasing {prefix}");
        self.inner
            .bounded(&what, self.inner.release(prefix, node))
            .await
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        self.inner
            .bounded("listing claims", self.inner.list())
            .await
    }

    async fn changed(&self) {
        self.inner.changed.notified().await
    }
}
