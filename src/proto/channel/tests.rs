//! Channel scripts on a manual clock: loss recovery, packing, windows and credit.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::proto::wire;

const MS: Duration = Duration::from_millis(1);
const TAG: u32 = 5;

fn cfg() -> TransportConfig {
    TransportConfig::default()
}

fn pair(cfg: &TransportConfig, now: Instant) -> (Channel, Channel) {
    (Channel::new(cfg, cfg.receive_window, now), Channel::new(cfg, cfg.receive_window, now))
}

/// Everything `from` wants to send now.
fn transmit(from: &mut Channel, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while from.write_packet(now, TAG, &mut buf, false, None) {
        out.push(buf.clone());
    }
    out
}

/// Delivers datagrams to `to`; returns the messages it produced.
fn receive(to: &mut Channel, now: Instant, datagrams: &[Vec<u8>]) -> Vec<Bytes> {
    let mut got = Vec::new();
    for d in datagrams {
        let Ok(wire::Packet::Data(h, frames)) = wire::decode_packet(d) else { panic!("not data") };
        let mut dg = Datagram::new(d);
        to.handle_packet(now, h.pn_truncated, h.pn_len, frames, &mut dg, &mut |m| {
            got.push(m.payload)
        })
        .unwrap();
    }
    got
}

#[test]
fn small_messages_share_datagrams() {
    let now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    for i in 0..200u8 {
        a.send(Class::ReliableOrdered, 0, Bytes::from(vec![i; 10])).unwrap();
    }
    let sent = transmit(&mut a, now);
    assert!(sent.len() <= 3, "{} datagrams for 200 x 10 bytes", sent.len());
    assert!(sent.iter().all(|d| d.len() <= 1200));
    let got = receive(&mut b, now, &sent);
    assert_eq!(got.len(), 200);
    assert!(got.iter().enumerate().all(|(i, m)| m[..] == [i as u8; 10]));
}

#[test]
fn a_gap_is_repaired_by_fast_retransmit_before_any_timer() {
    let now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    for i in 0..6u8 {
        a.send(Class::ReliableOrdered, 0, Bytes::from(vec![i; 1000])).unwrap();
    }
    let sent = transmit(&mut a, now);
    assert_eq!(sent.len(), 6, "one 1000-byte message per datagram");
    let t1 = now + 10 * MS;
    // Datagram 1 is lost; the receiver holds 2..5 back for order and acks the gap at once.
    let got = receive(
        &mut b,
        t1,
        &[sent[0].clone(), sent[2].clone(), sent[3].clone(), sent[4].clone(), sent[5].clone()],
    );
    assert_eq!(got.len(), 1);
    let acks = transmit(&mut b, t1);
    assert!(!acks.is_empty(), "a gap is acknowledged without delay");
    let t2 = t1 + 10 * MS;
    assert!(receive(&mut a, t2, &acks).is_empty());
    // Three later packets were acked: packet 1 is lost, resent now, long before the RTO.
    let resent = transmit(&mut a, t2);
    assert_eq!(resent.len(), 1);
    assert_eq!(a.stats().retransmissions, 1);
    let got = receive(&mut b, t2 + 10 * MS, &resent);
    assert_eq!(got.iter().map(|m| m[0]).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_lost_tail_is_resent_by_the_timer_with_backoff() {
    let now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    a.set_initial_rtt(20 * MS);
    a.send(Class::ReliableUnordered, 0, Bytes::from_static(b"tail")).unwrap();
    assert_eq!(transmit(&mut a, now).len(), 1); // lost
    let rto = a.next_timeout().expect("timer armed");
    assert!(rto > now && rto <= now + 100 * MS, "{:?}", rto - now);
    assert!(transmit(&mut a, rto - MS).is_empty(), "nothing before the timer");
    a.handle_timeout(rto);
    let again = transmit(&mut a, rto);
    assert_eq!(again.len(), 1); // lost again
    let rto2 = a.next_timeout().unwrap();
    assert!(
        rto2 - rto >= (rto - now) * 2 - MS,
        "backoff doubles: {:?} then {:?}",
        rto - now,
        rto2 - rto
    );
    a.handle_timeout(rto2);
    let third = transmit(&mut a, rto2);
    assert_eq!(receive(&mut b, rto2 + 10 * MS, &third), vec![Bytes::from_static(b"tail")]);
    assert_eq!(a.stats().packets_lost, 2);
}

#[test]
fn the_congestion_window_bounds_bytes_in_flight() {
    let now = crate::test_epoch();
    let c = TransportConfig { initial_window_packets: 4, ..cfg() };
    let (mut a, _) = pair(&c, now);
    for _ in 0..100 {
        a.send(Class::ReliableOrdered, 0, Bytes::from(vec![0; 1000])).unwrap();
    }
    let sent = transmit(&mut a, now);
    assert_eq!(sent.len(), 4);
    assert!(a.stats().bytes_in_flight <= 4 * 1200);
}

#[test]
fn credit_stops_the_sender_and_max_data_resumes_it() {
    let now = crate::test_epoch();
    let c = TransportConfig { max_message_size: 2000, receive_window: 4000, ..cfg() };
    let (mut a, mut b) = pair(&c, now);
    for i in 0..20u8 {
        a.send(Class::ReliableOrdered, 0, Bytes::from(vec![i; 900])).unwrap();
    }
    let first = transmit(&mut a, now);
    // 4000 bytes of credit at 900 + 64 per message: four messages.
    let got = receive(&mut b, now, &first);
    assert_eq!(got.len(), 4);
    let mut t = now;
    let mut total = got.len();
    for _ in 0..50 {
        t += 5 * MS;
        b.handle_timeout(t);
        let back = transmit(&mut b, t);
        receive(&mut a, t, &back);
        let more = transmit(&mut a, t);
        total += receive(&mut b, t, &more).len();
        if total == 20 {
            break;
        }
    }
    assert_eq!(total, 20, "credit came back as messages were delivered");
}

#[test]
fn chunked_messages_survive_reordering_and_duplication() {
    let now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    a.send(Class::ReliableOrdered, 4, Bytes::from(big.clone())).unwrap();
    let mut sent = transmit(&mut a, now);
    assert!(sent.len() >= 18);
    sent.reverse();
    let dup = sent[3].clone();
    sent.push(dup);
    let got = receive(&mut b, now, &sent);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][..], big[..]);
    assert_eq!(b.stats().duplicates, 1);
}

