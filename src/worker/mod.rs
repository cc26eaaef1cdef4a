//! The worker: listens for a master (found by the master's scan) or dials one,
//! registers, runs what it is given within its slots, and reports each end.
//!
//! It trusts a master only after the handshake (a master proves it holds the
//! cluster's secret before the worker proves anything or runs anything). It
//! keeps one master session at a time; a newer one replaces the old (a
//! restarted master). With no master for `master_timeout` it terminates
//! itself, so a lost cluster does not leave workers behind. Until then what
//! it runs keeps running across sessions, and results that finish while no
//! master is connected are reported to the next one (a master restarted on
//! its journal accepts them).

pub mod liveness;
pub mod reaper;
mod spawn;
pub mod tasks;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::instant::AtomicInstant;
use crate::net::{self, PortRange, Reader, Writer};
use crate::proto::handshake::{Identity, Peer, Secret};
use crate::proto::*;
use liveness::MasterWatch;
pub use tasks::{Handler, TaskError, TaskInput, TaskOutput};

/// Everything a worker is configured with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node id; must be unique in the cluster.
    pub id: String,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Ports to try, first free wins.
    pub ports: PortRange,
    /// A master to dial (besides being found by scans).
    pub master: Option<SocketAddr>,
    /// Tasks run at once.
    pub slots: u32,
    /// Terminate after this long without a master.
    pub master_timeout: Duration,
    /// Ping the master this often.
    pub heartbeat: Duration,
    /// Run `exec` tasks.
    pub allow_exec: bool,
    /// The cluster's secret, if any.
    pub secret: Option<Secret>,
    /// Wire used when dialing the master.
    pub wire: Wire,
    /// Deadline for a handshake.
    pub handshake_timeout: Duration,
    /// How often to re-dial `master` while without one.
    pub redial_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!("worker-{}", std::process::id()),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: crate::master::WORKER_PORTS_DEFAULT,
            master: None,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            master_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            allow_exec: false,
            secret: None,
            wire: Wire::Bincode,
            handshake_timeout: Duration::from_millis(crate::limits::HANDSHAKE_TIMEOUT_MS),
            redial_interval: Duration::from_secs(1),
        }
    }
}

/// Builds a [`Worker`]: configuration plus the kinds it runs.
pub struct WorkerBuilder {
    cfg: WorkerConfig,
    handlers: HashMap<String, Handler>,
    tasks_on: Option<Handle>,
}

impl WorkerBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, cfg: WorkerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Registers a custom kind: `f` gets the payload and returns the output
    /// or an error: any `Display` value (retried under the task's policy),
    /// or a [`TaskError::rejected`] for an input no attempt can run.
    pub fn handler<F, Fut, E>(mut self, kind: &str, f: F) -> Self
    where
        F: Fn(Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: Into<TaskError>,
    {
        let f = Arc::new(f);
        self.handlers.insert(
            kind.to_string(),
            Handler::Spawn(Arc::new(move |input: TaskInput| {
                let fut = f(input.payload.0);
                Box::pin(async move { fut.await.map(Payload).map_err(Into::into) })
            })),
        );
        self
    }

    /// Runs the kinds that are spawned (`sleep`, `spin`, `stall`, `exec`
    /// and custom kinds; not the inline `noop`, `echo`, `fail`, `flaky`) on
    /// `rt` instead of the runtime the worker runs on. `runner worker` keeps
    /// its connection on one thread, where a frame is read, run and answered
    /// without a cross-thread wake-up, and gives handlers a multi-thread
    /// runtime of their own, so CPU-bound kinds still run in parallel up to
    /// the worker's slots.
    pub fn tasks_on(mut self, rt: Handle) -> Self {
        self.tasks_on = Some(rt);
        self
    }

    /// The worker.
    pub fn build(mut self) -> Worker {
        if self.cfg.allow_exec {
            self.handlers.insert("exec".into(), tasks::exec_handler());
        }
        Worker {
            cfg: self.cfg,
            handlers: Arc::new(self.handlers),
            tasks_on: self.tasks_on,
        }
    }
}

