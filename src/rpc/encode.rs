//! The one request encoder: a call's server-independent part and its arguments, encoded once,
//! behind room for what only the sender knows when it sends (the head byte, the request id,
//! the callee's type index). Responses are encoded by `dispatch`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::context;
use super::reference::GrainRef;
use crate::arena;
use crate::error::{CallError, CodecError};
use crate::interface::{InterfaceInfo, MethodInfo};
use crate::proto::wire::rpc::{self, CallHeader, MAX_CHAIN};

/// Room left in front of an encoded call for its head byte, request id and type index (or a
/// sequenced update's extended head, kind and sequence number before its one-way head).
pub(crate) const PREFIX_GAP: usize = 24;

/// A call encoded for its sender: [`PREFIX_GAP`] free bytes, then the request's body;
/// `flags` go into the head byte.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) iface: &'static InterfaceInfo,
    pub(crate) method: &'a MethodInfo,
    pub(crate) frame: BytesMut,
    pub(crate) flags: u8,
    /// The call's deadline (for a one-way call: how long it may wait for a callee; for a
    /// stream without one, [`NO_DEADLINE`]).
    pub(crate) timeout: Duration,
    /// A stream call: where its items go (and the window it opens with).
    pub(crate) stream: Option<std::sync::Arc<super::stream::StreamInbox>>,
}

/// How long a stream without a deadline may run, as far as its caller's table counts (a
/// year): the callee gets no deadline at all.
pub(crate) const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Request<'_> {
    /// The request's size on the wire, without its prefix.
    pub(crate) fn size(&self) -> usize {
        self.frame.len() - PREFIX_GAP
    }
}

/// Encodes a call of `method` on `r` with `args`, its deadline `timeout` (carried only by calls
/// that wait for an answer: a one-way call has none on the callee; [`NO_DEADLINE`] is none).
pub(crate) fn request<'a, A: Serialize + ?Sized>(
    r: &GrainRef,
    method: &'a MethodInfo,
    args: &A,
    timeout: Duration,
    one_way: bool,
) -> Result<Request<'a>, CallError<Infallible>> {
    request_of(r, method, Args::Value(args), timeout, one_way)
}

/// [`request`] with its arguments given either way.
pub(crate) fn request_of<'a, A: Serialize + ?Sized>(
    r: &GrainRef,
    method: &'a MethodInfo,
    args: Args<'_, A>,
    timeout: Duration,
    one_way: bool,
) -> Result<Request<'a>, CallError<Infallible>> {
    let carries_deadline = !one_way && timeout < NO_DEADLINE;
    let iface = r.info;
    let call = CallHeader {
        type_index: 0, // written by the sender once the callee is known
        version: iface.version,
        method: method.id,
        deadline_ms: carries_deadline.then(|| timeout.as_millis().min(u128::from(u32::MAX)) as u32),
        key: r.id.key.clone(),
        chain: Vec::new(),
    };
    // A call made while serving one carries the chain of grains waiting on it.
    let depth = context::with_chain(|chain, _| chain.len() + 1).unwrap_or(0);
    if depth > MAX_CHAIN {
        return Err(CallError::ChainTooDeep);
    }
    let (frame, encoded) = arena::frame(PREFIX_GAP + 24 + method.size_hint, |out| {
        out.put_bytes(0, PREFIX_GAP);
        let mut flags = rpc::encode_request_body(out, &call);
        if depth > 0 {
            flags |=
                context::with_chain(|chain, me| rpc::put_chain(out, chain, Some(me))).unwrap_or(0);
        }
        match args {
            Args::Value(args) => arena::encode(out, args).map(|()| flags),
            Args::Encoded(bytes) => {
                out.extend_from_slice(bytes);
                Ok(flags)
            }
        }
    });
    let flags = encoded.map_err(|e| CallError::Encode(CodecError(e)))?;
    Ok(Request { iface, method, frame, flags, timeout, stream: None })
}

/// A call's arguments: a value to encode, or already encoded (a reminder's, kept in storage).
pub(crate) enum Args<'a, A: ?Sized> {
    Value(&'a A),
    Encoded(&'a [u8]),
}
