//! The plugin ⇄ agent protocol: one JSON request line, one JSON reply line, per connection,
//! over the agent's unix socket. Versioned: the agent refuses a request whose `v` it does not
//! speak, with a message that says which versions it does.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::codes::CniCode;
use vpcnet_pool::{AllocKey, Allocation, PodMeta, PoolStats, PrefixInfo};

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
    /// `mtu`: the MTU the agent measured on the node's default-route interface, used when
    /// the netconf names none.
    Assigned {
        ip: Ipv4Addr,
        existing: bool,
        mtu: Option<u32>,
    },
    Released {
        ip: Option<Ipv4Addr>,
    },
    Allocation {
        allocation: Option<Allocation>,
    },
    Collected {
        released: Vec<Ipv4Addr>,
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
}

impl Reply {
    pub fn error(code: CniCode, msg: impl Into<String>) -> Reply {
        Reply::Error {
            code: code.as_u32(),
            msg: msg.into(),
        }
    }
}
