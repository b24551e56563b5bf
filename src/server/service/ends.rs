//! The ends of things: of a call (forget it; stop it, queued or running), of an activation
//! (and a fresh one for the calls that came in while it deactivated), of idle activations
//! (the sweep), of a session (its queued calls dropped) and of sessions closed once drained.

use super::*;

impl ServerService {
    pub(super) fn sweep_period(&self) -> Duration {
        (self.shortest_idle() / 4).max(Duration::from_millis(10))
    }

    /// A call ended: forget it.
    pub(super) fn finished(&mut self, token: u64, now: Instant) {
        let Some(rec) = self.calls.remove(&token) else { return };
        self.pending_bytes -= rec.bytes;
        if rec.stream.is_some() {
            self.shared.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(p) = self.peers.get_mut(&rec.peer) {
            p.calls.remove(&token);
            if rec.stream.is_some() {
                p.streams -= 1;
            }
            p.pending_bytes -= rec.bytes;
            if let CallKind::Call(id) = rec.id {
                p.by_id.remove(&id);
            }
            self.loads.update(p.addr, |l| {
                l.calls -= 1;
                l.call_bytes -= rec.bytes;
            });
            if p.gone && p.calls.is_empty() {
                self.peers.remove(&rec.peer);
            }
        }
        if let Some(key) = self.table.key_of(&rec.grain) {
            self.table.call_done(key, now);
        }
        self.shared.calls_done.fetch_add(1, Ordering::Relaxed);
        if self.calls.is_empty() && !self.accepting {
            for d in self.drained.drain(..) {
                let _ = d.send(());
            }
        }
        self.publish();
    }

    /// Stops a call: removes it from its mailbox if queued (answering with `status` if any),
    /// or cuts it short if running (its activation answers and reports), or stops its stream
    /// (its pump ends it with `status`, if any, and reports).
    pub(super) fn stop(&mut self, token: u64, status: Option<Status>, now: Instant) {
        let Some(rec) = self.calls.get(&token) else { return };
        if let Some(ctl) = &rec.stream {
            ctl.stop(status);
        }
        match rec.mailbox.remove(token) {
            Some(job) => {
                if let (Some(status), Some((conn, id))) = (status, job.reply.call()) {
                    self.reporter.unasked(conn, dispatch::status(*id, status, &[]));
                }
                self.finished(token, now);
            }
            None => rec.mailbox.cancel_running(token, status == Some(Status::DeadlineExceeded)),
        }
    }

    pub(super) fn gone(&mut self, grain: GrainId, now: Instant) {
        let Some(a) = self.table.remove(&grain) else { return };
        // Its streams cannot outlive it: they end typed (the calls that came in while it
        // deactivated, streams among them, go to a fresh activation below).
        self.stop_streams(Status::Deactivated, |r, c| r.grain == grain && c.started());
        if let Some(p) = self.peers.get_mut(&a.creator) {
            p.activations = p.activations.saturating_sub(1);
        }
        self.loads.update(a.creator_addr, |l| {
            l.activations -= 1;
            l.activation_bytes -= a.cost;
        });
        if let Life::Deactivating(waiting) = a.life {
            // Calls came in while it deactivated: start a fresh activation for them.
            let mut jobs = waiting.into_iter();
            if let Some(first) = jobs.next() {
                let creator = Creator { peer: a.creator, addr: a.creator_addr, cost: a.cost };
                let mailbox = self.route(creator, grain.clone(), a.index, first, false, now);
                for job in jobs {
                    mailbox.push(job);
                }
                if let Some(na) = self.table.by_grain_mut(&grain) {
                    na.busy = a.busy;
                }
                for rec in self.calls.values_mut().filter(|r| r.grain == grain) {
                    rec.mailbox = mailbox.clone();
                }
            }
        }
        self.publish();
        if self.table.is_empty() {
            for d in self.all_gone.drain(..) {
                let _ = d.send(());
            }
        }
    }

    pub(super) fn sweep(&mut self, now: Instant) {
        let (idle, shortest) = (self.idle(), self.shortest_idle());
        self.table.sweep(now, idle, shortest);
        self.next_sweep = (!self.table.is_empty()).then(|| {
            let period = now + self.sweep_period();
            self.table.next_expiry(shortest).map_or(period, |t| t.max(period))
        });
    }

    /// The shortest idle time of any grain type (the server's, or a type's shorter one).
    pub(super) fn shortest_idle(&self) -> Duration {
        let types = self.shared.registry.iter().filter_map(|r| r.idle);
        types.fold(self.idle(), Duration::min)
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        // Nobody waits for this peer's queued calls any more; running ones finish.
        let tokens: Vec<u64> =
            self.peers.get(&peer).map(|p| p.calls.iter().copied().collect()).unwrap_or_default();
        for t in tokens {
            let Some(rec) = self.calls.get(&t) else { continue };
            if let Some(ctl) = &rec.stream {
                ctl.stop(None); // nobody reads it any more
            }
            if rec.mailbox.remove(t).is_some() {
                self.finished(t, now);
            }
        }
        if let Some(p) = self.peers.get_mut(&peer).filter(|p| !p.gone) {
            p.by_id.clear();
            p.gone = true;
            self.loads.update(p.addr, |l| l.sessions -= 1);
        }
        if self.peers.get(&peer).is_some_and(|p| p.calls.is_empty()) {
            self.peers.remove(&peer);
        }
    }

    /// Closes, with [`rpc::CLOSE_DRAINED`], each session that has no call pending and nothing
    /// unacknowledged (so its client holds every answer it will get); answers the waiters once
    /// none is left open.
    pub(super) fn close_drained(&mut self) {
        if self.closing_drained.is_empty() {
            return;
        }
        let mut open = 0;
        for p in self.peers.values_mut().filter(|p| !p.gone) {
            if p.calls.is_empty() && p.conn.queued_messages() == 0 {
                p.conn.close(rpc::CLOSE_DRAINED);
                p.gone = true;
                self.loads.update(p.addr, |l| l.sessions -= 1);
            } else {
                open += 1;
            }
        }
        if open == 0 {
            for d in self.closing_drained.drain(..) {
                let _ = d.send(());
            }
        }
    }
}
