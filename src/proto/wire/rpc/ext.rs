//! Extended frames (kind 0, a sub-kind varint, a body old peers skip): observe and unobserve
//! (a client names the observers it hosts), sequenced updates (a one-way call numbered for
//! latest-wins) and streams (open, items, credit).

use bytes::BufMut;

use super::*;

/// Writes an extended frame of sub-kind `kind` with `body` (see [`RpcFrame::Extended`]).
pub fn encode_extended(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    out.put_u8(KIND_EXTENDED);
    put_varint(out, kind.into());
    out.extend_from_slice(body);
}

/// The bytes a sequenced update's prefix takes: the extended head and kind, `seq`, and the
/// one-way request's head and type index (see [`encode_update_prefix`]).
pub fn update_prefix_len(seq: u64, type_index: u32) -> usize {
    2 + crate::proto::wire::varint_len(seq) + request_prefix_len(None, type_index)
}

/// Writes a sequenced update's prefix into `out` (exactly [`update_prefix_len`] bytes), in
/// front of a one-way request's body (see [`encode_request_body`]).
pub fn encode_update_prefix(mut out: &mut [u8], seq: u64, type_index: u32, flags: u8) {
    put_update_head(&mut out, seq);
    encode_request_prefix(out, None, type_index, flags);
}

/// Writes a whole sequenced update's header (the caller appends the arguments): what
/// [`encode_update_prefix`] and [`encode_request_body`] write in place, in one go.
pub fn encode_update(out: &mut impl BufMut, seq: u64, call: &CallHeader) {
    put_update_head(out, seq);
    encode_call(out, None, call);
}

/// An update's extended head, kind and sequence number.
fn put_update_head(out: &mut impl BufMut, seq: u64) {
    out.put_u8(KIND_EXTENDED);
    put_varint(out, EXT_UPDATE.into());
    put_varint(out, seq);
}

/// Reads a sequenced update's body (after the extended kind): its sequence number, the
/// one-way call and its arguments.
pub fn decode_update(body: &[u8]) -> Result<(u64, CallHeader, &[u8]), WireError> {
    let mut r = Reader::new(body);
    let seq = r.varint()?;
    match decode_rpc(r.rest())? {
        RpcFrame::OneWay { call, args } => Ok((seq, call, args)),
        _ => Err(WireError::OutOfRange { field: "update frame", value: body.len() as u64 }),
    }
}

/// Writes an observe (`observe`) or unobserve frame: client observer `instance` hosts (or no
/// longer hosts) `observers` (at most [`MAX_OBSERVERS_FRAME`]: the caller splits longer lists).
pub fn encode_observe(out: &mut Vec<u8>, observe: bool, instance: u64, observers: &[u64]) {
    let mut body = Vec::with_capacity(10 + 3 * observers.len());
    body.extend_from_slice(&instance.to_le_bytes());
    let n = observers.len().min(MAX_OBSERVERS_FRAME);
    put_varint(&mut body, n as u64);
    for o in &observers[..n] {
        put_varint(&mut body, *o);
    }
    encode_extended(out, if observe { EXT_OBSERVE } else { EXT_UNOBSERVE }, &body);
}

/// Reads an observe or unobserve frame's body: (instance, observers).
pub fn decode_observe(body: &[u8]) -> Result<(u64, Vec<u64>), WireError> {
    let mut r = Reader::new(body);
    let instance = r.u64()?;
    let n = r.varint()?;
    if n > MAX_OBSERVERS_FRAME as u64 {
        return Err(WireError::OutOfRange { field: "observers", value: n });
    }
    let observers = (0..n).map(|_| r.varint()).collect::<Result<Vec<_>, _>>()?;
    if !r.is_empty() {
        return Err(WireError::OutOfRange { field: "trailing bytes", value: r.remaining() as u64 });
    }
    Ok((instance, observers))
}

/// The bytes a stream open's prefix takes: the extended head and kind, the window, the ordered
/// stream, and the request's head, id and type index (see [`encode_stream_open_prefix`]).
pub fn stream_open_prefix_len(id: RequestId, type_index: u32, window: u32) -> usize {
    2 + crate::proto::wire::varint_len(window.into()) + 1 + request_prefix_len(Some(id), type_index)
}

/// Writes a stream open's prefix into `out` (exactly [`stream_open_prefix_len`] bytes), in
/// front of a request's body: the caller takes `window` items before it grants more, and wants
/// them on its ordered transport stream `lane`.
pub fn encode_stream_open_prefix(
    mut out: &mut [u8],
    id: RequestId,
    type_index: u32,
    flags: u8,
    window: u32,
    lane: u8,
) {
    out.put_u8(KIND_EXTENDED);
    put_varint(&mut out, EXT_STREAM_OPEN.into());
    put_varint(&mut out, window.into());
    out.put_u8(lane);
    encode_request_prefix(out, Some(id), type_index, flags);
}

/// A stream open, decoded: the caller's window and ordered stream, the call and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen<'a> {
    /// Items the caller takes before it grants more (at most [`MAX_STREAM_WINDOW`]).
    pub window: u32,
    /// The caller's ordered transport stream the items and the end go on.
    pub lane: u8,
    /// The call's id.
    pub id: RequestId,
    /// Routing.
    pub call: CallHeader,
    /// The arguments.
    pub args: &'a [u8],
}

