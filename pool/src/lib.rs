//! The pure node allocator: which addresses of the node's prefixes are free, assigned or
//! cooling, plus the warm-pool policy ([`PoolOf::plan`]). DESIGN.md §4.
//!
//! One allocator for both address families ([`V4`], [`V6`]): [`Pool`] is the IPv4 pool,
//! [`Pool6`] the IPv6 one (see docs/dual-stack.md). Held prefixes keep only the addresses that
//! are assigned or cooling (absent = free), so an IPv6 /80 costs what it uses, like a /28.
//!
//! No I/O and no clock: time is passed in as `now`. Every mutation returns the [`PoolEventOf`]
//! the agent must make durable before replying; [`PoolOf::apply`] replays those events, and
//! the live mutators go through the same code path, so replay reproduces the live state
//! exactly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

mod family;
mod net_serde;
mod policy;
mod snapshot;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_undo;
#[cfg(test)]
mod tests_v6;
mod undo;

use family::{contains, host_mask, is_aligned, span};
pub use family::{Family, V4, V6};
pub use undo::Savepoint;
use undo::{Undo, UndoLog};

/// Unix time in milliseconds.
pub type Millis = u64;

/// Shortest prefix length an IPv4 node may hold (a /16 is 65 536 slots). IPv6: 64
/// ([`Family::MIN_PREFIX_LEN`]).
pub const MIN_PREFIX_LEN: u8 = V4::MIN_PREFIX_LEN;

/// What identifies an allocation: CNI's (network name, container ID, ifname).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AllocKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// Metadata kept with an allocation (not part of the key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub netns: Option<String>,
}

/// One assigned address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct AllocationOf<F: Family> {
    pub ip: F::Addr,
    pub key: AllocKey,
    pub meta: PodMeta,
    pub assigned_at: Millis,
}

/// The agent's flags that shape the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct PoolConfigOf<F: Family> {
    #[serde(with = "net_serde::vec")]
    pub vpc_cidrs: Vec<F::Net>,
    /// Length of the prefixes the node claims (default 28; IPv6: see docs/dual-stack.md).
    pub prefix_len: u8,
    /// Keep at least this many addresses available (0 = off).
    pub warm_ip_target: u32,
    /// Hold at least this many addresses in total (0 = off).
    pub minimum_ip_target: u32,
    /// Keep at least this many wholly-free prefixes (default 1).
    pub warm_prefix_target: u32,
    /// At most this many assigned addresses; also caps growth (default 110).
    pub max_pods: u32,
    /// A released address is not reused for this long (default 30 s).
    pub cooldown_ms: u64,
    /// A prefix is only released after being held this long (default 60 s).
    pub min_prefix_age_ms: u64,
}

impl<F: Family> Default for PoolConfigOf<F> {
    fn default() -> Self {
        PoolConfigOf {
            vpc_cidrs: Vec::new(),
            prefix_len: 28,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 1,
            max_pods: 110,
            cooldown_ms: 30_000,
            min_prefix_age_ms: 60_000,
        }
    }
}

/// Every state change, as persisted in the agent's journal. [`PoolOf::apply`] replays them
/// deterministically (no choice is made during replay: the IP is in the event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "camelCase", bound = "")]
pub enum PoolEventOf<F: Family> {
    PrefixAdded {
        #[serde(with = "net_serde")]
        prefix: F::Net,
        at: Millis,
    },
    PrefixRemoved {
        #[serde(with = "net_serde")]
        prefix: F::Net,
    },
    Assigned {
        alloc: AllocationOf<F>,
    },
    Released {
        key: AllocKey,
        ip: F::Addr,
        cool_until: Millis,
    },
}

impl<F: Family> PoolEventOf<F> {
    /// The event changes which prefixes the node holds (not only a pod's address): the
    /// agent's journal makes such a change power-loss durable before it is acted on,
    /// because the datastore's claims follow it (docs/reliability.md, item 3).
    pub fn changes_prefixes(&self) -> bool {
        matches!(
            self,
            PoolEventOf::PrefixAdded { .. } | PoolEventOf::PrefixRemoved { .. }
        )
    }
}

