//! Identifier newtypes. Grain identity hashes are stable: the same value in every process,
//! build and platform (golden-value tests pin them), because clients use them to route and
//! servers to place.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::siphash::stable_hash;

/// One of the 256 reliable-ordered (or unreliable-sequenced) streams of a connection. Order is
/// kept within a stream; a loss on one stream never delays another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u8);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// One session with one peer, unique within an endpoint for its lifetime. A peer that
/// reconnects (or restarts on the same address) gets a new `PeerId`: nothing of an old session
/// is ever mistaken for the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// The tag of a cluster and service (never 0): what a client says in its `CONNECT` so that a
/// server of another refuses it before any state.
pub fn cluster_tag(cluster: &str, service: &str) -> u64 {
    let mut name = Vec::with_capacity(cluster.len() + service.len() + 1);
    name.extend_from_slice(cluster.as_bytes());
    name.push(0);
    name.extend_from_slice(service.as_bytes());
    stable_hash(&name) | 1
}

/// The low 32 bits of the stable hash of a name.
const fn hash32(name: &str) -> u32 {
    stable_hash(name.as_bytes()) as u32
}

/// A grain type: what a server hosts and activates. Its id is the stable hash of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrainType(pub u32);

impl GrainType {
    /// The grain type named `name`.
    pub const fn of(name: &str) -> Self {
        Self(hash32(name))
    }
}

impl fmt::Display for GrainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type:{:08x}", self.0)
    }
}

/// A grain interface (a `#[grain]` trait). Its id is the stable hash of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InterfaceId(pub u32);

impl InterfaceId {
    /// The interface named `name`.
    pub const fn of(name: &str) -> Self {
        Self(hash32(name))
    }
}

/// A method of an interface, derived from the method's *name* (never its position), so that
/// reordering a trait changes nothing on the wire. Collisions within one interface are
/// rejected at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MethodId(pub u16);

impl MethodId {
    /// The method named `name`.
    pub const fn of(name: &str) -> Self {
        Self((stable_hash(name.as_bytes()) >> 48) as u16)
    }
}

/// A call in a client's correlation table: the slot it occupies and that slot's generation
/// (the guard against a late response matching a later call in the same slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// Index in the table.
    pub slot: u32,
    /// How many times the slot was used before (wire: low 16 bits).
    pub generation: u32,
}

/// A server, as it names itself in its handshake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServerId(pub Arc<str>);

impl ServerId {
    /// A server id from a string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key that tells grains of one type apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrainKey {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(Arc<str>),
    /// A 128-bit id (a UUID, for instance).
    Id(u128),
    /// An integer plus a string extension.
    IntExt(i64, Arc<str>),
    /// A 128-bit id plus a string extension.
    IdExt(u128, Arc<str>),
}

impl GrainKey {
    /// Its kind as a number (0 `Int` … 4 `IdExt`): what a request's head and a reference's
    /// surrogate carry to say which kind of key follows.
    pub(crate) fn tag(&self) -> u8 {
        match self {
            GrainKey::Int(_) => 0,
            GrainKey::Str(_) => 1,
            GrainKey::Id(_) => 2,
            GrainKey::IntExt(..) => 3,
            GrainKey::IdExt(..) => 4,
        }
    }

    /// Appends the canonical bytes of the key (the input of its stable hash).
    pub(crate) fn canonical(&self, out: &mut smallvec::SmallVec<[u8; 64]>) {
        let ext = |out: &mut smallvec::SmallVec<[u8; 64]>, s: &str| {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        match self {
            GrainKey::Int(i) => {
                out.push(0);
                out.extend_from_slice(&i.to_le_bytes());
            }
            GrainKey::Str(s) => {
                out.push(1);
                ext(out, s);
            }
            GrainKey::Id(u) => {
                out.push(2);
                out.extend_from_slice(&u.to_le_bytes());
            }
            GrainKey::IntExt(i, s) => {
                out.push(3);
                out.extend_from_slice(&i.to_le_bytes());
                ext(out, s);
            }
            GrainKey::IdExt(u, s) => {
                out.push(4);
                out.extend_from_slice(&u.to_le_bytes());
                ext(out, s);
            }
        }
    }
}

impl fmt::Display for GrainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrainKey::Int(i) => write!(f, "{i}"),
            GrainKey::Str(s) => write!(f, "{s:?}"),
            GrainKey::Id(u) => write!(f, "{u:032x}"),
            GrainKey::IntExt(i, s) => write!(f, "{i}+{s:?}"),
            GrainKey::IdExt(u, s) => write!(f, "{u:032x}+{s:?}"),
        }
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl From<$t> for GrainKey {
            fn from(v: $t) -> Self {
                GrainKey::Int(v as i64)
            }
        }
    )*};
}
int_keys!(i8, i16, i32, i64, u8, u16, u32);

