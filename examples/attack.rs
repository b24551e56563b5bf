//! Hostile and idle clients, for measuring what they cost a `game_server`: each speaks the wire
//! format by hand (`grainwire::testing::RawPeer`) over real UDP, behaving as a real client
//! would not. Prints one JSON line with what it sent and what the server answered; the server's
//! memory and CPU are measured from outside (`scripts/attacks.sh`). `--key-file F` gives every
//! session a valid token minted with the key in F (a malicious player with real accounts; its
//! packets are then protected), against `game_server --key-file F`.
//!
//! ```sh
//! cargo run --release --example attack -- --target 127.0.0.1:7777 zero-window --count 3000000
//! ```
//!
//! Attacks (what each did to the server before the fixes is in BENCHMARKS.md):
//!
//! | name | what it does |
//! |---|---|
//! | `zero-window` | a session that grants the server no credit (it acks), sending tiny requests |
//! | `no-ack` | a session that never acknowledges anything, sending tiny requests |
//! | `big-answers` | fills a room with 16 lines of 60 KB, then asks for them (~1 MB each) without granting credit |
//! | `empty-chunks` | chunks of length 0 of a message claiming 250,000 chunks, last first |
//! | `chunks` | well-formed minimum-size chunks of 1 MiB messages, last first (`--incomplete`: never the first, so they stay partial) |
//! | `partials` | the 1-byte last chunk of ever new unreliable messages (`--reliable`: reliable ones, held) |
//! | `gap` | reliable messages (`--body` bytes, `--per-stream` per stream) behind a gap on every stream, up to the credit (`--conns` sessions) |
//! | `activations` | calls to ever new grain keys |
//! | `slots` | as many sessions from one address as the server allows, held open |
//! | `busy` | fills a room, then queues 1,000 calls for its ~1 MB of lines |
//! | `idle` | `--count` idle sessions from many loopback addresses, kept alive for `--secs` |
//! | `watch` | `--conns` (24) sessions from one address with a tiny window send `--count` (80,000) `WATCH`es each, then take 300 bytes every half second for `--secs` |
//! | `answers` | `--conns` (40) sessions from one address each ask a full room `--asks` (12) times (~1 MB answers), then take 300 bytes every half second for `--secs` |
//! | `hello-flood` | `HELLO`s at `--rate` per second from `--ports` sockets of `--bind`'s address (the probe's, in the scripts: a spoofer that knows its address) for `--secs` |
//! | `steal` | the sealed token of `--token-file` (what an eavesdropper saw, not its secrets) presented from `--conns` new ports every second for `--secs` |
//! | `junk` | `--count` (100,000) junk datagrams from `--ports` (1,000) source ports: random bytes, data packets of no session, `HELLO`s, `CONNECT`s with forged cookies, and with real cookies but forged tokens |

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use grainwire::auth::{ConnectToken, TokenKey};
use grainwire::proto::ids::{GrainKey, MethodId, RequestId};
use grainwire::proto::manifest::Manifest;
use grainwire::proto::wire::rpc::{self, CallHeader, RpcFrame};
use grainwire::proto::wire::{self, Class, CloseKind};
use grainwire::testing::{RawEvent, RawPeer};
use tokio::net::UdpSocket;

#[path = "common/fair_attacks.rs"]
mod fair;

/// The attack to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Attack {
    /// A session that grants no credit, sending tiny requests.
    ZeroWindow,
    /// A session that never acknowledges, sending tiny requests.
    NoAck,
    /// Asks for ~1 MB answers without granting credit.
    BigAnswers,
    /// Empty chunks of a message claiming 250,000 chunks.
    EmptyChunks,
    /// Minimum-size chunks of 1 MiB messages, last first.
    Chunks,
    /// The last chunk of ever new unreliable messages.
    Partials,
    /// Reliable messages behind a gap on every stream.
    Gap,
    /// Calls to ever new grain keys.
    Activations,
    /// As many sessions from one address as allowed, held open.
    Slots,
    /// Queues 1,000 calls for a room's ~1 MB of lines.
    Busy,
    /// Idle sessions from many loopback addresses.
    Idle,
    /// Junk datagrams from many source ports.
    Junk,
    /// `--conns` sessions from one address flood `WATCH`es, then trickle acknowledgements.
    Watch,
    /// `--conns` sessions from one address ask for a room's ~1 MB of lines, then trickle.
    Answers,
    /// `HELLO`s from `--ports` ports of `--bind`'s address at `--rate` per second.
    HelloFlood,
    /// A player's sealed token (`--token-file`) presented from other ports, again and again.
    Steal,
}

