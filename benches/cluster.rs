//! An in-process cluster end to end: a master, two workers and a client in
//! one process (one runtime), 10,000 no-op tasks per iteration, submitted in
//! batches and all awaited. Throughput is in tasks.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use runner::client::{Client, ClientOptions};
use runner::master::{Master, MasterConfig};
use runner::net::PortRange;
use runner::proto::{NewTask, Payload, Text};
use runner::worker::{Worker, WorkerConfig};

const TASKS: usize = 10_000;
const BATCH: usize = 1_000;

fn cluster(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker_ports = PortRange {
        first: 24001,
        last: 24039,
    };
    let (master, workers, mut client) = rt.block_on(async {
        let master = Master::start(MasterConfig {
            ports: PortRange {
                first: 24000,
                last: 24000,
            },
            scan: vec![worker_ports],
            scan_interval: Duration::from_millis(100),
            prefetch: 4096,
            ..MasterConfig::default()
        })
        .await
        .expect("master starts");
        let mut workers = Vec::new();
        for i in 0..2 {
            let w = Worker::builder()
                .config(WorkerConfig {
                    id: format!("bench-w{i}"),
                    ports: worker_ports,
                    slots: 2,
                    ..WorkerConfig::default()
                })
                .build()
                .start()
                .await
                .expect("worker starts");
            workers.push(w);
        }
        let client = Client::connect(master.local_addr(), ClientOptions::default())
            .await
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while master.worker_count() < 2 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (master, workers, client)
    });
    let task = NewTask {
        kind: Text::from_static("noop"),
        payload: Payload::from("0123456789abcdef"),
        priority: 128,
        retries: 3,
        timeout_ms: 0,
    };
    let mut g = c.benchmark_group("cluster_in_process");
    g.throughput(Throughput::Elements(TASKS as u64));
    g.sample_size(20);
    g.bench_function("noop_16B_x10000", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut acks = Vec::new();
                    for _ in 0..TASKS / BATCH {
                        acks.push(client.send_batch(vec![task.clone(); BATCH]).unwrap());
                    }
                    for a in acks {
                        a.await.unwrap();
                    }
                    for _ in 0..TASKS {
                        client.next_result().await.unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(async {
        client.close();
        for w in workers {
            w.shutdown().await;
        }
        master.shutdown().await;
    });
}

criterion_group!(benches, cluster);
criterion_main!(benches);
