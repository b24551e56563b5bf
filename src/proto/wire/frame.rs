//! Frames inside a data packet: `ACK`, `PING`, `CLOSE`, `MAX_DATA`, `PATH_CHALLENGE`,
//! `PATH_RESPONSE` (8 bytes each: a server validating a client's new address) and message
//! frames.
//!
//! A message frame's type byte is `0b01cc_ksl0`: `cc` the delivery class, `k` chunked, `s` an
//! explicit stream byte follows (otherwise stream 0), `l` an explicit length follows (otherwise
//! the payload runs to the end of the datagram, which saves a byte or two on the last frame).
//! Then: `[stream u8] [seq] [chunk index varint, chunk count varint] [len varint] payload`, where
//! `seq` is a `u16` (the low bits of the message number) on the reliable classes, a varint
//! sequence on the sequenced class, and on the unreliable class a varint message id present
//! only when chunked.

use bytes::BufMut;

use super::WireError;
use super::codec::{Reader, put_varint, varint_len};

const FRAME_ACK: u8 = 0x01;
const FRAME_PING: u8 = 0x02;
const FRAME_CLOSE: u8 = 0x03;
const FRAME_MAX_DATA: u8 = 0x04;
const FRAME_PATH_CHALLENGE: u8 = 0x05;
const FRAME_PATH_RESPONSE: u8 = 0x06;
const MSG_MARK: u8 = 0x40;
const MSG_CHUNKED: u8 = 0x08;
const MSG_STREAM: u8 = 0x04;
const MSG_LEN: u8 = 0x02;

/// At most this many additional ranges in one `ACK` frame.
pub const MAX_ACK_RANGES: u32 = 64;
/// At most this many chunks in one message (far above what the largest allowed message needs).
pub const MAX_CHUNKS: u32 = 1 << 20;

/// The delivery class of a message on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Reliable, in order within its stream.
    ReliableOrdered = 0,
    /// Reliable, delivered as it arrives, exactly once.
    ReliableUnordered = 1,
    /// Best effort.
    Unreliable = 2,
    /// Best effort, latest wins within its stream: older arrivals are dropped.
    Sequenced = 3,
}

impl Class {
    fn from_bits(bits: u8) -> Self {
        match bits & 0x3 {
            0 => Self::ReliableOrdered,
            1 => Self::ReliableUnordered,
            2 => Self::Unreliable,
            _ => Self::Sequenced,
        }
    }

    /// Whether the class is retransmitted until acknowledged.
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::ReliableOrdered | Self::ReliableUnordered)
    }

    fn has_stream(self) -> bool {
        matches!(self, Self::ReliableOrdered | Self::Sequenced)
    }
}

/// What a `CLOSE` frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The application closed the session with this code.
    Application(u32),
    /// The sender saw a protocol violation from us.
    ProtocolViolation,
    /// The sender gave up on us: its data waited for our acknowledgement too long, or more of
    /// it piled up than it buffers for one peer.
    Stalled,
    /// The sender shed us to stay within its memory: we made it hold more received data than
    /// our share while it was at its limit.
    Shed,
}

/// The fields of a message frame, without its payload (used to encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Delivery class.
    pub class: Class,
    /// Stream (ordered and sequenced classes; 0 otherwise).
    pub stream: u8,
    /// Message number: low 16 bits on reliable classes, full on the others.
    pub seq: u64,
    /// `(index, count)` when the message is split into chunks.
    pub chunk: Option<(u32, u32)>,
    /// Payload length of this frame.
    pub len: usize,
}

/// A decoded message frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFrame<'a> {
    /// Delivery class.
    pub class: Class,
    /// Stream (0 when the class has none).
    pub stream: u8,
    /// Message number as sent (see [`MessageHeader::seq`]).
    pub seq: u64,
    /// `(index, count)` when chunked; `index < count`, `2 <= count <= MAX_CHUNKS`.
    pub chunk: Option<(u32, u32)>,
    /// The payload (or chunk) bytes.
    pub payload: &'a [u8],
}

