//! What a server hosts: its id and, per grain type, the interface, its version and contract
//! hash, and the index requests use for it on the wire. Sent by the server at the start of
//! every session (and again when it changes).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ids::{GrainType, InterfaceId, MethodId, ServerId};
use super::wire::{WireError, rpc};

/// One hosted grain type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedGrain {
    /// The grain type's name.
    pub name: Arc<str>,
    /// Its id (the stable hash of the name).
    pub grain_type: GrainType,
    /// The interface it implements.
    pub interface: InterfaceId,
    /// The interface's version.
    pub version: u8,
    /// Hash of the interface's methods and signatures, to catch a contract that changed
    /// without a version bump.
    pub contract: u64,
    /// The number requests use for this interface of the type on the wire (unique within the
    /// server).
    pub index: u32,
    /// Its methods and their signatures' hashes: a caller is served here for a method whose
    /// signature it knows the same (see [`Manifest::serving`]).
    pub methods: Vec<HostedMethod>,
}

/// One method of a hosted interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedMethod {
    /// The method's id.
    pub id: MethodId,
    /// Its signature's hash ([`MethodInfo::signature`](crate::interface::MethodInfo)).
    pub signature: u64,
}

impl HostedGrain {
    /// Whether it has `method` with `signature`.
    pub fn has(&self, method: MethodId, signature: u64) -> bool {
        self.methods.iter().any(|m| m.id == method && m.signature == signature)
    }
}

/// A small typed value of a server's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MetaValue {
    /// Text (a datacenter, a zone, a build).
    Str(Arc<str>),
    /// A number.
    Int(i64),
    /// A flag.
    Bool(bool),
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        Self::Str(s.into())
    }
}

impl From<i64> for MetaValue {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<bool> for MetaValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl std::fmt::Display for MetaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::Int(n) => n.fmt(f),
            Self::Bool(b) => b.fmt(f),
        }
    }
}

/// What a server says of itself beyond what it hosts, for strategies and operators: string keys
/// (e.g. `datacenter`, `zone`, `build`) to small typed values, in key order.
pub type Metadata = BTreeMap<Arc<str>, MetaValue>;

/// The cluster id servers and clients use unless configured otherwise.
pub const DEFAULT_CLUSTER_ID: &str = "grainwire";
/// The service id servers and clients use unless configured otherwise.
pub const DEFAULT_SERVICE_ID: &str = "game";

/// A server's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The server's id.
    pub server_id: ServerId,
    /// The cluster it belongs to: a client serves only with servers of its own cluster.
    pub cluster_id: Arc<str>,
    /// The service (the game, say) within the cluster; checked like the cluster id.
    pub service_id: Arc<str>,
    /// Its placement weight: under consistent placement its expected share of grains is
    /// `weight / Σ weights` of the servers hosting a type. At least 1 (0 reads as 1).
    pub weight: u32,
    /// The server is shutting down: it finishes what it has, takes nothing new. Clients route
    /// around it (and answer `ShuttingDown` when only draining servers host a type).
    pub draining: bool,
    /// Its priority: lower is preferred by priority-tiered strategies. Default 0.
    pub priority: u32,
    /// Its metadata.
    pub metadata: Metadata,
    /// What it hosts.
    pub grains: Vec<HostedGrain>,
}

/// Why a caller's call of a method cannot be served by a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatibility {
    /// The server does not host the grain type.
    #[error("the server does not host this grain type")]
    NotHosted,
    /// The server hosts other versions of the interface, none with the method as the caller
    /// knows it (removed or changed).
    #[error("interface version mismatch: caller {caller}, server {server}")]
    Version {
        /// The caller's version.
        caller: u8,
        /// The server's version.
        server: u8,
    },
    /// Same version, the method different: the interface changed without a version bump on
    /// one side.
    #[error("interface contract mismatch at version {version}")]
    Contract {
        /// The version both claim.
        version: u8,
    },
}

