//! Grain references: what `#[grain]` generated reference types (`PlayerRef`) wrap. A reference
//! builds requests and decodes outcomes; it calls through whatever sends calls (`Calls`: a
//! client's sessions to the fleet), or through an [`Invoker`], the seam that lets code holding
//! references be tested without a network.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::call::{CallCell, CallFuture, CallKind, Outcome, decode_outcome};
use super::encode::{self, Request};
use super::value;
use crate::error::{CallError, CodecError, ReferenceError};
use crate::interface::{Interface, InterfaceInfo, MethodInfo};
use crate::proto::ids::{GrainId, GrainKey};
use crate::proto::route::Affinity;
use crate::proto::wire::rpc::Status;

/// Implemented by each generated reference type (e.g. `PlayerRef`): a value (equality, order
/// and hash by grain and interface; `Display` as `Player/ann`; serde as a few bytes) that
/// calls its grain.
pub trait GrainInterface:
    Interface
    + Sized
    + Clone
    + Send
    + Sync
    + Eq
    + std::hash::Hash
    + Ord
    + fmt::Display
    + fmt::Debug
    + Serialize
    + DeserializeOwned
{
    /// Wraps a reference whose interface was checked to be this one: only this crate makes a
    /// [`Checked`] (through [`GrainRef::typed`], `Client::grain`, `Client::grain_by_id`, a
    /// grain's context, decoding).
    fn from_checked(r: Checked<Self>) -> Self;
    /// The untyped reference inside.
    fn grain_ref(&self) -> &GrainRef;
}

/// A reference whose interface is known to be `R`'s: what a typed reference holds. Only this
/// crate makes one, and one of `R` cannot be used for another interface, so a typed reference
/// never wraps a grain of another interface, even in the module that declares it.
pub struct Checked<R>(GrainRef, PhantomData<fn() -> R>);

impl<R> Checked<R> {
    /// The reference inside.
    pub fn get(&self) -> &GrainRef {
        &self.0
    }

    /// The same reference with calls' deadline set to `timeout` (see
    /// [`GrainRef::with_timeout`]).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self(self.0.with_timeout(timeout), PhantomData)
    }

    /// The same reference with calls routed by `affinity` (see [`GrainRef::with_affinity`]).
    pub fn with_affinity(&self, affinity: Affinity) -> Self {
        Self(self.0.with_affinity(affinity), PhantomData)
    }
}

impl<R: Interface> Checked<R> {
    /// `r` as a reference of `R`, after checking that it is.
    pub(crate) fn of(r: GrainRef) -> Result<Self, ReferenceError> {
        let expected = R::info();
        if r.info.id != expected.id {
            return Err(ReferenceError::WrongInterface {
                expected: expected.name,
                found: r.info.name,
            });
        }
        Ok(Self(r, PhantomData))
    }
}

impl<R> Clone for Checked<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<R> fmt::Debug for Checked<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One call handed to an [`Invoker`].
#[derive(Debug)]
pub struct Invocation {
    /// The grain called.
    pub grain: GrainId,
    /// The method called.
    pub method: &'static MethodInfo,
    pub(crate) args: Bytes,
}

impl Invocation {
    /// The call's arguments, as the tuple of the method's parameter types (`(u32,)` for
    /// `hit(&mut self, damage: u32)`).
    pub fn args<A: DeserializeOwned>(&self) -> Result<A, CallError> {
        postcard::from_bytes(&self.args).map_err(|e| CallError::Decode(CodecError(e)))
    }
}

/// What an [`Invoker`] answers a call with: the method's value, or its application error (for
/// a method returning `Result<T, E>`).
#[derive(Debug, Clone)]
pub struct Answer {
    status: Status,
    payload: Bytes,
}

impl Answer {
    /// The method returned `value` (for a `Result<T, E>` method: `Ok(value)`, pass `value`).
    pub fn ok<T: Serialize + ?Sized>(value: &T) -> Result<Self, CallError> {
        Self::encode(Status::Ok, value)
    }