/// A decoded `ACK` frame. Ranges are read lazily with [`AckFrame::ranges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    /// Low 32 bits of the largest acknowledged packet number.
    pub largest: u32,
    /// How long the receiver held the ack, in microseconds.
    pub delay_us: u64,
    first_range: u64,
    range_count: u32,
    rest: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// The acknowledged ranges (inclusive, descending), given the full largest packet number.
    pub fn ranges(&self, largest: u64) -> AckRanges<'a> {
        AckRanges {
            r: Reader::new(self.rest),
            next_hi: Some(largest),
            first: Some(self.first_range),
            left: self.range_count,
        }
    }
}

/// Iterator over the ranges of an [`AckFrame`].
#[derive(Debug, Clone)]
pub struct AckRanges<'a> {
    r: Reader<'a>,
    next_hi: Option<u64>,
    first: Option<u64>,
    left: u32,
}

impl Iterator for AckRanges<'_> {
    type Item = Result<(u64, u64), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bad = |v| Some(Err(WireError::OutOfRange { field: "ack range", value: v }));
        let hi = self.next_hi?;
        let len = match self.first.take() {
            Some(first) => first,
            None => {
                if self.left == 0 {
                    return None;
                }
                self.left -= 1;
                // Already validated by the frame decoder; re-read here.
                let (Ok(gap), Ok(len)) = (self.r.varint(), self.r.varint()) else {
                    self.next_hi = None;
                    return Some(Err(WireError::Truncated { offset: self.r.offset(), needed: 1 }));
                };
                let Some(hi) = hi.checked_sub(gap) else {
                    self.next_hi = None;
                    return bad(gap);
                };
                self.next_hi = Some(hi);
                return self.finish(hi, len);
            }
        };
        self.finish(hi, len)
    }
}

impl AckRanges<'_> {
    fn finish(&mut self, hi: u64, len: u64) -> Option<Result<(u64, u64), WireError>> {
        let Some(lo) = hi.checked_sub(len) else {
            self.next_hi = None;
            return Some(Err(WireError::OutOfRange { field: "ack range", value: len }));
        };
        // The next range's high end is at least two below this low end (one missing packet).
        self.next_hi = lo.checked_sub(2);
        if self.next_hi.is_none() && self.left > 0 {
            self.left = 0;
            return Some(Err(WireError::OutOfRange { field: "ack range", value: lo }));
        }
        Some(Ok((lo, hi)))
    }
}

