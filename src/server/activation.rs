//! One activation: a grain instance and the task that runs its calls one at a time, in arrival
//! order. The server's service (in the endpoint task) fills its mailbox; the task takes calls
//! from it, runs them, answers on the caller's connection and reports each call done.
//!
//! A call is cut short when the service signals its cancellation (the caller gave up, or its
//! deadline passed): the task drops the call's future. Deadlines are the service's alone, on
//! the endpoint's clock (an expired call still queued is taken out of the mailbox and
//! answered there); this task reads no clock. A panic fails the call with
//! `HandlerPanicked` and the instance is replaced by a fresh one from the factory (its state
//! may be broken), without losing the calls queued behind it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam::channel::Sender;

use super::ServerCounters;
use super::budget::{AnswerBudget, Room};
use super::claims::{Claims, DirectoryUse, Gate};
use super::make::Make;
use crate::proto::ids::{GrainId, MethodId, RequestId};
use crate::proto::wire::rpc::{self, Status};
use crate::rpc::call::CallKind;
use crate::rpc::context;
use crate::rpc::dispatch::{self, Dispatch, Reply};
use crate::rpc::stream;
use crate::rpc::turns::{Job, Mailbox, Turn, catch_unwind};
use crate::rpc::value::Binding;
use crate::transport::{Connection, Delivery, EndpointShared};

/// What activations tell the service.
#[derive(Debug)]
pub(crate) enum Report {
    /// A call ended (answered, failed or cancelled).
    Done { token: u64 },
    /// An activation finished deactivating; its task is ending.
    Gone { grain: GrainId },
    /// An activation may not run here (the directory names another owner, or could not be
    /// asked and the type fails closed): it answers its calls so and wants to end.
    Refused { grain: GrainId, redirect: Option<Bytes> },
}

/// The channel from activations back to the service, and what they need to know of the
/// server.
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    pub(crate) tx: Sender<Report>,
    pub(crate) endpoint: Arc<EndpointShared>,
    pub(crate) budget: AnswerBudget,
    pub(crate) counters: Arc<ServerCounters>,
    /// How references in its grains call: grains through the server's fleet client, observers
    /// over their clients' sessions.
    pub(crate) binding: Binding,
    /// Where its grains' watches of sessions go.
    pub(crate) hooks: Arc<dyn context::Hooks>,
}

impl Reporter {
    fn report(&self, r: Report) {
        // The service outlives its activations' reports only until shutdown; then nobody
        // listens and nothing needs to.
        let _ = self.tx.send(r);
        self.endpoint.wake.notify();
    }

    /// Queues something the caller did not get as a value (a refusal, a status, a redirect),
    /// if its connection may take it (see `AnswerBudget::may_queue`); else drops and counts it.
    pub(crate) fn unasked(&self, conn: &Connection, frame: Bytes) {
        if self.budget.may_queue(conn) {
            conn.push(Delivery::ReliableUnordered, frame);
        } else {
            self.counters.answers_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts activations of one grain type: the type-erased part of a `Host`.
pub(crate) trait Spawn: Send + Sync + 'static {
    fn spawn(
        &self,
        grain: GrainId,
        mailbox: Arc<Mailbox>,
        reporter: Reporter,
        claim: Option<(Arc<Claims>, DirectoryUse)>,
    ) -> tokio::task::JoinHandle<()>;

    /// Also serves `extra`, an [`Extra`] of the grain struct, if it is one of this host's
    /// (`Host::with`); whether it is.
    fn add(&mut self, extra: Box<dyn std::any::Any + Send>) -> bool;

    /// Whether its grains keep state that `#[exactly_once]` calls are recorded with.
    fn durable(&self) -> bool;
}

/// A future a boxed dispatch or hook returns.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Another interface `G` implements, served by the same activations (`Host::with`): its
/// dispatch and hooks, type-erased (a call of it costs one allocation more than a call of the
/// host's first interface).
pub(crate) struct Extra<G> {
    dispatch: for<'a> fn(&'a mut G, MethodId, &'a [u8], &'a mut Reply) -> Boxed<'a, Status>,
    activate: for<'a> fn(&'a mut G, &'a GrainId) -> Boxed<'a, ()>,
    deactivate: for<'a> fn(&'a mut G) -> Boxed<'a, ()>,
    session_ended: fn(&mut G, context::SessionEnded) -> Boxed<'_, ()>,
}

