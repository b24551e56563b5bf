//! Handshake packets and the data packet header.

use super::WireError;
use super::codec::{Reader, put_uint, put_varint};
use crate::proto::token::MAX_TOKEN_SIZE;

/// The first four bytes of every handshake packet. The first byte has its high bit clear, which
/// is what tells handshake packets from data packets.
pub const MAGIC: [u8; 4] = *b"GWIR";
/// The protocol version this build speaks.
pub const VERSION: u8 = 2;
/// A `HELLO` is padded to at least this many bytes, so that no server answer is larger than the
/// request that caused it: a spoofed `HELLO` cannot be used to amplify traffic.
pub const HELLO_LEN: usize = 32;
/// The length of a `RESET`. A gate answers a stranger's data packet with one only if the packet
/// is at least this long (no amplification), so every ack-eliciting data packet is padded to it:
/// a keepalive that outlived the server's restart still earns the `RESET` that ends it at once.
pub const RESET_LEN: usize = 10;

const KIND_HELLO: u8 = 1;
const KIND_CHALLENGE: u8 = 2;
const KIND_CONNECT: u8 = 3;
const KIND_ACCEPT: u8 = 4;
const KIND_REJECT: u8 = 5;
const KIND_RESET: u8 = 6;

const DATA_BIT: u8 = 0x80;
const PN_LEN_SHIFT: u8 = 4;
const DATA_RESERVED: u8 = 0x4f;

/// A stateless cookie: the server's coarse clock and a keyed MAC over the client's address,
/// nonce and that clock. The server keeps nothing until a client echoes a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie {
    /// Seconds on the server's cookie clock when it was issued.
    pub time: u32,
    /// SipHash-2-4 of (address, nonce, time) under the server secret.
    pub mac: u64,
}

/// Why a server refused a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client speaks another protocol version; `supported` is the server's.
    VersionMismatch {
        /// The version the server speaks.
        supported: u8,
    },
    /// The server is at its connection limit.
    ServerFull,
    /// The endpoint does not accept incoming connections.
    NotAccepting,
    /// The client's address (its IPv4 address, or its IPv6 /64) holds as many sessions as the
    /// server allows one address.
    TooManyFromAddress,
    /// The server requires a connect token and the client presented none.
    TokenRequired,
    /// The server runs without keys (a trusted network) and refuses a token it cannot verify
    /// (so that a client expecting protection never gets a plain session).
    TokensNotAccepted,
    /// The token is not a token.
    BadToken,
    /// The token is sealed with a key the server does not hold (or does not open with it).
    WrongKey,
    /// The token expired.
    TokenExpired,
    /// The token does not name this server.
    NotInToken,
    /// The token already opened a session from another address (sent by servers before issue
    /// 19 only; kept so that their clients decode it).
    TokenReused,
    /// The server's application refused the client, with its code.
    Application {
        /// The application's reason.
        code: u16,
    },
    /// The client is of another cluster or service than the server.
    WrongCluster,
}

/// The body of a handshake packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake<'a> {
    /// Client → server: "I want a session". Padded to [`HELLO_LEN`].
    Hello {
        /// The client's nonce for this connection attempt (its session epoch).
        nonce: u32,
    },
    /// Server → client, stateless: "echo this cookie".
    Challenge {
        /// The nonce of the `HELLO` being answered.
        nonce: u32,
        /// The cookie to echo.
        cookie: Cookie,
    },
    /// Client → server: the echoed cookie; the server creates state only now.
    Connect {
        /// The client's nonce.
        nonce: u32,
        /// The echoed cookie.
        cookie: Cookie,
        /// The client's receive window in bytes (flow-control credit for the server).
        window: u64,
        /// The cluster and service the client is of ([`cluster_tag`](crate::proto::ids::cluster_tag);
        /// 0: unsaid). A server of another refuses it.
        cluster: u64,
        /// The sealed connect token (empty: none). At most `MAX_TOKEN_SIZE` bytes.
        token: &'a [u8],
    },
    /// Server → client: the session is established.
    Accept {
        /// The client's nonce.
        nonce: u32,
        /// The session tag every data packet of this session carries.
        tag: u32,
        /// The server's receive window in bytes.
        window: u64,
        /// For a session opened with a token: proof that the server holds its secrets (see
        /// [`crate::proto::crypt`]).
        proof: Option<[u8; 16]>,
    },
    /// Server → client: refused.
    Reject {
        /// The client's nonce.
        nonce: u32,
        /// Why.
        reason: RejectReason,
    },
    /// "I have no session with that tag": sent statelessly in answer to a data packet from an
    /// unknown address, so that a peer of a restarted or forgotten session learns it at once.
    Reset {
        /// The tag of the data packet being answered.
        tag: u32,
    },
}

