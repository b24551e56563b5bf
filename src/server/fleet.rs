//! The fleet a server knows and serves to clients that ask (the built-in topology source):
//! itself, plus its static peers (`ServerConfig::peers`) or, with a Redis membership, the
//! members registered there. The server's own node always reflects its own state (eligible
//! until it drains), whatever Redis says of it.

use bytes::Bytes;

use crate::proto::topology::{ClusterNode, Topology};
use crate::proto::wire::rpc;

#[derive(Debug)]
pub(crate) struct Fleet {
    me: ClusterNode,
    statics: Vec<ClusterNode>,
    /// The members read from Redis last (with a membership).
    members: Option<Topology>,
    current: Topology,
    /// `current` as a topology frame.
    frame: Bytes,
    /// `current`, for the server's own fleet client (grain-to-grain calls).
    watch: tokio::sync::watch::Sender<Topology>,
}

impl Fleet {
    pub(crate) fn new(me: ClusterNode, statics: Vec<ClusterNode>) -> Self {
        let watch = tokio::sync::watch::Sender::new(Topology::new([]));
        let (members, current, frame) = (None, Topology::new([]), Bytes::new());
        let mut f = Self { me, statics, members, current, frame, watch };
        f.rebuild();
        f
    }

    /// Recomputes the topology; whether it changed.
    fn rebuild(&mut self) -> bool {
        let others = match &self.members {
            Some(t) => t.nodes().to_vec(),
            None => self.statics.clone(),
        };
        // `Topology::new` keeps the last node given per endpoint: ours.
        let next = Topology::new(others.into_iter().chain([self.me.clone()]));
        if next == self.current && !self.frame.is_empty() {
            return false;
        }
        let mut out = Vec::with_capacity(64 * next.nodes().len());
        rpc::encode_topology_head(&mut out);
        next.encode_into(&mut out);
        self.frame = Bytes::from(out);
        self.watch.send_replace(next.clone());
        self.current = next;
        true
    }

    /// The members read from Redis; whether the fleet changed.
    pub(crate) fn set_members(&mut self, members: Topology) -> bool {
        self.members = Some(members);
        self.rebuild()
    }

    /// The static peers changed; whether the fleet changed.
    pub(crate) fn set_statics(&mut self, statics: Vec<ClusterNode>) -> bool {
        self.statics = statics;
        self.rebuild()
    }

    /// This server takes new work (or drains); whether the fleet changed.
    pub(crate) fn set_eligible(&mut self, eligible: bool) -> bool {
        self.me.eligible = eligible;
        self.rebuild()
    }

    pub(crate) fn me(&self) -> &ClusterNode {
        &self.me
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.current
    }

    /// The topology now and at every change.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Topology> {
        self.watch.subscribe()
    }

    pub(crate) fn frame(&self) -> Bytes {
        self.frame.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(a: &str) -> ClusterNode {
        ClusterNode::new(a.parse::<crate::proto::addr::ServerAddr>().unwrap())
    }

    #[test]
    fn the_fleet_is_its_peers_or_members_and_always_itself_as_it_is() {
        let mut f = Fleet::new(node("10.0.0.1:1"), vec![node("10.0.0.2:1")]);
        assert_eq!(f.topology().nodes().len(), 2);
        assert!(!f.set_eligible(true), "unchanged");
        // Redis says the server is ineligible and names a third; the server knows better of
        // itself, and the members replace the static peers.
        let stale = ClusterNode { eligible: false, ..node("10.0.0.1:1") };
        assert!(f.set_members(Topology::new([stale, node("10.0.0.3:1")])));
        let eps: Vec<String> =
            f.topology().nodes().iter().map(|n| n.endpoint.to_string()).collect();
        assert_eq!(eps, ["10.0.0.1:1", "10.0.0.3:1"]);
        assert_eq!(f.topology().eligible_count(), 2);
        assert!(f.set_eligible(false));
        assert_eq!(f.topology().eligible_count(), 1);
        let frame = f.frame();
        let Ok(rpc::RpcFrame::Topology(body)) = rpc::decode_rpc(&frame) else { panic!() };
        assert_eq!(Topology::decode(body).as_ref(), Ok(f.topology()));
    }
}
