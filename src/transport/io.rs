//! The datagram I/O under an endpoint: a real UDP socket, or the simulated network.

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

/// A non-blocking datagram socket the endpoint's task can wait on.
pub(crate) trait Io: Debug + Send + Sync + 'static {
    /// Receives one datagram into `buf`; `WouldBlock` when none is ready.
    fn recv_from(&mut self, now: Instant, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Sends one datagram (or gathers it for [`flush`](Self::flush)); `WouldBlock` when the
    /// socket's buffer is full.
    fn send_to(&mut self, now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize>;
    /// Sends what `send_to` gathered; how many datagrams could not be sent since last asked
    /// (the socket's buffer was full: lost). The endpoint calls it before it waits.
    fn flush(&mut self) -> usize {
        0
    }
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Ready when `recv_from` may have a datagram.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// When a datagram not yet deliverable will become so (simulated latency).
    fn next_arrival(&self) -> Option<Instant>;
    /// The current time on this I/O's clock: the system clock for real sockets, tokio's
    /// (possibly paused) clock for the simulated network.
    fn now(&self) -> Instant;
    /// Whether `now` is tokio's clock, which tests may pause (then timers must be tokio's).
    fn virtual_time(&self) -> bool {
        false
    }
}

/// A UDP socket driven by tokio: one datagram per system call, or, with
/// `TransportConfig::batched_io`, read and written in batches through `quinn-udp`.
///
/// **Batched reading**: one `recvmmsg` takes up to [`quinn_udp::BATCH_SIZE`] (32 on Linux)
/// datagrams, each buffer possibly several coalesced by the kernel (UDP GRO: segments of one
/// size from one sender); [`recv_from`](Io::recv_from) hands them out one at a time and reads
/// again only once they are all taken. **Batched writing**: a datagram to the same address as
/// the one before, no longer than it, joins it in one `sendmsg` with UDP GSO (the kernel
/// splits them; up to `TransportConfig::gso_segments` — 1 by default: no gathering — or what
/// the kernel allows, at most 64 KB); anything else first sends what was gathered, and a lone
/// datagram goes out with a plain `sendto`. [`flush`](Io::flush) sends the rest: the endpoint
/// calls it at the end of every pass, before it waits. Where the platform has neither, one
/// datagram per system call.
///
/// Registered with tokio for *read* readiness only (an `AsyncFd`): a UDP socket becomes
/// writable again after nearly every send, and a registration that also asked for write
/// readiness would wake the task for each of those edges, for nothing. Sends go straight to
/// the kernel, non-blocking; it says `WouldBlock` only when its buffer is really full, which
/// the transport treats as a loss. (tokio's own `UdpSocket::try_send_to` would also refuse to
/// try before it has seen the socket become writable, dropping the first datagrams.)
pub(crate) struct UdpIo {
    fd: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
    /// With batched I/O: its state.
    batched: Option<Box<Batched>>,
}

/// What batched I/O keeps.
struct Batched {
    state: quinn_udp::UdpSocketState,
    /// The most datagrams gathered into one send.
    gso_segments: usize,
    rx: Batch,
    tx: Gather,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("UdpIo");
        d.field("local", &self.fd.get_ref().local_addr().ok());
        if let Some(b) = &self.batched {
            d.field("gso_segments", &b.state.max_gso_segments().min(b.gso_segments));
            d.field("gro_segments", &b.state.gro_segments());
        }
        d.finish_non_exhaustive()
    }
}

/// How a UDP socket is set up, from its `TransportConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UdpOptions {
    /// Kernel buffer size asked for, receive and send (0: the system's default).
    pub(crate) buffer: usize,
    /// Read and write in batches.
    pub(crate) batched: bool,
    /// With `batched`: the most datagrams gathered into one GSO send (1: none).
    pub(crate) gso_segments: usize,
}

impl From<&crate::proto::config::TransportConfig> for UdpOptions {
    fn from(c: &crate::proto::config::TransportConfig) -> Self {
        Self { buffer: c.socket_buffer_size, batched: c.batched_io, gso_segments: c.gso_segments }
    }
}

/// Room for one `recvmmsg`: a buffer per message, each large enough for the largest UDP
/// payload or a GRO train (64 KB). Allocated zeroed, so only the pages datagrams touch are
/// ever resident.
const SLOT: usize = 1 << 16;

