//! Presence: a grain watches the sessions of its callers and learns, as a turn of its own,
//! that one ended (the player closed the game, or went silent past the timeout): a room drops
//! players that left without polling. Told once per ended session and watching grain, however
//! often it watched; a session unwatched is not told; a watch that arrives after its session
//! ended is told at once. Over the simulated network with loss, duplication and reordering
//! (virtual time), and over real UDP.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use grainwire::error::DisconnectReason;
use grainwire::server::{SessionEnded, caller, context};
use grainwire::transport::sim::SimNetwork;
use grainwire::{Client, GrainId, Server, ServerConfig};
use support::{fleet_client, lossy, paused, wait_until};

#[grainwire::grain]
trait Room {
    /// The caller joins as `name`; the room watches its session.
    async fn join(&mut self, name: String) -> u32;
    /// The caller leaves: no longer watched.
    async fn leave(&mut self, name: String);
    /// Who is in the room.
    async fn members(&self) -> Vec<String>;
    /// Every ended session the room was told of: (player, why), in order.
    async fn told(&self) -> Vec<(String, String)>;
}

#[derive(Default)]
struct RoomState {
    /// Members by session.
    members: BTreeMap<grainwire::server::SessionId, String>,
    told: Vec<(String, String)>,
}

impl Room for RoomState {
    async fn join(&mut self, name: String) -> u32 {
        let session = caller().expect("in a call").session();
        assert!(context().unwrap().watch(session));
        self.members.insert(session, name);
        self.members.len() as u32
    }

    async fn leave(&mut self, name: String) {
        let session = caller().unwrap().session();
        context().unwrap().unwatch(session);
        self.members.retain(|_, n| *n != name);
    }

    async fn members(&self) -> Vec<String> {
        self.members.values().cloned().collect()
    }

    async fn told(&self) -> Vec<(String, String)> {
        self.told.clone()
    }

    async fn on_session_ended(&mut self, ended: SessionEnded) {
        // The hook runs as a turn of the grain: its caller is the ended session's.
        assert_eq!(caller().map(|c| c.session()), Some(ended.session));
        let name = self.members.remove(&ended.session).unwrap_or_else(|| "?".into());
        let why = match ended.reason {
            DisconnectReason::ClosedByPeer { .. } => "closed",
            DisconnectReason::Timeout => "timed out",
            _ => "other",
        };
        self.told.push((name, why.into()));
    }
}

const SERVER: &str = "10.0.0.1:7000";

fn server(net: &SimNetwork) -> Server {
    Server::builder(ServerConfig::default())
        .host(Room::host(|_: &GrainId| RoomState::default()))
        .bind_sim(net, SERVER.parse().unwrap())
        .unwrap()
}

/// Four players join two rooms; one closes the game, one goes silent, one leaves first then
/// closes, one stays: each room is told exactly of the sessions that ended while watched, once
/// each, with the reason.
#[test]
fn presence_fires_once_per_ended_session() {
    paused(async {
        let net = lossy(41);
        let s = server(&net);
        let ann = fleet_client(&net, "10.0.1.1:5000", 1).await;
        let bob = fleet_client(&net, "10.0.1.2:5000", 1).await;
        let cy = fleet_client(&net, "10.0.1.3:5000", 1).await;
        let dee = fleet_client(&net, "10.0.1.4:5000", 1).await;
        for (c, name) in [(&ann, "ann"), (&bob, "bob"), (&cy, "cy"), (&dee, "dee")] {
            let room: RoomRef = c.grain("main");
            room.join(name.into()).await.unwrap();
            // Watched twice: still told once.
            room.join(name.into()).await.unwrap();
        }
        // Ann and Bob are also in a second room: both rooms are told.
        for (c, name) in [(&ann, "ann"), (&bob, "bob")] {
            c.grain::<RoomRef>("side").join(name.into()).await.unwrap();
        }
        let main: RoomRef = dee.grain("main");
        assert_eq!(main.members().await.unwrap(), ["ann", "bob", "cy", "dee"]);

        // Cy leaves properly, then closes: not told (no longer watched).
        cy.grain::<RoomRef>("main").leave("cy".into()).await.unwrap();
        cy.disconnect().await;
        // Ann closes the game.
        ann.disconnect().await;
        // Bob's network goes away: his session times out.
        net.set_down("10.0.1.2:5000".parse().unwrap(), true);
        let told = || s.stats().sessions_told;
        wait_until("both rooms told of ann and bob", Duration::from_secs(120), || told() == 4)
            .await;

        let mut seen = main.told().await.unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [("ann".to_string(), "closed".to_string()), ("bob".into(), "timed out".into())]
        );
        assert_eq!(main.members().await.unwrap(), ["dee"]);
        let side: RoomRef = dee.grain("side");
        assert_eq!(side.members().await.unwrap(), Vec::<String>::new());
        assert_eq!(side.told().await.unwrap().len(), 2);
        // Nothing more comes (each session told once per room).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(s.stats().sessions_told, 4);
        assert_eq!(main.told().await.unwrap().len(), 2);
        assert_eq!(s.stats().watches_dropped, 0);
    });
}

