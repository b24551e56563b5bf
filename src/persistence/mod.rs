//! Grain state that outlives its activation: a small storage trait ([`StateStorage`]: load,
//! write, clear), an in-memory and a Redis implementation, and what a grain holds
//! ([`Persisted`]: its state, written when the grain says so).
//!
//! **Fencing.** Every load takes a new *epoch* for the grain, atomically with reading it, and
//! every write carries the epoch and the *etag* (the version) it read: a write succeeds only
//! if the stored record still has both. So a write by a stale activation — one that loaded
//! before another did (two can exist while the grain directory cannot be asked, under
//! `DirectoryUse::FallBack`, or across a takeover) — is refused with
//! [`StateError::Conflict`] as soon as a newer activation has loaded, whether or not that one
//! wrote yet; the stale activation then starts over from what is stored. (The fence is the
//! load's epoch rather than the directory claim's: it costs no extra round trip and needs no
//! per-grain counter beyond the state's own record.)
//!
//! **Format.** State is stored as JSON (`serde_json`), self-describing: a field added to the
//! state type with `#[serde(default)]` (or a container-level `#[serde(default)]` with a
//! `Default` impl) reads old records, a field removed is ignored. Renaming needs
//! `#[serde(alias = "old")]`. A record is at most [`Storage::max_bytes`] (1 MiB by default).

mod memory;
pub mod redis;
pub mod reminders;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::memory::MemoryStorage;
pub use self::redis::RedisStorage;
pub use self::reminders::{MemoryReminders, Reminder, ReminderStore, Reminders};
use crate::proto::ids::GrainId;

/// A boxed future, as storage methods return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The largest record a storage keeps by default.
pub const DEFAULT_MAX_STATE_BYTES: usize = 1 << 20;

/// What a write must match: the version read (`etag`, 0 when nothing was stored) and the
/// epoch the reading activation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fence {
    /// The record's version the writer read (each write makes a new one).
    pub etag: u64,
    /// The epoch its load took.
    pub epoch: u64,
}

/// A grain's record as loaded: its data (none yet), and the fence for the next write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The state, encoded; `None` when the grain has none stored.
    pub data: Option<Vec<u8>>,
    /// What the next write must carry.
    pub fence: Fence,
}

/// Why state could not be loaded or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The record changed since it was read, or a newer activation loaded it: this one is
    /// stale. Nothing was written; the activation starts over from what is stored.
    #[error("the grain's state changed since it was read (a stale activation): not written")]
    Conflict,
    /// The encoded state is larger than the storage keeps.
    #[error("the state is {size} bytes, over the storage's {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The storage did not answer in time.
    #[error("the state storage did not answer in time")]
    Timeout,
    /// The storage cannot be reached.
    #[error("the state storage is unavailable: {0}")]
    Unavailable(String),
    /// Written (or, for a load, read) on the primary, but fewer replicas acknowledged it in
    /// time than the storage asks for (see `RedisStorage::replicas`): a failover may lose it.
    /// A write is kept as the new version `etag` here (a later write of this activation
    /// builds on it, or finds it lost and the activation stale); a load activates nothing.
    #[error("the state storage's replicas did not all acknowledge it ({acknowledged} of {wanted})")]
    NotReplicated {
        /// The record's version on the primary.
        etag: u64,
        /// Replicas that acknowledged it in time.
        acknowledged: u32,
        /// Replicas asked for.
        wanted: u32,
    },
    /// What is stored (or the state given) cannot be encoded or decoded.
    #[error("the stored state is unreadable: {0}")]
    Corrupt(String),
}

/// A Redis request's failure, as state storage reports it.
pub(crate) fn failed(f: crate::redis_conn::Failure) -> StateError {
    match f {
        crate::redis_conn::Failure::Timeout => StateError::Timeout,
        crate::redis_conn::Failure::Failed(why) => StateError::Unavailable(why),
    }
}

