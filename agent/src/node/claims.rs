//! Prefixes from the datastore: claiming more (grow), giving wholly free ones back (shrink),
//! and keeping the pool and the datastore agreeing on which prefixes are ours.

use std::collections::{BTreeMap, HashSet};

use ipnetwork::IpNetwork;

use super::{now_ms, Area, Family, Node, NodeError};
use crate::datastore::{Datastore, DatastoreError, PrefixClaim};
use vpcnet_proto::naming;

/// Rounds of (fresh read, a few candidates) one grow tries before giving up for now.
const CLAIM_ROUNDS: u32 = 4;
/// Candidates the start-up claim tries beyond the prefixes it wants (lost races).
const START_SPARE: usize = 2;
/// How long after winning a claim a cached view may still not show it (the watch's delay;
/// under load seconds: issue 10's 1000-node cold start). Within it a reconcile reading the
/// cache takes the absence for lag — no fresh list, no second txn; a fresh read never does.
const VIEW_LAG: std::time::Duration = std::time::Duration::from_secs(10);

/// What one claim attempt came to ([`Node::try_claim`]).
enum Tried {
    /// Won, and in the pool.
    Won,
    /// Another node holds the prefix.
    Lost,
    /// Won, but the pool refuses the prefix (logged).
    Refused,
}

impl<D: Datastore> Node<D> {
    /// Claims up to `want` IPv4 prefixes from the datastore into the pool. Returns how many
    /// it got; an error when it got none.
    pub async fn grow(&self, want: u32) -> Result<u32, NodeError> {
        self.claim_prefixes(Family::V4, want, false).await
    }

    /// [`Node::grow`] of the pool of `fam`.
    pub async fn grow_family(&self, fam: Family, want: u32) -> Result<u32, NodeError> {
        self.claim_prefixes(fam, want, false).await
    }

    /// Our claim of `prefix`: it carries the node's address of each family, so peers route
    /// each family's prefixes via the node's address of that family.
    fn our_claim(&self, prefix: IpNetwork) -> PrefixClaim {
        PrefixClaim {
            prefix,
            node: self.name.clone(),
            node_ip: self.ip,
            node_ip6: self.ip6,
            claimed_at: now_ms(),
        }
    }

    /// A datastore failure while claiming: marks the node degraded; `got` prefixes claimed
    /// before it still count.
    fn datastore_failed(&self, e: DatastoreError, got: u32) -> Result<u32, NodeError> {
        self.set_degraded(Area::Datastore, Some(e.to_string()));
        if got > 0 {
            Ok(got)
        } else {
            Err(e.into())
        }
    }

