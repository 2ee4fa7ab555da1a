//! The warm-pool loop: re-plans after every change, on a timer, and when cooling addresses
//! come free; grows by claiming prefixes and shrinks by giving wholly free ones back. Cluster
//! calls happen here, in the background, never on the ADD path (unless the pool is empty).

use std::time::Duration;

use crate::datastore::Datastore;
use crate::node::{now_ms, Node};
use vpcnet_pool::PoolPlan;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub async fn run<D: Datastore>(node: &Node<D>, interval: Duration) {
    let mut backoff = BACKOFF_MIN;
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
                backoff = BACKOFF_MIN;
                continue;
            }
            Ok(false) => {
                backoff = BACKOFF_MIN;
                let until_expiry = next_expiry
                    .map(|t| Duration::from_millis(t.saturating_sub(now_ms()).saturating_add(1)));
                until_expiry.map_or(interval, |d| d.min(interval))
            }
            Err(e) => {
                tracing::warn!(retry_in = ?backoff, "warm pool: {e}");
                let b = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                b
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = node.warm_woken() => {}
        }
    }
}
