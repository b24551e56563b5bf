//! What calls both ways cost, over real loopback UDP, laid out like `bench` (the servers on
//! their own thread with their own single-threaded runtime, the client on the main thread).
//! Prints one JSON line per round.
//!
//! ```sh
//! cargo run --release --example bench_both_ways -- push    # observer push vs client one-way
//! cargo run --release --example bench_both_ways -- hop     # grain -> grain vs client -> grain
//! cargo run --release --example bench_both_ways -- sizes   # request bytes: reference vs key
//! cargo run --release --example bench_both_ways -- stream  # items/s of a grain's stream
//! cargo run --release --example bench_both_ways -- timer   # a timer turn vs a one-way call
//! ```
//!
//! * `push`: the same 32-byte one-way message (`Sink::data`), paced one at a time (the next
//!   goes once the last arrived), either from a grain to an observer its client hosts
//!   (server → client) or from the client to a grain (client → server). Per message: the
//!   latency from send to arrival (p50, p99; both ends in this process, one clock), and the
//!   server thread's CPU time (user + system, from `/proc`). `--rounds` interleaved rounds of
//!   `--messages` each way.
//! * `hop`: two servers that know each other; `Front` on the first calls `Back` on the second
//!   from inside a call. Per round, `--calls` client calls straight to `Back` and as many to
//!   `Front` (which time their inner call): p50/p99 of the client's direct call, of the grain's
//!   call to the other server, and of the whole relayed call.
//! * `sizes`: the bytes of a request datagram whose argument is a reference (`RoomRef`) and of
//!   the same request with the reference's key (`GrainKey`) instead, and of a 32-byte
//!   `#[sequenced]` update and the same as a reliable one-way call, measured on the wire of
//!   the simulated network.
//! * `stream`: one reader reads `--items` 32-byte items (`[u8; 32]`) of a grain's stream
//!   (`GrainStream::iter`) per round, with `--window` items of credit: items/s, the server
//!   thread's CPU per item, and the most items the server sent ahead of the reader (sampled
//!   from `ServerStats::stream_items` every 1,000 items read), which flow control bounds by
//!   the window.
//! * `timer`: server CPU per turn of a grain's timer (`every(1 ms)`, `--messages` ticks per
//!   round) and per one-way call from the client at the same pace (one per millisecond), in
//!   interleaved rounds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use grainwire::server::context;
use grainwire::{Client, GrainId, GrainKey, Server, ServerConfig};

/// What to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Observer push (server → client) vs a client's one-way call (client → server).
    Push,
    /// A grain's call to a grain on another server vs a client's call.
    Hop,
    /// Request bytes with a reference argument vs its key.
    Sizes,
    /// A grain's stream of 32-byte items to one reader.
    Stream,
    /// A timer's turn vs a client's one-way call.
    Timer,
}

/// Calls both ways, measured; prints one JSON line per round.
#[derive(clap::Parser, Debug)]
#[command(name = "bench_both_ways")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Messages per round and direction (`push`).
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Calls per round and kind (`hop`).
    #[arg(long, default_value_t = 5_000)]
    calls: u64,
    /// Items per round (`stream`).
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// The reader's window, in items (`stream`; `ClientConfig::grain_stream_window`).
    #[arg(long, default_value_t = grainwire::rpc::stream::DEFAULT_STREAM_WINDOW)]
    window: u32,
    /// The servers read and write in batches (`TransportConfig::batched_io`).
    #[arg(long)]
    batched: bool,
    /// With `--batched`: datagrams the servers gather into one GSO send
    /// (`TransportConfig::gso_segments`; 1: none).
    #[arg(long, default_value_t = 1)]
    gso_segments: usize,
}

/// A stream of 32-byte items.
#[grainwire::grain]
trait Feed {
    async fn items(&self, n: u64) -> grainwire::GrainStream<[u8; 32]>;
}

struct FeedState;

impl Feed for FeedState {
    async fn items(&self, n: u64) -> grainwire::GrainStream<[u8; 32]> {
        grainwire::GrainStream::iter((0..n).map(|i| [i as u8; 32]))
    }
}

