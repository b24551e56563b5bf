//! The meeting point of a call future and the client service: the service completes it, the
//! future waits on it, and a future dropped early cancels it.

use std::convert::Infallible;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::error::CallError;
use crate::proto::ids::{PeerId, RequestId};
use crate::proto::wire::rpc::Status;
use crate::sync::lock;

/// What a completed call carries back: the server's status and payload, or a local error
/// (which is never an application error).
pub(crate) type Outcome = Result<(Status, Bytes), CallError<Infallible>>;

#[derive(Debug)]
enum State {
    Pending { waker: Option<Waker>, id: Option<(PeerId, RequestId)>, cancelled: bool },
    Done(Outcome),
    Taken,
}

/// One call's rendezvous. A plain mutex: held only to swap a small state, never across an
/// await; the service and the caller touch it once or twice per call.
#[derive(Debug)]
pub(crate) struct CallCell {
    state: Mutex<State>,
}

impl CallCell {
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(State::Pending { waker: None, id: None, cancelled: false }) }
    }

    /// Makes a cell whose call ended new again, for the next call.
    pub(crate) fn reset(&mut self) {
        *self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) =
            State::Pending { waker: None, id: None, cancelled: false };
    }

    /// Completes the call; false if it was already done or cancelled. Exactly one of
    /// `complete` (true) and `cancel` (`Some`) ends each call: that side counts it finished.
    pub(crate) fn complete(&self, outcome: Outcome) -> bool {
        let mut s = lock(&self.state);
        match &mut *s {
            State::Pending { cancelled: false, waker, .. } => {
                let w = waker.take();
                *s = State::Done(outcome);
                drop(s);
                if let Some(w) = w {
                    w.wake();
                }
                true
            }
            _ => false,
        }
    }

    /// Records where the call went; false if the caller already gave up (the service then
    /// cancels it).
    pub(crate) fn set_id(&self, peer: PeerId, id: RequestId) -> bool {
        match &mut *lock(&self.state) {
            State::Pending { cancelled: false, id: slot, .. } => {
                *slot = Some((peer, id));
                true
            }
            _ => false,
        }
    }

    /// Whether the caller gave up.
    pub(crate) fn is_cancelled(&self) -> bool {
        matches!(&*lock(&self.state), State::Pending { cancelled: true, .. })
    }

    /// The caller gives up. `None` if the call had already ended; otherwise where it went,
    /// if it was sent yet.
    pub(crate) fn cancel(&self) -> Option<Option<(PeerId, RequestId)>> {
        match &mut *lock(&self.state) {
            State::Pending { cancelled, id, .. } if !*cancelled => {
                *cancelled = true;
                Some(id.take())
            }
            _ => None,
        }
    }

    /// Ready with the outcome once completed.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut s = lock(&self.state);
        match &mut *s {
            State::Pending { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Done(_) => match std::mem::replace(&mut *s, State::Taken) {
                State::Done(o) => Poll::Ready(o),
                _ => unreachable!("matched Done just above"),
            },
            State::Taken => Poll::Ready(Err(CallError::NotConnected)),
        }
    }

    /// Whether the outcome was delivered (or is waiting to be taken).
    pub(crate) fn is_finished(&self) -> bool {
        !matches!(&*lock(&self.state), State::Pending { .. })
    }
}
