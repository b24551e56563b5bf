//! Loss detection and recovery: processing acks (RTT samples, the congestion window, freeing
//! acknowledged chunks), declaring packets lost by the packet and time thresholds, and the
//! retransmission timer with exponential backoff.

use std::time::{Duration, Instant};

use super::{Channel, LOSS_EWMA, seq};
use crate::proto::error::ProtocolViolation;
use crate::proto::wire;

impl Channel {
    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        a: &wire::AckFrame<'_>,
    ) -> Result<(), ProtocolViolation> {
        let largest = seq::expand(self.next_pn, a.largest.into(), 32);
        if largest >= self.next_pn {
            return Err(ProtocolViolation::AckOfUnsentPacket);
        }
        let mut newly_acked = false;
        let mut rtt_sample = None;
        for range in a.ranges(largest) {
            let (lo, hi) = range.map_err(|_| ProtocolViolation::AckOfUnsentPacket)?;
            let Some(front) = self.sender.sent.front().map(|p| p.pn) else {
                break;
            };
            if hi < front {
                continue;
            }
            let start = lo.saturating_sub(front) as usize;
            let end = ((hi - front) as usize).min(self.sender.sent.len().saturating_sub(1));
            for i in start..=end {
                let Some(p) = self.sender.sent.get_mut(i) else {
                    break;
                };
                if p.resolved {
                    continue;
                }
                p.resolved = true;
                newly_acked = true;
                if p.pn == largest && p.eliciting {
                    rtt_sample = Some(now.saturating_duration_since(p.time));
                }
                let (pn, time, size, eliciting) = (p.pn, p.time, p.size, p.eliciting);
                let (ack_largest, max_data) = (p.ack_largest, p.max_data);
                let chunks = std::mem::take(&mut p.chunks);
                debug_assert!(pn >= lo && pn <= hi);
                if eliciting {
                    self.bytes_in_flight -= u64::from(size);
                    self.cc.on_ack(size.into(), time);
                    self.stats.loss *= 1.0 - LOSS_EWMA;
                }
                for c in &chunks {
                    self.sender.ack_chunk(c);
                }
                self.sender.recycle_chunk_vec(chunks);
                if let Some(l) = ack_largest {
                    self.recv.on_ack_acked(l);
                }
                if let Some(m) = max_data {
                    self.max_data_acked = self.max_data_acked.max(m);
                }
            }
        }
        if !newly_acked {
            return Ok(());
        }
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        self.rto_backoff = 0;
        if let Some(sample) = rtt_sample {
            let delay = Duration::from_micros(a.delay_us).min(self.p.max_ack_delay);
            self.rtt.update(sample, delay);
            self.rto = self.rtt.rto(self.p.max_ack_delay, self.p.min_rto, self.p.max_rto);
        }
        self.detect_lost(now);
        Ok(())
    }

    pub(super) fn detect_lost(&mut self, now: Instant) {
        self.loss_time = None;
        let Some(la) = self.largest_acked else { return };
        let delay = self.rtt.loss_delay();
        for i in 0..self.sender.sent.len() {
            let p = &self.sender.sent[i];
            if p.pn >= la {
                break;
            }
            if p.resolved {
                continue;
            }
            if la - p.pn >= 3 || p.time + delay <= now {
                self.lose(i, now);
            } else {
                let t = p.time + delay;
                self.loss_time = Some(self.loss_time.map_or(t, |l| l.min(t)));
            }
        }
        self.pop_resolved();
    }

    pub(super) fn lose(&mut self, i: usize, now: Instant) {
        let p = &mut self.sender.sent[i];
        p.resolved = true;
        let chunks = std::mem::take(&mut p.chunks);
        let (time, size, eliciting, max_data) = (p.time, p.size, p.eliciting, p.max_data);
        if eliciting {
            self.bytes_in_flight -= u64::from(size);
            self.cc.on_loss(time, now);
            self.stats.packets_lost += 1;
            self.stats.loss = self.stats.loss * (1.0 - LOSS_EWMA) + LOSS_EWMA;
        }
        for c in &chunks {
            if self.sender.space(c.space).is_some_and(|s| s.is_unacked(c)) {
                self.sender.retransmit.push_back(*c);
            }
        }
        self.sender.recycle_chunk_vec(chunks);
        if max_data.is_some_and(|m| m > self.max_data_acked) {
            // Our credit update may be lost: advertise again. (The peer may have seen it all the
            // same, so the limit we enforce stays where it was.)
            self.max_data_resend = true;
        }
    }

    pub(super) fn pop_resolved(&mut self) {
        while self.sender.sent.front().is_some_and(|p| p.resolved) {
            if let Some(p) = self.sender.sent.pop_front() {
                self.sender.recycle_chunk_vec(p.chunks);
            }
        }
    }

    /// When the retransmission timer fires, if it is armed.
    pub(super) fn rto_deadline(&self) -> Option<Instant> {
        if self.bytes_in_flight == 0 {
            return None;
        }
        let backed_off = if self.rto_backoff == 0 {
            self.rto
        } else {
            self.rto.saturating_mul(1 << self.rto_backoff.min(16)).min(self.p.max_rto)
        };
        Some(self.last_eliciting_sent? + backed_off)
    }

    /// The earliest instant at which [`Self::handle_timeout`] or [`Self::write_packet`] has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        [self.loss_time, self.rto_deadline(), self.recv.ack_deadline()].into_iter().flatten().min()
    }

    /// Runs the loss and retransmission timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe_progress(now);
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
        }
        if self.rto_deadline().is_some_and(|t| t <= now) {
            // Nothing acknowledged for a whole timeout: everything in flight is presumed lost.
            for i in 0..self.sender.sent.len() {
                if !self.sender.sent[i].resolved {
                    self.lose(i, now);
                }
            }
            self.pop_resolved();
            self.cc.on_timeout(now);
            self.rto_backoff += 1;
            self.loss_time = None;
        }
    }
}
