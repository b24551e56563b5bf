//! A client of a fleet of game servers: connect, call grains through typed references, and let
//! every call find its server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use grainwire::client::{Client, ClientConfig, ConnectMode, ConsistentHash, ServerAddr};
//! let client = Client::builder()
//!     // `ip:port`, or a `host:port` name resolved on every connect attempt
//!     .servers(["127.0.0.1:7777".parse::<ServerAddr>()?, "eu-2.example.net:7777".parse()?])
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
//! reference's [`Affinity`].
//!
//! The client's endpoint task owns the correlation tables: a call is queued to it, sent, and
//! completed by its response, by its deadline, or by the loss of its server, whichever comes
//! first, always exactly once. Dropping a call's future cancels it locally and tells the
//! server. A call pending on a server that dies fails at once with
//! [`CallError::Disconnected`], unless its method is `#[idempotent]`: then the [`RetryPolicy`]
//! sends it again, to another server (by default once, at once); so it does with a call a
//! server refused without running it (shutting down, no longer hosting the type).

mod builder;
mod discovery;
mod options;
mod pool;
pub(crate) mod service;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use tokio::sync::{Notify, broadcast};

pub use self::builder::ClientBuilder;
pub use self::options::{
    AddrParseError, ClientConfig, ClientError, ClientEvent, ClusterMismatch, ClusterNode,
    ConnectMode, Removal, RetryPolicy, ServerAddr, ServerInfo, StrategyName, Topology,
    TopologyDiff,
};
use self::pool::{Phase, Slot};
use self::service::{Again, ClientCmd};
use crate::error::{CallError, ConnectError, DisconnectReason};
use crate::interface::InterfaceInfo;
use crate::proto::ids::{GrainType, MethodId, PeerId, ServerId};
use crate::proto::manifest::Manifest;
pub use crate::proto::manifest::{MetaValue, Metadata};
pub use crate::proto::route::{
    Affinity, ByPriority, Candidate, Candidates, ConsistentHash, LowestLatency, PickContext,
    RoundRobin, Strategy, Tiered, Tiering,
};
use crate::proto::route::{Load, RouteError, RouteTable, Strategies, Target};
use crate::proto::stats::CallAccounting;
pub use crate::proto::stats::CallStats;
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::encode::Request;
use crate::rpc::reference::Calls;
pub use crate::rpc::reference::{Answer, GrainInterface, GrainRef, Invocation, Invoked, Invoker};
use crate::sync::lock;
use crate::transport::{Connection, Endpoint, EndpointShared};

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
    pub(crate) conn: Connection,
    pub(crate) manifest: Option<Arc<Manifest>>,
    pub(crate) load: Arc<Load>,
    pub(crate) stats: Arc<Mutex<CallAccounting>>,
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
    /// Bumped (under the `view` lock) whenever the routing snapshot is replaced: callers keep
    /// the snapshot they last read per thread and lock the view only when this moved.
    pub(crate) routes_version: AtomicU64,
    /// This client among all clients of the process (the per-thread snapshot cache's key).
    pub(crate) client_id: u64,
    pub(crate) changed: Notify,
    accounting: Mutex<CallAccounting>,
    /// One-way calls sent (counted apart from `accounting`: no lock on their path).
    pub(crate) one_way_sent: std::sync::atomic::AtomicU64,
    pending: AtomicUsize,
    /// Finished calls' cells, reused by later calls (saves an allocation per call).
    spare_cells: ArrayQueue<Arc<CallCell>>,
    pub(crate) strategies: Strategies,
    /// One per connection task: the addresses it connects to and its state. Slots are added
    /// and retired while the client runs; held only to copy or change the list.
    pub(crate) slots: Mutex<Vec<Arc<Slot>>>,
    /// Seeds the next slot's reconnect jitter.
    slot_seed: Mutex<u64>,
    /// Servers found to be of another cluster, by address (their slots are retired).
    pub(crate) refused: Mutex<Vec<ClusterMismatch>>,
    /// The client's socket is IPv6 (server names resolve to addresses of its family).
    pub(crate) v6: bool,
    /// Set when the client follows a topology source.
    pub(crate) discovery: Option<Arc<discovery::Discovery>>,
    /// Retry policies: the client's, and those of single methods.
    pub(crate) retry: RetryTable,
    events: broadcast::Sender<ClientEvent>,
    pub(crate) closing: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ClientShared {
    /// Changes the published view and wakes whoever waits for a change.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut View)) {
        {
            let mut view = lock(&self.view);
            f(&mut view);
            self.routes_version.fetch_add(1, Ordering::Release);
        }
        self.changed.notify_waiters();
    }

    /// Runs `f` on the current routing snapshot: the one this thread read last, unless it was
    /// replaced since (then the view is locked once to read the new one).
    fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        let version = self.routes_version.load(Ordering::Acquire);
        ROUTES.with_borrow_mut(|cached| {
            let fresh =
                cached.as_ref().is_some_and(|(c, v, _)| *c == self.client_id && *v == version);
            if !fresh {
                let view = lock(&self.view);
                let version = self.routes_version.load(Ordering::Acquire);
                *cached = Some((self.client_id, version, view.routes.clone()));
            }
            let (_, _, routes) = cached.as_ref().expect("filled above");
            f(routes)
        })
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
        let routed = self.with_routes(|routes| {
            routes.route(target, r.hash, &r.affinity).map(|d| {
                tracing::debug!(
                    grain = %r.id, server = %d.candidate.server, reason = ?d.reason,
                    strategy = d.strategy, candidates = d.candidates, "routed"
                );
                (d.candidate.peer, d.candidate.type_index)
            })
        });
        match routed {
            Ok(to) => Ok(Some(to)),
            Err(e) => {
                if self.config.mode == ConnectMode::OnDemand && self.could_connect_more() {
                    tracing::debug!(grain = %r.id, error = ?e, "waiting for a server");
                    return Ok(None);
                }
                tracing::debug!(grain = %r.id, error = ?e, "no route");
                let e = route_error(e);
                self.call_failed(&e);
                Err(e)
            }
        }
    }

    /// A call failed with `error`: a client following a topology source may ask it again.
    pub(crate) fn call_failed(&self, error: &CallError) {
        if let Some(d) = &self.discovery {
            d.call_failed(error);
        }
    }

    /// Retires `slot` and drops it from the list.
    pub(crate) fn drop_slot(&self, slot: &Arc<Slot>) {
        slot.retire();
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// On-demand: whether some server is not connected yet or its manifest is on its way (a
    /// call may wait for it).
    pub(crate) fn could_connect_more(&self) -> bool {
        self.slots()
            .iter()
            .any(|s| matches!(s.phase(), Phase::Idle | Phase::Connecting | Phase::Connected))
    }

    /// The live slots.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).clone()
    }

    /// A server at `addr` is of another cluster: its slot is retired, the error kept for
    /// whoever waits for it, and an event says so.
    pub(crate) fn refuse(&self, addr: SocketAddr, mismatch: ClusterMismatch) {
        self.retire_slots(&[addr]);
        self.emit(ClientEvent::WrongCluster(mismatch.clone()));
        let mut refused = lock(&self.refused);
        refused.retain(|m| m.addr != addr); // one entry per address
        refused.push(mismatch);
        drop(refused);
        self.changed.notify_waiters();
    }

    /// Retires the slots that connect to any of `addrs` (they stop reconnecting) and drops
    /// them from the list.
    pub(crate) fn retire_slots(&self, addrs: &[SocketAddr]) {
        lock(&self.slots).retain(|s| {
            let hit = addrs.iter().any(|a| s.matches(*a));
            if hit {
                s.retire();
            }
            !hit
        });
    }

    /// The slot connecting to `addrs[0]` if there is one (`false`), else a new slot for
    /// `addrs` with its connection task started (`true`); `None` once the client is closed.
    pub(crate) fn add_slot(self: &Arc<Self>, addrs: Vec<ServerAddr>) -> Option<(Arc<Slot>, bool)> {
        let connector = lock(&self.endpoint).as_ref()?.connector();
        let mut slots = lock(&self.slots);
        // The same address, or an `ip:port` a name already resolved to.
        let same = |s: &&Arc<Slot>| {
            s.addrs.contains(&addrs[0]) || addrs[0].ip().is_some_and(|ip| s.matches(ip))
        };
        if let Some(s) = slots.iter().find(same) {
            return Some((s.clone(), false));
        }
        let slot = Arc::new(Slot::new(addrs));
        let seed = {
            let mut s = lock(&self.slot_seed);
            *s = crate::proto::ids::fmix64(s.wrapping_add(1));
            *s
        };
        slots.push(slot.clone());
        drop(slots);
        let task = tokio::spawn(pool::run(self.clone(), slot.clone(), connector, seed));
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished()); // retired slots' tasks
        tasks.push(task);
        Some((slot, true))
    }
}

