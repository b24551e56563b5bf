use super::*;

fn chunk(seq: u64, chunk: Option<(u32, u32)>, data: &[u8]) -> InChunk<'_> {
    InChunk { seq16: seq & 0xffff, chunk, data }
}

fn feed_max(
    r: &mut RecvReliable,
    credit: &mut Credit,
    c: InChunk<'_>,
    max: usize,
) -> Result<(Outcome, Vec<Bytes>), ProtocolViolation> {
    let mut out = Vec::new();
    let mut dg = Datagram::new(c.data);
    let (o, _) = r.on_chunk(c, &mut dg, 0, max, credit, &mut |m| out.push(m))?;
    Ok((o, out))
}

fn feed(r: &mut RecvReliable, credit: &mut Credit, c: InChunk<'_>) -> (Outcome, Vec<Bytes>) {
    feed_max(r, credit, c, 1 << 20).unwrap()
}

#[test]
fn ordered_buffers_until_the_gap_fills() {
    let mut r = RecvReliable::new(true);
    let mut credit = Credit::new(1 << 20);
    assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).1, Vec::<Bytes>::new());
    assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).1.len(), 0);
    assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).0, Outcome::Duplicate);
    assert_eq!(credit.held(), 2 * (1 + CHUNK_COST), "held messages keep their credit");
    assert_eq!(credit.memory(), 2 * (1 + ALLOC_OVERHEAD + SLOT_MEMORY), "and their memory");
    let (_, got) = feed(&mut r, &mut credit, chunk(0, None, b"a"));
    assert_eq!(got, vec![&b"a"[..], b"b", b"c"]);
    assert_eq!(feed(&mut r, &mut credit, chunk(0, None, b"a")).0, Outcome::Duplicate);
    assert_eq!(r.buffered(), 0);
    assert_eq!(credit.charged, credit.released, "all delivered, all credit back");
    assert_eq!(credit.memory(), 0, "and all memory");
}

#[test]
fn unordered_delivers_at_once_exactly_once() {
    let mut r = RecvReliable::new(false);
    let mut credit = Credit::new(1 << 20);
    assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).1, vec![&b"c"[..]]);
    assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).0, Outcome::Duplicate);
    assert_eq!(credit.memory(), SLOT_MEMORY, "a marker to drop duplicates");
    assert_eq!(feed(&mut r, &mut credit, chunk(0, None, b"a")).1, vec![&b"a"[..]]);
    assert_eq!(feed(&mut r, &mut credit, chunk(1, None, b"b")).1, vec![&b"b"[..]]);
    assert_eq!(r.buffered(), 0, "markers released once the gap closed");
    assert_eq!(credit.memory(), 0);
    assert_eq!(feed(&mut r, &mut credit, chunk(2, None, b"c")).0, Outcome::Duplicate);
}

/// Three chunks of `MIN_CHUNK` bytes, the last shorter: (data, chunks).
fn message(last: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let data: Vec<u8> = (0..2 * MIN_CHUNK + last).map(|i| i as u8).collect();
    let chunks = data.chunks(MIN_CHUNK).map(<[u8]>::to_vec).collect();
    (data, chunks)
}

#[test]
fn chunks_reassemble_in_index_order_whatever_the_arrival_order() {
    let (data, c) = message(5);
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]] {
        let mut r = RecvReliable::new(true);
        let mut credit = Credit::new(1 << 20);
        let mut got = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            let (o, out) = feed(&mut r, &mut credit, chunk(0, Some((i, 3)), &c[i as usize]));
            assert_eq!(o, Outcome::Accepted);
            if n < 2 {
                let again = feed(&mut r, &mut credit, chunk(0, Some((i, 3)), &c[i as usize]));
                assert_eq!(again.0, Outcome::Duplicate, "{order:?}");
            }
            got.extend(out);
        }
        assert_eq!(got, vec![Bytes::from(data.clone())], "{order:?}");
        assert_eq!(credit.charged, credit.released);
        assert_eq!(credit.memory(), 0, "{order:?}");
    }
}

