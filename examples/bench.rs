//! Grain RPC benchmark over real loopback UDP, laid out like the peer harness that
//! `scripts/compare-peers.sh` runs beside it, so the numbers compare as ratios: the server on
//! its own thread with its own single-threaded tokio runtime, the client on the main thread
//! with another. Prints exactly one JSON line.
//!
//! ```sh
//! cargo run --release --example bench -- latency                    # one call outstanding
//! cargo run --release --example bench -- throughput --inflight 64   # 64 calls kept in flight
//! taskset -c 0 cargo run --release --example bench -- latency       # whole process on one core
//! cargo run --release --example bench -- latency --servers 10       # routed over 10 servers
//! cargo run --release --example bench -- placement                  # placement quality, 1M keys
//! cargo run --release --example bench -- latency --discover         # the client follows the fleet
//! cargo run --release --example bench -- game --players 1000 --update-hz 30 --call-hz 1 --secs 10
//! ```
//!
//! `--help` lists every flag with its default. `--protected`: the servers require connect
//! tokens and the client presents one, so every packet is encrypted and authenticated (compare
//! with the same run without it). `--directory`: the servers claim grains in a
//! shared in-memory grain directory (the warmup claims them; timed calls hit claimed grains).
//! With `--discover` the client is given only the
//! first server as a seed and follows the fleet it reports (the first server lists the others
//! as its peers): compare with a static client for what discovery costs per call.
//!
//! Every call is `EchoRef::echo(Vec<u8>)` on the demo `Echo` grain with a `--payload`-byte
//! argument; each answer is checked against what was sent.
//!
//! * `latency`: `--warmup` calls unrecorded, then `--calls` calls timed one by one (call →
//!   result); p50/p99/p99.9/mean/max in µs. One grain (key 0).
//! * `--servers N` (latency, throughput): N servers host the grain (all on the server thread),
//!   the client connects to all of them and routes every call by consistent placement; compare
//!   with `--servers 1` for the cost of routing.
//! * `placement`: no network. Weighted rendezvous placement of 1M random grain keys over 10
//!   and 100 servers: busiest/mean server load, the share moved when an 11th (101st) server
//!   joins and when one leaves (and how many moved although their server stayed), a weight-2
//!   server's share.
//! * `busy`: `--calls` (1,000) calls queued at once on one grain whose method burns `--spin-us`
//!   (700) µs of CPU, on the server thread with the endpoint's task, while a probe calls another
//!   grain one call at a time: `probe_max_us` is the longest the server did not answer.
//! * `game`: a game's load (see `common/game_load.rs`): `--players` sessions, each sending
//!   `#[sequenced]` position updates `--update-hz` times a second and calling
//!   `--call-hz` times a second, against `--target` or a `game_server` it starts in a process
//!   of its own (then it reports that server's CPU, memory and dropped updates), with a probe.
//! * `throughput`: `--inflight` calls kept outstanding, each caller on its own grain (keys
//!   `0..inflight`, so activations and ordered streams do not serialize the callers);
//!   completions counted over a `--secs` window that starts 0.5 s after the first call;
//!   `calls_per_sec` = count / secs.
//!
//! The application side of each endpoint runs as a spawned task, as a game's network loop
//! would (a `block_on` root future is woken through the runtime's eventfd; a spawned task
//! through the local run queue). A failed call aborts the run with exit status 1. With
//! `GRAINWIRE_BENCH_VERBOSE=1` the client's transport counters go to stderr.

#[path = "common/game_load.rs"]
mod game_load;

#[path = "common/game.rs"]
#[allow(dead_code)] // the bench hosts and calls only the echo grain
mod game;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use game::{Echo, EchoRef, EchoState};
use grainwire::client::ConnectMode;
use grainwire::{Client, GrainId, Server, ServerConfig};

/// What to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One call outstanding: p50/p99/p99.9/mean/max.
    Latency,
    /// `--inflight` calls kept in flight: calls per second.
    Throughput,
    /// Placement quality over synthetic fleets (no network).
    Placement,
    /// A busy grain beside a probe: the longest the server did not answer.
    Busy,
    /// A game's load: `--players` sessions sending `#[sequenced]` updates and calls, a probe.
    Game,
}

