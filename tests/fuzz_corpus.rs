//! The fuzz targets' corpus, replayed on stable Rust, plus bounded random inputs: the decoders
//! and sessions must take any bytes without panicking.

use std::path::Path;

use grainwire::fuzz::{self, FUZZ_NONCE, FUZZ_TAG};
use grainwire::proto::ids::{
    GrainId, GrainKey, GrainType, InterfaceId, MethodId, RequestId, ServerId,
};
use grainwire::proto::manifest::{HostedGrain, HostedMethod, Manifest};
use grainwire::proto::rng::SplitMix64;
use grainwire::proto::wire::rpc::{self, CallHeader, Status};
use grainwire::proto::wire::{self, Class, CloseKind, Cookie, Handshake, MessageHeader};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn decode_datagram_corpus_replays() {
    let inputs = corpus("decode_datagram");
    assert!(inputs.len() >= 10, "the corpus is there");
    for input in inputs {
        fuzz::decode_datagram(&input);
    }
}

#[test]
fn session_corpus_replays() {
    let inputs = corpus("session");
    assert!(inputs.len() >= 5, "the corpus is there");
    for input in inputs {
        fuzz::session(&input);
    }
}

#[test]
fn rpc_frame_corpus_replays() {
    let inputs = corpus("rpc_frame");
    assert!(inputs.len() >= 8, "the corpus is there");
    for input in inputs {
        fuzz::rpc_frame(&input);
    }
}

#[test]
fn reference_corpus_replays() {
    let inputs = corpus("reference");
    assert!(inputs.len() >= 5, "the corpus is there");
    for input in inputs {
        fuzz::reference(&input);
    }
}

#[test]
fn connect_token_corpus_replays() {
    let inputs = corpus("connect_token");
    assert!(inputs.len() >= 3, "the corpus is there");
    for input in inputs {
        fuzz::connect_token(&input);
    }
}

/// Sealed tokens with the fuzz key (none, one and many servers, with and without user data,
/// a player's and a server's), and the player tokens that wrap them.
fn valid_tokens() -> Vec<Vec<u8>> {
    use grainwire::proto::token::{ConnectToken, MAX_USER_DATA, PlayerToken, TokenKey, TokenKind};
    let key = TokenKey::new(1, fuzz::FUZZ_TOKEN_KEY);
    let mut out = Vec::new();
    for (servers, user) in [(0usize, 0usize), (1, 10), (8, MAX_USER_DATA)] {
        let t = ConnectToken {
            kind: if user == 10 { TokenKind::Server } else { TokenKind::Player },
            client_id: servers as u64,
            servers: (0..servers).map(|i| format!("10.0.0.{i}:7000").parse().unwrap()).collect(),
            issued: 900,
            expires: 2_000,
            user_data: vec![0xab; user],
            client_to_server: [1; 32],
            server_to_client: [2; 32],
        };
        out.push(t.seal(&key, [servers as u8; 12]).unwrap());
        // What the player gets: the sealed token wrapped with its secrets.
        out.push(PlayerToken::new(&t, &key, [servers as u8 + 1; 12]).unwrap().to_bytes());
    }
    out
}

#[test]
fn reassembly_corpus_replays() {
    let inputs = corpus("reassembly");
    assert!(inputs.len() >= 4, "the corpus is there");
    for input in inputs {
        fuzz::reassembly(&input);
    }
}

/// Scripts for the reassembly target: whole messages and chunked ones in several orders, on
/// each receive path (see `grainwire::fuzz::reassembly` for the step layout).
fn reassembly_scripts() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for target in [0u8, 1, 2, 2 | 0x20] {
        let mut v = Vec::new();
        for seq in 0..4u8 {
            v.extend_from_slice(&[target, seq, 0, 0, 1, 20]); // a whole message
        }
        for order in [[0u8, 1, 2], [2, 1, 0], [1, 2, 0]] {
            for (n, i) in order.into_iter().enumerate() {
                let last = i == 2;
                let len_sel = if last { 1 } else { 0 };
                v.extend_from_slice(&[target | 0x10, 9 + n as u8, 3, i, len_sel, 17]);
            }
        }
        out.push(v);
    }
    out
}

