//! Options, with documented defaults. Every struct deserializes with serde (missing fields
//! take their defaults; durations are written in milliseconds) and is checked by `validate`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest reliable message window the protocol allows per stream. Message numbers travel
/// as 16 bits, and the receiver's expansion needs sender and receiver within a quarter of that.
pub const MAX_STREAM_WINDOW: u32 = 8192;

/// Options of the reliable-UDP transport: one `Endpoint` and the
/// sessions it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Largest UDP payload we send and accept, in bytes. Default 1200 (fits any path's MTU
    /// without IP fragmentation). Range 256..=65507. Larger datagrams are dropped on receipt.
    pub max_datagram_size: usize,
    /// Largest message, in bytes; a larger send fails with
    /// `SendError::MessageTooLarge`. Default 1 MiB.
    pub max_message_size: usize,
    /// Flow-control credit: reliable bytes the peer may have buffered here, not yet delivered
    /// to the application. At least `max_message_size`. Default 4 MiB.
    pub receive_window: u64,
    /// Bytes all sessions of the endpoint together may hold received and not yet delivered
    /// (out-of-order and partly reassembled reliable messages, partial unreliable ones). Above
    /// it, a session that holds more than an equal share is shed (closed with
    /// `Shed`, what it held freed) and counted;
    /// sessions under their share are served as usual (a session that delivers what it
    /// receives holds nothing). Each session is bounded on its own by `receive_window`.
    /// Default 256 MiB.
    pub max_receive_buffered: usize,
    /// Bytes a connection may hold queued and unacknowledged before
    /// `SendError::BufferFull`. Each message also counts 160 bytes
    /// of bookkeeping (what holding it costs). At least `max_message_size`. Default 8 MiB.
    pub send_buffer: usize,
    /// Reliable messages per stream that may be sent and not yet acknowledged.
    /// At most [`MAX_STREAM_WINDOW`]. Default 4096.
    pub stream_window: u32,
    /// Round-trip time assumed before the first measurement. Default 100 ms.
    #[serde(with = "duration")]
    pub initial_rtt: Duration,
    /// Lower bound of the retransmission timeout. Default 10 ms.
    #[serde(with = "duration")]
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout, backoff included. Default 2 s.
    #[serde(with = "duration")]
    pub max_rto: Duration,
    /// Longest we hold an acknowledgement hoping to piggy-back it on a reply. Should match the
    /// peer's setting (its retransmission timer allows for it). Default 25 ms, as in QUIC:
    /// acks of request/response traffic ride on the responses anyway, and a timer only a few
    /// milliseconds out, re-armed around every packet, costs several microseconds per round
    /// trip on virtual machines (each near kernel timer reprograms the virtual APIC).
    #[serde(with = "duration")]
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting datagrams. Default 2.
    pub ack_frequency: u32,
    /// Congestion window at the start, in datagrams. Default 32.
    pub initial_window_packets: u32,
    /// Smallest congestion window, in datagrams. Default 4.
    pub min_window_packets: u32,
    /// Largest congestion window, in bytes. Default 1 MiB.
    pub max_window: u64,
    /// Send a ping after this long without sending anything that asks for an ack and without
    /// hearing from the peer; keeps the session alive and the RTT measured. Default 1 s; 3 s in
    /// [`TransportConfig::server`], so that clients' pings (each answered by an ack) keep idle
    /// sessions alive and the server sends no pings of its own.
    #[serde(with = "duration")]
    pub keepalive_interval: Duration,
    /// Close the session (reason: timeout) after this long without hearing from the peer.
    /// Default 10 s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Close the session (reason: `Stalled`) when
    /// data has waited this long for the peer to acknowledge any of it: a peer that advertises
    /// no credit, never acks, or lets its receive buffer fill, is not kept forever at the cost
    /// of what is queued for it (TCP's user timeout). Default 10 s.
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
    /// Give up connecting after this long. Default 5 s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Handshake retransmission interval; it backs off to twice this. Default 250 ms.
    #[serde(with = "duration")]
    pub handshake_retry: Duration,
    /// On a local close, how long to keep sending queued reliable data before the `CLOSE`
    /// goes out. Default 1 s.
    #[serde(with = "duration")]
    pub close_linger: Duration,
    /// Whether the endpoint accepts incoming sessions (a server). Default false.
    pub accept_incoming: bool,
    /// Most incoming sessions at once; further attempts are rejected
    /// (`Rejection::ServerFull`). Default 4096.
    pub max_connections: usize,
    /// Most incoming sessions from one address at once (an IPv4 address, or an IPv6 /64);
    /// further attempts are rejected
    /// (`Rejection::TooManyFromAddress`). Default 64: a household
    /// behind one NAT with several players is far below it, one host cannot take every slot.
    /// Raise it for carrier-grade NATs or load tests from one machine.
    pub max_connections_per_ip: usize,
    /// Datagrams per second a source address without a session may send (handshakes, and
    /// anything else a stranger sends), checked before any other work; the rest are dropped
    /// and counted. The budget refills continuously, up to one second's worth. Default 32.
    pub handshake_rate_per_ip: u32,
    /// How long a handshake cookie stays valid. Default 10 s.
    #[serde(with = "duration")]
    pub cookie_lifetime: Duration,
    /// Seeds the endpoint's randomness (session tags, the cookie key): with a seed, a simulated
    /// run repeats exactly. Default `None`: from the OS. Never set it on an endpoint that faces
    /// strangers: its cookie key would be predictable.
    pub seed: Option<u64>,
    /// Events (messages, connects, disconnects) that may wait for the application; above it
    /// the endpoint stops reading its socket until the application catches up. Default 65536.
    pub event_backlog: usize,
    /// Kernel socket buffer size requested for receive and send (the kernel may clamp it).
    /// Default 4 MiB. 0 keeps the system default.
    pub socket_buffer_size: usize,
    /// Datagrams read per pass of the endpoint's loop before timers and sends get a turn.
    /// Default 256.
    pub max_datagrams_per_poll: usize,
    /// Read and write the UDP socket in batches, through `quinn-udp`: up to 32 datagrams per
    /// `recvmmsg` (with UDP GRO where the kernel has it), and GSO sends of up to
    /// `gso_segments`. Default false: one datagram per system call. Measured here
    /// (BENCHMARKS.md): batching cut the server's system calls per call from 1.17 to 0.48 but
    /// not measurably its CPU per call under 16 clients (on loopback the kernel's work per
    /// datagram, not the system call, dominates).
    pub batched_io: bool,
    /// With `batched_io`: datagrams to one address gathered into one send with UDP GSO,
    /// where the kernel has it (Linux): up to this many, sent when the pass ends. Default 1:
    /// each datagram leaves as it is made. More costs the sender less CPU on bulk traffic to
    /// one peer (a grain stream of 32-byte items: 130–190 instead of 200–230 ns of server CPU
    /// per item at 8, at the same rate; 64 saves a little more but sends 10–35 % fewer items
    /// per second) but holds datagrams back until the pass ends (19 % fewer calls per second
    /// with one busy peer, at 8); measured in BENCHMARKS.md. Range 1..=64.
    pub gso_segments: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: 1200,
            max_message_size: 1 << 20,
            receive_window: 4 << 20,
            max_receive_buffered: 256 << 20,
            send_buffer: 8 << 20,
            stream_window: 4096,
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(2),
            max_ack_delay: Duration::from_millis(25),
            ack_frequency: 2,
            initial_window_packets: 32,
            min_window_packets: 4,
            max_window: 1 << 20,
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            handshake_retry: Duration::from_millis(250),
            close_linger: Duration::from_secs(1),
            accept_incoming: false,
            max_connections: 4096,
            max_connections_per_ip: 64,
            handshake_rate_per_ip: 32,
            cookie_lifetime: Duration::from_secs(10),
            seed: None,
            event_backlog: 65536,
            socket_buffer_size: 4 << 20,
            max_datagrams_per_poll: 256,
            batched_io: false,
            gso_segments: 1,
        }
    }
}

