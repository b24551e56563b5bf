//! The sending half of a channel: queued messages per space, what each sent packet carried,
//! and which chunks must go again.
//!
//! Spaces: reliable-ordered streams 0..=255, the reliable-unordered space, and one FIFO for
//! the unreliable classes. New data is taken from the spaces round-robin, one message (or
//! chunk) at a time, so one busy stream cannot starve another. Retransmissions go first.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::proto::wire::Class;

/// Space id of the reliable-unordered class (ordered streams are 0..=255).
pub(crate) const UNORDERED: u16 = 256;
/// Space id of the unreliable FIFO (both unreliable classes).
pub(crate) const UNRELIABLE: u16 = 257;
const SPACES: usize = 258;

/// Flow-control cost of one chunk beyond its payload (the receiver's bookkeeping).
pub(crate) const CHUNK_COST: u64 = 64;
/// Send-buffer cost of one message beyond its payload: what holding it really costs (its
/// queue entry, its allocation's overhead, its trip through the session's inbox). Measured: a
/// server holding 270,000 small answers for a peer that granted no credit grew by about 150
/// bytes per answer beyond the payload.
pub(crate) const MESSAGE_COST: usize = 160;

/// One chunk of one reliable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRef {
    pub(crate) space: u16,
    pub(crate) seq: u64,
    pub(crate) chunk: u32,
}

#[derive(Debug)]
pub(crate) struct OutMsg {
    pub(crate) payload: Bytes,
    pub(crate) chunks: u32,
    acked_count: u32,
    /// Acked chunks, one bit each (inline up to 64 chunks).
    acked: SmallVec<[u64; 1]>,
}

impl OutMsg {
    fn new(payload: Bytes, chunks: u32) -> Self {
        let words = chunks.div_ceil(64) as usize;
        Self { payload, chunks, acked_count: 0, acked: SmallVec::from_elem(0, words) }
    }

    fn is_done(&self) -> bool {
        self.acked_count == self.chunks
    }

