//! [`Counted`]: a datastore as the agent uses it, with what `/metrics` shows of it — failed
//! calls by operation (`vpcnet_datastore_errors_total{op}`: `claim`, `release`, `list`) and,
//! from every successful listing, the VPC's capacity cluster-wide (`vpcnet_vpc_prefixes`,
//! `vpcnet_vpc_prefixes_claimed`, `vpcnet_vpc_prefixes_free`). Counting here, around the
//! trait, sees every call whichever code path makes it.

use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::datastore::{Datastore, DatastoreError, PrefixClaim};
use crate::obs::metrics;

#[derive(Debug)]
pub struct Counted<D> {
    inner: D,
    vpc: Vec<Ipv4Network>,
    total: u64,
    /// Claimed cluster-wide: the last listing's count, plus this node's claims since, minus
    /// its releases since (the next listing corrects what others did meanwhile).
    claimed: AtomicU64,
}

/// How many `/prefix_len` prefixes the VPC CIDRs hold.
pub fn vpc_prefixes(vpc: &[Ipv4Network], prefix_len: u8) -> u64 {
    vpc.iter()
        .filter(|c| c.prefix() <= prefix_len)
        .map(|c| 1u64 << (prefix_len - c.prefix()).min(32))
        .sum()
}

impl<D: Datastore> Counted<D> {
    pub fn new(inner: D, vpc: Vec<Ipv4Network>, prefix_len: u8) -> Counted<D> {
        let total = vpc_prefixes(&vpc, prefix_len);
        metrics::get().vpc_capacity(total, None);
        Counted {
            inner,
            vpc,
            total,
            claimed: AtomicU64::new(0),
        }
    }

    fn adjust(&self, by: i64) {
        let mut cur = self.claimed.load(Ordering::Relaxed);
        loop {
            let new = if by >= 0 {
                cur.saturating_add(by.unsigned_abs())
            } else {
                cur.saturating_sub(by.unsigned_abs())
            };
            match self
                .claimed
                .compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    metrics::get().vpc_capacity(self.total, Some(new));
                    return;
                }
                Err(now) => cur = now,
            }
        }
    }

    fn listed(
        &self,
        r: Result<Vec<PrefixClaim>, DatastoreError>,
    ) -> Result<Vec<PrefixClaim>, DatastoreError> {
        match &r {
            Ok(claims) => {
                let claimed = claims
                    .iter()
                    .filter(|c| match c.prefix {
                        IpNetwork::V4(p) => self.vpc.iter().any(|v| v.contains(p.network())),
                        // The capacity gauges count IPv4 prefixes (the warm pool's unit);
                        // an IPv6 VPC holds so many that a count would say nothing.
                        IpNetwork::V6(_) => false,
                    })
                    .count() as u64;
                self.claimed.store(claimed, Ordering::Relaxed);
                metrics::get().vpc_capacity(self.total, Some(claimed));
            }
            Err(_) => metrics::get().datastore_error("list"),
        }
        r
    }
}

impl<D: Datastore> Datastore for Counted<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        let r = self.inner.claim(claim).await;
        match r {
            Ok(true) if claim.prefix.is_ipv4() => self.adjust(1),
            Ok(true) => {}
            Ok(false) => {}
            Err(_) => metrics::get().datastore_error("claim"),
        }
        r
    }

    async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
        let r = self.inner.release(prefix, node).await;
        match r {
            Ok(()) if prefix.is_ipv4() => self.adjust(-1),
            Ok(()) => {}
            Err(_) => metrics::get().datastore_error("release"),
        }
        r
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let r = self.inner.list().await;
        self.listed(r)
    }

    async fn list_fresh(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        let r = self.inner.list_fresh().await;
        self.listed(r)
    }

    fn list_now(&self) -> Option<Vec<PrefixClaim>> {
        self.inner.list_now()
    }

    async fn changed(&self) {
        self.inner.changed().await
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn deltas(&self) -> Option<tokio::sync::broadcast::Receiver<crate::datastore::ClaimDelta>> {
        self.inner.deltas()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    #[test]
    fn vpc_capacity_in_prefixes() {
        assert_eq!(vpc_prefixes(&[net("10.0.0.0/16")], 28), 4096);
        assert_eq!(
            vpc_prefixes(&[net("10.0.0.0/24"), net("10.1.0.0/23")], 28),
            16 + 32
        );
        assert_eq!(vpc_prefixes(&[net("10.0.0.0/30")], 28), 0);
        assert_eq!(vpc_prefixes(&[net("0.0.0.0/0")], 32), 1 << 32);
    }
}