/// A decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Acknowledgement of packet numbers.
    Ack(AckFrame<'a>),
    /// Asks for an acknowledgement (keepalive and RTT probe).
    Ping,
    /// The sender closed the session.
    Close(CloseKind),
    /// Flow-control credit: the sender will accept reliable payload bytes up to this total.
    MaxData(u64),
    /// The sender checks that we receive at the address this came to: echo it in a
    /// `PATH_RESPONSE`.
    PathChallenge(u64),
    /// The echo of a `PATH_CHALLENGE`.
    PathResponse(u64),
    /// A message or a chunk of one.
    Message(MessageFrame<'a>),
}

/// Reads the frames of a data packet. Yields at most one error, then stops.
#[derive(Debug, Clone)]
pub struct FrameReader<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> FrameReader<'a> {
    /// Reads the frames in `frames` (the bytes after a data header).
    pub fn new(frames: &'a [u8]) -> Self {
        Self { r: Reader::new(frames), failed: false }
    }

    fn frame(&mut self) -> Result<Frame<'a>, WireError> {
        let ty = self.r.u8()?;
        match ty {
            FRAME_ACK => {
                let largest = self.r.u32()?;
                let delay_us = self.r.varint()?;
                let range_count = self.r.varint_u32("ack range count")?;
                if range_count > MAX_ACK_RANGES {
                    return Err(WireError::OutOfRange {
                        field: "ack range count",
                        value: range_count.into(),
                    });
                }
                let first_range = self.r.varint()?;
                let start = self.r.clone();
                for _ in 0..range_count {
                    self.r.varint()?;
                    self.r.varint()?;
                }
                let used = start.remaining() - self.r.remaining();
                let mut start = start;
                let rest = start.bytes(used)?;
                Ok(Frame::Ack(AckFrame { largest, delay_us, first_range, range_count, rest }))
            }
            FRAME_PING => Ok(Frame::Ping),
            FRAME_CLOSE => {
                let kind = match self.r.u8()? {
                    0 => CloseKind::Application(self.r.varint_u32("close code")?),
                    1 => CloseKind::ProtocolViolation,
                    2 => CloseKind::Stalled,
                    3 => CloseKind::Shed,
                    other => {
                        return Err(WireError::OutOfRange {
                            field: "close kind",
                            value: other.into(),
                        });
                    }
                };
                Ok(Frame::Close(kind))
            }
            FRAME_MAX_DATA => Ok(Frame::MaxData(self.r.varint()?)),
            FRAME_PATH_CHALLENGE => Ok(Frame::PathChallenge(self.r.u64()?)),
            FRAME_PATH_RESPONSE => Ok(Frame::PathResponse(self.r.u64()?)),
            t if t & 0xc0 == MSG_MARK => self.message(t).map(Frame::Message),
            other => Err(WireError::UnknownFrame(other)),
        }
    }

    fn message(&mut self, ty: u8) -> Result<MessageFrame<'a>, WireError> {
        if ty & 0x01 != 0 {
            return Err(WireError::ReservedBits(ty));
        }
        let class = Class::from_bits(ty >> 4);
        let chunked = ty & MSG_CHUNKED != 0;
        let stream = if ty & MSG_STREAM != 0 {
            if !class.has_stream() {
                return Err(WireError::ReservedBits(ty));
            }
            self.r.u8()?
        } else {
            0
        };
        let seq = match class {
            Class::ReliableOrdered | Class::ReliableUnordered => u64::from(self.r.u16()?),
            Class::Sequenced => self.r.varint()?,
            Class::Unreliable if chunked => self.r.varint()?,
            Class::Unreliable => 0,
        };
        let chunk = if chunked {
            let index = self.r.varint_u32("chunk index")?;
            let count = self.r.varint_u32("chunk count")?;
            if !(2..=MAX_CHUNKS).contains(&count) {
                return Err(WireError::OutOfRange { field: "chunk count", value: count.into() });
            }
            if index >= count {
                return Err(WireError::OutOfRange { field: "chunk index", value: index.into() });
            }
            Some((index, count))
        } else {
            None
        };
        let payload = if ty & MSG_LEN != 0 {
            let len = self.r.varint()?;
            let len = usize::try_from(len)
                .map_err(|_| WireError::OutOfRange { field: "message length", value: len })?;
            self.r.bytes(len)?
        } else {
            self.r.rest()
        };
        Ok(MessageFrame { class, stream, seq, chunk, payload })
    }
}

impl<'a> Iterator for FrameReader<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let f = self.frame();
        self.failed = f.is_err();
        Some(f)
    }
}

/// Appends an `ACK` frame. `ranges` are inclusive, disjoint, descending and non-empty, and
/// at most `1 + MAX_ACK_RANGES` long; `largest_truncated` is the low 32 bits of `ranges[0].1`.
pub fn encode_ack(out: &mut Vec<u8>, delay_us: u64, ranges: &[(u64, u64)]) {
    let Some(&(lo0, hi0)) = ranges.first() else {
        return;
    };
    out.push(FRAME_ACK);
    out.extend_from_slice(&(hi0 as u32).to_le_bytes());
    put_varint(out, delay_us);
    let extra = &ranges[1..ranges.len().min(1 + MAX_ACK_RANGES as usize)];
    put_varint(out, extra.len() as u64);
    put_varint(out, hi0 - lo0);
    let mut prev_lo = lo0;
    for &(lo, hi) in extra {
        put_varint(out, prev_lo - hi - 2);
        put_varint(out, hi - lo);
        prev_lo = lo;
    }
}

/// Appends a `PING` frame.
pub fn encode_ping(out: &mut Vec<u8>) {
    out.push(FRAME_PING);
}

