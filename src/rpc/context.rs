//! What code running in a grain knows of where it runs: who made the call it serves
//! ([`caller`]), and the grain itself ([`context`]: its id, its own reference, references to
//! other grains). The calls it makes carry what is left of the served call's deadline and the
//! call chain (the grains waiting on them), so a callee sees the calling grain as its caller
//! and a host can refuse a call that would wait on itself. Whoever hosts grains sets it around
//! each call and hook.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::reference::{GrainInterface, GrainRef};
use super::value::Binding;
use crate::error::{DisconnectReason, ReferenceError};
use crate::proto::ids::{GrainId, GrainKey, ServerId};
use crate::transport::ClientIdentity;

tokio::task_local! {
    /// The grain whose call or hook runs now (set around each call's and hook's future).
    static CURRENT: Current;
}

/// Who made a call: its address, and, when it connected with a verified connect token, its
/// identity (a player's client id and user data, or the server id of another game server's
/// grain-to-grain client); for a call one grain made while serving another, that grain and the
/// chain of grains waiting on it. Cheap to clone (one reference count: every call's job holds
/// one, and a job that fits a few cache lines moves without a `memcpy` call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(Arc<CallerInner>);

#[derive(Debug, PartialEq, Eq)]
struct CallerInner {
    /// The session the call came over.
    session: SessionId,
    addr: SocketAddr,
    identity: Option<Arc<ClientIdentity>>,
    /// The grains waiting on this call, outermost first, the calling grain last (none for a
    /// call from a client).
    chain: Option<Arc<[GrainId]>>,
}

impl Caller {
    pub(crate) fn new(
        session: SessionId,
        addr: SocketAddr,
        identity: Option<Arc<ClientIdentity>>,
    ) -> Self {
        Self(Arc::new(CallerInner { session, addr, identity, chain: None }))
    }

    /// The session the call came over: what [`GrainContext::watch`] watches.
    pub fn session(&self) -> SessionId {
        self.0.session
    }

    /// The same caller, for a call made by the last grain of `chain` (empty: by no grain).
    pub(crate) fn with_chain(&self, chain: Vec<GrainId>) -> Self {
        let chain = (!chain.is_empty()).then(|| chain.into());
        let inner = &self.0;
        let (session, addr, identity) = (inner.session, inner.addr, inner.identity.clone());
        Self(Arc::new(CallerInner { session, addr, identity, chain }))
    }

    /// The chain, shared (what a host keeps of a running call).
    pub(crate) fn shared_chain(&self) -> Option<Arc<[GrainId]>> {
        self.0.chain.clone()
    }

    /// The address the call came from.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The identity its connect token gave (`None` on a trusted network: nobody proved who
    /// they are).
    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.0.identity.as_deref()
    }

    /// The player's client id, as the backend put it in the token (`None` without a token, and
    /// for another server's grain-to-grain calls).
    pub fn client_id(&self) -> Option<u64> {
        self.identity().filter(|i| i.server_id.is_none()).map(|i| i.client_id)
    }

    /// The token's application data (empty without a token).
    pub fn user_data(&self) -> &[u8] {
        self.identity().map_or(&[], |i| &i.user_data)
    }

    /// For a grain-to-grain call from another game server: its id.
    pub fn server_id(&self) -> Option<&ServerId> {
        self.identity().and_then(|i| i.server_id.as_ref())
    }

    /// For a call a grain made while serving a call: that grain.
    pub fn grain(&self) -> Option<&GrainId> {
        self.chain().last()
    }

    /// The grains waiting on this call, outermost first, the calling grain last (empty for a
    /// call from a player's client, or from outside any grain call).
    pub fn chain(&self) -> &[GrainId] {
        self.0.chain.as_deref().unwrap_or(&[])
    }
}

/// A session between a host and one of its callers (a player's client, another server's
/// client of the fleet), unique within the host while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {}", self.0)
    }
}

/// A session a grain watched ended (see [`GrainContext::watch`]): given to the grain's
/// `on_session_ended` hook, as a turn of its own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionEnded {
    /// The session.
    pub session: SessionId,
    /// Who called over it (its address and, with tokens, its client id).
    pub caller: Caller,
    /// Why it ended (`ClosedByPeer`: the player closed the game; `Timeout`: it went silent).
    pub reason: DisconnectReason,
}

