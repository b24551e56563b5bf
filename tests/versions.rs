//! One grain, several interfaces; versions that evolve. A grain type implements several
//! `#[grain]` traits served by the same activations (`Host::with`), a reference is cast to
//! another of them (checked against the manifests, typed errors otherwise), and a fleet is
//! upgraded one server at a time: the compatibility rule is per method (a method unchanged
//! between versions is served by either; one changed, added or removed only by a version that
//! has it as the caller knows it, else `IncompatibleVersion` names both versions). Over the
//! simulated network with loss, duplication and reordering (virtual time), and over real UDP.

mod support;

use std::time::Duration;

use grainwire::error::ReferenceError;
use grainwire::server::{Host, ServerError, context};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, GrainId, GrainKey, Server, ServerConfig};
use support::{fleet_client, lossy, paused, server_addr, wait_until};

/// `Player` as the fleet first shipped it.
#[grainwire::grain(name = "Player", version = 1)]
trait PlayerV1 {
    /// Unchanged in version 2.
    async fn name(&self) -> String;
    /// Changed in version 2 (`u64`).
    async fn score(&self) -> u32;
    /// Removed in version 2.
    async fn legacy(&self) -> u32;
}

/// `Player` now.
#[grainwire::grain(version = 2)]
trait Player {
    async fn name(&self) -> String;
    async fn score(&self) -> u64;
    /// Added in version 2: how many items the player's inventory holds (the same activation).
    async fn level(&self) -> u32;
}

/// A second interface of the `Player` grain type.
#[grainwire::grain(grain_type = "Player")]
trait Inventory {
    async fn add(&mut self, item: String) -> u32;
    async fn items(&self) -> Vec<String>;
}

/// An interface of the `Player` grain type that no server hosts.
#[grainwire::grain(grain_type = "Player")]
trait Wallet {
    async fn coins(&self) -> u64;
}

/// Another grain type.
#[grainwire::grain]
trait Room {
    async fn size(&self) -> u32;
}

/// A `Player` interface with an interleaving method (which `Host::with` refuses).
#[grainwire::grain(grain_type = "Player", name = "Spectator")]
trait Spectator {
    #[interleave]
    async fn watch(&self) -> u32;
}

/// What every version of a player grain keeps.
#[derive(Default)]
struct PlayerState {
    items: Vec<String>,
    /// Which version the hosting server runs ("v1", "v2", "both").
    build: &'static str,
}

