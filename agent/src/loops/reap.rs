//! The veth reaper: deletes the host veths of DEL'd attachments in the background, at a moment
//! when no ADD pays for it.
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vpcnet_netlink::link;

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

/// Runs until the channel closes: marks every veth sent (by ifindex) and deletes the marked
/// group at the moment [`moment`] picks.
pub async fn run(
    net: rtnetlink::Handle,
    mut rx: mpsc::UnboundedReceiver<u32>,
    activity: Arc<Activity>,
    inflight_dir: PathBuf,
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
        mark(first).await;
        loop {
            // Marks are cheap (one short rtnl request each): take what came.
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(i) => mark(i).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let when = moment(
                oldest.elapsed(),
                activity.idle_for(),
                vpcnet_proto::inflight::any_in_flight(&inflight_dir),
            );
            if when.is_some() || closed {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if let Err(e) = link::delete_group(&net, REAP_GROUP).await {
            tracing::warn!("deleting marked veths: {e}");
        }
    }
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
    fn activity_measures_idle_time() {
        let a = Activity::default();
        a.touch();
        assert!(a.idle_for() < Duration::from_secs(1));
    }
}
