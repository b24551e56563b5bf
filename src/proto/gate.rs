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

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::crypt::Secrets;
use super::siphash::siphash24;
use super::token::TokenKind;
use super::wire::{self, Cookie, Handshake, Packet, RejectReason, VERSION};

mod limiter;
mod tokens;

pub use self::limiter::{HandshakeLimiter, LIMITER_BUCKETS, PROVEN_BUCKETS};
pub use self::tokens::{
    DEFAULT_TOKENS_REMEMBERED, MAX_CLOCK_SKEW_SECS, TOKENS_PER_CLIENT, TokenGate,
};

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
