use super::*;

fn call(key: GrainKey, deadline: Option<u32>) -> CallHeader {
    CallHeader {
        type_index: 3,
        version: 2,
        method: MethodId(0xbeef),
        deadline_ms: deadline,
        key,
        chain: Vec::new(),
    }
}

#[test]
fn frames_round_trip() {
    let id = RequestId { slot: 300, generation: 0x1_2345 };
    let wire_id = RequestId { slot: 300, generation: 0x2345 };
    let keys = [
        GrainKey::Int(-5),
        GrainKey::Str("alice".into()),
        GrainKey::Id(u128::MAX - 3),
        GrainKey::IntExt(i64::MIN, "x".into()),
        GrainKey::IdExt(9, "".into()),
    ];
    for key in keys {
        for deadline in [None, Some(5000)] {
            let c = call(key.clone(), deadline);
            let mut out = Vec::new();
            encode_call(&mut out, Some(id), &c);
            out.extend_from_slice(b"args");
            assert_eq!(
                decode_rpc(&out),
                Ok(RpcFrame::Request { id: wire_id, call: c.clone(), args: b"args" })
            );
            // The split form (body first, id later) encodes the same bytes.
            let mut body = Vec::new();
            let flags = encode_request_body(&mut body, &c);
            let mut split = vec![0u8; request_prefix_len(Some(id), c.type_index)];
            encode_request_prefix(&mut split, Some(id), c.type_index, flags);
            split.extend_from_slice(&body);
            split.extend_from_slice(b"args");
            assert_eq!(split, out);
            out.clear();
            encode_call(&mut out, None, &c);
            // And a one-way call's.
            let mut split = vec![0u8; request_prefix_len(None, c.type_index)];
            encode_request_prefix(&mut split, None, c.type_index, flags);
            split.extend_from_slice(&body);
            assert_eq!(split, out);
            assert_eq!(decode_rpc(&out), Ok(RpcFrame::OneWay { call: c, args: b"" }));
        }
    }
    let mut out = Vec::new();
    encode_cancel(&mut out, id);
    assert_eq!(decode_rpc(&out), Ok(RpcFrame::Cancel { id: wire_id }));
    out.clear();
    encode_response(&mut out, id, Status::HandlerPanicked);
    out.push(7);
    assert_eq!(
        decode_rpc(&out),
        Ok(RpcFrame::Response { id: wire_id, status: Status::HandlerPanicked, payload: &[7] })
    );
    out.clear();
    encode_manifest_head(&mut out);
    out.push(1);
    assert_eq!(decode_rpc(&out), Ok(RpcFrame::Manifest(&[1])));
    out.clear();
    encode_topology_head(&mut out);
    out.push(2);
    assert_eq!(decode_rpc(&out), Ok(RpcFrame::Topology(&[2])));
    for subscribe in [false, true] {
        out.clear();
        encode_watch(&mut out, subscribe);
        assert_eq!(decode_rpc(&out), Ok(RpcFrame::Watch { subscribe }));
        out.push(0);
        assert!(decode_rpc(&out).is_err(), "a watch frame has nothing after its head");
    }
    assert!(decode_rpc(&[KIND_WATCH | 0x10]).is_err(), "reserved bits");
    // Extended frames: any sub-kind decodes (a peer skips one it does not know).
    for kind in [0, 1, 300, u32::MAX] {
        out.clear();
        encode_extended(&mut out, kind, b"later");
        assert_eq!(decode_rpc(&out), Ok(RpcFrame::Extended { kind, body: b"later" }));
    }
    assert!(decode_rpc(&[KIND_EXTENDED | 0x08, 1]).is_err(), "reserved bits");
    assert!(decode_rpc(&[KIND_EXTENDED]).is_err(), "no sub-kind");
}

#[test]
fn redirects_name_the_owner_and_bad_ones_are_typed_errors() {
    let mut out = Vec::new();
    encode_redirect(&mut out, "eu-2", "10.0.0.2:7000");
    let (s, e) = decode_redirect(&out).unwrap();
    assert_eq!((&*s, &*e), ("eu-2", "10.0.0.2:7000"));
    assert!(decode_redirect(&out[..out.len() - 1]).is_err());
    assert!(decode_redirect(&[0xff, 0x01]).is_err(), "too long");
    assert!(decode_redirect(&[1, 0xff, 0]).is_err(), "not utf-8");
    let long = "é".repeat(200);
    out.clear();
    encode_redirect(&mut out, &long, "x:1");
    let (s, _) = decode_redirect(&out).unwrap();
    assert!(s.len() <= MAX_REDIRECT_NAME && long.starts_with(&*s), "cut at a char boundary");
}

