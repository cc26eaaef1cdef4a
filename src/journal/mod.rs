//! The master's write-ahead journal: what it accepted, handed out and
//! finished, so that a restarted master resumes where the old one stopped.
//!
//! One append-only file of checksummed records ([`record`]), written by one
//! thread of its own. The master's thread only encodes a record into a
//! shared buffer (no syscall); the writer thread takes the whole buffer,
//! writes it with one `write`, and with `--durability fsync` syncs it with
//! one `fdatasync`: every record that arrived while the previous sync ran
//! shares the next one (group commit). Two watermarks say how far the file
//! is written and synced; a client hears `accepted` (or a result) only once
//! the watermark its durability asks for has passed the record.
//!
//! The file is compacted while the master runs: past a size, a helper thread
//! replays a prefix of it into the live state ([`replay`]) and writes that
//! state as a new file; the writer appends what came since and renames it
//! over the old one. So the file follows unfinished work, not history.

pub mod record;
pub mod replay;

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::proto::{BatchWeight, NewTask};

pub use record::{Entry, PendingTask, Record};
pub use replay::{Replayed, State};

/// When an appended record counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to the operating system (survives the master's crash, not the
    /// machine's); never synced while running.
    None,
    /// Written at once, synced at most [`BATCH_SYNC_INTERVAL`] later:
    /// acknowledged once written.
    #[default]
    Batch,
    /// Synced before it is acknowledged, many records per sync.
    Fsync,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Durability::None),
            "batch" => Ok(Durability::Batch),
            "fsync" => Ok(Durability::Fsync),
            other => Err(format!(
                "unknown durability {other:?}: expected none, batch or fsync"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::Batch => "batch",
            Durability::Fsync => "fsync",
        })
    }
}

/// With [`Durability::Batch`], the longest a written record waits for a sync.
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// How often a write that failed (a full disk) is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Default of [`JournalConfig::compact_retry`].
pub const COMPACT_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Permissions of a journal the master creates: its owner's alone.
const JOURNAL_FILE_MODE: u32 = 0o600;

/// Compact once the file is this large and twice its size after the last
/// compaction, unless configured otherwise.
pub const COMPACT_AT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// The smallest `--journal-compact-at` a master takes: below a page, every
/// few records would rewrite the file.
pub const COMPACT_AT_BYTES_MIN: u64 = 4096;

/// A journal past its threshold is compacted, however little it grew,
/// once the tasks and results it holds fall to this fraction (1/N) of those
/// at its last compaction: a drained backlog would otherwise leave the file
/// at up to twice its peak for as long as the master runs. Each such
/// compaction needs the live count to fall fourfold again, so their cost
/// shrinks geometrically.
pub const COMPACT_WHEN_LIVE_FALLS_TO_ONE_IN: u64 = 4;

/// Where and how to journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The journal file.
    pub path: PathBuf,
    /// When a record counts as stored.
    pub durability: Durability,
    /// Smallest size at which the file is compacted.
    pub compact_at: u64,
    /// After a failed compaction, how long until the next is tried even
    /// if the file has not doubled.
    pub compact_retry: Duration,
}

