//! Grain state in Redis: one hash per grain with its data (`d`, JSON), its etag (`e`) and its
//! epoch (`p`); load, write and clear are Lua scripts (one round trip each, atomic). Keys
//! under the cluster's hash tag, beside the directory's:
//! `grainwire:{<cluster>}:<service>:state:<type>:<key>` (so a Redis Cluster keeps a
//! cluster's keys in one slot). State lasts as Redis keeps it: with persistence (AOF or RDB)
//! across a Redis restart, up to what Redis had written; a Redis failover may lose the last
//! writes (replication is asynchronous), which fencing then reports as conflicts rather than
//! silently overwriting.

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
        Ok(Self { redis, base: format!("grainwire:{{{cluster}}}:{service}") })
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
        let r: i64 = self.redis.run(&SCRIPTS[1], &[&key], &args).await.map_err(failed)?;
        u64::try_from(r).map_err(|_| StateError::Conflict)
    }
}

impl StateStorage for RedisStorage {
    fn load<'a>(&'a self, grain: &'a GrainId) -> BoxFuture<'a, Result<Stored, StateError>> {
        Box::pin(async move {
            let key = self.key(grain);
            let (data, etag, epoch): (Option<Vec<u8>>, u64, u64) =
                self.redis.run(&SCRIPTS[0], &[&key], &[]).await.map_err(failed)?;
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
