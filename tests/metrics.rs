//! `runner master --metrics ADDR` serves Prometheus metrics that `promtool
//! check metrics` accepts, with the counters and histograms of the work done.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use runner::proto::{NewTask, Payload, Text};
use support::{collect, Cluster, Opts};

const PORT_BASE: u16 = 25000;

fn get(addr: &str, path: &str) -> String {
    request(addr, "GET", path)
}

fn request(addr: &str, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn promtool() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("promtool"))
        .find(|p| p.exists())
}

/// A master serving `/metrics` with one worker: the cluster, a client and
/// the metrics address.
async fn with_metrics() -> (Cluster, runner::client::Client, String) {
    let metrics_port = support::port_block(PORT_BASE);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &["--metrics", &metrics],
            ..Opts::default()
        },
    )
    .await;
    (c, client, metrics)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_in_the_prometheus_format_promtool_accepts() {
    let (c, mut client, metrics) = with_metrics().await;
    let task = NewTask {
        kind: Text::from_static("echo"),
        payload: Payload::from("m"),
        priority: 7,
        retries: 0,
        timeout_ms: 0,
    };
    client.submit_batch(vec![task; 5]).await.unwrap();
    collect(&mut client, 5, Duration::from_secs(10)).await;
    drop(c.master_log());

    let resp = get(&metrics, "/metrics");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in [
        "runner_tasks_submitted_total 5",
        "runner_tasks_completed_total 5",
        "runner_workers 1",
        "runner_queue_depth 0",
        "runner_end_to_end_seconds_count 5",
        "runner_end_to_end_seconds_bucket{le=\"+Inf\"} 5",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    // Per-priority series only: summing them gives the depth.
    assert!(
        !body.contains("priority=\"all\""),
        "a total among the per-priority series:\n{body}"
    );
    assert!(
        body.contains("runner_worker_in_flight{worker=\"w1\"} 0"),
        "{body}"
    );
    assert!(get(&metrics, "/other").starts_with("HTTP/1.1 404"));
    // A query, as some scrape configurations add, and a HEAD.
    assert!(get(&metrics, "/metrics?format=text").contains("runner_workers 1"));
    let head = request(&metrics, "HEAD", "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    // Another method is told which ones are served.
    let post = request(&metrics, "POST", "/metrics");
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    // A head too long is answered, not just dropped; a head ended by bare
    // line feeds is read.
    let raw = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(&metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(9000));
    assert!(raw(long.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(raw(b"GET /metrics HTTP/1.1\nHost: t\n\n").starts_with("HTTP/1.1 200"));

    match promtool() {
        Some(tool) => {
            let mut child = std::process::Command::new(tool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed, and CI must check the metrics with it")
        }
        None => eprintln!(
            "SKIPPED the promtool check: promtool is not installed (apt-get install prometheus)"
        ),
    }
}

/// A task between a failed attempt and its next is in no queue and on no
/// worker: the metrics count it, or it would seem to have vanished.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_waiting_out_its_retry_back_off_shows_in_the_metrics() {
    let (_c, client, metrics) = with_metrics().await;
    let task = NewTask {
        kind: Text::from_static("fail"),
        payload: Payload::from("f"),
        priority: 0,
        retries: 100,
        timeout_ms: 0,
    };
    client.submit_batch(vec![task]).await.unwrap();
    // Back-offs double from 50 ms: within a few attempts the task spends
    // most of its time waiting.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = get(&metrics, "/metrics");
        let has = |line: &str| body.lines().any(|l| l == line);
        if has("runner_tasks_waiting_to_retry 1")
            && has("runner_queue_depth 0")
            && has("runner_tasks_running 0")
        {
            assert!(body.contains("# TYPE runner_tasks_waiting_to_retry gauge"));
            assert!(has("runner_results_dropped_total 0"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no task counted as waiting to retry:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A retried task's every attempt is timed from dispatch to its end, not
/// only the last: the time lost to failed attempts shows.
#[tokio::test(flavor = "multi_thread")]
async fn every_attempt_of_a_retried_task_counts_in_dispatch_to_result() {
    let (_c, mut client, metrics) = with_metrics().await;
    let task = NewTask {
        kind: Text::from_static("fail"),
        payload: Payload::from("f"),
        priority: 0,
        retries: 2,
        timeout_ms: 0,
    };
    client.submit_batch(vec![task]).await.unwrap();
    let results = collect(&mut client, 1, Duration::from_secs(10)).await;
    let r = results.values().next().unwrap();
    assert_eq!(r.attempts, 3);
    let body = get(&metrics, "/metrics");
    for line in [
        "runner_dispatch_to_result_seconds_count 3",
        "runner_end_to_end_seconds_count 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
}