/// A worker, ready to start.
pub struct Worker {
    cfg: WorkerConfig,
    handlers: Arc<HashMap<String, Handler>>,
    tasks_on: Option<Handle>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// No master for `master_timeout` (this long); the end of the last
    /// master session, if there was one, says why.
    MasterTimeout(Duration, Option<String>),
    /// Asked to stop (Ctrl-C); its attempts were handed back.
    Shutdown,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No port to listen on.
    #[error(transparent)]
    Bind(#[from] net::BindError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// A configured period or timeout that must be more than zero is zero.
    #[error("worker {0} must be more than zero")]
    ZeroPeriod(&'static str),
    /// The heartbeat is not shorter than the master-timeout: the worker
    /// would give up on a live master between two of its pings.
    #[error("the worker's master-timeout ({master_timeout:?}) must be longer than its heartbeat ({heartbeat:?})")]
    HeartbeatTooLong {
        /// The configured heartbeat.
        heartbeat: std::time::Duration,
        /// The configured master-timeout.
        master_timeout: std::time::Duration,
    },
}

/// A started worker.
pub struct WorkerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<WorkerExit>,
}

impl WorkerHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Hands back its attempts, says goodbye and stops.
    pub async fn shutdown(self) -> WorkerExit {
        self.stop.cancel();
        self.done.await.unwrap_or(WorkerExit::Shutdown)
    }
    /// Waits for it to end by itself.
    pub async fn join(self) -> WorkerExit {
        self.done.await.unwrap_or(WorkerExit::Shutdown)
    }
    /// Runs until it ends by itself, or until `stop` completes (then it hands
    /// back its attempts and stops).
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> WorkerExit {
        tokio::select! {
            r = &mut self.done => r.unwrap_or(WorkerExit::Shutdown),
            _ = stop => {
                self.stop.cancel();
                (&mut self.done).await.unwrap_or(WorkerExit::Shutdown)
            }
        }
    }
}

const WORKER_ACCEPTS: &[Role] = &[Role::Master];

