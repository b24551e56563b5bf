//! A session (server established, client in its handshake) and the gate, fed arbitrary
//! datagrams on a moving clock.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::session(data));
