//! Extended frames (kind 0, a sub-kind varint, a body old peers skip): observe and unobserve
//! (a client names the observers it hosts) and sequenced updates (a one-way call numbered for
//! latest-wins).

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
