//! One module per CNI verb. Each validates everything first, then acts, and undoes what it did
//! if a later step fails.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use std::cell::RefCell;
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

/// The current-thread runtime and host-side netlink socket an ADD or CHECK works with.
///
/// Per thread, and kept between commands ([`HostNetlink::take`], [`HostNetlink::keep`]):
/// vpcnetd runs the front's commands on warm threads (issue 14), so a command there does not
/// pay for a runtime and a socket of its own; the standalone plugin runs one command and
/// exits. The socket is in the namespace the thread was in when it was opened, which is the
/// one the thread is in between commands ([`vpcnet_netlink::netns`] returns to it or aborts).
pub struct HostNetlink {
    pub rt: tokio::runtime::Runtime,
    pub host: rtnetlink::Handle,
}

thread_local! {
    static KEPT_NETLINK: RefCell<Option<HostNetlink>> = const { RefCell::new(None) };
}

/// How often [`settle_kept`] lets the runtime run the tasks a command left (its pod-side
/// netlink connections, ending now that their handles are dropped) before giving up on it.
const SETTLE_ROUNDS: usize = 4;

impl HostNetlink {
    /// This thread's kept runtime and socket, else new ones.
    pub fn take() -> Result<HostNetlink, CniError> {
        if let Some(kept) = KEPT_NETLINK.with(|slot| slot.borrow_mut().take()) {
            return Ok(kept);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| CniError::Io(format!("starting runtime: {e}")))?;
        let host = rt
            .block_on(async { vpcnet_netlink::connect() })
            .map_err(|e| CniError::dataplane("opening netlink socket", e))?;
        Ok(HostNetlink { rt, host })
    }

    /// Keeps this runtime and socket for the thread's next command, after a command that
    /// succeeded (after a failure they are dropped: a socket in an unknown state is not
    /// reused). Only stores them: the caller that keeps the thread for another command calls
    /// [`settle_kept`] once its reply is out, before it waits.
    pub fn keep(self) {
        KEPT_NETLINK.with(|slot| *slot.borrow_mut() = Some(self));
    }
}

/// Lets this thread's kept runtime ([`HostNetlink::keep`]) run the tasks its command left —
/// the pod-side netlink connections, ending now that their handles are dropped — and keeps it
/// only once nothing but the host socket's own task is left: a pod-side netlink socket still
/// open would keep a deleted pod's namespace alive while the thread waits, so a runtime that
/// still has one after a few rounds is dropped, and every socket with it. For a thread that
/// waits for another command (vpcnetd's warm command threads), after the reply: it is off the
/// command's latency.
pub fn settle_kept() {
    let Some(kept) = KEPT_NETLINK.with(|slot| slot.borrow_mut().take()) else {
        return;
    };
    for round in 0..=SETTLE_ROUNDS {
        if kept.rt.metrics().num_alive_tasks() <= 1 {
            KEPT_NETLINK.with(|slot| *slot.borrow_mut() = Some(kept));
            return;
        }
        if round < SETTLE_ROUNDS {
            kept.rt.block_on(tokio::task::yield_now());
        }
    }
}
