//! The stateless gate in front of every endpoint: what to do with a datagram before any
//! per-peer state exists.
//!
//! A `HELLO` is answered with a cookie (a SipHash MAC of the client's address and a coarse
//! clock, under a secret); only a `CONNECT` echoing a valid, fresh cookie creates a session.
//! So a spoofed source address never costs the server memory, and because a `HELLO` is padded
//! to at least the size of any answer, the gate cannot be used to amplify traffic. Versions
//! are checked before anything else. A data packet from an address with no session is
//! answered with `RESET`, so a peer that outlived our restart learns it at once.
//!
//! A cookie proves only that its holder receives at its address: it does not depend on the
//! attempt's nonce, so a client may use any cookie the server sent to its address, also one a
//! spoofer's `HELLO` in its name made the server send. A `CONNECT` with a valid cookie has
//! proved its address: it is budgeted apart from unproven traffic (see [`HandshakeLimiter`]),
//! so `HELLO`s spoofed from a victim's address cannot keep the victim out.
//!
//! With tokens, a token is bound to the address of the session that first proves it holds the
//! token's secrets (its first authentic packet), not to the address that presented it: an
//! eavesdropper who replays a `CONNECT` gets a session it cannot use, which blocks nobody, and
//! a player may come back with its token from a new address or port (see [`TokenGate`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::addr::ServerAddr;
use super::crypt::Secrets;
use super::siphash::siphash24;
use super::token::{ConnectToken, TokenError, TokenKey, TokenKind, token_id};
use super::wire::{self, Cookie, Handshake, Packet, RejectReason, VERSION};

/// A client whose connect token the gate verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The token's id (see [`TokenGate::prove`]).
    pub token_id: [u8; 12],
    /// Whom the token was issued to.
    pub kind: TokenKind,
    /// The client id the token names.
    pub client_id: u64,
    /// When the token expires, Unix seconds.
    pub expires: u64,
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
/// Tokens remembered per client id: a player holding many tokens cannot crowd out others'.
pub const TOKENS_PER_CLIENT: usize = 4;
/// How far in the future a token's issue time may be (the backend's clock ahead of ours).
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Where a token is bound: the address of its session that proved it holds the secrets.
#[derive(Debug, Clone, Copy)]
struct Binding {
    addr: SocketAddr,
    client_id: u64,
}