impl JournalConfig {
    /// A journal at `path` with the given durability and default compaction.
    pub fn new(path: impl Into<PathBuf>, durability: Durability) -> Self {
        JournalConfig {
            path: path.into(),
            durability,
            compact_at: COMPACT_AT_BYTES_DEFAULT,
            compact_retry: COMPACT_RETRY_INTERVAL,
        }
    }
}

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O call failed.
    #[error("journal {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The journal's directory does not exist. Not created: a mistyped
    /// path (a mount point, say) would put the journal somewhere nobody
    /// looks.
    #[error("journal {}: the directory {} does not exist; create it (mkdir -p {}) or give a path in an existing one", .path.display(), .dir.display(), .dir.display())]
    NoDirectory {
        /// The journal.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// The file is not a journal.
    #[error("not a runner journal: {0}")]
    NotAJournal(String),
    /// Written by a newer runner.
    #[error("the journal {} has format version {found}, newer than this runner's {supported}; run the runner that wrote it (or a newer one)", .file.display())]
    NewerVersion {
        /// The file (empty for an image not read from one).
        file: PathBuf,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// A damaged record that is not a torn last write: intact records
    /// follow it, or more bytes than one record.
    #[error("the journal {} is corrupt at byte {offset} ({why}), {}; refusing to start rather than skip acknowledged work. Keep a copy of the file for inspection; to start anyway, move it aside", .file.display(), match .intact_after { Some(at) => format!("with intact records after it (at byte {at})"), None => format!("{tail_bytes} bytes before its end: more than a write cut short leaves") })]
    Corrupt {
        /// The file (empty for an image not read from one).
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        why: String,
        /// Where the next intact record starts, if one was found.
        intact_after: Option<u64>,
        /// Bytes from the damage to the end of the file.
        tail_bytes: u64,
    },
    /// Another master holds the file.
    #[error("journal {0} is in use by another master (it holds the file's lock)")]
    Locked(PathBuf),
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Counters, for logs, status and the journal's measurements.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Bytes appended since start.
    pub appended: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// `write` calls.
    pub writes: AtomicU64,
    /// Compactions finished.
    pub compactions: AtomicU64,
    /// Compactions that failed or were abandoned.
    pub compaction_failures: AtomicU64,
    /// The file's size now.
    pub file_len: AtomicU64,
}

struct Pending {
    buf: BytesMut,
    /// Logical offset after the last appended record (bytes appended since
    /// start; unlike the file, never shrinks).
    end: u64,
    /// Tasks accepted minus results forgotten, over the records appended
    /// since start: how the number of live items (unfinished tasks and
    /// kept results) moved, without replaying anything.
    live_delta: i64,
    writer_sleeping: bool,
    stop: bool,
}

struct Inner {
    path: PathBuf,
    durability: Durability,
    compact_at: u64,
    compact_retry: Duration,
    /// The file's salt, for every record appended and for compaction.
    salt: record::Salt,
    pending: Mutex<Pending>,
    more: Condvar,
    written: AtomicU64,
    synced: AtomicU64,
    /// Woken whenever a watermark moves or the failure changes.
    progress: tokio::sync::Notify,
    failing: AtomicBool,
    failure: Mutex<Option<String>>,
    stats: JournalStats,
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set_failure(&self, why: Option<String>) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match (&*f, &why) {
            (None, Some(w)) => {
                tracing::error!(journal = %self.path.display(), "journal write failed: {w}; acknowledgements paused, new tasks refused, retrying every {} s", RETRY_INTERVAL.as_secs())
            }
            (Some(_), None) => {
                tracing::warn!(journal = %self.path.display(), "journal writable again; acknowledgements resume")
            }
            _ => {}
        }
        self.failing.store(why.is_some(), Ordering::Release);
        *f = why;
        drop(f);
        self.progress.notify_waiters();
    }
}

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal, replays it, cuts a torn tail, and
    /// starts the writer thread. The file is locked against a second master.
    pub fn open(cfg: &JournalConfig) -> Result<(Journal, Replayed), JournalError> {
        // A compaction renames a new file over the journal's name: through
        // a symbolic link that would replace the link, and leave its target
        // behind, stale and unlocked.
        let path = resolved(&cfg.path);
        if path != cfg.path {
            tracing::info!(journal = %cfg.path.display(), resolved = %path.display(), "the journal's path is a link; using the file it names");
        }
        let existed = path.exists();
        let mut file = open_locked(&path)?;
        // Left by a compaction interrupted by a crash (only the lock holder
        // may remove it: a live master may be writing it).
        let _ = std::fs::remove_file(compacting_path(&path));
        let replayed = if existed && file.metadata().map_err(io(&path, "stat"))?.len() > 0 {
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(io(&path, "read"))?;
            let data = Bytes::from(data);
            let r = replay::replay(&data).map_err(|e| match e {
                JournalError::NotAJournal(why) => {
                    JournalError::NotAJournal(format!("{}: {why}", path.display()))
                }
                JournalError::Corrupt {
                    offset,
                    why,
                    intact_after,
                    tail_bytes,
                    ..
                } => JournalError::Corrupt {
                    file: path.clone(),
                    offset,
                    why,
                    intact_after,
                    tail_bytes,
                },
                JournalError::NewerVersion {
                    found, supported, ..
                } => JournalError::NewerVersion {
                    file: path.clone(),
                    found,
                    supported,
                },
                e => e,
            })?;
            if let Some((at, why)) = &r.torn {
                // The cut bytes are kept beside it, for whoever wonders; but
                // not at the price of starting (a full disk, often what cut
                // the write short, or a read-only directory).
                let aside = torn_path(&path);
                let kept = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(JOURNAL_FILE_MODE)
                    .open(&aside)
                    .and_then(|mut f| f.write_all(&data[*at..]));
                match kept {
                    Ok(()) => tracing::warn!(
                        journal = %path.display(),
                        offset = at,
                        cut_bytes = data.len() - at,
                        kept_in = %aside.display(),
                        "the journal's last record is torn ({why}); cutting it (a write cut short is never acknowledged)"
                    ),
                    Err(e) => {
                        let _ = std::fs::remove_file(&aside);
                        tracing::warn!(
                            journal = %path.display(),
                            offset = at,
                            cut_bytes = data.len() - at,
                            "the journal's last record is torn ({why}); cutting it (a write cut short is never acknowledged), without a copy: {} cannot be written: {e}",
                            aside.display()
                        );
                    }
                }
                file.set_len(r.valid_len as u64)
                    .map_err(io(&path, "truncate the torn tail"))?;
                file.sync_all().map_err(io(&path, "sync"))?;
            }
            r
        } else {
            let salt = record::Salt::random();
            file.write_all(&salt.header())
                .map_err(io(&path, "write the header"))?;
            file.sync_all().map_err(io(&path, "sync"))?;
            sync_dir(&path)?;
            Replayed {
                state: State {
                    next_id: 1,
                    ..State::default()
                },
                records: 0,
                valid_len: record::HEADER_LEN,
                torn: None,
                salt,
            }
        };
        file.seek(SeekFrom::End(0)).map_err(io(&path, "seek"))?;
        let len = replayed.valid_len as u64;
        let live = replayed.state.live();
        let inner = Arc::new(Inner {
            path: path.clone(),
            durability: cfg.durability,
            compact_at: cfg.compact_at,
            compact_retry: cfg.compact_retry,
            salt: replayed.salt,
            pending: Mutex::new(Pending {
                buf: BytesMut::with_capacity(1 << 20),
                end: 0,
                live_delta: 0,
                writer_sleeping: false,
                stop: false,
            }),
            more: Condvar::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            stats: JournalStats::default(),
        });
        inner.stats.file_len.store(len, Ordering::Relaxed);
        let i = inner.clone();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || Writer::new(i, file, len, live).run())
            .map_err(io(&path, "start the writer thread"))?;
        Ok((
            Journal {
                inner,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            replayed,
        ))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Its durability.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Appends a record; returns its end as a logical offset, for
    /// [`Journal::stored`]. Never blocks on I/O.
    pub fn append(&self, entry: Entry<'_>) -> u64 {
        let mut p = self.inner.pending();
        let before = p.buf.len();
        if let Err(e) = entry.encode(&mut p.buf, self.inner.salt) {
            // Only a record above the size limit fails, and the master's own
            // limits keep every record far below it.
            tracing::error!("journal record not written: {e}");
            return p.end;
        }
        p.end += (p.buf.len() - before) as u64;
        p.live_delta += match entry {
            Entry::Accepted { tasks, .. } => tasks.len() as i64,
            Entry::Forgotten(ids) => -(ids.len() as i64),
            _ => 0,
        };
        let (end, wake) = (p.end, p.writer_sleeping);
        drop(p);
        if wake {
            self.inner.more.notify_one();
        }
        end
    }

    /// Logical offset after the last appended record.
    pub fn appended(&self) -> u64 {
        self.inner.pending().end
    }

    /// How far records count as stored under the configured durability.
    pub fn stored(&self) -> u64 {
        match self.inner.durability {
            Durability::Fsync => self.inner.synced.load(Ordering::Acquire),
            _ => self.inner.written.load(Ordering::Acquire),
        }
    }

    /// Why the journal cannot write now, if it cannot.
    pub fn failure(&self) -> Option<String> {
        if !self.inner.failing.load(Ordering::Acquire) {
            return None;
        }
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until everything up to `offset` is stored; an error says why it
    /// cannot be stored now (the writer keeps trying).
    pub async fn wait_stored(&self, offset: u64) -> Result<(), String> {
        loop {
            let notified = self.inner.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stored() >= offset {
                return Ok(());
            }
            if let Some(why) = self.failure() {
                return Err(why);
            }
            notified.await;
        }
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.inner.stats
    }

    /// Writes and syncs everything appended, stops the writer thread and
    /// waits for it.
    pub fn close(&self) {
        self.inner.pending().stop = true;
        self.inner.more.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
            let s = &self.inner.stats;
            tracing::info!(
                journal = %self.inner.path.display(),
                appended_bytes = s.appended.load(Ordering::Relaxed),
                writes = s.writes.load(Ordering::Relaxed),
                syncs = s.syncs.load(Ordering::Relaxed),
                compactions = s.compactions.load(Ordering::Relaxed),
                compaction_failures = s.compaction_failures.load(Ordering::Relaxed),
                file_bytes = s.file_len.load(Ordering::Relaxed),
                "journal closed"
            );
        }
    }
}

