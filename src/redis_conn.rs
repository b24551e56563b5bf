//! The one way grainwire talks to Redis: a client, one shared multiplexed connection (made on
//! first use, made again after a failure) and Lua scripts run on it within a timeout. The
//! membership (`topology::redis`), the grain directory (`directory::redis`) and grain state
//! (`persistence::redis`) all go through it.
//!
//! A URL `redis://host:port/` names one Redis; `redis-cluster://h1:p1,h2:p2,...` a Redis Cluster
//! (any of its nodes: the rest are discovered). Every key grainwire writes carries its cluster's
//! hash tag (`grainwire:{<cluster>}:...`), so a cluster keeps one fleet's keys in one slot and
//! each script runs on the node that owns them; publications reach every node.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The prefix of every key of cluster `cluster`, service `service`:
/// `grainwire:{<cluster>}:<service>` — the hash tag that keeps one fleet's keys (membership,
/// directory, state, reminders) in one Redis Cluster slot, so each script runs on one node.
pub(crate) fn key_base(cluster: &str, service: &str) -> String {
    format!("grainwire:{{{cluster}}}:{service}")
}

/// Why a script did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// Redis refused, or could not be reached (the message says why).
    Failed(String),
}

/// A Redis, its shared connection, and a timeout for each request. Cheap to clone (clones
/// share the connection).
#[derive(Clone)]
pub(crate) struct Redis {
    /// One node (or, for a cluster, its first node: for what is not a script).
    client: redis::Client,
    cluster: Option<redis::cluster::ClusterClient>,
    con: Arc<tokio::sync::Mutex<Option<Con>>>,
    timeout: Duration,
}

/// A connection: to one Redis, or to a cluster (routed by key).
#[derive(Clone)]
enum Con {
    One(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Redis {
    /// The Redis at `url` (not connected yet), each request bounded by `timeout`.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let bad = |e: redis::RedisError| format!("bad Redis URL {url:?}: {e}");
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let nodes: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}/"))
                .collect();
            let first = nodes.first().ok_or_else(|| format!("no node in {url:?}"))?;
            let client = redis::Client::open(first.as_str()).map_err(bad)?;
            let cluster = redis::cluster::ClusterClient::new(nodes.clone()).map_err(bad)?;
            return Ok(Self { client, cluster: Some(cluster), con: Default::default(), timeout });
        }
        let client = redis::Client::open(url).map_err(bad)?;
        Ok(Self { client, cluster: None, con: Default::default(), timeout })
    }

    async fn connect(&self) -> redis::RedisResult<Con> {
        Ok(match &self.cluster {
            Some(c) => Con::Cluster(c.get_async_connection().await?),
            None => Con::One(self.client.get_multiplexed_async_connection().await?),
        })
    }

    /// A client of one node (for what is not a script: a subscription, which a cluster
    /// delivers from every node).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs `script` with `keys` and `args` on the shared connection; a failure drops the
    /// connection (the next request makes a new one).
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, Failure> {
        self.bounded(self.timeout, async {
            let inv = invocation(script, keys, args);
            match self.con().await? {
                Con::One(mut c) => inv.invoke_async(&mut c).await,
                Con::Cluster(mut c) => inv.invoke_async(&mut c).await,
            }
        })
        .await
    }

    /// Runs `script` as [`run`](Self::run) does, then `WAIT replicas wait` in the same round
    /// trip (a pipeline on the same connection, so on the node that ran the script): the
    /// script's answer and how many replicas acknowledged every write made on this connection
    /// so far, the script's included. (`WAIT` cannot run inside a script. Redis holds the
    /// connection's later requests until it returns: at most `wait`.)
    pub(crate) async fn run_replicated<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
        replicas: u32,
        wait: Duration,
    ) -> Result<(T, u32), Failure> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        self.bounded(self.timeout + wait, async {
            let inv = invocation(script, keys, args);
            let mut pipe = redis::pipe();
            pipe.invoke_script(&inv).cmd("WAIT").arg(replicas).arg(ms);
            let mut con = self.con().await?;
            match con.query(&pipe).await {
                Err(e) if e.kind() == no_script() => {
                    // The node does not know the script yet (a new or restarted Redis).
                    con.load(&inv).await?;
                    con.query(&pipe).await
                }
                r => r,
            }
        })
        .await
    }

    /// The shared connection, made if there is none.
    async fn con(&self) -> redis::RedisResult<Con> {
        let mut slot = self.con.lock().await;
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        Ok(slot.clone().expect("set above"))
    }

    /// Runs `work` within `limit`; a failure or a timeout drops the shared connection (the
    /// next request makes a new one).
    async fn bounded<T>(
        &self,
        limit: Duration,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let r = match tokio::time::timeout(limit, work).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => Failure::Failed(e.to_string()),
            Err(_) => Failure::Timeout,
        };
        *self.con.lock().await = None;
        Err(r)
    }
}

impl Con {
    /// Runs `pipe` (on a cluster: on the node of its first key).
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Con::One(c) => pipe.query_async(c).await,
            Con::Cluster(c) => pipe.query_async(c).await,
        }
    }

    /// Loads the script `inv` invokes.
    async fn load(&mut self, inv: &redis::ScriptInvocation<'_>) -> redis::RedisResult<String> {
        match self {
            Con::One(c) => inv.load_async(c).await,
            Con::Cluster(c) => inv.load_async(c).await,
        }
    }
}

fn no_script() -> redis::ErrorKind {
    redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// `script` invoked with `keys` and `args`.
fn invocation<'a>(
    script: &'a redis::Script,
    keys: &[&str],
    args: &[&[u8]],
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    for a in args {
        inv.arg(*a);
    }
    inv
}
