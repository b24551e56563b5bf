//! Moving messages between peers over UDP: the public transport API.
//!
//! An [`Endpoint`] is one UDP socket and the task that drives it. It connects to peers
//! ([`Endpoint::connect`]) and, if configured to, accepts them; each session is a
//! [`Connection`] handle. Everything that happens arrives as an [`Event`] from
//! [`Endpoint::next_event`], in order per peer: `Connected`, its messages, `Disconnected`.
//!
//! Delivery classes ([`Delivery`]): reliable-ordered on 256 independent streams, reliable-
//! unordered (exactly once), unreliable, and unreliable-sequenced (latest wins per stream).
//! Messages up to `max_message_size` (default 1 MiB) of any class are chunked as needed.
//!
//! Under the hood: laminar 0.5's `ConnectionManager` with our own `Connection` (the sans-IO
//! `Session` of `proto`) and our own `DatagramSocket` behind a stateless
//! handshake gate, driven by one tokio task per socket that sleeps until the socket is
//! readable, a command arrives or the earliest protocol timer is due.

pub(crate) mod io;
mod laminar;
mod pass;
mod security;
mod share;
#[cfg(feature = "test-util")]
pub mod sim;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::TransportConfig;
use crate::error::{BindError, ConnectError, DisconnectReason, SendError};
use crate::proto::channel::max_message_for;
use crate::proto::channel::send::MESSAGE_COST;
pub use crate::proto::ids::{PeerId, StreamId};
pub use crate::proto::stats::ConnectionStats;
use crate::proto::wire::Class;
pub(crate) use crate::sync::Signal;

use self::laminar::{Command, Driver, DriverCmd};
pub(crate) use self::security::Security;
pub use self::security::{Approve, ClientIdentity};
pub(crate) use self::share::{AddressUsage, Addresses};

/// What an endpoint's task can run on top of its sessions instead of handing their events to
/// the application: the RPC client and server. Everything here runs inside the endpoint's
/// task, so its state has exactly one owner and needs no lock.
pub(crate) trait Service: Send + 'static {
    /// Runs at the start of each pass, before the sessions: work queued by handles. What it
    /// sends with [`Connection::push`] goes out in the same pass.
    fn poll(&mut self, now: Instant);
    /// One session event, in order per peer, after the sessions' part of the pass. What it
    /// sends with [`Connection::push`] goes out before the task waits again (it runs one more
    /// pass).
    fn event(&mut self, event: Event, now: Instant);
    /// When `poll` has timed work next.
    fn next_deadline(&mut self) -> Option<Instant>;
    /// The endpoint begins to shut down.
    fn shutdown(&mut self, now: Instant);
}

/// No service: events go to the application.
pub(crate) struct NoService;

impl Service for NoService {
    fn poll(&mut self, _now: Instant) {}
    fn event(&mut self, _event: Event, _now: Instant) {}
    fn next_deadline(&mut self) -> Option<Instant> {
        None
    }
    fn shutdown(&mut self, _now: Instant) {}
}

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Retransmitted until acknowledged; delivered in send order within its stream. A loss on
    /// one stream never delays another.
    ReliableOrdered(StreamId),
    /// Retransmitted until acknowledged; delivered as it arrives, exactly once.
    ReliableUnordered,
    /// Sent once; may be lost. Never duplicated.
    Unreliable,
    /// Sent once; within its stream a message older than one already delivered is dropped.
    UnreliableSequenced(StreamId),
}

impl Delivery {
    /// Reliable-ordered on stream `stream`.
    pub const fn reliable_ordered(stream: u8) -> Self {
        Self::ReliableOrdered(StreamId(stream))
    }

    /// Unreliable-sequenced on stream `stream`.
    pub const fn unreliable_sequenced(stream: u8) -> Self {
        Self::UnreliableSequenced(StreamId(stream))
    }

    pub(crate) fn split(self) -> (Class, u8) {
        match self {
            Self::ReliableOrdered(s) => (Class::ReliableOrdered, s.0),
            Self::ReliableUnordered => (Class::ReliableUnordered, 0),
            Self::Unreliable => (Class::Unreliable, 0),
            Self::UnreliableSequenced(s) => (Class::Sequenced, s.0),
        }
    }

    pub(crate) fn join(class: Class, stream: u8) -> Self {
        match class {
            Class::ReliableOrdered => Self::ReliableOrdered(StreamId(stream)),
            Class::ReliableUnordered => Self::ReliableUnordered,
            Class::Unreliable => Self::Unreliable,
            Class::Sequenced => Self::UnreliableSequenced(StreamId(stream)),
        }
    }
}

