//! A master and workers on separate hosts (network namespaces made by
//! `../shared/tools/netns-lab`), with the network between them cut, slowed
//! and frozen (../shared/FAULTS.md, scenarios 3, 4 and 8, named after them).
//!
//! They need root, the lab tool, and Debian's nftables and iptables (per-peer
//! partitions, delays): `#[ignore]`d in a plain `cargo test` (counted there
//! as ignored), run by `scripts/test` with `--ignored` when this machine can,
//! which otherwise prints why it skips them. One lab at a time: the tests
//! take a lock.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::{Proc, BIN};

const PORT: &str = "4999";

static LAB: Mutex<()> = Mutex::new(());

fn lab_tool() -> PathBuf {
    std::env::var_os("NETNS_LAB").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/tools/netns-lab"
            ))
        },
        PathBuf::from,
    )
}

/// The lab's hosts h1..hN; torn down on drop.
struct Lab {
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Lab {
    fn up(hosts: usize) -> Lab {
        let guard = LAB.lock().unwrap_or_else(|e| e.into_inner());
        lab(&["down"]);
        lab(&["up", &hosts.to_string()]);
        Lab {
            _one_at_a_time: guard,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(lab_tool()).arg("down").output();
    }
}

fn lab(args: &[&str]) {
    let out = Command::new(lab_tool()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "netns-lab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(host: usize) -> String {
    format!("10.213.0.{host}")
}

fn ns(host: usize) -> String {
    format!("nlab-h{host}")
}

/// A master on h1 that finds its workers on the other hosts by scanning
/// them, everything authenticated with one secret.
struct Net {
    _lab: Lab,
    dir: tempfile::TempDir,
    /// Held so that it is killed when the test ends.
    _master: Proc,
    workers: Vec<(usize, Proc)>,
}

impl Net {
    fn start(lab: Lab, worker_hosts: &[usize], master_timeout: Option<&str>) -> Net {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "a secret only this lab's nodes hold",
        )
        .unwrap();
        let (secret, logs) = (
            dir.path().join("secret").to_str().unwrap().to_string(),
            dir.path().to_str().unwrap().to_string(),
        );
        let hosts: Vec<String> = worker_hosts.iter().map(|h| ip(*h)).collect();
        let scan_hosts = hosts.join(",");
        let mut master = Proc::spawn_in(
            &ns(1),
            "master",
            &[
                "master",
                "--quiet",
                "--log-dir",
                &logs,
                "--bind",
                &ip(1),
                "--port",
                PORT,
                "--scan",
                "5000-5010",
                "--scan-hosts",
                &scan_hosts,
                "--scan-interval",
                "200ms",
                "--heartbeat",
                "200ms",
                "--worker-timeout",
                "1s",
                "--secret-file",
                &secret,
            ],
        );
        master.wait_line(Duration::from_secs(10), |l| {
            l.starts_with("master listening")
        });
        let mut workers = Vec::new();
        for &h in worker_hosts {
            let (id, bind) = (format!("w{h}"), ip(h));
            let mut args = vec![
                "worker",
                "--quiet",
                "--log-dir",
                &logs,
                "--id",
                &id,
                "--bind",
                &bind,
                "--port-range",
                "5000-5010",
                "--slots",
                "2",
                "--heartbeat",
                "200ms",
                "--secret-file",
                &secret,
            ];
            if let Some(t) = master_timeout {
                args.extend(["--master-timeout", t]);
            }
            let mut p = Proc::spawn_in(&ns(h), &id, &args);
            p.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
            workers.push((h, p));
        }
        let net = Net {
            _lab: lab,
            dir,
            _master: master,
            workers,
        };
        net.wait(
            "every worker found across hosts",
            Duration::from_secs(10),
            |s| s["workers"].as_array().unwrap().len() == worker_hosts.len(),
        );
        net
    }

    fn secret(&self) -> String {
        self.dir.path().join("secret").to_str().unwrap().to_string()
    }

    fn master_addr(&self) -> String {
        format!("{}:{PORT}", ip(1))
    }

    /// `runner status --json`, from the master's host.
    fn status(&self) -> serde_json::Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns(1), BIN, "status", "--json"])
            .args([
                "--master",
                &self.master_addr(),
                "--secret-file",
                &self.secret(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < deadline,
                "{what}: not within {deadline:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn has_worker(s: &serde_json::Value, id: &str) -> bool {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id)
    }

    /// `runner submit --json` of `count` tasks, from the master's host.
    fn submit(&self, count: u32, task: &[&str]) -> Proc {
        let count = count.to_string();
        let (addr, secret) = (self.master_addr(), self.secret());
        let mut args = vec![
            "submit",
            "--json",
            "--master",
            &addr,
            "--secret-file",
            &secret,
            "--count",
            &count,
            "--retries",
            "5",
            "--",
        ];
        args.extend_from_slice(task);
        Proc::spawn_in(&ns(1), "submit", &args)
    }

    fn master_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, deadline: Duration) {
        let started = Instant::now();
        while !self.master_log().contains(needle) {
            assert!(
                started.elapsed() < deadline,
                "no {needle:?} in the master's log:\n{}",
                self.master_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every result of a `runner submit --json`, checked: each id once, all ok.
fn results_exactly_once(p: &mut Proc, count: usize, deadline: Duration) {
    assert!(
        p.wait_exit(deadline).success(),
        "submit failed: {:#?}",
        p.seen
    );
    let mut ids = std::collections::HashSet::new();
    for line in p.seen.iter().filter(|l| l.starts_with('{')) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        assert!(ids.insert(r["id"].as_u64().unwrap()), "duplicated: {r}");
    }
    assert_eq!(ids.len(), count, "lost: {:#?}", p.seen);
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_03_a_partitioned_worker_is_removed_its_tasks_finish_elsewhere_and_it_rejoins() {
    let net = Net::start(Lab::up(3), &[2, 3], Some("20s"));
    // One 3 s task per slot: w2's two are still running when it is healed.
    let mut submit = net.submit(4, &["sleep", "3000"]);
    net.wait("w2 busy", Duration::from_secs(10), |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "w2" && w["in_flight"].as_u64() > Some(0))
    });
    // Cut only the link between the master and w2 (nftables).
    lab(&["partition", "h2", "h1"]);
    let removed = net.wait("w2 removed", Duration::from_secs(5), |s| {
        !Net::has_worker(s, "w2")
    });
    assert!(
        removed < Duration::from_millis(1200 + 1000),
        "removed after {removed:?} (worker-timeout 1 s + heartbeat 200 ms, and status polling)"
    );
    // Healed: w2 is found again and registers anew; the attempts it kept
    // running (re-run elsewhere meanwhile) are stopped, and a result of one
    // that finished first comes late and is dropped.
    lab(&["heal", "h2"]);
    net.wait("w2 back", Duration::from_secs(10), |s| {
        Net::has_worker(s, "w2")
    });
    net.wait_log(
        "stopping the attempts the worker held when it was let go: they were given out again worker=w2",
        Duration::from_secs(10),
    );
    // Every task finished exactly once.
    results_exactly_once(&mut submit, 4, Duration::from_secs(30));
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_03_workers_cut_off_from_their_master_terminate_after_the_default_30s_master_timeout() {
    // Production value: the workers run with the default --master-timeout.
    let mut net = Net::start(Lab::up(3), &[2, 3], None);
    lab(&["partition", "h1"]);
    let cut = Instant::now();
    for (_, w) in &mut net.workers {
        let status = w.wait_exit(Duration::from_secs(32).saturating_sub(cut.elapsed()));
        assert_eq!(
            status.code(),
            Some(support::MASTER_TIMEOUT_EXIT),
            "{status:?}"
        );
        assert!(
            w.seen.iter().any(|l| l.contains("no master for")),
            "says why: {:#?}",
            w.seen
        );
    }
    let took = cut.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(32),
        "exited {took:?} after the cut (master-timeout 30 s, +2 s tolerance)"
    );
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_04_a_slow_lossy_link_slows_nothing_else_and_loses_nothing() {
    let net = Net::start(Lab::up(3), &[2, 3], Some("20s"));
    // 50 ms more and 5 % loss on everything w3 sends.
    lab(&["delay", "h3", "50", "5"]);
    let mut submit = net.submit(300, &["sleep", "20"]);
    results_exactly_once(&mut submit, 300, Duration::from_secs(60));
    let s = net.status();
    assert!(
        Net::has_worker(&s, "w2") && Net::has_worker(&s, "w3"),
        "{s}"
    );
    assert!(
        !net.master_log().contains("worker removed"),
        "no worker was dropped on a slow link:\n{}",
        net.master_log()
    );
    // The healthy worker did its share: the slow one did not hold it up.
    let done = |id: &str| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .and_then(|w| w["done"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        done("w2") >= done("w3"),
        "w2 {} w3 {}",
        done("w2"),
        done("w3")
    );
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_04_a_200ms_lossy_link_is_not_taken_for_a_dead_worker_but_a_delay_past_the_timeout_is() {
    let net = Net::start(Lab::up(3), &[2, 3], Some("20s"));
    // 200 ms and 10 % loss: under worker-timeout (1 s) minus a heartbeat.
    lab(&["delay", "h3", "200", "10"]);
    let mut submit = net.submit(100, &["sleep", "20"]);
    results_exactly_once(&mut submit, 100, Duration::from_secs(60));
    assert!(
        !net.master_log().contains("worker removed"),
        "a slow worker was taken for dead:\n{}",
        net.master_log()
    );
    // The boundary: a delay longer than the worker timeout is silence.
    lab(&["delay", "h3", "1500"]);
    net.wait_log("worker removed: heartbeat lost", Duration::from_secs(10));
    let log = net.master_log();
    assert!(
        log.lines()
            .any(|l| l.contains("heartbeat lost") && l.contains("worker=w3")),
        "{log}"
    );
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_08_a_frozen_then_thawed_master_evicts_no_worker() {
    let net = Net::start(Lab::up(3), &[2, 3], Some("20s"));
    // Frozen for twice the worker timeout: the workers' pings wait in the
    // master's sockets, and it must read them before judging anyone.
    lab(&["freeze", "h1"]);
    std::thread::sleep(Duration::from_secs(2));
    lab(&["thaw", "h1"]);
    // Once the master has heard both workers since the thaw, its first
    // heartbeat sweep after the pause is behind it: an eviction would be in
    // its log by then.
    net.wait(
        "both workers heard since the thaw",
        Duration::from_secs(10),
        |s| {
            let workers = s["workers"].as_array().unwrap();
            workers.len() == 2 && workers.iter().all(|w| w["silent_ms"].as_u64() < Some(300))
        },
    );
    let s = net.status();
    assert!(
        Net::has_worker(&s, "w2") && Net::has_worker(&s, "w3"),
        "{s}"
    );
    assert!(
        !net.master_log().contains("worker removed"),
        "a worker was evicted after the thaw:\n{}",
        net.master_log()
    );
    let mut submit = net.submit(10, &["echo", "after the thaw"]);
    results_exactly_once(&mut submit, 10, Duration::from_secs(10));
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn fault_05_a_silently_powered_off_worker_is_removed_and_never_resurrected() {
    let net = Net::start(Lab::up(3), &[2, 3], Some("20s"));
    let mut submit = net.submit(4, &["sleep", "1000"]);
    net.wait("w2 busy", Duration::from_secs(10), |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "w2" && w["in_flight"].as_u64() > Some(0))
    });
    // Power-off: cut first, so that no FIN or RST from its dying kernel
    // reaches the master; only heartbeat age can tell.
    lab(&["partition", "h2"]);
    lab(&["crash", "h2"]);
    let removed = net.wait("w2 removed", Duration::from_secs(5), |s| {
        !Net::has_worker(s, "w2")
    });
    assert!(
        removed < Duration::from_millis(2200),
        "removed after {removed:?}"
    );
    results_exactly_once(&mut submit, 4, Duration::from_secs(30));
    // Back on the network, with nothing running there: the old connection
    // is reset and the id does not come back.
    lab(&["heal", "h2"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!Net::has_worker(&net.status(), "w2"));
}

#[test]
#[ignore = "needs root and netns-lab; scripts/test runs it with --ignored"]
fn workers_on_other_hosts_are_found_by_scan_hosts_and_only_there() {
    // The master scans h2 only: the worker on h2 registers, the one on h3
    // (same ports, same secret, not listed) is never dialed.
    let mut net = Net::start(Lab::up(3), &[2], Some("20s"));
    let secret = net.secret();
    let logs = net.dir.path().to_str().unwrap().to_string();
    let bind = ip(3);
    let mut w3 = Proc::spawn_in(
        &ns(3),
        "w3",
        &[
            "worker",
            "--quiet",
            "--log-dir",
            &logs,
            "--id",
            "w3",
            "--bind",
            &bind,
            "--port-range",
            "5000-5010",
            "--secret-file",
            &secret,
            "--master-timeout",
            "20s",
        ],
    );
    w3.wait_line(Duration::from_secs(10), |l| l.contains(" listening on "));
    net.workers.push((3, w3));
    // Several scan intervals (200 ms) later:
    std::thread::sleep(Duration::from_millis(1500));
    let s = net.status();
    assert!(Net::has_worker(&s, "w2"), "{s}");
    assert!(!Net::has_worker(&s, "w3"), "{s}");
    let mut submit = net.submit(6, &["echo", "across hosts"]);
    results_exactly_once(&mut submit, 6, Duration::from_secs(10));
}
