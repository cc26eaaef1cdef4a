//! The library API: a master, a worker with a custom kind and a client, all in
//! one process (as tests, benches and the load generator use them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use runner::client::{Client, ClientOptions};
use runner::master::{Master, MasterConfig};
use runner::net::PortRange;
use runner::proto::{NewTask, Payload, TaskResult, TaskStatus, Text};
use runner::worker::{TaskError, Worker, WorkerBuilder, WorkerConfig, WorkerHandle};

/// A master on `base`, the worker `builder` makes (id "lib", 2 slots, on the
/// next 39 ports) and a client that has seen the worker join.
async fn cluster(base: u16, builder: WorkerBuilder) -> (Master, WorkerHandle, Client) {
    cluster_with(base, builder, MasterConfig::default()).await
}

/// [`cluster`], with the master's other settings from `master`.
async fn cluster_with(
    base: u16,
    builder: WorkerBuilder,
    master: MasterConfig,
) -> (Master, WorkerHandle, Client) {
    let worker_ports = PortRange {
        first: base + 1,
        last: base + 39,
    };
    let master = Master::start(MasterConfig {
        ports: PortRange {
            first: base,
            last: base,
        },
        scan: vec![worker_ports],
        scan_interval: Duration::from_millis(100),
        ..master
    })
    .await
    .unwrap();
    let worker = builder
        .config(WorkerConfig {
            id: "lib".into(),
            ports: worker_ports,
            slots: 2,
            ..WorkerConfig::default()
        })
        .build()
        .start()
        .await
        .unwrap();
    let client = Client::connect(master.local_addr(), ClientOptions::default())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = client.status(false).await.unwrap();
            if !s.workers.is_empty() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker is discovered");
    assert_eq!(status.workers[0].id, "lib");
    (master, worker, client)
}

fn task(kind: &'static str, payload: &'static str) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: Payload::from(payload),
        priority: 128,
        retries: 0,
        timeout_ms: 0,
    }
}

/// The next `n` results, in id order.
async fn results(client: &mut Client, n: usize) -> Vec<TaskResult> {
    let mut results: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), client.results().take(n).collect())
            .await
            .expect("every result, as a stream");
    results.sort_by_key(|r| r.id);
    results
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_kind_registered_through_the_builder_runs_in_process() {
    let builder = Worker::builder()
        .handler("reverse", |p: Bytes| async move {
            let mut v = p.to_vec();
            v.reverse();
            Ok::<_, String>(Bytes::from(v))
        })
        .handler("refuse", |_p: Bytes| async move {
            Err::<Bytes, _>("refused by the handler")
        })
        .handler("reject", |_p: Bytes| async move {
            Err::<Bytes, _>(TaskError::rejected("no attempt could read this"))
        });
    let (master, worker, mut client) = cluster(23000, builder).await;
    let ids = client
        .submit_batch(vec![
            task("reverse", "abc"),
            task("refuse", ""),
            NewTask {
                retries: 3,
                ..task("reject", "")
            },
        ])
        .await
        .unwrap();
    let results = results(&mut client, 3).await;
    assert_eq!(results[0].id, ids.start);
    assert_eq!(results[0].output.as_text(), Some("cba"));
    assert_eq!(results[1].status, TaskStatus::Failed);
    assert_eq!(results[1].errors[0].reason, "refused by the handler");
    assert_eq!(results[2].status, TaskStatus::Failed);
    assert_eq!(results[2].attempts, 1, "a rejected input is not retried");
    client.close();
    worker.shutdown().await;
    master.shutdown().await;
}

/// The worker's own runtime has one thread; an attempt of `meet` holds its
/// thread until another is running too (or 5 s have passed), so both meet
/// only if handlers run on the runtime given to `tasks_on`, two at once.
#[tokio::test(flavor = "current_thread")]
async fn spawned_kinds_run_in_parallel_on_the_runtime_given_to_tasks_on() {
    let tasks_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let builder = Worker::builder()
        .tasks_on(tasks_rt.handle().clone())
        .handler("meet", move |_p: Bytes| {
            let running = running.clone();
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                let give_up = Instant::now() + Duration::from_secs(5);
                while running.load(Ordering::SeqCst) < 2 && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let met = running.load(Ordering::SeqCst) >= 2;
                Ok::<_, String>(Bytes::from_static(if met { b"met" } else { b"alone" }))
            }
        });
    let (master, worker, mut client) = cluster(23040, builder).await;
    client
        .submit_batch(vec![task("meet", ""), task("meet", "")])
        .await
        .unwrap();
    for r in results(&mut client, 2).await {
        assert_eq!(r.output.as_text(), Some("met"), "{r:?}");
    }
    client.close();
    worker.shutdown().await;
    master.shutdown().await;
    tasks_rt.shutdown_background();
}

