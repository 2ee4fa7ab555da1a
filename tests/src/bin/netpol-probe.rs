//! The NetworkPolicy lab's servers and clients (`scripts/netpol-matrix.sh`), run inside a
//! pod's network namespace (`ip netns exec <pod> netpol-probe …`). No nc/socat needed.
//!
//! ```text
//! netpol-probe serve NAME [PORT...]      TCP and UDP servers on every PORT (default 80 81),
//!                                        all answering NAME; prints "ready" once all listen
//! netpol-probe probe TIMEOUT_MS SRC_PORT_BASE TARGET...
//!                                        TARGET = tcp:IP:PORT or udp:IP:PORT, all at once
//!                                        (one thread each); the i-th target's client socket
//!                                        is bound to source port SRC_PORT_BASE + i; prints
//!                                        one line per target: "TARGET REPLY" (REPLY is the
//!                                        server's NAME, or "-" when nothing came back in time)
//! netpol-probe hold TIMEOUT_MS SRC_PORT IP:PORT
//!                                        opens one TCP connection and holds it: prints
//!                                        "open NAME" (or "-"), then for every "ping" line on
//!                                        stdin sends a byte and prints "ok" when the server
//!                                        echoed it within TIMEOUT_MS, else "-"
//! ```
//!
//! TCP "allow" = connected and read the name (the server then echoes whatever it gets); UDP "allow" = the echo came back (the datagram
//! is resent every 250 ms until the timeout). A fixed source port per probe round keeps the
//! 5-tuples of consecutive cases apart, so no conntrack entry of an earlier case (whose
//! ruleset allowed more) answers for this one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

fn usage() -> ExitCode {
    eprintln!(
        "usage: netpol-probe serve NAME [PORT...]\n       netpol-probe probe TIMEOUT_MS SRC_PORT_BASE TARGET...\n       netpol-probe hold TIMEOUT_MS SRC_PORT IP:PORT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() >= 2 => serve(&args[1], &args[2..]),
        Some("hold") if args.len() == 4 => {
            let (Ok(ms), Ok(src), Ok(to)) = (
                args[1].parse::<u64>(),
                args[2].parse::<u16>(),
                args[3].parse::<SocketAddr>(),
            ) else {
                return usage();
            };
            hold(Duration::from_millis(ms), src, to)
        }
        Some("probe") if args.len() >= 3 => {
            let (Ok(ms), Ok(base)) = (args[1].parse::<u64>(), args[2].parse::<u16>()) else {
                return usage();
            };
            probe(Duration::from_millis(ms), base, &args[3..])
        }
        _ => usage(),
    }
}

