//! The compiler's inputs: what the agent knows of the cluster (pods with their addresses,
//! labels and named ports; namespaces with their labels; the NetworkPolicy objects as the API
//! server returns them) and of its own node (the pods attached here and their host veths).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Namespace, Pod};

pub type Labels = BTreeMap<String, String>;

/// The L4 protocols a NetworkPolicyPort may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's spelling (`TCP`, `UDP`, `SCTP`); `None` for anything else.
    pub fn from_api(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// nftables' `inet_proto` name.
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A container port with a name (`spec.containers[].ports[]`): what a named NetworkPolicyPort
/// resolves against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod anywhere in the cluster, as far as policy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The IPv4 address of `status.podIP`/`podIPs`. `None` while the pod has none yet.
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address of `status.podIPs` (dual-stack pods), if any.
    pub ip6: Option<Ipv6Addr>,
    pub named_ports: Vec<NamedPort>,
    /// Host-network pods are neither selected by policies nor matched as peers (their address
    /// is the node's; upstream leaves them undefined and implementations ignore them).
    pub host_network: bool,
    /// `Succeeded` or `Failed`: the address may already belong to another pod.
    pub terminated: bool,
}

impl PodInfo {
    pub fn new(namespace: &str, name: &str, labels: Labels, ip: Option<Ipv4Addr>) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            labels,
            ip,
            ip6: None,
            named_ports: Vec::new(),
            host_network: false,
            terminated: false,
        }
    }

    /// The policy-relevant part of an API Pod; `None` without namespace or name.
    pub fn from_k8s(pod: &Pod) -> Option<PodInfo> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .or_else(|| {
                status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .find_map(|p| p.ip.parse::<Ipv4Addr>().ok())
            });
        let ip6 = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .or_else(|| {
                status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .find_map(|p| p.ip.parse::<Ipv6Addr>().ok())
            });
        let mut named_ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.iter().flatten() {
                let (Some(name), Ok(port)) = (p.name.as_ref(), u16::try_from(p.container_port))
                else {
                    continue;
                };
                let Some(protocol) = Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))
                else {
                    continue;
                };
                named_ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port,
                });
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Some(PodInfo {
            namespace,
            name,
            labels,
            ip,
            ip6,
            named_ports,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
        })
    }

    /// The number behind a named port with this protocol, if the pod declares one.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceInfo {
    pub fn new(name: &str, labels: Labels) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            labels,
        }
    }

    /// `None` without a name. The API server labels every namespace
    /// `kubernetes.io/metadata.name=<name>`; added here when missing so selectors on it work
    /// with any source.
    pub fn from_k8s(ns: &Namespace) -> Option<NamespaceInfo> {
        let name = ns.metadata.name.clone()?;
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| name.clone());
        Some(NamespaceInfo { name, labels })
    }
}

/// A pod attached on this node: the agent knows its address and its host veth before the API
/// does (ADD has not returned yet), so these win over the API's `status.podIP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    /// Its IPv4 address, from the node's IPv4 pool (`None`: an IPv6-only pod).
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (dual-stack and IPv6-only pods), from the node's IPv6 pool.
    pub ip6: Option<Ipv6Addr>,
    /// The host end of the pod's veth, named by [`vpcnet_proto::naming`].
    pub host_veth: String,
}

impl LocalPod {
    /// The local pod of the attachment `key` (its host veth name derived the way the plugin
    /// named it).
    pub fn new(namespace: &str, name: &str, ip: Ipv4Addr, key: &vpcnet_pool::AllocKey) -> Self {
        LocalPod {
            namespace: namespace.into(),
            name: name.into(),
            ip: Some(ip),
            ip6: None,
            host_veth: vpcnet_proto::naming::key_host_veth(key),
        }
    }

    /// The local pod of an IPv6-only attachment `key` (an IPv6-only node: no IPv4 address).
    pub fn ipv6_only(
        namespace: &str,
        name: &str,
        ip6: Ipv6Addr,
        key: &vpcnet_pool::AllocKey,
    ) -> Self {
        LocalPod {
            namespace: namespace.into(),
            name: name.into(),
            ip: None,
            ip6: Some(ip6),
            host_veth: vpcnet_proto::naming::key_host_veth(key),
        }
    }

    /// The same pod with its IPv6 address (a dual-stack attachment).
    pub fn with_ip6(mut self, ip6: Option<Ipv6Addr>) -> Self {
        self.ip6 = ip6;
        self
    }
}
