//! Session lifecycle over the simulated network: the stateless handshake, versions, hostile
//! datagrams, restarts on either side, timeouts, keepalive and close.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::error::{ConnectError, DisconnectReason, Rejection};
use grainwire::proto::rng::SplitMix64;
use grainwire::proto::wire::{self, Handshake, Packet, RejectReason, VERSION};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::transport::{Delivery, Endpoint, Event, PeerId};

mod support;
use support::{addr, message, raw_handshake, sim_pair, wait_until};

const SERVER: &str = "10.0.0.1:9000";
const CLIENT: &str = "10.0.0.2:5000";

fn net() -> SimNetwork {
    SimNetwork::new(42, SimConfig { delay: Duration::from_millis(20), ..SimConfig::default() })
}

fn hs(version: u8, body: Handshake<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode_handshake_version(&mut v, version, &body);
    v
}

fn decode_hs(data: &[u8]) -> Handshake<'_> {
    match wire::decode_packet(data) {
        Ok(Packet::Handshake(p)) => p.body,
        other => panic!("expected a handshake packet, got {other:?}"),
    }
}

async fn next(ep: &mut Endpoint) -> Event {
    support::next_event(ep, Duration::from_secs(120)).await
}

/// Waits for the next event that is not `Connected`.
async fn next_non_connect(ep: &mut Endpoint) -> Event {
    loop {
        match next(ep).await {
            Event::Connected(_) => continue,
            e => return e,
        }
    }
}

