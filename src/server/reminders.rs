//! Firing due reminders (see `persistence::reminders`): each server with a reminder store looks
//! for due ones every `Reminders::poll_every`, takes them with a lease, and sends each as a
//! one-way call of its grain through its fleet client (so it reaches the grain wherever it
//! lives now, activating it if needed), then marks it fired (due again a period later, or
//! gone). A reminder of a grain type this server does not host is left for one that does.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ServerShared;
use crate::persistence::{Reminder, Reminders};
use crate::rpc::reference::{Calls, GrainRef, Via};

/// What reminders' times count in: milliseconds since the Unix epoch, read from the wall clock
/// once (when the server starts) and advanced by the runtime's clock since (virtual time on the
/// simulated network, so reminders run there too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_ms: u64,
    at: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn start() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self { wall_ms: wall as u64, at: tokio::time::Instant::now() }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.wall_ms + self.at.elapsed().as_millis() as u64
    }
}

/// The most reminders taken at once.
const BATCH: usize = 256;

/// Fires due reminders for ever (the task is aborted with its server).
pub(crate) async fn fire_due(reminders: Reminders, shared: Arc<ServerShared>, clock: Clock) {
    // A reminder taken and not reported fired comes back after this (its server died).
    let lease_ms = (reminders.poll * 10).max(Duration::from_secs(10)).as_millis() as u64;
    loop {
        tokio::time::sleep(reminders.poll).await;
        let now = clock.now_ms();
        let due = match reminders.store.take_due(now, lease_ms, BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::debug!(%error, "could not look for due reminders");
                continue;
            }
        };
        for r in due {
            let next = match fire(&r, &shared) {
                true if r.period_ms > 0 => Some(r.due_ms.saturating_add(r.period_ms).max(now)),
                true => None,
                // Not ours to fire (a type this server does not host): soon again, for another.
                false => Some(now + reminders.poll.as_millis() as u64),
            };
            if let Err(error) = reminders.store.fired(&r, next).await {
                tracing::debug!(%error, "a fired reminder was not marked (it fires again)");
            }
        }
    }
}

/// Sends reminder `r`'s call; false when this server does not know its interface.
fn fire(r: &Reminder, shared: &Arc<ServerShared>) -> bool {
    let Some(info) = shared.registered(r.grain.ty, r.interface, r.version).map(|reg| reg.info)
    else {
        return false;
    };
    let Some(method) = info.method(r.method) else { return false };
    let calls: Arc<dyn Calls> = shared.grains.clone();
    let grain = GrainRef::bound(Via::Calls(calls), info, r.grain.clone());
    if let Err(error) = grain.one_way_encoded(method, &r.args) {
        tracing::warn!(%error, grain = %r.grain, name = %r.name, "a reminder could not be sent");
    }
    true
}
