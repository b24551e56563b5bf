//! What the test files share: addresses, endpoint pairs, waiting for the event that matters
//! (virtual time on the simulated network, so a wait is bounded without costing wall time),
//! joining futures, and a scripted grain server for client tests. Each test file includes it
//! with `mod support;` and uses what it needs.

#![allow(dead_code)] // each test file uses a part of it

pub(crate) mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use grainwire::TransportConfig;
use grainwire::interface::InterfaceInfo;
use grainwire::proto::ids::{RequestId, ServerId};
use grainwire::proto::manifest::{HostedGrain, HostedMethod, Manifest};
use grainwire::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use grainwire::transport::sim::SimNetwork;
use grainwire::transport::{Connection, Delivery, Endpoint, Event};
use tokio::sync::{broadcast, mpsc};

/// Server `i` of a simulated fleet: `10.0.0.(i + 1):7000`.
pub(crate) fn server_addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7000", i + 1).parse().unwrap()
}

/// A seeded simulated network that loses 5 %, duplicates 2 % and reorders 5 % of datagrams
/// (5 ms ± 2 ms apart, reordered ones 8 ms late).
pub(crate) fn lossy(seed: u64) -> SimNetwork {
    let config = grainwire::transport::sim::SimConfig {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(8),
        ..Default::default()
    };
    SimNetwork::new(seed, config)
}

/// A client at `at` of the simulated fleet's servers `0..servers` ([`server_addr`]), with a
/// 30 s default deadline (lossy networks in virtual time).
pub(crate) async fn fleet_client(net: &SimNetwork, at: &str, servers: usize) -> grainwire::Client {
    let config =
        grainwire::ClientConfig { default_timeout: Duration::from_secs(30), ..Default::default() };
    grainwire::Client::builder()
        .config(config)
        .servers((0..servers).map(server_addr))
        .connect_sim(net, at.parse().unwrap())
        .await
        .unwrap()
}

/// Runs `test` to its end on a current-thread runtime on virtual time.
pub(crate) fn paused<F: Future>(test: F) -> F::Output {
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_all().start_paused(true).build().unwrap().block_on(test)
}

/// `s` as an address (test literals only).
pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Runs `peer`'s handshake with the server at `server` over `sock` (simulated network) until
/// the server accepts it.
pub(crate) async fn raw_handshake(
    sock: &grainwire::transport::sim::RawSocket,
    server: SocketAddr,
    peer: &mut grainwire::testing::RawPeer,
) {
    sock.send_to(server, &peer.hello());
    while !peer.is_established() {
        let (_, d) = sock.recv().await;
        if let grainwire::testing::RawEvent::Reply(r) = peer.on_datagram(&d) {
            sock.send_to(server, &r);
        }
    }
}

/// The endpoint's next event, waiting at most `within` (virtual time on the simulated
/// network); panics when none comes or the endpoint closed.
pub(crate) async fn next_event(ep: &mut Endpoint, within: Duration) -> Event {
    tokio::time::timeout(within, ep.next_event()).await.expect("an event in time").expect("open")
}

/// The endpoint's next message, skipping other events, within 120 s.
pub(crate) async fn message(ep: &mut Endpoint) -> Bytes {
    loop {
        if let Event::Message { payload, .. } = next_event(ep, Duration::from_secs(120)).await {
            return payload;
        }
    }
}

/// A server endpoint at `server` and a client endpoint at `client` on `net`, connected: the
/// client's connection, with both `Connected` events still queued.
pub(crate) async fn sim_pair(
    net: &SimNetwork,
    server: &str,
    client: &str,
) -> (Endpoint, Endpoint, Connection) {
    let server = net.endpoint(addr(server), TransportConfig::server()).unwrap();
    let client = net.endpoint(addr(client), TransportConfig::default()).unwrap();
    let conn = client.connect(server.local_addr()).await.expect("connect");
    (server, client, conn)
}

/// A server and a client endpoint on real loopback sockets (`127.0.0.1:0`), not connected.
pub(crate) fn udp_pair() -> (Endpoint, Endpoint) {
    let server = Endpoint::bind(addr("127.0.0.1:0"), TransportConfig::server()).unwrap();
    let client = Endpoint::bind(addr("127.0.0.1:0"), TransportConfig::default()).unwrap();
    (server, client)
}

/// Waits (at most 120 s, virtual time on the simulated network) for the first event `want`
/// accepts; panics if none comes.
pub(crate) async fn until<E: Clone>(
    rx: &mut broadcast::Receiver<E>,
    want: impl Fn(&E) -> bool,
) -> E {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait).await.expect("the event in time")
}

