//! Crash-safe persistence of the pool: a snapshot plus an append-only journal of
//! [`PoolEvent`]s. Every event is written before the agent replies, so a crash of the agent
//! (kill -9, OOM, upgrade: the page cache survives it) loses nothing the plugin was told. A
//! change of the node's prefixes is also `fdatasync`ed before it is acted on (the datastore's
//! claims follow it), and so is every change with `--journal-sync every-change`; a pod's
//! assignment or release is not, by default ([`JournalSync`]): only a crash of the machine
//! can lose it, and that kills every pod it describes. The journal is folded into
//! a new snapshot (write temp, fsync, rename, fsync dir) at start and every [`COMPACT_EVERY`]
//! events. Journal records carry a sequence number and the snapshot the last one it holds,
//! so a crash between writing a snapshot and truncating the journal replays nothing twice.
//!
//! Invariant (issue 9, item 3): **the agent starts with exactly the acknowledged state, or not
//! at all.** Every journal line is `<crc32 as 8 hex digits> <json>`; the snapshot carries the
//! CRC of its pool. On load:
//! * an incomplete last line (no newline) is a torn write — the only damage a crash does to
//!   an append — and was never acknowledged: it is dropped (and cut off before the next
//!   append). Unless it holds a whole valid record followed by other bytes: a damaged newline
//!   of an acknowledged record, not a torn write;
//! * a complete line whose checksum does not match, a line that is not a record, a gap or a
//!   step back in the sequence numbers (a lost or reordered record), or a repeated sequence
//!   number with other content, is damage: [`StoreError::Corrupt`] names the file and line,
//!   and the agent refuses to start. An exact repeat of a record already applied is skipped.
//!
//! A record holds one state change: one IPv4 event (`{"seq":…,"ev":…}`, the only shape an
//! IPv4-only node writes, so its journal stays readable by the previous version), or the
//! events of a change touching IPv6 — both families of one dual-stack attachment —
//! (`{"seq":…,"evs":[{"v4":…},{"v6":…}]}`, [`journal_record`]). Either is one line with one
//! checksum, so it is durable, torn or damaged as a whole, and replay applies it whole or
//! refuses the load ([`replay_dual`]).
//!
//! After a crash of the machine (the boot ID recorded in the state directory is not the
//! running kernel's, [`Tail::AfterReboot`]), the part of the journal that was never synced may
//! be lost, cut short, zeroed or stale: the load keeps the records before the first damaged
//! line and drops the rest (pods' changes of the previous boot, whose pods are all gone),
//! unless a whole record changing the prefixes follows the damage — that one was synced, so
//! the damage is real and the load is refused as above.
//!
//! Journals written before checksums (every line plain JSON) are still read, with the old
//! rules (no damage detection); the start-up compaction rewrites them in the new format. A
//! journal mixing both kinds of line is damage.
//!
//! Invariant (item 8): **memory never runs ahead of the disk.** A journal write that fails
//! (disk full, I/O error) is cut back off the file, and the caller ([`crate::node`])
//! puts the pool back as it was and fails the request; when the file cannot be cut back the
//! store is marked broken and the next change is written as a whole new snapshot instead.
//!
//! Invariant (item 9): **the state is readable by root only**: the directory is 0700 and
//! every file in it 0600 (fixed at start for files an older version left readable).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vpcnet_pool::{Pool, Pool6, PoolConfig, PoolConfig6, PoolEvent, PoolEvent6};

/// A record of one IPv4 event: `{"seq":…,"ev":…}` (the only shape before dual-stack, and
/// still the only one an IPv4-only node writes).
#[derive(Serialize, Deserialize)]
struct Record<E> {
    seq: u64,
    #[serde(flatten)]
    event: E,
}

/// One event of a record holding several, tagged with its family:
/// `{"v4":{"ev":…}}` or `{"v6":{"ev":…}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyEvent {
    V4(PoolEvent),
    V6(PoolEvent6),
}

/// A record of one state change touching IPv6 (dual-stack: both families of one
/// attachment): `{"seq":…,"evs":[…]}`, one line, one checksum, applied all-or-nothing.
#[derive(Serialize, Deserialize)]
struct MultiRecord<E> {
    seq: u64,
    evs: E,
}

/// Which shape a record has (serde ignores the other fields here).
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    evs: Option<serde::de::IgnoredAny>,
}

/// A journal record as read back.
enum Entry {
    One(PoolEvent),
    Many(Vec<FamilyEvent>),
}

fn parse_record(json: &[u8]) -> Result<(u64, Entry), serde_json::Error> {
    let shape: Shape = serde_json::from_slice(json)?;
    if shape.evs.is_some() {
        let r: MultiRecord<Vec<FamilyEvent>> = serde_json::from_slice(json)?;
        Ok((r.seq, Entry::Many(r.evs)))
    } else {
        let r: Record<PoolEvent> = serde_json::from_slice(json)?;
        Ok((r.seq, Entry::One(r.event)))
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot<P, P6> {
    seq: u64,
    /// CRC-32 of `serde_json::to_vec(&(seq, pool))`, or of `(seq, pool, pool6)` when there
    /// is an IPv6 pool; absent in snapshots written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc: Option<u32>,
    pool: P,
    /// The IPv6 pool (IPv6-only and dual-stack nodes); absent on IPv4-only nodes, whose
    /// snapshot is byte-identical to the previous version's. (Missing: `None`, as serde reads
    /// an absent `Option`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pool6: Option<P6>,
}

fn snapshot_body(seq: u64, pool: &Pool, pool6: Option<&Pool6>) -> serde_json::Result<Vec<u8>> {
    match pool6 {
        None => serde_json::to_vec(&(seq, pool)),
        Some(p6) => serde_json::to_vec(&(seq, pool, p6)),
    }
}

pub const SNAPSHOT: &str = "pool.json";
pub const JOURNAL: &str = "pool.journal";
const LOCK: &str = "lock";
/// The boot ID (`/proc/sys/kernel/random/boot_id`) of the boot that last opened the journal
/// for writing: another one on the next start means the machine went down meanwhile.
pub const BOOT_ID: &str = "boot_id";
const RUNNING_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// When the journal is flushed to the device (`fdatasync`) — `--journal-sync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalSync {
    /// Before a change of the node's prefixes (claimed into the pool, released from it) is
    /// acknowledged, and at every compaction. A pod's assignment or release is written before
    /// the reply — it survives any crash of the agent — but not flushed: a crash of the
    /// machine may lose the last ones, and it has killed every pod they describe (issue 14:
    /// the flush was ~0.2–0.3 ms of every ADD).
    #[default]
    Prefixes,
    /// Before every change is acknowledged, pods' too (one flush per ADD/DEL, or per batch of
    /// ADDs that arrived together).
    EveryChange,
}

impl JournalSync {
    fn needs_flush<'a>(self, mut evs: impl Iterator<Item = &'a FamilyEvent>) -> bool {
        match self {
            JournalSync::EveryChange => true,
            JournalSync::Prefixes => evs.any(|ev| match ev {
                FamilyEvent::V4(ev) => ev.changes_prefixes(),
                FamilyEvent::V6(ev) => ev.changes_prefixes(),
            }),
        }
    }
}

