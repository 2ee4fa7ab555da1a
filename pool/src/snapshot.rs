//! The serialized form of a [`Pool`]: config, held prefixes, allocations and cooldowns.
//! Loading rebuilds the pool through the same checks as journal replay.

use serde::{Deserialize, Serialize};

use super::{net_serde, AllocationOf, Family, Millis, PoolConfigOf, PoolError, PoolOf, Slot};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(super) struct Snapshot<F: Family> {
    version: u32,
    config: PoolConfigOf<F>,
    prefixes: Vec<SnapPrefix<F>>,
    allocations: Vec<AllocationOf<F>>,
    /// Released addresses with their cooldown deadline (possibly already past).
    cooling: Vec<SnapCooling<F>>,
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapPrefix<F: Family> {
    #[serde(with = "net_serde")]
    prefix: F::Net,
    claimed_at: Millis,
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapCooling<F: Family> {
    ip: F::Addr,
    until: Millis,
}

impl<F: Family> From<PoolOf<F>> for Snapshot<F> {
    fn from(pool: PoolOf<F>) -> Snapshot<F> {
        let mut prefixes = Vec::with_capacity(pool.prefixes.len());
        let mut allocations = Vec::with_capacity(pool.by_key.len());
        let mut cooling = Vec::new();
        for p in pool.prefixes.into_values() {
            prefixes.push(SnapPrefix {
                prefix: p.net,
                claimed_at: p.claimed_at,
            });
            for (addr, slot) in p.slots {
                match slot {
                    Slot::Assigned(a) => allocations.push(*a),
                    Slot::Cooling(until) => cooling.push(SnapCooling {
                        ip: F::addr(addr),
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

impl<F: Family> TryFrom<Snapshot<F>> for PoolOf<F> {
    type Error = SnapshotError;

    fn try_from(snap: Snapshot<F>) -> Result<PoolOf<F>, SnapshotError> {
        if snap.version != VERSION {
            return Err(SnapshotError::Version(snap.version));
        }
        let mut pool = PoolOf::new(snap.config);
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
