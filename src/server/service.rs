//! The server side of RPC, run inside the endpoint's task ([`Service`]): it decodes calls,
//! checks them (grain type, version, method, load), routes each to its grain's activation
//! (creating it on the first call), tracks every call until its activation reports it done,
//! and enforces deadlines and cancellations. Idle activations are deactivated by a periodic
//! sweep; none of this needs a timer per call or per grain.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use crossbeam::channel::Receiver;
use tokio::sync::oneshot;

use super::activation::{Job, Mailbox, Report, Reporter};
use super::{Registered, ServerShared};
use crate::proto::ids::{GrainId, PeerId, RequestId};
use crate::proto::manifest::Manifest;
use crate::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use crate::transport::{Connection, Delivery, Event, Service};

/// What the `Server` handle asks of the service.
#[derive(Debug)]
pub(crate) enum ServerCmd {
    /// Refuse new calls; answer once no call is pending.
    Drain(oneshot::Sender<()>),
    /// Deactivate every activation; answer once all are gone.
    DeactivateAll(oneshot::Sender<()>),
    /// Registry entry `index` was turned on or off: send the new manifest to every session
    /// (and deactivate the type's activations when it is off).
    ManifestChanged { index: usize, hosted: bool },
}

enum Life {
    Active,
    /// Told to deactivate; calls that arrive meanwhile wait here for the next activation.
    Deactivating(Vec<Job>),
}

struct Activation {
    mailbox: Arc<Mailbox>,
    life: Life,
    /// Calls routed to it and not reported done.
    busy: usize,
    last_used: Instant,
    task: tokio::task::JoinHandle<()>,
    index: usize,
}

struct CallRecord {
    peer: PeerId,
    id: Option<RequestId>,
    grain: GrainId,
    mailbox: Arc<Mailbox>,
    /// The size of its arguments (counted against the peer's byte budget).
    bytes: usize,
}

struct PeerState {
    conn: Connection,
    /// Pending requests from this peer, by id.
    by_id: HashMap<RequestId, u64>,
    /// All pending calls from this peer (requests and one-way).
    pending: usize,
    /// The argument bytes of those calls.
    pending_bytes: usize,
    /// The session ended; the state stays until its running calls finish.
    gone: bool,
}

pub(crate) struct ServerService {
    shared: Arc<ServerShared>,
    reporter: Reporter,
    reports: Receiver<Report>,
    cmds: Receiver<ServerCmd>,
    activations: HashMap<GrainId, Activation>,
    peers: HashMap<PeerId, PeerState>,
    calls: HashMap<u64, CallRecord>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_token: u64,
    next_sweep: Option<Instant>,
    accepting: bool,
    drained: Vec<oneshot::Sender<()>>,
    all_gone: Vec<oneshot::Sender<()>>,
}

/// Answers a call from the service itself. Wakes the task: this may run after the pass's
/// transmissions (from `event`).
fn respond(conn: &Connection, id: RequestId, status: Status, payload: &[u8]) {
    let mut out = Vec::with_capacity(8 + payload.len());
    rpc::encode_response(&mut out, id, status);
    out.extend_from_slice(payload);
    conn.send_unbounded(Delivery::ReliableUnordered, Bytes::from(out));
}

impl ServerService {
    pub(crate) fn new(
        shared: Arc<ServerShared>,
        reporter: Reporter,
        reports: Receiver<Report>,
        cmds: Receiver<ServerCmd>,
    ) -> Self {
        Self {
            shared,
            reporter,
            reports,
            cmds,
            activations: HashMap::new(),
            peers: HashMap::new(),
            calls: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_token: 1,
            next_sweep: None,
            accepting: true,
            drained: Vec::new(),
            all_gone: Vec::new(),
        }
    }

    fn idle(&self) -> Duration {
        self.shared.config.idle_deactivation
    }

