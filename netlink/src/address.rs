//! Interface addresses (RTM_*ADDR): IPv4, and IPv6 without duplicate address detection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
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

/// One IPv6 address of an interface as [`list_v6`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressV6 {
    /// The address (IFA_ADDRESS; for IPv6 there is no separate local address).
    pub ip: Ipv6Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// `IFA_F_*` flags (IFA_FLAGS when present, else the header's 8 bits).
    pub flags: u32,
}

impl AddressV6 {
    /// `IFA_F_TENTATIVE`: duplicate address detection has not finished, the address cannot
    /// be used as a source yet (`ip addr` shows `tentative`).
    pub fn is_tentative(&self) -> bool {
        self.flags & AddressFlags::Tentative.bits() != 0
    }

    /// `IFA_F_NODAD`: added without duplicate address detection (`ip addr` shows `nodad`).
    pub fn is_nodad(&self) -> bool {
        self.flags & AddressFlags::Nodad.bits() != 0
    }
}

/// `ip -6 addr add IP/PREFIX dev <index> nodad` (scope global): usable at once, never
/// `tentative`, no DAD probes sent. Fails with EEXIST when the address is already on the
/// interface.
pub async fn add_v6_nodad(
    handle: &Handle,
    index: u32,
    ip: Ipv6Addr,
    prefix_len: u8,
) -> Result<(), NetlinkError> {
    if prefix_len > 128 {
        return Err(NetlinkError::InvalidArgument(format!(
            "IPv6 prefix length {prefix_len}"
        )));
    }
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(ip)));
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    nl::request(
        handle,
        "RTM_NEWADDR",
        RouteNetlinkMessage::NewAddress(msg),
        nl::CREATE_EXCL,
    )
    .await?;
    Ok(())
}

/// `ip -6 addr show dev <index>`: the IPv6 addresses of one interface, with their flags.
pub async fn list_v6(handle: &Handle, index: u32) -> Result<Vec<AddressV6>, NetlinkError> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet6;
    req.header.index = index;
    let replies = nl::dump(handle, "RTM_GETADDR", RouteNetlinkMessage::GetAddress(req)).await?;
    let mut out = Vec::new();
    for m in &replies {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the filter: apply it here.
        if a.header.family != AddressFamily::Inet6 || a.header.index != index {
            continue;
        }
        let mut ip = None;
        let mut flags = u32::from(a.header.flags.bits());
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Address(IpAddr::V6(v)) => ip = Some(*v),
                AddressAttribute::Flags(f) => flags = f.bits(),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            out.push(AddressV6 {
                ip,
                prefix_len: a.header.prefix_len,
                flags,
            });
        }
    }
    Ok(out)
}
