//! Streams from grains: items in order, exactly once, under loss; credit-based flow control (a
//! reader that stops holds the producer after one window); dropping the stream stops the
//! producer; every kind of end; the grain serves other calls while its stream runs; streams
//! from grain to grain; hostile callers bounded. Over the simulated network (virtual time) and
//! real UDP.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use grainwire::server::context;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{
    CallError, CallStream, Client, ClientConfig, GrainId, GrainStream, Server, ServerConfig,
    StreamSender,
};
use serde::{Deserialize, Serialize};
use support::{paused, server_addr, wait_until};

/// The grain's error, ending a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed(String);

#[grainwire::grain]
trait Room {
    /// `from..to`, every item ready at once.
    async fn range(&self, from: u64, to: u64) -> GrainStream<u64>;
    /// The room's lines from `from` on, then live lines as they are said.
    async fn lines(&mut self, from: usize) -> GrainStream<String, Closed>;
    /// Says a line: to the log and to every live reader (without waiting for slow ones).
    async fn say(&mut self, line: String) -> usize;
    /// Numbers for ever, from a task the grain spawns (it counts what it produced).
    async fn endless(&self) -> GrainStream<u64>;
    /// `n` items, then the grain's error.
    async fn fail_after(&self, n: u64) -> GrainStream<u64, Closed>;
    /// Reads room `other`'s `range(0, n)` (grain to grain) and sums it.
    async fn sum_of(&self, other: String, n: u64) -> u64;
}

/// What the test reads of the producers without a call.
#[derive(Default)]
struct Seen {
    produced: AtomicU64,
    stopped: AtomicBool,
}

struct RoomState {
    log: Vec<String>,
    live: Vec<StreamSender<String, Closed>>,
    seen: Arc<Seen>,
}

impl Room for RoomState {
    async fn range(&self, from: u64, to: u64) -> GrainStream<u64> {
        GrainStream::iter(from..to)
    }

    async fn lines(&mut self, from: usize) -> GrainStream<String, Closed> {
        let (tx, stream) = GrainStream::channel(64);
        for line in self.log.iter().skip(from) {
            if tx.try_send(line.clone()).is_err() {
                return GrainStream::failed(Closed("too far behind".into()));
            }
        }
        self.live.push(tx);
        stream
    }

    async fn say(&mut self, line: String) -> usize {
        self.log.push(line.clone());
        // Readers that left (or fell a whole channel behind) are dropped.
        self.live.retain(|tx| tx.try_send(line.clone()).is_ok());
        self.live.len()
    }

    async fn endless(&self) -> GrainStream<u64> {
        let (tx, stream) = GrainStream::channel(8);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while tx.send(n).await.is_ok() {
                n += 1;
                seen.produced.store(n, Ordering::SeqCst);
            }
            seen.stopped.store(true, Ordering::SeqCst);
        });
        stream
    }

    async fn fail_after(&self, n: u64) -> GrainStream<u64, Closed> {
        let items = (0..n).map(Ok).chain(std::iter::once(Err(Closed("enough".into()))));
        GrainStream::from_stream(Items(items))
    }

    async fn sum_of(&self, other: String, n: u64) -> u64 {
        let room: RoomRef = context().expect("in a call").grain(other);
        let mut items = room.range(0, n);
        let mut sum = 0;
        while let Some(item) = items.next().await {
            sum += item.expect("an item");
        }
        sum
    }
}

/// An iterator as a `futures_core::Stream` (what a game would take from a stream crate).
struct Items<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for Items<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

fn host(seen: &Arc<Seen>) -> grainwire::server::Host {
    let seen = seen.clone();
    Room::host(move |_: &GrainId| RoomState {
        log: Vec::new(),
        live: Vec::new(),
        seen: seen.clone(),
    })
}

fn net(seed: u64, loss: f64) -> SimNetwork {
    SimNetwork::new(
        seed,
        SimConfig {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            loss,
            duplicate: if loss > 0.0 { 0.02 } else { 0.0 },
            reorder: if loss > 0.0 { 0.05 } else { 0.0 },
            reorder_delay: Duration::from_millis(8),
            ..SimConfig::default()
        },
    )
}

