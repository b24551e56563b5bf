//! Connect tokens: what a backend that authenticated a player gives it to join game servers.
//! A token names the client, the servers it may join, when it was issued and when it expires,
//! carries application data and the session's two keys (client → server, server → client),
//! and is sealed (ChaCha20-Poly1305) with a key the backend shares with the game servers. The
//! player cannot read or change it; a server opens it before it keeps any state for the client.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! public   "GWT" version:u8  key_id:u32  issued:u64  expires:u64  nonce:[u8; 12]
//! sealed   kind:u8  client_id:u64  servers:u8 (len:u8 bytes)*  c2s:[u8; 32]  s2c:[u8; 32]
//!          user_data_len:u16 user_data   + 16-byte tag (the public part is the AAD)
//! ```
//!
//! Sans-IO: the caller passes time (Unix seconds) and randomness (nonce, keys) in.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::addr::ServerAddr;
use super::crypt::Secrets;

/// The token format's version.
pub const TOKEN_VERSION: u8 = 1;
/// The largest sealed token.
pub const MAX_TOKEN_SIZE: usize = 1024;
/// The most application data a token carries.
pub const MAX_USER_DATA: usize = 256;
/// The most servers a token names.
pub const MAX_TOKEN_SERVERS: usize = 32;
const MAGIC: &[u8; 3] = b"GWT";
const PUBLIC_LEN: usize = 3 + 1 + 4 + 8 + 8 + 12;
const TAG_LEN: usize = 16;

/// A key shared by the backend and the game servers, with the id tokens name it by (so a
/// server holding several, during a rotation, picks the right one without trying each).
#[derive(Clone)]
pub struct TokenKey {
    /// Its id.
    pub id: u32,
    key: [u8; 32],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A key from its 32 bytes.
    pub fn new(id: u32, key: [u8; 32]) -> Self {
        Self { id, key }
    }

    /// A key from 64 hexadecimal characters (a key file's line; whitespace around is ignored).
    pub fn from_hex(id: u32, text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.len() != 64 || !t.is_ascii() {
            return Err(TokenError::BadKey);
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| TokenError::BadKey)?;
        }
        Ok(Self { id, key })
    }

    /// The key as 64 hexadecimal characters (a key file's line).
    pub fn to_hex(&self) -> String {
        self.key.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.key).expect("a 32-byte key"))
    }
}

/// Whom a token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenKind {
    /// A player, issued by the backend.
    #[default]
    Player,
    /// A game server's own grain-to-grain client, minted by that server with the shared key;
    /// its user data is the server's id.
    Server,
}

/// What a token says, once opened.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// Whom it was issued to.
    pub kind: TokenKind,
    /// The client, as the backend knows it.
    pub client_id: u64,
    /// The servers it may join (as each names itself: its advertised address).
    pub servers: Vec<ServerAddr>,
    /// When it was issued, Unix seconds.
    pub issued: u64,
    /// When it expires, Unix seconds.
    pub expires: u64,
    /// The application's data (at most [`MAX_USER_DATA`] bytes).
    pub user_data: Vec<u8>,
    /// The session key for packets from the client.
    pub client_to_server: [u8; 32],
    /// The session key for packets to the client.
    pub server_to_client: [u8; 32],
}

impl std::fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectToken")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("servers", &self.servers)
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .field("user_data", &self.user_data.len())
            .finish_non_exhaustive()
    }
}

impl ConnectToken {
    /// The session secrets it carries.
    pub fn secrets(&self) -> Secrets {
        Secrets { client_to_server: self.client_to_server, server_to_client: self.server_to_client }
    }
}

