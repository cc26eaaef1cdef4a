//! Cancelling tasks by id (`cancel_tasks`, `runner cancel`), against the
//! cluster as processes: wherever a task is (queued, running, waiting out a
//! retry back-off), a cancel finishes it as `cancelled`, its result goes to
//! its submitter, and the report sorts the ids it named.

#[macro_use]
mod support;

use std::time::Duration;

use runner::client::{Client, ClientOptions};
use runner::proto::{NewTask, Payload, TaskStatus, Text, Wire};
use support::{collect, Cluster, Opts};

const PORT_BASE: u16 = 26000;

fn task(kind: &'static str, payload: &str, retries: u8) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: Payload::from(payload.to_string()),
        priority: 128,
        retries,
        timeout_ms: 0,
    }
}

async fn named_client(c: &Cluster, name: &str) -> Client {
    Client::connect(
        c.addr,
        ClientOptions {
            wire: c.wire,
            name: name.to_string(),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("client connects")
}

async fn queued_tasks_cancelled_never_run_and_their_submitter_hears_why(wire: Wire) {
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 0,
            wire,
            ..Opts::default()
        },
    );
    let mut submitter = c.client().await;
    let ids = submitter
        .submit_batch(vec![task("noop", "", 0); 3])
        .await
        .unwrap();
    let admin = named_client(&c, "admin").await;
    let report = admin
        .cancel(vec![ids.start, ids.start + 1], "wrong input")
        .await
        .unwrap();
    assert_eq!(report.cancelled, [ids.start, ids.start + 1]);
    assert!(report.finished.is_empty() && report.unknown.is_empty());

    let got = collect(&mut submitter, 2, Duration::from_secs(5)).await;
    for id in [ids.start, ids.start + 1] {
        let r = &got[&id];
        assert_eq!(r.status, TaskStatus::Cancelled, "{r:?}");
        assert_eq!(r.attempts, 0, "it never ran");
        let why = &r.errors.last().unwrap().reason;
        assert_eq!(why.as_str(), "cancelled by admin: wrong input");
    }
    // The one left runs once a worker comes, and only it runs.
    c.add_worker("w1", 1, &[]);
    let last = collect(&mut submitter, 1, Duration::from_secs(10)).await;
    assert_eq!(last[&(ids.start + 2)].status, TaskStatus::Ok);
    let s = admin.status(false).await.unwrap();
    assert_eq!(s.workers[0].done, 1, "the cancelled tasks never reached it");
}

both_wires!(queued_tasks_cancelled_never_run_and_their_submitter_hears_why);

