//! Keeping the leases of the grains a server holds in a [`GrainDirectory`]: each grain's
//! lease is renewed a third of a lease after it was last confirmed, in batches of at most
//! [`BATCH`] grains sent concurrently (pipelined on one connection), each batch with its own
//! deadline; a grain is given up only when its *own* lease is about to lapse unconfirmed —
//! never because another batch failed. So renewing 100,000 grains costs 200 small requests per
//! third of a lease, spread over it, and a slow or briefly unreachable directory costs only the
//! grains whose leases really ran out.
//!
//! The first renewal of a grain comes between a sixth and a third of a lease after its claim
//! (by a hash of the grain), so grains claimed in a burst are renewed spread over that window,
//! and stay spread.

use std::cmp::{Ordering as Order, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Claim, DirectoryError, GrainDirectory, Owner};
use crate::proto::ids::GrainId;
use crate::sync::lock;

/// Grains renewed per request.
pub const BATCH: usize = 500;
/// Renewal requests in flight at once.
pub const IN_FLIGHT: usize = 64;

/// One held grain's lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Until when the directory has confirmed it (measured from when the confirming request
    /// was sent: a conservative bound).
    until: Instant,
    /// Bumped on every change, to tell stale queue entries.
    generation: u64,
}

/// A renewal due at `at`, for the lease of `grain` in its `generation` (an entry whose
/// generation no longer matches its lease is stale).
#[derive(Debug)]
struct Due {
    at: Instant,
    generation: u64,
    grain: GrainId,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.generation) == (other.at, other.generation)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Order {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

#[derive(Debug, Default)]
struct Held {
    leases: HashMap<GrainId, Lease>,
    /// Renewals by when they are due, earliest first.
    due: BinaryHeap<Reverse<Due>>,
    /// Leases by when they lapse unconfirmed, earliest first (checked every tick, whatever is
    /// in flight or waiting for room).
    lapse: BinaryHeap<Reverse<Due>>,
    next_generation: u64,
}

impl Held {
    fn set(&mut self, grain: &GrainId, until: Instant, due: Instant) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.leases.insert(grain.clone(), Lease { until, generation });
        self.due.push(Reverse(Due { at: due, generation, grain: grain.clone() }));
        self.lapse.push(Reverse(Due { at: until, generation, grain: grain.clone() }));
        // Stale entries (released or renewed grains) go when they reach the front; rebuild the
        // queues when they outnumber the live ones.
        let leases = &self.leases;
        let live = |Reverse(d): &Reverse<Due>| {
            leases.get(&d.grain).is_some_and(|l| l.generation == d.generation)
        };
        if self.due.len() > 2 * leases.len() + 1024 {
            self.due.retain(live);
        }
        if self.lapse.len() > 2 * leases.len() + 1024 {
            self.lapse.retain(live);
        }
    }
}

/// What renewing cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStats {
    /// Grains held now.
    pub held: usize,
    /// Renewal requests sent (each up to [`BATCH`] grains).
    pub requests: u64,
    /// Grain renewals sent.
    pub renewals: u64,
    /// Requests that failed or timed out (their grains are retried while their leases last).
    pub failed_requests: u64,
    /// Grains given up because their own lease was about to lapse unconfirmed.
    pub expired: u64,
    /// Grains the directory said were no longer ours.
    pub taken: u64,
}

/// The leases a server holds in a directory. See the module docs.
pub struct Leases {
    directory: Arc<dyn GrainDirectory>,
    me: Owner,
    lease: Duration,
    timeout: Duration,
    held: Mutex<Held>,
    requests: AtomicU64,
    renewals: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    taken: AtomicU64,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("me", &self.me).field("lease", &self.lease).finish()
    }
}

impl Leases {
    /// Leases of `lease` for `me` in `directory`, each request bounded by `timeout`.
    pub fn new(
        directory: Arc<dyn GrainDirectory>,
        me: Owner,
        lease: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            directory,
            me,
            lease,
            timeout,
            held: Mutex::default(),
            requests: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// The directory.
    pub fn directory(&self) -> &Arc<dyn GrainDirectory> {
        &self.directory
    }

    /// Who holds them.
    pub fn owner(&self) -> &Owner {
        &self.me
    }

    /// How long before a lease lapses unconfirmed its grain is given up: a tenth of the lease,
    /// at least the request timeout (a renewal in flight could confirm it no later), at most a
    /// third of the lease (with a request timeout longer than the lease, a lease would
    /// otherwise be given up as soon as it was won).
    fn margin(&self) -> Duration {
        (self.lease / 10).max(self.timeout).min(self.lease / 3)
    }

    /// When the first renewal of a grain claimed at `at` is due: between a sixth and a third of
    /// a lease later, by the grain's hash.
    fn first_due(&self, grain: &GrainId, at: Instant) -> Instant {
        let third = self.lease / 3;
        let h = grain.stable_hash() % 1024;
        at + third / 2 + (third / 2) * u32::try_from(h).unwrap_or(0) / 1024
    }

    /// Claims `grain` (within the request timeout); keeps its lease if won.
    pub async fn claim(&self, grain: &GrainId) -> Result<Claim, DirectoryError> {
        let sent = Instant::now();
        let asked =
            tokio::time::timeout(self.timeout, self.directory.claim(grain, &self.me, self.lease));
        let claim = asked.await.map_err(|_| DirectoryError::Timeout)??;
        if claim == Claim::Won {
            lock(&self.held).set(grain, sent + self.lease, self.first_due(grain, sent));
        }
        Ok(claim)
    }

    /// Releases `grain` if held (best effort: its lease lapses anyway).
    pub async fn release(&self, grain: &GrainId) {
        if lock(&self.held).leases.remove(grain).is_none() {
            return;
        }
        let done =
            tokio::time::timeout(self.timeout, self.directory.release(grain, &self.me.server))
                .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::debug!(%grain, "could not release a grain (its lease will lapse)");
        }
    }

