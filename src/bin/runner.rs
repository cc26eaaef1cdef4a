//! `runner`: the command line. Parses arguments, sets up logging, and calls
//! the library; `runner` alone runs the demo cluster.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use runner::client::{Client, ClientOptions};
use runner::master::{Master, MasterConfig};
use runner::net::{parse_duration, parse_period, PortRange};
use runner::proto::handshake::Secret;
use runner::proto::{NewTask, Payload, TaskResult, TaskStatus, Text, Wire};
use runner::worker::{Worker, WorkerConfig, WorkerExit};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// runner: a distributed task runner. A master accepts tasks from clients and
/// runs them on workers, over TCP, on one machine or many.
///
/// Run `runner` alone (or `runner demo`) to watch a master and three workers
/// discover each other and run a mixed set of tasks.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a master and 3 workers as processes, run a mixed set of tasks
    /// (priorities, failures, retries, a hung task), print a summary, stop.
    Demo(DemoArgs),
    /// Run a master: accept tasks from clients, find workers by scanning
    /// ports, dispatch, heartbeat, retry.
    Master(MasterArgs),
    /// Run a worker: listen on the first free port of its range (where the
    /// master's scan finds it), or dial a master; run tasks.
    Worker(WorkerArgs),
    /// Submit tasks and print their results as they arrive; exits non-zero if
    /// any task failed.
    Submit(SubmitArgs),
    /// Fetch the results of tasks by id (submitted earlier, e.g. with
    /// `submit --detach`, or before the master restarted on its journal);
    /// waits for unfinished ones; exits non-zero if any failed or is unknown.
    Results(ResultsArgs),
    /// Show the master's workers, queues and totals.
    Status(StatusArgs),
    /// Cancel tasks by id: queued ones never run, running ones are stopped
    /// (an exec task's processes killed); their results say cancelled.
    Cancel(CancelArgs),
}

/// Why a command failed: how it was asked (exit status 2, as for the
/// errors clap finds in the arguments), or what happened (1).
enum Failure {
    Usage(String),
    Run(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Run(e)
    }
}

/// Exit status of a command given arguments it cannot run with: clap's.
const USAGE_EXIT: u8 = 2;

/// Exit status of a client command stopped by Ctrl-C or SIGTERM, as a shell
/// reports a process ended by SIGINT.
const INTERRUPTED_EXIT: u8 = 130;

/// Exit status of a worker that terminated itself for want of a master: a
/// failure, so that a supervisor restarts it (`Restart=on-failure`) to wait
/// for the next master, where a worker that was told to stop exits 0.
const MASTER_TIMEOUT_EXIT: u8 = 3;

#[derive(Clone, Copy, ValueEnum)]
enum WireArg {
    Bincode,
    Json,
}

impl From<WireArg> for Wire {
    fn from(w: WireArg) -> Wire {
        match w {
            WireArg::Bincode => Wire::Bincode,
            WireArg::Json => Wire::Json,
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// Wire protocol for the connections this node opens (any listener
    /// accepts both).
    #[arg(long, value_enum, default_value = "bincode")]
    wire: WireArg,
    /// File holding the cluster's shared secret (at least 16 bytes; keep it
    /// mode 0600). Also read from the RUNNER_SECRET environment variable.
    /// Without one, nothing is authenticated.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Logging {
    /// Also write logs to DIR/<node>.log.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Do not log to stderr (logs still go to --log-dir).
    #[arg(long, hide = true)]
    quiet: bool,
}

#[derive(Args, Clone, Copy)]
struct Realtime {
    /// Run this node's threads under the kernel's real-time policy
    /// (SCHED_FIFO at the lowest priority), so that on a busy machine they
    /// do not wait behind other work for a core; programs that tasks start
    /// run under the normal policy. Needs root, CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO of at least 1.
    #[arg(long)]
    realtime: bool,
}

#[derive(Args)]
struct MasterArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    log: Logging,
    /// IP address to listen on (0.0.0.0 for every interface). Anything but
    /// loopback needs a secret (or --insecure).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// First port to try; while it is taken, the next ones are tried, up to
    /// 100 more (0 lets the system pick a free port).
    #[arg(long, default_value_t = runner::master::PORT_DEFAULT)]
    port: u16,
    /// Port ranges to scan for workers (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "5000-5100")]
    scan: Vec<PortRange>,
    /// Other hosts to scan, besides localhost (comma-separated names or IP
    /// addresses).
    #[arg(long, value_delimiter = ',', value_parser = parse_scan_host)]
    scan_hosts: Vec<String>,
    /// How often to scan.
    #[arg(long, value_parser = parse_period, default_value = "2s")]
    scan_interval: Duration,
    /// How often to ping each worker.
    #[arg(long, value_parser = parse_period, default_value = "1s")]
    heartbeat: Duration,
    /// Drop a worker not heard from for this long, and re-run its tasks.
    #[arg(long, value_parser = parse_period, default_value = "3s")]
    worker_timeout: Duration,
    /// Tasks kept in flight on a worker beyond its slots (hides the network
    /// round trip for short tasks; 0 keeps priorities strict).
    #[arg(long, default_value_t = 0)]
    prefetch: u32,
    /// When the last worker that runs a kind (say, the only one with
    /// --allow-exec) leaves, its tasks wait this long for another before
    /// they go to the other workers and fail there.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    kind_grace: Duration,
    /// Allow a non-loopback --bind without a secret.
    #[arg(long)]
    insecure: bool,
    /// Close a connection that has not completed the handshake (hello and
    /// proofs) within this long: a silent or trickling peer holds nothing
    /// for longer.
    #[arg(long, value_parser = parse_period, default_value = "15s")]
    handshake_timeout: Duration,
    /// Serve Prometheus metrics (counters, gauges, latency histograms) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464 or localhost:9464. Not
    /// authenticated: on another address than loopback anyone who can
    /// reach it reads worker names and task counts.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Journal every accepted task and every result to PATH before
    /// acknowledging it, and resume from PATH on start: unfinished tasks run
    /// again, unclaimed results wait for their clients.
    #[arg(long, value_name = "PATH")]
    journal: Option<PathBuf>,
    /// When a journaled record counts as stored: none (written to the OS;
    /// survives a master crash, not a machine crash), batch (also synced
    /// within 10 ms), fsync (synced before the acknowledgement; many records
    /// share one sync).
    #[arg(long, value_enum, default_value = "batch", requires = "journal")]
    durability: DurabilityArg,
    /// Compact the journal once it is this many bytes and twice its size
    /// after the last compaction, or once the tasks and results it holds
    /// have fallen to a quarter of those then (a drained backlog).
    #[arg(long, value_name = "BYTES", default_value_t = runner::journal::COMPACT_AT_BYTES_DEFAULT, requires = "journal",
          value_parser = parse_compact_at)]
    journal_compact_at: u64,
    #[command(flatten)]
    realtime: Realtime,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    None,
    Batch,
    Fsync,
}

