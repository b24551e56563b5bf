//! The front door against attackers who forge source addresses or replay what they saw (issue
//! 19), over the simulated network: `HELLO`s spoofed in a victim's name do not keep the victim
//! out, an address holding a session is budgeted like any other, an eavesdropped token replayed
//! from elsewhere does not lock its player out, and a player whose client restarts (a new port)
//! comes back with the same token.

use std::net::SocketAddr;
use std::time::Duration;

use grainwire::auth::{ConnectToken, PlayerToken, TokenKey};
use grainwire::proto::rng::SplitMix64;
use grainwire::proto::wire::{self, Handshake, Packet};
use grainwire::testing::{RawEvent, RawPeer};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{Client, ClientConfig, GrainId, Server, ServerConfig, TransportConfig};

mod support;
use support::{addr, raw_handshake, wait_until};

const SERVER: &str = "10.0.0.1:7000";
const VICTIM: &str = "10.0.5.5:40000";

#[grainwire::grain]
trait Echo {
    async fn echo(&mut self, n: u32) -> u32;
}

struct EchoGrain;

impl Echo for EchoGrain {
    async fn echo(&mut self, n: u32) -> u32 {
        n
    }
}

fn key() -> TokenKey {
    TokenKey::new(1, [0x42; 32])
}

fn server(net: &SimNetwork, keys: Vec<TokenKey>) -> Server {
    let transport = TransportConfig { seed: Some(5), ..TransportConfig::server() };
    Server::builder(ServerConfig { transport, ..ServerConfig::default() })
        .token_keys(keys)
        .host(Echo::host(|_: &GrainId| EchoGrain))
        .bind_sim(net, addr(SERVER))
        .unwrap()
}

fn token(client_id: u64) -> PlayerToken {
    let servers = [SERVER.parse().unwrap()];
    ConnectToken::issue(&key(), client_id, &servers, Duration::from_secs(60), b"").unwrap()
}

async fn connect(net: &SimNetwork, at: &str, token: Option<PlayerToken>) -> Client {
    let config = ClientConfig { seed: Some(3), ..ClientConfig::default() };
    let mut b = Client::builder().config(config).servers([addr(SERVER)]);
    if let Some(t) = token {
        b = b.token(t);
    }
    b.connect_sim(net, addr(at)).await.expect("connected")
}

fn hello(nonce: u32) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode_handshake(&mut v, &Handshake::Hello { nonce });
    v
}