    /// Checks a call against what is hosted; the registered type, or the status to answer.
    fn admit(
        &self,
        peer: PeerId,
        call: &CallHeader,
        args: usize,
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
        let (calls, bytes) = self.peers.get(&peer).map_or((0, 0), |p| (p.pending, p.pending_bytes));
        let config = &self.shared.config;
        // A call is admitted while under both budgets (a lone call always fits the bytes).
        if calls >= config.max_pending_per_connection
            || (calls > 0 && bytes + args > config.max_pending_bytes_per_connection)
        {
            return Err((Status::Overloaded, Vec::new()));
        }
        Ok(index)
    }

    fn call(
        &mut self,
        peer: PeerId,
        id: Option<RequestId>,
        call: CallHeader,
        args: Bytes,
        now: Instant,
    ) {
        let index = match self.admit(peer, &call, args.len()) {
            Ok(i) => i,
            Err((status, payload)) => {
                if let (Some(id), Some(p)) = (id, self.peers.get(&peer)) {
                    respond(&p.conn, id, status, &payload);
                }
                return;
            }
        };
        let grain = GrainId { ty: self.shared.registry[index].info.grain_type, key: call.key };
        if self.activations.len() >= self.shared.config.max_activations
            && !self.activations.contains_key(&grain)
        {
            if let (Some(id), Some(p)) = (id, self.peers.get(&peer)) {
                respond(&p.conn, id, Status::Overloaded, &[]);
            }
            return;
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
        p.pending += 1;
        p.pending_bytes += args.len();
        let bytes = args.len();
        let job = Job { token, reply, method: call.method, args, deadline };
        let mailbox = self.route(grain.clone(), index, job, now);
        self.calls.insert(token, CallRecord { peer, id, grain, mailbox, bytes });
        self.deadlines.push(Reverse((deadline, token)));
    }

    /// Hands a job to its grain's activation, activating it if needed.
    fn route(&mut self, grain: GrainId, index: usize, job: Job, now: Instant) -> Arc<Mailbox> {
        if let Some(a) = self.activations.get_mut(&grain) {
            a.busy += 1;
            a.last_used = now;
            match &mut a.life {
                Life::Active => a.mailbox.push(job),
                Life::Deactivating(waiting) => waiting.push(job),
            }
            return a.mailbox.clone();
        }
        let mailbox = Arc::new(Mailbox::default());
        mailbox.push(job);
        let task = self.shared.registry[index].spawn.spawn(
            grain.clone(),
            mailbox.clone(),
            self.reporter.clone(),
        );
        self.activations.insert(
            grain,
            Activation {
                mailbox: mailbox.clone(),
                life: Life::Active,
                busy: 1,
                last_used: now,
                task,
                index,
            },
        );
        self.shared.activations.store(self.activations.len(), Ordering::Release);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_period());
        }
        mailbox
    }

    fn sweep_period(&self) -> Duration {
        (self.idle() / 4).max(Duration::from_millis(10))
    }

    /// A call ended: forget it.
    fn finished(&mut self, token: u64, now: Instant) {
        let Some(rec) = self.calls.remove(&token) else { return };
        if let Some(p) = self.peers.get_mut(&rec.peer) {
            p.pending -= 1;
            p.pending_bytes -= rec.bytes;
            if let Some(id) = rec.id {
                p.by_id.remove(&id);
            }
            if p.gone && p.pending == 0 {
                self.peers.remove(&rec.peer);
            }
        }
        if let Some(a) = self.activations.get_mut(&rec.grain) {
            a.busy = a.busy.saturating_sub(1);
            a.last_used = now;
        }
        self.shared.calls_done.fetch_add(1, Ordering::Relaxed);
        if self.calls.is_empty() && !self.accepting {
            for d in self.drained.drain(..) {
                let _ = d.send(());
            }
        }
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
            None => rec.mailbox.cancel_running(token),
        }
    }

    fn gone(&mut self, grain: GrainId, now: Instant) {
        let Some(a) = self.activations.remove(&grain) else { return };
        if let Life::Deactivating(waiting) = a.life {
            // Calls came in while it deactivated: start a fresh activation for them.
            let mut jobs = waiting.into_iter();
            if let Some(first) = jobs.next() {
                let mailbox = self.route(grain.clone(), a.index, first, now);
                for job in jobs {
                    mailbox.push(job);
                }
                if let Some(na) = self.activations.get_mut(&grain) {
                    na.busy = a.busy;
                }
                for rec in self.calls.values_mut().filter(|r| r.grain == grain) {
                    rec.mailbox = mailbox.clone();
                }
            }
        }
        self.shared.activations.store(self.activations.len(), Ordering::Release);
        if self.activations.is_empty() {
            for d in self.all_gone.drain(..) {
                let _ = d.send(());
            }
        }
    }

    fn deactivate(a: &mut Activation) {
        if matches!(a.life, Life::Active) {
            a.life = Life::Deactivating(Vec::new());
            a.mailbox.close();
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.idle();
        for a in self.activations.values_mut() {
            if a.busy == 0 && now >= a.last_used + idle && a.mailbox.is_empty() {
                Self::deactivate(a);
            }
        }
        self.next_sweep = (!self.activations.is_empty()).then(|| now + self.sweep_period());
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
            Ok(other) => {
                tracing::debug!(?peer, frame = ?other, "unexpected frame from a client; ignored");
                return;
            }
            Err(error) => {
                tracing::debug!(?peer, %error, "undecodable frame from a client; ignored");
                return;
            }
        };
        let mut args = payload;
        args.advance(head);
        self.call(peer, id, call, args, now);
    }
}

