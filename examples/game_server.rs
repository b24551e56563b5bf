//! A game server hosting the demo grains until SIGINT or SIGTERM.
//!
//! ```sh
//! cargo run --release --example game_server -- --bind 127.0.0.1:7777 [--server-id eu-1] [--grains player,room,echo]
//! cargo run --release --example game_server -- --bind 127.0.0.1:0 --redis redis://127.0.0.1:6379/ --cluster eu
//! cargo run --release --example game_server -- --bind 127.0.0.1:7778 --peer 127.0.0.1:7777
//! cargo run --release --example game_server -- --bind 127.0.0.1:7777 --key-file key.hex --own-player-only
//! cargo run --release --example game_server -- --bind 127.0.0.1:0 --redis redis://127.0.0.1:6379/ --state redis
//! ```
//!
//! `--help` lists every flag with its default. `--server-id` and `--advertise` (the address
//! clients reach it at) default to the address it actually bound, port included, so `--bind
//! 127.0.0.1:0` works. With `--redis URL` it registers in Redis (a TTL renewed by heartbeat,
//! deregistered on graceful shutdown) and serves the fleet it sees there to clients that ask
//! (`game_client --seed`); without, it serves its `--peer`s (repeatable) and itself.
//! `--cluster` (default `grainwire`) names its cluster: clients of another cluster do not use
//! it, and its Redis keys are the cluster's. `--priority N` and `--meta KEY=VALUE`
//! (repeatable) go to clients in its manifest and the fleet, for tiered strategies.
//! `--stats-every S` prints the server's statistics to stderr every S seconds. `--config FILE`
//! loads a server configuration (TOML or JSON) that the flags then override. `--state redis`
//! (with `--redis`) keeps player grains' state (health, position) in that Redis: a player
//! keeps it across a server kill (up to its last write: joining, a hit), a drain (written as
//! it deactivates) and the fleet, and their daily-reward reminders; `--state memory` (the
//! default) in the process. `--runtime current` runs the server on one thread (a
//! current-thread tokio runtime) instead of a worker per core.
//!
//! `--key-file [ID=]FILE` (repeatable, for a rotation; the id defaults to 1) requires every
//! client to present a connect token sealed with one of those keys and naming this server
//! (its advertised address); their packets are then encrypted. A key file holds 64 hex
//! characters (`openssl rand -hex 32 > key.hex`). `--own-player-only` lets a player call only
//! the player grain whose key is its client id. `--ban ID` (repeatable) refuses those client
//! ids at connect (the approval hook; code 403). Without a key file the server is for trusted
//! networks only.
//!
//! Prints one line `listening on ADDR` once it accepts connections; on SIGINT/SIGTERM it shuts
//! down gracefully (clients are told it drains, pending calls finish, grains deactivate, it
//! leaves Redis) and exits 0.

#[path = "common/game.rs"]
mod game;
#[path = "common/keys.rs"]
mod keys;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use grainwire::client::ServerAddr;
use grainwire::config::ConfigFile;
use grainwire::persistence::{RedisStorage, Reminders, Storage};
use grainwire::server::Shards;
use grainwire::server::{AuthConfig, MetaValue};
use grainwire::{GrainKey, Server, ServerConfig};

