//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay and
//! random-input tests that run in `cargo test` (feature `test-util`). Each takes arbitrary
//! bytes and must never panic, loop forever or grow memory without bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TransportConfig;
use crate::proto::channel::Datagram;
use crate::proto::gate::Gate;
use crate::proto::session::Session;
use crate::proto::wire::{self, Frame, FrameReader, Packet};

/// The session tag and client nonce the fuzzed sessions use, so inputs can reach them.
pub const FUZZ_TAG: u32 = 0x0403_0201;
/// See [`FUZZ_TAG`].
pub const FUZZ_NONCE: u32 = 0x0807_0605;

/// Decodes one datagram completely: header, every frame, every ack range.
pub fn decode_datagram(data: &[u8]) {
    let Ok(packet) = wire::decode_packet(data) else { return };
    let Packet::Data(header, frames) = packet else { return };
    for frame in FrameReader::new(frames) {
        let Ok(frame) = frame else { return };
        if let Frame::Ack(a) = frame {
            // Walk the ranges against a few plausible "largest" values.
            for largest in [u64::from(a.largest), u64::from(header.pn_truncated), u64::MAX] {
                for r in a.ranges(largest).take(1000) {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = Datagram::new(data);
}

/// Splits fuzz input into (time step in ms, datagram) pairs: `[step u8][len u8][bytes]…`.
fn steps(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&step, r) = rest.split_first()?;
        let (&len, r) = r.split_first()?;
        let len = (len as usize).min(r.len());
        let (d, r) = r.split_at(len);
        rest = r;
        Some((u64::from(step), d))
    })
}

fn run(mut session: Session, data: &[u8], mut now: Instant) {
    let mut out = Vec::new();
    for (step, d) in steps(data).take(10_000) {
        now += Duration::from_millis(step);
        session.handle_datagram(now, d);
        session.handle_timeout(now);
        let mut sent = 0;
        while session.poll_transmit(now, &mut out) {
            sent += 1;
            assert!(sent < 100_000, "poll_transmit must run dry");
        }
        while session.poll_event().is_some() {}
    }
}

/// Feeds the input, as a sequence of datagrams, to an established server session, a client
/// session in its handshake, and a gate.
pub fn session(data: &[u8]) {
    let now = Instant::now();
    let cfg = Arc::new(TransportConfig {
        max_message_size: 64 << 10,
        receive_window: 256 << 10,
        ..TransportConfig::server()
    });
    // A plain server session, and a protected one (its packets are opened before decoding:
    // the replay window and the tag stand in front of the frames).
    for secrets in [None, Some(fuzz_secrets())] {
        let mut server =
            Session::server(cfg.clone(), FUZZ_NONCE, FUZZ_TAG, 1 << 20, now, secrets.as_ref());
        // Give it something to send, so acks and losses have something to act on.
        for i in 0..4u8 {
            let _ = server.send(wire::Class::ReliableOrdered, i, bytes::Bytes::from(vec![i; 700]));
        }
        run(server, data, now);
    }
    run(Session::client(cfg.clone(), FUZZ_NONCE, now), data, now);
    let from = "127.0.0.1:1".parse().expect("a valid address literal");
    let tokens = || {
        let key = crate::proto::token::TokenKey::new(1, FUZZ_TOKEN_KEY);
        crate::proto::gate::TokenGate::new(
            vec![key],
            vec![crate::proto::addr::ServerAddr::from(from)],
            0,
            64,
        )
    };
    for mut gate in [
        Gate::new((1, 2), now, Duration::from_secs(10), true),
        Gate::new((1, 2), now, Duration::from_secs(10), true).with_tokens(tokens()),
    ] {
        let mut out = Vec::new();
        let mut limiter = crate::proto::gate::HandshakeLimiter::new((3, 4), now, 32);
        for (_, d) in steps(data).take(10_000) {
            let proven = gate.proves(now, from, d);
            let _ = if proven {
                limiter.allow_proven(now, from.ip())
            } else {
                limiter.allow(now, from)
            };
            let verdict = gate.filter(now, from, d, false, false, &mut out);
            // A session that proves its token binds it (as its first authentic packet would).
            if let (crate::proto::gate::Verdict::Admit { client: Some(c), .. }, Some(t)) =
                (verdict, gate.tokens_mut())
            {
                t.prove(c.token_id, c.client_id, c.expires, from, 0);
            }
        }
        assert!(gate.tokens().is_none_or(|t| t.remembered() <= 64), "the replay guard's bound");
    }
}

/// The secrets of the fuzzed protected session.
pub fn fuzz_secrets() -> crate::proto::crypt::Secrets {
    crate::proto::crypt::Secrets { client_to_server: [0x11; 32], server_to_client: [0x22; 32] }
}

/// Decodes one RPC frame (and, inside it, what the server and client decode next: a manifest,
/// a topology, or arguments of a few shapes). A frame that decodes must re-encode to the same frame.
pub fn rpc_frame(data: &[u8]) {
    use crate::proto::manifest::Manifest;
    use crate::proto::wire::rpc::{self, RpcFrame};

    type Shapes = (u64, String, Vec<u8>, Option<(f32, i32)>, Vec<String>);

    let Ok(frame) = rpc::decode_rpc(data) else { return };
    let mut again = Vec::new();
    match &frame {
        RpcFrame::Request { id, call, args } => {
            rpc::encode_call(&mut again, Some(*id), call);
            again.extend_from_slice(args);
            let _ = crate::rpc::dispatch::decode_args::<Shapes>(args);
        }
        RpcFrame::OneWay { call, args } => {
            rpc::encode_call(&mut again, None, call);
            again.extend_from_slice(args);
            let _ = crate::rpc::dispatch::decode_args::<(String,)>(args);
        }
        RpcFrame::Cancel { id } => rpc::encode_cancel(&mut again, *id),
        RpcFrame::Response { id, status, payload } => {
            rpc::encode_response(&mut again, *id, *status);
            again.extend_from_slice(payload);
            if *status == rpc::Status::Deadlock
                && let Ok(chain) = rpc::decode_deadlock(payload)
            {
                let mut back = Vec::new();
                rpc::put_chain(&mut back, &chain, None);
                assert_eq!(rpc::decode_deadlock(&back), Ok(chain), "deadlock chain round trip");
            }
            if *status == rpc::Status::Redirect
                && let Ok((server, endpoint)) = rpc::decode_redirect(payload)
            {
                let mut back = Vec::new();
                rpc::encode_redirect(&mut back, &server, &endpoint);
                assert_eq!(
                    rpc::decode_redirect(&back),
                    Ok((server, endpoint)),
                    "redirect round trip"
                );
            }
        }
        RpcFrame::Manifest(payload) => {
            if let Ok(m) = Manifest::decode(payload) {
                let encoded = m.encode();
                assert_eq!(rpc::decode_rpc(&encoded), Ok(RpcFrame::Manifest(&encoded[1..])));
                assert_eq!(Manifest::decode(&encoded[1..]).as_ref(), Ok(&m), "manifest round trip");
            }
            return;
        }
        RpcFrame::Topology(payload) => {
            if let Ok(t) = crate::proto::topology::Topology::decode(payload) {
                let mut encoded = Vec::new();
                t.encode_into(&mut encoded);
                let back = crate::proto::topology::Topology::decode(&encoded);
                assert_eq!(back.as_ref(), Ok(&t), "topology round trip");
            }
            return;
        }
        RpcFrame::Watch { subscribe } => rpc::encode_watch(&mut again, *subscribe),
        RpcFrame::Extended { kind, body } => {
            if (*kind == rpc::EXT_OBSERVE || *kind == rpc::EXT_UNOBSERVE)
                && let Ok((instance, observers)) = rpc::decode_observe(body)
            {
                let mut back = Vec::new();
                rpc::encode_observe(&mut back, *kind == rpc::EXT_OBSERVE, instance, &observers);
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("an observe frame decodes")
                };
                assert_eq!(
                    rpc::decode_observe(body),
                    Ok((instance, observers)),
                    "observe round trip"
                );
            }
            if *kind == rpc::EXT_UPDATE
                && let Ok((seq, call, args)) = rpc::decode_update(body)
            {
                let mut back = Vec::new();
                rpc::encode_update(&mut back, seq, &call);
                back.extend_from_slice(args);
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("an update frame decodes")
                };
                assert_eq!(rpc::decode_update(body), Ok((seq, call, args)), "update round trip");
            }
            if *kind == rpc::EXT_STREAM_OPEN
                && let Ok(open) = rpc::decode_stream_open(body)
            {
                let mut inner = Vec::new();
                crate::proto::wire::put_varint(&mut inner, open.window.into());
                inner.push(open.lane);
                rpc::encode_call(&mut inner, Some(open.id), &open.call);
                inner.extend_from_slice(open.args);
                let mut back = Vec::new();
                rpc::encode_extended(&mut back, rpc::EXT_STREAM_OPEN, &inner);
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("a stream open decodes")
                };
                assert_eq!(rpc::decode_stream_open(body), Ok(open), "stream open round trip");
            }
            if *kind == rpc::EXT_ONCE
                && let Ok((call_id, id, call, args)) = rpc::decode_once(body)
            {
                let mut inner = call_id.to_le_bytes().to_vec();
                rpc::encode_call(&mut inner, Some(id), &call);
                inner.extend_from_slice(args);
                let mut back = Vec::new();
                rpc::encode_extended(&mut back, rpc::EXT_ONCE, &inner);
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("a once frame decodes")
                };
                assert_eq!(
                    rpc::decode_once(body),
                    Ok((call_id, id, call, args)),
                    "once round trip"
                );
            }
            if *kind == rpc::EXT_STREAM_ITEMS
                && let Ok((id, items)) = rpc::decode_stream_items(body)
            {
                let mut back = Vec::new();
                rpc::encode_stream_items_head(&mut back, id);
                let mut rest = items.bytes();
                for _ in 0..items.count {
                    let item = rpc::next_stream_item(&mut rest).expect("checked items read");
                    rpc::put_stream_item(&mut back, item);
                }
                assert!(rest.is_empty(), "every item read");
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("an items frame decodes")
                };
                assert_eq!(rpc::decode_stream_items(body), Ok((id, items)), "items round trip");
            }
            if *kind == rpc::EXT_STREAM_CREDIT
                && let Ok((id, more)) = rpc::decode_stream_credit(body)
            {
                let mut back = Vec::new();
                rpc::encode_stream_credit(&mut back, id, more);
                let Ok(RpcFrame::Extended { body, .. }) = rpc::decode_rpc(&back) else {
                    panic!("a credit frame decodes")
                };
                assert_eq!(rpc::decode_stream_credit(body), Ok((id, more)), "credit round trip");
            }
            rpc::encode_extended(&mut again, *kind, body)
        }
    }
    assert_eq!(rpc::decode_rpc(&again).as_ref(), Ok(&frame), "RPC frame round trip");
}

