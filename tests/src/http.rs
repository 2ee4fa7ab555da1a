//! HTTP/1.1 to a server inside a network namespace (the agent's `--metrics-addr`, bound to
//! 127.0.0.1 in a lab's namespace): the request is sent from a thread of its own that entered
//! the namespace ([`crate::netns::in_netns`]), never from a tokio task.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::in_netns;

/// A response, split at the end of its header.
#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    /// Status line and header lines.
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case as sent).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// Sends `raw` (the whole request) to `addr` from inside namespace `ns` and reads the
/// response to the end (the server closes); panics when it cannot or the reply is not HTTP.
pub fn request(ns: &str, addr: SocketAddr, raw: &str) -> Response {
    let out = in_netns(Some(ns), || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(raw.as_bytes())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    })
    .unwrap_or_else(|e| panic!("HTTP request to {addr} in {ns}: {e}"));
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {out:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Response {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` (Connection: close) to `addr` inside `ns`: (status code, body).
pub fn get(ns: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let r = request(
        ns,
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    (r.code, r.body)
}

/// The value of sample `name` (its labels included, exactly as printed, e.g.
/// `x_total{result="ok"}`) in a Prometheus text exposition such as the agent's `/metrics`.
pub fn sample<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
