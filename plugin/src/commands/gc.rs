//! GC: the agent releases every allocation of this network that the runtime no longer lists
//! (and removes its route and veth). No list at all means none is valid (cnitool sends none).

use vpcnet_proto::api::{Reply, Request};

use crate::agent;
use crate::error::CniError;
use crate::netconf::NetConf;

pub fn run(conf: &NetConf) -> Result<Vec<std::net::Ipv4Addr>, CniError> {
    let reply = agent::call_required(
        &conf.socket,
        Request::Gc {
            network: conf.name.clone(),
            valid: conf.valid_attachments.clone().unwrap_or_default(),
        },
    )?;
    match reply {
        Reply::Collected { released, .. } => Ok(released),
        other => Err(agent::unexpected(&other)),
    }
}
