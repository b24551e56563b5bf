//! Observers: objects clients host that grains call (`Client::observe`). A client registers
//! its observers on each session (observe frames name its observer instance and their
//! numbers); a grain's call to one goes over the session that hosts it now, in the server's
//! own correlation table for that session (deadlines, cancels, answers as for any call). While
//! the client is away (its session ended, not for good) calls wait up to `observer_grace` for
//! it to come back; then, or when it never was here, they fail `ObserverGone`.
//!
//! Bounds: a session registers at most `max_observers_per_session` observers (later ones are
//! not hosted here: their calls fail `ObserverGone`) and has at most
//! `max_observer_calls_per_session` observer calls pending; a client that lets more pile up,
//! or does not acknowledge what it was sent, is treated like one that does not drain its
//! answers: its session is closed (`Stalled`), and its observers' calls fail. With tokens, an
//! observer instance belongs to the client id that registered it first: another client cannot
//! take over its calls.

use std::collections::BinaryHeap;
use std::convert::Infallible;

use bytes::BytesMut;

use super::*;
use crate::error::{CallError, DisconnectReason};
use crate::interface::DeliveryClass;
use crate::rpc::outbound::{Awaited, Lane};

/// What the service knows of observers (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Observers {
    /// Client observer instances: where each is hosted now, or until when it is awaited.
    instances: HashMap<u64, Instance>,
    /// When away instances stop being awaited.
    away: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Observer calls waiting for their client to come back.
    waiting: Vec<Waiting>,
    /// Sessions with observer calls sent and awaited.
    busy: IdSet<PeerId>,
}

#[derive(Debug)]
struct Instance {
    /// The session hosting it now.
    peer: Option<PeerId>,
    /// Gone: awaited until then.
    until: Option<Instant>,
    /// With tokens: the client id it belongs to.
    owner: Option<u64>,
}

/// A grain's call to an observer.
#[derive(Debug)]
pub(crate) struct ObserverCall {
    /// The observer's key: its client's observer instance (high 64 bits), its number (low).
    pub(crate) key: u128,
    pub(crate) stream: u8,
    /// [`PREFIX_GAP`](crate::rpc::encode::PREFIX_GAP) free bytes, then the request's body.
    pub(crate) frame: BytesMut,
    pub(crate) flags: u8,
    pub(crate) timeout: Duration,
    pub(crate) kind: CallKind<Arc<CallCell>>,
    /// Its method's delivery class.
    pub(crate) class: DeliveryClass,
}

#[derive(Debug)]
struct Waiting {
    call: ObserverCall,
    /// The call's deadline.
    deadline: Instant,
}

fn split(key: u128) -> (u64, u64) {
    ((key >> 64) as u64, key as u64)
}

/// Ends an observer call that went nowhere with `error`.
fn fail(kind: CallKind<Arc<CallCell>>, error: CallError<Infallible>) {
    if let CallKind::Call(cell) = kind {
        cell.complete(Err(error));
    }
}

impl ServerService {
    /// A grain calls an observer: over its client's session, or waiting for it, or failing.
    pub(super) fn observer_call(&mut self, call: ObserverCall, now: Instant) {
        let deadline = now + call.timeout;
        let (instance, _) = split(call.key);
        match self.observers.instances.get(&instance) {
            Some(Instance { peer: Some(peer), .. }) => {
                let peer = *peer;
                self.send_observer_call(peer, call, deadline, now);
            }
            Some(Instance { until: Some(until), .. }) if *until > now => {
                self.observers.waiting.push(Waiting { call, deadline });
            }
            _ => fail(call.kind, CallError::ObserverGone),
        }
    }

    fn send_observer_call(
        &mut self,
        peer: PeerId,
        call: ObserverCall,
        deadline: Instant,
        now: Instant,
    ) {
        let max_calls = self.shared.config.max_observer_calls_per_session;
        let Some(p) = self.peers.get_mut(&peer).filter(|p| !p.gone) else {
            return fail(call.kind, CallError::ObserverGone);
        };
        if !p.observers.contains(&split(call.key).1) {
            return fail(call.kind, CallError::ObserverGone);
        }
        if p.outbound.len() >= max_calls || !self.reporter.budget.may_queue(&p.conn) {
            // It does not answer or acknowledge what it was sent: like a session that does
            // not drain its answers, it is closed (its observers' calls fail as it goes).
            tracing::debug!(?peer, "a client does not take its observer calls: closing it");
            self.shared.counters.observer_sessions_stalled.fetch_add(1, Ordering::Relaxed);
            p.conn.abort(DisconnectReason::Stalled);
            // Until its end is reported, its observers take no more calls.
            p.observers.clear();
            return fail(call.kind, CallError::ObserverGone);
        }
        let cell = call.kind.call().cloned();
        let kind = call.kind.map(|cell| Awaited { cell, started: now, deadline, kept: () });
        // As its method's class says: a sequenced update numbered for this session (the
        // client keeps the latest per observer and method, as a server does for grains).
        let seq = match call.class {
            DeliveryClass::Sequenced => {
                p.update_seq += 1;
                p.update_seq
            }
            _ => 0,
        };
        let lane = Lane { stream: call.stream, class: call.class, seq, open: None, once: None };
        let id = p.outbound.send(&p.conn, call.frame, call.flags, 0, lane, kind);
        if let (Some(id), Some(cell)) = (id, cell) {
            self.observers.busy.insert(peer);
            if !cell.set_id(peer, id) {
                // Given up on before it went: take it back.
                p.outbound.cancel(&p.conn, id);
            }
        }
        self.shared.counters.observer_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A grain gave up on an observer call it made.
    pub(super) fn observer_cancel(&mut self, peer: PeerId, id: RequestId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.outbound.cancel(&p.conn, id);
        }
    }

