//! The one place that talks to the netlink connection: send a request, collect the replies,
//! turn a NACK into a [`NetlinkError::Kernel`] carrying its errno.

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
pub(crate) async fn dump(
    handle: &rtnetlink::Handle,
    op: &'static str,
    msg: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
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
