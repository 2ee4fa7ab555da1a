//! Blocking client for the agent protocol, used by the short-lived plugin process: a std
//! unix stream, no runtime, one request per connection — and, after the reply to an ADD's or
//! DEL's request, one one-way report on the same connection ([`Kept`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::{Envelope, Reply, Request, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (agent down or wrong path).
    #[error("cannot reach vpcnetd at socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to vpcnetd at socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vpcnetd at socket {path} sent an undecodable reply: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("vpcnetd at socket {path} closed the connection without a reply")]
    NoReply { path: String },
}

/// Sends `request` and does not wait for the reply (the agent's write of it fails quietly):
/// for reports whose answer changes nothing. Costs a connect and a write (tens of µs).
pub fn notify(socket: &Path, request: Request, timeout: Duration) -> Result<(), ClientError> {
    send(socket, request, timeout).map(drop)
}

/// Sends one request and waits at most `timeout` for each of connect, write and read.
pub fn call(socket: &Path, request: Request, timeout: Duration) -> Result<Reply, ClientError> {
    send(socket, request, timeout)?.wait()
}

/// [`call`], keeping the connection for one report ([`Kept::notify`]).
pub fn call_keep(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<(Reply, Kept), ClientError> {
    send(socket, request, timeout)?.wait_keep()
}

/// A request sent, its reply not read yet: lets the caller do other work (the plugin builds
/// the veth) while the agent answers.
#[derive(Debug)]
pub struct Pending {
    stream: UnixStream,
    path: String,
}

/// Connects and sends `request` without waiting for the reply.
pub fn send(socket: &Path, request: Request, timeout: Duration) -> Result<Pending, ClientError> {
    connect(socket, timeout)?.send(request)
}

/// A connection to the agent, nothing sent yet: the caller may first look at who answers
/// (the plugin compares the agent's network namespace with the pod's).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    path: String,
}

/// Connects, with `timeout` for each later write and read.
pub fn connect(socket: &Path, timeout: Duration) -> Result<Connection, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(Connection { stream, path })
}

impl Connection {
    /// The pid of the process serving the socket (SO_PEERCRED), as seen from the caller's
    /// pid namespace; `None` when the kernel cannot say (0: the peer is in a pid namespace
    /// the caller cannot see).
    pub fn peer_pid(&self) -> Option<u32> {
        let cred =
            nix::sys::socket::getsockopt(&self.stream, nix::sys::socket::sockopt::PeerCredentials)
                .ok()?;
        u32::try_from(cred.pid()).ok().filter(|p| *p != 0)
    }

    /// Sends `request` without waiting for the reply.
    pub fn send(self, request: Request) -> Result<Pending, ClientError> {
        let Connection { stream, path } = self;
        write_request(&stream, &path, request)?;
        Ok(Pending { stream, path })
    }
}

/// Writes `request` as one line of the protocol.
fn write_request(stream: &UnixStream, path: &str, request: Request) -> Result<(), ClientError> {
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        request,
    })
    .map_err(|source| ClientError::Decode {
        path: path.to_string(),
        source,
    })?;
    line.push(b'\n');
    let mut w = stream;
    w.write_all(&line).map_err(|source| ClientError::Io {
        path: path.to_string(),
        source,
    })
}

/// A connection whose reply has been read, kept open for one report ([`Kept::notify`]):
/// the plugin tells the agent how long the runtime's ADD or DEL took on the connection it
/// already has instead of connecting again (a connect, an accept and a close fewer per pod
/// event; issue 14). The agent reads one such line after its reply to an Assign or Release.
#[derive(Debug)]
pub struct Kept {
    stream: UnixStream,
    path: String,
}

impl Kept {
    /// Sends `request` and does not wait: the agent answers no report on a kept connection.
    /// An agent that does not read it (one older than this protocol step closed the
    /// connection after its reply) makes this fail quietly (EPIPE, no signal).
    pub fn notify(self, request: Request) -> Result<(), ClientError> {
        let Kept { stream, path } = self;
        write_request(&stream, &path, request)
    }
}

impl Pending {
    /// Reads the reply.
    pub fn wait(self) -> Result<Reply, ClientError> {
        self.wait_keep().map(|(reply, _)| reply)
    }

    /// Reads the reply and keeps the connection for one report ([`Kept::notify`]).
    pub fn wait_keep(self) -> Result<(Reply, Kept), ClientError> {
        let Pending { stream, path } = self;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        if reply.is_empty() {
            return Err(ClientError::NoReply { path });
        }
        match serde_json::from_str(&reply) {
            Ok(r) => Ok((r, Kept { stream, path })),
            Err(source) => Err(ClientError::Decode { path, source }),
        }
    }
}
