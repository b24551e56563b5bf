//! The server against hostile or careless clients, over the simulated network: what a peer
//! that never drains its answers, a client that takes every activation, a grain with a long
//! queue, or callers spinning without a server can cost, measured by the server's own
//! accounting (`Server::stats`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::proto::ids::{GrainKey, MethodId, RequestId};
use grainwire::proto::wire::rpc::{self, CallHeader};
use grainwire::proto::wire::{self, Class, CloseKind};
use grainwire::testing::{RawEvent, RawPeer};
use grainwire::transport::sim::{RawSocket, SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig};
use grainwire::{GrainId, TransportConfig};

mod support;
use support::{addr, join_all, raw_handshake, wait_until};

const SERVER: &str = "10.0.0.1:7000";

/// Executions on the server, in order: (grain key, tag).
type Log = Arc<Mutex<Vec<(i64, u64)>>>;

#[grainwire::grain]
trait Store {
    /// `n` bytes.
    async fn blob(&mut self, n: u32) -> Vec<u8>;
    /// Records the call in the log; returns `tag`.
    async fn spin(&mut self, tag: u64) -> u64;
    /// Answers after `ms` milliseconds.
    async fn hold(&mut self, ms: u64) -> u64;
}

struct StoreGrain {
    key: i64,
    log: Log,
}

