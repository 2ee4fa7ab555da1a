//! Property tests of the journal (issue 9, item 3): random histories of acknowledged
//! records, a torn in-flight write, and random damage (flipped bytes, duplicated, reordered
//! and truncated lines). Loading must recover exactly the acknowledged state or refuse —
//! never start with less — with one documented exception: a truncation that removes
//! acknowledged records leaves a file that looks like an older journal (or a torn write), which
//! no reader of the file alone can tell; then the load may only yield a state the journal
//! really passed through (the start-up audit against the kernel catches the pods it lost).
//!
//! The same for dual-stack journals (issue 11): a change that takes an address of each
//! family is one record; the load gives both pools exactly as acknowledged, or refuses.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use vpcnet_agent::node::store::{
    journal_line, journal_record, load, replay_dual, snapshot_bytes, FamilyEvent,
};
use vpcnet_pool::{AllocKey, PodMeta, Pool, Pool6, PoolConfig, PoolConfig6, PoolEvent};

fn cfg() -> PoolConfig {
    PoolConfig {
        vpc_cidrs: vec!["10.0.0.0/26".parse().expect("vpc")],
        prefix_len: 28,
        cooldown_ms: 1_000,
        ..Default::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    AddPrefix(u8),
    Assign(u8),
    Release(u8),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..4u8).prop_map(Op::AddPrefix),
        5 => (0..30u8).prop_map(Op::Assign),
        3 => (0..30u8).prop_map(Op::Release),
        2 => (0..2_000u16).prop_map(Op::Tick),
    ]
}

fn key(k: u8) -> AllocKey {
    AllocKey {
        network: "n".into(),
        container_id: format!("c{k}"),
        ifname: "eth0".into(),
    }
}

/// The events a run of `ops` produces, and the pool after each prefix of them.
fn history(ops: &[Op]) -> (Vec<PoolEvent>, Vec<Pool>) {
    let mut pool = Pool::new(cfg());
    let mut now = 1_000_000u64;
    let mut evs = Vec::new();
    let mut states = vec![pool.clone()];
    for op in ops {
        let ev = match op {
            Op::AddPrefix(i) => {
                let net = format!("10.0.0.{}/28", u32::from(*i) * 16);
                pool.add_prefix(net.parse().expect("prefix"), now).ok()
            }
            Op::Assign(k) => pool
                .assign(key(*k), PodMeta::default(), now)
                .ok()
                .and_then(|(_, ev)| ev),
            Op::Release(k) => pool.release(&key(*k), now),
            Op::Tick(ms) => {
                now += u64::from(*ms);
                None
            }
        };
        if let Some(ev) = ev {
            evs.push(ev);
            states.push(pool.clone());
        }
    }
    (evs, states)
}

