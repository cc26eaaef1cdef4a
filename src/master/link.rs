//! [`WorkerLink`]: the master's view of one registered worker, without I/O.
//!
//! It owns the records of the attempts out on that worker, decides what each
//! reported end means (done, retry, exhausted, stale), judges the worker's
//! liveness from the time it was last heard, and hands back every record it
//! holds when the worker goes. Time comes in as `now`; messages go out as
//! return values; so heartbeat loss, timeouts and retries are tested with a
//! fake clock (`tests/master_link.rs`).

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::net::Arrivals;
use crate::proto::{Assignment, AttemptResult, AttemptStatus, Cancel, Ping, TaskResult, Text};
use crate::sched::{Requeued, RetryPolicy, Stamp, TaskRecord, Verdict};

/// How one attempt's end is to be acted on.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The task is finished: send `result` to `reply`.
    Finished {
        /// The final result.
        result: TaskResult,
        /// Its client's route.
        reply: R,
        /// Time from dispatch to result.
        ran: Duration,
        /// When the master accepted the task.
        accepted_at: Instant,
    },
    /// Queue the task again after `delay` (zero: at once).
    Requeue {
        /// The task.
        record: TaskRecord<R>,
        /// Back-off.
        delay: Duration,
        /// Time from dispatch to the attempt's end (its result, or its
        /// worker lost or handing it back); none when the master stops.
        ran: Option<Duration>,
    },
    /// A result for an attempt this worker does not hold (a late result for
    /// an attempt already given up on): dropped.
    Stale {
        /// What the worker reported.
        result: AttemptResult,
    },
}

/// Why a worker is being let go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// Nothing heard for longer than the worker timeout.
    HeartbeatLost(Duration),
    /// The connection closed or broke.
    ConnectionClosed(String),
    /// It said goodbye (drain).
    Goodbye(String),
    /// A newer session of the same worker replaced this one.
    Replaced,
    /// The master is shutting down.
    Shutdown,
}

impl std::fmt::Display for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Departure::HeartbeatLost(d) => {
                write!(f, "heartbeat lost (silent for {} ms)", d.as_millis())
            }
            Departure::ConnectionClosed(why) => write!(f, "connection closed ({why})"),
            Departure::Goodbye(why) => write!(f, "worker said goodbye ({why})"),
            Departure::Replaced => f.write_str("replaced by a newer connection of the same worker"),
            Departure::Shutdown => f.write_str("master shutting down"),
        }
    }
}

/// Most payload bytes a worker holds in attempts at once (beyond a first
/// attempt, which it may always be given). With no cap, tasks of a megabyte
/// filled the connection both ways (runs to the worker, echoed results back),
/// master and worker each blocked writing while the other was not reading,
/// and the cluster stopped; and prefetch would have held a worker's whole
/// share of a large queue in memory twice. Kept below what loopback's socket
/// buffers hold, so a write of runs always completes.
pub const IN_FLIGHT_BYTES_MAX: usize = 2 * 1024 * 1024;

/// What an attempt of `record` counts against [`IN_FLIGHT_BYTES_MAX`]: its
/// weight in a `run` frame.
fn task_bytes<R>(record: &TaskRecord<R>) -> usize {
    crate::proto::BatchWeight::batch_weight(&record.spec)
}

struct InFlight<R> {
    record: TaskRecord<R>,
    sent_at: Instant,
    /// Its place in the order of hand-outs to this worker, which starts
    /// attempts in that order as its slots free up.
    seq: u64,
    /// When the master stops waiting for this attempt, if it has a timeout:
    /// the worker enforces the timeout itself; this is the backstop. Unset
    /// while the attempt waits on the worker behind `slots` earlier ones
    /// (prefetched): its timeout has not begun.
    deadline: Option<Instant>,
}

/// How long after an attempt starts the master gives up on it.
fn backstop(timeout_ms: u32, grace: Duration) -> Duration {
    Duration::from_millis(u64::from(timeout_ms)) + grace
}

