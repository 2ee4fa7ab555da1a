//! STATUS: ready when the agent answers, has finished its start-up reconcile, and can hand out
//! an address (has one, or can claim more). One socket round trip: containerd calls this every 5 s.

use vpcnet_proto::api::{Reply, Request};

use crate::agent::{self, Outcome};
use crate::error::CniError;
use crate::netconf::NetConf;

pub fn run(conf: &NetConf) -> Result<(), CniError> {
    match agent::call(&conf.socket, Request::Status { allocations: false }) {
        Ok(Outcome::Reply(Reply::Status(s))) => {
            if !s.ready {
                Err(CniError::NotAvailable(
                    "vpcnetd is starting (reconcile not finished)".into(),
                ))
            } else if !s.can_assign {
                Err(CniError::NotAvailable(format!(
                    "no address can be assigned: {}",
                    if s.degraded.is_empty() {
                        "pool empty".to_string()
                    } else {
                        s.degraded.join("; ")
                    }
                )))
            } else {
                Ok(())
            }
        }
        Ok(Outcome::Reply(other)) => Err(agent::unexpected(&other)),
        Ok(Outcome::Unreachable(e)) => Err(CniError::NotAvailable(e.to_string())),
        Err(e) => Err(CniError::NotAvailable(e.to_string())),
    }
}
