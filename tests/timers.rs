//! Time in grains: timers whose ticks are turns of the grain (never beside a call, never piled
//! up behind a busy one), one-shot timers, cancelling, timers ending with their activation
//! (and not keeping it active), and a grain asking to be deactivated. Over the simulated
//! network on virtual time.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grainwire::server::{Timer, context};
use grainwire::transport::sim::{SimConfig, SimNetwork};
use grainwire::{GrainId, Server, ServerConfig};
use support::{paused, server_addr, wait_until};

#[grainwire::grain]
trait Clock {
    /// Starts a timer ticking every `ms` (`once`: one tick after `ms`).
    async fn start(&mut self, ms: u64, once: bool);
    /// Stops the timer.
    async fn stop(&mut self);
    /// A timer's tick (a turn of the grain).
    #[one_way]
    async fn tick(&mut self);
    /// Busy for `ms`: ticks due meanwhile wait (one at most).
    async fn busy(&mut self, ms: u64);
    /// Ticks so far, and whether any ran during a call.
    async fn ticks(&self) -> (u64, bool);
    /// Asks to be deactivated.
    async fn done(&mut self);
    /// Asks to be kept for `ms` more, idle or not.
    async fn hold(&mut self, ms: u64);
}

/// What the test reads without a call: ticks of every activation.
#[derive(Default)]
struct Seen {
    ticks: AtomicU64,
}

struct ClockGrain {
    seen: Arc<Seen>,
    ticks: u64,
    in_call: bool,
    overlapped: bool,
    timer: Option<Timer>,
}

impl Clock for ClockGrain {
    async fn start(&mut self, ms: u64, once: bool) {
        let cx = context().expect("in a call");
        let tick = |me: ClockRef| async move {
            let _ = me.tick().await;
        };
        let period = Duration::from_millis(ms);
        self.timer = Some(if once { cx.after(period, tick) } else { cx.every(period, tick) });
    }
    async fn stop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.cancel();
        }
    }
    async fn tick(&mut self) {
        self.overlapped |= self.in_call;
        self.ticks += 1;
        self.seen.ticks.fetch_add(1, Ordering::SeqCst);
    }
    async fn busy(&mut self, ms: u64) {
        self.in_call = true;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.in_call = false;
    }
    async fn ticks(&self) -> (u64, bool) {
        (self.ticks, self.overlapped)
    }
    async fn done(&mut self) {
        context().expect("in a call").deactivate();
    }
    async fn hold(&mut self, ms: u64) {
        context().expect("in a call").keep_alive(Duration::from_millis(ms));
    }
}

fn setup(idle: Duration) -> (SimNetwork, Arc<Seen>, Server) {
    setup_typed(idle, None)
}

/// A server whose idle time is `idle`, hosting clocks idle after `type_idle` if given.
fn setup_typed(idle: Duration, type_idle: Option<Duration>) -> (SimNetwork, Arc<Seen>, Server) {
    let net =
        SimNetwork::new(1, SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() });
    let seen = Arc::new(Seen::default());
    let s = {
        let seen = seen.clone();
        let config = ServerConfig { idle_deactivation: idle, ..ServerConfig::default() };
        let mut host = Clock::host(move |_: &GrainId| ClockGrain {
            seen: seen.clone(),
            ticks: 0,
            in_call: false,
            overlapped: false,
            timer: None,
        });
        if let Some(d) = type_idle {
            host = host.idle_after(d);
        }
        Server::builder(config).host(host).bind_sim(&net, server_addr(0)).unwrap()
    };
    (net, seen, s)
}

