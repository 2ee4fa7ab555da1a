use super::*;
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

fn net(s: &str) -> Ipv4Network {
    s.parse().expect("test network")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn key(i: u32) -> AllocKey {
    AllocKey {
        network: "vpcnet".into(),
        container_id: format!("c{i}"),
        ifname: "eth0".into(),
    }
}

/// VPC 10.0.0.0/24, /28 prefixes, every target off unless a test sets it.
fn cfg() -> PoolConfig {
    PoolConfig {
        vpc_cidrs: vec![net("10.0.0.0/24")],
        warm_prefix_target: 0,
        min_prefix_age_ms: 0,
        ..PoolConfig::default()
    }
}

fn pool_with(cfg: PoolConfig, prefixes: &[&str]) -> Pool {
    let mut pool = Pool::new(cfg);
    for p in prefixes {
        pool.add_prefix(net(p), 0).expect("add prefix");
    }
    pool
}

fn assign(pool: &mut Pool, i: u32, now: Millis) -> Ipv4Addr {
    pool.assign(key(i), PodMeta::default(), now)
        .expect("assign")
        .0
}

#[test]
fn assign_is_idempotent() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let (a, ev) = pool.assign(key(1), PodMeta::default(), 5).expect("assign");
    assert!(matches!(ev, Some(PoolEvent::Assigned { .. })));
    let (b, ev) = pool.assign(key(1), PodMeta::default(), 6).expect("assign");
    assert_eq!((a, ev), (b, None));
    assert_eq!(pool.stats(6).assigned, 1);
    assert_eq!(pool.get(&key(1)).map(|a| a.assigned_at), Some(5));
    assert_eq!(pool.owner_of(a).map(|a| &a.key), Some(&key(1)));
}

#[test]
fn release_is_idempotent_and_cools() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let a = assign(&mut pool, 1, 0);
    let ev = pool.release(&key(1), 100);
    assert_eq!(
        ev,
        Some(PoolEvent::Released {
            key: key(1),
            ip: a,
            cool_until: 30_100
        })
    );
    assert_eq!(pool.release(&key(1), 100), None);
    assert_eq!(pool.owner_of(a), None);
    let s = pool.stats(100);
    assert_eq!((s.assigned, s.cooling, s.available), (0, 1, 15));
    assert_eq!(pool.next_cooldown_expiry(100), Some(30_100));
    assert_eq!(pool.next_cooldown_expiry(30_100), None);
}

/// `released`: the addresses whose conntrack entries the agent flushes at start-up — cooling
/// ones and those past their cooldown but not reused; never an assigned one, and not one
/// handed out again.
#[test]
fn released_lists_cooling_and_expired_but_not_reused_addresses() {
    let mut c = cfg();
    c.vpc_cidrs = vec![net("10.0.0.0/16")];
    c.prefix_len = 30; // 4 addresses, none reserved
    let mut pool = pool_with(c, &["10.0.1.0/30"]);
    let ips: Vec<_> = (0..4).map(|i| assign(&mut pool, i, 0)).collect();
    assert_eq!(pool.released().count(), 0);
    pool.release(&key(0), 1_000);
    pool.release(&key(1), 50_000);
    // ips[0] is past its cooldown at 50 000, ips[1] is cooling: both listed.
    let mut r: Vec<_> = pool.released().collect();
    r.sort();
    assert_eq!(r, vec![ips[0], ips[1]]);
    // Reused: no longer released.
    assert_eq!(assign(&mut pool, 9, 50_001), ips[0]);
    assert_eq!(pool.released().collect::<Vec<_>>(), vec![ips[1]]);
}

#[test]
fn cooldown_is_respected() {
    let mut c = cfg();
    c.vpc_cidrs = vec![net("10.0.0.0/16")];
    c.prefix_len = 30; // 4 addresses, none reserved
    let mut pool = pool_with(c, &["10.0.1.0/30"]);
    let ips: Vec<_> = (0..4).map(|i| assign(&mut pool, i, 0)).collect();
    pool.release(&key(0), 1_000);
    // The only non-assigned address is cooling.
    assert_eq!(
        pool.assign(key(9), PodMeta::default(), 30_999),
        Err(PoolError::Exhausted {
            assigned: 3,
            cooling: 1,
            total: 4
        })
    );
    assert_eq!(assign(&mut pool, 9, 31_000), ips[0]);
}

