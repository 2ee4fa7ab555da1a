//! ADD: address from the agent's warm pool, then the veth and routes.

use serde_json::Value;
use vpcnet_ipam::api::{Reply, Request};

use crate::dataplane::{self, Plan};
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::netconf::NetConf;
use crate::{agent, result};

pub fn run(conf: &NetConf, env: &ContainerEnv) -> Result<Value, CniError> {
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "not set"))?;
    // Validate the namespace before taking an address: bad input changes nothing.
    let netns = dataplane::open_netns(netns_path)?;
    let key = super::key(conf, env);
    let reply = agent::call_required(
        &conf.socket,
        Request::Assign {
            key: key.clone(),
            meta: super::meta(env),
        },
    )?;
    let Reply::Assigned { ip, mtu, .. } = reply else {
        return Err(agent::unexpected(&reply));
    };
    let netns_str = netns_path.display().to_string();
    let plan = Plan {
        container_id: &env.container_id,
        ifname: &env.ifname,
        netns_path: &netns_str,
        netns: &netns,
        ip,
        mtu: conf.mtu.or(mtu),
    };
    let wired = super::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = super::host_netlink()?;
            dataplane::setup(&host, &plan).await
        })
    });
    match wired {
        Ok(w) => Ok(result::add_result(
            &conf.cni_version,
            conf.spec,
            &w,
            conf.prev_result.as_ref(),
        )),
        Err(e) => {
            // Give the address back; the runtime will also call DEL, which is then a no-op.
            let _ = agent::call(&conf.socket, Request::Release { key });
            Err(e)
        }
    }
}
