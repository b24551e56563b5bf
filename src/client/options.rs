//! A client's options, errors, events and server descriptions.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{TransportConfig, duration};
use crate::error::CallErrorKind;
use crate::error::{BindError, ConnectError, DisconnectReason};
pub use crate::proto::addr::{AddrParseError, ServerAddr};
use crate::proto::ids::ServerId;
use crate::proto::manifest::Manifest;
use crate::proto::topology::Backoff;
pub use crate::proto::topology::{ClusterNode, Topology, TopologyDiff};
use crate::topology::{DiscoveryConfig, DiscoveryError};

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

/// Options of a [`Client`](super::Client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Server addresses (`ip:port` or `host:port`), connected before any the builder adds.
    /// Default none.
    pub servers: Vec<ServerAddr>,
    /// The cluster this client belongs to: it uses only servers whose manifest names the same
    /// cluster and service (others fail with [`ClientError::WrongCluster`] and are not
    /// retried). Default `"grainwire"`.
    pub cluster_id: String,
    /// The service within the cluster. Default `"game"`.
    pub service_id: String,
    /// The transport's options.
    pub transport: TransportConfig,
    /// A call's deadline when neither the method (`#[grain(timeout_ms = ..)]`) nor the call
    /// (`with_timeout`) sets one. Default 5 s.
    #[serde(with = "duration")]
    pub default_timeout: Duration,
    /// How long `connect` waits for servers' handshakes and manifests. Default 5 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Calls that may be pending at once; more fail at once with `CallError::Overloaded`.
    /// Default 65536.
    pub max_pending_calls: usize,
    /// The items a stream's server may send before the stream is read further (credit is
    /// granted back half a window at a time as it is read): what one stream may hold in this
    /// client unread. Servers cap it (`ServerConfig::max_grain_stream_window`). Default 1,024.
    pub grain_stream_window: u32,
    /// Which servers to connect to, and when. Default [`ConnectMode::Multi`].
    pub mode: ConnectMode,
    /// First wait before reconnecting to a server; doubled after each failed attempt, up to
    /// `reconnect_max`, with ±25 % random jitter. Default 200 ms.
    #[serde(with = "duration")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts. Default 5 s.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// A server from which nothing arrived for this long (while keepalive pings go out every
    /// `transport.keepalive_interval`) is judged dead before the transport's idle timeout:
    /// it leaves routing at once, its pending calls fail (`#[idempotent]` ones are retried
    /// elsewhere), its session is dropped and reconnected. Default 3 s (three missed pings);
    /// at least twice the keepalive interval. Only while some other server is heard from:
    /// when every server is silent at once the client's own network is the likelier culprit,
    /// and its sessions wait up to the transport's `idle_timeout` (10 s), going on with
    /// nothing lost if the network comes back in time.
    #[serde(with = "duration")]
    pub health_timeout: Duration,
    /// Time constant of the peak-EWMA latency estimate that [`LowestLatency`](super::LowestLatency) uses.
    /// Default 10 s.
    #[serde(with = "duration")]
    pub latency_decay: Duration,
    /// Seed of all the client's randomness (reconnection jitter, strategies' random draws,
    /// the transport's session tags, discovery's backoff jitter); `None` (the default) draws
    /// one from the OS.
    pub seed: Option<u64>,
    /// Following the fleet from a topology source: seeds (servers to ask) or Redis URLs, and
    /// how to poll, retry and refresh. Default off (the client uses the servers it is given).
    pub discovery: DiscoveryConfig,
    /// When a call is sent again, and how often. Default: once more, at once, to another
    /// server, when the server answers that it did not run it or (`#[idempotent]` methods)
    /// when its server is lost.
    pub retry: RetryPolicy,
    /// Retry policies of single methods, by `"GrainType.method"` (the names in the `#[grain]`
    /// trait), replacing `retry` for them. Default none.
    pub retry_methods: std::collections::BTreeMap<String, RetryPolicy>,
    /// The strategy of grain types without their own; `None` (the default): the builder's,
    /// else consistent hashing. The builder's `strategy` wins over this.
    pub strategy: Option<StrategyName>,
    /// Strategies of single grain types, by the type's name (`"Player"`); the builder's
    /// `strategy_for` wins over these. Default none.
    pub strategies: std::collections::BTreeMap<String, StrategyName>,
    /// Grain locations remembered from servers' redirects (the grain directory placed the
    /// grain elsewhere than the strategy would), so later calls go straight there; the oldest
    /// are forgotten first. 0 remembers none. Default 10,000.
    pub location_cache: usize,
}

