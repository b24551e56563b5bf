//! The servers the client holds sessions to: their manifests and the routing snapshot built
//! from them, health (silence detected, probed, given up), removal (drained or aborted) and
//! loss (what was pending on a lost server is retried or failed).

use super::*;

impl ClientService {
    /// Drains away the server at `addr` (discovery: it left the topology or became
    /// ineligible); its slot stops reconnecting.
    pub(super) fn remove_addr(&mut self, addr: &ServerAddr, now: Instant) {
        let slots: Vec<_> =
            self.shared.slots().into_iter().filter(|s| s.addrs.contains(addr)).collect();
        let peers = self.peers_where(|p| slots.iter().any(|s| s.matches(p.conn.remote_addr())));
        for slot in &slots {
            self.shared.drop_slot(slot);
        }
        tracing::debug!(%addr, sessions = peers.len(), "server left the topology: drained");
        self.remove_peers(peers, Removal::Drain, None, now);
    }

    /// Takes `server` out: its slots stop reconnecting; drained (no new calls, the pending
    /// ones finish, then the session closes) or aborted (its pending calls fail at once,
    /// idempotent ones go elsewhere).
    pub(super) fn remove(
        &mut self,
        server: &ServerId,
        how: Removal,
        done: oneshot::Sender<bool>,
        now: Instant,
    ) {
        let peers =
            self.peers_where(|p| p.manifest.as_ref().is_some_and(|m| m.server_id == *server));
        if peers.is_empty() {
            let _ = done.send(false);
            return;
        }
        let addrs: Vec<_> =
            peers.iter().filter_map(|p| self.peers.get(p)).map(|p| p.conn.remote_addr()).collect();
        self.shared.retire_slots(&addrs);
        self.remove_peers(peers, how, Some(done), now);
    }

