//! A NewReno-style congestion window in bytes (RFC 9002 §7): slow start, additive increase,
//! halving once per loss episode, collapse to the minimum on a retransmission timeout.
//!
//! It keeps a burst of queued messages from overrunning the peer's socket buffer or a slow
//! link: the sender never has more than `window()` bytes of ack-eliciting packets in flight.

use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Congestion {
    window: u64,
    ssthresh: u64,
    min: u64,
    max: u64,
    datagram: u64,
    /// Losses of packets sent before this instant belong to the episode already reacted to.
    recovery_start: Option<Instant>,
}

impl Congestion {
    pub(crate) fn new(
        datagram: usize,
        initial_packets: u32,
        min_packets: u32,
        max_bytes: u64,
    ) -> Self {
        let datagram = datagram as u64;
        let min = datagram * u64::from(min_packets);
        Self {
            window: (datagram * u64::from(initial_packets)).clamp(min, max_bytes.max(min)),
            ssthresh: u64::MAX,
            min,
            max: max_bytes.max(min),
            datagram,
            recovery_start: None,
        }
    }

    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    pub(crate) fn on_ack(&mut self, bytes: u64, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.window += (self.datagram * bytes / self.window).max(1);
        }
        self.window = self.window.min(self.max);
    }

    pub(crate) fn on_loss(&mut self, sent: Instant, now: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.min);
        self.ssthresh = self.window;
    }

    pub(crate) fn on_timeout(&mut self, now: Instant) {
        self.recovery_start = Some(now);
        self.ssthresh = (self.window / 2).max(self.min);
        self.window = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slow_start_then_halving_once_per_episode() {
        let t0 = crate::test_epoch();
        let mut c = Congestion::new(1000, 10, 2, 1_000_000);
        assert_eq!(c.window(), 10_000);
        c.on_ack(5000, t0);
        assert_eq!(c.window(), 15_000);
        let t1 = t0 + Duration::from_millis(10);
        c.on_loss(t0, t1);
        assert_eq!(c.window(), 7_500);
        c.on_loss(t0, t1 + Duration::from_millis(1)); // same episode
        assert_eq!(c.window(), 7_500);
        c.on_ack(1000, t0); // sent before recovery: no growth
        assert_eq!(c.window(), 7_500);
        c.on_ack(7500, t1 + Duration::from_millis(2)); // congestion avoidance: +~1 datagram
        assert_eq!(c.window(), 8_500);
        c.on_timeout(t1 + Duration::from_millis(3));
        assert_eq!(c.window(), 2_000);
    }

    #[test]
    fn bounded_by_max() {
        let t0 = crate::test_epoch();
        let mut c = Congestion::new(1000, 10, 2, 20_000);
        for _ in 0..10 {
            c.on_ack(10_000, t0);
        }
        assert_eq!(c.window(), 20_000);
    }
}
