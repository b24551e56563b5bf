//! Following a fleet that changes, over the simulated network in virtual time: the polling
//! adapter's exact backoff instants, giving up a seed after its attempts, a stream's end, all
//! seeds down then one back, an unchanged topology, connect order, the refresh policy, a
//! running client following joins, leaves and ineligible nodes with calls in flight, and the
//! servers themselves as the source (a game client given one seed finds the fleet).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use grainwire::client::{Affinity, ClientError, ClientEvent, ConnectMode};
use grainwire::error::CallErrorKind;
use grainwire::topology::{
    Backoff, BoxFuture, ClusterNode, DiscoveryConfig, DiscoveryError, PollingSource, RefreshPolicy,
    StreamingSource, Topology, TopologyStream,
};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig, ServerId};
use tokio::sync::broadcast;
use tokio::time::Instant;

mod support;
use support::{join_all, until, wait_until};

#[grainwire::grain]
trait Echo {
    /// Waits `ms` (virtual time); returns the server's id.
    async fn slow(&mut self, ms: u64) -> String;
}

struct EchoGrain(String);

impl Echo for EchoGrain {
    async fn slow(&mut self, ms: u64) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.0.clone()
    }
}

fn server_addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7000", i + 1).parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    format!("10.0.1.{}:9000", i + 1).parse().unwrap()
}

fn net() -> SimNetwork {
    SimNetwork::new(
        3,
        SimConfig {
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            ..SimConfig::default()
        },
    )
}

fn serve(net: &SimNetwork, i: usize, config: ServerConfig) -> Server {
    let config = ServerConfig { server_id: Some(format!("s{i}")), ..config };
    let id = format!("s{i}");
    Server::builder(config)
        .host(Echo::host(move |_| EchoGrain(id.clone())))
        .bind_sim(net, server_addr(i))
        .unwrap()
}

fn node(i: usize) -> ClusterNode {
    ClusterNode::new(server_addr(i))
}

fn topology(nodes: impl IntoIterator<Item = ClusterNode>) -> Topology {
    Topology::new(nodes)
}

/// Discovery options with exact, jitter-free waits.
fn exact(max_attempts: u32) -> DiscoveryConfig {
    DiscoveryConfig {
        interval: Duration::from_secs(10),
        timeout: Duration::from_millis(500),
        max_attempts,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        },
        ..DiscoveryConfig::default()
    }
}

fn config(discovery: DiscoveryConfig) -> ClientConfig {
    ClientConfig {
        seed: Some(7),
        connect_timeout: Duration::from_secs(30),
        discovery,
        ..ClientConfig::default()
    }
}

/// What one fetch of a [`Scripted`] source does.
#[derive(Debug, Clone)]
enum Step {
    Give(Topology),
    Fail,
    /// Never answers (the client's timeout ends it).
    Hang,
}

/// A polling source that plays a script per seed (the last step repeats) and records when
/// each seed was asked.
#[derive(Clone, Default)]
struct Scripted {
    scripts: Arc<Mutex<Vec<VecDeque<Step>>>>,
    asked: Arc<Mutex<Vec<(usize, Instant)>>>,
}

impl Scripted {
    fn new(scripts: Vec<Vec<Step>>) -> Self {
        let scripts = scripts.into_iter().map(VecDeque::from).collect();
        Self { scripts: Arc::new(Mutex::new(scripts)), asked: Arc::default() }
    }

    /// When each seed was asked, relative to `t0`, in ms.
    fn asked_ms(&self, t0: Instant) -> Vec<(usize, u128)> {
        let asked = self.asked.lock().unwrap();
        asked.iter().map(|(s, t)| (*s, t.duration_since(t0).as_millis())).collect()
    }

    fn set(&self, seed: usize, steps: Vec<Step>) {
        self.scripts.lock().unwrap()[seed] = steps.into();
    }
}

impl PollingSource for Scripted {
    fn seeds(&self) -> Vec<String> {
        (0..self.scripts.lock().unwrap().len()).map(|i| format!("seed{i}")).collect()
    }

