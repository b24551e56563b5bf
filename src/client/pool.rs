//! The connection pool: one task per slot (per server address, or one for the whole list in
//! single mode) that connects, waits for the session to end, and reconnects with exponential
//! backoff and jitter. Routing state lives in the client's endpoint task; slots only say what
//! they are doing. Slots come and go while the client runs (`Client::add_server`,
//! `Client::remove_server`): a retired slot's task ends at its next step and closes a session
//! it opened after retirement.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{ClientEvent, ClientShared, ClusterMismatch, ConnectMode, ServerAddr};
use crate::error::{ConnectError, DisconnectReason, Rejection};
use crate::proto::rng::SplitMix64;
use crate::sync::lock;
use crate::transport::Connector;

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not connected, not trying (on-demand: until a call needs it).
    Idle,
    /// A handshake is under way.
    Connecting,
    /// The session is up; the manifest has not arrived.
    Connected,
    /// The session is up and the manifest known: the server takes calls.
    Ready,
    /// Waiting before the next attempt.
    Backoff,
}

#[derive(Debug)]
struct SlotState {
    phase: Phase,
    /// What each address resolved to at its latest attempt (a name's current address).
    resolved: Vec<Option<SocketAddr>>,
    /// Every address was tried once, or the server is ready.
    settled: bool,
    /// The last error of each address.
    errors: Vec<Option<ConnectError>>,
}

/// One connection task's addresses and state.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) addrs: Vec<ServerAddr>,
    state: Mutex<SlotState>,
    demand: Notify,
    /// Removed from the client: its task ends and it reconnects no more.
    retired: AtomicBool,
    /// Cuts a pause short when the slot is retired.
    stop: Notify,
    /// Its server was lost (its session ended, or it was judged dead) or could not be
    /// reached, and no session is up since.
    down: AtomicBool,
}

impl Slot {
    pub(crate) fn new(addrs: Vec<ServerAddr>) -> Self {
        let errors = vec![None; addrs.len()];
        let resolved = addrs.iter().map(ServerAddr::ip).collect();
        Self {
            addrs,
            state: Mutex::new(SlotState { phase: Phase::Idle, resolved, settled: false, errors }),
            demand: Notify::new(),
            retired: AtomicBool::new(false),
            stop: Notify::new(),
            down: AtomicBool::new(false),
        }
    }

    /// Whether it was removed from the client.
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Removes it: its task stops at its next step (a wait is cut short).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.demand.notify_one();
    }

    /// Sleeps for `d`, or less if the slot is retired meanwhile.
    async fn pause(&self, d: Duration) {
        let retired = self.stop.notified();
        tokio::pin!(retired);
        retired.as_mut().enable();
        if self.retired() {
            return;
        }
        let _ = tokio::time::timeout(d, retired).await;
    }

    pub(crate) fn phase(&self) -> Phase {
        lock(&self.state).phase
    }

    pub(crate) fn settled(&self) -> bool {
        lock(&self.state).settled
    }

    /// Whether every address's last attempt was refused for good (a bad token, the server's
    /// application): see `Rejection::is_permanent`.
    pub(crate) fn refused_for_good(&self) -> bool {
        lock(&self.state).errors.iter().all(|e| {
            matches!(e, Some(ConnectError::Failed(DisconnectReason::Rejected(r))) if r.is_permanent())
        })
    }

    pub(crate) fn errors(&self) -> Vec<(ServerAddr, Option<ConnectError>)> {
        self.addrs.iter().cloned().zip(lock(&self.state).errors.iter().copied()).collect()
    }

    /// Whether a session to `addr` is this slot's (one of its addresses, or what one of its
    /// names resolved to last).
    pub(crate) fn matches(&self, addr: SocketAddr) -> bool {
        lock(&self.state).resolved.contains(&Some(addr))
    }

    /// Resolves address `i` for an attempt: the first address of the socket's family
    /// (`v6`), remembered for [`matches`](Self::matches).
    async fn resolve(&self, i: usize, v6: bool) -> Result<SocketAddr, ConnectError> {
        let found = resolve(&self.addrs[i])
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|a| a.is_ipv6() == v6));
        let found = found.ok_or(ConnectError::Unresolved)?;
        lock(&self.state).resolved[i] = Some(found);
        Ok(found)
    }

    fn set_phase(&self, phase: Phase) {
        lock(&self.state).phase = phase;
    }

    /// On-demand: waits until the client's task asks for this server (or it is retired).
    async fn wanted(&self) {
        loop {
            let wanted = self.demand.notified();
            if self.phase() == Phase::Connecting || self.retired() {
                return;
            }
            wanted.await;
        }
    }

    /// Whether its server was lost or could not be reached, and no session is up since.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The session to address `i` is up.
    fn connected(&self, i: usize) {
        self.down.store(false, Ordering::Release);
        let mut s = lock(&self.state);
        // The manifest may have been handled before this task ran again.
        if s.phase == Phase::Connecting {
            s.phase = Phase::Connected;
        }
        s.errors[i] = None;
    }

    /// Connecting to address `i` failed; true if every address has now been tried (the slot
    /// waits before the next round).
    fn failed(&self, i: usize, error: ConnectError) -> bool {
        self.down.store(true, Ordering::Release);
        let mut s = lock(&self.state);
        s.errors[i] = Some(error);
        let wrapped = i + 1 == self.addrs.len();
        if wrapped {
            s.settled = true;
            s.phase = Phase::Backoff;
        }
        wrapped
    }

    /// The server's manifest arrived (called by the client's task).
    pub(crate) fn mark_ready(&self) {
        let mut s = lock(&self.state);
        s.phase = Phase::Ready;
        s.settled = true;
    }

    /// On-demand: starts connecting if idle. Returns whether it did.
    pub(crate) fn demand(&self) -> bool {
        let mut s = lock(&self.state);
        if s.phase != Phase::Idle {
            return false;
        }
        s.phase = Phase::Connecting;
        drop(s);
        self.demand.notify_one();
        true
    }
}