/// Journal lines for records `first..=evs.len()` (1-based sequence numbers).
fn lines(evs: &[PoolEvent], first: usize) -> Vec<Vec<u8>> {
    evs.iter()
        .enumerate()
        .skip(first.saturating_sub(1))
        .map(|(i, ev)| {
            let mut out = Vec::new();
            journal_line(i as u64 + 1, ev, &mut out).expect("encode");
            out
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Damage {
    /// XOR one byte (of the acknowledged part) with a non-zero mask.
    Flip(usize, u8),
    /// Line `i` again, inserted at line position `j`.
    Duplicate(usize, usize),
    /// Lines `i` and `j` swapped.
    Swap(usize, usize),
    /// The file cut at byte `p` of the acknowledged part.
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(p, m)| Damage::Flip(p, m)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Damage::Duplicate(i, j)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Damage::Swap(i, j)),
        any::<usize>().prop_map(Damage::Truncate),
    ]
}

/// `lines` joined after `damages`; whether it was truncated, and where.
fn damaged(mut lines: Vec<Vec<u8>>, damages: &[Damage]) -> (Vec<u8>, bool, Option<usize>) {
    let mut truncated = false;
    let mut cut: Option<usize> = None;
    for d in damages {
        let n = lines.len();
        match *d {
            Damage::Flip(p, m) if n > 0 => {
                let total: usize = lines.iter().map(Vec::len).sum();
                let mut p = p % total;
                // The file's last byte is the last record's newline: damaged, the file ends in
                // what looks like a torn write, which the store cannot tell from bit rot of
                // that one byte — so it counts as a cut there (an earlier state is fine).
                if p + 1 == total {
                    cut = Some(cut.map_or(total, |c: usize| c.min(total)));
                    truncated = true;
                }
                for l in lines.iter_mut() {
                    if p < l.len() {
                        l[p] ^= m;
                        break;
                    }
                    p -= l.len();
                }
            }
            Damage::Duplicate(i, j) if n > 0 => {
                let l = lines[i % n].clone();
                lines.insert(j % (n + 1), l);
            }
            Damage::Swap(i, j) if n > 1 => lines.swap(i % n, j % n),
            Damage::Truncate(p) if n > 0 => {
                let total: usize = lines.iter().map(Vec::len).sum();
                cut = Some(cut.map_or(p % total, |c: usize| c.min(p % total)));
                truncated = true;
            }
            _ => {}
        }
    }
    let mut journal: Vec<u8> = lines.concat();
    if let Some(c) = cut {
        journal.truncate(c);
    }
    (journal, truncated, cut)
}

fn cfg6() -> PoolConfig6 {
    PoolConfig6 {
        vpc_cidrs: vec!["fd00:10::/96".parse().expect("vpc6")],
        prefix_len: 124,
        cooldown_ms: 1_000,
        ..Default::default()
    }
}

#[derive(Clone, Debug)]
enum DualOp {
    AddPrefix(u8),
    AddPrefix6(u8),
    /// One address of each family, in one change (rolled back if the second fails).
    Assign(u8),
    /// Both addresses of the attachment, in one change.
    Release(u8),
    Tick(u16),
}

fn dual_op() -> impl Strategy<Value = DualOp> {
    prop_oneof![
        1 => (0..4u8).prop_map(DualOp::AddPrefix),
        1 => (0..4u8).prop_map(DualOp::AddPrefix6),
        5 => (0..30u8).prop_map(DualOp::Assign),
        3 => (0..30u8).prop_map(DualOp::Release),
        2 => (0..2_000u16).prop_map(DualOp::Tick),
    ]
}

type Pools = (Pool, Pool6);

/// The records a dual-stack run of `ops` writes, and both pools after each of them.
fn dual_history(ops: &[DualOp]) -> (Vec<Vec<FamilyEvent>>, Vec<Pools>) {
    let (mut p4, mut p6) = (Pool::new(cfg()), Pool6::new(cfg6()));
    let mut now = 1_000_000u64;
    let mut recs = Vec::new();
    let mut states = vec![(p4.clone(), p6.clone())];
    for op in ops {
        let mut rec = Vec::new();
        match op {
            DualOp::AddPrefix(i) => {
                let net = format!("10.0.0.{}/28", u32::from(*i) * 16);
                rec.extend(
                    p4.add_prefix(net.parse().expect("p"), now)
                        .ok()
                        .map(FamilyEvent::V4),
                );
            }
            DualOp::AddPrefix6(i) => {
                let net = format!("fd00:10::{:x}/124", u32::from(*i) * 16);
                rec.extend(
                    p6.add_prefix(net.parse().expect("p6"), now)
                        .ok()
                        .map(FamilyEvent::V6),
                );
            }
            DualOp::Assign(k) => {
                let before = p4.clone();
                let e4 = p4.assign(key(*k), PodMeta::default(), now);
                let e6 = e4
                    .as_ref()
                    .ok()
                    .map(|_| p6.assign(key(*k), PodMeta::default(), now));
                match (e4, e6) {
                    (Ok((_, e4)), Some(Ok((_, e6)))) => {
                        rec.extend(e4.map(FamilyEvent::V4));
                        rec.extend(e6.map(FamilyEvent::V6));
                    }
                    // The second family failed: the first is undone in memory, nothing written.
                    (Ok(_), _) => p4 = before,
                    _ => {}
                }
            }
            DualOp::Release(k) => {
                rec.extend(p4.release(&key(*k), now).map(FamilyEvent::V4));
                rec.extend(p6.release(&key(*k), now).map(FamilyEvent::V6));
            }
            DualOp::Tick(ms) => now += u64::from(*ms),
        }
        if !rec.is_empty() {
            recs.push(rec);
            states.push((p4.clone(), p6.clone()));
        }
    }
    (recs, states)
}

fn dual_lines(recs: &[Vec<FamilyEvent>]) -> Vec<Vec<u8>> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut out = Vec::new();
            journal_record(i as u64 + 1, r, &mut out).expect("encode");
            out
        })
        .collect()
}

