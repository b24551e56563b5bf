//! Players on the open internet, over the simulated network: a server with token keys serves
//! a player whose token names it (its grain sees the player's id and user data), refuses
//! everyone else with a typed reason, protects every packet (no argument byte on the wire, a
//! call costs exactly the 16-byte tag more), keeps a player to its own grain, and tells a
//! grain-to-grain caller's server id.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grainwire::auth::{ConnectToken, PlayerToken, TokenKey, TokenKind, caller, unix_now};
use grainwire::client::ClientError;
use grainwire::error::Rejection;
use grainwire::server::CallInfo;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{
    CallError, Client, ClientConfig, GrainKey, Server, ServerConfig, ServerId, TransportConfig,
};

mod support;
use support::addr;

#[grainwire::grain]
trait Player {
    /// Who the grain sees calling: client id, user data, calling server.
    async fn who(&mut self) -> (Option<u64>, Vec<u8>, Option<String>);
    /// The argument back.
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8>;
}

struct PlayerGrain;

impl Player for PlayerGrain {
    async fn who(&mut self) -> (Option<u64>, Vec<u8>, Option<String>) {
        let c = caller().expect("a grain method runs inside a call");
        (c.client_id(), c.user_data().to_vec(), c.server_id().map(|s| s.as_str().to_owned()))
    }

    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

const SERVER: &str = "10.0.0.1:7000";

fn key() -> TokenKey {
    TokenKey::new(1, [0x42; 32])
}

fn net(seed: u64, loss: f64) -> SimNetwork {
    let cfg = SimConfig {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(3),
        loss,
        ..SimConfig::default()
    };
    SimNetwork::new(seed, cfg)
}

/// A player may call its own player grain (its key is its client id); a game server may call
/// any.
fn own_grain_only(call: &CallInfo<'_>) -> bool {
    call.caller.server_id().is_some()
        || matches!(call.key, GrainKey::Int(k) if call.caller.client_id() == Some(*k as u64))
}

struct Serving {
    server: Server,
    activations: Arc<AtomicUsize>,
}

fn serve(net: &SimNetwork, keys: Vec<TokenKey>, config: ServerConfig) -> Serving {
    let activations = Arc::new(AtomicUsize::new(0));
    let made = activations.clone();
    let host = Player::host(move |_| {
        made.fetch_add(1, Ordering::Relaxed);
        PlayerGrain
    })
    .authorize(own_grain_only);
    let server = Server::builder(config)
        .token_keys(keys)
        .approve(|c| if c.client_id == 13 { Err(403) } else { Ok(()) })
        .host(host)
        .bind_sim(net, addr(SERVER))
        .unwrap();
    Serving { server, activations }
}

fn server_config() -> ServerConfig {
    let transport = TransportConfig { seed: Some(5), ..TransportConfig::server() };
    ServerConfig { server_id: Some("s1".into()), transport, ..ServerConfig::default() }
}

fn token(client_id: u64, servers: &[&str], user: &[u8]) -> PlayerToken {
    let servers: Vec<_> = servers.iter().map(|s| s.parse().unwrap()).collect();
    ConnectToken::issue(&key(), client_id, &servers, Duration::from_secs(30), user).unwrap()
}

async fn connect(
    net: &SimNetwork,
    at: &str,
    token: Option<PlayerToken>,
) -> Result<Client, ClientError> {
    let config = ClientConfig { seed: Some(3), ..ClientConfig::default() };
    let mut b = Client::builder().config(config).servers([addr(SERVER)]);
    if let Some(t) = token {
        b = b.token(t);
    }
    b.connect_sim(net, addr(at)).await
}

#[tokio::test(start_paused = true)]
async fn a_player_with_a_token_is_served_and_its_grain_sees_who_calls() {
    for (seed, loss) in [(1, 0.0), (2, 0.1), (3, 0.1)] {
        let net = net(seed, loss);
        let s = serve(&net, vec![key()], server_config());
        // The bytes the backend sent, read back by the player.
        let bytes = token(42, &[SERVER], b"ann").to_bytes();
        let c = connect(&net, "10.0.1.1:1", Some(PlayerToken::from_bytes(&bytes).unwrap()))
            .await
            .unwrap();
        let me = c.grain::<PlayerRef>(42i64);
        assert_eq!(me.who().await.unwrap(), (Some(42), b"ann".to_vec(), None));
        // Calls of every size, through loss and reordering: the session is protected.
        for n in [0usize, 1, 32, 1000, 5000, 40_000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + seed as usize) as u8).collect();
            assert_eq!(me.echo(data.clone()).await.unwrap(), data, "{n} bytes, seed {seed}");
        }
        let stats = c.transport_stats().unwrap();
        assert_eq!(stats.unauthentic, 0, "nothing forged on a clean path");
        assert!(c.servers().iter().all(|s| s.protected), "the session is protected");
        assert_eq!(s.server.stats().unauthorized, 0);
        c.disconnect().await;
    }
}

