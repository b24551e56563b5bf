//! A protected session follows its client to a new address (a NAT rebinding, Wi-Fi
//! to LTE), as QUIC's connection migration does. The socket hands a data packet from an
//! address without a session to the protected session its tag names, saying where it really
//! came from ([`set_moved_from`]). The session takes it only if it is authentic and fresh
//! (`Session::handle_moved`: a forged or replayed packet moves nothing and is answered with
//! nothing). Then the new address is validated before anything but a challenge goes there: a
//! `PATH_CHALLENGE` (a sealed packet of ~34 bytes, sent only once the new address has sent at
//! least as many authentic bytes: no amplification toward an address that did not ask), again
//! after two round trips while authentic packets keep coming. The `PATH_RESPONSE` from the new
//! address moves the session there: taken out of this connection, parked under the new
//! address and brought back into the manager there, with its channel, calls and streams as
//! they were (what was sent to the old address meanwhile is retransmitted). The driver moves
//! its bookkeeping (`Moved`): the known address, the tag, the token's binding.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use laminar::{ConnectionMessenger, SocketEvent};

use super::{Conn, Live, Parked, SCOPE};
use crate::transport::laminar::socket::TokenProof;

/// A session that moved from `old` to `new` (see the module docs); its token (if proven) is
/// bound to the new address.
#[derive(Debug)]
pub(crate) struct Moved {
    pub(crate) old: SocketAddr,
    pub(crate) new: SocketAddr,
    pub(crate) proof: Option<TokenProof>,
}

thread_local! {
    /// Where the datagram the socket returned last really came from, when it returned it to
    /// the session its tag names rather than to its source (see the module docs).
    static MOVED_FROM: std::cell::Cell<Option<SocketAddr>> = const { std::cell::Cell::new(None) };
}

/// Where the datagram the socket returned last came from, if not from the address it was
/// returned for (taken: it is said once per datagram).
pub(super) fn take_moved_from() -> Option<SocketAddr> {
    MOVED_FROM.take()
}

/// Says where the datagram about to be returned by the socket came from (`None`: from the
/// address it is returned for).
pub(crate) fn set_moved_from(from: Option<SocketAddr>) {
    MOVED_FROM.set(from);
}

/// The bytes of a sealed packet holding only a `PATH_CHALLENGE`, at most: a data header with
/// a 4-byte packet number, the frame, the tag.
const CHALLENGE_MAX: usize = 1 + 4 + 4 + 9 + crate::proto::crypt::AUTH_TAG_LEN;

/// A new address of a session's client being validated.
#[derive(Debug)]
pub(super) struct Probe {
    addr: SocketAddr,
    token: u64,
    /// Authentic bytes that came from `addr` and were not yet answered by a challenge.
    credit: usize,
    sent: Option<Instant>,
}

impl Conn {
    /// A packet of this session from `from`, another address (see the module docs).
    pub(super) fn packet_from_elsewhere(
        &mut self,
        messenger: &mut impl ConnectionMessenger<SocketEvent>,
        from: SocketAddr,
        payload: &[u8],
        time: Instant,
    ) {
        let Some(live) = self.live.as_mut() else { return };
        let counters = &live.sink.endpoint.counters;
        let Some(response) = live.session.handle_moved(time, payload) else {
            counters.moved_refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        live.dirty = true;
        live.worked = true;
        let probe = match &mut live.probe {
            Some(p) if p.addr == from => p,
            other => {
                let token = live.sink.path_token();
                other.insert(Probe { addr: from, token, credit: 0, sent: None })
            }
        };
        probe.credit += payload.len();
        if response == Some(probe.token) {
            // Validated: the session moves there, whole.
            live.account_held();
            live.pump();
            if let Some(mut live) = self.live.take() {
                live.probe = None;
                live.shared.set_addr(from);
                counters_of(&live).migrated.fetch_add(1, Ordering::Relaxed);
                move_to(self.addr, from, live, time);
            }
            return;
        }
        let again = (live.session.rtt() * 2).max(Duration::from_millis(20));
        if probe.credit >= CHALLENGE_MAX
            && probe.sent.is_none_or(|t| time >= t + again)
            && live.session.write_path_challenge(time, probe.token, &mut live.buf)
        {
            probe.credit -= live.buf.len();
            probe.sent = Some(time);
            messenger.send_packet(&from, &live.buf);
            counters.path_challenges.fetch_add(1, Ordering::Relaxed);
        }
        live.account_held();
        live.pump();
    }
}

fn counters_of(live: &Live) -> &crate::transport::EndpointCounters {
    &live.sink.endpoint.counters
}

/// Parks a session that moved from `old` to `new` under its new address, due at once, and
/// tells the driver.
fn move_to(old: SocketAddr, new: SocketAddr, live: Box<Live>, now: Instant) {
    live.shared.parked.store(true, Ordering::SeqCst);
    let proof = live.bound;
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let generation = s.next_generation;
        s.next_generation += 1;
        s.just_parked.push((new, Some(now), generation));
        s.parked.insert(new, Parked { live, generation, deadline: Some(now) });
        s.moved.push(Moved { old, new, proof });
    });
}
