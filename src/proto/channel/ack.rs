//! Which packet numbers we received, and when to acknowledge them.
//!
//! Received packet numbers are kept as a short list of ranges. They serve two purposes:
//! duplicate detection (a datagram the network duplicated is dropped whole, so even unreliable
//! messages are delivered at most once) and the `ACK` frames we send. Acks are delayed by at
//! most `max_ack_delay`, sent at once after `ack_frequency` ack-eliciting packets or on a gap,
//! and piggy-backed on every outgoing datagram until the peer has seen one of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::wire;

/// Ranges beyond this many are forgotten (their packets then count as duplicates).
const MAX_TRACKED_RANGES: usize = 32;
/// At most this many ranges go into one `ACK` frame (keeps it under ~100 bytes).
pub(crate) const MAX_REPORTED_RANGES: usize = 16;

#[derive(Debug)]
pub(crate) struct RecvPackets {
    /// Ascending, disjoint, non-adjacent inclusive ranges.
    ranges: VecDeque<(u64, u64)>,
    /// Packet numbers below this are treated as already received.
    floor: u64,
    /// Packet numbers below this need no more acknowledging: the peer saw an ack covering them.
    ack_floor: u64,
    largest_at: Option<(u64, Instant)>,
    /// The largest packet number that asked for an ack.
    largest_eliciting: Option<u64>,
    eliciting_unacked: u32,
    ack_deadline: Option<Instant>,
}

impl RecvPackets {
    pub(crate) fn new() -> Self {
        Self {
            ranges: VecDeque::new(),
            floor: 0,
            ack_floor: 0,
            largest_at: None,
            largest_eliciting: None,
            eliciting_unacked: 0,
            ack_deadline: None,
        }
    }

    pub(crate) fn largest(&self) -> Option<u64> {
        self.largest_at.map(|(pn, _)| pn)
    }

