//! Small pieces shared by the endpoint task and the RPC layer: locking, wake-up flags, seeds.

#[cfg(test)]
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// 64 bits from the OS's randomness (std seeds every `RandomState` from it): seeds for nonces,
/// cookie keys, server ids and reconnection jitter when the configuration gives none.
pub(crate) fn os_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

#[cfg(feature = "test-util")]
thread_local! {
    /// Mutex acquisitions on this thread (every crate mutex is taken through [`lock`]).
    static LOCKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many of the crate's mutexes this thread has locked so far (feature `test-util`).
#[cfg(feature = "test-util")]
pub(crate) fn locks_taken() -> u64 {
    LOCKS.with(std::cell::Cell::get)
}

/// Locks `m`, taking the value over if a panicking thread poisoned it: every critical section
/// in this crate leaves the data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(feature = "test-util")]
    LOCKS.with(|c| c.set(c.get() + 1));
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A wake-up flag for one task (an endpoint's, an activation's), set from any thread. Cheaper
/// than a `Notify` on the hot path: setting an already set flag costs one atomic swap, and the
/// task clears it at the start of each pass, so wake-ups that the pass itself serves cost
/// nothing more. The waker lives in an `AtomicWaker`: no lock on either side.
///
/// (An earlier version kept the waker in a mutex beside a `registered` flag and cleared the
/// flag before taking the lock: a notifier paused between the two could take a waker the task
/// had stored again meanwhile, and the next notify woke no one. The test below pauses a
/// notifier at that point.)
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
    /// Tests pause a notifier here, between the flag and the waker, to interleave the task.
    #[cfg(test)]
    pause: Option<Arc<std::sync::Barrier>>,
}

impl Signal {
    /// Sets the flag and wakes the task if it waits.
    pub(crate) fn notify(&self) {
        if self.set.swap(true, Ordering::SeqCst) {
            return; // already set: whoever set it woke the task, or the task will see it
        }
        #[cfg(test)]
        if let Some(b) = &self.pause {
            b.wait();
            b.wait();
        }
        self.waker.wake();
    }

    /// Clears the flag; true if it was set.
    pub(crate) fn clear(&self) -> bool {
        self.set.swap(false, Ordering::SeqCst)
    }

    /// Ready once the flag is set (and clears it).
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.clear() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the first look and the registration may have found no waker.
        if self.clear() { Poll::Ready(()) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::task::{Wake, Waker};

    /// Counts its wakes and reports each on a channel.
    struct Probe {
        wakes: AtomicU64,
        tx: Mutex<mpsc::Sender<()>>,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            let _ = lock(&self.tx).send(());
        }
    }

    #[test]
    fn a_notify_wakes_a_waiting_task_once() {
        let (tx, rx) = mpsc::channel();
        let probe = Arc::new(Probe { wakes: AtomicU64::new(0), tx: Mutex::new(tx) });
        let waker = Waker::from(probe.clone());
        let mut cx = Context::from_waker(&waker);
        let s = Signal::default();
        // Waiting stores the waker; a notify takes it and wakes once.
        assert!(s.poll(&mut cx).is_pending());
        s.notify();
        assert_eq!(probe.wakes.load(Ordering::SeqCst), 1);
        // Further notifies while the flag is set wake no one; the poll consumes the flag.
        s.notify();
        assert_eq!(probe.wakes.load(Ordering::SeqCst), 1);
        assert!(s.poll(&mut cx).is_ready());
        // A notify while the task runs (no waker stored) only sets the flag.
        s.notify();
        assert_eq!(probe.wakes.load(Ordering::SeqCst), 1);
        assert!(s.clear());
        assert!(s.poll(&mut cx).is_pending());
        s.notify();
        assert_eq!(probe.wakes.load(Ordering::SeqCst), 2);
        drop(rx);
    }

    /// The interleaving that lost wake-ups: a notifier paused between setting the flag and
    /// taking the waker while the task consumes the flag and waits again. Afterwards, with the
    /// task waiting, the next notify must wake it.
    #[test]
    fn a_notify_interleaved_with_the_task_never_disables_the_next() {
        let (tx, rx) = mpsc::channel();
        let probe = Arc::new(Probe { wakes: AtomicU64::new(0), tx: Mutex::new(tx) });
        let waker = Waker::from(probe.clone());
        let mut cx = Context::from_waker(&waker);
        let pause = Arc::new(std::sync::Barrier::new(2));
        let s = Arc::new(Signal { pause: Some(pause.clone()), ..Signal::default() });
        assert!(s.poll(&mut cx).is_pending());
        let notifier = {
            let s = s.clone();
            std::thread::spawn(move || s.notify())
        };
        pause.wait();
        // The notifier is paused with the flag set: the task (woken by something else) runs a
        // pass, consuming the flag, and waits again.
        assert!(s.poll(&mut cx).is_ready());
        assert!(s.poll(&mut cx).is_pending());
        pause.wait();
        notifier.join().unwrap();
        while s.poll(&mut cx).is_ready() {}
        while rx.try_recv().is_ok() {}
        // Waiting, flag clear, no notifier running: this notify must wake the task.
        let s = Arc::into_inner(s).unwrap();
        let s = Signal { pause: None, ..s };
        s.notify();
        assert!(rx.try_recv().is_ok(), "the notify woke no one");
    }
}
