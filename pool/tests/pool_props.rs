//! Property tests of the pure allocator: random operation sequences against a brute-force model.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use proptest::prelude::*;
use vpcnet_pool::{
    AllocKey, Millis, PodMeta, Pool, PoolConfig, PoolError, PoolEvent, PoolPlan, PoolStats,
};

const KEYS: u32 = 40;
const START: Millis = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Assign(u32),
    Release(u32),
    AdvanceTime(Millis),
    PlanAndApply,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..KEYS).prop_map(Op::Assign),
        3 => (0..KEYS).prop_map(Op::Release),
        2 => (0..4_000u64).prop_map(Op::AdvanceTime),
        2 => Just(Op::PlanAndApply),
        1 => Just(Op::Restart),
    ]
}

fn net(s: &str) -> Ipv4Network {
    s.parse().expect("test network")
}

fn config() -> impl Strategy<Value = PoolConfig> {
    let vpcs = prop_oneof![
        Just(vec![net("10.0.0.0/26")]),
        Just(vec![net("10.0.0.0/25")]),
        Just(vec![net("10.0.0.0/27"), net("192.168.8.0/27")]),
    ];
    (
        vpcs,
        prop_oneof![Just(28u8), Just(29u8), Just(27u8)],
        0..20u32,
        0..40u32,
        0..3u32,
        1..50u32,
        0..6_000u64,
        0..3_000u64,
    )
        .prop_map(
            |(vpc_cidrs, prefix_len, warm_ip, min_ip, warm_prefix, max_pods, cooldown, age)| {
                PoolConfig {
                    vpc_cidrs,
                    prefix_len,
                    warm_ip_target: warm_ip,
                    minimum_ip_target: min_ip,
                    warm_prefix_target: warm_prefix,
                    max_pods,
                    cooldown_ms: cooldown,
                    min_prefix_age_ms: age,
                }
            },
        )
}

fn key(i: u32) -> AllocKey {
    AllocKey {
        network: "vpcnet".into(),
        container_id: format!("container-{i}"),
        ifname: "eth0".into(),
    }
}

/// What the test knows independently of the pool.
struct Model {
    cfg: PoolConfig,
    now: Millis,
    pool: Pool,
    journal: Vec<PoolEvent>,
    /// Key → address, from the results of assign/release.
    held: HashMap<AllocKey, Ipv4Addr>,
    /// Address → end of its cooldown, from release times.
    cool_until: HashMap<Ipv4Addr, Millis>,
}

fn addrs(p: Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
    (u32::from(p.network())..=u32::from(p.broadcast())).map(Ipv4Addr::from)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("small count")
}

impl Model {
    fn reserved(&self, ip: Ipv4Addr) -> bool {
        self.cfg
            .vpc_cidrs
            .iter()
            .any(|c| ip == c.network() || ip == c.broadcast())
    }

    fn cooling(&self, ip: Ipv4Addr) -> bool {
        self.cool_until.get(&ip).is_some_and(|&t| t > self.now)
    }