async fn disconnected(ep: &mut Endpoint, peer: PeerId) -> DisconnectReason {
    loop {
        if let Event::Disconnected { peer: p, reason } = next(ep).await
            && p == peer
        {
            return reason;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn other_versions_are_rejected_with_ours_and_leave_no_state() {
    let net = net();
    let server = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let raw = net.raw_socket(addr(CLIENT)).unwrap();
    raw.send_to(server.local_addr(), &hs(VERSION + 1, Handshake::Hello { nonce: 3 }));
    let (_, reply) = raw.recv().await;
    assert_eq!(
        decode_hs(&reply),
        Handshake::Reject {
            nonce: 3,
            reason: RejectReason::VersionMismatch { supported: VERSION }
        }
    );
    assert_eq!(server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_told_of_another_version_fails_with_a_typed_error() {
    let net = net();
    let fake_server = net.raw_socket(addr(SERVER)).unwrap();
    let client = net.endpoint(addr(CLIENT), TransportConfig::default()).unwrap();
    let answer = async {
        let (from, hello) = fake_server.recv().await;
        let Handshake::Hello { nonce } = decode_hs(&hello) else { panic!() };
        let reject =
            Handshake::Reject { nonce, reason: RejectReason::VersionMismatch { supported: 9 } };
        fake_server.send_to(from, &hs(9, reject));
    };
    let (result, ()) = tokio::join!(client.connect(addr(SERVER)), answer);
    match result {
        Err(ConnectError::Failed(DisconnectReason::VersionMismatch {
            ours: VERSION,
            theirs: 9,
        })) => {}
        other => panic!("expected a version mismatch, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn wrong_magic_gets_no_answer_and_no_state() {
    let net = net();
    let server = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let raw = net.raw_socket(addr(CLIENT)).unwrap();
    let mut hello = hs(VERSION, Handshake::Hello { nonce: 1 });
    hello[..4].copy_from_slice(b"NOPE");
    raw.send_to(server.local_addr(), &hello);
    assert_eq!(raw.recv_timeout(Duration::from_secs(2)).await, None);
    assert_eq!(server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_address_that_never_echoes_the_cookie_leaves_no_state() {
    let net = net();
    // 300 handshake packets at once from one address: above the default rate (tested below).
    let cfg = TransportConfig { handshake_rate_per_ip: 1000, ..TransportConfig::server() };
    let server = net.endpoint(addr(SERVER), cfg).unwrap();
    let raw = net.raw_socket(addr(CLIENT)).unwrap();
    // Another port of the same host: a cookie proves one address and port.
    let other = net.raw_socket(addr("10.0.0.2:5001")).unwrap();
    for nonce in 0..100 {
        raw.send_to(server.local_addr(), &hs(VERSION, Handshake::Hello { nonce }));
        let (_, reply) = raw.recv().await;
        let Handshake::Challenge { nonce: n, cookie } = decode_hs(&reply) else { panic!() };
        assert_eq!(n, nonce);
        // A CONNECT with a tampered cookie, or from another address: dropped silently.
        let forged = wire::Cookie { mac: cookie.mac ^ 1, ..cookie };
        raw.send_to(
            server.local_addr(),
            &hs(
                VERSION,
                Handshake::Connect {
                    nonce,
                    cookie: forged,
                    window: 1 << 20,
                    cluster: 0,
                    token: &[],
                },
            ),
        );
        other.send_to(
            server.local_addr(),
            &hs(
                VERSION,
                Handshake::Connect { nonce, cookie, window: 1 << 20, cluster: 0, token: &[] },
            ),
        );
    }
    assert_eq!(raw.recv_timeout(Duration::from_secs(2)).await, None);
    assert_eq!(other.recv_timeout(Duration::ZERO).await, None);
    assert_eq!(server.session_count(), 0);
    // The echo, made late, after the cookie expired: still nothing.
    raw.send_to(server.local_addr(), &hs(VERSION, Handshake::Hello { nonce: 500 }));
    let Handshake::Challenge { cookie, .. } = decode_hs(&raw.recv().await.1) else { panic!() };
    tokio::time::sleep(Duration::from_secs(30)).await; // virtual time: let the cookie expire
    raw.send_to(
        server.local_addr(),
        &hs(
            VERSION,
            Handshake::Connect { nonce: 500, cookie, window: 1 << 20, cluster: 0, token: &[] },
        ),
    );
    assert_eq!(raw.recv_timeout(Duration::from_secs(2)).await, None);
    assert_eq!(server.session_count(), 0);
}

/// Valid-looking packets with random corruption, plus pure noise, from many addresses.
fn hostile_datagrams(seed: u64, n: usize) -> Vec<(u16, Vec<u8>)> {
    let mut rng = SplitMix64::new(seed);
    let mut templates = vec![
        hs(VERSION, Handshake::Hello { nonce: 1 }),
        hs(
            VERSION,
            Handshake::Connect {
                nonce: 1,
                cookie: wire::Cookie { time: 0, mac: 0 },
                window: 99,
                cluster: 0,
                token: &[],
            },
        ),
        hs(VERSION, Handshake::Accept { nonce: 1, tag: 2, window: 99, proof: None }),
        hs(VERSION, Handshake::Reset { tag: 2 }),
    ];
    let mut data = Vec::new();
    wire::encode_data_header(&mut data, 7, 1, 1);
    data.extend_from_slice(&[0x40, 0, 0, b'x', 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0]);
    templates.push(data);
    (0..n)
        .map(|i| {
            let port = 20000 + rng.below(500) as u16;
            let mut d = if i % 3 == 0 {
                let len = rng.below(1500) as usize;
                (0..len).map(|_| rng.next_u32() as u8).collect()
            } else {
                templates[rng.below(templates.len() as u64) as usize].clone()
            };
            for _ in 0..rng.below(4) {
                if !d.is_empty() {
                    let at = rng.below(d.len() as u64) as usize;
                    d[at] = rng.next_u32() as u8;
                }
            }
            if rng.below(4) == 0 {
                d.truncate(rng.below(d.len() as u64 + 1) as usize);
            }
            (port, d)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn random_datagrams_never_panic_and_leave_no_state() {
    let net = net();
    let mut server = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let mut sockets = std::collections::HashMap::new();
    for (port, d) in hostile_datagrams(0xbad, 20_000) {
        let raw = sockets
            .entry(port)
            .or_insert_with(|| net.raw_socket(SocketAddr::new(addr(CLIENT).ip(), port)).unwrap());
        raw.send_to(addr(SERVER), &d);
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // virtual time: let them all arrive
    assert_eq!(server.session_count(), 0);
    // The server still serves a real client.
    let client = net.endpoint(addr(CLIENT), TransportConfig::default()).unwrap();
    let conn = client.connect(addr(SERVER)).await.unwrap();
    conn.send(Delivery::ReliableUnordered, Bytes::from_static(b"still here")).unwrap();
    let Event::Message { payload, .. } = next_non_connect(&mut server).await else { panic!() };
    assert_eq!(&payload[..], b"still here");
    assert_eq!(server.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_client_is_a_new_session_and_replaces_the_old() {
    let net = net();
    let mut server = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let mut first = net.endpoint(addr(CLIENT), TransportConfig::default()).unwrap();
    let c1 = first.connect(addr(SERVER)).await.unwrap();
    c1.send(Delivery::reliable_ordered(0), Bytes::from_static(b"old")).unwrap();
    let Event::Connected(old) = next(&mut server).await else { panic!() };
    let Event::Message { payload, .. } = next(&mut server).await else { panic!() };
    assert_eq!(&payload[..], b"old");
    // The client process dies without a word (its CLOSE is lost), and restarts on the same port.
    net.set_down(addr(CLIENT), true);
    first.close().await;
    drop(first);
    net.set_down(addr(CLIENT), false);
    let second = net.endpoint(addr(CLIENT), TransportConfig::default()).unwrap();
    let c2 = second.connect(addr(SERVER)).await.unwrap();
    c2.send(Delivery::reliable_ordered(0), Bytes::from_static(b"new")).unwrap();
    assert_eq!(disconnected(&mut server, old.peer_id()).await, DisconnectReason::Replaced);
    let Event::Connected(new) = next(&mut server).await else { panic!() };
    assert_ne!(new.peer_id(), old.peer_id());
    let Event::Message { peer, payload, .. } = next(&mut server).await else { panic!() };
    assert_eq!(
        (peer, &payload[..]),
        (new.peer_id(), &b"new"[..]),
        "nothing of the old session merges in"
    );
    assert_eq!(server.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_server_resets_its_old_clients_at_once() {
    let net = net();
    let (mut server, mut client, conn) = sim_pair(&net, SERVER, CLIENT).await;
    // The server process dies without a word and restarts on the same address.
    net.set_down(addr(SERVER), true);
    server.close().await;
    drop(server);
    net.set_down(addr(SERVER), false);
    let _restarted = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let t0 = tokio::time::Instant::now();
    conn.send(Delivery::reliable_ordered(0), Bytes::from_static(b"anyone?")).unwrap();
    assert_eq!(disconnected(&mut client, conn.peer_id()).await, DisconnectReason::Reset);
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "reset after {:?}, not the idle timeout",
        t0.elapsed()
    );
    assert!(!conn.is_connected());
    assert_eq!(
        conn.send(Delivery::Unreliable, Bytes::new()),
        Err(grainwire::error::SendError::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn silence_times_out_and_keepalive_keeps_an_idle_session_alive() {
    let net = net();
    let (mut server, mut client, conn) = sim_pair(&net, SERVER, CLIENT).await;
    let Event::Connected(sc) = next(&mut server).await else { panic!() };
    // A minute with no application traffic: pings keep it up and measure the RTT.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(conn.is_connected() && sc.is_connected());
    let rtt = conn.stats().rtt;
    assert!(rtt >= Duration::from_millis(39) && rtt <= Duration::from_millis(45), "rtt {rtt:?}");
    assert!(conn.stats().packets_sent > 50, "{:?}", conn.stats());
    // The network goes silent: both sides time out after the idle timeout.
    net.set_down(addr(SERVER), true);
    let t0 = tokio::time::Instant::now();
    assert_eq!(disconnected(&mut server, sc.peer_id()).await, DisconnectReason::Timeout);
    assert_eq!(disconnected(&mut client, conn.peer_id()).await, DisconnectReason::Timeout);
    let idle = TransportConfig::default().idle_timeout;
    assert!(
        t0.elapsed() >= idle - Duration::from_secs(1)
            && t0.elapsed() <= idle + Duration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn connect_times_out_without_a_server() {
    let net = net();
    let client = net.endpoint(addr(CLIENT), TransportConfig::default()).unwrap();
    let t0 = tokio::time::Instant::now();
    match client.connect(addr(SERVER)).await {
        Err(ConnectError::Failed(DisconnectReason::Timeout)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(t0.elapsed(), TransportConfig::default().handshake_timeout);
    assert_eq!(client.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn close_flushes_queued_reliable_data_then_tells_the_peer() {
    let net = SimNetwork::new(
        3,
        SimConfig { loss: 0.1, delay: Duration::from_millis(20), ..SimConfig::default() },
    );
    let (mut server, mut client, conn) = sim_pair(&net, SERVER, CLIENT).await;
    for i in 0..300u32 {
        conn.send(Delivery::reliable_ordered(1), Bytes::from(i.to_le_bytes().to_vec())).unwrap();
    }
    conn.close(42);
    assert_eq!(
        conn.send(Delivery::Unreliable, Bytes::new()).err(),
        None.or(conn.send(Delivery::Unreliable, Bytes::new()).err())
    );
    let mut got = 0u32;
    loop {
        match next_non_connect(&mut server).await {
            Event::Message { payload, .. } => {
                assert_eq!(payload[..], got.to_le_bytes());
                got += 1;
            }
            Event::Disconnected { reason, .. } => {
                assert_eq!(reason, DisconnectReason::ClosedByPeer { code: 42 });
                break;
            }
            Event::Connected(_) => unreachable!(),
        }
    }
    assert_eq!(got, 300, "every queued message arrived before the close");
    assert_eq!(disconnected(&mut client, conn.peer_id()).await, DisconnectReason::ClosedLocally);
    // Both sides forget the session once the close has drained.
    let forgotten = || (server.session_count(), client.session_count()) == (0, 0);
    wait_until("both sides forgot the session", Duration::from_secs(1), forgotten).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_server_and_a_non_server_reject_with_a_typed_error() {
    let net = net();
    let server = net
        .endpoint(addr(SERVER), TransportConfig { max_connections: 1, ..TransportConfig::server() })
        .unwrap();
    let a = net.endpoint(addr("10.0.0.3:1"), TransportConfig::default()).unwrap();
    let b = net.endpoint(addr("10.0.0.4:1"), TransportConfig::default()).unwrap();
    let _ca = a.connect(server.local_addr()).await.unwrap();
    match b.connect(server.local_addr()).await {
        Err(ConnectError::Failed(DisconnectReason::Rejected(Rejection::ServerFull))) => {}
        other => panic!("{other:?}"),
    }
    match b.connect(a.local_addr()).await {
        Err(ConnectError::Failed(DisconnectReason::Rejected(Rejection::NotAccepting))) => {}
        other => panic!("{other:?}"),
    }
    match a.connect(server.local_addr()).await {
        Err(ConnectError::AlreadyConnected) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn endpoint_close_ends_every_session_and_the_task() {
    let net = net();
    let (mut server, mut client, conn) = sim_pair(&net, SERVER, CLIENT).await;
    let Event::Connected(sc) = next(&mut server).await else { panic!() };
    server.close().await;
    assert!(server.is_closed());
    assert_eq!(
        disconnected(&mut client, conn.peer_id()).await,
        DisconnectReason::ClosedByPeer { code: 0 }
    );
    assert!(!sc.is_connected());
    // The server's event stream ends after its last events.
    while let Some(ev) = server.next_event().await {
        if let Event::Disconnected { reason, .. } = ev {
            assert_eq!(reason, DisconnectReason::ClosedLocally);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_address_gets_its_share_of_sessions_and_others_still_connect() {
    let net = net();
    let cfg = TransportConfig { max_connections_per_ip: 2, ..TransportConfig::server() };
    let server = net.endpoint(addr(SERVER), cfg).unwrap();
    let mut held = Vec::new();
    for port in 1..=2 {
        let ep =
            net.endpoint(addr(&format!("10.0.0.7:{port}")), TransportConfig::default()).unwrap();
        let conn = ep.connect(addr(SERVER)).await.unwrap();
        held.push((ep, conn));
    }
    let third = net.endpoint(addr("10.0.0.7:3"), TransportConfig::default()).unwrap();
    match third.connect(addr(SERVER)).await {
        Err(ConnectError::Failed(DisconnectReason::Rejected(Rejection::TooManyFromAddress))) => {}
        other => panic!("{other:?}"),
    }
    // Another address is served; and once one of the first address's sessions ends, that
    // address may open another.
    let other = net.endpoint(addr("10.0.0.8:1"), TransportConfig::default()).unwrap();
    let _other = other.connect(addr(SERVER)).await.unwrap();
    let stats = server.stats();
    assert_eq!((stats.rejected_per_ip, stats.sessions), (1, 3), "{stats:?}");
    held[0].1.close(0);
    let freed = || server.stats().sessions == 3 - 1;
    wait_until("the closed session forgotten", Duration::from_secs(2), freed).await;
    third.connect(addr(SERVER)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flood_from_one_address_is_rate_limited_before_the_gate_and_others_connect() {
    let net = net();
    let server = net.endpoint(addr(SERVER), TransportConfig::server()).unwrap();
    let raw = net.raw_socket(addr(CLIENT)).unwrap();
    for nonce in 0..1000 {
        raw.send_to(server.local_addr(), &hs(VERSION, Handshake::Hello { nonce }));
    }
    let mut answered = 0;
    while raw.recv_timeout(Duration::from_millis(100)).await.is_some() {
        answered += 1;
    }
    let limit = TransportConfig::default().handshake_rate_per_ip as usize;
    assert_eq!(answered, limit, "one second's budget of answers");
    assert_eq!(server.stats().handshakes_rate_limited, 1000 - limit as u64);
    // Another address is unaffected, and the budget refills.
    let client = net.endpoint(addr("10.0.0.3:1"), TransportConfig::default()).unwrap();
    let _conn = client.connect(addr(SERVER)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    raw.send_to(server.local_addr(), &hs(VERSION, Handshake::Hello { nonce: 5000 }));
    assert!(raw.recv_timeout(Duration::from_millis(100)).await.is_some());
    assert_eq!(server.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_are_parked_and_come_back_for_datagrams_commands_and_timers() {
    let net = net();
    let cfg = TransportConfig { max_connections_per_ip: 100, ..TransportConfig::server() };
    let mut server = net.endpoint(addr(SERVER), cfg).unwrap();
    let mut clients = Vec::new();
    for port in 1..=50 {
        let ep =
            net.endpoint(addr(&format!("10.0.0.3:{port}")), TransportConfig::default()).unwrap();
        let conn = ep.connect(addr(SERVER)).await.unwrap();
        clients.push((ep, conn));
    }
    let mut server_side = Vec::new();
    while server_side.len() < 50 {
        if let Event::Connected(c) = next(&mut server).await {
            server_side.push(c);
        }
    }
    // Three idle timeouts long: the parked sessions' timers (keepalives) keep them all alive,
    // and most of the time they wait parked, outside laminar's manager.
    let mut most_parked = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        most_parked = most_parked.max(server.stats().parked_sessions);
    }
    assert!(most_parked >= 45, "parked at most {most_parked} of 50");
    assert_eq!(server.session_count(), 50);
    assert!(clients.iter().all(|(_, c)| c.is_connected()));
    // A command for a parked session (a send) and a datagram from a parked session's peer
    // each bring it back at once: one network delay (20 ms), not a timer.
    let (ep, conn) = &mut clients[7];
    let on_server = server_side.iter().find(|c| c.remote_addr() == ep.local_addr()).unwrap();
    assert!(server.stats().parked_sessions >= 45);
    let start = tokio::time::Instant::now();
    on_server.send(Delivery::reliable_ordered(1), Bytes::from_static(b"wake")).unwrap();
    assert_eq!(&message(ep).await[..], b"wake");
    assert!(start.elapsed() <= Duration::from_millis(25), "{:?}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = tokio::time::Instant::now();
    conn.send(Delivery::reliable_ordered(1), Bytes::from_static(b"hi")).unwrap();
    assert_eq!(&message(&mut server).await[..], b"hi");
    assert!(start.elapsed() <= Duration::from_millis(25), "{:?}", start.elapsed());
    // Closing a parked session works and its peer learns it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    on_server.close(9);
    assert_eq!(disconnected(ep, conn.peer_id()).await, DisconnectReason::ClosedByPeer { code: 9 });
    let forgotten = || server.session_count() == 49; // its CLOSE lingers a few RTTs
    wait_until("the closed session forgotten", Duration::from_secs(1), forgotten).await;
}

/// Raw sessions that send reliable messages behind a gap (message 0 never comes), so the
/// endpoint must hold them: past `max_receive_buffered` in all, a session over its share is
/// shed, what it held freed, and another session is served as usual.
#[tokio::test(start_paused = true)]
async fn received_data_held_by_all_sessions_has_one_budget() {
    use grainwire::testing::{RawEvent, RawPeer};
    let net = net();
    let limit = 256 << 10;
    let cfg = TransportConfig { max_receive_buffered: limit, ..TransportConfig::server() };
    let mut server = net.endpoint(addr(SERVER), cfg).unwrap();
    let mut peers = Vec::new();
    for port in 1..=2u16 {
        let sock = net.raw_socket(addr(&format!("10.0.0.5:{port}"))).unwrap();
        let mut peer = RawPeer::new(u32::from(port), 1 << 20);
        raw_handshake(&sock, addr(SERVER), &mut peer).await;
        peers.push((sock, peer));
    }
    // The first session sends 1,000 KB behind a gap on stream 1: far more than the budget.
    let (sock, peer) = &mut peers[0];
    let mut shed = None;
    let mut most = 0;
    for seq in 1..=1000u64 {
        let mut frames = Vec::new();
        RawPeer::message(&mut frames, wire::Class::ReliableOrdered, 1, seq, None, &[1; 1000]);
        sock.send_to(addr(SERVER), &peer.data(&frames).unwrap());
        tokio::time::sleep(Duration::from_millis(1)).await;
        most = most.max(server.stats().receive_held);
        while let Some((_, d)) = sock.recv_timeout(Duration::ZERO).await {
            if let RawEvent::Ended(kind) = peer.on_datagram(&d) {
                shed = shed.or(kind);
            }
        }
        if shed.is_some() {
            break;
        }
    }
    assert_eq!(shed, Some(wire::CloseKind::Shed), "the hog was told why");
    let slack = 1100; // the datagram that crossed the budget
    assert!(most <= limit as u64 + slack, "held {most}");
    let stats = server.stats();
    assert_eq!((stats.sessions_shed, stats.receive_held), (1, 0), "{stats:?}");
    // The second session is under its share: its messages are delivered.
    let (sock, peer) = &mut peers[1];
    let mut frames = Vec::new();
    RawPeer::message(&mut frames, wire::Class::ReliableOrdered, 1, 0, None, b"fine");
    sock.send_to(addr(SERVER), &peer.data(&frames).unwrap());
    loop {
        if let Event::Message { payload, .. } = next(&mut server).await {
            assert_eq!(&payload[..], b"fine");
            break;
        }
    }
}
