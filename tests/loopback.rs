//! End to end over real loopback UDP sockets.

use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::transport::{Delivery, Endpoint, Event};

mod support;
use support::udp_pair;

#[tokio::test]
async fn every_class_round_trips_over_loopback() {
    let (mut server, mut client) = udp_pair();
    let conn = client.connect(server.local_addr()).await.expect("connect");
    assert!(conn.is_connected());
    let Some(Event::Connected(_)) = client.next_event().await else { panic!("client Connected") };
    let Some(Event::Connected(sc)) = server.next_event().await else { panic!("server Connected") };
    let n = 1000u32;
    for i in 0..n {
        conn.send(Delivery::reliable_ordered((i % 3) as u8), Bytes::from(i.to_le_bytes().to_vec()))
            .unwrap();
    }
    conn.send(Delivery::ReliableUnordered, Bytes::from_static(b"unordered")).unwrap();
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    conn.send(Delivery::reliable_ordered(9), Bytes::from(big.clone())).unwrap();
    let mut next = [0u32; 3];
    let mut got_big = false;
    let mut got_unordered = false;
    let mut count = 0;
    while count < n || !got_big || !got_unordered {
        let ev = tokio::time::timeout(Duration::from_secs(10), server.next_event())
            .await
            .expect("timely")
            .unwrap();
        match ev {
            Event::Message { delivery: Delivery::ReliableOrdered(s), payload, peer } if s.0 < 3 => {
                assert_eq!(peer, sc.peer_id());
                let v = u32::from_le_bytes(payload[..].try_into().unwrap());
                assert_eq!(v % 3, u32::from(s.0));
                assert_eq!(v / 3, next[s.0 as usize], "in order on its stream");
                next[s.0 as usize] += 1;
                count += 1;
            }
            Event::Message { delivery: Delivery::ReliableOrdered(s), payload, .. } => {
                assert_eq!(s.0, 9);
                assert_eq!(&payload[..], &big[..]);
                got_big = true;
            }
            Event::Message { delivery: Delivery::ReliableUnordered, payload, .. } => {
                assert_eq!(&payload[..], b"unordered");
                got_unordered = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = conn.stats();
    assert!(stats.packets_sent > 0);
    conn.close(7);
    let ev =
        tokio::time::timeout(Duration::from_secs(10), server.next_event()).await.unwrap().unwrap();
    match ev {
        Event::Disconnected { reason, .. } => {
            assert_eq!(reason, grainwire::error::DisconnectReason::ClosedByPeer { code: 7 });
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn messages(ep: &mut Endpoint, n: usize) -> Vec<(grainwire::transport::PeerId, Bytes)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), ep.next_event())
            .await
            .expect("no stall")
            .unwrap()
        {
            Event::Message { peer, payload, .. } => out.push((peer, payload)),
            Event::Disconnected { reason, .. } => panic!("disconnected: {reason}"),
            Event::Connected(_) => {}
        }
    }
    out
}

#[tokio::test]
async fn ten_thousand_queued_messages_drain_over_real_udp() {
    let (mut server, client) = udp_pair();
    let conn = client.connect(server.local_addr()).await.unwrap();
    for i in 0..10_000u32 {
        let mut p = vec![0u8; 32];
        p[..4].copy_from_slice(&i.to_le_bytes());
        conn.send(Delivery::reliable_ordered(0), p).unwrap();
    }
    for (i, (_, p)) in messages(&mut server, 10_000).await.into_iter().enumerate() {
        assert_eq!(p[..4], (i as u32).to_le_bytes());
    }
}

#[tokio::test]
async fn one_socket_serves_many_peers_both_ways() {
    // One server socket, eight clients; one client socket, three servers.
    let mut server =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::server()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let ep =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::default()).unwrap();
        let conn = ep.connect(server.local_addr()).await.unwrap();
        clients.push((ep, conn));
    }
    for (k, (_, conn)) in clients.iter().enumerate() {
        for i in 0..100u32 {
            conn.send(Delivery::reliable_ordered(0), vec![k as u8, i as u8]).unwrap();
        }
    }
    let got = messages(&mut server, 800).await;
    for (k, (_, conn)) in clients.iter().enumerate() {
        let from_k: Vec<_> =
            got.iter().filter(|(_, p)| p[0] == k as u8).map(|(_, p)| p[1]).collect();
        assert_eq!(from_k, (0..100u32).map(|i| i as u8).collect::<Vec<_>>(), "client {k} in order");
        assert!(conn.is_connected());
    }
    assert_eq!(server.session_count(), 8);

    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::server()).unwrap(),
        );
    }
    let (client, _) = &clients[0];
    for (k, s) in servers.iter().enumerate() {
        let conn = client.connect(s.local_addr()).await.unwrap();
        conn.send(Delivery::ReliableUnordered, vec![k as u8]).unwrap();
    }
    for (k, s) in servers.iter_mut().enumerate() {
        assert_eq!(messages(s, 1).await[0].1[..], [k as u8]);
    }
    assert_eq!(clients[0].0.session_count(), 4);
}
