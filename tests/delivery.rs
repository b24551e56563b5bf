//! A delivery class per method: `#[sequenced]` updates (latest wins per caller, grain and
//! method; an older queued one is replaced), `#[unreliable]` calls (sent once; a lost request
//! ends in `Timeout`), reliable-ordered calls beside them unaffected. Over the simulated
//! network at 0, 5 and 20 % loss with duplication and reordering (virtual time), and over real
//! UDP.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::interface::DeliveryClass;
use grainwire::server::context;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, GrainId, GrainKey, Server, ServerConfig};
use support::{paused, wait_until};

#[grainwire::grain]
trait Avatar {
    /// Where the player is now (latest wins).
    #[sequenced]
    async fn position(&mut self, n: u64);
    /// Where the player aims now (latest wins, apart from `position`).
    #[sequenced]
    async fn aim(&mut self, n: u64);
    /// Like `position`, but the grain takes `ms` to apply each one.
    #[sequenced]
    async fn slow_position(&mut self, n: u64, ms: u64);
    /// A reliable call beside them.
    async fn add(&mut self, n: u64) -> u64;
    /// A call sent once: a lost request or answer ends in `Timeout`.
    #[unreliable]
    async fn ping(&self, n: u64) -> u64;
    /// A one-way message sent once.
    #[unreliable]
    #[one_way]
    async fn hint(&mut self, n: u64);
    /// An update too large for one datagram.
    #[sequenced]
    async fn blob(&mut self, data: Vec<u8>);
    /// What the grain applied, in order: positions, aims, and the reliable sum.
    async fn seen(&self) -> (Vec<u64>, Vec<u64>, u64);
}