#[test]
fn chunk_rules_are_enforced() {
    let (_, c) = message(5);
    let bad = |r: &mut RecvReliable, credit: &mut Credit, c: InChunk<'_>, max| {
        feed_max(r, credit, c, max).unwrap_err()
    };
    let mut credit = Credit::new(1 << 30);
    // Empty chunks, short middle chunks, chunks of unequal length, a last chunk longer
    // than the others.
    let mut r = RecvReliable::new(true);
    assert_eq!(bad(&mut r, &mut credit, chunk(0, Some((0, 3)), b""), 1000), BadMessage);
    assert_eq!(bad(&mut r, &mut credit, chunk(1, Some((0, 3)), &[1; 10]), 1000), BadMessage);
    feed_max(&mut r, &mut credit, chunk(2, Some((0, 3)), &c[0]), 1000).unwrap();
    let longer = vec![0; MIN_CHUNK + 1];
    assert_eq!(bad(&mut r, &mut credit, chunk(2, Some((1, 3)), &longer), 1000), BadMessage);
    let mut r = RecvReliable::new(true);
    feed_max(&mut r, &mut credit, chunk(0, Some((2, 3)), &longer), 1000).unwrap();
    assert_eq!(
        bad(&mut r, &mut credit, chunk(0, Some((0, 3)), &c[0]), 1000),
        BadMessage,
        "the last chunk arrived first and is longer than the others"
    );
    // A count that cannot fit the largest message, whatever the chunk sizes.
    let mut r = RecvReliable::new(true);
    let max = 10 * MIN_CHUNK;
    assert_eq!(bad(&mut r, &mut credit, chunk(0, Some((0, 12)), &c[0]), max), BadMessage);
    assert_eq!(bad(&mut r, &mut credit, chunk(0, Some((10, 11)), b"x"), max), BadMessage);
    feed_max(&mut r, &mut credit, chunk(0, Some((9, 10)), b"x"), max).unwrap();
    // Chunks whose length makes the message too large.
    let mut r = RecvReliable::new(true);
    let big = vec![0; 2 * MIN_CHUNK];
    assert_eq!(bad(&mut r, &mut credit, chunk(0, Some((0, 6)), &big), max), BadMessage);
}

use ProtocolViolation::BadMessage;

#[test]
fn violations_are_typed() {
    let mut r = RecvReliable::new(true);
    let mut credit = Credit::new(1 << 20);
    let far = chunk(u64::from(MAX_STREAM_WINDOW), None, b"x");
    assert_eq!(
        feed_max(&mut r, &mut credit, far, 100).unwrap_err(),
        ProtocolViolation::WindowExceeded
    );
    let (_, c) = message(1);
    feed_max(&mut r, &mut credit, chunk(1, Some((0, 2)), &c[0]), 1000).unwrap();
    let wrong_count = chunk(1, Some((1, 3)), &c[1]);
    assert_eq!(feed_max(&mut r, &mut credit, wrong_count, 1000).unwrap_err(), BadMessage);
    let too_big = [0; 200];
    assert_eq!(
        feed_max(&mut r, &mut credit, chunk(2, None, &too_big), 100).unwrap_err(),
        BadMessage
    );
    let mut tight = Credit::new(100);
    let mut r = RecvReliable::new(true);
    assert_eq!(
        feed_max(&mut r, &mut tight, chunk(5, None, &[0; 50]), 1000).unwrap_err(),
        ProtocolViolation::CreditExceeded
    );
}

#[test]
fn a_buffered_message_owns_its_bytes_and_a_delivered_one_may_share() {
    // Two messages in one datagram; the second waits behind a gap.
    let datagram = [1u8, 2, 3, 4, 5, 6];
    let mut r = RecvReliable::new(true);
    let mut credit = Credit::new(1 << 20);
    let mut dg = Datagram::new(&datagram);
    let mut out = Vec::new();
    let first = chunk(0, None, &datagram[..2]);
    r.on_chunk(first, &mut dg, 0, 100, &mut credit, &mut |m| out.push(m)).unwrap();
    let held = chunk(2, None, &datagram[4..]);
    r.on_chunk(held, &mut dg, 0, 100, &mut credit, &mut |m| out.push(m)).unwrap();
    assert!(dg.shared.is_none(), "the held message was copied alone, not the datagram");
    let Some(Slot::Complete(b, _)) = r.slots.get(&2) else { panic!("held") };
    assert_eq!(&b[..], &[5, 6]);
    let next = chunk(1, None, &datagram[2..4]);
    r.on_chunk(next, &mut dg, 0, 100, &mut credit, &mut |m| out.push(m)).unwrap();
    assert_eq!(out, vec![&[1u8, 2][..], &[3, 4], &[5, 6]]);
}

