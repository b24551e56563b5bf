//! Fair shares of the server-wide budgets. Every budget a client can make the server spend —
//! answers queued and not acknowledged, pending calls and their bytes, activations and their
//! bytes, sessions (at the door) — has a per-session bound and a per-address share of its
//! server-wide bound: the bound divided by the addresses with sessions now (an address is an
//! IPv4 address or an IPv6 /64; one address with 64 sessions is one party, not 64).
//!
//! The policy, the same for each budget: while the server is under a bound, anyone may use it
//! (no one waits for room that is free). At the bound, a caller under its address's share
//! takes room from the address most over its share (its largest session's answers are
//! dropped and the session closed `Stalled`; its queued calls are answered `Overloaded`; its
//! idle activations are evicted), and a caller over its share is refused. Since the shares add
//! up to the bound, someone is over theirs whenever the bound is reached by a caller under
//! its own: one address, or a few, reaching the bound costs themselves, never the others.
//!
//! What the server queues for a session without being asked for it by a call (refusals,
//! redirects, topology pushes) passes the same check: past a hard margin over the bounds it is
//! dropped and counted instead of queued (a peer that does not drain its answers would not
//! read it anyway).
//!
//! How far over the answer bound the server may go: the answer of a call is known only once it
//! ran, so a call is checked before it runs. At the bound, a call from an address under its
//! share runs (its admission closed sessions of addresses over theirs), so each such address
//! may go one answer over its share before the sessions closed for it are gone; the server
//! refuses even those callers at twice its bound (reached only if about `bound /
//! max_message_size` addresses, each under its share, are answered large answers at once).
//! Everything else stops an eighth over the bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::transport::Connection;

/// Where a connection stands against its answer budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Its calls may run and be answered.
    Fits,
    /// The server is at its bound but this address is under its share: it may run once room
    /// is taken from the address most over its share.
    Preempt,
    /// Its calls are refused (`Overloaded`): it is over a budget (`why`).
    Refuse(Over),
    /// Beyond the hard margin: nothing more is queued for it, not even a refusal.
    Full,
}

/// Which budget a refused call was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// Its session's answer budget (`send_buffer`, or the count of answers).
    Session,
    /// The server's, and its address is over its share.
    Server,
}

/// The answer budgets: per session (bytes and answers) and for the whole server, shared per
/// address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerBudget {
    /// Bytes a session may hold queued before its calls are refused: the transport's
    /// `send_buffer`.
    pub(crate) session_bytes: usize,
    /// Answers a session may hold queued before its calls are refused: twice the pending-call
    /// budget plus 64. The count matters as much as the bytes: a small answer carved from an
    /// arena chunk keeps up to a chunk alive while it waits.
    pub(crate) session_messages: usize,
    /// Bytes all sessions may hold queued: `max_queued_answer_bytes`.
    pub(crate) server_bytes: usize,
}

/// The hard margin over a soft bound: an eighth.
fn hard(bound: usize) -> usize {
    bound.saturating_add(bound / 8)
}

/// An address's share of `bound` among `addresses` addresses.
pub(crate) fn share(bound: usize, addresses: usize) -> usize {
    bound / addresses.max(1)
}

impl AnswerBudget {
    /// Where `conn` stands (reads its counters; cheap: a few relaxed atomic loads).
    pub(crate) fn room(&self, conn: &Connection) -> Room {
        let (bytes, messages) = (conn.queued_bytes(), conn.queued_messages());
        if bytes >= hard(self.session_bytes) || messages >= hard(self.session_messages) {
            return Room::Full;
        }
        let ep = conn.endpoint();
        let total = ep.queued_total.load(Ordering::Relaxed);
        let under = || {
            let addresses = ep.addresses.load(Ordering::Relaxed);
            conn.address_queued_bytes() < share(self.server_bytes, addresses)
        };
        let server = if total < self.server_bytes {
            Room::Fits
        } else if under() {
            Room::Preempt
        } else if total >= hard(self.server_bytes) {
            return Room::Full;
        } else {
            Room::Refuse(Over::Server)
        };
        if bytes >= self.session_bytes || messages >= self.session_messages {
            return Room::Refuse(Over::Session);
        }
        server
    }

    /// Whether the server as a whole holds twice its bound: then not even a caller under its
    /// share runs until room is made.
    pub(crate) fn over_ceiling(&self, conn: &Connection) -> bool {
        let total = conn.endpoint().queued_total.load(Ordering::Relaxed);
        total >= self.server_bytes.saturating_mul(2)
    }

    /// Whether something the server queues unasked (a refusal, a redirect, a topology push)
    /// may be queued for `conn`.
    pub(crate) fn may_queue(&self, conn: &Connection) -> bool {
        self.room(conn) != Room::Full
    }
}