/// What each grain applied, by key (shared with the test to read without a call).
type Log = Arc<Mutex<Vec<(String, &'static str, u64)>>>;

struct AvatarState {
    positions: Vec<u64>,
    aims: Vec<u64>,
    sum: u64,
    log: Log,
}

fn key() -> String {
    match &context().expect("in a call").id().key {
        GrainKey::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl Avatar for AvatarState {
    async fn position(&mut self, n: u64) {
        self.positions.push(n);
        self.log.lock().unwrap().push((key(), "position", n));
    }
    async fn aim(&mut self, n: u64) {
        self.aims.push(n);
        self.log.lock().unwrap().push((key(), "aim", n));
    }
    async fn slow_position(&mut self, n: u64, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.positions.push(n);
        self.log.lock().unwrap().push((key(), "position", n));
    }
    async fn add(&mut self, n: u64) -> u64 {
        self.sum += n;
        self.sum
    }
    async fn ping(&self, n: u64) -> u64 {
        n + 1
    }
    async fn hint(&mut self, n: u64) {
        self.log.lock().unwrap().push((key(), "hint", n));
    }
    async fn blob(&mut self, data: Vec<u8>) {
        self.log.lock().unwrap().push((key(), "blob", data.len() as u64));
    }
    async fn seen(&self) -> (Vec<u64>, Vec<u64>, u64) {
        (self.positions.clone(), self.aims.clone(), self.sum)
    }
}

const SERVER: &str = "10.0.0.1:7000";
const CLIENT: &str = "10.0.1.1:5000";

fn net(seed: u64, loss: f64) -> SimNetwork {
    SimNetwork::new(
        seed,
        SimConfig {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            loss,
            duplicate: if loss > 0.0 { 0.02 } else { 0.0 },
            reorder: if loss > 0.0 { 0.1 } else { 0.0 },
            reorder_delay: Duration::from_millis(10),
            ..SimConfig::default()
        },
    )
}

fn server(net: &SimNetwork, log: &Log) -> Server {
    let log = log.clone();
    Server::builder(ServerConfig::default())
        .host(Avatar::host(move |_: &GrainId| AvatarState {
            positions: Vec::new(),
            aims: Vec::new(),
            sum: 0,
            log: log.clone(),
        }))
        .bind_sim(net, SERVER.parse().unwrap())
        .unwrap()
}

async fn client(net: &SimNetwork) -> Client {
    Client::builder()
        .config(ClientConfig {
            default_timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        })
        .servers([SERVER.parse::<SocketAddr>().unwrap()])
        .connect_sim(net, CLIENT.parse().unwrap())
        .await
        .unwrap()
}

fn increasing(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// Updates every 4 ms with reliable calls between them, at 0, 5 and 20 % loss (with jitter
/// and reordering past that interval): the grain never applies an older update after a newer
/// one, the last one arrives while the game keeps sending, and every reliable call counts
/// exactly once.
#[test]
fn sequenced_updates_never_go_backwards_and_reliable_calls_are_unaffected() {
    for (seed, loss) in [(1, 0.0), (2, 0.05), (3, 0.2)] {
        paused(async {
            let net = net(seed, loss);
            let log = Log::default();
            let s = server(&net, &log);
            let c = client(&net).await;
            let ann: AvatarRef = c.grain("ann");
            let mut reliable = 0;
            for n in 1..=300u64 {
                ann.position(n).await.unwrap();
                if n % 10 == 0 {
                    reliable += n;
                    ann.add(n).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            // The game keeps sending: the last position arrives (bounded: 200 more frames).
            let mut n = 300;
            loop {
                let (positions, _, _) = ann.seen().await.unwrap();
                if positions.last().copied() >= Some(300) || n >= 500 {
                    break;
                }
                n += 1;
                ann.position(n).await.unwrap();
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            let (positions, _, sum) = ann.seen().await.unwrap();
            assert!(increasing(&positions), "loss {loss}: went backwards: {positions:?}");
            assert!(positions.last().copied() >= Some(300), "loss {loss}: {positions:?}");
            assert_eq!(sum, reliable, "loss {loss}: reliable calls exactly once");
            let stats = s.stats();
            if loss == 0.0 {
                // Jitter (3 ms) is below the interval (4 ms): nothing lost, nothing reordered.
                assert_eq!(positions.len(), 300, "nothing lost at 0 %");
                assert_eq!(stats.updates_stale, 0);
            } else {
                assert!(positions.len() < n as usize, "loss {loss}: some were lost");
                // Reordered updates came, and were dropped rather than applied late.
                assert!(stats.updates_stale > 0, "loss {loss}: {stats:?}");
            }
        });
    }
}

/// Two grains and two methods of one grain: their updates never drop each other's.
#[test]
fn updates_to_other_grains_and_methods_never_drop_each_other() {
    paused(async {
        let net = net(4, 0.0);
        let log = Log::default();
        let s = server(&net, &log);
        let c = client(&net).await;
        let (ann, bob): (AvatarRef, AvatarRef) = (c.grain("ann"), c.grain("bob"));
        for n in 1..=200u64 {
            ann.position(n).await.unwrap();
            ann.aim(1000 + n).await.unwrap();
            bob.position(2000 + n).await.unwrap();
            tokio::time::sleep(Duration::from_millis(16)).await;
        }
        let (a_pos, a_aim, _) = ann.seen().await.unwrap();
        let (b_pos, _, _) = bob.seen().await.unwrap();
        assert_eq!(a_pos, (1..=200).collect::<Vec<_>>());
        assert_eq!(a_aim, (1001..=1200).collect::<Vec<_>>());
        assert_eq!(b_pos, (2001..=2200).collect::<Vec<_>>());
        assert_eq!(s.stats().updates_stale, 0);
        assert_eq!(s.stats().updates_coalesced, 0);
        // On a busy grain, queued positions and aims coalesce each among their own: the last
        // of each is applied, neither replaced by the other.
        let cy: AvatarRef = c.grain("cy");
        for n in 1..=20u64 {
            cy.slow_position(n, 30).await.unwrap();
            cy.aim(100 + n).await.unwrap();
        }
        let applied = |what: &str, n: u64| {
            log.lock().unwrap().iter().any(|(k, m, v)| k == "cy" && *m == what && *v == n)
        };
        wait_until("cy's last position", Duration::from_secs(5), || applied("position", 20)).await;
        assert!(applied("aim", 120));
        assert!(s.stats().updates_coalesced > 0);
    });
}

/// A grain busy applying an update runs only the latest of those queued behind it.
#[test]
fn a_busy_grain_runs_only_the_latest_queued_update() {
    paused(async {
        let net = net(5, 0.0);
        let log = Log::default();
        let s = server(&net, &log);
        let c = client(&net).await;
        let ann: AvatarRef = c.grain("ann");
        // 100 updates in 100 ms; the grain takes 50 ms for each it applies.
        for n in 1..=100u64 {
            ann.slow_position(n, 50).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        wait_until("the last update applied", Duration::from_secs(10), || {
            log.lock().unwrap().last().map(|(_, _, n)| *n) == Some(100)
        })
        .await;
        let (positions, _, _) = ann.seen().await.unwrap();
        assert!(increasing(&positions), "{positions:?}");
        assert!(positions.len() <= 5, "coalesced, not queued: {positions:?}");
        assert_eq!(positions.last(), Some(&100));
        let stats = s.stats();
        // Each update was applied, replaced while queued, or dropped as older than one taken
        // (the network's jitter reorders updates sent 1 ms apart).
        let accounted = stats.updates_coalesced + stats.updates_stale + positions.len() as u64;
        assert_eq!(accounted, 100, "{stats:?}");
        assert!(stats.updates_coalesced > 50, "{stats:?}");
    });
}

/// An unreliable call whose request is lost ends in `Timeout` at its deadline (nothing is
/// resent); the next one is answered. An unreliable one-way message that is lost is gone.
#[test]
fn an_unreliable_call_whose_packet_is_lost_times_out() {
    paused(async {
        let net = net(6, 0.0);
        let log = Log::default();
        let _s = server(&net, &log);
        let c = client(&net).await;
        let ann = c.grain::<AvatarRef>("ann").with_timeout(Duration::from_millis(500));
        assert_eq!(ann.ping(1).await.unwrap(), 2);
        // Let the acknowledgements owed go first: the next datagram is the request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        net.drop_next(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), 1);
        let start = tokio::time::Instant::now();
        assert!(matches!(ann.ping(2).await, Err(CallError::Timeout)));
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert_eq!(ann.ping(3).await.unwrap(), 4);
        tokio::time::sleep(Duration::from_millis(100)).await;
        net.drop_next(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), 1);
        ann.hint(7).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        ann.hint(8).await.unwrap();
        ann.add(0).await.unwrap();
        wait_until("the second hint", Duration::from_secs(1), || {
            log.lock().unwrap().iter().any(|(_, m, n)| *m == "hint" && *n == 8)
        })
        .await;
        let hints: Vec<u64> =
            log.lock().unwrap().iter().filter(|(_, m, _)| *m == "hint").map(|e| e.2).collect();
        assert_eq!(hints, [8], "the lost one is gone");
    });
}

/// An unreliable message must fit one datagram: a larger one is a typed error, not sent.
#[test]
fn an_unreliable_message_larger_than_a_datagram_is_a_typed_error() {
    paused(async {
        let net = net(7, 0.0);
        let log = Log::default();
        let _s = server(&net, &log);
        let c = client(&net).await;
        let ann: AvatarRef = c.grain("ann");
        match ann.blob(vec![7; 2000]).await {
            Err(CallError::TooLarge { size, max }) => assert!(size > max && max < 1200),
            other => panic!("{other:?}"),
        }
        ann.blob(vec![7; 500]).await.unwrap();
        ann.add(0).await.unwrap();
        wait_until("the small blob", Duration::from_secs(1), || {
            log.lock().unwrap().iter().any(|(_, m, n)| *m == "blob" && *n == 500)
        })
        .await;
        assert!(!log.lock().unwrap().iter().any(|(_, m, n)| *m == "blob" && *n == 2000));
    });
}

/// `Avatar` as a build that sends positions reliably: the same method but for its class.
#[grainwire::grain(name = "Avatar")]
trait ReliableAvatar {
    #[one_way]
    async fn position(&mut self, n: u64);
}

/// A delivery class is part of the contract: a caller and a host that disagree on it are
/// incompatible (typed), never served with the wrong class.
#[test]
fn a_caller_and_a_host_that_disagree_on_a_class_are_incompatible() {
    paused(async {
        let net = net(8, 0.0);
        let log = Log::default();
        let _s = server(&net, &log);
        let c = client(&net).await;
        let methods = AvatarRef::info().methods;
        let class = |name| methods.iter().find(|m| m.name == name).unwrap().delivery;
        assert_eq!(class("position"), DeliveryClass::Sequenced);
        assert_eq!(class("ping"), DeliveryClass::Unreliable);
        assert_eq!(class("add"), DeliveryClass::ReliableOrdered);
        let other: ReliableAvatarRef = c.grain("ann");
        assert!(matches!(
            other.position(1).await,
            Err(CallError::IncompatibleVersion { ours: 1, theirs: 1 })
        ));
        assert!(log.lock().unwrap().is_empty());
    });
}

/// Over real UDP: updates and an unreliable call.
#[tokio::test]
async fn delivery_classes_over_real_udp() {
    let log = Log::default();
    let log2 = log.clone();
    let s = Server::builder(ServerConfig::default())
        .host(Avatar::host(move |_: &GrainId| AvatarState {
            positions: Vec::new(),
            aims: Vec::new(),
            sum: 0,
            log: log2.clone(),
        }))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let c = Client::builder().servers([s.local_addr()]).connect().await.unwrap();
    let ann: AvatarRef = c.grain("ann");
    for n in 1..=100 {
        ann.position(n).await.unwrap();
    }
    assert_eq!(ann.ping(41).await.unwrap(), 42);
    // The reliable call is answered after the updates it follows were taken or dropped.
    let (positions, _, _) = ann.seen().await.unwrap();
    assert!(increasing(&positions), "{positions:?}");
    assert!(!positions.is_empty());
}

/// What a player's client shows of a tower's radar: an observer with a sequenced method.
#[grainwire::grain]
trait Radar {
    /// The latest blip (latest wins).
    #[sequenced]
    async fn blip(&mut self, n: u64, slow_ms: u64);
    /// Sent once, answered once.
    #[unreliable]
    async fn echo(&self, n: u64) -> u64;
}

#[grainwire::grain]
trait Tower {
    /// Pushes blips 1..=`count` to `radar`, one every `every_ms`, each taking the radar
    /// `slow_ms`; then echoes 7 through it.
    async fn sweep(&self, radar: RadarRef, count: u64, every_ms: u64, slow_ms: u64) -> u64;
}

struct TowerState;

impl Tower for TowerState {
    async fn sweep(&self, radar: RadarRef, count: u64, every_ms: u64, slow_ms: u64) -> u64 {
        for n in 1..=count {
            let _ = radar.blip(n, slow_ms).await;
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
        radar.with_timeout(Duration::from_secs(2)).echo(7).await.unwrap_or(0)
    }
}

/// The blips a radar applied.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u64>>>);

impl Radar for Screen {
    async fn blip(&mut self, n: u64, slow_ms: u64) {
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
        self.0.lock().unwrap().push(n);
    }
    async fn echo(&self, n: u64) -> u64 {
        n + 1
    }
}

/// A grain pushes sequenced updates to a client's observer: at 20 % loss with reordering they
/// never go backwards there, and a busy observer runs only the latest queued one; an
/// unreliable observer call is answered.
#[test]
fn sequenced_pushes_to_an_observer_never_go_backwards_and_coalesce() {
    paused(async {
        let net = net(9, 0.2);
        let s = Server::builder(ServerConfig::default())
            .host(Tower::host(|_: &GrainId| TowerState))
            .bind_sim(&net, SERVER.parse().unwrap())
            .unwrap();
        let c = client(&net).await;
        let screen = Screen::default();
        let radar: RadarRef = c.observe(screen.clone());
        let tower: TowerRef = c.grain("t");
        assert_eq!(tower.sweep(radar.clone(), 300, 4, 0).await.unwrap(), 8);
        let seen = screen.0.lock().unwrap().clone();
        assert!(increasing(&seen), "went backwards: {seen:?}");
        assert!(seen.len() < 300 && seen.len() > 150, "some lost, most arrived: {}", seen.len());
        // A busy observer: 100 blips 1 ms apart, 50 ms each to apply.
        let slow = Screen::default();
        let radar: RadarRef = c.observe(slow.clone());
        // A clean network for this part: only the observer's being busy matters.
        net.set_config(SimConfig { delay: Duration::from_millis(5), ..SimConfig::default() });
        assert_eq!(tower.sweep(radar, 100, 1, 50).await.unwrap(), 8);
        wait_until("the last blip", Duration::from_secs(10), || {
            slow.0.lock().unwrap().last() == Some(&100)
        })
        .await;
        let seen = slow.0.lock().unwrap().clone();
        assert!(increasing(&seen) && seen.len() <= 5, "coalesced: {seen:?}");
        drop(s);
    });
}
