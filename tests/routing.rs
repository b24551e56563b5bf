//! One client, many servers, over the simulated network: routing by manifest, strategy and
//! affinity; placement agreement and movement; manifest updates; health, failover, idempotent
//! retries and reconnection; the connection modes; client events.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::client::{
    Affinity, ClientError, ClientEvent, ConnectMode, ConsistentHash, LowestLatency, MetaValue,
    Removal, RoundRobin, Tiered,
};
use grainwire::error::DisconnectReason;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig, ServerId};
use tokio::sync::broadcast;

mod support;
use support::{until, wait_until};

#[grainwire::grain]
trait Echo {
    /// Records call `n` on this server; returns the server's id.
    async fn hit(&mut self, n: u64) -> String;
    /// The same, safe to run twice.
    #[idempotent]
    async fn peek(&mut self, n: u64) -> String;
    /// Waits `ms` (virtual time), then records `n`.
    async fn slow(&mut self, n: u64, ms: u64) -> String;
    /// The same, idempotent.
    #[idempotent]
    async fn slow_peek(&mut self, n: u64, ms: u64) -> String;
}

#[grainwire::grain]
trait Lobby {
    /// Returns the server's id.
    async fn hit(&mut self, n: u64) -> String;
}

/// Every execution: (server, call number).
#[derive(Default)]
struct Log {
    runs: Mutex<Vec<(String, u64)>>,
    /// When each `Echo` call started running: (server, call number, virtual time).
    started: Mutex<Vec<(String, u64, tokio::time::Instant)>>,
}

impl Log {
    /// Where and when call `n` started.
    fn started(&self, n: u64) -> Vec<(String, tokio::time::Instant)> {
        let started = self.started.lock().unwrap();
        started.iter().filter(|(_, m, _)| *m == n).map(|(s, _, t)| (s.clone(), *t)).collect()
    }

    fn runs_of(&self, n: u64) -> usize {
        self.runs.lock().unwrap().iter().filter(|(_, m)| *m == n).count()
    }
}

struct EchoGrain {
    server: String,
    log: Arc<Log>,
}

impl EchoGrain {
    fn start(&self, n: u64) {
        let now = tokio::time::Instant::now();
        self.log.started.lock().unwrap().push((self.server.clone(), n, now));
    }

    fn record(&self, n: u64) -> String {
        self.log.runs.lock().unwrap().push((self.server.clone(), n));
        self.server.clone()
    }
}

impl Echo for EchoGrain {
    async fn hit(&mut self, n: u64) -> String {
        self.start(n);
        self.record(n)
    }
    async fn peek(&mut self, n: u64) -> String {
        self.start(n);
        self.record(n)
    }
    async fn slow(&mut self, n: u64, ms: u64) -> String {
        self.start(n);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.record(n)
    }
    async fn slow_peek(&mut self, n: u64, ms: u64) -> String {
        self.start(n);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.record(n)
    }
}

struct LobbyGrain {
    server: String,
}

impl Lobby for LobbyGrain {
    async fn hit(&mut self, _n: u64) -> String {
        self.server.clone()
    }
}

/// Which grain types a server hosts (registered but not hosted: `Lobby` off).
#[derive(Clone, Copy, PartialEq)]
enum Hosts {
    Echo,
    Lobby,
    Both,
    EchoLobbyOff,
}

/// Servers at 10.0.0.{1..}:7000 on one simulated network, named `s0`, `s1`, ...
struct Fleet {
    net: SimNetwork,
    log: Arc<Log>,
    servers: Vec<Option<Server>>,
    hosts: Vec<Hosts>,
    /// Placement weight per server (default 1).
    weights: Vec<u32>,
}

fn server_addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7000", i + 1).parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    format!("10.0.1.{}:9000", i + 1).parse().unwrap()
}

fn name(i: usize) -> String {
    format!("s{i}")
}

impl Fleet {
    fn new(net: SimNetwork, hosts: &[Hosts]) -> Self {
        Self::weighted(net, hosts, &vec![1; hosts.len()])
    }

    fn weighted(net: SimNetwork, hosts: &[Hosts], weights: &[u32]) -> Self {
        let mut f = Self {
            net,
            log: Arc::default(),
            servers: Vec::new(),
            hosts: hosts.to_vec(),
            weights: weights.to_vec(),
        };
        for i in 0..hosts.len() {
            let s = f.bind(i).expect("bind");
            f.servers.push(Some(s));
        }
        f
    }

    fn bind(&self, i: usize) -> Option<Server> {
        let config = ServerConfig {
            server_id: Some(name(i)),
            weight: self.weights[i],
            ..ServerConfig::default()
        };
        let (log, server) = (self.log.clone(), name(i));
        let echo = Echo::host(move |_| EchoGrain { server: server.clone(), log: log.clone() });
        let server = name(i);
        let lobby = Lobby::host(move |_| LobbyGrain { server: server.clone() });
        let b = Server::builder(config);
        let b = match self.hosts[i] {
            Hosts::Echo => b.host(echo),
            Hosts::Lobby => b.host(lobby),
            Hosts::Both => b.host(echo).host(lobby),
            Hosts::EchoLobbyOff => b.host(echo).register(lobby),
        };
        b.bind_sim(&self.net, server_addr(i)).ok()
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        (0..self.servers.len()).map(server_addr).collect()
    }

