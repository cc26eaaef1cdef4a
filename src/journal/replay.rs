//! Reading a journal back: what a restarted master resumes, and what
//! compaction rewrites.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::record::{self, PendingTask, Read, Record, Salt, FORMAT_VERSION, HEADER_LEN, MAGIC};
use super::JournalError;
use crate::proto::TaskResult;

/// The state a journal describes.
#[derive(Debug, Default)]
pub struct State {
    /// The next task id to hand out (every id below is taken).
    pub next_id: u64,
    /// Unfinished tasks, by id.
    pub pending: BTreeMap<u64, PendingTask>,
    /// Final results no client has acknowledged yet, by id.
    pub results: BTreeMap<u64, TaskResult>,
}

impl State {
    /// Items it holds: unfinished tasks and kept results.
    pub fn live(&self) -> u64 {
        (self.pending.len() + self.results.len()) as u64
    }

    /// Applies one record.
    pub fn apply(&mut self, r: Record) {
        match r {
            Record::Accepted { first_id, tasks } => {
                let n = tasks.len() as u64;
                for (id, spec) in (first_id..=u64::MAX).zip(tasks) {
                    if self.results.contains_key(&id) {
                        // Finished already: a journal never says otherwise,
                        // but a damaged one must not make a task run twice.
                        continue;
                    }
                    self.pending.insert(
                        id,
                        PendingTask {
                            id,
                            spec,
                            attempt: 0,
                            errors: Vec::new(),
                        },
                    );
                }
                self.next_id = self.next_id.max(first_id.saturating_add(n));
            }
            Record::Dispatched(pairs) => {
                for (id, attempt) in pairs {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.attempt = p.attempt.max(attempt);
                    }
                }
            }
            Record::AttemptFailed { id, error } => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.attempt = p.attempt.max(error.attempt);
                    p.errors.push(error);
                }
            }
            Record::Finished(result) => {
                self.pending.remove(&result.id);
                self.next_id = self.next_id.max(result.id.saturating_add(1));
                self.results.insert(result.id, result);
            }
            Record::Forgotten(ids) => {
                for id in ids {
                    self.results.remove(&id);
                }
            }
            Record::Pending(p) => {
                self.next_id = self.next_id.max(p.id.saturating_add(1));
                if !self.results.contains_key(&p.id) {
                    self.pending.insert(p.id, p);
                }
            }
            Record::NextId(n) => self.next_id = self.next_id.max(n),
        }
    }
}

/// What replaying a journal image found.
#[derive(Debug)]
pub struct Replayed {
    /// The state.
    pub state: State,
    /// Records read.
    pub records: u64,
    /// Bytes of intact records (header included): the journal's valid length.
    pub valid_len: usize,
    /// A torn last record that was cut: its offset and why it is unreadable.
    pub torn: Option<(usize, String)>,
    /// The journal's salt, for the records appended to it.
    pub salt: Salt,
}

/// Checks the header of a journal image; returns its salt.
pub fn check_header(data: &[u8]) -> Result<Salt, JournalError> {
    if data.len() < HEADER_LEN {
        return Err(JournalError::NotAJournal(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            data.len()
        )));
    }
    if &data[..8] != MAGIC {
        return Err(JournalError::NotAJournal(
            "it does not start with the journal magic RUNJRNL".into(),
        ));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(JournalError::NewerVersion {
            file: Default::default(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(JournalError::NotAJournal("format version 0".into()));
    }
    Ok(Salt::of(version, data[12..16].try_into().expect("4 bytes")))
}

/// Replays a whole journal image. A damaged last record (a torn write) is
/// reported and left out; damage with intact records after it is corruption
/// and an error, never skipped.
pub fn replay(data: &Bytes) -> Result<Replayed, JournalError> {
    let salt = check_header(data)?;
    let mut state = State {
        next_id: 1,
        ..State::default()
    };
    let mut at = HEADER_LEN;
    let mut records = 0u64;
    loop {
        match record::read_at(data, at, salt) {
            Read::End => {
                return Ok(Replayed {
                    state,
                    records,
                    valid_len: at,
                    torn: None,
                    salt,
                })
            }
            Read::Record(r, next) => {
                state.apply(r);
                records += 1;
                at = next;
            }
            Read::Bad(why) => {
                let rest = &data[at..];
                let after = match record::intact_record_after(data, at, salt) {
                    record::After::Nothing if !record::torn_shape(rest) => record::After::Unknown,
                    after => after,
                };
                if after != record::After::Nothing {
                    return Err(JournalError::Corrupt {
                        file: Default::default(),
                        offset: at as u64,
                        why,
                        intact_after: match after {
                            record::After::At(next) => Some(next as u64),
                            _ => None,
                        },
                        tail_bytes: rest.len() as u64,
                    });
                }
                return Ok(Replayed {
                    state,
                    records,
                    valid_len: at,
                    torn: Some((at, why)),
                    salt,
                });
            }
        }
    }
}