impl Worker {
    /// A builder with the built-in kinds.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            cfg: WorkerConfig::default(),
            handlers: tasks::builtins(),
            tasks_on: None,
        }
    }

    /// Binds its port and starts serving in the background.
    pub async fn start(self) -> Result<WorkerHandle, WorkerError> {
        for (name, d) in [
            ("heartbeat", self.cfg.heartbeat),
            ("master_timeout", self.cfg.master_timeout),
            ("handshake_timeout", self.cfg.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(WorkerError::ZeroPeriod(name));
            }
        }
        if self.cfg.master_timeout <= self.cfg.heartbeat {
            return Err(WorkerError::HeartbeatTooLong {
                heartbeat: self.cfg.heartbeat,
                master_timeout: self.cfg.master_timeout,
            });
        }
        reaper::supervise();
        let listener = net::bind_first_free(self.cfg.bind, self.cfg.ports).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let done = tokio::spawn(self.serve(listener, addr, stop.clone()));
        Ok(WorkerHandle { addr, stop, done })
    }

    async fn serve(
        self,
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> WorkerExit {
        let cfg = Arc::new(self.cfg);
        let identity = Identity {
            role: Role::Worker,
            node: Text::from(cfg.id.clone()),
            secret: cfg.secret.clone(),
        };
        tracing::info!(worker = %cfg.id, %addr, slots = cfg.slots, "worker listening; waiting for a master");
        let (conn_tx, mut conn_rx) =
            mpsc::channel::<(net::Conn<FromWorker, ToWorker>, Peer, SocketAddr, Origin)>(4);
        let (end_tx, mut end_rx) = mpsc::channel::<(u64, SessionEnd)>(4);
        let mut session: Option<Current> = None;
        let mut runs = Some(Runs::new(cfg.slots));
        let mut session_seq = 0u64;
        let mut watch = MasterWatch::new(cfg.master_timeout, Instant::now());
        let mut dialing = false;
        // Whether the current streak of failed dials has been logged: the
        // first failure says why at warn, the rest (every redial) at debug.
        let dial_failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dial_tx, mut dial_rx) = mpsc::channel::<()>(1);
        let mut watchdog = tokio::time::interval(Duration::from_millis(100));
        let preauth = Arc::new(net::preauth::Preauth::default());
        let mut displaced = 0u64;
        // Why the last master session ended: a worker that gives up for want
        // of a master says so, as the likely cause (refused, say).
        let mut last_end: Option<String> = None;
        loop {
            if session.is_none() && !dialing {
                if let Some(master) = cfg.master {
                    dialing = true;
                    let (cfg, identity, conn_tx, dial_tx, failing) = (
                        cfg.clone(),
                        identity.clone(),
                        conn_tx.clone(),
                        dial_tx.clone(),
                        dial_failing.clone(),
                    );
                    tokio::spawn(async move {
                        match net::connect::<FromWorker, ToWorker>(
                            master,
                            cfg.wire,
                            identity,
                            WORKER_ACCEPTS,
                            cfg.redial_interval,
                            cfg.handshake_timeout,
                        )
                        .await
                        {
                            Ok((conn, peer)) => {
                                failing.store(false, std::sync::atomic::Ordering::Relaxed);
                                let _ = conn_tx.send((conn, peer, master, Origin::Dialed)).await;
                            }
                            Err(e) => {
                                if failing.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                    tracing::debug!("dialing the master failed: {e}");
                                } else {
                                    tracing::warn!(%master, "cannot reach the master: {e}; dialing again every {} ms", cfg.redial_interval.as_millis());
                                }
                                tokio::time::sleep(cfg.redial_interval).await;
                                // Only a failed dial says so; a connection
                                // ends the dialing when it is taken in, so
                                // the two can never race into a second dial.
                                let _ = dial_tx.send(()).await;
                            }
                        }
                    });
                }
            }
            tokio::select! {
                r = listener.accept() => {
                    if let Ok((stream, peer_addr)) = r {
                        // Bounded as the master's: a flood of connections
                        // that never authenticate must not take the
                        // worker's memory and descriptors, nor keep its
                        // master from reaching it.
                        let (slot, gone) = preauth.admit(peer_addr.ip());
                        if let Some(gone) = gone {
                            displaced += 1;
                            if displaced.is_power_of_two() {
                                tracing::warn!(%peer_addr, displaced_from = %gone.source, displaced, "{}", gone.describe());
                            }
                        }
                        let (identity, conn_tx, timeout) = (identity.clone(), conn_tx.clone(), cfg.handshake_timeout);
                        tokio::spawn(async move {
                            let accepted = tokio::select! {
                                a = net::accept::<FromWorker, ToWorker>(stream, identity, WORKER_ACCEPTS, timeout) => a,
                                _ = slot.displaced() => return,
                            };
                            drop(slot);
                            match accepted {
                                Ok((conn, peer)) => { let _ = conn_tx.send((conn, peer, peer_addr, Origin::Accepted)).await; }
                                Err(e) => tracing::info!(%peer_addr, "refused a connection: {e}"),
                            }
                        });
                    }
                }
                Some((conn, peer, peer_addr, origin)) = conn_rx.recv() => {
                    if origin == Origin::Dialed {
                        dialing = false;
                    }
                    if let Some(why) = session.as_ref().and_then(|c| c.refuses(&peer, origin, cfg.heartbeat)) {
                        tracing::info!(master = %peer.node, %peer_addr, "refused a master: {why}");
                        tokio::spawn(async move {
                            let (_, mut w): (Reader<FromWorker, ToWorker>, _) = net::split(conn);
                            let _ = w.send(FromWorker::Error(ErrorMsg::new(ErrorCode::OTHER_MASTER, why))).await;
                        });
                        continue;
                    }
                    if let Some(old) = session.take() {
                        tracing::info!(old = %old.master, new = %peer.node, "a new master connection replaces the current one");
                        old.kick.cancel();
                        // Take back what it was running before starting the next.
                        while let Some((sid, end)) = end_rx.recv().await {
                            if sid == old.id {
                                runs = Some(end.runs);
                                break;
                            }
                        }
                    }
                    session_seq += 1;
                    let (kick, drain) = (CancellationToken::new(), CancellationToken::new());
                    // Not yet heard from: a master that refuses this worker
                    // (another took its id) must not keep it alive.
                    tracing::info!(master = %peer.node, %peer_addr, "connected to master");
                    let (r, w) = net::split(conn);
                    let heard = Arc::new(AtomicInstant::new(Instant::now()));
                    let s = Session::new(cfg.clone(), self.handlers.clone(), self.tasks_on.clone(), addr, runs.take().unwrap_or_else(|| Runs::new(cfg.slots)), heard.clone());
                    let (end_tx, id) = (end_tx.clone(), session_seq);
                    let (k, d) = (kick.clone(), drain.clone());
                    tokio::spawn(async move {
                        let end = s.run(r, w, k, d).await;
                        let _ = end_tx.send((id, end)).await;
                    });
                    session = Some(Current { id: session_seq, kick, drain, master: peer.node.clone(), heard, origin, started: Instant::now() });
                }
                Some((id, end)) = end_rx.recv() => {
                    if let Some(at) = end.last_heard {
                        watch.heard(at);
                    }
                    tracing::warn!("master session ended: {}", end.reason);
                    last_end = Some(end.reason.to_string());
                    if let Some(ended) = session.take_if(|c| c.id == id) {
                        // A master that refuses this worker at once (another
                        // holds its id) is not dialed again at once: that
                        // would be a connection per round trip.
                        if ended.origin == Origin::Dialed && ended.started.elapsed() < cfg.redial_interval {
                            dialing = true;
                            let (dial_tx, wait) = (dial_tx.clone(), cfg.redial_interval);
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = dial_tx.send(()).await;
                            });
                        }
                        let waiting = end.runs.running.len() + end.runs.done.len();
                        if waiting > 0 {
                            tracing::info!(attempts = waiting, "keeping running and finished attempts for the next master session");
                        }
                        runs = Some(end.runs);
                    }
                }
                Some(()) = dial_rx.recv() => dialing = false,
                _ = watchdog.tick() => {
                    let expired = if session.is_none() { watch.expired(Instant::now()) } else { None };
                    if let Some(silent) = expired {
                        tracing::warn!(worker = %cfg.id, last_session_end = last_end.as_deref().unwrap_or("none"), "no master for {} ms (master-timeout {} ms); terminating", silent.as_millis(), cfg.master_timeout.as_millis());
                        return WorkerExit::MasterTimeout(silent, last_end);
                    }
                }
                _ = stop.cancelled() => {
                    if let Some(current) = session.take() {
                        tracing::info!("shutting down: handing running tasks back to the master");
                        current.drain.cancel();
                        while let Some((sid, end)) = end_rx.recv().await {
                            if sid == current.id {
                                tracing::info!("{}", end.reason);
                                break;
                            }
                        }
                    }
                    tracing::info!(worker = %cfg.id, "worker stopped");
                    return WorkerExit::Shutdown;
                }
            }
        }
    }
}

