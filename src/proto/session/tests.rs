//! Session scripts without sockets: two sessions and a gate exchanging datagrams by hand on
//! a manual clock. (Over the ~600-line budget: scripts of one type, sharing their helpers;
//! splitting them would only scatter the helpers.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::proto::gate::{Gate, Verdict};

const MS: Duration = Duration::from_millis(1);

struct Pair {
    now: Instant,
    client: Session,
    server: Session,
    gate: Gate,
    client_addr: SocketAddr,
}

fn cfg() -> Arc<TransportConfig> {
    Arc::new(TransportConfig::server())
}

fn drain(s: &mut Session, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while s.poll_transmit(now, &mut buf) {
        out.push(buf.clone());
    }
    out
}

fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The handshake through a real gate up to the server's session (its `ACCEPT` not yet sent):
/// (client, server, gate, the client's address, now).
fn admitted() -> Admitted {
    let now = crate::test_epoch();
    let gate = Gate::new((11, 22), now, Duration::from_secs(10), true);
    admitted_through(gate, Session::client(cfg(), 77, now), now).map_err(|e| e.0).unwrap()
}

/// What the handshake gives: (client, server, gate, the client's address, now).
type Admitted = (Session, Session, Gate, SocketAddr, Instant);

/// The handshake of `client` through `gate`: the server's session, or the gate's verdict
/// (with the client, which got the gate's answer).
fn admitted_through(
    mut gate: Gate,
    mut client: Session,
    now: Instant,
) -> Result<Admitted, Box<(Verdict, Session)>> {
    let client_addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let hello = drain(&mut client, now);
    assert_eq!(hello.len(), 1);
    let mut reply = Vec::new();
    assert_eq!(gate.filter(now, client_addr, &hello[0], false, false, &mut reply), Verdict::Reply);
    client.handle_datagram(now, &reply);
    let connect = drain(&mut client, now);
    let verdict = gate.filter(now, client_addr, &connect[0], false, false, &mut reply);
    let Verdict::Admit { nonce, window, client: admitted } = verdict else {
        client.handle_datagram(now, &reply);
        return Err(Box::new((verdict, client)));
    };
    assert_eq!(nonce, 77);
    let secrets = admitted.as_ref().map(|a| &a.secrets);
    let server = Session::server(cfg(), nonce, 0xfeed, window, now, secrets);
    Ok((client, server, gate, client_addr, now))
}

/// Runs the handshake through a real gate and returns the established pair.
fn establish() -> Pair {
    let (mut client, mut server, gate, client_addr, now) = admitted();
    assert_eq!(events(&mut server), vec![SessionEvent::Connected]);
    for d in drain(&mut server, now) {
        client.handle_datagram(now + 10 * MS, &d);
    }
    assert_eq!(events(&mut client), vec![SessionEvent::Connected]);
    assert!(client.is_established() && server.is_established());
    Pair { now: now + 10 * MS, client, server, gate, client_addr }
}

impl Pair {
    /// Delivers everything each side has to send, both ways, until quiet.
    fn exchange(&mut self) {
        for _ in 0..100 {
            let c = drain(&mut self.client, self.now);
            let s = drain(&mut self.server, self.now);
            if c.is_empty() && s.is_empty() {
                return;
            }
            for d in c {
                self.server.handle_datagram(self.now, &d);
            }
            for d in s {
                self.client.handle_datagram(self.now, &d);
            }
        }
        panic!("no quiet after 100 rounds");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }
}

