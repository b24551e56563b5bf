//! RPC frames carved out of per-thread chunks, so building a request or a response does not
//! allocate per call.
//!
//! Each thread keeps one [`BytesMut`] chunk; a frame is written at its end and split off. The
//! frames share the chunk (one reference count); once every frame of a chunk has been sent and
//! dropped, the chunk is whole again and the next frame reuses it without allocating. While
//! frames are still out (queued or awaiting acknowledgement), a new chunk is taken: the
//! memory held is the frames in flight rounded up to whole chunks. A frame bigger than a
//! quarter chunk leaves with its buffer, so one large message does not keep a large chunk
//! alive on the thread.

use std::cell::RefCell;

use bytes::{BufMut, BytesMut};
use serde::Serialize;

/// Bytes per chunk. At least 1 KiB, or `BytesMut` would not remember the size when it
/// replaces a chunk that is still shared.
const CHUNK: usize = 4096;

thread_local! {
    static CHUNKS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Builds one frame: `write` appends to an empty buffer (with room for at least `hint` bytes)
/// whose contents are then split off and returned with `write`'s result. `write` runs
/// synchronously on this thread, so frames built by different tasks never interleave.
pub(crate) fn frame<R>(hint: usize, write: impl FnOnce(&mut BytesMut) -> R) -> (BytesMut, R) {
    let mut write = Some(write);
    let built = CHUNKS.try_with(|chunk| {
        // A serde impl that itself builds a frame would re-enter: it gets its own buffer.
        let mut chunk = chunk.try_borrow_mut().ok()?;
        if chunk.capacity() < hint {
            chunk.reserve(hint.max(CHUNK));
        }
        let r = write.take()?(&mut chunk);
        let frame = chunk.split();
        if frame.len() > CHUNK / 4 {
            *chunk = BytesMut::new();
        }
        Some((frame, r))
    });
    if let Ok(Some(built)) = built {
        return built;
    }
    // Thread teardown, or re-entered: a buffer of its own.
    let mut buf = BytesMut::with_capacity(hint);
    let r = write.take().expect("not called above: the chunk was unavailable")(&mut buf);
    (buf, r)
}

/// Appends `value` postcard-encoded to `out`; on error `out` is left as it was.
pub(crate) fn encode<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) -> postcard::Result<()> {
    let len = out.len();
    let append = Append { out, stage: [0; STAGE], staged: 0 };
    postcard::serialize_with_flavor(value, append).inspect_err(|_| out.truncate(len))
}

const STAGE: usize = 64;

/// A postcard output that appends to a borrowed buffer. postcard writes many values a byte at
/// a time (every element of a `Vec<u8>`); those are gathered in a small array and appended in
/// runs, which costs a fraction of a `BytesMut::put_u8` each.
struct Append<'a> {
    out: &'a mut BytesMut,
    stage: [u8; STAGE],
    staged: usize,
}

impl Append<'_> {
    fn flush(&mut self) {
        self.out.put_slice(&self.stage[..self.staged]);
        self.staged = 0;
    }
}

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.staged == STAGE {
            self.flush();
        }
        self.stage[self.staged] = data;
        self.staged += 1;
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= STAGE - self.staged {
            self.stage[self.staged..self.staged + data.len()].copy_from_slice(data);
            self.staged += data.len();
        } else {
            self.flush();
            self.out.put_slice(data);
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hold_what_was_written_and_do_not_overlap() {
        let (a, n) = frame(8, |b| {
            b.extend_from_slice(b"first");
            5
        });
        let (b, ()) = frame(8, |b| b.extend_from_slice(b"second frame"));
        assert_eq!((&a[..], n), (&b"first"[..], 5));
        assert_eq!(&b[..], b"second frame");
    }

    #[test]
    fn a_reentrant_write_gets_its_own_buffer() {
        let (outer, inner) = frame(4, |b| {
            b.extend_from_slice(b"out");
            let (inner, ()) = frame(4, |b| b.extend_from_slice(b"in"));
            b.extend_from_slice(b"er");
            inner
        });
        assert_eq!(&outer[..], b"outer");
        assert_eq!(&inner[..], b"in");
    }

    #[test]
    fn a_large_frame_leaves_with_its_buffer() {
        let (big, ()) = frame(16, |b| b.extend_from_slice(&[1u8; 3 * CHUNK]));
        assert_eq!(big.len(), 3 * CHUNK);
        CHUNKS.with(|c| assert_eq!(c.borrow().capacity(), 0, "the chunk was let go"));
        let (small, ()) = frame(4, |b| b.extend_from_slice(b"ok"));
        assert_eq!(&small[..], b"ok");
    }

    #[test]
    fn encode_matches_postcard_for_every_size() {
        for n in [0, 1, 63, 64, 65, 200, 5000] {
            let value = (vec![7u8; n], "tail", n as u64, vec![1u8; n / 3]);
            let mut out = BytesMut::new();
            encode(&mut out, &value).unwrap();
            assert_eq!(&out[..], &postcard::to_allocvec(&value).unwrap()[..], "n = {n}");
        }
    }

    /// Writes some bytes, then fails.
    struct FailsHalfway;

    impl Serialize for FailsHalfway {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&[9u8; 100][..])?;
            Err(S::Error::custom("no"))
        }
    }

    #[test]
    fn a_failed_encode_leaves_the_buffer_as_it_was() {
        let mut out = BytesMut::from(&b"head"[..]);
        assert!(encode(&mut out, &FailsHalfway).is_err());
        assert_eq!(&out[..], b"head");
    }

    #[test]
    fn encode_appends_postcard() {
        let mut out = BytesMut::from(&b"head"[..]);
        encode(&mut out, &(7u8, "hi", vec![1u8, 2])).unwrap();
        assert_eq!(&out[..4], b"head");
        assert_eq!(
            postcard::from_bytes::<(u8, String, Vec<u8>)>(&out[4..]).unwrap(),
            (7, "hi".into(), vec![1, 2])
        );
    }
}