fn key_name() -> String {
    match &context().expect("in a call").id().key {
        GrainKey::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl PlayerV1 for PlayerState {
    async fn name(&self) -> String {
        format!("{}@{}", key_name(), self.build)
    }
    async fn score(&self) -> u32 {
        32
    }
    async fn legacy(&self) -> u32 {
        1
    }
}

impl Player for PlayerState {
    async fn name(&self) -> String {
        format!("{}@{}", key_name(), self.build)
    }
    async fn score(&self) -> u64 {
        64
    }
    async fn level(&self) -> u32 {
        self.items.len() as u32
    }
}

impl Inventory for PlayerState {
    async fn add(&mut self, item: String) -> u32 {
        self.items.push(item);
        self.items.len() as u32
    }
    async fn items(&self) -> Vec<String> {
        self.items.clone()
    }
}

impl Spectator for PlayerState {
    async fn watch(&self) -> u32 {
        0
    }
}

struct RoomState;

impl Room for RoomState {
    async fn size(&self) -> u32 {
        0
    }
}

/// Which build of the game a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    /// Player version 1 and the inventory.
    V1,
    /// Player version 2 and the inventory.
    V2,
    /// Both Player versions (the bridge build of a careful rollout) and the inventory.
    Both,
}

fn player_host(build: Build) -> Host {
    let state = move |_: &GrainId| PlayerState {
        items: Vec::new(),
        build: match build {
            Build::V1 => "v1",
            Build::V2 => "v2",
            Build::Both => "both",
        },
    };
    match build {
        Build::V1 => PlayerV1::host(state).with::<InventoryRef, PlayerState>(),
        Build::V2 => Player::host(state).with::<InventoryRef, PlayerState>(),
        Build::Both => Player::host(state)
            .with::<PlayerV1Ref, PlayerState>()
            .with::<InventoryRef, PlayerState>(),
    }
}

fn start(net: &SimNetwork, i: usize, build: Build) -> Server {
    let config = ServerConfig { server_id: Some(format!("s{i}")), ..ServerConfig::default() };
    Server::builder(config)
        .host(player_host(build))
        .host(Room::host(|_: &GrainId| RoomState))
        .bind_sim(net, server_addr(i))
        .unwrap()
}

/// Shuts server `i` down, starts one running `build` at its address, and waits until
/// `clients` hold its manifest.
async fn upgrade(
    net: &SimNetwork,
    fleet: &mut [Option<Server>],
    i: usize,
    build: Build,
    clients: &[&Client],
) {
    fleet[i].take().expect("running").shutdown().await;
    fleet[i] = Some(start(net, i, build));
    let versions: &[u8] = match build {
        Build::V1 => &[1],
        Build::V2 => &[2],
        Build::Both => &[1, 2],
    };
    wait_until("the clients reconnect to the upgraded server", Duration::from_secs(60), || {
        clients.iter().all(|c| {
            c.servers().iter().any(|s| {
                let mut hosted: Vec<u8> = s
                    .manifest
                    .grains
                    .iter()
                    .filter(|g| &*g.name == "Player")
                    .map(|g| g.version)
                    .collect();
                hosted.sort();
                s.addr == server_addr(i) && hosted == versions
            })
        })
    })
    .await;
}

/// What the calls of one client of one version give, for `keys` players.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcomes {
    served: Vec<String>,
    refused: Vec<String>,
}

/// Calls every method a version-1 client knows on `keys` players; every call must be served or
/// refused `IncompatibleVersion` (nothing else).
async fn v1_calls(c: &Client, keys: &[&str]) -> Outcomes {
    let mut out = Outcomes::default();
    for key in keys {
        let p: PlayerV1Ref = c.grain(*key);
        let name = p.name().await.unwrap();
        assert!(name.starts_with(&format!("{key}@")), "{name}");
        out.served.push(format!("name@{}", name.split('@').nth(1).unwrap()));
        for (method, result) in [("score", p.score().await), ("legacy", p.legacy().await)] {
            match result {
                Ok(n) => {
                    assert_eq!(n, if method == "score" { 32 } else { 1 });
                    out.served.push(method.into());
                }
                Err(CallError::IncompatibleVersion { ours: 1, theirs: 2 }) => {
                    out.refused.push(method.into())
                }
                Err(e) => panic!("{key}.{method}: {e:?}"),
            }
        }
    }
    out
}

/// The same for a version-2 client.
async fn v2_calls(c: &Client, keys: &[&str]) -> Outcomes {
    let mut out = Outcomes::default();
    for key in keys {
        let p: PlayerRef = c.grain(*key);
        let name = p.name().await.unwrap();
        out.served.push(format!("name@{}", name.split('@').nth(1).unwrap()));
        match p.score().await {
            Ok(n) => {
                assert_eq!(n, 64);
                out.served.push("score".into());
            }
            Err(CallError::IncompatibleVersion { ours: 2, theirs: 1 }) => {
                out.refused.push("score".into())
            }
            Err(e) => panic!("{key}.score: {e:?}"),
        }
        match p.level().await {
            Ok(_) => out.served.push("level".into()),
            Err(CallError::IncompatibleVersion { ours: 2, theirs: 1 }) => {
                out.refused.push("level".into())
            }
            Err(e) => panic!("{key}.level: {e:?}"),
        }
    }
    out
}