/// A grain ticking: its timer's turns, counted.
#[grainwire::grain]
trait Ticker {
    /// Ticks every millisecond until `n` ticks.
    async fn run(&mut self, n: u64);
    #[one_way]
    async fn tick(&mut self);
    async fn count(&self) -> u64;
}

static TICKS: AtomicU64 = AtomicU64::new(0);

struct TickerState {
    timer: Option<grainwire::server::Timer>,
    goal: u64,
}

impl Ticker for TickerState {
    async fn run(&mut self, n: u64) {
        self.goal = TICKS.load(Ordering::SeqCst) + n;
        let cx = context().expect("in a call");
        self.timer = Some(cx.every(Duration::from_millis(1), |me: TickerRef| async move {
            let _ = me.tick().await;
        }));
    }
    async fn tick(&mut self) {
        if TICKS.fetch_add(1, Ordering::SeqCst) + 1 >= self.goal
            && let Some(t) = self.timer.take()
        {
            t.cancel();
        }
    }
    async fn count(&self) -> u64 {
        TICKS.load(Ordering::SeqCst)
    }
}

/// The first server (its statistics, read from the client's thread).
static SERVER_A: OnceLock<Server> = OnceLock::new();

/// The one-way message both directions send: a send time and padding to 32 bytes of
/// arguments.
#[grainwire::grain]
trait Sink {
    #[one_way]
    async fn data(&mut self, sent_ns: u64, pad: Vec<u8>);
}

/// Pushes to an observer from a grain.
#[grainwire::grain]
trait Pusher {
    /// Sends `n` messages to `sink`, each once the last arrived.
    async fn push(&self, sink: SinkRef, n: u64) -> u64;
}

#[grainwire::grain]
trait Back {
    async fn derive(&self, n: u64) -> u64;
}

#[grainwire::grain]
trait Front {
    /// Calls `Back` (key `n % 64`) on whichever server hosts it; the inner call's time (ns).
    async fn relay(&self, n: u64) -> (u64, u64);
}

/// The process's one clock, in ns since the first read.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Arrivals: each message's latency (ns), and a signal to send the next.
static ARRIVED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static NEXT: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// The server thread's id (for its CPU time).
static SERVER_TID: AtomicU64 = AtomicU64::new(0);

/// Padding: with the send time (a varint, 5-8 bytes here) and the vector's length, about 32
/// bytes of arguments.
const PAD: usize = 23;

struct Arrivals;

impl Sink for Arrivals {
    async fn data(&mut self, sent_ns: u64, pad: Vec<u8>) {
        assert_eq!(pad.len(), PAD);
        ARRIVED.lock().unwrap().push(now_ns() - sent_ns);
        NEXT.notify_one();
    }
}

struct PushState;

impl Pusher for PushState {
    async fn push(&self, sink: SinkRef, n: u64) -> u64 {
        for _ in 0..n {
            let next = NEXT.notified();
            if sink.data(now_ns(), vec![7; PAD]).await.is_err() {
                return 0;
            }
            next.await;
        }
        n
    }
}

struct BackState;

impl Back for BackState {
    async fn derive(&self, n: u64) -> u64 {
        n * 2 + 1
    }
}

struct FrontState;