/// What may have happened to the journal's tail since it was written ([`replay_tail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Same boot: the page cache kept every write; only a torn last line is not damage.
    Exact,
    /// The machine went down since: unsynced writes may be lost, zeroed or stale.
    AfterReboot,
}

/// The running kernel's boot ID, if it can be read.
fn running_boot_id() -> Option<String> {
    fs::read_to_string(RUNNING_BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub const COMPACT_EVERY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("state directory {0} is in use by another vpcnetd")]
    Locked(String),
    #[error("{file} line {line} is corrupt: {msg}")]
    Corrupt {
        file: String,
        line: usize,
        msg: String,
    },
}

impl StoreError {
    /// The same error again, for each request of a batch that failed together (the group
    /// commit of [`crate::node::State::change_both_many`]): an I/O error keeps its OS code.
    pub fn copy(&self) -> StoreError {
        match self {
            StoreError::Io { dir, source } => StoreError::Io {
                dir: dir.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            StoreError::Locked(d) => StoreError::Locked(d.clone()),
            StoreError::Corrupt { file, line, msg } => StoreError::Corrupt {
                file: file.clone(),
                line: *line,
                msg: msg.clone(),
            },
        }
    }

    /// The disk (or the quota) is full: the write can succeed later.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

/// A locked, private state directory (0700, files 0600).
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Creates `dir` if needed, makes it and its files private, and takes its lock
    /// (non-blocking: another vpcnetd on the same directory is an error).
    pub fn lock(dir: &Path) -> Result<StateDir, StoreError> {
        let e = io_err(dir);
        fs::create_dir_all(dir).map_err(&e)?;
        let lock_file = create_private(&dir.join(LOCK), false).map_err(&e)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
        // Only once it is ours (a refused second agent changes nothing, not even modes).
        make_private(dir).map_err(&e)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Directory 0700, every regular file directly in it 0600 (group/other bits cleared).
fn make_private(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// Opens `path` for writing, creating it with mode 0600 (appending, or truncating it).
pub fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

#[derive(Debug)]
pub struct Store {
    dir: StateDir,
    journal: File,
    /// Length of the journal holding exactly the durable records.
    len: u64,
    since_compact: usize,
    seq: u64,
    /// Neither snapshot nor journal records existed when it was opened.
    fresh: bool,
    /// A failed write could not be cut back off the journal: the next change is written as
    /// a whole snapshot (which also empties the journal).
    broken: bool,
    /// Journal syncs since this store was opened (appends; one per change or batch).
    syncs: u64,
    /// Which appends are flushed.
    sync: JournalSync,
}

fn io_err(dir: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically and durably, mode 0600. On failure the temporary
/// file is removed (a full disk must not be left fuller).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let r = (|| {
        let mut f = create_private(&tmp, true)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// CRC-32 (IEEE 802.3, as zlib): detects every error burst of up to 32 bits.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn corrupt(file: &str, line: usize, msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: file.into(),
        line,
        msg: msg.into(),
    }
}

/// Parses a snapshot and checks its checksum; returns the pool and its sequence number. An
/// IPv4 pool alone: a snapshot holding an IPv6 pool is refused (see [`parse_snapshot_dual`]).
pub fn parse_snapshot(bytes: &[u8]) -> Result<(Pool, u64), StoreError> {
    match parse_snapshot_dual(bytes)? {
        (pool, None, seq) => Ok((pool, seq)),
        (_, Some(_), _) => Err(corrupt(
            SNAPSHOT,
            1,
            "an IPv6 pool, but no IPv6 --vpc-cidr is set",
        )),
    }
}

/// Parses a snapshot of one or both families and checks its checksum.
pub fn parse_snapshot_dual(bytes: &[u8]) -> Result<(Pool, Option<Pool6>, u64), StoreError> {
    let snap: Snapshot<Pool, Pool6> = serde_json::from_slice(bytes)
        .map_err(|err| corrupt(SNAPSHOT, err.line(), err.to_string()))?;
    if let Some(crc) = snap.crc {
        let body = snapshot_body(snap.seq, &snap.pool, snap.pool6.as_ref())
            .map_err(|err| corrupt(SNAPSHOT, 0, err.to_string()))?;
        if crc32(&body) != crc {
            return Err(corrupt(SNAPSHOT, 1, "checksum mismatch"));
        }
    }
    Ok((snap.pool, snap.pool6, snap.seq))
}

/// A snapshot file holding `pool` as of journal record `seq`.
pub fn snapshot_bytes(seq: u64, pool: &Pool) -> Result<Vec<u8>, StoreError> {
    snapshot_bytes_dual(seq, pool, None)
}

/// A snapshot file holding both pools (without `pool6`: exactly [`snapshot_bytes`]).
pub fn snapshot_bytes_dual(
    seq: u64,
    pool: &Pool,
    pool6: Option<&Pool6>,
) -> Result<Vec<u8>, StoreError> {
    let body =
        snapshot_body(seq, pool, pool6).map_err(|err| corrupt(SNAPSHOT, 0, err.to_string()))?;
    serde_json::to_vec(&Snapshot {
        seq,
        crc: Some(crc32(&body)),
        pool,
        pool6,
    })
    .map_err(|err| corrupt(SNAPSHOT, 0, err.to_string()))
}

/// One journal line: `<crc32 8 hex> <json>\n`, appended to `out`.
pub fn journal_line(seq: u64, ev: &PoolEvent, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let json = serde_json::to_vec(&Record { seq, event: ev })
        .map_err(|err| corrupt(JOURNAL, 0, err.to_string()))?;
    write!(out, "{:08x} ", crc32(&json)).map_err(|err| corrupt(JOURNAL, 0, err.to_string()))?;
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

/// One journal line for one state change: a single IPv4 event is written exactly as
/// [`journal_line`] writes it (an IPv4-only node's journal stays readable by the previous
/// version); anything else (an IPv6 event, or the events of both families of one dual-stack
/// attachment) as one `{"seq":…,"evs":[…]}` record with one checksum.
pub fn journal_record(seq: u64, evs: &[FamilyEvent], out: &mut Vec<u8>) -> Result<(), StoreError> {
    if let [FamilyEvent::V4(ev)] = evs {
        return journal_line(seq, ev, out);
    }
    let json = serde_json::to_vec(&MultiRecord { seq, evs })
        .map_err(|err| corrupt(JOURNAL, 0, err.to_string()))?;
    write!(out, "{:08x} ", crc32(&json)).map_err(|err| corrupt(JOURNAL, 0, err.to_string()))?;
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

/// What [`replay`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Last sequence number applied (or the snapshot's).
    pub seq: u64,
    /// Bytes of the journal that hold whole records; anything after is a torn write.
    pub valid_len: u64,
    /// Records applied.
    pub applied: usize,
    /// Lines dropped after a damaged one ([`Tail::AfterReboot`] only; counting it).
    pub dropped: usize,
}

/// A line's record with its checksum, verified; `true`: a legacy (plain JSON) line.
fn parse_line(line: &[u8]) -> Result<((u64, Entry), u32, bool), String> {
    if line.first() == Some(&b'{') {
        let rec = parse_record(line).map_err(|e| e.to_string())?;
        return Ok((rec, crc32(line), true));
    }
    let (head, json) = match (line.get(..8), line.get(8), line.get(9..)) {
        (Some(h), Some(b' '), Some(j)) => (h, j),
        _ => return Err("not a journal record".into()),
    };
    // Exactly as written: 8 lowercase hex digits (from_str_radix alone would take "A").
    let want = std::str::from_utf8(head)
        .ok()
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad checksum field")?;
    if crc32(json) != want {
        return Err("checksum mismatch".into());
    }
    let rec = parse_record(json).map_err(|e| e.to_string())?;
    Ok((rec, want, false))
}

/// Applies the journal `bytes` newer than `snap_seq` to `pool` (see the module doc for what
/// is a torn write and what is damage). Pure: the property tests drive it directly. An IPv4
/// pool alone: a record holding an IPv6 event is refused (see [`replay_dual`]).
pub fn replay(bytes: &[u8], pool: &mut Pool, snap_seq: u64) -> Result<Replayed, StoreError> {
    replay_dual(bytes, pool, None, snap_seq)
}

/// [`replay`] for both families: IPv4 events go to `pool`, IPv6 ones to `pool6`. A record is
/// applied all-or-nothing: if any of its events does not apply, or it holds an IPv6 event
/// and there is no IPv6 pool (no IPv6 `--vpc-cidr`), the whole load fails naming the line
/// (the caller discards the pools: nothing half-applied is ever used).
pub fn replay_dual(
    bytes: &[u8],
    pool: &mut Pool,
    pool6: Option<&mut Pool6>,
    snap_seq: u64,
) -> Result<Replayed, StoreError> {
    replay_tail(bytes, pool, pool6, snap_seq, Tail::Exact)
}

/// [`replay_dual`], with `tail` saying whether the machine went down since the journal was
/// written. [`Tail::AfterReboot`]: the first damaged line and everything after it are dropped
/// (counted in [`Replayed::dropped`]; `valid_len` ends before it, so the store cuts it off)
/// instead of refusing the load — unless a whole record changing the prefixes, newer than the
/// last one applied, follows: such a record was synced, and a sync makes everything before it
/// durable, so damage before it is not a lost tail. Each record is applied all-or-nothing
/// either way (a savepoint per record).
pub fn replay_tail(
    bytes: &[u8],
    pool: &mut Pool,
    mut pool6: Option<&mut Pool6>,
    snap_seq: u64,
    tail: Tail,
) -> Result<Replayed, StoreError> {
    let mut last = snap_seq;
    let mut applied = 0;
    // Checksums of the records applied, by sequence number (to tell a repeat from damage).
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut legacy: Option<bool> = None;
    let mut pos = 0usize;
    let mut line_no = 0usize;
    let mut dropped = 0;
    while pos < bytes.len() {
        line_no += 1;
        let start = pos;
        let step = replay_line(
            bytes,
            &mut pos,
            line_no,
            pool,
            pool6.as_deref_mut(),
            snap_seq,
            (&mut last, &mut seen, &mut legacy),
        );
        match step {
            Ok(Line::Applied) => applied += 1,
            Ok(Line::Skipped) => {}
            Ok(Line::Torn) => break,
            Err(err) if tail == Tail::Exact => return Err(err),
            Err(err) => {
                if let Some(n) = synced_after(&bytes[start..], last) {
                    return Err(corrupt(
                        JOURNAL,
                        line_no + n,
                        format!(
                            "a prefix change (synced) after damaged line {line_no} ({err}): \
                             not a tail lost with the machine"
                        ),
                    ));
                }
                dropped = bytes[start..]
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
                tracing::warn!(
                    line = line_no,
                    dropped,
                    error = %err,
                    "journal: the machine went down since it was written; its unsynced tail \
                     from the damaged line on is dropped (pods of the previous boot)"
                );
                pos = start;
                break;
            }
        }
    }
    Ok(Replayed {
        seq: last,
        valid_len: u64::try_from(pos).unwrap_or(u64::MAX),
        applied,
        dropped,
    })
}

/// What one journal line did.
enum Line {
    Applied,
    /// Empty, already in the snapshot, or an exact repeat.
    Skipped,
    /// An incomplete last line: a torn write, never acknowledged (`pos` stays before it).
    Torn,
}

/// The line at `*pos`: checked and applied to the pools all-or-nothing; `*pos` moves past it.
#[allow(clippy::type_complexity)]
fn replay_line(
    bytes: &[u8],
    pos: &mut usize,
    line_no: usize,
    pool: &mut Pool,
    pool6: Option<&mut Pool6>,
    snap_seq: u64,
    (last, seen, legacy): (&mut u64, &mut HashMap<u64, u32>, &mut Option<bool>),
) -> Result<Line, StoreError> {
    let rest = &bytes[*pos..];
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        // Incomplete last line: torn, unless a whole record sits in it followed by more
        // bytes (a damaged newline: that record was acknowledged).
        let damaged = rest
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'}' && i + 1 < rest.len())
            .any(|(i, _)| parse_line(&rest[..=i]).is_ok());
        if damaged {
            return Err(corrupt(
                JOURNAL,
                line_no,
                "a complete record without its newline, followed by other bytes",
            ));
        }
        return Ok(Line::Torn);
    };
    let line = &rest[..nl];
    *pos += nl + 1;
    if line.is_empty() {
        return Ok(Line::Skipped);
    }
    let ((rec_seq, entry), crc, is_legacy) =
        parse_line(line).map_err(|msg| corrupt(JOURNAL, line_no, msg))?;
    if *legacy.get_or_insert(is_legacy) != is_legacy {
        return Err(corrupt(
            JOURNAL,
            line_no,
            "checksummed and plain records mixed",
        ));
    }
    if rec_seq <= snap_seq {
        // Already in the snapshot (a crash fell between snapshot and truncate).
        return Ok(Line::Skipped);
    }
    if rec_seq <= *last {
        if seen.get(&rec_seq) == Some(&crc) {
            return Ok(Line::Skipped); // an exact repeat of a record applied
        }
        return Err(corrupt(
            JOURNAL,
            line_no,
            format!("sequence number {rec_seq} after {last}"),
        ));
    }
    if rec_seq != *last + 1 {
        return Err(corrupt(
            JOURNAL,
            line_no,
            format!("sequence number {rec_seq} after {last}: records missing"),
        ));
    }
    apply_entry(entry, pool, pool6).map_err(|msg| corrupt(JOURNAL, line_no, msg))?;
    seen.insert(rec_seq, crc);
    *last = rec_seq;
    Ok(Line::Applied)
}

/// Applies one record's events to the pools, all or none of them.
fn apply_entry(entry: Entry, pool: &mut Pool, mut pool6: Option<&mut Pool6>) -> Result<(), String> {
    let sp = pool.savepoint();
    let sp6 = pool6.as_deref_mut().map(Pool6::savepoint);
    let applied = match entry {
        Entry::One(ev) => pool.apply(&ev).map_err(|err| err.to_string()),
        Entry::Many(evs) => evs
            .iter()
            .try_for_each(|ev| match (ev, pool6.as_deref_mut()) {
                (FamilyEvent::V4(ev), _) => pool.apply(ev).map_err(|err| err.to_string()),
                (FamilyEvent::V6(ev), Some(p6)) => p6.apply(ev).map_err(|err| err.to_string()),
                (FamilyEvent::V6(_), None) => {
                    Err("an IPv6 record, but no IPv6 --vpc-cidr is set".to_string())
                }
            }),
    };
    match applied {
        Ok(()) => {
            pool.commit(sp);
            if let (Some(p6), Some(sp6)) = (pool6, sp6) {
                p6.commit(sp6);
            }
        }
        Err(_) => {
            pool.rollback_to(sp);
            if let (Some(p6), Some(sp6)) = (pool6, sp6) {
                p6.rollback_to(sp6);
            }
        }
    }
    applied
}

/// In `rest` (from a damaged line on), the line number (counted from it, 0 = itself: a whole
/// record that did not apply) of the first whole record newer than `last` that changes the
/// prefixes: one that was synced, so nothing before it was lost with the machine.
fn synced_after(rest: &[u8], last: u64) -> Option<usize> {
    let mut lines = rest.split(|&b| b == b'\n');
    // The last piece has no newline: never a whole record.
    lines.next_back();
    lines.enumerate().find_map(|(n, line)| {
        let ((seq, entry), _, _) = parse_line(line).ok()?;
        let prefixes = match &entry {
            Entry::One(ev) => ev.changes_prefixes(),
            Entry::Many(evs) => evs.iter().any(|ev| match ev {
                FamilyEvent::V4(ev) => ev.changes_prefixes(),
                FamilyEvent::V6(ev) => ev.changes_prefixes(),
            }),
        };
        (seq > last && prefixes).then_some(n)
    })
}

/// Loads snapshot (if any) and journal bytes into a pool configured with `cfg`. Pure.
pub fn load(
    snapshot: Option<&[u8]>,
    journal: &[u8],
    cfg: PoolConfig,
) -> Result<(Pool, Replayed), StoreError> {
    let (pool, _, r) = load_dual(snapshot, journal, cfg, None)?;
    Ok((pool, r))
}

/// [`load`] for both families: with `cfg6` (an IPv6 `--vpc-cidr` is set) the IPv6 pool is
/// loaded too (empty if the state has none yet: a node that turns dual-stack keeps its IPv4
/// state); without it, IPv6 state on disk is refused naming the flag. Pure.
pub fn load_dual(
    snapshot: Option<&[u8]>,
    journal: &[u8],
    cfg: PoolConfig,
    cfg6: Option<PoolConfig6>,
) -> Result<(Pool, Option<Pool6>, Replayed), StoreError> {
    load_tail(snapshot, journal, cfg, cfg6, Tail::Exact)
}

/// [`load_dual`] with the journal's tail read as [`replay_tail`] reads it. Pure.
pub fn load_tail(
    snapshot: Option<&[u8]>,
    journal: &[u8],
    cfg: PoolConfig,
    cfg6: Option<PoolConfig6>,
    tail: Tail,
) -> Result<(Pool, Option<Pool6>, Replayed), StoreError> {
    let (mut pool, pool6, snap_seq) = match snapshot {
        Some(bytes) => {
            let (mut p, p6, seq) = parse_snapshot_dual(bytes)?;
            p.set_config(cfg);
            (p, p6, seq)
        }
        None => (Pool::new(cfg), None, 0),
    };
    let mut pool6 = match (pool6, cfg6) {
        (Some(mut p6), Some(c6)) => {
            p6.set_config(c6);
            Some(p6)
        }
        (None, Some(c6)) => Some(Pool6::new(c6)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(corrupt(
                SNAPSHOT,
                1,
                "an IPv6 pool, but no IPv6 --vpc-cidr is set",
            ))
        }
    };
    let r = replay_tail(journal, &mut pool, pool6.as_mut(), snap_seq, tail)?;
    Ok((pool, pool6, r))
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

impl Store {
    /// Opens (creating) the state directory, takes its lock, and loads snapshot + journal
    /// into a pool configured with `cfg`. A torn last record is cut off; nothing else is
    /// written (the caller compacts once it has checked the state against the host).
    pub fn open(dir: &Path, cfg: PoolConfig) -> Result<(Store, Pool), StoreError> {
        Store::load(StateDir::lock(dir)?, cfg)
    }

    /// [`Store::open`] on a directory already locked.
    pub fn load(dir: StateDir, cfg: PoolConfig) -> Result<(Store, Pool), StoreError> {
        let (store, pool, _) = Store::load_dual(dir, cfg, None)?;
        Ok((store, pool))
    }

    /// [`Store::open`] for both families ([`load_dual`]): with `cfg6`, the IPv6 pool too.
    pub fn open_dual(
        dir: &Path,
        cfg: PoolConfig,
        cfg6: Option<PoolConfig6>,
    ) -> Result<(Store, Pool, Option<Pool6>), StoreError> {
        Store::load_dual(StateDir::lock(dir)?, cfg, cfg6)
    }

    /// [`Store::open_dual`] on a directory already locked.
    pub fn load_dual(
        dir: StateDir,
        cfg: PoolConfig,
        cfg6: Option<PoolConfig6>,
    ) -> Result<(Store, Pool, Option<Pool6>), StoreError> {
        let d = dir.path().to_path_buf();
        let e = io_err(&d);
        let snap = read_optional(&d.join(SNAPSHOT)).map_err(&e)?;
        let journal_bytes = read_optional(&d.join(JOURNAL)).map_err(&e)?;
        // Which boot wrote the journal last: if not this one, its unsynced tail may be gone.
        let recorded = read_optional(&d.join(BOOT_ID))
            .map_err(&e)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        let running = running_boot_id();
        let tail = match (&recorded, &running) {
            (Some(was), Some(now)) if was != now => Tail::AfterReboot,
            _ => Tail::Exact,
        };
        let (pool, pool6, r) = load_tail(
            snap.as_deref(),
            journal_bytes.as_deref().unwrap_or_default(),
            cfg,
            cfg6,
            tail,
        )?;
        let fresh = snap.is_none() && r.applied == 0;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(d.join(JOURNAL))
            .map_err(&e)?;
        let on_disk = journal.metadata().map_err(&e)?.len();
        if on_disk > r.valid_len {
            // A torn write (or a tail lost with the machine): cut it off so the next record
            // starts a line.
            journal.set_len(r.valid_len).map_err(&e)?;
            journal.sync_all().map_err(&e)?;
        }
        // Before anything unsynced is appended in this boot.
        if let Some(now) = running.filter(|now| recorded.as_ref() != Some(now)) {
            write_atomic(&d, BOOT_ID, now.as_bytes()).map_err(&e)?;
        }
        Ok((
            Store {
                dir,
                journal,
                len: r.valid_len,
                since_compact: r.applied,
                seq: r.seq,
                fresh,
                broken: false,
                syncs: 0,
                sync: JournalSync::default(),
            },
            pool,
            pool6,
        ))
    }

    /// Journal syncs of appends since the store was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Which appends are flushed from now on (`--journal-sync`).
    pub fn set_sync(&mut self, sync: JournalSync) {
        self.sync = sync;
    }

    /// Neither a snapshot nor journal records existed: the state is new (or was lost).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Journals `evs` (already applied to `pool`; flushed as [`JournalSync`] says). On
    /// error nothing of them is written and the caller must undo them in memory.
    pub fn persist(&mut self, evs: &[PoolEvent], pool: &Pool) -> Result<(), StoreError> {
        if evs.is_empty() {
            return Ok(());
        }
        if self.broken {
            // The journal's tail is unknown: write everything as a new snapshot instead.
            self.compact(pool)?;
            return Ok(());
        }
        let flush =
            self.sync == JournalSync::EveryChange || evs.iter().any(PoolEvent::changes_prefixes);
        self.append_all(evs, flush)
    }

    /// Journals one state change as one record ([`journal_record`]; flushed as
    /// [`JournalSync`] says): the events of both families of a dual-stack attachment
    /// (already applied to `pool` and `pool6`). On error nothing of them is written and the
    /// caller must undo them in memory, in both pools. A store holding IPv6 state must be
    /// compacted with [`Store::compact_dual`]. (One change of [`Store::persist_changes`].)
    pub fn persist_change(
        &mut self,
        evs: &[FamilyEvent],
        pool: &Pool,
        pool6: Option<&Pool6>,
    ) -> Result<(), StoreError> {
        self.persist_changes(&[evs], pool, pool6)
    }

    /// Test builds: replaces the journal file (e.g. with `/dev/full`), returning the old one.
    #[cfg(test)]
    pub fn swap_journal(&mut self, file: File) -> File {
        std::mem::replace(&mut self.journal, file)
    }

    /// Several changes in one write, flushed (if [`JournalSync`] says so for any of them)
    /// with one sync (group commit): one record per non-empty change, in order. On error
    /// none of them is written and the caller must undo all of them in memory.
    pub fn persist_changes<C: AsRef<[FamilyEvent]>>(
        &mut self,
        changes: &[C],
        pool: &Pool,
        pool6: Option<&Pool6>,
    ) -> Result<(), StoreError> {
        if changes.iter().all(|evs| evs.as_ref().is_empty()) {
            return Ok(());
        }
        if self.broken {
            self.compact_dual(pool, pool6)?;
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut seq = self.seq;
        for evs in changes
            .iter()
            .map(AsRef::as_ref)
            .filter(|evs| !evs.is_empty())
        {
            seq += 1;
            journal_record(seq, evs, &mut buf)?;
        }
        let records = usize::try_from(seq - self.seq).unwrap_or(usize::MAX);
        let flush = self
            .sync
            .needs_flush(changes.iter().flat_map(|evs| evs.as_ref().iter()));
        self.append_buf(&buf, seq, records, flush)
    }

    /// Appends several events in one write (flushed with one sync if `flush`). A failed
    /// write is cut back off the file.
    fn append_all(&mut self, evs: &[PoolEvent], flush: bool) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut seq = self.seq;
        for ev in evs {
            seq += 1;
            journal_line(seq, ev, &mut buf)?;
        }
        self.append_buf(&buf, seq, evs.len(), flush)
    }

    /// Appends `buf` (`records` whole records, the last numbered `seq`) in one write, and
    /// flushes it with one `fdatasync` if `flush` ([`JournalSync`]). A failed write is cut
    /// back off the file.
    fn append_buf(
        &mut self,
        buf: &[u8],
        seq: u64,
        records: usize,
        flush: bool,
    ) -> Result<(), StoreError> {
        let d = self.dir.path().to_path_buf();
        let e = io_err(&d);
        let written = self.journal.write_all(buf).and_then(|()| {
            if flush {
                self.journal.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(err) = written {
            // Cut the failed write back off. If that cannot be made durable either, the
            // file's tail is unknown: the next change rewrites the state as a snapshot (whose
            // sequence number covers whatever of this write reached the disk).
            let cut = self
                .journal
                .set_len(self.len)
                .and_then(|()| self.journal.sync_all());
            if let Err(cut_err) = cut {
                tracing::error!(
                    journal = %d.join(JOURNAL).display(),
                    error = %cut_err,
                    "cannot cut a failed journal write back off (the next change rewrites the state)"
                );
                self.seq = seq;
                self.broken = true;
            }
            return Err(e(err));
        }
        self.len += u64::try_from(buf.len()).unwrap_or(u64::MAX);
        self.seq = seq;
        self.since_compact += records;
        if flush {
            self.syncs += 1;
        }
        crate::obs::metrics::get().journal_appended(records, flush);
        Ok(())
    }

    pub fn needs_compaction(&self) -> bool {
        self.since_compact >= COMPACT_EVERY
    }

    /// Folds the journal into a new snapshot of `pool` and empties the journal. The snapshot
    /// records the last sequence number it holds, so a crash before the truncate is harmless.
    /// Ok only when both happened: a broken store is repaired only then.
    pub fn compact(&mut self, pool: &Pool) -> Result<(), StoreError> {
        self.compact_dual(pool, None)
    }

    /// [`Store::compact`] of both pools (without `pool6`: exactly [`Store::compact`]).
    pub fn compact_dual(&mut self, pool: &Pool, pool6: Option<&Pool6>) -> Result<(), StoreError> {
        let d = self.dir.path().to_path_buf();
        let e = io_err(&d);
        let bytes = snapshot_bytes_dual(self.seq, pool, pool6)?;
        write_atomic(&d, SNAPSHOT, &bytes).map_err(&e)?;
        self.journal.set_len(0).map_err(&e)?;
        self.journal.sync_all().map_err(&e)?;
        self.len = 0;
        self.since_compact = 0;
        self.broken = false;
        Ok(())
    }

    /// Replaces the state with `pool` and `pool6` (for `vpcnetd rebuild-state`): the old files are kept
    /// as `<name>.bad-<unix seconds>` for the operator.
    pub fn replace(
        dir: StateDir,
        pool: &Pool,
        pool6: Option<&Pool6>,
        stamp: u64,
    ) -> Result<(), StoreError> {
        let d = dir.path().to_path_buf();
        let e = io_err(&d);
        for name in [SNAPSHOT, JOURNAL] {
            let from = d.join(name);
            if from.exists() {
                fs::rename(&from, d.join(format!("{name}.bad-{stamp}"))).map_err(&e)?;
            }
        }
        write_atomic(&d, SNAPSHOT, &snapshot_bytes_dual(0, pool, pool6)?).map_err(&e)?;
        create_private(&d.join(JOURNAL), true)
            .and_then(|f| f.sync_all())
            .map_err(&e)?;
        fsync_dir(&d).map_err(&e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vpcnet_pool::{AllocKey, Allocation, PodMeta};

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn cfg() -> PoolConfig {
        PoolConfig {
            vpc_cidrs: vec!["10.0.0.0/24".parse().unwrap()],
            ..Default::default()
        }
    }

    fn events() -> Vec<PoolEvent> {
        let prefix = "10.0.0.0/28".parse().unwrap();
        let mut v = vec![PoolEvent::PrefixAdded { prefix, at: 1 }];
        for i in 1..4u8 {
            v.push(PoolEvent::Assigned {
                alloc: Allocation {
                    ip: std::net::Ipv4Addr::new(10, 0, 0, i),
                    key: AllocKey {
                        network: "n".into(),
                        container_id: format!("c{i}"),
                        ifname: "eth0".into(),
                    },
                    meta: PodMeta::default(),
                    assigned_at: 2,
                },
            });
        }
        v
    }

    fn journal(evs: &[PoolEvent]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, ev) in evs.iter().enumerate() {
            journal_line(i as u64 + 1, ev, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn torn_tail_dropped_damage_refused() {
        let j = journal(&events());
        let (pool, r) = load(None, &j, cfg()).unwrap();
        assert_eq!(pool.allocations().count(), 3);
        assert_eq!(r.valid_len, j.len() as u64);
        // Torn: the last line cut short.
        let (pool, r) = load(None, &j[..j.len() - 5], cfg()).unwrap();
        assert_eq!(pool.allocations().count(), 2);
        assert!(r.valid_len < j.len() as u64 - 5);
        // One byte of the last complete record damaged.
        let mut d = j.clone();
        let n = d.len();
        d[n - 2] = b'x';
        let err = load(None, &d, cfg()).unwrap_err();
        assert!(err.to_string().contains("pool.journal line 4"), "{err}");
        // Its newline damaged.
        let mut d = j.clone();
        d[n - 1] = b'x';
        assert!(load(None, &d, cfg()).is_err());
        // Lines swapped.
        let lines: Vec<&[u8]> = j.split_inclusive(|&b| b == b'\n').collect();
        let swapped = [lines[0], lines[2], lines[1], lines[3]].concat();
        assert!(load(None, &swapped, cfg()).is_err());
        // A line repeated: harmless.
        let dup = [lines[0], lines[1], lines[1], lines[2], lines[3]].concat();
        assert_eq!(
            load(None, &dup, cfg()).unwrap().0,
            load(None, &j, cfg()).unwrap().0
        );
    }

    /// After a crash of the machine the unsynced tail may come back zeroed, cut or stale:
    /// the load keeps what precedes the damage and drops the rest — but only after a reboot
    /// (in the same boot the page cache kept every write, so damage is damage), and never
    /// past a prefix change that follows the damage (that one was synced: real damage).
    #[test]
    fn after_a_reboot_a_damaged_unsynced_tail_is_dropped() {
        let mut evs = events();
        evs.push(PoolEvent::Released {
            key: AllocKey {
                network: "n".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            ip: std::net::Ipv4Addr::new(10, 0, 0, 1),
            cool_until: 5,
        });
        let j = journal(&evs);
        let lines: Vec<&[u8]> = j.split_inclusive(|&b| b == b'\n').collect();
        let upto = |n: usize| lines[..n].concat();
        let tail = |bytes: &[u8]| load_tail(None, bytes, cfg(), None, Tail::AfterReboot);
        // Line 3 zeroed (a page never written) with lines 4 and 5 intact after it.
        let mut zeroed = j.clone();
        let at = upto(2).len();
        zeroed[at..at + lines[2].len() - 1].fill(0);
        let err = load(None, &zeroed, cfg()).unwrap_err();
        assert!(err.to_string().contains("pool.journal line 3"), "{err}");
        let (pool, _, r) = tail(&zeroed).unwrap();
        assert_eq!(
            pool,
            load(None, &upto(2), cfg()).unwrap().0,
            "lines 1-2 only"
        );
        assert_eq!((r.valid_len, r.dropped, r.applied), (at as u64, 3, 2));
        // Zeros past the last record (the size grew, the data never came).
        let mut padded = j.clone();
        padded.extend_from_slice(&[0; 300]);
        assert!(
            load(None, &padded, cfg()).is_ok(),
            "no newline: a torn tail"
        );
        padded.push(b'\n');
        assert!(load(None, &padded, cfg()).is_err());
        let (pool, _, r) = tail(&padded).unwrap();
        assert_eq!(pool, load(None, &j, cfg()).unwrap().0);
        assert_eq!((r.valid_len, r.dropped), (j.len() as u64, 1));
        // Stale records of an older journal where new ones should be (sequence numbers
        // stepping back): dropped too.
        let mut stale = upto(4);
        journal_line(2, &evs[4], &mut stale).unwrap();
        journal_line(3, &evs[3], &mut stale).unwrap();
        assert!(load(None, &stale, cfg()).is_err());
        assert_eq!(
            tail(&stale).unwrap().0,
            load(None, &upto(4), cfg()).unwrap().0
        );
        // A record is never kept half: one whose second event does not apply (an IPv6 one,
        // and this node has no IPv6 pool) is dropped whole, its IPv4 assignment too.
        let mut half = upto(2);
        let both = [
            FamilyEvent::V4(evs[2].clone()),
            FamilyEvent::V6(PoolEvent6::Assigned {
                alloc: vpcnet_pool::Allocation6 {
                    ip: "fd00:10::2".parse().unwrap(),
                    key: key("c2"),
                    meta: PodMeta::default(),
                    assigned_at: 2,
                },
            }),
        ];
        journal_record(3, &both, &mut half).unwrap();
        let (pool, _, r) = tail(&half).unwrap();
        assert_eq!(pool, load(None, &upto(2), cfg()).unwrap().0);
        assert_eq!(r.dropped, 1);
        // A whole prefix change that does not apply is not a lost tail either.
        let mut bad = upto(5);
        journal_line(6, &evs[0], &mut bad).unwrap(); // the same prefix added twice
        assert!(tail(&bad).is_err());
        // A synced prefix change after the damage: refused, naming its line.
        let prefix2 = PoolEvent::PrefixAdded {
            prefix: "10.0.0.16/28".parse().unwrap(),
            at: 9,
        };
        let mut later = zeroed.clone();
        journal_line(evs.len() as u64 + 1, &prefix2, &mut later).unwrap();
        let err = tail(&later).unwrap_err();
        assert!(
            err.to_string().contains("pool.journal line 6")
                && err.to_string().contains("damaged line 3"),
            "{err}"
        );
        // The same prefix change as an unsynced stale record (older than the last applied)
        // does not count.
        let mut old = zeroed.clone();
        journal_line(1, &evs[0], &mut old).unwrap();
        assert!(tail(&old).is_ok());
    }

    /// The store reads the tail leniently only when the boot that last wrote it is not the
    /// running one, and records the running boot before it appends anything.
    #[test]
    fn the_store_knows_a_reboot_from_its_boot_id() {
        let Some(now) = running_boot_id() else {
            panic!("{RUNNING_BOOT_ID} unreadable");
        };
        let dir = Scratch::new("boot");
        let mut j = journal(&events());
        let at = j.len();
        j.extend_from_slice(&[0; 40]);
        j.push(b'\n');
        let open_with = |boot: Option<&str>| {
            let _ = fs::remove_dir_all(&dir.0);
            fs::create_dir_all(&dir.0).unwrap();
            fs::write(dir.0.join(JOURNAL), &j).unwrap();
            if let Some(b) = boot {
                fs::write(dir.0.join(BOOT_ID), format!("{b}\n")).unwrap();
            }
            let r = Store::open(&dir.0, cfg()).map(|(_, pool)| pool);
            (r, fs::read_to_string(dir.0.join(BOOT_ID)).ok())
        };
        // Same boot: damage is refused, nothing written.
        let (r, boot) = open_with(Some(&now));
        assert!(
            matches!(r, Err(StoreError::Corrupt { line: 5, .. })),
            "{r:?}"
        );
        assert_eq!(boot.as_deref().map(str::trim), Some(now.as_str()));
        // No record (a version that flushed every change): the same.
        let (r, boot) = open_with(None);
        assert!(r.is_err());
        assert_eq!(boot, None);
        // Another boot: the zeroed tail is cut off and the running boot recorded.
        let (r, boot) = open_with(Some("00000000-0000-0000-0000-000000000000"));
        assert_eq!(r.unwrap().allocations().count(), 3);
        assert_eq!(boot.as_deref(), Some(now.as_str()));
        assert_eq!(fs::metadata(dir.0.join(JOURNAL)).unwrap().len(), at as u64);
    }

    /// The IPv4 journal format, byte for byte (an IPv4-only node must keep writing exactly
    /// this, so that the previous version can read its journal after a rollback), whether
    /// written as an event or as a one-event change.
    #[test]
    fn ipv4_lines_are_pinned_byte_for_byte() {
        let evs = events();
        let mut out = Vec::new();
        journal_line(1, &evs[0], &mut out).unwrap();
        journal_line(2, &evs[1], &mut out).unwrap();
        let want = concat!(
            r#"2ef8fb0d {"seq":1,"ev":"prefixAdded","prefix":"10.0.0.0/28","at":1}"#,
            "\n",
            r#"f1b83607 {"seq":2,"ev":"assigned","alloc":{"ip":"10.0.0.1","key":{"network":"n","#,
            r#""container_id":"c1","ifname":"eth0"},"meta":{"namespace":null,"name":null,"#,
            r#""uid":null,"netns":null},"assigned_at":2}}"#,
            "\n",
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        let mut rec = Vec::new();
        journal_record(1, &[FamilyEvent::V4(evs[0].clone())], &mut rec).unwrap();
        journal_record(2, &[FamilyEvent::V4(evs[1].clone())], &mut rec).unwrap();
        assert_eq!(rec, out);
    }

    fn key(c: &str) -> AllocKey {
        AllocKey {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn cfg6() -> vpcnet_pool::PoolConfig6 {
        vpcnet_pool::PoolConfig6 {
            vpc_cidrs: vec!["fd00:10::/64".parse().unwrap()],
            prefix_len: 80,
            ..Default::default()
        }
    }

    /// A dual-stack history: prefixes of both families, then attachments that each take one
    /// address of each family in one record.
    fn dual_records() -> (Vec<Vec<FamilyEvent>>, Pool, Pool6) {
        let mut p4 = Pool::new(cfg());
        let mut p6 = Pool6::new(cfg6());
        let mut recs = vec![vec![
            FamilyEvent::V4(p4.add_prefix("10.0.0.16/28".parse().unwrap(), 1).unwrap()),
            FamilyEvent::V6(p6.add_prefix("fd00:10::/80".parse().unwrap(), 1).unwrap()),
        ]];
        for c in ["a", "b", "c"] {
            let (_, e4) = p4.assign(key(c), PodMeta::default(), 2).unwrap();
            let (_, e6) = p6.assign(key(c), PodMeta::default(), 2).unwrap();
            recs.push(vec![
                FamilyEvent::V4(e4.unwrap()),
                FamilyEvent::V6(e6.unwrap()),
            ]);
        }
        let r4 = p4.release(&key("b"), 3).unwrap();
        let r6 = p6.release(&key("b"), 3).unwrap();
        recs.push(vec![FamilyEvent::V4(r4), FamilyEvent::V6(r6)]);
        (recs, p4, p6)
    }

    fn dual_journal(recs: &[Vec<FamilyEvent>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            journal_record(i as u64 + 1, r, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_dual_stack_change_is_one_record_applied_whole() {
        let (recs, want4, want6) = dual_records();
        let j = dual_journal(&recs);
        // One line per change, holding both families.
        let text = String::from_utf8(j.clone()).unwrap();
        assert_eq!(text.lines().count(), recs.len());
        for line in text.lines() {
            assert!(line[9..].starts_with(r#"{"seq":"#), "{line}");
            assert!(line.contains(r#""evs":[{"v4":{"ev":"#), "{line}");
            assert!(line.contains(r#"{"v6":{"ev":"#), "{line}");
        }
        let replay_both = |bytes: &[u8]| {
            let mut p4 = Pool::new(cfg());
            let mut p6 = Pool6::new(cfg6());
            replay_dual(bytes, &mut p4, Some(&mut p6), 0).map(|r| (p4, p6, r))
        };
        let (p4, p6, r) = replay_both(&j).unwrap();
        assert_eq!((p4, p6), (want4.clone(), want6.clone()));
        assert_eq!((r.seq, r.applied), (recs.len() as u64, recs.len()));
        assert_eq!(want4.allocations().count(), 2);
        assert_eq!(want6.allocations().count(), 2);
        // A torn last record: neither family of it is applied.
        let (p4, p6, r) = replay_both(&j[..j.len() - 3]).unwrap();
        assert_eq!(r.applied, recs.len() - 1);
        assert!(p4.get(&key("b")).is_some() && p6.get(&key("b")).is_some());
        // One byte of the IPv6 half damaged: the record (and the load) is refused.
        let mut d = j.clone();
        let at = text.rfind("fd00:10::").unwrap() + 5;
        d[at] ^= 0x01;
        let e = replay_both(&d).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("checksum"), "{e}");
        // A record whose IPv6 half cannot apply (its prefix was never added), checksum
        // intact: refused as a whole, naming the line.
        let mut bad = recs[1..2].to_vec();
        bad.insert(0, vec![recs[0][0].clone()]);
        let e = replay_both(&dual_journal(&bad)).unwrap_err().to_string();
        assert!(e.contains("pool.journal line 2"), "{e}");
        // An IPv4-only agent (no IPv6 pool) refuses a journal holding IPv6 records.
        let mut p4 = Pool::new(cfg());
        let e = replay(&j, &mut p4, 0).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("--vpc-cidr"), "{e}");
        // IPv4 records written one event at a time and dual records mix in one journal.
        let mut mixed = Vec::new();
        journal_record(1, &recs[0][..1], &mut mixed).unwrap();
        journal_record(2, &recs[0][1..], &mut mixed).unwrap();
        for (i, r) in recs[1..].iter().enumerate() {
            journal_record(i as u64 + 3, r, &mut mixed).unwrap();
        }
        let (p4, p6, _) = replay_both(&mixed).unwrap();
        assert_eq!((p4, p6), (want4, want6));
        assert!(!String::from_utf8(mixed)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .contains("evs"));
    }

    /// The store with both families: each change one record, durable across reopen and
    /// compaction; a failed write leaves nothing of either family and the broken store is
    /// repaired by a snapshot holding both pools; IPv6 state without an IPv6 pool is refused.
    #[test]
    fn store_keeps_both_families() {
        let dir = Scratch::new("dual");
        let (recs, want4, want6) = dual_records();
        let (mut store, mut p4, p6) = Store::open_dual(&dir.0, cfg(), Some(cfg6())).unwrap();
        let mut p6 = p6.unwrap();
        assert!(store.fresh());
        let apply = |p4: &mut Pool, p6: &mut Pool6, r: &[FamilyEvent]| {
            for ev in r {
                match ev {
                    FamilyEvent::V4(e) => p4.apply(e).unwrap(),
                    FamilyEvent::V6(e) => p6.apply(e).unwrap(),
                }
            }
        };
        let (last, first) = recs.split_last().unwrap();
        for r in first {
            apply(&mut p4, &mut p6, r);
            store.persist_change(r, &p4, Some(&p6)).unwrap();
        }
        // The last change fails to write (disk full, cannot be cut back): broken.
        let real = std::mem::replace(
            &mut store.journal,
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        let (mut n4, mut n6) = (p4.clone(), p6.clone());
        apply(&mut n4, &mut n6, last);
        let err = store.persist_change(last, &n4, Some(&n6)).unwrap_err();
        assert!(err.is_disk_full() && store.broken, "{err}");
        store.journal = real;
        drop(store);
        // What was acknowledged, in both families.
        let (mut store, l4, l6) = Store::open_dual(&dir.0, cfg(), Some(cfg6())).unwrap();
        assert_eq!((&l4, l6.as_ref()), (&p4, Some(&p6)));
        assert_eq!(
            fs::read_to_string(dir.0.join(JOURNAL))
                .unwrap()
                .lines()
                .count(),
            first.len()
        );
        // Broken again, then repaired by a snapshot of both pools.
        store.broken = true;
        store.persist_change(last, &n4, Some(&n6)).unwrap();
        assert!(!store.broken);
        assert!(fs::read(dir.0.join(JOURNAL)).unwrap().is_empty());
        drop(store);
        let (store, l4, l6) = Store::open_dual(&dir.0, cfg(), Some(cfg6())).unwrap();
        assert_eq!((&l4, l6.as_ref()), (&want4, Some(&want6)));
        assert!(!store.fresh());
        drop(store);
        // The IPv6 VPC gone from the flags, IPv6 state on disk: refused, naming the flag.
        let e = Store::open(&dir.0, cfg()).unwrap_err().to_string();
        assert!(e.contains("pool.json") && e.contains("--vpc-cidr"), "{e}");
        // One byte of the IPv6 pool in the snapshot damaged: refused.
        let snap = fs::read(dir.0.join(SNAPSHOT)).unwrap();
        let text = String::from_utf8(snap.clone()).unwrap();
        let at = text.find("\"pool6\"").unwrap()
            + text[text.find("\"pool6\"").unwrap()..]
                .find("fd00:10::")
                .unwrap()
            + 6;
        let mut bad = snap.clone();
        bad[at] ^= 0x01;
        assert!(parse_snapshot_dual(&bad).is_err());
        assert_eq!(parse_snapshot_dual(&snap).unwrap().1.as_ref(), Some(&want6));
    }

    /// An IPv4-only snapshot is what the previous version wrote (no `pool6`), and an IPv4
    /// state opened by a node that turns dual-stack keeps its IPv4 pool, IPv6 empty.
    #[test]
    fn ipv4_state_unchanged_and_turning_dual_keeps_it() {
        let dir = Scratch::new("v4dual");
        let (mut store, mut pool) = Store::open(&dir.0, cfg()).unwrap();
        for ev in &events() {
            pool.apply(ev).unwrap();
            store.persist(std::slice::from_ref(ev), &pool).unwrap();
        }
        store.compact(&pool).unwrap();
        drop(store);
        let snap = fs::read(dir.0.join(SNAPSHOT)).unwrap();
        assert_eq!(snap, snapshot_bytes(4, &pool).unwrap());
        assert!(!String::from_utf8_lossy(&snap).contains("pool6"));
        let (_store, p4, p6) = Store::open_dual(&dir.0, cfg(), Some(cfg6())).unwrap();
        assert_eq!(p4, pool);
        assert_eq!(p6.unwrap(), Pool6::new(cfg6()));
    }

    #[test]
    fn legacy_journal_still_read() {
        let mut j = Vec::new();
        for (i, ev) in events().iter().enumerate() {
            serde_json::to_writer(
                &mut j,
                &Record {
                    seq: i as u64 + 1,
                    event: ev,
                },
            )
            .unwrap();
            j.push(b'\n');
        }
        let (pool, _) = load(None, &j, cfg()).unwrap();
        assert_eq!(pool.allocations().count(), 3);
        // Mixed with a checksummed line: damage.
        let mut mixed = j.clone();
        journal_line(
            5,
            &PoolEvent::PrefixAdded {
                prefix: "10.0.0.16/28".parse().unwrap(),
                at: 3,
            },
            &mut mixed,
        )
        .unwrap();
        assert!(load(None, &mixed, cfg()).is_err());
    }

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!(
                "vpcnet-store-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A write that fails (ENOSPC from /dev/full) and cannot be cut back off (ftruncate on a
    /// character device fails): the store reports a full disk, turns broken, and the next
    /// change is written as a whole snapshot; what loads afterwards is exactly what was
    /// acknowledged. Also: the directory and files are private.
    #[test]
    fn failed_write_then_repair_by_snapshot() {
        let dir = Scratch::new("full");
        let evs = events();
        let (mut store, mut pool) = Store::open(&dir.0, cfg()).unwrap();
        assert!(store.fresh());
        for ev in &evs[..2] {
            pool.apply(ev).unwrap();
            store.persist(std::slice::from_ref(ev), &pool).unwrap();
        }
        let acked = pool.clone();
        let real = std::mem::replace(
            &mut store.journal,
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        let mut next = pool.clone();
        next.apply(&evs[2]).unwrap();
        let err = store.persist(&evs[2..3], &next).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(store.broken);
        // Space returns: the next change (the same one, retried) goes out as a snapshot.
        store.journal = real;
        store.persist(&evs[2..3], &next).unwrap();
        assert!(!store.broken);
        drop(store);
        let (store, loaded) = Store::open(&dir.0, cfg()).unwrap();
        assert_eq!(loaded, next);
        assert_ne!(loaded, acked);
        assert!(!store.fresh());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0), 0o700);
        for f in [SNAPSHOT, JOURNAL, LOCK] {
            assert_eq!(mode(&dir.0.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn snapshot_checksum() {
        let (pool, _) = load(None, &journal(&events()), cfg()).unwrap();
        let snap = snapshot_bytes(4, &pool).unwrap();
        let (p2, seq) = parse_snapshot(&snap).unwrap();
        assert_eq!(seq, 4);
        assert_eq!(p2.allocations().count(), 3);
        // A digit changed inside the snapshot: still JSON, but caught.
        let s = String::from_utf8(snap).unwrap();
        let bad = s.replacen("10.0.0.2", "10.0.0.9", 1);
        assert!(parse_snapshot(bad.as_bytes()).is_err());
    }
}