impl From<DurabilityArg> for runner::journal::Durability {
    fn from(d: DurabilityArg) -> Self {
        use runner::journal::Durability as D;
        match d {
            DurabilityArg::None => D::None,
            DurabilityArg::Batch => D::Batch,
            DurabilityArg::Fsync => D::Fsync,
        }
    }
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    log: Logging,
    /// Node id, unique in the cluster (default: worker-<pid>).
    #[arg(long, value_parser = parse_node_id)]
    id: Option<String>,
    /// IP address to listen on (0.0.0.0 for every interface). Anything but
    /// loopback needs a secret (or --insecure).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Listen on the first free port of this range.
    #[arg(long, default_value = "5000-5100")]
    port_range: PortRange,
    /// Dial this master (HOST:PORT) rather than wait to be found. The worker
    /// still listens on its port range, but while its master is live it
    /// refuses any other master that finds it there.
    #[arg(long, value_parser = parse_master_addr)]
    master: Option<String>,
    /// Tasks run at once (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    slots: Option<u32>,
    /// Close a connection that has not completed the handshake (hello and
    /// proofs) within this long: a silent or trickling peer holds nothing
    /// for longer.
    #[arg(long, value_parser = parse_period, default_value = "15s")]
    handshake_timeout: Duration,
    /// Terminate (exit status 3) after this long without hearing from a
    /// master.
    #[arg(long, value_parser = parse_period, default_value = "30s")]
    master_timeout: Duration,
    /// How often to ping the master.
    #[arg(long, value_parser = parse_period, default_value = "1s")]
    heartbeat: Duration,
    /// Run `exec` tasks (programs given by clients). Off by default: only
    /// enable it in a cluster with a secret.
    #[arg(long)]
    allow_exec: bool,
    #[command(flatten)]
    realtime: Realtime,
    /// Allow a non-loopback --bind without a secret.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    common: Common,
    /// The master (HOST:PORT); default: found on this machine.
    #[arg(long, value_parser = parse_master_addr)]
    master: Option<String>,
    // Numbers and durations take values that start with '-' (and refuse
    // them with the range), instead of clap's "unexpected argument '-1'".
    /// 0-255, higher runs first.
    #[arg(long, default_value_t = runner::proto::PRIORITY_DEFAULT, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u8).range(0..=255))]
    priority: u8,
    /// Retries after a failed attempt (0-100).
    #[arg(long, default_value_t = runner::proto::RETRIES_DEFAULT, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u8).range(0..=i64::from(runner::limits::RETRIES_MAX)))]
    retries: u8,
    /// Kill an attempt after this long (e.g. 500ms, 3s, 1m; whole
    /// milliseconds, rounded up); none by default.
    #[arg(long, value_parser = parse_task_timeout, value_name = "DURATION", allow_hyphen_values = true)]
    timeout: Option<u32>,
    /// Submit this many copies.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Print each result as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Print the task ids and exit without waiting; fetch the results later
    /// with `runner results ID..`.
    #[arg(long)]
    detach: bool,
    /// If the master goes away (a crash, a restart), keep dialing it this
    /// long and then fetch every result still due.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    reconnect: Duration,
    /// The task: KIND [ARGS..]. Kinds: noop, echo TEXT, sleep MS, spin US,
    /// fail [REASON], flaky N, stall N, exec PROGRAM [ARGS..], or a custom
    /// kind (its ARGS joined by spaces become the payload).
    #[arg(last = true, required = true, value_name = "KIND [ARGS]")]
    task: Vec<String>,
}

#[derive(Args)]
struct ResultsArgs {
    #[command(flatten)]
    common: Common,
    /// The master (HOST:PORT); default: found on this machine.
    #[arg(long, value_parser = parse_master_addr)]
    master: Option<String>,
    /// Print each result as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// If the master goes away, keep dialing it this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    reconnect: Duration,
    /// Task ids, or ranges like 10-20 (or 10..=20, as `submit` prints them).
    #[arg(required = true, value_name = "ID", value_parser = parse_id_range)]
    ids: Vec<RangeInclusive<u64>>,
}

