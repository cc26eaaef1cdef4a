//! The load generator: drives a master (its own, spawned as processes, or an
//! existing one) in a closed loop (a fixed number of tasks in flight) or an
//! open loop (a fixed rate, latency measured from each task's intended start,
//! so a stalled system is not excused: coordinated-omission correction as in
//! wrk2), checks that every accepted task got exactly one result, and writes
//! the latency reports.

pub mod baseline;
pub mod fake;
pub mod report;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::FutureExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::{Client, ClientError, ClientOptions};
use crate::metrics;
use crate::proto::{Accepted, NewTask, Payload, StatusReport, TaskStatus, Text, Wire};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Drive this master, or spawn one.
    pub master: Option<SocketAddr>,
    /// Workers to spawn with the master (when `master` is none).
    pub spawn_workers: u32,
    /// Slots per spawned worker (0: its cores).
    pub worker_slots: u32,
    /// The spawned master's `--prefetch`.
    pub prefetch: u32,
    /// More arguments for the spawned master (e.g. `--journal=PATH`).
    pub master_args: Vec<String>,
    /// Closed loop: tasks in flight.
    pub concurrency: u32,
    /// Open loop: tasks per second (overrides `concurrency`).
    pub rate: Option<f64>,
    /// Stop after this many tasks...
    pub tasks: Option<u64>,
    /// ...or after this long.
    pub duration: Option<Duration>,
    /// Task kind.
    pub kind: String,
    /// The kind's argument (sleep MS, spin US), as its payload.
    pub arg: Option<String>,
    /// Payload size for kinds without an argument.
    pub payload_bytes: usize,
    /// Fraction of tasks that fail on purpose (kind `fail`, no retries).
    pub fail_fraction: f64,
    /// Most tasks per submit frame.
    pub batch: usize,
    /// Wire.
    pub wire: Wire,
    /// Kill -9 or SIGSTOP a random worker every interval, and start a new one.
    pub chaos: Option<(Chaos, Duration)>,
    /// Show a progress bar.
    pub progress: bool,
    /// How long to wait for the last results once everything is submitted.
    pub drain_timeout: Duration,
    /// Submit everything, wait for the acceptances, and stop without waiting
    /// for results (to fill a master's queue, e.g. to measure its memory).
    pub submit_only: bool,
    /// Tasks meant to start within this long of the beginning are run and
    /// checked but not recorded: connections, buffers and the allocator warm
    /// up first, as wrk2's calibration does.
    pub warmup: Duration,
    /// Open loop: how often to look at what has come due when no result
    /// wakes the loop ([`PACE_DEFAULT`]); zero leaves it to tokio's
    /// millisecond timer.
    pub pace: Duration,
    /// Start the master and workers with `--realtime` (the load generator
    /// itself enters it too; see [`crate::realtime`]).
    pub realtime: bool,
}

/// What the chaos does to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaos {
    /// `kill -9`.
    Kill,
    /// `SIGSTOP` (left stopped until the end of the run).
    Stop,
    /// At random: `kill -9` a worker, `SIGSTOP` one and resume it 0.5-3 s
    /// later (past the master's worker timeout or not), or start another.
    Mixed,
}

/// With [`Chaos::Mixed`], the pool grows to at most this many times the
/// workers it started with.
const MIXED_POOL_GROWTH: usize = 2;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// The cluster could not be started or reached.
    #[error("{0}")]
    Setup(String),
    /// The client failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Tasks submitted and accepted.
    pub accepted: u64,
    /// Results with status ok.
    pub ok: u64,
    /// Results with status failed (the failing fraction, and anything else).
    pub failed: u64,
    /// Results with status cancelled.
    pub cancelled: u64,
    /// Accepted tasks with no result by the end.
    pub lost: u64,
    /// Results beyond the first for a task.
    pub duplicated: u64,
    /// Results for ids never accepted.
    pub unexpected: u64,
    /// First submit to last result.
    pub elapsed: Duration,
    /// Client-side end to end latency (from intended start in open loop).
    pub e2e: Histogram<u64>,
    /// Per-second intervals of `e2e`, for the interval log.
    pub intervals: Vec<(Duration, Histogram<u64>)>,
    /// Open loop: how long after it came due each task was sent. The load
    /// generator's own delay, part of `e2e`; empty in a closed loop.
    pub submit_lag: Histogram<u64>,
    /// The master's status at the end (with histograms).
    pub master: Option<StatusReport>,
    /// The master's status just before the warm-up ended, so that its
    /// histograms can be reported over the recorded window only.
    pub master_at_warmup: Option<StatusReport>,
    /// Workers killed or stopped by chaos.
    pub chaos_events: u32,
    /// Failed results that do not say why (no attempt errors, or an empty
    /// reason): a failure must always carry its reason.
    pub failed_without_reason: u64,
}

