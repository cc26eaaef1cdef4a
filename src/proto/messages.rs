//! Every message of protocol version 1, as data.
//!
//! Messages are grouped by direction ([`FromClient`], [`ToClient`],
//! [`ToWorker`], [`FromWorker`]); each variant wraps one body struct, and the
//! handshake and liveness bodies ([`Hello`], [`Auth`], [`ErrorMsg`], [`Ping`],
//! [`Pong`], [`Goodbye`]) appear in every direction under the same type number.
//! The type numbers and JSON names here are normative (PROTOCOL.md, section
//! "Messages"): append new ones, never renumber or reuse a retired one. Struct
//! fields are encoded in declaration order on the binary wire: never reorder.

use serde::{Deserialize, Serialize};

use super::error::ProtoError;
use super::types::{Bytes32, Payload, Text};
use super::Message;
use crate::limits;

/// What a peer is, named in its [`Hello`] and bound into its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits tasks and reads results.
    Client,
    /// Runs tasks.
    Worker,
    /// Accepts tasks from clients and dispatches them to workers.
    Master,
}

impl Role {
    /// The byte that stands for this role inside an authentication proof.
    pub fn proof_byte(self) -> u8 {
        match self {
            Role::Client => b'c',
            Role::Worker => b'w',
            Role::Master => b'm',
        }
    }
    /// Lowercase name, as on the JSON wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Master => "master",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A numbered error class, carried in [`ErrorMsg`]. Numbers are normative and
/// open-ended: a receiver must accept numbers it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$m:meta])* $name:ident = $n:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[$m])* pub const $name: ErrorCode = ErrorCode($n);)*
            /// Every code defined by this version, for the spec and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];
            /// The code's snake_case name, or `"unknown"`.
            pub fn name(self) -> &'static str {
                match self.0 { $($n => $text,)* _ => "unknown" }
            }
        }
    };
}

error_codes! {
    /// The peer speaks no protocol version this node speaks.
    VERSION_MISMATCH = 1, "version_mismatch";
    /// A proof did not verify, or authentication was required and missing.
    AUTH_FAILED = 2, "auth_failed";
    /// The handshake did not finish within its deadline.
    HANDSHAKE_TIMEOUT = 3, "handshake_timeout";
    /// A frame or JSON line could not be parsed (bad magic, truncated body,
    /// wrong field types, invalid UTF-8, ...).
    MALFORMED = 4, "malformed";
    /// A frame or line longer than the limit in force.
    FRAME_TOO_LARGE = 5, "frame_too_large";
    /// A message type this node does not know for this direction.
    UNKNOWN_MESSAGE = 6, "unknown_message";
    /// A well-formed message that breaks a limit or a rule (batch too large,
    /// payload too large, retries or timeout out of range).
    INVALID = 7, "invalid";
    /// A message that is valid but not allowed in the current session state.
    UNEXPECTED = 8, "unexpected";
    /// The node refuses new connections (connection limit reached).
    BUSY = 9, "busy";
    /// The node is shutting down.
    SHUTTING_DOWN = 10, "shutting_down";
    /// A worker with this node id is already registered.
    DUPLICATE_NODE = 11, "duplicate_node";
    /// The peer's role may not connect to this node.
    WRONG_ROLE = 12, "wrong_role";
    /// A fault inside the node, not caused by the peer.
    INTERNAL = 13, "internal";
    /// The master cannot write its journal (a full disk): it acknowledges
    /// nothing until it can again.
    JOURNAL_FAILED = 14, "journal_failed";
    /// The worker serves another master, heard from within its last few
    /// heartbeats: a scan by a second master may not take it over.
    OTHER_MASTER = 15, "other_master";
}

