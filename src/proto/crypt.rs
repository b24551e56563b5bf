//! Packet protection: every data packet of a session opened with a connect token is encrypted
//! and authenticated (ChaCha20-Poly1305), one key per direction.
//!
//! The token carries two secrets (client → server, server → client). Each session derives its
//! own keys from them with HKDF-SHA256 over the client's nonce and the server's session tag,
//! so a token used again (a reconnect from the same address) never reuses a key with a
//! packet number. The AEAD nonce is the packet number (the full 64-bit number, recovered from
//! the truncated one in the header) with a kind byte, so nothing extra travels: a protected
//! packet costs exactly its 16-byte tag. The header (flags, session tag, truncated packet
//! number) stays readable and is authenticated as associated data.
//!
//! A receiver checks the [`ReplayWindow`] first (cheap), then the tag; a packet that fails
//! either is dropped and counted, never decoded.
//!
//! The server's `ACCEPT` carries a proof (the tag of an empty message under the new
//! server → client key) so a client knows the server holds the token's secrets before it sends
//! anything protected.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hkdf;

/// Bytes a protected packet carries beyond the plain one: the authentication tag.
pub const AUTH_TAG_LEN: usize = 16;

/// What a nonce is for: data packets, or the `ACCEPT` proof (never the same nonce twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Data = 0,
    Accept = 1,
}

fn nonce(purpose: Purpose, pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = purpose as u8;
    n[4..].copy_from_slice(&pn.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The two secrets a connect token carries for its sessions.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// For packets from the client.
    pub client_to_server: [u8; 32],
    /// For packets to the client.
    pub server_to_client: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// A packet did not authenticate (forged, altered, truncated, or another session's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet failed authentication")]
pub struct Unauthentic;

/// One session's keys: one to seal what we send, one to open what we receive.
pub struct PacketKeys {
    seal: LessSafeKey,
    open: LessSafeKey,
}

impl std::fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKeys(..)")
    }
}

fn derive(secret: &[u8; 32], salt: &[u8], label: &[u8]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    // `expand` fails only for an output longer than 255 hash lengths; a key is 32 bytes.
    let info = [label];
    let okm = prk.expand(&info, &CHACHA20_POLY1305).expect("a 32-byte output");
    LessSafeKey::new(UnboundKey::from(okm))
}

impl PacketKeys {
    /// The keys of the session the client opened with `nonce` and the server tagged `tag`;
    /// `client` says which side we are.
    pub fn derive(secrets: &Secrets, nonce: u32, tag: u32, client: bool) -> Self {
        let mut salt = [0u8; 8];
        salt[..4].copy_from_slice(&nonce.to_le_bytes());
        salt[4..].copy_from_slice(&tag.to_le_bytes());
        let c2s = derive(&secrets.client_to_server, &salt, b"grainwire c2s");
        let s2c = derive(&secrets.server_to_client, &salt, b"grainwire s2c");
        if client { Self { seal: c2s, open: s2c } } else { Self { seal: s2c, open: c2s } }
    }

    /// Encrypts `packet[header_len..]` in place and appends the tag; `packet[..header_len]`
    /// is authenticated as is. `pn` is the packet's full number.
    pub fn seal(&self, pn: u64, header_len: usize, packet: &mut Vec<u8>) {
        let (header, body) = packet.split_at_mut(header_len);
        // Sealing fails only for messages beyond ChaCha20's 256 GiB limit.
        let tag = self
            .seal
            .seal_in_place_separate_tag(nonce(Purpose::Data, pn), Aad::from(&*header), body)
            .expect("a datagram is far below the AEAD's size limit");
        packet.extend_from_slice(tag.as_ref());
    }

    /// Opens a packet sealed by the peer: `body` is the ciphertext and tag, decrypted in place;
    /// returns the plaintext (the front of `body`).
    pub fn open<'a>(
        &self,
        pn: u64,
        header: &[u8],
        body: &'a mut [u8],
    ) -> Result<&'a mut [u8], Unauthentic> {
        self.open
            .open_in_place(nonce(Purpose::Data, pn), Aad::from(header), body)
            .map_err(|_| Unauthentic)
    }

    /// Server: the proof its `ACCEPT` carries, over the accept's fields `fields`.
    pub fn accept_proof(&self, fields: &[u8]) -> [u8; AUTH_TAG_LEN] {
        let tag: Tag = self
            .seal
            .seal_in_place_separate_tag(nonce(Purpose::Accept, 0), Aad::from(fields), &mut [])
            .expect("an empty message");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Client: whether an `ACCEPT`'s `proof` over `fields` came from the server holding the
    /// token's secrets.
    pub fn verify_accept(&self, fields: &[u8], proof: &[u8; AUTH_TAG_LEN]) -> bool {
        let mut buf = *proof;
        self.open.open_in_place(nonce(Purpose::Accept, 0), Aad::from(fields), &mut buf).is_ok()
    }
}

/// Packets this far below the highest one seen are still accepted once (reordering); older
/// ones are refused as possible replays.
pub const REPLAY_WINDOW: u64 = 256;

