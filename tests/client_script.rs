//! The client against a server the test plays (`support::ScriptedServer`): answers that come
//! late, twice, with another generation or never, and the order of frames on the wire.

use std::time::Duration;

use grainwire::client::ConnectMode;
use grainwire::error::DisconnectReason;
use grainwire::proto::ids::RequestId;
use grainwire::proto::wire::rpc::{self, Status};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, ServerId};

mod support;
use support::{ScriptedServer, Seen, addr, answer};

#[grainwire::grain]
trait Counter {
    /// Adds `n`; returns the total.
    async fn add(&mut self, n: u64) -> u64;
    /// Notes `n`, no answer.
    #[one_way]
    async fn note(&mut self, n: u64);
}

const SERVER: &str = "10.0.0.1:7000";

async fn setup(seed: u64) -> (SimNetwork, ScriptedServer, Client) {
    let net = SimNetwork::new(seed, SimConfig::default());
    let script = ScriptedServer::start(&net, SERVER, "scripted", &[CounterRef::info()]);
    let client =
        Client::connect_sim(&net, addr("10.0.0.2:1"), addr(SERVER), ClientConfig::default())
            .await
            .unwrap();
    (net, script, client)
}

/// `r.add(n)` on a task of its own, so the test can play the server meanwhile.
fn add_later(r: &CounterRef, n: u64) -> tokio::task::JoinHandle<Result<u64, CallError>> {
    let r = r.clone();
    tokio::spawn(async move { r.add(n).await })
}

fn arg(args: &[u8]) -> u64 {
    postcard::from_bytes(args).unwrap()
}

/// An answer naming the call's slot with another generation is not its answer; the right one
/// is; a second answer to a finished call completes nothing.
#[tokio::test(start_paused = true)]
async fn answers_with_another_generation_or_twice_complete_nothing() {
    let (_net, mut script, client) = setup(1).await;
    let r: CounterRef = client.grain(1);
    let call = add_later(&r, 1);
    let (conn, id, _, args) = script.request().await;
    assert_eq!(arg(&args), 1);
    for generation in [id.generation.wrapping_add(1), id.generation.wrapping_sub(1)] {
        answer(&conn, RequestId { slot: id.slot, generation }, Status::Ok, &100u64);
    }
    answer(&conn, RequestId { slot: id.slot + 1000, generation: 1 }, Status::Ok, &200u64);
    // The stray answers arrive first (one ordered stream): had one completed the call, it
    // would have returned 100 or 200.
    answer(&conn, id, Status::Ok, &2u64);
    assert_eq!(call.await.unwrap().unwrap(), 2);
    // The same answer again, then the next call: it gets its own answer, not the duplicate.
    answer(&conn, id, Status::Ok, &3u64);
    let next = add_later(&r, 4);
    let (conn, id2, _, args) = script.request().await;
    assert_ne!(id2, id);
    assert_eq!(arg(&args), 4);
    answer(&conn, id2, Status::Ok, &6u64);
    assert_eq!(next.await.unwrap().unwrap(), 6);
    let stats = client.stats();
    assert_eq!((stats.total, stats.errors, stats.timeouts, stats.pending), (2, 0, 0, 0));
}

/// A server that never answers: the call fails `Timeout` at its deadline (which the request
/// carried), the client tells the server it gave up, and an answer that comes after that is
/// ignored; the session stays up and serves the next call.
#[tokio::test(start_paused = true)]
async fn a_call_the_server_never_answers_times_out_and_its_late_answer_is_ignored() {
    let (_net, mut script, client) = setup(2).await;
    let r: CounterRef = client.grain(1);
    let t0 = tokio::time::Instant::now();
    let call = add_later(&r.with_timeout(Duration::from_millis(500)), 1);
    let (conn, id, header, _) = script.request().await;
    let deadline = header.deadline_ms.expect("the request carries its deadline");
    assert!((400..=500).contains(&deadline), "{deadline} ms");
    assert!(matches!(call.await.unwrap(), Err(CallError::Timeout)));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(520), "{took:?}");
    match script.next().await {
        Seen::Cancel { id: cancelled } => assert_eq!(cancelled, id),
        other => panic!("expected the cancel, got {other:?}"),
    }
    answer(&conn, id, Status::Ok, &1u64); // late
    let next = add_later(&r, 2);
    let (conn, id2, _, args) = script.request().await;
    assert_eq!(arg(&args), 2);
    answer(&conn, id2, Status::Ok, &3u64);
    assert_eq!(next.await.unwrap().unwrap(), 3, "its own answer, not the late one");
    let stats = client.stats();
    assert_eq!((stats.total, stats.timeouts, stats.pending), (2, 1, 0));
    assert_eq!(client.servers().len(), 1, "the silent server's session stayed up");
}

