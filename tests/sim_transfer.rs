//! Bulk and edge-case transfers over the simulated network: a lost tail, a long queue,
//! a large message under reordering, oversize sends, tight flow control, both directions at
//! once, and an application that falls behind on its events.

use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::error::SendError;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::transport::{Connection, Delivery, Endpoint, Event};

mod support;
use support::{addr, message, wait_until};

const SERVER: &str = "10.0.0.1:9000";
const CLIENT: &str = "10.0.0.2:5000";

async fn setup(
    net: &SimNetwork,
    server_cfg: TransportConfig,
    client_cfg: TransportConfig,
) -> (Endpoint, Endpoint, Connection, Connection) {
    let mut server = net.endpoint(addr(SERVER), server_cfg).unwrap();
    let client = net.endpoint(addr(CLIENT), client_cfg).unwrap();
    let conn = client.connect(addr(SERVER)).await.unwrap();
    let sc = loop {
        if let Some(Event::Connected(c)) = server.next_event().await {
            break c;
        }
    };
    (server, client, conn, sc)
}

#[tokio::test(start_paused = true)]
async fn a_lost_tail_packet_is_recovered_within_a_few_rtts() {
    let net =
        SimNetwork::new(1, SimConfig { delay: Duration::from_millis(20), ..SimConfig::default() });
    let (mut server, _client, conn, _) =
        setup(&net, TransportConfig::server(), TransportConfig::default()).await;
    // Warm up the RTT estimate.
    for i in 0..20u8 {
        conn.send(Delivery::reliable_ordered(0), vec![i]).unwrap();
        assert_eq!(message(&mut server).await[..], [i]);
    }
    let rtt = conn.stats().rtt;
    assert!(rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(45), "rtt {rtt:?}");
    // The only datagram carrying the last message is lost; nothing follows it.
    net.drop_next(addr(CLIENT), addr(SERVER), 1);
    let t0 = tokio::time::Instant::now();
    conn.send(Delivery::reliable_ordered(0), Bytes::from_static(b"tail")).unwrap();
    assert_eq!(&message(&mut server).await[..], b"tail");
    let took = t0.elapsed();
    assert!(took > rtt / 2, "it was really lost ({took:?})");
    assert!(took <= rtt * 4, "recovered after {took:?}, rtt {rtt:?}");
    assert!(conn.stats().retransmissions >= 1);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_queued_messages_drain() {
    let net = SimNetwork::new(
        2,
        SimConfig {
            loss: 0.02,
            delay: Duration::from_millis(15),
            jitter: Duration::from_millis(3),
            queue_limit: 256,
            ..SimConfig::default()
        },
    );
    let (mut server, _client, conn, _) =
        setup(&net, TransportConfig::server(), TransportConfig::default()).await;
    for i in 0..10_000u32 {
        conn.send(Delivery::reliable_ordered(0), i.to_le_bytes().to_vec()).unwrap();
    }
    for i in 0..10_000u32 {
        assert_eq!(message(&mut server).await[..], i.to_le_bytes());
    }
    // The last acks reach the sender.
    let acked = || conn.stats().messages_in_flight == 0;
    wait_until("every message acknowledged", Duration::from_millis(200), acked).await;
    let s = conn.stats();
    assert!(s.packets_sent < 2_000, "packed many messages per datagram: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_200_kib_message_reassembles_under_heavy_reordering_and_loss() {
    let net = SimNetwork::new(
        3,
        SimConfig {
            loss: 0.1,
            duplicate: 0.1,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(30),
            reorder: 0.3,
            reorder_delay: Duration::from_millis(40),
            ..SimConfig::default()
        },
    );
    let (mut server, _client, conn, _) =
        setup(&net, TransportConfig::server(), TransportConfig::default()).await;
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 31 % 253) as u8).collect();
    for delivery in [Delivery::reliable_ordered(3), Delivery::ReliableUnordered] {
        conn.send(delivery, big.clone()).unwrap();
        assert!(message(&mut server).await == big, "{delivery:?}: intact");
    }
    // Unreliable chunked messages arrive whole or not at all; on a clean link, whole.
    net.set_config(SimConfig { jitter: Duration::from_millis(30), ..SimConfig::default() });
    conn.send(Delivery::Unreliable, big[..50_000].to_vec()).unwrap();
    assert!(message(&mut server).await == big[..50_000]);
}