/// Datagrams read and not yet handed out.
struct Batch {
    buf: Box<[u8]>,
    meta: [quinn_udp::RecvMeta; quinn_udp::BATCH_SIZE],
    /// Buffers the last read filled.
    filled: usize,
    /// The buffer handed out next, and the offset of its next segment.
    at: usize,
    offset: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            buf: vec![0; SLOT * quinn_udp::BATCH_SIZE].into_boxed_slice(),
            meta: [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            filled: 0,
            at: 0,
            offset: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.filled
    }

    /// The next datagram read: copied into `out` (cut at its length: a caller's buffer one
    /// byte longer than the largest datagram it takes sees a longer one as full).
    fn take(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        while self.at < self.filled {
            let m = self.meta[self.at];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            if self.offset >= m.len || stride == 0 {
                (self.at, self.offset) = (self.at + 1, 0);
                continue;
            }
            let base = self.at * SLOT + self.offset;
            let len = stride.min(m.len - self.offset);
            self.offset += len;
            let n = len.min(out.len());
            out[..n].copy_from_slice(&self.buf[base..base + n]);
            return Some((n, m.addr));
        }
        None
    }
}

/// Datagrams to one address gathered for one GSO send.
#[derive(Default)]
struct Gather {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    /// The size of each segment (the first datagram's); only the last may be shorter.
    segment: usize,
    count: usize,
    /// Datagrams that could not be sent (the socket's buffer was full) since last asked.
    dropped: usize,
}

/// The most a GSO send carries (the kernel's limit for a UDP payload, with headers).
const GSO_BYTES: usize = 65_000;

impl UdpIo {
    /// Binds `addr` with `options`. Must be called inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr, options: UdpOptions) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&addr.into())?;
        Self::from_socket(socket, options)
    }

    /// Takes over a socket bound by the application.
    pub(crate) fn from_std(socket: std::net::UdpSocket, options: UdpOptions) -> io::Result<Self> {
        Self::from_socket(socket2::Socket::from(socket), options)
    }

    fn from_socket(socket: socket2::Socket, options: UdpOptions) -> io::Result<Self> {
        if options.buffer > 0 {
            // Best effort: the kernel clamps these to its limits (net.core.rmem_max).
            let _ = socket.set_recv_buffer_size(options.buffer);
            let _ = socket.set_send_buffer_size(options.buffer);
        }
        socket.set_nonblocking(true)?;
        let batched = if options.batched {
            // Turns on what the platform offers (GRO, the options GSO and ECN need).
            let state = quinn_udp::UdpSocketState::new((&socket).into())?;
            let gso_segments = options.gso_segments.max(1);
            Some(Box::new(Batched { state, gso_segments, rx: Batch::new(), tx: Gather::default() }))
        } else {
            None
        };
        // `with_interest` is deprecated because a registered fd that its owner closes or
        // replaces breaks I/O safety; here the `AsyncFd` owns the socket and only lends `&`
        // to it, so the fd lives exactly as long as the registration. The replacement,
        // `register_with_interest`, is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::with_interest(
            std::net::UdpSocket::from(socket),
            tokio::io::Interest::READABLE,
        )?;
        Ok(Self { fd, batched })
    }
}

impl Batched {
    /// Sends what was gathered, if anything.
    fn send_gathered(&mut self, socket: &std::net::UdpSocket) {
        let Some(to) = self.tx.to.take() else { return };
        let tx = &mut self.tx;
        let sent = if tx.count == 1 {
            // One datagram: a plain `sendto` (no control messages to build or parse).
            socket.send_to(&tx.buf, to).map(drop)
        } else {
            let transmit = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: &tx.buf,
                segment_size: Some(tx.segment),
                src_ip: None,
            };
            // `send` reports only a full buffer; other errors (rare for UDP: the datagrams are
            // lost, as on the wire) it logs, and a GSO refusal turns GSO off for later sends.
            self.state.send(socket.into(), &transmit)
        };
        if sent.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
            tx.dropped += tx.count;
        }
        tx.buf.clear();
        tx.count = 0;
    }
}

