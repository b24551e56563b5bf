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
}

/// A tokio UDP socket.
///
/// Receives go through tokio, whose readiness tracking wakes the task. Sends go through a
/// duplicate of the same socket as a plain non-blocking std socket: tokio's `try_send_to`
/// refuses to even try while it has not yet seen the socket become writable (right after
/// binding, for instance), which would silently drop the first datagrams; the kernel, asked
/// directly, says `WouldBlock` only when its buffer is really full.
#[derive(Debug)]
pub(crate) struct UdpIo {
    socket: tokio::net::UdpSocket,
    sender: std::net::UdpSocket,
}

impl UdpIo {
    /// Binds `addr`, sizing the kernel buffers to `buffer_size` bytes when non-zero. Must be
    /// called inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr, buffer_size: usize) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if buffer_size > 0 {
            // Best effort: the kernel clamps these to its limits (net.core.rmem_max).
            let _ = socket.set_recv_buffer_size(buffer_size);
            let _ = socket.set_send_buffer_size(buffer_size);
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let std: std::net::UdpSocket = socket.into();
        let sender = std.try_clone()?;
        let socket = tokio::net::UdpSocket::from_std(std)?;
        Ok(Self { socket, sender })
    }
}

impl Io for UdpIo {
    fn recv_from(&mut self, _now: Instant, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.try_recv_from(buf)
    }

    fn send_to(&mut self, _now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize> {
        self.sender.send_to(buf, to)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_recv_ready(cx)
    }

    fn next_arrival(&self) -> Option<Instant> {
        None
    }
}
