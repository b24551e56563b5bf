//! The reliability layer's hot path, sans-IO: a 32-byte reliable-ordered message queued,
//! packed into a datagram, received, delivered and acknowledged, one at a time (ping-pong
//! shape) and 30 per datagram (pipelined shape).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use grainwire::TransportConfig;
use grainwire::proto::channel::{Channel, Datagram};
use grainwire::proto::wire::{self, Class, Packet};

fn deliver(to: &mut Channel, now: Instant, d: &[u8]) -> usize {
    let Ok(Packet::Data(h, frames)) = wire::decode_packet(d) else { panic!("data packet") };
    let mut n = 0;
    let mut dg = Datagram::new(d);
    to.handle_packet(now, h.pn_truncated, h.pn_len, frames, &mut dg, &mut |m| n += m.payload.len())
        .expect("valid");
    n
}

fn bench(c: &mut Criterion) {
    let cfg = TransportConfig::default();
    let payload = Bytes::from_static(&[7u8; 32]);
    let mut g = c.benchmark_group("channel");
    for batch in [1usize, 30] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("round trip {batch} x 32B"), |b| {
            let mut now = Instant::now();
            let mut a = Channel::new(&cfg, cfg.receive_window, now);
            let mut z = Channel::new(&cfg, cfg.receive_window, now);
            let mut buf = Vec::with_capacity(1200);
            b.iter(|| {
                now += Duration::from_micros(20);
                for _ in 0..batch {
                    a.send(Class::ReliableOrdered, 0, payload.clone()).expect("fits");
                }
                let mut got = 0;
                while a.write_packet(now, 1, &mut buf, false, None) {
                    got += deliver(&mut z, now, &buf);
                }
                // The reply direction carries the ack, as a response would.
                z.send(Class::ReliableOrdered, 0, payload.clone()).expect("fits");
                while z.write_packet(now, 1, &mut buf, false, None) {
                    deliver(&mut a, now, &buf);
                }
                black_box(got)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
