//! Model checks of the lock-free queue's bitmap protocol: every interleaving
//! of concurrent pushes and pops, explored by loom. Run with
//! `RUSTFLAGS="--cfg runner_loom" cargo test --release --test loom_scheduler`
//! (`.ci/run` does, in its own target directory).
#![cfg(runner_loom)]

use loom::sync::Arc;
use loom::thread;
use runner::sched::PriorityQueue;

fn drain(q: &PriorityQueue<u32>, into: &mut Vec<u32>) {
    while let Some((_, v)) = q.pop() {
        into.push(v);
    }
}

/// One item in a level, a second pushed by `push` while two pops race it.
fn push_racing_two_pops(push: fn(&PriorityQueue<u32>, u8, u32)) {
    loom::model(move || {
        let q = Arc::new(PriorityQueue::new());
        q.push(5, 1);
        let pusher = {
            let q = q.clone();
            thread::spawn(move || push(&q, 5, 2))
        };
        let mut got = Vec::new();
        // Two pops race the push: the second may find the level empty and
        // clear the bit just as the push lands.
        for _ in 0..2 {
            if let Some((_, v)) = q.pop() {
                got.push(v);
            }
        }
        pusher.join().unwrap();
        drain(&q, &mut got);
        got.sort();
        assert_eq!(got, [1, 2], "every pushed item is popped exactly once");
        assert!(q.is_empty());
    });
}

#[test]
fn a_push_racing_a_pop_of_its_level_is_never_stranded() {
    push_racing_two_pops(PriorityQueue::push);
}

/// The same through the lane for items that come back, which a pop looks
/// at only while its count says it holds some.
#[test]
fn an_item_pushed_again_racing_a_pop_of_its_level_is_never_stranded() {
    push_racing_two_pops(PriorityQueue::push_again);
}

#[test]
fn two_poppers_and_a_pusher_lose_and_duplicate_nothing() {
    loom::model(|| {
        let q = Arc::new(PriorityQueue::new());
        q.push(70, 1);
        let pusher = {
            let q = q.clone();
            thread::spawn(move || q.push(70, 2))
        };
        let popper = {
            let q = q.clone();
            thread::spawn(move || q.pop().map(|(_, v)| v))
        };
        let mut got: Vec<u32> = q.pop().map(|(_, v)| v).into_iter().collect();
        pusher.join().unwrap();
        got.extend(popper.join().unwrap());
        drain(&q, &mut got);
        got.sort();
        assert_eq!(got, [1, 2]);
    });
}

#[test]
fn a_higher_priority_pushed_before_a_pop_is_seen_by_it() {
    loom::model(|| {
        let q = Arc::new(PriorityQueue::new());
        q.push(1, 10);
        q.push(200, 20);
        assert_eq!(q.pop(), Some((200, 20)));
        assert_eq!(q.pop(), Some((1, 10)));
        assert_eq!(q.pop(), None);
    });
}
