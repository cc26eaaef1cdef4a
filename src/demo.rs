//! `runner demo`: a master and N workers as real processes of this binary,
//! a mixed set of tasks through the client library, each step printed as it
//! happens, a summary, and a clean stop in which the workers terminate
//! themselves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::client::{Client, ClientOptions};
use crate::proto::{NewTask, Payload, TaskResult, TaskStatus, Text, Wire};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Worker processes.
    pub workers: u32,
    /// Tasks in the mix.
    pub tasks: u32,
    /// Wire for every connection.
    pub wire: Wire,
    /// Where the nodes log.
    pub log_dir: PathBuf,
    /// The cluster's secret, for the demo's client.
    pub secret: Option<crate::proto::handshake::Secret>,
    /// The file it came from, passed on to the nodes (a secret from
    /// `RUNNER_SECRET` reaches them through the environment).
    pub secret_file: Option<PathBuf>,
    /// The master's first port.
    pub port: u16,
    /// The workers' range, which the master scans.
    pub worker_ports: crate::net::PortRange,
}

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// The cluster misbehaved.
    #[error("{0}")]
    Failed(String),
}

/// How long the demo waits for any one step before giving up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The workers' master-timeout: short, so that they are seen terminating.
const DEMO_MASTER_TIMEOUT: &str = "2s";

struct Clock(Instant);

impl Clock {
    fn say(&self, line: impl std::fmt::Display) {
        crate::outln!("[{:>6.2}s] {line}", self.0.elapsed().as_secs_f64());
    }
}

struct Node {
    name: String,
    child: Child,
}

fn spawn_node(
    name: &str,
    args: &[String],
    lines: &mpsc::UnboundedSender<(String, String)>,
) -> Result<Node, DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Spawn {
        what: name.into(),
        source,
    })?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: name.into(),
            source,
        })?;
    if let Some(out) = child.stdout.take() {
        let (tx, name) = (lines.clone(), name.to_string());
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let _ = tx.send((name.clone(), line));
            }
        });
    }
    Ok(Node {
        name: name.into(),
        child,
    })
}

async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<(String, String)>,
    clock: &Clock,
    what: &str,
    mut pick: impl FnMut(&str, &str) -> bool,
) -> Result<(String, String), DemoError> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some((node, line))) => {
                clock.say(format_args!("{node}: {line}"));
                if pick(&node, &line) {
                    return Ok((node, line));
                }
            }
            Ok(None) => {
                return Err(DemoError::Failed(format!(
                    "every node exited while waiting for {what}"
                )))
            }
            Err(_) => {
                return Err(DemoError::Timeout(format!(
                    "no {what} within {STEP_TIMEOUT:?}"
                )))
            }
        }
    }
}

fn task(kind: &'static str, payload: &str, priority: u8, retries: u8, timeout_ms: u32) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: Payload::from(payload.to_string()),
        priority,
        retries,
        timeout_ms,
    }
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<ExitCode, String> {
    run_demo(opts).await.map_err(|e| e.to_string())
}

