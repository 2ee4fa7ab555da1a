//! vpcnet's node IPAM.
//!
//! * [`pool`] — the pure allocator and warm-pool policy: a function of (state, config, now),
//!   no I/O, no clock. Property-tested without root.
//! * [`api`] — the versioned JSON protocol between the `vpcnet` plugin and `vpcnetd`.
//! * [`client`] — the plugin's blocking client for that protocol.
//! * [`inflight`] — the plugin's proof to the agent that an ADD is still running.
//! * the rest is the `vpcnetd` agent: a thin async shell around the pool.

pub mod agent;
pub mod api;
pub mod client;
pub mod inflight;
pub mod naming;
pub mod pool;
