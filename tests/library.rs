//! The library API: a master, a worker with a custom kind and a client, all in
//! one process (as tests, benches and the load generator use them).

use std::time::Duration;

use bytes::Bytes;
use runner::client::{Client, ClientOptions};
use runner::master::{Master, MasterConfig};
use runner::net::PortRange;
use runner::proto::{NewTask, Payload, TaskStatus, Text};
use runner::worker::{Worker, WorkerConfig};

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_kind_registered_through_the_builder_runs_in_process() {
    let worker_ports = PortRange {
        first: 23001,
        last: 23039,
    };
    let master = Master::start(MasterConfig {
        ports: PortRange {
            first: 23000,
            last: 23000,
        },
        scan: vec![worker_ports],
        scan_interval: Duration::from_millis(100),
        ..MasterConfig::default()
    })
    .await
    .unwrap();
    let worker = Worker::builder()
        .config(WorkerConfig {
            id: "lib".into(),
            ports: worker_ports,
            slots: 2,
            ..WorkerConfig::default()
        })
        .handler("reverse", |p: Bytes| async move {
            let mut v = p.to_vec();
            v.reverse();
            Ok::<_, String>(Bytes::from(v))
        })
        .handler("refuse", |_p: Bytes| async move {
            Err::<Bytes, _>("refused by the handler")
        })
        .build()
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(master.local_addr(), ClientOptions::default())
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
    let t = |kind: &'static str, payload: &'static str| NewTask {
        kind: Text::from_static(kind),
        payload: Payload::from(payload),
        priority: 128,
        retries: 0,
        timeout_ms: 0,
    };
    let ids = client
        .submit_batch(vec![t("reverse", "abc"), t("refuse", "")])
        .await
        .unwrap();
    use futures::StreamExt;
    let mut results: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), client.results().take(2).collect())
            .await
            .expect("both results as a stream");
    results.sort_by_key(|r| r.id);
    assert_eq!(results[0].id, ids.start);
    assert_eq!(results[0].output.as_text(), Some("cba"));
    assert_eq!(results[1].status, TaskStatus::Failed);
    assert_eq!(results[1].errors[0].reason, "refused by the handler");
    client.close();
    worker.shutdown().await;
    master.shutdown().await;
}
