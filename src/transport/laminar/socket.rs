//! Our `laminar::DatagramSocket`: the [`Gate`] in front of a datagram [`Io`].
//!
//! laminar's manager creates a connection for *any* datagram from a new address (1.57 MB in
//! laminar's own connection type). This socket never hands it one: only datagrams from
//! addresses with a session pass. Handshake packets from strangers are answered here,
//! statelessly, and a `CONNECT` with a valid cookie is set aside for the driver, which creates
//! the session.
//!
//! Before the gate spends anything on a datagram that is not a session's data, its handshake
//! budget is checked (fixed tables of token buckets: unproven traffic per source address and
//! port, `CONNECT`s with a valid cookie per address); an admitted `CONNECT` is refused when
//! the server is full or the address already holds `max_connections_per_ip` sessions.
//! Everything refused is counted.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::proto::crypt::Secrets;
use crate::proto::gate::{Admitted, Gate, HandshakeLimiter, Verdict, address_key};
use crate::proto::wire::{self, Handshake, RejectReason};
use crate::transport::io::Io;
use crate::transport::{Approve, ClientIdentity, EndpointCounters};

/// Limits of the front door, from the transport's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorLimits {
    pub(crate) max_incoming: usize,
    pub(crate) max_per_ip: usize,
}

/// A client whose token the gate verified: who it is (built once, for the approval and the
/// connection handle) and its session secrets.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) identity: Arc<ClientIdentity>,
    pub(crate) secrets: Secrets,
    /// What binds the token once the session proves it holds the secrets.
    pub(crate) proof: TokenProof,
}

/// A token to bind to its session's address once the session proves it holds the secrets
/// (`TokenGate::prove`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenProof {
    pub(crate) token_id: [u8; 12],
    pub(crate) client_id: u64,
    pub(crate) expires: u64,
}

/// A valid `CONNECT` from a new address: (address, nonce, client window, verified token).
pub(crate) type AdmittedConnect = (SocketAddr, u32, u64, Option<Verified>);

pub(crate) struct GatedSocket<I: Io> {
    pub(crate) io: I,
    gate: Gate,
    now: Instant,
    /// Addresses with a session; the flag says whether the peer opened it.
    known: HashMap<SocketAddr, bool>,
    /// Protected incoming sessions by their tag, and back: a data packet from an address
    /// without a session that names one goes to that session to be checked (its client may
    /// have moved; see `conn`).
    tags: HashMap<u32, SocketAddr>,
    tag_of: HashMap<SocketAddr, u32>,
    incoming: usize,
    /// Incoming sessions per address key (see [`address_key`]); only keys with sessions.
    per_ip: HashMap<IpAddr, u32>,
    limits: DoorLimits,
    limiter: HandshakeLimiter,
    counters: Arc<EndpointCounters>,
    /// Datagrams still allowed in this pass.
    budget: usize,
    /// Not reading: the application is behind on events.
    pub(crate) paused: bool,
    /// No new sessions: shutting down.
    pub(crate) refusing: bool,
    reply: Vec<u8>,
    /// Valid `CONNECT`s from new addresses.
    pub(crate) admitted: Vec<AdmittedConnect>,
    /// Addresses (keys) that must give up their longest-idle session for a newcomer.
    pub(crate) displace: Vec<IpAddr>,
    /// The application's approval of verified clients.
    pub(crate) approve: Option<Arc<dyn Approve>>,
}

impl<I: Io> std::fmt::Debug for GatedSocket<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedSocket")
            .field("io", &self.io)
            .field("known", &self.known.len())
            .field("incoming", &self.incoming)
            .field("approve", &self.approve.is_some())
            .finish_non_exhaustive()
    }
}

impl<I: Io> GatedSocket<I> {
    pub(crate) fn new(
        io: I,
        gate: Gate,
        limiter: HandshakeLimiter,
        limits: DoorLimits,
        counters: Arc<EndpointCounters>,
        now: Instant,
    ) -> Self {
        Self {
            io,
            gate,
            now,
            known: HashMap::new(),
            tags: HashMap::new(),
            tag_of: HashMap::new(),
            incoming: 0,
            per_ip: HashMap::new(),
            limits,
            limiter,
            counters,
            budget: 0,
            paused: false,
            refusing: false,
            reply: Vec::new(),
            admitted: Vec::new(),
            displace: Vec::new(),
            approve: None,
        }
    }

