//! References as values and calls between grains: references compare, hash, order, print and
//! round-trip through serde (alone, in `Vec`, `Option` and structs, in compact and readable
//! formats) at a few bytes; a reference returned by a grain is callable at once by the client
//! that got it, one passed to a grain is callable at once by that grain (through its server's
//! fleet client, across servers); a reference of the wrong interface or type is refused with a
//! typed error; one decoded where nothing can call it fails its calls typed. Grain-to-grain
//! calls carry what is left of the served call's deadline and the calling grain as their
//! caller, and a chain that would wait on itself fails at once, naming the chain. Over the
//! simulated network with loss, duplication and reordering (virtual time), and over real UDP.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use grainwire::error::ReferenceError;
use grainwire::server::context;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, GrainId, GrainInterface, GrainKey, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use support::{fleet_client, lossy, paused, server_addr};

#[grainwire::grain]
trait Player {
    /// The player's name (its key).
    async fn name(&self) -> String;
    /// Called by a room: the room it is in now.
    async fn entered(&mut self, room: RoomRef) -> u32;
    /// The room it was told about last.
    async fn room(&self) -> Option<RoomRef>;
    /// Asks its room who is in it, from inside this call (player -> room -> player: the room
    /// calls back each member, this one included).
    async fn roll_call(&self) -> Result<Vec<String>, String>;
    /// Calls itself from inside this call.
    async fn call_self(&self) -> Result<u32, String>;
    /// Waits `ms` (virtual time), then answers.
    async fn slow(&self, ms: u64) -> u32;
    /// Who called: the calling grain, if a grain did.
    async fn who_called(&self) -> Option<GrainId>;
}

#[grainwire::grain]
trait Room {
    /// Adds `player`, tells it so, and answers with the members.
    async fn join(&mut self, player: PlayerRef) -> Vec<PlayerRef>;
    /// The members.
    async fn members(&self) -> Vec<PlayerRef>;
    /// Each member's name, asked of each member.
    async fn names(&self) -> Result<Vec<String>, String>;
    /// Calls `player.slow(ms)`: what that call gave, or its error's kind.
    async fn relay_slow(&self, player: PlayerRef, ms: u64) -> Result<u32, String>;
    /// Calls `player.who_called()`.
    async fn ask_who(&self, player: PlayerRef) -> Option<GrainId>;
    /// The server this activation runs on.
    async fn server(&self) -> String;
}

#[grainwire::grain]
trait Lobby {
    /// A room for `player`: room `n % 4` of this lobby, the player joined to it.
    async fn find_room(&mut self, player: PlayerRef) -> RoomRef;
    /// Rooms by key, as a map of values.
    async fn directory(&self) -> Listing;
}

/// A struct holding references, as a method's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Listing {
    rooms: Vec<RoomRef>,
    featured: Option<RoomRef>,
    count: u32,
}

#[derive(Default)]
struct PlayerState {
    room: Option<RoomRef>,
    rooms_entered: u32,
}

impl Player for PlayerState {
    async fn name(&self) -> String {
        let cx = context().expect("inside a call");
        match &cx.id().key {
            GrainKey::Str(s) => s.to_string(),
            other => other.to_string(),
        }
    }

    async fn entered(&mut self, room: RoomRef) -> u32 {
        self.room = Some(room);
        self.rooms_entered += 1;
        self.rooms_entered
    }

    async fn room(&self) -> Option<RoomRef> {
        self.room.clone()
    }

    async fn roll_call(&self) -> Result<Vec<String>, String> {
        let room = self.room.clone().ok_or("in no room")?;
        match room.names().await {
            Ok(names) => Ok(names),
            Err(CallError::Application(e)) => Err(e),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    async fn call_self(&self) -> Result<u32, String> {
        let me: PlayerRef = context().unwrap().this().map_err(|e| e.to_string())?;
        me.slow(0).await.map_err(|e| format!("{e:?}"))
    }

    async fn slow(&self, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        7
    }

    async fn who_called(&self) -> Option<GrainId> {
        grainwire::server::caller().and_then(|c| c.grain().cloned())
    }
}

struct RoomState {
    server: String,
    members: Vec<PlayerRef>,
}

impl Room for RoomState {
    async fn join(&mut self, player: PlayerRef) -> Vec<PlayerRef> {
        if !self.members.contains(&player) {
            self.members.push(player.clone());
        }
        let me: RoomRef = context().unwrap().this().unwrap();
        player.entered(me).await.expect("the player is told");
        self.members.clone()
    }

    async fn members(&self) -> Vec<PlayerRef> {
        self.members.clone()
    }

    async fn names(&self) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for p in &self.members {
            names.push(p.name().await.map_err(|e| format!("{e:?}"))?);
        }
        Ok(names)
    }

    async fn relay_slow(&self, player: PlayerRef, ms: u64) -> Result<u32, String> {
        player.slow(ms).await.map_err(|e| format!("{:?}", e.kind()))
    }

    async fn ask_who(&self, player: PlayerRef) -> Option<GrainId> {
        player.who_called().await.expect("asked")
    }

    async fn server(&self) -> String {
        self.server.clone()
    }
}

#[derive(Default)]
struct LobbyState {
    next: u32,
}

impl Lobby for LobbyState {
    async fn find_room(&mut self, player: PlayerRef) -> RoomRef {
        let cx = context().unwrap();
        let room: RoomRef = cx.grain(format!("{}-{}", cx.id().key, self.next % 4));
        self.next += 1;
        room.join(player).await.expect("joined");
        room
    }

