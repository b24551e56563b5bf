//! Following a topology source: the resolver task asks the source through one seed at a time
//! (one internal path, streaming: a polling source is adapted to it with its interval, timeout
//! and backoff), applies each new topology to the client's server set (connects the eligible
//! nodes it lacks, drains the ones that left or became ineligible), and tells the application
//! what happened. Nothing here is on a call's path: a failed call only pokes the resolver when
//! the refresh policy says so.

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::{ClientCmd, ClientEvent, ClientShared, ServerAddr};
use crate::error::CallError;
use crate::proto::rng::SplitMix64;
use crate::sync::lock;
use crate::topology::{
    ClusterNode, DiscoveryConfig, DiscoveryError, PollingSource, RefreshPolicy, StreamingSource,
    Topology, TopologyDiff,
};

/// Where a client's topology comes from.
#[derive(Clone)]
pub(crate) enum Source {
    Polling(Arc<dyn PollingSource>),
    Streaming(Arc<dyn StreamingSource>),
    /// The servers themselves, asked through these seeds (built into the client: it reaches
    /// them over its own sessions).
    Servers(Vec<ServerAddr>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Polling(_) => f.write_str("Polling(..)"),
            Self::Streaming(_) => f.write_str("Streaming(..)"),
            Self::Servers(s) => f.debug_tuple("Servers").field(s).finish(),
        }
    }
}

impl Source {
    fn seeds(&self) -> Vec<String> {
        match self {
            Self::Polling(p) => p.seeds(),
            Self::Streaming(s) => s.seeds(),
            Self::Servers(s) => s.iter().map(ToString::to_string).collect(),
        }
    }

    fn order(&self, a: &ClusterNode, b: &ClusterNode) -> Ordering {
        match self {
            Self::Polling(p) => p.order(a, b),
            Self::Streaming(s) => s.order(a, b),
            Self::Servers(_) => a.priority.cmp(&b.priority),
        }
    }
}

/// What a seed's producer reports to the resolver.
#[derive(Debug)]
enum Found {
    Topology(Topology),
    /// The producer connected this seed as a server of its own (the resolver owns it now).
    Seeded(ServerAddr),
    /// A failed attempt; `retry_in: None` means the producer gave up on its seed.
    Failed {
        error: DiscoveryError,
        retry_in: Option<Duration>,
    },
}

/// The client's side of discovery: how a failed call asks for a refresh, and what was found.
#[derive(Debug)]
pub(crate) struct Discovery {
    refresh: Notify,
    policy: RefreshPolicy,
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Status {
    /// The topology applied last.
    topology: Option<Topology>,
    /// The latest failure, while no topology was applied.
    error: Option<DiscoveryError>,
}

impl Discovery {
    pub(crate) fn new(policy: RefreshPolicy) -> Self {
        Self { refresh: Notify::new(), policy, status: Mutex::default() }
    }

    /// A call failed with `error`: re-discover at once if the policy says so.
    pub(crate) fn call_failed(&self, error: &CallError) {
        if self.policy.should_refresh(error) {
            self.refresh.notify_one();
        }
    }

    /// The topology applied last.
    pub(crate) fn topology(&self) -> Option<Topology> {
        lock(&self.status).topology.clone()
    }

    /// Whether the source has given neither a topology nor an error yet.
    pub(crate) fn undecided(&self) -> bool {
        matches!(self.pending_error(), Some(None))
    }

