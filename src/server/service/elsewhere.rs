//! The server's memory of grains the directory says live elsewhere.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::ids::GrainId;

/// A bounded memory of redirects (grain → its redirect payload), each for at most a lease:
/// misrouted calls to a grain that lives elsewhere are answered without a directory round
/// trip, and without an activation.
#[derive(Debug, Default)]
pub(super) struct Elsewhere {
    pub(super) map: HashMap<GrainId, (Bytes, Instant)>,
    pub(super) order: std::collections::VecDeque<GrainId>,
    pub(super) cap: usize,
    pub(super) ttl: Duration,
}

impl Elsewhere {
    pub(super) fn insert(&mut self, grain: GrainId, payload: Bytes, now: Instant) {
        if self.cap == 0 {
            return;
        }
        if self.map.insert(grain.clone(), (payload, now + self.ttl)).is_none() {
            self.order.push_back(grain);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub(super) fn get(&mut self, grain: &GrainId, now: Instant) -> Option<Bytes> {
        match self.map.get(grain) {
            Some((p, until)) if *until > now => Some(p.clone()),
            Some(_) => {
                self.map.remove(grain);
                None
            }
            None => None,
        }
    }
}
