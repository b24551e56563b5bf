//! Choosing the server for a call (sans-IO): the candidates, the strategies and the routing
//! table snapshot.
//!
//! A [`RouteTable`] is an immutable snapshot of which connected, healthy servers host which
//! grain types at which interface version. It is rebuilt only when a server joins, leaves,
//! turns unhealthy or changes its manifest; routing a call reads it and allocates nothing.
//!
//! For one call: the candidates are the servers hosting the grain type with the caller's
//! interface and the called method as the caller knows it (its signature: the compatibility
//! rule is per method, so servers of another version of the interface serve the methods it did
//! not change); the reference's [`Affinity`] may fix the server; else the grain type's
//! [`Strategy`] picks one:
//!
//! - [`RoundRobin`]: each candidate in turn (one counter per grain type).
//! - [`ConsistentHash`]: weighted rendezvous hashing (highest random weight) of the grain's
//!   stable hash against each server's: every client that sees the same servers sends a grain
//!   to the same server, a server leaving moves only its own grains, and a server joining takes
//!   only the grains that now prefer it (1/(n+1) of them).
//! - [`LowestLatency`]: power of two choices on peak-EWMA latency × (pending + 1). Picking
//!   "the lowest" every time would herd all traffic onto one server.

mod strategy;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use smallvec::SmallVec;

pub use self::strategy::{
    ByPriority, Candidate, Candidates, ConsistentHash, Load, LowestLatency, PickContext,
    RoundRobin, Strategy, Tiered, Tiering, TypeState,
};
use super::ids::{GrainType, IdHasher, InterfaceId, MethodId, PeerId, ServerId, fmix64};
use super::manifest::Manifest;
use super::siphash::stable_hash;