    /// What renewing cost so far.
    pub fn stats(&self) -> LeaseStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LeaseStats {
            held: lock(&self.held).leases.len(),
            requests: get(&self.requests),
            renewals: get(&self.renewals),
            failed_requests: get(&self.failed),
            expired: get(&self.expired),
            taken: get(&self.taken),
        }
    }

    /// Takes the grains due for renewal now, in batches (at most `room` batches), and gives
    /// up those whose leases are about to lapse unconfirmed (returned apart).
    fn due_now(&self, now: Instant, room: usize) -> (Vec<Vec<GrainId>>, Vec<GrainId>) {
        let margin = self.margin();
        let mut h = lock(&self.held);
        let (mut batches, mut expired) = (Vec::<Vec<GrainId>>::new(), Vec::new());
        while h.lapse.peek().is_some_and(|Reverse(d)| d.at <= now + margin) {
            let Some(Reverse(d)) = h.lapse.pop() else { break };
            if h.leases.get(&d.grain).is_some_and(|l| l.generation == d.generation) {
                h.leases.remove(&d.grain);
                expired.push(d.grain);
            }
        }
        while h.due.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Some(Reverse(entry)) = h.due.pop() else { break };
            let (generation, grain) = (entry.generation, entry.grain.clone());
            let fresh = h.leases.get(&grain).is_some_and(|l| l.generation == generation);
            if !fresh {
                continue; // released, or renewed since
            }
            if batches.last().is_none_or(|b| b.len() >= BATCH) {
                if batches.len() >= room {
                    h.due.push(Reverse(entry));
                    break;
                }
                batches.push(Vec::with_capacity(BATCH));
            }
            if let Some(b) = batches.last_mut() {
                b.push(grain);
            }
        }
        (batches, expired)
    }

    /// A renewal request sent at `sent` for `batch` ended: confirmed (except the grains in
    /// `gone`, no longer ours), or failed (retried while their leases last).
    fn renewed(&self, sent: Instant, batch: Vec<GrainId>, outcome: Option<Vec<GrainId>>) {
        let now = Instant::now();
        let retry = (self.lease / 60).max(Duration::from_millis(10));
        let mut h = lock(&self.held);
        let gone: std::collections::HashSet<&GrainId> =
            outcome.as_ref().map(|g| g.iter().collect()).unwrap_or_default();
        for grain in &batch {
            let Some(lease) = h.leases.get(grain).copied() else { continue };
            if gone.contains(grain) {
                h.leases.remove(grain);
                continue;
            }
            match outcome {
                Some(_) => {
                    let until = sent + self.lease;
                    h.set(grain, until, sent + self.lease / 3);
                }
                None => h.set(grain, lease.until, now + retry),
            }
        }
    }

    /// Renews forever (until the task is aborted); tells `lost` the grains this server no
    /// longer owns: taken by another, or whose own lease was about to lapse unconfirmed (their
    /// activations must end before another server may take them over).
    pub async fn run(self: Arc<Self>, lost: impl Fn(Vec<GrainId>) + Send) {
        let tick = (self.lease / 60).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let mut flying: JoinSet<(Instant, Vec<GrainId>, Option<Vec<GrainId>>)> = JoinSet::new();
        let mut next = Instant::now() + tick;
        loop {
            tokio::select! {
                Some(done) = flying.join_next() => {
                    if let Ok((sent, batch, outcome)) = done {
                        let gone = outcome.clone().unwrap_or_default();
                        self.renewed(sent, batch, outcome);
                        if !gone.is_empty() {
                            tracing::warn!(grains = gone.len(), "leases lost: deactivating");
                            self.taken.fetch_add(gone.len() as u64, Ordering::Relaxed);
                            lost(gone);
                        }
                    }
                    continue;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let now = Instant::now();
            next = now + tick;
            let (batches, expired) = self.due_now(now, IN_FLIGHT - flying.len());
            if !expired.is_empty() {
                tracing::warn!(
                    grains = expired.len(),
                    "leases about to lapse unconfirmed: deactivating"
                );
                self.expired.fetch_add(expired.len() as u64, Ordering::Relaxed);
                lost(expired);
            }
            for batch in batches {
                self.requests.fetch_add(1, Ordering::Relaxed);
                self.renewals.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let me = self.clone();
                flying.spawn(async move {
                    let sent = Instant::now();
                    let asked = me.directory.renew(&batch, &me.me.server, me.lease);
                    let outcome = match tokio::time::timeout(me.timeout, asked).await {
                        Ok(Ok(gone)) => Some(gone),
                        _ => {
                            me.failed.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    };
                    (sent, batch, outcome)
                });
            }
        }
    }
}
