//! Where a fleet's topology comes from: the source traits a client follows, the options of
//! following one, the refresh policy, and the built-in sources (a static list here; the servers
//! themselves, built into the client; Redis in [`redis`]).
//!
//! A source is either *polling* (asked for the current topology every
//! [`DiscoveryConfig::interval`]) or *streaming* (a stream of topologies, each the whole fleet).
//! Either is asked through one of its seeds at a time: the client stays on a seed while it
//! answers, and moves to the next one when it fails or its stream ends. Inside one seed, a
//! polling source's failures are retried with exponential backoff and jitter
//! ([`Backoff`]) up to [`DiscoveryConfig::max_attempts`] in a row; then the next seed is tried.
//! Seeds are tried in turn forever; after a whole round of seeds failed, the client waits the
//! backoff of the number of rounds before the next one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use grainwire::client::Client;
//! // A game client given two seeds finds every server of the fleet through them.
//! let client = Client::builder()
//!     .seeds(["eu-1.example.net:7777".parse::<grainwire::client::ServerAddr>()?,
//!             "eu-2.example.net:7777".parse()?])
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```

pub mod redis;

use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration;
use crate::error::{CallError, CallErrorKind};
pub use crate::proto::addr::ServerAddr;
pub use crate::proto::topology::{Backoff, ClusterNode, MAX_NODES, Topology, TopologyDiff};

/// A boxed future, as source traits return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of topologies, each the whole fleet; an error or its end moves the client to the
/// next seed.
pub type TopologyStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<Topology, DiscoveryError>> + Send>>;

/// A source asked for the current topology (a request/response protocol, a store, a file).
pub trait PollingSource: Send + Sync + 'static {
    /// Its seeds, as events name them (at least one).
    fn seeds(&self) -> Vec<String>;

    /// The current topology, asked through seed `seed` (an index into [`seeds`](Self::seeds)).
    /// The client bounds it by [`DiscoveryConfig::timeout`].
    fn fetch(&self, seed: usize) -> BoxFuture<'_, Result<Topology, DiscoveryError>>;

    /// The order in which new nodes are connected (on-demand mode tries them in this order).
    /// Default: by priority, ascending.
    fn order(&self, a: &ClusterNode, b: &ClusterNode) -> Ordering {
        a.priority.cmp(&b.priority)
    }
}

/// A source that pushes the topology whenever it changes.
pub trait StreamingSource: Send + Sync + 'static {
    /// Its seeds, as events name them (at least one).
    fn seeds(&self) -> Vec<String>;

    /// Topologies through seed `seed`, the current one first, then one per change.
    fn subscribe(&self, seed: usize) -> TopologyStream;

    /// The order in which new nodes are connected. Default: by priority, ascending.
    fn order(&self, a: &ClusterNode, b: &ClusterNode) -> Ordering {
        a.priority.cmp(&b.priority)
    }
}

/// A stream over a channel's receiver (what streaming sources return).
pub(crate) struct Receiver<T>(pub(crate) tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A fixed fleet: what the builder's server list is, as a source (one seed, never failing).
#[derive(Debug, Clone)]
pub struct StaticSource(pub Topology);

impl PollingSource for StaticSource {
    fn seeds(&self) -> Vec<String> {
        vec!["static".into()]
    }

    fn fetch(&self, _seed: usize) -> BoxFuture<'_, Result<Topology, DiscoveryError>> {
        Box::pin(std::future::ready(Ok(self.0.clone())))
    }
}

/// Why discovery did not produce a topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The source did not answer within [`DiscoveryConfig::timeout`].
    #[error("the topology source did not answer in time")]
    Timeout,
    /// The seed could not be reached (connect failed, the server left, Redis refused).
    #[error("seed unreachable: {0}")]
    Unreachable(String),
    /// The topology has nodes, but none is eligible: it is not applied (the client keeps the
    /// servers it has).
    #[error("the topology has no eligible node")]
    NoEligibleNodes,
    /// The topology has no node at all: not applied.
    #[error("the topology is empty")]
    Empty,
    /// A streaming source's stream ended.
    #[error("the topology stream ended")]
    StreamEnded,
    /// The source failed otherwise (its own message).
    #[error("discovery failed: {0}")]
    Failed(String),
    /// The discovery options are out of range.
    #[error("invalid discovery option {field}: {problem}")]
    Config {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Which call failures make the client ask its topology source again at once (rather than at
/// the next poll): a server it calls may have left or moved. Build one with [`on`](Self::on)
/// (by kind), [`when`](Self::when) (any predicate), and combine with [`any`](Self::any) and
/// [`all`](Self::all). The default refreshes on `NotConnected`, `ServerUnavailable` and
/// `Disconnected` (unreachable or lost servers).
#[derive(Clone)]
pub struct RefreshPolicy(Arc<dyn Fn(&CallError) -> bool + Send + Sync>);

impl std::fmt::Debug for RefreshPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshPolicy(..)")
    }
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self::on(DEFAULT_REFRESH_ON.iter().copied())
    }
}

/// The kinds the default [`RefreshPolicy`] refreshes on.
pub const DEFAULT_REFRESH_ON: &[CallErrorKind] =
    &[CallErrorKind::NotConnected, CallErrorKind::ServerUnavailable, CallErrorKind::Disconnected];

impl RefreshPolicy {
    /// Refreshes when a call fails with one of `kinds`.
    pub fn on(kinds: impl IntoIterator<Item = CallErrorKind>) -> Self {
        let kinds: Vec<CallErrorKind> = kinds.into_iter().collect();
        Self(Arc::new(move |e| kinds.contains(&e.kind())))
    }

    /// Refreshes when `f` says so.
    pub fn when(f: impl Fn(&CallError) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Never refreshes on failures (only the source's own schedule).
    pub fn never() -> Self {
        Self(Arc::new(|_| false))
    }

    /// Refreshes when any of `policies` would.
    pub fn any(policies: impl IntoIterator<Item = RefreshPolicy>) -> Self {
        let all: Vec<RefreshPolicy> = policies.into_iter().collect();
        Self(Arc::new(move |e| all.iter().any(|p| p.should_refresh(e))))
    }

    /// Refreshes when every one of `policies` would.
    pub fn all(policies: impl IntoIterator<Item = RefreshPolicy>) -> Self {
        let all: Vec<RefreshPolicy> = policies.into_iter().collect();
        Self(Arc::new(move |e| all.iter().all(|p| p.should_refresh(e))))
    }

    /// Whether a call that failed with `error` should trigger a refresh.
    pub fn should_refresh(&self, error: &CallError) -> bool {
        (self.0)(error)
    }
}

/// How a client follows a topology source: where it asks (`seeds` or `redis`), how often,
/// how it retries, and when call failures make it ask again at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Servers to ask for the fleet (every grainwire server answers with the fleet it knows,
    /// and pushes changes). Default none.
    pub seeds: Vec<ServerAddr>,
    /// Redis URLs to read the fleet from (`redis://host:port/db`), tried in turn: the members
    /// that servers registered there (`ServerConfig::membership`), pushed on change and polled
    /// every `interval`. Default none.
    pub redis: Vec<String>,
    /// How often a polling source is asked (Redis: the fallback to its pushes). Default 5 s.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long one request may take (a poll, a seed's connect and first topology). Default 5 s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Failures in a row after which a seed is given up and the next one tried. Default 10.
    pub max_attempts: u32,
    /// The waits between failed attempts on one seed, and between rounds of seeds that all
    /// failed. Default 100 ms doubling to 5 s, ±10 % jitter.
    pub backoff: Backoff,
    /// Call failures that make the client ask again at once (see [`RefreshPolicy`]). Default
    /// `not-connected`, `server-unavailable`, `disconnected`.
    pub refresh_on: Vec<CallErrorKind>,
    /// The shortest time between two refreshes triggered by failures. Default 1 s.
    #[serde(with = "duration")]
    pub min_refresh_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            redis: Vec::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff: Backoff::default(),
            refresh_on: DEFAULT_REFRESH_ON.to_vec(),
            min_refresh_interval: Duration::from_secs(1),
        }
    }
}

impl DiscoveryConfig {
    /// Whether a source is configured (seeds or Redis).
    pub fn enabled(&self) -> bool {
        !self.seeds.is_empty() || !self.redis.is_empty()
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        let bad = |field, problem| Err(DiscoveryError::Config { field, problem });
        if self.interval.is_zero() {
            return bad("interval", "must be non-zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be non-zero");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if let Err(problem) = self.backoff.validate() {
            return bad("backoff", problem);
        }
        if !self.seeds.is_empty() && !self.redis.is_empty() {
            return bad("seeds", "give seeds or redis, not both");
        }
        Ok(())
    }
}