/// Polls every future until all are done; they start in order, on the first poll (the crate
/// has no `futures` dependency).
pub(crate) async fn join_all<F: Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// What a [`ScriptedServer`] received.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A call that wants an answer, on connection `conn`.
    Request { conn: Connection, id: RequestId, call: CallHeader, args: Bytes },
    /// A one-way call.
    OneWay { call: CallHeader, args: Bytes },
    /// The client gave up on call `id`.
    Cancel { id: RequestId },
}

/// A grain server played by the test, for client tests: it completes handshakes and sends a
/// manifest for the interfaces it claims to host, and hands every frame it receives to the test,
/// which answers what it wants, when it wants (late, twice, with another generation, or never).
pub(crate) struct ScriptedServer {
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    /// Starts one at `at` on `net`, claiming to be server `id` hosting `hosts`.
    pub(crate) fn start(net: &SimNetwork, at: &str, id: &str, hosts: &[&InterfaceInfo]) -> Self {
        let manifest = Manifest {
            server_id: ServerId::new(id),
            cluster_id: "grainwire".into(),
            service_id: "game".into(),
            weight: 1,
            draining: false,
            priority: 0,
            metadata: Default::default(),
            grains: hosts
                .iter()
                .enumerate()
                .map(|(i, info)| HostedGrain {
                    name: info.name.into(),
                    grain_type: info.grain_type,
                    interface: info.id,
                    version: info.version,
                    contract: info.contract,
                    index: i as u32,
                    methods: info
                        .methods
                        .iter()
                        .map(|m| HostedMethod { id: m.id, signature: m.signature })
                        .collect(),
                })
                .collect(),
        };
        let frame = Bytes::from(manifest.encode());
        let mut ep = net.endpoint(addr(at), TransportConfig::server()).unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Some(event) = ep.next_event().await {
                match event {
                    Event::Connected(conn) => {
                        conn.send(Delivery::reliable_ordered(0), frame.clone()).unwrap();
                        conns.push(conn);
                    }
                    Event::Message { peer, payload, .. } => {
                        let Some(conn) = conns.iter().find(|c| c.peer_id() == peer) else {
                            continue;
                        };
                        let seen =
                            match rpc::decode_rpc(&payload).expect("the client's frames decode") {
                                RpcFrame::Request { id, call, args } => Seen::Request {
                                    conn: conn.clone(),
                                    id,
                                    call,
                                    args: payload.slice_ref(args),
                                },
                                RpcFrame::OneWay { call, args } => {
                                    Seen::OneWay { call, args: payload.slice_ref(args) }
                                }
                                RpcFrame::Cancel { id } => Seen::Cancel { id },
                                other => panic!("a client sent {other:?}"),
                            };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    Event::Disconnected { peer, .. } => conns.retain(|c| c.peer_id() != peer),
                }
            }
        });
        Self { seen, task }
    }

    /// The next frame received, within `within` (virtual time); `None` if none came.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Seen> {
        tokio::time::timeout(within, self.seen.recv()).await.ok().flatten()
    }

    /// The next frame received, within 120 s; panics if none came.
    pub(crate) async fn next(&mut self) -> Seen {
        self.next_within(Duration::from_secs(120)).await.expect("a frame from the client")
    }

    /// The next request (skipping nothing: anything else is a failure).
    pub(crate) async fn request(&mut self) -> (Connection, RequestId, CallHeader, Bytes) {
        match self.next().await {
            Seen::Request { conn, id, call, args } => (conn, id, call, args),
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers request `id` on `conn` with `status` and a postcard-encoded `value` (as a server's
/// dispatch does). Answers go on one ordered stream (a server sends them unordered), so a
/// script's answers arrive in the order it wrote them.
pub(crate) fn answer<T: serde::Serialize>(
    conn: &Connection,
    id: RequestId,
    status: Status,
    value: &T,
) {
    let mut out = Vec::new();
    rpc::encode_response(&mut out, id, status);
    out.extend_from_slice(&postcard::to_allocvec(value).unwrap());
    conn.send(Delivery::reliable_ordered(0), Bytes::from(out)).unwrap();
}

/// Waits until `done()` holds, checking after each millisecond of (virtual) time, for at most
/// `within`; panics naming `what` otherwise. For a state with no event of its own (a counter
/// on the server, a session forgotten), instead of sleeping "long enough".
pub(crate) async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
