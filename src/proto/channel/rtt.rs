//! Round-trip time estimation (smoothed RTT and variance, RFC 6298 / RFC 9002 §5) and the
//! retransmission timeout derived from it.

use std::time::Duration;

/// Smoothed RTT, its variance, the minimum and the latest sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimator {
    smoothed: Duration,
    var: Duration,
    min: Duration,
    latest: Duration,
    has_sample: bool,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> Self {
        Self {
            smoothed: initial,
            var: initial / 2,
            min: initial,
            latest: initial,
            has_sample: false,
        }
    }

    /// Adds a sample: `sample` is the time from sending to the ack; `ack_delay` is how long the
    /// peer says it held the ack (already capped at its maximum).
    pub(crate) fn update(&mut self, sample: Duration, ack_delay: Duration) {
        self.latest = sample;
        if !self.has_sample {
            self.has_sample = true;
            self.min = sample;
            self.smoothed = sample;
            self.var = sample / 2;
            return;
        }
        self.min = self.min.min(sample);
        // Subtract the ack delay only when that does not go below the minimum (RFC 9002 §5.3).
        let adjusted = if sample >= self.min + ack_delay { sample - ack_delay } else { sample };
        let diff = self.smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + diff) / 4;
        self.smoothed = (self.smoothed * 7 + adjusted) / 8;
    }

    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed
    }

    pub(crate) fn var(&self) -> Duration {
        self.var
    }

    pub(crate) fn min(&self) -> Duration {
        self.min
    }

    /// The base retransmission timeout: `srtt + max(4·rttvar, 1 ms) + max_ack_delay`, clamped.
    pub(crate) fn rto(&self, max_ack_delay: Duration, min: Duration, max: Duration) -> Duration {
        let rto = self.smoothed + (self.var * 4).max(Duration::from_millis(1)) + max_ack_delay;
        rto.clamp(min, max)
    }

    /// The time after which an unacknowledged packet older than a newer acked one is lost
    /// (RFC 9002 §6.1.2: 9/8 of the larger of smoothed and latest RTT, at least 1 ms).
    pub(crate) fn loss_delay(&self) -> Duration {
        (self.smoothed.max(self.latest) * 9 / 8).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn converges_and_tracks_variance() {
        let mut r = RttEstimator::new(100 * MS);
        r.update(20 * MS, Duration::ZERO);
        assert_eq!((r.smoothed(), r.var(), r.min()), (20 * MS, 10 * MS, 20 * MS));
        for _ in 0..100 {
            r.update(20 * MS, Duration::ZERO);
        }
        assert!(r.smoothed().abs_diff(20 * MS) < MS / 10);
        assert!(r.var() < MS);
        // Jitter raises the variance and so the timeout.
        let calm = r.rto(Duration::ZERO, MS, 10_000 * MS);
        for i in 0..50 {
            r.update(if i % 2 == 0 { 10 * MS } else { 30 * MS }, Duration::ZERO);
        }
        assert!(r.rto(Duration::ZERO, MS, 10_000 * MS) > calm + 10 * MS);
    }

    #[test]
    fn ack_delay_is_subtracted_only_above_min() {
        let mut r = RttEstimator::new(100 * MS);
        r.update(10 * MS, Duration::ZERO);
        r.update(15 * MS, 5 * MS); // adjusted to 10 ms
        assert_eq!(r.smoothed(), 10 * MS);
        r.update(12 * MS, 5 * MS); // 12 - 5 < min 10: not adjusted
        assert!(r.smoothed() > 10 * MS);
    }

    #[test]
    fn rto_is_clamped() {
        let r = RttEstimator::new(Duration::from_secs(10));
        assert_eq!(r.rto(MS, MS, 2000 * MS), 2000 * MS);
        let mut fast = RttEstimator::new(MS);
        fast.update(Duration::from_micros(20), Duration::ZERO);
        assert_eq!(fast.rto(Duration::ZERO, 5 * MS, 2000 * MS), 5 * MS);
    }
}
