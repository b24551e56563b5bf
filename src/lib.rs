//! # grainwire
//!
//! A reliable-UDP RPC stack for games. Game servers host *grains*: virtual actors addressed
//! by grain type and key, activated on their first call and deactivated when idle. Game
//! clients call them through typed references generated from a Rust trait, over our own
//! reliable channels on UDP.
//!
//! ```
//! use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig};
//!
//! #[grainwire::grain]
//! trait Counter {
//!     /// Adds `n`; returns the new total.
//!     async fn add(&mut self, n: u64) -> u64;
//! }
//!
//! struct Total(u64);
//!
//! impl Counter for Total {
//!     async fn add(&mut self, n: u64) -> u64 {
//!         self.0 += n;
//!         self.0
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(ServerConfig::default())
//!     .host(Counter::host(|_: &GrainId| Total(0)))   // one fresh `Total` per activation
//!     .bind("127.0.0.1:0".parse()?)?;
//! let client = Client::connect(server.local_addr(), ClientConfig::default()).await?;
//! let counter: CounterRef = client.grain(7);            // grain "Counter" with key 7
//! assert_eq!(counter.add(2).await?, 2);
//! assert_eq!(counter.add(3).await?, 5);                // the same activation, its state kept
//! client.disconnect().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! One client talks to many servers at once ([`client::Client::builder`]): each server lists the
//! grain types it hosts in its handshake, and every call is routed by those manifests, the
//! grain type's [`client::Strategy`] (consistent placement by default, round-robin, lowest
//! latency, or your own) and the reference's [`client::Affinity`]; a server that dies leaves
//! routing within seconds and is reconnected when it returns.
//!
//! Underneath is [`transport`]: reliable and unreliable delivery classes on our own sans-IO
//! reliability core ([`proto`]), inside laminar's connection manager, driven by one tokio task
//! per socket. It can be used on its own.

#![forbid(unsafe_code)]
// Library code handles every failure; `expect` only under a local invariant with a message.
#![warn(clippy::unwrap_used)]

pub(crate) mod arena;
pub mod auth;
pub mod client;
pub mod config;
pub mod directory;
pub mod error;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod grain;
pub mod interface;
pub mod persistence;
/// The sans-IO core: wire formats, reliability, sessions, the gate, ids, routing snapshots.
/// Public for the fuzz targets, the benches and wire-level tests, not as an API: it changes
/// when the protocol does. What users need of it is re-exported where they look for it (ids at
/// the root and in [`grain`](mod@grain), strategies and call statistics in [`client`], connection
/// statistics in [`transport`], options in [`config`], errors in [`error`]).
#[doc(hidden)]
pub mod proto;
mod redis_conn;
pub mod rpc;
pub mod server;
pub(crate) mod sync;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod topology;
pub mod transport;

pub use client::{Client, ClientConfig};
pub use client::{GrainInterface, GrainRef};
pub use config::TransportConfig;
pub use error::CallError;
pub use grainwire_macros::grain;
pub use proto::ids::{GrainId, GrainKey, GrainType, ServerId};
pub use rpc::stream::{CallStream, GrainStream, StreamSender};
pub use server::{Server, ServerConfig};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// A starting instant for tests of the sans-IO core, which never reads the clock itself.
#[cfg(test)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}
