//! A fleet as a value: its nodes (where each server is reached, whether it takes new work, its
//! priority and metadata) and what changed between two versions of it. Topology sources produce
//! these; the client connects the eligible nodes it does not have and drains the ones that left
//! or became ineligible.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::addr::ServerAddr;
use super::config::duration;
use super::manifest::Metadata;
use super::siphash::stable_hash;
use super::wire::WireError;

/// The most nodes a topology on the wire may hold (a larger one is refused undecoded).
pub const MAX_NODES: usize = 4096;

/// One server of a fleet, as a topology source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Where clients reach it (its identity in a topology).
    pub endpoint: ServerAddr,
    /// Whether it takes new work; an ineligible node is drained.
    pub eligible: bool,
    /// Lower is preferred (the default node order is by priority, ascending).
    pub priority: u32,
    /// What it says of itself (datacenter, zone, build, ...).
    pub metadata: Metadata,
}

impl ClusterNode {
    /// An eligible node at `endpoint` with priority 0 and no metadata.
    pub fn new(endpoint: impl Into<ServerAddr>) -> Self {
        Self { endpoint: endpoint.into(), eligible: true, priority: 0, metadata: Metadata::new() }
    }
}

/// A fleet's nodes: one per endpoint, in a canonical order (by priority, then endpoint), with
/// its hash computed once, so comparing two topologies (a source reporting the same fleet
/// again) costs a hash compare when they differ and one pass when they are equal.
#[derive(Debug, Clone, Eq)]
pub struct Topology {
    nodes: Vec<ClusterNode>,
    hash: u64,
    eligible: usize,
}

/// What changed from one topology to the next, by endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyDiff {
    /// Nodes that are new.
    pub added: Vec<ClusterNode>,
    /// Nodes that are gone.
    pub removed: Vec<ClusterNode>,
    /// Nodes whose eligibility, priority or metadata changed: (before, after).
    pub changed: Vec<(ClusterNode, ClusterNode)>,
}

impl TopologyDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Topology {
    /// A topology of `nodes`; of several nodes with one endpoint, the last one given counts.
    pub fn new(nodes: impl IntoIterator<Item = ClusterNode>) -> Self {
        let by_endpoint: BTreeMap<String, ClusterNode> =
            nodes.into_iter().map(|n| (n.endpoint.to_string(), n)).collect();
        let mut nodes: Vec<ClusterNode> = by_endpoint.into_values().collect();
        nodes.sort_by(|a, b| {
            (a.priority, a.endpoint.to_string()).cmp(&(b.priority, b.endpoint.to_string()))
        });
        let mut h = TopologyHasher(Vec::new());
        nodes.hash(&mut h);
        let eligible = nodes.iter().filter(|n| n.eligible).count();
        Self { hash: stable_hash(&h.0), nodes, eligible }
    }

    /// The nodes, by priority then endpoint.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The eligible nodes, in the same order.
    pub fn eligible(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.eligible)
    }

    /// How many nodes are eligible.
    pub fn eligible_count(&self) -> usize {
        self.eligible
    }

    /// The node at `endpoint`.
    pub fn get(&self, endpoint: &ServerAddr) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.endpoint == *endpoint)
    }

    /// Its hash (the same in every process of one build and platform), computed once.
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }

    /// What changed from `self` to `next`.
    pub fn diff(&self, next: &Topology) -> TopologyDiff {
        let mut d = TopologyDiff::default();
        if self == next {
            return d;
        }
        for n in &next.nodes {
            match self.get(&n.endpoint) {
                None => d.added.push(n.clone()),
                Some(old) if old != n => d.changed.push((old.clone(), n.clone())),
                Some(_) => {}
            }
        }
        d.removed =
            self.nodes.iter().filter(|n| next.get(&n.endpoint).is_none()).cloned().collect();
        d
    }
}

impl PartialEq for Topology {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.nodes == other.nodes
    }
}

impl Hash for Topology {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Collects what `Hash` feeds it, for one SipHash of the whole topology with our fixed keys
/// (std's `DefaultHasher` is randomly keyed per process).
struct TopologyHasher(Vec<u8>);

impl Hasher for TopologyHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

impl Topology {
    /// Its payload on the wire (see `rpc::encode_topology_head`): the nodes, postcard.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Serializing plain structs into a Vec cannot fail.
        let bytes = postcard::to_allocvec(&self.nodes).expect("plain structs always serialize");
        out.extend_from_slice(&bytes);
    }

    /// Decodes a topology frame's payload: at most [`MAX_NODES`] nodes, in any order.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let bad = |_| WireError::OutOfRange { field: "topology", value: payload.len() as u64 };
        let nodes: Vec<ClusterNode> = postcard::from_bytes(payload).map_err(bad)?;
        if nodes.len() > MAX_NODES {
            return Err(WireError::OutOfRange {
                field: "topology nodes",
                value: nodes.len() as u64,
            });
        }
        Ok(Self::new(nodes))
    }
}

