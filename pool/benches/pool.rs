//! Hot-path costs of the allocator: one pod start/stop, a policy pass, a stats read.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use vpcnet_pool::{AllocKey, Millis, PodMeta, Pool, Pool6, PoolConfig, PoolConfig6};

const PODS: u32 = 110;
const COOLDOWN: Millis = 30_000;

fn key(i: u32) -> AllocKey {
    AllocKey {
        network: "vpcnet".into(),
        container_id: format!("{i:064x}"),
        ifname: "eth0".into(),
    }
}

/// `PODS` pods assigned over `prefixes` held /28s of 10.0.0.0/16.
fn pool(prefixes: usize) -> Pool {
    let cfg = PoolConfig {
        vpc_cidrs: vec!["10.0.0.0/16".parse().expect("cidr")],
        warm_prefix_target: 1,
        warm_ip_target: 5,
        max_pods: PODS,
        cooldown_ms: COOLDOWN,
        ..PoolConfig::default()
    };
    let mut pool = Pool::new(cfg);
    let nets: Vec<_> = pool.unheld_prefixes().take(prefixes).collect();
    for p in nets {
        pool.add_prefix(p, 0).expect("add prefix");
    }
    for i in 0..PODS {
        pool.assign(key(i), PodMeta::default(), 0).expect("assign");
    }
    pool
}

/// `PODS` pods in one IPv6 /80 (the normal IPv6 node: one prefix, no warm targets).
fn pool6() -> Pool6 {
    let cfg = PoolConfig6 {
        vpc_cidrs: vec!["fd00:10::/64".parse().expect("cidr")],
        prefix_len: 80,
        warm_prefix_target: 0,
        max_pods: PODS,
        cooldown_ms: COOLDOWN,
        ..PoolConfig6::default()
    };
    let mut pool = Pool6::new(cfg);
    pool.add_prefix("fd00:10::/80".parse().expect("prefix"), 0)
        .expect("add prefix");
    for i in 0..PODS {
        pool.assign(key(i), PodMeta::default(), 0).expect("assign");
    }
    pool
}

fn bench6(c: &mut Criterion) {
    let mut p = pool6();
    let keys: Vec<_> = (0..PODS).map(key).collect();
    let (mut now, mut i) = (0, 0);
    c.bench_function("v6 assign+release/1_prefix", |b| {
        b.iter(|| {
            now += COOLDOWN;
            let k = &keys[i % keys.len()];
            i += 1;
            black_box(p.release(k, now));
            black_box(
                p.assign(k.clone(), PodMeta::default(), now)
                    .expect("assign"),
            );
        })
    });
    let p = pool6();
    c.bench_function("v6 plan/1_prefix", |b| {
        b.iter(|| black_box(p.plan(black_box(1))))
    });
    c.bench_function("v6 stats/1_prefix", |b| {
        b.iter(|| black_box(p.stats(black_box(1))))
    });
}

fn bench(c: &mut Criterion) {
    for prefixes in [8, 256] {
        let mut p = pool(prefixes);
        let keys: Vec<_> = (0..PODS).map(key).collect();
        let mut now = 0;
        let mut i = 0;
        c.bench_function(&format!("assign+release/{prefixes}_prefixes"), |b| {
            b.iter(|| {
                // Past the previous cooldown so the pool never runs dry.
                now += COOLDOWN;
                let k = &keys[i % keys.len()];
                i += 1;
                black_box(p.release(k, now));
                black_box(
                    p.assign(k.clone(), PodMeta::default(), now)
                        .expect("assign"),
                );
            })
        });
        let p = pool(prefixes);
        c.bench_function(&format!("plan/{prefixes}_prefixes"), |b| {
            b.iter(|| black_box(p.plan(black_box(1))))
        });
        c.bench_function(&format!("stats/{prefixes}_prefixes"), |b| {
            b.iter(|| black_box(p.stats(black_box(1))))
        });
    }
}

/// What the agent's way back from a failed journal write costs per change, 110 pods with
/// their pod metadata: a clone of the pool (before) or a savepoint (after; issue 14).
fn bench_undo(c: &mut Criterion) {
    let meta = |i: u32| PodMeta {
        namespace: Some("default".into()),
        name: Some(format!("web-7c5d8f9b4-{i:05}")),
        uid: Some(format!("{i:08x}-1f2e-4d3c-9b8a-0123456789ab")),
        netns: Some(format!(
            "/var/run/netns/cni-{i:08x}-aaaa-bbbb-cccc-0123456789ab"
        )),
    };
    let fill = || {
        let mut p = pool(8);
        for i in 0..PODS {
            let k = key(i);
            p.release(&k, 0);
            p.assign(k, meta(i), COOLDOWN).expect("assign");
        }
        p
    };
    let keys: Vec<_> = (0..PODS).map(key).collect();
    for how in ["clone", "savepoint"] {
        let mut p = fill();
        let (mut now, mut i) = (COOLDOWN, 0);
        c.bench_function(
            &format!("assign+release, undo point per change/{how}"),
            |b| {
                b.iter(|| {
                    now += COOLDOWN;
                    let k = &keys[i % keys.len()];
                    let m = meta(u32::try_from(i % keys.len()).unwrap_or(0));
                    i += 1;
                    if how == "clone" {
                        let before = p.clone();
                        black_box(p.release(k, now));
                        drop(black_box(before));
                        let before = p.clone();
                        black_box(p.assign(k.clone(), m, now).expect("assign"));
                        drop(black_box(before));
                    } else {
                        let sp = p.savepoint();
                        black_box(p.release(k, now));
                        p.commit(sp);
                        let sp = p.savepoint();
                        black_box(p.assign(k.clone(), m, now).expect("assign"));
                        p.commit(sp);
                    }
                })
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench, bench6, bench_undo
}
criterion_main!(benches);