fn messages(evs: &[SessionEvent]) -> Vec<Bytes> {
    evs.iter()
        .filter_map(|e| match e {
            SessionEvent::Message(d) => Some(d.payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_then_messages_both_ways() {
    let mut p = establish();
    p.client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"ping")).unwrap();
    p.server.send(Class::Unreliable, 0, Bytes::from_static(b"pong")).unwrap();
    p.exchange();
    assert_eq!(messages(&events(&mut p.server)), vec![Bytes::from_static(b"ping")]);
    assert_eq!(messages(&events(&mut p.client)), vec![Bytes::from_static(b"pong")]);
}

#[test]
fn data_that_overtakes_the_accept_is_kept_until_it_arrives() {
    let (mut client, mut server, _, _, now) = admitted();
    let accept = drain(&mut server, now);
    // The server sends at once (a manifest); that datagram arrives first.
    server.send(Class::ReliableOrdered, 0, Bytes::from_static(b"manifest")).unwrap();
    let data = drain(&mut server, now);
    assert!(!data.is_empty());
    for d in &data {
        client.handle_datagram(now + MS, d);
    }
    // Junk datagrams beyond the bound are not kept.
    for _ in 0..10 {
        client.handle_datagram(now + MS, &data[0]);
    }
    assert!(events(&mut client).is_empty(), "nothing before the accept");
    for d in &accept {
        client.handle_datagram(now + 2 * MS, d);
    }
    let got = events(&mut client);
    assert_eq!(got[0], SessionEvent::Connected);
    assert_eq!(
        messages(&got[1..]),
        vec![Bytes::from_static(b"manifest")],
        "delivered once, no RTO"
    );
}

#[test]
fn a_repeated_connect_is_accepted_again_and_a_new_nonce_replaces_the_session() {
    let mut p = establish();
    let connect = {
        let mut c = Session::client(cfg(), 77, p.now);
        let hello = drain(&mut c, p.now);
        let mut reply = Vec::new();
        p.gate.filter(p.now, p.client_addr, &hello[0], true, false, &mut reply);
        c.handle_datagram(p.now, &reply);
        drain(&mut c, p.now).remove(0)
    };
    // Same nonce: our ACCEPT was lost, answer again.
    p.server.handle_datagram(p.now, &connect);
    let again = drain(&mut p.server, p.now);
    assert!(matches!(
        wire::decode_packet(&again[0]),
        Ok(Packet::Handshake(h)) if matches!(h.body, Handshake::Accept { nonce: 77, tag: 0xfeed, .. })
    ));
    // A new nonce: the client restarted; this session is over.
    let mut restarted = Session::client(cfg(), 78, p.now);
    let hello = drain(&mut restarted, p.now);
    let mut reply = Vec::new();
    p.gate.filter(p.now, p.client_addr, &hello[0], true, false, &mut reply);
    restarted.handle_datagram(p.now, &reply);
    let connect = drain(&mut restarted, p.now).remove(0);
    p.server.handle_datagram(p.now, &connect);
    assert_eq!(events(&mut p.server), vec![SessionEvent::Closed(DisconnectReason::Replaced)]);
    assert!(p.server.is_closed());
}

#[test]
fn reset_with_our_tag_ends_the_session_any_other_is_ignored() {
    let mut p = establish();
    let mut reset = Vec::new();
    wire::encode_handshake(&mut reset, &Handshake::Reset { tag: 0xbeef });
    p.client.handle_datagram(p.now, &reset);
    assert!(p.client.is_established());
    reset.clear();
    wire::encode_handshake(&mut reset, &Handshake::Reset { tag: 0xfeed });
    p.client.handle_datagram(p.now, &reset);
    assert_eq!(events(&mut p.client), vec![SessionEvent::Closed(DisconnectReason::Reset)]);
}

/// A server that restarted knows nothing of its old sessions: its gate answers their packets
/// with a RESET, but only packets at least as long as the RESET (no amplification). A
/// keepalive, the only thing an idle client sends, is padded to that length, so the client
/// learns of the restart from its next ping instead of waiting for its idle timeout.
#[test]
fn a_keepalive_to_a_restarted_server_earns_a_reset() {
    let mut p = establish();
    p.exchange();
    let mut restarted = Gate::new((33, 44), p.now, Duration::from_secs(10), true);
    let mut reply = Vec::new();
    let mut pings = 0;
    for _ in 0..20 {
        p.advance(Duration::from_millis(500));
        for d in drain(&mut p.client, p.now) {
            let Ok(Packet::Data(_, frames)) = wire::decode_packet(&d) else { continue };
            if !wire::FrameReader::new(frames).flatten().any(|f| f == wire::Frame::Ping) {
                continue;
            }
            pings += 1;
            assert!(d.len() >= wire::RESET_LEN, "a {}-byte ping", d.len());
            assert_eq!(
                restarted.filter(p.now, p.client_addr, &d, false, false, &mut reply),
                Verdict::Reply
            );
            p.client.handle_datagram(p.now, &reply);
        }
        if p.client.is_closed() {
            break;
        }
    }
    assert_eq!(pings, 1, "the first ping ends it");
    assert_eq!(events(&mut p.client), vec![SessionEvent::Closed(DisconnectReason::Reset)]);
}

#[test]
fn idle_timeout_and_keepalive() {
    let mut p = establish();
    let idle = p.client.cfg.idle_timeout;
    // With pings exchanged, a long quiet period stays connected.
    for _ in 0..30 {
        p.advance(Duration::from_millis(500));
        p.exchange();
    }
    assert!(p.client.is_established() && p.server.is_established());
    // Nothing exchanged after one last message each way: both time out once the idle timeout
    // passes.
    p.client.send(Class::Unreliable, 0, Bytes::from_static(b"c")).unwrap();
    p.server.send(Class::Unreliable, 0, Bytes::from_static(b"s")).unwrap();
    p.exchange();
    events(&mut p.client);
    p.advance(idle - MS);
    assert!(p.client.is_established());
    p.advance(2 * MS);
    assert_eq!(events(&mut p.client), vec![SessionEvent::Closed(DisconnectReason::Timeout)]);
    assert!(p.client.is_closed());
}

#[test]
fn close_flushes_then_the_peer_sees_the_code_and_close_is_resent() {
    let mut p = establish();
    for i in 0..50u8 {
        p.client.send(Class::ReliableOrdered, 0, Bytes::from(vec![i])).unwrap();
    }
    p.client.close(p.now, 9);
    assert_eq!(p.client.send(Class::Unreliable, 0, Bytes::new()), Err(SendError::Closed));
    // The first flight is lost: close waits for the data to be acked, retransmitting.
    drain(&mut p.client, p.now);
    p.advance(Duration::from_millis(400));
    for _ in 0..5 {
        // Delayed acks need the clock to move.
        p.exchange();
        p.advance(p.client.cfg.max_ack_delay);
    }
    let evs = events(&mut p.server);
    assert_eq!(messages(&evs).len(), 50);
    assert_eq!(evs.last(), Some(&SessionEvent::Closed(DisconnectReason::ClosedByPeer { code: 9 })));
    assert_eq!(events(&mut p.client), vec![SessionEvent::Closed(DisconnectReason::ClosedLocally)]);
    p.advance(Duration::from_secs(2));
    assert!(p.client.is_closed() && p.server.is_closed());
}

#[test]
fn a_lost_close_is_sent_again_while_draining() {
    let mut p = establish();
    p.client.close(p.now, 1);
    let mut closes = drain(&mut p.client, p.now).len();
    assert_eq!(closes, 1);
    while !p.client.is_closed() {
        p.advance(MS);
        closes += drain(&mut p.client, p.now).len();
    }
    assert_eq!(closes, 3, "sent once and resent twice, none of them answered");
}

#[test]
fn a_protocol_violation_closes_both_sides_with_typed_reasons() {
    let mut p = establish();
    // An ACK for a packet number the client never sent.
    let mut bad = Vec::new();
    wire::encode_data_header(&mut bad, 0xfeed, 0, 1);
    wire::encode_ack(&mut bad, 0, &[(1000, 1000)]);
    p.client.handle_datagram(p.now, &bad);
    assert_eq!(
        events(&mut p.client),
        vec![SessionEvent::Closed(DisconnectReason::ProtocolViolation(
            ProtocolViolation::AckOfUnsentPacket
        ))]
    );
    p.exchange();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::Closed(DisconnectReason::ProtocolViolation(
            ProtocolViolation::ReportedByPeer
        ))]
    );
}

