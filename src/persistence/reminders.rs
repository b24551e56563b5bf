//! Durable reminders: a grain's call to itself, kept in storage (in memory, or in Redis with
//! the fleet), due at a time and again every period, fired by whichever server of the fleet
//! takes it when it is due — through that server's fleet client, so it reaches the grain
//! wherever it lives now, activating it if needed. A server takes due reminders with a lease
//! (`take_due`): a reminder a server took and did not report fired (it died meanwhile) is
//! taken again when the lease runs out. At least once: a reminder may fire twice around a
//! server's death, never zero times while the fleet has a server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BoxFuture, StateError, failed};
use crate::directory::grain_key;
use crate::proto::ids::{GrainId, InterfaceId, MethodId};
use crate::redis_conn::Redis;
use crate::sync::lock;

/// One reminder: whose, which call, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// The grain it calls.
    pub grain: GrainId,
    /// Its name (one reminder per grain and name: setting it again replaces it).
    pub name: String,
    /// The call: the interface (id and version), the method and its encoded arguments.
    pub interface: InterfaceId,
    /// The interface's version.
    pub version: u8,
    /// The method.
    pub method: MethodId,
    /// Its arguments, encoded.
    pub args: Vec<u8>,
    /// When it is due next (ms since the Unix epoch).
    pub due_ms: u64,
    /// Its period in ms (0: once).
    pub period_ms: u64,
}

impl Reminder {
    fn member(&self) -> String {
        member(&self.grain, &self.name)
    }
}

fn member(grain: &GrainId, name: &str) -> String {
    format!("{}|{name}", grain_key(grain))
}

/// Where reminders are kept.
pub trait ReminderStore: Send + Sync + 'static {
    /// Sets `r` (replacing the grain's reminder of that name).
    fn set<'a>(&'a self, r: &'a Reminder) -> BoxFuture<'a, Result<(), StateError>>;
    /// Removes `grain`'s reminder `name`.
    fn remove<'a>(
        &'a self,
        grain: &'a GrainId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>>;
    /// Takes up to `limit` reminders due by `now_ms`: each is due again at `now_ms +
    /// lease_ms` unless reported fired before (see [`fired`](Self::fired)).
    fn take_due<'a>(
        &'a self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Reminder>, StateError>>;
    /// `r` fired: due again at `next_ms`, or gone (`None`: it was a one-shot).
    fn fired<'a>(
        &'a self,
        r: &'a Reminder,
        next_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StateError>>;
}

/// A fleet's reminders: kept in memory (one process) or in Redis, and how often each server
/// looks for due ones. Cheap to clone.
#[derive(Clone)]
pub struct Reminders {
    pub(crate) store: Arc<dyn ReminderStore>,
    pub(crate) poll: Duration,
}

impl std::fmt::Debug for Reminders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reminders").field("poll", &self.poll).finish_non_exhaustive()
    }
}

impl Reminders {
    /// Reminders in this process's memory (servers of one process share it by cloning).
    pub fn memory() -> Self {
        Self::custom(MemoryReminders::default())
    }

    /// Reminders in the Redis at `url` (one node or `redis-cluster://...`), under cluster
    /// `cluster`'s hash tag and service `service`.
    pub fn redis(
        url: &str,
        cluster: &str,
        service: &str,
        timeout: Duration,
    ) -> Result<Self, StateError> {
        let redis = Redis::open(url, timeout).map_err(StateError::Unavailable)?;
        let base = crate::redis_conn::key_base(cluster, service);
        Ok(Self::custom(RedisReminders { redis, base }))
    }

    /// The store itself.
    pub fn store(&self) -> &Arc<dyn ReminderStore> {
        &self.store
    }

    /// Reminders in your own store.
    pub fn custom(store: impl ReminderStore) -> Self {
        Self { store: Arc::new(store), poll: Duration::from_secs(1) }
    }

    /// How often each server looks for due reminders (default 1 s): a reminder fires within
    /// this of its time (plus the call's way to its grain).
    pub fn poll_every(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }
}

