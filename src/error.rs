//! Public error types.

use std::io;

pub use crate::config::ConfigError;
pub use crate::proto::wire::WireError;

/// Why a message could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than the configured maximum (or than the peer can buffer).
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The connection's send buffer is full: the peer or the network is slower than the sender.
    /// Retry later, or use [`Connection::send_wait`](crate::transport::Connection::send_wait).
    #[error("send buffer full ({queued} bytes queued, limit {limit})")]
    BufferFull {
        /// Bytes queued and unacknowledged on this connection.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The session is closed or closing.
    #[error("connection closed")]
    Closed,
}

/// A peer broke the protocol; the session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// An acknowledgement of a packet number never sent.
    #[error("acknowledged a packet that was never sent")]
    AckOfUnsentPacket,
    /// A reliable message beyond the stream window.
    #[error("reliable message outside the stream window")]
    WindowExceeded,
    /// More reliable data than the flow-control credit allows.
    #[error("flow-control credit exceeded")]
    CreditExceeded,
    /// A message larger than our maximum, or chunks that disagree about the message.
    #[error("message larger than allowed or inconsistent chunks")]
    BadMessage,
    /// The peer told us we violated the protocol.
    #[error("the peer reported a protocol violation by us")]
    ReportedByPeer,
}

/// Why a session ended (or never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Nothing heard from the peer for the idle timeout, or no answer to the handshake.
    #[error("timed out")]
    Timeout,
    /// The peer closed the session with this application code.
    #[error("closed by peer (code {code})")]
    ClosedByPeer {
        /// The code the peer gave.
        code: u32,
    },
    /// We closed it.
    #[error("closed locally")]
    ClosedLocally,
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    ProtocolViolation(ProtocolViolation),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u8,
        /// The peer's version.
        theirs: u8,
    },
    /// The server refused the connection (full, or not accepting).
    #[error("rejected by the server")]
    Rejected,
    /// The peer no longer knows this session: it restarted, or dropped it.
    #[error("session reset by the peer")]
    Reset,
    /// The same peer address opened a new session, which replaces this one.
    #[error("replaced by a new session from the same address")]
    Replaced,
    /// The local endpoint shut down.
    #[error("endpoint shut down")]
    EndpointClosed,
}

/// Why [`Endpoint::connect`](crate::transport::Endpoint::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The handshake did not complete.
    #[error("connect failed: {0}")]
    Failed(DisconnectReason),
    /// A session to that address is already open or opening on this endpoint.
    #[error("already connected or connecting to that address")]
    AlreadyConnected,
    /// The endpoint has shut down.
    #[error("endpoint closed")]
    EndpointClosed,
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The socket could not be created or bound.
    #[error("bind failed: {0}")]
    Io(#[from] io::Error),
}
