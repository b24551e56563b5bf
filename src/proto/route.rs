//! Choosing the server for a call (sans-IO): the candidates, the strategies and the routing
//! table snapshot.
//!
//! A [`RouteTable`] is an immutable snapshot of which connected, healthy servers host which
//! grain types at which interface version. It is rebuilt only when a server joins, leaves,
//! turns unhealthy or changes its manifest; routing a call reads it and allocates nothing.
//!
//! For one call: the candidates are the servers hosting the grain type with the caller's
//! interface, version and contract; the reference's [`Affinity`] may fix the server; else the
//! grain type's [`Strategy`] picks one:
//!
//! - [`RoundRobin`]: each candidate in turn (one counter per grain type).
//! - [`ConsistentHash`]: weighted rendezvous hashing (highest random weight) of the grain's
//!   stable hash against each server's: every client that sees the same servers sends a grain
//!   to the same server, a server leaving moves only its own grains, and a server joining takes
//!   only the grains that now prefer it (1/(n+1) of them).
//! - [`LowestLatency`]: power of two choices on peak-EWMA latency × (pending + 1). Picking
//!   "the lowest" every time would herd all traffic onto one server.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use super::ids::{GrainType, InterfaceId, PeerId, ServerId};
use super::manifest::Manifest;
use super::siphash::stable_hash;

/// MurmurHash3's 64-bit finalizer: a fast, well-mixing bijection.
#[inline]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A server's placement hash: the stable hash of its id, so a restarted server (same id) gets
/// its grains back, and every client computes the same value.
pub fn server_hash(id: &ServerId) -> u64 {
    stable_hash(id.0.as_bytes())
}

