//! The cluster as real processes of the built binary, on loopback: discovery,
//! worker loss (kill -9, SIGSTOP), master loss, priorities, timeouts, ports,
//! each over both wires where the wire matters.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use runner::proto::{NewTask, Payload, TaskStatus, Text, Wire};
use support::{collect, Cluster, Opts, Proc};

const PORT_BASE: u16 = 21000;

fn task(kind: &'static str, payload: &str, priority: u8, retries: u8, timeout_ms: u32) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: Payload::from(payload.to_string()),
        priority,
        retries,
        timeout_ms,
    }
}

async fn discovery_finds_workers_and_skips_a_foreign_listener(wire: Wire) {
    // A listener in the scanned range that is not a runner: it answers
    // every connection with an HTTP error and closes.
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            wire,
            ..Opts::default()
        },
    );
    let foreign = std::net::TcpListener::bind(("127.0.0.1", c.first_port + 1)).unwrap();
    std::thread::spawn(move || {
        for s in foreign.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    c.add_worker("w1", 1, &[]);
    c.add_worker("w2", 1, &[]);
    let client = c.client().await;
    let s = c
        .wait_status(
            &client,
            Duration::from_secs(10),
            "both workers registered",
            |s| s.workers.len() == 2,
        )
        .await;
    let ids: Vec<&str> = s.workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    let foreign_addr = format!("127.0.0.1:{}", c.first_port + 1);
    assert!(s.workers.iter().all(|w| w.addr.as_str() != foreign_addr));
    let log = c.master_log();
    assert!(
        log.lines()
            .any(|l| l.contains("skipping listener") && l.contains(&foreign_addr)),
        "the master says it skipped the foreign listener:\n{log}"
    );
}

both_wires!(discovery_finds_workers_and_skips_a_foreign_listener);

async fn fault_01_kill_9_of_a_worker_mid_task_loses_no_task_and_duplicates_none(wire: Wire) {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            slots: 2,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let ids = client
        .submit_batch((0..20).map(|_| task("sleep", "300", 128, 3, 0)).collect())
        .await
        .unwrap();
    // Wait until w1 holds work, then kill it.
    c.wait_busy(&client, "w1").await;
    let mut c = c;
    c.worker("w1").signal(libc::SIGKILL);
    c.wait_status(
        &client,
        Duration::from_secs(2),
        "w1 removed at once (closed connection)",
        |s| s.workers.len() == 1,
    )
    .await;
    let results = collect(&mut client, 20, Duration::from_secs(30)).await;
    assert_eq!(results.len(), 20);
    for id in ids {
        let r = &results[&id];
        assert_eq!(r.status, TaskStatus::Ok, "task {id}: {r:?}");
        for e in &r.errors {
            assert!(
                e.reason.contains("worker w1 lost: connection closed"),
                "{e:?}"
            );
        }
    }
    assert!(
        results.values().any(|r| !r.errors.is_empty()),
        "some task was re-run after the kill"
    );
}

both_wires!(fault_01_kill_9_of_a_worker_mid_task_loses_no_task_and_duplicates_none);

async fn fault_02_a_stopped_worker_is_removed_by_heartbeat_and_its_late_results_are_ignored(
    wire: Wire,
) {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            slots: 2,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let n = 10;
    client
        .submit_batch((0..n).map(|_| task("sleep", "400", 128, 3, 0)).collect())
        .await
        .unwrap();
    c.wait_busy(&client, "w1").await;
    c.worker("w1").signal(libc::SIGSTOP);
    let started = std::time::Instant::now();
    c.wait_status(
        &client,
        Duration::from_secs(5),
        "stopped worker removed",
        |s| s.workers.len() == 1,
    )
    .await;
    // worker-timeout 1 s + one 200 ms heartbeat, with room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "removed after {:?}",
        started.elapsed()
    );
    let results = collect(&mut client, n, Duration::from_secs(30)).await;
    assert!(results.values().all(|r| r.status == TaskStatus::Ok));
    let rerun: Vec<_> = results.values().filter(|r| !r.errors.is_empty()).collect();
    assert!(!rerun.is_empty());
    assert!(rerun
        .iter()
        .all(|r| r.errors[0].reason.contains("heartbeat lost") && r.worker.as_str() == "w2"));

    // Thaw it: it may come back (the scan finds it again), but whatever it
    // was running belongs to attempts given up on; nothing reaches the client.
    c.worker("w1").signal(libc::SIGCONT);
    c.wait_status(&client, Duration::from_secs(10), "w1 re-registered", |s| {
        s.workers.len() == 2
    })
    .await;
    let id = client
        .submit(task("echo", "marker", 128, 0, 0))
        .await
        .unwrap();
    let last = collect(&mut client, 1, Duration::from_secs(10)).await;
    assert!(
        last.contains_key(&id),
        "the next result is the marker, not a late one: {last:?}"
    );
}

async fn workers_terminate_themselves_when_the_master_is_killed(wire: Wire) {
    let (mut c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            master_timeout: "1s",
            wire,
            ..Opts::default()
        },
    )
    .await;
    c.master.signal(libc::SIGKILL);
    for w in &mut c.workers {
        let status = w.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(support::MASTER_TIMEOUT_EXIT),
            "{}: {status}",
            w.name
        );
        assert!(
            w.seen
                .iter()
                .any(|l| l.contains("terminating: no master for")),
            "{} says why: {:?}",
            w.name,
            w.seen
        );
    }
}

async fn priorities_are_honoured_when_slots_are_scarce(wire: Wire) {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            wire,
            ..Opts::default()
        },
    )
    .await;
    // Occupy the only slot, then queue low before high.
    let blocker = client
        .submit(task("sleep", "500", 128, 0, 0))
        .await
        .unwrap();
    c.wait_status(&client, Duration::from_secs(5), "blocker running", |s| {
        s.running == 1
    })
    .await;
    let low = client
        .submit_batch((0..5).map(|_| task("noop", "", 1, 0, 0)).collect())
        .await
        .unwrap();
    let high = client
        .submit_batch((0..5).map(|_| task("noop", "", 250, 0, 0)).collect())
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..11 {
        let r = tokio::time::timeout(Duration::from_secs(10), client.next_result())
            .await
            .unwrap()
            .unwrap();
        order.push(r.id);
    }
    let expected: Vec<u64> = std::iter::once(blocker).chain(high).chain(low).collect();
    assert_eq!(order, expected, "high before low, FIFO within each");
}

both_wires!(priorities_are_honoured_when_slots_are_scarce);

