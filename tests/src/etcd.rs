//! The one etcd launcher: a real single-member etcd (`/usr/bin/etcd`) with a private data
//! directory, in this network namespace or in a private one, the one health check
//! (`GET /health` on its client port), and a reader of keys through its JSON gateway.
//! Killed on drop, also when the test panics.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{free_port, netns, tail, unique_prefix, Proc};

/// How long a starting etcd may take to report healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A single-member etcd. See the module docs.
#[derive(Debug)]
pub struct Etcd {
    child: Proc,
    /// Data (`data/`) and log (`etcd.log`).
    pub dir: PathBuf,
    pub client_ip: Ipv4Addr,
    pub client_port: u16,
    pub peer_port: u16,
    netns: Option<String>,
    /// Its own scratch dir: removed on drop (its log tail printed first when the test
    /// panics). Otherwise the dir belongs to whoever gave it (a [`crate::cluster::Cluster`]).
    own_dir: bool,
}

impl Etcd {
    /// Starts etcd on 127.0.0.1 in this network namespace and waits until it is healthy.
    pub fn start() -> Etcd {
        let mut e = Etcd::stopped(None);
        e.launch();
        e
    }

    /// Starts etcd on 127.0.0.1 inside network namespace `ns` (e.g. a [`crate::Lab::host`]).
    pub fn start_in(ns: &str) -> Etcd {
        let mut e = Etcd::stopped(Some(ns));
        e.launch();
        e
    }

