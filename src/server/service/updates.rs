//! Sequenced updates (`#[sequenced]`): latest wins per (session, grain, method). Each update
//! carries a number that grows with every update its session sends; the grain's activation
//! keeps, per (session, method), the number of the last update it took and its job. An update
//! numbered no higher is stale and dropped; a newer one replaces the last one's job if that is
//! still queued (a busy grain runs only the latest). Updates to other grains or methods never
//! touch each other's entries. An activation keeps at most [`MAX_SENDERS`] entries (those of
//! sessions that ended go first; past that an update is taken without being recorded, so an
//! older one could still run after it).

use super::*;
use crate::proto::ids::MethodId;

/// Entries one activation keeps.
const MAX_SENDERS: usize = 4096;

fn entry_key(peer: PeerId, method: MethodId) -> u64 {
    (peer.0 << 16) | u64::from(method.0)
}

impl ServerService {
    /// Whether update `seq` of `peer`'s `method` to `grain` is stale (dropped, counted); if it
    /// is not and an older one of the same sender waits in the grain's mailbox, that one is
    /// taken out (counted as coalesced).
    pub(super) fn stale_update(
        &mut self,
        peer: PeerId,
        grain: &GrainId,
        method: MethodId,
        seq: u64,
        now: Instant,
    ) -> bool {
        let Some(key) = self.table.key_of(grain) else { return false };
        let Some(a) = self.table.get_mut(key) else { return false };
        let Some(&(last, token)) = a.updates.get(&entry_key(peer, method)) else { return false };
        if seq <= last {
            self.shared.counters.updates_stale.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if a.mailbox.remove(token).is_some() {
            self.shared.counters.updates_coalesced.fetch_add(1, Ordering::Relaxed);
            self.finished(token, now);
        }
        false
    }

    /// Records update `seq` of `peer`'s `method`, queued to `grain` as job `token`.
    pub(super) fn record_update(
        &mut self,
        peer: PeerId,
        grain: &GrainId,
        method: MethodId,
        (seq, token): (u64, u64),
    ) {
        let Some(key) = self.table.key_of(grain) else { return };
        let Some(a) = self.table.get_mut(key) else { return };
        let entry = entry_key(peer, method);
        if a.updates.len() >= MAX_SENDERS && !a.updates.contains_key(&entry) {
            let peers = &self.peers;
            a.updates.retain(|k, _| peers.get(&PeerId(k >> 16)).is_some_and(|p| !p.gone));
            if a.updates.len() >= MAX_SENDERS {
                return;
            }
        }
        a.updates.insert(entry, (seq, token));
    }
}
