//! Real-process cluster tests: spawn the built `runner` binary, read its
//! stdout lines as events, wait on them (or on status, or on exit) with
//! deadlines. Every process is killed when its handle drops.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use runner::client::{Client, ClientOptions};
use runner::proto::{TaskResult, Wire};

/// Runs a scenario `async fn NAME(wire: Wire)` as two tests, `NAME::bincode`
/// and `NAME::json` (with `#[macro_use] mod support;`).
#[allow(unused_macros)]
macro_rules! both_wires {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn bincode() {
                super::$name(runner::proto::Wire::Bincode).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn json() {
                super::$name(runner::proto::Wire::Json).await
            }
        }
    };
}

pub const BIN: &str = env!("CARGO_BIN_EXE_runner");

/// Exit status of a worker that terminated itself for want of a master.
pub const MASTER_TIMEOUT_EXIT: i32 = 3;

/// A block of ports of its own for each cluster in this test binary, so tests
/// running in parallel never scan each other's workers. Each test binary
/// starts from its own base (set by `PORT_BASE` in the test file).
static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);
pub const BLOCK: u16 = 40;

pub fn port_block(base: u16) -> u16 {
    base + NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) * BLOCK
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::start(name, Command::new(BIN).args(args))
    }

    /// Runs the binary inside network namespace `ns` (`ip netns exec`
    /// execs it, so the pid is the binary's own).
    pub fn spawn_in(ns: &str, name: &str, args: &[&str]) -> Proc {
        Proc::spawn_under(&["ip", "netns", "exec", ns], name, args)
    }

    /// Runs the binary under a command that execs it (`wrapper BIN args`).
    pub fn spawn_under(wrapper: &[&str], name: &str, args: &[&str]) -> Proc {
        Proc::start(
            name,
            Command::new(wrapper[0])
                .args(&wrapper[1..])
                .arg(BIN)
                .args(args),
        )
    }

    fn start(name: &str, cmd: &mut Command) -> Proc {
        // A process group of its own, so that a test can signal the group
        // as a terminal would (see `signal_group`); and the hang-up signal's
        // default action, which a test run under `nohup` would otherwise pass
        // on as ignored (the node would then rightly outlive a hang-up).
        // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook needs.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Proc {
            name: name.into(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line (stdout, or stderr prefixed "stderr: ") matching `pred`.
    pub fn wait_line(&mut self, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no matching line within {deadline:?}; saw: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(l);
                }
                return s;
            }
            if Instant::now() > end {
                panic!(
                    "{} still running after {deadline:?}; saw: {:#?}",
                    self.name, self.seen
                );
            }
            // Polling a child's exit has no event to wait on; this is a poll
            // interval under a deadline, not a guess at timing.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Signals the process's whole group, as a terminal's hang-up or a
    /// `kill -- -PGID` does.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: killpg(2) on the group our own child leads.
        unsafe {
            libc::killpg(self.child.id() as i32, sig);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wire_name(w: Wire) -> &'static str {
    w.as_str()
}

/// A master and its workers, each in its own port block.
pub struct Cluster {
    pub master: Proc,
    pub addr: SocketAddr,
    pub workers: Vec<Proc>,
    pub first_port: u16,
    pub wire: Wire,
    pub master_timeout: String,
    pub logs: tempfile::TempDir,
}

pub struct Opts<'a> {
    pub workers: usize,
    pub slots: u32,
    pub wire: Wire,
    pub master_args: &'a [&'a str],
    pub worker_args: &'a [&'a str],
    pub master_timeout: &'a str,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            workers: 2,
            slots: 2,
            wire: Wire::Bincode,
            master_args: &[],
            worker_args: &[],
            master_timeout: "5s",
        }
    }
}

impl Cluster {
    pub fn worker_range(&self) -> String {
        format!("{}-{}", self.first_port + 1, self.first_port + BLOCK - 1)
    }

