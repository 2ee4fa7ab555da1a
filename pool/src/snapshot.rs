//! The serialized form of a [`Pool`]: config, held prefixes, allocations and cooldowns.
//! Loading rebuilds the pool through the same checks as journal replay.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{net_serde, Allocation, Millis, Pool, PoolConfig, PoolError, Slot};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct Snapshot {
    version: u32,
    config: PoolConfig,
    prefixes: Vec<SnapPrefix>,
    allocations: Vec<Allocation>,
    /// Released addresses with their cooldown deadline (possibly already past).
    cooling: Vec<SnapCooling>,
}

#[derive(Serialize, Deserialize)]
struct SnapPrefix {
    #[serde(with = "net_serde")]
    prefix: Ipv4Network,
    claimed_at: Millis,
}

#[derive(Serialize, Deserialize)]
struct SnapCooling {
    ip: Ipv4Addr,
    until: Millis,
}

impl From<Pool> for Snapshot {
    fn from(pool: Pool) -> Snapshot {
        let mut prefixes = Vec::with_capacity(pool.prefixes.len());
        let mut allocations = Vec::with_capacity(pool.by_key.len());
        let mut cooling = Vec::new();
        for p in pool.prefixes.into_values() {
            prefixes.push(SnapPrefix {
                prefix: p.net,
                claimed_at: p.claimed_at,
            });
            let (first, last) = (u32::from(p.net.network()), p.last());
            for (slot, addr) in p.slots.into_vec().into_iter().zip(first..=last) {
                match slot {
                    Slot::Free => {}
                    Slot::Assigned(a) => allocations.push(*a),
                    Slot::Cooling(until) => cooling.push(SnapCooling {
                        ip: Ipv4Addr::from(addr),
                        until,
                    }),
                }
            }
        }
        Snapshot {
            version: VERSION,
            config: pool.cfg,
            prefixes,
            allocations,
            cooling,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    #[error("unsupported pool snapshot version {0} (expected {VERSION})")]
    Version(u32),
    #[error("inconsistent pool snapshot: {0}")]
    Inconsistent(#[from] PoolError),
}

impl TryFrom<Snapshot> for Pool {
    type Error = SnapshotError;

    fn try_from(snap: Snapshot) -> Result<Pool, SnapshotError> {
        if snap.version != VERSION {
            return Err(SnapshotError::Version(snap.version));
        }
        let mut pool = Pool::new(snap.config);
        for p in snap.prefixes {
            pool.insert_prefix(p.prefix, p.claimed_at)?;
        }
        for a in snap.allocations {
            pool.insert_alloc(a)?;
        }
        for c in snap.cooling {
            pool.set_cooling(c.ip, c.until)?;
        }
        Ok(pool)
    }
}
