//! The master: accepts tasks from clients, finds and keeps workers, and
//! dispatches attempts to them.
//!
//! Tasks flow without a global lock: a client connection assigns ids (one
//! atomic add per batch), answers `accepted`, and pushes the records into the
//! lock-free [`PriorityQueue`]; each worker connection pops as many as its
//! credit allows and sends them in one `run` frame. A record lives in exactly
//! one place (the queue, one worker's [`link::WorkerLink`], or a retry timer),
//! and only the place holding it can finish it, so each task gets exactly one
//! result; a client's cancel only names ids and wakes those places
//! (`cancel.rs`). The registry (a mutex) is touched only when workers come and go,
//! and for `status`.

mod cancel;
pub mod discovery;
pub mod link;
mod metrics_http;
mod parked;
mod reserve;
mod results;
mod serve;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::journal::{Entry, Journal, JournalConfig, JournalError};
use crate::metrics::Histograms;
use crate::net::{self, PortRange};
use crate::proto::handshake::{Identity, Secret};
use crate::proto::{Role, TaskResult, Text, ToClient, Wire};
use crate::sched::{PriorityQueue, RetryPolicy, TaskRecord};
use results::{DoneSet, ResultStore};

/// Where the master listens by default: the first free port from here.
pub const PORT_DEFAULT: u16 = 4999;
/// How many ports from [`PORT_DEFAULT`] the master tries.
pub const PORT_TRIES: u16 = 100;
/// Where workers listen by default, and so what the master scans.
pub const WORKER_PORTS_DEFAULT: PortRange = PortRange {
    first: 5000,
    last: 5100,
};

/// Everything a master is configured with.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Ports to try, first free wins.
    pub ports: PortRange,
    /// Port ranges to scan for workers.
    pub scan: Vec<PortRange>,
    /// Hosts to scan besides localhost.
    pub scan_hosts: Vec<String>,
    /// Scan this often.
    pub scan_interval: Duration,
    /// Give a scanned port this long to accept a connection.
    pub scan_connect_timeout: Duration,
    /// Give a scanned peer this long to complete the handshake.
    pub scan_handshake_timeout: Duration,
    /// Ping workers this often.
    pub heartbeat: Duration,
    /// Drop a worker silent this long.
    pub worker_timeout: Duration,
    /// Attempts kept in flight on a worker beyond its slots.
    pub prefetch: u32,
    /// Backoff of failed attempts.
    pub retry: RetryPolicy,
    /// How long after its timeout the master gives up on an attempt.
    pub timeout_grace: Duration,
    /// Deadline for an accepted connection's handshake.
    pub handshake_timeout: Duration,
    /// The cluster's secret, if any.
    pub secret: Option<Secret>,
    /// Wire used when the master dials workers.
    pub wire: Wire,
    /// The master's node id; empty (the default) names it after its
    /// process and address, `master-PID@ADDR`, so that a worker can tell two
    /// masters apart (it refuses a second one while its own is live).
    pub node: String,
    /// Serve Prometheus `/metrics` on this address.
    pub metrics: Option<SocketAddr>,
    /// Journal accepted tasks and results here, and resume from it.
    pub journal: Option<JournalConfig>,
    /// Without a journal, most results kept for clients that are not
    /// there to take them (detached submissions, clients that left):
    /// detached batches past it are refused `busy`; results past it are
    /// dropped, and the log says so.
    pub unclaimed_results_max: usize,
    /// Most bytes of results kept for clients: see
    /// [`KEPT_RESULTS_BYTES_MAX`], its default.
    pub kept_results_bytes_max: usize,
    /// How long tasks of a kind keep waiting for a worker that runs it
    /// after the last such worker left (one restarting, or found again by
    /// the next scan), before they go to the others and fail there.
    pub kind_grace: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: PortRange {
                first: PORT_DEFAULT,
                last: PORT_DEFAULT + PORT_TRIES,
            },
            scan: vec![WORKER_PORTS_DEFAULT],
            scan_hosts: Vec::new(),
            scan_interval: Duration::from_secs(2),
            scan_connect_timeout: Duration::from_millis(300),
            scan_handshake_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            worker_timeout: Duration::from_secs(3),
            prefetch: 0,
            retry: RetryPolicy::default(),
            timeout_grace: Duration::from_secs(5),
            handshake_timeout: Duration::from_millis(crate::limits::HANDSHAKE_TIMEOUT_MS),
            secret: None,
            wire: Wire::Bincode,
            node: String::new(),
            metrics: None,
            journal: None,
            unclaimed_results_max: UNCLAIMED_RESULTS_MAX,
            kept_results_bytes_max: KEPT_RESULTS_BYTES_MAX,
            kind_grace: KIND_GRACE_DEFAULT,
        }
    }
}