/// Reads a stream open's body (after the extended kind).
pub fn decode_stream_open(body: &[u8]) -> Result<StreamOpen<'_>, WireError> {
    let mut r = Reader::new(body);
    let window = r.varint_u32("stream window")?;
    if window == 0 || window > MAX_STREAM_WINDOW {
        return Err(WireError::OutOfRange { field: "stream window", value: window.into() });
    }
    let lane = r.u8()?;
    match decode_rpc(r.rest())? {
        RpcFrame::Request { id, call, args } => Ok(StreamOpen { window, lane, id, call, args }),
        _ => Err(WireError::OutOfRange { field: "stream open frame", value: body.len() as u64 }),
    }
}

/// Writes a stream items frame's head for call `id`; items follow, each written with
/// [`put_stream_item`].
pub fn encode_stream_items_head(out: &mut impl BufMut, id: RequestId) {
    out.put_u8(KIND_EXTENDED);
    put_varint(out, EXT_STREAM_ITEMS.into());
    put_id(out, id);
}

/// Appends one encoded item to a stream items frame.
pub fn put_stream_item(out: &mut impl BufMut, item: &[u8]) {
    put_varint(out, item.len() as u64);
    out.put_slice(item);
}

/// Reads a stream items frame's body (after the extended kind): the call and its items,
/// checked whole (every item's length within the frame, at least one item).
pub fn decode_stream_items(body: &[u8]) -> Result<(RequestId, StreamItems<'_>), WireError> {
    let mut r = Reader::new(body);
    let id = read_id(&mut r)?;
    let items = r.rest();
    let mut check = StreamItems { rest: items, count: 0 };
    let mut count = 0;
    while !check.rest.is_empty() {
        check.next_item()?;
        count += 1;
    }
    if count == 0 {
        return Err(WireError::OutOfRange { field: "stream items", value: 0 });
    }
    Ok((id, StreamItems { rest: items, count }))
}

/// The items of a stream items frame, in order (checked by [`decode_stream_items`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItems<'a> {
    rest: &'a [u8],
    /// How many items it holds.
    pub count: u32,
}

impl<'a> StreamItems<'a> {
    /// The items' bytes (each `len varint | item`), to keep and read later with
    /// [`next_stream_item`].
    pub fn bytes(&self) -> &'a [u8] {
        self.rest
    }

    fn next_item(&mut self) -> Result<&'a [u8], WireError> {
        next_stream_item(&mut self.rest)
    }
}

/// Takes the first item off `items` (bytes from [`StreamItems::bytes`]).
pub fn next_stream_item<'a>(items: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let mut r = Reader::new(items);
    let len = r.varint()?;
    if len > r.remaining() as u64 {
        return Err(WireError::OutOfRange { field: "stream item length", value: len });
    }
    let head = items.len() - r.remaining();
    let (item, rest) = items[head..].split_at(len as usize);
    *items = rest;
    Ok(item)
}

/// Writes a stream credit frame: the caller of call `id` takes `more` items.
pub fn encode_stream_credit(out: &mut impl BufMut, id: RequestId, more: u32) {
    out.put_u8(KIND_EXTENDED);
    put_varint(out, EXT_STREAM_CREDIT.into());
    put_id(out, id);
    put_varint(out, more.into());
}

/// Reads a stream credit frame's body: the call and the items granted.
pub fn decode_stream_credit(body: &[u8]) -> Result<(RequestId, u32), WireError> {
    let mut r = Reader::new(body);
    let id = read_id(&mut r)?;
    let more = r.varint_u32("stream credit")?;
    if !r.is_empty() {
        return Err(WireError::OutOfRange { field: "trailing bytes", value: r.remaining() as u64 });
    }
    Ok((id, more))
}

/// The bytes an `#[exactly_once]` call's prefix takes: the extended head and kind, the call id,
/// and the request's head, id and type index (see [`encode_once_prefix`]).
pub fn once_prefix_len(id: RequestId, type_index: u32) -> usize {
    2 + 8 + request_prefix_len(Some(id), type_index)
}

/// Writes an `#[exactly_once]` call's prefix into `out` (exactly [`once_prefix_len`] bytes), in
/// front of a request's body.
pub fn encode_once_prefix(
    mut out: &mut [u8],
    call_id: u64,
    id: RequestId,
    type_index: u32,
    flags: u8,
) {
    out.put_u8(KIND_EXTENDED);
    put_varint(&mut out, EXT_ONCE.into());
    out.put_u64_le(call_id);
    encode_request_prefix(out, Some(id), type_index, flags);
}

/// Reads an `#[exactly_once]` call's body (after the extended kind): its call id, the request
/// and its arguments.
pub fn decode_once(body: &[u8]) -> Result<(u64, RequestId, CallHeader, &[u8]), WireError> {
    let mut r = Reader::new(body);
    let call_id = r.u64()?;
    match decode_rpc(r.rest())? {
        RpcFrame::Request { id, call, args } => Ok((call_id, id, call, args)),
        _ => Err(WireError::OutOfRange { field: "once frame", value: body.len() as u64 }),
    }
}
