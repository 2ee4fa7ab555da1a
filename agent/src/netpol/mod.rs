//! NetworkPolicy enforcement (`--network-policy=true`, issue 13): the agent wiring around the
//! `vpcnet-policy` crate (compiler, renderer, nft apply). See docs/network-policy.md.
//!
//! * [`view`] — the in-memory view of Pods, Namespaces and NetworkPolicies (pure: the
//!   watches' events applied to it).
//! * [`watch`] — list+watch of one kind of object into the view's events (resume on
//!   resourceVersion, re-list on 410).
//! * [`admit`] — the ADD gate: no allow window (an ADD of a selected pod returns once its
//!   rules are in the kernel; fails closed when that cannot be known).
//! * [`enforce`] — the loop: the three watches into the view, compile, render, apply when
//!   the ruleset changed.

pub mod admit;
pub mod enforce;
pub mod view;
pub mod watch;