/// What a host's service does for its grains' code: presence (which sessions they watch),
/// timers (turns they queue for themselves) and deactivation on request.
pub(crate) trait Hooks: Send + Sync + std::fmt::Debug + 'static {
    /// `grain` watches (`on`) or stops watching `session`.
    fn watch(&self, session: SessionId, grain: &GrainId, on: bool);
    /// Queues a turn of `grain`, active, running `method` of `interface` with `args`, unless
    /// the turn of timer `timer` is still queued or running (a timer never piles up turns).
    fn timer_turn(&self, grain: &GrainId, timer: u64, call: TimerCall);
    /// `grain`'s activation ends after the calls queued for it now.
    fn deactivate(&self, grain: &GrainId);
    /// `grain`'s activation is kept (not deactivated for idleness) for `for_at_least` more.
    fn keep_alive(&self, grain: &GrainId, for_at_least: Duration);
    /// Sets `grain`'s reminder (kept by the host's reminder store); false if the host keeps
    /// none.
    fn remind(&self, grain: &GrainId, reminder: ReminderCall) -> bool;
    /// Removes `grain`'s reminder `name`.
    fn forget_reminder(&self, grain: &GrainId, name: &str);
}

/// A reminder as a grain sets it: its name, the call it makes, when.
#[derive(Debug)]
pub(crate) struct ReminderCall {
    pub(crate) name: String,
    pub(crate) call: TimerCall,
    pub(crate) first: Duration,
    pub(crate) period: Option<Duration>,
}

/// What a timer's turn runs.
#[derive(Debug)]
pub(crate) struct TimerCall {
    pub(crate) interface: &'static crate::interface::InterfaceInfo,
    pub(crate) method: crate::proto::ids::MethodId,
    pub(crate) args: bytes::Bytes,
}

/// What a host knows of one of its grains, for as long as it is active.
#[derive(Debug)]
pub(crate) struct Activation {
    pub(crate) id: GrainId,
    /// How references made or decoded in its calls call: grains (a game server's fleet
    /// client) and observers (over their clients' sessions with this server).
    pub(crate) binding: Binding,
    /// What its host does for it (none for a client's observers: no presence, no timers).
    pub(crate) hooks: Option<Arc<dyn Hooks>>,
    /// Its timers' tasks, aborted when it ends.
    pub(crate) timers: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Activation {
    /// What a host knows of grain `id` as it activates.
    pub(crate) fn new(id: GrainId, binding: Binding, hooks: Option<Arc<dyn Hooks>>) -> Self {
        Self { id, binding, hooks, timers: Default::default() }
    }

    /// Stops its timers (it ends).
    pub(crate) fn stop_timers(&self) {
        for t in std::mem::take(&mut *crate::sync::lock(&self.timers)) {
            t.abort();
        }
    }
}

/// The grain whose code runs now, and the call it serves (none in its hooks).
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) activation: Arc<Activation>,
    pub(crate) call: Option<Served>,
}

/// The call a grain serves.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) caller: Caller,
    /// When its caller stops waiting (on the tokio clock).
    pub(crate) deadline: tokio::time::Instant,
}

/// Runs `f` (a grain's call or hook) as `current`.
pub(crate) fn scope<F: Future>(current: Current, f: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(current, f)
}

/// The caller of the grain call this code runs in: call it from a grain method (or anything it
/// awaits on its own task). `None` outside a call (activation hooks, spawned tasks).
pub fn caller() -> Option<Caller> {
    CURRENT.try_with(|c| c.call.as_ref().map(|s| s.caller.clone())).ok().flatten()
}

/// The grain this code runs in: call it from a grain method or hook (or anything it awaits on
/// its own task; spawned tasks are outside). Keep it (it is cheap to clone) to make references
/// later, from anywhere.
pub fn context() -> Option<GrainContext> {
    CURRENT.try_with(|c| GrainContext(c.activation.clone())).ok()
}

/// What a decoded reference is bound to inside a grain's call: its host's ways of calling
/// grains and observers.
pub(crate) fn binding() -> Option<Binding> {
    CURRENT.try_with(|c| c.activation.binding.clone()).ok()
}

/// For a call made now: what is left of the served call's deadline (`None` outside a call).
pub(crate) fn remaining() -> Option<Duration> {
    let deadline = CURRENT.try_with(|c| c.call.as_ref().map(|s| s.deadline)).ok().flatten()?;
    Some(deadline.saturating_duration_since(tokio::time::Instant::now()))
}

