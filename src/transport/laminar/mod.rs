//! The only module that names laminar: laminar 0.5's `ConnectionManager` with our
//! `Connection` ([`conn`]) and our `DatagramSocket` ([`socket`]), driven by one tokio task.
//!
//! The task sleeps until one of: the socket is readable, a command or send arrives, the
//! application drained events it had fallen behind on, or the earliest protocol deadline of any
//! session (retransmission, delayed ack, keepalive, idle timeout) is due. Then it runs one
//! `manual_poll` pass: read datagrams (up to a budget), apply queued commands, run every
//! session's timers and transmit. No fixed sleeps, no busy polling: idle, it does not wake.
//! laminar's own socket polling loop (a 1 ms sleep per loop) is never used.

mod conn;
mod socket;
mod timer;

pub(crate) use self::conn::{Command, EventTarget};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use self::conn::{Conn, Role, Scope, Sink};
use self::socket::{DoorLimits, GatedSocket};
use self::timer::Timer;
use crate::config::TransportConfig;
use crate::error::{ConnectError, DisconnectReason};
use crate::proto::gate::{Gate, HandshakeLimiter, TokenGate};
use crate::proto::ids::{PeerId, ServerId};
use crate::proto::rng::SplitMix64;
use crate::proto::token::{PlayerToken, TokenKey};
use crate::transport::io::Io;
use crate::transport::pass::{self, Phase};
use crate::transport::{
    Addresses, ConnShared, Connection, EndpointCounters, EndpointShared, Event, Security, Service,
};

/// Requests from `Endpoint` handles to the task.
#[derive(Debug)]
pub(crate) enum DriverCmd {
    Connect {
        addr: SocketAddr,
        done: oneshot::Sender<Result<Connection, ConnectError>>,
    },
    /// The token a client presents from now on.
    SetToken(Option<Arc<PlayerToken>>),
    Shutdown {
        done: Option<oneshot::Sender<()>>,
    },
}

type Manager<I> = laminar::ConnectionManager<GatedSocket<I>, Conn>;

pub(crate) struct Driver<I: Io, S: Service> {
    mgr: Manager<I>,
    service: S,
    /// Session events for the service (when it takes them).
    service_events: Option<crossbeam::channel::Receiver<Event>>,
    sink: Arc<Sink>,
    cmds: mpsc::UnboundedReceiver<DriverCmd>,
    rng: SplitMix64,
    /// Client: the token presented to servers.
    token: Option<Arc<PlayerToken>>,
    /// Client of a game server: what it mints its tokens with.
    mint: Option<(TokenKey, ServerId)>,
    /// Client: the cluster tag it says.
    cluster: u64,
    /// Every live session, by address.
    conns: HashMap<SocketAddr, Arc<ConnShared>>,
    /// What the sessions of each address hold together.
    addresses: Addresses,
    /// Sessions to create in the next pass, and parked ones (see `conn::scope`).
    scope: Scope,
    /// Parked sessions' deadlines: (when, parking generation, address). Entries of sessions
    /// that came back earlier are stale and skipped (their generation no longer matches).
    parked_deadlines: BinaryHeap<Reverse<(Instant, u64, SocketAddr)>>,
}