/// A server's placement hash: the stable hash of its id, so a restarted server (same id) gets
/// its grains back, and every client computes the same value.
pub fn server_hash(id: &ServerId) -> u64 {
    stable_hash(id.0.as_bytes())
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

/// What a call routes by: the caller's view of the grain's interface and the method it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The grain type.
    pub grain_type: GrainType,
    /// The interface the caller uses.
    pub interface: InterfaceId,
    /// Its version (for errors: what serves a call is the method's signature).
    pub version: u8,
    /// The method called.
    pub method: MethodId,
    /// The method's signature hash as the caller knows it.
    pub signature: u64,
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
    /// Servers host the grain type's interface, none with the called method as the caller
    /// knows it. `theirs` is a version they host (equal to `ours` when the method changed
    /// without a version bump).
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

/// The hosts of some methods of a grain type (those hosted by exactly the same servers).
#[derive(Debug)]
struct Variant {
    uniform: bool,
    /// Where the best tier ends and whether its weights are equal.
    best: (usize, bool),
    candidates: Box<[Candidate]>,
    hashes: Box<[u64]>,
}

#[derive(Debug)]
struct TypeRoutes {
    strategy: Arc<dyn Strategy>,
    strategy_name: &'static str,
    state: TypeState,
    variants: SmallVec<[Variant; 1]>,
    /// Each hosted (interface, method, signature) and its variant's index, sorted.
    methods: Box<[(MethodKey, usize)]>,
    /// The interfaces and versions hosted (for a precise error).
    hosted: SmallVec<[(InterfaceId, u8); 2]>,
}

/// An interface's method as a caller knows it.
type MethodKey = (InterfaceId, MethodId, u64);

impl TypeRoutes {
    /// The variant serving `target`'s method, or why there is none.
    fn variant_of(&self, target: &Target) -> Result<&Variant, RouteError> {
        let key = (target.interface, target.method, target.signature);
        match self.methods.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Ok(&self.variants[self.methods[i].1]),
            Err(_) => {
                let mut versions =
                    self.hosted.iter().filter(|(i, _)| *i == target.interface).map(|(_, v)| *v);
                let ours = target.version;
                match versions.clone().find(|v| *v != ours).or_else(|| versions.next()) {
                    Some(theirs) => Err(RouteError::Incompatible { ours, theirs }),
                    None => Err(RouteError::NotHosted),
                }
            }
        }
    }

    /// Whether `interface` is hosted (in any version).
    fn implements(&self, interface: InterfaceId) -> bool {
        self.hosted.iter().any(|(i, _)| *i == interface)
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
    /// Seeds the strategies' random draws ([`PickContext::random`]).
    seed: u64,
}

impl Default for Strategies {
    fn default() -> Self {
        Self::new(Arc::new(ConsistentHash))
    }
}

impl Strategies {
    /// `default` for every grain type.
    pub fn new(default: Arc<dyn Strategy>) -> Self {
        Self { default, per_type: HashMap::new(), seed: 0x5eed_f011_5eed_f011 }
    }

    /// Seeds the strategies' random draws: with the same seed, the same picks.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
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
    types: HashMap<GrainType, TypeRoutes, BuildHasherDefault<IdHasher>>,
    /// Types hosted by servers that are shutting down (for a precise error).
    draining: Vec<GrainType>,
    servers: usize,
}

impl RouteTable {
    /// The table for `servers` (connected and healthy, with their manifests). Servers whose
    /// manifest says they are draining take no calls.
    pub fn build(servers: &[ServerEntry], strategies: &Strategies) -> Self {
        let mut types: HashMap<GrainType, TypeRoutes, BuildHasherDefault<IdHasher>> =
            HashMap::default();
        // Per grain type, each method (as callers know it) and the servers serving it.
        let mut serving: HashMap<GrainType, std::collections::BTreeMap<MethodKey, Vec<Candidate>>> =
            HashMap::new();
        let mut draining = Vec::new();
        for s in servers {
            let m = &s.manifest;
            if m.draining {
                draining.extend(m.grains.iter().map(|g| g.grain_type));
                continue;
            }
            let hash = server_hash(&m.server_id);
            let metadata = Arc::new(m.metadata.clone());
            for g in &m.grains {
                let t = types.entry(g.grain_type).or_insert_with(|| TypeRoutes {
                    strategy: strategies.get(g.grain_type).clone(),
                    strategy_name: strategies.get(g.grain_type).name(),
                    state: TypeState::seeded(fmix64(strategies.seed ^ g.grain_type.0 as u64)),
                    variants: SmallVec::new(),
                    methods: Box::default(),
                    hosted: SmallVec::new(),
                });
                if !t.hosted.contains(&(g.interface, g.version)) {
                    t.hosted.push((g.interface, g.version));
                }
                let mut candidate = Candidate {
                    server: m.server_id.clone(),
                    peer: s.peer,
                    hash,
                    weight: m.weight.max(1),
                    type_index: g.index,
                    priority: m.priority,
                    metadata: metadata.clone(),
                    tier: 0,
                    load: s.load.clone(),
                };
                candidate.tier = t.strategy.tier(&candidate);
                let methods = serving.entry(g.grain_type).or_default();
                for m in &g.methods {
                    let list = methods.entry((g.interface, m.id, m.signature)).or_default();
                    // A server hosting two versions that both have the method serves it once.
                    if !list.iter().any(|c| c.peer == s.peer) {
                        list.push(candidate.clone());
                    }
                }
            }
        }
        for (ty, methods) in serving {
            let Some(t) = types.get_mut(&ty) else { continue };
            // Methods served by exactly the same servers (and entries) share one variant.
            let mut by_hosts: HashMap<Vec<(PeerId, u32)>, usize> = HashMap::new();
            let mut index = Vec::with_capacity(methods.len());
            for (key, mut candidates) in methods {
                // By tier (the strategy's; a prefix is the best), then by server id.
                candidates
                    .sort_by(|a, b| (a.tier, &a.server, a.peer).cmp(&(b.tier, &b.server, b.peer)));
                let hosts = candidates.iter().map(|c| (c.peer, c.type_index)).collect();
                let v = *by_hosts.entry(hosts).or_insert_with(|| {
                    t.variants.push(Variant {
                        uniform: candidates.iter().all(|c| c.weight == candidates[0].weight),
                        best: strategy::best_tier_of(&candidates),
                        hashes: candidates.iter().map(|c| c.hash).collect(),
                        candidates: candidates.into_boxed_slice(),
                    });
                    t.variants.len() - 1
                });
                index.push((key, v));
            }
            // The map iterated in key order: sorted for the binary search.
            t.methods = index.into_boxed_slice();
        }
        Self { types, draining, servers: servers.len() }
    }

    /// How many servers the table routes to.
    pub fn server_count(&self) -> usize {
        self.servers
    }

    /// Whether a server routed to hosts `interface` for `grain_type` grains (in any version):
    /// what casting a reference to another interface is checked against.
    pub fn implements(&self, grain_type: GrainType, interface: InterfaceId) -> bool {
        self.types.get(&grain_type).is_some_and(|t| t.implements(interface))
    }

    /// The candidates for `target` (empty when none).
    pub fn candidates(&self, target: &Target) -> Candidates<'_> {
        self.types.get(&target.grain_type).and_then(|t| t.variant_of(target).ok()).map_or(
            Candidates { list: &[], hashes: &[], uniform: true, best: (0, true) },
            |v| Candidates {
                list: &v.candidates,
                hashes: &v.hashes,
                uniform: v.uniform,
                best: v.best,
            },
        )
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
        let (t, v) = self.variant(target, affinity)?;
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
                let candidates =
                    Candidates { list, hashes: &v.hashes, uniform: v.uniform, best: v.best };
                let i = t.strategy.pick(&ctx, candidates);
                Ok(decision(if i < list.len() { i } else { 0 }, fallback))
            }
            Some(skip) => {
                let i = Self::pick_excluding(t, v, &ctx, skip)?;
                Ok(decision(i, fallback))
            }
        }
    }

    /// The grain type's routes and the hosts with the caller's interface, or why there are
    /// none.
    fn variant(
        &self,
        target: &Target,
        affinity: &Affinity,
    ) -> Result<(&TypeRoutes, &Variant), RouteError> {
        let unavailable = |s: &ServerId| RouteError::Unavailable(s.clone());
        let Some(t) = self.types.get(&target.grain_type) else {
            return Err(match affinity {
                Affinity::Required(s) => unavailable(s),
                _ if self.servers == 0 => RouteError::NoServers,
                _ if self.draining.contains(&target.grain_type) => RouteError::Draining,
                _ => RouteError::NotHosted,
            });
        };
        match (t.variant_of(target), affinity) {
            (Ok(v), _) => Ok((t, v)),
            (Err(_), Affinity::Required(s)) => Err(unavailable(s)),
            (Err(e), _) => Err(e),
        }
    }

    /// The strategy's pick among the variant's candidates but `skip` (a retry elsewhere): a
    /// small copy on this rare path. The index is into the whole candidate list.
    fn pick_excluding(
        t: &TypeRoutes,
        v: &Variant,
        ctx: &PickContext<'_>,
        skip: usize,
    ) -> Result<usize, RouteError> {
        let list = &v.candidates;
        let rest: Vec<Candidate> =
            list.iter().enumerate().filter(|&(i, _)| i != skip).map(|(_, c)| c.clone()).collect();
        if rest.is_empty() {
            return Err(RouteError::NotHosted);
        }
        let hashes: Vec<u64> = rest.iter().map(|c| c.hash).collect();
        let candidates = Candidates::scan(&rest, &hashes);
        let i = t.strategy.pick(ctx, candidates).min(rest.len() - 1);
        let peer = rest[i].peer;
        Ok(list.iter().position(|c| c.peer == peer).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;
