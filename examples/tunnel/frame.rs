//! The tunnel's wire format: every byte on the link belongs to a frame, and every frame
//! says which session it belongs to. That is all a multiplexer needs.
//!
//! ```text
//! +--------+----------------+----------------+-------------------------+
//! | kind   | session id     | payload length | payload                 |
//! | 1 byte | 4 bytes, BE    | 4 bytes, BE    | 0..=MAX_PAYLOAD bytes   |
//! +--------+----------------+----------------+-------------------------+
//! ```
//!
//! The codec is a `tokio_util::codec` pair: `Encoder<Frame>` writes the header and payload,
//! `Decoder` waits until a whole frame has arrived and checks the header *before* buffering
//! the payload, so a hostile length never makes us allocate.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The largest payload a frame may carry. Larger writes are split into several frames.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// kind (1) + session id (4) + payload length (4).
pub const HEADER_LEN: usize = 9;

/// One unit on the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Asks the other node for a new session to the service behind `channel`.
    Open { session: u32, channel: String },
    /// The other node has a service on that channel: the session is open.
    Accept { session: u32 },
    /// The other node has no such channel (or will not serve it); `reason` says why.
    Refuse { session: u32, reason: String },
    /// Bytes of a session's stream, in order.
    Data { session: u32, bytes: Bytes },
    /// The sender will write no more on this session (a half-close, like TCP's FIN).
    Close { session: u32 },
}

// The kind byte of each frame. Anything else on the wire is an error.
const OPEN: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const DATA: u8 = 4;
const CLOSE: u8 = 5;

impl Frame {
    pub fn session(&self) -> u32 {
        match self {
            Frame::Open { session, .. }
            | Frame::Accept { session }
            | Frame::Refuse { session, .. }
            | Frame::Data { session, .. }
            | Frame::Close { session } => *session,
        }
    }
}

/// Why bytes on the link are not a frame. Any of these ends the link: in a byte stream
/// there is no way to find where the next frame starts once one is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    Oversize(usize),
    #[error("a {0} frame must have an empty payload")]
    UnexpectedPayload(&'static str),
    #[error("channel name or reason is not UTF-8")]
    NotText,
    #[error("the link ended in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes [`Frame`]s; `Framed::new(tcp_stream, FrameCodec)` gives a
/// `Stream` of frames and a `Sink` for them.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (kind, payload): (u8, &[u8]) = match &frame {
            Frame::Open { channel, .. } => (OPEN, channel.as_bytes()),
            Frame::Accept { .. } => (ACCEPT, &[]),
            Frame::Refuse { reason, .. } => (REFUSE, reason.as_bytes()),
            Frame::Data { bytes, .. } => (DATA, bytes),
            Frame::Close { .. } => (CLOSE, &[]),
        };
        // Refuse to write what the other side would refuse to read.
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::Oversize(payload.len()));
        }
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u8(kind);
        dst.put_u32(frame.session());
        dst.put_u32(payload.len() as u32);
        dst.put_slice(payload);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None); // not even a header yet: wait for more bytes
        }
        // Check the header before waiting for (and buffering) the payload it announces.
        let kind = src[0];
        let session = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        let length = u32::from_be_bytes([src[5], src[6], src[7], src[8]]) as usize;
        // exercise begins: refuse a frame of a kind this protocol does not have, from its header alone
        if !(OPEN..=CLOSE).contains(&kind) {
            return Err(FrameError::UnknownKind(kind));
        }
        // exercise ends
        if length > MAX_PAYLOAD {
            return Err(FrameError::Oversize(length));
        }
        if src.len() < HEADER_LEN + length {
            // Ask for room for the rest once, instead of growing bit by bit.
            src.reserve(HEADER_LEN + length - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(length).freeze();
        let text =
            |payload: Bytes| String::from_utf8(payload.into()).map_err(|_| FrameError::NotText);
        let empty = |name: &'static str| {
            if payload.is_empty() { Ok(()) } else { Err(FrameError::UnexpectedPayload(name)) }
        };
        Ok(Some(match kind {
            OPEN => Frame::Open { session, channel: text(payload)? },
            ACCEPT => empty("accept").map(|()| Frame::Accept { session })?,
            REFUSE => Frame::Refuse { session, reason: text(payload)? },
            DATA => Frame::Data { session, bytes: payload },
            _ => empty("close").map(|()| Frame::Close { session })?,
        }))
    }

    /// At the end of the link, leftover bytes are half a frame: say so, instead of
    /// tokio-util's generic "bytes remaining on stream".
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

#[cfg(test)]
mod tests;
