//! `loadgen`: load against a runner cluster (its own, or an existing one),
//! with latency histograms, reports and raw-TCP baselines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use runner::loadgen::{self, baseline, report, Chaos, LoadOptions};
use runner::net::parse_duration;
use runner::proto::Wire;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for runner. By default it starts its own cluster (a master
/// and --spawn-workers worker processes of the `runner` binary beside it),
/// runs the load, checks that every accepted task got exactly one result,
/// and prints a summary.
///
/// Exit status: 0 when every task got exactly one result (failures only
/// where the run asked for them); 1 if any was lost, duplicated or failed
/// unasked, or the run ended within its --warmup; 2 for arguments that
/// cannot work; 3 when an open loop could not keep to --rate (the report
/// is written, but its figures are not of that rate); 130 if interrupted.
///
/// Examples:
///   loadgen --tasks 1000000 --concurrency 20000 --baseline --report results/w1
///   loadgen --rate 200000 --duration 10s --report results/open-loop
///   loadgen --rate 700000 --duration 10s --warmup 2s --baseline   (and the raw relay at 700k/s)
///   loadgen --kind exec --arg true --tasks 20000 --concurrency 4
///   loadgen --tasks 200000 --chaos kill --chaos-every 2s
///   loadgen baseline
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Measure the baselines alone: a raw TCP ping-pong over loopback, and a
    /// raw relay (client, relay, 2 sinks, back) as round trip and throughput.
    Baseline(BaselineArgs),
    /// A baseline peer (started by the baselines themselves): `echo`, or
    /// `relay SINK_A SINK_B`.
    #[command(hide = true)]
    Peer {
        /// echo or relay.
        role: String,
        /// The relay's two sinks.
        sinks: Vec<String>,
        /// Serve under the real-time policy (as `--realtime` runs the
        /// cluster), for the relay measured at the cluster's rate.
        #[arg(long)]
        realtime: bool,
        /// The relay's busy work per frame (see `--relay-work`).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        work: Duration,
    },
}

#[derive(Args)]
struct BaselineArgs {
    /// Sequential round trips per latency baseline.
    #[arg(long, default_value_t = baseline::ROUND_TRIPS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..))]
    round_trips: u32,
    /// Frames through the relay for its throughput.
    #[arg(long, default_value_t = baseline::FRAMES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Also measure how fast a tokio program spawns `true`, this many times
    /// with --spawn-in-flight at once (the ceiling for `exec` tasks).
    #[arg(long, default_value_t = 0)]
    spawns: u32,
    /// Children in flight for --spawns.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    spawn_in_flight: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChaosArg {
    /// kill -9 a random worker and start a new one.
    Kill,
    /// SIGSTOP a random worker (it stays stopped) and start a new one.
    Stop,
    /// At random: kill -9 a worker (and start a new one), SIGSTOP one and
    /// resume it 0.5-3 s later, or start one more.
    Mixed,
}

