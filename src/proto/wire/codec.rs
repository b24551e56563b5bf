//! Bounds-checked primitive readers and writers shared by every decoder in [`super`].
//!
//! Every read checks the remaining length first and returns a typed [`WireError`]; nothing
//! here can panic on hostile input.

use bytes::BufMut;

use super::WireError;

/// A cursor over a received datagram. Reads never panic: each one checks the remaining length.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.remaining() < n {
            Err(WireError::Truncated { offset: self.pos, needed: n - self.remaining() })
        } else {
            Ok(())
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.need(n)?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Everything not read yet; the reader is left empty.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        let v = self.buf[self.pos];
        self.pos += 1;
        Ok(v)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A little-endian unsigned integer of `len` bytes (1..=4).
    pub(crate) fn uint(&mut self, len: usize) -> Result<u32, WireError> {
        let b = self.bytes(len)?;
        let mut a = [0u8; 4];
        a[..len].copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// An unsigned LEB128 varint of at most 10 bytes whose value fits in a `u64`.
    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let low = u64::from(byte & 0x7f);
            if i == 9 && (byte & 0x7e) != 0 {
                // The tenth byte may only carry the top bit of a u64.
                return Err(WireError::VarintOverflow);
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow)
    }

    /// A varint that must fit in a `u32`.
    pub(crate) fn varint_u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| WireError::OutOfRange { field, value: v })
    }
}

/// Appends an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// The encoded length of a varint.
pub(crate) const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the low `len` bytes (1..=4) of `v`, little-endian.
pub(crate) fn put_uint(out: &mut impl BufMut, v: u32, len: usize) {
    out.put_slice(&v.to_le_bytes()[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_lengths() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "length of {v}");
            let mut r = Reader::new(&out);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_rejects_overflow_and_truncation() {
        let eleven = [0xffu8; 11];
        assert_eq!(Reader::new(&eleven).varint(), Err(WireError::VarintOverflow));
        let tenth_too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(Reader::new(&tenth_too_big).varint(), Err(WireError::VarintOverflow));
        assert!(matches!(Reader::new(&[0x80]).varint(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn fixed_reads_check_length() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(matches!(r.u32(), Err(WireError::Truncated { offset: 0, needed: 1 })));
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert_eq!(r.uint(1).unwrap(), 3);
        assert!(r.u8().is_err());
    }
}
