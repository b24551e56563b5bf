//! The server's activation table: every activation in a slab, an index by grain id, and the
//! idle ones in least-recently-used order, so that the idle sweep and eviction cost what they
//! remove, not what the server holds.
//!
//! An activation is *idle* while no call is routed to it. Each time it becomes idle it is
//! appended to the LRU queue with a fresh stamp; an entry whose stamp no longer matches its
//! activation's (it got busy again, or left) is stale and skipped. Stale entries are dropped
//! when they reach the front, and the queue is rebuilt when they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::budget::AddrId;
use crate::proto::ids::{GrainId, IdMap, PeerId};
use crate::rpc::turns::{Job, Mailbox};

pub(super) enum Life {
    Active,
    /// Told to deactivate; calls that arrive meanwhile wait here for the next activation.
    Deactivating(Vec<Job>),
}

pub(super) struct Activation {
    pub(super) grain: GrainId,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) life: Life,
    /// Calls routed to it and not reported done.
    pub(super) busy: usize,
    pub(super) last_used: Instant,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Its grain type's index in the registry (its host's first interface).
    pub(super) index: usize,
    /// The connection whose call activated it (its share of activations).
    pub(super) creator: PeerId,
    /// That connection's address (see `server::budget`).
    pub(super) creator_addr: AddrId,
    /// What it is charged against the activation bytes (see `budget::activation_cost`).
    pub(super) cost: usize,
    /// Sequenced updates (see `service::updates`): per (session, method), the number of the
    /// last one taken and the token of its job.
    pub(super) updates: IdMap<u64, (u64, u64)>,
    /// Its stamp in the LRU queue while idle; 0 while busy.
    stamp: u64,
    /// How long it may stay idle, if its type says (`Host::idle_after`); else the server's.
    pub(super) idle: Option<Duration>,
    /// It asked to be kept until then, idle or not (`GrainContext::keep_alive`).
    pub(super) keep_until: Option<Instant>,
}

/// Who made an activation: the connection, its address, and what the activation costs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Creator {
    pub(super) peer: PeerId,
    pub(super) addr: AddrId,
    pub(super) cost: usize,
}

impl Activation {
    pub(super) fn new(
        grain: GrainId,
        mailbox: Arc<Mailbox>,
        task: tokio::task::JoinHandle<()>,
        index: usize,
        creator: Creator,
        now: Instant,
    ) -> Self {
        Self {
            grain,
            mailbox,
            life: Life::Active,
            busy: 0,
            last_used: now,
            task,
            index,
            creator: creator.peer,
            creator_addr: creator.addr,
            cost: creator.cost,
            updates: IdMap::default(),
            stamp: 0,
            idle: None,
            keep_until: None,
        }
    }

    pub(super) fn is_active(&self) -> bool {
        matches!(self.life, Life::Active)
    }

    /// When its idle time runs out (`idle`: the server's), if it stays idle.
    fn expiry(&self, idle: Duration) -> Instant {
        let at = self.last_used + self.idle.unwrap_or(idle);
        self.keep_until.map_or(at, |k| k.max(at))
    }
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Table {
    slab: Slab<Activation>,
    index: HashMap<GrainId, usize>,
    /// (slab key, stamp) of activations that became idle, oldest first.
    lru: VecDeque<(usize, u64)>,
    /// Idle ones that outlast the shortest idle time (their type's is longer, or they asked to
    /// be kept), by when theirs runs out: the sweep moves them here from the LRU queue's front.
    later: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_stamp: u64,
    /// Activations told to deactivate and not gone yet.
    deactivating: usize,
    /// What all activations are charged, and those told to deactivate.
    bytes: usize,
    leaving_bytes: usize,
}

impl Table {
    /// Activations held (active or deactivating).
    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Activations told to deactivate and not gone yet.
    pub(super) fn deactivating(&self) -> usize {
        self.deactivating
    }

    /// What all activations held are charged (active or deactivating).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// What those told to deactivate are charged.
    pub(super) fn leaving_bytes(&self) -> usize {
        self.leaving_bytes
    }

