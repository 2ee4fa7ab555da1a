//! IPv6 forwarding in the agent's (the node's) network namespace, for an IPv6 `--vpc-cidr`
//! (docs/dual-stack.md), and its undoing by `vpcnetd uninstall`.
//!
//! Pods route through the host namespace, so `net.ipv6.conf.all.forwarding=1`. Turning
//! forwarding on makes the kernel ignore router advertisements on every interface whose
//! `accept_ra` is 1, which would cost the node its own SLAAC default route; so **before**
//! that, every interface with `accept_ra=1` gets `accept_ra=2` (accept them even while
//! forwarding). What was changed is recorded first, durably, in [`RECORD`] in the state
//! directory (a crash half-way leaves a record of everything that may have changed), and
//! [`restore`] (uninstall) puts back exactly that: `accept_ra=1` where it is still our 2,
//! and forwarding as it was.
//!
//! Only `/proc/sys` files of the calling thread's network namespace are touched: no setns,
//! no `sysctl` binary.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vpcnet_netlink::sysctl;

use crate::error::AgentError;
use crate::node::store::write_atomic;

/// The record of what [`enable`] changed, in the state directory.
pub const RECORD: &str = "ipv6-sysctl.json";

const CONF: &str = "/proc/sys/net/ipv6/conf";

/// What [`enable`] changed (so that [`restore`] undoes exactly that).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// `net.ipv6.conf.all.forwarding` before the first change (`None`: it was 1 already, or
    /// no change was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_was: Option<String>,
    /// Entries of `net/ipv6/conf` (interfaces, `all`, `default`) whose `accept_ra` went 1 → 2.
    #[serde(default)]
    pub accept_ra: Vec<String>,
}

fn read_record(state_dir: &Path) -> Result<Option<Changed>, String> {
    match std::fs::read(state_dir.join(RECORD)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", state_dir.join(RECORD).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", state_dir.join(RECORD).display())),
    }
}

/// Every entry of `net/ipv6/conf` with `accept_ra` 1.
fn accept_ra_one() -> Result<Vec<String>, std::io::Error> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(CONF)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        // An interface that went away meanwhile, or a name sysctl cannot address: skipped.
        if let Ok(v) = sysctl::get(&format!("net/ipv6/conf/{name}/accept_ra")) {
            if v.trim() == "1" {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Turns IPv6 forwarding on without losing router advertisements (see the module doc).
/// Idempotent: a restart finds forwarding on and adds to the record only what it changes.
pub fn enable(state_dir: &Path) -> Result<(), AgentError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        AgentError::Config(format!("enabling IPv6 forwarding: {what}: {e}"))
    };
    let mut rec = read_record(state_dir)
        .map_err(|e| fail("reading the record", &e))?
        .unwrap_or_default();
    let forwarding =
        sysctl::get("net/ipv6/conf/all/forwarding").map_err(|e| fail("reading forwarding", &e))?;
    let ones = accept_ra_one().map_err(|e| fail(CONF, &e))?;
    if forwarding.trim() == "1" && ones.is_empty() {
        return Ok(());
    }
    if forwarding.trim() != "1" && rec.forwarding_was.is_none() {
        rec.forwarding_was = Some(forwarding.trim().to_string());
    }
    for n in &ones {
        if !rec.accept_ra.contains(n) {
            rec.accept_ra.push(n.clone());
        }
    }
    // The record first: whatever is changed below is in it.
    let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| fail("encoding the record", &e))?;
    write_atomic(state_dir, RECORD, &bytes).map_err(|e| fail("writing the record", &e))?;
    for n in &ones {
        match sysctl::set(&format!("net/ipv6/conf/{n}/accept_ra"), "2") {
            Ok(()) => tracing::info!(
                interface = n.as_str(),
                "accept_ra 1 -> 2 (router advertisements kept with IPv6 forwarding on)"
            ),
            // Gone meanwhile: nothing to keep.
            Err(e) => tracing::warn!(interface = n.as_str(), error = %e, "setting accept_ra=2"),
        }
    }
    sysctl::set("net/ipv6/conf/all/forwarding", "1")
        .map_err(|e| fail("net.ipv6.conf.all.forwarding=1", &e))?;
    tracing::info!("IPv6 forwarding on");
    Ok(())
}

/// Undoes what [`enable`] recorded in `state_dir` (uninstall): `accept_ra` back to 1 where
/// it is still 2, forwarding back to what it was; then removes the record. Returns a line
/// per change, for the report. No record: nothing to do.
pub fn restore(state_dir: &Path) -> Result<Vec<String>, String> {
    let Some(rec) = read_record(state_dir)? else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    // Forwarding first: with it off, accept_ra=1 accepts advertisements again.
    if let Some(was) = &rec.forwarding_was {
        sysctl::set("net/ipv6/conf/all/forwarding", was)
            .map_err(|e| format!("net.ipv6.conf.all.forwarding={was}: {e}"))?;
        done.push(format!("restored net.ipv6.conf.all.forwarding={was}"));
    }
    for n in &rec.accept_ra {
        let path = format!("net/ipv6/conf/{n}/accept_ra");
        match sysctl::get(&path) {
            Ok(v) if v.trim() == "2" => {
                sysctl::set(&path, "1").map_err(|e| format!("{path}=1: {e}"))?;
                done.push(format!("restored net.ipv6.conf.{n}.accept_ra=1"));
            }
            // Changed by someone else since, or the interface is gone: left alone.
            _ => {}
        }
    }
    match std::fs::remove_file(state_dir.join(RECORD)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", state_dir.join(RECORD).display())),
    }
    Ok(done)
}