/// Waits until `slot`'s server is connected and its manifest known, at most `timeout`:
/// the session's address, or why not.
pub(crate) async fn wait_slot_ready(
    shared: &ClientShared,
    slot: &Slot,
    timeout: Duration,
) -> Result<SocketAddr, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(at) = discovery::session_addr(shared, slot) {
            return Ok(at);
        }
        if slot.retired() {
            let refused = lock(&shared.refused);
            return Err(match refused.iter().find(|m| slot.matches(m.addr)) {
                Some(m) => ClientError::WrongCluster(Box::new(m.clone())),
                None => ClientError::Closed,
            });
        }
        if slot.phase() == Phase::Backoff
            && let Some((_, Some(e))) = slot.errors().into_iter().next()
        {
            return Err(ClientError::Connect(e));
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(match slot.phase() {
                Phase::Connected => ClientError::NoManifest,
                _ => ClientError::Connect(
                    slot.errors()
                        .into_iter()
                        .find_map(|(_, e)| e)
                        .unwrap_or(ConnectError::Failed(DisconnectReason::Timeout)),
                ),
            });
        }
    }
}

fn view_gone(shared: &ClientShared) -> Option<DisconnectReason> {
    let v = lock(&shared.view);
    if v.servers.is_empty() { v.last_gone } else { None }
}

