//! The pure node allocator: which addresses of the node's prefixes are free, assigned or
//! cooling, plus the warm-pool policy ([`Pool::plan`]). DESIGN.md §4.
//!
//! No I/O and no clock: time is passed in as `now`. Every mutation returns the [`PoolEvent`]
//! the agent must make durable before replying; [`Pool::apply`] replays those events, and the
//! live mutators go through the same code path, so replay reproduces the live state exactly.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

mod net_serde;
mod policy;
mod snapshot;
#[cfg(test)]
mod tests;

/// Unix time in milliseconds.
pub type Millis = u64;

/// Shortest prefix length a node may hold (a /16 is 65 536 slots); bounds per-prefix memory.
pub const MIN_PREFIX_LEN: u8 = 16;

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
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub key: AllocKey,
    pub meta: PodMeta,
    pub assigned_at: Millis,
}

/// The agent's flags that shape the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    #[serde(with = "net_serde::vec")]
    pub vpc_cidrs: Vec<Ipv4Network>,
    /// Length of the prefixes the node claims (default 28).
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

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
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

/// Every state change, as persisted in the agent's journal. [`Pool::apply`] replays them
/// deterministically (no choice is made during replay: the IP is in the event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "camelCase")]
pub enum PoolEvent {
    PrefixAdded {
        #[serde(with = "net_serde")]
        prefix: Ipv4Network,
        at: Millis,
    },
    PrefixRemoved {
        #[serde(with = "net_serde")]
        prefix: Ipv4Network,
    },
    Assigned {
        alloc: Allocation,
    },
    Released {
        key: AllocKey,
        ip: Ipv4Addr,
        cool_until: Millis,
    },
}

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
    PrefixOutsideVpc(Ipv4Network),
    /// Not of the configured length, or not aligned to it.
    #[error("prefix {0} is not an aligned prefix of the configured length")]
    PrefixMisaligned(Ipv4Network),
    /// Equal to or overlapping a prefix already held.
    #[error("prefix {0} overlaps a prefix this node already holds")]
    PrefixAlreadyHeld(Ipv4Network),
    #[error("prefix {0} is not held by this node")]
    PrefixNotHeld(Ipv4Network),
    #[error("prefix {0} still has assigned or cooling addresses")]
    PrefixInUse(Ipv4Network),
    /// Replay conflict: the address is assigned, cooling, or not in a held prefix.
    #[error("address {ip} is not free in this pool (journal conflict)")]
    AddressTaken { ip: Ipv4Addr },
    /// Replay conflict: the key already holds an address.
    #[error("key already holds address {ip} (journal conflict)")]
    KeyAlreadyAssigned { ip: Ipv4Addr },
    /// Replay of a release for a key with no allocation at that address.
    #[error("release for a key that holds no address there (journal conflict)")]
    UnknownKey,
}

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
pub enum PoolPlan {
    Steady,
    /// Claim this many more prefixes.
    Grow {
        prefixes: u32,
        reason: GrowReason,
    },
    /// Release these prefixes (youngest/highest first).
    Shrink {
        prefixes: Vec<Ipv4Network>,
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
pub struct PrefixInfo {
    #[serde(with = "net_serde")]
    pub prefix: Ipv4Network,
    pub claimed_at: Millis,
    pub assigned: u32,
    pub cooling: u32,
    pub usable: u32,
}

/// State of one address of a held prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Assigned(Box<Allocation>),
    /// Released; reusable once `now >= until`.
    Cooling(Millis),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct HeldPrefix {
    net: Ipv4Network,
    claimed_at: Millis,
    /// Number of `Slot::Assigned` in `slots` (kept for the packing choice).
    assigned: u32,
    /// One per address, indexed by offset from the network address.
    slots: Box<[Slot]>,
}

impl HeldPrefix {
    /// Slots with their addresses (as u32).
    fn addrs(&self) -> impl Iterator<Item = (u32, &Slot)> {
        let first = u32::from(self.net.network());
        let last = u32::from(self.net.broadcast());
        (first..=last).zip(self.slots.iter())
    }

    fn last(&self) -> u32 {
        u32::from(self.net.broadcast())
    }
}

/// What a slot counts as at a given time.
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
    assigned: u32,
    cooling: u32,
    free: u32,
}

impl Counts {
    fn usable(self) -> u32 {
        self.assigned + self.cooling + self.free
    }
    fn wholly_free(self) -> bool {
        self.assigned == 0 && self.cooling == 0
    }
}

/// The node's address pool. `Serialize`/`Deserialize` give a snapshot (validated on load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "snapshot::Snapshot", try_from = "snapshot::Snapshot")]
pub struct Pool {
    cfg: PoolConfig,
    /// Network and broadcast addresses of the VPC CIDRs, sorted (derived from `cfg`).
    reserved: Vec<u32>,
    /// Held prefixes by network address; never overlapping.
    prefixes: BTreeMap<u32, HeldPrefix>,
    by_key: HashMap<AllocKey, Ipv4Addr>,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn is_aligned(net: Ipv4Network) -> bool {
    net.ip() == net.network()
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Pool {
        let mut pool = Pool {
            cfg: PoolConfig::default(),
            reserved: Vec::new(),
            prefixes: BTreeMap::new(),
            by_key: HashMap::new(),
        };
        pool.set_config(cfg);
        pool
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Restart with new flags over old state. Held prefixes and allocations are kept even if
    /// they no longer fit the new VPC CIDRs or prefix length; the policy may release them.
    pub fn set_config(&mut self, cfg: PoolConfig) {
        let mut reserved: Vec<u32> = cfg
            .vpc_cidrs
            .iter()
            .flat_map(|c| [u32::from(c.network()), u32::from(c.broadcast())])
            .collect();
        reserved.sort_unstable();
        reserved.dedup();
        self.reserved = reserved;
        self.cfg = cfg;
    }

    fn classify(&self, addr: u32, slot: &Slot, now: Millis) -> Class {
        match slot {
            Slot::Assigned(_) => Class::Assigned,
            Slot::Cooling(until) if *until > now => Class::Cooling,
            Slot::Free | Slot::Cooling(_) => {
                if self.reserved.binary_search(&addr).is_ok() {
                    Class::Reserved
                } else {
                    Class::Free
                }
            }
        }
    }

    fn counts(&self, p: &HeldPrefix, now: Millis) -> Counts {
        let mut c = Counts::default();
        for (addr, slot) in p.addrs() {
            match self.classify(addr, slot, now) {
                Class::Assigned => c.assigned += 1,
                Class::Cooling => c.cooling += 1,
                Class::Free => c.free += 1,
                Class::Reserved => {}
            }
        }
        c
    }

    /// The held prefix containing `ip`, and the slot index.
    fn locate(&self, ip: Ipv4Addr) -> Option<(u32, usize)> {
        let addr = u32::from(ip);
        let (&start, p) = self.prefixes.range(..=addr).next_back()?;
        (addr <= p.last()).then(|| (start, usize::try_from(addr - start).unwrap_or(usize::MAX)))
    }

    fn slot_mut(&mut self, ip: Ipv4Addr) -> Option<(&mut HeldPrefix, usize)> {
        let (start, idx) = self.locate(ip)?;
        let p = self.prefixes.get_mut(&start)?;
        (idx < p.slots.len()).then_some((p, idx))
    }

    /// Whether `[first, last]` overlaps a held prefix.
    fn overlaps_held(&self, first: u32, last: u32) -> bool {
        self.prefixes
            .range(..=last)
            .next_back()
            .is_some_and(|(_, p)| p.last() >= first)
    }

    fn in_vpc(&self, net: Ipv4Network) -> bool {
        self.cfg
            .vpc_cidrs
            .iter()
            .any(|c| c.prefix() <= net.prefix() && c.contains(net.network()))
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
    ) -> Result<(Ipv4Addr, Option<PoolEvent>), PoolError> {
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
        let alloc = Allocation {
            ip,
            key,
            meta,
            assigned_at: now,
        };
        self.insert_alloc(alloc.clone())?;
        Ok((ip, Some(PoolEvent::Assigned { alloc })))
    }

    fn pick_free(&self, now: Millis) -> Option<Ipv4Addr> {
        // (assigned, cooling, address) of the best candidate so far.
        let mut best: Option<(u32, u32, u32)> = None;
        for p in self.prefixes.values() {
            if best.is_some_and(|(a, _, _)| p.assigned < a) {
                continue;
            }
            let mut cooling = 0;
            let mut first_free = None;
            for (addr, slot) in p.addrs() {
                match self.classify(addr, slot, now) {
                    Class::Cooling => cooling += 1,
                    Class::Free if first_free.is_none() => first_free = Some(addr),
                    _ => {}
                }
            }
            if let Some(addr) = first_free {
                if best.is_none_or(|(a, c, _)| (p.assigned, cooling) > (a, c)) {
                    best = Some((p.assigned, cooling, addr));
                }
            }
        }
        best.map(|(_, _, addr)| Ipv4Addr::from(addr))
    }

    /// Release → the address cools until `now + cooldown_ms`. Unknown key → `None` (DEL is
    /// idempotent).
    pub fn release(&mut self, key: &AllocKey, now: Millis) -> Option<PoolEvent> {
        let ip = *self.by_key.get(key)?;
        let cool_until = now.saturating_add(self.cfg.cooldown_ms);
        self.remove_alloc(key, ip, cool_until).ok()?;
        Some(PoolEvent::Released {
            key: key.clone(),
            ip,
            cool_until,
        })
    }

    /// Release of an address no pod ever used (its ADD failed before the pod could send a
    /// packet): free at once, no cooldown. Unknown key → `None`.
    pub fn release_unused(&mut self, key: &AllocKey, now: Millis) -> Option<PoolEvent> {
        let ip = *self.by_key.get(key)?;
        self.remove_alloc(key, ip, now).ok()?;
        Some(PoolEvent::Released {
            key: key.clone(),
            ip,
            cool_until: now,
        })
    }

    /// Claim `prefix`: it must be an aligned prefix of the configured length inside a VPC
    /// CIDR, not overlapping one already held.
    pub fn add_prefix(&mut self, prefix: Ipv4Network, now: Millis) -> Result<PoolEvent, PoolError> {
        if prefix.prefix() != self.cfg.prefix_len {
            return Err(PoolError::PrefixMisaligned(prefix));
        }
        if !is_aligned(prefix) {
            return Err(PoolError::PrefixMisaligned(prefix));
        }
        if !self.in_vpc(prefix) {
            return Err(PoolError::PrefixOutsideVpc(prefix));
        }
        self.insert_prefix(prefix, now)?;
        Ok(PoolEvent::PrefixAdded { prefix, at: now })
    }

    /// Give `prefix` back; only when no address in it is assigned or cooling at `now`.
    pub fn remove_prefix(
        &mut self,
        prefix: Ipv4Network,
        now: Millis,
    ) -> Result<PoolEvent, PoolError> {
        self.drop_prefix(prefix, Some(now))?;
        Ok(PoolEvent::PrefixRemoved { prefix })
    }

    /// Replay one journal event. Checks consistency (never double-assigns) but not policy:
    /// config limits (VPC, prefix length, max-pods) may have changed since it was written.
    pub fn apply(&mut self, ev: &PoolEvent) -> Result<(), PoolError> {
        match ev {
            PoolEvent::PrefixAdded { prefix, at } => self.insert_prefix(*prefix, *at),
            PoolEvent::PrefixRemoved { prefix } => self.drop_prefix(*prefix, None),
            PoolEvent::Assigned { alloc } => self.insert_alloc(alloc.clone()),
            PoolEvent::Released {
                key,
                ip,
                cool_until,
            } => self.remove_alloc(key, *ip, *cool_until),
        }
    }

    fn insert_prefix(&mut self, net: Ipv4Network, at: Millis) -> Result<(), PoolError> {
        if net.prefix() < MIN_PREFIX_LEN || !is_aligned(net) {
            return Err(PoolError::PrefixMisaligned(net));
        }
        let first = u32::from(net.network());
        let last = u32::from(net.broadcast());
        if self.overlaps_held(first, last) {
            return Err(PoolError::PrefixAlreadyHeld(net));
        }
        let size = usize::try_from(net.size()).unwrap_or(usize::MAX);
        let held = HeldPrefix {
            net,
            claimed_at: at,
            assigned: 0,
            slots: vec![Slot::Free; size].into_boxed_slice(),
        };
        self.prefixes.insert(first, held);
        Ok(())
    }

    /// `now: None` (replay) ignores cooling addresses.
    fn drop_prefix(&mut self, net: Ipv4Network, now: Option<Millis>) -> Result<(), PoolError> {
        let start = u32::from(net.ip());
        let p = match self.prefixes.get(&start) {
            Some(p) if p.net == net => p,
            _ => return Err(PoolError::PrefixNotHeld(net)),
        };
        let cooling =
            |s: &Slot| matches!((s, now), (Slot::Cooling(until), Some(now)) if *until > now);
        if p.assigned > 0 || p.slots.iter().any(cooling) {
            return Err(PoolError::PrefixInUse(net));
        }
        self.prefixes.remove(&start);
        Ok(())
    }

    fn insert_alloc(&mut self, alloc: Allocation) -> Result<(), PoolError> {
        if let Some(&ip) = self.by_key.get(&alloc.key) {
            return Err(PoolError::KeyAlreadyAssigned { ip });
        }
        let ip = alloc.ip;
        let (p, idx) = self.slot_mut(ip).ok_or(PoolError::AddressTaken { ip })?;
        match p.slots[idx] {
            Slot::Free => {}
            Slot::Cooling(until) if until <= alloc.assigned_at => {}
            _ => return Err(PoolError::AddressTaken { ip }),
        }
        let key = alloc.key.clone();
        p.slots[idx] = Slot::Assigned(Box::new(alloc));
        p.assigned += 1;
        self.by_key.insert(key, ip);
        Ok(())
    }

    fn remove_alloc(
        &mut self,
        key: &AllocKey,
        ip: Ipv4Addr,
        cool_until: Millis,
    ) -> Result<(), PoolError> {
        if self.by_key.get(key) != Some(&ip) {
            return Err(PoolError::UnknownKey);
        }
        let (p, idx) = self.slot_mut(ip).ok_or(PoolError::UnknownKey)?;
        if !matches!(&p.slots[idx], Slot::Assigned(a) if a.key == *key) {
            return Err(PoolError::UnknownKey);
        }
        p.slots[idx] = Slot::Cooling(cool_until);
        p.assigned -= 1;
        self.by_key.remove(key);
        Ok(())
    }

    /// Mark a free address as cooling (snapshot restore).
    fn set_cooling(&mut self, ip: Ipv4Addr, until: Millis) -> Result<(), PoolError> {
        let (p, idx) = self.slot_mut(ip).ok_or(PoolError::AddressTaken { ip })?;
        if p.slots[idx] != Slot::Free {
            return Err(PoolError::AddressTaken { ip });
        }
        p.slots[idx] = Slot::Cooling(until);
        Ok(())
    }

    pub fn get(&self, key: &AllocKey) -> Option<&Allocation> {
        self.owner_of(*self.by_key.get(key)?)
    }

    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&Allocation> {
        let (start, idx) = self.locate(ip)?;
        match self.prefixes.get(&start)?.slots.get(idx)? {
            Slot::Assigned(a) => Some(a),
            _ => None,
        }
    }

    /// Whether `ip` was ever handed out from a prefix held now: assigned, or released (a
    /// released address stays marked cooling, also past its deadline, until reused). An
    /// address of this node that the kernel routes to a pod must satisfy this, or the state
    /// has lost an allocation (see `agent::audit`).
    pub fn knows(&self, ip: Ipv4Addr) -> bool {
        let Some((start, idx)) = self.locate(ip) else {
            return false;
        };
        matches!(
            self.prefixes.get(&start).and_then(|p| p.slots.get(idx)),
            Some(Slot::Assigned(_) | Slot::Cooling(_))
        )
    }

    /// All allocations, by address.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.prefixes
            .values()
            .flat_map(|p| p.slots.iter())
            .filter_map(|s| match s {
                Slot::Assigned(a) => Some(&**a),
                _ => None,
            })
    }

    pub fn stats(&self, now: Millis) -> PoolStats {
        let mut s = PoolStats::default();
        for p in self.prefixes.values() {
            let c = self.counts(p, now);
            s.total += c.usable();
            s.assigned += c.assigned;
            s.cooling += c.cooling;
            s.available += c.free;
            s.prefixes += 1;
            s.free_prefixes += u32::from(c.wholly_free());
        }
        s
    }

    /// Held prefixes, by address.
    pub fn prefixes(&self, now: Millis) -> Vec<PrefixInfo> {
        self.prefixes
            .values()
            .map(|p| {
                let c = self.counts(p, now);
                PrefixInfo {
                    prefix: p.net,
                    claimed_at: p.claimed_at,
                    assigned: c.assigned,
                    cooling: c.cooling,
                    usable: c.usable(),
                }
            })
            .collect()
    }

    /// Held prefixes, by address.
    pub fn held_prefixes(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        self.prefixes.values().map(|p| p.net)
    }

    /// Aligned prefixes of the configured length inside the VPC CIDRs that this node does not
    /// hold, lowest first (lazy). Other nodes may hold them; the agent learns that on claim.
    pub fn unheld_prefixes(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        let len = self.cfg.prefix_len;
        let step = 1u64 << (32 - u32::from(len.min(32)));
        self.cfg
            .vpc_cidrs
            .iter()
            .filter(move |c| c.prefix() <= len)
            .flat_map(move |c| {
                let first = u64::from(u32::from(c.network()));
                let last = u64::from(u32::from(c.broadcast()));
                (0..)
                    .map(move |i| first + i * step)
                    .take_while(move |&a| a <= last)
            })
            .filter_map(move |a| {
                let a = u32::try_from(a).ok()?;
                let net = Ipv4Network::new(Ipv4Addr::from(a), len).ok()?;
                (!self.overlaps_held(a, u32::from(net.broadcast()))).then_some(net)
            })
    }

    /// How many prefixes of the configured length the VPC CIDRs hold in all.
    pub fn vpc_prefix_count(&self) -> u64 {
        let len = u32::from(self.cfg.prefix_len.min(32));
        self.cfg
            .vpc_cidrs
            .iter()
            .filter(|c| u32::from(c.prefix()) <= len)
            .map(|c| 1u64 << (len - u32::from(c.prefix())))
            .sum()
    }

    /// The `i`-th prefix of the VPC (in CIDR order), `None` past the end.
    fn vpc_prefix_at(&self, mut i: u64) -> Option<Ipv4Network> {
        let len = self.cfg.prefix_len.min(32);
        for c in self.cfg.vpc_cidrs.iter().filter(|c| c.prefix() <= len) {
            let n = 1u64 << (u32::from(len) - u32::from(c.prefix()));
            if i < n {
                let step = 1u64 << (32 - u32::from(len));
                let a = u64::from(u32::from(c.network())) + i * step;
                return Ipv4Network::new(Ipv4Addr::from(u32::try_from(a).ok()?), len).ok();
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
        taken: &std::collections::HashSet<Ipv4Network>,
        seed: u64,
        count: usize,
    ) -> Vec<Ipv4Network> {
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
            let first = u32::from(net.network());
            if taken.contains(&net)
                || self.overlaps_held(first, u32::from(net.broadcast()))
                || out.contains(&net)
            {
                continue;
            }
            out.push(net);
            if out.len() >= count {
                break;
            }
        }
        out
    }

    /// Earliest future time a cooling address becomes free (to schedule a re-plan), if any.
    pub fn next_cooldown_expiry(&self, now: Millis) -> Option<Millis> {
        self.prefixes
            .values()
            .flat_map(|p| p.slots.iter())
            .filter_map(|s| match s {
                Slot::Cooling(until) if *until > now => Some(*until),
                _ => None,
            })
            .min()
    }
}
