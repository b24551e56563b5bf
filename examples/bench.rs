//! Grain RPC benchmark over real loopback UDP, laid out like `../shared/peers` so the numbers
//! compare as ratios: the server on its own thread with its own single-threaded tokio runtime,
//! the client on the main thread with another. Prints exactly one JSON line.
//!
//! ```sh
//! cargo run --release --example bench -- latency                    # one call outstanding
//! cargo run --release --example bench -- throughput --inflight 64   # 64 calls kept in flight
//! taskset -c 0 cargo run --release --example bench -- latency       # whole process on one core
//! ```
//!
//! Every call is `EchoRef::echo(Vec<u8>)` on the demo `Echo` grain with a `--payload`-byte
//! argument; each answer is checked against what was sent.
//!
//! * `latency`: `--warmup` calls unrecorded, then `--calls` calls timed one by one (call →
//!   result); p50/p99/p99.9/mean/max in µs. One grain (key 0).
//! * `throughput`: `--inflight` calls kept outstanding, each caller on its own grain (keys
//!   `0..inflight`, so activations and ordered streams do not serialize the callers);
//!   completions counted over a `--secs` window that starts 0.5 s after the first call;
//!   `calls_per_sec` = count / secs.
//!
//! The application side of each endpoint runs as a spawned task, as a game's network loop
//! would (a `block_on` root future is woken through the runtime's eventfd; a spawned task
//! through the local run queue). A failed call aborts the run with exit status 1. With
//! `GRAINWIRE_BENCH_VERBOSE=1` the client's transport counters go to stderr.

#[path = "common/args.rs"]
#[allow(dead_code)] // shared with the other examples
mod args;
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
use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig};

const USAGE: &str =
    "bench latency|throughput [--payload N] [--calls N] [--warmup N] [--inflight N] [--secs S]";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Starts the echo server on its own thread and runtime; returns its address. The thread
/// serves until the process exits.
fn start_server() -> SocketAddr {
    let (addr_tx, addr_rx) = mpsc::channel();
    thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let server = Server::builder(ServerConfig::default())
                    .host(Echo::host(|_: &GrainId| EchoState))
                    .bind("127.0.0.1:0".parse().expect("an address"))
                    .unwrap_or_else(|e| {
                        eprintln!("cannot bind the server: {e}");
                        std::process::exit(1)
                    });
                addr_tx.send(server.local_addr()).expect("main thread waits");
                std::future::pending::<()>().await;
                drop(server);
            })
        })
        .expect("a server thread");
    addr_rx.recv().expect("the server thread reports its address")
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

/// Connects to the server on the calling runtime (the client's endpoint task lives there).
async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, ClientConfig::default()).await.unwrap_or_else(|e| {
        eprintln!("cannot connect to {addr}: {e}");
        std::process::exit(1)
    })
}

fn latency(addr: SocketAddr, payload: usize, warmup: u64, calls: u64) -> String {
    let rt = runtime();
    let task = rt.spawn(async move {
        let client = connect(addr).await;
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
        "{{\"peer\":\"grainwire\",\"mode\":\"latency\",\"payload\":{payload},\"calls\":{calls},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"mean_us\":{mean:.1},\"max_us\":{:.1}}}",
        percentile(&us, 0.5),
        percentile(&us, 0.99),
        percentile(&us, 0.999),
        us[us.len() - 1],
    )
}

fn throughput(addr: SocketAddr, payload: usize, inflight: u64, secs: f64) -> String {
    let rt = runtime();
    let task = rt.spawn(async move {
        let client = connect(addr).await;
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
        "{{\"peer\":\"grainwire\",\"mode\":\"throughput\",\"payload\":{payload},\"inflight\":{inflight},\"secs\":{secs},\"calls_per_sec\":{rate:.0}}}"
    )
}

fn main() {
    let a = args::Args::parse(USAGE);
    let mode = match a.positional.as_slice() {
        [m] if m == "latency" || m == "throughput" => m.clone(),
        _ => args::fail(USAGE, "give exactly one mode: latency or throughput"),
    };
    let payload: usize = a.num(USAGE, "payload", 32);
    let calls: u64 = a.num(USAGE, "calls", 20_000);
    let warmup: u64 = a.num(USAGE, "warmup", 2_000);
    let inflight: u64 = a.num(USAGE, "inflight", 64);
    let secs: f64 = a.num(USAGE, "secs", 3.0);
    if calls == 0 || inflight == 0 || !secs.is_finite() || secs <= 0.0 {
        args::fail(USAGE, "--calls, --inflight and --secs must be positive");
    }
    let addr = start_server();
    let line = if mode == "latency" {
        latency(addr, payload, warmup, calls)
    } else {
        throughput(addr, payload, inflight, secs)
    };
    println!("{line}");
}