    /// Whether `pn` was already received (or is too old to tell).
    pub(crate) fn is_duplicate(&self, pn: u64) -> bool {
        pn < self.floor || self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&pn))
    }

    /// Records a packet that was not a duplicate and was processed whole.
    pub(crate) fn on_packet(
        &mut self,
        pn: u64,
        now: Instant,
        eliciting: bool,
        ack_frequency: u32,
        max_ack_delay: Duration,
    ) {
        let in_order = self.largest().is_none_or(|l| pn == l + 1);
        self.insert(pn);
        if self.largest().is_none_or(|l| pn > l) {
            self.largest_at = Some((pn, now));
        }
        if !eliciting {
            return;
        }
        self.largest_eliciting = Some(self.largest_eliciting.map_or(pn, |l| l.max(pn)));
        self.eliciting_unacked += 1;
        if !in_order || self.eliciting_unacked >= ack_frequency {
            // A gap (or a late arrival) is acknowledged at once so the sender can retransmit.
            self.ack_deadline = Some(now);
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + max_ack_delay);
        }
    }

    fn insert(&mut self, pn: u64) {
        // Find the first range whose high end is >= pn - 1 (most inserts touch the last range).
        let idx = self.ranges.iter().rposition(|&(_, hi)| hi + 1 < pn).map_or(0, |i| i + 1);
        match self.ranges.get_mut(idx) {
            Some(r) if r.0 <= pn + 1 => {
                r.0 = r.0.min(pn);
                r.1 = r.1.max(pn);
                // Merge with the next range if they now touch.
                if let Some(&(next_lo, next_hi)) = self.ranges.get(idx + 1)
                    && next_lo <= self.ranges[idx].1 + 1
                {
                    self.ranges[idx].1 = next_hi;
                    self.ranges.remove(idx + 1);
                }
            }
            _ => self.ranges.insert(idx, (pn, pn)),
        }
        while self.ranges.len() > MAX_TRACKED_RANGES {
            if let Some((_, hi)) = self.ranges.pop_front() {
                self.floor = self.floor.max(hi + 1);
            }
        }
    }

    /// Treats every packet number below `floor` as already received.
    pub(crate) fn raise_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        while let Some(&(lo, hi)) = self.ranges.front() {
            if hi < floor {
                self.ranges.pop_front();
            } else {
                self.ranges[0].0 = lo.max(floor);
                break;
            }
        }
    }

    /// When an ack must go out even if there is nothing else to send.
    pub(crate) fn ack_deadline(&self) -> Option<Instant> {
        self.ack_deadline
    }

    /// Whether an outgoing datagram should carry an `ACK` frame: some packet that asked for
    /// an ack is not known to have been acknowledged. (Packets that asked for none, such as
    /// the peer's own acks, are reported along but never cause an `ACK`.)
    pub(crate) fn has_unreported(&self) -> bool {
        self.largest_eliciting.is_some_and(|l| l >= self.ack_floor)
    }

    /// Writes an `ACK` frame of at most `budget` bytes (at least the newest range is always
    /// written) and returns the largest packet number it acknowledges. Changes no state: call
    /// [`Self::on_ack_sent`] once the datagram is committed.
    pub(crate) fn write_ack(&self, out: &mut Vec<u8>, now: Instant, budget: usize) -> Option<u64> {
        let (_, at) = self.largest_at?;
        let mut ranges = [(0u64, 0u64); MAX_REPORTED_RANGES];
        let mut n = 0;
        // type + largest + delay + count + first range, then ~2 varints per extra range.
        let mut size = 1 + 4 + 5 + 1;
        for &(lo, hi) in self.ranges.iter().rev() {
            if hi < self.ack_floor || n == MAX_REPORTED_RANGES {
                break;
            }
            let lo = lo.max(self.ack_floor);
            let cost = if n == 0 {
                wire::varint_len(hi - lo)
            } else {
                wire::varint_len(ranges[n - 1].0 - hi - 2) + wire::varint_len(hi - lo)
            };
            if n > 0 && size + cost > budget {
                break;
            }
            size += cost;
            ranges[n] = (lo, hi);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        // Capped so the field stays within 5 bytes.
        let delay = (now.saturating_duration_since(at).as_micros() as u64).min(u32::MAX as u64);
        wire::encode_ack(out, delay, &ranges[..n]);
        Some(ranges[0].1)
    }

    /// The datagram carrying our last `write_ack` was committed.
    pub(crate) fn on_ack_sent(&mut self) {
        self.eliciting_unacked = 0;
        self.ack_deadline = None;
    }

    /// Nothing to acknowledge after all (the ranges were pruned): forget the deadline.
    pub(crate) fn clear_ack_deadline(&mut self) {
        self.ack_deadline = None;
    }

    /// The peer received an `ACK` of ours whose largest was `largest`: stop reporting below it.
    pub(crate) fn on_ack_acked(&mut self, largest: u64) {
        self.ack_floor = self.ack_floor.max(largest + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Frame, FrameReader};

    const MS: Duration = Duration::from_millis(1);

    fn ranges(p: &RecvPackets) -> Vec<(u64, u64)> {
        p.ranges.iter().copied().collect()
    }

    #[test]
    fn merges_ranges_and_detects_duplicates() {
        let now = crate::test_epoch();
        let mut p = RecvPackets::new();
        for pn in [0, 1, 2, 5, 7, 6, 4, 10, 3] {
            assert!(!p.is_duplicate(pn));
            p.on_packet(pn, now, true, 2, MS);
        }
        assert_eq!(ranges(&p), vec![(0, 7), (10, 10)]);
        assert!(p.is_duplicate(6) && p.is_duplicate(10) && !p.is_duplicate(8));
        p.raise_floor(9);
        assert_eq!(ranges(&p), vec![(10, 10)]);
        assert!(p.is_duplicate(8) && !p.is_duplicate(11));
    }

    #[test]
    fn forgets_old_ranges_but_keeps_them_duplicates() {
        let now = crate::test_epoch();
        let mut p = RecvPackets::new();
        for i in 0..100 {
            p.on_packet(i * 2, now, false, 2, MS);
        }
        assert_eq!(p.ranges.len(), MAX_TRACKED_RANGES);
        assert!(p.is_duplicate(1), "forgotten packet numbers count as seen");
        assert!(!p.is_duplicate(199));
    }

    #[test]
    fn ack_scheduling() {
        let now = crate::test_epoch();
        let mut p = RecvPackets::new();
        p.on_packet(0, now, true, 2, 5 * MS);
        assert_eq!(p.ack_deadline(), Some(now + 5 * MS), "one packet: delayed ack");
        p.on_packet(1, now, true, 2, 5 * MS);
        assert_eq!(p.ack_deadline(), Some(now), "second packet: ack now");
        let mut out = Vec::new();
        assert_eq!(p.write_ack(&mut out, now + MS, 100), Some(1));
        assert_eq!(p.ack_deadline(), Some(now), "writing alone commits nothing");
        p.on_ack_sent();
        assert_eq!(p.ack_deadline(), None);
        p.on_packet(3, now, true, 10, 5 * MS);
        assert_eq!(p.ack_deadline(), Some(now), "a gap is acked at once");
        p.on_ack_sent();
        p.on_packet(4, now, false, 2, 5 * MS);
        assert_eq!(p.ack_deadline(), None, "non-eliciting packets never force an ack");
    }

    #[test]
    fn ack_of_ack_stops_reporting() {
        let now = crate::test_epoch();
        let mut p = RecvPackets::new();
        for pn in [0, 1, 3] {
            p.on_packet(pn, now, true, 2, MS);
        }
        p.on_packet(4, now, false, 2, MS);
        let mut out = Vec::new();
        p.write_ack(&mut out, now, 100);
        let Some(Ok(Frame::Ack(a))) = FrameReader::new(&out).next() else { panic!() };
        let r: Vec<_> = a.ranges(4).map(Result::unwrap).collect();
        assert_eq!(r, vec![(3, 4), (0, 1)]);
        assert!(p.has_unreported());
        p.on_ack_acked(4);
        assert!(!p.has_unreported());
        p.on_packet(5, now, false, 2, MS);
        assert!(!p.has_unreported(), "a packet asking for no ack does not make one due");
    }

    #[test]
    fn ack_budget_limits_ranges_but_keeps_the_newest() {
        let now = crate::test_epoch();
        let mut p = RecvPackets::new();
        for i in 0..20 {
            p.on_packet(i * 3, now, true, 2, MS);
        }
        let mut small = Vec::new();
        p.write_ack(&mut small, now, 0);
        let mut big = Vec::new();
        p.write_ack(&mut big, now, 1000);
        let count = |b: &[u8]| {
            let Some(Ok(Frame::Ack(a))) = FrameReader::new(b).next() else { panic!() };
            a.ranges(57).count()
        };
        assert_eq!(count(&small), 1);
        assert_eq!(count(&big), MAX_REPORTED_RANGES);
        assert!(big.len() <= 11 + 2 * 2 * MAX_REPORTED_RANGES);
    }
}
