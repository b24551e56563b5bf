//! A client of a fleet of game servers: connect, call grains through typed references, and let
//! every call find its server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use grainwire::client::{Client, ClientConfig, ConnectMode, ConsistentHash};
//! let client = Client::builder()
//!     .servers(["127.0.0.1:7777".parse()?, "127.0.0.1:7778".parse()?])
//!     .mode(ConnectMode::Multi)              // connect to all, reconnect in the background
//!     .strategy(ConsistentHash)              // the default: every client agrees on placement
//!     .connect()
//!     .await?;
//! for s in client.servers() {
//!     println!("{} at {}: {} grain types", s.id, s.addr, s.grain_types);
//! }
//! # Ok(()) }
//! ```
//!
//! Each server names itself and lists the grain types it hosts in its manifest, sent right
//! after the handshake (and again when it changes). The client keeps a routing snapshot of
//! which connected, healthy server hosts which type at which interface version, rebuilt only
//! when that changes, and routes each call by it, the grain type's [`Strategy`] and the
//! reference's [`Affinity`] (see [`route`](crate::proto::route)).
//!
//! The client's endpoint task owns the correlation tables: a call is queued to it, sent, and
//! completed by its response, by its deadline, or by the loss of its server, whichever comes
//! first, always exactly once. Dropping a call's future cancels it locally and tells the
//! server. A call pending on a server that dies fails at once with
//! [`CallError::Disconnected`], unless its method is `#[idempotent]`: then it is sent once more,
//! to another server.

mod cell;
mod pool;
pub(crate) mod service;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BufMut;
use crossbeam::queue::ArrayQueue;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use self::cell::{CallCell, Outcome};
use self::pool::{Phase, Slot};
use self::service::{Again, ClientCmd, ClientService, PREFIX_GAP};
use crate::arena;
use crate::config::{TransportConfig, duration_ms};
use crate::error::{BindError, CallError, CodecError, ConnectError, DisconnectReason};
use crate::grain::{GrainInterface, GrainRef, InterfaceInfo, MethodInfo};
use crate::proto::ids::{PeerId, ServerId};
use crate::proto::manifest::Manifest;
pub use crate::proto::route::{
    Affinity, Candidate, Candidates, ConsistentHash, LowestLatency, PickContext, RoundRobin,
    Strategy,
};
use crate::proto::route::{Load, RouteError, RouteTable, Strategies, Target};
use crate::proto::stats::CallAccounting;
pub use crate::proto::stats::CallStats;
use crate::proto::wire::rpc::{self, CallHeader, Status};
use crate::sync::lock;
use crate::transport::{Connection, Delivery, Endpoint, EndpointShared};

/// Which of its servers a client connects to, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectMode {
    /// One server: the first of the list that answers. When it is lost, the list is tried
    /// again from the start.
    Single,
    /// Every server, eagerly; each lost one is reconnected in the background. The default.
    #[default]
    Multi,
    /// None at first. A call whose grain type no connected server hosts connects the next
    /// server of the list (in order) and waits for its manifest, until one hosts the type or
    /// the list is exhausted. A lost server is reconnected when a call needs it again.
    OnDemand,
}

impl FromStr for ConnectMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "single" => Ok(Self::Single),
            "multi" => Ok(Self::Multi),
            "on-demand" => Ok(Self::OnDemand),
            other => Err(format!("unknown mode {other:?}: expected single, multi or on-demand")),
        }
    }
}