    async fn directory(&self) -> Listing {
        let cx = context().unwrap();
        let rooms: Vec<RoomRef> = (0..3).map(|i| cx.grain(i)).collect();
        Listing { featured: rooms.first().cloned(), rooms, count: 3 }
    }
}

/// Servers 0..n on `net`, each hosting every type, each knowing the others as peers.
fn fleet(net: &SimNetwork, n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| {
            let config = ServerConfig {
                server_id: Some(format!("s{i}")),
                peers: (0..n).filter(|j| *j != i).map(|j| server_addr(j).into()).collect(),
                ..ServerConfig::default()
            };
            let id = format!("s{i}");
            Server::builder(config)
                .host(Player::host(|_: &GrainId| PlayerState::default()))
                .host(Room::host(move |_: &GrainId| RoomState {
                    server: id.clone(),
                    members: Vec::new(),
                }))
                .host(Lobby::host(|_: &GrainId| LobbyState::default()))
                .bind_sim(net, server_addr(i))
                .unwrap()
        })
        .collect()
}

#[test]
fn references_are_values() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let net = SimNetwork::new(1, SimConfig::default());
    let _servers = rt.block_on(async { fleet(&net, 1) });
    let c = rt.block_on(fleet_client(&net, "10.0.1.1:0", 1));
    let a: PlayerRef = c.grain("ann");
    let a2 = c.grain::<PlayerRef>("ann").with_timeout(Duration::from_secs(1));
    let b: PlayerRef = c.grain("bob");
    // Identity, not how it calls: equal, hashed and ordered alike.
    assert_eq!(a, a2);
    assert_ne!(a, b);
    let set: HashSet<PlayerRef> = [a.clone(), a2.clone(), b.clone()].into_iter().collect();
    assert_eq!(set.len(), 2);
    let ordered: BTreeSet<PlayerRef> = [b.clone(), a.clone()].into_iter().collect();
    assert_eq!(ordered.into_iter().collect::<Vec<_>>(), [a.clone(), b.clone()]);
    assert_eq!(a.to_string(), "Player/ann");
    assert_eq!(c.grain::<RoomRef>(7).to_string(), "Room/7");
    // Debug is short (what it names), `{:#?}` tells how it calls too.
    assert_eq!(format!("{a:?}"), "PlayerRef(Player/ann)");
    assert!(format!("{a:#?}").contains("grain: Player/ann"));

    // Serde: compact (postcard) and readable (JSON), alone and inside other values; decoded
    // outside any call, it is unbound and says so when called.
    let bytes = postcard::to_allocvec(&a).unwrap();
    let back: PlayerRef = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, a);
    assert!(!back.grain_ref().is_bound());
    assert!(format!("{:#?}", back).contains("unbound: true"));
    let unbound = rt.block_on(back.name());
    assert!(matches!(unbound, Err(CallError::Unbound)), "{unbound:?}");
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(json, r#"{"interface":"Player","version":1,"key":{"Str":"ann"}}"#);
    assert_eq!(serde_json::from_str::<PlayerRef>(&json).unwrap(), a);
    let listing =
        Listing { rooms: vec![c.grain(1), c.grain(2)], featured: Some(c.grain(2)), count: 2 };
    let back: Listing = postcard::from_bytes(&postcard::to_allocvec(&listing).unwrap()).unwrap();
    assert_eq!(back, listing);
    let back: Listing = serde_json::from_str(&serde_json::to_string(&listing).unwrap()).unwrap();
    assert_eq!(back, listing);
    let none: Option<RoomRef> = None;
    assert_eq!(
        postcard::from_bytes::<Option<RoomRef>>(&postcard::to_allocvec(&none).unwrap()).unwrap(),
        None
    );

    // A few bytes: at most 4 more than the key itself as a value, for every kind of key.
    let keys = [
        GrainKey::Int(7),
        GrainKey::Int(-1_000_000),
        GrainKey::Str("ann".into()),
        GrainKey::Id(u128::MAX - 5),
        GrainKey::IntExt(3, "eu".into()),
        GrainKey::IdExt(1 << 100, "eu-west".into()),
    ];
    for key in keys {
        let r: PlayerRef = c.grain(key.clone());
        let size = postcard::to_allocvec(&r).unwrap().len();
        let key_size = postcard::to_allocvec(&key).unwrap().len();
        assert!(size <= key_size + 4, "{key:?}: reference {size} B, key {key_size} B");
        let back: PlayerRef = postcard::from_bytes(&postcard::to_allocvec(&r).unwrap()).unwrap();
        assert_eq!(back.id(), r.id());
    }

    // The wrong interface is refused, typed, in every form.
    let room: RoomRef = c.grain("ann");
    let bytes = postcard::to_allocvec(&room).unwrap();
    assert!(postcard::from_bytes::<PlayerRef>(&bytes).is_err());
    let json = serde_json::to_string(&room).unwrap();
    assert!(serde_json::from_str::<PlayerRef>(&json).is_err());
    assert_eq!(
        room.grain_ref().typed::<PlayerRef>(),
        Err(ReferenceError::WrongInterface { expected: "Player", found: "Room" })
    );
    assert_eq!(room.grain_ref().typed::<RoomRef>(), Ok(room.clone()));
    let room_id = room.id().clone();
    assert_eq!(
        c.grain_by_id::<PlayerRef>(&room_id),
        Err(ReferenceError::WrongType { grain: room_id.clone(), interface: "Player" })
    );
    assert_eq!(c.grain_by_id::<RoomRef>(&room_id), Ok(room));
    // Garbage and cut-short surrogates are errors, never panics.
    for cut in 0..bytes.len() {
        assert!(postcard::from_bytes::<RoomRef>(&bytes[..cut]).is_err());
    }
    let mut flagged = bytes.clone();
    flagged[0] |= 0x40;
    assert!(postcard::from_bytes::<RoomRef>(&flagged).is_err(), "unknown flags refused");
    rt.block_on(c.disconnect());
}

