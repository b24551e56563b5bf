//! Servers call players: a client hosts an observer (`Client::observe`), hands its reference
//! to a grain, and the grain calls it, one-way or with a result, over the same session: pushes
//! arrive in order over a lossy network; they survive the client's reconnect (calls made while
//! it was away wait for it) and a failover (the grain's server dies, the grain comes back on
//! another server, the client subscribes again, pushes resume); a grain sees a vanished
//! observer as `ObserverGone`; a client that never answers its observer calls is bounded and
//! closed. Over the simulated network in virtual time, and over real UDP.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::transport::sim::SimNetwork;
use grainwire::{Client, ClientConfig, GrainId, GrainInterface, Server, ServerConfig};
use support::{fleet_client, lossy, paused, server_addr};

#[grainwire::grain]
trait ChatView {
    /// A chat line, pushed.
    #[one_way]
    async fn line(&mut self, n: u32, text: String);
    /// Whether the view is ready (a call with a result).
    async fn ready(&self) -> bool;
    /// Never answers.
    async fn hang(&self) -> u32;
}

#[grainwire::grain]
trait Room {
    /// Adds `view` to the room's subscribers.
    async fn subscribe(&mut self, view: ChatViewRef) -> u32;
    /// Pushes `count` lines, numbered from `from`, to every subscriber (one-way).
    async fn say(&mut self, from: u32, count: u32) -> Vec<String>;
    /// Asks each subscriber whether it is ready; the errors as text.
    async fn poll(&self) -> Vec<Result<bool, String>>;
    /// Calls `hang` on each subscriber `n` times, without waiting for the answers.
    async fn hang_all(&self, n: u32) -> Vec<String>;
    /// The server this activation runs on.
    async fn server(&self) -> String;
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u32>>>);

impl Lines {
    fn get(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }
}

struct View {
    lines: Lines,
}

impl ChatView for View {
    async fn line(&mut self, n: u32, _text: String) {
        self.lines.0.lock().unwrap().push(n);
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn hang(&self) -> u32 {
        std::future::pending().await
    }
}

struct RoomState {
    server: String,
    views: Vec<ChatViewRef>,
}

impl Room for RoomState {
    async fn subscribe(&mut self, view: ChatViewRef) -> u32 {
        assert!(view.grain_ref().is_observer());
        if !self.views.contains(&view) {
            self.views.push(view);
        }
        self.views.len() as u32
    }

    async fn say(&mut self, from: u32, count: u32) -> Vec<String> {
        let mut errors = Vec::new();
        for n in from..from + count {
            for v in &self.views {
                if let Err(e) = v.line(n, format!("line {n}")).await {
                    errors.push(format!("{e:?}"));
                }
            }
        }
        errors
    }

    async fn poll(&self) -> Vec<Result<bool, String>> {
        let mut out = Vec::new();
        for v in &self.views {
            out.push(v.ready().await.map_err(|e| format!("{e:?}")));
        }
        out
    }

    async fn hang_all(&self, n: u32) -> Vec<String> {
        let calls: Vec<_> = (0..n)
            .flat_map(|_| {
                self.views.iter().map(|v| {
                    let v = v.with_timeout(Duration::from_secs(60));
                    tokio::spawn(async move { v.hang().await })
                })
            })
            .collect();
        let mut errors = Vec::new();
        for c in calls {
            if let Err(e) = c.await.unwrap() {
                errors.push(format!("{e:?}"));
            }
        }
        errors
    }

    async fn server(&self) -> String {
        self.server.clone()
    }
}

fn serve(net: &SimNetwork, i: usize, n: usize, config: ServerConfig) -> Server {
    let id = format!("s{i}");
    let config = ServerConfig {
        server_id: Some(id.clone()),
        peers: (0..n).filter(|j| *j != i).map(|j| server_addr(j).into()).collect(),
        ..config
    };
    Server::builder(config)
        .host(Room::host(move |_: &GrainId| RoomState { server: id.clone(), views: Vec::new() }))
        .bind_sim(net, server_addr(i))
        .unwrap()
}

/// Waits (virtual time) until `f` holds, at most `limit`.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn pushes_arrive_in_order_and_calls_get_results() {
    paused(async {
        let net = lossy(40);
        let server = serve(&net, 0, 1, ServerConfig::default());
        let c = fleet_client(&net, "10.0.1.1:0", 1).await;
        let lines = Lines::default();
        let view: ChatViewRef = c.observe(View { lines: lines.clone() });
        assert!(view.grain_ref().is_observer());
        assert!(view.to_string().starts_with("ChatView/observer:"), "{view}");
        let room: RoomRef = c.grain("lobby");
        assert_eq!(room.subscribe(view.clone()).await.unwrap(), 1);
        assert_eq!(room.subscribe(view.clone()).await.unwrap(), 1, "the same value");
        assert_eq!(room.say(0, 200).await.unwrap(), Vec::<String>::new());
        until(Duration::from_secs(10), || lines.get().len() == 200).await;
        assert_eq!(lines.get(), (0..200).collect::<Vec<_>>(), "in order, once each");
        assert_eq!(room.poll().await.unwrap(), vec![Ok(true)]);
        assert!(server.stats().observer_calls >= 201);
        // Dropped: its calls fail typed.
        assert!(c.unobserve(&view));
        assert!(!c.unobserve(&view));
        assert_eq!(room.poll().await.unwrap(), vec![Err("ObserverGone".into())]);
        c.disconnect().await;
        server.shutdown().await;
    });
}

