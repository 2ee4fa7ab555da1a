//! ADD: address from the agent's warm pool, then the veth and routes.
//!
//! When the MTU is known from the netconf, the request to the agent and the veth creation
//! overlap: the agent's journal sync and the kernel's veth setup are the two slowest steps,
//! and neither needs the other. Without an MTU in the netconf the plugin waits for the agent,
//! whose reply carries the node's uplink MTU.

use serde_json::Value;
use vpcnet_ipam::api::{Reply, Request};

use crate::dataplane::{self, HostVeth, Plan};
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::log::Log;
use crate::netconf::{LogLevel, NetConf};
use crate::{agent, result};

pub fn run(conf: &NetConf, env: &ContainerEnv, log: &Log<'_>) -> Result<Value, CniError> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "not set"))?;
    // Validate the namespace before taking an address: bad input changes nothing.
    let netns = dataplane::open_netns(netns_path)?;
    let netns_str = netns_path.display().to_string();
    let key = super::key(conf, env);
    // Held until this ADD returns (or the process dies): while it is held, the agent's
    // reconcile never releases this attachment's address as leaked, however slow we are.
    let inflight_dir = vpcnet_ipam::inflight::dir_for(&conf.socket);
    let host_veth = vpcnet_ipam::naming::host_veth_name(&env.container_id, &env.ifname);
    let _in_flight = vpcnet_ipam::inflight::AddInFlight::acquire(&inflight_dir, &host_veth)
        .map_err(|e| CniError::Io(format!("in-flight lock in {}: {e}", inflight_dir.display())))?;
    let rt = super::runtime()?;
    let host = rt.block_on(async { super::host_netlink() })?;
    let pending = agent::send(
        &conf.socket,
        Request::Assign {
            key: key.clone(),
            meta: super::meta(env),
        },
    )?;
    let early_veth: Option<Result<HostVeth, CniError>> = conf.mtu.map(|mtu| {
        rt.block_on(dataplane::create_veth(
            &host,
            &env.container_id,
            &env.ifname,
            &netns_str,
            &netns,
            Some(mtu),
        ))
    });
    let t_veth = ms(t0);
    let reply = agent::wait(pending);
    let t_agent = ms(t0);
    failpoint_stall_after_assign();
    let (ip, mtu, existing) = match reply {
        Ok(Reply::Assigned { ip, mtu, existing }) => (ip, conf.mtu.or(mtu), existing),
        Ok(other) => {
            undo_veth(&rt, &host, early_veth);
            return Err(agent::unexpected(&other));
        }
        Err(e) => {
            undo_veth(&rt, &host, early_veth);
            return Err(e);
        }
    };
    let plan = Plan {
        container_id: &env.container_id,
        ifname: &env.ifname,
        netns_path: &netns_str,
        netns: &netns,
        ip,
        mtu,
    };
    let wired = rt.block_on(async {
        match early_veth {
            Some(veth) => dataplane::finish(&host, &plan, veth?).await,
            None => dataplane::setup(&host, &plan).await,
        }
    });
    log.write(
        LogLevel::Debug,
        format_args!(
            "ADD {} phases: veth+sent {t_veth:.2} ms, agent reply {t_agent:.2} ms, wired {:.2} ms",
            env.container_id,
            ms(t0)
        ),
    );
    match wired {
        Ok(w) => Ok(result::add_result(
            &conf.cni_version,
            conf.spec,
            &w,
            conf.prev_result.as_ref(),
        )),
        Err(e) => {
            // A new address goes straight back to free: no pod ever used it. One the attachment
            // already held before this ADD stays: it may belong to a pod that works, and the
            // runtime's DEL decides its fate.
            if !existing {
                let _ = agent::call(&conf.socket, Request::Release { key, unused: true });
            }
            Err(e)
        }
    }
}

/// Test builds only (`--features failpoints`): `VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS=N`
/// stalls this ADD for N ms between the agent's reply and the kernel work, as a paused or
/// starved runtime would. Release builds have no such hook.
#[cfg(feature = "failpoints")]
fn failpoint_stall_after_assign() {
    if let Some(ms) = std::env::var("VPCNET_FAILPOINT_STALL_AFTER_ASSIGN_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_stall_after_assign() {}

fn undo_veth(
    rt: &tokio::runtime::Runtime,
    host: &rtnetlink::Handle,
    veth: Option<Result<HostVeth, CniError>>,
) {
    if let Some(Ok(v)) = veth {
        rt.block_on(dataplane::remove_veth(host, &v));
    }
}
