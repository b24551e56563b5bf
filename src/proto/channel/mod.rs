//! Our reliability layer (laminar 0.5's own is unsound: see `research/laminar.md`).
//!
//! A [`Channel`] is one direction pair of a session after the handshake: it turns queued
//! messages into datagrams and datagrams back into messages, sans-IO (time comes in as an
//! argument, bytes go out through a buffer).
//!
//! * **Packets** carry a 64-bit packet number that is never reused; retransmitted data goes out
//!   in new packets. Acks name packet numbers in ranges (`ack`), piggy-backed on every
//!   datagram while the peer has not seen one, and sent alone after at most `max_ack_delay`.
//! * **Loss** is detected from acks (a packet 3 numbers or 9/8 RTT older than an acked one)
//!   and by a retransmission timer from the measured RTT with exponential backoff (`rtt`).
//!   Lost chunks of reliable messages are queued again; unreliable data is not.
//! * **Windows:** a congestion window bounds bytes in flight (`congestion`); each reliable
//!   space has a message window; the peer's flow-control credit bounds reliable bytes it must
//!   buffer (`recv`).
//! * **Messages** larger than one datagram travel in chunks with an explicit index and count,
//!   reassembled by index whatever the arrival order; many small messages share a datagram.
//!
//! Call order: [`Channel::send`] queues, [`Channel::handle_packet`] takes a received data
//! packet, [`Channel::handle_timeout`] runs timers, [`Channel::write_packet`] writes the next
//! datagram (call it until it returns `false`), [`Channel::next_timeout`] says when to call
//! `handle_timeout` again.

pub(crate) mod ack;
pub(crate) mod congestion;
mod loss;
pub(crate) mod recv;
pub(crate) mod rtt;
pub(crate) mod send;
pub(crate) mod seq;
mod write;

use std::time::{Duration, Instant};

use bytes::Bytes;

use self::ack::RecvPackets;
use self::congestion::Congestion;
use self::recv::{Credit, InChunk, Outcome, RecvReliable, RecvUnreliable};
pub use self::recv::{Datagram, MIN_CHUNK};
use self::rtt::RttEstimator;
use self::send::{CHUNK_COST, Sender, UNORDERED};
use crate::proto::config::TransportConfig;
use crate::proto::error::{ProtocolViolation, SendError};
use crate::proto::stats::ConnectionStats;
use crate::proto::wire::{Class, CloseKind, Frame, FrameReader};

/// Bound on the sent-packet table; beyond it the oldest entries that ask for no ack are
/// resolved (they only carried acks).
const MAX_SENT_PACKETS: usize = 1 << 16;
/// Weight of one packet in the loss estimate (horizon of about 100 packets).
const LOSS_EWMA: f64 = 1.0 / 100.0;
/// The most a peer must take per `stall_timeout` to count as draining its queue (see
/// [`Channel::stalled_since`]): 64 KiB per 10 s by default, 6.5 KB/s, far below any link a
/// game runs on, far above a trickle that only keeps a session's queue alive.
pub const DRAIN_FLOOR: u64 = 64 << 10;

/// Numbers a channel needs from the [`TransportConfig`], copied in.
#[derive(Debug, Clone, Copy)]
struct Params {
    max_datagram: usize,
    chunk_size: usize,
    max_message: usize,
    stream_window: u64,
    max_ack_delay: Duration,
    ack_frequency: u32,
    min_rto: Duration,
    max_rto: Duration,
}

/// A message handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its class.
    pub class: Class,
    /// Its stream (0 for classes without streams).
    pub stream: u8,
    /// The message.
    pub payload: Bytes,
}

/// What a received data packet amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketOutcome {
    /// Accepted (and will be acknowledged).
    Accepted {
        /// The peer closed the session in this packet.
        close: Option<CloseKind>,
    },
    /// A duplicate, or older than we can tell apart: dropped.
    Duplicate,
    /// Undecodable: dropped.
    Malformed,
}

/// Room to keep in a data-carrying datagram for the frame header of a full chunk.
const CHUNK_FRAME_HEADER: usize = 12;

