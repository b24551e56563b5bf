//! Public error types.

use std::io;

pub use crate::config::ConfigError;
pub use crate::proto::error::{DisconnectReason, ProtocolViolation, Rejection, SendError};
pub use crate::proto::wire::WireError;

/// Why [`Endpoint::connect`](crate::transport::Endpoint::connect) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
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
    /// A server name did not resolve to an address of the client socket's IP family.
    #[error("the server name did not resolve to an address this client can reach")]
    Unresolved,
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

/// A (de)serialization failure of call arguments or results. Opaque: the codec is an
/// implementation detail.
#[derive(Debug, Clone)]
pub struct CodecError(pub(crate) postcard::Error);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CodecError {}

/// Why a grain call did not produce the method's value.
///
/// `E` is the method's application error type when the method returns `Result<T, E>`;
/// otherwise it is `Infallible` and [`CallError::Application`] never occurs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallError<E = std::convert::Infallible> {
    /// The method returned this error.
    Application(E),
    /// The call's deadline passed here before a response arrived (the server was told to
    /// cancel it).
    /// [`CallError::Timeout`].
    Timeout,
    /// The server saw the deadline pass before the call completed there.
    /// [`CallError::DeadlineExceeded`].
    DeadlineExceeded,
    /// The server does not host this grain type.
    /// [`CallError::UnknownGrainType`].
    UnknownGrainType,
    /// The server's interface has no such method.
    /// [`CallError::UnknownMethod`].
    UnknownMethod,
    /// The server hosts this grain type with another interface version (or the same version
    /// with a different contract).
    IncompatibleVersion {
        /// The caller's version.
        ours: u8,
        /// The server's version (equal to ours when only the contract differs).
        theirs: u8,
    },
    /// Too many calls pending: the server has too many from this client, or this client has
    /// too many outstanding (`ClientConfig::max_pending_calls`). Retry later.
    /// [`CallError::Overloaded`].
    Overloaded,
    /// The method panicked on the server.
    /// [`CallError::HandlerPanicked`].
    HandlerPanicked,
    /// The server is shutting down.
    /// [`CallError::ShuttingDown`].
    ShuttingDown,
    /// The server could not decode the call: its arguments (client and server disagree on the
    /// types), its key or its deadline.
    /// [`CallError::BadRequest`].
    BadRequest,
    /// The client has no connection to a server for this call.
    /// [`CallError::NotConnected`].
    NotConnected,
    /// The reference requires a server (`Affinity::Required`) that is not connected, not
    /// healthy, or does not host the grain type.
    ServerUnavailable(crate::proto::ids::ServerId),
    /// The connection was lost while the call was pending.
    Disconnected(DisconnectReason),
    /// The arguments could not be encoded.
    Encode(CodecError),
    /// The response could not be decoded.
    Decode(CodecError),
    /// The encoded call is larger than the connection accepts.
    TooLarge {
        /// The call's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The method ran on the server, but its answer is larger than the connection carries
    /// (`max_message_size`, or what the client's receive window allows), so it was not sent.
    ResponseTooLarge {
        /// The answer's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The grain directory could not be asked where the grain lives, and its type keeps one
    /// activation or none (fails closed): the call did not run.
    Unavailable,
    /// The call was redirected to the grain's owner, and the owner redirected it again (the
    /// directory changed under it): it did not run.
    RedirectLoop,
    /// The server's authorization refused this caller this call (e.g. another player's
    /// grain): it did not run, and no activation was made for it.
    Unauthorized,
    /// The reference was decoded where nothing can call it (outside a call's result or a
    /// grain's arguments, e.g. from a file or an `Invocation`'s arguments): it did not run.
    Unbound,
    /// The call would have waited on itself: its grain is busy serving the call chain that
    /// led to it (A calls B, B calls A; or A calls A). `chain` names the grains, outermost
    /// first, the one that refused last. It did not run.
    Deadlock {
        /// The grains of the chain, outermost first.
        chain: Vec<crate::proto::ids::GrainId>,
    },
    /// The chain of grain calls leading to this one is deeper than a call carries
    /// (`MAX_CHAIN`, 32 grains): it was not sent.
    ChainTooDeep,
    /// The observer called is gone: its client closed, dropped it, was away longer than the
    /// server waits (`ServerConfig::observer_grace`), or did not answer its observer calls
    /// (its session was closed). A call pending when its client went may have run.
    ObserverGone,
    /// A stream's session to its server was lost while it ran, after `received` items (read
    /// them as delivered: resume from the game's own position).
    StreamLost {
        /// Items that arrived before the loss.
        received: u64,
        /// Why the session ended.
        reason: DisconnectReason,
    },
    /// A stream's grain activation ended while the stream ran (deactivated, evicted, or moved
    /// to another server): the items before this were delivered.
    Deactivated,
}

impl<E: std::fmt::Debug> std::fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Application(e) => write!(f, "application error: {e:?}"),
            Self::Timeout => f.write_str("call timed out"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded on the server"),
            Self::UnknownGrainType => f.write_str("the server does not host this grain type"),
            Self::UnknownMethod => f.write_str("unknown method"),
            Self::IncompatibleVersion { ours, theirs } => {
                write!(f, "incompatible interface: ours v{ours}, the server's v{theirs}")
            }
            Self::Overloaded => f.write_str("server overloaded"),
            Self::HandlerPanicked => f.write_str("the grain method panicked"),
            Self::ShuttingDown => f.write_str("the server is shutting down"),
            Self::BadRequest => f.write_str("the server could not decode the call"),
            Self::NotConnected => f.write_str("not connected"),
            Self::ServerUnavailable(s) => write!(f, "required server {s} is unavailable"),
            Self::Disconnected(r) => write!(f, "connection lost: {r}"),
            Self::Encode(e) => write!(f, "could not encode the arguments: {e}"),
            Self::Decode(e) => write!(f, "could not decode the response: {e}"),
            Self::TooLarge { size, max } => write!(f, "call of {size} bytes exceeds {max}"),
            Self::ResponseTooLarge { size, max } => {
                write!(f, "the method ran but its answer of {size} bytes exceeds {max}")
            }
            Self::Unavailable => f.write_str("the grain directory is unavailable (not run)"),
            Self::RedirectLoop => f.write_str("redirected twice (not run)"),
            Self::Unauthorized => f.write_str("not authorized to make this call (not run)"),
            Self::Unbound => {
                f.write_str("the reference is bound to nothing that can call (not run)")
            }
            Self::Deadlock { chain } => {
                f.write_str("deadlock: ")?;
                for (i, g) in chain.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " -> " };
                    write!(f, "{sep}{g}")?;
                }
                f.write_str(" would wait on itself (not run)")
            }
            Self::ChainTooDeep => f.write_str("the chain of grain calls is too deep (not sent)"),
            Self::ObserverGone => {
                f.write_str("the observer is gone (its client closed or is away)")
            }
            Self::StreamLost { received, reason } => {
                write!(f, "the stream's session was lost after {received} items: {reason}")
            }
            Self::Deactivated => f.write_str("the stream's grain activation ended"),
        }
    }
}