/// Options of a [`Client`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The transport's options.
    pub transport: TransportConfig,
    /// A call's deadline when neither the method (`#[grain(timeout_ms = ..)]`) nor the call
    /// (`with_timeout`) sets one. Default 5 s.
    #[serde(with = "duration_ms")]
    pub default_timeout: Duration,
    /// How long `connect` waits for servers' handshakes and manifests. Default 5 s.
    #[serde(with = "duration_ms")]
    pub connect_timeout: Duration,
    /// Calls that may be pending at once; more fail at once with `CallError::Overloaded`.
    /// Default 65536.
    pub max_pending_calls: usize,
    /// Which servers to connect to, and when. Default [`ConnectMode::Multi`].
    pub mode: ConnectMode,
    /// First wait before reconnecting to a server; doubled after each failed attempt, up to
    /// `reconnect_max`, with ±25 % random jitter. Default 200 ms.
    #[serde(with = "duration_ms")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts. Default 5 s.
    #[serde(with = "duration_ms")]
    pub reconnect_max: Duration,
    /// A server from which nothing arrived for this long (while keepalive pings go out every
    /// `transport.keepalive_interval`) is judged dead before the transport's idle timeout:
    /// it leaves routing at once, its pending calls fail (`#[idempotent]` ones are retried
    /// elsewhere), its session is dropped and reconnected. Default 3 s (three missed pings);
    /// at least twice the keepalive interval.
    #[serde(with = "duration_ms")]
    pub health_timeout: Duration,
    /// Time constant of the peak-EWMA latency estimate that [`LowestLatency`] uses.
    /// Default 10 s.
    #[serde(with = "duration_ms")]
    pub latency_decay: Duration,
    /// Seed of the reconnection jitter; `None` (the default) draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            default_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_pending_calls: 65536,
            mode: ConnectMode::Multi,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            health_timeout: Duration::from_secs(3),
            latency_decay: Duration::from_secs(10),
            seed: None,
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, problem| Err(ClientError::Config { field, problem });
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min", "must be non-zero and at most reconnect_max");
        }
        if self.health_timeout < self.transport.keepalive_interval * 2 {
            return bad("health_timeout", "must be at least twice transport.keepalive_interval");
        }
        if self.latency_decay.is_zero() {
            return bad("latency_decay", "must be non-zero");
        }
        self.transport.validate().map_err(BindError::from)?;
        Ok(())
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The local endpoint could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// An option is out of range.
    #[error("invalid client option {field}: {problem}")]
    Config {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// No server address was given.
    #[error("no server address given")]
    NoServers,
    /// The session could not be established (one server address).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No server could be reached within the connect timeout; the last error of each address
    /// (`None`: the attempt had not ended).
    #[error("no server reachable: {0:?}")]
    Unreachable(Vec<(SocketAddr, Option<ConnectError>)>),
    /// A session was established but the server sent no manifest in time.
    #[error("the server sent no manifest within the connect timeout")]
    NoManifest,
    /// The session ended before the manifest arrived.
    #[error("disconnected during the handshake: {0}")]
    Disconnected(DisconnectReason),
}

/// Something that happened to one of a client's servers. See [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A server's session is up and its manifest arrived: calls route to it from now on.
    Connected {
        /// The server's id.
        server: ServerId,
        /// Its address.
        addr: SocketAddr,
    },
    /// A server's session ended (or it was judged dead: [`DisconnectReason::Timeout`]). Calls
    /// no longer route to it; unless the client is closing, it will be reconnected.
    Disconnected {
        /// The server's id, if its manifest had arrived.
        server: Option<ServerId>,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: DisconnectReason,
    },
    /// A connected server sent a new manifest; routing already follows it.
    ManifestChanged {
        /// The server's id.
        server: ServerId,
        /// Its address.
        addr: SocketAddr,
    },
    /// An attempt to connect failed; the next one follows after `retry_in`.
    ConnectFailed {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: ConnectError,
        /// The wait before the next attempt (`None` in on-demand mode: when a call needs it).
        retry_in: Option<Duration>,
    },
}

/// What a client knows of one connected server. See [`Client::servers`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The server's id (from its manifest).
    pub id: ServerId,
    /// Its address.
    pub addr: SocketAddr,
    /// Grain types it hosts.
    pub grain_types: usize,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Calls pending on it.
    pub pending: u32,
    /// Peak-EWMA of its calls' latency (starts at the handshake's RTT).
    pub latency: Duration,
    /// The transport's smoothed round-trip time.
    pub rtt: Duration,
}

