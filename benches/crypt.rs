//! What packet protection costs per datagram, sans-IO: sealing and opening (ChaCha20-Poly1305,
//! the replay window) a 63-byte data packet (a 32-byte call) and a full 1,200-byte one; and
//! opening a connect token (what a server spends on each `CONNECT` with a real cookie).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use grainwire::auth::{ConnectToken, TokenKey, TokenKind};
use grainwire::proto::crypt::{PacketKeys, ReplayWindow, Secrets};

fn bench(c: &mut Criterion) {
    let secrets = Secrets { client_to_server: [1; 32], server_to_client: [2; 32] };
    let client = PacketKeys::derive(&secrets, 7, 9, true);
    let server = PacketKeys::derive(&secrets, 7, 9, false);
    let mut g = c.benchmark_group("crypt");
    for size in [63usize, 1184] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal + open {size} B"), |b| {
            let mut pn = 0u64;
            let mut window = ReplayWindow::default();
            let mut packet = Vec::with_capacity(1200);
            b.iter(|| {
                pn += 1;
                packet.clear();
                packet.extend_from_slice(&[0x90, 1, 2, 3, 4, 5, 6]);
                packet.resize(size, 0x5a);
                client.seal(pn, 7, &mut packet);
                assert!(window.fresh(pn));
                let (h, body) = packet.split_at_mut(7);
                let plain = server.open(pn, h, body).expect("authentic");
                window.mark(pn);
                black_box(plain.len())
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("derive session keys", |b| {
        b.iter(|| black_box(PacketKeys::derive(&secrets, black_box(7), 9, false)))
    });
    let key = TokenKey::new(1, [3; 32]);
    let token = ConnectToken {
        kind: TokenKind::Player,
        client_id: 42,
        servers: vec!["10.0.0.1:7000".parse().expect("an address")],
        issued: 1_000,
        expires: 2_000,
        user_data: vec![7; 32],
        client_to_server: [1; 32],
        server_to_client: [2; 32],
    };
    let sealed = token.seal(&key, [5; 12]).expect("fits");
    let keys = [key];
    g.bench_function("open a connect token", |b| {
        b.iter(|| black_box(ConnectToken::open(black_box(&sealed), &keys, 1_500).expect("opens")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
