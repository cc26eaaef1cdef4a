//! The only module that calls `bincode`: message bodies on the binary wire.
//!
//! Configuration (normative, PROTOCOL.md "Body encoding"): bincode 2
//! `standard()`: little-endian, variable-length integers (one byte below 251,
//! else a marker byte 251/252/253 and 2/4/8 bytes), enum variants as varint
//! `u32` indices, sequences and byte strings prefixed with their varint
//! length, structs as their fields in order; plus a decode limit of
//! [`FRAME_BYTES_MAX`], so a forged length can never make us allocate more
//! than a frame. To swap the implementation (e.g. for `wincode`), keep these
//! bytes; `proto-spec/vectors/` will say if they moved.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::error::ProtoError;
use crate::limits::FRAME_BYTES_MAX;

const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_MAX>,
> = bincode::config::standard().with_limit::<FRAME_BYTES_MAX>();

/// Journal records reuse the body encoding with a larger decode limit: a
/// whole task with its failures (a maximum payload and up to
/// `ATTEMPTS_MAX` reasons) is larger than one frame may be.
const RECORD_CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<RECORD_BYTES_MAX>,
> = bincode::config::standard().with_limit::<RECORD_BYTES_MAX>();

/// Largest journal record body.
pub(crate) const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Decodes a whole journal record body; as [`decode_body`] otherwise.
pub(crate) fn decode_record<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProtoError> {
    let (v, used) = bincode::serde::borrow_decode_from_slice(body, RECORD_CONFIG)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the record",
            body.len() - used
        )));
    }
    Ok(v)
}

/// Writes straight into the connection's buffer: no intermediate `Vec`.
struct BufWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BufWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.put_slice(bytes);
        Ok(())
    }
}

/// Appends the body of `msg` to `dst`.
pub(crate) fn encode_body<T: Serialize + ?Sized>(
    msg: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    bincode::serde::encode_into_writer(msg, BufWriter(dst), CONFIG)
        .map_err(|e| ProtoError::Encode(e.to_string()))
}

/// Decodes a whole body; bytes left over are an error, so that every body
/// has exactly one encoding.
pub(crate) fn decode_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProtoError> {
    let (msg, used) = bincode::serde::borrow_decode_from_slice(body, CONFIG)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the body",
            body.len() - used
        )));
    }
    Ok(msg)
}
