//! The warm-pool loop: re-plans after every change, on a timer, and when cooling addresses
//! come free; grows by claiming prefixes and shrinks by giving wholly free ones back. Cluster
//! calls happen here, in the background, never on the ADD path (unless the pool is empty).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::datastore::Datastore;
use crate::node::{now_ms, Node};
use vpcnet_pool::PoolPlan;

/// Retry delays of the loop while claims or releases fail (jittered, see [`crate::backoff`]).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub async fn run<D: Datastore>(node: &Node<D>, interval: Duration) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let (plan, next_expiry) = {
            let st = node.state();
            let now = now_ms();
            (st.pool.plan(now), st.pool.next_cooldown_expiry(now))
        };
        let outcome = match plan {
            PoolPlan::Steady => Ok(false),
            PoolPlan::Grow { prefixes, .. } => node
                .grow(prefixes)
                .await
                .map(|n| n > 0)
                .map_err(|e| e.to_string()),
            PoolPlan::Shrink { prefixes } => {
                let mut r = Ok(false);
                for p in prefixes {
                    match node.shrink(p).await {
                        Ok(()) => r = Ok(true),
                        Err(e) => {
                            r = Err(format!("releasing {p}: {e}"));
                            break;
                        }
                    }
                }
                r
            }
        };
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
                let delay = backoff.next_delay();
                tracing::warn!(retry_in = ?delay, "warm pool: {e}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = node.warm_woken() => {}
        }
    }
}