#[test]
fn handshake_retries_then_times_out() {
    let now = crate::test_epoch();
    let mut c = Session::client(cfg(), 1, now);
    let retry = c.cfg.handshake_retry;
    let mut sent = drain(&mut c, now).len();
    let mut t = now;
    while !c.is_closed() {
        t = c.next_timeout().unwrap();
        c.handle_timeout(t);
        sent += drain(&mut c, t).len();
    }
    assert_eq!(t, now + c.cfg.handshake_timeout);
    // Every retry interval is `retry` or twice that: many attempts on a lossy link.
    assert!(
        sent as u32 >= c.cfg.handshake_timeout.as_millis() as u32 / (2 * retry.as_millis() as u32)
    );
    assert_eq!(events(&mut c), vec![SessionEvent::Closed(DisconnectReason::Timeout)]);
}

/// A peer that keeps its session alive (pings) but never acknowledges data, or never granted
/// room for it: the session gives up after `stall_timeout` with `Stalled`, and tells the peer.
#[test]
fn a_peer_that_takes_nothing_stalls_the_session() {
    for zero_window in [false, true] {
        let now = crate::test_epoch();
        let mut server =
            Session::server(cfg(), 5, 0xfeed, if zero_window { 0 } else { 1 << 20 }, now, None);
        events(&mut server);
        server.send(Class::ReliableOrdered, 1, Bytes::from(vec![7; 5000])).unwrap();
        let stall = cfg().stall_timeout;
        let mut t = now;
        let mut closed = None;
        while t < now + stall + Duration::from_secs(2) {
            t += Duration::from_millis(250);
            server.handle_timeout(t);
            let sent = drain(&mut server, t); // sent, or blocked; nothing comes back
            if let Some(e) = events(&mut server).into_iter().find_map(|e| match e {
                SessionEvent::Closed(r) => Some(r),
                _ => None,
            }) {
                closed = Some((e, t, sent));
                break;
            }
            // The peer's keepalive, with no ack in it: the session is not idle.
            let mut ping = Vec::new();
            wire::encode_data_header(&mut ping, 0xfeed, (t - now).as_millis() as u32, 4);
            wire::encode_ping(&mut ping);
            server.handle_datagram(t, &ping);
        }
        let (reason, at, sent) = closed.expect("the session closed");
        assert_eq!(reason, DisconnectReason::Stalled, "zero window: {zero_window}");
        assert!(
            at >= now + stall && at <= now + stall + Duration::from_millis(300),
            "{:?}",
            at - now
        );
        // It tells the peer why.
        let close = sent.iter().find_map(|d| {
            let Ok(Packet::Data(_, frames)) = wire::decode_packet(d) else { return None };
            wire::FrameReader::new(frames).flatten().find_map(|f| match f {
                wire::Frame::Close(k) => Some(k),
                _ => None,
            })
        });
        assert_eq!(close, Some(CloseKind::Stalled));
    }
}

