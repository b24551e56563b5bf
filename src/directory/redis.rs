//! The grain directory in Redis. Each grain's entry is a key with the owner (server id and
//! endpoint, JSON) and a TTL, the lease, renewed by the owner; each server's grains are also
//! in a set, so that everything a dead server held can be released at once. Claim, renew and
//! release are Lua compare-and-set scripts (one round trip each, atomic): a claim takes a
//! grain only if it is free, its lease lapsed, it is ours already, or its owner is no longer a
//! member of the fleet (when the fleet's membership lives in the same Redis, see
//! `topology::redis`).
//!
//! Keys, under the cluster's hash tag like the membership's:
//! `grainwire:{<cluster>}:<service>:grain:<type>:<key>` and
//! `grainwire:{<cluster>}:<service>:owned:<server id>`.
//!
//! A lease is only as safe as its renewal: Redis replicates asynchronously, so a failover of
//! Redis itself may lose the latest claims, and a server that cannot renew must stop serving
//! its grains before the lease lapses (the server does so). The window in which two
//! activations can exist is bounded by the lease, not closed.

use std::time::Duration;

use std::sync::LazyLock;

use super::{BoxFuture, Claim, DirectoryError, GrainDirectory, Owner, grain_key};
use crate::proto::ids::{GrainId, ServerId};
use crate::redis_conn::{Failure, Redis};

/// Claims a grain. KEYS: the entry, the claimant's owned set. ARGV: claimant id, its entry
/// (JSON), lease ms, the membership's member-key prefix, the membership's index key, the
/// owned-set prefix. Returns the current owner's entry if someone else live holds it, else nil.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, owner = pcall(cjson.decode, cur)
  local id = ok and owner['server'] or nil
  if id ~= ARGV[1] then
    local membership = redis.call('EXISTS', ARGV[5]) == 1
    local live = (not membership) or redis.call('EXISTS', ARGV[4] .. tostring(id)) == 1
    if live and id then return cur end
    if id then redis.call('SREM', ARGV[6] .. id, KEYS[1]) end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3] * 4)
return false
";

/// Renews. KEYS: the owned set, then the entries. ARGV: owner id, lease ms. Returns the
/// indices (1-based, among the entries) no longer ours.
const RENEW: &str = r"
local lost = {}
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  local ok, owner = false, nil
  if cur then ok, owner = pcall(cjson.decode, cur) end
  if ok and owner['server'] == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    table.insert(lost, i - 1)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2] * 4)
return lost
";

/// Releases one grain. KEYS: the entry, the owned set. ARGV: owner id.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, owner = pcall(cjson.decode, cur)
  if ok and owner['server'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
end
redis.call('SREM', KEYS[2], KEYS[1])
return 1
";

/// Releases everything a server owns. KEYS: its owned set. ARGV: its id. Returns the count.
const RELEASE_ALL: &str = r"
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cur = redis.call('GET', key)
  if cur then
    local ok, owner = pcall(cjson.decode, cur)
    if ok and owner['server'] == ARGV[1] then
      redis.call('DEL', key)
      n = n + 1
    end
  end
end
redis.call('DEL', KEYS[1])
return n
";

/// A vote that a server is dead. KEYS: its votes (a sorted set: voter → until, ms), its owned
/// set. ARGV: voter id, ttl ms, quorum, the server's id. Drops lapsed votes, adds this one;
/// with a quorum, releases everything the server owns (as `RELEASE_ALL`) and returns 1.
const SUSPECT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then return 0 end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local cur = redis.call('GET', key)
  if cur then
    local ok, owner = pcall(cjson.decode, cur)
    if ok and owner['server'] == ARGV[4] then redis.call('DEL', key) end
  end
end
redis.call('DEL', KEYS[2])
return 1
";

/// A grain directory in Redis, for one cluster and service.
#[derive(Debug, Clone)]
pub struct RedisDirectory {
    redis: Redis,
    base: String,
}

/// The scripts, hashed once.
static SCRIPTS: LazyLock<[redis::Script; 6]> =
    LazyLock::new(|| [LOOKUP, CLAIM, RENEW, RELEASE, RELEASE_ALL, SUSPECT].map(redis::Script::new));

const LOOKUP: &str = "return redis.call('GET', KEYS[1])";

impl RedisDirectory {
    /// The directory of cluster `cluster`, service `service`, in the Redis at `url`; each
    /// request bounded by `timeout`.
    pub fn new(
        url: &str,
        cluster: &str,
        service: &str,
        timeout: Duration,
    ) -> Result<Self, DirectoryError> {
        let redis = Redis::open(url, timeout).map_err(DirectoryError::Unavailable)?;
        Ok(Self { redis, base: crate::redis_conn::key_base(cluster, service) })
    }

    fn entry(&self, grain: &GrainId) -> String {
        format!("{}:grain:{}", self.base, grain_key(grain))
    }

    fn owned(&self, server: &ServerId) -> String {
        format!("{}:owned:{}", self.base, server.0)
    }

    /// Runs script `n` of [`SCRIPTS`] with `keys` and `args`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        n: usize,
        keys: &[String],
        args: &[String],
    ) -> Result<T, DirectoryError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
        self.redis.run(&SCRIPTS[n], &keys, &args).await.map_err(|f| match f {
            Failure::Timeout => DirectoryError::Timeout,
            Failure::Failed(why) => DirectoryError::Unavailable(why),
        })
    }
}

