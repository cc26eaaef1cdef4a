//! Scheduling without I/O: the lock-free priority queue, task records and
//! their retry policy.

pub mod queue;
pub mod task;

pub use queue::PriorityQueue;
pub use task::{Errors, Requeued, RequeuedSlot, RetryPolicy, Stamp, TaskRecord, Verdict};
