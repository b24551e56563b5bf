//! What servers send the client: answers to its calls (completing them, or sending them again
//! after a refusal or a redirect), manifests and fleet updates.

use super::*;

impl ClientService {
    pub(super) fn response(
        &mut self,
        peer: PeerId,
        id: RequestId,
        status: Status,
        payload: Bytes,
        now: Instant,
    ) {
        let t = self.nanos(now);
        let decay = self.shared.config.latency_decay;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(pending) = p.in_flight.take(id) else { return }; // late, or cancelled
        let latency = now.saturating_duration_since(pending.started);
        p.load.finished(Some(latency), t, decay);
        // A stream that delivered items ends here, however it ended: sent again, it would
        // deliver them twice.
        let streamed = pending.kept.again.inbox.as_ref().is_some_and(|i| i.arrived() > 0);
        let pending = if status == Status::Redirect && !streamed {
            match self.redirect(pending, peer, &payload, now) {
                None => {
                    if !self.moving.is_empty() {
                        self.settle_moving(now);
                    }
                    return;
                }
                Some(p) => p,
            }
        } else {
            pending
        };
        let kind = (!matches!(status, Status::Ok | Status::AppError))
            .then(|| crate::rpc::call::status_error::<Infallible>(status, 0, &payload).kind());
        let pending = match kind {
            // The server refused it (it did not run there): the policy may send it elsewhere.
            Some(kind) if kind.not_executed() && !streamed => {
                match self.retry(pending, peer, Why::Refused(kind), now) {
                    None => {
                        if let Some(p) = self.peers.get(&peer) {
                            lock(&p.stats).retried();
                        }
                        return;
                    }
                    Some(p) => p,
                }
            }
            _ => pending,
        };
        if !self.moving.is_empty() {
            self.settle_moving(now);
        }
        if !matches!(status, Status::Ok | Status::AppError) && self.shared.discovery.is_some() {
            self.shared.call_failed(&crate::rpc::call::status_error(status, 0, &payload));
        }
        if pending.cell.complete(Ok((status, payload))) {
            self.shared.finished_one();
            let ok = matches!(status, Status::Ok);
            let server = self.peers.get(&peer).map(|p| &*p.stats);
            for acc in std::iter::once(&self.shared.accounting).chain(server) {
                let mut acc = lock(acc);
                if ok { acc.success(latency, now) } else { acc.failure(false, now) }
            }
        }
    }

    /// Items of stream call `id` arrived: to its reader. A server that sends more than it was
    /// granted broke flow control: its session is closed (`CLOSE_PROTOCOL`), as QUIC closes a
    /// connection that overruns its credit.
    fn stream_items(&mut self, peer: PeerId, id: RequestId, batch: Bytes, count: u32) {
        let Some(p) = self.peers.get(&peer) else { return };
        let Some(inbox) = p.in_flight.get(id).and_then(|s| s.kept.again.inbox.as_ref()) else {
            return; // late (the stream was cancelled), or not a stream
        };
        if !inbox.push(batch, count) {
            tracing::warn!(?peer, "a server sent a stream more items than granted: closing");
            p.conn.close(rpc::CLOSE_PROTOCOL);
        }
    }

    pub(super) fn message(&mut self, peer: PeerId, payload: Bytes, now: Instant) {
        let (id, status, head) = match rpc::decode_rpc(&payload) {
            Ok(RpcFrame::Response { id, status, payload: body }) => {
                (id, status, payload.len() - body.len())
            }
            Ok(RpcFrame::Manifest(body)) => {
                self.manifest(peer, body, now);
                return;
            }
            Ok(RpcFrame::Topology(body)) => {
                match (Topology::decode(body), self.peers.get(&peer).and_then(|p| p.watch.as_ref()))
                {
                    (Ok(t), Some(watch)) => {
                        watch.send_replace(Some(t));
                    }
                    (Ok(_), None) => tracing::debug!(?peer, "topology nobody asked for; ignored"),
                    (Err(error), _) => {
                        tracing::debug!(?peer, %error, "undecodable topology from a server")
                    }
                }
                return;
            }
            Ok(RpcFrame::Request { id, call, args }) => {
                let args = payload.slice_ref(args);
                self.observer_call(peer, CallKind::Call(id), call, args);
                return;
            }
            Ok(RpcFrame::OneWay { call, args }) => {
                let args = payload.slice_ref(args);
                self.observer_call(peer, CallKind::OneWay, call, args);
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_STREAM_ITEMS => {
                match rpc::decode_stream_items(body) {
                    Ok((id, items)) => {
                        let batch = payload.slice_ref(items.bytes());
                        self.stream_items(peer, id, batch, items.count);
                    }
                    Err(error) => {
                        tracing::debug!(?peer, %error, "undecodable stream items; ignored")
                    }
                }
                return;
            }
            Ok(RpcFrame::Extended { kind, body }) if kind == rpc::EXT_UPDATE => {
                match rpc::decode_update(body) {
                    Ok((seq, call, args)) => {
                        let args = payload.slice_ref(args);
                        self.observer_update(peer, seq, call, args);
                    }
                    Err(error) => tracing::debug!(?peer, %error, "undecodable update; ignored"),
                }
                return;
            }
            Ok(RpcFrame::Cancel { id }) => {
                self.observer_cancel(peer, id);
                return;
            }
            Ok(other) => {
                tracing::debug!(?peer, frame = ?other, "unexpected frame from a server; ignored");
                return;
            }
            Err(error) => {
                tracing::debug!(?peer, %error, "undecodable frame from a server; ignored");
                return;
            }
        };
        let mut body = payload;
        body.advance(head);
        self.response(peer, id, status, body, now);
    }
}
