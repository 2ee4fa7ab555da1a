//! DEL: the agent releases the address, removes the host route and deletes the veth in the
//! background. Idempotent; works with an empty CNI_NETNS.
//!
//! When the agent is unreachable DEL must not block pod deletion: the plugin deletes the host
//! veth itself (which takes the host route with it) and succeeds. The address stays recorded
//! until the agent runs again, whose start-up reconcile releases every allocation whose host
//! veth is gone.

use vpcnet_proto::api::{Reply, Request};
use vpcnet_proto::naming;

use crate::agent::{self, Outcome};
use crate::dataplane;
use crate::env::ContainerEnv;
use crate::error::CniError;
use crate::log::Log;
use crate::netconf::{LogLevel, NetConf};

pub fn run(conf: &NetConf, env: &ContainerEnv, log: &Log<'_>) -> Result<(), CniError> {
    match agent::call(
        &conf.socket,
        Request::Release {
            key: super::key(conf, env),
            unused: false,
        },
    )? {
        Outcome::Reply(Reply::Released { .. }) => Ok(()),
        Outcome::Reply(other) => Err(agent::unexpected(&other)),
        Outcome::Unreachable(e) => {
            let host_veth = naming::host_veth_name(&env.container_id, &env.ifname);
            log.write(
                LogLevel::Error,
                format_args!(
                    "DEL {}: {e}; deleting {host_veth} locally, vpcnetd releases the address when it runs again",
                    env.container_id
                ),
            );
            // No agent: not a warm thread's command, nothing to keep.
            let nl = super::HostNetlink::take()?;
            nl.rt
                .block_on(dataplane::teardown_host(&nl.host, &host_veth))
                .map_err(|e| CniError::dataplane(&format!("deleting {host_veth}"), e))
        }
    }
}
