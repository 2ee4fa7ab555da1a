//! No allow window (issue 13): with `--network-policy=true`, an ADD returns only once the
//! pod's rules are in the kernel if any policy selects it, or once it is decided that none
//! does. The server asks the enforcement loop through a [`Gate`] after the address is
//! assigned (so the pod is among this node's pods) and before replying; the loop answers
//! from its view and the ruleset in force ([`decide`]), applying first when it has to.
//!
//! The decision, for the pod `namespace/name` (from `K8S_POD_NAMESPACE`/`K8S_POD_NAME`):
//!
//! * no pod namespace/name in the request (not a Kubernetes pod): nothing can select it →
//!   admitted at once;
//! * the NetworkPolicies are listed and none is in the pod's namespace → admitted at once
//!   (no wait: a namespace without policies pays nothing);
//! * the pod is in the view (the kubelet creates the Pod object, with its labels, before it
//!   calls CNI) and no policy of its namespace selects it → admitted at once;
//! * selected → admitted once the ruleset in force isolates the pod's host veth (the loop
//!   compiles and applies it — one nft transaction — as soon as the request arrives);
//! * otherwise (policies not listed yet, or the pod not in the view yet, in a namespace
//!   with policies; or the selecting ruleset could not be applied) it waits up to
//!   [`ADMIT_WAIT`] for that to change, then **fails closed**: the ADD fails with
//!   [`CniCode::TryAgainLater`](vpcnet_proto::codes::CniCode) (11, "try again later": the
//!   state is transient, the runtime retries the sandbox) and the server releases the
//!   address it had just assigned.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use vpcnet_policy::compile::selector_matches;
use vpcnet_policy::NodePolicy;
use vpcnet_proto::api::PolicyStatus;

use super::view::{Kind, View};

/// How long an ADD waits for the view (or the apply) before failing closed. The Pod object
/// exists before CNI is called, so its watch event normally arrives within milliseconds;
/// the plugin gives the agent 20 s, the kubelet minutes.
pub const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// Why an ADD was refused (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("network policy: the API view is not in sync yet ({0} not listed), so it is unknown whether a policy selects pod {1}; failing closed (retry)")]
    NotSynced(&'static str, String),
    #[error("network policy: pod {0} is not known from the API yet and its namespace has {1} NetworkPolicy object(s) that could select it; failing closed (retry)")]
    UnknownPod(String, usize),
    #[error(
        "network policy: the rules of pod {0} are not in the kernel yet{1}; failing closed (retry)"
    )]
    NotApplied(String, String),
    #[error("network policy: the enforcement loop is not running; failing closed (retry)")]
    Stopped,
}

/// How an ADD was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// No policy can select the pod (none in its namespace, or none matching its labels).
    NotSelected,
    /// Selected: its rules are in the kernel.
    Enforced,
}

/// What [`decide`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admit(Admitted),
    /// Not decidable yet; the error is what to reply if it stays so past the deadline.
    Wait(AdmitError),
}

/// One ADD waiting for its decision.
#[derive(Debug)]
pub struct Request {
    pub namespace: String,
    pub name: String,
    /// The pod's host veth (the ruleset dispatches on it).
    pub host_veth: String,
    /// The ADD took a new address (not a repeated ADD of a running pod): the pod cannot have
    /// a connection yet, so its conntrack entries need no check when it is admitted.
    pub fresh: bool,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Admitted, AdmitError>>,
}

/// What the enforcement loop shows the server (`vpcnetd status`), kept current by the loop.
#[derive(Debug, Default)]
pub struct Shared {
    pub status: Mutex<PolicyStatus>,
    /// The namespaces that have a NetworkPolicy, as of the last batch of API events the loop
    /// took in (`None` until the policies are listed). An ADD in any other namespace is
    /// admitted by the server at once, without a round trip to the loop (which may be busy
    /// applying a ruleset).
    pub policy_namespaces: Mutex<Option<BTreeSet<String>>>,
}

impl Shared {
    /// Records the namespaces with a policy (`None`: not listed yet).
    pub fn set_policy_namespaces(&self, ns: Option<BTreeSet<String>>) {
        *self
            .policy_namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ns;
    }