impl<G: Send + 'static> Extra<G> {
    pub(crate) fn of<I: Dispatch<G>>() -> Self {
        fn dispatch<'a, I: Dispatch<G>, G: Send + 'static>(
            g: &'a mut G,
            method: MethodId,
            args: &'a [u8],
            out: &'a mut Reply,
        ) -> Boxed<'a, Status> {
            Box::pin(I::dispatch(g, method, args, out))
        }
        fn activate<'a, I: Dispatch<G>, G: Send + 'static>(
            g: &'a mut G,
            id: &'a GrainId,
        ) -> Boxed<'a, ()> {
            Box::pin(I::activate(g, id))
        }
        fn deactivate<I: Dispatch<G>, G: Send + 'static>(g: &mut G) -> Boxed<'_, ()> {
            Box::pin(I::deactivate(g))
        }
        fn session_ended<I: Dispatch<G>, G: Send + 'static>(
            g: &mut G,
            ended: context::SessionEnded,
        ) -> Boxed<'_, ()> {
            Box::pin(I::session_ended(g, ended))
        }
        Self {
            dispatch: dispatch::<I, G>,
            activate: activate::<I, G>,
            deactivate: deactivate::<I, G>,
            session_ended: session_ended::<I, G>,
        }
    }
}

/// [`Spawn`] for interface `I` implemented by `G`, made by `F` (a [`Make`]), running calls as `T`
/// says, and serving the `extras` interfaces beside `I`.
pub(crate) struct Typed<I, G, F, T = Alone> {
    pub(crate) factory: Arc<F>,
    pub(crate) extras: Arc<[Extra<G>]>,
    pub(crate) _types: PhantomData<Types<I, G, T>>,
}

/// What [`Typed`] is for, without owning any of it.
type Types<I, G, T> = fn() -> (I, G, T);

/// How an activation runs a call: alone ([`Alone`]), or, for an interface with
/// `#[interleave]` methods (whose grains are `Sync`), a `&self` call beside the interleaving
/// calls that join it ([`Beside`]).
pub(crate) trait Turns<I: Dispatch<G>, G: Send + 'static>: 'static {
    /// Runs `job`; whether its method (or one beside it) panicked.
    fn run_job<'a>(
        g: &'a mut G,
        job: Job,
        here: &'a Here<G>,
        mailbox: &'a Mailbox,
        reporter: &'a Reporter,
    ) -> impl Future<Output = bool> + Send + 'a;
}

/// What an activation's task knows of itself: the grain's context and the host's other
/// interfaces.
pub(crate) struct Here<G> {
    context: Arc<context::Activation>,
    extras: Arc<[Extra<G>]>,
    /// What makes its instances (and records `#[exactly_once]` calls with their state).
    make: Arc<dyn Make<G>>,
}

/// Every call alone.
pub(crate) struct Alone;

/// `&self` calls beside interleaving ones.
pub(crate) struct Beside;

impl<I: Dispatch<G>, G: Send + 'static> Turns<I, G> for Alone {
    fn run_job<'a>(
        g: &'a mut G,
        job: Job,
        here: &'a Here<G>,
        mailbox: &'a Mailbox,
        reporter: &'a Reporter,
    ) -> impl Future<Output = bool> + Send + 'a {
        exclusive_turn::<I, G>(g, job, here, mailbox, reporter)
    }
}