#[derive(Clone, Copy, ValueEnum)]
enum WireArg {
    Bincode,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// Drive this master instead of starting one.
    #[arg(long)]
    master: Option<String>,
    /// The driven master's shared secret, from this file (default: the
    /// RUNNER_SECRET variable, as for runner).
    #[arg(long, value_name = "PATH", requires = "master")]
    secret_file: Option<std::path::PathBuf>,
    /// What `secret_file` (or RUNNER_SECRET) holds, read by `check`.
    #[arg(skip)]
    secret: Option<runner::proto::handshake::Secret>,
    /// Workers to start with the master.
    #[arg(long, default_value_t = 2, conflicts_with = "master")]
    spawn_workers: u32,
    /// Slots per started worker (0: as many as the machine has cores).
    #[arg(long, default_value_t = 0, conflicts_with = "master")]
    worker_slots: u32,
    /// The started master's --prefetch (tasks kept in flight per worker
    /// beyond its slots). 256 hides the round trip without making frames
    /// so large that they hold up everything behind them (measured in
    /// results/cluster.md).
    #[arg(long, default_value_t = 256, conflicts_with = "master")]
    prefetch: u32,
    /// An argument for the started master, e.g. --master-arg=--journal=/tmp/j
    /// (repeat for more).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "master"
    )]
    master_arg: Vec<String>,
    /// An argument for each started worker, e.g.
    /// --worker-arg=--port-range=6000-6100 (repeat for more). Workers listen
    /// on the first free port of 5000-5100 unless told otherwise, so at most
    /// 101 at once (chaos's stopped workers hold theirs).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "master"
    )]
    worker_arg: Vec<String>,
    /// Closed loop: tasks in flight.
    #[arg(long, default_value_t = 10_000)]
    concurrency: u32,
    /// Open loop: tasks per second, latency measured from each task's
    /// intended start (coordinated-omission correction).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many tasks (with --duration too: at whichever comes
    /// first).
    #[arg(long)]
    tasks: Option<u64>,
    /// Stop submitting after this long (with --tasks too: at whichever
    /// comes first). With --fake-workers: how long to hold them (10 s if
    /// not given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Task kind: noop, echo, sleep, spin, fail, flaky, stall, exec, or
    /// mixed (in turn a no-op, an echo, a 2 ms sleep, a 100 µs spin, a task
    /// failing its first attempt, and one failing both of its attempts).
    /// With --master, also any kind that master's workers run.
    #[arg(long, default_value = "noop")]
    kind: String,
    /// The kind's argument: sleep MS, spin US, exec PROGRAM [ARGS], fail
    /// REASON, flaky N (attempts that fail first), stall (any); echo's is
    /// its payload.
    #[arg(long)]
    arg: Option<String>,
    /// Each attempt's timeout (none by default; `stall` tasks need one).
    #[arg(long, value_parser = parse_duration)]
    task_timeout: Option<Duration>,
    /// Payload bytes for kinds without an argument.
    #[arg(long, default_value_t = 16)]
    payload_bytes: usize,
    /// Fraction of tasks that fail on purpose (no retries).
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
    /// Most tasks per submit frame.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Wire for every connection.
    #[arg(long, value_enum, default_value = "bincode")]
    wire: WireArg,
    /// Break the started workers during the run (each broken one is
    /// replaced by a new worker).
    #[arg(long, value_enum, conflicts_with = "master")]
    chaos: Option<ChaosArg>,
    /// How often chaos strikes.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    chaos_every: Duration,
    /// Also measure the baselines first and report the run as ratios of them;
    /// with --rate, the raw relay too at that rate, as long and with the same
    /// warm-up (under --realtime if given): what the machine alone does to
    /// latency at that load.
    #[arg(long)]
    baseline: bool,
    /// With --baseline and --rate: keep the relay driven at the run's rate
    /// busy for this long per frame (e.g. 370ns), a stand-in for a master
    /// that spends that much CPU per task: what such a master's latency
    /// would be here at best.
    #[arg(long, value_parser = parse_duration, default_value = "0s", requires_all = ["baseline", "rate"])]
    relay_work: Duration,
    /// Write .hgrm, .hlog, summary.json, summary.csv and latency.svg here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Wait this long for the last results.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    drain_timeout: Duration,
    /// Only submit (wait for the acceptances, not the results): fills a
    /// master's queue, e.g. one with no workers, to measure its memory.
    #[arg(long)]
    submit_only: bool,
    /// Instead of a load: hold this many lightweight fake workers (real
    /// sessions: handshake, register, heartbeats at the default 1 s) on the master for
    /// --duration, and report the master's CPU and memory.
    #[arg(long, default_value_t = 0)]
    fake_workers: u32,
    /// Do not record the latency of tasks meant to start in this first
    /// stretch of the run (they are still run and checked).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Open loop: how often to send what has come due when no result wakes
    /// the load generator (finer than tokio's 1 ms timer; each wake costs
    /// some CPU). 0s leaves it to the 1 ms timer.
    #[arg(long, value_parser = parse_duration, default_value = "100us")]
    pace: Duration,
    /// Run the load generator, and the master and workers it starts, under
    /// the kernel's real-time policy (`runner master --realtime`). The
    /// --baseline is measured first, under the normal policy. Needs root,
    /// CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1.
    #[arg(long)]
    realtime: bool,
}