/// Runs `f` with the call chain a call made now carries: the served call's chain and this
/// grain (`None` outside any grain).
pub(crate) fn with_chain<T>(f: impl FnOnce(&[GrainId], &GrainId) -> T) -> Option<T> {
    CURRENT
        .try_with(|c| {
            let chain = c.call.as_ref().map_or(&[][..], |s| s.caller.chain());
            f(chain, &c.activation.id)
        })
        .ok()
}

/// A grain, as its own code sees it: its id, its own reference, and references to other
/// grains that call through its host (for a game server, its own client of the fleet: the
/// same routing and directory as players' calls). From [`context`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct GrainContext(Arc<Activation>);

impl GrainContext {
    /// The grain's id.
    pub fn id(&self) -> &GrainId {
        &self.0.id
    }

    /// A reference to this grain through interface `R`, if its type implements it
    /// ([`ReferenceError::WrongType`] otherwise): to hand to others (a room gives players
    /// itself), or to call itself (which, from inside one of its own calls, fails with
    /// `CallError::Deadlock` rather than wait on itself).
    pub fn this<R: GrainInterface>(&self) -> Result<R, ReferenceError> {
        self.grain_by_id(&self.0.id)
    }

    /// A reference to the grain of `R` with `key`, calling through this grain's host.
    pub fn grain<R: GrainInterface>(&self, key: impl Into<GrainKey>) -> R {
        GrainRef::make(self.0.binding.grains.clone(), key.into())
    }

    /// A reference to grain `id` through `R`, if its type implements `R`'s interface
    /// ([`ReferenceError::WrongType`] otherwise).
    pub fn grain_by_id<R: GrainInterface>(&self, id: &GrainId) -> Result<R, ReferenceError> {
        let info = R::info();
        if id.ty != info.grain_type {
            return Err(ReferenceError::WrongType { grain: id.clone(), interface: info.name });
        }
        Ok(self.grain(id.key.clone()))
    }

    /// Presence: asks to be told when `session` ends (a player closed the game, or went
    /// silent past the transport's timeout). The grain's `on_session_ended` hook then runs as
    /// a turn of its own, once per ended session however often it was watched, while the
    /// grain is active (a grain deactivated meanwhile is not activated for it). A session
    /// that already ended is told at once. Typically `cx.watch(caller().session())` when a
    /// player joins a room. Returns `false` where nothing can tell (a client's observers).
    ///
    /// The session is the one a call came over: a player's own calls come over its client's
    /// session; a call another grain made (even for a player) over its server's. A host keeps
    /// at most `max_watches_per_session` watches of one session (later ones are dropped,
    /// counted in `ServerStats::watches_dropped`).
    pub fn watch(&self, session: SessionId) -> bool {
        self.0.hooks.as_ref().map(|p| p.watch(session, &self.0.id, true)).is_some()
    }

    /// Stops watching `session` (the player left the room): its end is not told.
    pub fn unwatch(&self, session: SessionId) {
        if let Some(p) = &self.0.hooks {
            p.watch(session, &self.0.id, false);
        }
    }