/// Timing of the heartbeat and the backstop for task timeouts.
#[derive(Debug, Clone, Copy)]
pub struct LinkTiming {
    /// Ping the worker this often.
    pub heartbeat: Duration,
    /// Let it go after this long without a frame.
    pub worker_timeout: Duration,
    /// Give up on an attempt this long after its own timeout.
    pub timeout_grace: Duration,
}

/// A tick this many heartbeats after the previous one means the master was
/// paused; see [`WorkerLink::tick`].
pub const PAUSE_HEARTBEATS: u32 = 3;

/// How long before worker-timeout plus one heartbeat [`WorkerLink::next_wake`]
/// wakes for a silent worker at the latest: room for the timer's own lateness
/// on a busy master (measured: 1.8 ms at 930k tasks/s), so that the removal
/// still falls within that bound.
pub const WAKE_LEAD: Duration = Duration::from_millis(10);

/// A worker silent past worker-timeout whose frames are held up behind a
/// lost segment while TCP retransmits it (see [`WorkerLink::transport`]) is
/// kept, but for at most this many worker-timeouts of silence: TCP either
/// repairs the hole within that or the link is as good as down. Measured in
/// the lab at 200 ms and 10 % loss with a 1 s timeout: a hole whose
/// retransmissions were lost three times running took 3.2 s to repair, and
/// cost the worker its place under a bound of 3.
pub const HELD_UP_TIMEOUTS_MAX: u32 = 5;

/// Attempts of one task that may end uncharged (handed back by a stopping
/// worker, or out when the master restarted); past these, a hand-back
/// counts as a failed attempt. A task that stops its own worker (its
/// program restarts the worker's service) would otherwise run for ever,
/// taking down a worker each time.
pub const UNCHARGED_ATTEMPTS_MAX: u32 = 3;

/// The session reads the connection's [`Arrivals`] after a frame at most
/// once per this fraction of a heartbeat: the mark that later counts are
/// compared with (see [`WorkerLink::wants_mark`]).
pub const MARKS_PER_HEARTBEAT: u32 = 2;

/// What a heartbeat tick asks for.
#[derive(Debug)]
pub struct Tick<R> {
    /// Send this ping.
    pub ping: Option<Ping>,
    /// Send these cancels (attempts past their master-side deadline).
    pub cancels: Vec<Cancel>,
    /// Act on these (the cancelled attempts' tasks).
    pub outcomes: Vec<Outcome<R>>,
    /// The worker is to be let go.
    pub lost: Option<Departure>,
    /// Silent past worker-timeout, but kept: its frames are held up in
    /// transit (see [`WorkerLink::transport`]). How long it has been silent;
    /// set on the first such tick of a silence only.
    pub held_up: Option<Duration>,
}

/// The master's state for one worker.
pub struct WorkerLink<R> {
    /// The worker's node id.
    pub node: Text,
    slots: u32,
    prefetch: u32,
    timing: LinkTiming,
    retry: RetryPolicy,
    /// Keyed by task id: FxHash, since SipHash showed in the master's
    /// profile and the ids are the master's own counter, not chosen by a
    /// peer.
    in_flight: FxHashMap<u64, InFlight<R>>,
    /// Payload and kind bytes of the attempts it holds.
    in_flight_bytes: usize,
    last_heard: Instant,
    /// When data from the worker last reached the master's kernel, frame or
    /// not: see [`WorkerLink::transport`].
    last_arrival: Instant,
    /// The connection's counts as last read while the worker was silent
    /// (none since a frame was heard).
    seen: Option<Arrivals>,
    /// Its count of out-of-order segments as read just after a frame, and
    /// when: see [`WorkerLink::wants_mark`].
    mark: Option<(u32, Instant)>,
    /// Segments arrived out of order since the last frame was read: the
    /// stream has a hole that TCP is repairing.
    hole: bool,
    /// The connection has had segments arrive out of order: a lossy or
    /// reordering path, whose marks are worth their system calls.
    lossy: bool,
    /// This silence's keeping was reported already.
    held_reported: bool,
    /// Bytes received in order as first read in this silence.
    silence_bytes: Option<u64>,
    /// Less than the largest frame has arrived in order since then: what
    /// arrives is still part of one frame (see [`WorkerLink::transport`]).
    within_a_frame: bool,
    /// The previous tick: a much later one means the master was paused.
    last_tick: Instant,
    next_ping: Instant,
    ping_seq: u64,
    ping_sent: Option<(u64, Instant)>,
    /// Last heartbeat round trip.
    pub rtt: Option<Duration>,
    /// Attempts finished ok on it.
    pub done: u64,
    /// Attempts failed on it.
    pub failed: u64,
    /// It handed an attempt back: it is stopping, so it gets no more.
    draining: bool,
    /// Hand-outs so far, numbering [`InFlight::seq`].
    handed_out: u64,
    /// Attempts with a timeout whose backstop has not started.
    unstarted: usize,
}