/// A grainwire game server hosting the demo grains.
#[derive(Parser, Debug, Clone)]
#[command(name = "game_server")]
struct Args {
    /// The UDP address to bind (port 0: the OS picks one).
    #[arg(long)]
    bind: SocketAddr,
    /// The server's id [default: the bound address].
    #[arg(long)]
    server_id: Option<String>,
    /// The cluster it belongs to [default: grainwire, or the --config file's].
    #[arg(long, value_name = "ID")]
    cluster: Option<String>,
    /// The demo grain types it hosts, comma-separated.
    #[arg(long, default_value = "player,room,echo", value_delimiter = ',')]
    grains: Vec<String>,
    /// Its priority, lower preferred by tiered strategies [default: 0, or the --config file's].
    #[arg(long, value_name = "N")]
    priority: Option<u32>,
    /// Metadata for clients, KEY=VALUE (numbers and true/false keep their type); repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, MetaValue)>,
    /// Register in this Redis (redis://host:port/db) and serve the fleet registered there.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The address clients reach it at [default: the bound address].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<ServerAddr>,
    /// Another server of the fleet, served to clients that ask (without --redis); repeatable.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<ServerAddr>,
    /// Most sessions at once [default: 4096, or the --config file's].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Most sessions from one IP address [default: 64, or the --config file's].
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Print the server's statistics to stderr every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    stats_every: f64,
    /// Require connect tokens sealed with the key in FILE (64 hex characters), with id ID
    /// [default id: 1]; repeatable.
    #[arg(long = "key-file", value_name = "[ID=]FILE")]
    key_files: Vec<String>,
    /// With tokens: a player may call only the player grain whose key is its client id.
    #[arg(long)]
    own_player_only: bool,
    /// With tokens: refuse this client id at connect (code 403); repeatable.
    #[arg(long = "ban", value_name = "ID")]
    banned: Vec<u64>,
    /// A server configuration file (TOML or JSON); the flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where player grains keep their state (health, position): `memory` (this process:
    /// lost when it stops) or `redis` (the --redis URL, under the cluster's hash tag: kept
    /// across a kill, a drain and the fleet).
    #[arg(long, value_name = "WHERE", default_value = "memory")]
    state: StateWhere,
    /// With `--state redis`: each state load and write waits until N replicas have it (Redis
    /// `WAIT`, up to 500 ms), so a failover that promotes one of them loses no acknowledged
    /// write. 0 (the default): nothing waits.
    #[arg(long, value_name = "N", default_value_t = 0)]
    state_replicas: u32,
    /// The tokio runtime the server runs on: `multi` (a worker per core) or `current` (one
    /// thread: the endpoint and every grain on one core, with no wake-ups across threads;
    /// about a third less CPU per call in BENCHMARKS.md).
    #[arg(long, value_name = "KIND", default_value = "multi")]
    runtime: Runtime,
    /// Runs N servers in this process, one per thread, each on a current-thread runtime
    /// (`grainwire::server::Shards`): shard i binds the `--bind` port + i (or a port of its
    /// own with port 0) and is a fleet member of its own; give clients every shard's address.
    /// A shard's grains call other grains over the shard's own fleet (`--peer`, `--redis`):
    /// with `--redis` (a directory) one activation per grain holds across shards.
    #[arg(long, value_name = "N", default_value_t = 1)]
    shards: usize,
}

/// The tokio runtime to run on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Multi,
    Current,
}

/// Where player grains keep their state.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StateWhere {
    Memory,
    Redis,
}

fn parse_meta(kv: &str) -> Result<(String, MetaValue), String> {
    let (k, v) = kv.split_once('=').ok_or_else(|| format!("not KEY=VALUE: {kv}"))?;
    let value = match (v.parse::<i64>(), v) {
        (Ok(n), _) => MetaValue::Int(n),
        (_, "true") => MetaValue::Bool(true),
        (_, "false") => MetaValue::Bool(false),
        _ => MetaValue::from(v),
    };
    Ok((k.to_string(), value))
}

fn fail(problem: &str) -> ! {
    eprintln!("game_server: {problem}");
    std::process::exit(2)
}

fn main() {
    let a = Args::parse();
    if a.shards == 0 {
        fail("--shards: at least 1");
    }
    let mut runtime = match (a.runtime, a.shards) {
        (Runtime::Multi, 1) => tokio::runtime::Builder::new_multi_thread(),
        // Shards run on runtimes of their own; this one only waits for a signal.
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = runtime.enable_all().build().unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    runtime.block_on(serve(a));
}

async fn serve(a: Args) {
    if a.shards == 1 {
        let server = start(&a, None);
        run_until_signal(&a, || eprintln!("{:?}", server.stats())).await;
        eprintln!("shutting down");
        server.shutdown().await;
        return;
    }
    let args = std::sync::Arc::new(a.clone());
    let shards = Shards::start(a.shards, move |i| Ok(start(&args, Some(i))))
        .unwrap_or_else(|e| fail(&format!("cannot start the shards: {e}")));
    run_until_signal(&a, || shards.servers().for_each(|s| eprintln!("{:?}", s.stats()))).await;
    eprintln!("shutting down");
    shards.shutdown().await;
}

/// Prints statistics (`stats`) every `--stats-every` seconds until SIGINT or SIGTERM.
async fn run_until_signal(a: &Args, stats: impl Fn()) {
    if a.stats_every > 0.0 {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(a.stats_every));
        tick.tick().await;
        let signal = wait_for_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = tick.tick() => stats(),
                () = &mut signal => break,
            }
        }
    } else {
        wait_for_signal().await;
    }
}