/// Hostile and idle clients against a game_server; prints one JSON line.
#[derive(clap::Parser, Debug)]
#[command(name = "attack")]
struct Args {
    /// Which attack.
    #[arg(value_enum)]
    attack: Attack,
    /// The server to attack.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// The local IP address to send from.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// How long sessions are held (slots, idle), in seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    secs: u64,
    /// How many (datagrams, chunks, keys, sessions) [default: per attack: zero-window and no-ack
    /// 3000000, empty-chunks and chunks 250000, partials 1000000, activations 100000, slots
    /// 5000, idle 1000].
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Sessions (gap).
    #[arg(long, value_name = "N", default_value_t = 1)]
    conns: u64,
    /// Never send the first chunk of a message, so that every message stays partial (chunks).
    #[arg(long)]
    incomplete: bool,
    /// Partial messages of the reliable-unordered class, held within the credit (partials).
    #[arg(long)]
    reliable: bool,
    /// Bytes of each message held behind the gap (gap).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    body: usize,
    /// Messages behind the gap on each stream, up to the server's credit (gap; at most 4095).
    #[arg(long, value_name = "N", default_value_t = 32)]
    per_stream: u64,
    /// Source ports (junk).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    ports: usize,
    /// Spread the source ports over N loopback addresses 127.1.x.y instead of `--bind`
    /// (junk): N handshake budgets instead of one.
    #[arg(long, value_name = "N", default_value_t = 1)]
    ips: usize,
    /// Datagrams per second (hello-flood).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    rate: u64,
    /// Requests per session (answers).
    #[arg(long, value_name = "N", default_value_t = 12)]
    asks: usize,
    /// The player token a `steal` attacker saw on the wire (a token file: hex).
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Hold valid tokens: mint one per session with the key in FILE (64 hex characters), as a
    /// malicious player with real accounts would; sessions are then protected.
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
}

/// Datagrams we send stay under the server's default `max_datagram_size` (1200).
const DATAGRAM: usize = 1150;
/// A minimum-size chunk (what a 256-byte datagram leaves).
const MIN_CHUNK: usize = 208;

/// One hand-driven session and what it saw.
struct Raw {
    sock: UdpSocket,
    peer: RawPeer,
    manifest: Manifest,
    /// Next message number per reliable space (0..=255 ordered, 256 unordered).
    seq: Vec<u64>,
    next_slot: u32,
    sent: u64,
    answers: BTreeMap<String, u64>,
    /// Requests answered (a retransmitted answer counts once).
    answered: std::collections::HashSet<u32>,
    /// Datagrams received from the server.
    received: u64,
    closed: Option<String>,
}

/// `--key-file`: the key the attacker mints its tokens with.
static KEY: std::sync::OnceLock<TokenKey> = std::sync::OnceLock::new();

/// What the server hosts, learned once from a well-behaved session (a session that grants no
/// credit never receives the manifest).
static MANIFEST: std::sync::OnceLock<Manifest> = std::sync::OnceLock::new();

