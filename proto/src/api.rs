//! The plugin ⇄ agent protocol: one JSON request line, one JSON reply line, per connection,
//! over the agent's unix socket. Versioned: the agent refuses a request whose `v` it does not
//! speak, with a message that says which versions it does.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::codes::CniCode;
use vpcnet_pool::{AllocKey, Allocation, Allocation6, PodMeta, PoolStats, PrefixInfo, PrefixInfo6};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default agent socket.
pub const DEFAULT_SOCKET: &str = "/run/vpcnet/vpcnetd.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// One attachment as a runtime names it in GC's valid-attachments list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// ADD: give `key` an address (the one it already holds, if any).
    Assign { key: AllocKey, meta: PodMeta },
    /// DEL: release `key`'s address, remove its host route, and delete its host veth (in the
    /// background). Succeeds when the key holds nothing.
    ///
    /// `unused`: sent by an ADD that failed after being given a *new* address (not one the
    /// attachment already held), before the pod could send a packet: no connection can know
    /// the address, so it skips the cooldown and is free at once.
    Release {
        key: AllocKey,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unused: bool,
    },
    /// CHECK: which address does `key` hold?
    Get { key: AllocKey },
    /// GC: release every allocation of `network` not in `valid`.
    Gc {
        network: String,
        valid: Vec<Attachment>,
    },
    /// After an ADD or DEL, what the runtime saw of it: how long the plugin took, start to
    /// result, and whether it succeeded (a data-plane failure after a successful assign is
    /// `ok: false` here, while the agent saw an ok assign and an ok release). One-way: the
    /// plugin does not wait for the reply.
    Observed {
        verb: ObservedOp,
        micros: u64,
        ok: bool,
    },
    /// STATUS / `vpcnetd status`. `allocations`: include the per-pod list (root callers only);
    /// CNI STATUS, which containerd sends every 5 s, asks without it.
    Status {
        #[serde(default)]
        allocations: bool,
    },
}

/// The CNI verb a [`Request::Observed`] reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObservedOp {
    Add,
    Del,
}

impl ObservedOp {
    pub fn name(self) -> &'static str {
        match self {
            ObservedOp::Add => "add",
            ObservedOp::Del => "del",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// One address per family the node serves (dual-stack, issue 11): `ip` (IPv4) and `ip6`
    /// (IPv6); at least one is set. An IPv4-only agent writes exactly the bytes it wrote
    /// before dual-stack (`ip6` absent), so an older plugin still reads the reply.
    ///
    /// `mtu`: the MTU the agent measured on the node's default-route interface, used when
    /// the netconf names none.
    Assigned {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<Ipv6Addr>,
        existing: bool,
        mtu: Option<u32>,
    },
    Released {
        ip: Option<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<Ipv6Addr>,
    },
    Allocation {
        allocation: Option<Allocation>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allocation6: Option<Box<Allocation6>>,
    },
    Collected {
        released: Vec<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        released6: Vec<Ipv6Addr>,
    },
    Status(Box<AgentStatus>),
    /// [`Request::Observed`] recorded.
    Noted,
    /// `code`: a [`CniCode`] number, which the plugin passes on to the runtime.
    Error {
        code: u32,
        msg: String,
    },
}

/// What `vpcnetd status` shows and STATUS judges readiness by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    pub datastore: String,
    /// Serving: state loaded, start-up reconcile done.
    pub ready: bool,
    /// The pool can hand out an address now, or can grow to.
    pub can_assign: bool,
    /// Human-readable reasons the agent is degraded (datastore down, VPC exhausted…); empty when healthy.
    pub degraded: Vec<String>,
    pub stats: PoolStats,
    pub max_pods: u32,
    pub prefixes: Vec<PrefixInfo>,
    /// Only for root callers (container IDs are not shown to others).
    pub allocations: Option<Vec<Allocation>>,
    /// The IPv6 pool (dual-stack, docs/dual-stack.md): absent on a node without an IPv6
    /// `--vpc-cidr`, so an IPv4-only agent's status reads exactly as before. `stats`,
    /// `prefixes` and `allocations` above are the IPv4 pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool6: Option<Pool6Status>,
}

/// The IPv6 pool in [`AgentStatus`]. Counts saturate at `u32::MAX` (a /80 holds 2^48).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool6Status {
    pub stats: PoolStats,
    pub prefixes: Vec<PrefixInfo6>,
    /// Only for root callers, as [`AgentStatus::allocations`].
    pub allocations: Option<Vec<Allocation6>>,
}

impl Reply {
    pub fn error(code: CniCode, msg: impl Into<String>) -> Reply {
        Reply::Error {
            code: code.as_u32(),
            msg: msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4-only agent's replies keep the bytes they had before dual-stack, so a plugin of
    /// the previous release (which knows no `ip6`) reads them during a rolling upgrade.
    #[test]
    fn ipv4_only_replies_keep_their_bytes() {
        let r = Reply::Assigned {
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            ip6: None,
            existing: false,
            mtu: Some(1500),
        };
        assert_eq!(
            serde_json::to_string(&r).expect("serialises"),
            r#"{"assigned":{"ip":"10.0.0.5","existing":false,"mtu":1500}}"#
        );
        let r = Reply::Collected {
            released: vec![Ipv4Addr::new(10, 0, 0, 6)],
            released6: vec![],
        };
        assert_eq!(
            serde_json::to_string(&r).expect("serialises"),
            r#"{"collected":{"released":["10.0.0.6"]}}"#
        );
        let r = Reply::Released {
            ip: None,
            ip6: None,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("serialises"),
            r#"{"released":{"ip":null}}"#
        );
    }

    #[test]
    fn dual_stack_reply_round_trips_and_old_replies_still_parse() {
        let r = Reply::Assigned {
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            ip6: Some("fd00::5".parse().expect("literal")),
            existing: true,
            mtu: None,
        };
        let s = serde_json::to_string(&r).expect("serialises");
        assert!(s.contains(r#""ip6":"fd00::5""#), "{s}");
        assert_eq!(serde_json::from_str::<Reply>(&s).expect("parses"), r);
        let old = r#"{"allocation":{"allocation":null}}"#;
        assert_eq!(
            serde_json::from_str::<Reply>(old).expect("parses"),
            Reply::Allocation {
                allocation: None,
                allocation6: None
            }
        );
    }
}