async fn fault_15_a_hung_task_is_killed_at_its_timeout_and_retried(wire: Wire) {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let id = client
        .submit(task("stall", "1", 128, 2, 500))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
    assert_eq!(r.attempts, 2);
    assert!(
        r.errors[0].reason.contains("timed out after 500 ms"),
        "{:?}",
        r.errors
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

both_wires!(fault_15_a_hung_task_is_killed_at_its_timeout_and_retried);

async fn a_task_out_of_retries_is_reported_failed_with_every_reason(wire: Wire) {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let id = client
        .submit(task("fail", "no such file", 128, 2, 0))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(r.status, TaskStatus::Failed);
    assert_eq!(r.attempts, 3);
    let attempts: Vec<u32> = r.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(r.errors.iter().all(|e| e.reason == "no such file"));
}

both_wires!(a_task_out_of_retries_is_reported_failed_with_every_reason);

/// `sleep soon` fails the same way on every attempt: its three retries
/// (and their back-off) would only delay the verdict.
async fn a_task_whose_input_its_kind_cannot_read_fails_at_once_without_retries(wire: Wire) {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let ids = client
        .submit_batch(vec![
            task("sleep", "soon", 128, 3, 0),
            task("flaky", "1", 128, 3, 0),
        ])
        .await
        .unwrap();
    let mut results = collect(&mut client, 2, Duration::from_secs(10)).await;
    let rejected = results.remove(&ids.start).unwrap();
    assert_eq!(rejected.status, TaskStatus::Failed);
    assert_eq!(rejected.attempts, 1);
    assert_eq!(rejected.errors.len(), 1);
    assert_eq!(
        rejected.errors[0].reason,
        "not retried, no attempt can succeed: sleep: payload \"soon\" is not a number of milliseconds"
    );
    // An ordinary failure in the same batch is still retried.
    let retried = results.remove(&(ids.start + 1)).unwrap();
    assert_eq!(retried.status, TaskStatus::Ok);
    assert_eq!(retried.attempts, 2);
}

both_wires!(a_task_whose_input_its_kind_cannot_read_fails_at_once_without_retries);

/// A lost worker's task runs again before the tasks submitted after it,
/// not behind the whole backlog of its priority.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_workers_task_runs_again_ahead_of_the_backlog_submitted_after_it() {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            slots: 1,
            ..Opts::default()
        },
    )
    .await;
    let first = client
        .submit(task("sleep", "1000", 128, 1, 0))
        .await
        .unwrap();
    let s = c
        .wait_status(
            &client,
            Duration::from_secs(10),
            "the first task out",
            |s| s.workers.iter().any(|w| w.in_flight > 0),
        )
        .await;
    let holder = s.workers.iter().find(|w| w.in_flight > 0).unwrap();
    let holder = holder.id.as_str().to_string();
    let backlog: Vec<u64> = client
        .submit_batch((0..30).map(|_| task("sleep", "100", 128, 0, 0)).collect())
        .await
        .unwrap()
        .collect();
    c.worker(&holder).signal(libc::SIGKILL);
    let mut before = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout_at(end, client.next_result())
            .await
            .expect("the first task's result in time")
            .expect("connection open");
        if r.id == first {
            assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
            break;
        }
        assert!(backlog.contains(&r.id));
        before += 1;
    }
    // The other worker was running one of the backlog when the first came
    // back, and may have finished one more before it; never all thirty.
    assert!(
        before <= 4,
        "{before} of the backlog ran before the lost task"
    );
}

/// One slot and four prefetched: the batch waits on the worker, and its
/// slot takes the tasks in the order they came, as the queue gave them.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_starts_waiting_attempts_in_the_order_they_came() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            master_args: &["--prefetch", "4"],
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order");
    let script = format!("echo $RUNNER_TASK_ID >> {}; sleep 0.05", log.display());
    let spec = serde_json::json!({ "argv": ["sh", "-c", script] }).to_string();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&log);
        let ids: Vec<u64> = client
            .submit_batch((0..5).map(|_| task("exec", &spec, 128, 0, 0)).collect())
            .await
            .unwrap()
            .collect();
        let results = collect(&mut client, 5, Duration::from_secs(10)).await;
        assert!(results.values().all(|r| r.status == TaskStatus::Ok));
        let order: Vec<u64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(order, ids);
    }
}

/// A cluster of a worker that allows `exec` ("execer", one slot) and one
/// that does not ("plain", two slots), with a client that has seen both.
/// Tasks wait 2 s for a kind's worker once its last has left.
async fn mixed_kinds_cluster(wire: Wire) -> (Cluster, runner::client::Client) {
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            wire,
            master_args: &["--kind-grace", "2s"],
            ..Opts::default()
        },
    );
    c.add_worker("plain", 2, &[]);
    c.add_worker("execer", 1, &["--allow-exec"]);
    let client = c.client().await;
    c.wait_workers(&client, 2).await;
    (c, client)
}

const EXEC_TRUE: &str = r#"{"argv":["true"]}"#;

/// With no retries, one `exec` task handed to "plain" would fail
/// (`unsupported`); every one runs, on "execer", while "plain" runs the
/// rest.
async fn tasks_of_a_kind_only_some_workers_run_go_to_those_workers(wire: Wire) {
    let (_c, mut client) = mixed_kinds_cluster(wire).await;
    let mut batch: Vec<NewTask> = (0..20)
        .map(|_| task("exec", EXEC_TRUE, 128, 0, 0))
        .collect();
    batch.extend((0..20).map(|_| task("sleep", "20", 128, 0, 0)));
    let ids = client.submit_batch(batch).await.unwrap();
    let results = collect(&mut client, 40, Duration::from_secs(20)).await;
    for (i, id) in ids.enumerate() {
        let r = &results[&id];
        assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
        if i < 20 {
            assert_eq!(r.worker.as_str(), "execer", "{r:?}");
        }
    }
    let sleeps_on_plain = results
        .values()
        .filter(|r| r.worker.as_str() == "plain")
        .count();
    assert!(sleeps_on_plain > 0, "plain ran none of the sleeps");
}

both_wires!(tasks_of_a_kind_only_some_workers_run_go_to_those_workers);

