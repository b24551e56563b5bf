//! The observers a client hosts, as its task sees them: naming them to every session, handing
//! servers' calls to them (and cancels), and answering for those it does not host.

use super::*;
use crate::client::observers::{MAX_OBSERVER_CALLS, MAX_QUEUED_PER_OBSERVER};
use crate::proto::ids::GrainKey;
use crate::proto::wire::rpc::{CallHeader, MAX_OBSERVERS_FRAME};
use crate::rpc::context::{Caller, SessionId};
use crate::rpc::dispatch;
use crate::rpc::turns::Job;

impl ClientService {
    /// Names observers `numbers` (`observe`) or drops them, on `conn`.
    fn send_observe(&self, conn: &Connection, observe: bool, numbers: &[u64]) {
        let instance = self.shared.observers.instance;
        for chunk in numbers.chunks(MAX_OBSERVERS_FRAME) {
            let mut out = Vec::with_capacity(16 + 3 * chunk.len());
            rpc::encode_observe(&mut out, observe, instance, chunk);
            conn.push(Delivery::reliable_ordered(0), Bytes::from(out));
        }
    }

    /// A new session: it learns every observer this client hosts.
    pub(super) fn name_observers(&self, conn: &Connection) {
        let numbers = self.shared.observers.numbers();
        if !numbers.is_empty() {
            self.send_observe(conn, true, &numbers);
        }
    }

    /// Observer `n` was added (`observe`) or dropped: every session learns it.
    pub(super) fn observer_changed(&mut self, n: u64, observe: bool) {
        if !observe {
            self.observer_updates.retain(|(_, o, _), _| *o != n);
        }
        for p in self.peers.values().filter(|p| !p.closed) {
            self.send_observe(&p.conn, observe, &[n]);
        }
    }

    /// A server sends an observer a sequenced update: dropped when older than one taken from
    /// the same session for the same observer and method; a queued older one is replaced (the
    /// observer runs only the latest), as a server does for its grains.
    pub(super) fn observer_update(
        &mut self,
        peer: PeerId,
        seq: u64,
        call: CallHeader,
        args: Bytes,
    ) {
        let GrainKey::Id(key) = call.key else { return };
        let observers = &self.shared.observers;
        let (instance, n) = ((key >> 64) as u64, key as u64);
        let hosted = (instance == observers.instance).then(|| observers.get(n)).flatten();
        let Some((mailbox, info)) = hosted else { return };
        let sequenced = info.method(call.method).map(|m| m.delivery);
        if sequenced != Some(crate::interface::DeliveryClass::Sequenced) {
            return;
        }
        let entry = (peer, n, call.method);
        if let Some(&(last, token)) = self.observer_updates.get(&entry) {
            if seq <= last {
                return;
            }
            mailbox.remove(token);
        }
        if let Some(token) = self.observer_call(peer, CallKind::OneWay, call, args) {
            self.observer_updates.insert(entry, (seq, token));
        }
    }

    /// A server calls an observer: into its mailbox (its job's token), or answered at once
    /// when it cannot run.
    pub(super) fn observer_call(
        &mut self,
        peer: PeerId,
        id: CallKind<RequestId>,
        call: CallHeader,
        args: Bytes,
    ) -> Option<u64> {
        let conn = self.peers.get(&peer).map(|p| p.conn.clone())?;
        let refuse = |status: Status, payload: &[u8]| {
            if let CallKind::Call(id) = id {
                conn.push(Delivery::ReliableUnordered, dispatch::status(id, status, payload));
            }
        };
        let observers = &self.shared.observers;
        let GrainKey::Id(key) = call.key else {
            refuse(Status::ObserverGone, &[]);
            return None;
        };
        let (instance, n) = ((key >> 64) as u64, key as u64);
        let hosted = (instance == observers.instance).then(|| observers.get(n)).flatten();
        let Some((mailbox, info)) = hosted else {
            refuse(Status::ObserverGone, &[]);
            return None;
        };
        let Some(method) = info.method(call.method) else {
            refuse(Status::UnknownMethod, &[]);
            return None;
        };
        if call.version != info.version {
            refuse(Status::IncompatibleVersion, &[info.version]);
            return None;
        }
        if self.observed.len() >= MAX_OBSERVER_CALLS || mailbox.len() >= MAX_QUEUED_PER_OBSERVER {
            refuse(Status::Overloaded, &[]);
            return None;
        }
        let unreliable = method.delivery.is_unreliable();
        let token = self.next_token;
        self.next_token += 1;
        let deadline = tokio::time::Instant::now()
            + call
                .deadline_ms
                .map_or(self.shared.config.default_timeout, |ms| Duration::from_millis(ms.into()));
        let caller = Caller::new(SessionId(peer.0), conn.remote_addr(), None);
        let reply = id.map(|id| (conn.clone(), id));
        let method = call.method;
        let (iface, ended) = (0, None);
        let (stream, once) = (None, None);
        let job = Job {
            token,
            reply,
            iface,
            unreliable,
            method,
            args,
            caller,
            deadline,
            ended,
            stream,
            once,
        };
        if let CallKind::Call(id) = id {
            self.observed.insert((peer, id), (mailbox.clone(), token));
        }
        mailbox.push(job);
        Some(token)
    }

    /// A server gave up on an observer call.
    pub(super) fn observer_cancel(&mut self, peer: PeerId, id: RequestId) {
        if let Some((mailbox, token)) = self.observed.remove(&(peer, id))
            && mailbox.remove(token).is_none()
        {
            mailbox.cancel_running(token, false);
        }
    }

    /// Session `peer` ended: its servers' queued observer calls will not be answered there;
    /// they do not run.
    pub(super) fn observers_lost(&mut self, peer: PeerId) {
        self.observer_updates.retain(|(p, _, _), _| *p != peer);
        self.observed.retain(|(p, _), (mailbox, token)| {
            if *p == peer {
                mailbox.remove(*token);
            }
            *p != peer
        });
    }

    /// Forgets the observer calls that ended.
    pub(super) fn observers_done(&mut self) {
        while let Ok(key) = self.shared.observers.done.1.try_recv() {
            self.observed.remove(&key);
        }
    }
}
