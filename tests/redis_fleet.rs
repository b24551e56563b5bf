//! Fleet membership in a real Redis (a throwaway `redis-server` each test starts on a free
//! loopback port; see `support/redis.rs`), with servers and clients on loopback UDP in real
//! time: three servers register, a client given only the Redis URL routes to all three, one
//! leaves gracefully, one is killed (its entry lapses), a fourth joins, Redis restarts mid-run
//! (servers keep serving, clients keep their topology, both recover), a game client given one
//! seed finds the Redis fleet through it, and clusters do not see each other.

use std::time::{Duration, Instant};

use grainwire::client::{ClientError, ServerAddr};
use grainwire::topology::redis::MembershipConfig;
use grainwire::topology::{Backoff, DiscoveryConfig, DiscoveryError};
use grainwire::{Client, ClientConfig, Server, ServerConfig};

mod support;
use support::redis::RedisServer;

#[grainwire::grain]
trait Echo {
    /// The server's id.
    async fn whoami(&mut self) -> String;
}

struct EchoGrain(String);

impl Echo for EchoGrain {
    async fn whoami(&mut self) -> String {
        self.0.clone()
    }
}

const TTL: Duration = Duration::from_millis(1500);
const HEARTBEAT: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(500);

fn serve(redis: &RedisServer, cluster: &str, id: &str) -> Server {
    let config = ServerConfig {
        server_id: Some(id.into()),
        cluster_id: cluster.into(),
        membership: MembershipConfig { redis: Some(redis.url()), ttl: TTL, heartbeat: HEARTBEAT },
        ..ServerConfig::default()
    };
    let name = id.to_string();
    Server::builder(config)
        .host(Echo::host(move |_| EchoGrain(name.clone())))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
}

fn client_config(cluster: &str) -> ClientConfig {
    ClientConfig {
        cluster_id: cluster.into(),
        seed: Some(3),
        connect_timeout: Duration::from_secs(10),
        discovery: DiscoveryConfig {
            interval: POLL,
            timeout: Duration::from_secs(1),
            backoff: Backoff { max: Duration::from_millis(400), ..Backoff::default() },
            ..DiscoveryConfig::default()
        },
        ..ClientConfig::default()
    }
}

fn ids(c: &Client) -> Vec<String> {
    let mut ids: Vec<String> = c.servers().iter().map(|s| s.id.to_string()).collect();
    ids.sort();
    ids
}