    /// A timer: every `period` (the first after one period), `tick` is given a reference to
    /// this grain through which its calls become **turns of this grain** (queued behind its
    /// calls, run one at a time with them, `&mut self`): `|me: RoomRef| async move { let _ =
    /// me.tick().await; }`. Call methods that return nothing (`#[one_way]` or `()`): the
    /// reference answers once the turn is queued, not with its result. A timer whose last
    /// turn has not run yet skips its tick (a busy grain never piles up timer turns). It ends
    /// when [`Timer::cancel`] is called or the activation ends (timers do not keep a grain
    /// active: one that only ticks deactivates when idle). A timer turn has no deadline.
    /// Outside a host that runs timers (a client's observer), it never fires.
    pub fn every<R, F, Fut>(&self, period: Duration, tick: F) -> Timer
    where
        R: GrainInterface,
        F: FnMut(R) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.timer(period, Some(period), tick)
    }

    /// A timer that fires once, after `delay` (see [`every`](Self::every)).
    pub fn after<R, F, Fut>(&self, delay: Duration, tick: F) -> Timer
    where
        R: GrainInterface,
        F: FnMut(R) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.timer(delay, None, tick)
    }

    fn timer<R, F, Fut>(&self, first: Duration, period: Option<Duration>, mut tick: F) -> Timer
    where
        R: GrainInterface,
        F: FnMut(R) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(hooks) = self.0.hooks.clone() else {
            return Timer(None);
        };
        let invoker = TimerInvoker { hooks, timer: id, interface: R::info() };
        let me: R = GrainRef::make(
            super::reference::Via::Invoker(Arc::new(invoker)),
            self.0.id.key.clone(),
        );
        let task = tokio::spawn(async move {
            let mut at = tokio::time::Instant::now() + first;
            loop {
                tokio::time::sleep_until(at).await;
                tick(me.clone()).await;
                match period {
                    Some(p) => at += p,
                    None => return,
                }
            }
        });
        let handle = task.abort_handle();
        let mut timers = crate::sync::lock(&self.0.timers);
        timers.retain(|t| !t.is_finished());
        timers.push(handle.clone());
        Timer(Some(handle))
    }

    /// A durable reminder named `name`: the call `call` makes through the reference it is given
    /// (one call, to a method of this grain that returns nothing: `|me: PlayerRef| async move {
    /// let _ = me.daily_reward().await; }`) is kept by the host's reminder store and made to
    /// this grain after `first`, then every `period` (none: once) — by whichever server of the
    /// fleet finds it due, reaching the grain wherever it lives then (activating it if need
    /// be), across server restarts and failovers. At least once; within the store's poll
    /// interval of its time. Setting a reminder of the same name replaces it. False when the
    /// host keeps no reminders (`ServerBuilder::reminders`) or `call` made no call.
    pub async fn remind<R, F, Fut>(
        &self,
        name: &str,
        first: Duration,
        period: Option<Duration>,
        call: F,
    ) -> bool
    where
        R: GrainInterface,
        F: FnOnce(R) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(hooks) = self.0.hooks.clone() else { return false };
        let recorder = Arc::new(Recorder(std::sync::Mutex::new(None), R::info()));
        let me: R =
            GrainRef::make(super::reference::Via::Invoker(recorder.clone()), self.0.id.key.clone());
        call(me).await;
        let Some(recorded) = crate::sync::lock(&recorder.0).take() else { return false };
        let reminder = ReminderCall { name: name.to_string(), call: recorded, first, period };
        hooks.remind(&self.0.id, reminder)
    }

    /// Removes this grain's reminder `name` (if it has one).
    pub fn forget_reminder(&self, name: &str) {
        if let Some(h) = &self.0.hooks {
            h.forget_reminder(&self.0.id, name);
        }
    }

    /// Asks for this grain's activation to be kept for at least `duration` more, idle or not
    /// (a room waiting for its players to come back; its type's or the server's idle time
    /// counts again after that). Eviction under `max_activations` may still take it.
    pub fn keep_alive(&self, duration: Duration) {
        if let Some(h) = &self.0.hooks {
            h.keep_alive(&self.0.id, duration);
        }
    }

    /// Asks for this grain's activation to end once the calls queued for it now have run (its
    /// state, if it has some, is written as it ends). The next call activates it again.
    pub fn deactivate(&self) {
        if let Some(h) = &self.0.hooks {
            h.deactivate(&self.0.id);
        }
    }
}

/// A grain's timer (see [`GrainContext::every`]). Dropping it leaves the timer running.
#[derive(Debug)]
pub struct Timer(Option<tokio::task::AbortHandle>);

impl Timer {
    /// Stops the timer (a turn already queued still runs).
    pub fn cancel(&self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// The reference a reminder's call is recorded through (the call is kept, not made).
struct Recorder(std::sync::Mutex<Option<TimerCall>>, &'static crate::interface::InterfaceInfo);

impl super::reference::Invoker for Recorder {
    fn invoke(&self, call: super::reference::Invocation) -> super::reference::Invoked {
        let recorded = TimerCall { interface: self.1, method: call.method.id, args: call.args };
        *crate::sync::lock(&self.0) = Some(recorded);
        Box::pin(std::future::ready(Ok(super::reference::Answer::empty())))
    }
}

/// The reference a timer's tick calls through: each call becomes a turn of the grain.
struct TimerInvoker {
    hooks: Arc<dyn Hooks>,
    timer: u64,
    interface: &'static crate::interface::InterfaceInfo,
}

impl super::reference::Invoker for TimerInvoker {
    fn invoke(&self, call: super::reference::Invocation) -> super::reference::Invoked {
        let turn = TimerCall { interface: self.interface, method: call.method.id, args: call.args };
        self.hooks.timer_turn(&call.grain, self.timer, turn);
        Box::pin(std::future::ready(Ok(super::reference::Answer::empty())))
    }
}
