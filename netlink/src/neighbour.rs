//! IPv4 neighbour (ARP) entries (RTM_*NEIGH).

use std::net::Ipv4Addr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

/// NUD_PERMANENT.
pub const NUD_PERMANENT: u16 = 0x80;

fn message(index: u32, ip: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    msg
}

/// `ip neigh replace IP lladdr MAC dev <index> nud permanent`.
pub async fn add_permanent(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    let mut msg = message(index, ip);
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
    let replies = match nl::get(
        handle,
        "RTM_GETNEIGH",
        RouteNetlinkMessage::GetNeighbour(message(index, ip)),
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