/// Checks a message body against the limits of `crate::limits`; run by the
/// codec on every message it decodes, so receivers only see valid messages.
pub trait Validate {
    /// `Ok` when every field is within its limit.
    fn validate(&self) -> Result<(), ProtoError> {
        Ok(())
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::Limit {
            what,
            value: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn check_text(what: &'static str, t: &Text) -> Result<(), ProtoError> {
    check_len(what, t.len(), limits::TEXT_BYTES_MAX)
}

fn check_payload(what: &'static str, p: &Payload) -> Result<(), ProtoError> {
    check_len(what, p.len(), limits::PAYLOAD_BYTES_MAX)
}

fn check_kind(what: &'static str, kind: &Text) -> Result<(), ProtoError> {
    if kind.is_empty() {
        return Err(ProtoError::Invalid(format!("{what} is empty")));
    }
    check_text(what, kind)
}

/// Attempt numbers count from 1. They have no upper bound: an attempt that a
/// draining worker hands back does not count against the task's retries, but
/// its number is not reused.
fn check_attempt(what: &'static str, attempt: u32) -> Result<(), ProtoError> {
    if attempt == 0 {
        return Err(ProtoError::Invalid(format!(
            "{what} is 0; attempts count from 1"
        )));
    }
    Ok(())
}

fn check_timeout(what: &'static str, timeout_ms: u32) -> Result<(), ProtoError> {
    check_len(
        what,
        timeout_ms as usize,
        limits::TASK_TIMEOUT_MS_MAX as usize,
    )
}

fn default_version() -> u8 {
    super::PROTOCOL_VERSION
}

/// The first message on every connection, from each side. Its layout is the
/// same in every protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// What the sender is.
    pub role: Role,
    /// Oldest protocol version the sender speaks.
    #[serde(default = "default_version")]
    pub min_version: u8,
    /// Newest protocol version the sender speaks.
    #[serde(default = "default_version")]
    pub max_version: u8,
    /// The sender's node id (a worker's `--id`, a client's name).
    #[serde(default)]
    pub node: Text,
    /// Whether the sender holds a shared secret and so requires an [`Auth`]
    /// exchange.
    #[serde(default)]
    pub auth: bool,
    /// A fresh random value; bound into both proofs so none can be replayed.
    #[serde(default)]
    pub nonce: Bytes32,
}

impl Validate for Hello {
    fn validate(&self) -> Result<(), ProtoError> {
        check_text("hello.node", &self.node)?;
        if self.min_version > self.max_version {
            return Err(ProtoError::Invalid(format!(
                "hello.min_version {} is above hello.max_version {}",
                self.min_version, self.max_version
            )));
        }
        // It goes into the peer's logs: a line feed in it would forge lines.
        if self.node.as_str().chars().any(super::types::unprintable) {
            return Err(ProtoError::Invalid(
                "hello.node must be without control characters, nor invisible ones that reorder or hide text (it goes into logs)".into(),
            ));
        }
        if self.auth && self.nonce == Bytes32::default() {
            return Err(ProtoError::Invalid(
                "hello.nonce must be 32 random bytes when auth is true".into(),
            ));
        }
        Ok(())
    }
}

/// A proof that the sender holds the cluster's shared secret (see
/// PROTOCOL.md, "Authentication").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    /// HMAC-SHA256 over both roles and both nonces.
    pub proof: Bytes32,
}
impl Validate for Auth {}

/// A refusal or a fault, usually followed by the sender closing the
/// connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// The class of error.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: Text,
}

impl ErrorMsg {
    /// An error message with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
        ErrorMsg {
            code,
            message: Text::from(message.into()),
        }
    }
}

impl Validate for ErrorMsg {
    fn validate(&self) -> Result<(), ProtoError> {
        check_text("error.message", &self.message)
    }
}

/// A liveness probe; the receiver answers [`Pong`] with the same `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Chosen by the sender, echoed back.
    pub seq: u64,
}
impl Validate for Ping {}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The `seq` of the ping answered.
    pub seq: u64,
}
impl Validate for Pong {}

/// The sender is closing the session on purpose (shutdown, drain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why, for the log.
    #[serde(default)]
    pub reason: Text,
}
impl Validate for Goodbye {
    fn validate(&self) -> Result<(), ProtoError> {
        check_text("goodbye.reason", &self.reason)
    }
}

/// Default task priority when a JSON client leaves it out.
pub const PRIORITY_DEFAULT: u8 = 128;
/// Default retries when a JSON client leaves them out.
pub const RETRIES_DEFAULT: u8 = 3;

fn default_priority() -> u8 {
    PRIORITY_DEFAULT
}
fn default_retries() -> u8 {
    RETRIES_DEFAULT
}

