//! The load generator end to end: it starts its own cluster, runs a small
//! load with a failing fraction, checks exactly-once delivery and writes
//! every report file.

/// What a load generator run left: its stdout and, with a report
/// directory, its `summary.json`.
struct Run {
    stdout: String,
    summary: serde_json::Value,
    _dir: tempfile::TempDir,
    report: std::path::PathBuf,
}

/// Runs `loadgen ARGS --report DIR` and checks that it exited 0 (nothing
/// lost or duplicated, every failure with its reason).
fn loadgen(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(report.join("summary.json"))
        .map(|t| serde_json::from_str(&t).expect("summary.json is JSON"))
        .unwrap_or(serde_json::Value::Null);
    Run {
        stdout,
        summary,
        _dir: dir,
        report,
    }
}

#[test]
fn a_small_run_writes_every_report_and_exits_zero_when_nothing_is_lost() {
    let run = loadgen(&[
        "--tasks",
        "3000",
        "--concurrency",
        "200",
        "--batch",
        "64",
        "--fail-fraction",
        "0.1",
        "--quiet",
    ]);
    let (stdout, report, summary) = (&run.stdout, &run.report, &run.summary);
    assert!(
        stdout.contains("lost / duplicated / unexpected      0 / 0 / 0"),
        "{stdout}"
    );
    for f in [
        "client_end_to_end.hgrm",
        "client_end_to_end.hlog",
        "master_end_to_end.hgrm",
        "master_queue_wait.hgrm",
        "summary.json",
        "summary.csv",
        "latency.svg",
    ] {
        assert!(report.join(f).exists(), "{f} written");
    }
    assert_eq!(summary["accepted"], 3000);
    assert_eq!(
        summary["failed"], 300,
        "the failing fraction fails, with no retries"
    );
    assert_eq!(summary["ok"], 2700);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicated"], 0);
    assert!(summary["machine"]["cores"].as_u64().unwrap() >= 1);
}

/// The open loop sends on a schedule (never ahead of it) and measures each
/// task from when it was due, recording how late it was sent; after a
/// warm-up, the client's and the master's histograms both cover only the
/// recorded stretch.
#[test]
fn an_open_loop_run_keeps_to_its_schedule_and_records_every_tasks_submit_lag() {
    let run = loadgen(&[
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--quiet",
    ]);
    let (stdout, summary) = (&run.stdout, &run.summary);
    assert!(stdout.contains("client submit lag"), "{stdout}");
    assert!(run.report.join("client_submit_lag.hgrm").exists());
    let accepted = summary["accepted"].as_u64().unwrap();
    // Due by the 2 s deadline: 2 s x 2000/s, plus the task due at 0.
    assert!(
        accepted > 0 && accepted <= 4001,
        "{accepted} tasks sent in 2 s at 2000/s"
    );
    assert_eq!(summary["lost"], 0);
    let latency = &summary["latency"];
    let recorded = latency["client_end_to_end"]["count"].as_u64().unwrap();
    assert!(
        recorded > 0 && recorded < accepted,
        "{recorded} of {accepted} recorded"
    );
    assert_eq!(latency["client_submit_lag"]["count"], recorded);
    // The master's histogram is read shortly before the warm-up ends and
    // subtracted: it holds every recorded task, and not the first second's.
    let master = latency["master_end_to_end"]["count"].as_u64().unwrap();
    assert!(
        master >= recorded && master < accepted,
        "master {master}, client {recorded}, accepted {accepted}"
    );
}

/// With --baseline an open loop also drives the raw relay at its own rate,
/// as long and with the same warm-up, and reports the run against it: every
/// frame due after the warm-up is recorded, from when it was due.
#[test]
fn an_open_loop_with_baselines_also_measures_the_relay_at_the_runs_rate() {
    relay_at_the_runs_rate_records_every_frame_due_after_the_warmup("100us");
}

/// The same without the pacer (`--pace 0s`): the relay is paced at the load
/// generator's ticker, as the run is.
#[test]
fn an_open_loop_without_a_pacer_measures_the_relay_at_its_rate_too() {
    relay_at_the_runs_rate_records_every_frame_due_after_the_warmup("0s");
}