/// A spoofer sends `HELLO`s in the victim's name, 10,000 a second, for `secs`: from its very
/// port, or from random ports of its address.
fn spoof_hellos(net: SimNetwork, exact: bool, secs: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = SplitMix64::new(11);
        let victim = addr(VICTIM);
        for _ in 0..secs * 1000 {
            for _ in 0..10 {
                let port =
                    if exact { victim.port() } else { 1024 + (rng.next_u32() % 60_000) as u16 };
                let from = SocketAddr::new(victim.ip(), port);
                net.spoof(from, addr(SERVER), &hello(rng.next_u32()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// The victim connects while the flood runs, plain and with a token, whether the spoofer
/// knows its port or only its address; it is then served.
#[tokio::test(start_paused = true)]
async fn spoofed_hellos_do_not_keep_the_victim_out() {
    for protected in [false, true] {
        for exact in [true, false] {
            // Jitter spreads the flood's datagrams and the victim's over each millisecond, as
            // a real network would (no one's always first in its tick).
            let jitter = Duration::from_millis(3);
            let net = SimNetwork::new(21, SimConfig { jitter, ..SimConfig::default() });
            let keys = if protected { vec![key()] } else { Vec::new() };
            let s = server(&net, keys);
            let flood = spoof_hellos(net.clone(), exact, 3);
            tokio::time::sleep(Duration::from_millis(500)).await; // the flood is on
            let started = tokio::time::Instant::now();
            let c = connect(&net, VICTIM, protected.then(|| token(7))).await;
            let took = started.elapsed();
            for i in 0..20 {
                assert_eq!(c.grain::<EchoRef>(i64::from(i)).echo(i).await.unwrap(), i);
            }
            let stats = s.stats().transport;
            if exact {
                // Its very port: the flood is limited (and the answers give the victim cookies).
                assert!(stats.handshakes_rate_limited > 4000, "the flood was limited: {stats:?}");
            } else {
                // Random ports of its address: every bucket but the victim's takes a HELLO or
                // two, and answers each (no larger than it: no amplification).
                assert!(net.stats().undeliverable > 4000, "{:?}", net.stats());
            }
            assert!(
                took < Duration::from_secs(2),
                "protected {protected}, exact port {exact}: connected after {took:?}"
            );
            flood.abort();
        }
    }
}

/// An address that holds a session has no free pass: 5,000 `HELLO`s from its session's own
/// address and port get at most a second's budget and the refill answered.
#[tokio::test(start_paused = true)]
async fn an_address_holding_a_session_is_budgeted_too() {
    let net = SimNetwork::new(22, SimConfig::default());
    let s = server(&net, Vec::new());
    let sock = net.raw_socket(addr("10.0.6.6:1")).unwrap();
    let mut peer = RawPeer::new(9, 1 << 20);
    raw_handshake(&sock, addr(SERVER), &mut peer).await;
    let start = tokio::time::Instant::now();
    for i in 0..5000u32 {
        sock.send_to(addr(SERVER), &hello(i));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let secs = start.elapsed().as_secs_f64();
    let mut challenges = 0;
    while let Some((_, d)) = sock.try_recv() {
        if let Ok(Packet::Handshake(h)) = wire::decode_packet(&d)
            && matches!(h.body, Handshake::Challenge { .. })
        {
            challenges += 1;
        }
    }
    let rate = f64::from(TransportConfig::server().handshake_rate_per_ip);
    let most = (rate * (1.0 + secs)).ceil() as usize;
    assert!(challenges <= most, "{challenges} CHALLENGEs in {secs:.2} s, budget {most}");
    assert!(challenges >= rate as usize, "its budget was there: {challenges}");
    assert_eq!(s.session_count(), 1, "its session lives on");
}

/// An eavesdropper replays the player's `CONNECT` (its sealed token) from its own address,
/// again and again: it gets sessions it cannot use, which end unproven, and the player is
/// never locked out. The player's client then restarts on a new port with the same token: its
/// new session proves itself and the old one is over.
#[tokio::test(start_paused = true)]
async fn a_stolen_token_locks_nobody_out_and_a_restarted_player_comes_back() {
    let net = SimNetwork::new(23, SimConfig::default());
    let s = server(&net, vec![key()]);
    let t = token(42);
    // The eavesdropper saw the sealed token and uses it first, from two addresses.
    for thief in ["10.0.9.1:1", "10.0.9.2:1"] {
        let sock = net.raw_socket(addr(thief)).unwrap();
        let mut peer = RawPeer::new(77, 1 << 20).with_token(std::sync::Arc::new(t.clone()));
        sock.send_to(addr(SERVER), &peer.hello());
        let (_, challenge) = sock.recv().await;
        let RawEvent::Reply(connect) = peer.on_datagram(&challenge) else { panic!("challenge") };
        sock.send_to(addr(SERVER), &connect);
        let (_, accept) = sock.recv().await;
        // The server accepts (it cannot tell yet), but the ACCEPT's proof is checked by whoever
        // holds the secrets: the raw peer does, and would be established; it never sends a
        // packet sealed with them, so its session never proves.
        let _ = peer.on_datagram(&accept);
    }
    assert_eq!(s.session_count(), 2);
    let player = connect(&net, "10.0.1.1:1000", Some(t.clone())).await;
    assert_eq!(player.grain::<EchoRef>(1i64).echo(5).await.unwrap(), 5);
    // The thieves' sessions end unproven; the player's lives on.
    let handshake_timeout = TransportConfig::server().handshake_timeout;
    tokio::time::sleep(handshake_timeout + Duration::from_millis(500)).await;
    assert_eq!(s.session_count(), 1);
    assert_eq!(player.grain::<EchoRef>(2i64).echo(6).await.unwrap(), 6);
    // The client restarts (a new port), the old one never says goodbye.
    let restarted = connect(&net, "10.0.1.1:1001", Some(t)).await;
    assert_eq!(restarted.grain::<EchoRef>(3i64).echo(7).await.unwrap(), 7);
    wait_until("the old session is over", Duration::from_secs(2), || s.session_count() == 1).await;
    assert_eq!(restarted.grain::<EchoRef>(4i64).echo(8).await.unwrap(), 8);
}