impl Manifest {
    /// Encodes as a manifest frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 48 * self.grains.len());
        rpc::encode_manifest_head(&mut out);
        // Serializing plain structs into a Vec cannot fail.
        postcard::to_extend(self, out).expect("plain structs always serialize into a Vec")
    }

    /// Decodes the payload of a manifest frame.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        postcard::from_bytes(payload)
            .map_err(|_| WireError::OutOfRange { field: "manifest", value: payload.len() as u64 })
    }

    /// The first entry for `grain_type`, if hosted.
    pub fn find(&self, grain_type: GrainType) -> Option<&HostedGrain> {
        self.grains.iter().find(|g| g.grain_type == grain_type)
    }

    /// Whether the server hosts `grain_type` with `interface` (in any version): what a cast
    /// to that interface is checked against.
    pub fn implements(&self, grain_type: GrainType, interface: InterfaceId) -> bool {
        self.grains.iter().any(|g| g.grain_type == grain_type && g.interface == interface)
    }

    /// The entry serving a call of `method` (with `signature`) of `interface` at `version` to a
    /// `grain_type` grain: the compatibility rule is per method. A host serves the call when
    /// it has the method as the caller knows it, whatever its version (methods added since,
    /// or changed or removed that the call does not use, do not matter). Among entries that
    /// serve it, the caller's own version is preferred.
    pub fn serving(
        &self,
        grain_type: GrainType,
        interface: InterfaceId,
        version: u8,
        (method, signature): (MethodId, u64),
    ) -> Result<&HostedGrain, Incompatibility> {
        let mut of_interface =
            self.grains.iter().filter(|g| g.grain_type == grain_type && g.interface == interface);
        let mut serving = of_interface.clone().filter(|g| g.has(method, signature));
        match serving.clone().find(|g| g.version == version).or_else(|| serving.next()) {
            Some(g) => Ok(g),
            None => match of_interface.find(|g| g.version != version) {
                Some(g) => Err(Incompatibility::Version { caller: version, server: g.version }),
                None if self.implements(grain_type, interface) => {
                    Err(Incompatibility::Contract { version })
                }
                None => Err(Incompatibility::NotHosted),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::rpc::{RpcFrame, decode_rpc};

    fn grain(name: &str, version: u8, contract: u64, index: u32) -> HostedGrain {
        let methods = vec![
            HostedMethod { id: MethodId(1), signature: 10 },
            HostedMethod { id: MethodId(2), signature: contract },
        ];
        HostedGrain {
            name: name.into(),
            grain_type: GrainType::of(name),
            interface: InterfaceId::of(name),
            version,
            contract,
            index,
            methods,
        }
    }

    #[test]
    fn round_trips_and_checks_compatibility() {
        let m = Manifest {
            server_id: ServerId::new("eu-1"),
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            service_id: DEFAULT_SERVICE_ID.into(),
            weight: 1,
            draining: false,
            priority: 2,
            metadata: [("datacenter".into(), "eu-west".into()), ("build".into(), 1042i64.into())]
                .into(),
            grains: vec![
                grain("Player", 2, 77, 0),
                grain("Room", 1, 5, 1),
                grain("Player", 3, 78, 2),
            ],
        };
        let bytes = m.encode();
        let Ok(RpcFrame::Manifest(payload)) = decode_rpc(&bytes) else { panic!() };
        assert_eq!(Manifest::decode(payload).unwrap(), m);
        let player = GrainType::of("Player");
        let iface = InterfaceId::of("Player");
        // The caller's version is preferred; a method unchanged across versions is served by
        // any of them; a changed one only by a version that has it as the caller knows it.
        assert_eq!(m.serving(player, iface, 2, (MethodId(1), 10)).unwrap().index, 0);
        assert_eq!(m.serving(player, iface, 3, (MethodId(1), 10)).unwrap().index, 2);
        assert_eq!(m.serving(player, iface, 1, (MethodId(1), 10)).unwrap().index, 0);
        assert_eq!(m.serving(player, iface, 1, (MethodId(2), 78)).unwrap().index, 2);
        assert_eq!(
            m.serving(player, iface, 1, (MethodId(2), 79)),
            Err(Incompatibility::Version { caller: 1, server: 2 })
        );
        let room = GrainType::of("Room");
        assert_eq!(
            m.serving(room, InterfaceId::of("Room"), 1, (MethodId(2), 6)),
            Err(Incompatibility::Contract { version: 1 })
        );
        assert_eq!(
            m.serving(GrainType::of("Nope"), iface, 2, (MethodId(1), 10)),
            Err(Incompatibility::NotHosted)
        );
        assert!(m.implements(player, iface) && !m.implements(player, InterfaceId::of("Room")));
        assert!(Manifest::decode(&payload[..payload.len() - 1]).is_err());
        assert!(Manifest::decode(&[0xff; 9]).is_err());
    }
}