/// Calls and one-way calls to one grain reach the server in the order they were made, on one
/// stream, with nothing else between them.
#[tokio::test(start_paused = true)]
async fn calls_and_one_way_calls_reach_the_server_in_the_order_they_were_made() {
    let (_net, mut script, client) = setup(3).await;
    let r: CounterRef = client.grain(7);
    let calls = tokio::spawn({
        let r = r.clone();
        async move {
            let (a, b, c, d) = tokio::join!(r.add(1), r.note(2), r.add(3), r.note(4));
            (a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap())
        }
    });
    let mut order = Vec::new();
    for _ in 0..4 {
        match script.next().await {
            Seen::Request { conn, id, args, call } => {
                assert_eq!(call.key, grainwire::GrainKey::Int(7));
                let n = arg(&args);
                order.push(n);
                answer(&conn, id, Status::Ok, &(n * 10));
            }
            Seen::OneWay { args, .. } => order.push(arg(&args)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(order, [1, 2, 3, 4]);
    assert_eq!(calls.await.unwrap(), (10, (), 30, ()));
}

/// A status answer fails the call with its typed error, at once.
#[tokio::test(start_paused = true)]
async fn a_status_answer_fails_the_call_with_its_typed_error() {
    let (_net, mut script, client) = setup(4).await;
    let r: CounterRef = client.grain(1);
    let call = add_later(&r, 1);
    let (conn, id, _, _) = script.request().await;
    let t0 = tokio::time::Instant::now();
    answer(&conn, id, Status::HandlerPanicked, &());
    assert!(matches!(call.await.unwrap(), Err(CallError::HandlerPanicked)));
    assert!(t0.elapsed() < Duration::from_millis(50), "{:?}", t0.elapsed());
}

/// Runs one call preferring scripted server `a`, which closes the session with `code` while
/// the call is unanswered; server `b` answers whatever reaches it. What the call returned, and
/// whether it reached `b`.
async fn closed_with(code: u32) -> (Result<u64, CallError>, bool) {
    let net = SimNetwork::new(5, SimConfig::default());
    let mut a = ScriptedServer::start(&net, "10.0.0.1:7000", "a", &[CounterRef::info()]);
    let mut b = ScriptedServer::start(&net, "10.0.0.3:7000", "b", &[CounterRef::info()]);
    let client = Client::builder()
        .servers([addr("10.0.0.1:7000"), addr("10.0.0.3:7000")])
        .mode(ConnectMode::Multi)
        .connect_sim(&net, addr("10.0.0.2:1"))
        .await
        .unwrap();
    let r: CounterRef = client.grain(1);
    let call = add_later(&r.prefer(&ServerId::new("a")), 1);
    let (conn, _, _, _) = a.request().await;
    conn.close(code);
    let mut reached_b = false;
    if let Some(Seen::Request { conn, id, args, .. }) = b.next_within(Duration::from_secs(1)).await
    {
        reached_b = true;
        answer(&conn, id, Status::Ok, &(arg(&args) + 10));
    }
    (call.await.unwrap(), reached_b)
}

/// A server that stopped gracefully closes a session only once its client holds every answer
/// (`CLOSE_DRAINED`): a call still unanswered did not run there, so it goes to another server,
/// idempotent or not. Any other close leaves a plain call failed: it may have run.
#[tokio::test(start_paused = true)]
async fn a_call_unanswered_when_its_server_closes_drained_goes_to_another() {
    let (r, reached_b) = closed_with(rpc::CLOSE_DRAINED).await;
    assert_eq!((r.unwrap(), reached_b), (11, true));
    let (r, reached_b) = closed_with(0).await;
    assert!(
        matches!(r, Err(CallError::Disconnected(DisconnectReason::ClosedByPeer { code: 0 }))),
        "{r:?}"
    );
    assert!(!reached_b, "a plain call is not sent twice");
}