/// The IPv4 pool and its types (the names every other crate uses).
pub type Pool = PoolOf<V4>;
pub type PoolConfig = PoolConfigOf<V4>;
pub type PoolEvent = PoolEventOf<V4>;
pub type Allocation = AllocationOf<V4>;
pub type PrefixInfo = PrefixInfoOf<V4>;
pub type PoolPlan = PoolPlanOf<V4>;
/// The IPv6 pool and its types.
pub type Pool6 = PoolOf<V6>;
pub type PoolConfig6 = PoolConfigOf<V6>;
pub type PoolEvent6 = PoolEventOf<V6>;
pub type Allocation6 = AllocationOf<V6>;
pub type PrefixInfo6 = PrefixInfoOf<V6>;
pub type PoolPlan6 = PoolPlanOf<V6>;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// No free address.
    #[error(
        "no free address: {assigned} of {total} addresses assigned and {cooling} cooling down; \
         the node needs more prefixes"
    )]
    Exhausted {
        assigned: u32,
        cooling: u32,
        total: u32,
    },
    /// The max-pods limit is reached.
    #[error("max-pods limit reached: {max_pods} addresses already assigned on this node")]
    MaxPods { max_pods: u32 },
    #[error("prefix {0} is not inside any VPC CIDR")]
    PrefixOutsideVpc(IpNetwork),
    /// Not of the configured length, or not aligned to it.
    #[error("prefix {0} is not an aligned prefix of the configured length")]
    PrefixMisaligned(IpNetwork),
    /// Equal to or overlapping a prefix already held.
    #[error("prefix {0} overlaps a prefix this node already holds")]
    PrefixAlreadyHeld(IpNetwork),
    #[error("prefix {0} is not held by this node")]
    PrefixNotHeld(IpNetwork),
    #[error("prefix {0} still has assigned or cooling addresses")]
    PrefixInUse(IpNetwork),
    /// Replay conflict: the address is assigned, cooling, or not in a held prefix.
    #[error("address {ip} is not free in this pool (journal conflict)")]
    AddressTaken { ip: IpAddr },
    /// Replay conflict: the key already holds an address.
    #[error("key already holds address {ip} (journal conflict)")]
    KeyAlreadyAssigned { ip: IpAddr },
    /// Replay of a release for a key with no allocation at that address.
    #[error("release for a key that holds no address there (journal conflict)")]
    UnknownKey,
}

/// Counts; an IPv6 prefix's (2^48 addresses in a /80) saturate at `u32::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PoolStats {
    /// Addresses that can be (or are) used: held addresses minus free VPC network/broadcast.
    pub total: u32,
    pub assigned: u32,
    /// Released addresses whose cooldown has not ended.
    pub cooling: u32,
    /// `total - assigned - cooling`.
    pub available: u32,
    pub prefixes: u32,
    /// Prefixes with no assigned and no cooling address.
    pub free_prefixes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolPlanOf<F: Family> {
    Steady,
    /// Claim this many more prefixes.
    Grow {
        prefixes: u32,
        reason: GrowReason,
    },
    /// Release these prefixes (youngest/highest first).
    Shrink {
        prefixes: Vec<F::Net>,
    },
}

/// The target that asked for the most prefixes (ties: in declaration order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowReason {
    WarmIpTarget,
    MinimumIpTarget,
    WarmPrefixTarget,
    Empty,
}

/// A computed view of one held prefix at some `now`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PrefixInfoOf<F: Family> {
    #[serde(with = "net_serde")]
    pub prefix: F::Net,
    pub claimed_at: Millis,
    pub assigned: u32,
    pub cooling: u32,
    /// Saturates at `u32::MAX` (IPv6).
    pub usable: u32,
}

/// An address of a held prefix that is not free: assigned, or released and cooling (also
/// past its deadline, until reused: see [`PoolOf::knows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot<F: Family> {
    Assigned(Box<AllocationOf<F>>),
    /// Released; reusable once `now >= until`.
    Cooling(Millis),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldPrefix<F: Family> {
    net: F::Net,
    first: u128,
    last: u128,
    claimed_at: Millis,
    /// Number of `Slot::Assigned` in `slots` (kept for the packing choice).
    assigned: u32,
    /// The addresses (bits) that are assigned or cooling; absent means free.
    slots: BTreeMap<u128, Slot<F>>,
}

/// What an address counts as at a given time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Assigned,
    Cooling,
    Free,
    /// Free, but a VPC network/broadcast address: never handed out, not counted.
    Reserved,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    assigned: u128,
    cooling: u128,
    free: u128,
}

impl Counts {
    fn usable(self) -> u128 {
        self.assigned + self.cooling + self.free
    }
    fn wholly_free(self) -> bool {
        self.assigned == 0 && self.cooling == 0
    }
}

