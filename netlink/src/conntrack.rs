//! Connection-tracking entries (ctnetlink, `NETLINK_NETFILTER`): flush every entry of one
//! address — what `conntrack -D -s IP` and `conntrack -D -d IP` (and the same for the reply
//! direction) do together.
//!
//! Why: a released address is handed to another pod after its cooldown. A conntrack entry of
//! the old pod can outlive that (an unreplied UDP flow lives 30 s and is refreshed by every
//! packet, a TCP `SYN_SENT` 120 s, an established one 5 days), and while it lives it steers
//! the new pod's packets by the old pod's NAT decisions (e.g. a DNAT of a port mapping). So
//! the agent removes every entry of an address when it releases it, and the cooldown only
//! has to cover peers' caches, not the kernel's connection table.
//!
//! Synchronous (a few messages on a private socket); callers on a runtime use
//! `spawn_blocking`. Works in the network namespace of the calling thread.

use std::net::IpAddr;

use crate::nfnl::{
    align4, attrs, message, open, walk, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::NetlinkError;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

fn kernel(op: &'static str, errno: i32) -> NetlinkError {
    NetlinkError::Kernel { op, errno }
}

fn nested(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _, _)| *k == kind).map(|(_, p, _)| p)
}

/// The addresses of a tuple attribute's payload (`CTA_TUPLE_IP` inside it).
#[cfg(test)]
fn tuple_addrs(tuple: &[u8]) -> Vec<IpAddr> {
    let Some(ip) = nested(tuple, CTA_TUPLE_IP) else {
        return Vec::new();
    };
    attrs(ip)
        .filter_map(|(k, p, _)| match k {
            CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(p).ok().map(IpAddr::from),
            CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(p).ok().map(IpAddr::from),
            _ => None,
        })
        .collect()
}

/// One direction of a connection as conntrack keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports of TCP/UDP/SCTP (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
}

/// One conntrack entry: its original direction (as the initiator sent it) and its reply
/// direction (as the responder answers it: after DNAT the responder is `reply.src`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number.
    pub proto: u8,
    pub orig: Tuple,
    pub reply: Tuple,
}

/// A tuple attribute's payload as a [`Tuple`] and its protocol number (`None` when it
/// lacks the addresses).
fn tuple(payload: &[u8]) -> Option<(u8, Tuple)> {
    let ip = nested(payload, CTA_TUPLE_IP)?;
    let (mut src, mut dst) = (None, None);
    for (k, p, _) in attrs(ip) {
        match k {
            CTA_IP_V4_SRC => src = <[u8; 4]>::try_from(p).ok().map(IpAddr::from),
            CTA_IP_V4_DST => dst = <[u8; 4]>::try_from(p).ok().map(IpAddr::from),
            CTA_IP_V6_SRC => src = <[u8; 16]>::try_from(p).ok().map(IpAddr::from),
            CTA_IP_V6_DST => dst = <[u8; 16]>::try_from(p).ok().map(IpAddr::from),
            _ => {}
        }
    }
    let (mut proto, mut sport, mut dport) = (0, 0, 0);
    if let Some(pr) = nested(payload, CTA_TUPLE_PROTO) {
        for (k, p, _) in attrs(pr) {
            let port = || <[u8; 2]>::try_from(p).ok().map(u16::from_be_bytes);
            match k {
                CTA_PROTO_NUM => proto = p.first().copied().unwrap_or(0),
                CTA_PROTO_SRC_PORT => sport = port().unwrap_or(0),
                CTA_PROTO_DST_PORT => dport = port().unwrap_or(0),
                _ => {}
            }
        }
    }
    Some((
        proto,
        Tuple {
            src: src?,
            dst: dst?,
            sport,
            dport,
        },
    ))
}

/// The entry's flow, if both tuples parse.
fn flow(entry: &[u8]) -> Option<Flow> {
    let orig = tuple(nested(entry, CTA_TUPLE_ORIG)?)?;
    let reply = tuple(nested(entry, CTA_TUPLE_REPLY)?)?;
    Some(Flow {
        proto: orig.0,
        orig: orig.1,
        reply: reply.1,
    })
}

/// What identifies one entry for deletion: its original tuple (and zone), as the kernel
/// sent them, and whether it involves `addr` in either direction.
#[cfg(test)]
fn delete_attrs_if_involves(entry: &[u8], addr: IpAddr) -> Option<Vec<u8>> {
    let involves = |p: &[u8]| tuple_addrs(p).contains(&addr);
    let hit =
        attrs(entry).any(|(k, p, _)| (k == CTA_TUPLE_ORIG || k == CTA_TUPLE_REPLY) && involves(p));
    hit.then(|| delete_attrs(entry)).flatten()
}

/// The attributes that identify `entry` for `IPCTNL_MSG_CT_DELETE`: its original tuple (and
/// zone), as the kernel sent them.
fn delete_attrs(entry: &[u8]) -> Option<Vec<u8>> {
    let mut orig_whole = None;
    let mut zone_whole = None;
    for (kind, _, whole) in attrs(entry) {
        match kind {
            CTA_TUPLE_ORIG => orig_whole = Some(whole),
            CTA_ZONE => zone_whole = Some(whole),
            _ => {}
        }
    }
    let orig = orig_whole?;
    let mut out = Vec::with_capacity(orig.len() + 8);
    for a in [Some(orig), zone_whole].into_iter().flatten() {
        out.extend_from_slice(a);
        out.resize(align4(out.len()), 0);
    }
    // The kernel wants the nested flag on tuples it parses back.
    if let Some(t) = out.get_mut(2..4) {
        let kind = u16::from_ne_bytes([t[0], t[1]]) | NLA_F_NESTED;
        t.copy_from_slice(&kind.to_ne_bytes());
    }
    Some(out)
}