    /// The server's process dies (SIGKILL): its socket closes at once, so datagrams to it are
    /// lost unanswered, and its address is free.
    fn kill(&mut self, i: usize) {
        self.net.kill(server_addr(i));
        self.servers[i] = None;
    }

    /// It comes back on the same address with the same id.
    fn restart(&mut self, i: usize) {
        let s = self.bind(i).unwrap_or_else(|| panic!("could not rebind {}", server_addr(i)));
        self.servers[i] = Some(s);
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().unwrap()
    }

    async fn client(&self, n: usize, mode: ConnectMode, strategy: &str) -> Client {
        let config = ClientConfig {
            seed: Some(n as u64 + 1),
            transport: grainwire::TransportConfig {
                // An address that does not answer costs this long in single mode.
                handshake_timeout: Duration::from_secs(1),
                ..grainwire::TransportConfig::default()
            },
            ..ClientConfig::default()
        };
        let b = Client::builder().config(config).servers(self.addrs()).mode(mode);
        let b = match strategy {
            "rr" => b.strategy(RoundRobin),
            "ll" => b.strategy(LowestLatency),
            _ => b.strategy(ConsistentHash),
        };
        b.connect_sim(&self.net, client_addr(n)).await.unwrap()
    }
}

fn clean() -> SimNetwork {
    SimNetwork::new(
        1,
        SimConfig {
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            ..SimConfig::default()
        },
    )
}

/// Every link 2 ms, no jitter: a frame that leaves when it should arrives at a known instant.
const HOP: Duration = Duration::from_millis(2);

fn fixed() -> SimNetwork {
    SimNetwork::new(1, SimConfig { delay: HOP, ..SimConfig::default() })
}

fn connected(i: usize) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Connected { server, .. } if server.0.as_ref() == name(i))
}

fn disconnected(i: usize) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Disconnected { server: Some(server), .. } if server.0.as_ref() == name(i))
}

/// Where each of `keys` goes (the server that answered).
async fn placement(client: &Client, keys: std::ops::Range<i64>) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    for k in keys {
        let e: EchoRef = client.grain(k);
        out.insert(k, e.hit(k as u64).await.unwrap());
    }
    out
}

fn counts(p: &BTreeMap<i64, String>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for s in p.values() {
        *c.entry(s.clone()).or_default() += 1;
    }
    c
}

#[tokio::test(start_paused = true)]
async fn a_type_hosted_only_on_one_server_always_goes_there() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo, Hosts::Both, Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    assert_eq!(client.servers().len(), 3);
    for k in 0..60 {
        let l: LobbyRef = client.grain(k);
        assert_eq!(l.hit(k as u64).await.unwrap(), "s1");
    }
    // Echo is everywhere: round-robin spreads it evenly.
    let c = counts(&placement(&client, 0..90).await);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), [30, 30, 30], "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn consistent_placement_agrees_across_clients_and_spreads() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo; 5]);
    let a = fleet.client(0, ConnectMode::Multi, "ch").await;
    let b = fleet.client(1, ConnectMode::Multi, "ch").await;
    let pa = placement(&a, 0..300).await;
    let pb = placement(&b, 0..300).await;
    assert_eq!(pa, pb, "two independent clients send every grain to the same server");
    let c = counts(&pa);
    assert_eq!(c.len(), 5, "{c:?}");
    assert!(c.values().all(|&n| (35..=85).contains(&n)), "{c:?}");
    // Calling again goes to the same place (the grain's activation lives there).
    assert_eq!(placement(&a, 0..300).await, pa);
}