/// The node's address pool for one family. `Serialize`/`Deserialize` give a snapshot
/// (validated on load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    into = "snapshot::Snapshot<F>",
    try_from = "snapshot::Snapshot<F>",
    bound = ""
)]
pub struct PoolOf<F: Family> {
    cfg: PoolConfigOf<F>,
    /// Network (and, IPv4, broadcast) addresses of the VPC CIDRs, sorted (derived from `cfg`).
    reserved: Vec<u128>,
    /// Held prefixes by first address; never overlapping.
    prefixes: BTreeMap<u128, HeldPrefix<F>>,
    by_key: HashMap<AllocKey, F::Addr>,
    /// What to put back when a savepoint is rolled back (not part of the pool's value).
    undo: UndoLog<F>,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn sat(n: u128) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<F: Family> PoolOf<F> {
    pub fn new(cfg: PoolConfigOf<F>) -> Self {
        let mut pool = PoolOf {
            cfg: PoolConfigOf::default(),
            reserved: Vec::new(),
            prefixes: BTreeMap::new(),
            by_key: HashMap::new(),
            undo: UndoLog::new(),
        };
        pool.set_config(cfg);
        pool
    }

    pub fn config(&self) -> &PoolConfigOf<F> {
        &self.cfg
    }

    /// Restart with new flags over old state. Held prefixes and allocations are kept even if
    /// they no longer fit the new VPC CIDRs or prefix length; the policy may release them.
    pub fn set_config(&mut self, cfg: PoolConfigOf<F>) {
        let mut reserved: Vec<u128> = cfg
            .vpc_cidrs
            .iter()
            .flat_map(|&c| {
                let (first, last) = span::<F>(c);
                [Some(first), F::RESERVES_LAST.then_some(last)]
            })
            .flatten()
            .collect();
        reserved.sort_unstable();
        reserved.dedup();
        let old_reserved = std::mem::replace(&mut self.reserved, reserved);
        let old = std::mem::replace(&mut self.cfg, cfg);
        self.undo
            .record(Undo::Config(Box::new((old, old_reserved))));
    }

    fn is_reserved(&self, addr: u128) -> bool {
        self.reserved.binary_search(&addr).is_ok()
    }

    fn classify(&self, addr: u128, slot: Option<&Slot<F>>, now: Millis) -> Class {
        match slot {
            Some(Slot::Assigned(_)) => Class::Assigned,
            Some(Slot::Cooling(until)) if *until > now => Class::Cooling,
            None | Some(Slot::Cooling(_)) => {
                if self.is_reserved(addr) {
                    Class::Reserved
                } else {
                    Class::Free
                }
            }
        }
    }

    fn counts(&self, p: &HeldPrefix<F>, now: Millis) -> Counts {
        let mut c = Counts::default();
        for (&addr, slot) in &p.slots {
            match self.classify(addr, Some(slot), now) {
                Class::Assigned => c.assigned += 1,
                Class::Cooling => c.cooling += 1,
                Class::Free | Class::Reserved => {}
            }
        }
        // Reserved addresses of this prefix that are not assigned or cooling now.
        let lo = self.reserved.partition_point(|&a| a < p.first);
        let hi = self.reserved.partition_point(|&a| a <= p.last);
        let reserved_free = self.reserved[lo..hi]
            .iter()
            .filter(|&&a| self.classify(a, p.slots.get(&a), now) == Class::Reserved)
            .count();
        let reserved_free = u128::try_from(reserved_free).unwrap_or(u128::MAX);
        let size = (p.last - p.first).saturating_add(1);
        c.free = size
            .saturating_sub(c.assigned)
            .saturating_sub(c.cooling)
            .saturating_sub(reserved_free);
        c
    }

    /// The held prefix containing the address `addr` (bits), by its first address.
    fn locate(&self, addr: u128) -> Option<u128> {
        let (&start, p) = self.prefixes.range(..=addr).next_back()?;
        (addr <= p.last).then_some(start)
    }

    fn prefix_of_mut(&mut self, ip: F::Addr) -> Option<&mut HeldPrefix<F>> {
        let start = self.locate(F::bits(ip))?;
        self.prefixes.get_mut(&start)
    }

    /// Whether `[first, last]` overlaps a held prefix.
    fn overlaps_held(&self, first: u128, last: u128) -> bool {
        self.prefixes
            .range(..=last)
            .next_back()
            .is_some_and(|(_, p)| p.last >= first)
    }

    fn in_vpc(&self, net: F::Net) -> bool {
        self.cfg.vpc_cidrs.iter().any(|&c| contains::<F>(c, net))
    }

    /// Same key already assigned → returns its existing ip and `None` (idempotent ADD).
    ///
    /// Otherwise picks a free address (never assigned, never cooling, never a VPC CIDR's
    /// network/broadcast address), packing: the held prefix with the most assigned (then most
    /// cooling) addresses that still has a free one, lowest such prefix on ties, lowest free
    /// address in it — so wholly-free prefixes stay wholly free and can be released.
    pub fn assign(
        &mut self,
        key: AllocKey,
        meta: PodMeta,
        now: Millis,
    ) -> Result<(F::Addr, Option<PoolEventOf<F>>), PoolError> {
        if let Some(&ip) = self.by_key.get(&key) {
            return Ok((ip, None));
        }
        if count(self.by_key.len()) >= self.cfg.max_pods {
            return Err(PoolError::MaxPods {
                max_pods: self.cfg.max_pods,
            });
        }
        let Some(ip) = self.pick_free(now) else {
            let s = self.stats(now);
            return Err(PoolError::Exhausted {
                assigned: s.assigned,
                cooling: s.cooling,
                total: s.total,
            });
        };
        let alloc = AllocationOf {
            ip,
            key,
            meta,
            assigned_at: now,
        };
        self.insert_alloc(alloc.clone())?;
        Ok((ip, Some(PoolEventOf::Assigned { alloc })))
    }

    /// The lowest free address of `p` at `now`, and how many of its addresses are cooling.
    /// Walks only the addresses in use (plus reserved ones), not the whole prefix.
    fn first_free(&self, p: &HeldPrefix<F>, now: Millis) -> (Option<u128>, u32) {
        let mut cooling = 0;
        let mut first = None;
        let mut cand = p.first;
        for (&addr, slot) in &p.slots {
            let class = self.classify(addr, Some(slot), now);
            if class == Class::Cooling {
                cooling += 1;
            }
            if first.is_some() {
                continue;
            }
            // Free addresses below `addr` (none of them in the map).
            while cand < addr && self.is_reserved(cand) {
                cand += 1;
            }
            if cand < addr {
                first = Some(cand);
            } else if class == Class::Free {
                first = Some(addr);
            } else {
                cand = addr.saturating_add(1);
            }
        }
        if first.is_none() {
            while cand <= p.last && self.is_reserved(cand) && !p.slots.contains_key(&cand) {
                cand += 1;
            }
            if cand <= p.last && !p.slots.contains_key(&cand) {
                first = Some(cand);
            }
        }
        (first, cooling)
    }

    fn pick_free(&self, now: Millis) -> Option<F::Addr> {
        // (assigned, cooling, address) of the best candidate so far.
        let mut best: Option<(u32, u32, u128)> = None;
        for p in self.prefixes.values() {
            if best.is_some_and(|(a, _, _)| p.assigned < a) {
                continue;
            }
            let (free, cooling) = self.first_free(p, now);
            if let Some(addr) = free {
                if best.is_none_or(|(a, c, _)| (p.assigned, cooling) > (a, c)) {
                    best = Some((p.assigned, cooling, addr));
                }
            }
        }
        best.map(|(_, _, addr)| F::addr(addr))
    }

    /// Release → the address cools until `now + cooldown_ms`. Unknown key → `None` (DEL is
    /// idempotent).
    pub fn release(&mut self, key: &AllocKey, now: Millis) -> Option<PoolEventOf<F>> {
        let ip = *self.by_key.get(key)?;
        let cool_until = now.saturating_add(self.cfg.cooldown_ms);
        self.remove_alloc(key, ip, cool_until).ok()?;
        Some(PoolEventOf::Released {
            key: key.clone(),
            ip,
            cool_until,
        })
    }

    /// Release of an address no pod ever used (its ADD failed before the pod could send a
    /// packet): free at once, no cooldown. Unknown key → `None`.
    pub fn release_unused(&mut self, key: &AllocKey, now: Millis) -> Option<PoolEventOf<F>> {
        let ip = *self.by_key.get(key)?;
        self.remove_alloc(key, ip, now).ok()?;
        Some(PoolEventOf::Released {
            key: key.clone(),
            ip,
            cool_until: now,
        })
    }

    /// Claim `prefix`: it must be an aligned prefix of the configured length inside a VPC
    /// CIDR, not overlapping one already held.
    pub fn add_prefix(&mut self, prefix: F::Net, now: Millis) -> Result<PoolEventOf<F>, PoolError> {
        if F::net_len(prefix) != self.cfg.prefix_len || !is_aligned::<F>(prefix) {
            return Err(PoolError::PrefixMisaligned(prefix.into()));
        }
        if !self.in_vpc(prefix) {
            return Err(PoolError::PrefixOutsideVpc(prefix.into()));
        }
        self.insert_prefix(prefix, now)?;
        Ok(PoolEventOf::PrefixAdded { prefix, at: now })
    }

    /// Give `prefix` back; only when no address in it is assigned or cooling at `now`.
    pub fn remove_prefix(
        &mut self,
        prefix: F::Net,
        now: Millis,
    ) -> Result<PoolEventOf<F>, PoolError> {
        self.drop_prefix(prefix, Some(now))?;
        Ok(PoolEventOf::PrefixRemoved { prefix })
    }

    /// Replay one journal event. Checks consistency (never double-assigns) but not policy:
    /// config limits (VPC, prefix length, max-pods) may have changed since it was written.
    pub fn apply(&mut self, ev: &PoolEventOf<F>) -> Result<(), PoolError> {
        match ev {
            PoolEventOf::PrefixAdded { prefix, at } => self.insert_prefix(*prefix, *at),
            PoolEventOf::PrefixRemoved { prefix } => self.drop_prefix(*prefix, None),
            PoolEventOf::Assigned { alloc } => self.insert_alloc(alloc.clone()),
            PoolEventOf::Released {
                key,
                ip,
                cool_until,
            } => self.remove_alloc(key, *ip, *cool_until),
        }
    }

    fn insert_prefix(&mut self, net: F::Net, at: Millis) -> Result<(), PoolError> {
        if F::net_len(net) < F::MIN_PREFIX_LEN || !is_aligned::<F>(net) {
            return Err(PoolError::PrefixMisaligned(net.into()));
        }
        let (first, last) = span::<F>(net);
        if self.overlaps_held(first, last) {
            return Err(PoolError::PrefixAlreadyHeld(net.into()));
        }
        let held = HeldPrefix {
            net,
            first,
            last,
            claimed_at: at,
            assigned: 0,
            slots: BTreeMap::new(),
        };
        self.prefixes.insert(first, held);
        self.undo.record(Undo::PrefixInserted(first));
        Ok(())
    }

    /// `now: None` (replay) ignores cooling addresses.
    fn drop_prefix(&mut self, net: F::Net, now: Option<Millis>) -> Result<(), PoolError> {
        let start = F::bits(F::net_ip(net));
        let p = match self.prefixes.get(&start) {
            Some(p) if p.net == net => p,
            _ => return Err(PoolError::PrefixNotHeld(net.into())),
        };
        let cooling =
            |s: &Slot<F>| matches!((s, now), (Slot::Cooling(until), Some(now)) if *until > now);
        if p.assigned > 0 || p.slots.values().any(cooling) {
            return Err(PoolError::PrefixInUse(net.into()));
        }
        if let Some(p) = self.prefixes.remove(&start) {
            self.undo.record(Undo::PrefixDropped(Box::new(p)));
        }
        Ok(())
    }

    fn insert_alloc(&mut self, alloc: AllocationOf<F>) -> Result<(), PoolError> {
        if let Some(&ip) = self.by_key.get(&alloc.key) {
            return Err(PoolError::KeyAlreadyAssigned { ip: ip.into() });
        }
        let ip = alloc.ip;
        let taken = PoolError::AddressTaken { ip: ip.into() };
        let p = self.prefix_of_mut(ip).ok_or(taken.clone())?;
        let addr = F::bits(ip);
        match p.slots.get(&addr) {
            None => {}
            Some(Slot::Cooling(until)) if *until <= alloc.assigned_at => {}
            _ => return Err(taken),
        }
        let key = alloc.key.clone();
        let prev = p.slots.insert(addr, Slot::Assigned(Box::new(alloc)));
        p.assigned += 1;
        self.by_key.insert(key, ip);
        self.undo.record(Undo::Assigned { addr, prev });
        Ok(())
    }

    fn remove_alloc(
        &mut self,
        key: &AllocKey,
        ip: F::Addr,
        cool_until: Millis,
    ) -> Result<(), PoolError> {
        if self.by_key.get(key) != Some(&ip) {
            return Err(PoolError::UnknownKey);
        }
        let p = self.prefix_of_mut(ip).ok_or(PoolError::UnknownKey)?;
        let addr = F::bits(ip);
        let slot = p.slots.get_mut(&addr).ok_or(PoolError::UnknownKey)?;
        if !matches!(slot, Slot::Assigned(a) if a.key == *key) {
            return Err(PoolError::UnknownKey);
        }
        let prev = std::mem::replace(slot, Slot::Cooling(cool_until));
        p.assigned -= 1;
        self.by_key.remove(key);
        self.undo.record(Undo::Released { addr, prev });
        Ok(())
    }

    /// Mark a free address as cooling (snapshot restore).
    fn set_cooling(&mut self, ip: F::Addr, until: Millis) -> Result<(), PoolError> {
        let taken = PoolError::AddressTaken { ip: ip.into() };
        let p = self.prefix_of_mut(ip).ok_or(taken.clone())?;
        let addr = F::bits(ip);
        if p.slots.contains_key(&addr) {
            return Err(taken);
        }
        p.slots.insert(addr, Slot::Cooling(until));
        self.undo.record(Undo::CoolingSet(addr));
        Ok(())
    }

    fn slot(&self, ip: F::Addr) -> Option<&Slot<F>> {
        let addr = F::bits(ip);
        self.prefixes.get(&self.locate(addr)?)?.slots.get(&addr)
    }

    pub fn get(&self, key: &AllocKey) -> Option<&AllocationOf<F>> {
        self.owner_of(*self.by_key.get(key)?)
    }

    pub fn owner_of(&self, ip: F::Addr) -> Option<&AllocationOf<F>> {
        match self.slot(ip)? {
            Slot::Assigned(a) => Some(a),
            Slot::Cooling(_) => None,
        }
    }

    /// Whether `ip` was ever handed out from a prefix held now: assigned, or released (a
    /// released address stays marked cooling, also past its deadline, until reused). An
    /// address of this node that the kernel routes to a pod must satisfy this, or the state
    /// has lost an allocation (see `agent::audit`).
    pub fn knows(&self, ip: F::Addr) -> bool {
        self.slot(ip).is_some()
    }

    /// All allocations, by address.
    pub fn allocations(&self) -> impl Iterator<Item = &AllocationOf<F>> {
        self.prefixes
            .values()
            .flat_map(|p| p.slots.values())
            .filter_map(|s| match s {
                Slot::Assigned(a) => Some(&**a),
                Slot::Cooling(_) => None,
            })
    }

    pub fn stats(&self, now: Millis) -> PoolStats {
        let (mut total, mut assigned, mut cooling, mut available) = (0u128, 0u128, 0u128, 0u128);
        let mut free_prefixes = 0u32;
        for p in self.prefixes.values() {
            let c = self.counts(p, now);
            total = total.saturating_add(c.usable());
            assigned += c.assigned;
            cooling += c.cooling;
            available = available.saturating_add(c.free);
            free_prefixes += u32::from(c.wholly_free());
        }
        PoolStats {
            total: sat(total),
            assigned: sat(assigned),
            cooling: sat(cooling),
            available: sat(available),
            prefixes: count(self.prefixes.len()),
            free_prefixes,
        }
    }

    /// Held prefixes, by address.
    pub fn prefixes(&self, now: Millis) -> Vec<PrefixInfoOf<F>> {
        self.prefixes
            .values()
            .map(|p| {
                let c = self.counts(p, now);
                PrefixInfoOf {
                    prefix: p.net,
                    claimed_at: p.claimed_at,
                    assigned: sat(c.assigned),
                    cooling: sat(c.cooling),
                    usable: sat(c.usable()),
                }
            })
            .collect()
    }

    /// Held prefixes, by address.
    pub fn held_prefixes(&self) -> impl Iterator<Item = F::Net> + '_ {
        self.prefixes.values().map(|p| p.net)
    }