    pub fn start(base: u16, o: Opts) -> Cluster {
        let first_port = port_block(base);
        let logs = tempfile::tempdir().unwrap();
        let args = master_args(
            first_port,
            logs.path().to_str().unwrap(),
            o.wire,
            o.master_args,
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut master = Proc::spawn("master", &args);
        let line = master.wait_line(Duration::from_secs(10), |l| {
            l.starts_with("master listening on ")
        });
        let addr: SocketAddr = line
            .trim_start_matches("master listening on ")
            .parse()
            .unwrap();
        let mut c = Cluster {
            master,
            addr,
            workers: Vec::new(),
            first_port,
            wire: o.wire,
            master_timeout: o.master_timeout.to_string(),
            logs,
        };
        for i in 1..=o.workers {
            c.add_worker(&format!("w{i}"), o.slots, o.worker_args);
        }
        c
    }

    /// Starts a cluster and waits until every worker has registered; returns
    /// it with a connected client.
    pub async fn ready(base: u16, o: Opts<'_>) -> (Cluster, Client) {
        let n = o.workers;
        let c = Cluster::start(base, o);
        let client = c.client().await;
        c.wait_workers(&client, n).await;
        (c, client)
    }

    /// The master's command line for this cluster's ports, plus `extra`.
    pub fn master_args(&self, extra: &[&str]) -> Vec<String> {
        master_args(
            self.first_port,
            self.logs.path().to_str().unwrap(),
            self.wire,
            extra,
        )
    }

    /// Starts the master again with `args` (its command line: same port,
    /// same journal) and waits until it listens.
    pub fn restart_master(&mut self, args: &[String]) {
        self.restart_master_under(&[], args)
    }

    /// Restarts the master under `wrapper` (a command that execs it, such
    /// as strace), or as itself when `wrapper` is empty.
    pub fn restart_master_under(&mut self, wrapper: &[&str], args: &[String]) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut m = if wrapper.is_empty() {
                Proc::spawn("master", &args)
            } else {
                Proc::spawn_under(wrapper, "master", &args)
            };
            let line = m.wait_line(Duration::from_secs(10), |l| {
                l.starts_with("master listening on ") || l.contains("runner:")
            });
            if line.starts_with("master listening on ") {
                let addr: SocketAddr = line
                    .trim_start_matches("master listening on ")
                    .parse()
                    .unwrap();
                assert_eq!(addr, self.addr, "the restarted master took its old port");
                self.master = m;
                return;
            }
            // The old process may still hold the journal's lock for a moment.
            assert!(
                Instant::now() < deadline && line.contains("in use"),
                "restart failed: {line}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn add_worker(&mut self, id: &str, slots: u32, extra: &[&str]) {
        let range = self.worker_range();
        let slots = slots.to_string();
        let log_dir = self.logs.path().to_str().unwrap().to_string();
        let master_timeout = self.master_timeout.clone();
        let mut args = vec![
            "worker",
            "--quiet",
            "--log-dir",
            &log_dir,
            "--id",
            id,
            "--port-range",
            &range,
            "--slots",
            &slots,
            "--heartbeat",
            "200ms",
            "--master-timeout",
            &master_timeout,
            "--wire",
            wire_name(self.wire),
        ];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(id, &args);
        p.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
        self.workers.push(p);
    }

    pub fn worker(&mut self, id: &str) -> &mut Proc {
        self.workers.iter_mut().find(|w| w.name == id).unwrap()
    }

    pub async fn client(&self) -> Client {
        Client::connect(
            self.addr,
            ClientOptions {
                wire: self.wire,
                ..ClientOptions::default()
            },
        )
        .await
        .expect("client connects")
    }

    /// Waits until the master's status satisfies `pred` (its workers, for
    /// instance); returns that status.
    pub async fn wait_status(
        &self,
        client: &Client,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&runner::proto::StatusReport) -> bool,
    ) -> runner::proto::StatusReport {
        let end = Instant::now() + deadline;
        loop {
            let s = client.status(false).await.expect("status");
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {deadline:?}; last status {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until worker `id` holds at least one attempt.
    pub async fn wait_busy(&self, client: &Client, id: &str) {
        self.wait_status(client, Duration::from_secs(10), "worker busy", |s| {
            s.workers
                .iter()
                .any(|w| w.id.as_str() == id && w.in_flight > 0)
        })
        .await;
    }

    pub async fn wait_workers(&self, client: &Client, n: usize) {
        self.wait_status(client, Duration::from_secs(10), "workers registered", |s| {
            s.workers.len() == n
        })
        .await;
    }

    pub fn master_log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("master.log")).unwrap_or_default()
    }

    /// What worker `id` has logged so far.
    pub fn worker_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{id}.log"))).unwrap_or_default()
    }
}