#[tokio::test(start_paused = true)]
async fn lowest_latency_avoids_a_slow_server_without_herding() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo; 3]);
    // s0 is far away: 40 ms each way instead of 2.
    let far = SimConfig { delay: Duration::from_millis(40), ..SimConfig::default() };
    fleet.net.set_link(client_addr(0), server_addr(0), far.clone());
    fleet.net.set_link(server_addr(0), client_addr(0), far);
    let client = fleet.client(0, ConnectMode::Multi, "ll").await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let e: EchoRef = client.grain(t as i64);
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..50 {
                got.push(e.hit(t * 100 + i).await.unwrap());
            }
            got
        });
    }
    let mut c: HashMap<String, usize> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        for s in r.unwrap() {
            *c.entry(s).or_default() += 1;
        }
    }
    let (slow, a, b) = (c.get("s0").copied().unwrap_or(0), c["s1"], c["s2"]);
    assert!(slow < 400 / 20, "the slow server got {slow} of 400: {c:?}");
    assert!(a.abs_diff(b) < 400 / 4, "the fast servers share the load: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn affinity_required_and_preferred() {
    let mut fleet = Fleet::new(clean(), &[Hosts::Echo, Hosts::Echo, Hosts::Both]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let s2 = ServerId::new("s2");
    for k in 0..20i64 {
        let e: EchoRef = client.grain(k);
        assert_eq!(e.require(&s2).hit(1).await.unwrap(), "s2");
        assert_eq!(e.prefer(&s2).hit(1).await.unwrap(), "s2");
        let l: LobbyRef = client.grain(k);
        // Required on a server that does not host the type.
        let r = l.require(&ServerId::new("s0")).hit(1).await;
        assert!(
            matches!(r, Err(CallError::ServerUnavailable(ref s)) if s.0.as_ref() == "s0"),
            "{r:?}"
        );
    }
    let mut events = client.events();
    fleet.kill(2);
    until(&mut events, disconnected(2)).await;
    let plain = placement(&client, 0..20).await;
    for k in 0..20i64 {
        let e: EchoRef = client.grain(k);
        let r = e.require(&s2).hit(1).await;
        assert!(matches!(r, Err(CallError::ServerUnavailable(_))), "{r:?}");
        // Preferred falls back to the strategy's choice.
        assert_eq!(e.prefer(&s2).hit(1).await.unwrap(), plain[&k]);
        assert_eq!(e.with_affinity(Affinity::None).hit(1).await.unwrap(), plain[&k]);
    }
}

#[tokio::test(start_paused = true)]
async fn removing_one_of_ten_servers_moves_only_its_grains_and_it_gets_them_back() {
    let mut fleet = Fleet::new(clean(), &[Hosts::Echo; 10]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let mut events = client.events();
    let before = placement(&client, 0..1000).await;
    fleet.kill(3);
    let t0 = tokio::time::Instant::now();
    until(&mut events, disconnected(3)).await;
    // Judged dead by silence, well before the transport's idle timeout (10 s).
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "detected after {took:?}");
    let during = placement(&client, 0..1000).await;
    let mut moved = 0;
    for (k, s) in &before {
        if s == "s3" {
            assert_ne!(during[k], "s3");
            moved += 1;
        } else {
            assert_eq!(&during[k], s, "grain {k} moved although its server stayed");
        }
    }
    let share = moved as f64 / before.len() as f64;
    println!("removing 1 of 10 servers moved {:.1} % of 1000 grains (all its own)", share * 100.0);
    assert!((0.05..0.15).contains(&share), "{share}");
    // It returns (same id): reconnected in the background, it gets exactly its grains back.
    fleet.restart(3);
    until(&mut events, connected(3)).await;
    assert_eq!(placement(&client, 0..1000).await, before);
}

#[tokio::test(start_paused = true)]
async fn a_manifest_update_reroutes_at_once() {
    let fleet = Fleet::new(clean(), &[Hosts::EchoLobbyOff, Hosts::Both]);
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    let mut events = client.events();
    for k in 0..10 {
        assert_eq!(client.grain::<LobbyRef>(k).hit(0).await.unwrap(), "s1");
    }
    // s0 starts hosting Lobby, s1 stops: every client is told, routing follows.
    assert!(fleet.server(0).set_hosting::<LobbyRef>(true).unwrap());
    until(&mut events, |e| matches!(e, ClientEvent::ManifestChanged { .. })).await;
    assert!(fleet.server(1).set_hosting::<LobbyRef>(false).unwrap());
    assert!(!fleet.server(1).set_hosting::<LobbyRef>(false).unwrap(), "no change");
    until(
        &mut events,
        |e| matches!(e, ClientEvent::ManifestChanged { server, .. } if server.0.as_ref() == "s1"),
    )
    .await;
    for k in 0..10 {
        assert_eq!(client.grain::<LobbyRef>(k).hit(0).await.unwrap(), "s0");
    }
    let mut hosted: Vec<_> =
        client.servers().iter().map(|s| (s.id.0.to_string(), s.grain_types)).collect();
    hosted.sort();
    assert_eq!(hosted, [("s0".to_string(), 2), ("s1".to_string(), 1)]);
    // Not registered at all: a typed error.
    assert!(fleet.server(0).set_hosting_type(grainwire::GrainType::of("Nope"), true).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_call_racing_a_manifest_change_is_sent_elsewhere() {
    let fleet = Fleet::new(clean(), &[Hosts::Both, Hosts::Both]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    // Wherever grain 1 is placed, that server stops hosting Lobby while a call is on its way.
    let l: LobbyRef = client.grain(1);
    let first = l.hit(0).await.unwrap();
    let i = if first == "s0" { 0 } else { 1 };
    let call = tokio::spawn(async move { l.hit(1).await });
    // The call is queued; the server turns the type off before it arrives.
    fleet.server(i).set_hosting::<LobbyRef>(false).unwrap();
    let answered = call.await.unwrap().unwrap();
    assert_eq!(answered, name(1 - i), "answered UnknownGrainType there, sent once more");
}

#[tokio::test(start_paused = true)]
async fn a_dead_servers_calls_fail_at_once_and_idempotent_ones_go_elsewhere() {
    let mut fleet = Fleet::new(clean(), &[Hosts::Echo, Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    let mut events = client.events();
    // A plain and an idempotent long call on each server (preferred: the idempotent one may
    // go elsewhere when its server dies).
    let e: EchoRef = client.grain(1);
    let e = e.with_timeout(Duration::from_secs(60));
    let (s0, s1) = (ServerId::new("s0"), ServerId::new("s1"));
    let mut plain = Vec::new();
    let mut idem = Vec::new();
    for (n, server) in [(0u64, &s0), (1, &s1)] {
        let e = e.prefer(server);
        plain.push(tokio::spawn(async move { (n, e.slow(n, 10_000).await) }));
    }
    for (n, server) in [(2u64, &s0), (3, &s1)] {
        let e = e.prefer(server);
        idem.push(tokio::spawn(async move { (n, e.slow_peek(n, 10_000).await) }));
    }
    // Once all four reached their servers (one runs on each, one waits behind it), s0 dies.
    let reached = || (0..2).all(|i| fleet.server(i).stats().pending_calls == 2);
    wait_until("the four calls on their servers", Duration::from_secs(1), reached).await;
    let t0 = tokio::time::Instant::now();
    fleet.kill(0);
    until(&mut events, disconnected(0)).await;
    let mut lost = 0;
    for t in plain {
        let (n, r) = t.await.unwrap();
        match r {
            Ok(s) => assert_eq!(s, "s1", "call {n}"),
            Err(CallError::Disconnected(DisconnectReason::Timeout)) => {
                lost += 1;
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "failed at once, not at its deadline"
                );
            }
            Err(e) => panic!("call {n}: {e}"),
        }
    }
    assert_eq!(lost, 1, "the plain call on s0 fails, the one on s1 completes");
    for t in idem {
        let (n, r) = t.await.unwrap();
        assert_eq!(r.unwrap(), "s1", "idempotent call {n} completes, on the survivor");
    }
    // New calls go to the survivor at once.
    for n in 10..20 {
        assert_eq!(e.hit(n).await.unwrap(), "s1");
    }
}

#[tokio::test(start_paused = true)]
async fn failover_under_loss_every_call_has_exactly_one_outcome() {
    // Three seeds, or `GRAINWIRE_SEEDS` of them for a longer soak.
    let n = std::env::var("GRAINWIRE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3u64);
    for seed in 11..11 + n {
        let net = SimNetwork::new(seed, SimConfig::default());
        let mut fleet = Fleet::new(net, &[Hosts::Echo; 3]);
        let config = ClientConfig {
            seed: Some(seed),
            default_timeout: Duration::from_secs(4),
            ..ClientConfig::default()
        };
        let client = Client::builder()
            .config(config)
            .servers(fleet.addrs())
            .connect_sim(&fleet.net, client_addr(0))
            .await
            .unwrap();
        fleet.net.set_config(SimConfig {
            loss: 0.1,
            duplicate: 0.02,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            reorder: 0.05,
            reorder_delay: Duration::from_millis(5),
            ..SimConfig::default()
        });
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..30i64 {
            let e: EchoRef = client.grain(g);
            tasks.spawn(async move {
                let mut out = Vec::new();
                for i in 0..20u64 {
                    let n = g as u64 * 1000 + i;
                    // Half the grains start with a plain call, half with an idempotent one.
                    let idempotent = (i + g as u64) % 2 == 1;
                    let r = if idempotent { e.slow_peek(n, 20).await } else { e.slow(n, 20).await };
                    out.push((n, idempotent, r));
                }
                out
            });
        }
        // Mid-load (a sixth of the calls ran), s1 dies.
        let mid = || fleet.log.runs.lock().unwrap().len() >= 100;
        wait_until("a sixth of the calls ran", Duration::from_secs(10), mid).await;
        fleet.kill(1);
        let mut results = Vec::new();
        let all = async {
            while let Some(r) = tasks.join_next().await {
                results.extend(r.unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(120), all).await.expect("no call hangs");
        assert_eq!(results.len(), 600);
        let (mut ok, mut lost) = (0, 0);
        for (n, idempotent, r) in &results {
            let (n, idempotent) = (*n, *idempotent);
            let runs = fleet.log.runs_of(n);
            match r {
                Ok(_) => {
                    ok += 1;
                    assert!(
                        runs >= 1 && (idempotent || runs == 1),
                        "seed {seed}: call {n} ran {runs}x"
                    );
                }
                Err(CallError::Disconnected(_) | CallError::Timeout) => {
                    lost += 1;
                    assert!(runs <= 1, "seed {seed}: call {n} ran {runs}x");
                }
                Err(e) => panic!("seed {seed}: call {n}: {e}"),
            }
        }
        println!("seed {seed}: {ok} ok, {lost} lost to the dead server");
        assert!(ok >= 570, "seed {seed}: later calls succeed on the survivors ({ok} ok)");
        assert!(client.servers().iter().all(|s| s.id.0.as_ref() != "s1"));
        client.disconnect().await;
    }
}

#[tokio::test(start_paused = true)]
async fn single_mode_takes_the_first_reachable_server_and_fails_over_in_order() {
    let mut fleet = Fleet::new(clean(), &[Hosts::Echo; 3]);
    fleet.kill(0);
    let client = fleet.client(0, ConnectMode::Single, "ch").await;
    assert_eq!(client.servers().len(), 1);
    assert_eq!(client.server_id().unwrap().0.as_ref(), "s1");
    let mut events = client.events();
    fleet.kill(1);
    until(&mut events, connected(2)).await;
    assert_eq!(client.grain::<EchoRef>(5).hit(0).await.unwrap(), "s2");
}

#[tokio::test(start_paused = true)]
async fn on_demand_mode_connects_when_a_call_needs_a_server() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo, Hosts::Echo, Hosts::Lobby]);
    let client = fleet.client(0, ConnectMode::OnDemand, "ch").await;
    assert!(client.servers().is_empty(), "nothing connected before the first call");
    assert_eq!(fleet.server(0).session_count(), 0);
    // Echo: the first server of the list hosts it; only it is connected.
    assert_eq!(client.grain::<EchoRef>(1).hit(0).await.unwrap(), "s0");
    assert_eq!(client.servers().len(), 1);
    // Lobby: s1 is tried (does not host it), then s2.
    assert_eq!(client.grain::<LobbyRef>(1).hit(0).await.unwrap(), "s2");
    assert_eq!(client.servers().len(), 3);
    // A type nobody hosts fails once the list is exhausted.
    let fleet2 = Fleet::new(SimNetwork::new(2, SimConfig::default()), &[Hosts::Echo]);
    let c2 = fleet2.client(1, ConnectMode::OnDemand, "ch").await;
    let r = c2.grain::<LobbyRef>(1).hit(0).await;
    assert!(matches!(r, Err(CallError::UnknownGrainType)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn multi_mode_connects_all_and_reconnects_a_server_that_returns() {
    let mut fleet = Fleet::new(clean(), &[Hosts::Echo; 3]);
    fleet.kill(2);
    // s2 is down at the start: connect returns with the other two once s2's attempt failed.
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    let mut events = client.events();
    let mut ids: Vec<_> = client.servers().iter().map(|s| s.id.0.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["s0", "s1"]);
    let failed = until(&mut events, |e| matches!(e, ClientEvent::ConnectFailed { .. })).await;
    let ClientEvent::ConnectFailed { addr, retry_in, .. } = failed else { unreachable!() };
    assert_eq!(addr, server_addr(2));
    assert!(retry_in.unwrap() > Duration::ZERO);
    fleet.restart(2);
    until(&mut events, connected(2)).await;
    assert_eq!(client.servers().len(), 3);
    let c = counts(&placement(&client, 0..30).await);
    assert_eq!(c.len(), 3, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn connecting_to_nothing_is_a_typed_error() {
    let net = SimNetwork::new(3, SimConfig::default());
    let config =
        ClientConfig { connect_timeout: Duration::from_secs(2), ..ClientConfig::default() };
    let r = Client::builder()
        .config(config.clone())
        .servers([server_addr(0), server_addr(1)])
        .connect_sim(&net, client_addr(0))
        .await;
    assert!(
        matches!(r, Err(grainwire::client::ClientError::Unreachable(ref v)) if v.len() == 2),
        "{r:?}"
    );
    let r = Client::builder().config(config).connect_sim(&net, client_addr(1)).await;
    assert!(matches!(r, Err(grainwire::client::ClientError::NoServers)), "{r:?}");
}

/// Whenever a server stops gracefully (early, mid-load, late; on a clean and a lossy
/// network), no call fails and every call runs exactly once: calls that reach it while it
/// drains are refused and go elsewhere, and it closes a session only once its client holds
/// every answer, so what is still unanswered then did not run and goes elsewhere too.
#[tokio::test(start_paused = true)]
async fn a_graceful_stop_loses_no_calls() {
    for (round, (ran, loss)) in
        [(1, 0.0), (50, 0.0), (200, 0.0), (333, 0.0), (600, 0.0), (200, 0.05), (500, 0.05)]
            .into_iter()
            .enumerate()
    {
        let net = SimNetwork::new(round as u64, SimConfig { loss, ..SimConfig::default() });
        let mut fleet = Fleet::new(net, &[Hosts::Echo; 3]);
        let client = fleet.client(0, ConnectMode::Multi, "ch").await;
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..24i64 {
            let e: EchoRef = client.grain(g);
            let e = e.with_timeout(Duration::from_secs(60));
            tasks.spawn(async move {
                let mut out = Vec::new();
                for i in 0..40u64 {
                    out.push(e.slow(g as u64 * 1000 + i, 15).await);
                }
                out
            });
        }
        let mid = || fleet.log.runs.lock().unwrap().len() >= ran;
        wait_until("calls ran before the stop", Duration::from_secs(60), mid).await;
        // s1 shuts down gracefully: it says it is draining (clients route new calls elsewhere
        // at once), finishes what it has, then closes.
        let s1 = fleet.servers[1].take().unwrap();
        s1.shutdown().await;
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            for r in r.unwrap() {
                r.unwrap_or_else(|e| panic!("stop after {ran} calls, loss {loss}: {e:?}"));
                n += 1;
            }
        }
        assert_eq!(n, 24 * 40);
        let runs = fleet.log.runs.lock().unwrap().len();
        assert_eq!(runs, 24 * 40, "every call ran exactly once (stop after {ran}, loss {loss})");
    }
}

#[tokio::test(start_paused = true)]
async fn a_heavier_server_gets_its_share_of_grains() {
    let fleet = Fleet::weighted(clean(), &[Hosts::Echo; 2], &[3, 1]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let c = counts(&placement(&client, 0..800).await);
    let heavy = c["s0"] as f64 / 800.0;
    assert!((0.70..0.80).contains(&heavy), "weight 3 of 4 got {heavy}: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_client() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo; 2]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let e: EchoRef = client.grain(1);
    e.hit(1).await.unwrap();
    let mut events = client.events();
    drop(client);
    // A reference keeps the client alive.
    assert_eq!(e.hit(2).await.unwrap().len(), 2);
    drop(e);
    // Then its sessions close, its tasks end and its state is freed: the event stream ends.
    let mut gone = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::Disconnected { .. }) => gone += 1,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's state was never freed");
    assert_eq!(gone, 2, "both sessions were closed");
}

// What the client's task sends while handling a session event (a lost server, a manifest, a
// response) leaves in that pass, on an otherwise idle connection: each of the three paths
// arrives exactly one hop after the event that caused it, not at some later wake-up (a
// delayed ack, a keepalive).

#[tokio::test(start_paused = true)]
async fn an_idempotent_call_retried_after_a_lost_server_leaves_at_once() {
    let mut fleet = Fleet::new(fixed(), &[Hosts::Echo, Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    let mut events = client.events();
    let e: EchoRef = client.grain(1);
    let e = e.with_timeout(Duration::from_secs(60)).prefer(&ServerId::new("s0"));
    let call = tokio::spawn(async move { e.slow_peek(7, 100).await });
    let running = || fleet.log.started(7).len() == 1;
    wait_until("running on s0", Duration::from_millis(50), running).await;
    // s0 restarts: the client's next packet to it earns a RESET, and the session ends.
    fleet.net.kill(server_addr(0));
    fleet.servers[0] = fleet.bind(0);
    until(&mut events, disconnected(0)).await;
    let lost_at = tokio::time::Instant::now();
    assert_eq!(call.await.unwrap().unwrap(), "s1");
    let started = fleet.log.started(7);
    assert_eq!(started[1], ("s1".to_string(), lost_at + HOP), "sent once more, at once");
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_a_server_leaves_with_the_manifest() {
    let fleet = Fleet::new(fixed(), &[Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::OnDemand, "ch").await;
    let mut events = client.events();
    let e: EchoRef = client.grain(1);
    let call = tokio::spawn(async move { e.hit(3).await });
    until(&mut events, connected(0)).await;
    let manifest_at = tokio::time::Instant::now();
    assert_eq!(call.await.unwrap().unwrap(), "s0");
    assert_eq!(fleet.log.started(3), [("s0".to_string(), manifest_at + HOP)]);
}

#[tokio::test(start_paused = true)]
async fn a_call_refused_as_unknown_grain_type_goes_elsewhere_at_once() {
    let fleet = Fleet::new(fixed(), &[Hosts::Echo, Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let e: EchoRef = client.grain(1);
    let first = e.hit(0).await.unwrap();
    let i = if first == "s0" { 0 } else { 1 };
    // The server stops hosting Echo while the call is on its way: it answers
    // UnknownGrainType one hop after the call left, the client sends it elsewhere one hop later.
    let sent_at = tokio::time::Instant::now();
    let call = tokio::spawn(async move { e.hit(5).await });
    fleet.server(i).set_hosting::<EchoRef>(false).unwrap();
    assert_eq!(call.await.unwrap().unwrap(), name(1 - i));
    assert_eq!(fleet.log.started(5), [(name(1 - i), sent_at + 3 * HOP)]);
}

/// A running client's server set changes: `add_server` connects and waits for the manifest
/// (an address it has returns that server), consistent placement moves only the grains the
/// newcomer wins; `remove_server` drains (pending calls finish, nothing new goes there) or
/// aborts (plain pending calls fail `Disconnected(ClosedLocally)`, idempotent ones go
/// elsewhere), moves only the leaver's grains, and the server is not reconnected.
#[tokio::test(start_paused = true)]
async fn a_running_client_adds_and_removes_servers_and_only_their_grains_move() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo; 5]);
    let config = ClientConfig { seed: Some(5), ..ClientConfig::default() };
    let client = Client::builder()
        .config(config)
        .servers(fleet.addrs()[..4].iter().copied())
        .connect_sim(&fleet.net, client_addr(0))
        .await
        .unwrap();
    let keys = 0..1000;
    let before = placement(&client, keys.clone()).await;
    assert_eq!(counts(&before).len(), 4);

    // s4 joins: only grains it now wins move, all to it.
    let info = client.add_server(server_addr(4)).await.unwrap();
    assert_eq!(info.id.0.as_ref(), "s4");
    let again = client.add_server(server_addr(4)).await.unwrap();
    assert_eq!(again.id, info.id, "an address the client has returns its server");
    let joined = placement(&client, keys.clone()).await;
    let moved: Vec<_> = keys.clone().filter(|k| before[k] != joined[k]).collect();
    assert!(moved.iter().all(|k| joined[k] == "s4"), "a grain moved elsewhere than s4");
    assert!((150..250).contains(&moved.len()), "{} of 1000 moved to the fifth server", moved.len());

    // s1 drains away while two calls run there: both finish there.
    let e: EchoRef = client.grain(1);
    let e = e.with_timeout(Duration::from_secs(60)).prefer(&ServerId::new("s1"));
    let running: Vec<_> = (0..2u64)
        .map(|n| {
            let e = e.clone();
            tokio::spawn(async move { e.slow(9000 + n, 500).await })
        })
        .collect();
    let reached = || fleet.server(1).stats().pending_calls == 2;
    wait_until("both calls on s1", Duration::from_secs(1), reached).await;
    client.remove_server(&ServerId::new("s1"), Removal::Drain).await.unwrap();
    for r in running {
        assert_eq!(r.await.unwrap().unwrap(), "s1", "a drained server finishes its calls");
    }
    assert!(client.servers().iter().all(|s| s.id.0.as_ref() != "s1"));
    let drained = placement(&client, keys.clone()).await;
    for k in keys.clone() {
        if joined[&k] == "s1" {
            assert_ne!(drained[&k], "s1");
        } else {
            assert_eq!(drained[&k], joined[&k], "grain {k} moved though its server stayed");
        }
    }

    // s2 is aborted with a plain and an idempotent call pending on it.
    let e = e.prefer(&ServerId::new("s2"));
    let (plain, idem) = {
        let (a, b) = (e.clone(), e.clone());
        (
            tokio::spawn(async move { a.slow(9100, 5_000).await }),
            tokio::spawn(async move { b.slow_peek(9101, 5_000).await }),
        )
    };
    let reached = || fleet.server(2).stats().pending_calls == 2;
    wait_until("both calls on s2", Duration::from_secs(1), reached).await;
    client.remove_server(&ServerId::new("s2"), Removal::Abort).await.unwrap();
    let plain = plain.await.unwrap();
    assert!(
        matches!(plain, Err(CallError::Disconnected(DisconnectReason::ClosedLocally))),
        "{plain:?}"
    );
    let idem = idem.await.unwrap().unwrap();
    assert!(idem != "s2" && idem != "s1", "the idempotent call went elsewhere: {idem}");
    let mut ids: Vec<String> = client.servers().iter().map(|s| s.id.0.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["s0", "s3", "s4"]);

    // Neither comes back, however long the client runs; a name it does not have is an error.
    tokio::time::sleep(Duration::from_secs(30)).await; // virtual time: reconnects would show
    assert_eq!(client.servers().len(), 3);
    match client.remove_server(&ServerId::new("s1"), Removal::Drain).await {
        Err(ClientError::UnknownServer(id)) => assert_eq!(id.0.as_ref(), "s1"),
        other => panic!("{other:?}"),
    }
}

/// `add_server` to an address where nothing answers fails with the attempt's typed error
/// within the connect timeout, and the address is not retried afterwards.
#[tokio::test(start_paused = true)]
async fn adding_an_unreachable_server_is_a_typed_error_and_is_not_retried() {
    let fleet = Fleet::new(clean(), &[Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "ch").await;
    let mut events = client.events();
    let t0 = tokio::time::Instant::now();
    let r = client.add_server(server_addr(7)).await;
    assert!(matches!(r, Err(ClientError::Connect(_))), "{r:?}");
    assert!(t0.elapsed() <= ClientConfig::default().connect_timeout, "{:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(30)).await; // virtual time: a retry would show
    let mut attempts = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, ClientEvent::ConnectFailed { addr, .. } if addr == server_addr(7)) {
            attempts += 1;
        }
    }
    assert!(attempts <= 1, "{attempts} attempts after add_server gave up");
    assert_eq!(client.servers().len(), 1);
}

/// A server's priority and metadata (its `ServerConfig`) reach clients in its manifest, and a
/// priority-tiered strategy routes within the best tier present, falling back to the next
/// when that tier's servers leave.
#[tokio::test(start_paused = true)]
async fn priority_and_metadata_travel_in_the_manifest_and_tiers_route_by_them() {
    let net = clean();
    let log = Arc::new(Log::default());
    let mut servers: Vec<Option<Server>> = [(1u32, "us"), (0, "eu"), (0, "eu")]
        .iter()
        .enumerate()
        .map(|(i, &(priority, dc))| {
            let config = ServerConfig {
                server_id: Some(name(i)),
                priority,
                metadata: [("datacenter".into(), dc.into())].into(),
                ..ServerConfig::default()
            };
            let (log, id) = (log.clone(), name(i));
            let echo = Echo::host(move |_| EchoGrain { server: id.clone(), log: log.clone() });
            Some(Server::builder(config).host(echo).bind_sim(&net, server_addr(i)).unwrap())
        })
        .collect();
    let client = Client::builder()
        .servers((0..3).map(server_addr))
        .strategy(Tiered::by_priority(RoundRobin))
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    let s0 = client.servers().into_iter().find(|s| s.id.0.as_ref() == "s0").unwrap();
    assert_eq!(s0.manifest.priority, 1);
    assert_eq!(s0.manifest.metadata.get("datacenter"), Some(&MetaValue::from("us")));
    let c = counts(&placement(&client, 0..40).await);
    assert_eq!(c.into_iter().collect::<Vec<_>>(), [("s1".into(), 20), ("s2".into(), 20)]);
    // The priority-0 tier leaves (gracefully): everything falls back to s0.
    for i in [1, 2] {
        servers[i].take().unwrap().shutdown().await;
    }
    let c = counts(&placement(&client, 0..10).await);
    assert_eq!(c.into_iter().collect::<Vec<_>>(), [("s0".into(), 10)]);
}

/// A client uses only servers of its own cluster and service: a server of another refuses it
/// at its door, and connecting fails at once with a typed error naming the client's ids and the
/// server's address; in a list, the foreign server is
/// left out (an event says so) and never reconnected; `add_server` refuses it the same way.
#[tokio::test(start_paused = true)]
async fn a_client_never_joins_a_server_of_another_cluster() {
    let net = clean();
    let log = Arc::new(Log::default());
    let start = |i: usize, cluster: &str| {
        let config = ServerConfig {
            server_id: Some(name(i)),
            cluster_id: cluster.into(),
            ..ServerConfig::default()
        };
        let (log, id) = (log.clone(), name(i));
        let echo = Echo::host(move |_| EchoGrain { server: id.clone(), log: log.clone() });
        Server::builder(config).host(echo).bind_sim(&net, server_addr(i)).unwrap()
    };
    let (_ours, _theirs, _also_theirs) =
        (start(0, "grainwire"), start(1, "eu-prod"), start(2, "eu-prod"));
    for (i, mode) in [ConnectMode::Multi, ConnectMode::Single].into_iter().enumerate() {
        let t0 = tokio::time::Instant::now();
        let r = Client::builder()
            .server(server_addr(1))
            .mode(mode)
            .connect_sim(&net, client_addr(10 + i))
            .await;
        match r {
            // The server refused us at its door (before any state), so its id and cluster are
            // not known; ours and its address are.
            Err(ClientError::WrongCluster(m)) => {
                assert_eq!((m.server.as_ref(), m.addr), (None, server_addr(1)));
                assert_eq!((m.ours_cluster.as_str(), m.theirs_cluster), ("grainwire", None));
                assert_eq!(m.ours_service.as_str(), "game");
            }
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "at once, not at the connect timeout");
    }

    let client = Client::builder()
        .servers([server_addr(0), server_addr(1)])
        .connect_sim(&net, client_addr(1))
        .await
        .unwrap();
    let mut events = client.events();
    let ids: Vec<String> = client.servers().iter().map(|s| s.id.0.to_string()).collect();
    assert_eq!(ids, ["s0"]);
    assert_eq!(
        placement(&client, 0..10).await.values().collect::<std::collections::BTreeSet<_>>().len(),
        1
    );
    match client.add_server(server_addr(2)).await {
        Err(ClientError::WrongCluster(m)) => assert_eq!(m.addr, server_addr(2)),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(30)).await; // virtual time: a reconnect would show
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, ClientEvent::Connected { .. } | ClientEvent::ConnectFailed { .. }),
            "a foreign server was tried again: {e:?}"
        );
    }
    assert_eq!(client.servers().len(), 1);
}

/// `client.servers()` gives each server's own call statistics and transport statistics, beside
/// the client-wide totals.
#[tokio::test(start_paused = true)]
async fn each_server_has_its_own_statistics() {
    let fleet = Fleet::new(fixed(), &[Hosts::Echo, Hosts::Echo]);
    let client = fleet.client(0, ConnectMode::Multi, "rr").await;
    let e: EchoRef = client.grain(1);
    for n in 0..10 {
        e.prefer(&ServerId::new("s0")).hit(n).await.unwrap();
    }
    for n in 0..4 {
        e.prefer(&ServerId::new("s1")).hit(100 + n).await.unwrap();
    }
    let slow = e.prefer(&ServerId::new("s1")).with_timeout(Duration::from_millis(100));
    assert!(matches!(slow.slow(200, 5_000).await, Err(CallError::Timeout)));
    let by_id: HashMap<String, grainwire::client::ServerInfo> =
        client.servers().into_iter().map(|s| (s.id.0.to_string(), s)).collect();
    let (s0, s1) = (&by_id["s0"].calls, &by_id["s1"].calls);
    assert_eq!((s0.total, s0.errors, s0.timeouts), (10, 0, 0));
    assert_eq!((s1.total, s1.errors, s1.timeouts), (5, 1, 1));
    // A call is a hop there and a hop back.
    assert!(s0.p50 >= 2 * HOP, "{:?}", s0.p50);
    assert!(by_id["s0"].transport.packets_sent > 10 && by_id["s1"].transport.packets_sent > 5);
    let all = client.stats();
    assert_eq!((all.total, all.timeouts), (15, 1));
}

#[tokio::test(start_paused = true)]
async fn strategies_from_the_configuration_route_unless_the_builder_set_its_own() {
    use grainwire::client::StrategyName;
    let fleet = Fleet::new(clean(), &[Hosts::Echo, Hosts::Echo]);
    let servers_of = |client: Client| async move {
        let e: EchoRef = client.grain(1);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..20 {
            seen.insert(e.hit(n).await.unwrap());
        }
        seen.len()
    };
    let connect = |config: ClientConfig, own: bool, i: usize| {
        let b = Client::builder().config(config).servers(fleet.addrs());
        let b = if own { b.strategy_for::<EchoRef>(ConsistentHash) } else { b };
        b.connect_sim(&fleet.net, client_addr(i))
    };
    // The configuration's default: round-robin spreads one grain's calls over both.
    let rr = ClientConfig { strategy: Some(StrategyName::RoundRobin), ..ClientConfig::default() };
    assert_eq!(servers_of(connect(rr.clone(), false, 0).await.unwrap()).await, 2);
    // Its per-type entry wins over its default.
    let per_type = ClientConfig {
        strategies: [("Echo".to_string(), StrategyName::TieredConsistentHash)].into(),
        ..rr.clone()
    };
    assert_eq!(servers_of(connect(per_type, false, 1).await.unwrap()).await, 1);
    // The builder's wins over the configuration's.
    assert_eq!(servers_of(connect(rr, true, 2).await.unwrap()).await, 1);
    assert!("tiered-nope".parse::<StrategyName>().is_err());
    assert_eq!("tiered-round-robin".parse(), Ok(StrategyName::TieredRoundRobin));
}
