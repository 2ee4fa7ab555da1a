//! `vpcnetd` entry point: `run` (default), `check-config`, `status`, `install-cni` or
//! `rebuild-state`. The only place the process exits with a code of its choosing.

use clap::Parser;

use vpcnet_agent::cli::status;
use vpcnet_agent::config::{Cli, Command};
use vpcnet_agent::obs::log;
use vpcnet_agent::{self as agent, STATUS_TIMEOUT};
use vpcnet_proto::api::{Reply, Request};
use vpcnet_proto::client;

fn main() {
    let cli = Cli::parse();
    let unknown = vpcnet_agent::config::unknown_env_vars(std::env::vars().map(|(k, _)| k));
    let ignoring = || {
        format!(
            "ignoring environment variable(s) no vpcnetd flag reads: {} (a ConfigMap key with \
             a typo? `vpcnetd --help` lists each flag's variable)",
            unknown.join(", ")
        )
    };
    let code = match cli.command {
        // The log first, so even a refusal to start is a line in the chosen format.
        None | Some(Command::Run) => match log::init(&cli.run.log_level, cli.run.log_format) {
            Err(e) => {
                eprintln!("vpcnetd: {e}");
                1
            }
            Ok(()) => match warn_then_run(&unknown, ignoring, cli.run) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    1
                }
            },
        },
        Some(Command::CheckConfig) if !unknown.is_empty() => {
            eprintln!(
                "vpcnetd: unknown VPCNET_* variable(s): {}",
                unknown.join(", ")
            );
            1
        }
        Some(Command::CheckConfig) => match cli.run.validate() {
            Ok(()) => {
                println!("vpcnetd: configuration ok");
                0
            }
            Err(e) => {
                eprintln!("vpcnetd: {e}");
                1
            }
        },
        Some(Command::RebuildState) => match agent::rebuild_state(cli.run) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vpcnetd rebuild-state: {e}");
                1
            }
        },
        Some(Command::Uninstall(a)) => {
            agent::cli::uninstall::run(&cli.run, &a.cni_bin_dir, a.force)
        }
        Some(Command::SupportBundle { dir }) => agent::cli::bundle::run(&cli.run, dir.as_deref()),
        Some(Command::InstallCni(a)) => {
            agent::cli::install::run(a.plugin_src, a.cni_helpers_src, &a.cni_bin_dir)
        }
        Some(Command::Status { json }) => {
            match client::call(
                &cli.run.socket,
                Request::Status { allocations: true },
                STATUS_TIMEOUT,
            ) {
                Ok(Reply::Status(s)) => {
                    if json {
                        match serde_json::to_string_pretty(&s) {
                            Ok(j) => println!("{j}"),
                            Err(e) => eprintln!("vpcnetd status: {e}"),
                        }
                    } else {
                        print!("{}", status::render(&s));
                    }
                    if s.ready && s.can_assign {
                        0
                    } else {
                        2
                    }
                }
                Ok(Reply::Error { code, msg }) => {
                    eprintln!("vpcnetd status: error {code}: {msg}");
                    1
                }
                Ok(other) => {
                    eprintln!("vpcnetd status: unexpected reply {other:?}");
                    1
                }
                Err(e) => {
                    eprintln!("vpcnetd status: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}

/// `run`, after a warning about `unknown` variables in the log's format.
fn warn_then_run(
    unknown: &[String],
    message: impl FnOnce() -> String,
    args: vpcnet_agent::config::RunArgs,
) -> Result<(), agent::AgentError> {
    if !unknown.is_empty() {
        tracing::warn!("{}", message());
    }
    agent::run(args)
}