/// What the calls of one address hold on the server (kept while it has sessions, calls or
/// activations).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AddrLoad {
    /// Its sessions with the service.
    pub(crate) sessions: usize,
    /// Its pending calls.
    pub(crate) calls: usize,
    /// What they are charged (arguments plus bookkeeping).
    pub(crate) call_bytes: usize,
    /// Activations its calls created that are still there.
    pub(crate) activations: usize,
    /// What they are charged (see `activation_cost`).
    pub(crate) activation_bytes: usize,
}

impl AddrLoad {
    fn is_empty(&self) -> bool {
        self.sessions == 0 && self.calls == 0 && self.activations == 0
    }
}

/// An address's entry in [`AddrLoads`]: held by its sessions and its activations, valid while
/// it holds anything (an entry is forgotten only once nothing refers to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddrId(usize);

#[cfg(test)]
impl AddrId {
    /// An id for tests that need one without an [`AddrLoads`].
    pub(crate) fn test(n: usize) -> Self {
        Self(n)
    }
}

/// Per-address loads, and how many addresses have sessions (the divisor of every share). An
/// address is found by its id, without hashing, on every call.
#[derive(Debug, Default)]
pub(crate) struct AddrLoads {
    slab: slab::Slab<(IpAddr, AddrLoad)>,
    ids: HashMap<IpAddr, usize>,
    with_sessions: usize,
}

impl AddrLoads {
    /// Addresses with sessions now (at least 1: a share is never a division by zero).
    pub(crate) fn addresses(&self) -> usize {
        self.with_sessions.max(1)
    }

    /// A session of `addr` begins: its address's id (the entry made if need be).
    pub(crate) fn join(&mut self, addr: IpAddr) -> AddrId {
        let slab = &mut self.slab;
        let id = *self.ids.entry(addr).or_insert_with(|| slab.insert((addr, AddrLoad::default())));
        self.update(AddrId(id), |l| l.sessions += 1);
        AddrId(id)
    }

    pub(crate) fn get(&self, id: AddrId) -> AddrLoad {
        self.slab.get(id.0).map(|(_, l)| *l).unwrap_or_default()
    }

    /// Changes `id`'s load with `f`; forgets the address once it holds nothing.
    pub(crate) fn update(&mut self, id: AddrId, f: impl FnOnce(&mut AddrLoad)) {
        let Some((addr, load)) = self.slab.get_mut(id.0) else { return };
        let had = load.sessions > 0;
        f(load);
        let has = load.sessions > 0;
        if had != has {
            if has {
                self.with_sessions += 1;
            } else {
                self.with_sessions -= 1;
            }
        }
        if load.is_empty() {
            let addr = *addr;
            self.slab.remove(id.0);
            self.ids.remove(&addr);
        }
    }

    /// The address whose `measure` is furthest over its share of `bound` (and over it at all).
    pub(crate) fn most_over(
        &self,
        bound: usize,
        measure: impl Fn(&AddrLoad) -> usize,
    ) -> Option<AddrId> {
        let share = share(bound, self.addresses());
        self.slab
            .iter()
            .map(|(id, (_, l))| (measure(l), id))
            .filter(|(m, _)| *m > share)
            .max()
            .map(|(_, id)| AddrId(id))
    }
}

/// What an activation of a grain with this key is charged against the activation bytes: a
/// fixed cost (its task, mailbox, table entries and directory claim, measured) plus its key's
/// text.
pub(crate) fn activation_cost(key: &crate::proto::ids::GrainKey) -> usize {
    use crate::proto::ids::GrainKey;
    let text = match key {
        GrainKey::Int(_) | GrainKey::Id(_) => 0,
        GrainKey::Str(s) | GrainKey::IntExt(_, s) | GrainKey::IdExt(_, s) => s.len(),
    };
    ACTIVATION_COST + text
}

/// The fixed part of [`activation_cost`].
pub(crate) const ACTIVATION_COST: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_divide_by_addresses_with_sessions_and_the_heaviest_over_share_is_found() {
        let mut l = AddrLoads::default();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        assert_eq!(l.addresses(), 1);
        let a1 = l.join(a);
        assert_eq!(l.join(a), a1, "one entry per address");
        let b1 = l.join(b);
        assert_eq!(l.addresses(), 2);
        l.update(a1, |x| x.calls += 70);
        l.update(b1, |x| x.calls += 30);
        // Bound 100, two addresses: shares of 50; a is over.
        assert_eq!(l.most_over(100, |x| x.calls), Some(a1));
        l.join(c);
        // Three addresses: shares of 33; a still, b not.
        assert_eq!(l.most_over(100, |x| x.calls), Some(a1));
        assert_eq!(l.most_over(300, |x| x.calls), None);
        // An address without sessions keeps its load while it holds calls, but no share.
        l.update(a1, |x| x.sessions -= 2);
        assert_eq!(l.addresses(), 2);
        assert_eq!(l.get(a1).calls, 70);
        l.update(a1, |x| x.calls = 0);
        assert_eq!((l.slab.len(), l.ids.len()), (2, 2), "forgotten once it holds nothing");
    }
}
