//! The stateless gate in front of every endpoint: what to do with a datagram before any
//! per-peer state exists.
//!
//! A `HELLO` is answered with a cookie (a SipHash MAC of the client's address, nonce and a
//! coarse clock, under a secret); only a `CONNECT` echoing a valid, fresh cookie creates a
//! session. So a spoofed source address never costs the server memory, and because a `HELLO`
//! is padded to at least the size of any answer, the gate cannot be used to amplify traffic.
//! Versions are checked before anything else. A data packet from an address with no session
//! is answered with `RESET`, so a peer that outlived our restart learns it at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::addr::ServerAddr;
use super::crypt::Secrets;
use super::siphash::siphash24;
use super::token::{ConnectToken, TokenError, TokenKey, TokenKind, token_id};
use super::wire::{self, Cookie, Handshake, Packet, RejectReason, VERSION};

/// A client whose connect token the gate verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Whom the token was issued to.
    pub kind: TokenKind,
    /// The client id the token names.
    pub client_id: u64,
    /// The token's application data.
    pub user_data: Vec<u8>,
    /// The session secrets.
    pub secrets: Secrets,
}

/// What to do with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ignore it.
    Drop,
    /// Send the reply written into `out` back to the sender, keep nothing.
    Reply,
    /// Hand it to the address's existing session.
    Pass,
    /// Refuse a `CONNECT` (the `REJECT` saying why is written into `out`; send it back).
    Refuse(RejectReason),
    /// A valid `CONNECT` from a new address: create a session for it.
    Admit {
        /// The client's nonce.
        nonce: u32,
        /// The client's receive window.
        window: u64,
        /// The verified token, when the gate requires one.
        client: Option<Box<Admitted>>,
    },
}

/// Tokens a gate remembers at most (the replay guard's bound) unless told otherwise.
pub const DEFAULT_TOKENS_REMEMBERED: usize = 65_536;

/// What a gate that requires connect tokens holds: the keys, the names this server answers to,
/// and the replay guard (which address each token opened a session from, until it expires).
#[derive(Debug)]
pub struct TokenGate {
    keys: Vec<TokenKey>,
    names: Vec<ServerAddr>,
    /// Unix seconds at the gate's epoch (tokens' times are Unix seconds).
    unix_at_epoch: u64,
    seen: HashMap<[u8; 12], SocketAddr>,
    expiries: BinaryHeap<Reverse<(u64, [u8; 12])>>,
    remembered: usize,
}

impl TokenGate {
    /// Requires tokens sealed with one of `keys` naming one of `names`; the clock reads
    /// `unix_at_epoch` at the gate's epoch; at most `remembered` tokens are tracked at once.
    pub fn new(
        keys: Vec<TokenKey>,
        names: Vec<ServerAddr>,
        unix_at_epoch: u64,
        remembered: usize,
    ) -> Self {
        Self {
            keys,
            names,
            unix_at_epoch,
            seen: HashMap::new(),
            expiries: BinaryHeap::new(),
            remembered: remembered.max(1),
        }
    }

    /// Verifies `sealed` from `from` at `unix` (seconds).
    fn check(
        &mut self,
        unix: u64,
        from: SocketAddr,
        sealed: &[u8],
    ) -> Result<Admitted, RejectReason> {
        if sealed.is_empty() {
            return Err(RejectReason::TokenRequired);
        }
        let token = ConnectToken::open(sealed, &self.keys, unix).map_err(|e| match e {
            TokenError::UnknownKey | TokenError::BadSeal => RejectReason::WrongKey,
            TokenError::Expired => RejectReason::TokenExpired,
            TokenError::NotForThisServer => RejectReason::NotInToken,
            _ => RejectReason::BadToken,
        })?;
        if !self.names.iter().any(|n| token.names(n)) {
            return Err(RejectReason::NotInToken);
        }
        while let Some(Reverse((expires, id))) = self.expiries.peek().copied()
            && expires <= unix
        {
            self.expiries.pop();
            self.seen.remove(&id);
        }
        let id = token_id(sealed);
        match self.seen.get(&id) {
            Some(addr) if *addr != from => return Err(RejectReason::TokenReused),
            Some(_) => {}
            None if self.seen.len() >= self.remembered => return Err(RejectReason::ServerFull),
            None => {
                self.seen.insert(id, from);
                self.expiries.push(Reverse((token.expires, id)));
            }
        }
        let secrets = token.secrets();
        Ok(Admitted {
            kind: token.kind,
            client_id: token.client_id,
            user_data: token.user_data,
            secrets,
        })
    }

