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

use rustc_hash::FxHashMap;

use super::Route;
use crate::proto::{BatchWeight, TaskResult, TaskStatus, Text};

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
    /// What `kept` weighs (as in a client's queue): changed only through
    /// [`ResultStore::keep`] and [`ResultStore::forget`].
    pub kept_bytes: usize,
    /// Without a journal: results written to connections that ended before
    /// their clients acknowledged them.
    pub left: Left,
    /// Clients attached by id to unfinished tasks.
    pub watchers: HashMap<u64, Vec<Route>>,
}

impl ResultStore {
    pub fn new(done: DoneSet) -> Self {
        ResultStore {
            done,
            kept: HashMap::new(),
            kept_bytes: 0,
            left: Left::default(),
            watchers: HashMap::new(),
        }
    }

    /// The result kept for `id`, if any.
    pub fn get(&self, id: u64) -> Option<&TaskResult> {
        self.kept.get(&id).or_else(|| self.left.results.get(&id))
    }

    /// Keeps `r` until a client acknowledges it (or fetches it, without a
    /// journal).
    pub fn keep(&mut self, r: TaskResult) {
        self.kept_bytes += r.batch_weight();
        if let Some(old) = self.kept.insert(r.id, r) {
            self.kept_bytes -= old.batch_weight();
        }
    }

    /// Forgets `id`'s kept result; whether there was one.
    pub fn forget(&mut self, id: u64) -> bool {
        match self.kept.remove(&id) {
            Some(old) => {
                self.kept_bytes -= old.batch_weight();
                true
            }
            None => false,
        }
    }

    /// Whether one more result may be kept for a client that is not there,
    /// without a journal.
    pub fn room_for_unclaimed(&self, cfg: &super::MasterConfig) -> bool {
        self.kept.len() < cfg.unclaimed_results_max && self.kept_bytes < cfg.kept_results_bytes_max
    }

    /// Results kept for a fetch, of either kind.
    pub fn kept_len(&self) -> usize {
        self.kept.len() + self.left.results.len()
    }
}

/// Results written to one client's connection that it has not acknowledged
/// yet, on a master without a journal (with one, [`ResultStore::kept`]
/// holds every result until acknowledged). When the connection ends, those
/// still here go to [`Left`]: the client may not have read them (they were
/// in the connection's buffers when it broke), or its program ended before
/// taking them, and a fetch after a reconnect finds them.
///
/// In the order they were written: a client acknowledges in that order
/// (this implementation's does), so an acknowledgement takes the oldest,
/// with no lookup. Ids acknowledged out of that order wait in a set until
/// their result reaches the front.
#[derive(Default)]
pub(crate) struct Unacked {
    results: VecDeque<TaskResult>,
    bytes: usize,
    acked_early: rustc_hash::FxHashSet<u64>,
    /// Results not tracked for want of room: a client this far behind
    /// with its acknowledgements (or one that never sends any) loses
    /// them if its connection breaks before it reads them.
    pub untracked: u64,
}

impl Unacked {
    /// Notes results written to the connection (taken: they were encoded
    /// by reference). Past the bounds the oldest go: a client far behind
    /// with its acknowledgements most likely holds those (it acknowledges
    /// when its program takes a result, not when it arrives), while the
    /// newest may still be in the connection's buffers.
    pub fn track(&mut self, batch: Vec<TaskResult>) {
        for r in batch {
            self.bytes += r.batch_weight();
            self.results.push_back(r);
        }
        while self.results.len() > crate::limits::CLIENT_UNACKED_RESULTS_MAX
            || self.bytes > crate::limits::CLIENT_UNACKED_BYTES_MAX
        {
            self.pop_front();
            self.untracked += 1;
        }
    }

    /// The client holds these.
    pub fn acked(&mut self, ids: &[u64]) {
        for &id in ids {
            match self.results.front() {
                Some(r) if r.id == id => self.pop_front(),
                Some(_) => {
                    self.acked_early.insert(id);
                }
                None => return,
            }
            while let Some(r) = self.results.front() {
                if self.acked_early.is_empty() || !self.acked_early.remove(&r.id) {
                    break;
                }
                self.pop_front();
            }
        }
        // A result never acknowledged at the front (or ids of results never
        // sent here) would keep the set growing: now and then the results
        // it names are taken out wherever they are, and the rest of it is
        // dropped.
        if self.acked_early.len() >= ACKED_EARLY_SWEEP {
            let early = std::mem::take(&mut self.acked_early);
            let mut bytes = self.bytes;
            self.results.retain(|r| {
                let keep = !early.contains(&r.id);
                if !keep {
                    bytes -= r.batch_weight();
                }
                keep
            });
            self.bytes = bytes;
        }
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.results.pop_front() {
            self.bytes -= r.batch_weight();
        }
    }

    /// Everything still unacknowledged, when the connection has ended; a
    /// large output copied out of its frame's buffer (see [`kept_copy`]).
    pub fn take(&mut self) -> Vec<TaskResult> {
        self.bytes = 0;
        let early = std::mem::take(&mut self.acked_early);
        self.results
            .drain(..)
            .filter(|r| !early.contains(&r.id))
            .map(|r| kept_copy(&r))
            .collect()
    }
}

/// Ids acknowledged out of order that [`Unacked`] holds before it sweeps
/// them out of the queue.
const ACKED_EARLY_SWEEP: usize = 1024;