    /// [`Node::grow`]; with `only_if_empty` (the ADD path) it claims nothing when an address
    /// has come free meanwhile (another ADD or the warm loop grew the pool while this one
    /// waited for the claim lock). The warm loop must not take that shortcut: it grows while
    /// addresses are still available (warm targets).
    pub(super) async fn claim_prefixes(
        &self,
        fam: Family,
        want: u32,
        only_if_empty: bool,
    ) -> Result<u32, NodeError> {
        let mut unanswered = self.claim_lock.lock().await;
        let per_round = usize::try_from(want).unwrap_or(1).saturating_mul(4).max(8);
        let mut got = 0;
        let mut lost = 0u32;
        // Invariant (issue 10): a lost race means "try another", never "exhausted". Each round
        // reads the claims (round 0: `list`, the datastore's cache where it has one, which may
        // lag; later rounds, after lost races: `list_fresh`) and tries candidates spread over
        // the VPC from a point derived from this node's name (so N nodes starting together
        // rarely pick the same prefix); "VPC exhausted" is reported only when a fresh read
        // (`list_fresh`, never a cache) shows no free prefix.
        for round in 0..CLAIM_ROUNDS {
            let mut fresh = false;
            let mut taken: HashSet<IpNetwork> = HashSet::new();
            let mut candidates = Vec::new();
            for read in 0..2 {
                // Round 0 may use the cached view; a later round follows a round that lost
                // every try, i.e. the view was stale: read afresh.
                let listed = if read == 0 && round == 0 {
                    self.datastore.list().await
                } else {
                    fresh = true;
                    self.datastore.list_fresh().await
                };
                let claims = match listed {
                    Ok(claims) => claims,
                    Err(e) => return self.datastore_failed(e, got),
                };
                taken = claims.iter().map(|c| c.prefix).collect();
                candidates = {
                    let st = self.state();
                    // Someone else may have grown the pool while we waited for the claim lock.
                    if round == 0 && only_if_empty && st.available(fam, now_ms()) > 0 {
                        return Ok(0);
                    }
                    let seed = if self.datastore.shared() {
                        naming::claim_seed(&self.name, round)
                    } else {
                        0
                    };
                    let mut list = st.claim_candidates(fam, &taken, seed, per_round);
                    // The prefix whose last claim got no answer first, unless the view shows
                    // another node's claim on it (then it is not ours: the claim was not
                    // written) or the pool already has it.
                    if let Some(p) = unanswered.take().filter(|p| {
                        Family::of(p) == fam
                            && !st.held(fam).contains(p)
                            && claims.iter().all(|c| c.prefix != *p || c.node == self.name)
                    }) {
                        list.retain(|x| *x != p);
                        list.insert(0, p);
                    }
                    list
                };
                if !candidates.is_empty() || got > 0 || fresh {
                    break;
                }
                // No free prefix in the (possibly cached) view: prove it with a fresh read
                // before calling the VPC exhausted.
            }
            if candidates.is_empty() {
                debug_assert!(fresh || got > 0);
                self.set_degraded(Area::Datastore, None);
                if got > 0 {
                    break;
                }
                let msg = self.exhausted_message(fam, &taken);
                self.set_waiting(None);
                self.set_degraded(Area::Pool, Some(msg.clone()));
                return Err(NodeError::VpcExhausted(msg));
            }
            for prefix in candidates {
                if got >= want {
                    break;
                }
                match self.try_claim(prefix, &mut unanswered).await {
                    Ok(Tried::Won) => got += 1,
                    Ok(Tried::Lost) => lost += 1,
                    Ok(Tried::Refused) => {}
                    Err(NodeError::Datastore(e)) => return self.datastore_failed(e, got),
                    Err(e) => return if got > 0 { Ok(got) } else { Err(e) },
                }
            }
            if got > 0 {
                break;
            }
        }
        self.set_degraded(Area::Datastore, None);
        if got == 0 {
            // Every try lost a race, yet the last read showed free prefixes: contention, not
            // exhaustion. Not degraded; "waiting for a prefix"; the caller retries (ADD: code
            // 11, try again; the warm loop: jittered back-off).
            self.set_waiting(Some(format!(
                "waiting for a prefix: lost {lost} claim races in {CLAIM_ROUNDS} rounds \
                 (other nodes took the candidates first; free prefixes remain); retrying"
            )));
            return Err(NodeError::ClaimRacesLost {
                lost,
                rounds: CLAIM_ROUNDS,
            });
        }
        self.set_degraded(Area::Pool, None);
        self.set_waiting(None);
        Ok(got)
    }

    /// One claim of `prefix` and, won, its entry into the pool. The caller holds the claim
    /// lock; `unanswered` is its slot. Errors: [`NodeError::Datastore`] (no answer: the prefix
    /// goes to the slot, to be tried first next time — a busy etcd may have written it) and
    /// [`NodeError::ClaimNotRecorded`] (claimed but not journalled: not ours to use; the next
    /// claims reconcile releases it, or the next start adopts it).
    async fn try_claim(
        &self,
        prefix: IpNetwork,
        unanswered: &mut Option<IpNetwork>,
    ) -> Result<Tried, NodeError> {
        let claim = self.our_claim(prefix);
        let started = std::time::Instant::now();
        let claimed = self.datastore.claim(&claim).await;
        crate::obs::metrics::get().claim_observed(started.elapsed(), &claimed);
        match claimed {
            Ok(true) => match self.state().add_prefix(prefix, now_ms()) {
                Ok(Ok(())) => {
                    self.won_now(prefix);
                    self.prefix_taken();
                    Ok(Tried::Won)
                }
                Ok(Err(e)) => {
                    tracing::error!(%prefix, error = %e, "claimed a prefix the pool refuses");
                    Ok(Tried::Refused)
                }
                Err(source) => Err(NodeError::ClaimNotRecorded { prefix, source }),
            },
            Ok(false) => Ok(Tried::Lost),
            Err(e) => {
                *unanswered = Some(prefix);
                Err(e.into())
            }
        }
    }

