//! Other stacks measured the way `examples/bench.rs` measures grainwire: the server on its own
//! thread with its own single-threaded tokio runtime, the client on the main thread with
//! another; a `--payload`-byte (32) `Vec<u8>` echoed; one JSON line per run, in `bench`'s
//! format, so `scripts/compare-peers.sh` prints them side by side.
//!
//! ```sh
//! cargo run --release --manifest-path peers/Cargo.toml -- udp latency
//! cargo run --release --manifest-path peers/Cargo.toml -- tarpc throughput
//! cargo run --release --manifest-path peers/Cargo.toml -- quinn latency
//! ```
//!
//! * `udp`: bare tokio UDP, a datagram out and its echo back (latency only): the floor.
//! * `tarpc`: a tarpc service over TCP with bincode.
//! * `quinn`: QUIC, a bidirectional stream per call (a self-signed certificate).
//!
//! `latency`: 2,000 calls unrecorded, then 20,000 timed one by one. `throughput`: 64 calls kept
//! in flight, completions counted over 3 s after a 0.5 s warm-up.
//!
//! The floor for `scripts/server-cpu.sh`: a bare tokio UDP echo server in a process of its own
//! (one task on a current-thread runtime: one `recv_from` and one `send_to` per datagram,
//! nothing else), and a load client keeping datagrams in flight against it, as `game_client`
//! keeps calls in flight against a `game_server`:
//!
//! ```sh
//! grainwire-peers echo-server 127.0.0.1:7970
//! grainwire-peers echo-load 127.0.0.1:7970 16 5     # 16 in flight for 5 s; prints {"ok":N}
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future;

const PAYLOAD: usize = 32;
const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;
const INFLIGHT: usize = 64;
const SECS: f64 = 3.0;

#[tarpc::service]
trait Echo {
    async fn echo(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Runs `serve` on a thread of its own; returns the address it bound.
fn server<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || runtime().block_on(serve(tx)));
    rx.recv().expect("server address")
}

fn udp_server() -> SocketAddr {
    server(|tx| async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        tx.send(socket.local_addr().expect("addr")).expect("send");
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
            let _ = socket.send_to(&buf[..n], from).await;
        }
    })
}

fn tarpc_server() -> SocketAddr {
    use tarpc::server::{BaseChannel, Channel};
    server(|tx| async move {
        let listener = tarpc::serde_transport::tcp::listen(
            "127.0.0.1:0",
            tarpc::tokio_serde::formats::Bincode::default,
        )
        .await
        .expect("listen");
        tx.send(listener.local_addr()).expect("send");
        listener
            .filter_map(|r| future::ready(r.ok()))
            .map(BaseChannel::with_defaults)
            .for_each(|channel| async move {
                tokio::spawn(channel.execute(EchoServer.serve()).for_each(|f| async move {
                    tokio::spawn(f);
                }));
            })
            .await;
    })
}

fn certificate()
-> (rustls::pki_types::CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    (cert.cert.into(), key.into())
}