async fn run_demo(opts: DemoOptions) -> Result<ExitCode, DemoError> {
    if !(1..=50).contains(&opts.workers) {
        return Err(DemoError::Usage(format!(
            "--workers {} must be from 1 to 50",
            opts.workers
        )));
    }
    if !(20..=100_000).contains(&opts.tasks) {
        return Err(DemoError::Usage(format!(
            "--tasks {} must be from 20 to 100000",
            opts.tasks
        )));
    }
    let clock = Clock(Instant::now());
    let wire = opts.wire.to_string();
    let logs = opts.log_dir.display().to_string();
    let worker_ports = format!("{}-{}", opts.worker_ports.first, opts.worker_ports.last);
    let secret_args: Vec<String> = match &opts.secret_file {
        Some(f) => vec!["--secret-file".into(), f.display().to_string()],
        None => Vec::new(),
    };
    crate::outln!(
        "runner demo: a master and {} workers as separate processes, {} tasks, {} wire; logs in {}/",
        opts.workers, opts.tasks, wire, logs
    );
    let (tx, mut lines) = mpsc::unbounded_channel();

    // 1. The master takes the first free port from --port (4999).
    let master_args: Vec<String> = [
        "master",
        "--quiet",
        "--log-dir",
        &logs,
        "--wire",
        &wire,
        "--port",
        &opts.port.to_string(),
        "--scan",
        &worker_ports,
        "--scan-interval",
        "250ms",
        "--heartbeat",
        "200ms",
        "--worker-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(secret_args.iter().cloned())
    .collect();
    let mut master = spawn_node("master", &master_args, &tx)?;
    let (_, line) = expect_line(&mut lines, &clock, "master address", |n, l| {
        n == "master" && l.starts_with("master listening on ")
    })
    .await?;
    let addr: SocketAddr = line
        .trim_start_matches("master listening on ")
        .parse()
        .map_err(|_| {
            DemoError::Failed(format!("cannot read the master's address from {line:?}"))
        })?;

    // 2. Each worker takes the first free port of --worker-ports (5000-5100).
    let mut workers = Vec::new();
    for i in 1..=opts.workers {
        let id = format!("worker-{i}");
        let args: Vec<String> = [
            "worker",
            "--quiet",
            "--id",
            &id,
            "--log-dir",
            &logs,
            "--wire",
            &wire,
            "--slots",
            "2",
            "--heartbeat",
            "200ms",
            "--master-timeout",
            DEMO_MASTER_TIMEOUT,
            "--port-range",
            &worker_ports,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(secret_args.iter().cloned())
        .collect();
        workers.push(spawn_node(&id, &args, &tx)?);
    }
    let mut listening = 0;
    while listening < opts.workers {
        expect_line(&mut lines, &clock, "worker address", |_, l| {
            l.contains(" listening on ")
        })
        .await?;
        listening += 1;
    }

    // 3. The master finds them by scanning, and they register.
    let client_opts = ClientOptions {
        wire: opts.wire,
        name: "demo".into(),
        secret: opts.secret.clone(),
        ..ClientOptions::default()
    };
    let mut client = Client::connect(addr, client_opts)
        .await
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while seen.len() < opts.workers as usize {
        let s = client
            .status(false)
            .await
            .map_err(|e| DemoError::Failed(e.to_string()))?;
        for w in s.workers {
            if !seen.iter().any(|x| x == w.id.as_str()) {
                clock.say(format_args!(
                    "master discovered and registered {} at {} ({} slots)",
                    w.id, w.addr, w.slots
                ));
                seen.push(w.id.to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "only {} of {} workers registered within {STEP_TIMEOUT:?}",
                seen.len(),
                opts.workers
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. A mixed set of tasks.
    let n = opts.tasks as usize;
    let low_n = n / 2;
    let high_n = n / 5;
    let flaky_n = (n / 10).max(1);
    let noop_n = n - low_n - high_n - flaky_n - 2;
    let mut kinds: HashMap<u64, &'static str> = HashMap::new();
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let low: Vec<NewTask> = (0..low_n).map(|_| task("sleep", "300", 10, 3, 0)).collect();
    let ids = client
        .submit_batch(low)
        .await
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let now = Instant::now();
    for id in ids.clone() {
        kinds.insert(id, "low");
        sent_at.insert(id, now);
    }
    clock.say(format_args!(
        "submitted {low_n} low-priority tasks (sleep 300 ms, priority 10): more than the slots, so most wait in the queue"
    ));
    let mut mix = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..high_n {
        mix.push(task("sleep", "100", 250, 3, 0));
        labels.push("high");
    }
    for _ in 0..flaky_n {
        mix.push(task("flaky", "1", 128, 3, 0));
        labels.push("flaky");
    }
    for _ in 0..noop_n {
        mix.push(task("noop", "", 128, 3, 0));
        labels.push("noop");
    }
    mix.push(task("stall", "1", 200, 2, 1000));
    labels.push("stall");
    mix.push(task("fail", "disk full (simulated)", 128, 2, 0));
    labels.push("fail");
    let ids = client
        .submit_batch(mix)
        .await
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let now = Instant::now();
    for (id, label) in ids.zip(labels) {
        kinds.insert(id, label);
        sent_at.insert(id, now);
    }
    clock.say(format_args!(
        "submitted {high_n} high-priority tasks (sleep 100 ms, priority 250): they overtake the queued low ones"
    ));
    clock.say(format_args!(
        "submitted {flaky_n} flaky tasks (fail their first attempt, then succeed), {noop_n} no-ops, \
         1 task that hangs on its first attempt (timeout 1 s), 1 that always fails (2 retries)"
    ));

    // 5. Results as they arrive.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let mut results: Vec<(TaskResult, &'static str)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while results.len() < n {
        let r = match tokio::time::timeout_at(deadline, client.next_result()).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(DemoError::Failed(format!(
                    "the master closed the connection: {}",
                    client.close_reason().unwrap_or_default()
                )))
            }
            Err(_) => {
                return Err(DemoError::Timeout(format!(
                    "{} of {n} results after 60 s",
                    results.len()
                )))
            }
        };
        while let Ok((node, line)) = lines.try_recv() {
            clock.say(format_args!("{node}: {line}"));
        }
        let kind = kinds.get(&r.id).copied().unwrap_or("?");
        if let Some(t) = sent_at.get(&r.id) {
            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
        }
        describe(&clock, &r, kind);
        results.push((r, kind));
    }

    // 6. The summary.
    let status = client
        .status(false)
        .await
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    let done = results
        .iter()
        .filter(|(r, _)| r.status == TaskStatus::Ok)
        .count();
    let failed = results.len() - done;
    let retried: usize = results.iter().map(|(r, _)| r.errors.len()).sum();
    let last_high = results.iter().rposition(|(_, k)| *k == "high");
    let low_after = last_high.map_or(0, |i| {
        results[i + 1..].iter().filter(|(_, k)| *k == "low").count()
    });
    crate::outln!();
    crate::outln!("summary");
    crate::outln!("  tasks:     {done} done, {failed} failed; {retried} failed attempts (retried while retries remained)");
    crate::outln!(
        "  priority:  all {high_n} high-priority tasks finished while {low_after} of {low_n} low-priority tasks (submitted first) were still waiting or running"
    );
    let worker_line: String = status
        .workers
        .iter()
        .map(|w| format!(" {} ran {} ok / {} failed;", w.id, w.done, w.failed))
        .collect();
    crate::outln!("  workers:  {worker_line}");
    crate::outln!(
        "  latency:   submit to result p50 {:.1} ms, p99 {:.1} ms (over {} tasks)",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.len()
    );
    crate::outln!();
    client.shutdown().await;

    // 7. Stop the master; the workers, left without one, terminate themselves.
    clock.say("stopping the master (SIGINT)");
    signal(&master.child, libc::SIGINT);
    let code = wait_exit(&mut master, &mut lines, &clock).await?;
    clock.say(format_args!("master exited ({code})"));
    clock.say(format_args!(
        "the workers now have no master; each terminates itself after its master-timeout ({DEMO_MASTER_TIMEOUT}), with exit status 3"
    ));
    for w in &mut workers {
        let code = wait_exit(w, &mut lines, &clock).await?;
        clock.say(format_args!("{} exited ({code})", w.name));
    }
    while let Ok((node, line)) = lines.try_recv() {
        clock.say(format_args!("{node}: {line}"));
    }
    crate::outln!("logs: {logs}/master.log, {logs}/worker-1.log, ...");
    Ok(ExitCode::SUCCESS)
}

fn describe(clock: &Clock, r: &TaskResult, kind: &str) {
    let what = match kind {
        "low" => "low-priority sleep",
        "high" => "high-priority sleep",
        "flaky" => "flaky",
        "noop" => "no-op",
        "stall" => "hang-once",
        "fail" => "always-failing",
        _ => "task",
    };
    match r.status {
        TaskStatus::Ok if r.errors.is_empty() => {
            clock.say(format_args!("task {} ({what}) ok on {}", r.id, r.worker));
        }
        TaskStatus::Ok => {
            clock.say(format_args!(
                "task {} ({what}) ok on {} after {} attempts; retried after:",
                r.id, r.worker, r.attempts
            ));
            for e in &r.errors {
                crate::outln!(
                    "            attempt {} on {}: {}",
                    e.attempt,
                    e.worker,
                    e.reason
                );
            }
        }
        _ => {
            clock.say(format_args!(
                "task {} ({what}) {} after {} attempts, each attempt's reason:",
                r.id,
                if r.status == TaskStatus::Failed {
                    "FAILED"
                } else {
                    "CANCELLED"
                },
                r.attempts
            ));
            for e in &r.errors {
                crate::outln!(
                    "            attempt {} on {}: {}",
                    e.attempt,
                    e.worker,
                    e.reason
                );
            }
        }
    }
}

fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

async fn wait_exit(
    node: &mut Node,
    lines: &mut mpsc::UnboundedReceiver<(String, String)>,
    clock: &Clock,
) -> Result<String, DemoError> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        tokio::select! {
            status = node.child.wait() => {
                // Let its last stdout lines through.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok((n, line)) = lines.try_recv() {
                    clock.say(format_args!("{n}: {line}"));
                }
                return Ok(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                });
            }
            Some((n, line)) = lines.recv() => clock.say(format_args!("{n}: {line}")),
            _ = tokio::time::sleep_until(deadline) => {
                let _ = node.child.kill().await;
                return Err(DemoError::Timeout(format!("{} did not exit within {STEP_TIMEOUT:?}; killed it", node.name)));
            }
        }
    }
}
