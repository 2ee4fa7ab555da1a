//! The agent's one retry back-off: exponential growth with *decorrelated jitter*.
//!
//! Every retry loop of the agent (the etcd lease keep-alive and watch, the Kubernetes watch,
//! the warm-pool loop) waits [`Backoff::next_delay`] after a failure and calls
//! [`Backoff::reset`] after a success. Each delay is drawn uniformly from
//! `[min, min(max, previous delay × factor)]` (the first one from `[min, min × factor]`):
//!
//! - **bounded**: never below `min`, so a retry loop never spins, and never above `max`;
//! - **growing**: the range's top grows by `factor` per failure up to `max` (so does the mean);
//! - **jittered**: nodes that failed at the same instant (an etcd or API-server outage hits
//!   every node at once) draw different delays, and because each range depends on the
//!   node's own previous draw their schedules drift further apart with every retry instead of
//!   retrying in lockstep.
//!
//! Why decorrelated rather than full jitter (`uniform(0, min × factorⁿ)`): full jitter may
//! draw a delay of ~0, i.e. retry at once, which hammers a server that is just coming back
//! and makes "back-off" untestable (a retry right after a failure is indistinguishable from
//! none); decorrelated jitter spreads the load about as well (AWS Architecture Blog,
//! "Exponential Backoff And Jitter") while keeping `min` a real floor. The range is capped
//! *before* the draw, so delays at the cap are spread over `[min, max]` too instead of all
//! landing on `max` (which would put nodes back in step after a long outage).
//!
//! Randomness: a small PRNG ([`fastrand::Rng`]) seeded per instance from the process's
//! OS-seeded hasher keys, the pid and the clock — different on every node and every process;
//! unit tests pass a fixed seed ([`Backoff::with_seed`]) and get a reproducible sequence.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// The default growth factor of the range a delay is drawn from (AWS's choice for
/// decorrelated jitter).
pub const DEFAULT_FACTOR: u32 = 3;

/// Retry delays with decorrelated jitter; see the module docs.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: u32,
    /// The last delay handed out; `min` after a reset.
    last: Duration,
    rng: fastrand::Rng,
}

/// A seed that differs between processes and between instances in one process.
pub(crate) fn random_seed() -> u64 {
    // `RandomState::new()` is keyed from the OS's randomness once per thread and stepped on
    // every call, so even two instances created at the same instant get different seeds.
    RandomState::new().hash_one((std::process::id(), Instant::now()))
}

