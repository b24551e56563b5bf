//! How an endpoint authenticates sessions: a server's keys, the names it answers to and its
//! approval hook; a client's connect token. Handed to the endpoint's task when it starts (and,
//! for a client's token, replaced with [`DriverCmd::SetToken`](super::laminar::DriverCmd)).

use std::fmt;
use std::sync::Arc;

use crate::proto::addr::ServerAddr;
use crate::proto::gate::Admitted;
use crate::proto::ids::ServerId;
use crate::proto::token::{PlayerToken, TokenKey, TokenKind};

/// Who a session's client is, as its verified connect token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client id the backend put in the token.
    pub client_id: u64,
    /// The token's application data (at most `MAX_USER_DATA` bytes).
    pub user_data: Arc<[u8]>,
    /// For a token a game server minted for its own grain-to-grain client: that server's id.
    pub server_id: Option<ServerId>,
}

impl ClientIdentity {
    /// The identity a verified token gives.
    pub(crate) fn of(admitted: &Admitted) -> Self {
        let server_id = (admitted.kind == TokenKind::Server)
            .then(|| ServerId::new(String::from_utf8_lossy(&admitted.user_data).as_ref()));
        Self {
            client_id: admitted.client_id,
            user_data: admitted.user_data.as_slice().into(),
            server_id,
        }
    }
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
    /// Both: the cluster tag (a client says it in `CONNECT`; a server refuses another). 0: none.
    pub(crate) cluster: u64,
    /// Client of a game server (grain-to-grain): mint a server token per connection with the
    /// fleet's key, naming the address connected to and carrying this server's id.
    pub(crate) mint: Option<(TokenKey, ServerId)>,
}

/// How long a token minted for one connection is valid (it is presented at once).
const MINTED_FOR_SECS: u64 = 60;

impl Security {
    /// The token to present to `addr`: minted for it, or the one the client was given.
    pub(crate) fn token_for(
        mint: Option<&(TokenKey, ServerId)>,
        given: Option<&Arc<PlayerToken>>,
        addr: std::net::SocketAddr,
    ) -> Option<Arc<PlayerToken>> {
        let Some((key, id)) = mint else { return given.cloned() };
        use ring::rand::SecureRandom;
        let mut random = [0u8; 76];
        if ring::rand::SystemRandom::new().fill(&mut random).is_err() {
            tracing::warn!("no randomness to mint a server token; connecting without one");
            return None;
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let servers = [ServerAddr::from(addr)];
        let kind = TokenKind::Server;
        PlayerToken::mint(
            key,
            kind,
            0,
            &servers,
            unix,
            MINTED_FOR_SECS,
            id.as_str().as_bytes(),
            &random,
        )
        .inspect_err(|e| tracing::warn!(%e, "could not mint a server token"))
        .ok()
        .map(Arc::new)
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("keys", &self.keys)
            .field("names", &self.names)
            .field("approve", &self.approve.is_some())
            .field("token", &self.token)
            .field("mint", &self.mint.as_ref().map(|(_, id)| id))
            .finish()
    }
}
