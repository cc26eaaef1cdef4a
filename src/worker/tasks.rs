//! What a worker can run: the built-in kinds, `exec`, and handlers a program
//! registers through [`super::WorkerBuilder::handler`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::Payload;

/// What a handler gets: the task's input and which attempt this is.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// The task's id.
    pub task_id: u64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The task's payload.
    pub payload: Payload,
}

/// A handler's answer: the output, or why it failed.
pub type TaskOutput = Result<Payload, TaskError>;

/// Why an attempt failed, and whether another attempt could do better.
///
/// Any `Display` value converts into a retryable error, so a handler can
/// return `Err("reason")` or use `?` on its own errors; an input that no
/// attempt can run (a payload its kind cannot read) is
/// [`TaskError::rejected`], and the master then reports the task failed at
/// once instead of spending its retries and their back-off on it. It has
/// no `Display` of its own, which is what lets every `Display` type convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    reason: String,
    retry: bool,
}

impl TaskError {
    /// A failure that cannot succeed on any attempt: not retried.
    pub fn rejected(reason: impl std::fmt::Display) -> TaskError {
        TaskError {
            reason: reason.to_string(),
            retry: false,
        }
    }

    /// Why it failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether another attempt may succeed (true unless rejected).
    pub fn retryable(&self) -> bool {
        self.retry
    }

    pub(crate) fn into_reason(self) -> String {
        self.reason
    }
}

impl<E: std::fmt::Display> From<E> for TaskError {
    fn from(e: E) -> TaskError {
        TaskError {
            reason: e.to_string(),
            retry: true,
        }
    }
}

/// A boxed handler future.
pub type BoxTask = Pin<Box<dyn Future<Output = TaskOutput> + Send>>;

/// How a kind runs.
#[derive(Clone)]
pub enum Handler {
    /// Instant work done on the session task itself, with no task spawned:
    /// the no-op path costs no allocation or wake-up.
    Inline(fn(&TaskInput) -> TaskOutput),
    /// Work in its own task, under the worker's slots and the task's timeout.
    Spawn(Arc<dyn Fn(TaskInput) -> BoxTask + Send + Sync>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Inline(_) => f.write_str("Handler::Inline"),
            Handler::Spawn(_) => f.write_str("Handler::Spawn"),
        }
    }
}

/// A built-in kind's numeric argument; anything else is rejected, since
/// every attempt would read the same payload.
fn text_arg(input: &TaskInput, kind: &str, what: &str) -> Result<u64, TaskError> {
    let text = input.payload.as_text().unwrap_or("").trim();
    text.parse::<u64>()
        .map_err(|_| TaskError::rejected(format!("{kind}: payload {text:?} is not {what}")))
}

fn noop(_: &TaskInput) -> TaskOutput {
    Ok(Payload::empty())
}

fn echo(input: &TaskInput) -> TaskOutput {
    Ok(input.payload.clone())
}

fn fail(input: &TaskInput) -> TaskOutput {
    match input.payload.as_text().map(str::trim) {
        Some(t) if !t.is_empty() => Err(t.into()),
        _ => Err("failed on purpose (kind fail)".into()),
    }
}

fn flaky(input: &TaskInput) -> TaskOutput {
    let n = text_arg(input, "flaky", "a number of attempts to fail")?;
    if u64::from(input.attempt) <= n {
        Err(format!(
            "flaky: attempt {} of the first {n} fails on purpose",
            input.attempt
        )
        .into())
    } else {
        Ok(Payload::from(format!("ok on attempt {}", input.attempt)))
    }
}

fn spawned<F, Fut>(f: F) -> Handler
where
    F: Fn(TaskInput) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutput> + Send + 'static,
{
    Handler::Spawn(Arc::new(move |input| Box::pin(f(input))))
}

/// Longest a `spin` task keeps its thread without a yield.
const SPIN_SLICE: Duration = Duration::from_millis(1);

