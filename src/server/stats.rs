//! What a server counts: the counters its task and activations publish, and the snapshot
//! [`Server::stats`](super::Server::stats) gives.

use std::sync::atomic::{AtomicU64, AtomicUsize};

use crate::transport::EndpointStats;

/// What the server counts, published by its task and its activations.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) activations: AtomicUsize,
    pub(crate) pending_calls: AtomicUsize,
    pub(crate) pending_bytes: AtomicUsize,
    pub(crate) overloaded_pending: AtomicU64,
    pub(crate) overloaded_send_queue: AtomicU64,
    pub(crate) overloaded_server: AtomicU64,
    pub(crate) overloaded_activations: AtomicU64,
    pub(crate) activations_evicted: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) responses_too_large: AtomicU64,
    pub(crate) redirects: AtomicU64,
    pub(crate) directory_unavailable: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) answers_dropped: AtomicU64,
    pub(crate) sessions_preempted: AtomicU64,
    pub(crate) calls_preempted: AtomicU64,
    pub(crate) observer_calls: AtomicU64,
    pub(crate) observer_sessions_stalled: AtomicU64,
    pub(crate) sessions_told: AtomicU64,
    pub(crate) updates_stale: AtomicU64,
    pub(crate) updates_coalesced: AtomicU64,
    pub(crate) watches_dropped: AtomicU64,
    pub(crate) streams_open: AtomicUsize,
    pub(crate) stream_items: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
}

/// A server's counters: what it holds, and what it refused and why. A snapshot
/// ([`Server::stats`](super::Server::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// The endpoint's own: sessions, refused handshakes, stalled peers, queued bytes.
    pub transport: EndpointStats,
    /// Activations held now (active or deactivating).
    pub activations: usize,
    /// Calls pending now.
    pub pending_calls: usize,
    /// What they hold (arguments plus bookkeeping).
    pub pending_bytes: usize,
    /// Calls completed (answered, failed or cancelled) so far.
    pub calls_completed: u64,
    /// Calls answered `Overloaded` because their connection had too many pending (count or
    /// bytes).
    pub overloaded_pending: u64,
    /// Calls answered `Overloaded` because their connection did not drain its answers.
    pub overloaded_send_queue: u64,
    /// Calls answered `Overloaded` because the server as a whole was at a budget.
    pub overloaded_server: u64,
    /// Calls answered `Overloaded` for want of an activation (the connection's share, or none
    /// idle to evict).
    pub overloaded_activations: u64,
    /// Idle activations deactivated to make room for new ones.
    pub activations_evicted: u64,
    /// Frames from clients that did not decode (answered `BadRequest` when their id did).
    pub bad_requests: u64,
    /// Answers too large for their connection (answered `ResponseTooLarge`).
    pub responses_too_large: u64,
    /// Calls answered `Redirect` (the grain directory names another owner).
    pub redirects: u64,
    /// Calls answered `Unavailable` (the directory could not be asked; the type fails closed).
    pub directory_unavailable: u64,
    /// Calls refused by their grain type's authorization (`CallError::Unauthorized`).
    pub unauthorized: u64,
    /// Refusals, statuses and redirects not queued because their session held more than the
    /// hard margin over its answer budget (it was not draining what it had).
    pub answers_dropped: u64,
    /// Sessions closed (`Stalled`) to make room in the answer budget for an address under its
    /// share: they were the largest of the address most over its share.
    pub sessions_preempted: u64,
    /// Queued calls answered `Overloaded` to make room in the pending-call budgets for an
    /// address under its share.
    pub calls_preempted: u64,
    /// Calls grains made to observers, sent to their clients.
    pub observer_calls: u64,
    /// Sessions closed (`Stalled`) because their client did not take its observer calls
    /// (too many pending, or not acknowledged).
    pub observer_sessions_stalled: u64,
    /// Ended sessions told to the grains that watched them (one per grain and session).
    pub sessions_told: u64,
    /// `#[sequenced]` updates dropped: older than one already taken from the same sender.
    pub updates_stale: u64,
    /// `#[sequenced]` updates replaced, still queued, by a newer one from the same sender.
    pub updates_coalesced: u64,
    /// Watches of a session beyond `max_watches_per_session`, dropped.
    pub watches_dropped: u64,
    /// Streams running now (their methods called, not ended).
    pub streams_open: usize,
    /// Stream items sent so far.
    pub stream_items: u64,
    /// Streams refused (`Overloaded`): their session had `max_grain_streams_per_session` open.
    pub streams_refused: u64,
}
