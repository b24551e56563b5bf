//! SipHash-2-4 (Aumasson & Bernstein, 2012), written from the paper, as a `const fn`: a keyed
//! pseudo-random function. Keyed with a secret, it MACs the handshake cookies; keyed with
//! fixed constants, it is the stable, platform-independent hash behind grain ids, interface
//! and method ids (computed at compile time in the code `#[grain]` generates). `std`'s
//! `DefaultHasher` is SipHash too, but its algorithm is explicitly unspecified and may change.

/// Hashes `data` under the 128-bit key `(k0, k1)`.
pub const fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let blocks = data.len() / 8;
    let mut i = 0;
    while i < blocks {
        let mut b = [0u8; 8];
        let mut j = 0;
        while j < 8 {
            b[j] = data[i * 8 + j];
            j += 1;
        }
        let m = u64::from_le_bytes(b);
        v[3] ^= m;
        v = round(round(v));
        v[0] ^= m;
        i += 1;
    }
    let mut last = [0u8; 8];
    let mut j = 0;
    while j < data.len() % 8 {
        last[j] = data[blocks * 8 + j];
        j += 1;
    }
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    v = round(round(v));
    v[0] ^= m;
    v[2] ^= 0xff;
    v = round(round(round(round(v))));
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

const fn round(mut v: [u64; 4]) -> [u64; 4] {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
    v
}

/// The fixed key of every stable hash (ids and placement). Never change it: ids computed with
/// it are part of the wire protocol and of where grains are placed.
pub const STABLE_KEY: (u64, u64) = (0x6772_6169_6e77_6972, 0x652d_7374_6162_6c65);

/// The stable hash of `data`: the same value in every process, build and platform.
pub const fn stable_hash(data: &[u8]) -> u64 {
    siphash24(STABLE_KEY.0, STABLE_KEY.1, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    #[test]
    fn reference_vectors() {
        // The paper's Appendix A: key 00..0f, message 00..0e.
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(K0, K1, &msg), 0xa129_ca61_49be_45e5);
        // The reference implementation's vectors for the empty message and 00..07.
        assert_eq!(siphash24(K0, K1, &[]), 0x726f_db47_dd0e_0e31);
        let eight: Vec<u8> = (0u8..8).collect();
        assert_eq!(siphash24(K0, K1, &eight), 0x93f5_f579_9a93_2462);
        // Evaluated at compile time, too.
        const AT_COMPILE_TIME: u64 = siphash24(K0, K1, &[]);
        assert_eq!(AT_COMPILE_TIME, 0x726f_db47_dd0e_0e31);
    }
}
