use std::time::Duration;

use super::*;
use crate::proto::ids::GrainId;
use crate::proto::manifest::{HostedGrain, HostedMethod, MetaValue};
use crate::proto::rng::SplitMix64;

fn hosted(name: &str, version: u8, index: u32) -> HostedGrain {
    HostedGrain {
        name: name.into(),
        grain_type: GrainType::of(name),
        interface: InterfaceId::of(name),
        version,
        contract: 7,
        index,
        // Method 1 changes with every version; method 2 never does.
        methods: vec![
            HostedMethod { id: MethodId(1), signature: version.into() },
            HostedMethod { id: MethodId(2), signature: 100 },
        ],
    }
}

fn server(id: &str, peer: u64, weight: u32, grains: Vec<HostedGrain>) -> ServerEntry {
    ServerEntry {
        peer: PeerId(peer),
        manifest: Arc::new(Manifest {
            server_id: ServerId::new(id),
            cluster_id: "grainwire".into(),
            service_id: "game".into(),
            weight,
            draining: false,
            priority: 0,
            metadata: Default::default(),
            grains,
        }),
        load: Arc::new(Load::new(Duration::from_millis(1))),
    }
}

fn fleet(n: usize) -> Vec<ServerEntry> {
    (0..n)
        .map(|i| server(&format!("server-{i}"), i as u64 + 1, 1, vec![hosted("Player", 1, 0)]))
        .collect()
}

fn target(name: &str, version: u8) -> Target {
    Target {
        grain_type: GrainType::of(name),
        interface: InterfaceId::of(name),
        version,
        method: MethodId(1),
        signature: version.into(),
    }
}

fn strategies(s: impl Strategy) -> Strategies {
    Strategies::new(Arc::new(s))
}

/// Where `keys` random grain keys go: server id per key.
fn place_all(table: &RouteTable, keys: &[u64]) -> Vec<ServerId> {
    let t = target("Player", 1);
    keys.iter()
        .map(|&h| table.route(&t, h, &Affinity::None).unwrap().candidate.server.clone())
        .collect()
}

fn keys(n: usize) -> Vec<u64> {
    let mut rng = SplitMix64::new(42);
    (0..n)
        .map(|_| GrainId::new(GrainType::of("Player"), rng.next_u64() as i64).stable_hash())
        .collect()
}

#[test]
fn server_hash_is_pinned() {
    // Placement must agree across processes, builds and platforms.
    assert_eq!(server_hash(&ServerId::new("server-0")), stable_hash(b"server-0"));
    assert_eq!(fmix64(0), 0);
    assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
}

#[test]
fn consistent_hash_balances_and_moves_only_what_it_must() {
    let keys = keys(200_000);
    let ch = strategies(ConsistentHash);
    let ten = RouteTable::build(&fleet(10), &ch);
    let before = place_all(&ten, &keys);
    let mut counts: HashMap<&ServerId, usize> = HashMap::new();
    for s in &before {
        *counts.entry(s).or_default() += 1;
    }
    let max = *counts.values().max().unwrap() as f64;
    let mean = keys.len() as f64 / 10.0;
    assert_eq!(counts.len(), 10);
    assert!(max / mean < 1.02, "max/mean {}", max / mean);

    // Removing server-3 moves exactly its own grains.
    let mut nine = fleet(10);
    nine.remove(3);
    let after = place_all(&RouteTable::build(&nine, &ch), &keys);
    let gone = ServerId::new("server-3");
    for (b, a) in before.iter().zip(&after) {
        if *b == gone {
            assert_ne!(*a, gone);
        } else {
            assert_eq!(a, b, "a grain moved although its server stayed");
        }
    }

    // Adding an 11th moves about 1/11 of the grains, all of them to the newcomer.
    let eleven = RouteTable::build(&fleet(11), &ch);
    let after = place_all(&eleven, &keys);
    let newcomer = ServerId::new("server-10");
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if a != b {
            assert_eq!(*a, newcomer);
            moved += 1;
        }
    }
    let share = moved as f64 / keys.len() as f64;
    assert!((share - 1.0 / 11.0).abs() < 0.005, "moved {share}");
}

#[test]
fn placement_ignores_the_order_servers_were_seen_in() {
    let keys = keys(10_000);
    let mut reversed = fleet(7);
    reversed.reverse();
    let ch = strategies(ConsistentHash);
    assert_eq!(
        place_all(&RouteTable::build(&fleet(7), &ch), &keys),
        place_all(&RouteTable::build(&reversed, &ch), &keys)
    );
}

