//! The caller's half of a stream: where its service puts the items as they arrive
//! ([`StreamInbox`]), and what the caller reads them from ([`CallStream`]), granting credit
//! back as it reads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use serde::Deserialize;

use crate::error::{CallError, CodecError};
use crate::proto::wire::rpc::{self, Status};
use crate::rpc::call::{CallFuture, Outcome, status_error};
use crate::rpc::reference::Calls;
use crate::rpc::value::{self, Binding};
use crate::sync::lock;

/// Where a caller's service puts a stream's items as they arrive, and its reader takes them.
#[derive(Debug)]
pub(crate) struct StreamInbox {
    /// Items frames not read yet: their items' bytes and how many.
    batches: Mutex<VecDeque<(Bytes, u32)>>,
    waker: AtomicWaker,
    /// The window the caller opened the stream with.
    pub(crate) window: u32,
    /// Items arrived, and items granted (the window and every grant since).
    arrived: AtomicU64,
    granted: AtomicU64,
}

impl StreamInbox {
    pub(crate) fn new(window: u32) -> Self {
        Self {
            batches: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            window,
            arrived: AtomicU64::new(0),
            granted: AtomicU64::new(window.into()),
        }
    }

    /// An items frame arrived; false (and nothing kept) if it holds more than the caller
    /// granted: the callee broke flow control.
    pub(crate) fn push(&self, items: Bytes, count: u32) -> bool {
        let arrived = self.arrived.fetch_add(count.into(), Ordering::AcqRel) + u64::from(count);
        if arrived > self.granted.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.batches).push_back((items, count));
        self.waker.wake();
        true
    }

    /// Items arrived so far.
    pub(crate) fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::Acquire)
    }

    fn pop(&self) -> Option<(Bytes, u32)> {
        lock(&self.batches).pop_front()
    }
}

/// What a stream method's caller reads: a `futures_core::Stream` of the grain's items, in
/// order, each exactly once, then `None` when the grain's stream finished; or an error, then
/// `None`, when it ended otherwise:
///
/// * `CallError::Application(e)`: the grain's error;
/// * `CallError::StreamLost { received, .. }`: the session to its server was lost (with how
///   many items arrived, to resume from the game's own position);
/// * `CallError::Timeout` / `DeadlineExceeded`: its deadline (`with_timeout`, `#[timeout_ms]`;
///   a stream has none unless given one) passed;
/// * `CallError::Deactivated`: the grain's activation ended while it ran;
/// * `CallError::ShuttingDown`: its server stopped;
/// * any error a call may end with before it ran (`Overloaded`, `Unauthorized`, ...).
///
/// Dropping it stops the grain's producer. It grants its server more items as it is read
/// (half a window at a time): one not read holds the producer after one window.
#[must_use = "a stream does nothing unless read; dropping it cancels the call"]
pub struct CallStream<T, E = Infallible> {
    state: State,
    version: u8,
    /// Decodes the grain's error.
    app: fn(&[u8]) -> CallError<E>,
    received: u64,
    /// Items read since the last grant.
    unacked: u32,
    batch: Bytes,
    left: u32,
    _types: PhantomData<fn() -> (T, E)>,
}

enum State {
    Open { call: CallFuture, inbox: Arc<StreamInbox>, calls: Arc<dyn Calls>, binding: Binding },
    Failed(CallError<Infallible>),
    Done,
}

impl<T, E> std::fmt::Debug for CallStream<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream").field("received", &self.received).finish()
    }
}

impl<T, E> CallStream<T, E> {
    /// A stream reading the items of the call `call` completes, arriving in `inbox`.
    pub(crate) fn open(
        call: CallFuture,
        inbox: Arc<StreamInbox>,
        calls: Arc<dyn Calls>,
        binding: Binding,
        version: u8,
        app: fn(&[u8]) -> CallError<E>,
    ) -> Self {
        Self::with(State::Open { call, inbox, calls, binding }, version, app)
    }

