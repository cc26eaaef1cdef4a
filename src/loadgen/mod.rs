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
    /// The driven master's shared secret, if it has one.
    pub secret: Option<crate::proto::handshake::Secret>,
    /// Workers to spawn with the master (when `master` is none).
    pub spawn_workers: u32,
    /// Slots per spawned worker (0: its cores).
    pub worker_slots: u32,
    /// The spawned master's `--prefetch`.
    pub prefetch: u32,
    /// More arguments for the spawned master (e.g. `--journal=PATH`).
    pub master_args: Vec<String>,
    /// More arguments for each spawned worker (e.g. `--port-range=A-B`).
    pub worker_args: Vec<String>,
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
    /// Each attempt's timeout (none if `None`).
    pub task_timeout: Option<Duration>,
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
    /// What chaos did, in order: when (since the start), what, and to which
    /// worker.
    pub chaos_log: Vec<(Duration, &'static str, String)>,
    /// The first distinct reasons failed results gave (up to
    /// [`FAILURE_REASONS_MAX`]), each with how many gave it.
    pub failure_reasons: Vec<(String, u64)>,
    /// Open loop: `(sent, due)` when the load generator sent fewer of the
    /// tasks due by the end than it should have (it could not keep up).
    pub behind: Option<(u64, u64)>,
    /// The run was cut short by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// Failed results that do not say why (no attempt errors, or an empty
    /// reason): a failure must always carry its reason.
    pub failed_without_reason: u64,
    /// Only submitted (`--submit-only`): `elapsed` ends at the last
    /// acceptance, and no result was awaited.
    pub submit_only: bool,
    /// The master's resident memory at the end, when this run started it.
    pub master_rss_mib: Option<f64>,
}

impl Outcome {
    /// Results per second; tasks accepted per second when only submitting.
    pub fn throughput(&self) -> f64 {
        let n = if self.submit_only {
            self.accepted
        } else {
            self.ok + self.failed + self.cancelled
        };
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Most tasks one turn of the loop submits.
const SUBMIT_PER_TURN_MAX: u64 = 65_536;

/// An open loop this far behind its schedule at the deadline (in time's
/// worth of tasks at the rate) does not send the rest: it reports that it
/// fell behind instead (the rate asked for is more than it can send).
const BEHIND_LIMIT: Duration = Duration::from_millis(100);

/// Distinct failure reasons the summary lists.
pub const FAILURE_REASONS_MAX: usize = 5;

/// After SIGINT or SIGTERM, how long the run waits for results of what it
/// had sent before it reports.
const INTERRUPT_DRAIN: Duration = Duration::from_secs(2);

/// Bytes a task takes in a `submit` frame besides its kind and payload (ids,
/// lengths, priority, retries, timeout; generous).
const TASK_FRAME_OVERHEAD: usize = 64;

/// The most tasks of `task_bytes` (kind and payload) one `submit` frame
/// holds within a batch's byte budget ([`crate::proto::BATCH_BYTES_MAX`]),
/// at most `batch`.
fn batch_within_frame(batch: usize, task_bytes: usize) -> usize {
    let fit = crate::proto::BATCH_BYTES_MAX / (task_bytes + TASK_FRAME_OVERHEAD);
    batch.min(fit).max(1)
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
/// Ids of the batches answered in full and forgotten, as ranges in the
/// order they were forgotten (ascending for one client: the master hands
/// out ids in order), merged where they touch: a handful of ranges for a
/// run, however long.
#[derive(Default)]
struct Answered(Vec<std::ops::Range<u64>>);

impl Answered {
    fn add(&mut self, first: u64, count: u64) {
        match self.0.last_mut() {
            Some(last) if last.end == first => last.end = first + count,
            Some(last) if last.start > first => {
                // Out of order (another client's batches between ours):
                // kept sorted for the lookup.
                let i = self.0.partition_point(|r| r.start < first);
                self.0.insert(i, first..first + count);
            }
            _ => self.0.push(first..first + count),
        }
    }

    fn contains(&self, id: u64) -> bool {
        let i = self.0.partition_point(|r| r.end <= id);
        self.0.get(i).is_some_and(|r| r.contains(&id))
    }
}

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
    /// Running workers and their ids.
    workers: Vec<(Child, String)>,
    runner: PathBuf,
    master_addr: SocketAddr,
    slots: u32,
    wire: Wire,
    next_worker: u32,
    stopped: Vec<Child>,
    /// Stopped by [`Chaos::Mixed`], resumed at the instant given.
    paused: Vec<((Child, String), Instant)>,
    /// Workers started with the run.
    initial: usize,
    allow_exec: bool,
    /// More arguments for each worker.
    worker_args: Vec<String>,
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
        let mut master = Command::new(&runner);
        die_with_parent(&mut master);
        let mut master = master
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
            worker_args: opts.worker_args.clone(),
            realtime: opts.realtime,
        };
        for _ in 0..opts.spawn_workers {
            s.add_worker(Wait::Started).await?;
        }
        Ok(s)
    }

