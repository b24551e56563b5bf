//! Durable reminders: a grain's reminder is kept by the fleet's reminder store and fired by
//! whichever server finds it due, reaching the grain wherever it lives: it goes on after the
//! server that set it stops (the other server activates the grain for it), and stops when the
//! grain forgets it. Over real loopback UDP and real time (reminders count in wall-clock
//! milliseconds), every wait bounded.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grainwire::directory::{GrainDirectory, MemoryDirectory};
use grainwire::persistence::Reminders;
use grainwire::server::context;
use grainwire::{Client, GrainId, Server, ServerConfig};

#[grainwire::grain]
trait Daily {
    /// Sets the reminder: every 200 ms, a `reward`.
    async fn start(&mut self) -> bool;
    /// Forgets it.
    async fn stop(&mut self);
    /// The reminder's call.
    async fn reward(&mut self);
}

/// Which server each reward ran on, in order.
type Log = Arc<Mutex<Vec<String>>>;

struct DailyGrain {
    server: String,
    log: Log,
}

impl Daily for DailyGrain {
    async fn start(&mut self) -> bool {
        let cx = context().expect("in a call");
        let every = Duration::from_millis(200);
        cx.remind("daily", every, Some(every), |me: DailyRef| async move {
            let _ = me.reward().await;
        })
        .await
    }
    async fn stop(&mut self) {
        context().expect("in a call").forget_reminder("daily");
    }
    async fn reward(&mut self) {
        self.log.lock().unwrap().push(self.server.clone());
    }
}

fn serve(id: &str, log: &Log, dir: &Arc<dyn GrainDirectory>, reminders: &Reminders) -> Server {
    let config = ServerConfig { server_id: Some(id.into()), ..ServerConfig::default() };
    let (name, log) = (id.to_string(), log.clone());
    Server::builder(config)
        .directory(dir.clone())
        .reminders(reminders.clone())
        .host(Daily::host(move |_: &GrainId| DailyGrain { server: name.clone(), log: log.clone() }))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
}

/// Waits (real time, at most 10 s) until `done()`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_outlives_its_server_and_ends_when_forgotten() {
    let log = Log::default();
    let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
    let reminders = Reminders::memory().poll_every(Duration::from_millis(50));
    let a = serve("a", &log, &dir, &reminders);
    let b = serve("b", &log, &dir, &reminders);
    a.set_peers([b.local_addr().into()]);
    b.set_peers([a.local_addr().into()]);
    let c = Client::builder().servers([a.local_addr(), b.local_addr()]).connect().await.unwrap();
    let daily = c.grain::<DailyRef>(1);
    assert!(daily.start().await.unwrap(), "the reminder was set");
    until("three rewards", || log.lock().unwrap().len() >= 3).await;
    let first = log.lock().unwrap()[0].clone();
    // The server the grain lives on stops: the reminder goes on, on the other one.
    let (gone, stays) = if first == "a" { (a, b) } else { (b, a) };
    let other = if first == "a" { "b" } else { "a" };
    gone.shutdown().await;
    until("rewards on the other server", || {
        log.lock().unwrap().iter().filter(|s| s.as_str() == other).count() >= 3
    })
    .await;
    // Forgotten: no more rewards (one already taken may still arrive).
    daily.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = log.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(log.lock().unwrap().len() <= after + 1, "it stopped: {:?}", log.lock().unwrap());
    drop(stays);
}

