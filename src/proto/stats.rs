//! Per-connection statistics, handed out as a `Copy` value.

use std::time::{Duration, Instant};

/// A snapshot of one connection's transport statistics.
///
/// Counters are totals since the session was established. `loss` is an estimate over recent
/// packets (an exponentially weighted average with a horizon of about 100 packets).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip time variance (mean deviation).
    pub rtt_var: Duration,
    /// Smallest round-trip time seen.
    pub min_rtt: Duration,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams received and accepted (duplicates and malformed ones excluded).
    pub packets_received: u64,
    /// Bytes sent, UDP payload.
    pub bytes_sent: u64,
    /// Bytes received, UDP payload.
    pub bytes_received: u64,
    /// Datagrams declared lost (by acks or by the retransmission timer).
    pub packets_lost: u64,
    /// Message chunks sent again after a loss.
    pub retransmissions: u64,
    /// Datagrams dropped on receipt as duplicates or too old.
    pub duplicates: u64,
    /// Datagrams dropped on receipt because they could not be decoded.
    pub malformed: u64,
    /// Protected datagrams dropped on receipt because they failed authentication (forged,
    /// altered or another session's): never decoded.
    pub unauthentic: u64,
    /// Estimated fraction of packets lost recently, 0.0..=1.0.
    pub loss: f64,
    /// Messages accepted for sending.
    pub messages_sent: u64,
    /// Messages delivered to the application.
    pub messages_received: u64,
    /// Reliable messages queued or sent but not yet acknowledged, plus unreliable ones queued.
    pub messages_in_flight: u64,
    /// Bytes of ack-eliciting datagrams in flight.
    pub bytes_in_flight: u64,
    /// The congestion window in bytes.
    pub congestion_window: u64,
    /// When the last datagram from the peer was accepted.
    pub last_received: Instant,
    /// When the last datagram was sent to the peer.
    pub last_sent: Instant,
}

impl ConnectionStats {
    /// An all-zero snapshot taken at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            rtt: Duration::ZERO,
            rtt_var: Duration::ZERO,
            min_rtt: Duration::ZERO,
            packets_sent: 0,
            packets_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            packets_lost: 0,
            retransmissions: 0,
            duplicates: 0,
            malformed: 0,
            unauthentic: 0,
            loss: 0.0,
            messages_sent: 0,
            messages_received: 0,
            messages_in_flight: 0,
            bytes_in_flight: 0,
            congestion_window: 0,
            last_received: now,
            last_sent: now,
        }
    }

    /// The later of the last send and the last receipt.
    pub fn last_activity(&self) -> Instant {
        self.last_received.max(self.last_sent)
    }
}

/// Sub-buckets per power of two in [`LatencyHistogram`] (relative error under 1/16).
const SUB_BUCKETS: usize = 16;
/// Powers of two covered: 1 µs to about 2^36 µs (19 hours).
const OCTAVES: usize = 36;

/// A log-linear histogram of latencies in microseconds: fixed size, no allocation, about 6 %
/// relative precision.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64; OCTAVES * SUB_BUCKETS]>,
    total: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram").field("total", &self.total).finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: Box::new([0; OCTAVES * SUB_BUCKETS]), total: 0 }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < SUB_BUCKETS as u64 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros() as usize; // >= 4
        let sub = ((us >> (octave - 4)) & 0xf) as usize;
        ((octave - 3) * SUB_BUCKETS + sub).min(OCTAVES * SUB_BUCKETS - 1)
    }

    fn bucket_value(b: usize) -> u64 {
        if b < SUB_BUCKETS {
            return b as u64;
        }
        let octave = b / SUB_BUCKETS + 3;
        let sub = (b % SUB_BUCKETS) as u64;
        // The middle of the bucket.
        ((SUB_BUCKETS as u64 + sub) << (octave - 4)) + (1 << (octave - 4)) / 2
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
    }

    /// The latency at quantile `q` (0.0..=1.0), or zero if nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(Self::bucket_value(b));
            }
        }
        Duration::ZERO
    }
}

