//! Grains with persisted state: loaded before the first call, written when the grain says so
//! and when the activation ends (idle, evicted, drained), lost on a kill only since the last
//! write; a stale activation's write refused typed (it starts over from what is stored); old
//! state read after a field is added; the same over a real `redis-server`, across a Redis
//! restart with persistence on.

mod support;

use std::sync::Arc;
use std::time::Duration;

use grainwire::persistence::{
    MemoryStorage, Persisted, RedisStorage, StateError, Stateful, Storage,
};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use support::redis::RedisServer;
use support::{paused, server_addr, wait_until};

/// The state: `#[serde(default)]`, so a field added later reads old records.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Score {
    points: u64,
}

#[grainwire::grain]
trait Counter {
    /// Adds `n`; writes the state when `save`. The points, or why the write failed.
    async fn add(&mut self, n: u64, save: bool) -> Result<u64, String>;
    /// The points.
    async fn get(&self) -> u64;
    /// Removes the stored state.
    async fn forget(&mut self) -> Result<(), String>;
}

struct CounterGrain {
    state: Persisted<Score>,
}

impl Stateful for CounterGrain {
    type State = Score;
    fn state(&mut self) -> &mut Persisted<Score> {
        &mut self.state
    }
}

fn why(e: StateError) -> String {
    match e {
        StateError::Conflict => "conflict".into(),
        other => other.to_string(),
    }
}

impl Counter for CounterGrain {
    async fn add(&mut self, n: u64, save: bool) -> Result<u64, String> {
        self.state.points += n;
        if save {
            self.state.write().await.map_err(why)?;
        }
        Ok(self.state.points)
    }
    async fn get(&self) -> u64 {
        self.state.points
    }
    async fn forget(&mut self) -> Result<(), String> {
        self.state.clear().await.map_err(why)
    }
}

/// A call's application error as the `Err`; any other failure fails the test.
fn app<T>(r: Result<T, grainwire::CallError<String>>) -> Result<T, String> {
    match r {
        Ok(v) => Ok(v),
        Err(grainwire::CallError::Application(e)) => Err(e),
        Err(e) => panic!("the call failed: {e}"),
    }
}

fn host(storage: &Storage) -> grainwire::server::Host {
    Counter::host_with_state(storage.clone(), |_: &GrainId, state| CounterGrain { state })
}

fn net() -> SimNetwork {
    SimNetwork::new(1, SimConfig { delay: Duration::from_millis(2), ..SimConfig::default() })
}

fn server(net: &SimNetwork, i: usize, storage: &Storage, config: ServerConfig) -> Server {
    let config = ServerConfig { server_id: Some(format!("s{i}")), ..config };
    Server::builder(config).host(host(storage)).bind_sim(net, server_addr(i)).unwrap()
}

async fn client(net: &SimNetwork, servers: usize) -> Client {
    support::fleet_client(net, "10.0.1.1:5000", servers).await
}

/// Loaded before the first call and written when asked; an idle deactivation writes what
/// changed since, and so does an eviction; the next activation reads it.
#[test]
fn state_is_written_when_asked_and_when_the_activation_ends() {
    paused(async {
        let net = net();
        let storage = Storage::memory();
        let config = ServerConfig {
            idle_deactivation: Duration::from_secs(1),
            max_activations: 1,
            ..ServerConfig::default()
        };
        let s = server(&net, 0, &storage, config);
        let c = client(&net, 1).await;
        let a: CounterRef = c.grain("a");
        assert_eq!(app(a.add(5, true).await), Ok(5));
        assert_eq!(app(a.add(1, false).await), Ok(6), "changed, not written yet");
        wait_until("idle deactivation", Duration::from_secs(10), || s.activation_count() == 0)
            .await;
        assert_eq!(a.get().await.unwrap(), 6, "written as it deactivated, read back");
        // Eviction (one activation at most): "b" takes "a"'s place, "a"'s change is kept.
        assert_eq!(app(a.add(4, false).await), Ok(10));
        let b: CounterRef = c.grain("b");
        assert_eq!(app(b.add(1, false).await), Ok(1));
        assert_eq!(s.stats().activations_evicted, 1);
        assert_eq!(a.get().await.unwrap(), 10, "written as it was evicted");
    });
}

/// A server that drains writes its grains' state and releases them: the next call activates
/// the grain on another server, with its state.
#[test]
fn a_drained_grain_is_served_elsewhere_with_its_state() {
    paused(async {
        let net = net();
        let storage = Storage::memory();
        let s0 = server(&net, 0, &storage, ServerConfig::default());
        let s1 = server(&net, 1, &storage, ServerConfig::default());
        let c = client(&net, 2).await;
        let a: CounterRef = c.grain("a");
        let first = app(a.add(3, false).await).unwrap();
        assert_eq!(first, 3);
        let (on, other) = if s0.activation_count() == 1 { (s0, s1) } else { (s1, s0) };
        on.shutdown().await;
        assert_eq!(app(a.add(1, false).await), Ok(4), "the other server read it");
        assert_eq!(other.activation_count(), 1);
    });
}

