//! The RPC wire as a server sees it: a plain transport session sends hand-made frames to a
//! grain server and reads its answers. Also: a 32-byte call fits a 64-byte datagram.

use std::time::Duration;

use bytes::Bytes;
use grainwire::proto::ids::{GrainKey, MethodId, RequestId};
use grainwire::proto::manifest::Manifest;
use grainwire::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::transport::{Connection, Delivery, Endpoint};
use grainwire::{CallError, Client, ClientConfig, Server, ServerConfig, TransportConfig};

mod support;
use support::{addr, message};

#[grainwire::grain(version = 3)]
trait Blob {
    /// Stores 32 bytes; returns their first byte.
    async fn put(&mut self, data: [u8; 32]) -> u8;
}

struct BlobGrain;

impl Blob for BlobGrain {
    async fn put(&mut self, data: [u8; 32]) -> u8 {
        data[0]
    }
}

const SERVER: &str = "10.0.0.1:7000";

/// A raw transport session to a grain server, past its manifest.
async fn raw(net: &SimNetwork) -> (Endpoint, Connection, Manifest) {
    let mut ep = net.endpoint(addr("10.0.0.9:1"), TransportConfig::default()).unwrap();
    let conn = ep.connect(addr(SERVER)).await.unwrap();
    let first = message(&mut ep).await;
    let Ok(RpcFrame::Manifest(body)) = rpc::decode_rpc(&first) else {
        panic!("the manifest comes first")
    };
    (ep, conn, Manifest::decode(body).unwrap())
}

fn request(id: u32, type_index: u32, version: u8, method: MethodId, args: &[u8]) -> Bytes {
    request_within(id, type_index, version, method, args, 1000)
}

fn request_within(
    id: u32,
    type_index: u32,
    version: u8,
    method: MethodId,
    args: &[u8],
    deadline_ms: u32,
) -> Bytes {
    let call = CallHeader {
        type_index,
        version,
        method,
        deadline_ms: Some(deadline_ms),
        key: GrainKey::Int(1),
        chain: Vec::new(),
    };
    let mut out = Vec::new();
    rpc::encode_call(&mut out, Some(RequestId { slot: id, generation: 1 }), &call);
    out.extend_from_slice(args);
    Bytes::from(out)
}