impl Front for FrontState {
    async fn relay(&self, n: u64) -> (u64, u64) {
        let back: BackRef = context().expect("in a call").grain((n % 64) as i64);
        let t0 = now_ns();
        let v = back.derive(n).await.expect("the other server answers");
        (v, now_ns() - t0)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// The server thread's CPU time so far (user + system), from `/proc`.
fn server_cpu() -> Duration {
    let tid = SERVER_TID.load(Ordering::Relaxed);
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis, from the 3rd (state): utime is the
    // 14th field, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(14) + field(15);
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Starts the servers on their own thread: two that know each other, hosting `Sink` and
/// `Pusher` (the first) and `Front` (the first) and `Back` (the second).
fn start_servers(batched: bool, gso_segments: usize) -> Vec<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                .unwrap_or(0);
            SERVER_TID.store(tid, Ordering::Relaxed);
            runtime().block_on(async move {
                let config = |id: &str| {
                    let mut c =
                        ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
                    c.transport.batched_io = batched;
                    c.transport.gso_segments = gso_segments;
                    c
                };
                let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
                let a = Server::builder(config("a"))
                    .host(Sink::host(|_: &GrainId| Arrivals))
                    .host(Pusher::host(|_: &GrainId| PushState))
                    .host(Front::host(|_: &GrainId| FrontState))
                    .host(Feed::host(|_: &GrainId| FeedState))
                    .host(Ticker::host(|_: &GrainId| TickerState { timer: None, goal: 0 }))
                    .bind(any)
                    .expect("bind");
                let b = Server::builder(config("b"))
                    .host(Back::host(|_: &GrainId| BackState))
                    .bind(any)
                    .expect("bind");
                a.set_peers([b.local_addr().into()]);
                b.set_peers([a.local_addr().into()]);
                tx.send(vec![a.local_addr(), b.local_addr()]).expect("main waits");
                let _ = SERVER_A.set(a);
                std::future::pending::<()>().await;
                drop(b);
            })
        })
        .expect("a server thread");
    rx.recv().expect("addresses")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// p50 and p99 of `ns`, in µs.
fn p50_p99(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    (percentile(&ns, 0.5), percentile(&ns, 0.99))
}

fn take_arrivals() -> Vec<u64> {
    std::mem::take(&mut *ARRIVED.lock().unwrap())
}

async fn timer(client: &Client, rounds: u32, n: u64) {
    let ticker: TickerRef = client.grain(0);
    for round in 0..rounds {
        let (cpu, start) = (server_cpu(), TICKS.load(Ordering::SeqCst));
        ticker.run(n).await.expect("run");
        while TICKS.load(Ordering::SeqCst) < start + n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let timer_cpu = server_cpu() - cpu;
        let (cpu, start) = (server_cpu(), TICKS.load(Ordering::SeqCst));
        let mut at = tokio::time::Instant::now();
        for _ in 0..n {
            at += Duration::from_millis(1);
            tokio::time::sleep_until(at).await;
            ticker.tick().await.expect("one-way");
        }
        while TICKS.load(Ordering::SeqCst) < start + n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let call_cpu = server_cpu() - cpu;
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{{\"mode\":\"timer\",\"round\":{round},\"turns\":{n},\"timer_turn_server_cpu_us\":{:.2},\"one_way_server_cpu_us\":{:.2}}}",
            per(timer_cpu),
            per(call_cpu)
        );
    }
}

async fn stream(client: &Client, rounds: u32, n: u64, window: u32) {
    let feed: FeedRef = client.grain(0);
    let stats = || SERVER_A.get().expect("the server is up").stats().stream_items;
    // Warm up.
    let mut warm = feed.items(10_000);
    while let Some(item) = warm.next().await {
        item.expect("an item");
    }
    for round in 0..rounds {
        let packets = || client.servers().iter().map(|s| s.transport.packets_received).sum::<u64>();
        let (cpu, start, sent0, packets0) = (server_cpu(), Instant::now(), stats(), packets());
        let mut items = feed.items(n);
        let (mut read, mut ahead) = (0u64, 0u64);
        while let Some(item) = items.next().await {
            let item = item.expect("an item");
            assert_eq!(item[0], read as u8, "in order");
            read += 1;
            if read % 1000 == 0 {
                ahead = ahead.max((stats() - sent0).saturating_sub(read));
            }
        }
        assert_eq!(read, n);
        let (secs, cpu) = (start.elapsed().as_secs_f64(), server_cpu() - cpu);
        let datagrams = packets() - packets0;
        println!(
            "{{\"mode\":\"stream\",\"round\":{round},\"items\":{n},\"item_bytes\":32,\"window\":{window},\"items_per_s\":{:.0},\"server_cpu_ns_per_item\":{:.0},\"datagrams_received\":{datagrams},\"items_per_datagram\":{:.1},\"most_ahead_of_reader\":{ahead}}}",
            n as f64 / secs,
            cpu.as_secs_f64() * 1e9 / n as f64,
            n as f64 / datagrams.max(1) as f64
        );
    }
}

async fn push(client: &Client, rounds: u32, n: u64) {
    let pusher: PusherRef = client.grain(0);
    let view: SinkRef = client.observe(Arrivals);
    let sink: SinkRef = client.grain(0);
    // Warm up both paths.
    pusher.push(view.clone(), 1000).await.expect("push");
    for _ in 0..1000 {
        let next = NEXT.notified();
        sink.data(now_ns(), vec![7; PAD]).await.expect("one-way");
        next.await;
    }
    take_arrivals();
    for round in 0..rounds {
        let cpu = server_cpu();
        let pushed = pusher.push(view.clone(), n).await.expect("push");
        assert_eq!(pushed, n);
        let push_cpu = server_cpu() - cpu;
        let (push_p50, push_p99) = p50_p99(take_arrivals());
        let cpu = server_cpu();
        for _ in 0..n {
            let next = NEXT.notified();
            sink.data(now_ns(), vec![7; PAD]).await.expect("one-way");
            next.await;
        }
        let call_cpu = server_cpu() - cpu;
        let (call_p50, call_p99) = p50_p99(take_arrivals());
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{{\"mode\":\"push\",\"round\":{round},\"messages\":{n},\"observer_p50_us\":{push_p50:.1},\"observer_p99_us\":{push_p99:.1},\"one_way_p50_us\":{call_p50:.1},\"one_way_p99_us\":{call_p99:.1},\"observer_server_cpu_us\":{:.2},\"one_way_server_cpu_us\":{:.2}}}",
            per(push_cpu),
            per(call_cpu)
        );
    }
}

async fn hop(client: &Client, rounds: u32, n: u64) {
    let warm: FrontRef = client.grain(0);
    for i in 0..1000 {
        warm.relay(i).await.expect("relay");
        client.grain::<BackRef>((i % 64) as i64).derive(i).await.expect("derive");
    }
    for round in 0..rounds {
        let mut direct = Vec::with_capacity(n as usize);
        for i in 0..n {
            let back: BackRef = client.grain((i % 64) as i64);
            let t0 = now_ns();
            assert_eq!(back.derive(i).await.expect("derive"), i * 2 + 1);
            direct.push(now_ns() - t0);
        }
        let (mut inner, mut whole) = (Vec::new(), Vec::new());
        for i in 0..n {
            let front: FrontRef = client.grain((i % 64) as i64);
            let t0 = now_ns();
            let (v, ns) = front.relay(i).await.expect("relay");
            assert_eq!(v, i * 2 + 1);
            whole.push(now_ns() - t0);
            inner.push(ns);
        }
        let (d50, d99) = p50_p99(direct);
        let (i50, i99) = p50_p99(inner);
        let (w50, w99) = p50_p99(whole);
        println!(
            "{{\"mode\":\"hop\",\"round\":{round},\"calls\":{n},\"client_p50_us\":{d50:.1},\"client_p99_us\":{d99:.1},\"grain_to_grain_p50_us\":{i50:.1},\"grain_to_grain_p99_us\":{i99:.1},\"relayed_p50_us\":{w50:.1},\"relayed_p99_us\":{w99:.1},\"ratio_p50\":{:.2}}}",
            i50 / d50
        );
    }
}

#[grainwire::grain]
trait Room {
    async fn size(&self) -> u32;
}

#[grainwire::grain]
trait Lobby {
    /// Takes a room reference.
    async fn by_ref(&self, room: RoomRef) -> u32;
    /// Takes the same room's key.
    async fn by_key(&self, room: GrainKey) -> u32;
}

struct Rooms;

#[grainwire::grain]
trait Mover {
    /// A 32-byte position update, latest wins.
    #[sequenced]
    async fn update(&mut self, state: [u8; 32]);
    /// The same, reliable and ordered.
    #[one_way]
    async fn reliable(&mut self, state: [u8; 32]);
}

impl Mover for Rooms {
    async fn update(&mut self, _: [u8; 32]) {}
    async fn reliable(&mut self, _: [u8; 32]) {}
}

impl Room for Rooms {
    async fn size(&self) -> u32 {
        0
    }
}

impl Lobby for Rooms {
    async fn by_ref(&self, _: RoomRef) -> u32 {
        1
    }
    async fn by_key(&self, _: GrainKey) -> u32 {
        1
    }
}

/// The largest datagram the client (port 5000) sent `at` since sizes were last recorded.
fn largest_sent(net: &grainwire::transport::sim::SimNetwork, at: SocketAddr) -> usize {
    let sizes = net.recorded_sizes().into_iter();
    let sent = sizes.filter(|(from, to, _)| from.port() == 5000 && *to == at).map(|(_, _, n)| n);
    sent.max().unwrap_or(0)
}

/// Request datagram sizes on the simulated network: a reference argument vs its key.
async fn sizes() {
    use grainwire::transport::sim::{SimConfig, SimNetwork};
    let net = SimNetwork::new(1, SimConfig::default());
    let at: SocketAddr = "10.0.0.1:7000".parse().expect("an address");
    let _server = Server::builder(ServerConfig::default())
        .host(Lobby::host(|_: &GrainId| Rooms))
        .host(Room::host(|_: &GrainId| Rooms))
        .host(Mover::host(|_: &GrainId| Rooms))
        .bind_sim(&net, at)
        .expect("bind");
    let client = Client::builder()
        .servers([at])
        .connect_sim(&net, "10.0.1.1:5000".parse().expect("an address"))
        .await
        .expect("connect");
    let lobby: LobbyRef = client.grain(0);
    lobby.by_key(GrainKey::Int(0)).await.expect("warm");
    for key in [
        GrainKey::Int(7),
        GrainKey::Str("room-0".into()),
        GrainKey::Str("a-much-longer-room-name-for-a-tournament".into()),
    ] {
        let room: RoomRef = client.grain(key.clone());
        let mut sent = Vec::new();
        for by_ref in [true, false] {
            net.record_sizes();
            if by_ref {
                lobby.by_ref(room.clone()).await.expect("by_ref");
            } else {
                lobby.by_key(key.clone()).await.expect("by_key");
            }
            // The request: the largest datagram from the client to the server (the others
            // are acknowledgements).
            sent.push(largest_sent(&net, at));
        }
        let key_bytes = postcard::to_allocvec(&key).expect("encode").len();
        let ref_bytes = postcard::to_allocvec(&room).expect("encode").len();
        println!(
            "{{\"mode\":\"sizes\",\"key\":{},\"key_bytes\":{key_bytes},\"reference_bytes\":{ref_bytes},\"request_datagram_with_reference\":{},\"request_datagram_with_key\":{}}}",
            serde_json::to_string(&key.to_string()).expect("a string"),
            sent[0],
            sent[1]
        );
    }
    // A 32-byte update, sequenced vs reliable one-way: the largest datagram the client sends
    // while it goes (each sent alone, after the last one's acknowledgements went).
    let mover: MoverRef = client.grain(1);
    mover.reliable([0; 32]).await.expect("warm");
    for sequenced in [true, false] {
        let mut largest = 0;
        for n in 1..=5u8 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            net.record_sizes();
            if sequenced {
                mover.update([n; 32]).await.expect("update");
            } else {
                mover.reliable([n; 32]).await.expect("one-way");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            largest = largest.max(largest_sent(&net, at));
        }
        let what = if sequenced { "sequenced update" } else { "reliable one-way call" };
        println!(
            "{{\"mode\":\"sizes\",\"message\":\"{what}\",\"argument_bytes\":32,\"largest_datagram\":{largest}}}"
        );
    }
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let rt = runtime();
    match args.mode {
        Mode::Sizes => rt.block_on(sizes()),
        mode => {
            let addrs = start_servers(args.batched, args.gso_segments);
            rt.block_on(async {
                let config = grainwire::ClientConfig {
                    grain_stream_window: args.window,
                    ..grainwire::ClientConfig::default()
                };
                let client = Client::builder()
                    .config(config)
                    .servers(addrs)
                    .connect()
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e}"));
                match mode {
                    Mode::Push => push(&client, args.rounds, args.messages).await,
                    Mode::Stream => stream(&client, args.rounds, args.items, args.window).await,
                    Mode::Timer => timer(&client, args.rounds, args.messages).await,
                    _ => hop(&client, args.rounds, args.calls).await,
                }
            });
        }
    }
}
