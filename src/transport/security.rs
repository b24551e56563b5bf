//! How an endpoint authenticates sessions: a server's keys, the names it answers to and its
//! approval hook; a client's connect token. Handed to the endpoint's task when it starts (and,
//! for a client's token, replaced with [`DriverCmd::SetToken`](super::laminar::DriverCmd)).

use std::fmt;
use std::sync::Arc;

use crate::proto::addr::ServerAddr;
use crate::proto::token::{PlayerToken, TokenKey};

/// Who a session's client is, as its verified connect token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client id the backend put in the token.
    pub client_id: u64,
    /// The token's application data (at most `MAX_USER_DATA` bytes).
    pub user_data: Arc<[u8]>,
}

/// A server's decision about a client whose token it verified: `Ok` admits it, `Err(code)`
/// refuses it, and the client's connect fails with `Rejection::Application { code }`.
///
/// Runs in the endpoint's task for each new session, before any state exists for it: keep it
/// quick (a lookup, not I/O).
pub trait Approve: Send + Sync + 'static {
    /// Decides about `client`.
    fn approve(&self, client: &ClientIdentity) -> Result<(), u16>;
}

impl<F> Approve for F
where
    F: Fn(&ClientIdentity) -> Result<(), u16> + Send + Sync + 'static,
{
    fn approve(&self, client: &ClientIdentity) -> Result<(), u16> {
        self(client)
    }
}

/// An endpoint's authentication (none: a trusted network, as before tokens).
#[derive(Clone, Default)]
pub(crate) struct Security {
    /// Server: tokens must be sealed with one of these keys (none: tokens are not taken).
    pub(crate) keys: Vec<TokenKey>,
    /// Server: the names it answers to; a token must name one of them.
    pub(crate) names: Vec<ServerAddr>,
    /// Server: tokens tracked at once by the replay guard.
    pub(crate) tokens_remembered: usize,
    /// Server: the application's approval.
    pub(crate) approve: Option<Arc<dyn Approve>>,
    /// Client: the token presented to every server.
    pub(crate) token: Option<Arc<PlayerToken>>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("keys", &self.keys)
            .field("names", &self.names)
            .field("approve", &self.approve.is_some())
            .field("token", &self.token)
            .finish()
    }
}
