//! A server's options ([`ServerConfig`], also read from a config file) and why it may not
//! start ([`ServerError`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::claims::DirectoryConfig;
use super::security::{AuthConfig, KeyError};
use crate::config::{TransportConfig, duration};
use crate::error::BindError;
use crate::proto::addr::ServerAddr;
use crate::proto::ids::GrainType;
use crate::proto::manifest::{DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ID, Metadata};
use crate::topology::redis::MembershipConfig;

/// Options of a [`Server`](super::Server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The id the server gives in its handshake. Default: random.
    pub server_id: Option<String>,
    /// The cluster it belongs to, sent in its manifest: clients of another cluster do not
    /// use it (they fail with `WrongCluster`). Default `"grainwire"`.
    pub cluster_id: String,
    /// The service within the cluster, checked like the cluster id. Default `"game"`.
    pub service_id: String,
    /// This server's placement weight (clients' consistent placement gives it
    /// `weight / Σ weights` of a grain type's grains). Default 1.
    pub weight: u32,
    /// This server's priority, sent to clients in its manifest: priority-tiered strategies
    /// (`Tiered::by_priority`) prefer the lowest present. Default 0.
    pub priority: u32,
    /// What the server says of itself (datacenter, zone, build, ...), sent to clients in its
    /// manifest for strategies to read. Default empty.
    pub metadata: Metadata,
    /// The transport's options (`accept_incoming` is forced on).
    pub transport: TransportConfig,
    /// Deactivate a grain after this long without calls. Default 5 min.
    #[serde(with = "duration")]
    pub idle_deactivation: Duration,
    /// Calls one connection may have pending; more are answered `Overloaded`. It also bounds
    /// the answers a connection may leave unacknowledged: while it holds twice that many (plus
    /// 64), or the transport's `send_buffer` in bytes, its calls are answered `Overloaded`
    /// instead of admitted or run (an eighth more, and nothing more is queued for it, not even
    /// a refusal). Default 1024.
    pub max_pending_per_connection: usize,
    /// Bytes one connection's pending calls may hold (arguments plus 256 bytes of bookkeeping
    /// each); a call that would go over is answered `Overloaded` (one call alone is always
    /// taken, up to the transport's `max_message_size`). Default 4 MiB.
    pub max_pending_bytes_per_connection: usize,
    /// Calls pending on the whole server. Shared fairly among addresses (see below): at the
    /// bound, a call from an address under its share takes room from the address most over
    /// its share (some of its queued calls are answered `Overloaded`); other calls are answered
    /// `Overloaded`. Default 65,536.
    ///
    /// Every server-wide budget here is shared this way: an address's share is the bound
    /// divided by the addresses with sessions now (an IPv4 address or an IPv6 /64), so one
    /// address — or a few — reaching a bound costs themselves, never the other callers.
    pub max_pending_calls: usize,
    /// Bytes all pending calls may hold, counted as in `max_pending_bytes_per_connection`.
    /// Shared like `max_pending_calls`. Default 256 MiB.
    pub max_pending_bytes: usize,
    /// Bytes of answers (and everything else) queued for all clients and not yet
    /// acknowledged. At the bound, a call from an address under its share takes room from the
    /// address most over its share (its largest session is closed `Stalled`, its queue
    /// dropped); calls from addresses over their share are answered `Overloaded`. Default
    /// 256 MiB.
    pub max_queued_answer_bytes: usize,
    /// Activations the server holds at once. A call that needs one more makes an idle
    /// activation deactivate (evicted: its hook runs, its state is gone, its next call
    /// activates it afresh): the least recently used one created by the caller's own address
    /// or by an address over its share, or, for a caller under its share, the least recently
    /// used one. If none may be evicted, or more than a sixteenth of this budget is still
    /// deactivating, the call is answered `Overloaded`. Bounds the memory clients can make the
    /// server spend by calling many keys. Default 100,000.
    pub max_activations: usize,
    /// Bytes all activations may be charged, shared and evicted like `max_activations`: each
    /// costs 2 KiB (its task, mailbox, table entries and directory claim) plus its key's text
    /// (a key may hold 1 KiB). The grain's own state is not counted: keep it small or bound it
    /// yourself. Default 256 MiB.
    pub max_activation_bytes: usize,
    /// Activations created by one connection's calls that may exist at once; a call that needs
    /// one more is answered `Overloaded`. Keeps one client from churning everybody's grains out.
    /// Default 10,000.
    pub max_activations_per_connection: usize,
    /// How long grains' calls to a client's observers wait for the client to come back after
    /// its session ended (a reconnect), before they fail `ObserverGone`. Default 10 s.
    #[serde(with = "duration")]
    pub observer_grace: Duration,
    /// Observers one session may register; calls to more fail `ObserverGone`. Default 1,024.
    pub max_observers_per_session: usize,
    /// Grains' calls to one session's observers that may await their answers at once; a
    /// client that lets more pile up is closed (`Stalled`). Default 1,024.
    pub max_observer_calls_per_session: usize,
    /// Grains that may watch one session's end (`GrainContext::watch`); later watches are
    /// dropped (counted in `ServerStats::watches_dropped`). Default 4,096.
    pub max_watches_per_session: usize,
    /// Streams one session may have running; more are refused `Overloaded` (counted in
    /// `ServerStats::streams_refused`). Each is also a pending call. Default 64.
    pub max_grain_streams_per_session: usize,
    /// The most items a stream sends ahead of what its caller read (a caller's window larger
    /// than this is cut to it): with the session's send buffer, what a slow reader makes the
    /// server hold. Default 4,096.
    pub max_grain_stream_window: u32,
    /// The deadline of a call that carries none (one-way calls). Default 30 s.
    #[serde(with = "duration")]
    pub default_deadline: Duration,
    /// How long `shutdown` waits for pending calls, then for deactivations. Default 10 s.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// The address clients reach this server at, as it tells them in the fleet it serves and
    /// registers in Redis. Default: the address it bound (give one when binding `0.0.0.0`).
    pub advertise: Option<ServerAddr>,
    /// The other servers of the fleet, served to clients that ask (the built-in topology
    /// source) when there is no Redis membership. Default none (the fleet is this server).
    pub peers: Vec<ServerAddr>,
    /// Registering in Redis and following the fleet registered there. Default off.
    pub membership: MembershipConfig,
    /// One activation per grain across the fleet: claims in a grain directory (on by default
    /// with a Redis membership, in the same Redis).
    pub directory: DirectoryConfig,
    /// Who may connect: `trusted` (anyone; for trusted networks only, the default) or
    /// `tokens` (a connect token sealed with one of the keys; packets protected).
    pub auth: AuthConfig,
}