#[test]
fn cooling_address_is_skipped_while_others_are_free() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let a = assign(&mut pool, 1, 0);
    pool.release(&key(1), 0);
    let b = assign(&mut pool, 2, 1);
    assert_ne!(a, b);
    assert_eq!(b, ip("10.0.0.17"));
}

#[test]
fn max_pods_error_names_the_limit() {
    let mut c = cfg();
    c.max_pods = 2;
    let mut pool = pool_with(c, &["10.0.0.16/28"]);
    assign(&mut pool, 1, 0);
    assign(&mut pool, 2, 0);
    let err = pool
        .assign(key(3), PodMeta::default(), 0)
        .expect_err("limit");
    assert_eq!(err, PoolError::MaxPods { max_pods: 2 });
    let msg = err.to_string();
    assert!(msg.contains("max-pods") && msg.contains('2'), "{msg}");
    // An existing key still gets its address.
    assert!(pool.assign(key(1), PodMeta::default(), 0).is_ok());
}

#[test]
fn exhausted_message_counts_and_asks_for_prefixes() {
    let mut pool = Pool::new(cfg());
    let err = pool
        .assign(key(1), PodMeta::default(), 0)
        .expect_err("empty");
    assert_eq!(
        err,
        PoolError::Exhausted {
            assigned: 0,
            cooling: 0,
            total: 0
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("more prefixes"), "{msg}");
}

#[test]
fn vpc_network_and_broadcast_are_never_handed_out() {
    let mut pool = pool_with(cfg(), &["10.0.0.0/28", "10.0.0.240/28"]);
    let s = pool.stats(0);
    assert_eq!(s.total, 30);
    let ips: Vec<_> = (0..30).map(|i| assign(&mut pool, i, 0)).collect();
    assert!(!ips.contains(&ip("10.0.0.0")));
    assert!(!ips.contains(&ip("10.0.0.255")));
    // Prefix network/broadcast addresses that are not the VPC's are used.
    assert!(ips.contains(&ip("10.0.0.15")));
    assert!(ips.contains(&ip("10.0.0.240")));
    assert!(matches!(
        pool.assign(key(99), PodMeta::default(), 0),
        Err(PoolError::Exhausted { total: 30, .. })
    ));
}

#[test]
fn packing_prefers_fullest_prefix_and_lowest_address() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"]);
    // Tie (all empty): lowest prefix, lowest address.
    assert_eq!(assign(&mut pool, 0, 0), ip("10.0.0.16"));
    assert_eq!(assign(&mut pool, 1, 0), ip("10.0.0.17"));
    // Put pods in the middle prefix by hand via replay.
    for (i, a) in ["10.0.0.40", "10.0.0.41", "10.0.0.42"].iter().enumerate() {
        let alloc = Allocation {
            ip: ip(a),
            key: key(10 + u32::try_from(i).expect("small")),
            meta: PodMeta::default(),
            assigned_at: 0,
        };
        pool.apply(&PoolEvent::Assigned { alloc }).expect("replay");
    }
    // The middle prefix has the most assigned: its lowest free address.
    assert_eq!(assign(&mut pool, 2, 0), ip("10.0.0.32"));
    // The third prefix stays wholly free.
    let infos = pool.prefixes(0);
    assert_eq!(infos[2].assigned, 0);
    assert_eq!(pool.stats(0).free_prefixes, 1);
}

#[test]
fn packing_avoids_wholly_free_prefix_over_one_with_cooling() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28", "10.0.0.32/28"]);
    pool.apply(&PoolEvent::Assigned {
        alloc: Allocation {
            ip: ip("10.0.0.33"),
            key: key(1),
            meta: PodMeta::default(),
            assigned_at: 0,
        },
    })
    .expect("replay");
    pool.release(&key(1), 0);
    // Both have 0 assigned; the one with a cooling address is already not wholly free.
    assert_eq!(assign(&mut pool, 2, 1), ip("10.0.0.32"));
    assert_eq!(pool.stats(1).free_prefixes, 1);
}

