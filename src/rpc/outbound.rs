//! The calls one session sent and awaits answers to, whichever side of the session sends them:
//! each gets a request id and a place in the correlation table (its deadline is data there,
//! not a timer), its request is written on the grain's ordered stream, and its
//! server-independent part is kept (no copy) so it can be sent again elsewhere. An answer takes
//! it out; a cancel or an expiry takes it out and tells the callee. What the sender's policies
//! keep with a call (routing, retries) rides along as `K`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::call::{CallCell, CallKind};
use super::encode::PREFIX_GAP;
use crate::interface::DeliveryClass;
use crate::proto::ids::RequestId;
use crate::proto::in_flight::InFlight;
use crate::proto::wire::rpc;
use crate::transport::{Connection, Delivery};

/// A call sent and awaiting its answer.
#[derive(Debug)]
pub(crate) struct Sent<K> {
    pub(crate) cell: Arc<CallCell>,
    pub(crate) stream: u8,
    pub(crate) flags: u8,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    /// The request's server-independent part, to send it again elsewhere.
    pub(crate) body: Bytes,
    /// What the sender's policies keep with it.
    pub(crate) kept: K,
}

/// How a request travels: the grain's ordered stream (reliable calls), or once, unreliably
/// (`#[unreliable]`), or once as a sequenced update numbered `seq` (`#[sequenced]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lane {
    pub(crate) stream: u8,
    pub(crate) class: DeliveryClass,
    /// A sequenced update's number (grows with every update the session sends).
    pub(crate) seq: u64,
    /// A stream call: the window it opens with (its items come back on `stream`).
    pub(crate) open: Option<u32>,
    /// An `#[exactly_once]` call: its id (the same each time it is sent).
    pub(crate) once: Option<u64>,
}

impl Lane {
    /// The transport's delivery for it.
    pub(crate) fn delivery(self) -> Delivery {
        match self.class {
            DeliveryClass::ReliableOrdered => Delivery::reliable_ordered(self.stream),
            _ => Delivery::Unreliable,
        }
    }
}

/// A call about to be sent: what waits for its answer, and what goes in the table with it.
#[derive(Debug)]
pub(crate) struct Awaited<K> {
    pub(crate) cell: Arc<CallCell>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) kept: K,
}

/// The calls one session sent and awaits. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbound<K> {
    table: InFlight<Sent<K>>,
}

impl<K> Default for Outbound<K> {
    fn default() -> Self {
        Self { table: InFlight::new() }
    }
}

impl<K> Outbound<K> {
    /// Writes request `frame` ([`PREFIX_GAP`] bytes of room, then its body; `flags` for its
    /// head byte) on `conn` as `lane` says, to a callee that hosts its grain type at
    /// `type_index`. A call gets an id and a place in the table, returned; a one-way call (or
    /// a sequenced update) none.
    pub(crate) fn send(
        &mut self,
        conn: &Connection,
        mut frame: BytesMut,
        flags: u8,
        type_index: u32,
        lane: Lane,
        kind: CallKind<Awaited<K>>,
    ) -> Option<RequestId> {
        let stream = lane.stream;
        let id = kind.into_call().map(|a| {
            let deadline = a.deadline;
            let sent = Sent {
                cell: a.cell,
                stream,
                flags,
                started: a.started,
                deadline,
                body: Bytes::new(),
                kept: a.kept,
            };
            self.table.insert(sent, deadline)
        });
        let start = if let (Some(window), Some(id)) = (lane.open, id) {
            let start = PREFIX_GAP - rpc::stream_open_prefix_len(id, type_index, window);
            let prefix = &mut frame[start..PREFIX_GAP];
            rpc::encode_stream_open_prefix(prefix, id, type_index, flags, window, stream);
            start
        } else if let (Some(call_id), Some(id)) = (lane.once, id) {
            let start = PREFIX_GAP - rpc::once_prefix_len(id, type_index);
            rpc::encode_once_prefix(&mut frame[start..PREFIX_GAP], call_id, id, type_index, flags);
            start
        } else if lane.class == DeliveryClass::Sequenced && id.is_none() {
            let start = PREFIX_GAP - rpc::update_prefix_len(lane.seq, type_index);
            rpc::encode_update_prefix(&mut frame[start..PREFIX_GAP], lane.seq, type_index, flags);
            start
        } else {
            let start = PREFIX_GAP - rpc::request_prefix_len(id, type_index);
            rpc::encode_request_prefix(&mut frame[start..PREFIX_GAP], id, type_index, flags);
            start
        };
        let mut frame = frame.freeze();
        if let Some(sent) = id.and_then(|id| self.table.get_mut(id)) {
            // A reference to the same buffer (no copy), in case it must go elsewhere.
            sent.body = frame.slice(PREFIX_GAP..);
        }
        frame.advance(start);
        conn.push(lane.delivery(), frame);
        id
    }

    /// The call `id`, pending.
    pub(crate) fn get(&self, id: RequestId) -> Option<&Sent<K>> {
        self.table.get(id)
    }

    /// Grants the callee of stream call `id` `more` items (nothing if it ended).
    pub(crate) fn credit(&self, conn: &Connection, id: RequestId, more: u32) {
        if let Some(sent) = self.table.get(id) {
            let mut out = Vec::with_capacity(12);
            rpc::encode_stream_credit(&mut out, id, more);
            conn.push(Delivery::reliable_ordered(sent.stream), Bytes::from(out));
        }
    }

    /// The call `id` was answered: out of the table (`None`: late, or cancelled).
    pub(crate) fn take(&mut self, id: RequestId) -> Option<Sent<K>> {
        self.table.remove(id)
    }

    /// Gives up on call `id` and tells the callee over `conn`.
    pub(crate) fn cancel(&mut self, conn: &Connection, id: RequestId) -> Option<Sent<K>> {
        let sent = self.table.remove(id)?;
        send_cancel(conn, sent.stream, id);
        Some(sent)
    }

    /// Takes out every call whose deadline passed by `now`, telling the callee over `conn`;
    /// `f` gets each.
    pub(crate) fn expire(&mut self, conn: &Connection, now: Instant, mut f: impl FnMut(Sent<K>)) {
        self.table.expire(now, |id, sent| {
            send_cancel(conn, sent.stream, id);
            f(sent);
        });
    }

    /// Takes out every call (the session is gone); `f` gets each.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(Sent<K>)) {
        self.table.drain(|_, sent| f(sent));
    }

    /// The earliest deadline of a call in the table.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.table.next_deadline()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// How many calls await their answers.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The calls in the table, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Sent<K>> {
        self.table.values()
    }
}

/// A sent call's request to send again (elsewhere): room for the prefix, then its body carrying
/// `remaining` as its deadline (rounded up to a millisecond).
pub(crate) fn resend_frame<K>(sent: &Sent<K>, remaining: Duration) -> BytesMut {
    let body = &sent.body;
    let mut frame = BytesMut::with_capacity(PREFIX_GAP + body.len() + 4);
    frame.put_bytes(0, PREFIX_GAP);
    let ms = remaining.as_micros().div_ceil(1000).min(u32::MAX.into()).max(1) as u32;
    if rpc::rewrite_body_deadline(&mut frame, body, sent.flags, ms).is_none() {
        frame.extend_from_slice(body);
    }
    frame
}

fn send_cancel(conn: &Connection, stream: u8, id: RequestId) {
    let mut out = Vec::with_capacity(8);
    rpc::encode_cancel(&mut out, id);
    conn.push(Delivery::reliable_ordered(stream), Bytes::from(out));
}
