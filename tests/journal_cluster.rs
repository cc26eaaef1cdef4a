//! A master on a journal, as processes: killed and restarted mid-run, its
//! workers and clients coming back, a full disk, a journal it cannot read.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use runner::client::{Client, ClientOptions};
use runner::proto::{NewTask, Payload, TaskStatus, Text};
use support::{collect, Cluster, Opts};

const PORT_BASE: u16 = 23000;

fn task(kind: &'static str, payload: impl Into<Payload>) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: payload.into(),
        priority: 1,
        retries: 3,
        timeout_ms: 0,
    }
}

fn reconnecting(c: &Cluster) -> ClientOptions {
    ClientOptions {
        wire: c.wire,
        reconnect: Some(Duration::from_secs(30)),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_06_every_acknowledged_task_completes_exactly_once_across_master_crashes() {
    const TASKS: usize = 50_000;
    const BATCH: usize = 500;
    const IN_FLIGHT: usize = 4;
    const CRASHES: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = [
        "--journal",
        journal.to_str().unwrap(),
        "--durability",
        "fsync",
    ];
    let mut c = Cluster::start(
        PORT_BASE,
        Opts {
            workers: 2,
            slots: 8,
            master_args: &extra,
            master_timeout: "20s",
            ..Opts::default()
        },
    );
    let args = c.master_args(&extra);
    let mut client = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    c.wait_workers(&client, 2).await;

    let mut accepted: HashSet<u64> = HashSet::new();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut unsent = TASKS;
    let mut inflight = FuturesUnordered::new();
    let mut crashes = 0;
    let mut next_crash =
        Instant::now() + Duration::from_millis(rand::thread_rng().gen_range(200..800));
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.len() < TASKS || seen.len() < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "stuck: {} accepted, {} results, {crashes} crashes",
            accepted.len(),
            seen.len()
        );
        while inflight.len() < IN_FLIGHT && unsent > 0 {
            let n = unsent.min(BATCH);
            let ack = client.send_batch(vec![task("sleep", "1"); n]).unwrap();
            inflight.push(async move { (n, ack.await) });
            unsent -= n;
        }
        if crashes < CRASHES && Instant::now() >= next_crash {
            // Kill -9 at a random moment: while batches are submitted,
            // acknowledged and run.
            c.master.signal(libc::SIGKILL);
            c.master.wait_exit(Duration::from_secs(5));
            c.restart_master(&args);
            crashes += 1;
            next_crash =
                Instant::now() + Duration::from_millis(rand::thread_rng().gen_range(200..800));
        }
        tokio::select! {
            Some((n, ack)) = inflight.next() => match ack {
                Ok(a) => accepted.extend(a.first_id..a.first_id + a.count as u64),
                Err(e) => {
                    // Lost with the master before its acknowledgement: it
                    // may or may not have been taken; submit it again.
                    assert!(e.to_string().contains("connection lost"), "refused: {e}");
                    unsent += n;
                }
            },
            r = client.next_result() => {
                let r = r.expect("the client outlives the master");
                assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
                *seen.entry(r.id).or_default() += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    assert_eq!(crashes, CRASHES, "the run outlasted every crash");
    let lost = accepted.iter().filter(|id| !seen.contains_key(id)).count();
    let unexpected: Vec<_> = seen.keys().filter(|id| !accepted.contains(id)).collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(lost, 0, "lost");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), client.next_result())
            .await
            .is_err(),
        "an extra result arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_results_that_finished_while_its_master_was_away() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 2,
            master_args: &extra,
            master_timeout: "20s",
            ..Opts::default()
        },
    )
    .await;
    let args = c.master_args(&extra);
    let ids = client
        .submit_batch(vec![task("sleep", "1500"); 2])
        .await
        .unwrap();
    // Wait until the journal holds both hand-outs (nobody waits for that
    // record; were it lost, the attempt number would repeat and the worker
    // would report its result as the new attempt's).
    wait_handed_out(&journal, ids.clone()).await;
    drop(client);
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    // Time for both attempts to finish while no master is there. Not a race:
    // still running at the restart, they finish under the new master, which
    // takes their results (attempt 1) the same way, as a re-run's attempt 2
    // waits for a slot behind them.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    c.restart_master(&args);
    let mut client = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    client.fetch(ids.clone().collect()).unwrap();
    for r in collect(&mut client, ids.clone().count(), Duration::from_secs(20))
        .await
        .values()
    {
        assert_eq!(r.status, TaskStatus::Ok);
        assert_eq!(
            r.attempts, 1,
            "the attempt from before the restart counts; the task did not run again"
        );
    }
    // Logs are written by a background thread: give it a moment.
    support::wait_for_text(
        || c.master_log(),
        "from before the restart accepted",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stopped_with_ctrl_c_keeps_unfinished_tasks_for_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 0,
            master_args: &extra,
            ..Opts::default()
        },
    )
    .await;
    let args = c.master_args(&extra);
    let ids = client
        .submit_batch(vec![task("echo", "kept"); 5])
        .await
        .unwrap();
    c.master.signal(libc::SIGINT);
    assert!(c.master.wait_exit(Duration::from_secs(10)).success());
    c.restart_master(&args);
    let mut client = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    let s = client.status(false).await.unwrap();
    assert_eq!(
        (s.submitted, s.queues.iter().map(|q| q.depth).sum::<u64>()),
        (5, 5),
        "the tasks taken on from the journal count as submitted"
    );
    c.add_worker("w1", 2, &[]);
    client.fetch(ids.clone().collect()).unwrap();
    for r in collect(&mut client, ids.count(), Duration::from_secs(20))
        .await
        .values()
    {
        assert_eq!(
            (r.status, r.output.as_text()),
            (TaskStatus::Ok, Some("kept"))
        );
    }
    let s = client.status(false).await.unwrap();
    assert_eq!((s.submitted, s.completed), (5, 5));
}