/// A decoded handshake packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakePacket<'a> {
    /// The sender's protocol version. Only `HELLO` and `REJECT` are decoded for versions other
    /// than [`VERSION`]; their layout is frozen.
    pub version: u8,
    /// The body.
    pub body: Handshake<'a>,
}

/// The header of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// The session tag.
    pub tag: u32,
    /// The packet number's low bytes.
    pub pn_truncated: u32,
    /// How many bytes of the packet number were sent (1, 2 or 4).
    pub pn_len: u8,
}

/// A decoded datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A handshake packet.
    Handshake(HandshakePacket<'a>),
    /// A data packet: its header and the undecoded frames (read them with
    /// [`FrameReader`](super::FrameReader)).
    Data(DataHeader, &'a [u8]),
}

/// Whether a datagram is a data packet (judged by its first byte only).
pub fn is_data(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & DATA_BIT != 0)
}

/// Decodes a datagram's header. Data frames are decoded lazily by
/// [`FrameReader`](super::FrameReader).
pub fn decode_packet(buf: &[u8]) -> Result<Packet<'_>, WireError> {
    let first = *buf.first().ok_or(WireError::Empty)?;
    let mut r = Reader::new(buf);
    if first & DATA_BIT != 0 {
        let flags = r.u8()?;
        if flags & DATA_RESERVED != 0 {
            return Err(WireError::ReservedBits(flags));
        }
        let pn_len = match (flags >> PN_LEN_SHIFT) & 0x3 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return Err(WireError::ReservedBits(flags)),
        };
        let tag = r.u32()?;
        let pn_truncated = r.uint(pn_len)?;
        let frames = r.rest();
        if frames.is_empty() {
            return Err(WireError::NoFrames);
        }
        return Ok(Packet::Data(DataHeader { tag, pn_truncated, pn_len: pn_len as u8 }, frames));
    }
    if r.bytes(4)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u8()?;
    let kind = r.u8()?;
    let body = match (kind, version == VERSION) {
        (KIND_HELLO, _) => {
            let nonce = r.u32()?;
            if buf.len() < HELLO_LEN {
                return Err(WireError::ShortHello);
            }
            r.rest();
            Handshake::Hello { nonce }
        }
        (KIND_REJECT, _) => {
            let nonce = r.u32()?;
            let reason = match r.u8()? {
                1 => RejectReason::VersionMismatch { supported: r.u8()? },
                2 => RejectReason::ServerFull,
                3 => RejectReason::NotAccepting,
                4 => RejectReason::TooManyFromAddress,
                5 => RejectReason::TokenRequired,
                6 => RejectReason::TokensNotAccepted,
                7 => RejectReason::BadToken,
                8 => RejectReason::WrongKey,
                9 => RejectReason::TokenExpired,
                10 => RejectReason::NotInToken,
                11 => RejectReason::TokenReused,
                12 => RejectReason::Application { code: r.u16()? },
                13 => RejectReason::WrongCluster,
                other => {
                    return Err(WireError::OutOfRange {
                        field: "reject reason",
                        value: other.into(),
                    });
                }
            };
            if version != VERSION {
                r.rest(); // later versions may append fields
            }
            Handshake::Reject { nonce, reason }
        }
        (_, false) => return Err(WireError::UnsupportedVersion(version)),
        (KIND_CHALLENGE, true) => Handshake::Challenge { nonce: r.u32()?, cookie: cookie(&mut r)? },
        (KIND_CONNECT, true) => {
            let (nonce, cookie, window) = (r.u32()?, cookie(&mut r)?, r.varint()?);
            let cluster = r.u64()?;
            let len = usize::from(r.u16()?);
            if len > MAX_TOKEN_SIZE {
                return Err(WireError::OutOfRange { field: "token length", value: len as u64 });
            }
            Handshake::Connect { nonce, cookie, window, cluster, token: r.bytes(len)? }
        }
        (KIND_ACCEPT, true) => {
            let (nonce, tag, window) = (r.u32()?, r.u32()?, r.u64()?);
            let proof =
                if r.is_empty() { None } else { Some(r.bytes(16)?.try_into().expect("16 bytes")) };
            Handshake::Accept { nonce, tag, window, proof }
        }
        (KIND_RESET, true) => Handshake::Reset { tag: r.u32()? },
        (other, true) => return Err(WireError::UnknownHandshake(other)),
    };
    if !r.is_empty() {
        return Err(WireError::OutOfRange { field: "trailing bytes", value: r.remaining() as u64 });
    }
    Ok(Packet::Handshake(HandshakePacket { version, body }))
}

