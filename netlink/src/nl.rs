//! The one place that talks to the netlink connection: send a request, collect the replies,
//! turn a NACK into a [`NetlinkError::Kernel`] carrying its errno.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;

use crate::NetlinkError;

/// Flags for a create-or-fail request.
pub(crate) const CREATE_EXCL: u16 =
    netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL;
/// Flags for a create-or-replace request.
pub(crate) const CREATE_REPLACE: u16 =
    netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE;

/// How many times [`Eager`] polls the connection per wake-up: more than the most requests
/// any caller queues at once (an ADD's pod side queues up to 10).
const EAGER_POLLS: usize = 24;

/// A netlink connection task that sends every queued request at once.
///
/// netlink-proto's `Connection` sends at most **one** queued request per poll and is polled
/// again only when its socket wakes it, i.e. when the reply arrives: requests queued together
/// (`futures::join!` of several [`request`]s) went out one round trip apart, each waiting for
/// the previous one's answer (seen with strace, issue 14). Polling it again at once while it
/// is pending sends the next queued request back to back; a poll with nothing to do makes no
/// system call (the socket's readiness is cached), so the extra polls cost next to nothing.
/// Replies, errors and the end of the connection behave exactly as before.
#[derive(Debug)]
pub(crate) struct Eager<F>(pub(crate) F);

impl<F: Future<Output = ()> + Unpin> Future for Eager<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..EAGER_POLLS {
            if Pin::new(&mut self.0).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// Sends `msg` with `NLM_F_REQUEST|NLM_F_ACK|extra_flags` and returns every non-ACK reply
/// message (e.g. the NLM_F_ECHO copy), or the kernel's errno.
pub(crate) async fn request(
    handle: &rtnetlink::Handle,
    op: &'static str,
    msg: RouteNetlinkMessage,
    extra_flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    send(handle, op, msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags).await
}

/// Sends a `NLM_F_DUMP` request and returns all reply messages.
///
/// Dumps of this process go one at a time: the kernel runs one dump per netlink socket and
/// answers a second one started meanwhile with EBUSY, and [`Eager`] sends requests queued
/// together back to back — two loops of the agent listing routes at once on its one socket
/// (the peer re-plan and the reconcile, issue 10) failed one of them ("RTM_GETROUTE: Device or
/// resource busy"), and the failed re-plan was skipped. A dump takes a millisecond or so.
pub(crate) async fn dump(
    handle: &rtnetlink::Handle,
    op: &'static str,
    msg: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    static ONE_DUMP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_DUMP.lock().await;
    send(handle, op, msg, NLM_F_REQUEST | NLM_F_DUMP).await
}

/// Sends a plain `NLM_F_REQUEST` (a non-dump get) and returns the replies.
pub(crate) async fn get(
    handle: &rtnetlink::Handle,
    op: &'static str,
    msg: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    send(handle, op, msg, NLM_F_REQUEST).await
}

async fn send(
    handle: &rtnetlink::Handle,
    op: &'static str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut handle = handle.clone();
    let mut replies = handle
        .request(req)
        .map_err(|_| NetlinkError::RequestFailed { op })?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) => {
                if e.code.is_some() {
                    return Err(NetlinkError::kernel(op, e.raw_code()));
                }
                // ACK: the stream ends here.
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Noop => {}
            NetlinkPayload::Overrun(_) => {
                return Err(NetlinkError::UnexpectedReply {
                    op,
                    detail: "overrun".to_owned(),
                })
            }
            other => {
                return Err(NetlinkError::UnexpectedReply {
                    op,
                    detail: format!("{other:?}"),
                })
            }
        }
    }
    Ok(out)
}
