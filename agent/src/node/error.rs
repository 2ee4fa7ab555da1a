//! What can go wrong in a node operation. Each variant says what happened; which CNI code the
//! plugin gets for it is decided in one place, [`crate::server`].

use ipnetwork::IpNetwork;

use crate::datastore::DatastoreError;
use crate::node::store::StoreError;
use vpcnet_pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The change could not be journalled: the pool is as it was before the request.
    #[error("{full}cannot record the change: {0}", full = disk_full_prefix(.0))]
    Persist(#[from] StoreError),
    /// The pool refused (max-pods, no free address and no growth asked, a bad prefix…).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The IPv6 pool refused (dual-stack: the IPv4 half was undone, nothing written).
    #[error("IPv6: {0}")]
    Pool6(PoolError),
    /// The datastore could not be read or written.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A fresh read of the claims shows no free prefix (the message carries the figures).
    #[error("{0}")]
    VpcExhausted(String),
    /// Every claim this round lost to another node, yet free prefixes remain: contention.
    #[error(
        "lost {lost} prefix claim races to other nodes in {rounds} rounds; free prefixes \
         remain, try again"
    )]
    ClaimRacesLost { lost: u32, rounds: u32 },
    /// Claimed in the datastore but not recordable here: not ours to use (the next claims
    /// reconcile releases it, or the next start adopts it).
    #[error("claimed {prefix} but cannot record it: {source}")]
    ClaimNotRecorded {
        prefix: IpNetwork,
        source: StoreError,
    },
    /// An ADD found the pool empty and could not grow it.
    #[error("no free address: {0}")]
    NoFreeAddress(Box<NodeError>),
}

impl NodeError {
    /// The datastore is reachable but behind ([`DatastoreError::is_busy`]).
    pub fn is_busy(&self) -> bool {
        match self {
            NodeError::Datastore(e) => e.is_busy(),
            NodeError::NoFreeAddress(e) => e.is_busy(),
            _ => false,
        }
    }
}

fn disk_full_prefix(e: &StoreError) -> &'static str {
    if e.is_disk_full() {
        "disk full: "
    } else {
        ""
    }
}
