//! [`PriorityQueue`]: the lock-free scheduler queue between the connections
//! that accept tasks and the ones that dispatch them.
//!
//! 256 FIFO levels, one per priority, each a lock-free segmented queue, plus a
//! 256-bit occupancy bitmap in four atomic words. A push appends to its level
//! and then sets the level's bit; a pop scans the bitmap from the highest bit
//! down and pops from the first level that has an item. No lock is taken on
//! either path, so client connections pushing and worker connections popping
//! on different threads never wait for each other.
//!
//! The one subtle step is clearing a bit: a popper that finds a level empty
//! clears its bit, then looks at the level again and sets the bit back if a
//! push landed in between. Since a pusher sets the bit only after its item is
//! in the level, every item is either seen by that second look or followed by
//! its pusher's own bit-set: no item is ever stranded behind a clear bit. The
//! loom model in `tests/loom_scheduler.rs` checks exactly this.
//!
//! Each level has a second lane for items that come back ([`PriorityQueue::push_again`]:
//! a retry, the attempts of a lost worker), popped before the level's new
//! items: a task that was already handed out does not wait again behind
//! everything submitted since. A level's bit stands for both lanes.

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// Number of priority levels (0-255).
pub const LEVELS: usize = crate::limits::PRIORITY_LEVELS;
const WORDS: usize = LEVELS / 64;

#[cfg(not(runner_loom))]
type Level<T> = crossbeam_queue::SegQueue<T>;

/// Under loom the per-level FIFO is a loom mutex around a `VecDeque`: the
/// level queue itself is crossbeam's (and tested there); what loom checks is
/// our bitmap protocol around it.
#[cfg(runner_loom)]
struct Level<T>(loom::sync::Mutex<std::collections::VecDeque<T>>);

#[cfg(runner_loom)]
impl<T> Level<T> {
    fn new() -> Self {
        Level(loom::sync::Mutex::new(std::collections::VecDeque::new()))
    }
    fn push(&self, v: T) {
        self.0.lock().unwrap().push_back(v)
    }
    fn pop(&self) -> Option<T> {
        self.0.lock().unwrap().pop_front()
    }
    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A multi-producer, multi-consumer priority queue: higher priority first,
/// FIFO within a priority.
pub struct PriorityQueue<T> {
    levels: Box<[Level<T>]>,
    /// Per level, items pushed again, popped first.
    again: Box<[Level<T>]>,
    /// Items in all the `again` lanes: while 0 (the usual case) a pop does
    /// not look at them.
    again_len: AtomicUsize,
    bitmap: [AtomicU64; WORDS],
    depth: Box<[AtomicUsize]>,
}

impl<T> Default for PriorityQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PriorityQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        PriorityQueue {
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            again: (0..LEVELS).map(|_| Level::new()).collect(),
            again_len: AtomicUsize::new(0),
            bitmap: std::array::from_fn(|_| AtomicU64::new(0)),
            depth: (0..LEVELS).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Appends `item` at `priority`.
    pub fn push(&self, priority: u8, item: T) {
        self.push_to(&self.levels, priority, item);
    }

    /// Appends `item` at `priority` ahead of the items pushed with
    /// [`PriorityQueue::push`] (behind others pushed again): for an item
    /// that was taken out before and comes back.
    pub fn push_again(&self, priority: u8, item: T) {
        // Counted before the item is in: a pop that finds it also sees it
        // counted.
        self.again_len.fetch_add(1, Ordering::Release);
        self.push_to(&self.again, priority, item);
    }

    fn push_to(&self, lanes: &[Level<T>], priority: u8, item: T) {
        let p = priority as usize;
        self.depth[p].fetch_add(1, Ordering::Relaxed);
        lanes[p].push(item);
        // Release: a popper that sees the bit also sees the item.
        self.bitmap[p / 64].fetch_or(1 << (p % 64), Ordering::Release);
    }

    fn pop_level(&self, p: usize) -> Option<T> {
        if self.again_len.load(Ordering::Acquire) > 0 {
            if let Some(item) = self.again[p].pop() {
                self.again_len.fetch_sub(1, Ordering::Relaxed);
                return Some(item);
            }
        }
        self.levels[p].pop()
    }

    fn level_is_empty(&self, p: usize) -> bool {
        self.again[p].is_empty() && self.levels[p].is_empty()
    }

    /// Removes the oldest item of the highest non-empty priority.
    pub fn pop(&self) -> Option<(u8, T)> {
        for w in (0..WORDS).rev() {
            let mut bits = self.bitmap[w].load(Ordering::Acquire);
            while bits != 0 {
                let b = 63 - bits.leading_zeros() as usize;
                let p = w * 64 + b;
                if let Some(item) = self.pop_level(p) {
                    self.depth[p].fetch_sub(1, Ordering::Relaxed);
                    return Some((p as u8, item));
                }
                // The level looked empty: clear its bit, then look again, in
                // case a push slipped in before the clear (see module doc).
                self.bitmap[w].fetch_and(!(1 << b), Ordering::AcqRel);
                if !self.level_is_empty(p) {
                    self.bitmap[w].fetch_or(1 << b, Ordering::Release);
                    continue;
                }
                bits &= !(1 << b);
            }
        }
        None
    }