#[test]
fn reassembly_costs_constant_work_per_chunk() {
    // The worst order for a sorted insert: descending. 5,000 chunks must reassemble with
    // work proportional to their number (counted: each is moved at most twice).
    let n = 5000u32;
    let max = n as usize * MIN_CHUNK;
    let mut r = Reassembly::new(n, max).unwrap();
    let body = vec![7u8; MIN_CHUNK];
    for i in (0..n).rev() {
        assert!(r.add(i, n, &body, max).unwrap());
        assert!(r.ahead.len() <= (n - i) as usize);
    }
    assert!(r.is_complete());
    assert!(r.ahead.is_empty());
    assert_eq!(r.assemble().len(), max);
}

#[test]
fn stale_floor_rises_every_period() {
    let mut r = RecvReliable::new(false);
    let mut credit = Credit::new(u64::MAX / 2);
    let mut floors = Vec::new();
    for i in 0..(3 * STALE_PERIOD) {
        let c = chunk(i, None, b"x");
        let mut dg = Datagram::new(b"x");
        let (_, f) = r.on_chunk(c, &mut dg, 1000 + i, 10, &mut credit, &mut |_| {}).unwrap();
        floors.extend(f);
    }
    assert_eq!(floors, vec![0, 1000 + STALE_PERIOD - 1, 1000 + 2 * STALE_PERIOD - 1]);
}

fn unrel(
    u: &mut RecvUnreliable,
    sequenced: bool,
    stream: u8,
    seq: u64,
    chunk: Option<(u32, u32)>,
    data: &[u8],
) -> Result<Option<Bytes>, ProtocolViolation> {
    let mut dg = Datagram::new(data);
    u.on_frame(sequenced, stream, seq, chunk, data, &mut dg, 100 * MIN_CHUNK)
}

#[test]
fn sequenced_latest_wins_and_partials_are_bounded() {
    let mut u = RecvUnreliable::default();
    let d = |s: &'static [u8]| Bytes::from_static(s);
    assert_eq!(unrel(&mut u, true, 0, 5, None, b"5").unwrap(), Some(d(b"5")));
    assert_eq!(unrel(&mut u, true, 0, 3, None, b"3").unwrap(), None);
    assert_eq!(
        unrel(&mut u, true, 1, 3, None, b"3").unwrap(),
        Some(d(b"3")),
        "streams are independent"
    );
    let (data, c) = message(1);
    assert_eq!(unrel(&mut u, true, 0, 6, Some((0, 3)), &c[0]).unwrap(), None);
    assert_eq!(unrel(&mut u, true, 0, 7, None, b"7").unwrap(), Some(d(b"7")));
    assert!(u.partials.is_empty(), "an older partial is dropped once a newer message is delivered");
    assert_eq!(u.held(), 0);
    for id in 0..100 {
        unrel(&mut u, false, 0, id, Some((0, 3)), &c[0]).unwrap();
    }
    assert_eq!(u.partials.len(), MAX_UNRELIABLE_PARTIALS);
    assert_eq!(u.held(), MAX_UNRELIABLE_PARTIALS as u64 * (MIN_CHUNK as u64 + CHUNK_COST));
    let each = u.memory() / MAX_UNRELIABLE_PARTIALS as u64;
    assert!(each > MIN_CHUNK as u64 + CHUNK_COST, "memory counts what a partial really holds");
    assert_eq!(unrel(&mut u, false, 0, 99, Some((1, 3)), &c[1]).unwrap(), None);
    assert_eq!(unrel(&mut u, false, 0, 99, Some((2, 3)), &c[2]).unwrap(), Some(data.into()));
    assert_eq!(u.partials.len(), MAX_UNRELIABLE_PARTIALS - 1);
    assert_eq!(
        unrel(&mut u, true, 2, u64::MAX, None, b"x").unwrap_err(),
        BadMessage,
        "no sequence number follows the last one"
    );
    assert_eq!(unrel(&mut u, true, 2, u64::MAX - 1, None, b"x").unwrap(), Some(d(b"x")));
    assert_eq!(unrel(&mut u, false, 0, 200, Some((0, 2)), b"").unwrap_err(), BadMessage);
}
