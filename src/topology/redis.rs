//! Fleet membership in Redis: servers register themselves ([`run_membership`]), clients and servers
//! read the fleet ([`RedisSource`]). The only module that names the `redis` crate for
//! membership.
//!
//! Layout, all keys under the cluster's hash tag (so a Redis Cluster keeps them in one slot):
//!
//! * `grainwire:{<cluster>}:<service>:member:<server id>`: the member's entry (JSON: server
//!   id, endpoint as clients reach it, eligibility, priority, metadata), written with a TTL
//!   that the server's heartbeat renews; a server that stops beating lapses.
//! * `grainwire:{<cluster>}:<service>:members`: the set of member ids (an index; entries that
//!   lapsed are pruned from it by the next heartbeat of any member).
//! * channel `grainwire:{<cluster>}:<service>:changes`: a message whenever a member joins,
//!   changes, leaves, or is found lapsed. Subscribers fetch the fleet again; they also poll, in
//!   case a message was lost.
//!
//! Each write is one Lua script (one round trip, atomic). If Redis goes away, servers keep
//! serving and keep the fleet they last saw; clients keep their topology; both recover when it
//! returns (a server re-registers at its next heartbeat, its entry written whole each time).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{ClusterNode, DiscoveryError, ServerAddr, StreamingSource, Topology, TopologyStream};
use crate::config::duration;
use crate::proto::manifest::Metadata;
use crate::redis_conn::{Failure, Redis};

/// One member's entry in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The server's id.
    pub server_id: String,
    /// Where clients reach it.
    pub endpoint: ServerAddr,
    /// Whether it takes new work (false while it drains).
    pub eligible: bool,
    /// Its priority (lower is preferred).
    pub priority: u32,
    /// What it says of itself.
    pub metadata: Metadata,
}

impl MemberEntry {
    /// The entry as a topology node.
    pub fn node(&self) -> ClusterNode {
        ClusterNode {
            endpoint: self.endpoint.clone(),
            eligible: self.eligible,
            priority: self.priority,
            metadata: self.metadata.clone(),
        }
    }
}

/// The keys of one cluster and service.
#[derive(Debug, Clone)]
struct Keys {
    members: String,
    member_prefix: String,
    channel: String,
}

impl Keys {
    fn new(cluster: &str, service: &str) -> Self {
        let base = crate::redis_conn::key_base(cluster, service);
        Self {
            members: format!("{base}:members"),
            member_prefix: format!("{base}:member:"),
            channel: format!("{base}:changes"),
        }
    }
}

/// Writes an entry (renewing its TTL), adds it to the index, prunes lapsed members, and
/// publishes when anything changed; returns the ids of the members it found lapsed. KEYS:
/// index, entry. ARGV: id, entry, ttl ms, channel, entry prefix.
const REGISTER: &str = r"
local old = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
local lapsed = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then
    redis.call('SREM', KEYS[1], id)
    table.insert(lapsed, id)
  end
end
if old ~= ARGV[2] or #lapsed > 0 then
  redis.call('PUBLISH', ARGV[4], ARGV[1])
end
return lapsed
";

/// Removes an entry and publishes. KEYS: index, entry. ARGV: id, channel.
const DEREGISTER: &str = r"
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
";

/// The live entries (read only). KEYS: index. ARGV: entry prefix.
const FETCH: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then table.insert(out, v) end
end
return out
";

fn redis_error(e: redis::RedisError) -> DiscoveryError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        DiscoveryError::Unreachable(e.to_string())
    } else {
        DiscoveryError::Failed(e.to_string())
    }
}

/// Runs `f` within `limit`.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(redis_error),
        Err(_) => Err(DiscoveryError::Timeout),
    }
}

/// The Redis of a membership (see `redis_conn`).
struct Conn {
    redis: Redis,
}

impl Conn {
    fn open(url: &str, timeout: Duration) -> Result<Self, DiscoveryError> {
        Ok(Self { redis: Redis::open(url, timeout).map_err(DiscoveryError::Failed)? })
    }

    /// Runs `script`; a failure drops the connection (the next call makes a new one).
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, DiscoveryError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.redis.run(script, keys, &args).await.map_err(|f| match f {
            Failure::Timeout => DiscoveryError::Timeout,
            Failure::Failed(why) => DiscoveryError::Failed(why),
        })
    }

    async fn fetch(&mut self, keys: &Keys) -> Result<Topology, DiscoveryError> {
        let script = redis::Script::new(FETCH);
        let raw: Vec<String> = self.run(&script, &[&keys.members], &[&keys.member_prefix]).await?;
        let mut nodes = Vec::with_capacity(raw.len());
        for entry in raw.iter().take(super::MAX_NODES) {
            match serde_json::from_str::<MemberEntry>(entry) {
                Ok(m) => nodes.push(m.node()),
                Err(error) => tracing::warn!(%error, "unreadable member entry in Redis; skipped"),
            }
        }
        Ok(Topology::new(nodes))
    }
}