/// Something that happened on an endpoint.
#[derive(Debug)]
pub enum Event {
    /// A session was established (one we opened or, on a server, one a peer opened).
    Connected(Connection),
    /// A message arrived.
    Message {
        /// From whom.
        peer: PeerId,
        /// Its delivery class and stream.
        delivery: Delivery,
        /// The message.
        payload: Bytes,
    },
    /// A session ended; nothing more comes from this `peer`.
    Disconnected {
        /// Who.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason,
    },
}

/// Opens sessions from an endpoint without owning it (the endpoint's owner shuts it down).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    shared: Arc<EndpointShared>,
    driver: mpsc::UnboundedSender<DriverCmd>,
}

impl Connector {
    /// See [`Endpoint::connect`].
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        let (tx, rx) = oneshot::channel();
        self.driver
            .send(DriverCmd::Connect { addr, done: tx })
            .map_err(|_| ConnectError::EndpointClosed)?;
        self.shared.wake.notify();
        rx.await.map_err(|_| ConnectError::EndpointClosed)?
    }
}

/// What an endpoint refused or dropped, counted by its task.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) rate_limited: AtomicU64,
    pub(crate) rejected_full: AtomicU64,
    pub(crate) rejected_per_ip: AtomicU64,
    pub(crate) oversize: AtomicU64,
    pub(crate) sends_dropped: AtomicU64,
    pub(crate) stalled: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) strangers_dropped: AtomicU64,
    pub(crate) rejected_token: AtomicU64,
    pub(crate) rejected_by_app: AtomicU64,
    pub(crate) displaced: AtomicU64,
    pub(crate) parked: AtomicUsize,
    /// What every session holds received and not yet delivered, together.
    pub(crate) receive_held: AtomicU64,
}

/// An endpoint's counters of what it refused and why, and its sessions: a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Sessions held now (opening, open or closing).
    pub sessions: usize,
    /// Addresses those sessions come from (an IPv4 address, or an IPv6 /64).
    pub addresses: usize,
    /// Of those, idle ones the task does not visit until they have work or a timer is due.
    pub parked_sessions: usize,
    /// Datagrams from addresses without a session dropped because their address was over its
    /// `handshake_rate_per_ip`.
    pub handshakes_rate_limited: u64,
    /// Sessions refused because the endpoint was full (`max_connections`).
    pub rejected_full: u64,
    /// Sessions refused because their address held `max_connections_per_ip` already.
    pub rejected_per_ip: u64,
    /// Datagrams dropped for being larger than `max_datagram_size`.
    pub datagrams_oversize: u64,
    /// Datagrams not sent because the socket's buffer was full (a loss, recovered as one).
    pub sends_dropped: u64,
    /// Sessions closed because the peer did not take what was sent to it
    /// ([`DisconnectReason::Stalled`]).
    pub sessions_stalled: u64,
    /// Bytes queued for all peers and not yet acknowledged (with a bookkeeping cost per
    /// message).
    pub queued_bytes: usize,
    /// Bytes all sessions hold received and not yet delivered (with their bookkeeping cost).
    pub receive_held: u64,
    /// Sessions shed because the endpoint was over `max_receive_buffered` and they held more
    /// than their share ([`DisconnectReason::Shed`]).
    pub sessions_shed: u64,
    /// Datagrams from addresses without a session dropped unanswered (undecodable, a bad or
    /// stale cookie, a handshake packet a server does not take).
    pub strangers_dropped: u64,
    /// Connection attempts refused for their token (none, not a token, a wrong key, expired,
    /// not naming this server, reused from another address, or a token at a keyless server).
    pub rejected_token: u64,
    /// Connection attempts the application's approval refused.
    pub rejected_by_app: u64,
    /// Sessions closed ([`DisconnectReason::Shed`]) to give their slot to a newcomer while the
    /// endpoint was full: each the longest-idle of the address holding the most sessions, over
    /// its share.
    pub sessions_displaced: u64,
}

