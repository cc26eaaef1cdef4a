//! The field types that carry bytes: [`Payload`], [`Text`] and [`Bytes32`].
//!
//! Payloads and texts are `bytes::Bytes`, and when a message is decoded they
//! are slices of the received frame, not copies: the codec enters a
//! [`FrameScope`] holding the frame's `Bytes`, and the deserializers below turn
//! every borrowed `&[u8]`/`&str` that lies inside that frame into
//! `frame.slice_ref(..)`, a reference-count bump. Outside a scope (or for
//! escaped JSON strings, which must be unescaped) they copy.
//!
//! On a binary wire (bincode) a payload is a length-prefixed byte string. On a
//! human-readable wire (JSON) a payload is a plain string when it is UTF-8 and
//! escaping it costs no more than base64 would, else `{"base64": "..."}`
//! (standard alphabet, padded); so a JSON payload is never more than 4/3 of
//! its size, and a maximum-size payload fits in a maximum-size line.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// The frame being decoded on this thread, or null. A raw pointer rather
    /// than an `Option<Bytes>`: a thread-local without a destructor is a
    /// plain load, and this one is read for every payload and text decoded.
    static FRAME: Cell<*const Bytes> = const { Cell::new(std::ptr::null()) };
}

/// While alive, decoded payloads and texts that point into `frame` become
/// slices of it instead of copies. Scopes do not nest; dropping one ends it.
pub(crate) struct FrameScope<'a>(PhantomData<&'a Bytes>);

impl<'a> FrameScope<'a> {
    pub(crate) fn enter(frame: &'a Bytes) -> FrameScope<'a> {
        FRAME.with(|f| f.set(frame));
        FrameScope(PhantomData)
    }
}

impl Drop for FrameScope<'_> {
    fn drop(&mut self) {
        FRAME.with(|f| f.set(std::ptr::null()));
    }
}

/// A `Bytes` for `slice`: a slice of the current frame when `slice` lies in
/// it, else a copy.
fn bytes_for(slice: &[u8]) -> Bytes {
    let frame = FRAME.with(Cell::get);
    if !frame.is_null() {
        // SAFETY: `frame` was set from a `&'a Bytes` by a `FrameScope<'a>`
        // that is still alive (its drop resets the pointer to null), so the
        // `Bytes` it points to is alive and borrowed, not moved or mutated.
        let frame = unsafe { &*frame };
        let start = frame.as_ptr() as usize;
        let at = slice.as_ptr() as usize;
        if at >= start && at + slice.len() <= start + frame.len() {
            return frame.slice_ref(slice);
        }
    }
    Bytes::copy_from_slice(slice)
}

/// Opaque task input or output bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Bytes);

impl Payload {
    /// An empty payload.
    pub const fn empty() -> Payload {
        Payload(Bytes::new())
    }
    /// The payload as text, when it is valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl Deref for Payload {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.0
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Payload {
        Payload(b)
    }
}
impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Payload {
        Payload(Bytes::from_static(s.as_bytes()))
    }
}
impl From<&'static [u8]> for Payload {
    fn from(s: &'static [u8]) -> Payload {
        Payload(Bytes::from_static(s))
    }
}
impl From<String> for Payload {
    fn from(s: String) -> Payload {
        Payload(Bytes::from(s))
    }
}
impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload(Bytes::from(v))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(t) => write!(f, "Payload({t:?})"),
            None => write!(f, "Payload({} bytes)", self.0.len()),
        }
    }
}

const BASE64_KEY: &str = "base64";

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        match self.as_text().filter(|t| cheap_to_escape(t)) {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.0);
                map.serialize_entry(BASE64_KEY, &b64)?;
                map.end()
            }
        }
    }
}

