//! Streams from grains, both halves: what a grain returns ([`GrainStream`], fed by an
//! iterator, a `Stream` or a [`StreamSender`]), the pump that sends its items under the
//! caller's credit (the host's side, outside the grain's turn), and what the caller reads
//! ([`CallStream`], a `futures_core::Stream` of `Result<T, CallError<E>>`).
//!
//! On the wire (see `proto::wire::rpc`): the caller opens the stream with its window (the items
//! it takes before it grants more) and the ordered transport stream it wants them on; the host
//! sends items frames (many items per datagram) on that stream, never more than granted, and
//! ends the stream with the call's response on the same stream, after every item: `Ok` with
//! the number of items, the grain's error, or why it was cut (deadline, the activation ended,
//! the server stopping). The caller grants more as it *reads* (half a window at a time), so a
//! caller that stops reading stops the producer after one window. Dropping the caller's
//! stream cancels the call, which stops the pump and drops the grain's producer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::call::{CallFuture, status_error};
use super::reference::Calls;
use super::value::{self, Binding};
use crate::error::{CallError, CodecError};
use crate::proto::ids::RequestId;
use crate::proto::wire::rpc::{self, Status};
use crate::sync::lock;
use crate::transport::{Connection, Delivery};

/// The items a caller takes before it grants more, unless its client says otherwise
/// (`ClientConfig::grain_stream_window`).
pub const DEFAULT_STREAM_WINDOW: u32 = 1024;

/// What a stream method returns: the items its caller will read, produced after the method's
/// turn has ended (the grain serves its other calls meanwhile), at the pace its caller reads
/// them. Make one from items at hand ([`iter`](Self::iter)), from any
/// `futures_core::Stream` ([`from_stream`](Self::from_stream)), or as a channel the grain (or a
/// task it spawns) feeds ([`channel`](Self::channel)); [`failed`](Self::failed) ends it at once
/// with the grain's error `E`.
///
/// A stream ends when its source does (the caller reads the end as `None`), with the grain's
/// error, or typed when it is cut: its caller gave up or left, its deadline passed, or the
/// grain's activation ended (`CallError::Deactivated`).
pub struct GrainStream<T, E = Infallible> {
    source: Pin<Box<dyn futures_core::Stream<Item = Result<T, E>> + Send>>,
}

impl<T, E> std::fmt::Debug for GrainStream<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrainStream")
    }
}

impl<T: Send + 'static, E: Send + 'static> GrainStream<T, E> {
    /// The items of `items`, then the end.
    pub fn iter<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::from_stream(Iter(Box::new(items.into_iter().map(Ok))))
    }

    /// What `source` yields: items, until it ends or yields an error (which ends the stream
    /// with the grain's error).
    pub fn from_stream(
        source: impl futures_core::Stream<Item = Result<T, E>> + Send + 'static,
    ) -> Self {
        Self { source: Box::pin(source) }
    }

    /// A stream fed through the returned sender (kept in the grain's state, or moved into a
    /// task), holding at most `capacity` items not yet taken by the pump. It ends when every
    /// sender is dropped (or [`StreamSender::fail`] ends it with an error); the sender sees
    /// the stream closed once its caller is gone.
    pub fn channel(capacity: usize) -> (StreamSender<T, E>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (StreamSender { tx }, Self::from_stream(Chan(rx)))
    }

    /// A stream that ends at once with the grain's error.
    pub fn failed(error: E) -> Self {
        Self::from_stream(Iter(Box::new(std::iter::once(Err(error)))))
    }

    /// A stream with no items.
    pub fn empty() -> Self {
        Self::iter(std::iter::empty())
    }
}

/// Feeds a [`GrainStream::channel`]. Cheap to clone.
pub struct StreamSender<T, E = Infallible> {
    tx: tokio::sync::mpsc::Sender<Result<T, E>>,
}

impl<T, E> Clone for StreamSender<T, E> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<T, E> std::fmt::Debug for StreamSender<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender").field("closed", &self.tx.is_closed()).finish()
    }
}

/// The stream is gone: its caller stopped it or left, or it was cut (the item comes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream is closed")]
pub struct StreamClosed<T>(pub T);

/// Why [`StreamSender::try_send`] did not take an item (which comes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The channel is full: the caller reads slower than the grain produces.
    #[error("the stream's channel is full")]
    Full(T),
    /// The stream is gone.
    #[error("the stream is closed")]
    Closed(T),
}

impl<T, E> StreamSender<T, E> {
    /// Sends an item, waiting while the channel is full (the caller reads slower than this
    /// produces).
    pub async fn send(&self, item: T) -> Result<(), StreamClosed<T>> {
        self.tx.send(Ok(item)).await.map_err(|e| match e.0 {
            Ok(item) => StreamClosed(item),
            Err(_) => unreachable!("sent an item"),
        })
    }

