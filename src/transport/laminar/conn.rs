//! Our `laminar::Connection`: a [`Session`] plus the wiring to the application.
//!
//! laminar 0.5 requires a connection's event types to implement a trait it does not export,
//! so they must be its own `Packet` (in) and `SocketEvent` (out). We use them only as signals:
//! an empty `Packet` to an address makes the manager create that address's connection, which
//! takes its configuration from the driver's [`scope`]; a `SocketEvent::Disconnect` tells the
//! driver a session ended. Everything else travels outside laminar's channels: each session
//! has its own command inbox (drained in `update`, which the manager calls on every connection
//! every pass) and hands events straight to the application's channel.
//!
//! A connection created without a configuration (a datagram racing a session's end) stays
//! inert and is dropped at the end of the pass.
//!
//! **Parking.** laminar's manager visits every connection it holds on every pass. So that idle
//! sessions cost a pass nothing, a session with nothing to do for [`PARK_AFTER`] passes in a row
//! leaves the manager (`should_drop` says yes without reporting an end) and waits, whole, in
//! the driver's parked table with its next deadline. It comes back (through `create_connection`,
//! which takes it from the table) when a datagram arrives from its peer, its deadline is due,
//! or a handle queues a command for it (the handle sees the `parked` flag and puts the address
//! on the endpoint's ready list).

//!
//! **Moving.** A protected session follows its client to a new address: see [`moving`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::Receiver;
use laminar::{ConnectionMessenger, Packet, SocketEvent};
use tokio::sync::{mpsc, oneshot};

use self::moving::Probe;
pub(crate) use self::moving::{Moved, set_moved_from};
use super::socket::{TokenProof, Verified};

mod moving;
use crate::config::TransportConfig;
use crate::error::{ConnectError, DisconnectReason};
use crate::proto::channel::send::MESSAGE_COST;
use crate::proto::session::{Session, SessionEvent};
use crate::proto::token::PlayerToken;
use crate::proto::wire::Class;
use crate::transport::{ConnShared, Connection, Delivery, EndpointShared, Event};

/// What a handle asks of its session.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        class: Class,
        stream: u8,
        payload: Bytes,
    },
    Close {
        code: u32,
    },
    Abort {
        reason: DisconnectReason,
    },
    /// The peer lets more pile up than it may: give up on it.
    Stall,
    /// Its slot is wanted by another address (the endpoint is full): give it up.
    Shed,
    /// Send an ack-eliciting packet now.
    Ping,
}

/// Idle passes in a row after which a session is parked.
pub(crate) const PARK_AFTER: u8 = 2;

/// Where session events go.
#[derive(Debug)]
pub(crate) enum EventTarget {
    /// To the application, through `Endpoint::next_event`.
    App(mpsc::UnboundedSender<Event>),
    /// To the endpoint's service, within the task's pass.
    Service(crossbeam::channel::Sender<Event>),
}

/// What every connection of one endpoint shares with the driver.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) events: EventTarget,
    pub(crate) endpoint: Arc<EndpointShared>,
    /// Earliest protocol deadline of any session, in nanoseconds since `epoch`; each
    /// connection lowers it in `update`, the driver resets it before each pass.
    pub(crate) next_deadline: AtomicU64,
    pub(crate) epoch: Instant,
    /// What path challenges' tokens are made from: a random key and a count.
    pub(crate) path_key: u64,
    pub(crate) path_count: AtomicU64,
}

impl Sink {
    fn emit(&self, e: Event) {
        match &self.events {
            EventTarget::App(tx) => {
                self.endpoint.backlog.fetch_add(1, Ordering::AcqRel);
                if tx.send(e).is_err() {
                    // The application dropped the endpoint: nobody will take it.
                    self.endpoint.backlog.fetch_sub(1, Ordering::AcqRel);
                }
            }
            // The service takes them within the same pass; its receiver lives in the driver.
            EventTarget::Service(tx) => {
                let _ = tx.send(e);
            }
        }
    }

    /// A fresh token for a path challenge (unpredictable without the key; it also travels
    /// sealed).
    fn path_token(&self) -> u64 {
        let n = self.path_count.fetch_add(1, Ordering::Relaxed);
        crate::proto::rng::SplitMix64::new(self.path_key ^ n).next_u64()
    }

    fn report_deadline(&self, at: Instant) {
        let nanos =
            at.saturating_duration_since(self.epoch).as_nanos().min(u128::from(u64::MAX - 1))
                as u64;
        self.next_deadline.fetch_min(nanos, Ordering::AcqRel);
    }
}

