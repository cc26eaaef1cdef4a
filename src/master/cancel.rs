//! Cancelling tasks by id (`cancel_tasks`, `runner cancel`).
//!
//! A record lives in exactly one place (the queue, one worker's link, or a
//! retry timer) and only that place can finish it. So a cancel does not
//! reach into those places: it writes the ids down here ([`Cancels`]), takes
//! the queued ones out of the queue by one pass over it for all the requests
//! that come together (a pass costs about 26 ms per million queued tasks),
//! and wakes the places that hold the others; each finishes its record as
//! `cancelled` when it next looks (dispatch too, for a record it pops before
//! the pass).
//! Whatever result a cancelled task gets first (a worker's result racing
//! the cancel, retries running out) is turned into `cancelled` when it is
//! delivered ([`super::Shared::deliver_all`]), so a task reported cancelled
//! to the client that asked always ends `cancelled`. The report goes out
//! once every task it names has its final result, which on a master with a
//! journal is also the moment that result is stored.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use super::{ClientOut, Record, Route, Shared};
use crate::instant::AtomicInstant;
use crate::proto::{
    AttemptError, Cancel, CancelReport, CancelTasks, Payload, TaskResult, TaskStatus, Text,
    ToClient,
};

/// The master's state for cancelling: requests and their tasks, the pass
/// over the queue, and attempts to stop that no link holds.
pub(crate) struct CancelState {
    /// Tasks a client cancelled that are not finished yet.
    pub cancels: Mutex<Cancels>,
    /// How many `cancels` holds, read without its lock.
    pub pending: AtomicUsize,
    /// Wakes the retry timers to look for a cancel of their task.
    pub wake: tokio::sync::Notify,
    /// A pass over the queue for cancelled tasks is scheduled.
    pub sweep_pending: AtomicBool,
    /// When the last request to cancel came.
    pub last_request: AtomicInstant,
    /// Attempts from before the restart that workers may still run.
    pub orphans: Mutex<Orphans>,
    /// Attempts of workers let go that may come back still running them.
    pub lost: Mutex<LostAttempts>,
    /// Restored tasks that had been handed out before the restart, and how
    /// many attempts: until each finishes, a worker may still run those.
    pub restored_out: Mutex<FxHashMap<u64, u32>>,
}

impl CancelState {
    /// With `restored_out` from the journal (empty without one).
    pub fn new(restored_out: FxHashMap<u64, u32>) -> Self {
        CancelState {
            cancels: Mutex::new(Cancels::default()),
            pending: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            sweep_pending: AtomicBool::new(false),
            last_request: AtomicInstant::new(std::time::Instant::now()),
            orphans: Mutex::new(Orphans::default()),
            lost: Mutex::new(LostAttempts::default()),
            restored_out: Mutex::new(restored_out),
        }
    }
}

/// Cancelled tasks that have no final result yet, and the requests waiting
/// for them.
#[derive(Default)]
pub(crate) struct Cancels {
    /// Task id to the requests that named it, oldest first.
    tasks: FxHashMap<u64, Vec<u64>>,
    requests: FxHashMap<u64, Pending>,
    next_request: u64,
}

/// A request whose report waits for its tasks' results.
struct Pending {
    reason: Text,
    remaining: usize,
    report: CancelReport,
    to: Route,
}

impl Cancels {
    /// Whether `id` is being cancelled.
    pub fn contains(&self, id: u64) -> bool {
        self.tasks.contains_key(&id)
    }

    /// Unfinished tasks being cancelled.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Why `id` is being cancelled (the oldest request's reason).
    pub fn reason(&self, id: u64) -> Option<Text> {
        let first = self.tasks.get(&id)?.first()?;
        self.requests.get(first).map(|p| p.reason.clone())
    }

    /// `id` has its final result: the reason it was cancelled for, if it
    /// was, and the reports this completes, with where each goes.
    pub fn finished(&mut self, id: u64) -> Option<(Text, Vec<(CancelReport, Route)>)> {
        let waiting = self.tasks.remove(&id)?;
        let mut reason = None;
        let mut done = Vec::new();
        for r in waiting {
            let std::collections::hash_map::Entry::Occupied(mut p) = self.requests.entry(r) else {
                continue;
            };
            reason.get_or_insert_with(|| p.get().reason.clone());
            p.get_mut().remaining -= 1;
            if p.get().remaining == 0 {
                let p = p.remove();
                done.push((p.report, p.to));
            }
        }
        Some((reason.unwrap_or_default(), done))
    }

