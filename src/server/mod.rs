//! A game server: hosts grain types, activates grains on their first call, runs each grain's
//! calls one at a time, and answers over the transport.
//!
//! ```no_run
//! # use grainwire::{Server, ServerConfig};
//! # fn hosts() -> grainwire::server::Host { unimplemented!() }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(ServerConfig::default())
//!     .host(hosts()) // e.g. `Player::host(|id| PlayerState::new(id))` for a #[grain] trait
//!     .bind("0.0.0.0:7777".parse()?)?;
//! println!("serving as {} on {}", server.server_id(), server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The server's endpoint task runs the dispatcher; each activation is a task of its own. Calls
//! to one grain run one at a time in arrival order; calls to different grains run concurrently
//! (in parallel on a multi-threaded runtime).

mod activation;
mod service;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use self::activation::{Reporter, Spawn, Typed};
use self::service::{ServerCmd, ServerService};
use crate::config::{TransportConfig, duration_ms};
use crate::error::BindError;
use crate::grain::InterfaceInfo;
use crate::grain::private::Dispatch;
use crate::proto::ids::{GrainId, ServerId};
use crate::proto::manifest::{HostedGrain, Manifest};
use crate::proto::rng::SplitMix64;
use crate::transport::Endpoint;

/// Options of a [`Server`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The id the server gives in its handshake. Default: random.
    pub server_id: Option<String>,
    /// This server's placement weight (clients' consistent placement gives it
    /// `weight / Σ weights` of a grain type's grains). Default 1.
    pub weight: u32,
    /// The transport's options (`accept_incoming` is forced on).
    pub transport: TransportConfig,
    /// Deactivate a grain after this long without calls. Default 5 min.
    #[serde(with = "duration_ms")]
    pub idle_deactivation: Duration,
    /// Calls one connection may have pending; more are answered `Overloaded`. Default 1024.
    pub max_pending_per_connection: usize,
    /// Argument bytes one connection's pending calls may hold; a call that would go over is
    /// answered `Overloaded` (one call alone is always taken, up to the transport's
    /// `max_message_size`). Default 4 MiB.
    pub max_pending_bytes_per_connection: usize,
    /// Activations the server holds at once; a call that would activate one more is answered
    /// `Overloaded` until idle ones are deactivated. Bounds the memory clients can make the
    /// server spend by calling many keys. Default 100,000.
    pub max_activations: usize,
    /// The deadline of a call that carries none (one-way calls). Default 30 s.
    #[serde(with = "duration_ms")]
    pub default_deadline: Duration,
    /// How long `shutdown` waits for pending calls, then for deactivations. Default 10 s.
    #[serde(with = "duration_ms")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server_id: None,
            weight: 1,
            transport: TransportConfig::server(),
            idle_deactivation: Duration::from_secs(300),
            max_pending_per_connection: 1024,
            max_pending_bytes_per_connection: 4 << 20,
            max_activations: 100_000,
            default_deadline: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The endpoint could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Two hosted grain types have the same name (or names whose ids collide).
    #[error("grain type `{0}` is hosted twice (or its id collides with another's)")]
    DuplicateGrainType(&'static str),
}

/// A grain type to host: made by the `host` function of a `#[grain]` trait, e.g.
/// `Player::host(|id| PlayerState::new(id))`.
pub struct Host {
    info: &'static InterfaceInfo,
    spawn: Arc<dyn Spawn>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("grain", &self.info.name).finish()
    }
}

impl Host {
    pub(crate) fn new<I, G, F>(factory: F) -> Self
    where
        I: Dispatch<G>,
        G: Send + 'static,
        F: Fn(&GrainId) -> G + Send + Sync + 'static,
    {
        let typed = Typed::<I, G, F> { factory: Arc::new(factory), _types: PhantomData };
        Self { info: I::info(), spawn: Arc::new(typed) }
    }

    /// The interface it hosts.
    pub fn interface(&self) -> &'static InterfaceInfo {
        self.info
    }
}

/// One hosted grain type, at its index in the manifest.
pub(crate) struct Registered {
    pub(crate) info: &'static InterfaceInfo,
    pub(crate) spawn: Arc<dyn Spawn>,
}

/// What the server's handle and its task share (immutable after start, plus counters).
pub(crate) struct ServerShared {
    pub(crate) config: ServerConfig,
    pub(crate) registry: Vec<Registered>,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) manifest_frame: Bytes,
    pub(crate) activations: AtomicUsize,
    pub(crate) calls_done: AtomicU64,
}

/// Builds a [`Server`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `bind`"]
pub struct ServerBuilder {
    config: ServerConfig,
    hosts: Vec<Host>,
}