/// Where grains' state is kept. Implementations must make `load` take a new epoch atomically
/// with reading, and `write`/`clear` compare both parts of the fence atomically with
/// writing (see the module docs).
pub trait StateStorage: Send + Sync + 'static {
    /// Reads `grain`'s record and takes a new epoch for the reader.
    fn load<'a>(&'a self, grain: &'a GrainId) -> BoxFuture<'a, Result<Stored, StateError>>;

    /// Replaces `grain`'s data with `data` if the record still matches `fence`; the new etag.
    fn write<'a>(
        &'a self,
        grain: &'a GrainId,
        data: &'a [u8],
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>>;

    /// Removes `grain`'s data if the record still matches `fence` (its epoch stays, fencing
    /// stale activations); the new etag.
    fn clear<'a>(
        &'a self,
        grain: &'a GrainId,
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>>;
}

/// A grain type's state storage: in memory (one process), in Redis, or your own. Cheap to
/// clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<dyn StateStorage>,
    max_bytes: usize,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("max_bytes", &self.max_bytes).finish_non_exhaustive()
    }
}

impl Storage {
    /// State kept in this process's memory (tests, single-server games): it outlives
    /// activations, not the process.
    pub fn memory() -> Self {
        Self::custom(MemoryStorage::default())
    }

    /// State kept in the Redis at `url`, under cluster `cluster`'s hash tag and service
    /// `service` (see [`RedisStorage`]); each request bounded by `timeout`.
    pub fn redis(
        url: &str,
        cluster: &str,
        service: &str,
        timeout: Duration,
    ) -> Result<Self, StateError> {
        Ok(Self::custom(RedisStorage::new(url, cluster, service, timeout)?))
    }

    /// State kept by your own storage.
    pub fn custom(storage: impl StateStorage) -> Self {
        Self::shared(Arc::new(storage))
    }

    /// State kept by a storage you also hold (to look into it: `MemoryStorage::peek`).
    pub fn shared(storage: Arc<dyn StateStorage>) -> Self {
        Self { inner: storage, max_bytes: DEFAULT_MAX_STATE_BYTES }
    }

    /// The largest record written (default 1 MiB); a larger state fails its write with
    /// [`StateError::TooLarge`], and a larger record fails its load.
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The storage itself.
    pub fn storage(&self) -> &Arc<dyn StateStorage> {
        &self.inner
    }

    /// Loads `grain`'s state (its default when none is stored), taking a new epoch.
    pub async fn load<S: DeserializeOwned + Default>(
        &self,
        grain: &GrainId,
    ) -> Result<Persisted<S>, StateError> {
        let stored = self.inner.load(grain).await?;
        let (record, existed) = match &stored.data {
            Some(d) if d.len() > self.max_bytes => {
                return Err(StateError::TooLarge { size: d.len(), max: self.max_bytes });
            }
            Some(d) => (
                serde_json::from_slice::<Record<S>>(d)
                    .map_err(|e| StateError::Corrupt(e.to_string()))?,
                true,
            ),
            None => (Record { state: S::default(), applied: VecDeque::new() }, false),
        };
        Ok(Persisted {
            value: record.state,
            applied: record.applied,
            storage: self.clone(),
            grain: grain.clone(),
            fence: stored.fence,
            existed,
            dirty: false,
            stale: false,
        })
    }
}

/// A grain's persisted state: loaded before its activation's first call, used like the value
/// (`Deref`/`DerefMut`), written when the grain says so ([`write`](Self::write)) and when the
/// activation ends (deactivated idle, evicted, or its server draining) if it changed since.
/// Not after every call: a write is a round trip to the storage, and a game decides which
/// changes matter (a score at the end of a round, not each position).
pub struct Persisted<S> {
    value: S,
    /// The last `#[exactly_once]` calls applied to it: their ids and answers (written with it).
    applied: VecDeque<Applied>,
    storage: Storage,
    grain: GrainId,
    fence: Fence,
    existed: bool,
    dirty: bool,
    stale: bool,
}

impl<S: fmt::Debug> fmt::Debug for Persisted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Persisted")
            .field("value", &self.value)
            .field("etag", &self.fence.etag)
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl<S> Deref for Persisted<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.value
    }
}

impl<S> DerefMut for Persisted<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.dirty = true;
        &mut self.value
    }
}

