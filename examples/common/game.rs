//! The demo game's grains, shared by the examples (`demo`, `game_server`, `game_client`,
//! `bench`). References are values: the lobby returns a `RoomRef`, a room keeps `PlayerRef`s
//! and calls them, a player grain calls its room (wherever it lives), and a room pushes its
//! chat lines to the `ChatView` observers players' clients host, dropping a viewer when its
//! session ends (presence), and streams its log to whoever reads it.

use std::collections::{BTreeMap, VecDeque};

use grainwire::persistence::{Persisted, Stateful, Storage};
use grainwire::server::{Host, SessionEnded, SessionId, Timer, caller, context};
use grainwire::{GrainId, GrainStream};
use serde::{Deserialize, Serialize};

/// A player was hit with more damage than it had health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Defeated {
    /// By how much.
    pub(crate) overkill: u32,
}

/// A player in the game.
#[grainwire::grain]
pub(crate) trait Player {
    /// Joins the game under `name`; returns the player's level.
    async fn join(&mut self, name: String) -> u32;
    /// Takes damage; the health left, or `Defeated`.
    async fn hit(&mut self, damage: u32) -> Result<u32, Defeated>;
    /// Moves (fire and forget).
    #[one_way]
    async fn move_by(&mut self, dx: f32, dy: f32);
    /// Where the player is.
    #[timeout_ms = 500]
    async fn position(&self) -> (f32, f32);
    /// Where the player is now, as the game sends it every frame: sent once, latest wins (an
    /// older update is dropped, a queued one replaced by the newer).
    #[sequenced]
    async fn set_position(&mut self, x: f32, y: f32);
    /// The id of the server the player's activation lives on (safe to ask twice).
    #[idempotent]
    async fn server(&self) -> String;
    /// A room tells the player it entered it.
    async fn entered(&mut self, room: RoomRef);
    /// Says `text` in the player's room: the player grain calls the room grain, on whichever
    /// server hosts it. How many lines the room has seen.
    async fn say(&self, text: String) -> Result<u64, String>;
    /// The daily reward (a durable reminder set on joining calls it once a day): health back.
    async fn daily_reward(&mut self);
}

/// A chat room.
#[grainwire::grain]
pub(crate) trait Room {
    /// Posts a line, pushed to every viewer; returns how many lines the room has seen.
    async fn say(&mut self, who: String, text: String) -> u64;
    /// The last lines.
    async fn recent(&self) -> Vec<String>;
    /// The room's log from line `from` on (the last 16 lines kept), numbered, as a stream:
    /// read item by item while the room serves its other calls.
    async fn log(&self, from: u64) -> GrainStream<(u64, String)>;
    /// The round clock: seconds since the first player entered (a timer ticks it).
    async fn clock(&self) -> u64;
    /// The clock's tick: a turn of the room, queued by its timer.
    #[one_way]
    async fn tick(&mut self);
    /// `player` enters: the room keeps its reference and tells the player grain. The members.
    async fn enter(&mut self, player: PlayerRef) -> Result<Vec<PlayerRef>, String>;
    /// The caller's client watches the room through `view` (an observer it hosts) until its
    /// session ends. How many viewers the room has.
    async fn subscribe(&mut self, view: ChatViewRef) -> u32;
}

/// Finds rooms for players.
#[grainwire::grain]
pub(crate) trait Lobby {
    /// A room for `player` (four per room), which the player has entered.
    async fn find_room(&mut self, player: PlayerRef) -> Result<RoomRef, String>;
}

/// What a player's client shows of a room: an observer, hosted by the client
/// (`Client::observe`) and called by the room.
#[grainwire::grain]
pub(crate) trait ChatView {
    /// A line said in the room.
    #[one_way]
    async fn line(&mut self, text: String);
}