/// What a gate that requires connect tokens holds: the keys, the names this server answers to,
/// and the replay guard: each token's binding to the one address whose session proved it (see
/// [`Self::prove`]), until the token expires. At most `remembered` tokens, and
/// [`TOKENS_PER_CLIENT`] per client id, are remembered; beyond, the binding that expires first
/// (or the client's own oldest) is forgotten — never a refusal. A forgotten binding only means
/// that a later proof of that token from another address cannot close the old session (it
/// times out instead).
#[derive(Debug)]
pub struct TokenGate {
    keys: Vec<TokenKey>,
    names: Vec<ServerAddr>,
    /// Unix seconds at the gate's epoch (tokens' times are Unix seconds).
    unix_at_epoch: u64,
    bound: HashMap<[u8; 12], Binding>,
    /// Token ids bound per client id, oldest first.
    per_client: HashMap<u64, SmallVec<[[u8; 12]; TOKENS_PER_CLIENT]>>,
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
            bound: HashMap::new(),
            per_client: HashMap::new(),
            expiries: BinaryHeap::new(),
            remembered: remembered.max(1),
        }
    }

    /// Verifies `sealed` at `unix` (seconds). Binds nothing: see [`Self::prove`].
    fn check(&mut self, unix: u64, sealed: &[u8]) -> Result<Admitted, RejectReason> {
        if sealed.is_empty() {
            return Err(RejectReason::TokenRequired);
        }
        let token = ConnectToken::open(sealed, &self.keys, unix).map_err(|e| match e {
            TokenError::UnknownKey | TokenError::BadSeal => RejectReason::WrongKey,
            TokenError::Expired => RejectReason::TokenExpired,
            TokenError::NotForThisServer => RejectReason::NotInToken,
            _ => RejectReason::BadToken,
        })?;
        if token.issued > unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(RejectReason::BadToken); // issued in the future: not a token of now
        }
        if !self.names.iter().any(|n| token.names(n)) {
            return Err(RejectReason::NotInToken);
        }
        let secrets = token.secrets();
        Ok(Admitted {
            token_id: token_id(sealed),
            kind: token.kind,
            client_id: token.client_id,
            expires: token.expires,
            user_data: token.user_data,
            secrets,
        })
    }

    /// The session at `addr` proved it holds the secrets of token `id` (of `client_id`, expiring
    /// at `expires`, Unix seconds), at `unix`: the token is bound to `addr` from now on.
    /// Returns the address it was bound to before, if another: that session (the player before
    /// a restart or a NAT rebinding) is over.
    pub fn prove(
        &mut self,
        id: [u8; 12],
        client_id: u64,
        expires: u64,
        addr: SocketAddr,
        unix: u64,
    ) -> Option<SocketAddr> {
        self.forget_expired(unix);
        if let Some(b) = self.bound.get_mut(&id) {
            let before = std::mem::replace(&mut b.addr, addr);
            return (before != addr).then_some(before);
        }
        let theirs = self.per_client.entry(client_id).or_default();
        if theirs.len() >= TOKENS_PER_CLIENT {
            let oldest = theirs.remove(0);
            self.bound.remove(&oldest);
        }
        theirs.push(id);
        while self.bound.len() >= self.remembered {
            let Some(Reverse((_, old))) = self.expiries.pop() else { break };
            self.forget(old);
        }
        self.bound.insert(id, Binding { addr, client_id });
        self.expiries.push(Reverse((expires, id)));
        None
    }

    fn forget(&mut self, id: [u8; 12]) {
        if let Some(b) = self.bound.remove(&id)
            && let Some(theirs) = self.per_client.get_mut(&b.client_id)
        {
            theirs.retain(|t| *t != id);
            if theirs.is_empty() {
                self.per_client.remove(&b.client_id);
            }
        }
    }

    fn forget_expired(&mut self, unix: u64) {
        while let Some(Reverse((expires, id))) = self.expiries.peek().copied()
            && expires <= unix
        {
            self.expiries.pop();
            self.forget(id);
        }
        // Entries of tokens forgotten early linger in the heap until they expire; rebuild it
        // when they outnumber the live ones.
        if self.expiries.len() > 2 * self.bound.len() + 1024 {
            let bound = &self.bound;
            self.expiries.retain(|Reverse((_, id))| bound.contains_key(id));
        }
    }

    /// Tokens bound by the replay guard now.
    pub fn remembered(&self) -> usize {
        self.bound.len()
    }

    /// The Unix time at `secs` on the gate's clock.
    pub fn unix(&self, secs: u64) -> u64 {
        self.unix_at_epoch + secs
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

    /// The token gate, to bind proven tokens (see [`TokenGate::prove`]).
    pub fn tokens_mut(&mut self) -> Option<&mut TokenGate> {
        self.tokens.as_mut()
    }

    /// The gate's clock at `now`, in seconds (what [`TokenGate::unix`] takes).
    pub fn secs(&self, now: Instant) -> u64 {
        u64::from(self.clock(now))
    }

    fn mac(&self, addr: SocketAddr, time: u32) -> u64 {
        let mut buf = [0u8; 16 + 2 + 4];
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
        buf[n + 2..n + 6].copy_from_slice(&time.to_le_bytes());
        siphash24(self.k0, self.k1, &buf[..n + 6])
    }

    fn clock(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// Issues a cookie for `addr`.
    pub fn cookie(&self, now: Instant, addr: SocketAddr) -> Cookie {
        let time = self.clock(now);
        Cookie { time, mac: self.mac(addr, time) }
    }

    /// Whether `cookie` was issued by us to `addr`, within the cookie lifetime.
    pub fn verify(&self, now: Instant, addr: SocketAddr, cookie: &Cookie) -> bool {
        let now = u64::from(self.clock(now));
        let t = u64::from(cookie.time);
        t <= now && now - t <= self.lifetime_secs && self.mac(addr, cookie.time) == cookie.mac
    }

    /// Whether `datagram` from `from` is a `CONNECT` whose cookie proves its address (one
    /// SipHash; what [`HandshakeLimiter::allow_proven`] budgets instead of the unproven).
    pub fn proves(&self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        match wire::decode_packet(datagram) {
            Ok(Packet::Handshake(hs)) => match hs.body {
                Handshake::Connect { cookie, .. } => self.verify(now, from, &cookie),
                _ => false,
            },
            _ => false,
        }
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
                    Handshake::Challenge { nonce, cookie: self.cookie(now, from) }
                };
                wire::encode_handshake(out, &reply);
                Verdict::Reply
            }
            Handshake::Connect { nonce, cookie, window, cluster, token } => {
                if !self.accept || !self.verify(now, from, &cookie) {
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
                        t.check(unix, token).map(|a| Some(Box::new(a)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_rate_per_source_and_per_proven_address_and_refills() {
        let t0 = crate::test_epoch();
        let mut l = HandshakeLimiter::new((3, 4), t0, 10);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let a2: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        assert_eq!((0..30).filter(|_| l.allow(t0, a)).count(), 10, "a burst of one second");
        assert!(l.allow(t0, b), "another address has its own budget");
        assert!(l.allow(t0, a2), "and another port of the same address: spoofing an address");
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..30).filter(|_| l.allow(later, a)).count(), 5, "refilled at the rate");
        // Proven CONNECTs have their own budget, per address (all ports together): an empty
        // unproven bucket does not touch it.
        assert_eq!((0..30).filter(|_| l.allow_proven(later, a.ip())).count(), 10);
        assert!(!l.allow_proven(later, a2.ip()), "one budget per address");
        assert!(l.allow_proven(later, b.ip()));
        // An IPv6 /64 is one address; an IPv4-mapped address is its IPv4 address.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2:3".parse().unwrap();
        assert_eq!(address_key(v6a), address_key(v6b));
        assert_ne!(address_key(v6a), address_key("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), a.ip());
        let both = (0..30).filter(|_| l.allow_proven(t0, v6a) || l.allow_proven(t0, v6b));
        assert_eq!(both.count(), 10);
    }

    /// A spoofer floods `HELLO`s at 2,000/s in a victim's name, from random ports of its address
    /// or from its very port: the victim's own `HELLO` is answered in the first case, and in the
    /// second the answers to the spoofed ones give it cookies it may use, and its `CONNECT`
    /// with one is budgeted as proven.
    #[test]
    fn spoofed_hellos_do_not_keep_their_victim_out() {
        let t0 = crate::test_epoch();
        let mut l = HandshakeLimiter::new((3, 4), t0, 32);
        let gate = Gate::new((1, 2), t0, Duration::from_secs(10), true);
        let victim: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut rng = crate::proto::rng::SplitMix64::new(5);
        // Spoofed at its very port: the spoofed HELLOs are answered (to the victim) 32 times a
        // second, each answer with a cookie for the victim's address.
        let mut cookies_for_victim = 0;
        for ms in 0..5000u64 {
            let now = t0 + Duration::from_millis(ms);
            cookies_for_victim += (0..2).filter(|_| l.allow(now, victim)).count();
        }
        assert!(cookies_for_victim > 100, "{cookies_for_victim}");
        // What the victim does with such a cookie: its CONNECT proves its address.
        let cookie = gate.cookie(t0, victim);
        let connect =
            hs(Handshake::Connect { nonce: 99, cookie, window: 9, cluster: 0, token: &[] });
        assert!(gate.proves(t0, victim, &connect));
        assert!(!gate.proves(t0, "198.51.100.7:40001".parse().unwrap(), &connect));
        assert!(l.allow_proven(t0 + Duration::from_secs(5), victim.ip()), "its own budget");
        // Spoofed from random ports of its address: its own bucket is left alone.
        let mut l = HandshakeLimiter::new((3, 4), t0, 32);
        let mut own = 0;
        for ms in 0..5000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..2 {
                let port = 1024 + (rng.next_u32() % 60_000) as u16;
                if SocketAddr::new(victim.ip(), port) != victim {
                    l.allow(now, SocketAddr::new(victim.ip(), port));
                }
            }
            if ms % 250 == 0 && l.allow(now, victim) {
                own += 1;
            }
        }
        assert_eq!(own, 20, "every one of the victim's HELLOs was answered");
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
        // Another address, a forged MAC, or a stale cookie: dropped. Another nonce (a new
        // attempt from the same address) may use the cookie: it proves the address only.
        assert_eq!(
            gate.filter(t1, addr("127.0.0.1:4001"), &connect, false, false, &mut out),
            Verdict::Drop
        );
        let other_nonce =
            hs(Handshake::Connect { nonce: 8, cookie, window: 99, cluster: 0, token: &[] });
        assert_eq!(
            gate.filter(t1, client, &other_nonce, false, false, &mut out),
            Verdict::Admit { nonce: 8, window: 99, client: None }
        );
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
        let cookie = gate.cookie(t0, client);
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