#[derive(Args)]
struct CancelArgs {
    #[command(flatten)]
    common: Common,
    /// The master (HOST:PORT); default: found on this machine.
    #[arg(long, value_parser = parse_master_addr)]
    master: Option<String>,
    /// Why, for the tasks' results (their submitter sees it).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = parse_reason)]
    reason: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Task ids, or ranges like 10-20 (or 10..=20, as `submit` prints them).
    #[arg(required = true, value_name = "ID", value_parser = parse_id_range)]
    ids: Vec<RangeInclusive<u64>>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// The master (HOST:PORT); default: found on this machine.
    #[arg(long, value_parser = parse_master_addr)]
    master: Option<String>,
    /// Print the master's status report as JSON (its `histograms` list only
    /// those with samples; the table shows all, empty ones as 0).
    #[arg(long)]
    json: bool,
    /// Also show the master's latency histograms in milliseconds (queue
    /// wait, dispatch to result, end to end, heartbeat RTT, discovery,
    /// failure detection, recovery, retry delay), each over everything since
    /// the master started.
    #[arg(long)]
    histograms: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Worker processes to start (1 to 50).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    workers: u32,
    /// Tasks to run (20 to 100000).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(20..=100_000))]
    tasks: u32,
    /// Where the nodes write their logs.
    #[arg(long, default_value = "logs")]
    log_dir: PathBuf,
    /// The master's first port to try (the next ones are tried while taken).
    #[arg(long, default_value_t = 4999)]
    port: u16,
    /// The workers' port range, which the master scans.
    #[arg(long, default_value = "5000-5100")]
    worker_ports: PortRange,
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| runner::cli::exit_with(e));
    if matches!(&cli.command, Some(Command::Worker(w)) if w.allow_exec) {
        // The programs it starts run as its own user, and could otherwise
        // read its memory and its /proc/PID/environ, where the cluster's
        // secret is (RUNNER_SECRET, or the file's contents). Not dumpable,
        // its /proc entries belong to root. Before the reaper is forked, so
        // that the reaper (which holds the same environment) inherits it.
        // Its programs are dumpable again (exec resets the flag).
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
        // SAFETY: still single-threaded: no runtime or thread has started.
        if let Err(e) = unsafe { runner::worker::reaper::install() } {
            eprintln!("runner: cannot start the task reaper ({e}); exec tasks fall back to PR_SET_PDEATHSIG");
        }
    }
    let realtime = match &cli.command {
        Some(Command::Master(a)) => a.realtime.realtime,
        Some(Command::Worker(w)) => w.realtime.realtime,
        _ => false,
    };
    // On this thread, which runs the runtime's loop, before anything starts:
    // a refusal stops the node with its reason instead of leaving it slower
    // than asked. The reaper, forked above, keeps the normal policy.
    if realtime {
        if let Err(e) = runner::realtime::enter() {
            eprintln!("runner: {e}");
            return ExitCode::from(2);
        }
    }
    let on_thread_start = move || {
        if realtime {
            if let Err(e) = runner::realtime::enter() {
                eprintln!("runner: a runtime thread: {e}");
            }
        }
    };
    // The master runs on one thread: its sessions hand tasks to each other
    // (submit, dispatch, result) without cross-thread wake-ups, which cost
    // more here than the work itself. So does a worker's connection (a frame
    // read, run and answered on one thread), while the kinds it spawns get
    // a runtime of their own on every core (`WorkerBuilder::tasks_on`).
    // Clients use every core.
    let one_thread = matches!(
        cli.command,
        Some(Command::Master(_)) | Some(Command::Worker(_))
    );
    let task_rt = match &cli.command {
        Some(Command::Worker(_)) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("runner-task")
            .on_thread_start(on_thread_start)
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                eprintln!("runner: cannot start the tasks' runtime: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let built = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(on_thread_start)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_start(on_thread_start)
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The tasks' runtime stays here, to be dropped after `block_on` returns
    // (never inside it); the worker gets a handle.
    let tasks_on = task_rt.as_ref().map(|rt| rt.handle().clone());
    let result = rt.block_on(async move {
        match cli.command.unwrap_or(Command::Demo(DemoArgs {
            common: Common {
                wire: WireArg::Bincode,
                secret_file: None,
            },
            workers: 3,
            tasks: 40,
            log_dir: PathBuf::from("logs"),
            port: 4999,
            worker_ports: PortRange {
                first: 5000,
                last: 5100,
            },
        })) {
            Command::Demo(a) => {
                let secret = load_secret(&a.common)?;
                runner::demo::run(runner::demo::DemoOptions {
                    workers: a.workers,
                    tasks: a.tasks,
                    wire: a.common.wire.into(),
                    log_dir: a.log_dir,
                    secret,
                    secret_file: a.common.secret_file,
                    port: a.port,
                    worker_ports: a.worker_ports,
                })
                .await
                .map_err(|e| Failure::Run(e.to_string()))
            }
            Command::Master(a) => master(a).await,
            Command::Worker(a) => worker(a, tasks_on).await,
            Command::Submit(a) => submit(a).await,
            Command::Results(a) => results(a).await,
            Command::Status(a) => status(a).await,
            Command::Cancel(a) => cancel(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(Failure::Run(e)) => {
            eprintln!("runner: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Usage(e)) => {
            eprintln!("runner: {e}\n\nFor more information, try '--help'.");
            ExitCode::from(USAGE_EXIT)
        }
    }
}

/// The shared secret the arguments name. Every way it can fail (no such
/// file, too short) is in what was asked: a usage error.
fn load_secret(common: &Common) -> Result<Option<Secret>, Failure> {
    if let Some(path) = &common.secret_file {
        let bytes = std::fs::read(path).map_err(|e| {
            Failure::Usage(format!("cannot read --secret-file {}: {e}", path.display()))
        })?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "runner: warning: {} is readable by others; chmod 600 it",
                    path.display()
                );
            }
        }
        return Secret::from_text(&bytes)
            .map(Some)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())));
    }
    match std::env::var_os(runner::proto::handshake::SECRET_ENV) {
        Some(v) => Secret::from_text(v.as_encoded_bytes())
            .map(Some)
            .map_err(|e| Failure::Usage(format!("{}: {e}", runner::proto::handshake::SECRET_ENV))),
        None => Ok(None),
    }
}