    /// Why nothing was applied yet (`None` once a topology was).
    pub(crate) fn pending_error(&self) -> Option<Option<DiscoveryError>> {
        let s = lock(&self.status);
        s.topology.is_none().then(|| s.error.clone())
    }
}

/// Runs the resolver until the client closes (its task is aborted then).
pub(crate) async fn run(shared: Arc<ClientShared>, source: Source, seed: u64) {
    let Some(discovery) = shared.discovery.clone() else { return };
    let cfg = shared.config.discovery.clone();
    let seeds = source.seeds();
    let n = seeds.len().max(1);
    let mut rng = SplitMix64::new(seed);
    let mut resolver =
        Resolver { shared: shared.clone(), source: source.clone(), managed: Vec::new() };
    let mut i = 0;
    // Seeds given up in a row without a topology from any of them.
    let mut failed_seeds = 0u32;
    let mut last_refresh: Option<Instant> = None;
    loop {
        let seed_name = seeds.get(i).cloned().unwrap_or_default();
        let (tx, mut rx) = mpsc::channel(16);
        let producer = tokio::spawn(produce(
            source.clone(),
            i,
            shared.clone(),
            cfg.clone(),
            rng.next_u64(),
            tx,
        ));
        let mut got = false;
        let opened = Instant::now();
        let ended = loop {
            tokio::select! {
                found = rx.recv() => match found {
                    Some(Found::Topology(t)) => {
                        got = true;
                        resolver.apply(&discovery, t, &seed_name);
                    }
                    Some(Found::Seeded(addr)) => resolver.own(addr),
                    Some(Found::Failed { error, retry_in: Some(wait) }) => {
                        resolver.failed(&discovery, &seed_name, error, Some(wait), false);
                    }
                    Some(Found::Failed { error, retry_in: None }) => break Some(error),
                    None => break Some(DiscoveryError::StreamEnded),
                },
                () = discovery.refresh.notified() => {
                    let now = Instant::now();
                    if last_refresh.is_some_and(|t| now < t + cfg.min_refresh_interval) {
                        continue;
                    }
                    last_refresh = Some(now);
                    tracing::debug!(seed = %seed_name, "refresh after a failed call");
                    break None;
                }
            }
        };
        producer.abort();
        let Some(error) = ended else { continue }; // a refresh: the same seed again, at once
        // A seed that gave a topology and lived a while is healthy; one that ended at once
        // (even with a topology) counts as failed, so a source that keeps doing that is
        // backed off rather than spun on.
        let lived = Instant::now().saturating_duration_since(opened) >= cfg.min_refresh_interval;
        failed_seeds = if got && lived { 0 } else { failed_seeds + 1 };
        // After a whole round of seeds failed, wait that round's backoff before the next.
        let wait = if failed_seeds > 0 && (failed_seeds as usize).is_multiple_of(n) {
            cfg.backoff.delay(failed_seeds / n as u32, rng.next_f64())
        } else {
            Duration::ZERO
        };
        resolver.failed(&discovery, &seed_name, error, Some(wait), true);
        i = (i + 1) % n;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

struct Resolver {
    shared: Arc<ClientShared>,
    source: Source,
    /// The servers discovery added (and so may drain); servers the application gave stay.
    managed: Vec<ServerAddr>,
}

impl Resolver {
    fn own(&mut self, addr: ServerAddr) {
        if !self.managed.contains(&addr) {
            self.managed.push(addr);
        }
    }

    fn failed(
        &self,
        discovery: &Discovery,
        seed: &str,
        error: DiscoveryError,
        retry_in: Option<Duration>,
        next_seed: bool,
    ) {
        tracing::debug!(%seed, %error, ?retry_in, next_seed, "discovery failed");
        {
            let mut s = lock(&discovery.status);
            if s.topology.is_none() {
                s.error = Some(error.clone());
            }
        }
        self.shared.emit(ClientEvent::DiscoveryFailed {
            seed: seed.to_string(),
            error,
            retry_in,
            next_seed,
        });
        self.shared.changed.notify_waiters();
    }

    /// Applies a topology: nothing if it is the one applied last; refused (an event, the
    /// client keeps its servers) if it has no eligible node.
    fn apply(&mut self, discovery: &Discovery, next: Topology, seed: &str) {
        let current = lock(&discovery.status).topology.clone();
        if current.as_ref() == Some(&next) {
            return; // unchanged: nothing to do
        }
        if next.nodes().is_empty() || next.eligible_count() == 0 {
            let error = if next.nodes().is_empty() {
                DiscoveryError::Empty
            } else {
                DiscoveryError::NoEligibleNodes
            };
            return self.failed(discovery, seed, error, None, false);
        }
        let diff = match &current {
            Some(c) => c.diff(&next),
            None => TopologyDiff { added: next.nodes().to_vec(), ..TopologyDiff::default() },
        };
        let mut connect: Vec<&ClusterNode> =
            next.eligible().filter(|n| !self.managed.contains(&n.endpoint)).collect();
        connect.sort_by(|a, b| self.source.order(a, b));
        for node in connect {
            match self.shared.add_slot(vec![node.endpoint.clone()]) {
                Some((_, true)) => self.managed.push(node.endpoint.clone()),
                Some((_, false)) => {} // a server the application added itself
                None => return,        // the client is closing
            }
        }
        let mut gone = Vec::new();
        self.managed.retain(|ep| {
            let keep = next.get(ep).is_some_and(|n| n.eligible);
            if !keep {
                gone.push(ep.clone());
            }
            keep
        });
        for addr in gone {
            if self.shared.cmds.send(ClientCmd::RemoveAddr { addr }).is_ok() {
                self.shared.wake();
            }
        }
        tracing::debug!(
            %seed, added = diff.added.len(), removed = diff.removed.len(),
            changed = diff.changed.len(), eligible = next.eligible_count(), "topology changed"
        );
        {
            let mut s = lock(&discovery.status);
            s.topology = Some(next);
            s.error = None;
        }
        self.shared.emit(ClientEvent::TopologyChanged { diff });
        self.shared.changed.notify_waiters();
    }
}

/// Asks seed `seed` of `source` and reports what it finds until it gives up (or is aborted).
async fn produce(
    source: Source,
    seed: usize,
    shared: Arc<ClientShared>,
    cfg: DiscoveryConfig,
    rng_seed: u64,
    tx: mpsc::Sender<Found>,
) {
    match source {
        Source::Polling(p) => poll(p, seed, &cfg, rng_seed, tx).await,
        Source::Streaming(s) => {
            let mut stream = s.subscribe(seed);
            loop {
                let next = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
                let found = match next {
                    Some(Ok(t)) => Found::Topology(t),
                    Some(Err(error)) => Found::Failed { error, retry_in: None },
                    None => return, // ended: the channel closes
                };
                let last = matches!(found, Found::Failed { .. });
                if tx.send(found).await.is_err() || last {
                    return;
                }
            }
        }
        Source::Servers(seeds) => {
            let Some(addr) = seeds.get(seed) else { return };
            watch_server(&shared, addr.clone(), &cfg, tx).await;
        }
    }
}

/// The polling adapter: asks every `interval`; after a failure, again after the backoff, up
/// to `max_attempts` failures in a row, then gives up on the seed.
async fn poll(
    src: Arc<dyn PollingSource>,
    seed: usize,
    cfg: &DiscoveryConfig,
    rng_seed: u64,
    tx: mpsc::Sender<Found>,
) {
    let mut rng = SplitMix64::new(rng_seed);
    let mut failures = 0u32;
    loop {
        let error = match tokio::time::timeout(cfg.timeout, src.fetch(seed)).await {
            Ok(Ok(t)) => {
                failures = 0;
                if tx.send(Found::Topology(t)).await.is_err() {
                    return;
                }
                tokio::time::sleep(cfg.interval).await;
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => DiscoveryError::Timeout,
        };
        failures += 1;
        if failures >= cfg.max_attempts {
            let _ = tx.send(Found::Failed { error, retry_in: None }).await;
            return;
        }
        let wait = cfg.backoff.delay(failures, rng.next_f64());
        if tx.send(Found::Failed { error, retry_in: Some(wait) }).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The servers as the source: connects the seed (a server of the fleet), subscribes to its
/// topology over that session, and reports each one it pushes until the session ends.
async fn watch_server(
    shared: &Arc<ClientShared>,
    seed: ServerAddr,
    cfg: &DiscoveryConfig,
    tx: mpsc::Sender<Found>,
) {
    let Some((slot, created)) = shared.add_slot(vec![seed.clone()]) else { return };
    // A seed this producer connected is dropped again unless the resolver takes it over,
    // also when the producer is aborted meanwhile (a refresh, the client closing).
    let mut guard = SeedGuard { shared: shared.clone(), slot: created.then(|| slot.clone()) };
    slot.demand();
    let addr = match super::wait_slot_ready(shared, &slot, cfg.timeout).await {
        Ok(addr) => addr,
        Err(e) => {
            let error = DiscoveryError::Unreachable(e.to_string());
            drop(guard);
            let _ = tx.send(Found::Failed { error, retry_in: None }).await;
            return;
        }
    };
    if created {
        if tx.send(Found::Seeded(seed)).await.is_err() {
            return;
        }
        guard.slot = None; // the resolver owns it now
    }
    let (topologies, mut rx) = watch::channel(None);
    if shared.cmds.send(ClientCmd::Watch { addr, topologies }).is_err() {
        return;
    }
    shared.wake();
    let mut first = true;
    loop {
        let changed = rx.changed();
        let r = if first {
            match tokio::time::timeout(cfg.timeout, changed).await {
                Ok(r) => r,
                Err(_) => {
                    let error = DiscoveryError::Timeout;
                    let _ = tx.send(Found::Failed { error, retry_in: None }).await;
                    return;
                }
            }
        } else {
            changed.await
        };
        if r.is_err() {
            let error = DiscoveryError::Unreachable(format!("the session to {addr} ended"));
            let _ = tx.send(Found::Failed { error, retry_in: None }).await;
            return;
        }
        first = false;
        let t = rx.borrow_and_update().clone();
        if let Some(t) = t
            && tx.send(Found::Topology(t)).await.is_err()
        {
            return;
        }
    }
}

/// Drops the slot of a seed its producer connected, unless handed over to the resolver.
struct SeedGuard {
    shared: Arc<ClientShared>,
    slot: Option<Arc<super::pool::Slot>>,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.drop_slot(&slot);
        }
    }
}

/// What a session watching its server's topology keeps: where to publish it.
pub(crate) type TopologyWatch = watch::Sender<Option<Topology>>;

/// The address a ready slot's session has.
pub(crate) fn session_addr(shared: &ClientShared, slot: &super::pool::Slot) -> Option<SocketAddr> {
    lock(&shared.view)
        .servers
        .iter()
        .filter(|s| s.manifest.is_some())
        .map(|s| s.conn.remote_addr())
        .find(|a| slot.matches(*a))
}