#[test]
fn weights_set_the_shares() {
    let mut servers = fleet(3);
    servers[0] = server("server-0", 1, 2, vec![hosted("Player", 1, 0)]);
    let table = RouteTable::build(&servers, &strategies(ConsistentHash));
    let keys = keys(200_000);
    let heavy = place_all(&table, &keys).iter().filter(|s| s.0.as_ref() == "server-0").count();
    let share = heavy as f64 / keys.len() as f64;
    assert!((share - 0.5).abs() < 0.01, "weight 2 of 4 got {share}");
}

#[test]
fn round_robin_takes_turns_per_grain_type() {
    let servers: Vec<_> = (0..3)
        .map(|i| server(&format!("s{i}"), i + 1, 1, vec![hosted("A", 1, 0), hosted("B", 1, 1)]))
        .collect();
    let table = RouteTable::build(&servers, &strategies(RoundRobin));
    let mut seen = Vec::new();
    for _ in 0..6 {
        // Interleaving another type does not disturb A's turns.
        let a = table.route(&target("A", 1), 0, &Affinity::None).unwrap();
        table.route(&target("B", 1), 0, &Affinity::None).unwrap();
        seen.push(a.candidate.server.0.to_string());
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s0", "s1", "s2"]);
}

#[test]
fn lowest_latency_prefers_the_fast_without_herding() {
    let servers = fleet(4);
    servers[0].load.finished(Some(Duration::from_millis(20)), 1, Duration::from_secs(10));
    let table = RouteTable::build(&servers, &strategies(LowestLatency));
    let mut counts = [0usize; 4];
    for _ in 0..4000 {
        let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
        counts[(d.candidate.peer.0 - 1) as usize] += 1;
    }
    // The slow server loses every comparison; the three fast ones share the rest evenly.
    assert_eq!(counts[0], 0, "{counts:?}");
    for &c in &counts[1..] {
        assert!((1100..1570).contains(&c), "{counts:?}");
    }
    // Pending calls raise a server's cost: with many pending on server-1, it loses too.
    for _ in 0..50 {
        servers[1].load.started();
    }
    let mut busy = 0;
    for _ in 0..3000 {
        let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
        busy += usize::from(d.candidate.peer.0 == 2);
    }
    assert_eq!(busy, 0);
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let load = Load::new(Duration::from_millis(1));
    let tau = Duration::from_secs(10);
    load.finished(Some(Duration::from_millis(50)), 1_000, tau);
    assert_eq!(load.latency(), Duration::from_millis(50));
    // One τ later a 1 ms sample pulls it 63 % of the way down.
    load.finished(Some(Duration::from_millis(1)), 1_000 + tau.as_nanos() as u64, tau);
    let ms = load.latency().as_secs_f64() * 1000.0;
    assert!((ms - (50.0 * (-1f64).exp() + 1.0 * (1.0 - (-1f64).exp()))).abs() < 0.01, "{ms}");
    assert_eq!(load.pending(), 0, "never below zero");
}

#[test]
fn affinity_required_preferred_and_fallback() {
    let table = RouteTable::build(&fleet(5), &strategies(ConsistentHash));
    let t = target("Player", 1);
    for h in [1u64, 2, 3, 99] {
        let d = table.route(&t, h, &Affinity::Required(ServerId::new("server-2"))).unwrap();
        assert_eq!((d.candidate.server.0.as_ref(), d.reason), ("server-2", Reason::Required));
        let d = table.route(&t, h, &Affinity::Preferred(ServerId::new("server-4"))).unwrap();
        assert_eq!((d.candidate.server.0.as_ref(), d.reason), ("server-4", Reason::Preferred));
        let d = table.route(&t, h, &Affinity::Preferred(ServerId::new("gone"))).unwrap();
        assert_eq!(d.reason, Reason::PreferredUnavailable);
        let plain = table.route(&t, h, &Affinity::None).unwrap();
        assert_eq!(d.candidate.server, plain.candidate.server, "fallback is the strategy's pick");
    }
    assert_eq!(
        table.route(&t, 1, &Affinity::Required(ServerId::new("gone"))).unwrap_err(),
        RouteError::Unavailable(ServerId::new("gone"))
    );
    // Required on a server that exists but does not host the type.
    let mut servers = fleet(2);
    servers.push(server("other", 9, 1, vec![hosted("Room", 1, 0)]));
    let table = RouteTable::build(&servers, &strategies(ConsistentHash));
    assert_eq!(
        table.route(&t, 1, &Affinity::Required(ServerId::new("other"))).unwrap_err(),
        RouteError::Unavailable(ServerId::new("other"))
    );
}

#[test]
fn only_hosts_of_the_type_at_a_compatible_version_are_candidates() {
    let servers = vec![
        server("a", 1, 1, vec![hosted("Player", 1, 0)]),
        server("b", 2, 1, vec![hosted("Player", 2, 3), hosted("Room", 1, 0)]),
        server("c", 3, 1, vec![hosted("Player", 2, 1)]),
    ];
    let table = RouteTable::build(&servers, &strategies(RoundRobin));
    for _ in 0..10 {
        let d = table.route(&target("Room", 1), 0, &Affinity::None).unwrap();
        assert_eq!((d.candidate.server.0.as_ref(), d.reason), ("b", Reason::Only));
        let d = table.route(&target("Player", 2), 0, &Affinity::None).unwrap();
        assert!(matches!(d.candidate.server.0.as_ref(), "b" | "c"));
        assert_eq!(d.candidate.type_index, if d.candidate.peer == PeerId(2) { 3 } else { 1 });
        let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
        assert_eq!(d.candidate.server.0.as_ref(), "a");
    }
    assert!(matches!(
        table.route(&target("Player", 3), 0, &Affinity::None),
        Err(RouteError::Incompatible { ours: 3, .. })
    ));
    let mut other_contract = target("Room", 1);
    other_contract.signature = 8;
    assert_eq!(
        table.route(&other_contract, 0, &Affinity::None).unwrap_err(),
        RouteError::Incompatible { ours: 1, theirs: 1 }
    );
    assert_eq!(
        table.route(&target("Nope", 1), 0, &Affinity::None).unwrap_err(),
        RouteError::NotHosted
    );
    let empty = RouteTable::build(&[], &strategies(RoundRobin));
    assert_eq!(
        empty.route(&target("Room", 1), 0, &Affinity::None).unwrap_err(),
        RouteError::NoServers
    );
    // A method no version changed is served by every version's hosts (a rolling upgrade).
    let mut unchanged = target("Player", 1);
    (unchanged.method, unchanged.signature) = (MethodId(2), 100);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let d = table.route(&unchanged, 0, &Affinity::None).unwrap();
        assert_eq!(d.candidates, 3);
        seen.insert(d.candidate.server.0.to_string());
    }
    assert_eq!(seen.len(), 3);
    assert!(table.implements(GrainType::of("Player"), InterfaceId::of("Player")));
    assert!(!table.implements(GrainType::of("Player"), InterfaceId::of("Room")));
}

