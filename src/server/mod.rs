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
mod budget;
mod builder;
mod claims;
mod config;
mod context;
pub mod dispatch;
mod fleet;
mod grains;
mod host;
mod make;
mod reminders;
mod security;
mod service;
mod shards;
mod stats;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use self::activation::Reporter;
use self::budget::AnswerBudget;
pub use self::builder::ServerBuilder;
pub use self::claims::{DirectoryConfig, DirectoryUse};
pub use self::config::{ServerConfig, ServerError};
pub use self::context::{
    CallInfo, Caller, GrainContext, SessionEnded, SessionId, Timer, caller, context,
};
pub use self::host::Host;
pub(crate) use self::host::Registered;
pub use self::security::{AuthConfig, KeyError, KeyFile};
use self::service::{ServerCmd, ServerService};
pub use self::shards::Shards;
pub(crate) use self::stats::ServerCounters;
pub use self::stats::ServerStats;
use crate::directory::{GrainDirectory, Owner};
use crate::error::BindError;
use crate::interface::Interface;
use crate::proto::addr::ServerAddr;
use crate::proto::ids::{GrainType, ServerId};
use crate::proto::manifest::{HostedGrain, HostedMethod, Manifest};
pub use crate::proto::manifest::{MetaValue, Metadata};
use crate::proto::topology::{ClusterNode, Topology};
use crate::rpc::reference::Via;
use crate::rpc::value::Binding;
use crate::sync::lock;
use crate::topology::redis::{MemberCmd, MemberEntry};
use crate::transport::{Endpoint, Security};

/// What the server's handle and its task share (the registry is fixed at start; which types
/// are hosted, the manifest and counters change).
pub(crate) struct ServerShared {
    pub(crate) config: ServerConfig,
    pub(crate) registry: Vec<Registered>,
    pub(crate) server_id: ServerId,
    /// The current manifest and its encoded frame.
    pub(crate) manifest: Mutex<(Arc<Manifest>, Bytes)>,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) calls_done: AtomicU64,
    /// The fleet served to clients that ask.
    pub(crate) fleet: Mutex<fleet::Fleet>,
    /// Grains claimed in the directory (with one).
    pub(crate) claims: Option<Arc<claims::Claims>>,
    /// How its grains call grains: its fleet client, made on the first call.
    pub(crate) grains: Arc<grains::FleetCalls>,
}

/// A running game server. Dropping it stops it at once; [`Server::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct Server {
    shared: Arc<ServerShared>,
    endpoint: Endpoint,
    cmds: crossbeam::channel::Sender<ServerCmd>,
    /// The Redis membership task's commands, with a membership.
    member: Option<tokio::sync::mpsc::UnboundedSender<MemberCmd>>,
    /// The directory lease renewal task, with a directory.
    renewals: Option<tokio::task::JoinHandle<()>>,
    /// Its task that fires due reminders.
    reminders: Option<tokio::task::JoinHandle<()>>,
    /// Its task that watches its peers' health (to vote for the dead ones).
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.renewals.take() {
            t.abort();
        }
        if let Some(t) = self.reminders.take() {
            t.abort();
        }
        if let Some(t) = self.watch.take() {
            t.abort();
        }
        self.shared.grains.close();
    }
}

impl std::fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShared").field("manifest", &lock(&self.manifest).0).finish()
    }
}

impl ServerShared {
    /// The registered interface `interface` (id) at `version` of grain type `ty`, if this server
    /// hosts it.
    pub(crate) fn registered(
        &self,
        ty: crate::proto::ids::GrainType,
        interface: crate::proto::ids::InterfaceId,
        version: u8,
    ) -> Option<&Registered> {
        let ours = |r: &&Registered| {
            r.info.grain_type == ty && r.info.id == interface && r.info.version == version
        };
        self.registry.iter().find(ours)
    }

    /// The manifest of what is hosted now.
    fn build_manifest(&self) -> Manifest {
        let grains = self
            .registry
            .iter()
            .enumerate()
            .filter(|(_, r)| r.hosted.load(Ordering::Acquire))
            .map(|(i, r)| HostedGrain {
                name: r.info.name.into(),
                grain_type: r.info.grain_type,
                interface: r.info.id,
                version: r.info.version,
                contract: r.info.contract,
                index: i as u32,
                methods: r
                    .info
                    .methods
                    .iter()
                    .map(|m| HostedMethod { id: m.id, signature: m.signature })
                    .collect(),
            })
            .collect();
        Manifest {
            server_id: self.server_id.clone(),
            cluster_id: self.config.cluster_id.as_str().into(),
            service_id: self.config.service_id.as_str().into(),
            weight: self.config.weight.max(1),
            draining: false,
            priority: self.config.priority,
            metadata: self.config.metadata.clone(),
            grains,
        }
    }