/// A task as a client submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    /// Which handler runs it (`noop`, `echo`, `sleep`, `spin`, `fail`,
    /// `exec`, or a custom kind).
    pub kind: Text,
    /// The handler's input.
    #[serde(default)]
    pub payload: Payload,
    /// 0-255, higher runs first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// How many times a failed attempt is retried (0 to `RETRIES_MAX`).
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// Per-attempt timeout in milliseconds; 0 means none.
    #[serde(default)]
    pub timeout_ms: u32,
}

impl Validate for NewTask {
    fn validate(&self) -> Result<(), ProtoError> {
        check_text("task.kind", &self.kind)?;
        check_payload("task.payload", &self.payload)
    }
}

impl NewTask {
    /// The master's admission rules for one task. Unlike [`Validate`] (sizes
    /// that guard memory, checked by the codec and fatal to the connection),
    /// breaking one of these rejects only the batch, with an `invalid` error,
    /// and the client's connection stays open.
    pub fn check_admission(&self) -> Result<(), ProtoError> {
        check_kind("task.kind", &self.kind)?;
        check_len(
            "task.retries",
            self.retries as usize,
            limits::RETRIES_MAX as usize,
        )?;
        check_timeout("task.timeout_ms", self.timeout_ms)
    }
}

/// A batch of tasks from a client; the master answers [`Accepted`] (or an
/// [`ErrorMsg`] rejecting the whole batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// The tasks, in order; they get consecutive ids.
    pub tasks: Vec<NewTask>,
}

impl Validate for Submit {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("submit.tasks", self.tasks.len(), limits::BATCH_TASKS_MAX)?;
        self.tasks.iter().try_for_each(Validate::validate)
    }
}

/// A [`Submit`] whose results the sending connection will not take: the
/// master keeps them for a later [`Fetch`] (`runner submit --detach`). Same
/// layout and rules as [`Submit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitDetached {
    /// The tasks, in order; they get consecutive ids.
    pub tasks: Vec<NewTask>,
}

impl Validate for SubmitDetached {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len(
            "submit_detached.tasks",
            self.tasks.len(),
            limits::BATCH_TASKS_MAX,
        )?;
        self.tasks.iter().try_for_each(Validate::validate)
    }
}

impl From<SubmitDetached> for Submit {
    fn from(s: SubmitDetached) -> Submit {
        Submit { tasks: s.tasks }
    }
}

impl Submit {
    /// The admission rules for the whole batch ([`NewTask::check_admission`]
    /// for each task, and at least one task); the error names the first task
    /// that breaks one.
    pub fn check_admission(&self) -> Result<(), ProtoError> {
        if self.tasks.is_empty() {
            return Err(ProtoError::Invalid("submit.tasks is empty".into()));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            t.check_admission().map_err(|e| {
                let why = match e {
                    ProtoError::Invalid(why) => why,
                    other => other.to_string(),
                };
                ProtoError::Invalid(format!("task {i} of the batch: {why}"))
            })?;
        }
        Ok(())
    }
}

/// A request for the master's state; answered by [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Include latency histogram summaries.
    #[serde(default)]
    pub histograms: bool,
}
impl Validate for StatusRequest {}

/// Attach this connection to tasks by id (submitted earlier, perhaps over
/// another connection or before a master restart): the master sends the
/// result of each one here, at once for those already finished, when they
/// finish for the others, and with status `unknown` for ids it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Task ids, from [`Accepted`].
    pub ids: Vec<u64>,
}

impl Validate for Fetch {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("fetch.ids", self.ids.len(), limits::BATCH_TASKS_MAX)
    }
}

/// The client holds these results: the master may forget them. Until a
/// result is acknowledged the master keeps it (in its journal, when it has
/// one) so that a client can fetch it again after a lost connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Ids of results received.
    pub ids: Vec<u64>,
}

impl Validate for Ack {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("ack.ids", self.ids.len(), limits::BATCH_TASKS_MAX)
    }
}

/// The master accepted a [`Submit`]: its tasks got ids `first_id ..
/// first_id + count`, in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Id of the batch's first task.
    pub first_id: u64,
    /// Number of tasks accepted (the batch's length).
    pub count: u32,
}
impl Validate for Accepted {}

