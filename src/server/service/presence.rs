//! Presence: grains watch sessions (`GrainContext::watch`) and are told when one ends, as a
//! turn of their own (their `on_session_ended` hook): a room removes a player that closed the
//! game, a queue drops one that went silent, without polling.
//!
//! Each session's watchers are a small set of grain ids (at most `max_watches_per_session`;
//! later watches are dropped and counted). When the session ends, each watcher still active
//! gets one job in its mailbox, tracked like a one-way call of that session (deadline,
//! cancellation at deactivation); a watcher no longer active is not activated for it. A watch
//! of a session already gone is told at once: the last [`RECENT`] ended sessions are
//! remembered for it (a watch sent during the session's last call can arrive after its end).
//! A watch of a session older than that is dropped (counted).

use std::collections::{HashSet, VecDeque};

use super::*;
use crate::error::DisconnectReason;
use crate::rpc::context::{SessionEnded, SessionId};

/// Ended sessions remembered, to tell a watch that comes late at once.
const RECENT: usize = 4096;

/// Which grains watch which sessions, and the sessions that ended last.
#[derive(Debug, Default)]
pub(super) struct Watches {
    by_session: IdMap<PeerId, HashSet<GrainId>>,
    ended: IdMap<PeerId, (Caller, DisconnectReason)>,
    /// `ended`'s sessions, oldest first.
    order: VecDeque<PeerId>,
}

/// The session a peer is, as grains see it.
pub(crate) fn session_of(peer: PeerId) -> SessionId {
    SessionId(peer.0)
}

impl ServerService {
    /// `grain` watches (`on`) or stops watching `peer`'s session.
    pub(super) fn watch(&mut self, peer: PeerId, grain: GrainId, on: bool, now: Instant) {
        if !on {
            if let Some(set) = self.watches.by_session.get_mut(&peer) {
                set.remove(&grain);
            }
            return;
        }
        if let Some((caller, reason)) = self.watches.ended.get(&peer).cloned() {
            return self.tell(peer, grain, caller, reason, now);
        }
        if self.peers.get(&peer).is_none_or(|p| p.gone) {
            // Ended longer ago than is remembered.
            self.shared.counters.watches_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let set = self.watches.by_session.entry(peer).or_default();
        if set.len() >= self.shared.config.max_watches_per_session && !set.contains(&grain) {
            self.shared.counters.watches_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        set.insert(grain);
    }

    /// `peer`'s session ended: each grain that watched it and is active gets a turn.
    pub(super) fn tell_watchers(
        &mut self,
        peer: PeerId,
        caller: Caller,
        reason: DisconnectReason,
        now: Instant,
    ) {
        let w = &mut self.watches;
        if w.order.len() >= RECENT
            && let Some(old) = w.order.pop_front()
        {
            w.ended.remove(&old);
        }
        w.order.push_back(peer);
        w.ended.insert(peer, (caller.clone(), reason));
        let Some(grains) = w.by_session.remove(&peer) else { return };
        for grain in grains {
            self.tell(peer, grain, caller.clone(), reason, now);
        }
    }

    /// Queues `grain`'s turn to learn that `peer`'s session ended, if it is active.
    fn tell(
        &mut self,
        peer: PeerId,
        grain: GrainId,
        caller: Caller,
        reason: DisconnectReason,
        now: Instant,
    ) {
        let Some(key) = self.table.key_of(&grain) else { return };
        let Some(a) = self.table.get_mut(key) else { return };
        let Life::Active = a.life else { return };
        let token = self.next_token;
        self.next_token += 1;
        let deadline = now + self.shared.config.default_deadline;
        let ended = SessionEnded { session: session_of(peer), caller: caller.clone(), reason };
        let job = Job {
            token,
            reply: CallKind::OneWay,
            iface: 0,
            unreliable: false,
            method: crate::proto::ids::MethodId(0),
            args: Bytes::new(),
            caller,
            deadline: tokio::time::Instant::from_std(deadline),
            ended: Some(Box::new(ended)),
            stream: None,
            once: None,
        };
        a.mailbox.push(job);
        let mailbox = a.mailbox.clone();
        self.table.call_started(key, now);
        // Tracked like a one-way call of the ended session (which lingers until it is done).
        if let Some(p) = self.peers.get_mut(&peer) {
            p.calls.insert(token);
            self.loads.update(p.addr, |l| l.calls += 1);
        }
        let rec = CallRecord {
            peer,
            id: CallKind::OneWay,
            grain,
            mailbox,
            bytes: 0,
            chain: None,
            stream: None,
        };
        self.calls.insert(token, rec);
        self.deadlines.push(Reverse((deadline, token)));
        self.shared.counters.sessions_told.fetch_add(1, Ordering::Relaxed);
        self.publish();
    }
}
