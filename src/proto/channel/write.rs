//! Writing datagrams: the ack, control frames, retransmissions first, then new data taken
//! round-robin from the spaces within the windows and the credit, packed up to the datagram
//! size.

use std::time::Instant;

use super::send::{CHUNK_COST, ChunkRef, SentPacket, UNORDERED, UNRELIABLE};
use super::{CHUNK_FRAME_HEADER, Channel, MAX_SENT_PACKETS, seq};
use crate::proto::wire::{self, Class, CloseKind, MessageHeader};

impl Channel {
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
        self.observe_progress(now);
        let ack_due = self.recv.ack_deadline().is_some_and(|d| d <= now);
        if !ack_due
            && !ping
            && close.is_none()
            && self.path_respond.is_none()
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
        if let Some(token) = self.path_respond.take() {
            wire::encode_path(out, true, token);
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
            // The last message's length is implied by the datagram's, unless padding follows.
            let saved = wire::message_header_len(&h, false) - wire::message_header_len(&h, true);
            if out.len() - saved >= wire::RESET_LEN {
                elide_last_length(out, start, &h);
            }
        }
        // An eliciting packet is never shorter than the RESET a restarted peer answers it with.
        while eliciting && out.len() < wire::RESET_LEN {
            wire::encode_ping(out);
        }
        if ack_largest.is_some() {
            self.recv.on_ack_sent();
        }
        if let Some(m) = max_data {
            // The limit we enforce only ever rises: the peer may act on any value we sent.
            self.credit.advertised = self.credit.advertised.max(m);
            self.max_data_resend = false;
        }
        self.record_sent(now, out.len(), eliciting, chunks, ack_largest, max_data);
        true
    }

    /// Writes a packet holding only a `PATH_CHALLENGE` with `token` into `out` (cleared first):
    /// what a server sends to a client's new address to check the client receives there.
    /// Not ack-eliciting for us (nothing in it is resent: another challenge is).
    pub fn write_path_challenge(&mut self, now: Instant, tag: u32, token: u64, out: &mut Vec<u8>) {
        out.clear();
        let pn = self.next_pn;
        let pn_len = seq::pn_len(pn, self.largest_acked);
        wire::encode_data_header(out, tag, pn as u32, pn_len);
        wire::encode_path(out, false, token);
        let chunks = self.sender.take_chunk_vec();
        self.record_sent(now, out.len(), false, chunks, None, None);
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