impl<R> WorkerLink<R> {
    /// A link to a worker that registered at `now` with `slots`.
    pub fn new(
        node: Text,
        slots: u32,
        prefetch: u32,
        timing: LinkTiming,
        retry: RetryPolicy,
        now: Instant,
    ) -> Self {
        WorkerLink {
            node,
            slots,
            prefetch,
            timing,
            retry,
            in_flight: FxHashMap::default(),
            in_flight_bytes: 0,
            last_heard: now,
            last_arrival: now,
            seen: None,
            mark: None,
            hole: false,
            lossy: false,
            held_reported: false,
            silence_bytes: None,
            within_a_frame: false,
            last_tick: now,
            next_ping: now,
            ping_seq: 0,
            ping_sent: None,
            rtt: None,
            done: 0,
            failed: 0,
            draining: false,
            handed_out: 0,
            unstarted: 0,
        }
    }

    /// Its slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Attempts out on it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many more attempts it may be given now: slots plus prefetch,
    /// less what it holds.
    pub fn credit(&self) -> usize {
        if self.draining {
            return 0;
        }
        let cap = (self.slots + self.prefetch) as usize;
        cap - self.in_flight.len().min(cap)
    }

    /// How many more payload bytes it may be given now:
    /// [`IN_FLIGHT_BYTES_MAX`] less what it holds. The caller stops once this
    /// is used up, after the attempt that used it up, so a worker holding
    /// nothing may always be given one attempt, however large.
    pub fn byte_credit(&self) -> usize {
        IN_FLIGHT_BYTES_MAX.saturating_sub(self.in_flight_bytes)
    }