/// What the client's task publishes for callers and `Client` methods.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The routing snapshot (replaced, never changed in place).
    pub(crate) routes: Arc<RouteTable>,
    /// Live sessions, in the order they were established.
    pub(crate) servers: Vec<ServerView>,
    /// Why the latest session ended.
    pub(crate) last_gone: Option<DisconnectReason>,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerView {
    pub(crate) peer: PeerId,
    pub(crate) conn: Connection,
    pub(crate) manifest: Option<Arc<Manifest>>,
    pub(crate) load: Arc<Load>,
}

/// State shared by `Client` handles, grain references, the connection tasks and the client's
/// endpoint task.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(crate) config: ClientConfig,
    endpoint: Mutex<Option<Endpoint>>,
    task: OnceLock<Arc<EndpointShared>>,
    cmds: crossbeam::channel::Sender<ClientCmd>,
    /// Published by the task, read by callers; held only to route or copy a small value.
    view: Mutex<View>,
    pub(crate) changed: Notify,
    accounting: Mutex<CallAccounting>,
    pending: AtomicUsize,
    /// Finished calls' cells, reused by later calls (saves an allocation per call).
    spare_cells: ArrayQueue<Arc<CallCell>>,
    pub(crate) strategies: Strategies,
    /// One per connection task: the addresses it connects to and its state.
    pub(crate) slots: Box<[Slot]>,
    events: broadcast::Sender<ClientEvent>,
    pub(crate) closing: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ClientShared {
    /// Changes the published view and wakes whoever waits for a change.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut View)) {
        f(&mut lock(&self.view));
        self.changed.notify_waiters();
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        tracing::debug!(?event, "client event");
        // No receiver is fine: nobody listens.
        let _ = self.events.send(event);
    }

    pub(crate) fn finished_one(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn wake(&self) {
        if let Some(t) = self.task.get() {
            t.wake.notify();
        }
    }

    /// Tells the client's task something changed outside it (a connection attempt ended).
    pub(crate) fn poke(&self) {
        if self.cmds.send(ClientCmd::Poke).is_ok() {
            self.wake();
        }
    }

    /// Routes a call: the server session and the type's index there, or `None` when the call
    /// must wait for a server (on-demand mode).
    fn route(
        &self,
        target: &Target,
        r: &GrainRef,
    ) -> Result<Option<(PeerId, u32)>, CallError<Infallible>> {
        let view = lock(&self.view);
        match view.routes.route(target, r.hash, &r.affinity) {
            Ok(d) => {
                tracing::debug!(
                    grain = %r.id, server = %d.candidate.server, reason = ?d.reason,
                    strategy = d.strategy, candidates = d.candidates, "routed"
                );
                Ok(Some((d.candidate.peer, d.candidate.type_index)))
            }
            Err(e) => {
                drop(view);
                if self.config.mode == ConnectMode::OnDemand && self.could_connect_more() {
                    tracing::debug!(grain = %r.id, error = ?e, "waiting for a server");
                    return Ok(None);
                }
                tracing::debug!(grain = %r.id, error = ?e, "no route");
                Err(route_error(e, &view_gone(self)))
            }
        }
    }

    /// On-demand: whether some server is not connected yet or its manifest is on its way (a
    /// call may wait for it).
    pub(crate) fn could_connect_more(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.phase(), Phase::Idle | Phase::Connecting | Phase::Connected))
    }
}

fn view_gone(shared: &ClientShared) -> Option<DisconnectReason> {
    let v = lock(&shared.view);
    if v.servers.is_empty() { v.last_gone } else { None }
}

/// The error a call gets when it cannot be routed.
pub(crate) fn route_error(e: RouteError, gone: &Option<DisconnectReason>) -> CallError<Infallible> {
    match e {
        RouteError::NoServers => gone.map_or(CallError::NotConnected, CallError::Disconnected),
        RouteError::NotHosted => CallError::UnknownGrainType,
        RouteError::Incompatible { ours, theirs } => {
            CallError::IncompatibleVersion { ours, theirs }
        }
        RouteError::Unavailable(s) => CallError::ServerUnavailable(s),
        RouteError::Draining => CallError::ShuttingDown,
    }
}

