//! Admission of a call and the room it needs: the hosted type and method, the caller's own
//! budgets, and the server-wide budgets shared per address (see `server::budget`), taking room
//! from the address most over its share when the caller is under its own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Admitted, EVICTION_SCAN, PeerState, Refusal, ServerService};

/// How long a session closed to make answer room counts as room on its way: the transport
/// drops its queue in its next pass.
const ROOM_LAG: std::time::Duration = std::time::Duration::from_millis(5);
/// Calls of the victim looked at to make room in the pending budgets (running ones are
/// skipped): a bound on the work one admission may do.
const PREEMPT_SCAN: usize = 4096;
use crate::proto::ids::PeerId;
use crate::proto::wire::rpc::{CallHeader, Status};
use crate::rpc::dispatch;
use crate::server::Registered;
use crate::server::budget::{self, AddrId, Over, Room};

impl ServerService {
    /// Checks a call against what is hosted and the budgets: the registered type and the room
    /// to take from others first, or the status to answer.
    pub(super) fn admit(
        &self,
        p: &PeerState,
        call: &CallHeader,
        cost: usize,
        now: Instant,
    ) -> Result<Admitted, (Status, Vec<u8>)> {
        if !self.accepting {
            return Err((Status::ShuttingDown, Vec::new()));
        }
        let index = call.type_index as usize;
        let reg: &Registered = self
            .shared
            .registry
            .get(index)
            .filter(|r| r.hosted.load(Ordering::Acquire))
            .ok_or((Status::UnknownGrainType, Vec::new()))?;
        // No version check: which versions serve which method is per method, from the
        // signatures the manifest lists, and the caller's routing chose this entry by them.
        if reg.info.method(call.method).is_none() {
            return Err((Status::UnknownMethod, Vec::new()));
        }
        let config = &self.shared.config;
        let calls = p.calls.len();
        // A call is admitted while under both budgets (a lone call always fits the bytes).
        if calls >= config.max_pending_per_connection
            || (calls > 0 && p.pending_bytes + cost > config.max_pending_bytes_per_connection)
        {
            return Err(self.refuse(Refusal::Pending));
        }
        let preempt_answers = match self.reporter.budget.room(&p.conn) {
            Room::Fits => false,
            // Room is being made already by a session closed for it.
            Room::Preempt => !self.making_answer_room(now),
            Room::Refuse(Over::Session) | Room::Full => return Err(self.refuse(Refusal::SendQueue)),
            Room::Refuse(Over::Server) => return Err(self.refuse(Refusal::Server)),
        };
        let preempt_calls = self.calls.len() >= config.max_pending_calls
            || self.pending_bytes + cost > config.max_pending_bytes;
        if preempt_calls {
            let (n, mine) = (self.loads.addresses(), self.loads.get(p.addr));
            let under = mine.calls < budget::share(config.max_pending_calls, n)
                && mine.call_bytes + cost <= budget::share(config.max_pending_bytes, n);
            if !under {
                return Err(self.refuse(Refusal::Server));
            }
        }
        Ok(Admitted { index, preempt_answers, preempt_calls })
    }

    /// Whether a session closed to make room in the answer budget a moment ago holds enough
    /// to bring it under its bound once its queue is dropped (the transport does so in its next
    /// pass; meanwhile the total still counts it). O(1): no scan per call at the bound.
    fn making_answer_room(&self, now: Instant) -> bool {
        let Some((at, coming)) = self.answer_room else { return false };
        let total = self.reporter.endpoint.queued_total.load(Ordering::Relaxed);
        now < at + ROOM_LAG && total.saturating_sub(coming) < self.reporter.budget.server_bytes
    }

