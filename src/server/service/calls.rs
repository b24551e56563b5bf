//! A call's way in: admitted (see the module docs of `service`), checked for a call chain
//! that would wait on itself, then handed to its grain's activation (made on its first call)
//! or answered at once with why not.

use super::*;
use crate::interface::{DeliveryClass, MethodKind};

/// What a stream without a deadline tells its grain's code as its deadline (a year): what
/// calls the grain makes while producing it may take.
const NO_STREAM_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

impl ServerService {
    pub(super) fn call(
        &mut self,
        peer: PeerId,
        id: CallKind<RequestId>,
        call: CallHeader,
        args: Bytes,
        came: Came,
        now: Instant,
    ) {
        let cost = args.len() + CALL_COST;
        let Some(p) = self.peers.get(&peer) else { return };
        if call.deadline_ms == Some(0) {
            // Its deadline passed as it arrived: it does not run.
            return self.answer(peer, id, Status::DeadlineExceeded, &[]);
        }
        let admitted = match self.admit(p, &call, cost, now) {
            Ok(a) => a,
            Err((status, payload)) => return self.answer(peer, id, status, &payload),
        };
        let reg = &self.shared.registry[admitted.index];
        if let Some(authorize) = &reg.authorize {
            let method = reg.info.method(call.method).expect("admit checked the method");
            if !authorize(&CallInfo { caller: &p.caller, key: &call.key, method }) {
                self.shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                return self.answer(peer, id, Status::Unauthorized, &[]);
            }
        }
        let addr = p.addr;
        if admitted.preempt_answers {
            self.preempt_answers(now);
        }
        if admitted.preempt_calls && !self.preempt_calls(cost, now) {
            let refused = self.refuse(Refusal::Server);
            return self.answer(peer, id, refused.0, &refused.1);
        }
        let index = admitted.index;
        let info = self.shared.registry[index].info;
        let grain = GrainId { ty: info.grain_type, key: call.key };
        // An interleaving call joins a shared turn of its grain rather than wait behind it
        // (only the first interface of a host may have such methods: see `Host::with`).
        let method = info.method(call.method).expect("admit checked the method");
        let interleave = method.interleave;
        let method_once = method.exactly_once;
        let unreliable = method.delivery.is_unreliable();
        // A stream method is called by a stream open, and only it; a stream open calls only
        // a stream method.
        if (method.kind == MethodKind::Stream) != matches!(came, Came::Stream { .. }) {
            self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self.answer(peer, id, Status::BadRequest, &[]);
        }
        let stream = match came {
            Came::Stream { window, lane } => {
                if self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.streams >= self.shared.config.max_grain_streams_per_session)
                {
                    self.shared.counters.streams_refused.fetch_add(1, Ordering::Relaxed);
                    return self.answer(peer, id, Status::Overloaded, &[]);
                }
                let ctl = StreamCtl::new(window, self.shared.config.max_grain_stream_window.max(1));
                Some((Arc::new(ctl), lane))
            }
            _ => None,
        };
        let update = match came {
            Came::Update(seq) => Some(seq),
            _ => None,
        };
        if let Some(seq) = update {
            // A sequenced update: only for a `#[sequenced]` method; dropped when stale.
            if method.delivery != DeliveryClass::Sequenced {
                self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if self.stale_update(peer, &grain, call.method, seq, now) {
                return;
            }
        }
        let joins =
            interleave && self.table.by_grain(&grain).is_some_and(|a| a.mailbox.is_shared());
        if !call.chain.is_empty()
            && !joins
            && let Some(payload) = self.deadlock(&grain, &call.chain)
        {
            return self.answer(peer, id, Status::Deadlock, &payload);
        }
        let creator = Creator { peer, addr, cost: budget::activation_cost(&grain.key) };
        if self.table.key_of(&grain).is_none() {
            // Known to live elsewhere: redirect at once (no activation, no directory trip).
            if !self.elsewhere.map.is_empty()
                && let Some(payload) = self.elsewhere.get(&grain, now)
            {
                if !self.owner_unreachable(&payload) {
                    self.shared.counters.redirects.fetch_add(1, Ordering::Relaxed);
                    return self.answer(peer, id, Status::Redirect, &payload);
                }
                // Its owner went silent: ask the directory again (its peers may take over).
                self.elsewhere.map.remove(&grain);
            }
            if let Err((status, payload)) = self.room_for_activation(peer, creator.cost) {
                return self.answer(peer, id, status, &payload);
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else { return };
        // A stream without a deadline has none (it runs while its caller reads it).
        let deadline = match (call.deadline_ms, &stream) {
            (Some(ms), _) => Some(now + Duration::from_millis(ms.into())),
            (None, Some(_)) => None,
            (None, None) => Some(now + self.shared.config.default_deadline),
        };
        let caller = match call.chain.is_empty() {
            true => p.caller.clone(),
            false => p.caller.with_chain(call.chain),
        };
        let chain = caller.shared_chain();
        let token = self.next_token;
        self.next_token += 1;
        let reply = id.map(|id| (p.conn.clone(), id));
        if let CallKind::Call(id) = id {
            p.by_id.insert(id, token);
        }
        p.calls.insert(token);
        p.pending_bytes += cost;
        self.pending_bytes += cost;
        self.loads.update(addr, |l| {
            l.calls += 1;
            l.call_bytes += cost;
        });
        // The endpoint's clock is the tokio clock's base (real or simulated time).
        let job_deadline =
            tokio::time::Instant::from_std(deadline.unwrap_or(now + NO_STREAM_DEADLINE));
        let method = call.method;
        let iface = self.shared.registry[index].slot;
        let job = Job {
            token,
            reply,
            iface,
            unreliable,
            method,
            args,
            caller,
            deadline: job_deadline,
            ended: None,
            stream: stream.clone(),
            once: match came {
                Came::Once(call) if method_once => Some(call),
                _ => None,
            },
        };
        if stream.is_some() {
            p.streams += 1;
            self.shared.counters.streams_open.fetch_add(1, Ordering::Relaxed);
        }
        let mailbox = self.route(creator, grain.clone(), index, job, interleave, now);
        if let Some(seq) = update {
            self.record_update(peer, &grain, method, (seq, token));
        }
        let stream = stream.map(|(ctl, _)| ctl);
        let rec = CallRecord { peer, id, grain, mailbox, bytes: cost, chain, stream };
        self.calls.insert(token, rec);
        if let Some(deadline) = deadline {
            self.deadlines.push(Reverse((deadline, token)));
        }
        self.publish();
    }

    /// Whether the owner a redirect payload names is unreachable from here (this server's
    /// fleet client lost it, or never reached it).
    fn owner_unreachable(&self, payload: &[u8]) -> bool {
        use crate::server::claims::PeerHealth;
        let Ok((_, endpoint)) = rpc::decode_redirect(payload) else { return false };
        endpoint.parse().is_ok_and(|at| self.shared.grains.unreachable(&at))
    }

    /// Whether a call to `grain` made by the grains of `chain` would wait on itself: the grain
    /// is running the call of that chain that leads to this one. If so, the payload of the
    /// `Deadlock` answer (the chain, `grain` last).
    pub(super) fn deadlock(&self, grain: &GrainId, chain: &[GrainId]) -> Option<Vec<u8>> {
        if !chain.contains(grain) {
            return None;
        }
        let running = self.table.by_grain(grain)?.mailbox.running();
        let outer = self.calls.get(&running)?.chain.as_deref().unwrap_or(&[]);
        let n = outer.len();
        if chain.len() <= n || chain[..n] != *outer || chain[n] != *grain {
            return None;
        }
        let mut payload = Vec::new();
        rpc::put_chain(&mut payload, chain, Some(grain));
        Some(payload)
    }

    /// Answers a refused call, if it is a request from a peer still there (and its session
    /// may take it: see `Reporter::unasked`).
    pub(super) fn answer(
        &self,
        peer: PeerId,
        id: CallKind<RequestId>,
        status: Status,
        payload: &[u8],
    ) {
        if let (CallKind::Call(id), Some(p)) = (id, self.peers.get(&peer)) {
            self.reporter.unasked(&p.conn, dispatch::status(id, status, payload));
        }
    }

    /// Hands a job to its grain's activation, activating it (for `creator`, which found room
    /// for it) if needed; an `interleave` call joins the activation's shared turn, if one
    /// runs.
    pub(super) fn route(
        &mut self,
        creator: Creator,
        grain: GrainId,
        index: usize,
        job: Job,
        interleave: bool,
        now: Instant,
    ) -> Arc<Mailbox> {
        if let Some(key) = self.table.key_of(&grain) {
            self.table.call_started(key, now);
            if let Some(a) = self.table.get_mut(key) {
                match &mut a.life {
                    Life::Active if interleave && a.mailbox.is_shared() => a.mailbox.push_side(job),
                    Life::Active => a.mailbox.push(job),
                    Life::Deactivating(waiting) => waiting.push(job),
                }
                return a.mailbox.clone();
            }
        }
        let mailbox = Arc::new(Mailbox::default());
        mailbox.push(job);
        let reg = &self.shared.registry[index];
        let claim = self
            .shared
            .claims
            .as_ref()
            .filter(|_| reg.directory != DirectoryUse::Off)
            .map(|c| (c.clone(), reg.directory));
        let task = reg.spawn.spawn(grain.clone(), mailbox.clone(), self.reporter.clone(), claim);
        // One activation serves all its host's interfaces: it belongs to the first.
        let mut a = Activation::new(grain, mailbox.clone(), task, reg.host, creator, now);
        a.idle = reg.idle;
        let key = self.table.insert(a);
        self.table.call_started(key, now);
        if let Some(p) = self.peers.get_mut(&creator.peer) {
            p.activations += 1;
        }
        self.loads.update(creator.addr, |l| {
            l.activations += 1;
            l.activation_bytes += creator.cost;
        });
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_period());
        }
        mailbox
    }
}
