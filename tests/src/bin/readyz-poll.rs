//! The scale lab's readiness poller (`bench/scale.sh`, issue 10: "zero `/readyz` 503 other
//! than start-up"): asks every agent's `/readyz` in turn, each in its own network namespace,
//! from one small single-threaded process, and writes each agent's *changes* of answer.
//!
//! ```text
//! readyz-poll INTERVAL_MS PORT OUT < NETNS_NAMES
//! ```
//!
//! Each line of NETNS_NAMES is a namespace under `/run/netns`. A round connects to
//! `127.0.0.1:PORT` in each namespace (the thread enters the namespace with `setns` before
//! creating the socket; a socket stays in the namespace it was made in; this process has no
//! other thread), sends `GET /readyz`, reads the answer; rounds start every INTERVAL_MS (or
//! at once after a longer round). Whenever an agent's answer differs from its previous one, a
//! line `UNIX_MS NETNS STATE` is appended to OUT, STATE one of `down` (nothing listens: not
//! started yet, or gone), `timeout` (no answer within 1 s), `error` (anything else), `200`, or
//! `503 REASON` (the body's first line). Runs until killed; every line is written at once.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(1);

/// One answer of `/readyz`, as written to OUT.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Down,
    Timeout,
    Error,
    Status(u16, String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Down => f.write_str("down"),
            Answer::Timeout => f.write_str("timeout"),
            Answer::Error => f.write_str("error"),
            Answer::Status(200, _) => f.write_str("200"),
            Answer::Status(code, reason) => write!(f, "{code} {reason}"),
        }
    }
}

/// The status code and the body's first line of an HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut words = status_line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?.parse().ok()?;
    Some((code, body.lines().next().unwrap_or("").trim().to_string()))
}

fn ask(port: u16) -> Answer {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Answer::Down,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Answer::Timeout,
        Err(_) => return Answer::Error,
    };
    let mut raw = Vec::new();
    let done = s
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .and_then(|()| s.read_to_end(&mut raw));
    match done {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Answer::Timeout
        }
        Err(_) => Answer::Error,
        Ok(_) => match parse_response(&raw) {
            Some((code, reason)) => Answer::Status(code, reason),
            None => Answer::Error,
        },
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, interval, port, out] = args.as_slice() else {
        eprintln!("usage: readyz-poll INTERVAL_MS PORT OUT < NETNS_NAMES");
        return ExitCode::from(2);
    };
    let (Ok(interval), Ok(port)) = (interval.parse::<u64>(), port.parse::<u16>()) else {
        eprintln!("readyz-poll: INTERVAL_MS and PORT are numbers");
        return ExitCode::from(2);
    };
    let mut nss = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let name = match line {
            Ok(l) => l.trim().to_string(),
            Err(e) => {
                eprintln!("readyz-poll: reading the names: {e}");
                return ExitCode::from(2);
            }
        };
        if name.is_empty() {
            continue;
        }
        match File::open(format!("/run/netns/{name}")) {
            Ok(f) => nss.push((name, f, None::<Answer>)),
            Err(e) => {
                eprintln!("readyz-poll: network namespace {name}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut out = match File::create(out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("readyz-poll: {out}: {e}");
            return ExitCode::from(2);
        }
    };
    let interval = Duration::from_millis(interval);
    loop {
        let round = Instant::now();
        for (name, ns, last) in &mut nss {
            // SAFETY: setns on a namespace descriptor this process keeps open; the process is
            // single-threaded, so only this thread (and the sockets it makes next) move.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "readyz-poll: setns {name}: {}",
                    std::io::Error::last_os_error()
                );
                return ExitCode::FAILURE;
            }
            let a = ask(port);
            if last.as_ref() != Some(&a) {
                if let Err(e) = writeln!(out, "{} {name} {a}", unix_ms()) {
                    eprintln!("readyz-poll: writing: {e}");
                    return ExitCode::FAILURE;
                }
                *last = Some(a);
            }
        }
        if let Some(rest) = interval.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_readyz_answers() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nready\n"),
            Some((200, "ready".into()))
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 503 Service Unavailable\r\n\r\nstarting: start-up reconcile not finished\n"
            ),
            Some((503, "starting: start-up reconcile not finished".into()))
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 503 x\r\n\r\n"),
            Some((503, String::new()))
        );
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_print_as_the_lab_reads_them() {
        assert_eq!(Answer::Status(200, "ready".into()).to_string(), "200");
        assert_eq!(
            Answer::Status(503, "cannot assign addresses: pool empty".into()).to_string(),
            "503 cannot assign addresses: pool empty"
        );
        assert_eq!(Answer::Down.to_string(), "down");
    }
}