/// A snapshot of one client connection's call statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CallStats {
    /// Calls waiting for their response now.
    pub pending: u64,
    /// Calls made (requests and one-way).
    pub total: u64,
    /// Calls that ended with an error (timeouts included).
    pub errors: u64,
    /// Calls that timed out here.
    pub timeouts: u64,
    /// Exponentially weighted mean latency of successful calls (weight 1/16).
    pub latency_ewma: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// When a call last completed (or the connection last changed).
    pub last_activity: Instant,
    /// Attempts sent again (to another server, by the retry policy): per server, the calls
    /// it sent back or lost that went elsewhere.
    pub retries: u64,
}

/// The running totals behind [`CallStats`].
#[derive(Debug, Clone)]
pub struct CallAccounting {
    /// Calls that ended (with their outcome) or, one-way, were sent.
    pub ended: u64,
    /// Calls failed.
    pub errors: u64,
    /// Calls timed out.
    pub timeouts: u64,
    /// Attempts sent again.
    pub retries: u64,
    ewma_us: f64,
    histogram: LatencyHistogram,
    last_activity: Instant,
}

impl CallAccounting {
    /// Empty totals at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            ended: 0,
            errors: 0,
            timeouts: 0,
            retries: 0,
            ewma_us: 0.0,
            histogram: LatencyHistogram::default(),
            last_activity: now,
        }
    }

    /// A call completed successfully after `latency`.
    pub fn success(&mut self, latency: Duration, now: Instant) {
        self.ended += 1;
        let us = latency.as_secs_f64() * 1e6;
        self.ewma_us =
            if self.histogram.total == 0 { us } else { self.ewma_us + (us - self.ewma_us) / 16.0 };
        self.histogram.record(latency);
        self.last_activity = now;
    }

    /// A call failed; `timeout` if by its deadline here.
    pub fn failure(&mut self, timeout: bool, now: Instant) {
        self.ended += 1;
        self.errors += 1;
        if timeout {
            self.timeouts += 1;
        }
        self.last_activity = now;
    }

    /// A call is sent again.
    pub fn retried(&mut self) {
        self.retries += 1;
    }

    /// A snapshot, with `pending` calls outstanding and `one_way` one-way calls sent (counted
    /// apart: they need no lock).
    pub fn snapshot(&self, pending: u64, one_way: u64) -> CallStats {
        let h = &self.histogram;
        CallStats {
            pending,
            total: self.ended + one_way + pending,
            errors: self.errors,
            timeouts: self.timeouts,
            latency_ewma: Duration::from_secs_f64(self.ewma_us / 1e6),
            p50: h.quantile(0.5),
            p90: h.quantile(0.9),
            p99: h.quantile(0.99),
            p999: h.quantile(0.999),
            last_activity: self.last_activity,
            retries: self.retries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = LatencyHistogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        for (q, exact) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = h.quantile(q).as_micros() as f64;
            assert!((got - exact).abs() / exact < 0.07, "q{q}: {got} vs {exact}");
        }
        assert_eq!(LatencyHistogram::default().quantile(0.5), Duration::ZERO);
        h.record(Duration::from_secs(1 << 40)); // clamps into the last bucket
        assert!(h.quantile(1.0) > Duration::from_secs(3600));
    }

    #[test]
    fn accounting_snapshot() {
        let t = crate::test_epoch();
        let mut a = CallAccounting::new(t);
        a.success(Duration::from_micros(100), t);
        a.success(Duration::from_micros(200), t);
        a.failure(true, t);
        // Three ended, two one-way calls sent, one pending: six made.
        let s = a.snapshot(1, 2);
        assert_eq!((s.total, s.errors, s.timeouts, s.pending), (6, 1, 1, 1));
        assert!(
            s.latency_ewma > Duration::from_micros(100)
                && s.latency_ewma < Duration::from_micros(200)
        );
        assert!(
            s.p50 >= Duration::from_micros(94) && s.p50 <= Duration::from_micros(106),
            "{:?}",
            s.p50
        );
    }
}
