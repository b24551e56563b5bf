//! The client side of RPC, run inside the endpoint's task ([`Service`]): it owns the
//! correlation tables (one per server session) and the routing snapshot, so calls are inserted,
//! completed, expired, cancelled and retried by their one owner, and a response completes its
//! call within the pass that received it.
//!
//! It also judges servers' health (nothing heard for `health_timeout` while another server
//! is heard = dead), rebuilds and publishes the routing snapshot when servers, health or
//! manifests change, holds calls that wait for a server in on-demand mode, and reports server
//! events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use crossbeam::channel::Receiver;
use tokio::sync::oneshot;

use super::discovery::TopologyWatch;
use super::pool::Phase;
use super::{
    ClientEvent, ClientShared, ClusterMismatch, ConnectMode, Removal, ServerAddr, ServerView,
    route_error,
};
use crate::error::{CallError, CallErrorKind, DisconnectReason};
use crate::interface::DeliveryClass;
use crate::proto::ids::{GrainType, IdMap, PeerId, RequestId, ServerId};
use crate::proto::manifest::Manifest;
use crate::proto::rng::SplitMix64;
use crate::proto::route::{Affinity, Load, RouteTable, ServerEntry, Target};
use crate::proto::stats::CallAccounting;
use crate::proto::topology::Topology;
use crate::proto::wire::rpc::{self, RpcFrame, Status};
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::encode::PREFIX_GAP;
use crate::rpc::outbound::{Awaited, Lane, Outbound, Sent, resend_frame};
use crate::rpc::stream::StreamInbox;
use crate::sync::lock;
use crate::transport::{Connection, Delivery, Event, Service};

mod again;
mod answers;
mod calls;
mod observed;
mod peers;

/// What a call routes by, kept to route it again (after waiting for a server, or for a retry).
#[derive(Debug, Clone)]
pub(crate) struct Again {
    pub(crate) target: Target,
    pub(crate) hash: u64,
    pub(crate) affinity: Affinity,
    /// The method is `#[idempotent]`: it may be sent again after its server was lost.
    pub(crate) idempotent: bool,
    /// Its retry policy (an index into the client's `RetryTable`).
    pub(crate) retry: u16,
    /// How its request travels (`#[unreliable]`, `#[sequenced]`, or reliable-ordered).
    pub(crate) delivery: DeliveryClass,
    /// A stream call: where its items go (never sent again once one arrived).
    pub(crate) inbox: Option<Arc<StreamInbox>>,
    /// An `#[exactly_once]` call: its id, the same each time it is sent.
    pub(crate) once: Option<u64>,
}

/// What call futures and connection tasks ask of the service.
#[derive(Debug)]
pub(crate) enum ClientCmd {
    /// Send a request: `frame` holds [`PREFIX_GAP`] free bytes, then the call's
    /// server-independent part and arguments; `flags` go into the head byte. `to` is the
    /// server the caller routed it to (`None`: wait for one, on-demand mode).
    Call {
        to: Option<(PeerId, u32)>,
        frame: BytesMut,
        flags: u8,
        stream: u8,
        /// The call's deadline, from when the service takes it (on the endpoint's clock,
        /// which is tokio's virtual one on the simulated network).
        timeout: Duration,
        /// Where the caller waits for the outcome; `None` for a one-way call, which ends once
        /// it is queued on its connection (or fails here, counted as an error).
        kind: CallKind<Arc<CallCell>>,
        again: Again,
    },
    /// A caller gave up on a call.
    Cancel { peer: PeerId, id: RequestId },
    /// The reader of stream call `id` on `peer` read `more` items: grant them.
    Credit { peer: PeerId, id: RequestId, more: u32 },
    /// A connection task changed state.
    Poke,
    /// Take server `server` out of the client (`Client::remove_server`); `done` gets whether
    /// it was there, once it is gone.
    Remove { server: ServerId, how: Removal, done: oneshot::Sender<bool> },
    /// Drain the server at `addr` away (it left the topology, or became ineligible).
    RemoveAddr { addr: ServerAddr },
    /// Ask the server of the session at `addr` for its topology and publish every one it
    /// pushes into `topologies` (dropped when the session ends).
    Watch { addr: SocketAddr, topologies: TopologyWatch },
    /// Observer `n` was added (`observe`) or dropped: tell every server.
    Observe { n: u64, observe: bool },
}