    /// The highest priority with an item waiting (a snapshot). A bit left
    /// set by the pop that emptied its level is passed over, not cleared.
    pub fn top_priority(&self) -> Option<u8> {
        for w in (0..WORDS).rev() {
            let mut bits = self.bitmap[w].load(Ordering::Acquire);
            while bits != 0 {
                let b = 63 - bits.leading_zeros() as usize;
                let p = w * 64 + b;
                if !self.level_is_empty(p) {
                    return Some(p as u8);
                }
                bits &= !(1 << b);
            }
        }
        None
    }

    /// Takes out every item `keep` refuses and leaves the others in their
    /// order: each level is popped through once and its kept items pushed
    /// back behind, which with no concurrent push restores the level as it
    /// was. No extra memory, O(items waiting): for rare requests (a client
    /// cancelling tasks), not the dispatch path. Items pushed concurrently
    /// stay, though perhaps ahead of some rotated ones.
    pub fn sweep(&self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for p in 0..LEVELS {
            for (again, lane) in [(true, &self.again[p]), (false, &self.levels[p])] {
                for _ in 0..lane.len() {
                    let Some(item) = lane.pop() else {
                        break;
                    };
                    if keep(&item) {
                        lane.push(item);
                    } else {
                        self.depth[p].fetch_sub(1, Ordering::Relaxed);
                        if again {
                            self.again_len.fetch_sub(1, Ordering::Relaxed);
                        }
                        out.push(item);
                    }
                }
            }
        }
        out
    }

    /// Items waiting at each non-empty priority, highest first. A snapshot:
    /// exact when no push or pop runs concurrently.
    pub fn depths(&self) -> Vec<(u8, usize)> {
        (0..LEVELS)
            .rev()
            .filter_map(|p| {
                let d = self.depth[p].load(Ordering::Relaxed);
                (d > 0).then_some((p as u8, d))
            })
            .collect()
    }

    /// Items waiting in all.
    pub fn len(&self) -> usize {
        self.depth.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Whether nothing is waiting (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.bitmap.iter().all(|w| w.load(Ordering::Acquire) == 0)
    }
}

#[cfg(all(test, not(runner_loom)))]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_and_fifo_within_one() {
        let q = PriorityQueue::new();
        q.push(1, "low-a");
        q.push(200, "high-a");
        q.push(1, "low-b");
        q.push(255, "top");
        q.push(200, "high-b");
        q.push(0, "bottom");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, v)| v)).collect();
        assert_eq!(
            order,
            ["top", "high-a", "high-b", "low-a", "low-b", "bottom"]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_sweep_takes_out_the_refused_items_and_keeps_the_order_of_the_rest() {
        let q = PriorityQueue::new();
        for i in 0..6 {
            q.push(if i % 2 == 0 { 9 } else { 3 }, i);
        }
        let taken = q.sweep(|i| *i != 2 && *i != 3);
        assert_eq!(taken, [3, 2], "lowest level first, as swept");
        assert_eq!(q.depths(), vec![(9, 2), (3, 2)]);
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, v)| v)).collect();
        assert_eq!(order, [0, 4, 1, 5]);
        assert!(q.is_empty(), "a level emptied by the sweep pops as empty");
    }

    #[test]
    fn depths_count_each_priority() {
        let q = PriorityQueue::new();
        for _ in 0..3 {
            q.push(7, ());
        }
        q.push(130, ());
        assert_eq!(q.depths(), vec![(130, 1), (7, 3)]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn items_pushed_again_come_before_new_ones_of_their_priority() {
        let q = PriorityQueue::new();
        q.push(5, "new-1");
        q.push(5, "new-2");
        q.push_again(5, "again-1");
        q.push(9, "higher");
        q.push_again(5, "again-2");
        assert_eq!(q.depths(), vec![(9, 1), (5, 4)]);
        assert_eq!(q.sweep(|i| *i != "new-2"), ["new-2"]);
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, v)| v)).collect();
        assert_eq!(order, ["higher", "again-1", "again-2", "new-1"]);
        assert!(q.is_empty());
        assert_eq!(q.top_priority(), None);
    }

    #[test]
    fn the_top_priority_is_the_highest_with_an_item() {
        let q = PriorityQueue::new();
        assert_eq!(q.top_priority(), None);
        for p in [3, 64, 200, 0] {
            q.push(p, ());
        }
        for expected in [200, 64, 3, 0] {
            assert_eq!(q.top_priority(), Some(expected));
            q.pop();
        }
        assert_eq!(q.top_priority(), None, "emptied levels are passed over");
    }
}