fn compacting_path(path: &Path) -> PathBuf {
    beside(path, ".compacting")
}

/// Where the last torn tail cut from the journal is kept.
pub fn torn_path(path: &Path) -> PathBuf {
    beside(path, ".torn")
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir(path: &Path) -> Result<(), JournalError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync the directory"))
}

/// `path` with a symbolic link at its end resolved, so that compactions
/// replace the file it names.
fn resolved(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // A chain of links, within reason (a loop fails at open).
    for _ in 0..32 {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&path) {
                Ok(target) => {
                    path = match path.parent() {
                        Some(dir) => dir.join(target),
                        None => target,
                    }
                }
                Err(_) => break,
            },
            _ => break,
        }
    }
    path
}

/// Opens (or creates) the journal and takes its lock. A compaction by the
/// holder renames a new file over the name and lets go of the old one: a
/// lock won on the old file, opened just before, would be no lock at all,
/// so the locked file must still be the one the name gives.
fn open_locked(path: &Path) -> Result<File, JournalError> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..100 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Clients' payloads (programs, their environments) are in it.
            .mode(JOURNAL_FILE_MODE)
            .open(path)
            .map_err(|source| {
                let dir = match path.parent() {
                    Some(d) if d.as_os_str().is_empty() => Path::new("."),
                    Some(d) => d,
                    None => Path::new("/"),
                };
                if source.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
                    JournalError::NoDirectory {
                        path: path.to_path_buf(),
                        dir: dir.to_path_buf(),
                    }
                } else {
                    io(path, "open")(source)
                }
            })?;
        lock(&file, path)?;
        let ours = file.metadata().map_err(io(path, "stat"))?;
        match std::fs::metadata(path) {
            Ok(named) if named.dev() == ours.dev() && named.ino() == ours.ino() => return Ok(file),
            // Replaced (or removed) between the open and the lock: again.
            _ => continue,
        }
    }
    Err(JournalError::Locked(path.to_owned()))
}