/// A client of one or more game servers. Cheap to clone; clones share the connections.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) shared: Arc<ClientShared>,
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

/// Sets up a [`Client`]: its servers, mode, strategies and options.
#[must_use = "a builder does nothing until `connect`"]
pub struct ClientBuilder {
    config: ClientConfig,
    addrs: Vec<SocketAddr>,
    strategies: Strategies,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder").field("addrs", &self.addrs).finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Replaces the options (the mode set by [`mode`](Self::mode) is part of them).
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a server address.
    pub fn server(mut self, addr: SocketAddr) -> Self {
        self.addrs.push(addr);
        self
    }

    /// Adds server addresses.
    pub fn servers(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.addrs.extend(addrs);
        self
    }

    /// Sets the connection mode (default [`ConnectMode::Multi`]).
    pub fn mode(mut self, mode: ConnectMode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Sets the strategy of every grain type without its own (default [`ConsistentHash`]).
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategies.set_default(Arc::new(strategy));
        self
    }

    /// Sets the strategy of the grain type behind the reference type `R`.
    pub fn strategy_for<R: GrainInterface>(mut self, strategy: impl Strategy) -> Self {
        self.strategies.set(R::info().grain_type, Arc::new(strategy));
        self
    }

    /// Starts the client on a UDP socket and connects as the mode says: `Single` waits for the
    /// first reachable server, `Multi` for every server to answer or fail once (at least one
    /// must be up), `OnDemand` returns at once. Waits at most `connect_timeout`.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let first = *self.addrs.first().ok_or(ClientError::NoServers)?;
        self.config.validate()?;
        let io = crate::transport::io::UdpIo::bind(
            unspecified_for(first),
            self.config.transport.socket_buffer_size,
        )
        .map_err(BindError::from)?;
        self.start(io).await
    }

    /// Like [`connect`](Self::connect), over the simulated network from `local` (port 0 picks
    /// one).
    #[cfg(feature = "test-util")]
    pub async fn connect_sim(
        self,
        net: &crate::transport::sim::SimNetwork,
        local: SocketAddr,
    ) -> Result<Client, ClientError> {
        if self.addrs.is_empty() {
            return Err(ClientError::NoServers);
        }
        self.config.validate()?;
        let io = net.bind_io(local).map_err(BindError::from)?;
        self.start(io).await
    }

    async fn start(self, io: impl crate::transport::io::Io) -> Result<Client, ClientError> {
        let Self { config, addrs, strategies } = self;
        let (tx, rx) = crossbeam::channel::unbounded();
        let slots: Box<[Slot]> = match config.mode {
            ConnectMode::Single => vec![Slot::new(addrs.clone())].into(),
            _ => addrs.iter().map(|&a| Slot::new(vec![a])).collect(),
        };
        let shared = Arc::new(ClientShared {
            config: config.clone(),
            endpoint: Mutex::new(None),
            task: OnceLock::new(),
            cmds: tx,
            view: Mutex::new(View::default()),
            changed: Notify::new(),
            accounting: Mutex::new(CallAccounting::new(Instant::now())),
            pending: AtomicUsize::new(0),
            spare_cells: ArrayQueue::new(SPARE_CELLS),
            strategies,
            slots,
            events: broadcast::channel(EVENT_BACKLOG).0,
            closing: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let endpoint = Endpoint::start_service(io, config.transport.clone(), move |ep| {
            let _ = s.task.set(ep.clone());
            ClientService::new(s, rx)
        })?;
        let connector = endpoint.connector();
        *lock(&shared.endpoint) = Some(endpoint);
        let mut seed = config.seed.unwrap_or_else(pool::os_seed);
        {
            let mut tasks = lock(&shared.tasks);
            for i in 0..shared.slots.len() {
                seed = crate::proto::route::fmix64(seed.wrapping_add(i as u64 + 1));
                tasks.push(tokio::spawn(pool::run(shared.clone(), i, connector.clone(), seed)));
            }
        }
        let client = Client { shared };
        if config.mode == ConnectMode::OnDemand {
            return Ok(client);
        }
        match client.wait_connected(config.connect_timeout).await {
            Ok(()) => Ok(client),
            Err(e) => {
                client.disconnect().await;
                Err(e)
            }
        }
    }
}

impl Client {
    /// A builder: servers, mode, strategies, options.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            config: ClientConfig::default(),
            addrs: Vec::new(),
            strategies: Strategies::default(),
        }
    }

    /// Connects to the one server at `addr` and waits for its manifest (mode
    /// [`ConnectMode::Single`]; reconnected in the background if lost).
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        Self::builder().config(config).server(addr).mode(ConnectMode::Single).connect().await
    }

    /// Connects to the one server at `addr` over the simulated network, from `local` (port 0
    /// picks one).
    #[cfg(feature = "test-util")]
    pub async fn connect_sim(
        net: &crate::transport::sim::SimNetwork,
        local: SocketAddr,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        Self::builder()
            .config(config)
            .server(addr)
            .mode(ConnectMode::Single)
            .connect_sim(net, local)
            .await
    }

    /// Waits until the mode's condition holds (see [`ClientBuilder::connect`]).
    async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ready = lock(&shared.view).servers.iter().filter(|s| s.manifest.is_some()).count();
            let settled = shared.slots.iter().all(Slot::settled);
            let done = match shared.config.mode {
                ConnectMode::Multi => ready > 0 && settled,
                _ => ready > 0,
            };
            if done {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if ready > 0 {
                    return Ok(()); // some servers are up; the others keep being retried
                }
                return Err(self.connect_failure());
            }
        }
    }

    /// Why nothing connected.
    fn connect_failure(&self) -> ClientError {
        let shared = &self.shared;
        if !lock(&shared.view).servers.is_empty() {
            return ClientError::NoManifest;
        }
        let errors: Vec<(SocketAddr, Option<ConnectError>)> =
            shared.slots.iter().flat_map(Slot::errors).collect();
        match errors.as_slice() {
            [(_, Some(ConnectError::Failed(r)))] if *r != DisconnectReason::Timeout => {
                ClientError::Connect(ConnectError::Failed(*r))
            }
            [(_, last)] => ClientError::Connect(
                last.unwrap_or(ConnectError::Failed(DisconnectReason::Timeout)),
            ),
            _ => ClientError::Unreachable(errors),
        }
    }

    /// Whether at least one server is connected and its manifest known.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.view).servers.iter().any(|s| s.manifest.is_some())
    }

    /// The id of the first connected server (the only one in single mode).
    pub fn server_id(&self) -> Option<ServerId> {
        self.manifest().map(|m| m.server_id.clone())
    }

    /// What the first connected server hosts (the only one in single mode); see
    /// [`servers`](Self::servers) for all.
    pub fn manifest(&self) -> Option<Arc<Manifest>> {
        lock(&self.shared.view).servers.iter().find_map(|s| s.manifest.clone())
    }

    /// The connected servers (with their manifests), in the order they connected.
    pub fn servers(&self) -> Vec<ServerInfo> {
        lock(&self.shared.view)
            .servers
            .iter()
            .filter_map(|s| {
                let m = s.manifest.clone()?;
                Some(ServerInfo {
                    id: m.server_id.clone(),
                    addr: s.conn.remote_addr(),
                    grain_types: m.grains.len(),
                    manifest: m,
                    pending: s.load.pending(),
                    latency: s.load.latency(),
                    rtt: s.conn.stats().rtt,
                })
            })
            .collect()
    }

    /// Events about the client's servers (connected, disconnected with a reason, manifest
    /// changed, connect attempt failed), from now on. A receiver that falls more than 1024
    /// events behind loses the oldest (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }

    /// Why the latest session ended, while no server is connected.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        view_gone(&self.shared)
    }

    /// Call statistics of this client (all servers).
    pub fn stats(&self) -> CallStats {
        let pending = self.shared.pending.load(Ordering::Acquire) as u64;
        lock(&self.shared.accounting).snapshot(pending)
    }

    /// The transport statistics of the session to the first connected server.
    pub fn transport_stats(&self) -> Option<crate::transport::ConnectionStats> {
        lock(&self.shared.view).servers.first().map(|s| s.conn.stats())
    }

    /// A typed reference to the grain with `key`, e.g. `client.grain::<PlayerRef>(42)`.
    pub fn grain<R: GrainInterface>(&self, key: impl Into<crate::proto::ids::GrainKey>) -> R {
        R::from_grain_ref(GrainRef::new(self.clone(), R::info(), key.into()))
    }

    /// Stops reconnecting, closes every session (pending calls fail with `Disconnected`) and
    /// stops the endpoint.
    pub async fn disconnect(&self) {
        self.shared.closing.store(true, Ordering::Release);
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
        let endpoint = lock(&self.shared.endpoint).take();
        if let Some(mut ep) = endpoint {
            ep.close().await;
        }
    }

    /// Queues a call and returns the future of its outcome.
    pub(crate) fn call_raw<A: Serialize + ?Sized>(
        &self,
        iface: &InterfaceInfo,
        method: &MethodInfo,
        r: &GrainRef,
        args: &A,
    ) -> Result<CallFuture, CallError<Infallible>> {
        let shared = &self.shared;
        let target = target_of(iface);
        let to = shared.route(&target, r)?;
        let timeout = r.timeout.or(method.timeout).unwrap_or(shared.config.default_timeout);
        let call = CallHeader {
            type_index: 0, // written by the client's task once the server is known
            version: iface.version,
            method: method.id,
            deadline_ms: Some(timeout.as_millis().min(u128::from(u32::MAX)) as u32),
            key: r.id.key.clone(),
        };
        let (frame, encoded) = arena::frame(PREFIX_GAP + 24 + method.size_hint, |out| {
            out.put_bytes(0, PREFIX_GAP);
            let flags = rpc::encode_request_body(out, &call);
            arena::encode(out, args).map(|()| flags)
        });
        let flags = encoded.map_err(|e| CallError::Encode(CodecError(e)))?;
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.config.max_pending_calls {
            shared.finished_one();
            return Err(CallError::Overloaded);
        }
        let again = Again {
            target,
            hash: r.hash,
            affinity: r.affinity.clone(),
            idempotent: method.idempotent,
        };
        let cell = shared.spare_cells.pop().unwrap_or_else(|| Arc::new(CallCell::new()));
        let cmd = ClientCmd::Call {
            to,
            frame,
            flags,
            stream: r.stream,
            timeout,
            cell: cell.clone(),
            again,
        };
        // The receiver lives in the client's task; if it is gone, the cell says so below.
        if shared.cmds.send(cmd).is_err() {
            shared.finished_one();
            return Err(CallError::NotConnected);
        }
        shared.wake();
        Ok(CallFuture { cell, shared: shared.clone() })
    }

    /// Sends a one-way call: routed like any call, queued on the grain's ordered stream, no
    /// response. It needs a connected server now (it never waits for one).
    pub(crate) fn send_one_way<A: Serialize + ?Sized>(
        &self,
        iface: &InterfaceInfo,
        method: &MethodInfo,
        r: &GrainRef,
        args: &A,
    ) -> Result<(), CallError<Infallible>> {
        let shared = &self.shared;
        let target = target_of(iface);
        let (conn, type_index) = {
            let view = lock(&shared.view);
            let d = view
                .routes
                .route(&target, r.hash, &r.affinity)
                .map_err(|e| route_error(e, &view.last_gone.filter(|_| view.servers.is_empty())))?;
            let peer = d.candidate.peer;
            let conn = view.servers.iter().find(|s| s.peer == peer).map(|s| s.conn.clone());
            (conn.ok_or(CallError::NotConnected)?, d.candidate.type_index)
        };
        let call = CallHeader {
            type_index,
            version: iface.version,
            method: method.id,
            deadline_ms: None,
            key: r.id.key.clone(),
        };
        let (frame, encoded) = arena::frame(24 + method.size_hint, |out| {
            rpc::encode_call(out, None, &call);
            arena::encode(out, args)
        });
        encoded.map_err(|e| CallError::Encode(CodecError(e)))?;
        lock(&shared.accounting).total += 1;
        conn.send(Delivery::reliable_ordered(r.stream), frame.freeze()).map_err(|e| match e {
            crate::error::SendError::MessageTooLarge { size, max } => {
                CallError::TooLarge { size, max }
            }
            crate::error::SendError::BufferFull { .. } => CallError::Overloaded,
            _ => CallError::NotConnected,
        })
    }
}

