//! CHECK: prevResult against the agent's record and the kernel; names what is missing.

use vpcnet_proto::api::{Reply, Request};

use crate::dataplane;
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::netconf::NetConf;
use crate::version::Spec;
use crate::{agent, result};

pub fn run(conf: &NetConf, env: &ContainerEnv) -> Result<(), CniError> {
    if conf.spec == Spec::V03 && conf.cni_version != "0.4.0" {
        return Err(CniError::IncompatibleVersion {
            requested: conf.cni_version.clone(),
            supported: "0.4.0, 1.0.0, 1.1.0 (CHECK)".into(),
        });
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult", "missing (CHECK needs the ADD result)"))?;
    let ip = result::our_ip(prev, &env.ifname).ok_or_else(|| {
        CniError::config(
            "prevResult",
            format!("has no /32 address on interface {}", env.ifname),
        )
    })?;
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "not set"))?;
    let netns = dataplane::open_netns(netns_path)?;
    let reply = agent::call_required(
        &conf.socket,
        Request::Get {
            key: super::key(conf, env),
        },
    )?;
    let Reply::Allocation { allocation, .. } = reply else {
        return Err(agent::unexpected(&reply));
    };
    match allocation {
        None => {
            return Err(CniError::UnknownContainer(format!(
                "vpcnetd holds no address for container {} interface {}",
                env.container_id, env.ifname
            )))
        }
        Some(a) if a.ip != ip => {
            return Err(CniError::CheckFailed(format!(
                "vpcnetd assigned {} but prevResult says {ip}",
                a.ip
            )))
        }
        Some(_) => {}
    }
    let rt = super::runtime()?;
    rt.block_on(async {
        let host = super::host_netlink()?;
        dataplane::check(&host, &netns, &env.container_id, &env.ifname, ip).await
    })
}