fn lock(file: &File, path: &Path) -> Result<(), JournalError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(JournalError::Locked(path.to_owned()));
        }
        return Err(io(path, "lock")(e));
    }
    Ok(())
}

/// What a finished compaction hands the writer.
struct Compacted {
    /// The new file, open for writing, holding the live state of the old
    /// file's first `upto` bytes.
    file: File,
    upto: u64,
    /// Live items in it, and the writer's `live_delta` when it started.
    live: u64,
    live_delta: i64,
}

/// The writer thread's state.
struct Writer {
    inner: Arc<Inner>,
    file: File,
    file_len: u64,
    /// File size after this writer's last compaction; 0 before its first,
    /// so that a journal opened past the threshold is compacted at its
    /// first append (a master restarted more often than it compacted
    /// would otherwise never compact: the bar was twice the size found).
    compacted_len: u64,
    /// Live items at the last compaction (or at open), and `live_delta`
    /// then: with `taken_delta`, an estimate of the live items now.
    compacted_live: u64,
    compacted_delta: i64,
    /// `live_delta` as of the records taken into the file.
    taken_delta: i64,
    spare: BytesMut,
    unsynced: bool,
    last_sync: Instant,
    compactor: Option<std::thread::JoinHandle<Result<Compacted, JournalError>>>,
    /// When a deleted journal was last written again.
    rewritten_at: Option<Instant>,
    /// When the last compaction failed, if the one after has not
    /// succeeded: the next is tried [`JournalConfig::compact_retry`] later even
    /// if the file has not doubled (on a disk that filled up, it would
    /// not).
    compaction_failed_at: Option<Instant>,
}