async fn connect(target: SocketAddr, ip: IpAddr, window: u64) -> std::io::Result<Raw> {
    if window == 0 && MANIFEST.get().is_none() {
        let r = Box::pin(connect(target, ip, 1 << 20)).await?;
        let _ = MANIFEST.set(r.manifest.clone());
    }
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    sock.connect(target).await?;
    let mut peer = RawPeer::new(rand_nonce(), window);
    if let Some(key) = KEY.get() {
        // A player with a valid token of its own, one per session (a token's later session
        // takes the earlier's place once proven).
        let valid = Duration::from_secs(3600);
        let token = ConnectToken::issue(key, u64::from(rand_nonce()), &[target.into()], valid, b"")
            .unwrap_or_else(|e| fail(&format!("cannot mint a token: {e}")));
        peer = peer.with_token(std::sync::Arc::new(token));
    }
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    // The handshake packet to send again every 250 ms until answered, as a real client does.
    let mut last = peer.hello();
    sock.send(&last).await?;
    let mut manifest = MANIFEST.get().cloned().filter(|_| window == 0);
    while manifest.is_none() || !peer.is_established() {
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let n = match tokio::time::timeout(Duration::from_millis(250), sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                if !peer.is_established() {
                    sock.send(&last).await?;
                }
                continue;
            }
        };
        match peer.on_datagram(&buf[..n]) {
            RawEvent::Reply(r) => {
                sock.send(&r).await?;
                last = r;
            }
            RawEvent::Messages(ms) => {
                for m in ms {
                    if let Ok(RpcFrame::Manifest(body)) = rpc::decode_rpc(&m) {
                        manifest = Manifest::decode(body).ok();
                    }
                }
            }
            RawEvent::Ended(_) => return Err(std::io::ErrorKind::ConnectionRefused.into()),
            _ => {}
        }
    }
    let manifest = manifest.expect("loop ends with a manifest");
    let _ = MANIFEST.set(manifest.clone());
    // Acknowledge the manifest, as any client does (or the server gives up on us as stalled).
    let mut frames = Vec::new();
    peer.ack(&mut frames);
    if let Some(d) = peer.data(&frames).filter(|_| !frames.is_empty()) {
        sock.send(&d).await?;
    }
    Ok(Raw {
        sock,
        peer,
        manifest,
        seq: vec![0; 257],
        next_slot: 1,
        sent: 0,
        answers: BTreeMap::new(),
        answered: Default::default(),
        received: 0,
        closed: None,
    })
}

fn rand_nonce() -> u32 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now()) as u32
}

impl Raw {
    /// The manifest index and version of grain type `name`.
    fn grain(&self, name: &str) -> (u32, u8) {
        let g = self.manifest.grains.iter().find(|g| &*g.name == name);
        let g = g.unwrap_or_else(|| panic!("the server does not host {name}"));
        (g.index, g.version)
    }

    /// A request frame for `method` of grain type `name` with key `key`.
    fn request(&mut self, name: &str, method: &str, key: GrainKey, args: &[u8]) -> Vec<u8> {
        let (type_index, version) = self.grain(name);
        let call = CallHeader {
            type_index,
            version,
            method: MethodId::of(method),
            deadline_ms: Some(30_000),
            key,
            chain: Vec::new(),
        };
        let mut out = Vec::with_capacity(24 + args.len());
        let id = RequestId { slot: self.next_slot, generation: 1 };
        self.next_slot = self.next_slot.wrapping_add(1).max(1);
        rpc::encode_call(&mut out, Some(id), &call);
        out.extend_from_slice(args);
        out
    }

    async fn send(&mut self, frames: &[u8]) {
        if let Some(d) = self.peer.data(frames) {
            self.sent += 1;
            let _ = self.sock.send(&d).await;
        }
    }

    /// Reads what the server sent (without waiting), counting answers by status; with `ack`,
    /// acknowledges it. False once the server closed the session.
    async fn drain(&mut self, ack: bool) -> bool {
        let mut buf = vec![0u8; 2048];
        let mut got = false;
        while let Ok(n) = self.sock.try_recv(&mut buf) {
            got = true;
            self.received += 1;
            match self.peer.on_datagram(&buf[..n]) {
                RawEvent::Messages(ms) => {
                    for m in ms {
                        if let Ok(RpcFrame::Response { id, status, .. }) = rpc::decode_rpc(&m)
                            && self.answered.insert(id.slot)
                        {
                            *self.answers.entry(format!("{status:?}")).or_default() += 1;
                        }
                    }
                }
                RawEvent::Ended(kind) => {
                    self.closed = Some(match kind {
                        Some(CloseKind::Application(c)) => format!("closed {c}"),
                        Some(k) => format!("{k:?}"),
                        None => "reset".into(),
                    });
                    return false;
                }
                _ => {}
            }
        }
        if ack && got {
            let mut frames = Vec::new();
            self.peer.ack(&mut frames);
            self.peer.grant(&mut frames);
            if !frames.is_empty() {
                self.send(&frames).await;
            }
        }
        true
    }

