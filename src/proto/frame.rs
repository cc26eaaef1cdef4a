//! The binary frame header (PROTOCOL.md, "Frames").
//!
//! ```text
//! offset  size  field
//! 0       2     magic "RN" (0x52 0x4e)
//! 2       1     protocol version
//! 3       1     message type
//! 4       2     flags, little-endian (bits 0-7 must-understand, 8-15 may-ignore)
//! 6       4     body length in bytes, little-endian
//! 10      ...   body (bincode)
//! ```
//! The magic comes first so that a listener can tell a binary peer from a JSON
//! one by the connection's first byte.

use super::error::ProtoError;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"RN";
/// Bytes before the body.
pub const HEADER_LEN: usize = 10;
/// Flag bits a receiver must understand; a frame with one it does not know is
/// rejected. Version 1 defines none.
pub const FLAGS_MUST_UNDERSTAND: u16 = 0x00ff;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the body.
    pub version: u8,
    /// Message type number.
    pub msg_type: u8,
    /// Flag bits.
    pub flags: u16,
    /// Body length in bytes.
    pub body_len: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `buf` (which must hold them),
    /// checking the magic only: flags mean what the version says they mean, so
    /// the caller checks the version first, then [`Header::check_flags`], then
    /// the length against the limit in force.
    pub fn parse(buf: &[u8]) -> Result<Header, ProtoError> {
        let h: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ProtoError::Truncated(buf.len()))?;
        if h[0..2] != MAGIC {
            return Err(ProtoError::BadMagic([h[0], h[1]]));
        }
        let flags = u16::from_le_bytes([h[4], h[5]]);
        Ok(Header {
            version: h[2],
            msg_type: h[3],
            flags,
            body_len: u32::from_le_bytes([h[6], h[7], h[8], h[9]]),
        })
    }

    /// Rejects must-understand flags this version does not define (none, in
    /// version 1); may-ignore flags pass.
    pub fn check_flags(&self) -> Result<(), ProtoError> {
        match self.flags & FLAGS_MUST_UNDERSTAND {
            0 => Ok(()),
            unknown => Err(ProtoError::UnknownFlags(unknown)),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let f = self.flags.to_le_bytes();
        let l = self.body_len.to_le_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            self.version,
            self.msg_type,
            f[0],
            f[1],
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }
}
