//! Policy-routing rules (RTM_*RULE): `ip rule add from SRC/32 lookup TABLE priority PRIO`.
//!
//! vpcnet uses one per secondary pod interface, so traffic sourced from that interface's
//! address leaves through it (symmetric routing; strict `rp_filter` on the node or in the pod
//! would otherwise drop it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

/// The rule `from src/32 (IPv6: /128) lookup table priority priority`.
fn message(src: IpAddr, table: u32, priority: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    (msg.header.family, msg.header.src_len) = match src {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Source(src));
    msg.attributes.push(RuleAttribute::Table(table));
    msg.attributes.push(RuleAttribute::Priority(priority));
    msg
}

/// `ip rule add from SRC/32 lookup TABLE priority PRIORITY`; an identical rule already there is
/// success (a repeated ADD).
pub async fn add_from(
    handle: &Handle,
    src: Ipv4Addr,
    table: u32,
    priority: u32,
) -> Result<(), NetlinkError> {
    add_from_ip(handle, IpAddr::V4(src), table, priority).await
}

/// `ip -6 rule add from SRC/128 lookup TABLE priority PRIORITY`, like [`add_from`].
pub async fn add_from_v6(
    handle: &Handle,
    src: Ipv6Addr,
    table: u32,
    priority: u32,
) -> Result<(), NetlinkError> {
    add_from_ip(handle, IpAddr::V6(src), table, priority).await
}

async fn add_from_ip(
    handle: &Handle,
    src: IpAddr,
    table: u32,
    priority: u32,
) -> Result<(), NetlinkError> {
    match nl::request(
        handle,
        "RTM_NEWRULE",
        RouteNetlinkMessage::NewRule(message(src, table, priority)),
        nl::CREATE_EXCL,
    )
    .await
    {
        Err(e) if e.is_exists() => Ok(()),
        r => r.map(|_| ()),
    }
}

/// True when the rule `from SRC/32 lookup TABLE` exists (any priority).
pub async fn has_from(handle: &Handle, src: Ipv4Addr, table: u32) -> Result<bool, NetlinkError> {
    has_from_ip(handle, IpAddr::V4(src), table).await
}

/// True when the rule `from SRC/128 lookup TABLE` exists (any priority).
pub async fn has_from_v6(handle: &Handle, src: Ipv6Addr, table: u32) -> Result<bool, NetlinkError> {
    has_from_ip(handle, IpAddr::V6(src), table).await
}

async fn has_from_ip(handle: &Handle, src: IpAddr, table: u32) -> Result<bool, NetlinkError> {
    let probe = message(src, table, 0);
    let mut req = RuleMessage::default();
    req.header.family = probe.header.family;
    let replies = nl::dump(handle, "RTM_GETRULE", RouteNetlinkMessage::GetRule(req)).await?;
    Ok(replies.iter().any(|m| match m {
        RouteNetlinkMessage::NewRule(r) => {
            r.header.family == probe.header.family
                && r.header.src_len == probe.header.src_len
                && r.attributes.contains(&RuleAttribute::Source(src))
                && (r.attributes.contains(&RuleAttribute::Table(table))
                    || u32::from(r.header.table) == table)
        }
        _ => false,
    }))
}
