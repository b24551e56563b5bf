//! Shards: several servers in one process, each on a current-thread runtime of its own thread,
//! over real loopback UDP. Clients connected to all of them place each grain on one shard, the
//! same one from every client; a shard's error at start is returned; shutdown drains them.

use std::collections::{BTreeMap, BTreeSet};

use grainwire::server::{ServerError, Shards};
use grainwire::{Client, GrainId, Server, ServerConfig};

#[grainwire::grain]
trait Where {
    /// The id of the server (shard) the grain lives on, and how many calls it has had.
    async fn here(&mut self) -> (String, u64);
}

struct WhereGrain {
    server: String,
    calls: u64,
}

impl Where for WhereGrain {
    async fn here(&mut self) -> (String, u64) {
        self.calls += 1;
        (self.server.clone(), self.calls)
    }
}

fn shard(i: usize) -> Result<Server, ServerError> {
    let id = format!("shard-{i}");
    let config = ServerConfig { server_id: Some(id.clone()), ..ServerConfig::default() };
    Server::builder(config)
        .host(Where::host(move |_: &GrainId| WhereGrain { server: id.clone(), calls: 0 }))
        .bind("127.0.0.1:0".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_grain_lives_on_one_shard_for_every_client() {
    let shards = Shards::start(2, shard).unwrap();
    assert_eq!(shards.len(), 2);
    let addrs = shards.local_addrs();
    let ids: BTreeSet<String> = shards.servers().map(|s| s.server_id().to_string()).collect();
    assert_eq!(ids, BTreeSet::from(["shard-0".to_string(), "shard-1".to_string()]));
    let a = Client::builder().servers(addrs.clone()).connect().await.unwrap();
    let b = Client::builder().servers(addrs).connect().await.unwrap();
    let mut placed = BTreeMap::new();
    for k in 0..200i64 {
        let (on, calls) = a.grain::<WhereRef>(k).here().await.unwrap();
        assert_eq!(calls, 1);
        let (again, calls) = b.grain::<WhereRef>(k).here().await.unwrap();
        assert_eq!((&again, calls), (&on, 2), "grain {k}: one activation, whoever calls");
        *placed.entry(on).or_insert(0) += 1;
    }
    assert_eq!(placed.len(), 2, "both shards hold grains: {placed:?}");
    assert!(placed.values().all(|n| *n >= 40), "spread: {placed:?}");
    shards.shutdown().await;
}

#[test]
fn a_shard_that_cannot_start_fails_the_start() {
    let failed = Shards::start(3, |i| {
        if i == 1 { Err(ServerError::Config("refused for the test")) } else { shard(i) }
    });
    assert!(matches!(failed, Err(ServerError::Config("refused for the test"))), "{failed:?}");
}
