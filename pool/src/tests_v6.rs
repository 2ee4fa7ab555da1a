//! The IPv6 pool at its real sizes (/64 VPC, /80 prefixes): what differs from IPv4 is size
//! (2^48 addresses per prefix, counts saturate), no broadcast, and the policy's targets,
//! which the agent turns off for IPv6 (one prefix, another only when it is full).

use std::collections::HashSet;
use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;

use super::*;

fn net(s: &str) -> Ipv6Network {
    s.parse().expect("test network")
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn key(i: u32) -> AllocKey {
    AllocKey {
        network: "vpcnet".into(),
        container_id: format!("c{i}"),
        ifname: "eth0".into(),
    }
}

/// A /64 VPC, /80 prefixes, the IPv6 policy: no warm targets (see docs/dual-stack.md).
fn cfg() -> PoolConfig6 {
    PoolConfig6 {
        vpc_cidrs: vec![net("fd00:10::/64")],
        prefix_len: 80,
        warm_prefix_target: 0,
        min_prefix_age_ms: 0,
        ..PoolConfig6::default()
    }
}

fn assign(pool: &mut Pool6, i: u32, now: Millis) -> Ipv6Addr {
    pool.assign(key(i), PodMeta::default(), now)
        .expect("assign")
        .0
}

#[test]
fn the_vpc_network_address_is_never_handed_out_and_others_are_in_order() {
    let mut pool = Pool6::new(cfg());
    pool.add_prefix(net("fd00:10::/80"), 0)
        .expect("first prefix");
    pool.add_prefix(net("fd00:10:0:0:1::/80"), 0)
        .expect("second prefix");
    // Packing: the fuller prefix first; the VPC's network address (subnet-router anycast) is
    // reserved, the second prefix's first address is an ordinary address.
    assert_eq!(assign(&mut pool, 1, 0), ip("fd00:10::1"));
    assert_eq!(assign(&mut pool, 2, 0), ip("fd00:10::2"));
    let mut only_second = Pool6::new(cfg());
    only_second
        .add_prefix(net("fd00:10:0:0:1::/80"), 0)
        .expect("prefix");
    assert_eq!(assign(&mut only_second, 1, 0), ip("fd00:10::1:0:0:0"));
}

#[test]
fn counts_saturate_and_memory_follows_use() {
    let mut pool = Pool6::new(PoolConfig6 {
        max_pods: 1000,
        ..cfg()
    });
    pool.add_prefix(net("fd00:10::/80"), 0).expect("prefix");
    for i in 0..1000 {
        assign(&mut pool, i, 0);
    }
    let s = pool.stats(0);
    assert_eq!(s.assigned, 1000);
    assert_eq!((s.total, s.available), (u32::MAX, u32::MAX));
    assert_eq!((s.prefixes, s.free_prefixes), (1, 0));
    let info = &pool.prefixes(0)[0];
    assert_eq!((info.assigned, info.usable), (1000, u32::MAX));
    assert_eq!(pool.allocations().count(), 1000);
    // The snapshot holds what is used, not 2^48 slots.
    let json = serde_json::to_string(&pool).expect("snapshot");
    assert!(json.len() < 200_000, "{} bytes", json.len());
}

#[test]
fn release_cools_and_the_lowest_free_address_comes_back_after_the_cooldown() {
    let mut pool = Pool6::new(cfg());
    pool.add_prefix(net("fd00:10::/80"), 0).expect("prefix");
    let a = assign(&mut pool, 1, 0);
    let b = assign(&mut pool, 2, 0);
    let ev = pool.release(&key(1), 100).expect("release");
    assert_eq!(
        ev,
        PoolEvent6::Released {
            key: key(1),
            ip: a,
            cool_until: 30_100
        }
    );
    assert!(pool.knows(a) && pool.owner_of(a).is_none());
    // While `a` cools, the next address after `b` is used.
    let c = assign(&mut pool, 3, 200);
    assert_eq!(c, ip("fd00:10::3"));
    assert_ne!(c, b);
    assert_eq!(pool.stats(200).cooling, 1);
    // After the cooldown, the lowest free address is `a` again.
    assert_eq!(assign(&mut pool, 4, 30_100), a);
    assert_eq!(pool.next_cooldown_expiry(30_100), None);
}

#[test]
fn prefix_checks_name_the_prefix() {
    let mut pool = Pool6::new(cfg());
    let outside = net("fd00:11::/80");
    assert_eq!(
        pool.add_prefix(outside, 0),
        Err(PoolError::PrefixOutsideVpc(outside.into()))
    );
    let misaligned = net("fd00:10::1/80");
    assert_eq!(
        pool.add_prefix(misaligned, 0),
        Err(PoolError::PrefixMisaligned(misaligned.into()))
    );
    let wrong_len = net("fd00:10::/96");
    assert!(matches!(
        pool.add_prefix(wrong_len, 0),
        Err(PoolError::PrefixMisaligned(_))
    ));
    let p = net("fd00:10::/80");
    pool.add_prefix(p, 0).expect("prefix");
    assert_eq!(
        pool.add_prefix(p, 0),
        Err(PoolError::PrefixAlreadyHeld(p.into()))
    );
    let msg = PoolError::PrefixOutsideVpc(outside.into()).to_string();
    assert!(msg.contains("fd00:11::/80"), "{msg}");
    // Shorter than the family's floor (/64) is refused even on replay.
    let mut wide = Pool6::new(PoolConfig6 {
        vpc_cidrs: vec![net("fd00::/48")],
        prefix_len: 60,
        ..cfg()
    });
    assert!(matches!(
        wide.add_prefix(net("fd00::/60"), 0),
        Err(PoolError::PrefixMisaligned(_))
    ));
}

#[test]
fn the_policy_holds_one_prefix_and_claims_another_only_when_full() {
    let mut pool = Pool6::new(PoolConfig6 {
        vpc_cidrs: vec![net("fd00:10::/120")],
        prefix_len: 124, // 16 addresses, so "full" is reachable in a test
        ..cfg()
    });
    assert_eq!(
        pool.plan(0),
        PoolPlan6::Grow {
            prefixes: 1,
            reason: GrowReason::Empty
        }
    );
    pool.add_prefix(net("fd00:10::/124"), 0).expect("prefix");
    assert_eq!(pool.plan(0), PoolPlan6::Steady);
    for i in 0..15 {
        assign(&mut pool, i, 0); // ::0 is reserved: 15 usable
    }
    assert_eq!(
        pool.plan(0),
        PoolPlan6::Grow {
            prefixes: 1,
            reason: GrowReason::Empty
        }
    );
    pool.add_prefix(net("fd00:10::10/124"), 0).expect("second");
    assert_eq!(pool.plan(0), PoolPlan6::Steady);
    // Once the first has room again and the second is wholly free, the second goes.
    for i in 0..3 {
        pool.release_unused(&key(i), 0).expect("release");
    }
    assert_eq!(
        pool.plan(0),
        PoolPlan6::Shrink {
            prefixes: vec![net("fd00:10::10/124")]
        }
    );
}

/// At the real size (/80: 2^48 addresses, more than `PoolStats` can count) a second,
/// wholly-free prefix is still released and the last one kept: the policy's arithmetic does
/// not saturate (it once subtracted a saturated prefix size from a saturated total and
/// believed the pool empty, so it never released an IPv6 prefix).
#[test]
fn a_second_wholly_free_80_is_released_at_real_sizes() {
    let mut pool = Pool6::new(cfg());
    pool.add_prefix(net("fd00:10::/80"), 0).expect("prefix");
    assert_eq!(pool.plan(1), PoolPlan6::Steady, "the only prefix stays");
    assign(&mut pool, 1, 0);
    pool.add_prefix(net("fd00:10:0:0:1::/80"), 0)
        .expect("second");
    assert_eq!(pool.stats(1).total, u32::MAX, "counts saturate");
    assert_eq!(
        pool.plan(1),
        PoolPlan6::Shrink {
            prefixes: vec![net("fd00:10:0:0:1::/80")]
        }
    );
    // Max-pods reached: the wholly-free one still goes (growing would not help anyway).
    let mut full = Pool6::new(PoolConfig6 {
        max_pods: 1,
        ..cfg()
    });
    full.add_prefix(net("fd00:10::/80"), 0).expect("prefix");
    full.assign(key(1), PodMeta::default(), 0).expect("assign");
    full.add_prefix(net("fd00:10:0:0:1::/80"), 0)
        .expect("second");
    assert_eq!(
        full.plan(1),
        PoolPlan6::Shrink {
            prefixes: vec![net("fd00:10:0:0:1::/80")]
        }
    );
}

#[test]
fn claim_candidates_and_prefix_count_at_ipv6_sizes() {
    let pool = Pool6::new(PoolConfig6 {
        vpc_cidrs: vec![net("fd00:10::/48")],
        ..cfg()
    });
    assert_eq!(pool.vpc_prefix_count(), 1 << 32);
    let a = pool.claim_candidates(&HashSet::new(), 7, 3);
    assert_eq!(
        a,
        vec![
            net("fd00:10:0:0:7::/80"),
            net("fd00:10:0:0:8::/80"),
            net("fd00:10:0:0:9::/80")
        ]
    );
    let taken: HashSet<_> = [net("fd00:10:0:0:8::/80")].into();
    let b = pool.claim_candidates(&taken, 7, 2);
    assert_eq!(
        b,
        vec![net("fd00:10:0:0:7::/80"), net("fd00:10:0:0:9::/80")]
    );
    // The last prefix of the VPC, and wrapping around to the first.
    let last = pool.claim_candidates(&HashSet::new(), (1 << 32) - 1, 2);
    assert_eq!(
        last,
        vec![net("fd00:10:0:ffff:ffff::/80"), net("fd00:10::/80")]
    );
    // A VPC too large to count exactly saturates instead of overflowing.
    let huge = Pool6::new(PoolConfig6 {
        vpc_cidrs: vec![net("fd00::/8")],
        ..cfg()
    });
    assert_eq!(huge.vpc_prefix_count(), u64::MAX);
    assert_eq!(huge.unheld_prefixes().next(), Some(net("fd00::/80")));
}

#[test]
fn replay_and_snapshot_reproduce_the_pool() {
    let mut pool = Pool6::new(cfg());
    let mut journal = vec![pool.add_prefix(net("fd00:10::/80"), 0).expect("prefix")];
    for i in 0..5 {
        let (_, ev) = pool.assign(key(i), PodMeta::default(), 1).expect("assign");
        journal.extend(ev);
    }
    journal.extend(pool.release(&key(2), 2));
    let mut replayed = Pool6::new(cfg());
    for ev in &journal {
        let json = serde_json::to_string(ev).expect("event to json");
        let ev: PoolEvent6 = serde_json::from_str(&json).expect("event from json");
        replayed.apply(&ev).expect("replay");
    }
    assert_eq!(replayed, pool);
    let restored: Pool6 =
        serde_json::from_str(&serde_json::to_string(&pool).expect("snapshot")).expect("restore");
    assert_eq!(restored, pool);
    let shape = serde_json::to_string(&journal[0]).expect("json");
    assert_eq!(
        shape,
        r#"{"ev":"prefixAdded","prefix":"fd00:10::/80","at":0}"#
    );
    // A replayed double assignment is refused.
    let dup = PoolEvent6::Assigned {
        alloc: Allocation6 {
            ip: ip("fd00:10::1"),
            key: key(99),
            meta: PodMeta::default(),
            assigned_at: 3,
        },
    };
    assert_eq!(
        replayed.apply(&dup),
        Err(PoolError::AddressTaken {
            ip: ip("fd00:10::1").into()
        })
    );
}