/// The argument travels encrypted: no 8-byte window of it appears in any datagram, in either
/// direction. The same call to a trusted server shows it (so the check can fail).
#[tokio::test(start_paused = true)]
async fn no_argument_byte_appears_on_the_wire_and_a_call_costs_the_tag() {
    let secret: Vec<u8> = b"ann's password is hunter2 ~32 b.".to_vec();
    assert_eq!(secret.len(), 32);
    let mut sizes = Vec::new();
    for protected in [true, false] {
        let net = net(7, 0.0);
        let keys = if protected { vec![key()] } else { Vec::new() };
        let s = {
            let host = Player::host(|_| PlayerGrain);
            Server::builder(server_config())
                .token_keys(keys)
                .host(host)
                .bind_sim(&net, addr(SERVER))
                .unwrap()
        };
        let c = connect(&net, "10.0.1.1:1", protected.then(|| token(42, &[SERVER], b"")))
            .await
            .unwrap();
        let r = c.grain::<PlayerRef>(42i64);
        r.echo(vec![0; 32]).await.unwrap(); // the grain is active, the sessions warm
        net.record_sizes();
        net.capture();
        assert_eq!(r.echo(secret.clone()).await.unwrap(), secret);
        let seen = net.captured();
        let leaked =
            seen.iter().any(|(_, _, d)| d.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
        assert_eq!(leaked, !protected, "argument bytes on the wire (protected: {protected})");
        // The call's request: the first datagram from the client.
        let request = net
            .recorded_sizes()
            .into_iter()
            .find(|(from, _, _)| *from == addr("10.0.1.1:1"))
            .map(|(_, _, n)| n)
            .unwrap();
        sizes.push(request);
        drop(s);
    }
    println!("a call with 32 bytes of arguments: {} bytes protected, {} plain", sizes[0], sizes[1]);
    assert_eq!(sizes[0], sizes[1] + 16, "protection costs the tag and nothing else");
}

#[tokio::test(start_paused = true)]
async fn everyone_without_a_valid_token_is_refused_with_the_reason() {
    let net = net(4, 0.0);
    let s = serve(
        &net,
        vec![key()],
        ServerConfig {
            transport: TransportConfig { max_connections: 2, ..server_config().transport },
            ..server_config()
        },
    );
    let other_key = TokenKey::new(1, [7; 32]);
    let expired = {
        let mut random = [9u8; 76];
        random[0] = 1;
        let servers = [SERVER.parse().unwrap()];
        PlayerToken::mint(
            &key(),
            TokenKind::Player,
            5,
            &servers,
            unix_now() - 100,
            10,
            b"",
            &random,
        )
        .unwrap()
    };
    let cases: Vec<(&str, Option<PlayerToken>, Rejection)> = vec![
        ("a stranger without a token", None, Rejection::TokenRequired),
        (
            "another backend's key",
            Some(
                ConnectToken::issue(
                    &other_key,
                    5,
                    &[SERVER.parse().unwrap()],
                    Duration::from_secs(30),
                    b"",
                )
                .unwrap(),
            ),
            Rejection::WrongKey,
        ),
        ("an expired token", Some(expired), Rejection::TokenExpired),
        (
            "a token for another server",
            Some(token(5, &["10.0.0.2:7000"], b"")),
            Rejection::NotInToken,
        ),
        ("a banned player", Some(token(13, &[SERVER], b"")), Rejection::Application { code: 403 }),
    ];
    for (i, (who, t, want)) in cases.into_iter().enumerate() {
        let e = connect(&net, &format!("10.0.2.{}:1", i + 1), t).await.unwrap_err();
        assert_eq!(e.rejection(), Some(want), "{who}: {e}");
    }
    let ep = s.server.stats().transport;
    assert_eq!((ep.rejected_token, ep.rejected_by_app, ep.sessions), (4, 1, 0), "{ep:?}");
    // One token, two addresses (a player whose client restarted elsewhere): the token moves
    // to where its secrets are proven, and the first session is over.
    let shared = token(20, &[SERVER], b"");
    let first = connect(&net, "10.0.3.1:1", Some(shared.clone())).await.unwrap();
    first.grain::<PlayerRef>(20i64).who().await.unwrap();
    let moved = connect(&net, "10.0.3.2:1", Some(shared)).await.unwrap();
    moved.grain::<PlayerRef>(20i64).who().await.unwrap();
    let one = || s.server.session_count() == 1;
    support::wait_until("the first session is over", Duration::from_secs(1), one).await;
    // Full (two sessions at most).
    let _second = connect(&net, "10.0.3.3:1", Some(token(21, &[SERVER], b""))).await.unwrap();
    let e = connect(&net, "10.0.3.4:1", Some(token(22, &[SERVER], b""))).await.unwrap_err();
    assert_eq!(e.rejection(), Some(Rejection::ServerFull));
    let made = s.activations.load(Ordering::Relaxed);
    assert_eq!(made, 1, "nobody refused made an activation (only player 20's grain is there)");
    first.disconnect().await;
    // A server without keys refuses a token rather than open a session in the clear.
    let trusted = Server::builder(server_config()).host(Player::host(|_| PlayerGrain));
    let net2 = self::net(5, 0.0);
    let _t = trusted.bind_sim(&net2, addr(SERVER)).unwrap();
    let e = connect(&net2, "10.0.4.1:1", Some(token(1, &[SERVER], b""))).await.unwrap_err();
    assert_eq!(e.rejection(), Some(Rejection::TokensNotAccepted));
}

#[tokio::test(start_paused = true)]
async fn a_player_may_call_only_its_own_grain_and_a_server_any() {
    let net = net(6, 0.0);
    let s = serve(&net, vec![key()], server_config());
    let c = connect(&net, "10.0.1.1:1", Some(token(42, &[SERVER], b"ann"))).await.unwrap();
    assert!(c.grain::<PlayerRef>(42i64).who().await.is_ok());
    for k in [7i64, 43, -42] {
        match c.grain::<PlayerRef>(k).echo(vec![1, 2, 3]).await {
            Err(CallError::Unauthorized) => {}
            other => panic!("player 42 calling grain {k}: {other:?}"),
        }
    }
    assert_eq!(s.server.stats().unauthorized, 3);
    assert_eq!(s.activations.load(Ordering::Relaxed), 1, "refused calls activate nothing");
    // Another game server's grain-to-grain client mints its own server token with the key.
    let g2g = Client::builder()
        .servers([addr(SERVER)])
        .server_identity(key(), ServerId::new("s2"))
        .connect_sim(&net, addr("10.0.0.2:9000"))
        .await
        .unwrap();
    let who = g2g.grain::<PlayerRef>(7i64).who().await.unwrap();
    assert_eq!(who, (None, b"s2".to_vec(), Some("s2".to_owned())));
    // A trusted server's grains see anonymous callers.
    let net2 = self::net(8, 0.0);
    let _t = Server::builder(server_config())
        .host(Player::host(|_| PlayerGrain))
        .bind_sim(&net2, addr(SERVER))
        .unwrap();
    let anon = connect(&net2, "10.0.1.1:1", None).await.unwrap();
    assert!(!anon.servers()[0].protected, "a trusted server's session is plain");
    assert_eq!(anon.grain::<PlayerRef>(1i64).who().await.unwrap(), (None, Vec::new(), None));
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_token_is_presented_on_reconnect_and_rotation_keeps_both_keys() {
    let net = net(9, 0.0);
    let old = TokenKey::new(1, [0x42; 32]);
    let new = TokenKey::new(2, [0x43; 32]);
    let s = serve(&net, vec![old.clone(), new.clone()], server_config());
    let servers = [SERVER.parse().unwrap()];
    let t_old = ConnectToken::issue(&old, 42, &servers, Duration::from_secs(30), b"v1").unwrap();
    let c = connect(&net, "10.0.1.1:1", Some(t_old)).await.unwrap();
    let me = c.grain::<PlayerRef>(42i64);
    assert_eq!(me.who().await.unwrap().1, b"v1".to_vec());
    // The client gets a token under the new key; after the server drops its session, the
    // reconnection presents the new token.
    c.set_token(ConnectToken::issue(&new, 42, &servers, Duration::from_secs(30), b"v2").unwrap());
    net.set_down(addr(SERVER), true);
    support::wait_until("the session is lost", Duration::from_secs(60), || {
        c.transport_stats().is_none()
    })
    .await;
    net.set_down(addr(SERVER), false);
    support::wait_until("reconnected", Duration::from_secs(60), || c.is_connected()).await;
    assert_eq!(me.who().await.unwrap().1, b"v2".to_vec());
    drop(s);
}

/// A token that expired while the client was away: its reconnection is refused
/// (`TokenExpired`, an event says so) and retried; once the application gives it a fresh one,
/// the next attempt gets in.
#[tokio::test(start_paused = true)]
async fn an_expired_token_is_refused_on_reconnect_until_the_client_gets_a_fresh_one() {
    use grainwire::client::ClientEvent;
    use grainwire::error::{ConnectError, DisconnectReason};
    let net = net(12, 0.0);
    let s = serve(&net, vec![key()], server_config());
    let servers = [SERVER.parse().unwrap()];
    let short = ConnectToken::issue(&key(), 42, &servers, Duration::from_secs(1), b"v1").unwrap();
    let c = connect(&net, "10.0.1.1:1", Some(short)).await.unwrap();
    let mut events = c.events();
    let me = c.grain::<PlayerRef>(42i64);
    assert_eq!(me.who().await.unwrap().1, b"v1".to_vec());
    // Away for longer than the token lives (the server forgets the session meanwhile).
    net.set_down(addr(SERVER), true);
    support::wait_until("the session is lost", Duration::from_secs(120), || {
        c.transport_stats().is_none() && s.server.session_count() == 0
    })
    .await;
    net.set_down(addr(SERVER), false);
    let expired = async {
        loop {
            if let Ok(ClientEvent::ConnectFailed { error, .. }) = events.recv().await
                && error
                    == ConnectError::Failed(DisconnectReason::Rejected(Rejection::TokenExpired))
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), expired).await.expect("refused as expired");
    c.set_token(ConnectToken::issue(&key(), 42, &servers, Duration::from_secs(30), b"v2").unwrap());
    support::wait_until("reconnected", Duration::from_secs(60), || c.is_connected()).await;
    assert_eq!(me.who().await.unwrap().1, b"v2".to_vec());
}

#[test]
fn a_config_without_keys_is_trusted_and_tokens_mode_needs_a_key() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let net = net(10, 0.0);
        let config = ServerConfig {
            auth: grainwire::auth::AuthConfig::Tokens { keys: Vec::new(), tokens_remembered: 10 },
            ..server_config()
        };
        let e = Server::builder(config)
            .host(Player::host(|_| PlayerGrain))
            .bind_sim(&net, addr(SERVER));
        assert!(matches!(e, Err(grainwire::server::ServerError::Config(_))), "{e:?}");
        let missing = ServerConfig {
            auth: grainwire::auth::AuthConfig::Tokens {
                keys: vec![grainwire::auth::KeyFile { id: 1, file: "/nonexistent/key".into() }],
                tokens_remembered: 10,
            },
            ..server_config()
        };
        let e = Server::builder(missing)
            .host(Player::host(|_| PlayerGrain))
            .bind_sim(&net, addr(SERVER));
        assert!(matches!(e, Err(grainwire::server::ServerError::Key(_))), "{e:?}");
    });
}

