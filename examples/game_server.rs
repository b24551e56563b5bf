//! A game server hosting the demo grains until SIGINT or SIGTERM.
//!
//! ```sh
//! cargo run --release --example game_server -- --bind 127.0.0.1:7777 [--server-id eu-1] [--grains player,room,echo]
//! ```
//!
//! `--cluster` names its cluster (default `grainwire`; clients of another cluster do not use
//! it); `--priority N` (default 0) and `--meta KEY=VALUE` (repeatable) go to clients in its
//! manifest, for tiered strategies. `--grains` chooses which demo grain types it hosts (default: all); `--server-id` defaults
//! to the bind address. `--max-connections` (4096) and `--max-connections-per-ip` (64) set the
//! transport's session limits; `--stats-every S` prints the server's statistics (what it
//! holds, what it refused and why) to stderr every S seconds.
//!
//! Prints one line `listening on ADDR` once it accepts connections; on SIGINT/SIGTERM it shuts
//! down gracefully (pending calls finish, grains deactivate) and exits 0.

#[path = "common/args.rs"]
#[allow(dead_code)] // shared with the other examples
mod args;
#[path = "common/game.rs"]
mod game;

use std::io::Write;

use grainwire::server::MetaValue;
use grainwire::{Server, ServerConfig};

const USAGE: &str = "game_server --bind ADDR [--server-id ID] [--cluster ID] [--grains player,room,echo] \
     [--priority N] [--meta KEY=VALUE ...] [--max-connections N] [--max-connections-per-ip N] \
     [--stats-every SECS]";

#[tokio::main]
async fn main() {
    let a = args::Args::parse(USAGE);
    let bind = a.get("bind").unwrap_or_else(|| args::fail(USAGE, "--bind is required"));
    let addr = bind
        .parse()
        .unwrap_or_else(|_| args::fail(USAGE, &format!("--bind: not an address: {bind}")));
    let grains: Vec<String> = match a.get("grains") {
        Some(list) => list.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        None => game::GRAIN_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    // Without --server-id the bind address names the server: stable across restarts, so a
    // restarted server gets its grains back under consistent placement.
    let server_id = a.get("server-id").unwrap_or(bind).to_string();
    let mut config = ServerConfig { server_id: Some(server_id.clone()), ..ServerConfig::default() };
    if let Some(cluster) = a.get("cluster") {
        config.cluster_id = cluster.to_string();
    }
    config.priority = a.num(USAGE, "priority", 0);
    for kv in a.all("meta") {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| args::fail(USAGE, &format!("--meta: not KEY=VALUE: {kv}")));
        // Numbers and true/false keep their type; the rest is text.
        let value = match (v.parse::<i64>(), v) {
            (Ok(n), _) => MetaValue::Int(n),
            (_, "true") => MetaValue::Bool(true),
            (_, "false") => MetaValue::Bool(false),
            _ => MetaValue::from(v),
        };
        config.metadata.insert(k.into(), value);
    }
    let t = &mut config.transport;
    t.max_connections = a.num(USAGE, "max-connections", t.max_connections);
    t.max_connections_per_ip = a.num(USAGE, "max-connections-per-ip", t.max_connections_per_ip);
    let mut builder = Server::builder(config);
    for g in &grains {
        let host = game::host(g, &server_id).unwrap_or_else(|| {
            args::fail(
                USAGE,
                &format!("unknown grain type {g}; known: {}", game::GRAIN_NAMES.join(",")),
            )
        });
        builder = builder.host(host);
    }
    let server = match builder.bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    eprintln!("server id {}, hosting {}", server.server_id(), grains.join(","));
    let every: f64 = a.num(USAGE, "stats-every", 0.0);
    if every > 0.0 {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(every));
        tick.tick().await;
        let signal = wait_for_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = tick.tick() => eprintln!("{:?}", server.stats()),
                () = &mut signal => break,
            }
        }
    } else {
        wait_for_signal().await;
    }
    eprintln!("shutting down");
    server.shutdown().await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