#[test]
fn a_peer_that_acknowledges_keeps_a_long_transfer_alive() {
    let mut p = establish();
    // 40 s of steady traffic, four times the stall timeout: never stalled.
    for i in 0..160u32 {
        p.server.send(Class::ReliableOrdered, 1, Bytes::from(vec![i as u8; 3000])).unwrap();
        p.exchange();
        p.advance(Duration::from_millis(250));
        assert!(p.server.is_established(), "stalled after {i} rounds");
    }
    let evs = events(&mut p.client);
    assert_eq!(messages(&evs).len(), 160);
}

/// A peer that keeps a large queue alive by taking a few hundred bytes every half second (it
/// acknowledges, so this was progress by the old rule of "any acknowledged byte") is stalled
/// after `stall_timeout`: progress means draining. A peer that takes its queue slowly but
/// really (16 KiB per half second, 32 KB/s) is not, over four stall timeouts. The peer is a
/// real client whose receive window is what it takes per round.
#[test]
fn a_trickle_of_acknowledgements_is_not_progress_but_a_slow_drain_is() {
    for (per_round, stalls) in [(300u64, true), (16 << 10, false)] {
        let now = crate::test_epoch();
        let gate = Gate::new((11, 22), now, Duration::from_secs(10), true);
        let small =
            Arc::new(TransportConfig { receive_window: per_round, ..TransportConfig::server() });
        let client = Session::client(small, 77, now);
        let (mut client, mut server, _, _, _) =
            admitted_through(gate, client, now).map_err(|e| e.0).unwrap();
        events(&mut server);
        // A backlog of 2 MB waits for the peer.
        for i in 0..10_000u32 {
            server.send(Class::ReliableOrdered, 1, Bytes::from(vec![i as u8; 200])).unwrap();
        }
        let mut t = now;
        let stall = cfg().stall_timeout;
        let mut closed_at = None;
        while t < now + 4 * stall {
            for d in drain(&mut server, t) {
                client.handle_datagram(t, &d);
            }
            if let Some(SessionEvent::Closed(r)) = events(&mut server).pop() {
                assert_eq!(r, DisconnectReason::Stalled);
                closed_at = Some(t);
                break;
            }
            events(&mut client);
            t += Duration::from_millis(500);
            // The client's acks and credit, once per round.
            client.handle_timeout(t);
            for d in drain(&mut client, t) {
                server.handle_datagram(t, &d);
            }
            server.handle_timeout(t);
        }
        match closed_at {
            Some(at) => {
                assert!(stalls, "a real drain of {per_round} bytes per round was stalled");
                let after = at - now;
                assert!(after >= stall && after <= stall + Duration::from_secs(2), "{after:?}");
            }
            None => assert!(!stalls, "a trickle of {per_round} bytes per round kept its queue"),
        }
    }
}

