//! IPv4 interface addresses (RTM_*ADDR).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::{nl, NetlinkError};

fn check_prefix(prefix_len: u8) -> Result<(), NetlinkError> {
    if prefix_len > 32 {
        return Err(NetlinkError::InvalidArgument(format!(
            "IPv4 prefix length {prefix_len}"
        )));
    }
    Ok(())
}

/// `ip addr add IP/PREFIX dev <index>` (scope global, no broadcast). Fails with EEXIST
/// when the address is already on the interface.
pub async fn add(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetlinkError> {
    check_prefix(prefix_len)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    nl::request(
        handle,
        "RTM_NEWADDR",
        RouteNetlinkMessage::NewAddress(msg),
        nl::CREATE_EXCL,
    )
    .await?;
    Ok(())
}

/// `ip -4 addr show dev <index>`: the IPv4 addresses (local address, prefix length) of one
/// interface.
pub async fn list_v4(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    req.header.index = index;
    let replies = nl::dump(handle, "RTM_GETADDR", RouteNetlinkMessage::GetAddress(req)).await?;
    let mut out = Vec::new();
    for m in &replies {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the filter: apply it here.
        if a.header.family != AddressFamily::Inet || a.header.index != index {
            continue;
        }
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push((ip, a.header.prefix_len));
        }
    }
    Ok(out)
}