fn count(list: &[String], what: &str) -> usize {
    list.iter().filter(|s| s.as_str() == what).count()
}

/// Three servers go from version 1 to version 2 one at a time, with version-1 and version-2
/// clients calling throughout: every call is served or refused `IncompatibleVersion` with
/// both versions named, and what is served is exactly what the rule says.
#[test]
fn a_rolling_upgrade_serves_every_call_it_can_and_refuses_the_rest_typed() {
    paused(async {
        let net = lossy(31);
        let mut fleet: Vec<Option<Server>> =
            (0..3).map(|i| Some(start(&net, i, Build::V1))).collect();
        let old = fleet_client(&net, "10.0.1.1:0", 3).await;
        let new = fleet_client(&net, "10.0.1.2:0", 3).await;
        let keys = ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim"];
        let (k, all) = (keys.len(), 3 * keys.len());

        // All version 1: the old client is served everything; the new one only `name`.
        let o = v1_calls(&old, &keys).await;
        assert_eq!((o.served.len(), o.refused.len()), (all, 0), "{o:?}");
        let n = v2_calls(&new, &keys).await;
        assert_eq!(count(&n.served, "name@v1"), k, "{n:?}");
        assert_eq!((count(&n.refused, "score"), count(&n.refused, "level")), (k, k), "{n:?}");

        // One server upgraded: `name` is served by both builds; `score` as each client knows
        // it only by its own build's servers, which are there: nothing is refused any more.
        upgrade(&net, &mut fleet, 0, Build::V2, &[&old, &new]).await;
        let o = v1_calls(&old, &keys).await;
        assert_eq!((o.served.len(), o.refused.len()), (all, 0), "{o:?}");
        let n = v2_calls(&new, &keys).await;
        assert_eq!((n.served.len(), n.refused.len()), (all, 0), "{n:?}");
        // `name` reaches either build (placement over all three servers).
        let names: Vec<_> =
            o.served.iter().chain(&n.served).filter(|s| s.starts_with("name@")).collect();
        assert!(names.contains(&&"name@v2".to_string()), "{names:?}");
        assert!(names.contains(&&"name@v1".to_string()), "{names:?}");

        // The last version-1 server becomes the bridge build (both versions): still nothing
        // refused.
        upgrade(&net, &mut fleet, 1, Build::V2, &[&old, &new]).await;
        upgrade(&net, &mut fleet, 2, Build::Both, &[&old, &new]).await;
        let o = v1_calls(&old, &keys).await;
        assert_eq!((o.served.len(), o.refused.len()), (all, 0), "{o:?}");
        let n = v2_calls(&new, &keys).await;
        assert_eq!((n.served.len(), n.refused.len()), (all, 0), "{n:?}");

        // The bridge goes: the old client keeps `name`; what version 2 changed or removed is
        // refused, naming both versions.
        upgrade(&net, &mut fleet, 2, Build::V2, &[&old, &new]).await;
        let o = v1_calls(&old, &keys).await;
        assert_eq!(count(&o.served, "name@v2"), k, "{o:?}");
        assert_eq!((count(&o.refused, "score"), count(&o.refused, "legacy")), (k, k), "{o:?}");
        let n = v2_calls(&new, &keys).await;
        assert_eq!((n.served.len(), n.refused.len()), (all, 0), "{n:?}");
    });
}

