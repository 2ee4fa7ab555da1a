//! One module per CNI verb. Each validates everything first, then acts, and undoes what it did
//! if a later step fails.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use std::os::fd::OwnedFd;

use vpcnet_pool::{AllocKey, PodMeta};

use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::netconf::NetConf;

/// What the caller of [`crate::run`] gave besides the environment and the netconf.
pub struct Given<'a> {
    /// CNI_NETNS, already open ([`crate::Invocation::pod_netns`]).
    pub pod_netns: Option<&'a OwnedFd>,
    /// Test builds only: stall an ADD this long after the agent's reply.
    pub stall_after_assign_ms: Option<u64>,
}

pub fn key(conf: &NetConf, env: &ContainerEnv) -> AllocKey {
    AllocKey {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

pub fn meta(env: &ContainerEnv) -> PodMeta {
    PodMeta {
        namespace: env.args.namespace.clone(),
        name: env.args.name.clone(),
        uid: env.args.uid.clone(),
        netns: env.netns.as_ref().map(|p| p.display().to_string()),
    }
}

/// A current-thread runtime: the plugin is one short-lived process doing a handful of netlink
/// requests; a worker pool would cost more to start than it could save.
pub fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::Io(format!("starting runtime: {e}")))
}

pub fn host_netlink() -> Result<rtnetlink::Handle, CniError> {
    vpcnet_netlink::connect().map_err(|e| CniError::dataplane("opening netlink socket", e))
}
