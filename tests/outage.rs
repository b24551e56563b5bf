//! A player's network gone for a few seconds: the session survives (both sides allow
//! `idle_timeout` of silence, 10 s by default), the reliable call made meanwhile is answered
//! once the network is back, sequenced updates sent meanwhile are simply lost and the next one
//! arrives, and nothing reconnects or is replaced. Plain and protected (token) sessions, over
//! the simulated network on virtual time.

use std::net::SocketAddr;
use std::time::Duration;

mod support;

use grainwire::auth::{ConnectToken, TokenKey};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig};

#[grainwire::grain]
trait Pawn {
    #[sequenced]
    async fn moved(&mut self, n: u64);
    async fn last(&self) -> u64;
}

#[derive(Default)]
struct PawnState {
    last: u64,
}

impl Pawn for PawnState {
    async fn moved(&mut self, n: u64) {
        self.last = n;
    }
    async fn last(&self) -> u64 {
        self.last
    }
}

/// Asks the pawn for its last move until it is `want` (at most 100 round trips).
async fn until_last(pawn: &PawnRef, want: u64) -> u64 {
    let mut last = 0;
    for _ in 0..100 {
        last = pawn.last().await.unwrap();
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    last
}

const SERVER: &str = "10.0.0.1:7000";
const PLAYER: &str = "10.0.1.1:5000";

#[test]
fn a_few_seconds_without_network_keep_the_session() {
    for protected in [false, true] {
        support::paused(async {
            let net = SimNetwork::new(
                9,
                SimConfig { delay: Duration::from_millis(20), ..SimConfig::default() },
            );
            let key = TokenKey::new(1, [0x42; 32]);
            let mut builder = Server::builder(ServerConfig::default())
                .host(Pawn::host(|_: &GrainId| PawnState::default()));
            if protected {
                builder = builder.token_keys([key.clone()]);
            }
            let server = builder.bind_sim(&net, SERVER.parse().unwrap()).unwrap();
            let mut c = Client::builder()
                .config(ClientConfig {
                    default_timeout: Duration::from_secs(30),
                    ..ClientConfig::default()
                })
                .servers([SERVER.parse::<SocketAddr>().unwrap()]);
            if protected {
                let servers = [SERVER.parse().unwrap()];
                let token =
                    ConnectToken::issue(&key, 7, &servers, Duration::from_secs(60), b"").unwrap();
                c = c.token(token);
            }
            let c = c.connect_sim(&net, PLAYER.parse().unwrap()).await.unwrap();
            let mut events = c.events();
            let pawn: PawnRef = c.grain(1);
            pawn.moved(1).await.unwrap();
            // An update has no order with calls: ask until it is there (virtual time).
            assert_eq!(until_last(&pawn, 1).await, 1);
            let session = c.servers()[0].transport;

            // Four seconds without network: a call made meanwhile waits, updates are lost.
            net.set_down(PLAYER.parse().unwrap(), true);
            let call = tokio::spawn({
                let pawn = pawn.clone();
                async move { pawn.last().await }
            });
            for n in 2..=5 {
                pawn.moved(n).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            net.set_down(PLAYER.parse().unwrap(), false);
            // The call made during the outage is answered (with what the grain had then).
            assert_eq!(call.await.unwrap().unwrap(), 1, "protected {protected}");
            pawn.moved(6).await.unwrap();
            assert_eq!(until_last(&pawn, 6).await, 6, "protected {protected}");
            // The same session throughout: nothing reconnected or replaced.
            assert_eq!(server.session_count(), 1);
            assert!(c.is_connected());
            let now = c.servers()[0].transport;
            assert!(now.packets_sent > session.packets_sent, "the same session went on");
            while let Ok(e) = events.try_recv() {
                assert!(
                    !matches!(e, grainwire::client::ClientEvent::Disconnected { .. }),
                    "protected {protected}: {e:?}"
                );
            }
        });
    }
}
