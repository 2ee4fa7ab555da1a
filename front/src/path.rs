//! Building the paths the front needs: the agent's exec socket address and the standalone
//! plugin beside the front.

use crate::sys::SUN_PATH;

/// The default agent socket (`vpcnet_proto::api::DEFAULT_SOCKET`).
pub const DEFAULT_SOCKET: &[u8] = b"/run/vpcnet/vpcnetd.sock";
/// What the exec socket adds to the agent's socket path.
pub const EXEC_SUFFIX: &[u8] = b".exec";
/// The full plugin's file name, in the front's directory.
pub const STANDALONE: &[u8] = b"vpcnet-standalone";

/// Writes `<socket>.exec` and a NUL into `sun_path`; returns the path's length without the
/// NUL, or `None` when it does not fit (108 bytes with the NUL) or `socket` holds a NUL.
#[must_use]
pub fn exec_socket(socket: &[u8], sun_path: &mut [u8; SUN_PATH]) -> Option<usize> {
    if socket.contains(&0) {
        return None;
    }
    let len = socket.len().checked_add(EXEC_SUFFIX.len())?;
    if len >= SUN_PATH {
        return None;
    }
    let (head, rest) = sun_path.split_at_mut(socket.len());
    head.copy_from_slice(socket);
    let (suffix, rest) = rest.split_at_mut(EXEC_SUFFIX.len());
    suffix.copy_from_slice(EXEC_SUFFIX);
    *rest.first_mut()? = 0;
    Some(len)
}

/// Replaces the last component of the first `exe_len` bytes of `buf` (the front's own path,
/// from `/proc/self/exe`) with `name` and NUL-terminates it; returns the length without the
/// NUL, or `None` when it does not fit or the path has no `/`.
#[must_use]
pub fn sibling(buf: &mut [u8], exe_len: usize, name: &[u8]) -> Option<usize> {
    let exe = buf.get(..exe_len)?;
    let dir_end = exe.iter().rposition(|&c| c == b'/')? + 1;
    let end = dir_end.checked_add(name.len())?;
    buf.get_mut(dir_end..end)?.copy_from_slice(name);
    *buf.get_mut(end)? = 0;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_socket_appends_the_suffix() {
        let mut p = [0xffu8; SUN_PATH];
        let n = exec_socket(DEFAULT_SOCKET, &mut p).expect("fits");
        assert_eq!(&p[..n], b"/run/vpcnet/vpcnetd.sock.exec");
        assert_eq!(p[n], 0);
    }

    #[test]
    fn exec_socket_must_fit_sun_path() {
        let mut p = [0u8; SUN_PATH];
        // 102 + 5 = 107 bytes + NUL = 108: fits.
        let s = [b'a'; 102];
        assert_eq!(exec_socket(&s, &mut p), Some(107));
        assert_eq!(p[107], 0);
        let s = [b'a'; 103];
        assert_eq!(exec_socket(&s, &mut p), None);
        assert_eq!(exec_socket(&[b'a'; 4000], &mut p), None);
        assert_eq!(exec_socket(b"/a\0b", &mut p), None);
    }

    #[test]
    fn sibling_replaces_the_last_component() {
        let mut b = [0u8; 64];
        let exe = b"/opt/cni/bin/vpcnet";
        b[..exe.len()].copy_from_slice(exe);
        let n = sibling(&mut b, exe.len(), STANDALONE).expect("fits");
        assert_eq!(&b[..n], b"/opt/cni/bin/vpcnet-standalone");
        assert_eq!(b[n], 0);

        let exe = b"/vpcnet (deleted)";
        b[..exe.len()].copy_from_slice(exe);
        let n = sibling(&mut b, exe.len(), STANDALONE).expect("fits");
        assert_eq!(&b[..n], b"/vpcnet-standalone");
    }

    #[test]
    fn sibling_failures() {
        let mut b = *b"vpcnet\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(sibling(&mut b, 6, STANDALONE), None, "no slash");
        let mut b = *b"/d/vpcnet\0\0\0\0\0\0\0\0\0\0";
        // "/d/" + 17 bytes + NUL = 21 > 19.
        assert_eq!(sibling(&mut b, 9, STANDALONE), None, "too small");
        let mut b = [0u8; 4];
        assert_eq!(sibling(&mut b, 9, STANDALONE), None, "bad length");
    }
}
