//! A load client for `game_server`: makes N calls to the demo `Echo` grain over many keys,
//! C at a time, checks every answer, and prints one JSON line
//! `{"calls":N,"ok":..,"failed":..,"p50_us":..,"p99_us":..}`. Exits 1 if any call failed.
//!
//! ```sh
//! cargo run --release --example game_client -- --connect 127.0.0.1:7777 --calls 10000 --concurrency 16
//! ```

#[path = "common/args.rs"]
mod args;
#[path = "common/game.rs"]
#[allow(dead_code)] // the client uses only the references, not the grain state
mod game;

use std::time::{Duration, Instant};

use game::EchoRef;
use grainwire::{Client, ClientConfig};

const USAGE: &str = "game_client --connect ADDR --calls N [--concurrency C]";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let a = args::Args::parse(USAGE);
    let connect = a.get("connect").unwrap_or_else(|| args::fail(USAGE, "--connect is required"));
    let addr = connect
        .parse()
        .unwrap_or_else(|_| args::fail(USAGE, &format!("--connect: not an address: {connect}")));
    let calls: u64 = a.num(USAGE, "calls", 0);
    if calls == 0 {
        args::fail(USAGE, "--calls must be at least 1");
    }
    let concurrency: u64 = a.num(USAGE, "concurrency", 1).clamp(1, calls);
    let client = match Client::connect(addr, ClientConfig::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {addr}: {e}");
            println!(
                "{{\"calls\":{calls},\"ok\":0,\"failed\":{calls},\"p50_us\":0.0,\"p99_us\":0.0}}"
            );
            std::process::exit(1);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let client = client.clone();
        // Worker w makes calls w, w + C, w + 2C, ... each to grain key (call % 1024).
        tasks.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            let mut n = w;
            while n < calls {
                let echo: EchoRef = client.grain((n % 1024) as i64);
                let t = Instant::now();
                match echo.derive(n).await {
                    Ok(v) if v == n * 2 + 1 => {
                        ok += 1;
                        latencies.push(t.elapsed());
                    }
                    Ok(v) => {
                        eprintln!("call {n}: wrong answer {v}");
                        failed += 1;
                    }
                    Err(e) => {
                        eprintln!("call {n}: {e}");
                        failed += 1;
                    }
                }
                n += concurrency;
            }
            (ok, failed, latencies)
        });
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (o, f, l) = r.expect("a worker task");
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    latencies.sort();
    println!(
        "{{\"calls\":{calls},\"ok\":{ok},\"failed\":{failed},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    client.disconnect().await;
    if failed > 0 {
        std::process::exit(1);
    }
}
