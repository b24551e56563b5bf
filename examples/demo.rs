//! grainwire in one process: a game server hosting three grain types and a client calling
//! them over loopback UDP, with an application error, a one-way call, a missing grain type,
//! concurrency, and a statistics table. Exits 0.
//!
//! ```sh
//! cargo run --release --example demo
//! ```

#[path = "common/game.rs"]
mod game;

use std::time::{Duration, Instant};

use game::{Defeated, EchoRef, PlayerRef, RoomRef};
use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig};

/// A grain type the server does not host.
#[grainwire::grain]
trait Leaderboard {
    /// The top scores.
    async fn top(&self) -> Vec<u32>;
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Server::builder(ServerConfig {
        server_id: Some("demo-1".into()),
        ..ServerConfig::default()
    });
    for name in game::GRAIN_NAMES {
        builder = builder.host(game::host(name).ok_or("unknown grain type")?);
    }
    let server = builder.bind("127.0.0.1:0".parse()?)?;
    println!("server {} listening on {}", server.server_id(), server.local_addr());

    let client = Client::connect(server.local_addr(), ClientConfig::default()).await?;
    let manifest = client.manifest().ok_or("no manifest")?;
    println!("client connected to {}; it hosts:", manifest.server_id);
    for g in &manifest.grains {
        println!("  {:<8} v{}  contract {:016x}", g.name, g.version, g.contract);
    }

    // A player: calls, an application error, one-way moves.
    let ann: PlayerRef = client.grain("ann");
    println!("\nann joins at level {}", ann.join("Ann".into()).await?);
    println!("ann is hit for 30: {} health left", ann.hit(30).await?);
    match ann.hit(500).await {
        Err(CallError::Application(Defeated { overkill })) => {
            println!("ann is hit for 500: defeated ({overkill} overkill)")
        }
        other => println!("unexpected: {other:?}"),
    }
    for _ in 0..3 {
        ann.move_by(1.5, -0.5).await?; // one-way: no response, in order with ann's other calls
    }
    println!("ann moved three times, now at {:?}", ann.position().await?);

    // A chat room.
    let lobby: RoomRef = client.grain("lobby");
    lobby.say("ann".into(), "hi".into()).await?;
    let n = lobby.say("bob".into(), "hello ann".into()).await?;
    println!("\nthe lobby has seen {n} lines: {:?}", lobby.recent().await?);

    // A grain type the server does not host: a typed error, before anything is sent.
    match client.grain::<LeaderboardRef>(1).top().await {
        Err(CallError::UnknownGrainType) => {
            println!("leaderboard: not hosted here (UnknownGrainType)")
        }
        other => println!("leaderboard: unexpected {other:?}"),
    }

    // One call at a time, then 64 at once over 64 grains.
    let echo: EchoRef = client.grain(0);
    let mut rtts = Vec::new();
    for i in 0..2000u64 {
        let t = Instant::now();
        assert_eq!(echo.derive(i).await?, i * 2 + 1);
        rtts.push(t.elapsed());
    }
    rtts.sort();
    println!(
        "\n2000 calls one at a time: p50 {:.1} µs, p99 {:.1} µs",
        us(rtts[1000]),
        us(rtts[1980])
    );
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..64u64 {
        let e: EchoRef = client.grain(k as i64);
        tasks.spawn(async move {
            for i in 0..500u64 {
                let n = k * 1_000_000 + i;
                if e.derive(n).await? != n * 2 + 1 {
                    return Err(CallError::BadRequest);
                }
            }
            Ok::<_, CallError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let took = t.elapsed();
    println!(
        "32,000 calls, 64 in flight over 64 grains: {:.0} calls/s",
        32_000.0 / took.as_secs_f64()
    );
    println!("the server holds {} activations", server.activation_count());

    let s = client.stats();
    println!(
        "\n{:<10} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "calls", "total", "errors", "timeouts", "pending", "ewma µs", "p50 µs", "p99 µs"
    );
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>8} {:>9.1} {:>9.1} {:>9.1}",
        "client",
        s.total,
        s.errors,
        s.timeouts,
        s.pending,
        us(s.latency_ewma),
        us(s.p50),
        us(s.p99)
    );
    if let Some(t) = client.transport_stats() {
        println!(
            "\ntransport: rtt {:.1} µs, {} datagrams out / {} in, {} bytes out, {} retransmitted, {:.1}% loss",
            us(t.rtt),
            t.packets_sent,
            t.packets_received,
            t.bytes_sent,
            t.retransmissions,
            t.loss * 100.0
        );
    }

    client.disconnect().await;
    server.shutdown().await;
    println!("\nshut down cleanly");
    Ok(())
}
