//! Opening a stream call from a reference (see `rpc::stream`): a child of `reference`, beside
//! the calls of the same type.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::{CallError, CallFuture, CallKind, CodecError, GrainRef, MethodInfo, Via, encode};
use crate::rpc::stream::{CallStream, StreamInbox};

impl GrainRef {
    /// Calls a stream method (`-> GrainStream<T>`): the stream is opened now; its items, and
    /// how it ended, are read from what this returns. Its deadline is the reference's
    /// (`with_timeout`) or the method's (`#[timeout_ms]`), else none: a stream runs as long as
    /// it is read. References in its items are bound as a call's result's are.
    pub fn stream<A, T>(&self, method: &'static MethodInfo, args: &A) -> CallStream<T>
    where
        A: Serialize + ?Sized,
    {
        // A method without an error type never ends with one: if it did, caller and grain
        // disagree on the interface.
        self.open_stream(method, args, |_| CallError::BadRequest)
    }

    /// Calls a stream method that returns `GrainStream<T, E>` (see [`stream`](Self::stream)).
    pub fn stream_result<A, T, E>(&self, method: &'static MethodInfo, args: &A) -> CallStream<T, E>
    where
        A: Serialize + ?Sized,
        E: for<'de> Deserialize<'de>,
    {
        self.open_stream(method, args, |payload| match postcard::from_bytes(payload) {
            Ok(e) => CallError::Application(e),
            Err(e) => CallError::Decode(CodecError(e)),
        })
    }

    fn open_stream<A, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        app: fn(&[u8]) -> CallError<E>,
    ) -> CallStream<T, E>
    where
        A: Serialize + ?Sized,
    {
        let version = self.info.version;
        let calls = match &self.via {
            Via::Calls(calls) => calls,
            // A stub's invoker answers calls, not streams.
            Via::Invoker(_) => return CallStream::failed(CallError::UnknownMethod, version, app),
            Via::Unbound => return CallStream::failed(CallError::Unbound, version, app),
        };
        let timeout = self.timeout.or(method.timeout).unwrap_or(encode::NO_DEADLINE);
        let timeout = crate::rpc::context::remaining().map_or(timeout, |left| timeout.min(left));
        let mut request = match encode::request(self, method, args, timeout, false) {
            Ok(r) => r,
            Err(e) => return CallStream::failed(e, version, app),
        };
        let inbox = Arc::new(StreamInbox::new(calls.stream_window()));
        request.stream = Some(inbox.clone());
        let cell = calls.cell();
        match calls.submit(self, request, CallKind::Call(cell.clone())) {
            Ok(()) => {
                let call = CallFuture::new(cell, calls.clone());
                let binding = self.result_binding();
                CallStream::open(call, inbox, calls.clone(), binding, version, app)
            }
            Err(e) => {
                calls.recycle(cell);
                CallStream::failed(e, version, app)
            }
        }
    }
}
