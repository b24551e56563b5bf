//! Where a server is, as configured: an IP address and port, or a name to resolve. Parsing
//! and comparing only; resolving is the client's (it does I/O).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a server is: an IP address and port, or a `host:port` name resolved on every
/// connect attempt (so a server that moves is found at its new address on reconnect). A name
/// resolves to addresses of both families; the client takes the first of its socket's family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr(Where);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Where {
    Ip(SocketAddr),
    Name(Arc<str>, u16),
}

/// A server address that does not parse: neither `ip:port` nor `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a server address (ip:port or host:port): {0:?}")]
pub struct AddrParseError(String);

impl ServerAddr {
    /// The IP address, if it is one (not a name).
    pub fn ip(&self) -> Option<SocketAddr> {
        match &self.0 {
            Where::Ip(a) => Some(*a),
            Where::Name(..) => None,
        }
    }

    /// The host name and port, if it is a name.
    pub fn name(&self) -> Option<(&str, u16)> {
        match &self.0 {
            Where::Ip(_) => None,
            Where::Name(host, port) => Some((host, *port)),
        }
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> Self {
        Self(Where::Ip(a))
    }
}

impl std::str::FromStr for ServerAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let bad = || AddrParseError(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if host.is_empty() || host.len() > 253 || !host.chars().all(name_char) {
            return Err(bad());
        }
        Ok(Self(Where::Name(host.into(), port)))
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Where::Ip(a) => a.fmt(f),
            Where::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl PartialEq<SocketAddr> for ServerAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.ip() == Some(*other)
    }
}

impl Serialize for ServerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_and_print_back() {
        for s in ["127.0.0.1:7000", "[::1]:7000", "localhost:7000", "eu-1.example.net:1"] {
            let a: ServerAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            let json = serde_json_like(&a);
            assert_eq!(json, s);
        }
        let ip: ServerAddr = "10.0.0.1:7".parse().unwrap();
        assert_eq!(ip.ip(), Some("10.0.0.1:7".parse().unwrap()));
        assert_eq!(ip.name(), None);
        let name: ServerAddr = "game.example:7".parse().unwrap();
        assert_eq!((name.ip(), name.name()), (None, Some(("game.example", 7))));
        for bad in ["localhost", "host:port", ":7000", "a b:1", "", "x:70000", "[::1]"] {
            assert!(bad.parse::<ServerAddr>().is_err(), "{bad:?} parsed");
        }
    }

    /// What serde writes for it (postcard keeps strings as they are).
    fn serde_json_like(a: &ServerAddr) -> String {
        let bytes = postcard::to_allocvec(a).unwrap();
        let back: ServerAddr = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, a);
        back.to_string()
    }
}