/// The error a call gets when it cannot be routed. With no server at all it is
/// `NotConnected`, never `Disconnected`: that one is for calls that were pending on a server
/// when it was lost (they may have run); this call was sent nowhere
/// ([`Client::disconnect_reason`] says why the last server went).
pub(crate) fn route_error(e: RouteError) -> CallError<Infallible> {
    match e {
        RouteError::NoServers => CallError::NotConnected,
        RouteError::NotHosted => CallError::UnknownGrainType,
        RouteError::Incompatible { ours, theirs } => {
            CallError::IncompatibleVersion { ours, theirs }
        }
        RouteError::Unavailable(s) => CallError::ServerUnavailable(s),
        RouteError::Draining => CallError::ShuttingDown,
    }
}

/// A client of one or more game servers. Cheap to clone; clones (and grain references made
/// from them) share the connections. When the last one is dropped, the client stops as
/// [`disconnect`](Self::disconnect) would, without waiting.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) shared: Arc<ClientShared>,
    /// Shared by every handle and every reference: its drop stops the client (the endpoint
    /// task and the connection tasks hold `shared`, so `shared` alone would never be dropped).
    calls: Arc<Handle>,
}

/// What references call through (`rpc::reference::Calls`): the client's shared state, and its
/// owner, so that a reference keeps its client running.
#[derive(Debug)]
struct Handle {
    shared: Arc<ClientShared>,
    _owner: Owner,
}

#[derive(Debug)]
struct Owner(Arc<ClientShared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop_tasks();
        // Dropping the endpoint handle shuts its task down (sessions are closed, pending calls
        // fail with `Disconnected`), which drops the service and with it the last `shared`.
        drop(lock(&self.0.endpoint).take());
    }
}

impl ClientShared {
    /// Stops reconnecting: the connection tasks end.
    fn stop_tasks(&self) {
        self.closing.store(true, Ordering::Release);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Client {
    pub(crate) fn new(shared: Arc<ClientShared>) -> Self {
        let calls = Arc::new(Handle { _owner: Owner(shared.clone()), shared: shared.clone() });
        Self { shared, calls }
    }

    /// A builder: servers, mode, strategies, options.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            config: ClientConfig::default(),
            addrs: Vec::new(),
            strategies: Strategies::default(),
            source: None,
            refresh: None,
            retry_for: Vec::new(),
            unknown_method: None,
            explicit_default: false,
            explicit_types: Vec::new(),
            token: None,
            server_identity: None,
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
            let slots = shared.slots();
            let settled = slots.iter().all(|s| s.settled());
            if ready == 0 && slots.is_empty() && !lock(&shared.refused).is_empty() {
                return Err(self.connect_failure()); // every server was of another cluster
            }
            // Following a source: its first topology must have been applied too.
            let undiscovered = shared.discovery.as_ref().and_then(|d| d.pending_error());
            let done = match shared.config.mode {
                ConnectMode::Multi => ready > 0 && settled,
                _ => ready > 0,
            };
            if done && undiscovered.is_none() {
                return Ok(());
            }
            // Every server refused us for good (our token, the application): waiting longer
            // only repeats it.
            if ready == 0
                && !slots.is_empty()
                && settled
                && slots.iter().all(|s| s.refused_for_good())
            {
                return Err(self.connect_failure());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if ready > 0 {
                    return Ok(()); // some servers are up; the others keep being retried
                }
                if let Some(error) = undiscovered
                    && lock(&shared.refused).is_empty()
                {
                    return Err(ClientError::Discovery(
                        error.unwrap_or(crate::topology::DiscoveryError::Timeout),
                    ));
                }
                return Err(self.connect_failure());
            }
        }
    }