fn cookie(r: &mut Reader<'_>) -> Result<Cookie, WireError> {
    Ok(Cookie { time: r.u32()?, mac: r.u64()? })
}

/// Appends a handshake packet of our [`VERSION`]; a `HELLO` is padded to [`HELLO_LEN`].
pub fn encode_handshake(out: &mut Vec<u8>, body: &Handshake<'_>) {
    encode_handshake_version(out, VERSION, body);
}

/// Like [`encode_handshake`] with an explicit version (tests use it to play an old peer).
pub fn encode_handshake_version(out: &mut Vec<u8>, version: u8, body: &Handshake<'_>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(version);
    let put_cookie = |out: &mut Vec<u8>, c: &Cookie| {
        out.extend_from_slice(&c.time.to_le_bytes());
        out.extend_from_slice(&c.mac.to_le_bytes());
    };
    match *body {
        Handshake::Hello { nonce } => {
            out.push(KIND_HELLO);
            out.extend_from_slice(&nonce.to_le_bytes());
            out.resize(start + HELLO_LEN, 0);
        }
        Handshake::Challenge { nonce, cookie } => {
            out.push(KIND_CHALLENGE);
            out.extend_from_slice(&nonce.to_le_bytes());
            put_cookie(out, &cookie);
        }
        Handshake::Connect { nonce, cookie, window, cluster, token } => {
            out.push(KIND_CONNECT);
            out.extend_from_slice(&nonce.to_le_bytes());
            put_cookie(out, &cookie);
            put_varint(out, window);
            out.extend_from_slice(&cluster.to_le_bytes());
            // The session refuses a longer token before sending it (`TokenError::TooLarge`).
            let token = &token[..token.len().min(MAX_TOKEN_SIZE)];
            out.extend_from_slice(&(token.len() as u16).to_le_bytes());
            out.extend_from_slice(token);
        }
        Handshake::Accept { nonce, tag, window, proof } => {
            out.push(KIND_ACCEPT);
            out.extend_from_slice(&accept_fields(nonce, tag, window));
            if let Some(p) = proof {
                out.extend_from_slice(&p);
            }
        }
        Handshake::Reject { nonce, reason } => {
            out.push(KIND_REJECT);
            out.extend_from_slice(&nonce.to_le_bytes());
            match reason {
                RejectReason::VersionMismatch { supported } => {
                    out.extend_from_slice(&[1, supported])
                }
                RejectReason::ServerFull => out.push(2),
                RejectReason::NotAccepting => out.push(3),
                RejectReason::TooManyFromAddress => out.push(4),
                RejectReason::TokenRequired => out.push(5),
                RejectReason::TokensNotAccepted => out.push(6),
                RejectReason::BadToken => out.push(7),
                RejectReason::WrongKey => out.push(8),
                RejectReason::TokenExpired => out.push(9),
                RejectReason::NotInToken => out.push(10),
                RejectReason::TokenReused => out.push(11),
                RejectReason::Application { code } => {
                    out.push(12);
                    out.extend_from_slice(&code.to_le_bytes());
                }
                RejectReason::WrongCluster => out.push(13),
            }
        }
        Handshake::Reset { tag } => {
            out.push(KIND_RESET);
            out.extend_from_slice(&tag.to_le_bytes());
        }
    }
}

