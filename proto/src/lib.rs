//! The contract between the `vpcnet` plugin and the `vpcnetd` agent, and nothing else: both
//! depend on it. (vpcnetd also links the plugin's commands, to run those the `vpcnet` front
//! hands it: [`front`].)
//!
//! * [`api`] — the versioned JSON protocol over the agent's unix socket, and the CNI error
//!   codes both sides speak.
//! * [`client`] — the plugin's blocking client for that protocol.
//! * [`inflight`] — the plugin's proof to the agent that an ADD is still running.
//! * [`codes`] — the CNI error codes, one enum for both binaries.
//! * [`attachment`] — what a pod attachment is on the host: host route, gateway.
//! * [`naming`] — veth names and MACs derived from the container ID.
//! * [`front`] — the `vpcnet` front's socket: a whole command handed to vpcnetd.

pub mod api;
pub mod attachment;
pub mod client;
pub mod codes;
pub mod front;
pub mod inflight;
pub mod naming;

pub use vpcnet_pool as pool;