    /// Starts a pass of the manager: the clock, and how many datagrams it may read.
    pub(crate) fn begin(&mut self, now: Instant, budget: usize) {
        self.now = now;
        self.budget = budget;
    }

    /// Sends what the pass gathered (see `Io::flush`), counting what the kernel refused.
    pub(crate) fn flush(&mut self) {
        let dropped = self.io.flush();
        if dropped > 0 {
            self.counters.sends_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Whether the last pass stopped reading because its budget ran out (more may be waiting).
    pub(crate) fn budget_exhausted(&self) -> bool {
        self.budget == 0 && !self.paused
    }

    pub(crate) fn is_known(&self, addr: &SocketAddr) -> bool {
        self.known.contains_key(addr)
    }

    pub(crate) fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Registers a session we open.
    pub(crate) fn add_outgoing(&mut self, addr: SocketAddr) {
        self.known.insert(addr, false);
    }

    /// The session at `addr` proved it holds the secrets of its token: binds the token there.
    /// Returns the address the token was bound to before, if another (that session is over).
    pub(crate) fn prove(&mut self, addr: SocketAddr, proof: TokenProof) -> Option<SocketAddr> {
        let secs = self.gate.secs(self.now);
        let tokens = self.gate.tokens_mut()?;
        let unix = tokens.unix(secs);
        tokens.prove(proof.token_id, proof.client_id, proof.expires, addr, unix)
    }

    /// The protected incoming session at `addr` has tag `tag`.
    pub(crate) fn register_tag(&mut self, addr: SocketAddr, tag: u32) {
        self.tags.insert(tag, addr);
        self.tag_of.insert(addr, tag);
    }

    /// The session at `old` moved with its client to `new`.
    pub(crate) fn migrate(&mut self, old: SocketAddr, new: SocketAddr) {
        let Some(incoming) = self.known.remove(&old) else { return };
        self.known.insert(new, incoming);
        if incoming {
            let key = address_key(old.ip());
            if let Some(n) = self.per_ip.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&key);
                }
            }
            *self.per_ip.entry(address_key(new.ip())).or_default() += 1;
        }
        if let Some(tag) = self.tag_of.remove(&old) {
            self.tag_of.insert(new, tag);
            self.tags.insert(tag, new);
        }
    }

    /// For a data packet from `from`, an address without a session: `None` if it names no
    /// protected session by its tag; else the session's address, or `Some(None)` when `from`
    /// is over its handshake rate (checking the packet costs a decryption, budgeted as
    /// unproven traffic is).
    fn moved_session(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<Option<SocketAddr>> {
        if self.tags.is_empty() || !wire::is_data(datagram) {
            return None;
        }
        let Ok(wire::Packet::Data(h, _)) = wire::decode_packet(datagram) else { return None };
        let session = *self.tags.get(&h.tag)?;
        if !self.limiter.allow(self.now, from) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Some(None);
        }
        Some(Some(session))
    }

    /// A session ended: its address is a stranger again.
    pub(crate) fn forget(&mut self, addr: &SocketAddr) {
        if let Some(tag) = self.tag_of.remove(addr)
            && self.tags.get(&tag) == Some(addr)
        {
            self.tags.remove(&tag);
        }
        if self.known.remove(addr) == Some(true) {
            self.incoming -= 1;
            let key = address_key(addr.ip());
            if let Some(n) = self.per_ip.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&key);
                }
            }
        }
    }

    /// Takes or refuses a valid `CONNECT` from a new address: the per-address limit, then the
    /// application's approval of a verified client.
    fn admit(&mut self, from: SocketAddr, nonce: u32, window: u64, client: Option<Box<Admitted>>) {
        let key = address_key(from.ip());
        let held = self.per_ip.get(&key).copied().unwrap_or(0);
        if held as usize >= self.limits.max_per_ip {
            self.counters.rejected_per_ip.fetch_add(1, Ordering::Relaxed);
            self.refuse(from, nonce, RejectReason::TooManyFromAddress);
            return;
        }
        let client = client.map(|c| Verified {
            identity: Arc::new(ClientIdentity::of(&c)),
            proof: TokenProof { token_id: c.token_id, client_id: c.client_id, expires: c.expires },
            secrets: c.secrets,
        });
        if let (Some(approve), Some(c)) = (&self.approve, &client)
            && let Err(code) = approve.approve(&c.identity)
        {
            self.counters.rejected_by_app.fetch_add(1, Ordering::Relaxed);
            self.refuse(from, nonce, RejectReason::Application { code });
            return;
        }
        if self.incoming >= self.limits.max_incoming
            && let Some(victim) = self.displaceable(from)
        {
            self.counters.displaced.fetch_add(1, Ordering::Relaxed);
            self.displace.push(victim);
        }
        *self.per_ip.entry(key).or_default() += 1;
        self.known.insert(from, true);
        self.incoming += 1;
        self.admitted.push((from, nonce, window, client));
    }

    /// When the endpoint is full, the address whose longest-idle session gives its slot to a
    /// newcomer from `from`: the address holding the most sessions, if it holds more than its
    /// share (`max_connections` divided among the addresses, the newcomer's included) and
    /// more than the newcomer's address will. `None`: the newcomer is refused (`ServerFull`).
    fn displaceable(&self, from: SocketAddr) -> Option<IpAddr> {
        let key = address_key(from.ip());
        let mine = self.per_ip.get(&key).copied().unwrap_or(0) as usize;
        let addresses = self.per_ip.len() + usize::from(mine == 0);
        let share = (self.limits.max_incoming / addresses.max(1)).max(1);
        let (heaviest, most) = self.per_ip.iter().max_by_key(|(_, n)| **n)?;
        let most = *most as usize;
        (most > share && mine + 1 < most).then_some(*heaviest)
    }

    fn refuse(&mut self, to: SocketAddr, nonce: u32, reason: RejectReason) {
        wire::encode_handshake(&mut self.reply, &Handshake::Reject { nonce, reason });
        let _ = self.io.send_to(self.now, to, &self.reply);
    }
}

