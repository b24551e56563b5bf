//! The RPC frame decoder (requests, one-way calls, cancels, responses, manifests), with a
//! re-encoding round trip, on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::rpc_frame(data));
