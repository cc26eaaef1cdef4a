//! The journal's bytes: a file header, then checksummed records.
//!
//! Layout (normative, `proto-spec/JOURNAL.md`): a 16-byte header (magic
//! `RUNJRNL\0`, format version as `u32` LE, the journal's 4-byte salt), then
//! records of `len: u32 LE | crc: u32 LE | kind: u8 | body`, where `len`
//! counts the kind byte and the body, `crc` is CRC-32 (IEEE) of the salt,
//! the `len` bytes, the kind byte and the body, and the body is the record's
//! fields in the protocol's bincode encoding. A record is decoded only if its
//! checksum holds, so a torn or flipped record is never misread; and since
//! the salt is the journal's own random secret, bytes a client put in a
//! payload cannot pass for a record when replay looks past a damaged one.

use bytes::{Bytes, BytesMut};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::proto::{Assignment, AttemptError, NewTask, ProtoError, TaskResult};

/// First bytes of every journal.
pub const MAGIC: &[u8; 8] = b"RUNJRNL\0";
/// The format this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// The first format with a salt; format 1's checksums cover the record
/// alone, and its salt bytes are zero.
pub const SALTED_SINCE: u32 = 2;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// Bytes before each record's kind byte: length and checksum.
pub const RECORD_PREFIX_LEN: usize = 8;
/// Largest record (kind byte and body): a batch of maximum-size frames'
/// worth of tasks is split long before this.
pub const RECORD_BYTES_MAX: usize = crate::proto::RECORD_BYTES_MAX;

/// What each record's checksum covers besides the record: the journal's
/// salt (format 2), or nothing (format 1, still read and appended to as
/// such).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt(Option<[u8; 4]>);

impl Salt {
    /// A new journal's: random.
    pub fn random() -> Salt {
        Salt(Some(rand::random::<u32>().to_le_bytes()))
    }

    /// A fixed one (tests, examples).
    pub fn fixed(salt: u32) -> Salt {
        Salt(Some(salt.to_le_bytes()))
    }

    /// Format 1's: none.
    pub const NONE: Salt = Salt(None);

    /// The salt of a journal whose header says `version` and holds `bytes`.
    pub fn of(version: u32, bytes: [u8; 4]) -> Salt {
        Salt((version >= SALTED_SINCE).then_some(bytes))
    }

    /// The header of a journal with this salt: format 2, or format 1 for
    /// [`Salt::NONE`].
    pub fn header(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        let version = if self.0.is_some() { FORMAT_VERSION } else { 1 };
        h[8..12].copy_from_slice(&version.to_le_bytes());
        h[12..16].copy_from_slice(&self.0.unwrap_or_default());
        h
    }
}

/// Record kinds. Numbers are normative: append, never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A batch of tasks accepted with consecutive ids.
    Accepted = 1,
    /// Attempts handed to a worker: `(task id, attempt)` pairs.
    Dispatched = 2,
    /// One failed attempt of a task that is not finished.
    AttemptFailed = 3,
    /// A task's final result.
    Finished = 4,
    /// Results a client acknowledged: forget them.
    Forgotten = 5,
    /// An unfinished task as a whole (written by compaction).
    Pending = 6,
    /// Ids below this are taken (written by compaction).
    NextId = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Accepted,
            2 => Kind::Dispatched,
            3 => Kind::AttemptFailed,
            4 => Kind::Finished,
            5 => Kind::Forgotten,
            6 => Kind::Pending,
            7 => Kind::NextId,
            _ => return None,
        })
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// See [`Kind::Accepted`].
    Accepted {
        /// Id of the first task; the rest follow.
        first_id: u64,
        /// The tasks.
        tasks: Vec<NewTask>,
    },
    /// See [`Kind::Dispatched`].
    Dispatched(Vec<(u64, u32)>),
    /// See [`Kind::AttemptFailed`].
    AttemptFailed {
        /// The task.
        id: u64,
        /// What went wrong.
        error: AttemptError,
    },
    /// See [`Kind::Finished`].
    Finished(TaskResult),
    /// See [`Kind::Forgotten`].
    Forgotten(Vec<u64>),
    /// See [`Kind::Pending`].
    Pending(PendingTask),
    /// See [`Kind::NextId`].
    NextId(u64),
}

/// An unfinished task as the journal knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTask {
    /// Its id.
    pub id: u64,
    /// What was asked.
    pub spec: NewTask,
    /// The latest attempt handed out (0: none).
    pub attempt: u32,
    /// Its failed attempts, oldest first.
    pub errors: Vec<AttemptError>,
}