fn check_exposure(bind: IpAddr, secret: &Option<Secret>, insecure: bool) -> Result<(), Failure> {
    if !bind.is_loopback() && secret.is_none() && !insecure {
        return Err(Failure::Usage(format!(
            "refusing to listen on {bind} without a shared secret: anyone who can reach it could submit or run tasks. \
             Give --secret-file PATH (or RUNNER_SECRET), or --insecure on a network you trust"
        )));
    }
    Ok(())
}

/// Logging to stderr (unless quiet) and to DIR/NAME.log; the guard flushes
/// the file on exit.
fn init_logging(
    log: &Logging,
    name: &str,
) -> Result<Option<tracing_appender::non_blocking::WorkerGuard>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = (!log.quiet).then(|| {
        fmt::layer()
            // Colours for a terminal only, not for a file or a pipe.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let (file, guard) = match &log.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create --log-dir {}: {e}", dir.display()))?;
            let (w, g) = tracing_appender::non_blocking(open_log(dir, name)?);
            (
                Some(
                    fmt::layer()
                        .with_ansi(false)
                        .with_writer(w)
                        .with_filter(filter()),
                ),
                Some(g),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    Ok(guard)
}

/// Opens DIR/NAME.log for appending and holds it for as long as the node
/// runs. Two nodes of one name writing one log would interleave their
/// lines; but the one holding it may be a hung process being replaced,
/// which must not stop its replacement. So the second writes
/// DIR/NAME.PID.log instead, and says so.
fn open_log(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let name = &log_stem(name);
    let open = |path: &Path| -> Result<Option<std::fs::File>, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the log {}: {e}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(format!("cannot lock the log {}: {e}", path.display()))
        }
    };
    let path = dir.join(format!("{name}.log"));
    if let Some(file) = open(&path)? {
        return Ok(file);
    }
    let own = dir.join(format!("{name}.{}.log", std::process::id()));
    let file = open(&own)?.ok_or_else(|| format!("the log {} is in use", own.display()))?;
    eprintln!(
        "runner: warning: another node named {name} is running with its log in {}; this one logs to {}",
        path.display(),
        own.display()
    );
    Ok(file)
}

/// A node's name as the start of its log file's name: a worker's id may
/// hold `/` or `..`, which would put its log outside `--log-dir`, and be far
/// longer than a file name may be. Other than ASCII letters, digits, `-`
/// and `_`, each character becomes `_`, and the result is cut at
/// [`LOG_STEM_BYTES_MAX`].
fn log_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(LOG_STEM_BYTES_MAX)
        .collect()
}

/// See [`log_stem`]: room for `.PID.log` within a file name's 255 bytes.
const LOG_STEM_BYTES_MAX: usize = 200;