    /// Makes room in the answer budget: closes the largest session of the address most over
    /// its share (its queue is dropped).
    pub(super) fn preempt_answers(&mut self, now: Instant) {
        let bound = self.reporter.budget.server_bytes;
        let share = budget::share(bound, self.loads.addresses());
        let mut by_addr: HashMap<AddrId, (usize, Option<(usize, PeerId)>)> = HashMap::new();
        for (id, p) in self.peers.iter().filter(|(_, p)| !p.gone && !p.shed) {
            let e = by_addr.entry(p.addr).or_insert((p.conn.address_queued_bytes(), None));
            let mine = (p.conn.queued_bytes(), *id);
            e.1 = e.1.max(Some(mine));
        }
        let victim = by_addr.into_values().filter(|(a, _)| *a > share).max_by_key(|(a, _)| *a);
        if let Some((_, Some((bytes, peer)))) = victim
            && let Some(p) = self.peers.get_mut(&peer)
        {
            p.shed = true;
            p.conn.stall();
            self.answer_room = Some((now, bytes));
            self.shared.counters.sessions_preempted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes room in the pending-call budgets for a call costing `cost`: answers queued calls
    /// of the address most over its share `Overloaded`, as few as make room. False if that
    /// frees too little (its calls are running).
    pub(super) fn preempt_calls(&mut self, cost: usize, now: Instant) -> bool {
        let config = &self.shared.config;
        let (max_calls, max_bytes) = (config.max_pending_calls, config.max_pending_bytes);
        let fits = |s: &Self| s.calls.len() < max_calls && s.pending_bytes + cost <= max_bytes;
        let victim = self
            .loads
            .most_over(max_calls, |l| l.calls)
            .or_else(|| self.loads.most_over(max_bytes, |l| l.call_bytes));
        let Some(victim) = victim else { return false };
        // Its queued calls (any of them: a running one is skipped), as few as make room.
        let tokens: Vec<u64> = self
            .peers
            .values()
            .filter(|p| p.addr == victim)
            .flat_map(|p| p.calls.iter().copied())
            .take(PREEMPT_SCAN)
            .collect();
        for t in tokens {
            if fits(self) {
                break;
            }
            let Some(job) = self.calls.get(&t).and_then(|rec| rec.mailbox.remove(t)) else {
                continue; // running: it finishes
            };
            if let Some((conn, id)) = job.reply.call() {
                self.reporter.unasked(conn, dispatch::status(*id, Status::Overloaded, &[]));
            }
            self.shared.counters.calls_preempted.fetch_add(1, Ordering::Relaxed);
            self.finished(t, now);
        }
        fits(self)
    }

    /// Makes room for a new activation costing `cost` for `peer`, or says why there is none.
    pub(super) fn room_for_activation(
        &mut self,
        peer: PeerId,
        cost: usize,
    ) -> Result<(), (Status, Vec<u8>)> {
        let config = &self.shared.config;
        let Some(p) = self.peers.get(&peer) else { return Err((Status::Overloaded, Vec::new())) };
        if p.activations >= config.max_activations_per_connection {
            return Err(self.refuse(Refusal::Activations));
        }
        // Deactivating activations still hold their memory: they count until they are gone,
        // and at most a sixteenth of the budget may be on its way out at once.
        let (limit, bytes) = (config.max_activations, config.max_activation_bytes);
        let (leaving_limit, leaving_bytes) = ((limit / 16).max(1), bytes / 16);
        let t = &self.table;
        if t.len() - t.deactivating() >= limit || t.bytes() - t.leaving_bytes() + cost > bytes {
            if t.deactivating() >= leaving_limit || t.leaving_bytes() >= leaving_bytes {
                return Err(self.refuse(Refusal::Activations));
            }
            // Evict one of the caller's own idle activations, or one of an address over its
            // share; a caller under its share may evict anyone's least recently used.
            let (n, me) = (self.loads.addresses(), p.addr);
            let (count_share, bytes_share) = (budget::share(limit, n), budget::share(bytes, n));
            let loads = &self.loads;
            let over = |a: AddrId| {
                let l = loads.get(a);
                a == me || l.activations > count_share || l.activation_bytes > bytes_share
            };
            let mine = loads.get(me);
            let under =
                mine.activations < count_share && mine.activation_bytes + cost <= bytes_share;
            let evicted =
                self.table.evict_where(EVICTION_SCAN, over) || (under && self.table.evict_one());
            if !evicted {
                return Err(self.refuse(Refusal::Activations));
            }
            self.shared.counters.activations_evicted.fetch_add(1, Ordering::Relaxed);
        }
        let t = &self.table;
        if t.len() >= limit + leaving_limit || t.bytes() + cost > bytes + leaving_bytes {
            return Err(self.refuse(Refusal::Activations));
        }
        Ok(())
    }
}
