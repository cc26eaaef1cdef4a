//! Message bodies on the JSON wire: one object per line, `"type"` naming the
//! message, the body's fields beside it (PROTOCOL.md, "JSON mode").

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::error::ProtoError;

/// Appends `{"type":"<name>", ...fields}\n` to `dst`. The body is serialized
/// straight into `dst`; its opening brace is then overwritten by the comma
/// after the type, so nothing is buffered twice.
pub(crate) fn encode_body<T: Serialize>(
    name: &str,
    msg: &T,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    dst.put_slice(b"{\"type\":\"");
    dst.put_slice(name.as_bytes());
    dst.put_u8(b'"');
    let body_at = dst.len();
    serde_json::to_writer(dst.writer(), msg).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if &dst[body_at..] == b"{}" {
        dst.truncate(body_at);
        dst.put_u8(b'}');
    } else if dst.get(body_at) == Some(&b'{') {
        dst[body_at] = b',';
    } else {
        return Err(ProtoError::Encode(format!(
            "{name} body is not a JSON object"
        )));
    }
    dst.put_u8(b'\n');
    Ok(())
}

/// The value of the line's `"type"` field. Lines written by this crate start
/// with it and are read without a parse; any other order costs one skim.
pub(crate) fn message_name(line: &[u8]) -> Result<&str, ProtoError> {
    const PREFIX: &[u8] = b"{\"type\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX) {
        if let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
            // A second `"type"` anywhere after it (a member, or text in a
            // string that looks like one), or a `\u` escape (which could
            // spell one, `"ty\u0070e"`), goes to the full parse, which
            // refuses a member given twice.
            if rest[end] == b'"'
                && memchr::memmem::find(&rest[end..], b"\"type\"").is_none()
                && memchr::memmem::find(&rest[end..], b"\\u").is_none()
            {
                return std::str::from_utf8(&rest[..end])
                    .map_err(|e| ProtoError::Malformed(format!("type: {e}")));
            }
        }
    }
    #[derive(Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
    }
    let t: TypeOnly = serde_json::from_slice(line).map_err(|e| {
        ProtoError::Malformed(format!("expected a JSON object with a \"type\" field: {e}"))
    })?;
    match t.ty {
        std::borrow::Cow::Borrowed(s) => Ok(s),
        std::borrow::Cow::Owned(_) => Err(ProtoError::Malformed(
            "the \"type\" field must not contain escapes".into(),
        )),
    }
}

/// Decodes a message body from its whole line (the `"type"` field and any
/// field this version does not know are ignored).
pub(crate) fn decode_body<'de, T: Deserialize<'de>>(line: &'de [u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(line).map_err(|e| {
        let said = e.to_string();
        // serde_json reads an integer past u64 as a float, and says so,
        // which leaves a sender of `18446744073709551616` puzzled.
        if said.starts_with("invalid type: floating point") {
            ProtoError::Malformed(format!(
                "{said} (a number with a fraction or an exponent, or a whole number above {}: \
                 every number here is a whole number that fits its field)",
                u64::MAX
            ))
        } else {
            ProtoError::Malformed(said)
        }
    })
}