/// A built-in strategy, by name (configuration files): `round-robin`, `consistent-hash`,
/// `lowest-latency`, each also `tiered-…` (within the best priority tier present; see
/// [`Tiered::by_priority`](super::Tiered::by_priority)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// [`RoundRobin`](super::RoundRobin).
    RoundRobin,
    /// [`ConsistentHash`](super::ConsistentHash).
    ConsistentHash,
    /// [`LowestLatency`](super::LowestLatency).
    LowestLatency,
    /// Round-robin within the best priority tier.
    TieredRoundRobin,
    /// Consistent hashing within the best priority tier.
    TieredConsistentHash,
    /// Lowest latency within the best priority tier.
    TieredLowestLatency,
}

impl StrategyName {
    /// The strategy.
    pub fn build(self) -> std::sync::Arc<dyn super::Strategy> {
        use super::{ConsistentHash, LowestLatency, RoundRobin, Tiered};
        match self {
            Self::RoundRobin => std::sync::Arc::new(RoundRobin),
            Self::ConsistentHash => std::sync::Arc::new(ConsistentHash),
            Self::LowestLatency => std::sync::Arc::new(LowestLatency),
            Self::TieredRoundRobin => std::sync::Arc::new(Tiered::by_priority(RoundRobin)),
            Self::TieredConsistentHash => std::sync::Arc::new(Tiered::by_priority(ConsistentHash)),
            Self::TieredLowestLatency => std::sync::Arc::new(Tiered::by_priority(LowestLatency)),
        }
    }
}

impl FromStr for StrategyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
            .map_err(|_| {
                format!(
                    "unknown strategy {s:?}: expected round-robin, consistent-hash, lowest-latency \
                     or tiered-<one of those>"
                )
            })
    }
}

/// When and how often a call is sent again. Only calls that provably did not run are retried
/// (the server refused them, or stopped before answering: the kinds in `retry_on`, all of
/// which [`CallErrorKind::not_executed`]), plus `#[idempotent]` methods whose server was lost
/// (`idempotent_after_loss`). Each attempt goes to another server than the last and carries what
/// remains of the call's deadline; a call whose deadline passed is not sent again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts of one call in all, the first included: 1 never retries. Default 2.
    pub max_attempts: u32,
    /// The wait before the n-th retry: `backoff.delay(n)`. Default 0 (at once: another server
    /// is tried), doubling up to 1 s, ±10 % jitter.
    pub backoff: Backoff,
    /// Answers (and endings) after which a call is sent again. Default `shutting-down`
    /// (the server is stopping, or closed drained before answering) and `unknown-grain-type`
    /// (it stopped hosting the type since its manifest). Each must be a kind that did not
    /// run (e.g. `overloaded` may be added; `timeout` may not).
    pub retry_on: Vec<CallErrorKind>,
    /// Whether an `#[idempotent]` method's call pending on a lost server is sent again.
    /// Default true.
    pub idempotent_after_loss: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            backoff: Backoff {
                initial: Duration::ZERO,
                max: Duration::from_secs(1),
                ..Backoff::default()
            },
            retry_on: vec![CallErrorKind::ShuttingDown, CallErrorKind::UnknownGrainType],
            idempotent_after_loss: true,
        }
    }
}

impl RetryPolicy {
    /// Never sends a call again.
    pub fn never() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1");
        }
        let b = &self.backoff;
        if b.max < b.initial || !(b.factor >= 1.0 && b.factor.is_finite()) {
            return Err("retry.backoff: initial at most max, factor at least 1");
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err("retry.backoff.jitter must be within 0..=1");
        }
        if self.retry_on.iter().any(|k| !k.not_executed()) {
            return Err(
                "retry.retry_on may name only kinds that did not run (not timeout, disconnected, ...)",
            );
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            cluster_id: crate::proto::manifest::DEFAULT_CLUSTER_ID.into(),
            service_id: crate::proto::manifest::DEFAULT_SERVICE_ID.into(),
            transport: TransportConfig::default(),
            default_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_pending_calls: 65536,
            grain_stream_window: crate::rpc::stream::DEFAULT_STREAM_WINDOW,
            mode: ConnectMode::Multi,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            health_timeout: Duration::from_secs(3),
            latency_decay: Duration::from_secs(10),
            seed: None,
            discovery: DiscoveryConfig::default(),
            retry: RetryPolicy::default(),
            retry_methods: Default::default(),
            strategy: None,
            strategies: Default::default(),
            location_cache: 10_000,
        }
    }
}

