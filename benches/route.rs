//! Routing: one pick from the snapshot per strategy with 10 and 100 candidate servers, the
//! grain key's stable hash, and rebuilding the snapshot (100 servers x 50 grain types).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use grainwire::proto::ids::{GrainId, GrainType, InterfaceId, MethodId, PeerId, ServerId};
use grainwire::proto::manifest::{HostedGrain, HostedMethod, Manifest};
use grainwire::proto::route::{
    Affinity, ConsistentHash, Load, LowestLatency, RoundRobin, RouteTable, ServerEntry, Strategies,
    Strategy, Target, Tiered,
};

fn hosted(i: u32) -> HostedGrain {
    let name = format!("Type{i}");
    HostedGrain {
        name: name.as_str().into(),
        grain_type: GrainType::of(&name),
        interface: InterfaceId::of(&name),
        version: 1,
        contract: 7,
        index: i,
        methods: vec![HostedMethod { id: MethodId(0), signature: 7 }],
    }
}

fn fleet(n: usize, types: u32) -> Vec<ServerEntry> {
    (0..n)
        .map(|i| ServerEntry {
            peer: PeerId(i as u64 + 1),
            manifest: Arc::new(Manifest {
                server_id: ServerId::new(format!("server-{i}")),
                cluster_id: "grainwire".into(),
                service_id: "game".into(),
                weight: 1,
                draining: false,
                priority: (i % 2) as u32, // two tiers, for the tiered strategies
                metadata: Default::default(),
                grains: (0..types).map(hosted).collect(),
            }),
            load: Arc::new(Load::new(Duration::from_micros(200 + 10 * i as u64))),
        })
        .collect()
}

fn target() -> Target {
    Target {
        grain_type: GrainType::of("Type0"),
        interface: InterfaceId::of("Type0"),
        version: 1,
        method: MethodId(0),
        signature: 7,
    }
}

fn strategies(s: impl Strategy) -> Strategies {
    Strategies::new(Arc::new(s))
}

fn picks(c: &mut Criterion) {
    let t = target();
    let mut g = c.benchmark_group("route");
    for n in [10usize, 100] {
        let servers = fleet(n, 1);
        for (name, s) in [
            ("consistent-hash", strategies(ConsistentHash)),
            ("round-robin", strategies(RoundRobin)),
            ("lowest-latency", strategies(LowestLatency)),
            ("round-robin-by-priority", strategies(Tiered::by_priority(RoundRobin))),
            ("consistent-hash-by-priority", strategies(Tiered::by_priority(ConsistentHash))),
        ] {
            let table = RouteTable::build(&servers, &s);
            let mut h = 0x9e37_79b9_7f4a_7c15u64;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    table.route(&t, black_box(h), &Affinity::None).unwrap().candidate.type_index
                })
            });
        }
        // Placement including the 16-byte key's stable hash (what a new reference costs).
        let table = RouteTable::build(&servers, &strategies(ConsistentHash));
        let mut k = 0u128;
        g.bench_with_input(BenchmarkId::new("consistent-hash+key-hash", n), &n, |b, _| {
            b.iter(|| {
                k = k.wrapping_add(0x1234_5678_9abc_def0_1357_9bdf_0246_8ace);
                let h = GrainId::new(t.grain_type, black_box(k)).stable_hash();
                table.route(&t, h, &Affinity::None).unwrap().candidate.type_index
            })
        });
        // Required affinity: a scan for the server, no strategy.
        let want = Affinity::Required(ServerId::new(format!("server-{}", n / 2)));
        g.bench_with_input(BenchmarkId::new("required-affinity", n), &n, |b, _| {
            b.iter(|| table.route(&t, black_box(1), &want).unwrap().candidate.type_index)
        });
    }
    g.finish();
    let servers = fleet(100, 50);
    let s = strategies(ConsistentHash);
    c.bench_function("route/rebuild-100-servers-50-types", |b| {
        b.iter(|| RouteTable::build(black_box(&servers), &s).server_count())
    });
}

criterion_group!(benches, picks);
criterion_main!(benches);
