//! Heap allocations per message on the steady-state paths, counted by a counting allocator:
//! the sans-IO channel (send: queue + pack; receive: unpack + deliver), the whole stack
//! (endpoint to endpoint over loopback UDP, both on one thread) and a grain call end to end.
//!
//! The numbers are printed (`cargo test --test alloc -- --nocapture`) and bounded here.

// A global allocator is an `unsafe impl`; it only forwards to `System` and counts. The library
// itself forbids unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::proto::channel::{Channel, Datagram};
use grainwire::proto::wire::{self, Class, Packet};
use grainwire::transport::{Delivery, Endpoint, Event};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// count is a thread-local cell, touched with `try_with` so it is safe during thread teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn deliver(to: &mut Channel, now: Instant, d: &[u8]) -> usize {
    let Ok(Packet::Data(h, frames)) = wire::decode_packet(d) else { panic!("data packet") };
    let mut n = 0;
    let mut dg = Datagram::new(d);
    to.handle_packet(now, h.pn_truncated, h.pn_len, frames, &mut dg, &mut |m| n += m.payload.len())
        .unwrap();
    n
}

/// (send-path, receive-path) allocations per message for `batch` messages per datagram.
fn channel_allocs(batch: usize) -> (f64, f64) {
    let cfg = TransportConfig::default();
    let mut now = Instant::now();
    let mut a = Channel::new(&cfg, cfg.receive_window, now);
    let mut z = Channel::new(&cfg, cfg.receive_window, now);
    let payload = Bytes::from_static(&[7u8; 32]);
    let mut buf = Vec::with_capacity(1200);
    let (mut send, mut recv, mut msgs) = (0, 0, 0);
    for round in 0..3000 {
        now += Duration::from_micros(50);
        let before = allocs();
        for _ in 0..batch {
            a.send(Class::ReliableOrdered, 0, payload.clone()).unwrap();
        }
        let mut datagrams = Vec::new();
        while a.write_packet(now, 1, &mut buf, false, None) {
            datagrams.push(std::mem::take(&mut buf));
            buf.reserve(1200);
        }
        let sent = allocs() - before - datagrams.len() as u64 * 2; // the test's own copies
        let before = allocs();
        for d in &datagrams {
            deliver(&mut z, now, d);
        }
        let received = allocs() - before;
        // Acks flow back.
        z.handle_timeout(now + Duration::from_millis(5));
        while z.write_packet(now + Duration::from_millis(5), 1, &mut buf, false, None) {
            deliver(&mut a, now, &buf);
        }
        if round >= 1000 {
            send += sent;
            recv += received;
            msgs += batch;
        }
    }
    (send as f64 / msgs as f64, recv as f64 / msgs as f64)
}

#[test]
fn channel_hot_paths_allocate_little() {
    let (s1, r1) = channel_allocs(1);
    let (s30, r30) = channel_allocs(30);
    println!(
        "channel allocations per message: send {s1:.2} / receive {r1:.2} (one per datagram); send {s30:.2} / receive {r30:.2} (30 per datagram)"
    );
    assert!(s1 <= 0.05 && s30 <= 0.05, "send path: {s1} {s30}");
    // Small messages delivered at once are copied into shared 1 KiB blocks (one allocation
    // per block, not per message).
    assert!(r1 <= 0.15, "receive path, one per datagram: {r1}");
    assert!(r30 <= 0.15, "receive path, 30 per datagram: {r30}");
}

#[test]
fn endpoint_round_trip_allocations() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut server =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::server()).unwrap();
        let mut client =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), TransportConfig::default()).unwrap();
        let conn = client.connect(server.local_addr()).await.unwrap();
        let Some(Event::Connected(back)) = server.next_event().await else { panic!() };
        let msg = Bytes::from_static(&[7u8; 32]);
        let mut total = 0;
        let n = 3000;
        for i in 0..n + 500 {
            let before = allocs();
            conn.send(Delivery::reliable_ordered(0), msg.clone()).unwrap();
            let payload = loop {
                if let Some(Event::Message { payload, .. }) = server.next_event().await {
                    break payload;
                }
            };
            back.send(Delivery::reliable_ordered(0), payload).unwrap();
            loop {
                if let Some(Event::Message { .. }) = client.next_event().await {
                    break;
                }
            }
            if i >= 500 {
                total += allocs() - before;
            }
        }
        let per_rt = total as f64 / n as f64;
        println!(
            "endpoint round trip (two 32-byte messages, request and echo): {per_rt:.2} allocations"
        );
        assert!(per_rt <= 0.5, "{per_rt}");
    });
}

/// A grain whose method echoes its argument (what the `bench` example calls).
#[grainwire::grain]
trait Echo {
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8>;
}

struct EchoGrain;