#[test]
fn add_prefix_validation() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    assert_eq!(
        pool.add_prefix(net("10.0.0.16/28"), 0),
        Err(PoolError::PrefixAlreadyHeld(net("10.0.0.16/28").into()))
    );
    assert_eq!(
        pool.add_prefix(net("10.0.0.8/28"), 0),
        Err(PoolError::PrefixMisaligned(net("10.0.0.8/28").into()))
    );
    assert_eq!(
        pool.add_prefix(net("10.0.0.32/27"), 0),
        Err(PoolError::PrefixMisaligned(net("10.0.0.32/27").into()))
    );
    assert_eq!(
        pool.add_prefix(net("10.0.1.0/28"), 0),
        Err(PoolError::PrefixOutsideVpc(net("10.0.1.0/28").into()))
    );
    // Overlap with a held prefix of another length (config changed since).
    let mut c = cfg();
    c.prefix_len = 27;
    pool.set_config(c);
    assert_eq!(
        pool.add_prefix(net("10.0.0.0/27"), 0),
        Err(PoolError::PrefixAlreadyHeld(net("10.0.0.0/27").into()))
    );
    assert!(pool.add_prefix(net("10.0.0.32/27"), 0).is_ok());
}

#[test]
fn remove_prefix_refuses_in_use() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let p = net("10.0.0.16/28");
    assign(&mut pool, 1, 0);
    assert_eq!(
        pool.remove_prefix(p, 0),
        Err(PoolError::PrefixInUse(p.into()))
    );
    pool.release(&key(1), 0);
    assert_eq!(
        pool.remove_prefix(p, 29_999),
        Err(PoolError::PrefixInUse(p.into()))
    );
    assert_eq!(
        pool.remove_prefix(p, 30_000),
        Ok(PoolEvent::PrefixRemoved { prefix: p })
    );
    assert_eq!(
        pool.remove_prefix(p, 30_000),
        Err(PoolError::PrefixNotHeld(p.into()))
    );
    assert_eq!(pool.stats(30_000), PoolStats::default());
}

#[test]
fn replay_and_snapshot_reproduce_the_pool() {
    let mut pool = Pool::new(cfg());
    let mut journal = vec![];
    journal.push(pool.add_prefix(net("10.0.0.0/28"), 1).expect("add"));
    journal.push(pool.add_prefix(net("10.0.0.16/28"), 2).expect("add"));
    for i in 0..20 {
        let meta = PodMeta {
            namespace: Some("default".into()),
            name: Some(format!("pod-{i}")),
            ..PodMeta::default()
        };
        journal.extend(pool.assign(key(i), meta, 10).expect("assign").1);
    }
    for i in (0..20).step_by(3) {
        journal.extend(pool.release(&key(i), 20));
    }
    journal.extend(
        pool.assign(key(100), PodMeta::default(), 40_000)
            .expect("a")
            .1,
    );

    let mut replayed = Pool::new(cfg());
    for ev in &journal {
        let json = serde_json::to_string(ev).expect("event to json");
        let ev: PoolEvent = serde_json::from_str(&json).expect("event from json");
        replayed.apply(&ev).expect("replay");
    }
    assert_eq!(replayed, pool);

    let json = serde_json::to_string(&pool).expect("snapshot");
    let restored: Pool = serde_json::from_str(&json).expect("restore");
    assert_eq!(restored, pool);
}

#[test]
fn event_json_shape() {
    let ev = PoolEvent::PrefixAdded {
        prefix: net("10.0.0.16/28"),
        at: 7,
    };
    let json = serde_json::to_string(&ev).expect("json");
    assert_eq!(
        json,
        r#"{"ev":"prefixAdded","prefix":"10.0.0.16/28","at":7}"#
    );
}

#[test]
fn replay_conflicts_are_rejected() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let a = assign(&mut pool, 1, 0);
    let dup = |k: u32, ip: Ipv4Addr, at: Millis| PoolEvent::Assigned {
        alloc: Allocation {
            ip,
            key: key(k),
            meta: PodMeta::default(),
            assigned_at: at,
        },
    };
    assert_eq!(
        pool.apply(&dup(2, a, 0)),
        Err(PoolError::AddressTaken { ip: a.into() })
    );
    assert_eq!(
        pool.apply(&dup(1, ip("10.0.0.20"), 0)),
        Err(PoolError::KeyAlreadyAssigned { ip: a.into() })
    );
    let outside = ip("10.0.0.100");
    assert_eq!(
        pool.apply(&dup(3, outside, 0)),
        Err(PoolError::AddressTaken { ip: outside.into() })
    );
    pool.release(&key(1), 0);
    // Re-assigning a cooling address before its deadline is a conflict; after it is not.
    assert_eq!(
        pool.apply(&dup(4, a, 29_999)),
        Err(PoolError::AddressTaken { ip: a.into() })
    );
    assert_eq!(pool.apply(&dup(4, a, 30_000)), Ok(()));
    let rel = PoolEvent::Released {
        key: key(5),
        ip: a,
        cool_until: 0,
    };
    assert_eq!(pool.apply(&rel), Err(PoolError::UnknownKey));
}

