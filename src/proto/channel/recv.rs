//! The receiving half of a channel: ordering, duplicate suppression, reassembly of chunked
//! messages and flow-control accounting.
//!
//! (A little over the ~600-line budget: the three receive paths share their accounting and
//! read best beside it; its tests are in `recv/tests.rs`.)
//!
//! Memory is bounded, and what is held is what is counted:
//!
//! * reliable data waiting here (out of order, or partly reassembled) is covered by the
//!   flow-control credit we advertise, charged per chunk as its bytes plus [`CHUNK_COST`] (both
//!   peers count credit alike: it is part of the protocol);
//! * what the held data costs in memory is counted apart, as it really is (the table entry of
//!   every held message, the reassembly's buffers at their capacity, every allocation's
//!   overhead): that is what [`Credit::memory`] reports and the endpoint's memory bounds use,
//!   within 1.5× of the process's measured growth for every shape of held data;
//! * anything kept beyond the pass that received it is copied out of its datagram (a 1-byte
//!   chunk never keeps a 1,200-byte datagram alive); only messages handed to the application at
//!   once share their datagram's copy, and small ones a per-thread block of 1 KiB;
//! * each reliable space holds at most [`MAX_STREAM_WINDOW`] messages past its first missing one;
//! * partial unreliable messages share a budget of `max_message` bytes and
//!   [`MAX_UNRELIABLE_PARTIALS`] messages, the oldest evicted first.
//!
//! Chunks are addressed by index: every chunk but the last has the same length (at least
//! [`MIN_CHUNK`] bytes), the last is no longer, none is empty, and `count` must fit
//! `max_message`; anything else is a [`ProtocolViolation::BadMessage`]. A chunk costs O(1)
//! whatever the arrival order: in-order chunks are appended to the message, early ones wait in a
//! table by index until the gap before them closes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};

use super::send::CHUNK_COST;
use super::seq;
use crate::proto::config::MAX_STREAM_WINDOW;
use crate::proto::error::ProtocolViolation;

/// Every this many messages on one reliable space, packets older than the largest packet
/// number seen one such period earlier are dropped as stale. This keeps a datagram that the
/// network held back for very long from being misread against wrapped 16-bit message numbers
/// (see `RecvReliable::advance`).
const STALE_PERIOD: u64 = 8192;
/// Partial unreliable messages kept at once.
pub(crate) const MAX_UNRELIABLE_PARTIALS: usize = 32;
/// The shortest chunk a sender may cut (all but the last chunk of a message have this length
/// or more): what the smallest allowed datagram (256 bytes) leaves after its headers. It bounds
/// how many chunks a message of `max_message` bytes may claim.
pub const MIN_CHUNK: usize = 256 - 48;

/// A received datagram, copied into a shared buffer only when a second message needs it.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub(crate) data: &'a [u8],
    shared: Option<Bytes>,
    handed_out: bool,
}

impl<'a> Datagram<'a> {
    /// Wraps a received datagram.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, shared: None, handed_out: false }
    }

    /// An owned copy of `part`, a sub-slice of this datagram, for a message delivered now. The
    /// first message is copied alone (one allocation); later ones share one copy of the whole
    /// datagram.
    pub(crate) fn bytes(&mut self, part: &[u8]) -> Bytes {
        let offset = (part.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
        if offset > self.data.len() || offset + part.len() > self.data.len() {
            return copy(part);
        }
        if !self.handed_out {
            self.handed_out = true;
            return copy(part);
        }
        let shared = self.shared.get_or_insert_with(|| copy(self.data));
        shared.slice(offset..offset + part.len())
    }
}

/// Copies of at most this many bytes for messages delivered at once are carved from a block
/// shared by this thread's recent small copies, instead of one allocation each.
const SMALL_COPY: usize = 128;
/// The size of such a block. A delivered message the application keeps pins at most one block,
/// less than the whole datagram (up to `max_datagram_size`, 1,200 bytes by default) a kept
/// message could pin through its datagram's shared copy anyway.
const COPY_BLOCK: usize = 1024;