    /// Free ports on 127.0.0.1 and a scratch dir chosen, not running yet ([`Etcd::restart`]
    /// starts it).
    pub fn stopped(ns: Option<&str>) -> Etcd {
        let dir = std::env::temp_dir()
            .join("vpcnet-tests")
            .join(format!("etcd{}", unique_prefix().trim_start_matches("vt")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        Etcd {
            child: Proc::default(),
            dir,
            client_ip: Ipv4Addr::LOCALHOST,
            client_port,
            peer_port,
            netns: ns.map(str::to_string),
            own_dir: true,
        }
    }

    /// Not running yet ([`Etcd::launch`] starts it): in namespace `ns`, serving clients on
    /// `client_ip:client_port` (peers on 127.0.0.1:`peer_port`), data and log in `dir`
    /// (kept on drop: the caller owns it).
    pub fn stopped_at(
        ns: &str,
        dir: PathBuf,
        client_ip: Ipv4Addr,
        client_port: u16,
        peer_port: u16,
    ) -> Etcd {
        Etcd {
            child: Proc::default(),
            dir,
            client_ip,
            client_port,
            peer_port,
            netns: Some(ns.to_string()),
            own_dir: false,
        }
    }

    /// `http://<client ip>:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.client_ip, self.client_port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts it (built stopped, or after [`Etcd::stop`]) and waits until it is healthy;
    /// panics with its log if it exits first or is not healthy within [`START_TIMEOUT`].
    pub fn launch(&mut self) {
        assert!(self.child.pid().is_none(), "etcd already running");
        std::fs::create_dir_all(&self.dir).expect("etcd dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns::path(ns)))
                    .arg("/usr/bin/etcd");
                c
            }
            None => Command::new("/usr/bin/etcd"),
        };
        cmd.arg("--name")
            .arg("vt")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("vt={peer}"))
            .args(["--heartbeat-interval", "50", "--election-timeout", "300"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child
            .set(cmd.spawn().expect("spawn /usr/bin/etcd (is it installed?)"));
        let end = Instant::now() + START_TIMEOUT;
        while !self.healthy() {
            if let Some(st) = self.child.exited() {
                panic!("etcd exited ({st}): {}", tail(&self.log(), 30));
            }
            assert!(
                Instant::now() < end,
                "etcd not healthy within {START_TIMEOUT:?}: {}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (an outage; the data dir stays).
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// (Re)starts it with the same ports and data and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// `GET /health` from inside etcd's namespace says `"health":"true"`.
    pub fn healthy(&self) -> bool {
        self.http("GET", "/health", None)
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|v| v.get("health").and_then(Value::as_str) == Some("true"))
    }

    /// One HTTP/1.0 request to the client port, made from inside etcd's namespace (3 s to
    /// connect and to answer); returns the body of a 200 reply.
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Result<String, String> {
        let addr = SocketAddr::from((self.client_ip, self.client_port));
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let reply = netns::in_netns(self.netns.as_deref(), || {
            let timeout = Duration::from_secs(3);
            let mut s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(request.as_bytes())?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok::<_, std::io::Error>(reply)
        })
        .map_err(|e| format!("{method} {path} on {addr}: {e}"))?;
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{method} {path}: no HTTP reply: {reply:?}"))?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("{method} {path}: {status}: {body}"));
        }
        Ok(body.to_string())
    }

    /// Every key under `prefix`, read through the JSON gateway: (key, value, lease,
    /// create_revision).
    pub fn range(&self, prefix: &str) -> Result<Vec<(String, String, i64, i64)>, String> {
        let body = self.http("POST", "/v3/kv/range", Some(&range_request(prefix)))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("etcd range {prefix}: not JSON ({e}): {body}"))?;
        if let Some(e) = v.get("error").or_else(|| v.get("message")) {
            return Err(format!("etcd range {prefix}: {e}"));
        }
        let kvs = v.get("kvs").and_then(Value::as_array).cloned();
        kvs.unwrap_or_default()
            .iter()
            .map(|kv| {
                let s = |k: &str| -> Result<String, String> {
                    kv.get(k)
                        .and_then(Value::as_str)
                        .map(b64_decode)
                        .transpose()
                        .map(|b| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned())
                };
                // The gateway prints int64 fields as strings, and omits zeros.
                let num = |k: &str| {
                    kv.get(k)
                        .and_then(|l| l.as_str().and_then(|s| s.parse().ok()).or(l.as_i64()))
                        .unwrap_or(0)
                };
                Ok((s("key")?, s("value")?, num("lease"), num("create_revision")))
            })
            .collect()
    }

    /// `put key value` (no lease), through the JSON gateway.
    pub fn put(&self, key: &str, value: &str) -> Result<(), String> {
        let req = json!({"key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes())});
        let body = self.http("POST", "/v3/kv/put", Some(&req))?;
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.get("error").is_none() && v.get("header").is_some() => Ok(()),
            _ => Err(format!("etcd put {key}: {body}")),
        }
    }

    /// `del key`; returns how many keys it deleted.
    pub fn delete(&self, key: &str) -> Result<u64, String> {
        let req = json!({"key": b64_encode(key.as_bytes())});
        let body = self.http("POST", "/v3/kv/deleterange", Some(&req))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("etcd delete {key}: not JSON ({e}): {body}"))?;
        if v.get("error").is_some() || v.get("header").is_none() {
            return Err(format!("etcd delete {key}: {body}"));
        }
        Ok(v.get("deleted")
            .and_then(|d| d.as_str().and_then(|s| s.parse().ok()).or(d.as_u64()))
            .unwrap_or(0))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if self.own_dir {
            if std::thread::panicking() {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("etcd log (last 30 lines, newest first):");
                for l in tail {
                    eprintln!("  {l}");
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The gateway's range request for every key starting with `prefix`: `key` = prefix,
/// `range_end` = prefix with its last byte + 1, both base64 (as the gateway wants bytes).
pub fn range_request(prefix: &str) -> Value {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    json!({"key": b64_encode(prefix.as_bytes()), "range_end": b64_encode(&end)})
}

/// Standard base64 (with padding), as etcd's JSON gateway encodes keys and values.
pub fn b64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not base64 ({e}): {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_range_request() {
        for s in ["", "a", "ab", "abc", "/vpcnet/claims/", "/vpcnet/claims0"] {
            assert_eq!(
                b64_decode(&b64_encode(s.as_bytes())).expect("decodes"),
                s.as_bytes()
            );
        }
        assert_eq!(b64_encode(b"/vpcnet/"), "L3ZwY25ldC8=");
        let r = range_request("/vpcnet/claims/");
        assert_eq!(r["key"], b64_encode(b"/vpcnet/claims/"));
        assert_eq!(r["range_end"], b64_encode(b"/vpcnet/claims0"));
    }
}