async fn answer(ep: &mut Endpoint) -> (u32, Status, Vec<u8>) {
    let m = message(ep).await;
    match rpc::decode_rpc(&m) {
        Ok(RpcFrame::Response { id, status, payload }) => (id.slot, status, payload.to_vec()),
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_checks_every_call_and_answers_with_a_typed_status() {
    let net = SimNetwork::new(1, SimConfig::default());
    let server =
        Server::builder(ServerConfig { server_id: Some("s1".into()), ..ServerConfig::default() })
            .host(Blob::host(|_| BlobGrain))
            .bind_sim(&net, addr(SERVER))
            .unwrap();
    let (mut ep, conn, manifest) = raw(&net).await;
    assert_eq!(manifest.server_id.as_str(), "s1");
    assert_eq!(manifest, *server.manifest());
    let blob = manifest.grains[0].clone();
    assert_eq!((&*blob.name, blob.version, blob.index), ("Blob", 3, 0));
    assert_eq!(blob.contract, BlobRef::info().contract);
    let signatures: Vec<_> = BlobRef::info().methods.iter().map(|m| (m.id, m.signature)).collect();
    assert_eq!(blob.methods.iter().map(|m| (m.id, m.signature)).collect::<Vec<_>>(), signatures);
    let put = MethodId::of("put");
    let send = |b: Bytes| conn.send(Delivery::reliable_ordered(1), b).unwrap();
    let args = postcard::to_allocvec(&[9u8; 32]).unwrap();

    send(request(1, 0, 3, put, &args));
    assert_eq!(answer(&mut ep).await, (1, Status::Ok, vec![9]));
    send(request(2, 7, 3, put, &args));
    assert_eq!(answer(&mut ep).await, (2, Status::UnknownGrainType, vec![]));
    // A caller of another version that routed here by the manifest's signatures is served.
    send(request(3, 0, 2, put, &args));
    assert_eq!(answer(&mut ep).await, (3, Status::Ok, vec![9]));
    send(request(4, 0, 3, MethodId(put.0.wrapping_add(1)), &args));
    assert_eq!(answer(&mut ep).await, (4, Status::UnknownMethod, vec![]));
    send(request(5, 0, 3, put, &args[..10]));
    assert_eq!(answer(&mut ep).await, (5, Status::BadRequest, vec![]));
    // Bytes after the arguments are not ignored: the call is malformed.
    let mut trailing = args.clone();
    trailing.push(0);
    send(request(7, 0, 3, put, &trailing));
    assert_eq!(answer(&mut ep).await, (7, Status::BadRequest, vec![]));
    // A deadline of 0 ms passed as the call arrived: it does not run.
    send(request_within(8, 0, 3, put, &args, 0));
    assert_eq!(answer(&mut ep).await, (8, Status::DeadlineExceeded, vec![]));
    // An extended frame of a kind this server does not know is skipped, not a bad request.
    let bad = server.stats().bad_requests;
    let mut ext = Vec::new();
    rpc::encode_extended(&mut ext, 4242, b"from a later version");
    send(Bytes::from(ext));
    send(request(9, 0, 3, put, &args));
    assert_eq!(answer(&mut ep).await, (9, Status::Ok, vec![9]));
    assert_eq!(server.stats().bad_requests, bad);
    // Garbage frames are ignored; the session and the server carry on.
    send(Bytes::from_static(&[0xff, 1, 2, 3]));
    send(request(6, 0, 3, put, &args));
    assert_eq!(answer(&mut ep).await, (6, Status::Ok, vec![9]));
    assert_eq!(server.activation_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_32_byte_argument_fits_a_64_byte_datagram() {
    let net = SimNetwork::new(2, SimConfig::default());
    let _server = Server::builder(ServerConfig::default())
        .host(Blob::host(|_| BlobGrain))
        .bind_sim(&net, addr(SERVER))
        .unwrap();
    let client =
        Client::connect_sim(&net, addr("10.0.0.2:1"), addr(SERVER), ClientConfig::default())
            .await
            .unwrap();
    let b: BlobRef = client.grain(42);
    b.put([1; 32]).await.unwrap(); // warm up: the grain is active, the RTT measured
    net.record_sizes();
    for i in 0..100u8 {
        assert_eq!(b.put([i; 32]).await.unwrap(), i);
    }
    let requests: Vec<usize> = net
        .recorded_sizes()
        .into_iter()
        .filter(|(from, _, size)| *from == addr("10.0.0.2:1") && *size > 40)
        .map(|(_, _, size)| size)
        .collect();
    assert_eq!(requests.len(), 100, "one datagram per call: {requests:?}");
    let max = *requests.iter().max().unwrap();
    println!("request datagrams with a 32-byte argument: at most {max} bytes");
    assert!(max <= 64, "a request datagram took {max} bytes: {requests:?}");
}

/// Requests whose id decodes but whose key or deadline does not: each is answered
/// `BadRequest` (before, they got no answer and the caller waited for its deadline).
#[tokio::test(start_paused = true)]
async fn a_request_that_does_not_decode_but_names_its_id_is_answered_bad_request() {
    let net = SimNetwork::new(3, SimConfig::default());
    let server = Server::builder(ServerConfig::default())
        .host(Blob::host(|_| BlobGrain))
        .bind_sim(&net, addr(SERVER))
        .unwrap();
    let (mut ep, conn, _) = raw(&net).await;
    let id = |slot| RequestId { slot, generation: 1 };
    // head | slot varint | gen u16 | type index | version | method u16 | deadline | key ...
    let head = |key_kind: u8| 1 | (key_kind << 3) | 0x40;
    let prefix = |slot: u8, key_kind: u8| vec![head(key_kind), slot, 1, 0, 0, 3, 0, 0, 0x80, 0x08];
    let mut frames = Vec::new();
    frames.push(prefix(1, 7)); // key kind 7
    let mut v = prefix(2, 1);
    v.extend_from_slice(&[2, 0xff, 0xfe]); // a string key that is not UTF-8
    frames.push(v);
    let mut v = prefix(3, 1);
    v.extend_from_slice(&[0x81, 0x08]); // a string key of 1,025 bytes
    v.extend_from_slice(&[b'k'; 1025]);
    frames.push(v);
    // A deadline beyond u32: a 5-byte varint of 2^35.
    let mut v = vec![head(0), 4, 1, 0, 0, 3, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 2];
    v.extend_from_slice(&postcard::to_allocvec(&[9u8; 32]).unwrap());
    frames.push(v);
    for f in &frames {
        assert!(rpc::decode_rpc(f).is_err(), "{f:?} must not decode");
        assert!(rpc::request_id(f).is_some(), "{f:?} names its id");
        conn.send(Delivery::reliable_ordered(1), Bytes::from(f.clone())).unwrap();
    }
    let mut answered: Vec<(u32, Status)> = Vec::new();
    for _ in 0..frames.len() {
        let (slot, status, _) = answer(&mut ep).await;
        answered.push((slot, status));
    }
    answered.sort_by_key(|a| a.0);
    assert_eq!(answered, (1..=4).map(|s| (id(s).slot, Status::BadRequest)).collect::<Vec<_>>());
    assert_eq!(server.stats().bad_requests, 4);
    assert_eq!(server.activation_count(), 0, "nothing was activated for them");
}

#[grainwire::grain]
trait Dump {
    /// `n` bytes.
    async fn bytes(&mut self, n: u32) -> Vec<u8>;
}

struct DumpGrain;

impl Dump for DumpGrain {
    async fn bytes(&mut self, n: u32) -> Vec<u8> {
        vec![1; n as usize]
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_too_large_for_the_connection_is_a_typed_error_not_a_timeout() {
    let net = SimNetwork::new(4, SimConfig::default());
    let transport = TransportConfig { max_message_size: 64 << 10, ..TransportConfig::server() };
    let server = Server::builder(ServerConfig { transport, ..ServerConfig::default() })
        .host(Dump::host(|_| DumpGrain))
        .bind_sim(&net, addr(SERVER))
        .unwrap();
    let client =
        Client::connect_sim(&net, addr("10.0.0.2:1"), addr(SERVER), ClientConfig::default())
            .await
            .unwrap();
    let d: DumpRef = client.grain(1);
    assert_eq!(d.bytes(60_000).await.unwrap().len(), 60_000);
    let start = tokio::time::Instant::now();
    match d.bytes(100_000).await {
        Err(CallError::ResponseTooLarge { size, max }) => {
            assert!(size > 100_000 && max <= 64 << 10, "{size} {max}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1), "answered at once, not at the deadline");
    assert_eq!(server.stats().responses_too_large, 1);
    assert_eq!(d.bytes(10).await.unwrap().len(), 10, "the grain serves on");
}

#[grainwire::grain]
trait Sleeper {
    /// Sleeps `ms` milliseconds; returns how many calls ran before.
    async fn nap(&mut self, ms: u64) -> u32;
}

struct SleeperGrain(u32);

impl Sleeper for SleeperGrain {
    async fn nap(&mut self, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.0 += 1;
        self.0 - 1
    }
}

/// Deadlines are the server's, on its endpoint's clock: a running call is cut short at its
/// deadline and answered `DeadlineExceeded`, a queued one behind it is answered when its own
/// deadline passes and never runs, and the grain serves the next call at once.
#[tokio::test(start_paused = true)]
async fn the_server_answers_deadline_exceeded_at_each_calls_deadline() {
    let net = SimNetwork::new(5, SimConfig::default());
    let _server = Server::builder(ServerConfig::default())
        .host(Sleeper::host(|_| SleeperGrain(0)))
        .bind_sim(&net, addr(SERVER))
        .unwrap();
    let (mut ep, conn, manifest) = raw(&net).await;
    let v = manifest.grains[0].version;
    let nap = MethodId::of("nap");
    let send = |b: Bytes| conn.send(Delivery::reliable_ordered(1), b).unwrap();
    let ms = |n: u64| postcard::to_allocvec(&n).unwrap();
    let t0 = tokio::time::Instant::now();
    send(request_within(1, 0, v, nap, &ms(5_000), 300)); // runs, cut short at 300 ms
    send(request_within(2, 0, v, nap, &ms(0), 100)); // queued behind it, expires at 100 ms
    send(request_within(3, 0, v, nap, &ms(0), 10_000)); // runs when the first is cut short
    let (slot, status, _) = answer(&mut ep).await;
    assert_eq!((slot, status), (2, Status::DeadlineExceeded));
    let at = t0.elapsed();
    // The deadline runs from the server's receipt: at most one way out and back on top.
    assert!(at >= Duration::from_millis(100) && at < Duration::from_millis(130), "{at:?}");
    let (slot, status, _) = answer(&mut ep).await;
    assert_eq!((slot, status), (1, Status::DeadlineExceeded));
    let at = t0.elapsed();
    assert!(at >= Duration::from_millis(300) && at < Duration::from_millis(330), "{at:?}");
    let (slot, status, value) = answer(&mut ep).await;
    assert_eq!((slot, status), (3, Status::Ok));
    assert_eq!(value, vec![0], "neither earlier call ran to its end");
    assert!(t0.elapsed() < Duration::from_millis(335), "served at once: {:?}", t0.elapsed());
}
