//! `vpcnetd install-cni`: puts the `vpcnet` plugin binary where the runtime looks for CNI
//! plugins (`--cni-bin-dir`, default `/opt/cni/bin`). The DaemonSet's init container runs it
//! with the host's bin dir mounted.
//!
//! The plugin is two files: `vpcnet`, the front the runtime execs (no libc; hands the
//! command to vpcnetd), and `vpcnet-standalone` beside it, which the front execs whenever
//! vpcnetd does not take a command. The standalone is installed first, so a front is never
//! there without the program it falls back to.
//!
//! * Atomic: the bytes go to a temporary file in the destination directory (`.vpcnet.tmp-<pid>`,
//!   a name no runtime executes), which is fsync'd, made 0755 and renamed over `vpcnet`; the
//!   directory is fsync'd too. A runtime executing `vpcnet` meanwhile sees the old or the new
//!   binary, never half of one, and replacing a binary that is running works (no ETXTBSY: the
//!   rename swaps the inode).
//! * Idempotent: when `vpcnet` already has identical bytes and mode 0755 nothing is written
//!   (its mtime does not change), so a restarted init container is a no-op.
//! * Leftover temporary files of an install that was killed midway are removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the installed plugin (the CNI `type`).
pub const PLUGIN_NAME: &str = "vpcnet";
/// The plugin the front execs when vpcnetd does not take a command, beside it.
pub const STANDALONE: &str = vpcnet_proto::front::STANDALONE;
const TMP_PREFIX: &str = ".vpcnet.tmp-";
const MODE: u32 = 0o755;

/// File in the CNI bin directory listing, one per line, the plugins `install-cni` put there
/// because the node lacked them (not `vpcnet` itself): `vpcnetd uninstall` removes exactly
/// those. A dot file: no runtime executes it.
pub const RECORD: &str = ".vpcnet-installed";

/// The names [`RECORD`] in `bin_dir` lists (none when it is absent or unreadable); names with
/// a `/` or starting with `.` are ignored.
pub fn recorded(bin_dir: &Path) -> Vec<String> {
    fs::read_to_string(bin_dir.join(RECORD))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
        .map(str::to_string)
        .collect()
}

/// Whether `name` is a temporary file of an install that did not finish.
pub fn is_leftover(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The destination was missing or different and now holds the source's bytes.
    Installed,
    /// The destination already held the same bytes with mode 0755.
    Unchanged,
}

/// `vpcnet` next to the running executable (both ship in the same image directory).
pub fn default_plugin_src() -> io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(PLUGIN_NAME))
}

fn ctx(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let msg = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{msg}: {e}"))
}

/// Copies `src`'s sibling `vpcnet-standalone`, then `src` itself as `vpcnet`, to `bin_dir`,
/// each atomically, unless it is already there. The result is the front's.
pub fn install(src: &Path, bin_dir: &Path) -> io::Result<Outcome> {
    let standalone = src.with_file_name(STANDALONE);
    if !standalone.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing: the front {} falls back to it, install both",
                standalone.display(),
                src.display()
            ),
        ));
    }
    install_as(&standalone, bin_dir, STANDALONE)?;
    install_as(src, bin_dir, PLUGIN_NAME)
}

/// The plugins vpcnet's conflist needs besides its own (`portmap` is chained in the conflist;
/// runtimes run `loopback` for the pod's `lo`), installed when the node lacks them.
pub const HELPERS: [&str; 2] = ["portmap", "loopback"];

/// What became of one helper plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    /// The node had its own: left alone (never recorded, never removed by uninstall).
    NodeHas,
    /// Missing on the node: ours is now there (or was already, identical), and recorded.
    Ours(Outcome),
    /// Missing on the node, and not shipped beside the plugin either.
    NotShipped,
}

/// Installs each of [`HELPERS`] from `src_dir` into `bin_dir` when `bin_dir` lacks it (or
/// holds the one an earlier install-cni recorded as ours, which is then upgraded), and
/// records the names it owns in [`RECORD`].
pub fn install_helpers(src_dir: &Path, bin_dir: &Path) -> io::Result<Vec<(&'static str, Helper)>> {
    let mut ours = recorded(bin_dir);
    let mut out = Vec::new();
    for name in HELPERS {
        let owned = ours.iter().any(|n| n == name);
        let present = fs::symlink_metadata(bin_dir.join(name)).is_ok();
        let src = src_dir.join(name);
        let r = if present && !owned {
            Helper::NodeHas
        } else if !src.is_file() {
            Helper::NotShipped
        } else {
            let o = install_as(&src, bin_dir, name)?;
            if !owned {
                ours.push(name.to_string());
                let mut text = ours.join("\n");
                text.push('\n');
                crate::node::store::write_atomic(bin_dir, RECORD, text.as_bytes())
                    .map_err(ctx("writing", &bin_dir.join(RECORD)))?;
            }
            Helper::Ours(o)
        };
        out.push((name, r));
    }
    Ok(out)
}

