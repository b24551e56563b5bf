//! Sessions that survive a network change: a protected (token) session follows its client to
//! a new address (a NAT rebinding, another network) once the new address answers a path
//! challenge, losing nothing: calls pending, streams running and updates carry on. A forged or
//! replayed packet from a new address moves nothing and gets no answer; the challenge is no
//! larger than what the new address sent; the move takes one round trip. Plain sessions end at
//! once (`RESET`) and their client connects again. Over the simulated network (virtual time)
//! and over real loopback UDP through a NAT-like relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod support;

use grainwire::auth::{ConnectToken, TokenKey};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{Client, ClientConfig, GrainId, GrainStream, Server, ServerConfig};
use support::{paused, wait_until};

#[grainwire::grain]
trait Pawn {
    /// Adds `n`; the sum.
    async fn add(&mut self, n: u64) -> u64;
    /// Answers `n` after `ms` milliseconds.
    async fn slow(&self, n: u64, ms: u64) -> u64;
    /// `0..n`.
    async fn count(&self, n: u64) -> GrainStream<u64>;
}

#[derive(Default)]
struct PawnState {
    sum: u64,
}

impl Pawn for PawnState {
    async fn add(&mut self, n: u64) -> u64 {
        self.sum += n;
        self.sum
    }
    async fn slow(&self, n: u64, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        n
    }
    async fn count(&self, n: u64) -> GrainStream<u64> {
        GrainStream::iter(0..n)
    }
}

const SERVER: &str = "10.0.0.1:7000";
/// The player's host, and the addresses its NAT shows it as.
const PLAYER: &str = "10.0.1.1:5000";
const MOVED: &str = "10.0.2.2:6000";
const ATTACKER: &str = "10.0.9.9:6666";

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn key() -> TokenKey {
    TokenKey::new(1, [0x42; 32])
}

fn server(net: &SimNetwork, protected: bool) -> Server {
    let mut b = Server::builder(ServerConfig::default())
        .host(Pawn::host(|_: &GrainId| PawnState::default()));
    if protected {
        b = b.token_keys([key()]);
    }
    b.bind_sim(net, a(SERVER)).unwrap()
}

async fn client(net: &SimNetwork, protected: bool) -> Client {
    let mut c = Client::builder()
        .config(ClientConfig {
            default_timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        })
        .servers([a(SERVER)]);
    if protected {
        let token =
            ConnectToken::issue(&key(), 7, &[a(SERVER).into()], Duration::from_secs(600), b"")
                .unwrap();
        c = c.token(token);
    }
    c.connect_sim(net, a(PLAYER)).await.unwrap()
}

fn lossy(seed: u64) -> SimNetwork {
    SimNetwork::new(
        seed,
        SimConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(8),
            ..SimConfig::default()
        },
    )
}

/// No `Disconnected` event: the client kept its session throughout.
fn never_disconnected(
    events: &mut tokio::sync::broadcast::Receiver<grainwire::client::ClientEvent>,
) {
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, grainwire::client::ClientEvent::Disconnected { .. }), "{e:?}");
    }
}