#[derive(Serialize)]
struct AcceptedRef<'a> {
    first_id: u64,
    tasks: &'a [NewTask],
}

#[derive(Deserialize)]
struct AcceptedOwned {
    first_id: u64,
    tasks: Vec<NewTask>,
}

#[derive(Serialize, Deserialize)]
struct FailedBody {
    id: u64,
    error: AttemptError,
}

/// `(task id, attempt)` of each assignment, encoded as a sequence of pairs
/// without building one.
struct DispatchedRef<'a>(&'a [Assignment]);

impl Serialize for DispatchedRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for a in self.0 {
            seq.serialize_element(&(a.task_id, a.attempt))?;
        }
        seq.end()
    }
}

/// What can be appended: borrowed forms of the records, so the master's hot
/// path journals a batch without copying it.
pub enum Entry<'a> {
    /// See [`Kind::Accepted`].
    Accepted {
        /// Id of the first task.
        first_id: u64,
        /// The tasks.
        tasks: &'a [NewTask],
    },
    /// See [`Kind::Dispatched`].
    Dispatched(&'a [Assignment]),
    /// See [`Kind::AttemptFailed`].
    AttemptFailed {
        /// The task.
        id: u64,
        /// What went wrong.
        error: &'a AttemptError,
    },
    /// See [`Kind::Finished`].
    Finished(&'a TaskResult),
    /// See [`Kind::Forgotten`].
    Forgotten(&'a [u64]),
    /// See [`Kind::Pending`].
    Pending(&'a PendingTask),
    /// See [`Kind::NextId`].
    NextId(u64),
}

impl Entry<'_> {
    fn kind(&self) -> Kind {
        match self {
            Entry::Accepted { .. } => Kind::Accepted,
            Entry::Dispatched(_) => Kind::Dispatched,
            Entry::AttemptFailed { .. } => Kind::AttemptFailed,
            Entry::Finished(_) => Kind::Finished,
            Entry::Forgotten(_) => Kind::Forgotten,
            Entry::Pending(_) => Kind::Pending,
            Entry::NextId(_) => Kind::NextId,
        }
    }

    fn body(&self, dst: &mut BytesMut) -> Result<(), ProtoError> {
        use crate::proto::encode_record_body as enc;
        match self {
            Entry::Accepted { first_id, tasks } => enc(
                &AcceptedRef {
                    first_id: *first_id,
                    tasks,
                },
                dst,
            ),
            Entry::Dispatched(a) => enc(&DispatchedRef(a), dst),
            Entry::AttemptFailed { id, error } => {
                #[derive(Serialize)]
                struct B<'a> {
                    id: u64,
                    error: &'a AttemptError,
                }
                enc(&B { id: *id, error }, dst)
            }
            Entry::Finished(r) => enc(r, dst),
            Entry::Forgotten(ids) => enc(ids, dst),
            Entry::Pending(p) => enc(p, dst),
            Entry::NextId(n) => enc(n, dst),
        }
    }

    /// Appends the whole record (prefix, kind, body) to `dst`, checksummed
    /// with `salt`.
    pub fn encode(&self, dst: &mut BytesMut, salt: Salt) -> Result<(), ProtoError> {
        let start = dst.len();
        dst.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
        dst.extend_from_slice(&[self.kind() as u8]);
        if let Err(e) = self.body(dst) {
            dst.truncate(start);
            return Err(e);
        }
        let len = dst.len() - start - RECORD_PREFIX_LEN;
        if len > RECORD_BYTES_MAX {
            dst.truncate(start);
            return Err(ProtoError::Encode(format!(
                "journal record of {len} bytes is above the limit of {RECORD_BYTES_MAX}"
            )));
        }
        let len_bytes = (len as u32).to_le_bytes();
        dst[start..start + 4].copy_from_slice(&len_bytes);
        let crc = checksum(salt, &len_bytes, &dst[start + RECORD_PREFIX_LEN..]);
        dst[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

fn checksum(salt: Salt, len: &[u8; 4], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(s) = salt.0 {
        h.update(&s);
    }
    h.update(len);
    h.update(rest);
    h.finalize()
}

/// How reading one record at an offset went.
#[derive(Debug)]
pub enum Read {
    /// A record, and the offset after it.
    Record(Record, usize),
    /// The bytes from here do not hold a whole, intact record.
    Bad(String),
    /// The end of the data.
    End,
}

/// Reads the record at `at` in `data` (a whole journal image whose salt is
/// `salt`). Payloads and texts of the record are slices of `data`, not
/// copies.
pub fn read_at(data: &Bytes, at: usize, salt: Salt) -> Read {
    let rest = data.len() - at;
    if rest == 0 {
        return Read::End;
    }
    if rest < RECORD_PREFIX_LEN + 1 {
        return Read::Bad(format!("{rest} bytes, shorter than a record"));
    }
    let len_bytes: [u8; 4] = data[at..at + 4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > RECORD_BYTES_MAX {
        return Read::Bad(format!("record length {len} out of range"));
    }
    if rest < RECORD_PREFIX_LEN + len {
        return Read::Bad(format!(
            "record of {len} bytes cut off after {} bytes",
            rest - RECORD_PREFIX_LEN
        ));
    }
    let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
    let body = &data[at + RECORD_PREFIX_LEN..at + RECORD_PREFIX_LEN + len];
    if checksum(salt, &len_bytes, body) != crc {
        return Read::Bad("checksum mismatch".into());
    }
    let end = at + RECORD_PREFIX_LEN + len;
    let Some(kind) = Kind::from_byte(body[0]) else {
        return Read::Bad(format!(
            "unknown record kind {} (written by a newer runner?)",
            body[0]
        ));
    };
    let body = data.slice(at + RECORD_PREFIX_LEN + 1..end);
    match decode(kind, &body) {
        Ok(r) => Read::Record(r, end),
        Err(e) => Read::Bad(format!("record of kind {kind:?} does not decode: {e}")),
    }
}

fn decode(kind: Kind, body: &Bytes) -> Result<Record, ProtoError> {
    use crate::proto::decode_record_body as dec;
    Ok(match kind {
        Kind::Accepted => {
            let a: AcceptedOwned = dec(body)?;
            Record::Accepted {
                first_id: a.first_id,
                tasks: a.tasks,
            }
        }
        Kind::Dispatched => Record::Dispatched(dec(body)?),
        Kind::AttemptFailed => {
            let f: FailedBody = dec(body)?;
            Record::AttemptFailed {
                id: f.id,
                error: f.error,
            }
        }
        Kind::Finished => Record::Finished(dec(body)?),
        Kind::Forgotten => Record::Forgotten(dec(body)?),
        Kind::Pending => Record::Pending(dec(body)?),
        Kind::NextId => Record::NextId(dec(body)?),
    })
}

/// Whether an intact record starts after a damaged one.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// None does: the damage runs to the end.
    Nothing,
    /// One starts at this offset.
    At(usize),
    /// The search gave up (see [`SEARCH_BYTES_MAX`]).
    Unknown,
}

/// Most bytes the search for an intact record checksums before it gives
/// up: a few tenths of a second, whatever the damage.
pub const SEARCH_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Whether some intact record starts anywhere in `data[from + 1..]`: then
/// the damage at `from` is not a torn tail (which nothing follows) but
/// corruption in the middle of the journal. Offsets whose length or kind
/// byte cannot start a record are passed over before any checksum.
pub fn intact_record_after(data: &Bytes, from: usize, salt: Salt) -> After {
    let mut budget = SEARCH_BYTES_MAX;
    for at in from + 1..data.len().saturating_sub(RECORD_PREFIX_LEN) {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0
            || len > RECORD_BYTES_MAX
            || data.len() - at - RECORD_PREFIX_LEN < len
            || Kind::from_byte(data[at + RECORD_PREFIX_LEN]).is_none()
        {
            continue;
        }
        if len > budget {
            return After::Unknown;
        }
        budget -= len;
        if let Read::Record(..) = read_at(data, at, salt) {
            return After::At(at);
        }
    }
    After::Nothing
}

/// Whether the bytes from a damaged record to the end (`rest`) can be what
/// a write cut short leaves: zeros (space the file system extended but did
/// not fill), a record prefix, or one record that reaches or passes the
/// end (cut off, or with a flipped byte). Anything longer is not a torn
/// last write.
pub fn torn_shape(rest: &[u8]) -> bool {
    if rest.iter().all(|b| *b == 0) || rest.len() < RECORD_PREFIX_LEN + 1 {
        return true;
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    len > 0 && len <= RECORD_BYTES_MAX && rest.len() <= RECORD_PREFIX_LEN + len
}
