//! The demo game's grains, shared by the examples (`demo`, `game_server`, `game_client`,
//! `bench`).

use std::collections::VecDeque;

use grainwire::GrainId;
use grainwire::server::Host;
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
    /// The id of the server the player's activation lives on (safe to ask twice).
    #[idempotent]
    async fn server(&self) -> String;
}

/// A chat room.
#[grainwire::grain]
pub(crate) trait Room {
    /// Posts a line; returns how many lines the room has seen.
    async fn say(&mut self, who: String, text: String) -> u64;
    /// The last lines.
    async fn recent(&self) -> Vec<String>;
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

/// The player grain's state.
#[derive(Debug)]
pub(crate) struct PlayerState {
    name: String,
    health: u32,
    position: (f32, f32),
    server: std::sync::Arc<str>,
}

impl Player for PlayerState {
    async fn join(&mut self, name: String) -> u32 {
        self.name = name;
        1
    }
    async fn hit(&mut self, damage: u32) -> Result<u32, Defeated> {
        match self.health.checked_sub(damage) {
            Some(h) => {
                self.health = h;
                Ok(h)
            }
            None => Err(Defeated { overkill: damage - self.health }),
        }
    }
    async fn move_by(&mut self, dx: f32, dy: f32) {
        self.position.0 += dx;
        self.position.1 += dy;
    }
    async fn position(&self) -> (f32, f32) {
        self.position
    }
    async fn server(&self) -> String {
        self.server.to_string()
    }
}

/// The room grain's state.
#[derive(Debug, Default)]
pub(crate) struct RoomState {
    lines: VecDeque<String>,
    count: u64,
}

impl Room for RoomState {
    async fn say(&mut self, who: String, text: String) -> u64 {
        self.lines.push_back(format!("{who}: {text}"));
        if self.lines.len() > 16 {
            self.lines.pop_front();
        }
        self.count += 1;
        self.count
    }
    async fn recent(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
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
pub(crate) const GRAIN_NAMES: [&str; 3] = ["player", "room", "echo"];

/// The host for the grain type named `name` (see [`GRAIN_NAMES`]) on the server `server`.
pub(crate) fn host(name: &str, server: &str) -> Option<Host> {
    let server: std::sync::Arc<str> = server.into();
    Some(match name {
        "player" => {
            let server = server.clone();
            Player::host(move |_: &GrainId| PlayerState {
                name: String::new(),
                health: 100,
                position: (0.0, 0.0),
                server: server.clone(),
            })
        }
        "room" => Room::host(|_: &GrainId| RoomState::default()),
        "echo" => Echo::host(move |_: &GrainId| EchoState { server: server.clone() }),
        _ => return None,
    })
}
