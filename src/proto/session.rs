//! One session with one peer: the handshake, then a [`Channel`], keepalive, idle timeout and
//! close. Sans-IO.
//!
//! (Somewhat over the ~600-line budget on purpose: the handshake and close states are one
//! state machine that reads best in one place; packet protection and a peer's move to a new
//! address live in `protect.rs`, the tests in `tests.rs`.)
//!
//! Client: `HELLO` (until a `CHALLENGE`) → `CONNECT` with the cookie (until an `ACCEPT`) →
//! established. Both are retransmitted every `handshake_retry`, backing off to twice that, until
//! `handshake_timeout`: a lossy link gets many attempts. A cookie proves only the client's
//! address, so a `CHALLENGE` answering another attempt's `HELLO` (one a spoofer sent in our
//! name) carries a cookie we may use too: taken, while `HELLO`s go on beside the `CONNECT`s
//! until a `CHALLENGE` of our own arrives (a forged one cannot then keep us out).
//! Server: created by the endpoint's [`Gate`](super::gate::Gate) from a valid `CONNECT`,
//! established at once; a repeated `CONNECT` is answered with the same `ACCEPT`, one with a
//! new nonce means the client restarted, and ends this session ([`DisconnectReason::Replaced`]).
//!
//! Closing: [`Session::close`] keeps sending queued reliable data for up to `close_linger`,
//! then sends `CLOSE` and lingers a few RTTs answering late packets with `CLOSE` again.
//!
//! Call order, as for every sans-IO type here: feed inputs with `handle_datagram` and
//! `handle_timeout`, then drain `poll_transmit` until it returns `false` and `poll_event` until
//! `None`; sleep until `next_timeout`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::protect::channel_config;
use super::channel::{Channel, Datagram, Delivered, PacketOutcome};
use super::crypt::{PacketKeys, ReplayWindow, Secrets};
use super::stats::ConnectionStats;
use super::token::PlayerToken;
use super::wire::{self, Class, CloseKind, Cookie, Handshake, Packet, RejectReason, VERSION};
use crate::proto::config::TransportConfig;
use crate::proto::error::{DisconnectReason, ProtocolViolation, Rejection, SendError};

/// Something the application should learn about.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake completed.
    Connected,
    /// A message arrived.
    Message(Delivered),
    /// The session ended. Always the last event.
    Closed(DisconnectReason),
}

/// Data datagrams a connecting client keeps when they overtake the server's `ACCEPT`.
const EARLY_DATAGRAMS: usize = 4;

#[derive(Debug)]
enum State {
    /// Client: sending `HELLO`.
    Hello { started: Instant, next: Instant, interval: Duration },
    /// Client: sending `CONNECT` with the cookie.
    Connecting {
        started: Instant,
        cookie: Cookie,
        next: Instant,
        interval: Duration,
        first_sent: Option<Instant>,
        attempts: u32,
        /// The cookie came with a `CHALLENGE` to another attempt: keep saying `HELLO` too.
        hello_too: bool,
    },
    /// Handshake done.
    Established,
    /// Local close requested: flushing reliable data until done or `deadline`.
    Closing { deadline: Instant, code: u32 },
    /// `CLOSE` sent; sent again `resends` more times an RTT apart, and to any straggler,
    /// until `until`.
    Draining { until: Instant, kind: CloseKind, next_resend: Instant, resends: u8 },
    /// Over.
    Closed,
}

/// A session with one peer. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<TransportConfig>,
    state: State,
    nonce: u32,
    tag: u32,
    channel: Option<Channel>,
    events: VecDeque<SessionEvent>,
    /// Client: data datagrams that arrived before the server's `ACCEPT` (it sends right after
    /// accepting, and the network may reorder the two), replayed once it arrives; at most
    /// [`EARLY_DATAGRAMS`].
    early: Vec<Vec<u8>>,
    /// Client: the token presented in `CONNECT`, whose secrets protect the session.
    token: Option<Arc<PlayerToken>>,
    /// Client: the cluster tag said in `CONNECT` (0: none).
    cluster: u64,
    /// The session's packet keys, once it is protected (boxed: ~1 KB that plain sessions do
    /// not carry).
    keys: Option<Box<PacketKeys>>,
    /// Protected: the peer proved it holds the session's secrets (server: an authentic packet
    /// arrived; client: the server's `ACCEPT` proved them).
    proven: bool,
    replay: ReplayWindow,
    last_received: Instant,
    established_at: Instant,
    ping_pending: bool,
    accept_pending: bool,
    /// Client: a `HELLO` goes out with the next `CONNECT` (see `State::Connecting`).
    hello_pending: bool,
    close_again: bool,
    closed_stats: Option<ConnectionStats>,
}

