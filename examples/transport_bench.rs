//! Transport benchmark over real loopback UDP, laid out like an external peer harness: the server
//! on its own thread with its own single-threaded tokio runtime, the client on the main thread with
//! another. Prints one JSON line per mode.
//!
//! The application side of each endpoint runs as a spawned task, as a game's network loop
//! would: a tokio `block_on` root future is woken through the runtime's eventfd (a syscall
//! and an extra `epoll_wait` per wake), a spawned task through its local run queue.
//!
//! ```sh
//! cargo run --release --example transport_bench                  # all modes
//! taskset -c 0 cargo run --release --example transport_bench latency raw-latency
//! cargo run --release --example transport_bench throughput --secs 3 --payload 32
//! ```
//!
//! * `latency`: a 32-byte reliable-ordered message echoed back, one outstanding (ping-pong);
//!   p50/p99/p99.9 of the round trip after a warm-up.
//! * `raw-latency`: the same ping-pong over bare tokio UDP sockets (the floor; `peers udp-tokio`).
//! * `throughput`: 32-byte reliable-ordered messages one way, pipelined as fast as the
//!   transport takes them (`send_wait`); messages/s counted at the receiver over `--secs` after a
//!   0.5 s warm-up.
//! * `idle`: one established session with no traffic for `--secs`; the CPU time the whole
//!   process used meanwhile (Linux, from `/proc/self/stat`). Not in the default set.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::transport::{Delivery, Endpoint, Event};

struct Args {
    modes: Vec<String>,
    payload: usize,
    calls: usize,
    warmup: usize,
    secs: f64,
}