fn load_dual(journal: &[u8]) -> Result<Pools, String> {
    let (mut p4, mut p6) = (Pool::new(cfg()), Pool6::new(cfg6()));
    replay_dual(journal, &mut p4, Some(&mut p6), 0)
        .map(|_| (p4, p6))
        .map_err(|e| e.to_string())
}

/// What a load may give for a journal that suffered `damage`.
fn acceptable(
    got: &Result<Pool, String>,
    acked: &Pool,
    states: &[Pool],
    truncated: bool,
) -> Result<(), String> {
    match got {
        Err(_) => Ok(()),
        Ok(p) if p == acked => Ok(()),
        Ok(p) if truncated && states.contains(p) => Ok(()),
        Ok(p) => Err(format!(
            "started with a state that is not the acknowledged one: {} allocations vs {}",
            p.allocations().count(),
            acked.allocations().count()
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn damage_is_refused_or_harmless(
        ops in prop::collection::vec(op(), 1..60),
        snap_at in any::<prop::sample::Index>(),
        keep_folded in any::<bool>(),
        torn in any::<Option<(prop::sample::Index, u8)>>(),
        damages in prop::collection::vec(damage(), 0..3),
    ) {
        let (evs, states) = history(&ops);
        prop_assume!(!evs.is_empty());
        let acked = states.last().expect("states").clone();
        // A snapshot of the first `k` records; the journal holds the rest, or — a crash
        // between snapshot and truncate — all of them.
        let k = snap_at.index(evs.len());
        let snapshot = (k > 0).then(|| snapshot_bytes(k as u64, &states[k]).expect("snapshot"));
        let lines = lines(&evs, if keep_folded { 1 } else { k + 1 });
        // Damage the acknowledged part.
        let (mut journal, truncated, cut) = damaged(lines, &damages);
        // A crash during the next write: part of one more record, never acknowledged.
        if let (Some((at, b)), None) = (torn, cut) {
            let next = match acked.allocations().next() {
                Some(a) => PoolEvent::Released { key: a.key.clone(), ip: a.ip, cool_until: 9 },
                None => PoolEvent::PrefixAdded { prefix: "10.0.0.48/28".parse().expect("p"), at: 1 },
            };
            let mut line = Vec::new();
            journal_line(evs.len() as u64 + 1, &next, &mut line).expect("encode");
            // Strictly inside the line (its newline never made it).
            let p = 1 + at.index(line.len() - 1);
            line.truncate(p);
            if let Some(last) = line.last_mut() {
                // What reached the disk of the torn write may be garbage too.
                // Garbage, but not a newline: a torn write ends before its newline (one
                // that ended in a newline would be a complete record with a bad checksum,
                // which the store rightly refuses rather than guess it was never acked).
                if b % 3 == 0 && (*last ^ (b | 1)) != b'\n' { *last ^= b | 1; }
            }
            journal.extend_from_slice(&line);
        }
        let got = load(snapshot.as_deref(), &journal, cfg())
            .map(|(p, _)| p)
            .map_err(|e| e.to_string());
        if damages.is_empty() {
            prop_assert_eq!(got.as_ref().ok(), Some(&acked), "undamaged journal: {:?}", got.as_ref().err());
        }
        if let Err(msg) = acceptable(&got, &acked, &states, truncated) {
            return Err(TestCaseError::fail(format!("{msg}; damages {damages:?}")));
        }
    }

    /// Flipping any single byte of a snapshot either is refused or changes nothing (e.g. it
    /// hit the name of the `crc` field, which then reads as an older snapshot, intact).
    #[test]
    fn any_flipped_snapshot_byte_is_refused_or_harmless(
        ops in prop::collection::vec(op(), 1..40),
        pos in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let (evs, states) = history(&ops);
        prop_assume!(!evs.is_empty());
        let acked = states.last().expect("states");
        let mut snap = snapshot_bytes(evs.len() as u64, acked).expect("snapshot");
        let p = pos.index(snap.len());
        snap[p] ^= mask;
        if let Ok((pool, _)) = load(Some(&snap), &[], cfg()) {
            prop_assert_eq!(&pool, acked, "byte {} of the snapshot flipped (^{:#x}): {}", p, mask, String::from_utf8_lossy(&snap));
        }
    }

    /// Flipping any single byte of an acknowledged record is always detected.
    #[test]
    fn any_flipped_byte_is_refused(
        ops in prop::collection::vec(op(), 1..40),
        pos in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let (evs, _) = history(&ops);
        prop_assume!(!evs.is_empty());
        let mut journal = lines(&evs, 1).concat();
        let p = pos.index(journal.len());
        journal[p] ^= mask;
        let r = load(None, &journal, cfg());
        prop_assert!(r.is_err(), "byte {} of {} flipped (^{:#x}) and the journal loaded", p, journal.len(), mask);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The dual-stack journal under the same damage: both pools exactly as acknowledged, or
    /// refused (or, truncated, a pair of states the journal really passed through: never one
    /// family of a change without the other).
    #[test]
    fn dual_damage_is_refused_or_harmless(
        ops in prop::collection::vec(dual_op(), 1..60),
        torn in any::<Option<(prop::sample::Index, u8)>>(),
        damages in prop::collection::vec(damage(), 0..3),
    ) {
        let (recs, states) = dual_history(&ops);
        prop_assume!(!recs.is_empty());
        let acked = states.last().expect("states").clone();
        let (mut journal, truncated, cut) = damaged(dual_lines(&recs), &damages);
        if let (Some((at, b)), None) = (torn, cut) {
            let next = vec![
                FamilyEvent::V4(PoolEvent::PrefixAdded { prefix: "10.0.0.48/28".parse().expect("p"), at: 1 }),
                FamilyEvent::V6(vpcnet_pool::PoolEvent6::PrefixAdded { prefix: "fd00:10::90/124".parse().expect("p"), at: 1 }),
            ];
            let mut line = Vec::new();
            journal_record(recs.len() as u64 + 1, &next, &mut line).expect("encode");
            let p = 1 + at.index(line.len() - 1);
            line.truncate(p);
            if let Some(last) = line.last_mut() {
                if b % 3 == 0 && (*last ^ (b | 1)) != b'\n' { *last ^= b | 1; }
            }
            journal.extend_from_slice(&line);
        }
        let got = load_dual(&journal);
        if damages.is_empty() {
            prop_assert_eq!(got.as_ref().ok(), Some(&acked), "undamaged journal: {:?}", got.as_ref().err());
        }
        match &got {
            Err(_) => {}
            Ok(p) if *p == acked => {}
            Ok(p) if truncated && states.contains(p) => {}
            Ok(p) => prop_assert!(false, "started with a state that is not the acknowledged one: \
                {} + {} allocations vs {} + {}; damages {:?}",
                p.0.allocations().count(), p.1.allocations().count(),
                acked.0.allocations().count(), acked.1.allocations().count(), damages),
        }
    }

    /// Flipping any single byte of an acknowledged dual-stack record is always detected.
    #[test]
    fn any_flipped_byte_of_a_dual_journal_is_refused(
        ops in prop::collection::vec(dual_op(), 1..40),
        pos in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let (recs, _) = dual_history(&ops);
        prop_assume!(!recs.is_empty());
        let mut journal = dual_lines(&recs).concat();
        let p = pos.index(journal.len());
        journal[p] ^= mask;
        prop_assert!(load_dual(&journal).is_err(), "byte {} of {} flipped (^{:#x}) and the journal loaded", p, journal.len(), mask);
    }
}

#[test]
fn dual_histories_take_both_families_in_one_record() {
    // Sanity of the generator: an attachment's two addresses are in one record.
    let (recs, states) = dual_history(&[
        DualOp::AddPrefix(0),
        DualOp::Assign(1),
        DualOp::AddPrefix6(0),
        DualOp::Assign(1),
        DualOp::Assign(2),
    ]);
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert!(matches!(
        recs[2][..],
        [FamilyEvent::V4(_), FamilyEvent::V6(_)]
    ));
    let (p4, p6) = states.last().expect("states");
    assert_eq!((p4.allocations().count(), p6.allocations().count()), (2, 2));
    // The first Assign, without an IPv6 prefix, was rolled back: nothing held, no record.
    assert_eq!(states[1].0.allocations().count(), 0);
}

#[test]
fn addresses_in_histories_are_in_the_vpc() {
    // Sanity of the generator: the histories really assign addresses.
    let (evs, states) = history(&[Op::AddPrefix(0), Op::Assign(1), Op::Assign(2)]);
    assert_eq!(evs.len(), 3);
    let ips: Vec<Ipv4Addr> = states[3].allocations().map(|a| a.ip).collect();
    assert_eq!(ips.len(), 2);
}
