//! Task ids journaled ahead of use: no id a worker may have been given is
//! handed out again after a crash.
//!
//! A task is queued as soon as its `Accepted` record is appended; only the
//! client's acknowledgement waits for the record to be stored. So a worker
//! may start a task whose record a crash then loses. Replaying the journal
//! alone, the restarted master gave that id to the next task submitted while
//! a worker still ran the first under it, and the second task got the first
//! one's result (found in the lab with a slow disk). Waiting for every
//! task's record before dispatch fixes that too, but costs a hand-over to
//! the journal's writer per dispatch: 15 % of journaled throughput, measured.
//!
//! Instead the master appends a `NextId` record [`ID_RESERVATION`] ids ahead
//! of those it hands out, renews it half-way, and gives a worker no task
//! whose id a stored reservation does not cover. A restarted master starts
//! above every id its predecessor can have given a worker; a task that ran
//! without its record stays unknown (its client was never told it was
//! accepted) and its late result is dropped. Dispatch waits on the journal
//! only if ids outrun the writer by half a reservation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::journal::{Entry, Journal};

/// Ids a `NextId` record reserves ahead of those handed out. A restarted
/// master skips at most this many; its done-set fills the gap (one bit each).
pub const ID_RESERVATION: u64 = 1 << 20;

/// The reservations appended and which of them are stored.
pub(crate) struct Reservation {
    /// Ids below this are covered by a stored `NextId` record.
    stored_below: AtomicU64,
    /// Ids below this are covered by an appended one.
    appended_below: AtomicU64,
    /// Appended reservations not yet known to be stored: `(ids below, end
    /// of the record in the journal)`, oldest first.
    pending: Mutex<VecDeque<(u64, u64)>>,
}

impl Reservation {
    /// Reserves the ids from `next_id` on (a master's start).
    pub(crate) fn start(journal: &Journal, next_id: u64) -> Reservation {
        let r = Reservation {
            stored_below: AtomicU64::new(next_id),
            appended_below: AtomicU64::new(next_id),
            pending: Mutex::new(VecDeque::new()),
        };
        r.extend(journal, next_id);
        r
    }

    /// Ids below `end_id` have been handed to tasks: renews the reservation
    /// once they pass half of it. Once per accepted batch.
    pub(crate) fn extend(&self, journal: &Journal, end_id: u64) {
        if end_id.saturating_add(ID_RESERVATION / 2) <= self.appended_below.load(Ordering::Acquire)
        {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let below = end_id.saturating_add(ID_RESERVATION);
        if below <= self.appended_below.load(Ordering::Acquire) {
            return;
        }
        let end = journal.append(Entry::NextId(below));
        pending.push_back((below, end));
        self.appended_below.store(below, Ordering::Release);
    }

    /// Waits until a stored reservation covers `max_id`, the highest id
    /// about to go to a worker. Returns at once in the usual case. While the
    /// journal cannot write, work goes on unrecorded rather than stop.
    pub(crate) async fn cover(&self, journal: &Journal, max_id: u64) {
        loop {
            if max_id < self.stored_below.load(Ordering::Acquire) {
                return;
            }
            let wait_for = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let stored = journal.stored();
                while let Some(&(below, end)) = pending.front() {
                    if end > stored {
                        break;
                    }
                    self.stored_below.store(below, Ordering::Release);
                    pending.pop_front();
                }
                if max_id < self.stored_below.load(Ordering::Acquire) {
                    return;
                }
                match pending.iter().find(|(below, _)| max_id < *below) {
                    Some(&(_, end)) => end,
                    // Ids are reserved before their batch is queued: none
                    // can be past every reservation appended.
                    None => return,
                }
            };
            if journal.wait_stored(wait_for).await.is_err() {
                return;
            }
        }
    }
}
