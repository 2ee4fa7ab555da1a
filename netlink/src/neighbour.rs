//! Neighbour entries (RTM_*NEIGH): IPv4 (ARP) and IPv6 (NDP).

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

/// NUD_PERMANENT.
pub const NUD_PERMANENT: u16 = 0x80;

fn message(index: u32, ip: Ipv4Addr) -> NeighbourMessage {
    message_of(index, AddressFamily::Inet, NeighbourAddress::Inet(ip))
}

fn message_of(index: u32, family: AddressFamily, dst: NeighbourAddress) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    msg
}

/// `ip neigh replace IP lladdr MAC dev <index> nud permanent`.
pub async fn add_permanent(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    add_permanent_msg(handle, message(index, ip), mac).await
}

/// `ip -6 neigh replace IP lladdr MAC dev <index> nud permanent`: the kernel never sends
/// neighbour solicitations for `ip` on this link.
pub async fn add_permanent_v6(
    handle: &Handle,
    index: u32,
    ip: Ipv6Addr,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    let msg = message_of(index, AddressFamily::Inet6, NeighbourAddress::Inet6(ip));
    add_permanent_msg(handle, msg, mac).await
}

async fn add_permanent_msg(
    handle: &Handle,
    mut msg: NeighbourMessage,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    nl::request(
        handle,
        "RTM_NEWNEIGH",
        RouteNetlinkMessage::NewNeighbour(msg),
        nl::CREATE_REPLACE,
    )
    .await?;
    Ok(())
}

/// `ip neigh get IP dev <index>`: the entry's MAC and NUD state (e.g. [`NUD_PERMANENT`]),
/// `Ok(None)` when there is no entry (or it has no link-layer address yet).
pub async fn get_v4(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
) -> Result<Option<([u8; 6], u16)>, NetlinkError> {
    get_msg(handle, message(index, ip)).await
}

/// `ip -6 neigh get IP dev <index>`: like [`get_v4`], for an IPv6 neighbour.
pub async fn get_v6(
    handle: &Handle,
    index: u32,
    ip: Ipv6Addr,
) -> Result<Option<([u8; 6], u16)>, NetlinkError> {
    let msg = message_of(index, AddressFamily::Inet6, NeighbourAddress::Inet6(ip));
    get_msg(handle, msg).await
}

async fn get_msg(
    handle: &Handle,
    msg: NeighbourMessage,
) -> Result<Option<([u8; 6], u16)>, NetlinkError> {
    let replies = match nl::get(
        handle,
        "RTM_GETNEIGH",
        RouteNetlinkMessage::GetNeighbour(msg),
    )
    .await
    {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(replies.iter().find_map(|m| {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            return None;
        };
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(mac.as_slice())
                .ok()
                .map(|mac| (mac, u16::from(n.header.state))),
            _ => None,
        })
    }))
}
