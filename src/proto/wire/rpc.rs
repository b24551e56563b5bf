//! RPC frames, carried as messages on the transport's channels.
//!
//! Every frame starts with one head byte: the low 3 bits say the kind; the rest are flags
//! (requests: the key's kind and whether a deadline follows; responses: the status).
//!
//! ```text
//! request   head | slot varint | gen u16 | type index varint | version u8 | method u16
//!                | [deadline ms varint] | key | [chain] | arguments (postcard) to the end
//! one-way   head | type index varint | version u8 | method u16 | [deadline ms] | key | [chain]
//!                | args
//! chain     count varint (1..=32) | count x (grain type u32 | key kind u8 | key)
//! cancel    head | slot varint | gen u16
//! response  head(status) | slot varint | gen u16 | result or error (postcard) to the end
//! manifest  head | manifest (postcard) to the end
//! ```
//!
//! A call one grain makes while serving another carries its call chain: the grains waiting on
//! it, outermost first, the caller last (the head's top bit says one follows). A host refuses a
//! call that would wait on itself (`Deadlock`, the chain in the payload).
//!
//! The type index is the server's number for a hosted grain type, from its manifest: one
//! byte instead of a 4-byte type id and 4-byte interface id. With a small integer key and a
//! 32-byte argument, a request fits a 64-byte datagram with every transport header.

use bytes::BufMut;

use super::WireError;
use super::codec::{Reader, put_varint};
use crate::proto::ids::{GrainId, GrainKey, GrainType, MethodId, RequestId};

/// An extended frame: a sub-kind (a varint) and a body. A peer skips a sub-kind it does not
/// know, so later versions add frame kinds this way without older peers taking them for
/// garbage.
const KIND_EXTENDED: u8 = 0;
const KIND_REQUEST: u8 = 1;
const KIND_ONE_WAY: u8 = 2;
const KIND_CANCEL: u8 = 3;
const KIND_RESPONSE: u8 = 4;
const KIND_MANIFEST: u8 = 5;
const KIND_TOPOLOGY: u8 = 6;
const KIND_WATCH: u8 = 7;
/// A watch frame's flag: keep pushing the topology as it changes.
const WATCH_SUBSCRIBE: u8 = 0x08;
const KEY_SHIFT: u8 = 3;
const HAS_DEADLINE: u8 = 0x40;
/// A request's or one-way call's flag: a call chain follows the key.
const HAS_CHAIN: u8 = 0x80;
const STATUS_SHIFT: u8 = 3;

/// Longest string extension or string key accepted on the wire.
pub const MAX_KEY_STRING: usize = 1024;

/// The most grains a call chain names (a deeper chain of calls fails at its caller).
pub const MAX_CHAIN: usize = 32;

/// Extended frame: a client hosts these observers (sent on each new session, and as it
/// observes more); body: the client's observer instance (u64) and the observers' numbers.
pub const EXT_OBSERVE: u32 = 1;
/// Extended frame: a client no longer hosts these observers (same body).
pub const EXT_UNOBSERVE: u32 = 2;
/// The most observers one observe frame names.
pub const MAX_OBSERVERS_FRAME: usize = 4096;
/// Extended frame: a sequenced update, `seq varint | one-way frame`. `seq` grows with every
/// update its sender sends on the session; a host drops an update older than one it took
/// for the same (session, grain, method).
pub const EXT_UPDATE: u32 = 3;
/// Extended frame: a call of a stream method, `window varint | lane u8 | request frame`. The
/// callee sends at most `window` items before the caller grants more, as items frames on the
/// caller's ordered transport stream `lane`, and ends the stream with the call's response on
/// the same stream (after every item).
pub const EXT_STREAM_OPEN: u32 = 4;
/// Extended frame: items of a stream, `slot varint | gen u16 | (len varint | item)...`.
pub const EXT_STREAM_ITEMS: u32 = 5;
/// Extended frame: a stream's caller takes more items, `slot varint | gen u16 | more varint`.
pub const EXT_STREAM_CREDIT: u32 = 6;
/// Extended frame: a call of an `#[exactly_once]` method, `call id u64 | request frame`. The id
/// is the caller's for the call, the same when it is sent again (to another server, after its
/// server was lost): a host that recorded an answer for it answers from the record.
pub const EXT_ONCE: u32 = 7;
/// The largest window a stream open may ask for.
pub const MAX_STREAM_WINDOW: u32 = 1 << 16;

