//! The one way grainwire talks to Redis: a client, one shared multiplexed connection (made on
//! first use, made again after a failure) and Lua scripts run on it within a timeout. The
//! membership (`topology::redis`), the grain directory (`directory::redis`) and grain state
//! (`persistence::redis`) all go through it.

use std::sync::Arc;
use std::time::Duration;

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
    client: redis::Client,
    con: Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Redis {
    /// The Redis at `url` (not connected yet), each request bounded by `timeout`.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url:?}: {e}"))?;
        Ok(Self { client, con: Default::default(), timeout })
    }

    /// The client (for what is not a script: a subscription).
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
        let work = async {
            let mut slot = self.con.lock().await;
            if slot.is_none() {
                let con = self.client.get_multiplexed_async_connection().await;
                *slot = Some(con.map_err(|e| Failure::Failed(e.to_string()))?);
            }
            let mut con = slot.clone().expect("set above");
            drop(slot);
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                inv.arg(*a);
            }
            let r = inv.invoke_async(&mut con).await;
            if r.is_err() {
                *self.con.lock().await = None;
            }
            r.map_err(|e| Failure::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                *self.con.lock().await = None;
                Err(Failure::Timeout)
            }
        }
    }
}