    /// VPC CIDRs that can hold prefixes of the configured length.
    fn fitting_vpcs(&self) -> impl Iterator<Item = F::Net> + '_ {
        let len = self.cfg.prefix_len;
        self.cfg
            .vpc_cidrs
            .iter()
            .copied()
            .filter(move |&c| F::net_len(c) <= len && len <= F::BITS)
    }

    /// How many prefixes of the configured length `vpc` holds (saturating).
    fn prefixes_in(&self, vpc: F::Net) -> u128 {
        let bits = u32::from(self.cfg.prefix_len - F::net_len(vpc));
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// The prefix of the configured length at `first` (bits).
    fn prefix_at_bits(&self, first: u128) -> Option<F::Net> {
        F::net(F::addr(first), self.cfg.prefix_len)
    }

    /// Aligned prefixes of the configured length inside the VPC CIDRs that this node does not
    /// hold, lowest first (lazy). Other nodes may hold them; the agent learns that on claim.
    pub fn unheld_prefixes(&self) -> impl Iterator<Item = F::Net> + '_ {
        let step = host_mask::<F>(self.cfg.prefix_len).saturating_add(1);
        self.fitting_vpcs()
            .flat_map(move |c| {
                let (first, last) = span::<F>(c);
                (0..self.prefixes_in(c))
                    .map(move |i| first.saturating_add(i.saturating_mul(step)))
                    .take_while(move |&a| a <= last)
            })
            .filter_map(move |a| {
                let net = self.prefix_at_bits(a)?;
                let (first, last) = span::<F>(net);
                (!self.overlaps_held(first, last)).then_some(net)
            })
    }

    /// How many prefixes of the configured length the VPC CIDRs hold in all (saturating).
    pub fn vpc_prefix_count(&self) -> u64 {
        let n = self
            .fitting_vpcs()
            .map(|c| self.prefixes_in(c))
            .fold(0u128, u128::saturating_add);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The `i`-th prefix of the VPC (in CIDR order), `None` past the end.
    fn vpc_prefix_at(&self, i: u64) -> Option<F::Net> {
        let mut i = u128::from(i);
        let step = host_mask::<F>(self.cfg.prefix_len).saturating_add(1);
        for c in self.fitting_vpcs() {
            let n = self.prefixes_in(c);
            if i < n {
                return self.prefix_at_bits(span::<F>(c).0.checked_add(i.checked_mul(step)?)?);
            }
            i -= n;
        }
        None
    }

    /// Up to `count` prefixes worth trying to claim: not held here, not in `taken` (the
    /// datastore's view), distinct, starting at position `seed % total` of the VPC and
    /// wrapping around.
    ///
    /// Why a seed: every node that started its search at the lowest free prefix raced every
    /// other node for the same few prefixes (lost races grew as N²). A seed derived from the
    /// node's name spreads the nodes' first tries over the whole VPC, so at a cold start of N
    /// nodes almost every first try wins, while a nearly full VPC is still searched whole.
    pub fn claim_candidates(
        &self,
        taken: &std::collections::HashSet<F::Net>,
        seed: u64,
        count: usize,
    ) -> Vec<F::Net> {
        let total = self.vpc_prefix_count();
        if total == 0 || count == 0 {
            return Vec::new();
        }
        let start = seed % total;
        let mut out = Vec::with_capacity(count.min(64));
        for k in 0..total {
            let i = (start + k) % total;
            let Some(net) = self.vpc_prefix_at(i) else {
                continue;
            };
            let (first, last) = span::<F>(net);
            if taken.contains(&net) || self.overlaps_held(first, last) || out.contains(&net) {
                continue;
            }
            out.push(net);
            if out.len() >= count {
                break;
            }
        }
        out
    }

    /// Every address released and not handed out since: cooling, or past its cooldown but not
    /// reused yet (a released address stays marked until reused, see [`PoolOf::knows`]). The
    /// agent flushes their conntrack entries at start-up: a flush queued before a crash is lost
    /// with the process, and any of these may be handed out again at the first ADD.
    pub fn released(&self) -> impl Iterator<Item = F::Addr> + '_ {
        self.prefixes.values().flat_map(|p| {
            p.slots.iter().filter_map(|(bits, s)| match s {
                Slot::Cooling(_) => Some(F::addr(*bits)),
                Slot::Assigned(_) => None,
            })
        })
    }

    /// Earliest future time a cooling address becomes free (to schedule a re-plan), if any.
    pub fn next_cooldown_expiry(&self, now: Millis) -> Option<Millis> {
        self.prefixes
            .values()
            .flat_map(|p| p.slots.values())
            .filter_map(|s| match s {
                Slot::Cooling(until) if *until > now => Some(*until),
                _ => None,
            })
            .min()
    }
}