/// A call not yet in a correlation table.
#[derive(Debug)]
struct Call {
    frame: BytesMut,
    flags: u8,
    stream: u8,
    started: Instant,
    deadline: Instant,
    /// `None` for a one-way call.
    kind: CallKind<Arc<CallCell>>,
    again: Again,
    /// Attempts sent so far (1 for a call never retried).
    attempts: u32,
    /// Sent to the grain's owner after a redirect (a second redirect is an error).
    redirected: bool,
    /// The order it was made in (calls to one grain keep it across a redirect).
    seq: u64,
    /// Redirected: where its owner is reached (it waits for that server while it connects).
    owner_at: Option<ServerAddr>,
    /// Redirected: its affinity before (the redirect requires the owner); it routes by it again
    /// if the owner turns out unreachable.
    before_redirect: Option<Affinity>,
}

/// What the client keeps with a call it sent, to route it again.
#[derive(Debug)]
struct Kept {
    again: Again,
    attempts: u32,
    redirected: bool,
    seq: u64,
}

/// A call sent and awaiting its answer.
type Pending = Sent<Kept>;

struct PeerState {
    conn: Connection,
    in_flight: Outbound<Kept>,
    manifest: Option<Arc<Manifest>>,
    load: Arc<Load>,
    /// Being removed with [`Removal::Drain`]: out of routing, closed once nothing is pending;
    /// who waits for it to be gone.
    leaving: Option<Vec<oneshot::Sender<bool>>>,
    /// Its session was told to close.
    closed: bool,
    /// Its calls' statistics (`ServerInfo::calls`).
    stats: Arc<std::sync::Mutex<CallAccounting>>,
    /// Discovery watches its topology here.
    watch: Option<TopologyWatch>,
    /// The number of the last sequenced update sent on this session.
    update_seq: u64,
}

impl PeerState {
    /// A leaving server with nothing pending: close its session (it is forgotten when the
    /// session has ended).
    fn close_if_drained(&mut self) {
        if self.leaving.is_some() && !self.closed && self.in_flight.is_empty() {
            self.conn.close(0);
            self.closed = true;
        }
    }
}

/// Why a pending call may be sent again.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// Its server answered with a status of this kind (the call did not run there).
    Refused(CallErrorKind),
    /// Its server closed drained before answering (it did not run there).
    Drained,
    /// Its server was lost (it may have run there).
    Lost(DisconnectReason),
}

impl Why {
    /// What the call fails with if the retry finds no server.
    fn error(self) -> CallError {
        match self {
            Self::Refused(CallErrorKind::UnknownGrainType) => CallError::UnknownGrainType,
            Self::Refused(CallErrorKind::Overloaded) => CallError::Overloaded,
            Self::Refused(CallErrorKind::UnknownMethod) => CallError::UnknownMethod,
            Self::Refused(_) | Self::Drained => CallError::ShuttingDown,
            Self::Lost(reason) => CallError::Disconnected(reason),
        }
    }
}

/// Calls to one grain held while its old server still has calls of it pending.
#[derive(Debug)]
struct Moving {
    from: PeerId,
    held: Vec<Call>,
}

/// A retry waiting for its backoff.
#[derive(Debug)]
struct Delayed {
    at: Instant,
    call: Call,
    /// The server it left (the retry goes elsewhere); none: any.
    from: Option<PeerId>,
    /// What it fails with if no server takes it then.
    fallback: CallError,
}