    pub(super) fn key_of(&self, grain: &GrainId) -> Option<usize> {
        self.index.get(grain).copied()
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut Activation> {
        self.slab.get_mut(key)
    }

    pub(super) fn by_grain(&self, grain: &GrainId) -> Option<&Activation> {
        self.slab.get(self.key_of(grain)?)
    }

    pub(super) fn by_grain_mut(&mut self, grain: &GrainId) -> Option<&mut Activation> {
        let key = self.key_of(grain)?;
        self.slab.get_mut(key)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Activation> {
        self.slab.iter().map(|(_, a)| a)
    }

    /// Adds an activation (busy: its first call is on its way); returns its key.
    pub(super) fn insert(&mut self, a: Activation) -> usize {
        let grain = a.grain.clone();
        self.bytes += a.cost;
        let key = self.slab.insert(a);
        self.index.insert(grain, key);
        key
    }

    /// Removes the activation of `grain` (its task ended).
    pub(super) fn remove(&mut self, grain: &GrainId) -> Option<Activation> {
        let key = self.index.remove(grain)?;
        let a = self.slab.try_remove(key)?;
        self.bytes -= a.cost;
        if !a.is_active() {
            self.deactivating -= 1;
            self.leaving_bytes -= a.cost;
        }
        Some(a)
    }

    /// A call was routed to `key`.
    pub(super) fn call_started(&mut self, key: usize, now: Instant) {
        if let Some(a) = self.slab.get_mut(key) {
            a.busy += 1;
            a.last_used = now;
            a.stamp = 0;
        }
    }

    /// A call routed to `key` ended; the activation may have become idle.
    pub(super) fn call_done(&mut self, key: usize, now: Instant) {
        let Some(a) = self.slab.get_mut(key) else { return };
        a.busy = a.busy.saturating_sub(1);
        a.last_used = now;
        if a.busy == 0 && a.is_active() {
            self.next_stamp += 1;
            a.stamp = self.next_stamp;
            self.lru.push_back((key, self.next_stamp));
            if self.lru.len() > 2 * self.slab.len() + 1024 {
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        let slab = &self.slab;
        self.lru.retain(|(k, s)| slab.get(*k).is_some_and(|a| a.stamp == *s));
        self.later.retain(|Reverse((_, k, s))| slab.get(*k).is_some_and(|a| a.stamp == *s));
    }

    /// Tells activation `key` to deactivate (its queued calls run first).
    pub(super) fn deactivate(&mut self, key: usize) {
        let Some(a) = self.slab.get_mut(key) else { return };
        if a.is_active() {
            a.life = Life::Deactivating(Vec::new());
            a.stamp = 0;
            a.mailbox.close();
            self.deactivating += 1;
            self.leaving_bytes += a.cost;
        }
    }

    /// The least recently used idle activation, taken out of the LRU queue (or, when that is
    /// empty, the idle one whose time runs out first).
    fn pop_idle(&mut self) -> Option<usize> {
        let live = |slab: &Slab<Activation>, key: usize, stamp: u64| {
            slab.get(key).is_some_and(|a| a.stamp == stamp && a.busy == 0)
        };
        while let Some((key, stamp)) = self.lru.pop_front() {
            if live(&self.slab, key, stamp) {
                return Some(key);
            }
        }
        while let Some(Reverse((_, key, stamp))) = self.later.pop() {
            if live(&self.slab, key, stamp) {
                return Some(key);
            }
        }
        None
    }

    /// Keeps activation `key` until `until` at least, idle or not.
    pub(super) fn keep_until(&mut self, key: usize, until: Instant) {
        if let Some(a) = self.slab.get_mut(key) {
            a.keep_until = Some(a.keep_until.map_or(until, |k| k.max(until)));
        }
    }

    /// Deactivates the least recently used idle activation, to make room; false if every
    /// activation is busy.
    pub(super) fn evict_one(&mut self) -> bool {
        match self.pop_idle() {
            Some(key) => {
                self.deactivate(key);
                true
            }
            None => false,
        }
    }

    /// Deactivates the least recently used idle activation among the first `scan` idle ones
    /// for whose creator's address `pick` holds; false if none does.
    pub(super) fn evict_where(&mut self, scan: usize, pick: impl Fn(AddrId) -> bool) -> bool {
        let mut seen = 0;
        let mut found = None;
        for &(key, stamp) in &self.lru {
            let Some(a) = self.slab.get(key) else { continue };
            if a.stamp != stamp || a.busy != 0 {
                continue; // stale
            }
            if pick(a.creator_addr) {
                found = Some(key);
                break;
            }
            seen += 1;
            if seen >= scan {
                break;
            }
        }
        match found {
            Some(key) => {
                self.deactivate(key); // its LRU entry is stale now, skipped later
                true
            }
            None => false,
        }
    }

    /// Deactivates every activation idle for its idle time or longer (`idle`: the server's;
    /// `shortest`: the shortest of any type's, at most `idle`); returns how many.
    pub(super) fn sweep(&mut self, now: Instant, idle: Duration, shortest: Duration) -> usize {
        let mut n = 0;
        while let Some(&(key, stamp)) = self.lru.front() {
            match self.slab.get(key) {
                Some(a) if a.stamp == stamp => {
                    if now < a.last_used + shortest {
                        break; // the rest became idle later
                    }
                    self.lru.pop_front();
                    let at = a.expiry(idle);
                    n += usize::from(self.expire_or_defer(key, stamp, at, now));
                }
                _ => {
                    self.lru.pop_front();
                }
            }
        }
        while let Some(Reverse((at, key, stamp))) = self.later.peek().copied() {
            if at > now {
                break;
            }
            self.later.pop();
            let Some(a) = self.slab.get(key).filter(|a| a.stamp == stamp) else { continue };
            // It may have asked to be kept longer meanwhile.
            let at = a.expiry(idle);
            n += usize::from(self.expire_or_defer(key, stamp, at, now));
        }
        n
    }

    /// Deactivates the activation at `key` if `at`, when it expires, has come (true); else
    /// looks at it again then.
    fn expire_or_defer(&mut self, key: usize, stamp: u64, at: Instant, now: Instant) -> bool {
        if now >= at {
            self.deactivate(key);
            true
        } else {
            self.later.push(Reverse((at, key, stamp)));
            false
        }
    }

    /// When the next idle activation's idle time may run out (see [`sweep`](Self::sweep)).
    pub(super) fn next_expiry(&mut self, shortest: Duration) -> Option<Instant> {
        let mut lru = None;
        while let Some(&(key, stamp)) = self.lru.front() {
            match self.slab.get(key) {
                Some(a) if a.stamp == stamp => {
                    lru = Some(a.last_used + shortest);
                    break;
                }
                _ => {
                    self.lru.pop_front();
                }
            }
        }
        let later = self.later.peek().map(|Reverse((at, _, _))| *at);
        [lru, later].into_iter().flatten().min()
    }

    /// Deactivates every activation for which `f` holds.
    pub(super) fn deactivate_where(&mut self, f: impl Fn(&Activation) -> bool) {
        let keys: Vec<usize> = self.slab.iter().filter(|(_, a)| f(a)).map(|(k, _)| k).collect();
        for k in keys {
            self.deactivate(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ids::{GrainKey, GrainType};

    fn grain(k: i64) -> GrainId {
        GrainId { ty: GrainType::of("T"), key: GrainKey::Int(k) }
    }

    #[tokio::test]
    async fn idle_activations_leave_in_lru_order_and_busy_ones_stay() {
        let t0 = crate::test_epoch();
        let mut t = Table::default();
        let mut keys = Vec::new();
        for i in 0..5 {
            let task = tokio::spawn(async {});
            let creator = Creator { peer: PeerId(1), addr: AddrId::test(1), cost: 10 };
            let a = Activation::new(grain(i), Arc::default(), task, 0, creator, t0);
            let k = t.insert(a);
            t.call_started(k, t0);
            keys.push(k);
        }
        // 3, 1, 4 become idle in that order; 0 and 2 stay busy.
        for (n, i) in [3, 1, 4].into_iter().enumerate() {
            t.call_done(keys[i], t0 + Duration::from_secs(n as u64));
        }
        // 1 gets busy again: its entry is stale.
        t.call_started(keys[1], t0 + Duration::from_secs(5));
        assert!(t.evict_one());
        assert!(!t.slab[keys[3]].is_active(), "the least recently used idle one");
        assert_eq!(t.deactivating(), 1);
        assert!(t.evict_one());
        assert!(!t.slab[keys[4]].is_active());
        assert!(!t.evict_one(), "only busy ones are left");
        // The sweep takes only those idle long enough, oldest first.
        t.call_done(keys[1], t0 + Duration::from_secs(10));
        t.call_done(keys[0], t0 + Duration::from_secs(20));
        let idle = Duration::from_secs(30);
        assert_eq!(t.next_expiry(idle), Some(t0 + Duration::from_secs(40)));
        assert_eq!(t.sweep(t0 + Duration::from_secs(45), idle, idle), 1);
        assert!(!t.slab[keys[1]].is_active() && t.slab[keys[0]].is_active());
        assert_eq!(t.next_expiry(idle), Some(t0 + Duration::from_secs(50)));
        assert!(t.remove(&grain(3)).is_some());
        assert_eq!((t.len(), t.deactivating()), (4, 2));
        assert_eq!((t.bytes(), t.leaving_bytes()), (40, 20));
    }

    /// A long-idle type's activation at the LRU queue's front does not hold back a short-idle
    /// one behind it; one kept alive outlasts its idle time.
    #[tokio::test]
    async fn idle_times_per_type_and_keep_alive() {
        let t0 = crate::test_epoch();
        let mut t = Table::default();
        let s = Duration::from_secs;
        let mut keys = Vec::new();
        for (i, idle) in [(0, Some(s(100))), (1, Some(s(5))), (2, None)] {
            let task = tokio::spawn(async {});
            let creator = Creator { peer: PeerId(1), addr: AddrId::test(1), cost: 10 };
            let mut a = Activation::new(grain(i), Arc::default(), task, 0, creator, t0);
            a.idle = idle;
            let k = t.insert(a);
            t.call_started(k, t0);
            t.call_done(k, t0 + s(i as u64));
            keys.push(k);
        }
        t.keep_until(keys[2], t0 + s(60));
        let (idle, shortest) = (s(30), s(5));
        assert_eq!(t.next_expiry(shortest), Some(t0 + s(5)));
        assert_eq!(t.sweep(t0 + s(10), idle, shortest), 1, "the short one, behind the long one");
        assert!(!t.slab[keys[1]].is_active());
        assert_eq!(t.sweep(t0 + s(40), idle, shortest), 0, "the kept one outlasts 30 s");
        assert_eq!(t.next_expiry(shortest), Some(t0 + s(60)));
        assert_eq!(t.sweep(t0 + s(61), idle, shortest), 1);
        assert!(!t.slab[keys[2]].is_active() && t.slab[keys[0]].is_active());
        assert_eq!(t.sweep(t0 + s(100), idle, shortest), 1, "its type's 100 s");
    }

    #[tokio::test]
    async fn eviction_can_pick_by_the_creators_address_within_a_scan() {
        let t0 = crate::test_epoch();
        let mut t = Table::default();
        let (a, b) = (AddrId::test(1), AddrId::test(2));
        let mut keys = Vec::new();
        for i in 0..6 {
            let addr = if i < 4 { a } else { b };
            let creator = Creator { peer: PeerId(1), addr, cost: 10 };
            let task = tokio::spawn(async {});
            let k = t.insert(Activation::new(grain(i), Arc::default(), task, 0, creator, t0));
            t.call_started(k, t0);
            t.call_done(k, t0 + Duration::from_secs(i as u64));
            keys.push(k);
        }
        // b's oldest idle one is fifth in LRU order: beyond a scan of 3, within one of 8.
        assert!(!t.evict_where(3, |x| x == b));
        assert!(t.evict_where(8, |x| x == b));
        assert!(!t.slab[keys[4]].is_active() && t.slab[keys[0]].is_active());
        // Its LRU entry is stale now: the plain eviction takes a's oldest.
        assert!(t.evict_one());
        assert!(!t.slab[keys[0]].is_active());
        assert_eq!((t.deactivating(), t.leaving_bytes()), (2, 20));
    }
}
