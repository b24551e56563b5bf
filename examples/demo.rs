//! grainwire in one process: three game servers hosting different grain types and one client
//! routing every call by their manifests and a strategy per grain type, over loopback UDP.
//! One server is stopped mid-run while calls continue, then comes back and gets its grains
//! back. Then a second client, given one seed, discovers the fleet from the servers and follows
//! it while a fourth server joins and leaves with calls running; and two clients that each know
//! one of two servers sharing a grain directory reach one activation per grain (redirects); and a
//! server requiring connect tokens refuses a stranger and serves a player, who may call only its
//! own grain. Also: an application error,
//! one-way calls, a grain type nobody hosts, concurrency and a statistics table. Exits 0.
//!
//! ```sh
//! cargo run --release --example demo
//! ```

#[path = "common/game.rs"]
#[allow(dead_code)] // GRAIN_NAMES is for game_server's --grains
mod game;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use game::{ChatView, ChatViewRef, Defeated, EchoRef, LobbyRef, PlayerRef, RoomRef};
use grainwire::auth::ConnectToken;
use grainwire::client::{ClientEvent, ConnectMode, ConsistentHash, RoundRobin};
use grainwire::persistence::{Reminders, Storage};
use grainwire::{CallError, Client, GrainKey, Server, ServerConfig};
use tokio::sync::broadcast;

/// A grain type no server hosts.
#[grainwire::grain]
trait Leaderboard {
    /// The top scores.
    async fn top(&self) -> Vec<u32>;
}

type Error = Box<dyn std::error::Error>;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Who hosts what.
const FLEET: [(&str, &[&str]); 3] =
    [("eu-1", &["player", "echo"]), ("eu-2", &["room", "echo"]), ("eu-3", &["player", "echo"])];

/// Where the fleet's players keep their state: this process's memory, shared by the demo's
/// servers (`game_server --state redis` keeps it in Redis).
static STATE: std::sync::LazyLock<Storage> = std::sync::LazyLock::new(Storage::memory);
/// And their reminders (a daily reward, set on joining).
static REMINDERS: std::sync::LazyLock<Reminders> = std::sync::LazyLock::new(Reminders::memory);

fn start(id: &str, grains: &[&str], addr: SocketAddr) -> Result<Server, Error> {
    let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
    let mut builder = Server::builder(config).reminders(REMINDERS.clone());
    for g in grains {
        builder = builder.host(game::host(g, id, &STATE).ok_or("unknown grain type")?);
    }
    Ok(builder.bind(addr)?)
}

/// Waits (at most 15 s) for an event matching `want`.
async fn wait_for(
    events: &mut broadcast::Receiver<ClientEvent>,
    want: impl Fn(&ClientEvent) -> bool,
) -> Result<ClientEvent, Error> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return Ok(e),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(Error::from(e)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait).await?
}

/// A chat view a player's client hosts: the lines a room pushes to it.
struct ChatLines(tokio::sync::mpsc::UnboundedSender<String>);

impl ChatView for ChatLines {
    async fn line(&mut self, text: String) {
        let _ = self.0.send(text);
    }
}