    /// Starts one more worker process; returns its id.
    async fn add_worker(&mut self, wait: Wait) -> Result<String, LoadError> {
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
        args.extend(self.worker_args.iter().cloned());
        let mut w = Command::new(&self.runner);
        die_with_parent(&mut w);
        let mut w = w
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
                let id = id.clone();
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
        self.workers.push((w, id.clone()));
        Ok(id)
    }

    /// Resumes the workers [`Chaos::Mixed`] stopped whose pause is over.
    fn resume_due(&mut self) {
        let now = Instant::now();
        let (due, paused): (Vec<_>, Vec<_>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|(_, until)| *until <= now);
        self.paused = paused;
        for ((w, id), _) in due {
            if let Some(pid) = w.id() {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGCONT);
                }
            }
            self.workers.push((w, id));
        }
    }

    /// Kills (or stops) a random running worker and starts a new one;
    /// returns what it did (`killed`, `stopped`, `added`), and to which
    /// worker, if anything.
    async fn chaos(&mut self, what: Chaos) -> Result<Option<(&'static str, String)>, LoadError> {
        use rand::Rng;
        self.resume_due();
        let mut rng = rand::thread_rng();
        if what == Chaos::Mixed {
            let grow = self.workers.len() + self.paused.len() < self.initial * MIXED_POOL_GROWTH;
            match rng.gen_range(0..3) {
                0 if !self.workers.is_empty() => {
                    let (w, id) = self.workers.remove(rng.gen_range(0..self.workers.len()));
                    drop(w); // kill -9 on drop
                    self.add_worker(Wait::No).await?;
                    return Ok(Some(("killed", id)));
                }
                1 if self.workers.len() > 1 => {
                    let (w, id) = self.workers.remove(rng.gen_range(0..self.workers.len()));
                    if let Some(pid) = w.id() {
                        // SAFETY: kill(2) on our own child.
                        unsafe {
                            libc::kill(pid as i32, libc::SIGSTOP);
                        }
                    }
                    let pause = Duration::from_millis(rng.gen_range(500..3000));
                    self.paused.push(((w, id.clone()), Instant::now() + pause));
                    return Ok(Some(("stopped", id)));
                }
                _ if grow => {
                    let id = self.add_worker(Wait::No).await?;
                    return Ok(Some(("added", id)));
                }
                _ => return Ok(None),
            }
        }
        if self.workers.is_empty() {
            return Ok(None);
        }
        let (w, id) = self.workers.remove(rng.gen_range(0..self.workers.len()));
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
        let done = match what {
            Chaos::Stop => {
                self.stopped.push(w);
                "stopped"
            }
            Chaos::Kill | Chaos::Mixed => {
                drop(w);
                "killed"
            }
        };
        self.add_worker(Wait::No).await?;
        Ok(Some((done, id)))
    }
}

/// Has the child killed when the load generator dies, even by `kill -9`
/// (`PR_SET_PDEATHSIG`): a cluster left behind would hold its ports and be
/// found by other masters' scans. The load generator runs on one thread, the
/// one that spawns, so the signal comes when the process goes.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe, as a pre_exec hook needs.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.master.start_kill();
        for (w, _) in &mut self.workers {
            let _ = w.start_kill();
        }
    }
}

fn task_for(i: u64, opts: &LoadOptions, kind: &Text, payload: &Payload) -> NewTask {
    let failing = opts.fail_fraction > 0.0
        && ((i as f64 * opts.fail_fraction).floor()
            != ((i + 1) as f64 * opts.fail_fraction).floor());
    if opts.kind == "mixed" {
        return mixed_task(i, payload, timeout_ms(opts));
    }
    if failing {
        return NewTask {
            kind: Text::from_static("fail"),
            payload: Payload::from("failing on purpose (loadgen --fail-fraction)"),
            priority: 128,
            retries: 0,
            timeout_ms: timeout_ms(opts),
        };
    }
    NewTask {
        kind: kind.clone(),
        payload: payload.clone(),
        priority: 128,
        retries: 3,
        timeout_ms: timeout_ms(opts),
    }
}

/// The tasks' `timeout_ms` (0: none).
fn timeout_ms(opts: &LoadOptions) -> u32 {
    opts.task_timeout.map_or(0, |t| {
        u32::try_from(t.as_millis().max(1)).unwrap_or(u32::MAX)
    })
}

