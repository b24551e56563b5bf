//! The client side of RPC, run inside the endpoint's task ([`Service`]): it owns the
//! correlation tables (one per server session), so calls are inserted, completed, expired and
//! cancelled by their one owner, and a response completes its call within the pass that
//! received it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam::channel::Receiver;

use super::cell::CallCell;
use super::{ClientShared, ServerView};
use crate::error::CallError;
use crate::proto::ids::{PeerId, RequestId};
use crate::proto::in_flight::InFlight;
use crate::proto::manifest::Manifest;
use crate::proto::wire::rpc::{self, RpcFrame, Status};
use crate::sync::lock;
use crate::transport::{Connection, Delivery, Event, Service};

/// Room left in front of an encoded call for its head byte and request id.
pub(crate) const PREFIX_GAP: usize = 8;

/// What call futures ask of the service.
#[derive(Debug)]
pub(crate) enum ClientCmd {
    /// Send a request: `frame` holds [`PREFIX_GAP`] free bytes, then the call's routing and
    /// arguments; `flags` go into the head byte.
    Call {
        peer: PeerId,
        frame: BytesMut,
        flags: u8,
        stream: u8,
        /// The call's deadline, from when the service takes it (on the endpoint's clock,
        /// which is tokio's virtual one on the simulated network).
        timeout: Duration,
        cell: Arc<CallCell>,
    },
    /// A caller gave up on a call.
    Cancel { peer: PeerId, id: RequestId },
}

#[derive(Debug)]
struct Pending {
    cell: Arc<CallCell>,
    stream: u8,
    started: Instant,
}

struct PeerState {
    conn: Connection,
    in_flight: InFlight<Pending>,
}

pub(crate) struct ClientService {
    shared: Arc<ClientShared>,
    cmds: Receiver<ClientCmd>,
    peers: HashMap<PeerId, PeerState>,
}

impl ClientService {
    pub(crate) fn new(shared: Arc<ClientShared>, cmds: Receiver<ClientCmd>) -> Self {
        Self { shared, cmds, peers: HashMap::new() }
    }

    fn fail(&self, cell: &CallCell, error: CallError<Infallible>, timeout: bool, now: Instant) {
        if cell.complete(Err(error)) {
            lock(&self.shared.accounting).failure(timeout, now);
            self.shared.finished_one();
        }
    }

    fn call(&mut self, cmd: ClientCmd, now: Instant) {
        match cmd {
            ClientCmd::Call { peer, mut frame, flags, stream, timeout, cell } => {
                let (started, deadline) = (now, now + timeout);
                lock(&self.shared.accounting).total += 1;
                if cell.is_cancelled() {
                    return; // dropped before it was sent; the drop counted it finished
                }
                let Some(p) = self.peers.get_mut(&peer) else {
                    self.fail(&cell, CallError::NotConnected, false, now);
                    return;
                };
                let id =
                    p.in_flight.insert(Pending { cell: cell.clone(), stream, started }, deadline);
                let len = rpc::request_prefix_len(id);
                let start = PREFIX_GAP - len;
                rpc::encode_request_prefix(&mut frame[start..PREFIX_GAP], id, flags);
                frame.advance(start);
                p.conn.push(Delivery::reliable_ordered(stream), frame.freeze());
                if !cell.set_id(peer, id) {
                    // Dropped while we sent it: take it back.
                    self.cancel(peer, id);
                }
            }
            ClientCmd::Cancel { peer, id } => self.cancel(peer, id),
        }
    }

    fn cancel(&mut self, peer: PeerId, id: RequestId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if let Some(pending) = p.in_flight.remove(id) {
            send_cancel(&p.conn, pending.stream, id);
        }
    }

    fn response(
        &mut self,
        peer: PeerId,
        id: RequestId,
        status: Status,
        payload: Bytes,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(pending) = p.in_flight.remove(id) else { return }; // late, or cancelled
        if pending.cell.complete(Ok((status, payload))) {
            self.shared.finished_one();
            let mut acc = lock(&self.shared.accounting);
            if matches!(status, Status::Ok) {
                acc.success(now.saturating_duration_since(pending.started), now);
            } else {
                acc.failure(false, now);
            }
        }
    }

    fn message(&mut self, peer: PeerId, payload: Bytes, now: Instant) {
        let (id, status, head) = match rpc::decode_rpc(&payload) {
            Ok(RpcFrame::Response { id, status, payload: body }) => {
                (id, status, payload.len() - body.len())
            }
            Ok(RpcFrame::Manifest(body)) => {
                self.manifest(peer, body);
                return;
            }
            Ok(other) => {
                tracing::debug!(?peer, frame = ?other, "unexpected frame from a server; ignored");
                return;
            }
            Err(error) => {
                tracing::debug!(?peer, %error, "undecodable frame from a server; ignored");
                return;
            }
        };
        let mut body = payload;
        body.advance(head);
        self.response(peer, id, status, body, now);
    }

    fn manifest(&mut self, peer: PeerId, body: &[u8]) {
        match Manifest::decode(body) {
            Ok(m) => self.shared.publish(|v| {
                if let Some(s) = v.server.as_mut().filter(|s| s.peer == peer) {
                    s.manifest = Some(Arc::new(m));
                }
            }),
            Err(error) => tracing::warn!(?peer, %error, "undecodable manifest from a server"),
        }
    }
}

fn send_cancel(conn: &Connection, stream: u8, id: RequestId) {
    let mut out = Vec::with_capacity(8);
    rpc::encode_cancel(&mut out, id);
    conn.push(Delivery::reliable_ordered(stream), Bytes::from(out));
}

impl Service for ClientService {
    fn poll(&mut self, now: Instant) {
        while let Ok(cmd) = self.cmds.try_recv() {
            self.call(cmd, now);
        }
        let mut expired = Vec::new();
        for (peer, p) in &mut self.peers {
            p.in_flight.expire(now, |id, pending| {
                send_cancel(&p.conn, pending.stream, id);
                expired.push((*peer, pending.cell));
            });
        }
        for (_, cell) in expired {
            self.fail(&cell, CallError::Timeout, true, now);
        }
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected(conn) => {
                let peer = conn.peer_id();
                self.shared.publish(|v| {
                    v.server =
                        Some(ServerView { peer, conn: conn.clone(), manifest: None, gone: None });
                });
                self.peers.insert(peer, PeerState { conn, in_flight: InFlight::new() });
            }
            Event::Message { peer, payload, .. } => self.message(peer, payload, now),
            Event::Disconnected { peer, reason } => {
                if let Some(mut p) = self.peers.remove(&peer) {
                    let mut cells = Vec::new();
                    p.in_flight.drain(|_, pending| cells.push(pending.cell));
                    for cell in cells {
                        self.fail(&cell, CallError::Disconnected(reason), false, now);
                    }
                }
                self.shared.publish(|v| {
                    if let Some(s) = v.server.as_mut().filter(|s| s.peer == peer) {
                        s.gone = Some(reason);
                    }
                });
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.peers.values_mut().filter_map(|p| p.in_flight.next_deadline()).min()
    }

    fn shutdown(&mut self, _now: Instant) {}
}
