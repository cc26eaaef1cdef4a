//! What can go wrong while framing, decoding or validating a message.

use super::messages::ErrorCode;

/// A protocol error. Every variant maps to the [`ErrorCode`] sent to the
/// peer before the connection is closed ([`ProtoError::code`]); none is
/// retryable on the same connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The first byte of the connection is neither JSON nor the frame magic.
    #[error("first byte 0x{0:02x} is neither a JSON line ('{{' or whitespace) nor the frame magic \"RN\"")]
    UnknownWire(u8),
    /// A frame did not start with the magic.
    #[error("bad frame magic {0:02x?}, expected \"RN\" (52 4e)")]
    BadMagic([u8; 2]),
    /// A frame (or hello) names a protocol version this node does not speak.
    #[error("peer speaks protocol version {got}; this node speaks {min}..={max}")]
    UnsupportedVersion {
        /// The peer's version.
        got: u8,
        /// Oldest version this node speaks.
        min: u8,
        /// Newest version this node speaks.
        max: u8,
    },
    /// The header declares a body longer than the limit in force.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared or actual length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A JSON line ran past the limit without a newline.
    #[error("JSON line longer than the limit of {max} bytes")]
    LineTooLong {
        /// The limit in force.
        max: usize,
    },
    /// The header sets a must-understand flag this version does not define.
    #[error("frame sets unknown must-understand flags 0x{0:04x}")]
    UnknownFlags(u16),
    /// A message type number unknown for this direction.
    #[error("unknown message type 0x{ty:02x} for {direction}")]
    UnknownMessageType {
        /// The number received.
        ty: u8,
        /// Which direction's table was consulted.
        direction: &'static str,
    },
    /// A JSON `"type"` unknown for this direction.
    #[error("unknown message type {name:?} for {direction}")]
    UnknownMessageName {
        /// The name received.
        name: String,
        /// Which direction's table was consulted.
        direction: &'static str,
    },
    /// The body could not be decoded.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The connection ended inside a frame or line.
    #[error("connection closed in the middle of a frame ({0} bytes unread)")]
    Truncated(usize),
    /// A field exceeds its limit.
    #[error("{what} is {value}, above the limit of {max}")]
    Limit {
        /// Which field.
        what: &'static str,
        /// Its value (a length or a number).
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A rule other than a limit was broken.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A message could not be encoded (a bug in the sender, or a message
    /// built past the limits).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl ProtoError {
    /// The code to send the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Io(_) => ErrorCode::INTERNAL,
            ProtoError::UnsupportedVersion { .. } => ErrorCode::VERSION_MISMATCH,
            ProtoError::FrameTooLarge { .. } | ProtoError::LineTooLong { .. } => {
                ErrorCode::FRAME_TOO_LARGE
            }
            ProtoError::UnknownMessageType { .. } | ProtoError::UnknownMessageName { .. } => {
                ErrorCode::UNKNOWN_MESSAGE
            }
            ProtoError::Limit { .. } | ProtoError::Invalid(_) => ErrorCode::INVALID,
            ProtoError::Encode(_) => ErrorCode::INTERNAL,
            ProtoError::UnknownWire(_)
            | ProtoError::BadMagic(_)
            | ProtoError::UnknownFlags(_)
            | ProtoError::Malformed(_)
            | ProtoError::Truncated(_) => ErrorCode::MALFORMED,
        }
    }
}
