//! Truncated numbers on the wire and their expansion back to 64 bits.
//!
//! Packet numbers and reliable message numbers are 64-bit counters that never wrap; only their
//! low bits travel. The receiver expands them to the value closest to the one it expects, the
//! method of RFC 9000 §A.3, which is correct as long as sender and receiver are less than half
//! the truncated range apart. The send windows keep them far closer than that.

/// Expands the low `bits` bits `truncated` to the 64-bit value closest to `expected`.
pub(crate) fn expand(expected: u64, truncated: u64, bits: u32) -> u64 {
    let win = 1u64 << bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | (truncated & mask);
    if candidate.wrapping_add(hwin) <= expected && candidate < u64::MAX - win {
        candidate + win
    } else if candidate > expected.saturating_add(hwin) && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// How many bytes of packet number `pn` to send so that a receiver that has seen at least
/// `largest_acked` expands it correctly: the distance must stay under half the range. Never
/// fewer than two: the receiver expands relative to the largest number it has *received*, so
/// a packet overtaken by half a range of later ones would expand to a number never sent (and
/// its ack end the session). One byte allowed only 128 packets of reordering, which a
/// sender queuing many small messages reaches within milliseconds; two bytes allow 32,768.
pub(crate) fn pn_len(pn: u64, largest_acked: Option<u64>) -> u8 {
    let unacked = match largest_acked {
        Some(l) => pn.saturating_sub(l),
        None => pn + 1,
    };
    if unacked < 1 << 15 { 2 } else { 4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_example() {
        // RFC 9000 §A.3: largest 0xa82f30ea, truncated 0x9b32 (16 bits) -> 0xa82f9b32.
        assert_eq!(expand(0xa82f_30eb, 0x9b32, 16), 0xa82f_9b32);
    }

    #[test]
    fn expansion_is_exact_within_half_a_window() {
        for bits in [8u32, 16, 32] {
            let half = 1u64 << (bits - 1);
            for expected in [0u64, 1, 5, half - 1, half, 3 * half + 7, 1 << 40, u64::MAX / 2] {
                let lo = expected.saturating_sub(half - 1);
                let hi = expected + half - 1;
                for actual in [lo, expected, hi, lo + 1, hi - 1] {
                    let t = actual & ((1u64 << bits) - 1);
                    assert_eq!(
                        expand(expected, t, bits),
                        actual,
                        "bits {bits} exp {expected} act {actual}"
                    );
                }
            }
        }
    }

    #[test]
    fn pn_len_grows_with_the_unacked_distance() {
        assert_eq!(pn_len(0, None), 2);
        assert_eq!(pn_len(200, Some(100)), 2);
        assert_eq!(pn_len(300, Some(100)), 2);
        assert_eq!(pn_len(40_000, Some(100)), 4);
        assert_eq!(pn_len(100_000, Some(1)), 4);
    }
}
