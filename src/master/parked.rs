//! [`Parked`]: queued tasks set aside for the workers that run their kind.
//!
//! The scheduler queue is one priority order for every worker, which is
//! right while every worker runs every kind. When they differ (one worker
//! allows `exec`, another does not; a program registers a kind on some
//! workers only), a worker that pops a task it cannot run while another live
//! worker can parks it here by kind, instead of taking it and answering
//! `unsupported` (which would charge the task a retry and could use them
//! all up on the wrong workers). The workers that run the kind take parked
//! tasks before the queue's at the same or a lower priority.
//!
//! A task whose kind no live worker runs is not parked: it is handed out as
//! before, and its `unsupported` answers end it failed with the worker's
//! reason. When the last worker of a kind leaves, that kind's parked tasks
//! go back to the queue for the same reason: nothing waits for a worker that
//! may never come.
//!
//! Everything here is behind one mutex, taken only when the cluster's
//! workers differ in kinds: the dispatch path of a cluster whose workers
//! all run the same kinds reads one atomic per frame.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::proto::Text;
use crate::sched::TaskRecord;

/// Most tasks one dispatch round parks before it lets the master's thread
/// go: a queue of a million tasks of a kind this worker lacks is set aside
/// in slices, with heartbeats and other sessions served between them.
pub(crate) const PARK_PER_ROUND_MAX: usize = 4096;

/// Parked tasks of one kind: highest priority first, then in the order they
/// were parked.
type KindQueue<R> = BTreeMap<(Reverse<u8>, u64), TaskRecord<R>>;

struct Inner<R> {
    by_kind: HashMap<Text, KindQueue<R>>,
    /// Order of parking, for FIFO within a priority.
    seq: u64,
}

/// Tasks waiting for a worker that runs their kind.
pub(crate) struct Parked<R> {
    inner: Mutex<Inner<R>>,
    /// Tasks parked in all; read without the lock on every dispatch.
    len: AtomicUsize,
}

impl<R> Default for Parked<R> {
    fn default() -> Self {
        Parked {
            inner: Mutex::new(Inner {
                by_kind: HashMap::new(),
                seq: 0,
            }),
            len: AtomicUsize::new(0),
        }
    }
}

impl<R> Parked<R> {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<R>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tasks parked in all (a snapshot).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Sets `record` aside until a worker that runs its kind takes it.
    pub fn park(&self, record: TaskRecord<R>) {
        let mut inner = self.inner();
        inner.seq += 1;
        let key = (Reverse(record.spec.priority), inner.seq);
        inner
            .by_kind
            .entry(record.spec.kind.clone())
            .or_default()
            .insert(key, record);
        self.len.fetch_add(1, Ordering::Release);
    }

    /// The first parked task among the kinds `runs` accepts whose priority
    /// is at least `at_least` (the queue's best, which it must not pass).
    pub fn take(
        &self,
        runs: impl Fn(&Text) -> bool,
        at_least: Option<u8>,
    ) -> Option<TaskRecord<R>> {
        if self.len() == 0 {
            return None;
        }
        let mut inner = self.inner();
        let (kind, _) = inner
            .by_kind
            .iter()
            .filter(|(kind, _)| runs(kind))
            .filter_map(|(kind, q)| q.first_key_value().map(|(key, _)| (kind, *key)))
            .filter(|(_, (Reverse(p), _))| at_least.is_none_or(|min| *p >= min))
            .min_by_key(|(_, key)| *key)?;
        let kind = kind.clone();
        let q = inner.by_kind.get_mut(&kind)?;
        let (_, record) = q.pop_first()?;
        if q.is_empty() {
            inner.by_kind.remove(&kind);
        }
        self.len.fetch_sub(1, Ordering::Release);
        Some(record)
    }

    /// Every parked task of `kind`, best first (its last worker left).
    pub fn take_kind(&self, kind: &Text) -> Vec<TaskRecord<R>> {
        let Some(q) = self.inner().by_kind.remove(kind) else {
            return Vec::new();
        };
        self.len.fetch_sub(q.len(), Ordering::Release);
        q.into_values().collect()
    }

