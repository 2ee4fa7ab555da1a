//! The veth reaper: deletes the host veths of DEL'd attachments, and flushes their addresses'
//! conntrack entries, in the background, at a moment when no ADD pays for it.
//!
//! Deleting veths costs the kernel ~20–25 ms under rtnl_lock whether the batch holds one veth
//! or twenty (the cost is the unregister's RCU grace periods, paid once per batch; measured on
//! kernel 6.18). Every ADD needs rtnl_lock, so an ADD that arrives during a delete waits for
//! it: that was vpcnet's ADD p99 (issue 14). Batches cannot be made shorter, only better
//! placed, so the reaper gathers veths (marking each with [`REAP_GROUP`], by ifindex, so a
//! re-created veth of the same name is never hit) and deletes the group only when the node is
//! quiet: no CNI request for [`QUIET`] and no ADD in flight (an in-flight lock held, see
//! [`vpcnet_proto::inflight`]). Under churn that never goes quiet, a veth waits at most
//! [`MAX_DEFER`]; then the group is deleted at the first moment no ADD is in flight, and after
//! [`HARD_DEFER`] at once. Most veths never get that far on a real node: the runtime deletes
//! the pod's namespace right after DEL, and that takes the veth with it.
//!
//! The released addresses' conntrack flushes ride in the same batches ([`Reap::Conntrack`]):
//! one walk of the conntrack table per batch instead of one per DEL (see [`run`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vpcnet_netlink::{conntrack, link};

/// Link group that marks host veths waiting to be deleted ("vpcd"), shared with the plugin's
/// retired veths ([`vpcnet_proto::naming::REAP_GROUP`]).
pub const REAP_GROUP: u32 = vpcnet_proto::naming::REAP_GROUP;
/// A node this long without a CNI request is quiet: the next ADD is unlikely to come while a
/// batch is being deleted.
pub const QUIET: Duration = Duration::from_millis(150);
/// Past this age the oldest marked veth is deleted at the first moment no ADD is in flight,
/// quiet or not.
pub const MAX_DEFER: Duration = Duration::from_secs(2);
/// Past this age it is deleted whatever is in flight.
pub const HARD_DEFER: Duration = Duration::from_secs(5);
/// How often the reaper looks again while it waits.
const POLL: Duration = Duration::from_millis(20);

/// When the last CNI request (Assign, Release) came.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_us: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_us: AtomicU64::new(0),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_us.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Why a batch was deleted when it was (for the log and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Quiet,
    NoAddInFlight,
    Forced,
}

/// When to delete a batch whose oldest veth waited `age`, given how long the node has been
/// without requests and whether an ADD is in flight. `None`: not yet.
pub fn moment(age: Duration, idle: Duration, add_in_flight: bool) -> Option<Moment> {
    if age >= HARD_DEFER {
        Some(Moment::Forced)
    } else if add_in_flight {
        None
    } else if idle >= QUIET {
        Some(Moment::Quiet)
    } else if age >= MAX_DEFER {
        Some(Moment::NoAddInFlight)
    } else {
        None
    }
}

/// What the reaper is sent by a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// A host veth to delete, by ifindex (so a re-created veth of the same name is never hit).
    Veth(u32),
    /// A released address whose conntrack entries are to be flushed.
    Conntrack(IpAddr),
}

