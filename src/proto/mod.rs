//! The wire protocol: frames, messages, the two encodings and the handshake.
//!
//! `proto-spec/PROTOCOL.md` is the normative description; this module is its
//! implementation and `proto-spec/vectors/` pins the two together. Nothing
//! here opens a socket: the codec works on byte buffers and the handshake is
//! a state machine that the network layer drives.

mod bincode_wire;
pub mod codec;
pub mod error;
pub mod frame;
pub mod handshake;
mod json_wire;
pub mod messages;
pub mod types;

pub use codec::WireCodec;
pub use error::ProtoError;
pub use messages::*;
pub use types::{unprintable, Bytes32, Payload, Text};

/// Most bytes of a peer's words (an error message, a goodbye's reason) that
/// a node quotes in its log or in a reason of its own.
pub const LOGGED_TEXT_BYTES: usize = 1024;

use bytes::BytesMut;
use serde::Serialize;

/// The protocol version this build speaks (and the only one, so far).
pub const PROTOCOL_VERSION: u8 = 1;
/// Oldest version this build speaks.
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Newest version this build speaks.
pub const PROTOCOL_VERSION_MAX: u8 = 1;

/// Which encoding a connection uses. Both carry the same messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Wire {
    /// Length-prefixed binary frames with bincode bodies (the default).
    #[default]
    Bincode,
    /// Newline-delimited JSON objects, for tools and other languages.
    Json,
}

impl Wire {
    /// Lowercase name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Bincode => "bincode",
            Wire::Json => "json",
        }
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Wire {
    type Err = String;
    fn from_str(s: &str) -> Result<Wire, String> {
        match s {
            "bincode" => Ok(Wire::Bincode),
            "json" => Ok(Wire::Json),
            other => Err(format!("unknown wire {other:?}: expected bincode or json")),
        }
    }
}

/// A direction's message enum: how each message is numbered, named, encoded
/// and checked. Implemented by the `direction!` macro in [`messages`].
pub trait Message: Sized + Send + 'static {
    /// `"client->master"` and so on, for error messages.
    const DIRECTION: &'static str;
    /// Every `(type number, JSON name)` of this direction.
    const TYPES: &'static [(u8, &'static str)];
    /// The message's type number (frame header byte 3).
    fn msg_type(&self) -> u8;
    /// The message's JSON `"type"`.
    fn name(&self) -> &'static str;
    /// Appends the body (bincode) or the whole line (JSON) to `dst`.
    fn encode_body(&self, wire: Wire, dst: &mut BytesMut) -> Result<(), ProtoError>;
    /// Decodes a bincode body of message type `ty`.
    fn decode_bincode(ty: u8, body: &[u8]) -> Result<Self, ProtoError>;
    /// Decodes a JSON line whose `"type"` is `name`.
    fn decode_json(name: &str, line: &[u8]) -> Result<Self, ProtoError>;
    /// Checks every field against its limit.
    fn validate(&self) -> Result<(), ProtoError>;
    /// The shared handshake/liveness message inside, or `self` back.
    fn into_common(self) -> Result<Common, Self>;
}

fn encode_body<T: Serialize>(
    wire: Wire,
    name: &str,
    msg: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    match wire {
        Wire::Bincode => bincode_wire::encode_body(msg, dst),
        Wire::Json => json_wire::encode_body(name, msg, dst),
    }
}

/// Largest journal record body (larger than a frame: see `bincode_wire`).
pub const RECORD_BYTES_MAX: usize = bincode_wire::RECORD_BYTES_MAX;

/// Encodes `value` as the protocol's bincode (for the journal, whose records
/// reuse the wire's body encoding so that one spec covers both).
pub(crate) fn encode_record_body<T: Serialize + ?Sized>(
    value: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    bincode_wire::encode_body(value, dst)
}

/// Decodes a whole bincode body; payloads and texts become slices of `body`.
pub(crate) fn decode_record_body<T: serde::de::DeserializeOwned>(
    body: &bytes::Bytes,
) -> Result<T, ProtoError> {
    let _scope = types::FrameScope::enter(body);
    bincode_wire::decode_record(body)
}