thread_local! {
    /// The rest of the block the last small copy came from.
    static COPY_BLOCK_REST: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// An owned copy of `data` for a message delivered now: small copies share a block (one
/// allocation per block of [`COPY_BLOCK`] bytes, not one per message), larger ones are exact.
fn copy(data: &[u8]) -> Bytes {
    if data.is_empty() || data.len() > SMALL_COPY {
        return Bytes::copy_from_slice(data);
    }
    COPY_BLOCK_REST.with(|rest| {
        let mut rest = rest.borrow_mut();
        if rest.capacity() < data.len() {
            *rest = BytesMut::with_capacity(COPY_BLOCK);
        }
        rest.extend_from_slice(data);
        rest.split().freeze()
    })
}

/// What one allocation costs beyond the bytes asked for (the allocator's header and rounding).
const ALLOC_OVERHEAD: u64 = 32;
/// What one entry of a reliable space's table of held messages costs (its key and slot, and
/// its share of the tree's nodes, which ascending inserts leave about half full).
const SLOT_MEMORY: u64 = 2 * (8 + std::mem::size_of::<Slot>() as u64);
/// What one early chunk waiting in a reassembly's table costs beyond its bytes (its entry, at
/// the table's worst load, and its own allocation).
const AHEAD_MEMORY: u64 = 2 * (std::mem::size_of::<(u32, Box<[u8]>)>() as u64 + 1) + ALLOC_OVERHEAD;

/// The chunks of one message received so far. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct Reassembly {
    count: u32,
    /// The length of every chunk but the last; 0 until one of them arrived.
    chunk_len: u32,
    /// The last chunk's length; 0 until it arrived.
    last_len: u32,
    /// Chunks `0..next`, concatenated.
    head: Vec<u8>,
    next: u32,
    /// Chunks past `next` that arrived early, each its own copy, by index.
    ahead: HashMap<u32, Box<[u8]>>,
    received: u32,
    /// Payload bytes received.
    bytes: usize,
}

impl Reassembly {
    /// A message announced as `count` chunks; a violation if they cannot fit `max` bytes.
    fn new(count: u32, max: usize) -> Result<Self, ProtocolViolation> {
        // The smallest message of `count` chunks: `count - 1` chunks of MIN_CHUNK and 1 byte.
        let smallest = (count as usize).saturating_sub(1).saturating_mul(MIN_CHUNK) + 1;
        if count < 2 || smallest > max {
            return Err(ProtocolViolation::BadMessage);
        }
        Ok(Self {
            count,
            chunk_len: 0,
            last_len: 0,
            head: Vec::new(),
            next: 0,
            ahead: HashMap::new(),
            received: 0,
            bytes: 0,
        })
    }

    /// Adds chunk `index` of `count`. `Ok(false)` if it was a duplicate.
    fn add(
        &mut self,
        index: u32,
        count: u32,
        data: &[u8],
        max: usize,
    ) -> Result<bool, ProtocolViolation> {
        let len = data.len();
        if count != self.count || index >= count || len == 0 || len > u32::MAX as usize {
            return Err(ProtocolViolation::BadMessage);
        }
        let len32 = len as u32;
        if index + 1 < count {
            if len < MIN_CHUNK {
                return Err(ProtocolViolation::BadMessage);
            }
            if self.chunk_len == 0 {
                let total =
                    (count as usize - 1).saturating_mul(len) + self.last_len.max(1) as usize;
                if total > max || self.last_len > len32 {
                    return Err(ProtocolViolation::BadMessage);
                }
                self.chunk_len = len32;
            } else if len32 != self.chunk_len {
                return Err(ProtocolViolation::BadMessage);
            }
        } else {
            if self.chunk_len != 0 && len32 > self.chunk_len {
                return Err(ProtocolViolation::BadMessage);
            }
            if self.last_len != 0 && self.last_len != len32 {
                return Err(ProtocolViolation::BadMessage);
            }
        }
        if index < self.next || self.ahead.contains_key(&index) {
            return Ok(false);
        }
        if self.bytes + len > max {
            return Err(ProtocolViolation::BadMessage);
        }
        if index + 1 == count {
            self.last_len = len32;
        }
        self.bytes += len;
        self.received += 1;
        if index == self.next {
            self.head.extend_from_slice(data);
            self.next += 1;
            while let Some(c) = self.ahead.remove(&self.next) {
                self.head.extend_from_slice(&c);
                self.next += 1;
            }
        } else {
            self.ahead.insert(index, data.into());
        }
        Ok(true)
    }

    fn is_complete(&self) -> bool {
        self.next == self.count
    }

    /// Its flow-control cost so far.
    fn cost(&self) -> u64 {
        self.bytes as u64 + u64::from(self.received) * CHUNK_COST
    }

    /// What it holds in memory now (itself, boxed; its head at its capacity; its early chunks).
    fn memory(&self) -> u64 {
        let ahead_bytes = (self.bytes - self.head.len()) as u64;
        std::mem::size_of::<Self>() as u64
            + 2 * ALLOC_OVERHEAD
            + self.head.capacity() as u64
            + ahead_bytes
            + self.ahead.capacity() as u64 * AHEAD_MEMORY
    }