/// The built-in kinds, for tests, demos and benchmarks:
/// - `noop`: nothing; `echo`: returns its payload;
/// - `fail [REASON]`: fails with REASON;
/// - `flaky N`: fails its first N attempts, then succeeds;
/// - `sleep MS`: waits MS milliseconds; `spin US`: keeps a core busy US µs;
/// - `stall N`: hangs (until killed by its timeout) on its first N attempts.
pub fn builtins() -> HashMap<String, Handler> {
    let mut h = HashMap::new();
    h.insert("noop".into(), Handler::Inline(noop));
    h.insert("echo".into(), Handler::Inline(echo));
    h.insert("fail".into(), Handler::Inline(fail));
    h.insert("flaky".into(), Handler::Inline(flaky));
    h.insert(
        "sleep".into(),
        spawned(|input: TaskInput| async move {
            let ms = text_arg(&input, "sleep", "a number of milliseconds")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Payload::empty())
        }),
    );
    h.insert(
        "spin".into(),
        spawned(|input: TaskInput| async move {
            let us = text_arg(&input, "spin", "a number of microseconds")?;
            let until = Instant::now() + Duration::from_micros(us);
            // In slices, each followed by a yield: a cancel or a timeout
            // (which abort the task at its next await) stops it within one.
            loop {
                let slice_end = until.min(Instant::now() + SPIN_SLICE);
                while Instant::now() < slice_end {
                    std::hint::spin_loop();
                }
                if slice_end >= until {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Ok(Payload::empty())
        }),
    );
    h.insert(
        "stall".into(),
        spawned(|input: TaskInput| async move {
            let n = text_arg(&input, "stall", "a number of attempts to hang")?;
            if u64::from(input.attempt) <= n {
                std::future::pending::<()>().await;
            }
            Ok(Payload::from(format!("ok on attempt {}", input.attempt)))
        }),
    );
    h
}

/// Most bytes of stdout (and of stderr) an `exec` task keeps.
pub const EXEC_OUTPUT_BYTES_MAX: usize = 1024 * 1024;

/// How much of a failed program's stderr goes into the failure reason.
pub const EXEC_REASON_TAIL_CHARS: usize = 500;

/// The end of stderr kept past [`EXEC_OUTPUT_BYTES_MAX`] for the failure
/// reason: a program's last words (its error) come after its noise.
const EXEC_TAIL_BYTES: usize = 4 * EXEC_REASON_TAIL_CHARS;

/// A successful `exec` task's output (JSON): the exit code, and stdout and
/// stderr as JSON strings when they are UTF-8 text, else as
/// `{"base64": "..."}`, each kept up to [`EXEC_OUTPUT_BYTES_MAX`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Always 0 here: a non-zero exit fails the attempt instead.
    pub exit_code: i32,
    /// What the program wrote to stdout.
    pub stdout: Payload,
    /// What it wrote to stderr.
    pub stderr: Payload,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
}

/// An `exec` task's payload (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// The `exec` handler: runs a program in its own process group, captures
/// stdout and stderr up to [`EXEC_OUTPUT_BYTES_MAX`], and kills the whole
/// group when the attempt ends for any reason (done, timed out, cancelled,
/// worker shutting down). The child also gets SIGKILL if the worker dies.
pub fn exec_handler() -> Handler {
    spawned(|input: TaskInput| async move { exec(input).await })
}

/// Kills a process group when dropped, then gives its reaper slot back.
struct GroupKill {
    pgid: i32,
    _slot: Option<super::reaper::Slot>,
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        // SAFETY: killpg has no memory effects; a group that is already gone
        // yields ESRCH, which is fine.
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
        // `_slot` is cleared after the kill: fields drop after this body.
    }
}

/// What was read from a program's output: its first
/// [`EXEC_OUTPUT_BYTES_MAX`] bytes, whether there was more, and, when there
/// was, its last [`EXEC_TAIL_BYTES`] or so.
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
    tail: Vec<u8>,
}

impl Captured {
    /// The output's last bytes, for a failure reason.
    fn end(&self) -> &[u8] {
        if self.truncated {
            &self.tail
        } else {
            &self.kept
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(mut r: R) -> Captured {
    let mut c = Captured {
        kept: Vec::new(),
        truncated: false,
        tail: Vec::new(),
    };
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_BYTES_MAX - c.kept.len();
                c.kept.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    c.truncated = true;
                    c.tail.extend_from_slice(&buf[room..n]);
                    if c.tail.len() > 2 * EXEC_TAIL_BYTES {
                        c.tail.drain(..c.tail.len() - EXEC_TAIL_BYTES);
                    }
                }
            }
        }
    }
    c
}