/// Default of [`MasterConfig::kind_grace`]: a worker's restart, and a scan
/// or two to find it.
pub const KIND_GRACE_DEFAULT: Duration = Duration::from_secs(30);

/// What goes to a client's writer: messages in order, results batched.
#[derive(Debug)]
pub(crate) enum ClientOut {
    Msg(ToClient),
    /// Results finished together, and their weight in the client's queue.
    Results(Vec<TaskResult>, usize),
}

impl ClientOut {
    /// How many results this carries.
    pub(crate) fn results(&self) -> usize {
        match self {
            ClientOut::Msg(_) => 0,
            ClientOut::Results(r, _) => r.len(),
        }
    }

    /// The bytes its results weigh in the client's queue.
    pub(crate) fn weight(&self) -> usize {
        match self {
            ClientOut::Msg(_) => 0,
            ClientOut::Results(_, w) => *w,
        }
    }
}

/// The way back to the client that submitted a task.
#[derive(Debug)]
pub(crate) struct ClientRoute {
    pub tx: mpsc::UnboundedSender<ClientOut>,
    pub name: Text,
    /// Estimated bytes of results queued for the client and not yet written.
    pub queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Cancelled when the client stops reading (its queue passed the limit).
    pub too_slow: CancellationToken,
    /// When the client's writer last began writing or got a frame out: how a
    /// slow reader is told from one that stopped.
    pub wrote: Arc<crate::instant::AtomicInstant>,
}

pub(crate) type Route = Arc<ClientRoute>;
pub(crate) type Record = TaskRecord<Route>;

/// Results on their way out, grouped by client in order of arrival.
#[derive(Default)]
struct Outbox(Vec<(Route, Vec<TaskResult>)>);

impl Outbox {
    fn push(&mut self, result: TaskResult, route: Route) {
        // A worker's frame of results is usually all one client's: look at
        // the last group only, which keeps each client's results in order.
        match self.0.last_mut() {
            Some((r, v)) if Arc::ptr_eq(r, &route) => v.push(result),
            _ => self.0.push((route, vec![result])),
        }
    }
}

/// Live numbers of one worker, for `status`.
#[derive(Debug, Default)]
pub(crate) struct LinkStats {
    pub in_flight: AtomicU32,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub rtt_us: AtomicU64,
    pub last_heard_ms: AtomicU64,
}

pub(crate) struct WorkerEntry {
    pub addr: SocketAddr,
    pub listen: Option<SocketAddr>,
    pub slots: u32,
    pub session: u64,
    pub kick: CancellationToken,
    pub stats: Arc<LinkStats>,
    /// Tells the session to look for attempts of cancelled tasks.
    pub cancel: Arc<Notify>,
    /// The kinds it registered, sorted.
    pub kinds: Arc<[Text]>,
}

#[derive(Default)]
pub(crate) struct Registry {
    workers: HashMap<Text, WorkerEntry>,
    /// How many registered workers run each kind.
    kind_workers: HashMap<Text, u32>,
    /// Kinds whose last worker left, and when: their tasks keep waiting
    /// for [`MasterConfig::kind_grace`].
    kinds_gone: HashMap<Text, Instant>,
    /// Addresses being probed by the scan right now.
    pub probing: HashSet<SocketAddr>,
    /// Listeners that failed the handshake, skipped until the instant given.
    pub not_workers: HashMap<SocketAddr, Instant>,
}

impl Registry {
    /// The registered workers.
    pub fn workers(&self) -> &HashMap<Text, WorkerEntry> {
        &self.workers
    }

