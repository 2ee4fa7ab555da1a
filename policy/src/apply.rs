//! Handing a rendered transaction to the kernel: `nft -j -f -` through the `nftables` crate
//! (the same path as the agent's SNAT table; see docs/network-policy.md for why not a netlink
//! library). One invocation = one nf_tables batch: all of it applies or none.

use std::path::{Path, PathBuf};

use nftables::helper::NftablesError;
use serde_json::Value;

/// Why a ruleset could not be applied; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("network policy: the nftables command `nft` was not found (looked in PATH, /usr/sbin, /sbin, /usr/local/sbin): install nftables")]
    NftNotFound,
    #[error("network policy: running {} failed: {source}", program.display())]
    NftNotRunnable {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("network policy: {} -j -f - rejected the ruleset: {} (needs root/CAP_NET_ADMIN and nf_tables with concatenated interval sets, Linux >= 5.6)", program.display(), stderr.trim())]
    NftFailed { program: PathBuf, stderr: String },
    #[error("network policy: {0}")]
    Other(NftablesError),
}

/// The `nft` to run: the first in PATH, else the usual sbin directories (a DaemonSet's PATH
/// may lack them).
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

/// Whether an `nft` command is installed.
pub fn nft_found() -> bool {
    is_executable(&nft_program())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Applies a transaction from [`crate::render::render`] or [`crate::render::removal`] in the
/// calling thread's network namespace.
pub fn apply(ruleset: &Value) -> Result<(), ApplyError> {
    let program = nft_program();
    let payload = ruleset.to_string();
    nftables::helper::apply_ruleset_raw(&payload, Some(&program), nftables::helper::DEFAULT_ARGS)
        .map(|_| ())
        .map_err(|e| match e {
            NftablesError::NftExecution { inner, .. }
                if inner.kind() == std::io::ErrorKind::NotFound =>
            {
                ApplyError::NftNotFound
            }
            NftablesError::NftExecution { inner, .. } => ApplyError::NftNotRunnable {
                program,
                source: inner,
            },
            NftablesError::NftFailed { stderr, .. } => ApplyError::NftFailed { program, stderr },
            other => ApplyError::Other(other),
        })
}