    /// The method failed with its application error `error`.
    pub fn app_error<E: Serialize + ?Sized>(error: &E) -> Result<Self, CallError> {
        Self::encode(Status::AppError, error)
    }

    /// `Ok` with nothing (what a method returning `()` answers).
    pub(crate) fn empty() -> Self {
        Self { status: Status::Ok, payload: Bytes::new() }
    }

    fn encode<T: Serialize + ?Sized>(status: Status, value: &T) -> Result<Self, CallError> {
        let payload = postcard::to_allocvec(value).map_err(|e| CallError::Encode(CodecError(e)))?;
        Ok(Self { status, payload: payload.into() })
    }
}

/// A future an [`Invoker`] returns.
pub type Invoked = Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send>>;

/// Answers calls in place of the network: implement it to test game code that holds grain
/// references, with [`GrainRef::with_invoker`] (typed: `grainwire::grain::stub::<PlayerRef>`).
/// A call through an invoker encodes its arguments and decodes its answer as a real call
/// does, so a stub sees exactly what a server would.
pub trait Invoker: Send + Sync + 'static {
    /// Answers one call (a one-way call too: its answer is dropped).
    fn invoke(&self, call: Invocation) -> Invoked;
}

/// What sends a reference's calls and completes them: a client's sessions to the fleet. The
/// role-neutral seam between references (here) and the policies of whoever holds them.
pub(crate) trait Calls: Send + Sync + fmt::Debug + 'static {
    /// The deadline of a call whose reference and method give none.
    fn default_timeout(&self) -> Duration;
    /// The largest request of `class` it sends (a one-way call is checked before it goes:
    /// nobody could be told later); an unreliable one must fit one datagram.
    fn max_request(&self, class: crate::interface::DeliveryClass) -> usize;
    /// A cell for a new call (one kept from a finished call, or a new one).
    fn cell(&self) -> Arc<CallCell>;
    /// Sends `request` to `r`'s grain: a call completes its cell with its outcome.
    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<Infallible>>;
    /// A pending call was given up before its outcome (its future dropped): free its slot and,
    /// if it was sent (`sent`: to whom, under which id), tell the callee.
    fn cancelled(&self, sent: Option<(crate::proto::ids::PeerId, crate::proto::ids::RequestId)>);
    /// A finished call's cell, nobody else holding it: kept for another call.
    fn recycle(&self, cell: Arc<CallCell>);
    /// The window a stream call opens with (items read before more are granted).
    fn stream_window(&self) -> u32 {
        super::stream::DEFAULT_STREAM_WINDOW
    }
    /// The reader of a stream call sent to `to` (peer, id) read `more` items: its callee may
    /// send as many more.
    fn credit(&self, to: (crate::proto::ids::PeerId, crate::proto::ids::RequestId), more: u32);
    /// Whether the servers it knows host `interface` for `grain_type` grains; `None` before it
    /// knows any (what a cast is checked against).
    fn implements(
        &self,
        grain_type: crate::proto::ids::GrainType,
        interface: crate::proto::ids::InterfaceId,
    ) -> Option<bool>;
}

/// How a reference's calls travel.
#[derive(Clone)]
pub(crate) enum Via {
    Calls(Arc<dyn Calls>),
    Invoker(Arc<dyn Invoker>),
    /// Nowhere: decoded where nothing could call it. Its calls fail with
    /// [`CallError::Unbound`].
    Unbound,
}

impl fmt::Debug for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Calls(c) => c.fmt(f),
            Via::Invoker(_) => f.write_str("Invoker"),
            Via::Unbound => f.write_str("Unbound"),
        }
    }
}

/// An untyped reference to one grain through one client: what generated references wrap.
///
/// A value: two references are equal when they name the same grain through the same interface
/// (whatever they call through, their deadline or affinity); they order by grain type, key and
/// interface, and hash alike. Serialized, it is a few bytes (see [`rpc::value`](super::value)).
#[derive(Clone)]
pub struct GrainRef {
    via: Via,
    pub(crate) info: &'static InterfaceInfo,
    pub(crate) id: GrainId,
    /// The ordered stream this grain's calls travel on: calls to one grain arrive in order,
    /// calls to different grains do not wait for each other.
    pub(crate) stream: u8,
    /// The grain id's stable hash: its placement under consistent hashing.
    pub(crate) hash: u64,
    /// An observer a client hosts (its key: the client's observer instance and its number),
    /// called over that client's session, not routed to a server.
    pub(crate) observer: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) affinity: Affinity,
}