/// Stop tasks by id (`runner cancel`), wherever they are: a queued task is
/// taken out of its queue, a running one is stopped on its worker (with a
/// `cancel`), one waiting out a retry back-off is not retried. Each such
/// task's final state is `cancelled`, and its result goes where its result
/// would have gone (its submitter, attached clients, or kept for a fetch).
/// Answered by a [`CancelReport`] with the same `request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelTasks {
    /// Chosen by the client and echoed in the report: reports come when
    /// their tasks are finished, not in the order asked.
    pub request: u64,
    /// Task ids, from [`Accepted`].
    pub ids: Vec<u64>,
    /// Why, for the tasks' results (may be empty).
    #[serde(default)]
    pub reason: Text,
}

impl Validate for CancelTasks {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("cancel_tasks.ids", self.ids.len(), limits::BATCH_TASKS_MAX)?;
        check_text("cancel_tasks.reason", &self.reason)
    }
}

/// The answer to a [`CancelTasks`]: every id it named, in one of three
/// lists. Sent once each cancelled task's `cancelled` result is final
/// (journaled, on a master with a journal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReport {
    /// The request's `request`.
    pub request: u64,
    /// Stopped: their final state is `cancelled`.
    pub cancelled: Vec<u64>,
    /// Already finished (ok, failed or cancelled) before the request: left
    /// as they were.
    pub finished: Vec<u64>,
    /// Not tasks of this master: never accepted, or from before a restart
    /// without a journal.
    pub unknown: Vec<u64>,
}

impl Validate for CancelReport {
    fn validate(&self) -> Result<(), ProtoError> {
        let n = self.cancelled.len() + self.finished.len() + self.unknown.len();
        check_len("cancel_report ids", n, limits::BATCH_TASKS_MAX)
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// An attempt succeeded; `output` is its result.
    Ok,
    /// Every allowed attempt failed; `errors` says why, one entry each.
    Failed,
    /// Stopped before it finished: a client cancelled it
    /// ([`CancelTasks`]), or a master without a journal shut down.
    Cancelled,
    /// The master knows no task with this id: it was never accepted, or its
    /// result was already acknowledged by a client ([`Ack`]). Sent only in
    /// answer to a [`Fetch`].
    Unknown,
}

/// One failed attempt of a task, as reported to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The worker that ran it (empty if it never reached one).
    pub worker: Text,
    /// What went wrong.
    pub reason: Text,
}

/// The final state of one task; sent exactly once per accepted task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's id, from [`Accepted`].
    pub id: u64,
    /// How it ended.
    pub status: TaskStatus,
    /// The successful attempt's output (empty otherwise).
    #[serde(default)]
    pub output: Payload,
    /// How many attempts were made.
    pub attempts: u32,
    /// The worker that ran the last attempt (empty if none ran).
    #[serde(default)]
    pub worker: Text,
    /// Every failed attempt, oldest first.
    #[serde(default)]
    pub errors: Vec<AttemptError>,
}

impl Validate for TaskResult {
    fn validate(&self) -> Result<(), ProtoError> {
        check_payload("result.output", &self.output)?;
        check_text("result.worker", &self.worker)?;
        check_len("result.errors", self.errors.len(), limits::ATTEMPTS_MAX)?;
        for e in &self.errors {
            check_text("result.errors.worker", &e.worker)?;
            check_text("result.errors.reason", &e.reason)?;
        }
        Ok(())
    }
}

/// A batch of final task states, for the client that submitted them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The results, in completion order.
    pub results: Vec<TaskResult>,
}

impl Validate for Results {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("results", self.results.len(), limits::BATCH_TASKS_MAX)?;
        self.results.iter().try_for_each(Validate::validate)
    }
}

/// One worker, as the master sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its node id.
    pub id: Text,
    /// Its address as the master reaches it.
    pub addr: Text,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Tasks on it now.
    pub in_flight: u32,
    /// Attempts it finished successfully.
    pub done: u64,
    /// Attempts that failed on it.
    pub failed: u64,
    /// Last heartbeat round trip, microseconds.
    pub rtt_us: u64,
    /// Milliseconds since the master last heard from it.
    pub silent_ms: u64,
}