/// State shared between an endpoint's handles and its task.
#[derive(Debug)]
pub(crate) struct EndpointShared {
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) local_addr: SocketAddr,
    /// Wakes the task: sends were queued, or the application drained events.
    pub(crate) wake: Signal,
    /// Events handed to the application and not yet taken.
    pub(crate) backlog: AtomicUsize,
    pub(crate) reading_paused: AtomicBool,
    pub(crate) next_peer: AtomicU64,
    pub(crate) stopped: AtomicBool,
    /// Sessions the task holds (opening, open or closing), published after every pass.
    pub(crate) sessions: AtomicUsize,
    pub(crate) counters: Arc<EndpointCounters>,
    /// Send-buffer bytes charged on every session and not yet released: what the endpoint
    /// holds queued for its peers.
    pub(crate) queued_total: AtomicUsize,
    /// Addresses (see [`address_key`](crate::proto::gate::address_key)) with sessions now,
    /// published after every pass: what a per-address share divides a budget by.
    pub(crate) addresses: AtomicUsize,
    /// Parked sessions that were given a command: the task unparks them in its next pass.
    /// Held only to push or take addresses.
    pub(crate) ready: Mutex<Vec<SocketAddr>>,
    /// `ready` may hold addresses: the task takes its lock only then.
    pub(crate) any_ready: AtomicBool,
}

impl EndpointShared {
    pub(crate) fn stats(&self) -> EndpointStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndpointStats {
            sessions: self.sessions.load(Ordering::Acquire),
            addresses: self.addresses.load(Ordering::Acquire),
            parked_sessions: c.parked.load(Ordering::Relaxed),
            handshakes_rate_limited: get(&c.rate_limited),
            rejected_full: get(&c.rejected_full),
            rejected_per_ip: get(&c.rejected_per_ip),
            datagrams_oversize: get(&c.oversize),
            sends_dropped: get(&c.sends_dropped),
            sessions_stalled: get(&c.stalled),
            queued_bytes: self.queued_total.load(Ordering::Relaxed),
            receive_held: get(&c.receive_held),
            sessions_shed: get(&c.shed),
            strangers_dropped: get(&c.strangers_dropped),
            rejected_token: get(&c.rejected_token),
            rejected_by_app: get(&c.rejected_by_app),
            sessions_displaced: get(&c.displaced),
        }
    }
}

const CONNECTING: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;

/// State shared between a connection's handles and its session in the endpoint's task.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) peer: PeerId,
    pub(crate) addr: SocketAddr,
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
            addr,
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
            crate::sync::lock(&self.endpoint.ready).push(self.addr);
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
            .field("addr", &self.shared.addr)
            .finish()
    }
}

