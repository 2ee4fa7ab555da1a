//! Private network namespaces: creating them (one `ip -batch` for many), owning them
//! ([`Namespaces`] deletes every one it registered when dropped, also when the test panics),
//! and running code inside one on a dedicated thread (nix `setns`; only that thread moves).
//!
//! Nothing here touches the machine's root namespace: every name the fixtures make starts
//! with their unique prefix ([`crate::unique_prefix`]).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `/var/run/netns/<ns>`: what `CNI_NETNS` and `nsenter --net=` take.
pub fn path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

/// Creates network namespace `name` (the caller registers it for cleanup) as
/// [`add_netns_batch`] does.
pub fn add_netns(name: &str) {
    add_netns_batch([name]);
}

/// Creates the network namespaces `names` with one `ip -batch` (much faster than one `ip`
/// per namespace). The caller registers them for cleanup (or uses [`Namespaces`]).
pub fn add_netns_batch<'a>(names: impl IntoIterator<Item = &'a str>) {
    let names: Vec<String> = names.into_iter().map(str::to_string).collect();
    add_netns_batch_raw(&names);
    apply_inherited_sysctls(&names);
}

fn add_netns_batch_raw(names: &[String]) {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for n in names {
            writeln!(stdin, "netns add {n}").expect("write ip batch");
        }
    }
    assert!(
        child.wait().expect("ip -batch").success(),
        "ip -batch netns add failed"
    );
}

/// Deletes namespace `name` (no error if it is gone already).
pub fn del_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// What a new namespace would have inherited on another machine: a new network namespace
/// takes its IPv4 settings from the machine's root namespace (`devconf_inherit_init_net=0`),
/// so the suite must pass whatever those are. `VTEST_INHERIT="ip_forward=1
/// conf/all/rp_filter=1"` writes these `net/ipv4/…` sysctls into every namespace the fixtures
/// create, right after creating it: the suite can be run as if on a forwarding host without
/// touching this machine's own root namespace.
fn apply_inherited_sysctls(names: &[String]) {
    let Ok(spec) = std::env::var("VTEST_INHERIT") else {
        return;
    };
    for name in names {
        for kv in spec.split_whitespace() {
            let (key, value) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("VTEST_INHERIT: {kv:?} is not key=value"));
            assert!(
                !key.contains("..")
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)),
                "VTEST_INHERIT: bad key {key:?}"
            );
            let ok = Command::new("nsenter")
                .arg(format!("--net={}", path(name)))
                .args([
                    "sh",
                    "-c",
                    &format!("echo {value} > /proc/sys/net/ipv4/{key}"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "VTEST_INHERIT: setting net/ipv4/{key}={value} in {name}"
            );
        }
    }
}

/// The namespaces one lab or cluster made. Each is registered before it is created (so a
/// failed batch still cleans up what it made), and all are deleted, newest first, when this
/// is dropped — also when the test panics.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates and registers `name`.
    pub fn add(&mut self, name: &str) {
        self.add_batch([name]);
    }

    /// Creates and registers `names` with one `ip -batch`.
    pub fn add_batch<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let names: Vec<&str> = names.into_iter().collect();
        if names.is_empty() {
            return;
        }
        self.names.extend(names.iter().map(|n| n.to_string()));
        add_netns_batch(names);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Deletes `name` now (as the runtime does after DEL) and forgets it.
    pub fn remove(&mut self, name: &str) {
        del_netns(name);
        self.names.retain(|n| n != name);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in std::mem::take(&mut self.names).iter().rev() {
            del_netns(n);
        }
    }
}

/// Moves the calling thread — only this thread — into network namespace `ns`. Call it on a
/// thread of your own (as [`in_netns`] does), never on a tokio worker.
pub fn enter(ns: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path(ns))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` on a new thread that has entered network namespace `ns` (`None`: this namespace)
/// and returns its result (a panic in `f` is passed on). Sockets made there live in `ns`, so
/// a test can talk to a server inside a lab.
pub fn in_netns<R: Send>(ns: Option<&str>, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                enter(ns).unwrap_or_else(|e| panic!("entering {}: {e}", path(ns)));
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A TCP listener in a namespace that accepts one connection and reports its peer address.
#[derive(Debug)]
pub struct OneShotListener {
    pub addr: SocketAddr,
    handle: std::thread::JoinHandle<std::io::Result<SocketAddr>>,
}

impl OneShotListener {
    /// Binds `ip:port` (port 0 = any; either family) inside `ns`; the accept waits at most
    /// `timeout`.
    pub fn start(
        ns: &str,
        ip: impl Into<IpAddr>,
        timeout: Duration,
    ) -> std::io::Result<OneShotListener> {
        let ns = ns.to_string();
        let ip: IpAddr = ip.into();
        let (tx, rx) = std::sync::mpsc::channel();
        // Its own thread: it enters `ns` and stays there until the one accept is done.
        let handle = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
            let bound = (|| {
                enter(&ns)?;
                let l = TcpListener::bind((ip, 0))?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })();
            let l = match bound {
                Ok(l) => {
                    let _ = tx.send(l.local_addr());
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let end = Instant::now() + timeout;
            loop {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.write_all(b"hi\n");
                        return Ok(peer);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= end {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no connection",
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        let addr = rx
            .recv()
            .map_err(|_| std::io::Error::other("listener thread died"))??;
        Ok(OneShotListener { addr, handle })
    }

    /// The peer address of the one connection (or why there was none).
    pub fn peer(self) -> std::io::Result<SocketAddr> {
        self.handle
            .join()
            .map_err(|_| std::io::Error::other("listener thread panicked"))?
    }
}

/// Connects from inside `ns` to `to` (TCP), reads the greeting; returns the local address.
pub fn connect_from(ns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<SocketAddr> {
    in_netns(Some(ns), move || {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf)?;
        s.local_addr()
    })
}
