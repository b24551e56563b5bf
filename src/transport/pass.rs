//! Which part of its pass an endpoint task is in, on this thread: what makes
//! [`Connection::push`](super::Connection::push) the one way to send, from anywhere.
//!
//! A message queued by the endpoint's own service before the sessions run (in
//! [`Service::poll`](super::Service::poll)) is transmitted by that pass and needs nothing
//! more. One queued while the pass hands out session events (in
//! [`Service::event`](super::Service::event)) comes after the sessions transmitted: the task
//! runs another pass before it waits. One queued from any other task wakes the endpoint's.
//! A thread-local, because the pass is synchronous: it never awaits, so nothing else runs on
//! its thread between setting and clearing it.

use std::cell::Cell;

use super::EndpointShared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not inside this endpoint's pass.
    Outside,
    /// Before the sessions transmit: what is queued goes out in this pass.
    Transmitting,
    /// Handing out events, nothing queued yet.
    Events,
    /// Handing out events, and something was queued: run another pass.
    EventsSent,
}

thread_local! {
    static PASS: Cell<(usize, Phase)> = const { Cell::new((0, Phase::Outside)) };
}

fn key(endpoint: &EndpointShared) -> usize {
    std::ptr::from_ref(endpoint) as usize
}

/// Marks this thread as inside `endpoint`'s pass, in `phase`.
pub(crate) fn enter(endpoint: &EndpointShared, phase: Phase) {
    PASS.with(|p| p.set((key(endpoint), phase)));
}

/// Leaves the pass; returns the phase it was in.
pub(crate) fn leave() -> Phase {
    PASS.with(|p| p.replace((0, Phase::Outside)).1)
}

/// Something was queued for one of `endpoint`'s sessions: true if the endpoint's task must be
/// woken to transmit it.
pub(crate) fn queued(endpoint: &EndpointShared) -> bool {
    PASS.with(|p| {
        let (k, phase) = p.get();
        if k != key(endpoint) {
            return true;
        }
        match phase {
            Phase::Transmitting | Phase::EventsSent => false,
            Phase::Events => {
                p.set((k, Phase::EventsSent));
                false
            }
            Phase::Outside => true,
        }
    })
}
