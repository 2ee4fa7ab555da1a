//! ADDs in flight: the plugin's proof to the agent that it is still working on an attachment.
//!
//! **Invariant.** Reconcile releases an allocation whose host veth is missing only when no ADD
//! of that attachment is in flight. Time alone cannot tell a dead plugin from a stalled one
//! (a runtime paused, a machine swapping, a plugin stopped in a debugger): a plugin stalled
//! between the agent's reply and creating its veth for longer than `--reconcile-grace` had its
//! address released under it and then handed to the next pod — one address, two pods.
//!
//! The proof is an exclusive `flock` on `<socket dir>/inflight/<host veth name>`, taken by the
//! plugin before it asks for an address and held until it exits. The kernel drops the lock when
//! the process ends however it ends, so a crashed plugin never protects its allocation for
//! long, and a live one (however slow) always does. The runtime ends a hung plugin at its own
//! timeout, which then ends the protection too.
//!
//! Lock files are removed by their holder when it is done (while still holding the lock) and by
//! the agent when it finds one unlocked (a crashed plugin's). Because a path can be unlinked
//! between a plugin's `open` and its `flock`, the plugin checks after locking that the path
//! still names the inode it locked, and starts over when it does not.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The directory of in-flight locks for the agent serving `socket`: beside the socket, so the
/// plugin (which knows only the socket from its netconf) and the agent agree on it.
pub fn dir_for(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/run/vpcnet"))
        .join("inflight")
}

fn lock_path(dir: &Path, host_veth: &str) -> PathBuf {
    dir.join(host_veth)
}

/// Held by the plugin for the whole ADD; dropping it removes the lock file and unlocks.
#[derive(Debug)]
pub struct AddInFlight {
    path: PathBuf,
    _lock: Flock<File>,
}

impl AddInFlight {
    /// Takes the in-flight lock of attachment `host_veth` (blocking while another ADD of the
    /// same attachment holds it: the runtime should never run two, and if it does they go one
    /// after the other).
    pub fn acquire(dir: &Path, host_veth: &str) -> io::Result<AddInFlight> {
        let path = lock_path(dir, host_veth);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        };
        loop {
            // The directory exists but on the first ADD after boot: made only then (two
            // syscalls fewer on every other ADD, issue 14).
            let file = match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                    open()?
                }
                other => other?,
            };
            let lock =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
            let held = lock.metadata()?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(AddInFlight { path, _lock: lock })
                }
                // The agent removed the file between our open and our lock: what we hold
                // guards nothing. Start over with the path as it is now.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for AddInFlight {
    fn drop(&mut self) {
        // Unlinked while still locked: nobody can take a lock on this inode and believe it
        // guards the path.
        let _ = fs::remove_file(&self.path);
    }
}

/// Is an ADD of attachment `host_veth` in flight? When the lock file exists but nobody holds
/// it (its plugin crashed), it is removed and the answer is no. When the answer cannot be
/// known (an I/O error other than "no such file"), it is yes: keeping an allocation a little
/// longer is harmless, releasing a live one is not.
pub fn is_in_flight(dir: &Path, host_veth: &str) -> bool {
    let path = lock_path(dir, host_veth);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let _ = fs::remove_file(&path);
            drop(lock);
            false
        }
        Err((_, _)) => true,
    }
}

/// Is any ADD in flight (a lock in `dir` held)? Unlike [`is_in_flight`] this removes
/// nothing: the veth reaper asks it often and only wants to know whether now is a quiet moment.
/// An unreadable directory counts as "no": the reaper's bound still applies.
pub fn any_in_flight(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| match OpenOptions::new().read(true).open(e.path()) {
            Ok(f) => Flock::lock(f, FlockArg::LockSharedNonblock).is_err(),
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vpcnet-inflight-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn held_lock_is_in_flight_and_dropped_lock_is_not() {
        let dir = scratch("held");
        assert!(
            !is_in_flight(&dir, "vpc00000000001"),
            "no file: not in flight"
        );
        let g = AddInFlight::acquire(&dir, "vpc00000000001").expect("acquire");
        assert!(is_in_flight(&dir, "vpc00000000001"));
        assert!(!is_in_flight(&dir, "vpc00000000002"), "another attachment");
        drop(g);
        assert!(
            !dir.join("vpc00000000001").exists(),
            "holder removes its file"
        );
        assert!(!is_in_flight(&dir, "vpc00000000001"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn any_in_flight_sees_a_held_lock_only() {
        let dir = scratch("any");
        assert!(!any_in_flight(&dir), "no dir");
        fs::create_dir_all(&dir).expect("dir");
        File::create(dir.join("vpc00000000004")).expect("leftover");
        assert!(!any_in_flight(&dir), "unlocked leftover");
        let g = AddInFlight::acquire(&dir, "vpc00000000005").expect("acquire");
        assert!(any_in_flight(&dir));
        drop(g);
        assert!(!any_in_flight(&dir));
        assert!(dir.join("vpc00000000004").exists(), "removes nothing");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn leftover_of_a_crashed_plugin_is_not_in_flight_and_is_removed() {
        let dir = scratch("crashed");
        fs::create_dir_all(&dir).expect("dir");
        File::create(dir.join("vpc00000000003")).expect("leftover");
        assert!(!is_in_flight(&dir, "vpc00000000003"));
        assert!(!dir.join("vpc00000000003").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_first_acquire_makes_a_private_directory_and_later_ones_reuse_it() {
        use std::os::unix::fs::PermissionsExt;
        let top = scratch("first");
        let dir = top.join("run").join("inflight");
        let g = AddInFlight::acquire(&dir, "vpc00000000006").expect("acquire, no dir yet");
        let mode = fs::metadata(&dir).expect("dir made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        assert!(is_in_flight(&dir, "vpc00000000006"));
        let h = AddInFlight::acquire(&dir, "vpc00000000007").expect("acquire, dir there");
        assert!(is_in_flight(&dir, "vpc00000000007"));
        drop((g, h));
        let _ = fs::remove_dir_all(&top);
    }

    #[test]
    fn lock_dir_is_beside_the_socket() {
        assert_eq!(
            dir_for(Path::new("/run/vpcnet/vpcnetd.sock")),
            PathBuf::from("/run/vpcnet/inflight")
        );
    }
}