impl<S: Serialize> Persisted<S> {
    /// Writes the state now (one round trip). [`StateError::Conflict`]: this activation is
    /// stale (another loaded or wrote since); nothing was written and the activation starts
    /// over from what is stored before its next call.
    pub async fn write(&mut self) -> Result<(), StateError> {
        let data = serde_json::to_vec(&RecordRef { state: &self.value, applied: &self.applied })
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        if data.len() > self.storage.max_bytes {
            return Err(StateError::TooLarge { size: data.len(), max: self.storage.max_bytes });
        }
        let r = self.storage.inner.write(&self.grain, &data, self.fence).await;
        self.settle(r)
    }

    /// Removes the stored state (the value here stays as it is; the next activation starts
    /// from the default).
    pub async fn clear(&mut self) -> Result<(), StateError> {
        let r = self.storage.inner.clear(&self.grain, self.fence).await;
        let done = self.settle(r);
        if matches!(done, Ok(()) | Err(StateError::NotReplicated { .. })) {
            self.existed = false;
        }
        done
    }

    fn settle(&mut self, r: Result<u64, StateError>) -> Result<(), StateError> {
        match r {
            Ok(etag) => {
                self.fence.etag = etag;
                self.existed = true;
                self.dirty = false;
                Ok(())
            }
            Err(StateError::Conflict) => {
                self.stale = true;
                Err(StateError::Conflict)
            }
            Err(e @ StateError::NotReplicated { etag, .. }) => {
                // On the primary, not yet safe: build on it, and write it again at the end.
                self.fence.etag = etag;
                self.existed = true;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the state if it changed since it was loaded or last written (what the
    /// activation's end does).
    pub async fn write_if_changed(&mut self) -> Result<(), StateError> {
        if self.dirty && !self.stale { self.write().await } else { Ok(()) }
    }
}

impl<S> Persisted<S> {
    /// The answer recorded for `#[exactly_once]` call `id`, if it was applied.
    pub(crate) fn applied(&self, id: u64) -> Option<(u8, &[u8])> {
        self.applied.iter().find(|a| a.id == id).map(|a| (a.status, &a.answer[..]))
    }

    /// Records that `#[exactly_once]` call `id` was applied with this answer (written with the
    /// state next; the oldest of more than [`MAX_APPLIED`] is forgotten).
    pub(crate) fn record_applied(&mut self, id: u64, status: u8, answer: Vec<u8>) {
        self.applied.push_back(Applied { id, status, answer });
        while self.applied.len() > MAX_APPLIED {
            self.applied.pop_front();
        }
    }

    /// The activation must start over from what is stored (what it holds may not be).
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Whether state was stored for the grain when it was loaded (or has been written since).
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// The version last read or written.
    pub fn etag(&self) -> u64 {
        self.fence.etag
    }

    /// Whether it changed since it was loaded or last written.
    pub fn is_changed(&self) -> bool {
        self.dirty
    }

    /// Whether a write found this activation stale (see [`StateError::Conflict`]).
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

/// How many `#[exactly_once]` calls' answers a grain's record keeps: a call sent again after
/// more than this many others were applied to the grain runs again.
pub const MAX_APPLIED: usize = 64;

/// An `#[exactly_once]` call applied to the state: its id, and its answer (status and
/// payload) to give again.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Applied {
    id: u64,
    status: u8,
    answer: Vec<u8>,
}

/// What is stored: the state, and the answers of the last `#[exactly_once]` calls.
#[derive(serde::Deserialize)]
struct Record<S> {
    state: S,
    #[serde(default)]
    applied: VecDeque<Applied>,
}

#[derive(Serialize)]
struct RecordRef<'a, S> {
    state: &'a S,
    applied: &'a VecDeque<Applied>,
}

/// A grain type whose instances hold a [`Persisted`] state: what hosting it with state
/// (`Player::host_with_state`) needs to write it when the activation ends.
///
/// ```
/// # use grainwire::persistence::Persisted;
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Health { hp: u32 }
/// struct PlayerGrain { state: Persisted<Health> }
/// impl grainwire::persistence::Stateful for PlayerGrain {
///     type State = Health;
///     fn state(&mut self) -> &mut Persisted<Health> { &mut self.state }
/// }
/// ```
pub trait Stateful: Send + 'static {
    /// The state type (serde; `Default` for a grain with nothing stored yet).
    type State: Serialize + DeserializeOwned + Default + Send + 'static;
    /// Where the grain keeps it.
    fn state(&mut self) -> &mut Persisted<Self::State>;
}
