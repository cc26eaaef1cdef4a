//! runner: a distributed task runner. A master accepts tasks from clients and
//! runs them on workers, over TCP, with one versioned protocol.
//!
//! # Layout
//! - [`limits`]: every bound (frame size, batch size, timeouts), in one place.
//! - [`proto`]: the wire protocol as data: frame header, messages by direction,
//!   the bincode and JSON encodings behind one codec, and the handshake state
//!   machine. `proto-spec/PROTOCOL.md` is its normative description.
//! - [`sched`]: the lock-free priority queue, task records and retry policy;
//!   no I/O.
#![warn(missing_docs)]

pub mod limits;
pub mod proto;
pub mod sched;
mod sync;
