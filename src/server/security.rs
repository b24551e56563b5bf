//! Who may connect to a server: the explicit choice between a trusted network and connect
//! tokens, and the keys tokens are sealed with (see GUIDE.md's security model).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::proto::gate::DEFAULT_TOKENS_REMEMBERED;
use crate::proto::token::{TokenError, TokenKey};

/// How a server admits clients. There is no silent default in a configuration file's samples:
/// they say `mode = "trusted"` or `mode = "tokens"`; in code, [`ServerConfig`] defaults to
/// `Trusted` (what every server was before tokens) and a server bound to a non-loopback
/// address without tokens says so in its log.
///
/// [`ServerConfig`]: super::ServerConfig
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// Anyone who can send a datagram may connect and call any grain; packets travel in the
    /// clear. For trusted networks only: a LAN, a private network between servers, tests.
    #[default]
    Trusted,
    /// Clients must present a connect token sealed with one of `keys` and naming this server;
    /// every packet of their session is encrypted and authenticated.
    Tokens {
        /// The keys tokens may be sealed with (several during a rotation).
        keys: Vec<KeyFile>,
        /// Tokens the replay guard binds to the address that proved them, at once (each until
        /// it expires; 4 per client id; beyond, the soonest to expire is forgotten). Default
        /// 65,536.
        #[serde(default = "default_remembered")]
        tokens_remembered: usize,
    },
}

fn default_remembered() -> usize {
    DEFAULT_TOKENS_REMEMBERED
}

/// A key in a file: 64 hexadecimal characters on one line, and the id tokens name it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The key's id (tokens carry it; a server holding several picks by it).
    pub id: u32,
    /// The file.
    pub file: PathBuf,
}

/// A key that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("key file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("key file {path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        error: TokenError,
    },
}

impl KeyFile {
    /// Reads the key.
    pub fn load(&self) -> Result<TokenKey, KeyError> {
        let text = std::fs::read_to_string(&self.file)
            .map_err(|error| KeyError::Read { path: self.file.clone(), error })?;
        TokenKey::from_hex(self.id, &text)
            .map_err(|error| KeyError::Parse { path: self.file.clone(), error })
    }
}

impl AuthConfig {
    /// The keys it names, read from their files (none for `Trusted`).
    pub fn load_keys(&self) -> Result<Vec<TokenKey>, KeyError> {
        match self {
            Self::Trusted => Ok(Vec::new()),
            Self::Tokens { keys, .. } => keys.iter().map(KeyFile::load).collect(),
        }
    }

    /// Tokens the replay guard tracks at once.
    pub fn tokens_remembered(&self) -> usize {
        match self {
            Self::Trusted => DEFAULT_TOKENS_REMEMBERED,
            Self::Tokens { tokens_remembered, .. } => *tokens_remembered,
        }
    }
}
