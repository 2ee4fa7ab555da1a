//! The agent's in-memory view of what NetworkPolicy reads from the API: every Pod (all
//! namespaces, all nodes: the peers), every Namespace and every NetworkPolicy. Pure: the
//! watches ([`super::watch`]) feed it [`Event`]s; it keeps only the policy-relevant part of
//! each object, so an update that changes nothing policy cares about (a status condition,
//! a resourceVersion, an annotation) is reported as no change and costs no recompile.
//!
//! Each kind is [`synced`](View::synced) once a LIST has filled it; a re-list (after `410
//! Gone`) replaces that kind whole ([`Event::Listed`]), dropping objects deleted meanwhile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vpcnet_policy::{ClusterView, NamespaceInfo, PodInfo};

/// What a watch saw of one kind of object.
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// ADDED or MODIFIED: the object as it is now.
    Put(K),
    /// DELETED (the object's last state).
    Deleted(K),
    /// A full LIST: exactly these exist now.
    Listed(Vec<K>),
}

/// The three kinds, for [`View::synced_kind`] and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pods,
    Namespaces,
    Policies,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pods, Kind::Namespaces, Kind::Policies];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Policies => "networkpolicies",
        }
    }
}

/// A pod as the view keeps it: what the compiler reads, plus the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewPod {
    pub info: PodInfo,
    /// `spec.nodeName` (`None` while unscheduled).
    pub node: Option<String>,
}

/// `namespace/name` of a namespaced object.
type Key = (String, String);

#[derive(Debug, Default, Clone)]
pub struct View {
    pods: BTreeMap<Key, ViewPod>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<Key, NetworkPolicy>,
    synced: [bool; 3],
}

fn namespaced_key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The policy-relevant part of a NetworkPolicy: namespace, name and spec (the compiler reads
/// nothing else), so a metadata-only update compares equal.
fn policy_core(np: &NetworkPolicy) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: np.metadata.namespace.clone(),
            name: np.metadata.name.clone(),
            ..ObjectMeta::default()
        },
        spec: np.spec.clone(),
    }
}

fn view_pod(pod: &Pod) -> Option<ViewPod> {
    Some(ViewPod {
        info: PodInfo::from_k8s(pod)?,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    })
}

/// Applies `ev` to `map` (objects turned into `(key, value)` by `conv`, which leaves out
/// the malformed); returns whether the map changed.
fn apply<K, Q: Ord + Clone, V: PartialEq>(
    map: &mut BTreeMap<Q, V>,
    ev: Event<K>,
    conv: impl Fn(&K) -> Option<(Q, V)>,
) -> bool {
    match ev {
        Event::Put(o) => match conv(&o) {
            Some((k, v)) if map.get(&k) != Some(&v) => {
                map.insert(k, v);
                true
            }
            _ => false,
        },
        Event::Deleted(o) => match conv(&o) {
            Some((k, _)) => map.remove(&k).is_some(),
            None => false,
        },
        Event::Listed(items) => {
            let new: BTreeMap<Q, V> = items.iter().filter_map(&conv).collect();
            let changed = new.len() != map.len()
                || new
                    .iter()
                    .zip(map.iter())
                    .any(|((ka, va), (kb, vb))| ka != kb || va != vb);
            *map = new;
            changed
        }
    }
}

impl View {
    /// Applies a pod event; whether the view changed.
    pub fn pods(&mut self, ev: Event<Pod>) -> bool {
        self.mark_synced(Kind::Pods, &ev);
        apply(&mut self.pods, ev, |p| {
            Some((namespaced_key(&p.metadata)?, view_pod(p)?))
        })
    }

    /// Applies a namespace event; whether the view changed.
    pub fn namespaces(&mut self, ev: Event<Namespace>) -> bool {
        self.mark_synced(Kind::Namespaces, &ev);
        apply(&mut self.namespaces, ev, |n| {
            let info = NamespaceInfo::from_k8s(n)?;
            Some((info.name.clone(), info))
        })
    }