impl<I: Dispatch<G>, G: Send + Sync + 'static> Turns<I, G> for Beside {
    async fn run_job<'a>(
        g: &'a mut G,
        job: Job,
        here: &'a Here<G>,
        mailbox: &'a Mailbox,
        reporter: &'a Reporter,
    ) -> bool {
        // Only the first interface interleaves (`Host::with` refuses others that would).
        if job.iface == 0 && shared::<I, G>(job.method) {
            shared_turn::<I, G>(g, job, &here.context, mailbox, reporter).await
        } else {
            exclusive_turn::<I, G>(g, job, here, mailbox, reporter).await
        }
    }
}

impl<I, G, F, T> Spawn for Typed<I, G, F, T>
where
    I: Dispatch<G>,
    G: Send + 'static,
    F: Make<G>,
    T: Turns<I, G>,
{
    fn spawn(
        &self,
        grain: GrainId,
        mailbox: Arc<Mailbox>,
        reporter: Reporter,
        claim: Option<(Arc<Claims>, DirectoryUse)>,
    ) -> tokio::task::JoinHandle<()> {
        let factory = self.factory.clone();
        let extras = self.extras.clone();
        tokio::spawn(async move {
            let gate = match &claim {
                Some((claims, how)) => claims.claim(&grain, *how).await,
                None => Gate::Serve,
            };
            match gate {
                Gate::Serve => {
                    run::<I, G, F, T>(factory, extras, grain.clone(), mailbox, reporter).await;
                    if let Some((claims, _)) = claim {
                        claims.release(&grain).await;
                    }
                }
                Gate::Redirect(owner, payload) => {
                    tracing::debug!(%grain, owner = %owner.server, "grain lives elsewhere: redirecting");
                    refuse(grain, mailbox, reporter, Status::Redirect, Some(payload)).await
                }
                Gate::Unavailable => {
                    refuse(grain, mailbox, reporter, Status::Unavailable, None).await
                }
            }
        })
    }

    fn durable(&self) -> bool {
        self.factory.durable()
    }

    fn add(&mut self, extra: Box<dyn std::any::Any + Send>) -> bool {
        let Ok(extra) = extra.downcast::<Extra<G>>() else { return false };
        let mut extras: Vec<Extra<G>> = self.extras.iter().map(Extra::copy).collect();
        extras.push(*extra);
        self.extras = extras.into();
        true
    }
}

impl<G> Extra<G> {
    fn copy(&self) -> Self {
        Self {
            dispatch: self.dispatch,
            activate: self.activate,
            deactivate: self.deactivate,
            session_ended: self.session_ended,
        }
    }
}

