//! Names and MAC addresses derived from an attachment, shared by the plugin (which creates the
//! veth) and the agent (which finds, reconciles and deletes it). Deterministic, so neither side
//! has to ask the kernel or the other for them.

/// Prefix of every host-side veth vpcnet creates. The name alone does not make a link ours:
/// see [`is_our_host_veth`].
pub const HOST_VETH_PREFIX: &str = "vpc";

/// FNV-1a, 64 bit: stable across versions and platforms (std's hasher is not).
fn fnv1a64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // separator that cannot occur in a container ID or ifname
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where node `node` starts its search for a free prefix in claim round `round` (issue 10):
/// stable per node, different between nodes and between rounds.
pub fn claim_seed(node: &str, round: u32) -> u64 {
    fnv1a64(&["vpcnet claim", node, &round.to_string()])
}

/// `vpc` + 11 hex digits of a hash of (container ID, ifname): 14 bytes, under IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id, ifname]);
    format!("{HOST_VETH_PREFIX}{:011x}", h >> 20)
}

/// Network name of the allocations `vpcnetd rebuild-state` adopts from the kernel: the
/// kernel knows a pod's address and host veth, not its container ID. Not a valid CNI network
/// name, so no runtime's GC can match it; the key's `container_id` is the host veth's name.
pub const REBUILT_NETWORK: &str = "(rebuilt)";

/// The key of an allocation adopted from the kernel for host veth `veth`.
pub fn rebuilt_key(veth: &str) -> vpcnet_pool::AllocKey {
    vpcnet_pool::AllocKey {
        network: REBUILT_NETWORK.into(),
        container_id: veth.into(),
        ifname: String::new(),
    }
}

/// The host veth of the attachment `key` names (its name, for an adopted allocation).
pub fn key_host_veth(key: &vpcnet_pool::AllocKey) -> String {
    if key.network == REBUILT_NETWORK {
        key.container_id.clone()
    } else {
        host_veth_name(&key.container_id, &key.ifname)
    }
}

/// True when `name` has the exact shape of a name [`host_veth_name`] produces.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 11
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Prefix of a *retired* host veth (issue 14): the host end of a DEL'd attachment that an ADD
/// of the same attachment found still waiting for the reaper. The ADD renames it out of its
/// way (and its pod end, see [`retired_veth_name`]) instead of deleting it under rtnl_lock, and
/// leaves it in the reaper's link group; it carries no route and no allocation.
pub const RETIRED_VETH_PREFIX: &str = "vpx";

/// Link group of host veths waiting for the agent's reaper ("vpcd"): the reaper marks DEL'd
/// attachments' veths with it, the plugin its retired ones, and the group is deleted in one
/// request (agent, `vpcnetd uninstall`).
pub const REAP_GROUP: u32 = 0x7670_6364;

/// Name a retired veth gets: [`RETIRED_VETH_PREFIX`] + its host ifindex in 11 hex digits, so
/// two retired veths can never collide (an ifindex is unique among the host's links while the
/// link lives), however often one attachment is re-ADDed before the reaper runs. Its pod end
/// (in the pod namespace) gets the same name. The host end also gets the MAC
/// [`host_mac_for_name`] derives from this name, which is what makes it provably ours
/// ([`is_our_retired_veth`]).
pub fn retired_veth_name(host_index: u32) -> String {
    format!("{RETIRED_VETH_PREFIX}{host_index:011x}")
}