/// The interface the `reference` target decodes references of.
static FUZZ_METHODS: [crate::interface::MethodInfo; 0] = [];
/// A `Room` interface, as `#[grain]` would describe it.
pub static FUZZ_ROOM: crate::interface::InterfaceInfo = crate::interface::InterfaceInfo {
    name: "Room",
    id: crate::proto::ids::InterfaceId::of("Room"),
    grain_type: crate::proto::ids::GrainType::of("Room"),
    version: 1,
    contract: 0,
    methods: &FUZZ_METHODS,
};

/// An unbound reference to grain `id` through [`FUZZ_ROOM`] (to make seeds).
pub fn reference_of(id: crate::proto::ids::GrainId) -> crate::rpc::reference::GrainRef {
    crate::rpc::reference::GrainRef::bound(crate::rpc::reference::Via::Unbound, &FUZZ_ROOM, id)
}

/// Decodes arbitrary bytes as a reference (the compact surrogate, then JSON): one that decodes
/// must be unbound (nothing here can call it) and encode to bytes that decode to it again.
pub fn reference(data: &[u8]) {
    use crate::rpc::value::deserialize_ref;
    let mut d = postcard::Deserializer::from_bytes(data);
    if let Ok(r) = deserialize_ref(&FUZZ_ROOM, &mut d) {
        assert!(!r.is_bound());
        let used = data.len() - d.finalize().map_or(0, <[u8]>::len);
        // Its own encoding decodes to it, and is never longer (the decoder also takes
        // overlong varints; the sender's interface version is not kept).
        let again = postcard::to_allocvec(&r).expect("a reference encodes");
        assert!(again.len() <= used, "canonical encoding is the shortest");
        let mut d = postcard::Deserializer::from_bytes(&again);
        let back = deserialize_ref(&FUZZ_ROOM, &mut d).expect("its own encoding decodes");
        assert_eq!((&back, back.id()), (&r, r.id()), "reference round trip");
    }
    let mut d = serde_json::Deserializer::from_slice(data);
    if let Ok(r) = deserialize_ref(&FUZZ_ROOM, &mut d) {
        let json = serde_json::to_vec(&r).expect("a reference encodes");
        let mut d = serde_json::Deserializer::from_slice(&json);
        let back = deserialize_ref(&FUZZ_ROOM, &mut d).expect("its own encoding decodes");
        assert_eq!(back, r, "readable round trip");
    }
}

