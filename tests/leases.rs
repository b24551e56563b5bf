//! Lease renewal that scales and fails safe (issue 19), in virtual time: 100,000 grains held in
//! a directory 5 ms away, one in ten of whose renewal requests time out, keep every lease; a
//! directory that stops answering costs each grain only when its own lease is about to lapse,
//! never all of them at once because one request failed. (Before, all leases were renewed in
//! sequential batches under one deadline, and two failed rounds deactivated every grain.)

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use grainwire::directory::{
    BoxFuture, Claim, DirectoryError, GrainDirectory, Leases, MemoryDirectory, Owner,
};
use grainwire::proto::rng::SplitMix64;
use grainwire::{GrainId, GrainType, ServerId};

/// A directory `delay` away (each way), one in ten of whose renewals (drawn from a seeded
/// generator) never answer, and which stops answering altogether while `down`.
struct Slow {
    inner: MemoryDirectory,
    delay: Duration,
    rng: Mutex<SplitMix64>,
    renewals: AtomicU64,
    down: AtomicBool,
}

impl Slow {
    async fn trip(&self, fail: bool) {
        if fail || self.down.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay * 2).await;
    }
}

impl GrainDirectory for Slow {
    fn lookup<'a>(
        &'a self,
        g: &'a GrainId,
    ) -> BoxFuture<'a, Result<Option<Owner>, DirectoryError>> {
        Box::pin(async move {
            self.trip(false).await;
            self.inner.lookup(g).await
        })
    }
    fn claim<'a>(
        &'a self,
        g: &'a GrainId,
        me: &'a Owner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DirectoryError>> {
        Box::pin(async move {
            self.trip(false).await;
            self.inner.claim(g, me, lease).await
        })
    }
    fn renew<'a>(
        &'a self,
        grains: &'a [GrainId],
        me: &'a ServerId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<GrainId>, DirectoryError>> {
        Box::pin(async move {
            self.renewals.fetch_add(1, Ordering::Relaxed);
            let fail = self.rng.lock().unwrap().below(10) == 0;
            self.trip(fail).await;
            self.inner.renew(grains, me, lease).await
        })
    }
    fn release<'a>(
        &'a self,
        g: &'a GrainId,
        me: &'a ServerId,
    ) -> BoxFuture<'a, Result<(), DirectoryError>> {
        Box::pin(async move {
            self.trip(false).await;
            self.inner.release(g, me).await
        })
    }
    fn release_all<'a>(&'a self, s: &'a ServerId) -> BoxFuture<'a, Result<usize, DirectoryError>> {
        Box::pin(async move {
            self.trip(false).await;
            self.inner.release_all(s).await
        })
    }
}

const LEASE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(2);
const GRAINS: i64 = 100_000;

fn me() -> Owner {
    Owner { server: ServerId::new("s1"), endpoint: "10.0.0.1:7000".parse().unwrap() }
}

/// Claims `GRAINS` grains through `leases`, a thousand at a time.
async fn claim_all(leases: &Arc<Leases>) {
    for chunk in 0..GRAINS / 1000 {
        let mut set = tokio::task::JoinSet::new();
        for k in chunk * 1000..(chunk + 1) * 1000 {
            let leases = leases.clone();
            set.spawn(async move {
                let g = GrainId::new(GrainType::of("Player"), k);
                assert_eq!(leases.claim(&g).await.unwrap(), Claim::Won);
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_leases_survive_a_slow_and_flaky_directory() {
    let slow = Arc::new(Slow {
        inner: MemoryDirectory::new(),
        delay: Duration::from_millis(5),
        rng: Mutex::new(SplitMix64::new(19)),
        renewals: AtomicU64::new(0),
        down: AtomicBool::new(false),
    });
    let leases = Arc::new(Leases::new(slow.clone(), me(), LEASE, TIMEOUT));
    claim_all(&leases).await;
    let lost: Arc<Mutex<Vec<GrainId>>> = Arc::default();
    let seen = lost.clone();
    let task = tokio::spawn(leases.clone().run(move |g| seen.lock().unwrap().extend(g)));
    // Three leases' time, one request in ten never answering.
    tokio::time::sleep(LEASE * 3).await;
    let stats = leases.stats();
    assert!(
        lost.lock().unwrap().is_empty(),
        "{} grains lost: {stats:?}",
        lost.lock().unwrap().len()
    );
    assert_eq!(stats.held, GRAINS as usize);
    assert_eq!(slow.inner.len(), GRAINS as usize, "every lease live in the directory");
    // A renewal per grain per third of a lease, in requests of 500, plus the retries.
    let rounds = (LEASE * 3).as_secs_f64() / (LEASE / 3).as_secs_f64();
    let least = (GRAINS as f64 * (rounds - 1.0) / 500.0) as u64;
    assert!(stats.requests >= least, "{stats:?}");
    assert!(stats.failed_requests >= stats.requests / 20, "one in ten failed: {stats:?}");

    // The directory stops answering: each grain goes when its own lease is about to lapse (a
    // tenth of a lease before), never while the directory would still keep it for a tenth of a
    // lease more, and never after its lease lapsed; every one of them goes in the end.
    slow.down.store(true, Ordering::Relaxed);
    let margin = LEASE / 10 + Duration::from_millis(20); // and a round trip
    let (mut given_up, mut live) = (Vec::new(), Vec::new());
    for _ in 0..(LEASE.as_secs() + 10) {
        let held = leases.stats().held;
        live.push(slow.inner.len());
        assert!(held <= slow.inner.len(), "a grain was kept after its lease lapsed");
        given_up.push(lost.lock().unwrap().len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Grains given up by second i had leases lapsing by i + margin: at second i + step (step >=
    // margin) the directory holds none of them.
    let step = margin.as_secs_f64().ceil() as usize;
    for i in 0..given_up.len() - step {
        let (gone, still) = (given_up[i], live[i + step]);
        assert!(gone + still <= GRAINS as usize, "second {i}: {gone} given up, {still} live later");
    }
    // Every lease had at least 20 s left (a third of a lease since its last renewal, give or
    // take a failed attempt): nothing went in the first ten seconds, everything within the
    // lease.
    assert!(given_up[..10].iter().all(|n| *n == 0), "{given_up:?}");
    assert!(given_up[LEASE.as_secs() as usize - 1] == GRAINS as usize, "{given_up:?}");
    assert_eq!(lost.lock().unwrap().len(), GRAINS as usize, "{:?}", leases.stats());
    assert_eq!(leases.stats().held, 0);
    task.abort();
}
