//! Start-up audit of the loaded state against the kernel, and `vpcnetd rebuild-state`.
//!
//! Invariant (issue 9, item 3): **the agent never reconciles away a pod its state cannot
//! account for.** Reconcile deletes every pod route and host veth the pool does not own; that
//! is right for what a crash left half done, and a disaster when the state itself was lost
//! (pods running, addresses about to be handed out again). So before the agent touches the
//! host it checks, read-only, that every pod route of ours (protocol 171, /32, through a
//! device) goes to an address the pool knows — assigned, or released and cooling (a released
//! address stays marked until reused, so a route a crash left behind after a DEL is still
//! known) — and, when the state is new (no snapshot, no journal records), that there is no
//! host veth of ours at all. Otherwise it refuses to start, nothing touched, and says how to
//! rebuild the state from the kernel ([`rebuild`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vpcnet_netlink::link::LinkInfo;
use vpcnet_netlink::route::{RouteV4, RouteV6};

use vpcnet_pool::{AllocationOf, Family, PodMeta, Pool, Pool6, PoolEventOf, PoolOf};
use vpcnet_proto::naming;

/// A pod route: what the plugin installs for a pod (`<ip>/32 dev <veth> scope link proto 171`).
pub fn is_pod_route(r: &RouteV4) -> bool {
    vpcnet_proto::attachment::is_our_host_route(r)
}

/// Our host veths by ifindex: only links that prove to be vpcnet's (name and name-derived
/// MAC, [`naming::is_our_host_veth`]); a look-alike someone else made is not a pod of ours.
fn our_veths(links: &[LinkInfo]) -> HashMap<u32, &str> {
    links
        .iter()
        .filter(|l| naming::is_our_host_veth(&l.name, l.mac))
        .map(|l| (l.index, l.name.as_str()))
        .collect()
}

fn through_ours(r: &RouteV4, ours: &HashMap<u32, &str>) -> bool {
    r.oif.is_some_and(|i| ours.contains_key(&i))
}

/// What of the kernel's pods `pool` cannot account for, one line each (empty: all fine).
/// `routes`: the host's protocol-171 routes; `links`: its links; `fresh`: the state is new.
pub fn unaccounted(
    pool: &Pool,
    fresh: bool,
    routes: &[RouteV4],
    links: &[LinkInfo],
) -> Vec<String> {
    let names = our_veths(links);
    let mut out = Vec::new();
    for r in routes
        .iter()
        .filter(|r| is_pod_route(r) && through_ours(r, &names))
    {
        if !pool.knows(r.dst) {
            let dev = r.oif.and_then(|i| names.get(&i)).copied().unwrap_or("?");
            out.push(format!(
                "route {}/32 dev {dev} (address not in the state)",
                r.dst
            ));
        }
    }
    if fresh {
        for l in links
            .iter()
            .filter(|l| naming::is_our_host_veth(&l.name, l.mac))
        {
            out.push(format!("host veth {} (no state at all)", l.name));
        }
    }
    out
}

/// [`unaccounted`] for IPv6 (dual-stack): every pod `/128` route of ours (protocol 171,
/// through one of our veths) must go to an address the IPv6 pool knows. Checked only when
/// the node has an IPv6 pool (an IPv4-only node's audit is as before).
pub fn unaccounted6(pool6: &Pool6, routes6: &[RouteV6], links: &[LinkInfo]) -> Vec<String> {
    let names = our_veths(links);
    routes6
        .iter()
        .filter(|r| {
            crate::node::host::is_host_route6_shape(r)
                && r.protocol == vpcnet_netlink::RTPROT_VPCNET
                && r.oif.is_some_and(|i| names.contains_key(&i))
                && !pool6.knows(r.dst)
        })
        .map(|r| {
            let dev = r.oif.and_then(|i| names.get(&i)).copied().unwrap_or("?");
            format!("route {}/128 dev {dev} (address not in the state)", r.dst)
        })
        .collect()
}

/// What [`rebuild`] adopted and left.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// (address, host veth) adopted as allocations, IPv4 and IPv6.
    pub adopted: Vec<(IpAddr, String)>,
    /// Of those, how many kept the key and metadata the old state had for them.
    pub known: usize,
    /// Routes and links not adopted, with the reason.
    pub skipped: Vec<String>,
}

/// What [`rebuild`] reads from the kernel: the host's protocol-171 routes of each family and
/// its links.
#[derive(Debug)]
pub struct KernelPods<'a> {
    pub routes: &'a [RouteV4],
    pub routes6: &'a [RouteV6],
    pub links: &'a [LinkInfo],
}

