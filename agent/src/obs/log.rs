//! The agent's own log: `tracing` events to stderr, as text or JSON lines (`--log-format`),
//! filtered by `--log-level`.
//!
//! `--log-level` is a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a list of
//! `EnvFilter` directives (`info,vpcnet_agent::loops=debug`). The libraries under the
//! datastores (kube, tower, hyper, h2, tonic, etcd-client, rustls) and the netlink crates talk
//! a lot at info: at `info` they are held to `warn`, so the log is the agent's. At `debug`
//! their diagnostics show (an operator debugging the datastore sees kube's and tonic's
//! requests), except the netlink crates' per-message chatter, held to `info`; `trace` shows
//! everything. A directive naming one of these crates itself (`info,kube=debug`) is kept as
//! given. Without a bare level in the list, the rest logs at `info`.
//!
//! `log` records (rustls and the netlink crates use `log`, not `tracing`) become events too.

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `<time>  <LEVEL> <target>: <message> <field>=<value>…`
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Held to `warn` at `info`, free at `debug`.
const DATASTORE_CRATES: [&str; 12] = [
    "kube",
    "kube_client",
    "tower",
    "tower_http",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "h2",
    "tonic",
    "etcd_client",
    "rustls",
    "tokio_rustls",
];
/// Held to `warn` at `info` and to `info` at `debug`; free at `trace`.
const NETLINK_CRATES: [&str; 5] = [
    "netlink_proto",
    "netlink_sys",
    "netlink_packet_core",
    "netlink_packet_route",
    "rtnetlink",
];

fn level(s: &str) -> Option<&'static str> {
    LEVELS
        .iter()
        .find(|l| l.eq_ignore_ascii_case(s.trim()))
        .copied()
}

/// The full directive list `--log-level spec` stands for, or why it is not one (the message
/// names neither the flag nor the value: the caller does).
pub fn directives(spec: &str) -> Result<String, String> {
    let mut base = None;
    let mut named = Vec::new();
    let mut parts = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            None => match level(part) {
                Some(l) => base = Some(l),
                None => {
                    return Err(format!(
                        "{part:?} is neither a level ({}) nor a directive like \
                         vpcnet_agent::loops=debug",
                        LEVELS.join(", ")
                    ))
                }
            },
            Some((target, l)) => {
                let target = target.trim();
                if target.is_empty() || level(l).is_none() {
                    return Err(format!(
                        "{part:?} is not a directive like vpcnet_agent::loops=debug (levels: {})",
                        LEVELS.join(", ")
                    ));
                }
                named.push(target.to_string());
                parts.push(part.to_string());
            }
        }
    }
    let base = base.unwrap_or(if parts.is_empty() { "" } else { "info" });
    if base.is_empty() {
        return Err("is empty (a level or directives, e.g. info)".into());
    }
    let hold = |crates: &[&str], to: &str, out: &mut Vec<String>| {
        for c in crates {
            if !named.iter().any(|n| n == c) {
                out.push(format!("{c}={to}"));
            }
        }
    };
    let mut out = vec![base.to_string()];
    match base {
        "info" => {
            hold(&DATASTORE_CRATES, "warn", &mut out);
            hold(&NETLINK_CRATES, "warn", &mut out);
        }
        "debug" => hold(&NETLINK_CRATES, "info", &mut out),
        _ => {}
    }
    out.extend(parts);
    let joined = out.join(",");
    filter(&joined)?;
    Ok(joined)
}

fn filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(directives)
        .map_err(|e| e.to_string())
}

/// Installs the process's subscriber: events at `spec` and above, to stderr, as `format`.
pub fn init(spec: &str, format: LogFormat) -> Result<(), String> {
    let env_filter = directives(spec)
        .and_then(|d| filter(&d))
        .map_err(|e| format!("--log-level {spec:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    }
    .map_err(|e| format!("setting up the log: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_expand_and_hold_the_libraries() {
        let info = directives("info").expect("info");
        assert!(info.starts_with("info,"), "{info}");
        assert!(info.contains(",kube=warn,"), "{info}");
        assert!(info.contains(",etcd_client=warn,"), "{info}");
        assert!(info.contains(",netlink_proto=warn"), "{info}");
        let debug = directives("DEBUG").expect("debug");
        assert!(!debug.contains("kube"), "{debug}");
        assert!(debug.contains("netlink_proto=info"), "{debug}");
        assert_eq!(directives("trace").as_deref(), Ok("trace"));
        assert_eq!(directives("warn").as_deref(), Ok("warn"));
    }

    #[test]
    fn directives_are_kept_and_named_crates_not_held() {
        let d = directives("info,vpcnet_agent::loops=debug,kube=debug").expect("valid");
        assert!(d.ends_with(",vpcnet_agent::loops=debug,kube=debug"), "{d}");
        assert!(!d.contains("kube=warn"), "{d}");
        assert!(d.contains("tonic=warn"), "{d}");
        // No bare level: the rest at info.
        let d = directives("vpcnet_agent=debug").expect("valid");
        assert!(d.starts_with("info,"), "{d}");
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["loud", "", " , ", "kube=loud", "=debug", "info,chatty"] {
            assert!(directives(bad).is_err(), "{bad:?} accepted");
        }
    }
}