/// A program that ends before it takes results its connection received
/// leaves them with the master: a result is acknowledged when taken, not
/// when it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_received_but_never_taken_stay_with_the_master_for_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &extra,
            ..Opts::default()
        },
    )
    .await;
    let ids = client
        .submit_batch(vec![task("echo", "untaken"); 3])
        .await
        .unwrap();
    // The status answer comes after the results on the same connection:
    // once it says they are done, this client has received them.
    c.wait_status(&client, Duration::from_secs(10), "the tasks done", |s| {
        s.completed == 3
    })
    .await;
    client.shutdown().await;
    let mut other = c.client().await;
    other.fetch(ids.clone().collect()).unwrap();
    for r in collect(&mut other, ids.count(), Duration::from_secs(10))
        .await
        .values()
    {
        assert_eq!(
            (r.status, r.output.as_text()),
            (TaskStatus::Ok, Some("untaken")),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_an_id_the_master_never_gave_answers_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &extra,
            ..Opts::default()
        },
    )
    .await;
    let id = client.submit(task("echo", "x")).await.unwrap();
    let r = client.next_result().await.unwrap();
    assert_eq!(r.status, TaskStatus::Ok);
    // An id never handed out is unknown at once.
    client.fetch(vec![999_999]).unwrap();
    let r = client.next_result().await.unwrap();
    assert_eq!((r.id, r.status), (999_999, TaskStatus::Unknown), "{r:?}");
    // The result was acknowledged on receipt (within the acknowledgement
    // delay): fetched again, it is kept until then, and unknown after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        client.fetch(vec![id]).unwrap();
        let r = client.next_result().await.unwrap();
        assert_eq!(r.id, id);
        if r.status == TaskStatus::Unknown {
            break;
        }
        assert_eq!(r.status, TaskStatus::Ok, "kept until acknowledged: {r:?}");
        assert!(
            Instant::now() < deadline,
            "never forgotten after its acknowledgement"
        );
    }
}

#[test]
fn a_master_refuses_a_journal_from_a_newer_runner_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let mut header = runner::journal::record::Salt::random().header();
    header[8..12].copy_from_slice(&(runner::journal::record::FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(&journal, header).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["master", "--port", "23990", "--scan", "23991-23992"])
        .args(["--journal", journal.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "format version {}, newer than this runner's {}",
            runner::journal::record::FORMAT_VERSION + 1,
            runner::journal::record::FORMAT_VERSION
        )),
        "{err}"
    );
}