    /// This server's entry in a Redis membership.
    fn member_entry(&self) -> MemberEntry {
        let fleet = lock(&self.fleet);
        let me = fleet.me();
        MemberEntry {
            server_id: self.server_id.to_string(),
            endpoint: me.endpoint.clone(),
            eligible: me.eligible,
            priority: me.priority,
            metadata: me.metadata.clone(),
        }
    }

    /// The current manifest.
    pub(crate) fn manifest(&self) -> Arc<Manifest> {
        lock(&self.manifest).0.clone()
    }

    /// The current manifest frame (sent to every new session).
    pub(crate) fn manifest_frame(&self) -> Bytes {
        lock(&self.manifest).1.clone()
    }
}

impl Server {
    /// A builder with `config`.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder::new(config)
    }

    fn start(
        io: impl crate::transport::io::Io,
        net: grains::FleetNet,
        config: ServerConfig,
        registry: Vec<Registered>,
        server_id: ServerId,
        stores: builder::Stores,
        mut security: Security,
    ) -> Result<Self, ServerError> {
        let directory = stores.directory;
        let local = io.local_addr().map_err(BindError::from)?;
        // A token names the servers it may join as each advertises itself (or by its bound
        // address, when it advertises none).
        security.names =
            config.advertise.iter().cloned().chain([ServerAddr::from(local)]).collect();
        if security.keys.is_empty() && !local.ip().is_loopback() {
            tracing::warn!(
                %local,
                "no token keys: anyone who can reach this address may call any grain, in the \
                 clear (auth mode `trusted` is for trusted networks only)"
            );
        }
        let me = ClusterNode {
            endpoint: config.advertise.clone().unwrap_or(ServerAddr::from(local)),
            eligible: true,
            priority: config.priority,
            metadata: config.metadata.clone(),
        };
        if config.advertise.is_none() && local.ip().is_unspecified() {
            tracing::warn!(
                %local,
                "bound to an unspecified address: set `advertise` so clients can reach it"
            );
        }
        let statics = config.peers.iter().cloned().map(ClusterNode::new).collect();
        let claims = match (config.directory.enabled, directory, &config.membership.redis) {
            (Some(false), _, _) => None,
            (_, Some(d), _) => Some(d),
            (_, None, Some(url)) => Some(Arc::new(
                crate::directory::RedisDirectory::new(
                    url,
                    &config.cluster_id,
                    &config.service_id,
                    config.directory.timeout,
                )
                .map_err(|_| ServerError::Config("membership.redis: not a Redis URL"))?,
            ) as Arc<dyn GrainDirectory>),
            (Some(true), None, None) => {
                return Err(ServerError::Config(
                    "directory.enabled needs a directory: ServerBuilder::directory or membership.redis",
                ));
            }
            (None, None, None) => None,
        }
        .map(|d| {
            let owner = Owner { server: server_id.clone(), endpoint: me.endpoint.clone() };
            Arc::new(claims::Claims::new(d, owner, config.directory.clone()))
        });
        let fleet = fleet::Fleet::new(me, statics);
        let grains = Arc::new(grains::FleetCalls::new(grains::FleetSpec {
            net,
            ip: local.ip(),
            cluster_id: config.cluster_id.clone(),
            service_id: config.service_id.clone(),
            default_timeout: config.default_deadline,
            identity: security.keys.first().map(|k| (k.clone(), server_id.clone())),
            fleet: fleet.subscribe(),
        }));
        let mut shared = ServerShared {
            config: config.clone(),
            registry,
            manifest: Mutex::new((
                Arc::new(Manifest {
                    server_id: server_id.clone(),
                    cluster_id: config.cluster_id.as_str().into(),
                    service_id: config.service_id.as_str().into(),
                    weight: 1,
                    draining: false,
                    priority: 0,
                    metadata: Default::default(),
                    grains: Vec::new(),
                }),
                Bytes::new(),
            )),
            server_id,
            counters: Arc::default(),
            calls_done: AtomicU64::new(0),
            fleet: Mutex::new(fleet),
            claims,
            grains,
        };
        let manifest = shared.build_manifest();
        let frame = Bytes::from(manifest.encode());
        *shared.manifest.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) =
            (Arc::new(manifest), frame);
        let shared = Arc::new(shared);
        let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
        let observer_cmds = cmd_tx.clone();
        let hook_cmds = cmd_tx.clone();
        let hook_reminders = stores.reminders.clone();
        let clock = reminders::Clock::start();
        let (report_tx, report_rx) = crossbeam::channel::unbounded();
        let s = shared.clone();
        let budget = AnswerBudget {
            session_bytes: config.transport.send_buffer,
            session_messages: 2 * config.max_pending_per_connection + 64,
            server_bytes: config.max_queued_answer_bytes,
        };
        let counters = shared.counters.clone();
        let membership = config.membership.clone();
        let mut renewals = None;
        let endpoint = Endpoint::start_service(io, config.transport, security, move |ep| {
            let binding = Binding {
                grains: Via::Calls(s.grains.clone()),
                observers: Via::Calls(Arc::new(grains::ObserverCalls {
                    cmds: observer_cmds,
                    endpoint: ep.clone(),
                    default_timeout: s.config.default_deadline,
                    max_request: s.config.transport.max_message_size,
                })),
            };
            let hooks = Arc::new(service::HookCmds {
                cmds: hook_cmds,
                endpoint: ep.clone(),
                reminders: hook_reminders,
                clock,
            });
            let reporter =
                Reporter { tx: report_tx, endpoint: ep.clone(), budget, counters, binding, hooks };
            ServerService::new(s, reporter, report_rx, cmd_rx)
        })?;
        let reminders =
            stores.reminders.map(|r| tokio::spawn(reminders::fire_due(r, shared.clone(), clock)));
        if let Some(claims) = &shared.claims {
            // A server with a directory watches its peers' health through its fleet client
            // (a session to each), to take over the grains of one found dead (see `claims`).
            shared.grains.start_now();
            claims.set_peers(shared.grains.clone());
        }
        let watch = shared.claims.clone().map(|c| tokio::spawn(c.watch_peers()));
        if let Some(claims) = shared.claims.clone() {
            let (cmds, wake) = (cmd_tx.clone(), endpoint.waker());
            let task = tokio::spawn(claims.renew_forever(move |lost| {
                if cmds.send(ServerCmd::Lost(lost)).is_ok() {
                    wake();
                }
            }));
            renewals = Some(task);
        }
        let member = membership.redis.is_some().then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (s, cmds, wake) = (shared.clone(), cmd_tx.clone(), endpoint.waker());
            let on_fleet = move |t: Topology| {
                if lock(&s.fleet).set_members(t) && cmds.send(ServerCmd::FleetChanged).is_ok() {
                    wake();
                }
            };
            // A member found dead: release everything it held in the directory.
            let claims = shared.claims.clone();
            let on_lapsed = move |ids: Vec<String>| {
                let Some(claims) = claims.clone() else { return };
                tokio::spawn(async move {
                    for id in ids {
                        match claims.directory().release_all(&ServerId::new(id.as_str())).await {
                            Ok(n) => tracing::info!(server = %id, grains = n, "released a dead member's grains"),
                            Err(error) => tracing::warn!(server = %id, %error, "could not release a dead member's grains"),
                        }
                    }
                });
            };
            tokio::spawn(crate::topology::redis::run_membership(
                membership,
                shared.config.cluster_id.clone(),
                shared.config.service_id.clone(),
                shared.member_entry(),
                rx,
                on_fleet,
                on_lapsed,
            ));
            tx
        });
        Ok(Self { shared, endpoint, cmds: cmd_tx, member, renewals, reminders, watch })
    }

    /// The fleet this server serves to clients that ask: itself, and its static peers or the
    /// members registered in Redis.
    pub fn topology(&self) -> Topology {
        lock(&self.shared.fleet).topology().clone()
    }

    /// Replaces the static peers it serves as the fleet (without a Redis membership): clients
    /// that follow it connect the new ones and drain those that left, at once.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = ServerAddr>) {
        let nodes = peers.into_iter().map(ClusterNode::new).collect();
        if lock(&self.shared.fleet).set_statics(nodes) {
            self.command(ServerCmd::FleetChanged);
        }
    }

    /// Marks this server eligible or not in the fleet it serves (and in Redis).
    fn set_eligible(&self, eligible: bool) {
        if lock(&self.shared.fleet).set_eligible(eligible) {
            self.command(ServerCmd::FleetChanged);
        }
        if let Some(m) = &self.member {
            let _ = m.send(MemberCmd::Update(self.shared.member_entry()));
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The id it gives in its handshake.
    pub fn server_id(&self) -> &ServerId {
        &self.shared.server_id
    }

    /// What it hosts now.
    pub fn manifest(&self) -> Arc<Manifest> {
        self.shared.manifest()
    }

    /// Starts (`true`) or stops hosting the grain type behind the reference type `R`, which
    /// the builder was given (`host` or `register`). Every connected client gets the new
    /// manifest at once and routes by it. Stopping deactivates the type's activations (their
    /// hooks run); calls that were already on their way are answered `UnknownGrainType`, and
    /// clients send those once more to another server (the call did not run here). Returns
    /// whether anything changed.
    pub fn set_hosting<R: Interface>(&self, hosted: bool) -> Result<bool, ServerError> {
        self.set_hosting_type(R::info().grain_type, hosted)
    }

    /// [`set_hosting`](Self::set_hosting) by grain type.
    pub fn set_hosting_type(
        &self,
        grain_type: GrainType,
        hosted: bool,
    ) -> Result<bool, ServerError> {
        let index = self
            .shared
            .registry
            .iter()
            .position(|r| r.info.grain_type == grain_type)
            .ok_or(ServerError::NotRegistered(grain_type))?;
        let changed = {
            // Under the manifest's lock: concurrent changes publish in order.
            let mut m = lock(&self.shared.manifest);
            if self.shared.registry[index].hosted.swap(hosted, Ordering::AcqRel) == hosted {
                false
            } else {
                let manifest = self.shared.build_manifest();
                let frame = Bytes::from(manifest.encode());
                *m = (Arc::new(manifest), frame);
                true
            }
        };
        if changed {
            self.command(ServerCmd::ManifestChanged { index, hosted });
        }
        Ok(changed)
    }

    /// Grains active now.
    pub fn activation_count(&self) -> usize {
        self.shared.counters.activations.load(Ordering::Relaxed)
    }

    /// What the server holds now, and what it refused and why.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            transport: self.endpoint.stats(),
            activations: c.activations.load(Ordering::Relaxed),
            pending_calls: c.pending_calls.load(Ordering::Relaxed),
            pending_bytes: c.pending_bytes.load(Ordering::Relaxed),
            calls_completed: self.shared.calls_done.load(Ordering::Relaxed),
            overloaded_pending: get(&c.overloaded_pending),
            overloaded_send_queue: get(&c.overloaded_send_queue),
            overloaded_server: get(&c.overloaded_server),
            overloaded_activations: get(&c.overloaded_activations),
            activations_evicted: get(&c.activations_evicted),
            bad_requests: get(&c.bad_requests),
            responses_too_large: get(&c.responses_too_large),
            redirects: get(&c.redirects),
            directory_unavailable: get(&c.directory_unavailable),
            unauthorized: get(&c.unauthorized),
            answers_dropped: get(&c.answers_dropped),
            sessions_preempted: get(&c.sessions_preempted),
            calls_preempted: get(&c.calls_preempted),
            observer_calls: get(&c.observer_calls),
            observer_sessions_stalled: get(&c.observer_sessions_stalled),
            sessions_told: get(&c.sessions_told),
            updates_stale: get(&c.updates_stale),
            updates_coalesced: get(&c.updates_coalesced),
            watches_dropped: get(&c.watches_dropped),
            streams_open: c.streams_open.load(Ordering::Relaxed),
            stream_items: get(&c.stream_items),
            streams_refused: get(&c.streams_refused),
        }
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

    /// Stops gracefully: clients are told it is draining (they route new calls elsewhere at
    /// once), calls that still arrive are refused (`ShuttingDown`; clients send them once more
    /// elsewhere), pending calls may finish (up to `shutdown_timeout`), every grain is
    /// deactivated (its hook runs; up to `shutdown_timeout` again), then each session is
    /// closed once its answers were acknowledged (up to `shutdown_timeout` once more): its
    /// client then knows that every call still unanswered did not run here, and sends it to
    /// another server.
    pub async fn shutdown(mut self) {
        let limit = self.shared.config.shutdown_timeout;
        // Clients that follow the fleet (and Redis) learn at once that it takes no new work.
        self.set_eligible(false);
        let (tx, rx) = oneshot::channel();
        if self.command(ServerCmd::Drain(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.command(ServerCmd::DeactivateAll(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        // Sessions whose answers all arrived close as drained (their clients send what is
        // still unanswered elsewhere); the rest close plainly when this runs out.
        let (tx, rx) = oneshot::channel();
        if self.command(ServerCmd::CloseDrained(tx)) {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        // Deactivated grains made their last calls.
        let _ = tokio::time::timeout(limit, self.shared.grains.shutdown()).await;
        if let Some(m) = self.member.take() {
            let (tx, rx) = oneshot::channel();
            if m.send(MemberCmd::Leave(tx)).is_ok() {
                let _ = tokio::time::timeout(limit, rx).await;
            }
        }
        self.endpoint.close().await;
    }
}