pub(crate) struct ClientService {
    shared: Arc<ClientShared>,
    cmds: Receiver<ClientCmd>,
    peers: IdMap<PeerId, PeerState>,
    /// Sessions in the order they were established.
    order: Vec<PeerId>,
    routes: Arc<RouteTable>,
    /// Calls waiting for a server (on-demand mode).
    parked: Vec<Call>,
    /// Sessions being drained away (`Removal::Drain`) and not yet ended.
    leaving: usize,
    /// Retries waiting for their backoff.
    delayed: Vec<Delayed>,
    /// Grains whose calls are being moved to their owner after a redirect.
    moving: std::collections::HashMap<(GrainType, u64), Moving>,
    /// The next call's `seq`.
    next_seq: u64,
    /// Where the directory said grains live: (grain type, grain hash) → owner (bounded).
    locations: std::collections::HashMap<(GrainType, u64), ServerId>,
    location_order: std::collections::VecDeque<(GrainType, u64)>,
    /// Draws the retries' backoff jitter.
    rng: SplitMix64,
    /// Origin of the load estimates' nanosecond clock.
    epoch: Option<Instant>,
    next_health_check: Option<Instant>,
    last_health_check: Option<Instant>,
    /// Servers' calls to this client's observers, until they end: where, to cancel them.
    observed:
        std::collections::HashMap<(PeerId, RequestId), (Arc<crate::rpc::turns::Mailbox>, u64)>,
    /// The next observer call's token.
    next_token: u64,
    /// Sequenced updates to this client's observers: per (session, observer, method), the
    /// last one taken and its job's token (see `observed::observer_update`).
    observer_updates:
        std::collections::HashMap<(PeerId, u64, crate::proto::ids::MethodId), (u64, u64)>,
}

impl ClientService {
    pub(crate) fn new(shared: Arc<ClientShared>, cmds: Receiver<ClientCmd>) -> Self {
        let base = shared.config.seed.unwrap_or_else(crate::sync::os_seed);
        let rng_seed = crate::proto::ids::fmix64(base ^ 0x2e72_1e5a);
        Self {
            shared,
            cmds,
            peers: IdMap::default(),
            order: Vec::new(),
            routes: Arc::default(),
            parked: Vec::new(),
            leaving: 0,
            delayed: Vec::new(),
            locations: Default::default(),
            location_order: Default::default(),
            moving: Default::default(),
            next_seq: 0,
            rng: SplitMix64::new(rng_seed),
            epoch: None,
            next_health_check: None,
            last_health_check: None,
            observed: Default::default(),
            observer_updates: Default::default(),
            next_token: 1,
        }
    }

    fn nanos(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_nanos() as u64
    }

    /// Ends a call with `error` (a one-way call, `cell` `None`, is only counted); whether it
    /// ended here (not already).
    fn fail(
        &self,
        cell: Option<&CallCell>,
        error: CallError<Infallible>,
        timeout: bool,
        now: Instant,
    ) -> bool {
        self.shared.call_failed(&error);
        let ended = cell.is_none_or(|c| c.complete(Err(error)));
        if ended {
            lock(&self.shared.accounting).failure(timeout, now);
            self.shared.finished_one();
        }
        ended
    }

    fn command(&mut self, cmd: ClientCmd, now: Instant) {
        match cmd {
            ClientCmd::Call { to, frame, flags, stream, timeout, kind, again } => {
                let call = Call {
                    frame,
                    flags,
                    stream,
                    started: now,
                    deadline: now + timeout,
                    kind,
                    again,
                    attempts: 1,
                    redirected: false,
                    seq: self.next_seq,
                    owner_at: None,
                    before_redirect: None,
                };
                self.next_seq += 1;
                self.dispatch(call, to, now);
            }
            ClientCmd::Cancel { peer, id } => self.cancel(peer, id, now),
            ClientCmd::Credit { peer, id, more } => {
                if let Some(p) = self.peers.get(&peer) {
                    p.in_flight.credit(&p.conn, id, more);
                }
            }
            ClientCmd::Poke => self.retry_parked(now),
            ClientCmd::Observe { n, observe } => self.observer_changed(n, observe),
            ClientCmd::Remove { server, how, done } => self.remove(&server, how, done, now),
            ClientCmd::RemoveAddr { addr } => self.remove_addr(&addr, now),
            ClientCmd::Watch { addr, topologies } => {
                let peer = self
                    .order
                    .iter()
                    .copied()
                    .find(|p| self.peers.get(p).is_some_and(|p| p.conn.remote_addr() == addr));
                // No such session (it ended meanwhile): dropping `topologies` says so.
                if let Some(p) = peer.and_then(|p| self.peers.get_mut(&p)) {
                    let mut out = Vec::with_capacity(1);
                    rpc::encode_watch(&mut out, true);
                    p.conn.push(Delivery::reliable_ordered(0), Bytes::from(out));
                    p.watch = Some(topologies);
                }
            }
        }
    }

