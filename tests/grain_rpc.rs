//! Grain RPC over the simulated network: exactly one outcome per call under loss, no call run
//! twice, order per grain, concurrency across grains, activation and deactivation, deadlines,
//! cancellation, panics, overload, unknown types, versions and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::client::ClientEvent;
use grainwire::server::ServerBuilder;
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{CallError, Client, ClientConfig, GrainId, Server, ServerConfig};

mod support;
use support::{addr, join_all, until, wait_until};

const SERVER: &str = "10.0.0.1:7000";
const CLIENT: &str = "10.0.0.2:0";

/// What the server's grains observed, shared with the test.
#[derive(Default)]
struct Log {
    /// Executions per call number.
    runs: Mutex<HashMap<u64, u32>>,
    /// Calls seen per grain key, in order.
    seen: Mutex<HashMap<i64, Vec<u64>>>,
    activations: AtomicUsize,
    deactivations: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[grainwire::grain]
trait Worker {
    /// Records call `n`; returns it.
    async fn work(&mut self, n: u64) -> u64;
    /// Records `n` without a response.
    #[one_way]
    async fn note(&mut self, n: u64);
    /// The call numbers this grain saw, in order.
    async fn history(&self) -> Vec<u64>;
    /// Sleeps `ms` (virtual time in tests), counting concurrent runs.
    async fn nap(&mut self, ms: u64) -> u32;
    /// Panics.
    async fn explode(&mut self) -> u32;
    /// How many calls this instance served.
    async fn served(&self) -> u32;
    /// Holds `data` for `ms` (virtual time), then returns its length.
    async fn hold(&mut self, data: Vec<u8>, ms: u64) -> usize;
}

struct WorkerGrain {
    key: i64,
    log: Arc<Log>,
    served: u32,
}

impl WorkerGrain {
    fn record(&mut self, n: u64) {
        self.served += 1;
        *self.log.runs.lock().unwrap().entry(n).or_default() += 1;
        self.log.seen.lock().unwrap().entry(self.key).or_default().push(n);
    }
}

impl Worker for WorkerGrain {
    async fn work(&mut self, n: u64) -> u64 {
        self.record(n);
        n
    }
    async fn note(&mut self, n: u64) {
        self.record(n);
    }
    async fn history(&self) -> Vec<u64> {
        self.log.seen.lock().unwrap().get(&self.key).cloned().unwrap_or_default()
    }
    async fn nap(&mut self, ms: u64) -> u32 {
        /// Counts this call as running until it ends, however it ends (cancelled too).
        struct Running(Arc<Log>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.log.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = Running(self.log.clone());
        self.log.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.served += 1;
        self.served
    }
    async fn explode(&mut self) -> u32 {
        panic!("boom");
    }
    async fn served(&self) -> u32 {
        self.served
    }
    async fn hold(&mut self, data: Vec<u8>, ms: u64) -> usize {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        data.len()
    }
    async fn on_activate(&mut self, _id: &GrainId) {
        self.log.activations.fetch_add(1, Ordering::SeqCst);
    }
    async fn on_deactivate(&mut self) {
        self.log.deactivations.fetch_add(1, Ordering::SeqCst);
    }
}

fn key_of(id: &GrainId) -> i64 {
    match id.key {
        grainwire::GrainKey::Int(k) => k,
        _ => -1,
    }
}

fn builder(log: &Arc<Log>, config: ServerConfig) -> ServerBuilder {
    let log = log.clone();
    Server::builder(config).host(Worker::host(move |id| WorkerGrain {
        key: key_of(id),
        log: log.clone(),
        served: 0,
    }))
}

async fn setup(
    net: &SimNetwork,
    log: &Arc<Log>,
    config: ServerConfig,
    client: ClientConfig,
) -> (Server, Client) {
    let server = builder(log, config).bind_sim(net, addr(SERVER)).unwrap();
    let client = Client::connect_sim(net, addr(CLIENT), addr(SERVER), client).await.unwrap();
    (server, client)
}

fn lossy_config() -> SimConfig {
    SimConfig {
        duplicate: 0.05,
        delay: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        reorder: 0.1,
        reorder_delay: Duration::from_millis(10),
        ..SimConfig::default()
    }
}

fn lossy(seed: u64, loss: f64) -> SimNetwork {
    SimNetwork::new(seed, SimConfig { loss, ..lossy_config() })
}

#[tokio::test(start_paused = true)]
async fn under_loss_every_call_ends_once_in_time_and_none_runs_twice() {
    for (seed, loss) in [(1, 0.0), (2, 0.05), (3, 0.2), (4, 0.2), (5, 0.3)] {
        // Connect on a clean link (a lossy handshake may legitimately time out), then degrade.
        let net = lossy(seed, 0.0);
        let log = Arc::new(Log::default());
        let timeout = Duration::from_secs(2);
        let cfg = ClientConfig { default_timeout: timeout, ..ClientConfig::default() };
        let (_server, client) = setup(&net, &log, ServerConfig::default(), cfg).await;
        net.set_config(SimConfig { loss, ..lossy_config() });
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..40i64 {
            let w: WorkerRef = client.grain(g);
            tasks.spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..25u64 {
                    let n = g as u64 * 1000 + i;
                    let t0 = tokio::time::Instant::now();
                    let r = w.work(n).await;
                    outcomes.push((n, r, t0.elapsed()));
                }
                outcomes
            });
        }
        let mut ok = 0;
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.extend(r.unwrap());
        }
        assert_eq!(results.len(), 1000);
        let runs = log.runs.lock().unwrap().clone();
        for (n, r, took) in results {
            assert!(
                took <= timeout + Duration::from_millis(50),
                "seed {seed}: call {n} took {took:?}"
            );
            match r {
                Ok(v) => {
                    assert_eq!(v, n, "seed {seed}: the answer belongs to the call");
                    assert_eq!(runs.get(&n), Some(&1), "seed {seed}: call {n} ran exactly once");
                    ok += 1;
                }
                Err(CallError::Timeout) => {}
                Err(e) => panic!("seed {seed}: call {n}: unexpected {e}"),
            }
        }
        assert!(runs.values().all(|&c| c == 1), "seed {seed}: no call ran twice");
        if loss <= 0.05 {
            assert_eq!(ok, 1000, "seed {seed}: at {loss} loss every call succeeds");
        } else {
            assert!(ok >= 900, "seed {seed}: {ok} of 1000 succeeded at {loss} loss");
        }
        // Calls to one grain ran in the order they were made.
        for (k, seen) in log.seen.lock().unwrap().iter() {
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: grain {k} out of order: {seen:?}"
            );
        }
        let stats = client.stats();
        assert_eq!(stats.total, 1000);
        assert_eq!(stats.pending, 0);
        assert_eq!(stats.errors, 1000 - ok);
    }
}