#[test]
fn snapshot_rejects_double_assignment() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    assign(&mut pool, 1, 0);
    assign(&mut pool, 2, 0);
    let json = serde_json::to_string(&pool).expect("snapshot");
    let bad = json.replace("10.0.0.17", "10.0.0.16");
    assert!(serde_json::from_str::<Pool>(&bad).is_err());
}

// ---- policy ----

fn grow(prefixes: u32, reason: GrowReason) -> PoolPlan {
    PoolPlan::Grow { prefixes, reason }
}

#[test]
fn plan_empty_pool_grows() {
    let pool = Pool::new(cfg());
    assert_eq!(pool.plan(0), grow(1, GrowReason::Empty));
}

#[test]
fn plan_warm_ip_target() {
    let mut c = cfg();
    c.warm_ip_target = 20;
    let mut pool = pool_with(c, &["10.0.0.16/28"]);
    // 16 available, want 20: one more /28.
    assert_eq!(pool.plan(0), grow(1, GrowReason::WarmIpTarget));
    for i in 0..10 {
        assign(&mut pool, i, 0);
    }
    // 6 available, want 20: 14 more → one /28 is not enough.
    assert_eq!(pool.plan(0), grow(1, GrowReason::WarmIpTarget));
    pool.add_prefix(net("10.0.0.32/28"), 0).expect("add");
    assert_eq!(pool.plan(0), PoolPlan::Steady);
    for i in 10..13 {
        assign(&mut pool, i, 0);
    }
    assert_eq!(pool.plan(0), grow(1, GrowReason::WarmIpTarget));
}

#[test]
fn plan_minimum_ip_target() {
    let mut c = cfg();
    c.minimum_ip_target = 40;
    let pool = pool_with(c, &["10.0.0.16/28"]);
    // 16 held, want 40: 24 more → two /28s.
    assert_eq!(pool.plan(0), grow(2, GrowReason::MinimumIpTarget));
}

#[test]
fn plan_warm_prefix_target() {
    let mut c = cfg();
    c.warm_prefix_target = 2;
    let mut pool = pool_with(c, &["10.0.0.16/28"]);
    assign(&mut pool, 1, 0);
    assert_eq!(pool.plan(0), grow(2, GrowReason::WarmPrefixTarget));
    pool.add_prefix(net("10.0.0.32/28"), 0).expect("add");
    pool.add_prefix(net("10.0.0.48/28"), 0).expect("add");
    assert_eq!(pool.plan(0), PoolPlan::Steady);
}

#[test]
fn plan_takes_the_largest_need() {
    let mut c = cfg();
    c.warm_ip_target = 1;
    c.minimum_ip_target = 64;
    c.warm_prefix_target = 1;
    let pool = Pool::new(c);
    assert_eq!(pool.plan(0), grow(4, GrowReason::MinimumIpTarget));
}

#[test]
fn plan_grow_is_capped_by_max_pods() {
    let mut c = cfg();
    c.max_pods = 20;
    c.minimum_ip_target = 100;
    let mut pool = Pool::new(c.clone());
    // Wants 7 /28s, but 20 pods need only 2.
    assert_eq!(pool.plan(0), grow(2, GrowReason::MinimumIpTarget));
    pool.add_prefix(net("10.0.0.16/28"), 0).expect("add");
    pool.add_prefix(net("10.0.0.32/28"), 0).expect("add");
    assert_eq!(pool.plan(0), PoolPlan::Steady);

    // Cooling addresses do not count as capacity.
    c.minimum_ip_target = 0;
    c.warm_ip_target = 5;
    c.max_pods = 16;
    let mut pool = pool_with(c, &["10.0.0.16/28"]);
    for i in 0..16 {
        assign(&mut pool, i, 0);
    }
    assert_eq!(pool.plan(0), PoolPlan::Steady);
    pool.release(&key(0), 0);
    pool.release(&key(1), 0);
    // total 16 - cooling 2 = 14 < 16 pods: grow to cover the 2 missing.
    assert_eq!(pool.plan(1), grow(1, GrowReason::WarmIpTarget));
}

#[test]
fn plan_grow_is_capped_by_vpc() {
    let mut c = cfg();
    c.vpc_cidrs = vec![net("10.0.0.0/27")];
    c.minimum_ip_target = 100;
    let mut pool = Pool::new(c);
    assert_eq!(pool.plan(0), grow(2, GrowReason::MinimumIpTarget));
    let free: Vec<_> = pool.unheld_prefixes().collect();
    assert_eq!(free, vec![net("10.0.0.0/28"), net("10.0.0.16/28")]);
    pool.add_prefix(free[0], 0).expect("add");
    pool.add_prefix(free[1], 0).expect("add");
    assert_eq!(pool.plan(0), PoolPlan::Steady);
}

