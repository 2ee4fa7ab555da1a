//! Crash-safe persistence of the pool: a snapshot plus an append-only journal of
//! [`PoolEvent`]s. Every event is written and `fdatasync`ed before the agent replies, so a
//! crash (kill -9, power loss) loses nothing the plugin was told. A torn last line — the only
//! kind of damage a crash can do to an append — is dropped on open; damage anywhere else is
//! an error (never guess about addresses). The journal is folded into a new snapshot
//! (write temp, fsync, rename, fsync dir) at open and every [`COMPACT_EVERY`] events.
//! Journal records carry a sequence number and the snapshot the last one it holds, so a
//! crash between writing a snapshot and truncating the journal replays nothing twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pool::{Pool, PoolConfig, PoolEvent};

#[derive(Serialize, Deserialize)]
struct Record<E> {
    seq: u64,
    #[serde(flatten)]
    event: E,
}

#[derive(Serialize, Deserialize)]
struct Snapshot<P> {
    seq: u64,
    pool: P,
}

const SNAPSHOT: &str = "pool.json";
const JOURNAL: &str = "pool.journal";
const LOCK: &str = "lock";
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

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: File,
    since_compact: usize,
    seq: u64,
    _lock: nix::fcntl::Flock<File>,
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

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

impl Store {
    /// Opens (creating) the state directory, takes its lock, loads snapshot + journal into a
    /// pool configured with `cfg`, and compacts.
    pub fn open(dir: &Path, cfg: PoolConfig) -> Result<(Store, Pool), StoreError> {
        let e = io_err(dir);
        fs::create_dir_all(dir).map_err(&e)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(&e)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
        let (mut pool, snap_seq) = match fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => {
                let snap: Snapshot<Pool> =
                    serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                        file: SNAPSHOT.into(),
                        line: err.line(),
                        msg: err.to_string(),
                    })?;
                let mut p = snap.pool;
                p.set_config(cfg);
                (p, snap.seq)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => (Pool::new(cfg), 0),
            Err(err) => return Err(e(err)),
        };
        let seq = replay(&dir.join(JOURNAL), &mut pool, snap_seq)?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(JOURNAL))
            .map_err(&e)?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            journal,
            since_compact: 0,
            seq,
            _lock: lock,
        };
        store.compact(&pool)?;
        Ok((store, pool))
    }

    /// Appends one event durably. Only after this returns may the change be acted on.
    pub fn append(&mut self, ev: &PoolEvent) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(ev))
    }

    /// Appends several events with a single sync.
    pub fn append_all(&mut self, evs: &[PoolEvent]) -> Result<(), StoreError> {
        if evs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut seq = self.seq;
        for ev in evs {
            seq += 1;
            let rec = Record { seq, event: ev };
            serde_json::to_writer(&mut buf, &rec).map_err(|err| StoreError::Corrupt {
                file: JOURNAL.into(),
                line: 0,
                msg: err.to_string(),
            })?;
            buf.push(b'\n');
        }
        let e = io_err(&self.dir);
        self.journal.write_all(&buf).map_err(&e)?;
        self.journal.sync_data().map_err(&e)?;
        self.seq = seq;
        self.since_compact += evs.len();
        Ok(())
    }

    pub fn needs_compaction(&self) -> bool {
        self.since_compact >= COMPACT_EVERY
    }

    /// Folds the journal into a new snapshot of `pool` and empties the journal. The snapshot
    /// records the last sequence number it holds, so a crash before the truncate is harmless.
    pub fn compact(&mut self, pool: &Pool) -> Result<(), StoreError> {
        let e = io_err(&self.dir);
        let bytes = serde_json::to_vec(&Snapshot {
            seq: self.seq,
            pool,
        })
        .map_err(|err| StoreError::Corrupt {
            file: SNAPSHOT.into(),
            line: 0,
            msg: err.to_string(),
        })?;
        write_atomic(&self.dir, SNAPSHOT, &bytes).map_err(&e)?;
        self.journal.set_len(0).map_err(&e)?;
        self.journal.sync_all().map_err(&e)?;
        self.since_compact = 0;
        Ok(())
    }
}

/// Applies the journal records newer than `snap_seq` to `pool`; returns the last sequence
/// number seen.
fn replay(path: &Path, pool: &mut Pool, snap_seq: u64) -> Result<u64, StoreError> {
    let mut last = snap_seq;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(last),
        Err(err) => {
            return Err(StoreError::Io {
                dir: path.display().to_string(),
                source: err,
            })
        }
    };
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(|source| StoreError::Io {
            dir: path.display().to_string(),
            source,
        })?;
        if line.is_empty() {
            continue;
        }
        let rec: Record<PoolEvent> = match serde_json::from_slice(&line) {
            Ok(rec) => rec,
            // A torn final write: the event was never acknowledged, drop it.
            Err(_) if lines.peek().is_none() => break,
            Err(err) => {
                return Err(StoreError::Corrupt {
                    file: JOURNAL.into(),
                    line: i + 1,
                    msg: err.to_string(),
                })
            }
        };
        if rec.seq <= last {
            continue;
        }
        last = rec.seq;
        pool.apply(&rec.event).map_err(|err| StoreError::Corrupt {
            file: JOURNAL.into(),
            line: i + 1,
            msg: err.to_string(),
        })?;
    }
    Ok(last)
}