    /// Waits up to `d` for the server, then drains.
    async fn settle(&mut self, d: Duration, ack: bool) -> bool {
        let _ = tokio::time::timeout(d, self.sock.readable()).await;
        self.drain(ack).await
    }

    /// Sends whole reliable-unordered messages, packed into datagrams, within the server's
    /// credit (waiting for it as a sender must); returns how many were sent. Stops when the
    /// session is closed or no credit came for 10 s.
    async fn send_messages(&mut self, msgs: &[Vec<u8>], ack: bool) -> usize {
        let mut frames = Vec::new();
        let mut sent = 0;
        for m in msgs {
            let mut waited = 0;
            while !self.peer.charge(m.len()) {
                if !frames.is_empty() {
                    let f = std::mem::take(&mut frames);
                    self.send(&f).await;
                }
                if !self.settle(Duration::from_millis(20), ack).await || waited > 500 {
                    return sent;
                }
                waited += 1;
            }
            sent += 1;
            if frames.len() + m.len() + 12 > DATAGRAM {
                let f = std::mem::take(&mut frames);
                self.send(&f).await;
            }
            let seq = self.seq[256];
            self.seq[256] += 1;
            RawPeer::message(&mut frames, Class::ReliableUnordered, 0, seq, None, m);
        }
        if !frames.is_empty() {
            self.send(&frames).await;
        }
        self.drain(ack).await;
        sent
    }

    /// Sends one reliable-unordered message in chunks of `chunk` bytes, in the given order.
    async fn send_chunked(&mut self, msg: &[u8], chunk: usize, order: &[u32], ack: bool) -> bool {
        let count = msg.len().div_ceil(chunk) as u32;
        let seq = self.seq[256];
        self.seq[256] += 1;
        let mut frames = Vec::new();
        for &i in order {
            let part = &msg[i as usize * chunk..((i as usize + 1) * chunk).min(msg.len())];
            while !self.peer.charge(part.len()) {
                if !self.settle(Duration::from_millis(20), ack).await {
                    return false;
                }
            }
            if frames.len() + part.len() + 16 > DATAGRAM {
                let f = std::mem::take(&mut frames);
                self.send(&f).await;
                if !self.drain(ack).await {
                    return false;
                }
            }
            RawPeer::message(&mut frames, Class::ReliableUnordered, 0, seq, Some((i, count)), part);
        }
        if !frames.is_empty() {
            self.send(&frames).await;
        }
        self.drain(ack).await
    }
}

fn json(attack: &str, r: &Raw, extra: &str) -> String {
    let answers: Vec<String> = r.answers.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
    let closed = r.closed.as_deref().map_or("null".to_string(), |c| format!("\"{c}\""));
    format!(
        "{{\"attack\":\"{attack}\",\"datagrams\":{},\"received\":{},\"answers\":{{{}}},\"closed\":{closed}{extra}}}",
        r.sent,
        r.received,
        answers.join(",")
    )
}

fn derive_args(n: u64) -> Vec<u8> {
    postcard::to_allocvec(&(n,)).expect("encodes")
}

/// Tiny requests as fast as the credit allows, on one session after another (the server
/// closes each one it gives up on), until `count` were sent.
async fn flood(target: SocketAddr, ip: IpAddr, window: u64, ack: bool, count: u64) -> String {
    let mut sessions = 0;
    let mut total_sent = 0u64;
    let mut datagrams = 0;
    let mut last = None;
    let start = Instant::now();
    while total_sent < count && start.elapsed() < Duration::from_secs(60) {
        let Ok(mut r) = connect(target, ip, window).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        sessions += 1;
        while total_sent < count {
            let batch: Vec<Vec<u8>> = (0..500)
                .map(|i| r.request("Echo", "derive", GrainKey::Int(i), &derive_args(7)))
                .collect();
            let sent = r.send_messages(&batch, ack).await;
            total_sent += sent as u64;
            if sent < batch.len() {
                break;
            }
        }
        while r.closed.is_none() && r.settle(Duration::from_millis(500), ack).await {}
        datagrams += r.sent;
        last = Some(r);
    }
    let mut r = last.expect("at least one session");
    r.sent = datagrams;
    let name = if ack { "zero-window" } else { "no-ack" };
    json(name, &r, &format!(",\"requests\":{total_sent},\"sessions\":{sessions}"))
}