impl Store for StoreGrain {
    async fn blob(&mut self, n: u32) -> Vec<u8> {
        vec![7; n as usize]
    }
    async fn spin(&mut self, tag: u64) -> u64 {
        // Some real work, never awaiting: a grain that keeps its thread busy.
        let mut h = tag;
        for i in 0..2_000u64 {
            h = h.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(h);
        self.log.lock().unwrap().push((self.key, tag));
        tag
    }
    async fn hold(&mut self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

fn server(net: &SimNetwork, config: ServerConfig, log: &Log) -> Server {
    server_with_keys(net, config, log, None)
}

/// The token key of servers that require tokens here.
fn key() -> grainwire::auth::TokenKey {
    grainwire::auth::TokenKey::new(1, [7; 32])
}

fn server_with_keys(
    net: &SimNetwork,
    config: ServerConfig,
    log: &Log,
    key: Option<grainwire::auth::TokenKey>,
) -> Server {
    let log = log.clone();
    Server::builder(config)
        .token_keys(key)
        .host(Store::host(move |id: &GrainId| StoreGrain {
            key: match id.key {
                GrainKey::Int(k) => k,
                _ => -1,
            },
            log: log.clone(),
        }))
        .bind_sim(net, addr(SERVER))
        .unwrap()
}

/// A hand-driven session from `from` that grants the server `window` bytes of credit.
async fn raw_session(net: &SimNetwork, from: &str, window: u64) -> (RawSocket, RawPeer) {
    raw_session_with(net, from, window, false).await
}

/// The same, presenting a token sealed with [`key`] if `protected` (packets then sealed).
async fn raw_session_with(
    net: &SimNetwork,
    from: &str,
    window: u64,
    protected: bool,
) -> (RawSocket, RawPeer) {
    let sock = net.raw_socket(addr(from)).unwrap();
    let mut peer = RawPeer::new(11, window);
    if protected {
        let servers = [SERVER.parse().unwrap()];
        let valid = Duration::from_secs(600);
        let t = grainwire::auth::ConnectToken::issue(&key(), 1, &servers, valid, b"").unwrap();
        peer = peer.with_token(std::sync::Arc::new(t));
    }
    raw_handshake(&sock, addr(SERVER), &mut peer).await;
    (sock, peer)
}

fn request(slot: u32, method: &str, args: &[u8]) -> Vec<u8> {
    let call = CallHeader {
        type_index: 0,
        version: StoreRef::info().version,
        method: MethodId::of(method),
        deadline_ms: Some(30_000),
        key: GrainKey::Int(i64::from(slot % 8)),
        chain: Vec::new(),
    };
    let mut out = Vec::new();
    rpc::encode_call(&mut out, Some(RequestId { slot, generation: 1 }), &call);
    out.extend_from_slice(args);
    out
}

/// Sends `count` requests for `blob(n)` from a raw peer, several per datagram, never
/// acknowledging anything; returns whether the server closed the session.
async fn flood(sock: &RawSocket, peer: &mut RawPeer, first: u32, count: u32, n: u32) -> bool {
    let args = postcard::to_allocvec(&(n,)).unwrap();
    let mut slot = first;
    while slot < first + count {
        let mut frames = Vec::new();
        for _ in 0..10 {
            let m = request(slot, "blob", &args);
            RawPeer::message(&mut frames, Class::ReliableUnordered, 0, u64::from(slot), None, &m);
            slot += 1;
        }
        sock.send_to(addr(SERVER), &peer.data(&frames).unwrap());
        while let Some((_, d)) = sock.recv_timeout(Duration::ZERO).await {
            if let RawEvent::Ended(close) = peer.on_datagram(&d) {
                assert_eq!(close, Some(CloseKind::Stalled), "closed for not draining");
                return true;
            }
        }
    }
    false
}

fn small_buffers() -> ServerConfig {
    ServerConfig {
        transport: TransportConfig {
            max_message_size: 16 << 10,
            send_buffer: 64 << 10,
            ..TransportConfig::server()
        },
        ..ServerConfig::default()
    }
}

/// Plain, and with protection on: a player holding a valid token is held to the same bounds.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_acknowledges_costs_a_bounded_queue_then_its_session() {
    for protected in [false, true] {
        never_acknowledging(protected).await;
    }
}

async fn never_acknowledging(protected: bool) {
    let net = SimNetwork::new(1, SimConfig::default());
    let log = Log::default();
    let cfg = small_buffers();
    // Calls are refused at the send buffer, and nothing more is queued an eighth over it
    // (answers of calls already running may finish).
    let hard_cap = cfg.transport.send_buffer * 9 / 8 + cfg.transport.max_message_size + 64;
    let stall = cfg.transport.stall_timeout;
    let server = server_with_keys(&net, cfg, &log, protected.then(key));
    let (sock, mut peer) = raw_session_with(&net, "10.0.0.9:1", 1 << 20, protected).await;
    let start = tokio::time::Instant::now();
    let mut closed = false;
    let mut most = 0;
    for batch in 0..1000 {
        closed = flood(&sock, &mut peer, batch * 10, 10, 1000).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        most = most.max(server.stats().transport.queued_bytes);
        assert!(most <= hard_cap, "queued {most} bytes, cap {hard_cap}");
        if closed {
            break;
        }
    }
    assert!(closed, "the server gave up on the peer: {:?}", server.stats());
    let took = start.elapsed();
    assert!(took <= stall + Duration::from_secs(1), "closed after {took:?}");
    let stats = server.stats();
    assert_eq!(stats.transport.sessions_stalled, 1, "{stats:?}");
    assert!(stats.overloaded_send_queue > 0, "calls refused while it did not drain: {stats:?}");
    assert!(stats.answers_dropped > 0, "refusals dropped past the margin: {stats:?}");
    wait_until("the stalled session's state freed", Duration::from_secs(1), || {
        let stats = server.stats();
        (stats.transport.queued_bytes, stats.pending_calls, stats.transport.sessions) == (0, 0, 0)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_zero_window_peer_is_dropped_after_the_stall_timeout() {
    let net = SimNetwork::new(2, SimConfig::default());
    let log = Log::default();
    let server = server(&net, ServerConfig::default(), &log);
    let (sock, mut peer) = raw_session(&net, "10.0.0.9:1", 0).await;
    let start = tokio::time::Instant::now();
    let stall = TransportConfig::default().stall_timeout;
    let mut slot = 0;
    let ended = loop {
        // A few calls and a keepalive every half second: the session is not idle, it only
        // never has room for an answer.
        let mut frames = Vec::new();
        let m = request(slot, "blob", &postcard::to_allocvec(&(10u32,)).unwrap());
        RawPeer::message(&mut frames, Class::ReliableUnordered, 0, u64::from(slot), None, &m);
        wire::encode_ping(&mut frames);
        slot += 1;
        sock.send_to(addr(SERVER), &peer.data(&frames).unwrap());
        let mut ended = false;
        while let Some((_, d)) = sock.recv_timeout(Duration::from_millis(500)).await {
            if let RawEvent::Ended(close) = peer.on_datagram(&d) {
                assert_eq!(close, Some(CloseKind::Stalled));
                ended = true;
            }
        }
        if ended || start.elapsed() > 3 * stall {
            break ended;
        }
    };
    assert!(ended, "closed");
    let took = start.elapsed();
    assert!(took >= stall && took <= stall + Duration::from_secs(1), "{took:?}");
    assert_eq!(server.stats().transport.sessions_stalled, 1);
}

async fn client(net: &SimNetwork, at: &str) -> Client {
    Client::connect_sim(net, addr(at), addr(SERVER), ClientConfig::default()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_is_served_while_another_client_holds_every_activation() {
    let net = SimNetwork::new(3, SimConfig::default());
    let log = Log::default();
    let cfg = ServerConfig {
        max_activations: 50,
        max_activations_per_connection: 1000,
        ..ServerConfig::default()
    };
    let server = server(&net, cfg, &log);
    let hog = client(&net, "10.0.0.2:1").await;
    for k in 0..50 {
        hog.grain::<StoreRef>(k).spin(1).await.unwrap();
    }
    assert_eq!(server.activation_count(), 50);
    // Every activation is the hog's, all idle: a newcomer's grain evicts the least recently
    // used of them rather than being refused.
    let newcomer = client(&net, "10.0.0.3:1").await;
    for k in 1000..1010 {
        assert_eq!(newcomer.grain::<StoreRef>(k).spin(2).await.unwrap(), 2);
    }
    // Evicted activations finish deactivating on their own tasks.
    let evicted = || server.stats().activations == 50;
    wait_until("the evicted activations gone", Duration::from_millis(100), evicted).await;
    let stats = server.stats();
    assert_eq!((stats.activations, stats.activations_evicted), (50, 10), "{stats:?}");
    assert_eq!(stats.overloaded_activations, 0);
}

#[tokio::test(start_paused = true)]
async fn one_client_gets_its_share_of_activations() {
    let net = SimNetwork::new(4, SimConfig::default());
    let log = Log::default();
    let cfg = ServerConfig { max_activations_per_connection: 20, ..ServerConfig::default() };
    let server = server(&net, cfg, &log);
    let hog = client(&net, "10.0.0.2:1").await;
    for k in 0..20 {
        hog.grain::<StoreRef>(k).spin(1).await.unwrap();
    }
    let more = hog.grain::<StoreRef>(20).spin(1).await;
    assert!(matches!(more, Err(CallError::Overloaded)), "{more:?}");
    assert_eq!(hog.grain::<StoreRef>(3).spin(1).await.unwrap(), 1, "its own grains still serve");
    let other = client(&net, "10.0.0.3:1").await;
    assert_eq!(other.grain::<StoreRef>(20).spin(5).await.unwrap(), 5, "another client's share");
    assert_eq!(server.stats().overloaded_activations, 1);
    // The hog's share frees up as its grains go.
    tokio::time::sleep(ServerConfig::default().idle_deactivation * 2).await;
    assert_eq!(hog.grain::<StoreRef>(21).spin(1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grain_with_a_long_queue_lets_the_endpoint_and_other_grains_run() {
    let net = SimNetwork::new(5, SimConfig::default());
    let log = Log::default();
    let _server = server(&net, ServerConfig::default(), &log);
    let c = client(&net, "10.0.0.2:1").await;
    let (busy, other): (StoreRef, StoreRef) = (c.grain(1), c.grain(2));
    net.record_sizes();
    // 1,000 calls queue up on one grain, and one call for another grain arrives with them.
    let (results, alone) =
        tokio::join!(join_all((0..1000).map(|i| busy.spin(i))), other.spin(5000));
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(alone.unwrap(), 5000);
    let order = log.lock().unwrap().clone();
    let at = order.iter().position(|&(k, _)| k == 2).unwrap();
    assert!(at < 10, "the other grain ran only after {at} of the busy grain's calls");
    // The endpoint's task ran between the busy grain's calls: answers left as they were made,
    // in many datagrams, not in one burst at the end.
    let answers = net
        .recorded_sizes()
        .into_iter()
        .filter(|(from, to, _)| *from == addr(SERVER) && *to == addr("10.0.0.2:1"))
        .count();
    assert!(answers > 100, "the answers left in {answers} datagrams");
}

/// A server killed and started again on its address while 16 callers keep calling: every call
/// ends (no hang), the client notices within a few seconds and is served again. Several seeds
/// and kill instants.
#[tokio::test(start_paused = true)]
async fn a_server_restart_under_load_loses_only_what_was_pending() {
    for seed in 0..8u64 {
        let net = SimNetwork::new(100 + seed, SimConfig::default());
        let log = Log::default();
        let first = server(&net, ServerConfig::default(), &log);
        let c = client(&net, "10.0.0.2:1").await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..16i64 {
            let r: StoreRef = c.grain(w);
            let stop = stop.clone();
            workers.spawn(async move {
                let (mut ok, mut failed, mut last_ok) = (0u64, 0u64, None);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match r.blob(8).await {
                        Ok(_) => {
                            ok += 1;
                            last_ok = Some(tokio::time::Instant::now());
                        }
                        Err(_) => {
                            failed += 1;
                            // As a game would: not a hot loop.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                (ok, failed, last_ok)
            });
        }
        tokio::time::sleep(Duration::from_millis(300 + 37 * seed)).await;
        let killed = tokio::time::Instant::now();
        let _second = kill_and_restart(&net, first, &log);
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            let mut all = Vec::new();
            while let Some(r) = workers.join_next().await {
                all.push(r.unwrap());
            }
            all
        })
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: a call never ended"));
        for (ok, _, last_ok) in done {
            assert!(ok > 0, "seed {seed}");
            let last = last_ok.expect("served");
            assert!(
                last > killed + Duration::from_secs(4),
                "seed {seed}: served again after the restart"
            );
        }
    }
}

/// Kills `first` (no goodbye reaches anyone) and binds a new server on its address at once.
fn kill_and_restart(net: &SimNetwork, first: Server, log: &Log) -> Server {
    net.kill(addr(SERVER));
    drop(first);
    let log = log.clone();
    Server::builder(ServerConfig::default())
        .host(Store::host(move |_: &GrainId| StoreGrain { key: 0, log: log.clone() }))
        .bind_sim(net, addr(SERVER))
        .expect("the address is free once its process is killed")
}

/// A restarted server forgot the calls it had acknowledged, so nothing more comes for them. The
/// client, with a call pending and the server silent, probes it within a twelfth of
/// `health_timeout` (250 ms); the new server answers the probe with a `RESET`, and the call
/// fails as `Disconnected(Reset)` long before the keepalive (1 s) or the health verdict (3 s).
#[tokio::test(start_paused = true)]
async fn a_call_pending_on_a_server_that_restarted_fails_after_one_probe() {
    let net = SimNetwork::new(9, SimConfig::default());
    let log = Log::default();
    let first = server(&net, ServerConfig::default(), &log);
    let c = client(&net, "10.0.0.2:1").await;
    let r: StoreRef = c.grain(1);
    let call =
        tokio::spawn(async move { r.with_timeout(Duration::from_secs(60)).hold(30_000).await });
    let reached = || first.stats().pending_calls == 1;
    wait_until("the call reached the server", Duration::from_millis(100), reached).await;
    // Let its acknowledgement arrive (delayed acks included): from now on the client has
    // nothing to retransmit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = tokio::time::Instant::now();
    let _second = kill_and_restart(&net, first, &log);
    let res = call.await.unwrap();
    let took = killed.elapsed();
    assert!(
        matches!(res, Err(CallError::Disconnected(grainwire::error::DisconnectReason::Reset))),
        "{res:?}"
    );
    assert!(took < Duration::from_millis(600), "the client learned of the restart after {took:?}");
}
