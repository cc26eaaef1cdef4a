//! Where finished tasks' results wait for a client: which ids are finished,
//! which results are kept until a client acknowledges them, and which
//! clients attached to unfinished tasks by id.
//!
//! A result is kept when nobody can take it now (its client is gone) or,
//! with a journal, until a client acknowledges it, so that a client that
//! lost its connection (or its master) can fetch it again. Finished ids are
//! a bitmap, not a set: one bit per task, trimmed from the front as the
//! oldest ids finish, so the master can tell "finished" from "unfinished"
//! for any id without a per-task entry.

use std::collections::{HashMap, VecDeque};

use super::Route;
use crate::proto::{TaskResult, TaskStatus, Text};

/// Ids that have finished: every id below `base`, plus the set bits.
#[derive(Debug)]
pub(crate) struct DoneSet {
    base: u64,
    words: VecDeque<u64>,
}

impl DoneSet {
    /// Every id below `next_id` finished except `unfinished` (ascending).
    pub fn restored(next_id: u64, unfinished: impl Iterator<Item = u64>) -> Self {
        let mut unfinished = unfinished.peekable();
        let first = unfinished.peek().copied().unwrap_or(next_id).min(next_id);
        let mut s = DoneSet {
            base: first / 64 * 64,
            words: VecDeque::new(),
        };
        let mut next_unfinished = unfinished.next();
        for id in s.base..next_id {
            if next_unfinished == Some(id) {
                next_unfinished = unfinished.next();
            } else {
                s.insert(id);
            }
        }
        s
    }

    /// Marks `id` finished; false if it already was.
    pub fn insert(&mut self, id: u64) -> bool {
        if id < self.base {
            return false;
        }
        let word = ((id - self.base) / 64) as usize;
        let bit = 1u64 << ((id - self.base) % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }

    /// Whether `id` has finished.
    pub fn contains(&self, id: u64) -> bool {
        if id < self.base {
            return true;
        }
        let word = ((id - self.base) / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1u64 << ((id - self.base) % 64)) != 0)
    }
}

/// Results waiting for clients.
pub(crate) struct ResultStore {
    pub done: DoneSet,
    /// Results not yet acknowledged by a client (or with no client to take
    /// them), by id.
    pub kept: HashMap<u64, TaskResult>,
    /// Clients attached by id to unfinished tasks.
    pub watchers: HashMap<u64, Vec<Route>>,
}

impl ResultStore {
    pub fn new(done: DoneSet) -> Self {
        ResultStore {
            done,
            kept: HashMap::new(),
            watchers: HashMap::new(),
        }
    }
}

/// The answer to a fetch of an id the master does not know.
pub(crate) fn unknown(id: u64) -> TaskResult {
    TaskResult {
        id,
        status: TaskStatus::Unknown,
        output: Default::default(),
        attempts: 0,
        worker: Text::empty(),
        errors: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_set_tells_finished_ids_from_unfinished_ones() {
        let mut d = DoneSet::restored(1, std::iter::empty());
        assert!(d.contains(0), "id 0 is never handed out");
        assert!(!d.contains(1));
        for id in 1..200 {
            if id != 70 {
                assert!(d.insert(id));
            }
        }
        assert!(!d.insert(5), "a second finish is refused");
        assert!(!d.contains(70));
        assert!(d.contains(69) && d.contains(71));
        assert!(d.insert(70));
        assert!(d.words.len() <= 2, "finished prefixes are trimmed");
    }

    #[test]
    fn restored_done_set_leaves_only_unfinished_ids_open() {
        let d = DoneSet::restored(1000, [3u64, 500, 999].into_iter());
        for id in 0..1100 {
            let open = matches!(id, 3 | 500 | 999) || id >= 1000;
            assert_eq!(d.contains(id), !open, "id {id}");
        }
    }
}
