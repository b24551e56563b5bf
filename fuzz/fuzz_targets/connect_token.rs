//! Connect tokens (the public part's checks, then the sealed part) on arbitrary bytes, with a
//! re-sealing round trip for those that open.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::connect_token(data));
