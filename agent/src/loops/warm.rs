//! The warm-pool loop: re-plans after every change, on a timer, and when cooling addresses
//! come free; grows by claiming prefixes and shrinks by giving wholly free ones back. Cluster
//! calls happen here, in the background, never on the ADD path (unless the pool is empty).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::datastore::{common, Datastore};
use crate::node::{now_ms, Family, Node, NodeError};
use ipnetwork::IpNetwork;
use vpcnet_pool::{PoolPlan, PoolPlan6};

/// A plan of either family's pool.
enum Plan {
    Steady,
    Grow(u32),
    Shrink(Vec<IpNetwork>),
}

fn plan4(p: PoolPlan) -> Plan {
    match p {
        PoolPlan::Steady => Plan::Steady,
        PoolPlan::Grow { prefixes, .. } => Plan::Grow(prefixes),
        PoolPlan::Shrink { prefixes } => {
            Plan::Shrink(prefixes.into_iter().map(IpNetwork::V4).collect())
        }
    }
}

/// The IPv6 pool's plan (policy `pool_config6`: no warm targets, so it claims one prefix,
/// another only when that one has no free address, and gives back a wholly free one only
/// when it holds another with free addresses; docs/dual-stack.md).
fn plan6(p: PoolPlan6) -> Plan {
    match p {
        PoolPlan6::Steady => Plan::Steady,
        PoolPlan6::Grow { prefixes, .. } => Plan::Grow(prefixes),
        PoolPlan6::Shrink { prefixes } => {
            Plan::Shrink(prefixes.into_iter().map(IpNetwork::V6).collect())
        }
    }
}

/// Why a plan could not be carried out.
struct Failed {
    msg: String,
    /// The datastore is reachable but behind: retry no sooner than
    /// [`common::BUSY_RETRY_FLOOR`].
    busy: bool,
}

impl Failed {
    fn new(e: &NodeError, context: &str) -> Failed {
        Failed {
            msg: format!("{context}{e}"),
            busy: e.is_busy(),
        }
    }
}

/// Acts on `plan` of family `fam`: `Ok(true)` when it changed something.
async fn act<D: Datastore>(node: &Node<D>, fam: Family, plan: Plan) -> Result<bool, Failed> {
    match plan {
        Plan::Steady => Ok(false),
        Plan::Grow(prefixes) => node
            .grow_family(fam, prefixes)
            .await
            .map(|n| n > 0)
            .map_err(|e| Failed::new(&e, "")),
        Plan::Shrink(prefixes) => {
            let mut r = Ok(false);
            for p in prefixes {
                match node.shrink(p).await {
                    Ok(()) => r = Ok(true),
                    Err(e) => return Err(Failed::new(&e, &format!("releasing {p}: "))),
                }
            }
            r
        }
    }
}

/// Retry delays of the loop while claims or releases fail (jittered, see [`crate::backoff`]).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub async fn run<D: Datastore>(node: &Node<D>, interval: Duration) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let (plan, plan_6, next_expiry) = {
            let st = node.state();
            let now = now_ms();
            let v4 = st.serves(Family::V4).then(|| plan4(st.pool.plan(now)));
            let v6 = st.pool6.as_ref().map(|p| plan6(p.plan(now)));
            let expiry = [
                st.pool.next_cooldown_expiry(now),
                st.pool6.as_ref().and_then(|p| p.next_cooldown_expiry(now)),
            ]
            .into_iter()
            .flatten()
            .min();
            (v4, v6, expiry)
        };
        let mut outcome = Ok(false);
        for (fam, plan) in [(Family::V4, plan), (Family::V6, plan_6)] {
            let Some(plan) = plan else { continue };
            match act(node, fam, plan).await {
                Ok(changed) => {
                    outcome = outcome.map(|c| c || changed);
                }
                Err(e) => {
                    outcome = Err(e);
                }
            }
        }
        let sleep = match outcome {
            // Changed something: plan again right away.
            Ok(true) => {
                backoff.reset();
                continue;
            }
            Ok(false) => {
                backoff.reset();
                let until_expiry = next_expiry
                    .map(|t| Duration::from_millis(t.saturating_sub(now_ms()).saturating_add(1)));
                until_expiry.map_or(interval, |d| d.min(interval))
            }
            Err(e) => {
                let delay = if e.busy {
                    backoff.next_delay_at_least(common::BUSY_RETRY_FLOOR)
                } else {
                    backoff.next_delay()
                };
                tracing::warn!(retry_in = ?delay, "warm pool: {}", e.msg);
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = node.warm_woken() => {}
        }
    }
}
