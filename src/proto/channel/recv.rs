//! The receiving half of a channel: ordering, duplicate suppression, reassembly of chunked
//! messages and flow-control accounting.
//!
//! Memory is bounded three ways: reliable data waiting here (out of order, or partly
//! reassembled) is covered by the flow-control credit we advertise, each reliable space holds
//! at most [`MAX_STREAM_WINDOW`] messages past its first missing one, and partial unreliable
//! messages share a small budget with the oldest evicted first.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::send::CHUNK_COST;
use super::seq;
use crate::config::MAX_STREAM_WINDOW;
use crate::error::ProtocolViolation;

/// Every this many messages on one reliable space, packets older than the largest packet
/// number seen one such period earlier are dropped as stale. This keeps a datagram that the
/// network held back for very long from being misread against wrapped 16-bit message numbers
/// (see `RecvReliable::advance`).
const STALE_PERIOD: u64 = 8192;
/// Partial unreliable messages kept at once.
const MAX_UNRELIABLE_PARTIALS: usize = 32;

/// Chunks of one message received so far, sorted by index.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    count: u32,
    chunks: Vec<(u32, Bytes)>,
    bytes: usize,
}

impl Reassembly {
    fn new(count: u32) -> Self {
        Self { count, chunks: Vec::new(), bytes: 0 }
    }

    /// Adds a chunk. `Ok(false)` if it was a duplicate.
    fn add(
        &mut self,
        index: u32,
        count: u32,
        data: Bytes,
        max: usize,
    ) -> Result<bool, ProtocolViolation> {
        if count != self.count || self.bytes + data.len() > max {
            return Err(ProtocolViolation::BadMessage);
        }
        match self.chunks.binary_search_by_key(&index, |c| c.0) {
            Ok(_) => Ok(false),
            Err(pos) => {
                self.bytes += data.len();
                self.chunks.insert(pos, (index, data));
                Ok(true)
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.chunks.len() == self.count as usize
    }

    fn assemble(self) -> Bytes {
        let mut out = Vec::with_capacity(self.bytes);
        for (_, c) in &self.chunks {
            out.extend_from_slice(c);
        }
        Bytes::from(out)
    }
}

/// Where a received message frame stands.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Some chunks arrived.
    Partial(Reassembly),
    /// Complete, waiting for an earlier message (ordered spaces).
    Complete(Bytes),
    /// Delivered out of order (unordered space): remembered to drop duplicates.
    Delivered,
}

/// One received chunk (or whole message) handed to a reliable space.
#[derive(Debug)]
pub(crate) struct InChunk {
    pub(crate) seq16: u64,
    pub(crate) chunk: Option<(u32, u32)>,
    pub(crate) data: Bytes,
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
}

impl Credit {
    pub(crate) fn new(window: u64) -> Self {
        Self { charged: 0, released: 0, window, advertised: window }
    }

    /// The limit we would advertise now.
    pub(crate) fn limit(&self) -> u64 {
        self.released + self.window
    }

    fn charge(&mut self, len: usize) -> Result<(), ProtocolViolation> {
        self.charged += len as u64 + CHUNK_COST;
        if self.charged > self.advertised {
            return Err(ProtocolViolation::CreditExceeded);
        }
        Ok(())
    }
}

/// A reliable space's receive state.
#[derive(Debug)]
pub(crate) struct RecvReliable {
    ordered: bool,
    /// Ordered: the next message to deliver. Unordered: the lowest not yet delivered.
    expected: u64,
    slots: BTreeMap<u64, Slot>,
    /// Credit cost of each partial or buffered message, to release it on delivery.
    costs: BTreeMap<u64, u64>,
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

impl RecvReliable {
    pub(crate) fn new(ordered: bool) -> Self {
        Self {
            ordered,
            expected: 0,
            slots: BTreeMap::new(),
            costs: BTreeMap::new(),
            seq_mark: 0,
            pn_mark: 0,
        }
    }

    /// Takes one chunk; delivers every message it completes (in order, for ordered spaces)
    /// through `deliver`. `max_message` bounds a reassembled message. Returns a new stale floor
    /// for packet numbers when a period passed (see [`STALE_PERIOD`]).
    pub(crate) fn on_chunk(
        &mut self,
        c: InChunk,
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
        let complete = match (self.slots.get_mut(&seq), c.chunk) {
            (Some(Slot::Complete(_) | Slot::Delivered), _) => {
                return Ok((Outcome::Duplicate, None));
            }
            (Some(Slot::Partial(_)), None) | (None, None) if len > max_message => {
                return Err(ProtocolViolation::BadMessage);
            }
            (Some(Slot::Partial(_)), None) => return Err(ProtocolViolation::BadMessage),
            (Some(Slot::Partial(r)), Some((index, count))) => {
                if !r.add(index, count, c.data, max_message)? {
                    return Ok((Outcome::Duplicate, None));
                }
                credit.charge(len)?;
                *self.costs.entry(seq).or_default() += len as u64 + CHUNK_COST;
                if !r.is_complete() {
                    return Ok((Outcome::Accepted, None));
                }
                let Some(Slot::Partial(r)) = self.slots.remove(&seq) else {
                    unreachable!("matched Partial above")
                };
                r.assemble()
            }
            (None, Some((index, count))) => {
                let mut r = Reassembly::new(count);
                r.add(index, count, c.data, max_message)?;
                credit.charge(len)?;
                self.costs.insert(seq, len as u64 + CHUNK_COST);
                self.slots.insert(seq, Slot::Partial(r));
                return Ok((Outcome::Accepted, None));
            }
            (None, None) => {
                credit.charge(len)?;
                self.costs.insert(seq, len as u64 + CHUNK_COST);
                c.data
            }
        };
        Ok((Outcome::Accepted, self.complete(seq, complete, largest_pn, credit, deliver)))
    }