    fn fetch(&self, seed: usize) -> BoxFuture<'_, Result<Topology, DiscoveryError>> {
        self.asked.lock().unwrap().push((seed, Instant::now()));
        let step = {
            let mut scripts = self.scripts.lock().unwrap();
            let script = &mut scripts[seed];
            if script.len() > 1 { script.pop_front().unwrap() } else { script[0].clone() }
        };
        Box::pin(async move {
            match step {
                Step::Give(t) => Ok(t),
                Step::Fail => Err(DiscoveryError::Failed("scripted failure".into())),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

fn failures(events: &mut broadcast::Receiver<ClientEvent>) -> Vec<(String, Option<u128>, bool)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let ClientEvent::DiscoveryFailed { seed, retry_in, next_seed, .. } = e {
            out.push((seed, retry_in.map(|d| d.as_millis()), next_seed));
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn polling_backs_off_exactly_then_gives_the_seed_up_for_the_next() {
    let net = net();
    let _s0 = serve(&net, 0, ServerConfig::default());
    // Seed 0 fails three times (its maximum), seed 1 times out once, then answers.
    let src =
        Scripted::new(vec![vec![Step::Fail], vec![Step::Hang, Step::Give(topology([node(0)]))]]);
    let t0 = Instant::now();
    let client = Client::builder()
        .config(config(exact(3)))
        .polling_source(src.clone())
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    assert_eq!(client.servers().len(), 1);
    // seed0 at 0, +100 ms, +200 ms more (gives up at its third failure); seed1 at once,
    // times out after 500 ms, asked again 100 ms later.
    assert_eq!(src.asked_ms(t0), [(0, 0), (0, 100), (0, 300), (1, 300), (1, 900)]);
    let e: EchoRef = client.grain(1);
    assert_eq!(e.slow(0).await.unwrap(), "s0");
    assert_eq!(client.topology(), Some(topology([node(0)])));
}

#[tokio::test(start_paused = true)]
async fn failure_events_carry_each_retry_delay_and_when_a_seed_is_given_up() {
    let net = net();
    let _s0 = serve(&net, 0, ServerConfig::default());
    let src = Scripted::new(vec![vec![Step::Give(topology([node(0)]))], vec![Step::Fail]]);
    let client = Client::builder()
        .config(config(exact(5)))
        .polling_source(src.clone())
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    let mut events = client.events();
    // The next poll (10 s later) and the four after it fail: 100, 200, 400, 800 ms apart;
    // the fifth gives seed0 up for seed1, at once (seed0 had answered before).
    src.set(0, vec![Step::Fail]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let seen = failures(&mut events);
    assert_eq!(
        seen[..6],
        [
            ("seed0".into(), Some(100), false),
            ("seed0".into(), Some(200), false),
            ("seed0".into(), Some(400), false),
            ("seed0".into(), Some(800), false),
            ("seed0".into(), Some(0), true),
            ("seed1".into(), Some(100), false),
        ],
        "{seen:?}"
    );
    assert_eq!(client.topology(), Some(topology([node(0)])), "the last topology is kept");
    let e: EchoRef = client.grain(1);
    assert_eq!(e.slow(0).await.unwrap(), "s0", "and its servers serve on");
}

/// A streaming source: per seed, per subscription (the last one repeats), a list of
/// (delay, topology) pushes, then the stream ends.
/// One subscription's pushes: (delay in ms, topology).
type Script = Vec<(u64, Topology)>;

#[derive(Clone)]
struct Pushes {
    per_seed: Arc<Mutex<Vec<VecDeque<Script>>>>,
    opened: Arc<Mutex<Vec<(usize, Instant)>>>,
}

struct Played {
    left: VecDeque<(u64, Topology)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl futures_core::Stream for Played {
    type Item = Result<Topology, DiscoveryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some((ms, _)) = self.left.front() else { return Poll::Ready(None) };
        let ms = *ms;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.sleep = None;
                let (_, t) = self.left.pop_front().unwrap();
                Poll::Ready(Some(Ok(t)))
            }
        }
    }
}

impl StreamingSource for Pushes {
    fn seeds(&self) -> Vec<String> {
        (0..self.per_seed.lock().unwrap().len()).map(|i| format!("stream{i}")).collect()
    }

    fn subscribe(&self, seed: usize) -> TopologyStream {
        self.opened.lock().unwrap().push((seed, Instant::now()));
        let mut all = self.per_seed.lock().unwrap();
        let scripts = &mut all[seed];
        let script =
            if scripts.len() > 1 { scripts.pop_front().unwrap() } else { scripts[0].clone() };
        Box::pin(Played { left: script.into(), sleep: None })
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_followed_until_it_ends_then_the_next_seed_and_short_streams_back_off() {
    let net = net();
    let (_s0, _s1) =
        (serve(&net, 0, ServerConfig::default()), serve(&net, 1, ServerConfig::default()));
    let (a, ab) = (topology([node(0)]), topology([node(0), node(1)]));
    let src = Pushes {
        per_seed: Arc::new(Mutex::new(vec![
            // The same topology twice (nothing happens), then s1 joins; the stream ends at
            // 1.1 s. Opened again, it ends at once.
            VecDeque::from([
                vec![(0, a.clone()), (50, a.clone()), (50, ab.clone()), (1000, ab.clone())],
                vec![],
            ]),
            // Seed 1's first stream ends at once, empty; its next ones push the fleet and end
            // at once (a stream shorter than `min_refresh_interval` counts as failed).
            VecDeque::from([vec![], vec![(0, ab.clone())]]),
        ])),
        opened: Arc::default(),
    };
    let _t0 = Instant::now();
    let t0 = Instant::now();
    // On demand: `connect` returns at once, before the pushes.
    let client = Client::builder()
        .config(ClientConfig { mode: ConnectMode::OnDemand, ..config(exact(3)) })
        .streaming_source(src.clone())
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    let mut events = client.events();
    wait_until("s1 joined", Duration::from_secs(5), || {
        client.topology().is_some_and(|t| t.nodes().len() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let opened: Vec<(usize, u128)> = src
        .opened
        .lock()
        .unwrap()
        .iter()
        .map(|(s, t)| (*s, t.duration_since(t0).as_millis()))
        .collect();
    // stream0 lives 1.1 s; stream1 ends empty; stream0 ends empty: a round of failures waits
    // 100 ms; stream1 pushes and ends at once, stream0 ends: the second round waits 200 ms.
    assert_eq!(
        opened[..6],
        [(0, 0), (1, 1100), (0, 1100), (1, 1200), (0, 1200), (1, 1400)],
        "{opened:?}"
    );
    let diffs: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e {
            ClientEvent::TopologyChanged { diff } => Some(diff),
            _ => None,
        })
        .filter(|d| d.added != [node(0)]) // the first, if it came after we subscribed
        .collect();
    assert_eq!(diffs.len(), 1, "the same topology again changes nothing: {diffs:?}");
    assert_eq!(diffs[0].added, [node(1)]);
    let e: EchoRef = client.grain(1);
    assert!(e.slow(0).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn when_every_seed_is_down_rounds_back_off_until_one_returns() {
    let net = net();
    let _s0 = serve(&net, 0, ServerConfig::default());
    let src = Scripted::new(vec![vec![Step::Fail], vec![Step::Fail]]);
    let t0 = Instant::now();
    let client = Client::builder()
        .config(ClientConfig { mode: ConnectMode::OnDemand, ..config(exact(1)) })
        .polling_source(src.clone())
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // One attempt per seed: a round takes no time; rounds wait 100, 200, 400 ms.
    assert_eq!(
        src.asked_ms(t0)[..8],
        [(0, 0), (1, 0), (0, 100), (1, 100), (0, 300), (1, 300), (0, 700), (1, 700)]
    );
    src.set(1, vec![Step::Give(topology([node(0)]))]);
    wait_until("seed1 answered", Duration::from_secs(5), || client.topology().is_some()).await;
    let last = src.asked_ms(t0).last().copied().unwrap();
    assert_eq!(last, (1, 1500), "the next round, 800 ms after the fourth");
}

#[tokio::test(start_paused = true)]
async fn new_nodes_connect_in_the_sources_order_and_unusable_topologies_are_refused() {
    struct Reversed(Scripted);
    impl PollingSource for Reversed {
        fn seeds(&self) -> Vec<String> {
            self.0.seeds()
        }
        fn fetch(&self, seed: usize) -> BoxFuture<'_, Result<Topology, DiscoveryError>> {
            self.0.fetch(seed)
        }
        // "Same datacenter first" would read metadata; here: highest priority first.
        fn order(&self, a: &ClusterNode, b: &ClusterNode) -> std::cmp::Ordering {
            b.priority.cmp(&a.priority)
        }
    }
    let net = net();
    let _servers: Vec<Server> = (0..3).map(|i| serve(&net, i, ServerConfig::default())).collect();
    let prio = |i: usize, p: u32| ClusterNode { priority: p, ..node(i) };
    let full = topology([prio(0, 0), prio(1, 1), prio(2, 2)]);
    let none_eligible = topology([ClusterNode { eligible: false, ..node(0) }]);
    let src = Scripted::new(vec![vec![
        Step::Give(topology([])),
        Step::Give(none_eligible),
        Step::Give(full),
    ]]);
    let discovery = DiscoveryConfig { interval: Duration::from_millis(100), ..exact(3) };
    let client = Client::builder()
        .config(ClientConfig { mode: ConnectMode::OnDemand, ..config(discovery) })
        .polling_source(Reversed(src.clone()))
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    let mut events = client.events();
    let errors = async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let Ok(ClientEvent::DiscoveryFailed { error, next_seed, .. }) = events.recv().await {
                seen.push((error, next_seed));
            }
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(5), errors).await.unwrap();
    assert_eq!(
        seen,
        [(DiscoveryError::Empty, false), (DiscoveryError::NoEligibleNodes, false)],
        "refused, not applied"
    );
    wait_until("the full topology", Duration::from_secs(5), || client.topology().is_some()).await;
    // On demand, the first call connects the first node in the source's order: s2.
    let e: EchoRef = client.grain(1);
    assert_eq!(e.slow(0).await.unwrap(), "s2");
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_refreshes_at_once_as_the_policy_says() {
    let net = net();
    let _s0 = serve(&net, 0, ServerConfig::default());
    for (policy, refreshes) in [
        (RefreshPolicy::default(), true),
        (RefreshPolicy::never(), false),
        (RefreshPolicy::on([CallErrorKind::Timeout]), false),
        (
            RefreshPolicy::all([
                RefreshPolicy::on([CallErrorKind::ServerUnavailable]),
                RefreshPolicy::when(
                    |e| matches!(e, CallError::ServerUnavailable(s) if s.0.as_ref() == "s9"),
                ),
            ]),
            true,
        ),
        (
            RefreshPolicy::any([
                RefreshPolicy::never(),
                RefreshPolicy::on([CallErrorKind::ServerUnavailable]),
            ]),
            true,
        ),
    ] {
        let src = Scripted::new(vec![vec![Step::Give(topology([node(0)]))]]);
        let discovery = DiscoveryConfig { interval: Duration::from_secs(3600), ..exact(3) };
        let client = Client::builder()
            .config(config(discovery))
            .polling_source(src.clone())
            .refresh_policy(policy)
            .connect_sim(&net, client_addr(0))
            .await
            .unwrap();
        assert_eq!(src.asked.lock().unwrap().len(), 1);
        // A reference that requires a server the client does not have fails at once.
        let e: EchoRef = client.grain(1);
        let e = e.with_affinity(Affinity::Required(ServerId::new("s9")));
        assert!(matches!(e.slow(0).await, Err(CallError::ServerUnavailable(_))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let asked = src.asked.lock().unwrap().len();
        assert_eq!(asked == 2, refreshes, "asked {asked} times");
        client.disconnect().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_running_client_follows_joins_leaves_and_ineligible_nodes_with_calls_in_flight() {
    let net = net();
    let servers: Vec<Server> = (0..4).map(|i| serve(&net, i, ServerConfig::default())).collect();
    let src = Scripted::new(vec![vec![Step::Give(topology([node(0), node(1)]))]]);
    let discovery = DiscoveryConfig { interval: Duration::from_millis(200), ..exact(3) };
    let client = Client::builder()
        .config(config(discovery))
        .polling_source(src.clone())
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    assert_eq!(client.servers().len(), 2);
    let mut events = client.events();
    // Calls run all along: 40 waves of 20 calls of 50 ms each, on many grains.
    let calls = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for wave in 0..40i64 {
                let refs: Vec<EchoRef> = (0..20).map(|k| client.grain(wave * 20 + k)).collect();
                outcomes.extend(join_all(refs.iter().map(|r| r.slow(50))).await);
            }
            outcomes
        })
    };
    // s2 and s3 join.
    src.set(0, vec![Step::Give(topology([node(0), node(1), node(2), node(3)]))]);
    wait_until("four servers", Duration::from_secs(2), || client.servers().len() == 4).await;
    let changed = until(&mut events, |e| matches!(e, ClientEvent::TopologyChanged { .. })).await;
    let ClientEvent::TopologyChanged { diff } = changed else { unreachable!() };
    assert_eq!(diff.added, [node(2), node(3)]);
    // s1 becomes ineligible, s3 leaves the topology: both drained (their calls finish).
    let ineligible = ClusterNode { eligible: false, ..node(1) };
    src.set(0, vec![Step::Give(topology([node(0), ineligible.clone(), node(2)]))]);
    let changed = until(&mut events, |e| matches!(e, ClientEvent::TopologyChanged { .. })).await;
    let ClientEvent::TopologyChanged { diff } = changed else { unreachable!() };
    assert_eq!(diff.removed, [node(3)]);
    assert_eq!(diff.changed, [(node(1), ineligible)]);
    wait_until("s1 and s3 drained", Duration::from_secs(2), || client.servers().len() == 2).await;
    let ids: Vec<String> = client.servers().iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, ["s0", "s2"]);
    let outcomes = calls.await.unwrap();
    assert_eq!(outcomes.len(), 800, "every call has exactly one outcome");
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(failed.is_empty(), "no call fails when servers are drained: {failed:?}");
    let ran: u64 = servers.iter().map(|s| s.calls_completed()).sum();
    assert_eq!(ran, 800, "and each ran once");
}

#[tokio::test(start_paused = true)]
async fn a_game_client_given_one_seed_finds_the_fleet_and_follows_it() {
    let net = net();
    let peers =
        |me: usize| (0..3).filter(|i| *i != me).map(|i| server_addr(i).into()).collect::<Vec<_>>();
    let mut servers: Vec<Option<Server>> = (0..3)
        .map(|i| Some(serve(&net, i, ServerConfig { peers: peers(i), ..ServerConfig::default() })))
        .collect();
    let s3 = serve(&net, 3, ServerConfig::default());
    let client = Client::builder()
        .config(config(exact(3)))
        .seeds([server_addr(0), server_addr(1)])
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap();
    let ids = |c: &Client| {
        let mut ids: Vec<String> = c.servers().iter().map(|s| s.id.to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&client), ["s0", "s1", "s2"], "connect returns with the whole fleet");
    assert_eq!(client.topology().unwrap().eligible_count(), 3);
    // The seed learns of a fourth server: pushed to the client at once.
    let with_s3 = [server_addr(1).into(), server_addr(2).into(), server_addr(3).into()];
    servers[0].as_ref().unwrap().set_peers(with_s3.clone());
    // Pushed: in the topology within a round trip, connected within a handshake more.
    let nodes = || client.topology().unwrap().nodes().len();
    wait_until("s3 in the topology", Duration::from_millis(10), || nodes() == 4).await;
    wait_until("s3 joined", Duration::from_millis(40), || ids(&client).len() == 4).await;
    // The seed drops s2 from its peers: the client drains it.
    servers[0].as_ref().unwrap().set_peers([server_addr(1).into(), server_addr(3).into()]);
    wait_until("s2 drained", Duration::from_millis(100), || ids(&client).len() == 3).await;
    assert_eq!(ids(&client), ["s0", "s1", "s3"]);
    // The seed dies: the client moves to the next seed, whose fleet it then follows.
    servers[1].as_ref().unwrap().set_peers([server_addr(3).into()]);
    net.kill(server_addr(0));
    servers[0] = None;
    wait_until("following seed 1", Duration::from_secs(5), || {
        client.topology().is_some_and(|t| t.get(&server_addr(0).into()).is_none())
    })
    .await;
    wait_until("s0 gone", Duration::from_secs(5), || ids(&client) == ["s1", "s3"]).await;
    let e: EchoRef = client.grain(5);
    assert!(["s1", "s3"].contains(&e.slow(0).await.unwrap().as_str()));
    drop(s3);
}

#[tokio::test(start_paused = true)]
async fn a_client_of_another_cluster_finds_nothing_through_seeds() {
    let net = net();
    let _s0 = serve(&net, 0, ServerConfig::default());
    let other = ClientConfig { cluster_id: "elsewhere".into(), ..config(exact(2)) };
    let err = Client::builder()
        .config(other)
        .seeds([server_addr(0)])
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap_err();
    // The seed refuses a client of another cluster at its door.
    let ClientError::WrongCluster(m) = err else { panic!("{err:?}") };
    assert_eq!((m.ours_cluster.as_str(), m.addr, m.server), ("elsewhere", server_addr(0), None));
}

#[tokio::test(start_paused = true)]
async fn bad_discovery_options_are_typed_errors() {
    let net = net();
    for (discovery, field) in [
        (DiscoveryConfig { max_attempts: 0, ..exact(1) }, "max_attempts"),
        (DiscoveryConfig { interval: Duration::ZERO, ..exact(1) }, "interval"),
        (
            DiscoveryConfig { backoff: Backoff { factor: 0.5, ..Backoff::default() }, ..exact(1) },
            "backoff",
        ),
    ] {
        let err = Client::builder()
            .config(config(discovery))
            .seeds([server_addr(0)])
            .connect_sim(&net, client_addr(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Discovery(DiscoveryError::Config { field: f, .. }) if *f == field),
            "{err:?}"
        );
    }
    let single = ClientConfig { mode: ConnectMode::Single, ..config(exact(1)) };
    let err = Client::builder()
        .config(single)
        .seeds([server_addr(0)])
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Config { field: "mode", .. }), "{err:?}");
    // Nothing reachable: the latest discovery failure, typed.
    let quick = ClientConfig { connect_timeout: Duration::from_secs(2), ..config(exact(1)) };
    let err = Client::builder()
        .config(quick)
        .seeds([server_addr(5)])
        .connect_sim(&net, client_addr(0))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Discovery(DiscoveryError::Unreachable(_))), "{err:?}");
}