#[test]
fn the_peer_of_a_stalled_session_learns_why() {
    let mut p = establish();
    p.server.stall(p.now);
    let sent = drain(&mut p.server, p.now);
    assert!(!sent.is_empty(), "the CLOSE goes out");
    for d in sent {
        p.client.handle_datagram(p.now, &d);
    }
    assert_eq!(events(&mut p.client), vec![SessionEvent::Closed(DisconnectReason::Stalled)]);
    assert_eq!(events(&mut p.server), vec![SessionEvent::Closed(DisconnectReason::Stalled)]);
}

/// Each side pings after its keepalive interval without sending or hearing anything: a client
/// pinging every second keeps a server with a longer interval from sending pings of its own
/// (its acks answer the client's), which halves an idle session's traffic.
#[test]
fn only_the_side_with_the_shorter_keepalive_pings() {
    let mut p = establish();
    let client_cfg = Arc::new(TransportConfig {
        keepalive_interval: Duration::from_secs(1),
        ..TransportConfig::server()
    });
    p.client.cfg = client_cfg;
    let pings = |d: &[Vec<u8>]| {
        d.iter()
            .filter(|d| {
                let Ok(Packet::Data(_, frames)) = wire::decode_packet(d) else { return false };
                wire::FrameReader::new(frames).flatten().any(|f| f == wire::Frame::Ping)
            })
            .count()
    };
    let (mut from_client, mut from_server) = (0, 0);
    for _ in 0..300 {
        p.advance(Duration::from_millis(100));
        for _ in 0..3 {
            let c = drain(&mut p.client, p.now);
            let s = drain(&mut p.server, p.now);
            from_client += pings(&c);
            from_server += pings(&s);
            for d in c {
                p.server.handle_datagram(p.now, &d);
            }
            for d in s {
                p.client.handle_datagram(p.now, &d);
            }
        }
    }
    assert!((25..=31).contains(&from_client), "the client pinged {from_client} times in 30 s");
    assert_eq!(from_server, 0, "the server never needed to ping");
    assert!(p.client.is_established() && p.server.is_established());
}

mod protected {
    use super::*;
    use crate::proto::addr::ServerAddr;
    use crate::proto::gate::TokenGate;
    use crate::proto::token::{ConnectToken, PlayerToken, TokenKey, TokenKind};
    use crate::proto::wire::RejectReason;

    const UNIX: u64 = 1_000_000;

    fn key() -> TokenKey {
        TokenKey::new(4, [9; 32])
    }

    fn player(servers: &[&str], expires: u64) -> Arc<PlayerToken> {
        let t = ConnectToken {
            kind: TokenKind::Player,
            client_id: 42,
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            issued: UNIX,
            expires,
            user_data: b"ann".to_vec(),
            client_to_server: [1; 32],
            server_to_client: [2; 32],
        };
        Arc::new(PlayerToken::new(&t, &key(), [5; 12]).unwrap())
    }

    fn gate(now: Instant, keys: Vec<TokenKey>) -> Gate {
        let me: ServerAddr = "10.0.0.1:7000".parse().unwrap();
        Gate::new((11, 22), now, Duration::from_secs(10), true).with_tokens(TokenGate::new(
            keys,
            vec![me],
            UNIX,
            16,
        ))
    }

    fn establish_protected() -> Pair {
        let now = crate::test_epoch();
        let client =
            Session::client(cfg(), 77, now).with_token(player(&["10.0.0.1:7000"], UNIX + 30));
        let (mut client, mut server, gate, client_addr, now) =
            admitted_through(gate(now, vec![key()]), client, now).map_err(|e| e.0).unwrap();
        assert!(server.is_protected());
        assert_eq!(events(&mut server), vec![SessionEvent::Connected]);
        for d in drain(&mut server, now) {
            client.handle_datagram(now, &d);
        }
        assert_eq!(events(&mut client), vec![SessionEvent::Connected]);
        assert!(client.is_protected());
        Pair { now, client, server, gate, client_addr }
    }