fn quinn_server(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> SocketAddr {
    server(move |tx| async move {
        let config = quinn::ServerConfig::with_single_cert(vec![cert], key).expect("config");
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        tx.send(endpoint.local_addr().expect("addr")).expect("send");
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(data) = recv.read_to_end(1 << 16).await else { return };
                        if send.write_all(&data).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    })
}

/// One way to make a call, cloneable for concurrent callers.
#[derive(Clone)]
enum Caller {
    Udp(Arc<tokio::net::UdpSocket>),
    Tarpc(EchoClient),
    Quinn(quinn::Connection),
}

impl Caller {
    async fn call(&self, data: Vec<u8>) -> Vec<u8> {
        match self {
            Caller::Udp(socket) => {
                socket.send(&data).await.expect("send");
                let mut buf = vec![0u8; 2048];
                let n = socket.recv(&mut buf).await.expect("recv");
                buf.truncate(n);
                buf
            }
            Caller::Tarpc(client) => {
                client.echo(tarpc::context::current(), data).await.expect("tarpc call")
            }
            Caller::Quinn(conn) => {
                let (mut send, mut recv) = conn.open_bi().await.expect("stream");
                send.write_all(&data).await.expect("write");
                send.finish().expect("finish");
                recv.read_to_end(1 << 16).await.expect("read")
            }
        }
    }
}

async fn connect(peer: &str) -> Caller {
    match peer {
        "udp" => {
            let addr = udp_server();
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            socket.connect(addr).await.expect("connect");
            Caller::Udp(Arc::new(socket))
        }
        "tarpc" => {
            let addr = tarpc_server();
            let transport = tarpc::serde_transport::tcp::connect(
                addr,
                tarpc::tokio_serde::formats::Bincode::default,
            )
            .await
            .expect("connect");
            Caller::Tarpc(EchoClient::new(tarpc::client::Config::default(), transport).spawn())
        }
        "quinn" => {
            let (cert, key) = certificate();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.clone()).expect("root");
            let addr = quinn_server(cert, key);
            let mut endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let config =
                quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("config");
            endpoint.set_default_client_config(config);
            let conn =
                endpoint.connect(addr, "localhost").expect("connect").await.expect("handshake");
            Caller::Quinn(conn)
        }
        other => usage(&format!("unknown peer {other}")),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: grainwire-peers udp|tarpc|quinn latency|throughput\n       grainwire-peers echo-server ADDR | echo-load ADDR INFLIGHT SECS"
    );
    std::process::exit(2)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn latency(peer: &str, caller: Caller) -> String {
    let data = vec![7u8; PAYLOAD];
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let start = Instant::now();
        let back = caller.call(data.clone()).await;
        let us = start.elapsed().as_secs_f64() * 1e6;
        assert_eq!(back, data, "wrong echo");
        if i >= WARMUP {
            times.push(us);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    format!(
        "{{\"peer\":\"{peer}\",\"mode\":\"latency\",\"payload\":{PAYLOAD},\"calls\":{CALLS},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"mean_us\":{mean:.1},\"max_us\":{:.1}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times[times.len() - 1],
    )
}

async fn throughput(peer: &str, caller: Caller) -> String {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..INFLIGHT {
        let (caller, done, stop) = (caller.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let data = vec![7u8; PAYLOAD];
            while !stop.load(Ordering::Relaxed) {
                let back = caller.call(data.clone()).await;
                assert_eq!(back.len(), PAYLOAD, "wrong echo");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(SECS)).await;
    let calls = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    format!(
        "{{\"peer\":\"{peer}\",\"mode\":\"throughput\",\"payload\":{PAYLOAD},\"inflight\":{INFLIGHT},\"secs\":{SECS},\"calls_per_sec\":{:.0}}}",
        calls as f64 / SECS
    )
}

/// The bare echo server, until killed.
async fn echo_server(addr: &str) {
    let socket = tokio::net::UdpSocket::bind(addr).await.expect("bind");
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// Keeps `inflight` 32-byte datagrams in flight to the echo server at `addr` for `secs`
/// seconds (a new one for each echo; all again after 20 ms without one, as losses are
/// possible); prints `{"ok":<echoes>}`.
async fn echo_load(addr: &str, inflight: usize, secs: f64) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(addr).await.expect("connect");
    let payload = [7u8; PAYLOAD];
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut ok = 0u64;
    while Instant::now() < end {
        for _ in 0..inflight {
            let _ = socket.send(&payload).await;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(20), socket.recv(&mut buf)).await {
                Ok(Ok(_)) => {
                    ok += 1;
                    if Instant::now() >= end {
                        break;
                    }
                    let _ = socket.send(&payload).await;
                }
                _ => break, // lost (or refused): start the window again
            }
        }
    }
    println!("{{\"ok\":{ok}}}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["echo-server", addr] => return runtime().block_on(echo_server(addr)),
        ["echo-load", addr, inflight, secs] => {
            let inflight = inflight.parse().unwrap_or_else(|_| usage("in flight: a number"));
            let secs = secs.parse().unwrap_or_else(|_| usage("seconds: a number"));
            return runtime().block_on(echo_load(addr, inflight, secs));
        }
        _ => {}
    }
    let [peer, mode] = args.as_slice() else { usage("two arguments") };
    if peer == "udp" && mode == "throughput" {
        usage("udp measures latency only (a datagram is not a call)");
    }
    let line = runtime().block_on(async {
        let caller = connect(peer).await;
        match mode.as_str() {
            "latency" => latency(peer, caller).await,
            "throughput" => throughput(peer, caller).await,
            other => usage(&format!("unknown mode {other}")),
        }
    });
    println!("{line}");
}
