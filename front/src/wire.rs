//! The front ↔ agent protocol on the agent's exec socket (`<socket>.exec`), and the CNI
//! error line the front prints when it can run nothing.
//!
//! Request (front → agent), one connection per request:
//!
//! ```text
//! offset size
//!  0      4   magic  b"VPX1"
//!  4      4   flags  u32 LE; bit 0 (FLAG_POD_NETNS): a second descriptor, the pod's netns
//!  8      4   env_len   u32 LE
//! 12      4   stdin_len u32 LE
//! 16  env_len   the environment: every "KEY=VALUE" string with its NUL, concatenated
//!  …  stdin_len the netconf bytes read from stdin
//! ```
//!
//! The 16 header bytes go in one `sendmsg` that carries `SCM_RIGHTS` with the front's
//! `/proc/self/ns/net` descriptor and, when bit 0 is set, the descriptor of `CNI_NETNS`, in
//! that order; no other bytes carry descriptors.
//!
//! Response (agent → front):
//!
//! ```text
//!  0      4   magic  b"VPXR"
//!  4      4   code   i32 LE: 0..=255 the exit code; -1 declined (the front runs the
//!                    standalone plugin); any other value is taken as declined
//!  8      4   len    u32 LE: how many bytes of stdout follow
//! 12    len   (codes 0..=255 only) the plugin's stdout
//! ```
//!
//! The length makes a cut-short answer (the agent killed while it writes) visible: the
//! front writes nothing until it holds all `len` bytes, and when the connection closes
//! before that it runs the standalone plugin instead, as for no answer at all. (An output
//! larger than the front's buffer — never seen: a result is a few KB — is copied as it comes,
//! and a short one then exits 1.)
//! ```text
//! ```

/// The request's magic.
pub const REQUEST_MAGIC: [u8; 4] = *b"VPX1";
/// The response's magic.
pub const RESPONSE_MAGIC: [u8; 4] = *b"VPXR";
/// Flag bit 0: the pod's network namespace descriptor follows the front's.
pub const FLAG_POD_NETNS: u32 = 1;
/// Request header length.
pub const HEADER_LEN: usize = 16;
/// Response header length.
pub const RESPONSE_LEN: usize = 12;
/// The agent's "not mine, run the standalone plugin" code.
pub const DECLINED: i32 = -1;

/// The request header.
#[must_use]
pub fn header(flags: u32, env_len: u32, stdin_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let parts = [
        REQUEST_MAGIC,
        flags.to_le_bytes(),
        env_len.to_le_bytes(),
        stdin_len.to_le_bytes(),
    ];
    for (chunk, part) in h.chunks_exact_mut(4).zip(parts) {
        chunk.copy_from_slice(&part);
    }
    h
}

/// The agent's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The agent ran the command: copy its `len` bytes of output to stdout, exit with `code`.
    Exit { code: u8, len: usize },
    /// The agent declined (or answered a code the front does not know).
    Declined,
    /// Not our protocol's answer.
    BadMagic,
}

/// Decodes the response header.
#[must_use]
pub fn reply(r: [u8; RESPONSE_LEN]) -> Reply {
    let [m0, m1, m2, m3, c0, c1, c2, c3, l0, l1, l2, l3] = r;
    if [m0, m1, m2, m3] != RESPONSE_MAGIC {
        return Reply::BadMagic;
    }
    let len = usize::try_from(u32::from_le_bytes([l0, l1, l2, l3]));
    match (u8::try_from(i32::from_le_bytes([c0, c1, c2, c3])), len) {
        (Ok(code), Ok(len)) => Reply::Exit { code, len },
        _ => Reply::Declined,
    }
}

/// Room for [`error_line`] with any path of up to `path_len` bytes.
#[must_use]
pub const fn error_line_capacity(path_len: usize) -> usize {
    // Prefix and suffix, an errno of up to 11 characters, each path byte up to 6 (`\u00XX`).
    96 + 6 * path_len
}

