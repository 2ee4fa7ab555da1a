//! Kubernetes API backend: prefix claims are cluster-scoped `PrefixClaim` objects
//! (`prefixclaims.vpcnet.io/v1alpha1`, CRD in `manifests/crd-prefixclaims.yaml`).
//!
//! - Name: the prefix, dashed (`10.240.0.16/28` → `10-240-0-16-28`, see [`name_of`]), so the
//!   API server's name uniqueness is the claim's atomicity.
//! - claim: `POST` the object. `201` → won. `409 AlreadyExists` → taken, unless the existing
//!   object (read back) names this node: then it is ours already (e.g. after a restart) and
//!   counts as won. Every claim carries an ownerReference to this node's `Node` object (its
//!   uid is looked up once, on first use), so deleting the Node garbage-collects its claims:
//!   the Kubernetes counterpart of etcd's sweep of a node without liveness. A Node deleted and re-created under the same
//!   name also gets its pods (this agent) deleted, so a uid cached for the process's life
//!   never outlives its Node.
//! - release: read the object, and if it still names the node, `DELETE` it with
//!   `preconditions {uid, resourceVersion}` of what was read. `404` → already gone; `409`
//!   (precondition failed: it changed under us) → read again and retry once.
//! - list: answered from the watch's view of every claim while it is in sync (no request);
//!   `list_fresh` (and `list` out of sync) is one `LIST` of all PrefixClaims. `claimedAt` is
//!   the object's creationTimestamp.
//! - The view and `changed`: a background `LIST` (which fills the view) + `WATCH` from the
//!   list's resourceVersion (bookmarks on), each event applied to the view and published as
//!   a [`ClaimDelta`] (`deltas`), resumed from the last seen resourceVersion when the stream
//!   ends, re-listed when the server answers `410 Gone` (resourceVersion compacted away:
//!   [`ClaimDelta::Resync`]). A failed watch marks the view out of sync until it resumes.
//!   Every event, and every re-list after the first (events may have been missed), signals
//!   `changed`.
//! - max-pods: with `--max-pods` unset, `run` asks [`KubernetesDatastore::node_max_pods`]
//!   once at start for the Node's `status.capacity.pods` (that read also caches the uid).
//!   Bounded by [`OP_TIMEOUT`]; on failure the agent keeps the default and starts anyway.
//! - Degraded mode: apart from that one bounded read, nothing here waits for the API server
//!   at start (the client connects lazily). Each operation gives up after [`OP_TIMEOUT`] with
//!   [`DatastoreError::Unavailable`] naming the server; the watch retries with the agent's
//!   jittered back-off ([`crate::backoff`], [`BACKOFF_MIN`] … [`BACKOFF_MAX`]). Answers that retrying cannot fix (RBAC
//!   403, CRD not installed, Node not found) are [`DatastoreError::Invalid`] with a hint.
//!
//! The resource type is written by hand ([`ClaimObject`] implements [`kube::Resource`])
//! rather than with `#[derive(CustomResource)]`: the derive needs kube's `derive` feature,
//! which brings `kube-derive` and `schemars` (+ proc-macro crates) into the build only to
//! generate a CRD schema the agent never installs (the CRD is a manifest).
//!
//! Files: `object.rs` (the object type and the claim ⇄ object mapping), `watch.rs` (the
//! background watch that signals `changed`); this file holds the configuration, the requests
//! of claim/release/list and the wiring into [`Cluster`] (whose
//! [`Datastore`](super::Datastore) impl bounds every operation by [`OP_TIMEOUT`]).

mod object;
mod watch;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ErrorResponse;
use kube::{Client, Config};
use tokio::sync::{Notify, OnceCell};

use super::common::{self, Backend, Cluster};
use super::{ClaimDelta, DatastoreError, PrefixClaim};

pub use object::{claim_object, claim_of, name_of, prefix_of_name, ClaimObject, ClaimSpec};

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
/// Back-off of the watch while the API server is unreachable.
pub use super::common::{BACKOFF_MAX, BACKOFF_MIN};
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

/// The Kubernetes datastore. Dropping it stops its watch task; claims stay (owned by the
/// Node, like a crash: a restarted agent re-adopts them).
pub type KubernetesDatastore = Cluster<KubernetesBackend>;

