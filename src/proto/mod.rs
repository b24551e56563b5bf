//! The sans-IO core: wire format, reliability, sessions. No sockets, no tasks, no clock reads:
//! time comes in as an argument, bytes go out through buffers. Everything here is testable
//! without a network, and every decoder is fuzzed.

pub mod addr;
pub mod channel;
pub mod config;
pub mod crypt;
pub mod error;
pub mod gate;
pub mod ids;
pub mod in_flight;
pub mod manifest;
pub mod rng;
pub mod route;
pub mod session;
pub mod siphash;
pub mod stats;
pub mod token;
pub mod topology;
pub mod wire;