/// True when `name` has the exact shape of a name [`retired_veth_name`] produces.
pub fn is_retired_veth_name(name: &str) -> bool {
    name.len() == RETIRED_VETH_PREFIX.len() + 11
        && name.starts_with(RETIRED_VETH_PREFIX)
        && name[RETIRED_VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True when a link is provably a retired host veth of ours: a [`retired_veth_name`] *and*
/// the MAC derived from that name. Never an attachment's live veth: reconcile and uninstall
/// delete it (through the reaper's group), audits do not count it as a pod.
pub fn is_our_retired_veth(name: &str, mac: Option<[u8; 6]>) -> bool {
    is_retired_veth_name(name) && mac == Some(host_mac_for_name(name))
}

/// Locally administered unicast MAC derived from the attachment; `side` distinguishes the ends.
fn mac(container_id: &str, ifname: &str, side: &str) -> [u8; 6] {
    let h = fnv1a64(&[container_id, ifname, side]).to_be_bytes();
    // 0x02: locally administered, unicast.
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// MAC of the host end: the pod's permanent neighbour entry for the gateway points at it.
/// Derived from the host veth's *name*, so that the agent, which sees only the kernel's links,
/// can check that a link with one of our names also carries the MAC we gave it.
pub fn host_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    host_mac_for_name(&host_veth_name(container_id, ifname))
}

/// The host MAC vpcnet gives the host veth named `name`.
pub fn host_mac_for_name(name: &str) -> [u8; 6] {
    let h = fnv1a64(&["vpcnet host veth", name]).to_be_bytes();
    // 0x02: locally administered, unicast; 0x76 ('v'): vpcnet's.
    [0x02, 0x76, h[0], h[1], h[2], h[3]]
}

/// True when a link is provably a host veth vpcnet created: a name of our shape *and* the MAC
/// derived from that name (32 bits of hash), as the plugin sets it at creation.
///
/// **Invariant**: reconcile, GC and the reaper delete only links this accepts, and routes only
/// through such links. A link someone else named `vpc` + 11 hex digits, or a veth of an older
/// vpcnet, is never touched (an older version's leftovers then stay until deleted by hand).
pub fn is_our_host_veth(name: &str, mac: Option<[u8; 6]>) -> bool {
    is_host_veth_name(name) && mac == Some(host_mac_for_name(name))
}

/// MAC of the pod end.
pub fn pod_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    mac(container_id, ifname, "pod")
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_is_stable_short_and_recognised() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert_ne!(a, host_veth_name("abc123", "eth1"));
        assert_ne!(a, host_veth_name("abc12", "3eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15);
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("vpcfoo"));
        assert!(!is_host_veth_name("eth0"));
    }

    #[test]
    fn our_host_veth_needs_name_and_derived_mac() {
        let name = host_veth_name("abc123", "eth0");
        let mac = host_veth_mac("abc123", "eth0");
        assert!(is_our_host_veth(&name, Some(mac)));
        assert!(!is_our_host_veth(&name, None));
        assert!(!is_our_host_veth(&name, Some([0x02, 0, 0, 0, 0, 1])));
        let other = host_veth_name("abc123", "eth1");
        assert!(
            !is_our_host_veth(&other, Some(mac)),
            "MAC of another attachment"
        );
        assert_ne!(mac, pod_mac("abc123", "eth0"));
    }

    #[test]
    fn retired_names_are_unique_recognised_and_never_live() {
        let a = retired_veth_name(7);
        assert_eq!(a, "vpx00000000007");
        assert_ne!(a, retired_veth_name(8));
        assert_eq!(retired_veth_name(u32::MAX).len(), 14);
        assert!(is_retired_veth_name(&a));
        assert!(
            !is_host_veth_name(&a),
            "a retired veth is not a live attachment's"
        );
        assert!(is_our_retired_veth(&a, Some(host_mac_for_name(&a))));
        assert!(!is_our_retired_veth(
            &a,
            Some(host_mac_for_name("vpx00000000008"))
        ));
        assert!(!is_our_retired_veth(&a, None));
        let live = host_veth_name("abc123", "eth0");
        assert!(!is_retired_veth_name(&live));
        assert!(!is_our_host_veth(&a, Some(host_mac_for_name(&a))));
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let h = host_veth_mac("c", "eth0");
        let p = pod_mac("c", "eth0");
        assert_ne!(h, p);
        for m in [h, p] {
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(format_mac(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }
}
