//! The contract between the `vpcnet` plugin and the `vpcnetd` agent, and nothing else: both
//! binaries depend on it, neither on the other.
//!
//! * [`api`] — the versioned JSON protocol over the agent's unix socket, and the CNI error
//!   codes both sides speak.
//! * [`client`] — the plugin's blocking client for that protocol.
//! * [`inflight`] — the plugin's proof to the agent that an ADD is still running.
//! * [`codes`] — the CNI error codes, one enum for both binaries.
//! * [`attachment`] — what a pod attachment is on the host: host route, gateway.
//! * [`naming`] — veth names and MACs derived from the container ID.

pub mod api;
pub mod attachment;
pub mod client;
pub mod codes;
pub mod inflight;
pub mod naming;

pub use vpcnet_pool as pool;