/// Ticks every 10 ms are turns: a 200 ms call holds them back (one waits, the rest are
/// skipped), none runs beside it; cancelling stops them.
#[test]
fn ticks_are_turns_never_beside_a_call_and_never_piled_up() {
    paused(async {
        let (net, seen, _s) = setup(Duration::from_secs(300));
        let c = support::fleet_client(&net, "10.0.1.1:5000", 1).await;
        let clock: ClockRef = c.grain(1);
        clock.start(10, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(105)).await;
        let (before, _) = clock.ticks().await.unwrap();
        assert!((9..=11).contains(&before), "every 10 ms: {before}");
        clock.busy(200).await.unwrap();
        let (after, overlapped) = clock.ticks().await.unwrap();
        assert!(!overlapped, "a tick ran during a call");
        // During the 200 ms call: at most the one tick queued behind it.
        assert!(after <= before + 2, "piled up: {before} -> {after}");
        clock.stop().await.unwrap();
        let stopped = seen.ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.ticks.load(Ordering::SeqCst) <= stopped + 1, "cancelled");
    });
}

/// A one-shot timer fires once.
#[test]
fn a_one_shot_timer_fires_once() {
    paused(async {
        let (net, _seen, _s) = setup(Duration::from_secs(300));
        let c = support::fleet_client(&net, "10.0.1.1:5000", 1).await;
        let clock: ClockRef = c.grain(1);
        clock.start(50, true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(clock.ticks().await.unwrap(), (1, false));
    });
}

/// Timers do not keep a grain active, and end with their activation (idle, or on request).
#[test]
fn timers_end_with_their_activation() {
    paused(async {
        let (net, seen, s) = setup(Duration::from_secs(1));
        let c = support::fleet_client(&net, "10.0.1.1:5000", 1).await;
        let clock: ClockRef = c.grain(1);
        clock.start(20, false).await.unwrap();
        wait_until("idle deactivation", Duration::from_secs(10), || s.activation_count() == 0)
            .await;
        let at_end = seen.ticks.load(Ordering::SeqCst);
        assert!(at_end >= 40, "it ticked while active: {at_end}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(seen.ticks.load(Ordering::SeqCst), at_end, "its timer ended with it");
        // On request: the next call activates it afresh (no timer).
        clock.start(20, false).await.unwrap();
        clock.done().await.unwrap();
        wait_until("deactivated on request", Duration::from_secs(1), || s.activation_count() == 0)
            .await;
        let at_end = seen.ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(seen.ticks.load(Ordering::SeqCst), at_end);
        assert_eq!(clock.ticks().await.unwrap(), (0, false), "a fresh activation");
    });
}

/// The timer's tick reaches the grain it belongs to (a timer of one grain never ticks
/// another): two clocks at different periods count their own ticks.
#[test]
fn each_grain_ticks_its_own() {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    paused(async {
        let (net, _seen, _s) = setup(Duration::from_secs(300));
        let c = support::fleet_client(&net, "10.0.1.1:5000", 1).await;
        let (a, b): (ClockRef, ClockRef) = (c.grain(1), c.grain(2));
        a.start(10, false).await.unwrap();
        b.start(25, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(251)).await;
        let (ta, _) = a.ticks().await.unwrap();
        let (tb, _) = b.ticks().await.unwrap();
        ticks.lock().unwrap().extend([ta, tb]);
    });
    let t = ticks.lock().unwrap();
    assert!((24..=26).contains(&t[0]) && (9..=11).contains(&t[1]), "{t:?}");
}

/// A grain type's own idle time (shorter than the server's), and a grain asking to be kept
/// longer than it.
#[test]
fn a_types_idle_time_and_keep_alive() {
    paused(async {
        let (net, _seen, s) = setup_typed(Duration::from_secs(300), Some(Duration::from_secs(1)));
        let c = support::fleet_client(&net, "10.0.1.1:5000", 1).await;
        let a: ClockRef = c.grain(1);
        a.ticks().await.unwrap();
        let start = tokio::time::Instant::now();
        wait_until("the type's idle time", Duration::from_secs(5), || s.activation_count() == 0)
            .await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
        // Kept for 5 s: still there after 3, gone within a sweep of 5.
        a.hold(5_000).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(s.activation_count(), 1, "kept");
        wait_until("its keep ran out", Duration::from_secs(4), || s.activation_count() == 0).await;
    });
}
