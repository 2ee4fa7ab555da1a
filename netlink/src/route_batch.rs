//! Many route changes (IPv4 and IPv6) in one `sendmsg` (issue 10): a node's peer routes come by the
//! hundred (a cold start of N nodes installs N - 1 on every node), and each request through
//! the rtnetlink connection task cost a channel round, a `sendto`, a wake-up and a `recvfrom`
//! of its own — about half the CPU of each route (docs/benchmarks.md § Scale, thirteenth
//! part).
//!
//! The kernel handles a `NETLINK_ROUTE` request inside the `sendmsg` that carries it, each
//! message of the buffer in order, so when [`RouteBatch::apply`]'s `sendmsg` returns every
//! change in it has been made or refused and its answer (one `NLMSG_ERROR` per message,
//! code 0 for done) is queued on the socket; the socket is non-blocking and the answers are
//! read without waiting. A change that got no answer (the socket's receive queue overflowed)
//! is reported as failed; the caller retries it like any failure. The kernel's work for one
//! `sendmsg` is bounded by [`PER_SEND`] changes (a few tenths of a millisecond), so a thread
//! that also serves other work is never held longer than that.

use std::io::ErrorKind;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::nfnl::{error_code, replies, NLMSG_ERROR};
use crate::nl::CREATE_REPLACE;
use crate::route::{self, RouteV4, RouteV6};
use crate::NetlinkError;

/// Most changes in one `sendmsg`: 32 route inserts are ~0.15 ms of the kernel's time here
/// (and the saving per route is the same from 16 on, `netlink/examples/route_batch.rs`).
pub const PER_SEND: usize = 32;

/// One route change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// `ip route replace` of exactly this route (created if absent).
    Replace(RouteV4),
    /// `ip route del` of exactly this route (any scope); absent is not an error.
    Delete(RouteV4),
    /// `ip -6 route replace` of exactly this route.
    Replace6(RouteV6),
    /// `ip -6 route del` of exactly this route; absent is not an error.
    Delete6(RouteV6),
}

impl RouteChange {
    fn op(&self) -> &'static str {
        match self {
            RouteChange::Replace(_) | RouteChange::Replace6(_) => "RTM_NEWROUTE",
            RouteChange::Delete(_) | RouteChange::Delete6(_) => "RTM_DELROUTE",
        }
    }

    fn is_delete(&self) -> bool {
        matches!(self, RouteChange::Delete(_) | RouteChange::Delete6(_))
    }

    /// The request, or why it is not sent (a destination with host bits set).
    fn message(&self, seq: u32) -> Result<NetlinkMessage<RouteNetlinkMessage>, NetlinkError> {
        let wire = match self {
            RouteChange::Replace(r) => route::Wire::from(r),
            RouteChange::Delete(r) => route::deletion(r),
            RouteChange::Replace6(r) | RouteChange::Delete6(r) => route::Wire::from(r),
        };
        let (payload, flags) = if self.is_delete() {
            (RouteNetlinkMessage::DelRoute(wire.message()), 0)
        } else {
            (
                RouteNetlinkMessage::NewRoute(wire.message()),
                CREATE_REPLACE,
            )
        };
        wire.check_prefix()?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        Ok(msg)
    }
}

/// A `NETLINK_ROUTE` socket of its own for batches of route changes, in the network namespace
/// of the thread that opened it.
#[derive(Debug)]
pub struct RouteBatch {
    sock: Socket,
    seq: u32,
    out: Vec<u8>,
    answers: Vec<u8>,
}

impl RouteBatch {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<RouteBatch, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        sock.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        Ok(RouteBatch {
            sock,
            seq: 0,
            out: Vec::new(),
            answers: vec![0; 64 * 1024],
        })
    }

    /// Makes `changes` in their order, [`PER_SEND`] to a `sendmsg`. Per change: `Ok(true)`
    /// made, `Ok(false)` a delete of a route that was not there (ESRCH), or the error.
    pub fn apply(&mut self, changes: &[RouteChange]) -> Vec<Result<bool, NetlinkError>> {
        let mut out = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(PER_SEND) {
            self.send(chunk, &mut out);
        }
        out
    }

    /// One `sendmsg` of `chunk` and its answers, appended to `results`.
    fn send(&mut self, chunk: &[RouteChange], results: &mut Vec<Result<bool, NetlinkError>>) {
        let first = results.len();
        // Sequence numbers of this send: `base + i` for `chunk[i]`.
        let base = self.seq.wrapping_add(1);
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
        self.out.clear();
        let mut sent = 0usize;
        for (i, c) in chunk.iter().enumerate() {
            let seq = base.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX));
            match c.message(seq) {
                Ok(m) => {
                    let at = self.out.len();
                    self.out.resize(at + m.buffer_len(), 0);
                    m.serialize(&mut self.out[at..]);
                    // Answered below; until then "no answer".
                    results.push(Err(NetlinkError::UnexpectedReply {
                        op: c.op(),
                        detail: "no answer from the kernel".to_owned(),
                    }));
                    sent += 1;
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if sent == 0 {
            return;
        }
        if let Err(e) = self.sock.send(&self.out, 0) {
            for (r, c) in results[first..].iter_mut().zip(chunk) {
                if matches!(r, Err(NetlinkError::UnexpectedReply { .. })) {
                    *r = Err(NetlinkError::Socket(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", c.op()),
                    )));
                }
            }
            return;
        }
        let mut answered = 0usize;
        while answered < sent {
            let n = match self.sock.recv(&mut &mut self.answers[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock: every answer the kernel queued is read (the rest were lost to
                // a full receive queue); anything else ends the reading the same way.
                Err(_) => break,
            };
            for reply in replies(&self.answers[..n]) {
                let i = reply.seq.wrapping_sub(base) as usize;
                if reply.kind != NLMSG_ERROR || i >= chunk.len() {
                    continue;
                }
                let code = error_code(reply.body);
                let c = &chunk[i];
                results[first + i] = match code {
                    0 => Ok(true),
                    libc::ESRCH if c.is_delete() => Ok(false),
                    _ => Err(NetlinkError::Kernel {
                        op: c.op(),
                        errno: code,
                    }),
                };
                answered += 1;
            }
        }
    }
}
