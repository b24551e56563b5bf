//! The state a client's handles, references, connection tasks and endpoint task share: the
//! published view (routing snapshot, live servers), the connection slots, pending-call count,
//! spare call cells, retry policies and events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam::queue::ArrayQueue;
use tokio::sync::{Notify, broadcast};

use super::options::{
    ClientConfig, ClientError, ClientEvent, ClusterMismatch, ConnectMode, RetryPolicy, ServerAddr,
};
use super::pool::{Phase, Slot};
use super::service::ClientCmd;
use super::{discovery, pool};
use crate::error::{CallError, ConnectError, DisconnectReason};
use crate::proto::ids::{GrainType, MethodId, PeerId};
use crate::proto::manifest::Manifest;
use crate::proto::route::{Load, RouteError, RouteTable, Strategies, Target};
use crate::proto::stats::CallAccounting;
use crate::rpc::call::CallCell;
use crate::rpc::reference::GrainRef;
use crate::sync::lock;
use crate::transport::{Connection, Endpoint, EndpointShared};

/// What the client's task publishes for callers and `Client` methods.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The routing snapshot (replaced, never changed in place).
    pub(crate) routes: Arc<RouteTable>,
    /// Live sessions, in the order they were established.
    pub(crate) servers: Vec<ServerView>,
    /// Why the latest session ended.
    pub(crate) last_gone: Option<DisconnectReason>,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerView {
    pub(crate) conn: Connection,
    pub(crate) manifest: Option<Arc<Manifest>>,
    pub(crate) load: Arc<Load>,
    pub(crate) stats: Arc<Mutex<CallAccounting>>,
}

/// State shared by `Client` handles, grain references, the connection tasks and the client's
/// endpoint task.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(crate) config: ClientConfig,
    pub(super) endpoint: Mutex<Option<Endpoint>>,
    pub(super) task: OnceLock<Arc<EndpointShared>>,
    pub(super) cmds: crossbeam::channel::Sender<ClientCmd>,
    /// Published by the task, read by callers; held only to route or copy a small value.
    pub(super) view: Mutex<View>,
    /// Bumped (under the `view` lock) whenever the routing snapshot is replaced: callers keep
    /// the snapshot they last read per thread and lock the view only when this moved.
    pub(crate) routes_version: AtomicU64,
    /// This client among all clients of the process (the per-thread snapshot cache's key).
    pub(crate) client_id: u64,
    pub(crate) changed: Notify,
    pub(super) accounting: Mutex<CallAccounting>,
    /// One-way calls sent (counted apart from `accounting`: no lock on their path).
    pub(crate) one_way_sent: std::sync::atomic::AtomicU64,
    pub(super) pending: AtomicUsize,
    /// Finished calls' cells, reused by later calls (saves an allocation per call).
    pub(super) spare_cells: ArrayQueue<Arc<CallCell>>,
    pub(crate) strategies: Strategies,
    /// One per connection task: the addresses it connects to and its state. Slots are added
    /// and retired while the client runs; held only to copy or change the list.
    pub(crate) slots: Mutex<Vec<Arc<Slot>>>,
    /// Seeds the next slot's reconnect jitter.
    pub(super) slot_seed: Mutex<u64>,
    /// Servers found to be of another cluster, by address (their slots are retired).
    pub(crate) refused: Mutex<Vec<ClusterMismatch>>,
    /// The client's socket is IPv6 (server names resolve to addresses of its family).
    pub(crate) v6: bool,
    /// Set when the client follows a topology source.
    pub(crate) discovery: Option<Arc<discovery::Discovery>>,
    /// Retry policies: the client's, and those of single methods.
    pub(crate) retry: RetryTable,
    pub(super) events: broadcast::Sender<ClientEvent>,
    pub(crate) closing: AtomicBool,
    pub(super) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Calls wait for a server while the client is [`starting`](Self::starting) (a game
    /// server's fleet client, which nobody waits for to connect).
    pub(crate) wait_while_starting: bool,
    /// The next `#[exactly_once]` call's id: a random start, then one more per call (unique
    /// within the client; across clients, as a random 64-bit start is).
    pub(crate) next_call_id: AtomicU64,
    /// The observers it hosts.
    pub(crate) observers: super::observers::Observers,
}

