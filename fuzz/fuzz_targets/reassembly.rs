//! Message chunks in any count, index, length and order, to the reliable and unreliable
//! receive paths (reassembly, ordering, flow-control accounting).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::reassembly(data));