/// A server's rendezvous score for a grain: a uniform 64-bit value. The folded 128-bit
/// product of the two hashes (each offset by a constant), wyhash's mixing step: one multiply,
/// half the cost of a full finalizer in the scan over every candidate.
#[inline]
fn score(grain_hash: u64, server_hash: u64) -> u64 {
    let r = u128::from(grain_hash ^ 0xa076_1d64_78bd_642f)
        * u128::from(server_hash ^ 0xe703_7ed1_a0b4_28db);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Weighted rendezvous score `-w / ln(u)` with `u` in (0, 1) from the uniform score
/// (Thaler & Ravishankar's logarithmic method): a server's expected share is `w / Σw`.
#[inline]
fn weighted_score(uniform: u64, weight: u32) -> f64 {
    let u = ((uniform >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// What a server's callers observe of it, shared with the routing snapshot: calls pending and
/// the peak-EWMA of their latency. Written by the client's task, read by pickers.
#[derive(Debug)]
pub struct Load {
    pending: AtomicU32,
    /// Peak-EWMA latency in nanoseconds.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds on the writer's clock.
    stamp_ns: AtomicU64,
}

impl Load {
    /// A load with no calls and `initial` as the latency estimate (e.g. the handshake's RTT).
    pub fn new(initial: Duration) -> Self {
        Self {
            pending: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(initial.as_nanos().clamp(1, u128::from(u64::MAX)) as u64),
            stamp_ns: AtomicU64::new(0),
        }
    }

    /// A call was sent to the server.
    pub fn started(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended; `latency` is its round trip when it completed with a response. `now_ns`
    /// is the writer's clock and `decay` the EWMA's time constant.
    pub fn finished(&self, latency: Option<Duration>, now_ns: u64, decay: Duration) {
        // Saturating: a call counted before the load existed never drives it below zero.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(1)));
        let Some(latency) = latency else { return };
        let sample = latency.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let next = if sample >= prev {
            sample // peak-sensitive: a slower observation takes effect at once
        } else {
            let dt = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)) as f64;
            let w = (-dt / decay.as_nanos().max(1) as f64).exp();
            (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        self.ewma_ns.store(next.max(1), Ordering::Relaxed);
        self.stamp_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Calls pending on the server.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency estimate.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// Latency × (pending + 1): the expected wait of one more call.
    pub fn cost(&self) -> f64 {
        self.ewma_ns.load(Ordering::Relaxed) as f64 * f64::from(self.pending() + 1)
    }
}

/// One server a call can go to.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The server's id (from its handshake).
    pub server: ServerId,
    /// Its session.
    pub peer: PeerId,
    /// Its placement hash ([`server_hash`]).
    pub hash: u64,
    /// Its placement weight (from its manifest; at least 1).
    pub weight: u32,
    /// The grain type's index on that server's wire.
    pub type_index: u32,
    /// What callers observe of it.
    pub load: Arc<Load>,
}

/// The candidates of one call: connected, healthy servers hosting the grain type with the
/// caller's interface, version and contract, sorted by server id. Never empty when a strategy
/// sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    list: &'a [Candidate],
    /// The candidates' placement hashes, contiguous (the rendezvous scan reads only these).
    hashes: &'a [u64],
    uniform: bool,
}

impl<'a> Candidates<'a> {
    /// The candidates as a slice.
    pub fn as_slice(&self) -> &'a [Candidate] {
        self.list
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none (never, when passed to a strategy).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether every candidate has the same weight.
    pub fn uniform_weights(&self) -> bool {
        self.uniform
    }

    /// The candidates' placement hashes, in the same order.
    pub fn hashes(&self) -> &'a [u64] {
        self.hashes
    }
}

/// Per grain type state that lives as long as the routing snapshot.
#[derive(Debug, Default)]
pub struct TypeState {
    sequence: AtomicU64,
}

/// What a strategy knows about the call it routes.
#[derive(Debug)]
pub struct PickContext<'a> {
    /// The grain's type.
    pub grain_type: GrainType,
    /// The grain's stable hash ([`GrainId::stable_hash`](super::ids::GrainId::stable_hash)).
    pub grain_hash: u64,
    state: &'a TypeState,
}

impl PickContext<'_> {
    /// The next number of a counter kept per grain type (for round-robin strategies).
    pub fn next_sequence(&self) -> u64 {
        self.state.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// 64 random bits from a per-thread generator (deterministic per thread: seeded with a
    /// constant, so a single-threaded simulation repeats exactly).
    pub fn random(&self) -> u64 {
        thread_rng()
    }
}

fn thread_rng() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0x5eed_f011_5eed_f011_u64) };
    }
    STATE.with(|s| {
        // SplitMix64.
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Chooses one server among a call's candidates. Implement it for a custom routing policy and
/// set it with the client builder's `strategy` / `strategy_for`.
///
/// `pick` runs on the calling thread for every call: it must be fast and must not block.
pub trait Strategy: fmt::Debug + Send + Sync + 'static {
    /// A short name, shown in routing traces.
    fn name(&self) -> &'static str;

    /// The index in `candidates` (never empty) of the server for this call. An index out of
    /// range is treated as 0.
    fn pick(&self, call: &PickContext<'_>, candidates: Candidates<'_>) -> usize;
}

/// Each candidate in turn (one counter per grain type).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&self, call: &PickContext<'_>, candidates: Candidates<'_>) -> usize {
        (call.next_sequence() % candidates.len() as u64) as usize
    }
}

/// Consistent placement: weighted rendezvous hashing of the grain's stable hash against each
/// candidate's server hash. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsistentHash;

impl ConsistentHash {
    /// The index of the rendezvous winner for `grain_hash` among `candidates`.
    pub fn place(grain_hash: u64, candidates: Candidates<'_>) -> usize {
        let list = candidates.as_slice();
        let mut best = 0;
        if candidates.uniform_weights() {
            // -w/ln(u) is increasing in u: with equal weights the largest raw score wins.
            let mut top = 0u64;
            for (i, &h) in candidates.hashes().iter().enumerate() {
                // Branch-free: scores are random, a branch would mispredict on every new top.
                let s = score(grain_hash, h);
                let better = s > top;
                top = if better { s } else { top };
                best = if better { i } else { best };
            }
        } else {
            let mut top = f64::NEG_INFINITY;
            for (i, c) in list.iter().enumerate() {
                let s = weighted_score(score(grain_hash, c.hash), c.weight);
                if s > top {
                    top = s;
                    best = i;
                }
            }
        }
        best
    }
}