/// Both directions of a session's reliability layer. See the module docs.
#[derive(Debug)]
pub struct Channel {
    p: Params,
    sender: Sender,
    next_pn: u64,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    cc: Congestion,
    rtt: RttEstimator,
    /// The retransmission timeout before backoff, recomputed with each RTT sample.
    rto: Duration,
    rto_backoff: u32,
    last_eliciting_sent: Option<Instant>,
    loss_time: Option<Instant>,
    /// The peer's receive window (its initial credit).
    peer_window: u64,
    peer_max_data: u64,
    credit_used: u64,
    recv: RecvPackets,
    ordered_in: Vec<RecvReliable>,
    unordered_in: RecvReliable,
    unreliable_in: RecvUnreliable,
    credit: Credit,
    max_data_acked: u64,
    /// A packet that carried our latest `MAX_DATA` was declared lost: send it again.
    max_data_resend: bool,
    /// The last time the peer made progress (see [`Self::stalled_since`]), or nothing was
    /// outstanding.
    last_progress: Instant,
    /// `sender.progress` at `last_progress`.
    progress_mark: u64,
    /// What the peer must take after `last_progress` for it to count as progress again.
    progress_need: u64,
    /// A `PATH_CHALLENGE` to echo in the next packet (the latest one heard).
    path_respond: Option<u64>,
    /// The latest `PATH_RESPONSE` heard, for the session to take.
    path_heard: Option<u64>,
    stats: ConnectionStats,
}

impl Channel {
    /// A channel whose peer granted `peer_window` bytes of credit in the handshake.
    pub fn new(cfg: &TransportConfig, peer_window: u64, now: Instant) -> Self {
        let p = Params {
            max_datagram: cfg.max_datagram_size,
            chunk_size: cfg.chunk_size(),
            max_message: cfg.max_message_size,
            stream_window: u64::from(cfg.stream_window),
            max_ack_delay: cfg.max_ack_delay,
            ack_frequency: cfg.ack_frequency,
            min_rto: cfg.min_rto,
            max_rto: cfg.max_rto,
        };
        Self {
            p,
            sender: Sender::new(),
            next_pn: 0,
            largest_acked: None,
            bytes_in_flight: 0,
            cc: Congestion::new(
                cfg.max_datagram_size,
                cfg.initial_window_packets,
                cfg.min_window_packets,
                cfg.max_window,
            ),
            rtt: RttEstimator::new(cfg.initial_rtt),
            rto: RttEstimator::new(cfg.initial_rtt).rto(
                cfg.max_ack_delay,
                cfg.min_rto,
                cfg.max_rto,
            ),
            rto_backoff: 0,
            last_eliciting_sent: None,
            loss_time: None,
            peer_window,
            peer_max_data: peer_window,
            credit_used: 0,
            recv: RecvPackets::new(),
            ordered_in: Vec::new(),
            unordered_in: RecvReliable::new(false),
            unreliable_in: RecvUnreliable::default(),
            credit: Credit::new(cfg.receive_window),
            max_data_acked: cfg.receive_window,
            max_data_resend: false,
            last_progress: now,
            progress_mark: 0,
            progress_need: 1,
            path_respond: None,
            path_heard: None,
            stats: ConnectionStats::new(now),
        }
    }

    /// The latest `PATH_RESPONSE` heard since the last call (see `Session::handle_moved`).
    pub fn take_path_response(&mut self) -> Option<u64> {
        self.path_heard.take()
    }

    /// Seeds the RTT estimate (the handshake's round trip).
    pub fn set_initial_rtt(&mut self, sample: Duration) {
        self.rtt.update(sample, Duration::ZERO);
        self.rto = self.rtt.rto(self.p.max_ack_delay, self.p.min_rto, self.p.max_rto);
    }

    /// The largest message [`Self::send`] accepts for this class.
    fn max_message(&self, class: Class) -> usize {
        max_message_for_params(self.p.max_message, self.p.chunk_size, self.peer_window, class)
    }

    /// Queues a message. Errors only if it is too large.
    pub fn send(&mut self, class: Class, stream: u8, payload: Bytes) -> Result<(), SendError> {
        let max = self.max_message(class);
        if payload.len() > max {
            return Err(SendError::MessageTooLarge { size: payload.len(), max });
        }
        let chunks = payload.len().div_ceil(self.p.chunk_size).max(1) as u32;
        self.sender.queue(class, stream, payload, chunks);
        self.stats.messages_sent += 1;
        Ok(())
    }

    /// The peer's receive window, as granted in the handshake.
    pub fn peer_window(&self) -> u64 {
        self.peer_window
    }

    /// Bytes and messages released from the send buffer since the last call.
    pub fn take_released(&mut self) -> (usize, usize) {
        (
            std::mem::take(&mut self.sender.released_bytes),
            std::mem::take(&mut self.sender.released_messages),
        )
    }

    /// Notes the peer's progress: nothing outstanding, or it took what it had to (see
    /// [`Self::stalled_since`]).
    fn observe_progress(&mut self, now: Instant) {
        let taken = self.sender.progress;
        if self.sender.messages_in_flight == 0 || taken - self.progress_mark >= self.progress_need {
            self.last_progress = now;
            self.progress_mark = taken;
            self.progress_need = (self.sender.held_bytes / 2).clamp(1, DRAIN_FLOOR);
        }
    }

