//! What the test files share: addresses and waiting for the event that matters (virtual time
//! on the simulated network, so a wait is bounded without costing wall time). Each test file
//! includes it with `mod support;` and uses what it needs.

#![allow(dead_code)] // each test file uses a part of it

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use grainwire::transport::{Endpoint, Event};

/// `s` as an address (test literals only).
pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The endpoint's next event, waiting at most `within` (virtual time on the simulated
/// network); panics when none comes or the endpoint closed.
pub(crate) async fn next_event(ep: &mut Endpoint, within: Duration) -> Event {
    tokio::time::timeout(within, ep.next_event()).await.expect("an event in time").expect("open")
}

/// The endpoint's next message, skipping other events, within 120 s.
pub(crate) async fn message(ep: &mut Endpoint) -> Bytes {
    loop {
        if let Event::Message { payload, .. } = next_event(ep, Duration::from_secs(120)).await {
            return payload;
        }
    }
}
