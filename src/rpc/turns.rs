//! One object's calls, one turn at a time: the mailbox between whoever admits calls (the
//! server's service, for an activation) and the task that runs them in arrival order, with
//! removal of a queued call (cancelled or expired) and cancellation of the running one.
//!
//! A turn is exclusive (one call, holding the object mutably), or shared: a call of a method
//! that takes `&self`, on an object whose interface has `#[interleave]` methods. While a
//! shared turn runs, interleaving calls its dispatcher puts in the side lane run beside it,
//! until all of them have finished.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;

use super::call::CallKind;
use super::context::{Activation, Caller, Current, Served, SessionEnded, scope};
use super::dispatch::{self, Dispatch, Reply};
use super::stream::StreamCtl;
use crate::proto::ids::{MethodId, RequestId};
use crate::proto::wire::rpc::Status;
use crate::sync::{Signal, lock};
use crate::transport::Connection;
use crate::transport::Delivery;
use std::sync::Arc;

/// A call for an activation.
#[derive(Debug)]
pub(crate) struct Job {
    /// Unique per call on this server.
    pub(crate) token: u64,
    /// Where to answer a call (the caller's session and the call's id); nowhere for a one-way
    /// call.
    pub(crate) reply: CallKind<(Connection, RequestId)>,
    /// Which of its host's interfaces the call is for: 0 the first, `n` the `n`th given to
    /// `Host::with`.
    pub(crate) iface: u8,
    /// Its method is `#[unreliable]`: its answer is sent once too.
    pub(crate) unreliable: bool,
    pub(crate) method: MethodId,
    pub(crate) args: Bytes,
    /// Who made it (the method reads it with `caller()`).
    pub(crate) caller: Caller,
    /// When its caller stops waiting (what calls the grain makes meanwhile may take).
    pub(crate) deadline: tokio::time::Instant,
    /// Not a call: a session the grain watched ended (its `on_session_ended` hook runs).
    pub(crate) ended: Option<Box<SessionEnded>>,
    /// A stream call: its credit and stop, and the caller's ordered stream its items go on.
    pub(crate) stream: Option<(Arc<StreamCtl>, u8)>,
    /// An `#[exactly_once]` call: its caller's id for it.
    pub(crate) once: Option<u64>,
}

/// A mailbox's queue: jobs in token order (tokens only grow, and a mailbox gets its jobs in
/// the order they were made), so a queued job is found by binary search. A removed job leaves
/// a hole (`None`) that `pop` skips: removing costs O(log n), whatever the queue's length.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<(u64, Option<Job>)>,
    /// Jobs not removed.
    live: usize,
}

impl Queue {
    fn push(&mut self, job: Job) {
        debug_assert!(self.jobs.back().is_none_or(|(t, _)| *t < job.token), "token order");
        self.jobs.push_back((job.token, Some(job)));
        self.live += 1;
    }

    fn pop(&mut self) -> Option<Job> {
        while let Some((_, job)) = self.jobs.pop_front() {
            if let Some(job) = job {
                self.live -= 1;
                return Some(job);
            }
        }
        None
    }

    fn remove(&mut self, token: u64) -> Option<Job> {
        let i = self.jobs.binary_search_by_key(&token, |(t, _)| *t).ok()?;
        let job = self.jobs.get_mut(i)?.1.take()?;
        self.live -= 1;
        // Holes at either end go at once; the rest when `pop` reaches them.
        while self.jobs.back().is_some_and(|(_, j)| j.is_none()) {
            self.jobs.pop_back();
        }
        while self.jobs.front().is_some_and(|(_, j)| j.is_none()) {
            self.jobs.pop_front();
        }
        Some(job)
    }
}

/// The queue between a host's dispatcher (the server's service) and one object's task. A
/// mutex rather than a channel because the service also removes queued calls (cancelled or
/// expired); held only for a queue operation, never across an await.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    /// Interleaving calls for the shared turn running now (taken before the queue), and how
    /// many (read without the lock: interfaces without `#[interleave]` never use it).
    side: Mutex<VecDeque<Job>>,
    side_len: AtomicUsize,
    signal: Signal,
    closing: AtomicBool,
    /// The call running now (0 when none).
    running: AtomicU64,
    /// The running call to cut short, whether its deadline passed (answer
    /// `DeadlineExceeded`) rather than its caller gave up (answer nothing), and the signal
    /// that says so.
    cancel_token: AtomicU64,
    cancel_expired: AtomicBool,
    cancel: Signal,
    /// A shared turn runs: it takes interleaving calls.
    shared: AtomicBool,
    /// The calls of the shared turn running now, and those to cut short.
    side_running: Mutex<Vec<u64>>,
    side_cancels: Mutex<Vec<(u64, bool)>>,
}

