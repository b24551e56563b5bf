//! The endpoint task's deadline timer.
//!
//! Two kinds, chosen by the I/O: on the simulated network, a tokio timer (tokio's clock can be
//! paused, which makes tests deterministic). On real sockets, a small thread of the endpoint's
//! own, because a tokio timer makes every idle wait of the task's thread a kernel wait *with a
//! timeout*: a high-resolution timer armed and cancelled around each packet, which on virtual
//! machines reprograms the virtual APIC and was measured here at about a microsecond per round
//! trip at the median and tens of microseconds at p99. The thread sleeps until the earliest
//! deadline and sets the task's wake signal; arming it costs an atomic compare, and a syscall
//! only when a deadline moves earlier than the one it sleeps for.
//!
//! The thread timer is only ever moved *earlier* (moving it later would cost a syscall for
//! nothing): left later than needed, it fires early, and the pass that follows finds nothing
//! due and arms it again. The tokio timer is set to exactly the next deadline (or none), so the
//! simulated network runs no pass that real time would not need: a frame that only a spurious
//! pass would have sent shows up in tests as late.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use crate::transport::EndpointShared;

/// Deadlines as nanoseconds since an epoch, `u64::MAX` for none.
const NONE: u64 = u64::MAX;

#[derive(Debug)]
struct ThreadShared {
    epoch: Instant,
    deadline: AtomicU64,
    stop: AtomicBool,
    endpoint: Arc<EndpointShared>,
}

/// The timer thread's handle; dropping it stops the thread.
#[derive(Debug)]
#[must_use = "dropping the timer stops its thread"]
pub(crate) struct ThreadTimer {
    shared: Arc<ThreadShared>,
    thread: thread::Thread,
}

impl ThreadTimer {
    fn start(endpoint: Arc<EndpointShared>, epoch: Instant) -> std::io::Result<Self> {
        let shared = Arc::new(ThreadShared {
            epoch,
            deadline: AtomicU64::new(NONE),
            stop: AtomicBool::new(false),
            endpoint,
        });
        let s = shared.clone();
        // A loop of atomics and parking: a small stack is plenty.
        let handle = thread::Builder::new()
            .name("grainwire-timer".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&s))?;
        Ok(Self { shared, thread: handle.thread().clone() })
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.shared.epoch).as_nanos().min(u128::from(NONE - 1)) as u64
    }

    fn arm(&self, at: Instant) {
        let n = self.nanos(at);
        // Only the endpoint task arms, so a plain compare-then-store cannot lose a deadline:
        // the thread only ever replaces a deadline it fired with NONE (by compare-exchange).
        if n < self.shared.deadline.load(Ordering::Acquire) {
            self.shared.deadline.store(n, Ordering::Release);
            self.thread.unpark();
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn run(s: &ThreadShared) {
    while !s.stop.load(Ordering::Acquire) {
        let d = s.deadline.load(Ordering::Acquire);
        if d == NONE {
            thread::park();
            continue;
        }
        let at = s.epoch + Duration::from_nanos(d);
        let now = Instant::now();
        if at > now {
            thread::park_timeout(at - now);
            continue;
        }
        if s.deadline.compare_exchange(d, NONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            s.endpoint.wake.notify();
        }
    }
}

/// A tokio timer (virtual time on the simulated network).
#[derive(Debug)]
pub(crate) struct TokioTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

/// The endpoint task's timer; see the module docs.
#[derive(Debug)]
pub(crate) enum Timer {
    Thread(ThreadTimer),
    Tokio(TokioTimer),
}

impl Timer {
    /// A timer on its own thread that wakes `endpoint`'s task (real sockets).
    pub(crate) fn thread(endpoint: Arc<EndpointShared>, epoch: Instant) -> std::io::Result<Self> {
        ThreadTimer::start(endpoint, epoch).map(Timer::Thread)
    }

    /// A tokio timer (the simulated network, whose clock is tokio's).
    pub(crate) fn tokio(now: Instant) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(now)));
        Timer::Tokio(TokioTimer { sleep, armed: None })
    }

    /// Makes sure the task wakes no later than `at` (`None`: nothing is due).
    pub(crate) fn arm(&mut self, at: Option<Instant>) {
        match self {
            Timer::Thread(t) => {
                if let Some(at) = at {
                    t.arm(at);
                }
            }
            Timer::Tokio(t) => {
                if t.armed != at {
                    if let Some(at) = at {
                        t.sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                    }
                    t.armed = at;
                }
            }
        }
    }

    /// Ready when a tokio timer fires (a thread timer wakes the task through its signal and
    /// is never ready here).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Timer::Thread(_) => Poll::Pending,
            Timer::Tokio(t) => {
                if t.armed.is_none() {
                    return Poll::Pending;
                }
                let r = t.sleep.as_mut().poll(cx);
                if r.is_ready() {
                    t.armed = None;
                }
                r
            }
        }
    }
}