/// Builds the pools (configured as given) from the kernel: every pod route through one of our
/// host veths — `/32` into `pool`, `/128` into `pool6` (the IPv6 pool and whatever of its old
/// state could be read, when the node has an IPv6 VPC) — becomes an allocation, in the prefix
/// of the configured length that contains it. When the old pool of that family has an
/// allocation of that address whose host veth is that veth, it is kept as it was (real key,
/// pod metadata); otherwise the allocation is keyed [`naming::rebuilt_key`] of the veth — the
/// same key in both families, so a dual-stack pod is again one attachment. Addresses released
/// before are not known (they become free, not cooling).
pub fn rebuild(
    pool: &mut Pool,
    old: Option<&Pool>,
    pool6: Option<(&mut Pool6, Option<&Pool6>)>,
    kernel: &KernelPods<'_>,
    now: vpcnet_pool::Millis,
) -> Rebuilt {
    let names = our_veths(kernel.links);
    let mut out = Rebuilt::default();
    let mut with_route = HashSet::new();
    let v4: Vec<(Ipv4Addr, Option<u32>)> = kernel
        .routes
        .iter()
        .filter(|r| is_pod_route(r))
        .map(|r| (r.dst, r.oif))
        .collect();
    adopt(pool, old, &v4, &names, now, &mut out, &mut with_route);
    let v6: Vec<(Ipv6Addr, Option<u32>)> = kernel
        .routes6
        .iter()
        .filter(|r| vpcnet_proto::attachment::is_our_host_route6(r))
        .map(|r| (r.dst, r.oif))
        .collect();
    match pool6 {
        Some((pool6, old6)) => adopt(pool6, old6, &v6, &names, now, &mut out, &mut with_route),
        None => out.skipped.extend(
            v6.iter()
                .map(|(ip, _)| format!("route {ip}/128: no IPv6 --vpc-cidr configured")),
        ),
    }
    for l in kernel
        .links
        .iter()
        .filter(|l| naming::is_our_host_veth(&l.name, l.mac))
    {
        if !with_route.contains(l.name.as_str()) {
            out.skipped.push(format!(
                "host veth {}: no pod route through it (reconcile deletes it)",
                l.name
            ));
        }
    }
    out
}