/// A stranger's junk costs the server nothing it keeps: 20,000 datagrams from 1,000 ports of
/// 250 addresses (random bytes, data of no session, HELLOs, CONNECTs with forged cookies, and
/// with real cookies but forged tokens that pass every cheap check) while a player is served.
/// The server holds the player's session only, tracks no token, and counts what it refused.
#[tokio::test(start_paused = true)]
async fn junk_from_a_thousand_ports_leaves_no_state_and_the_player_is_served() {
    use grainwire::proto::wire::{self, Cookie, Handshake, Packet};
    let net = net(11, 0.0);
    let s = serve(&net, vec![key()], server_config());
    let c = connect(&net, "10.0.1.1:1", Some(token(42, &[SERVER], b"ann"))).await.unwrap();
    let me = c.grain::<PlayerRef>(42i64);
    let socks: Vec<_> = (0..1000)
        .map(|i| net.raw_socket(addr(&format!("10.9.0.{}:{}", i % 250 + 1, 1000 + i))).unwrap())
        .collect();
    let unix = unix_now();
    let mut forged = b"GWT\x01".to_vec();
    forged.extend_from_slice(&1u32.to_le_bytes());
    forged.extend_from_slice(&unix.to_le_bytes());
    forged.extend_from_slice(&(unix + 3600).to_le_bytes());
    forged.extend((0..200).map(|i| i as u8));
    let mut rng = grainwire::proto::rng::SplitMix64::new(11);
    let mut cookies: Vec<Option<(u32, Cookie)>> = vec![None; socks.len()];
    let mut out = Vec::new();
    let mut answered = 0u64;
    for round in 0..20u32 {
        for (p, sock) in socks.iter().enumerate() {
            out.clear();
            let nonce = rng.next_u32();
            match (round % 5, cookies[p]) {
                (1, _) => out.extend((0..1 + rng.next_u64() % 1100).map(|_| rng.next_u64() as u8)),
                (2, _) => {
                    wire::encode_data_header(&mut out, rng.next_u32(), 7, 2);
                    out.extend_from_slice(&[0xee; 40]);
                }
                // A forged cookie, or the port's real one: a CONNECT with the forged token.
                (3, _) | (4, Some(_)) => {
                    let (nonce, cookie) = match cookies[p] {
                        Some(real) if round % 5 == 4 => real,
                        _ => (nonce, Cookie { time: rng.next_u32(), mac: rng.next_u64() }),
                    };
                    let token = &forged;
                    let hs =
                        Handshake::Connect { nonce, cookie, window: 1 << 20, cluster: 0, token };
                    wire::encode_handshake(&mut out, &hs);
                }
                _ => wire::encode_handshake(&mut out, &Handshake::Hello { nonce }),
            }
            sock.send_to(addr(SERVER), &out);
        }
        // The player is served all along.
        assert_eq!(me.echo(vec![round as u8; 32]).await.unwrap(), vec![round as u8; 32]);
        for (p, sock) in socks.iter().enumerate() {
            while let Some((_, d)) = sock.try_recv() {
                answered += 1;
                if let Ok(Packet::Handshake(h)) = wire::decode_packet(&d)
                    && let Handshake::Challenge { nonce, cookie } = h.body
                {
                    cookies[p] = Some((nonce, cookie));
                }
            }
        }
    }
    // The last answers still in flight (the network delays them at most 8 ms).
    for sock in &socks {
        while sock.recv_timeout(Duration::from_millis(10)).await.is_some() {
            answered += 1;
        }
    }
    let ep = s.server.stats().transport;
    assert_eq!(ep.sessions, 1, "only the player's session: {ep:?}");
    assert!(
        ep.rejected_token >= 1000,
        "forged tokens behind real cookies were checked and refused: {ep:?}"
    );
    // Every datagram is accounted for: over its address's handshake budget, dropped unanswered,
    // refused for its token, or answered statelessly (a challenge, a reset) no larger than it.
    let counted = ep.handshakes_rate_limited + ep.strangers_dropped + ep.rejected_token;
    assert_eq!(
        counted + answered - ep.rejected_token,
        20_000,
        "{ep:?}, {answered} answered, {:?}",
        net.stats()
    );
    assert!(ep.strangers_dropped >= 2000, "junk and forged cookies dropped: {ep:?}");
    assert_eq!(s.activations.load(Ordering::Relaxed), 1);
    c.disconnect().await;
}