    /// Whether `namespace` is known to have no policy.
    fn no_policy_in(&self, namespace: &str) -> bool {
        self.policy_namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|set| !set.contains(namespace))
    }
}

/// The server's handle on the enforcement loop.
#[derive(Debug, Clone)]
pub struct Gate {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

/// The loop's end of a [`Gate`].
#[derive(Debug)]
pub struct Inbox {
    pub rx: mpsc::UnboundedReceiver<Request>,
    pub shared: Arc<Shared>,
}

impl Gate {
    pub fn new() -> (Gate, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        (
            Gate {
                tx,
                shared: shared.clone(),
            },
            Inbox { rx, shared },
        )
    }

    /// The enforcement state for `vpcnetd status`; pod names only for root callers.
    pub fn status(&self, root: bool) -> PolicyStatus {
        let mut s = self
            .shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !root {
            s.isolated_pod_names = None;
        }
        s
    }

    /// Waits for the decision on pod `namespace/name` attached through `host_veth`.
    pub async fn admit(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        host_veth: &str,
        fresh: bool,
    ) -> Result<Admitted, AdmitError> {
        let (Some(namespace), Some(name)) = (namespace, name) else {
            return Ok(Admitted::NotSelected);
        };
        if self.shared.no_policy_in(namespace) {
            return Ok(Admitted::NotSelected);
        }
        let (reply, rx) = oneshot::channel();
        let req = Request {
            namespace: namespace.into(),
            name: name.into(),
            host_veth: host_veth.into(),
            fresh,
            deadline: Instant::now() + ADMIT_WAIT,
            reply,
        };
        self.tx.send(req).map_err(|_| AdmitError::Stopped)?;
        // The loop answers every request by its deadline; a dropped sender means it ended.
        rx.await.map_err(|_| AdmitError::Stopped)?
    }
}

/// The decision for `req` given the view and the ruleset in force (`None`: none applied by
/// this run yet). `last_error`: why the last apply failed, if it did.
pub fn decide(
    view: &View,
    in_force: Option<&NodePolicy>,
    last_error: Option<&str>,
    namespace: &str,
    name: &str,
    host_veth: &str,
) -> Decision {
    let pod = format!("{namespace}/{name}");
    if !view.synced_kind(Kind::Policies) {
        return Decision::Wait(AdmitError::NotSynced(Kind::Policies.name(), pod));
    }
    let policies: Vec<_> = view.policies_in(namespace).collect();
    if policies.is_empty() {
        return Decision::Admit(Admitted::NotSelected);
    }
    let Some(vp) = view.pod(namespace, name) else {
        if !view.synced_kind(Kind::Pods) {
            return Decision::Wait(AdmitError::NotSynced(Kind::Pods.name(), pod));
        }
        return Decision::Wait(AdmitError::UnknownPod(pod, policies.len()));
    };
    let selected = !vp.info.host_network
        && policies.iter().any(|np| {
            np.spec.as_ref().is_some_and(|s| {
                s.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector_matches(sel, &vp.info.labels))
            })
        });
    if !selected {
        return Decision::Admit(Admitted::NotSelected);
    }
    let isolated = in_force.is_some_and(|p| {
        p.pods.iter().any(|pp| {
            pp.host_veth == host_veth
                && pp.namespace == namespace
                && pp.name == name
                && (pp.ingress.is_some() || pp.egress.is_some())
        })
    });
    if isolated {
        return Decision::Admit(Admitted::Enforced);
    }
    let why = match (view.synced(), last_error) {
        (false, _) => {
            let missing = Kind::ALL
                .into_iter()
                .find(|k| !view.synced_kind(*k))
                .map_or("", Kind::name);
            format!(" (the view is not in sync: {missing} not listed)")
        }
        (true, Some(e)) => format!(" (the last apply failed: {e})"),
        (true, None) => String::new(),
    };
    Decision::Wait(AdmitError::NotApplied(pod, why))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::view::Event;
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;
    use vpcnet_policy::{compile, LocalPod};

