//! A custom task kind through the library, with the whole cluster in one
//! process: a master, a worker that knows how to "shout", and a client.
//!
//! ```sh
//! cargo run --example custom_kind
//! ```

use std::time::Duration;

use bytes::Bytes;
use runner::client::{Client, ClientOptions};
use runner::master::{Master, MasterConfig};
use runner::net::PortRange;
use runner::proto::{NewTask, Payload, Text};
use runner::worker::{TaskError, Worker, WorkerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Ports of their own, so the example runs beside a real cluster.
    let worker_ports = PortRange {
        first: 7101,
        last: 7199,
    };
    let master = Master::start(MasterConfig {
        ports: PortRange {
            first: 7100,
            last: 7100,
        },
        scan: vec![worker_ports],
        scan_interval: Duration::from_millis(200),
        ..MasterConfig::default()
    })
    .await?;

    let worker = Worker::builder()
        .config(WorkerConfig {
            id: "shouter".into(),
            ports: worker_ports,
            ..WorkerConfig::default()
        })
        .handler("shout", |payload: Bytes| async move {
            // Bytes that are not text would fail on every attempt: rejected,
            // so the task is reported failed at once instead of retried.
            let text = std::str::from_utf8(&payload)
                .map_err(|e| TaskError::rejected(format!("not text: {e}")))?;
            Ok::<_, TaskError>(Bytes::from(text.to_uppercase() + "!"))
        })
        .build()
        .start()
        .await?;

    let mut client = Client::connect(master.local_addr(), ClientOptions::default()).await?;
    while master.worker_count() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let task = NewTask {
        kind: Text::from_static("shout"),
        payload: Payload::from("hello from a custom kind"),
        priority: 128,
        retries: 1,
        timeout_ms: 5_000,
    };
    let id = client.submit(task).await?;
    let result = client.next_result().await.ok_or("no result")?;
    assert_eq!(result.id, id);
    println!(
        "task {id} ran on {}: {}",
        result.worker,
        result.output.as_text().unwrap_or("<binary>")
    );

    client.close();
    worker.shutdown().await;
    master.shutdown().await;
    Ok(())
}