/// Occupies "execer" with a long `exec` task, then submits three more that
/// wait for it, set aside by "plain"; returns (the long one, the three).
async fn park_three_exec_tasks(c: &Cluster, client: &runner::client::Client) -> (u64, Vec<u64>) {
    let long = client
        .submit(task("exec", r#"{"argv":["sleep","30"]}"#, 128, 0, 0))
        .await
        .unwrap();
    c.wait_busy(client, "execer").await;
    let ids: Vec<u64> = client
        .submit_batch((0..3).map(|_| task("exec", EXEC_TRUE, 128, 0, 0)).collect())
        .await
        .unwrap()
        .collect();
    c.wait_status(
        client,
        Duration::from_secs(10),
        "three tasks waiting",
        |s| s.queues.iter().map(|q| q.depth).sum::<u64>() == 3,
    )
    .await;
    (long, ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_for_their_kinds_last_worker_fail_with_the_reason_after_the_grace() {
    let (mut c, mut client) = mixed_kinds_cluster(Wire::Bincode).await;
    let (long, waiting) = park_three_exec_tasks(&c, &client).await;
    c.worker("execer").signal(libc::SIGKILL);
    let killed = std::time::Instant::now();
    let lost = collect(&mut client, 1, Duration::from_secs(10)).await;
    assert_eq!(lost[&long].status, TaskStatus::Failed, "no retries");
    let results = collect(&mut client, 3, Duration::from_secs(15)).await;
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "they waited out the 2 s grace"
    );
    for id in waiting {
        let r = &results[&id];
        assert_eq!(r.status, TaskStatus::Failed, "{r:?}");
        assert_eq!(r.worker.as_str(), "plain", "{r:?}");
        assert!(r.errors[0].reason.contains("--allow-exec"), "{r:?}");
    }
}

/// The only `exec` worker is killed with tasks waiting for it; a new one
/// comes within the grace and runs them: none is spent on "plain".
#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_for_their_kind_run_on_a_worker_of_it_that_comes_within_the_grace() {
    let (mut c, mut client) = mixed_kinds_cluster(Wire::Bincode).await;
    let (long, waiting) = park_three_exec_tasks(&c, &client).await;
    c.worker("execer").signal(libc::SIGKILL);
    let lost = collect(&mut client, 1, Duration::from_secs(10)).await;
    assert_eq!(lost[&long].status, TaskStatus::Failed, "no retries");
    c.add_worker("execer-2", 1, &["--allow-exec"]);
    let results = collect(&mut client, 3, Duration::from_secs(10)).await;
    for id in waiting {
        let r = &results[&id];
        assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
        assert_eq!(r.worker.as_str(), "execer-2", "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_for_a_worker_of_their_kind_can_be_cancelled() {
    let (c, mut client) = mixed_kinds_cluster(Wire::Bincode).await;
    let (long, waiting) = park_three_exec_tasks(&c, &client).await;
    let report = client.cancel(waiting.clone(), "not needed").await.unwrap();
    assert_eq!(report.cancelled, waiting);
    let results = collect(&mut client, 3, Duration::from_secs(10)).await;
    for id in &waiting {
        assert_eq!(results[id].status, TaskStatus::Cancelled);
    }
    client.cancel(vec![long], "").await.unwrap();
    let s = c
        .wait_status(&client, Duration::from_secs(10), "nothing left", |s| {
            s.running == 0
        })
        .await;
    assert!(s.queues.is_empty(), "{:?}", s.queues);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_01_a_task_that_kills_its_worker_every_time_fails_after_its_retries() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 3,
            slots: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    // Each attempt kills -9 the worker running it (the shell's parent).
    let argv = r#"{"argv":["sh","-c","kill -9 $PPID; sleep 5"]}"#;
    client.submit(task("exec", argv, 1, 2, 0)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), client.next_result())
        .await
        .expect("a result in time")
        .unwrap();
    assert_eq!(r.status, TaskStatus::Failed, "{r:?}");
    assert_eq!((r.attempts, r.errors.len()), (3, 3), "1 + 2 retries: {r:?}");
    for e in &r.errors {
        assert!(
            e.reason.contains("lost"),
            "each attempt says its worker was lost: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kinds_fail_with_a_reason_naming_the_kinds_there_are() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let id = client.submit(task("resize", "x", 128, 0, 0)).await.unwrap();
    let exec = client
        .submit(task("exec", "{\"argv\":[\"true\"]}", 128, 0, 0))
        .await
        .unwrap();
    let mut got = collect(&mut client, 2, Duration::from_secs(10)).await;
    let r = got.remove(&id).unwrap();
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(
        r.errors[0]
            .reason
            .contains("no handler for kind \"resize\""),
        "{:?}",
        r.errors
    );
    let r = got.remove(&exec).unwrap();
    assert!(
        r.errors[0].reason.contains("--allow-exec"),
        "{:?}",
        r.errors
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_skipped_and_a_full_range_is_a_clear_error() {
    let base = support::port_block(PORT_BASE);
    let _held: Vec<std::net::TcpListener> = (base..base + 3)
        .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).unwrap())
        .collect();
    let full = format!("{}-{}", base, base + 2);
    let mut w = Proc::spawn("full", &["worker", "--quiet", "--port-range", &full]);
    let status = w.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        w.seen
            .iter()
            .any(|l| l.contains(&format!("every port in {full}"))),
        "names the range: {:?}",
        w.seen
    );
    let wider = format!("{}-{}", base, base + 5);
    let mut w = Proc::spawn("skip", &["worker", "--quiet", "--port-range", &wider]);
    let line = w.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
    assert!(line.ends_with(&format!(":{}", base + 3)), "{line}");
}

async fn shutdown_reports_every_unfinished_task_to_its_client(wire: Wire) {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            wire,
            ..Opts::default()
        },
    )
    .await;
    let n = 6;
    client
        .submit_batch((0..n).map(|_| task("sleep", "5000", 128, 0, 0)).collect())
        .await
        .unwrap();
    c.wait_status(&client, Duration::from_secs(5), "one running", |s| {
        s.running == 1
    })
    .await;
    c.master.signal(libc::SIGINT);
    let results = collect(&mut client, n, Duration::from_secs(10)).await;
    let statuses: HashMap<TaskStatus, usize> = results.values().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.status).or_default() += 1;
        m
    });
    assert_eq!(
        statuses.get(&TaskStatus::Cancelled),
        Some(&n),
        "{results:#?}"
    );
    assert!(results.values().all(|r| r
        .errors
        .last()
        .is_some_and(|e| e.reason.contains("master shut down"))));
    assert!(c.master.wait_exit(Duration::from_secs(10)).success());
    // Reported cancelled, so it must not run on: without a journal it will
    // not run again either.
    support::wait_for_text(
        || c.worker_log("w1"),
        "attempt cancelled by the master",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_stdlib_json_client_written_from_the_spec_submits_and_reads_results() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/json_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(c.addr.port().to_string())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

async fn a_worker_stopped_by(sig: i32) {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            slots: 2,
            ..Opts::default()
        },
    )
    .await;
    client
        .submit_batch((0..8).map(|_| task("sleep", "600", 128, 0, 0)).collect())
        .await
        .unwrap();
    c.wait_busy(&client, "w1").await;
    c.worker("w1").signal(sig);
    let w1 = c.worker("w1");
    assert!(w1.wait_exit(Duration::from_secs(10)).success());
    assert!(
        w1.seen.iter().any(|l| l.contains("worker w1 stopped")),
        "{:?}",
        w1.seen
    );
    // retries = 0, yet every task completes: a handed-back attempt is not charged.
    let results = collect(&mut client, 8, Duration::from_secs(20)).await;
    assert!(
        results
            .values()
            .all(|r| r.status == TaskStatus::Ok && r.errors.is_empty()),
        "{results:#?}"
    );
    assert!(
        results.values().any(|r| r.attempts == 2),
        "some were handed back and re-run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_ctrl_c_hands_its_tasks_back_uncharged() {
    a_worker_stopped_by(libc::SIGINT).await;
}