/// Exponential backoff with jitter: the wait after the `n`th consecutive failure is
/// `min(initial × factor^(n-1), max)`, then moved by up to ±`jitter` of itself at random.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The wait after the first failure. Default 100 ms.
    #[serde(with = "duration")]
    pub initial: Duration,
    /// The longest wait (before jitter). Default 5 s.
    #[serde(with = "duration")]
    pub max: Duration,
    /// Growth per failure. Default 2.
    pub factor: f64,
    /// The random part, a fraction of the wait: 0.1 (the default) waits 90 % to 110 %.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2.0,
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// The wait after the `failures`th consecutive failure (1 for the first), given `draw`, a
    /// uniform random number in `[0, 1)` (0.5 is the wait without jitter).
    pub fn delay(&self, failures: u32, draw: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let base = base.min(self.max.as_secs_f64());
        let spread = self.jitter.clamp(0.0, 1.0) * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        Duration::try_from_secs_f64(base * (1.0 + spread)).unwrap_or(self.max)
    }

    /// Checks the ranges (`field` names the struct in the message).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err("backoff.initial must be non-zero and at most backoff.max");
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err("backoff.factor must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("backoff.jitter must be within 0..=1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::MetaValue;

    fn node(addr: &str, priority: u32, eligible: bool) -> ClusterNode {
        ClusterNode { eligible, priority, ..ClusterNode::new(addr.parse::<ServerAddr>().unwrap()) }
    }

    #[test]
    fn topologies_are_values_with_a_canonical_order_and_a_diff() {
        let a = Topology::new([node("10.0.0.2:1", 1, true), node("10.0.0.1:1", 0, false)]);
        let same = Topology::new([node("10.0.0.1:1", 0, false), node("10.0.0.2:1", 1, true)]);
        assert_eq!(a, same, "order given does not matter");
        assert_eq!(a.stable_hash(), same.stable_hash());
        assert!(a.diff(&same).is_empty());
        assert_eq!(a.eligible_count(), 1);
        let order: Vec<String> = a.nodes().iter().map(|n| n.endpoint.to_string()).collect();
        assert_eq!(order, ["10.0.0.1:1", "10.0.0.2:1"], "by priority, then endpoint");

        let mut dc = node("10.0.0.2:1", 1, true);
        dc.metadata.insert("datacenter".into(), MetaValue::from("eu"));
        let b = Topology::new([
            node("10.0.0.1:1", 0, true),
            dc.clone(),
            node("game.example:1", 0, true),
        ]);
        assert_ne!(a, b);
        assert_ne!(a.stable_hash(), b.stable_hash());
        let d = a.diff(&b);
        assert_eq!(d.added, [node("game.example:1", 0, true)]);
        assert!(d.removed.is_empty());
        assert_eq!(d.changed.len(), 2, "eligibility and metadata: {d:?}");
        let d = b.diff(&a);
        assert_eq!(d.removed, [node("game.example:1", 0, true)]);
        // The same endpoint twice: the last one counts.
        let dup = Topology::new([node("10.0.0.1:1", 0, true), node("10.0.0.1:1", 3, false)]);
        assert_eq!(dup.nodes(), [node("10.0.0.1:1", 3, false)]);
    }

    #[test]
    fn topologies_travel_and_bad_payloads_are_typed_errors() {
        let mut dc = node("game.example:7777", 2, true);
        dc.metadata.insert("zone".into(), MetaValue::Int(3));
        let t = Topology::new([node("10.0.0.1:1", 0, false), dc]);
        let mut out = Vec::new();
        t.encode_into(&mut out);
        assert_eq!(Topology::decode(&out), Ok(t));
        assert!(Topology::decode(&out[..out.len() - 1]).is_err());
        assert!(Topology::decode(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err(), "huge length");
        let many: Vec<ClusterNode> = (0..=MAX_NODES)
            .map(|i| node(&format!("10.0.{}.{}:1", i / 256, i % 256), 0, true))
            .collect();
        let bytes = postcard::to_allocvec(&many).unwrap();
        assert!(matches!(
            Topology::decode(&bytes),
            Err(WireError::OutOfRange { field: "topology nodes", .. })
        ));
    }

    #[test]
    fn backoff_grows_by_its_factor_up_to_its_cap_with_bounded_jitter() {
        let b = Backoff::default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert_eq!(ms(b.delay(1, 0.5)).round(), 100.0);
        assert_eq!(ms(b.delay(2, 0.5)).round(), 200.0);
        assert_eq!(ms(b.delay(4, 0.5)).round(), 800.0);
        assert_eq!(ms(b.delay(20, 0.5)).round(), 5000.0, "capped");
        assert_eq!(ms(b.delay(1, 0.0)).round(), 90.0, "-10 %");
        assert_eq!(ms(b.delay(1, 0.999_999)).round(), 110.0, "+10 %");
        assert_eq!(ms(b.delay(u32::MAX, 0.5)).round(), 5000.0, "no overflow");
        assert!(b.validate().is_ok());
        assert!(Backoff { factor: 0.5, ..b }.validate().is_err());
        assert!(Backoff { jitter: 2.0, ..b }.validate().is_err());
        assert!(Backoff { initial: Duration::ZERO, ..b }.validate().is_err());
    }
}
