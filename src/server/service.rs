//! The server side of RPC, run inside the endpoint's task ([`Service`]): it decodes calls,
//! checks them (grain type, version, method, budgets), routes each to its grain's activation
//! (creating it on the first call), tracks every call until its activation reports it done,
//! and enforces deadlines and cancellations. Idle activations are deactivated by a sweep of the
//! activation table's LRU queue; none of this needs a timer per call or per grain.
//!
//! Admission, in order (the first that fails answers the call; see `ServerConfig`):
//! the server accepts calls; the type is hosted in the caller's version and has the method;
//! the caller's connection is under its pending-call count and bytes, and drains its answers
//! (under the transport's `send_buffer` and the pending-call count in unacknowledged answers);
//! the server as a whole is under its pending calls, pending bytes and queued answer bytes; and
//! a call that needs a new activation finds room: under the caller's activation share, and under
//! `max_activations` once the least recently used idle activation is evicted if need be.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use crossbeam::channel::Receiver;
use tokio::sync::oneshot;

use super::activation::{Job, Mailbox, Report, Reporter};
use super::claims::DirectoryUse;
use super::context::{CallInfo, Caller};
use super::dispatch;
use super::table::{Activation, Life, Table};
use super::{Registered, ServerShared};
use crate::proto::ids::{GrainId, IdMap, IdSet, PeerId, RequestId};
use crate::proto::manifest::Manifest;
use crate::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use crate::transport::{Connection, Delivery, Event, Service};

/// What a call costs the server beyond its arguments: its job, its record and their entries.
const CALL_COST: usize = 256;

/// What the `Server` handle asks of the service.
#[derive(Debug)]
pub(crate) enum ServerCmd {
    /// Refuse new calls; answer once no call is pending.
    Drain(oneshot::Sender<()>),
    /// Deactivate every activation; answer once all are gone.
    DeactivateAll(oneshot::Sender<()>),
    /// Close each session with [`rpc::CLOSE_DRAINED`] once it has no call pending and every
    /// answer on it was acknowledged; answer once all are closed. After `Drain`.
    CloseDrained(oneshot::Sender<()>),
    /// Registry entry `index` was turned on or off: send the new manifest to every session
    /// (and deactivate the type's activations when it is off).
    ManifestChanged { index: usize, hosted: bool },
    /// The fleet changed: push it to the sessions that watch it.
    FleetChanged,
    /// The directory says these grains are no longer ours: deactivate them.
    Lost(Vec<GrainId>),
}

struct CallRecord {
    peer: PeerId,
    id: Option<RequestId>,
    grain: GrainId,
    mailbox: Arc<Mailbox>,
    /// What it is charged against the byte budgets: its arguments plus [`CALL_COST`].
    bytes: usize,
}

struct PeerState {
    conn: Connection,
    /// Pending requests from this peer, by id.
    by_id: HashMap<RequestId, u64>,
    /// Every pending call from this peer (requests and one-way), by token.
    calls: IdSet<u64>,
    /// What those calls are charged (see [`CallRecord::bytes`]).
    pending_bytes: usize,
    /// Activations this peer's calls created that are still there.
    activations: usize,
    /// The session ended; the state stays until its running calls finish.
    gone: bool,
    /// It subscribed to the fleet's topology.
    watching: bool,
    /// Who it is (what its calls' grains see).
    caller: Caller,
}

/// Why a call is refused, to count it.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Pending,
    SendQueue,
    Server,
    Activations,
}

pub(crate) struct ServerService {
    shared: Arc<ServerShared>,
    reporter: Reporter,
    reports: Receiver<Report>,
    cmds: Receiver<ServerCmd>,
    table: Table,
    peers: IdMap<PeerId, PeerState>,
    calls: IdMap<u64, CallRecord>,
    /// What every pending call is charged, together.
    pending_bytes: usize,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_token: u64,
    next_sweep: Option<Instant>,
    accepting: bool,
    drained: Vec<oneshot::Sender<()>>,
    /// Who waits for every session to be closed drained (`CloseDrained`).
    closing_drained: Vec<oneshot::Sender<()>>,
    all_gone: Vec<oneshot::Sender<()>>,
    /// Grains the directory says live elsewhere: the redirect to answer without asking again.
    elsewhere: Elsewhere,
}

