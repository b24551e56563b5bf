//! Players on the open internet. A backend that authenticated a player issues it a short-lived
//! connect token ([`ConnectToken::issue`]) sealed with a key it shares with the game servers
//! ([`generate_key`], key files of 64 hex characters); the player presents it
//! (`ClientBuilder::token`), servers that hold the key (`ServerBuilder::token_keys`,
//! [`AuthConfig`]) verify it before keeping any state, may [`Approve`] the client, protect
//! every packet of its session with the token's secrets, and tell grains who calls
//! ([`caller`], [`Caller`]; `Host::authorize`). GUIDE.md's security model says what is
//! protected and what is not.
//!
//! ```
//! use std::time::Duration;
//! use grainwire::auth::{ConnectToken, PlayerToken, TokenKey};
//! let key = TokenKey::from_hex(1, &"ab".repeat(32))?;
//! let servers = ["10.0.0.1:7777".parse()?];
//! let token = ConnectToken::issue(&key, 42, &servers, Duration::from_secs(30), b"ann")?;
//! let bytes = token.to_bytes(); // for the player, over the backend's HTTPS
//! let player = PlayerToken::from_bytes(&bytes)?;
//! // What a server does with what the player presents:
//! let opened = ConnectToken::open(&player.sealed, &[key], grainwire::auth::unix_now())?;
//! assert_eq!((opened.client_id, opened.user_data.as_slice()), (42, &b"ann"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

pub use crate::proto::addr::ServerAddr;
pub use crate::proto::crypt::Secrets;
pub use crate::proto::token::{
    ConnectToken, MAX_PLAYER_TOKEN_SIZE, MAX_TOKEN_SERVERS, MAX_TOKEN_SIZE, MAX_USER_DATA,
    PlayerToken, TokenError, TokenKey, TokenKind,
};
pub use crate::server::{AuthConfig, CallInfo, Caller, KeyError, KeyFile, caller};
pub use crate::transport::{Approve, ClientIdentity};

/// Now, in Unix seconds (what tokens' times are in).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh random key with `id` (what a backend and its game servers share; write it to the
/// key files with [`TokenKey::to_hex`]).
pub fn generate_key(id: u32) -> Result<TokenKey, TokenError> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| TokenError::NoRandomness)?;
    Ok(TokenKey::new(id, key))
}

impl ConnectToken {
    /// Issues a sealed token for `client_id` to join any of `servers` (their advertised
    /// addresses) within `valid_for` from now, carrying `user_data` (at most
    /// [`MAX_USER_DATA`] bytes) and fresh random session keys; sealed with `key` under a random
    /// nonce. What the backend gives the player ([`PlayerToken::to_bytes`]).
    pub fn issue(
        key: &TokenKey,
        client_id: u64,
        servers: &[ServerAddr],
        valid_for: Duration,
        user_data: &[u8],
    ) -> Result<PlayerToken, TokenError> {
        let mut random = [0u8; 76];
        SystemRandom::new().fill(&mut random).map_err(|_| TokenError::NoRandomness)?;
        let (kind, valid) = (TokenKind::Player, valid_for.as_secs());
        PlayerToken::mint(key, kind, client_id, servers, unix_now(), valid, user_data, &random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_open_differ_each_time_and_expire() {
        let key = TokenKey::new(9, [7; 32]);
        let servers = ["10.0.0.1:7777".parse().unwrap()];
        let a = ConnectToken::issue(&key, 1, &servers, Duration::from_secs(30), b"x").unwrap();
        let b = ConnectToken::issue(&key, 1, &servers, Duration::from_secs(30), b"x").unwrap();
        assert_ne!(a, b, "fresh nonce and keys");
        let t = ConnectToken::open(&a.sealed, std::slice::from_ref(&key), unix_now()).unwrap();
        let u = ConnectToken::open(&b.sealed, std::slice::from_ref(&key), unix_now()).unwrap();
        assert_eq!((a.client_id, a.expires, a.secrets.clone()), (1, t.expires, t.secrets()));
        assert_ne!(t.client_to_server, u.client_to_server);
        assert_ne!(t.client_to_server, t.server_to_client);
        assert_eq!(t.expires - t.issued, 30);
        assert_eq!(ConnectToken::open(&a.sealed, &[key], t.expires), Err(TokenError::Expired));
    }
}
