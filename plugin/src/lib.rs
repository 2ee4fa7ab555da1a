//! The vpcnet CNI plugin's commands: ADD, DEL, CHECK, GC, STATUS and VERSION, from the CNI_*
//! environment and the netconf on stdin to the result on stdout.
//!
//! Two callers run them, with the same code and the same results:
//! * `vpcnet-standalone` (`src/main.rs`), a process of its own that the `vpcnet` front
//!   (`front/`, what the runtime execs) falls back to whenever vpcnetd does not take the
//!   command — agent down, another network namespace, a caller that is not root;
//! * vpcnetd itself (`vpcnet_agent::exec`), which runs the command the front forwarded on a
//!   thread of its own, so that a pod event pays no exec of a glibc program (issue 14).
//!
//! [`run`] therefore reads nothing from the process (its environment, stdin, stdout) and keeps
//! nothing in it between commands: everything comes through [`Invocation`], and what a command
//! keeps (the agent connection for its report) is per thread.

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
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::commands::Given;
use crate::env::Command;
use crate::error::CniError;
use crate::log::Log;
use crate::netconf::LogLevel;
use vpcnet_proto::api::ObservedOp;

pub use crate::agent::LocalAgent;
pub use crate::commands::settle_kept;
pub use crate::version::SUPPORTED as SUPPORTED_VERSIONS;

/// One command as the runtime gave it.
pub struct Invocation<'a> {
    /// The runtime's environment (CNI_COMMAND, CNI_CONTAINERID, …).
    pub get: &'a dyn Fn(&str) -> Option<String>,
    /// The netconf.
    pub stdin: &'a mut dyn Read,
    /// Where the result (or the error result) goes.
    pub stdout: &'a mut dyn Write,
    /// CNI_NETNS already opened by the caller (the front opens it in the runtime's mount
    /// namespace and passes the descriptor): used instead of opening the path. The path is
    /// still what is recorded and reported.
    pub pod_netns: Option<OwnedFd>,
    /// vpcnetd, when it runs the command itself: requests for its socket go straight to it
    /// ([`LocalAgent`]); `None` in `vpcnet-standalone`.
    pub agent: Option<Arc<dyn LocalAgent>>,
}

impl std::fmt::Debug for Invocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("pod_netns", &self.pod_netns)
            .finish_non_exhaustive()
    }
}

fn print(out: &mut dyn Write, v: &Value) -> bool {
    serde_json::to_writer(&mut *out, v).is_ok()
        && out.write_all(b"\n").is_ok()
        && out.flush().is_ok()
}

fn fail(out: &mut dyn Write, cni_version: &str, err: &CniError) -> i32 {
    print(out, &result::error_result(cni_version, err));
    1
}

/// Runs one command; returns the process exit code the runtime must see (0 or 1).
pub fn run(inv: Invocation<'_>) -> i32 {
    let Invocation {
        get,
        stdin,
        stdout,
        pod_netns,
        agent,
    } = inv;
    let _local = agent::enter_local(agent);
    let command = match env::command(get) {
        Ok(c) => c,
        Err(e) => return fail(stdout, version::CURRENT, &e),
    };
    if command == Command::Version {
        return if print(stdout, &version::version_output()) {
            0
        } else {
            1
        };
    }
    let stdin = match read_stdin(stdin) {
        Ok(s) => s,
        Err(e) => return fail(stdout, version::CURRENT, &e),
    };
    let conf = match netconf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = netconf::peek_version(&stdin)
                .filter(|v| version::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| version::CURRENT.to_string());
            return fail(stdout, &v, &e);
        }
    };
    let log = Log {
        file: &conf.log_file,
        level: conf.log_level,
        max_bytes: conf.log_max_bytes,
    };
    let given = Given {
        pod_netns: pod_netns.as_ref(),
        stall_after_assign_ms: stall_after_assign_ms(get),
    };
    let started = Instant::now();
    let outcome = dispatch(command, &conf, get, &log, &given);
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
                    if print(stdout, &v) {
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
            fail(stdout, &conf.cni_version, &e)
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
    agent::forget();
    code
}

/// Test builds only (`--features failpoints`): `VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS=N`
/// stalls an ADD for N ms between the agent's reply and the kernel work, as a paused or
/// starved runtime would. Release builds have no such hook.
#[cfg(feature = "failpoints")]
fn stall_after_assign_ms(get: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
    get("VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS").and_then(|v| v.parse::<u64>().ok())
}

#[cfg(not(feature = "failpoints"))]
fn stall_after_assign_ms(_: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
    None
}

/// Reads the netconf, at most [`limits::STDIN`] bytes: one byte more is refused (code 7)
/// without reading further, so memory stays bounded whatever the runtime sends.
fn read_stdin(input: &mut dyn Read) -> Result<Vec<u8>, CniError> {
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
    given: &Given<'_>,
) -> Result<Option<Value>, CniError> {
    match command {
        Command::Add => {
            let env = env::container(get, true)?;
            commands::add::run(conf, &env, log, given).map(Some)
        }
        Command::Del => {
            let env = env::container(get, false)?;
            commands::del::run(conf, &env, log)?;
            // Chained: pass the previous result through.
            Ok(None)
        }
        Command::Check => {
            let env = env::container(get, true)?;
            commands::check::run(conf, &env, given).map(|()| None)
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
            read_stdin(&mut &ok[..]).map(|v| v.len()).ok(),
            Some(limits::STDIN)
        );
        let big = vec![b' '; limits::STDIN + 1];
        let e = read_stdin(&mut &big[..]).expect_err("over the limit");
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("1 MiB"), "{e}");
    }
}