impl Mailbox {
    pub(crate) fn push(&self, job: Job) {
        lock(&self.queue).push(job);
        self.signal.notify();
    }

    /// Queues an interleaving call for the shared turn running now (see
    /// [`is_shared`](Self::is_shared)); if that turn ended meanwhile, it runs next.
    pub(crate) fn push_side(&self, job: Job) {
        let mut side = lock(&self.side);
        side.push_back(job);
        self.side_len.store(side.len(), Ordering::Release);
        drop(side);
        self.signal.notify();
    }

    /// The first interleaving call waiting, if any.
    fn pop_side(&self) -> Option<Job> {
        if self.side_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut side = lock(&self.side);
        let job = side.pop_front();
        self.side_len.store(side.len(), Ordering::Release);
        job
    }

    /// Whether a shared turn runs (an interleaving call may join it).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// Takes a queued call out; `None` if it is running or done.
    pub(crate) fn remove(&self, token: u64) -> Option<Job> {
        if self.side_len.load(Ordering::Acquire) > 0 {
            let mut side = lock(&self.side);
            if let Some(i) = side.iter().position(|j| j.token == token) {
                let job = side.remove(i);
                self.side_len.store(side.len(), Ordering::Release);
                return job;
            }
        }
        lock(&self.queue).remove(token)
    }

    /// Cuts the call short if it is running; `expired`: because its deadline passed.
    pub(crate) fn cancel_running(&self, token: u64, expired: bool) {
        if self.is_shared() {
            if lock(&self.side_running).contains(&token) {
                lock(&self.side_cancels).push((token, expired));
                self.cancel.notify();
            }
            return;
        }
        if self.running.load(Ordering::Acquire) == token {
            self.cancel_expired.store(expired, Ordering::Relaxed);
            self.cancel_token.store(token, Ordering::Release);
            self.cancel.notify();
        }
    }

    /// Asks the task to finish the queued calls and deactivate.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.signal.notify();
    }

    /// The call running now (0 when none).
    pub(crate) fn running(&self) -> u64 {
        self.running.load(Ordering::Acquire)
    }

    /// How many calls are queued.
    pub(crate) fn len(&self) -> usize {
        self.side_len.load(Ordering::Acquire) + lock(&self.queue).live
    }

    /// Whether no call is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.side_len.load(Ordering::Acquire) == 0 && lock(&self.queue).live == 0
    }

    fn pop(&self) -> Option<Job> {
        self.pop_side().or_else(|| lock(&self.queue).pop())
    }

    /// Runs `first` and the interleaving calls that join it, each made a future by `start`,
    /// concurrently, until every one has finished or been cut short; `done` hears how each
    /// ended. The calls' futures share the object (`&self` methods); see the module docs.
    pub(crate) async fn shared_turn<'g, T>(
        &self,
        first: Job,
        mut start: impl FnMut(&Job) -> Pin<Box<dyn Future<Output = T> + Send + 'g>>,
        mut done: impl FnMut(Job, Turn<T>),
    ) {
        self.cancel.clear();
        lock(&self.side_cancels).clear();
        *lock(&self.side_running) = vec![first.token];
        self.running.store(first.token, Ordering::Release);
        self.shared.store(true, Ordering::Release);
        let f = start(&first);
        let mut calls = vec![(first, f)];
        std::future::poll_fn(|cx| {
            loop {
                while let Some(job) = self.pop_side() {
                    lock(&self.side_running).push(job.token);
                    let f = start(&job);
                    calls.push((job, f));
                }
                let mut ended = Vec::new();
                if self.cancel.poll(cx).is_ready() {
                    for (token, expired) in std::mem::take(&mut *lock(&self.side_cancels)) {
                        if let Some(i) = calls.iter().position(|(j, _)| j.token == token) {
                            ended.push((calls.swap_remove(i).0, Turn::Cancelled { expired }));
                        }
                    }
                }
                let mut i = 0;
                while i < calls.len() {
                    match calls[i].1.as_mut().poll(cx) {
                        Poll::Ready(v) => ended.push((calls.swap_remove(i).0, Turn::Done(v))),
                        Poll::Pending => i += 1,
                    }
                }
                if !ended.is_empty() {
                    let mut running = lock(&self.side_running);
                    running.retain(|t| ended.iter().all(|(j, _)| j.token != *t));
                }
                for (job, turn) in ended {
                    done(job, turn);
                }
                if calls.is_empty() {
                    return Poll::Ready(());
                }
                // A call may have joined meanwhile: take it now.
                if self.signal.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await;
        self.shared.store(false, Ordering::Release);
        self.running.store(0, Ordering::Release);
        lock(&self.side_running).clear();
    }

    /// Runs `call` as the turn of the job with `token`: until it finishes, or until
    /// [`cancel_running`](Self::cancel_running) cuts it short (the future is then dropped).
    pub(crate) async fn turn<T>(&self, token: u64, call: impl Future<Output = T>) -> Turn<T> {
        self.cancel.clear();
        self.running.store(token, Ordering::Release);
        let mut call = pin!(call);
        let turn = std::future::poll_fn(|cx| {
            if self.cancel.poll(cx).is_ready() && self.cancel_token.load(Ordering::Acquire) == token
            {
                // `cancel_expired` was stored before the token (release), read after (acquire).
                let expired = self.cancel_expired.load(Ordering::Relaxed);
                return Poll::Ready(Turn::Cancelled { expired });
            }
            call.as_mut().poll(cx).map(Turn::Done)
        })
        .await;
        self.running.store(0, Ordering::Release);
        turn
    }

    /// The next call, waiting for one; `None` once the mailbox is closing and empty (the
    /// activation ends).
    pub(crate) async fn next(&self) -> Option<Job> {
        loop {
            if let Some(job) = self.pop() {
                return Some(job);
            }
            if self.closing.load(Ordering::Acquire) && self.is_empty() {
                return None;
            }
            std::future::poll_fn(|cx| self.signal.poll(cx)).await;
        }
    }
}

/// Polls `f`, turning a panic into `None`.
pub(crate) async fn catch_unwind<T>(f: impl Future<Output = T>) -> Option<T> {
    let mut f = pin!(f);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    })
    .await
}