    /// Sends an item if the channel has room, never waiting: what a grain's turn uses to feed
    /// many streams without being held up by its slowest caller.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        use tokio::sync::mpsc::error::TrySendError as E;
        self.tx.try_send(Ok(item)).map_err(|e| match e {
            E::Full(Ok(item)) => TrySendError::Full(item),
            E::Closed(Ok(item)) => TrySendError::Closed(item),
            E::Full(Err(_)) | E::Closed(Err(_)) => unreachable!("sent an item"),
        })
    }

    /// Ends the stream with the grain's error (after the items sent before it).
    pub async fn fail(self, error: E) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// Whether the stream is gone (its caller stopped it or left, or it was cut).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the stream is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// An iterator as a stream (every item ready at once).
struct Iter<T>(Box<dyn Iterator<Item = T> + Send>);

impl<T> futures_core::Stream for Iter<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<T>> {
        Poll::Ready(self.0.next())
    }
}

struct Chan<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for Chan<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Why a source stopped giving items.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The grain's error, encoded.
    App(Vec<u8>),
    /// An item or error could not be encoded.
    Encode,
}

/// A grain's stream with its item type erased: it appends each item, encoded, to `out`.
pub(crate) trait Source: Send {
    fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Option<Result<(), Fail>>>;
}

impl<T: Serialize + Send + 'static, E: Serialize + Send + 'static> Source for GrainStream<T, E> {
    fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Option<Result<(), Fail>>> {
        self.source.as_mut().poll_next(cx).map(|item| {
            item.map(|r| match r {
                Ok(item) => match postcard::to_extend(&item, std::mem::take(out)) {
                    Ok(encoded) => {
                        *out = encoded;
                        Ok(())
                    }
                    Err(_) => Err(Fail::Encode),
                },
                Err(e) => postcard::to_allocvec(&e)
                    .map_err(|_| Fail::Encode)
                    .and_then(|e| Err(Fail::App(e))),
            })
        })
    }
}

/// A stream without an error type: nothing to encode but items.
pub(crate) struct NoError<T>(pub(crate) GrainStream<T, Infallible>);

impl<T: Serialize + Send + 'static> Source for NoError<T> {
    fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Option<Result<(), Fail>>> {
        self.0.source.as_mut().poll_next(cx).map(|item| {
            item.map(|r| {
                let Ok(item) = r;
                match postcard::to_extend(&item, std::mem::take(out)) {
                    Ok(encoded) => {
                        *out = encoded;
                        Ok(())
                    }
                    Err(_) => Err(Fail::Encode),
                }
            })
        })
    }
}

/// One stream's state shared between the host's service (which grants its caller's credit
/// and stops it) and its pump.
#[derive(Debug)]
pub(crate) struct StreamCtl {
    /// Items the caller allowed so far, and items sent.
    granted: AtomicU64,
    sent: AtomicU64,
    /// The most items granted and not yet sent (the host's bound on a caller's window).
    cap: u64,
    /// Why it was stopped (`None`: without an answer: its caller gave up or left).
    stop: OnceLock<Option<Status>>,
    waker: AtomicWaker,
    /// Its pump started (the method's turn returned the stream).
    started: std::sync::atomic::AtomicBool,
}

impl StreamCtl {
    /// A stream whose caller takes `window` items first; the host allows at most `cap` ahead.
    pub(crate) fn new(window: u32, cap: u32) -> Self {
        Self {
            granted: AtomicU64::new(window.min(cap).into()),
            sent: AtomicU64::new(0),
            cap: cap.into(),
            stop: OnceLock::new(),
            waker: AtomicWaker::new(),
            started: false.into(),
        }
    }

    /// Its caller takes `more` items (what it grants beyond `cap` ahead is ignored).
    pub(crate) fn grant(&self, more: u32) {
        let sent = self.sent.load(Ordering::Acquire);
        let _ = self.granted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
            Some((g + u64::from(more)).min(sent + self.cap))
        });
        self.waker.wake();
    }

    /// Stops it: with `status` as its end, or (`None`) without one. The first stop wins.
    pub(crate) fn stop(&self, status: Option<Status>) {
        let _ = self.stop.set(status);
        self.waker.wake();
    }

    /// Whether its pump started.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn stopped(&self) -> Option<Option<Status>> {
        self.stop.get().copied()
    }

    fn credit(&self) -> u64 {
        self.granted.load(Ordering::Acquire).saturating_sub(self.sent.load(Ordering::Acquire))
    }
}

/// How a pump ended.
enum End {
    Finished,
    Failed(Fail),
    Panicked,
    TooLarge(usize, usize),
    Stopped(Option<Status>),
    Closed,
}