/// Builds and binds the server (shard `shard`: the port `--bind` names plus `shard`, unless it
/// is 0; its id, if `--server-id` names one, with `-<shard>`) on the current runtime.
fn start(a: &Args, shard: Option<usize>) -> Server {
    let mut config = match &a.config {
        Some(path) => ServerConfig::load(path).unwrap_or_else(|e| fail(&format!("--config: {e}"))),
        None => ServerConfig::default(),
    };
    let mut bind = a.bind;
    if let Some(i) = shard
        && bind.port() != 0
    {
        let port = usize::from(bind.port()) + i;
        bind.set_port(u16::try_from(port).unwrap_or_else(|_| fail("--shards: ports past 65535")));
    }
    // Bound first, so that the server can be named by the address it really has.
    let socket = std::net::UdpSocket::bind(bind)
        .unwrap_or_else(|e| fail(&format!("cannot bind {bind}: {e}")));
    let bound = socket.local_addr().unwrap_or_else(|e| fail(&format!("local address: {e}")));
    // The bound address names the server by default: stable across restarts on a fixed port,
    // so a restarted server gets its grains back under consistent placement.
    let named = a.server_id.clone().or(config.server_id.clone());
    let named = match shard {
        Some(i) => named.map(|id| format!("{id}-{i}")),
        None => named,
    };
    let server_id = named.unwrap_or(bound.to_string());
    config.server_id = Some(server_id.clone());
    if let Some(c) = &a.cluster {
        config.cluster_id = c.clone();
    }
    if let Some(p) = a.priority {
        config.priority = p;
    }
    config.metadata.extend(a.meta.iter().map(|(k, v)| (k.as_str().into(), v.clone())));
    config.advertise =
        Some(a.advertise.clone().or(config.advertise.clone()).unwrap_or(bound.into()));
    config.peers.extend(a.peers.iter().cloned());
    if a.redis.is_some() {
        config.membership.redis = a.redis.clone();
    }
    let t = &mut config.transport;
    t.max_connections = a.max_connections.unwrap_or(t.max_connections);
    t.max_connections_per_ip = a.max_connections_per_ip.unwrap_or(t.max_connections_per_ip);
    let cluster = config.cluster_id.clone();
    let (storage, reminders) = match (a.state, &a.redis) {
        (StateWhere::Memory, _) => (Storage::memory(), Reminders::memory()),
        (StateWhere::Redis, Some(url)) => {
            let timeout = std::time::Duration::from_secs(2);
            let service = &config.service_id;
            let failed = |e: grainwire::persistence::StateError| -> ! {
                fail(&format!("--state redis: {e}"))
            };
            let wait = std::time::Duration::from_millis(500);
            let state = RedisStorage::new(url, &cluster, service, timeout)
                .unwrap_or_else(|e| failed(e))
                .replicas(a.state_replicas, wait);
            (
                Storage::custom(state),
                Reminders::redis(url, &cluster, service, timeout).unwrap_or_else(|e| failed(e)),
            )
        }
        (StateWhere::Redis, None) => fail("--state redis needs --redis URL"),
    };
    if a.state_replicas > 0 && a.state != StateWhere::Redis {
        fail("--state-replicas needs --state redis");
    }
    let keys: Vec<_> =
        a.key_files.iter().map(|f| keys::read_key(f).unwrap_or_else(|e| fail(&e))).collect();
    let protected = !keys.is_empty() || matches!(config.auth, AuthConfig::Tokens { .. });
    if !protected && (a.own_player_only || !a.banned.is_empty()) {
        fail("--own-player-only and --ban need --key-file (no identities without tokens)");
    }
    let mut builder = Server::builder(config).token_keys(keys).reminders(reminders);
    if !a.banned.is_empty() {
        let banned = a.banned.clone();
        builder =
            builder.approve(move |c| if banned.contains(&c.client_id) { Err(403) } else { Ok(()) });
    }
    for g in &a.grains {
        let mut host = game::host(g, &server_id, &storage).unwrap_or_else(|| {
            fail(&format!("unknown grain type {g}; known: {}", game::GRAIN_NAMES.join(",")))
        });
        if a.own_player_only && g == "player" {
            host = host.authorize(|call| {
                call.caller.server_id().is_some()
                    || matches!(call.key, GrainKey::Int(k) if call.caller.client_id() == Some(*k as u64))
            });
        }
        builder = builder.host(host);
    }
    let server = match builder.bind_socket(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    eprintln!(
        "server id {}, cluster {}, hosting {}{}, {}",
        server.server_id(),
        cluster,
        a.grains.join(","),
        a.redis.as_ref().map(|r| format!(", registered in {r}")).unwrap_or_default(),
        if protected { "connect tokens required" } else { "trusted network (no tokens)" }
    );
    server
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