/// Echoes and derives values: what the load tools call.
#[grainwire::grain]
pub(crate) trait Echo {
    /// Returns `data` unchanged.
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8>;
    /// Returns `n * 2 + 1` (so a client can check each answer belongs to its call).
    async fn derive(&mut self, n: u64) -> u64;
    /// Returns `n * 2 + 1` and the id of the server that ran the call.
    async fn derive_at(&mut self, n: u64) -> (u64, String);
}

/// What a player keeps across activations and servers (`#[serde(default)]`: a field added
/// later reads older records).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PlayerData {
    name: String,
    health: u32,
    position: (f32, f32),
}

impl Default for PlayerData {
    fn default() -> Self {
        Self { name: String::new(), health: 100, position: (0.0, 0.0) }
    }
}

/// The player grain's state.
pub(crate) struct PlayerState {
    /// Loaded before the activation's first call; written when it matters (joining, a hit)
    /// and when the activation ends (positions change every frame: not written each time).
    data: Persisted<PlayerData>,
    server: std::sync::Arc<str>,
    room: Option<RoomRef>,
}

impl Stateful for PlayerState {
    type State = PlayerData;
    fn state(&mut self) -> &mut Persisted<PlayerData> {
        &mut self.data
    }
}

impl PlayerState {
    /// Writes the state now (a storage that fails is logged: the game goes on).
    async fn save(&mut self) {
        if let Err(error) = self.data.write().await {
            tracing::warn!(%error, "the player's state was not written");
        }
    }
}

impl Player for PlayerState {
    async fn join(&mut self, name: String) -> u32 {
        self.data.name = name;
        self.save().await;
        // A daily reward: a durable reminder, fired by whichever server finds it due (kept
        // where the server keeps reminders: `game_server --state redis` keeps them in Redis).
        if let Some(cx) = context() {
            let day = std::time::Duration::from_secs(24 * 3600);
            cx.remind("daily reward", day, Some(day), |me: PlayerRef| async move {
                let _ = me.daily_reward().await;
            })
            .await;
        }
        1
    }
    async fn daily_reward(&mut self) {
        self.data.health = 100;
        self.save().await;
    }
    async fn hit(&mut self, damage: u32) -> Result<u32, Defeated> {
        let health = self.data.health;
        match health.checked_sub(damage) {
            Some(h) => {
                if damage > 0 {
                    self.data.health = h;
                    self.save().await;
                }
                Ok(h)
            }
            None => Err(Defeated { overkill: damage - health }),
        }
    }
    async fn move_by(&mut self, dx: f32, dy: f32) {
        self.data.position.0 += dx;
        self.data.position.1 += dy;
    }
    async fn position(&self) -> (f32, f32) {
        self.data.position
    }
    async fn set_position(&mut self, x: f32, y: f32) {
        self.data.position = (x, y);
    }
    async fn server(&self) -> String {
        self.server.to_string()
    }
    async fn entered(&mut self, room: RoomRef) {
        self.room = Some(room);
    }
    async fn say(&self, text: String) -> Result<u64, String> {
        let room = self.room.as_ref().ok_or("in no room")?;
        // A call from inside a call: it carries what is left of this call's deadline.
        let who = match context().map(|cx| cx.id().key.clone()) {
            Some(grainwire::GrainKey::Str(name)) => name.to_string(),
            other => format!("{other:?}"),
        };
        room.say(who, text).await.map_err(|e| e.to_string())
    }
}

/// The room grain's state.
#[derive(Debug, Default)]
pub(crate) struct RoomState {
    lines: VecDeque<String>,
    count: u64,
    members: Vec<PlayerRef>,
    /// Viewers by the session that subscribed them.
    viewers: BTreeMap<SessionId, ChatViewRef>,
    /// The round clock, and its timer (started when the first player enters).
    clock: u64,
    timer: Option<Timer>,
}