    /// A message is whole: deliver it now or park it until its turn.
    fn complete(
        &mut self,
        seq: u64,
        msg: Bytes,
        largest_pn: u64,
        credit: &mut Credit,
        deliver: &mut impl FnMut(Bytes),
    ) -> Option<u64> {
        if self.ordered && seq != self.expected {
            self.slots.insert(seq, Slot::Complete(msg));
            return None;
        }
        credit.released += self.costs.remove(&seq).unwrap_or(0);
        deliver(msg);
        if seq != self.expected {
            // Unordered, ahead of the first gap: remember it to drop duplicates.
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
                    }
                    Slot::Complete(_) => {
                        let (s, slot) = e.remove_entry();
                        if let Slot::Complete(m) = slot {
                            credit.released += self.costs.remove(&s).unwrap_or(0);
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

/// Receive state of the unreliable classes: latest sequence per sequenced stream and partial
/// chunked messages.
#[derive(Debug, Default)]
pub(crate) struct RecvUnreliable {
    /// Next acceptable sequence number per sequenced stream (one past the latest delivered).
    sequenced_next: Vec<u64>,
    /// Partial messages keyed by (is sequenced, stream, id), oldest id first.
    partials: BTreeMap<(bool, u8, u64), Reassembly>,
    partial_bytes: usize,
}

impl RecvUnreliable {
    /// Takes an unreliable or sequenced message frame. Returns the message if it is whole and
    /// should be delivered.
    pub(crate) fn on_frame(
        &mut self,
        sequenced: bool,
        stream: u8,
        seq: u64,
        chunk: Option<(u32, u32)>,
        data: Bytes,
        max_message: usize,
    ) -> Result<Option<Bytes>, ProtocolViolation> {
        if sequenced && seq < self.sequenced_next.get(stream as usize).copied().unwrap_or(0) {
            return Ok(None); // older than what was delivered: latest wins
        }
        let msg = match chunk {
            None => {
                if data.len() > max_message {
                    return Err(ProtocolViolation::BadMessage);
                }
                data
            }
            Some((index, count)) => {
                let key = (sequenced, stream, seq);
                let len = data.len();
                let r = self.partials.entry(key).or_insert_with(|| Reassembly::new(count));
                if !r.add(index, count, data, max_message)? {
                    return Ok(None);
                }
                self.partial_bytes += len;
                if !self.partials.get(&key).is_some_and(Reassembly::is_complete) {
                    self.evict(max_message);
                    return Ok(None);
                }
                let Some(r) = self.partials.remove(&key) else {
                    return Ok(None);
                };
                self.partial_bytes -= r.bytes;
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
            let stale: Vec<_> = self
                .partials
                .range((true, stream, 0)..(true, stream, seq))
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                if let Some(r) = self.partials.remove(&k) {
                    self.partial_bytes -= r.bytes;
                }
            }
        }
        Ok(Some(msg))
    }

    /// Drops the oldest partial messages while over budget.
    fn evict(&mut self, max_message: usize) {
        while self.partials.len() > MAX_UNRELIABLE_PARTIALS || self.partial_bytes > max_message {
            let Some((_, r)) = self.partials.pop_first() else {
                break;
            };
            self.partial_bytes -= r.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, chunk: Option<(u32, u32)>, data: &'static [u8]) -> InChunk {
        InChunk { seq16: seq & 0xffff, chunk, data: Bytes::from_static(data) }
    }

    fn feed(r: &mut RecvReliable, credit: &mut Credit, c: InChunk) -> (Outcome, Vec<Bytes>) {
        let mut out = Vec::new();
        let (o, _) = r.on_chunk(c, 0, 1 << 20, credit, &mut |m| out.push(m)).unwrap();
        (o, out)
    }

    #[test]
    fn ordered_buffers_until_the_gap_fills() {
        let mut r = RecvReliable::new(true);
        let mut credit = Credit::new(1 << 20);
        assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).1, Vec::<Bytes>::new());
        assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).1.len(), 0);
        assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).0, Outcome::Duplicate);
        let (_, got) = feed(&mut r, &mut credit, chunk(0, None, b"a"));
        assert_eq!(got, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(feed(&mut r, &mut credit, chunk(0, None, b"a")).0, Outcome::Duplicate);
        assert_eq!(r.buffered(), 0);
        assert_eq!(credit.charged, credit.released, "all delivered, all credit back");
    }