/// Tasks waiting at one priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// The priority.
    pub priority: u8,
    /// Tasks waiting.
    pub depth: u64,
}

/// Percentiles of one latency histogram, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// What is measured (`queue_wait`, `end_to_end`, ...).
    pub name: Text,
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// The whole histogram, in HdrHistogram's V2 compressed encoding, base64
    /// (as in an interval log line), for tools that want more than these
    /// percentiles; may be empty.
    #[serde(default)]
    pub hdr: Text,
}

/// The master's state, answering a [`StatusRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Registered workers.
    pub workers: Vec<WorkerInfo>,
    /// Waiting tasks per priority (only non-empty priorities, highest first).
    pub queues: Vec<QueueDepth>,
    /// Tasks accepted since start.
    pub submitted: u64,
    /// Tasks finished with status ok.
    pub completed: u64,
    /// Tasks finished with status failed.
    pub failed: u64,
    /// Attempts that were retried.
    pub retried: u64,
    /// Attempts running now.
    pub running: u64,
    /// Histogram summaries, when asked for.
    #[serde(default)]
    pub histograms: Vec<HistogramSummary>,
}

impl Validate for StatusReport {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("status.workers", self.workers.len(), limits::LIST_ITEMS_MAX)?;
        check_len("status.queues", self.queues.len(), limits::PRIORITY_LEVELS)?;
        check_len(
            "status.histograms",
            self.histograms.len(),
            limits::LIST_ITEMS_MAX,
        )?;
        for w in &self.workers {
            check_text("status.workers.id", &w.id)?;
            check_text("status.workers.addr", &w.addr)?;
        }
        self.histograms
            .iter()
            .try_for_each(|h| check_text("status.histograms.name", &h.name))
    }
}

/// One attempt of a task, handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task's id.
    pub task_id: u64,
    /// Attempt number, from 1; a result must echo it.
    pub attempt: u32,
    /// Which handler runs it.
    pub kind: Text,
    /// The handler's input.
    #[serde(default)]
    pub payload: Payload,
    /// Kill the attempt after this many milliseconds; 0 means none.
    #[serde(default)]
    pub timeout_ms: u32,
}

impl Validate for Assignment {
    fn validate(&self) -> Result<(), ProtoError> {
        check_kind("run.kind", &self.kind)?;
        check_attempt("run.attempt", self.attempt)?;
        check_payload("run.payload", &self.payload)?;
        check_timeout("run.timeout_ms", self.timeout_ms)
    }
}

/// A batch of attempts for a worker to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The attempts, in dispatch order.
    pub tasks: Vec<Assignment>,
}

impl Validate for Run {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("run.tasks", self.tasks.len(), limits::BATCH_TASKS_MAX)?;
        self.tasks.iter().try_for_each(Validate::validate)
    }
}

/// Stop an attempt the master no longer wants (it timed out or was
/// reassigned); the worker kills it and reports nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The task.
    pub task_id: u64,
    /// The attempt to stop.
    pub attempt: u32,
}
impl Validate for Cancel {
    fn validate(&self) -> Result<(), ProtoError> {
        check_attempt("cancel.attempt", self.attempt)
    }
}

/// A worker introduces itself after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// Tasks it runs at once.
    pub slots: u32,
    /// Task kinds it can run.
    pub kinds: Vec<Text>,
    /// The address it listens on (for discovery, so the master does not
    /// register it twice), or empty.
    #[serde(default)]
    pub listen: Text,
}

impl Validate for Register {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("register.kinds", self.kinds.len(), limits::LIST_ITEMS_MAX)?;
        if self.slots == 0 {
            return Err(ProtoError::Invalid("register.slots is 0".into()));
        }
        check_text("register.listen", &self.listen)?;
        self.kinds
            .iter()
            .try_for_each(|k| check_kind("a kind in register.kinds", k))
    }
}

/// How one attempt ended on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// It succeeded; `output` is the result.
    Ok,
    /// It failed; `error` says why.
    Failed,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// This worker cannot run this kind (unknown, or `exec` not allowed).
    Unsupported,
    /// The worker gave it back unfinished (the worker is draining); it does
    /// not count as an attempt.
    Returned,
    /// It failed in a way no attempt can mend (its payload is not what its
    /// kind takes): the master reports the task failed without retrying it.
    Rejected,
}