    /// Notes a request to cancel `ids` (unfinished tasks); `report` goes to
    /// `to` once they all have their results.
    fn request(&mut self, ids: &[u64], reason: Text, report: CancelReport, to: Route) {
        let r = self.next_request;
        self.next_request += 1;
        for id in ids {
            self.tasks.entry(*id).or_default().push(r);
        }
        self.requests.insert(
            r,
            Pending {
                reason,
                remaining: ids.len(),
                report,
                to,
            },
        );
    }
}

/// Attempts handed out before the master restarted, of tasks that have
/// since finished (or been cancelled): a worker keeps running what it had
/// across master sessions, and no link holds these, so every worker session
/// sends a `cancel` for each (a worker ignores those it does not run). The
/// oldest are forgotten past [`ORPHANS_MAX`].
#[derive(Default)]
pub(crate) struct Orphans {
    /// Index of `list[0]` among all ever noted.
    base: u64,
    list: std::collections::VecDeque<Cancel>,
}

/// Most orphaned attempts kept to tell sessions about.
pub(crate) const ORPHANS_MAX: usize = 65_536;

impl Orphans {
    /// Notes every attempt up to `attempts` of restored task `id`.
    pub fn note(&mut self, id: u64, attempts: u32) {
        for attempt in 1..=attempts {
            if self.list.len() == ORPHANS_MAX {
                self.list.pop_front();
                self.base += 1;
            }
            self.list.push_back(Cancel {
                task_id: id,
                attempt,
            });
        }
    }

    /// Those noted since `*sent` (an index among all), which moves past them.
    pub fn since(&self, sent: &mut u64) -> Vec<Cancel> {
        let from = sent.saturating_sub(self.base) as usize;
        *sent = self.base + self.list.len() as u64;
        self.list.iter().skip(from).cloned().collect()
    }

    /// Whether none is noted.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The attempts of workers let go while they may still run them (cut off
/// by the network, or reconnected): a worker keeps its attempts across
/// sessions, and when it comes back they would fill the slots the master
/// counts as free, its new work waiting behind them, for results that
/// come too late to count. Its next session stops them. Kept per node id
/// for [`LOST_ATTEMPTS_KEEP`] (a worker cut off longer has ended them with
/// itself, by its master-timeout, or should be told by then), and for at
/// most [`LOST_ATTEMPTS_MAX`] attempts in all, the oldest going first.
#[derive(Default)]
pub(crate) struct LostAttempts {
    by_node: FxHashMap<Text, (std::time::Instant, Vec<Cancel>)>,
    total: usize,
}

/// How long a let-go worker's attempts are kept for its return.
pub(crate) const LOST_ATTEMPTS_KEEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Most let-go workers' attempts kept, all workers together.
pub(crate) const LOST_ATTEMPTS_MAX: usize = 1 << 20;

impl LostAttempts {
    /// Notes the attempts `node` held when it was let go at `now`.
    pub fn note(&mut self, node: &Text, attempts: Vec<Cancel>, now: std::time::Instant) {
        self.by_node.retain(|_, (at, list)| {
            let keep = now.saturating_duration_since(*at) < LOST_ATTEMPTS_KEEP;
            if !keep {
                self.total -= list.len();
            }
            keep
        });
        while self.total + attempts.len() > LOST_ATTEMPTS_MAX {
            let Some(oldest) = self
                .by_node
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            if let Some((_, list)) = self.by_node.remove(&oldest) {
                self.total -= list.len();
            }
        }
        let entry = self
            .by_node
            .entry(node.clone())
            .or_insert_with(|| (now, Vec::new()));
        entry.0 = now;
        self.total += attempts.len();
        entry.1.extend(attempts);
    }

    /// The attempts to stop on `node`'s new session.
    pub fn take(&mut self, node: &Text) -> Vec<Cancel> {
        let list = self
            .by_node
            .remove(node)
            .map(|(_, l)| l)
            .unwrap_or_default();
        self.total -= list.len();
        list
    }
}

/// Sends a finished request's report to the client that asked.
pub(crate) fn send_report(report: CancelReport, to: &Route) {
    let _ = to.tx.send(ClientOut::Msg(ToClient::CancelReport(report)));
}

/// Turns a result that beat its task's cancel (a worker's result, retries
/// running out) into the `cancelled` one the requester was promised.
pub(crate) fn overrule(result: &mut TaskResult, reason: Text) {
    if result.status == TaskStatus::Cancelled {
        return;
    }
    result.status = TaskStatus::Cancelled;
    result.output = Payload::empty();
    if result.errors.len() >= crate::limits::ATTEMPTS_MAX {
        // Retries ran out just as the cancel came: the oldest attempt's
        // error makes room within the limit.
        result.errors.remove(0);
    }
    result.errors.push(AttemptError {
        attempt: result.attempts,
        worker: std::mem::take(&mut result.worker),
        reason,
    });
}

impl Shared {
    pub(crate) fn cancels(&self) -> std::sync::MutexGuard<'_, Cancels> {
        self.cancel
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lost_attempts(&self) -> std::sync::MutexGuard<'_, LostAttempts> {
        self.cancel.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn orphans(&self) -> std::sync::MutexGuard<'_, Orphans> {
        self.cancel
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every worker session to look for attempts to take back.
    pub(crate) fn wake_links(&self) {
        for w in self.registry().workers().values() {
            w.cancel.notify_one();
        }
    }