/// The store's rules, whatever keeps it: a reminder is taken once it is due, then not again
/// within its lease; fired, it is due a period later (or gone); set again, it is replaced;
/// removed, it is gone.
async fn store_rules(r: Reminders) {
    use grainwire::persistence::Reminder;
    let store = r.store();
    let grain = GrainId::new(grainwire::GrainType::of("Daily"), 1i64);
    let rem = |name: &str, due_ms, period_ms| Reminder {
        grain: grain.clone(),
        name: name.into(),
        interface: grainwire::proto::ids::InterfaceId::of("Daily"),
        version: 1,
        method: grainwire::proto::ids::MethodId(7),
        args: vec![1, 2, 3],
        due_ms,
        period_ms,
    };
    store.set(&rem("daily", 1_000, 500)).await.unwrap();
    store.set(&rem("once", 2_000, 0)).await.unwrap();
    assert!(store.take_due(999, 100, 10).await.unwrap().is_empty(), "not due yet");
    let due = store.take_due(1_000, 100, 10).await.unwrap();
    assert_eq!(due, vec![rem("daily", 1_000, 500)]);
    assert!(store.take_due(1_050, 100, 10).await.unwrap().is_empty(), "leased");
    store.fired(&due[0], Some(1_500)).await.unwrap();
    let due = store.take_due(2_000, 100, 10).await.unwrap();
    assert_eq!(due.len(), 2, "both due by 2,000: {due:?}");
    let once = due.iter().find(|r| r.name == "once").unwrap();
    store.fired(once, None).await.unwrap();
    assert!(store.take_due(10_000, 100, 10).await.unwrap().iter().all(|r| r.name == "daily"));
    store.set(&rem("daily", 50_000, 500)).await.unwrap();
    assert!(store.take_due(20_000, 100, 10).await.unwrap().is_empty(), "replaced");
    store.remove(&grain, "daily").await.unwrap();
    assert!(store.take_due(100_000, 100, 10).await.unwrap().is_empty(), "removed");
}

#[tokio::test]
async fn memory_reminders_keep_the_rules() {
    store_rules(Reminders::memory()).await;
}

#[tokio::test]
async fn redis_reminders_keep_the_rules() {
    let Some(redis) = support::redis::RedisServer::start("redis reminders") else { return };
    store_rules(Reminders::redis(&redis.url(), "c", "game", Duration::from_secs(2)).unwrap()).await;
}

/// The server a grain with a reminder lives on is killed (its socket gone at once, its process
/// doing nothing more): the reminder is fired by a surviving server, which reaches the grain
/// once the killed server's peers found it dead and took its grains over. Simulated network,
/// virtual time.
#[test]
fn a_reminder_fires_after_its_server_was_killed() {
    use grainwire::transport::sim::{SimConfig, SimNetwork};
    support::paused(async {
        let net = SimNetwork::new(
            9,
            SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() },
        );
        let log = Log::default();
        let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
        let reminders = Reminders::memory().poll_every(Duration::from_millis(50));
        let peers: Vec<_> = (0..3).map(|i| support::server_addr(i).into()).collect();
        let mut servers: Vec<Option<Server>> = (0..3)
            .map(|i| {
                let id = format!("s{i}");
                let config = ServerConfig {
                    server_id: Some(id.clone()),
                    peers: peers.clone(),
                    ..ServerConfig::default()
                };
                let log = log.clone();
                Some(
                    Server::builder(config)
                        .directory(dir.clone())
                        .reminders(reminders.clone())
                        .host(Daily::host(move |_: &GrainId| DailyGrain {
                            server: id.clone(),
                            log: log.clone(),
                        }))
                        .bind_sim(&net, support::server_addr(i))
                        .unwrap(),
                )
            })
            .collect();
        let c = support::fleet_client(&net, "10.0.1.1:5000", 3).await;
        let daily = c.grain::<DailyRef>(1);
        assert!(daily.start().await.unwrap());
        support::wait_until("a first reward", Duration::from_secs(5), || {
            !log.lock().unwrap().is_empty()
        })
        .await;
        let home = log.lock().unwrap()[0].clone();
        let i: usize = home[1..].parse().unwrap();
        net.kill(support::server_addr(i));
        std::mem::forget(servers[i].take());
        let before = log.lock().unwrap().len();
        support::wait_until("rewards after the kill, elsewhere", Duration::from_secs(15), || {
            let log = log.lock().unwrap();
            log[before..].iter().filter(|s| **s != home).count() >= 3
        })
        .await;
    });
}