/// Task `i` of the `mixed` kind: in turn a no-op, an echo, a 2 ms sleep, a
/// 100 µs spin, a task that fails its first attempt, and one that fails
/// both of its attempts (so failures, retries and their reasons are part of
/// the load).
fn mixed_task(i: u64, payload: &Payload, timeout_ms: u32) -> NewTask {
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
        timeout_ms,
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
    // Before the cluster starts: a signal from then on is the run's to
    // handle (its cluster goes down with it), not the default's.
    let mut interrupt = Interrupt::new()
        .map_err(|e| LoadError::Setup(format!("cannot watch for SIGINT and SIGTERM: {e}")))?;
    let mut spawned = match opts.master {
        Some(_) => None,
        None => Some(Spawned::start(&opts).await?),
    };
    let addr = opts
        .master
        .or(spawned.as_ref().map(|s| s.master_addr))
        .ok_or_else(|| LoadError::Usage("no master".into()))?;
    let mut client = connect(addr, opts.wire, opts.secret.clone()).await?;
    if let Some(s) = &spawned {
        wait_workers(&client, s.workers.len()).await?;
    }

    let payload = match &opts.arg {
        Some(a) => Payload::from(a.clone()),
        // A failing task's payload is its reason: a readable one.
        None if opts.kind == "fail" => Payload::from("failed on purpose (loadgen --kind fail)"),
        None => Payload::from(vec![b'x'; opts.payload_bytes]),
    };
    // Made once: a text per task would be an allocation and a copy per task.
    let kind = Text::from(opts.kind.clone());
    let batch = batch_within_frame(opts.batch, kind.len() + payload.len());
    if batch < opts.batch {
        eprintln!(
            "loadgen: at most {batch} tasks of {} payload bytes fit in a frame: --batch {} lowered to {batch}",
            payload.len(),
            opts.batch
        );
    }
    let mut total = opts.tasks.unwrap_or(u64::MAX);
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let bar = opts.progress.then(|| progress_bar(opts.tasks));

    let mut batches: VecDeque<Batch> = VecDeque::new();
    let mut answered = Answered::default();
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
    // A master of its own starts empty; another's histograms hold whatever
    // it did before this run, which its figures must leave out.
    let mut master_at_warmup = match (opts.master, snapshot_at) {
        (Some(_), None) => client.status(true).await.ok(),
        _ => None,
    };
    let mut chaos_log = Vec::new();
    let mut reasons: Vec<(String, u64)> = Vec::new();
    let mut accepted_tasks = 0u64;
    let mut submission_ended: Option<Instant> = None;
    let mut behind = None;
    let mut interrupted = false;

    loop {
        let now = Instant::now();
        if snapshot_at.is_some_and(|at| now >= at) {
            snapshot_at = None;
            master_at_warmup = client.status(true).await.ok();
        }
        let past_deadline = deadline.is_some_and(|d| now >= d);
        // An open loop sends every task due before its deadline, those that
        // came due just before it too (the loop may wake a little after);
        // unless it is so far behind that they are no longer the run asked
        // for: then it says so.
        let due_now = schedule.map(|sc| {
            let at = deadline.map_or(now, |d| now.min(d));
            sc.count_due(at).min(total)
        });
        if let (Some(due), Some(rate), true) = (due_now, opts.rate, past_deadline) {
            let late = due.saturating_sub(submitted);
            if late as f64 > rate * BEHIND_LIMIT.as_secs_f64() && behind.is_none() && !interrupted {
                behind = Some((submitted, due));
                total = submitted;
            }
        }
        let more = match due_now {
            Some(due) => submitted < due.min(total) || (!past_deadline && submitted < total),
            None => submitted < total && !past_deadline,
        };
        if !more && submission_ended.is_none() {
            submission_ended = Some(deadline.map_or(now, |d| d.min(now)));
        }
        // Submit what the loop allows.
        if more {
            let want = match due_now {
                Some(due) => due.saturating_sub(submitted),
                None => {
                    // Refill in batches, not one frame per finished task:
                    // wait until a batch's worth (or a quarter of the
                    // window) is free, or the pipe is empty. Submitting
                    // only, a task leaves the window once accepted.
                    let finished = if opts.submit_only {
                        accepted_tasks
                    } else {
                        done
                    };
                    let free = (opts.concurrency as u64)
                        .saturating_sub(submitted - finished)
                        .min(total - submitted);
                    let threshold = (batch as u64).min((opts.concurrency as u64 / 4).max(1));
                    if free >= threshold || submitted == finished || free == total - submitted {
                        free
                    } else {
                        0
                    }
                }
            };
            // A turn sends at most this much, so that a load generator that
            // cannot keep up still reads its results and sees the deadline.
            let mut left = want.min(SUBMIT_PER_TURN_MAX);
            while left > 0 {
                let n = left.min(batch as u64) as usize;
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
        // Chaos strikes while the load goes on, not during the drain.
        if let (Some(at), Some((what, every)), true) = (next_chaos, opts.chaos, more) {
            if now >= at {
                if let Some(s) = spawned.as_mut() {
                    if let Some((did, worker)) = s.chaos(what).await? {
                        if did != "added" {
                            chaos_events += 1;
                        }
                        chaos_log.push((now.duration_since(started), did, worker));
                    }
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
                    let b = Batch::new(r?, starts);
                    accepted_tasks += b.got.len() as u64;
                    batches.push_back(b);
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
                    let b = Batch::new(fut.await?, starts);
                    accepted_tasks += b.got.len() as u64;
                    batches.push_back(b);
                }
                match batch_of(&batches, r.id) {
                    // A second result for a task of a batch already
                    // answered in full is a duplicate; any other id, one
                    // this run never had.
                    None if answered.contains(r.id) => duplicated += 1,
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
                                    if let Some(last) = r.errors.last() {
                                        count_reason(&mut reasons, last.reason.as_str());
                                    }
                                }
                                TaskStatus::Cancelled | TaskStatus::Unknown => cancelled += 1,
                            }
                        }
                    }
                }
                // Forget fully answered batches at the front.
                while batches.front().is_some_and(|b| b.missing == 0) {
                    let b = batches.pop_front().expect("checked");
                    answered.add(b.first_id, b.got.len() as u64);
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
            // SIGINT or SIGTERM: stop submitting, wait a little for what was
            // sent, and report; a second one ends the run at once (the
            // cluster goes with the load generator).
            _ = interrupt.next() => {
                if interrupted {
                    return Err(LoadError::Setup("interrupted twice; stopped without a summary".into()));
                }
                interrupted = true;
                eprintln!("loadgen: interrupted; waiting up to {INTERRUPT_DRAIN:?} for the results of the {submitted} tasks sent (again to stop at once)");
                total = submitted;
                let until = Instant::now() + INTERRUPT_DRAIN;
                drain_until = Some(drain_until.map_or(until, |d| d.min(until)));
            }
        }
    }
    // From the start to the last result, and at least to the end of
    // submission: an open loop of a few tasks is not over when its last
    // result comes in.
    let elapsed = last_result
        .max(submission_ended.unwrap_or(last_result))
        .duration_since(started);
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
    let master_rss_mib = spawned
        .as_ref()
        .and_then(|s| s.master.id())
        .and_then(fake::rss_mib);
    client.shutdown().await;
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
        chaos_log,
        failure_reasons: reasons,
        behind,
        interrupted,
        failed_without_reason,
        submit_only: opts.submit_only,
        master_rss_mib,
    })
}