impl crate::config::ConfigFile for ServerConfig {}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server_id: None,
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            service_id: DEFAULT_SERVICE_ID.into(),
            weight: 1,
            priority: 0,
            metadata: Metadata::new(),
            transport: TransportConfig::server(),
            idle_deactivation: Duration::from_secs(300),
            max_pending_per_connection: 1024,
            max_pending_bytes_per_connection: 4 << 20,
            max_pending_calls: 65_536,
            max_pending_bytes: 256 << 20,
            max_queued_answer_bytes: 256 << 20,
            max_activations: 100_000,
            max_activation_bytes: 256 << 20,
            max_activations_per_connection: 10_000,
            observer_grace: Duration::from_secs(10),
            max_observers_per_session: 1024,
            max_observer_calls_per_session: 1024,
            max_watches_per_session: 4096,
            max_grain_streams_per_session: 64,
            max_grain_stream_window: 4096,
            default_deadline: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            advertise: None,
            peers: Vec::new(),
            membership: MembershipConfig::default(),
            directory: DirectoryConfig::default(),
            auth: AuthConfig::default(),
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
    /// An option is out of range.
    #[error("invalid server option: {0}")]
    Config(&'static str),
    /// Two hosted grain types have the same name (or names whose ids collide).
    #[error("grain type `{0}` is hosted twice (or its id collides with another's)")]
    DuplicateGrainType(&'static str),
    /// An interface given to [`Host::with`](super::Host::with) cannot be hosted with the
    /// grain type's first.
    #[error("interface `{interface}` cannot be hosted with `{host}`: {reason}")]
    Interface {
        /// The interface given to `with`.
        interface: &'static str,
        /// The interface the host was made for.
        host: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The grain type was never given to the builder (`host` or `register`).
    #[error("grain type {0} is not registered on this server")]
    NotRegistered(GrainType),
    /// A token key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
}
