//! Small pieces shared by the endpoint task and the RPC layer: locking, wake-up flags, seeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// 64 bits from the OS's randomness (std seeds every `RandomState` from it): seeds for nonces,
/// cookie keys, server ids and reconnection jitter when the configuration gives none.
pub(crate) fn os_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// Locks `m`, taking the value over if a panicking thread poisoned it: every critical section
/// in this crate leaves the data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A wake-up flag for one task (an endpoint's, an activation's), set from any thread. Cheaper
/// than a `Notify` on the hot path: setting an already set flag costs one atomic swap, and the
/// task clears it at the start of each pass, so wake-ups that the pass itself serves cost
/// nothing more.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    /// A waker is stored (the task waits, or waited and was not woken since).
    registered: AtomicBool,
    // Held only to store or take the waker; never across an await.
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    /// Sets the flag and wakes the task if it waits.
    pub(crate) fn notify(&self) {
        if !self.set.swap(true, Ordering::AcqRel) && self.registered.swap(false, Ordering::AcqRel) {
            if let Some(w) = lock(&self.waker).take() {
                w.wake();
            }
        }
    }

    /// Clears the flag; true if it was set.
    pub(crate) fn clear(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// Ready once the flag is set (and clears it). Only ever polled by its one task, whose
    /// waker does not change, so a stored waker is kept until a notify takes it.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.clear() {
            return Poll::Ready(());
        }
        if !self.registered.load(Ordering::Acquire) {
            *lock(&self.waker) = Some(cx.waker().clone());
            self.registered.store(true, Ordering::Release);
        }
        // A notify between the first check and storing the waker found no waker to wake.
        if self.clear() { Poll::Ready(()) } else { Poll::Pending }
    }
}