impl<E: std::fmt::Debug> std::error::Error for CallError<E> {}

/// What kind of [`CallError`] a call got, without its details: what policies (retry,
/// refresh) and configuration files name. Written in kebab case in files
/// (`"not-connected"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CallErrorKind {
    /// [`CallError::Application`].
    Application,
    /// [`CallError::Timeout`].
    Timeout,
    /// [`CallError::DeadlineExceeded`].
    DeadlineExceeded,
    /// [`CallError::UnknownGrainType`].
    UnknownGrainType,
    /// [`CallError::UnknownMethod`].
    UnknownMethod,
    /// [`CallError::IncompatibleVersion`].
    IncompatibleVersion,
    /// [`CallError::Overloaded`].
    Overloaded,
    /// [`CallError::HandlerPanicked`].
    HandlerPanicked,
    /// [`CallError::ShuttingDown`].
    ShuttingDown,
    /// [`CallError::BadRequest`].
    BadRequest,
    /// [`CallError::NotConnected`].
    NotConnected,
    /// [`CallError::ServerUnavailable`].
    ServerUnavailable,
    /// [`CallError::Disconnected`].
    Disconnected,
    /// [`CallError::Encode`].
    Encode,
    /// [`CallError::Decode`].
    Decode,
    /// [`CallError::TooLarge`].
    TooLarge,
    /// [`CallError::ResponseTooLarge`].
    ResponseTooLarge,
    /// [`CallError::Unavailable`].
    Unavailable,
    /// [`CallError::RedirectLoop`].
    RedirectLoop,
    /// [`CallError::Unauthorized`].
    Unauthorized,
    /// [`CallError::Unbound`].
    Unbound,
    /// [`CallError::Deadlock`].
    Deadlock,
    /// [`CallError::ChainTooDeep`].
    ChainTooDeep,
    /// [`CallError::ObserverGone`].
    ObserverGone,
    /// [`CallError::StreamLost`].
    StreamLost,
    /// [`CallError::Deactivated`].
    Deactivated,
}

impl CallErrorKind {
    /// Whether an error of this kind means the call certainly did not run on the server (see
    /// [`CallError::not_executed`]): the only kinds a retry policy may retry for any method.
    pub fn not_executed(self) -> bool {
        matches!(
            self,
            Self::UnknownGrainType
                | Self::UnknownMethod
                | Self::IncompatibleVersion
                | Self::Overloaded
                | Self::ShuttingDown
                | Self::NotConnected
                | Self::ServerUnavailable
                | Self::Encode
                | Self::TooLarge
                | Self::Unavailable
                | Self::RedirectLoop
                | Self::Unauthorized
                | Self::Unbound
                | Self::Deadlock
                | Self::ChainTooDeep
        )
    }
}