async fn fill_room(r: &mut Raw) {
    let line = "x".repeat(60_000);
    for i in 0..16 {
        let args = postcard::to_allocvec(&(format!("who{i}"), line.clone())).expect("encodes");
        let m = r.request("Room", "say", GrainKey::Int(0), &args);
        let order: Vec<u32> = (0..m.len().div_ceil(1100) as u32).collect();
        r.send_chunked(&m, 1100, &order, true).await;
    }
    r.settle(Duration::from_millis(200), true).await;
}

async fn big_answers(target: SocketAddr, ip: IpAddr) -> String {
    // Fill the room through a well-behaved session, then ask through one that grants nothing.
    let mut filler = connect(target, ip, 1 << 20).await.expect("connect");
    fill_room(&mut filler).await;
    let mut r = connect(target, ip, 0).await.expect("connect");
    let asks: Vec<Vec<u8>> =
        (0..1000).map(|_| r.request("Room", "recent", GrainKey::Int(0), &[])).collect();
    r.send_messages(&asks, true).await;
    while r.closed.is_none() && r.settle(Duration::from_millis(500), true).await {}
    json("big-answers", &r, "")
}

async fn empty_chunks(target: SocketAddr, ip: IpAddr, count: u32) -> String {
    let start = Instant::now();
    let mut sent = 0u32;
    let mut sessions = 0;
    let mut last = None;
    while sent < count && start.elapsed() < Duration::from_secs(20) {
        let Ok(mut r) = connect(target, ip, 1 << 20).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        sessions += 1;
        let seq = r.seq[256];
        while sent < count && r.closed.is_none() {
            let mut frames = Vec::new();
            for _ in 0..100 {
                let index = count - 1 - sent;
                RawPeer::message(
                    &mut frames,
                    Class::ReliableUnordered,
                    0,
                    seq,
                    Some((index, count)),
                    &[],
                );
                sent += 1;
            }
            r.send(&frames).await;
            r.drain(true).await;
        }
        r.settle(Duration::from_millis(100), true).await;
        last = Some(r);
    }
    let r = last.expect("a session");
    json("empty-chunks", &r, &format!(",\"chunks\":{sent},\"sessions\":{sessions}"))
}

async fn chunks(target: SocketAddr, ip: IpAddr, count: u32, incomplete: bool) -> String {
    let mut r = connect(target, ip, 1 << 20).await.expect("connect");
    let msg = vec![0u8; (1 << 20) - 1024];
    let per = msg.len().div_ceil(MIN_CHUNK) as u32;
    // With `incomplete`, chunk 0 never comes: every message stays partial, held.
    let first = u32::from(incomplete);
    let order: Vec<u32> = (first..per).rev().collect();
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && r.closed.is_none() {
        if !r.send_chunked(&msg, MIN_CHUNK, &order, true).await {
            break;
        }
        sent += per;
    }
    r.settle(Duration::from_millis(200), true).await;
    let secs = start.elapsed().as_secs_f64();
    json("chunks", &r, &format!(",\"chunks\":{sent},\"secs\":{secs:.2}"))
}

async fn partials(target: SocketAddr, ip: IpAddr, count: u32, reliable: bool) -> String {
    let mut r = connect(target, ip, 1 << 20).await.expect("connect");
    let mut frames = Vec::new();
    // Reliable: within the server's credit, and at most 4,095 past the first missing message.
    let count = if reliable { count.min(4095) } else { count };
    for id in 0..u64::from(count) {
        // The last chunk (1 byte) of a message of 4,000 chunks, a new message every time.
        let class = if reliable { Class::ReliableUnordered } else { Class::Unreliable };
        if reliable && !r.peer.charge(1) {
            break;
        }
        RawPeer::message(&mut frames, class, 0, id + 1, Some((3999, 4000)), b"x");
        if frames.len() > DATAGRAM - 16 {
            let f = std::mem::take(&mut frames);
            r.send(&f).await;
            if !r.drain(true).await {
                break;
            }
        }
    }
    r.settle(Duration::from_millis(200), true).await;
    json("partials", &r, &format!(",\"chunks\":{count}"))
}