/// Runs the calls of an object a caller hosts (a client's observer) one at a time, answering
/// each over the session it came on, until the mailbox closes; `done` hears each call's end.
/// A panic fails its call (`HandlerPanicked`); the object stays (it is the application's, not
/// one a factory can make again).
pub(crate) async fn serve<I: Dispatch<O>, O: Send>(
    mut object: O,
    here: Arc<Activation>,
    mailbox: Arc<Mailbox>,
    done: impl Fn(&Job),
) {
    while let Some(job) = mailbox.next().await {
        let mut reply = Reply::new(job.reply.as_ref().map(|(_, rid)| *rid));
        let dispatch = I::dispatch(&mut object, job.method, &job.args, &mut reply);
        let served = Served { caller: job.caller.clone(), deadline: job.deadline };
        let current = Current { activation: here.clone(), call: Some(served) };
        let ran = mailbox.turn(job.token, catch_unwind(scope(current, dispatch))).await;
        let status = match ran {
            Turn::Done(Some(status)) => reply.take().map_or(Some(status), |frame| {
                if let Some((conn, rid)) = job.reply.call() {
                    dispatch::answer(conn, *rid, frame.freeze(), job.unreliable);
                }
                None
            }),
            Turn::Done(None) => {
                tracing::warn!(object = %here.id, method = job.method.0, "an observer's method panicked");
                Some(Status::HandlerPanicked)
            }
            Turn::Cancelled { expired } => expired.then_some(Status::DeadlineExceeded),
        };
        if let (Some(status), Some((conn, rid))) = (status, job.reply.call()) {
            conn.push(Delivery::ReliableUnordered, dispatch::status(*rid, status, &[]));
        }
        done(&job);
    }
}

/// How a turn ended.
#[derive(Debug)]
pub(crate) enum Turn<T> {
    /// The call's future finished with this.
    Done(T),
    /// Cut short: its deadline passed (`expired`: answer `DeadlineExceeded`) or its caller
    /// gave up (answer nothing).
    Cancelled { expired: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(token: u64) -> Job {
        let caller =
            Caller::new(crate::rpc::context::SessionId(1), "127.0.0.1:1".parse().unwrap(), None);
        let reply = CallKind::OneWay;
        let deadline = tokio::time::Instant::now();
        let args = Bytes::new();
        let (iface, unreliable, method, ended) = (0, false, MethodId(0), None);
        let (stream, once) = (None, None);
        Job { token, reply, iface, unreliable, method, args, caller, deadline, ended, stream, once }
    }

    #[test]
    fn queued_calls_are_removed_by_token_and_pop_skips_the_holes() {
        let mut q = Queue::default();
        for t in 1..=10_000 {
            q.push(job(t));
        }
        // Cancel every other call, the last one and a missing one: each is one binary search.
        for t in (2..=10_000).step_by(2) {
            assert_eq!(q.remove(t).map(|j| j.token), Some(t));
        }
        assert!(q.remove(4).is_none(), "already removed");
        assert!(q.remove(20_000).is_none(), "never queued");
        assert_eq!(q.live, 5_000);
        assert!(q.jobs.len() <= 10_000, "holes at the ends go at once");
        let popped: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|j| j.token).collect();
        assert_eq!(popped, (1..10_000).step_by(2).collect::<Vec<_>>());
        assert_eq!((q.live, q.jobs.len()), (0, 0));
    }
}