    fn is_acked(&self, chunk: u32) -> bool {
        self.acked.get((chunk / 64) as usize).is_none_or(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// Marks a chunk acked; true if it was not before.
    fn ack(&mut self, chunk: u32) -> bool {
        let Some(w) = self.acked.get_mut((chunk / 64) as usize) else {
            return false;
        };
        let bit = 1 << (chunk % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.acked_count += 1;
        true
    }
}

/// A reliable space's queue: messages `base..next_seq`, of which `..next_new` were sent once.
#[derive(Debug, Default)]
pub(crate) struct ReliableOut {
    pub(crate) base: u64,
    pub(crate) msgs: VecDeque<OutMsg>,
    pub(crate) next_new: u64,
    pub(crate) next_new_chunk: u32,
}

impl ReliableOut {
    pub(crate) fn next_seq(&self) -> u64 {
        self.base + self.msgs.len() as u64
    }

    pub(crate) fn has_new(&self) -> bool {
        self.next_new < self.next_seq()
    }

    pub(crate) fn msg(&self, seq: u64) -> Option<&OutMsg> {
        self.msgs.get(usize::try_from(seq.checked_sub(self.base)?).ok()?)
    }

    /// Whether that chunk still needs to arrive.
    pub(crate) fn is_unacked(&self, c: &ChunkRef) -> bool {
        self.msg(c.seq).is_some_and(|m| !m.is_acked(c.chunk))
    }

    /// Marks a chunk acked: the bytes it newly brought (its share of the message's payload; 0
    /// if it was acked before), and, when that completes its message, the bytes the message had
    /// charged to the send buffer (the payload is dropped and fully acked messages leave the
    /// front).
    fn ack(&mut self, c: &ChunkRef) -> (u64, Option<usize>) {
        let Some(idx) = c.seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            return (0, None);
        };
        let Some(m) = self.msgs.get_mut(idx) else {
            return (0, None);
        };
        if !m.ack(c.chunk) {
            return (0, None);
        }
        let share = (m.payload.len() as u64).div_ceil(u64::from(m.chunks.max(1))).max(1);
        if !m.is_done() {
            return (share, None);
        }
        let released = m.payload.len() + MESSAGE_COST;
        m.payload = Bytes::new();
        while self.msgs.front().is_some_and(OutMsg::is_done) {
            self.msgs.pop_front();
            self.base += 1;
        }
        self.next_new = self.next_new.max(self.base);
        (share, Some(released))
    }
}

/// An unreliable message waiting to be sent.
#[derive(Debug)]
pub(crate) struct UnrelOut {
    pub(crate) class: Class,
    pub(crate) stream: u8,
    pub(crate) seq: u64,
    pub(crate) payload: Bytes,
    pub(crate) chunks: u32,
    pub(crate) next_chunk: u32,
}

/// What one sent packet carried, kept until it is acknowledged or declared lost.
#[derive(Debug)]
pub(crate) struct SentPacket {
    pub(crate) pn: u64,
    pub(crate) time: Instant,
    pub(crate) size: u32,
    /// Asks for an ack, counts against the congestion window.
    pub(crate) eliciting: bool,
    pub(crate) resolved: bool,
    pub(crate) chunks: Vec<ChunkRef>,
    /// The largest packet number our `ACK` frame in it acknowledged.
    pub(crate) ack_largest: Option<u64>,
    /// The `MAX_DATA` value it carried.
    pub(crate) max_data: Option<u64>,
}

/// Queues, the round-robin ring and the sent-packet table.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) ordered: Vec<ReliableOut>,
    pub(crate) unordered: ReliableOut,
    pub(crate) unreliable: VecDeque<UnrelOut>,
    sequenced_next: Vec<u64>,
    unreliable_chunked_next: u64,
    ring: VecDeque<u16>,
    in_ring: [u64; SPACES.div_ceil(64)],
    pub(crate) retransmit: VecDeque<ChunkRef>,
    pub(crate) sent: VecDeque<SentPacket>,
    spare_chunk_vecs: Vec<Vec<ChunkRef>>,
    /// Send-buffer bytes (payload + [`MESSAGE_COST`] per message) released since the owner
    /// last took them: reliable messages once fully acked, unreliable ones once sent.
    pub(crate) released_bytes: usize,
    /// Messages released since the owner last took them (see `released_bytes`).
    pub(crate) released_messages: usize,
    pub(crate) messages_in_flight: u64,
    /// Bytes the peer has taken so far (never decreases): the payload of every reliable chunk
    /// acknowledged and of every unreliable message sent, each message's bookkeeping cost once
    /// it is released. See `Channel::stalled_since`.
    pub(crate) progress: u64,
    /// Send-buffer bytes held now (payload plus [`MESSAGE_COST`] per message): queued, or sent
    /// and not yet acknowledged.
    pub(crate) held_bytes: u64,
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            ordered: Vec::new(),
            unordered: ReliableOut::default(),
            unreliable: VecDeque::new(),
            sequenced_next: Vec::new(),
            unreliable_chunked_next: 0,
            ring: VecDeque::new(),
            in_ring: [0; SPACES.div_ceil(64)],
            retransmit: VecDeque::new(),
            sent: VecDeque::new(),
            spare_chunk_vecs: Vec::new(),
            released_bytes: 0,
            released_messages: 0,
            messages_in_flight: 0,
            progress: 0,
            held_bytes: 0,
        }
    }

    pub(crate) fn space(&self, space: u16) -> Option<&ReliableOut> {
        if space == UNORDERED { Some(&self.unordered) } else { self.ordered.get(space as usize) }
    }

    pub(crate) fn space_mut(&mut self, space: u16) -> Option<&mut ReliableOut> {
        if space == UNORDERED {
            Some(&mut self.unordered)
        } else {
            self.ordered.get_mut(space as usize)
        }
    }

    /// Puts a space in the round-robin ring if it is not there yet.
    pub(crate) fn schedule(&mut self, space: u16) {
        let (w, b) = ((space / 64) as usize, space % 64);
        if self.in_ring[w] & (1 << b) == 0 {
            self.in_ring[w] |= 1 << b;
            self.ring.push_back(space);
        }
    }

    pub(crate) fn ring_pop(&mut self) -> Option<u16> {
        let s = self.ring.pop_front()?;
        self.in_ring[(s / 64) as usize] &= !(1 << (s % 64));
        Some(s)
    }

    pub(crate) fn ring_push_front(&mut self, space: u16) {
        let (w, b) = ((space / 64) as usize, space % 64);
        if self.in_ring[w] & (1 << b) == 0 {
            self.in_ring[w] |= 1 << b;
            self.ring.push_front(space);
        }
    }

    pub(crate) fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Queues a message; `chunks` is how many chunks it will travel in.
    pub(crate) fn queue(&mut self, class: Class, stream: u8, payload: Bytes, chunks: u32) {
        self.messages_in_flight += 1;
        self.held_bytes += (payload.len() + MESSAGE_COST) as u64;
        match class {
            Class::ReliableOrdered | Class::ReliableUnordered => {
                let space = if class == Class::ReliableOrdered {
                    let s = stream as usize;
                    if self.ordered.len() <= s {
                        self.ordered.resize_with(s + 1, ReliableOut::default);
                    }
                    u16::from(stream)
                } else {
                    UNORDERED
                };
                if let Some(out) = self.space_mut(space) {
                    out.msgs.push_back(OutMsg::new(payload, chunks));
                }
                self.schedule(space);
            }
            Class::Unreliable | Class::Sequenced => {
                let seq = if class == Class::Sequenced {
                    let s = stream as usize;
                    if self.sequenced_next.len() <= s {
                        self.sequenced_next.resize(s + 1, 0);
                    }
                    let seq = self.sequenced_next[s];
                    self.sequenced_next[s] += 1;
                    seq
                } else if chunks > 1 {
                    let id = self.unreliable_chunked_next;
                    self.unreliable_chunked_next += 1;
                    id
                } else {
                    0
                };
                self.unreliable.push_back(UnrelOut {
                    class,
                    stream,
                    seq,
                    payload,
                    chunks,
                    next_chunk: 0,
                });
                self.schedule(UNRELIABLE);
            }
        }
    }

    /// Everything still queued or unacknowledged is dropped (the session is closing for good):
    /// its charge is released, so that the owner's send-buffer accounting ends at zero.
    pub(crate) fn discard(&mut self) {
        let mut bytes = 0;
        let mut msgs = 0u64;
        for out in self.ordered.iter().chain(std::iter::once(&self.unordered)) {
            for m in out.msgs.iter().filter(|m| !m.is_done()) {
                bytes += m.payload.len() + MESSAGE_COST;
                msgs += 1;
            }
        }
        for m in &self.unreliable {
            bytes += m.payload.len() + MESSAGE_COST;
            msgs += 1;
        }
        let (released, released_msgs) = (self.released_bytes, self.released_messages);
        let progress = self.progress;
        *self = Self::new();
        self.released_bytes = released + bytes;
        self.released_messages = released_msgs + msgs as usize;
        self.progress = progress;
    }

    /// An unreliable message left the queue (sent whole, or dropped on close).
    pub(crate) fn release_unreliable(&mut self, len: usize) {
        self.progress += len as u64;
        self.release(len + MESSAGE_COST, 1);
    }

    fn release(&mut self, bytes: usize, msgs: u64) {
        self.released_bytes += bytes;
        self.released_messages += msgs as usize;
        self.held_bytes = self.held_bytes.saturating_sub(bytes as u64);
        self.messages_in_flight -= msgs;
    }

    /// Marks a chunk acknowledged, freeing its message once every chunk is.
    pub(crate) fn ack_chunk(&mut self, c: &ChunkRef) {
        let Some(out) = self.space_mut(c.space) else {
            return;
        };
        let (newly, done) = out.ack(c);
        self.progress += newly;
        if let Some(bytes) = done {
            self.progress += MESSAGE_COST as u64;
            let Some(out) = self.space_mut(c.space) else {
                return;
            };
            let unblocked = out.has_new();
            self.release(bytes, 1);
            if unblocked {
                // The window may have opened: give the space a turn again.
                self.schedule(c.space);
            }
        }
    }

    pub(crate) fn take_chunk_vec(&mut self) -> Vec<ChunkRef> {
        self.spare_chunk_vecs.pop().unwrap_or_default()
    }

    pub(crate) fn recycle_chunk_vec(&mut self, mut v: Vec<ChunkRef>) {
        if self.spare_chunk_vecs.len() < 64 {
            v.clear();
            self.spare_chunk_vecs.push(v);
        }
    }
}