/// A bounded memory of redirects (grain → its redirect payload), each for at most a lease:
/// misrouted calls to a grain that lives elsewhere are answered without a directory round
/// trip, and without an activation.
#[derive(Debug, Default)]
struct Elsewhere {
    map: HashMap<GrainId, (Bytes, Instant)>,
    order: std::collections::VecDeque<GrainId>,
    cap: usize,
    ttl: Duration,
}

impl Elsewhere {
    fn insert(&mut self, grain: GrainId, payload: Bytes, now: Instant) {
        if self.cap == 0 {
            return;
        }
        if self.map.insert(grain.clone(), (payload, now + self.ttl)).is_none() {
            self.order.push_back(grain);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn get(&mut self, grain: &GrainId, now: Instant) -> Option<Bytes> {
        match self.map.get(grain) {
            Some((p, until)) if *until > now => Some(p.clone()),
            Some(_) => {
                self.map.remove(grain);
                None
            }
            None => None,
        }
    }
}

/// Answers a call from the service itself (a refusal: the call did not run).
fn respond(conn: &Connection, id: RequestId, status: Status, payload: &[u8]) {
    conn.push(Delivery::ReliableUnordered, dispatch::status(id, status, payload));
}

impl ServerService {
    pub(crate) fn new(
        shared: Arc<ServerShared>,
        reporter: Reporter,
        reports: Receiver<Report>,
        cmds: Receiver<ServerCmd>,
    ) -> Self {
        let elsewhere = Elsewhere {
            cap: shared.config.directory.remembered_redirects,
            ttl: shared.config.directory.lease,
            ..Elsewhere::default()
        };
        Self {
            shared,
            reporter,
            reports,
            cmds,
            table: Table::default(),
            peers: IdMap::default(),
            calls: IdMap::default(),
            pending_bytes: 0,
            deadlines: BinaryHeap::new(),
            next_token: 1,
            next_sweep: None,
            accepting: true,
            drained: Vec::new(),
            closing_drained: Vec::new(),
            all_gone: Vec::new(),
            elsewhere,
        }
    }

    fn idle(&self) -> Duration {
        self.shared.config.idle_deactivation
    }

    fn refuse(&self, why: Refusal) -> (Status, Vec<u8>) {
        let c = &self.shared.counters;
        let counter = match why {
            Refusal::Pending => &c.overloaded_pending,
            Refusal::SendQueue => &c.overloaded_send_queue,
            Refusal::Server => &c.overloaded_server,
            Refusal::Activations => &c.overloaded_activations,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (Status::Overloaded, Vec::new())
    }

    /// Checks a call against what is hosted and the budgets; the registered type, or the
    /// status to answer.
    fn admit(
        &self,
        p: &PeerState,
        call: &CallHeader,
        cost: usize,
    ) -> Result<usize, (Status, Vec<u8>)> {
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
        if call.version != reg.info.version {
            return Err((Status::IncompatibleVersion, vec![reg.info.version]));
        }
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
        let limits = self.reporter.limits;
        if p.conn.queued_bytes() >= limits.bytes || p.conn.queued_messages() >= limits.messages {
            return Err(self.refuse(Refusal::SendQueue));
        }
        if self.calls.len() >= config.max_pending_calls
            || self.pending_bytes + cost > config.max_pending_bytes
            || self.reporter.endpoint.queued_total.load(Ordering::Relaxed)
                >= config.max_queued_answer_bytes
        {
            return Err(self.refuse(Refusal::Server));
        }
        Ok(index)
    }

    /// Makes room for a new activation for `peer`, or says why there is none.
    fn room_for_activation(&mut self, peer: PeerId) -> Result<(), (Status, Vec<u8>)> {
        let config = &self.shared.config;
        let share = self.peers.get(&peer).map_or(0, |p| p.activations);
        if share >= config.max_activations_per_connection {
            return Err(self.refuse(Refusal::Activations));
        }
        // Deactivating activations still hold their memory: they count until they are gone,
        // and at most a sixteenth of the budget may be on its way out at once.
        let limit = config.max_activations;
        let leaving_limit = (limit / 16).max(1);
        if self.table.len() - self.table.deactivating() >= limit {
            if self.table.deactivating() >= leaving_limit || !self.table.evict_one() {
                return Err(self.refuse(Refusal::Activations));
            }
            self.shared.counters.activations_evicted.fetch_add(1, Ordering::Relaxed);
        }
        if self.table.len() >= limit + leaving_limit {
            return Err(self.refuse(Refusal::Activations));
        }
        Ok(())
    }

    fn call(
        &mut self,
        peer: PeerId,
        id: Option<RequestId>,
        call: CallHeader,
        args: Bytes,
        now: Instant,
    ) {
        let cost = args.len() + CALL_COST;
        let Some(p) = self.peers.get(&peer) else { return };
        let admitted = self.admit(p, &call, cost);
        let index = match admitted {
            Ok(i) => i,
            Err((status, payload)) => return self.answer(peer, id, status, &payload),
        };
        let reg = &self.shared.registry[index];
        if let Some(authorize) = &reg.authorize {
            let method = reg.info.method(call.method).expect("admit checked the method");
            if !authorize(&CallInfo { caller: &p.caller, key: &call.key, method }) {
                self.shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                return self.answer(peer, id, Status::Unauthorized, &[]);
            }
        }
        let grain = GrainId { ty: reg.info.grain_type, key: call.key };
        if self.table.key_of(&grain).is_none() {
            // Known to live elsewhere: redirect at once (no activation, no directory trip).
            if !self.elsewhere.map.is_empty()
                && let Some(payload) = self.elsewhere.get(&grain, now)
            {
                self.shared.counters.redirects.fetch_add(1, Ordering::Relaxed);
                return self.answer(peer, id, Status::Redirect, &payload);
            }
            if let Err((status, payload)) = self.room_for_activation(peer) {
                return self.answer(peer, id, status, &payload);
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let deadline = now
            + call
                .deadline_ms
                .map_or(self.shared.config.default_deadline, |ms| Duration::from_millis(ms.into()));
        let token = self.next_token;
        self.next_token += 1;
        let reply = id.map(|id| (p.conn.clone(), id));
        if let Some(id) = id {
            p.by_id.insert(id, token);
        }
        p.calls.insert(token);
        p.pending_bytes += cost;
        self.pending_bytes += cost;
        let job = Job { token, reply, method: call.method, args, caller: p.caller.clone() };
        let mailbox = self.route(peer, grain.clone(), index, job, now);
        self.calls.insert(token, CallRecord { peer, id, grain, mailbox, bytes: cost });
        self.deadlines.push(Reverse((deadline, token)));
        self.publish();
    }

    /// Answers a refused call, if it is a request from a peer still there.
    fn answer(&self, peer: PeerId, id: Option<RequestId>, status: Status, payload: &[u8]) {
        if let (Some(id), Some(p)) = (id, self.peers.get(&peer)) {
            respond(&p.conn, id, status, payload);
        }
    }

    /// Hands a job to its grain's activation, activating it (for `creator`) if needed.
    fn route(
        &mut self,
        creator: PeerId,
        grain: GrainId,
        index: usize,
        job: Job,
        now: Instant,
    ) -> Arc<Mailbox> {
        if let Some(key) = self.table.key_of(&grain) {
            self.table.call_started(key, now);
            if let Some(a) = self.table.get_mut(key) {
                match &mut a.life {
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
        let a = Activation::new(grain, mailbox.clone(), task, index, creator, now);
        let key = self.table.insert(a);
        self.table.call_started(key, now);
        if let Some(p) = self.peers.get_mut(&creator) {
            p.activations += 1;
        }
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_period());
        }
        mailbox
    }

    fn sweep_period(&self) -> Duration {
        (self.idle() / 4).max(Duration::from_millis(10))
    }

    /// Publishes the counts the `Server` handle reads.
    fn publish(&self) {
        let c = &self.shared.counters;
        c.activations.store(self.table.len(), Ordering::Relaxed);
        c.pending_calls.store(self.calls.len(), Ordering::Relaxed);
        c.pending_bytes.store(self.pending_bytes, Ordering::Relaxed);
    }

    /// A call ended: forget it.
    fn finished(&mut self, token: u64, now: Instant) {
        let Some(rec) = self.calls.remove(&token) else { return };
        self.pending_bytes -= rec.bytes;
        if let Some(p) = self.peers.get_mut(&rec.peer) {
            p.calls.remove(&token);
            p.pending_bytes -= rec.bytes;
            if let Some(id) = rec.id {
                p.by_id.remove(&id);
            }
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
    /// or cuts it short if running (its activation answers and reports).
    fn stop(&mut self, token: u64, status: Option<Status>, now: Instant) {
        let Some(rec) = self.calls.get(&token) else { return };
        match rec.mailbox.remove(token) {
            Some(job) => {
                if let (Some(status), Some((conn, id))) = (status, &job.reply) {
                    respond(conn, *id, status, &[]);
                }
                self.finished(token, now);
            }
            None => rec.mailbox.cancel_running(token, status == Some(Status::DeadlineExceeded)),
        }
    }

    fn gone(&mut self, grain: GrainId, now: Instant) {
        let Some(a) = self.table.remove(&grain) else { return };
        if let Some(p) = self.peers.get_mut(&a.creator) {
            p.activations = p.activations.saturating_sub(1);
        }
        if let Life::Deactivating(waiting) = a.life {
            // Calls came in while it deactivated: start a fresh activation for them.
            let mut jobs = waiting.into_iter();
            if let Some(first) = jobs.next() {
                let mailbox = self.route(a.creator, grain.clone(), a.index, first, now);
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

    fn sweep(&mut self, now: Instant) {
        let idle = self.idle();
        self.table.sweep(now, idle);
        self.next_sweep = (!self.table.is_empty()).then(|| {
            let period = now + self.sweep_period();
            self.table.next_expiry(idle).map_or(period, |t| t.max(period))
        });
    }

    fn message(&mut self, peer: PeerId, payload: Bytes, now: Instant) {
        let (id, call, head) = match rpc::decode_rpc(&payload) {
            Ok(RpcFrame::Request { id, call, args }) => {
                (Some(id), call, payload.len() - args.len())
            }
            Ok(RpcFrame::OneWay { call, args }) => (None, call, payload.len() - args.len()),
            Ok(RpcFrame::Cancel { id }) => {
                if let Some(token) = self.peers.get(&peer).and_then(|p| p.by_id.get(&id).copied()) {
                    self.stop(token, None, now);
                }
                return;
            }
            Ok(RpcFrame::Watch { subscribe }) => {
                if let Some(p) = self.peers.get_mut(&peer).filter(|p| !p.gone) {
                    p.watching |= subscribe;
                    let frame = crate::sync::lock(&self.shared.fleet).frame();
                    p.conn.push(Delivery::reliable_ordered(0), frame);
                }
                return;
            }
            Ok(other) => {
                tracing::debug!(?peer, frame = ?other, "unexpected frame from a client; ignored");
                return;
            }
            Err(error) => {
                self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                match rpc::request_id(&payload) {
                    // Its id is known: say that the call itself is bad.
                    Some(id) => self.answer(peer, Some(id), Status::BadRequest, &[]),
                    None => tracing::debug!(?peer, %error, "undecodable frame from a client"),
                }
                return;
            }
        };
        let mut args = payload;
        args.advance(head);
        self.call(peer, id, call, args, now);
    }

    fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        // Nobody waits for this peer's queued calls any more; running ones finish.
        let tokens: Vec<u64> =
            self.peers.get(&peer).map(|p| p.calls.iter().copied().collect()).unwrap_or_default();
        for t in tokens {
            if let Some(rec) = self.calls.get(&t)
                && rec.mailbox.remove(t).is_some()
            {
                self.finished(t, now);
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.by_id.clear();
            p.gone = true;
        }
        if self.peers.get(&peer).is_some_and(|p| p.calls.is_empty()) {
            self.peers.remove(&peer);
        }
    }

    /// Closes, with [`rpc::CLOSE_DRAINED`], each session that has no call pending and nothing
    /// unacknowledged (so its client holds every answer it will get); answers the waiters once
    /// none is left open.
    fn close_drained(&mut self) {
        if self.closing_drained.is_empty() {
            return;
        }
        let mut open = 0;
        for p in self.peers.values_mut().filter(|p| !p.gone) {
            if p.calls.is_empty() && p.conn.queued_messages() == 0 {
                p.conn.close(rpc::CLOSE_DRAINED);
                p.gone = true;
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

    fn command(&mut self, cmd: ServerCmd) {
        match cmd {
            ServerCmd::Drain(done) => {
                self.accepting = false;
                // Tell clients at once: they route new calls elsewhere while the pending ones
                // finish here.
                let draining = Manifest { draining: true, ..(*self.shared.manifest()).clone() };
                let frame = Bytes::from(draining.encode());
                for p in self.peers.values().filter(|p| !p.gone) {
                    p.conn.push(Delivery::reliable_ordered(0), frame.clone());
                }
                if self.calls.is_empty() {
                    let _ = done.send(());
                } else {
                    self.drained.push(done);
                }
            }
            ServerCmd::ManifestChanged { index, hosted } => {
                let frame = self.shared.manifest_frame();
                for p in self.peers.values().filter(|p| !p.gone) {
                    p.conn.push(Delivery::reliable_ordered(0), frame.clone());
                }
                if !hosted {
                    self.table.deactivate_where(|a| a.index == index);
                }
            }
            ServerCmd::Lost(grains) => {
                for g in grains {
                    if let Some(key) = self.table.key_of(&g) {
                        self.table.deactivate(key);
                    }
                }
            }
            ServerCmd::FleetChanged => {
                // An owner may have left: forget the redirects (they are asked again).
                self.elsewhere.map.clear();
                self.elsewhere.order.clear();
                let frame = crate::sync::lock(&self.shared.fleet).frame();
                for p in self.peers.values().filter(|p| !p.gone && p.watching) {
                    p.conn.push(Delivery::reliable_ordered(0), frame.clone());
                }
            }
            ServerCmd::CloseDrained(done) => {
                self.closing_drained.push(done);
                self.close_drained();
            }
            ServerCmd::DeactivateAll(done) => {
                if self.table.is_empty() {
                    let _ = done.send(());
                } else {
                    self.table.deactivate_where(|_| true);
                    self.all_gone.push(done);
                }
            }
        }
    }
}

impl Service for ServerService {
    fn poll(&mut self, now: Instant) {
        while let Ok(r) = self.reports.try_recv() {
            match r {
                Report::Done { token } => self.finished(token, now),
                Report::Gone { grain } => self.gone(grain, now),
                Report::Refused { grain, redirect } => {
                    // It may not run here: end it now (its calls are answered as it goes),
                    // and answer later calls for it without asking the directory again.
                    if let Some(key) = self.table.key_of(&grain) {
                        self.table.deactivate(key);
                    }
                    if let Some(payload) = redirect {
                        self.elsewhere.insert(grain, payload, now);
                    }
                }
            }
        }
        while let Ok(cmd) = self.cmds.try_recv() {
            self.command(cmd);
        }
        while let Some(Reverse((deadline, token))) = self.deadlines.peek().copied() {
            if !self.calls.contains_key(&token) {
                self.deadlines.pop(); // finished before its deadline
                continue;
            }
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            self.stop(token, Some(Status::DeadlineExceeded), now);
        }
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.sweep(now);
        }
        self.close_drained();
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected(conn) => {
                conn.push(Delivery::reliable_ordered(0), self.shared.manifest_frame());
                let peer = conn.peer_id();
                let caller = Caller::new(conn.remote_addr(), conn.client_identity().cloned());
                self.peers.insert(
                    peer,
                    PeerState {
                        conn,
                        by_id: HashMap::new(),
                        calls: IdSet::default(),
                        pending_bytes: 0,
                        activations: 0,
                        gone: false,
                        watching: false,
                        caller,
                    },
                );
            }
            Event::Message { peer, payload, .. } => self.message(peer, payload, now),
            Event::Disconnected { peer, .. } => self.on_disconnected(peer, now),
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((_, token))) = self.deadlines.peek() {
            if self.calls.contains_key(token) {
                break;
            }
            self.deadlines.pop();
        }
        let call = self.deadlines.peek().map(|Reverse((d, _))| *d);
        [call, self.next_sweep].into_iter().flatten().min()
    }

    fn shutdown(&mut self, _now: Instant) {
        self.accepting = false;
        self.table.deactivate_where(|_| true);
    }
}

impl Drop for ServerService {
    fn drop(&mut self) {
        // The endpoint's task is ending: activations go with it.
        for a in self.table.values() {
            a.task.abort();
        }
    }
}