/// Mounts a tmpfs of `size` at `dir` (root only).
fn mount_tmpfs(dir: &std::path::Path, size: &str, remount: bool) -> bool {
    let mut cmd = std::process::Command::new("mount");
    cmd.args(["-t", "tmpfs"]);
    let opts = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    cmd.args(["-o", &opts, "tmpfs"]).arg(dir);
    cmd.status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_and_loses_nothing_acknowledged() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs to fill needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    if !mount_tmpfs(dir.path(), "256k", false) {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(dir.path().to_owned());
    let journal = dir.path().join("journal");
    let extra = [
        "--journal",
        journal.to_str().unwrap(),
        "--durability",
        "fsync",
    ];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 0,
            master_args: &extra,
            ..Opts::default()
        },
    )
    .await;
    let args = c.master_args(&extra);
    // 16 KiB tasks, one at a time, until the disk is full.
    let big = Payload::from(vec![b'x'; 16 * 1024]);
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(acked.len() < 100, "256 KiB never filled up");
        match client.submit(task("echo", big.clone())).await {
            Ok(id) => acked.push(id),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        refusal.contains("journal") && refusal.contains("No space left on device"),
        "the refusal says why: {refusal}"
    );
    assert!(!acked.is_empty());
    // While full, new tasks are refused at once, with the reason.
    let again = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    let e = again.submit(task("echo", "small")).await.unwrap_err();
    assert!(e.to_string().contains("No space left on device"), "{e}");
    // Room again: the journal catches up by itself and accepts tasks.
    assert!(mount_tmpfs(dir.path(), "8m", true), "remount bigger");
    let deadline = Instant::now() + Duration::from_secs(10);
    let late = loop {
        match again.submit(task("echo", "small")).await {
            Ok(id) => break id,
            Err(e) => {
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // A crash now: every acknowledged task is still there after it.
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    c.restart_master(&args);
    c.add_worker("w1", 4, &[]);
    let mut client = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    acked.push(late);
    client.fetch(acked.clone()).unwrap();
    let mut got = HashSet::new();
    while got.len() < acked.len() {
        let r = tokio::time::timeout(Duration::from_secs(20), client.next_result())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "acknowledged tasks missing: {:?} of {:?}; master log:\n{}",
                    acked
                        .iter()
                        .filter(|i| !got.contains(*i))
                        .collect::<Vec<_>>(),
                    acked,
                    c.master_log()
                )
            })
            .unwrap();
        assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
        got.insert(r.id);
    }
}

/// Waits until the journal at `path` holds the first hand-out of each of
/// `ids`.
async fn wait_handed_out(path: &std::path::Path, ids: impl IntoIterator<Item = u64> + Clone) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let image = bytes::Bytes::from(std::fs::read(path).unwrap());
        let state = runner::journal::replay::replay(&image).unwrap().state;
        let handed_out = |id: u64| state.pending.get(&id).is_some_and(|p| p.attempt == 1);
        if ids.clone().into_iter().all(handed_out) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hand-outs never reached the journal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `attempt pid` lines an exec task wrote to `file`.
fn attempts_in(file: &std::path::Path) -> Vec<(u32, i32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, p) = l.split_once(' ')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

/// Waits until `file` holds a line for attempt `attempt`; returns its pid.
async fn pid_of_attempt(file: &std::path::Path, attempt: u32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((_, pid)) = attempts_in(file).into_iter().find(|(a, _)| *a == attempt) {
            return pid;
        }
        assert!(Instant::now() < deadline, "attempt {attempt} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_from_before_a_restart_stop_once_their_task_is_finished_or_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 4,
            master_args: &extra,
            worker_args: &["--allow-exec"],
            master_timeout: "20s",
            ..Opts::default()
        },
    )
    .await;
    let args = c.master_args(&extra);
    let (a_file, b_file) = (dir.path().join("a"), dir.path().join("b"));
    // A's first attempt ends after 3 s, any later one would run a minute;
    // B's attempts all run a minute.
    let script = |file: &std::path::Path, first: u32| {
        let s = format!(
            "echo $RUNNER_ATTEMPT $$ >> {f}; if [ $RUNNER_ATTEMPT = 1 ]; then sleep {first}; else sleep 60; fi",
            f = file.display()
        );
        NewTask {
            kind: Text::from_static("exec"),
            payload: serde_json::json!({ "argv": ["sh", "-c", s] })
                .to_string()
                .into(),
            priority: 1,
            retries: 3,
            timeout_ms: 0,
        }
    };
    let ids = client
        .submit_batch_detached(vec![script(&a_file, 3), script(&b_file, 60)])
        .await
        .unwrap();
    let (a, b) = (ids.start, ids.start + 1);
    pid_of_attempt(&a_file, 1).await;
    let b1 = pid_of_attempt(&b_file, 1).await;
    // Both hand-outs stored, as in the test above.
    wait_handed_out(&journal, [a, b]).await;
    drop(client);
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    c.restart_master(&args);
    let client = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    // The restarted master runs both again (attempt 2) beside the first
    // attempts, which the worker kept running.
    let a2 = pid_of_attempt(&a_file, 2).await;
    let b2 = pid_of_attempt(&b_file, 2).await;
    // A's first attempt finishes and its result counts: the second is
    // stopped, not left to run its minute.
    support::wait_dead(&[a2], Duration::from_secs(10), "A's attempt 2").await;
    // B is cancelled: both its attempts stop, the one from before the
    // restart too.
    let report = client.cancel(vec![b], "").await.unwrap();
    assert_eq!(report.cancelled, [b]);
    support::wait_dead(&[b1, b2], Duration::from_secs(10), "B's attempts").await;
}

