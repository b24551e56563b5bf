//! A call's way out: routed (or parked until a server can take it), sent on its server's
//! session as its delivery class says, re-routed after a loss, cancelled.

use super::*;

/// How long a call redirected to an owner found gone waits before it is routed again (its
/// deadline allowing): the owner's peers declare it dead within their health timeout, and a
/// server that claims the grain then gets it.
const OWNER_GONE_WAIT: Duration = Duration::from_millis(100);

impl ClientService {
    /// Sends `call` to `to` if that server is still there, else routes it again.
    pub(super) fn dispatch(&mut self, call: Call, to: Option<(PeerId, u32)>, now: Instant) {
        if call.kind.call().is_some_and(|c| c.is_cancelled()) {
            return; // dropped before it was sent; the drop counted it finished
        }
        // A grain whose calls are being moved to its owner: behind them.
        if !self.moving.is_empty() {
            let key = (call.again.target.grain_type, call.again.hash);
            if let Some(m) = self.moving.get_mut(&key) {
                m.held.push(call);
                return;
            }
        }
        // A grain the directory placed elsewhere goes straight to its owner (if connected):
        // the directory outranks a preference, not a requirement.
        if !self.locations.is_empty() && !matches!(call.again.affinity, Affinity::Required(_)) {
            let key = (call.again.target.grain_type, call.again.hash);
            if let Some(owner) = self.locations.get(&key) {
                let a = &call.again;
                let owned = Affinity::Preferred(owner.clone());
                if let Ok(d) = self.routes.route_excluding(&a.target, a.hash, &owned, None) {
                    let to = (d.candidate.peer, d.candidate.type_index);
                    return self.send(call, to, now);
                }
            }
        }
        if to.is_none() && self.shared.wait_while_starting && self.shared.starting() {
            // Routed once every server was tried (see `ClientShared::route`).
            return self.parked.push(call);
        }
        let to = match to {
            Some((peer, index)) if self.peers.get(&peer).is_some_and(|p| p.leaving.is_none()) => {
                (peer, index)
            }
            // Its server left since the caller routed it (it was never sent: route again),
            // or it waits for one.
            _ => match self.reroute(&call, None) {
                Ok(to) => to,
                Err(e) => return self.park_or_fail(call, e, now),
            },
        };
        self.send(call, to, now);
    }

    pub(super) fn reroute(
        &self,
        call: &Call,
        exclude: Option<PeerId>,
    ) -> Result<(PeerId, u32), CallError> {
        let a = &call.again;
        match self.routes.route_excluding(&a.target, a.hash, &a.affinity, exclude) {
            Ok(d) => {
                tracing::debug!(
                    server = %d.candidate.server, reason = ?d.reason, strategy = d.strategy,
                    candidates = d.candidates, retry = exclude.is_some(), "routed"
                );
                Ok((d.candidate.peer, d.candidate.type_index))
            }
            Err(e) => Err(route_error(e)),
        }
    }