    /// The start-up claim (issue 10): for each family whose pool holds no prefix yet wants
    /// some (a new node, or one that gave all back), claims them *now*, while the start-up
    /// still waits for the claims view — instead of after the start-up reconcile, one full
    /// list later. N new nodes starting together used to claim only once each had its first
    /// full list of N claims (~2 s of a 400-node cold start here, docs/benchmarks.md).
    ///
    /// One round of a few candidates, from the view if it is in sync already (else none
    /// excluded: spread from the node's name over the VPC, lost races are rare and cost a
    /// txn each), never a list: a lost race or no answer leaves it to the warm loop, which
    /// starts once serving. A won claim is the same create-if-absent txn as always, so
    /// ownership is decided by the datastore exactly as on the claim path; it holds the claim
    /// lock, so the start-up reconcile (which adopts and releases) runs before or after it,
    /// never across it. Not for a datastore only this node uses (`shared() == false`).
    /// Returns how many prefixes it claimed.
    pub async fn claim_at_start(&self) -> u32 {
        if !self.datastore.shared() {
            return 0;
        }
        let mut unanswered = self.claim_lock.lock().await;
        let taken: HashSet<IpNetwork> = self
            .datastore
            .list_now()
            .unwrap_or_default()
            .iter()
            .map(|c| c.prefix)
            .collect();
        let mut got = 0;
        for fam in [Family::V4, Family::V6] {
            let (want, candidates) = {
                let st = self.state();
                let want = st.wants_first_prefixes(fam, now_ms());
                let seed = naming::claim_seed(&self.name, 0);
                let tries = usize::try_from(want)
                    .unwrap_or(1)
                    .saturating_add(START_SPARE);
                (want, st.claim_candidates(fam, &taken, seed, tries))
            };
            let mut won = 0;
            for prefix in candidates {
                if won >= want {
                    break;
                }
                match self.try_claim(prefix, &mut unanswered).await {
                    Ok(Tried::Won) => won += 1,
                    Ok(Tried::Lost | Tried::Refused) => {}
                    Err(e) => {
                        tracing::debug!(%prefix, "start-up claim: {e} (the warm loop goes on)");
                        break;
                    }
                }
            }
            got += won;
        }
        got
    }

    /// Notes that this process just won the claim of `prefix`: until a view of the datastore
    /// shows it (or [`VIEW_LAG`] passed), a view without it is lag, not a lapsed claim.
    pub(super) fn won_now(&self, prefix: IpNetwork) {
        let now = std::time::Instant::now();
        let mut won = super::lock(&self.won);
        won.retain(|_, at| now.duration_since(*at) < VIEW_LAG);
        won.insert(prefix, now);
    }

    /// Prefixes whose claim this process won less than [`VIEW_LAG`] ago and that no view has
    /// shown as ours yet. One that `listed_ours` (a view) shows is forgotten: once seen, its
    /// absence from a later view is a deletion, not lag.
    fn won_unseen(&self, listed_ours: &HashSet<IpNetwork>) -> HashSet<IpNetwork> {
        let now = std::time::Instant::now();
        let mut won = super::lock(&self.won);
        won.retain(|p, at| now.duration_since(*at) < VIEW_LAG && !listed_ours.contains(p));
        won.keys().copied().collect()
    }