fn parse() -> Args {
    let mut a = Args { modes: Vec::new(), payload: 32, calls: 20_000, warmup: 2_000, secs: 3.0 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| -> String {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> f64 {
            s.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {s}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--payload" => a.payload = num(val("--payload")) as usize,
            "--calls" => a.calls = num(val("--calls")) as usize,
            "--warmup" => a.warmup = num(val("--warmup")) as usize,
            "--secs" => a.secs = num(val("--secs")),
            "latency" | "raw-latency" | "throughput" | "idle" => a.modes.push(arg),
            other => {
                eprintln!(
                    "usage: transport_bench [latency|raw-latency|throughput|idle]... [--payload N] [--calls N] [--warmup N] [--secs S]\nunknown: {other}"
                );
                std::process::exit(2)
            }
        }
    }
    if a.modes.is_empty() {
        a.modes = vec!["latency".into(), "raw-latency".into(), "throughput".into()];
    }
    if a.payload < 8 {
        eprintln!("--payload must be at least 8");
        std::process::exit(2)
    }
    a
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn latency_json(peer: &str, a: &Args, mut rtts: Vec<Duration>) -> String {
    rtts.sort();
    format!(
        "{{\"peer\":\"{peer}\",\"mode\":\"latency\",\"payload\":{},\"calls\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
        a.payload,
        rtts.len(),
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        percentile(&rtts, 0.999)
    )
}

/// Starts a grainwire echo server on its own thread; with `count_window`, it counts messages
/// instead of echoing and reports the count seen within that window after the first one.
fn server(count_window: Option<(Duration, Duration)>) -> (SocketAddr, mpsc::Receiver<u64>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (count_tx, count_rx) = mpsc::channel();
    thread::spawn(move || {
        let rt = runtime();
        let task = rt.spawn(async move {
            let mut ep =
                Endpoint::bind("127.0.0.1:0".parse().expect("addr"), TransportConfig::server())
                    .expect("bind the server");
            addr_tx.send(ep.local_addr()).expect("main thread waits");
            let mut conns = std::collections::HashMap::new();
            let mut first = None;
            let mut counted = 0u64;
            let mut reported = false;
            while let Some(ev) = ep.next_event().await {
                match ev {
                    Event::Connected(c) => {
                        conns.insert(c.peer_id(), c);
                    }
                    Event::Message { peer, delivery, payload } => match count_window {
                        None => {
                            if let Some(c) = conns.get(&peer) {
                                let _ = c.send(delivery, payload);
                            }
                        }
                        Some((warmup, window)) => {
                            let t0 = *first.get_or_insert_with(Instant::now);
                            let el = t0.elapsed();
                            if el >= warmup && el < warmup + window {
                                counted += 1;
                            } else if el >= warmup + window && !reported {
                                // Report once; keep the endpoint up until the process ends.
                                let _ = count_tx.send(counted);
                                reported = true;
                            }
                        }
                    },
                    Event::Disconnected { .. } => {}
                }
            }
        });
        let _ = rt.block_on(task);
    });
    (addr_rx.recv().expect("server address"), count_rx)
}

fn latency(a: &Args) -> String {
    let (addr, _) = server(None);
    let (payload, warmup, calls) = (a.payload, a.warmup, a.calls);
    let rt = runtime();
    let task = rt.spawn(async move {
        let mut client =
            Endpoint::bind("127.0.0.1:0".parse().expect("addr"), TransportConfig::default())
                .expect("bind");
        let conn = client.connect(addr).await.expect("connect");
        let mut msg = vec![7u8; payload];
        let mut rtts = Vec::with_capacity(calls);
        for i in 0..warmup + calls {
            msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let t = Instant::now();
            conn.send(Delivery::reliable_ordered(0), Bytes::copy_from_slice(&msg)).expect("send");
            loop {
                match client.next_event().await {
                    Some(Event::Message { payload, .. }) if payload[..8] == msg[..8] => break,
                    Some(_) => {}
                    None => panic!("client endpoint closed"),
                }
            }
            if i >= warmup {
                rtts.push(t.elapsed());
            }
        }
        rtts
    });
    let rtts = rt.block_on(task).expect("the client task");
    latency_json("grainwire-transport", a, rtts)
}

fn raw_latency(a: &Args) -> String {
    use tokio::net::UdpSocket;
    let (addr_tx, addr_rx) = mpsc::channel();
    thread::spawn(move || {
        runtime().block_on(async move {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            addr_tx.send(s.local_addr().expect("addr")).expect("main waits");
            let mut buf = [0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else { return };
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
    });
    let addr: SocketAddr = addr_rx.recv().expect("address");
    let rt = runtime();
    let sock = rt.block_on(async {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.connect(addr).await.expect("connect");
        s
    });
    let mut msg = vec![7u8; a.payload];
    let mut buf = vec![0u8; 65536];
    let mut rtts = Vec::with_capacity(a.calls);
    for i in 0..a.warmup + a.calls {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        rt.block_on(sock.send(&msg)).expect("send");
        loop {
            let n = rt.block_on(sock.recv(&mut buf)).expect("recv");
            if buf[..8] == msg[..8] && n == msg.len() {
                break;
            }
        }
        if i >= a.warmup {
            rtts.push(t.elapsed());
        }
    }
    latency_json("udp-tokio", a, rtts)
}

fn throughput(a: &Args) -> String {
    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs_f64(a.secs);
    let (addr, count) = server(Some((warmup, window)));
    let payload = a.payload;
    let rt = runtime();
    let task = rt.spawn(async move {
        let client =
            Endpoint::bind("127.0.0.1:0".parse().expect("addr"), TransportConfig::default())
                .expect("bind");
        let conn = client.connect(addr).await.expect("connect");
        let msg = Bytes::from(vec![7u8; payload]);
        let deadline = Instant::now() + warmup + window + Duration::from_secs(5);
        while Instant::now() < deadline {
            for _ in 0..256 {
                if let Err(e) = conn.send_wait(Delivery::reliable_ordered(0), msg.clone()).await {
                    let why = conn.disconnect_reason();
                    panic!("send failed: {e} (session ended: {why:?}; {:?})", conn.stats());
                }
            }
            if let Ok(n) = count.try_recv() {
                return (n, conn.stats());
            }
        }
        panic!("the server did not report in time");
    });
    let (counted, stats) = rt.block_on(task).expect("the client task");
    format!(
        "{{\"peer\":\"grainwire-transport\",\"mode\":\"throughput\",\"payload\":{},\"secs\":{},\"msgs_per_sec\":{:.0},\"datagrams_sent\":{},\"retransmissions\":{}}}",
        a.payload,
        a.secs,
        counted as f64 / a.secs,
        stats.packets_sent,
        stats.retransmissions
    )
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

fn idle(a: &Args) -> String {
    let (addr, _) = server(None);
    let secs = a.secs;
    let rt = runtime();
    let task = rt.spawn(async move {
        let client =
            Endpoint::bind("127.0.0.1:0".parse().expect("addr"), TransportConfig::default())
                .expect("bind");
        let conn = client.connect(addr).await.expect("connect");
        let before = cpu_time();
        let packets = conn.stats().packets_sent;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let used = cpu_time().zip(before).map(|(after, before)| after - before);
        (used, conn.stats().packets_sent - packets, conn.is_connected())
    });
    let (used, packets, connected) = rt.block_on(task).expect("the client task");
    let cpu = used.map_or("null".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
    format!(
        "{{\"peer\":\"grainwire-transport\",\"mode\":\"idle\",\"secs\":{},\"cpu_ms\":{cpu},\"client_datagrams\":{packets},\"connected\":{connected}}}",
        a.secs
    )
}

fn main() {
    let a = parse();
    for mode in &a.modes {
        let line = match mode.as_str() {
            "latency" => latency(&a),
            "raw-latency" => raw_latency(&a),
            "idle" => idle(&a),
            _ => throughput(&a),
        };
        println!("{line}");
    }
    // Server threads run until the process ends.
    std::process::exit(0);
}