/// References as values and calls both ways, on two servers that know each other: the lobby
/// returns a room, the room keeps its players and calls them, a player grain calls its room
/// on the other server, and the room pushes its chat to the players' clients (observers),
/// dropping a viewer whose player closes the game (presence).
async fn calls_both_ways() -> Result<(), Error> {
    let a = start("play-1", &["player"], "127.0.0.1:0".parse()?)?;
    let b = start("play-2", &["room", "lobby"], "127.0.0.1:0".parse()?)?;
    a.set_peers([b.local_addr().into()]);
    b.set_peers([a.local_addr().into()]);
    let ann_client = Client::builder().servers([a.local_addr(), b.local_addr()]).connect().await?;
    let bob_client = Client::builder().servers([a.local_addr(), b.local_addr()]).connect().await?;
    let lobby: LobbyRef = ann_client.grain("main");
    let ann: PlayerRef = ann_client.grain("ann");
    // A reference as a result: callable at once. The room called ann's grain back.
    let room = lobby.find_room(ann.clone()).await?;
    let bob: PlayerRef = bob_client.grain("bob");
    let bob_room = lobby.find_room(bob.clone()).await?;
    // Values: equal, printable, and a room's result holds player references.
    let members = bob_room.enter(bob).await?;
    let same = bob_room == room;
    println!(
        "\nthe lobby (play-2) put ann and bob in {room} (the same: {same}); members {members:?}"
    );
    // Observers: each client hosts a chat view; the room pushes lines to it.
    let mut views = Vec::new();
    for c in [&ann_client, &bob_client] {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let view: ChatViewRef = c.observe(ChatLines(tx));
        c.grain::<RoomRef>(room.id().key.clone()).subscribe(view).await?;
        views.push(rx);
    }
    // The player grain (play-1) calls its room grain (play-2), which pushes to both clients.
    let n = ann.say("gg".into()).await?;
    for (who, rx) in ["ann", "bob"].iter().zip(&mut views) {
        let line = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        println!(
            "{who}'s client got a pushed line: {:?} (line {n} of {room})",
            line.ok_or("closed")?
        );
    }
    // Presence: bob closes the game; the room drops his viewer without polling.
    bob_client.disconnect().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats().sessions_told == 0 {
        if Instant::now() > deadline {
            return Err("the room never learned that bob left".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let n = ann.say("bob left".into()).await?;
    let line = tokio::time::timeout(Duration::from_secs(5), views[0].recv()).await?;
    println!("bob closes the game: the room is told (presence); line {n} goes to ann: {line:?}");
    // Time in grains: the room's round clock is a timer whose ticks are turns of the room.
    let clock_of = ann_client.grain::<RoomRef>(room.id().key.clone());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut clock = clock_of.clock().await?;
    while clock < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock = clock_of.clock().await?;
    }
    if clock < 1 {
        return Err("the room's clock never ticked".into());
    }
    println!("the room's round clock (a timer ticking every second, as turns): {clock} s");
    ann_client.disconnect().await;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// Where each player lives.
async fn placement(client: &Client, players: &[&str]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for p in players {
        out.insert(p.to_string(), client.grain::<PlayerRef>(*p).server().await?);
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut servers = Vec::new();
    for (id, grains) in FLEET {
        let s = start(id, grains, "127.0.0.1:0".parse()?)?;
        println!("server {id} on {} hosts {}", s.local_addr(), grains.join(", "));
        servers.push(Some(s));
    }
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(Server::local_addr).collect();

    // One client, connected to all three; players placed by consistent hashing (every client
    // agrees), echo calls spread round-robin.
    let client = Client::builder()
        .servers(addrs.clone())
        .mode(ConnectMode::Multi)
        .strategy(ConsistentHash)
        .strategy_for::<EchoRef>(RoundRobin)
        .connect()
        .await?;
    let mut events = client.events();
    let mut known = client.servers();
    known.sort_by(|a, b| a.id.cmp(&b.id));
    println!("\nthe client knows {} servers:", known.len());
    for s in known {
        let types: Vec<&str> = s.manifest.grains.iter().map(|g| &*g.name).collect();
        println!("  {:<5} {}  {}", s.id, s.addr, types.join(", "));
    }

    // Routing by manifest: only eu-2 hosts rooms.
    let lobby: RoomRef = client.grain("lobby");
    lobby.say("ann".into(), "hi".into()).await?;
    let n = lobby.say("bob".into(), "hello ann".into()).await?;
    println!("\nthe lobby (only eu-2 hosts rooms) has seen {n} lines: {:?}", lobby.recent().await?);
    // A stream: the room's log, read item by item (in order, each once, under flow control).
    let mut log = lobby.log(1);
    while let Some(line) = log.next().await {
        let (n, text) = line?;
        println!("  log line {n} (streamed): {text}");
    }
    // Nobody hosts leaderboards: a typed error, nothing is sent.
    match client.grain::<LeaderboardRef>(1).top().await {
        Err(CallError::UnknownGrainType) => {
            println!("leaderboard: nobody hosts it (UnknownGrainType)")
        }
        other => println!("leaderboard: unexpected {other:?}"),
    }

    // Routing by strategy: players by consistent placement over eu-1 and eu-3.
    let players = ["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal"];
    let before = placement(&client, &players).await?;
    println!("\nplayers by consistent placement (eu-1 and eu-3 host players):");
    for (p, s) in &before {
        println!("  {p} lives on {s}");
    }
    // Echo round-robin over all three.
    let mut spread: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..300u64 {
        let (v, server) = client.grain::<EchoRef>(i as i64).derive_at(i).await?;
        assert_eq!(v, i * 2 + 1);
        *spread.entry(server).or_default() += 1;
    }
    println!("300 echo calls, round-robin: {spread:?}");

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
    // 60 frames of position updates: sent once each, latest wins (no order with the reliable
    // calls, so the read waits until the last update is there).
    for frame in 1..=60u16 {
        ann.set_position(f32::from(frame), 0.0).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut at = ann.position().await?;
    for _ in 0..100 {
        if at == (60.0, 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        at = ann.position().await?;
    }
    println!("ann sent 60 position updates (#[sequenced]); the grain has the latest: {at:?}");

    // eu-3 stops while calls keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let load = {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p: PlayerRef = client.grain(players[(i % 8) as usize]);
                // A thousand echo grains: a client that called ever new keys would reach its
                // activation share on a server (10,000) on a fast machine, and be refused.
                let e: EchoRef = client.grain((i % 1000) as i64);
                for r in [p.server().await.map(drop), e.derive(i).await.map(drop)] {
                    let counter = if r.is_ok() { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = r {
                        let mut errors = errors.lock().unwrap_or_else(|p| p.into_inner());
                        *errors.entry(e.to_string()).or_default() += 1;
                    }
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A player living on eu-3 is hit: its health is persisted state.
    let on_eu3 = before.iter().find(|(_, s)| s.as_str() == "eu-3").map(|(p, _)| p.clone());
    let on_eu3 = on_eu3.ok_or("no player lives on eu-3")?;
    let hurt: PlayerRef = client.grain(on_eu3.as_str());
    let health = hurt.hit(25).await?;
    let eu3_addr = addrs[2];
    let eu3 = servers[2].take().ok_or("eu-3 runs")?;
    println!(
        "\nstopping eu-3 with calls in flight ({on_eu3}, who lives there, has {health} health) ..."
    );
    eu3.shutdown().await;
    let gone = wait_for(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await?;
    if let ClientEvent::Disconnected { server, reason, .. } = gone {
        println!("event: {} disconnected ({reason})", server.map_or("?".into(), |s| s.to_string()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = placement(&client, &players).await?;
    let moved: Vec<&String> = before.keys().filter(|p| before[*p] != during[*p]).collect();
    println!(
        "calls continue on eu-1 and eu-2: {} ok, {} failed so far; only eu-3's players moved: {moved:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    if before.iter().any(|(p, s)| s != "eu-3" && during[p] != *s) {
        return Err("a player moved although its server stayed".into());
    }
    // The drain wrote its state: the player's new activation (on eu-1) has it.
    let kept = hurt.hit(0).await?;
    println!(
        "{on_eu3} now lives on {} with {kept} health: its state moved with it",
        hurt.server().await?
    );
    if kept != health {
        return Err("a drained player's state was lost".into());
    }

    // eu-3 comes back on the same address with the same id: reconnected in the background.
    servers[2] = Some(start("eu-3", FLEET[2].1, eu3_addr)?);
    println!("\nrestarting eu-3 on {eu3_addr} ...");
    wait_for(
        &mut events,
        |e| matches!(e, ClientEvent::Connected { server, .. } if server.0.as_ref() == "eu-3"),
    )
    .await?;
    let after = placement(&client, &players).await?;
    println!(
        "event: eu-3 connected again; its players are back: {}",
        if after == before { "yes" } else { "NO" }
    );
    stop.store(true, Ordering::Relaxed);
    load.await?;
    println!(
        "during the whole episode: {} calls ok, {} failed {:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        errors.lock().unwrap_or_else(|p| p.into_inner())
    );
    if after != before {
        return Err("placement did not recover".into());
    }

    // A fleet that changes: a game client given one seed finds every server through it, and
    // follows as servers join and leave (eu-1 serves itself and its peers).
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(Server::local_addr).collect();
    let seed = servers[0].as_ref().ok_or("eu-1 runs")?;
    seed.set_peers(addrs[1..].iter().map(|a| (*a).into()));
    let follower = Client::builder().seeds([addrs[0]]).connect().await?;
    let mut follows = follower.events();
    let mut ids: Vec<String> = follower.servers().iter().map(|s| s.id.to_string()).collect();
    ids.sort();
    println!(
        "
a client given only eu-1 as its seed found {ids:?}"
    );
    let (ok2, failed2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop2 = Arc::new(AtomicBool::new(false));
    let load2 = {
        let (c, stop, ok, failed) = (follower.clone(), stop2.clone(), ok2.clone(), failed2.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let e: EchoRef = c.grain((i % 1000) as i64);
                let counter = if e.derive(i).await.is_ok() { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let eu4 = start("eu-4", &["player", "echo"], "127.0.0.1:0".parse()?)?;
    let with_eu4: Vec<_> = addrs[1..].iter().copied().chain([eu4.local_addr()]).collect();
    seed.set_peers(with_eu4.iter().map(|a| (*a).into()));
    let joined = |e: &ClientEvent| matches!(e, ClientEvent::Connected { server, .. } if server.0.as_ref() == "eu-4");
    wait_for(&mut follows, joined).await?;
    println!(
        "eu-4 starts and joins the fleet: the client connected it ({} calls ok so far)",
        ok2.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    seed.set_peers(addrs[1..].iter().map(|a| (*a).into()));
    eu4.shutdown().await;
    let left = |e: &ClientEvent| matches!(e, ClientEvent::Disconnected { server: Some(s), .. } if s.0.as_ref() == "eu-4");
    wait_for(&mut follows, left).await?;
    stop2.store(true, Ordering::Relaxed);
    load2.await?;
    let served: u64 = follower.stats().total;
    println!(
        "eu-4 leaves: drained and dropped; {} calls ok, {} failed while the fleet changed ({served} in all)",
        ok2.load(Ordering::Relaxed),
        failed2.load(Ordering::Relaxed)
    );
    if failed2.load(Ordering::Relaxed) > 0 {
        return Err("a call failed while a server joined and left".into());
    }
    follower.disconnect().await;

    // One activation per grain across the fleet: two servers share a grain directory; two
    // clients that each know only one of them call the same players. The first call
    // activates a player where it lands; the other client's call is redirected there.
    let directory: Arc<dyn grainwire::directory::GrainDirectory> =
        Arc::new(grainwire::directory::MemoryDirectory::new());
    let mut pair = Vec::new();
    for id in ["dir-1", "dir-2"] {
        let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
        let host = game::host("player", id, &Storage::memory()).ok_or("player")?;
        let s = Server::builder(config)
            .directory(directory.clone())
            .host(host)
            .bind("127.0.0.1:0".parse()?)?;
        pair.push(s);
    }
    let only = |i: usize| Client::builder().server(pair[i].local_addr()).connect();
    let (first, second) = (only(0).await?, only(1).await?);
    let mut same = 0;
    for p in &players {
        let a: PlayerRef = first.grain(*p);
        let b: PlayerRef = second.grain(*p);
        let (at_a, at_b) = (a.server().await?, b.server().await?);
        if at_a == at_b {
            same += 1;
        }
    }
    println!(
        "\ntwo clients, each knowing one of two servers, called {} players: {same} answered from \
         one activation each ({} activations in all; the second client's calls were redirected \
         to dir-1 and it connected that server)",
        players.len(),
        pair.iter().map(Server::activation_count).sum::<usize>()
    );
    if same != players.len() {
        return Err("a grain was activated twice".into());
    }
    first.disconnect().await;
    second.disconnect().await;
    for s in pair {
        s.shutdown().await;
    }
    calls_both_ways().await?;

    // Players on the open internet: a server that requires connect tokens. A stranger without
    // one is refused with the reason; a player whose backend issued it a token is served over
    // encrypted packets, and may call only its own player grain (its token's user data).
    let key = grainwire::auth::generate_key(1)?;
    let guarded = {
        let config = ServerConfig { server_id: Some("secure-1".into()), ..ServerConfig::default() };
        let host = game::host("player", "secure-1", &Storage::memory()).ok_or("player")?.authorize(
            |call| matches!(call.key, GrainKey::Str(k) if k.as_bytes() == call.caller.user_data()),
        );
        Server::builder(config).token_keys([key.clone()]).host(host).bind("127.0.0.1:0".parse()?)?
    };
    let at = guarded.local_addr();
    match Client::builder().server(at).connect().await {
        Ok(_) => return Err("a stranger without a token was let in".into()),
        Err(e) => println!(
            "
a stranger without a token: {}",
            e.rejection().ok_or("no reason")?
        ),
    }
    let token = ConnectToken::issue(&key, 1001, &[at.into()], Duration::from_secs(60), b"ann")?;
    let player = Client::builder().server(at).token(token).connect().await?;
    let me: PlayerRef = player.grain("ann");
    me.join("Ann".into()).await?;
    let other = player.grain::<PlayerRef>("bob").hit(50).await;
    println!(
        "ann, with a token from the backend: joined secure-1 (packets encrypted); hitting bob's \
         grain: {}",
        match other {
            Err(CallError::Unauthorized) => "refused, not ann's grain".to_string(),
            other => return Err(format!("another player's grain answered: {other:?}").into()),
        }
    );
    player.disconnect().await;
    guarded.shutdown().await;

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
    println!(
        "32,000 calls, 64 in flight over 64 grains and 3 servers: {:.0} calls/s",
        32_000.0 / t.elapsed().as_secs_f64()
    );

    println!(
        "\n{:<6} {:>8} {:>10} {:>12} {:>9}",
        "server", "pending", "rtt µs", "latency µs", "types"
    );
    let mut known = client.servers();
    known.sort_by(|a, b| a.id.cmp(&b.id));
    for s in known {
        println!(
            "{:<6} {:>8} {:>10.1} {:>12.1} {:>9}",
            s.id,
            s.pending,
            us(s.rtt),
            us(s.latency),
            s.grain_types
        );
    }
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

    client.disconnect().await;
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
    println!("\nshut down cleanly");
    Ok(())
}
