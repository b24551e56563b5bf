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
    /// Sends one datagram; `WouldBlock` when the socket's buffer is full.
    fn send_to(&mut self, now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize>;
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

/// A UDP socket driven by tokio.
///
/// Registered with tokio for *read* readiness only (an `AsyncFd`): a UDP socket becomes
/// writable again after nearly every send, and a registration that also asked for write
/// readiness would wake the task for each of those edges, for nothing. Sends go straight to
/// the kernel, non-blocking; it says `WouldBlock` only when its buffer is really full, which
/// the transport treats as a loss. (tokio's own `UdpSocket::try_send_to` would also refuse to
/// try before it has seen the socket become writable, dropping the first datagrams.)
#[derive(Debug)]
pub(crate) struct UdpIo {
    fd: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
}

impl UdpIo {
    /// Binds `addr`, sizing the kernel buffers to `buffer_size` bytes when non-zero. Must be
    /// called inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr, buffer_size: usize) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&addr.into())?;
        Self::from_socket(socket, buffer_size)
    }

    /// Takes over a socket bound by the application.
    pub(crate) fn from_std(socket: std::net::UdpSocket, buffer_size: usize) -> io::Result<Self> {
        Self::from_socket(socket2::Socket::from(socket), buffer_size)
    }

    fn from_socket(socket: socket2::Socket, buffer_size: usize) -> io::Result<Self> {
        if buffer_size > 0 {
            // Best effort: the kernel clamps these to its limits (net.core.rmem_max).
            let _ = socket.set_recv_buffer_size(buffer_size);
            let _ = socket.set_send_buffer_size(buffer_size);
        }
        socket.set_nonblocking(true)?;
        // `with_interest` is deprecated because a registered fd that its owner closes or
        // replaces breaks I/O safety; here the `AsyncFd` owns the socket and only lends `&`
        // to it, so the fd lives exactly as long as the registration. The replacement,
        // `register_with_interest`, is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::with_interest(
            std::net::UdpSocket::from(socket),
            tokio::io::Interest::READABLE,
        )?;
        Ok(Self { fd })
    }
}

impl Io for UdpIo {
    fn recv_from(&mut self, _now: Instant, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.fd.try_io(tokio::io::Interest::READABLE, |s| s.recv_from(buf))
    }

    fn send_to(&mut self, _now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize> {
        self.fd.get_ref().send_to(buf, to)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd.poll_read_ready(cx).map_ok(|mut guard| guard.retain_ready())
    }

    fn next_arrival(&self) -> Option<Instant> {
        None
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
