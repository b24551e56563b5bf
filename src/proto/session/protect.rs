//! Packet protection inside a session: opening protected datagrams (replay window, then the
//! tag, then the frames) and sealing what the channel wrote. The keys and the window live in
//! [`Session`]; the AEAD and the window's rules in [`crate::proto::crypt`].

use std::time::Instant;

use super::{Session, State};
use crate::proto::config::TransportConfig;
use crate::proto::crypt::AUTH_TAG_LEN;
use crate::proto::wire;

thread_local! {
    /// Where protected packets are decrypted (taken for one packet, put back after).
    static PLAIN: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Session {
    /// A protected data packet: the replay window, then the tag, and only then the frames.
    /// Whether it was authentic and fresh.
    pub(super) fn on_protected(
        &mut self,
        now: Instant,
        pn_truncated: u32,
        pn_len: u8,
        data: &[u8],
    ) -> bool {
        let (Some(ch), Some(keys)) = (self.channel.as_mut(), self.keys.as_ref()) else {
            return false;
        };
        let pn = ch.expand_pn(pn_truncated, pn_len);
        if !self.replay.fresh(pn) {
            ch.count_replayed();
            return false;
        }
        let header_len = wire::data_header_len(data[0]);
        // One buffer per thread, not per session (idle sessions hold none).
        let mut plain = PLAIN.take();
        plain.clear();
        plain.extend_from_slice(data);
        let (header, body) = plain.split_at_mut(header_len);
        let opened = keys.open(pn, header, body).map(|p| p.len());
        let authentic = opened.is_ok();
        match opened {
            Err(_) => ch.count_unauthentic(),
            Ok(n) => {
                self.replay.mark(pn);
                self.proven = true;
                ch.count_overhead(false, AUTH_TAG_LEN);
                plain.truncate(header_len + n);
                if let State::Draining { .. } = self.state {
                    self.close_again = true;
                } else if n > 0 {
                    self.on_data(now, pn_truncated, pn_len, &plain[header_len..], &plain);
                } else if let Some(ch) = self.channel.as_mut() {
                    ch.count_malformed();
                }
            }
        }
        PLAIN.set(plain);
        authentic
    }

    /// A data packet of this session from an address other than the session's: its peer moved
    /// (a NAT rebinding, another network), or someone replays or forges its packets. Only a
    /// protected session can tell: an authentic, fresh packet is taken like any other of its
    /// packets, and `Some` says so, with the `PATH_RESPONSE` it carried, if any (what the
    /// transport validates the new address with). `None`: not taken (plain, not authentic,
    /// replayed, or the session is not open).
    pub fn handle_moved(&mut self, now: Instant, data: &[u8]) -> Option<Option<u64>> {
        if self.keys.is_none() || self.channel.is_none() || self.is_closed() {
            return None;
        }
        let Ok(wire::Packet::Data(h, _)) = wire::decode_packet(data) else { return None };
        if h.tag != self.tag || !self.on_protected(now, h.pn_truncated, h.pn_len, data) {
            return None;
        }
        Some(self.channel.as_mut().and_then(|ch| ch.take_path_response()))
    }

    /// Writes into `out` a sealed packet holding only a `PATH_CHALLENGE` with `token`, for the
    /// transport to send to the address a moved peer's packets came from; false when the
    /// session cannot (plain, or not open).
    pub fn write_path_challenge(&mut self, now: Instant, token: u64, out: &mut Vec<u8>) -> bool {
        if self.keys.is_none() || self.is_closed() {
            return false;
        }
        let Some(ch) = self.channel.as_mut() else { return false };
        ch.write_path_challenge(now, self.tag, token, out);
        self.protect(out)
    }

    /// Seals the data packet just written into `out`, if the session is protected.
    pub(super) fn protect(&mut self, out: &mut Vec<u8>) -> bool {
        if let (Some(keys), Some(ch)) = (&self.keys, &mut self.channel)
            && wire::is_data(out)
        {
            keys.seal(ch.last_sent_pn(), wire::data_header_len(out[0]), out);
            ch.count_overhead(true, AUTH_TAG_LEN);
        }
        true
    }
}

/// The channel's configuration: a protected session leaves room for the tag in every datagram
/// (both sides agree, so their chunks agree).
pub(super) fn channel_config(cfg: &TransportConfig, protected: bool) -> TransportConfig {
    let mut c = cfg.clone();
    if protected {
        c.max_datagram_size -= AUTH_TAG_LEN;
    }
    c
}