/// Whether `text` as a JSON string is no longer than its base64 form.
fn cheap_to_escape(text: &str) -> bool {
    let escaped: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped <= text.len().div_ceil(3) * 4
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload: bytes, a string, or {\"base64\": \"...\"}")
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Payload, E> {
        Ok(Payload(bytes_for(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload(Bytes::from(v)))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Payload, E> {
        Ok(Payload(bytes_for(v.as_bytes())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload(Bytes::copy_from_slice(v.as_bytes())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload(Bytes::from(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut out = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != BASE64_KEY {
                return Err(de::Error::unknown_field(&key, &[BASE64_KEY]));
            }
            if out.is_some() {
                return Err(de::Error::duplicate_field(BASE64_KEY));
            }
            let text = map.next_value::<std::borrow::Cow<'de, str>>()?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format_args!("payload base64: {e}")))?;
            out = Some(Payload(Bytes::from(raw)));
        }
        out.ok_or_else(|| de::Error::missing_field(BASE64_KEY))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(PayloadVisitor)
        } else {
            d.deserialize_bytes(PayloadVisitor)
        }
    }
}

/// A UTF-8 string held in `Bytes`, so that decoding one (a task kind, a node
/// id, an error reason) is a slice of the frame, not an allocation.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// An empty text.
    pub const fn empty() -> Text {
        Text(Bytes::new())
    }
    /// A text from a `'static` string, without copying.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }
    /// A text made within [`crate::limits::TEXT_BYTES_MAX`]: a longer one
    /// is cut (at a character boundary) and ends with `…`. For texts built
    /// from a peer's or a program's words (an error with a task kind in it,
    /// a failure with output in it), which would otherwise break the limit
    /// that every receiver checks and cost the connection.
    pub fn clipped(mut s: String) -> Text {
        const MAX: usize = crate::limits::TEXT_BYTES_MAX;
        if s.len() > MAX {
            let mut cut = MAX - '…'.len_utf8();
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        Text::from(s)
    }
    /// The text as it may go into a log line: control characters escaped
    /// (a peer's line feed would forge lines, its escape sequences drive
    /// the terminal) and at most about `max` bytes.
    pub fn loggable(&self, max: usize) -> std::borrow::Cow<'_, str> {
        loggable(self.as_str(), max)
    }
    /// A text from bytes that must be UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(Text(b))
    }
    /// The string.
    pub fn as_str(&self) -> &str {
        // Every constructor checks UTF-8 (or starts from a `str`), and the
        // bytes are immutable, so this cannot fail; `expect` keeps it safe code.
        std::str::from_utf8(&self.0).expect("Text holds UTF-8 by construction")
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::from_static(s)
    }
}
impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}
impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a UTF-8 string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text, E> {
        Ok(Text(bytes_for(v.as_bytes())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(Bytes::copy_from_slice(v.as_bytes())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text(Bytes::from(v)))
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

/// 32 bytes: a handshake nonce or an HMAC-SHA256 proof. A length-prefixed
/// byte string on the binary wire, 64 lowercase hex digits in JSON.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bytes32(pub [u8; 32]);

impl fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes32({})", hex::encode(self.0))
    }
}

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut buf = [0u8; 64];
            // Cannot fail: the buffer is exactly twice the input's length.
            hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
            s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

struct Bytes32Visitor;

impl<'de> Visitor<'de> for Bytes32Visitor {
    type Value = Bytes32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("32 bytes (64 hex digits in JSON)")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes32, E> {
        <[u8; 32]>::try_from(v)
            .map(Bytes32)
            .map_err(|_| E::invalid_length(v.len(), &self))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes32, E> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(v, &mut out)
            .map_err(|e| E::custom(format_args!("expected 64 hex digits: {e}")))?;
        Ok(Bytes32(out))
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes32, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Bytes32Visitor)
        } else {
            d.deserialize_bytes(Bytes32Visitor)
        }
    }
}

/// Whether `c` may not stand in a name that goes into logs and tables: a
/// control character (a line feed forges lines, an escape drives the
/// terminal), or an invisible one that reorders or hides text (the
/// bidirectional overrides and isolates, zero-width characters, the byte
/// order mark).
pub fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` as it may go into a log line: see [`Text::loggable`].
pub fn loggable(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max && !s.chars().any(unprintable) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for c in s.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if unprintable(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod loggable_tests {
    use super::*;

    #[test]
    fn loggable_text_escapes_control_characters_and_is_cut() {
        assert_eq!(loggable("plain", 100), "plain");
        assert_eq!(
            loggable("a\nINFO forged\u{1b}[31m", 100),
            "a\\nINFO forged\\u{1b}[31m"
        );
        assert_eq!(
            loggable(&"x".repeat(50), 10),
            format!("{}…", "x".repeat(10))
        );
        assert_eq!(
            loggable("w\u{202E}1", 100),
            "w\\u{202e}1",
            "a right-to-left override"
        );
    }
}