/// Well-formed RPC frames of every kind and key shape.
fn valid_rpc_frames() -> Vec<Vec<u8>> {
    let keys = [
        GrainKey::Int(-5),
        GrainKey::Str("player-1".into()),
        GrainKey::Id(u128::MAX - 3),
        GrainKey::IntExt(1 << 40, "eu".into()),
        GrainKey::IdExt(7, "ext".into()),
    ];
    let mut out = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let call = CallHeader {
            type_index: i as u32,
            version: 2,
            method: MethodId(0xBEEF),
            deadline_ms: (i % 2 == 0).then_some(5_000),
            key,
            chain: Vec::new(),
        };
        let id = RequestId { slot: 300 * i as u32, generation: 9 };
        let args = postcard::to_allocvec(&(
            42u64,
            "name",
            vec![1u8, 2, 3],
            Some((1.5f32, -2i32)),
            vec!["a"],
        ))
        .unwrap();
        let mut v = Vec::new();
        rpc::encode_call(&mut v, Some(id), &call);
        v.extend_from_slice(&args);
        out.push(v);
        let mut v = Vec::new();
        rpc::encode_call(&mut v, None, &call);
        v.extend_from_slice(&postcard::to_allocvec(&("one way",)).unwrap());
        out.push(v);
        // The same call as a sequenced update.
        let mut v = Vec::new();
        rpc::encode_update(&mut v, 1 << (7 * i), &CallHeader { deadline_ms: None, ..call.clone() });
        v.extend_from_slice(&postcard::to_allocvec(&("update",)).unwrap());
        out.push(v);
        // The same call as a stream open (window, ordered stream), written in place.
        let mut body = Vec::new();
        let flags = rpc::encode_request_body(&mut body, &call);
        let window = 16 << i;
        let mut v = vec![0; rpc::stream_open_prefix_len(id, call.type_index, window)];
        rpc::encode_stream_open_prefix(&mut v, id, call.type_index, flags, window, i as u8);
        v.extend_from_slice(&body);
        v.extend_from_slice(&args);
        out.push(v);
        // The same call as an exactly-once call (its caller's id in front).
        let mut v = vec![0; rpc::once_prefix_len(id, call.type_index)];
        rpc::encode_once_prefix(&mut v, 0xfeed_0000 + i as u64, id, call.type_index, flags);
        v.extend_from_slice(&body);
        v.extend_from_slice(&args);
        out.push(v);
        // The same call made by a grain serving a call: with its chain.
        let chain = (0..=i).map(|n| GrainId::new(GrainType::of("Room"), n as i64)).collect();
        let mut v = Vec::new();
        rpc::encode_call(&mut v, Some(id), &CallHeader { chain, ..call });
        v.extend_from_slice(&args);
        out.push(v);
    }
    // Stream items (many per frame) and credit.
    let mut v = Vec::new();
    rpc::encode_stream_items_head(&mut v, RequestId { slot: 70, generation: 3 });
    for n in 0..20u64 {
        rpc::put_stream_item(&mut v, &postcard::to_allocvec(&(n, "event")).unwrap());
    }
    out.push(v);
    let mut v = Vec::new();
    rpc::encode_stream_credit(&mut v, RequestId { slot: 70, generation: 3 }, 512);
    out.push(v);
    for observe in [true, false] {
        let mut v = Vec::new();
        rpc::encode_observe(&mut v, observe, 0xfeed_beef, &[1, 2, 300, u64::MAX]);
        out.push(v);
    }
    let mut deadlock = Vec::new();
    rpc::encode_response(&mut deadlock, RequestId { slot: 2, generation: 3 }, Status::Deadlock);
    let (a, b) = (GrainId::new(GrainType::of("A"), "a"), GrainId::new(GrainType::of("B"), 7));
    rpc::put_chain(&mut deadlock, &[a.clone(), b], Some(&a));
    out.push(deadlock);
    let id = RequestId { slot: 1, generation: 1 };
    let mut v = Vec::new();
    rpc::encode_cancel(&mut v, id);
    out.push(v);
    for status in [Status::Ok, Status::AppError, Status::DeadlineExceeded, Status::Overloaded] {
        let mut v = Vec::new();
        rpc::encode_response(&mut v, id, status);
        v.extend_from_slice(b"\x03abc");
        out.push(v);
    }
    let manifest = Manifest {
        server_id: ServerId::new("server-a"),
        cluster_id: "grainwire".into(),
        service_id: "game".into(),
        weight: 3,
        draining: true,
        priority: 0,
        metadata: Default::default(),
        grains: vec![HostedGrain {
            name: "Player".into(),
            grain_type: GrainType::of("Player"),
            interface: InterfaceId::of("Player"),
            version: 1,
            contract: 0x1234_5678_9abc_def0,
            index: 0,
            methods: vec![HostedMethod { id: MethodId(7), signature: 0x0bad_cafe }],
        }],
    };
    out.push(manifest.encode());
    out
}