/// One activation serves all the interfaces of its grain; a reference is cast to another of
/// them, and a cast the fleet cannot serve is a typed error.
#[test]
fn a_grain_with_several_interfaces_is_cast_between_them() {
    paused(async {
        let net = lossy(32);
        let _fleet: Vec<Server> = (0..2).map(|i| start(&net, i, Build::V2)).collect();
        let c = fleet_client(&net, "10.0.1.1:0", 2).await;
        let ann: PlayerRef = c.grain("ann");
        let bag: InventoryRef = ann.cast().unwrap();
        assert_eq!(bag.id(), ann.id(), "the same grain");
        assert_eq!(bag.add("sword".into()).await.unwrap(), 1);
        assert_eq!(bag.add("shield".into()).await.unwrap(), 2);
        // The same activation: the player sees what its inventory holds.
        assert_eq!(ann.level().await.unwrap(), 2);
        assert_eq!(bag.items().await.unwrap(), ["sword", "shield"]);
        // Back again, and to the other version of the interface (the manifests list it).
        let again: PlayerRef = bag.cast().unwrap();
        assert_eq!(again, ann);
        assert_eq!(again.name().await.unwrap(), "ann@v2");
        // An interface of the type that no server hosts, and another grain type: typed.
        assert!(matches!(
            ann.cast::<WalletRef>(),
            Err(ReferenceError::WrongType { interface: "Wallet", .. })
        ));
        assert!(matches!(
            ann.cast::<RoomRef>(),
            Err(ReferenceError::WrongType { interface: "Room", .. })
        ));
        // The manifest lists each interface with its methods.
        let s = &c.servers()[0];
        let names: Vec<_> = s.manifest.grains.iter().map(|g| (&*g.name, g.version)).collect();
        assert!(names.contains(&("Player", 2)) && names.contains(&("Inventory", 1)), "{names:?}");
    });
}

/// `Host::with` refuses what it cannot serve, naming the interface and why.
#[test]
fn hosting_an_interface_that_cannot_be_served_is_a_typed_error() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let net = SimNetwork::new(33, SimConfig::default());
        let bind = |host: Host| {
            Server::builder(ServerConfig::default()).host(host).bind_sim(&net, server_addr(0))
        };
        let state = |_: &GrainId| PlayerState::default();
        let cases: [(Host, &str, &str); 4] = [
            (
                Player::host(state).with::<InventoryRef, Other>(),
                "Inventory",
                "another grain struct",
            ),
            (Player::host(state).with::<RoomRef, PlayerState>(), "Room", "another grain type"),
            (
                Player::host(state)
                    .with::<InventoryRef, PlayerState>()
                    .with::<InventoryRef, PlayerState>(),
                "Inventory",
                "hosted twice",
            ),
            (Player::host(state).with::<SpectatorRef, PlayerState>(), "Spectator", "interleave"),
        ];
        for (host, interface, why) in cases {
            match bind(host) {
                Err(ServerError::Interface { interface: i, host: h, reason }) => {
                    assert_eq!((i, h), (interface, "Player"));
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{interface}: {other:?}"),
            }
        }
    });
}

/// A struct that implements `Inventory` but is not the player host's grain.
struct Other;

impl Inventory for Other {
    async fn add(&mut self, _: String) -> u32 {
        0
    }
    async fn items(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Room for PlayerState {
    async fn size(&self) -> u32 {
        0
    }
}

/// Versions and casts over real UDP: a version-1 and a version-2 server, a version-1 client.
#[tokio::test]
async fn versions_and_casts_cross_real_udp() {
    let bind = |build: Build, id: &str| {
        let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
        Server::builder(config)
            .host(player_host(build))
            .bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
    };
    let (a, b) = (bind(Build::V1, "a"), bind(Build::V2, "b"));
    let c = Client::builder().servers([a.local_addr(), b.local_addr()]).connect().await.unwrap();
    for key in ["ann", "bob", "cy", "dee"] {
        let p: PlayerV1Ref = c.grain(key);
        // Changed in version 2: only `a` serves it, whatever the placement says of `name`.
        assert_eq!(p.score().await.unwrap(), 32);
        assert!(p.name().await.unwrap().starts_with(key));
        let bag: InventoryRef = p.cast().unwrap();
        assert!(bag.add("map".into()).await.unwrap() >= 1);
    }
    let v2: PlayerRef = c.grain("ann");
    assert_eq!(v2.score().await.unwrap(), 64, "only `b` serves version 2's `score`");
}
