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

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;

mod pump;
mod read;

pub(crate) use self::pump::{StreamCtl, pump};
pub use self::read::CallStream;
pub(crate) use self::read::StreamInbox;

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