fn main() -> ExitCode {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| runner::cli::exit_with(e));
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| runner::cli::exit_with(e));
    if cli.command.is_none() {
        match check(&cli.run, &matches) {
            Ok(secret) => cli.run.secret = secret,
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // One thread: the client's connection task and the load loop hand each
    // other results without cross-thread wake-ups, and the cluster keeps the
    // other core.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async move {
        match cli.command {
            Some(Sub::Baseline(b)) => run_baseline(b).await,
            Some(Sub::Peer {
                role,
                sinks,
                realtime,
                work,
            }) => baseline::serve_peer(&role, &sinks, realtime, work)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.to_string()),
            None => run_load(cli.run).await,
        }
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Kinds the workers the load generator starts can run (`mixed` is the load
/// generator's own blend of them).
const KINDS: &[&str] = &[
    "noop", "echo", "sleep", "spin", "fail", "flaky", "stall", "exec", "mixed",
];

/// Finest --pace: below it the pacer's wake-ups cost a core and gain
/// nothing (a loopback round trip here takes about 100 µs).
const PACE_MIN: Duration = Duration::from_micros(10);

/// Least time between chaos strikes: a new worker takes about this long to
/// start and register.
const CHAOS_EVERY_MIN: Duration = Duration::from_millis(100);

/// Refuses, before any load, options that cannot work together or would be
/// ignored: a run that does something other than what was asked for looks
/// like a result.
/// Refuses arguments that cannot work, before any load; returns the driven
/// master's secret, read once it has been checked.
fn check(a: &RunArgs, m: &ArgMatches) -> Result<Option<runner::proto::handshake::Secret>, String> {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    if let Some(dir) = &a.report {
        report::check_dir(dir)?;
    }
    if a.fake_workers > 0 {
        let ignored: Vec<String> = [
            "tasks",
            "rate",
            "concurrency",
            "chaos",
            "kind",
            "arg",
            "baseline",
            "warmup",
            "submit_only",
        ]
        .iter()
        .filter(|id| given(id))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
        if !ignored.is_empty() {
            return Err(format!(
                "--fake-workers holds a pool of idle workers for --duration and runs no tasks: {} would be ignored",
                ignored.join(", ")
            ));
        }
        return secret(a);
    }
    if a.tasks.is_none() && a.duration.is_none() {
        return Err("give --tasks N or --duration D (see --help)".into());
    }
    if a.tasks == Some(0) {
        return Err("--tasks must be at least 1".into());
    }
    if a.batch == 0 || a.batch > runner::limits::BATCH_TASKS_MAX {
        return Err(format!(
            "--batch must be from 1 to {}",
            runner::limits::BATCH_TASKS_MAX
        ));
    }
    if !(0.0..=1.0).contains(&a.fail_fraction) {
        return Err("--fail-fraction must be from 0 to 1".into());
    }
    if let Some(rate) = a.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be a positive number of tasks per second".into());
        }
        if a.relay_work.as_secs_f64() * rate >= 1.0 {
            return Err(format!(
                "--relay-work {:?} at --rate {rate}/s is more than a second of work a second: \
                 the relay could not keep up (at most {:?} at this rate)",
                a.relay_work,
                Duration::from_secs_f64(1.0 / rate)
            ));
        }
    }
    if a.arg.is_some() && given("payload_bytes") {
        return Err(format!(
            "--payload-bytes sets the payload of kinds without --arg; a --kind {} task's payload is its --arg",
            a.kind
        ));
    }
    if a.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be more than 0".into());
    }
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if a.rate.is_some() && given("concurrency") {
        return Err(
            "--concurrency sets a closed loop's tasks in flight; an open loop (--rate) has none fixed: give one of them".into(),
        );
    }
    if a.rate.is_none() && given("pace") {
        return Err("--pace paces an open loop: give --rate too".into());
    }
    if !a.pace.is_zero() && a.pace < PACE_MIN {
        return Err(format!(
            "--pace {:?} is below {PACE_MIN:?}: the load generator would spend a core waking up; 0s leaves the pace to the 1 ms timer",
            a.pace
        ));
    }
    if let (Some(w), Some(d)) = (given("warmup").then_some(a.warmup), a.duration) {
        if w >= d {
            return Err(format!(
                "--warmup {w:?} is not shorter than --duration {d:?}: nothing would be recorded"
            ));
        }
    }
    match a.chaos {
        None if given("chaos_every") => {
            return Err("--chaos-every needs --chaos kill|stop|mixed".into())
        }
        Some(_) if a.chaos_every < CHAOS_EVERY_MIN => {
            return Err(format!(
                "--chaos-every must be at least {CHAOS_EVERY_MIN:?} (a new worker takes about that long to start)"
            ))
        }
        Some(_) if a.spawn_workers == 0 => {
            return Err("--chaos breaks the workers the load generator starts; --spawn-workers 0 starts none".into())
        }
        _ => {}
    }
    if a.master.is_none() && a.spawn_workers == 0 && !a.submit_only {
        return Err(
            "--spawn-workers 0 starts no worker, so no task would run: it suits --submit-only (filling a master's queue)".into(),
        );
    }
    if a.payload_bytes > runner::limits::PAYLOAD_BYTES_MAX {
        return Err(format!(
            "--payload-bytes {} is above the protocol's limit of {} bytes",
            a.payload_bytes,
            runner::limits::PAYLOAD_BYTES_MAX
        ));
    }
    let kind = a.kind.as_str();
    if a.master.is_none() && !KINDS.contains(&kind) {
        return Err(format!(
            "unknown --kind {kind:?}: the workers the load generator starts run {}",
            KINDS.join(", ")
        ));
    }
    if a.fail_fraction > 0.0 && kind == "mixed" {
        return Err(
            "--kind mixed has failing tasks of its own; --fail-fraction would be ignored".into(),
        );
    }
    match (kind, a.arg.as_deref()) {
        ("noop" | "mixed", Some(_)) => {
            return Err(format!(
                "--kind {kind} takes no --arg (--payload-bytes sets the payload's size)"
            ))
        }
        ("sleep" | "spin", Some(x)) if x.trim().parse::<u64>().is_err() => {
            return Err(format!(
                "--kind {kind} --arg {x:?}: expected a whole number of {}",
                if kind == "sleep" { "milliseconds" } else { "microseconds" }
            ))
        }
        ("flaky", Some(x)) if x.trim().parse::<u32>().is_err() => {
            return Err(format!(
                "--kind flaky --arg {x:?}: expected how many attempts fail first"
            ))
        }
        ("stall", _) if a.task_timeout.is_none() => {
            return Err("--kind stall never ends by itself: give --task-timeout, and each attempt is killed at it".into())
        }
        _ => {}
    }
    if let Some(t) = a.task_timeout {
        if t.is_zero() || t.as_millis() > u128::from(runner::limits::TASK_TIMEOUT_MS_MAX) {
            return Err(format!(
                "--task-timeout must be from 1ms to {} ms",
                runner::limits::TASK_TIMEOUT_MS_MAX
            ));
        }
    }
    secret(a)
}

