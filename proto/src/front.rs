//! The `vpcnet` front's socket (`front/`, issue 14): the wire format between the front the
//! runtime execs and vpcnetd, which runs the command in-process.
//!
//! The front is a `no_std` program without libc and cannot depend on this crate: it spells
//! the same constants out in `front/src/wire.rs`, and the integration tests run the real front
//! against the real agent.
//!
//! Request, front → vpcnetd, on a connection to [`socket_for`]`(netconf.socket)`:
//! * a 16-byte header — [`REQUEST_MAGIC`], then little-endian `u32`s: `flags`
//!   ([`FLAG_POD_NETNS`]), `env_len`, `stdin_len` — sent in one `sendmsg` carrying
//!   `SCM_RIGHTS`: the front's own network namespace, then (with [`FLAG_POD_NETNS`]) CNI_NETNS
//!   opened by the front;
//! * `env_len` bytes: the front's environment, each `KEY=VALUE` ending in a NUL;
//! * `stdin_len` bytes: its standard input (at most the plugin's stdin bound plus one byte).
//!
//! Reply, vpcnetd → front, in one write: [`REPLY_MAGIC`], a little-endian `i32` — the exit code
//! (0–255), or [`DECLINED`] —, a little-endian `u32`: the length of what follows, the
//! command's standard output. On [`DECLINED`], on a connection closed before the whole reply
//! (vpcnetd killed mid-command, or while writing: the front writes nothing until it holds all
//! of it), or on anything else, the front execs `vpcnet-standalone` with the same arguments,
//! environment and stdin: a command vpcnetd did not answer is run exactly as it would have
//! been without the front.

use std::path::{Path, PathBuf};

/// First bytes of a request.
pub const REQUEST_MAGIC: [u8; 4] = *b"VPX1";
/// First bytes of a reply.
pub const REPLY_MAGIC: [u8; 4] = *b"VPXR";
/// Request header length.
pub const HEADER_LEN: usize = 16;
/// `flags` bit: a second descriptor, CNI_NETNS, follows the front's own namespace.
pub const FLAG_POD_NETNS: u32 = 1;
/// The reply's code when vpcnetd does not run the command; the front then runs it itself.
pub const DECLINED: i32 = -1;
/// The front's environment buffer: a larger environment is never sent (the front runs the
/// command itself).
pub const MAX_ENV: usize = 64 << 10;
/// File name of the plugin the front falls back to, beside the front.
pub const STANDALONE: &str = "vpcnet-standalone";

/// `<socket>.exec`, next to the agent's socket.
pub fn socket_for(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".exec");
    PathBuf::from(p)
}

/// Parses a request header: `(flags, env_len, stdin_len)`, or `None` when it is not one.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Option<(u32, usize, usize)> {
    if h[..4] != REQUEST_MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let len = |i: usize| usize::try_from(word(i)).ok();
    Some((word(4), len(8)?, len(12)?))
}

/// A whole reply: header and output.
pub fn reply(code: i32, out: &[u8]) -> Vec<u8> {
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let mut r = Vec::with_capacity(12 + out.len());
    r.extend_from_slice(&REPLY_MAGIC);
    r.extend_from_slice(&code.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(out);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(b"VPX1");
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&300u32.to_le_bytes());
        h[12..16].copy_from_slice(&70_000u32.to_le_bytes());
        assert_eq!(parse_header(&h), Some((FLAG_POD_NETNS, 300, 70_000)));
        h[0] = b'X';
        assert_eq!(parse_header(&h), None);
        assert_eq!(reply(DECLINED, b""), b"VPXR\xff\xff\xff\xff\0\0\0\0");
        assert_eq!(reply(1, b"{}"), b"VPXR\x01\0\0\0\x02\0\0\0{}");
        assert_eq!(
            socket_for(Path::new("/run/vpcnet/vpcnetd.sock")),
            PathBuf::from("/run/vpcnet/vpcnetd.sock.exec")
        );
    }
}