/// Waits (real time, at most `within`) until `done()`; returns how long it took.
async fn within(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Calls `n` grains; the servers that answered.
async fn spread(c: &Client, n: i64) -> Vec<String> {
    let mut seen = Vec::new();
    for k in 0..n {
        let e: EchoRef = c.grain(k);
        let s = e.whoami().await.unwrap_or_else(|e| panic!("grain {k}: {e}"));
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn a_client_with_only_the_redis_url_follows_the_fleet_through_leaves_kills_joins_and_a_restart()
 {
    let Some(mut redis) = RedisServer::start("redis fleet") else { return };
    let mut servers: Vec<Option<Server>> =
        ["a", "b", "c"].iter().map(|id| Some(serve(&redis, "t1", id))).collect();
    let client =
        Client::builder().config(client_config("t1")).redis(redis.url()).connect().await.unwrap();
    within("all three", Duration::from_secs(5), || ids(&client).len() == 3).await;
    assert_eq!(spread(&client, 200).await, ["a", "b", "c"], "routed to all three");

    // A fourth registers: pushed to the client.
    let d = serve(&redis, "t1", "d");
    let joined = within("d joined", Duration::from_secs(5), || ids(&client).len() == 4).await;
    eprintln!("registered -> routed: {joined:?}");

    // "a" leaves gracefully: it deregisters and drains.
    servers[0].take().unwrap().shutdown().await;
    let left =
        within("a left", Duration::from_secs(5), || !ids(&client).contains(&"a".into())).await;
    eprintln!("graceful leave -> gone: {left:?}");
    // It turned ineligible first (drained), then deregistered: the topology follows.
    let nodes = || client.topology().unwrap().nodes().len();
    within("a deregistered", Duration::from_secs(5), || nodes() == 3).await;

    // "b" is killed: no deregistration; its entry lapses after its TTL.
    let b_addr = ServerAddr::from(servers[1].as_ref().unwrap().local_addr());
    let killed = Instant::now();
    drop(servers[1].take());
    let lapse =
        within("b lapsed", TTL * 4, || client.topology().is_some_and(|t| t.get(&b_addr).is_none()))
            .await;
    eprintln!("killed -> out of the topology: {:?} (ttl {TTL:?})", killed.elapsed().max(lapse));
    within("b gone", Duration::from_secs(5), || ids(&client) == ["c", "d"]).await;

    // Redis goes away: servers keep serving, the client keeps its topology and servers.
    redis.stop();
    tokio::time::sleep(HEARTBEAT * 3).await; // time passing with Redis down is the point
    assert_eq!(ids(&client), ["c", "d"]);
    assert_eq!(spread(&client, 50).await, ["c", "d"]);
    assert_eq!(client.topology().unwrap().nodes().len(), 2, "the last topology is kept");

    // It returns empty: servers register again at their next heartbeat, and a newcomer that
    // registers after the restart reaches the client too.
    redis.start_again();
    let e = serve(&redis, "t1", "e");
    // Nobody is drained while the others re-register (at their next heartbeat).
    let mut seen = Vec::new();
    within("recovered", Duration::from_secs(10), || {
        let now = ids(&client);
        seen.push(now.clone());
        now == ["c", "d", "e"]
    })
    .await;
    assert!(
        seen.iter().all(|ids| ids.contains(&"c".into()) && ids.contains(&"d".into())),
        "a server that only had to re-register was drained: {seen:?}"
    );
    assert_eq!(client.topology().unwrap().nodes().len(), 3);
    assert_eq!(spread(&client, 200).await, ["c", "d", "e"]);
    drop((d, e));
}

#[tokio::test]
async fn a_game_client_given_one_seed_sees_the_redis_fleet_and_clusters_stay_apart() {
    let Some(mut redis) = RedisServer::start("redis seed and clusters") else { return };
    let a = serve(&redis, "t2", "a");
    let b = serve(&redis, "t2", "b");
    let other = serve(&redis, "elsewhere", "x");
    // Every server serves the fleet it sees in Redis: one seed is enough.
    within("a sees b", Duration::from_secs(5), || a.topology().nodes().len() == 2).await;
    let client = Client::builder()
        .config(client_config("t2"))
        .seeds([a.local_addr()])
        .connect()
        .await
        .unwrap();
    within("both", Duration::from_secs(5), || ids(&client) == ["a", "b"]).await;
    assert_eq!(spread(&client, 100).await, ["a", "b"]);
    // The other cluster's server registered under its own keys: neither sees the other.
    assert_eq!(other.topology().nodes().len(), 1);
    assert!(client.topology().unwrap().get(&ServerAddr::from(other.local_addr())).is_none());
    // A member written without its change message (a lost push) is seen at the next poll.
    let silent = serde_json::json!({
        "server_id": "ghost", "endpoint": "127.0.0.1:9", "eligible": true,
        "priority": 0, "metadata": {},
    });
    let r = redis::Client::open(redis.url()).unwrap();
    let mut con = r.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("grainwire:{t2}:game:member:ghost")
        .arg(silent.to_string())
        .arg("PX")
        .arg(60_000)
        .cmd("SADD")
        .arg("grainwire:{t2}:game:members")
        .arg("ghost")
        .query_async(&mut con)
        .await
        .unwrap();
    let ghost: ServerAddr = "127.0.0.1:9".parse().unwrap();
    let polled = within("the silent member", POLL * 3, || {
        client.topology().is_some_and(|t| t.get(&ghost).is_some())
    })
    .await;
    eprintln!("registered without a push -> in the topology: {polled:?} (heartbeat {HEARTBEAT:?})");
    // A client of a cluster with no member finds nothing: a typed error.
    let quick = ClientConfig { connect_timeout: Duration::from_secs(2), ..client_config("none") };
    let err = Client::builder().config(quick).redis(redis.url()).connect().await.unwrap_err();
    assert!(matches!(err, ClientError::Discovery(DiscoveryError::Empty)), "{err:?}");
    // Redis restarts empty: the seed bridges the gap (its fleet merged with the one before for
    // a TTL), so its clients drain nobody while the members re-register.
    redis.stop();
    redis.start_again();
    let start = Instant::now();
    while start.elapsed() < HEARTBEAT * 3 {
        assert_eq!(ids(&client), ["a", "b"], "drained while re-registering");
        assert_eq!(a.topology().nodes().len(), 3, "the seed keeps a, b and the ghost");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop((b, other));
}

#[tokio::test]
async fn with_the_redis_directory_two_clients_with_different_lists_share_one_activation_per_grain()
{
    let Some(redis) = RedisServer::start("redis directory fleet") else { return };
    let servers: Vec<Server> = ["a", "b", "c"].iter().map(|id| serve(&redis, "t3", id)).collect();
    let at = |i: usize| servers[i].local_addr();
    let config = || ClientConfig { cluster_id: "t3".into(), ..ClientConfig::default() };
    let one = Client::builder().config(config()).servers([at(0), at(1)]).connect().await.unwrap();
    let two = Client::builder().config(config()).servers([at(1), at(2)]).connect().await.unwrap();
    // First calls to 200 new grains (each claims its grain in Redis), then the same grains
    // again (claimed: no directory trip), one at a time: the cost of a claim.
    let mut first = Vec::new();
    let mut again = Vec::new();
    for (samples, keys) in [(&mut first, 0..200), (&mut again, 0..200)] {
        for k in keys {
            let e: EchoRef = one.grain(k);
            let t = Instant::now();
            e.whoami().await.unwrap();
            samples.push(t.elapsed());
        }
    }
    first.sort();
    again.sort();
    eprintln!(
        "first call to a grain (claims it in Redis): p50 {:?}; a claimed grain: p50 {:?}",
        first[100], again[100]
    );
    // The other client, with another list, reaches the same activations.
    let mut answered = Vec::new();
    for k in 0..200 {
        let (a, b): (EchoRef, EchoRef) = (one.grain(k), two.grain(k));
        let (x, y) = (a.whoami().await.unwrap(), b.whoami().await.unwrap());
        assert_eq!(x, y, "grain {k}");
        answered.push(x);
    }
    let activations: usize = servers.iter().map(Server::activation_count).sum();
    assert_eq!(activations, 200, "one activation per grain in the fleet");
    assert!(answered.contains(&"a".to_string()), "client two followed redirects to a");

    // a is killed: once its membership lapses, its grains are released (or taken over) and
    // each comes back once, on another server, for both clients.
    let mut servers: Vec<Option<Server>> = servers.into_iter().map(Some).collect();
    let of_a: Vec<i64> = (0..200).filter(|k| answered[*k as usize] == "a").collect();
    drop(servers[0].take());
    let k = of_a[0];
    let start = Instant::now();
    let back = loop {
        let e: EchoRef = two.grain(k);
        if let Ok(s) = e.with_timeout(Duration::from_millis(500)).whoami().await {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "grain {k} never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("a killed -> its grain {k} served again on {back} after {:?}", start.elapsed());
    assert_ne!(back, "a");
    let e: EchoRef = one.grain(k);
    let again = loop {
        if let Ok(s) = e.with_timeout(Duration::from_millis(500)).whoami().await {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "client one never reached grain {k}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again, back, "one activation, both clients");
    let survivors: usize = servers.iter().flatten().map(Server::activation_count).sum();
    let b_and_c = 200 - of_a.len();
    assert_eq!(survivors, b_and_c + 1, "the survivors' grains and the one that came back");
}