impl<E> CallError<E> {
    /// Its kind.
    pub fn kind(&self) -> CallErrorKind {
        match self {
            Self::Application(_) => CallErrorKind::Application,
            Self::Timeout => CallErrorKind::Timeout,
            Self::DeadlineExceeded => CallErrorKind::DeadlineExceeded,
            Self::UnknownGrainType => CallErrorKind::UnknownGrainType,
            Self::UnknownMethod => CallErrorKind::UnknownMethod,
            Self::IncompatibleVersion { .. } => CallErrorKind::IncompatibleVersion,
            Self::Overloaded => CallErrorKind::Overloaded,
            Self::HandlerPanicked => CallErrorKind::HandlerPanicked,
            Self::ShuttingDown => CallErrorKind::ShuttingDown,
            Self::BadRequest => CallErrorKind::BadRequest,
            Self::NotConnected => CallErrorKind::NotConnected,
            Self::ServerUnavailable(_) => CallErrorKind::ServerUnavailable,
            Self::Disconnected(_) => CallErrorKind::Disconnected,
            Self::Encode(_) => CallErrorKind::Encode,
            Self::Decode(_) => CallErrorKind::Decode,
            Self::TooLarge { .. } => CallErrorKind::TooLarge,
            Self::ResponseTooLarge { .. } => CallErrorKind::ResponseTooLarge,
            Self::Unavailable => CallErrorKind::Unavailable,
            Self::RedirectLoop => CallErrorKind::RedirectLoop,
            Self::Unauthorized => CallErrorKind::Unauthorized,
            Self::Unbound => CallErrorKind::Unbound,
            Self::Deadlock { .. } => CallErrorKind::Deadlock,
            Self::ChainTooDeep => CallErrorKind::ChainTooDeep,
            Self::ObserverGone => CallErrorKind::ObserverGone,
            Self::StreamLost { .. } => CallErrorKind::StreamLost,
            Self::Deactivated => CallErrorKind::Deactivated,
        }
    }

    /// The same error with another application error type; `Application` maps through `f`.
    pub fn map_app<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            Self::Application(e) => CallError::Application(f(e)),
            Self::Timeout => CallError::Timeout,
            Self::DeadlineExceeded => CallError::DeadlineExceeded,
            Self::UnknownGrainType => CallError::UnknownGrainType,
            Self::UnknownMethod => CallError::UnknownMethod,
            Self::IncompatibleVersion { ours, theirs } => {
                CallError::IncompatibleVersion { ours, theirs }
            }
            Self::Overloaded => CallError::Overloaded,
            Self::HandlerPanicked => CallError::HandlerPanicked,
            Self::ShuttingDown => CallError::ShuttingDown,
            Self::BadRequest => CallError::BadRequest,
            Self::NotConnected => CallError::NotConnected,
            Self::ServerUnavailable(s) => CallError::ServerUnavailable(s),
            Self::Disconnected(r) => CallError::Disconnected(r),
            Self::Encode(e) => CallError::Encode(e),
            Self::Decode(e) => CallError::Decode(e),
            Self::TooLarge { size, max } => CallError::TooLarge { size, max },
            Self::ResponseTooLarge { size, max } => CallError::ResponseTooLarge { size, max },
            Self::Unavailable => CallError::Unavailable,
            Self::RedirectLoop => CallError::RedirectLoop,
            Self::Unauthorized => CallError::Unauthorized,
            Self::Unbound => CallError::Unbound,
            Self::Deadlock { chain } => CallError::Deadlock { chain },
            Self::ChainTooDeep => CallError::ChainTooDeep,
            Self::ObserverGone => CallError::ObserverGone,
            Self::StreamLost { received, reason } => CallError::StreamLost { received, reason },
            Self::Deactivated => CallError::Deactivated,
        }
    }

    /// Whether the call certainly did not run on the server (safe to retry anywhere).
    pub fn not_executed(&self) -> bool {
        matches!(
            self,
            Self::UnknownGrainType
                | Self::UnknownMethod
                | Self::IncompatibleVersion { .. }
                | Self::Overloaded
                | Self::ShuttingDown
                | Self::NotConnected
                | Self::ServerUnavailable(_)
                | Self::Encode(_)
                | Self::TooLarge { .. }
                | Self::Unavailable
                | Self::RedirectLoop
                | Self::Unauthorized
                | Self::Unbound
                | Self::Deadlock { .. }
                | Self::ChainTooDeep
        )
    }
}

/// Why a reference could not be made or converted: it names a grain of another interface or
/// type than the one asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The reference is of another interface (`GrainRef::typed`).
    #[error("a reference to a `{found}` grain is not a `{expected}` reference")]
    WrongInterface {
        /// The interface asked for.
        expected: &'static str,
        /// The reference's.
        found: &'static str,
    },
    /// The grain's type does not implement the interface (`Client::grain_by_id`).
    #[error("grain {grain} is not a `{interface}` grain")]
    WrongType {
        /// The grain asked for.
        grain: crate::proto::ids::GrainId,
        /// The interface asked for.
        interface: &'static str,
    },
}