impl Writer {
    fn new(inner: Arc<Inner>, file: File, len: u64, live: u64) -> Self {
        Writer {
            inner,
            file,
            file_len: len,
            compacted_len: 0,
            compacted_live: live,
            compacted_delta: 0,
            taken_delta: 0,
            spare: BytesMut::with_capacity(1 << 20),
            unsynced: false,
            last_sync: Instant::now(),
            compactor: None,
            rewritten_at: None,
            compaction_failed_at: None,
        }
    }

    fn run(mut self) {
        loop {
            let (end, stop) = self.take();
            if !self.spare.is_empty() {
                let buf = std::mem::take(&mut self.spare);
                if !self.write_all(&buf) {
                    return;
                }
                self.spare = buf;
                self.spare.clear();
                self.inner.written.store(end, Ordering::Release);
                self.unsynced = true;
            }
            let sync = self.unsynced
                && match self.inner.durability {
                    Durability::Fsync => true,
                    Durability::Batch => self.last_sync.elapsed() >= BATCH_SYNC_INTERVAL,
                    Durability::None => stop,
                };
            if sync || (stop && self.unsynced) {
                if !self.sync() {
                    return;
                }
                self.inner.synced.store(end, Ordering::Release);
            }
            self.inner.progress.notify_waiters();
            self.compaction();
            if stop {
                if let Some(h) = self.compactor.take() {
                    let _ = h.join();
                }
                let _ = std::fs::remove_file(compacting_path(&self.inner.path));
                return;
            }
        }
    }

