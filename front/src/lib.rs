//! The pure parts of `vpcnet`'s no-libc front, and its system calls.
//!
//! # Why a front
//!
//! The container runtime execs the CNI plugin `vpcnet` for every pod event. As a Rust std
//! binary (static glibc) every exec costs ~0.5 ms before the plugin does anything, ~0.35 ms of
//! it glibc's start alone: on this VM `cpuid` traps to the hypervisor and glibc's start runs
//! 43 of them (docs/benchmarks.md, "Pod-start latency, round 8 (issue 14)"). A process without
//! libc starts in ~0.14 ms. So `vpcnet` is now a tiny `#![no_std]` binary with its own
//! `_start` (`src/main.rs`) that hands the request to the node agent `vpcnetd` over the unix
//! socket `<socket>.exec`, where the agent runs the command in-process and answers with the
//! exit code and stdout. Whenever the agent does not take the request (not running, declines,
//! dies, speaks something else), and for every command it does not forward, the front
//! `execve`s the full plugin installed beside it as `vpcnet-standalone`, with the original
//! argv, environment and stdin (replayed through a memfd when the front has read it), so
//! behaviour never depends on the agent being up.
//!
//! The wire format is in [`wire`]; the netconf scan for the `socket` field in [`scan`].
//!
//! Everything here compiles with and without std: the binary uses it `no_std`, and
//! `cargo test` tests it on the host with std. `x86_64` Linux only.

#![cfg_attr(not(test), no_std)]

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("vpcnet-front is x86_64 Linux only (raw system calls)");

pub mod env;
pub mod path;
pub mod scan;
pub mod sys;
pub mod wire;

/// The largest netconf the front forwards (1 MiB); it reads one byte more to tell.
pub const STDIN_LIMIT: usize = 1 << 20;
/// The largest environment the front forwards: all `KEY=VALUE\0` strings together.
pub const ENV_LIMIT: usize = 64 << 10;
