//! The correlation table: pending calls by [`RequestId`], with their deadlines.
//!
//! Deadlines are data here, not a timer per call: a binary heap keyed by deadline, read by
//! [`InFlight::expire`] and [`InFlight::next_deadline`], compacted when completed calls leave
//! too many stale entries in it. Slots are reused in FIFO order from a pool of at least
//! [`MIN_FREE`] free slots, so a slot comes back only after many other calls, and its 16-bit
//! wire generation wraps only after millions: a late response cannot match a later call.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use super::ids::RequestId;

/// Free slots kept before any is reused.
pub const MIN_FREE: usize = 64;

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<(T, Instant)>,
}

/// Pending calls. See the module docs.
#[derive(Debug)]
pub struct InFlight<T> {
    entries: Vec<Entry<T>>,
    free: VecDeque<u32>,
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    live: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self { entries: Vec::new(), free: VecDeque::new(), deadlines: BinaryHeap::new(), live: 0 }
    }
}

impl<T> InFlight<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls pending.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no call is pending.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The pending calls, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref().map(|(v, _)| v))
    }

    /// Adds a call that expires at `deadline`.
    pub fn insert(&mut self, value: T, deadline: Instant) -> RequestId {
        let slot = if self.free.len() >= MIN_FREE {
            self.free.pop_front().unwrap_or(self.entries.len() as u32)
        } else {
            self.entries.len() as u32
        };
        if slot as usize == self.entries.len() {
            self.entries.push(Entry { generation: 0, value: None });
        }
        let e = &mut self.entries[slot as usize];
        e.generation = e.generation.wrapping_add(1);
        e.value = Some((value, deadline));
        self.live += 1;
        self.deadlines.push(Reverse((deadline, slot, e.generation)));
        RequestId { slot, generation: e.generation }
    }

    fn entry(&mut self, id: RequestId) -> Option<&mut Entry<T>> {
        let e = self.entries.get_mut(id.slot as usize)?;
        // The wire carries the low 16 bits of the generation.
        (e.value.is_some() && e.generation as u16 == id.generation as u16).then_some(e)
    }

    /// Removes the call `id` (as it came off the wire), if it is still pending.
    pub fn remove(&mut self, id: RequestId) -> Option<T> {
        let slot = id.slot;
        let (value, _) = self.entry(id)?.value.take()?;
        self.live -= 1;
        self.free.push_back(slot);
        self.compact();
        Some(value)
    }

    /// The full id of a pending call given its wire id.
    pub fn get(&self, id: RequestId) -> Option<&T> {
        let e = self.entries.get(id.slot as usize)?;
        if e.generation as u16 != id.generation as u16 {
            return None;
        }
        e.value.as_ref().map(|(v, _)| v)
    }

    /// The pending call `id`, to change it.
    pub fn get_mut(&mut self, id: RequestId) -> Option<&mut T> {
        let e = self.entries.get_mut(id.slot as usize)?;
        if e.generation as u16 != id.generation as u16 {
            return None;
        }
        e.value.as_mut().map(|(v, _)| v)
    }

    fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.live + 2 * MIN_FREE {
            let entries = &self.entries;
            self.deadlines.retain(|Reverse((_, slot, generation))| {
                let e = &entries[*slot as usize];
                e.value.is_some() && e.generation == *generation
            });
        }
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse((_, slot, generation))) = self.deadlines.peek() {
            let e = &self.entries[*slot as usize];
            if e.value.is_some() && e.generation == *generation {
                return;
            }
            self.deadlines.pop();
        }
    }

    /// The earliest deadline of a pending call.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_top();
        self.deadlines.peek().map(|Reverse((d, ..))| *d)
    }

    /// Removes every call whose deadline is at or before `now`, handing each to `f`.
    pub fn expire(&mut self, now: Instant, mut f: impl FnMut(RequestId, T)) {
        loop {
            self.drop_stale_top();
            match self.deadlines.peek() {
                Some(Reverse((d, slot, generation))) if *d <= now => {
                    let id = RequestId { slot: *slot, generation: *generation };
                    self.deadlines.pop();
                    if let Some(v) = self.remove(id) {
                        f(id, v);
                    }
                }
                _ => return,
            }
        }
    }

    /// Removes every pending call, handing each to `f` (the connection was lost).
    pub fn drain(&mut self, mut f: impl FnMut(RequestId, T)) {
        for slot in 0..self.entries.len() {
            let e = &mut self.entries[slot];
            if let Some((v, _)) = e.value.take() {
                f(RequestId { slot: slot as u32, generation: e.generation }, v);
                self.free.push_back(slot as u32);
            }
        }
        self.live = 0;
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn insert_remove_and_generations_guard_reuse() {
        let t0 = crate::test_epoch();
        let mut f = InFlight::new();
        let a = f.insert("a", t0 + MS);
        assert_eq!(f.get(a), Some(&"a"));
        assert_eq!(f.remove(a), Some("a"));
        assert_eq!(f.remove(a), None, "completed once");
        // Slots come back only after MIN_FREE others: a late response for `a` finds nothing.
        let mut ids = Vec::new();
        for _ in 0..10 * MIN_FREE {
            let id = f.insert("x", t0 + MS);
            assert_eq!(f.remove(a), None, "a stale id never completes a later call");
            ids.push(id);
            assert_eq!(f.remove(id), Some("x"));
        }
        assert!(ids.iter().filter(|id| id.slot == a.slot).all(|id| id.generation != a.generation));
        assert!(f.entries.len() <= MIN_FREE + 2, "the table stays small: {}", f.entries.len());
        assert!(f.is_empty());
    }

    #[test]
    fn expire_in_deadline_order_and_compact() {
        let t0 = crate::test_epoch();
        let mut f = InFlight::new();
        let late = f.insert(3, t0 + 30 * MS);
        let early = f.insert(1, t0 + 10 * MS);
        let mid = f.insert(2, t0 + 20 * MS);
        assert_eq!(f.next_deadline(), Some(t0 + 10 * MS));
        f.remove(early);
        assert_eq!(f.next_deadline(), Some(t0 + 20 * MS), "a completed call's deadline is gone");
        let mut got = Vec::new();
        f.expire(t0 + 25 * MS, |id, v| got.push((id, v)));
        assert_eq!(got, vec![(mid, 2)]);
        assert_eq!(f.len(), 1);
        // Many completed calls leave no pile of stale deadlines behind.
        for _ in 0..10_000 {
            let id = f.insert(0, t0 + Duration::from_secs(60));
            f.remove(id);
        }
        assert!(f.deadlines.len() <= 2 * f.len() + 2 * MIN_FREE + 1, "{}", f.deadlines.len());
        let mut drained = Vec::new();
        f.drain(|id, v| drained.push((id, v)));
        assert_eq!(drained, vec![(late, 3)]);
        assert!(f.is_empty() && f.next_deadline().is_none());
    }

    #[test]
    fn wire_ids_match_on_the_low_16_bits_of_the_generation() {
        let t0 = crate::test_epoch();
        let mut f = InFlight::new();
        let id = f.insert('x', t0);
        let wire = RequestId { slot: id.slot, generation: id.generation & 0xffff };
        assert_eq!(f.remove(wire), Some('x'));
    }
}