    /// Applies a NetworkPolicy event; whether the view changed.
    pub fn policies(&mut self, ev: Event<NetworkPolicy>) -> bool {
        self.mark_synced(Kind::Policies, &ev);
        apply(&mut self.policies, ev, |np| {
            Some((namespaced_key(&np.metadata)?, policy_core(np)))
        })
    }

    fn mark_synced<K>(&mut self, kind: Kind, ev: &Event<K>) {
        if matches!(ev, Event::Listed(_)) {
            self.synced[kind as usize] = true;
        }
    }

    /// Whether `kind` has been listed at least once.
    pub fn synced_kind(&self, kind: Kind) -> bool {
        self.synced[kind as usize]
    }

    /// Whether all three kinds have been listed: only then may a compiled ruleset be applied
    /// (a view missing the policies would allow everything; one missing the pods would deny
    /// every peer).
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// How many NetworkPolicy objects the view holds.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// The NetworkPolicy objects of `namespace`.
    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> {
        self.policies
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .map(|(_, np)| np)
    }

    /// The namespaces that have at least one NetworkPolicy (`None` before the policies are
    /// listed).
    pub fn policy_namespaces(&self) -> Option<std::collections::BTreeSet<String>> {
        self.synced_kind(Kind::Policies)
            .then(|| self.policies.keys().map(|(ns, _)| ns.clone()).collect())
    }