    /// Every parked task (the master is stopping).
    pub fn take_all(&self) -> Vec<TaskRecord<R>> {
        let by_kind = std::mem::take(&mut self.inner().by_kind);
        let all: Vec<TaskRecord<R>> = by_kind
            .into_values()
            .flat_map(|q| q.into_values())
            .collect();
        self.len.fetch_sub(all.len(), Ordering::Release);
        all
    }

    /// Takes out every parked task that `keep` refuses (cancelled ones).
    pub fn sweep(&self, keep: impl Fn(&TaskRecord<R>) -> bool) -> Vec<TaskRecord<R>> {
        if self.len() == 0 {
            return Vec::new();
        }
        let mut inner = self.inner();
        let mut out = Vec::new();
        inner.by_kind.retain(|_, q| {
            let gone: Vec<_> = q
                .iter()
                .filter(|(_, r)| !keep(r))
                .map(|(key, _)| *key)
                .collect();
            out.extend(gone.into_iter().filter_map(|key| q.remove(&key)));
            !q.is_empty()
        });
        self.len.fetch_sub(out.len(), Ordering::Release);
        out
    }

    /// Parked tasks per priority.
    pub fn depths(&self) -> Vec<(u8, usize)> {
        if self.len() == 0 {
            return Vec::new();
        }
        let mut depth = [0usize; 256];
        for q in self.inner().by_kind.values() {
            for (Reverse(p), _) in q.keys() {
                depth[*p as usize] += 1;
            }
        }
        (0..256)
            .rev()
            .filter(|p| depth[*p] > 0)
            .map(|p| (p as u8, depth[p]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::proto::{NewTask, Payload};

    fn record(id: u64, kind: &'static str, priority: u8) -> TaskRecord<()> {
        let spec = NewTask {
            kind: Text::from_static(kind),
            payload: Payload::empty(),
            priority,
            retries: 0,
            timeout_ms: 0,
        };
        TaskRecord::new(id, spec, (), Instant::now())
    }

    fn ids(records: Vec<TaskRecord<()>>) -> Vec<u64> {
        records.into_iter().map(|r| r.id).collect()
    }

    fn parked(tasks: &[(u64, &'static str, u8)]) -> Parked<()> {
        let p = Parked::default();
        for (id, kind, priority) in tasks {
            p.park(record(*id, kind, *priority));
        }
        p
    }

    #[test]
    fn parked_tasks_of_the_kinds_a_worker_runs_come_out_by_priority_then_in_order() {
        let p = parked(&[
            (1, "exec", 5),
            (2, "gpu", 9),
            (3, "exec", 9),
            (4, "exec", 5),
        ]);
        let exec = |k: &Text| k == "exec";
        let order: Vec<u64> = std::iter::from_fn(|| p.take(exec, None).map(|r| r.id)).collect();
        assert_eq!(order, [3, 1, 4]);
        assert_eq!(p.len(), 1, "the gpu task waits for its own workers");
        let both = |k: &Text| k == "exec" || k == "gpu";
        assert_eq!(p.take(both, None).map(|r| r.id), Some(2));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_parked_task_does_not_pass_a_queued_one_of_higher_priority() {
        let p = parked(&[(1, "exec", 5)]);
        let exec = |k: &Text| k == "exec";
        assert!(p.take(exec, Some(6)).is_none());
        assert_eq!(p.take(exec, Some(5)).map(|r| r.id), Some(1));
    }

    #[test]
    fn a_kinds_parked_tasks_are_taken_back_together_best_first() {
        let p = parked(&[(1, "exec", 1), (2, "gpu", 1), (3, "exec", 7)]);
        assert_eq!(ids(p.take_kind(&Text::from_static("exec"))), [3, 1]);
        assert!(p.take_kind(&Text::from_static("exec")).is_empty());
        assert_eq!(p.len(), 1);
        assert_eq!(p.depths(), [(1, 1)]);
        assert_eq!(ids(p.take_all()), [2]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_sweep_takes_out_the_refused_and_keeps_the_rest_in_order() {
        let p = parked(&[
            (1, "exec", 3),
            (2, "exec", 3),
            (3, "gpu", 3),
            (4, "exec", 3),
        ]);
        assert_eq!(ids(p.sweep(|r| r.id % 2 == 1)), [2, 4]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.depths(), [(3, 2)]);
        let exec = |k: &Text| k == "exec";
        assert_eq!(p.take(exec, None).map(|r| r.id), Some(1));
    }
}