/// Bridges a Redis outage: Redis may come back empty (restarted without persistence), and
/// members re-register only at their next heartbeat. For `grace` after the first good read
/// that follows a failure, each read is merged with the fleet seen before (what Redis says
/// wins for a member it names), so nobody is drained for not having beaten yet; a member that
/// does not come back leaves when the grace ends.
#[derive(Debug, Default)]
struct Recovery {
    /// The fleet read last before the outage (or last, while healthy).
    before: Option<Topology>,
    outage: bool,
    until: Option<tokio::time::Instant>,
}

impl Recovery {
    fn failed(&mut self) {
        self.outage = true;
    }

    fn read(&mut self, t: Topology, grace: Duration) -> Topology {
        let now = tokio::time::Instant::now();
        if std::mem::take(&mut self.outage) {
            self.until = Some(now + grace);
        }
        match (&self.before, self.until) {
            (Some(before), Some(until)) if now < until => {
                // The latest word on each member (a drain seen during the grace sticks).
                let merged =
                    Topology::new(before.nodes().iter().cloned().chain(t.nodes().iter().cloned()));
                self.before = Some(merged.clone());
                merged
            }
            _ => {
                self.until = None;
                self.before = Some(t.clone());
                t
            }
        }
    }
}

/// A client's view of the fleet registered in Redis: a streaming source (the current fleet at
/// once, again on every published change, and every `interval` in case a change message was
/// lost), one seed per Redis URL.
#[derive(Debug, Clone)]
pub struct RedisSource {
    urls: Vec<String>,
    keys: Arc<KeysShared>,
    interval: Duration,
    /// After an outage, reads are merged with the fleet before it this long.
    grace: Duration,
    recovery: Arc<std::sync::Mutex<Recovery>>,
}

#[derive(Debug)]
struct KeysShared(Keys);

impl RedisSource {
    /// Follows cluster `cluster`, service `service`, in the Redis at each of `urls` (tried in
    /// turn), polling every `interval` besides the pushes.
    pub fn new(
        urls: Vec<String>,
        cluster: &str,
        service: &str,
        interval: Duration,
    ) -> Result<Self, DiscoveryError> {
        if urls.is_empty() {
            return Err(DiscoveryError::Config { field: "redis", problem: "no Redis URL" });
        }
        for u in &urls {
            Redis::open(u, interval).map_err(DiscoveryError::Failed)?;
        }
        Ok(Self {
            urls,
            keys: Arc::new(KeysShared(Keys::new(cluster, service))),
            interval,
            grace: MembershipConfig::default().ttl,
            recovery: Arc::default(),
        })
    }

    /// How long after Redis comes back its reads are merged with the fleet seen before the
    /// outage (members re-register at their next heartbeat). Default 10 s, the default TTL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

impl StreamingSource for RedisSource {
    fn seeds(&self) -> Vec<String> {
        self.urls.clone()
    }

    fn subscribe(&self, seed: usize) -> TopologyStream {
        let (tx, rx) = mpsc::channel(4);
        let url = self.urls.get(seed).cloned().unwrap_or_default();
        let keys = self.keys.0.clone();
        let (interval, grace, recovery) = (self.interval, self.grace, self.recovery.clone());
        tokio::spawn(async move {
            let read = |t: Topology| crate::sync::lock(&recovery).read(t, grace);
            if let Err(e) = follow(&url, &keys, interval, &tx, read).await {
                crate::sync::lock(&recovery).failed();
                let _ = tx.send(Err(e)).await;
            }
        });
        Box::pin(super::Receiver(rx))
    }
}

/// Subscribes to the change channel, then fetches the fleet now, on every message and every
/// `interval`, until something fails or nobody listens.
async fn follow(
    url: &str,
    keys: &Keys,
    interval: Duration,
    tx: &mpsc::Sender<Result<Topology, DiscoveryError>>,
    read: impl Fn(Topology) -> Topology,
) -> Result<(), DiscoveryError> {
    let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut conn = Conn::open(url, timeout)?;
    let mut pubsub = bounded(timeout, conn.redis.client().get_async_pubsub()).await?;
    bounded(timeout, pubsub.subscribe(&keys.channel)).await?;
    let mut messages = pubsub.on_message();
    loop {
        let t = read(conn.fetch(keys).await?);
        if tx.send(Ok(t)).await.is_err() {
            return Ok(());
        }
        tokio::select! {
            m = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)) => {
                if m.is_none() {
                    return Err(DiscoveryError::Unreachable("the Redis subscription ended".into()));
                }
            }
            () = tokio::time::sleep(interval) => {}
            () = tx.closed() => return Ok(()),
        }
    }
}

