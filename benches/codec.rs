//! Wire codec: encoding and decoding data packets (one small message, and a full datagram of
//! 32-byte messages).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use grainwire::proto::wire::{self, Class, Frame, FrameReader, MessageHeader, Packet};

/// A data packet with an ack and `messages` 32-byte reliable-ordered messages, into `out`.
fn encode(out: &mut Vec<u8>, messages: usize) {
    out.clear();
    wire::encode_data_header(out, 0xdead_beef, 1234, 2);
    wire::encode_ack(out, 25, &[(1200, 1210)]);
    for i in 0..messages {
        let h = MessageHeader {
            class: Class::ReliableOrdered,
            stream: 0,
            seq: i as u64,
            chunk: None,
            len: 32,
        };
        wire::encode_message_header(out, &h, i + 1 == messages);
        out.extend_from_slice(black_box(&[7u8; 32]));
    }
}

fn decode(d: &[u8]) -> usize {
    let Ok(Packet::Data(_, frames)) = wire::decode_packet(d) else { panic!("data packet") };
    let mut n = 0;
    for f in FrameReader::new(frames) {
        if let Ok(Frame::Message(m)) = f {
            n += m.payload.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for messages in [1usize, 30] {
        g.throughput(Throughput::Elements(messages as u64));
        g.bench_function(format!("encode {messages} x 32B"), |b| {
            let mut out = Vec::with_capacity(1200);
            b.iter(|| {
                encode(&mut out, messages);
                black_box(out.len())
            })
        });
        let mut p = Vec::new();
        encode(&mut p, messages);
        g.bench_function(format!("decode {messages} x 32B"), |b| b.iter(|| decode(black_box(&p))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