async fn a_running_task_cancelled_is_stopped_and_its_slot_runs_the_next(wire: Wire) {
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
    // Hangs, with no timeout: only a cancel frees the slot.
    let hung = client.submit(task("stall", "1", 0)).await.unwrap();
    let next = client.submit(task("noop", "", 0)).await.unwrap();
    c.wait_busy(&client, "w1").await;
    let report = client.cancel(vec![hung], "").await.unwrap();
    assert_eq!(report.cancelled, [hung]);
    let got = collect(&mut client, 2, Duration::from_secs(10)).await;
    let r = &got[&hung];
    assert_eq!(r.status, TaskStatus::Cancelled, "{r:?}");
    assert_eq!(r.attempts, 1);
    assert!(
        r.errors[0].reason.starts_with("cancelled by client-"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.worker.as_str(), "w1", "the worker it ran on");
    assert_eq!(r.errors[0].worker.as_str(), "w1");
    assert_eq!(got[&next].status, TaskStatus::Ok, "the slot was freed");
    support::wait_for_text(
        || c.worker_log("w1"),
        "attempt cancelled by the master",
        Duration::from_secs(5),
    )
    .await;
}

both_wires!(a_running_task_cancelled_is_stopped_and_its_slot_runs_the_next);

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_exec_task_leaves_no_process_behind() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--allow-exec"],
            ..Opts::default()
        },
    )
    .await;
    // The program and a child of its own, both sleeping.
    let (id, pids) =
        support::exec_writing_pids(&client, 2, |f| format!("sleep 60 & echo $$ $! > {f}; wait"))
            .await;
    client.cancel(vec![id], "").await.unwrap();
    let r = collect(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(r[&id].status, TaskStatus::Cancelled);
    support::wait_dead(
        &pids,
        Duration::from_secs(5),
        "the cancelled program and its child",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sorts_finished_and_unknown_ids_apart_and_changes_neither() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let done = client.submit(task("noop", "", 0)).await.unwrap();
    let first = collect(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(first[&done].status, TaskStatus::Ok);
    let never = done + 1_000_000;
    let report = client.cancel(vec![never, done, 0, done], "").await.unwrap();
    assert!(report.cancelled.is_empty());
    assert_eq!(report.finished, [done], "named twice, reported once");
    assert_eq!(report.unknown, [0, never]);
    // Nothing more comes for the finished task.
    let probe = client.submit(task("noop", "", 0)).await.unwrap();
    let next = collect(&mut client, 1, Duration::from_secs(5)).await;
    assert!(next.contains_key(&probe), "{next:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_cancelled_during_its_retry_back_off_is_not_tried_again() {
    let (c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let id = client.submit(task("fail", "bad", 100)).await.unwrap();
    // The seventh failure starts a back-off of 3.2 s (50 ms doubling).
    c.wait_status(
        &client,
        Duration::from_secs(10),
        "seven attempts failed",
        |s| s.retried >= 7,
    )
    .await;
    let asked = std::time::Instant::now();
    client.cancel(vec![id], "").await.unwrap();
    // The report waits for the task's result: it came from the back-off's
    // timer, woken, not from its end.
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "the cancel waited out the back-off: {waited:?}"
    );
    let r = collect(&mut client, 1, Duration::from_secs(5)).await;
    let r = &r[&id];
    assert_eq!(r.status, TaskStatus::Cancelled, "{r:?}");
    assert_eq!(r.attempts, 7, "no eighth attempt: {r:?}");
    assert_eq!(r.errors.len(), 8, "seven failures and the cancel");
    assert!(r.errors[..7].iter().all(|e| e.reason == "bad"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_answered_on_a_journal_survives_a_master_crash() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            master_args: &extra,
            ..Opts::default()
        },
    )
    .await;
    // Detached: their results wait in the master for a fetch.
    let detached = |t| client.submit_batch_detached(vec![t]);
    let hung = detached(task("stall", "1", 0)).await.unwrap().start;
    let queued = detached(task("noop", "", 0)).await.unwrap().start;
    c.wait_busy(&client, "w1").await;
    let report = client.cancel(vec![hung, queued], "").await.unwrap();
    assert_eq!(report.cancelled, [hung, queued]);
    // Killed the moment the report is read: the cancel must be stored.
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    let args = c.master_args(&extra);
    c.restart_master(&args);
    let mut again = c.client().await;
    again.fetch(vec![hung, queued]).unwrap();
    let got = collect(&mut again, 2, Duration::from_secs(10)).await;
    for id in [hung, queued] {
        assert_eq!(got[&id].status, TaskStatus::Cancelled, "{:?}", got[&id]);
    }
}

/// CPU time (user and system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of the file: utime and stime.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_spin_stops_using_the_core() {
    let (mut c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 1,
            ..Opts::default()
        },
    )
    .await;
    // A minute of busy work.
    let id = client.submit(task("spin", "60000000", 0)).await.unwrap();
    c.wait_busy(&client, "w1").await;
    client.cancel(vec![id], "").await.unwrap();
    collect(&mut client, 1, Duration::from_secs(5)).await;
    let pid = c.worker("w1").pid();
    // It stops within one of its 1 ms slices: the worker goes idle (a tick
    // is 10 ms; a spinning core takes about 30 in the 300 ms measured).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let used = cpu_ticks(pid) - before;
        if used < 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker still uses {used} ticks in 300 ms"
        );
    }
}
