//! The contract between the `vpcnet` plugin and the `vpcnetd` agent, and nothing else: both
//! binaries depend on it, neither on the other.
//!
//! * [`api`] — the versioned JSON protocol over the agent's unix socket, and the CNI error
//!   codes both sides speak.
//! * [`client`] — the plugin's blocking client for that protocol.
//! * [`inflight`] — the plugin's proof to the agent that an ADD is still running.
//! * [`naming`] — what an attachment looks like on the host: veth names and MACs.

pub mod api;
pub mod client;
pub mod inflight;
pub mod naming;

pub use vpcnet_pool as pool;
