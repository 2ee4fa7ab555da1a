//! `/proc/sys` knobs. Files under `/proc/sys/net` belong to the network namespace of the
//! thread that opens them, so call these inside [`crate::netns::run_in`] to touch a pod's.

use std::io::Write;
use std::path::PathBuf;

use crate::NetlinkError;

fn full_path(path: &str) -> Result<PathBuf, NetlinkError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(NetlinkError::InvalidArgument(format!(
            "sysctl path {path:?} (want e.g. \"net/ipv4/ip_forward\")"
        )));
    }
    Ok(PathBuf::from("/proc/sys").join(path))
}

/// `sysctl -n` of `path` (e.g. `"net/ipv4/ip_forward"`), without the trailing newline.
pub fn get(path: &str) -> Result<String, NetlinkError> {
    let full = full_path(path)?;
    let mut s = std::fs::read_to_string(full).map_err(NetlinkError::Io)?;
    let trimmed = s.trim_end_matches('\n').len();
    s.truncate(trimmed);
    Ok(s)
}

/// `sysctl -w path=value`; does not write when the current value is already `value`.
pub fn set(path: &str, value: &str) -> Result<(), NetlinkError> {
    if get(path)?.trim() == value.trim() {
        return Ok(());
    }
    let full = full_path(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(full)
        .map_err(NetlinkError::Io)?;
    f.write_all(value.as_bytes()).map_err(NetlinkError::Io)
}