async fn run_baseline(b: BaselineArgs) -> Result<ExitCode, String> {
    let r = tokio::time::timeout(baseline::TIMEOUT, baseline::run(b.round_trips, b.frames))
        .await
        .map_err(|_| "the baseline took too long".to_string())?
        .map_err(|e| e.to_string())?;
    baseline::print(&r);
    if b.spawns > 0 {
        let rate = baseline::spawn_rate("true", b.spawns, b.spawn_in_flight)
            .await
            .map_err(|e| format!("spawning true: {e}"))?;
        runner::outln!(
            "{:<34} {:>9.0}",
            format!("spawn `true`, {} in flight (/s)", b.spawn_in_flight),
            rate
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The driven master's secret: `--secret-file`, or RUNNER_SECRET.
fn secret(a: &RunArgs) -> Result<Option<runner::proto::handshake::Secret>, String> {
    use runner::proto::handshake::{Secret, SECRET_ENV};
    if let Some(path) = &a.secret_file {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read --secret-file {}: {e}", path.display()))?;
        return Secret::from_text(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    match std::env::var_os(SECRET_ENV) {
        Some(v) if a.master.is_some() => Secret::from_text(v.as_encoded_bytes())
            .map(Some)
            .map_err(|e| format!("{SECRET_ENV}: {e}")),
        _ => Ok(None),
    }
}

fn options(a: &RunArgs, master: Option<std::net::SocketAddr>) -> LoadOptions {
    LoadOptions {
        master,
        secret: a.secret.clone(),
        spawn_workers: a.spawn_workers,
        worker_slots: a.worker_slots,
        prefetch: a.prefetch,
        master_args: a.master_arg.clone(),
        worker_args: a.worker_arg.clone(),
        concurrency: a.concurrency,
        rate: a.rate,
        tasks: a.tasks,
        duration: a.duration,
        kind: a.kind.clone(),
        arg: a.arg.clone().map(|x| {
            if a.kind == "exec" {
                serde_json::json!({ "argv": x.split_whitespace().collect::<Vec<_>>() }).to_string()
            } else {
                x
            }
        }),
        payload_bytes: a.payload_bytes,
        task_timeout: a.task_timeout,
        fail_fraction: a.fail_fraction,
        batch: a.batch,
        wire: match a.wire {
            WireArg::Bincode => Wire::Bincode,
            WireArg::Json => Wire::Json,
        },
        chaos: a.chaos.map(|c| {
            (
                match c {
                    ChaosArg::Kill => Chaos::Kill,
                    ChaosArg::Stop => Chaos::Stop,
                    ChaosArg::Mixed => Chaos::Mixed,
                },
                a.chaos_every,
            )
        }),
        progress: !a.quiet,
        drain_timeout: a.drain_timeout,
        submit_only: a.submit_only,
        warmup: a.warmup,
        pace: a.pace,
        realtime: a.realtime,
    }
}

async fn run_pool(a: RunArgs, command: &str) -> Result<ExitCode, String> {
    let master = match &a.master {
        Some(m) => Some(runner::net::resolve(m).await?),
        None => None,
    };
    let window = a.duration.unwrap_or(Duration::from_secs(10));
    let opts = options(&a, master);
    let r = loadgen::run_pool(&opts, a.fake_workers, window)
        .await
        .map_err(|e| e.to_string())?;
    runner::outln!("fake workers registered      {}", r.registered);
    if r.others > 0 {
        runner::outln!("other workers of the master  {}", r.others);
    }
    runner::outln!(
        "time to connect them all     {:.2} s",
        r.setup.as_secs_f64()
    );
    runner::outln!(
        "measured over                {:.1} s",
        r.window.as_secs_f64()
    );
    match r.master_cpu_percent {
        Some(c) => runner::outln!(
            "master CPU                   {c:.1} % of one core (to within {:.1} %: clock ticks over the window)",
            r.cpu_resolution_percent
        ),
        None => runner::outln!("master CPU                   (unknown: not our process)"),
    }
    match r.master_rss_mib {
        Some(m) => runner::outln!("master resident memory       {m:.0} MiB"),
        None => runner::outln!("master resident memory       (unknown: not our process)"),
    }
    if let Some(dir) = &a.report {
        report::clear_stale(dir)?;
        let summary = serde_json::json!({
            "command": command,
            "machine": report::machine(),
            "fake_workers": a.fake_workers,
            "registered": r.registered,
            "other_workers": r.others,
            "master_cpu_resolution_percent": r.cpu_resolution_percent,
            "setup_s": r.setup.as_secs_f64(),
            "window_s": r.window.as_secs_f64(),
            "master_cpu_percent_of_a_core": r.master_cpu_percent,
            "master_rss_mib": r.master_rss_mib,
        });
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n",
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        runner::outln!("report written to {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_load(a: RunArgs) -> Result<ExitCode, String> {
    let command = report::command_line(&std::env::args().collect::<Vec<_>>());
    if a.fake_workers > 0 {
        return run_pool(a, &command).await;
    }
    let base = if a.baseline {
        let b = baseline::run(baseline::ROUND_TRIPS_DEFAULT, baseline::FRAMES_DEFAULT)
            .await
            .map_err(|e| format!("baseline: {e}"))?;
        Some(b)
    } else {
        None
    };
    // After the baseline, which stays the normal policy's: the cluster is
    // compared with what any process gets here.
    if a.realtime {
        runner::realtime::enter().map_err(|e| e.to_string())?;
    }
    // The relay at the cluster's rate, under the cluster's policy: what
    // the machine itself does to latency under this load.
    let relay_loaded = match (a.baseline, a.rate) {
        (true, Some(rate)) => {
            let duration = a
                .duration
                .or(a.tasks.map(|n| Duration::from_secs_f64(n as f64 / rate)))
                .unwrap_or_default();
            Some(
                baseline::relay_open_loop(
                    rate,
                    a.warmup,
                    duration,
                    a.pace,
                    a.realtime,
                    a.relay_work,
                )
                .await
                .map_err(|e| format!("baseline (relay at {rate}/s): {e}"))?,
            )
        }
        _ => None,
    };
    let master = match &a.master {
        Some(m) => Some(runner::net::resolve(m).await?),
        None => None,
    };
    let opts = options(&a, master);
    let o = match loadgen::run(opts).await {
        Ok(o) => o,
        Err(loadgen::LoadError::Usage(why)) => {
            eprintln!("loadgen: {why}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.to_string()),
    };
    report::print_summary(&o);
    let mut summary = report::summary_json(&o, &command);
    if let Some(b) = &base {
        runner::outln!();
        baseline::print(b);
        let e2e = |q: f64| o.e2e.value_at_quantile(q) as f64;
        let mut ratios = serde_json::json!({
            "throughput_vs_relay": o.throughput() / b.relay_frames_per_s,
            "p50_vs_relay_rtt": e2e(0.5) / b.relay_rtt.value_at_quantile(0.5) as f64,
            "p99_vs_relay_rtt": e2e(0.99) / b.relay_rtt.value_at_quantile(0.99) as f64,
            "p999_vs_relay_rtt": e2e(0.999) / b.relay_rtt.value_at_quantile(0.999) as f64,
            "p50_vs_ping_pong": e2e(0.5) / b.ping_pong.value_at_quantile(0.5) as f64,
            "p99_vs_ping_pong": e2e(0.99) / b.ping_pong.value_at_quantile(0.99) as f64,
            "p999_vs_ping_pong": e2e(0.999) / b.ping_pong.value_at_quantile(0.999) as f64,
        });
        let r = |k: &str| ratios[k].as_f64().unwrap_or(0.0);
        runner::outln!(
            "cluster / raw relay: throughput {:.3}, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
            r("throughput_vs_relay"),
            r("p50_vs_relay_rtt"),
            r("p99_vs_relay_rtt"),
            r("p999_vs_relay_rtt"),
        );
        runner::outln!(
            "cluster / raw ping-pong (1 hop): p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
            r("p50_vs_ping_pong"),
            r("p99_vs_ping_pong"),
            r("p999_vs_ping_pong"),
        );
        let us = |v: u64| v as f64 / 1000.0;
        if let Some(h) = &relay_loaded {
            let label = if a.relay_work.is_zero() {
                "raw relay at the run's rate"
            } else {
                "busy relay at the run's rate"
            };
            let q = |q: f64| h.value_at_quantile(q) as f64;
            runner::outln!(
                "{label:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                q(0.5) / 1000.0,
                q(0.99) / 1000.0,
                q(0.999) / 1000.0,
                us(h.max())
            );
            let idle = |q: f64| b.relay_rtt.value_at_quantile(q) as f64;
            let at_rate = [
                ("p50_vs_relay_at_rate", e2e(0.5) / q(0.5)),
                ("p99_vs_relay_at_rate", e2e(0.99) / q(0.99)),
                ("p999_vs_relay_at_rate", e2e(0.999) / q(0.999)),
                ("relay_at_rate_p99_vs_idle", q(0.99) / idle(0.99)),
                ("relay_at_rate_p999_vs_idle", q(0.999) / idle(0.999)),
            ];
            let [p50, p99, p999, idle99, idle999] = at_rate.map(|(_, v)| v);
            if !a.relay_work.is_zero() {
                runner::outln!("(the relay busy {:?} a frame)", a.relay_work);
            }
            runner::outln!("cluster / {label}: p50 {p50:.2}x, p99 {p99:.2}x, p99.9 {p999:.2}x");
            runner::outln!("{label} / idle relay: p99 {idle99:.2}x, p99.9 {idle999:.2}x");
            for (k, v) in at_rate {
                ratios[k] = v.into();
            }
        }
        summary["baseline"] = serde_json::json!({
            "ping_pong_p50_ms": us(b.ping_pong.value_at_quantile(0.5)),
            "ping_pong_p99_ms": us(b.ping_pong.value_at_quantile(0.99)),
            "ping_pong_p999_ms": us(b.ping_pong.value_at_quantile(0.999)),
            "relay_rtt_p50_ms": us(b.relay_rtt.value_at_quantile(0.5)),
            "relay_rtt_p99_ms": us(b.relay_rtt.value_at_quantile(0.99)),
            "relay_rtt_p999_ms": us(b.relay_rtt.value_at_quantile(0.999)),
            "relay_frames_per_s": b.relay_frames_per_s,
        });
        if let Some(h) = &relay_loaded {
            summary["baseline"]["relay_at_rate_p50_ms"] = us(h.value_at_quantile(0.5)).into();
            summary["baseline"]["relay_at_rate_p99_ms"] = us(h.value_at_quantile(0.99)).into();
            summary["baseline"]["relay_at_rate_p999_ms"] = us(h.value_at_quantile(0.999)).into();
            summary["baseline"]["relay_at_rate_max_ms"] = us(h.max()).into();
            summary["baseline"]["relay_at_rate_work_ns"] = (a.relay_work.as_nanos() as u64).into();
        }
        summary["ratios"] = ratios;
    }
    if let Some(dir) = &a.report {
        report::clear_stale(dir)?;
        report::write(dir, &o, &command)?;
        if let Some(h) = &relay_loaded {
            report::write_hgrm(dir, "baseline_relay_at_rate", h)?;
        }
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n",
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        runner::outln!("report written to {}", dir.display());
    }
    if o.interrupted {
        eprintln!("loadgen: interrupted");
        return Ok(ExitCode::from(130));
    }
    // Failures the run did not ask for (a kind the workers refuse, a bad
    // argument, a program that fails) make it a failed run, not a result.
    let meant_to_fail = a.fail_fraction > 0.0 || matches!(a.kind.as_str(), "fail" | "mixed");
    if o.failed > 0 && !meant_to_fail {
        eprintln!(
            "loadgen: FAILED: {} of {} tasks failed, and none was meant to (the reasons are above)",
            o.failed, o.accepted
        );
        return Ok(ExitCode::FAILURE);
    }
    if o.failed_without_reason > 0 {
        eprintln!(
            "loadgen: FAILED: {} failed results do not say why",
            o.failed_without_reason
        );
        return Ok(ExitCode::FAILURE);
    }
    if o.lost > 0 || o.duplicated > 0 || o.unexpected > 0 {
        eprintln!(
            "loadgen: FAILED: {} lost (no result within --drain-timeout {:?} of the last submission), {} duplicated, {} unexpected results",
            o.lost, a.drain_timeout, o.duplicated, o.unexpected
        );
        return Ok(ExitCode::FAILURE);
    }
    if !a.warmup.is_zero() && o.e2e.is_empty() && o.ok + o.failed > 0 {
        eprintln!(
            "loadgen: FAILED: the run ended within its --warmup {:?}, so no latency was recorded: give more --tasks or a shorter --warmup",
            a.warmup
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some((sent, due)) = o.behind {
        eprintln!(
            "loadgen: the open loop fell behind --rate: it sent {sent} of the {due} tasks due, so its figures are not of that rate"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
