//! `vpcnetd support-bundle [DIR]`: what a bug report needs, in one
//! `vpcnet-bundle-<node>-<unix time>.tar.gz` written into DIR (default: the current directory):
//!
//! | file | what |
//! | --- | --- |
//! | `status.json` | `vpcnetd status --json` of the running agent (with allocations) |
//! | `metrics.txt`, `pool.json` | the agent's `/metrics` and `/pool` (`--metrics-addr`) |
//! | `config.txt` | the effective configuration: the flags as parsed from command line and `VPCNET_*` environment, and those variables |
//! | `conflist.json` | the conflist the agent wrote |
//! | `routes.txt` | every IPv4 and IPv6 route with protocol 171, of every table |
//! | `links.txt` | the host veths of ours (name, index, MTU, up) |
//! | `nft.txt` | `nft list table ip vpcnet` (`inet vpcnet` with an IPv6 VPC), then `nft list table inet vpcnet-policy` (NetworkPolicy; a line saying so when there is none) |
//! | `journal.txt` | the state directory: its files and sizes, and what loading snapshot + journal gives (sequence, records, torn tail, pool counts, allocations) |
//! | `plugin.log` | the last [`LOG_TAIL`] bytes of the plugin's log (the conflist's `logFile`, else `--cni-log-file`, else the default) |
//! | `errors.txt` | what could not be collected, and why (the rest is collected anyway) |
//!
//! **No secrets.** The bundle never reads a file a secret lives in: the etcd CA/certificate/key
//! and the kubeconfig appear as paths only, never contents; user:password in an etcd endpoint
//! URL and the values of `VPCNET_*` variables named like a secret (`TOKEN`, `PASSWORD`,
//! `SECRET`) are redacted; and every text collected passes through [`scrub`], which removes
//! PEM private-key blocks and bearer tokens wherever they would come from.
//!
//! Runs in the agent's network namespace (`kubectl exec` into the agent's container), read-only.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vpcnet_netlink::{link, route, RTPROT_VPCNET};
use vpcnet_proto::api::{Reply, Request};
use vpcnet_proto::naming::{is_our_host_veth, is_our_retired_veth};

use crate::cli::uninstall::{describe_route, describe_route6};
use crate::config::RunArgs;
use crate::node::store;
use crate::obs::http;

/// How much of the plugin's log goes in (its end).
pub const LOG_TAIL: u64 = 1 << 20;
/// Per HTTP request / socket call.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The plugin's log when neither the conflist nor the flags name one.
const DEFAULT_PLUGIN_LOG: &str = "/var/log/vpcnet/plugin.log";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Io { what, source }
}

/// The files of the bundle, in order, and what could not be collected.
#[derive(Debug, Default)]
pub struct Contents {
    pub files: Vec<(String, Vec<u8>)>,
    pub errors: Vec<String>,
}

impl Contents {
    fn add(&mut self, name: &str, r: Result<Vec<u8>, String>) {
        match r {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                self.files
                    .push((name.to_string(), scrub(&text).into_bytes()));
            }
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }
}

/// `scheme://user:password@host` → `scheme://<redacted>@host`.
pub fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(at)) if at > i + 3 && !s[i + 3..at].contains('/') => {
            format!("{}<redacted>{}", &s[..i + 3], &s[at..])
        }
        _ => s.to_string(),
    }
}

/// Removes what must never leave the node, wherever it came from: PEM private-key blocks,
/// bearer tokens, `token:`/`password:` values, and user:password in URLs.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_key = false;
    for line in text.split_inclusive('\n') {
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY-----") {
            in_key = true;
            out.push_str("<redacted private key>\n");
        }
        if in_key {
            if line.contains("-----END") {
                in_key = false;
            }
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(i) = lower.find("bearer ") {
            out.push_str(&line[..i + 7]);
            out.push_str("<redacted>\n");
            continue;
        }
        if let Some((i, k)) = ["token:", "password:", "token=", "password="]
            .iter()
            .find_map(|k| lower.find(k).map(|i| (i + k.len(), k)))
        {
            out.push_str(&line[..i]);
            out.push_str(if k.ends_with(':') { " " } else { "" });
            out.push_str("<redacted>\n");
            continue;
        }
        out.push_str(
            &line
                .split(' ')
                .map(|w| {
                    if w.contains("://") {
                        redact_url(w)
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    out
}

/// The flags as parsed (paths of key material only, never its contents), then the `VPCNET_*`
/// environment.
pub fn config_text(args: &RunArgs) -> String {
    let mut a = args.clone();
    a.etcd_endpoints = a.etcd_endpoints.iter().map(|e| redact_url(e)).collect();
    let mut out = format!("# effective configuration (flags + VPCNET_* environment)\n{a:#?}\n");
    out.push_str("\n# VPCNET_* environment\n");
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("VPCNET_"))
        .collect();
    env.sort();
    for (k, v) in env {
        let secret = ["TOKEN", "PASSWORD", "SECRET"]
            .iter()
            .any(|s| k.contains(s));
        let v = if secret {
            "<redacted>".to_string()
        } else {
            v.split(',').map(redact_url).collect::<Vec<_>>().join(",")
        };
        let _ = writeln!(out, "{k}={v}");
    }
    out
}

fn status_json(args: &RunArgs) -> Result<Vec<u8>, String> {
    match vpcnet_proto::client::call(&args.socket, Request::Status { allocations: true }, TIMEOUT) {
        Ok(Reply::Status(s)) => serde_json::to_vec_pretty(&s).map_err(|e| e.to_string()),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(format!("agent on {}: {e}", args.socket.display())),
    }
}

/// `GET path` from the agent's HTTP endpoint; the body.
fn http_get(args: &RunArgs, path: &str) -> Result<Vec<u8>, String> {
    let Some(mut addr) = http::parse_addr(&args.metrics_addr)? else {
        return Err("--metrics-addr is off".into());
    };
    if addr.ip().is_unspecified() {
        addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port());
    }
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the reply")?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(resp[split + 4..].to_vec())
}

fn conflist_path(args: &RunArgs) -> Option<PathBuf> {
    (!args.cni_conf_dir.is_empty()).then(|| Path::new(&args.cni_conf_dir).join(&args.cni_conf_name))
}

/// The plugin's log: the conflist's `logFile`, else `--cni-log-file`, else the default.
fn plugin_log_path(args: &RunArgs, conflist: Option<&[u8]>) -> PathBuf {
    conflist
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| {
            v.get("plugins")?
                .get(0)?
                .get("logFile")?
                .as_str()
                .map(PathBuf::from)
        })
        .or_else(|| args.cni_log_file.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_LOG))
}