/// The lobby returns a room, the room keeps its players and calls them, across two servers,
/// with loss, duplication and reordering.
#[test]
fn references_flow_through_calls_and_are_callable_at_once() {
    paused(async {
        let net = lossy(20);
        let servers = fleet(&net, 2);
        let c = fleet_client(&net, "10.0.1.1:0", 2).await;
        let lobby: LobbyRef = c.grain("main");
        let players: Vec<PlayerRef> =
            ["ann", "bob", "cy", "dee", "eve"].iter().map(|n| c.grain(*n)).collect();
        let mut rooms = BTreeSet::new();
        for p in &players {
            // A reference in a result, callable at once through the client that got it.
            let room = lobby.find_room(p.clone()).await.unwrap();
            assert!(room.grain_ref().is_bound());
            assert!(room.members().await.unwrap().contains(p));
            // The room called the player (grain to grain) with a reference to itself.
            assert_eq!(p.room().await.unwrap(), Some(room.clone()));
            rooms.insert(room);
        }
        assert_eq!(rooms.len(), 4, "rooms main-0..main-3");
        // Rooms live on both servers: some of these calls crossed servers.
        let mut hosts = BTreeSet::new();
        for r in &rooms {
            hosts.insert(r.server().await.unwrap());
        }
        assert_eq!(hosts.len(), 2, "rooms on both servers: {hosts:?}");
        // A room asks each of its members (grain to grain, from the client's call).
        let room0 = rooms.iter().next().unwrap().clone();
        let names = room0.names().await.unwrap();
        assert!(
            !names.is_empty()
                && names.iter().all(|n| ["ann", "bob", "cy", "dee", "eve"].contains(&n.as_str())),
            "{names:?}"
        );
        // A struct of references, decoded bound.
        let listing = lobby.directory().await.unwrap();
        assert_eq!(listing.rooms.len(), 3);
        assert_eq!(listing.featured.as_ref(), listing.rooms.first());
        assert_eq!(listing.rooms[1].members().await.unwrap(), Vec::<PlayerRef>::new());
        c.disconnect().await;
        for s in servers {
            s.shutdown().await;
        }
    });
}

