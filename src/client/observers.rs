//! Observers: objects a client hosts that grains call ([`Client::observe`]). Each runs its
//! calls one at a time on a task of its own (`rpc::turns::serve`), answering over the session
//! the call came on. The client names them to every server it connects (again on every new
//! session: a reconnect, a failover), so a reference to one stays valid as long as the client
//! hosts it: its key is the client's observer instance (random, for the client's lifetime) and
//! the observer's number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use super::calls::Handle;
use super::service::ClientCmd;
use super::{Client, GrainInterface, GrainRef};
use crate::error::CallError;
use crate::interface::InterfaceInfo;
use crate::proto::ids::{GrainId, GrainKey, GrainType, IdMap, InterfaceId, PeerId, RequestId};
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::context::Activation;
use crate::rpc::dispatch::Dispatch;
use crate::rpc::encode::Request;
use crate::rpc::reference::{Calls, Via};
use crate::rpc::turns::{self, Mailbox};
use crate::rpc::value::Binding;
use crate::sync::lock;

/// Calls from servers one observer may have queued; more are answered `Overloaded`.
pub(crate) const MAX_QUEUED_PER_OBSERVER: usize = 1024;
/// Calls from servers a client's observers may hold at once, all together.
pub(crate) const MAX_OBSERVER_CALLS: usize = 16 * 1024;

/// The observers a client hosts.
#[derive(Debug)]
pub(crate) struct Observers {
    /// This client's observer instance: the high half of its observers' keys.
    pub(crate) instance: u64,
    next: AtomicU64,
    hosted: Mutex<IdMap<u64, Hosted>>,
    /// Observer calls answered (or ended) by their observers' tasks, for the client's task to
    /// forget (it keeps them to cancel them).
    pub(crate) done: (Sender<Sent>, Receiver<Sent>),
}

/// Where an observer call came from: its session and its id there.
pub(crate) type Sent = (PeerId, RequestId);

/// One hosted observer.
#[derive(Debug)]
pub(crate) struct Hosted {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) info: &'static InterfaceInfo,
    task: tokio::task::JoinHandle<()>,
}

impl Observers {
    pub(crate) fn new(instance: u64) -> Self {
        let done = crossbeam::channel::unbounded();
        Self { instance, next: AtomicU64::new(1), hosted: Mutex::default(), done }
    }

    /// The observer with number `n`: its mailbox and interface.
    pub(crate) fn get(&self, n: u64) -> Option<(Arc<Mailbox>, &'static InterfaceInfo)> {
        lock(&self.hosted).get(&n).map(|h| (h.mailbox.clone(), h.info))
    }

    /// The numbers of every observer hosted now.
    pub(crate) fn numbers(&self) -> Vec<u64> {
        lock(&self.hosted).keys().copied().collect()
    }

    /// Stops every observer (the client is closing).
    pub(crate) fn stop_all(&self) {
        for (_, h) in lock(&self.hosted).drain() {
            h.task.abort();
        }
    }
}

impl Client {
    /// Hosts `object` as an observer: grains (on any server this client is connected to) can
    /// call it through the reference returned, a value like any other (pass it to a grain:
    /// `room.subscribe(view)`). Its calls run one at a time, in the order each server sent
    /// them, with the deadlines, cancellation and typed errors of any call. It stays valid
    /// across reconnects and failovers (the client names its observers on every new session)
    /// until [`unobserve`](Self::unobserve) or the client closes; calls made while the client
    /// is away wait for it up to the server's `observer_grace`, then fail `ObserverGone`.
    ///
    /// ```ignore
    /// let view: ChatViewRef = client.observe(ChatView::default());
    /// room.subscribe(view).await?;
    /// ```
    pub fn observe<R, O>(&self, object: O) -> R
    where
        R: GrainInterface + Dispatch<O>,
        O: Send + 'static,
    {
        let observers = &self.shared.observers;
        let n = observers.next.fetch_add(1, Ordering::Relaxed);
        let key = (u128::from(observers.instance) << 64) | u128::from(n);
        let info = R::info();
        let id = GrainId { ty: info.grain_type, key: GrainKey::Id(key) };
        // What it decodes (references in its arguments) calls through this client, without
        // keeping it alive.
        let weak = Arc::new(WeakCalls(Arc::downgrade(&self.calls)));
        let binding = Binding { grains: Via::Calls(weak), observers: Via::Unbound };
        let here = Arc::new(Activation::new(id, binding, None));
        let mailbox = Arc::new(Mailbox::default());
        let done = observers.done.0.clone();
        let task = tokio::spawn(turns::serve::<R, O>(object, here, mailbox.clone(), move |job| {
            if let Some((conn, rid)) = job.reply.call() {
                let _ = done.send((conn.peer_id(), *rid));
            }
        }));
        lock(&observers.hosted).insert(n, Hosted { mailbox, info, task });
        if self.shared.cmds.send(ClientCmd::Observe { n, observe: true }).is_ok() {
            self.shared.wake();
        }
        GrainRef::make_observer(key)
    }

    /// Stops hosting `observer` (one [`observe`](Self::observe) returned): its queued calls
    /// are answered, later ones fail `ObserverGone`. False if this client does not host it.
    pub fn unobserve<R: GrainInterface>(&self, observer: &R) -> bool {
        let r = observer.grain_ref();
        let GrainKey::Id(key) = r.id().key else { return false };
        let (instance, n) = ((key >> 64) as u64, key as u64);
        if !r.is_observer() || instance != self.shared.observers.instance {
            return false;
        }
        let Some(h) = lock(&self.shared.observers.hosted).remove(&n) else { return false };
        h.mailbox.close();
        if self.shared.cmds.send(ClientCmd::Observe { n, observe: false }).is_ok() {
            self.shared.wake();
        }
        true
    }

    /// How many observers this client hosts.
    pub fn observer_count(&self) -> usize {
        lock(&self.shared.observers.hosted).len()
    }
}

/// A client's way of calling grains that does not keep the client running (what its
/// observers' tasks hold).
#[derive(Debug)]
struct WeakCalls(Weak<Handle>);

impl WeakCalls {
    fn get(&self) -> Option<Arc<Handle>> {
        self.0.upgrade()
    }
}

impl Calls for WeakCalls {
    fn default_timeout(&self) -> Duration {
        self.get().map_or(Duration::ZERO, |h| h.default_timeout())
    }

    fn max_request(&self, class: crate::interface::DeliveryClass) -> usize {
        self.get().map_or(0, |h| h.max_request(class))
    }

    fn cell(&self) -> Arc<CallCell> {
        self.get().map_or_else(|| Arc::new(CallCell::new()), |h| h.cell())
    }

    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<std::convert::Infallible>> {
        match self.get() {
            Some(h) => h.submit(r, request, kind),
            None => Err(CallError::NotConnected),
        }
    }

    fn cancelled(&self, sent: Option<(PeerId, RequestId)>) {
        if let Some(h) = self.get() {
            h.cancelled(sent);
        }
    }

    fn recycle(&self, cell: Arc<CallCell>) {
        if let Some(h) = self.get() {
            h.recycle(cell);
        }
    }

    fn implements(&self, grain_type: GrainType, interface: InterfaceId) -> Option<bool> {
        self.get().and_then(|h| h.implements(grain_type, interface))
    }

    fn stream_window(&self) -> u32 {
        self.get().map_or(1, |h| h.stream_window())
    }

    fn credit(&self, to: (PeerId, RequestId), more: u32) {
        if let Some(h) = self.get() {
            h.credit(to, more);
        }
    }
}