impl Io for UdpIo {
    fn recv_from(&mut self, _now: Instant, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let Some(b) = &mut self.batched else {
            return self.fd.try_io(tokio::io::Interest::READABLE, |s| s.recv_from(buf));
        };
        loop {
            if let Some(got) = b.rx.take(buf) {
                return Ok(got);
            }
            let Batched { state, rx, .. } = &mut **b;
            let n = self.fd.try_io(tokio::io::Interest::READABLE, |s| {
                let mut chunks = rx.buf.chunks_mut(SLOT);
                let mut slices: [io::IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                    std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().unwrap_or_default()));
                state.recv(s.into(), &mut slices, &mut rx.meta)
            })?;
            (rx.filled, rx.at, rx.offset) = (n, 0, 0);
        }
    }

    fn send_to(&mut self, _now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize> {
        let socket = self.fd.get_ref();
        let Some(b) = &mut self.batched else { return socket.send_to(buf, to) };
        let max = b.state.max_gso_segments().min(b.gso_segments);
        let tx = &b.tx;
        let joins = tx.to == Some(to)
            && buf.len() <= tx.segment
            && tx.buf.len() == tx.segment * tx.count // none shorter yet
            && tx.count < max
            && tx.buf.len() + buf.len() <= GSO_BYTES;
        if !joins {
            b.send_gathered(socket);
            b.tx.to = Some(to);
            b.tx.segment = buf.len();
        }
        b.tx.buf.extend_from_slice(buf);
        b.tx.count += 1;
        if max <= 1 {
            b.send_gathered(socket); // no GSO: nothing to wait for
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> usize {
        let Some(b) = &mut self.batched else { return 0 };
        b.send_gathered(self.fd.get_ref());
        std::mem::take(&mut b.tx.dropped)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.batched.as_ref().is_some_and(|b| !b.rx.is_empty()) {
            return Poll::Ready(Ok(()));
        }
        self.fd.poll_read_ready(cx).map_ok(|mut guard| guard.retain_ready())
    }

    fn next_arrival(&self) -> Option<Instant> {
        None
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `io` has a datagram (bounded: 2 s), then reads it.
    async fn recv(io: &mut UdpIo, buf: &mut [u8]) -> (usize, SocketAddr) {
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match io.recv_from(Instant::now(), buf) {
                Ok(got) => return got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no datagram within 2 s");
                    let ready = std::future::poll_fn(|cx| io.poll_readable(cx));
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_millis(100), ready).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Datagrams gathered (GSO where the kernel has it) and read in batches (recvmmsg, GRO)
    /// arrive whole, in order, each on its own: equal ones, a shorter last one, a longer one
    /// (which starts a new send), and to two addresses in turn.
    #[tokio::test]
    async fn batched_datagrams_arrive_whole_and_in_order() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let gather = UdpOptions { buffer: 0, batched: true, gso_segments: 8 };
        let mut a = UdpIo::bind(any, gather).unwrap();
        let mut b = UdpIo::bind(any, gather).unwrap();
        let mut c = UdpIo::bind(any, gather).unwrap();
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut sent_b = Vec::new();
        for i in 0..20u8 {
            let len = match i {
                9 => 300,   // shorter: ends a gathered run
                10 => 1100, // longer: starts a new one
                _ => 1000,
            };
            let d = vec![i; len];
            a.send_to(Instant::now(), to_b, &d).unwrap();
            sent_b.push(d);
            if i % 7 == 0 {
                a.send_to(Instant::now(), to_c, &[i; 40]).unwrap(); // another address between
            }
        }
        assert_eq!(a.flush(), 0, "nothing dropped");
        let mut buf = vec![0u8; 1201];
        for d in &sent_b {
            let (n, from) = recv(&mut b, &mut buf).await;
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(&buf[..n], &d[..], "datagram {}", d[0]);
        }
        for i in [0u8, 7, 14] {
            let (n, _) = recv(&mut c, &mut buf).await;
            assert_eq!(&buf[..n], &[i; 40][..]);
        }
        assert!(b.recv_from(Instant::now(), &mut buf).is_err(), "nothing more");
    }

    /// A datagram longer than the reader's buffer fills it (the reader's sign of one too
    /// large), and the next datagram is read whole.
    #[tokio::test]
    async fn a_datagram_longer_than_the_buffer_fills_it() {
        for batched in [false, true] {
            longer_than_the_buffer(UdpOptions { buffer: 0, batched, gso_segments: 1 }).await;
        }
    }

    async fn longer_than_the_buffer(options: UdpOptions) {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut b = UdpIo::bind(any, options).unwrap();
        let raw = std::net::UdpSocket::bind(any).unwrap();
        raw.send_to(&[1; 3000], b.local_addr().unwrap()).unwrap();
        raw.send_to(&[2; 10], b.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; 1201];
        assert_eq!(recv(&mut b, &mut buf).await.0, 1201);
        let (n, _) = recv(&mut b, &mut buf).await;
        assert_eq!(&buf[..n], &[2; 10]);
    }
}