impl crate::config::ConfigFile for ClientConfig {}

impl ClientConfig {
    /// The common case in one line: servers, then `;key=value` options —
    /// `"eu-1.example.net:7777,10.0.0.2:7777;mode=multi;cluster=eu-prod;timeout=5s"`. Options:
    /// `mode` (single, multi, on-demand), `cluster`, `service`, `timeout` (a call's default
    /// deadline), `connect_timeout`, `health_timeout`, `seed`, `discover=true` (the addresses
    /// are seeds: the client follows the fleet they report), `redis=URL` (follow the fleet
    /// registered in Redis; then no address is needed). Everything else keeps its default.
    pub fn from_connection_string(text: &str) -> Result<Self, crate::config::ConfigFileError> {
        let bad = |message: String| crate::config::ConfigFileError::Invalid {
            origin: "connection string".into(),
            message,
        };
        let duration = |k: &str, v: &str| {
            crate::config::duration::parse_duration(v)
                .ok_or_else(|| bad(format!("{k}: not a duration: {v:?}")))
        };
        let mut parts = text.split(';');
        let mut cfg = Self::default();
        let mut discover = false;
        for addr in parts.next().unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
            cfg.servers.push(addr.parse().map_err(|e: AddrParseError| bad(e.to_string()))?);
        }
        for option in parts.map(str::trim).filter(|o| !o.is_empty()) {
            let (k, v) =
                option.split_once('=').ok_or_else(|| bad(format!("not key=value: {option:?}")))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "mode" => cfg.mode = v.parse().map_err(bad)?,
                "cluster" => cfg.cluster_id = v.into(),
                "service" => cfg.service_id = v.into(),
                "timeout" => cfg.default_timeout = duration(k, v)?,
                "connect_timeout" => cfg.connect_timeout = duration(k, v)?,
                "health_timeout" => cfg.health_timeout = duration(k, v)?,
                "seed" => {
                    cfg.seed =
                        Some(v.parse().map_err(|_| bad(format!("seed: not a number: {v:?}")))?)
                }
                "discover" => match v {
                    "true" => discover = true,
                    "false" => discover = false,
                    _ => return Err(bad(format!("discover: expected true or false: {v:?}"))),
                },
                "redis" => cfg.discovery.redis.push(v.into()),
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        if discover {
            cfg.discovery.seeds = std::mem::take(&mut cfg.servers);
        }
        if cfg.servers.is_empty() && !cfg.discovery.enabled() {
            return Err(bad("no server address".into()));
        }
        Ok(cfg)
    }

    pub(super) fn validate(&self) -> Result<(), ClientError> {
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
        if self.grain_stream_window == 0
            || self.grain_stream_window > crate::proto::wire::rpc::MAX_STREAM_WINDOW
        {
            return bad("grain_stream_window", "must be within 1..=65536");
        }
        self.transport.validate().map_err(BindError::from)?;
        self.discovery.validate().map_err(ClientError::Discovery)?;
        for policy in std::iter::once(&self.retry).chain(self.retry_methods.values()) {
            policy.validate().map_err(|problem| ClientError::Config { field: "retry", problem })?;
        }
        for name in self.retry_methods.keys() {
            if name.split_once('.').is_none_or(|(t, m)| t.is_empty() || m.is_empty()) {
                return bad("retry_methods", "keys are \"GrainType.method\"");
            }
        }
        if self.discovery.enabled() && self.mode == ConnectMode::Single {
            return bad("mode", "discovery needs Multi or OnDemand mode");
        }
        Ok(())
    }
}

/// How [`Client::remove_server`](super::Client::remove_server) lets a server go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// No new calls go to it; the pending ones finish there; then its session closes.
    Drain,
    /// Its session closes at once: its pending calls fail with
    /// `Disconnected(ClosedLocally)`, `#[idempotent]` ones are sent to another server.
    Abort,
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
    Unreachable(Vec<(ServerAddr, Option<ConnectError>)>),
    /// A session was established but the server sent no manifest in time.
    #[error("the server sent no manifest within the connect timeout")]
    NoManifest,
    /// The session ended before the manifest arrived.
    #[error("disconnected during the handshake: {0}")]
    Disconnected(DisconnectReason),
    /// `remove_server` named a server the client is not connected to.
    #[error("no connected server has the id {0}")]
    UnknownServer(ServerId),
    /// The client was disconnected (or is being dropped).
    #[error("the client is closed")]
    Closed,
    /// The server belongs to another cluster or service than the client.
    #[error(transparent)]
    WrongCluster(Box<ClusterMismatch>),
    /// The topology source gave no usable topology within the connect timeout (the latest
    /// failure).
    #[error("discovery: {0}")]
    Discovery(DiscoveryError),
}