/// How a master connection came: the worker dialed it (`--master`), or a
/// master's scan found the worker's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Dialed,
    Accepted,
}

/// A master heard from within this many of the worker's heartbeats is live:
/// another master's scan may not take the worker from it. The master pings
/// every one of its heartbeats and the worker pings a master silent for one
/// of its own, so a live master is heard at least that often.
const LIVE_MASTER_HEARTBEATS: u32 = 3;

/// The master session in progress.
struct Current {
    id: u64,
    kick: CancellationToken,
    drain: CancellationToken,
    master: Text,
    /// When the session last heard from its master.
    heard: Arc<AtomicInstant>,
    /// Whether it dialed the master or was found by its scan.
    origin: Origin,
    /// When it began.
    started: Instant,
}

impl Current {
    /// Why a new master connection may not replace this session, if it may
    /// not: a scan by another master while this one is live (two clusters
    /// whose port ranges overlap would otherwise take each other's workers
    /// at every scan, and results would go to the master that did not ask).
    /// A connection the worker dialed itself, the same master again, or a
    /// master that has gone silent (frozen, cut off) replaces the session.
    fn refuses(&self, peer: &Peer, origin: Origin, heartbeat: Duration) -> Option<String> {
        if origin == Origin::Dialed || peer.node == self.master {
            return None;
        }
        let silent = self.heard.elapsed_at(Instant::now());
        (silent < heartbeat * LIVE_MASTER_HEARTBEATS).then(|| {
            format!(
                "this worker serves master {} (heard from {} ms ago)",
                self.master,
                silent.as_millis()
            )
        })
    }
}

/// Why and when a master session ended, and what it leaves running.
struct SessionEnd {
    reason: String,
    /// When the master last sent anything but an error (none: it refused
    /// this worker, or said nothing).
    last_heard: Option<Instant>,
    runs: Runs,
}

