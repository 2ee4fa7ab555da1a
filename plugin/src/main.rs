//! `vpcnet`: the CNI plugin binary. Reads CNI_* from the environment and the netconf from
//! stdin, does the verb, prints the result (or the error result) on stdout.
//!
//! No Rust start-up (`no_main`, outside tests): the runtime execs the plugin for every pod
//! event, and std's `lang_start` costs ~85 µs of each exec for things a one-shot process does
//! not need (reading `/proc/self/maps` for the main thread's stack guard, the handlers that
//! report a stack overflow). [`main`] does the part that matters here itself: standard
//! descriptors checked open, SIGPIPE ignored. (docs/benchmarks.md, issue 14 round 5.)
#![cfg_attr(not(test), no_main)]

mod agent;
mod commands;
mod dataplane;
mod env;
mod error;
mod limits;
mod log;
mod netconf;
mod result;
mod version;

use std::io::{Read, Write};
use std::time::Instant;

use serde_json::Value;

use crate::env::Command;
use crate::error::CniError;
use crate::log::Log;
use crate::netconf::LogLevel;
use vpcnet_proto::api::ObservedOp;

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

fn print(v: &Value) -> bool {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).is_ok()
        && out.write_all(b"\n").is_ok()
        && out.flush().is_ok()
}

fn fail(cni_version: &str, err: &CniError) -> i32 {
    print(&result::error_result(cni_version, err));
    1
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
        version::SUPPORTED.join(", ")
    );
    0
}

fn run() -> i32 {
    let get = |k: &str| std::env::var(k).ok();
    if get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        return about();
    }
    let command = match env::command(&get) {
        Ok(c) => c,
        Err(e) => return fail(version::CURRENT, &e),
    };
    if command == Command::Version {
        return if print(&version::version_output()) {
            0
        } else {
            1
        };
    }
    let stdin = match read_stdin(std::io::stdin().lock()) {
        Ok(s) => s,
        Err(e) => return fail(version::CURRENT, &e),
    };
    let conf = match netconf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = netconf::peek_version(&stdin)
                .filter(|v| version::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| version::CURRENT.to_string());
            return fail(&v, &e);
        }
    };
    let log = Log {
        file: &conf.log_file,
        level: conf.log_level,
        max_bytes: conf.log_max_bytes,
    };
    let started = Instant::now();
    let outcome = dispatch(command, &conf, &get, &log);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let id = get("CNI_CONTAINERID").unwrap_or_default();
    let code = match outcome {
        Ok(out) => {
            // The runtime polls STATUS every few seconds: its success is no news.
            let level = if command == Command::Status {
                LogLevel::Debug
            } else {
                LogLevel::Info
            };
            log.write(
                level,
                format_args!("{command:?} container={id} ok in {ms:.2} ms"),
            );
            match out {
                Some(v) => {
                    if print(&v) {
                        0
                    } else {
                        1
                    }
                }
                None => 0,
            }
        }
        Err(e) => {
            log.write(
                LogLevel::Error,
                format_args!(
                    "{command:?} container={id} failed in {ms:.2} ms: code {} {e}",
                    e.code()
                ),
            );
            fail(&conf.cni_version, &e)
        }
    };
    // What the runtime saw, for the agent's metrics: after the result is out, one-way.
    let verb = match command {
        Command::Add => Some(ObservedOp::Add),
        Command::Del => Some(ObservedOp::Del),
        _ => None,
    };
    if let Some(verb) = verb {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        agent::observe(&conf.socket, verb, micros, code == 0);
    }
    code
}

/// Reads the netconf, at most [`limits::STDIN`] bytes: one byte more is refused (code 7)
/// without reading further, so memory stays bounded whatever the runtime sends.
fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut stdin = Vec::new();
    let cap = u64::try_from(limits::STDIN)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    input
        .take(cap)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::Io(format!("reading stdin: {e}")))?;
    if stdin.len() > limits::STDIN {
        return Err(CniError::StdinTooLarge {
            limit: limits::STDIN,
        });
    }
    Ok(stdin)
}

fn dispatch(
    command: Command,
    conf: &netconf::NetConf,
    get: &dyn Fn(&str) -> Option<String>,
    log: &Log<'_>,
) -> Result<Option<Value>, CniError> {
    match command {
        Command::Add => {
            let env = env::container(get, true)?;
            commands::add::run(conf, &env, log).map(Some)
        }
        Command::Del => {
            let env = env::container(get, false)?;
            commands::del::run(conf, &env, log)?;
            // Chained: pass the previous result through.
            Ok(None)
        }
        Command::Check => {
            let env = env::container(get, true)?;
            commands::check::run(conf, &env).map(|()| None)
        }
        Command::Gc => commands::gc::run(conf).map(|_| None),
        Command::Status => commands::status::run(conf).map(|()| None),
        Command::Version => Ok(Some(version::version_output())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_bounded() {
        let ok = vec![b' '; limits::STDIN];
        assert_eq!(
            read_stdin(&ok[..]).map(|v| v.len()).ok(),
            Some(limits::STDIN)
        );
        let big = vec![b' '; limits::STDIN + 1];
        let e = read_stdin(&big[..]).expect_err("over the limit");
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("1 MiB"), "{e}");
    }
}