impl ClientShared {
    /// Changes the published view and wakes whoever waits for a change.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut View)) {
        {
            let mut view = lock(&self.view);
            f(&mut view);
            self.routes_version.fetch_add(1, Ordering::Release);
        }
        self.changed.notify_waiters();
    }

    /// Runs `f` on the current routing snapshot: the one this thread read last, unless it was
    /// replaced since (then the view is locked once to read the new one).
    pub(super) fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        let version = self.routes_version.load(Ordering::Acquire);
        ROUTES.with_borrow_mut(|cached| {
            let fresh =
                cached.as_ref().is_some_and(|(c, v, _)| *c == self.client_id && *v == version);
            if !fresh {
                let view = lock(&self.view);
                let version = self.routes_version.load(Ordering::Acquire);
                *cached = Some((self.client_id, version, view.routes.clone()));
            }
            let (_, _, routes) = cached.as_ref().expect("filled above");
            f(routes)
        })
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        tracing::debug!(?event, "client event");
        // No receiver is fine: nobody listens.
        let _ = self.events.send(event);
    }

    pub(crate) fn finished_one(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn wake(&self) {
        if let Some(t) = self.task.get() {
            t.wake.notify();
        }
    }

    /// Tells the client's task something changed outside it (a connection attempt ended).
    pub(crate) fn poke(&self) {
        if self.cmds.send(ClientCmd::Poke).is_ok() {
            self.wake();
        }
    }

    /// Routes a call: the server session and the type's index there, or `None` when the call
    /// must wait for a server (on-demand mode).
    pub(super) fn route(
        &self,
        target: &Target,
        r: &GrainRef,
    ) -> Result<Option<(PeerId, u32)>, CallError<Infallible>> {
        if self.wait_while_starting && self.starting() {
            // Route only once every server was tried: a server connected first would take
            // grains that belong to one still connecting.
            return Ok(None);
        }
        let routed = self.with_routes(|routes| {
            routes.route(target, r.hash, &r.affinity).map(|d| {
                tracing::debug!(
                    grain = %r.id, server = %d.candidate.server, reason = ?d.reason,
                    strategy = d.strategy, candidates = d.candidates, "routed"
                );
                (d.candidate.peer, d.candidate.type_index)
            })
        });
        match routed {
            Ok(to) => Ok(Some(to)),
            Err(e) => {
                if self.waits_for_servers() {
                    tracing::debug!(grain = %r.id, error = ?e, "waiting for a server");
                    return Ok(None);
                }
                tracing::debug!(grain = %r.id, error = ?e, "no route");
                let e = route_error(e);
                self.call_failed(&e);
                Err(e)
            }
        }
    }

    /// A call failed with `error`: a client following a topology source may ask it again.
    pub(crate) fn call_failed(&self, error: &CallError) {
        if let Some(d) = &self.discovery {
            d.call_failed(error);
        }
    }

    /// Retires `slot` and drops it from the list.
    pub(crate) fn drop_slot(&self, slot: &Arc<Slot>) {
        slot.retire();
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// On-demand: whether some server is not connected yet or its manifest is on its way (a
    /// call may wait for it).
    pub(crate) fn could_connect_more(&self) -> bool {
        self.slots()
            .iter()
            .any(|s| matches!(s.phase(), Phase::Idle | Phase::Connecting | Phase::Connected))
    }

    /// Whether the client is still finding its first servers: its topology source has given
    /// neither a topology nor an error yet, or a server has not been tried once.
    pub(crate) fn starting(&self) -> bool {
        self.discovery.as_ref().is_some_and(|d| d.undecided())
            || self.slots().iter().any(|s| !s.settled())
    }

    /// Whether a call that finds no server waits for one (on demand, or while starting).
    pub(crate) fn waits_for_servers(&self) -> bool {
        (self.config.mode == ConnectMode::OnDemand && self.could_connect_more())
            || (self.wait_while_starting && self.starting())
    }

    /// The live slots.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).clone()
    }

    /// A server at `addr` is of another cluster: its slot is retired, the error kept for
    /// whoever waits for it, and an event says so.
    pub(crate) fn refuse(&self, addr: SocketAddr, mismatch: ClusterMismatch) {
        self.retire_slots(&[addr]);
        self.emit(ClientEvent::WrongCluster(mismatch.clone()));
        let mut refused = lock(&self.refused);
        refused.retain(|m| m.addr != addr); // one entry per address
        refused.push(mismatch);
        drop(refused);
        self.changed.notify_waiters();
    }

    /// Retires the slots that connect to any of `addrs` (they stop reconnecting) and drops
    /// them from the list.
    pub(crate) fn retire_slots(&self, addrs: &[SocketAddr]) {
        lock(&self.slots).retain(|s| {
            let hit = addrs.iter().any(|a| s.matches(*a));
            if hit {
                s.retire();
            }
            !hit
        });
    }

    /// The slot connecting to `addrs[0]` if there is one (`false`), else a new slot for
    /// `addrs` with its connection task started (`true`); `None` once the client is closed.
    pub(crate) fn add_slot(self: &Arc<Self>, addrs: Vec<ServerAddr>) -> Option<(Arc<Slot>, bool)> {
        let connector = lock(&self.endpoint).as_ref()?.connector();
        let mut slots = lock(&self.slots);
        // The same address, or an `ip:port` a name already resolved to.
        let same = |s: &&Arc<Slot>| {
            s.addrs.contains(&addrs[0]) || addrs[0].ip().is_some_and(|ip| s.matches(ip))
        };
        if let Some(s) = slots.iter().find(same) {
            return Some((s.clone(), false));
        }
        let slot = Arc::new(Slot::new(addrs));
        let seed = {
            let mut s = lock(&self.slot_seed);
            *s = crate::proto::ids::fmix64(s.wrapping_add(1));
            *s
        };
        slots.push(slot.clone());
        drop(slots);
        let task = tokio::spawn(pool::run(self.clone(), slot.clone(), connector, seed));
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished()); // retired slots' tasks
        tasks.push(task);
        Some((slot, true))
    }
}

