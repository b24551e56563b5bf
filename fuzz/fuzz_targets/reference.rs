//! The reference surrogate decoder (compact and JSON) on arbitrary bytes, with a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::reference(data));