async fn gap(target: SocketAddr, ip: IpAddr, conns: usize, body: usize, per: u64) -> String {
    let mut held = Vec::new();
    for _ in 0..conns {
        let Ok(mut r) = connect(target, ip, 1 << 20).await else { continue };
        // Message 0 of each stream never comes: everything after it must be held.
        let body = vec![1u8; body];
        let mut frames = Vec::new();
        'fill: for stream in 1..=255u8 {
            for seq in 1..=per {
                if !r.peer.charge(body.len()) {
                    break 'fill;
                }
                if frames.len() + body.len() + 16 > DATAGRAM - 16 {
                    let f = std::mem::take(&mut frames);
                    r.send(&f).await;
                }
                RawPeer::message(&mut frames, Class::ReliableOrdered, stream, seq, None, &body);
            }
            if !r.drain(true).await {
                break;
            }
        }
        if !frames.is_empty() {
            r.send(&frames).await;
        }
        r.settle(Duration::from_millis(50), true).await;
        held.push(r);
    }
    // Keep them alive a moment so the measurement sees what they hold.
    for _ in 0..10 {
        for r in &mut held {
            let mut frames = Vec::new();
            wire::encode_ping(&mut frames);
            r.peer.ack(&mut frames);
            r.send(&frames).await;
            r.drain(true).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shed = held.iter().filter(|r| r.closed.is_some()).count();
    let r = held.pop().expect("a session");
    json("gap", &r, &format!(",\"sessions\":{conns},\"closed_sessions\":{shed}"))
}

async fn activations(target: SocketAddr, ip: IpAddr, count: u64) -> String {
    let mut r = connect(target, ip, 1 << 20).await.expect("connect");
    let mut k = 0i64;
    while (k as u64) < count && r.closed.is_none() {
        let batch: Vec<Vec<u8>> = (0..200)
            .map(|_| {
                k += 1;
                r.request("Echo", "derive", GrainKey::Int(1_000_000 + k), &derive_args(1))
            })
            .collect();
        if r.send_messages(&batch, true).await < batch.len() {
            break;
        }
        r.settle(Duration::from_millis(2), true).await;
    }
    for _ in 0..20 {
        r.settle(Duration::from_millis(50), true).await;
    }
    json("activations", &r, &format!(",\"keys\":{k}"))
}

/// One keepalive round: a ping (with acks) on every session.
async fn ping_all(sessions: &mut [Raw]) {
    for r in sessions.iter_mut() {
        let mut frames = Vec::new();
        wire::encode_ping(&mut frames);
        r.peer.ack(&mut frames);
        r.send(&frames).await;
        r.drain(true).await;
    }
}

async fn keepalive(sessions: &mut [Raw], secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        ping_all(sessions).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

async fn slots(target: SocketAddr, ip: IpAddr, count: usize, secs: u64) -> String {
    let mut held = Vec::new();
    let mut refused = 0;
    let mut pinged = Instant::now();
    for _ in 0..count {
        match connect(target, ip, 1 << 20).await {
            Ok(r) => held.push(r),
            Err(e) => {
                eprintln!("session {}: {e}", held.len() + 1);
                refused += 1;
                if refused >= 16 {
                    break;
                }
            }
        }
        // Keep what we hold alive while we open more.
        if pinged.elapsed() > Duration::from_millis(900) {
            ping_all(&mut held).await;
            pinged = Instant::now();
        }
    }
    keepalive(&mut held, secs).await;
    let open = held.iter().filter(|r| r.closed.is_none()).count();
    format!(
        "{{\"attack\":\"slots\",\"accepted\":{},\"refused\":{refused},\"open_at_end\":{open}}}",
        held.len()
    )
}

async fn busy(target: SocketAddr, ip: IpAddr) -> String {
    let mut r = connect(target, ip, 1 << 20).await.expect("connect");
    fill_room(&mut r).await;
    let asks: Vec<Vec<u8>> =
        (0..1000).map(|_| r.request("Room", "recent", GrainKey::Int(0), &[])).collect();
    let start = Instant::now();
    r.send_messages(&asks, true).await;
    while r.answers.values().sum::<u64>() < 1016 && start.elapsed() < Duration::from_secs(30) {
        if !r.settle(Duration::from_millis(20), true).await {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    json("busy", &r, &format!(",\"secs\":{secs:.2}"))
}

/// One loopback address's share of the idle sessions: opens `count` (as fast as the server's
/// handshake budget for the address allows), then keeps them alive, forever.
async fn idle_address(
    target: SocketAddr,
    ip: IpAddr,
    count: usize,
    up: std::rc::Rc<std::cell::Cell<usize>>,
) {
    let mut held: Vec<Raw> = Vec::with_capacity(count);
    let mut pinged = Instant::now();
    while held.len() < count {
        if let Ok(r) = connect(target, ip, 1 << 20).await {
            held.push(r);
            up.set(up.get() + 1);
        }
        if pinged.elapsed() > Duration::from_millis(900) {
            ping_all(&mut held).await;
            pinged = Instant::now();
        }
    }
    loop {
        ping_all(&mut held).await;
        let open = held.iter().filter(|r| r.closed.is_none()).count();
        if open < held.len() {
            eprintln!("{ip}: {} of {} sessions closed", held.len() - open, held.len());
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

async fn idle(target: SocketAddr, count: usize, secs: u64) -> String {
    let up = std::rc::Rc::new(std::cell::Cell::new(0));
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let addresses = count.div_ceil(64);
    for a in 0..addresses {
        // 64 sessions per loopback address (the server's default share per address).
        let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (a / 250) as u8, 1 + (a % 250) as u8));
        let n = 64.min(count - a * 64);
        local.spawn_local(idle_address(target, ip, n, up.clone()));
    }
    local
        .run_until(async {
            while up.get() < count && start.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let connect_secs = start.elapsed().as_secs_f64();
            eprintln!("{} idle sessions up in {connect_secs:.1} s", up.get());
            println!("{{\"idle_sessions\":{},\"connect_secs\":{connect_secs:.1}}}", up.get());
            tokio::time::sleep(Duration::from_secs(secs)).await;
        })
        .await;
    format!("{{\"attack\":\"idle\",\"sessions\":{}}}", up.get())
}

/// `count` junk datagrams from `ports` sockets, round-robin: what a stranger can throw at the
/// front door. Every fifth is a `CONNECT` with a forged token behind a real cookie (each port
/// asks for one with a `HELLO` first), the costliest thing a stranger can make the server
/// check; the rest are random bytes, data packets of no session, `HELLO`s and `CONNECT`s with
/// forged cookies. Counts what came back, by kind.
async fn junk(target: SocketAddr, ip: IpAddr, count: u64, ports: usize, ips: usize) -> String {
    use grainwire::proto::rng::SplitMix64;
    use grainwire::proto::wire::{Cookie, Handshake, Packet};
    let mut socks = Vec::with_capacity(ports);
    for p in 0..ports {
        let ip = match ips {
            1 => ip,
            n => {
                IpAddr::V4(Ipv4Addr::new(127, 1, ((p % n) / 250) as u8, ((p % n) % 250 + 1) as u8))
            }
        };
        let s = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| fail(&format!("bind: {e}")));
        s.connect(target).await.unwrap_or_else(|e| fail(&format!("connect: {e}")));
        socks.push(s);
    }
    let mut rng = SplitMix64::new(u64::from(rand_nonce()));
    let mut cookies: Vec<Option<(u32, Cookie)>> = vec![None; ports];
    let mut replies: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(1200);
    // A token that passes every cheap check (form, version, expiry, key id 1) and fails only
    // its seal: the server spends a decryption on it.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut forged_token = b"GWT\x01".to_vec();
    forged_token.extend_from_slice(&1u32.to_le_bytes());
    forged_token.extend_from_slice(&unix.to_le_bytes());
    forged_token.extend_from_slice(&(unix + 3600).to_le_bytes());
    forged_token.extend((0..560).map(|i| (i * 31 % 251) as u8));
    let start = Instant::now();
    for i in 0..count {
        let p = (i as usize) % ports;
        out.clear();
        let nonce = rng.next_u32();
        match (i / ports as u64) % 5 {
            0 => wire::encode_handshake(&mut out, &Handshake::Hello { nonce }),
            1 => {
                let len = 1 + (rng.next_u64() % 1150) as usize;
                out.extend((0..len).map(|_| rng.next_u64() as u8));
            }
            2 => {
                wire::encode_data_header(&mut out, rng.next_u32(), rng.next_u32() & 0xffff, 2);
                out.extend((0..64).map(|_| rng.next_u64() as u8));
            }
            3 => {
                let cookie = Cookie { time: rng.next_u32(), mac: rng.next_u64() };
                let token = &forged_token[..];
                wire::encode_handshake(
                    &mut out,
                    &Handshake::Connect { nonce, cookie, window: 1 << 20, cluster: 0, token },
                );
            }
            _ => match cookies[p] {
                Some((nonce, cookie)) => {
                    let token = &forged_token[..];
                    wire::encode_handshake(
                        &mut out,
                        &Handshake::Connect { nonce, cookie, window: 1 << 20, cluster: 0, token },
                    );
                }
                None => wire::encode_handshake(&mut out, &Handshake::Hello { nonce }),
            },
        }
        let _ = socks[p].try_send(&out);
        // Whatever came back so far (the gate answers HELLOs, forged tokens, stray data).
        while let Ok(n) = socks[p].try_recv(&mut buf) {
            let kind = match wire::decode_packet(&buf[..n]) {
                Ok(Packet::Handshake(h)) => match h.body {
                    Handshake::Challenge { nonce, cookie } => {
                        cookies[p] = Some((nonce, cookie));
                        "challenge"
                    }
                    Handshake::Reject { .. } => "reject",
                    Handshake::Reset { .. } => "reset",
                    _ => "other handshake",
                },
                Ok(Packet::Data(..)) => "data",
                Err(_) => "undecodable",
            };
            *replies.entry(kind).or_default() += 1;
        }
        if i % 256 == 255 {
            tokio::task::yield_now().await; // let the socket buffers drain
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let replies: Vec<String> = replies.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
    format!(
        "{{\"attack\":\"junk\",\"sent\":{count},\"ports\":{ports},\"ips\":{ips},\"secs\":{secs:.2},\"replies\":{{{}}}}}",
        replies.join(",")
    )
}

fn fail(problem: &str) -> ! {
    eprintln!("attack: {problem}");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    if let Some(f) = &a.key_file {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| fail(&format!("--key-file {}: {e}", f.display())));
        let key =
            TokenKey::from_hex(1, &text).unwrap_or_else(|e| fail(&format!("--key-file: {e}")));
        let _ = KEY.set(key);
    }
    let (target, ip, secs) = (a.target, a.bind, a.secs);
    let count = |default: u64| a.count.unwrap_or(default);
    let small = |n: u64| u32::try_from(n).unwrap_or_else(|_| fail("--count: at most 4294967295"));
    let line = match a.attack {
        Attack::ZeroWindow => flood(target, ip, 0, true, count(3_000_000)).await,
        Attack::NoAck => flood(target, ip, 1 << 20, false, count(3_000_000)).await,
        Attack::BigAnswers => big_answers(target, ip).await,
        Attack::EmptyChunks => empty_chunks(target, ip, small(count(250_000))).await,
        Attack::Chunks => chunks(target, ip, small(count(250_000)), a.incomplete).await,
        Attack::Partials => partials(target, ip, small(count(1_000_000)), a.reliable).await,
        Attack::Gap => gap(target, ip, a.conns as usize, a.body, a.per_stream).await,
        Attack::Activations => activations(target, ip, count(100_000)).await,
        Attack::Slots => slots(target, ip, count(5000) as usize, secs).await,
        Attack::Busy => busy(target, ip).await,
        Attack::Idle => idle(target, count(1000) as usize, secs).await,
        Attack::Junk => junk(target, ip, count(100_000), a.ports.max(1), a.ips.max(1)).await,
        Attack::Watch => fair::watch(target, ip, a.conns as usize, count(80_000), secs).await,
        Attack::Answers => fair::answers(target, ip, a.conns as usize, a.asks, secs).await,
        Attack::HelloFlood => fair::hello_flood(target, ip, a.ports.max(1), a.rate, secs).await,
        Attack::Steal => {
            let f = a.token_file.as_deref().unwrap_or_else(|| fail("steal needs --token-file"));
            fair::steal(target, ip, f, a.conns.max(1) as usize, secs).await
        }
    };
    println!("{line}");
}