/// The last `max` bytes of `path`, from the first whole line.
fn tail(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if start > 0 {
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=nl);
        }
    }
    Ok(buf)
}

/// The state directory: its files, and what loading them gives (read-only, no lock taken).
pub fn journal_summary(args: &RunArgs) -> String {
    let dir = &args.state_dir;
    let mut out = format!("state directory {}\n", dir.display());
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut v: Vec<String> = entries
                .flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("  {:<40} {len:>10} bytes", e.file_name().to_string_lossy())
                })
                .collect();
            v.sort();
            for l in v {
                let _ = writeln!(out, "{l}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  cannot list: {e}");
        }
    }
    let snap = fs::read(dir.join(store::SNAPSHOT)).ok();
    let journal = fs::read(dir.join(store::JOURNAL)).unwrap_or_default();
    match store::load_dual(
        snap.as_deref(),
        &journal,
        args.pool_config(),
        args.pool_config6(),
    ) {
        Ok((pool, pool6, r)) => {
            let _ = writeln!(
                out,
                "load: ok; snapshot {}, journal {} bytes of which {} whole records' ({} applied, \
                 last sequence {}){}",
                if snap.is_some() { "present" } else { "absent" },
                journal.len(),
                r.valid_len,
                r.applied,
                r.seq,
                if r.valid_len < journal.len() as u64 {
                    "; a torn last record would be cut off at start"
                } else {
                    ""
                }
            );
            describe_pool(&mut out, "pool", &pool);
            if let Some(p6) = &pool6 {
                describe_pool(&mut out, "IPv6 pool", p6);
            }
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "load: FAILED: {e} (the agent refuses to start on this state)"
            );
        }
    }
    out
}

/// One pool's counts and allocations (address, container, ifname, network, pod).
fn describe_pool<F: vpcnet_pool::Family>(
    out: &mut String,
    name: &str,
    pool: &vpcnet_pool::PoolOf<F>,
) {
    let s = pool.stats(crate::node::now_ms());
    let _ = writeln!(
        out,
        "{name}: {} prefixes ({} wholly free), {} addresses: {} assigned, {} cooling, {} available",
        s.prefixes, s.free_prefixes, s.total, s.assigned, s.cooling, s.available
    );
    for a in pool.allocations() {
        let pod = match (&a.meta.namespace, &a.meta.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {} {} {} {} {pod}",
            a.ip, a.key.container_id, a.key.ifname, a.key.network
        );
    }
}