/// The player's address changes while a stream runs and a call is pending (at 5 % loss, with
/// duplication and reordering): the same session goes on at the new address, every stream item
/// arrives once and in order, the pending call is answered, later calls count once; then it
/// moves again.
#[test]
fn a_protected_session_follows_its_client_mid_stream_and_mid_call() {
    paused(async {
        let net = lossy(1);
        let s = server(&net, true);
        let c = client(&net, true).await;
        let mut events = c.events();
        let pawn: PawnRef = c.grain(1);
        assert_eq!(pawn.add(1).await.unwrap(), 1);
        let mut items = pawn.count(20_000);
        for n in 0..2_000 {
            assert_eq!(items.next().await.unwrap().unwrap(), n);
        }
        let call = tokio::spawn({
            let pawn = pawn.clone();
            async move { pawn.slow(7, 300).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The NAT rebinds: from now on the player is `MOVED` to the world.
        net.rebind(a(PLAYER), a(MOVED));
        for n in 2_000..20_000 {
            assert_eq!(items.next().await.unwrap().unwrap(), n, "in order, once");
        }
        assert!(items.next().await.is_none(), "finished");
        assert_eq!(call.await.unwrap().unwrap(), 7, "the pending call is answered");
        assert_eq!(pawn.add(2).await.unwrap(), 3, "calls count once");
        let stats = s.stats().transport;
        assert_eq!(stats.sessions_migrated, 1, "{stats:?}");
        assert_eq!(s.session_count(), 1, "the same session");
        // And again, to another address.
        net.rebind(a(PLAYER), a("10.0.3.3:7000"));
        assert_eq!(pawn.add(3).await.unwrap(), 6);
        assert_eq!(s.stats().transport.sessions_migrated, 2);
        assert_eq!(s.session_count(), 1);
        assert!(c.is_connected());
        never_disconnected(&mut events);
    });
}

/// Out of the network for four seconds, back at another address: the session resumes there
/// (the server held it: it allows `idle_timeout` of silence), the call made meanwhile is
/// answered.
#[test]
fn back_after_an_outage_at_another_address() {
    paused(async {
        let net = SimNetwork::new(
            2,
            SimConfig { delay: Duration::from_millis(20), ..SimConfig::default() },
        );
        let s = server(&net, true);
        let c = client(&net, true).await;
        let mut events = c.events();
        let pawn: PawnRef = c.grain(1);
        assert_eq!(pawn.add(1).await.unwrap(), 1);
        net.set_down(a(PLAYER), true);
        let call = tokio::spawn({
            let pawn = pawn.clone();
            async move { pawn.add(10).await }
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        net.set_down(a(PLAYER), false);
        net.rebind(a(PLAYER), a(MOVED));
        assert_eq!(call.await.unwrap().unwrap(), 11, "answered once, after the move");
        assert_eq!(pawn.add(1).await.unwrap(), 12);
        assert_eq!(s.stats().transport.sessions_migrated, 1);
        assert_eq!(s.session_count(), 1);
        never_disconnected(&mut events);
    });
}

/// One round trip: the first packet from the new address arrives, the challenge goes there,
/// its answer moves the session. The challenge is a small sealed packet, never larger than
/// what the new address had sent, and nothing else goes there before the move.
#[test]
fn the_move_takes_one_round_trip_and_the_challenge_is_no_larger_than_what_came() {
    paused(async {
        // 20 ms each way, no jitter: a round trip is 40 ms.
        let net = SimNetwork::new(
            3,
            SimConfig { delay: Duration::from_millis(20), ..SimConfig::default() },
        );
        let s = server(&net, true);
        let c = client(&net, true).await;
        let pawn: PawnRef = c.grain(1);
        assert_eq!(pawn.add(1).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await; // acks settle
        net.record_sizes();
        net.rebind(a(PLAYER), a(MOVED));
        let start = tokio::time::Instant::now();
        let call = tokio::spawn({
            let pawn = pawn.clone();
            async move { pawn.add(1).await }
        });
        wait_until("moved", Duration::from_secs(5), || s.stats().transport.sessions_migrated == 1)
            .await;
        let took = start.elapsed();
        eprintln!("moved {took:?} after the first packet left the new address (RTT 40 ms)");
        // The request reaches the server after 20 ms; one round trip later the session moved.
        assert!(took <= Duration::from_millis(20 + 40 + 2), "took {took:?}");
        let before_move = net.recorded_sizes();
        assert_eq!(call.await.unwrap().unwrap(), 2);
        let mut from_new = 0;
        let mut challenges = 0;
        for (from, to, size) in before_move {
            if from == a(MOVED) {
                from_new += size;
            }
            if to == a(MOVED) && from == a(SERVER) {
                challenges += 1;
                assert!(size <= from_new, "a {size}-byte challenge after {from_new} bytes came");
                assert!(size <= 34, "a challenge alone: {size} bytes");
            }
        }
        assert!(challenges >= 1, "the new address was challenged");
        assert_eq!(s.stats().transport.path_challenges, challenges);
    });
}

/// An attacker replays the player's captured packets from its own address, and forges one with
/// the session's tag: neither is authentic and fresh, so nothing moves, nothing is sent to the
/// attacker's address, and the player's session goes on where it was.
#[test]
fn a_replayed_or_forged_packet_from_a_new_address_moves_nothing() {
    paused(async {
        let net = SimNetwork::new(
            4,
            SimConfig { delay: Duration::from_millis(5), ..SimConfig::default() },
        );
        let s = server(&net, true);
        let c = client(&net, true).await;
        let pawn: PawnRef = c.grain(1);
        net.capture();
        assert_eq!(pawn.add(1).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let captured: Vec<Vec<u8>> = net
            .captured()
            .into_iter()
            .filter(|(from, to, d)| *from == a(PLAYER) && *to == a(SERVER) && d[0] & 0x80 != 0)
            .map(|(_, _, d)| d)
            .collect();
        assert!(!captured.is_empty(), "the player sent data packets");
        net.record_sizes();
        for d in &captured {
            net.spoof(a(ATTACKER), a(SERVER), d); // replayed
            let mut forged = d.clone();
            for b in &mut forged[6..] {
                *b ^= 0x5a; // same header (the tag), another body
            }
            net.spoof(a(ATTACKER), a(SERVER), &forged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = s.stats().transport;
        assert_eq!(stats.sessions_migrated, 0);
        assert_eq!(stats.path_challenges, 0);
        assert_eq!(stats.moved_refused, 2 * captured.len() as u64, "{stats:?}");
        let answered = net.recorded_sizes().iter().filter(|(_, to, _)| *to == a(ATTACKER)).count();
        assert_eq!(answered, 0, "nothing goes to the attacker");
        assert_eq!(pawn.add(1).await.unwrap(), 2, "the session goes on where it was");
        assert_eq!(s.session_count(), 1);
    });
}

/// A plain (trusted) session cannot tell its client from anyone naming its tag: its client's
/// new address gets a `RESET`, the session ends at once, and the client connects again from
/// there (its calls after that are served).
#[test]
fn a_plain_session_ends_at_once_and_its_client_connects_again() {
    paused(async {
        let net = SimNetwork::new(
            5,
            SimConfig { delay: Duration::from_millis(5), ..SimConfig::default() },
        );
        let s = server(&net, false);
        let c = client(&net, false).await;
        let pawn: PawnRef = c.grain(1);
        assert_eq!(pawn.add(1).await.unwrap(), 1);
        let mut events = c.events();
        net.rebind(a(PLAYER), a(MOVED));
        // The next call meets the RESET; the client reconnects and later calls go through.
        let _ = pawn.add(1).await;
        let mut saw_disconnect = false;
        for _ in 0..200 {
            while let Ok(e) = events.try_recv() {
                saw_disconnect |= matches!(e, grainwire::client::ClientEvent::Disconnected { .. });
            }
            if saw_disconnect && pawn.add(0).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(saw_disconnect, "the plain session ended");
        assert!(pawn.add(0).await.is_ok(), "a new session serves calls");
        assert_eq!(s.stats().transport.sessions_migrated, 0);
    });
}

/// Over real loopback UDP: the player reaches the server through a relay that, like a NAT,
/// forwards its datagrams from a port of its own, and mid-stream switches to another port.
/// The protected session follows; the stream and a pending call carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_session_follows_a_nat_rebinding_over_real_udp() {
    let s = Server::builder(ServerConfig::default())
        .host(Pawn::host(|_: &GrainId| PawnState::default()))
        .token_keys([key()])
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let relay = Relay::start(s.local_addr()).await;
    let token = ConnectToken::issue(
        &key(),
        7,
        &[s.local_addr().into(), relay.front.into()],
        Duration::from_secs(600),
        b"",
    )
    .unwrap();
    // The token names the server; the player reaches it through the relay's address.
    let c = Client::builder().servers([relay.front]).token(token).connect().await;
    let c = match c {
        Ok(c) => c,
        Err(e) => panic!("connect through the relay: {e}"),
    };
    let pawn: PawnRef = c.grain(1);
    assert_eq!(pawn.add(1).await.unwrap(), 1);
    let mut items = pawn.count(50_000);
    for n in 0..5_000 {
        assert_eq!(items.next().await.unwrap().unwrap(), n);
    }
    let call = tokio::spawn({
        let pawn = pawn.clone();
        async move { pawn.slow(9, 100).await }
    });
    relay.rebind.store(true, Ordering::SeqCst);
    for n in 5_000..50_000 {
        assert_eq!(items.next().await.unwrap().unwrap(), n);
    }
    assert_eq!(call.await.unwrap().unwrap(), 9);
    assert_eq!(pawn.add(1).await.unwrap(), 2);
    assert_eq!(s.stats().transport.sessions_migrated, 1);
    assert_eq!(s.session_count(), 1);
}

/// A NAT-like relay on loopback: the player sends to `front`; the relay forwards from its
/// `back` socket (a port of its own) to the server and the server's answers back to the player.
/// Once `rebind` is set it forwards from a second back socket instead (the NAT gave the player
/// another port), and drops what reaches the first.
struct Relay {
    front: SocketAddr,
    rebind: Arc<AtomicBool>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Self {
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let backs = [
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        ];
        let rebind = Arc::new(AtomicBool::new(false));
        let player = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let relay = Relay { front: front.local_addr().unwrap(), rebind: rebind.clone() };
        {
            let (front, backs, rebind, player) =
                (front.clone(), backs.clone(), rebind.clone(), player.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *player.lock().unwrap() = Some(from);
                    let back = &backs[usize::from(rebind.load(Ordering::SeqCst))];
                    let _ = back.send_to(&buf[..n], server).await;
                }
            });
        }
        for (i, back) in backs.into_iter().enumerate() {
            let (front, rebind, player) = (front.clone(), rebind.clone(), player.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    // The old mapping is gone once the NAT rebound.
                    if usize::from(rebind.load(Ordering::SeqCst)) != i {
                        continue;
                    }
                    let to = *player.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        relay
    }
}