impl Outcome {
    /// Results per second.
    pub fn throughput(&self) -> f64 {
        (self.ok + self.failed + self.cancelled) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Most results taken in one turn of the loop before it submits what has
/// come due: bounds how late an open-loop submission can be.
const RESULTS_PER_TURN_MAX: usize = 4096;

/// How often the open loop looks at what has come due when no result wakes
/// it. Tokio's timers tick in milliseconds and fire up to a tick late, which
/// sent tasks up to 2 ms after they were due (measured: a p99.9 submit lag
/// of 1.9 ms at 50k tasks/s on an idle machine); a kernel timer with this
/// period wakes the loop instead. Each wake costs CPU (about 15 µs on this
/// virtual machine), so not finer.
pub const PACE_DEFAULT: Duration = Duration::from_micros(100);

/// The load loop's ticker, on which the rate, the drain deadline and chaos
/// are checked; an open loop without a pacer (`--pace 0s`) is paced by it.
const RATE_TICK: Duration = Duration::from_millis(1);

/// How long before the end of the warm-up the master's histograms are
/// read, to be subtracted from its final ones: early enough that the read
/// (a round trip) falls in the warm-up, which is not recorded.
const WARMUP_SNAPSHOT_LEAD: Duration = Duration::from_millis(50);

/// Wakes the loop every `pace`: a `timerfd` in the loop's own poll, so a
/// tick is one wake-up of one thread, exact to the kernel's high-resolution
/// timer (no timer slack, unlike a sleeping thread, which also had to wake
/// the loop in turn: two context switches per tick).
struct Pacer {
    timer: tokio::io::unix::AsyncFd<timerfd::TimerFd>,
}

impl Pacer {
    fn start(pace: Duration) -> std::io::Result<Pacer> {
        let mut timer = timerfd::TimerFd::new_custom(timerfd::ClockId::Monotonic, true, true)?;
        timer.set_state(
            timerfd::TimerState::Periodic {
                current: pace,
                interval: pace,
            },
            timerfd::SetTimeFlags::Default,
        );
        // SAFETY: the AsyncFd owns the timer, whose descriptor stays open
        // and the same until it is dropped.
        let timer = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(timer, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)?;
        Ok(Pacer { timer })
    }

    /// The next tick (ticks missed meanwhile are folded into it).
    /// Cancel-safe: an expiry not read stays readable.
    async fn tick(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.timer.readable().await?;
            // A non-blocking timerfd reads 0 expirations when none is due.
            if ready.get_inner().read() > 0 {
                // One read drains a timerfd: without this the next tick
                // would begin with a read that can only come back empty
                // (measured: 1.8 reads per tick).
                ready.clear_ready();
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

/// When an open loop's tasks are due: task `i` of the run at `started + i /
/// rate`, computed when needed rather than stored per task.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    started: Instant,
    nanos_per_task: f64,
}

impl Schedule {
    /// When task `i` is due.
    fn due(&self, i: u64) -> Instant {
        self.started + Duration::from_nanos((i as f64 * self.nanos_per_task) as u64)
    }

    /// How many tasks are due by `now` (task 0 at the start).
    fn count_due(&self, now: Instant) -> u64 {
        (now.duration_since(self.started).as_nanos() as f64 / self.nanos_per_task) as u64 + 1
    }
}

/// When a batch's tasks were meant to start, the instant latency counts from.
#[derive(Debug, Clone, Copy)]
enum Starts {
    /// Closed loop: when the batch was sent.
    Sent(Instant),
    /// Open loop: the batch's first task is task `first` of the schedule.
    Due { schedule: Schedule, first: u64 },
}

impl Starts {
    /// The intended start of the batch's task `k`.
    fn of(&self, k: usize) -> Instant {
        match *self {
            Starts::Sent(at) => at,
            Starts::Due { schedule, first } => schedule.due(first + k as u64),
        }
    }
}

/// One submitted batch: its ids and when each task was meant to start.
struct Batch {
    first_id: u64,
    starts: Starts,
    got: Vec<bool>,
    /// Results still due, so that telling whether the batch is complete
    /// costs nothing per result (scanning `got` made it quadratic).
    missing: usize,
}

impl Batch {
    fn new(Accepted { first_id, count }: Accepted, starts: Starts) -> Batch {
        Batch {
            first_id,
            starts,
            got: vec![false; count as usize],
            missing: count as usize,
        }
    }
}

/// Whether starting a worker waits until it listens: the first ones do, so
/// the load starts on a cluster that is up; a replacement under chaos does
/// not, so the load (and its latency) goes on while the process starts.
#[derive(Clone, Copy)]
enum Wait {
    Started,
    No,
}

/// Intervals (seconds) the interval log is expected to hold: the run's
/// duration and its drain, or a few for a run of a number of tasks.
fn intervals_expected(opts: &LoadOptions) -> usize {
    const FOR_A_COUNT_OF_TASKS: usize = 16;
    const DRAIN_SECONDS: u64 = 2;
    opts.duration.map_or(FOR_A_COUNT_OF_TASKS, |d| {
        (d.as_secs() + DRAIN_SECONDS + 1).min(INTERVALS_PREALLOCATED_MAX) as usize
    })
}

/// Most interval histograms allocated ahead (about 360 KiB each); a longer
/// run allocates the rest as it goes.
const INTERVALS_PREALLOCATED_MAX: u64 = 120;

/// The spawned cluster, killed when dropped.
struct Spawned {
    master: Child,
    workers: Vec<Child>,
    runner: PathBuf,
    master_addr: SocketAddr,
    slots: u32,
    wire: Wire,
    next_worker: u32,
    stopped: Vec<Child>,
    /// Stopped by [`Chaos::Mixed`], resumed at the instant given.
    paused: Vec<(Child, Instant)>,
    /// Workers started with the run.
    initial: usize,
    allow_exec: bool,
    realtime: bool,
}

async fn first_line(child: &mut Child, what: &str, prefix: &str) -> Result<String, LoadError> {
    let out = child
        .stdout
        .take()
        .ok_or_else(|| LoadError::Setup(format!("{what}: no stdout")))?;
    let mut lines = BufReader::new(out).lines();
    let deadline = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.starts_with(prefix) => {
                // Keep draining its stdout so it never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(l);
            }
            Ok(Ok(Some(_))) => continue,
            _ => {
                return Err(LoadError::Setup(format!(
                    "{what} did not start (no {prefix:?} line)"
                )))
            }
        }
    }
}

impl Spawned {
    async fn start(opts: &LoadOptions) -> Result<Spawned, LoadError> {
        let exe = std::env::current_exe().map_err(|e| LoadError::Setup(e.to_string()))?;
        let runner = exe.with_file_name("runner");
        if !runner.exists() {
            return Err(LoadError::Setup(format!(
                "{} not found: build it first (cargo build --release)",
                runner.display()
            )));
        }
        let prefetch = opts.prefetch.to_string();
        let mut master = Command::new(&runner)
            .args([
                "master",
                "--quiet",
                "--scan",
                "1-1",
                "--prefetch",
                &prefetch,
                "--wire",
                opts.wire.as_str(),
            ])
            .args(&opts.master_args)
            .args(opts.realtime.then_some("--realtime"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LoadError::Setup(format!("cannot start {}: {e}", runner.display())))?;
        let line = first_line(&mut master, "master", "master listening on ").await?;
        let master_addr: SocketAddr = line
            .trim_start_matches("master listening on ")
            .parse()
            .map_err(|_| {
                LoadError::Setup(format!("cannot read the master's address from {line:?}"))
            })?;
        let mut s = Spawned {
            master,
            workers: Vec::new(),
            runner,
            master_addr,
            slots: opts.worker_slots,
            wire: opts.wire,
            next_worker: 1,
            stopped: Vec::new(),
            paused: Vec::new(),
            initial: opts.spawn_workers as usize,
            allow_exec: opts.kind == "exec",
            realtime: opts.realtime,
        };
        for _ in 0..opts.spawn_workers {
            s.add_worker(Wait::Started).await?;
        }
        Ok(s)
    }

    /// Starts one more worker process.
    async fn add_worker(&mut self, wait: Wait) -> Result<(), LoadError> {
        let id = format!("lg-w{}", self.next_worker);
        self.next_worker += 1;
        let master = self.master_addr.to_string();
        let mut args = vec![
            "worker".to_string(),
            "--quiet".into(),
            "--id".into(),
            id.clone(),
            "--master".into(),
            master,
            "--wire".into(),
            self.wire.as_str().into(),
        ];
        if self.slots > 0 {
            args.push("--slots".into());
            args.push(self.slots.to_string());
        }
        if self.allow_exec {
            args.push("--allow-exec".into());
        }
        if self.realtime {
            args.push("--realtime".into());
        }
        let mut w = Command::new(&self.runner)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LoadError::Setup(format!("cannot start worker {id}: {e}")))?;
        match wait {
            Wait::Started => {
                first_line(&mut w, &id, "worker ").await?;
            }
            Wait::No => {
                let out = w.stdout.take();
                tokio::spawn(async move {
                    let Some(out) = out else { return };
                    let mut lines = BufReader::new(out).lines();
                    let mut started = false;
                    while let Ok(Some(l)) = lines.next_line().await {
                        started |= l.starts_with("worker ");
                    }
                    if !started {
                        eprintln!("loadgen: worker {id} exited before it started");
                    }
                });
            }
        }
        self.workers.push(w);
        Ok(())
    }

    /// Resumes the workers [`Chaos::Mixed`] stopped whose pause is over.
    fn resume_due(&mut self) {
        let now = Instant::now();
        let (due, paused): (Vec<_>, Vec<_>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|(_, until)| *until <= now);
        self.paused = paused;
        for (w, _) in due {
            if let Some(pid) = w.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGCONT);
                }
            }
            self.workers.push(w);
        }
    }

    /// Kills (or stops) a random running worker and starts a new one.
    async fn chaos(&mut self, what: Chaos) -> Result<(), LoadError> {
        use rand::Rng;
        self.resume_due();
        let mut rng = rand::thread_rng();
        if what == Chaos::Mixed {
            let grow = self.workers.len() + self.paused.len() < self.initial * MIXED_POOL_GROWTH;
            match rng.gen_range(0..3) {
                0 if !self.workers.is_empty() => {
                    let w = self.workers.remove(rng.gen_range(0..self.workers.len()));
                    drop(w); // kill -9 on drop
                    return self.add_worker(Wait::No).await;
                }
                1 if self.workers.len() > 1 => {
                    let w = self.workers.remove(rng.gen_range(0..self.workers.len()));
                    if let Some(pid) = w.id() {
                        // SAFETY: kill(2) on our own child.
                        unsafe {
                            libc::kill(pid as i32, libc::SIGSTOP);
                        }
                    }
                    let pause = Duration::from_millis(rng.gen_range(500..3000));
                    self.paused.push((w, Instant::now() + pause));
                    return Ok(());
                }
                _ if grow => return self.add_worker(Wait::No).await,
                _ => return Ok(()),
            }
        }
        if self.workers.is_empty() {
            return Ok(());
        }
        let w = self.workers.remove(rng.gen_range(0..self.workers.len()));
        if let Some(pid) = w.id() {
            let sig = match what {
                Chaos::Kill | Chaos::Mixed => libc::SIGKILL,
                Chaos::Stop => libc::SIGSTOP,
            };
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
        // A stopped worker stays stopped until the end of the run, when its
        // handle (kill on drop) goes; a killed one is reaped now.
        match what {
            Chaos::Stop => self.stopped.push(w),
            Chaos::Kill | Chaos::Mixed => drop(w),
        }
        self.add_worker(Wait::No).await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.master.start_kill();
        for w in &mut self.workers {
            let _ = w.start_kill();
        }
    }
}

