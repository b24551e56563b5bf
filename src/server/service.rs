//! The server side of RPC, run inside the endpoint's task ([`Service`]): it decodes calls,
//! checks them (grain type, version, method, budgets), routes each to its grain's activation
//! (creating it on the first call), tracks every call until its activation reports it done,
//! and enforces deadlines and cancellations. Idle activations are deactivated by a sweep of the
//! activation table's LRU queue; none of this needs a timer per call or per grain.
//!
//! Admission, in order (the first that fails answers the call; see `ServerConfig`):
//! the server accepts calls; the type's interface is hosted, with the method;
//! the caller's connection is under its pending-call count and bytes, and drains its answers
//! (under the transport's `send_buffer` and the pending-call count in unacknowledged answers);
//! the server as a whole is under its queued answer bytes, pending calls and pending bytes, or
//! the caller's address is under its share of each (then room is taken from the address most
//! over its share: see `server::budget`); and a call that needs a new activation finds room:
//! under the caller's activation share, and under `max_activations` and
//! `max_activation_bytes` once an idle activation is evicted if need be.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use crossbeam::channel::Receiver;
use tokio::sync::oneshot;

use super::ServerShared;
use super::activation::{Report, Reporter};
use super::budget::{self, AddrId, AddrLoads, Room};
use super::claims::DirectoryUse;
use super::context::{CallInfo, Caller};
use super::table::{Activation, Creator, Life, Table};
use crate::proto::gate::address_key;
use crate::proto::ids::{GrainId, IdMap, IdSet, PeerId, RequestId};
use crate::proto::manifest::Manifest;
use crate::proto::wire::rpc::{self, CallHeader, RpcFrame, Status};
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::dispatch;
use crate::rpc::outbound::Outbound;
use crate::rpc::stream::StreamCtl;
use crate::rpc::turns::{Job, Mailbox};
use crate::transport::{Connection, Delivery, Event, Service};

mod calls;
mod elsewhere;
mod ends;
mod observers;
mod presence;
mod room;
mod timers;
mod updates;

use self::elsewhere::Elsewhere;
pub(crate) use self::observers::ObserverCall;
use self::observers::Observers;
use self::presence::Watches;
pub(crate) use self::timers::HookCmds;

/// What a call costs the server beyond its arguments: its job, its record and their entries.
const CALL_COST: usize = 256;
/// Idle activations looked at (least recently used first) for one of the caller's own or of
/// an address over its share before an eviction falls back to the least recently used.
const EVICTION_SCAN: usize = 64;

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
    /// A grain calls an observer.
    ObserverCall(ObserverCall),
    /// A grain gave up on an observer call (sent over `peer` as `id`).
    ObserverCancel { peer: PeerId, id: RequestId },
    /// `grain` watches (`on`) or stops watching `peer`'s session (presence).
    Watch { peer: PeerId, grain: GrainId, on: bool },
    /// A timer of `grain` fired: queue its turn.
    Timer { grain: GrainId, timer: u64, call: crate::rpc::context::TimerCall },
    /// `grain` asked for its activation to end.
    Deactivate(GrainId),
    /// `grain` asked to be kept for at least this long.
    KeepAlive(GrainId, Duration),
}

struct CallRecord {
    peer: PeerId,
    /// The call's id (a call), or none (a one-way call).
    id: CallKind<RequestId>,
    grain: GrainId,
    mailbox: Arc<Mailbox>,
    /// What it is charged against the byte budgets: its arguments plus [`CALL_COST`].
    bytes: usize,
    /// The grains waiting on it (a call a grain made while serving another), to refuse a call
    /// that would wait on itself.
    chain: Option<Arc<[GrainId]>>,
    /// A stream: its credit and stop, shared with its pump.
    stream: Option<Arc<StreamCtl>>,
}

/// How a call came: a plain request or one-way call, a sequenced update (its number), or a
/// stream open (its caller's window and ordered stream).
#[derive(Debug, Clone, Copy)]
pub(super) enum Came {
    Plain,
    Update(u64),
    Stream {
        window: u32,
        lane: u8,
    },
    /// An `#[exactly_once]` call, with its caller's id for it.
    Once(u64),
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
    /// The topology frame it was sent last (a repeated `WATCH` gets nothing new).
    fleet_sent: Option<Bytes>,
    /// Who it is (what its calls' grains see).
    caller: Caller,
    /// Its address's entry (see `budget`).
    addr: AddrId,
    /// It was closed to make room for others (see `preempt_answers`); gone once it ends.
    shed: bool,
    /// Its client's observer instance, the observers it hosts on this session, and the calls
    /// grains made to them, awaited (see `observers`).
    instance: Option<u64>,
    observers: IdSet<u64>,
    outbound: Outbound<()>,
    /// The number of the last sequenced update sent to its observers.
    update_seq: u64,
    /// Its streams running now.
    streams: usize,
}

