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
pub(crate) mod recv;
pub(crate) mod rtt;
pub(crate) mod send;
pub(crate) mod seq;

use std::time::{Duration, Instant};

use bytes::Bytes;

use self::ack::RecvPackets;
use self::congestion::Congestion;
use self::recv::{Credit, InChunk, Outcome, RecvReliable, RecvUnreliable};
use self::rtt::RttEstimator;
use self::send::{CHUNK_COST, ChunkRef, Sender, SentPacket, UNORDERED, UNRELIABLE};
use crate::config::TransportConfig;
use crate::error::{ProtocolViolation, SendError};
use crate::proto::stats::ConnectionStats;
use crate::proto::wire::{self, Class, CloseKind, Frame, FrameReader, MessageHeader};

/// Bound on the sent-packet table; beyond it the oldest entries that ask for no ack are
/// resolved (they only carried acks).
const MAX_SENT_PACKETS: usize = 1 << 16;
/// Weight of one packet in the loss estimate (horizon of about 100 packets).
const LOSS_EWMA: f64 = 1.0 / 100.0;

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

/// A received datagram, copied into a shared buffer only when a second message needs it.
#[derive(Debug)]
pub struct Datagram<'a> {
    data: &'a [u8],
    shared: Option<Bytes>,
    handed_out: bool,
}

