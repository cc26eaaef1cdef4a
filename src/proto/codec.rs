//! [`WireCodec`]: a tokio-util `Decoder`/`Encoder` for either wire, typed by
//! the messages it sends (`Tx`) and receives (`Rx`).
//!
//! Decoding never copies a payload: a complete frame (or line) is split off
//! the read buffer and frozen, and the message's `Payload`/`Text` fields are
//! slices of it. The frame length is checked from the header, before any of
//! the body is buffered; "not enough bytes yet" is `Ok(None)`, never an error.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::ProtoError;
use super::frame::{Header, HEADER_LEN, MAGIC};
use super::types::FrameScope;
use super::{
    json_wire, Message, Wire, PROTOCOL_VERSION, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use crate::limits;

/// Whether `b` may start a JSON line (PROTOCOL.md, "Telling the wires apart").
fn starts_json(b: u8) -> bool {
    b == b'{' || is_json_space(b)
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Most bytes the codec asks the next read to have room for. A session's
/// buffer starts small (`net::SESSION_BUFFER_BYTES`, so idle connections
/// cost little), and decoded frames keep slices of it, so without a hint
/// each read got a fresh buffer of that small size: a 2-3 KiB `submit`
/// took two or three `recvfrom` calls (measured on the master at 691k
/// tasks/s). The hint follows what the connection delivers, so a busy one
/// reads everything waiting in one call.
pub const READ_AHEAD_BYTES_MAX: usize = 64 * 1024;

/// Frames `Tx` out and `Rx` in on one connection.
#[derive(Debug)]
pub struct WireCodec<Tx, Rx> {
    /// `None` until the first byte arrives on an accepted connection.
    wire: Option<Wire>,
    /// Largest body or line accepted now (small until the handshake is done).
    frame_bytes_max: usize,
    /// JSON: bytes of the current line already searched for a newline, so a
    /// long line arriving in pieces is scanned once.
    scanned: usize,
    /// Room to leave for the next read: twice what the last read brought,
    /// halving while less comes, at most [`READ_AHEAD_BYTES_MAX`].
    read_ahead: usize,
    /// Bytes decoded since the buffer last ran dry (what the last read brought).
    decoded: usize,
    _types: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Message, Rx: Message> WireCodec<Tx, Rx> {
    /// A codec for a connection we opened, speaking `wire`. It starts with
    /// the pre-authentication frame limit; call [`Self::handshake_complete`]
    /// after the handshake.
    pub fn new(wire: Wire) -> Self {
        WireCodec {
            wire: Some(wire),
            frame_bytes_max: limits::PREAUTH_FRAME_BYTES_MAX,
            scanned: 0,
            read_ahead: 0,
            decoded: 0,
            _types: PhantomData,
        }
    }

    /// A codec for a connection we accepted: the wire is told from the first
    /// byte the peer sends.
    pub fn detect() -> Self {
        WireCodec {
            wire: None,
            ..Self::new(Wire::Bincode)
        }
    }

    /// The wire in use, once known.
    pub fn wire(&self) -> Option<Wire> {
        self.wire
    }

    /// Raises the frame limit to [`limits::FRAME_BYTES_MAX`]: the handshake
    /// succeeded, so the peer is who the cluster's secret says it may be.
    pub fn handshake_complete(&mut self) {
        self.frame_bytes_max = limits::FRAME_BYTES_MAX;
    }

    /// The same codec state, typed for other messages: the acceptor of a
    /// connection learns from the hello whether the peer is a client or a
    /// worker, and then retypes the connection.
    pub fn retype<Tx2: Message, Rx2: Message>(self) -> WireCodec<Tx2, Rx2> {
        WireCodec {
            wire: self.wire,
            frame_bytes_max: self.frame_bytes_max,
            scanned: self.scanned,
            read_ahead: self.read_ahead,
            decoded: self.decoded,
            _types: PhantomData,
        }
    }

    /// Sets the largest body or line accepted (tests and tools).
    pub fn set_frame_bytes_max(&mut self, max: usize) {
        self.frame_bytes_max = max.min(limits::FRAME_BYTES_MAX);
    }

    fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Rx>, ProtoError> {
        if buf.len() >= MAGIC.len() && buf[..2] != MAGIC {
            return Err(ProtoError::BadMagic([buf[0], buf[1]]));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::parse(buf)?;
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&header.version) {
            return Err(ProtoError::UnsupportedVersion {
                got: header.version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION_MAX,
            });
        }
        header.check_flags()?;
        let body_len = header.body_len as usize;
        if body_len > self.frame_bytes_max {
            return Err(ProtoError::FrameTooLarge {
                len: body_len,
                max: self.frame_bytes_max,
            });
        }
        let frame_len = HEADER_LEN + body_len;
        if buf.len() < frame_len {
            buf.reserve(frame_len - buf.len());
            return Ok(None);
        }
        self.decoded += frame_len;
        buf.advance(HEADER_LEN);
        let body = buf.split_to(body_len).freeze();
        let _scope = FrameScope::enter(&body);
        let msg = Rx::decode_bincode(header.msg_type, &body)?;
        msg.validate()?;
        Ok(Some(msg))
    }

    fn decode_line(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Rx>, ProtoError> {
        // Blank lines and whitespace between messages are allowed.
        let blank = buf.iter().take_while(|&&b| is_json_space(b)).count();
        if blank > 0 {
            buf.advance(blank);
            self.scanned = 0;
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let end = match buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => self.scanned + i,
            None if eof => buf.len(),
            None => {
                self.scanned = buf.len();
                if buf.len() > self.frame_bytes_max {
                    return Err(ProtoError::LineTooLong {
                        max: self.frame_bytes_max,
                    });
                }
                return Ok(None);
            }
        };
        self.scanned = 0;
        if end > self.frame_bytes_max {
            return Err(ProtoError::LineTooLong {
                max: self.frame_bytes_max,
            });
        }
        let taken = (end + 1).min(buf.len());
        self.decoded += taken;
        let mut line = buf.split_to(taken).freeze();
        line.truncate(end);
        while line.last().is_some_and(|&b| is_json_space(b)) {
            line.truncate(line.len() - 1);
        }
        // JSON text is UTF-8, including fields this version ignores.
        std::str::from_utf8(&line)
            .map_err(|e| ProtoError::Malformed(format!("line is not UTF-8: {e}")))?;
        let _scope = FrameScope::enter(&line);
        let name = json_wire::message_name(&line)?;
        let msg = Rx::decode_json(name, &line)?;
        msg.validate()?;
        Ok(Some(msg))
    }

    fn decode_any(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Rx>, ProtoError> {
        let wire = match self.wire {
            Some(w) => w,
            None => {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                let w = if first == MAGIC[0] {
                    Wire::Bincode
                } else if starts_json(first) {
                    Wire::Json
                } else {
                    return Err(ProtoError::UnknownWire(first));
                };
                self.wire = Some(w);
                w
            }
        };
        match wire {
            Wire::Bincode => self.decode_frame(buf),
            Wire::Json => self.decode_line(buf, eof),
        }
    }
}

impl<Tx: Message, Rx: Message> Decoder for WireCodec<Tx, Rx> {
    type Item = Rx;
    type Error = ProtoError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Rx>, ProtoError> {
        let msg = self.decode_any(buf, false)?;
        if msg.is_none() {
            self.make_room(buf);
        }
        Ok(msg)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Rx>, ProtoError> {
        match self.decode_any(buf, true)? {
            Some(msg) => Ok(Some(msg)),
            None if buf.iter().all(|&b| is_json_space(b)) => Ok(None),
            None => Err(ProtoError::Truncated(buf.len())),
        }
    }
}

impl<Tx: Message, Rx: Message> WireCodec<Tx, Rx> {
    /// The buffer ran dry (or holds part of a frame): the caller reads next.
    /// Leaves room for what the connection has been delivering per read.
    fn make_room(&mut self, buf: &mut BytesMut) {
        self.read_ahead = (2 * self.decoded)
            .max(self.read_ahead / 2)
            .min(READ_AHEAD_BYTES_MAX);
        self.decoded = 0;
        if buf.capacity() - buf.len() < self.read_ahead {
            buf.reserve(self.read_ahead);
        }
    }
}

impl<Tx: Message, Rx: Message> Encoder<Tx> for WireCodec<Tx, Rx> {
    type Error = ProtoError;

    fn encode(&mut self, msg: Tx, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode_ref(&msg, dst)
    }
}

impl<Tx: Message, Rx: Message> WireCodec<Tx, Rx> {
    /// Encodes `msg` at the end of `dst`, straight into it. Before the wire
    /// is known (an accepted connection that sent garbage) it writes JSON,
    /// the form a person with `nc` can read.
    pub fn encode_ref(&mut self, msg: &Tx, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let start = dst.len();
        let result = match self.wire.unwrap_or(Wire::Json) {
            Wire::Bincode => encode_frame(msg, dst, start),
            Wire::Json => msg.encode_body(Wire::Json, dst).and_then(|()| {
                let len = dst.len() - start;
                if len > limits::FRAME_BYTES_MAX {
                    Err(ProtoError::FrameTooLarge {
                        len,
                        max: limits::FRAME_BYTES_MAX,
                    })
                } else {
                    Ok(())
                }
            }),
        };
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }
}

fn encode_frame<Tx: Message>(msg: &Tx, dst: &mut BytesMut, start: usize) -> Result<(), ProtoError> {
    dst.extend_from_slice(&[0u8; HEADER_LEN]);
    msg.encode_body(Wire::Bincode, dst)?;
    let body_len = dst.len() - start - HEADER_LEN;
    if body_len > limits::FRAME_BYTES_MAX {
        return Err(ProtoError::FrameTooLarge {
            len: body_len,
            max: limits::FRAME_BYTES_MAX,
        });
    }
    let header = Header {
        version: PROTOCOL_VERSION,
        msg_type: msg.msg_type(),
        flags: 0,
        body_len: body_len as u32,
    };
    dst[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}