/// Most bytes of payloads and texts one batch message (`submit`, `run`,
/// `done`, `results`) is filled with before the next item starts another
/// frame: an eighth of the frame limit, which leaves room for the encoding
/// (JSON escapes a byte in up to six) while small tasks still fill a batch
/// by count ([`crate::limits::BATCH_TASKS_MAX`]) long before.
pub const BATCH_BYTES_MAX: usize = crate::limits::FRAME_BYTES_MAX / 8;

/// What an item adds to a batch message besides its payloads and texts
/// (ids, numbers, lengths; generous).
const BATCH_ITEM_OVERHEAD: usize = 32;

/// The bytes an item of a batch message carries, for [`batches`].
pub trait BatchWeight {
    /// Payload and text bytes, plus a fixed overhead.
    fn batch_weight(&self) -> usize;
}

impl BatchWeight for NewTask {
    fn batch_weight(&self) -> usize {
        self.kind.len() + self.payload.len() + BATCH_ITEM_OVERHEAD
    }
}

impl BatchWeight for Assignment {
    fn batch_weight(&self) -> usize {
        self.kind.len() + self.payload.len() + BATCH_ITEM_OVERHEAD
    }
}

impl BatchWeight for AttemptResult {
    fn batch_weight(&self) -> usize {
        self.output.len() + self.error.len() + BATCH_ITEM_OVERHEAD
    }
}

impl BatchWeight for TaskResult {
    fn batch_weight(&self) -> usize {
        let errors: usize = self
            .errors
            .iter()
            .map(|e| e.worker.len() + e.reason.len() + BATCH_ITEM_OVERHEAD)
            .sum();
        self.output.len() + self.worker.len() + errors + BATCH_ITEM_OVERHEAD
    }
}

/// Splits `items`, in order, into batches that each fit one message: at most
/// [`crate::limits::BATCH_TASKS_MAX`] items and [`BATCH_BYTES_MAX`] bytes
/// (an item heavier than that alone is a batch of its own; the protocol's
/// payload limit keeps it within a frame). Small items stay one batch, with
/// no copy.
pub fn batches<T: BatchWeight>(items: Vec<T>) -> Vec<Vec<T>> {
    // How many items the first batch takes.
    let first_batch = |items: &[T]| {
        let (mut n, mut bytes) = (0, 0);
        while n < items.len() && n < crate::limits::BATCH_TASKS_MAX {
            let w = items[n].batch_weight();
            if n > 0 && bytes + w > BATCH_BYTES_MAX {
                break;
            }
            bytes += w;
            n += 1;
        }
        n
    };
    if first_batch(&items) == items.len() {
        return if items.is_empty() {
            Vec::new()
        } else {
            vec![items]
        };
    }
    // Each batch its own allocation of its own size (splitting the rest
    // off instead kept every batch at the capacity of all that followed
    // it: memory quadratic in the items).
    let mut out = Vec::new();
    let mut rest = items.into_iter();
    while rest.len() > 0 {
        let n = first_batch(rest.as_slice());
        out.push(rest.by_ref().take(n).collect());
    }
    out
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn task(payload_bytes: usize) -> NewTask {
        NewTask {
            kind: Text::from_static("echo"),
            payload: Payload::from(vec![b'x'; payload_bytes]),
            priority: 128,
            retries: 0,
            timeout_ms: 0,
        }
    }

    #[test]
    fn large_payloads_are_spread_over_batches_within_the_byte_budget() {
        let b = batches((0..20).map(|_| task(1_000_000)).collect());
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 20);
        assert!(b.len() > 1);
        for batch in &b {
            let bytes: usize = batch.iter().map(BatchWeight::batch_weight).sum();
            assert!(batch.len() == 1 || bytes <= BATCH_BYTES_MAX, "{bytes}");
        }
    }

    #[test]
    fn small_tasks_are_cut_by_count_only() {
        let b = batches((0..40_000).map(|_| task(16)).collect());
        let lens: Vec<usize> = b.iter().map(Vec::len).collect();
        let max = crate::limits::BATCH_TASKS_MAX;
        assert_eq!(lens, vec![max, max, 40_000 - 2 * max]);
        // Each holds memory for its own items only, not for all after it.
        assert!(b.iter().all(|batch| batch.capacity() == batch.len()));
    }

    #[test]
    fn an_item_above_the_budget_goes_alone() {
        let b = batches(vec![task(16), task(BATCH_BYTES_MAX + 1), task(16)]);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
    }
}
