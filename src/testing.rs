//! A scripted peer that speaks the wire format by hand (feature `test-util`), for tests and
//! tools that must behave as a real client would not: advertise no credit, never acknowledge,
//! send chunks in any count and order. Sans-IO like the protocol core: it makes datagrams and
//! reads the server's; the caller moves them over a socket or the simulated network.
//!
//! ```
//! use grainwire::testing::RawPeer;
//! let mut peer = RawPeer::new(7, 1 << 20);
//! let hello = peer.hello(); // send it; feed the CHALLENGE to `on_datagram`, send what it
//!                           // returns (the CONNECT), feed the ACCEPT: then `is_established`
//! assert!(!peer.is_established() && !hello.is_empty());
//! ```

use bytes::Bytes;

use crate::proto::wire::{
    self, Class, CloseKind, Frame, FrameReader, Handshake, MessageHeader, Packet,
};

/// What a datagram from the server amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// Answer with this datagram (the `CONNECT` after a `CHALLENGE`).
    Reply(Vec<u8>),
    /// The server accepted the session.
    Established,
    /// A data packet: the whole (unchunked) messages it carried.
    Messages(Vec<Bytes>),
    /// The server rejected or reset us (`None`), or closed the session (with its `CLOSE`).
    Ended(Option<CloseKind>),
    /// Nothing of interest.
    Nothing,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RawPeer {
    nonce: u32,
    window: u64,
    tag: Option<u32>,
    next_pn: u64,
    /// Packet numbers received from the server (low 32 bits as sent), for acknowledgements.
    received: Vec<u32>,
}

impl RawPeer {
    /// A peer with handshake nonce `nonce` that grants the server `window` bytes of credit.
    pub fn new(nonce: u32, window: u64) -> Self {
        Self { nonce, window, tag: None, next_pn: 0, received: Vec::new() }
    }

    /// The `HELLO` that starts the handshake.
    pub fn hello(&self) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_handshake(&mut out, &Handshake::Hello { nonce: self.nonce });
        out
    }

    /// Whether the server accepted the session.
    pub fn is_established(&self) -> bool {
        self.tag.is_some()
    }

    /// Takes a datagram from the server.
    pub fn on_datagram(&mut self, d: &[u8]) -> RawEvent {
        match wire::decode_packet(d) {
            Ok(Packet::Handshake(hs)) => match hs.body {
                Handshake::Challenge { nonce, cookie } if nonce == self.nonce => {
                    let mut out = Vec::new();
                    let body = Handshake::Connect { nonce, cookie, window: self.window };
                    wire::encode_handshake(&mut out, &body);
                    RawEvent::Reply(out)
                }
                Handshake::Accept { nonce, tag, .. } if nonce == self.nonce => {
                    self.tag = Some(tag);
                    RawEvent::Established
                }
                Handshake::Reject { .. } | Handshake::Reset { .. } => RawEvent::Ended(None),
                _ => RawEvent::Nothing,
            },
            Ok(Packet::Data(h, frames)) if Some(h.tag) == self.tag => {
                if self.received.len() < 1 << 16 {
                    self.received.push(h.pn_truncated);
                }
                let mut messages = Vec::new();
                for f in FrameReader::new(frames).flatten() {
                    match f {
                        Frame::Message(m) if m.chunk.is_none() => {
                            messages.push(Bytes::copy_from_slice(m.payload));
                        }
                        Frame::Close(kind) => return RawEvent::Ended(Some(kind)),
                        _ => {}
                    }
                }
                RawEvent::Messages(messages)
            }
            _ => RawEvent::Nothing,
        }
    }

    /// A data packet carrying `frames` (see [`message`](Self::message),
    /// [`ack`](Self::ack), [`wire::encode_ping`]); `None` before the session is established.
    pub fn data(&mut self, frames: &[u8]) -> Option<Vec<u8>> {
        let tag = self.tag?;
        let mut out = Vec::with_capacity(8 + frames.len());
        wire::encode_data_header(&mut out, tag, self.next_pn as u32, 4);
        self.next_pn += 1;
        out.extend_from_slice(frames);
        Some(out)
    }

    /// Appends a message frame with an explicit length to `frames`.
    pub fn message(
        frames: &mut Vec<u8>,
        class: Class,
        stream: u8,
        seq: u64,
        chunk: Option<(u32, u32)>,
        payload: &[u8],
    ) {
        let h = MessageHeader { class, stream, seq, chunk, len: payload.len() };
        wire::encode_message_header(frames, &h, false);
        frames.extend_from_slice(payload);
    }

    /// Appends an `ACK` frame for everything received so far (what a well-behaved peer sends).
    pub fn ack(&mut self, frames: &mut Vec<u8>) {
        let mut pns: Vec<u64> = self.received.iter().map(|&p| u64::from(p)).collect();
        pns.sort_unstable();
        pns.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for p in pns {
            match ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == p => *hi = p,
                _ => ranges.push((p, p)),
            }
        }
        ranges.reverse();
        ranges.truncate(wire::MAX_ACK_RANGES as usize + 1);
        if !ranges.is_empty() {
            wire::encode_ack(frames, 0, &ranges);
        }
    }
}
