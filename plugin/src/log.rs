//! The plugin's log: one line per event, appended to `logFile` (never stdout, which carries the
//! CNI result). Logging failures are ignored: a full disk must not fail pod start-up.
//!
//! Size cap: before a line is written, a file at or over `logMaxBytes` (netconf; default
//! [`DEFAULT_MAX_BYTES`], 1 MiB) is renamed to `<logFile>.1`, replacing the older one, and
//! the line starts a new file. So the log takes at most about twice the cap on disk.
//!
//! Many plugin processes write at once (the runtime runs one per pod event). Each line is one
//! `write` on an `O_APPEND` descriptor: lines are never torn or interleaved. Rotation is
//! decided under a non-blocking `flock` on the full file, and the rename happens only if
//! `logFile` still names that very file (same inode): when two plugins find the file full at
//! the same moment, one renames it and the other, finding the lock taken or the name already
//! on a new file, does not rename again (which would push the full file out and keep an
//! almost empty `.1`); its line lands at the end of the file just rotated or in the new one.
//! Nothing waits on the lock. The file can pass the cap by the few lines written between the
//! check and the rename, never by more.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use crate::netconf::LogLevel;

/// The default cap of the log file (`logMaxBytes`).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct Log<'a> {
    pub file: &'a Path,
    pub level: LogLevel,
    /// Rotate when the file has this many bytes.
    pub max_bytes: u64,
}

/// `<file>.1`: where a full log goes.
pub fn rotated(file: &Path) -> PathBuf {
    let mut p = OsString::from(file.as_os_str());
    p.push(".1");
    PathBuf::from(p)
}

impl Log<'_> {
    pub fn write(&self, level: LogLevel, line: std::fmt::Arguments<'_>) {
        if level > self.level {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let tag = match level {
            LogLevel::Error => "ERROR",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        };
        let text = format!("{ts:.6} {tag} pid={} {line}\n", std::process::id());
        let f = self.open().or_else(|_| {
            if let Some(dir) = self.file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            self.open()
        });
        let Ok(f) = f else { return };
        let full = f.metadata().is_ok_and(|m| m.len() >= self.max_bytes);
        let f = if full { self.rotate(f) } else { Some(f) };
        if let Some(mut f) = f {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn open(&self) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(self.file)
    }

    /// Renames the full file `f` (open on `logFile`) to `.1` unless another plugin is doing
    /// or has done it (see the module docs); returns the file to write the line to.
    fn rotate(&self, f: File) -> Option<File> {
        let locked = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            // Another plugin is rotating this very file: write to it, it becomes `.1`.
            Err((f, _)) => return Some(f),
        };
        let same = match (locked.metadata(), std::fs::metadata(self.file)) {
            (Ok(ours), Ok(named)) => ours.ino() == named.ino() && ours.dev() == named.dev(),
            _ => false,
        };
        if same {
            let _ = std::fs::rename(self.file, rotated(self.file));
        }
        drop(locked);
        self.open().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_that_finds_the_file_rotated_does_not_rotate_again() {
        let dir = std::env::temp_dir().join(format!("vpcnet-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("plugin.log");
        let log = Log {
            file: &file,
            level: LogLevel::Info,
            max_bytes: 1024,
        };
        while std::fs::metadata(&file).map_or(0, |m| m.len()) < 1024 {
            log.write(LogLevel::Info, format_args!("{}", "x".repeat(100)));
        }
        let full = std::fs::read(&file).expect("log");
        // A second plugin opened the full file and is about to rotate it...
        let late = log.open().expect("open");
        // ...when the first one rotates it and writes the first line of the new file.
        log.write(LogLevel::Info, format_args!("first of the new file"));
        assert_eq!(std::fs::read(rotated(&file)).expect(".1"), full);
        // The second one must not push the full file out with the new one.
        let mut f = log.rotate(late).expect("a file to write to");
        f.write_all(b"second\n").expect("write");
        assert_eq!(std::fs::read(rotated(&file)).expect(".1"), full);
        let new = std::fs::read_to_string(&file).expect("new log");
        assert!(new.ends_with("first of the new file\nsecond\n"), "{new}");
        // Debug lines are not written at info.
        log.write(LogLevel::Debug, format_args!("chatter"));
        assert!(!std::fs::read_to_string(&file)
            .expect("log")
            .contains("chatter"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
