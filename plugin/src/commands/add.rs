//! ADD: address from the agent's warm pool, then the veth and routes.
//!
//! When the MTU is known from the netconf, the request to the agent and the veth creation
//! overlap: the agent's journal sync and the kernel's veth setup are the two slowest steps,
//! and neither needs the other. Without an MTU in the netconf the plugin waits for the agent,
//! whose reply carries the node's uplink MTU.

use serde_json::Value;
use vpcnet_proto::api::{Reply, Request};

use crate::dataplane::{self, Created, Plan};
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::log::Log;
use crate::netconf::{LogLevel, NetConf};
use crate::{agent, result};

pub fn run(
    conf: &NetConf,
    env: &ContainerEnv,
    log: &Log<'_>,
    given: &super::Given<'_>,
) -> Result<Value, CniError> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "not set"))?;
    // Validate the namespace before taking an address: bad input changes nothing.
    let netns = dataplane::open_netns(netns_path, given.pod_netns)?;
    dataplane::refuse_own_netns(&netns, netns_path)?;
    let conn = agent::connect(&conf.socket)?;
    dataplane::refuse_agent_netns(&netns, netns_path, conn.peer_pid())?;
    let netns_str = netns_path.display().to_string();
    let key = super::key(conf, env);
    // Held until this ADD returns (or the process dies): while it is held, the agent's
    // reconcile never releases this attachment's address as leaked, however slow we are.
    let inflight_dir = vpcnet_proto::inflight::dir_for(&conf.socket);
    let host_veth = vpcnet_proto::naming::host_veth_name(&env.container_id, &env.ifname);
    let _in_flight = match vpcnet_proto::inflight::AddInFlight::acquire(&inflight_dir, &host_veth) {
        Ok(lock) => Some(lock),
        // A caller that may not write beside the socket is not root, and the agent refuses
        // it every address (code 101): no allocation can exist without this lock.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(e) => {
            return Err(CniError::Io(format!(
                "in-flight lock in {}: {e}",
                inflight_dir.display()
            )))
        }
    };
    // Sent as soon as the in-flight lock is held, before the runtime and the netlink socket
    // are set up: the agent's journal sync runs meanwhile (issue 14).
    let pending = agent::send_on(
        conn,
        Request::Assign {
            key: key.clone(),
            meta: super::meta(env),
        },
    )?;
    let nl = match super::HostNetlink::take() {
        Ok(v) => v,
        Err(e) => {
            // An address this ADD took goes straight back (as for a failed wiring below).
            if let Ok(Reply::Assigned {
                existing: false, ..
            }) = agent::wait(pending)
            {
                let _ = agent::call(&conf.socket, Request::Release { key, unused: true });
            }
            return Err(e);
        }
    };
    let (rt, host) = (&nl.rt, &nl.host);
    let early_veth: Option<Result<Created, CniError>> = conf.mtu.map(|mtu| {
        rt.block_on(dataplane::create_veth(
            host,
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
    if let Some(ms) = given.stall_after_assign_ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let (ips, mtu, existing) = match reply {
        // One address per family the node serves (dual-stack, issue 11); at least one.
        Ok(Reply::Assigned {
            ip,
            ip6,
            mtu,
            existing,
        }) if ip.is_some() || ip6.is_some() => (
            dataplane::PodIps { v4: ip, v6: ip6 },
            conf.mtu.or(mtu),
            existing,
        ),
        Ok(other) => {
            undo_veth(rt, host, early_veth);
            return Err(agent::unexpected(&other));
        }
        Err(e) => {
            undo_veth(rt, host, early_veth);
            return Err(e);
        }
    };
    let plan = Plan {
        container_id: &env.container_id,
        ifname: &env.ifname,
        netns_path: &netns_str,
        netns: &netns,
        ips,
        mtu,
    };
    let wired = rt.block_on(async {
        let created = match early_veth {
            Some(created) => created,
            None => {
                dataplane::create_veth(
                    host,
                    plan.container_id,
                    plan.ifname,
                    plan.netns_path,
                    plan.netns,
                    plan.mtu,
                )
                .await
            }
        };
        match created? {
            Created::New(veth) => dataplane::finish(host, &plan, veth).await,
            Created::Taken => dataplane::resolve_taken(host, &plan, existing).await,
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
        Ok(w) => {
            nl.keep();
            Ok(result::add_result(
                &conf.cni_version,
                conf.spec,
                &w,
                conf.prev_result.as_ref(),
            ))
        }
        Err(e) => {
            // Undo only what this ADD did (issue 9 items 5 and 11): an address this ADD took goes
            // straight back to free — no pod ever used it; one the attachment held before this
            // ADD (`existing`) stays with it — a failed repeat ADD must not take a working
            // pod's address away. (The runtime also calls DEL after a failed ADD.)
            if !existing {
                let _ = agent::call(&conf.socket, Request::Release { key, unused: true });
            }
            Err(e)
        }
    }
}

/// The agent gave no address: remove the veth this ADD created early, if it created one.
fn undo_veth(
    rt: &tokio::runtime::Runtime,
    host: &rtnetlink::Handle,
    veth: Option<Result<Created, CniError>>,
) {
    if let Some(Ok(Created::New(v))) = veth {
        rt.block_on(dataplane::remove_veth(host, &v));
    }
}