#[tokio::test(start_paused = true)]
async fn calls_to_one_grain_arrive_in_order_even_when_pipelined() {
    let net = lossy(11, 0.1);
    let log = Arc::new(Log::default());
    let (_server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(5);
    for n in 0..500 {
        w.note(n).await.unwrap(); // queued, not awaited on the server
    }
    let history = w.history().await.unwrap();
    assert_eq!(history, (0..500).collect::<Vec<_>>());
}

/// Calls and one-way calls to one grain run in the order they were made, whatever their kind:
/// `join!` of a call and a one-way call, and pipelined runs mixing both, under loss,
/// duplication and reordering, three seeds.
#[tokio::test(start_paused = true)]
async fn calls_and_one_way_calls_to_one_grain_run_in_the_order_they_were_made() {
    for seed in [21, 22, 23] {
        let net = lossy(seed, 0.0);
        let log = Arc::new(Log::default());
        let (_server, client) =
            setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
        net.set_config(SimConfig { loss: 0.1, ..lossy_config() });
        let w: WorkerRef = client.grain(7);
        let mut expected = Vec::new();
        for i in 0..20u64 {
            let (a, b, c) = tokio::join!(w.work(3 * i), w.note(3 * i + 1), w.work(3 * i + 2));
            assert_eq!(a.unwrap(), 3 * i);
            b.unwrap();
            assert_eq!(c.unwrap(), 3 * i + 2);
            expected.extend([3 * i, 3 * i + 1, 3 * i + 2]);
        }
        // Pipelined: 300 calls in flight at once, every third one a call, the rest one-way.
        let base = 1_000u64;
        let calls = (0..300u64).map(|n| {
            let w = w.clone();
            async move {
                if n % 3 == 0 { w.work(base + n).await.map(|_| ()) } else { w.note(base + n).await }
            }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        expected.extend((0..300u64).map(|n| base + n));
        let history = w.history().await.unwrap();
        assert_eq!(history, expected, "seed {seed}");
    }
}

#[tokio::test(start_paused = true)]
async fn one_grain_runs_one_call_at_a_time_and_different_grains_run_together() {
    let net = SimNetwork::new(12, SimConfig::default());
    let log = Arc::new(Log::default());
    let (_server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let same: WorkerRef = client.grain(1);
    let (a, b, c) = tokio::join!(same.nap(100), same.nap(100), same.nap(100));
    let mut served = vec![a.unwrap(), b.unwrap(), c.unwrap()];
    served.sort();
    assert_eq!(served, vec![1, 2, 3], "one instance, one call after the other");
    assert_eq!(log.max_running.load(Ordering::SeqCst), 1);
    let t0 = tokio::time::Instant::now();
    let refs: Vec<WorkerRef> = (10..20).map(|k| client.grain(k)).collect();
    let naps = refs.iter().map(|w| w.nap(100));
    for r in join_all(naps).await {
        r.unwrap();
    }
    assert_eq!(log.max_running.load(Ordering::SeqCst), 10, "ten grains at once");
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "concurrently, not one after another: {:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn grains_activate_on_first_call_and_deactivate_when_idle() {
    let net = SimNetwork::new(13, SimConfig::default());
    let log = Arc::new(Log::default());
    let cfg =
        ServerConfig { idle_deactivation: Duration::from_secs(10), ..ServerConfig::default() };
    let (server, client) = setup(&net, &log, cfg, ClientConfig::default()).await;
    assert_eq!(server.activation_count(), 0);
    let w: WorkerRef = client.grain(1);
    w.work(1).await.unwrap();
    w.work(2).await.unwrap();
    client.grain::<WorkerRef>(2).work(3).await.unwrap();
    assert_eq!((server.activation_count(), log.activations.load(Ordering::SeqCst)), (2, 2));
    // Keep grain 1 busy; grain 2 idles out.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.work(10 + i).await.unwrap();
    }
    assert_eq!(server.activation_count(), 1, "grain 2 was deactivated");
    assert_eq!(log.deactivations.load(Ordering::SeqCst), 1);
    assert_eq!(w.served().await.unwrap(), 10, "grain 1 kept its instance");
    // A call to a deactivated grain activates it again, fresh.
    assert_eq!(client.grain::<WorkerRef>(2).served().await.unwrap(), 0);
    assert_eq!(log.activations.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn deadlines_bound_every_call() {
    let net = SimNetwork::new(14, SimConfig::default());
    let log = Arc::new(Log::default());
    let (_server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(1);
    let t0 = tokio::time::Instant::now();
    let r = w.with_timeout(Duration::from_millis(300)).nap(5000).await;
    assert!(matches!(r, Err(CallError::Timeout) | Err(CallError::DeadlineExceeded)), "{r:?}");
    assert!(t0.elapsed() <= Duration::from_millis(310), "{:?}", t0.elapsed());
    // The server cut the call short at its deadline: the grain is free again at once.
    let cut_short = || log.running.load(Ordering::SeqCst) == 0;
    wait_until("the slow call cancelled on the server", Duration::from_millis(50), cut_short).await;
    assert_eq!(w.served().await.unwrap(), 0);
    assert!(client.stats().timeouts + client.stats().errors >= 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_cancels_it_on_the_server() {
    let net = SimNetwork::new(15, SimConfig::default());
    let log = Arc::new(Log::default());
    let (server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(1);
    // A long call, then a queued one behind it; drop both after 100 ms.
    let long = w.nap(10_000);
    let queued = w.work(99);
    let _ = tokio::time::timeout(Duration::from_millis(100), async { tokio::join!(long, queued) })
        .await;
    assert_eq!(client.stats().pending, 0, "removed locally at once");
    wait_until("both calls gone from the server", Duration::from_millis(100), || {
        log.running.load(Ordering::SeqCst) == 0 && server.stats().pending_calls == 0
    })
    .await;
    assert_eq!(log.runs.lock().unwrap().get(&99), None, "the queued call never ran");
    assert_eq!(w.work(100).await.unwrap(), 100, "the grain serves the next call");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_method_fails_its_call_and_the_server_keeps_serving() {
    let net = SimNetwork::new(16, SimConfig::default());
    let log = Arc::new(Log::default());
    let (server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(1);
    w.work(1).await.unwrap();
    assert!(matches!(w.explode().await, Err(CallError::HandlerPanicked)));
    // The instance was replaced (its state might have been broken): a fresh one serves.
    assert_eq!(w.served().await.unwrap(), 0);
    assert_eq!(client.grain::<WorkerRef>(2).work(2).await.unwrap(), 2);
    assert_eq!(server.activation_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn too_many_pending_calls_are_refused_as_overloaded() {
    let net = SimNetwork::new(17, SimConfig::default());
    let log = Arc::new(Log::default());
    let cfg = ServerConfig { max_pending_per_connection: 8, ..ServerConfig::default() };
    let (_server, client) = setup(&net, &log, cfg, ClientConfig::default()).await;
    let refs: Vec<WorkerRef> = (0..20).map(|k| client.grain(k)).collect();
    let results = join_all(refs.iter().map(|w| w.nap(1000))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let overloaded = results.iter().filter(|r| matches!(r, Err(CallError::Overloaded))).count();
    assert_eq!((ok, overloaded), (8, 12), "{results:?}");
    assert!(log.max_running.load(Ordering::SeqCst) <= 8);
}

#[tokio::test(start_paused = true)]
async fn pending_argument_bytes_are_capped_per_connection() {
    let net = SimNetwork::new(20, SimConfig::default());
    let log = Arc::new(Log::default());
    let cfg = ServerConfig { max_pending_bytes_per_connection: 1500, ..ServerConfig::default() };
    let (_server, client) = setup(&net, &log, cfg, ClientConfig::default()).await;
    let refs: Vec<WorkerRef> = (0..5).map(|k| client.grain(k)).collect();
    // Each call holds about 400 argument bytes (and 256 of bookkeeping) for a second: two fit
    // in 1500 bytes.
    let results = join_all(refs.iter().map(|w| w.hold(vec![7; 400], 1000))).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(400))).count();
    let overloaded = results.iter().filter(|r| matches!(r, Err(CallError::Overloaded))).count();
    assert_eq!((ok, overloaded), (2, 3), "{results:?}");
    // With nothing pending, one call bigger than the budget is still taken.
    assert_eq!(refs[0].hold(vec![1; 5000], 1).await.unwrap(), 5000);
}

#[tokio::test(start_paused = true)]
async fn at_the_activation_cap_the_least_recently_used_idle_grain_makes_room() {
    let net = SimNetwork::new(19, SimConfig::default());
    let log = Arc::new(Log::default());
    let cfg = ServerConfig {
        max_activations: 2,
        idle_deactivation: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let (server, client) = setup(&net, &log, cfg, ClientConfig::default()).await;
    let refs: Vec<WorkerRef> = (0..4).map(|k| client.grain(k)).collect();
    assert_eq!(refs[0].work(1).await.unwrap(), 1);
    assert_eq!(refs[1].work(2).await.unwrap(), 2);
    assert_eq!(refs[0].work(3).await.unwrap(), 3, "grain 0 is now the more recently used");
    // A third grain: grain 1 (idle the longest) is deactivated to make room.
    assert_eq!(refs[2].work(4).await.unwrap(), 4);
    wait_until("grain 1's deactivation hook ran", Duration::from_millis(100), || {
        log.deactivations.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(server.activation_count(), 2);
    assert_eq!(server.stats().activations_evicted, 1);
    assert_eq!(refs[0].served().await.unwrap(), 2, "grain 0 kept its state");
    assert_eq!(refs[1].served().await.unwrap(), 0, "grain 1 starts afresh");
    // Every activation busy: a new grain is refused, and the refused call never runs.
    let naps = join_all([refs[0].nap(1000), refs[1].nap(1000)]);
    let refused = async {
        let both = || log.running.load(Ordering::SeqCst) == 2;
        wait_until("both naps running", Duration::from_millis(200), both).await;
        refs[3].work(5).await
    };
    let (naps, refused) = tokio::join!(naps, refused);
    assert!(naps.iter().all(Result::is_ok), "{naps:?}");
    assert!(matches!(refused, Err(CallError::Overloaded)), "{refused:?}");
    assert!(log.runs.lock().unwrap().get(&5).is_none(), "the refused call never ran");
    assert_eq!(server.stats().overloaded_activations, 1);
    let idle = || server.activation_count() == 0;
    wait_until("all idled out", Duration::from_secs(30), idle).await;
    assert_eq!(refs[3].work(6).await.unwrap(), 6, "room again");
}

/// `Worker` as a later version: `work` unchanged, `rest` added, `history` changed.
#[grainwire::grain(name = "Worker", version = 2)]
trait WorkerV2 {
    async fn work(&mut self, n: u64) -> u64;
    async fn rest(&mut self) -> u64;
    async fn history(&self) -> Vec<u32>;
}

#[grainwire::grain]
trait Stranger {
    async fn hello(&self) -> u32;
}

#[tokio::test(start_paused = true)]
async fn unknown_types_and_other_versions_fail_with_typed_errors() {
    let net = SimNetwork::new(18, SimConfig::default());
    let log = Arc::new(Log::default());
    let (_server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    assert!(matches!(
        client.grain::<StrangerRef>(1).hello().await,
        Err(CallError::UnknownGrainType)
    ));
    // Compatibility is per method: what version 2 added or changed is refused, typed...
    let v2 = client.grain::<WorkerV2Ref>(1);
    match v2.rest().await {
        Err(CallError::IncompatibleVersion { ours: 2, theirs: 1 }) => {}
        other => panic!("{other:?}"),
    }
    match v2.history().await {
        Err(CallError::IncompatibleVersion { ours: 2, theirs: 1 }) => {}
        other => panic!("{other:?}"),
    }
    // ...and nothing of it reached a grain; what it left unchanged is served.
    assert!(log.runs.lock().unwrap().is_empty());
    assert_eq!(v2.work(7).await.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_pending_calls_refuses_new_ones_and_deactivates() {
    let net = SimNetwork::new(19, SimConfig::default());
    let log = Arc::new(Log::default());
    let (server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(1);
    w.work(1).await.unwrap();
    let slow = tokio::spawn({
        let w = w.clone();
        async move { w.nap(500).await }
    });
    let napping = || log.running.load(Ordering::SeqCst) == 1;
    wait_until("the slow call running", Duration::from_millis(100), napping).await;
    let mut events = client.events();
    let stopping = tokio::spawn(server.shutdown());
    // The server says it drains (a new manifest); then new calls fail at once.
    until(&mut events, |e| matches!(e, ClientEvent::ManifestChanged { .. })).await;
    let late = client.grain::<WorkerRef>(2).work(2).await;
    assert!(matches!(late, Err(CallError::ShuttingDown)), "{late:?}");
    assert_eq!(slow.await.unwrap().unwrap(), 2, "the pending call finished");
    stopping.await.unwrap();
    assert_eq!(log.deactivations.load(Ordering::SeqCst), 1, "the deactivation hook ran");
    let after = w.work(3).await;
    assert!(
        matches!(after, Err(CallError::Disconnected(_)) | Err(CallError::NotConnected)),
        "{after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_connection_fails_pending_calls_at_once() {
    let net = SimNetwork::new(20, SimConfig::default());
    let log = Arc::new(Log::default());
    let (server, client) =
        setup(&net, &log, ServerConfig::default(), ClientConfig::default()).await;
    let w: WorkerRef = client.grain(1);
    let pending = tokio::spawn({
        let w = w.clone();
        async move { w.nap(60_000).await }
    });
    let napping = || log.running.load(Ordering::SeqCst) == 1;
    wait_until("the call running", Duration::from_millis(100), napping).await;
    let t0 = tokio::time::Instant::now();
    drop(server); // the server process dies: its endpoint closes every session
    let r = pending.await.unwrap();
    assert!(matches!(r, Err(CallError::Disconnected(_))), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "failed at once, not at the deadline: {:?}",
        t0.elapsed()
    );
    assert!(!client.is_connected());
    // A call made now is sent nowhere: `NotConnected`, not `Disconnected` (that one says the
    // call was pending on a server when it was lost, and may have run); the reason is kept.
    let r = w.work(1).await;
    assert!(matches!(r, Err(CallError::NotConnected)), "{r:?}");
    assert!(client.disconnect_reason().is_some());
}
