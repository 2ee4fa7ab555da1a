//! CHECK: prevResult against the agent's record and the kernel; names what is missing.

use vpcnet_proto::api::{Reply, Request};

use crate::dataplane;
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::netconf::NetConf;
use crate::version::Spec;
use crate::{agent, result};

pub fn run(conf: &NetConf, env: &ContainerEnv, given: &super::Given<'_>) -> Result<(), CniError> {
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
    let (ip, ip6) = result::our_ips(prev, &env.ifname);
    if ip.is_none() && ip6.is_none() {
        return Err(CniError::config(
            "prevResult",
            format!("has no /32 or /128 address on interface {}", env.ifname),
        ));
    }
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "not set"))?;
    let netns = dataplane::open_netns(netns_path, given.pod_netns)?;
    let reply = agent::call_required(
        &conf.socket,
        Request::Get {
            key: super::key(conf, env),
        },
    )?;
    let Reply::Allocation {
        allocation,
        allocation6,
    } = reply
    else {
        return Err(agent::unexpected(&reply));
    };
    if allocation.is_none() && allocation6.is_none() {
        return Err(CniError::UnknownContainer(format!(
            "vpcnetd holds no address for container {} interface {}",
            env.container_id, env.ifname
        )));
    }
    // Per family: what the agent holds must be what the ADD result said, and a family the
    // result lists must be one the agent holds.
    same_family(allocation.map(|a| a.ip), ip)?;
    same_family(allocation6.map(|a| a.ip), ip6)?;
    let ips = dataplane::PodIps { v4: ip, v6: ip6 };
    let nl = super::HostNetlink::take()?;
    let checked = nl.rt.block_on(dataplane::check(
        &nl.host,
        &netns,
        &env.container_id,
        &env.ifname,
        ips,
    ));
    if checked.is_ok() {
        nl.keep();
    }
    checked
}

/// One family of CHECK's comparison of the agent's record (`held`) with prevResult (`prev`).
fn same_family<A>(held: Option<A>, prev: Option<A>) -> Result<(), CniError>
where
    A: PartialEq + std::fmt::Display,
{
    match (held, prev) {
        (Some(h), Some(p)) if h != p => Err(CniError::CheckFailed(format!(
            "vpcnetd assigned {h} but prevResult says {p}"
        ))),
        (Some(h), None) => Err(CniError::CheckFailed(format!(
            "vpcnetd assigned {h} but prevResult lists no address of its family"
        ))),
        (None, Some(p)) => Err(CniError::CheckFailed(format!(
            "prevResult lists {p} but vpcnetd holds no address of its family"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn families_compared_one_by_one() {
        let a = Ipv4Addr::new(10, 0, 0, 5);
        let b = Ipv4Addr::new(10, 0, 0, 6);
        let six = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
        assert!(same_family(Some(a), Some(a)).is_ok());
        assert!(same_family::<Ipv4Addr>(None, None).is_ok());
        let e = same_family(Some(a), Some(b)).expect_err("differs");
        assert!(e.to_string().contains("10.0.0.5") && e.to_string().contains("10.0.0.6"));
        let e = same_family(Some(six), None).expect_err("missing in prevResult");
        assert!(e.to_string().contains("fd00::5"), "{e}");
        let e = same_family(None, Some(six)).expect_err("not held");
        assert!(e.to_string().contains("fd00::5"), "{e}");
    }
}