/// `addr`'s current addresses: the address itself, or what the name resolves to now.
pub(crate) async fn resolve(addr: &ServerAddr) -> std::io::Result<Vec<SocketAddr>> {
    match (addr.ip(), addr.name()) {
        (Some(a), _) => Ok(vec![a]),
        (None, Some(name)) => Ok(tokio::net::lookup_host(name).await?.collect()),
        (None, None) => Ok(Vec::new()),
    }
}

/// `d` ± 25 %.
fn jitter(d: Duration, rng: &mut SplitMix64) -> Duration {
    d.mul_f64(0.75 + 0.5 * rng.next_f64())
}

/// Runs `slot` until the client closes or the slot is retired (or its task is aborted).
pub(crate) async fn run(
    shared: Arc<ClientShared>,
    slot: Arc<Slot>,
    connector: Connector,
    seed: u64,
) {
    let cfg = &shared.config;
    let on_demand = cfg.mode == ConnectMode::OnDemand;
    let mut rng = SplitMix64::new(seed);
    let mut backoff = cfg.reconnect_min;
    let mut next = 0;
    let stopped = || shared.closing.load(Ordering::Acquire) || slot.retired();
    while !stopped() {
        if on_demand {
            slot.wanted().await;
            if stopped() {
                break;
            }
        } else {
            slot.set_phase(Phase::Connecting);
        }
        let addr = slot.addrs[next].clone();
        let resolved = slot.resolve(next, shared.v6).await;
        let attempt = match resolved {
            Ok(ip) => connector.connect(ip).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(conn) if slot.retired() => {
                // Removed while connecting: the session is nobody's.
                conn.close(0);
                break;
            }
            Ok(conn) => {
                slot.connected(next);
                backoff = cfg.reconnect_min;
                shared.poke();
                let reason = conn.closed().await;
                slot.down.store(true, Ordering::Release);
                tracing::debug!(%addr, %reason, "session ended");
                next = 0;
                if on_demand {
                    slot.set_phase(Phase::Idle);
                    shared.poke();
                } else {
                    // A short pause, so a server that restarts in place is not hammered.
                    slot.set_phase(Phase::Backoff);
                    shared.poke();
                    slot.pause(jitter(cfg.reconnect_min, &mut rng)).await;
                }
            }
            Err(ConnectError::Failed(DisconnectReason::Rejected(Rejection::WrongCluster))) => {
                // The server refused us at its door for being of another fleet: never again.
                if let Ok(ip) = resolved {
                    shared.refuse(ip, ClusterMismatch::refused_at_connect(ip, cfg));
                }
                break;
            }
            Err(error) => {
                let wrapped = slot.failed(next, error);
                next = (next + 1) % slot.addrs.len();
                if !wrapped {
                    continue; // single mode: the next address at once
                }
                let wait = jitter(backoff, &mut rng);
                backoff = (backoff * 2).min(cfg.reconnect_max);
                tracing::debug!(%addr, %error, ?wait, "connect failed");
                shared.emit(ClientEvent::ConnectFailed { addr, error, retry_in: Some(wait) });
                shared.changed.notify_waiters();
                shared.poke();
                slot.pause(wait).await;
                if on_demand {
                    slot.set_phase(Phase::Idle);
                    shared.poke();
                }
            }
        }
    }
}