/// A server killed (no drain) loses what its grains changed since their last write, nothing
/// before it.
#[test]
fn a_kill_loses_only_what_was_not_written() {
    paused(async {
        let net = net();
        let storage = Storage::memory();
        let s0 = server(&net, 0, &storage, ServerConfig::default());
        let c = client(&net, 1).await;
        let a: CounterRef = c.grain("a");
        assert_eq!(app(a.add(5, true).await), Ok(5));
        assert_eq!(app(a.add(2, false).await), Ok(7));
        // A crash: its socket is gone at once and its process does nothing more (forgotten,
        // not dropped: dropping a server shuts it down gracefully, which writes).
        net.kill(server_addr(0));
        std::mem::forget(s0);
        let _s = server(&net, 0, &storage, ServerConfig::default());
        let c = support::fleet_client(&net, "10.0.1.2:5000", 1).await;
        let a: CounterRef = c.grain("a");
        assert_eq!(a.get().await.unwrap(), 5, "up to the last write");
    });
}

/// Two activations of one grain (two servers and no directory, as under `FallBack` with the
/// directory unreachable): the one that loaded first is stale once the other loaded; its write
/// is refused typed, nothing is overwritten, and it starts over from what is stored.
#[test]
fn a_stale_activation_is_refused_and_starts_over() {
    paused(async {
        let net = net();
        let storage = Storage::memory();
        let s0 = server(&net, 0, &storage, ServerConfig::default());
        let s1 = server(&net, 1, &storage, ServerConfig::default());
        let c = client(&net, 2).await;
        let on0 = c.grain::<CounterRef>("x").require(s0.server_id());
        let on1 = c.grain::<CounterRef>("x").require(s1.server_id());
        assert_eq!(app(on0.add(1, true).await), Ok(1));
        assert_eq!(app(on1.add(10, true).await), Ok(11), "loaded what the first wrote");
        assert_eq!(app(on0.add(100, true).await), Err("conflict".into()), "stale: refused");
        // It started over from storage: it sees the newer write, and its writes go through.
        assert_eq!(on0.get().await.unwrap(), 11);
        assert_eq!(app(on0.add(1, true).await), Ok(12));
        // And now the other one is stale.
        assert_eq!(app(on1.add(1, true).await), Err("conflict".into()));
        assert_eq!(on1.get().await.unwrap(), 12);
    });
}

/// `#[serde(default)]`: a field added to the state reads records written before it existed.
#[test]
fn old_state_reads_after_a_field_is_added() {
    #[derive(Default, Serialize, Deserialize)]
    struct V1 {
        points: u64,
    }
    #[derive(Default, Serialize, Deserialize)]
    #[serde(default)]
    struct V2 {
        points: u64,
        level: u32,
    }
    paused(async {
        let storage = Storage::memory();
        let g = GrainId::new(grainwire::GrainType::of("Counter"), "old");
        let mut v1 = storage.load::<V1>(&g).await.unwrap();
        assert!(!v1.existed());
        v1.points = 42;
        v1.write().await.unwrap();
        let v2 = storage.load::<V2>(&g).await.unwrap();
        assert!(v2.existed());
        assert_eq!((v2.points, v2.level), (42, 0));
    });
}

/// The storage's rules, whatever keeps it: a load takes a new epoch; a write must carry the
/// etag and epoch read; a clear keeps the epoch; a record over the bound is refused.
async fn storage_rules(storage: Storage) {
    let g = GrainId::new(grainwire::GrainType::of("Counter"), 7i64);
    let mut first = storage.load::<Score>(&g).await.unwrap();
    let mut second = storage.load::<Score>(&g).await.unwrap();
    first.points = 1;
    assert_eq!(first.write().await, Err(StateError::Conflict), "a newer load fences it");
    assert!(first.is_stale());
    second.points = 2;
    second.write().await.unwrap();
    second.points = 3;
    second.write().await.unwrap();
    let etag = second.etag();
    let mut third = storage.load::<Score>(&g).await.unwrap();
    assert_eq!((third.points, third.etag()), (3, etag));
    third.clear().await.unwrap();
    let fourth = storage.load::<Score>(&g).await.unwrap();
    assert_eq!((fourth.points, fourth.existed()), (0, false), "cleared");
    assert_eq!(third.write().await, Err(StateError::Conflict), "fenced after the clear too");
    let small = storage.clone().max_bytes(8);
    let mut big = small.load::<Score>(&g).await.unwrap();
    big.points = u64::MAX;
    assert!(matches!(big.write().await, Err(StateError::TooLarge { max: 8, .. })));
}

#[test]
fn memory_storage_keeps_the_rules() {
    let memory = Arc::new(MemoryStorage::default());
    paused(storage_rules(Storage::shared(memory.clone())));
    assert_eq!(memory.len(), 1);
}

#[tokio::test]
async fn redis_storage_keeps_the_rules() {
    let Some(redis) = RedisServer::start("redis_storage_keeps_the_rules") else { return };
    let storage = Storage::redis(&redis.url(), "c", "game", Duration::from_secs(2)).unwrap();
    storage_rules(storage).await;
}

