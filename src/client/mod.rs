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
//! [`CallError::Disconnected`](crate::error::CallError::Disconnected), unless its method is `#[idempotent]`: then the [`RetryPolicy`]
//! sends it again, to another server (by default once, at once); so it does with a call a
//! server refused without running it (shutting down, no longer hosting the type).

mod builder;
mod calls;
mod discovery;
mod observers;
mod options;
mod pool;
pub(crate) mod service;
mod shared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast;

pub use self::builder::ClientBuilder;
pub(crate) use self::calls::max_request;
use self::calls::{Handle, Owner};
pub use self::options::{
    AddrParseError, ClientConfig, ClientError, ClientEvent, ClusterMismatch, ClusterNode,
    ConnectMode, Removal, RetryPolicy, ServerAddr, ServerInfo, StrategyName, Topology,
    TopologyDiff,
};
use self::service::ClientCmd;
use self::shared::view_gone;
pub(crate) use self::shared::{
    ClientShared, EVENT_BACKLOG, RetryTable, SPARE_CELLS, ServerView, View, next_client_id,
    route_error, wait_slot_ready,
};
use crate::error::{ConnectError, DisconnectReason, ReferenceError};
use crate::proto::ids::GrainId;
use crate::proto::ids::ServerId;
use crate::proto::manifest::Manifest;
pub use crate::proto::manifest::{MetaValue, Metadata};
use crate::proto::route::Strategies;
pub use crate::proto::route::{
    Affinity, ByPriority, Candidate, Candidates, ConsistentHash, LowestLatency, PickContext,
    RoundRobin, Strategy, Tiered, Tiering,
};
pub use crate::proto::stats::CallStats;
use crate::rpc::reference::Via;
pub use crate::rpc::reference::{Answer, GrainInterface, GrainRef, Invocation, Invoked, Invoker};
use crate::sync::lock;

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

    /// Whether the server at `addr` was lost (its session ended, or it was judged dead after
    /// `health_timeout` of silence) or could not be reached, and no session to it is up
    /// since. False for an address this client does not know.
    pub(crate) fn unreachable(&self, addr: &ServerAddr) -> bool {
        self.shared.slots().iter().any(|s| s.addrs.contains(addr) && s.is_down())
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
        GrainRef::make(Via::Calls(self.calls.clone()), key.into())
    }

    /// A typed reference to grain `id`, if its type implements `R`'s interface
    /// ([`ReferenceError::WrongType`] otherwise): for ids kept as data (a save file, a
    /// database row, a log line).
    pub fn grain_by_id<R: GrainInterface>(&self, id: &GrainId) -> Result<R, ReferenceError> {
        let info = R::info();
        if id.ty != info.grain_type {
            return Err(ReferenceError::WrongType { grain: id.clone(), interface: info.name });
        }
        Ok(self.grain(id.key.clone()))
    }

    /// The seam its references call through (for a server's grains, which call through it).
    pub(crate) fn calls(&self) -> Arc<dyn crate::rpc::reference::Calls> {
        self.calls.clone()
    }

    /// Stops the client at once, as dropping its last handle would: its sessions close and
    /// its pending calls fail. For an owner that cannot wait (a server dropped).
    pub(crate) fn close_now(&self) {
        self.shared.stop_tasks();
        drop(lock(&self.shared.endpoint).take());
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