fn target_of(iface: &InterfaceInfo) -> Target {
    Target {
        grain_type: iface.grain_type,
        interface: iface.id,
        version: iface.version,
        contract: iface.contract,
    }
}

/// How many events a slow [`Client::events`] receiver may fall behind.
const EVENT_BACKLOG: usize = 1024;

/// How many finished calls' cells a client keeps for reuse.
const SPARE_CELLS: usize = 256;

/// A pending call. Dropping it before it completes cancels the call.
#[derive(Debug)]
pub(crate) struct CallFuture {
    cell: Arc<CallCell>,
    shared: Arc<ClientShared>,
}

impl Future for CallFuture {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.cell.poll(cx)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if !self.cell.is_finished() {
            if let Some(sent) = self.cell.cancel() {
                self.shared.finished_one();
                if let Some((peer, id)) = sent {
                    if self.shared.cmds.send(ClientCmd::Cancel { peer, id }).is_ok() {
                        self.shared.wake();
                    }
                }
            }
        }
        if let Some(cell) = Arc::get_mut(&mut self.cell) {
            // Nobody else holds the cell any more (the service let go of it): keep it for
            // another call.
            cell.reset();
            let _ = self.shared.spare_cells.push(self.cell.clone());
        }
    }
}

/// Turns a call's outcome into the method's result; `version` is the caller's interface
/// version (for `IncompatibleVersion`), `app` decodes an application error.
pub(crate) fn decode_outcome<T, E>(
    outcome: Outcome,
    version: u8,
    app: impl FnOnce(&[u8]) -> CallError<E>,
) -> Result<T, CallError<E>>
where
    T: for<'de> Deserialize<'de>,
{
    let (status, payload) = outcome.map_err(|e| e.map_app(|never| match never {}))?;
    match status {
        Status::Ok => postcard::from_bytes(&payload).map_err(|e| CallError::Decode(CodecError(e))),
        Status::AppError => Err(app(&payload)),
        other => Err(status_error(other, version, &payload)),
    }
}

/// The local error for a server status other than `Ok`/`AppError`.
pub(crate) fn status_error<E>(status: Status, version: u8, payload: &[u8]) -> CallError<E> {
    match status {
        Status::UnknownGrainType => CallError::UnknownGrainType,
        Status::UnknownMethod => CallError::UnknownMethod,
        Status::IncompatibleVersion => {
            // The server names its version in the payload.
            CallError::IncompatibleVersion {
                ours: version,
                theirs: payload.first().copied().unwrap_or(0),
            }
        }
        Status::DeadlineExceeded => CallError::DeadlineExceeded,
        Status::Overloaded => CallError::Overloaded,
        Status::HandlerPanicked => CallError::HandlerPanicked,
        Status::ShuttingDown => CallError::ShuttingDown,
        _ => CallError::BadRequest,
    }
}
