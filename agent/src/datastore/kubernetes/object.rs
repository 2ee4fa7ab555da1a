//! The `PrefixClaim` object: its Rust type (written by hand, see [`super`]), and the mapping
//! between a claim and an object (name ⇄ prefix, spec, owner reference).

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
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
    /// The address peers route the prefix via.
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
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

/// Object name of the claim of `prefix`: `10.240.0.16/28` → `10-240-0-16-28` (a valid DNS
/// subdomain, unique per prefix). The network address is used, so `10.240.0.17/28` names
/// the same claim.
pub fn name_of(prefix: Ipv4Network) -> String {
    let [a, b, c, d] = prefix.network().octets();
    format!("{a}-{b}-{c}-{d}-{}", prefix.prefix())
}

/// Inverse of [`name_of`]: `None` for a name [`name_of`] does not produce (wrong shape,
/// leading zeros, host bits set, length > 32).
pub fn prefix_of_name(name: &str) -> Option<Ipv4Network> {
    let parts: Vec<&str> = name.split('-').collect();
    let [a, b, c, d, len] = parts.as_slice() else {
        return None;
    };
    let num = |s: &str| -> Option<u8> {
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        s.parse().ok()
    };
    let ip = Ipv4Addr::new(num(a)?, num(b)?, num(c)?, num(d)?);
    let net = Ipv4Network::new(ip, num(len)?).ok()?;
    (net.network() == ip).then_some(net)
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
        return skip("name is not a prefix like 10-240-0-16-28");
    };
    match obj.spec.cidr.parse::<Ipv4Network>() {
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
        claimed_at,
    })
}
