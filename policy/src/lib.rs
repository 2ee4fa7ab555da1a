//! Kubernetes NetworkPolicy for vpcnet (issue 13), the engine's foundation:
//!
//! * [`model`]: the inputs (pods, namespaces, the NetworkPolicy objects, this node's pods);
//! * [`compile`]: the pure compiler, inputs -> per local pod, isolated directions and the
//!   allowed (peer, protocol, ports) pairs;
//! * [`render`]: compiled policy -> one nftables transaction replacing `table inet
//!   vpcnet-policy` (deterministic: same input, same bytes);
//! * [`apply`]: that transaction into the kernel, atomically.
//!
//! The agent wiring (watching the API, applying on change and before ADD returns, metrics)
//! builds on this. Design and the nftables decision: docs/network-policy.md.

pub mod apply;
pub mod compile;
pub mod model;
pub mod render;

pub use compile::{
    allows, compile, compile_for, may_name, Allow, ClusterView, NodePolicy, Peer, PodPolicy,
    PortMatch,
};
pub use model::{LocalPod, NamedPort, NamespaceInfo, PodInfo, Protocol};

#[cfg(test)]
mod tests;
