//! A task's life in the master, as plain data: what was asked, which attempt
//! is out, what failed, and whether another attempt is allowed.
//!
//! A [`TaskRecord`] is owned by exactly one place at a time (the queue, one
//! worker's in-flight table, or a retry timer), so exactly one place can
//! finish it: that is how each task gets exactly one result.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::proto::{AttemptError, NewTask, Payload, TaskResult, TaskStatus, Text};

/// How failed attempts are retried: exponential back-off from `base`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (1 = first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What to do with a task after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queue it again after `delay`.
    Retry {
        /// Back-off before the next attempt.
        delay: Duration,
    },
    /// No retries left: report it failed.
    Exhausted,
}

/// An instant in 8 bytes (nanoseconds since the first one taken in this
/// process) instead of `Instant`'s 16: a queued task holds two, and a master
/// holds millions of queued tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Stamp {
    /// The stamp of `at` (instants before the epoch count as the epoch).
    pub fn of(at: Instant) -> Stamp {
        Stamp(at.saturating_duration_since(epoch()).as_nanos() as u64)
    }
    /// The instant it stands for.
    pub fn instant(self) -> Instant {
        epoch() + Duration::from_nanos(self.0)
    }
}

/// Why a record went back into the queue, and when: the next dispatch then
/// measures how long recovery or a retry took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Its worker was lost, at this instant.
    WorkerLost(Stamp),
    /// Its attempt failed, at this instant.
    Failed(Stamp),
}

/// An `Option<Requeued>` in 8 bytes instead of 16: the stamp shifted left
/// by one, the kind in the low bit, 0 for none (a stamp of 0 ns is stored as
/// 1 ns: a nanosecond off, once, at the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequeuedSlot(u64);

impl RequeuedSlot {
    /// Records why and when.
    pub fn set(&mut self, r: Requeued) {
        let (stamp, bit) = match r {
            Requeued::WorkerLost(s) => (s.0, 0),
            Requeued::Failed(s) => (s.0, 1),
        };
        self.0 = (stamp.max(1) << 1) | bit;
    }
    /// Takes it, leaving none.
    pub fn take(&mut self) -> Option<Requeued> {
        let v = std::mem::take(&mut self.0);
        if v == 0 {
            return None;
        }
        let stamp = Stamp(v >> 1);
        Some(if v & 1 == 0 {
            Requeued::WorkerLost(stamp)
        } else {
            Requeued::Failed(stamp)
        })
    }
}

/// A task's failed attempts: one thin pointer, null while there are none
/// (nearly always), where a `Vec` is 24 bytes and a boxed slice 16. Reads
/// as a slice.
#[derive(Debug, Default)]
// The box is the point: a thin 8-byte pointer in the record, not a 24-byte
// `Vec`; the extra allocation happens only on a failure.
#[allow(clippy::box_collection)]
pub struct Errors(Option<Box<Vec<AttemptError>>>);

impl Errors {
    /// Appends one.
    pub fn push(&mut self, e: AttemptError) {
        // A failure is rare and costs an allocation; the common case (no
        // failure) costs nothing.
        self.0.get_or_insert_with(Default::default).push(e);
    }
    /// All of them, oldest first.
    pub fn into_vec(self) -> Vec<AttemptError> {
        self.0.map(|b| *b).unwrap_or_default()
    }
}