    /// The sessions (in the order they were established) whose state satisfies `f`.
    fn peers_where(&self, f: impl Fn(&PeerState) -> bool) -> Vec<PeerId> {
        self.order.iter().copied().filter(|p| self.peers.get(p).is_some_and(&f)).collect()
    }
}

impl Service for ClientService {
    fn poll(&mut self, now: Instant) {
        while let Ok(cmd) = self.cmds.try_recv() {
            self.command(cmd, now);
        }
        self.observers_done();
        if !self.delayed.is_empty() {
            self.send_delayed(now);
        }
        if self.leaving > 0 {
            // Servers being drained away: close those whose last call ended.
            self.peers.values_mut().for_each(PeerState::close_if_drained);
        }
        if self.next_health_check.is_some_and(|t| now >= t) {
            self.check_health(now);
        }
        let t = self.nanos(now);
        let decay = self.shared.config.latency_decay;
        let mut expired = Vec::new();
        for p in self.peers.values_mut() {
            let (load, stats) = (&p.load, &p.stats);
            p.in_flight.expire(&p.conn, now, |pending| {
                load.finished(None, t, decay);
                expired.push((Some(pending.cell), Some(stats.clone())));
            });
        }
        let gone = |c: &Call| c.deadline <= now || c.kind.call().is_some_and(|c| c.is_cancelled());
        if self.parked.iter().any(gone) {
            let (gone, keep) = std::mem::take(&mut self.parked).into_iter().partition(gone);
            self.parked = keep;
            for call in gone {
                expired.push((call.kind.into_call(), None));
            }
        }
        if !self.moving.is_empty() {
            self.settle_moving(now);
        }
        for (cell, server) in expired {
            if self.fail(cell.as_deref(), CallError::Timeout, true, now)
                && let Some(server) = server
            {
                lock(&server).failure(true, now);
            }
        }
    }

    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected(conn) => {
                self.name_observers(&conn);
                let peer = conn.peer_id();
                let load = Arc::new(Load::new(conn.stats().rtt));
                self.peers.insert(
                    peer,
                    PeerState {
                        conn,
                        in_flight: Outbound::default(),
                        manifest: None,
                        load,
                        leaving: None,
                        closed: false,
                        stats: Arc::new(std::sync::Mutex::new(CallAccounting::new(now))),
                        watch: None,
                        update_seq: 0,
                    },
                );
                self.order.push(peer);
                self.rebuild();
                if self.next_health_check.is_none() {
                    self.next_health_check = Some(now + self.health_period());
                }
            }
            Event::Message { peer, payload, .. } => self.message(peer, payload, now),
            Event::Disconnected { peer, reason } => {
                if !self.observed.is_empty() {
                    self.observers_lost(peer);
                }
                self.lose_peer(peer, reason, now);
            }
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let calls = self.peers.values_mut().filter_map(|p| p.in_flight.next_deadline()).min();
        let parked = self.parked.iter().map(|c| c.deadline).min();
        let delayed = self.delayed.iter().map(|d| d.at).min();
        [calls, parked, delayed, self.next_health_check].into_iter().flatten().min()
    }

    fn shutdown(&mut self, now: Instant) {
        for call in std::mem::take(&mut self.parked) {
            self.fail(call.kind.call().map(Arc::as_ref), CallError::NotConnected, false, now);
        }
        for d in std::mem::take(&mut self.delayed) {
            self.fail(d.call.kind.call().map(Arc::as_ref), d.fallback, false, now);
        }
    }
}
