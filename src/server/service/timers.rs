//! Grains' timers and requests (`GrainContext::every`, `after`, `deactivate`): a timer's task
//! sends its fire here, and the service queues the turn in the grain's mailbox, as a one-way
//! call of the grain's own (it runs one at a time with its calls, `&mut self`). A timer whose
//! last turn is still queued or running skips its fire. Timer turns are not calls of any
//! session: they do not keep a grain active, have no deadline, and an inactive grain is not
//! activated for one.

use super::*;
use crate::interface::InterfaceInfo;
use crate::rpc::context::{Hooks, SessionId, TimerCall};

/// How a server's grains reach its service ([`Hooks`]): commands.
#[derive(Debug)]
pub(crate) struct HookCmds {
    pub(crate) cmds: crossbeam::channel::Sender<ServerCmd>,
    pub(crate) endpoint: Arc<crate::transport::EndpointShared>,
    /// Where its grains' reminders are kept, if anywhere, and the clock they count time by.
    pub(crate) reminders: Option<crate::persistence::Reminders>,
    pub(crate) clock: crate::server::reminders::Clock,
}

impl HookCmds {
    fn send(&self, cmd: ServerCmd) {
        if self.cmds.send(cmd).is_ok() {
            self.endpoint.wake.notify();
        }
    }
}

impl Hooks for HookCmds {
    fn watch(&self, session: SessionId, grain: &GrainId, on: bool) {
        self.send(ServerCmd::Watch { peer: PeerId(session.0), grain: grain.clone(), on });
    }

    fn timer_turn(&self, grain: &GrainId, timer: u64, call: TimerCall) {
        self.send(ServerCmd::Timer { grain: grain.clone(), timer, call });
    }

    fn deactivate(&self, grain: &GrainId) {
        self.send(ServerCmd::Deactivate(grain.clone()));
    }

    fn keep_alive(&self, grain: &GrainId, for_at_least: std::time::Duration) {
        self.send(ServerCmd::KeepAlive(grain.clone(), for_at_least));
    }

    fn remind(&self, grain: &GrainId, r: crate::rpc::context::ReminderCall) -> bool {
        let Some(store) = self.reminders.as_ref().map(|r| r.store.clone()) else { return false };
        let reminder = crate::persistence::Reminder {
            grain: grain.clone(),
            name: r.name,
            interface: r.call.interface.id,
            version: r.call.interface.version,
            method: r.call.method,
            args: r.call.args.to_vec(),
            due_ms: self.clock.now_ms() + r.first.as_millis() as u64,
            period_ms: r.period.map_or(0, |p| p.as_millis().max(1) as u64),
        };
        tokio::spawn(async move {
            if let Err(error) = store.set(&reminder).await {
                tracing::warn!(%error, grain = %reminder.grain, "a reminder was not kept");
            }
        });
        true
    }

    fn forget_reminder(&self, grain: &GrainId, name: &str) {
        let Some(store) = self.reminders.as_ref().map(|r| r.store.clone()) else { return };
        let (grain, name) = (grain.clone(), name.to_string());
        tokio::spawn(async move {
            if let Err(error) = store.remove(&grain, &name).await {
                tracing::warn!(%error, %grain, "a reminder was not removed");
            }
        });
    }
}

/// The timers whose turns are queued or running: by timer, and the token of each turn.
#[derive(Debug, Default)]
pub(super) struct Timers {
    pub(super) pending: IdMap<u64, u64>,
    by_timer: IdSet<u64>,
}

impl Timers {
    /// The turn `token` ended: its timer may fire again.
    pub(super) fn done(&mut self, token: u64) {
        if let Some(timer) = self.pending.remove(&token) {
            self.by_timer.remove(&timer);
        }
    }
}

impl ServerService {
    /// Queues the turn of `grain`'s timer `timer`, if the grain is active and the timer's last
    /// turn has ended.
    pub(super) fn timer_turn(&mut self, grain: GrainId, timer: u64, call: TimerCall) {
        if self.timers.by_timer.contains(&timer) {
            return; // its last turn has not run yet
        }
        let Some(iface) = self.slot_of(&grain, call.interface) else { return };
        let Some(a) = self.table.by_grain(&grain) else { return };
        let Life::Active = a.life else { return };
        let token = self.next_token;
        self.next_token += 1;
        let caller = Caller::new(SessionId(0), std::net::SocketAddr::from(([0, 0, 0, 0], 0)), None);
        let job = Job {
            token,
            reply: CallKind::OneWay,
            iface,
            unreliable: false,
            method: call.method,
            args: call.args,
            caller,
            // No deadline of a caller: what calls the turn makes may take a default's.
            deadline: tokio::time::Instant::now() + self.shared.config.default_deadline,
            ended: None,
            stream: None,
            once: None,
        };
        a.mailbox.push(job);
        self.timers.by_timer.insert(timer);
        self.timers.pending.insert(token, timer);
    }

    /// Which of its host's interfaces `interface` is, for `grain`'s type.
    fn slot_of(&self, grain: &GrainId, interface: &InterfaceInfo) -> Option<u8> {
        self.shared.registered(grain.ty, interface.id, interface.version).map(|r| r.slot)
    }
}