/// Results left unacknowledged by connections that ended (see
/// [`Unacked`]), kept for a fetch. Unlike [`ResultStore::kept`], which
/// holds results no client was sent and is bounded by refusing detached
/// batches, these were sent once already: past
/// [`crate::limits::LEFT_RESULTS_MAX`] the oldest are dropped to make room.
#[derive(Default)]
pub(crate) struct Left {
    results: FxHashMap<u64, TaskResult>,
    /// What they weigh, as in a client's queue.
    bytes: usize,
    /// Ids in the order they were left, for dropping the oldest; ids since
    /// acknowledged stay until they reach the front or a compaction.
    order: VecDeque<u64>,
}

impl Left {
    /// Keeps `r`, dropping the oldest past `max` results or `max_bytes`;
    /// returns the id of the last result dropped to make room.
    pub fn insert(&mut self, r: TaskResult, max: usize, max_bytes: usize) -> Option<u64> {
        let id = r.id;
        self.bytes += r.batch_weight();
        match self.results.insert(id, r) {
            None => self.order.push_back(id),
            Some(old) => self.bytes -= old.batch_weight(),
        }
        let mut dropped = None;
        while self.results.len() > max || self.bytes > max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.results.remove(&oldest) {
                self.bytes -= old.batch_weight();
                dropped = Some(oldest);
            }
        }
        if self.order.len() > 2 * self.results.len() + 1024 {
            let results = &self.results;
            self.order.retain(|id| results.contains_key(id));
        }
        dropped
    }

    /// Forgets `id`'s result; whether one was kept.
    pub fn remove(&mut self, id: u64) -> bool {
        if self.results.is_empty() {
            return false;
        }
        match self.results.remove(&id) {
            Some(old) => {
                self.bytes -= old.batch_weight();
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }
}

/// Outputs above this many bytes are copied when a result is kept: see
/// [`kept_copy`].
const KEEP_COPY_ABOVE_BYTES: usize = 1024;

/// A result as it is kept for later. Its output is a slice of the frame it
/// came in, and holds that frame's whole read buffer (which may hold more
/// than its frame); a large one is copied out, so that a result kept for a
/// long time holds its own bytes only.
pub(crate) fn kept_copy(r: &TaskResult) -> TaskResult {
    let mut kept = r.clone();
    if kept.output.len() > KEEP_COPY_ABOVE_BYTES {
        kept.output = crate::proto::Payload::from(bytes::Bytes::copy_from_slice(&r.output));
    }
    kept
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

    fn result(id: u64) -> TaskResult {
        TaskResult {
            status: TaskStatus::Ok,
            ..unknown(id)
        }
    }

    #[test]
    fn left_results_past_their_bound_drop_the_oldest_first() {
        let mut left = Left::default();
        for id in 1..=3 {
            assert_eq!(left.insert(result(id), 3, usize::MAX), None);
        }
        assert!(left.remove(2), "acknowledged");
        assert_eq!(left.insert(result(4), 3, usize::MAX), None, "room again");
        assert_eq!(
            left.insert(result(5), 3, usize::MAX),
            Some(1),
            "the oldest goes"
        );
        assert_eq!(
            left.insert(result(6), 3, usize::MAX),
            Some(3),
            "an acknowledged id is skipped"
        );
        let kept: Vec<u64> = (1..=6).filter(|id| left.results.contains_key(id)).collect();
        assert_eq!(kept, [4, 5, 6]);
    }

    #[test]
    fn left_results_past_their_byte_bound_drop_the_oldest_first() {
        let mut left = Left::default();
        let weight = result(1).batch_weight();
        for id in 1..=4 {
            left.insert(result(id), usize::MAX, 3 * weight);
        }
        let kept: Vec<u64> = (1..=4).filter(|id| left.results.contains_key(id)).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(left.bytes, 3 * weight);
    }

    #[test]
    fn one_result_never_acknowledged_does_not_keep_the_acknowledged_ones_after_it() {
        let mut u = Unacked::default();
        u.track((1..=5000).map(result).collect());
        // Everything but the first, in order.
        for id in 2..=5000 {
            u.acked(&[id]);
        }
        let left: Vec<u64> = u.take().iter().map(|r| r.id).collect();
        assert_eq!(left, [1]);
    }

    #[test]
    fn a_client_far_behind_with_its_acknowledgements_keeps_its_newest_results_tracked() {
        let mut u = Unacked::default();
        let n = crate::limits::CLIENT_UNACKED_RESULTS_MAX as u64;
        u.track((1..=n + 5).map(result).collect());
        assert_eq!(u.untracked, 5);
        assert_eq!(u.results.front().map(|r| r.id), Some(6), "the oldest went");
        assert_eq!(u.results.back().map(|r| r.id), Some(n + 5));
    }

    #[test]
    fn left_results_do_not_grow_their_order_without_bound_as_they_are_acknowledged() {
        let mut left = Left::default();
        for id in 1..100_000 {
            left.insert(result(id), 10, usize::MAX);
            left.remove(id);
        }
        assert!(left.order.len() <= 1025, "{}", left.order.len());
    }

    #[test]
    fn unacked_results_are_forgotten_when_acknowledged() {
        let mut u = Unacked::default();
        u.track((1..=100).map(result).collect());
        u.acked(&(1..=100).collect::<Vec<_>>());
        assert!(u.take().is_empty());
        assert_eq!(u.bytes, 0);
    }

    #[test]
    fn unacked_results_acknowledged_out_of_order_are_forgotten_all_the_same() {
        let mut u = Unacked::default();
        u.track((1..=6).map(result).collect());
        u.acked(&[3, 1, 99]);
        assert_eq!(u.results.front().map(|r| r.id), Some(2), "1 taken, 3 waits");
        u.acked(&[2]);
        assert_eq!(u.results.front().map(|r| r.id), Some(4), "2 and 3 taken");
        u.acked(&[6]);
        let left: Vec<u64> = u.take().iter().map(|r| r.id).collect();
        assert_eq!(left, [4, 5]);
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