/// Feeds a script of message chunks to an ordered and an unordered reliable space and to the
/// unreliable classes, as a hostile peer would: any count, index, length and order. Each step
/// is 6 bytes: `[target/flags][seq][count][index][length selector][length]`. Checks what the
/// receive path promises: delivered messages fit `max_message`, what is held stays within the
/// flow-control credit and the unreliable budget, and work stays bounded.
pub fn reassembly(data: &[u8]) {
    use crate::proto::channel::MIN_CHUNK;
    use crate::proto::channel::recv::{Credit, InChunk, RecvReliable, RecvUnreliable};

    let max = 8 * MIN_CHUNK;
    let window = 16 * MIN_CHUNK as u64;
    let body: Vec<u8> = (0..=max).map(|i| i as u8).collect();
    let mut spaces = [RecvReliable::new(true), RecvReliable::new(false)];
    let mut credits = [Credit::new(window), Credit::new(window)];
    let mut broken = [false; 2];
    let mut unreliable = RecvUnreliable::default();
    for step in data.chunks_exact(6).take(20_000) {
        let count = u32::from(step[2] % 16);
        let index = u32::from(step[3] % 16);
        // Mostly lengths a sender would cut, sometimes anything.
        let len = match step[4] % 4 {
            0 => MIN_CHUNK,
            1 => usize::from(step[5]) % (MIN_CHUNK + 1),
            2 => MIN_CHUNK + usize::from(step[5]) % 8,
            _ => usize::from(step[4]) << 2 | usize::from(step[5]),
        }
        .min(body.len());
        let chunk = (step[0] & 0x10 != 0).then_some((index, count));
        let part = &body[..len];
        let mut dg = crate::proto::channel::Datagram::new(part);
        let mut check = |m: bytes::Bytes| assert!(m.len() <= max, "delivered beyond max");
        match step[0] % 3 {
            s @ (0 | 1) => {
                let s = s as usize;
                if broken[s] {
                    continue;
                }
                let c = InChunk { seq16: u64::from(step[1]), chunk, data: part };
                let credit = &mut credits[s];
                if spaces[s].on_chunk(c, &mut dg, 0, max, credit, &mut check).is_err() {
                    broken[s] = true; // the session would close here
                }
                assert!(credits[s].held() <= window + max as u64, "held beyond the credit");
            }
            _ => {
                let sequenced = step[0] & 0x20 != 0;
                let seq = u64::from(step[1]);
                let r =
                    unreliable.on_frame(sequenced, step[0] >> 6, seq, chunk, part, &mut dg, max);
                if let Ok(Some(m)) = r {
                    check(m);
                }
                assert!(unreliable.held() <= 2 * max as u64, "unreliable budget");
            }
        }
    }
}

/// The key the fuzzed tokens are sealed with (id 1), so inputs can reach the sealed part.
pub const FUZZ_TOKEN_KEY: [u8; 32] = [0x5a; 32];

/// Reads arbitrary bytes as a player token and opens them as a connect token (with
/// [`FUZZ_TOKEN_KEY`], at Unix second 1,000); a token that opens must seal and open again to
/// the same token, a player token must write and read back to the same one.
pub fn connect_token(data: &[u8]) {
    use crate::proto::token::{ConnectToken, TokenKey};
    let key = TokenKey::new(1, FUZZ_TOKEN_KEY);
    if let Ok(p) = crate::proto::token::PlayerToken::from_bytes(data) {
        let again = crate::proto::token::PlayerToken::from_bytes(&p.to_bytes());
        assert_eq!(again.as_ref(), Ok(&p), "a player token round trip");
        connect_token(&p.sealed);
    }
    let Ok(t) = ConnectToken::open(data, std::slice::from_ref(&key), 1_000) else { return };
    let sealed = t.seal(&key, [7; 12]).expect("an opened token fits a token");
    assert_eq!(ConnectToken::open(&sealed, &[key], 1_000).as_ref(), Ok(&t), "token round trip");
}