impl<I: Io, S: Service> Driver<I, S> {
    /// A driver whose session events go to the application (`app` is `Some`) or to the
    /// service `make_service` builds.
    pub(crate) fn new(
        io: I,
        config: Arc<TransportConfig>,
        security: Security,
        local_addr: SocketAddr,
        app: Option<mpsc::UnboundedSender<Event>>,
        cmds: mpsc::UnboundedReceiver<DriverCmd>,
        make_service: impl FnOnce(&Arc<EndpointShared>) -> S,
    ) -> (Self, Arc<EndpointShared>) {
        let now = io.now();
        let lam = laminar::Config {
            // One byte more than the largest datagram we accept, to detect truncation.
            receive_buffer_max_size: config.max_datagram_size + 1,
            // laminar counts every connection it creates from a datagram against this bound,
            // established or not, and drops those over it: parked sessions come back that way,
            // so it must never bind. Unconfigured connections (a datagram racing a session's
            // end) are dropped within the pass anyway, and a pass reads a bounded number of
            // datagrams.
            max_unestablished_connections: u16::MAX,
            ..laminar::Config::default()
        };
        let mut rng = SplitMix64::new(config.seed.unwrap_or_else(crate::sync::os_seed));
        let mut gate = Gate::new(
            (rng.next_u64(), rng.next_u64()),
            now,
            config.cookie_lifetime,
            config.accept_incoming,
        );
        gate = gate.with_cluster(security.cluster);
        if !security.keys.is_empty() {
            // Tokens' times are Unix seconds; the gate counts from here on the I/O's clock.
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let remembered = security.tokens_remembered;
            gate =
                gate.with_tokens(TokenGate::new(security.keys, security.names, unix, remembered));
        }
        let limiter = HandshakeLimiter::new(
            (rng.next_u64(), rng.next_u64()),
            now,
            config.handshake_rate_per_ip,
        );
        let limits = DoorLimits {
            max_incoming: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
        };
        let counters = Arc::new(EndpointCounters::default());
        let mut socket = GatedSocket::new(io, gate, limiter, limits, counters.clone(), now);
        socket.approve = security.approve;
        let mgr = laminar::ConnectionManager::new(socket, lam);
        let shared = Arc::new(EndpointShared {
            config: config.clone(),
            local_addr,
            wake: Default::default(),
            backlog: AtomicUsize::new(0),
            reading_paused: AtomicBool::new(false),
            next_peer: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            counters,
            queued_total: AtomicUsize::new(0),
            addresses: AtomicUsize::new(0),
            ready: Default::default(),
            any_ready: Default::default(),
        });
        let (events, service_events) = match app {
            Some(tx) => (EventTarget::App(tx), None),
            None => {
                let (tx, rx) = crossbeam::channel::unbounded();
                (EventTarget::Service(tx), Some(rx))
            }
        };
        let sink = Arc::new(Sink {
            config,
            events,
            endpoint: shared.clone(),
            next_deadline: AtomicU64::new(u64::MAX),
            epoch: now,
            path_key: rng.next_u64(),
            path_count: AtomicU64::new(0),
        });
        let service = make_service(&shared);
        let driver = Self {
            mgr,
            service,
            service_events,
            sink,
            cmds,
            rng,
            token: security.token,
            mint: security.mint,
            cluster: security.cluster,
            conns: HashMap::new(),
            addresses: Addresses::default(),
            scope: Scope::default(),
            parked_deadlines: BinaryHeap::new(),
        };
        (driver, shared)
    }

    /// Prepares a session at `addr`; laminar creates it in the next pass.
    fn create(&mut self, addr: SocketAddr, role: Role, now: Instant) {
        let ep = &self.sink.endpoint;
        let peer = PeerId(ep.next_peer.fetch_add(1, Ordering::Relaxed));
        let (tx, inbox) = crossbeam::channel::unbounded();
        let address = self.addresses.join(addr);
        let mut shared = ConnShared::new(peer, addr, ep.clone(), address, tx, now);
        match &role {
            Role::Client { token, .. } => shared.protected = token.is_some(),
            Role::Server { client, .. } => {
                shared.incoming = true;
                shared.protected = client.is_some();
                shared.identity = client.as_ref().map(|c| c.identity.clone());
            }
        }
        let shared = Arc::new(shared);
        if let Role::Server { tag, client: Some(_), .. } = &role {
            // A protected session may follow its client to another address.
            self.mgr.socket_mut().register_tag(addr, *tag);
        }
        self.conns.insert(addr, shared.clone());
        let init = conn::Init { shared, inbox, sink: self.sink.clone(), role };
        self.scope.inits.push((addr, init));
        // The manager owns the receiver; it lives as long as `self`.
        let _ = self.mgr.event_sender().send(conn::poke(addr));
    }

    /// Sends `cmd` to every live session (parked ones come back for it in the next pass).
    fn broadcast(&self, cmd: impl Fn() -> Command) {
        for c in self.conns.values() {
            c.command(cmd());
        }
    }