impl Connection {
    /// This session's id on this endpoint.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.addr
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

/// One UDP socket, any number of sessions, and the task that drives them.
///
/// The task runs until [`Endpoint::close`] completes or the `Endpoint` is dropped (then it
/// closes every session, lingering at most `close_linger` to flush, and stops).
#[must_use = "dropping the endpoint shuts it down"]
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<EndpointShared>,
    driver: mpsc::UnboundedSender<DriverCmd>,
    events: mpsc::UnboundedReceiver<Event>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` and starts its task on the current tokio runtime.
    pub fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Self, BindError> {
        config.validate()?;
        let io = io::UdpIo::bind(addr, config.socket_buffer_size)?;
        Self::start(io, config)
    }

    pub(crate) fn start(io: impl io::Io, config: TransportConfig) -> Result<Self, BindError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self::start_inner(io, config, Security::default(), Some(events_tx), events_rx, |_| {
            NoService
        })
    }

    /// Starts an endpoint whose session events go to a service built by `make_service`,
    /// authenticating sessions as `security` says.
    pub(crate) fn start_service<S: Service>(
        io: impl io::Io,
        config: TransportConfig,
        security: Security,
        make_service: impl FnOnce(&Arc<EndpointShared>) -> S,
    ) -> Result<Self, BindError> {
        // No events reach the application; `next_event` ends at once.
        let (_, events_rx) = mpsc::unbounded_channel();
        Self::start_inner(io, config, security, None, events_rx, make_service)
    }

    fn start_inner<S: Service>(
        io: impl io::Io,
        config: TransportConfig,
        security: Security,
        app: Option<mpsc::UnboundedSender<Event>>,
        events: mpsc::UnboundedReceiver<Event>,
        make_service: impl FnOnce(&Arc<EndpointShared>) -> S,
    ) -> Result<Self, BindError> {
        let local_addr = io.local_addr()?;
        let (driver_tx, driver_rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let (driver, shared) =
            Driver::new(io, config, security, local_addr, app, driver_rx, make_service);
        let task = tokio::spawn(driver.run());
        Ok(Self { shared, driver: driver_tx, events, task: Some(task) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The configuration in use.
    pub fn config(&self) -> &TransportConfig {
        &self.shared.config
    }

    /// Presents `token` to every server this endpoint connects to from now on (`None`: no
    /// token). Sessions already open are not affected.
    pub(crate) fn set_token(&self, token: Option<Arc<crate::proto::token::PlayerToken>>) {
        let _ = self.driver.send(DriverCmd::SetToken(token));
        self.shared.wake.notify();
    }

    /// Opens a session to `addr` and waits for the handshake (at most `handshake_timeout`).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        self.connector().connect(addr).await
    }

    /// A handle that opens sessions from this endpoint (for background reconnection).
    pub(crate) fn connector(&self) -> Connector {
        Connector { shared: self.shared.clone(), driver: self.driver.clone() }
    }

    /// The next event; `None` once the endpoint has shut down and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        let e = self.events.recv().await?;
        self.took_event();
        Some(e)
    }

    /// The next event if one is ready.
    pub fn try_next_event(&mut self) -> Option<Event> {
        let e = self.events.try_recv().ok()?;
        self.took_event();
        Some(e)
    }

    fn took_event(&self) {
        let left = self.shared.backlog.fetch_sub(1, Ordering::AcqRel) - 1;
        if self.shared.reading_paused.load(Ordering::Acquire)
            && left <= self.shared.config.event_backlog / 2
        {
            self.shared.wake.notify();
        }
    }

    /// Closes every session (flushing queued reliable data for up to `close_linger`), then
    /// stops the task. Events keep arriving until it is done.
    pub async fn close(&mut self) {
        let (tx, rx) = oneshot::channel();
        if self.driver.send(DriverCmd::Shutdown { done: Some(tx) }).is_ok() {
            self.shared.wake.notify();
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// How many sessions the endpoint holds (opening, open or closing). A server keeps none
    /// for a peer that has not completed the handshake.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.load(Ordering::Acquire)
    }

    /// Wakes the endpoint's task (after queueing work for its service).
    pub(crate) fn wake(&self) {
        self.shared.wake.notify();
    }

    /// What [`wake`](Self::wake) does, for a task that outlives this borrow.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.wake.notify()
    }

    /// What the endpoint refused or dropped, and its sessions.
    pub fn stats(&self) -> EndpointStats {
        self.shared.stats()
    }

    /// Whether the task has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.driver.send(DriverCmd::Shutdown { done: None });
        self.shared.wake.notify();
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::transport::sim::{SimConfig, SimNetwork};

    /// A service that answers every message from within `event`.
    struct Echoer {
        conns: HashMap<PeerId, Connection>,
    }

    impl Service for Echoer {
        fn poll(&mut self, _now: Instant) {}
        fn event(&mut self, event: Event, _now: Instant) {
            match event {
                Event::Connected(c) => {
                    self.conns.insert(c.peer_id(), c);
                }
                Event::Message { peer, delivery, payload } => {
                    if let Some(c) = self.conns.get(&peer) {
                        assert!(c.push(delivery, payload));
                    }
                }
                Event::Disconnected { peer, .. } => {
                    self.conns.remove(&peer);
                }
            }
        }
        fn next_deadline(&mut self) -> Option<Instant> {
            None
        }
        fn shutdown(&mut self, _now: Instant) {}
    }

    /// The send contract: what a service queues while handling an event leaves before the
    /// endpoint's task waits again, on an otherwise idle session: the echo of each message
    /// arrives exactly two hops after it was sent (it used to wait for the delayed ack's
    /// timer, which took the task through another pass).
    #[tokio::test(start_paused = true)]
    async fn what_a_service_sends_from_an_event_leaves_in_that_pass() {
        const HOP: Duration = Duration::from_millis(5);
        let net = SimNetwork::new(3, SimConfig { delay: HOP, ..SimConfig::default() });
        let server_addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let io = net.bind_io(server_addr).unwrap();
        let _server =
            Endpoint::start_service(io, TransportConfig::server(), Security::default(), |_| {
                Echoer { conns: HashMap::new() }
            })
            .unwrap();
        let mut client =
            net.endpoint("10.0.0.2:1".parse().unwrap(), TransportConfig::default()).unwrap();
        let conn = client.connect(server_addr).await.unwrap();
        let Some(Event::Connected(_)) = client.next_event().await else { panic!("connected") };
        for i in 0..20u8 {
            // Idle between rounds: acks and keepalives all settled.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = tokio::time::Instant::now();
            conn.send(Delivery::reliable_ordered(1), vec![i; 8]).unwrap();
            let Some(Event::Message { payload, .. }) = client.next_event().await else {
                panic!("echo")
            };
            assert_eq!(payload[..], [i; 8]);
            assert_eq!(sent.elapsed(), 2 * HOP, "round {i}");
        }
    }
}