/// Which side opened the session.
#[derive(Debug)]
pub(crate) enum Role {
    Client {
        nonce: u32,
        done: oneshot::Sender<Result<Connection, ConnectError>>,
        token: Option<Arc<PlayerToken>>,
        cluster: u64,
    },
    Server {
        nonce: u32,
        tag: u32,
        window: u64,
        client: Option<Verified>,
    },
}

/// Everything a connection needs, prepared by the driver before laminar creates it.
#[derive(Debug)]
pub(crate) struct Init {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) inbox: Receiver<Command>,
    pub(crate) sink: Arc<Sink>,
    pub(crate) role: Role,
}

/// A session waiting outside laminar's manager (see the module docs).
#[derive(Debug)]
pub(crate) struct Parked {
    live: Box<Live>,
    /// Distinguishes this parking from earlier ones of the same address in the deadline heap.
    pub(crate) generation: u64,
    /// When its session has timed work next.
    pub(crate) deadline: Option<Instant>,
}

/// What the driver lends a `manual_poll`: sessions to create, the parked table, and the
/// sessions parked during the pass (with their next deadline), to enter into the heap.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) inits: Vec<(SocketAddr, Init)>,
    pub(crate) parked: HashMap<SocketAddr, Parked>,
    pub(crate) just_parked: Vec<(SocketAddr, Option<Instant>, u64)>,
    /// Sessions whose peers proved they hold their tokens' secrets during the pass.
    pub(crate) proven: Vec<(SocketAddr, TokenProof)>,
    /// Sessions that moved with their clients during the pass.
    pub(crate) moved: Vec<Moved>,
    pub(crate) next_generation: u64,
}

thread_local! {
    /// The driver's [`Scope`] during the current `manual_poll`. Set by the driver around each
    /// call (which is synchronous), so it never leaks between endpoints on one thread.
    static SCOPE: RefCell<Scope> = RefCell::new(Scope::default());
}

/// Runs `f` (a `manual_poll`) with `scope` available to the connections.
pub(crate) fn scope<R>(scope: &mut Scope, f: impl FnOnce() -> R) -> R {
    SCOPE.with(|s| std::mem::swap(&mut *s.borrow_mut(), scope));
    let r = f();
    SCOPE.with(|s| std::mem::swap(&mut *s.borrow_mut(), scope));
    r
}

fn take_init(addr: SocketAddr) -> Option<Init> {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.inits.iter().position(|(a, _)| *a == addr)?;
        Some(s.inits.swap_remove(i).1)
    })
}

/// The parked session of `addr`, taken back into the manager.
fn unpark(addr: SocketAddr) -> Option<Box<Live>> {
    let p = SCOPE.with(|s| s.borrow_mut().parked.remove(&addr))?;
    p.live.shared.parked.store(false, Ordering::SeqCst);
    Some(p.live)
}

/// Moves an idle session into the parked table.
fn park(addr: SocketAddr, live: Box<Live>) {
    let next = live.session.next_timeout();
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let generation = s.next_generation;
        s.next_generation += 1;
        s.just_parked.push((addr, next, generation));
        s.parked.insert(addr, Parked { live, generation, deadline: next });
    });
}

/// The empty packet that makes laminar create `addr`'s connection.
pub(crate) fn poke(addr: SocketAddr) -> Packet {
    Packet::unreliable(addr, Vec::new())
}

#[derive(Debug)]
struct Live {
    session: Session,
    shared: Arc<ConnShared>,
    inbox: Receiver<Command>,
    sink: Arc<Sink>,
    connect_done: Option<oneshot::Sender<Result<Connection, ConnectError>>>,
    connected: bool,
    dirty: bool,
    /// Something happened to it in this pass (a datagram, a command, a timer).
    worked: bool,
    /// Its share of the endpoint's `receive_held`.
    held: u64,
    buf: Vec<u8>,
    /// When statistics were last copied to the handle, and whether they changed since.
    stats_at: Option<Instant>,
    stats_stale: bool,
    /// Server, with a token: what binds the token once the peer proves it holds its secrets
    /// (taken when reported), and what was reported (bound again when the session moves).
    proof: Option<TokenProof>,
    bound: Option<TokenProof>,
    /// The client's new address being validated (protected sessions).
    probe: Option<Probe>,
}

/// Statistics reach the handle at most this often (each copy takes its lock: twice per call
/// when copied every pass), and never later than this after the activity they describe.
const STATS_EVERY: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    live: Option<Box<Live>>,
    gone_reported: bool,
    /// Passes in a row with nothing to do.
    idle_passes: u8,
}