/// Waiting for replicas: the rules hold with a replica that acknowledges; with none left, a
/// load activates nothing, and a write is made on the primary only: both `NotReplicated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_storage_waits_for_replicas() {
    let test = "redis_storage_waits_for_replicas";
    let Some(primary) = RedisServer::start(test) else { return };
    let replica = RedisServer::start_replica_of(test, primary.port()).unwrap();
    let wait = Duration::from_millis(100);
    let redis = || RedisStorage::new(&primary.url(), "c", "game", Duration::from_secs(2)).unwrap();
    storage_rules(Storage::custom(redis().replicas(1, wait))).await;
    // What the wait costs (printed for BENCHMARKS.md; not asserted: timing).
    for (what, storage) in [
        ("no wait", Storage::custom(redis())),
        ("WAIT 1", Storage::custom(redis().replicas(1, wait))),
    ] {
        let g = GrainId::new(grainwire::GrainType::of("Counter"), what);
        let mut s = storage.load::<Score>(&g).await.unwrap();
        let start = std::time::Instant::now();
        for i in 0..500 {
            s.points = i;
            s.write().await.unwrap();
        }
        eprintln!("state write, {what}: {:?} each", start.elapsed() / 500);
    }
    drop(replica);
    let lone = Storage::custom(redis().replicas(1, wait));
    let g = GrainId::new(grainwire::GrainType::of("Counter"), 8i64);
    let not_replicated =
        |r| matches!(r, Err(StateError::NotReplicated { acknowledged: 0, wanted: 1, .. }));
    let loaded = lone.load::<Score>(&g).await.map(|_| ());
    assert!(not_replicated(loaded.clone()), "{loaded:?}");
    let plain = Storage::custom(redis());
    let fence = plain.storage().load(&g).await.unwrap().fence;
    let record = br#"{"state":{"points":5}}"#;
    let written = lone.storage().write(&g, record, fence).await;
    assert!(matches!(written, Err(StateError::NotReplicated { etag: 1, .. })), "{written:?}");
    let on_primary = plain.load::<Score>(&g).await.unwrap();
    assert_eq!((on_primary.points, on_primary.etag()), (5, 1), "on the primary only");
}

/// Over real UDP and a real Redis with persistence: state written by a grain survives its
/// activation, a Redis restart (from its append-only file), and its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_in_redis_survives_a_redis_restart_and_the_server() {
    let Some(mut redis) = RedisServer::start_persistent("state_in_redis_survives") else { return };
    let storage = Storage::redis(&redis.url(), "c", "game", Duration::from_secs(2)).unwrap();
    let start = |storage: &Storage| {
        Server::builder(ServerConfig::default())
            .host(host(storage))
            .bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
    };
    let s = start(&storage);
    let config = ClientConfig { default_timeout: Duration::from_secs(10), ..Default::default() };
    let c =
        Client::builder().config(config.clone()).servers([s.local_addr()]).connect().await.unwrap();
    let a: CounterRef = c.grain("a");
    assert_eq!(app(a.add(7, true).await), Ok(7));
    assert_eq!(app(a.add(1, false).await), Ok(8));
    s.shutdown().await; // drains: writes the change
    redis.start_again();
    let s = start(&storage);
    let c = Client::builder().config(config).servers([s.local_addr()]).connect().await.unwrap();
    let a: CounterRef = c.grain("a");
    // The storage reconnects after the restart (its first request may meet the old
    // connection): ask until it answers, bounded.
    let mut got = None;
    for _ in 0..50 {
        if let Ok(n) = a.get().await {
            got = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, Some(8), "what Redis had written came back with it");
    assert_eq!(app(a.forget().await), Ok(()));
}

/// What state costs in Redis round trips (`INFO commandstats`: scripts run): one to load on
/// a grain's first call, one per write, none for calls that do not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_costs_one_round_trip_per_load_and_per_write() {
    let Some(redis) = RedisServer::start("state_costs") else { return };
    let client = redis::Client::open(redis.url()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let scripts = |info: &str| -> u64 {
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    };
    let storage = Storage::redis(&redis.url(), "c", "game", Duration::from_secs(2)).unwrap();
    let s = Server::builder(ServerConfig::default())
        .host(host(&storage))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let c = Client::builder().servers([s.local_addr()]).connect().await.unwrap();
    // Warm the scripts (a script's first run on a connection may take a second round trip).
    let warm: CounterRef = c.grain("warm");
    app(warm.add(1, true).await).unwrap();
    let count = || {
        let mut con = con.clone();
        async move {
            let info: String =
                redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
            scripts(&info)
        }
    };
    let a: CounterRef = c.grain("a");
    let before = count().await;
    app(a.add(1, false).await).unwrap();
    let first = count().await - before;
    for _ in 0..10 {
        app(a.add(1, false).await).unwrap();
    }
    let no_writes = count().await - before - first;
    app(a.add(1, true).await).unwrap();
    let write = count().await - before - first - no_writes;
    eprintln!(
        "scripts run: first call {first}, ten calls without writing {no_writes}, a write {write}"
    );
    assert_eq!((first, no_writes, write), (1, 0, 1));
}
