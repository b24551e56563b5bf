//! Grains end to end over loopback UDP: the first smoke test.

use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Dead;

#[grainwire::grain]
trait Player {
    /// Joins; returns the player's number.
    async fn join(&mut self, name: String) -> u32;
    async fn damage(&mut self, hp: u32) -> Result<u32, Dead>;
    #[one_way]
    async fn ping(&mut self, n: u64);
    #[timeout_ms = 250]
    async fn name(&self) -> String;
}

struct PlayerState {
    name: String,
    hp: u32,
}

impl Player for PlayerState {
    async fn join(&mut self, name: String) -> u32 {
        self.name = name;
        7
    }
    async fn damage(&mut self, hp: u32) -> Result<u32, Dead> {
        self.hp = self.hp.checked_sub(hp).ok_or(Dead)?;
        Ok(self.hp)
    }
    async fn ping(&mut self, _n: u64) {}
    async fn name(&self) -> String {
        self.name.clone()
    }
}

#[tokio::test]
async fn calls_round_trip() {
    let server = Server::builder(ServerConfig::default())
        .host(Player::host(|_| PlayerState { name: String::new(), hp: 10 }))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client = Client::connect(server.local_addr(), ClientConfig::default()).await.unwrap();
    assert_eq!(client.server_id().as_ref(), Some(server.server_id()));
    let p: PlayerRef = client.grain(1);
    assert_eq!(p.join("ann".into()).await.unwrap(), 7);
    assert_eq!(p.name().await.unwrap(), "ann");
    assert_eq!(p.damage(4).await.unwrap(), 6);
    assert!(matches!(p.damage(40).await, Err(CallError::Application(Dead))));
    p.ping(3).await.unwrap();
    assert_eq!(client.grain::<PlayerRef>(2).name().await.unwrap(), "");
    assert_eq!(server.activation_count(), 2);
    server.shutdown().await;
}

/// Arguments named like the generated code's own locals compile and arrive in order.
#[grainwire::grain]
trait Shadow {
    #[allow(clippy::too_many_arguments)]
    async fn mix(
        &mut self,
        grain: u32,
        out: u32,
        args: u32,
        method: u32,
        id: u32,
        inner: u32,
        status: u32,
    ) -> Vec<u32>;
    async fn fallible(&mut self, v: u32, e: u32, a: u32) -> Result<u32, u32>;
}

struct ShadowGrain;

impl Shadow for ShadowGrain {
    async fn mix(
        &mut self,
        grain: u32,
        out: u32,
        args: u32,
        method: u32,
        id: u32,
        inner: u32,
        status: u32,
    ) -> Vec<u32> {
        vec![grain, out, args, method, id, inner, status]
    }
    async fn fallible(&mut self, v: u32, e: u32, a: u32) -> Result<u32, u32> {
        if v > 0 { Ok(v + e + a) } else { Err(e + a) }
    }
}

#[tokio::test]
async fn argument_names_never_clash_with_generated_code() {
    let server = Server::builder(ServerConfig::default())
        .host(Shadow::host(|_| ShadowGrain))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client = Client::connect(server.local_addr(), ClientConfig::default()).await.unwrap();
    let s: ShadowRef = client.grain(1);
    assert_eq!(s.mix(1, 2, 3, 4, 5, 6, 7).await.unwrap(), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(s.fallible(1, 2, 3).await.unwrap(), 6);
    assert!(matches!(s.fallible(0, 2, 3).await, Err(CallError::Application(5))));
    server.shutdown().await;
}