impl Live {
    fn new(init: Init, now: Instant) -> Self {
        let cfg = init.sink.config.clone();
        let (session, done, proof) = match init.role {
            Role::Client { nonce, done, token, cluster } => {
                let session = Session::client(cfg, nonce, now).with_cluster(cluster);
                let session = if let Some(t) = token { session.with_token(t) } else { session };
                (session, Some(done), None)
            }
            Role::Server { nonce, tag, window, client } => {
                let secrets = client.as_ref().map(|c| &c.secrets);
                let proof = client.as_ref().map(|c| c.proof);
                (Session::server(cfg, nonce, tag, window, now, secrets), None, proof)
            }
        };
        let buf = Vec::with_capacity(init.sink.config.max_datagram_size);
        Self {
            session,
            shared: init.shared,
            inbox: init.inbox,
            sink: init.sink,
            connect_done: done,
            connected: false,
            dirty: true,
            worked: true,
            stats_at: None,
            stats_stale: true,
            held: 0,
            buf,
            proof,
            bound: None,
            probe: None,
        }
    }

    /// Applies the handles' commands.
    fn drain_inbox(&mut self, now: Instant) {
        while let Ok(cmd) = self.inbox.try_recv() {
            self.dirty = true;
            match cmd {
                Command::Send { class, stream, payload } => {
                    let len = payload.len();
                    if self.session.send(class, stream, payload).is_err() {
                        // Closed meanwhile (or too large): give the bytes back.
                        self.shared.release(len + MESSAGE_COST, 1);
                    }
                }
                Command::Close { code } => self.session.close(now, code),
                Command::Abort { reason } => self.session.abort(reason),
                Command::Stall => self.session.stall(now),
                Command::Shed => self.session.shed(now),
                Command::Ping => self.session.ping(),
            }
        }
    }

    /// Whether the endpoint holds more received data than `max_receive_buffered` and this
    /// session's address more than an equal share of it (the bound divided among the addresses
    /// with sessions), this session holding some of it: then it is shed. One address with many
    /// sessions is one party: it is shed before anybody else is.
    fn over_memory_share(&self) -> bool {
        let ep = &self.sink.endpoint;
        let limit = self.sink.config.max_receive_buffered as u64;
        if self.held == 0 || ep.counters.receive_held.load(Ordering::Relaxed) <= limit {
            return false;
        }
        let addresses = ep.addresses.load(Ordering::Relaxed).max(1) as u64;
        self.shared.address.receive_held.load(Ordering::Relaxed) > limit / addresses
    }

    /// Brings the endpoint's and the address's `receive_held` up to date with this session's.
    fn account_held(&mut self) {
        let now = self.session.receive_held();
        if now != self.held {
            let total = &self.sink.endpoint.counters.receive_held;
            let address = &self.shared.address.receive_held;
            if now > self.held {
                total.fetch_add(now - self.held, Ordering::Relaxed);
                address.fetch_add(now - self.held, Ordering::Relaxed);
            } else {
                total.fetch_sub(self.held - now, Ordering::Relaxed);
                address.fetch_sub(self.held - now, Ordering::Relaxed);
            }
            self.held = now;
        }
    }

