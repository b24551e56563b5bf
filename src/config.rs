//! Options, with documented defaults. Every struct deserializes with serde (missing fields
//! take their defaults; durations are written in milliseconds) and is checked by `validate`.
//! The transport's options live with the sans-IO core that reads them (`proto`); the client's
//! and the server's are in [`crate::client`] and [`crate::server`].

pub(crate) use crate::proto::config::duration_ms;
pub use crate::proto::config::{ConfigError, MAX_STREAM_WINDOW, TransportConfig};