/// A master on `port` that finds no workers and keeps at most
/// `unclaimed_results_max` results for absent clients, and a client.
async fn master_alone(port: u16, unclaimed_results_max: usize) -> (Master, Client) {
    let master = Master::start(MasterConfig {
        ports: PortRange {
            first: port,
            last: port,
        },
        scan: Vec::new(),
        unclaimed_results_max,
        ..MasterConfig::default()
    })
    .await
    .unwrap();
    let client = Client::connect(master.local_addr(), ClientOptions::default())
        .await
        .unwrap();
    (master, client)
}

/// Without a journal a master keeps a bounded number of results for
/// clients that are not there: a detached batch whose results would not
/// all fit is refused `busy` up front, not dropped when it finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_detached_batch_past_the_unclaimed_results_bound_is_refused_busy() {
    let (master, client) = master_alone(23080, 10).await;
    let fits = client
        .submit_batch_detached((0..10).map(|_| task("noop", "")).collect())
        .await
        .unwrap();
    assert_eq!(fits.end - fits.start, 10);
    match client.submit_batch_detached(vec![task("noop", "")]).await {
        Err(runner::client::ClientError::Refused(e)) => {
            assert_eq!(e.code, runner::proto::ErrorCode::BUSY);
            assert!(e.message.contains("at most 10"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    client.close();
    master.shutdown().await;
}

/// Without a journal the results kept for absent clients are bounded in
/// bytes too: once they weigh the bound, a detached batch is refused
/// `busy`, whatever their count.
#[tokio::test(flavor = "multi_thread")]
async fn detached_batches_are_refused_busy_once_kept_results_weigh_their_bound() {
    let (master, _worker, client) = cluster_with(
        23120,
        Worker::builder(),
        MasterConfig {
            kept_results_bytes_max: 1024 * 1024,
            ..MasterConfig::default()
        },
    )
    .await;
    // Two echoes of 600 KiB: 1.2 MiB of results once they are done.
    let big = NewTask {
        payload: Payload::from(vec![b'x'; 600 * 1024]),
        ..task("echo", "")
    };
    client
        .submit_batch_detached(vec![big.clone(), big])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.submit_batch_detached(vec![task("noop", "")]).await {
            Err(runner::client::ClientError::Refused(e)) => {
                assert_eq!(e.code, runner::proto::ErrorCode::BUSY);
                assert!(
                    e.message.contains("MiB wait to be fetched"),
                    "{}",
                    e.message
                );
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    client.close();
    master.shutdown().await;
}

/// A batch sent as several messages, refused after its first part: the
/// error names the part that was accepted (its tasks run), not only the
/// refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_after_its_first_part_names_the_ids_that_were_accepted() {
    let (master, client) = master_alone(23081, 20_000).await;
    let part = runner::limits::BATCH_TASKS_MAX as u64;
    let tasks = (0..2 * part).map(|_| task("noop", "")).collect();
    match client.submit_batches(tasks, true).await {
        Err(runner::client::ClientError::Partial {
            accepted,
            unsure,
            error,
        }) => {
            assert_eq!(accepted.len(), 1);
            assert_eq!(accepted[0].end - accepted[0].start, part);
            assert_eq!(unsure, 0, "the second part was refused, not lost");
            assert!(matches!(*error, runner::client::ClientError::Refused(_)));
        }
        other => panic!("{other:?}"),
    }
    client.close();
    master.shutdown().await;
}

/// A client whose sessions keep ending soon after they start (a master
/// that takes each connection and drops it, as one whose journal cannot be
/// written does) reconnects ever more slowly, not in a loop: here through
/// a proxy that cuts every connection after the first one 50 ms in.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_whose_sessions_end_at_once_reconnects_ever_more_slowly() {
    let (master, _client) = master_alone(23082, 10).await;
    let to = master.local_addr();
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let cut_first = Arc::new(tokio::sync::Notify::new());
    let cut = cut_first.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = proxy.accept().await.unwrap();
            let n = counted.fetch_add(1, Ordering::Relaxed);
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let pipe = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                if n == 0 {
                    tokio::select! {
                        _ = pipe => {}
                        _ = cut.notified() => {}
                    }
                } else {
                    let _ = tokio::time::timeout(Duration::from_millis(50), pipe).await;
                }
            });
        }
    });
    let client = Client::connect(
        proxy_addr,
        ClientOptions {
            reconnect: Some(Duration::from_secs(60)),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    client.status(false).await.unwrap();
    cut_first.notify_one();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Pauses of 100, 200, 400, 800 and 1,600 ms, each after a 50 ms session:
    // about 6 connections in 3 s. Without them, one every 50 ms: 60.
    let made = connections.load(Ordering::Relaxed) - 1;
    assert!(
        (2..=10).contains(&made),
        "{made} connections in {:?}",
        start.elapsed()
    );
    client.close();
    master.shutdown().await;
}
