//! Every bound the protocol enforces, in one place, units last in the names.
//!
//! A limit is checked where data enters (the codec, message validation); the
//! relations between limits are asserted at compile time below, so raising one
//! cannot silently make another unreachable. `proto-spec/PROTOCOL.md` quotes
//! these numbers; change both together.

/// Largest frame body (bincode) or JSON line a peer may send after the
/// handshake. Checked from the frame header, before the body is buffered.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest frame body or JSON line accepted before the handshake has
/// succeeded: an unauthenticated peer must not make us hold much memory.
pub const PREAUTH_FRAME_BYTES_MAX: usize = 4 * 1024;

/// Longest node id a node takes for itself (a worker's `--id`): the hello
/// that carries it must fit in a [`PREAUTH_FRAME_BYTES_MAX`] frame.
pub const NODE_ID_BYTES_MAX: usize = 1024;

/// Largest task payload or task output.
pub const PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest text field (task kind, node id, error message, reason).
pub const TEXT_BYTES_MAX: usize = 64 * 1024;

/// Most tasks (or results) one frame may carry.
pub const BATCH_TASKS_MAX: usize = 16 * 1024;

/// Most entries in any other list of a message (kinds, workers, queues, ...).
pub const LIST_ITEMS_MAX: usize = 16 * 1024;

/// Task priorities: 0 to 255, higher first.
pub const PRIORITY_LEVELS: usize = 256;

/// Most retries a task may ask for (so at most `RETRIES_MAX + 1` attempts).
pub const RETRIES_MAX: u8 = 100;

/// Longest per-task timeout a client may ask for: one day.
pub const TASK_TIMEOUT_MS_MAX: u32 = 24 * 60 * 60 * 1000;

/// Deadline for the whole handshake (hello, proofs), counted from accept or
/// connect. A peer that has not finished by then is disconnected. Long enough
/// for a person to paste a hello into `nc`; short enough that idle
/// unauthenticated connections do not pile up.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 15_000;

/// Most result bytes (estimated) waiting for one client: a client that does
/// not read its results is disconnected past this, instead of growing the
/// master's memory without bound.
pub const CLIENT_OUTBOX_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Past [`CLIENT_OUTBOX_BYTES_MAX`] a client is disconnected only once its
/// connection has taken no bytes for this long: one that reads, but more
/// slowly than large results come (it may be busy writing a large batch), is
/// not cut off for that.
pub const CLIENT_STALL_MS: u64 = 5_000;

/// Most result bytes waiting for a client that still reads: past this it is
/// disconnected however recently it read.
pub const CLIENT_OUTBOX_BYTES_HARD_MAX: usize = 16 * CLIENT_OUTBOX_BYTES_MAX;

/// Without a journal, most results written to one client and not yet
/// acknowledged that the master keeps, so that they can be fetched again if
/// the connection ends before the client has them. A client that
/// acknowledges as it reads stays far below; one that never does is not
/// worth more memory.
pub const CLIENT_UNACKED_RESULTS_MAX: usize = 65_536;

/// The same bound in bytes, weighed as in [`CLIENT_OUTBOX_BYTES_MAX`].
pub const CLIENT_UNACKED_BYTES_MAX: usize = 4 * CLIENT_OUTBOX_BYTES_MAX;

/// Smallest shared secret accepted, in bytes (128 bits).
pub const SECRET_BYTES_MIN: usize = 16;

const _: () = assert!(PREAUTH_FRAME_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(PAYLOAD_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(TEXT_BYTES_MAX < PAYLOAD_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// How long we try to deliver a farewell error to a peer we are dropping:
/// that peer may be the reason (it does not read), so we do not wait on it.
pub const ERROR_SEND_TIMEOUT_MS: u64 = 1_000;

/// Most attempts of one task: the first plus every retry.
pub const ATTEMPTS_MAX: usize = RETRIES_MAX as usize + 1;

/// Most connections in their handshake at once. Each holds a socket and a
/// task until it authenticates or its deadline passes, so a flood of
/// connections that never authenticate is bounded here; beyond it a new
/// connection takes the place of the oldest (`net::preauth`).
pub const PREAUTH_CONNECTIONS_MAX: usize = 1024;

/// Most of those from one address, so that one flooding host cannot take
/// them all from everyone else.
pub const PREAUTH_PER_SOURCE_MAX: usize = 128;

const _: () = assert!(PREAUTH_PER_SOURCE_MAX <= PREAUTH_CONNECTIONS_MAX);

/// Connections the kernel queues for a listener before it accepts them
/// (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;
