//! A load client for one or more `game_server`s: makes N calls to the demo `Echo` grain over
//! many keys, C at a time, routed by the servers' manifests and a strategy, checks every
//! answer, and prints one JSON line
//! `{"calls":N,"ok":..,"failed":..,"lost_to_dead_server":..,"p50_us":..,"p99_us":..,
//! "max_us":..,"max_gap_ms":..,"per_server":{"<server id>":<calls>,..},"errors":{"<kind>":<calls>,..}}`
//! (`max_gap_ms`: the longest stretch in which no call succeeded).
//!
//! ```sh
//! cargo run --release --example game_client -- --connect 127.0.0.1:7777 --calls 10000 --concurrency 16
//! cargo run --release --example game_client -- --connect 127.0.0.1:7777 --connect 127.0.0.1:7778 \
//!     --mode multi --strategy consistent-hash --calls 100000 --concurrency 16
//! cargo run --release --example game_client -- --seed 127.0.0.1:7777 --secs 10 --concurrency 8
//! cargo run --release --example game_client -- --redis redis://127.0.0.1:6379/ --cluster eu --calls 1000
//! cargo run --release --example game_client -- --connect 127.0.0.1:7777 --token-file player.token --calls 100
//! ```
//!
//! `--help` lists every flag with its default. `--connect` takes `ip:port` or `host:port` (a
//! name is resolved on every connect attempt). `--seed ADDR` (repeatable) discovers the fleet
//! from the servers themselves and follows it as servers join and leave; `--redis URL` reads
//! it from Redis. A server of another `--cluster` gives no service: the client exits 1 with
//! the reason.
//! It keeps running through a server's death: calls that were pending on a server that died
//! fail (counted in `failed` and in `lost_to_dead_server`); later calls go to the survivors,
//! and to the server again once it is back. `--secs S` stops starting calls after S seconds;
//! `--pace-us P` starts each worker's calls at most every P µs (a probe beside other load).
//! `--token-file T` presents the player token in T (hex, as a backend hands it out) to servers
//! that require tokens; `--key-file [ID=]F` instead mints one the way a backend would, for
//! `--client-id` (default 1) with `--user-data`, naming the `--connect` servers (`--token-out
//! FILE` writes it and exits, for another client: a token opens sessions from one address). A server that refuses the token (or the lack of one)
//! makes the client exit 1 with the reason, e.g. `rejected: the connect token expired`.
//! `errors` counts failures by kind. Exits 1 if any call failed for another reason (for example
//! `NotConnected`: made while no server was connected, sent nowhere), or nothing succeeded.

#[path = "common/game.rs"]
#[allow(dead_code)] // the client uses only the references, not the grain state
mod game;
#[path = "common/keys.rs"]
mod keys;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use game::EchoRef;
use std::path::PathBuf;

use clap::Parser;
use grainwire::auth::ConnectToken;
use grainwire::client::{ConnectMode, ServerAddr, StrategyName};
use grainwire::config::ConfigFile;
use grainwire::{CallError, Client};

/// A load client for game servers: calls the demo Echo grain and prints one JSON line.
#[derive(Parser, Debug)]
#[command(name = "game_client")]
struct Args {
    /// A server address (ip:port or host:port); repeatable.
    #[arg(long = "connect", value_name = "ADDR")]
    connect: Vec<ServerAddr>,
    /// A server to discover the fleet from (the client follows it); repeatable.
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<ServerAddr>,
    /// Read the fleet from this Redis (redis://host:port/db) and follow it.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Calls to make [default: unbounded with --secs].
    #[arg(long, value_name = "N")]
    calls: Option<u64>,
    /// Calls in flight at once.
    #[arg(long, value_name = "C", default_value_t = 1)]
    concurrency: u64,
    /// Distinct grain keys called.
    #[arg(long, value_name = "K", default_value_t = 1024)]
    keys: u64,
    /// single, multi or on-demand [default: single for one --connect, else multi, or the
    /// --config file's].
    #[arg(long)]
    mode: Option<ConnectMode>,
    /// round-robin, consistent-hash, lowest-latency, or tiered-<one of those> (within the best
    /// priority tier) [default: consistent-hash, or the --config file's].
    #[arg(long, value_name = "NAME")]
    strategy: Option<StrategyName>,
    /// Stop starting calls after SECS seconds (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    secs: f64,
    /// Start each worker's calls at most every P microseconds (0: as fast as answered).
    #[arg(long, value_name = "P", default_value_t = 0)]
    pace_us: u64,
    /// The servers' cluster [default: grainwire, or the --config file's].
    #[arg(long, value_name = "ID")]
    cluster: Option<String>,
    /// Present the player token in FILE (hex on one line).
    #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
    token_file: Option<PathBuf>,
    /// Mint a token with the key in FILE (as a backend would) naming the --connect servers.
    #[arg(long, value_name = "[ID=]FILE")]
    key_file: Option<String>,
    /// The client id a minted token names.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    client_id: u64,
    /// The user data a minted token carries.
    #[arg(long, value_name = "TEXT", default_value = "")]
    user_data: String,
    /// How long a minted token is valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    valid_secs: u64,
    /// Write the minted token to FILE (hex) and exit, as a backend would.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    token_out: Option<PathBuf>,
    /// A client configuration file (TOML or JSON; its servers come first).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write a JSON object mapping each grain key called to the server id that answered for
    /// it last (with the grain directory on, every client writes the same mapping).
    #[arg(long, value_name = "FILE")]
    placement_out: Option<PathBuf>,
}

