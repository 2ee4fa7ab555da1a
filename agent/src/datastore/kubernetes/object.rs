//! The `PrefixClaim` object: its Rust type (written by hand, see [`super`]), and the mapping
//! between a claim and an object (name ⇄ prefix, spec, owner reference).

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::{ClusterResourceScope, ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::{GROUP, KIND, PLURAL, VERSION};
use crate::datastore::PrefixClaim;

/// `spec` of a PrefixClaim. Fields default to empty so one malformed object cannot make a
/// whole LIST undecodable; [`claim_of`] skips it instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSpec {
    /// The claimed prefix, e.g. `10.240.0.16/28` (the name says the same).
    #[serde(default)]
    pub cidr: String,
    /// The claiming node's name.
    #[serde(default)]
    pub node: String,
    /// The node's IPv4 address: peers route IPv4 prefixes via it.
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// The node's IPv6 address: peers route IPv6 prefixes via it (docs/dual-stack.md).
    #[serde(rename = "nodeIPv6", default, skip_serializing_if = "Option::is_none")]
    pub node_ip6: Option<String>,
}

/// A `PrefixClaim` object as the API server stores it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimObject {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClaimSpec,
}

impl Resource for ClaimObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Object name of the claim of `prefix` (a valid DNS subdomain, unique per prefix; a name
/// cannot hold `:` or `/`):
/// * IPv4 `10.240.0.16/28` → `10-240-0-16-28` (as before dual-stack);
/// * IPv6 `fd00:10::/80` → `fd00-10-0-0-0-0-0-0-80`: every one of the eight groups written
///   out, lowercase hex without leading zeros, then the length (docs/dual-stack.md).
///
/// The network address is used, so `10.240.0.17/28` names the same claim.
pub fn name_of(prefix: IpNetwork) -> String {
    match prefix {
        IpNetwork::V4(p) => {
            let [a, b, c, d] = p.network().octets();
            format!("{a}-{b}-{c}-{d}-{}", p.prefix())
        }
        IpNetwork::V6(p) => {
            let mut out = String::new();
            for g in p.network().segments() {
                out.push_str(&format!("{g:x}-"));
            }
            out.push_str(&p.prefix().to_string());
            out
        }
    }
}

/// Inverse of [`name_of`]: `None` for a name [`name_of`] does not produce (wrong shape,
/// leading zeros, uppercase, host bits set, length out of range).
pub fn prefix_of_name(name: &str) -> Option<IpNetwork> {
    let parts: Vec<&str> = name.split('-').collect();
    let num = |s: &str| -> Option<u8> {
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        s.parse().ok()
    };
    match parts.as_slice() {
        [a, b, c, d, len] => {
            let ip = Ipv4Addr::new(num(a)?, num(b)?, num(c)?, num(d)?);
            let net = Ipv4Network::new(ip, num(len)?).ok()?;
            (net.network() == ip).then_some(IpNetwork::V4(net))
        }
        [groups @ .., len] if groups.len() == 8 => {
            let mut seg = [0u16; 8];
            for (i, g) in groups.iter().enumerate() {
                if g.is_empty()
                    || g.len() > 4
                    || (g.len() > 1 && g.starts_with('0'))
                    || !g
                        .bytes()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                {
                    return None;
                }
                seg[i] = u16::from_str_radix(g, 16).ok()?;
            }
            let ip = Ipv6Addr::from(seg);
            let net = Ipv6Network::new(ip, num(len)?).ok()?;
            (net.network() == ip).then_some(IpNetwork::V6(net))
        }
        _ => None,
    }
}

/// The object that claims `claim.prefix` for `claim.node`, owned by the Node with `node_uid`.
pub fn claim_object(claim: &PrefixClaim, node_uid: &str) -> ClaimObject {
    ClaimObject {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        metadata: ObjectMeta {
            name: Some(name_of(claim.prefix)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: claim.node.clone(),
                uid: node_uid.into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: ClaimSpec {
            cidr: claim.prefix.to_string(),
            node: claim.node.clone(),
            node_ip: claim.node_ip.map(|ip| ip.to_string()),
            node_ip6: claim.node_ip6.map(|ip| ip.to_string()),
        },
    }
}

/// The claim an object records; `None` (with a log line) for one that is not a well-formed
/// claim: unparsable name, or a `spec.cidr` that disagrees with the name (the name is what
/// the API server keeps unique, so it is authoritative).
pub fn claim_of(obj: &ClaimObject) -> Option<PrefixClaim> {
    let name = obj.metadata.name.as_deref().unwrap_or("");
    let skip = |why: &str| {
        tracing::warn!(
            name,
            reason = why,
            "kubernetes: skipping a malformed PrefixClaim"
        );
        None
    };
    let Some(prefix) = prefix_of_name(name) else {
        return skip("name is not a prefix like 10-240-0-16-28 or fd00-10-0-0-0-0-0-0-80");
    };
    // The exact prefix is `spec.cidr`; the name must say the same.
    match obj.spec.cidr.parse::<IpNetwork>() {
        Ok(c) if c == prefix => {}
        _ => {
            return skip(&format!(
                "spec.cidr {:?} does not match the name",
                obj.spec.cidr
            ))
        }
    }
    if obj.spec.node.is_empty() {
        return skip("spec.node is empty");
    }
    let node_ip = match obj.spec.node_ip.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => return skip(&format!("spec.nodeIP {s:?} is not an IPv4 address")),
        },
    };
    let node_ip6 = match obj.spec.node_ip6.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<Ipv6Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => return skip(&format!("spec.nodeIPv6 {s:?} is not an IPv6 address")),
        },
    };
    let claimed_at = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.timestamp_millis()).ok())
        .unwrap_or(0);
    Some(PrefixClaim {
        prefix,
        node: obj.spec.node.clone(),
        node_ip,
        node_ip6,
        claimed_at,
    })
}