impl ClientError {
    /// Why a server refused us, when that is why the client could not start (the first such
    /// reason when several servers were tried): a bad or missing connect token, the server's
    /// application, a full server.
    pub fn rejection(&self) -> Option<crate::error::Rejection> {
        let of = |e: &ConnectError| match e {
            ConnectError::Failed(DisconnectReason::Rejected(r)) => Some(*r),
            _ => None,
        };
        match self {
            Self::Connect(e) => of(e),
            Self::Disconnected(DisconnectReason::Rejected(r)) => Some(*r),
            Self::Unreachable(tried) => tried.iter().find_map(|(_, e)| e.as_ref().and_then(of)),
            _ => None,
        }
    }
}

/// A server of another cluster or service than the client's: both sides' ids. A server
/// refuses such a client at its door (`Rejection::WrongCluster`): then its id and cluster are
/// not known (`None`); a server that does not check is found out by its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMismatch {
    /// The server's id (`None`: it refused us before saying).
    pub server: Option<ServerId>,
    /// Its address.
    pub addr: SocketAddr,
    /// The client's cluster id.
    pub ours_cluster: String,
    /// The client's service id.
    pub ours_service: String,
    /// The server's cluster id (`None`: it refused us before saying).
    pub theirs_cluster: Option<String>,
    /// The server's service id (`None`: it refused us before saying).
    pub theirs_service: Option<String>,
}

impl ClusterMismatch {
    /// The server at `addr` refused a client of `config`'s cluster at connect.
    pub(crate) fn refused_at_connect(addr: SocketAddr, config: &ClientConfig) -> Self {
        Self {
            server: None,
            addr,
            ours_cluster: config.cluster_id.clone(),
            ours_service: config.service_id.clone(),
            theirs_cluster: None,
            theirs_service: None,
        }
    }
}

impl std::fmt::Display for ClusterMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ours_c, ours_s) = (&self.ours_cluster, &self.ours_service);
        match (&self.server, &self.theirs_cluster, &self.theirs_service) {
            (Some(id), Some(c), Some(s)) => write!(
                f,
                "server {id} at {} is of cluster {c:?} / service {s:?}, this client of cluster \
                 {ours_c:?} / service {ours_s:?}",
                self.addr
            ),
            _ => write!(
                f,
                "the server at {} refused this client of cluster {ours_c:?} / service {ours_s:?}: \
                 it is of another",
                self.addr
            ),
        }
    }
}

impl std::error::Error for ClusterMismatch {}

/// Something that happened to one of a client's servers. See [`Client::events`](super::Client::events).
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
    /// A server is of another cluster or service: the client closed its session and will not
    /// reconnect it.
    WrongCluster(ClusterMismatch),
    /// An attempt to connect failed; the next one follows after `retry_in`.
    ConnectFailed {
        /// The address (as given: a name is resolved on each attempt).
        addr: ServerAddr,
        /// Why.
        error: ConnectError,
        /// The wait before the next attempt (`None` in on-demand mode: when a call needs it).
        retry_in: Option<Duration>,
    },
    /// The topology source reported a new fleet and the client follows it: the eligible
    /// nodes it lacked are being connected, removed and ineligible ones drained.
    TopologyChanged {
        /// What changed since the previous topology (all nodes `added` for the first).
        diff: TopologyDiff,
    },
    /// Asking the topology source failed (or gave a topology that cannot be applied); the
    /// client keeps the servers it has.
    DiscoveryFailed {
        /// The seed asked (as the source names it).
        seed: String,
        /// Why.
        error: DiscoveryError,
        /// When it is asked again (`None`: when the source pushes its next topology).
        retry_in: Option<Duration>,
        /// Whether the seed was given up: the next one is asked after `retry_in`.
        next_seed: bool,
    },
}

/// What a client knows of one connected server. See [`Client::servers`](super::Client::servers).
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
    /// Its calls: completed, failed, timed out, latency percentiles, last activity (one-way
    /// calls are counted client-wide only).
    pub calls: crate::proto::stats::CallStats,
    /// Its session's transport statistics.
    pub transport: crate::transport::ConnectionStats,
    /// Whether its session's packets are encrypted and authenticated (opened with a token).
    pub protected: bool,
}
