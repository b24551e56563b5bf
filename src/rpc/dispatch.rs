//! Running a call on a grain and encoding what it answers: the `Dispatch` trait `#[grain]`
//! implements, argument decoding, and the one response encoder (values, application errors,
//! statuses, an answer too large for its connection), whoever hosts the grain.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::call::CallKind;
use super::context::SessionEnded;
use super::stream::{GrainStream, NoError, Source};
use crate::arena;
use crate::interface::Interface;
use crate::proto::ids::{GrainId, MethodId, RequestId};
use crate::proto::wire::rpc::{self, Status};
use crate::transport::{Connection, Delivery};

/// Server-side dispatch of one interface to a grain implementation `G`.
pub trait Dispatch<G>: Interface {
    /// Runs method `method` with postcard-encoded `args`, leaving the encoded result (or
    /// application error) in `out`.
    fn dispatch<'a>(
        grain: &'a mut G,
        method: MethodId,
        args: &'a [u8],
        out: &'a mut Reply,
    ) -> impl Future<Output = Status> + Send + 'a;
    /// Runs `&self` method `method` on a shared borrow of the grain (an interface with
    /// `#[interleave]` methods), giving back `out` with the answer; `UnknownMethod`
    /// for any other method.
    fn dispatch_shared<'a>(
        grain: &'a G,
        method: MethodId,
        args: Bytes,
        out: Reply,
    ) -> SharedCall<'a> {
        let _ = (grain, method, args);
        Box::pin(std::future::ready((Status::UnknownMethod, out)))
    }
    /// The activation hook.
    fn activate<'a>(grain: &'a mut G, id: &'a GrainId) -> impl Future<Output = ()> + Send + 'a;
    /// The deactivation hook.
    fn deactivate(grain: &mut G) -> impl Future<Output = ()> + Send + '_;
    /// The presence hook: a session the grain watched ended.
    fn session_ended(grain: &mut G, ended: SessionEnded) -> impl Future<Output = ()> + Send + '_;
}

/// A `&self` method's call on a shared borrow of its grain (see
/// [`Dispatch::dispatch_shared`]).
pub type SharedCall<'a> = std::pin::Pin<Box<dyn Future<Output = (Status, Reply)> + Send + 'a>>;

/// Decodes a method's argument tuple: all of `args`, nothing left over (trailing bytes are a
/// malformed call, not padding to ignore).
pub fn decode_args<T: for<'de> Deserialize<'de>>(args: &[u8]) -> Result<T, Status> {
    match postcard::take_from_bytes(args) {
        Ok((value, [])) => Ok(value),
        _ => Err(Status::BadRequest),
    }
}

/// Where a dispatched method leaves its encoded answer: the whole response frame (header
/// and value), built only when the caller waits for one; or the stream a stream method
/// returned.
pub struct Reply {
    to: CallKind<RequestId>,
    frame: Option<BytesMut>,
    stream: Option<Box<dyn Source>>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("to", &self.to)
            .field("frame", &self.frame)
            .field("stream", &self.stream.is_some())
            .finish()
    }
}

impl Reply {
    /// An answer to call `to`; nothing is encoded for a one-way call.
    pub(crate) fn new(to: CallKind<RequestId>) -> Self {
        Self { to, frame: None, stream: None }
    }

    /// The response frame, if a value or application error was encoded.
    pub(crate) fn take(&mut self) -> Option<BytesMut> {
        self.frame.take()
    }

    /// Puts back a response frame taken with [`take`](Self::take).
    pub(crate) fn restore(&mut self, frame: BytesMut) {
        self.frame = Some(frame);
    }

    /// The stream a stream method returned, if it did.
    pub(crate) fn take_stream(&mut self) -> Option<Box<dyn Source>> {
        self.stream.take()
    }
}

/// Keeps a stream method's stream (with an error type) as the answer: its items go out after
/// the method's turn.
pub fn encode_stream_result<T, E>(out: &mut Reply, stream: GrainStream<T, E>) -> Status
where
    T: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    keep_stream(out, Box::new(stream))
}

/// Keeps a stream method's stream (no error type) as the answer.
pub fn encode_stream<T: Serialize + Send + 'static>(
    out: &mut Reply,
    stream: GrainStream<T, std::convert::Infallible>,
) -> Status {
    keep_stream(out, Box::new(NoError(stream)))
}

fn keep_stream(out: &mut Reply, stream: Box<dyn Source>) -> Status {
    if let CallKind::Call(_) = out.to {
        out.stream = Some(stream);
    }
    Status::Ok
}

/// Encodes a method's return value as the answer.
pub fn encode_ok<T: Serialize + ?Sized>(out: &mut Reply, value: &T) -> Status {
    encode_value(out, value, Status::Ok)
}

/// Encodes a method's application error as the answer.
pub fn encode_app_err<E: Serialize + ?Sized>(out: &mut Reply, error: &E) -> Status {
    encode_value(out, error, Status::AppError)
}

fn encode_value<T: Serialize + ?Sized>(out: &mut Reply, value: &T, status: Status) -> Status {
    let CallKind::Call(id) = out.to else { return status }; // nobody waits for it
    // Carved from the thread's arena chunk: the common answer costs no allocation.
    let (frame, encoded) = arena::frame(64, |buf| {
        rpc::encode_response(buf, id, status);
        arena::encode(buf, value)
    });
    match encoded {
        Ok(()) => {
            out.frame = Some(frame);
            status
        }
        // A serde impl failed: report a bad request rather than send a partial value.
        Err(_) => Status::BadRequest,
    }
}

/// An answer that is only a status (and a small payload: the server's version for
/// `IncompatibleVersion`, the sizes for `ResponseTooLarge`). Its own small buffer, not an
/// arena chunk: an answer that waits for a peer that does not drain holds only its own bytes.
pub(crate) fn status(id: RequestId, status: Status, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + payload.len());
    rpc::encode_response(&mut out, id, status);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Sends a call's answer over `conn`, or says why it could not go: a frame over the
/// connection's limit becomes a `ResponseTooLarge` status with the sizes (`false`).
pub(crate) fn answer(conn: &Connection, rid: RequestId, frame: Bytes, unreliable: bool) -> bool {
    // The answer of an `#[unreliable]` call is sent once, and must fit one datagram.
    let (delivery, max) = match unreliable {
        true => (Delivery::Unreliable, conn.max_single_datagram()),
        false => (Delivery::ReliableUnordered, conn.max_message_size(Delivery::ReliableUnordered)),
    };
    if frame.len() <= max {
        conn.push(delivery, frame);
        return true;
    }
    conn.push(Delivery::ReliableUnordered, too_large(rid, frame.len(), max));
    false
}

/// The answer for a response of `size` bytes over the connection's `max`.
pub(crate) fn too_large(id: RequestId, size: usize, max: usize) -> Bytes {
    let mut payload = Vec::with_capacity(10);
    rpc::encode_too_large(&mut payload, size, max);
    status(id, Status::ResponseTooLarge, &payload)
}