#[test]
fn plan_shrinks_youngest_highest_without_flapping() {
    let mut c = cfg();
    c.warm_prefix_target = 1;
    c.warm_ip_target = 10;
    c.min_prefix_age_ms = 1_000;
    let mut pool = Pool::new(c);
    pool.add_prefix(net("10.0.0.16/28"), 0).expect("add");
    pool.add_prefix(net("10.0.0.64/28"), 100).expect("add");
    pool.add_prefix(net("10.0.0.32/28"), 100).expect("add");
    pool.add_prefix(net("10.0.0.48/28"), 50).expect("add");
    for i in 0..10 {
        assign(&mut pool, i, 0);
    }
    // Too young.
    assert_eq!(pool.plan(1_049), PoolPlan::Steady);
    // Only .48 is old enough; releasing it leaves 2 wholly-free, 6+32 available.
    assert_eq!(
        pool.plan(1_050),
        PoolPlan::Shrink {
            prefixes: vec![net("10.0.0.48/28")]
        }
    );
    // All old: youngest first, highest among equals; one wholly-free prefix must stay.
    let plan = pool.plan(2_000);
    assert_eq!(
        plan,
        PoolPlan::Shrink {
            prefixes: vec![net("10.0.0.64/28"), net("10.0.0.32/28")]
        }
    );
    if let PoolPlan::Shrink { prefixes } = plan {
        for p in prefixes {
            pool.remove_prefix(p, 2_000).expect("remove");
        }
    }
    assert_eq!(pool.plan(2_000), PoolPlan::Steady);
}

#[test]
fn plan_does_not_shrink_into_warm_ip_or_minimum() {
    let mut c = cfg();
    c.warm_prefix_target = 0;
    c.warm_ip_target = 20;
    let pool = pool_with(c.clone(), &["10.0.0.16/28", "10.0.0.32/28"]);
    assert_eq!(pool.plan(0), PoolPlan::Steady);

    c.warm_ip_target = 0;
    c.minimum_ip_target = 17;
    let pool = pool_with(c.clone(), &["10.0.0.16/28", "10.0.0.32/28"]);
    assert_eq!(pool.plan(0), PoolPlan::Steady);

    // Nothing set: keep one prefix so the pool is not empty.
    c.minimum_ip_target = 0;
    let pool = pool_with(c, &["10.0.0.16/28", "10.0.0.32/28"]);
    assert_eq!(
        pool.plan(0),
        PoolPlan::Shrink {
            prefixes: vec![net("10.0.0.32/28")]
        }
    );
}

#[test]
fn plan_never_shrinks_prefix_with_cooling() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28", "10.0.0.32/28"]);
    for i in 0..17 {
        assign(&mut pool, i, 0);
    }
    pool.release(&key(16), 0);
    for i in 0..16 {
        pool.release(&key(i), 0);
    }
    assert_eq!(pool.plan(1), PoolPlan::Steady);
    // After the cooldown both are wholly free: release the higher one.
    assert_eq!(
        pool.plan(30_000),
        PoolPlan::Shrink {
            prefixes: vec![net("10.0.0.32/28")]
        }
    );
}

#[test]
fn shrink_beyond_max_pods_is_allowed() {
    let mut c = cfg();
    c.max_pods = 10;
    c.warm_prefix_target = 1;
    let mut pool = pool_with(c, &["10.0.0.16/28", "10.0.0.32/28"]);
    for i in 0..10 {
        assign(&mut pool, i, 0);
    }
    // The second prefix is not needed for 10 pods; releasing it will not trigger growth.
    assert_eq!(
        pool.plan(0),
        PoolPlan::Shrink {
            prefixes: vec![net("10.0.0.32/28")]
        }
    );
}

#[test]
fn set_config_keeps_state() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let a = assign(&mut pool, 1, 0);
    let mut c = cfg();
    c.max_pods = 1;
    c.prefix_len = 26;
    pool.set_config(c);
    assert_eq!(pool.get(&key(1)).map(|a| a.ip), Some(a));
    assert_eq!(
        pool.assign(key(2), PodMeta::default(), 0),
        Err(PoolError::MaxPods { max_pods: 1 })
    );
    assert_eq!(
        pool.held_prefixes().collect::<Vec<_>>(),
        vec![net("10.0.0.16/28")]
    );
}