/// The close code a server that stops gracefully ends a session with once every call of that
/// client it ran has been answered and the answers acknowledged: a call still unanswered when
/// a client sees it did not run there, and may go to another server.
pub const CLOSE_DRAINED: u32 = 1;

/// The close code of a client that found the server to be of another cluster or service.
pub const CLOSE_WRONG_CLUSTER: u32 = 2;

/// The close code of a peer that broke the RPC protocol (e.g. sent a stream more items than
/// its reader granted).
pub const CLOSE_PROTOCOL: u32 = 3;

/// How a call ended, as the server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The method returned; the payload is its result.
    Ok = 0,
    /// The method returned an application error; the payload is the error.
    AppError = 1,
    /// The server hosts no such grain type.
    UnknownGrainType = 2,
    /// The interface has no such method.
    UnknownMethod = 3,
    /// The server's interface version differs from the caller's.
    IncompatibleVersion = 4,
    /// The call's deadline passed before it completed on the server.
    DeadlineExceeded = 5,
    /// Too many calls from this connection are pending on the server.
    Overloaded = 6,
    /// The method panicked.
    HandlerPanicked = 7,
    /// The server is shutting down.
    ShuttingDown = 8,
    /// The server could not decode the arguments, or the call itself (its key or deadline).
    BadRequest = 9,
    /// The method ran, but its answer is larger than the connection carries; the payload is
    /// the answer's size and the limit (two varints).
    ResponseTooLarge = 10,
    /// The grain lives on another server (the grain directory says so); the payload names it
    /// (see [`encode_redirect`]). The call did not run here.
    Redirect = 11,
    /// The grain directory could not be asked, and the grain's type fails closed: the call did
    /// not run.
    Unavailable = 12,
    /// The server's authorization refused the caller this call (before any activation): it
    /// did not run.
    Unauthorized = 13,
    /// The call would wait on itself: its grain is busy with a call of the chain that leads to
    /// it (A calls B, B calls A). The payload is the chain, this grain last (see
    /// [`put_chain`]). It did not run.
    Deadlock = 14,
    /// The observer called is not hosted by the client (any more): it did not run.
    ObserverGone = 15,
    /// A stream's grain activation ended while the stream ran (deactivated, evicted or moved):
    /// the stream ends here; the items sent before this were delivered.
    Deactivated = 16,
}

impl Status {
    /// The status of its wire value.
    pub(crate) fn from_bits(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0 => Self::Ok,
            1 => Self::AppError,
            2 => Self::UnknownGrainType,
            3 => Self::UnknownMethod,
            4 => Self::IncompatibleVersion,
            5 => Self::DeadlineExceeded,
            6 => Self::Overloaded,
            7 => Self::HandlerPanicked,
            8 => Self::ShuttingDown,
            9 => Self::BadRequest,
            10 => Self::ResponseTooLarge,
            11 => Self::Redirect,
            12 => Self::Unavailable,
            13 => Self::Unauthorized,
            14 => Self::Deadlock,
            15 => Self::ObserverGone,
            16 => Self::Deactivated,
            other => return Err(WireError::OutOfRange { field: "status", value: other.into() }),
        })
    }
}