/// An `ACCEPT`'s fields (nonce, tag, window as a u64), as its proof covers them.
pub fn accept_fields(nonce: u32, tag: u32, window: u64) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(&nonce.to_le_bytes());
    f[4..8].copy_from_slice(&tag.to_le_bytes());
    f[8..].copy_from_slice(&window.to_le_bytes());
    f
}

/// The length of a data packet's header (flags, tag, packet number), from its first byte.
pub fn data_header_len(first: u8) -> usize {
    match (first >> PN_LEN_SHIFT) & 0x3 {
        0 => 6,
        1 => 7,
        _ => 9,
    }
}

/// Appends a data packet header. `pn_len` must be 1, 2 or 4.
pub fn encode_data_header(out: &mut Vec<u8>, tag: u32, pn_truncated: u32, pn_len: u8) {
    let code = match pn_len {
        1 => 0,
        2 => 1,
        _ => 2,
    };
    let len = if code == 2 { 4 } else { pn_len as usize };
    out.push(DATA_BIT | (code << PN_LEN_SHIFT));
    out.extend_from_slice(&tag.to_le_bytes());
    put_uint(out, pn_truncated, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Handshake<'_>) {
        let mut out = Vec::new();
        encode_handshake(&mut out, &body);
        assert!(
            out.len() <= HELLO_LEN
                || matches!(
                    body,
                    Handshake::Hello { .. } | Handshake::Connect { .. } | Handshake::Accept { .. }
                )
        );
        match decode_packet(&out) {
            Ok(Packet::Handshake(p)) => {
                assert_eq!(p.version, VERSION);
                assert_eq!(p.body, body);
            }
            other => panic!("{body:?} decoded as {other:?}"),
        }
        // Every strict prefix is rejected with a typed error, never a panic (except an
        // `ACCEPT` cut just before its proof: a proof-less `ACCEPT`, which a client that
        // presented a token ignores).
        let proofless = 22;
        let with_proof = matches!(body, Handshake::Accept { proof: Some(_), .. });
        for cut in (0..out.len()).filter(|&c| !(with_proof && c == proofless)) {
            assert!(decode_packet(&out[..cut]).is_err(), "{body:?} cut at {cut}");
        }
    }

    #[test]
    fn handshake_round_trips() {
        let cookie = Cookie { time: 77, mac: 0xdead_beef_0bad_f00d };
        round_trip(Handshake::Hello { nonce: 5 });
        round_trip(Handshake::Challenge { nonce: 5, cookie });
        round_trip(Handshake::Connect {
            nonce: 5,
            cookie,
            window: 4 << 20,
            cluster: 0,
            token: &[],
        });
        round_trip(Handshake::Connect {
            nonce: 5,
            cookie,
            window: 1,
            cluster: u64::MAX,
            token: &[],
        });
        round_trip(Handshake::Connect {
            nonce: 5,
            cookie,
            window: 4 << 20,
            cluster: 0,
            token: &[9; 300],
        });
        round_trip(Handshake::Accept { nonce: 5, tag: 0xabcd_ef01, window: 1 << 20, proof: None });
        round_trip(Handshake::Accept {
            nonce: 5,
            tag: 0xabcd_ef01,
            window: 1 << 20,
            proof: Some([7; 16]),
        });
        for reason in [
            RejectReason::TokenRequired,
            RejectReason::TokensNotAccepted,
            RejectReason::BadToken,
            RejectReason::WrongKey,
            RejectReason::TokenExpired,
            RejectReason::NotInToken,
            RejectReason::TokenReused,
            RejectReason::Application { code: 0xbeef },
            RejectReason::WrongCluster,
        ] {
            round_trip(Handshake::Reject { nonce: 5, reason });
        }
        let mut long = Vec::new();
        let connect =
            Handshake::Connect { nonce: 5, cookie, window: 1, cluster: 0, token: &[1; 2000] };
        encode_handshake(&mut long, &connect);
        let Ok(Packet::Handshake(p)) = decode_packet(&long) else { panic!() };
        assert!(
            matches!(p.body, Handshake::Connect { token, .. } if token.len() == MAX_TOKEN_SIZE)
        );
        let at = long.len() - MAX_TOKEN_SIZE - 2;
        long[at..at + 2].copy_from_slice(&(MAX_TOKEN_SIZE as u16 + 1).to_le_bytes());
        long.push(0);
        assert!(matches!(decode_packet(&long), Err(WireError::OutOfRange { .. })));
        round_trip(Handshake::Reject {
            nonce: 5,
            reason: RejectReason::VersionMismatch { supported: 1 },
        });
        round_trip(Handshake::Reject { nonce: 5, reason: RejectReason::ServerFull });
        round_trip(Handshake::Reject { nonce: 5, reason: RejectReason::NotAccepting });
        round_trip(Handshake::Reject { nonce: 5, reason: RejectReason::TooManyFromAddress });
        round_trip(Handshake::Reset { tag: 9 });
        let mut reset = Vec::new();
        encode_handshake(&mut reset, &Handshake::Reset { tag: 9 });
        assert_eq!(reset.len(), RESET_LEN);
    }

    #[test]
    fn no_server_answer_is_larger_than_a_hello() {
        let cookie = Cookie { time: u32::MAX, mac: u64::MAX };
        for body in [
            Handshake::Challenge { nonce: u32::MAX, cookie },
            Handshake::Reject { nonce: 1, reason: RejectReason::VersionMismatch { supported: 1 } },
            Handshake::Reset { tag: 1 },
        ] {
            let mut out = Vec::new();
            encode_handshake(&mut out, &body);
            assert!(out.len() <= HELLO_LEN, "{body:?} is {} bytes", out.len());
        }
    }

    #[test]
    fn rejects_bad_magic_version_kind_and_trailing() {
        let mut hello = Vec::new();
        encode_handshake(&mut hello, &Handshake::Hello { nonce: 1 });
        let mut bad = hello.clone();
        bad[0] = b'X';
        assert_eq!(decode_packet(&bad), Err(WireError::BadMagic));
        // A HELLO of another version is still readable (so it can be answered with a REJECT)...
        let mut other = Vec::new();
        encode_handshake_version(&mut other, 9, &Handshake::Hello { nonce: 3 });
        assert_eq!(
            decode_packet(&other),
            Ok(Packet::Handshake(HandshakePacket {
                version: 9,
                body: Handshake::Hello { nonce: 3 }
            }))
        );
        // ...but nothing else of another version is.
        let mut accept = Vec::new();
        encode_handshake_version(
            &mut accept,
            9,
            &Handshake::Accept { nonce: 1, tag: 2, window: 3, proof: None },
        );
        assert_eq!(decode_packet(&accept), Err(WireError::UnsupportedVersion(9)));
        let mut unknown = hello[..6].to_vec();
        unknown[5] = 42;
        assert_eq!(decode_packet(&unknown), Err(WireError::UnknownHandshake(42)));
        let mut trailing = Vec::new();
        encode_handshake(&mut trailing, &Handshake::Reset { tag: 1 });
        trailing.push(0);
        assert!(matches!(decode_packet(&trailing), Err(WireError::OutOfRange { .. })));
        assert_eq!(decode_packet(&hello[..HELLO_LEN - 1]), Err(WireError::ShortHello));
        assert_eq!(decode_packet(&[]), Err(WireError::Empty));
    }

    #[test]
    fn data_header_round_trips_and_rejects_reserved_bits() {
        for (pn, len) in [(0x12u32, 1u8), (0x1234, 2), (0x1234_5678, 4)] {
            let mut out = Vec::new();
            encode_data_header(&mut out, 0xfeed_f00d, pn, len);
            out.push(0x02); // a PING frame
            match decode_packet(&out) {
                Ok(Packet::Data(h, frames)) => {
                    assert_eq!(h, DataHeader { tag: 0xfeed_f00d, pn_truncated: pn, pn_len: len });
                    assert_eq!(frames, &[0x02]);
                }
                other => panic!("{other:?}"),
            }
            let mut no_frames = out.clone();
            no_frames.pop();
            assert_eq!(decode_packet(&no_frames), Err(WireError::NoFrames));
        }
        assert_eq!(decode_packet(&[0x81, 0, 0, 0, 0, 0, 2]), Err(WireError::ReservedBits(0x81)));
        assert_eq!(decode_packet(&[0xb0, 0, 0, 0, 0, 0, 2]), Err(WireError::ReservedBits(0xb0)));
    }
}