    fn assemble(mut self) -> Bytes {
        // Its buffer grew by doubling: a message that waits holds no more than its bytes.
        if self.head.capacity() - self.head.len() > 64 {
            self.head.shrink_to_fit();
        }
        Bytes::from(self.head)
    }
}

/// Where a received message stands.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Some chunks arrived (boxed: a slot is then small, and most slots are messages).
    Partial(Box<Reassembly>),
    /// Complete (its own copy), waiting for an earlier message (ordered spaces), with its
    /// flow-control cost.
    Complete(Bytes, u64),
    /// Delivered out of order (unordered space): remembered to drop duplicates.
    Delivered,
}

/// One received chunk (or whole message) handed to a reliable space.
#[derive(Debug)]
pub(crate) struct InChunk<'a> {
    pub(crate) seq16: u64,
    pub(crate) chunk: Option<(u32, u32)>,
    pub(crate) data: &'a [u8],
}

/// Flow-control accounting shared by the reliable spaces of one connection.
#[derive(Debug)]
pub(crate) struct Credit {
    /// Cost of every chunk received once (never decreases).
    pub(crate) charged: u64,
    /// Cost of every chunk of every message delivered (never decreases).
    pub(crate) released: u64,
    pub(crate) window: u64,
    /// The largest limit advertised so far: `released + window` at that time.
    pub(crate) advertised: u64,
    /// What the held data costs in memory (see the module docs), across the reliable spaces.
    pub(crate) memory: u64,
}

impl Credit {
    pub(crate) fn new(window: u64) -> Self {
        Self { charged: 0, released: 0, window, advertised: window, memory: 0 }
    }

    /// The limit we would advertise now.
    pub(crate) fn limit(&self) -> u64 {
        self.released + self.window
    }

    /// Reliable bytes (with their per-chunk cost) held here and not yet delivered.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn held(&self) -> u64 {
        self.charged - self.released
    }

    /// What the reliable data held costs in memory.
    pub(crate) fn memory(&self) -> u64 {
        self.memory
    }

    fn charge(&mut self, len: usize) -> Result<u64, ProtocolViolation> {
        let cost = len as u64 + CHUNK_COST;
        self.charged += cost;
        if self.charged > self.advertised {
            return Err(ProtocolViolation::CreditExceeded);
        }
        Ok(cost)
    }
}

/// A reliable space's receive state.
#[derive(Debug)]
pub(crate) struct RecvReliable {
    ordered: bool,
    /// Ordered: the next message to deliver. Unordered: the lowest not yet delivered.
    expected: u64,
    slots: BTreeMap<u64, Slot>,
    seq_mark: u64,
    pn_mark: u64,
}

/// What a reliable space did with a chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// New data, accepted.
    Accepted,
    /// Already had it.
    Duplicate,
}

/// A message that became whole: still in its datagram (a whole message in one frame), or
/// reassembled into its own buffer.
enum Whole<'a> {
    InDatagram(&'a [u8]),
    Owned(Bytes),
}

impl RecvReliable {
    pub(crate) fn new(ordered: bool) -> Self {
        Self { ordered, expected: 0, slots: BTreeMap::new(), seq_mark: 0, pn_mark: 0 }
    }

