//! # grainwire
//!
//! A reliable-UDP RPC stack for games. This release contains the transport: reliable and
//! unreliable delivery classes on our own sans-IO reliability core, inside laminar's connection
//! manager, driven by one tokio task per socket.
//!
//! ```no_run
//! use grainwire::transport::{Delivery, Endpoint, Event};
//! use grainwire::TransportConfig;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = Endpoint::bind("127.0.0.1:0".parse()?, TransportConfig::server())?;
//! let client = Endpoint::bind("127.0.0.1:0".parse()?, TransportConfig::default())?;
//! let conn = client.connect(server.local_addr()).await?;
//! conn.send(Delivery::reliable_ordered(0), bytes::Bytes::from_static(b"hello"))?;
//! while let Some(event) = server.next_event().await {
//!     if let Event::Message { payload, .. } = event {
//!         assert_eq!(&payload[..], b"hello");
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
// Library code handles every failure; `expect` only under a local invariant with a message.
#![warn(clippy::unwrap_used)]

pub(crate) mod arena;
pub mod client;
pub mod config;
pub mod error;
#[cfg(feature = "test-util")]
pub mod fuzz;
pub mod grain;
pub mod proto;
pub mod server;
pub(crate) mod sync;
pub mod transport;

pub use client::{Client, ClientConfig};
pub use config::TransportConfig;
pub use error::CallError;
pub use grain::{GrainInterface, GrainRef};
pub use grainwire_macros::grain;
pub use proto::ids::{GrainId, GrainKey, GrainType, ServerId};
pub use server::{Server, ServerConfig};

#[doc(hidden)]
pub use grain::private as __private;
