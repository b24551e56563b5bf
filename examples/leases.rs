//! What keeping grains' leases in a Redis grain directory costs: claims `--grains` grains
//! through `directory::Leases` (what a server does before activating them), then lets it renew
//! them for `--secs` seconds, through a proxy that delays every byte `--delay-ms` each way
//! (Redis "that far away"; 0: no proxy). Prints one JSON line: how long the claims took, the
//! renewal requests and bytes per third of a lease (the renewal period), failures, grains lost,
//! and what the leases cost Redis in memory.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release --example leases -- --redis redis://127.0.0.1:6390/ --grains 100000 --delay-ms 5
//! cargo run --release --example leases -- --redis redis://127.0.0.1:6390/ --key-bytes 1024
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grainwire::directory::{Claim, Leases, Owner, RedisDirectory};
use grainwire::{GrainId, GrainKey, GrainType, ServerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Lease renewal against Redis, directly or through a delaying proxy; prints one JSON line.
#[derive(clap::Parser, Debug)]
#[command(name = "leases")]
struct Args {
    /// The Redis to keep the leases in.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// Grains to claim and keep.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    grains: u64,
    /// Bytes of each grain's string key (0: integer keys).
    #[arg(long, value_name = "N", default_value_t = 0)]
    key_bytes: usize,
    /// Delay each way between the leases and Redis, in milliseconds (0: no proxy).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// The lease, in seconds (renewed every third of it).
    #[arg(long, value_name = "S", default_value_t = 30)]
    lease: u64,
    /// How long to renew, in seconds.
    #[arg(long, value_name = "S", default_value_t = 35)]
    secs: u64,
}

/// Bytes the proxy forwarded each way.
#[derive(Default)]
struct Traffic {
    up: AtomicU64,
    down: AtomicU64,
}

/// Copies `from` to `to`, each chunk `delay` after it was read (order kept, throughput not
/// limited), counting bytes into `count`.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    count: Arc<Traffic>,
    up: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
        let c = if up { &count.up } else { &count.down };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    drop(tx);
    let _ = writer.await;
}

/// A TCP proxy on loopback to `target`, delaying every byte `delay` each way.
async fn proxy(
    target: SocketAddr,
    delay: Duration,
    count: Arc<Traffic>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let at = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delayed(cr, sw, delay, count.clone(), true));
            tokio::spawn(delayed(sr, cw, delay, count.clone(), false));
        }
    });
    Ok(at)
}

async fn used_memory(url: &str) -> u64 {
    let Ok(client) = redis::Client::open(url) else { return 0 };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else { return 0 };
    let info: String =
        redis::cmd("INFO").arg("memory").query_async(&mut con).await.unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn grain(i: u64, key_bytes: usize) -> GrainId {
    let ty = GrainType::of("Player");
    if key_bytes == 0 {
        return GrainId::new(ty, i as i64);
    }
    let text = format!("{i:0width$}", width = key_bytes);
    GrainId { ty, key: GrainKey::Str(text.into()) }
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let traffic = Arc::new(Traffic::default());
    let url = if args.delay_ms > 0 {
        let target: SocketAddr = args
            .redis
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("--redis redis://HOST:PORT/ with an IP address");
        let at = proxy(target, Duration::from_millis(args.delay_ms), traffic.clone())
            .await
            .expect("the proxy binds");
        format!("redis://{at}/")
    } else {
        args.redis.clone()
    };
    let cluster = format!("leases{}", std::process::id());
    let lease = Duration::from_secs(args.lease);
    let timeout = Duration::from_secs(2);
    let dir = RedisDirectory::new(&url, &cluster, "game", timeout).expect("a Redis URL");
    let me = Owner { server: ServerId::new("bench"), endpoint: "127.0.0.1:7000".parse().unwrap() };
    let leases = Arc::new(Leases::new(Arc::new(dir), me, lease, timeout));
    let memory_before = used_memory(&args.redis).await;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut failed_claims = 0u64;
    for i in 0..args.grains {
        if set.len() >= 256
            && let Some(Ok(false)) = set.join_next().await
        {
            failed_claims += 1;
        }
        let (leases, g) = (leases.clone(), grain(i, args.key_bytes));
        set.spawn(async move { matches!(leases.claim(&g).await, Ok(Claim::Won)) });
    }
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failed_claims += 1;
        }
    }
    let claim_secs = started.elapsed().as_secs_f64();
    let memory_after = used_memory(&args.redis).await;
    let before = (traffic.up.load(Ordering::Relaxed), traffic.down.load(Ordering::Relaxed));
    let lost = Arc::new(AtomicU64::new(0));
    let seen = lost.clone();
    let task = tokio::spawn(leases.clone().run(move |g| {
        seen.fetch_add(g.len() as u64, Ordering::Relaxed);
    }));
    let renewing = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    task.abort();
    let secs = renewing.elapsed().as_secs_f64();
    let stats = leases.stats();
    let per_round = |n: u64| n as f64 * (lease.as_secs_f64() / 3.0) / secs;
    let up = traffic.up.load(Ordering::Relaxed) - before.0;
    let down = traffic.down.load(Ordering::Relaxed) - before.1;
    println!(
        "{{\"grains\":{},\"key_bytes\":{},\"delay_ms\":{},\"claim_secs\":{:.2},\"failed_claims\":{},\"redis_memory_mb\":{:.1},\"renewing_secs\":{:.1},\"requests_per_round\":{:.0},\"renewals_per_round\":{:.0},\"failed_requests\":{},\"lost\":{},\"expired\":{},\"held\":{},\"proxy_mb_per_round\":{:.2}}}",
        args.grains,
        args.key_bytes,
        args.delay_ms,
        claim_secs,
        failed_claims,
        memory_after.saturating_sub(memory_before) as f64 / (1 << 20) as f64,
        secs,
        per_round(stats.requests),
        per_round(stats.renewals),
        stats.failed_requests,
        lost.load(Ordering::Relaxed),
        stats.expired,
        stats.held,
        per_round(up + down) / (1 << 20) as f64,
    );
    // Clean up what the run left in Redis.
    if let Ok(client) = redis::Client::open(args.redis.as_str())
        && let Ok(mut con) = client.get_multiplexed_async_connection().await
    {
        let pattern = format!("grainwire:{{{cluster}}}:*");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(&pattern).query_async(&mut con).await.unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut con).await;
        }
    }
}