fn task_for(i: u64, opts: &LoadOptions, kind: &Text, payload: &Payload) -> NewTask {
    let failing = opts.fail_fraction > 0.0
        && ((i as f64 * opts.fail_fraction).floor()
            != ((i + 1) as f64 * opts.fail_fraction).floor());
    if opts.kind == "mixed" {
        return mixed_task(i, payload);
    }
    if failing {
        return NewTask {
            kind: Text::from_static("fail"),
            payload: Payload::from("failing on purpose (loadgen --fail-fraction)"),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        };
    }
    NewTask {
        kind: kind.clone(),
        payload: payload.clone(),
        priority: 128,
        retries: 3,
        timeout_ms: 0,
    }
}

/// Task `i` of the `mixed` kind: in turn a no-op, an echo, a 2 ms sleep, a
/// 100 µs spin, a task that fails its first attempt, and one that fails
/// both of its attempts (so failures, retries and their reasons are part of
/// the load).
fn mixed_task(i: u64, payload: &Payload) -> NewTask {
    let (kind, payload, retries): (&'static str, Payload, u8) = match i % 6 {
        0 => ("noop", payload.clone(), 3),
        1 => ("echo", payload.clone(), 3),
        2 => ("sleep", Payload::from("2"), 3),
        3 => ("spin", Payload::from("100"), 3),
        4 => ("flaky", Payload::from("1"), 3),
        _ => (
            "fail",
            Payload::from("failing on purpose (loadgen --kind mixed)"),
            1,
        ),
    };
    NewTask {
        kind: Text::from_static(kind),
        payload,
        priority: 128,
        retries,
        timeout_ms: 0,
    }
}