/// Sends `source`'s items to the caller of call `id` over `conn` on ordered stream `lane`, as
/// `ctl`'s credit allows, batching what is ready into one datagram; then the end. Counts the
/// items sent in `items` as they go; returns how many.
pub(crate) async fn pump(
    ctl: &StreamCtl,
    mut source: Box<dyn Source>,
    conn: &Connection,
    (id, lane): (RequestId, u8),
    items: &AtomicU64,
) -> u64 {
    ctl.started.store(true, Ordering::Release);
    let delivery = Delivery::reliable_ordered(lane);
    // A batch fills one datagram; an item alone may be as large as a message.
    let batch_max = conn.max_single_datagram().saturating_sub(8).max(64);
    let item_max = conn.max_message_size(delivery).saturating_sub(16);
    let mut scratch = Vec::new();
    let mut carry: Option<Vec<u8>> = None;
    let mut sent = 0u64;
    let end = loop {
        let ready = std::future::poll_fn(|cx| {
            if let Some(stop) = ctl.stopped() {
                return Poll::Ready(Err(stop));
            }
            if ctl.credit() > 0 {
                return Poll::Ready(Ok(()));
            }
            ctl.waker.register(cx.waker());
            match (ctl.stopped(), ctl.credit()) {
                (Some(stop), _) => Poll::Ready(Err(stop)),
                (None, 0) => Poll::Pending,
                (None, _) => Poll::Ready(Ok(())),
            }
        })
        .await;
        if let Err(stop) = ready {
            break End::Stopped(stop);
        }
        let credit = ctl.credit();
        let mut frame = Vec::with_capacity(batch_max.min(4096));
        rpc::encode_stream_items_head(&mut frame, id);
        let mut n = 0u64;
        if let Some(item) = carry.take() {
            rpc::put_stream_item(&mut frame, &item);
            n += 1;
        }
        let step = std::future::poll_fn(|cx| {
            loop {
                if let Some(stop) = ctl.stopped() {
                    return Poll::Ready(Some(End::Stopped(stop)));
                }
                if n >= credit || frame.len() >= batch_max {
                    return Poll::Ready(None);
                }
                scratch.clear();
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    source.poll_item(cx, &mut scratch)
                }));
                match polled {
                    Err(_) => return Poll::Ready(Some(End::Panicked)),
                    Ok(Poll::Pending) if n > 0 => return Poll::Ready(None),
                    Ok(Poll::Pending) => {
                        // Woken by the source, or by a stop.
                        ctl.waker.register(cx.waker());
                        if ctl.stopped().is_some() {
                            continue;
                        }
                        return Poll::Pending;
                    }
                    Ok(Poll::Ready(None)) => return Poll::Ready(Some(End::Finished)),
                    Ok(Poll::Ready(Some(Err(fail)))) => {
                        return Poll::Ready(Some(End::Failed(fail)));
                    }
                    Ok(Poll::Ready(Some(Ok(())))) => {}
                }
                if scratch.len() > item_max {
                    return Poll::Ready(Some(End::TooLarge(scratch.len(), item_max)));
                }
                if n > 0 && frame.len() + scratch.len() + 5 > batch_max {
                    carry = Some(scratch.clone());
                    return Poll::Ready(None);
                }
                rpc::put_stream_item(&mut frame, &scratch);
                n += 1;
            }
        })
        .await;
        if n > 0 {
            sent += n;
            ctl.sent.store(sent, Ordering::Release);
            items.fetch_add(n, Ordering::Relaxed);
            if conn.send_wait(delivery, frame).await.is_err() {
                break End::Closed;
            }
        }
        if let Some(end) = step {
            break end;
        }
    };
    let (status, payload) = match end {
        End::Finished => (Status::Ok, postcard::to_allocvec(&sent).unwrap_or_default()),
        End::Failed(Fail::App(error)) => (Status::AppError, error),
        End::Failed(Fail::Encode) => (Status::BadRequest, Vec::new()),
        End::Panicked => {
            tracing::warn!(items = sent, "a grain's stream panicked");
            (Status::HandlerPanicked, Vec::new())
        }
        End::TooLarge(size, max) => {
            let mut payload = Vec::with_capacity(10);
            rpc::encode_too_large(&mut payload, size, max);
            (Status::ResponseTooLarge, payload)
        }
        End::Stopped(Some(status)) => (status, Vec::new()),
        End::Stopped(None) | End::Closed => return sent,
    };
    let mut frame = Vec::with_capacity(8 + payload.len());
    rpc::encode_response(&mut frame, id, status);
    frame.extend_from_slice(&payload);
    let _ = conn.send_wait(delivery, frame).await;
    sent
}

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
    outcome: &super::call::Outcome,
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