    /// "VPC exhausted", with the figures that prove it (a fresh read, `taken`, of the claims
    /// of both families; those of `fam` count).
    fn exhausted_message(&self, fam: Family, taken: &HashSet<IpNetwork>) -> String {
        let taken_by_nodes = taken.iter().filter(|p| Family::of(p) == fam).count();
        let (len, vpc, count, held) = self.state().vpc_figures(fam);
        let v6 = if fam == Family::V6 { "IPv6 " } else { "" };
        format!(
            "VPC exhausted: every {v6}/{len} prefix of {} is claimed (--vpc-cidr): {count} \
             prefixes exist, {taken_by_nodes} are claimed by nodes ({held} by this one)",
            vpc.join(", "),
        )
    }

    /// A claimed prefix is in the pool now: the peers loop is told (its `unreachable` route),
    /// and the first one marks the start-up phase.
    fn prefix_taken(&self) {
        self.prefixes_changed();
        crate::obs::process::startup_phase("claimed");
    }

    /// Gives a wholly free prefix back: out of the pool first (durably), then the datastore.
    pub async fn shrink(&self, prefix: IpNetwork) -> Result<(), NodeError> {
        let _g = self.claim_lock.lock().await;
        self.state().remove_prefix(prefix, now_ms())??;
        self.prefixes_changed();
        Ok(self.datastore.release(prefix, &self.name).await?)
    }

