//! The kernel objects vpcnet touches, one module per object, each a small typed
//! function over an [`rtnetlink::Handle`]. IPv4, and the IPv6 objects of a pod attachment.
//!
//! Every function works in the network namespace its handle's socket was created in.
//! To work inside another namespace use [`netns::run_in`], which enters it on a
//! dedicated OS thread (setns changes only the calling thread) and builds a
//! current-thread runtime and a netlink socket there.

pub mod address;
pub mod conntrack;
pub mod error;
pub mod link;
pub mod neighbour;
pub mod netns;
mod nfnl;
pub mod nftables;
mod nl;
pub mod route;
pub mod route_batch;
pub mod rule;
pub mod sysctl;
pub mod veth;

pub use error::NetlinkError;

/// Route protocol number that tags every route vpcnet installs (see `ip route show proto 171`),
/// so reconcile and GC can tell our routes from everyone else's.
pub const RTPROT_VPCNET: u8 = 171;

/// Opens a netlink route socket in the calling thread's current network namespace and spawns
/// its connection task on the current tokio runtime.
pub fn connect() -> Result<rtnetlink::Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(nl::Eager(conn));
    Ok(handle)
}