    /// Registers `node`: the entry it replaces, and the kinds that no
    /// registered worker runs any more (the old entry's, if the new lacks
    /// them).
    pub fn add_worker(
        &mut self,
        node: Text,
        entry: WorkerEntry,
    ) -> (Option<WorkerEntry>, Vec<Text>) {
        for k in entry.kinds.iter() {
            *self.kind_workers.entry(k.clone()).or_default() += 1;
            self.kinds_gone.remove(k);
        }
        let old = self.workers.insert(node, entry);
        let gone = old
            .as_ref()
            .map(|o| self.forget_kinds(o))
            .unwrap_or_default();
        (old, gone)
    }

    /// Removes `node`'s entry if it is still `session`'s; returns the kinds
    /// that no registered worker runs any more.
    pub fn remove_worker(&mut self, node: &Text, session: u64) -> Vec<Text> {
        match self.workers.get(node) {
            Some(w) if w.session == session => {}
            _ => return Vec::new(),
        }
        let Some(old) = self.workers.remove(node) else {
            return Vec::new();
        };
        self.forget_kinds(&old)
    }

    fn forget_kinds(&mut self, old: &WorkerEntry) -> Vec<Text> {
        let mut gone = Vec::new();
        for k in old.kinds.iter() {
            if let Some(n) = self.kind_workers.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.kind_workers.remove(k);
                    gone.push(k.clone());
                }
            }
        }
        gone
    }

    /// Whether some registered worker runs `kind`, or did less than
    /// `grace` before `now`.
    pub fn runs(&self, kind: &Text, now: Instant, grace: Duration) -> bool {
        self.kind_workers.contains_key(kind)
            || self
                .kinds_gone
                .get(kind)
                .is_some_and(|at| now.saturating_duration_since(*at) < grace)
    }

    /// Notes that the last worker of each of `kinds` left at `at`.
    pub fn kinds_left(&mut self, kinds: &[Text], at: Instant) {
        for k in kinds {
            self.kinds_gone.insert(k.clone(), at);
        }
    }

    /// Whether `kind` is still without a worker since its last left at
    /// `at` (none has registered it since): then its waiting tasks give up.
    pub fn still_gone(&mut self, kind: &Text, at: Instant) -> bool {
        if self.kinds_gone.get(kind) == Some(&at) && !self.kind_workers.contains_key(kind) {
            self.kinds_gone.remove(kind);
            return true;
        }
        false
    }
}

/// Totals since start.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub running: AtomicU64,
}

pub(crate) struct Shared {
    pub cfg: MasterConfig,
    pub identity: Identity,
    pub local_addr: SocketAddr,
    pub started: Instant,
    pub queue: PriorityQueue<Record>,
    /// Queued tasks set aside for the workers that run their kind.
    pub parked: parked::Parked<Route>,
    /// Woken when records enter the queue.
    pub work: Notify,
    pub next_id: AtomicU64,
    pub next_session: AtomicU64,
    pub registry: Mutex<Registry>,
    pub totals: Totals,
    /// Stop taking work (Ctrl-C).
    pub shutdown: CancellationToken,
    /// Every task and session except client sessions, which outlive them to
    /// deliver the last results.
    pub tracker: TaskTracker,
    /// Client sessions.
    pub clients: TaskTracker,
    /// Told to client sessions once every record has been finished.
    pub clients_close: CancellationToken,
    /// Latency histograms. Recorded into once per frame (a batch of
    /// samples per lock), never merged: each is ~190 KB, so one set per
    /// session would not scale to thousands of workers.
    pub hists: Mutex<Histograms>,
    /// The journal, if the master keeps one.
    pub journal: Option<Journal>,
    /// Finished ids, kept results, clients attached by id.
    pub store: Mutex<ResultStore>,
    /// Ids below this were restored from the journal: a worker may report a
    /// result for them from before the restart.
    pub restored_below: u64,
    /// The route of tasks no client waits on (restored from the journal,
    /// or submitted detached): their results are kept for a fetch.
    pub detached: Route,
    /// Ids below this are not this master's tasks (without a journal, those
    /// of an earlier run): a cancel of one is answered `unknown`.
    pub ids_from: u64,
    /// Tasks being cancelled, and attempts to stop: see `cancel.rs`.
    pub cancel: cancel::CancelState,
    /// Results dropped for want of room to keep them (see
    /// [`UNCLAIMED_RESULTS_MAX`], [`LEFT_RESULTS_MAX`]), and when those of
    /// clients that are gone were last logged (ms since start): the log
    /// says so once a second, `/metrics` always.
    pub results_dropped: AtomicU64,
    pub unclaimed_logged_ms: AtomicU64,
    /// Tasks waiting out a retry back-off: in no queue and on no worker.
    pub retries_waiting: AtomicU64,
    /// Detached tasks not finished yet, whose results will need keeping.
    pub detached_pending: AtomicU64,
    /// With a journal: task ids journaled ahead of use (see `reserve.rs`).
    pub(crate) reservation: Option<reserve::Reservation>,
}

