//! NetworkPolicy enforcement (`--network-policy=true`, issue 13): the agent wiring around the
//! `vpcnet-policy` crate (compiler, renderer, nft apply). See docs/network-policy.md.
//!
//! * [`view`] — the in-memory view of Pods, Namespaces and NetworkPolicies (pure: the
//!   watches' events applied to it).

pub mod view;