/// A grain's call to another carries what is left of its own deadline, and the callee sees the
/// calling grain as its caller.
#[test]
fn grain_calls_carry_the_deadline_and_the_caller() {
    paused(async {
        let net = lossy(21);
        let servers = fleet(&net, 2);
        let c = fleet_client(&net, "10.0.1.1:0", 2).await;
        let room: RoomRef = c.grain("r");
        let player: PlayerRef = c.grain("p");
        // Plenty of time: the relayed call is served.
        assert_eq!(room.relay_slow(player.clone(), 100).await.unwrap(), 7);
        // The client's call has 1 s; the player takes 20 s: the room's call to it gives up
        // when the room's own caller would (not after the room's 30 s default).
        let start = tokio::time::Instant::now();
        let relayed =
            room.with_timeout(Duration::from_secs(1)).relay_slow(player.clone(), 20_000).await;
        let took = start.elapsed();
        match relayed {
            // The room answered before the client gave up: with its inner call's failure.
            Err(CallError::Application(kind)) => {
                assert!(kind == "Timeout" || kind == "DeadlineExceeded", "{kind}")
            }
            // Or the client's own deadline passed first (the two are the same instant).
            Err(CallError::Timeout | CallError::DeadlineExceeded) => {}
            other => panic!("{other:?}"),
        }
        assert!(took <= Duration::from_millis(1100), "gave up after {took:?}");
        // The callee sees the calling grain.
        assert_eq!(room.ask_who(player.clone()).await.unwrap(), Some(room.id().clone()));
        assert_eq!(player.who_called().await.unwrap(), None, "a client is no grain");
        c.disconnect().await;
        for s in servers {
            s.shutdown().await;
        }
    });
}

/// A -> B -> A while A is busy, and A -> A, fail at once with the chain.
#[test]
fn a_call_that_would_wait_on_itself_fails_at_once_naming_the_chain() {
    paused(async {
        let net = lossy(22);
        let servers = fleet(&net, 2);
        let c = fleet_client(&net, "10.0.1.1:0", 2).await;
        let lobby: LobbyRef = c.grain("l");
        let ann: PlayerRef = c.grain("ann");
        let room = lobby.find_room(ann.clone()).await.unwrap();
        // ann -> room -> ann: ann is busy in roll_call.
        let start = tokio::time::Instant::now();
        let Err(CallError::Application(err)) = ann.roll_call().await else { panic!("a deadlock") };
        assert!(start.elapsed() < Duration::from_secs(1), "at once, not at a deadline");
        let want = format!(
            "{:?}",
            CallError::<std::convert::Infallible>::Deadlock {
                chain: vec![ann.id().clone(), room.id().clone(), ann.id().clone()],
            }
        );
        assert_eq!(err, want);
        // ann -> ann.
        let Err(CallError::Application(err)) = ann.call_self().await else { panic!("a deadlock") };
        let want = format!(
            "{:?}",
            CallError::<std::convert::Infallible>::Deadlock {
                chain: vec![ann.id().clone(), ann.id().clone()],
            }
        );
        assert_eq!(err, want);
        // Not a deadlock: the room asking ann when ann is idle.
        assert_eq!(room.names().await.unwrap(), vec!["ann".to_string()]);
        c.disconnect().await;
        for s in servers {
            s.shutdown().await;
        }
    });
}

/// Over real UDP: a reference returned and passed across two servers.
#[tokio::test]
async fn references_cross_real_udp_servers() {
    let s0 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a0, a1) = (s0.local_addr().unwrap(), s1.local_addr().unwrap());
    let serve = |socket: std::net::UdpSocket, id: &str, peer: SocketAddr| {
        let config = ServerConfig {
            server_id: Some(id.into()),
            peers: vec![peer.into()],
            ..ServerConfig::default()
        };
        let id = id.to_string();
        Server::builder(config)
            .host(Player::host(|_: &GrainId| PlayerState::default()))
            .host(Room::host(move |_: &GrainId| RoomState {
                server: id.clone(),
                members: Vec::new(),
            }))
            .host(Lobby::host(|_: &GrainId| LobbyState::default()))
            .bind_socket(socket)
            .unwrap()
    };
    let servers = [serve(s0, "u0", a1), serve(s1, "u1", a0)];
    let c = Client::builder().servers([a0, a1]).connect().await.unwrap();
    let lobby: LobbyRef = c.grain("udp");
    let mut hosts = BTreeSet::new();
    for n in 0..8 {
        let p: PlayerRef = c.grain(n);
        let room = lobby.find_room(p.clone()).await.unwrap();
        assert_eq!(p.room().await.unwrap(), Some(room.clone()));
        hosts.insert(room.server().await.unwrap());
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    c.disconnect().await;
    for s in servers {
        s.shutdown().await;
    }
}