/// The attempts a worker runs and the results it has not reported yet:
/// they outlive a master session, so that a master that comes back gets
/// them.
struct Runs {
    slots: Arc<Semaphore>,
    /// Told once the last spawned attempt has queued for a slot: the next
    /// queues behind it, so attempts take slots in the order they came
    /// (the semaphore is fair, but spawned tasks first run in any order).
    queued_last: Option<oneshot::Receiver<()>>,
    running: HashMap<(u64, u32), AbortHandle>,
    done: Vec<AttemptResult>,
    results_tx: mpsc::UnboundedSender<AttemptResult>,
    results_rx: mpsc::UnboundedReceiver<AttemptResult>,
}

impl Runs {
    fn new(slots: u32) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Runs {
            slots: Arc::new(Semaphore::new(slots as usize)),
            queued_last: None,
            running: HashMap::new(),
            done: Vec::new(),
            results_tx,
            results_rx,
        }
    }
}

/// One master session: run what it sends, report what ends.
struct Session {
    cfg: Arc<WorkerConfig>,
    handlers: Arc<HashMap<String, Handler>>,
    /// Where spawned handlers run (`None`: the worker's own runtime).
    tasks_on: Option<Handle>,
    listen: SocketAddr,
    runs: Runs,
    /// When its master was last heard from, for the accept loop.
    heard: Arc<AtomicInstant>,
}

/// An attempt's result, within the protocol's limits whatever the handler
/// made of it: a `done` frame that broke them would cost the worker its
/// connection and every attempt it holds.
fn result(
    task_id: u64,
    attempt: u32,
    status: AttemptStatus,
    output: Payload,
    error: String,
) -> AttemptResult {
    if status == AttemptStatus::Ok && output.len() > crate::limits::PAYLOAD_BYTES_MAX {
        let why = format!(
            "output of {} bytes is above the limit of {} bytes",
            output.len(),
            crate::limits::PAYLOAD_BYTES_MAX
        );
        return result(
            task_id,
            attempt,
            AttemptStatus::Failed,
            Payload::empty(),
            why,
        );
    }
    AttemptResult {
        task_id,
        attempt,
        status,
        output,
        error: Text::clipped(error),
    }
}

/// The result of an attempt that ran to its end.
fn ended(task_id: u64, attempt: u32, out: TaskOutput) -> AttemptResult {
    match out {
        Ok(out) => result(task_id, attempt, AttemptStatus::Ok, out, String::new()),
        Err(e) => {
            let status = if e.retryable() {
                AttemptStatus::Failed
            } else {
                AttemptStatus::Rejected
            };
            result(task_id, attempt, status, Payload::empty(), e.into_reason())
        }
    }
}

impl Session {
    fn new(
        cfg: Arc<WorkerConfig>,
        handlers: Arc<HashMap<String, Handler>>,
        tasks_on: Option<Handle>,
        listen: SocketAddr,
        runs: Runs,
        heard: Arc<AtomicInstant>,
    ) -> Self {
        Session {
            cfg,
            handlers,
            tasks_on,
            listen,
            runs,
            heard,
        }
    }