    /// Whether any task is being cancelled: one atomic load, so the paths
    /// every task takes pay nothing while none is.
    pub(crate) fn cancelling(&self) -> bool {
        self.cancel.pending.load(Ordering::Relaxed) > 0
    }

    /// The final result of `record` if a client cancelled its task.
    pub(crate) fn cancelled(&self, record: Record) -> Result<(TaskResult, Route), Record> {
        if !self.cancelling() {
            return Err(record);
        }
        match self.cancels().reason(record.id) {
            Some(reason) => Ok(record.cancelled(reason)),
            None => Err(record),
        }
    }
}

/// Answers a client's `cancel_tasks`: sorts its ids into unknown, finished
/// and cancelled, takes the cancelled ones that are queued out of the queue
/// and finishes them, and wakes every worker session and retry timer so
/// that the others are finished where they are. The report goes to `route`
/// once all of them have their results.
pub(crate) fn cancel_tasks(shared: &Arc<Shared>, route: &Route, c: CancelTasks) {
    // The client's name and reason are each within the limit; together
    // they may not be.
    // A client that gave no name in its hello is still someone.
    let who = if route.name.is_empty() {
        "a client"
    } else {
        route.name.as_str()
    };
    let reason = Text::clipped(if c.reason.is_empty() {
        format!("cancelled by {who}")
    } else {
        format!("cancelled by {who}: {}", c.reason)
    });
    let next_id = shared.next_id.load(Ordering::Relaxed);
    let mut ids = c.ids;
    ids.sort_unstable();
    ids.dedup();
    let mut report = CancelReport {
        request: c.request,
        ..CancelReport::default()
    };
    {
        let st = shared.store();
        let mut cancels = shared.cancels();
        for id in ids {
            if id < shared.ids_from || id >= next_id {
                report.unknown.push(id);
            } else if st.done.contains(id) {
                report.finished.push(id);
            } else {
                report.cancelled.push(id);
            }
        }
        tracing::info!(
            client = %route.name,
            cancelling = report.cancelled.len(),
            already_finished = report.finished.len(),
            unknown = report.unknown.len(),
            "{reason}"
        );
        if report.cancelled.is_empty() {
            drop(cancels);
            drop(st);
            send_report(report, route);
            return;
        }
        let ids = report.cancelled.clone();
        cancels.request(&ids, reason.clone(), report, route.clone());
        shared
            .cancel
            .pending
            .store(cancels.len(), Ordering::Relaxed);
    }
    // Queued: out of the queue, whether or not a worker would take them,
    // by one pass over it for the requests that come together.
    let now = std::time::Instant::now();
    shared.cancel.last_request.set(now);
    if !shared.cancel.sweep_pending.swap(true, Ordering::AcqRel) {
        let s = shared.clone();
        shared.tracker.spawn(async move {
            // Until requests stop coming for a moment, but not for longer
            // than SWEEP_WAIT_MAX.
            let latest = now + SWEEP_WAIT_MAX;
            loop {
                let at = (s.cancel.last_request.get() + SWEEP_DELAY).min(latest);
                if std::time::Instant::now() >= at {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
            }
            // Cleared first: a request noted during the pass (on another
            // thread) schedules a pass of its own.
            s.cancel.sweep_pending.store(false, Ordering::Release);
            sweep_queue(&s).await;
        });
    }
    // Out on workers, or waiting out a retry back-off.
    shared.wake_links();
    shared.cancel.wake.notify_waiters();
}

/// The pass over the queue that serves requests to cancel waits until none
/// has come for this long: a pass costs about 26 ms per million queued
/// tasks, and a client cancelling many ids sends them in many messages.
const SWEEP_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Longest the pass waits after the first request it serves.
const SWEEP_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes every queued task being cancelled out of the queue and finishes
/// it: the pass in one go, the results in slices with a yield between, so
/// that a million cancelled tasks do not hold the master's thread (and its
/// heartbeats) for seconds.
async fn sweep_queue(shared: &Shared) {
    if !shared.cancelling() {
        return;
    }
    let taken = {
        let cancels = shared.cancels();
        let mut taken = shared.queue.sweep(|r| !cancels.contains(r.id));
        taken.extend(shared.parked.sweep(|r| !cancels.contains(r.id)));
        taken
    };
    let mut taken = taken.into_iter().peekable();
    while taken.peek().is_some() {
        let slice: Vec<(TaskResult, Route)> = {
            let cancels = shared.cancels();
            taken
                .by_ref()
                .take(DELIVER_SLICE)
                .map(|r| {
                    let why = cancels.reason(r.id).unwrap_or_default();
                    r.cancelled(why)
                })
                .collect()
        };
        shared.deliver_all(slice);
        tokio::task::yield_now().await;
    }
}

/// Cancelled results a sweep delivers between two yields.
const DELIVER_SLICE: usize = crate::limits::BATCH_TASKS_MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::ClientRoute;

    fn route() -> (Route, tokio::sync::mpsc::UnboundedReceiver<ClientOut>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let route = Arc::new(ClientRoute {
            tx,
            name: Text::from_static("admin"),
            queued_bytes: Default::default(),
            too_slow: Default::default(),
            wrote: Arc::new(crate::instant::AtomicInstant::new(std::time::Instant::now())),
        });
        (route, rx)
    }

    fn result(status: TaskStatus, errors: usize) -> TaskResult {
        TaskResult {
            id: 7,
            status,
            output: Payload::from("out"),
            attempts: errors as u32 + 1,
            worker: Text::from_static("w1"),
            errors: (1..=errors as u32)
                .map(|attempt| AttemptError {
                    attempt,
                    worker: Text::from_static("w1"),
                    reason: Text::from_static("boom"),
                })
                .collect(),
        }
    }

    #[test]
    fn a_result_that_beats_its_cancel_is_delivered_cancelled() {
        let mut r = result(TaskStatus::Ok, 0);
        overrule(&mut r, Text::from_static("cancelled by admin"));
        assert_eq!(r.status, TaskStatus::Cancelled);
        assert!(r.output.is_empty());
        assert!(r.worker.is_empty());
        assert_eq!(r.errors.len(), 1);
        assert_eq!(
            (r.errors[0].attempt, r.errors[0].worker.as_str()),
            (1, "w1")
        );
    }

    #[test]
    fn a_failed_result_with_every_attempts_error_stays_within_the_limit_when_overruled() {
        let max = crate::limits::ATTEMPTS_MAX;
        let mut r = result(TaskStatus::Failed, max);
        overrule(&mut r, Text::from_static("cancelled by admin"));
        assert_eq!(r.errors.len(), max);
        assert_eq!(r.errors[0].attempt, 2, "the oldest made room");
        assert_eq!(r.errors[max - 1].reason.as_str(), "cancelled by admin");
    }

    #[test]
    fn a_report_waits_for_every_task_it_names_and_each_request_gets_its_own() {
        let (to, _rx) = route();
        let mut c = Cancels::default();
        let report = |request| CancelReport {
            request,
            cancelled: vec![1, 2],
            ..CancelReport::default()
        };
        c.request(&[1, 2], Text::from_static("first"), report(1), to.clone());
        c.request(&[2], Text::from_static("second"), report(2), to);
        assert_eq!(c.len(), 2);
        assert_eq!(c.reason(2).unwrap().as_str(), "first", "the oldest reason");
        let (why, done) = c.finished(1).unwrap();
        assert_eq!(why.as_str(), "first");
        assert!(done.is_empty(), "task 2 is still unfinished");
        let (_, done) = c.finished(2).unwrap();
        let mut requests: Vec<u64> = done.iter().map(|(r, _)| r.request).collect();
        requests.sort_unstable();
        assert_eq!(requests, [1, 2]);
        assert_eq!(c.len(), 0);
        assert!(c.finished(2).is_none(), "a second result finds nothing");
    }
}

#[cfg(test)]
mod orphan_tests {
    use super::*;

    #[test]
    fn each_session_hears_of_each_orphaned_attempt_once_and_the_oldest_are_forgotten() {
        let mut o = Orphans::default();
        o.note(7, 2);
        let mut sent = 0;
        let first: Vec<(u64, u32)> = o
            .since(&mut sent)
            .iter()
            .map(|c| (c.task_id, c.attempt))
            .collect();
        assert_eq!(first, [(7, 1), (7, 2)]);
        assert!(o.since(&mut sent).is_empty(), "nothing new");
        o.note(9, 1);
        assert_eq!(o.since(&mut sent).len(), 1);
        // A session that starts later hears of all still kept.
        let mut late = 0;
        assert_eq!(o.since(&mut late).len(), 3);
        o.note(11, ORPHANS_MAX as u32);
        assert_eq!(o.list.len(), ORPHANS_MAX, "bounded");
        assert_eq!(
            o.since(&mut sent).len(),
            ORPHANS_MAX,
            "from where it was, or the oldest kept"
        );
    }
}