#[test]
fn a_retry_carries_a_new_deadline_and_the_rest_unchanged() {
    let c = call(GrainKey::Str("ann".into()), Some(5000));
    let mut body = Vec::new();
    let flags = encode_request_body(&mut body, &c);
    body.extend_from_slice(b"args");
    let mut again = Vec::new();
    rewrite_body_deadline(&mut again, &body, flags, 120).unwrap();
    let mut frame = vec![0u8; request_prefix_len(None, 3)];
    encode_request_prefix(&mut frame, None, 3, flags);
    frame.extend_from_slice(&again);
    let want = CallHeader { deadline_ms: Some(120), ..c };
    assert_eq!(decode_rpc(&frame), Ok(RpcFrame::OneWay { call: want, args: b"args" }));
    let no_deadline = call(GrainKey::Int(1), None);
    let mut body = Vec::new();
    let flags = encode_request_body(&mut body, &no_deadline);
    assert_eq!(rewrite_body_deadline(&mut Vec::new(), &body, flags, 1), None);
}

#[test]
fn a_32_byte_call_is_compact() {
    let c = CallHeader {
        type_index: 0,
        version: 1,
        method: MethodId(7),
        deadline_ms: Some(5000),
        key: GrainKey::Int(42),
        chain: Vec::new(),
    };
    let mut out = Vec::new();
    encode_call(&mut out, Some(RequestId { slot: 3, generation: 9 }), &c);
    assert_eq!(
        out.len(),
        1 + 3 + 1 + 1 + 2 + 2 + 1,
        "head, id, type, version, method, deadline, key"
    );
}

#[test]
fn malformed_frames_are_typed_errors() {
    let long_key = {
        let mut v = vec![KIND_ONE_WAY | (1 << KEY_SHIFT), 0, 1, 0, 0];
        put_varint(&mut v, 5000);
        v
    };
    let cases: &[(&[u8], &str)] = &[
        (&[], "empty"),
        (&[0], "kind 0"),
        (&[7, 0], "watch with trailing bytes"),
        (&[KIND_TOPOLOGY | 8], "topology flags"),
        (&[KIND_REQUEST], "truncated id"),
        (&[KIND_REQUEST | 0x80, 0, 0, 0], "reserved bit"),
        (&[KIND_ONE_WAY | (5 << KEY_SHIFT), 0, 1, 0, 0], "key kind 5"),
        (&long_key, "key string too long"),
        (&[KIND_ONE_WAY | (1 << KEY_SHIFT), 0, 1, 0, 0, 2, 0xff, 0xfe], "key not utf-8"),
        (&[KIND_CANCEL, 1, 0, 0, 9], "cancel with trailing bytes"),
        (&[KIND_CANCEL | 8, 1, 0, 0], "cancel flags"),
        (&[KIND_RESPONSE | (31 << STATUS_SHIFT), 1, 0, 0], "unknown status"),
        (&[KIND_MANIFEST | 8], "manifest flags"),
    ];
    for (bytes, what) in cases {
        assert!(decode_rpc(bytes).is_err(), "{what}: {bytes:?}");
    }
}

#[test]
fn a_request_that_does_not_decode_still_names_its_id() {
    let id = RequestId { slot: 70_000, generation: 3 };
    let mut out = Vec::new();
    encode_call(&mut out, Some(id), &call(GrainKey::Int(1), None));
    let bad_key = {
        let mut v = out.clone();
        v[0] = (v[0] & !(0x7 << KEY_SHIFT)) | (7 << KEY_SHIFT);
        v
    };
    assert!(decode_rpc(&bad_key).is_err());
    assert_eq!(request_id(&bad_key), Some(id));
    assert_eq!(request_id(&out[..2]), None, "the id itself is cut short");
    let mut one_way = Vec::new();
    encode_call(&mut one_way, None, &call(GrainKey::Int(1), None));
    assert_eq!(request_id(&one_way), None, "a one-way call has no id to answer");
    let mut p = Vec::new();
    encode_too_large(&mut p, 5 << 20, 1 << 20);
    assert_eq!(decode_too_large(&p), Some((5 << 20, 1 << 20)));
    assert_eq!(decode_too_large(&p[..1]), None);
}