impl Backoff {
    /// Delays between `min` and `max` (`max` is raised to `min` if below it), growing by
    /// [`DEFAULT_FACTOR`], from a random seed.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            factor: DEFAULT_FACTOR,
            last: min,
            rng: fastrand::Rng::with_seed(random_seed()),
        }
    }

    /// Grows the range by `factor` per failure instead (at least 2: a factor of 1 would
    /// never grow).
    #[must_use]
    pub fn with_factor(mut self, factor: u32) -> Backoff {
        self.factor = factor.max(2);
        self
    }

    /// Draws from a PRNG seeded with `seed`: the same seed gives the same delays (tests).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Backoff {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The top of the range the next delay is drawn from.
    pub fn ceiling(&self) -> Duration {
        self.last.saturating_mul(self.factor).min(self.max)
    }

    /// The delay to wait before the next retry (after a failure).
    pub fn next_delay(&mut self) -> Duration {
        let lo = nanos(self.min);
        let hi = nanos(self.ceiling()).max(lo);
        let d = Duration::from_nanos(self.rng.u64(lo..=hi));
        self.last = d;
        d
    }

    /// The delay after a failure that says the server is behind by at least `floor` (see
    /// `datastore::common::BUSY_RETRY_FLOOR`): drawn from `[floor, max(ceiling, 2 × floor)]`
    /// — jittered like every delay, and above `max` if the floor is (a busy server's lag is
    /// not this loop's cap). Growth goes on from it.
    pub fn next_delay_at_least(&mut self, floor: Duration) -> Duration {
        let lo = nanos(self.min.max(floor));
        let hi = nanos(self.ceiling()).max(lo.saturating_mul(2));
        let d = Duration::from_nanos(self.rng.u64(lo..=hi));
        self.last = d;
        d
    }

    /// Back to the shortest delays (after a success).
    pub fn reset(&mut self) {
        self.last = self.min;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    fn seeded(seed: u64) -> Backoff {
        Backoff::new(MIN, MAX).with_seed(seed)
    }

    /// The instants (since a common failure at 0) of a node's first `n` retries.
    fn schedule(b: &mut Backoff, n: usize) -> Vec<Duration> {
        let mut t = Duration::ZERO;
        (0..n)
            .map(|_| {
                t += b.next_delay();
                t
            })
            .collect()
    }

    #[test]
    fn delays_stay_within_min_and_the_growing_ceiling() {
        for seed in 0..200 {
            let mut b = seeded(seed);
            let mut last = MIN;
            for _ in 0..50 {
                let ceiling = b.ceiling();
                assert_eq!(ceiling, (last * DEFAULT_FACTOR).min(MAX));
                let d = b.next_delay();
                assert!(d >= MIN, "seed {seed}: {d:?} below the minimum");
                assert!(
                    d <= ceiling,
                    "seed {seed}: {d:?} above the ceiling {ceiling:?}"
                );
                assert!(d <= MAX, "seed {seed}: {d:?} above the maximum");
                last = d;
            }
        }
    }

    #[test]
    fn first_delays_are_short_and_grow_to_the_maximum() {
        let mut b = seeded(7);
        // The first retry comes soon: within [min, min × factor].
        let first = b.next_delay();
        assert!(first >= MIN && first <= MIN * DEFAULT_FACTOR, "{first:?}");
        // Under a long outage the delays reach the cap (and the range's top stays there).
        let delays: Vec<Duration> = (0..60).map(|_| b.next_delay()).collect();
        let longest = delays.iter().max().copied().unwrap_or_default();
        assert!(
            longest >= MAX * 9 / 10,
            "never got near the cap: {longest:?}"
        );
        // The mean over a long outage is well above the first delays: it really backs off.
        let mean = delays.iter().sum::<Duration>() / 60;
        assert!(mean >= Duration::from_secs(2), "mean {mean:?}");
        // Across nodes, the range's top reaches the cap after a few retries.
        for seed in 0..100 {
            let mut b = seeded(seed);
            let hit_cap = (0..40).any(|_| {
                b.next_delay();
                b.ceiling() == MAX
            });
            assert!(hit_cap, "seed {seed}: the ceiling never reached the cap");
        }
    }

    /// After a busy answer the delay is never below the floor (even above the cap), spread
    /// over `[floor, 2 × floor]` from a short range, and growth goes on from there.
    #[test]
    fn a_floor_raises_the_delay_and_keeps_the_jitter() {
        let floor = Duration::from_secs(5);
        let small = Backoff::new(MIN, Duration::from_secs(2));
        let mut seen = Vec::new();
        for seed in 0..200 {
            let mut b = Backoff::new(small.min(), small.max()).with_seed(seed);
            let d = b.next_delay_at_least(floor);
            assert!(d >= floor && d <= floor * 2, "seed {seed}: {d:?}");
            seen.push(d);
            // Back to plain delays: within the cap again, growth from the last delay.
            let next = b.next_delay();
            assert!(next >= MIN && next <= small.max(), "seed {seed}: {next:?}");
        }
        let spread = seen.iter().max().copied().unwrap_or_default()
            - seen.iter().min().copied().unwrap_or_default();
        assert!(spread >= floor / 2, "no jitter: spread {spread:?}");
        // A wide range (ceiling above 2 × floor) keeps its own top.
        let mut b = seeded(1);
        while b.ceiling() < MAX {
            b.next_delay();
        }
        for _ in 0..50 {
            let d = b.next_delay_at_least(Duration::from_secs(1));
            assert!(d >= Duration::from_secs(1) && d <= MAX, "{d:?}");
        }
    }

    #[test]
    fn reset_goes_back_to_the_shortest_delays() {
        let mut b = seeded(3);
        for _ in 0..30 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), MIN * DEFAULT_FACTOR);
        let d = b.next_delay();
        assert!(d >= MIN && d <= MIN * DEFAULT_FACTOR, "{d:?}");
    }

    #[test]
    fn max_below_min_and_tiny_factor_are_raised() {
        let mut b = Backoff::new(MIN, Duration::from_millis(50))
            .with_factor(1)
            .with_seed(1);
        assert_eq!(b.max(), MIN);
        assert_eq!(b.next_delay(), MIN);
        let b = Backoff::new(MIN, MAX).with_factor(1);
        assert_eq!(b.ceiling(), MIN * 2);
    }

    #[test]
    fn same_seed_same_delays_and_fresh_instances_differ() {
        let (mut a, mut b) = (seeded(42), seeded(42));
        assert_eq!(schedule(&mut a, 20), schedule(&mut b, 20));
        // Unseeded instances (as the agent makes them) draw different delays, even when
        // created back to back in one process.
        let mut c = Backoff::new(MIN, MAX);
        let mut d = Backoff::new(MIN, MAX);
        assert_ne!(schedule(&mut c, 5), schedule(&mut d, 5));
    }

    /// An outage ends for 100 nodes at the same instant: their retries spread out instead of
    /// arriving together (without jitter all 100 would retry at the same instants).
    #[test]
    fn nodes_with_different_seeds_do_not_retry_in_lockstep() {
        const NODES: u64 = 100;
        const RETRIES: usize = 8;
        let schedules: Vec<Vec<Duration>> = (0..NODES)
            .map(|seed| schedule(&mut seeded(seed * 7919 + 1), RETRIES))
            .collect();
        // Without jitter all 100 would retry at the same instants (a crowd of 100).
        let mut expected_spread = MIN * 3 / 2;
        for k in 0..RETRIES {
            let mut at: Vec<Duration> = schedules.iter().map(|s| s[k]).collect();
            at.sort();
            // The k-th retries are spread over a window that widens with every retry...
            let spread = at[at.len() - 1] - at[0];
            assert!(
                spread >= expected_spread,
                "retry {k}: spread only {spread:?}, expected {expected_spread:?}"
            );
            expected_spread = (expected_spread * 3).min(MAX);
            // ...and no 50 ms window holds more than a fifth of the nodes (a tenth from the
            // third retry on).
            let crowd = (0..at.len())
                .map(|i| {
                    at[i..]
                        .iter()
                        .take_while(|t| **t - at[i] < Duration::from_millis(50))
                        .count()
                })
                .max()
                .unwrap_or(0);
            let limit = if k < 2 { 20 } else { 10 };
            assert!(crowd <= limit, "retry {k}: {crowd} nodes within 50 ms");
        }
        // Pairwise: two nodes hardly ever retry within 10 ms of each other.
        let mut close = 0;
        let mut pairs = 0;
        for (i, a) in schedules.iter().enumerate() {
            for b in &schedules[i + 1..] {
                for k in 0..RETRIES {
                    pairs += 1;
                    if a[k].abs_diff(b[k]) < Duration::from_millis(10) {
                        close += 1;
                    }
                }
            }
        }
        assert!(
            close * 100 < pairs * 2,
            "{close} of {pairs} retries within 10 ms"
        );
    }
}