/// Why a call is refused, to count it.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Pending,
    SendQueue,
    Server,
    Activations,
}

/// An admitted call: its grain type's index, and the room it must take from others first.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    index: usize,
    /// The answer budget is at its bound, the caller's address under its share, and room
    /// must be made (no session closed for it is still on its way out).
    preempt_answers: bool,
    preempt_calls: bool,
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
    /// What each address holds (its shares of the budgets).
    loads: AddrLoads,
    /// When a session was last closed to make answer room, and what it held.
    answer_room: Option<(Instant, usize)>,
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
    /// Observers clients host, and grains' calls to them.
    observers: Observers,
    watches: Watches,
    /// Timers whose turns are queued or running.
    timers: timers::Timers,
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
            loads: AddrLoads::default(),
            answer_room: None,
            deadlines: BinaryHeap::new(),
            next_token: 1,
            next_sweep: None,
            accepting: true,
            drained: Vec::new(),
            closing_drained: Vec::new(),
            all_gone: Vec::new(),
            elsewhere,
            observers: Observers::default(),
            watches: Watches::default(),
            timers: timers::Timers::default(),
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

    /// Publishes the counts the `Server` handle reads.
    fn publish(&self) {
        let c = &self.shared.counters;
        c.activations.store(self.table.len(), Ordering::Relaxed);
        c.pending_calls.store(self.calls.len(), Ordering::Relaxed);
        c.pending_bytes.store(self.pending_bytes, Ordering::Relaxed);
    }

    fn message(&mut self, peer: PeerId, payload: Bytes, now: Instant) {
        let (id, call, head) = match rpc::decode_rpc(&payload) {
            Ok(RpcFrame::Request { id, call, args }) => {
                (CallKind::Call(id), call, payload.len() - args.len())
            }
            Ok(RpcFrame::OneWay { call, args }) => {
                (CallKind::OneWay, call, payload.len() - args.len())
            }
            Ok(RpcFrame::Cancel { id }) => {
                if let Some(token) = self.peers.get(&peer).and_then(|p| p.by_id.get(&id).copied()) {
                    self.stop(token, None, now);
                }
                return;
            }
            Ok(RpcFrame::Response { id, status, payload: body }) => {
                // A client answers an observer call.
                let body = payload.slice_ref(body);
                self.observer_answer(peer, id, status, body);
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_UPDATE => {
                match rpc::decode_update(body) {
                    Ok((seq, call, args)) => {
                        let args = payload.slice_ref(args);
                        self.call(peer, CallKind::OneWay, call, args, Came::Update(seq), now);
                    }
                    Err(error) => {
                        self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?peer, %error, "undecodable update from a client");
                    }
                }
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_STREAM_OPEN => {
                match rpc::decode_stream_open(body) {
                    Ok(open) => {
                        let args = payload.slice_ref(open.args);
                        let came = Came::Stream { window: open.window, lane: open.lane };
                        self.call(peer, CallKind::Call(open.id), open.call, args, came, now);
                    }
                    Err(error) => {
                        self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?peer, %error, "undecodable stream open from a client");
                    }
                }
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_ONCE => {
                match rpc::decode_once(body) {
                    Ok((call_id, id, call, args)) => {
                        let args = payload.slice_ref(args);
                        self.call(peer, CallKind::Call(id), call, args, Came::Once(call_id), now);
                    }
                    Err(error) => {
                        self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?peer, %error, "undecodable exactly-once call");
                    }
                }
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_STREAM_CREDIT => {
                match rpc::decode_stream_credit(body) {
                    Ok((id, more)) => self.stream_credit(peer, id, more),
                    Err(error) => {
                        self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(?peer, %error, "undecodable stream credit from a client");
                    }
                }
                return;
            }
            Ok(RpcFrame::Extended { kind, body })
                if kind == rpc::EXT_OBSERVE || kind == rpc::EXT_UNOBSERVE =>
            {
                self.observe(peer, kind == rpc::EXT_OBSERVE, body, now);
                return;
            }
            Ok(RpcFrame::Watch { subscribe }) => {
                if let Some(p) = self.peers.get_mut(&peer).filter(|p| !p.gone) {
                    p.watching |= subscribe;
                    // The fleet now, unless this session has it already or holds more than it
                    // may (a repeated `WATCH` costs nothing).
                    let frame = crate::sync::lock(&self.shared.fleet).frame();
                    if p.fleet_sent.as_ref() != Some(&frame)
                        && matches!(self.reporter.budget.room(&p.conn), Room::Fits | Room::Preempt)
                    {
                        p.conn.push(Delivery::reliable_ordered(0), frame.clone());
                        p.fleet_sent = Some(frame);
                    }
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
                    Some(id) => self.answer(peer, CallKind::Call(id), Status::BadRequest, &[]),
                    None => tracing::debug!(?peer, %error, "undecodable frame from a client"),
                }
                return;
            }
        };
        let mut args = payload;
        args.advance(head);
        self.call(peer, id, call, args, Came::Plain, now);
    }

    /// The caller of stream call `id` read `more` items.
    fn stream_credit(&mut self, peer: PeerId, id: RequestId, more: u32) {
        let token = self.peers.get(&peer).and_then(|p| p.by_id.get(&id).copied());
        if let Some(ctl) = token.and_then(|t| self.calls.get(&t)).and_then(|r| r.stream.as_ref()) {
            ctl.grant(more);
        }
    }

    /// Stops the stream of every call that `f` picks (running, or yet to start), with
    /// `status` as its end.
    fn stop_streams(&self, status: Status, f: impl Fn(&CallRecord, &StreamCtl) -> bool) {
        for rec in self.calls.values() {
            if let Some(ctl) = rec.stream.as_ref().filter(|c| f(rec, c)) {
                ctl.stop(Some(status));
            }
        }
    }

    fn command(&mut self, cmd: ServerCmd, now: Instant) {
        match cmd {
            ServerCmd::ObserverCall(call) => self.observer_call(call, now),
            ServerCmd::ObserverCancel { peer, id } => self.observer_cancel(peer, id),
            ServerCmd::Watch { peer, grain, on } => self.watch(peer, grain, on, now),
            ServerCmd::Timer { grain, timer, call } => self.timer_turn(grain, timer, call),
            ServerCmd::Deactivate(grain) => {
                if let Some(key) = self.table.key_of(&grain) {
                    self.table.deactivate(key);
                }
            }
            ServerCmd::KeepAlive(grain, d) => {
                if let Some(key) = self.table.key_of(&grain) {
                    self.table.keep_until(key, now + d);
                }
            }
            ServerCmd::Drain(done) => {
                self.accepting = false;
                // A stream may run for ever: it ends now (`ShuttingDown`, with the items sent
                // so far delivered), so that the drain does not wait for it.
                self.stop_streams(Status::ShuttingDown, |_, _| true);
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
                let budget = self.reporter.budget;
                for p in self.peers.values_mut().filter(|p| !p.gone && p.watching) {
                    if budget.may_queue(&p.conn) {
                        p.conn.push(Delivery::reliable_ordered(0), frame.clone());
                        p.fleet_sent = Some(frame.clone());
                    }
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
                Report::Done { token } => {
                    if !self.timers.pending.is_empty() {
                        self.timers.done(token);
                    }
                    self.finished(token, now)
                }
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
            self.command(cmd, now);
        }
        self.observers_due(now);
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
                let session = presence::session_of(peer);
                let identity = conn.client_identity().cloned();
                let caller = Caller::new(session, conn.remote_addr(), identity);
                let addr = self.loads.join(address_key(conn.remote_addr().ip()));
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
                        fleet_sent: None,
                        caller,
                        addr,
                        shed: false,
                        instance: None,
                        observers: IdSet::default(),
                        outbound: Outbound::default(),
                        update_seq: 0,
                        streams: 0,
                    },
                );
            }
            Event::Message { peer, payload, .. } => self.message(peer, payload, now),
            Event::Disconnected { peer, reason } => {
                // A client that closed its session left for good: its observers with it.
                let left = matches!(reason, crate::error::DisconnectReason::ClosedByPeer { .. });
                self.observers_gone(peer, left, now);
                let caller = self.peers.get(&peer).map(|p| p.caller.clone());
                self.on_disconnected(peer, now);
                // After its queued calls are dropped: the watchers' turns are not its calls.
                if let Some(caller) = caller {
                    self.tell_watchers(peer, caller, reason, now);
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
        let observers = self.observers_next_deadline();
        [call, self.next_sweep, observers].into_iter().flatten().min()
    }

    fn shutdown(&mut self, _now: Instant) {
        self.accepting = false;
        self.table.deactivate_where(|_| true);
    }
}

impl Drop for ServerService {
    fn drop(&mut self) {
        // The endpoint's task is ending: activations go with it, and streams.
        for a in self.table.values() {
            a.task.abort();
        }
        for ctl in self.calls.values().filter_map(|r| r.stream.as_ref()) {
            ctl.stop(None);
        }
    }
}