/// Runs until the channel closes: marks every veth sent (by ifindex), gathers every address
/// sent, and, at the moment [`moment`] picks for the oldest of them, deletes the marked group
/// and then flushes the gathered addresses' conntrack entries in one walk of the table
/// ([`conntrack::flush_addresses`]).
///
/// Why the flush waits too (issue 14): a conntrack dump walks every bucket of the kernel's
/// table however empty it is (262 144 on a 23 GB node), ~5–10 ms of CPU per walk. One per
/// DEL, right after it, ran beside the next ADDs and cost each of them several ms under
/// churn (on 2 CPUs: the ADD's wait for a CPU, and the expedited RCU grace periods of its
/// veth creation, which must interrupt a busy CPU where an idle one is skipped). Batched and
/// placed like the veth deletion, a node under constant churn pays one walk per
/// [`MAX_DEFER`], not one per pod.
///
/// **Invariant kept** (docs/reliability.md, stale conntrack entries): every entry of a
/// released address is gone before the address can be handed out again. The flush runs at
/// most `flush_within` after the release: the caller passes well under the address cooldown
/// (`--ip-cooldown`; an address released as unused never carried a packet). And since the
/// group is deleted first, no veth of a flushed address is left to make new entries. (With a
/// cooldown under 2 × [`HARD_DEFER`], `flush_within` can come before the veths' moment: the
/// batch, veths included, then goes at `flush_within` whatever is in flight.)
pub async fn run(
    net: rtnetlink::Handle,
    mut rx: mpsc::UnboundedReceiver<Reap>,
    activity: Arc<Activity>,
    inflight_dir: PathBuf,
    flush_within: Duration,
) {
    let mark = |index: u32| {
        let net = net.clone();
        async move {
            if let Err(e) = link::set_group(&net, index, REAP_GROUP).await {
                if !e.is_not_found() {
                    tracing::warn!(index, "marking a veth for deletion: {e}");
                }
            }
        }
    };
    while let Some(first) = rx.recv().await {
        let oldest = Instant::now();
        let mut veths = 0usize;
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut next = Some(first);
        let when = loop {
            // Marks are cheap (one short rtnl request each): take what came.
            let mut closed = false;
            loop {
                match next.take() {
                    Some(Reap::Veth(i)) => {
                        veths += 1;
                        mark(i).await;
                    }
                    Some(Reap::Conntrack(ip)) if !addrs.contains(&ip) => addrs.push(ip),
                    Some(Reap::Conntrack(_)) | None => {}
                }
                match rx.try_recv() {
                    Ok(r) => next = Some(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let age = oldest.elapsed();
            let when = moment(
                age,
                activity.idle_for(),
                vpcnet_proto::inflight::any_in_flight(&inflight_dir),
            );
            let flush_due = !addrs.is_empty() && age >= flush_within;
            if when.is_some() || flush_due || closed {
                break when;
            }
            tokio::time::sleep(POLL).await;
        };
        if veths > 0 {
            let waited = oldest.elapsed();
            let t0 = Instant::now();
            match link::delete_group(&net, REAP_GROUP).await {
                // When each batch went and what it cost (rtnl_lock is held that long): what
                // an ADD that came meanwhile waited for.
                Ok(()) => tracing::debug!(
                    veths,
                    moment = ?when,
                    waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    took_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "deleted a batch of marked veths"
                ),
                Err(e) => tracing::warn!("deleting marked veths: {e}"),
            }
        }
        if !addrs.is_empty() {
            flush(addrs).await;
        }
    }
}

/// One walk of the conntrack table for all of `addrs`, on the blocking pool (the socket
/// is synchronous), in the agent's namespace. Also run once at start-up, before the agent
/// serves, for every address released and not reused since ([`vpcnet_pool::PoolOf::released`]):
/// a flush this loop had queued when the previous run crashed is lost with it.
pub async fn flush(addrs: Vec<IpAddr>) {
    if addrs.is_empty() {
        return;
    }
    let mut list = addrs
        .iter()
        .take(8)
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if addrs.len() > 8 {
        list.push_str(&format!(" and {} more", addrs.len() - 8));
    }
    let r = tokio::task::spawn_blocking(move || conntrack::flush_addresses(&addrs)).await;
    match r {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(entries = n, "flushed {n} conntrack entries of {list}"),
        Ok(Err(e)) => tracing::warn!(error = %e, addresses = %list, "flushing conntrack entries"),
        Err(e) => tracing::warn!(error = %e, addresses = %list, "conntrack flush task"),
    }
}

/// How long after a release its conntrack flush may wait: half the address cooldown (the
/// flush must be done before the address is handed out again), at most [`HARD_DEFER`].
pub fn flush_within(cooldown: Duration) -> Duration {
    (cooldown / 2).min(HARD_DEFER)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn waits_for_quiet_and_no_add_in_flight() {
        assert_eq!(moment(MS(10), MS(5), false), None, "busy node");
        assert_eq!(moment(MS(10), MS(500), true), None, "an ADD in flight");
        assert_eq!(moment(MS(10), QUIET, false), Some(Moment::Quiet));
    }

    #[test]
    fn bounded_under_constant_churn() {
        assert_eq!(moment(MAX_DEFER, MS(1), true), None);
        assert_eq!(moment(MAX_DEFER, MS(1), false), Some(Moment::NoAddInFlight));
        assert_eq!(moment(HARD_DEFER, MS(0), true), Some(Moment::Forced));
    }

    #[test]
    fn conntrack_flush_waits_at_most_half_the_cooldown() {
        assert_eq!(flush_within(Duration::from_secs(30)), HARD_DEFER);
        assert_eq!(flush_within(Duration::from_secs(3)), MS(1500));
        assert_eq!(flush_within(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn activity_measures_idle_time() {
        let a = Activity::default();
        a.touch();
        assert!(a.idle_for() < Duration::from_secs(1));
    }
}