#[test]
fn acks_stop_repeating_once_the_peer_saw_them() {
    let now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    a.send(Class::ReliableOrdered, 0, Bytes::from_static(b"x")).unwrap();
    receive(&mut b, now, &transmit(&mut a, now));
    b.send(Class::ReliableOrdered, 0, Bytes::from_static(b"y")).unwrap();
    let with_ack = transmit(&mut b, now);
    receive(&mut a, now, &with_ack);
    // a acks b's packet (which carried b's ack); once b sees that, b stops re-acking.
    let acked = now + cfg().max_ack_delay;
    a.handle_timeout(acked);
    receive(&mut b, acked, &transmit(&mut a, acked));
    b.send(Class::ReliableOrdered, 0, Bytes::from_static(b"z")).unwrap();
    let later = transmit(&mut b, acked + MS);
    let frames: Vec<_> = later
        .iter()
        .flat_map(|d| {
            let Ok(wire::Packet::Data(_, f)) = wire::decode_packet(d) else { panic!() };
            FrameReader::new(f).map(|f| matches!(f, Ok(Frame::Ack(_)))).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(frames, vec![false], "only the message, no stale ack");
}

/// A `MAX_DATA` that reached the peer but whose packet the receiver declared lost (the peer's
/// acks were lost): the peer may use the credit it saw, and the receiver must not call that a
/// violation. (It did: it lowered its limit back to the last acknowledged one.)
#[test]
fn credit_seen_by_the_peer_stays_granted_when_its_packet_is_declared_lost() {
    let now = crate::test_epoch();
    let c = TransportConfig { max_message_size: 2000, receive_window: 4000, ..cfg() };
    let (mut a, mut b) = pair(&c, now);
    for i in 0..8u8 {
        a.send(Class::ReliableOrdered, 0, Bytes::from(vec![i; 900])).unwrap();
    }
    let got = receive(&mut b, now, &transmit(&mut a, now));
    assert_eq!(got.len(), 4, "the first window's worth");
    // b grants more credit (its acks and MAX_DATA reach a), but a's acks of that packet are
    // lost: b's retransmission timer declares it lost.
    let t = now + 5 * MS;
    b.handle_timeout(t);
    let grant = transmit(&mut b, t);
    assert!(!grant.is_empty());
    receive(&mut a, t, &grant);
    let later = t + Duration::from_secs(3);
    b.handle_timeout(later);
    // a sends with the credit it saw: accepted, not a violation.
    let more = transmit(&mut a, later);
    let mut dg_got = 0;
    for d in &more {
        let Ok(wire::Packet::Data(h, frames)) = wire::decode_packet(d) else { panic!("not data") };
        let mut dg = Datagram::new(d);
        let r =
            b.handle_packet(later, h.pn_truncated, h.pn_len, frames, &mut dg, &mut |_| dg_got += 1);
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(dg_got > 0, "a used the credit it was given");
}

/// A packet overtaken by hundreds of later ones (a sender queuing many small messages, one
/// datagram each, on a reordering network) still expands to its own number when it arrives:
/// with one-byte packet numbers it expanded to a number never sent, the receiver acknowledged
/// that, and the sender closed the session as `AckOfUnsentPacket`.
#[test]
fn a_packet_overtaken_by_hundreds_of_later_ones_keeps_its_number() {
    let mut now = crate::test_epoch();
    let (mut a, mut b) = pair(&cfg(), now);
    a.send(Class::ReliableOrdered, 0, Bytes::from_static(b"first")).unwrap();
    let late = transmit(&mut a, now);
    assert_eq!(late.len(), 1);
    let exchange = |a: &mut Channel, b: &mut Channel, now: Instant| {
        for _ in 0..10 {
            let from_a = transmit(a, now);
            receive(b, now, &from_a);
            let from_b = transmit(b, now);
            receive(a, now, &from_b); // unwraps: a violation fails the test
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
        }
    };
    for i in 0..400u32 {
        now += MS;
        a.send(Class::ReliableOrdered, 0, Bytes::from(i.to_le_bytes().to_vec())).unwrap();
        a.handle_timeout(now);
        b.handle_timeout(now);
        exchange(&mut a, &mut b, now);
    }
    // The overtaken packet arrives at last; the receiver's ack of it is one of a real packet.
    now += MS;
    receive(&mut b, now, &late);
    now += cfg().max_ack_delay;
    a.handle_timeout(now);
    b.handle_timeout(now);
    exchange(&mut a, &mut b, now);
    assert!(b.stats().packets_received >= 401);
}
