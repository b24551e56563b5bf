//! End to end over real loopback UDP sockets.

use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::transport::{Delivery, Endpoint, Event};

async fn pair() -> (Endpoint, Endpoint) {
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::server()).unwrap();
    let client =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::default()).unwrap();
    (server, client)
}

#[tokio::test]
async fn every_class_round_trips_over_loopback() {
    let (mut server, mut client) = pair().await;
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
    loop {
        match tokio::time::timeout(Duration::from_secs(10), server.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Disconnected { reason, .. } => {
                assert_eq!(reason, grainwire::error::DisconnectReason::ClosedByPeer { code: 7 });
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
