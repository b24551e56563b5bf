//! One activation per grain across the fleet, over the simulated network with the in-memory
//! directory shared by the servers: two clients with different server lists calling the same
//! grains get one activation per grain (redirects, and a client connecting an owner it did not
//! know); a round-robin strategy still gets one activation per grain; a second redirect is an
//! error; a directory that cannot be asked falls back or fails closed as the type says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::client::RoundRobin;
use grainwire::directory::{
    BoxFuture, Claim, DirectoryError, GrainDirectory, MemoryDirectory, Owner,
};
use grainwire::proto::ids::RequestId;
use grainwire::proto::wire::rpc::{self, Status};
use grainwire::server::DirectoryUse;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, GrainId, Server, ServerConfig, ServerId};

mod support;
use support::{ScriptedServer, addr, join_all};

#[grainwire::grain]
trait Room {
    /// The server's id.
    async fn whoami(&mut self) -> String;
}

struct RoomGrain(String);

impl Room for RoomGrain {
    async fn whoami(&mut self) -> String {
        self.0.clone()
    }
}

/// Activations made: (server, grain key).
type Made = Arc<Mutex<Vec<(String, i64)>>>;

fn server_addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7000", i + 1).parse().unwrap()
}

fn serve(
    net: &SimNetwork,
    i: usize,
    dir: Arc<dyn GrainDirectory>,
    made: &Made,
    how: DirectoryUse,
) -> Server {
    let id = format!("s{i}");
    let made = made.clone();
    let config = ServerConfig { server_id: Some(id.clone()), ..ServerConfig::default() };
    Server::builder(config)
        .directory(dir)
        .host(
            Room::host(move |g: &GrainId| {
                let grainwire::GrainKey::Int(k) = g.key else { panic!("int keys") };
                made.lock().unwrap().push((id.clone(), k));
                RoomGrain(id.clone())
            })
            .directory(how),
        )
        .bind_sim(net, server_addr(i))
        .unwrap()
}

fn net(seed: u64, loss: f64) -> SimNetwork {
    SimNetwork::new(
        seed,
        SimConfig { delay: Duration::from_millis(2), loss, ..SimConfig::default() },
    )
}

async fn client(net: &SimNetwork, at: &str, servers: &[usize], config: ClientConfig) -> Client {
    Client::builder()
        .config(ClientConfig { default_timeout: Duration::from_secs(30), ..config })
        .servers(servers.iter().map(|i| server_addr(*i)))
        .connect_sim(net, addr(at))
        .await
        .unwrap()
}

/// Calls grains `keys` through `c`; the server that answered each.
async fn call_all(c: &Client, keys: std::ops::Range<i64>) -> BTreeMap<i64, String> {
    let refs: Vec<(i64, RoomRef)> = keys.map(|k| (k, c.grain(k))).collect();
    let answers = join_all(refs.iter().map(|(_, r)| r.whoami())).await;
    refs.iter().map(|(k, _)| *k).zip(answers.into_iter().map(|a| a.unwrap())).collect()
}

fn once_each(made: &Made, n: i64) {
    let made = made.lock().unwrap();
    let mut per_key: BTreeMap<i64, Vec<&String>> = BTreeMap::new();
    for (s, k) in made.iter() {
        per_key.entry(*k).or_default().push(s);
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "grains activated more than once: {twice:?}");
    assert_eq!(per_key.len() as i64, n, "every grain activated");
}

#[tokio::test(start_paused = true)]
async fn two_clients_with_different_server_lists_share_one_activation_per_grain() {
    // Clean, then ten seeds under 10 % loss.
    let runs = std::iter::once((1, 0.0)).chain((10..20).map(|seed| (seed, 0.1)));
    for (seed, loss) in runs {
        let net = net(seed, loss);
        let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
        let made = Made::default();
        let _servers: Vec<Server> =
            (0..4).map(|i| serve(&net, i, dir.clone(), &made, DirectoryUse::FallBack)).collect();
        let a = client(&net, "10.0.1.1:1", &[0, 1, 2], ClientConfig::default()).await;
        let b = client(&net, "10.0.1.2:1", &[1, 2, 3], ClientConfig::default()).await;
        // Both call the same 1,000 grains at once.
        let (ra, rb) = tokio::join!(call_all(&a, 0..1000), call_all(&b, 0..1000));
        once_each(&made, 1000);
        assert_eq!(ra, rb, "both reach the one activation of every grain (seed {seed})");
        // b did not know s0, yet its grains answered from s0: b connected it.
        assert!(rb.values().any(|s| s == "s0"), "b followed redirects to a server it did not know");
        // Later calls go straight to the owner: nothing new is activated.
        let again = call_all(&b, 0..1000).await;
        assert_eq!(again, rb);
        once_each(&made, 1000);
    }
}