fn server(net: &SimNetwork, seen: &Arc<Seen>, config: ServerConfig) -> Server {
    Server::builder(config).host(host(seen)).bind_sim(net, server_addr(0)).unwrap()
}

async fn client(net: &SimNetwork, window: u32) -> Client {
    let config = ClientConfig {
        default_timeout: Duration::from_secs(30),
        grain_stream_window: window,
        ..ClientConfig::default()
    };
    Client::builder()
        .config(config)
        .servers([server_addr(0)])
        .connect_sim(net, "10.0.1.1:5000".parse().unwrap())
        .await
        .unwrap()
}

/// A server and a client on a seeded network (`loss`), the client's stream window `window`.
struct Game {
    net: SimNetwork,
    seen: Arc<Seen>,
    s: Server,
    c: Client,
    room: RoomRef,
}

async fn game(seed: u64, loss: f64, window: u32, config: ServerConfig) -> Game {
    let net = net(seed, loss);
    let seen = Arc::new(Seen::default());
    let s = server(&net, &seen, config);
    let c = client(&net, window).await;
    let room: RoomRef = c.grain("lobby");
    Game { net, seen, s, c, room }
}

/// Reads a stream to its end: its items, and the error that ended it (if any).
async fn read_all<T, E>(s: &mut CallStream<T, E>) -> (Vec<T>, Option<CallError<E>>)
where
    T: for<'de> Deserialize<'de>,
{
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(v) => items.push(v),
            Err(e) => {
                assert!(s.next().await.is_none(), "nothing after the end");
                return (items, Some(e));
            }
        }
    }
    (items, None)
}

/// 10,000 items at 0 % and 20 % loss (with duplication and reordering): every one, once, in
/// order, then the end; batched many to a datagram.
#[test]
fn ten_thousand_items_arrive_once_in_order_under_loss() {
    for (seed, loss) in [(1, 0.0), (2, 0.2)] {
        paused(async {
            let Game { net: _net, seen: _seen, s, c, room } =
                game(seed, loss, 256, ServerConfig::default()).await;
            let mut items = room.range(0, 10_000);
            let (got, end) = read_all(&mut items).await;
            assert!(end.is_none(), "loss {loss}: ended {end:?}");
            assert_eq!(got, (0..10_000).collect::<Vec<_>>(), "loss {loss}");
            assert_eq!(items.received(), 10_000);
            let stats = s.stats();
            assert_eq!(stats.stream_items, 10_000, "loss {loss}");
            assert_eq!(stats.streams_open, 0, "loss {loss}: ended on the server too");
            // Many items to a datagram: far fewer packets than items.
            let got = c.servers()[0].transport.packets_received;
            assert!(got < 2_000, "loss {loss}: {got} packets for 10,000 items");
        });
    }
}

/// A reader that stops reading: the server sends one window and no more (its producer stops
/// after one window and its channel), holds nothing unacknowledged once the window arrived,
/// and goes on when the reader does.
#[test]
fn a_reader_that_stops_holds_the_producer_after_one_window() {
    paused(async {
        let Game { net: _net, seen, s, c: _c, room } =
            game(3, 0.0, 64, ServerConfig::default()).await;
        let mut items = room.endless();
        assert_eq!(items.next().await.unwrap().unwrap(), 0);
        // The reader stops. The server sends the window (64) and waits.
        wait_until("the window sent", Duration::from_secs(5), || s.stats().stream_items == 64)
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stats = s.stats();
        assert_eq!(stats.stream_items, 64, "no more than the window");
        // The producer made the window, the channel (8) and the one it waits to send.
        let produced = seen.produced.load(Ordering::SeqCst);
        assert!(produced <= 64 + 8 + 1, "producer held: {produced}");
        assert_eq!(stats.transport.queued_bytes, 0, "nothing unacknowledged held");
        // Reading on: credit flows back and items keep coming, in order.
        for n in 1..1_000 {
            assert_eq!(items.next().await.unwrap().unwrap(), n);
        }
        assert!(s.stats().stream_items <= 1_000 + 64, "still within a window of the reader");
    });
}