/// Which packet numbers were already accepted, within [`REPLAY_WINDOW`] of the highest one:
/// a packet seen before, or older than the window, is refused. Checked before the tag (it is
/// cheaper), marked after it (only authentic packets move the window).
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest packet number accepted, if any.
    top: Option<u64>,
    /// Bit `i` (word `i / 64`) set: packet `top - i` was accepted.
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    /// Whether `pn` may be accepted (not seen, not too old).
    pub fn fresh(&self, pn: u64) -> bool {
        match self.top {
            None => true,
            Some(top) if pn > top => true,
            Some(top) => {
                let back = top - pn;
                back < REPLAY_WINDOW && self.bits[(back / 64) as usize] & (1 << (back % 64)) == 0
            }
        }
    }

    /// Records `pn` as accepted (call only after [`Self::fresh`] said yes and it authenticated).
    pub fn mark(&mut self, pn: u64) {
        match self.top {
            Some(top) if pn <= top => {
                let back = top - pn;
                if back < REPLAY_WINDOW {
                    self.bits[(back / 64) as usize] |= 1 << (back % 64);
                }
            }
            top => {
                let shift = top.map_or(REPLAY_WINDOW, |t| pn - t);
                self.shift(shift);
                self.top = Some(pn);
                self.bits[0] |= 1;
            }
        }
    }

    /// Moves every bit `n` places further back (dropping what falls out of the window).
    fn shift(&mut self, n: u64) {
        if n >= REPLAY_WINDOW {
            self.bits = Default::default();
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        let len = self.bits.len();
        for i in (0..len).rev() {
            let from = i.checked_sub(words);
            let hi = from.map_or(0, |j| self.bits[j] << bits);
            let lo = match from.and_then(|j| j.checked_sub(1)) {
                Some(k) if bits > 0 => self.bits[k] >> (64 - bits),
                _ => 0,
            };
            self.bits[i] = hi | lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets { client_to_server: [1; 32], server_to_client: [2; 32] }
    }

    #[test]
    fn each_side_opens_what_the_other_sealed_and_nothing_else() {
        let client = PacketKeys::derive(&secrets(), 7, 9, true);
        let server = PacketKeys::derive(&secrets(), 7, 9, false);
        let mut p = vec![0x90, 1, 2, 3, 4, 5, 6];
        p.extend_from_slice(b"secret frames");
        client.seal(1000, 7, &mut p);
        assert_eq!(p.len(), 7 + 13 + AUTH_TAG_LEN);
        assert!(!p.windows(6).any(|w| w == b"secret"), "encrypted");
        let (h, b) = p.split_at(7);
        let open = |keys: &PacketKeys, pn: u64, h: &[u8], b: &[u8]| {
            let mut b = b.to_vec();
            keys.open(pn, h, &mut b).map(|x| x.to_vec())
        };
        assert_eq!(open(&server, 1000, h, b).unwrap(), b"secret frames");
        // The sender's own key, another packet number, a changed header or body, another
        // session of the same token (nonce or tag): all refused.
        assert_eq!(open(&client, 1000, h, b), Err(Unauthentic));
        assert_eq!(open(&server, 1001, h, b), Err(Unauthentic));
        let mut h2 = h.to_vec();
        h2[1] ^= 1;
        assert_eq!(open(&server, 1000, &h2, b), Err(Unauthentic));
        let mut b2 = b.to_vec();
        b2[0] ^= 1;
        assert_eq!(open(&server, 1000, h, &b2), Err(Unauthentic));
        assert_eq!(
            open(&PacketKeys::derive(&secrets(), 8, 9, false), 1000, h, b),
            Err(Unauthentic)
        );
        assert_eq!(
            open(&PacketKeys::derive(&secrets(), 7, 8, false), 1000, h, b),
            Err(Unauthentic)
        );
        assert_eq!(open(&server, 1000, h, &b[..b.len() - 1]), Err(Unauthentic));
        // The accept proof.
        let proof = server.accept_proof(b"fields");
        assert!(client.verify_accept(b"fields", &proof));
        assert!(!client.verify_accept(b"fieldz", &proof));
        assert!(!PacketKeys::derive(&secrets(), 7, 10, true).verify_accept(b"fields", &proof));
    }

    #[test]
    fn the_replay_window_takes_each_number_once_and_tolerates_reordering() {
        let mut w = ReplayWindow::default();
        for pn in [5u64, 3, 4, 10, 6, 300, 299, 100] {
            assert!(w.fresh(pn), "{pn}");
            w.mark(pn);
            assert!(!w.fresh(pn), "{pn} twice");
        }
        assert!(!w.fresh(300 - REPLAY_WINDOW), "older than the window");
        assert!(w.fresh(300 - REPLAY_WINDOW + 1));
        assert!(!w.fresh(10), "10 fell out of the window: 300 - 10 >= 256");
        assert!(w.fresh(298) && w.fresh(301));
        // Shifts by every amount against a simple model.
        let mut rng = crate::proto::rng::SplitMix64::new(3);
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut top = 0u64;
        for _ in 0..20_000 {
            let pn = (top + rng.next_u64() % 80).saturating_sub(60);
            let model = seen.last().is_none_or(|&t: &u64| pn > t || (t - pn < REPLAY_WINDOW))
                && !seen.contains(&pn);
            assert_eq!(w.fresh(pn), model, "pn {pn} top {top}");
            if model {
                w.mark(pn);
                seen.insert(pn);
                top = top.max(pn);
            }
            top += rng.next_u64() % 3;
        }
    }
}