impl<'a> Datagram<'a> {
    /// Wraps a received datagram.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, shared: None, handed_out: false }
    }

    /// An owned copy of `part`, a sub-slice of this datagram. The first message is copied
    /// alone (one allocation); later ones share one copy of the whole datagram.
    fn bytes(&mut self, part: &[u8]) -> Bytes {
        let offset = (part.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
        if offset > self.data.len() || offset + part.len() > self.data.len() {
            return Bytes::copy_from_slice(part);
        }
        if !self.handed_out {
            self.handed_out = true;
            return Bytes::copy_from_slice(part);
        }
        let shared = self.shared.get_or_insert_with(|| Bytes::copy_from_slice(self.data));
        shared.slice(offset..offset + part.len())
    }
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
            stats: ConnectionStats::new(now),
        }
    }

    /// Seeds the RTT estimate (the handshake's round trip).
    pub fn set_initial_rtt(&mut self, sample: Duration) {
        self.rtt.update(sample, Duration::ZERO);
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

    /// Bytes charged to the send buffer (queued + unacknowledged, with per-message overhead).
    pub fn queued_bytes(&self) -> usize {
        self.sender.queued_bytes
    }

    /// Bytes released from the send buffer since the last call.
    pub fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.sender.released_bytes)
    }

    /// Whether every reliable message was acknowledged and nothing is queued.
    pub fn is_flushed(&self) -> bool {
        self.sender.messages_in_flight == 0
    }

    /// Drops everything still queued (the session is closing for good).
    pub fn discard_queued(&mut self) {
        self.sender = Sender::new();
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
        let expected = self.recv.largest().map_or(0, |l| l + 1);
        let pn = seq::expand(expected, pn_truncated.into(), u32::from(pn_len) * 8);
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
                    let data = datagram.bytes(m.payload);
                    let f = self
                        .on_message(m.class, m.stream, m.seq, m.chunk, data, largest_pn, deliver)?;
                    floor = floor.max(f);
                }
            }
        }
        self.recv.on_packet(pn, now, eliciting, self.p.ack_frequency, self.p.max_ack_delay);
        if let Some(f) = floor {
            self.recv.raise_floor(f);
        }
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
        data: Bytes,
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
                    max_message,
                )? {
                    emit(m);
                }
                return Ok(None);
            }
        };
        let chunk = InChunk { seq16, chunk, data };
        let (outcome, floor) =
            space.on_chunk(chunk, largest_pn, max_message, &mut self.credit, &mut emit)?;
        if outcome == Outcome::Duplicate {
            self.stats.duplicates += 1;
        }
        Ok(floor)
    }

    fn on_ack(&mut self, now: Instant, a: &wire::AckFrame<'_>) -> Result<(), ProtocolViolation> {
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
        }
        self.detect_lost(now);
        Ok(())
    }

    fn detect_lost(&mut self, now: Instant) {
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

    fn lose(&mut self, i: usize, now: Instant) {
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
            // Our credit update was lost: advertise again.
            self.credit.advertised = self.max_data_acked;
        }
    }

    fn pop_resolved(&mut self) {
        while self.sender.sent.front().is_some_and(|p| p.resolved) {
            if let Some(p) = self.sender.sent.pop_front() {
                self.sender.recycle_chunk_vec(p.chunks);
            }
        }
    }

    /// When the retransmission timer fires, if it is armed.
    fn rto_deadline(&self) -> Option<Instant> {
        if self.bytes_in_flight == 0 {
            return None;
        }
        let rto = self.rtt.rto(self.p.max_ack_delay, self.p.min_rto, self.p.max_rto);
        let backed_off = rto.saturating_mul(1 << self.rto_backoff.min(16)).min(self.p.max_rto);
        Some(self.last_eliciting_sent? + backed_off)
    }

    /// The earliest instant at which [`Self::handle_timeout`] or [`Self::write_packet`] has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        [self.loss_time, self.rto_deadline(), self.recv.ack_deadline()].into_iter().flatten().min()
    }

    /// Runs the loss and retransmission timers.
    pub fn handle_timeout(&mut self, now: Instant) {
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

    /// Writes the next datagram into `out` (cleared first). `ping` asks for an ack-eliciting
    /// datagram even with no data; `close` adds a `CLOSE` frame. Returns false when there is
    /// nothing to send now.
    pub fn write_packet(
        &mut self,
        now: Instant,
        tag: u32,
        out: &mut Vec<u8>,
        ping: bool,
        close: Option<CloseKind>,
    ) -> bool {
        out.clear();
        let ack_due = self.recv.ack_deadline().is_some_and(|d| d <= now);
        if !ack_due
            && !ping
            && close.is_none()
            && !self.has_new_data()
            && self.max_data_due().is_none()
        {
            return false; // the common "nothing more" answer, without touching anything
        }
        let max = self.p.max_datagram;
        let pn = self.next_pn;
        let pn_len = seq::pn_len(pn, self.largest_acked);
        wire::encode_data_header(out, tag, pn as u32, pn_len);
        let can_elicit = self.bytes_in_flight + max as u64 <= self.cc.window();
        let data_waiting = can_elicit && self.has_new_data();
        let ack_largest =
            if self.recv.has_unreported() && (ack_due || data_waiting || ping || close.is_some()) {
                // Leave room for a full chunk when data waits.
                let budget = if data_waiting {
                    max.saturating_sub(out.len() + CHUNK_FRAME_HEADER + self.p.chunk_size)
                } else {
                    max - out.len()
                };
                self.recv.write_ack(out, now, budget)
            } else {
                None
            };
        if let Some(kind) = close {
            wire::encode_close(out, kind);
        }
        let mut eliciting = false;
        let max_data = self.max_data_due();
        if let Some(m) = max_data {
            wire::encode_max_data(out, m);
            eliciting = true;
        }
        if ping {
            wire::encode_ping(out);
            eliciting = true;
        }
        let mut chunks = self.sender.take_chunk_vec();
        let mut last_msg = None;
        if data_waiting {
            self.write_retransmissions(out, &mut chunks, &mut last_msg);
            self.write_new(out, &mut chunks, &mut last_msg);
        }
        eliciting |= last_msg.is_some();
        // An ack alone goes out only when due; written opportunistically, it is rolled back.
        if !eliciting && close.is_none() && !(ack_due && ack_largest.is_some()) {
            if ack_due {
                self.recv.clear_ack_deadline();
            }
            self.sender.recycle_chunk_vec(chunks);
            out.clear();
            return false;
        }
        if let Some((start, h)) = last_msg {
            elide_last_length(out, start, &h);
        }
        if ack_largest.is_some() {
            self.recv.on_ack_sent();
        }
        if let Some(m) = max_data {
            self.credit.advertised = m;
        }
        self.record_sent(now, out.len(), eliciting, chunks, ack_largest, max_data);
        true
    }

    fn record_sent(
        &mut self,
        now: Instant,
        size: usize,
        eliciting: bool,
        chunks: Vec<ChunkRef>,
        ack_largest: Option<u64>,
        max_data: Option<u64>,
    ) {
        let pn = self.next_pn;
        self.next_pn += 1;
        if eliciting {
            self.bytes_in_flight += size as u64;
            self.last_eliciting_sent = Some(now);
        }
        self.sender.sent.push_back(SentPacket {
            pn,
            time: now,
            size: size as u32,
            eliciting,
            resolved: false,
            chunks,
            ack_largest,
            max_data,
        });
        if self.sender.sent.len() > MAX_SENT_PACKETS {
            if let Some(i) = self.sender.sent.iter().position(|p| !p.resolved && !p.eliciting) {
                self.sender.sent[i].resolved = true;
            }
            self.pop_resolved();
        }
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        self.stats.last_sent = now;
    }

    fn chunk_bounds(&self, len: usize, chunk: u32) -> (usize, usize) {
        let start = (chunk as usize * self.p.chunk_size).min(len);
        (start, (start + self.p.chunk_size).min(len))
    }

    fn write_retransmissions(
        &mut self,
        out: &mut Vec<u8>,
        chunks: &mut Vec<ChunkRef>,
        last: &mut Option<(usize, MessageHeader)>,
    ) {
        while let Some(c) = self.sender.retransmit.front().copied() {
            let Some(msg) = self.sender.space(c.space).and_then(|s| s.msg(c.seq)) else {
                self.sender.retransmit.pop_front();
                continue;
            };
            if !self.sender.space(c.space).is_some_and(|s| s.is_unacked(&c)) {
                self.sender.retransmit.pop_front();
                continue;
            }
            let (class, stream) = space_class(c.space);
            let (a, b) = self.chunk_bounds(msg.payload.len(), c.chunk);
            let h = MessageHeader {
                class,
                stream,
                seq: c.seq,
                chunk: (msg.chunks > 1).then_some((c.chunk, msg.chunks)),
                len: b - a,
            };
            if out.len() + wire::message_header_len(&h, false) + h.len > self.p.max_datagram {
                return;
            }
            *last = Some((out.len(), h));
            wire::encode_message_header(out, &h, false);
            out.extend_from_slice(&msg.payload[a..b]);
            chunks.push(c);
            self.sender.retransmit.pop_front();
            self.stats.retransmissions += 1;
        }
    }

    fn write_new(
        &mut self,
        out: &mut Vec<u8>,
        chunks: &mut Vec<ChunkRef>,
        last: &mut Option<(usize, MessageHeader)>,
    ) {
        let mut spins = 0;
        while spins < self.sender.ring_len() {
            let Some(space) = self.sender.ring_pop() else {
                break;
            };
            let r = if space == UNRELIABLE {
                self.write_unreliable(out, last)
            } else {
                self.write_reliable(space, out, chunks, last)
            };
            match r {
                Step::Wrote { more } => {
                    spins = 0;
                    if more {
                        self.sender.schedule(space);
                    }
                }
                Step::Full => {
                    self.sender.ring_push_front(space);
                    return;
                }
                Step::Blocked => {
                    self.sender.schedule(space);
                    spins += 1;
                }
                Step::Idle => {}
            }
        }
    }

    fn write_reliable(
        &mut self,
        space: u16,
        out: &mut Vec<u8>,
        chunks: &mut Vec<ChunkRef>,
        last: &mut Option<(usize, MessageHeader)>,
    ) -> Step {
        let (max_dgram, window) = (self.p.max_datagram, self.p.stream_window);
        let (chunk_size, credit_left) =
            (self.p.chunk_size, self.peer_max_data.saturating_sub(self.credit_used));
        let Some(st) = self.sender.space_mut(space) else {
            return Step::Idle;
        };
        if !st.has_new() {
            return Step::Idle;
        }
        let seq = st.next_new;
        if seq >= st.base + window {
            return Step::Idle; // rescheduled when an ack opens the window
        }
        let chunk = st.next_new_chunk;
        let Some(msg) = st.msg(seq) else {
            return Step::Idle;
        };
        let len = msg.payload.len();
        let a = (chunk as usize * chunk_size).min(len);
        let b = (a + chunk_size).min(len);
        let cost = (b - a) as u64 + CHUNK_COST;
        if cost > credit_left {
            return Step::Blocked;
        }
        let (class, stream) = space_class(space);
        let h = MessageHeader {
            class,
            stream,
            seq,
            chunk: (msg.chunks > 1).then_some((chunk, msg.chunks)),
            len: b - a,
        };
        if out.len() + wire::message_header_len(&h, false) + h.len > max_dgram {
            return Step::Full;
        }
        *last = Some((out.len(), h));
        wire::encode_message_header(out, &h, false);
        out.extend_from_slice(&msg.payload[a..b]);
        let msg_chunks = msg.chunks;
        if chunk + 1 < msg_chunks {
            st.next_new_chunk += 1;
        } else {
            st.next_new += 1;
            st.next_new_chunk = 0;
        }
        let more = st.has_new();
        self.credit_used += cost;
        chunks.push(ChunkRef { space, seq, chunk });
        Step::Wrote { more }
    }

    fn write_unreliable(
        &mut self,
        out: &mut Vec<u8>,
        last: &mut Option<(usize, MessageHeader)>,
    ) -> Step {
        let (max_dgram, chunk_size) = (self.p.max_datagram, self.p.chunk_size);
        let Some(m) = self.sender.unreliable.front_mut() else {
            return Step::Idle;
        };
        let len = m.payload.len();
        let a = (m.next_chunk as usize * chunk_size).min(len);
        let b = (a + chunk_size).min(len);
        let h = MessageHeader {
            class: m.class,
            stream: m.stream,
            seq: m.seq,
            chunk: (m.chunks > 1).then_some((m.next_chunk, m.chunks)),
            len: b - a,
        };
        if out.len() + wire::message_header_len(&h, false) + h.len > max_dgram {
            return Step::Full;
        }
        *last = Some((out.len(), h));
        wire::encode_message_header(out, &h, false);
        out.extend_from_slice(&m.payload[a..b]);
        m.next_chunk += 1;
        if m.next_chunk >= m.chunks {
            self.sender.unreliable.pop_front();
            self.sender.release_unreliable(len);
        }
        Step::Wrote { more: !self.sender.unreliable.is_empty() }
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

enum Step {
    Wrote { more: bool },
    Full,
    Blocked,
    Idle,
}

fn space_class(space: u16) -> (Class, u8) {
    if space == UNORDERED {
        (Class::ReliableUnordered, 0)
    } else {
        (Class::ReliableOrdered, space as u8)
    }
}

/// Rewrites the last message frame without its length field: it runs to the end of the
/// datagram, which saves one or two bytes.
fn elide_last_length(out: &mut Vec<u8>, start: usize, h: &MessageHeader) {
    let with = wire::message_header_len(h, false);
    let without = wire::message_header_len(h, true);
    if start + with + h.len != out.len() {
        return; // not the last frame after all
    }
    out.copy_within(start + with.., start + without);
    out.truncate(out.len() - (with - without));
    wire::encode_message_header(&mut &mut out[start..start + without], h, true);
}

#[cfg(test)]
mod tests;
