//! `vpcnet-standalone`: the CNI plugin as a process of its own. Reads CNI_* from the
//! environment and the netconf from stdin, does the verb ([`vpcnet::run`]), prints the result
//! (or the error result) on stdout. The runtime execs the `vpcnet` front (`front/`), which
//! hands the command to vpcnetd and execs this binary whenever vpcnetd does not take it.
//!
//! No Rust start-up (`no_main`, outside tests): the runtime execs the plugin for every pod
//! event, and std's `lang_start` costs ~85 µs of each exec for things a one-shot process does
//! not need (reading `/proc/self/maps` for the main thread's stack guard, the handlers that
//! report a stack overflow). [`main`] does the part that matters here itself: standard
//! descriptors checked open, SIGPIPE ignored. (docs/benchmarks.md, issue 14 round 5.)
#![cfg_attr(not(test), no_main)]

use std::io::Write;

/// The process entry, called by the C runtime's start code (`no_main`).
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    start_up();
    let code = run();
    std::process::exit(code)
}

/// Under `cargo test` the harness has the entry; this keeps `run` reachable for the lints.
#[cfg(test)]
fn main() {
    std::process::exit(run())
}

/// What std's start-up would have done that this plugin relies on: descriptors 0–2 open
/// (a runtime that closed one must not have the netlink socket or the agent connection land
/// on it and receive the result), and SIGPIPE ignored (a closed pipe or socket is an error
/// to handle, not a kill).
#[cfg(not(test))]
fn start_up() {
    use std::os::fd::{AsFd, BorrowedFd, IntoRawFd};
    // In order: a closed one is the lowest free descriptor, so /dev/null lands on it.
    fn open_if_closed(fd: BorrowedFd<'_>) {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = f.into_raw_fd();
            }
        }
    }
    open_if_closed(std::io::stdin().as_fd());
    open_if_closed(std::io::stdout().as_fd());
    open_if_closed(std::io::stderr().as_fd());
    // SAFETY: SIG_IGN installs no handler: no code of ours runs on a signal, so nothing
    // async-signal-unsafe can happen; the process is single-threaded at this point.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
}

/// CNI convention (libcni's `skel`): a plugin run without CNI_COMMAND, e.g. by hand, says
/// what it is and which CNI versions it speaks, on stderr, and exits 0.
fn about() -> i32 {
    eprintln!(
        "vpcnet CNI plugin v{}: VPC-style pod networking, run by the container runtime \
         with vpcnetd on the node",
        env!("CARGO_PKG_VERSION")
    );
    eprintln!(
        "CNI protocol versions supported: {}",
        vpcnet::SUPPORTED_VERSIONS.join(", ")
    );
    0
}

fn run() -> i32 {
    let get = |k: &str| std::env::var(k).ok();
    if get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        return about();
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = vpcnet::run(vpcnet::Invocation {
        get: &get,
        stdin: &mut std::io::stdin().lock(),
        stdout: &mut out,
        pod_netns: None,
        agent: None,
    });
    let _ = out.flush();
    code
}