fn fail(problem: &str) -> ! {
    eprintln!("game_client: {problem}");
    std::process::exit(2)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    lost: u64,
    latencies: Vec<Duration>,
    per_server: BTreeMap<String, u64>,
    /// Failures by kind (the error's variant name).
    errors: BTreeMap<String, u64>,
    /// When each successful call ended, in microseconds since the run started.
    done_at: Vec<u64>,
    /// The latest answer per grain key: (when, server).
    placement: BTreeMap<u64, (u64, String)>,
}

impl Tally {
    /// Counts a failure; prints the first few of each kind (a flood of identical lines would
    /// slow the run down more than the failures themselves).
    fn fail(&mut self, n: u64, kind: String, what: &dyn std::fmt::Display) {
        self.failed += 1;
        let seen = self.errors.entry(kind).or_default();
        *seen += 1;
        if *seen <= 3 {
            eprintln!("call {n}: {what}");
        }
    }
}

/// The variant name of a call error (`Disconnected`, `NotConnected`, ...).
fn kind(e: &CallError) -> String {
    let debug = format!("{e:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or("Error").to_string()
}

fn json_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let addrs = a.connect.clone();
    // --config FILE: a client configuration (TOML or JSON; its servers come first).
    let mut config = match &a.config {
        Some(path) => {
            grainwire::ClientConfig::load(path).unwrap_or_else(|e| fail(&format!("--config: {e}")))
        }
        None => grainwire::ClientConfig::default(),
    };
    config.discovery.seeds.extend(a.seeds.iter().cloned());
    config.discovery.redis.extend(a.redis.iter().cloned());
    if addrs.is_empty() && config.servers.is_empty() && !config.discovery.enabled() {
        fail("give --connect, --seed or --redis (or a --config with servers or discovery)");
    }
    let secs_given = a.secs > 0.0;
    let calls: u64 = a.calls.unwrap_or(if secs_given { u64::MAX } else { 0 });
    if calls == 0 {
        fail("--calls must be at least 1 (or give --secs)");
    }
    let concurrency: u64 = a.concurrency.clamp(1, calls.min(1 << 16));
    let keys: u64 = a.keys.max(1);
    // With --secs, workers stop starting calls after that long (the count is then a bound).
    let until = secs_given.then(|| Instant::now() + Duration::from_secs_f64(a.secs));
    // With --pace-us, each worker starts a call at most every P µs (a probe, not a load).
    let pace = Duration::from_micros(a.pace_us);
    let mode: ConnectMode = match a.mode {
        Some(m) => m,
        None if a.config.is_some() => config.mode,
        None if addrs.len() == 1 && !config.discovery.enabled() => ConnectMode::Single,
        None => ConnectMode::Multi,
    };
    // --cluster: the servers' cluster (default `grainwire`); one of another is refused.
    if let Some(cluster) = &a.cluster {
        config.cluster_id = cluster.clone();
    }
    if a.strategy.is_some() {
        config.strategy = a.strategy;
    }
    let mut builder = Client::builder().config(config).servers(addrs.clone()).mode(mode);
    if let Some(f) = &a.token_file {
        builder = builder.token(keys::read_token(f).unwrap_or_else(|e| fail(&e)));
    }
    if let Some(f) = &a.key_file {
        let key = keys::read_key(f).unwrap_or_else(|e| fail(&e));
        let valid = Duration::from_secs(a.valid_secs);
        let user = a.user_data.as_bytes();
        let token = ConnectToken::issue(&key, a.client_id, &addrs, valid, user)
            .unwrap_or_else(|e| fail(&format!("cannot mint a token: {e}")));
        if let Some(out) = &a.token_out {
            std::fs::write(out, token.to_hex() + "\n")
                .unwrap_or_else(|e| fail(&format!("--token-out {}: {e}", out.display())));
            return; // the backend's job is done: another client presents it
        }
        builder = builder.token(token);
    }
    let client = match builder.connect().await {
        Ok(c) => c,
        Err(e) => {
            if let Some(r) = e.rejection() {
                eprintln!("rejected: {r}");
            }
            let mut list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            list.extend(a.seeds.iter().map(|s| format!("seed {s}")));
            list.extend(a.redis.iter().map(|r| format!("redis {r}")));
            eprintln!("cannot connect to {}: {e}", list.join(", "));
            let calls = if secs_given { 0 } else { calls };
            println!(
                "{{\"calls\":{calls},\"ok\":0,\"failed\":{calls},\"lost_to_dead_server\":0,\"p50_us\":0.0,\"p99_us\":0.0,\"max_us\":0.0,\"max_gap_ms\":0.0,\"per_server\":{{}},\"errors\":{{\"ConnectFailed\":{calls}}}}}"
            );
            std::process::exit(1);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let run_start = Instant::now();
    for w in 0..concurrency {
        let client = client.clone();
        // Worker w makes calls w, w + C, w + 2C, ... each to grain key (call % keys).
        tasks.spawn(async move {
            let mut t = Tally::default();
            let mut n = w;
            let mut next = tokio::time::Instant::now();
            while n < calls && until.is_none_or(|u| Instant::now() < u) {
                if !pace.is_zero() {
                    next += pace;
                    tokio::time::sleep_until(next).await;
                }
                let echo: EchoRef = client.grain((n % keys) as i64);
                let start = Instant::now();
                match echo.derive_at(n).await {
                    Ok((v, server)) if v == n * 2 + 1 => {
                        t.ok += 1;
                        t.latencies.push(start.elapsed());
                        let at = run_start.elapsed().as_micros() as u64;
                        t.done_at.push(at);
                        *t.per_server.entry(server.clone()).or_default() += 1;
                        t.placement.insert(n % keys, (at, server));
                    }
                    Ok((v, _)) => t.fail(n, "WrongAnswer".into(), &format!("wrong answer {v}")),
                    Err(e @ CallError::Disconnected(_)) => {
                        // Pending on a server whose session ended (it died or stopped).
                        t.lost += 1;
                        t.fail(n, kind(&e), &e);
                    }
                    // Sent nowhere (no server connected), refused, or failed otherwise.
                    Err(e) => t.fail(n, kind(&e), &e),
                }
                n += concurrency;
            }
            t
        });
    }
    let mut all = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let t = r.expect("a worker task");
        all.ok += t.ok;
        all.failed += t.failed;
        all.lost += t.lost;
        all.latencies.extend(t.latencies);
        for (s, n) in t.per_server {
            *all.per_server.entry(s).or_default() += n;
        }
        for (k, n) in t.errors {
            *all.errors.entry(k).or_default() += n;
        }
        all.done_at.extend(t.done_at);
        for (k, (at, s)) in t.placement {
            let e = all.placement.entry(k).or_insert((at, s.clone()));
            if at >= e.0 {
                *e = (at, s);
            }
        }
    }
    if let Some(path) = &a.placement_out {
        let entries: Vec<String> = all
            .placement
            .iter()
            .map(|(k, (_, s))| format!("\"{k}\":\"{}\"", json_escape(s)))
            .collect();
        if let Err(e) = std::fs::write(path, format!("{{{}}}\n", entries.join(","))) {
            eprintln!("--placement-out {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    // The longest stretch without a successful call (a server's death or restart).
    all.done_at.sort_unstable();
    let max_gap = all.done_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    all.latencies.sort();
    let per_server: Vec<String> =
        all.per_server.iter().map(|(s, n)| format!("\"{}\":{n}", json_escape(s))).collect();
    let errors: Vec<String> = all.errors.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
    println!(
        "{{\"calls\":{},\"ok\":{},\"failed\":{},\"lost_to_dead_server\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"max_gap_ms\":{:.1},\"per_server\":{{{}}},\"errors\":{{{}}}}}",
        all.ok + all.failed,
        all.ok,
        all.failed,
        all.lost,
        percentile(&all.latencies, 0.5),
        percentile(&all.latencies, 0.99),
        percentile(&all.latencies, 1.0),
        max_gap as f64 / 1000.0,
        per_server.join(","),
        errors.join(",")
    );
    client.disconnect().await;
    if all.failed > all.lost || all.ok == 0 {
        std::process::exit(1);
    }
}