impl From<&str> for GrainKey {
    fn from(s: &str) -> Self {
        GrainKey::Str(s.into())
    }
}

impl From<String> for GrainKey {
    fn from(s: String) -> Self {
        GrainKey::Str(s.into())
    }
}

impl From<u128> for GrainKey {
    fn from(v: u128) -> Self {
        GrainKey::Id(v)
    }
}

impl<S: Into<Arc<str>>> From<(i64, S)> for GrainKey {
    /// A compound key: an integer with a string extension.
    fn from((i, ext): (i64, S)) -> Self {
        GrainKey::IntExt(i, ext.into())
    }
}

impl<S: Into<Arc<str>>> From<(u128, S)> for GrainKey {
    /// A compound key: a 128-bit id with a string extension.
    fn from((id, ext): (u128, S)) -> Self {
        GrainKey::IdExt(id, ext.into())
    }
}

/// A grain: its type and its key. Equal ids are the same grain everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrainId {
    /// The grain's type.
    pub ty: GrainType,
    /// Its key within the type.
    pub key: GrainKey,
}

impl GrainId {
    /// The grain of type `ty` with key `key`.
    pub fn new(ty: GrainType, key: impl Into<GrainKey>) -> Self {
        Self { ty, key: key.into() }
    }

    /// The stable 64-bit hash of this id: SipHash-2-4 under a fixed key of the type id and the
    /// key's canonical bytes. The same in every process, build and platform.
    pub fn stable_hash(&self) -> u64 {
        let mut buf = smallvec::SmallVec::<[u8; 64]>::new();
        buf.extend_from_slice(&self.ty.0.to_le_bytes());
        self.key.canonical(&mut buf);
        stable_hash(&buf)
    }
}

impl fmt::Display for GrainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ty, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: these must never change (they are on the wire and decide placement).
    #[test]
    fn stable_hashes_are_pinned() {
        let player = GrainType::of("Player");
        assert_eq!(player, GrainType(0x0e4c_bf76));
        assert_eq!(InterfaceId::of("Player"), InterfaceId(0x0e4c_bf76));
        assert_eq!(MethodId::of("join"), MethodId(0xc8e8));
        assert_eq!(GrainId::new(player, 42).stable_hash(), 0x57ff_0d8a_8b0c_a2bc);
        assert_eq!(GrainId::new(player, "alice").stable_hash(), 0x2287_7127_7188_b8df);
        assert_eq!(GrainId::new(player, 7u128).stable_hash(), 0xdcc6_7f61_bce6_2bd9);
        let ext = GrainId { ty: player, key: GrainKey::IntExt(1, "eu".into()) };
        assert_eq!(ext.stable_hash(), 0x5be4_d32f_e4c8_3426);
        let ext = GrainId { ty: player, key: GrainKey::IdExt(1, "eu".into()) };
        assert_eq!(ext.stable_hash(), 0x4f50_cda7_ab83_d0b8);
    }

    #[test]
    fn value_equality_and_distinct_hashes() {
        let t = GrainType::of("Room");
        assert_eq!(GrainId::new(t, 1), GrainId::new(t, 1i64));
        assert_ne!(GrainId::new(t, 1).stable_hash(), GrainId::new(t, 2).stable_hash());
        // Int(1) and Id(1) are different keys with different hashes.
        assert_ne!(GrainId::new(t, 1).stable_hash(), GrainId::new(t, 1u128).stable_hash());
        assert_ne!(GrainId::new(t, 1), GrainId::new(GrainType::of("Other"), 1));
    }

    #[test]
    fn compound_keys_convert_from_tuples() {
        assert_eq!(GrainKey::from((7i64, "eu")), GrainKey::IntExt(7, "eu".into()));
        assert_eq!(GrainKey::from((7u128, String::from("eu"))), GrainKey::IdExt(7, "eu".into()));
        assert_ne!(GrainKey::from((7i64, "eu")), GrainKey::from((7i64, "us")));
    }
}

/// MurmurHash3's 64-bit finalizer: a fast, well-mixing bijection.
#[inline]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A hasher for keys this process assigns itself (peer ids, call tokens) or that are hashes
/// already (grain types): one multiply-and-mix per key instead of SipHash's rounds. Never for
/// keys a peer chooses (request ids, grain keys): those keep SipHash's resistance to crafted
/// collisions.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

/// A map keyed by ids this process assigns (see [`IdHasher`]).
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
/// A set of ids this process assigns (see [`IdHasher`]).
pub type IdSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;
