//! A session's handle ([`Connection`]) and the state it shares with the session in the
//! endpoint's task (queued bytes and messages, parking, the command inbox).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::{DisconnectReason, SendError};
use crate::proto::channel::max_message_for;
use crate::proto::channel::send::MESSAGE_COST;
use crate::proto::ids::PeerId;
use crate::proto::stats::ConnectionStats;

use super::laminar::Command;
use super::security::ClientIdentity;
use super::share::AddressUsage;
use super::{Delivery, EndpointShared, pass};

const CONNECTING: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;

/// State shared between a connection's handles and its session in the endpoint's task.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) peer: PeerId,
    /// The peer's address now (a protected session moves with its client: see `conn`).
    addr: Mutex<SocketAddr>,
    /// The address it was opened from: what its budgets are charged to, for its whole life.
    pub(crate) opened_from: SocketAddr,
    pub(crate) endpoint: Arc<EndpointShared>,
    /// What the sessions of its address hold together (it charges its queued bytes there too).
    pub(crate) address: Arc<AddressUsage>,
    /// The session's command inbox, drained by the endpoint's task every pass.
    pub(crate) inbox: crossbeam::channel::Sender<Command>,
    /// Send-buffer bytes charged and not yet released (see `TransportConfig::send_buffer`).
    pub(crate) queued: AtomicUsize,
    /// Messages charged and not yet released.
    pub(crate) queued_msgs: AtomicUsize,
    /// The session is parked: idle, outside laminar's manager until it has work. A handle
    /// that queues a command for it puts its address on the endpoint's ready list.
    pub(crate) parked: AtomicBool,
    state: AtomicU8,
    reason: OnceLock<DisconnectReason>,
    pub(crate) peer_window: AtomicU64,
    /// The latest statistics, published by the endpoint's task after each pass that touched
    /// this session. A plain mutex: held only to copy a small value, never across an await, so
    /// that `stats()` can be called synchronously from a game loop.
    pub(crate) stats: Mutex<ConnectionStats>,
    /// Notified when send-buffer bytes are released or the session closes.
    pub(crate) room: Notify,
    /// Server: the client its verified token names (set before the handle exists).
    pub(crate) identity: Option<Arc<ClientIdentity>>,
    /// Its packets are encrypted and authenticated (set before the handle exists).
    pub(crate) protected: bool,
    /// The peer opened it (set before the handle exists).
    pub(crate) incoming: bool,
    /// It was told to give up its slot to a newcomer (see `GatedSocket::displaceable`).
    pub(crate) shedding: AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(
        peer: PeerId,
        addr: SocketAddr,
        endpoint: Arc<EndpointShared>,
        address: Arc<AddressUsage>,
        inbox: crossbeam::channel::Sender<Command>,
        now: Instant,
    ) -> Self {
        Self {
            peer,
            addr: Mutex::new(addr),
            opened_from: addr,
            endpoint,
            address,
            inbox,
            queued: AtomicUsize::new(0),
            queued_msgs: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            state: AtomicU8::new(CONNECTING),
            reason: OnceLock::new(),
            peer_window: AtomicU64::new(0),
            stats: Mutex::new(ConnectionStats::new(now)),
            room: Notify::new(),
            identity: None,
            protected: false,
            incoming: false,
            shedding: AtomicBool::new(false),
        }
    }

    /// The peer's address now.
    pub(crate) fn addr(&self) -> SocketAddr {
        *crate::sync::lock(&self.addr)
    }

    /// The session moved with its peer to `addr`.
    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        *crate::sync::lock(&self.addr) = addr;
    }

    pub(crate) fn set_open(&self, peer_window: u64) {
        self.peer_window.store(peer_window, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
    }

    pub(crate) fn set_closed(&self, reason: DisconnectReason) {
        let _ = self.reason.set(reason);
        self.state.store(CLOSED, Ordering::Release);
        self.room.notify_waiters();
    }

    pub(crate) fn release(&self, bytes: usize, messages: usize) {
        if bytes > 0 {
            self.endpoint.queued_total.fetch_sub(bytes, Ordering::Relaxed);
            self.address.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            self.queued_msgs.fetch_sub(messages, Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }

    /// Queues a command for the session (it wakes nothing: callers decide).
    pub(crate) fn command(&self, cmd: Command) {
        // The receiver lives as long as the session; if it is gone, the command has no object.
        let _ = self.inbox.send(cmd);
        // Paired with the task's parking (a SeqCst store, then a look at the inbox): either
        // the task sees this command, or this sees the session parked and asks for it.
        if self.parked.load(Ordering::SeqCst) {
            crate::sync::lock(&self.endpoint.ready).push(self.addr());
            self.endpoint.any_ready.store(true, Ordering::Release);
        }
    }
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        // Whatever is still charged here (a command that raced the session's end) no longer
        // counts toward the endpoint's total.
        let left = *self.queued.get_mut();
        self.endpoint.queued_total.fetch_sub(left, Ordering::Relaxed);
        self.address.queued.fetch_sub(left, Ordering::Relaxed);
    }
}

/// A handle to one session. Cheap to clone; all clones refer to the same session. Dropping
/// handles does not close the session: call [`Connection::close`].
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared.peer)
            .field("addr", &self.shared.addr())
            .finish()
    }
}