    /// Takes one chunk of `datagram`; delivers every message it completes (in order, for
    /// ordered spaces) through `deliver`. `max_message` bounds a reassembled message. Returns a
    /// new stale floor for packet numbers when a period passed (see [`STALE_PERIOD`]).
    pub(crate) fn on_chunk(
        &mut self,
        c: InChunk<'_>,
        datagram: &mut Datagram<'_>,
        largest_pn: u64,
        max_message: usize,
        credit: &mut Credit,
        deliver: &mut impl FnMut(Bytes),
    ) -> Result<(Outcome, Option<u64>), ProtocolViolation> {
        let seq = seq::expand(self.expected, c.seq16, 16);
        if seq < self.expected {
            return Ok((Outcome::Duplicate, None));
        }
        if seq >= self.expected + u64::from(MAX_STREAM_WINDOW) {
            return Err(ProtocolViolation::WindowExceeded);
        }
        let len = c.data.len();
        let (whole, cost) = match (self.slots.get_mut(&seq), c.chunk) {
            (Some(Slot::Complete(..) | Slot::Delivered), _) => {
                return Ok((Outcome::Duplicate, None));
            }
            (Some(Slot::Partial(_)), None) => return Err(ProtocolViolation::BadMessage),
            (None, None) => {
                if len > max_message {
                    return Err(ProtocolViolation::BadMessage);
                }
                (Whole::InDatagram(c.data), credit.charge(len)?)
            }
            (Some(Slot::Partial(r)), Some((index, count))) => {
                let before = r.memory();
                if !r.add(index, count, c.data, max_message)? {
                    return Ok((Outcome::Duplicate, None));
                }
                credit.memory = credit.memory - before + r.memory();
                credit.charge(len)?;
                if !r.is_complete() {
                    return Ok((Outcome::Accepted, None));
                }
                let Some(Slot::Partial(r)) = self.slots.remove(&seq) else {
                    unreachable!("matched Partial above")
                };
                credit.memory -= r.memory() + SLOT_MEMORY;
                let cost = r.cost();
                (Whole::Owned(r.assemble()), cost)
            }
            (None, Some((index, count))) => {
                let mut r = Box::new(Reassembly::new(count, max_message)?);
                r.add(index, count, c.data, max_message)?;
                credit.charge(len)?;
                credit.memory += r.memory() + SLOT_MEMORY;
                self.slots.insert(seq, Slot::Partial(r));
                return Ok((Outcome::Accepted, None));
            }
        };
        let floor = self.complete(seq, whole, cost, datagram, largest_pn, credit, deliver);
        Ok((Outcome::Accepted, floor))
    }

    /// A message is whole: deliver it now or park it (its own copy) until its turn.
    #[allow(clippy::too_many_arguments)] // the message and where its bytes and credit go
    fn complete(
        &mut self,
        seq: u64,
        whole: Whole<'_>,
        cost: u64,
        datagram: &mut Datagram<'_>,
        largest_pn: u64,
        credit: &mut Credit,
        deliver: &mut impl FnMut(Bytes),
    ) -> Option<u64> {
        if self.ordered && seq != self.expected {
            let owned = match whole {
                Whole::InDatagram(d) => Bytes::copy_from_slice(d),
                Whole::Owned(b) => b,
            };
            credit.memory += held_memory(&owned);
            self.slots.insert(seq, Slot::Complete(owned, cost));
            return None;
        }
        credit.released += cost;
        deliver(match whole {
            Whole::InDatagram(d) => datagram.bytes(d),
            Whole::Owned(b) => b,
        });
        if seq != self.expected {
            // Unordered, ahead of the first gap: remember it to drop duplicates.
            credit.memory += SLOT_MEMORY;
            self.slots.insert(seq, Slot::Delivered);
            return None;
        }
        self.expected += 1;
        // Release whatever this unblocked.
        loop {
            match self.slots.first_entry() {
                Some(e) if *e.key() == self.expected => match e.get() {
                    Slot::Partial(_) => break,
                    Slot::Delivered => {
                        e.remove();
                        credit.memory -= SLOT_MEMORY;
                    }
                    Slot::Complete(..) => {
                        if let Slot::Complete(m, cost) = e.remove() {
                            credit.released += cost;
                            credit.memory -= held_memory(&m);
                            deliver(m);
                        }
                    }
                },
                _ => break,
            }
            self.expected += 1;
        }
        self.advance(largest_pn)
    }

    /// Every [`STALE_PERIOD`] messages, packets numbered below the largest seen one period
    /// earlier become stale. Why that suffices: a packet numbered above that mark was sent
    /// after the packet that carried (at least) message `E₁ − 1`, where `E₁` was the first
    /// missing message one period ago, so every message of this space it carries is at least
    /// `E₁ − MAX_STREAM_WINDOW` (the sender never runs further ahead of its acks). And
    /// `expected` is below `E₁ + 2·STALE_PERIOD` until the next period. So any message number
    /// such a packet carries lies within `2·STALE_PERIOD + MAX_STREAM_WINDOW < 2^15` of
    /// `expected`, where the 16-bit expansion is exact; older packets are dropped unread.
    fn advance(&mut self, largest_pn: u64) -> Option<u64> {
        if self.expected < self.seq_mark + STALE_PERIOD {
            return None;
        }
        let floor = self.pn_mark;
        self.pn_mark = largest_pn;
        self.seq_mark = self.expected;
        Some(floor)
    }

    /// Messages buffered or partly received.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.slots.len()
    }
}

/// What a complete message waiting for its turn costs in memory: its own copy and its entry.
fn held_memory(m: &Bytes) -> u64 {
    m.len() as u64 + ALLOC_OVERHEAD + SLOT_MEMORY
}