/// Issue 9.11: an address a failed ADD was given is free at once; nothing else changes.
#[test]
fn release_unused_skips_the_cooldown() {
    let mut pool = pool_with(cfg(), &["10.0.0.16/28"]);
    let a = assign(&mut pool, 1, 0);
    assert_eq!(
        pool.release_unused(&key(1), 100),
        Some(PoolEvent::Released {
            key: key(1),
            ip: a,
            cool_until: 100
        })
    );
    assert_eq!(pool.release_unused(&key(1), 100), None, "idempotent");
    let s = pool.stats(100);
    assert_eq!((s.assigned, s.cooling, s.available), (0, 0, 16));
    assert_eq!(assign(&mut pool, 2, 100), a, "handed out again at once");
}

/// Issue 9.11 (from the Amazon VPC CNI's tracker): addresses in cooldown must not count as
/// available when the warm pool decides whether to grow, or a burst of DELs then ADDs
/// starves. With every address of the only prefix cooling, the pool has none to give: it
/// must grow, for each target as for an empty pool.
#[test]
fn plan_counts_cooling_addresses_as_unavailable() {
    for (warm_ip, warm_prefix, reason) in [
        (0, 0, GrowReason::Empty),
        (4, 0, GrowReason::WarmIpTarget),
        (0, 1, GrowReason::WarmPrefixTarget),
    ] {
        let mut c = cfg();
        c.warm_ip_target = warm_ip;
        c.warm_prefix_target = warm_prefix;
        c.prefix_len = 30; // 4 addresses, none reserved
        c.vpc_cidrs = vec![net("10.0.0.0/16")];
        let mut pool = pool_with(c, &["10.0.1.0/30"]);
        for i in 0..4 {
            assign(&mut pool, i, 0);
        }
        for i in 0..4 {
            pool.release(&key(i), 10).expect("release");
        }
        let s = pool.stats(11);
        assert_eq!((s.cooling, s.available, s.free_prefixes), (4, 0, 0));
        match pool.plan(11) {
            PoolPlan::Grow {
                prefixes,
                reason: r,
            } => {
                assert!(prefixes >= 1);
                assert!(
                    r == reason || r == GrowReason::Empty,
                    "warm_ip {warm_ip} warm_prefix {warm_prefix}: {r:?}"
                );
            }
            other => panic!("warm_ip {warm_ip} warm_prefix {warm_prefix}: {other:?}"),
        }
    }
}

/// Issue 10: claim candidates are spread by the seed, never held or taken, and a nearly full
/// VPC is still searched whole.
#[test]
fn claim_candidates_spread_by_seed_and_skip_held_and_taken() {
    use std::collections::HashSet;
    let mut c = cfg();
    c.vpc_cidrs = vec![net("10.0.0.0/20")]; // 256 /28s
    let pool = pool_with(c.clone(), &["10.0.0.0/28"]);
    assert_eq!(pool.vpc_prefix_count(), 256);
    let taken: HashSet<_> = [net("10.0.0.16/28")].into_iter().collect();
    let a = pool.claim_candidates(&taken, 0, 4);
    assert_eq!(
        a,
        vec![
            net("10.0.0.32/28"),
            net("10.0.0.48/28"),
            net("10.0.0.64/28"),
            net("10.0.0.80/28")
        ]
    );
    let b = pool.claim_candidates(&taken, 100, 4);
    assert_eq!(b[0], net("10.0.6.64/28"), "position 100 of the VPC");
    assert_eq!(pool.claim_candidates(&taken, 100, 4), b, "deterministic");
    // Wraps around the end of the VPC.
    let w = pool.claim_candidates(&taken, 255, 3);
    assert_eq!(
        w,
        vec![
            net("10.0.15.240/28"),
            net("10.0.0.32/28"),
            net("10.0.0.48/28")
        ]
    );

    // Nearly full: only one prefix left, found whatever the seed.
    let all_but_one: HashSet<_> = (0..256u32)
        .filter(|i| *i != 77)
        .map(|i| Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + i * 16), 28).expect("net"))
        .collect();
    let empty = Pool::new(c);
    for seed in [0, 76, 77, 78, 1_000_003] {
        assert_eq!(
            empty.claim_candidates(&all_but_one, seed, 8),
            vec![net("10.0.4.208/28")],
            "seed {seed}"
        );
    }
}
