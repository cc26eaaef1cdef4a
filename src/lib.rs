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
//! - [`journal`]: the master's write-ahead journal: records, the writer
//!   thread with group commit, replay and compaction.
//! - [`net`]: ports, binding, typed connections and their handshake.
//! - [`master`]: the master: client and worker sessions, dispatch, discovery,
//!   and [`master::link`], its sans-IO view of one worker.
//! - [`worker`]: the worker: master sessions, slots, the task kinds.
//! - [`client`]: the client library.
//! - [`metrics`]: latency histograms and their exports (`.hgrm`, `.hlog`, SVG).
//! - [`loadgen`]: the load generator's engine, reports and baselines.
//! - [`demo`]: `runner demo`, the cluster on one machine, narrated.
//! - [`cli`]: what the binaries share in reading their command lines.
//! - [`realtime`]: `--realtime`, the nodes' threads under `SCHED_FIFO`.
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod demo;
pub mod instant;
pub mod journal;
pub mod limits;
pub mod loadgen;
pub mod master;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod realtime;
pub mod sched;
mod sync;
pub mod worker;
