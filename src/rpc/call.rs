//! The meeting point of a call future and whoever sends the call: the sender completes it, the
//! future waits on it, and a future dropped early cancels it. And the decoding of a call's
//! outcome into the method's result.
//!
//! Its state is one atomic, the outcome a write-once slot, the call's id two atomics and the
//! waker an `AtomicWaker`: no lock on either side. (A mutex around all of it cost six
//! acquisitions per call.)

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;

use serde::Deserialize;

use super::reference::Calls;
use crate::error::{CallError, CodecError};
use crate::proto::ids::{PeerId, RequestId};
use crate::proto::wire::rpc::{self, Status};

/// What a completed call carries back: the server's status and payload, or a local error
/// (which is never an application error).
pub(crate) type Outcome = Result<(Status, Bytes), CallError<Infallible>>;

/// Not sent yet.
const PENDING: u8 = 0;
/// Sent: `peer` and `request` say where.
const SENT: u8 = 1;
/// Completed: the outcome is in its slot.
const DONE: u8 = 2;
/// The caller gave up before it completed.
const CANCELLED: u8 = 3;

/// One call's rendezvous.
#[derive(Debug)]
pub(crate) struct CallCell {
    state: AtomicU8,
    outcome: OnceLock<Outcome>,
    peer: AtomicU64,
    /// `RequestId` as `slot << 32 | generation`.
    request: AtomicU64,
    waker: AtomicWaker,
}

impl CallCell {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
            outcome: OnceLock::new(),
            peer: AtomicU64::new(0),
            request: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Makes a cell whose call ended new again, for the next call.
    pub(crate) fn reset(&mut self) {
        *self.state.get_mut() = PENDING;
        self.outcome.take();
        self.waker.take();
    }

    /// Completes the call; false if it was already done or cancelled. Exactly one of
    /// `complete` (true) and `cancel` (`Some`) ends each call: that side counts it finished.
    /// Only the client's service completes calls.
    pub(crate) fn complete(&self, outcome: Outcome) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        if !matches!(current, PENDING | SENT) || self.outcome.set(outcome).is_err() {
            return false;
        }
        // The outcome is in place before the state says so.
        loop {
            match self.state.compare_exchange(current, DONE, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now @ (PENDING | SENT)) => current = now,
                Err(_) => return false, // cancelled meanwhile: the caller counted it
            }
        }
        // Paired with `poll`'s registration and second look at the state.
        self.waker.wake();
        true
    }

    /// Records where the call went; false if the caller already gave up (the service then
    /// cancels it).
    pub(crate) fn set_id(&self, peer: PeerId, id: RequestId) -> bool {
        self.peer.store(peer.0, Ordering::Relaxed);
        let packed = (u64::from(id.slot) << 32) | u64::from(id.generation);
        self.request.store(packed, Ordering::Relaxed);
        // Release: the id is visible to whoever sees SENT. A retry sends it again (SENT stays
        // SENT, with the new id).
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !matches!(current, PENDING | SENT) {
                return false;
            }
            match self.state.compare_exchange(current, SENT, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Where the call went (the session's peer and its id there), once sent and until it
    /// ends.
    pub(crate) fn sent_to(&self) -> Option<(PeerId, RequestId)> {
        if self.state.load(Ordering::Acquire) != SENT {
            return None;
        }
        let peer = PeerId(self.peer.load(Ordering::Relaxed));
        let packed = self.request.load(Ordering::Relaxed);
        Some((peer, RequestId { slot: (packed >> 32) as u32, generation: packed as u32 }))
    }

    /// Whether the caller gave up.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// The caller gives up. `None` if the call had already ended; otherwise where it went,
    /// if it was sent yet.
    pub(crate) fn cancel(&self) -> Option<Option<(PeerId, RequestId)>> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !matches!(current, PENDING | SENT) {
                return None;
            }
            match self.state.compare_exchange(
                current,
                CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(PENDING) => return Some(None),
                Ok(_) => {
                    let peer = PeerId(self.peer.load(Ordering::Relaxed));
                    let packed = self.request.load(Ordering::Relaxed);
                    let id = RequestId { slot: (packed >> 32) as u32, generation: packed as u32 };
                    return Some(Some((peer, id)));
                }
                Err(now) => current = now,
            }
        }
    }

    /// Ready once completed; then [`outcome`](Self::outcome) has it.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_finished() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A completion between the first look and the registration may have found no waker.
        if self.is_finished() { Poll::Ready(()) } else { Poll::Pending }
    }

    /// The outcome, once completed. Read in place: a copy of its payload would cost an
    /// allocation (a `Bytes` clone promotes its buffer).
    pub(crate) fn outcome(&self) -> Option<&Outcome> {
        if self.is_finished() { self.outcome.get() } else { None }
    }

    /// Whether the call completed.
    pub(crate) fn is_finished(&self) -> bool {
        self.state.load(Ordering::SeqCst) == DONE
    }
}

