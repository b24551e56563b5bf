//! Setting up a [`Client`]: servers, mode, strategies, options; starting its endpoint and
//! connection tasks, and waiting as the mode says.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crossbeam::queue::ArrayQueue;
use tokio::sync::{Notify, broadcast};

use super::GrainInterface;
use super::discovery::{self, Discovery, Source};
use super::pool;
use super::service::ClientService;
use super::{
    Client, ClientConfig, ClientError, ClientShared, ConnectMode, EVENT_BACKLOG, RetryPolicy,
    RetryTable, SPARE_CELLS, ServerAddr, Strategy, View,
};
use crate::error::{BindError, ConnectError};
use crate::proto::ids::ServerId;
use crate::proto::ids::{GrainType, MethodId};
use crate::proto::route::Strategies;
use crate::proto::stats::CallAccounting;
use crate::proto::token::{PlayerToken, TokenKey};
use crate::sync::lock;
use crate::topology::{PollingSource, RefreshPolicy, StreamingSource};
use crate::transport::io::{UdpIo, UdpOptions};
use crate::transport::{Endpoint, Security};

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
    pub(super) config: ClientConfig,
    pub(super) addrs: Vec<ServerAddr>,
    pub(super) strategies: Strategies,
    pub(super) source: Option<Source>,
    pub(super) refresh: Option<RefreshPolicy>,
    pub(super) retry_for: Vec<((GrainType, MethodId), RetryPolicy)>,
    /// A `retry_for` method the interface does not have.
    pub(super) unknown_method: Option<String>,
    /// Strategies the builder set (they win over the configuration's).
    pub(super) explicit_default: bool,
    pub(super) explicit_types: Vec<GrainType>,
    /// The connect token presented to every server.
    pub(super) token: Option<PlayerToken>,
    /// A game server's grain-to-grain client: the key it mints tokens with, and its id.
    pub(super) server_identity: Option<(TokenKey, ServerId)>,
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

    /// Adds a server address: an `ip:port`, or a [`ServerAddr`] parsed from `host:port`
    /// (resolved on every connect attempt).
    pub fn server(mut self, addr: impl Into<ServerAddr>) -> Self {
        self.addrs.push(addr.into());
        self
    }

    /// Adds server addresses (in order: single and on-demand modes try them in this order).
    /// The client's socket is bound for the first address's IP family (and on loopback if the
    /// first address is loopback): give addresses of one family. Duplicates are ignored.
    pub fn servers<A: Into<ServerAddr>>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        self.addrs.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Follows the fleet that these servers report (every grainwire server answers with the
    /// fleet it knows and pushes changes): the client connects each eligible server of it,
    /// and drains those that leave. Seeds are asked one at a time, in turn (see
    /// [`topology`](crate::topology)); options in `ClientConfig::discovery`.
    pub fn seeds<A: Into<ServerAddr>>(mut self, seeds: impl IntoIterator<Item = A>) -> Self {
        self.config.discovery.seeds.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// Follows the fleet registered in Redis at `url` (`redis://host:port/db`): the members
    /// that servers with a membership there registered, for this client's cluster and service.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.config.discovery.redis.push(url.into());
        self
    }

    /// Follows the fleet that `source` reports when polled (every
    /// `ClientConfig::discovery.interval`, with its timeout and backoff).
    pub fn polling_source(mut self, source: impl PollingSource) -> Self {
        self.source = Some(Source::Polling(Arc::new(source)));
        self
    }

    /// Follows the fleet that `source` streams.
    pub fn streaming_source(mut self, source: impl StreamingSource) -> Self {
        self.source = Some(Source::Streaming(Arc::new(source)));
        self
    }

    /// Which call failures make the client ask its topology source again at once (default:
    /// `ClientConfig::discovery.refresh_on`, itself by default not-connected,
    /// server-unavailable and disconnected).
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.refresh = Some(policy);
        self
    }

    /// Sets the retry policy of every method without its own (`ClientConfig::retry`).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Sets the retry policy of method `method` of the interface behind `R` (e.g.
    /// `retry_for::<PlayerRef>("hit", RetryPolicy::never())`). A method `R` does not have
    /// makes `connect` fail with `ClientError::Config`.
    pub fn retry_for<R: GrainInterface>(mut self, method: &str, policy: RetryPolicy) -> Self {
        let info = R::info();
        match info.methods.iter().find(|m| m.name == method) {
            Some(m) => self.retry_for.push(((info.grain_type, m.id), policy)),
            None => self.unknown_method = Some(format!("{}.{method}", info.name)),
        }
        self
    }

    /// Sets the connection mode (default [`ConnectMode::Multi`]).
    pub fn mode(mut self, mode: ConnectMode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Presents `token` (what the backend issued the player: [`PlayerToken::from_bytes`]) to
    /// every server: the servers verify it, and every packet of the sessions it opens is
    /// encrypted and authenticated with its secrets. A server that does not take tokens
    /// refuses it ([`Rejection::TokensNotAccepted`](crate::error::Rejection)) rather than
    /// open a session in the clear. Replace it before it expires with
    /// [`Client::set_token`](super::Client::set_token) (reconnections present the new one).
    pub fn token(mut self, token: PlayerToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Makes this the grain-to-grain client of game server `server_id`, which holds the
    /// fleet's token `key`: it mints a server token for every connection (naming the address
    /// it connects to; valid one minute, so it never needs refreshing), and the grains it
    /// calls see [`Caller::server_id`](crate::server::Caller::server_id). Instead of
    /// [`Self::token`].
    pub fn server_identity(mut self, key: TokenKey, server_id: ServerId) -> Self {
        self.server_identity = Some((key, server_id));
        self
    }

    /// Sets the strategy of every grain type without its own (default [`ConsistentHash`](super::ConsistentHash)).
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategies.set_default(Arc::new(strategy));
        self.explicit_default = true;
        self
    }

    /// Sets the strategy of the grain type behind the reference type `R`.
    pub fn strategy_for<R: GrainInterface>(mut self, strategy: impl Strategy) -> Self {
        self.strategies.set(R::info().grain_type, Arc::new(strategy));
        self.explicit_types.push(R::info().grain_type);
        self
    }

    /// Starts the client on a UDP socket and connects as the mode says: `Single` waits for the
    /// first reachable server, `Multi` for every server to answer or fail once (at least one
    /// must be up), `OnDemand` returns at once. Waits at most `connect_timeout`.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let this = self.with_config_servers();
        this.config.validate()?;
        let Some(first) = this.addrs.first().or(this.config.discovery.seeds.first()) else {
            if this.discovers() {
                // Only a store to ask (Redis, a source of the application's): IPv4.
                let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
                let options = UdpOptions::from(&this.config.transport);
                let io = UdpIo::bind(any, options).map_err(BindError::from)?;
                return this.start(io).await;
            }
            return Err(ClientError::NoServers);
        };
        // The socket's family (and whether it is loopback) follows the first address; a name
        // is resolved once for that.
        let first = match first.ip() {
            Some(a) => a,
            // A name with addresses of both families: IPv4, where most servers listen.
            None => pool::resolve(first)
                .await
                .ok()
                .and_then(|a| a.iter().find(|a| a.is_ipv4()).or(a.first()).copied())
                .ok_or_else(|| {
                    ClientError::Unreachable(vec![(first.clone(), Some(ConnectError::Unresolved))])
                })?,
        };
        let options = UdpOptions::from(&this.config.transport);
        let io = UdpIo::bind(unspecified_for(first), options).map_err(BindError::from)?;
        this.start(io).await
    }

    /// Whether the client follows a topology source.
    fn discovers(&self) -> bool {
        self.source.is_some() || self.config.discovery.enabled()
    }

    /// The configuration's servers first, then the builder's.
    fn with_config_servers(mut self) -> Self {
        let mut addrs = self.config.servers.clone();
        addrs.append(&mut self.addrs);
        self.addrs = addrs;
        self
    }

    /// Like [`connect`](Self::connect), over the simulated network from `local` (port 0 picks
    /// one).
    #[cfg(feature = "test-util")]
    pub async fn connect_sim(
        self,
        net: &crate::transport::sim::SimNetwork,
        local: SocketAddr,
    ) -> Result<Client, ClientError> {
        let this = self.with_config_servers();
        if this.addrs.is_empty() && !this.discovers() {
            return Err(ClientError::NoServers);
        }
        this.config.validate()?;
        let io = net.bind_io(local).map_err(BindError::from)?;
        this.start(io).await
    }

    /// The topology source to follow, if any: the application's, the seeds, or Redis.
    fn source_of(&self) -> Result<Option<Source>, ClientError> {
        let d = &self.config.discovery;
        Ok(match &self.source {
            Some(s) => Some(s.clone()),
            None if !d.seeds.is_empty() => Some(Source::Servers(d.seeds.clone())),
            None if !d.redis.is_empty() => {
                let cfg = &self.config;
                let source = crate::topology::redis::RedisSource::new(
                    d.redis.clone(),
                    &cfg.cluster_id,
                    &cfg.service_id,
                    d.interval,
                )
                .map_err(ClientError::Discovery)?;
                Some(Source::Streaming(Arc::new(source)))
            }
            None => None,
        })
    }

    async fn start(self, io: impl crate::transport::io::Io) -> Result<Client, ClientError> {
        let client = self.launch(io, false)?;
        let config = &client.shared.config;
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

    /// Starts the client on `io` without waiting for a server: a game server's fleet client,
    /// made on its first grain-to-grain call. Its calls wait for a server while it is still
    /// finding and connecting its first ones (see `ClientShared::starting`), each until its
    /// deadline, rather than failing `NotConnected`.
    pub(crate) fn start_background(
        self,
        io: impl crate::transport::io::Io,
    ) -> Result<Client, ClientError> {
        self.launch(io, true)
    }

    /// Starts the client's endpoint, connection tasks and discovery; `wait_while_starting`:
    /// see [`start_background`](Self::start_background).
    fn launch(
        self,
        io: impl crate::transport::io::Io,
        wait_while_starting: bool,
    ) -> Result<Client, ClientError> {
        let source = self.source_of()?;
        if let Some(name) = &self.unknown_method {
            tracing::warn!(method = %name, "retry_for names a method the interface does not have");
            return Err(ClientError::Config {
                field: "retry_for",
                problem: "names a method the interface does not have",
            });
        }
        for p in self.retry_for.iter().map(|(_, p)| p) {
            p.validate().map_err(|problem| ClientError::Config { field: "retry_for", problem })?;
        }
        let Self {
            mut config,
            mut addrs,
            mut strategies,
            refresh,
            retry_for,
            explicit_default,
            explicit_types,
            token,
            server_identity,
            ..
        } = self;
        // The configuration's strategies, where the builder set none.
        if let (Some(s), false) = (config.strategy, explicit_default) {
            strategies.set_default(s.build());
        }
        for (name, s) in &config.strategies {
            let t = GrainType::of(name);
            if !explicit_types.contains(&t) {
                strategies.set(t, s.build());
            }
        }
        // One seed for all of the client's randomness: the pool's jitter, the strategies'
        // draws, the transport's session tags (a client's cookie key is never used).
        let base = config.seed.unwrap_or_else(crate::sync::os_seed);
        strategies.set_seed(crate::proto::ids::fmix64(base ^ 0x5157_a7e9));
        if config.seed.is_some() && config.transport.seed.is_none() {
            config.transport.seed = Some(crate::proto::ids::fmix64(base ^ 0x7a25_0a7e));
        }
        // The same address twice would be two slots fighting over one session.
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(a.clone()));
        let (tx, rx) = crossbeam::channel::unbounded();
        let slots: Vec<Vec<ServerAddr>> = match config.mode {
            ConnectMode::Single => vec![addrs.clone()],
            _ => addrs.iter().map(|a| vec![a.clone()]).collect(),
        };
        let v6 = io.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let first_call_id = config.seed.map_or_else(crate::sync::os_seed, |s| s ^ 0x9e37_79b9);
        let shared = Arc::new(ClientShared {
            next_call_id: AtomicU64::new(first_call_id),
            config: config.clone(),
            endpoint: Mutex::new(None),
            task: OnceLock::new(),
            cmds: tx,
            view: Mutex::new(View::default()),
            routes_version: Default::default(),
            client_id: super::next_client_id(),
            changed: Notify::new(),
            accounting: Mutex::new(CallAccounting::new(Instant::now())),
            one_way_sent: Default::default(),
            pending: AtomicUsize::new(0),
            spare_cells: ArrayQueue::new(SPARE_CELLS),
            strategies,
            slots: Mutex::new(Vec::new()),
            slot_seed: Mutex::new(base),
            refused: Mutex::new(Vec::new()),
            v6,
            discovery: source.as_ref().map(|_| {
                let policy = refresh.unwrap_or_else(|| {
                    RefreshPolicy::on(config.discovery.refresh_on.iter().copied())
                });
                Arc::new(Discovery::new(policy))
            }),
            retry: RetryTable::new(&config, retry_for),
            events: broadcast::channel(EVENT_BACKLOG).0,
            closing: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            wait_while_starting,
            observers: super::observers::Observers::new(crate::proto::ids::fmix64(
                base ^ 0x0b5e_77e5,
            )),
        });
        let s = shared.clone();
        let security = Security {
            token: token.map(Arc::new),
            mint: server_identity,
            cluster: crate::proto::ids::cluster_tag(&config.cluster_id, &config.service_id),
            ..Security::default()
        };
        let endpoint =
            Endpoint::start_service(io, config.transport.clone(), security, move |ep| {
                let _ = s.task.set(ep.clone());
                ClientService::new(s, rx)
            })?;
        *lock(&shared.endpoint) = Some(endpoint);
        for addrs in slots {
            shared.add_slot(addrs);
        }
        if let Some(source) = source {
            let seed = crate::proto::ids::fmix64(base ^ 0xd15c_0be7);
            let task = tokio::spawn(discovery::run(shared.clone(), source, seed));
            lock(&shared.tasks).push(task);
        }
        Ok(Client::new(shared))
    }
}