impl Room for RoomState {
    async fn say(&mut self, who: String, text: String) -> u64 {
        let line = format!("{who}: {text}");
        // Server push: one-way calls to the clients' observers (done once queued, in order);
        // a viewer whose client is gone is dropped.
        let mut gone = Vec::new();
        for (session, view) in &self.viewers {
            if view.line(line.clone()).await.is_err() {
                gone.push(*session);
            }
        }
        for session in gone {
            self.viewers.remove(&session);
        }
        self.lines.push_back(line);
        if self.lines.len() > 16 {
            self.lines.pop_front();
        }
        self.count += 1;
        self.count
    }
    async fn recent(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
    async fn clock(&self) -> u64 {
        self.clock
    }
    async fn tick(&mut self) {
        self.clock += 1;
    }
    async fn log(&self, from: u64) -> GrainStream<(u64, String)> {
        let first = self.count + 1 - self.lines.len() as u64;
        let lines: Vec<(u64, String)> =
            (first..).zip(self.lines.iter().cloned()).filter(|(n, _)| *n >= from).collect();
        GrainStream::iter(lines)
    }
    async fn enter(&mut self, player: PlayerRef) -> Result<Vec<PlayerRef>, String> {
        let me: RoomRef = context().ok_or("no context")?.this().map_err(|e| e.to_string())?;
        player.entered(me).await.map_err(|e| e.to_string())?;
        if !self.members.contains(&player) {
            self.members.push(player);
        }
        if self.timer.is_none() {
            let every_second = std::time::Duration::from_secs(1);
            self.timer = Some(context().ok_or("no context")?.every(
                every_second,
                |me: RoomRef| async move {
                    let _ = me.tick().await;
                },
            ));
        }
        Ok(self.members.clone())
    }
    async fn subscribe(&mut self, view: ChatViewRef) -> u32 {
        if let (Some(cx), Some(who)) = (context(), caller()) {
            // Presence: told (`on_session_ended`) when the subscriber's session ends.
            cx.watch(who.session());
            self.viewers.insert(who.session(), view);
        }
        self.viewers.len() as u32
    }
    async fn on_session_ended(&mut self, ended: SessionEnded) {
        self.viewers.remove(&ended.session);
    }
}

/// The lobby's state: how many players it placed.
#[derive(Debug, Default)]
pub(crate) struct LobbyState {
    placed: u32,
}

impl Lobby for LobbyState {
    async fn find_room(&mut self, player: PlayerRef) -> Result<RoomRef, String> {
        let cx = context().ok_or("no context")?;
        let room: RoomRef = cx.grain(format!("room-{}", self.placed / 4));
        room.enter(player).await.map_err(|e| e.to_string())?;
        self.placed += 1;
        Ok(room)
    }
}

/// The echo grain (stateless but for the id of the server it runs on).
#[derive(Debug)]
pub(crate) struct EchoState {
    pub(crate) server: std::sync::Arc<str>,
}

impl Echo for EchoState {
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8> {
        data
    }
    async fn derive(&mut self, n: u64) -> u64 {
        n.wrapping_mul(2).wrapping_add(1)
    }
    async fn derive_at(&mut self, n: u64) -> (u64, String) {
        (n.wrapping_mul(2).wrapping_add(1), self.server.to_string())
    }
}

/// The grain types, by the names `--grains` takes.
pub(crate) const GRAIN_NAMES: [&str; 4] = ["player", "room", "lobby", "echo"];

/// The host for the grain type named `name` (see [`GRAIN_NAMES`]) on the server `server`.
pub(crate) fn host(name: &str, server: &str, storage: &Storage) -> Option<Host> {
    let server: std::sync::Arc<str> = server.into();
    Some(match name {
        "player" => {
            let server = server.clone();
            Player::host_with_state(storage.clone(), move |_: &GrainId, data| PlayerState {
                data,
                server: server.clone(),
                room: None,
            })
        }
        "room" => Room::host(|_: &GrainId| RoomState::default()),
        "lobby" => Lobby::host(|_: &GrainId| LobbyState::default()),
        "echo" => Echo::host(move |_: &GrainId| EchoState { server: server.clone() }),
        _ => return None,
    })
}