#[grainwire::grain]
trait Latecomer {
    /// Watches the caller's session only after `ms` of (virtual) time.
    async fn watch_later(&mut self, ms: u64);
    async fn told(&self) -> u32;
}

#[derive(Default)]
struct LatecomerState {
    told: u32,
}

impl Latecomer for LatecomerState {
    async fn watch_later(&mut self, ms: u64) {
        let session = caller().unwrap().session();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        context().unwrap().watch(session);
    }

    async fn told(&self) -> u32 {
        self.told
    }

    async fn on_session_ended(&mut self, _: SessionEnded) {
        self.told += 1;
    }
}

/// A watch that arrives after its session ended (sent while serving the session's last call)
/// is told at once.
#[test]
fn a_watch_of_a_session_already_ended_is_told_at_once() {
    paused(async {
        let net = lossy(42);
        let s = Server::builder(ServerConfig::default())
            .host(Latecomer::host(|_: &GrainId| LatecomerState::default()))
            .bind_sim(&net, SERVER.parse().unwrap())
            .unwrap();
        let a = fleet_client(&net, "10.0.1.1:5000", 1).await;
        let b = fleet_client(&net, "10.0.1.2:5000", 1).await;
        let grain: LatecomerRef = a.grain("x");
        // A call that watches a's session 2 s after it started; a closes meanwhile.
        let send = tokio::spawn(async move { grain.watch_later(2_000).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.disconnect().await;
        let _ = send.await;
        // The server saw a's session end before the watch came.
        let start = tokio::time::Instant::now();
        wait_until("a's session ended", Duration::from_secs(1), || s.session_count() == 1).await;
        assert_eq!(s.stats().sessions_told, 0);
        assert!(start.elapsed() < Duration::from_millis(1_500), "before the watch");
        wait_until("the late watch told", Duration::from_secs(10), || s.stats().sessions_told == 1)
            .await;
        assert_eq!(b.grain::<LatecomerRef>("x").told().await.unwrap(), 1);
    });
}

/// Presence over real UDP: a player closes the game, the room learns it.
#[tokio::test]
async fn presence_over_real_udp() {
    let s = Server::builder(ServerConfig::default())
        .host(Room::host(|_: &GrainId| RoomState::default()))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let ann = Client::builder().servers([s.local_addr()]).connect().await.unwrap();
    let bob = Client::builder().servers([s.local_addr()]).connect().await.unwrap();
    ann.grain::<RoomRef>("r").join("ann".into()).await.unwrap();
    bob.grain::<RoomRef>("r").join("bob".into()).await.unwrap();
    ann.disconnect().await;
    let room: RoomRef = bob.grain("r");
    // Each poll is a call (a round trip): bounded.
    for _ in 0..2_000 {
        if room.members().await.unwrap() == ["bob"] {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(room.members().await.unwrap(), ["bob"]);
    assert_eq!(room.told().await.unwrap(), [("ann".to_string(), "closed".to_string())]);
}