impl From<Vec<AttemptError>> for Errors {
    fn from(v: Vec<AttemptError>) -> Self {
        Errors((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl std::ops::Deref for Errors {
    type Target = [AttemptError];
    fn deref(&self) -> &[AttemptError] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// One accepted task, with `R` the route its result takes back to its client.
#[derive(Debug)]
pub struct TaskRecord<R> {
    /// Its id.
    pub id: u64,
    /// What the client asked for.
    pub spec: NewTask,
    /// The number of the latest attempt handed out (0: none yet).
    pub attempt: u32,
    /// When it last entered the queue, in microseconds after `accepted_at`
    /// (saturating at 71 minutes): 4 bytes where a stamp takes 8.
    queued_after_us: u32,
    /// Every failed attempt, oldest first.
    pub errors: Errors,
    /// Where its result goes.
    pub reply: R,
    /// When the master accepted it.
    pub accepted_at: Stamp,
    /// Why it is queued again, if it is.
    pub requeued: RequeuedSlot,
}

impl<R> TaskRecord<R> {
    /// A newly accepted task.
    pub fn new(id: u64, spec: NewTask, reply: R, now: Instant) -> Self {
        TaskRecord {
            id,
            spec,
            attempt: 0,
            errors: Errors::default(),
            reply,
            accepted_at: Stamp::of(now),
            queued_after_us: 0,
            requeued: RequeuedSlot::default(),
        }
    }

    /// When it last entered the queue.
    pub fn queued_at(&self) -> Instant {
        self.accepted_at.instant() + Duration::from_micros(self.queued_after_us as u64)
    }

    /// Marks it entering the queue (again) at `now`.
    pub fn set_queued_at(&mut self, now: Instant) {
        let after = now.saturating_duration_since(self.accepted_at.instant());
        self.queued_after_us = after.as_micros().min(u32::MAX as u128) as u32;
    }

    /// A task read back from the journal after a restart: its attempt count
    /// and failures are kept, so the next attempt gets a new number.
    pub fn restored(
        id: u64,
        spec: NewTask,
        attempt: u32,
        errors: Vec<AttemptError>,
        reply: R,
        now: Instant,
    ) -> Self {
        TaskRecord {
            id,
            spec,
            attempt,
            errors: Errors::from(errors),
            reply,
            accepted_at: Stamp::of(now),
            queued_after_us: 0,
            requeued: RequeuedSlot::default(),
        }
    }

    /// Starts the next attempt; returns its number.
    pub fn next_attempt(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// Records that the current attempt failed on `worker` in a way no
    /// attempt can mend (a rejected input): no retry follows, whatever
    /// `retries` allows, and [`TaskRecord::failed`] reports it.
    pub fn reject(&mut self, worker: Text, reason: Text) {
        self.errors.push(AttemptError {
            attempt: self.attempt,
            worker,
            // First, so that cutting a long reason keeps it.
            reason: Text::clipped(format!("not retried, no attempt can succeed: {reason}")),
        });
    }

    /// Records that the current attempt failed on `worker` because of
    /// `reason`, and says whether another is allowed.
    pub fn fail(&mut self, worker: Text, reason: Text, policy: &RetryPolicy) -> Verdict {
        self.errors.push(AttemptError {
            attempt: self.attempt,
            worker,
            reason,
        });
        let failures = self.errors.len() as u32;
        if failures > self.spec.retries as u32 {
            Verdict::Exhausted
        } else {
            Verdict::Retry {
                delay: policy.delay(failures),
            }
        }
    }

    /// The final result of a successful attempt on `worker`.
    pub fn succeeded(self, output: Payload, worker: Text) -> (TaskResult, R) {
        self.finish(TaskStatus::Ok, output, worker)
    }

    /// The final result of a task out of retries.
    pub fn failed(self) -> (TaskResult, R) {
        let worker = self
            .errors
            .last()
            .map(|e| e.worker.clone())
            .unwrap_or_default();
        self.finish(TaskStatus::Failed, Payload::empty(), worker)
    }

    /// The final result of a task stopped before it finished (shutdown, a
    /// client's cancel) while no attempt was running: its `worker` is the
    /// one that ran its last attempt, if any did (it may have been waiting
    /// out a back-off).
    pub fn cancelled(mut self, reason: Text) -> (TaskResult, R) {
        let last = self
            .errors
            .last()
            .map(|e| e.worker.clone())
            .unwrap_or_default();
        self.errors.push(AttemptError {
            attempt: self.attempt,
            worker: Text::empty(),
            reason,
        });
        self.finish(TaskStatus::Cancelled, Payload::empty(), last)
    }

    /// The final result of a task stopped while its attempt ran on
    /// `worker` (empty: none was running).
    pub fn cancelled_on(mut self, reason: Text, worker: Text) -> (TaskResult, R) {
        self.errors.push(AttemptError {
            attempt: self.attempt,
            worker: worker.clone(),
            reason,
        });
        self.finish(TaskStatus::Cancelled, Payload::empty(), worker)
    }

    fn finish(self, status: TaskStatus, output: Payload, worker: Text) -> (TaskResult, R) {
        (
            TaskResult {
                id: self.id,
                status,
                output,
                attempts: self.attempt,
                worker,
                errors: self.errors.into_vec(),
            },
            self.reply,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(retries: u8) -> TaskRecord<()> {
        let spec = NewTask {
            kind: Text::from_static("fail"),
            payload: Payload::empty(),
            priority: 1,
            retries,
            timeout_ms: 0,
        };
        TaskRecord::new(1, spec, (), Instant::now())
    }

    #[test]
    fn a_task_gets_one_plus_retries_attempts() {
        let p = RetryPolicy::default();
        let mut r = record(2);
        for expected in [
            Verdict::Retry { delay: p.delay(1) },
            Verdict::Retry { delay: p.delay(2) },
        ] {
            r.next_attempt();
            assert_eq!(r.fail("w".into(), "boom".into(), &p), expected);
        }
        r.next_attempt();
        assert_eq!(r.fail("w".into(), "boom".into(), &p), Verdict::Exhausted);
        let (result, ()) = r.failed();
        assert_eq!(result.attempts, 3);
        assert_eq!(result.errors.len(), 3);
        assert_eq!(result.status, TaskStatus::Failed);
    }

    #[test]
    fn a_task_cancelled_between_attempts_names_the_worker_of_its_last() {
        let p = RetryPolicy::default();
        let mut r = record(2);
        r.next_attempt();
        r.fail("w1".into(), "boom".into(), &p);
        let (result, ()) = r.cancelled("not needed".into());
        assert_eq!(result.status, TaskStatus::Cancelled);
        assert_eq!(result.worker, "w1");
        assert_eq!(result.errors.len(), 2);
        assert_eq!(result.errors[1].worker, "", "the cancel ran on no worker");
        let (never_ran, ()) = record(2).cancelled("not needed".into());
        assert_eq!(never_ran.worker, "");
    }

    #[test]
    fn a_requeued_slot_gives_back_what_was_set_once() {
        let mut slot = RequeuedSlot::default();
        assert_eq!(slot.take(), None);
        for r in [
            Requeued::WorkerLost(Stamp(12_345)),
            Requeued::Failed(Stamp(u64::MAX >> 1)),
        ] {
            slot.set(r);
            assert_eq!(slot.take(), Some(r));
            assert_eq!(slot.take(), None);
        }
    }

    #[test]
    fn a_record_is_small_because_a_master_queues_millions() {
        // 10,000,000 queued tasks must fit in 2 GB (issue #4): the record is
        // most of it. The queue stores records in blocks of 31 slots of
        // (record + 8 bytes); at 120 bytes a block is 3,976 bytes and fits
        // the allocator's 4 KiB class, at 128 it takes 5 KiB: 25 % more.
        // Growing it is a decision, not an accident.
        assert!(std::mem::size_of::<TaskRecord<std::sync::Arc<()>>>() <= 120);
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let delays: Vec<_> = (1..=4).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}