/// The kind of a call, and what each kind holds: a call waits for its answer (`T`: what waits
/// for it, or where the answer goes), a one-way call for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind<T> {
    /// It waits for an answer.
    Call(T),
    /// It waits for nothing (`#[one_way]`).
    OneWay,
}

impl<T> CallKind<T> {
    /// What a call holds (`None` for a one-way call).
    pub(crate) fn call(&self) -> Option<&T> {
        match self {
            Self::Call(t) => Some(t),
            Self::OneWay => None,
        }
    }

    /// What a call holds, taken (`None` for a one-way call).
    pub(crate) fn into_call(self) -> Option<T> {
        match self {
            Self::Call(t) => Some(t),
            Self::OneWay => None,
        }
    }

    /// The same kind holding `f` of what a call holds.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> CallKind<U> {
        match self {
            Self::Call(t) => CallKind::Call(f(t)),
            Self::OneWay => CallKind::OneWay,
        }
    }

    /// The same kind holding a reference to what a call holds.
    pub(crate) fn as_ref(&self) -> CallKind<&T> {
        match self {
            Self::Call(t) => CallKind::Call(t),
            Self::OneWay => CallKind::OneWay,
        }
    }
}

/// A pending call. Dropping it before it completes cancels the call.
#[derive(Debug)]
pub(crate) struct CallFuture {
    cell: Arc<CallCell>,
    calls: Arc<dyn Calls>,
}

impl CallFuture {
    /// The future of the call `cell` completes, sent through `calls`.
    pub(crate) fn new(cell: Arc<CallCell>, calls: Arc<dyn Calls>) -> Self {
        Self { cell, calls }
    }

    /// Whether the call has its outcome.
    pub(crate) fn is_finished(&self) -> bool {
        self.cell.is_finished()
    }

    /// Where the call went, once sent and until it ends.
    pub(crate) fn sent_to(&self) -> Option<(PeerId, RequestId)> {
        self.cell.sent_to()
    }

    /// The call's outcome, once the future is ready.
    pub(crate) fn outcome(&self) -> &Outcome {
        const GONE: Outcome = Err(CallError::NotConnected);
        self.cell.outcome().unwrap_or(&GONE)
    }
}

/// Ready when the call has its outcome ([`CallFuture::outcome`]).
impl Future for CallFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.cell.poll(cx)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if !self.cell.is_finished()
            && let Some(sent) = self.cell.cancel()
        {
            self.calls.cancelled(sent);
        }
        if let Some(cell) = Arc::get_mut(&mut self.cell) {
            // Nobody else holds the cell any more (the sender let go of it): keep it for
            // another call.
            cell.reset();
            self.calls.recycle(self.cell.clone());
        }
    }
}

/// Turns a call's outcome into the method's result; `version` is the caller's interface
/// version (for `IncompatibleVersion`), `app` decodes an application error.
pub(crate) fn decode_outcome<T, E>(
    outcome: &Outcome,
    version: u8,
    app: impl FnOnce(&[u8]) -> CallError<E>,
) -> Result<T, CallError<E>>
where
    T: for<'de> Deserialize<'de>,
{
    let (status, payload) = match outcome {
        Ok((status, payload)) => (*status, payload),
        Err(e) => return Err(e.clone().map_app(|never| match never {})),
    };
    match status {
        Status::Ok => postcard::from_bytes(payload).map_err(|e| CallError::Decode(CodecError(e))),
        Status::AppError => Err(app(payload)),
        other => Err(status_error(other, version, payload)),
    }
}