impl Connection {
    /// This session's id on this endpoint.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer
    }

    /// The peer's address now: a protected session follows its client to a new address (see
    /// `EndpointStats::sessions_migrated`).
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.addr()
    }

    /// The client its verified connect token names (server side of a session opened with a
    /// token; `None` on a trusted network and on the client side).
    pub fn client_identity(&self) -> Option<&Arc<ClientIdentity>> {
        self.shared.identity.as_ref()
    }

    /// Whether its packets are encrypted and authenticated (it was opened with a token).
    pub fn is_protected(&self) -> bool {
        self.shared.protected
    }

    /// Whether the session is established and not closed.
    pub fn is_connected(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OPEN
    }

    /// Why the session ended, once it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.shared.reason.get().copied()
    }

    /// The largest message this connection accepts for `delivery`.
    pub fn max_message_size(&self, delivery: Delivery) -> usize {
        let cfg = &self.shared.endpoint.config;
        max_message_for(cfg, self.shared.peer_window.load(Ordering::Acquire), delivery.split().0)
    }

    /// The largest message that travels in one datagram (one chunk): what an unreliable
    /// message must fit, so that it is never lost in pieces.
    pub fn max_single_datagram(&self) -> usize {
        self.shared.endpoint.config.chunk_size()
    }

    /// Queues a message. Never blocks: fails at once if the message is too large, the send
    /// buffer is full, or the session is closed.
    pub fn send(&self, delivery: Delivery, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let payload = payload.into();
        self.try_charge(delivery, payload.len())?;
        self.enqueue(delivery, payload);
        Ok(())
    }

    /// Queues a message, waiting for room in the send buffer if it is full.
    pub async fn send_wait(
        &self,
        delivery: Delivery,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_charge(delivery, payload.len()) {
                Err(SendError::BufferFull { .. }) => room.await,
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        self.enqueue(delivery, payload);
        Ok(())
    }

    /// Bytes queued on this connection and not yet acknowledged (or sent, for unreliable
    /// messages), with a bookkeeping cost per message.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Messages queued on this connection and not yet acknowledged (or sent).
    pub fn queued_messages(&self) -> usize {
        self.shared.queued_msgs.load(Ordering::Acquire)
    }

    /// Bytes queued on every session of this connection's address and not yet acknowledged
    /// (counted as [`queued_bytes`](Self::queued_bytes)).
    pub(crate) fn address_queued_bytes(&self) -> usize {
        self.shared.address.queued.load(Ordering::Relaxed)
    }

    /// The endpoint this connection belongs to.
    pub(crate) fn endpoint(&self) -> &EndpointShared {
        &self.shared.endpoint
    }

    /// Gives up on the peer at once (it does not drain what is sent to it, or holds more than
    /// its share while others need room): its queued data is dropped and the session closes as
    /// [`Stalled`](DisconnectReason::Stalled).
    pub(crate) fn stall(&self) {
        self.command(Command::Stall);
    }

    fn try_charge(&self, delivery: Delivery, len: usize) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Closed);
        }
        let max = self.max_message_size(delivery);
        if len > max {
            return Err(SendError::MessageTooLarge { size: len, max });
        }
        let limit = self.shared.endpoint.config.send_buffer;
        let cost = len + MESSAGE_COST;
        let before = self.shared.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > limit && before > 0 {
            self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(SendError::BufferFull { queued: before, limit });
        }
        self.shared.queued_msgs.fetch_add(1, Ordering::AcqRel);
        self.shared.endpoint.queued_total.fetch_add(cost, Ordering::Relaxed);
        self.shared.address.queued.fetch_add(cost, Ordering::Relaxed);
        Ok(())
    }

    fn enqueue(&self, delivery: Delivery, payload: Bytes) {
        let (class, stream) = delivery.split();
        self.command(Command::Send { class, stream, payload });
    }

    /// Queues a message for the endpoint's task to transmit, the one way RPC code sends: from
    /// the endpoint's service (in `poll` it leaves in the same pass, in `event` before the
    /// task waits again) or from any other task (which wakes the endpoint's). What is sent is
    /// bounded by the calls admitted, which look at [`queued_bytes`](Self::queued_bytes); as a
    /// last resort, a peer that lets more than twice `send_buffer` pile up is given up on (the
    /// session closes as [`Stalled`](DisconnectReason::Stalled)) and the message is dropped
    /// (`false`).
    pub(crate) fn push(&self, delivery: Delivery, payload: Bytes) -> bool {
        let cost = payload.len() + MESSAGE_COST;
        let limit = self.shared.endpoint.config.send_buffer.saturating_mul(2);
        let before = self.shared.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > limit && before > 0 {
            self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
            self.command(Command::Stall);
            return false;
        }
        self.shared.queued_msgs.fetch_add(1, Ordering::AcqRel);
        self.shared.endpoint.queued_total.fetch_add(cost, Ordering::Relaxed);
        self.shared.address.queued.fetch_add(cost, Ordering::Relaxed);
        let (class, stream) = delivery.split();
        self.shared.command(Command::Send { class, stream, payload });
        if pass::queued(&self.shared.endpoint) {
            self.shared.endpoint.wake.notify();
        }
        true
    }

    fn command(&self, cmd: Command) {
        self.shared.command(cmd);
        self.shared.endpoint.wake.notify();
    }

    /// Closes the session with an application `code` the peer will see
    /// ([`DisconnectReason::ClosedByPeer`]). Queued reliable messages are still delivered, for
    /// up to `close_linger`.
    pub fn close(&self, code: u32) {
        self.command(Command::Close { code });
    }

    /// Ends the session at once, without flushing, reporting `reason` locally (the peer sees
    /// the session go silent). For a peer judged dead.
    pub(crate) fn abort(&self, reason: DisconnectReason) {
        self.command(Command::Abort { reason });
    }

    /// Sends an ack-eliciting packet now, whatever the keepalive schedule (a `PING` if there is
    /// nothing else to send): a probe of a peer that owes an answer and has gone quiet. The
    /// peer's ack refreshes [`ConnectionStats::last_received`]; a peer that restarted answers
    /// with a `RESET`, which ends the session ([`DisconnectReason::Reset`]).
    pub fn ping(&self) {
        self.command(Command::Ping);
    }

    /// Waits until the session has ended and returns why.
    pub async fn closed(&self) -> DisconnectReason {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(reason) = self.disconnect_reason() {
                return reason;
            }
            room.await;
        }
    }

    /// The latest statistics snapshot (refreshed by the endpoint's task as it works).
    pub fn stats(&self) -> ConnectionStats {
        *crate::sync::lock(&self.shared.stats)
    }
}