/// Copies `src` to `<bin_dir>/<name>` atomically, unless it is already there.
pub fn install_as(src: &Path, bin_dir: &Path, name: &str) -> io::Result<Outcome> {
    let bytes = fs::read(src).map_err(ctx("reading", src))?;
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", src.display()),
        ));
    }
    fs::create_dir_all(bin_dir).map_err(ctx("creating", bin_dir))?;
    remove_leftovers(bin_dir);
    let dst = bin_dir.join(name);
    if let Ok(meta) = fs::metadata(&dst) {
        if meta.is_file()
            && meta.permissions().mode() & 0o7777 == MODE
            && meta.len() == bytes.len() as u64
            && fs::read(&dst).is_ok_and(|old| old == bytes)
        {
            return Ok(Outcome::Unchanged);
        }
    }
    let tmp = bin_dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
    let result = write_tmp(&tmp, &bytes).and_then(|()| {
        fs::rename(&tmp, &dst).map_err(ctx("renaming into", &dst))?;
        File::open(bin_dir)
            .and_then(|d| d.sync_all())
            .map_err(ctx("syncing", bin_dir))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| Outcome::Installed)
}

fn write_tmp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(tmp)
        .map_err(ctx("creating", tmp))?;
    f.write_all(bytes).map_err(ctx("writing", tmp))?;
    // The umask may have taken bits off the mode given to open().
    f.set_permissions(fs::Permissions::from_mode(MODE))
        .map_err(ctx("chmod", tmp))?;
    f.sync_all().map_err(ctx("syncing", tmp))
}

/// Temporary files of earlier installs that did not finish (killed init container).
fn remove_leftovers(bin_dir: &Path) {
    let Ok(entries) = fs::read_dir(bin_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The subcommand: returns the process exit code.
pub fn run(plugin_src: Option<PathBuf>, helpers_src: Option<PathBuf>, bin_dir: &Path) -> i32 {
    let src = match plugin_src.map_or_else(default_plugin_src, Ok) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vpcnetd install-cni: finding the plugin next to vpcnetd: {e}");
            return 1;
        }
    };
    let code = install_plugin(&src, bin_dir);
    if code != 0 {
        return code;
    }
    let helpers_dir = helpers_src
        .or_else(|| src.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    match install_helpers(&helpers_dir, bin_dir) {
        Ok(hs) => {
            for (name, h) in hs {
                let dst = bin_dir.join(name);
                match h {
                    Helper::NodeHas => eprintln!(
                        "vpcnetd install-cni: {} is the node's own: left alone",
                        dst.display()
                    ),
                    Helper::Ours(Outcome::Installed) => {
                        eprintln!("vpcnetd install-cni: installed {}", dst.display())
                    }
                    Helper::Ours(Outcome::Unchanged) => {
                        eprintln!("vpcnetd install-cni: {} is up to date", dst.display())
                    }
                    Helper::NotShipped => eprintln!(
                        "vpcnetd install-cni: the node has no {name} and {} has none to \
                         install: pods with hostPort mappings (portmap) or a runtime needing \
                         loopback will fail",
                        helpers_dir.display()
                    ),
                }
            }
            0
        }
        Err(e) => {
            eprintln!("vpcnetd install-cni: {e}");
            1
        }
    }
}

fn install_plugin(src: &Path, bin_dir: &Path) -> i32 {
    match install(src, bin_dir) {
        Ok(Outcome::Installed) => {
            eprintln!(
                "vpcnetd install-cni: installed {} as {}",
                src.display(),
                bin_dir.join(PLUGIN_NAME).display()
            );
            0
        }
        Ok(Outcome::Unchanged) => {
            eprintln!(
                "vpcnetd install-cni: {} is up to date",
                bin_dir.join(PLUGIN_NAME).display()
            );
            0
        }
        Err(e) => {
            eprintln!("vpcnetd install-cni: {e}");
            1
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_and_idempotently() {
        let dir = std::env::temp_dir().join(format!("vpcnet-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        fs::write(&src, b"#!/bin/sh\necho v1\n").unwrap();
        // Without the standalone beside it the front is refused, and nothing is written.
        let bin = dir.join("bin");
        let e = install(&src, &bin).unwrap_err();
        assert!(e.to_string().contains(STANDALONE), "{e}");
        assert!(!bin.exists());
        fs::write(dir.join(STANDALONE), b"#!/bin/sh\necho standalone\n").unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join(".vpcnet.tmp-1"), b"half").unwrap();
        assert_eq!(install(&src, &bin).unwrap(), Outcome::Installed);
        let dst = bin.join(PLUGIN_NAME);
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(install(&src, &bin).unwrap(), Outcome::Unchanged);
        // Wrong mode: fixed.
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(install(&src, &bin).unwrap(), Outcome::Installed);
        // New version: replaced.
        fs::write(&src, b"#!/bin/sh\necho v2\n").unwrap();
        assert_eq!(install(&src, &bin).unwrap(), Outcome::Installed);
        assert_eq!(fs::read(&dst).unwrap(), b"#!/bin/sh\necho v2\n");
        let mut names: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![PLUGIN_NAME.to_string(), STANDALONE.to_string()]);
        assert_eq!(
            fs::read(bin.join(STANDALONE)).unwrap(),
            b"#!/bin/sh\necho standalone\n"
        );
        assert!(install(&dir.join("missing"), &bin).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
