//! Membership, the grain directory and grain state against a real Redis Cluster (three nodes
//! the test starts itself on loopback ports and joins with `redis-cli --cluster create`): a
//! fleet's keys share its hash tag, so every script runs on the one node that owns them, and
//! membership changes published on one node reach subscribers on another.

mod support;

use std::time::Duration;

use grainwire::directory::{Claim, GrainDirectory, Owner, RedisDirectory};
use grainwire::persistence::{StateError, Storage};
use grainwire::topology::DiscoveryConfig;
use grainwire::topology::redis::MembershipConfig;
use grainwire::{Client, ClientConfig, GrainId, GrainType, Server, ServerConfig, ServerId};
use support::redis::RedisCluster;

#[grainwire::grain]
trait Echo {
    async fn whoami(&mut self) -> String;
}

struct EchoGrain(String);

impl Echo for EchoGrain {
    async fn whoami(&mut self) -> String {
        self.0.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_directory_and_state_work_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start("redis cluster") else { return };
    let url = cluster.url();

    // The directory: one winner per grain, and votes that release a dead server's grains.
    let dir = RedisDirectory::new(&url, "c1", "game", Duration::from_secs(2)).unwrap();
    let owner = |id: &str, port: u16| Owner {
        server: ServerId::new(id),
        endpoint: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let (a, b) = (owner("a", 1), owner("b", 2));
    let g = GrainId::new(GrainType::of("Echo"), 7i64);
    let lease = Duration::from_secs(30);
    assert_eq!(dir.claim(&g, &a, lease).await.unwrap(), Claim::Won);
    assert_eq!(dir.claim(&g, &b, lease).await.unwrap(), Claim::Owned(a.clone()));
    assert_eq!(dir.lookup(&g).await.unwrap(), Some(a.clone()));
    let ttl = Duration::from_secs(10);
    assert!(!dir.suspect(&a.server, &b.server, 2, ttl).await.unwrap(), "one vote");
    assert!(dir.suspect(&a.server, &ServerId::new("c"), 2, ttl).await.unwrap(), "a quorum");
    assert_eq!(dir.claim(&g, &b, lease).await.unwrap(), Claim::Won, "released");

    // State: loaded, written, fenced.
    let storage = Storage::redis(&url, "c1", "game", Duration::from_secs(2)).unwrap();
    let mut first = storage.load::<Vec<u64>>(&g).await.unwrap();
    let mut second = storage.load::<Vec<u64>>(&g).await.unwrap();
    first.push(1);
    assert_eq!(first.write().await, Err(StateError::Conflict));
    second.push(2);
    second.write().await.unwrap();
    assert_eq!(*storage.load::<Vec<u64>>(&g).await.unwrap(), vec![2]);

    // Reminders: kept, taken when due (with a lease), fired.
    let reminders =
        grainwire::persistence::Reminders::redis(&url, "c1", "game", Duration::from_secs(2))
            .unwrap();
    let r = grainwire::persistence::Reminder {
        grain: g.clone(),
        name: "daily".into(),
        interface: grainwire::proto::ids::InterfaceId::of("Echo"),
        version: 1,
        method: grainwire::proto::ids::MethodId(1),
        args: Vec::new(),
        due_ms: 1_000,
        period_ms: 1_000,
    };
    let store = reminders.store();
    store.set(&r).await.unwrap();
    assert_eq!(store.take_due(1_000, 500, 10).await.unwrap(), vec![r.clone()]);
    assert!(store.take_due(1_200, 500, 10).await.unwrap().is_empty(), "leased");
    store.fired(&r, None).await.unwrap();
    assert!(store.take_due(9_000, 500, 10).await.unwrap().is_empty(), "a one-shot is gone");

    // Membership: two servers register in the cluster; a client given only its URL finds
    // both and calls them.
    let serve = |id: &str| {
        let config = ServerConfig {
            server_id: Some(id.into()),
            cluster_id: "c2".into(),
            membership: MembershipConfig {
                redis: Some(url.clone()),
                ttl: Duration::from_millis(1500),
                heartbeat: Duration::from_millis(300),
            },
            ..ServerConfig::default()
        };
        let name = id.to_string();
        Server::builder(config)
            .host(Echo::host(move |_| EchoGrain(name.clone())))
            .bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
    };
    let _servers = [serve("x"), serve("y")];
    let config = ClientConfig {
        cluster_id: "c2".into(),
        connect_timeout: Duration::from_secs(10),
        discovery: DiscoveryConfig { redis: vec![url.clone()], ..DiscoveryConfig::default() },
        ..ClientConfig::default()
    };
    let c = Client::builder().config(config).connect().await.unwrap();
    let start = std::time::Instant::now();
    while c.servers().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "the client found both servers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..40i64 {
        seen.insert(c.grain::<EchoRef>(k).whoami().await.unwrap());
    }
    assert_eq!(seen.len(), 2, "both servers serve: {seen:?}");
}