impl Strategy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent-hash"
    }

    fn pick(&self, call: &PickContext<'_>, candidates: Candidates<'_>) -> usize {
        Self::place(call.grain_hash, candidates)
    }
}

/// Power of two choices on peak-EWMA latency × (pending + 1): two distinct random candidates,
/// the cheaper wins (ties go to the lower pending count). Reacts to a slow server within one
/// observation and never herds traffic onto one server.
#[derive(Debug, Clone, Copy, Default)]
pub struct LowestLatency;

impl Strategy for LowestLatency {
    fn name(&self) -> &'static str {
        "lowest-latency"
    }

    fn pick(&self, call: &PickContext<'_>, candidates: Candidates<'_>) -> usize {
        let n = candidates.len() as u64;
        if n == 1 {
            return 0;
        }
        let r = call.random();
        let a = ((u128::from(r as u32) * u128::from(n)) >> 32) as u64;
        // A second, distinct index: an offset in 1..n from a.
        let off = 1 + ((u128::from(r >> 32) * u128::from(n - 1)) >> 32) as u64;
        let b = (a + off) % n;
        let list = candidates.as_slice();
        let (la, lb) = (&list[a as usize].load, &list[b as usize].load);
        let (ca, cb) = (la.cost(), lb.cost());
        if cb < ca || (cb == ca && lb.pending() < la.pending()) { b as usize } else { a as usize }
    }
}

/// Which server a grain reference's calls must or should go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Whatever the grain type's strategy picks.
    #[default]
    None,
    /// This server while it is connected, healthy and hosts the type; else the strategy.
    Preferred(ServerId),
    /// This server, or the call fails with `CallError::ServerUnavailable`.
    Required(ServerId),
}

/// What a call routes by: the caller's view of the grain's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The grain type.
    pub grain_type: GrainType,
    /// The interface the caller uses.
    pub interface: InterfaceId,
    /// Its version.
    pub version: u8,
    /// Its contract hash.
    pub contract: u64,
}

/// Why a server was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The only candidate.
    Only,
    /// The reference requires this server.
    Required,
    /// The reference prefers this server and it is available.
    Preferred,
    /// The reference prefers a server that is not available: the strategy chose.
    PreferredUnavailable,
    /// The strategy chose.
    Strategy,
}

/// A routing decision.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The chosen server.
    pub candidate: &'a Candidate,
    /// How many candidates there were.
    pub candidates: usize,
    /// The strategy of the grain type.
    pub strategy: &'static str,
    /// Why this one.
    pub reason: Reason,
}

/// Why a call could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No server is connected.
    NoServers,
    /// No connected server hosts the grain type.
    NotHosted,
    /// Servers host the grain type, none with the caller's interface version and contract.
    /// `theirs` is a version they host (equal to `ours` when only the contract differs).
    Incompatible {
        /// The caller's version.
        ours: u8,
        /// A version the servers host.
        theirs: u8,
    },
    /// The required server is not connected, not healthy or does not host the type.
    Unavailable(ServerId),
    /// Only servers that are shutting down host the type.
    Draining,
}

/// The hosts of one grain type with one interface, version and contract.
#[derive(Debug)]
struct Variant {
    interface: InterfaceId,
    version: u8,
    contract: u64,
    uniform: bool,
    candidates: Box<[Candidate]>,
    hashes: Box<[u64]>,
}

#[derive(Debug)]
struct TypeRoutes {
    strategy: Arc<dyn Strategy>,
    strategy_name: &'static str,
    state: TypeState,
    variants: SmallVec<[Variant; 1]>,
}

/// `GrainType` is already a hash: use it as is.
#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// One server as the table builder sees it.
#[derive(Debug, Clone)]
pub struct ServerEntry {
    /// Its session.
    pub peer: PeerId,
    /// What it hosts (and its id and weight).
    pub manifest: Arc<Manifest>,
    /// What callers observe of it.
    pub load: Arc<Load>,
}

