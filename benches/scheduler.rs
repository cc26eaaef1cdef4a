//! The lock-free priority queue against the simple alternative, a
//! `Mutex<BinaryHeap>` ordered by (priority, FIFO sequence): one thread
//! pushing then popping, and two threads (one pushing, one popping) in
//! contention, as the master's client and worker connections do.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use runner::sched::PriorityQueue;

const N: u64 = 10_000;

trait Queue: Sync {
    fn push(&self, priority: u8, v: u64);
    fn pop(&self) -> Option<u64>;
}

impl Queue for PriorityQueue<u64> {
    fn push(&self, priority: u8, v: u64) {
        PriorityQueue::push(self, priority, v)
    }
    fn pop(&self) -> Option<u64> {
        PriorityQueue::pop(self).map(|(_, v)| v)
    }
}

/// A heap entry: priority, then the FIFO sequence (older first), then the item.
type Entry = (u8, Reverse<u64>, u64);

/// The baseline: one lock around a heap; the sequence number keeps FIFO order
/// within a priority.
#[derive(Default)]
struct LockedHeap(Mutex<(u64, BinaryHeap<Entry>)>);

impl Queue for LockedHeap {
    fn push(&self, priority: u8, v: u64) {
        let mut g = self.0.lock().unwrap();
        let seq = g.0;
        g.0 += 1;
        g.1.push((priority, Reverse(seq), v));
    }
    fn pop(&self) -> Option<u64> {
        self.0.lock().unwrap().1.pop().map(|(_, _, v)| v)
    }
}

fn priority(i: u64) -> u8 {
    // A few priorities in use, as in a real mix.
    [10u8, 128, 128, 200][(i % 4) as usize]
}

fn one_thread<Q: Queue>(q: &Q, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        for i in 0..N {
            q.push(priority(i), i);
        }
        for _ in 0..N {
            std::hint::black_box(q.pop());
        }
    }
    start.elapsed()
}

fn two_threads<Q: Queue>(q: &Q, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..N {
                    q.push(priority(i), i);
                }
            });
            s.spawn(|| {
                let mut got = 0;
                while got < N {
                    if q.pop().is_some() {
                        got += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        });
    }
    start.elapsed()
}

fn scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(N));
    let lock_free = PriorityQueue::<u64>::new();
    let locked = LockedHeap::default();
    g.bench_function("lock_free/1_thread", |b| {
        b.iter_custom(|n| one_thread(&lock_free, n))
    });
    g.bench_function("mutex_binary_heap/1_thread", |b| {
        b.iter_custom(|n| one_thread(&locked, n))
    });
    g.bench_function("lock_free/2_threads", |b| {
        b.iter_custom(|n| two_threads(&lock_free, n))
    });
    g.bench_function("mutex_binary_heap/2_threads", |b| {
        b.iter_custom(|n| two_threads(&locked, n))
    });
    g.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
