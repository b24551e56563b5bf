//! Every delivery class over the simulated network with loss, duplication and reordering,
//! many seeds: reliable classes deliver each message exactly once (ordered streams in order),
//! unreliable never duplicates, sequenced never goes backwards.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::transport::{Delivery, Endpoint, Event};

const MESSAGES: u32 = 2000;
const STREAMS: u8 = 4;

fn chaos(loss: f64) -> SimConfig {
    SimConfig {
        loss,
        duplicate: 0.05,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(8),
        reorder: 0.1,
        reorder_delay: Duration::from_millis(15),
        ..SimConfig::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ordered,
    Unordered,
    Unreliable,
    Sequenced,
}

fn delivery(kind: Kind, i: u32) -> Delivery {
    let stream = (i % u32::from(STREAMS)) as u8;
    match kind {
        Kind::Ordered => Delivery::reliable_ordered(stream),
        Kind::Unordered => Delivery::ReliableUnordered,
        Kind::Unreliable => Delivery::Unreliable,
        Kind::Sequenced => Delivery::unreliable_sequenced(stream),
    }
}

fn payload(i: u32) -> Bytes {
    // Sizes vary from a few bytes to two chunks, so packing and chunking both happen.
    let len = 4 + (i as usize * 37) % 1800;
    let mut v = vec![(i % 251) as u8; len];
    v[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

async fn next(ep: &mut Endpoint, within: Duration) -> Option<Event> {
    tokio::time::timeout(within, ep.next_event()).await.ok().flatten()
}

async fn run(kind: Kind, loss: f64, seed: u64) {
    let ctx = format!("{kind:?} loss {loss} seed {seed}");
    let net = SimNetwork::new(seed, chaos(loss));
    let mut server =
        net.endpoint("10.0.0.1:9000".parse().unwrap(), TransportConfig::server()).unwrap();
    let client = net.endpoint("10.0.0.2:0".parse().unwrap(), TransportConfig::default()).unwrap();
    let conn = client.connect(server.local_addr()).await.unwrap_or_else(|e| panic!("{ctx}: {e}"));
    for i in 0..MESSAGES {
        conn.send(delivery(kind, i), payload(i)).unwrap();
    }
    let reliable = matches!(kind, Kind::Ordered | Kind::Unordered);
    let mut seen = HashSet::new();
    let mut last = [None::<u32>; STREAMS as usize];
    // Reliable: until all arrive (bounded by virtual time). Unreliable: until quiet.
    let quiet = if reliable { Duration::from_secs(60) } else { Duration::from_secs(2) };
    while !(reliable && seen.len() == MESSAGES as usize) {
        let Some(ev) = next(&mut server, quiet).await else { break };
        let Event::Message { delivery: d, payload: p, .. } = ev else { continue };
        let i = u32::from_le_bytes(p[..4].try_into().unwrap());
        assert_eq!(p, payload(i), "{ctx}: payload {i} intact");
        assert_eq!(d, delivery(kind, i), "{ctx}: class of {i}");
        assert!(seen.insert(i), "{ctx}: message {i} delivered twice");
        let s = (i % u32::from(STREAMS)) as usize;
        match kind {
            Kind::Ordered => {
                assert_eq!(
                    last[s].map_or(s as u32, |l| l + u32::from(STREAMS)),
                    i,
                    "{ctx}: order on stream {s}"
                );
                last[s] = Some(i);
            }
            Kind::Sequenced => {
                assert!(
                    last[s].is_none_or(|l| i > l),
                    "{ctx}: sequenced went backwards on stream {s}"
                );
                last[s] = Some(i);
            }
            _ => {}
        }
    }
    if reliable {
        assert_eq!(seen.len(), MESSAGES as usize, "{ctx}: all reliable messages delivered");
    } else if loss == 0.0 && matches!(kind, Kind::Unreliable) {
        // Sequenced drops whatever the reordering overtook; plain unreliable loses nothing here.
        assert_eq!(seen.len(), MESSAGES as usize, "{ctx}: unreliable on a loss-free link");
    }
    assert!(net.stats().duplicated > 0, "{ctx}: the network duplicated datagrams");
    let stats = conn.stats();
    if loss > 0.0 && reliable {
        assert!(stats.retransmissions > 0, "{ctx}: loss must cause retransmissions: {stats:?}");
    }
}

/// Seeds per loss rate: 20, or `GRAINWIRE_SEEDS` for a longer soak (the failing seed is in the
/// panic message; rerun it alone by setting `GRAINWIRE_SEED`).
fn seeds() -> Vec<u64> {
    if let Some(one) = std::env::var("GRAINWIRE_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![one];
    }
    let n = std::env::var("GRAINWIRE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20u64);
    (0..n).map(|i| i * 7919 + 1).collect()
}

async fn sweep(kind: Kind) {
    for loss in [0.0, 0.05, 0.2] {
        for seed in seeds() {
            run(kind, loss, seed).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reliable_ordered_exactly_once_in_order() {
    sweep(Kind::Ordered).await;
}

#[tokio::test(start_paused = true)]
async fn reliable_unordered_exactly_once() {
    sweep(Kind::Unordered).await;
}

#[tokio::test(start_paused = true)]
async fn unreliable_never_duplicates() {
    sweep(Kind::Unreliable).await;
}

#[tokio::test(start_paused = true)]
async fn sequenced_never_goes_backwards() {
    sweep(Kind::Sequenced).await;
}
