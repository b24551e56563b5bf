//! Fair shares of the server-wide budgets (issue 19), over the simulated network: one address
//! with many sessions, or 64 addresses, holding everything they can of a budget (answers
//! queued and not acknowledged, topology pushes, pending calls, activation bytes) while a
//! legitimate client from another address is served every call. Each of these failed before:
//! the attacker filled the server-wide bound and every other caller was answered `Overloaded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grainwire::proto::ids::{GrainKey, MethodId, RequestId};
use grainwire::proto::wire::Class;
use grainwire::proto::wire::rpc::{self, CallHeader};
use grainwire::testing::{RawEvent, RawPeer};
use grainwire::transport::sim::{RawSocket, SimConfig, SimNetwork};
use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig, TransportConfig};

mod support;
use support::{addr, raw_handshake};

const SERVER: &str = "10.0.0.1:7000";
const PROBE: &str = "10.0.0.2:1";

#[grainwire::grain]
trait Store {
    /// `n` bytes.
    async fn blob(&mut self, n: u32) -> Vec<u8>;
    /// Answers after `ms` milliseconds.
    async fn hold(&mut self, ms: u64) -> u64;
}

struct StoreGrain;

impl Store for StoreGrain {
    async fn blob(&mut self, n: u32) -> Vec<u8> {
        vec![7; n as usize]
    }
    async fn hold(&mut self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

fn server(net: &SimNetwork, config: ServerConfig) -> Server {
    Server::builder(config)
        .host(Store::host(|_: &GrainId| StoreGrain))
        .bind_sim(net, addr(SERVER))
        .unwrap()
}

/// A hand-driven session that takes what the server sends only as its credit allows: after
/// its first window, `trickle` bytes more each round (it acknowledges everything it gets, so
/// its session is alive and, by the old rule, making progress).
struct Hog {
    sock: RawSocket,
    peer: RawPeer,
    /// Next request id, and next message number on the unordered space and on stream 0.
    slot: u32,
    unordered: u64,
    stream0: u64,
    trickle: u64,
    closed: bool,
}

impl Hog {
    async fn connect(net: &SimNetwork, from: &str, window: u64, trickle: u64) -> Hog {
        let sock = net.raw_socket(addr(from)).unwrap();
        let mut peer = RawPeer::new(11, window);
        raw_handshake(&sock, addr(SERVER), &mut peer).await;
        Hog { sock, peer, slot: 0, unordered: 0, stream0: 0, trickle, closed: false }
    }

    /// Sends `frames` with an acknowledgement of what arrived and a trickle of credit.
    fn flush(&mut self, messages: Vec<u8>) {
        let mut frames = Vec::new();
        self.peer.ack(&mut frames);
        self.peer.forget_received();
        self.peer.grant_more(&mut frames, self.trickle);
        frames.extend_from_slice(&messages);
        self.sock.send_to(addr(SERVER), &self.peer.data(&frames).unwrap());
    }

    /// Sends `count` calls of `method(args)` on `key(slot)`, as many per datagram as fit.
    fn send(&mut self, count: u32, key: impl Fn(u32) -> GrainKey, method: &str, args: &[u8]) {
        let mut frames = Vec::new();
        for _ in 0..count {
            let call = CallHeader {
                type_index: 0,
                version: StoreRef::info().version,
                method: MethodId::of(method),
                deadline_ms: Some(60_000),
                key: key(self.slot),
                chain: Vec::new(),
            };
            let mut m = Vec::new();
            rpc::encode_call(&mut m, Some(RequestId { slot: self.slot, generation: 1 }), &call);
            m.extend_from_slice(args);
            if frames.len() + m.len() > 800 {
                self.flush(std::mem::take(&mut frames));
            }
            RawPeer::message(&mut frames, Class::ReliableUnordered, 0, self.unordered, None, &m);
            self.unordered += 1;
            self.slot += 1;
        }
        self.flush(frames);
    }

    /// Sends `count` `WATCH` frames (a topology subscription each), 50 per datagram.
    fn watch(&mut self, count: u32) {
        let mut m = Vec::new();
        rpc::encode_watch(&mut m, true);
        for _ in 0..count / 50 {
            let mut frames = Vec::new();
            for _ in 0..50 {
                RawPeer::message(&mut frames, Class::ReliableOrdered, 0, self.stream0, None, &m);
                self.stream0 += 1;
            }
            self.flush(frames);
        }
    }

    /// Reads what arrived; notes a close.
    fn read(&mut self) {
        while let Some((_, d)) = self.sock.try_recv() {
            if let RawEvent::Ended(_) = self.peer.on_datagram(&d) {
                self.closed = true;
            }
        }
    }
}

/// Sessions from `addresses` addresses, `per_address` from each.
async fn hogs(net: &SimNetwork, addresses: u32, per_address: u32, trickle: u64) -> Vec<Hog> {
    let mut all = Vec::new();
    for a in 0..addresses {
        for port in 1..=per_address {
            let from = format!("10.1.{}.{}:{port}", a / 200, a % 200 + 1);
            all.push(Hog::connect(net, &from, 64 << 10, trickle).await);
        }
    }
    all
}

/// A well-behaved client calling `blob(100)` `calls` times, one after another, each on a key
/// of its own; every outcome.
async fn probe(net: SimNetwork, calls: u32, stop: Arc<AtomicBool>) -> Vec<Result<(), String>> {
    let c = Client::connect_sim(&net, addr(PROBE), addr(SERVER), ClientConfig::default()).await;
    let c = c.unwrap();
    let mut out = Vec::new();
    for i in 0..calls {
        let r = c.grain::<StoreRef>(1_000_000 + i64::from(i)).blob(100).await;
        out.push(r.map(|v| assert_eq!(v.len(), 100)).map_err(|e| e.to_string()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    out
}

fn answers_config() -> ServerConfig {
    ServerConfig {
        transport: TransportConfig {
            max_message_size: 64 << 10,
            send_buffer: 256 << 10,
            ..TransportConfig::server()
        },
        max_queued_answer_bytes: 2 << 20,
        ..ServerConfig::default()
    }
}

/// One address with 24 sessions, or 64 addresses with one each, ask for answers of 30 KB
/// that their tiny windows let through only a trickle at a time, and flood `WATCH`es: the
/// server holds at most its bound (an eighth over, for what is already running), the attackers
/// are refused or lose sessions, and the probe gets every answer.
#[tokio::test(start_paused = true)]
async fn queued_answers_one_address_or_64_cannot_starve_a_player() {
    for (addresses, per_address) in [(1, 24), (64, 1)] {
        let net = SimNetwork::new(7, SimConfig::default());
        let cfg = answers_config();
        let bound = cfg.max_queued_answer_bytes;
        let server = server(&net, cfg);
        let mut hogs = hogs(&net, addresses, per_address, 300).await;
        let stop = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(probe(net.clone(), 100, stop.clone()));
        let args = postcard::to_allocvec(&(30_000u32,)).unwrap();
        let mut most = 0;
        for _round in 0..1000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for h in hogs.iter_mut().filter(|h| !h.closed) {
                h.read();
                h.send(4, |s| GrainKey::Int(i64::from(s % 8)), "blob", &args);
                h.watch(200);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            most = most.max(server.stats().transport.queued_bytes);
        }
        let outcomes = probe.await.unwrap();
        let failed: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
        let stats = server.stats();
        assert!(failed.is_empty(), "{addresses}x{per_address}: probe failed {failed:?}: {stats:?}");
        // What is queued stays within twice the bound (each address under its share may be one
        // answer over it until the sessions closed for it are gone).
        let cap = 2 * bound + 16 * (64 << 10);
        assert!(most <= cap, "{addresses}x{per_address}: queued {most} > {cap}: {stats:?}");
        assert!(
            stats.overloaded_server + stats.overloaded_send_queue + stats.sessions_preempted > 0,
            "the attackers were held back: {stats:?}"
        );
    }
}

/// One address (8 sessions), or 64 addresses, hold every pending call they can (calls that
/// take long, queued behind each other on a few grains) and take every slot that frees up; the
/// probe's calls take room from them and are all served.
#[tokio::test(start_paused = true)]
async fn pending_calls_one_address_or_64_cannot_starve_a_player() {
    for (addresses, per_address) in [(1, 8), (64, 1)] {
        pending_calls(addresses, per_address).await;
    }
}

async fn pending_calls(addresses: u32, per_address: u32) {
    let net = SimNetwork::new(8, SimConfig::default());
    let cfg = ServerConfig { max_pending_calls: 256, ..ServerConfig::default() };
    let server = server(&net, cfg);
    let mut hogs = hogs(&net, addresses, per_address, 1 << 20).await;
    let args = postcard::to_allocvec(&(30_000u64,)).unwrap();
    let hold = |h: &mut Hog| h.send(40, |s| GrainKey::Int(i64::from(s % 4)), "hold", &args);
    hogs.iter_mut().for_each(hold);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.stats().pending_calls, 256, "{:?}", server.stats());
    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(probe(net.clone(), 20, stop.clone()));
    while !stop.load(Ordering::Relaxed) {
        hogs.iter_mut().for_each(|h| {
            h.read();
            hold(h);
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(server.stats().pending_calls <= 256);
    }
    let outcomes = probe.await.unwrap();
    let failed: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    let stats = server.stats();
    assert!(failed.is_empty(), "{addresses}x{per_address}: probe failed {failed:?}: {stats:?}");
    assert!(stats.calls_preempted >= 10, "{stats:?}");
    assert!(stats.overloaded_server > 0, "the attacker was refused: {stats:?}");
}

/// One address (4 sessions), or 64 addresses, create activations for ever new 1 KiB keys: the
/// activations are bounded by their bytes (keys included), not only their count, and the
/// probe's new grains still find room (the attackers' idle activations are evicted for them).
#[tokio::test(start_paused = true)]
async fn activation_bytes_bound_long_keys_and_one_address_or_64_cannot_starve_a_player() {
    for (addresses, per_address) in [(1, 4), (64, 1)] {
        activation_bytes(addresses, per_address).await;
    }
}

async fn activation_bytes(addresses: u32, per_address: u32) {
    let net = SimNetwork::new(9, SimConfig::default());
    let bytes = 200 * (2048 + 1024);
    let cfg = ServerConfig { max_activation_bytes: bytes, ..ServerConfig::default() };
    let server = server(&net, cfg);
    let mut hogs = hogs(&net, addresses, per_address, 1 << 20).await;
    let long = |s: u32| GrainKey::Str(format!("{s:01024}").into());
    let args = postcard::to_allocvec(&(10u32,)).unwrap();
    for _ in 0..10 {
        for h in &mut hogs {
            h.read();
            h.send(50, long, "blob", &args);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = server.stats().activations;
    assert!(held <= 200 + 200 / 16, "{held} activations of 3 KB for a bound of 600 KB");
    let outcomes = probe(net.clone(), 50, Arc::default()).await;
    let failed: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    let stats = server.stats();
    assert!(failed.is_empty(), "{addresses}x{per_address}: probe failed {failed:?}: {stats:?}");
    assert!(stats.activations_evicted > 0, "{stats:?}");
}

/// Sessions: a few addresses hold every slot (8 addresses with 8 idle sessions each, the most
/// the server takes); each newcomer from another address takes the longest-idle slot of the
/// address holding the most, over its share, and is served. Once no address holds more than
/// its share, a newcomer is refused `ServerFull`.
#[tokio::test(start_paused = true)]
async fn a_full_server_makes_room_for_newcomers_from_the_heaviest_address() {
    let net = SimNetwork::new(10, SimConfig::default());
    let transport = TransportConfig {
        max_connections: 64,
        max_connections_per_ip: 16,
        ..TransportConfig::server()
    };
    let server = server(&net, ServerConfig { transport, ..ServerConfig::default() });
    let _hogs = hogs(&net, 8, 8, 0).await;
    assert_eq!(server.session_count(), 64);
    let mut newcomers = Vec::new();
    for i in 0..10 {
        let at = addr(&format!("10.0.7.{}:1", i + 1));
        let c = Client::connect_sim(&net, at, addr(SERVER), ClientConfig::default()).await;
        let c = c.unwrap_or_else(|e| panic!("newcomer {i}: {e}"));
        assert_eq!(c.grain::<StoreRef>(i64::from(i)).blob(10).await.unwrap().len(), 10);
        newcomers.push(c);
    }
    let stats = server.stats().transport;
    assert_eq!(stats.sessions_displaced, 10, "{stats:?}");
    assert_eq!(stats.rejected_full, 0, "{stats:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.session_count() <= 64, "{}", server.session_count());

    // Every address holding no more than its share: refused.
    let net = SimNetwork::new(11, SimConfig::default());
    let transport = TransportConfig { max_connections: 4, ..TransportConfig::server() };
    let small = self::server(&net, ServerConfig { transport, ..ServerConfig::default() });
    let _each = hogs(&net, 4, 1, 0).await;
    let late = Client::connect_sim(&net, addr("10.0.8.1:1"), addr(SERVER), ClientConfig::default());
    let e = late.await.expect_err("refused");
    assert_eq!(e.rejection(), Some(grainwire::error::Rejection::ServerFull), "{e}");
    assert_eq!(small.stats().transport.sessions_displaced, 0);
}
