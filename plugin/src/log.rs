//! The plugin's log: one line per event, appended to `logFile` (never stdout, which carries the
//! CNI result). Logging failures are ignored: a full disk must not fail pod start-up.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::netconf::LogLevel;

#[derive(Debug)]
pub struct Log<'a> {
    pub file: &'a Path,
    pub level: LogLevel,
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
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.file)
        };
        let f = open().or_else(|_| {
            if let Some(dir) = self.file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            open()
        });
        if let Ok(mut f) = f {
            let _ = writeln!(f, "{ts:.6} {tag} pid={} {line}", std::process::id());
        }
    }
}