    /// Tokens tracked by the replay guard now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

/// The gate's configuration and secret.
#[derive(Debug)]
pub struct Gate {
    k0: u64,
    k1: u64,
    epoch: Instant,
    lifetime_secs: u64,
    accept: bool,
    tokens: Option<TokenGate>,
    /// The cluster tag of the server (0: any client).
    cluster: u64,
}

impl Gate {
    /// A gate with the 128-bit secret `(k0, k1)`, its cookie clock starting at `epoch`.
    pub fn new(secret: (u64, u64), epoch: Instant, lifetime: Duration, accept: bool) -> Self {
        let lifetime_secs = lifetime.as_secs().max(1);
        Self { k0: secret.0, k1: secret.1, epoch, lifetime_secs, accept, tokens: None, cluster: 0 }
    }

    /// Refuses clients that say they are of another cluster than `cluster` (a
    /// [`cluster_tag`](crate::proto::ids::cluster_tag)); clients that say none are let in.
    pub fn with_cluster(mut self, cluster: u64) -> Self {
        self.cluster = cluster;
        self
    }

    /// Requires a valid connect token in every `CONNECT` (see [`TokenGate`]).
    pub fn with_tokens(mut self, tokens: TokenGate) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The token gate, if tokens are required.
    pub fn tokens(&self) -> Option<&TokenGate> {
        self.tokens.as_ref()
    }

