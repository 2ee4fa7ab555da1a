//! Property tests of the pure allocator: random operation sequences against a brute-force model,
//! for both address families (the IPv6 runs use small prefixes, /123–/125, so the model can
//! still walk every address; the allocator is the same code at /80).

use std::collections::HashMap;

use proptest::prelude::*;
use vpcnet_pool::{
    AllocKey, Family, Millis, PodMeta, PoolConfigOf, PoolError, PoolEventOf, PoolOf, PoolPlanOf,
    PoolStats, V4, V6,
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

fn net<F: Family>(s: &str) -> F::Net {
    s.parse().expect("test network")
}

/// The model's own address arithmetic (not the pool's): first and last address of `p`.
fn range<F: Family>(p: F::Net) -> (u128, u128) {
    let host = u32::from(F::BITS - F::net_len(p));
    let mask = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let first = F::bits(F::net_ip(p)) & !mask;
    (first, first | mask)
}

fn inside<F: Family>(p: F::Net, ip: F::Addr) -> bool {
    let (a, b) = range::<F>(p);
    (a..=b).contains(&F::bits(ip))
}

fn config<F: Family>(
    vpcs: Vec<Vec<&'static str>>,
    lens: Vec<u8>,
) -> impl Strategy<Value = PoolConfigOf<F>> {
    let vpcs: Vec<Vec<F::Net>> = vpcs
        .into_iter()
        .map(|v| v.into_iter().map(net::<F>).collect())
        .collect();
    (
        prop::sample::select(vpcs),
        prop::sample::select(lens),
        0..20u32,
        0..40u32,
        0..3u32,
        1..50u32,
        0..6_000u64,
        0..3_000u64,
    )
        .prop_map(
            |(vpc_cidrs, prefix_len, warm_ip, min_ip, warm_prefix, max_pods, cooldown, age)| {
                PoolConfigOf {
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

fn config4() -> impl Strategy<Value = PoolConfigOf<V4>> {
    config::<V4>(
        vec![
            vec!["10.0.0.0/26"],
            vec!["10.0.0.0/25"],
            vec!["10.0.0.0/27", "192.168.8.0/27"],
        ],
        vec![28, 29, 27],
    )
}

fn config6() -> impl Strategy<Value = PoolConfigOf<V6>> {
    config::<V6>(
        vec![
            vec!["fd00:10::/122"],
            vec!["fd00:10::/121"],
            vec!["fd00:10::/123", "2001:db8:0:8::/123"],
        ],
        vec![124, 125, 123],
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
struct Model<F: Family> {
    cfg: PoolConfigOf<F>,
    now: Millis,
    pool: PoolOf<F>,
    journal: Vec<PoolEventOf<F>>,
    /// Key → address, from the results of assign/release.
    held: HashMap<AllocKey, F::Addr>,
    /// Address → end of its cooldown, from release times.
    cool_until: HashMap<F::Addr, Millis>,
}

fn addrs<F: Family>(p: F::Net) -> impl Iterator<Item = F::Addr> {
    let (a, b) = range::<F>(p);
    (a..=b).map(F::addr)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("small count")
}

impl<F: Family> Model<F> {
    /// A VPC CIDR's first address (both families) or last (IPv4 broadcast).
    fn reserved(&self, ip: F::Addr) -> bool {
        let b = F::bits(ip);
        self.cfg.vpc_cidrs.iter().any(|&c| {
            let (first, last) = range::<F>(c);
            b == first || (F::BITS == 32 && b == last)
        })
    }

    fn cooling(&self, ip: F::Addr) -> bool {
        self.cool_until.get(&ip).is_some_and(|&t| t > self.now)
    }

    /// Stats recounted address by address from the model.
    fn recount(&self) -> PoolStats {
        let assigned_ips: HashMap<F::Addr, &AllocKey> =
            self.held.iter().map(|(k, ip)| (*ip, k)).collect();
        let mut s = PoolStats::default();
        for p in self.pool.held_prefixes() {
            let (mut a, mut c) = (0, 0);
            for ip in addrs::<F>(p) {
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
                        Some(PoolEventOf::Released {
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
                PoolPlanOf::Steady => {
                    self.check_targets_met()?;
                    return Ok(());
                }
                PoolPlanOf::Grow { prefixes, .. } => {
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
                PoolPlanOf::Shrink { prefixes } => {
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
        let mut replayed = PoolOf::new(self.cfg.clone());
        for ev in &self.journal {
            let r = replayed.apply(ev);
            prop_assert!(r.is_ok(), "replay {:?}: {:?}", ev, r);
        }
        prop_assert_eq!(&replayed, &self.pool);

        let json = serde_json::to_string(&self.pool).expect("snapshot");
        let restored: PoolOf<F> = serde_json::from_str(&json).expect("restore");
        prop_assert_eq!(&restored, &self.pool);
        let json = serde_json::to_string(&self.journal).expect("journal");
        let journal: Vec<PoolEventOf<F>> = serde_json::from_str(&json).expect("journal back");
        prop_assert_eq!(&journal, &self.journal);

        // Carry on with the restored pool (observable state checked above and after each step).
        self.pool = restored;
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let pool = &self.pool;
        let held: Vec<F::Net> = pool.held_prefixes().collect();
        let mut seen = HashMap::new();
        for a in pool.allocations() {
            prop_assert!(seen.insert(a.ip, &a.key).is_none(), "{} held twice", a.ip);
            prop_assert_eq!(self.held.get(&a.key), Some(&a.ip));
            prop_assert!(
                held.iter().any(|&p| inside::<F>(p, a.ip)),
                "{} outside prefixes",
                a.ip
            );
            prop_assert!(self.cfg.vpc_cidrs.iter().any(|&c| inside::<F>(c, a.ip)));
            prop_assert!(!self.reserved(a.ip), "{} is a VPC network/broadcast", a.ip);
            prop_assert_eq!(pool.get(&a.key), Some(a));
            prop_assert_eq!(pool.owner_of(a.ip), Some(a));
        }
        prop_assert_eq!(seen.len(), self.held.len());
        prop_assert!(count(self.held.len()) <= self.cfg.max_pods);
        for w in held.windows(2) {
            prop_assert!(range::<F>(w[0]).1 < range::<F>(w[1]).0, "overlap {:?}", w);
        }

        let s = pool.stats(self.now);
        prop_assert_eq!(s, self.recount());
        let infos = pool.prefixes(self.now);
        prop_assert_eq!(infos.iter().map(|p| p.usable).sum::<u32>(), s.total);
        prop_assert_eq!(infos.iter().map(|p| p.cooling).sum::<u32>(), s.cooling);

        let next = self
            .cool_until
            .iter()
            .filter(|(ip, &t)| t > self.now && held.iter().any(|&p| inside::<F>(p, **ip)))
            .map(|(_, &t)| t)
            .min();
        prop_assert_eq!(pool.next_cooldown_expiry(self.now), next);
        Ok(())
    }
}

fn run<F: Family>(cfg: PoolConfigOf<F>, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model {
        pool: PoolOf::new(cfg.clone()),
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
    fn random_operations_keep_invariants(cfg in config4(), ops in prop::collection::vec(op(), 1..200)) {
        run(cfg, &ops)?;
    }

    #[test]
    fn random_operations_keep_invariants_v6(cfg in config6(), ops in prop::collection::vec(op(), 1..200)) {
        run(cfg, &ops)?;
    }
}