    /// Drains or aborts the sessions `peers`; `done` learns when they are gone.
    pub(super) fn remove_peers(
        &mut self,
        peers: Vec<PeerId>,
        how: Removal,
        done: Option<oneshot::Sender<bool>>,
        now: Instant,
    ) {
        match how {
            Removal::Abort => {
                for peer in peers {
                    if let Some(p) = self.peers.get(&peer) {
                        p.conn.close(0);
                    }
                    self.lose_peer(peer, DisconnectReason::ClosedLocally, now);
                }
                if let Some(done) = done {
                    let _ = done.send(true);
                }
            }
            Removal::Drain => {
                let mut done = done;
                for peer in &peers {
                    if let Some(p) = self.peers.get_mut(peer) {
                        if p.leaving.is_none() {
                            self.leaving += 1;
                        }
                        let waiting = p.leaving.get_or_insert_with(Vec::new);
                        waiting.extend(done.take());
                    }
                }
                self.rebuild();
                for peer in peers {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.close_if_drained();
                    }
                }
            }
        }
    }

    pub(super) fn manifest(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        let m = match Manifest::decode(body) {
            Ok(m) => Arc::new(m),
            Err(error) => {
                tracing::warn!(?peer, %error, "undecodable manifest from a server");
                return;
            }
        };
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let first = p.manifest.is_none();
        let addr = p.conn.remote_addr();
        let cfg = &self.shared.config;
        if *m.cluster_id != *cfg.cluster_id || *m.service_id != *cfg.service_id {
            // Another fleet's server: never used, never reconnected.
            let wrong = ClusterMismatch {
                server: Some(m.server_id.clone()),
                addr,
                ours_cluster: cfg.cluster_id.clone(),
                ours_service: cfg.service_id.clone(),
                theirs_cluster: Some(m.cluster_id.to_string()),
                theirs_service: Some(m.service_id.to_string()),
            };
            tracing::warn!(%wrong, "server of another cluster");
            p.conn.close(rpc::CLOSE_WRONG_CLUSTER);
            self.shared.refuse(addr, wrong);
            return;
        }
        p.manifest = Some(m.clone());
        tracing::debug!(
            ?peer, server = %m.server_id, %addr, grain_types = m.grains.len(), first,
            "manifest"
        );
        if let Some(slot) = self.shared.slots().iter().find(|s| s.matches(addr)) {
            slot.mark_ready();
        }
        self.rebuild();
        let server = m.server_id.clone();
        self.shared.emit(if first {
            ClientEvent::Connected { server, addr }
        } else {
            ClientEvent::ManifestChanged { server, addr }
        });
        self.retry_parked(now);
    }

    /// Rebuilds the routing snapshot from the live sessions and publishes it.
    pub(super) fn rebuild(&mut self) {
        let mut entries: Vec<ServerEntry> = Vec::with_capacity(self.order.len());
        for peer in &self.order {
            let Some(p) = self.peers.get(peer) else { continue };
            let Some(m) = &p.manifest else { continue };
            if p.leaving.is_some() {
                continue; // being removed: no new calls
            }
            if entries.iter().any(|e| e.manifest.server_id == m.server_id) {
                // The same server reached twice (two addresses): the older session serves.
                continue;
            }
            entries.push(ServerEntry { peer: *peer, manifest: m.clone(), load: p.load.clone() });
        }
        self.routes = Arc::new(RouteTable::build(&entries, &self.shared.strategies));
        let servers: Vec<ServerView> = self
            .order
            .iter()
            .filter_map(|peer| {
                let p = self.peers.get(peer)?;
                Some(ServerView {
                    conn: p.conn.clone(),
                    manifest: p.manifest.clone(),
                    load: p.load.clone(),
                    stats: p.stats.clone(),
                })
            })
            .collect();
        let routes = self.routes.clone();
        self.shared.publish(|v| {
            v.routes = routes;
            v.servers = servers;
        });
    }

    /// A server's session ended (or it was judged dead): it leaves routing, its pending calls
    /// fail at once, idempotent ones go to another server.
    pub(super) fn lose_peer(&mut self, peer: PeerId, reason: DisconnectReason, now: Instant) {
        let Some(mut p) = self.peers.remove(&peer) else {
            self.shared.changed.notify_waiters();
            return;
        };
        self.order.retain(|x| *x != peer);
        if let Some(waiting) = p.leaving.take() {
            self.leaving -= 1;
            for done in waiting {
                let _ = done.send(true);
            }
        }
        self.shared.publish(|v| v.last_gone = Some(reason));
        self.rebuild();
        let mut lost = Vec::new();
        p.in_flight.drain(|pending| lost.push(pending));
        let (mut retried, mut failed) = (0, 0);
        let closing = self.shared.closing.load(std::sync::atomic::Ordering::Acquire);
        // A server that stopped gracefully closed once we held every answer it gave: what is
        // unanswered did not run there.
        let drained = reason == DisconnectReason::ClosedByPeer { code: rpc::CLOSE_DRAINED };
        for pending in lost {
            // Otherwise it may have run there: only an idempotent call may go elsewhere (and
            // not while the client itself is closing).
            let why = if drained { Why::Drained } else { Why::Lost(reason) };
            let again = if closing { Some(pending) } else { self.retry(pending, peer, why, now) };
            if let Some(pending) = again {
                failed += 1;
                let error =
                    if drained { CallError::ShuttingDown } else { CallError::Disconnected(reason) };
                if self.fail(Some(&pending.cell), error, false, now) {
                    lock(&p.stats).failure(false, now);
                }
            } else {
                retried += 1;
                lock(&p.stats).retried();
            }
        }
        let addr = p.conn.remote_addr();
        let server = p.manifest.as_ref().map(|m| m.server_id.clone());
        tracing::debug!(?peer, ?server, %addr, %reason, failed, retried, "server lost");
        self.shared.emit(ClientEvent::Disconnected { server, addr, reason });
        if !self.moving.is_empty() {
            self.settle_moving(now);
        }
        self.retry_parked(now);
    }

    /// How often servers' health is checked, and how long a server with calls pending on it
    /// may stay silent before it is probed: a twelfth of `health_timeout` (250 ms by default).
    pub(super) fn health_period(&self) -> Duration {
        (self.shared.config.health_timeout / 12).max(Duration::from_millis(1))
    }

    /// Judges servers from which nothing arrived for `health_timeout` dead, and probes those
    /// that owe answers and went quiet for a period: a server that restarted (and so forgot
    /// the calls it acknowledged) answers the probe with a `RESET` at once, instead of the
    /// next keepalive or the health verdict.
    pub(super) fn check_health(&mut self, now: Instant) {
        let limit = self.shared.config.health_timeout;
        let period = self.health_period();
        let stalled = self
            .last_health_check
            .is_some_and(|last| now.saturating_duration_since(last) > limit / 2);
        self.last_health_check = Some(now);
        if stalled {
            // This task itself did not run for a while (a paused process, a long hitch): the
            // silence may be ours. Give every server one more period before judging.
            self.next_health_check = Some(now + period);
            return;
        }
        let silence = |p: &PeerState| now.saturating_duration_since(p.conn.stats().last_received);
        // Every server silent at once: our own network is the likelier culprit (a phone between
        // networks, a dropped Wi-Fi). Judge no one; the sessions wait, as the servers do, up to
        // the transport's `idle_timeout`, and go on if the network comes back in time.
        let heard_any = self.peers.values().any(|p| silence(p) <= limit);
        let mut dead = Vec::new();
        for (peer, p) in &self.peers {
            let silent = silence(p);
            if silent > limit && heard_any {
                dead.push(*peer);
            } else if silent >= period && !p.in_flight.is_empty() {
                p.conn.ping();
            }
        }
        for peer in dead {
            if let Some(p) = self.peers.get(&peer) {
                tracing::debug!(?peer, addr = %p.conn.remote_addr(), "server silent: judged dead");
                p.conn.abort(DisconnectReason::Timeout);
            }
            self.lose_peer(peer, DisconnectReason::Timeout, now);
        }
        self.next_health_check = (!self.peers.is_empty()).then(|| now + period);
    }
}
