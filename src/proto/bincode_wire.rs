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

/// What a decode error means, for the peer that sent the bytes: bincode's
/// own text is its `Debug` form (`UnexpectedEnd { additional: 1 }`).
fn decode_error_text(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { .. } => "the body ends before its last field".into(),
        E::LimitExceeded => "a length in the body is above the frame's limit".into(),
        E::InvalidIntegerType { expected, found } => format!(
            "a varint marks a {} where a {} belongs",
            integer_type(found),
            integer_type(expected)
        ),
        E::Utf8 { inner } => format!("a string is not UTF-8 ({inner})"),
        E::InvalidBooleanValue(v) => format!("a bool is {v}, not 0 or 1"),
        E::InvalidCharEncoding(_) => "a character is not valid UTF-8".into(),
        E::OutsideUsizeRange(n) => format!("a length of {n} is out of range"),
        E::OtherString(s) => s.clone(),
        E::Other(s) => (*s).to_string(),
        other => format!("{other:?}"),
    }
}

fn integer_type(t: &bincode::error::IntegerType) -> String {
    format!("{t:?}").to_lowercase()
}

/// Decodes a whole journal record body; as [`decode_body`] otherwise.
pub(crate) fn decode_record<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProtoError> {
    let (v, used) = bincode::serde::borrow_decode_from_slice(body, RECORD_CONFIG)
        .map_err(|e| ProtoError::Malformed(decode_error_text(&e)))?;
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
        .map_err(|e| ProtoError::Malformed(decode_error_text(&e)))?;
    if used != body.len() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the body",
            body.len() - used
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::decode_body;
    use crate::proto::ProtoError;

    fn why(body: &[u8]) -> String {
        match decode_body::<(u32, String)>(body) {
            Err(ProtoError::Malformed(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    /// A peer told why its bytes were refused reads words, not bincode's
    /// `Debug` form (`UnexpectedEnd { additional: 1 }`).
    #[test]
    fn a_body_that_cannot_be_decoded_is_refused_in_words() {
        assert_eq!(why(&[]), "the body ends before its last field");
        assert_eq!(
            why(&[0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            "a varint marks a u64 where a u32 belongs"
        );
        assert_eq!(
            why(&[1, 2, 0xff, 0xfe]),
            "a string is not UTF-8 (invalid utf-8 sequence of 1 bytes from index 0)"
        );
        assert!(!why(&[1]).contains('{'));
    }
}