/// Reference surrogates of every key shape, compact and readable, and one of a grain type
/// other than its interface's.
fn valid_references() -> Vec<Vec<u8>> {
    let room = GrainType::of("Room");
    let keys = [
        GrainKey::Int(-5),
        GrainKey::Str("room-1".into()),
        GrainKey::Id(u128::MAX - 3),
        GrainKey::IntExt(1 << 40, "eu".into()),
        GrainKey::IdExt(7, "ext".into()),
    ];
    let mut out = Vec::new();
    for key in keys {
        let r = fuzz::reference_of(GrainId { ty: room, key });
        out.push(postcard::to_allocvec(&r).unwrap());
        out.push(serde_json::to_vec(&r).unwrap());
    }
    let other = fuzz::reference_of(GrainId::new(GrainType::of("Hall"), 3));
    out.push(postcard::to_allocvec(&other).unwrap());
    out.push(serde_json::to_vec(&other).unwrap());
    out
}

/// Well-formed datagrams of every kind, for the seed corpus and for mutation below.
fn valid_datagrams() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let cookie = Cookie { time: 1, mac: 2 };
    for body in [
        Handshake::Hello { nonce: FUZZ_NONCE },
        Handshake::Challenge { nonce: FUZZ_NONCE, cookie },
        Handshake::Connect { nonce: FUZZ_NONCE, cookie, window: 1 << 20, cluster: 0, token: &[] },
        Handshake::Accept { nonce: FUZZ_NONCE, tag: FUZZ_TAG, window: 1 << 20, proof: None },
        Handshake::Reject { nonce: FUZZ_NONCE, reason: wire::RejectReason::ServerFull },
        Handshake::Reset { tag: FUZZ_TAG },
    ] {
        let mut v = Vec::new();
        wire::encode_handshake(&mut v, &body);
        out.push(v);
    }
    let classes =
        [Class::ReliableOrdered, Class::ReliableUnordered, Class::Unreliable, Class::Sequenced];
    for (pn, class) in classes.iter().enumerate() {
        let mut v = Vec::new();
        wire::encode_data_header(&mut v, FUZZ_TAG, pn as u32, 1);
        wire::encode_ack(
            &mut v,
            10,
            &[(0, 3), (6, 6)].map(|(a, b)| (a, b)).into_iter().rev().collect::<Vec<_>>(),
        );
        wire::encode_ping(&mut v);
        wire::encode_max_data(&mut v, 1 << 21);
        for (i, chunk) in [None, Some((0, 2)), Some((1, 2))].into_iter().enumerate() {
            let h = MessageHeader { class: *class, stream: i as u8, seq: pn as u64, chunk, len: 3 };
            wire::encode_message_header(&mut v, &h, false);
            v.extend_from_slice(b"abc");
        }
        out.push(v);
    }
    let mut close = Vec::new();
    wire::encode_data_header(&mut close, FUZZ_TAG, 9, 2);
    wire::encode_close(&mut close, CloseKind::Application(3));
    out.push(close);
    // Path validation: a challenge, and a response beside a ping.
    let mut path = Vec::new();
    wire::encode_data_header(&mut path, FUZZ_TAG, 10, 1);
    wire::encode_path(&mut path, false, 0x0123_4567_89ab_cdef);
    out.push(path);
    let mut path = Vec::new();
    wire::encode_data_header(&mut path, FUZZ_TAG, 11, 1);
    wire::encode_ping(&mut path);
    wire::encode_path(&mut path, true, u64::MAX);
    out.push(path);
    out
}

