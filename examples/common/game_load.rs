//! `bench game`: what a game server sees. `--players` hand-driven sessions (one socket each,
//! at most 60 per loopback address, as players behind their own addresses), each sending
//! `Player::set_position` as a `#[sequenced]` update `--update-hz` times a second and calling
//! `Player::position` `--call-hz` times a second, against one `game_server` (`--target`, or
//! one started in a process of its own), while a probe client calls `Player::position` on a
//! grain of its own every 10 ms. One JSON line: sessions connected, updates and calls sent and
//! answered, the players' and the probe's call p50/p99, and for a server this bench started,
//! its CPU (total and per message received), memory (RSS and peak) and the updates it dropped
//! as stale or coalesced.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainwire::config::TransportConfig;
use grainwire::proto::ids::{GrainKey, MethodId, RequestId};
use grainwire::proto::manifest::Manifest;
use grainwire::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use grainwire::transport::{Connection, Delivery, Endpoint, Event};

/// What to play.
pub(crate) struct Load {
    pub(crate) players: u64,
    pub(crate) update_hz: f64,
    pub(crate) call_hz: f64,
    pub(crate) secs: f64,
    pub(crate) target: Option<SocketAddr>,
    /// The started server's `--runtime` (`multi`, `current`), if given.
    pub(crate) runtime: Option<String>,
}

/// Players per loopback address (a server admits 64 sessions per address by default).
const PER_ADDRESS: u64 = 60;

/// What the players and the probe counted.
#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    updates: AtomicU64,
    calls: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<f64>>,
}

/// A `game_server` this bench started: its process and its address.
struct OwnServer {
    child: Child,
    addr: SocketAddr,
    /// Its periodic statistics (stderr), the last line.
    stats: Arc<Mutex<String>>,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `game_server` (next to this binary) with room for `players` sessions.
fn start_server(players: u64, runtime: Option<&str>) -> OwnServer {
    let exe = std::env::current_exe().expect("this binary's path");
    let bin = exe.with_file_name("game_server");
    let config =
        std::env::temp_dir().join(format!("grainwire-game-load-{}.toml", std::process::id()));
    let toml = format!(
        "max_activations_per_connection = 100\n[transport]\nmax_connections = {}\nhandshake_rate_per_ip = 10000\n",
        players + 1000
    );
    std::fs::write(&config, toml).expect("a temporary config file");
    let mut child = Command::new(&bin)
        .args(["--bind", "127.0.0.1:0", "--grains", "player", "--stats-every", "0.5", "--config"])
        .arg(&config)
        .args(runtime.map(|r| ["--runtime", r]).into_iter().flatten())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            super::fail(&format!("cannot start {}: {e} (build the examples)", bin.display()))
        });
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    out.read_line(&mut line).expect("game_server prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| super::fail(&format!("game_server said {line:?}")));
    let stats = Arc::new(Mutex::new(String::new()));
    let err = child.stderr.take().expect("piped");
    let last = stats.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.starts_with("ServerStats") {
                *last.lock().unwrap() = l;
            }
        }
    });
    let _ = std::fs::remove_file(&config);
    OwnServer { child, addr, stats }
}

/// A process's CPU seconds (user + system) and memory (RSS, peak RSS; KiB) from `/proc`.
fn process_usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let cpu = (field(14) + field(15)) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

/// A counter from a `ServerStats { .. }` line.
fn stat(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}: "))? + name.len() + 3;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The `i`-th player's address: 127.1.x.y, at most [`PER_ADDRESS`] players each.
fn player_ip(i: u64) -> IpAddr {
    let k = i / PER_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (k / 62_500) as u8,
        (k / 250 % 250) as u8,
        (k % 250 + 1) as u8,
    ))
}

/// What a player's session needs to call `Player`: its type index on the server and version.
#[derive(Clone, Copy)]
struct PlayerType {
    index: u32,
    version: u8,
}

/// Waits for the server's manifest on a new session.
async fn manifest(ep: &mut Endpoint) -> Option<PlayerType> {
    while let Some(ev) = ep.next_event().await {
        if let Event::Message { payload, .. } = ev
            && let Ok(RpcFrame::Manifest(m)) = rpc::decode_rpc(&payload)
        {
            let m = Manifest::decode(m).ok()?;
            let g = m.grains.iter().find(|g| &*g.name == "Player")?;
            return Some(PlayerType { index: g.index, version: g.version });
        }
    }
    None
}