/// The routing part of a request or one-way call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    /// The server's index of the grain type (from its manifest).
    pub type_index: u32,
    /// The caller's interface version.
    pub version: u8,
    /// The method.
    pub method: MethodId,
    /// Relative deadline in milliseconds, if any.
    pub deadline_ms: Option<u32>,
    /// The grain's key.
    pub key: GrainKey,
    /// The grains waiting on this call, outermost first, its caller last (empty: a call from a
    /// client, or from outside any grain call).
    pub chain: Vec<GrainId>,
}

/// A decoded RPC frame; payloads borrow from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcFrame<'a> {
    /// A call that wants a response.
    Request {
        /// Correlation id.
        id: RequestId,
        /// Routing.
        call: CallHeader,
        /// The arguments.
        args: &'a [u8],
    },
    /// A call without response.
    OneWay {
        /// Routing.
        call: CallHeader,
        /// The arguments.
        args: &'a [u8],
    },
    /// The caller gave up on a call.
    Cancel {
        /// Correlation id.
        id: RequestId,
    },
    /// The outcome of a call.
    Response {
        /// Correlation id.
        id: RequestId,
        /// How it ended.
        status: Status,
        /// The result or error.
        payload: &'a [u8],
    },
    /// The server's manifest (postcard).
    Manifest(&'a [u8]),
    /// The fleet as the server knows it (see `Topology::decode`).
    Topology(&'a [u8]),
    /// A client asks for the fleet: once, or (`subscribe`) now and on every change.
    Watch {
        /// Keep pushing changes.
        subscribe: bool,
    },
    /// An extended frame (see `KIND_EXTENDED`): skipped by a peer that does not know `kind`.
    Extended {
        /// Its sub-kind.
        kind: u32,
        /// Its body, as that sub-kind defines it.
        body: &'a [u8],
    },
}

fn put_id(out: &mut impl BufMut, id: RequestId) {
    put_varint(out, id.slot.into());
    out.put_slice(&(id.generation as u16).to_le_bytes());
}

fn read_id(r: &mut Reader<'_>) -> Result<RequestId, WireError> {
    Ok(RequestId { slot: r.varint_u32("request slot")?, generation: u32::from(r.u16()?) })
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_str(out: &mut impl BufMut, s: &str) {
    put_varint(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn read_str(r: &mut Reader<'_>) -> Result<std::sync::Arc<str>, WireError> {
    let len = r.varint()?;
    if len > MAX_KEY_STRING as u64 {
        return Err(WireError::OutOfRange { field: "key string length", value: len });
    }
    let bytes = r.bytes(len as usize)?;
    std::str::from_utf8(bytes)
        .map(Into::into)
        .map_err(|_| WireError::OutOfRange { field: "key string utf-8", value: len })
}

fn read_u128(r: &mut Reader<'_>) -> Result<u128, WireError> {
    let b = r.bytes(16)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ok(u128::from_le_bytes(a))
}

fn put_key(out: &mut impl BufMut, key: &GrainKey) {
    match key {
        GrainKey::Int(i) => put_varint(out, zigzag(*i)),
        GrainKey::Str(s) => put_str(out, s),
        GrainKey::Id(u) => out.put_slice(&u.to_le_bytes()),
        GrainKey::IntExt(i, s) => {
            put_varint(out, zigzag(*i));
            put_str(out, s);
        }
        GrainKey::IdExt(u, s) => {
            out.put_slice(&u.to_le_bytes());
            put_str(out, s);
        }
    }
}

fn read_key(r: &mut Reader<'_>, tag: u8) -> Result<GrainKey, WireError> {
    Ok(match tag {
        0 => GrainKey::Int(unzigzag(r.varint()?)),
        1 => GrainKey::Str(read_str(r)?),
        2 => GrainKey::Id(read_u128(r)?),
        3 => GrainKey::IntExt(unzigzag(r.varint()?), read_str(r)?),
        4 => GrainKey::IdExt(read_u128(r)?, read_str(r)?),
        other => return Err(WireError::OutOfRange { field: "key kind", value: other.into() }),
    })
}

/// Appends a call chain: `ids`, outermost first, then `last` (see [`CallHeader::chain`]);
/// the head flag that says one follows, or 0 when there is none. At most [`MAX_CHAIN`] ids
/// are written (the caller checks the depth before).
pub fn put_chain(out: &mut impl BufMut, ids: &[GrainId], last: Option<&GrainId>) -> u8 {
    let n = (ids.len() + usize::from(last.is_some())).min(MAX_CHAIN);
    if n == 0 {
        return 0;
    }
    put_varint(out, n as u64);
    for id in ids.iter().chain(last).take(n) {
        out.put_slice(&id.ty.0.to_le_bytes());
        out.put_u8(id.key.tag());
        put_key(out, &id.key);
    }
    HAS_CHAIN
}

/// Reads a call chain (what [`put_chain`] wrote).
pub(crate) fn read_chain(r: &mut Reader<'_>) -> Result<Vec<GrainId>, WireError> {
    let n = r.varint()?;
    if n == 0 || n > MAX_CHAIN as u64 {
        return Err(WireError::OutOfRange { field: "call chain length", value: n });
    }
    (0..n)
        .map(|_| {
            let ty = GrainType(r.u32()?);
            let tag = r.u8()?;
            Ok(GrainId { ty, key: read_key(r, tag)? })
        })
        .collect()
}

/// Reads the payload of a [`Status::Deadlock`] answer: the chain, the refusing grain last.
pub fn decode_deadlock(payload: &[u8]) -> Result<Vec<GrainId>, WireError> {
    let mut r = Reader::new(payload);
    let chain = read_chain(&mut r)?;
    if !r.is_empty() {
        return Err(WireError::OutOfRange { field: "trailing bytes", value: r.remaining() as u64 });
    }
    Ok(chain)
}

/// Appends a request (`id: Some`) or one-way call (`None`) up to its arguments; the caller
/// appends the postcard-encoded arguments right after.
pub fn encode_call(out: &mut impl BufMut, id: Option<RequestId>, call: &CallHeader) {
    let kind = if id.is_some() { KIND_REQUEST } else { KIND_ONE_WAY };
    let mut head = kind | (call.key.tag() << KEY_SHIFT);
    if call.deadline_ms.is_some() {
        head |= HAS_DEADLINE;
    }
    if !call.chain.is_empty() {
        head |= HAS_CHAIN;
    }
    out.put_u8(head);
    if let Some(id) = id {
        put_id(out, id);
    }
    put_varint(out, call.type_index.into());
    encode_call_tail(out, call);
    put_chain(out, &call.chain, None);
}

fn encode_call_tail(out: &mut impl BufMut, call: &CallHeader) {
    out.put_u8(call.version);
    out.put_slice(&call.method.0.to_le_bytes());
    if let Some(d) = call.deadline_ms {
        put_varint(out, d.into());
    }
    put_key(out, &call.key);
}

/// The bytes a request's head, id (none for a one-way call) and type index take (see
/// [`encode_request_prefix`]).
pub fn request_prefix_len(id: Option<RequestId>, type_index: u32) -> usize {
    let id_len = id.map_or(0, |id| super::varint_len(id.slot.into()) + 2);
    1 + id_len + super::varint_len(type_index.into())
}

/// Writes a request's head byte, id (a call) or none (a one-way call) and grain type index
/// into `out` (exactly [`request_prefix_len`] bytes), for callers that encoded the rest of the
/// request (see [`encode_request_body`]) before the id and the server were known: `flags` go
/// into the head.
pub fn encode_request_prefix(
    mut out: &mut [u8],
    id: Option<RequestId>,
    type_index: u32,
    flags: u8,
) {
    match id {
        Some(id) => {
            out.put_u8(KIND_REQUEST | flags);
            put_varint(&mut out, id.slot.into());
            out.put_u16_le(id.generation as u16);
        }
        None => out.put_u8(KIND_ONE_WAY | flags),
    }
    put_varint(&mut out, type_index.into());
}

/// Appends the part of a request that does not depend on the server it goes to (everything
/// after the type index up to the chain), returning the flags that belong in the head (see
/// [`encode_request_prefix`]). `call.type_index` and `call.chain` are not written: the caller
/// appends a chain with [`put_chain`] (and ORs its flag into these) before the arguments.
pub fn encode_request_body(out: &mut impl BufMut, call: &CallHeader) -> u8 {
    let mut flags = call.key.tag() << KEY_SHIFT;
    if call.deadline_ms.is_some() {
        flags |= HAS_DEADLINE;
    }
    encode_call_tail(out, call);
    flags
}

/// Appends a cancel frame.
pub fn encode_cancel(out: &mut impl BufMut, id: RequestId) {
    out.put_u8(KIND_CANCEL);
    put_id(out, id);
}

/// The head byte of a response with `status` (to rewrite it in a response built in place).
pub fn response_head(status: Status) -> u8 {
    KIND_RESPONSE | ((status as u8) << STATUS_SHIFT)
}

/// Appends a response header; the caller appends the payload.
pub fn encode_response(out: &mut impl BufMut, id: RequestId, status: Status) {
    out.put_u8(response_head(status));
    put_id(out, id);
}

/// Appends a manifest frame's head; the caller appends the postcard-encoded manifest.
pub fn encode_manifest_head(out: &mut impl BufMut) {
    out.put_u8(KIND_MANIFEST);
}

/// Appends a topology frame's head; the caller appends the encoded topology.
pub fn encode_topology_head(out: &mut impl BufMut) {
    out.put_u8(KIND_TOPOLOGY);
}

/// Appends a watch frame (a request for the server's topology).
pub fn encode_watch(out: &mut impl BufMut, subscribe: bool) {
    out.put_u8(KIND_WATCH | if subscribe { WATCH_SUBSCRIBE } else { 0 });
}

/// Rewrites the deadline of a request body (what [`encode_request_body`] wrote, with `flags`)
/// into `out`: a retry carries what remains of the call's deadline. `None` if the body does
/// not parse (it was written by us, so it always does).
pub fn rewrite_body_deadline(
    out: &mut impl BufMut,
    body: &[u8],
    flags: u8,
    deadline_ms: u32,
) -> Option<()> {
    if flags & HAS_DEADLINE == 0 || body.len() < 3 {
        return None;
    }
    let mut r = Reader::new(&body[3..]);
    r.varint().ok()?;
    let rest = r.rest();
    out.put_slice(&body[..3]);
    put_varint(out, deadline_ms.into());
    out.put_slice(rest);
    Some(())
}

/// The id of a request whose head and id decode, whatever follows: a server answers such a
/// frame `BadRequest` when the rest of it does not decode (a bad key or deadline).
pub fn request_id(buf: &[u8]) -> Option<RequestId> {
    let mut r = Reader::new(buf);
    let head = r.u8().ok()?;
    (head & 0x7 == KIND_REQUEST).then(|| read_id(&mut r).ok()).flatten()
}

/// The longest server id or endpoint a redirect may name.
pub const MAX_REDIRECT_NAME: usize = 255;

/// Appends the payload of a [`Status::Redirect`] answer: the owner's server id and the
/// endpoint clients reach it at (each cut to [`MAX_REDIRECT_NAME`] bytes at a char boundary).
pub fn encode_redirect(out: &mut impl BufMut, server: &str, endpoint: &str) {
    for s in [server, endpoint] {
        let mut end = s.len().min(MAX_REDIRECT_NAME);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        put_str(out, &s[..end]);
    }
}

/// Reads the payload of a [`Status::Redirect`] answer: (server id, endpoint).
pub fn decode_redirect(
    payload: &[u8],
) -> Result<(std::sync::Arc<str>, std::sync::Arc<str>), WireError> {
    let mut r = Reader::new(payload);
    let mut name = |field| -> Result<std::sync::Arc<str>, WireError> {
        let len = r.varint()?;
        if len > MAX_REDIRECT_NAME as u64 {
            return Err(WireError::OutOfRange { field, value: len });
        }
        let bytes = r.bytes(len as usize)?;
        std::str::from_utf8(bytes)
            .map(Into::into)
            .map_err(|_| WireError::OutOfRange { field, value: len })
    };
    let server = name("redirect server")?;
    let endpoint = name("redirect endpoint")?;
    Ok((server, endpoint))
}

/// Appends the payload of a [`Status::ResponseTooLarge`] answer.
pub fn encode_too_large(out: &mut impl BufMut, size: usize, max: usize) {
    put_varint(out, size as u64);
    put_varint(out, max as u64);
}

/// Reads the payload of a [`Status::ResponseTooLarge`] answer: (size, limit).
pub fn decode_too_large(payload: &[u8]) -> Option<(usize, usize)> {
    let mut r = Reader::new(payload);
    let size = usize::try_from(r.varint().ok()?).ok()?;
    let max = usize::try_from(r.varint().ok()?).ok()?;
    Some((size, max))
}

/// Decodes one RPC frame.
pub fn decode_rpc(buf: &[u8]) -> Result<RpcFrame<'_>, WireError> {
    let mut r = Reader::new(buf);
    let head = r.u8()?;
    match head & 0x7 {
        KIND_REQUEST | KIND_ONE_WAY => {
            let id = if head & 0x7 == KIND_REQUEST { Some(read_id(&mut r)?) } else { None };
            let type_index = r.varint_u32("type index")?;
            let version = r.u8()?;
            let method = MethodId(r.u16()?);
            let deadline_ms =
                if head & HAS_DEADLINE != 0 { Some(r.varint_u32("deadline")?) } else { None };
            let key = read_key(&mut r, (head >> KEY_SHIFT) & 0x7)?;
            let chain = if head & HAS_CHAIN != 0 { read_chain(&mut r)? } else { Vec::new() };
            let call = CallHeader { type_index, version, method, deadline_ms, key, chain };
            let args = r.rest();
            Ok(match id {
                Some(id) => RpcFrame::Request { id, call, args },
                None => RpcFrame::OneWay { call, args },
            })
        }
        KIND_CANCEL => {
            if head != KIND_CANCEL {
                return Err(WireError::ReservedBits(head));
            }
            let id = read_id(&mut r)?;
            if !r.is_empty() {
                return Err(WireError::OutOfRange {
                    field: "trailing bytes",
                    value: r.remaining() as u64,
                });
            }
            Ok(RpcFrame::Cancel { id })
        }
        KIND_RESPONSE => {
            let status = Status::from_bits(head >> STATUS_SHIFT)?;
            let id = read_id(&mut r)?;
            Ok(RpcFrame::Response { id, status, payload: r.rest() })
        }
        KIND_MANIFEST if head == KIND_MANIFEST => Ok(RpcFrame::Manifest(r.rest())),
        KIND_TOPOLOGY if head == KIND_TOPOLOGY => Ok(RpcFrame::Topology(r.rest())),
        KIND_WATCH if head & !WATCH_SUBSCRIBE == KIND_WATCH && r.is_empty() => {
            Ok(RpcFrame::Watch { subscribe: head & WATCH_SUBSCRIBE != 0 })
        }
        KIND_EXTENDED if head == KIND_EXTENDED => {
            let kind = r.varint_u32("extended kind")?;
            Ok(RpcFrame::Extended { kind, body: r.rest() })
        }
        _ => Err(WireError::UnknownFrame(head)),
    }
}

mod ext;
#[cfg(test)]
mod tests;

pub use self::ext::*;