    /// Why nothing connected.
    fn connect_failure(&self) -> ClientError {
        let shared = &self.shared;
        if let Some(m) = lock(&shared.refused).first() {
            return ClientError::WrongCluster(Box::new(m.clone()));
        }
        if !lock(&shared.view).servers.is_empty() {
            return ClientError::NoManifest;
        }
        let errors: Vec<(ServerAddr, Option<ConnectError>)> =
            shared.slots().iter().flat_map(|s| s.errors()).collect();
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
                    calls: lock(&s.stats).snapshot(u64::from(s.load.pending()), 0),
                    transport: s.conn.stats(),
                    protected: s.conn.is_protected(),
                })
            })
            .collect()
    }

    /// Adds a server while the client runs (multi and on-demand modes): connects to `addr`
    /// and waits for its handshake and manifest, at most `connect_timeout`, then returns it.
    /// An address the client already has returns that server once it is ready. Consistent
    /// placement moves to the newcomer only the grains it now wins. On failure the address is
    /// dropped again and the error says why (`Connect` with the attempt's error, `NoManifest`).
    pub async fn add_server(&self, addr: impl Into<ServerAddr>) -> Result<ServerInfo, ClientError> {
        let addr = addr.into();
        if self.shared.config.mode == ConnectMode::Single {
            return Err(ClientError::Config {
                field: "mode",
                problem: "add_server needs Multi or OnDemand mode (single mode has one failover list)",
            });
        }
        let (slot, created) =
            self.shared.add_slot(vec![addr.clone()]).ok_or(ClientError::Closed)?;
        slot.demand(); // on-demand: connect now
        match wait_slot_ready(&self.shared, &slot, self.shared.config.connect_timeout).await {
            Ok(at) => match self.servers().into_iter().find(|s| s.addr == at) {
                Some(info) => Ok(info),
                None => Err(ClientError::Disconnected(DisconnectReason::ClosedLocally)),
            },
            Err(e) => {
                if created {
                    self.shared.drop_slot(&slot);
                }
                Err(e)
            }
        }
    }

    /// The topology the client follows now (`None` without a topology source, or before its
    /// first one).
    pub fn topology(&self) -> Option<Topology> {
        self.shared.discovery.as_ref().and_then(|d| d.topology())
    }

    /// Takes server `server` out of the client while it runs: it is no longer reconnected,
    /// and either drained ([`Removal::Drain`]: no new calls go to it, the pending ones finish
    /// there, then its session closes) or aborted ([`Removal::Abort`]: its session closes at
    /// once, pending calls fail with `Disconnected(ClosedLocally)` and `#[idempotent]` ones go
    /// to another server). Returns once it is gone. Consistent placement moves only its grains.
    pub async fn remove_server(&self, server: &ServerId, how: Removal) -> Result<(), ClientError> {
        let (done, gone) = tokio::sync::oneshot::channel();
        if self.shared.cmds.send(ClientCmd::Remove { server: server.clone(), how, done }).is_err() {
            return Err(ClientError::Closed);
        }
        self.shared.wake();
        match gone.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ClientError::UnknownServer(server.clone())),
            Err(_) => Err(ClientError::Closed),
        }
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
        let one_way = self.shared.one_way_sent.load(Ordering::Relaxed);
        lock(&self.shared.accounting).snapshot(pending, one_way)
    }

    /// The transport statistics of the session to the first connected server.
    pub fn transport_stats(&self) -> Option<crate::transport::ConnectionStats> {
        lock(&self.shared.view).servers.first().map(|s| s.conn.stats())
    }

    /// A typed reference to the grain with `key`, e.g. `client.grain::<PlayerRef>(42)`.
    pub fn grain<R: GrainInterface>(&self, key: impl Into<crate::proto::ids::GrainKey>) -> R {
        R::from_grain_ref(GrainRef::new(self.calls.clone(), R::info(), key.into()))
    }

    /// Presents `token` from now on: to servers it connects to next (a reconnection, a new
    /// server). Sessions open now keep theirs. Give the client a fresh token before the one
    /// it holds expires, or reconnections fail with `Rejection::TokenExpired` (a
    /// [`ClientEvent::ConnectFailed`] says so; the client keeps retrying with its backoff, and
    /// the next attempt after `set_token` presents the new one).
    pub fn set_token(&self, token: crate::proto::token::PlayerToken) {
        if let Some(ep) = lock(&self.shared.endpoint).as_ref() {
            ep.set_token(Some(Arc::new(token)));
        }
    }

    /// Stops reconnecting, closes every session (pending calls fail with `Disconnected`) and
    /// stops the endpoint.
    pub async fn disconnect(&self) {
        self.shared.stop_tasks();
        let endpoint = lock(&self.shared.endpoint).take();
        if let Some(mut ep) = endpoint {
            ep.close().await;
        }
    }
}