/// The API-server side of a [`KubernetesDatastore`], shared with its watch task.
pub struct KubernetesBackend {
    claims: Api<ClaimObject>,
    nodes: Api<Node>,
    node: String,
    /// For error messages: the API server's URL.
    server: String,
    /// uid of this node's `Node` object, the owner of its claims; looked up on first use.
    node_uid: OnceCell<String>,
    /// Signalled on every watch event (and after every re-list but the first).
    changed: Notify,
    /// Every claim, as the watch has seen them: `list` answers from it while in sync.
    view: std::sync::Mutex<watch::View>,
    /// What the watch applies to the view, for [`super::Datastore::deltas`].
    deltas: tokio::sync::broadcast::Sender<ClaimDelta>,
    /// Full LISTs of the claims sent by this instance (view fills and fresh lists).
    list_requests: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesDatastore")
            .field("server", &self.server)
            .field("node", &self.node)
            .field("node_uid", &self.node_uid.get())
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> DatastoreError {
    common::invalid(BACKEND, msg)
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

/// A client of the API server from a kubeconfig file, or (`None`) the in-cluster service
/// account; and the server's URL, for messages. Never waits for the server (the client
/// connects lazily; connects time out after [`CONNECT_TIMEOUT`]). Fails only on
/// configuration errors.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<(Client, String), DatastoreError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| invalid(format!("reading --kubeconfig {}: {e}", path.display())))?;
            match tokio::time::timeout(
                OP_TIMEOUT,
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(invalid(format!("--kubeconfig {}: {e}", path.display()))),
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
    Ok((client, server))
}

impl Cluster<KubernetesBackend> {
    /// Builds the client from `--kubeconfig` or the in-cluster service account and starts the
    /// watch. Never waits for the API server: while it is unreachable operations fail fast
    /// with `Unavailable` and the watch keeps retrying. Fails only on configuration errors
    /// (no in-cluster environment, unreadable kubeconfig).
    pub async fn connect(cfg: KubernetesConfig) -> Result<KubernetesDatastore, DatastoreError> {
        if cfg.node.is_empty() {
            return Err(invalid("no node name (--node-name)"));
        }
        let (client, server) = client(cfg.kubeconfig.as_deref()).await?;
        Ok(KubernetesDatastore::with_client(client, server, cfg.node))
    }

    /// Uses `client` (any tower service: tests pass a mock) and starts the watch task.
    /// `server` names the API server in error messages. Needs a tokio runtime.
    pub fn with_client(
        client: Client,
        server: impl Into<String>,
        node: impl Into<String>,
    ) -> KubernetesDatastore {
        let inner = Arc::new(KubernetesBackend::new(client, server.into(), node.into()));
        let tasks = vec![tokio::spawn(watch::watch_claims(inner.clone()))];
        Cluster::new(inner, tasks)
    }
}

impl Cluster<KubernetesBackend> {
    /// The kubelet's `maxPods` from this node's `Node` object (see
    /// [`KubernetesBackend::node_max_pods`]), bounded by [`OP_TIMEOUT`].
    /// How many full LISTs of the claims this instance has sent (view fills by the watch,
    /// `list_fresh`, and `list` while the view is out of sync).
    pub fn list_requests(&self) -> u64 {
        self.backend()
            .list_requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `list` answers from the watch's view now (no request).
    pub fn cache_synced(&self) -> bool {
        self.backend().view().synced
    }

    pub async fn node_max_pods(&self) -> Result<u32, DatastoreError> {
        let b = self.backend();
        common::bounded(b, "reading the Node's pod capacity", b.node_max_pods()).await
    }
}

impl KubernetesBackend {
    fn new(client: Client, server: String, node: String) -> KubernetesBackend {
        KubernetesBackend {
            claims: Api::all(client.clone()),
            nodes: Api::all(client),
            node,
            server,
            node_uid: OnceCell::new(),
            changed: Notify::new(),
            view: std::sync::Mutex::new(watch::View::default()),
            deltas: tokio::sync::broadcast::channel(super::DELTA_BUFFER).0,
            list_requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts one full LIST of the claims (metric, and this instance's count).
    fn count_list(&self) {
        self.list_requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        crate::obs::metrics::get().datastore_request("list");
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

    /// How many pods the kubelet runs on this node: the Node's `status.capacity.pods` (its
    /// `maxPods`), else `status.allocatable.pods`. Caches the Node's uid on the way (a claim
    /// needs it), so the start-up read costs no extra request.
    async fn node_max_pods(&self) -> Result<u32, DatastoreError> {
        let what = format!("reading the pod capacity of Node {}", self.node);
        let node = match self.nodes.get_opt(&self.node).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(invalid(format!(
                    "{what} at {}: no such Node (--node-name must be this node's Kubernetes name)",
                    self.server
                )))
            }
            Err(e) => return Err(self.error(&what, e)),
        };
        if let Some(uid) = node.metadata.uid.clone() {
            let _ = self.node_uid.set(uid);
        }
        let status = node.status.unwrap_or_default();
        let q = status
            .capacity
            .as_ref()
            .and_then(|c| c.get("pods"))
            .or_else(|| status.allocatable.as_ref().and_then(|a| a.get("pods")))
            .ok_or_else(|| {
                invalid(format!(
                    "{what} at {}: the Node has no status.capacity.pods",
                    self.server
                ))
            })?;
        match q.0.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(format!(
                "{what} at {}: pods {:?} is not a positive whole number",
                self.server, q.0
            ))),
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
}

impl Backend for KubernetesBackend {
    const NAME: &'static str = BACKEND;
    const OP_TIMEOUT: Duration = OP_TIMEOUT;

    fn unavailable(&self, what: &str, e: impl fmt::Display) -> DatastoreError {
        DatastoreError::Unavailable {
            backend: BACKEND,
            msg: format!("{what} at {}: {e}", self.server),
        }
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

    async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
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
        self.count_list();
        let list = self
            .claims
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error("listing claims", e))?;
        Ok(list.items.iter().filter_map(claim_of).collect())
    }

    fn cached(&self) -> Option<Vec<PrefixClaim>> {
        let v = self.view();
        v.synced.then(|| v.claims.values().cloned().collect())
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn deltas(&self) -> Option<&tokio::sync::broadcast::Sender<ClaimDelta>> {
        Some(&self.deltas)
    }
}