    /// On-demand: keeps a call that no connected server takes until a server connects; else
    /// fails it.
    pub(super) fn park_or_fail(&mut self, mut call: Call, error: CallError, now: Instant) {
        if call.redirected {
            // Waits for the owner it was sent to while that server is being connected for the
            // first time. An owner that was lost (or could not be reached) is likely dead: its
            // peers find it so within their health timeout and take its grains over, so the
            // call is routed again, a little later, within its deadline (see `OWNER_GONE_WAIT`).
            let connecting = call.owner_at.as_ref().is_some_and(|at| {
                let slots = self.shared.slots();
                let mut owners = slots.iter().filter(|s| s.addrs.contains(at)).peekable();
                owners.peek().is_some()
                    && owners.clone().all(|s| !s.is_down())
                    && owners.any(|s| s.phase() != Phase::Backoff)
            });
            if connecting {
                self.parked.push(call);
                return;
            }
            let key = (call.again.target.grain_type, call.again.hash);
            if self.locations.remove(&key).is_some() {
                self.location_order.retain(|k| *k != key);
            }
            match call.before_redirect.take() {
                Some(before)
                    if !matches!(before, Affinity::Required(_))
                        && call.deadline > now + OWNER_GONE_WAIT =>
                {
                    tracing::debug!(owner = ?call.again.affinity, "the grain's owner is gone: routing again soon");
                    call.again.affinity = before;
                    call.redirected = false;
                    call.owner_at = None;
                    let at = now + OWNER_GONE_WAIT;
                    self.delayed.push(Delayed { at, call, from: None, fallback: error });
                }
                _ => {
                    let error = match &call.again.affinity {
                        Affinity::Required(owner) => CallError::ServerUnavailable(owner.clone()),
                        _ => error,
                    };
                    self.fail(call.kind.call().map(Arc::as_ref), error, false, now);
                }
            }
        } else if (self.shared.config.mode == ConnectMode::OnDemand && self.demand_next())
            || (self.shared.wait_while_starting && self.shared.starting())
        {
            self.parked.push(call);
        } else {
            self.fail(call.kind.call().map(Arc::as_ref), error, false, now);
        }
    }

    /// On-demand: makes sure a server is being connected. False when none is left to try.
    pub(super) fn demand_next(&self) -> bool {
        let slots = self.shared.slots();
        if slots.iter().any(|s| matches!(s.phase(), Phase::Connecting | Phase::Connected)) {
            return true;
        }
        slots.iter().any(|s| s.demand())
    }

    /// Routes parked calls again (a server connected or an attempt failed).
    pub(super) fn retry_parked(&mut self, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        for call in std::mem::take(&mut self.parked) {
            self.dispatch(call, None, now);
        }
    }

    pub(super) fn send(&mut self, call: Call, (peer, type_index): (PeerId, u32), now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            self.fail(call.kind.call().map(Arc::as_ref), CallError::NotConnected, false, now);
            return;
        };
        let class = call.again.delivery;
        let seq = if class == DeliveryClass::Sequenced {
            p.update_seq += 1;
            p.update_seq
        } else {
            0
        };
        let open = call.again.inbox.as_ref().map(|i| i.window);
        let once = call.again.once;
        let lane = Lane { stream: call.stream, class, seq, open, once };
        let size = call.frame.len() - PREFIX_GAP;
        // An unreliable message must fit one datagram (with its prefix, at most
        // `PREFIX_GAP`): it is never lost in pieces.
        let max = match class.is_unreliable() {
            true => p.conn.max_single_datagram().saturating_sub(PREFIX_GAP),
            false => p.conn.max_message_size(lane.delivery()),
        };
        if size > max {
            self.fail(
                call.kind.call().map(Arc::as_ref),
                CallError::TooLarge { size, max },
                false,
                now,
            );
            return;
        }
        // A call gets a correlation slot; a one-way call (no cell) none. Both are written on
        // the grain's stream in the order calls were made.
        let cell = call.kind.call().cloned();
        let kept = Kept {
            again: call.again,
            attempts: call.attempts,
            redirected: call.redirected,
            seq: call.seq,
        };
        let awaited = call.kind.map(|cell| Awaited {
            cell,
            started: call.started,
            deadline: call.deadline,
            kept,
        });
        let id = p.in_flight.send(&p.conn, call.frame, call.flags, type_index, lane, awaited);
        let (Some(cell), Some(id)) = (cell, id) else {
            // A one-way call is done once written.
            self.shared.one_way_sent.fetch_add(1, Ordering::Relaxed);
            self.shared.finished_one();
            return;
        };
        p.load.started();
        if !cell.set_id(peer, id) {
            // Dropped while we sent it: take it back.
            self.cancel(peer, id, now);
        }
    }

    pub(super) fn cancel(&mut self, peer: PeerId, id: RequestId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.in_flight.cancel(&p.conn, id).is_some() {
            let decay = self.shared.config.latency_decay;
            let load = p.load.clone();
            let t = self.nanos(now);
            load.finished(None, t, decay);
        }
    }
}