/// Appends a `CLOSE` frame.
pub fn encode_close(out: &mut Vec<u8>, kind: CloseKind) {
    out.push(FRAME_CLOSE);
    match kind {
        CloseKind::Application(code) => {
            out.push(0);
            put_varint(out, code.into());
        }
        CloseKind::ProtocolViolation => out.push(1),
        CloseKind::Stalled => out.push(2),
        CloseKind::Shed => out.push(3),
    }
}

/// Appends a `PATH_CHALLENGE` (`response` false) or `PATH_RESPONSE` frame carrying `token`.
pub fn encode_path(out: &mut Vec<u8>, response: bool, token: u64) {
    out.push(if response { FRAME_PATH_RESPONSE } else { FRAME_PATH_CHALLENGE });
    out.extend_from_slice(&token.to_le_bytes());
}

/// Appends a `MAX_DATA` frame.
pub fn encode_max_data(out: &mut Vec<u8>, max: u64) {
    out.push(FRAME_MAX_DATA);
    put_varint(out, max);
}

fn type_byte(h: &MessageHeader, last: bool) -> u8 {
    let mut ty = MSG_MARK | ((h.class as u8) << 4);
    if h.chunk.is_some() {
        ty |= MSG_CHUNKED;
    }
    if h.stream != 0 && h.class.has_stream() {
        ty |= MSG_STREAM;
    }
    if !last {
        ty |= MSG_LEN;
    }
    ty
}

/// The encoded size of a message frame's header. `last` means the length is omitted (the frame
/// runs to the end of the datagram).
pub fn message_header_len(h: &MessageHeader, last: bool) -> usize {
    let ty = type_byte(h, last);
    let mut n = 1;
    if ty & MSG_STREAM != 0 {
        n += 1;
    }
    n += match h.class {
        Class::ReliableOrdered | Class::ReliableUnordered => 2,
        Class::Sequenced => varint_len(h.seq),
        Class::Unreliable if h.chunk.is_some() => varint_len(h.seq),
        Class::Unreliable => 0,
    };
    if let Some((i, c)) = h.chunk {
        n += varint_len(i.into()) + varint_len(c.into());
    }
    if !last {
        n += varint_len(h.len as u64);
    }
    n
}