#[test]
fn a_server_hosting_two_versions_serves_a_method_both_have_once() {
    let servers = vec![
        server("a", 1, 1, vec![hosted("Player", 1, 0), hosted("Player", 2, 1)]),
        server("b", 2, 1, vec![hosted("Player", 2, 0)]),
    ];
    let table = RouteTable::build(&servers, &strategies(RoundRobin));
    let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
    assert_eq!((d.candidate.server.0.as_ref(), d.candidate.type_index, d.candidates), ("a", 0, 1));
    let mut unchanged = target("Player", 2);
    (unchanged.method, unchanged.signature) = (MethodId(2), 100);
    let candidates = table.candidates(&unchanged);
    assert_eq!(candidates.list.len(), 2);
}

#[test]
fn a_retry_never_goes_back_to_the_excluded_server() {
    let table = RouteTable::build(&fleet(3), &strategies(ConsistentHash));
    let t = target("Player", 1);
    for h in keys(300) {
        let first = table.route(&t, h, &Affinity::None).unwrap().candidate.peer;
        let retry = table.route_excluding(&t, h, &Affinity::None, Some(first)).unwrap();
        assert_ne!(retry.candidate.peer, first);
    }
    let one = RouteTable::build(&fleet(1), &strategies(ConsistentHash));
    assert_eq!(
        one.route_excluding(&t, 5, &Affinity::None, Some(PeerId(1))).unwrap_err(),
        RouteError::NotHosted
    );
}