/// A hang-up (its terminal or SSH session gone) stops it the same way,
/// not as a `kill -9` would.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_terminal_hangs_up_hands_its_tasks_back_uncharged() {
    a_worker_stopped_by(libc::SIGHUP).await;
}

/// A stopped worker is replaced by another with its id; resumed, it is
/// refused at every scan (`duplicate_node`, about every 5 s), which is not
/// hearing from a master: it ends at its master-timeout (10 s, longer than
/// between two refusals) instead of lingering for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refused_for_a_duplicate_id_ends_at_its_master_timeout() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 0,
            master_timeout: "10s",
            ..Opts::default()
        },
    )
    .await;
    c.add_worker("same", 1, &[]);
    c.wait_workers(&client, 1).await;
    c.worker("same").signal(libc::SIGSTOP);
    c.wait_status(
        &client,
        Duration::from_secs(15),
        "the stopped one removed",
        |s| s.workers.is_empty(),
    )
    .await;
    c.add_worker("same", 1, &[]);
    c.wait_workers(&client, 1).await;
    let old = c.worker("same");
    old.signal(libc::SIGCONT);
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(support::MASTER_TIMEOUT_EXIT),
        "{status:?}"
    );
    assert!(
        old.seen.iter().any(|l| l.contains("master-timeout")),
        "{:?}",
        old.seen
    );
    let s = client.status(false).await.unwrap();
    assert_eq!(s.workers.len(), 1, "the new one stays");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_can_dial_a_known_master() {
    // The master scans nothing; the worker dials it.
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            master_args: &["--scan", "1-1"],
            ..Opts::default()
        },
    );
    let master = c.addr.to_string();
    c.add_worker("dialer", 1, &["--master", &master]);
    let mut client = c.client().await;
    c.wait_workers(&client, 1).await;
    let id = client
        .submit(task("echo", "via dial", 128, 0, 0))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!((r.status, r.worker.as_str()), (TaskStatus::Ok, "dialer"));
    assert_eq!(r.output.as_text(), Some("via dial"));
}

/// A fetch of more kept results than a client's queue may hold (its hard
/// bound is 256 MiB) delivers them as the client reads; it had disconnected
/// the client before it could read one, again at every reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_of_more_kept_results_than_a_clients_queue_holds_delivers_them_all() {
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    const EACH: usize = 7 << 20;
    const COUNT: usize = 40;
    let payload = Payload::from(vec![b'a'; EACH]);
    let tasks = (0..COUNT)
        .map(|_| NewTask {
            kind: Text::from_static("echo"),
            payload: payload.clone(),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        })
        .collect();
    let ids: Vec<u64> = client
        .submit_batches(tasks, true)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), COUNT);
    c.wait_status(&client, Duration::from_secs(60), "all done", |s| {
        s.completed >= COUNT as u64
    })
    .await;
    let mut later = c.client().await;
    later.fetch(ids.clone()).unwrap();
    let got = collect(&mut later, COUNT, Duration::from_secs(60)).await;
    for id in ids {
        assert_eq!(
            (got[&id].status, got[&id].output.len()),
            (TaskStatus::Ok, EACH),
            "{id}"
        );
    }
}

/// A worker that dials a master which refuses it (its id is taken) dials
/// again at the redial interval, not once per round trip, and when it gives
/// up says what the master said.
#[tokio::test(flavor = "multi_thread")]
async fn a_dialing_worker_refused_for_its_id_dials_again_at_the_redial_interval() {
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            master_timeout: "3s",
            master_args: &["--scan", "1-1"],
            ..Opts::default()
        },
    );
    let master = c.addr.to_string();
    c.add_worker("same", 1, &["--master", &master]);
    let client = c.client().await;
    c.wait_workers(&client, 1).await;
    let refused_before = c.master_log().matches("refused a second worker").count();
    c.add_worker("same", 1, &["--master", &master]);
    let second = c.workers.last_mut().unwrap();
    let status = second.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(support::MASTER_TIMEOUT_EXIT),
        "{status:?}"
    );
    assert!(
        second
            .seen
            .iter()
            .any(|l| l.contains("the last master session ended") && l.contains("same")),
        "{:?}",
        second.seen
    );
    // Three seconds at one dial a second; not thousands.
    let refused = c.master_log().matches("refused a second worker").count() - refused_before;
    assert!((1..=6).contains(&refused), "{refused} refusals");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_15_exec_captures_output_and_kills_the_whole_process_group_at_the_timeout() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let hello = client
        .submit(task(
            "exec",
            r#"{"argv":["sh","-c","echo hello; echo oops >&2"]}"#,
            128,
            0,
            0,
        ))
        .await
        .unwrap();
    let spec = serde_json::json!({ "argv": ["sh", "-c", script] }).to_string();
    let hung = client
        .submit(NewTask {
            kind: Text::from_static("exec"),
            payload: Payload::from(spec),
            priority: 128,
            retries: 0,
            timeout_ms: 700,
        })
        .await
        .unwrap();
    let failing = client
        .submit(task(
            "exec",
            r#"{"argv":["sh","-c","echo bad input >&2; exit 3"]}"#,
            128,
            0,
            0,
        ))
        .await
        .unwrap();
    let mut got = collect(&mut client, 3, Duration::from_secs(20)).await;
    let r = got.remove(&hello).unwrap();
    assert_eq!(r.status, TaskStatus::Ok);
    let out: serde_json::Value = serde_json::from_slice(&r.output).unwrap();
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "hello\n");
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["stdout_truncated"], false);
    let r = got.remove(&failing).unwrap();
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(
        r.errors[0]
            .reason
            .contains("exited with status 3: bad input"),
        "{:?}",
        r.errors
    );
    let r = got.remove(&hung).unwrap();
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(
        r.errors[0].reason.contains("timed out after 700 ms"),
        "{:?}",
        r.errors
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    support::wait_dead(
        &[pid],
        Duration::from_secs(5),
        "the task's grandchild, killed with its group",
    )
    .await;
}

both_wires!(fault_02_a_stopped_worker_is_removed_by_heartbeat_and_its_late_results_are_ignored);

