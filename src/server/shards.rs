//! Several servers in one process, one per core: each shard is a whole [`Server`] on a thread
//! of its own with a current-thread tokio runtime, so its endpoint task and every activation
//! it holds share that thread and never wake another (the cost measured in BENCHMARKS.md: a
//! third less CPU per call than one server on a multi-thread runtime).
//!
//! Shards are fleet members: each binds its own port and has its own server id, sessions and
//! activations; clients connect to all of them and place each grain on one by their strategy
//! (consistent hashing by default keeps a grain's calls on one shard, from every client, with
//! no hop between shards). A shard's own fleet is what its configuration says: its grains'
//! calls to other grains are placed over that fleet, which does not include the other shards
//! unless the configuration names them (`peers`, Redis membership). Give the shards a shared
//! grain directory (or Redis) for one activation per grain whatever the callers know.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use super::{Server, ServerError};
use crate::error::BindError;

/// Running shards (see the module docs). Dropping it stops the shards' runtimes without a
/// drain; [`shutdown`](Self::shutdown) drains each first.
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Shard>,
}

#[derive(Debug)]
struct Shard {
    server: Option<Server>,
    /// Ends the shard's runtime (dropping it does too).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` shards (0: one per core the process may use). Shard `i` (from 0) calls
    /// `start(i)` on its own thread, inside its current-thread runtime, to build and bind its
    /// server (its own port and server id: e.g. the base port + `i`). The first error stops
    /// the shards already started and is returned.
    pub fn start<F>(n: usize, start: F) -> Result<Self, ServerError>
    where
        F: Fn(usize) -> Result<Server, ServerError> + Send + Sync + 'static,
    {
        let n =
            if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let start = std::sync::Arc::new(start);
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (made_tx, made_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let start = start.clone();
            let thread = std::thread::Builder::new()
                .name(format!("grainwire-shard-{i}"))
                .spawn(move || {
                    let runtime =
                        tokio::runtime::Builder::new_current_thread().enable_all().build();
                    let runtime = match runtime {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = made_tx.send(Err(ServerError::Bind(BindError::from(e))));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let made = start(i);
                        let ok = made.is_ok();
                        let _ = made_tx.send(made);
                        if ok {
                            // The server's tasks run on this runtime until told to stop.
                            let _ = stopped.await;
                        }
                    });
                })
                .map_err(|e| ServerError::Bind(BindError::from(e)))?;
            let server = made_rx.recv().unwrap_or_else(|_| {
                Err(ServerError::Bind(BindError::from(std::io::Error::other(
                    "a shard's thread ended before its server started",
                ))))
            });
            let server = match server {
                Ok(s) => s,
                Err(e) => {
                    let _ = thread.join();
                    return Err(e); // `shards` dropped: the ones started stop
                }
            };
            shards.push(Shard { server: Some(server), stop: Some(stop), thread: Some(thread) });
        }
        Ok(Self { shards })
    }

    /// The shards' servers, in order.
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.shards.iter().filter_map(|s| s.server.as_ref())
    }

    /// The address each shard is bound to, in order: what clients connect to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.servers().map(Server::local_addr).collect()
    }

    /// How many shards run.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether none runs (never, once started).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Drains every shard at once ([`Server::shutdown`]), then ends their threads.
    pub async fn shutdown(mut self) {
        let drains: Vec<_> = self
            .shards
            .iter_mut()
            .filter_map(|s| s.server.take())
            .map(|server| tokio::spawn(server.shutdown()))
            .collect();
        for d in drains {
            let _ = d.await;
        }
        let threads: Vec<_> = self
            .shards
            .iter_mut()
            .filter_map(|s| {
                drop(s.stop.take());
                s.thread.take()
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // The server handle first (its tasks live on the runtime that stops next).
        drop(self.server.take());
        drop(self.stop.take());
    }
}