/// Strategies per grain type, with a default.
#[derive(Debug, Clone)]
pub struct Strategies {
    default: Arc<dyn Strategy>,
    per_type: HashMap<GrainType, Arc<dyn Strategy>>,
}

impl Default for Strategies {
    fn default() -> Self {
        Self::new(Arc::new(ConsistentHash))
    }
}

impl Strategies {
    /// `default` for every grain type.
    pub fn new(default: Arc<dyn Strategy>) -> Self {
        Self { default, per_type: HashMap::new() }
    }

    /// Sets the default strategy.
    pub fn set_default(&mut self, strategy: Arc<dyn Strategy>) {
        self.default = strategy;
    }

    /// Sets `grain_type`'s strategy.
    pub fn set(&mut self, grain_type: GrainType, strategy: Arc<dyn Strategy>) {
        self.per_type.insert(grain_type, strategy);
    }

    /// The strategy of `grain_type`.
    pub fn get(&self, grain_type: GrainType) -> &Arc<dyn Strategy> {
        self.per_type.get(&grain_type).unwrap_or(&self.default)
    }
}

/// The immutable routing snapshot. See the [module docs](self).
#[derive(Debug, Default)]
pub struct RouteTable {
    types: HashMap<GrainType, TypeRoutes, BuildHasherDefault<IdentityHasher>>,
    /// Types hosted by servers that are shutting down (for a precise error).
    draining: Vec<GrainType>,
    servers: usize,
}

impl RouteTable {
    /// The table for `servers` (connected and healthy, with their manifests). Servers whose
    /// manifest says they are draining take no calls.
    pub fn build(servers: &[ServerEntry], strategies: &Strategies) -> Self {
        let mut types: HashMap<GrainType, TypeRoutes, BuildHasherDefault<IdentityHasher>> =
            HashMap::default();
        let mut draining = Vec::new();
        for s in servers {
            let m = &s.manifest;
            if m.draining {
                draining.extend(m.grains.iter().map(|g| g.grain_type));
                continue;
            }
            let hash = server_hash(&m.server_id);
            for g in &m.grains {
                let t = types.entry(g.grain_type).or_insert_with(|| TypeRoutes {
                    strategy: strategies.get(g.grain_type).clone(),
                    strategy_name: strategies.get(g.grain_type).name(),
                    state: TypeState::default(),
                    variants: SmallVec::new(),
                });
                let candidate = Candidate {
                    server: m.server_id.clone(),
                    peer: s.peer,
                    hash,
                    weight: m.weight.max(1),
                    type_index: g.index,
                    load: s.load.clone(),
                };
                match t.variants.iter_mut().find(|v| {
                    v.interface == g.interface && v.version == g.version && v.contract == g.contract
                }) {
                    Some(v) => {
                        let mut list = std::mem::take(&mut v.candidates).into_vec();
                        list.push(candidate);
                        v.candidates = list.into_boxed_slice();
                    }
                    None => t.variants.push(Variant {
                        interface: g.interface,
                        version: g.version,
                        contract: g.contract,
                        uniform: true,
                        candidates: vec![candidate].into_boxed_slice(),
                        hashes: Box::default(),
                    }),
                }
            }
        }
        for t in types.values_mut() {
            for v in &mut t.variants {
                v.candidates.sort_by(|a, b| a.server.cmp(&b.server).then(a.peer.cmp(&b.peer)));
                v.uniform = v.candidates.iter().all(|c| c.weight == v.candidates[0].weight);
                v.hashes = v.candidates.iter().map(|c| c.hash).collect();
            }
        }
        Self { types, draining, servers: servers.len() }
    }

    /// How many servers the table routes to.
    pub fn server_count(&self) -> usize {
        self.servers
    }