/// Routes and links, over netlink in this thread's namespace.
fn kernel_parts(c: &mut Contents) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            c.errors
                .push(format!("routes.txt, links.txt: runtime: {e}"));
            return;
        }
    };
    let (routes, links) = rt.block_on(async {
        let net = match vpcnet_netlink::connect() {
            Ok(n) => n,
            Err(e) => return (Err(e.to_string()), Err(e.to_string())),
        };
        let v4 = route::list_v4_all(&net, Some(RTPROT_VPCNET)).await;
        let v6 = route::list_v6_all(&net, Some(RTPROT_VPCNET)).await;
        let routes = match (v4, v6) {
            (Ok(v4), Ok(v6)) => Ok(v4
                .iter()
                .map(describe_route)
                .chain(v6.iter().map(describe_route6))
                .map(|r| r + "\n")
                .collect::<String>()
                .into_bytes()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        let links = link::list(&net)
            .await
            .map(|ls| {
                ls.iter()
                    .filter(|l| {
                        is_our_host_veth(&l.name, l.mac) || is_our_retired_veth(&l.name, l.mac)
                    })
                    .map(|l| {
                        format!(
                            "{} index {} mtu {} {}\n",
                            l.name,
                            l.index,
                            l.mtu.unwrap_or(0),
                            if l.up { "up" } else { "down" }
                        )
                    })
                    .collect::<String>()
                    .into_bytes()
            })
            .map_err(|e| e.to_string());
        (routes, links)
    });
    c.add("routes.txt", routes);
    c.add("links.txt", links);
}

fn nft_table(args: &RunArgs) -> Result<Vec<u8>, String> {
    // `table inet vpcnet` with an IPv6 VPC CIDR (crate::snat).
    let family = if args.vpc_cidrs_v6().is_empty() {
        "ip"
    } else {
        "inet"
    };
    if !crate::snat::nft_found() {
        return Err("nft not found".into());
    }
    let mut out = nftables::helper::get_current_ruleset_raw(
        None::<&str>,
        ["list", "table", family, crate::snat::TABLE],
    )
    .map_err(|e| e.to_string())?;
    // The NetworkPolicy table (--network-policy=true): absent is normal when it is off.
    let policy = vpcnet_policy::render::TABLE;
    match nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "table", "inet", policy])
    {
        Ok(t) => out.push_str(&t),
        Err(e) => {
            let _ = writeln!(
                out,
                "# table inet {policy}: not listed ({}; absent unless --network-policy=true)",
                e.to_string().lines().next().unwrap_or_default()
            );
        }
    }
    Ok(out.into_bytes())
}

/// Everything the bundle holds (no archive yet).
pub fn collect(args: &RunArgs) -> Contents {
    let mut c = Contents::default();
    c.add("status.json", status_json(args));
    c.add("metrics.txt", http_get(args, "/metrics"));
    c.add("pool.json", http_get(args, "/pool"));
    c.add("config.txt", Ok(config_text(args).into_bytes()));
    let conflist =
        conflist_path(args).map(|p| fs::read(&p).map_err(|e| format!("{}: {e}", p.display())));
    match &conflist {
        Some(r) => c.add("conflist.json", r.clone()),
        None => c
            .errors
            .push("conflist.json: --cni-conf-dir not set".into()),
    }
    kernel_parts(&mut c);
    c.add("nft.txt", nft_table(args));
    c.add("journal.txt", Ok(journal_summary(args).into_bytes()));
    let log = plugin_log_path(args, conflist.as_ref().and_then(|r| r.as_deref().ok()));
    c.add("plugin.log", tail(&log, LOG_TAIL));
    c
}

/// Writes `c` as `<dir>/<name>.tar.gz` (files under `<name>/`), atomically; returns the path.
pub fn write(c: &Contents, dir: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let path = dir.join(format!("{name}.tar.gz"));
    let tmp = dir.join(format!(".{name}.tar.gz.tmp"));
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let r = (|| {
        let f = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut errors = c.errors.join("\n");
        if !errors.is_empty() {
            errors.push('\n');
        }
        for (file, bytes) in c
            .files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .chain([("errors.txt", errors.as_bytes())])
        {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_cksum();
            tar.append_data(&mut h, format!("{name}/{file}"), bytes)
                .map_err(io_err(format!("adding {file}")))?;
        }
        let gz = tar.into_inner().map_err(io_err("finishing the archive"))?;
        let f = gz.finish().map_err(io_err("finishing the compression"))?;
        f.sync_all().map_err(io_err("syncing"))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| path)
}

/// The subcommand: returns the process exit code.
pub fn run(args: &RunArgs, dir: Option<&Path>) -> i32 {
    let dir = dir.unwrap_or(Path::new("."));
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("vpcnet-bundle-{}-{stamp}", args.node_name());
    let c = collect(args);
    match write(&c, dir, &name) {
        Ok(path) => {
            for e in &c.errors {
                eprintln!("vpcnetd support-bundle: not collected: {e}");
            }
            println!("{}", path.display());
            0
        }
        Err(e) => {
            eprintln!("vpcnetd support-bundle: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://root:hunter2@10.0.0.2:2379"),
            "https://<redacted>@10.0.0.2:2379"
        );
        assert_eq!(redact_url("http://10.0.0.2:2379"), "http://10.0.0.2:2379");
        assert_eq!(redact_url("http://h/p@x"), "http://h/p@x");
    }

    #[test]
    fn scrub_removes_keys_and_tokens() {
        let t = "a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----\n\
                 Authorization: Bearer abc.def\n    token: eyJsecret\nurl http://u:pw@h:1 x\nz\n";
        let s = scrub(t);
        for bad in ["MIIEsecret", "abc.def", "eyJsecret", "u:pw"] {
            assert!(!s.contains(bad), "{bad} in {s}");
        }
        assert!(s.starts_with("a\n<redacted private key>\n"), "{s}");
        assert!(s.ends_with("z\n"), "{s}");
    }
}