/// What the player receives from the backend (over its own secure channel: it holds the
/// session secrets): the sealed token it presents to servers, which it cannot read, and in the
/// clear what it needs itself — its id, the expiry, the servers it may join and the secrets.
///
/// Layout: `"GWP" version:u8 client_id:u64 expires:u64 c2s:[u8; 32] s2c:[u8; 32]
/// servers:u8 (len:u8 bytes)* sealed_len:u16 sealed`.
#[derive(Clone, PartialEq, Eq)]
pub struct PlayerToken {
    /// The client id the token names.
    pub client_id: u64,
    /// When it expires, Unix seconds (a session opened before lives on).
    pub expires: u64,
    /// The servers it may join.
    pub servers: Vec<ServerAddr>,
    /// The session secrets.
    pub secrets: Secrets,
    /// The sealed token, presented in the handshake.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for PlayerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayerToken")
            .field("client_id", &self.client_id)
            .field("expires", &self.expires)
            .field("servers", &self.servers)
            .field("sealed", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

const PLAYER_MAGIC: &[u8; 3] = b"GWP";
/// The largest player token.
pub const MAX_PLAYER_TOKEN_SIZE: usize = 2048;

impl PlayerToken {
    /// Seals `token` with `key` and `nonce` and wraps it for the player.
    pub fn new(token: &ConnectToken, key: &TokenKey, nonce: [u8; 12]) -> Result<Self, TokenError> {
        Ok(Self {
            client_id: token.client_id,
            expires: token.expires,
            servers: token.servers.clone(),
            secrets: token.secrets(),
            sealed: token.seal(key, nonce)?,
        })
    }

    /// A fresh token (what [`ConnectToken::issue`](crate::auth) builds): `random` supplies
    /// the two session secrets and the sealing nonce (76 bytes: draw them from the OS).
    #[allow(clippy::too_many_arguments)] // the token's fields, each its own
    pub fn mint(
        key: &TokenKey,
        kind: TokenKind,
        client_id: u64,
        servers: &[ServerAddr],
        issued: u64,
        valid_for_secs: u64,
        user_data: &[u8],
        random: &[u8; 76],
    ) -> Result<Self, TokenError> {
        let part = |at: usize| -> [u8; 32] { random[at..at + 32].try_into().expect("32 bytes") };
        let token = ConnectToken {
            kind,
            client_id,
            servers: servers.to_vec(),
            issued,
            expires: issued.saturating_add(valid_for_secs.max(1)),
            user_data: user_data.to_vec(),
            client_to_server: part(0),
            server_to_client: part(32),
        };
        Self::new(&token, key, random[64..].try_into().expect("12 bytes"))
    }

    /// Its bytes, for the player (a file, an HTTPS response body).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.sealed.len());
        out.extend_from_slice(PLAYER_MAGIC);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.expires.to_le_bytes());
        out.extend_from_slice(&self.secrets.client_to_server);
        out.extend_from_slice(&self.secrets.server_to_client);
        out.push(self.servers.len().min(MAX_TOKEN_SERVERS) as u8);
        for s in self.servers.iter().take(MAX_TOKEN_SERVERS) {
            let name = s.to_string();
            out.push(name.len().min(255) as u8);
            out.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        }
        out.extend_from_slice(&(self.sealed.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }

    /// Its bytes as hexadecimal text (a token file's one line).
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a token from hexadecimal text (what [`Self::to_hex`] wrote; whitespace around is
    /// ignored).
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if !t.is_ascii() || !t.len().is_multiple_of(2) || t.len() > 2 * MAX_PLAYER_TOKEN_SIZE {
            return Err(TokenError::Malformed);
        }
        let bytes: Result<Vec<u8>, _> =
            (0..t.len()).step_by(2).map(|i| u8::from_str_radix(&t[i..i + 2], 16)).collect();
        Self::from_bytes(&bytes.map_err(|_| TokenError::Malformed)?)
    }

    /// Reads a player token (what [`Self::to_bytes`] wrote). Checks its form, not the seal
    /// (only servers hold the key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() > MAX_PLAYER_TOKEN_SIZE {
            return Err(TokenError::Malformed);
        }
        let mut r = Reader(bytes);
        if r.take(3)? != PLAYER_MAGIC || r.take(1)?[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let client_id = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let expires = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let client_to_server = r.take(32)?.try_into().expect("32 bytes");
        let server_to_client = r.take(32)?.try_into().expect("32 bytes");
        let servers = r.servers()?;
        let len = usize::from(u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")));
        if !(PUBLIC_LEN + TAG_LEN..=MAX_TOKEN_SIZE).contains(&len) {
            return Err(TokenError::Malformed);
        }
        let sealed = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(TokenError::Malformed);
        }
        let secrets = Secrets { client_to_server, server_to_client };
        Ok(Self { client_id, expires, servers, secrets, sealed })
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of ours (bad magic, version, length or fields).
    #[error("not a connect token")]
    Malformed,
    /// Sealed with a key this server does not hold.
    #[error("sealed with an unknown key")]
    UnknownKey,
    /// It does not open with the key it names (forged, altered, or another key of that id).
    #[error("the token does not open with its key (wrong key or altered)")]
    BadSeal,
    /// Its expiry passed.
    #[error("the token expired")]
    Expired,
    /// This server is not among the servers it names.
    #[error("the token does not name this server")]
    NotForThisServer,
    /// It names too many servers, too long a name or too much user data to seal.
    #[error("the token holds more than a token may")]
    TooLarge,
    /// A key that is not 64 hexadecimal characters.
    #[error("a key is 64 hexadecimal characters")]
    BadKey,
    /// The system's random number generator failed (issuing).
    #[error("no randomness for the token's keys and nonce")]
    NoRandomness,
}

impl ConnectToken {
    /// Seals it with `key` and `nonce` (12 bytes, never reused with one key: draw them at
    /// random).
    pub fn seal(&self, key: &TokenKey, nonce: [u8; 12]) -> Result<Vec<u8>, TokenError> {
        if self.servers.len() > MAX_TOKEN_SERVERS || self.user_data.len() > MAX_USER_DATA {
            return Err(TokenError::TooLarge);
        }
        let mut out = Vec::with_capacity(PUBLIC_LEN + 128 + self.user_data.len());
        out.extend_from_slice(MAGIC);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&key.id.to_le_bytes());
        out.extend_from_slice(&self.issued.to_le_bytes());
        out.extend_from_slice(&self.expires.to_le_bytes());
        out.extend_from_slice(&nonce);
        let mut private = Vec::with_capacity(128 + self.user_data.len());
        private.push(match self.kind {
            TokenKind::Player => 0,
            TokenKind::Server => 1,
        });
        private.extend_from_slice(&self.client_id.to_le_bytes());
        private.push(self.servers.len() as u8);
        for s in &self.servers {
            let name = s.to_string();
            let len = u8::try_from(name.len()).map_err(|_| TokenError::TooLarge)?;
            private.push(len);
            private.extend_from_slice(name.as_bytes());
        }
        private.extend_from_slice(&self.client_to_server);
        private.extend_from_slice(&self.server_to_client);
        private.extend_from_slice(&(self.user_data.len() as u16).to_le_bytes());
        private.extend_from_slice(&self.user_data);
        if PUBLIC_LEN + private.len() + TAG_LEN > MAX_TOKEN_SIZE {
            return Err(TokenError::TooLarge);
        }
        key.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..PUBLIC_LEN]),
                &mut private,
            )
            .map_err(|_| TokenError::TooLarge)?;
        out.extend_from_slice(&private);
        Ok(out)
    }

    /// Opens a sealed token with the key it names among `keys`, at `now` (Unix seconds). The
    /// cheap checks (size, magic, version, expiry, key id) come before the decryption.
    pub fn open(sealed: &[u8], keys: &[TokenKey], now: u64) -> Result<Self, TokenError> {
        if sealed.len() < PUBLIC_LEN + TAG_LEN || sealed.len() > MAX_TOKEN_SIZE {
            return Err(TokenError::Malformed);
        }
        if &sealed[..3] != MAGIC || sealed[3] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let u32_at = |i: usize| u32::from_le_bytes(sealed[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(sealed[i..i + 8].try_into().expect("8 bytes"));
        let (key_id, issued, expires) = (u32_at(4), u64_at(8), u64_at(16));
        if now >= expires {
            return Err(TokenError::Expired);
        }
        let key = keys.iter().find(|k| k.id == key_id).ok_or(TokenError::UnknownKey)?;
        let nonce: [u8; 12] = sealed[24..36].try_into().expect("12 bytes");
        let mut private = sealed[PUBLIC_LEN..].to_vec();
        let plain = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&sealed[..PUBLIC_LEN]),
                &mut private,
            )
            .map_err(|_| TokenError::BadSeal)?;
        let mut r = Reader(plain);
        let kind = match r.take(1)?[0] {
            0 => TokenKind::Player,
            1 => TokenKind::Server,
            _ => return Err(TokenError::Malformed),
        };
        let client_id = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let servers = r.servers()?;
        let client_to_server = r.take(32)?.try_into().expect("32 bytes");
        let server_to_client = r.take(32)?.try_into().expect("32 bytes");
        let ud_len = usize::from(u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")));
        if ud_len > MAX_USER_DATA {
            return Err(TokenError::Malformed);
        }
        let user_data = r.take(ud_len)?.to_vec();
        if !r.0.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            kind,
            client_id,
            servers,
            issued,
            expires,
            user_data,
            client_to_server,
            server_to_client,
        })
    }

    /// Whether it names `server` (this server's advertised address) among its servers.
    pub fn names(&self, server: &ServerAddr) -> bool {
        self.servers.contains(server)
    }
}