    /// Waits for records (or a due sync, or a compaction to finish) and swaps
    /// the appended bytes into `spare`.
    fn take(&mut self) -> (u64, bool) {
        let mut p = self.inner.pending();
        loop {
            if !p.buf.is_empty() || p.stop {
                break;
            }
            let timeout = if self.unsynced && self.inner.durability == Durability::Batch {
                Some(BATCH_SYNC_INTERVAL.saturating_sub(self.last_sync.elapsed()))
            } else if self.compactor.is_some() {
                Some(Duration::from_millis(20))
            } else {
                None
            };
            p.writer_sleeping = true;
            p = match timeout {
                None => self.inner.more.wait(p).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let (g, r) = self
                        .inner
                        .more
                        .wait_timeout(p, t)
                        .unwrap_or_else(|e| e.into_inner());
                    if r.timed_out() {
                        // Take whatever came meanwhile too: the end returned
                        // must never count bytes still in the buffer.
                        p = g;
                        break;
                    }
                    g
                }
            };
            p.writer_sleeping = false;
        }
        p.writer_sleeping = false;
        std::mem::swap(&mut p.buf, &mut self.spare);
        self.taken_delta = p.live_delta;
        (p.end, p.stop)
    }

    /// Writes `buf` whole; on failure (a full disk) reports it and retries
    /// from where it stopped until it succeeds. False if stopped meanwhile.
    fn write_all(&mut self, buf: &[u8]) -> bool {
        let mut off = 0;
        while off < buf.len() {
            match self.file.write(&buf[off..]) {
                Ok(0) => {
                    if !self.wait_retry("write returned 0 bytes".into()) {
                        return false;
                    }
                }
                Ok(n) => {
                    off += n;
                    self.file_len += n as u64;
                    self.inner.stats.writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A compaction that finished meanwhile frees the old
                    // file's space once installed; one that failed, its
                    // own.
                    self.reap_compaction();
                    if !self.wait_retry(format!("write: {e}")) {
                        return false;
                    }
                }
            }
        }
        self.inner
            .stats
            .appended
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner
            .stats
            .file_len
            .store(self.file_len, Ordering::Relaxed);
        if self.inner.failing.load(Ordering::Relaxed) {
            self.inner.set_failure(None);
        }
        true
    }

    fn sync(&mut self) -> bool {
        loop {
            match self.file.sync_data() {
                Ok(()) => {
                    self.inner.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    self.unsynced = false;
                    self.last_sync = Instant::now();
                    if self.inner.failing.load(Ordering::Relaxed) {
                        self.inner.set_failure(None);
                    }
                    return true;
                }
                Err(e) => {
                    self.reap_compaction();
                    if !self.wait_retry(format!("fdatasync: {e}")) {
                        return false;
                    }
                }
            }
        }
    }

    /// Reports a failure and waits before the next try; false when the
    /// journal is being closed (what is unwritten then was never
    /// acknowledged).
    fn wait_retry(&self, why: String) -> bool {
        self.inner.set_failure(Some(why));
        let p = self.inner.pending();
        if p.stop {
            tracing::error!("journal closed while it could not write; unacknowledged records are lost (they were never acknowledged)");
            return false;
        }
        let _ = self
            .inner
            .more
            .wait_timeout(p, RETRY_INTERVAL)
            .unwrap_or_else(|e| e.into_inner());
        true
    }

    /// Starts a compaction when the file has grown enough; installs one that
    /// has finished.
    fn compaction(&mut self) {
        // One that just finished may leave another due at once: the records
        // written while it ran may have drained what it kept, and with no
        // write to come the next look could be far off.
        self.reap_compaction();
        if self.compactor.is_some() || self.inner.failing.load(Ordering::Relaxed) {
            return;
        }
        // Someone deleted the file under the master (a cleaner, a mistaken
        // `rm`): what is acknowledged from now on would be lost with the
        // last descriptor. A compaction, which reads through the open
        // descriptor, puts the journal back under its name.
        let deleted = self.file.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.nlink() == 0
        });
        if deleted {
            // Once a second at most, should writing it again fail.
            if self
                .rewritten_at
                .is_some_and(|t| t.elapsed() < RETRY_INTERVAL)
            {
                return;
            }
            self.rewritten_at = Some(Instant::now());
            tracing::error!(journal = %self.inner.path.display(), "the journal file was deleted while in use; writing it again from the live state");
        } else {
            // After a failure, the threshold alone only once the retry
            // interval has passed; otherwise once the backlog has drained.
            let low_bar = match self.compaction_failed_at {
                Some(t) => t.elapsed() >= self.inner.compact_retry,
                None => self.drained(),
            };
            let bar = if low_bar {
                self.inner.compact_at
            } else {
                self.inner.compact_at.max(2 * self.compacted_len)
            };
            if self.file_len < bar {
                return;
            }
        }
        let (path, upto, delta) = (self.inner.path.clone(), self.file_len, self.taken_delta);
        let Ok(source) = self.file.try_clone() else {
            return;
        };
        tracing::debug!(bytes = upto, "compacting the journal");
        self.compactor = std::thread::Builder::new()
            .name("journal-compact".into())
            .spawn(move || compact(&path, &source, upto, delta))
            .ok();
    }

    /// Whether the live items have fallen to a small part of those at the
    /// last compaction ([`COMPACT_WHEN_LIVE_FALLS_TO_ONE_IN`]). Nothing
    /// drains from nothing: a journal compacted empty would otherwise count
    /// as drained for ever, and one whose empty file is past its threshold
    /// be compacted again at every look.
    fn drained(&self) -> bool {
        let now = (self.compacted_live as i64)
            .saturating_add(self.taken_delta - self.compacted_delta)
            .max(0) as u64;
        self.compacted_live > 0
            && now.saturating_mul(COMPACT_WHEN_LIVE_FALLS_TO_ONE_IN) <= self.compacted_live
    }

    /// Installs a compaction that has finished, or notes its failure; true
    /// if one had finished.
    fn reap_compaction(&mut self) -> bool {
        if !self.compactor.as_ref().is_some_and(|h| h.is_finished()) {
            return false;
        }
        let h = self.compactor.take().expect("checked");
        let failed = match h.join() {
            Ok(Ok(c)) => match self.install(c) {
                Ok(()) => None,
                Err(e) => Some(format!("journal compaction abandoned: {e}")),
            },
            Ok(Err(e)) => Some(format!("journal compaction failed: {e}")),
            Err(_) => Some("journal compaction thread panicked".to_string()),
        };
        match failed {
            None => self.compaction_failed_at = None,
            Some(why) => {
                self.inner
                    .stats
                    .compaction_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    retry_in_s = self.inner.compact_retry.as_secs_f64(),
                    "{why}; the journal stays as it was"
                );
                let _ = std::fs::remove_file(compacting_path(&self.inner.path));
                // Again once it has doubled, or after the retry interval.
                self.compacted_len = self.file_len;
                self.compaction_failed_at = Some(Instant::now());
            }
        }
        true
    }

    /// Appends what was written since the compaction started to the new
    /// file and puts it in place of the old one.
    fn install(&mut self, mut c: Compacted) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt;
        let path = self.inner.path.clone();
        // Through the open descriptor (positioned reads leave the writer's
        // offset alone), which holds the journal even if its name is gone.
        let mut tail = vec![0u8; (self.file_len - c.upto) as usize];
        self.file
            .read_exact_at(&mut tail, c.upto)
            .map_err(io(&path, "read the tail"))?;
        c.file
            .write_all(&tail)
            .map_err(io(&path, "copy the tail"))?;
        let tail = tail.len();
        c.file.sync_all().map_err(io(&path, "sync"))?;
        let new_len = c.file.metadata().map_err(io(&path, "stat"))?.len();
        // Locked before it takes the journal's name, so the name is never
        // unlocked; every fallible step comes before the rename, so a failure
        // leaves the old file in use and whole.
        lock(&c.file, &path)?;
        let tmp = compacting_path(&path);
        std::fs::rename(&tmp, &path).map_err(io(&path, "rename"))?;
        let before = self.file_len;
        self.file_len = new_len;
        self.file = c.file;
        if let Err(e) = sync_dir(&path) {
            // The rename is done; at worst a crash before the directory
            // reaches the disk brings back the old file, which is complete.
            tracing::warn!("after compaction: {e}");
        }
        self.compacted_len = self.file_len;
        self.compacted_live = c.live;
        self.compacted_delta = c.live_delta;
        self.unsynced = false;
        self.inner
            .stats
            .file_len
            .store(self.file_len, Ordering::Relaxed);
        self.inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            before_bytes = before,
            after_bytes = self.file_len,
            tail_bytes = tail,
            "journal compacted"
        );
        Ok(())
    }
}