    /// How long since anything was heard from it.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Anything at all arrived from the worker.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.last_arrival = now;
        self.seen = None;
        self.hole = false;
        self.held_reported = false;
        self.silence_bytes = None;
        self.within_a_frame = false;
    }

    /// Whether the session should read its connection's [`Arrivals`] now,
    /// just after a frame, for [`WorkerLink::mark`]: once at the first
    /// frame; later only on a connection that has had segments arrive out
    /// of order, and then when the last mark is older than a heartbeat over
    /// [`MARKS_PER_HEARTBEAT`]. A connection that loses nothing costs no
    /// system call per frame (10,000 workers cost 11 % of a core more when
    /// every one marked twice a heartbeat); on one that does, a hole before
    /// the stale mark only keeps a dead worker longer, as for any mark.
    pub fn wants_mark(&self, now: Instant) -> bool {
        self.mark.is_none_or(|(_, at)| {
            self.lossy
                && now.saturating_duration_since(at) >= self.timing.heartbeat / MARKS_PER_HEARTBEAT
        })
    }

    /// The connection's counts just after a frame was read: segments that
    /// arrive out of order after this, while no frame is read, lie behind a
    /// hole in the stream. The mark may be up to half a heartbeat older than
    /// the last frame: a hole repaired in that time makes a later silence
    /// look held up, which keeps a dead worker longer (at most
    /// [`HELD_UP_TIMEOUTS_MAX`] timeouts), never drops a live one.
    pub fn mark(&mut self, arrivals: Arrivals, now: Instant) {
        if let Some(n) = arrivals.out_of_order {
            self.mark = Some((n, now));
            self.lossy |= n > 0;
        }
    }

    /// Whether the session should read its connection's [`Arrivals`] for
    /// [`WorkerLink::transport`] before the next [`WorkerLink::tick`]: only
    /// once the worker has been silent for a heartbeat.
    pub fn wants_transport(&self, now: Instant) -> bool {
        self.silent_for(now) > self.timing.heartbeat
    }

    /// The connection's counts of what the master's kernel has received
    /// from the worker, read while it is silent. On a lossy link a lost
    /// segment holds up every frame behind it until TCP retransmits it
    /// (seconds, when the retransmission is lost too). Two signs tell that
    /// silence from the worker's own:
    /// - data segments keep arriving (a count that moves): the worker is
    ///   alive and sending, until a worker-timeout after the last one;
    /// - segments arrived out of order since the last frame: the worker sent
    ///   after that frame, and the hole before them is the network's. A
    ///   sender whose retransmissions are lost too stops sending new data
    ///   while it backs off (measured: over a second with no data segment
    ///   at 200 ms and 10 % loss), so the first sign alone is not enough.
    ///
    /// A stopped, frozen or cut-off worker sends nothing new, and on a link
    /// that loses nothing no segment arrives out of order.
    ///
    /// Data that keeps arriving in order keeps the worker past the
    /// [`HELD_UP_TIMEOUTS_MAX`] bound too, as long as less than the largest
    /// frame has arrived in this silence: a frame of results larger than
    /// the link moves in that time (8 MiB at 1 Mbit/s is over a minute) is
    /// still coming in, and the pong behind it with it. More than a frame
    /// without one read is no honest worker's stream.
    pub fn transport(&mut self, arrivals: Arrivals, now: Instant) {
        if self
            .seen
            .is_some_and(|before| before.data_segments != arrivals.data_segments)
        {
            self.last_arrival = now;
        }
        if self.seen.is_none() {
            self.silence_bytes = arrivals.bytes_received;
        }
        self.within_a_frame = match (self.silence_bytes, arrivals.bytes_received) {
            (Some(from), Some(to)) => {
                to.saturating_sub(from) <= crate::limits::FRAME_BYTES_MAX as u64
            }
            _ => false,
        };
        // Without a mark (no frame read yet, or no count of out-of-order
        // segments), the first reading of this silence stands in for it.
        let mark = self
            .mark
            .map(|(n, _)| n)
            .or(self.seen.and_then(|s| s.out_of_order));
        if let (Some(mark), Some(n)) = (mark, arrivals.out_of_order) {
            self.hole |= n != mark;
            self.lossy |= n > 0;
        }
        self.seen = Some(arrivals);
    }

    /// The worker answered ping `seq`.
    pub fn pong(&mut self, seq: u64, now: Instant) -> Option<Duration> {
        match self.ping_sent {
            Some((s, at)) if s == seq => {
                self.ping_sent = None;
                let rtt = now.saturating_duration_since(at);
                self.rtt = Some(rtt);
                Some(rtt)
            }
            _ => None,
        }
    }

    /// Hands `record` to this worker as a new attempt.
    pub fn assign(&mut self, mut record: TaskRecord<R>, now: Instant) -> Assignment {
        let attempt = record.next_attempt();
        let a = Assignment {
            task_id: record.id,
            attempt,
            kind: record.spec.kind.clone(),
            payload: record.spec.payload.clone(),
            timeout_ms: record.spec.timeout_ms,
        };
        // Behind `slots` attempts already out, it waits on the worker: its
        // backstop starts at the tick that finds it among the first.
        let starts_now = self.in_flight.len() < self.slots as usize;
        let deadline = (record.spec.timeout_ms > 0 && starts_now)
            .then(|| now + backstop(record.spec.timeout_ms, self.timing.timeout_grace));
        self.unstarted += usize::from(record.spec.timeout_ms > 0 && !starts_now);
        self.in_flight_bytes += task_bytes(&record);
        self.handed_out += 1;
        self.in_flight.insert(
            record.id,
            InFlight {
                record,
                sent_at: now,
                seq: self.handed_out,
                deadline,
            },
        );
        a
    }

    /// Starts the backstop of each attempt with a timeout that is now among
    /// the worker's first `slots` in hand-out order (those before it have
    /// finished), at `now`: at most a heartbeat after it started.
    fn start_backstops(&mut self, now: Instant) {
        if self.unstarted == 0 {
            return;
        }
        let mut seqs: Vec<u64> = self.in_flight.values().map(|f| f.seq).collect();
        let slots = (self.slots as usize).min(seqs.len());
        if slots == 0 {
            self.unstarted = 0;
            return;
        }
        let (_, last_running, _) = seqs.select_nth_unstable(slots - 1);
        let last_running = *last_running;
        let grace = self.timing.timeout_grace;
        // Counted again here: attempts that finished or were taken back
        // unstarted were never subtracted.
        self.unstarted = 0;
        for f in self.in_flight.values_mut() {
            if f.deadline.is_none() && f.record.spec.timeout_ms > 0 {
                if f.seq <= last_running {
                    f.deadline = Some(now + backstop(f.record.spec.timeout_ms, grace));
                } else {
                    self.unstarted += 1;
                }
            }
        }
    }

    /// The worker reported how an attempt ended.
    pub fn finish(&mut self, r: AttemptResult, now: Instant) -> Outcome<R> {
        // One lookup: the entry is taken only if it is this attempt.
        let f = match self.in_flight.entry(r.task_id) {
            std::collections::hash_map::Entry::Occupied(e)
                if e.get().record.attempt == r.attempt =>
            {
                e.remove()
            }
            _ => return Outcome::Stale { result: r },
        };
        self.in_flight_bytes -= task_bytes(&f.record);
        let ran = now.saturating_duration_since(f.sent_at);
        let mut record = f.record;
        let accepted_at = record.accepted_at.instant();
        let reason = match r.status {
            AttemptStatus::Ok => {
                self.done += 1;
                let (result, reply) = record.succeeded(r.output, self.node.clone());
                return Outcome::Finished {
                    result,
                    reply,
                    ran,
                    accepted_at,
                };
            }
            AttemptStatus::Returned => {
                self.draining = true;
                return self.handed_back(record, ran, now);
            }
            AttemptStatus::Rejected => {
                self.failed += 1;
                record.reject(self.node.clone(), r.error);
                let (result, reply) = record.failed();
                return Outcome::Finished {
                    result,
                    reply,
                    ran,
                    accepted_at,
                };
            }
            AttemptStatus::Failed => r.error,
            AttemptStatus::TimedOut if r.error.is_empty() => {
                Text::from(format!("timed out after {} ms", record.spec.timeout_ms))
            }
            AttemptStatus::TimedOut => r.error,
            AttemptStatus::Unsupported => {
                Text::clipped(format!("worker cannot run it: {}", r.error))
            }
        };
        self.failed += 1;
        self.judge(record, reason, true, ran, now)
    }

    /// An attempt its stopping worker handed back: queued again at once,
    /// uncharged, unless the task has had [`UNCHARGED_ATTEMPTS_MAX`] such.
    fn handed_back(&self, record: TaskRecord<R>, ran: Duration, now: Instant) -> Outcome<R> {
        // Attempts so far that did not fail, this one among them.
        let uncharged = record.attempt.saturating_sub(record.errors.len() as u32);
        if uncharged <= UNCHARGED_ATTEMPTS_MAX {
            return Outcome::Requeue {
                record,
                delay: Duration::ZERO,
                ran: Some(ran),
            };
        }
        let reason = Text::from(format!(
            "handed back by a stopping worker; its {uncharged} attempts that did not fail are more than the {UNCHARGED_ATTEMPTS_MAX} a task may have uncharged, so this one counts (does the task stop its own worker?)"
        ));
        self.judge(record, reason, false, ran, now)
    }

    /// A failed attempt: retry (with back-off, or at once when the worker
    /// rather than the task failed) or report the task failed.
    fn judge(
        &self,
        mut record: TaskRecord<R>,
        reason: Text,
        backoff: bool,
        ran: Duration,
        now: Instant,
    ) -> Outcome<R> {
        match record.fail(self.node.clone(), reason, &self.retry) {
            Verdict::Retry { delay } => {
                record.requeued.set(if backoff {
                    Requeued::Failed(Stamp::of(now))
                } else {
                    Requeued::WorkerLost(Stamp::of(now))
                });
                Outcome::Requeue {
                    record,
                    delay: if backoff { delay } else { Duration::ZERO },
                    ran: Some(ran),
                }
            }
            Verdict::Exhausted => {
                let accepted_at = record.accepted_at.instant();
                let (result, reply) = record.failed();
                Outcome::Finished {
                    result,
                    reply,
                    ran,
                    accepted_at,
                }
            }
        }
    }

    /// When [`WorkerLink::tick`] should next run: at the next ping, and for
    /// a worker silent since `last_heard` no later than worker-timeout plus
    /// one heartbeat less [`WAKE_LEAD`]. A silent worker is then let go at the
    /// first ping tick past its timeout, as a periodic sweep would, but never
    /// later than the bound its timer's lateness could otherwise carry it
    /// past. Judging silence at the pings rather than the instant the
    /// timeout passes keeps a heartbeat of slack for a slow, lossy link,
    /// whose retransmissions can hold a worker's frames back for about a
    /// second (FAULTS.md, scenario 4). Attempts past their deadline are a
    /// backstop behind the worker's own timeout and are seen at these ticks.
    /// A worker kept past its timeout because it is held up is judged again
    /// at each ping tick, and at the latest when its keeping runs out.
    pub fn next_wake(&self) -> Instant {
        let slack = self
            .timing
            .heartbeat
            .saturating_sub(WAKE_LEAD)
            .max(WAKE_LEAD);
        let kept =
            self.last_tick.saturating_duration_since(self.last_heard) > self.timing.worker_timeout;
        let limit = if kept {
            self.timing.worker_timeout * HELD_UP_TIMEOUTS_MAX
        } else {
            self.timing.worker_timeout
        };
        self.next_ping.min(self.last_heard + limit + slack)
    }

    /// The heartbeat tick: a ping to send, attempts past their deadline, and
    /// whether the worker has been silent too long (with nothing arriving on
    /// its connection either, see [`WorkerLink::transport`]). Call it only
    /// after every frame already received has been fed in, so a master that
    /// was paused does not evict a worker whose heartbeats sit unread in its
    /// socket.
    pub fn tick(&mut self, now: Instant) -> Tick<R> {
        // A tick far later than the heartbeat means the master itself was
        // not running (frozen, suspended, starved): what the worker sent
        // meanwhile waits unread in the socket, so that stretch is not the
        // worker's silence. It is judged on the time the master listened.
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if gap > self.timing.heartbeat * PAUSE_HEARTBEATS {
            let paused = gap - self.timing.heartbeat;
            self.last_heard = (self.last_heard + paused).min(now);
            self.last_arrival = (self.last_arrival + paused).min(now);
            // So are the attempts' deadlines: a result that came in time
            // may be waiting unread behind this tick.
            for f in self.in_flight.values_mut() {
                if let Some(d) = &mut f.deadline {
                    *d += paused;
                }
            }
        }
        let silent = self.silent_for(now);
        let arriving =
            now.saturating_duration_since(self.last_arrival) <= self.timing.worker_timeout;
        let held_up = (arriving && self.within_a_frame)
            || ((arriving || self.hole)
                && silent <= self.timing.worker_timeout * HELD_UP_TIMEOUTS_MAX);
        if silent > self.timing.worker_timeout && !held_up {
            return Tick {
                ping: None,
                cancels: Vec::new(),
                outcomes: Vec::new(),
                lost: Some(Departure::HeartbeatLost(silent)),
                held_up: None,
            };
        }
        let mut ping = None;
        if now >= self.next_ping {
            self.ping_seq += 1;
            // The round trip is timed on the oldest ping not yet answered:
            // on a link slower than the heartbeat, each newer ping would
            // replace it before its pong came, and no round trip longer
            // than a heartbeat would ever be measured.
            if self.ping_sent.is_none() {
                self.ping_sent = Some((self.ping_seq, now));
            }
            self.next_ping = now + self.timing.heartbeat;
            ping = Some(Ping { seq: self.ping_seq });
        }
        self.start_backstops(now);
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        let mut cancels = Vec::new();
        let mut outcomes = Vec::new();
        for id in expired {
            if let Some(f) = self.in_flight.remove(&id) {
                self.in_flight_bytes -= task_bytes(&f.record);
                let record = f.record;
                cancels.push(Cancel {
                    task_id: id,
                    attempt: record.attempt,
                });
                self.failed += 1;
                let reason = Text::from(format!(
                    "no result {} ms after its {} ms timeout; cancelled by the master",
                    self.timing.timeout_grace.as_millis(),
                    record.spec.timeout_ms
                ));
                outcomes.push(self.judge(
                    record,
                    reason,
                    true,
                    now.saturating_duration_since(f.sent_at),
                    now,
                ));
            }
        }
        Tick {
            ping,
            cancels,
            outcomes,
            lost: None,
            held_up: (silent > self.timing.worker_timeout
                && !std::mem::replace(&mut self.held_reported, true))
            .then_some(silent),
        }
    }

    /// Takes back the attempts of tasks that `cancelled` names (a client
    /// cancelled them): the `cancel` to send the worker for each, and its
    /// record, whose task the caller finishes. The worker sends no result
    /// for a cancelled attempt, and one already on its way is stale.
    pub fn cancel(&mut self, cancelled: impl Fn(u64) -> bool) -> Vec<(Cancel, TaskRecord<R>)> {
        let ids: Vec<u64> = self
            .in_flight
            .keys()
            .copied()
            .filter(|id| cancelled(*id))
            .collect();
        ids.into_iter()
            .filter_map(|id| self.in_flight.remove(&id))
            .map(|f| {
                self.in_flight_bytes -= task_bytes(&f.record);
                let c = Cancel {
                    task_id: f.record.id,
                    attempt: f.record.attempt,
                };
                (c, f.record)
            })
            .collect()
    }

    /// The attempts it holds, as the `cancel` that would stop each.
    pub fn held_attempts(&self) -> Vec<Cancel> {
        self.in_flight
            .values()
            .map(|f| Cancel {
                task_id: f.record.id,
                attempt: f.record.attempt,
            })
            .collect()
    }

    /// The worker is gone. Every attempt it held fails with `why`, counted
    /// against its task's retries, and is queued again at once (or reported
    /// failed if out of retries); except when the worker left on purpose
    /// (goodbye) or the master is stopping: those attempts are not the task's
    /// fault and are handed back uncharged (on shutdown the caller cancels
    /// them instead).
    pub fn depart(&mut self, why: &Departure, now: Instant) -> Vec<Outcome<R>> {
        let reason = Text::clipped(format!("worker {} lost: {why}", self.node));
        let held: Vec<InFlight<R>> = self.in_flight.drain().map(|(_, f)| f).collect();
        self.in_flight_bytes = 0;
        held.into_iter()
            .map(|f| match why {
                Departure::Shutdown => Outcome::Requeue {
                    record: f.record,
                    delay: Duration::ZERO,
                    ran: None,
                },
                Departure::Goodbye(_) => {
                    self.handed_back(f.record, now.saturating_duration_since(f.sent_at), now)
                }
                _ => self.judge(
                    f.record,
                    reason.clone(),
                    false,
                    now.saturating_duration_since(f.sent_at),
                    now,
                ),
            })
            .collect()
    }
}
