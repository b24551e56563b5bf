//! Key and token files for the examples: a key file holds one 32-byte key as 64 hex
//! characters on one line (`openssl rand -hex 32 > key.hex`); a token file holds a player
//! token as hex on one line.

use std::path::Path;

use grainwire::auth::{PlayerToken, TokenKey};

/// Parses `[ID=]FILE` (the key's id defaults to 1) and reads the key.
pub(crate) fn read_key(arg: &str) -> Result<TokenKey, String> {
    let (id, file) = match arg.split_once('=') {
        Some((id, file)) if id.parse::<u32>().is_ok() => (id.parse().unwrap_or(1), file),
        _ => (1, arg),
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("key file {file}: {e}"))?;
    TokenKey::from_hex(id, &text).map_err(|e| format!("key file {file}: {e}"))
}

/// Reads a token file.
#[allow(dead_code)] // the server reads keys only
pub(crate) fn read_token(file: &Path) -> Result<PlayerToken, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("token file {}: {e}", file.display()))?;
    PlayerToken::from_hex(&text).map_err(|e| format!("token file {}: {e}", file.display()))
}