/// The grain RPC benchmark over loopback UDP; prints one JSON line.
#[derive(clap::Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Argument bytes per call.
    #[arg(long, value_name = "N", default_value_t = 32)]
    payload: usize,
    /// Calls timed (latency) or queued on the busy grain (busy) [default: 20000, busy 1000].
    #[arg(long, value_name = "N")]
    calls: Option<u64>,
    /// Calls made before timing (latency).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    warmup: u64,
    /// Calls kept in flight (throughput).
    #[arg(long, value_name = "N", default_value_t = 64)]
    inflight: u64,
    /// The measuring window (throughput), in seconds.
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    secs: f64,
    /// Servers hosting the grain (1..=1000); the client routes by consistent placement.
    #[arg(long, value_name = "N", default_value_t = 1)]
    servers: usize,
    /// CPU each busy call burns (busy), in microseconds.
    #[arg(long, value_name = "N", default_value_t = 700)]
    spin_us: u64,
    /// The client discovers the fleet from the first server instead of being given every one.
    #[arg(long)]
    discover: bool,
    /// The servers claim grains in a shared in-memory grain directory (one activation per
    /// grain); the measured calls go to grains already claimed.
    #[arg(long)]
    directory: bool,
    /// The servers require connect tokens and the client presents one: every packet is
    /// encrypted and authenticated.
    #[arg(long)]
    protected: bool,
    /// Players (game).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    players: u64,
    /// Updates each player sends per second (game).
    #[arg(long, value_name = "HZ", default_value_t = 30.0)]
    update_hz: f64,
    /// Calls each player makes per second (game).
    #[arg(long, value_name = "HZ", default_value_t = 1.0)]
    call_hz: f64,
    /// A running `game_server` to load (game); without it the bench starts one in a process
    /// of its own (the `game_server` example next to this binary).
    #[arg(long, value_name = "ADDR")]
    target: Option<SocketAddr>,
    /// The runtime of the `game_server` the bench starts (game): `multi` or `current` (its
    /// `--runtime`) [default: the server's].
    #[arg(long, value_name = "KIND")]
    server_runtime: Option<String>,
}

/// `--discover`: the client follows the fleet from a seed.
static DISCOVER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
/// `--directory`: the servers share a grain directory.
static DIRECTORY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
/// `--protected`: the key the servers require tokens sealed with.
static KEY: std::sync::OnceLock<grainwire::auth::TokenKey> = std::sync::OnceLock::new();

fn fail(problem: &str) -> ! {
    eprintln!("bench: {problem}");
    std::process::exit(2)
}

/// A grain that keeps its thread busy: for `busy`.
#[grainwire::grain]
trait Spin {
    /// Burns `micros` of CPU without awaiting; returns how many rounds it ran.
    async fn spin(&mut self, micros: u64) -> u64;
}

struct Spinner;

impl Spin for Spinner {
    async fn spin(&mut self, micros: u64) -> u64 {
        let until = Instant::now() + Duration::from_micros(micros);
        let mut rounds = 0u64;
        while Instant::now() < until {
            rounds = std::hint::black_box(rounds + 1);
        }
        rounds
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Starts `n` echo servers on one thread and runtime; returns their addresses. The thread
/// serves until the process exits.
fn start_servers(n: usize) -> Vec<SocketAddr> {
    let (addr_tx, addr_rx) = mpsc::channel();
    thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let mut servers = Vec::new();
                let directory: Arc<dyn grainwire::directory::GrainDirectory> =
                    Arc::new(grainwire::directory::MemoryDirectory::new());
                for i in 0..n {
                    let config = ServerConfig {
                        server_id: Some(format!("bench-{i}")),
                        ..Default::default()
                    };
                    let mut builder = Server::builder(config);
                    if DIRECTORY.get().copied().unwrap_or(false) {
                        builder = builder.directory(directory.clone());
                    }
                    builder = builder.token_keys(KEY.get().cloned());
                    let server = builder
                        .host(Echo::host(|_: &GrainId| EchoState { server: "bench".into() }))
                        .host(Spin::host(|_: &GrainId| Spinner))
                        .bind("127.0.0.1:0".parse().expect("an address"))
                        .unwrap_or_else(|e| {
                            eprintln!("cannot bind the server: {e}");
                            std::process::exit(1)
                        });
                    servers.push(server);
                }
                let addrs: Vec<SocketAddr> = servers.iter().map(Server::local_addr).collect();
                // The first server serves the others as its peers (for `--discover`).
                servers[0].set_peers(addrs[1..].iter().map(|a| (*a).into()));
                addr_tx.send(addrs).expect("main thread waits");
                std::future::pending::<()>().await;
                drop(servers);
            })
        })
        .expect("a server thread");
    addr_rx.recv().expect("the server thread reports its addresses")
}