/// Writes `{"cniVersion":"1.0.0","code":999,"msg":"vpcnet: cannot run <path>: errno <n>"}\n`
/// into `out`; returns its length, or `None` if `out` is too small. In the path, `"` and `\`
/// are escaped and control bytes are written as `\u00XX`; other bytes are copied as they are.
#[must_use]
pub fn error_line(path: &[u8], errno: i32, out: &mut [u8]) -> Option<usize> {
    let mut w = Writer { out, n: 0 };
    w.put(br#"{"cniVersion":"1.0.0","code":999,"msg":"vpcnet: cannot run "#)?;
    for &c in path {
        match c {
            b'"' | b'\\' => w.put(&[b'\\', c])?,
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let hi = HEX.get(usize::from(c >> 4)).copied().unwrap_or(b'0');
                let lo = HEX.get(usize::from(c & 15)).copied().unwrap_or(b'0');
                w.put(&[b'\\', b'u', b'0', b'0', hi, lo])?;
            }
            _ => w.put(&[c])?,
        }
    }
    w.put(b": errno ")?;
    let mut digits = [0u8; 11];
    let d = decimal(errno, &mut digits);
    w.put(d)?;
    w.put(b"\"}\n")?;
    Some(w.n)
}

struct Writer<'a> {
    out: &'a mut [u8],
    n: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.n.checked_add(b.len())?;
        self.out.get_mut(self.n..end)?.copy_from_slice(b);
        self.n = end;
        Some(())
    }
}

/// `v` in decimal, into the end of `buf`.
fn decimal(v: i32, buf: &mut [u8; 11]) -> &[u8] {
    let mut u = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        // `u % 10` is a digit.
        #[allow(clippy::cast_possible_truncation)]
        let d = (u % 10) as u8;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + d;
        }
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'-';
        }
    }
    buf.get(i..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = header(FLAG_POD_NETNS, 0x0102_0304, 1 << 20);
        assert_eq!(
            h,
            [b'V', b'P', b'X', b'1', 1, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0x10, 0]
        );
        assert_eq!(&header(0, 0, 0)[4..], &[0; 12]);
    }

    #[test]
    fn replies() {
        let r = |m: &[u8; 4], c: i32| {
            let mut b = [0u8; RESPONSE_LEN];
            b[..4].copy_from_slice(m);
            b[4..8].copy_from_slice(&c.to_le_bytes());
            b[8..].copy_from_slice(&700u32.to_le_bytes());
            reply(b)
        };
        assert_eq!(r(b"VPXR", 0), Reply::Exit { code: 0, len: 700 });
        assert_eq!(r(b"VPXR", 1), Reply::Exit { code: 1, len: 700 });
        assert_eq!(
            r(b"VPXR", 255),
            Reply::Exit {
                code: 255,
                len: 700
            }
        );
        assert_eq!(r(b"VPXR", -1), Reply::Declined);
        assert_eq!(r(b"VPXR", 256), Reply::Declined);
        assert_eq!(r(b"VPXR", i32::MIN), Reply::Declined);
        assert_eq!(r(b"VPX1", 0), Reply::BadMagic);
        assert_eq!(r(b"HTTP", 0), Reply::BadMagic);
    }

    fn line(path: &[u8], errno: i32) -> String {
        let mut b = vec![0u8; error_line_capacity(path.len())];
        let n = error_line(path, errno, &mut b).expect("fits");
        String::from_utf8(b[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            line(b"/opt/cni/bin/vpcnet-standalone", 2),
            "{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"vpcnet: cannot run /opt/cni/bin/vpcnet-standalone: errno 2\"}\n"
        );
        let l = line(b"/a\"b\\c\nd", 13);
        assert!(l.contains(r#"cannot run /a\"b\\c\u000ad: errno 13"#), "{l}");
        assert!(line(b"", -7).contains("run : errno -7\""));
        assert!(line(b"x", i32::MIN).contains("errno -2147483648\""));
        assert!(line(b"x", i32::MAX).contains("errno 2147483647\""));
        let path = [0x1fu8; 40];
        let l = line(&path, 0);
        assert!(l.ends_with(": errno 0\"}\n"));
    }

    #[test]
    fn error_line_too_small() {
        let mut b = [0u8; 20];
        assert_eq!(error_line(b"/x", 1, &mut b), None);
    }
}