#[test]
fn updates_round_trip_in_place_and_bad_ones_are_typed_errors() {
    let c = call(GrainKey::Str("ann".into()), None);
    for seq in [1u64, 300, u64::MAX] {
        // Whole, and as the sender writes it: body first, prefix in front.
        let mut whole = Vec::new();
        encode_update(&mut whole, seq, &c);
        whole.extend_from_slice(b"\x01\x02");
        let mut body = Vec::new();
        let flags = encode_request_body(&mut body, &c);
        let n = update_prefix_len(seq, c.type_index);
        let mut in_place = vec![0; n];
        encode_update_prefix(&mut in_place, seq, c.type_index, flags);
        in_place.extend_from_slice(&body);
        in_place.extend_from_slice(b"\x01\x02");
        assert_eq!(in_place, whole);
        let Ok(RpcFrame::Extended { kind: EXT_UPDATE, body }) = decode_rpc(&whole) else {
            panic!("an update is an extended frame")
        };
        assert_eq!(decode_update(body), Ok((seq, c.clone(), &b"\x01\x02"[..])));
    }
    // Not a one-way call inside, or cut short: typed errors.
    let mut request = vec![5];
    encode_call(&mut request, Some(RequestId { slot: 1, generation: 1 }), &c);
    assert!(decode_update(&request).is_err());
    assert!(decode_update(&[0x80]).is_err());
    assert!(decode_update(&[]).is_err());
}

#[test]
fn stream_frames_round_trip_and_bad_ones_are_typed_errors() {
    let id = RequestId { slot: 7, generation: 9 };
    let c = call(GrainKey::Int(4), None);
    // An open: prefix written in place in front of the request's body.
    let mut body = Vec::new();
    let flags = encode_request_body(&mut body, &c);
    let mut frame = vec![0u8; stream_open_prefix_len(id, c.type_index, 1024)];
    encode_stream_open_prefix(&mut frame, id, c.type_index, flags, 1024, 42);
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"args");
    let Ok(RpcFrame::Extended { kind: EXT_STREAM_OPEN, body }) = decode_rpc(&frame) else {
        panic!("an extended frame")
    };
    let open = decode_stream_open(body).unwrap();
    assert_eq!(
        (open.window, open.lane, open.id, &open.call, open.args),
        (1024, 42, id, &c, &b"args"[..])
    );
    // A window of 0 or over the bound, or a one-way call inside, is refused.
    for window in [0, MAX_STREAM_WINDOW + 1] {
        let mut bad = Vec::new();
        put_varint(&mut bad, window.into());
        bad.push(0);
        encode_call(&mut bad, Some(id), &c);
        assert!(decode_stream_open(&bad).is_err(), "window {window}");
    }
    let mut one_way = vec![8, 0];
    encode_call(&mut one_way, None, &c);
    assert!(decode_stream_open(&one_way).is_err());

    // Items: three of them, read back in order.
    let mut items = Vec::new();
    encode_stream_items_head(&mut items, id);
    for item in [&b"a"[..], b"", b"xyz"] {
        put_stream_item(&mut items, item);
    }
    let Ok(RpcFrame::Extended { kind: EXT_STREAM_ITEMS, body }) = decode_rpc(&items) else {
        panic!("an items frame")
    };
    let (got, list) = decode_stream_items(body).unwrap();
    assert_eq!((got, list.count), (id, 3));
    let mut rest = list.bytes();
    let read: Vec<&[u8]> = (0..3).map(|_| next_stream_item(&mut rest).unwrap()).collect();
    assert_eq!(read, [&b"a"[..], b"", b"xyz"]);
    // An item longer than the frame, or no item at all, is refused.
    let mut short = Vec::new();
    put_id(&mut short, id);
    assert!(decode_stream_items(&short).is_err(), "no items");
    short.extend_from_slice(&[10, 1, 2]);
    assert!(decode_stream_items(&short).is_err(), "an item past the end");

    // Credit.
    let mut credit = Vec::new();
    encode_stream_credit(&mut credit, id, 512);
    let Ok(RpcFrame::Extended { kind: EXT_STREAM_CREDIT, body }) = decode_rpc(&credit) else {
        panic!("a credit frame")
    };
    assert_eq!(decode_stream_credit(body), Ok((id, 512)));
    let mut trailing = body.to_vec();
    trailing.push(0);
    assert!(decode_stream_credit(&trailing).is_err());
}