/// Reminders in memory.
#[derive(Debug, Default)]
pub struct MemoryReminders {
    map: Mutex<HashMap<String, Reminder>>,
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl ReminderStore for MemoryReminders {
    fn set<'a>(&'a self, r: &'a Reminder) -> BoxFuture<'a, Result<(), StateError>> {
        lock(&self.map).insert(r.member(), r.clone());
        ready(Ok(()))
    }

    fn remove<'a>(
        &'a self,
        grain: &'a GrainId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        lock(&self.map).remove(&member(grain, name));
        ready(Ok(()))
    }

    fn take_due<'a>(
        &'a self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Reminder>, StateError>> {
        let mut map = lock(&self.map);
        let mut due: Vec<&mut Reminder> = map.values_mut().filter(|r| r.due_ms <= now_ms).collect();
        due.sort_by_key(|r| r.due_ms);
        let taken = due
            .into_iter()
            .take(limit)
            .map(|r| {
                let out = r.clone();
                r.due_ms = now_ms + lease_ms;
                out
            })
            .collect();
        ready(Ok(taken))
    }

    fn fired<'a>(
        &'a self,
        r: &'a Reminder,
        next_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        let mut map = lock(&self.map);
        match next_ms {
            Some(next) => {
                if let Some(kept) = map.get_mut(&r.member()) {
                    kept.due_ms = next;
                }
            }
            None => {
                map.remove(&r.member());
            }
        }
        ready(Ok(()))
    }
}

/// Reminders in Redis: a sorted set of members by due time and one JSON entry per reminder,
/// both under the cluster's hash tag (one slot); each operation is one script.
#[derive(Debug, Clone)]
struct RedisReminders {
    redis: Redis,
    base: String,
}

/// KEYS: the set, the entry. ARGV: member, due, JSON.
const SET: &str = r"
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
";

/// KEYS: the set, the entry. ARGV: member.
const REMOVE: &str = r"
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
";

/// KEYS: the set. ARGV: now, lease, limit, the entries' prefix. Returns the due entries (each
/// due again after the lease).
const TAKE_DUE: &str = r"
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m)
  local v = redis.call('GET', ARGV[4] .. m)
  if v then table.insert(out, v) else redis.call('ZREM', KEYS[1], m) end
end
return out
";

/// KEYS: the set, the entry. ARGV: member, next due (or -1: gone).
const FIRED: &str = r"
if tonumber(ARGV[2]) < 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
elseif redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
return 1
";

static SCRIPTS: std::sync::LazyLock<[redis::Script; 4]> =
    std::sync::LazyLock::new(|| [SET, REMOVE, TAKE_DUE, FIRED].map(redis::Script::new));

impl RedisReminders {
    fn set_key(&self) -> String {
        format!("{}:reminders", self.base)
    }

    fn entry_prefix(&self) -> String {
        format!("{}:reminder:", self.base)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        n: usize,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StateError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.redis.run(&SCRIPTS[n], keys, &args).await.map_err(failed)
    }
}

impl ReminderStore for RedisReminders {
    fn set<'a>(&'a self, r: &'a Reminder) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let json = serde_json::to_string(r).map_err(|e| StateError::Corrupt(e.to_string()))?;
            let (m, entry) = (r.member(), format!("{}{}", self.entry_prefix(), r.member()));
            let due = r.due_ms.to_string();
            let _: i64 = self.run(0, &[&self.set_key(), &entry], &[&m, &due, &json]).await?;
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        grain: &'a GrainId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let m = member(grain, name);
            let entry = format!("{}{m}", self.entry_prefix());
            let _: i64 = self.run(1, &[&self.set_key(), &entry], &[&m]).await?;
            Ok(())
        })
    }

    fn take_due<'a>(
        &'a self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Reminder>, StateError>> {
        Box::pin(async move {
            let args =
                [now_ms.to_string(), lease_ms.to_string(), limit.to_string(), self.entry_prefix()];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let raw: Vec<String> = self.run(2, &[&self.set_key()], &args).await?;
            Ok(raw.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
        })
    }

    fn fired<'a>(
        &'a self,
        r: &'a Reminder,
        next_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let (m, entry) = (r.member(), format!("{}{}", self.entry_prefix(), r.member()));
            let next = next_ms.map_or("-1".to_string(), |n| n.to_string());
            let _: i64 = self.run(3, &[&self.set_key(), &entry], &[&m, &next]).await?;
            Ok(())
        })
    }
}
