//! Exactly once where asked: an `#[exactly_once]` call's answer is recorded with its grain's
//! persisted state before it is sent, so a call sent again after its server was lost (the same
//! call id) is answered from the record if it ran, and runs if it did not. Over the simulated
//! network, with a shared directory and storage, servers killed and restarted; and with the
//! storage in a real Redis whose primary fails over.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::directory::{GrainDirectory, MemoryDirectory};
use grainwire::persistence::{MemoryStorage, Persisted, RedisStorage, Stateful, Storage};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{GrainId, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use support::redis::{Proxy, RedisServer};
use support::{paused, server_addr};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Entries {
    list: Vec<u64>,
}

#[grainwire::grain]
trait Ledger {
    /// Appends `n`; how many entries there are.
    #[exactly_once]
    async fn apply(&mut self, n: u64) -> u64;
    /// The entries, in the order applied.
    async fn entries(&self) -> Vec<u64>;
}

struct LedgerGrain {
    state: Persisted<Entries>,
}

impl Stateful for LedgerGrain {
    type State = Entries;
    fn state(&mut self) -> &mut Persisted<Entries> {
        &mut self.state
    }
}

impl Ledger for LedgerGrain {
    async fn apply(&mut self, n: u64) -> u64 {
        self.state.list.push(n);
        self.state.list.len() as u64
    }
    async fn entries(&self) -> Vec<u64> {
        self.state.list.clone()
    }
}

struct Fleet {
    net: SimNetwork,
    directory: Arc<dyn GrainDirectory>,
    memory: Arc<MemoryStorage>,
    storage: Storage,
}

impl Fleet {
    fn new(seed: u64) -> Self {
        let net = SimNetwork::new(
            seed,
            SimConfig { delay: Duration::from_millis(2), ..SimConfig::default() },
        );
        let memory = Arc::new(MemoryStorage::default());
        let storage = Storage::shared(memory.clone());
        Self { net, directory: Arc::new(MemoryDirectory::new()), memory, storage }
    }

    /// The same, with its state kept in `storage`.
    fn with_storage(seed: u64, storage: Storage) -> Self {
        Self { storage, ..Self::new(seed) }
    }

    fn start(&self, i: usize, n: usize) -> Server {
        let config = ServerConfig {
            server_id: Some(format!("s{i}")),
            peers: (0..n).map(|j| server_addr(j).into()).collect(),
            ..ServerConfig::default()
        };
        let storage = self.storage.clone();
        Server::builder(config)
            .directory(self.directory.clone())
            .host(Ledger::host_with_state(storage, |_: &GrainId, state| LedgerGrain { state }))
            .bind_sim(&self.net, server_addr(i))
            .unwrap()
    }

    /// A crash: the socket gone at once, the process doing nothing more.
    fn kill(&self, i: usize, s: Server) {
        self.net.kill(server_addr(i));
        std::mem::forget(s);
    }
}

/// The answer of a call that ran is lost (every datagram from its server to the client is
/// dropped), then its server dies: the client sends it again to the other server, which
/// answers from the record. It ran once.
#[test]
fn a_call_whose_answer_was_lost_is_answered_from_the_record() {
    paused(async {
        let f = Fleet::new(1);
        let servers = [f.start(0, 2), f.start(1, 2)];
        let c = support::fleet_client(&f.net, "10.0.1.1:5000", 2).await;
        let ledger = c.grain::<LedgerRef>("l").require(servers[0].server_id());
        assert_eq!(ledger.apply(1).await.unwrap(), 1);
        // From now on nothing s0 sends reaches the client: the next answer is lost.
        let lost = SimConfig { loss: 1.0, ..SimConfig::default() };
        let client = "10.0.1.1:5000".parse().unwrap();
        f.net.set_link(server_addr(0), client, lost);
        let pending = tokio::spawn({
            let ledger: LedgerRef = c.grain("l");
            async move { ledger.apply(2).await }
        });
        // It ran there (and its answer was recorded) ...
        let start = tokio::time::Instant::now();
        while f.storage_entries().await != vec![1, 2] {
            assert!(start.elapsed() < Duration::from_secs(2), "it ran on s0");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ... then s0 dies: the client sends the call again, to s1.
        let [s0, _s1] = servers;
        f.kill(0, s0);
        assert_eq!(pending.await.unwrap().unwrap(), 2, "the recorded answer");
        let again: LedgerRef = c.grain("l");
        assert_eq!(again.entries().await.unwrap(), vec![1, 2], "applied once");
    });
}

impl Fleet {
    /// What storage holds for grain "l" (a peek: it takes no epoch, fences no one).
    async fn storage_entries(&self) -> Vec<u64> {
        let g = GrainId::new(grainwire::GrainType::of("Ledger"), "l");
        let Some(record) = self.memory.peek(&g) else { return Vec::new() };
        let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
        serde_json::from_value(record["state"]["list"].clone()).unwrap_or_default()
    }
}

/// Eight clients apply numbered entries to four ledgers, with retries, while servers are
/// killed and restarted: every acknowledged entry is in the final state, and none twice.
#[test]
fn acknowledged_entries_are_kept_once_across_kills_and_restarts() {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    paused(async {
        let f = Fleet::new(2);
        let mut servers: Vec<Option<Server>> = (0..3).map(|i| Some(f.start(i, 3))).collect();
        let clients = f.clients(&acked).await;
        for victim in [1usize, 2] {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let s = servers[victim].take().expect("running");
            f.kill(victim, s);
            tokio::time::sleep(Duration::from_millis(700)).await;
            servers[victim] = Some(f.start(victim, 3));
        }
        for t in clients {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        f.check(&acked, 1_000).await;
    });
}

impl Fleet {
    /// Eight clients applying numbered entries (150 each, one per 20 ms) to four ledgers,
    /// with retries; each acknowledged entry goes into `acked`.
    async fn clients(&self, acked: &Arc<Mutex<BTreeSet<u64>>>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut clients = Vec::new();
        for k in 0..8u64 {
            let c = support::fleet_client(&self.net, &format!("10.0.1.{}:5000", k + 1), 3).await;
            let acked = acked.clone();
            clients.push(tokio::spawn(async move {
                for i in 0..150u64 {
                    let n = k * 1_000 + i;
                    let ledger: LedgerRef = c.grain((n % 4) as i64);
                    if ledger.apply(n).await.is_ok() {
                        acked.lock().unwrap().insert(n);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        clients
    }

    /// Every acknowledged entry is in the ledgers' final state, none twice, and at least
    /// `least` were acknowledged.
    async fn check(&self, acked: &BTreeSet<u64>, least: usize) {
        let c = support::fleet_client(&self.net, "10.0.2.1:5000", 3).await;
        let mut all = Vec::new();
        for l in 0..4i64 {
            all.extend(c.grain::<LedgerRef>(l).entries().await.unwrap());
        }
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "an entry applied twice");
        let missing: Vec<_> = acked.difference(&unique).collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        assert!(acked.len() > least, "calls went on: {}", acked.len());
    }
}

/// The same with the ledgers' state in a real Redis: a primary and two replicas, behind a
/// proxy (as a Sentinel setup's clients see it through HAProxy or DNS), each state load and
/// write waiting for one replica. The replicas fall behind (their link to the primary stalls
/// for 300 ms), the primary is killed, and its most up-to-date replica is promoted (what
/// Sentinel does), the other following it: what the primary wrote last is lost, but it was
/// never acknowledged. Servers are killed and restarted after. Every acknowledged entry is in the final state, and
/// none twice. (Without the wait for a replica this fails: entries acknowledged while the
/// replicas were behind are lost.) Real time (Redis is real), simulated network.
#[test]
fn acknowledged_entries_survive_a_redis_failover() {
    let test = "acknowledged_entries_survive_a_redis_failover";
    let Some(mut primary) = RedisServer::start(test) else { return };
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    // Multi-threaded: the proxies run while the test waits for the replicas to sync.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        let link = Proxy::start(primary.port()).await;
        let mut replicas =
            [(); 2].map(|()| RedisServer::start_replica_of(test, link.port()).unwrap());
        let proxy = Proxy::start(primary.port()).await;
        let redis = RedisStorage::new(&proxy.url(), "f1", "game", Duration::from_secs(1)).unwrap();
        let storage = Storage::custom(redis.replicas(1, Duration::from_millis(500)));
        let f = Fleet::with_storage(4, storage);
        let mut servers: Vec<Option<Server>> = (0..3).map(|i| Some(f.start(i, 3))).collect();
        let clients = f.clients(&acked).await;
        let pause = || tokio::time::sleep(Duration::from_millis(400));
        pause().await;
        // The failover: the replicas fall behind, the primary dies, the most up-to-date
        // replica takes over.
        link.stall();
        tokio::time::sleep(Duration::from_millis(300)).await;
        primary.stop();
        drop(link);
        let [a, b] = &mut replicas;
        let (new, other) =
            if a.replication_offset() >= b.replication_offset() { (a, b) } else { (b, a) };
        new.follow(None);
        other.follow(Some(new));
        proxy.switch(new.port());
        pause().await;
        let s1 = servers[1].take().expect("running");
        f.kill(1, s1);
        pause().await;
        servers[1] = Some(f.start(1, 3));
        pause().await;
        let s2 = servers[2].take().expect("running");
        f.kill(2, s2);
        pause().await;
        servers[2] = Some(f.start(2, 3));
        for t in clients {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        f.check(&acked, 600).await;
    });
}

/// A grain type with `#[exactly_once]` methods hosted without state is refused at start.
#[test]
fn exactly_once_needs_state() {
    struct Plain;
    impl Ledger for Plain {
        async fn apply(&mut self, _n: u64) -> u64 {
            0
        }
        async fn entries(&self) -> Vec<u64> {
            Vec::new()
        }
    }
    paused(async {
        let net = SimNetwork::new(3, SimConfig::default());
        let refused = Server::builder(ServerConfig::default())
            .host(Ledger::host(|_: &GrainId| Plain))
            .bind_sim(&net, server_addr(0));
        match refused {
            Err(grainwire::server::ServerError::Interface { reason, .. }) => {
                assert!(reason.contains("exactly_once"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    });
}