/// Prints a line of output. Output that cannot be written ends the
/// program: quietly, as a pipe's reader that stopped reading (`| head`)
/// expects; with an error and exit status 1 otherwise (a full disk), so a
/// script never takes missing results for none.
fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("runner: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM after the call.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed now, not at the first poll: a signal that comes after
        // this call is never missed (it would otherwise end the process).
        // SIGHUP too (the terminal or SSH session went away): a node stops
        // as on SIGTERM, handing back what it runs, rather than dying on the
        // spot like a `kill -9`.
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        let hup = signal(SignalKind::hangup());
        async move {
            match (int, term, hup) {
                (Ok(mut int), Ok(mut term), Ok(mut hup)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Longest a node spends stopping after SIGINT, SIGTERM or SIGHUP before it exits
/// regardless: a peer that stopped reading must not keep it alive.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Ends the process if stopping takes longer than [`STOP_GRACE`] after the
/// first SIGINT or SIGTERM, or at a second one, as a user pressing Ctrl-C
/// twice expects.
fn exit_if_stopping_hangs(node: String) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tokio::select! {
            _ = shutdown_signal() => eprintln!("runner: {node}: a second signal; stopping at once"),
            _ = tokio::time::sleep(STOP_GRACE) => {
                eprintln!("runner: {node}: still stopping after {STOP_GRACE:?}; stopping at once");
            }
        }
        std::process::exit(1);
    });
}

/// Says in the node's log that `--realtime` took (`main` has already
/// stopped the node if it did not).
fn log_realtime(on: bool) {
    if on {
        tracing::info!(
            priority = runner::realtime::PRIORITY,
            "threads run under SCHED_FIFO (--realtime)"
        );
    }
}

async fn master(a: MasterArgs) -> Result<ExitCode, Failure> {
    let secret = load_secret(&a.common)?;
    check_exposure(a.bind, &secret, a.insecure)?;
    let _guard = init_logging(&a.log, "master")?;
    log_realtime(a.realtime.realtime);
    let cfg = MasterConfig {
        bind: a.bind,
        ports: PortRange {
            first: a.port,
            last: a.port.saturating_add(runner::master::PORT_TRIES),
        },
        scan: a.scan,
        scan_hosts: a.scan_hosts,
        scan_interval: a.scan_interval,
        heartbeat: a.heartbeat,
        worker_timeout: a.worker_timeout,
        kind_grace: a.kind_grace,
        prefetch: a.prefetch,
        secret,
        wire: a.common.wire.into(),
        metrics: a.metrics,
        handshake_timeout: a.handshake_timeout,
        journal: a.journal.map(|p| runner::journal::JournalConfig {
            compact_at: a.journal_compact_at,
            ..runner::journal::JournalConfig::new(p, a.durability.into())
        }),
        ..MasterConfig::default()
    };
    check_heartbeat(
        cfg.heartbeat,
        cfg.worker_timeout,
        "--worker-timeout",
        "every worker would be dropped",
        "a worker that misses one or two pings (a brief stall of either side) is dropped and its tasks run again",
    )?;
    let m = Master::start(cfg).await.map_err(|e| e.to_string())?;
    say(format_args!("master listening on {}", m.local_addr()));
    exit_if_stopping_hangs("master".into());
    shutdown_signal().await;
    say(format_args!("master shutting down"));
    m.shutdown().await;
    say(format_args!("master stopped"));
    Ok(ExitCode::SUCCESS)
}

/// `tasks_on`: the runtime for the kinds the worker spawns (see `main`).
async fn worker(
    a: WorkerArgs,
    tasks_on: Option<tokio::runtime::Handle>,
) -> Result<ExitCode, Failure> {
    let secret = load_secret(&a.common)?;
    check_exposure(a.bind, &secret, a.insecure)?;
    let id =
        a.id.unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let _guard = init_logging(&a.log, &id)?;
    log_realtime(a.realtime.realtime);
    if a.allow_exec && secret.is_none() {
        tracing::warn!("exec tasks are allowed and there is no shared secret: any process that can reach this worker's port, or the master's, can run programs here as this user; give --secret-file (or RUNNER_SECRET) on every node");
    }
    let master = match &a.master {
        Some(m) => Some(runner::net::resolve(m).await?),
        None => None,
    };
    let defaults = WorkerConfig::default();
    let cfg = WorkerConfig {
        id: id.clone(),
        bind: a.bind,
        ports: a.port_range,
        master,
        slots: a.slots.unwrap_or(defaults.slots),
        master_timeout: a.master_timeout,
        heartbeat: a.heartbeat,
        allow_exec: a.allow_exec,
        handshake_timeout: a.handshake_timeout,
        secret,
        wire: a.common.wire.into(),
        ..defaults
    };
    check_heartbeat(
        cfg.heartbeat,
        cfg.master_timeout,
        "--master-timeout",
        "the worker would give up on a live master",
        "a brief stall of either side can make this worker terminate",
    )?;
    let mut builder = Worker::builder().config(cfg);
    if let Some(rt) = tasks_on {
        builder = builder.tasks_on(rt);
    }
    let w = builder.build().start().await.map_err(|e| e.to_string())?;
    say(format_args!("worker {id} listening on {}", w.local_addr()));
    exit_if_stopping_hangs(format!("worker {id}"));
    let exit = w.run_until(shutdown_signal()).await;
    match exit {
        WorkerExit::MasterTimeout(d, last_end) => {
            let last = last_end
                .map(|why| format!("; the last master session ended: {why}"))
                .unwrap_or_default();
            say(format_args!(
                "worker {id} terminating: no master for {:.1}s (master-timeout){last}",
                d.as_secs_f64()
            ));
            Ok(ExitCode::from(MASTER_TIMEOUT_EXIT))
        }
        WorkerExit::Shutdown => {
            say(format_args!("worker {id} stopped"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(
    common: &Common,
    master: &Option<String>,
    reconnect: Option<Duration>,
) -> Result<Client, Failure> {
    let opts = ClientOptions {
        wire: common.wire.into(),
        secret: load_secret(common)?,
        reconnect,
        ..ClientOptions::default()
    };
    match master {
        Some(m) => {
            let addr: SocketAddr = runner::net::resolve(m).await?;
            Ok(Client::connect(addr, opts)
                .await
                .map_err(|e| e.to_string())?)
        }
        None => Ok(Client::connect_local(opts)
            .await
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())?),
    }
}

fn task_from_args(a: &SubmitArgs) -> Result<NewTask, Failure> {
    let (kind, args) = a
        .task
        .split_first()
        .ok_or_else(|| Failure::Usage("give a task: -- KIND [ARGS..]".into()))?;
    if kind.trim().is_empty() {
        return Err(Failure::Usage(
            "the task's kind is empty: give one, e.g. -- echo hello".into(),
        ));
    }
    let payload = if kind == "exec" {
        if args.is_empty() {
            return Err(Failure::Usage(
                "exec needs a program: -- exec PROGRAM [ARGS..]".into(),
            ));
        }
        Payload::from(serde_json::json!({ "argv": args }).to_string())
    } else {
        Payload::from(args.join(" "))
    };
    Ok(NewTask {
        kind: Text::from(kind.clone()),
        payload,
        priority: a.priority,
        retries: a.retries,
        timeout_ms: a.timeout.unwrap_or(0),
    })
}

fn print_result(r: &TaskResult, json: bool) {
    if json {
        let v = serde_json::json!({
            "id": r.id,
            "status": r.status,
            "output": r.output,
            "attempts": r.attempts,
            "worker": r.worker,
            "errors": r.errors,
        });
        say(format_args!("{v}"));
        return;
    }
    let output = match r.output.as_text() {
        Some(t) => exec_text(t).unwrap_or_else(|| t.trim_end().to_string()),
        None => bytes_text(&r.output),
    };
    match r.status {
        TaskStatus::Ok => say(format_args!(
            "task {} ok on {} ({} attempt{}){}{}",
            r.id,
            r.worker,
            r.attempts,
            if r.attempts == 1 { "" } else { "s" },
            if output.is_empty() { "" } else { ": " },
            output
        )),
        status => {
            let what = match status {
                TaskStatus::Failed => "FAILED",
                TaskStatus::Unknown =>
                    "UNKNOWN (the master has no record of it: never accepted, its result already collected, the master restarted without a journal, or, without a journal, its client left while a million other results waited to be fetched; the master's log says when it drops results)",
                _ => "CANCELLED",
            };
            match r.attempts {
                0 if status == TaskStatus::Unknown => say(format_args!("task {} {what}", r.id)),
                0 => say(format_args!("task {} {what} before it ran", r.id)),
                n => say(format_args!(
                    "task {} {what} after {n} attempt{}",
                    r.id,
                    if n == 1 { "" } else { "s" }
                )),
            }
            for e in &r.errors {
                let on = if e.worker.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", e.worker)
                };
                if e.attempt == 0 {
                    say(format_args!("    {}", e.reason));
                } else {
                    say(format_args!("    attempt {}{on}: {}", e.attempt, e.reason));
                }
            }
        }
    }
}

/// Output that is not UTF-8, for a terminal: text with its stray bytes
/// written `\xNN` (a program's output in Latin-1, say); binary data, where
/// most bytes would be escaped, by its length and where to see it.
fn bytes_text(bytes: &[u8]) -> String {
    let stray: usize = bytes.utf8_chunks().map(|c| c.invalid().len()).sum();
    if stray * 4 > bytes.len() {
        return format!("<{} bytes, not text; --json shows them>", bytes.len());
    }
    let mut text = String::with_capacity(bytes.len() + 3 * stray);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    text.trim_end().to_string()
}

/// An `exec` result shown as the program's output: stdout, then stderr.
fn exec_text(output: &str) -> Option<String> {
    let v: runner::worker::tasks::ExecOutput = serde_json::from_str(output).ok()?;
    let text = |p: &Payload| p.as_text().map_or_else(|| bytes_text(p), str::to_string);
    let cut = |truncated: bool, what: &str| {
        if truncated {
            format!(
                "\n[{what} cut at {} KiB; the rest was not kept]",
                runner::worker::tasks::EXEC_OUTPUT_BYTES_MAX / 1024
            )
        } else {
            String::new()
        }
    };
    let mut s = text(&v.stdout);
    s.push_str(&cut(v.stdout_truncated, "stdout"));
    if !v.stderr.is_empty() {
        s.push_str(&format!("[stderr] {}", text(&v.stderr)));
        s.push_str(&cut(v.stderr_truncated, "stderr"));
    }
    Some(s.trim_end().to_string())
}

async fn submit(a: SubmitArgs) -> Result<ExitCode, Failure> {
    let task = task_from_args(&a)?;
    let reconnect = (!a.detach).then_some(a.reconnect);
    let client = connect(&a.common, &a.master, reconnect).await?;
    let tasks = vec![task; a.count as usize];
    let again = again_args(&a.common, &a.master, client.master());
    // Installed before the first task is sent: interrupted while it submits,
    // it stops sending and says which ids the master took, rather than
    // dying with tasks accepted that nobody knows the ids of.
    let mut interrupted = std::pin::pin!(shutdown_signal());
    // Accepted in part (a later part refused, or the connection lost): the
    // accepted tasks run, so their ids are printed and their results
    // awaited as any others, and the run ends with exit status 1.
    let (ranges, partial) = match client
        .submit_batches_until(tasks, a.detach, interrupted.as_mut())
        .await
    {
        Ok((ranges, false)) => (ranges, None),
        Ok((ranges, true)) => {
            let ids: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
            client.shutdown().await;
            if ids.is_empty() {
                eprintln!("runner: interrupted before the master accepted any task");
            } else {
                eprintln!(
                    "runner: interrupted while submitting: {} of {} tasks were accepted and go on. Fetch their results with: runner results{again} {}",
                    ids.len(),
                    a.count,
                    id_ranges(&ids)
                );
            }
            return Ok(ExitCode::from(INTERRUPTED_EXIT));
        }
        Err(runner::client::ClientError::Partial {
            accepted,
            unsure,
            error,
        }) => (accepted, Some((unsure, error))),
        Err(e) => return Err(e.to_string().into()),
    };
    let ids: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
    let count = ids.len();
    if let Some((unsure, error)) = &partial {
        let unsure = if *unsure > 0 {
            format!(" ({unsure} more may or may not have been)")
        } else {
            String::new()
        };
        eprintln!(
            "runner: only {count} of {} tasks were accepted{unsure}: {error}",
            a.count
        );
    }
    let partial_exit = |code: ExitCode| {
        if partial.is_some() {
            ExitCode::FAILURE
        } else {
            code
        }
    };
    // One range as `submit` always printed it; a batch split into messages
    // that another client's came between, as its runs.
    let shown = match &ranges[..] {
        [r] => format!("{}..={}", r.start, r.end.saturating_sub(1)),
        _ => id_ranges(&ids),
    };
    let plural = if count == 1 { "" } else { "s" };
    if a.detach {
        if a.json {
            let parts: Vec<[u64; 2]> = ranges.iter().map(|r| [r.start, r.end - 1]).collect();
            say(format_args!(
                "{}",
                serde_json::json!({"first_id": ids[0], "count": count, "ranges": parts})
            ));
        } else {
            say(format_args!(
                "submitted {count} task{plural}: ids {shown}; fetch with `runner results{again} {}`",
                id_ranges(&ids)
            ));
        }
        client.shutdown().await;
        return Ok(partial_exit(ExitCode::SUCCESS));
    }
    if a.json {
        // Stdout holds one JSON object per result; the ids, which a
        // `runner cancel` or `runner results` needs while they run, go to
        // stderr.
        eprintln!("submitted {count} task{plural} (ids {shown})");
    } else {
        say(format_args!("submitted {count} task{plural} (ids {shown})"));
    }
    Ok(partial_exit(
        print_results(client, ids, a.json, interrupted, &again).await?,
    ))
}

/// Prints the results of `ids` (ascending) as they arrive, then closes;
/// exit status 1 if any task did not succeed. Interrupted (Ctrl-C, SIGTERM),
/// it says which results are still due and how to fetch them: the tasks go
/// on without it.
async fn print_results(
    mut client: Client,
    ids: Vec<u64>,
    json: bool,
    interrupted: impl std::future::Future<Output = ()>,
    again: &str,
) -> Result<ExitCode, String> {
    let mut received = vec![false; ids.len()];
    let mut failed = 0;
    tokio::pin!(interrupted);
    for _ in 0..ids.len() {
        let r = tokio::select! {
            r = client.next_result() => r,
            _ = &mut interrupted => {
                client.shutdown().await;
                let due: Vec<u64> = ids
                    .iter()
                    .zip(&received)
                    .filter(|(_, got)| !**got)
                    .map(|(id, _)| *id)
                    .collect();
                eprintln!(
                    "runner: interrupted with {} of {} results still due; the tasks go on. Fetch them with: runner results{again} {}",
                    due.len(),
                    ids.len(),
                    id_ranges(&due)
                );
                return Ok(ExitCode::from(INTERRUPTED_EXIT));
            }
        };
        let Some(r) = r else {
            return Err(format!(
                "lost the master before every result arrived: {}",
                client.close_reason().unwrap_or_default()
            ));
        };
        if let Ok(i) = ids.binary_search(&r.id) {
            received[i] = true;
        }
        if r.status != TaskStatus::Ok {
            failed += 1;
        }
        print_result(&r, json);
    }
    client.shutdown().await;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Most ids one range on the command line may name.
const ID_RANGE_MAX: u64 = 10_000_000;

/// One id argument: `7`, `10-20`, or `10..=20` as `submit` prints a batch's
/// ids.
fn parse_id_range(a: &str) -> Result<RangeInclusive<u64>, String> {
    let bad = || "expected a task id like 7 or a range like 10-20 (or 10..=20)".to_string();
    let (lo, hi) = match a.split_once("..=").or_else(|| a.split_once('-')) {
        Some((lo, hi)) => (lo, hi),
        None => (a, a),
    };
    let (lo, hi): (u64, u64) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo > hi || hi - lo >= ID_RANGE_MAX {
        return Err(format!(
            "the first id must not exceed the last, and a range holds at most {ID_RANGE_MAX} ids"
        ));
    }
    Ok(lo..=hi)
}

/// The ids the arguments name, ascending, each once.
fn ids_of(ranges: &[RangeInclusive<u64>]) -> Vec<u64> {
    let mut ids: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `--timeout`: in whole milliseconds (the wire's unit), rounded up, so that
/// 900us is 1 ms rather than 0, which would mean no timeout at all.
fn parse_task_timeout(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than 0 (leave --timeout out for none)".into());
    }
    u32::try_from(d.as_nanos().div_ceil(1_000_000))
        .ok()
        .filter(|ms| *ms <= runner::limits::TASK_TIMEOUT_MS_MAX)
        .ok_or_else(|| "is longer than the limit of 24h".into())
}

fn parse_reason(s: &str) -> Result<String, String> {
    if s.len() > runner::limits::TEXT_BYTES_MAX {
        return Err(format!(
            "is {} bytes; at most {}",
            s.len(),
            runner::limits::TEXT_BYTES_MAX
        ));
    }
    Ok(s.to_string())
}

fn parse_node_id(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s.len() > runner::limits::NODE_ID_BYTES_MAX {
        return Err(format!(
            "a worker's id must not be empty (nor above {} bytes: its hello must fit in the {} bytes a peer takes before the handshake)",
            runner::limits::NODE_ID_BYTES_MAX,
            runner::limits::PREAUTH_FRAME_BYTES_MAX
        ));
    }
    if s.chars().any(runner::proto::unprintable) {
        return Err(
            "a worker's id must not hold control characters, nor invisible ones that reorder or hide text (it goes into logs and tables)".into(),
        );
    }
    Ok(s.to_string())
}

/// A heartbeat must be shorter than the timeout it feeds (`flag`), and
/// should be at most a third of it: refused with `or_else`, warned with
/// `risk`.
fn check_heartbeat(
    heartbeat: Duration,
    timeout: Duration,
    flag: &str,
    or_else: &str,
    risk: &str,
) -> Result<(), Failure> {
    if timeout <= heartbeat {
        return Err(Failure::Usage(format!(
            "{flag} ({timeout:?}) must be longer than --heartbeat ({heartbeat:?}), or {or_else}"
        )));
    }
    if timeout < heartbeat * 3 {
        eprintln!(
            "runner: warning: --heartbeat ({heartbeat:?}) is more than a third of {flag} ({timeout:?}): {risk}"
        );
    }
    Ok(())
}

/// `IP:PORT` or `HOST:PORT`, the host resolved now (the first address it
/// has, IPv4 first): a listener binds one address.
fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if !is_host_port(s) {
        return Err("expected HOST:PORT or IP:PORT, e.g. 127.0.0.1:9464 or localhost:9464 ([::1]:9464 for IPv6)".into());
    }
    let addrs: Vec<_> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn parse_compact_at(s: &str) -> Result<u64, String> {
    let min = runner::journal::COMPACT_AT_BYTES_MIN;
    match s.parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "expected a number of bytes, at least {min} (the default is {})",
            runner::journal::COMPACT_AT_BYTES_DEFAULT
        )),
    }
}

/// Whether `s` has the form HOST:PORT: a host and a port of 1-65535.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A master's address as given (`--master`): checked for its form here, so
/// that a missing or impossible port is an argument error; the name is
/// looked up when it is dialed.
fn parse_master_addr(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() || is_host_port(s) {
        return Ok(s.to_string());
    }
    Err("expected HOST:PORT, e.g. 127.0.0.1:4999 or node1:4999 ([::1]:4999 for IPv6); the port is 1-65535".into())
}

fn parse_scan_host(s: &str) -> Result<String, String> {
    let host = s.trim();
    if host.is_empty() {
        return Err(
            "an empty host name: give names or IP addresses separated by commas, e.g. --scan-hosts 10.0.0.2,node3".into(),
        );
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host.to_string());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) || host.contains(':') {
        return Err(format!(
            "{host:?} is not a host name or IP address (no spaces, and no port: the master scans the --scan ports on each host)"
        ));
    }
    Ok(host.to_string())
}

async fn results(a: ResultsArgs) -> Result<ExitCode, Failure> {
    let ids = ids_of(&a.ids);
    let client = connect(&a.common, &a.master, Some(a.reconnect)).await?;
    let interrupted = shutdown_signal();
    client.fetch(ids.clone()).map_err(|e| e.to_string())?;
    let again = again_args(&a.common, &a.master, client.master());
    Ok(print_results(client, ids, a.json, interrupted, &again).await?)
}

/// The options a later `runner results` needs to reach this master with
/// this secret: the address given, or the one found (a master's node id
/// ends with it), and the secret file.
fn again_args(common: &Common, master: &Option<String>, found: &str) -> String {
    let mut args = String::new();
    let addr = master.clone().or_else(|| {
        found
            .rsplit_once('@')
            .filter(|(_, a)| a.parse::<SocketAddr>().is_ok())
            .map(|(_, a)| a.to_string())
    });
    if let Some(addr) = addr {
        args.push_str(&format!(" --master {addr}"));
    }
    if let Some(f) = &common.secret_file {
        args.push_str(&format!(" --secret-file {}", f.display()));
    }
    args
}

/// Exit status 1 if any id was unknown (a mistyped id, most likely); ids
/// already finished are not an error: there was nothing left to stop.
async fn cancel(a: CancelArgs) -> Result<ExitCode, Failure> {
    let ids = ids_of(&a.ids);
    let client = connect(&a.common, &a.master, None).await?;
    let r = client
        .cancel(ids, &a.reason)
        .await
        .map_err(|e| e.to_string())?;
    client.shutdown().await;
    if a.json {
        let v = serde_json::json!({
            "cancelled": r.cancelled,
            "finished": r.finished,
            "unknown": r.unknown,
        });
        say(format_args!("{v}"));
    } else {
        let line = |what: &str, ids: &[u64]| {
            if !ids.is_empty() {
                say(format_args!("{what} ({}): {}", ids.len(), id_ranges(ids)));
            }
        };
        line("cancelled", &r.cancelled);
        line("already finished, left as they were", &r.finished);
        line("unknown to this master", &r.unknown);
    }
    Ok(if r.unknown.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sorted ids as runs: `3 7-9 12`.
fn id_ranges(ids: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(" ")
}

async fn status(a: StatusArgs) -> Result<ExitCode, Failure> {
    let client = connect(&a.common, &a.master, None).await?;
    let s = client
        .status(a.histograms)
        .await
        .map_err(|e| e.to_string())?;
    client.shutdown().await;
    if a.json {
        let v = serde_json::to_string(&s).map_err(|e| e.to_string())?;
        say(format_args!("{v}"));
        return Ok(ExitCode::SUCCESS);
    }
    say(format_args!(
        "master {}: {} worker(s)",
        client.master(),
        s.workers.len()
    ));
    say(format_args!(
        "{:<16} {:<22} {:>5} {:>9} {:>8} {:>7} {:>9} {:>8}",
        "WORKER", "ADDRESS", "SLOTS", "IN FLIGHT", "DONE", "FAILED", "RTT", "SILENT"
    ));
    for w in &s.workers {
        say(format_args!(
            "{:<16} {:<22} {:>5} {:>9} {:>8} {:>7} {:>7}us {:>6}ms",
            w.id.as_str(),
            w.addr.as_str(),
            w.slots,
            w.in_flight,
            w.done,
            w.failed,
            w.rtt_us,
            w.silent_ms
        ));
    }
    let queued: u64 = s.queues.iter().map(|q| q.depth).sum();
    say(format_args!("queued: {queued}"));
    for q in &s.queues {
        say(format_args!("  priority {:>3}: {}", q.priority, q.depth));
    }
    say(format_args!(
        "totals: submitted {}, completed {}, failed or cancelled {}, retried {}, running {}",
        s.submitted, s.completed, s.failed, s.retried, s.running
    ));
    if a.histograms {
        let row = |c: [&dyn std::fmt::Display; 7]| {
            say(format_args!(
                "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6]
            ))
        };
        // Milliseconds, as the load generator's reports give them.
        row([
            &"LATENCY (ms)",
            &"COUNT",
            &"P50",
            &"P90",
            &"P99",
            &"P99.9",
            &"MAX",
        ]);
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        // Every histogram, in a fixed order; the master sends only those
        // with samples, so the rest are shown as having none yet.
        for name in runner::metrics::Metric::ALL.map(|m| m.name()) {
            match s.histograms.iter().find(|h| h.name.as_str() == name) {
                Some(h) => row([
                    &name,
                    &h.count,
                    &ms(h.p50_us),
                    &ms(h.p90_us),
                    &ms(h.p99_us),
                    &ms(h.p999_us),
                    &ms(h.max_us),
                ]),
                None => row([&name, &0, &"-", &"-", &"-", &"-", &"-"]),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{bytes_text, parse_listen_addr};

    #[test]
    fn a_listen_address_may_name_its_host() {
        assert_eq!(
            parse_listen_addr("localhost:9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        for bad in ["localhost", "localhost:http", ":9464", "localhost:70000"] {
            let e = parse_listen_addr(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn output_in_another_encoding_is_printed_with_its_stray_bytes_escaped() {
        assert_eq!(bytes_text(b"caf\xe9 au lait\n"), "caf\\xe9 au lait");
    }

    #[test]
    fn binary_output_is_printed_as_its_length() {
        assert_eq!(
            bytes_text(&[0xff; 10]),
            "<10 bytes, not text; --json shows them>"
        );
    }
}