fn relay_at_the_runs_rate_records_every_frame_due_after_the_warmup(pace: &str) {
    let run = loadgen(&[
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--pace",
        pace,
        "--baseline",
        "--quiet",
    ]);
    assert!(
        run.stdout.contains("raw relay at the run's rate"),
        "{}",
        run.stdout
    );
    let base = &run.summary["baseline"];
    let p99 = base["relay_at_rate_p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 <= base["relay_at_rate_max_ms"].as_f64().unwrap());
    assert!(
        run.summary["ratios"]["p99_vs_relay_at_rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let hgrm = std::fs::read_to_string(run.report.join("baseline_relay_at_rate.hgrm")).unwrap();
    let count: u64 = hgrm
        .lines()
        .find_map(|l| l.split("Total count    =").nth(1))
        .and_then(|v| v.trim_end_matches(']').trim().parse().ok())
        .unwrap_or_else(|| panic!("no total count in {hgrm}"));
    // Due in the half second after the warm-up at 2000/s, as the run's own
    // recorded tasks are.
    assert!((999..=1001).contains(&count), "{count} frames recorded");
    let run_recorded = run.summary["latency"]["client_end_to_end"]["count"]
        .as_u64()
        .unwrap();
    // The run may fall behind its schedule on a busy machine (a debug
    // build, tests in parallel) and then says so; it never records more.
    assert!(
        run_recorded <= count + 2,
        "the relay recorded {count} frames, the run {run_recorded} tasks"
    );
    assert_eq!(base["relay_at_rate_work_ns"], 0);
}

/// Tasks of a megabyte each, more than a frame holds in a batch and more
/// than the connections buffer both ways: batches are cut by bytes, a
/// worker holds a bounded payload, and a client busy writing its batches is
/// not taken for one that stopped reading. Both wires.
#[test]
fn tasks_of_a_megabyte_each_run_end_to_end_on_both_wires() {
    for wire in ["bincode", "json"] {
        let run = loadgen(&[
            "--kind",
            "echo",
            "--payload-bytes",
            "1000000",
            "--tasks",
            "100",
            "--concurrency",
            "8",
            "--wire",
            wire,
            "--drain-timeout",
            "30s",
            "--quiet",
        ]);
        assert_eq!(run.summary["ok"], 100, "{wire}: {}", run.stdout);
        assert_eq!(run.summary["lost"], 0, "{wire}");
    }
}

/// With no worker, --submit-only fills the master's queue: acceptance, not
/// results, frees the window.
#[test]
fn submit_only_fills_a_master_with_no_workers_and_stops() {
    let run = loadgen(&[
        "--submit-only",
        "--spawn-workers",
        "0",
        "--tasks",
        "50000",
        "--concurrency",
        "1000",
        "--quiet",
    ]);
    assert_eq!(run.summary["accepted"], 50000, "{}", run.stdout);
    assert_eq!(run.summary["lost"], 0);
}

/// --relay-work keeps the relay at the run's rate busy per frame, a stand-in
/// for a master that costs that much CPU per task: 1 ms a frame at 200/s
/// leaves it no frame faster than that.
#[test]
fn relay_work_makes_the_relay_at_the_runs_rate_spend_it_on_every_frame() {
    let run = loadgen(&[
        "--rate",
        "200",
        "--duration",
        "1s",
        "--baseline",
        "--relay-work",
        "1ms",
        "--quiet",
    ]);
    let base = &run.summary["baseline"];
    assert_eq!(base["relay_at_rate_work_ns"], 1_000_000);
    let p50 = base["relay_at_rate_p50_ms"].as_f64().unwrap();
    assert!(p50 >= 1.0, "p50 {p50} ms with 1 ms of work a frame");
}

/// More fake workers than a master lets one address hold in their handshake
/// at once (128) all join: the pool paces its connections instead of being
/// refused as `busy`.
#[test]
fn a_pool_of_fake_workers_larger_than_the_per_address_handshake_limit_all_register() {
    let run = loadgen(&["--fake-workers", "600", "--duration", "1s"]);
    assert!(
        run.stdout.contains("fake workers registered      600"),
        "{}",
        run.stdout
    );
    assert_eq!(run.summary["registered"], 600, "the report says so too");
}

/// FAULTS.md's chaos soak at a size CI affords (results/chaos.md records
/// 200,000 tasks): mixed task kinds while workers are killed -9, stopped and
/// resumed, and started at random, with a master that drops a silent
/// worker after 1 s. Lost, duplicated and unexpected results are 0, and
/// every failure says why (loadgen exits 1 otherwise).
#[test]
fn chaos_soak_of_mixed_tasks_under_kills_stops_and_new_workers_loses_nothing() {
    let summary = loadgen(&[
        "--tasks",
        "30000",
        "--concurrency",
        "2000",
        "--batch",
        "100",
        "--kind",
        "mixed",
        "--spawn-workers",
        "3",
        "--worker-slots",
        "4",
        "--chaos",
        "mixed",
        "--chaos-every",
        "200ms",
        "--master-arg=--worker-timeout=1s",
        "--master-arg=--heartbeat=200ms",
        "--drain-timeout",
        "60s",
        "--quiet",
    ])
    .summary;
    assert_eq!(summary["accepted"], 30000);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicated"], 0);
    assert_eq!(summary["unexpected"], 0);
    let failed = summary["failed"].as_u64().unwrap();
    // The failing sixth fails; a task can also run out of retries when its
    // workers keep dying under it. Each failure carries its reasons.
    assert!(failed >= 5000, "{summary}");
    assert_eq!(summary["ok"].as_u64().unwrap() + failed, 30000);
    assert_eq!(summary["failed_without_reason"], 0);
    let chaos = summary["chaos"].as_array().unwrap();
    assert!(chaos.len() >= 3, "{summary}");
    let broken = chaos.iter().filter(|e| e["what"] != "added").count();
    assert_eq!(
        summary["chaos_events"].as_u64().unwrap() as usize,
        broken,
        "workers killed or stopped, new ones not counted: {summary}"
    );
}

#[test]
fn a_realtime_open_loop_runs_its_cluster_under_realtime_and_loses_nothing() {
    let permitted = std::thread::spawn(|| runner::realtime::enter().is_ok())
        .join()
        .unwrap();
    if !permitted {
        eprintln!("skipped: this user may not use SCHED_FIFO");
        return;
    }
    let run = loadgen(&[
        "--rate",
        "20000",
        "--duration",
        "1s",
        "--realtime",
        "--quiet",
    ]);
    assert!(
        run.stdout
            .contains("lost / duplicated / unexpected      0 / 0 / 0"),
        "{}",
        run.stdout
    );
    let accepted = run.summary["accepted"].as_u64().unwrap();
    assert!(accepted >= 19_000, "a second at 20k/s: {}", run.summary);
    assert_eq!(run.summary["ok"], accepted, "{}", run.summary);
}

/// A master that scans nothing, on `port` or the next free one, with
/// `extra` arguments; and the address it listens on.
fn master_without_workers(port: u16, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut master = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "master",
            "--quiet",
            "--scan",
            "1-1",
            "--port",
            &port.to_string(),
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the master starts");
    let mut line = String::new();
    std::io::BufReader::new(master.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("master listening on ")
        .to_string();
    (master, addr)
}

#[test]
fn tasks_left_without_a_result_fail_the_run_with_a_non_zero_exit() {
    // A master with no workers accepts the tasks and never runs them.
    let (mut master, addr) = master_without_workers(26990, &[]);
    let addr = addr.as_str();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--master", addr, "--tasks", "10", "--drain-timeout", "1s"])
        .arg("--quiet")
        .output()
        .expect("loadgen runs");
    let _ = master.kill();
    let _ = master.wait();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("lost / duplicated / unexpected     10 / 0 / 0"),
        "{stdout}"
    );
    assert!(stderr.contains("FAILED: 10 lost"), "{stderr}");
}

/// A master with a shared secret can be driven: `--secret-file`, or
/// RUNNER_SECRET as for runner.
#[test]
fn loadgen_drives_a_master_that_has_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret of more than sixteen bytes\n").unwrap();
    let secret = secret.to_str().unwrap();
    // No workers: the tasks are accepted (the handshake passed) and never run.
    let (mut master, addr) = master_without_workers(26980, &["--secret-file", secret]);
    let addr = addr.as_str();
    let run = |extra: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
        cmd.args(["--master", addr, "--tasks", "5", "--drain-timeout", "1s"])
            .args(extra)
            .arg("--quiet")
            .env_remove("RUNNER_SECRET");
        if let Some(v) = env {
            cmd.env("RUNNER_SECRET", v);
        }
        let out = cmd.output().expect("loadgen runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let with_file = run(&["--secret-file", secret], None);
    let with_env = run(&[], Some("a secret of more than sixteen bytes"));
    let without = run(&[], None);
    let _ = master.kill();
    let _ = master.wait();
    for (code, stdout) in [&with_file, &with_env] {
        assert!(
            stdout.contains("accepted / ok / failed            5 / 0 / 0"),
            "{code:?} {stdout}"
        );
    }
    assert!(!without.1.contains("accepted"), "{without:?}");
    assert_ne!(without.0, Some(0));
}

#[test]
fn arguments_that_cannot_work_are_refused_with_the_reason_before_any_load() {
    for (args, code, needle) in [
        (
            &["--kind", "sleep", "--tasks", "10"][..],
            2,
            "--kind sleep needs --arg",
        ),
        (
            &["--kind", "spin", "--tasks", "10"],
            2,
            "--kind spin needs --arg",
        ),
        (
            &[
                "--master",
                "127.0.0.1:1",
                "--chaos",
                "kill",
                "--tasks",
                "10",
            ],
            2,
            "cannot be used with",
        ),
        (
            &[
                "--master",
                "127.0.0.1:1",
                "--spawn-workers",
                "4",
                "--tasks",
                "1",
            ],
            2,
            "cannot be used with",
        ),
        (
            &["--relay-work", "1us", "--tasks", "10"],
            2,
            "required arguments were not provided",
        ),
        (
            &[
                "--rate",
                "2000",
                "--duration",
                "1s",
                "--baseline",
                "--relay-work",
                "1ms",
            ],
            2,
            "the relay could not keep up",
        ),
        (&["--concurrency", "0", "--tasks", "10"], 2, "at least 1"),
        (&["--tasks", "0"], 2, "--tasks must be at least 1"),
        (&["--duration", "0s"], 2, "--duration must be more than 0"),
        (
            &["--payload-bytes", "18446744073709551615", "--tasks", "1"],
            2,
            "above the protocol's limit",
        ),
        (&["--kind", "bogus", "--tasks", "1"], 2, "unknown --kind"),
        (
            &["--kind", "sleep", "--arg", "abc", "--tasks", "1"],
            2,
            "whole number of milliseconds",
        ),
        (&["--kind", "stall", "--tasks", "1"], 2, "--task-timeout"),
        (
            &["--kind", "mixed", "--fail-fraction", "0.5", "--tasks", "1"],
            2,
            "would be ignored",
        ),
        (
            &["--kind", "noop", "--arg", "3", "--tasks", "1"],
            2,
            "takes no --arg",
        ),
        (
            &["--rate", "100", "--concurrency", "5", "--duration", "1s"],
            2,
            "give one of them",
        ),
        (&["--chaos-every", "1s", "--tasks", "1"], 2, "needs --chaos"),
        (
            &["--chaos", "kill", "--chaos-every", "0s", "--tasks", "1"],
            2,
            "at least 100ms",
        ),
        (&["--pace", "1ms", "--tasks", "1"], 2, "give --rate too"),
        (
            &["--warmup", "2s", "--duration", "1s", "--rate", "10"],
            2,
            "nothing would be recorded",
        ),
        (
            &["--spawn-workers", "0", "--tasks", "1"],
            2,
            "no task would run",
        ),
        (
            &["--fake-workers", "10", "--tasks", "1"],
            2,
            "--tasks would be ignored",
        ),
        (
            &["--rate", "-5", "--duration", "1s"],
            2,
            "--rate must be a positive",
        ),
        (
            &["--report", "/dev/null", "--tasks", "1"],
            2,
            "--report /dev/null",
        ),
        (
            &[
                "--kind",
                "sleep",
                "--arg",
                "1",
                "--payload-bytes",
                "100",
                "--tasks",
                "1",
            ],
            2,
            "payload is its --arg",
        ),
        (
            &["--batch", "0", "--tasks", "1"],
            2,
            "--batch must be from 1",
        ),
        (
            &["--fail-fraction", "2", "--tasks", "1"],
            2,
            "--fail-fraction must be from 0 to 1",
        ),
        (&["--kind", "noop"], 2, "give --tasks N or --duration D"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .output()
            .expect("loadgen runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The load generator's children (its master and workers), from
/// `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Starts an open loop long enough to be cut short; returns it once its
/// cluster (master and 2 workers) is up (the caller waits for it). The load
/// generator watches for signals before it starts its cluster.
#[allow(clippy::zombie_processes)]
fn long_open_loop() -> (std::process::Child, Vec<i32>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--rate", "2000", "--duration", "60s", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen runs");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let kids = children_of(child.id());
        if kids.len() >= 3 {
            return (child, kids);
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("its cluster never came up");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_gone(pids: &[i32], what: &str) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !pids.iter().all(|p| gone(*p)) {
        assert!(
            std::time::Instant::now() < end,
            "{what}: {pids:?} still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGTERM (or Ctrl-C's SIGINT) stops the load, reports what ran with exit
/// status 130, and takes the cluster it started along.
#[test]
fn an_interrupted_run_reports_what_ran_and_leaves_no_cluster_behind() {
    let (child, kids) = long_open_loop();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");
    assert!(
        stdout.contains("lost / duplicated / unexpected"),
        "{stdout}"
    );
    wait_gone(&kids, "the cluster after SIGTERM");
}

/// Even `kill -9` of the load generator takes its cluster along: a master
/// and workers left behind would hold their ports and answer other
/// masters' scans.
#[test]
fn a_killed_load_generator_leaves_no_cluster_behind() {
    let (mut child, kids) = long_open_loop();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&kids, "the cluster after kill -9");
}

/// A run that fails to start (here: no master listening) leaves the report
/// already in its --report directory as it was.
#[test]
fn a_run_that_fails_to_start_leaves_an_earlier_report_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    std::fs::write(&summary, "{\"earlier\": true}\n").unwrap();
    std::fs::write(dir.path().join("client_end_to_end.hgrm"), "earlier\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--master",
            "127.0.0.1:1",
            "--tasks",
            "10",
            "--quiet",
            "--report",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&summary).unwrap(),
        "{\"earlier\": true}\n"
    );
    assert!(dir.path().join("client_end_to_end.hgrm").exists());
}

/// Its summary piped into a reader that went away (`| head -1`) does not
/// end the run in a panic: the run finishes and exits as it would.
#[test]
fn a_summary_piped_to_a_reader_that_left_does_not_panic() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--tasks", "100", "--concurrency", "10", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An open loop that cannot send at its --rate says so and exits 3, and a
/// run that ends within its --warmup, having recorded nothing, exits 1:
/// neither passes for a result.
#[test]
fn a_run_that_could_not_measure_what_was_asked_exits_non_zero() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(args)
            .arg("--quiet")
            .output()
            .unwrap()
    };
    let behind = run(&["--rate", "1e9", "--duration", "500ms"]);
    let stderr = String::from_utf8_lossy(&behind.stderr);
    assert_eq!(behind.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("fell behind --rate"), "{stderr}");
    let within = run(&["--tasks", "100", "--concurrency", "10", "--warmup", "5s"]);
    let stderr = String::from_utf8_lossy(&within.stderr);
    assert_eq!(within.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("within its --warmup"), "{stderr}");
}
