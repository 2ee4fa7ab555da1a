//! Process metrics of the agent itself, read from `/proc/self` when /metrics is scraped (no
//! background sampling), under the names every Prometheus client library uses, so the
//! usual process dashboards and alerts work unchanged:
//!
//! | metric | type | from |
//! |---|---|---|
//! | `process_resident_memory_bytes` | gauge | `/proc/self/stat` rss × page size |
//! | `process_virtual_memory_bytes` | gauge | `/proc/self/stat` vsize |
//! | `process_open_fds` | gauge | entries of `/proc/self/fd` |
//! | `process_max_fds` | gauge | `/proc/self/limits`, "Max open files" (soft) |
//! | `process_cpu_seconds_total` | counter | `/proc/self/stat` utime + stime ÷ clock ticks |
//! | `process_start_time_seconds` | gauge | `/proc/stat` btime + starttime ÷ clock ticks |
//! | `process_threads` | gauge | `/proc/self/stat` num_threads |
//!
//! A value that cannot be read is left as it was (0 before the first good read): a scrape
//! never fails because of these.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What `/proc/<pid>/stat` says that we use (fields 14, 15, 20, 22, 23, 24 of proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    // rest's first field is field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Stat {
        utime_ticks: n(14)?,
        stime_ticks: n(15)?,
        threads: n(20)?,
        start_ticks: n(22)?,
        vsize_bytes: n(23)?,
        rss_pages: n(24)?,
    })
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None` for "unlimited").
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let l = limits.lines().find(|l| l.starts_with("Max open files"))?;
    l["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, seconds since the epoch) of a `/proc/stat` text.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system constant; it takes no pointer and has no
    // preconditions. It returns -1 for an unknown name, which the conversion rejects.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

fn count_entries(dir: &Path) -> Option<u64> {
    let n = std::fs::read_dir(dir).ok()?.count();
    u64::try_from(n).ok()
}

fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// CPU time (user + system, every thread) this process has used so far, in microseconds
/// (`getrusage`: finer than the 10 ms ticks of `/proc/self/stat`).
pub fn cpu_micros() -> Option<u64> {
    rusage_micros(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of the children this process has waited for (the `nft` runs), in
/// microseconds.
pub fn children_cpu_micros() -> Option<u64> {
    rusage_micros(libc::RUSAGE_CHILDREN)
}

fn rusage_micros(who: libc::c_int) -> Option<u64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` through the pointer, which points to a zeroed
    // `rusage` we own for the duration of the call.
    if unsafe { libc::getrusage(who, ru.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage succeeded and filled the struct (which was zeroed before anyway).
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| {
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(us(ru.ru_utime).saturating_add(us(ru.ru_stime)))
}

/// Logs, once per phase name and process, `start-up phase=… cpu_ms=… children_cpu_ms=…`: the
/// CPU this process (and the children it ran: `nft`) has used up to the end of that start-up
/// phase (issue 10: `bench/scale.sh` takes them per phase over N starting agents). Later calls
/// with the same phase log nothing.
pub fn startup_phase(phase: &'static str) {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    {
        let mut seen = SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(&phase) {
            return;
        }
        seen.push(phase);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let cpu_ms = cpu_micros().map(ms);
    let children_cpu_ms = children_cpu_micros().map(ms);
    tracing::info!(phase, cpu_ms, children_cpu_ms, "start-up");
}

#[derive(Debug)]
pub struct ProcessMetrics {
    resident: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    start_time: Gauge<f64, AtomicU64>,
    threads: Gauge,
}

impl ProcessMetrics {
    /// Registers the metrics in `r` (which must have no prefix: these names are standard).
    pub fn register(r: &mut Registry) -> ProcessMetrics {
        let m = ProcessMetrics {
            resident: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            cpu_seconds: Counter::default(),
            start_time: Gauge::default(),
            threads: Gauge::default(),
        };
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            m.virtual_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            m.start_time.clone(),
        );
        r.register(
            "process_threads",
            "Number of OS threads in the process",
            m.threads.clone(),
        );
        m
    }

    /// Reads `/proc/self` (and `/proc/stat`) into the metrics.
    pub fn update(&self) {
        let proc = Path::new("/proc/self");
        let ticks = sysconf(libc::_SC_CLK_TCK);
        if let Some(s) = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            if let Some(page) = sysconf(libc::_SC_PAGESIZE) {
                self.resident.set(g(s.rss_pages.saturating_mul(page)));
            }
            self.virtual_bytes.set(g(s.vsize_bytes));
            self.threads.set(g(s.threads));
            if let Some(t) = ticks {
                #[allow(clippy::cast_precision_loss)] // ticks: far below 2^52
                let cpu = (s.utime_ticks + s.stime_ticks) as f64 / t as f64;
                // A counter only goes up: add what was spent since the last scrape.
                let delta = cpu - self.cpu_seconds.get();
                if delta > 0.0 {
                    self.cpu_seconds.inc_by(delta);
                }
                if let Some(btime) = std::fs::read_to_string("/proc/stat")
                    .ok()
                    .as_deref()
                    .and_then(parse_btime)
                {
                    #[allow(clippy::cast_precision_loss)]
                    self.start_time
                        .set(btime as f64 + s.start_ticks as f64 / t as f64);
                }
            }
        }
        if let Some(n) = count_entries(&proc.join("fd")) {
            // read_dir itself holds one descriptor on that directory while counting.
            self.open_fds.set(g(n.saturating_sub(1)));
        }
        if let Some(n) = std::fs::read_to_string(proc.join("limits"))
            .ok()
            .as_deref()
            .and_then(parse_max_fds)
        {
            self.max_fds.set(g(n));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_micros().expect("getrusage");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_micros().expect("getrusage");
        assert!(
            after >= before + 10_000,
            "{before} -> {after} µs after 30 ms busy"
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a ')' in it.
        let line = "4242 (vpc net) d) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                    250 75 0 0 20 0 3 0 123456 22020096 1536 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                threads: 3,
                start_ticks: 123_456,
                vsize_bytes: 22_020_096,
                rss_pages: 1536,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_and_btime() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1764670000\nprocesses 9\n"),
            Some(1_764_670_000)
        );
    }
}