    /// Makes the pool and the datastore agree on which prefixes are ours; returns the claims
    /// it listed (every node's). Runs at start (`adopt`), waiting for the claim lock; the
    /// peers loop uses [`Node::reconcile_claims_nowait`].
    ///
    /// * a prefix the pool holds and the datastore lists as ours: fine;
    /// * held, but listed as another node's: conflict — dropped from the pool if wholly free,
    ///   otherwise reported as degraded (`claims`) and kept (pods use it);
    /// * held, not listed (the claim is gone, e.g. etcd's sweep took it after this node showed
    ///   no liveness for the grace period, or an operator deleted it):
    ///   claimed again, create-if-absent; losing that race is the conflict above next round;
    /// * listed as ours, not held: at start (`adopt`) a crash fell between claim and journal,
    ///   so it is adopted; likewise the prefix whose last claim got no answer (the claim lock's
    ///   slot: a busy etcd wrote it after all — the answer would have said "won"); otherwise a
    ///   release after shrink failed, so it is released again.
    ///
    /// Holds the claim lock so it never interleaves with grow or shrink. Acts only on a fresh
    /// read (`list_fresh`) whenever the (possibly cached) `list` disagrees with the pool.
    pub async fn reconcile_claims(&self, adopt: bool) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let mut unanswered = self.claim_lock.lock().await;
        let (claims, lagging) = self.read_claims().await?;
        self.settle_claims(&claims, &lagging, adopt, &mut unanswered)
            .await?;
        Ok(claims)
    }

    /// [`Node::reconcile_claims`] for the peers loop, which must never make the claim path
    /// wait (issue 10): the claims are read (from the cache; afresh only if it disagrees with
    /// the pool) *without* the claim lock; then, only if the lock is free and the pool still
    /// holds what it held before the read, the disagreements are acted on. Otherwise (a grow
    /// or shrink ran meanwhile: the read may predate it) nothing is acted on this round; the
    /// next round (the long timer) tries again. In the steady state (cache and pool agree)
    /// this sends no request and holds the lock for no I/O.
    pub async fn reconcile_claims_nowait(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let before: HashSet<_> = self.state().held_all().into_iter().collect();
        let (claims, lagging) = self.read_claims().await?;
        let Ok(mut unanswered) = self.claim_lock.try_lock() else {
            return Ok(claims);
        };
        let now: HashSet<_> = self.state().held_all().into_iter().collect();
        if now == before {
            self.settle_claims(&claims, &lagging, false, &mut unanswered)
                .await?;
        }
        Ok(claims)
    }

    /// Every node's claims: the (possibly cached) `list`, or a fresh read where it disagrees
    /// with the pool about our own prefixes in a way the view's lag does not explain. With
    /// them, the prefixes the view lags on (held, won lately, not listed yet; empty after a
    /// fresh read), which the reconcile leaves alone.
    async fn read_claims(&self) -> Result<(Vec<PrefixClaim>, HashSet<IpNetwork>), DatastoreError> {
        let claims = self.datastore.list().await?;
        // `list` may answer from a watch-fed cache a moment behind (our own claim or release
        // not seen yet, another node's release not seen yet): whenever it disagrees with the
        // pool, act only on a fresh read — unless the only disagreement is claims this
        // process won moments ago (issue 10: at 1000 nodes the watch lags seconds, and each
        // such disagreement was a full list of 1000 claims). In agreement nothing is asked.
        let listed_ours: HashSet<_> = claims
            .iter()
            .filter(|c| c.node == self.name)
            .map(|c| c.prefix)
            .collect();
        let pool_held: HashSet<_> = self.state().held_all().into_iter().collect();
        let won = self.won_unseen(&listed_ours);
        let lagging: HashSet<IpNetwork> = pool_held
            .difference(&listed_ours)
            .filter(|p| won.contains(*p) && claims.iter().all(|c| c.prefix != **p))
            .copied()
            .collect();
        let unexplained = listed_ours
            .symmetric_difference(&pool_held)
            .any(|p| !lagging.contains(p));
        if unexplained {
            return Ok((self.datastore.list_fresh().await?, HashSet::new()));
        }
        Ok((claims, lagging))
    }

    /// Acts on the disagreements between `claims` and the pool (see
    /// [`Node::reconcile_claims`]). The caller holds the claim lock; `unanswered` is its slot.
    async fn settle_claims(
        &self,
        claims: &[PrefixClaim],
        lagging: &HashSet<IpNetwork>,
        adopt: bool,
        unanswered: &mut Option<IpNetwork>,
    ) -> Result<(), DatastoreError> {
        let ours: HashSet<_> = claims
            .iter()
            .filter(|c| c.node == self.name)
            .map(|c| c.prefix)
            .collect();
        let others: BTreeMap<_, _> = claims
            .iter()
            .filter(|c| c.node != self.name)
            .map(|c| (c.prefix, c.node.clone()))
            .collect();
        let held: Vec<_> = self.state().held_all();
        let mut conflicts = Vec::new();
        for p in &held {
            if ours.contains(p) || lagging.contains(p) {
                continue;
            }
            let owner = match others.get(p) {
                Some(owner) => Some(owner.clone()),
                None => match self.datastore.claim(&self.our_claim(*p)).await? {
                    true => {
                        tracing::warn!(prefix = %p, "re-claimed a prefix whose claim had lapsed");
                        None
                    }
                    false => Some("another node".to_string()),
                },
            };
            if let Some(owner) = owner {
                let dropped = matches!(self.state().remove_prefix(*p, now_ms()), Ok(Ok(())));
                if dropped {
                    tracing::warn!(prefix = %p, %owner, "dropped a prefix from the pool: claimed by another node");
                } else {
                    conflicts.push(format!("prefix {p} is in use here but claimed by {owner}"));
                }
            }
        }
        for p in ours {
            if held.contains(&p) {
                continue;
            }
            // Issue 10: released, the claim path claimed it again a moment later, and every
            // node withdrew its route and installed it again (40 prefixes in a cold start of
            // 1 000 nodes, each two more txns for an overloaded etcd).
            let late_write = *unanswered == Some(p);
            // Outside today's --vpc-cidr or misaligned (or not recordable): give it back.
            let adopted =
                (adopt || late_write) && matches!(self.state().add_prefix(p, now_ms()), Ok(Ok(())));
            if late_write {
                *unanswered = None;
            }
            if adopted && late_write {
                tracing::info!(prefix = %p, "took the prefix whose claim got no answer but was written");
                self.prefix_taken();
            }
            if !adopted {
                self.datastore.release(p, &self.name).await?;
            }
        }
        self.set_degraded(
            Area::Claims,
            (!conflicts.is_empty()).then(|| conflicts.join("; ")),
        );
        Ok(())
    }
}