both_wires!(workers_terminate_themselves_when_the_master_is_killed);

both_wires!(shutdown_reports_every_unfinished_task_to_its_client);

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_accepts_a_restarted_master_before_its_master_timeout() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    drop(client);
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    // A new master on the same ports finds the worker again by its scan.
    let args = c.master_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut m2 = Proc::spawn("master-2", &args);
    m2.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("master listening on ")
    });
    let mut client = c.client().await;
    c.wait_workers(&client, 1).await;
    let id = client
        .submit(task("echo", "again", 128, 0, 0))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!((r.status, r.worker.as_str()), (TaskStatus::Ok, "w1"));
    assert!(
        c.worker("w1").child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_09_a_client_that_never_reads_is_disconnected_and_others_are_still_served() {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 2,
            ..Opts::default()
        },
    )
    .await;
    // A JSON client that submits 80 MB worth of echo results and never reads.
    let addr = c.addr;
    let hog = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        writeln!(
            s,
            r#"{{"type":"hello","role":"client","node":"never-reads"}}"#
        )
        .unwrap();
        let payload = "x".repeat(4096);
        let task = format!(r#"{{"kind":"echo","payload":"{payload}","retries":0}}"#);
        let batch = format!(
            r#"{{"type":"submit","tasks":[{}]}}"#,
            vec![task; 1000].join(",")
        );
        for _ in 0..20 {
            if writeln!(s, "{batch}").is_err() {
                break;
            }
        }
        s
    });
    support::wait_for_text(
        || c.master_log(),
        "client is not reading its results; disconnecting it",
        Duration::from_secs(30),
    )
    .await;
    let id = client
        .submit(task("echo", "still served", 128, 0, 0))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(30))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(r.output.as_text(), Some("still served"));
    drop(hog.join());
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_14_with_a_secret_only_peers_that_hold_it_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let wrong = dir.path().join("wrong");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(&wrong, "fedcba9876543210fedcba9876543210\n").unwrap();
    let (s, w) = (secret.to_str().unwrap(), wrong.to_str().unwrap());
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            master_args: &["--secret-file", s],
            ..Opts::default()
        },
    );
    c.add_worker("good", 1, &["--secret-file", s]);
    c.add_worker("no-secret", 1, &[]);
    c.add_worker("bad", 1, &["--secret-file", w]);
    let secret_bytes =
        runner::proto::handshake::Secret::from_text(b"0123456789abcdef0123456789abcdef").unwrap();
    let mut client = runner::client::Client::connect(
        c.addr,
        runner::client::ClientOptions {
            secret: Some(secret_bytes),
            ..Default::default()
        },
    )
    .await
    .expect("a client with the secret gets in");
    let s1 = c
        .wait_status(
            &client,
            Duration::from_secs(10),
            "the good worker registered",
            |s| s.workers.iter().any(|w| w.id.as_str() == "good"),
        )
        .await;
    // Several scans later, still only the worker with the secret.
    let log_has = |c: &Cluster, needle: &str| {
        c.master_log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while log_has(&c, "skipping listener") < 2 {
        assert!(std::time::Instant::now() < end, "{}", c.master_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s2 = client.status(false).await.unwrap();
    for s in [&s1, &s2] {
        let ids: Vec<&str> = s.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            ids,
            ["good"],
            "only the worker holding the secret is registered"
        );
    }
    let id = client
        .submit(task("echo", "authenticated", 128, 0, 0))
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(
        (r.worker.as_str(), r.output.as_text()),
        ("good", Some("authenticated"))
    );

    // A client without the secret, or with a wrong one, is refused.
    let refused = runner::client::Client::connect(c.addr, Default::default()).await;
    assert!(
        matches!(refused, Err(ref e) if e.to_string().contains("authentication required")),
        "{:?}",
        refused.err()
    );
    let wrong_secret =
        runner::proto::handshake::Secret::from_text(b"fedcba9876543210fedcba9876543210").unwrap();
    let refused = runner::client::Client::connect(
        c.addr,
        runner::client::ClientOptions {
            secret: Some(wrong_secret),
            ..Default::default()
        },
    )
    .await;
    assert!(refused.is_err(), "a wrong secret gets nothing");
    assert!(
        !c.master_log().contains("0123456789abcdef"),
        "the secret never appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_01_no_task_process_outlives_a_kill_9_of_its_worker() {
    no_task_process_outlives_its_worker(PORT_BASE, |w| w.signal(libc::SIGKILL)).await;
}

/// A hang-up of the worker's terminal (SIGHUP to its process group) ends a
/// worker that does not catch it; its reaper, in a session of its own with
/// its signals blocked, outlives it and kills the tasks.
#[tokio::test(flavor = "multi_thread")]
async fn fault_01_no_task_process_outlives_a_hang_up_of_its_workers_process_group() {
    no_task_process_outlives_its_worker(PORT_BASE, |w| w.signal_group(libc::SIGHUP)).await;
}

/// The reaper of worker process `worker`: before any task, its only child,
/// forked by the main thread before any other thread existed.
fn reaper_of(worker: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
        .expect("the kernel lists children");
    children
        .split_whitespace()
        .next()
        .expect("a reaper")
        .parse()
        .unwrap()
}

/// The reaper has a name of its own: a kill aimed at the worker by name
/// (`pkill -9 -f 'runner worker --id w5'`, `killall -9 runner`) does not take
/// it too, which left the tasks' other processes running.
#[tokio::test(flavor = "multi_thread")]
async fn fault_01_a_workers_reaper_does_not_answer_to_the_workers_name() {
    let (mut c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    let worker = c.worker("w1").pid();
    let reaper = reaper_of(worker);
    let comm = std::fs::read_to_string(format!("/proc/{reaper}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "runner-reaper");
    let cmdline = std::fs::read(format!("/proc/{reaper}/cmdline")).unwrap();
    let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert_eq!(shown.trim_end(), "runner-reaper", "{shown:?}");
    let own = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&own).contains("worker"),
        "the worker keeps its own"
    );
}

/// The reaper itself killed (only SIGKILL can): the worker logs it, and a
/// task started afterwards still dies with its worker (PR_SET_PDEATHSIG).
#[tokio::test(flavor = "multi_thread")]
async fn fault_01_a_worker_whose_reaper_died_says_so_and_its_tasks_still_die_with_it() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    let reaper = reaper_of(c.worker("w1").pid());
    // SAFETY: kill(2) on a process this test started (indirectly).
    unsafe { libc::kill(reaper, libc::SIGKILL) };
    support::wait_for_text(
        || c.worker_log("w1"),
        "the task reaper died",
        Duration::from_secs(10),
    )
    .await;
    let (_, pids) =
        support::exec_writing_pids(&client, 1, |f| format!("echo $$ > {f}; exec sleep 60")).await;
    c.worker("w1").signal(libc::SIGKILL);
    c.worker("w1").wait_exit(Duration::from_secs(5));
    support::wait_dead(&pids, Duration::from_secs(5), "a task outliving its worker").await;
}

async fn no_task_process_outlives_its_worker(base: u16, end_worker: impl FnOnce(&support::Proc)) {
    let (mut c, client) = Cluster::ready(
        base,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    // The task and a grandchild, both sleeping; it writes both pids.
    let (_, pids) =
        support::exec_writing_pids(&client, 2, |f| format!("sleep 60 & echo $$ $! > {f}; wait"))
            .await;
    end_worker(c.worker("w1"));
    c.worker("w1").wait_exit(Duration::from_secs(5));
    support::wait_dead(
        &pids,
        Duration::from_secs(5),
        "task processes outliving their worker",
    )
    .await;
}

/// Whether this test process may use SCHED_FIFO (root, CAP_SYS_NICE or an
/// RLIMIT_RTPRIO): asked on a thread of its own, which then ends.
fn realtime_permitted() -> bool {
    std::thread::spawn(|| runner::realtime::enter().is_ok())
        .join()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn realtime_nodes_run_their_threads_at_sched_fifo_and_their_programs_at_the_normal_policy() {
    if !realtime_permitted() {
        eprintln!("skipped: this user may not use SCHED_FIFO");
        return;
    }
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &["--realtime"],
            worker_args: &["--allow-exec", "--realtime"],
            ..Opts::default()
        },
    )
    .await;
    let master = support::thread_policies(c.master.pid());
    let worker = support::thread_policies(c.workers[0].pid());
    for (name, policy) in master.iter().chain(&worker) {
        // The runtimes' threads (the node's, and a worker's for the kinds
        // it spawns); the log writer's thread stays normal.
        if name == "runner" || name == "runner-task" {
            assert_eq!(*policy, libc::SCHED_FIFO, "{name}: {master:?} {worker:?}");
        }
    }
    assert!(worker.iter().any(|(n, _)| n == "runner-task"), "{worker:?}");
    // The program reads its own policy (field 41 of its stat; `cut` has no
    // space in its name).
    let argv = r#"{"argv":["sh","-c","cut -d' ' -f41 /proc/self/stat"]}"#;
    let id = client.submit(task("exec", argv, 128, 0, 0)).await.unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(20))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
    let out: serde_json::Value = serde_json::from_slice(&r.output).unwrap();
    assert_eq!(out["stdout"], "0\n", "SCHED_OTHER is 0: {out}");
}

#[test]
fn realtime_refused_by_the_kernel_stops_the_node_with_the_reason() {
    // Root may always; without CAP_SYS_NICE (dropped from the bounding set
    // before exec) and with no RLIMIT_RTPRIO, the kernel refuses.
    let mut rtprio = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut rtprio) },
        0
    );
    if rtprio.rlim_cur > 0 {
        eprintln!("skipped: RLIMIT_RTPRIO allows real-time priorities here");
        return;
    }
    let wrapper: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &[
            "setpriv",
            "--bounding-set=-sys_nice",
            "--inh-caps=-sys_nice",
        ]
    } else {
        &["env"]
    };
    let port = support::port_block(PORT_BASE).to_string();
    let mut master = Proc::spawn_under(
        wrapper,
        "master",
        &[
            "master",
            "--quiet",
            "--realtime",
            "--port",
            &port,
            "--scan",
            "1-1",
        ],
    );
    let status = master.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{:?}", master.seen);
    let said = master.seen.join("\n");
    assert!(
        said.contains("refused SCHED_FIFO")
            && said.contains("CAP_SYS_NICE")
            && said.contains("RLIMIT_RTPRIO"),
        "{said}"
    );
}

