//! The handshake budgets: fixed tables of token buckets, for unproven traffic per source
//! address and port, and for proven `CONNECT`s per address.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::address_key;
use crate::proto::siphash::siphash24;

/// Buckets of a [`HandshakeLimiter`]'s table for unproven traffic (per source address and
/// port): a fixed table, whatever the number of strangers.
pub const LIMITER_BUCKETS: usize = 65_536;
/// Buckets of its table for proven `CONNECT`s (per address).
pub const PROVEN_BUCKETS: usize = 4096;

/// Token buckets in a fixed table indexed by a keyed hash: strangers cost no memory, and two
/// keys that share a bucket share its budget (an attacker cannot choose which: the key is
/// secret).
#[derive(Debug, Clone)]
struct Buckets {
    k0: u64,
    k1: u64,
    rate: f32,
    /// Tokens and the time of their last refill (milliseconds since the epoch), per bucket.
    table: Box<[(f32, u32)]>,
}

impl Buckets {
    fn new(secret: (u64, u64), rate: u32, size: usize) -> Self {
        let rate = rate.max(1) as f32;
        Self { k0: secret.0, k1: secret.1, rate, table: vec![(rate, 0); size].into_boxed_slice() }
    }

    /// Spends a token of `key`'s bucket at `ms`, if it has one.
    fn allow(&mut self, ms: u32, key: &[u8]) -> bool {
        let i = (siphash24(self.k0, self.k1, key) % self.table.len() as u64) as usize;
        let (tokens, at) = &mut self.table[i];
        let elapsed = ms.saturating_sub(*at) as f32 / 1000.0;
        *tokens = (*tokens + elapsed * self.rate).min(self.rate);
        *at = ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bytes of an address key (and a port) that a bucket is chosen by.
fn key_bytes(ip: IpAddr, port: Option<u16>, buf: &mut [u8; 18]) -> usize {
    let n = match address_key(ip) {
        IpAddr::V4(a) => {
            buf[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            buf[..16].copy_from_slice(&a.octets());
            16
        }
    };
    match port {
        Some(p) => {
            buf[n..n + 2].copy_from_slice(&p.to_le_bytes());
            n + 2
        }
        None => n,
    }
}

/// The budgets of handshake packets, checked before the gate does any work for them:
///
/// * **unproven** traffic (`HELLO`s, junk, stale or forged cookies; from strangers and from
///   addresses with sessions alike): a token bucket per source *address and port*, `rate` per
///   second. A spoofer who knows a victim's address but not the port it uses empties other
///   buckets, not the victim's; one who knows the port too makes the server answer `HELLO`s
///   in the victim's name, and those answers carry cookies the victim may use (a cookie does
///   not depend on the attempt);
/// * **proven** traffic (a `CONNECT` whose cookie is valid: its sender receives at its
///   address): a token bucket per address (see [`address_key`]), `rate` per second. Only whoever
///   receives at an address can spend its budget.
///
/// So spoofed `HELLO`s never keep a real client out; an address that really floods spends only
/// its own budgets.
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    epoch: Instant,
    unproven: Buckets,
    proven: Buckets,
}

impl HandshakeLimiter {
    /// A limiter allowing `rate` handshake packets per second per source address and port (and
    /// as many at once), and `rate` proven `CONNECT`s per second per address, with the hash
    /// secret `(k0, k1)` and its clock starting at `epoch`.
    pub fn new(secret: (u64, u64), epoch: Instant, rate: u32) -> Self {
        let other = (secret.0 ^ 0x9e37_79b9_7f4a_7c15, secret.1.rotate_left(17));
        Self {
            epoch,
            unproven: Buckets::new(secret, rate, LIMITER_BUCKETS),
            proven: Buckets::new(other, rate, PROVEN_BUCKETS),
        }
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis().min(u128::from(u32::MAX)) as u32
    }

    /// Whether an unproven handshake packet from `from` may be looked at now (and spends its
    /// token).
    pub fn allow(&mut self, now: Instant, from: SocketAddr) -> bool {
        let mut buf = [0u8; 18];
        let n = key_bytes(from.ip(), Some(from.port()), &mut buf);
        let ms = self.ms(now);
        self.unproven.allow(ms, &buf[..n])
    }

    /// Whether a proven `CONNECT` from `ip` may be looked at now (and spends its token).
    pub fn allow_proven(&mut self, now: Instant, ip: IpAddr) -> bool {
        let mut buf = [0u8; 18];
        let n = key_bytes(ip, None, &mut buf);
        let ms = self.ms(now);
        self.proven.allow(ms, &buf[..n])
    }
}