    fn start(&mut self, a: Assignment) {
        let (id, attempt) = (a.task_id, a.attempt);
        if self.runs.running.contains_key(&(id, attempt)) {
            // Handed out again under the same number by a master restarted
            // before its journal held the first hand-out: the copy already
            // running reports for both.
            tracing::info!(
                task = id,
                attempt,
                "attempt already running here; not starting a second copy"
            );
            return;
        }
        let handler = match self.handlers.get(a.kind.as_str()) {
            Some(h) => h.clone(),
            None => {
                let why = if a.kind == "exec" {
                    "exec tasks are disabled on this worker; start it with --allow-exec".to_string()
                } else {
                    let mut kinds: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
                    kinds.sort_unstable();
                    format!(
                        "no handler for kind {:?} here (kinds: {})",
                        a.kind.as_str(),
                        kinds.join(", ")
                    )
                };
                self.runs.done.push(result(
                    id,
                    attempt,
                    AttemptStatus::Unsupported,
                    Payload::empty(),
                    why,
                ));
                return;
            }
        };
        let input = TaskInput {
            task_id: id,
            attempt,
            payload: a.payload,
        };
        match handler {
            Handler::Inline(f) => {
                self.runs.done.push(ended(id, attempt, f(&input)));
            }
            Handler::Spawn(f) => {
                let (slots, tx) = (self.runs.slots.clone(), self.runs.results_tx.clone());
                let timeout =
                    (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms as u64));
                let after = self.runs.queued_last.take();
                let (queued, queued_rx) = oneshot::channel();
                self.runs.queued_last = Some(queued_rx);
                let attempt_run = async move {
                    // The one before it queued first (or is gone).
                    if let Some(after) = after {
                        let _ = after.await;
                    }
                    let acquire = slots.acquire_owned();
                    tokio::pin!(acquire);
                    let ready = futures::poll!(acquire.as_mut());
                    let _ = queued.send(());
                    let permit = match ready {
                        std::task::Poll::Ready(p) => p,
                        std::task::Poll::Pending => acquire.await,
                    };
                    let Ok(_permit) = permit else {
                        return;
                    };
                    let fut = f(input);
                    let outcome = match timeout {
                        None => Some(fut.await),
                        Some(t) => tokio::time::timeout(t, fut).await.ok(),
                    };
                    let r = match outcome {
                        Some(out) => ended(id, attempt, out),
                        None => result(
                            id,
                            attempt,
                            AttemptStatus::TimedOut,
                            Payload::empty(),
                            format!("timed out after {} ms; killed", a.timeout_ms),
                        ),
                    };
                    let _ = tx.send(r);
                };
                let handle = match &self.tasks_on {
                    Some(rt) => rt.spawn(attempt_run),
                    None => tokio::spawn(attempt_run),
                };
                self.runs
                    .running
                    .insert((id, attempt), handle.abort_handle());
            }
        }
    }

    fn stop_all(&mut self) -> Vec<(u64, u32)> {
        let keys: Vec<(u64, u32)> = self.runs.running.keys().copied().collect();
        for (_, h) in self.runs.running.drain() {
            h.abort();
        }
        keys
    }

    async fn flush(&mut self, write: &mut Writer<FromWorker, ToWorker>) -> Result<(), ProtoError> {
        while let Ok(r) = self.runs.results_rx.try_recv() {
            self.runs.running.remove(&(r.task_id, r.attempt));
            self.runs.done.push(r);
        }
        if self.runs.done.is_empty() {
            return Ok(());
        }
        let n = self.runs.done.len().min(crate::limits::BATCH_TASKS_MAX);
        let results: Vec<AttemptResult> = self.runs.done.drain(..n).collect();
        for results in crate::proto::batches(results) {
            write.feed(FromWorker::Done(Done { results })).await?;
        }
        write.flush().await
    }

    async fn run(
        mut self,
        mut read: Reader<FromWorker, ToWorker>,
        mut write: Writer<FromWorker, ToWorker>,
        kick: CancellationToken,
        drain: CancellationToken,
    ) -> SessionEnd {
        let mut watch = MasterWatch::new(self.cfg.master_timeout, Instant::now());
        let mut heard_any = false;
        let end = |reason: String, watch: MasterWatch, heard_any: bool, runs: Runs| SessionEnd {
            reason,
            last_heard: heard_any.then(|| watch.last_heard()),
            runs,
        };
        let mut kinds: Vec<Text> = self
            .handlers
            .keys()
            .map(|k| Text::from(k.clone()))
            .collect();
        kinds.sort();
        let register = Register {
            slots: self.cfg.slots,
            kinds,
            listen: Text::from(self.listen.to_string()),
        };
        if let Err(e) = write.send(FromWorker::Register(register)).await {
            return end(format!("could not register: {e}"), watch, false, self.runs);
        }
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping_seq = 0u64;
        // A master that takes nothing written to it (a stopped one, with
        // results more than the connection's buffers hold) would hold this
        // loop in a write, and its master-timeout with it.
        let stall = self.cfg.master_timeout;
        let reason = loop {
            let flushed = self.flush(&mut write);
            if let Err(e) = net::write_unless_stalled(flushed, read.get_ref().as_ref(), stall).await
            {
                break format!("writing to the master: {e}");
            }
            tokio::select! {
                biased;
                frame = read.next() => {
                    let msg = match frame {
                        None => break "connection closed by the master".to_string(),
                        Some(Err(crate::proto::ProtoError::Io(e))) => break format!("connection to the master lost: {e}"),
                        Some(Err(e)) => {
                            let error = FromWorker::Error(ErrorMsg::new(e.code(), e.to_string()));
                            let _ = tokio::time::timeout(
                                Duration::from_millis(crate::limits::ERROR_SEND_TIMEOUT_MS),
                                write.send(error),
                            )
                            .await;
                            break format!("bad input from master: {e}");
                        }
                        Some(Ok(m)) => m,
                    };
                    if !matches!(msg, ToWorker::Error(_)) {
                        let now = Instant::now();
                        watch.heard(now);
                        self.heard.set(now);
                        heard_any = true;
                    }
                    match msg {
                        ToWorker::Run(run) => {
                            for a in run.tasks {
                                self.start(a);
                            }
                        }
                        ToWorker::Cancel(c) => {
                            if let Some(h) = self.runs.running.remove(&(c.task_id, c.attempt)) {
                                tracing::info!(task = c.task_id, attempt = c.attempt, "attempt cancelled by the master");
                                h.abort();
                            }
                        }
                        ToWorker::Ping(p) => {
                            let pong = write.send(FromWorker::Pong(Pong { seq: p.seq }));
                            if let Err(e) = net::write_unless_stalled(pong, read.get_ref().as_ref(), stall).await {
                                break format!("writing to the master: {e}");
                            }
                        }
                        ToWorker::Pong(_) => {}
                        ToWorker::Goodbye(g) => break format!("master said goodbye: {}", g.reason.loggable(crate::proto::LOGGED_TEXT_BYTES)),
                        ToWorker::Error(e) => break format!("master sent error: {} ({})", e.message.loggable(crate::proto::LOGGED_TEXT_BYTES), e.code.name()),
                        other => {
                            let why = format!("{} after the handshake", other.name());
                            let error = FromWorker::Error(ErrorMsg::new(ErrorCode::UNEXPECTED, why.clone()));
                            let _ = tokio::time::timeout(
                                Duration::from_millis(crate::limits::ERROR_SEND_TIMEOUT_MS),
                                write.send(error),
                            )
                            .await;
                            break why;
                        }
                    }
                }
                Some(r) = self.runs.results_rx.recv() => {
                    self.runs.running.remove(&(r.task_id, r.attempt));
                    self.runs.done.push(r);
                }
                _ = heartbeat.tick() => {
                    if let Some(silent) = watch.expired(Instant::now()) {
                        break format!("master silent for {} ms", silent.as_millis());
                    }
                    // The master pings every heartbeat and this worker
                    // answers, so both sides hear each other; the worker pings
                    // only when the master has gone quiet for a heartbeat,
                    // which halves the traffic of a large idle pool.
                    if watch.silent_for(Instant::now()) >= self.cfg.heartbeat {
                        ping_seq += 1;
                        let ping = write.send(FromWorker::Ping(Ping { seq: ping_seq }));
                        if let Err(e) = net::write_unless_stalled(ping, read.get_ref().as_ref(), stall).await {
                            break format!("writing to the master: {e}");
                        }
                    }
                }
                _ = kick.cancelled() => break "replaced by a newer master connection".into(),
                _ = drain.cancelled() => {
                    // A stopping worker waits for a master that takes
                    // nothing no longer than a few heartbeats: the master
                    // runs the attempts again when it finds it gone.
                    let stall = self.cfg.heartbeat * 3;
                    let flushed = self.flush(&mut write);
                    let _ = net::write_unless_stalled(flushed, read.get_ref().as_ref(), stall).await;
                    let returned = self.stop_all();
                    let n = returned.len();
                    let results = returned
                        .into_iter()
                        .map(|(id, attempt)| result(id, attempt, AttemptStatus::Returned, Payload::empty(), "worker shutting down".into()))
                        .collect();
                    let bye = async {
                        write.feed(FromWorker::Done(Done { results })).await?;
                        write.feed(FromWorker::Goodbye(Goodbye { reason: Text::from_static("worker shutting down") })).await?;
                        write.flush().await
                    };
                    let _ = net::write_unless_stalled(bye, read.get_ref().as_ref(), stall).await;
                    break format!("handed {n} running attempts back; said goodbye");
                }
            }
        };
        end(reason, watch, heard_any, self.runs)
    }
}