/// Dropping the stream cancels the call: the server stops its pump and drops the producer
/// (whose sender sees it closed).
#[test]
fn dropping_the_stream_stops_the_producer() {
    paused(async {
        let Game { net: _net, seen, s, c: _c, room } =
            game(4, 0.0, 64, ServerConfig::default()).await;
        let mut items = room.endless();
        for n in 0..100 {
            assert_eq!(items.next().await.unwrap().unwrap(), n);
        }
        assert_eq!(s.stats().streams_open, 1);
        drop(items);
        wait_until("the producer stopped", Duration::from_secs(5), || {
            seen.stopped.load(Ordering::SeqCst)
        })
        .await;
        wait_until("the stream ended", Duration::from_secs(5), || s.stats().streams_open == 0)
            .await;
        assert_eq!(s.stats().pending_calls, 0);
    });
}

/// The grain serves its other calls while its stream runs, and feeds live readers from them.
#[test]
fn the_grain_serves_calls_while_its_streams_run() {
    paused(async {
        let Game { net: _net, seen: _seen, s: _s, c: _c, room } =
            game(5, 0.05, 64, ServerConfig::default()).await;
        room.say("hello".into()).await.unwrap();
        room.say("hi".into()).await.unwrap();
        let mut from_start = room.lines(0);
        let mut from_one = room.lines(1);
        assert_eq!(from_start.next().await.unwrap().unwrap(), "hello");
        assert_eq!(from_start.next().await.unwrap().unwrap(), "hi");
        assert_eq!(from_one.next().await.unwrap().unwrap(), "hi");
        // Both streams run (neither ended); calls still run and their lines reach both.
        for n in 0..50 {
            let readers = room.say(format!("line {n}")).await.unwrap();
            assert_eq!(readers, 2, "both readers live");
            assert_eq!(from_start.next().await.unwrap().unwrap(), format!("line {n}"));
            assert_eq!(from_one.next().await.unwrap().unwrap(), format!("line {n}"));
        }
        // A reader that leaves is dropped by the grain at its next line.
        drop(from_one);
        let mut readers = 2;
        for n in 50..60 {
            readers = room.say(format!("line {n}")).await.unwrap();
            assert_eq!(from_start.next().await.unwrap().unwrap(), format!("line {n}"));
            if readers == 1 {
                break;
            }
        }
        assert_eq!(readers, 1, "the dropped reader is gone");
    });
}