#[test]
fn a_strategy_returning_garbage_falls_back_to_the_first() {
    #[derive(Debug)]
    struct Wild;
    impl Strategy for Wild {
        fn name(&self) -> &'static str {
            "wild"
        }
        fn pick(&self, _: &PickContext<'_>, _: Candidates<'_>) -> usize {
            usize::MAX
        }
    }
    let table = RouteTable::build(&fleet(3), &strategies(Wild));
    let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
    assert_eq!((d.candidate.server.0.as_ref(), d.strategy), ("server-0", "wild"));
}

#[test]
fn draining_servers_take_no_calls() {
    let mut servers = fleet(2);
    let m = &servers[1].manifest;
    servers[1].manifest = Arc::new(Manifest { draining: true, ..(**m).clone() });
    let table = RouteTable::build(&servers, &strategies(RoundRobin));
    for _ in 0..10 {
        let d = table.route(&target("Player", 1), 0, &Affinity::None).unwrap();
        assert_eq!(d.candidate.server.0.as_ref(), "server-0");
    }
    servers.remove(0);
    let table = RouteTable::build(&servers, &strategies(RoundRobin));
    assert_eq!(
        table.route(&target("Player", 1), 0, &Affinity::None).unwrap_err(),
        RouteError::Draining
    );
}

/// The strategies' random draws come from the client's seed: the same seed, the same picks
/// (a simulation repeats exactly); another seed, other picks.
#[test]
fn random_picks_follow_the_seed() {
    let servers = fleet(8);
    let picks = |seed: u64| {
        let mut s = strategies(LowestLatency);
        s.set_seed(seed);
        let table = RouteTable::build(&servers, &s);
        (0..200)
            .map(|_| table.route(&target("Player", 1), 0, &Affinity::None).unwrap().candidate.peer)
            .collect::<Vec<_>>()
    };
    assert_eq!(picks(1), picks(1));
    assert_ne!(picks(1), picks(2));
}

fn with_priority(id: &str, peer: u64, priority: u32, dc: &str) -> ServerEntry {
    let mut s = server(id, peer, 1, vec![hosted("Player", 1, 0)]);
    let m = Arc::make_mut(&mut s.manifest);
    m.priority = priority;
    m.metadata.insert("datacenter".into(), dc.into());
    s
}

fn picks(table: &RouteTable, n: u64) -> std::collections::BTreeMap<String, u64> {
    let t = target("Player", 1);
    let mut seen = std::collections::BTreeMap::new();
    for h in 0..n {
        let d = table.route(&t, h.wrapping_mul(0x9e37_79b9_7f4a_7c15), &Affinity::None).unwrap();
        *seen.entry(d.candidate.server.0.to_string()).or_default() += 1;
    }
    seen
}

/// A tiered strategy runs its inner strategy among the best tier present only, and falls back
/// to the next tier as the better ones leave; any `Tiering` (here: same datacenter first) works
/// the same way.
#[test]
fn tiered_strategies_pick_within_the_best_tier_and_fall_back() {
    let all = vec![
        with_priority("a", 1, 1, "us"),
        with_priority("b", 2, 0, "eu"),
        with_priority("c", 3, 0, "us"),
        with_priority("d", 4, 2, "eu"),
    ];
    let rr = strategies(Tiered::by_priority(RoundRobin));
    let seen = picks(&RouteTable::build(&all, &rr), 100);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("b".into(), 50), ("c".into(), 50)]);
    // b and c leave: the next tier (a) takes everything; then d.
    let seen = picks(&RouteTable::build(&[all[0].clone(), all[3].clone()], &rr), 10);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("a".into(), 10)]);
    let seen = picks(&RouteTable::build(&all[3..], &rr), 10);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("d".into(), 10)]);
    // Consistent placement within the tier: each grain always goes to the same one of b, c.
    let ch = RouteTable::build(&all, &strategies(Tiered::by_priority(ConsistentHash)));
    let seen = picks(&ch, 1000);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["b", "c"]);
    assert!(seen.values().all(|&n| n > 400), "{seen:?}");

    #[derive(Debug)]
    struct SameDatacenter(&'static str);
    impl Tiering for SameDatacenter {
        fn tier(&self, c: &Candidate) -> u32 {
            match c.metadata.get("datacenter") {
                Some(MetaValue::Str(dc)) if dc.as_ref() == self.0 => 0,
                _ => 1,
            }
        }
    }
    let near = strategies(Tiered::new(RoundRobin, SameDatacenter("eu")));
    let seen = picks(&RouteTable::build(&all, &near), 100);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("b".into(), 50), ("d".into(), 50)]);
}