/// Replays the first `upto` bytes of the journal (read from `source`, a
/// descriptor of it) and writes their live state as a new journal beside it.
fn compact(
    path: &Path,
    source: &File,
    upto: u64,
    live_delta: i64,
) -> Result<Compacted, JournalError> {
    let done = compact_into(path, source, upto, live_delta);
    if done.is_err() {
        // At once, not when the writer next looks: on a full disk this file
        // holds the space the journal needs.
        let _ = std::fs::remove_file(compacting_path(path));
    }
    done
}

fn compact_into(
    path: &Path,
    source: &File,
    upto: u64,
    live_delta: i64,
) -> Result<Compacted, JournalError> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; upto as usize];
    source
        .read_exact_at(&mut data, 0)
        .map_err(io(path, "read for compaction"))?;
    let replayed = replay::replay(&Bytes::from(data))?;
    let tmp = compacting_path(path);
    // Readable too: it becomes the journal, which the next compaction
    // reads through this descriptor.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(JOURNAL_FILE_MODE)
        .open(&tmp)
        .map_err(io(&tmp, "create"))?;
    // The same salt: the records appended meanwhile are copied over as
    // they are.
    write_state(&mut file, &replayed.state, replayed.salt).map_err(io(&tmp, "write"))?;
    file.sync_all().map_err(io(&tmp, "sync"))?;
    Ok(Compacted {
        file,
        upto,
        live: replayed.state.live(),
        live_delta,
    })
}

