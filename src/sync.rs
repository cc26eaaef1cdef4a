//! The atomics and locks the lock-free code uses: `std`'s normally, `loom`'s
//! when built with `--cfg runner_loom`, so the model checker explores every
//! interleaving of the same code (`tests/loom_scheduler.rs`).

#[cfg(runner_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(runner_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
