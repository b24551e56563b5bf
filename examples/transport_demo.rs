//! The transport in one process: a server and a client endpoint over loopback UDP, every
//! delivery class, a large message, a lossy link, and a statistics table. Exits 0.
//!
//! ```sh
//! cargo run --release --example transport_demo
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::transport::{Connection, ConnectionStats, Delivery, Endpoint, Event, PeerId};

fn row(name: &str, s: &ConnectionStats) {
    println!(
        "{name:<8} {:>9.1} {:>9.1} {:>8} {:>8} {:>10} {:>10} {:>8} {:>7} {:>6.1}%",
        s.rtt.as_secs_f64() * 1e6,
        s.rtt_var.as_secs_f64() * 1e6,
        s.packets_sent,
        s.packets_received,
        s.bytes_sent,
        s.bytes_received,
        s.retransmissions,
        s.messages_received,
        s.loss * 100.0
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Endpoint::bind("127.0.0.1:0".parse()?, TransportConfig::server())?;
    let mut client = Endpoint::bind("127.0.0.1:0".parse()?, TransportConfig::default())?;
    println!("server listening on {}", server.local_addr());

    let t = Instant::now();
    let conn = client.connect(server.local_addr()).await?;
    println!("client connected as {} in {:?}", conn.peer_id(), t.elapsed());

    // The server echoes every message back on the same delivery class.
    let server_task = tokio::spawn(async move {
        let mut peers: HashMap<PeerId, Connection> = HashMap::new();
        let mut echoed = 0u32;
        while let Some(ev) = server.next_event().await {
            match ev {
                Event::Connected(c) => {
                    println!("server: {} connected from {}", c.peer_id(), c.remote_addr());
                    peers.insert(c.peer_id(), c);
                }
                Event::Message { peer, delivery, payload } => {
                    if let Some(c) = peers.get(&peer) {
                        c.send(delivery, payload)?;
                        echoed += 1;
                    }
                }
                Event::Disconnected { peer, reason } => {
                    println!("server: {peer} disconnected: {reason}");
                    let stats = peers.remove(&peer).map(|c| c.stats());
                    return Ok::<_, grainwire::error::SendError>((echoed, stats));
                }
            }
        }
        Ok((echoed, None))
    });

    // 1. Ping-pong on a reliable-ordered stream.
    let mut rtts = Vec::new();
    for i in 0..1000u32 {
        let t = Instant::now();
        conn.send(Delivery::reliable_ordered(0), i.to_le_bytes().to_vec())?;
        loop {
            if let Some(Event::Message { .. }) = client.next_event().await {
                break;
            }
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    println!("1000 ping-pongs, reliable-ordered: p50 {:?}, p99 {:?}", rtts[500], rtts[990]);

    // 2. Every class at once, plus a 256 KiB message split into chunks and reassembled.
    let big = Bytes::from((0..256 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    conn.send(Delivery::reliable_ordered(1), big.clone())?;
    for i in 0..100u32 {
        conn.send(Delivery::ReliableUnordered, i.to_le_bytes().to_vec())?;
        conn.send(Delivery::Unreliable, i.to_le_bytes().to_vec())?;
        conn.send(Delivery::unreliable_sequenced(2), i.to_le_bytes().to_vec())?;
    }
    let mut by_class: HashMap<&str, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, client.next_event()).await {
        if let Event::Message { delivery, payload, .. } = ev {
            let name = match delivery {
                Delivery::ReliableOrdered(_) => {
                    assert_eq!(payload, big, "the large message came back intact");
                    "reliable-ordered (256 KiB)"
                }
                Delivery::ReliableUnordered => "reliable-unordered",
                Delivery::Unreliable => "unreliable",
                Delivery::UnreliableSequenced(_) => "unreliable-sequenced",
            };
            *by_class.entry(name).or_default() += 1;
            if by_class.get("reliable-unordered") == Some(&100)
                && by_class.contains_key("reliable-ordered (256 KiB)")
            {
                break;
            }
        }
    }
    let mut classes: Vec<_> = by_class.into_iter().collect();
    classes.sort();
    for (name, n) in classes {
        println!("echoed back: {n:>4} x {name}");
    }

    // 3. Statistics, then a clean close with a code the server sees.
    let client_stats = conn.stats();
    conn.close(42);
    let (echoed, server_stats) = server_task.await??;
    println!("server echoed {echoed} messages\n");
    println!(
        "{:<8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10} {:>8} {:>7} {:>7}",
        "side",
        "rtt µs",
        "var µs",
        "pkts out",
        "pkts in",
        "bytes out",
        "bytes in",
        "resent",
        "msgs in",
        "loss"
    );
    row("client", &client_stats);
    if let Some(s) = server_stats {
        row("server", &s);
    }
    client.close().await;
    Ok(())
}