#[test]
fn pushes_wait_for_a_reconnecting_client_and_fail_once_it_is_gone() {
    paused(async {
        let net = lossy(41);
        let config =
            ServerConfig { observer_grace: Duration::from_secs(20), ..ServerConfig::default() };
        let server = serve(&net, 0, 1, config);
        let at: SocketAddr = "10.0.1.1:5000".parse().unwrap();
        let c = fleet_client(&net, "10.0.1.1:5000", 1).await;
        let other = fleet_client(&net, "10.0.1.2:0", 1).await;
        let lines = Lines::default();
        let view: ChatViewRef = c.observe(View { lines: lines.clone() });
        let room: RoomRef = other.grain("r");
        room.subscribe(view).await.unwrap();
        room.say(0, 5).await.unwrap();
        until(Duration::from_secs(10), || lines.get().len() == 5).await;
        // The client's network goes down long enough for both sides to drop the session.
        net.set_down(at, true);
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!c.is_connected());
        // Pushed while it is away: they wait for it.
        let pushing = tokio::spawn({
            let room = room.clone();
            async move { room.say(5, 5).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        net.set_down(at, false);
        until(Duration::from_secs(15), || lines.get().len() == 10).await;
        assert_eq!(lines.get(), (0..10).collect::<Vec<_>>());
        assert_eq!(pushing.await.unwrap().unwrap(), Vec::<String>::new());
        // The client closes: its observers are gone at once.
        c.disconnect().await;
        let polled = room.poll().await.unwrap();
        assert_eq!(polled, vec![Err("ObserverGone".into())]);
        other.disconnect().await;
        server.shutdown().await;
    });
}

#[test]
fn observers_survive_a_failover() {
    paused(async {
        let net = lossy(42);
        let mut servers: Vec<Option<Server>> =
            (0..2).map(|i| Some(serve(&net, i, 2, ServerConfig::default()))).collect();
        let c = fleet_client(&net, "10.0.1.1:0", 2).await;
        let lines = Lines::default();
        let view: ChatViewRef = c.observe(View { lines: lines.clone() });
        // A room placed on server 0, the one that dies.
        let mut room = None;
        for k in 0..64 {
            let r: RoomRef = c.grain(k);
            if r.server().await.unwrap() == "s0" {
                room = Some(r);
                break;
            }
        }
        let room = room.expect("a room on s0");
        room.subscribe(view.clone()).await.unwrap();
        room.say(0, 10).await.unwrap();
        until(Duration::from_secs(10), || lines.get().len() == 10).await;
        // Server 0 dies: the room's state with it.
        net.kill(server_addr(0));
        drop(servers[0].take());
        // The client subscribes again (its call is retried on the surviving server once the
        // dead one is found dead), and the room, now on server 1, pushes to the same view.
        let resubscribed = loop {
            match room.subscribe(view.clone()).await {
                Ok(n) => break n,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert_eq!(resubscribed, 1);
        assert_eq!(room.server().await.unwrap(), "s1");
        room.say(10, 10).await.unwrap();
        until(Duration::from_secs(10), || lines.get().len() == 20).await;
        assert_eq!(lines.get(), (0..20).collect::<Vec<_>>());
        c.disconnect().await;
        for s in servers.into_iter().flatten() {
            s.shutdown().await;
        }
    });
}

#[test]
fn a_client_that_never_answers_is_bounded_and_closed() {
    paused(async {
        let net = lossy(43);
        let config = ServerConfig {
            max_observer_calls_per_session: 8,
            observer_grace: Duration::from_millis(100),
            ..ServerConfig::default()
        };
        let server = serve(&net, 0, 1, config);
        let c = fleet_client(&net, "10.0.1.1:0", 1).await;
        let other = fleet_client(&net, "10.0.1.2:0", 1).await;
        let view: ChatViewRef = c.observe(View { lines: Lines::default() });
        let room: RoomRef = other.grain("r");
        room.subscribe(view).await.unwrap();
        // 20 calls that never get an answer: past 8 pending, the client is closed and every
        // call fails (typed) rather than hang.
        let start = tokio::time::Instant::now();
        let errors = room.hang_all(20).await.unwrap();
        assert_eq!(errors.len(), 20, "{errors:?}");
        assert!(errors.iter().all(|e| e == "ObserverGone"), "{errors:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "not at their deadlines");
        assert_eq!(server.stats().observer_sessions_stalled, 1);
        // The closed client comes back by itself; its observer answers again.
        until(Duration::from_secs(30), || c.is_connected()).await;
        c.disconnect().await;
        other.disconnect().await;
        server.shutdown().await;
    });
}

#[tokio::test]
async fn observers_over_real_udp() {
    let config = ServerConfig { server_id: Some("u".into()), ..ServerConfig::default() };
    let server = Server::builder(config)
        .host(Room::host(|_: &GrainId| RoomState { server: "u".into(), views: Vec::new() }))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let c = Client::connect(server.local_addr(), ClientConfig::default()).await.unwrap();
    let lines = Lines::default();
    let view: ChatViewRef = c.observe(View { lines: lines.clone() });
    let room: RoomRef = c.grain(1);
    room.subscribe(view).await.unwrap();
    room.say(0, 100).await.unwrap();
    let start = tokio::time::Instant::now();
    while lines.get().len() < 100 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(lines.get(), (0..100).collect::<Vec<_>>());
    assert_eq!(room.poll().await.unwrap(), vec![Ok(true)]);
    c.disconnect().await;
    server.shutdown().await;
}