    /// Since when the peer has not made progress while data waited for it; `None` while nothing
    /// is outstanding. Progress means draining, not one acknowledged byte: since the last
    /// progress the peer must have taken (acknowledged, or let go out for unreliable data) half
    /// of what waited for it then, or [`DRAIN_FLOOR`] bytes if that is less. A peer that
    /// advertised no credit, never acks, or trickles acknowledgements for a few bytes to keep
    /// a large queue alive stalls its session this way (see `TransportConfig::stall_timeout`).
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.sender.messages_in_flight > 0).then_some(self.last_progress)
    }

    /// What the data received and not yet delivered (reliable messages out of order or partly
    /// reassembled, partial unreliable messages) costs in memory, as it really does (see
    /// `recv`): what the peer makes us hold.
    pub fn receive_held(&self) -> u64 {
        self.credit.memory() + self.unreliable_in.memory()
    }

    /// Whether every reliable message was acknowledged and nothing is queued.
    pub fn is_flushed(&self) -> bool {
        self.sender.messages_in_flight == 0
    }

    /// Drops everything still queued (the session is closing for good); what it had charged
    /// to the send buffer is released. Received data not delivered yet is dropped too: it never
    /// will be.
    pub fn discard_queued(&mut self) {
        self.sender.discard();
        self.ordered_in.clear();
        self.unordered_in = RecvReliable::new(false);
        self.unreliable_in = RecvUnreliable::default();
        self.credit.released = self.credit.charged;
        self.credit.memory = 0;
    }

    /// Takes a received data packet: `pn_truncated`/`pn_len` from its header, `frames` the rest.
    /// Delivered messages go to `deliver`, in order per stream.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        pn_truncated: u32,
        pn_len: u8,
        frames: &[u8],
        datagram: &mut Datagram<'_>,
        deliver: &mut impl FnMut(Delivered),
    ) -> Result<PacketOutcome, ProtocolViolation> {
        let pn = self.expand_pn(pn_truncated, pn_len);
        if self.recv.is_duplicate(pn) {
            self.stats.duplicates += 1;
            return Ok(PacketOutcome::Duplicate);
        }
        if FrameReader::new(frames).any(|f| f.is_err()) {
            self.stats.malformed += 1;
            return Ok(PacketOutcome::Malformed);
        }
        let largest_pn = self.recv.largest().map_or(pn, |l| l.max(pn));
        let mut eliciting = false;
        let mut close = None;
        let mut floor = None;
        for frame in FrameReader::new(frames).flatten() {
            match frame {
                Frame::Ack(a) => self.on_ack(now, &a)?,
                Frame::Ping => eliciting = true,
                Frame::PathChallenge(token) => {
                    // Echoed in the next packet, sent at once.
                    eliciting = true;
                    self.path_respond = Some(token);
                }
                Frame::PathResponse(token) => self.path_heard = Some(token),
                Frame::Close(kind) => close = Some(kind),
                Frame::MaxData(max) => {
                    eliciting = true;
                    self.peer_max_data = self.peer_max_data.max(max);
                    for space in 0..=UNORDERED {
                        if self.sender.space(space).is_some_and(|s| s.has_new()) {
                            self.sender.schedule(space);
                        }
                    }
                }
                Frame::Message(m) => {
                    eliciting = true;
                    let f = self.on_message(
                        m.class, m.stream, m.seq, m.chunk, m.payload, datagram, largest_pn, deliver,
                    )?;
                    floor = floor.max(f);
                }
            }
        }
        self.recv.on_packet(pn, now, eliciting, self.p.ack_frequency, self.p.max_ack_delay);
        if let Some(f) = floor {
            self.recv.raise_floor(f);
        }
        self.observe_progress(now);
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram.data.len() as u64;
        self.stats.last_received = now;
        Ok(PacketOutcome::Accepted { close })
    }

    #[allow(clippy::too_many_arguments)] // one frame's fields, passed apart to avoid a struct copy
    fn on_message(
        &mut self,
        class: Class,
        stream: u8,
        seq16: u64,
        chunk: Option<(u32, u32)>,
        data: &[u8],
        datagram: &mut Datagram<'_>,
        largest_pn: u64,
        deliver: &mut impl FnMut(Delivered),
    ) -> Result<Option<u64>, ProtocolViolation> {
        let max_message = self.p.max_message;
        let delivered = &mut self.stats.messages_received;
        let mut emit = |payload| {
            *delivered += 1;
            deliver(Delivered { class, stream, payload });
        };
        let space = match class {
            Class::ReliableUnordered => &mut self.unordered_in,
            Class::ReliableOrdered => {
                let s = stream as usize;
                if self.ordered_in.len() <= s {
                    self.ordered_in.resize_with(s + 1, || RecvReliable::new(true));
                }
                &mut self.ordered_in[s]
            }
            Class::Unreliable | Class::Sequenced => {
                let sequenced = class == Class::Sequenced;
                if let Some(m) = self.unreliable_in.on_frame(
                    sequenced,
                    stream,
                    seq16,
                    chunk,
                    data,
                    datagram,
                    max_message,
                )? {
                    emit(m);
                }
                return Ok(None);
            }
        };
        let chunk = InChunk { seq16, chunk, data };
        let (outcome, floor) = space.on_chunk(
            chunk,
            datagram,
            largest_pn,
            max_message,
            &mut self.credit,
            &mut emit,
        )?;
        if outcome == Outcome::Duplicate {
            self.stats.duplicates += 1;
        }
        Ok(floor)
    }

    /// Smoothed RTT.
    pub fn rtt(&self) -> Duration {
        self.rtt.smoothed()
    }

    /// When the last ack-eliciting datagram went out.
    pub fn last_eliciting_sent(&self) -> Option<Instant> {
        self.last_eliciting_sent
    }

    /// Whether a new `MAX_DATA` should go out: a quarter of the window was released since the
    /// last one, or the peer may be blocked (what it may still send would not fit one chunk).
    fn max_data_due(&self) -> Option<u64> {
        let c = &self.credit;
        let limit = c.limit();
        if self.max_data_resend {
            return Some(limit.max(c.advertised));
        }
        if limit <= c.advertised {
            return None;
        }
        let quarter = limit - c.advertised >= c.window / 4;
        let starved =
            c.advertised - c.charged.min(c.advertised) < self.p.chunk_size as u64 + CHUNK_COST;
        (quarter || starved).then_some(limit)
    }

    fn has_new_data(&self) -> bool {
        !self.sender.retransmit.is_empty() || self.sender.ring_len() > 0
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        s.rtt = self.rtt.smoothed();
        s.rtt_var = self.rtt.var();
        s.min_rtt = self.rtt.min();
        s.messages_in_flight = self.sender.messages_in_flight;
        s.bytes_in_flight = self.bytes_in_flight;
        s.congestion_window = self.cc.window();
        s
    }

    /// Counts a datagram dropped before it reached the channel (e.g. undecodable).
    pub fn count_malformed(&mut self) {
        self.stats.malformed += 1;
    }

    /// Counts a protected datagram that failed authentication (dropped, never decoded).
    pub fn count_unauthentic(&mut self) {
        self.stats.unauthentic += 1;
    }

    /// Counts a protected datagram refused by the replay window.
    pub fn count_replayed(&mut self) {
        self.stats.duplicates += 1;
    }

    /// Counts bytes a datagram carried beyond what the channel wrote or read (the tag of a
    /// protected packet): `sent` or received.
    pub fn count_overhead(&mut self, sent: bool, bytes: usize) {
        if sent {
            self.stats.bytes_sent += bytes as u64;
        } else {
            self.stats.bytes_received += bytes as u64;
        }
    }

    /// The full packet number of a received packet, from its header's truncated one (what
    /// [`Self::handle_packet`] will take it for). Changes nothing.
    pub fn expand_pn(&self, pn_truncated: u32, pn_len: u8) -> u64 {
        let expected = self.recv.largest().map_or(0, |l| l + 1);
        seq::expand(expected, pn_truncated.into(), u32::from(pn_len) * 8)
    }

    /// The number of the packet [`Self::write_packet`] wrote last.
    pub fn last_sent_pn(&self) -> u64 {
        self.next_pn.saturating_sub(1)
    }
}

/// The largest message a session accepts for `class`, given the peer's receive window
/// (`peer_window` 0 means not known yet: only the configured maximum applies).
pub fn max_message_for(cfg: &TransportConfig, peer_window: u64, class: Class) -> usize {
    max_message_for_params(cfg.max_message_size, cfg.chunk_size(), peer_window, class)
}

fn max_message_for_params(max: usize, chunk_size: usize, peer_window: u64, class: Class) -> usize {
    if !class.is_reliable() || peer_window == 0 {
        return max;
    }
    // Flow control: a message costs its bytes plus per-chunk bookkeeping, and must fit the
    // peer's whole window or it could never be sent.
    let per_chunk = CHUNK_COST as usize;
    let window = usize::try_from(peer_window).unwrap_or(usize::MAX);
    let fit = window.saturating_mul(chunk_size) / (chunk_size + per_chunk);
    max.min(fit.saturating_sub(per_chunk))
}

#[cfg(test)]
mod tests;