/// Counts a failure's reason among the first [`FAILURE_REASONS_MAX`]
/// distinct ones (numbers in it, such as ids, are kept: reasons are few).
fn count_reason(reasons: &mut Vec<(String, u64)>, reason: &str) {
    if let Some((_, n)) = reasons.iter_mut().find(|(r, _)| r == reason) {
        *n += 1;
    } else if reasons.len() < FAILURE_REASONS_MAX {
        reasons.push((reason.to_string(), 1));
    }
}

/// SIGINT and SIGTERM, as one stream.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
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
    let client = connect(addr, opts.wire, opts.secret.clone()).await?;
    let heartbeat = Duration::from_secs(1);
    let r = fake::hold_pool(addr, pid, n, opts.wire, heartbeat, window, &client)
        .await
        .map_err(LoadError::Setup)?;
    client.close();
    drop(spawned);
    Ok(r)
}

async fn connect(
    addr: SocketAddr,
    wire: Wire,
    secret: Option<crate::proto::handshake::Secret>,
) -> Result<Client, LoadError> {
    let opts = ClientOptions {
        wire,
        secret,
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

#[cfg(test)]
mod tests {
    use super::Answered;

    #[test]
    fn a_result_for_a_batch_answered_in_full_is_told_from_one_never_submitted() {
        let mut a = Answered::default();
        a.add(100, 10);
        a.add(110, 5);
        a.add(200, 3);
        a.add(50, 2);
        assert_eq!(a.0.len(), 3, "touching ranges merge");
        for id in [100, 109, 110, 114, 200, 202, 50, 51] {
            assert!(a.contains(id), "{id}");
        }
        for id in [99, 115, 199, 203, 0, 52] {
            assert!(!a.contains(id), "{id}");
        }
    }
}
