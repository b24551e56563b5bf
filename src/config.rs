//! Options, with documented defaults. Every struct loads from TOML or JSON ([`ConfigFile`]:
//! missing fields take their defaults, durations are human-readable, unknown fields are
//! refused by name) and is checked when used.
//! The transport's options live with the sans-IO core that reads them (`proto`); the client's
//! and the server's are in [`crate::client`] and [`crate::server`].

pub(crate) use crate::proto::config::duration;
pub use crate::proto::config::{ConfigError, MAX_STREAM_WINDOW, TransportConfig};

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a configuration could not be read: the file, or the text (TOML and JSON name the field
/// and the place; unknown fields are refused by name).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text does not describe the options (a field unknown, of the wrong type, ...).
    #[error("{origin}: {message}")]
    Invalid {
        /// The file, or `toml` / `json` / `connection string` for text.
        origin: String,
        /// What is wrong, and where.
        message: String,
    },
    /// The file's extension is neither `.toml` nor `.json`.
    #[error("{0}: unknown configuration format (use .toml or .json)")]
    Format(String),
}

/// Options that load from and save to TOML or JSON: every field optional (its default when
/// absent), durations human-readable (`"250ms"`, `"5s"`), unknown fields refused by name.
/// Implemented by `ClientConfig`, `ServerConfig` and [`TransportConfig`].
pub trait ConfigFile: Serialize + DeserializeOwned {
    /// From TOML text.
    fn from_toml(text: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| invalid("toml", e))
    }

    /// From JSON text.
    fn from_json(text: &str) -> Result<Self, ConfigFileError> {
        serde_json::from_str(text).map_err(|e| invalid("json", e))
    }

    /// From a `.toml` or `.json` file.
    fn load(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigFileError::Io { path: name.clone(), source })?;
        let parsed = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| e.to_string()),
            Some("json") => serde_json::from_str(&text).map_err(|e| e.to_string()),
            _ => return Err(ConfigFileError::Format(name)),
        };
        parsed.map_err(|message| ConfigFileError::Invalid { origin: name, message })
    }

    /// As TOML text (every field, defaults included).
    fn to_toml(&self) -> String {
        toml::to_string(self).expect("options always serialize to TOML")
    }

    /// As JSON text (every field, defaults included).
    fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("options always serialize to JSON")
    }
}

fn invalid(origin: &str, e: impl std::fmt::Display) -> ConfigFileError {
    ConfigFileError::Invalid { origin: origin.into(), message: e.to_string() }
}

impl ConfigFile for TransportConfig {}