/// Acknowledgements a master received but had not stored when it crashed
/// (here it is stopped while they arrive, then killed) are sent again by
/// the reconnecting client: the master does not keep, for good, results
/// that no client will fetch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_lost_in_a_master_crash_are_sent_again_after_the_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = ["--journal", journal.to_str().unwrap()];
    let (mut c, status_client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &extra,
            master_timeout: "20s",
            ..Opts::default()
        },
    )
    .await;
    let args = c.master_args(&extra);
    let mut client = Client::connect(
        c.addr,
        ClientOptions {
            name: "acker".into(),
            ..reconnecting(&c)
        },
    )
    .await
    .unwrap();
    let ids = client
        .submit_batch(vec![task("echo", "acked"); 3])
        .await
        .unwrap();
    // Received (the status answer comes after them on the connection),
    // but not yet taken, so not yet acknowledged.
    c.wait_status(&client, Duration::from_secs(10), "the tasks done", |s| {
        s.completed == 3
    })
    .await;
    drop(status_client);
    c.master.signal(libc::SIGSTOP);
    for r in collect(&mut client, 3, Duration::from_secs(5))
        .await
        .values()
    {
        assert_eq!(r.status, TaskStatus::Ok);
    }
    // The acknowledgements go (after their 5 ms delay) into a master that
    // reads nothing, then dies; any not yet sent go on the next connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    c.restart_master(&args);
    let reconnected = || {
        c.master_log()
            .lines()
            .filter(|l| l.contains("client connected") && l.contains("acker"))
            .count()
            >= 2
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reconnected() {
        assert!(Instant::now() < deadline, "the client did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its acknowledgements go first on the new connection, and the master
    // answers a status after what came before it there.
    client.status(false).await.unwrap();
    let mut other = c.client().await;
    other.fetch(ids.clone().collect()).unwrap();
    let got = collect(&mut other, 3, Duration::from_secs(5)).await;
    assert!(
        got.values().all(|r| r.status == TaskStatus::Unknown),
        "results the client holds are still kept: {got:?}"
    );
    drop(client);
}

/// Whether `strace` can run here (CI installs it; elsewhere the test that
/// needs it says it skipped).
fn strace() -> bool {
    std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A task id a worker may hold is never handed out again after a crash. A
/// master killed while a task's record waited for a slow disk had handed
/// that task out all the same; restarted without it, it gave the task's id
/// to the next task submitted, and that task got the first one's result from
/// the worker still running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_06_a_task_id_lost_with_the_master_is_never_another_tasks() {
    if !strace() {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is not installed, and CI must run this test"
        );
        eprintln!("SKIPPED: strace is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = [
        "--journal",
        journal.to_str().unwrap(),
        "--durability",
        "fsync",
    ];
    let (mut c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            slots: 2,
            master_args: &extra,
            master_timeout: "20s",
            ..Opts::default()
        },
    )
    .await;
    drop(client);
    let args = c.master_args(&extra);
    // A disk whose every sync takes 400 ms.
    c.master.signal(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    c.restart_master_under(
        &[
            "strace",
            "-f",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=400000",
        ],
        &args,
    );
    let first = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    c.wait_workers(&first, 1).await;
    // Another batch first, so that the writer is inside a slow sync when
    // the task's record is appended.
    let _other = first.send_batch(vec![task("echo", "other")]).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _sleeper = first.send_batch(vec![task("sleep", "3000")]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // strace and the master it runs, one process group.
    c.master.signal_group(libc::SIGKILL);
    c.master.wait_exit(Duration::from_secs(5));
    drop(first);
    c.restart_master(&args);
    let mut second = Client::connect(c.addr, reconnecting(&c)).await.unwrap();
    let ids = second
        .submit_batch(vec![task("echo", "mine")])
        .await
        .unwrap();
    let results = collect(&mut second, 1, Duration::from_secs(20)).await;
    let r = &results[&ids.start];
    assert_eq!(r.status, TaskStatus::Ok, "{r:?}");
    assert_eq!(
        r.output.as_ref(),
        b"mine",
        "the task got another task's result: {r:?}"
    );
}