#[tokio::test(start_paused = true)]
async fn round_robin_with_the_directory_still_activates_each_grain_once() {
    let net = net(3, 0.0);
    let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
    let made = Made::default();
    let _servers: Vec<Server> =
        (0..3).map(|i| serve(&net, i, dir.clone(), &made, DirectoryUse::FallBack)).collect();
    let c = Client::builder()
        .servers((0..3).map(server_addr))
        .strategy(RoundRobin)
        .connect_sim(&net, addr("10.0.1.1:1"))
        .await
        .unwrap();
    let mut seen: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for round in 0..3 {
        for (k, s) in call_all(&c, 0..100).await {
            seen.entry(k).or_default().insert(s);
        }
        let _ = round;
    }
    once_each(&made, 100);
    assert!(seen.values().all(|s| s.len() == 1), "every call ran on its grain's one activation");
}

/// A scripted server's answer to call `id`: the grain lives on server `to`, reached at `at`.
fn redirect(conn: &grainwire::transport::Connection, id: RequestId, to: &str, at: &str) {
    let mut out = Vec::new();
    rpc::encode_response(&mut out, id, Status::Redirect);
    rpc::encode_redirect(&mut out, to, at);
    conn.send(grainwire::transport::Delivery::reliable_ordered(0), bytes::Bytes::from(out))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_second_redirect_for_one_call_is_an_error() {
    let net = SimNetwork::new(4, SimConfig::default());
    let mut a = ScriptedServer::start(&net, "10.0.0.1:7000", "a", &[RoomRef::info()]);
    let mut b = ScriptedServer::start(&net, "10.0.0.2:7000", "b", &[RoomRef::info()]);
    let c = Client::builder()
        .servers([server_addr(0), server_addr(1)])
        .connect_sim(&net, addr("10.0.1.1:1"))
        .await
        .unwrap();
    let r: RoomRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let call = tokio::spawn(async move { r.whoami().await });
    let (conn, id, _, _) = a.request().await;
    redirect(&conn, id, "b", "10.0.0.2:7000");
    // b gets it, and sends it back to a.
    let (conn, id, _, _) = b.request().await;
    redirect(&conn, id, "a", "10.0.0.1:7000");
    assert!(matches!(call.await.unwrap(), Err(CallError::RedirectLoop)));
    assert!(a.next_within(Duration::from_millis(500)).await.is_none(), "no third hop");
}

/// A directory that cannot be asked.
struct Down;

impl GrainDirectory for Down {
    fn lookup<'a>(
        &'a self,
        _: &'a GrainId,
    ) -> BoxFuture<'a, Result<Option<Owner>, DirectoryError>> {
        Box::pin(async { Err(DirectoryError::Unavailable("down".into())) })
    }
    fn claim<'a>(
        &'a self,
        _: &'a GrainId,
        _: &'a Owner,
        _: Duration,
    ) -> BoxFuture<'a, Result<Claim, DirectoryError>> {
        Box::pin(async { Err(DirectoryError::Unavailable("down".into())) })
    }
    fn renew<'a>(
        &'a self,
        _: &'a [GrainId],
        _: &'a ServerId,
        _: Duration,
    ) -> BoxFuture<'a, Result<Vec<GrainId>, DirectoryError>> {
        Box::pin(async { Err(DirectoryError::Unavailable("down".into())) })
    }
    fn release<'a>(
        &'a self,
        _: &'a GrainId,
        _: &'a ServerId,
    ) -> BoxFuture<'a, Result<(), DirectoryError>> {
        Box::pin(async { Err(DirectoryError::Unavailable("down".into())) })
    }
    fn release_all<'a>(&'a self, _: &'a ServerId) -> BoxFuture<'a, Result<usize, DirectoryError>> {
        Box::pin(async { Err(DirectoryError::Unavailable("down".into())) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_directory_that_cannot_be_asked_falls_back_or_fails_closed_as_the_type_says() {
    for (how, served) in [
        (DirectoryUse::FallBack, true),
        (DirectoryUse::FailClosed, false),
        (DirectoryUse::Off, true),
    ] {
        let net = net(5, 0.0);
        let made = Made::default();
        let _s = serve(&net, 0, Arc::new(Down), &made, how);
        let c = client(&net, "10.0.1.1:1", &[0], ClientConfig::default()).await;
        let r: RoomRef = c.grain(7);
        let got = r.whoami().await;
        match served {
            true => assert_eq!(got.unwrap(), "s0", "{how:?}: activated anyway"),
            false => assert!(matches!(got, Err(CallError::Unavailable)), "{how:?}: {got:?}"),
        }
        assert_eq!(made.lock().unwrap().len(), usize::from(served), "{how:?}");
    }
}

#[grainwire::grain]
trait Seq {
    /// Records `n`.
    async fn put(&mut self, n: u64) -> u64;
}

#[tokio::test(start_paused = true)]
async fn calls_to_one_grain_stay_in_order_across_a_redirect() {
    let net = SimNetwork::new(6, SimConfig::default());
    let mut a = ScriptedServer::start(&net, "10.0.0.1:7000", "a", &[SeqRef::info()]);
    let mut b = ScriptedServer::start(&net, "10.0.0.2:7000", "b", &[SeqRef::info()]);
    let c = Client::builder()
        .servers([server_addr(0), server_addr(1)])
        .connect_sim(&net, addr("10.0.1.1:1"))
        .await
        .unwrap();
    let r: SeqRef = c.grain(1);
    let r = r.prefer(&ServerId::new("a"));
    let put = |n: u64| {
        let r = r.clone();
        tokio::spawn(async move { r.put(n).await })
    };
    // Four calls reach a, which does not own the grain.
    let mut calls = Vec::new();
    let mut at_a = Vec::new();
    for n in 1..=4 {
        calls.push(put(n));
        at_a.push(a.request().await);
    }
    // a answers the last first; a fifth call is made while the others are still at a.
    let (conn, id, _, _) = &at_a[3];
    redirect(conn, *id, "b", "10.0.0.2:7000");
    tokio::time::sleep(Duration::from_millis(50)).await;
    calls.push(put(5));
    for (conn, id, _, _) in at_a[..3].iter().rev() {
        redirect(conn, *id, "b", "10.0.0.2:7000");
    }
    // b gets all five, in the order they were made.
    let mut order = Vec::new();
    for _ in 0..5 {
        let (conn, id, _, args) = b.request().await;
        let n: (u64,) = postcard::from_bytes(&args).unwrap();
        order.push(n.0);
        support::answer(&conn, id, Status::Ok, &n.0);
    }
    assert_eq!(order, [1, 2, 3, 4, 5]);
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), n as u64 + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_killed_owners_grain_comes_back_once_on_another_server() {
    let net = net(7, 0.0);
    let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
    let made = Made::default();
    let serve_leased = |i: usize| {
        let id = format!("s{i}");
        let made = made.clone();
        let mut config = ServerConfig { server_id: Some(id.clone()), ..ServerConfig::default() };
        config.directory.lease = Duration::from_secs(1);
        Server::builder(config)
            .directory(dir.clone())
            .host(Room::host(move |g: &GrainId| {
                let grainwire::GrainKey::Int(k) = g.key else { panic!("int keys") };
                made.lock().unwrap().push((id.clone(), k));
                RoomGrain(id.clone())
            }))
            .bind_sim(&net, server_addr(i))
            .unwrap()
    };
    let mut servers: Vec<Option<Server>> = (0..3).map(|i| Some(serve_leased(i))).collect();
    let c = client(&net, "10.0.1.1:1", &[0, 1, 2], ClientConfig::default()).await;
    let r: RoomRef = c.grain(5);
    let owner = r.whoami().await.unwrap();
    let x: usize = owner[1..].parse().unwrap();
    // The owner dies (no graceful stop, no release).
    net.kill(server_addr(x));
    drop(servers[x].take());
    // Calls fail (the owner is unreachable) until its lease lapses; then the grain is
    // activated anew on another server, once.
    let r = r.with_timeout(Duration::from_millis(500));
    let mut failures = 0;
    let back = loop {
        match r.whoami().await {
            Ok(s) => break s,
            Err(_) => failures += 1,
        }
        assert!(failures < 100, "the grain never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(back, owner);
    for _ in 0..10 {
        assert_eq!(r.whoami().await.unwrap(), back, "it stays on its new server");
    }
    let made = made.lock().unwrap();
    let of_5: Vec<&String> = made.iter().filter(|(_, k)| *k == 5).map(|(s, _)| s).collect();
    assert_eq!(of_5, [&owner, &back], "activated once before the death and once after");
}

#[tokio::test(start_paused = true)]
async fn the_location_cache_is_bounded() {
    for (cap, at_most) in [(1000, 0), (2, 8)] {
        let net = net(8, 0.0);
        let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
        let made = Made::default();
        let servers: Vec<Server> =
            (0..2).map(|i| serve(&net, i, dir.clone(), &made, DirectoryUse::FallBack)).collect();
        // Ten grains activated on s0 by a client that knows only s0.
        let only_s0 = client(&net, "10.0.1.1:1", &[0], ClientConfig::default()).await;
        call_all(&only_s0, 0..10).await;
        // A client that prefers s1 is redirected once per grain, then remembers up to `cap`.
        let config = ClientConfig { location_cache: cap, ..ClientConfig::default() };
        let c = client(&net, "10.0.1.2:1", &[0, 1], config).await;
        let pref = ServerId::new("s1");
        for k in 0..10 {
            let r: RoomRef = c.grain(k);
            assert_eq!(r.prefer(&pref).whoami().await.unwrap(), "s0");
        }
        let redirects = || servers[1].stats().redirects;
        let first = redirects();
        assert_eq!(first, 10, "one redirect per grain");
        // The two remembered last go straight to s0; the others are redirected again only if
        // the cache dropped them.
        for k in (8..10).chain(0..8) {
            let r: RoomRef = c.grain(k);
            assert_eq!(r.prefer(&pref).whoami().await.unwrap(), "s0");
            if k == 9 {
                assert_eq!(redirects(), first, "the last two remembered (cache of {cap})");
            }
        }
        let again = redirects() - first;
        assert_eq!(again, at_most, "cache of {cap}: {again} redirects the second time");
        once_each(&made, 10);
    }
}
