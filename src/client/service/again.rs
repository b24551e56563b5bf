//! Sending a call again: retries after a refusal, a drain or a lost server (with what remains
//! of its deadline, after its policy's backoff), redirects to a grain's owner (calls to one
//! grain kept in order while they move), and the location cache they fill.

use super::*;

impl ClientService {
    /// Sends a call again, to another server, if its retry policy allows it after `why`:
    /// with what remains of its deadline, after the policy's backoff. Gives it back when the
    /// policy says no, its deadline passed, or (sent at once) no other server takes it.
    pub(super) fn retry(
        &mut self,
        pending: Pending,
        from: PeerId,
        why: Why,
        now: Instant,
    ) -> Option<Pending> {
        let policy = self.shared.retry.get(pending.kept.again.retry);
        let allowed = match why {
            Why::Refused(kind) => policy.retry_on.contains(&kind),
            Why::Drained => policy.retry_on.contains(&CallErrorKind::ShuttingDown),
            Why::Lost(_) => pending.kept.again.idempotent && policy.idempotent_after_loss,
        };
        if !allowed || pending.kept.attempts >= policy.max_attempts {
            return Some(pending);
        }
        if pending.cell.is_cancelled() {
            return None;
        }
        let remaining = pending.deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Some(pending);
        }
        let delay = policy.backoff.delay(pending.kept.attempts, self.rng.next_f64());
        // Each attempt carries what remains of the deadline (rounded up to a millisecond).
        let body = &pending.body;
        let mut frame = BytesMut::with_capacity(PREFIX_GAP + body.len() + 4);
        frame.put_bytes(0, PREFIX_GAP);
        let ms = remaining.saturating_sub(delay).as_micros().div_ceil(1000).min(u32::MAX.into());
        if rpc::rewrite_body_deadline(&mut frame, body, pending.flags, ms.max(1) as u32).is_none() {
            frame.extend_from_slice(body);
        }
        let call = Call {
            frame,
            flags: pending.flags,
            stream: pending.stream,
            started: pending.started,
            deadline: pending.deadline,
            kind: CallKind::Call(pending.cell.clone()),
            again: pending.kept.again.clone(),
            attempts: pending.kept.attempts + 1,
            redirected: pending.kept.redirected,
            seq: pending.kept.seq,
            owner_at: None,
            before_redirect: None,
        };
        if !delay.is_zero() {
            if delay >= remaining {
                return Some(pending);
            }
            tracing::debug!(?from, ?delay, attempt = call.attempts, "call sent again after a wait");
            let fallback = why.error();
            self.delayed.push(Delayed { at: now + delay, call, from: Some(from), fallback });
            return None;
        }
        match self.reroute(&call, Some(from)) {
            Ok(to) => {
                tracing::debug!(?from, to = ?to.0, attempt = call.attempts, "call sent again");
                lock(&self.shared.accounting).retried();
                self.send(call, to, now);
                None
            }
            Err(_) => Some(pending),
        }
    }

    /// The grain lives on another server (its server answered `Redirect`): remember where, and
    /// send the call there once, with what remains of its deadline (connecting to the owner
    /// first if need be). Gives the call back when it was redirected already (an error).
    pub(super) fn redirect(
        &mut self,
        pending: Pending,
        from: PeerId,
        payload: &[u8],
        now: Instant,
    ) -> Option<Pending> {
        if pending.cell.is_cancelled() {
            return None;
        }
        if pending.kept.redirected {
            return Some(pending);
        }
        let Ok((server, endpoint)) = rpc::decode_redirect(payload) else {
            tracing::debug!("undecodable redirect; failing the call");
            return Some(pending);
        };
        let owner = ServerId(server);
        self.remember(&pending.kept.again, owner.clone());
        let remaining = pending.deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Some(pending);
        }
        let mut again = pending.kept.again.clone();
        let before_redirect =
            Some(std::mem::replace(&mut again.affinity, Affinity::Required(owner.clone())));
        let call = Call {
            frame: resend_frame(&pending, remaining),
            flags: pending.flags,
            stream: pending.stream,
            started: pending.started,
            deadline: pending.deadline,
            kind: CallKind::Call(pending.cell.clone()),
            again,
            attempts: pending.kept.attempts,
            redirected: true,
            seq: pending.kept.seq,
            owner_at: endpoint.parse().ok(),
            before_redirect,
        };
        if self.reroute(&call, None).is_err() {
            // Not connected to the owner (a list without it, or discovery behind): connect it.
            tracing::debug!(%owner, %endpoint, "redirected to a server not connected: connecting");
            if let Ok(addr) = endpoint.parse::<ServerAddr>()
                && let Some((slot, _)) = self.shared.add_slot(vec![addr])
            {
                slot.demand();
            }
        }
        // Calls to the grain still pending on the server that redirected this one will be
        // redirected too: hold this one (and newer calls) until they are, then send all in
        // the order they were made.
        let key = (call.again.target.grain_type, call.again.hash);
        if let Some(m) = self.moving.get_mut(&key) {
            m.held.push(call);
            return None;
        }
        if self.pending_for(from, key) > 0 {
            self.moving.insert(key, Moving { from, held: vec![call] });
            return None;
        }
        self.send_redirected(call, now);
        None
    }

    /// Calls to the grain `key` pending on `peer`.
    pub(super) fn pending_for(&self, peer: PeerId, key: (GrainType, u64)) -> usize {
        self.peers.get(&peer).map_or(0, |p| {
            p.in_flight
                .values()
                .filter(|c| (c.kept.again.target.grain_type, c.kept.again.hash) == key)
                .count()
        })
    }

    /// Sends the held calls of grains whose old server has no call of theirs pending any more,
    /// in the order they were made.
    pub(super) fn settle_moving(&mut self, now: Instant) {
        let done: Vec<(GrainType, u64)> = self
            .moving
            .iter()
            .filter(|(k, m)| self.pending_for(m.from, **k) == 0)
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            let Some(mut m) = self.moving.remove(&key) else { continue };
            m.held.sort_by_key(|c| c.seq);
            for call in m.held {
                if call.redirected {
                    self.send_redirected(call, now);
                } else {
                    self.dispatch(call, None, now);
                }
            }
        }
    }

    /// Sends a redirected call to its owner (its `Required` affinity), or parks it until the
    /// owner is connected (at most its deadline).
    pub(super) fn send_redirected(&mut self, call: Call, now: Instant) {
        match self.reroute(&call, None) {
            Ok(to) => {
                tracing::debug!("call redirected to the grain's owner");
                self.send(call, to, now);
            }
            Err(e) => self.park_or_fail(call, e, now),
        }
    }

    /// Remembers that the grain of `again` lives on `owner` (a bounded cache; the oldest go).
    pub(super) fn remember(&mut self, again: &Again, owner: ServerId) {
        let cap = self.shared.config.location_cache;
        if cap == 0 {
            return;
        }
        let key = (again.target.grain_type, again.hash);
        if self.locations.insert(key, owner).is_none() {
            self.location_order.push_back(key);
        }
        while self.locations.len() > cap {
            let Some(old) = self.location_order.pop_front() else { break };
            self.locations.remove(&old);
        }
    }

    /// Sends the delayed retries that are due; fails those no server takes.
    pub(super) fn send_delayed(&mut self, now: Instant) {
        if !self.delayed.iter().any(|d| d.at <= now) {
            return;
        }
        let (due, wait): (Vec<Delayed>, Vec<Delayed>) =
            std::mem::take(&mut self.delayed).into_iter().partition(|d| d.at <= now);
        self.delayed = wait;
        for d in due {
            if d.call.kind.call().is_some_and(|c| c.is_cancelled()) {
                continue;
            }
            match self.reroute(&d.call, d.from) {
                Ok(to) => {
                    lock(&self.shared.accounting).retried();
                    self.send(d.call, to, now);
                }
                Err(_) => {
                    self.fail(d.call.kind.call().map(Arc::as_ref), d.fallback, false, now);
                }
            }
        }
    }
}