impl ServerBuilder {
    /// Hosts a grain type.
    pub fn host(mut self, host: Host) -> Self {
        self.hosts.push(host);
        self
    }

    fn prepare(self) -> Result<(ServerConfig, Vec<Registered>, Manifest), ServerError> {
        let mut config = self.config;
        config.transport.accept_incoming = true;
        config.transport.validate().map_err(BindError::from)?;
        let server_id = match &config.server_id {
            Some(id) => ServerId::new(id.as_str()),
            None => ServerId::new(format!("{:016x}", SplitMix64::new(seed()).next_u64())),
        };
        let mut registry: Vec<Registered> = Vec::new();
        let mut grains = Vec::new();
        for (i, h) in self.hosts.into_iter().enumerate() {
            if registry.iter().any(|r| r.info.grain_type == h.info.grain_type) {
                return Err(ServerError::DuplicateGrainType(h.info.name));
            }
            grains.push(HostedGrain {
                name: h.info.name.into(),
                grain_type: h.info.grain_type,
                interface: h.info.id,
                version: h.info.version,
                contract: h.info.contract,
                index: i as u32,
            });
            registry.push(Registered { info: h.info, spawn: h.spawn });
        }
        let weight = config.weight.max(1);
        Ok((config, registry, Manifest { server_id, weight, grains }))
    }

    /// Starts the server on a UDP socket at `addr`, on the current tokio runtime.
    pub fn bind(self, addr: SocketAddr) -> Result<Server, ServerError> {
        let (config, registry, manifest) = self.prepare()?;
        let io = crate::transport::io::UdpIo::bind(addr, config.transport.socket_buffer_size)
            .map_err(BindError::from)?;
        Server::start(io, config, registry, manifest)
    }

    /// Starts the server on the simulated network at `addr`.
    #[cfg(feature = "test-util")]
    pub fn bind_sim(
        self,
        net: &crate::transport::sim::SimNetwork,
        addr: SocketAddr,
    ) -> Result<Server, ServerError> {
        let (config, registry, manifest) = self.prepare()?;
        let io = net.bind_io(addr).map_err(BindError::from)?;
        Server::start(io, config, registry, manifest)
    }
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5e_u8)
}

/// A running game server. Dropping it stops it at once; [`Server::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct Server {
    shared: Arc<ServerShared>,
    endpoint: Endpoint,
    cmds: crossbeam::channel::Sender<ServerCmd>,
}

impl std::fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShared").field("manifest", &self.manifest).finish()
    }
}

impl Server {
    /// A builder with `config`.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder { config, hosts: Vec::new() }
    }

    fn start(
        io: impl crate::transport::io::Io,
        config: ServerConfig,
        registry: Vec<Registered>,
        manifest: Manifest,
    ) -> Result<Self, ServerError> {
        let manifest_frame = Bytes::from(manifest.encode());
        let shared = Arc::new(ServerShared {
            config: config.clone(),
            registry,
            manifest: Arc::new(manifest),
            manifest_frame,
            activations: AtomicUsize::new(0),
            calls_done: AtomicU64::new(0),
        });
        let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
        let (report_tx, report_rx) = crossbeam::channel::unbounded();
        let s = shared.clone();
        let endpoint = Endpoint::start_service(io, config.transport, move |ep| {
            let reporter = Reporter { tx: report_tx, endpoint: ep.clone() };
            ServerService::new(s, reporter, report_rx, cmd_rx)
        })?;
        Ok(Self { shared, endpoint, cmds: cmd_tx })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The id it gives in its handshake.
    pub fn server_id(&self) -> &ServerId {
        &self.shared.manifest.server_id
    }

    /// What it hosts.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.shared.manifest
    }

    /// Grains active now.
    pub fn activation_count(&self) -> usize {
        self.shared.activations.load(Ordering::Acquire)
    }

    /// Calls completed (answered, failed or cancelled) so far.
    pub fn calls_completed(&self) -> u64 {
        self.shared.calls_done.load(Ordering::Relaxed)
    }

    /// Client sessions open now.
    pub fn session_count(&self) -> usize {
        self.endpoint.session_count()
    }

    fn command(&self, cmd: ServerCmd) -> bool {
        let sent = self.cmds.send(cmd).is_ok();
        self.endpoint.wake();
        sent
    }

    /// Stops gracefully: new calls are refused (`ShuttingDown`), pending calls may finish (up
    /// to `shutdown_timeout`), every grain is deactivated (its hook runs; up to
    /// `shutdown_timeout` again), then every session is closed.
    pub async fn shutdown(mut self) {
        let limit = self.shared.config.shutdown_timeout;
        let (tx, rx) = oneshot::channel();
        if self.command(ServerCmd::Drain(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.command(ServerCmd::DeactivateAll(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        self.endpoint.close().await;
    }
}