/// A sealed token's identity (its nonce, unique per token): what the replay guard tracks.
/// `sealed` must be at least a token's public part long (as any token that opened is).
pub fn token_id(sealed: &[u8]) -> [u8; 12] {
    let mut id = [0u8; 12];
    if let Some(n) = sealed.get(24..36) {
        id.copy_from_slice(n);
    }
    id
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn servers(&mut self) -> Result<Vec<ServerAddr>, TokenError> {
        let count = usize::from(self.take(1)?[0]);
        if count > MAX_TOKEN_SERVERS {
            return Err(TokenError::Malformed);
        }
        let mut servers = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(self.take(1)?[0]);
            let name = std::str::from_utf8(self.take(len)?).map_err(|_| TokenError::Malformed)?;
            servers.push(name.parse().map_err(|_| TokenError::Malformed)?);
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ConnectToken {
        ConnectToken {
            kind: TokenKind::Player,
            client_id: 42,
            servers: vec![
                "10.0.0.1:7000".parse().unwrap(),
                "eu-1.example.net:7777".parse().unwrap(),
            ],
            issued: 1_000,
            expires: 1_030,
            user_data: b"player:ann".to_vec(),
            client_to_server: [1; 32],
            server_to_client: [2; 32],
        }
    }

    fn key(id: u32, b: u8) -> TokenKey {
        TokenKey::new(id, [b; 32])
    }

    #[test]
    fn a_sealed_token_opens_with_its_key_until_it_expires() {
        let t = token();
        let sealed = t.seal(&key(7, 9), [3; 12]).unwrap();
        assert!(sealed.len() <= MAX_TOKEN_SIZE);
        assert_eq!(ConnectToken::open(&sealed, &[key(7, 9)], 1_029), Ok(t.clone()));
        assert!(t.names(&"10.0.0.1:7000".parse().unwrap()));
        assert!(!t.names(&"10.0.0.9:7000".parse().unwrap()));
        // Rotation: the server holds the old and the new key; the token names its own.
        assert_eq!(ConnectToken::open(&sealed, &[key(8, 1), key(7, 9)], 1_000), Ok(t));
        assert_eq!(ConnectToken::open(&sealed, &[key(7, 9)], 1_030), Err(TokenError::Expired));
        assert_eq!(ConnectToken::open(&sealed, &[key(8, 9)], 1_000), Err(TokenError::UnknownKey));
        assert_eq!(ConnectToken::open(&sealed, &[key(7, 1)], 1_000), Err(TokenError::BadSeal));
        // The public part is authenticated too: a later expiry does not open.
        let mut later = sealed.clone();
        later[16] = later[16].wrapping_add(100);
        assert_eq!(ConnectToken::open(&later, &[key(7, 9)], 1_000), Err(TokenError::BadSeal));
        // Any flipped bit of the sealed part is caught.
        for i in PUBLIC_LEN..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(ConnectToken::open(&bad, &[key(7, 9)], 1_000), Err(TokenError::BadSeal));
        }
        // Truncated, padded, foreign: malformed, before any decryption.
        for bad in [&sealed[..PUBLIC_LEN], &[0u8; 40][..], &vec![0u8; MAX_TOKEN_SIZE + 1][..]] {
            assert_eq!(ConnectToken::open(bad, &[key(7, 9)], 1_000), Err(TokenError::Malformed));
        }
    }

    #[test]
    fn a_player_token_round_trips_and_holds_the_sealed_token() {
        let t = token();
        let p = PlayerToken::new(&t, &key(7, 9), [3; 12]).unwrap();
        let bytes = p.to_bytes();
        let back = PlayerToken::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!((back.client_id, back.expires, &back.servers), (42, 1_030, &t.servers));
        assert_eq!(back.secrets, t.secrets());
        assert_eq!(ConnectToken::open(&back.sealed, &[key(7, 9)], 1_000), Ok(t));
        for cut in 0..bytes.len() {
            assert_eq!(PlayerToken::from_bytes(&bytes[..cut]), Err(TokenError::Malformed));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(PlayerToken::from_bytes(&long), Err(TokenError::Malformed));
        assert_eq!(PlayerToken::from_bytes(&bytes[3..]), Err(TokenError::Malformed));
        assert_eq!(PlayerToken::from_hex(&format!("{}\n", p.to_hex())), Ok(p.clone()));
        assert_eq!(PlayerToken::from_hex("abc"), Err(TokenError::Malformed));
        assert_eq!(PlayerToken::from_hex("zz"), Err(TokenError::Malformed));
    }

    #[test]
    fn what_does_not_fit_a_token_is_refused_and_keys_parse_from_hex() {
        let mut t = token();
        t.user_data = vec![0; MAX_USER_DATA + 1];
        assert_eq!(t.seal(&key(1, 1), [0; 12]), Err(TokenError::TooLarge));
        let mut t = token();
        t.servers =
            (0..=MAX_TOKEN_SERVERS).map(|i| format!("10.0.0.{i}:1").parse().unwrap()).collect();
        assert_eq!(t.seal(&key(1, 1), [0; 12]), Err(TokenError::TooLarge));
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let k = TokenKey::from_hex(3, hex).unwrap();
        assert_eq!(k.to_hex(), hex.trim().to_lowercase());
        assert_eq!(k.key[1], 0x11);
        assert_eq!(k.key[31], 0xff);
        assert_eq!(TokenKey::from_hex(3, "abc").map(|_| ()), Err(TokenError::BadKey));
        assert_eq!(TokenKey::from_hex(3, &"zz".repeat(32)).map(|_| ()), Err(TokenError::BadKey));
    }
}