/// Writes a header and `state` as records, with `salt`.
pub fn write_state(out: &mut impl Write, state: &State, salt: record::Salt) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1 << 20);
    buf.extend_from_slice(&salt.header());
    let flush = |buf: &mut BytesMut, out: &mut dyn Write| -> std::io::Result<()> {
        out.write_all(buf)?;
        buf.clear();
        Ok(())
    };
    let bad = |e: crate::proto::ProtoError| std::io::Error::other(e.to_string());
    Entry::NextId(state.next_id)
        .encode(&mut buf, salt)
        .map_err(bad)?;
    // Unfinished tasks never handed out (a backlog, usually most of them)
    // go as `Accepted` records of consecutive ids, as they came: one
    // `Pending` each would weigh about twice as much as the records the
    // compaction replaces.
    let mut run: Vec<NewTask> = Vec::new();
    let (mut run_first, mut run_bytes) = (0u64, 0usize);
    let emit_run = |run: &mut Vec<NewTask>, first: u64, buf: &mut BytesMut| {
        if run.is_empty() {
            return Ok(());
        }
        let e = Entry::Accepted {
            first_id: first,
            tasks: run,
        }
        .encode(buf, salt)
        .map_err(bad);
        run.clear();
        e
    };
    for p in state.pending.values() {
        let fresh = p.attempt == 0 && p.errors.is_empty();
        let joins = fresh
            && p.id == run_first.wrapping_add(run.len() as u64)
            && run.len() < crate::limits::BATCH_TASKS_MAX
            && run_bytes < crate::proto::BATCH_BYTES_MAX;
        if !joins {
            emit_run(&mut run, run_first, &mut buf)?;
            run_bytes = 0;
        }
        if fresh {
            if run.is_empty() {
                run_first = p.id;
            }
            run_bytes += p.spec.batch_weight();
            run.push(p.spec.clone());
        } else {
            Entry::Pending(p).encode(&mut buf, salt).map_err(bad)?;
        }
        if buf.len() >= 1 << 20 {
            flush(&mut buf, out)?;
        }
    }
    emit_run(&mut run, run_first, &mut buf)?;
    for r in state.results.values() {
        Entry::Finished(r).encode(&mut buf, salt).map_err(bad)?;
        if buf.len() >= 1 << 20 {
            flush(&mut buf, out)?;
        }
    }
    flush(&mut buf, out)
}
