//! Codec cost per task: encode and decode of one task and of a 64-task batch,
//! payloads of 16 B and 4 KiB, on both wires. Throughput is in tasks, so
//! criterion's "thrpt" line is tasks per second and "time" / N is ns per task.
//! The message is `run` (master to worker), the hot path's biggest frame.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use runner::proto::{Assignment, Payload, Run, Text, ToWorker, Wire, WireCodec};
use tokio_util::codec::Decoder;

fn batch(tasks: usize, payload_len: usize) -> ToWorker {
    // Text payloads, so the JSON wire carries them as strings (its common case).
    let payload = Payload(Bytes::from(vec![b'p'; payload_len]));
    ToWorker::Run(Run {
        tasks: (0..tasks as u64)
            .map(|i| Assignment {
                task_id: 1_000_000 + i,
                attempt: 1,
                kind: Text::from_static("noop"),
                payload: payload.clone(),
                timeout_ms: 30_000,
            })
            .collect(),
    })
}

fn codec(c: &mut Criterion) {
    for wire in [Wire::Bincode, Wire::Json] {
        let mut group = c.benchmark_group(format!("codec/{wire}"));
        for tasks in [1usize, 64] {
            for payload in [16usize, 4096] {
                let msg = batch(tasks, payload);
                let label = format!("{tasks}x{payload}B");
                group.throughput(Throughput::Elements(tasks as u64));

                let mut enc = WireCodec::<ToWorker, ToWorker>::new(wire);
                let mut out = BytesMut::with_capacity(1 << 20);
                group.bench_function(BenchmarkId::new("encode", &label), |b| {
                    b.iter(|| {
                        out.clear();
                        enc.encode_ref(&msg, &mut out).unwrap();
                    })
                });

                let mut frame = BytesMut::new();
                enc.encode_ref(&msg, &mut frame).unwrap();
                let mut dec = WireCodec::<ToWorker, ToWorker>::new(wire);
                dec.handshake_complete();
                group.bench_function(BenchmarkId::new("decode", &label), |b| {
                    b.iter_batched_ref(
                        || frame.clone(),
                        |buf| dec.decode(buf).unwrap().unwrap(),
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