fn parse_owner(json: &str) -> Result<Owner, DirectoryError> {
    serde_json::from_str(json).map_err(|e| DirectoryError::Corrupt(e.to_string()))
}

impl GrainDirectory for RedisDirectory {
    fn lookup<'a>(
        &'a self,
        grain: &'a GrainId,
    ) -> BoxFuture<'a, Result<Option<Owner>, DirectoryError>> {
        Box::pin(async move {
            let v: Option<String> = self.run(0, &[self.entry(grain)], &[]).await?;
            v.map(|j| parse_owner(&j)).transpose()
        })
    }

    fn claim<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a Owner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DirectoryError>> {
        Box::pin(async move {
            let json =
                serde_json::to_string(me).map_err(|e| DirectoryError::Corrupt(e.to_string()))?;
            let keys = [self.entry(grain), self.owned(&me.server)];
            let args = [
                me.server.0.to_string(),
                json,
                lease.as_millis().max(1).to_string(),
                format!("{}:member:", self.base),
                format!("{}:members", self.base),
                format!("{}:owned:", self.base),
            ];
            let cur: Option<String> = self.run(1, &keys, &args).await?;
            match cur {
                None => Ok(Claim::Won),
                Some(j) => Ok(Claim::Owned(parse_owner(&j)?)),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        grains: &'a [GrainId],
        me: &'a ServerId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<GrainId>, DirectoryError>> {
        Box::pin(async move {
            let mut lost = Vec::new();
            // Bounded batches: one script call per 500 grains.
            for batch in grains.chunks(500) {
                let mut keys = vec![self.owned(me)];
                keys.extend(batch.iter().map(|g| self.entry(g)));
                let args = [me.0.to_string(), lease.as_millis().max(1).to_string()];
                let idx: Vec<usize> = self.run(2, &keys, &args).await?;
                lost.extend(idx.into_iter().filter_map(|i| batch.get(i.checked_sub(1)?).cloned()));
            }
            Ok(lost)
        })
    }

    fn release<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a ServerId,
    ) -> BoxFuture<'a, Result<(), DirectoryError>> {
        Box::pin(async move {
            let _: i64 =
                self.run(3, &[self.entry(grain), self.owned(me)], &[me.0.to_string()]).await?;
            Ok(())
        })
    }

    fn release_all<'a>(
        &'a self,
        server: &'a ServerId,
    ) -> BoxFuture<'a, Result<usize, DirectoryError>> {
        Box::pin(async move {
            let n: i64 = self.run(4, &[self.owned(server)], &[server.0.to_string()]).await?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn suspect<'a>(
        &'a self,
        server: &'a ServerId,
        by: &'a ServerId,
        quorum: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            let keys = [format!("{}:suspects:{}", self.base, server.0), self.owned(server)];
            let args = [
                by.0.to_string(),
                ttl.as_millis().max(1).to_string(),
                quorum.max(1).to_string(),
                server.0.to_string(),
            ];
            let dead: i64 = self.run(5, &keys, &args).await?;
            Ok(dead == 1)
        })
    }
}
