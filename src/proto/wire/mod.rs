//! The datagram format: handshake packets and data packets with their frames.
//!
//! Sans-IO and allocation-free on decode. Every decoder is bounds-checked, bounds every count
//! and size, and reports a typed [`WireError`]; the fuzz targets in `fuzz/` feed it arbitrary
//! bytes.
//!
//! # Layout
//!
//! Every datagram starts with one byte that tells the two families apart:
//!
//! * **Handshake** packets (high bit clear) start with the 4-byte magic `GWIR`, a version byte
//!   and a kind byte. The first ten bytes (magic, version, kind, client nonce) are frozen across
//!   versions so that a peer of any version can read a `HELLO` and a `REJECT`.
//! * **Data** packets (high bit set): `flags u8 | session tag u32 | packet number (1, 2 or 4
//!   bytes, truncated) | frames…`. Frames: `ACK`, `PING`, `CLOSE`, `MAX_DATA` and message
//!   frames, many per datagram.

mod codec;
mod frame;
mod handshake;
pub mod rpc;

pub use frame::{
    AckFrame, AckRanges, Class, CloseKind, Frame, FrameReader, MAX_ACK_RANGES, MAX_CHUNKS,
    MessageFrame, MessageHeader, encode_ack, encode_close, encode_max_data, encode_message_header,
    encode_path, encode_ping, message_header_len,
};
pub use handshake::{
    Cookie, DataHeader, HELLO_LEN, Handshake, HandshakePacket, MAGIC, Packet, RESET_LEN,
    RejectReason, VERSION, accept_fields, data_header_len, decode_packet, encode_data_header,
    encode_handshake, encode_handshake_version, is_data,
};

#[cfg(feature = "test-util")]
pub(crate) use codec::put_varint;
pub(crate) use codec::varint_len;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The datagram ended in the middle of a field.
    #[error("datagram truncated at offset {offset}: {needed} more bytes needed")]
    Truncated {
        /// Where the field started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The datagram was empty.
    #[error("empty datagram")]
    Empty,
    /// A handshake packet did not start with the protocol magic.
    #[error("bad protocol magic")]
    BadMagic,
    /// A handshake packet of a protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown handshake packet kind.
    #[error("unknown handshake kind {0:#04x}")]
    UnknownHandshake(u8),
    /// An unknown frame type inside a data packet.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrame(u8),
    /// Reserved bits were set in a flags byte.
    #[error("reserved bits set in {0:#04x}")]
    ReservedBits(u8),
    /// A varint longer than 10 bytes or larger than `u64::MAX`.
    #[error("varint overflow")]
    VarintOverflow,
    /// A field held a value outside its allowed range.
    #[error("field `{field}` out of range: {value}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
    },
    /// A `HELLO` shorter than [`HELLO_LEN`] (the padding guards against amplification).
    #[error("HELLO not padded to {HELLO_LEN} bytes")]
    ShortHello,
    /// A data packet without any frame.
    #[error("data packet without frames")]
    NoFrames,
}
