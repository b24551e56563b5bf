//! The datagram decoder: header, frames and ack ranges, on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grainwire::fuzz::decode_datagram(data));