/// [`rebuild`] for one family: each (address, oif) of a pod route becomes an allocation.
fn adopt<'a, F: Family>(
    pool: &mut PoolOf<F>,
    old: Option<&PoolOf<F>>,
    routes: &[(F::Addr, Option<u32>)],
    names: &HashMap<u32, &'a str>,
    now: vpcnet_pool::Millis,
    out: &mut Rebuilt,
    with_route: &mut HashSet<&'a str>,
) {
    let len = pool.config().prefix_len;
    // The prefix containing an address: its host bits cleared.
    let host_bits = u32::from(F::BITS.saturating_sub(len));
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    for &(ip, oif) in routes {
        let route = format!("route {ip}/{}", F::BITS);
        let Some(veth) = oif.and_then(|i| names.get(&i)).copied() else {
            out.skipped.push(format!(
                "{route}: not through a vpcnet host veth (name and MAC)"
            ));
            continue;
        };
        let Some(prefix) = F::net(F::addr(F::bits(ip) & mask), len) else {
            out.skipped
                .push(format!("{route}: no /{len} prefix of {}", F::NAME));
            continue;
        };
        if !pool.held_prefixes().any(|p| p == prefix) {
            if let Err(e) = pool.add_prefix(prefix, now) {
                out.skipped.push(format!("{route} dev {veth}: {e}"));
                continue;
            }
        }
        let known = old
            .and_then(|p| p.owner_of(ip))
            .filter(|a| naming::key_host_veth(&a.key) == veth)
            .cloned();
        let is_known = known.is_some();
        let alloc = known.unwrap_or_else(|| AllocationOf {
            ip,
            key: naming::rebuilt_key(veth),
            meta: PodMeta::default(),
            assigned_at: now,
        });
        match pool.apply(&PoolEventOf::Assigned { alloc }) {
            Ok(()) => {
                with_route.insert(veth);
                out.adopted.push((ip.into(), veth.to_string()));
                out.known += usize::from(is_known);
            }
            Err(e) => out.skipped.push(format!("{route} dev {veth}: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vpcnet_pool::{Allocation, PoolConfig, PoolConfig6, PoolEvent};

    fn kernel<'a>(routes: &'a [RouteV4], links: &'a [LinkInfo]) -> KernelPods<'a> {
        KernelPods {
            routes,
            routes6: &[],
            links,
        }
    }

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: naming::is_host_veth_name(name).then(|| naming::host_mac_for_name(name)),
            up: true,
            mtu: None,
            kind: Some("veth".into()),
            link: None,
        }
    }

    fn pod_route(ip: [u8; 4], oif: u32) -> RouteV4 {
        vpcnet_proto::attachment::host_route(Ipv4Addr::from(ip), Some(oif))
    }

    #[test]
    fn lost_state_is_unaccounted_then_rebuilt() {
        let cfg = PoolConfig {
            vpc_cidrs: vec!["10.1.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        let v1 = naming::host_veth_name("a", "eth0");
        let v2 = naming::host_veth_name("b", "eth0");
        let links = [link(1, "lo"), link(7, &v1), link(8, &v2)];
        let routes = [pod_route([10, 1, 0, 1], 7), pod_route([10, 1, 0, 18], 8)];
        let mut pool = Pool::new(cfg.clone());
        assert_eq!(unaccounted(&pool, true, &routes, &links).len(), 4);
        let r = rebuild(&mut pool, None, None, &kernel(&routes, &links), 5);
        assert_eq!(r.adopted.len(), 2, "{r:?}");
        assert_eq!(r.known, 0);
        assert!(unaccounted(&pool, false, &routes, &links).is_empty());
        assert_eq!(pool.held_prefixes().count(), 2);
        assert!(pool.get(&naming::rebuilt_key(&v1)).is_some());
        // What an old state knows about a pod is kept (its real key); the rest is adopted.
        let mut old = Pool::new(cfg.clone());
        old.add_prefix("10.1.0.0/28".parse().unwrap(), 1).unwrap();
        let key_a = vpcnet_pool::AllocKey {
            network: "net".into(),
            container_id: "a".into(),
            ifname: "eth0".into(),
        };
        old.apply(&PoolEvent::Assigned {
            alloc: Allocation {
                ip: Ipv4Addr::new(10, 1, 0, 1),
                key: key_a.clone(),
                meta: PodMeta::default(),
                assigned_at: 2,
            },
        })
        .unwrap();
        let mut again = Pool::new(cfg.clone());
        let r = rebuild(&mut again, Some(&old), None, &kernel(&routes, &links), 5);
        assert_eq!((r.adopted.len(), r.known), (2, 1), "{r:?}");
        assert_eq!(
            again.get(&key_a).map(|a| a.ip),
            Some(Ipv4Addr::new(10, 1, 0, 1))
        );
        assert!(again.get(&naming::rebuilt_key(&v2)).is_some());
        // A veth without a route is left to reconcile; the empty pool with no veths is fine.
        assert!(unaccounted(&Pool::new(cfg), true, &[], &[link(1, "lo")]).is_empty());
    }

    /// A dual-stack node: each pod's /32 and /128 become one attachment (the same key in both
    /// pools), the /128s in /80 prefixes of the IPv6 VPC; without an IPv6 pool the /128s are
    /// reported, not dropped silently.
    #[test]
    fn rebuild_adopts_both_families_under_one_key() {
        let cfg = PoolConfig {
            vpc_cidrs: vec!["10.1.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        let cfg6 = PoolConfig6 {
            vpc_cidrs: vec!["fd00:10::/64".parse().unwrap()],
            prefix_len: 80,
            ..Default::default()
        };
        let v1 = naming::host_veth_name("a", "eth0");
        let v2 = naming::host_veth_name("b", "eth0");
        let links = [link(1, "lo"), link(7, &v1), link(8, &v2)];
        let routes = [pod_route([10, 1, 0, 1], 7), pod_route([10, 1, 0, 2], 8)];
        let a6: Ipv6Addr = "fd00:10::1:0:0:5".parse().unwrap();
        let routes6 = [
            vpcnet_proto::attachment::host_route6(a6, Some(7)),
            // Not through one of ours: skipped.
            vpcnet_proto::attachment::host_route6("fd00:10::9".parse().unwrap(), Some(1)),
        ];
        let k = KernelPods {
            routes: &routes,
            routes6: &routes6,
            links: &links,
        };
        let mut pool = Pool::new(cfg.clone());
        let mut pool6 = Pool6::new(cfg6);
        let r = rebuild(&mut pool, None, Some((&mut pool6, None)), &k, 5);
        assert_eq!(r.adopted.len(), 3, "{r:?}");
        assert!(r.adopted.contains(&(IpAddr::V6(a6), v1.clone())), "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert!(unaccounted6(&pool6, &routes6[..1], &links).is_empty());
        let key = naming::rebuilt_key(&v1);
        assert_eq!(
            pool.get(&key).map(|a| a.ip),
            Some(Ipv4Addr::new(10, 1, 0, 1))
        );
        assert_eq!(pool6.get(&key).map(|a| a.ip), Some(a6));
        assert_eq!(
            pool6
                .held_prefixes()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            ["fd00:10:0:0:1::/80"]
        );
        // An IPv4-only configuration names the /128 it cannot hold.
        let mut only4 = Pool::new(cfg);
        let r = rebuild(&mut only4, None, None, &k, 5);
        assert_eq!(r.adopted.len(), 2, "{r:?}");
        assert!(
            r.skipped
                .iter()
                .any(|s| s.contains(&a6.to_string()) && s.contains("IPv6")),
            "{r:?}"
        );
    }
}
