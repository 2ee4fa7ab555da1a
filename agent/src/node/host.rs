//! The host side of a release: the pod's host route, its host veth (queued for the reaper)
//! and the conntrack entries of its address.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Node;
use crate::datastore::Datastore;
use vpcnet_netlink::{link, route};
use vpcnet_proto::{attachment, naming};

/// The IPv6 pod host route's shape, shared with the plugin that installs it.
pub use vpcnet_proto::attachment::{host_route6, is_host_route6_shape};

impl<D: Datastore> Node<D> {
    /// Removes our host routes for `ip` (`/32`) and `ip6` (`/128`) and queues `host_veth`
    /// for deletion and the addresses' conntrack entries for a flush (both done by the
    /// reaper, batched, off the ADD path: `loops/reap.rs`).
    pub async fn teardown(&self, ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>, host_veth: &str) {
        // Only a link that proves to be ours (name-derived MAC) is deleted, and only a route
        // through it (or, when it is gone, the route the plugin made) is removed.
        let index = match link::get_by_name(&self.net, host_veth).await {
            Ok(Some(l)) if naming::is_our_host_veth(&l.name, l.mac) => Some(l.index),
            Ok(Some(_)) => {
                tracing::warn!(veth = host_veth, "not a veth vpcnet made (MAC): left alone");
                return;
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(veth = host_veth, error = %e, "looking up host veth");
                None
            }
        };
        if let Some(ip) = ip {
            if let Err(e) = route::delete(&self.net, &attachment::host_route(ip, index)).await {
                tracing::warn!(%ip, error = %e, "deleting host route");
            }
            self.queue_conntrack_flush(ip);
        }
        if let Some(ip6) = ip6 {
            if let Err(e) = route::delete_v6(&self.net, &host_route6(ip6, index)).await {
                tracing::warn!(%ip6, error = %e, "deleting IPv6 host route");
            }
            self.queue_conntrack_flush(ip6);
        }
        if let Some(index) = index {
            self.queue_veth_deletion(index);
        }
    }
}