/// Frames datagrams as the session target reads them: `[step][len][bytes]`.
fn session_input(datagrams: &[Vec<u8>], step: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for d in datagrams {
        v.push(step);
        v.push(d.len().min(255) as u8);
        v.extend_from_slice(&d[..d.len().min(255)]);
    }
    v
}

fn mutate(rng: &mut SplitMix64, d: &mut Vec<u8>) {
    for _ in 0..rng.below(4) {
        if d.is_empty() {
            break;
        }
        let at = rng.below(d.len() as u64) as usize;
        match rng.below(3) {
            0 => d[at] = rng.next_u32() as u8,
            1 => d.truncate(at),
            _ => d.insert(at, rng.next_u32() as u8),
        }
    }
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = SplitMix64::new(0x5eed_f00d);
    let valid = valid_datagrams();
    for _ in 0..50_000 {
        let d = if rng.below(2) == 0 {
            (0..rng.below(300)).map(|_| rng.next_u32() as u8).collect::<Vec<_>>()
        } else {
            let mut d = valid[rng.below(valid.len() as u64) as usize].clone();
            mutate(&mut rng, &mut d);
            d
        };
        fuzz::decode_datagram(&d);
    }
    let frames = valid_rpc_frames();
    for _ in 0..50_000 {
        let d = if rng.below(4) == 0 {
            (0..rng.below(80)).map(|_| rng.next_u32() as u8).collect::<Vec<_>>()
        } else {
            let mut d = frames[rng.below(frames.len() as u64) as usize].clone();
            mutate(&mut rng, &mut d);
            d
        };
        fuzz::rpc_frame(&d);
    }
    let references = valid_references();
    for _ in 0..20_000 {
        let d = if rng.below(4) == 0 {
            (0..rng.below(40)).map(|_| rng.next_u32() as u8).collect::<Vec<_>>()
        } else {
            let mut d = references[rng.below(references.len() as u64) as usize].clone();
            mutate(&mut rng, &mut d);
            d
        };
        fuzz::reference(&d);
    }
    let tokens = valid_tokens();
    for _ in 0..5_000 {
        let mut d = tokens[rng.below(tokens.len() as u64) as usize].clone();
        if rng.below(8) != 0 {
            mutate(&mut rng, &mut d);
        }
        fuzz::connect_token(&d);
    }
    let scripts = reassembly_scripts();
    for _ in 0..5_000 {
        let mut d = scripts[rng.below(scripts.len() as u64) as usize].clone();
        if rng.below(4) == 0 {
            d = (0..rng.below(600)).map(|_| rng.next_u32() as u8).collect();
        }
        mutate(&mut rng, &mut d);
        fuzz::reassembly(&d);
    }
    for _ in 0..1_000 {
        let n = 1 + rng.below(20) as usize;
        let datagrams: Vec<_> = (0..n)
            .map(|_| {
                let mut d = valid[rng.below(valid.len() as u64) as usize].clone();
                mutate(&mut rng, &mut d);
                d
            })
            .collect();
        fuzz::session(&session_input(&datagrams, rng.below(50) as u8));
    }
}

/// Writes the seed corpus: `cargo test --features test-util --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes files; run by hand to refresh the seed corpus"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let valid = valid_datagrams();
    let dir = root.join("decode_datagram");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in valid.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
    }
    let dir = root.join("rpc_frame");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in valid_rpc_frames().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
    }
    let dir = root.join("reference");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in valid_references().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
    }
    let dir = root.join("reassembly");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in reassembly_scripts().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
    }
    let dir = root.join("connect_token");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in valid_tokens().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
    }
    let dir = root.join("session");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, step) in [0u8, 1, 20, 200, 255].into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), session_input(&valid, step)).unwrap();
    }
}
