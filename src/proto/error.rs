//! The errors of the sans-IO core, re-exported in `grainwire::error` where users find them.

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
    /// Retry later, or wait for room (the transport's `Connection::send_wait`).
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
    /// The server refused the connection, and said why.
    #[error("rejected by the server: {0}")]
    Rejected(Rejection),
    /// The peer no longer knows this session: it restarted, or dropped it.
    #[error("session reset by the peer")]
    Reset,
    /// The same peer address opened a new session, which replaces this one.
    #[error("replaced by a new session from the same address")]
    Replaced,
    /// The local endpoint shut down.
    #[error("endpoint shut down")]
    EndpointClosed,
    /// Data waited for the peer's acknowledgement longer than `stall_timeout` (it advertised
    /// no room, stopped acknowledging, or its network lost everything), or more of it piled up
    /// than twice the `send_buffer`: the peer does not drain what is sent to it. Reported on
    /// the side that gave up and, from its `CLOSE`, on the peer.
    #[error("stalled: the peer did not take what was sent to it")]
    Stalled,
    /// The endpoint was over `max_receive_buffered` and this session held more received,
    /// undelivered data than its share: it was shed to keep the endpoint within its memory.
    /// Reported on the side that shed it and, from its `CLOSE`, on the peer.
    #[error("shed: the peer was over its share of the endpoint's memory")]
    Shed,
}

impl Rejection {
    /// Whether trying again with the same token cannot help (the token, or the application's
    /// verdict on the client, is the problem): a client stops waiting for its connect at once.
    /// `ServerFull`, `TooManyFromAddress` and `NotAccepting` may pass.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::ServerFull | Self::TooManyFromAddress | Self::NotAccepting)
    }
}

/// Why a server refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// It holds as many sessions as it allows (`max_connections`).
    #[error("the server is full")]
    ServerFull,
    /// It does not accept incoming sessions (not a server, or shutting down).
    #[error("the server does not accept sessions")]
    NotAccepting,
    /// Our address (IPv4, or IPv6 /64) holds as many sessions as the server allows one address
    /// (`max_connections_per_ip`).
    #[error("too many sessions from this address")]
    TooManyFromAddress,
    /// The server requires a connect token and we presented none.
    #[error("the server requires a connect token")]
    TokenRequired,
    /// The server runs without keys (a trusted network) and does not take tokens.
    #[error("the server does not verify connect tokens (it runs for a trusted network)")]
    TokensNotAccepted,
    /// What we presented is not a connect token.
    #[error("not a connect token")]
    BadToken,
    /// The token is sealed with a key the server does not hold.
    #[error("the token is sealed with a key the server does not hold")]
    WrongKey,
    /// The token expired.
    #[error("the connect token expired")]
    TokenExpired,
    /// The token does not name this server.
    #[error("the connect token does not name this server")]
    NotInToken,
    /// The token already opened a session from another address (servers before issue 19; a
    /// server now binds a token where its secrets are proven, and never refuses this).
    #[error("the connect token was already used from another address")]
    TokenReused,
    /// The server's application refused us, with its code.
    #[error("refused by the server's application (code {code})")]
    Application {
        /// The application's reason.
        code: u16,
    },
    /// The server is of another cluster or service than we are.
    #[error("the server is of another cluster or service")]
    WrongCluster,
}
