//! What a peer makes a channel hold in received and undelivered data is accounted as it costs
//! in memory (issue 19): for every shape of held data, the heap growth a counting allocator
//! sees (each allocation charged as the system allocator lays it out: rounded up to 16 bytes,
//! plus a 16-byte header) is within 1.5x of `Channel::receive_held`, which the endpoint's memory
//! bounds use. (It was the flow-control credit, 65 bytes for a 1-byte message that costs
//! several times that.) `scripts/held-memory.sh` measures the same by RSS against a server.

// A global allocator is an `unsafe impl`; it only forwards to `System` and counts. The library
// itself forbids unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use grainwire::TransportConfig;
use grainwire::proto::channel::{Channel, Datagram, MIN_CHUNK};
use grainwire::proto::wire::{self, Class, Packet};
use grainwire::testing::RawPeer;

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// What an allocation of `size` bytes costs the process: glibc's layout.
fn cost(size: usize) -> i64 {
    (size.div_ceil(16) * 16 + 16) as i64
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// count is a thread-local cell, touched with `try_with` so it is safe during thread teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + cost(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - cost(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() - cost(layout.size()) + cost(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// Feeds `frames` to `z` as datagrams (packed up to 1,100 bytes), numbered from `pn`.
fn feed(z: &mut Channel, now: Instant, frames: &[Vec<u8>], pn: &mut u32) {
    let mut datagram = Vec::new();
    let flush = |z: &mut Channel, d: &mut Vec<u8>, pn: &mut u32| {
        if d.len() > 8 {
            let Ok(Packet::Data(h, body)) = wire::decode_packet(d) else { panic!("data") };
            let mut dg = Datagram::new(d);
            z.handle_packet(now, h.pn_truncated, h.pn_len, body, &mut dg, &mut |_| {}).unwrap();
            *pn += 1;
        }
        d.clear();
    };
    for f in frames {
        if datagram.len() + f.len() > 1100 {
            flush(z, &mut datagram, pn);
        }
        if datagram.is_empty() {
            wire::encode_data_header(&mut datagram, 1, *pn, 4);
        }
        datagram.extend_from_slice(f);
    }
    flush(z, &mut datagram, pn);
}

/// One message frame.
fn frame(class: Class, stream: u8, seq: u64, chunk: Option<(u32, u32)>, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    RawPeer::message(&mut f, class, stream, seq, chunk, body);
    f
}

/// The heap growth and the accounting after `frames` were fed to a fresh channel.
fn held(frames: &[Vec<u8>]) -> (i64, u64) {
    let cfg = TransportConfig { receive_window: 64 << 20, ..TransportConfig::default() };
    let now = Instant::now();
    let mut z = Channel::new(&cfg, cfg.receive_window, now);
    let mut pn = 0;
    // Warm up what every channel grows to anyway (the first packets' bookkeeping).
    feed(&mut z, now, &[frame(Class::ReliableOrdered, 0, 0, None, b"w")], &mut pn);
    let before = live();
    feed(&mut z, now, frames, &mut pn);
    let growth = live() - before;
    let accounted = z.receive_held();
    drop(z);
    (growth, accounted)
}

#[test]
fn held_data_is_accounted_within_half_again_of_its_memory() {
    let shapes: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "1-byte messages behind a gap on 64 streams",
            (1..=64u8)
                .flat_map(|s| {
                    (1..=1000u64).map(move |q| frame(Class::ReliableOrdered, s, q, None, b"x"))
                })
                .collect(),
        ),
        (
            "1,000-byte messages behind a gap",
            (1..=2000u64).map(|q| frame(Class::ReliableOrdered, 1, q, None, &[1; 1000])).collect(),
        ),
        (
            "chunks of 100-chunk messages that never complete",
            (1..=50u64)
                .flat_map(|m| {
                    (1..100u32).map(move |i| {
                        frame(Class::ReliableUnordered, 0, m, Some((i, 100)), &[2; MIN_CHUNK])
                    })
                })
                .collect(),
        ),
        (
            "the last chunk of ever new reliable messages",
            (1..=4000u64)
                .map(|m| frame(Class::ReliableUnordered, 0, m, Some((3999, 4000)), b"x"))
                .collect(),
        ),
        (
            "the last chunk of ever new unreliable messages",
            (1..=32u64)
                .map(|m| frame(Class::Unreliable, 0, m, Some((1, 2)), &[3; MIN_CHUNK]))
                .collect(),
        ),
    ];
    for (shape, frames) in shapes {
        let (growth, accounted) = held(&frames);
        let ratio = growth as f64 / accounted as f64;
        println!("{shape}: heap +{growth} B, accounted {accounted} B, ratio {ratio:.2}");
        assert!(
            (1.0 / 1.5..=1.5).contains(&ratio),
            "{shape}: heap +{growth} B for {accounted} B accounted ({ratio:.2}x)"
        );
    }
}