impl Session {
    /// A client session about to say `HELLO`. `nonce` identifies this attempt (the epoch).
    pub fn client(cfg: Arc<TransportConfig>, nonce: u32, now: Instant) -> Self {
        let interval = cfg.handshake_retry;
        Self::new(cfg, State::Hello { started: now, next: now, interval }, nonce, 0, None, now)
    }

    /// A client session that presents `token` and protects its packets with the token's
    /// secrets.
    pub fn with_token(mut self, token: Arc<PlayerToken>) -> Self {
        self.token = Some(token);
        self
    }

    /// A client session that says it is of the cluster tagged `cluster` (a server of another
    /// refuses it: [`Rejection::WrongCluster`]).
    pub fn with_cluster(mut self, cluster: u64) -> Self {
        self.cluster = cluster;
        self
    }

    /// A server session for a `CONNECT` the gate admitted; `tag` is this session's random tag.
    /// With `secrets` (from the client's verified token) every packet is protected.
    pub fn server(
        cfg: Arc<TransportConfig>,
        nonce: u32,
        tag: u32,
        peer_window: u64,
        now: Instant,
        secrets: Option<&Secrets>,
    ) -> Self {
        let keys = secrets.map(|s| Box::new(PacketKeys::derive(s, nonce, tag, false)));
        let channel = Channel::new(&channel_config(&cfg, keys.is_some()), peer_window, now);
        let mut s = Self::new(cfg, State::Established, nonce, tag, Some(channel), now);
        s.keys = keys;
        s.accept_pending = true;
        s.events.push_back(SessionEvent::Connected);
        s
    }

    fn new(
        cfg: Arc<TransportConfig>,
        state: State,
        nonce: u32,
        tag: u32,
        channel: Option<Channel>,
        now: Instant,
    ) -> Self {
        Self {
            cfg,
            state,
            nonce,
            tag,
            channel,
            events: VecDeque::new(),
            early: Vec::new(),
            token: None,
            cluster: 0,
            keys: None,
            proven: false,
            replay: ReplayWindow::default(),
            last_received: now,
            established_at: now,
            ping_pending: false,
            accept_pending: false,
            hello_pending: false,
            close_again: false,
            closed_stats: None,
        }
    }