/// One attempt's end, from a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// The task.
    pub task_id: u64,
    /// The attempt, as assigned.
    pub attempt: u32,
    /// How it ended.
    pub status: AttemptStatus,
    /// The result when `status` is ok.
    #[serde(default)]
    pub output: Payload,
    /// Why it failed otherwise.
    #[serde(default)]
    pub error: Text,
}

impl Validate for AttemptResult {
    fn validate(&self) -> Result<(), ProtoError> {
        check_attempt("done.attempt", self.attempt)?;
        check_payload("done.output", &self.output)?;
        check_text("done.error", &self.error)
    }
}

/// A batch of finished attempts from a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The results, in completion order.
    pub results: Vec<AttemptResult>,
}

impl Validate for Done {
    fn validate(&self) -> Result<(), ProtoError> {
        check_len("done.results", self.results.len(), limits::BATCH_TASKS_MAX)?;
        self.results.iter().try_for_each(Validate::validate)
    }
}

/// Declares a direction's message enum and implements [`Message`] for it:
/// the type number and JSON name of each variant, and its body codec.
macro_rules! direction {
    (
        $(#[$meta:meta])*
        $name:ident, $dir:literal {
            $($(#[$vmeta:meta])* $variant:ident($body:ty) = $ty:literal, $json:literal;)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $($(#[$vmeta])* $variant($body),)*
        }

        impl Message for $name {
            const DIRECTION: &'static str = $dir;
            const TYPES: &'static [(u8, &'static str)] = &[$(($ty, $json)),*];

            fn msg_type(&self) -> u8 {
                match self { $(Self::$variant(_) => $ty,)* }
            }

            fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $json,)* }
            }

            fn encode_body(&self, wire: super::Wire, dst: &mut bytes::BytesMut) -> Result<(), ProtoError> {
                match self { $(Self::$variant(m) => super::encode_body(wire, $json, m, dst),)* }
            }

            fn decode_bincode(ty: u8, body: &[u8]) -> Result<Self, ProtoError> {
                match ty {
                    $($ty => super::bincode_wire::decode_body(body).map(Self::$variant),)*
                    _ => Err(ProtoError::UnknownMessageType { ty, direction: $dir }),
                }
            }

            fn decode_json(name: &str, line: &[u8]) -> Result<Self, ProtoError> {
                match name {
                    $($json => super::json_wire::decode_body(line).map(Self::$variant),)*
                    _ => Err(ProtoError::UnknownMessageName { name: name.into(), direction: $dir }),
                }
            }

            fn validate(&self) -> Result<(), ProtoError> {
                match self { $(Self::$variant(m) => m.validate(),)* }
            }

            fn into_common(self) -> Result<Common, Self> {
                direction!(@common self $($variant)*)
            }
        }

        $(impl From<$body> for $name {
            fn from(m: $body) -> $name { $name::$variant(m) }
        })*
    };
    (@common $self:ident $($variant:ident)*) => {
        match $self {
            Self::Hello(m) => Ok(Common::Hello(m)),
            Self::Auth(m) => Ok(Common::Auth(m)),
            Self::Error(m) => Ok(Common::Error(m)),
            Self::Ping(m) => Ok(Common::Ping(m)),
            Self::Pong(m) => Ok(Common::Pong(m)),
            Self::Goodbye(m) => Ok(Common::Goodbye(m)),
            other => Err(other),
        }
    };
}

