//! What the sessions of one address hold together, so that the server's budgets can be shared
//! per address and not only per session: one address with 64 sessions is one party, not 64.
//! An address is an [`address_key`]: an IPv4 address, or an IPv6 /64.
//!
//! The endpoint's task keeps one [`AddressUsage`] per address with a session; each session's
//! handle holds its address's, and charges and releases its queued bytes there as it does on
//! its own counters (atomics: answers are queued from activations' tasks).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::proto::gate::address_key;

/// What the sessions of one address hold together.
#[derive(Debug, Default)]
pub(crate) struct AddressUsage {
    /// Send-buffer bytes charged on its sessions and not yet released.
    pub(crate) queued: AtomicUsize,
    /// Received data its sessions hold and have not delivered (see `Session::receive_held`).
    pub(crate) receive_held: AtomicU64,
    /// Its sessions now.
    pub(crate) sessions: AtomicUsize,
}

/// The addresses with sessions, owned by the endpoint's task.
#[derive(Debug, Default)]
pub(crate) struct Addresses {
    map: HashMap<IpAddr, Arc<AddressUsage>>,
}

impl Addresses {
    /// A session of `addr` begins: its address's usage.
    pub(crate) fn join(&mut self, addr: SocketAddr) -> Arc<AddressUsage> {
        let usage = self.map.entry(address_key(addr.ip())).or_default();
        usage.sessions.fetch_add(1, Ordering::Relaxed);
        usage.clone()
    }

    /// A session of `addr` ended: its address is forgotten with its last session (what its
    /// handles still release goes to the forgotten usage, which nobody reads any more).
    pub(crate) fn leave(&mut self, addr: SocketAddr) {
        let key = address_key(addr.ip());
        if let Some(u) = self.map.get(&key)
            && u.sessions.fetch_sub(1, Ordering::Relaxed) <= 1
        {
            self.map.remove(&key);
        }
    }

    /// Addresses with sessions now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