    /// Stats recounted address by address from the model.
    fn recount(&self) -> PoolStats {
        let assigned_ips: HashMap<Ipv4Addr, &AllocKey> =
            self.held.iter().map(|(k, ip)| (*ip, k)).collect();
        let mut s = PoolStats::default();
        for p in self.pool.held_prefixes() {
            let (mut a, mut c) = (0, 0);
            for ip in addrs(p) {
                if assigned_ips.contains_key(&ip) {
                    a += 1;
                } else if self.cooling(ip) {
                    c += 1;
                } else if !self.reserved(ip) {
                    s.available += 1;
                }
            }
            s.assigned += a;
            s.cooling += c;
            s.prefixes += 1;
            s.free_prefixes += u32::from(a == 0 && c == 0);
        }
        s.total = s.assigned + s.cooling + s.available;
        s
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Assign(i) => self.assign(i)?,
            Op::Release(i) => {
                let k = key(i);
                let ev = self.pool.release(&k, self.now);
                match (self.held.remove(&k), &ev) {
                    (None, None) => {}
                    (
                        Some(ip),
                        Some(PoolEvent::Released {
                            ip: rip,
                            cool_until,
                            ..
                        }),
                    ) => {
                        prop_assert_eq!(ip, *rip);
                        prop_assert_eq!(*cool_until, self.now + self.cfg.cooldown_ms);
                        self.cool_until.insert(ip, *cool_until);
                    }
                    (held, ev) => prop_assert!(false, "release mismatch {:?} {:?}", held, ev),
                }
                self.journal.extend(ev);
            }
            Op::AdvanceTime(ms) => self.now += ms,
            Op::PlanAndApply => self.plan_and_apply()?,
            Op::Restart => self.restart()?,
        }
        Ok(())
    }

    fn assign(&mut self, i: u32) -> Result<(), TestCaseError> {
        let k = key(i);
        match self.pool.assign(k.clone(), PodMeta::default(), self.now) {
            Ok((ip, None)) => prop_assert_eq!(self.held.get(&k), Some(&ip)),
            Ok((ip, Some(ev))) => {
                prop_assert!(!self.held.contains_key(&k));
                prop_assert!(!self.cooling(ip), "{} reused while cooling", ip);
                prop_assert!(
                    self.held.values().all(|&h| h != ip),
                    "{} double-assigned",
                    ip
                );
                self.held.insert(k, ip);
                self.journal.push(ev);
            }
            Err(PoolError::MaxPods { max_pods }) => {
                prop_assert_eq!(max_pods, self.cfg.max_pods);
                prop_assert!(count(self.held.len()) >= max_pods);
                prop_assert!(!self.held.contains_key(&k));
            }
            Err(PoolError::Exhausted {
                assigned,
                cooling,
                total,
            }) => {
                let s = self.recount();
                prop_assert_eq!((assigned, cooling, total), (s.assigned, s.cooling, s.total));
                prop_assert_eq!(s.available, 0, "exhausted with free addresses");
            }
            Err(e) => prop_assert!(false, "unexpected assign error {}", e),
        }
        Ok(())
    }

    fn plan_and_apply(&mut self) -> Result<(), TestCaseError> {
        let mut after_shrink = false;
        for _ in 0..20 {
            match self.pool.plan(self.now) {
                PoolPlan::Steady => {
                    self.check_targets_met()?;
                    return Ok(());
                }
                PoolPlan::Grow { prefixes, .. } => {
                    prop_assert!(!after_shrink, "grow right after shrink (flapping)");
                    let s = self.pool.stats(self.now);
                    prop_assert!(
                        s.total - s.cooling < self.cfg.max_pods,
                        "grow past max-pods"
                    );
                    let new: Vec<_> = self
                        .pool
                        .unheld_prefixes()
                        .take(usize::try_from(prefixes).expect("fits"))
                        .collect();
                    prop_assert_eq!(count(new.len()), prefixes, "grow beyond the VPC");
                    for p in new {
                        let ev = self.pool.add_prefix(p, self.now);
                        prop_assert!(ev.is_ok(), "add {}: {:?}", p, ev);
                        self.journal.extend(ev.ok());
                    }
                }
                PoolPlan::Shrink { prefixes } => {
                    prop_assert!(!prefixes.is_empty());
                    for p in prefixes {
                        let ev = self.pool.remove_prefix(p, self.now);
                        prop_assert!(ev.is_ok(), "remove {}: {:?}", p, ev);
                        self.journal.extend(ev.ok());
                    }
                    after_shrink = true;
                }
            }
        }
        prop_assert!(false, "plan did not reach Steady");
        Ok(())
    }

    /// In Steady, every grow condition holds unless capped by max-pods or the VPC's size.
    fn check_targets_met(&self) -> Result<(), TestCaseError> {
        let s = self.pool.stats(self.now);
        let capped = s.total - s.cooling >= self.cfg.max_pods
            || self.pool.unheld_prefixes().next().is_none();
        if !capped {
            let c = &self.cfg;
            prop_assert!(s.available >= c.warm_ip_target, "warm-ip {:?}", s);
            prop_assert!(s.total >= c.minimum_ip_target, "minimum-ip {:?}", s);
            prop_assert!(
                s.free_prefixes >= c.warm_prefix_target,
                "warm-prefix {:?}",
                s
            );
            prop_assert!(s.available > 0, "empty {:?}", s);
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<(), TestCaseError> {
        let mut replayed = Pool::new(self.cfg.clone());
        for ev in &self.journal {
            let r = replayed.apply(ev);
            prop_assert!(r.is_ok(), "replay {:?}: {:?}", ev, r);
        }
        prop_assert_eq!(&replayed, &self.pool);

        let json = serde_json::to_string(&self.pool).expect("snapshot");
        let restored: Pool = serde_json::from_str(&json).expect("restore");
        prop_assert_eq!(&restored, &self.pool);
        let json = serde_json::to_string(&self.journal).expect("journal");
        let journal: Vec<PoolEvent> = serde_json::from_str(&json).expect("journal back");
        prop_assert_eq!(&journal, &self.journal);

        // Carry on with the restored pool (observable state checked above and after each step).
        self.pool = restored;
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let pool = &self.pool;
        let held: Vec<Ipv4Network> = pool.held_prefixes().collect();
        let mut seen = HashMap::new();
        for a in pool.allocations() {
            prop_assert!(seen.insert(a.ip, &a.key).is_none(), "{} held twice", a.ip);
            prop_assert_eq!(self.held.get(&a.key), Some(&a.ip));
            prop_assert!(
                held.iter().any(|p| p.contains(a.ip)),
                "{} outside prefixes",
                a.ip
            );
            prop_assert!(self.cfg.vpc_cidrs.iter().any(|c| c.contains(a.ip)));
            prop_assert!(!self.reserved(a.ip), "{} is a VPC network/broadcast", a.ip);
            prop_assert_eq!(pool.get(&a.key), Some(a));
            prop_assert_eq!(pool.owner_of(a.ip), Some(a));
        }
        prop_assert_eq!(seen.len(), self.held.len());
        prop_assert!(count(self.held.len()) <= self.cfg.max_pods);
        for w in held.windows(2) {
            prop_assert!(w[0].broadcast() < w[1].network(), "overlap {:?}", w);
        }

        let s = pool.stats(self.now);
        prop_assert_eq!(s, self.recount());
        let infos = pool.prefixes(self.now);
        prop_assert_eq!(infos.iter().map(|p| p.usable).sum::<u32>(), s.total);
        prop_assert_eq!(infos.iter().map(|p| p.cooling).sum::<u32>(), s.cooling);

        let next = self
            .cool_until
            .iter()
            .filter(|(ip, &t)| t > self.now && held.iter().any(|p| p.contains(**ip)))
            .map(|(_, &t)| t)
            .min();
        prop_assert_eq!(pool.next_cooldown_expiry(self.now), next);
        Ok(())
    }
}

fn run(cfg: PoolConfig, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model {
        pool: Pool::new(cfg.clone()),
        cfg,
        now: START,
        journal: Vec::new(),
        held: HashMap::new(),
        cool_until: HashMap::new(),
    };
    for op in ops {
        m.step(op)?;
        m.check_invariants()?;
    }
    // A final restart checks the whole journal once more.
    m.restart()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_keep_invariants(cfg in config(), ops in prop::collection::vec(op(), 1..200)) {
        run(cfg, &ops)?;
    }
}