/// The messages every direction shares: handshake and liveness.
#[derive(Debug, Clone, PartialEq)]
pub enum Common {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Auth`].
    Auth(Auth),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
}

direction! {
    /// Client to master.
    FromClient, "client->master" {
        /// Handshake: who I am.
        Hello(Hello) = 0x01, "hello";
        /// Handshake: my proof.
        Auth(Auth) = 0x02, "auth";
        /// A refusal or fault.
        Error(ErrorMsg) = 0x03, "error";
        /// Liveness probe.
        Ping(Ping) = 0x04, "ping";
        /// Liveness answer.
        Pong(Pong) = 0x05, "pong";
        /// Closing on purpose.
        Goodbye(Goodbye) = 0x06, "goodbye";
        /// Tasks to run.
        Submit(Submit) = 0x10, "submit";
        /// Ask for the master's state.
        Status(StatusRequest) = 0x11, "status";
        /// Attach to tasks by id.
        Fetch(Fetch) = 0x12, "fetch";
        /// Results received; the master may forget them.
        Ack(Ack) = 0x13, "ack";
        /// Tasks to run whose results this connection will not take: the
        /// master keeps them for a later `fetch` (`runner submit --detach`).
        SubmitDetached(SubmitDetached) = 0x14, "submit_detached";
        /// Stop tasks by id.
        CancelTasks(CancelTasks) = 0x15, "cancel_tasks";
    }
}

direction! {
    /// Master to client.
    ToClient, "master->client" {
        /// Handshake: who I am.
        Hello(Hello) = 0x01, "hello";
        /// Handshake: my proof.
        Auth(Auth) = 0x02, "auth";
        /// A refusal or fault.
        Error(ErrorMsg) = 0x03, "error";
        /// Liveness probe.
        Ping(Ping) = 0x04, "ping";
        /// Liveness answer.
        Pong(Pong) = 0x05, "pong";
        /// Closing on purpose.
        Goodbye(Goodbye) = 0x06, "goodbye";
        /// A submit was accepted.
        Accepted(Accepted) = 0x20, "accepted";
        /// Final task states.
        Results(Results) = 0x21, "results";
        /// The master's state.
        Status(StatusReport) = 0x22, "status_report";
        /// What a `cancel_tasks` did.
        CancelReport(CancelReport) = 0x23, "cancel_report";
    }
}

direction! {
    /// Master to worker.
    ToWorker, "master->worker" {
        /// Handshake: who I am.
        Hello(Hello) = 0x01, "hello";
        /// Handshake: my proof.
        Auth(Auth) = 0x02, "auth";
        /// A refusal or fault.
        Error(ErrorMsg) = 0x03, "error";
        /// Heartbeat.
        Ping(Ping) = 0x04, "ping";
        /// Heartbeat answer.
        Pong(Pong) = 0x05, "pong";
        /// Closing on purpose.
        Goodbye(Goodbye) = 0x06, "goodbye";
        /// Attempts to run.
        Run(Run) = 0x30, "run";
        /// Stop an attempt.
        Cancel(Cancel) = 0x31, "cancel";
    }
}

direction! {
    /// Worker to master.
    FromWorker, "worker->master" {
        /// Handshake: who I am.
        Hello(Hello) = 0x01, "hello";
        /// Handshake: my proof.
        Auth(Auth) = 0x02, "auth";
        /// A refusal or fault.
        Error(ErrorMsg) = 0x03, "error";
        /// Heartbeat.
        Ping(Ping) = 0x04, "ping";
        /// Heartbeat answer.
        Pong(Pong) = 0x05, "pong";
        /// Closing on purpose.
        Goodbye(Goodbye) = 0x06, "goodbye";
        /// Capacity and kinds, after the handshake.
        Register(Register) = 0x40, "register";
        /// Finished attempts.
        Done(Done) = 0x41, "done";
    }
}

impl From<Common> for FromClient {
    fn from(c: Common) -> Self {
        common_into(c)
    }
}
impl From<Common> for ToClient {
    fn from(c: Common) -> Self {
        common_into(c)
    }
}
impl From<Common> for ToWorker {
    fn from(c: Common) -> Self {
        common_into(c)
    }
}
impl From<Common> for FromWorker {
    fn from(c: Common) -> Self {
        common_into(c)
    }
}

fn common_into<M>(c: Common) -> M
where
    M: From<Hello> + From<Auth> + From<ErrorMsg> + From<Ping> + From<Pong> + From<Goodbye>,
{
    match c {
        Common::Hello(m) => m.into(),
        Common::Auth(m) => m.into(),
        Common::Error(m) => m.into(),
        Common::Ping(m) => m.into(),
        Common::Pong(m) => m.into(),
        Common::Goodbye(m) => m.into(),
    }
}