impl<I: Io> laminar::DatagramSocket for GatedSocket<I> {
    fn send_packet(&mut self, addr: &SocketAddr, payload: &[u8]) -> io::Result<usize> {
        match self.io.send_to(self.now, *addr, payload) {
            // A full socket buffer is a loss like any other; retransmission covers it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.sends_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(0)
            }
            r => r,
        }
    }

    fn receive_packet<'a>(&mut self, buffer: &'a mut [u8]) -> io::Result<(&'a [u8], SocketAddr)> {
        loop {
            if self.paused || self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let (len, from) = self.io.recv_from(self.now, buffer)?;
            self.budget -= 1;
            if len >= buffer.len() {
                // The buffer is one byte larger than the largest datagram we accept, so a full
                // buffer means the datagram was truncated: drop it.
                self.counters.oversize.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let known = self.known.contains_key(&from);
            let datagram = &buffer[..len];
            super::conn::set_moved_from(None);
            if known && wire::is_data(datagram) {
                let buffer: &'a [u8] = buffer;
                return Ok((&buffer[..len], from)); // its session decodes it
            }
            if !known && let Some(session) = self.moved_session(from, datagram) {
                let Some(session) = session else { continue }; // over its rate
                // To the session it names, which checks it and validates `from` (never a
                // `RESET`: its client may have moved).
                super::conn::set_moved_from(Some(from));
                let buffer: &'a [u8] = buffer;
                return Ok((&buffer[..len], session));
            }
            // Everything else is budgeted before the gate works on it: a `CONNECT` that proves
            // its address apart from the rest (see `HandshakeLimiter`).
            let allowed = if self.gate.proves(self.now, from, datagram) {
                self.limiter.allow_proven(self.now, from.ip())
            } else {
                self.limiter.allow(self.now, from)
            };
            if !allowed {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let full = self.refusing
                || (self.incoming >= self.limits.max_incoming && self.displaceable(from).is_none());
            match self.gate.filter(self.now, from, &buffer[..len], known, full, &mut self.reply) {
                Verdict::Pass => {
                    let buffer: &'a [u8] = buffer;
                    return Ok((&buffer[..len], from));
                }
                Verdict::Drop => {
                    if !known {
                        self.counters.strangers_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Verdict::Reply => {
                    let _ = self.io.send_to(self.now, from, &self.reply);
                }
                Verdict::Refuse(reason) => {
                    let counter = match reason {
                        RejectReason::ServerFull => &self.counters.rejected_full,
                        _ => &self.counters.rejected_token,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = self.io.send_to(self.now, from, &self.reply);
                }
                Verdict::Admit { nonce, window, client } => self.admit(from, nonce, window, client),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn is_blocking_mode(&self) -> bool {
        false
    }
}