/// The `i`-th request body: `payload` bytes starting with `i` (so a stale answer is caught).
fn body(i: u64, payload: usize) -> Vec<u8> {
    let mut v = vec![0xA5; payload];
    let n = payload.min(8);
    v[..n].copy_from_slice(&i.to_le_bytes()[..n]);
    v
}

async fn call(echo: &EchoRef, i: u64, payload: usize) {
    let sent = body(i, payload);
    match echo.echo(sent.clone()).await {
        Ok(got) if got == sent => {}
        Ok(_) => {
            eprintln!("call {i}: wrong answer");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("call {i}: {e}");
            std::process::exit(1)
        }
    }
}

/// With `GRAINWIRE_BENCH_VERBOSE` set, prints the client's transport counters to stderr.
fn report(client: &Client) {
    if std::env::var_os("GRAINWIRE_BENCH_VERBOSE").is_none() {
        return;
    }
    if let Some(t) = client.transport_stats() {
        eprintln!(
            "client: {} messages in {} datagrams sent ({:.1}/datagram), {} in {} received ({:.1}/datagram), {} retransmissions, rtt {:?}",
            t.messages_sent,
            t.packets_sent,
            t.messages_sent as f64 / t.packets_sent.max(1) as f64,
            t.messages_received,
            t.packets_received,
            t.messages_received as f64 / t.packets_received.max(1) as f64,
            t.retransmissions,
            t.rtt,
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Connects to the servers on the calling runtime (the client's endpoint task lives there):
/// single mode for one, multi mode (consistent placement) for more.
async fn connect(addrs: Vec<SocketAddr>) -> Client {
    let mut builder = Client::builder();
    if let Some(key) = KEY.get() {
        let servers: Vec<grainwire::client::ServerAddr> =
            addrs.iter().map(|a| (*a).into()).collect();
        let valid = Duration::from_secs(3600);
        let token = grainwire::auth::ConnectToken::issue(key, 1, &servers, valid, b"bench")
            .unwrap_or_else(|e| fail(&format!("cannot mint a token: {e}")));
        builder = builder.token(token);
    }
    let client = if DISCOVER.get().copied().unwrap_or(false) {
        builder.seeds([addrs[0]]).connect().await
    } else {
        let mode = if addrs.len() == 1 { ConnectMode::Single } else { ConnectMode::Multi };
        builder.servers(addrs.clone()).mode(mode).connect().await
    };
    let client = client.unwrap_or_else(|e| {
        eprintln!("cannot connect to {addrs:?}: {e}");
        std::process::exit(1)
    });
    if client.servers().len() != addrs.len() {
        eprintln!("connected to {} of {} servers", client.servers().len(), addrs.len());
        std::process::exit(1);
    }
    client
}

fn latency(addrs: Vec<SocketAddr>, payload: usize, warmup: u64, calls: u64) -> String {
    let servers = addrs.len();
    let rt = runtime();
    let task = rt.spawn(async move {
        let client = connect(addrs).await;
        let echo: EchoRef = client.grain(0);
        for i in 0..warmup {
            call(&echo, i, payload).await;
        }
        let mut us = Vec::with_capacity(calls as usize);
        for i in warmup..warmup + calls {
            let t = Instant::now();
            call(&echo, i, payload).await;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        report(&client);
        client.disconnect().await;
        us
    });
    let mut us = rt.block_on(task).expect("the client task");
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    us.sort_by(f64::total_cmp);
    format!(
        "{{\"peer\":\"grainwire\",\"mode\":\"latency\",\"servers\":{servers},\"payload\":{payload},\"calls\":{calls},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"mean_us\":{mean:.1},\"max_us\":{:.1}}}",
        percentile(&us, 0.5),
        percentile(&us, 0.99),
        percentile(&us, 0.999),
        us[us.len() - 1],
    )
}

/// `busy`: `calls` calls queued at once on one grain that burns `spin_us` of CPU each (the
/// server's endpoint task and its activations share one thread), while a probe calls another
/// grain one call at a time. The probe's worst latency is the longest the endpoint was
/// unavailable while the busy grain worked.
fn busy(addrs: Vec<SocketAddr>, calls: u64, spin_us: u64) -> String {
    let rt = runtime();
    let task = rt.spawn(async move {
        let client = connect(addrs).await;
        let spinner: SpinRef = client.grain(1);
        let echo: EchoRef = client.grain(2);
        call(&echo, 0, 32).await;
        let start = Instant::now();
        let queued = tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..calls {
                let s = spinner.clone();
                set.spawn(async move { s.spin(spin_us).await });
            }
            while let Some(r) = set.join_next().await {
                if let Err(e) = r.expect("a spin task") {
                    eprintln!("spin: {e}");
                    std::process::exit(1);
                }
            }
            start.elapsed()
        });
        let mut us = Vec::new();
        let mut i = 1;
        while !queued.is_finished() {
            let t = Instant::now();
            call(&echo, i, 32).await;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            i += 1;
        }
        let busy_for = queued.await.expect("the spinning calls");
        client.disconnect().await;
        (us, busy_for)
    });
    let (mut us, busy_for) = rt.block_on(task).expect("the client task");
    us.sort_by(f64::total_cmp);
    format!(
        "{{\"peer\":\"grainwire\",\"mode\":\"busy\",\"busy_calls\":{calls},\"spin_us\":{spin_us},\"busy_secs\":{:.3},\"probe_calls\":{},\"probe_p50_us\":{:.1},\"probe_p99_us\":{:.1},\"probe_max_us\":{:.1}}}",
        busy_for.as_secs_f64(),
        us.len(),
        percentile(&us, 0.5),
        percentile(&us, 0.99),
        us[us.len() - 1],
    )
}

fn throughput(addrs: Vec<SocketAddr>, payload: usize, inflight: u64, secs: f64) -> String {
    let servers = addrs.len();
    let rt = runtime();
    let task = rt.spawn(async move {
        let client = connect(addrs).await;
        let counting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for w in 0..inflight {
            let echo: EchoRef = client.grain(w as i64);
            let (counting, stop, counted) = (counting.clone(), stop.clone(), counted.clone());
            callers.spawn(async move {
                let mut i = w << 40;
                while !stop.load(Ordering::Relaxed) {
                    call(&echo, i, payload).await;
                    if counting.load(Ordering::Relaxed) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        counting.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let n = counted.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        while callers.join_next().await.is_some() {}
        report(&client);
        client.disconnect().await;
        n as f64 / elapsed
    });
    let rate = rt.block_on(task).expect("the client task");
    format!(
        "{{\"peer\":\"grainwire\",\"mode\":\"throughput\",\"servers\":{servers},\"payload\":{payload},\"inflight\":{inflight},\"secs\":{secs},\"calls_per_sec\":{rate:.0}}}"
    )
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    if a.mode == Mode::Placement {
        println!("{}", placement::run(1_000_000));
        return;
    }
    if a.mode == Mode::Game {
        let rates = [a.update_hz, a.call_hz, a.secs];
        if a.players == 0 || rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            fail("--players, --update-hz, --call-hz and --secs must be positive");
        }
        let load = game_load::Load {
            players: a.players,
            update_hz: a.update_hz,
            call_hz: a.call_hz,
            secs: a.secs,
            target: a.target,
            runtime: a.server_runtime.clone(),
        };
        println!("{}", game_load::run(load));
        return;
    }
    let calls = a.calls.unwrap_or(if a.mode == Mode::Busy { 1000 } else { 20_000 });
    if calls == 0 || a.inflight == 0 || !a.secs.is_finite() || a.secs <= 0.0 {
        fail("--calls, --inflight and --secs must be positive");
    }
    if a.servers == 0 || a.servers > 1000 {
        fail("--servers must be 1..=1000");
    }
    let _ = DISCOVER.set(a.discover);
    let _ = DIRECTORY.set(a.directory);
    if a.protected {
        let key = grainwire::auth::generate_key(1).unwrap_or_else(|e| fail(&format!("key: {e}")));
        let _ = KEY.set(key);
    }
    let addrs = start_servers(a.servers);
    let line = match a.mode {
        Mode::Latency => latency(addrs, a.payload, a.warmup, calls),
        Mode::Busy => busy(addrs, calls, a.spin_us),
        _ => throughput(addrs, a.payload, a.inflight, a.secs),
    };
    println!("{line}");
}

/// Placement quality without a network: the routing snapshot over synthetic manifests.
mod placement {
    use std::sync::Arc;
    use std::time::Duration;

    use grainwire::proto::ids::{GrainId, GrainType, InterfaceId, MethodId, PeerId, ServerId};
    use grainwire::proto::manifest::{HostedGrain, HostedMethod, Manifest};
    use grainwire::proto::rng::SplitMix64;
    use grainwire::proto::route::{
        Affinity, ConsistentHash, Load, RouteTable, ServerEntry, Strategies, Target,
    };

    const TYPE: &str = "Player";

    fn server(i: usize, weight: u32) -> ServerEntry {
        ServerEntry {
            peer: PeerId(i as u64 + 1),
            manifest: Arc::new(Manifest {
                server_id: ServerId::new(format!("server-{i}")),
                cluster_id: "grainwire".into(),
                service_id: "game".into(),
                weight,
                draining: false,
                priority: 0,
                metadata: Default::default(),
                grains: vec![HostedGrain {
                    name: TYPE.into(),
                    grain_type: GrainType::of(TYPE),
                    interface: InterfaceId::of(TYPE),
                    version: 1,
                    contract: 0,
                    index: 0,
                    methods: vec![HostedMethod { id: MethodId(0), signature: 0 }],
                }],
            }),
            load: Arc::new(Load::new(Duration::from_millis(1))),
        }
    }

    /// The server index (peer - 1) of every key.
    fn place(servers: &[ServerEntry], keys: &[u64]) -> Vec<u32> {
        let table = RouteTable::build(servers, &Strategies::new(Arc::new(ConsistentHash)));
        let t = Target {
            grain_type: GrainType::of(TYPE),
            interface: InterfaceId::of(TYPE),
            version: 1,
            method: MethodId(0),
            signature: 0,
        };
        keys.iter()
            .map(|&h| {
                let d = table.route(&t, h, &Affinity::None).expect("hosted");
                d.candidate.peer.0 as u32 - 1
            })
            .collect()
    }

    fn max_over_mean(assigned: &[u32], n: usize) -> f64 {
        let mut counts = vec![0u64; n];
        for &s in assigned {
            counts[s as usize] += 1;
        }
        let max = *counts.iter().max().unwrap_or(&0) as f64;
        max / (assigned.len() as f64 / n as f64)
    }

    /// Percent of keys that moved, and percent that moved although `stayed(old server)`.
    fn moved(before: &[u32], after: &[u32], stayed: impl Fn(u32, u32) -> bool) -> (f64, f64) {
        let n = before.len() as f64 / 100.0;
        let changed = before.iter().zip(after).filter(|(a, b)| a != b);
        let total = changed.clone().count() as f64;
        let excess = changed.filter(|&(&a, &b)| stayed(a, b)).count() as f64;
        (total / n, excess / n)
    }

    pub(super) fn run(keys: usize) -> String {
        let mut rng = SplitMix64::new(2026);
        let keys: Vec<u64> = (0..keys)
            .map(|_| GrainId::new(GrainType::of(TYPE), u128::from(rng.next_u64())).stable_hash())
            .collect();
        let mut out = Vec::new();
        for n in [10usize, 100] {
            let fleet: Vec<_> = (0..n).map(|i| server(i, 1)).collect();
            let before = place(&fleet, &keys);
            let balance = max_over_mean(&before, n);
            // Join: a key may only move to the newcomer (index n).
            let grown: Vec<_> = (0..=n).map(|i| server(i, 1)).collect();
            let (added, add_excess) = moved(&before, &place(&grown, &keys), |_, to| to != n as u32);
            // Leave: only the leaver's keys may move.
            let leaver = (n / 2) as u32;
            let shrunk: Vec<_> =
                (0..n).filter(|&i| i as u32 != leaver).map(|i| server(i, 1)).collect();
            let (removed, remove_excess) =
                moved(&before, &place(&shrunk, &keys), |from, _| from != leaver);
            let mut weighted: Vec<_> = (0..n).map(|i| server(i, 1)).collect();
            weighted[0] = server(0, 2);
            let heavy = place(&weighted, &keys).iter().filter(|&&s| s == 0).count() as f64
                / keys.len() as f64
                * 100.0;
            out.push(format!(
                "\"{n}\":{{\"max_over_mean\":{balance:.4},\"add_moved_pct\":{added:.3},\"add_ideal_pct\":{:.3},\"add_excess_pct\":{add_excess:.3},\"remove_moved_pct\":{removed:.3},\"remove_excess_pct\":{remove_excess:.3},\"weight2_share_pct\":{heavy:.3},\"weight2_ideal_pct\":{:.3}}}",
                100.0 / (n + 1) as f64,
                200.0 / (n + 1) as f64,
            ));
        }
        format!("{{\"mode\":\"placement\",\"keys\":{},{}}}", keys.len(), out.join(","))
    }
}
