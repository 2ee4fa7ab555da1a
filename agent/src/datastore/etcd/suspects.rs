//! Which nodes look dead, and since when: the pure bookkeeping of the claim sweep
//! (`sweep.rs` does the I/O). No clock, no etcd: every call is given what was seen and when.
//!
//! A node is *suspect* from the first time this agent saw it without liveness (no
//! `<prefix>/nodes/<node>/alive` key), together with the `mod_revision` its announcement
//! record (`…/announced`, rewritten every time the node starts using a lease) had then. It is
//! due for a sweep once it has been suspect for the grace period; the sweep's txn then
//! compares both again — still no liveness, the record unchanged — so a node that came back
//! even for a moment in between (a new lease means a new announcement) is not swept, however
//! seldom this agent looked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What one look at a node's liveness found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Its alive key exists: it holds a live lease.
    Alive,
    /// No alive key; its announcement record has this `mod_revision` (0: none).
    Absent { announced: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspect {
    announced: i64,
    since: Instant,
}

/// The suspects of one agent.
#[derive(Debug)]
pub(super) struct Suspects {
    grace: Duration,
    by_node: BTreeMap<String, Suspect>,
}

impl Suspects {
    pub(super) fn new(grace: Duration) -> Suspects {
        Suspects {
            grace,
            by_node: BTreeMap::new(),
        }
    }

    /// Records a look at `node` at `now`. Absent with the record seen before: still suspect
    /// since then; with another record (the node announced a new lease meanwhile): suspect
    /// from now.
    pub(super) fn observe(&mut self, node: &str, seen: Seen, now: Instant) {
        match seen {
            Seen::Alive => {
                self.by_node.remove(node);
            }
            Seen::Absent { announced } => {
                let fresh = Suspect {
                    announced,
                    since: now,
                };
                let s = self.by_node.entry(node.to_string()).or_insert(fresh);
                if s.announced != announced {
                    *s = fresh;
                }
            }
        }
    }

    /// Nodes suspect for the whole grace period at `now`, with the record revision their
    /// sweep must compare.
    pub(super) fn due(&self, now: Instant) -> Vec<(String, i64)> {
        self.by_node
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= self.grace)
            .map(|(n, s)| (n.clone(), s.announced))
            .collect()
    }

    pub(super) fn contains(&self, node: &str) -> bool {
        self.by_node.contains_key(node)
    }

    /// Forgets `node` (swept, or it holds no claims any more).
    pub(super) fn forget(&mut self, node: &str) {
        self.by_node.remove(node);
    }

    /// Keeps only nodes that still hold claims.
    pub(super) fn retain_owners(&mut self, owners: &BTreeSet<String>) {
        self.by_node.retain(|n, _| owners.contains(n));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_node.len()
    }
}

/// Up to `k` nodes to look at this round: claim owners other than `me` not suspect yet,
/// drawn at random (each agent looks at a few per round, so N agents ask etcd about O(N)
/// nodes per round together, not N²; a dead node is still looked at by about `k` agents per
/// round).
pub(super) fn pick<'a>(
    owners: &'a BTreeSet<String>,
    me: &str,
    suspects: &Suspects,
    k: usize,
    rng: &mut fastrand::Rng,
) -> Vec<&'a str> {
    let candidates: Vec<&str> = owners
        .iter()
        .map(String::as_str)
        .filter(|n| *n != me && !suspects.contains(n))
        .collect();
    if candidates.len() <= k {
        return candidates;
    }
    let mut picked = Vec::with_capacity(k);
    let mut pool = candidates;
    for _ in 0..k {
        let i = rng.usize(..pool.len());
        picked.push(pool.swap_remove(i));
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn absent_for_the_grace_with_the_same_record_is_due() {
        let t0 = Instant::now();
        let mut s = Suspects::new(GRACE);
        s.observe("a", Seen::Absent { announced: 7 }, t0);
        s.observe("a", Seen::Absent { announced: 7 }, t0 + GRACE / 2);
        assert!(s.due(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(s.due(t0 + GRACE), vec![("a".to_string(), 7)]);
    }

    #[test]
    fn a_new_announcement_restarts_the_grace() {
        let t0 = Instant::now();
        let mut s = Suspects::new(GRACE);
        s.observe("a", Seen::Absent { announced: 7 }, t0);
        // The node took a new lease (record rewritten) and lost it again: absent both times,
        // but not for the whole grace.
        s.observe("a", Seen::Absent { announced: 9 }, t0 + GRACE / 2);
        assert!(s.due(t0 + GRACE).is_empty());
        assert_eq!(s.due(t0 + GRACE / 2 + GRACE), vec![("a".to_string(), 9)]);
    }

    #[test]
    fn alive_clears_and_owners_bound_the_suspects() {
        let t0 = Instant::now();
        let mut s = Suspects::new(GRACE);
        s.observe("a", Seen::Absent { announced: 0 }, t0);
        s.observe("b", Seen::Absent { announced: 3 }, t0);
        s.observe("a", Seen::Alive, t0 + GRACE / 2);
        assert_eq!(s.due(t0 + GRACE), vec![("b".to_string(), 3)]);
        s.retain_owners(&BTreeSet::new());
        assert_eq!(s.len(), 0);
        s.observe("c", Seen::Absent { announced: 1 }, t0);
        s.forget("c");
        assert!(s.due(t0 + GRACE * 2).is_empty());
    }

    #[test]
    fn picks_few_others_never_me_nor_suspects() {
        let owners: BTreeSet<String> = (0..100).map(|i| format!("n{i}")).collect();
        let mut s = Suspects::new(GRACE);
        s.observe("n1", Seen::Absent { announced: 0 }, Instant::now());
        let mut rng = fastrand::Rng::with_seed(5);
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let p = pick(&owners, "n0", &s, 2, &mut rng);
            assert_eq!(p.len(), 2);
            assert_ne!(p[0], p[1]);
            assert!(p.iter().all(|n| *n != "n0" && *n != "n1"));
            seen.extend(p.into_iter().map(str::to_string));
        }
        assert_eq!(seen.len(), 98, "every other node gets looked at");
        let two: BTreeSet<String> = ["n0", "n2"].iter().map(|n| n.to_string()).collect();
        assert_eq!(pick(&two, "n0", &s, 2, &mut rng), vec!["n2"]);
    }
}