/// Deletes every conntrack entry whose original or reply tuple has `addr` as source or
/// destination, in the calling thread's network namespace. Returns how many it deleted. An
/// entry that vanished meanwhile is not an error.
pub fn flush_address(addr: IpAddr) -> Result<usize, NetlinkError> {
    flush_addresses(&[addr])
}

/// [`flush_address`] for several addresses, of either family, in **one** dump of the table.
///
/// Why one: a dump walks every bucket of the kernel's conntrack hash table, however few
/// entries it holds (262 144 buckets on a 23 GB node: ~5–10 ms of CPU per walk, measured on
/// kernel 6.18, issue 14), and a dump of one family walks all of them too. So the flush of a
/// dual-stack attachment, or of a batch of released attachments, costs one walk, not one
/// per address or family: the dump asks for every family (`AF_UNSPEC`) and each entry is
/// deleted with its own family.
pub fn flush_addresses(addrs: &[IpAddr]) -> Result<usize, NetlinkError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    delete_matching(None, |f| {
        [f.orig.src, f.orig.dst, f.reply.src, f.reply.dst]
            .iter()
            .any(|a| addrs.contains(a))
    })
}

/// Deletes every conntrack entry of the family (IPv4, or IPv6 when `ipv6`) for whose flow
/// `doomed` says true, in the calling thread's network namespace. Returns how many it
/// deleted. An entry that vanished meanwhile is not an error.
pub fn delete_where(ipv6: bool, doomed: impl FnMut(&Flow) -> bool) -> Result<usize, NetlinkError> {
    delete_matching(Some(ipv6), doomed)
}

fn family_of(ipv6: bool) -> u8 {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    u8::try_from(family).unwrap_or(0)
}

/// The dump (of one family, or of all when `ipv6` is `None`) and the deletes. Every delete
/// names the entry's own family and original tuple: a delete without a tuple would flush
/// the whole table, so an entry whose tuple cannot be read is never deleted.
fn delete_matching(
    ipv6: Option<bool>,
    mut doomed: impl FnMut(&Flow) -> bool,
) -> Result<usize, NetlinkError> {
    let dump_family = ipv6.map_or(0, family_of); // 0: AF_UNSPEC, every family
    let sock = open()?;
    let get = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    sock.send(
        &message(get, NLM_F_REQUEST | NLM_F_DUMP, 1, dump_family, 0, &[]),
        0,
    )
    .map_err(NetlinkError::Socket)?;
    let mut to_delete = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock
            .recv(&mut &mut buf[..], 0)
            .map_err(NetlinkError::Socket)?;
        let done = walk(&buf[..n], |_, entry| {
            let Some(f) = flow(entry) else { return };
            if !doomed(&f) {
                return;
            }
            // The family the kernel parses the tuple with: the entry's own.
            let family = family_of(f.orig.src.is_ipv6());
            if ipv6.is_some_and(|v6| family != family_of(v6)) {
                return;
            }
            if let Some(a) = delete_attrs(entry) {
                to_delete.push((family, a));
            }
        })
        .map_err(|errno| kernel("IPCTNL_MSG_CT_GET", errno))?;
        if done || n == 0 {
            break;
        }
    }
    let del = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    let mut deleted = 0;
    for (seq, (family, attrs)) in (2u32..).zip(&to_delete) {
        sock.send(
            &message(del, NLM_F_REQUEST | NLM_F_ACK, seq, *family, 0, attrs),
            0,
        )
        .map_err(NetlinkError::Socket)?;
        let n = sock
            .recv(&mut &mut buf[..], 0)
            .map_err(NetlinkError::Socket)?;
        match walk(&buf[..n], |_, _| {}) {
            Ok(_) => deleted += 1,
            Err(libc::ENOENT) => {} // gone meanwhile (timed out, or another flush)
            Err(errno) => return Err(kernel("IPCTNL_MSG_CT_DELETE", errno)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(4 + payload.len()).expect("len").to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        attr(kind | NLA_F_NESTED, &attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip))
    }

    #[test]
    fn entry_matches_in_either_direction_and_keeps_its_orig_tuple() {
        let pod = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        // A DNAT'ed flow: the pod appears only in the reply tuple.
        let entry = [
            tuple(CTA_TUPLE_ORIG, [192, 168, 1, 1], [10, 9, 9, 9]),
            tuple(CTA_TUPLE_REPLY, [10, 0, 0, 5], [192, 168, 1, 1]),
            attr(CTA_ZONE, &[0, 0]),
        ]
        .concat();
        let del = delete_attrs_if_involves(&entry, pod).expect("involves the pod");
        let orig = tuple(CTA_TUPLE_ORIG, [192, 168, 1, 1], [10, 9, 9, 9]);
        assert_eq!(&del[..orig.len()], &orig[..]);
        let f = flow(&entry).expect("a flow");
        assert_eq!(f.orig.src, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(f.reply.src, pod);
        assert_eq!(attrs(&del).count(), 2, "orig tuple + zone");
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 6));
        assert!(delete_attrs_if_involves(&entry, other).is_none());
    }

    #[test]
    fn truncated_input_is_not_read_past_its_end() {
        let entry = tuple(CTA_TUPLE_ORIG, [10, 0, 0, 5], [10, 0, 0, 6]);
        for cut in 0..entry.len() {
            let _ = delete_attrs_if_involves(&entry[..cut], IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
        }
        assert_eq!(walk(&[1, 2, 3], |_, _| {}), Ok(false));
    }
}