fn header(t: PlayerType, method: &str, key: u64, deadline_ms: Option<u32>) -> CallHeader {
    CallHeader {
        type_index: t.index,
        version: t.version,
        method: MethodId::of(method),
        deadline_ms,
        key: GrainKey::Int(key as i64),
        chain: Vec::new(),
    }
}

/// One player: connects, then sends updates and calls until `end`.
async fn player(
    i: u64,
    server: SocketAddr,
    load: (f64, f64),
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    counts: Arc<Counts>,
) {
    let config = TransportConfig {
        socket_buffer_size: 64 << 10,
        event_backlog: 1024,
        ..TransportConfig::default()
    };
    let Ok(mut ep) = Endpoint::bind(SocketAddr::new(player_ip(i), 0), config) else {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(conn) = ep.connect(server).await else {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(ty) = manifest(&mut ep).await else {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counts.connected.fetch_add(1, Ordering::Relaxed);
    let (update_hz, call_hz) = load;
    // Spread the players over the update period: no lockstep bursts.
    let period = Duration::from_secs_f64(1.0 / update_hz);
    let offset = period.mul_f64((i % 97) as f64 / 97.0);
    tokio::time::sleep_until(start + offset).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let calls_every = (update_hz / call_hz).round().max(1.0) as u64;
    let (mut seq, mut frame, mut next_id) = (0u64, 0u64, 0u32);
    let mut sent: Option<(RequestId, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                seq += 1;
                frame += 1;
                send_update(&conn, ty, i, seq);
                counts.updates.fetch_add(1, Ordering::Relaxed);
                if frame % calls_every == (i % calls_every) && sent.is_none() {
                    next_id += 1;
                    let id = RequestId { slot: next_id, generation: 1 };
                    let mut v = Vec::with_capacity(24);
                    // `position()` takes no arguments: nothing follows the header.
                    rpc::encode_call(&mut v, Some(id), &header(ty, "position", i, Some(2000)));
                    let stream = Delivery::reliable_ordered(1 + (i % 255) as u8);
                    if conn.send(stream, Bytes::from(v)).is_err() {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.calls.fetch_add(1, Ordering::Relaxed);
                    sent = Some((id, Instant::now()));
                }
            }
            ev = ep.next_event() => match ev {
                Some(Event::Message { payload, .. }) => {
                    if let Ok(RpcFrame::Response { id, status, .. }) = rpc::decode_rpc(&payload)
                        && let Some((want, at)) = sent
                        && want == id
                    {
                        sent = None;
                        if status == Status::Ok {
                            counts.answered.fetch_add(1, Ordering::Relaxed);
                            counts.latencies_us.lock().unwrap().push(at.elapsed().as_secs_f64() * 1e6);
                        } else {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(Event::Disconnected { .. }) | None => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Event::Connected(_)) => {}
            },
        }
    }
    ep.close().await;
}

fn send_update(conn: &Connection, ty: PlayerType, key: u64, seq: u64) {
    let mut v = Vec::with_capacity(32);
    rpc::encode_update(&mut v, seq, &header(ty, "set_position", key, None));
    let x = (seq % 1000) as f32;
    v.extend_from_slice(&postcard::to_allocvec(&(x, -x)).expect("two floats encode"));
    // A full send buffer drops the update, as a game would: the next one replaces it.
    let _ = conn.send(Delivery::Unreliable, Bytes::from(v));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Plays the load; the JSON line.
pub(crate) fn run(load: Load) -> String {
    let own = load.target.is_none().then(|| start_server(load.players, load.runtime.as_deref()));
    let server = load.target.unwrap_or_else(|| own.as_ref().expect("started").addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let counts = Arc::new(Counts::default());
    let line = rt.block_on(async {
        // Connect everyone first (in waves), then play for `secs` after a one-second warm-up.
        let connect_for = Duration::from_secs(5 + load.players / 1000);
        let start = tokio::time::Instant::now() + connect_for;
        let measure_from = start + Duration::from_secs(1);
        let end = measure_from + Duration::from_secs_f64(load.secs);
        let mut tasks = Vec::with_capacity(load.players as usize);
        for i in 0..load.players {
            let counts = counts.clone();
            tasks.push(tokio::spawn(player(i, server, (load.update_hz, load.call_hz), start, end, counts)));
            if i % 200 == 199 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The probe: a client of its own, one call every 10 ms on its own grain.
        let probe = grainwire::Client::builder().servers([server]).connect().await;
        let probe = probe.unwrap_or_else(|e| super::fail(&format!("the probe cannot connect: {e}")));
        let grain: super::game::PlayerRef = probe.grain(-1);
        tokio::time::sleep_until(measure_from).await;
        let usage_before = own.as_ref().map(|s| process_usage(s.child.id()));
        let (updates_before, calls_before, answered_before) = (
            counts.updates.load(Ordering::Relaxed),
            counts.calls.load(Ordering::Relaxed),
            counts.answered.load(Ordering::Relaxed),
        );
        counts.latencies_us.lock().unwrap().clear();
        let mut probe_us = Vec::new();
        let mut probe_failed = 0u64;
        while tokio::time::Instant::now() < end {
            let t = Instant::now();
            match grain.position().await {
                Ok(_) => probe_us.push(t.elapsed().as_secs_f64() * 1e6),
                Err(_) => probe_failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let usage_after = own.as_ref().map(|s| process_usage(s.child.id()));
        let updates = counts.updates.load(Ordering::Relaxed) - updates_before;
        let calls = counts.calls.load(Ordering::Relaxed) - calls_before;
        let answered = counts.answered.load(Ordering::Relaxed) - answered_before;
        for t in tasks {
            let _ = t.await;
        }
        probe.disconnect().await;
        let mut players_us = std::mem::take(&mut *counts.latencies_us.lock().unwrap());
        players_us.sort_by(f64::total_cmp);
        probe_us.sort_by(f64::total_cmp);
        let server_part = match (&own, usage_before, usage_after) {
            (Some(s), Some((cpu0, _, _)), Some((cpu1, rss, peak))) => {
                // Its statistics are printed every 0.5 s: wait for one after the run.
                std::thread::sleep(Duration::from_millis(700));
                let stats = s.stats.lock().unwrap().clone();
                let cpu = cpu1 - cpu0;
                let messages = (updates + calls + probe_us.len() as u64).max(1);
                format!(
                    ",\"server_cpu_s\":{cpu:.2},\"server_cpu_us_per_message\":{:.2},\"server_rss_mib\":{:.1},\"server_peak_rss_mib\":{:.1},\"updates_stale\":{},\"updates_coalesced\":{}",
                    cpu * 1e6 / messages as f64,
                    rss as f64 / 1024.0,
                    peak as f64 / 1024.0,
                    stat(&stats, "updates_stale").map_or("null".into(), |v| v.to_string()),
                    stat(&stats, "updates_coalesced").map_or("null".into(), |v| v.to_string()),
                )
            }
            _ => String::new(),
        };
        format!(
            "{{\"peer\":\"grainwire\",\"mode\":\"game\",\"players\":{},\"connected\":{},\"update_hz\":{},\"call_hz\":{},\"secs\":{},\"updates_sent\":{updates},\"updates_per_sec\":{:.0},\"calls_sent\":{calls},\"calls_answered\":{},\"failed\":{},\"player_call_p50_us\":{:.1},\"player_call_p99_us\":{:.1},\"probe_calls\":{},\"probe_failed\":{probe_failed},\"probe_p50_us\":{:.1},\"probe_p99_us\":{:.1}{server_part}}}",
            load.players,
            counts.connected.load(Ordering::Relaxed),
            load.update_hz,
            load.call_hz,
            load.secs,
            updates as f64 / load.secs,
            answered,
            counts.failed.load(Ordering::Relaxed),
            percentile(&players_us, 0.5),
            percentile(&players_us, 0.99),
            probe_us.len(),
            percentile(&probe_us, 0.5),
            percentile(&probe_us, 0.99),
        )
    });
    drop(own);
    line
}