/// A [`TransportConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport config: `{field}` {problem}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl TransportConfig {
    /// A server's defaults: accepts incoming sessions; keepalive after 3 s (see
    /// `keepalive_interval`).
    pub fn server() -> Self {
        Self {
            accept_incoming: true,
            keepalive_interval: Duration::from_secs(3),
            ..Self::default()
        }
    }

    /// Checks every bound the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError { field, problem });
        if !(256..=65507).contains(&self.max_datagram_size) {
            return err("max_datagram_size", "must be within 256..=65507");
        }
        if self.max_message_size == 0 || self.max_message_size > 1 << 30 {
            return err("max_message_size", "must be within 1..=1 GiB");
        }
        if self.receive_window < self.max_message_size as u64 {
            return err("receive_window", "must be at least max_message_size");
        }
        if self.max_receive_buffered == 0 {
            return err("max_receive_buffered", "must be non-zero");
        }
        if self.send_buffer < self.max_message_size {
            return err("send_buffer", "must be at least max_message_size");
        }
        if self.stream_window == 0 || self.stream_window > MAX_STREAM_WINDOW {
            return err("stream_window", "must be within 1..=8192");
        }
        if self.min_rto.is_zero() || self.min_rto > self.max_rto {
            return err("min_rto", "must be non-zero and at most max_rto");
        }
        if self.ack_frequency == 0 {
            return err("ack_frequency", "must be at least 1");
        }
        if self.min_window_packets < 2 || self.initial_window_packets < self.min_window_packets {
            return err(
                "min_window_packets",
                "must be at least 2 and at most initial_window_packets",
            );
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.idle_timeout {
            return err("keepalive_interval", "must be non-zero and shorter than idle_timeout");
        }
        if self.stall_timeout.is_zero() {
            return err("stall_timeout", "must be non-zero");
        }
        if self.handshake_retry.is_zero() || self.handshake_retry > self.handshake_timeout {
            return err("handshake_retry", "must be non-zero and at most handshake_timeout");
        }
        if self.cookie_lifetime < self.handshake_retry {
            return err("cookie_lifetime", "must be at least handshake_retry");
        }
        if self.max_connections_per_ip == 0 || self.handshake_rate_per_ip == 0 {
            return err(
                "max_connections_per_ip",
                "max_connections_per_ip and handshake_rate_per_ip must be non-zero",
            );
        }
        if self.event_backlog == 0 || self.max_datagrams_per_poll == 0 {
            return err(
                "event_backlog",
                "event_backlog and max_datagrams_per_poll must be non-zero",
            );
        }
        if !(1..=64).contains(&self.gso_segments) {
            return err("gso_segments", "must be within 1..=64");
        }
        Ok(())
    }

    /// The payload bytes of one chunk of a message too large for one datagram: what is left
    /// after the data header, an `ACK` frame and the message frame header.
    pub(crate) fn chunk_size(&self) -> usize {
        self.max_datagram_size - 48
    }
}