/// Receive state of the unreliable classes: latest sequence per sequenced stream and partial
/// chunked messages.
#[derive(Debug, Default)]
pub(crate) struct RecvUnreliable {
    /// Next acceptable sequence number per sequenced stream (one past the latest delivered).
    sequenced_next: Vec<u64>,
    /// Partial messages keyed by (is sequenced, stream, id), oldest id first.
    partials: BTreeMap<(bool, u8, u64), Reassembly>,
    /// Their cost: bytes plus [`CHUNK_COST`] per chunk.
    partial_cost: u64,
    /// What they hold in memory (see the module docs).
    partial_memory: u64,
}

/// What one partial unreliable message's table entry costs beyond what its reassembly holds.
const PARTIAL_ENTRY: u64 = 2 * 24;

/// What a partial unreliable message costs in memory.
fn partial_memory(r: &Reassembly) -> u64 {
    r.memory() + PARTIAL_ENTRY
}

impl RecvUnreliable {
    /// Takes an unreliable or sequenced message frame of `datagram`. Returns the message if it
    /// is whole and should be delivered.
    #[allow(clippy::too_many_arguments)] // one frame's fields, passed apart to avoid a struct copy
    pub(crate) fn on_frame(
        &mut self,
        sequenced: bool,
        stream: u8,
        seq: u64,
        chunk: Option<(u32, u32)>,
        data: &[u8],
        datagram: &mut Datagram<'_>,
        max_message: usize,
    ) -> Result<Option<Bytes>, ProtocolViolation> {
        if sequenced && seq < self.sequenced_next.get(stream as usize).copied().unwrap_or(0) {
            return Ok(None); // older than what was delivered: latest wins
        }
        if sequenced && seq == u64::MAX {
            // No number follows it, so "latest wins" could not hold: no sender gets there.
            return Err(ProtocolViolation::BadMessage);
        }
        let msg = match chunk {
            None => {
                if data.len() > max_message {
                    return Err(ProtocolViolation::BadMessage);
                }
                datagram.bytes(data)
            }
            Some((index, count)) => {
                let key = (sequenced, stream, seq);
                let (r, memory_before) = match self.partials.entry(key) {
                    std::collections::btree_map::Entry::Occupied(e) => {
                        let r = e.into_mut();
                        let m = partial_memory(r);
                        (r, m)
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        (e.insert(Reassembly::new(count, max_message)?), 0)
                    }
                };
                let before = r.cost();
                let added = r.add(index, count, data, max_message);
                self.partial_memory = self.partial_memory - memory_before + partial_memory(r);
                let added = added?;
                self.partial_cost += r.cost() - before;
                if !added {
                    return Ok(None);
                }
                if !r.is_complete() {
                    self.evict(max_message);
                    return Ok(None);
                }
                let Some(r) = self.partials.remove(&key) else {
                    return Ok(None);
                };
                self.partial_cost -= r.cost();
                self.partial_memory -= partial_memory(&r);
                r.assemble()
            }
        };
        if sequenced {
            let s = stream as usize;
            if self.sequenced_next.len() <= s {
                self.sequenced_next.resize(s + 1, 0);
            }
            self.sequenced_next[s] = seq + 1;
            // Older partials on this stream can never be delivered now.
            while let Some((&k, _)) =
                self.partials.range((true, stream, 0)..(true, stream, seq)).next()
            {
                if let Some(r) = self.partials.remove(&k) {
                    self.partial_cost -= r.cost();
                    self.partial_memory -= partial_memory(&r);
                }
            }
        }
        Ok(Some(msg))
    }

    /// Drops the oldest partial messages while over budget: [`MAX_UNRELIABLE_PARTIALS`]
    /// messages, and twice `max_message` of cost (a whole message of `max_message` bytes fits
    /// with its per-chunk cost).
    fn evict(&mut self, max_message: usize) {
        while self.partials.len() > MAX_UNRELIABLE_PARTIALS
            || self.partial_cost > 2 * max_message as u64
        {
            let Some((_, r)) = self.partials.pop_first() else {
                break;
            };
            self.partial_cost -= r.cost();
            self.partial_memory -= partial_memory(&r);
        }
    }

    /// What partial messages hold now (bytes plus per-chunk cost).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn held(&self) -> u64 {
        self.partial_cost
    }

    /// What partial messages hold in memory now (see the module docs).
    pub(crate) fn memory(&self) -> u64 {
        self.partial_memory
    }
}

#[cfg(test)]
mod tests;
