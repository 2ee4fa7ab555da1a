//! nfnetlink framing shared by [`crate::conntrack`] and [`crate::nftables`] (its reply walk by
//! [`crate::route_batch`] too: plain netlink headers): one message
//! (netlink header + `nfgenmsg` + attributes), attribute iteration, and walking the kernel's
//! replies, over a `NETLINK_NETFILTER` socket of the calling thread's network namespace.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::NetlinkError;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NFGEN_HDRLEN: usize = 4;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: header, nfgenmsg for `family` and `res_id` (host order; sent big
/// endian), then `attrs` (already encoded).
pub(crate) fn message(
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len());
    push_message(&mut m, msg_type, flags, seq, family, res_id, attrs);
    m
}

/// [`message`], appended to `out` (a batch).
pub(crate) fn push_message(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + NFGEN_HDRLEN + attrs.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // version
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(align4(out.len()), 0);
}

/// Iterates the attributes in `buf`: (type without flags, payload, whole attribute bytes).
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let item = (kind, &rest[4..len], &rest[..len]);
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(item)
    })
}

/// One message of a reply buffer.
pub(crate) struct Reply<'a> {
    pub kind: u16,
    pub seq: u32,
    /// Everything after the netlink header.
    pub body: &'a [u8],
}

/// Iterates the netlink messages in `buf` (stops at a truncated one).
pub(crate) fn replies(buf: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let r = Reply {
            kind,
            seq,
            body: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(r)
    })
}

/// The error code of an `NLMSG_ERROR` body (0 = ACK), as a positive errno.
pub(crate) fn error_code(body: &[u8]) -> i32 {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
        .saturating_abs()
}

/// Walks the netlink messages in `buf`, calling `f(type, payload after nfgenmsg)`. Returns
/// `Ok(true)` at `NLMSG_DONE`; an `NLMSG_ERROR` with a non-zero code is returned as that
/// errno.
pub(crate) fn walk(buf: &[u8], mut f: impl FnMut(u16, &[u8])) -> Result<bool, i32> {
    for r in replies(buf) {
        match r.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = error_code(r.body);
                if code != 0 {
                    return Err(code);
                }
            }
            _ => f(r.kind, r.body.get(NFGEN_HDRLEN..).unwrap_or(&[])),
        }
    }
    Ok(false)
}

/// A `NETLINK_NETFILTER` socket bound and connected to the kernel.
pub(crate) fn open() -> Result<Socket, NetlinkError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
    s.bind_auto().map_err(NetlinkError::Socket)?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Socket)?;
    Ok(s)
}
