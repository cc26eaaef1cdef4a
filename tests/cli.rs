//! The `runner` command line: what people type, what they see, and the exit
//! status scripts rely on.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, Opts, Proc, BIN};

const PORT_BASE: u16 = 22000;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_prints_results_and_exits_non_zero_when_a_task_failed() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let master = c.addr.to_string();

    let (ok, out, err) = run(&[
        "submit", "--master", &master, "--count", "2", "--", "echo", "hello", "there",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("submitted 2 tasks"), "{out}");
    assert_eq!(
        out.matches("ok on w1 (1 attempt): hello there").count(),
        2,
        "{out}"
    );

    let (ok, out, _) = run(&[
        "submit",
        "--master",
        &master,
        "--retries",
        "1",
        "--",
        "fail",
        "boom",
    ]);
    assert!(!ok);
    assert!(out.contains("FAILED after 2 attempts"), "{out}");
    assert!(
        out.contains("attempt 1 on w1: boom") && out.contains("attempt 2 on w1: boom"),
        "{out}"
    );

    let (ok, out, err) = run(&[
        "submit", "--master", &master, "--json", "--wire", "json", "--", "echo", "x",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object per line");
    assert_eq!(
        (v["status"].as_str(), v["output"].as_str()),
        (Some("ok"), Some("x"))
    );
    let id = v["id"].as_u64().unwrap();
    assert!(
        err.contains(&format!("submitted 1 task (ids {id}..={id})")),
        "the ids on stderr, while the tasks run: {err}"
    );

    let (ok, out, _) = run(&["status", "--master", &master]);
    assert!(ok);
    assert!(
        out.contains("1 worker(s)") && out.lines().any(|l| l.starts_with("w1 ")),
        "{out}"
    );
    let (ok, out, _) = run(&["status", "--master", &master, "--histograms"]);
    assert!(ok);
    for name in [
        "queue_wait",
        "dispatch_to_result",
        "end_to_end",
        "heartbeat_rtt",
        "discovery_scan",
        "retry_delay",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && !l.ends_with('-')),
            "status --histograms shows {name} with samples:\n{out}"
        );
    }
    // No worker has failed: listed, with none yet.
    for name in ["failure_detection", "recovery"] {
        let row = out.lines().find(|l| l.starts_with(name));
        assert!(
            row.is_some_and(|l| l.split_whitespace().nth(1) == Some("0")),
            "status --histograms lists {name}:\n{out}"
        );
    }
    let (ok, out, _) = run(&["status", "--master", &master, "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["completed"].as_u64().unwrap() >= 3);
}

#[test]
fn bad_arguments_get_clear_errors_not_panics() {
    let long_id = "x".repeat(1025);
    for (args, needle) in [
        (
            &["submit", "--timeout=-3s", "--", "noop"][..],
            "not a duration",
        ),
        (
            &["submit", "--timeout", "soon", "--", "noop"],
            "write e.g. 500ms",
        ),
        (
            &[
                "submit",
                "--retries",
                "101",
                "--master",
                "127.0.0.1:1",
                "--",
                "noop",
            ],
            "101 is not in 0..=100",
        ),
        (
            &[
                "submit",
                "--timeout",
                "0s",
                "--master",
                "127.0.0.1:1",
                "--",
                "noop",
            ],
            "must be more than 0",
        ),
        (
            &["submit", "--master", "127.0.0.1:1", "--", "exec"],
            "exec needs a program",
        ),
        (&["master", "--scan", "5100-5000"], "bad port range"),
        (&["master", "--wire", "xml"], "invalid value 'xml'"),
        (
            &["master", "--heartbeat", "2s", "--worker-timeout", "1s"],
            "must be longer than --heartbeat",
        ),
        (&["master", "--bind", "0.0.0.0"], "without a shared secret"),
        (
            &["worker", "--heartbeat", "0s"],
            "\"0s\" must be more than zero",
        ),
        (
            &["submit", "--priority", "-1", "--", "noop"],
            "-1 is not in 0..=255",
        ),
        (
            &["submit", "--timeout", "-1s", "--", "noop"],
            "\"-1s\" is not a duration",
        ),
        (
            &["master", "--scan-interval", "0ms"],
            "must be more than zero",
        ),
        (
            &["master", "--handshake-timeout", "0s"],
            "must be more than zero",
        ),
        (&["worker", "--slots", "0"], "0 is not in 1.."),
        (&["submit", "--count", "0", "--", "noop"], "0 is not in 1.."),
        (&["worker", "--id", " "], "must not be empty"),
        (
            &["worker", "--id", &long_id],
            "nor above 1024 bytes: its hello must fit",
        ),
        (
            &["worker", "--id", "a\nb"],
            "must not hold control characters",
        ),
        (
            &["worker", "--id", "w\u{202E}1"],
            "nor invisible ones that reorder or hide text",
        ),
        (&["cancel", "9-3"], "must not exceed the last"),
        (
            &["worker", "--heartbeat", "2s", "--master-timeout", "1s"],
            "must be longer than --heartbeat",
        ),
        (&["master", "--scan-hosts", ""], "an empty host name"),
        (
            &["master", "--scan-hosts", "node1,node2:5000"],
            "no port: the master scans the --scan ports",
        ),
        (&["demo", "--workers", "0"], "0 is not in 1..=50"),
        (&["demo", "--tasks", "5"], "5 is not in 20..=100000"),
        (
            &["submit", "--master", "127.0.0.1:1", "--", ""],
            "the task's kind is empty",
        ),
        (&["results", "seven"], "expected a task id like 7"),
        (&["status", "--master", "127.0.0.1"], "expected HOST:PORT"),
        (
            &["results", "--master", "127.0.0.1:99999", "7"],
            "expected HOST:PORT",
        ),
        (
            &["master", "--journal", "j", "--journal-compact-at", "100"],
            "at least 4096",
        ),
        (
            &["submit", "--master", "127.0.0.1:1", "--", "noop"],
            "cannot connect to 127.0.0.1:1",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // What was asked is wrong: 2, as clap's own errors; what happened
        // went wrong (no master there): 1.
        let code = if needle.starts_with("cannot connect") {
            1
        } else {
            2
        };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    }
}

#[test]
fn a_refused_value_too_long_to_echo_is_named_by_its_start_and_length() {
    let reason = "x".repeat(100_000);
    let out = Command::new(BIN)
        .args(["cancel", "--reason", &reason, "1"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.len() < 1000, "{} bytes of error", err.len());
    assert!(
        err.contains("(100000 bytes) for '--reason <REASON>'") && err.contains("at most"),
        "{err}"
    );
}

#[test]
fn a_second_node_of_one_name_in_one_log_dir_logs_to_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().to_str().unwrap();
    let block = support::port_block(PORT_BASE);
    let start = |port: u16| {
        let port = port.to_string();
        let mut m = Proc::spawn(
            "master",
            &[
                "master",
                "--log-dir",
                logs,
                "--port",
                &port,
                "--scan",
                "1-1",
            ],
        );
        m.wait_line(Duration::from_secs(10), |l| {
            l.starts_with("master listening on ")
        });
        m
    };
    let _first = start(block);
    let mut second = start(block + 1);
    let own = dir.path().join(format!("master.{}.log", second.child.id()));
    let told = format!("this one logs to {}", own.display());
    let warned = |l: &str| l.contains("another node named master is running with its log in");
    if !second.seen.iter().any(|l| warned(l)) {
        second.wait_line(Duration::from_secs(10), warned);
    }
    assert!(
        second.seen.iter().any(|l| l.contains(&told)),
        "{:?}",
        second.seen
    );
    // Each file has one master's lines only.
    let listening = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches("master listening")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listening(&own) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in {}",
            own.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listening(&dir.path().join("master.log")), 1);
    assert_eq!(listening(&own), 1);
}

#[test]
fn a_workers_log_stays_in_the_log_dir_whatever_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let block = support::port_block(PORT_BASE);
    let range = format!("{}-{}", block, block + 5);
    let mut w = Proc::spawn(
        "w",
        &[
            "worker",
            "--log-dir",
            logs.to_str().unwrap(),
            "--id",
            "../esc/a",
            "--port-range",
            &range,
        ],
    );
    w.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
    assert!(logs.join("___esc_a.log").is_file());
    assert!(!dir.path().join("esc").exists());
}

#[test]
fn a_log_that_cannot_be_opened_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("master.log")).unwrap();
    let (ok, _, err) = run(&[
        "master",
        "--quiet",
        "--log-dir",
        dir.path().to_str().unwrap(),
        "--scan",
        "1-1",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot open the log"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_short_secret_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "short").unwrap();
    let out = Command::new(BIN)
        .args(["master", "--secret-file", f.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 are required"), "{err}");
    assert_eq!(out.status.code(), Some(2), "what was asked is wrong: {err}");
}

#[test]
fn help_teaches_each_subcommand() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for sub in [
        "demo", "master", "worker", "submit", "results", "status", "cancel",
    ] {
        assert!(out.contains(sub), "{out}");
    }
    let (_, out, _) = run(&["master", "--help"]);
    for flag in [
        "--port",
        "--scan",
        "--scan-hosts",
        "--scan-interval",
        "--heartbeat",
        "--worker-timeout",
        "--log-dir",
        "--wire",
        "--secret-file",
    ] {
        assert!(out.contains(flag), "master --help lacks {flag}");
    }
    let (_, out, _) = run(&["worker", "--help"]);
    for flag in [
        "--id",
        "--port-range",
        "--master",
        "--slots",
        "--master-timeout",
        "--allow-exec",
        "--log-dir",
    ] {
        assert!(out.contains(flag), "worker --help lacks {flag}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_find_a_local_master_without_its_port() {
    // A master on the default ports (4999 and up), scanning nothing; a worker
    // dials it; `runner submit` is told nothing.
    let mut m = Proc::spawn("master", &["master", "--quiet", "--scan", "1-1"]);
    let line = m.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("master listening on ")
    });
    let addr = line.trim_start_matches("master listening on ").to_string();
    let block = support::port_block(PORT_BASE);
    let range = format!("{}-{}", block, block + 10);
    let mut w = Proc::spawn(
        "w",
        &[
            "worker",
            "--quiet",
            "--id",
            "local-w",
            "--port-range",
            &range,
            "--master",
            &addr,
        ],
    );
    w.wait_line(Duration::from_secs(10), |l| l.contains("listening on"));
    let out = tokio::task::spawn_blocking(|| run(&["submit", "--", "echo", "found you"]))
        .await
        .unwrap();
    assert!(out.0, "{}{}", out.1, out.2);
    assert!(
        out.1.contains("ok on local-w (1 attempt): found you"),
        "{}",
        out.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_submit_leaves_its_results_for_a_later_fetch_even_without_a_journal() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let master = c.addr.to_string();
    // Instant tasks: they finish while the detached client is still
    // connected, and their results must not go to it.
    let (ok, out, err) = run(&[
        "submit", "--master", &master, "--detach", "--json", "--count", "3", "--", "echo", "later",
    ]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let first = v["first_id"].as_u64().unwrap();
    let range = format!("{first}..={}", first + 2);
    let (ok, out, err) = run(&["results", "--master", &master, &range]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.matches("ok on w1 (1 attempt): later").count(),
        3,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_a_client_received_are_acknowledged_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    let journal_arg = format!("--journal={}", journal.display());
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &[&journal_arg],
            ..Opts::default()
        },
    )
    .await;
    let master = c.addr.to_string();
    let (ok, out, err) = run(&[
        "submit", "--master", &master, "--json", "--count", "3", "--", "echo", "once",
    ]);
    assert!(ok, "{out}{err}");
    let ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{out}");
    // Acknowledged, so forgotten: a fetch finds nothing to hand out again.
    let mut args = vec!["results", "--master", &master, "--reconnect", "1s"];
    args.extend(ids.iter().map(String::as_str));
    let (ok, out, _) = run(&args);
    assert!(!ok);
    assert_eq!(out.matches("UNKNOWN").count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_below_a_millisecond_rounds_up_rather_than_meaning_none() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let master = c.addr.to_string();
    let (ok, out, _) = run(&[
        "submit",
        "--master",
        &master,
        "--timeout",
        "900us",
        "--retries",
        "0",
        "--",
        "sleep",
        "3000",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("timed out after 1 ms"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_prints_what_it_did_and_exits_non_zero_for_unknown_ids() {
    // No worker: the tasks stay queued until cancelled.
    let c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            ..Opts::default()
        },
    );
    let master = c.addr.to_string();
    let (ok, out, err) = run(&[
        "submit", "--master", &master, "--detach", "--json", "--count", "3", "--", "noop",
    ]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let first = v["first_id"].as_u64().unwrap();
    let two = format!("{first}-{}", first + 1);
    let (ok, out, err) = run(&["cancel", "--master", &master, "--reason", "typo", &two]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("cancelled (2): {two}"));

    let (ok, out, err) = run(&["results", "--master", &master, &two]);
    assert!(!ok, "cancelled tasks did not succeed: {out}{err}");
    assert_eq!(out.matches("CANCELLED before it ran").count(), 2, "{out}");
    assert!(
        out.contains(": typo"),
        "the reason reaches the results: {out}"
    );

    let never = (first + 1_000_000).to_string();
    let (ok, out, err) = run(&["cancel", "--master", &master, &first.to_string(), &never]);
    assert!(!ok, "an unknown id is an error: {out}{err}");
    assert!(
        out.contains("already finished, left as they were (1)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("unknown to this master (1): {never}")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_submit_says_which_results_are_due_and_how_to_fetch_them() {
    // No worker: nothing finishes.
    let c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            ..Opts::default()
        },
    );
    let master = c.addr.to_string();
    let mut p = Proc::spawn(
        "submit",
        &["submit", "--master", &master, "--count", "3", "--", "noop"],
    );
    let line = p.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("submitted 3 tasks")
    });
    let (first, last) = line
        .trim_start_matches("submitted 3 tasks (ids ")
        .trim_end_matches(')')
        .split_once("..=")
        .unwrap();
    p.signal(libc::SIGINT);
    let hint = p.wait_line(Duration::from_secs(10), |l| l.contains("interrupted"));
    assert!(
        hint.contains("3 of 3 results still due")
            && hint.contains(&format!("runner results --master {master} {first}-{last}")),
        "{hint}"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(130));
}

/// Interrupted while it still sends, a submit stops sending and names the
/// ids the master took: they run, and nothing else tells the user them.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_interrupted_while_sending_names_the_tasks_already_accepted() {
    let c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            ..Opts::default()
        },
    );
    let master = c.addr.to_string();
    let client = c.client().await;
    let mut p = Proc::spawn(
        "submit",
        &[
            "submit", "--master", &master, "--detach", "--count", "5000000", "--", "noop",
        ],
    );
    c.wait_status(&client, Duration::from_secs(20), "tasks accepted", |s| {
        s.submitted > 0
    })
    .await;
    p.signal(libc::SIGINT);
    let hint = p.wait_line(Duration::from_secs(20), |l| l.contains("interrupted"));
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(130));
    let (count, ranges) = hint
        .split_once("interrupted while submitting: ")
        .and_then(|(_, rest)| rest.split_once(" of 5000000 tasks were accepted"))
        .map(|(n, rest)| {
            let ranges = rest.rsplit(' ').next().unwrap().to_string();
            (n.parse::<u64>().unwrap(), ranges)
        })
        .unwrap_or_else(|| panic!("{hint}"));
    assert!(
        hint.contains(&format!("runner results --master {master} ")),
        "{hint}"
    );
    let submitted = client.status(false).await.unwrap().submitted;
    assert!(count > 0 && count < 5_000_000, "{hint}");
    assert_eq!(count, submitted, "every accepted task is named: {hint}");
    let named: u64 = ranges
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum();
    assert_eq!(named, count, "{hint}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_output_cut_at_the_limit_says_so() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    let master = c.addr.to_string();
    let (ok, out, err) = run(&[
        "submit",
        "--master",
        &master,
        "--",
        "exec",
        "sh",
        "-c",
        "head -c 2000000 /dev/zero | tr '\\0' x",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.trim_end()
            .ends_with("[stdout cut at 1024 KiB; the rest was not kept]"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
}

/// Runs `runner demo` on ports of its own with `extra` arguments and
/// `env`, and with a listener that never answers on the last of its
/// workers' ports if `silent_port`; returns what it printed.
fn demo(extra: &[&str], env: &[(&str, &str)], silent_port: bool) -> String {
    let block = support::port_block(PORT_BASE);
    let _silent = silent_port
        .then(|| std::net::TcpListener::bind(("127.0.0.1", block + support::BLOCK - 1)).unwrap());
    let logs = tempfile::tempdir().unwrap();
    let port = block.to_string();
    let workers = format!("{}-{}", block + 1, block + support::BLOCK - 1);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "demo",
        "--port",
        &port,
        "--worker-ports",
        &workers,
        "--log-dir",
    ])
    .arg(logs.path())
    .args(extra)
    .env_remove(runner::proto::handshake::SECRET_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{said}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// The README's first command: the demo runs its mix, stops the master,
/// and its workers end for want of one, with the status that says so.
#[test]
fn the_demo_runs_its_mix_and_every_node_ends() {
    let said = demo(&[], &[], false);
    assert!(said.contains("master exited (exit status: 0)"), "{said}");
    for w in 1..=3 {
        assert!(
            said.contains(&format!("worker-{w} exited (exit status: 3)")),
            "{said}"
        );
    }
}

/// With a secret (here from the environment) every node of the demo and
/// its own client authenticate.
#[test]
fn the_demo_runs_with_a_secret() {
    let said = demo(
        &["--wire", "json", "--workers", "1"],
        &[(
            runner::proto::handshake::SECRET_ENV,
            "demo-secret-of-enough-bytes",
        )],
        false,
    );
    assert!(said.contains("worker-1 exited (exit status: 3)"), "{said}");
}

/// A listener in the workers' range that takes connections and never
/// answers holds each probe of it to the handshake deadline; the scan
/// rounds go on all the same, and find the workers well within their
/// master-timeout (the demo's is 2 s).
#[test]
fn a_silent_listener_in_the_scan_range_does_not_hold_discovery_back() {
    let said = demo(&["--workers", "2"], &[], true);
    assert!(said.contains("worker-2 exited (exit status: 3)"), "{said}");
}