    /// A NetworkPolicy by namespace and name.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<&NetworkPolicy> {
        self.policies
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// A namespace's labels (`None`: not seen).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&vpcnet_policy::model::Labels> {
        self.namespaces.get(namespace).map(|n| &n.labels)
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&ViewPod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    /// What the compiler reads (sorted by key: the same view gives the same input).
    pub fn cluster(&self) -> ClusterView {
        ClusterView {
            pods: self.pods.values().map(|p| p.info.clone()).collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels, "resourceVersion": "1"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"podIP": ip, "phase": "Running"},
        }))
        .unwrap()
    }

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn np(ns: &str, name: &str, rv: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "resourceVersion": rv,
                         "annotations": {"a": rv}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn synced_only_after_every_kind_is_listed() {
        let mut v = View::default();
        assert!(!v.synced());
        v.pods(Event::Put(pod("x", "a", json!({}), None)));
        assert!(!v.synced_kind(Kind::Pods), "a watch event is not a list");
        v.pods(Event::Listed(vec![]));
        v.namespaces(Event::Listed(vec![]));
        assert!(!v.synced());
        v.policies(Event::Listed(vec![]));
        assert!(v.synced());
    }

    #[test]
    fn pods_put_update_delete_report_only_policy_relevant_changes() {
        let mut v = View::default();
        assert!(v.pods(Event::Put(pod("x", "a", json!({"pod": "a"}), None))));
        // Same object again (a resync, a status change policy ignores): no change.
        assert!(!v.pods(Event::Put(pod("x", "a", json!({"pod": "a"}), None))));
        // The IP arrives.
        assert!(v.pods(Event::Put(pod(
            "x",
            "a",
            json!({"pod": "a"}),
            Some("10.0.0.5")
        ))));
        let p = v.pod("x", "a").unwrap();
        assert_eq!(p.info.ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(
            p.info.resolve_port("http", vpcnet_policy::Protocol::Tcp),
            Some(8080)
        );
        // Relabelled.
        assert!(v.pods(Event::Put(pod(
            "x",
            "a",
            json!({"pod": "b"}),
            Some("10.0.0.5")
        ))));
        assert_eq!(v.cluster().pods[0].labels["pod"], "b");
        // Deleted; deleting again changes nothing.
        assert!(v.pods(Event::Deleted(pod("x", "a", json!({}), None))));
        assert!(!v.pods(Event::Deleted(pod("x", "a", json!({}), None))));
        assert_eq!(v.pod_count(), 0);
        // Malformed (no namespace): ignored.
        let mut bad = pod("x", "a", json!({}), None);
        bad.metadata.namespace = None;
        assert!(!v.pods(Event::Put(bad)));
        assert_eq!(v.pod_count(), 0);
    }

    #[test]
    fn a_relist_replaces_the_kind_and_drops_what_was_deleted_meanwhile() {
        let mut v = View::default();
        v.pods(Event::Put(pod("x", "a", json!({}), Some("10.0.0.1"))));
        v.pods(Event::Put(pod("x", "b", json!({}), Some("10.0.0.2"))));
        // Same content listed: no change.
        assert!(!v.pods(Event::Listed(vec![
            pod("x", "a", json!({}), Some("10.0.0.1")),
            pod("x", "b", json!({}), Some("10.0.0.2")),
        ])));
        // b was deleted while the watch was away; c was created.
        assert!(v.pods(Event::Listed(vec![
            pod("x", "a", json!({}), Some("10.0.0.1")),
            pod("y", "c", json!({}), Some("10.0.0.3")),
        ])));
        let names: Vec<_> = v
            .cluster()
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(names, ["x/a", "y/c"]);
        // Same count, different key.
        assert!(v.pods(Event::Listed(vec![
            pod("x", "a", json!({}), Some("10.0.0.1")),
            pod("y", "d", json!({}), Some("10.0.0.3")),
        ])));
    }

    #[test]
    fn namespaces_get_the_metadata_name_label() {
        let mut v = View::default();
        assert!(v.namespaces(Event::Put(ns("x", json!({"team": "a"})))));
        assert!(!v.namespaces(Event::Put(ns("x", json!({"team": "a"})))));
        let c = v.cluster();
        assert_eq!(c.namespaces[0].labels["kubernetes.io/metadata.name"], "x");
        assert!(v.namespaces(Event::Put(ns("x", json!({"team": "b"})))));
        assert!(v.namespaces(Event::Deleted(ns("x", json!({})))));
        assert_eq!(v.namespace_count(), 0);
    }

    #[test]
    fn policy_metadata_changes_are_not_changes() {
        let mut v = View::default();
        let deny = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
        assert!(v.policies(Event::Put(np("x", "deny", "1", deny.clone()))));
        // Only resourceVersion and annotations differ.
        assert!(!v.policies(Event::Put(np("x", "deny", "2", deny.clone()))));
        assert!(v.policies(Event::Put(np(
            "x",
            "deny",
            "3",
            json!({"podSelector": {}, "policyTypes": ["Egress"]})
        ))));
        assert_eq!(v.policy_count(), 1);
        let c = v.cluster();
        assert_eq!(c.policies[0].metadata.resource_version, None);
        assert_eq!(c.policies[0].metadata.namespace.as_deref(), Some("x"));
        assert!(v.policies(Event::Deleted(np("x", "deny", "4", deny))));
        assert_eq!(v.policy_count(), 0);
    }

    #[test]
    fn the_view_compiles() {
        let mut v = View::default();
        v.namespaces(Event::Listed(vec![ns("x", json!({}))]));
        v.pods(Event::Listed(vec![
            pod("x", "a", json!({"pod": "a"}), Some("10.0.0.1")),
            pod("x", "b", json!({"pod": "b"}), Some("10.0.0.2")),
        ]));
        v.policies(Event::Listed(vec![np(
            "x",
            "deny",
            "1",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}),
        )]));
        let key = vpcnet_pool::AllocKey {
            network: "vpcnet".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let local = [vpcnet_policy::LocalPod::new(
            "x",
            "a",
            "10.0.0.1".parse().unwrap(),
            &key,
        )];
        let compiled = vpcnet_policy::compile(&v.cluster(), &local);
        assert_eq!(compiled.pods.len(), 1);
        assert_eq!(compiled.pods[0].ingress.as_ref().map(|s| s.len()), Some(0));
        assert_eq!(compiled.pods[0].policies, ["x/deny"]);
    }
}
