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

mod connection;
pub(crate) mod io;
mod laminar;
mod pass;
mod security;
mod share;
#[cfg(feature = "test-util")]
pub mod sim;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::TransportConfig;
use crate::error::{BindError, ConnectError, DisconnectReason};
pub use crate::proto::ids::{PeerId, StreamId};
pub use crate::proto::stats::ConnectionStats;
use crate::proto::wire::Class;
pub(crate) use crate::sync::Signal;

pub(crate) use self::connection::ConnShared;
pub use self::connection::Connection;
use self::laminar::{Driver, DriverCmd};
pub(crate) use self::security::Security;
pub use self::security::{Approve, ClientIdentity};
pub(crate) use self::share::Addresses;

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
    pub(crate) migrated: AtomicU64,
    pub(crate) path_challenges: AtomicU64,
    pub(crate) moved_refused: AtomicU64,
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
    /// Protected sessions moved to their client's new address (a NAT rebinding, another
    /// network) once it answered a path challenge there.
    pub sessions_migrated: u64,
    /// Path challenges sent to the new addresses of protected sessions' clients (each no
    /// larger than what had come from that address).
    pub path_challenges: u64,
    /// Data packets from an address without a session that named a protected session but were
    /// not authentic or fresh (forged or replayed): dropped, nothing moved, nothing answered.
    pub moved_refused: u64,
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
            sessions_migrated: get(&c.migrated),
            path_challenges: get(&c.path_challenges),
            moved_refused: get(&c.moved_refused),
        }
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
        let io = io::UdpIo::bind(addr, io::UdpOptions::from(&config))?;
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
