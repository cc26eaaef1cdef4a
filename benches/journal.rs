//! The journal against an embedded store, storing what the master stores
//! when it accepts a batch: 256 tasks of 16 B payloads, one batch at a time
//! (one client waiting for each acknowledgement: no group commit helps).
//! - `runner journal`: append one `Accepted` record, wait until stored.
//! - `redb`: one write transaction inserting the 256 encoded tasks by id.
//!
//! Each with no sync (written to the OS) and with a sync per batch.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use runner::journal::{Durability, Entry, Journal, JournalConfig};
use runner::proto::{NewTask, Payload, Text};

const BATCH: usize = 256;
const TASKS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("tasks");

fn tasks() -> Vec<NewTask> {
    (0..BATCH)
        .map(|_| NewTask {
            kind: Text::from_static("noop"),
            payload: Payload::from(&[7u8; 16][..]),
            priority: 128,
            retries: 3,
            timeout_ms: 0,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batch = tasks();
    // A task as the journal encodes it is 25 bytes (kind, payload, priority,
    // retries, timeout); redb stores values of the same size.
    let encoded: Vec<Vec<u8>> = vec![vec![7u8; 25]; BATCH];
    let mut g = c.benchmark_group("store 256 accepted tasks");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, durability, redb_durability) in [
        ("no sync", Durability::None, redb::Durability::None),
        (
            "sync per batch",
            Durability::Fsync,
            redb::Durability::Immediate,
        ),
    ] {
        let path = dir
            .path()
            .join(format!("journal-{}", name.replace(' ', "-")));
        let (j, _) = Journal::open(&JournalConfig {
            compact_at: u64::MAX,
            ..JournalConfig::new(&path, durability)
        })
        .unwrap();
        let mut next = 1u64;
        g.bench_function(format!("runner journal, {name}"), |b| {
            b.iter(|| {
                let end = j.append(Entry::Accepted {
                    first_id: next,
                    tasks: &batch,
                });
                next += BATCH as u64;
                rt.block_on(j.wait_stored(end)).unwrap();
            })
        });
        j.close();

        let db =
            redb::Database::create(dir.path().join(format!("redb-{}", name.replace(' ', "-"))))
                .unwrap();
        let mut next = 1u64;
        g.bench_function(format!("redb, {name}"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let mut txn = db.begin_write().unwrap();
                    txn.set_durability(redb_durability);
                    {
                        let mut t = txn.open_table(TASKS).unwrap();
                        for e in &encoded {
                            t.insert(next, e.as_slice()).unwrap();
                            next += 1;
                        }
                    }
                    txn.commit().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