impl Calls for Handle {
    fn default_timeout(&self) -> Duration {
        self.shared.config.default_timeout
    }

    fn max_request(&self) -> usize {
        self.shared.config.transport.max_message_size
    }

    fn cell(&self) -> Arc<CallCell> {
        self.shared.spare_cells.pop().unwrap_or_else(|| Arc::new(CallCell::new()))
    }

    /// Routes the call and hands it to the client's task, the one writer of every grain
    /// stream's frames: calls and one-way calls to a grain leave in the order they were made.
    /// A one-way call holds a pending slot until it is written, the same backpressure as
    /// calls.
    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<Infallible>> {
        let shared = &self.shared;
        let (iface, method) = (request.iface, request.method);
        let target = target_of(iface);
        let to = shared.route(&target, r)?;
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.config.max_pending_calls {
            shared.finished_one();
            return Err(CallError::Overloaded);
        }
        let again = Again {
            target,
            hash: r.hash,
            affinity: r.affinity.clone(),
            idempotent: method.idempotent,
            retry: shared.retry.index(iface.grain_type, method.id),
        };
        let (frame, flags, timeout) = (request.frame, request.flags, request.timeout);
        let cmd = ClientCmd::Call { to, frame, flags, stream: r.stream, timeout, kind, again };
        // The receiver lives in the client's task; if it is gone, the client is closed.
        if shared.cmds.send(cmd).is_err() {
            shared.finished_one();
            return Err(CallError::NotConnected);
        }
        shared.wake();
        Ok(())
    }

    fn cancelled(&self, sent: Option<(PeerId, crate::proto::ids::RequestId)>) {
        self.shared.finished_one();
        if let Some((peer, id)) = sent
            && self.shared.cmds.send(ClientCmd::Cancel { peer, id }).is_ok()
        {
            self.shared.wake();
        }
    }

    fn recycle(&self, cell: Arc<CallCell>) {
        let _ = self.shared.spare_cells.push(cell);
    }
}

/// The client's retry policies: index 0 is the client's own, the others single methods'.
#[derive(Debug)]
pub(crate) struct RetryTable {
    policies: Vec<RetryPolicy>,
    by_method: Vec<((GrainType, MethodId), u16)>,
}

impl RetryTable {
    /// `default`, and one policy per `(grain type, method)`; `config` names methods as
    /// `"GrainType.method"`.
    pub(crate) fn new(
        config: &ClientConfig,
        overrides: Vec<((GrainType, MethodId), RetryPolicy)>,
    ) -> Self {
        let mut t = Self { policies: vec![config.retry.clone()], by_method: Vec::new() };
        let named = config.retry_methods.iter().filter_map(|(name, p)| {
            let (g, m) = name.split_once('.')?;
            Some(((GrainType::of(g), MethodId::of(m)), p.clone()))
        });
        for (key, policy) in named.chain(overrides) {
            t.by_method.retain(|(k, _)| *k != key); // the last one given counts
            t.by_method.push((key, t.policies.len() as u16));
            t.policies.push(policy);
        }
        t
    }

    /// The policy of `method` of `grain_type` (no search when no method has its own).
    pub(crate) fn index(&self, grain_type: GrainType, method: MethodId) -> u16 {
        if self.by_method.is_empty() {
            return 0;
        }
        let key = (grain_type, method);
        self.by_method.iter().find(|(k, _)| *k == key).map_or(0, |(_, i)| *i)
    }

    pub(crate) fn get(&self, index: u16) -> &RetryPolicy {
        &self.policies[usize::from(index)]
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

thread_local! {
    /// The routing snapshot this thread read last: (client, its version, the snapshot).
    static ROUTES: std::cell::RefCell<Option<(u64, u64, Arc<RouteTable>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Client ids, for the per-thread snapshot cache.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_client_id() -> u64 {
    NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)
}

/// How many events a slow [`Client::events`] receiver may fall behind.
const EVENT_BACKLOG: usize = 1024;

/// How many finished calls' cells a client keeps for reuse.
pub(crate) const SPARE_CELLS: usize = 256;