    /// Brings parked sessions back into the manager for this pass: those a handle gave a
    /// command, and those whose deadline is due.
    fn unpark_due(&mut self, now: Instant) {
        // Set after a push, cleared before the take: a push racing this is taken now or seen
        // next pass.
        let ready = if self.sink.endpoint.any_ready.swap(false, Ordering::AcqRel) {
            std::mem::take(&mut *crate::sync::lock(&self.sink.endpoint.ready))
        } else {
            Vec::new()
        };
        for addr in ready {
            if self.scope.parked.contains_key(&addr) {
                let _ = self.mgr.event_sender().send(conn::poke(addr));
            }
        }
        while let Some(Reverse((at, generation, addr))) = self.parked_deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.parked_deadlines.pop();
            if self.scope.parked.get(&addr).is_some_and(|p| p.generation == generation) {
                let _ = self.mgr.event_sender().send(conn::poke(addr));
            }
        }
    }

    /// Sheds, for each address the gate named, its longest-idle incoming session (its slot
    /// went to a newcomer).
    fn displace(&mut self) {
        for key in std::mem::take(&mut self.mgr.socket_mut().displace) {
            let victim = self
                .conns
                .values()
                .filter(|c| c.incoming && !c.shedding.load(Ordering::Relaxed))
                .filter(|c| crate::proto::gate::address_key(c.addr().ip()) == key)
                .min_by_key(|c| crate::sync::lock(&c.stats).last_received);
            if let Some(c) = victim {
                c.shedding.store(true, Ordering::Relaxed);
                c.command(Command::Shed);
            }
        }
    }

    /// Binds the tokens of sessions that proved they hold their secrets during the pass; a
    /// session the token was bound to before (the player before a restart or a NAT rebinding)
    /// is over.
    fn note_proven(&mut self) {
        for (addr, proof) in std::mem::take(&mut self.scope.proven) {
            if let Some(old) = self.mgr.socket_mut().prove(addr, proof)
                && let Some(c) = self.conns.get(&old)
            {
                c.command(Command::Abort { reason: DisconnectReason::Replaced });
            }
        }
    }

    /// Moves the bookkeeping of sessions that moved with their clients during the pass (see
    /// `conn`): the session table, the socket's known address and tag, the token's binding.
    /// Each is parked under its new address, due now: it comes back in the next pass.
    fn note_moved(&mut self) {
        for m in std::mem::take(&mut self.scope.moved) {
            tracing::debug!(old = %m.old, new = %m.new, "a session moved with its client");
            if let Some(c) = self.conns.remove(&m.old) {
                self.conns.insert(m.new, c);
            }
            let socket = self.mgr.socket_mut();
            socket.migrate(m.old, m.new);
            if let Some(proof) = m.proof {
                // Bound to the new address; the old one was this session's own.
                socket.prove(m.new, proof);
            }
            self.sink.endpoint.wake.notify();
        }
    }

    /// Enters the sessions parked during the pass into the deadline heap.
    fn note_parked(&mut self) {
        for (addr, at, generation) in self.scope.just_parked.drain(..) {
            if let Some(at) = at {
                self.parked_deadlines.push(Reverse((at, generation, addr)));
            }
        }
        // Entries of sessions that came back before their deadline linger until it passes;
        // rebuild the heap if they outnumber the live ones.
        if self.parked_deadlines.len() > 2 * self.scope.parked.len() + 1024 {
            self.parked_deadlines = self
                .scope
                .parked
                .iter()
                .filter_map(|(a, p)| Some(Reverse((p.deadline?, p.generation, *a))))
                .collect();
        }
        let parked = self.scope.parked.len();
        self.sink.endpoint.counters.parked.store(parked, Ordering::Relaxed);
    }

    fn on_cmd(&mut self, cmd: DriverCmd, now: Instant, shutdown: &mut Option<Shutdown>) {
        match cmd {
            DriverCmd::Connect { addr, done } => {
                if shutdown.is_some() {
                    let _ = done.send(Err(ConnectError::EndpointClosed));
                } else if self.mgr.socket().is_known(&addr) {
                    let _ = done.send(Err(ConnectError::AlreadyConnected));
                } else {
                    self.mgr.socket_mut().add_outgoing(addr);
                    let nonce = self.rng.next_u32();
                    let token = Security::token_for(self.mint.as_ref(), self.token.as_ref(), addr);
                    let cluster = self.cluster;
                    self.create(addr, Role::Client { nonce, done, token, cluster }, now);
                }
            }
            DriverCmd::SetToken(token) => self.token = token,
            DriverCmd::Shutdown { done } => self.begin_shutdown(now, done, shutdown),
        }
    }

    fn begin_shutdown(
        &mut self,
        now: Instant,
        done: Option<oneshot::Sender<()>>,
        shutdown: &mut Option<Shutdown>,
    ) {
        if let Some(s) = shutdown {
            s.waiters.extend(done);
            return;
        }
        self.mgr.socket_mut().refusing = true;
        self.service.shutdown(now);
        self.broadcast(|| Command::Close { code: 0 });
        let cfg = &self.sink.config;
        let deadline = now + cfg.close_linger + cfg.max_rto * 3;
        *shutdown = Some(Shutdown { deadline, waiters: done.into_iter().collect() });
    }

    fn now(&self) -> Instant {
        self.mgr.socket().io.now()
    }

    fn make_timer(&self) -> Timer {
        let now = self.now();
        if self.mgr.socket().io.virtual_time() {
            return Timer::tokio(now);
        }
        // Without a thread (the system refused one), fall back to a tokio timer.
        Timer::thread(self.sink.endpoint.clone(), now).unwrap_or_else(|_| Timer::tokio(now))
    }

    /// One pass of laminar's manager. Returns whether the service queued messages after the
    /// sessions transmitted (while handling events): then another pass must run at once.
    fn poll(&mut self, now: Instant) -> bool {
        // Whatever the handles asked for until now, this pass serves.
        self.sink.endpoint.wake.clear();
        // The service's queued work first, so that what it sends goes out in this pass.
        pass::enter(&self.sink.endpoint, Phase::Transmitting);
        self.service.poll(now);
        self.displace();
        for (addr, nonce, window, client) in std::mem::take(&mut self.mgr.socket_mut().admitted) {
            let tag = self.rng.next_u32();
            self.create(addr, Role::Server { nonce, tag, window, client }, now);
        }
        let ep = &self.sink.endpoint;
        let paused = ep.backlog.load(Ordering::Acquire) >= self.sink.config.event_backlog;
        ep.reading_paused.store(paused, Ordering::Release);
        let socket = self.mgr.socket_mut();
        socket.paused = paused;
        socket.begin(now, self.sink.config.max_datagrams_per_poll);
        self.sink.next_deadline.store(u64::MAX, Ordering::Release);
        self.unpark_due(now);
        let mgr = &mut self.mgr;
        conn::scope(&mut self.scope, || mgr.manual_poll(now));
        // Every init is taken in the pass after it was made; one left over means laminar did
        // not create the connection, and its waiter learns through the dropped `done`.
        self.scope.inits.clear();
        self.note_moved();
        self.note_parked();
        self.note_proven();
        while let Ok(ev) = self.mgr.event_receiver().try_recv() {
            if let laminar::SocketEvent::Disconnect(addr) = ev {
                self.mgr.socket_mut().forget(&addr);
                if let Some(c) = self.conns.remove(&addr) {
                    self.addresses.leave(c.opened_from);
                }
            }
        }
        self.sink.endpoint.sessions.store(self.conns.len(), Ordering::Release);
        self.sink.endpoint.addresses.store(self.addresses.len(), Ordering::Release);
        // What the pass sent leaves now, gathered (GSO) where it can be.
        self.mgr.socket_mut().flush();
        pass::enter(&self.sink.endpoint, Phase::Events);
        if let Some(rx) = &self.service_events {
            while let Ok(e) = rx.try_recv() {
                self.service.event(e, now);
            }
        }
        pass::leave() == Phase::EventsSent
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let nanos = self.sink.next_deadline.load(Ordering::Acquire);
        let protocol = (nanos != u64::MAX).then(|| self.sink.epoch + Duration::from_nanos(nanos));
        let parked = self.parked_deadlines.peek().map(|Reverse((at, _, _))| *at);
        // While reading is paused, datagrams waiting in the socket are no reason to wake.
        let socket = self.mgr.socket();
        let arrival = if socket.paused { None } else { socket.io.next_arrival() };
        [protocol, parked, arrival, self.service.next_deadline()].into_iter().flatten().min()
    }

    /// The task: runs until shut down.
    pub(crate) async fn run(mut self) {
        let mut shutdown: Option<Shutdown> = None;
        let mut timer = self.make_timer();
        // Passes run back to back because events made the service send: every few, let other
        // tasks run.
        let mut again_in_a_row = 0u32;
        loop {
            let now = self.now();
            loop {
                match self.cmds.try_recv() {
                    Ok(cmd) => self.on_cmd(cmd, now, &mut shutdown),
                    // Every `Endpoint` is gone: shut down.
                    Err(mpsc::error::TryRecvError::Disconnected) if shutdown.is_none() => {
                        self.begin_shutdown(now, None, &mut shutdown);
                    }
                    Err(_) => break,
                }
            }
            let again = self.poll(now);
            if let Some(s) = &shutdown
                && (self.mgr.socket().known_count() == 0 || now >= s.deadline)
            {
                break;
            }
            if again {
                // What the service sent while handling events leaves now, not at some later
                // wake-up.
                again_in_a_row += 1;
                if again_in_a_row.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            again_in_a_row = 0;
            let socket = self.mgr.socket();
            if !socket.admitted.is_empty() || socket.budget_exhausted() {
                // More work is ready; let other tasks run first.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = [self.next_deadline(), shutdown.as_ref().map(|s| s.deadline)]
                .into_iter()
                .flatten()
                .min();
            timer.arm(deadline);
            let Self { mgr, sink, .. } = &mut self;
            let socket = mgr.socket();
            let readable = std::future::poll_fn(|cx| socket.io.poll_readable(cx));
            // Commands from `Endpoint` handles (and their dropping) come with a wake signal.
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| sink.endpoint.wake.poll(cx)) => {}
                _ = readable, if !socket.paused => {}
                _ = std::future::poll_fn(|cx| timer.poll(cx)) => {}
            }
        }
        // Whatever did not finish in time ends now.
        let now = self.now();
        self.broadcast(|| Command::Abort { reason: DisconnectReason::EndpointClosed });
        self.poll(now);
        self.sink.endpoint.stopped.store(true, Ordering::Release);
        if let Some(s) = shutdown {
            for w in s.waiters {
                let _ = w.send(());
            }
        }
    }
}

struct Shutdown {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<()>>,
}