impl Service for ServerService {
    fn poll(&mut self, now: Instant) {
        while let Ok(r) = self.reports.try_recv() {
            match r {
                Report::Done { token } => self.finished(token, now),
                Report::Gone { grain } => self.gone(grain, now),
            }
        }
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                ServerCmd::Drain(done) => {
                    self.accepting = false;
                    // Tell clients at once: they route new calls elsewhere while the pending
                    // ones finish here.
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
                        self.activations
                            .values_mut()
                            .filter(|a| a.index == index)
                            .for_each(Self::deactivate);
                    }
                }
                ServerCmd::DeactivateAll(done) => {
                    if self.activations.is_empty() {
                        let _ = done.send(());
                    } else {
                        self.activations.values_mut().for_each(Self::deactivate);
                        self.all_gone.push(done);
                    }
                }
            }
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
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected(conn) => {
                conn.send_unbounded(Delivery::reliable_ordered(0), self.shared.manifest_frame());
                let peer = conn.peer_id();
                self.peers.insert(
                    peer,
                    PeerState {
                        conn,
                        by_id: HashMap::new(),
                        pending: 0,
                        pending_bytes: 0,
                        gone: false,
                    },
                );
            }
            Event::Message { peer, payload, .. } => self.message(peer, payload, now),
            Event::Disconnected { peer, .. } => {
                // Nobody waits for this peer's queued calls any more; running ones finish.
                let tokens: Vec<u64> =
                    self.calls.iter().filter(|(_, r)| r.peer == peer).map(|(t, _)| *t).collect();
                for t in tokens {
                    if let Some(rec) = self.calls.get(&t) {
                        if rec.mailbox.remove(t).is_some() {
                            self.finished(t, now);
                        }
                    }
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.by_id.clear();
                    p.gone = true;
                }
                if self.peers.get(&peer).is_some_and(|p| p.pending == 0) {
                    self.peers.remove(&peer);
                }
            }
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
        for a in self.activations.values_mut() {
            Self::deactivate(a);
        }
    }
}

impl Drop for ServerService {
    fn drop(&mut self) {
        // The endpoint's task is ending: activations go with it.
        for a in self.activations.values() {
            a.task.abort();
        }
    }
}