    #[test]
    fn unordered_delivers_at_once_exactly_once() {
        let mut r = RecvReliable::new(false);
        let mut credit = Credit::new(1 << 20);
        assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).1, vec![&b"c"[..]]);
        assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).0, Outcome::Duplicate);
        assert_eq!(feed(&mut r, &mut credit, chunk(0, None, b"a")).1, vec![&b"a"[..]]);
        assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).1, vec![&b"b"[..]]);
        assert_eq!(r.buffered(), 0, "markers released once the gap closed");
        assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).0, Outcome::Duplicate);
    }

    #[test]
    fn chunks_reassemble_in_index_order_whatever_the_arrival_order() {
        let mut r = RecvReliable::new(true);
        let mut credit = Credit::new(1 << 20);
        assert!(feed(&mut r, &mut credit, chunk(0, Some((2, 3)), b"ef")).1.is_empty());
        assert!(feed(&mut r, &mut credit, chunk(0, Some((0, 3)), b"ab")).1.is_empty());
        assert_eq!(feed(&mut r, &mut credit, chunk(0, Some((0, 3)), b"ab")).0, Outcome::Duplicate);
        assert_eq!(
            feed(&mut r, &mut credit, chunk(0, Some((1, 3)), b"cd")).1,
            vec![&b"abcdef"[..]]
        );
        assert_eq!(credit.charged, credit.released);
    }

    #[test]
    fn violations_are_typed() {
        let mut r = RecvReliable::new(true);
        let mut credit = Credit::new(1 << 20);
        let mut sink = |_| {};
        let far = chunk(u64::from(MAX_STREAM_WINDOW), None, b"x");
        assert_eq!(
            r.on_chunk(far, 0, 100, &mut credit, &mut sink).unwrap_err(),
            ProtocolViolation::WindowExceeded
        );
        r.on_chunk(chunk(1, Some((0, 2)), b"x"), 0, 100, &mut credit, &mut sink).unwrap();
        let wrong_count = chunk(1, Some((1, 3)), b"x");
        assert_eq!(
            r.on_chunk(wrong_count, 0, 100, &mut credit, &mut sink).unwrap_err(),
            ProtocolViolation::BadMessage
        );
        let too_big = chunk(2, None, &[0; 200]);
        assert_eq!(
            r.on_chunk(too_big, 0, 100, &mut credit, &mut sink).unwrap_err(),
            ProtocolViolation::BadMessage
        );
        let mut tight = Credit::new(100);
        let mut r = RecvReliable::new(true);
        let big = chunk(5, None, &[0; 50]);
        assert_eq!(
            r.on_chunk(big, 0, 1000, &mut tight, &mut sink).unwrap_err(),
            ProtocolViolation::CreditExceeded
        );
    }

    #[test]
    fn stale_floor_rises_every_period() {
        let mut r = RecvReliable::new(false);
        let mut credit = Credit::new(u64::MAX / 2);
        let mut floors = Vec::new();
        for i in 0..(3 * STALE_PERIOD) {
            let c = chunk(i, None, b"x");
            let (_, f) = r.on_chunk(c, 1000 + i, 10, &mut credit, &mut |_| {}).unwrap();
            floors.extend(f);
        }
        assert_eq!(floors, vec![0, 1000 + STALE_PERIOD - 1, 1000 + 2 * STALE_PERIOD - 1]);
    }

    #[test]
    fn sequenced_latest_wins_and_partials_are_bounded() {
        let mut u = RecvUnreliable::default();
        let d = |s: &'static [u8]| Bytes::from_static(s);
        assert_eq!(u.on_frame(true, 0, 5, None, d(b"5"), 100).unwrap(), Some(d(b"5")));
        assert_eq!(u.on_frame(true, 0, 3, None, d(b"3"), 100).unwrap(), None);
        assert_eq!(
            u.on_frame(true, 1, 3, None, d(b"3"), 100).unwrap(),
            Some(d(b"3")),
            "streams are independent"
        );
        assert_eq!(u.on_frame(true, 0, 6, Some((0, 2)), d(b"a"), 100).unwrap(), None);
        assert_eq!(u.on_frame(true, 0, 7, None, d(b"7"), 100).unwrap(), Some(d(b"7")));
        assert!(
            u.partials.is_empty(),
            "an older partial is dropped once a newer message is delivered"
        );
        for id in 0..100 {
            u.on_frame(false, 0, id, Some((0, 2)), d(b"x"), 100).unwrap();
        }
        assert_eq!(u.partials.len(), MAX_UNRELIABLE_PARTIALS);
        assert_eq!(u.on_frame(false, 0, 99, Some((1, 2)), d(b"y"), 100).unwrap(), Some(d(b"xy")));
    }
}