    /// A client answered an observer call.
    pub(super) fn observer_answer(
        &mut self,
        peer: PeerId,
        id: RequestId,
        status: Status,
        payload: Bytes,
    ) {
        let Some(sent) = self.peers.get_mut(&peer).and_then(|p| p.outbound.take(id)) else {
            return; // late, or given up on
        };
        sent.cell.complete(Ok((status, payload)));
    }

    /// A client registers (`observe`) or drops observers of its observer instance.
    pub(super) fn observe(&mut self, peer: PeerId, observe: bool, body: &[u8], now: Instant) {
        let Ok((instance, numbers)) = rpc::decode_observe(body) else {
            self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let max = self.shared.config.max_observers_per_session;
        let Some(p) = self.peers.get(&peer).filter(|p| !p.gone) else { return };
        if p.instance.is_some_and(|i| i != instance) {
            // One instance per session: a client has one.
            self.shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let owner = p.caller.client_id();
        let entry = self.observers.instances.entry(instance).or_insert(Instance {
            peer: None,
            until: None,
            owner,
        });
        if entry.owner != owner {
            // Another client's instance: its calls are not this session's to take.
            self.shared.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(other) = entry.peer.filter(|o| *o != peer) {
            // The same client on a newer session (its old one not yet found dead): the newest
            // hosts its observers.
            if let Some(o) = self.peers.get_mut(&other) {
                o.instance = None;
                o.observers.clear();
            }
        }
        entry.peer = Some(peer);
        entry.until = None;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.instance = Some(instance);
        for n in numbers {
            if !observe {
                p.observers.remove(&n);
            } else if p.observers.len() < max {
                p.observers.insert(n);
            }
        }
        if observe && self.observers.waiting.iter().any(|w| split(w.call.key).0 == instance) {
            let (now_here, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.observers.waiting)
                .into_iter()
                .partition(|w| split(w.call.key).0 == instance);
            self.observers.waiting = rest;
            for w in now_here {
                self.send_observer_call(peer, w.call, w.deadline, now);
            }
        }
    }

    /// Session `peer` ended: its observer calls fail, and its instance is awaited for
    /// `observer_grace`, unless its client `left` (closed the session itself).
    pub(super) fn observers_gone(&mut self, peer: PeerId, left: bool, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.outbound.drain(|sent| {
            sent.cell.complete(Err(CallError::ObserverGone));
        });
        p.observers.clear();
        self.observers.busy.remove(&peer);
        let Some(instance) = p.instance.take() else { return };
        if left {
            if self.observers.instances.get(&instance).is_some_and(|i| i.peer == Some(peer)) {
                self.observers.instances.remove(&instance);
            }
            return;
        }
        if let Some(i) = self.observers.instances.get_mut(&instance)
            && i.peer == Some(peer)
        {
            let until = now + self.shared.config.observer_grace;
            i.peer = None;
            i.until = Some(until);
            self.observers.away.push(Reverse((until, instance)));
        }
    }

    /// Ends what is due: observer calls past their deadlines (sent: the client is told), calls
    /// that waited for a client until it stopped being awaited, and instances no longer
    /// awaited.
    pub(super) fn observers_due(&mut self, now: Instant) {
        let busy: Vec<PeerId> = self.observers.busy.iter().copied().collect();
        for peer in busy {
            let Some(p) = self.peers.get_mut(&peer) else {
                self.observers.busy.remove(&peer);
                continue;
            };
            p.outbound.expire(&p.conn, now, |sent| {
                sent.cell.complete(Err(CallError::Timeout));
            });
            if p.outbound.is_empty() {
                self.observers.busy.remove(&peer);
            }
        }
        while let Some(Reverse((until, instance))) = self.observers.away.peek().copied() {
            if until > now {
                break;
            }
            self.observers.away.pop();
            if self.observers.instances.get(&instance).is_some_and(|i| i.until == Some(until)) {
                self.observers.instances.remove(&instance);
            }
        }
        if !self.observers.waiting.is_empty() {
            let instances = &self.observers.instances;
            let awaited = |w: &Waiting| {
                let (instance, _) = split(w.call.key);
                instances.get(&instance).is_some_and(|i| i.until.is_some_and(|u| u > now))
            };
            let (keep, end): (Vec<_>, Vec<_>) = std::mem::take(&mut self.observers.waiting)
                .into_iter()
                .partition(|w| w.deadline > now && awaited(w));
            self.observers.waiting = keep;
            for w in end {
                let error =
                    if w.deadline <= now { CallError::Timeout } else { CallError::ObserverGone };
                fail(w.call.kind, error);
            }
        }
    }

    /// When something observers wait on is due next.
    pub(super) fn observers_next_deadline(&mut self) -> Option<Instant> {
        let mut next = self.observers.away.peek().map(|Reverse((t, _))| *t);
        for w in &self.observers.waiting {
            next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
        }
        for peer in &self.observers.busy {
            if let Some(d) = self.peers.get_mut(peer).and_then(|p| p.outbound.next_deadline()) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }
}