/// A server's membership in Redis: where, how long an entry lives, how often it is renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// The Redis URL (`redis://host:port/db`); `None` (the default): no membership.
    pub redis: Option<String>,
    /// How long an entry lives without a heartbeat: a server killed without deregistering
    /// leaves the fleet this long after its last beat (plus one heartbeat of another member,
    /// which publishes the lapse). Default 10 s.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// How often the entry is renewed (and the fleet read, besides pushes). Default 2 s; at
    /// most a third of `ttl`.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self { redis: None, ttl: Duration::from_secs(10), heartbeat: Duration::from_secs(2) }
    }
}

impl MembershipConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.heartbeat.is_zero() || self.heartbeat * 3 > self.ttl {
            return Err("membership.heartbeat must be non-zero and at most a third of ttl");
        }
        if let Some(url) = &self.redis {
            Redis::open(url, Duration::from_secs(1))
                .map_err(|_| "membership.redis: not a Redis URL")?;
        }
        Ok(())
    }
}

/// What a server's membership task is told.
#[derive(Debug)]
pub enum MemberCmd {
    /// The entry changed (e.g. the server drains: no longer eligible): write it now.
    Update(MemberEntry),
    /// Remove the entry and stop; the sender learns when it is done.
    Leave(tokio::sync::oneshot::Sender<()>),
}

/// Keeps a server registered: writes its entry at once and every heartbeat, follows the
/// fleet (pushes and heartbeats), hands each fleet it reads to `on_fleet` and the ids of
/// members it found lapsed (dead) to `on_lapsed`, and deregisters on [`MemberCmd::Leave`].
/// Redis failures are logged and retried at the next heartbeat.
pub async fn run_membership(
    cfg: MembershipConfig,
    cluster: String,
    service: String,
    mut entry: MemberEntry,
    mut cmds: mpsc::UnboundedReceiver<MemberCmd>,
    on_fleet: impl Fn(Topology) + Send + 'static,
    on_lapsed: impl Fn(Vec<String>) + Send + 'static,
) {
    let Some(url) = cfg.redis.clone() else { return };
    let keys = Keys::new(&cluster, &service);
    let timeout = cfg.heartbeat.min(Duration::from_secs(5));
    let Ok(mut conn) = Conn::open(&url, timeout) else {
        tracing::error!(%url, "bad Redis URL: no membership");
        return;
    };
    let register = redis::Script::new(REGISTER);
    let ttl_ms = cfg.ttl.as_millis().to_string();
    let member_key = format!("{}{}", keys.member_prefix, entry.server_id);
    let mut pushes: Option<redis::aio::PubSubStream> = None;
    let mut healthy = true;
    let mut recovery = Recovery::default();
    loop {
        let json = serde_json::to_string(&entry).unwrap_or_default();
        let beat = conn
            .run::<Vec<String>>(
                &register,
                &[&keys.members, &member_key],
                &[&entry.server_id, &json, &ttl_ms, &keys.channel, &keys.member_prefix],
            )
            .await;
        let fleet = match beat {
            Ok(lapsed) => {
                if !lapsed.is_empty() {
                    tracing::info!(?lapsed, "members lapsed (their heartbeat stopped)");
                    on_lapsed(lapsed);
                }
                conn.fetch(&keys).await
            }
            Err(e) => Err(e),
        };
        match fleet {
            Ok(t) => {
                if !healthy {
                    tracing::info!(%url, "Redis membership restored");
                }
                healthy = true;
                on_fleet(recovery.read(t, cfg.ttl));
            }
            Err(error) => {
                if healthy {
                    tracing::warn!(%url, %error, "Redis membership unavailable; retrying every heartbeat");
                }
                healthy = false;
                recovery.failed();
                pushes = None;
            }
        }
        if pushes.is_none() && healthy {
            pushes = subscribe(conn.redis.client(), &keys.channel, timeout).await;
        }
        let next = async {
            match pushes.as_mut() {
                Some(p) => {
                    std::future::poll_fn(|cx| Pin::new(&mut *p).poll_next(cx)).await.is_some()
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = next => if !alive { pushes = None },
            () = tokio::time::sleep(cfg.heartbeat) => {}
            cmd = cmds.recv() => match cmd {
                Some(MemberCmd::Update(e)) => entry = e,
                Some(MemberCmd::Leave(done)) => {
                    let script = redis::Script::new(DEREGISTER);
                    let left = conn
                        .run::<i64>(&script, &[&keys.members, &member_key], &[&entry.server_id, &keys.channel])
                        .await;
                    if let Err(error) = left {
                        tracing::warn!(%error, "could not deregister from Redis (the entry lapses)");
                    }
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
        }
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> Option<redis::aio::PubSubStream> {
    let mut pubsub = bounded(timeout, client.get_async_pubsub()).await.ok()?;
    bounded(timeout, pubsub.subscribe(channel)).await.ok()?;
    Some(pubsub.into_on_message())
}
