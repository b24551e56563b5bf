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