/// Default of [`MasterConfig::unclaimed_results_max`]: most results kept
/// for clients that went away, without a journal (with one, every result
/// is kept until acknowledged, on disk as well).
pub const UNCLAIMED_RESULTS_MAX: usize = 1_000_000;

/// Without a journal, most results kept that were written to connections
/// which ended before their clients acknowledged them: past it, the oldest
/// are dropped (they were sent once; a fetch of one answers `unknown`).
pub const LEFT_RESULTS_MAX: usize = 262_144;

/// Default of [`MasterConfig::kept_results_bytes_max`]: most bytes of
/// results kept for clients (weighed as in a client's queue): without a journal, past it results whose client is gone are
/// dropped and detached batches refused; with one, new batches are refused
/// until clients acknowledge. Results of up to 8 MiB each would otherwise
/// make a million of them 8 TiB.
pub const KEPT_RESULTS_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// The same bound in bytes (weighed as in a client's queue): results of
/// up to 8 MiB each would otherwise make it 2 TiB.
pub const LEFT_RESULTS_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Results dropped in one turn, for one log line.
#[derive(Default)]
struct Dropped {
    count: u64,
    first: u64,
}

impl Dropped {
    fn note(&mut self, id: u64) {
        if self.count == 0 {
            self.first = id;
        }
        self.count += 1;
    }
}

/// With a journal, new batches are refused (`busy`) while this many results
/// wait for an acknowledgement: clients that never acknowledge slow
/// intake down instead of growing the master and its journal without end,
/// and nothing is dropped.
pub(crate) const UNACKNOWLEDGED_RESULTS_MAX: usize = 4_000_000;

