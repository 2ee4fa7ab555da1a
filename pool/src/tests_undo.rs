//! Savepoints ([`PoolOf::savepoint`]): a rollback puts the pool back exactly, whatever ran
//! in between; a commit keeps exactly what the same changes do without a savepoint.

use super::*;
use ipnetwork::{Ipv4Network, Ipv6Network};
use proptest::prelude::*;

fn key(i: u8) -> AllocKey {
    AllocKey {
        network: "vpcnet".into(),
        container_id: format!("c{i}"),
        ifname: "eth0".into(),
    }
}

fn meta(i: u8) -> PodMeta {
    PodMeta {
        namespace: Some("ns".into()),
        name: Some(format!("pod-{i}")),
        uid: None,
        netns: Some(format!("/run/netns/p{i}")),
    }
}

/// VPC 10.0.0.0/24 in /28 prefixes: 16 prefixes, network and broadcast reserved.
fn cfg(max_pods: u32, cooldown_ms: u64) -> PoolConfig {
    PoolConfig {
        vpc_cidrs: vec!["10.0.0.0/24".parse().expect("cidr")],
        warm_prefix_target: 0,
        min_prefix_age_ms: 0,
        max_pods,
        cooldown_ms,
        ..PoolConfig::default()
    }
}

fn prefix(j: u8) -> Ipv4Network {
    Ipv4Network::new(std::net::Ipv4Addr::new(10, 0, 0, (j % 16) * 16), 28).expect("prefix")
}

#[derive(Clone, Debug)]
enum Op {
    Assign(u8),
    Release(u8),
    ReleaseUnused(u8),
    AddPrefix(u8),
    RemovePrefix(u8),
    Tick(u64),
    Config(u32, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..48).prop_map(Op::Assign),
        2 => (0u8..48).prop_map(Op::Release),
        1 => (0u8..48).prop_map(Op::ReleaseUnused),
        2 => (0u8..16).prop_map(Op::AddPrefix),
        1 => (0u8..16).prop_map(Op::RemovePrefix),
        1 => (0u64..50).prop_map(Op::Tick),
        1 => (1u32..60, 0u64..40).prop_map(|(m, c)| Op::Config(m, c)),
    ]
}

/// Runs `ops` from time `now`; returns the time after them. Refusals are part of the run
/// (they must change nothing either way).
fn run(pool: &mut Pool, ops: &[Op], mut now: Millis) -> Millis {
    for op in ops {
        match op {
            Op::Assign(i) => {
                let _ = pool.assign(key(*i), meta(*i), now);
            }
            Op::Release(i) => {
                let _ = pool.release(&key(*i), now);
            }
            Op::ReleaseUnused(i) => {
                let _ = pool.release_unused(&key(*i), now);
            }
            Op::AddPrefix(j) => {
                let _ = pool.add_prefix(prefix(*j), now);
            }
            Op::RemovePrefix(j) => {
                let _ = pool.remove_prefix(prefix(*j), now);
            }
            Op::Tick(dt) => now += dt,
            Op::Config(m, c) => pool.set_config(cfg(*m, *c)),
        }
    }
    now
}

/// The pool's value as its snapshot says it (what the agent writes and loads).
fn snapshot(pool: &Pool) -> String {
    serde_json::to_string(pool).expect("snapshot")
}

proptest! {
    #[test]
    fn rollback_restores_exactly_and_commit_keeps_exactly(
        setup in proptest::collection::vec(op(), 0..60),
        outer in proptest::collection::vec(op(), 0..30),
        inner in proptest::collection::vec(op(), 0..30),
        roll_inner: bool,
        roll_outer: bool,
    ) {
        let mut pool = Pool::new(cfg(40, 20));
        let now = run(&mut pool, &setup, 0);
        let start = pool.clone();

        let sp = pool.savepoint();
        let now2 = run(&mut pool, &outer, now);
        let middle = pool.clone();
        let sp2 = pool.savepoint();
        let now3 = run(&mut pool, &inner, now2);
        let after_inner = pool.clone();
        if roll_inner {
            pool.rollback_to(sp2);
            prop_assert_eq!(&pool, &middle);
        } else {
            pool.commit(sp2);
            prop_assert_eq!(&pool, &after_inner);
        }
        if roll_outer {
            pool.rollback_to(sp);
            prop_assert_eq!(&pool, &start);
            prop_assert_eq!(snapshot(&pool), snapshot(&start));
        } else {
            pool.commit(sp);
            // The same changes without any savepoint give the same pool.
            let mut plain = start.clone();
            let t = run(&mut plain, &outer, now);
            if !roll_inner {
                run(&mut plain, &inner, t);
            }
            prop_assert_eq!(&pool, &plain);
            prop_assert_eq!(snapshot(&pool), snapshot(&plain));
        }
        // Whatever was undone, the pool still loads from its own snapshot (its checks pass)
        // and goes on allocating consistently.
        let reloaded: Pool = serde_json::from_str(&snapshot(&pool)).expect("reload");
        prop_assert_eq!(&reloaded, &pool);
        let _ = now3;
    }
}

#[test]
fn no_savepoint_records_nothing_and_a_closed_one_stops_recording() {
    let mut pool = Pool::new(cfg(40, 20));
    pool.add_prefix(prefix(1), 0).expect("prefix");
    for i in 0..10 {
        pool.assign(key(i), meta(i), 1).expect("assign");
    }
    assert_eq!(format!("{:?}", pool.undo), "UndoLog(0 entries, 0 open)");
    let sp = pool.savepoint();
    pool.assign(key(20), meta(20), 2).expect("assign");
    pool.release(&key(1), 2).expect("release");
    assert_eq!(format!("{:?}", pool.undo), "UndoLog(2 entries, 1 open)");
    pool.commit(sp);
    pool.assign(key(21), meta(21), 3).expect("assign");
    assert_eq!(format!("{:?}", pool.undo), "UndoLog(0 entries, 0 open)");
}

#[test]
fn ipv6_rollback_restores_exactly() {
    let cfg6 = PoolConfig6 {
        vpc_cidrs: vec!["fd00::/64".parse::<Ipv6Network>().expect("cidr")],
        prefix_len: 80,
        warm_prefix_target: 0,
        min_prefix_age_ms: 0,
        cooldown_ms: 10,
        ..PoolConfig6::default()
    };
    let mut pool = Pool6::new(cfg6);
    let p1: Ipv6Network = "fd00::/80".parse().expect("prefix");
    let p2: Ipv6Network = "fd00:0:0:0:1::/80".parse().expect("prefix");
    pool.add_prefix(p1, 0).expect("prefix");
    for i in 0..5 {
        pool.assign(key(i), meta(i), 1).expect("assign");
    }
    pool.release(&key(2), 1).expect("release");
    let before = pool.clone();
    let sp = pool.savepoint();
    pool.add_prefix(p2, 2).expect("prefix");
    for i in 5..9 {
        pool.assign(key(i), meta(i), 20).expect("assign");
    }
    pool.release(&key(0), 20).expect("release");
    pool.release_unused(&key(6), 20).expect("release");
    pool.rollback_to(sp);
    assert_eq!(pool, before);
    assert_eq!(
        serde_json::to_string(&pool).ok(),
        serde_json::to_string(&before).ok()
    );
}