/// An activation that may not run here: answers every call with `status` (and `payload`)
/// until the service, told at once, has it end.
async fn refuse(
    id: GrainId,
    mailbox: Arc<Mailbox>,
    reporter: Reporter,
    status: Status,
    payload: Option<Bytes>,
) {
    reporter.report(Report::Refused { grain: id.clone(), redirect: payload.clone() });
    let body = payload.unwrap_or_default();
    while let Some(job) = mailbox.next().await {
        let counter = match status {
            Status::Redirect => &reporter.counters.redirects,
            _ => &reporter.counters.directory_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let CallKind::Call((conn, rid)) = &job.reply {
            reporter.unasked(conn, dispatch::status(*rid, status, &body));
        }
        reporter.report(Report::Done { token: job.token });
    }
    reporter.report(Report::Gone { grain: id });
}

/// Makes a grain instance (loading its state, if it has some) and runs its interfaces'
/// activation hooks; `Err` with what its calls are answered if that failed (a panic, or state
/// that could not be loaded).
async fn activate<I: Dispatch<G>, G, F: Make<G>>(factory: &F, here: &Here<G>) -> Result<G, Status> {
    let id = &here.context.id;
    let mut grain = factory.make(id).await?;
    let hook = I::activate(&mut grain, id);
    let panicked = Status::HandlerPanicked;
    catch_unwind(context::scope(hook_scope(&here.context), hook)).await.ok_or(panicked)?;
    for extra in here.extras.iter() {
        let hook = (extra.activate)(&mut grain, id);
        catch_unwind(context::scope(hook_scope(&here.context), hook)).await.ok_or(panicked)?;
    }
    Ok(grain)
}

/// What a hook runs in: the grain, no call.
fn hook_scope(here: &Arc<context::Activation>) -> context::Current {
    context::Current { activation: here.clone(), call: None }
}

/// Whether the caller's connection holds more unacknowledged answers than it may (see
/// `server::budget`): its call is answered `Overloaded` instead of run (it did not run, so the
/// caller may retry), or not answered at all beyond the hard margin.
fn caller_not_draining(job: &Job, budget: &AnswerBudget) -> bool {
    job.reply.call().is_some_and(|(conn, _)| match budget.room(conn) {
        Room::Fits => false,
        // Room is being made for callers under their share (their admission closed sessions
        // of the address most over its share); see `server::budget` for how far over it goes.
        Room::Preempt => budget.over_ceiling(conn),
        Room::Refuse(_) | Room::Full => true,
    })
}

/// Sends a call's answer (counting one too large for its connection, answered
/// `ResponseTooLarge` instead).
fn answer(conn: &Connection, job: &Job, rid: RequestId, frame: Bytes, counters: &ServerCounters) {
    if !dispatch::answer(conn, rid, frame, job.unreliable) {
        counters.responses_too_large.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether `method` takes `&self` (runs on a shared borrow when its interface interleaves).
fn shared<I: Dispatch<G>, G>(method: MethodId) -> bool {
    I::info().method(method).is_some_and(|m| m.shared)
}

/// What the grain's code ran in for `job`.
fn served(job: &Job, here: &Arc<context::Activation>) -> context::Current {
    let served = context::Served { caller: job.caller.clone(), deadline: job.deadline };
    context::Current { activation: here.clone(), call: Some(served) }
}

/// Runs `job` alone on the grain; whether the method panicked.
async fn exclusive_turn<I: Dispatch<G>, G: Send + 'static>(
    g: &mut G,
    job: Job,
    here: &Here<G>,
    mailbox: &Mailbox,
    reporter: &Reporter,
) -> bool {
    if let (Some(call), Some((conn, rid))) = (job.once, job.reply.call())
        && let Some((status, recorded)) = here.make.applied(g, call)
    {
        // It ran before (its answer was lost with its server, or with the session): the
        // recorded answer, not a second run.
        let mut frame = Vec::with_capacity(8 + recorded.len());
        rpc::encode_response(&mut frame, *rid, status);
        frame.extend_from_slice(&recorded);
        answer(conn, &job, *rid, Bytes::from(frame), &reporter.counters);
        finish(&job, None, reporter);
        return false;
    }
    let mut reply = Reply::new(job.reply.as_ref().map(|(_, rid)| *rid));
    let scope = served(&job, &here.context);
    let ran = match usize::from(job.iface).checked_sub(1).map(|i| here.extras.get(i)) {
        None => {
            let dispatch = I::dispatch(g, job.method, &job.args, &mut reply);
            mailbox.turn(job.token, catch_unwind(context::scope(scope, dispatch))).await
        }
        Some(Some(extra)) => {
            let dispatch = (extra.dispatch)(g, job.method, &job.args, &mut reply);
            mailbox.turn(job.token, catch_unwind(context::scope(scope, dispatch))).await
        }
        // The registry gives only slots its host has.
        Some(None) => Turn::Done(Some(Status::UnknownMethod)),
    };
    let ran = match (job.once, ran) {
        (Some(call), Turn::Done(Some(status @ (Status::Ok | Status::AppError)))) => {
            super::make::record_once(g, call, status, &mut reply, &here.make).await
        }
        (_, ran) => ran,
    };
    ended(job, ran, &mut reply, &here.context.id, reporter)
}

/// Runs the grain's presence hooks (every interface's) for `ended` as `job`'s turn; whether
/// one panicked.
async fn session_turn<I: Dispatch<G>, G>(
    g: &mut G,
    job: Job,
    ended: context::SessionEnded,
    here: &Here<G>,
    mailbox: &Mailbox,
    reporter: &Reporter,
) -> bool {
    let hooks = async {
        for extra in here.extras.iter() {
            (extra.session_ended)(g, ended.clone()).await;
        }
        I::session_ended(g, ended).await;
        Status::Ok
    };
    let scope = served(&job, &here.context);
    let ran = mailbox.turn(job.token, catch_unwind(context::scope(scope, hooks))).await;
    let panicked = matches!(ran, Turn::Done(None));
    if panicked {
        tracing::warn!(grain = %here.context.id, "presence hook panicked; replacing the instance");
    }
    finish(&job, None, reporter);
    panicked
}

/// Runs `job`, a `&self` call, on a shared borrow of the grain, and beside it the
/// interleaving calls that join it (see `rpc::turns`); whether any method panicked.
async fn shared_turn<I: Dispatch<G>, G>(
    g: &G,
    job: Job,
    here: &Arc<context::Activation>,
    mailbox: &Mailbox,
    reporter: &Reporter,
) -> bool {
    let mut panicked = false;
    let start = |job: &Job| -> Pin<Box<dyn Future<Output = _> + Send + '_>> {
        let reply = Reply::new(job.reply.as_ref().map(|(_, rid)| *rid));
        if caller_not_draining(job, &reporter.budget) {
            reporter.counters.overloaded_send_queue.fetch_add(1, Ordering::Relaxed);
            return Box::pin(std::future::ready(Some((Status::Overloaded, reply))));
        }
        let call = I::dispatch_shared(g, job.method, job.args.clone(), reply);
        Box::pin(catch_unwind(context::scope(served(job, here), call)))
    };
    let done = |job: Job, turn: Turn<Option<(Status, Reply)>>| {
        let (turn, mut reply) = match turn {
            Turn::Done(Some((status, reply))) => (Turn::Done(Some(status)), reply),
            Turn::Done(None) => (Turn::Done(None), Reply::new(CallKind::OneWay)),
            Turn::Cancelled { expired } => {
                (Turn::Cancelled { expired }, Reply::new(CallKind::OneWay))
            }
        };
        panicked |= ended(job, turn, &mut reply, &here.id, reporter);
    };
    mailbox.shared_turn(job, start, done).await;
    panicked
}

/// Answers a call that ran (or was cut short) and reports it done; whether it panicked.
fn ended(
    job: Job,
    ran: Turn<Option<Status>>,
    reply: &mut Reply,
    grain: &GrainId,
    reporter: &Reporter,
) -> bool {
    if let (Turn::Done(Some(_)), Some((ctl, lane)), Some((conn, rid))) =
        (&ran, &job.stream, job.reply.call())
        && let Some(source) = reply.take_stream()
    {
        // A stream method returned its stream: its items go out from a task of their own, so
        // the grain's next call runs meanwhile. The call is done when the stream ends.
        let (ctl, lane, conn, rid) = (ctl.clone(), *lane, conn.clone(), *rid);
        let (token, reporter) = (job.token, reporter.clone());
        tokio::spawn(async move {
            let items = &reporter.counters.stream_items;
            stream::pump(&ctl, source, &conn, (rid, lane), items).await;
            reporter.report(Report::Done { token });
        });
        return false;
    }
    let status = match ran {
        // `catch_unwind` gave the method's status.
        Turn::Done(Some(status)) => match (job.reply.call(), reply.take()) {
            // The value (or application error) was encoded with its response header.
            (Some((conn, rid)), Some(frame)) => {
                answer(conn, &job, *rid, frame.freeze(), &reporter.counters);
                None
            }
            (Some(_), None) => Some(status),
            (None, _) => None,
        },
        // `catch_unwind` gave nothing: the method panicked.
        Turn::Done(None) => {
            tracing::warn!(%grain, method = job.method.0, "grain method panicked; replacing the instance");
            finish(&job, Some(Status::HandlerPanicked), reporter);
            return true;
        }
        // The deadline passed (say so) or the caller gave up (no answer wanted).
        Turn::Cancelled { expired } => expired.then_some(Status::DeadlineExceeded),
    };
    finish(&job, status, reporter);
    false
}

/// Answers `job` with `status` (if any, and if its caller waits) and reports it done.
fn finish(job: &Job, status: Option<Status>, reporter: &Reporter) {
    if let (Some(status), Some((conn, rid))) = (status, job.reply.call()) {
        reporter.unasked(conn, dispatch::status(*rid, status, &[]));
    }
    reporter.report(Report::Done { token: job.token });
}

async fn run<I, G, F, T>(
    factory: Arc<F>,
    extras: Arc<[Extra<G>]>,
    id: GrainId,
    mailbox: Arc<Mailbox>,
    reporter: Reporter,
) where
    I: Dispatch<G>,
    G: Send + 'static,
    F: Make<G>,
    T: Turns<I, G>,
{
    let binding = reporter.binding.clone();
    let hooks = Some(reporter.hooks.clone());
    let context = Arc::new(context::Activation::new(id.clone(), binding, hooks));
    let here = Here { context, extras, make: factory.clone() };
    let mut grain = activate::<I, G, F>(&factory, &here).await;
    let budget = reporter.budget;
    while let Some(mut job) = mailbox.next().await {
        if let Some(ended) = job.ended.take() {
            match grain.as_mut() {
                Ok(g) => {
                    if session_turn::<I, G>(g, job, *ended, &here, &mailbox, &reporter).await {
                        grain = activate::<I, G, F>(&factory, &here).await;
                    }
                }
                // No instance to tell (its activation failed): nothing to do.
                Err(_) => finish(&job, None, &reporter),
            }
        } else if caller_not_draining(&job, &budget) {
            reporter.counters.overloaded_send_queue.fetch_add(1, Ordering::Relaxed);
            finish(&job, Some(Status::Overloaded), &reporter);
        } else {
            if grain.is_err() {
                // Activation failed (a panic, or state that could not be loaded): try again
                // for each call, failing it while it cannot be made.
                grain = activate::<I, G, F>(&factory, &here).await;
            }
            match grain.as_mut() {
                Ok(g) => {
                    if T::run_job(g, job, &here, &mailbox, &reporter).await {
                        // The instance's state may be broken: start over with a fresh one.
                        grain = activate::<I, G, F>(&factory, &here).await;
                    }
                }
                Err(status) => finish(&job, Some(*status), &reporter),
            }
        }
        if let Ok(g) = grain.as_mut()
            && factory.stale(g)
        {
            // A write found it stale (another activation loaded since): start over from what
            // is stored.
            tracing::info!(grain = %id, "stale state: the activation starts over from storage");
            grain = activate::<I, G, F>(&factory, &here).await;
        }
        if !mailbox.is_empty() {
            // More calls wait: let the endpoint's task and other grains run first, so a busy
            // grain never holds its thread for more than one call at a time.
            tokio::task::yield_now().await;
        }
    }
    here.context.stop_timers();
    if let Ok(g) = grain.as_mut() {
        let _ = catch_unwind(context::scope(hook_scope(&here.context), I::deactivate(g))).await;
        for extra in here.extras.iter() {
            let hook = (extra.deactivate)(g);
            let _ = catch_unwind(context::scope(hook_scope(&here.context), hook)).await;
        }
        // What must outlive the activation (its state, if it changed) is kept now.
        factory.unmake(g).await;
    }
    reporter.report(Report::Gone { grain: id });
}