fn master_args(first_port: u16, log_dir: &str, wire: Wire, extra: &[&str]) -> Vec<String> {
    let scan = format!("{}-{}", first_port + 1, first_port + BLOCK - 1);
    master_args_on(first_port, &scan, log_dir, wire, extra)
}

/// A test master's command line: listening on `port`, scanning `scan`,
/// with the short heartbeat and timeouts of every cluster here.
pub fn master_args_on(
    port: u16,
    scan: &str,
    log_dir: &str,
    wire: Wire,
    extra: &[&str],
) -> Vec<String> {
    let port = port.to_string();
    let mut args: Vec<String> = [
        "master",
        "--quiet",
        "--log-dir",
        log_dir,
        "--port",
        &port,
        "--scan",
        scan,
        "--scan-interval",
        "200ms",
        "--heartbeat",
        "200ms",
        "--worker-timeout",
        "1s",
        "--wire",
        wire_name(wire),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Waits (at most `deadline`) until `read()` (a log, say) contains `needle`.
pub async fn wait_for_text(read: impl Fn() -> String, needle: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    while !read().contains(needle) {
        assert!(
            Instant::now() < end,
            "no {needle:?} within {deadline:?} in:\n{}",
            read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` is dead: gone, or a zombie waiting to be reaped.
/// The scheduling policy of each thread of `pid`, by thread name
/// (`/proc/PID/task/*/stat`, field 41).
pub fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the command name, which may hold spaces, start at 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        out.push((comm.trim().to_string(), policy));
    }
    out
}

pub fn process_dead(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("gone");
    matches!(state, "gone" | "Z" | "X")
}

/// Waits until every process of `pids` is dead; panics at the deadline.
pub async fn wait_dead(pids: &[i32], deadline: Duration, what: &str) {
    let end = Instant::now() + deadline;
    while !pids.iter().all(|p| process_dead(*p)) {
        assert!(
            Instant::now() < end,
            "{what}: processes {pids:?} still alive after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `n` results; panics on a duplicate or a missing one.
pub async fn collect(
    client: &mut Client,
    n: usize,
    deadline: Duration,
) -> HashMap<u64, TaskResult> {
    let mut got: HashMap<u64, TaskResult> = HashMap::new();
    let end = tokio::time::Instant::now() + deadline;
    while got.len() < n {
        let r = tokio::time::timeout_at(end, client.next_result())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} results within {deadline:?}", got.len()))
            .expect("connection open");
        let id = r.id;
        assert!(
            got.insert(id, r).is_none(),
            "duplicate result for task {id}"
        );
    }
    got
}

/// Submits `sh -c SCRIPT` as an exec task, SCRIPT made from the path of a
/// file in which it writes `n` pids, and waits until it has written them;
/// returns the task's id and the pids.
pub async fn exec_writing_pids(
    client: &runner::client::Client,
    n: usize,
    script: impl FnOnce(&str) -> String,
) -> (u64, Vec<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let script = script(pidfile.to_str().unwrap());
    let spec = serde_json::json!({ "argv": ["sh", "-c", script] }).to_string();
    let id = client
        .submit(runner::proto::NewTask {
            kind: runner::proto::Text::from_static("exec"),
            payload: runner::proto::Payload::from(spec),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if pids.len() == n {
                return (id, pids);
            }
        }
        assert!(Instant::now() < end, "the task did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
