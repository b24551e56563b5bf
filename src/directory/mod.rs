//! The grain directory: which server hosts each grain's one live activation in the fleet.
//! Servers own it (clients never call it): before a server activates a grain it claims the
//! grain; one claimant wins, the others learn the winner. A claim is a *lease*: the owner
//! renews it while the activation lives, well inside its TTL, and releases it on deactivation;
//! an owner that stops renewing (it died) loses its grains when the lease lapses, or at once
//! when its membership is known to be gone.
//!
//! Two implementations: [`MemoryDirectory`] (one process: tests and single-node games) and
//! [`RedisDirectory`] (compare-and-set Lua scripts, keys namespaced by cluster).

mod leases;
mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::leases::{BATCH, IN_FLIGHT, LeaseStats, Leases};
pub use self::memory::MemoryDirectory;
pub use self::redis::RedisDirectory;
use crate::proto::addr::ServerAddr;
use crate::proto::ids::{GrainId, GrainKey, ServerId};

/// A boxed future, as directory methods return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The server that owns a grain, as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The server's id.
    pub server: ServerId,
    /// Where clients reach it.
    pub endpoint: ServerAddr,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimant owns the grain now (it was free, lapsed, its owner gone, or already ours).
    Won,
    /// Another live server owns it.
    Owned(Owner),
}

/// Why the directory could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The directory did not answer in time.
    #[error("the grain directory did not answer in time")]
    Timeout,
    /// The directory is unreachable.
    #[error("the grain directory is unavailable: {0}")]
    Unavailable(String),
    /// The directory answered something we cannot read.
    #[error("the grain directory answered something unreadable: {0}")]
    Corrupt(String),
}

/// Where grains live: claimed, renewed and released by the servers that host them.
pub trait GrainDirectory: Send + Sync + 'static {
    /// The owner of `grain`, if its lease is live.
    fn lookup<'a>(
        &'a self,
        grain: &'a GrainId,
    ) -> BoxFuture<'a, Result<Option<Owner>, DirectoryError>>;

    /// Claims `grain` for `me` with a lease of `lease`: atomic, one winner among concurrent
    /// claimants; the others get [`Claim::Owned`] with the winner. A claim by the owner renews.
    fn claim<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a Owner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DirectoryError>>;

    /// Renews `me`'s leases on `grains` for `lease` more; returns the grains `me` no longer
    /// owns (lapsed and taken, or released by someone cleaning up after a presumed death):
    /// their activations must end.
    fn renew<'a>(
        &'a self,
        grains: &'a [GrainId],
        me: &'a ServerId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<GrainId>, DirectoryError>>;

    /// Releases `grain` if `me` owns it (on deactivation).
    fn release<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a ServerId,
    ) -> BoxFuture<'a, Result<(), DirectoryError>>;

    /// Releases every grain `server` owns (it was declared dead); returns how many.
    fn release_all<'a>(
        &'a self,
        server: &'a ServerId,
    ) -> BoxFuture<'a, Result<usize, DirectoryError>>;

    /// `by` finds `server` unreachable (its session to it went silent for its health timeout):
    /// a vote that `server` is dead, good for `ttl`. Once votes of `quorum` distinct servers
    /// are current, `server` is declared dead: every grain it owns is released at once (other
    /// servers then claim them as they are called). Returns whether it is declared dead now.
    /// One server's vote alone never declares another dead unless `quorum` is 1 (a fleet of
    /// two). A directory that keeps no votes declares nobody dead (leases lapse instead).
    fn suspect<'a>(
        &'a self,
        server: &'a ServerId,
        by: &'a ServerId,
        quorum: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        let _ = (server, by, quorum, ttl);
        Box::pin(std::future::ready(Ok(false)))
    }
}

/// Directory keys longer than this name their grain by a digest instead (see [`grain_key`]).
pub(crate) const MAX_PLAIN_KEY: usize = 96;

/// A grain's directory key: its type's id, then its key, in a form that names each key
/// uniquely (the text part of a key is last, so it may hold anything). A key longer than
/// [`MAX_PLAIN_KEY`] (a string key may hold 1 KiB) is named by its SHA-256 instead: the
/// directory's memory and the renewal traffic then cost the same whatever the keys' length.
pub(crate) fn grain_key(grain: &GrainId) -> String {
    let t = grain.ty.0;
    let plain = match &grain.key {
        GrainKey::Int(i) => format!("{t:08x}:i:{i}"),
        GrainKey::Str(s) => format!("{t:08x}:s:{s}"),
        GrainKey::Id(u) => format!("{t:08x}:u:{u:032x}"),
        GrainKey::IntExt(i, s) => format!("{t:08x}:ie:{i}:{s}"),
        GrainKey::IdExt(u, s) => format!("{t:08x}:ue:{u:032x}:{s}"),
    };
    if plain.len() <= MAX_PLAIN_KEY {
        return plain;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, plain.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{t:08x}:h:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ids::GrainType;

    #[test]
    fn grain_keys_are_unique_per_grain() {
        let t = GrainType::of("Room");
        let keys = [
            GrainId::new(t, 1i64),
            GrainId::new(t, "1"),
            GrainId::new(t, 1u128),
            GrainId { ty: t, key: GrainKey::IntExt(1, "".into()) },
            GrainId { ty: t, key: GrainKey::IdExt(1, "".into()) },
            GrainId { ty: t, key: GrainKey::IntExt(1, ":x".into()) },
            GrainId::new(GrainType::of("Player"), 1i64),
        ];
        let mut seen: Vec<String> = keys.iter().map(grain_key).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), keys.len(), "{seen:?}");
        // Long keys are named by a digest: short, and still one per key.
        let long = |c: char| GrainId::new(t, std::iter::repeat_n(c, 1024).collect::<String>());
        let (a, b) = (grain_key(&long('a')), grain_key(&long('b')));
        assert!(a.len() <= MAX_PLAIN_KEY && b.len() <= MAX_PLAIN_KEY && a != b, "{a} {b}");
        assert!(a.contains(":h:"));
    }
}