    fn pod(ns: &str, name: &str, role: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"role": role}},
            "spec": {"containers": []},
        }))
        .unwrap()
    }

    fn np(ns: &str, name: &str, role: &str) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {"matchLabels": {"role": role}}, "policyTypes": ["Ingress"]},
        }))
        .unwrap()
    }

    fn local(ns: &str, name: &str) -> LocalPod {
        let key = vpcnet_pool::AllocKey {
            network: "vpcnet".into(),
            container_id: format!("cid-{name}"),
            ifname: "eth0".into(),
        };
        LocalPod::new(ns, name, "10.0.0.1".parse().unwrap(), &key)
    }

    #[tokio::test]
    async fn the_server_admits_namespaces_without_policies_without_the_loop() {
        let (gate, inbox) = Gate::new();
        // Not listed yet: only the loop can decide; it is gone here, so: fail closed.
        drop(inbox.rx);
        assert_eq!(
            gate.admit(Some("y"), Some("a"), "vpc0", true).await,
            Err(AdmitError::Stopped)
        );
        inbox
            .shared
            .set_policy_namespaces(Some(BTreeSet::from(["x".to_string()])));
        assert_eq!(
            gate.admit(Some("y"), Some("a"), "vpc0", true).await,
            Ok(Admitted::NotSelected)
        );
        assert_eq!(
            gate.admit(Some("x"), Some("a"), "vpc0", true).await,
            Err(AdmitError::Stopped),
            "a namespace with a policy goes to the loop"
        );
        assert_eq!(
            gate.admit(None, None, "vpc0", true).await,
            Ok(Admitted::NotSelected),
            "not a Kubernetes pod"
        );
    }

    #[test]
    fn decisions() {
        let mut v = View::default();
        let a = local("x", "a");
        let d = |v: &View, p: Option<&NodePolicy>, ns: &str, name: &str| {
            decide(v, p, None, ns, name, &local(ns, name).host_veth)
        };
        // Nothing listed: unknown, wait.
        assert!(matches!(
            d(&v, None, "x", "a"),
            Decision::Wait(AdmitError::NotSynced("networkpolicies", _))
        ));
        v.policies(Event::Listed(vec![np("x", "deny-db", "db")]));
        // A namespace without policies: admitted even before the pods are listed.
        assert_eq!(
            d(&v, None, "y", "a"),
            Decision::Admit(Admitted::NotSelected)
        );
        // One with policies, pods not listed: wait.
        assert!(matches!(
            d(&v, None, "x", "a"),
            Decision::Wait(AdmitError::NotSynced("pods", _))
        ));
        v.pods(Event::Listed(vec![pod("x", "web", "web")]));
        // Listed, but this pod is not there.
        assert!(matches!(
            d(&v, None, "x", "a"),
            Decision::Wait(AdmitError::UnknownPod(_, 1))
        ));
        // Known and not selected: admitted without an apply.
        assert_eq!(
            d(&v, None, "x", "web"),
            Decision::Admit(Admitted::NotSelected)
        );
        // Known and selected: only once the ruleset in force isolates its veth.
        v.pods(Event::Put(pod("x", "a", "db")));
        v.namespaces(Event::Listed(vec![serde_json::from_value::<Namespace>(
            json!({"metadata": {"name": "x"}}),
        )
        .unwrap()]));
        assert!(matches!(
            d(&v, None, "x", "a"),
            Decision::Wait(AdmitError::NotApplied(..))
        ));
        let without = compile(&v.cluster(), &[]);
        assert!(matches!(
            d(&v, Some(&without), "x", "a"),
            Decision::Wait(AdmitError::NotApplied(..))
        ));
        let with = compile(&v.cluster(), std::slice::from_ref(&a));
        assert_eq!(
            d(&v, Some(&with), "x", "a"),
            Decision::Admit(Admitted::Enforced)
        );
        let e = decide(
            &v,
            Some(&without),
            Some("nft said no"),
            "x",
            "a",
            &a.host_veth,
        );
        match e {
            Decision::Wait(e) => assert!(e.to_string().contains("nft said no"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