/// Appends a message frame's header; the caller appends `h.len` payload bytes right after.
/// Writes exactly [`message_header_len`] bytes (into a slice too: `&mut [u8]` is a `BufMut`).
pub fn encode_message_header(out: &mut impl BufMut, h: &MessageHeader, last: bool) {
    let ty = type_byte(h, last);
    out.put_u8(ty);
    if ty & MSG_STREAM != 0 {
        out.put_u8(h.stream);
    }
    match h.class {
        Class::ReliableOrdered | Class::ReliableUnordered => {
            out.put_u16_le(h.seq as u16);
        }
        Class::Sequenced => put_varint(out, h.seq),
        Class::Unreliable if h.chunk.is_some() => put_varint(out, h.seq),
        Class::Unreliable => {}
    }
    if let Some((i, c)) = h.chunk {
        put_varint(out, i.into());
        put_varint(out, c.into());
    }
    if !last {
        put_varint(out, h.len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(out: &mut Vec<u8>, h: MessageHeader, payload: &[u8], last: bool) {
        let before = out.len();
        encode_message_header(out, &h, last);
        assert_eq!(out.len() - before, message_header_len(&h, last));
        out.extend_from_slice(payload);
    }

    #[test]
    fn frames_round_trip() {
        let headers = [
            MessageHeader {
                class: Class::ReliableOrdered,
                stream: 0,
                seq: 0xfffe,
                chunk: None,
                len: 3,
            },
            MessageHeader {
                class: Class::ReliableOrdered,
                stream: 7,
                seq: 1,
                chunk: Some((2, 9)),
                len: 3,
            },
            MessageHeader {
                class: Class::ReliableUnordered,
                stream: 0,
                seq: 300,
                chunk: None,
                len: 3,
            },
            MessageHeader { class: Class::Unreliable, stream: 0, seq: 0, chunk: None, len: 3 },
            MessageHeader {
                class: Class::Unreliable,
                stream: 0,
                seq: 99_999,
                chunk: Some((0, 2)),
                len: 3,
            },
            MessageHeader {
                class: Class::Sequenced,
                stream: 255,
                seq: 1 << 40,
                chunk: None,
                len: 3,
            },
        ];
        for last in [false, true] {
            let mut out = Vec::new();
            encode_ack(&mut out, 17, &[(90, 100), (50, 60), (0, 10)]);
            encode_ping(&mut out);
            encode_close(&mut out, CloseKind::Application(42));
            encode_close(&mut out, CloseKind::ProtocolViolation);
            encode_close(&mut out, CloseKind::Stalled);
            encode_close(&mut out, CloseKind::Shed);
            encode_max_data(&mut out, 1 << 33);
            for (i, h) in headers.iter().enumerate() {
                msg(&mut out, *h, b"abc", last && i == headers.len() - 1);
            }
            let frames: Vec<_> = FrameReader::new(&out).collect::<Result<_, _>>().unwrap();
            assert_eq!(frames.len(), 7 + headers.len());
            let Frame::Ack(ack) = frames[0] else { panic!("{:?}", frames[0]) };
            assert_eq!((ack.largest, ack.delay_us), (100, 17));
            let ranges: Vec<_> = ack.ranges(100).collect::<Result<_, _>>().unwrap();
            assert_eq!(ranges, vec![(90, 100), (50, 60), (0, 10)]);
            assert_eq!(frames[1], Frame::Ping);
            assert_eq!(frames[2], Frame::Close(CloseKind::Application(42)));
            assert_eq!(frames[3], Frame::Close(CloseKind::ProtocolViolation));
            assert_eq!(frames[4], Frame::Close(CloseKind::Stalled));
            assert_eq!(frames[5], Frame::Close(CloseKind::Shed));
            assert_eq!(frames[6], Frame::MaxData(1 << 33));
            for (h, f) in headers.iter().zip(&frames[7..]) {
                let Frame::Message(m) = f else { panic!("{f:?}") };
                let seq = if h.class.is_reliable() { h.seq & 0xffff } else { h.seq };
                assert_eq!(
                    (m.class, m.stream, m.seq, m.chunk, m.payload),
                    (h.class, h.stream, seq, h.chunk, &b"abc"[..])
                );
            }
        }
    }

    #[test]
    fn rejects_malformed_frames() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x00], "unknown frame"),
            (&[0x80], "unknown frame"),
            (&[0x41], "reserved bit"),
            (&[0x54, 1, 0, 0], "stream byte on unordered"),
            (&[0x48, 0, 0, 5, 5], "chunk index >= count"),
            (&[0x48, 0, 0, 0, 1], "chunk count 1"),
            (&[0x42, 0, 0, 5, 1], "length past end"),
            (&[0x01, 0, 0, 0], "truncated ack"),
            (&[0x01, 5, 0, 0, 0, 0, 65, 0], "too many ack ranges"),
            (&[0x03, 7], "unknown close kind"),
            (&[0x04, 0xff], "truncated max data"),
        ];
        for (bytes, what) in cases {
            let mut it = FrameReader::new(bytes);
            assert!(matches!(it.next(), Some(Err(_))), "{what}: {bytes:?}");
            assert!(it.next().is_none(), "{what}: reader must stop after an error");
        }
    }

    #[test]
    fn ack_ranges_reject_underflow() {
        let mut out = Vec::new();
        encode_ack(&mut out, 0, &[(5, 10)]);
        let Some(Ok(Frame::Ack(ack))) = FrameReader::new(&out).next() else { panic!() };
        // Decoded against a largest smaller than the first range: underflow, typed error.
        assert!(ack.ranges(3).any(|r| r.is_err()));
        // A gap that runs below zero.
        let bytes = [0x01, 10, 0, 0, 0, 0, 1, 2, 50, 0];
        let Some(Ok(Frame::Ack(ack))) = FrameReader::new(&bytes).next() else { panic!() };
        assert!(ack.ranges(10).any(|r| r.is_err()));
    }
}