    fn mac(&self, addr: SocketAddr, nonce: u32, time: u32) -> u64 {
        let mut buf = [0u8; 16 + 2 + 4 + 4];
        let n = match addr.ip() {
            IpAddr::V4(ip) => {
                buf[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                buf[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        buf[n..n + 2].copy_from_slice(&addr.port().to_le_bytes());
        buf[n + 2..n + 6].copy_from_slice(&nonce.to_le_bytes());
        buf[n + 6..n + 10].copy_from_slice(&time.to_le_bytes());
        siphash24(self.k0, self.k1, &buf[..n + 10])
    }

    fn clock(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// Issues a cookie for `addr`'s attempt `nonce`.
    pub fn cookie(&self, now: Instant, addr: SocketAddr, nonce: u32) -> Cookie {
        let time = self.clock(now);
        Cookie { time, mac: self.mac(addr, nonce, time) }
    }

    /// Whether `cookie` was issued by us to `addr` for `nonce`, within the cookie lifetime.
    pub fn verify(&self, now: Instant, addr: SocketAddr, nonce: u32, cookie: &Cookie) -> bool {
        let now = u64::from(self.clock(now));
        let t = u64::from(cookie.time);
        t <= now
            && now - t <= self.lifetime_secs
            && self.mac(addr, nonce, cookie.time) == cookie.mac
    }

    /// Decides about `datagram` from `from`. `known` says whether `from` has a session; `full`
    /// whether no new session may be created. A reply, if any, is written into `out`.
    pub fn filter(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        known: bool,
        full: bool,
        out: &mut Vec<u8>,
    ) -> Verdict {
        out.clear();
        if known && wire::is_data(datagram) {
            return Verdict::Pass; // the session decodes it; no need to do it twice
        }
        let packet = match wire::decode_packet(datagram) {
            Ok(p) => p,
            // A session counts what it cannot decode; strangers get nothing.
            Err(_) => return if known { Verdict::Pass } else { Verdict::Drop },
        };
        let hs = match packet {
            Packet::Data(h, _) => {
                if known {
                    return Verdict::Pass;
                }
                wire::encode_handshake(out, &Handshake::Reset { tag: h.tag });
                if out.len() > datagram.len() {
                    out.clear();
                    return Verdict::Drop; // never answer with more than we got
                }
                return Verdict::Reply;
            }
            Packet::Handshake(hs) => hs,
        };
        match hs.body {
            Handshake::Hello { nonce } => {
                let reply = if hs.version != VERSION {
                    Handshake::Reject {
                        nonce,
                        reason: RejectReason::VersionMismatch { supported: VERSION },
                    }
                } else if !self.accept {
                    Handshake::Reject { nonce, reason: RejectReason::NotAccepting }
                } else {
                    Handshake::Challenge { nonce, cookie: self.cookie(now, from, nonce) }
                };
                wire::encode_handshake(out, &reply);
                Verdict::Reply
            }
            Handshake::Connect { nonce, cookie, window, cluster, token } => {
                if !self.accept || !self.verify(now, from, nonce, &cookie) {
                    return Verdict::Drop;
                } else if known {
                    return Verdict::Pass;
                }
                let secs = u64::from(self.clock(now));
                let foreign = cluster != 0 && self.cluster != 0 && cluster != self.cluster;
                let admitted = match &mut self.tokens {
                    _ if foreign => Err(RejectReason::WrongCluster),
                    _ if full => Err(RejectReason::ServerFull),
                    None if !token.is_empty() => Err(RejectReason::TokensNotAccepted),
                    None => Ok(None),
                    Some(t) => {
                        let unix = t.unix_at_epoch + secs;
                        t.check(unix, from, token).map(|a| Some(Box::new(a)))
                    }
                };
                match admitted {
                    Ok(client) => Verdict::Admit { nonce, window, client },
                    Err(reason) => {
                        wire::encode_handshake(out, &Handshake::Reject { nonce, reason });
                        Verdict::Refuse(reason)
                    }
                }
            }
            _ if known => Verdict::Pass,
            _ => Verdict::Drop,
        }
    }
}

/// The key an address counts under for per-address limits: an IPv4 address (an IPv4-mapped
/// IPv6 address counts as its IPv4 address), or an IPv6 address's /64 prefix, which one host
/// or household usually gets whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// Buckets of a [`HandshakeLimiter`]: a fixed table, whatever the number of strangers.
pub const LIMITER_BUCKETS: usize = 4096;

/// A budget of handshake packets per source address, applied before the gate does any work
/// for a stranger: a token bucket per address key (see [`address_key`]), refilled at `rate` per
/// second up to `rate`. The buckets live in a fixed table indexed by a keyed hash, so strangers
/// cost no memory; two addresses that share a bucket share its budget (an attacker cannot
/// choose which, the key is secret).
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    k0: u64,
    k1: u64,
    epoch: Instant,
    rate: f32,
    /// Tokens and the time of their last refill (milliseconds since `epoch`), per bucket.
    buckets: Box<[(f32, u32)]>,
}

impl HandshakeLimiter {
    /// A limiter allowing `rate` handshake packets per second per address key (and as many at
    /// once), with the hash secret `(k0, k1)` and its clock starting at `epoch`.
    pub fn new(secret: (u64, u64), epoch: Instant, rate: u32) -> Self {
        let rate = rate.max(1) as f32;
        Self {
            k0: secret.0,
            k1: secret.1,
            epoch,
            rate,
            buckets: vec![(rate, 0); LIMITER_BUCKETS].into_boxed_slice(),
        }
    }

    /// Whether a handshake packet from `ip` may be looked at now (and spends its token).
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let key = address_key(ip);
        let mut buf = [0u8; 16];
        let n = match key {
            IpAddr::V4(a) => {
                buf[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                buf.copy_from_slice(&a.octets());
                16
            }
        };
        let i = (siphash24(self.k0, self.k1, &buf[..n]) % LIMITER_BUCKETS as u64) as usize;
        let ms = now.saturating_duration_since(self.epoch).as_millis().min(u128::from(u32::MAX));
        let ms = ms as u32;
        let (tokens, at) = &mut self.buckets[i];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_rate_per_address_and_refills() {
        let t0 = crate::test_epoch();
        let mut l = HandshakeLimiter::new((3, 4), t0, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..30).filter(|_| l.allow(t0, a)).count(), 10, "a burst of one second");
        assert!(l.allow(t0, b), "another address has its own budget");
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..30).filter(|_| l.allow(later, a)).count(), 5, "refilled at the rate");
        // An IPv6 /64 is one address; an IPv4-mapped address is its IPv4 address.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2:3".parse().unwrap();
        assert_eq!(address_key(v6a), address_key(v6b));
        assert_ne!(address_key(v6a), address_key("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), a);
        assert_eq!((0..30).filter(|_| l.allow(t0, v6a) || l.allow(t0, v6b)).count(), 10);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn hs(body: Handshake<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        wire::encode_handshake(&mut v, &body);
        v
    }

    #[test]
    fn hello_challenge_connect_admits_only_with_a_valid_fresh_cookie() {
        let t0 = crate::test_epoch();
        let mut gate = Gate::new((1, 2), t0, Duration::from_secs(10), true);
        let client = addr("127.0.0.1:4000");
        let mut out = Vec::new();
        assert_eq!(
            gate.filter(t0, client, &hs(Handshake::Hello { nonce: 7 }), false, false, &mut out),
            Verdict::Reply
        );
        let Ok(Packet::Handshake(reply)) = wire::decode_packet(&out) else { panic!() };
        let Handshake::Challenge { nonce: 7, cookie } = reply.body else { panic!("{reply:?}") };
        let connect =
            hs(Handshake::Connect { nonce: 7, cookie, window: 99, cluster: 0, token: &[] });
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(
            gate.filter(t1, client, &connect, false, false, &mut out),
            Verdict::Admit { nonce: 7, window: 99, client: None }
        );
        assert_eq!(gate.filter(t1, client, &connect, true, false, &mut out), Verdict::Pass);
        // Another address, another nonce, a forged MAC, or a stale cookie: dropped.
        assert_eq!(
            gate.filter(t1, addr("127.0.0.1:4001"), &connect, false, false, &mut out),
            Verdict::Drop
        );
        let other_nonce =
            hs(Handshake::Connect { nonce: 8, cookie, window: 99, cluster: 0, token: &[] });
        assert_eq!(gate.filter(t1, client, &other_nonce, false, false, &mut out), Verdict::Drop);
        let forged = hs(Handshake::Connect {
            nonce: 7,
            cookie: Cookie { mac: cookie.mac ^ 1, ..cookie },
            window: 99,
            cluster: 0,
            token: &[],
        });
        assert_eq!(gate.filter(t1, client, &forged, false, false, &mut out), Verdict::Drop);
        let late = t0 + Duration::from_secs(12);
        assert_eq!(gate.filter(late, client, &connect, false, false, &mut out), Verdict::Drop);
        // Full: a typed rejection.
        assert_eq!(
            gate.filter(t1, client, &connect, false, true, &mut out),
            Verdict::Refuse(RejectReason::ServerFull)
        );
        let Ok(Packet::Handshake(r)) = wire::decode_packet(&out) else { panic!() };
        assert_eq!(r.body, Handshake::Reject { nonce: 7, reason: RejectReason::ServerFull });
    }

    #[test]
    fn a_client_of_another_cluster_is_refused_at_the_door() {
        let t0 = crate::test_epoch();
        let ours = crate::proto::ids::cluster_tag("eu", "game");
        let theirs = crate::proto::ids::cluster_tag("us", "game");
        assert_ne!(ours, crate::proto::ids::cluster_tag("eu", "lobby"));
        let mut gate = Gate::new((1, 2), t0, Duration::from_secs(10), true).with_cluster(ours);
        let client = addr("127.0.0.1:4000");
        let cookie = gate.cookie(t0, client, 7);
        let connect =
            |cluster| hs(Handshake::Connect { nonce: 7, cookie, window: 9, cluster, token: &[] });
        let mut out = Vec::new();
        assert_eq!(
            gate.filter(t0, client, &connect(theirs), false, false, &mut out),
            Verdict::Refuse(RejectReason::WrongCluster)
        );
        for fine in [ours, 0] {
            let v = gate.filter(t0, client, &connect(fine), false, false, &mut out);
            assert!(matches!(v, Verdict::Admit { .. }), "{v:?}");
        }
    }

    #[test]
    fn versions_and_strangers() {
        let t0 = crate::test_epoch();
        let mut gate = Gate::new((1, 2), t0, Duration::from_secs(10), true);
        let from = addr("[::1]:5");
        let mut out = Vec::new();
        let mut old = Vec::new();
        wire::encode_handshake_version(&mut old, 7, &Handshake::Hello { nonce: 1 });
        assert_eq!(gate.filter(t0, from, &old, false, false, &mut out), Verdict::Reply);
        let Ok(Packet::Handshake(r)) = wire::decode_packet(&out) else { panic!() };
        assert_eq!(
            r.body,
            Handshake::Reject {
                nonce: 1,
                reason: RejectReason::VersionMismatch { supported: VERSION }
            }
        );
        // Garbage and unsolicited handshake answers from strangers: dropped, nothing written.
        for junk in [
            &b"\x00garbage"[..],
            &hs(Handshake::Accept { nonce: 1, tag: 2, window: 3, proof: None }),
        ] {
            assert_eq!(gate.filter(t0, from, junk, false, false, &mut out), Verdict::Drop);
            assert!(out.is_empty());
            assert_eq!(gate.filter(t0, from, junk, true, false, &mut out), Verdict::Pass);
        }
        // A data packet from a stranger gets a RESET echoing its tag, never larger than it.
        let mut data = Vec::new();
        wire::encode_data_header(&mut data, 0xabcd, 1, 1);
        data.extend_from_slice(&[2, 2, 2, 2]);
        assert_eq!(gate.filter(t0, from, &data, false, false, &mut out), Verdict::Reply);
        assert!(out.len() <= data.len());
        let Ok(Packet::Handshake(r)) = wire::decode_packet(&out) else { panic!() };
        assert_eq!(r.body, Handshake::Reset { tag: 0xabcd });
        data.truncate(7);
        assert_eq!(gate.filter(t0, from, &data, false, false, &mut out), Verdict::Drop);
        // A client endpoint does not accept.
        let mut client = Gate::new((1, 2), t0, Duration::from_secs(10), false);
        assert_eq!(
            client.filter(t0, from, &hs(Handshake::Hello { nonce: 1 }), false, false, &mut out),
            Verdict::Reply
        );
        let Ok(Packet::Handshake(r)) = wire::decode_packet(&out) else { panic!() };
        assert_eq!(r.body, Handshake::Reject { nonce: 1, reason: RejectReason::NotAccepting });
    }
}