impl Shared {
    pub(crate) fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    pub(crate) fn hists(&self) -> std::sync::MutexGuard<'_, Histograms> {
        self.hists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every histogram so far.
    pub(crate) fn histograms(&self) -> Histograms {
        self.hists().clone()
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the registry leaves plain data behind; keep
        // serving rather than poisoning every later caller.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, ResultStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finishes a task: see [`Shared::deliver_all`]. False, and nothing
    /// done, if the task had already finished (a result from before a
    /// restart, then a re-run's).
    pub(crate) fn deliver(&self, result: TaskResult, reply: &Route) -> bool {
        self.deliver_all(std::iter::once((result, reply.clone()))) == 1
    }

    /// Finishes tasks: journals each result, keeps it where a client may
    /// fetch it later, and sends it to its client (and to clients attached
    /// to it). One lock of the store for all of them, and one message per
    /// client rather than per result: a worker's frame of results is a
    /// single hand-over to the client's writer. A result for a task that
    /// had already finished is dropped. Returns how many were delivered.
    pub(crate) fn deliver_all(
        &self,
        finished: impl IntoIterator<Item = (TaskResult, Route)>,
    ) -> usize {
        let mut out = Outbox::default();
        let mut delivered = 0;
        let mut reports = Vec::new();
        let mut orphaned = false;
        let mut dropped = Dropped::default();
        {
            let mut st = self.store();
            for (mut result, reply) in finished {
                let id = result.id;
                if !st.done.insert(id) {
                    tracing::debug!(task = id, "second result for a finished task; dropped");
                    continue;
                }
                delivered += 1;
                if id < self.restored_below {
                    // Handed out before the restart and finished since:
                    // whatever attempt of it a worker still runs from
                    // before is to stop, and so is one handed out since, if
                    // one from before finished it.
                    let before = self
                        .cancel
                        .restored_out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(attempts) = before {
                        self.orphans().note(id, attempts);
                        orphaned = true;
                    }
                }
                if self.cancelling() {
                    let mut cancels = self.cancels();
                    if let Some((reason, done)) = cancels.finished(id) {
                        cancel::overrule(&mut result, reason);
                        reports.extend(done);
                        self.cancel.pending.store(cancels.len(), Ordering::Relaxed);
                    }
                }
                if let Some(j) = &self.journal {
                    j.append(Entry::Finished(&result));
                }
                // Usually empty (and then not allocated): clients that
                // fetched this id, besides the one that submitted it.
                let mut watchers = if st.watchers.is_empty() {
                    Vec::new()
                } else {
                    st.watchers.remove(&id).unwrap_or_default()
                };
                watchers.retain(|t| !t.tx.is_closed() && !Arc::ptr_eq(t, &reply));
                if Arc::ptr_eq(&reply, &self.detached) {
                    let _ = self.detached_pending.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    );
                }
                let to_reply = !reply.tx.is_closed();
                if self.journal.is_some() {
                    st.keep(results::kept_copy(&result));
                } else if watchers.is_empty() && !to_reply {
                    if st.room_for_unclaimed(&self.cfg) {
                        st.keep(results::kept_copy(&result));
                    } else {
                        dropped.note(id);
                    }
                }
                match result.status {
                    crate::proto::TaskStatus::Ok => {
                        self.totals.completed.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => self.totals.failed.fetch_add(1, Ordering::Relaxed),
                };
                for route in watchers {
                    out.push(result.clone(), route);
                }
                if to_reply {
                    out.push(result, reply);
                }
            }
        }
        self.log_dropped(dropped);
        for (route, results) in out.0 {
            self.send_results(results, &route);
        }
        // After the results, so a client that cancelled its own tasks has
        // their results when it reads the report.
        for (report, to) in reports {
            cancel::send_report(report, &to);
        }
        if orphaned {
            self.wake_links();
        }
        delivered
    }

    /// Whether `reply`'s client may keep its connection: it is disconnected
    /// (and false returned) once more than
    /// [`crate::limits::CLIENT_OUTBOX_BYTES_MAX`] of results wait for it and
    /// its writer has got nothing out for [`crate::limits::CLIENT_STALL_MS`],
    /// or past the hard limit however recently it read.
    pub(crate) fn check_outbox(&self, reply: &Route) -> bool {
        if reply.too_slow.is_cancelled() {
            return false;
        }
        let queued = reply.queued_bytes.load(Ordering::Relaxed);
        if queued <= crate::limits::CLIENT_OUTBOX_BYTES_MAX {
            // The usual case, on the result path: no clock read.
            return true;
        }
        let stalled_for = reply.wrote.elapsed_at(Instant::now());
        let stalled = stalled_for >= Duration::from_millis(crate::limits::CLIENT_STALL_MS);
        if stalled || queued > crate::limits::CLIENT_OUTBOX_BYTES_HARD_MAX {
            if stalled {
                tracing::warn!(
                    client = %reply.name,
                    queued_bytes = queued,
                    took_nothing_for_ms = stalled_for.as_millis() as u64,
                    "client is not reading its results; disconnecting it (its results are kept for a fetch)"
                );
            } else {
                tracing::warn!(
                    client = %reply.name,
                    queued_bytes = queued,
                    max = crate::limits::CLIENT_OUTBOX_BYTES_HARD_MAX,
                    "client reads its results more slowly than they come, and more wait for it than any client may have; disconnecting it (its results are kept for a fetch)"
                );
            }
            reply.too_slow.cancel();
            return false;
        }
        true
    }

    /// Queues results for a client, disconnecting a client that does not
    /// read (and keeping them for a fetch).
    pub(crate) fn send_results(&self, results: Vec<TaskResult>, reply: &Route) {
        // What the results weigh in the client's queue: their bytes, as
        // they weigh in a frame.
        let weight = results
            .iter()
            .map(crate::proto::BatchWeight::batch_weight)
            .sum();
        reply.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        if !self.check_outbox(reply) {
            self.keep_unsent(results);
            return;
        }
        self.hand_over(results, weight, reply);
    }

    /// Hands results to the client's writer, counted as `weight` of its
    /// queue; kept for a fetch if the client went since it was looked at.
    fn hand_over(&self, results: Vec<TaskResult>, weight: usize, reply: &Route) {
        if let Err(e) = reply.tx.send(ClientOut::Results(results, weight)) {
            if let ClientOut::Results(results, _) = e.0 {
                tracing::debug!(results = results.len(), client = %reply.name, "client gone; results kept for a fetch");
                self.keep_unsent(results);
            }
        }
    }

    /// Queues kept results that a client fetched. They do not count toward
    /// its queue's bounds: their bytes are the kept results' own, shared
    /// and held anyway, so a client fetching more than the queue may hold
    /// (300 results of 1 MiB) gets them as it reads, rather than being
    /// disconnected before it can read any, again at every retry.
    pub(crate) fn send_kept(&self, results: Vec<TaskResult>, reply: &Route) {
        for r in results {
            self.hand_over(vec![r], 0, reply);
        }
    }

    /// Keeps results that were on their way to a client that went away, for
    /// a fetch. With a journal every result is kept until acknowledged
    /// anyway.
    pub(crate) fn keep_unsent(&self, results: Vec<TaskResult>) {
        if self.journal.is_some() || results.is_empty() {
            return;
        }
        let mut dropped = Dropped::default();
        {
            let mut st = self.store();
            for r in results {
                if st.room_for_unclaimed(&self.cfg) {
                    st.keep(results::kept_copy(&r));
                } else {
                    dropped.note(r.id);
                }
            }
        }
        self.log_dropped(dropped);
    }

    /// Keeps the results written to a client whose connection ended before
    /// it acknowledged them (see [`results::Unacked`]), for a fetch.
    pub(crate) fn keep_left(&self, results: Vec<TaskResult>) {
        if results.is_empty() {
            return;
        }
        let mut dropped = Dropped::default();
        {
            let mut st = self.store();
            for r in results {
                if let Some(id) = st.left.insert(r, LEFT_RESULTS_MAX, LEFT_RESULTS_BYTES_MAX) {
                    dropped.note(id);
                }
            }
        }
        if dropped.count > 0 {
            self.results_dropped
                .fetch_add(dropped.count, Ordering::Relaxed);
            tracing::warn!(
                first_task = dropped.first,
                dropped = dropped.count,
                "results sent to clients that went away without acknowledging them dropped, oldest first: at most {LEFT_RESULTS_MAX} ({} MiB) are kept without a journal",
                LEFT_RESULTS_BYTES_MAX >> 20
            );
        }
    }

    /// Logs results dropped for want of room: one line a second at most,
    /// with the count so far, rather than one per result.
    fn log_dropped(&self, dropped: Dropped) {
        if dropped.count == 0 {
            return;
        }
        let total = self
            .results_dropped
            .fetch_add(dropped.count, Ordering::Relaxed)
            + dropped.count;
        let now = self.millis(Instant::now()).max(1);
        let last = self.unclaimed_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 1000)
            && self
                .unclaimed_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                first_task = dropped.first,
                dropped_since_start = total,
                "results whose client is gone dropped: {} already wait to be fetched, or {} MiB, the most kept without a journal",
                self.cfg.unclaimed_results_max,
                self.cfg.kept_results_bytes_max >> 20
            );
        }
    }

    /// A task the master stops without finishing (shutdown): with a journal
    /// it stays unfinished there and resumes after a restart; without one it
    /// is reported cancelled with `why`.
    pub(crate) fn abandon(&self, record: Record, why: &str) {
        if self.journal.is_some() {
            return;
        }
        let (result, reply) = record.cancelled(why.to_string().into());
        self.deliver(result, &reply);
    }

    /// Queues a record (again); during shutdown reports it cancelled instead.
    /// Parks `record` for the workers that run its kind, if one is
    /// registered; otherwise gives it back. Under the registry's lock, so
    /// that the last such worker cannot leave between the look and the
    /// parking (its leaving takes its kinds' parked tasks back).
    pub(crate) fn park_for_others(&self, record: Record) -> Result<(), Record> {
        let r = self.registry();
        if !r.runs(&record.spec.kind, Instant::now(), self.cfg.kind_grace) {
            return Err(record);
        }
        self.parked.park(record);
        Ok(())
    }

    pub(crate) fn enqueue(self: &Arc<Self>, record: Record, delay: Duration) {
        if self.shutdown.is_cancelled() {
            self.abandon(record, "master shut down before the task finished");
            return;
        }
        if delay.is_zero() {
            // A client cancelled it while it was out on a worker that was
            // lost, or waiting out its back-off.
            let mut record = match self.cancelled(record) {
                Ok((result, reply)) => {
                    self.deliver(result, &reply);
                    return;
                }
                Err(record) => record,
            };
            record.set_queued_at(Instant::now());
            // Ahead of the tasks submitted since it was first queued.
            self.queue.push_again(record.spec.priority, record);
            self.work.notify_waiters();
            return;
        }
        let shared = self.clone();
        let until = tokio::time::Instant::now() + delay;
        self.retries_waiting.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            loop {
                let cancel = shared.cancel.wake.notified();
                tokio::pin!(cancel);
                // Listening before looking: a cancel noted after the look
                // still wakes it.
                cancel.as_mut().enable();
                if shared.cancelling() && shared.cancels().contains(record.id) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shared.shutdown.cancelled() => break,
                    _ = cancel => {}
                }
            }
            shared.retries_waiting.fetch_sub(1, Ordering::Relaxed);
            shared.enqueue(record, Duration::ZERO)
        });
    }
}