    #[test]
    fn a_protected_session_carries_messages_that_never_appear_on_the_wire() {
        let mut p = establish_protected();
        let secret = b"the-argument-bytes-of-a-call".to_vec();
        p.client.send(Class::ReliableOrdered, 0, Bytes::from(secret.clone())).unwrap();
        let wire = drain(&mut p.client, p.now);
        assert!(!wire.is_empty());
        for d in &wire {
            assert!(
                !d.windows(8).any(|w| secret.windows(8).any(|s| s == w)),
                "plaintext on the wire"
            );
            p.server.handle_datagram(p.now, d);
        }
        assert_eq!(messages(&events(&mut p.server)), vec![Bytes::from(secret)]);
        // A replayed datagram is refused before decoding; a tampered one fails its tag; neither
        // delivers anything.
        let before = p.server.stats();
        p.server.handle_datagram(p.now, &wire[0]);
        p.client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"next")).unwrap();
        let next = drain(&mut p.client, p.now);
        let mut forged = next[0].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        p.server.handle_datagram(p.now, &forged);
        let after = p.server.stats();
        assert_eq!(after.duplicates, before.duplicates + 1);
        assert_eq!(after.unauthentic, before.unauthentic + 1);
        assert!(events(&mut p.server).is_empty());
        // The forged copy did not burn its packet number: the authentic one is taken.
        p.server.handle_datagram(p.now, &next[0]);
        assert_eq!(messages(&events(&mut p.server)), vec![Bytes::from_static(b"next")]);
        // Large messages, chunked, both ways, and the session closes cleanly.
        p.server.send(Class::ReliableOrdered, 1, Bytes::from(vec![3; 5000])).unwrap();
        p.exchange();
        assert_eq!(messages(&events(&mut p.client)), vec![Bytes::from(vec![3; 5000])]);
        assert!(p.client.stats().bytes_sent > 0 && p.client.stats().unauthentic == 0);
    }

    /// A packet from another address (`handle_moved`): taken once if authentic and fresh,
    /// never if replayed or forged; the challenge is echoed by the client and the echo is what
    /// the server reads back. A plain session takes none.
    #[test]
    fn a_moved_packet_is_taken_once_if_authentic_and_its_challenge_is_echoed() {
        let mut p = establish_protected();
        p.client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"from-afar")).unwrap();
        let wire = drain(&mut p.client, p.now);
        assert_eq!(p.server.handle_moved(p.now, &wire[0]), Some(None), "authentic, no echo");
        assert_eq!(messages(&events(&mut p.server)), vec![Bytes::from_static(b"from-afar")]);
        assert_eq!(p.server.handle_moved(p.now, &wire[0]), None, "replayed");
        let mut forged = wire[0].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(p.server.handle_moved(p.now, &forged), None, "forged");
        // The challenge: small, sealed; the client echoes it in its next packet, at once.
        let mut challenge = Vec::new();
        assert!(p.server.write_path_challenge(p.now, 0xdead_beef, &mut challenge));
        assert!(challenge.len() <= 1 + 4 + 4 + 9 + crate::proto::crypt::AUTH_TAG_LEN);
        p.client.handle_datagram(p.now, &challenge);
        let echo = drain(&mut p.client, p.now);
        assert!(!echo.is_empty(), "answered at once");
        let heard: Vec<_> = echo.iter().filter_map(|d| p.server.handle_moved(p.now, d)).collect();
        assert!(heard.contains(&Some(0xdead_beef)), "{heard:?}");
        // From the session's own address, an echo validates nothing (it is dropped).
        p.server.write_path_challenge(p.now, 7, &mut challenge);
        p.client.handle_datagram(p.now, &challenge);
        for d in drain(&mut p.client, p.now) {
            p.server.handle_datagram(p.now, &d);
        }
        p.client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"x")).unwrap();
        let next = drain(&mut p.client, p.now);
        assert_eq!(p.server.handle_moved(p.now, &next[0]), Some(None));

        // A plain session cannot tell its client from a forger: it takes nothing moved.
        let mut plain = establish();
        plain.client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"y")).unwrap();
        let d = drain(&mut plain.client, plain.now);
        assert_eq!(plain.server.handle_moved(plain.now, &d[0]), None);
        assert!(!plain.server.write_path_challenge(plain.now, 1, &mut challenge));
    }

    #[test]
    fn a_client_with_a_token_ignores_an_accept_without_proof() {
        let now = crate::test_epoch();
        let token = player(&["10.0.0.1:7000"], UNIX + 30);
        let client = Session::client(cfg(), 77, now).with_token(token);
        let (mut client, mut server, ..) =
            admitted_through(gate(now, vec![key()]), client, now).map_err(|e| e.0).unwrap();
        events(&mut server);
        let mut accept = Vec::new();
        let plain = Handshake::Accept { nonce: 77, tag: 0xfeed, window: 1 << 20, proof: None };
        wire::encode_handshake(&mut accept, &plain);
        client.handle_datagram(now, &accept);
        let wrong =
            Handshake::Accept { nonce: 77, tag: 0xfeed, window: 1 << 20, proof: Some([1; 16]) };
        accept.clear();
        wire::encode_handshake(&mut accept, &wrong);
        client.handle_datagram(now, &accept);
        assert!(!client.is_established(), "a forged or plain ACCEPT does not establish");
        for d in drain(&mut server, now) {
            client.handle_datagram(now, &d);
        }
        assert!(client.is_established() && client.is_protected());
    }

    /// The gate's verdict on a client presenting `token` to a server holding `keys` (none: a
    /// keyless gate), and the client's events after its answer.
    fn refused(
        token: Option<Arc<PlayerToken>>,
        keys: Vec<TokenKey>,
    ) -> (Verdict, Vec<SessionEvent>) {
        let now = crate::test_epoch();
        let mut client = Session::client(cfg(), 77, now);
        if let Some(t) = token {
            client = client.with_token(t);
        }
        let gate = if keys.is_empty() {
            Gate::new((11, 22), now, Duration::from_secs(10), true)
        } else {
            gate(now, keys)
        };
        match admitted_through(gate, client, now) {
            Ok(_) => panic!("admitted"),
            Err(e) => {
                let (verdict, mut client) = *e;
                (verdict, events(&mut client))
            }
        }
    }

    type Case = (Option<Arc<PlayerToken>>, Vec<TokenKey>, RejectReason, Rejection);

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let ok = || player(&["10.0.0.1:7000"], UNIX + 30);
        let cases: Vec<Case> = vec![
            (None, vec![key()], RejectReason::TokenRequired, Rejection::TokenRequired),
            (
                Some(ok()),
                vec![TokenKey::new(5, [9; 32])],
                RejectReason::WrongKey,
                Rejection::WrongKey,
            ),
            (
                Some(ok()),
                vec![TokenKey::new(4, [8; 32])],
                RejectReason::WrongKey,
                Rejection::WrongKey,
            ),
            (
                Some(player(&["10.0.0.1:7000"], UNIX)),
                vec![key()],
                RejectReason::TokenExpired,
                Rejection::TokenExpired,
            ),
            (
                Some(player(&["10.0.0.2:7000"], UNIX + 30)),
                vec![key()],
                RejectReason::NotInToken,
                Rejection::NotInToken,
            ),
            (Some(ok()), vec![], RejectReason::TokensNotAccepted, Rejection::TokensNotAccepted),
        ];
        for (token, keys, reason, rejection) in cases {
            let (verdict, evs) = refused(token, keys);
            assert_eq!(verdict, Verdict::Refuse(reason));
            assert_eq!(evs, vec![SessionEvent::Closed(DisconnectReason::Rejected(rejection))]);
        }
        // Rotation: the old and the new key both open their tokens.
        let now = crate::test_epoch();
        let client = Session::client(cfg(), 77, now).with_token(ok());
        let keys = vec![TokenKey::new(5, [1; 32]), key()];
        assert!(admitted_through(gate(now, keys), client, now).is_ok());
    }

    /// A token is bound to the address of the session that proves it holds the secrets, not
    /// to the first that presents it: an eavesdropper's replay from elsewhere is admitted but
    /// its session never proves anything and ends at `handshake_timeout`; the real player
    /// proves its own and may come back from a new address (the old session is then over).
    #[test]
    fn a_token_is_bound_where_its_secrets_are_proven() {
        let now = crate::test_epoch();
        let token = player(&["10.0.0.1:7000"], UNIX + 30);
        let mut gate = gate(now, vec![key()]);
        let mut reply = Vec::new();
        let mut connect_from = |gate: &mut Gate, addr: SocketAddr, nonce: u32| {
            let mut c = Session::client(cfg(), nonce, now).with_token(token.clone());
            let hello = drain(&mut c, now);
            gate.filter(now, addr, &hello[0], false, false, &mut reply);
            c.handle_datagram(now, &reply);
            let connect = drain(&mut c, now);
            let verdict = gate.filter(now, addr, &connect[0], false, false, &mut reply);
            (c, verdict)
        };
        let player_at: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let thief_at: SocketAddr = "127.0.0.9:6666".parse().unwrap();
        let (mut client, verdict) = connect_from(&mut gate, player_at, 1);
        let Verdict::Admit { nonce, window, client: Some(admitted) } = verdict else {
            panic!("{verdict:?}")
        };
        // The thief presents the same sealed token (it saw the CONNECT): admitted, unbound.
        let (_, stolen) = connect_from(&mut gate, thief_at, 2);
        let Verdict::Admit { client: Some(theirs), .. } = stolen else { panic!("{stolen:?}") };
        let mut thief = Session::server(cfg(), 2, 0xbad, window, now, Some(&theirs.secrets));
        let mut server =
            Session::server(cfg(), nonce, 0xfeed, window, now, Some(&admitted.secrets));
        assert_eq!(gate.tokens().unwrap().remembered(), 0, "nothing bound at CONNECT");
        // The player's session proves itself with its first packet; the thief's never does.
        for d in drain(&mut server, now) {
            client.handle_datagram(now, &d);
        }
        client.send(Class::ReliableOrdered, 0, Bytes::from_static(b"hi")).unwrap();
        for d in drain(&mut client, now) {
            server.handle_datagram(now, &d);
        }
        assert!(server.is_proven() && !thief.is_proven());
        let unix = UNIX;
        let t = gate.tokens_mut().unwrap();
        assert_eq!(t.prove(admitted.token_id, 42, UNIX + 30, player_at, unix), None);
        let later = now + cfg().handshake_timeout;
        thief.handle_timeout(later);
        assert_eq!(events(&mut thief).pop(), Some(SessionEvent::Closed(DisconnectReason::Timeout)));
        server.handle_timeout(later);
        assert!(server.is_established(), "a proven session lives on");
        // The player restarts on another port: once its new session proves, the old is over.
        let moved: SocketAddr = "127.0.0.1:5556".parse().unwrap();
        let (_, again) = connect_from(&mut gate, moved, 3);
        assert!(matches!(again, Verdict::Admit { client: Some(_), .. }));
        let t = gate.tokens_mut().unwrap();
        assert_eq!(t.prove(admitted.token_id, 42, UNIX + 30, moved, unix), Some(player_at));
        assert_eq!(t.remembered(), 1);
    }

    /// The replay guard holds a few tokens per client id and a bound in all, forgetting (never
    /// refusing) beyond: one player's many tokens cannot fill it for the others.
    #[test]
    fn the_replay_guard_is_bounded_per_client_and_in_all() {
        let mut g = TokenGate::new(vec![key()], vec![], UNIX, 16);
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        for i in 0..100u8 {
            assert_eq!(g.prove([i; 12], 7, UNIX + 60, at(1000 + u16::from(i)), UNIX), None);
        }
        assert_eq!(g.remembered(), crate::proto::gate::TOKENS_PER_CLIENT);
        for c in 0..40u64 {
            g.prove([200 + c as u8; 12], 100 + c, UNIX + 60 + c, at(3000), UNIX);
        }
        assert_eq!(g.remembered(), 16, "at most the bound, the soonest to expire forgotten");
        // Expired ones go.
        g.prove([255; 12], 999, UNIX + 1000, at(4000), UNIX + 500);
        assert_eq!(g.remembered(), 1);
    }

    /// A token issued more than a minute in our future is not a token of now: `BadToken`.
    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let now = crate::test_epoch();
        let future = |skew: u64| {
            let t = ConnectToken {
                kind: TokenKind::Player,
                client_id: 42,
                servers: vec!["10.0.0.1:7000".parse().unwrap()],
                issued: UNIX + skew,
                expires: UNIX + skew + 30,
                user_data: Vec::new(),
                client_to_server: [1; 32],
                server_to_client: [2; 32],
            };
            Arc::new(PlayerToken::new(&t, &key(), [6; 12]).unwrap())
        };
        let client = Session::client(cfg(), 77, now).with_token(future(365 * 86_400));
        let refused = admitted_through(gate(now, vec![key()]), client, now).map(|_| ());
        let Err(e) = refused else { panic!("a token of next year was admitted") };
        assert_eq!(e.0, Verdict::Refuse(RejectReason::BadToken));
        let client = Session::client(cfg(), 77, now).with_token(future(30));
        assert!(admitted_through(gate(now, vec![key()]), client, now).is_ok(), "within the skew");
    }
}