    /// Whether it may leave the manager: established, nothing queued, nothing happened for
    /// [`PARK_AFTER`] passes. Raises the `parked` flag first, then looks at the inbox once
    /// more (a handle queues, then looks at the flag): a command never goes unseen.
    fn try_park(&self) -> bool {
        if !self.connected || !self.session.is_established() || self.dirty {
            return false;
        }
        self.shared.parked.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.inbox.is_empty() {
            self.shared.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Hands session events to the application.
    fn pump(&mut self) {
        while let Some(e) = self.session.poll_event() {
            match e {
                SessionEvent::Connected => {
                    self.connected = true;
                    self.shared.set_open(self.session.peer_window());
                    let conn = Connection { shared: self.shared.clone() };
                    if let Some(done) = self.connect_done.take() {
                        let _ = done.send(Ok(conn.clone()));
                    }
                    self.sink.emit(Event::Connected(conn));
                }
                SessionEvent::Message(d) => {
                    let delivery = Delivery::join(d.class, d.stream);
                    self.sink.emit(Event::Message {
                        peer: self.shared.peer,
                        delivery,
                        payload: d.payload,
                    });
                }
                SessionEvent::Closed(reason) => {
                    if reason == DisconnectReason::Stalled {
                        self.sink.endpoint.counters.stalled.fetch_add(1, Ordering::Relaxed);
                    }
                    self.shared.set_closed(reason);
                    if let Some(done) = self.connect_done.take() {
                        let _ = done.send(Err(ConnectError::Failed(reason)));
                    }
                    if self.connected {
                        self.sink.emit(Event::Disconnected { peer: self.shared.peer, reason });
                    }
                }
            }
        }
        let (bytes, messages) = self.session.take_released();
        self.shared.release(bytes, messages);
    }
}

impl laminar::Connection for Conn {
    type SendEvent = Packet;
    type ReceiveEvent = SocketEvent;

    fn create_connection(
        _messenger: &mut impl ConnectionMessenger<SocketEvent>,
        address: SocketAddr,
        time: Instant,
    ) -> Self {
        let live = match unpark(address) {
            Some(live) => Some(live),
            None => take_init(address).map(|init| Box::new(Live::new(init, time))),
        };
        Conn { addr: address, live, gone_reported: false, idle_passes: 0 }
    }

    fn is_established(&self) -> bool {
        self.live.is_some()
    }

    fn should_drop(
        &mut self,
        messenger: &mut impl ConnectionMessenger<SocketEvent>,
        _time: Instant,
    ) -> bool {
        let Some(live) = self.live.as_mut() else { return true };
        if !live.session.is_closed() {
            if std::mem::take(&mut live.worked) {
                self.idle_passes = 0;
                return false;
            }
            self.idle_passes = self.idle_passes.saturating_add(1);
            if self.idle_passes < PARK_AFTER || !live.try_park() {
                return false;
            }
            if let Some(live) = self.live.take() {
                park(self.addr, live);
            }
            return true;
        }
        if !self.gone_reported {
            self.gone_reported = true;
            messenger.send_event(&self.addr, SocketEvent::Disconnect(self.addr));
        }
        true
    }

    fn process_packet(
        &mut self,
        messenger: &mut impl ConnectionMessenger<SocketEvent>,
        payload: &[u8],
        time: Instant,
    ) {
        if let Some(from) = moving::take_moved_from().filter(|a| *a != self.addr) {
            self.packet_from_elsewhere(messenger, from, payload, time);
            return;
        }
        if let Some(live) = self.live.as_mut() {
            live.session.handle_datagram(time, payload);
            live.dirty = true;
            live.worked = true;
            if live.session.is_proven()
                && let Some(proof) = live.proof.take()
            {
                live.bound = Some(proof);
                SCOPE.with(|s| s.borrow_mut().proven.push((self.addr, proof)));
            }
            live.account_held();
            if live.over_memory_share() {
                live.sink.endpoint.counters.shed.fetch_add(1, Ordering::Relaxed);
                live.session.shed(time);
                live.account_held();
            }
            live.pump();
        }
    }

    fn process_event(
        &mut self,
        _messenger: &mut impl ConnectionMessenger<SocketEvent>,
        _poke: Packet,
        _time: Instant,
    ) {
        // The poke only made laminar create this connection; `create_connection` configured it.
    }

    fn update(&mut self, messenger: &mut impl ConnectionMessenger<SocketEvent>, time: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.drain_inbox(time);
        let mut next = live.session.next_timeout();
        if next.is_some_and(|t| t <= time) {
            live.session.handle_timeout(time);
            live.dirty = true;
        }
        if live.dirty {
            live.worked = true;
            while live.session.poll_transmit(time, &mut live.buf) {
                messenger.send_packet(&self.addr, &live.buf);
            }
            live.pump();
            live.stats_stale = true;
            live.dirty = false;
            next = live.session.next_timeout();
        }
        if live.stats_stale {
            let due = live.stats_at.map(|t| t + STATS_EVERY);
            if live.session.is_closed() || due.is_none_or(|d| time >= d) {
                *crate::sync::lock(&live.shared.stats) = live.session.stats();
                live.stats_at = Some(time);
                live.stats_stale = false;
            } else if let Some(d) = due {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        if let Some(t) = next {
            live.sink.report_deadline(t);
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Dropped with the endpoint's task: make sure handles and waiters learn it.
        if !self.session.is_closed() {
            self.session.abort(DisconnectReason::EndpointClosed);
            self.pump();
        }
        // What it held goes with it.
        self.sink.endpoint.counters.receive_held.fetch_sub(self.held, Ordering::Relaxed);
        self.shared.address.receive_held.fetch_sub(self.held, Ordering::Relaxed);
    }
}
