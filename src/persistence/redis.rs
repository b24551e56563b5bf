//! Grain state in Redis: one hash per grain with its data (`d`, JSON), its etag (`e`) and its
//! epoch (`p`); load, write and clear are Lua scripts (one round trip each, atomic). Keys
//! under the cluster's hash tag, beside the directory's:
//! `grainwire:{<cluster>}:<service>:state:<type>:<key>` (so a Redis Cluster keeps a
//! cluster's keys in one slot). State lasts as Redis keeps it: with persistence (AOF or RDB)
//! across a Redis restart, up to what Redis had written. Replication is asynchronous: a
//! failover may lose the last writes, which fencing then reports as conflicts rather than
//! silently overwriting — unless writes wait for replicas
//! ([`replicas`](RedisStorage::replicas)): then a load or write succeeds only once that many
//! replicas have it, and a failover that promotes one of them loses nothing acknowledged.

use std::sync::LazyLock;
use std::time::Duration;

use super::{BoxFuture, Fence, StateError, StateStorage, Stored, failed};
use crate::directory::grain_key;
use crate::proto::ids::GrainId;
use crate::redis_conn::Redis;

/// Loads. KEYS: the record. Returns [data or false, etag, the new epoch].
const LOAD: &str = r"
local p = redis.call('HINCRBY', KEYS[1], 'p', 1)
local v = redis.call('HMGET', KEYS[1], 'd', 'e')
return {v[1], tonumber(v[2] or '0'), p}
";

/// Writes (ARGV[1] the data) or clears (no data). KEYS: the record. ARGV: data or '', the
/// etag read, the epoch, whether to clear. Returns the new etag, or -1 on a conflict.
const WRITE: &str = r"
local v = redis.call('HMGET', KEYS[1], 'e', 'p')
if tonumber(v[1] or '0') ~= tonumber(ARGV[2]) or tonumber(v[2] or '0') ~= tonumber(ARGV[3]) then
  return -1
end
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[1], 'd')
else
  redis.call('HSET', KEYS[1], 'd', ARGV[1])
end
return redis.call('HINCRBY', KEYS[1], 'e', 1)
";

static SCRIPTS: LazyLock<[redis::Script; 2]> =
    LazyLock::new(|| [LOAD, WRITE].map(redis::Script::new));

/// Grain state in Redis, for one cluster and service.
#[derive(Debug, Clone)]
pub struct RedisStorage {
    redis: Redis,
    base: String,
    /// Replicas each load and write waits for, and how long at most.
    replicas: Option<(u32, Duration)>,
}

impl RedisStorage {
    /// The state of cluster `cluster`, service `service`, in the Redis at `url`; each request
    /// bounded by `timeout`.
    pub fn new(
        url: &str,
        cluster: &str,
        service: &str,
        timeout: Duration,
    ) -> Result<Self, StateError> {
        let redis = Redis::open(url, timeout).map_err(StateError::Unavailable)?;
        Ok(Self { redis, base: crate::redis_conn::key_base(cluster, service), replicas: None })
    }

    /// Each load and write also waits (Redis `WAIT`, in the same round trip) until `replicas`
    /// replicas have it, at most `wait`; fewer in time fail it with
    /// [`StateError::NotReplicated`] (a write is then on the primary only, and a failover may
    /// lose it; a load's grain is not activated). With this, an acknowledged write (and an
    /// `#[exactly_once]` call's answer) survives a failover that promotes a replica that
    /// acknowledged it — Sentinel promotes the most up-to-date one. Without it (the default)
    /// nothing waits. The wait holds this storage's other requests behind it (Redis serves
    /// one connection's requests in order): a healthy replica answers within a round trip.
    pub fn replicas(mut self, replicas: u32, wait: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, wait));
        self
    }

    /// Runs `script`; with replicas asked for, waits for them too: the script's answer, and
    /// how many replicas acknowledged it of how many were asked for.
    async fn run<T: ::redis::FromRedisValue>(
        &self,
        script: &::redis::Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<(T, Acks), StateError> {
        let Some((wanted, wait)) = self.replicas else {
            let v = self.redis.run(script, &[key], args).await.map_err(failed)?;
            return Ok((v, Acks { acknowledged: 0, wanted: 0 }));
        };
        let (v, acknowledged) =
            self.redis.run_replicated(script, &[key], args, wanted, wait).await.map_err(failed)?;
        Ok((v, Acks { acknowledged, wanted }))
    }

    fn key(&self, grain: &GrainId) -> String {
        format!("{}:state:{}", self.base, grain_key(grain))
    }

    async fn put(
        &self,
        grain: &GrainId,
        data: &[u8],
        fence: Fence,
        clear: bool,
    ) -> Result<u64, StateError> {
        let key = self.key(grain);
        let (etag, epoch) = (fence.etag.to_string(), fence.epoch.to_string());
        let args: [&[u8]; 4] =
            [data, etag.as_bytes(), epoch.as_bytes(), if clear { b"1" } else { b"0" }];
        let (r, acks): (i64, _) = self.run(&SCRIPTS[1], &key, &args).await?;
        let etag = u64::try_from(r).map_err(|_| StateError::Conflict)?;
        acks.check(etag).map(|()| etag)
    }
}

/// How many replicas acknowledged a request, of how many were asked for.
#[derive(Debug, Clone, Copy)]
struct Acks {
    acknowledged: u32,
    wanted: u32,
}

impl Acks {
    /// [`StateError::NotReplicated`] (the record now at version `etag`) if too few did.
    fn check(self, etag: u64) -> Result<(), StateError> {
        let Self { acknowledged, wanted } = self;
        if acknowledged >= wanted {
            Ok(())
        } else {
            Err(StateError::NotReplicated { etag, acknowledged, wanted })
        }
    }
}

impl StateStorage for RedisStorage {
    fn load<'a>(&'a self, grain: &'a GrainId) -> BoxFuture<'a, Result<Stored, StateError>> {
        Box::pin(async move {
            let key = self.key(grain);
            let ((data, etag, epoch), acks): ((Option<Vec<u8>>, u64, u64), _) =
                self.run(&SCRIPTS[0], &key, &[]).await?;
            acks.check(etag)?;
            Ok(Stored { data, fence: Fence { etag, epoch } })
        })
    }

    fn write<'a>(
        &'a self,
        grain: &'a GrainId,
        data: &'a [u8],
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(self.put(grain, data, fence, false))
    }

    fn clear<'a>(
        &'a self,
        grain: &'a GrainId,
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(self.put(grain, b"", fence, true))
    }
}