/// Waits until `slot`'s server is connected and its manifest known, at most `timeout`:
/// the session's address, or why not.
pub(crate) async fn wait_slot_ready(
    shared: &ClientShared,
    slot: &Slot,
    timeout: Duration,
) -> Result<SocketAddr, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(at) = discovery::session_addr(shared, slot) {
            return Ok(at);
        }
        if slot.retired() {
            let refused = lock(&shared.refused);
            return Err(match refused.iter().find(|m| slot.matches(m.addr)) {
                Some(m) => ClientError::WrongCluster(Box::new(m.clone())),
                None => ClientError::Closed,
            });
        }
        if slot.phase() == Phase::Backoff
            && let Some((_, Some(e))) = slot.errors().into_iter().next()
        {
            return Err(ClientError::Connect(e));
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(match slot.phase() {
                Phase::Connected => ClientError::NoManifest,
                _ => ClientError::Connect(
                    slot.errors()
                        .into_iter()
                        .find_map(|(_, e)| e)
                        .unwrap_or(ConnectError::Failed(DisconnectReason::Timeout)),
                ),
            });
        }
    }
}

pub(super) fn view_gone(shared: &ClientShared) -> Option<DisconnectReason> {
    let v = lock(&shared.view);
    if v.servers.is_empty() { v.last_gone } else { None }
}

/// The error a call gets when it cannot be routed. With no server at all it is
/// `NotConnected`, never `Disconnected`: that one is for calls that were pending on a server
/// when it was lost (they may have run); this call was sent nowhere
/// ([`Client::disconnect_reason`] says why the last server went).
pub(crate) fn route_error(e: RouteError) -> CallError<Infallible> {
    match e {
        RouteError::NoServers => CallError::NotConnected,
        RouteError::NotHosted => CallError::UnknownGrainType,
        RouteError::Incompatible { ours, theirs } => {
            CallError::IncompatibleVersion { ours, theirs }
        }
        RouteError::Unavailable(s) => CallError::ServerUnavailable(s),
        RouteError::Draining => CallError::ShuttingDown,
    }
}

impl ClientShared {
    /// Stops reconnecting: the connection tasks end.
    pub(super) fn stop_tasks(&self) {
        self.closing.store(true, Ordering::Release);
        self.observers.stop_all();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

/// The client's retry policies: index 0 is the client's own, the others single methods'.
#[derive(Debug)]
pub(crate) struct RetryTable {
    policies: Vec<RetryPolicy>,
    by_method: Vec<((GrainType, MethodId), u16)>,
}

impl RetryTable {
    /// `default`, and one policy per `(grain type, method)`; `config` names methods as
    /// `"GrainType.method"`.
    pub(crate) fn new(
        config: &ClientConfig,
        overrides: Vec<((GrainType, MethodId), RetryPolicy)>,
    ) -> Self {
        let mut t = Self { policies: vec![config.retry.clone()], by_method: Vec::new() };
        let named = config.retry_methods.iter().filter_map(|(name, p)| {
            let (g, m) = name.split_once('.')?;
            Some(((GrainType::of(g), MethodId::of(m)), p.clone()))
        });
        for (key, policy) in named.chain(overrides) {
            t.by_method.retain(|(k, _)| *k != key); // the last one given counts
            t.by_method.push((key, t.policies.len() as u16));
            t.policies.push(policy);
        }
        t
    }

    /// The policy of `method` of `grain_type` (no search when no method has its own).
    pub(crate) fn index(&self, grain_type: GrainType, method: MethodId) -> u16 {
        if self.by_method.is_empty() {
            return 0;
        }
        let key = (grain_type, method);
        self.by_method.iter().find(|(k, _)| *k == key).map_or(0, |(_, i)| *i)
    }

    pub(crate) fn get(&self, index: u16) -> &RetryPolicy {
        &self.policies[usize::from(index)]
    }
}

thread_local! {
    /// The routing snapshot this thread read last: (client, its version, the snapshot).
    static ROUTES: std::cell::RefCell<Option<(u64, u64, Arc<RouteTable>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Client ids, for the per-thread snapshot cache.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_client_id() -> u64 {
    NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)
}

/// How many events a slow [`Client::events`] receiver may fall behind.
pub(crate) const EVENT_BACKLOG: usize = 1024;

/// How many finished calls' cells a client keeps for reuse.
pub(crate) const SPARE_CELLS: usize = 256;