impl GrainRef {
    /// A reference whose calls `invoker` answers (no client, no network).
    pub fn with_invoker(
        invoker: Arc<dyn Invoker>,
        info: &'static InterfaceInfo,
        key: GrainKey,
    ) -> Self {
        Self::via(Via::Invoker(invoker), info, key)
    }

    fn via(via: Via, info: &'static InterfaceInfo, key: GrainKey) -> Self {
        Self::bound(via, info, GrainId { ty: info.grain_type, key })
    }

    /// A typed reference to the grain of `R` with `key`, calling through `via`.
    pub(crate) fn make<R: GrainInterface>(via: Via, key: GrainKey) -> R {
        R::from_checked(Checked(Self::via(via, R::info(), key), PhantomData))
    }

    /// A reference to observer `key` of `R` (see `Client::observe`): a value to hand to grains
    /// (its client does not call it).
    pub(crate) fn make_observer<R: GrainInterface>(key: u128) -> R {
        let mut r = Self::via(Via::Unbound, R::info(), GrainKey::Id(key));
        r.observer = true;
        R::from_checked(Checked(r, PhantomData))
    }

    /// A reference to grain `id` through interface `info`, calling through `via`.
    pub(crate) fn bound(via: Via, info: &'static InterfaceInfo, id: GrainId) -> Self {
        // Stream 0 carries control frames; grains use 1..=255.
        let hash = id.stable_hash();
        let stream = 1 + (hash % 255) as u8;
        Self {
            via,
            info,
            id,
            stream,
            hash,
            observer: false,
            timeout: None,
            affinity: Affinity::None,
        }
    }

    /// This reference as a typed one, if it is of `R`'s interface
    /// ([`ReferenceError::WrongInterface`] otherwise).
    pub fn typed<R: GrainInterface>(&self) -> Result<R, ReferenceError> {
        Checked::of(self.clone()).map(R::from_checked)
    }

    /// The same grain through interface `R`, another interface of its grain type (a player
    /// that is also an inventory: `player.cast::<InventoryRef>()`), or another version of its
    /// interface. Checked against the manifests of the servers its client knows: a grain type
    /// none of them hosts with `R` is [`ReferenceError::WrongType`], as is a grain of another
    /// type, or an observer (it implements the one interface its client hosts it as). Before
    /// its client knows any server (and for stubs) the check is the call's: it fails
    /// `UnknownGrainType` if no server has `R`.
    pub fn cast<R: GrainInterface>(&self) -> Result<R, ReferenceError> {
        let info = R::info();
        let wrong = || ReferenceError::WrongType { grain: self.id.clone(), interface: info.name };
        if info.grain_type != self.id.ty || (self.observer && info.id != self.info.id) {
            return Err(wrong());
        }
        if let Via::Calls(calls) = &self.via
            && calls.implements(info.grain_type, info.id) == Some(false)
        {
            return Err(wrong());
        }
        let cast = Self { info, ..self.clone() };
        Checked::of(cast).map(R::from_checked)
    }

    /// Whether it names an observer a client hosts (`Client::observe`) rather than a grain.
    pub fn is_observer(&self) -> bool {
        self.observer
    }

    /// Whether its calls can go anywhere: false for a reference decoded where nothing could
    /// call it (its calls fail with [`CallError::Unbound`]).
    pub fn is_bound(&self) -> bool {
        !matches!(self.via, Via::Unbound)
    }

    /// The grain's id.
    pub fn id(&self) -> &GrainId {
        &self.id
    }