    /// The candidates for `target` (empty when none).
    pub fn candidates(&self, target: &Target) -> Candidates<'_> {
        self.types
            .get(&target.grain_type)
            .and_then(|t| t.variants.iter().find(|v| v.matches(target)))
            .map_or(Candidates { list: &[], hashes: &[], uniform: true }, |v| Candidates {
                list: &v.candidates,
                hashes: &v.hashes,
                uniform: v.uniform,
            })
    }

    /// Routes one call: see the [module docs](self).
    pub fn route(
        &self,
        target: &Target,
        grain_hash: u64,
        affinity: &Affinity,
    ) -> Result<Decision<'_>, RouteError> {
        self.route_excluding(target, grain_hash, affinity, None)
    }

    /// Like [`route`](Self::route), never choosing `exclude` (a retry elsewhere).
    pub fn route_excluding(
        &self,
        target: &Target,
        grain_hash: u64,
        affinity: &Affinity,
        exclude: Option<PeerId>,
    ) -> Result<Decision<'_>, RouteError> {
        let unavailable = |s: &ServerId| RouteError::Unavailable(s.clone());
        let Some(t) = self.types.get(&target.grain_type) else {
            return Err(match affinity {
                Affinity::Required(s) => unavailable(s),
                _ if self.servers == 0 => RouteError::NoServers,
                _ if self.draining.contains(&target.grain_type) => RouteError::Draining,
                _ => RouteError::NotHosted,
            });
        };
        let Some(v) = t.variants.iter().find(|v| v.matches(target)) else {
            if let Affinity::Required(s) = affinity {
                return Err(unavailable(s));
            }
            return Err(match t.variants.iter().find(|v| v.interface == target.interface) {
                Some(v) => RouteError::Incompatible { ours: target.version, theirs: v.version },
                None => RouteError::NotHosted,
            });
        };
        let list: &[Candidate] = &v.candidates;
        let decision = |i: usize, reason| Decision {
            candidate: &list[i],
            candidates: list.len(),
            strategy: t.strategy_name,
            reason,
        };
        let usable = |c: &Candidate| Some(c.peer) != exclude;
        match affinity {
            Affinity::Required(s) => {
                return list
                    .iter()
                    .position(|c| c.server == *s && usable(c))
                    .map(|i| decision(i, Reason::Required))
                    .ok_or_else(|| unavailable(s));
            }
            Affinity::Preferred(s) => {
                if let Some(i) = list.iter().position(|c| c.server == *s && usable(c)) {
                    return Ok(decision(i, Reason::Preferred));
                }
            }
            Affinity::None => {}
        }
        let fallback = if matches!(affinity, Affinity::Preferred(_)) {
            Reason::PreferredUnavailable
        } else {
            Reason::Strategy
        };
        let ctx = PickContext { grain_type: target.grain_type, grain_hash, state: &t.state };
        match exclude.and_then(|p| list.iter().position(|c| c.peer == p)) {
            None if list.len() == 1 => Ok(decision(0, Reason::Only)),
            None => {
                let candidates = Candidates { list, hashes: &v.hashes, uniform: v.uniform };
                let i = t.strategy.pick(&ctx, candidates);
                Ok(decision(if i < list.len() { i } else { 0 }, fallback))
            }
            Some(skip) => {
                // Pick among the others: a small copy on this rare path (a retry).
                let rest: Vec<Candidate> = list
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != skip)
                    .map(|(_, c)| c.clone())
                    .collect();
                if rest.is_empty() {
                    return Err(RouteError::NotHosted);
                }
                let uniform = rest.iter().all(|c| c.weight == rest[0].weight);
                let hashes: Vec<u64> = rest.iter().map(|c| c.hash).collect();
                let candidates = Candidates { list: &rest, hashes: &hashes, uniform };
                let i = t.strategy.pick(&ctx, candidates).min(rest.len() - 1);
                let peer = rest[i].peer;
                let j = list.iter().position(|c| c.peer == peer).unwrap_or(0);
                Ok(decision(j, fallback))
            }
        }
    }
}

impl Variant {
    fn matches(&self, t: &Target) -> bool {
        self.interface == t.interface && self.version == t.version && self.contract == t.contract
    }
}

#[cfg(test)]
mod tests;