/// The local error for a server status other than `Ok`/`AppError`.
pub(crate) fn status_error<E>(status: Status, version: u8, payload: &[u8]) -> CallError<E> {
    match status {
        Status::UnknownGrainType => CallError::UnknownGrainType,
        Status::UnknownMethod => CallError::UnknownMethod,
        Status::IncompatibleVersion => {
            // The server names its version in the payload.
            CallError::IncompatibleVersion {
                ours: version,
                theirs: payload.first().copied().unwrap_or(0),
            }
        }
        Status::DeadlineExceeded => CallError::DeadlineExceeded,
        Status::Overloaded => CallError::Overloaded,
        Status::HandlerPanicked => CallError::HandlerPanicked,
        Status::ShuttingDown => CallError::ShuttingDown,
        Status::Unavailable => CallError::Unavailable,
        Status::Unauthorized => CallError::Unauthorized,
        Status::Redirect => CallError::RedirectLoop,
        Status::ObserverGone => CallError::ObserverGone,
        Status::Deactivated => CallError::Deactivated,
        Status::Deadlock => match rpc::decode_deadlock(payload) {
            Ok(chain) => CallError::Deadlock { chain },
            Err(_) => CallError::BadRequest,
        },
        Status::ResponseTooLarge => match rpc::decode_too_large(payload) {
            Some((size, max)) => CallError::ResponseTooLarge { size, max },
            None => CallError::BadRequest,
        },
        _ => CallError::BadRequest,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(std::sync::atomic::AtomicU32);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(0.into()));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_call_ends_once_by_completion_or_by_cancellation() {
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let cell = CallCell::new();
        assert!(cell.poll(&mut cx).is_pending());
        let id = RequestId { slot: 7, generation: 9 };
        assert!(cell.set_id(PeerId(3), id));
        assert!(cell.complete(Ok((Status::Ok, Bytes::from_static(b"x")))));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waiting future is woken");
        assert!(!cell.complete(Err(CallError::Timeout)), "only once");
        assert!(cell.cancel().is_none(), "too late to cancel");
        assert!(cell.poll(&mut cx).is_ready());
        let Some(Ok((Status::Ok, b))) = cell.outcome() else { panic!() };
        assert_eq!(&b[..], b"x");
        assert!(cell.is_finished());

        let cell = CallCell::new();
        assert!(cell.set_id(PeerId(3), id));
        assert_eq!(cell.cancel(), Some(Some((PeerId(3), id))), "where it went");
        assert!(cell.is_cancelled());
        assert!(!cell.complete(Ok((Status::Ok, Bytes::new()))), "cancelled first");
        assert!(!cell.set_id(PeerId(3), id));

        // Sent again elsewhere (a retry): where it went last is what a cancel names.
        let cell = CallCell::new();
        assert!(cell.set_id(PeerId(3), id));
        let again = RequestId { slot: 1, generation: 2 };
        assert!(cell.set_id(PeerId(4), again));
        assert_eq!(cell.cancel(), Some(Some((PeerId(4), again))));

        let mut cell = CallCell::new();
        assert_eq!(cell.cancel(), Some(None), "not sent yet");
        cell.reset();
        assert!(cell.poll(&mut cx).is_pending(), "new again");
    }

    /// Completion racing the future's registration never loses the wake-up (bounded rounds).
    #[test]
    fn a_completion_racing_the_first_poll_is_never_lost() {
        for _ in 0..2_000 {
            let (count, w) = waker();
            let cell = Arc::new(CallCell::new());
            let c = cell.clone();
            let t = std::thread::spawn(move || c.complete(Ok((Status::Ok, Bytes::new()))));
            let mut cx = Context::from_waker(&w);
            let first = cell.poll(&mut cx);
            assert!(t.join().unwrap());
            if first.is_pending() {
                assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken");
                assert!(cell.poll(&mut cx).is_ready());
            }
        }
    }
}