impl Echo for EchoGrain {
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

/// A server hosting `Echo` on a free loopback port (inside a runtime), requiring tokens sealed
/// with `key` if given.
fn echo_server(key: Option<grainwire::auth::TokenKey>) -> grainwire::Server {
    grainwire::Server::builder(grainwire::ServerConfig::default())
        .token_keys(key)
        .host(Echo::host(|_: &grainwire::GrainId| EchoGrain))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
}

/// Allocations per grain call, plain and protected (packets sealed and opened in place: no
/// allocation of their own).
#[test]
fn grain_call_allocations() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for protected in [false, true] {
            let key = protected.then(|| grainwire::auth::TokenKey::new(1, [9; 32]));
            let server = echo_server(key.clone());
            let mut b = grainwire::Client::builder().server(server.local_addr());
            if let Some(k) = &key {
                let servers = [server.local_addr().into()];
                let valid = std::time::Duration::from_secs(60);
                let t = grainwire::auth::ConnectToken::issue(k, 1, &servers, valid, b"").unwrap();
                b = b.token(t);
            }
            let client = b.connect().await.unwrap();
            let echo: EchoRef = client.grain(1);
            let arg = vec![7u8; 32];
            let (warmup, n) = (500, 3000);
            let mut total = 0;
            for i in 0..warmup + n {
                // The argument is built outside the counted region: the caller owns it.
                let data = arg.clone();
                let before = allocs();
                let back = echo.echo(data).await.unwrap();
                if i >= warmup {
                    total += allocs() - before;
                }
                assert_eq!(back, arg);
            }
            let per_call = total as f64 / n as f64;
            println!(
                "grain call end to end (client and server, 32-byte argument and result{}): \
                 {per_call:.2} allocations",
                if protected { ", protected" } else { "" }
            );
            // Two are the call's own: the argument decoded on the server and the result decoded
            // on the client (both `Vec<u8>`). Received messages are copied into shared blocks,
            // frames come from per-thread chunks and call cells are reused; the rest is those
            // blocks and the event queues' blocks.
            assert!(per_call <= 3.0, "{per_call} (protected: {protected})");
            client.disconnect().await;
        }
    });
}

/// Routing a call (every strategy, every affinity) allocates nothing: the snapshot is built
/// once, a pick only reads it.
#[test]
fn routing_picks_allocate_nothing() {
    use std::sync::Arc;

    use grainwire::proto::ids::{GrainType, InterfaceId, MethodId, PeerId, ServerId};
    use grainwire::proto::manifest::{HostedGrain, HostedMethod, Manifest};
    use grainwire::proto::route::{
        Affinity, ConsistentHash, Load, LowestLatency, RoundRobin, RouteTable, ServerEntry,
        Strategies, Strategy, Target, Tiered,
    };

    let servers: Vec<ServerEntry> = (0..100)
        .map(|i| ServerEntry {
            peer: PeerId(i + 1),
            manifest: Arc::new(Manifest {
                server_id: ServerId::new(format!("server-{i}")),
                cluster_id: "grainwire".into(),
                service_id: "game".into(),
                // Mixed weights take the weighted path of the rendezvous scan.
                weight: 1 + (i % 3) as u32,
                draining: false,
                // Three priority tiers for the tiered strategies.
                priority: (i % 3) as u32,
                metadata: Default::default(),
                grains: vec![HostedGrain {
                    name: "Player".into(),
                    grain_type: GrainType::of("Player"),
                    interface: InterfaceId::of("Player"),
                    version: 1,
                    contract: 0,
                    index: 0,
                    methods: vec![HostedMethod { id: MethodId(0), signature: 0 }],
                }],
            }),
            load: Arc::new(Load::new(Duration::from_micros(100 + i))),
        })
        .collect();
    let target = Target {
        grain_type: GrainType::of("Player"),
        interface: InterfaceId::of("Player"),
        version: 1,
        method: MethodId(0),
        signature: 0,
    };
    let strategies: [Arc<dyn Strategy>; 5] = [
        Arc::new(ConsistentHash),
        Arc::new(RoundRobin),
        Arc::new(LowestLatency),
        Arc::new(Tiered::by_priority(RoundRobin)),
        Arc::new(Tiered::by_priority(ConsistentHash)),
    ];
    let affinities = [
        Affinity::None,
        Affinity::Preferred(ServerId::new("server-7")),
        Affinity::Preferred(ServerId::new("elsewhere")),
        Affinity::Required(ServerId::new("server-42")),
    ];
    let labels = [
        "consistent-hash",
        "round-robin",
        "lowest-latency",
        "round-robin by priority",
        "consistent-hash by priority",
    ];
    for (k, s) in strategies.into_iter().enumerate() {
        for n in [10, 100] {
            let table = RouteTable::build(&servers[..n], &Strategies::new(s.clone()));
            let before = allocs();
            let mut sum = 0u64;
            for i in 0..20_000u64 {
                let a = &affinities[(i % 4) as usize];
                if let Ok(d) = table.route(&target, i.wrapping_mul(0x9e37_79b9_7f4a_7c15), a) {
                    sum += d.candidate.peer.0;
                }
            }
            let used = allocs() - before;
            let name = labels[k];
            println!("{name} over {n} servers: {used} allocations in 20,000 picks");
            assert_eq!(used, 0, "{name}");
            assert!(sum > 0);
        }
    }
}

/// Mutex acquisitions per call on the client's side, with the server on a thread of its own:
/// the caller and the client's endpoint task share the test's thread, so its count is the
/// client's whole cost (grainwire's own mutexes; tokio's and crossbeam's internals are not
/// counted).
#[test]
fn client_locks_per_call() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = echo_server(None);
            tx.send(server.local_addr()).unwrap();
            let _ = stop_rx.await;
            server.shutdown().await;
        });
    });
    let addr = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client =
            grainwire::Client::connect(addr, grainwire::ClientConfig::default()).await.unwrap();
        let echo: EchoRef = client.grain(1);
        let (warmup, n) = (500u64, 3000u64);
        let mut locks = 0;
        for i in 0..warmup + n {
            let before = grainwire::testing::locks_on_this_thread();
            echo.echo(vec![7u8; 32]).await.unwrap();
            if i >= warmup {
                locks += grainwire::testing::locks_on_this_thread() - before;
            }
        }
        let per_call = locks as f64 / n as f64;
        println!("client mutex acquisitions per call (one call at a time): {per_call:.2}");
        assert!(per_call <= 3.0, "{per_call}");
        client.disconnect().await;
    });
    let _ = stop_tx.send(());
    server.join().unwrap();
}