/// Serde helper: a `Duration` as whole milliseconds.
/// Durations in configuration files: human-readable strings (`"250ms"`, `"5s"`, `"1.5s"`,
/// `"2m"`, `"1h"`, `"100us"`; units `ns`, `us`, `ms`, `s`, `m`, `h`) or a bare number of
/// milliseconds. Written back as the shortest exact string.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given<'a> {
            Millis(u64),
            Text(std::borrow::Cow<'a, str>),
        }
        match Given::deserialize(d)? {
            Given::Millis(ms) => Ok(Duration::from_millis(ms)),
            Given::Text(t) => parse_duration(&t).ok_or_else(|| {
                de::Error::custom(format_args!(
                    "not a duration: {t:?} (a number with a unit: ns, us, ms, s, m, h)"
                ))
            }),
        }
    }

    /// `"1.5s"` and the like; `None` for anything else.
    pub(crate) fn parse_duration(t: &str) -> Option<Duration> {
        let t = t.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, unit) = t.split_at(split);
        let scale = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        let n: f64 = number.parse().ok()?;
        Duration::try_from_secs_f64(n * scale).ok()
    }

    /// The shortest exact form: whole hours, minutes, seconds, ms, µs, else ns.
    pub(crate) fn format_duration(d: Duration) -> String {
        let ns = d.as_nanos();
        for (unit, per) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns.is_multiple_of(per) && ns > 0 {
                return format!("{}{unit}", ns / per);
            }
        }
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them_and_print_back_exactly() {
        use super::duration::{format_duration, parse_duration};
        let ms = Duration::from_millis;
        for (text, d) in [
            ("250ms", ms(250)),
            ("5s", ms(5000)),
            ("1.5s", ms(1500)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("100us", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_duration(text), Some(d), "{text}");
        }
        for d in [ms(250), ms(5000), ms(1500), ms(120_000), Duration::from_nanos(7), ms(0)] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(format_duration(ms(1500)), "1500ms");
        for bad in ["", "5", "s", "5 parsecs", "-1s", "1e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        TransportConfig::default().validate().unwrap();
        TransportConfig::server().validate().unwrap();
        let bad = TransportConfig { stream_window: 9000, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "stream_window");
        let bad = TransportConfig { max_datagram_size: 100, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "max_datagram_size");
        let bad = TransportConfig { receive_window: 10, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "receive_window");
    }
}