    /// A stream that failed before it was sent.
    pub(crate) fn failed(
        error: CallError<Infallible>,
        version: u8,
        app: fn(&[u8]) -> CallError<E>,
    ) -> Self {
        Self::with(State::Failed(error), version, app)
    }

    fn with(state: State, version: u8, app: fn(&[u8]) -> CallError<E>) -> Self {
        Self {
            state,
            version,
            app,
            received: 0,
            unacked: 0,
            batch: Bytes::new(),
            left: 0,
            _types: PhantomData,
        }
    }

    /// Items read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next item, or its end: `None` once it finished (or after the error that ended it).
    /// The same as `futures_core::Stream::poll_next`, without needing a stream extension crate.
    pub async fn next(&mut self) -> Option<Result<T, CallError<E>>>
    where
        T: for<'de> Deserialize<'de>,
    {
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx)).await
    }
}

impl<T, E> futures_core::Stream for CallStream<T, E>
where
    T: for<'de> Deserialize<'de>,
{
    type Item = Result<T, CallError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let State::Open { call, inbox, calls, binding } = &mut this.state else {
                return match std::mem::replace(&mut this.state, State::Done) {
                    State::Failed(e) => Poll::Ready(Some(Err(e.map_app(|never| match never {})))),
                    _ => Poll::Ready(None),
                };
            };
            if this.left > 0 {
                let mut rest = &this.batch[..];
                let Ok(item) = rpc::next_stream_item(&mut rest) else {
                    unreachable!("the service checked every item of the frame")
                };
                // References in an item are bound as a call's result's are.
                let value = value::bound(binding.clone(), || postcard::from_bytes::<T>(item));
                let advance = this.batch.len() - rest.len();
                bytes::Buf::advance(&mut this.batch, advance);
                this.left -= 1;
                this.received += 1;
                this.unacked += 1;
                if this.unacked >= (inbox.window / 2).max(1)
                    && let Some(to) = call.sent_to()
                {
                    inbox.granted.fetch_add(this.unacked.into(), Ordering::AcqRel);
                    calls.credit(to, this.unacked);
                    this.unacked = 0;
                }
                return match value {
                    Ok(v) => Poll::Ready(Some(Ok(v))),
                    Err(e) => {
                        // Caller and grain disagree on the item type: the stream ends (and the
                        // call is cancelled as it drops).
                        this.state = State::Done;
                        Poll::Ready(Some(Err(CallError::Decode(CodecError(e)))))
                    }
                };
            }
            // Looked at before the inbox: every item arrives before the end.
            let finished = call.is_finished();
            if let Some((batch, count)) = inbox.pop() {
                this.batch = batch;
                this.left = count;
                continue;
            }
            if finished {
                let end = end_of(call.outcome(), this.version, this.received, this.app);
                this.state = State::Done;
                return Poll::Ready(end.err().map(Err));
            }
            inbox.waker.register(cx.waker());
            if Pin::new(&mut *call).poll(cx).is_pending() && lock(&inbox.batches).is_empty() {
                return Poll::Pending;
            }
        }
    }
}

/// A stream's end, from its call's outcome: `Ok` when it finished with every item read.
fn end_of<E>(
    outcome: &Outcome,
    version: u8,
    received: u64,
    app: fn(&[u8]) -> CallError<E>,
) -> Result<(), CallError<E>> {
    match outcome {
        Ok((Status::Ok, payload)) => match postcard::from_bytes::<u64>(payload) {
            Ok(n) if n == received => Ok(()),
            // Items the server counted that never arrived: not the stream it sent.
            _ => Err(CallError::BadRequest),
        },
        Ok((Status::AppError, payload)) => Err(app(payload)),
        Ok((status, payload)) => Err(status_error(*status, version, payload)),
        Err(CallError::Disconnected(reason)) => {
            Err(CallError::StreamLost { received, reason: *reason })
        }
        Err(e) => Err(e.clone().map_app(|never| match never {})),
    }
}