async fn exec(input: TaskInput) -> TaskOutput {
    let spec: ExecSpec = serde_json::from_slice(&input.payload).map_err(|e| {
        TaskError::rejected(format!(
            "exec: payload must be JSON {{\"argv\": [...], \"env\": {{}}, \"cwd\": \"...\"}}: {e}"
        ))
    })?;
    let Some(program) = spec.argv.first() else {
        return Err(TaskError::rejected("exec: argv is empty"));
    };
    if spec.cwd.as_deref() == Some("") {
        return Err(TaskError::rejected("exec: cwd is empty"));
    }
    let reaper = super::reaper::get();
    let slot = match reaper {
        Some(r) => Some(r.reserve().ok_or_else(|| {
            format!(
                "exec: {} programs already running on this worker (the most its reaper guards)",
                super::reaper::GROUPS_MAX
            )
        })?),
        None => None,
    };
    let started = super::spawn::spawn(&super::spawn::Program {
        argv: &spec.argv,
        env: &spec.env,
        task_env: [
            ("RUNNER_TASK_ID", input.task_id.to_string()),
            ("RUNNER_ATTEMPT", input.attempt.to_string()),
        ],
        cwd: spec.cwd.as_deref(),
        // No reaper (a worker embedded in another program): ask the kernel
        // to kill the program when the worker thread that started it dies.
        die_with_parent: reaper.is_none(),
        register: slot.as_ref().map(|s| s.cell()),
    })
    .map_err(|e| {
        let why = format!("exec: cannot start {program:?}: {e}");
        // Input no attempt could start (a NUL byte, an `=` in a variable's
        // name, an empty program name): not retried.
        if e.kind() == std::io::ErrorKind::InvalidInput {
            TaskError::rejected(why)
        } else {
            TaskError::from(why)
        }
    })?;
    let super::spawn::Started {
        mut child,
        stdout,
        stderr,
    } = started;
    // On every early way out, dropped before `child` (declared after it):
    // the group is killed, then the program itself killed and reaped.
    let group = GroupKill {
        pgid: child.id(),
        _slot: slot,
    };
    let (out, err, exited) = tokio::join!(read_capped(stdout), read_capped(stderr), child.exited());
    // Kill what is left of the group (children still running) and give the
    // slot back while the program, a zombie until reaped, still holds the
    // group's id: no other process can have been given it yet.
    drop(group);
    let status = exited
        .and_then(|()| child.reap())
        .map_err(|e| format!("exec: waiting for {program:?}: {e}"))?;
    if status.success() {
        let report = ExecOutput {
            exit_code: 0,
            stdout: Payload(Bytes::from(out.kept)),
            stderr: Payload(Bytes::from(err.kept)),
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
        };
        return serde_json::to_vec(&report)
            .map(Payload::from)
            .map_err(|e| format!("exec: cannot encode the output: {e}").into());
    }
    let tail = String::from_utf8_lossy(err.end());
    let tail = tail.trim();
    let tail: String = tail
        .chars()
        .rev()
        .take(EXEC_REASON_TAIL_CHARS)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let sep = if tail.is_empty() { "" } else { ": " };
    Err(TaskError::from(match status.code() {
        Some(code) => format!("{program} exited with status {code}{sep}{tail}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let sig = status.signal().unwrap_or(0);
            format!(
                "{program} was killed by signal {sig} ({}){sep}{tail}",
                signal_name(sig)
            )
        }
    }))
}

/// A signal's usual name, for failure reasons people read.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_exec(spec: serde_json::Value) -> TaskOutput {
        exec(TaskInput {
            task_id: 1,
            attempt: 1,
            payload: Payload::from(spec.to_string()),
        })
        .await
    }

    #[tokio::test]
    async fn a_failed_programs_reason_ends_with_its_last_words_past_the_capture_limit() {
        // 2 MiB of noise on stderr, then the error.
        let script =
            "head -c 2097152 /dev/zero | tr '\\0' n >&2; echo 'FATAL: the real reason' >&2; exit 4";
        let err = run_exec(serde_json::json!({ "argv": ["sh", "-c", script] }))
            .await
            .unwrap_err();
        assert!(err.retry, "a failed program may do better next time");
        assert!(
            err.reason.contains("exited with status 4")
                && err.reason.ends_with("FATAL: the real reason"),
            "{}",
            &err.reason[err.reason.len().saturating_sub(200)..]
        );
    }

    #[tokio::test]
    async fn exec_input_no_attempt_could_start_is_rejected_not_retried() {
        for spec in [
            serde_json::json!({ "argv": ["env"], "env": { "A=B": "c" } }),
            serde_json::json!({ "argv": ["echo", "a\u{0}b"] }),
            serde_json::json!({ "argv": [""] }),
            serde_json::json!({ "argv": ["echo"], "cwd": "" }),
        ] {
            let err = run_exec(spec.clone()).await.unwrap_err();
            assert!(!err.retry, "{spec}: {}", err.reason);
        }
    }
}