/// Every kind of end: finished (`None`), the grain's error, the deadline, the activation
/// ending, the server draining, the session lost (with the items that arrived).
#[test]
fn each_kind_of_end_is_typed() {
    paused(async {
        let Game { net, seen: _seen, s, c, room } = game(6, 0.0, 64, ServerConfig::default()).await;

        let (got, end) = read_all(&mut room.range(0, 3)).await;
        assert_eq!(got, vec![0, 1, 2]);
        assert!(end.is_none(), "finished: {end:?}");

        let (got, end) = read_all(&mut room.fail_after(5)).await;
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(
            matches!(&end, Some(CallError::Application(Closed(why))) if why == "enough"),
            "grain's error: {end:?}"
        );

        let timed = room.with_timeout(Duration::from_millis(500));
        let mut items = timed.endless();
        let mut n = 0;
        let end = loop {
            match items.next().await.unwrap() {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        assert!(n > 0, "items before the deadline");
        assert!(
            matches!(end, CallError::Timeout | CallError::DeadlineExceeded),
            "deadline: {end:?}"
        );

        let mut items = room.endless();
        assert_eq!(items.next().await.unwrap().unwrap(), 0);
        s.set_hosting::<RoomRef>(false).unwrap();
        let (_, end) = read_all(&mut items).await;
        assert!(matches!(end, Some(CallError::Deactivated)), "the activation ended: {end:?}");
        s.set_hosting::<RoomRef>(true).unwrap();
        wait_until("hosted again", Duration::from_secs(5), || c.servers()[0].grain_types == 1)
            .await;

        let mut items = room.endless();
        let mut received = 0;
        for _ in 0..10 {
            items.next().await.unwrap().unwrap();
            received += 1;
        }
        // The server goes silent: the session ends (idle timeout), and so does the stream.
        net.set_down(server_addr(0), true);
        let (rest, end) = read_all(&mut items).await;
        match end {
            Some(CallError::StreamLost { received: r, .. }) => {
                assert_eq!(r, received + rest.len() as u64, "what arrived");
            }
            other => panic!("session lost: {other:?}"),
        }
    });
}

/// A server that drains ends its streams (`ShuttingDown`) rather than wait for them.
#[test]
fn a_draining_server_ends_its_streams() {
    paused(async {
        let Game { net: _net, seen: _seen, s, c: _c, room } =
            game(7, 0.0, 64, ServerConfig::default()).await;
        let mut items = room.endless();
        assert_eq!(items.next().await.unwrap().unwrap(), 0);
        let reader = tokio::spawn(async move { read_all(&mut items).await.1 });
        s.shutdown().await;
        let end = reader.await.unwrap();
        assert!(
            matches!(end, Some(CallError::ShuttingDown) | Some(CallError::Deactivated)),
            "{end:?}"
        );
    });
}

/// A grain reads another grain's stream (through its server's fleet client).
#[test]
fn a_grain_reads_another_grains_stream() {
    paused(async {
        let Game { net: _net, seen: _seen, s: _s, c, room: _room } =
            game(8, 0.05, 64, ServerConfig::default()).await;
        let room: RoomRef = c.grain("a");
        assert_eq!(room.sum_of("b".into(), 1_000).await.unwrap(), (0..1_000).sum::<u64>());
    });
}

/// A caller that opens more streams than its share is refused (`Overloaded`), and the others
/// run; one that never reads holds one window each (covered above), bounded by the count.
#[test]
fn a_caller_that_opens_many_streams_is_bounded() {
    paused(async {
        let config = ServerConfig { max_grain_streams_per_session: 4, ..ServerConfig::default() };
        let Game { net: _net, seen: _seen, s, c: _c, room } = game(9, 0.0, 16, config).await;
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut items = room.endless();
            assert_eq!(items.next().await.unwrap().unwrap(), 0);
            open.push(items);
        }
        let (_, end) = read_all(&mut room.endless()).await;
        assert!(matches!(end, Some(CallError::Overloaded)), "the fifth: {end:?}");
        let stats = s.stats();
        assert_eq!((stats.streams_open, stats.streams_refused), (4, 1));
        assert!(stats.stream_items <= 4 * 16, "one window each: {}", stats.stream_items);
        drop(open);
        wait_until("all ended", Duration::from_secs(5), || s.stats().streams_open == 0).await;
    });
}

/// Over real UDP: a stream of 20,000 items to a client, and one from grain to grain; one
/// datagram per system call, and batched (`recvmmsg`, GRO, GSO sends of 8) on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_real_udp() {
    for batched in [false, true] {
        over_real_udp(batched).await;
    }
}

async fn over_real_udp(batched: bool) {
    let seen = Arc::new(Seen::default());
    let mut config = ServerConfig::default();
    config.transport.batched_io = batched;
    config.transport.gso_segments = 8;
    let s = Server::builder(config).host(host(&seen)).bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut client = grainwire::ClientConfig::default();
    client.transport.batched_io = batched;
    client.transport.gso_segments = 8;
    let c = Client::builder().config(client).servers([s.local_addr()]).connect().await.unwrap();
    let room: RoomRef = c.grain("lobby");
    let (got, end) = read_all(&mut room.range(0, 20_000)).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
    assert_eq!(room.sum_of("other".into(), 5_000).await.unwrap(), (0..5_000).sum::<u64>());
}