/// Runs the load; see [`LoadOptions`].
pub async fn run(opts: LoadOptions) -> Result<Outcome, LoadError> {
    if opts.tasks.is_none() && opts.duration.is_none() {
        return Err(LoadError::Usage("give --tasks N or --duration D".into()));
    }
    if opts.batch == 0 || opts.batch > crate::limits::BATCH_TASKS_MAX {
        return Err(LoadError::Usage(format!(
            "--batch must be from 1 to {}",
            crate::limits::BATCH_TASKS_MAX
        )));
    }
    if !(0.0..=1.0).contains(&opts.fail_fraction) {
        return Err(LoadError::Usage(
            "--fail-fraction must be from 0 to 1".into(),
        ));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(LoadError::Usage(
            "--rate must be a positive number of tasks per second".into(),
        ));
    }
    if let ("sleep" | "spin" | "exec", None) = (opts.kind.as_str(), &opts.arg) {
        // Without it every task would fail, and the run look like a result.
        return Err(LoadError::Usage(format!(
            "--kind {} needs --arg ({})",
            opts.kind,
            match opts.kind.as_str() {
                "sleep" => "milliseconds",
                "spin" => "microseconds",
                _ => "the program and its arguments",
            }
        )));
    }
    if opts.master.is_some() && opts.chaos.is_some() {
        return Err(LoadError::Usage(
            "--chaos breaks the workers the load generator starts; it cannot with --master".into(),
        ));
    }
    let mut spawned = match opts.master {
        Some(_) => None,
        None => Some(Spawned::start(&opts).await?),
    };
    let addr = opts
        .master
        .or(spawned.as_ref().map(|s| s.master_addr))
        .ok_or_else(|| LoadError::Usage("no master".into()))?;
    let mut client = connect(addr, opts.wire).await?;
    if let Some(s) = &spawned {
        wait_workers(&client, s.workers.len()).await?;
    }

    let payload = match &opts.arg {
        Some(a) => Payload::from(a.clone()),
        None => Payload::from(vec![b'x'; opts.payload_bytes]),
    };
    // Made once: a text per task would be an allocation and a copy per task.
    let kind = Text::from(opts.kind.clone());
    let total = opts.tasks.unwrap_or(u64::MAX);
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let bar = opts.progress.then(|| progress_bar(opts.tasks));

    let mut batches: VecDeque<Batch> = VecDeque::new();
    let mut acks = VecDeque::new();
    let mut e2e = metrics::histogram();
    let mut submit_lag = metrics::histogram();
    let mut interval = metrics::histogram();
    // The interval log's histograms, allocated before the load: one made at
    // a second's turn took 4.5 ms once in three runs under --realtime (the
    // allocator fetching and zeroing fresh memory), and that stall was the
    // run's p99.9.
    let mut spare_intervals: Vec<Histogram<u64>> = (0..intervals_expected(&opts))
        .map(|_| metrics::histogram())
        .collect();
    let mut intervals = Vec::new();
    let (mut submitted, mut done) = (0u64, 0u64);
    let mut failed_without_reason = 0u64;
    let (mut ok, mut failed, mut cancelled, mut duplicated, mut unexpected) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let record_from = started + opts.warmup;
    let mut interval_start = started;
    let mut last_result = started;
    let mut chaos_events = 0u32;
    let mut next_chaos = opts.chaos.map(|(_, every)| started + every);
    let mut ticker = tokio::time::interval(RATE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut drain_until: Option<Instant> = None;
    let pacer =
        match opts.rate {
            Some(_) if !opts.pace.is_zero() => Some(Pacer::start(opts.pace).map_err(|e| {
                LoadError::Setup(format!("cannot start the open loop's pacer: {e}"))
            })?),
            _ => None,
        };
    let schedule = opts.rate.map(|r| Schedule {
        started,
        nanos_per_task: 1e9 / r,
    });
    let mut snapshot_at =
        (opts.warmup >= 2 * WARMUP_SNAPSHOT_LEAD).then(|| record_from - WARMUP_SNAPSHOT_LEAD);
    let mut master_at_warmup = None;

    loop {
        let now = Instant::now();
        if snapshot_at.is_some_and(|at| now >= at) {
            snapshot_at = None;
            master_at_warmup = client.status(true).await.ok();
        }
        let more = submitted < total && deadline.is_none_or(|d| now < d);
        // Submit what the loop allows.
        if more {
            let want = match schedule {
                Some(schedule) => schedule.count_due(now).min(total).saturating_sub(submitted),
                None => {
                    // Refill in batches, not one frame per finished task:
                    // wait until a batch's worth (or a quarter of the
                    // window) is free, or the pipe is empty.
                    let free = (opts.concurrency as u64)
                        .saturating_sub(submitted - done)
                        .min(total - submitted);
                    let threshold = (opts.batch as u64).min((opts.concurrency as u64 / 4).max(1));
                    if free >= threshold || submitted == done || free == total - submitted {
                        free
                    } else {
                        0
                    }
                }
            };
            let mut left = want;
            while left > 0 {
                let n = left.min(opts.batch as u64) as usize;
                let tasks: Vec<NewTask> = (submitted..submitted + n as u64)
                    .map(|i| task_for(i, &opts, &kind, &payload))
                    .collect();
                let starts = match schedule {
                    // Open loop: each task's latency counts from when it
                    // was due, not from when it was sent.
                    Some(schedule) => {
                        for i in submitted..submitted + n as u64 {
                            let due = schedule.due(i);
                            if due >= record_from {
                                metrics::record(
                                    &mut submit_lag,
                                    now.saturating_duration_since(due),
                                );
                            }
                        }
                        Starts::Due {
                            schedule,
                            first: submitted,
                        }
                    }
                    None => Starts::Sent(now),
                };
                acks.push_back((client.send_batch(tasks)?.boxed(), starts));
                submitted += n as u64;
                left -= n as u64;
            }
        } else if drain_until.is_none() {
            drain_until = Some(now + opts.drain_timeout);
        }
        if let Some(until) = drain_until {
            if done >= submitted || now > until {
                break;
            }
            if opts.submit_only {
                while let Some((fut, starts)) = acks.pop_front() {
                    batches.push_back(Batch::new(fut.await?, starts));
                }
                break;
            }
        }
        if let (Some(at), Some((what, every))) = (next_chaos, opts.chaos) {
            if now >= at {
                if let Some(s) = spawned.as_mut() {
                    chaos_events += 1;
                    s.chaos(what).await?;
                }
                next_chaos = Some(at + every);
            }
        }
        // Acceptances come before their results; take every one that is in.
        while let Some((fut, _)) = acks.front_mut() {
            match fut.now_or_never() {
                None => break,
                Some(r) => {
                    let (_, starts) = acks.pop_front().expect("front exists");
                    batches.push_back(Batch::new(r?, starts));
                }
            }
        }
        tokio::select! {
            biased;
            r = client.next_received() => {
              // Take every result already received before submitting again,
              // so that submissions under load go out in batches of what
              // came due meanwhile instead of a frame per task.
              let mut next = Some(r);
              let mut taken = 0;
              while let Some(r) = next.take() {
                let Some((r, now)) = r else {
                    return Err(LoadError::Setup(format!("connection lost: {}", client.close_reason().unwrap_or_default())));
                };
                taken += 1;
                last_result = now;
                // Make sure the batch holding this id is known.
                while batch_of(&batches, r.id).is_none() && !acks.is_empty() {
                    let (fut, starts) = acks.pop_front().expect("non-empty");
                    batches.push_back(Batch::new(fut.await?, starts));
                }
                match batch_of(&batches, r.id) {
                    None => unexpected += 1,
                    Some(bi) => {
                        let b = &mut batches[bi];
                        let k = (r.id - b.first_id) as usize;
                        if b.got[k] {
                            duplicated += 1;
                        } else {
                            b.got[k] = true;
                            b.missing -= 1;
                            done += 1;
                            let start = b.starts.of(k);
                            if start >= record_from {
                                let lat = now.saturating_duration_since(start);
                                metrics::record(&mut e2e, lat);
                                metrics::record(&mut interval, lat);
                            }
                            match r.status {
                                TaskStatus::Ok => ok += 1,
                                TaskStatus::Failed => {
                                    failed += 1;
                                    if r.errors.is_empty() || r.errors.iter().any(|e| e.reason.is_empty()) {
                                        failed_without_reason += 1;
                                    }
                                }
                                TaskStatus::Cancelled | TaskStatus::Unknown => cancelled += 1,
                            }
                        }
                    }
                }
                // Forget fully answered batches at the front.
                while batches.front().is_some_and(|b| b.missing == 0) {
                    batches.pop_front();
                }
                if now.duration_since(interval_start) >= Duration::from_secs(1) {
                    let fresh = spare_intervals.pop().unwrap_or_else(metrics::histogram);
                    intervals.push((interval_start.duration_since(started), std::mem::replace(&mut interval, fresh)));
                    interval_start = now;
                    if let Some(b) = &bar {
                        b.set_position(done);
                        b.set_message(format!("{:.0} tasks/s", done as f64 / now.duration_since(started).as_secs_f64()));
                    }
                }
                if taken < RESULTS_PER_TURN_MAX {
                    next = client.next_received().now_or_never();
                }
              }
            }
            // Always: the rate, the drain deadline and chaos all run on it.
            _ = ticker.tick() => {}
            // The open loop's pace, finer than the ticker.
            r = async { pacer.as_ref().expect("guarded").tick().await }, if pacer.is_some() => {
                r.map_err(|e| LoadError::Setup(format!("the open loop's pacer failed: {e}")))?;
            }
        }
    }
    let elapsed = last_result.duration_since(started);
    if !interval.is_empty() {
        intervals.push((interval_start.duration_since(started), interval));
    }
    if let Some(b) = &bar {
        b.set_position(done);
        b.finish_and_clear();
    }
    let lost = if opts.submit_only {
        0
    } else {
        submitted - done
    };
    let master = client.status(true).await.ok();
    client.close();
    drop(spawned);
    Ok(Outcome {
        accepted: submitted,
        ok,
        failed,
        cancelled,
        lost,
        duplicated,
        unexpected,
        elapsed,
        e2e,
        intervals,
        submit_lag,
        master,
        master_at_warmup,
        chaos_events,
        failed_without_reason,
    })
}

/// Holds `n` fake workers on a master (its own, unless `opts.master` is
/// given) for `window`, and measures what the pool costs the master.
pub async fn run_pool(
    opts: &LoadOptions,
    n: u32,
    window: Duration,
) -> Result<fake::PoolReport, LoadError> {
    let spawned = match opts.master {
        Some(_) => None,
        None => {
            let mut o = opts.clone();
            o.spawn_workers = 0;
            Some(Spawned::start(&o).await?)
        }
    };
    let addr = opts
        .master
        .or(spawned.as_ref().map(|s| s.master_addr))
        .ok_or_else(|| LoadError::Usage("no master".into()))?;
    let pid = spawned.as_ref().and_then(|s| s.master.id());
    let client = connect(addr, opts.wire).await?;
    let heartbeat = Duration::from_secs(1);
    let r = fake::hold_pool(addr, pid, n, opts.wire, heartbeat, window, &client)
        .await
        .map_err(LoadError::Setup)?;
    client.close();
    drop(spawned);
    Ok(r)
}

async fn connect(addr: SocketAddr, wire: Wire) -> Result<Client, LoadError> {
    let opts = ClientOptions {
        wire,
        name: "loadgen".into(),
        ..ClientOptions::default()
    };
    Ok(Client::connect(addr, opts).await?)
}

fn batch_of(batches: &VecDeque<Batch>, id: u64) -> Option<usize> {
    let i = batches.partition_point(|b| b.first_id <= id);
    let i = i.checked_sub(1)?;
    let b = &batches[i];
    (id < b.first_id + b.got.len() as u64).then_some(i)
}

async fn wait_workers(client: &Client, n: usize) -> Result<(), LoadError> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let s = client.status(false).await?;
        if s.workers.len() >= n {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(LoadError::Setup(format!(
                "only {} of {n} workers registered",
                s.workers.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar
}