#[tokio::test(start_paused = true)]
async fn oversize_sends_fail_with_their_error() {
    let net = SimNetwork::new(4, SimConfig::default());
    let cfg = TransportConfig { max_message_size: 64 * 1024, ..TransportConfig::default() };
    let (_server, _client, conn, _) = setup(&net, TransportConfig::server(), cfg).await;
    let max = conn.max_message_size(Delivery::ReliableUnordered);
    assert_eq!(max, 64 * 1024);
    assert_eq!(
        conn.send(Delivery::ReliableUnordered, vec![0; max + 1]),
        Err(SendError::MessageTooLarge { size: max + 1, max })
    );
    assert_eq!(conn.send(Delivery::ReliableUnordered, vec![0; max]), Ok(()));
    // The peer's window bounds reliable messages too.
    let net = SimNetwork::new(5, SimConfig::default());
    let small = TransportConfig {
        max_message_size: 4096,
        receive_window: 8192,
        ..TransportConfig::server()
    };
    let (_server, _client, conn, _) = setup(&net, small, TransportConfig::default()).await;
    let max = conn.max_message_size(Delivery::reliable_ordered(0));
    assert!(max < 8192, "{max}");
    assert!(matches!(
        conn.send(Delivery::reliable_ordered(0), vec![0; max + 1]),
        Err(SendError::MessageTooLarge { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_send_buffer_bounds_what_is_queued() {
    let net = SimNetwork::new(6, SimConfig::default());
    let cfg = TransportConfig {
        max_message_size: 1000,
        send_buffer: 10_000,
        ..TransportConfig::default()
    };
    let (mut server, _client, conn, _) = setup(&net, TransportConfig::server(), cfg).await;
    let mut accepted = 0;
    let err = loop {
        match conn.send(Delivery::ReliableUnordered, vec![1; 900]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SendError::BufferFull { limit: 10_000, .. }), "{err:?}");
    assert_eq!(accepted, 10_000 / (900 + 160), "each message counts 160 bytes beyond its payload");
    // send_wait waits for room instead.
    for _ in 0..50 {
        conn.send_wait(Delivery::ReliableUnordered, vec![2; 900]).await.unwrap();
    }
    for _ in 0..accepted + 50 {
        message(&mut server).await;
    }
}

#[tokio::test(start_paused = true)]
async fn tight_windows_and_credit_still_deliver_everything_in_order() {
    let net = SimNetwork::new(
        7,
        SimConfig {
            loss: 0.05,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            ..SimConfig::default()
        },
    );
    let tight = TransportConfig {
        max_message_size: 4096,
        receive_window: 6000,
        stream_window: 4,
        max_window: 8 * 1200,
        initial_window_packets: 4,
        min_window_packets: 2,
        ..TransportConfig::default()
    };
    let (mut server, _client, conn, _) =
        setup(&net, TransportConfig { accept_incoming: true, ..tight.clone() }, tight).await;
    let size = |i: u32| 1 + (i as usize * 613) % 3000;
    for i in 0..1500u32 {
        let mut p = vec![0u8; size(i)];
        p[..1].copy_from_slice(&[(i % 256) as u8]);
        conn.send(Delivery::reliable_ordered((i % 2) as u8), p).unwrap();
    }
    let mut next = [0u32, 1];
    for _ in 0..1500 {
        let p = message(&mut server).await;
        let s = if p.len() == size(next[0]) && p[0] == (next[0] % 256) as u8 { 0 } else { 1 };
        assert_eq!((p.len(), p[0]), (size(next[s]), (next[s] % 256) as u8), "stream {s} in order");
        next[s] += 2;
    }
}

#[tokio::test(start_paused = true)]
async fn both_directions_at_once_under_loss() {
    let net = SimNetwork::new(
        8,
        SimConfig {
            loss: 0.1,
            duplicate: 0.05,
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
            ..SimConfig::default()
        },
    );
    let (mut server, mut client, conn, sc) =
        setup(&net, TransportConfig::server(), TransportConfig::default()).await;
    for i in 0..3000u32 {
        conn.send(Delivery::reliable_ordered(0), i.to_le_bytes().to_vec()).unwrap();
        sc.send(Delivery::reliable_ordered(0), (i + 1_000_000).to_le_bytes().to_vec()).unwrap();
    }
    let (a, b) = tokio::join!(
        async {
            for i in 0..3000u32 {
                assert_eq!(message(&mut server).await[..], i.to_le_bytes());
            }
        },
        async {
            for i in 0..3000u32 {
                assert_eq!(message(&mut client).await[..], (i + 1_000_000).to_le_bytes());
            }
        }
    );
    let _ = (a, b);
}

#[tokio::test(start_paused = true)]
async fn an_application_that_falls_behind_pauses_reading_and_loses_nothing() {
    let net = SimNetwork::new(
        9,
        SimConfig { delay: Duration::from_millis(5), queue_limit: 64, ..SimConfig::default() },
    );
    let server_cfg = TransportConfig { event_backlog: 32, ..TransportConfig::server() };
    let (mut server, _client, conn, _) = setup(&net, server_cfg, TransportConfig::default()).await;
    for i in 0..5000u32 {
        conn.send(Delivery::reliable_ordered(0), i.to_le_bytes().to_vec()).unwrap();
    }
    // The application takes a long break before reading anything.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..5000u32 {
        assert_eq!(message(&mut server).await[..], i.to_le_bytes());
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await; // and more breaks
        }
    }
    assert!(conn.is_connected());
}
