//! The warm-pool policy: when to claim or release prefixes. Pure function of (state, now).

use super::family::host_mask;
use super::{Family, GrowReason, Millis, PoolOf, PoolPlanOf};

/// `ceil(a / b)` for `b > 0`.
fn div_ceil(a: u128, b: u128) -> u128 {
    a.div_ceil(b.max(1))
}

fn clamp_u32(n: u128) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The counts the policy works on, unsaturated ([`super::PoolStats`] saturates at
/// `u32::MAX`, which a single IPv6 /80 exceeds: subtracting a saturated prefix size from a
/// saturated total would make the shrink arithmetic believe the pool empty).
#[derive(Clone, Copy, Debug)]
struct Wide {
    total: u128,
    cooling: u128,
    available: u128,
    free_prefixes: u128,
}

impl<F: Family> PoolOf<F> {
    /// Addresses in one prefix of the configured length.
    fn prefix_size(&self) -> u128 {
        host_mask::<F>(self.cfg.prefix_len).saturating_add(1)
    }

    fn wide_stats(&self, now: Millis) -> Wide {
        let mut w = Wide {
            total: 0,
            cooling: 0,
            available: 0,
            free_prefixes: 0,
        };
        for p in self.prefixes.values() {
            let c = self.counts(p, now);
            w.total = w.total.saturating_add(c.usable());
            w.cooling = w.cooling.saturating_add(c.cooling);
            w.available = w.available.saturating_add(c.free);
            w.free_prefixes += u128::from(c.wholly_free());
        }
        w
    }

    /// Prefixes needed to satisfy every target at once given `s`, capped by what max-pods
    /// needs (not by the VPC's room). `None` when no target is violated or max-pods is met.
    fn grow_need(&self, s: &Wide) -> Option<(u128, GrowReason)> {
        let cfg = &self.cfg;
        let size = self.prefix_size();
        let (avail, total) = (s.available, s.total);
        let wants = [
            (
                GrowReason::WarmIpTarget,
                div_ceil(u128::from(cfg.warm_ip_target).saturating_sub(avail), size),
            ),
            (
                GrowReason::MinimumIpTarget,
                div_ceil(
                    u128::from(cfg.minimum_ip_target).saturating_sub(total),
                    size,
                ),
            ),
            (
                GrowReason::WarmPrefixTarget,
                u128::from(cfg.warm_prefix_target).saturating_sub(s.free_prefixes),
            ),
            (GrowReason::Empty, u128::from(avail == 0)),
        ];
        let mut best = (0, GrowReason::Empty);
        for (reason, n) in wants {
            if n > best.0 {
                best = (n, reason);
            }
        }
        // Addresses that are or will soon be usable for pods; max-pods needs no more.
        let capacity = total.saturating_sub(s.cooling);
        let headroom = u128::from(cfg.max_pods).saturating_sub(capacity);
        let n = best.0.min(div_ceil(headroom, size));
        (n > 0).then_some((n, best.1))
    }

    /// Grow when `available < warm_ip_target`, `total < minimum_ip_target`, wholly-free
    /// prefixes `< warm_prefix_target`, or `available == 0` — never beyond what `max_pods`
    /// needs (none once `total - cooling >= max_pods`) nor beyond the VPC's unheld prefixes.
    /// `prefixes` satisfies all targets at once (assuming whole new prefixes are usable).
    ///
    /// Otherwise shrink: wholly-free prefixes held at least `min_prefix_age_ms`, youngest
    /// (then highest) first, each only if releasing it (with those before it) would not make
    /// the pool want to grow again. Otherwise steady.
    pub fn plan(&self, now: Millis) -> PoolPlanOf<F> {
        let s = self.wide_stats(now);
        if let Some((n, reason)) = self.grow_need(&s) {
            let room = self.unheld_prefixes().take(clamp_u32(n) as usize).count();
            let prefixes = clamp_u32(n).min(u32::try_from(room).unwrap_or(u32::MAX));
            if prefixes > 0 {
                return PoolPlanOf::Grow { prefixes, reason };
            }
            // Capped by the VPC: releasing anything would only make it worse.
            return PoolPlanOf::Steady;
        }

        let mut candidates: Vec<(Millis, F::Net, u128)> = self
            .prefixes
            .values()
            .filter(|p| now.saturating_sub(p.claimed_at) >= self.cfg.min_prefix_age_ms)
            .filter_map(|p| {
                let c = self.counts(p, now);
                c.wholly_free().then_some((p.claimed_at, p.net, c.usable()))
            })
            .collect();
        candidates.sort_unstable_by_key(|&(at, net, _)| std::cmp::Reverse((at, net)));

        let mut after = s;
        let mut release = Vec::new();
        for (_, net, usable) in candidates {
            let next = Wide {
                total: after.total.saturating_sub(usable),
                available: after.available.saturating_sub(usable),
                free_prefixes: after.free_prefixes.saturating_sub(1),
                ..after
            };
            if self.grow_need(&next).is_none() {
                after = next;
                release.push(net);
            }
        }
        if release.is_empty() {
            PoolPlanOf::Steady
        } else {
            PoolPlanOf::Shrink { prefixes: release }
        }
    }
}
