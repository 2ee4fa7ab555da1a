//! Handing a rendered transaction to the kernel: the JSON of [`crate::render`] translated by
//! `vpcnet_netlink::nftables::json` into one nf_tables netlink batch and committed on a
//! `NETLINK_NETFILTER` socket — no `nft` process (see docs/network-policy.md § The nftables
//! path). One batch: all of it applies or none.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vpcnet_netlink::nftables::json::batch_from_json;
use vpcnet_netlink::nftables::{Batch, Session};
use vpcnet_netlink::NetlinkError;

/// Why a ruleset could not be applied; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The JSON is outside what the encoder translates (a renderer bug): nothing was sent.
    #[error("network policy: the ruleset was rejected before reaching the kernel: {0}")]
    Translate(NetlinkError),
    #[error("network policy: {0} (needs root/CAP_NET_ADMIN and nf_tables with concatenated interval sets, Linux >= 5.6)")]
    Kernel(NetlinkError),
}

/// The `nft` command, for reading rulesets back (support bundle, tests): the first in PATH,
/// else the usual sbin directories. The product never runs it to change a ruleset.
pub fn nft_program() -> PathBuf {
    let in_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nft")).collect())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(
            ["/usr/sbin/nft", "/sbin/nft", "/usr/local/sbin/nft"]
                .iter()
                .map(PathBuf::from),
        )
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("nft"))
}

/// Whether an `nft` command is installed (to list a ruleset; not needed to apply one).
pub fn nft_found() -> bool {
    is_executable(&nft_program())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The batch a transaction from [`crate::render`] becomes.
pub fn batch(ruleset: &Value) -> Result<Batch, ApplyError> {
    batch_from_json(ruleset).map_err(ApplyError::Translate)
}

/// Applies a transaction from [`crate::render::render`] or [`crate::render::removal`] in the
/// calling thread's network namespace.
pub fn apply(ruleset: &Value) -> Result<(), ApplyError> {
    batch(ruleset)?.commit().map_err(ApplyError::Kernel)
}

/// [`apply`] on an open [`Session`] (the agent keeps one: closing a socket after a batch
/// that deleted chains or sets waits for an RCU grace period, see [`Session`]). After an
/// error, drop the session.
pub fn apply_in(session: &mut Session, ruleset: &Value) -> Result<(), ApplyError> {
    batch(ruleset)?
        .commit_in(session)
        .map_err(ApplyError::Kernel)
}