/// A second master whose scan covers cluster `c`'s workers (its own port is
/// the top of their range, which no worker takes before the others).
fn second_master(c: &Cluster, logs: &std::path::Path) -> Proc {
    let args = support::master_args_on(
        c.first_port + support::BLOCK - 1,
        &c.worker_range(),
        logs.to_str().unwrap(),
        c.wire,
        &[],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut m = Proc::spawn("master-2", &args);
    m.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("master listening on ")
    });
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serving_a_live_master_refuses_another_masters_scan() {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let id = client
        .submit(task("sleep", "1500", 128, 0, 0))
        .await
        .unwrap();
    c.wait_busy(&client, "w1").await;
    let logs = tempfile::tempdir().unwrap();
    let _other = second_master(&c, logs.path());
    let other_log = || std::fs::read_to_string(logs.path().join("master.log")).unwrap_or_default();
    support::wait_for_text(
        other_log,
        "the worker refused this master",
        Duration::from_secs(10),
    )
    .await;
    let r = collect(&mut client, 1, Duration::from_secs(10))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(
        (r.status, r.worker.as_str(), r.errors.len()),
        (TaskStatus::Ok, "w1", 0),
        "the task ran once, on w1, for its own master: {r:?}"
    );
    assert!(other_log().contains("this worker serves master"));
    let wlog = c.worker_log("w1");
    assert!(wlog.contains("refused a master"), "{wlog}");
    assert!(!wlog.contains("replaces the current one"), "{wlog}");
    assert!(c.worker("w1").child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_with_a_live_workers_id_is_refused() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let first = client.status(false).await.unwrap().workers[0].addr.clone();
    c.add_worker("w1", 2, &[]);
    support::wait_for_text(
        || c.master_log(),
        "refused a second worker with a registered node id",
        Duration::from_secs(10),
    )
    .await;
    let s = client.status(false).await.unwrap();
    assert_eq!(s.workers.len(), 1);
    assert_eq!(
        s.workers[0].addr, first,
        "the registered w1 was not replaced"
    );
    assert!(!c.master_log().contains("replacing its old session"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_past_a_scans_handshake_deadline_is_found_again_once_resumed() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_timeout: "30s",
            ..Opts::default()
        },
    )
    .await;
    c.worker("w1").signal(libc::SIGSTOP);
    c.wait_status(&client, Duration::from_secs(5), "w1 removed", |s| {
        s.workers.is_empty()
    })
    .await;
    // Scans meanwhile reach its listener and time out in the handshake (2 s).
    support::wait_for_text(
        || c.master_log(),
        "handshake did not finish",
        Duration::from_secs(10),
    )
    .await;
    c.worker("w1").signal(libc::SIGCONT);
    c.wait_status(&client, Duration::from_secs(15), "w1 found again", |s| {
        s.workers.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_finishes_after_its_client_left_is_kept_for_a_fetch_without_a_journal() {
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let id = client
        .submit(task("sleep", "500", 128, 0, 0))
        .await
        .unwrap();
    client.shutdown().await;
    // The master notices the client left before the task finishes.
    support::wait_for_text(
        || c.master_log(),
        "client disconnected",
        Duration::from_secs(5),
    )
    .await;
    let mut later = c.client().await;
    later.fetch(vec![id]).unwrap();
    let r = collect(&mut later, 1, Duration::from_secs(5)).await;
    assert_eq!(r[&id].status, TaskStatus::Ok, "{:?}", r[&id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_text_past_the_limit_is_cut_and_costs_its_worker_nothing() {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    // A kind of the largest size allowed: the worker's "no handler for
    // kind ..." names it, which takes its error past the limit.
    let kind = "k".repeat(runner::limits::TEXT_BYTES_MAX);
    let id = client
        .submit(NewTask {
            kind: Text::from(kind),
            payload: Payload::empty(),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(5)).await;
    let e = &r[&id].errors[0];
    assert_eq!(r[&id].status, TaskStatus::Failed);
    assert!(e
        .reason
        .starts_with("worker cannot run it: no handler for kind"));
    assert!(e.reason.ends_with('…'), "cut, and says so");
    assert_eq!(e.reason.len(), runner::limits::TEXT_BYTES_MAX);
    assert!(
        !c.master_log().contains("worker removed"),
        "the worker stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_task_never_sees_the_clusters_secret() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, SECRET).unwrap();
    let c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            master_args: &["--secret-file", file.to_str().unwrap()],
            ..Opts::default()
        },
    );
    // The worker reads the secret from its environment; it runs as a user
    // of its own when the test may arrange that (as its programs then do).
    let range = c.worker_range();
    let env = format!("RUNNER_SECRET={SECRET}");
    let as_nobody = unsafe { libc::geteuid() } == 0;
    let mut wrapper = vec![];
    if as_nobody {
        wrapper.extend([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    wrapper.extend(["env", env.as_str()]);
    let mut w = support::Proc::spawn_under(
        &wrapper,
        "w1",
        &[
            "worker",
            "--quiet",
            "--id",
            "w1",
            "--port-range",
            &range,
            "--heartbeat",
            "200ms",
            "--allow-exec",
        ],
    );
    w.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
    let mut client = runner::client::Client::connect(
        c.addr,
        runner::client::ClientOptions {
            secret: Some(runner::proto::handshake::Secret::from_text(SECRET.as_bytes()).unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.wait_workers(&client, 1).await;
    let spec = serde_json::json!({
        "argv": ["sh", "-c", concat!(
            "echo \"${RUNNER_SECRET:-scrubbed} $RUNNER_TASK_ID\"; ",
            "cat /proc/$PPID/environ > /dev/null 2>&1 && echo worker-environ-readable || echo worker-environ-unreadable; ",
            // The worker's other children: its reaper, forked at start-up
            // with the same environment.
            "for d in /proc/[0-9]*; do set -- $(cat $d/stat 2>/dev/null); ",
            "if [ \"$4\" = \"$PPID\" ] && [ \"${d#/proc/}\" != \"$$\" ]; then ",
            "cat $d/environ > /dev/null 2>&1 && echo child-environ-readable || echo child-environ-unreadable; fi; done"
        )]
    });
    let id = client
        .submit(NewTask {
            kind: Text::from_static("exec"),
            payload: Payload::from(spec.to_string()),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(10)).await;
    let out = r[&id].output.as_text().unwrap().to_string();
    assert!(out.contains(&format!("scrubbed {id}")), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    if as_nobody {
        // Nor through the worker's own environment in /proc, nor its
        // reaper's.
        assert!(out.contains("worker-environ-unreadable"), "{out}");
        assert!(out.contains("child-environ-unreadable"), "{out}");
        assert!(!out.contains("child-environ-readable"), "{out}");
    }
}

/// Without a journal, too, a result is the master's to keep until the
/// client acknowledges it: one written to a connection that then ends (it
/// broke with the result in its buffers, or the program stopped before it
/// took it) is there for a fetch; one acknowledged is not.
#[tokio::test(flavor = "multi_thread")]
async fn results_a_client_did_not_acknowledge_before_its_connection_ended_wait_for_a_fetch() {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let addr = c.addr;
    // A JSON client that reads its three results, acknowledges the first
    // and hangs up.
    let ids = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
        let mut next = || -> serde_json::Value {
            loop {
                let m: serde_json::Value =
                    serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
                if m["type"] != "ping" {
                    return m;
                }
            }
        };
        writeln!(s, r#"{{"type":"hello","role":"client","node":"hangs-up"}}"#).unwrap();
        assert_eq!(next()["type"], "hello");
        let task = r#"{"kind":"echo","payload":"unacknowledged"}"#;
        writeln!(s, r#"{{"type":"submit","tasks":[{task},{task},{task}]}}"#).unwrap();
        let accepted = next();
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        let first = accepted["first_id"].as_u64().unwrap();
        let mut got = 0;
        while got < 3 {
            let m = next();
            assert_eq!(m["type"], "results", "{m}");
            got += m["results"].as_array().unwrap().len();
        }
        writeln!(s, r#"{{"type":"ack","ids":[{first}]}}"#).unwrap();
        first..first + 3
    })
    .await
    .unwrap();
    // The acknowledgement is read before the end of the connection.
    support::wait_for_text(
        || c.master_log(),
        "the client left results unacknowledged",
        Duration::from_secs(10),
    )
    .await;
    let log = c.master_log();
    let line = log
        .lines()
        .find(|l| l.contains("the client left results unacknowledged"))
        .unwrap();
    assert!(
        line.contains("hangs-up") && line.contains("kept=2"),
        "{line}"
    );
    client.fetch(ids.clone().collect()).unwrap();
    let got = collect(&mut client, 3, Duration::from_secs(10)).await;
    assert_eq!(got[&ids.start].status, TaskStatus::Unknown, "acknowledged");
    for id in ids.start + 1..ids.end {
        assert_eq!(
            (got[&id].status, got[&id].output.as_text()),
            (TaskStatus::Ok, Some("unacknowledged")),
            "{:?}",
            got[&id]
        );
    }
}

/// A client that sends its first messages with its hello, in one write (as
/// `printf ... | nc` does), is answered at once: the bytes read with the
/// hello are messages of the session, not kept until more arrive.
#[tokio::test(flavor = "multi_thread")]
async fn messages_that_arrive_with_the_hello_are_answered_without_waiting_for_more() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let addr = c.addr;
    let types = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            concat!(
                r#"{"type":"hello","role":"client","node":"one-write"}"#,
                "\n",
                r#"{"type":"submit","tasks":[{"kind":"echo","payload":"hi"}]}"#,
                "\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // The socket stays open and silent: only the master writes now.
        let mut types = Vec::new();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            let m: serde_json::Value = serde_json::from_str(&line).unwrap();
            types.push(m["type"].as_str().unwrap().to_string());
            if types.len() == 3 {
                break;
            }
        }
        types
    })
    .await
    .unwrap();
    assert_eq!(types, ["hello", "accepted", "results"]);
}

/// A worker let go while it still runs its attempts (stopped past its
/// timeout, then thawed) comes back with them running: the master has given
/// them out again, their results would not count, and they would hold the
/// slots it counts as free (a WAN review saw a returned worker make no
/// progress for 51 s). Its new session stops them.
#[tokio::test(flavor = "multi_thread")]
async fn fault_02_a_worker_let_go_and_back_stops_the_attempts_it_held_and_takes_new_work() {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            ..Opts::default()
        },
    )
    .await;
    let long = client
        .submit(task("sleep", "60000", 128, 3, 0))
        .await
        .unwrap();
    c.wait_busy(&client, "w1").await;
    c.worker("w1").signal(libc::SIGSTOP);
    c.wait_status(&client, Duration::from_secs(5), "w1 let go", |s| {
        s.workers.is_empty()
    })
    .await;
    c.worker("w1").signal(libc::SIGCONT);
    c.wait_status(&client, Duration::from_secs(10), "w1 back", |s| {
        s.workers.len() == 1
    })
    .await;
    // The long task went back to the queue and out again, as attempt 2; the
    // echo gets the worker's one slot once attempt 2 is cancelled too.
    let echo = client
        .submit(task("echo", "not stuck", 255, 0, 0))
        .await
        .unwrap();
    client.cancel(vec![long], "test over").await.unwrap();
    let got = collect(&mut client, 2, Duration::from_secs(20)).await;
    assert_eq!(got[&echo].status, TaskStatus::Ok, "{:?}", got[&echo]);
    assert_eq!(got[&long].status, TaskStatus::Cancelled);
    let log = c.worker_log("w1");
    assert!(
        log.contains("attempt cancelled by the master") && log.contains("attempt=1"),
        "the attempt from before was stopped: {log}"
    );
}

/// A worker registers at first contact. Its `register` follows its hello at
/// once, and when both came in one read the master had let it wait for the
/// next bytes on the connection: a heartbeat later.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_registers_at_first_contact_not_at_the_first_heartbeat() {
    let first_port = support::port_block(PORT_BASE);
    let range = format!("{}-{}", first_port + 1, first_port + support::BLOCK - 1);
    let logs = tempfile::tempdir().unwrap();
    let mut args = support::master_args_on(
        first_port,
        &range,
        logs.path().to_str().unwrap(),
        Wire::Bincode,
        &[],
    );
    for (flag, value) in [("--heartbeat", "30s"), ("--worker-timeout", "90s")] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut master = Proc::spawn("master", &args);
    let line = master.wait_line(Duration::from_secs(10), |l| {
        l.starts_with("master listening on ")
    });
    let addr: std::net::SocketAddr = line
        .trim_start_matches("master listening on ")
        .parse()
        .unwrap();
    let mut worker = Proc::spawn(
        "w1",
        &[
            "worker",
            "--quiet",
            "--id",
            "w1",
            "--port-range",
            &range,
            "--heartbeat",
            "30s",
            "--master-timeout",
            "90s",
        ],
    );
    worker.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
    let client = runner::client::Client::connect(addr, Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.status(false).await.unwrap().workers.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no worker registered within 10 s (the heartbeat is 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that closes only its sending side once it has submitted (`nc
/// -N`) still gets its results, and then the master closes the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_submitting_still_gets_its_results() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let addr = c.addr;
    let outputs = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let task = r#"{"kind":"sleep","payload":"300"}"#;
        writeln!(
            s,
            r#"{{"type":"hello","role":"client","node":"half-closes"}}"#
        )
        .unwrap();
        writeln!(s, r#"{{"type":"submit","tasks":[{task},{task}]}}"#).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Every line until the master closes.
        let mut outputs = Vec::new();
        for line in BufReader::new(s).lines() {
            let m: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if m["type"] == "results" {
                for r in m["results"].as_array().unwrap() {
                    outputs.push(r["status"].as_str().unwrap().to_string());
                }
            }
        }
        outputs
    })
    .await
    .unwrap();
    assert_eq!(outputs, ["ok", "ok"]);
    assert!(
        c.master_log()
            .contains("client closed its sending side; its results still go to it"),
        "{}",
        c.master_log()
    );
}

/// A stopped worker that the master is writing a task too large for the
/// connection's buffers to: the write never ends, and the worker is still
/// removed once it has taken nothing for a worker-timeout, its task run
/// elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn fault_02_a_stopped_worker_is_removed_while_a_write_to_it_is_stuck() {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    c.worker("w1").signal(libc::SIGSTOP);
    let big = NewTask {
        kind: Text::from_static("echo"),
        payload: Payload::from(vec![b'x'; runner::limits::PAYLOAD_BYTES_MAX]),
        priority: 128,
        retries: 3,
        timeout_ms: 0,
    };
    let id = client.submit(big).await.unwrap();
    c.add_worker("w2", 1, &[]);
    let r = collect(&mut client, 1, Duration::from_secs(30))
        .await
        .remove(&id)
        .unwrap();
    assert_eq!(
        (r.status, r.worker.as_str()),
        (TaskStatus::Ok, "w2"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.output.len(), runner::limits::PAYLOAD_BYTES_MAX);
    assert!(
        c.master_log().contains("took nothing for"),
        "the log says why w1 went"
    );
    c.worker("w1").signal(libc::SIGCONT);
}

/// A worker whose master stopped (SIGSTOP) while the worker had more
/// results for it than the connection's buffers hold: its write never
/// ends, and it still terminates at its master-timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_writing_to_a_stopped_master_still_ends_at_its_master_timeout() {
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 12,
            master_timeout: "2s",
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    // 12 tasks that each print 1 MiB (exec's output cap) after a moment.
    let script = r#"{"argv":["sh","-c","sleep 0.5; head -c 1048576 /dev/zero | tr '\\0' x"]}"#;
    client
        .submit_batch((0..12).map(|_| task("exec", script, 128, 0, 0)).collect())
        .await
        .unwrap();
    c.wait_busy(&client, "w1").await;
    c.master.signal(libc::SIGSTOP);
    let status = c.worker("w1").wait_exit(Duration::from_secs(20));
    c.master.signal(libc::SIGCONT);
    assert_eq!(
        status.code(),
        Some(support::MASTER_TIMEOUT_EXIT),
        "{status:?}: {:?}",
        c.worker("w1").seen
    );
}