fn serve(name: &str, ports: &[String]) -> ExitCode {
    let ports: Vec<u16> = if ports.is_empty() {
        vec![80, 81]
    } else {
        match ports.iter().map(|p| p.parse()).collect() {
            Ok(v) => v,
            Err(_) => return usage(),
        }
    };
    let mut handles = Vec::new();
    // IPv4 always; IPv6 (a dual-stack pod) where the namespace has it.
    let mut listeners = Vec::new();
    for port in &ports {
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
        match (TcpListener::bind(any), UdpSocket::bind(any)) {
            (Ok(t), Ok(u)) => listeners.push((*port, t, u)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("netpol-probe: binding port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Some((t, u)) = bind6(*port) {
            listeners.push((*port, t, u));
        }
    }
    for (_, tcp, udp) in listeners {
        let reply = name.as_bytes().to_vec();
        handles.push(std::thread::spawn(move || {
            for mut conn in tcp.incoming().flatten() {
                let reply = reply.clone();
                // The name, then an echo of whatever comes, until the client closes.
                std::thread::spawn(move || {
                    if conn.write_all(&reply).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let reply = name.as_bytes().to_vec();
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}

/// TCP and UDP on `[::]:port`, IPv6 only (the IPv4 sockets are separate); `None` where the
/// namespace has no IPv6.
fn bind6(port: u16) -> Option<(TcpListener, UdpSocket)> {
    let any: socket2::SockAddr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into();
    let t = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).ok()?;
    t.set_only_v6(true).ok()?;
    t.set_reuse_address(true).ok()?;
    t.bind(&any).ok()?;
    t.listen(128).ok()?;
    let u = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).ok()?;
    u.set_only_v6(true).ok()?;
    u.bind(&any).ok()?;
    Some((t.into(), u.into()))
}

/// One target: "tcp:IP:PORT" / "udp:IP:PORT" (`[IPv6]:PORT` for IPv6).
fn parse_target(t: &str) -> Option<(bool, SocketAddr)> {
    let (proto, addr) = t.split_once(':')?;
    let tcp = match proto {
        "tcp" => true,
        "udp" => false,
        _ => return None,
    };
    Some((tcp, addr.parse().ok()?))
}

fn probe(timeout: Duration, base: u16, targets: &[String]) -> ExitCode {
    let mut parsed = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let Some((tcp, addr)) = parse_target(t) else {
            eprintln!("netpol-probe: bad target {t:?} (tcp:IP:PORT or udp:IP:PORT)");
            return ExitCode::from(2);
        };
        let Some(src) = u16::try_from(i).ok().and_then(|i| base.checked_add(i)) else {
            eprintln!("netpol-probe: source port {base} + {i} out of range");
            return ExitCode::from(2);
        };
        parsed.push((t.clone(), tcp, addr, src));
    }
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = parsed
            .iter()
            .map(|(t, tcp, addr, src)| {
                s.spawn(move || {
                    let r = if *tcp {
                        probe_tcp(*addr, *src, timeout)
                    } else {
                        probe_udp(*addr, *src, timeout)
                    };
                    (t.clone(), r.unwrap_or_else(|| "-".to_string()))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (String::new(), "-".into())))
            .collect()
    });
    let mut out = std::io::stdout().lock();
    for (t, r) in results {
        let _ = writeln!(out, "{t} {r}");
    }
    ExitCode::SUCCESS
}

fn bound(ty: Type, proto: Protocol, src: u16, v6: bool) -> Option<Socket> {
    let (domain, any) = if v6 {
        (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, src)))
    } else {
        (Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, src)))
    };
    let s = Socket::new(domain, ty, Some(proto)).ok()?;
    s.set_reuse_address(true).ok()?;
    s.bind(&any.into()).ok()?;
    Some(s)
}

fn probe_tcp(to: SocketAddr, src: u16, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    let s = bound(Type::STREAM, Protocol::TCP, src, to.is_ipv6())?;
    s.connect_timeout(&to.into(), timeout).ok()?;
    let left = timeout.checked_sub(start.elapsed())?;
    let mut stream: std::net::TcpStream = s.into();
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    // The server writes its name in one segment, then echoes: one read.
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn hold(timeout: Duration, src: u16, to: SocketAddr) -> ExitCode {
    let start = Instant::now();
    let open = || -> Option<(std::net::TcpStream, String)> {
        let s = bound(Type::STREAM, Protocol::TCP, src, to.is_ipv6())?;
        s.connect_timeout(&to.into(), timeout).ok()?;
        let mut stream: std::net::TcpStream = s.into();
        let left = timeout.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).ok()?;
        (n > 0).then(|| (stream, String::from_utf8_lossy(&buf[..n]).into_owned()))
    };
    let mut out = std::io::stdout();
    let Some((mut stream, name)) = open() else {
        let _ = writeln!(out, "-");
        return ExitCode::FAILURE;
    };
    let _ = writeln!(out, "open {name}");
    let _ = out.flush();
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "ping" {
            continue;
        }
        let mut buf = [0u8; 1];
        let ok = stream.write_all(b"p").is_ok()
            && matches!(stream.read(&mut buf), Ok(1) if buf[0] == b'p');
        let _ = writeln!(out, "{}", if ok { "ok" } else { "-" });
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}

fn probe_udp(to: SocketAddr, src: u16, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    let s: UdpSocket = bound(Type::DGRAM, Protocol::UDP, src, to.is_ipv6())?.into();
    s.connect(to).ok()?;
    let mut buf = [0u8; 64];
    while start.elapsed() < timeout {
        // An ICMP error from an earlier datagram surfaces here as a send/recv error: keep
        // trying until the timeout.
        let _ = s.send(b"?");
        let wait = Duration::from_millis(250).min(timeout.saturating_sub(start.elapsed()));
        if wait.is_zero() || s.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        if let Ok(n) = s.recv(&mut buf) {
            if n > 0 {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
    None
}