    /// The interface it is called through.
    pub fn interface(&self) -> &'static InterfaceInfo {
        self.info
    }

    /// The same reference with calls' deadline set to `timeout` (overriding the method's and
    /// the client's default).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self.clone() }
    }

    /// The same reference with calls routed by `affinity`: to a preferred server while it is
    /// available, or only to a required one.
    pub fn with_affinity(&self, affinity: Affinity) -> Self {
        Self { affinity, ..self.clone() }
    }

    /// The reference's affinity.
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }

    /// Calls a method that returns `T`.
    pub async fn call<A, T>(&self, method: &'static MethodInfo, args: &A) -> Result<T, CallError>
    where
        A: Serialize + ?Sized,
        T: for<'de> Deserialize<'de>,
    {
        // A method that returns no `Result` has no application error: the server never says
        // `AppError` for it, so one would mean client and server disagree on the interface.
        self.run(method, args, |o| decode_outcome(o, self.info.version, |_| CallError::BadRequest))
            .await
    }

    /// Calls a method that returns `Result<T, E>`.
    pub async fn call_result<A, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize + ?Sized,
        T: for<'de> Deserialize<'de>,
        E: for<'de> Deserialize<'de>,
    {
        self.run(method, args, |o| {
            decode_outcome(o, self.info.version, |payload| match postcard::from_bytes(payload) {
                Ok(e) => CallError::Application(e),
                Err(e) => CallError::Decode(CodecError(e)),
            })
        })
        .await
    }

    /// Sends a one-way call (reliable, in order with the grain's other calls, no response):
    /// done once queued behind the calls made before it. A call that fails yields once before
    /// it returns (see [`call`](Self::call)).
    pub async fn call_one_way<A: Serialize + ?Sized>(
        &self,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<(), CallError> {
        let queued = match &self.via {
            Via::Calls(calls) => self.one_way(calls, method, args),
            Via::Invoker(invoker) => self.invoke(invoker, method, args).await.map(|_| ()),
            Via::Unbound => Err(CallError::Unbound),
        };
        if queued.is_err() {
            tokio::task::yield_now().await;
        }
        queued.map_err(|e| e.map_app(|never| match never {}))
    }

    /// Runs the call to its outcome (the server's status and payload, or a local error) and
    /// decodes it with `decode`, reading it in place.
    async fn run<A: Serialize + ?Sized, T, E>(
        &self,
        method: &'static MethodInfo,
        args: &A,
        decode: impl FnOnce(&Outcome) -> Result<T, CallError<E>>,
    ) -> Result<T, CallError<E>> {
        // References in the result are bound to what made the call.
        match &self.via {
            Via::Calls(calls) => {
                let mut call = self.start(calls, method, args).await?;
                (&mut call).await;
                value::bound(self.result_binding(), || decode(call.outcome()))
            }
            Via::Invoker(invoker) => {
                let outcome = self.invoke(invoker, method, args).await;
                value::bound(self.result_binding(), || decode(&outcome))
            }
            Via::Unbound => {
                tokio::task::yield_now().await;
                Err(CallError::Unbound)
            }
        }
    }

    /// What references in this call's result are bound to: grains to what made the call,
    /// observers to the observer calls of the grain making it (if a grain makes it).
    fn result_binding(&self) -> value::Binding {
        let observers = super::context::binding().map_or(Via::Unbound, |b| b.observers);
        value::Binding { grains: self.via.clone(), observers }
    }

    /// The deadline of a call of `method` through `calls`: the reference's, the method's or
    /// the default, and never past the deadline of the grain call it is made in.
    fn timeout(&self, calls: &Arc<dyn Calls>, method: &MethodInfo) -> Duration {
        let own = self.timeout.or(method.timeout).unwrap_or_else(|| calls.default_timeout());
        super::context::remaining().map_or(own, |left| own.min(left))
    }

    /// Queues the call. A call that fails at once (no server to route it to, say) still
    /// yields once to the runtime before it returns, so a caller that retries in a loop never
    /// starves the tasks that would fix it (the connection pool reconnecting).
    async fn start<A: Serialize + ?Sized, E>(
        &self,
        calls: &Arc<dyn Calls>,
        method: &MethodInfo,
        args: &A,
    ) -> Result<CallFuture, CallError<E>> {
        let queued = encode::request(self, method, args, self.timeout(calls, method), false)
            .and_then(|request| {
                // An unreliable call must fit one datagram, whoever sends it.
                let (size, max) = (request.size(), calls.max_request(method.delivery));
                if method.delivery.is_unreliable() && size > max {
                    return Err(CallError::TooLarge { size, max });
                }
                let cell = calls.cell();
                match calls.submit(self, request, CallKind::Call(cell.clone())) {
                    Ok(()) => Ok(CallFuture::new(cell, calls.clone())),
                    Err(e) => {
                        calls.recycle(cell); // never used: as good as new
                        Err(e)
                    }
                }
            });
        match queued {
            Ok(f) => Ok(f),
            Err(e) => {
                tokio::task::yield_now().await;
                Err(e.map_app(|never| match never {}))
            }
        }
    }

    /// Queues a one-way call of `method` with arguments already encoded (a reminder's, kept in
    /// storage): done once queued, as [`one_way`](Self::one_way).
    pub(crate) fn one_way_encoded(
        &self,
        method: &'static MethodInfo,
        args: &[u8],
    ) -> Result<(), CallError<Infallible>> {
        let Via::Calls(calls) = &self.via else { return Err(CallError::Unbound) };
        let timeout = self.timeout(calls, method);
        let request =
            encode::request_of::<()>(self, method, encode::Args::Encoded(args), timeout, true)?;
        calls.submit(self, request, CallKind::OneWay)
    }

    /// Queues a one-way call. It is done once queued: the sender writes it on the grain's
    /// stream in the order calls were made, and a failure there (its callee left meanwhile) is
    /// only counted, as a one-way call lost with its connection would be.
    fn one_way<A: Serialize + ?Sized>(
        &self,
        calls: &Arc<dyn Calls>,
        method: &MethodInfo,
        args: &A,
    ) -> Result<(), CallError<Infallible>> {
        let request = encode::request(self, method, args, self.timeout(calls, method), true)?;
        let (size, max) = (request.size(), calls.max_request(method.delivery));
        if size > max {
            return Err(CallError::TooLarge { size, max });
        }
        calls.submit(self, request, CallKind::OneWay)
    }

    async fn invoke<A: Serialize + ?Sized>(
        &self,
        invoker: &Arc<dyn Invoker>,
        method: &'static MethodInfo,
        args: &A,
    ) -> Result<(Status, Bytes), CallError<Infallible>> {
        let args = postcard::to_allocvec(args).map_err(|e| CallError::Encode(CodecError(e)))?;
        let call = Invocation { grain: self.id.clone(), method, args: args.into() };
        let answer = invoker.invoke(call).await?;
        Ok((answer.status, answer.payload))
    }
}

impl PartialEq for GrainRef {
    fn eq(&self, other: &Self) -> bool {
        self.info.id == other.info.id && self.id == other.id && self.observer == other.observer
    }
}

impl Eq for GrainRef {}

impl std::hash::Hash for GrainRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.info.id.hash(state);
        self.observer.hash(state);
    }
}

impl PartialOrd for GrainRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GrainRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.id, self.info.id, self.observer).cmp(&(&other.id, other.info.id, other.observer))
    }
}

impl fmt::Debug for GrainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short: what it names and how it calls, not the whole client it calls through.
        let mut d = f.debug_struct("GrainRef");
        d.field("grain", &format_args!("{self}"));
        match self.via {
            Via::Calls(_) if self.observer => d.field("observer", &true),
            Via::Calls(_) => &mut d,
            Via::Invoker(_) => d.field("via", &format_args!("Invoker")),
            Via::Unbound => d.field("unbound", &true),
        };
        if let Some(t) = self.timeout {
            d.field("timeout", &t);
        }
        if self.affinity != Affinity::None {
            d.field("affinity", &self.affinity);
        }
        d.finish()
    }
}

mod streams;