    /// Whether its packets are encrypted and authenticated.
    pub fn is_protected(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether the peer of a protected session proved it holds the session's secrets: on a
    /// server, its first authentic packet arrived. A protected server session whose peer does
    /// not prove it within `handshake_timeout` (someone replayed another's `CONNECT`) ends with
    /// [`DisconnectReason::Timeout`].
    pub fn is_proven(&self) -> bool {
        self.proven
    }

    /// When an unproven protected session gives up on its peer.
    fn proof_deadline(&self) -> Option<Instant> {
        (self.keys.is_some() && !self.proven)
            .then(|| self.established_at + self.cfg.handshake_timeout)
    }

    /// Whether the handshake completed and the session is not closing.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// The smoothed round-trip time (the configured initial one before any sample).
    pub fn rtt(&self) -> std::time::Duration {
        self.channel.as_ref().map_or(self.cfg.initial_rtt, Channel::rtt)
    }

    /// Whether the session is over and may be dropped.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Queues a message for the peer.
    pub fn send(&mut self, class: Class, stream: u8, payload: Bytes) -> Result<(), SendError> {
        match (&self.state, self.channel.as_mut()) {
            (State::Established, Some(ch)) => ch.send(class, stream, payload),
            _ => Err(SendError::Closed),
        }
    }

    /// The peer's receive window (0 before the handshake completes).
    pub fn peer_window(&self) -> u64 {
        self.channel.as_ref().map_or(0, Channel::peer_window)
    }

    /// What the peer makes us hold, received and not yet delivered (see
    /// [`Channel::receive_held`]).
    pub fn receive_held(&self) -> u64 {
        self.channel.as_ref().map_or(0, Channel::receive_held)
    }

    /// Bytes and messages released from the send buffer since the last call.
    pub fn take_released(&mut self) -> (usize, usize) {
        self.channel.as_mut().map_or((0, 0), Channel::take_released)
    }

    /// Gives up on a peer that does not drain what is sent to it: queued data is dropped, the
    /// peer is told (`CLOSE`), and the session ends with [`DisconnectReason::Stalled`].
    pub fn stall(&mut self, now: Instant) {
        self.give_up(now, CloseKind::Stalled, DisconnectReason::Stalled);
    }

    /// Asks for an ack-eliciting packet now (a `PING` if nothing else goes out): a probe of a
    /// peer that owes us something and has gone quiet. A peer that restarted answers it with a
    /// `RESET`.
    pub fn ping(&mut self) {
        if matches!(self.state, State::Established) {
            self.ping_pending = true;
        }
    }

    /// Sheds the session to keep the endpoint within its memory ([`DisconnectReason::Shed`]).
    pub fn shed(&mut self, now: Instant) {
        self.give_up(now, CloseKind::Shed, DisconnectReason::Shed);
    }

    fn give_up(&mut self, now: Instant, kind: CloseKind, reason: DisconnectReason) {
        match self.state {
            State::Established | State::Closing { .. } => {
                tracing::debug!(%reason, "giving up on the peer");
                self.drain(now, kind, reason);
            }
            State::Hello { .. } | State::Connecting { .. } => self.finish(reason),
            State::Draining { .. } | State::Closed => {}
        }
    }

    /// Closes the session with an application `code`: queued reliable data is flushed first
    /// (up to `close_linger`), then the peer is told.
    pub fn close(&mut self, now: Instant, code: u32) {
        match self.state {
            State::Established => {
                self.state = State::Closing { deadline: now + self.cfg.close_linger, code }
            }
            State::Hello { .. } | State::Connecting { .. } => {
                self.finish(DisconnectReason::ClosedLocally)
            }
            _ => {}
        }
    }

    /// Ends the session now, without telling the peer (the endpoint is going away).
    pub fn abort(&mut self, reason: DisconnectReason) {
        if !self.is_closed() {
            self.finish(reason);
        }
    }

    fn finish(&mut self, reason: DisconnectReason) {
        if !matches!(self.state, State::Draining { .. }) {
            self.events.push_back(SessionEvent::Closed(reason));
        }
        self.closed_stats = Some(self.stats_now());
        self.state = State::Closed;
        if let Some(ch) = self.channel.as_mut() {
            ch.discard_queued();
        }
    }

    /// Starts draining: `CLOSE` goes out now and again to any straggler, for a few RTTs.
    fn drain(&mut self, now: Instant, kind: CloseKind, reason: DisconnectReason) {
        let rtt =
            self.channel.as_ref().map_or(self.cfg.initial_rtt, Channel::rtt).max(self.cfg.min_rto);
        self.events.push_back(SessionEvent::Closed(reason));
        // A lost CLOSE would leave the peer waiting for its idle timeout: send it twice more.
        self.state =
            State::Draining { until: now + rtt * 3, kind, next_resend: now + rtt, resends: 2 };
        self.close_again = true;
        if let Some(ch) = self.channel.as_mut() {
            ch.discard_queued();
        }
    }

    /// Takes a datagram from the peer.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        let packet = match wire::decode_packet(data) {
            Ok(p) => p,
            Err(_) => {
                if let Some(ch) = self.channel.as_mut() {
                    ch.count_malformed();
                }
                return;
            }
        };
        match packet {
            Packet::Handshake(hs) => self.on_handshake(now, hs.body),
            Packet::Data(h, frames) => {
                if self.channel.is_none() {
                    // Overtook the ACCEPT: kept (a few, bounded) until it arrives.
                    if matches!(self.state, State::Connecting { .. })
                        && self.early.len() < EARLY_DATAGRAMS
                    {
                        self.early.push(data.to_vec());
                    }
                    return;
                }
                if h.tag != self.tag {
                    return; // another session's packet
                }
                if self.keys.is_some() {
                    self.on_protected(now, h.pn_truncated, h.pn_len, data);
                    // A response from the session's own address validates nothing.
                    if let Some(ch) = self.channel.as_mut() {
                        ch.take_path_response();
                    }
                    return;
                }
                if let State::Draining { .. } = self.state {
                    self.close_again = true;
                    return;
                }
                self.on_data(now, h.pn_truncated, h.pn_len, frames, data);
            }
        }
    }

    fn on_data(&mut self, now: Instant, pn: u32, pn_len: u8, frames: &[u8], data: &[u8]) {
        let Some(ch) = self.channel.as_mut() else {
            return;
        };
        let events = &mut self.events;
        let mut dgram = Datagram::new(data);
        let r = ch.handle_packet(now, pn, pn_len, frames, &mut dgram, &mut |d| {
            events.push_back(SessionEvent::Message(d));
        });
        match r {
            Ok(PacketOutcome::Accepted { close }) => {
                self.last_received = now;
                match close {
                    Some(CloseKind::Application(code)) => {
                        self.finish(DisconnectReason::ClosedByPeer { code })
                    }
                    Some(CloseKind::ProtocolViolation) => {
                        self.finish(DisconnectReason::ProtocolViolation(
                            ProtocolViolation::ReportedByPeer,
                        ));
                    }
                    Some(CloseKind::Stalled) => self.finish(DisconnectReason::Stalled),
                    Some(CloseKind::Shed) => self.finish(DisconnectReason::Shed),
                    None => {}
                }
            }
            Ok(PacketOutcome::Duplicate | PacketOutcome::Malformed) => {}
            Err(v) => {
                tracing::debug!(violation = %v, "peer violated the protocol; closing");
                self.drain(
                    now,
                    CloseKind::ProtocolViolation,
                    DisconnectReason::ProtocolViolation(v),
                );
            }
        }
    }

    fn on_handshake(&mut self, now: Instant, body: Handshake<'_>) {
        match (&mut self.state, body) {
            (State::Hello { started, .. }, Handshake::Challenge { nonce, cookie }) => {
                let started = *started;
                self.last_received = now;
                let interval = self.cfg.handshake_retry;
                self.state = State::Connecting {
                    started,
                    cookie,
                    next: now,
                    interval,
                    first_sent: None,
                    attempts: 0,
                    hello_too: nonce != self.nonce,
                };
            }
            (
                State::Connecting { cookie, hello_too: hello_too @ true, .. },
                Handshake::Challenge { nonce, cookie: fresh },
            ) => {
                // A cookie of our own (or a fresher borrowed one) replaces a borrowed one.
                *cookie = fresh;
                *hello_too = nonce != self.nonce;
            }
            (
                State::Connecting { first_sent, attempts, .. },
                Handshake::Accept { nonce, tag, window, proof },
            ) if nonce == self.nonce => {
                // Karn: an RTT sample only from an attempt that was not repeated.
                let sample = (*attempts == 1)
                    .then(|| first_sent.map(|t| now.saturating_duration_since(t)))
                    .flatten();
                if let Some(token) = &self.token {
                    // Only the server holding the token's secrets can prove them; anything else
                    // (no proof, a wrong one: forged or another session's) is ignored.
                    let keys = PacketKeys::derive(&token.secrets, nonce, tag, true);
                    let fields = wire::accept_fields(nonce, tag, window);
                    if !proof.is_some_and(|p| keys.verify_accept(&fields, &p)) {
                        return;
                    }
                    self.keys = Some(Box::new(keys));
                    self.proven = true;
                }
                let cfg = channel_config(&self.cfg, self.keys.is_some());
                let mut ch = Channel::new(&cfg, window, now);
                if let Some(s) = sample {
                    ch.set_initial_rtt(s);
                }
                self.channel = Some(ch);
                self.tag = tag;
                self.state = State::Established;
                self.last_received = now;
                self.established_at = now;
                self.events.push_back(SessionEvent::Connected);
                for d in std::mem::take(&mut self.early) {
                    self.handle_datagram(now, &d);
                }
            }
            (
                State::Hello { .. } | State::Connecting { .. },
                Handshake::Reject { nonce, reason },
            ) if nonce == self.nonce => {
                let rejected = match reason {
                    RejectReason::VersionMismatch { supported } => {
                        self.finish(DisconnectReason::VersionMismatch {
                            ours: VERSION,
                            theirs: supported,
                        });
                        return;
                    }
                    RejectReason::ServerFull => Rejection::ServerFull,
                    RejectReason::TooManyFromAddress => Rejection::TooManyFromAddress,
                    RejectReason::NotAccepting => Rejection::NotAccepting,
                    RejectReason::TokenRequired => Rejection::TokenRequired,
                    RejectReason::TokensNotAccepted => Rejection::TokensNotAccepted,
                    RejectReason::BadToken => Rejection::BadToken,
                    RejectReason::WrongKey => Rejection::WrongKey,
                    RejectReason::TokenExpired => Rejection::TokenExpired,
                    RejectReason::NotInToken => Rejection::NotInToken,
                    RejectReason::TokenReused => Rejection::TokenReused,
                    RejectReason::Application { code } => Rejection::Application { code },
                    RejectReason::WrongCluster => Rejection::WrongCluster,
                };
                self.finish(DisconnectReason::Rejected(rejected));
            }
            (State::Established | State::Closing { .. }, Handshake::Connect { nonce, .. }) => {
                if nonce == self.nonce {
                    self.accept_pending = true; // our ACCEPT was lost
                    self.last_received = now;
                } else {
                    self.finish(DisconnectReason::Replaced);
                }
            }
            (_, Handshake::Reset { tag }) if tag == self.tag && self.channel.is_some() => {
                self.finish(DisconnectReason::Reset);
            }
            _ => {} // not for this state, or another attempt's: ignore
        }
    }

    /// Runs timers: handshake retries and timeout, idle timeout, keepalive, retransmission.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Hello { started, .. } | State::Connecting { started, .. } => {
                if now >= started + self.cfg.handshake_timeout {
                    self.finish(DisconnectReason::Timeout);
                }
            }
            State::Established | State::Closing { .. } => {
                let unproven = self.proof_deadline().is_some_and(|t| now >= t);
                if unproven || now >= self.last_received + self.cfg.idle_timeout {
                    self.finish(DisconnectReason::Timeout);
                    return;
                }
                let Some(ch) = self.channel.as_mut() else {
                    return;
                };
                if ch.stalled_since().is_some_and(|t| now >= t + self.cfg.stall_timeout) {
                    self.stall(now);
                    return;
                }
                ch.handle_timeout(now);
                if now >= self.keepalive_due() {
                    self.ping_pending = true;
                }
            }
            State::Draining { until, ref mut next_resend, ref mut resends, .. } => {
                if now >= until {
                    self.closed_stats = Some(self.stats_now());
                    self.state = State::Closed;
                } else if *resends > 0 && now >= *next_resend {
                    *resends -= 1;
                    *next_resend = now + (until - now) / 2;
                    self.close_again = true;
                }
            }
            State::Closed => {}
        }
    }

    /// When a keepalive ping is due: after `keepalive_interval` in which we neither sent
    /// anything that asks for an ack nor heard from the peer. A peer that pings us keeps the
    /// session alive for both (our acks answer it), so only the side with the shorter interval
    /// pings: a server with a longer one than its clients sends no keepalives of its own.
    fn keepalive_due(&self) -> Instant {
        let sent = self.channel.as_ref().and_then(Channel::last_eliciting_sent);
        sent.unwrap_or(self.established_at).max(self.last_received) + self.cfg.keepalive_interval
    }

    /// When `handle_timeout` should run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Hello { started, next, .. } | State::Connecting { started, next, .. } => {
                Some((*next).min(*started + self.cfg.handshake_timeout))
            }
            State::Established | State::Closing { .. } => {
                let ch = self.channel.as_ref()?;
                let keepalive = self.keepalive_due();
                let idle = self.last_received + self.cfg.idle_timeout;
                let mut t = keepalive.min(idle);
                if let Some(p) = self.proof_deadline() {
                    t = t.min(p);
                }
                if let Some(c) = ch.next_timeout() {
                    t = t.min(c);
                }
                if let Some(s) = ch.stalled_since() {
                    t = t.min(s + self.cfg.stall_timeout);
                }
                if let State::Closing { deadline, .. } = self.state {
                    t = t.min(deadline);
                }
                Some(t)
            }
            State::Draining { until, next_resend, resends, .. } => {
                Some(if *resends > 0 { (*next_resend).min(*until) } else { *until })
            }
            State::Closed => None,
        }
    }

    /// Writes the next datagram to send into `out` (cleared first); `false` when there is none.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        match &mut self.state {
            State::Hello { next, interval, .. } => {
                if now < *next {
                    return false;
                }
                *next = now + *interval;
                *interval = (*interval * 2).min(self.cfg.handshake_retry * 2);
                wire::encode_handshake(out, &Handshake::Hello { nonce: self.nonce });
                true
            }
            State::Connecting {
                cookie, next, interval, first_sent, attempts, hello_too, ..
            } => {
                if std::mem::take(&mut self.hello_pending) {
                    wire::encode_handshake(out, &Handshake::Hello { nonce: self.nonce });
                    return true;
                }
                if now < *next {
                    return false;
                }
                self.hello_pending = *hello_too;
                *next = now + *interval;
                *interval = (*interval * 2).min(self.cfg.handshake_retry * 2);
                first_sent.get_or_insert(now);
                *attempts += 1;
                let body = Handshake::Connect {
                    nonce: self.nonce,
                    cookie: *cookie,
                    window: self.cfg.receive_window,
                    cluster: self.cluster,
                    token: self.token.as_ref().map_or(&[][..], |t| &t.sealed[..]),
                };
                wire::encode_handshake(out, &body);
                true
            }
            State::Established | State::Closing { .. } => self.transmit_established(now, out),
            State::Draining { kind, .. } => {
                if !std::mem::take(&mut self.close_again) {
                    return false;
                }
                let kind = *kind;
                let sent = self
                    .channel
                    .as_mut()
                    .is_some_and(|ch| ch.write_packet(now, self.tag, out, false, Some(kind)));
                sent && self.protect(out)
            }
            State::Closed => false,
        }
    }

    fn transmit_established(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if std::mem::take(&mut self.accept_pending) {
            let (nonce, tag, window) = (self.nonce, self.tag, self.cfg.receive_window);
            let proof = self
                .keys
                .as_ref()
                .map(|k| k.accept_proof(&wire::accept_fields(nonce, tag, window)));
            wire::encode_handshake(out, &Handshake::Accept { nonce, tag, window, proof });
            return true;
        }
        let Some(ch) = self.channel.as_mut() else {
            return false;
        };
        if let State::Closing { deadline, code } = self.state
            && (ch.is_flushed() || now >= deadline)
        {
            let kind = CloseKind::Application(code);
            let sent = ch.write_packet(now, self.tag, out, false, Some(kind));
            self.drain(now, kind, DisconnectReason::ClosedLocally);
            self.close_again = false;
            return sent && self.protect(out);
        }
        let ping = self.ping_pending;
        if ch.write_packet(now, self.tag, out, ping, None) {
            self.ping_pending = false;
            return self.protect(out);
        }
        false
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn stats_now(&self) -> ConnectionStats {
        match &self.channel {
            Some(ch) => {
                let mut s = ch.stats();
                s.last_received = s.last_received.max(self.last_received);
                s
            }
            None => ConnectionStats::new(self.last_received),
        }
    }

    /// A statistics snapshot (frozen at the moment the session closed).
    pub fn stats(&self) -> ConnectionStats {
        self.closed_stats.unwrap_or_else(|| self.stats_now())
    }
}

mod protect;

#[cfg(test)]
mod tests;