/// The first task id of a master without history: 4096 per millisecond of
/// the clock. A client that re-attaches by id after its master restarted
/// without a journal then finds its old ids unknown, instead of attached to
/// someone else's new task. Ids stay below 2^53 (exact as JSON doubles)
/// until 2039, and a master handing out fewer than 4 million ids a second
/// never catches up with the clock.
fn fresh_first_id() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms * 4096).max(1)
}

/// A running master.
pub struct Master {
    shared: Arc<Shared>,
}

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// No port to listen on.
    #[error(transparent)]
    Bind(#[from] net::BindError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The journal cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl Master {
    /// Binds the first free port of the configured range and starts serving
    /// and scanning in the background.
    pub async fn start(cfg: MasterConfig) -> Result<Master, MasterError> {
        let listener = net::bind_first_free(cfg.bind, cfg.ports).await?;
        let metrics = match cfg.metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| MasterError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let local_addr = listener.local_addr()?;
        let (journal, restored) = match &cfg.journal {
            Some(jc) => {
                let started = Instant::now();
                let (j, r) = Journal::open(jc)?;
                tracing::info!(
                    journal = %jc.path.display(),
                    durability = %jc.durability,
                    records = r.records,
                    unfinished = r.state.pending.len(),
                    results_kept = r.state.results.len(),
                    next_id = r.state.next_id,
                    ms = started.elapsed().as_millis() as u64,
                    "journal replayed"
                );
                (Some(j), Some(r.state))
            }
            None => (None, None),
        };
        let detached: Route = {
            let (tx, _) = mpsc::unbounded_channel();
            Arc::new(ClientRoute {
                tx,
                name: Text::from_static("(no client attached)"),
                queued_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                too_slow: CancellationToken::new(),
                wrote: Arc::new(crate::instant::AtomicInstant::new(Instant::now())),
            })
        };
        let journaled = journal.is_some();
        let next_id = match &restored {
            Some(r) if r.next_id > 1 => r.next_id,
            _ => fresh_first_id(),
        };
        let reservation = journal
            .as_ref()
            .map(|j| reserve::Reservation::start(j, next_id));
        let store = match &restored {
            Some(r) => {
                let mut st =
                    ResultStore::new(DoneSet::restored(next_id, r.pending.keys().copied()));
                for v in r.results.values() {
                    st.keep(v.clone());
                }
                st
            }
            None => ResultStore::new(DoneSet::restored(next_id, std::iter::empty())),
        };
        let queue = PriorityQueue::new();
        let mut restored_out = rustc_hash::FxHashMap::default();
        let totals = Totals::default();
        if let Some(r) = restored {
            let now = Instant::now();
            // Taken on from the journal: counted as submitted here, so that
            // what finishes never adds up to more than what came in.
            totals
                .submitted
                .store(r.pending.len() as u64, Ordering::Relaxed);
            for (_, p) in r.pending {
                if p.attempt > 0 {
                    restored_out.insert(p.id, p.attempt);
                }
                let record =
                    TaskRecord::restored(p.id, p.spec, p.attempt, p.errors, detached.clone(), now);
                queue.push(record.spec.priority, record);
            }
        }
        let node = if cfg.node.is_empty() {
            format!("master-{}@{local_addr}", std::process::id())
        } else {
            cfg.node.clone()
        };
        let identity = Identity {
            role: Role::Master,
            node: Text::from(node),
            secret: cfg.secret.clone(),
        };
        let shared = Arc::new(Shared {
            cfg,
            identity,
            local_addr,
            started: Instant::now(),
            queue,
            parked: parked::Parked::default(),
            work: Notify::new(),
            next_id: AtomicU64::new(next_id),
            next_session: AtomicU64::new(1),
            registry: Mutex::new(Registry::default()),
            totals,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            clients: TaskTracker::new(),
            clients_close: CancellationToken::new(),
            hists: Mutex::new(Histograms::new()),
            journal,
            store: Mutex::new(store),
            restored_below: next_id,
            detached,
            ids_from: if journaled { 1 } else { next_id },
            cancel: cancel::CancelState::new(restored_out),
            results_dropped: AtomicU64::new(0),
            retries_waiting: AtomicU64::new(0),
            unclaimed_logged_ms: AtomicU64::new(0),
            detached_pending: AtomicU64::new(0),
            reservation,
        });
        tracing::info!(addr = %local_addr, "master listening");
        shared
            .tracker
            .spawn(serve::accept_loop(shared.clone(), listener));
        shared.tracker.spawn(discovery::scan_loop(shared.clone()));
        if let Some(l) = metrics {
            if let Ok(addr) = l.local_addr() {
                if addr.ip().is_loopback() {
                    tracing::info!(%addr, "serving Prometheus /metrics");
                } else {
                    // Read-only, but it names every worker and counts the
                    // work: worth a line for whoever audits the exposure.
                    tracing::warn!(%addr, "serving Prometheus /metrics without authentication to whoever can reach {addr}: worker names and task counts; bind it to loopback or firewall it if that is not meant");
                }
            }
            shared.tracker.spawn(metrics_http::serve(shared.clone(), l));
        }
        Ok(Master { shared })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Workers registered now.
    pub fn worker_count(&self) -> usize {
        self.shared.registry().workers().len()
    }

    /// Stops intake, tells the workers, and waits until that is done. Each
    /// unfinished task is reported to its client as cancelled, or, with a
    /// journal, left there to resume when the master starts again.
    pub async fn shutdown(self) {
        let s = &self.shared;
        tracing::info!("shutting down: no new tasks; telling workers");
        s.shutdown.cancel();
        s.tracker.close();
        s.tracker.wait().await;
        let mut left = 0;
        while let Some((_, record)) = s.queue.pop() {
            s.abandon(record, "master shut down before the task ran");
            left += 1;
        }
        for record in s.parked.take_all() {
            s.abandon(record, "master shut down before the task ran");
            left += 1;
        }
        if left > 0 && s.journal.is_some() {
            tracing::info!(
                queued = left,
                "queued tasks, and those that were running, stay in the journal; they resume when the master restarts"
            );
        } else if left > 0 {
            tracing::info!(cancelled = left, "queued tasks reported cancelled");
        }
        s.clients_close.cancel();
        s.clients.close();
        s.clients.wait().await;
        if let Some(j) = &s.journal {
            j.close();
        }
        tracing::info!("master stopped");
    }
}
