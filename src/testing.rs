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

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::crypt::PacketKeys;
use crate::proto::token::PlayerToken;

/// How many of grainwire's own mutexes this thread has locked so far: every one is taken
/// through one function, which counts (with feature `test-util`). Locks inside dependencies
/// (tokio, crossbeam) are not counted.
pub fn locks_on_this_thread() -> u64 {
    crate::sync::locks_taken()
}

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
    /// Packet numbers received from the server (expanded from their truncated form), for
    /// acknowledgements.
    received: Vec<u64>,
    /// The largest of them.
    largest: Option<u64>,
    /// The server's flow-control limit for our reliable data (its window, raised by `MAX_DATA`).
    credit_limit: u64,
    /// What our reliable messages have cost of it.
    credit_used: u64,
    /// What the server's reliable message frames have cost us (payload plus 64 per frame,
    /// retransmissions included: an overestimate, so our grants are generous).
    received_cost: u64,
    /// The token presented, if any: the session is then protected with its secrets.
    token: Option<Arc<PlayerToken>>,
    keys: Option<Arc<PacketKeys>>,
}

impl RawPeer {
    /// A peer with handshake nonce `nonce` that grants the server `window` bytes of credit.
    pub fn new(nonce: u32, window: u64) -> Self {
        Self {
            nonce,
            window,
            tag: None,
            next_pn: 0,
            received: Vec::new(),
            largest: None,
            credit_limit: 0,
            credit_used: 0,
            received_cost: 0,
            token: None,
            keys: None,
        }
    }

    /// A peer that presents `token` (to a server that requires tokens): its packets are then
    /// sealed and the server's opened, as a real client's.
    pub fn with_token(mut self, token: Arc<PlayerToken>) -> Self {
        self.token = Some(token);
        self
    }

    /// Appends a `MAX_DATA` frame that gives the server another window of credit beyond what
    /// it sent (a peer that never does this lets at most one window of reliable data in).
    pub fn grant(&self, frames: &mut Vec<u8>) {
        if self.window > 0 {
            wire::encode_max_data(frames, self.received_cost + self.window);
        }
    }

    /// Appends a `MAX_DATA` frame that lets the server send `bytes` more than it has sent so
    /// far (a trickle, for a peer that keeps its queue alive while hardly taking anything).
    pub fn grant_more(&self, frames: &mut Vec<u8>, bytes: u64) {
        wire::encode_max_data(frames, self.received_cost + bytes);
    }

    /// Whether a reliable message of `len` bytes fits the server's credit now (each costs its
    /// length plus 64 bytes of the server's bookkeeping); if so, it is charged.
    pub fn charge(&mut self, len: usize) -> bool {
        let cost = len as u64 + 64;
        if self.credit_used + cost > self.credit_limit {
            return false;
        }
        self.credit_used += cost;
        true
    }

    /// Drops what was received so far from the acknowledgement list (after an `ACK` went out).
    pub fn forget_received(&mut self) {
        self.received.clear();
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
                    let body = Handshake::Connect {
                        nonce,
                        cookie,
                        window: self.window,
                        cluster: 0,
                        token: self.token.as_ref().map_or(&[][..], |t| &t.sealed[..]),
                    };
                    wire::encode_handshake(&mut out, &body);
                    RawEvent::Reply(out)
                }
                Handshake::Accept { nonce, tag, window, proof } if nonce == self.nonce => {
                    if let Some(t) = &self.token {
                        let keys = PacketKeys::derive(&t.secrets, nonce, tag, true);
                        let fields = wire::accept_fields(nonce, tag, window);
                        if !proof.is_some_and(|p| keys.verify_accept(&fields, &p)) {
                            return RawEvent::Nothing;
                        }
                        self.keys = Some(Arc::new(keys));
                    }
                    self.tag = Some(tag);
                    self.credit_limit = self.credit_limit.max(window);
                    RawEvent::Established
                }
                Handshake::Reject { .. } | Handshake::Reset { .. } => RawEvent::Ended(None),
                _ => RawEvent::Nothing,
            },
            Ok(Packet::Data(h, frames)) if Some(h.tag) == self.tag => {
                let mut plain = Vec::new();
                let frames = match &self.keys {
                    None => frames,
                    Some(keys) => {
                        let expected = self.largest.map_or(0, |l| l + 1);
                        let bits = u32::from(h.pn_len) * 8;
                        let pn = crate::proto::channel::seq::expand(
                            expected,
                            h.pn_truncated.into(),
                            bits,
                        );
                        plain.extend_from_slice(d);
                        let (header, body) = plain.split_at_mut(wire::data_header_len(d[0]));
                        match keys.open(pn, header, body) {
                            Ok(p) => &*p,
                            Err(_) => return RawEvent::Nothing,
                        }
                    }
                };
                // The recent ones are enough to acknowledge (older ones were acknowledged, or the
                // server sends their data again in new packets).
                if self.received.len() >= 1024 {
                    self.received.drain(..512);
                }
                let expected = self.largest.map_or(0, |l| l + 1);
                let pn = crate::proto::channel::seq::expand(
                    expected,
                    h.pn_truncated.into(),
                    u32::from(h.pn_len) * 8,
                );
                self.largest = Some(self.largest.map_or(pn, |l| l.max(pn)));
                self.received.push(pn);
                let mut messages = Vec::new();
                for f in FrameReader::new(frames).flatten() {
                    if let Frame::Message(m) = &f
                        && m.class.is_reliable()
                    {
                        self.received_cost += m.payload.len() as u64 + 64;
                    }
                    match f {
                        Frame::Message(m) if m.chunk.is_none() => {
                            messages.push(Bytes::copy_from_slice(m.payload));
                        }
                        Frame::Close(kind) => return RawEvent::Ended(Some(kind)),
                        Frame::MaxData(max) => self.credit_limit = self.credit_limit.max(max),
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
        let mut out = Vec::with_capacity(8 + frames.len() + 16);
        wire::encode_data_header(&mut out, tag, self.next_pn as u32, 4);
        out.extend_from_slice(frames);
        if let Some(keys) = &self.keys {
            keys.seal(self.next_pn, wire::data_header_len(out[0]), &mut out);
        }
        self.next_pn += 1;
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

    /// Appends an `ACK` frame for everything received so far (what a well-behaved peer sends;
    /// the most recent 64 ranges).
    pub fn ack(&mut self, frames: &mut Vec<u8>) {
        let mut pns = self.received.clone();
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
