//! A seeded in-memory network for deterministic tests (feature `test-util`).
//!
//! Sockets bound on a [`SimNetwork`] exchange datagrams through it, with loss, latency and
//! jitter, duplication, reordering and an MTU applied per link. Every link has its own
//! random stream derived from the network's seed and the two addresses, so what happens on one
//! link does not depend on traffic elsewhere. Time is tokio's clock: under
//! `tokio::time::pause()` (or `#[tokio::test(start_paused = true)]`) a test runs on virtual
//! time, as fast as the CPU allows and the same way every run.
//!
//! ```no_run
//! # async fn demo() {
//! use grainwire::transport::sim::{SimConfig, SimNetwork};
//! use grainwire::TransportConfig;
//!
//! let net = SimNetwork::new(7, SimConfig { loss: 0.05, ..SimConfig::default() });
//! let server = net.endpoint("10.0.0.1:9000".parse().unwrap(), TransportConfig::server()).unwrap();
//! let client = net.endpoint("10.0.0.2:0".parse().unwrap(), TransportConfig::default()).unwrap();
//! let conn = client.connect(server.local_addr()).await.unwrap();
//! # }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Endpoint;
use super::io::Io;
use crate::config::TransportConfig;
use crate::error::BindError;
use crate::proto::rng::SplitMix64;
use crate::proto::siphash::siphash24;

/// How a link behaves. Probabilities are per datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (each copy with its own delay).
    pub duplicate: f64,
    /// One-way latency.
    pub delay: Duration,
    /// Extra latency, uniform in `0..jitter` (reorders datagrams sent closer than that).
    pub jitter: Duration,
    /// Probability that a datagram is held back by `reorder_delay` more.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
    /// Datagrams waiting at one socket beyond this many are dropped (a full socket buffer).
    pub queue_limit: usize,
}

impl Default for SimConfig {
    /// A clean 10 ms link: no loss, no duplication, no reordering, 1500-byte MTU.
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            mtu: 1500,
            queue_limit: 4096,
        }
    }
}

/// What the network did, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams delivered to a socket (duplicates count twice).
    pub delivered: u64,
    /// Dropped by `loss` or a link that is down.
    pub lost: u64,
    /// Extra copies made by `duplicate`.
    pub duplicated: u64,
    /// Dropped for exceeding the MTU.
    pub oversize: u64,
    /// Dropped at a full socket queue or an unbound address.
    pub undeliverable: u64,
}

#[derive(Debug)]
struct Link {
    rng: SplitMix64,
    seq: u64,
}

type Queued = Reverse<(Instant, SocketAddr, u64, Vec<u8>)>;

#[derive(Debug, Default)]
struct SocketState {
    /// Which binding of the address this is (a killed socket's handle must not reach the
    /// socket bound after it).
    generation: u64,
    queue: BinaryHeap<Queued>,
    waker: Option<Waker>,
    /// A datagram was queued since the owner last looked: its arrival time may be earlier
    /// than any the owner is sleeping until.
    arrived: bool,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    config: SimConfig,
    overrides: HashMap<(SocketAddr, SocketAddr), SimConfig>,
    down: HashMap<SocketAddr, bool>,
    drop_next: HashMap<(SocketAddr, SocketAddr), u32>,
    /// NAT: the address a bound socket appears as (`rebind`), and back.
    nat_out: HashMap<SocketAddr, SocketAddr>,
    nat_in: HashMap<SocketAddr, SocketAddr>,
    /// Sizes of the datagrams sent, when recording.
    recorded: Option<Vec<(SocketAddr, SocketAddr, usize)>>,
    /// Whole datagrams sent since `capture` (at most [`MAX_CAPTURED`]).
    captured: Option<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
    links: HashMap<(SocketAddr, SocketAddr), Link>,
    sockets: HashMap<SocketAddr, SocketState>,
    next_generation: u64,
    next_port: u16,
    stats: SimStats,
}

/// The most datagrams [`SimNetwork::capture`] keeps.
pub const MAX_CAPTURED: usize = 100_000;

/// The simulated network. Cheap to clone; clones are the same network.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    // One lock for the whole network: sockets on several tasks share it, each access is a
    // short synchronous section, and it is never held across an await.
    inner: Arc<Mutex<Inner>>,
}

fn addr_bytes(a: &SocketAddr) -> [u8; 18] {
    let mut b = [0u8; 18];
    match a.ip() {
        std::net::IpAddr::V4(ip) => b[..4].copy_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => b[..16].copy_from_slice(&ip.octets()),
    }
    b[16..].copy_from_slice(&a.port().to_le_bytes());
    b
}

impl SimNetwork {
    /// A network whose every link behaves as `config`, random streams derived from `seed`.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        let inner = Inner {
            seed,
            config,
            overrides: HashMap::new(),
            down: HashMap::new(),
            drop_next: HashMap::new(),
            nat_out: HashMap::new(),
            nat_in: HashMap::new(),
            recorded: None,
            captured: None,
            links: HashMap::new(),
            sockets: HashMap::new(),
            next_generation: 1,
            next_port: 40000,
            stats: SimStats::default(),
        };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Changes the behaviour of every link without an override.
    pub fn set_config(&self, config: SimConfig) {
        self.lock().config = config;
    }

    /// Overrides the behaviour of the link from `from` to `to` (one direction).
    pub fn set_link(&self, from: SocketAddr, to: SocketAddr, config: SimConfig) {
        self.lock().overrides.insert((from, to), config);
    }

    /// Cuts (`true`) or restores every link to and from `addr`: a host that crashed or lost
    /// its network. Its sockets stay bound.
    pub fn set_down(&self, addr: SocketAddr, down: bool) {
        self.lock().down.insert(addr, down);
    }

    /// Kills the process owning the socket at `addr`, as SIGKILL would: the socket is closed
    /// at once (what was queued for it is lost, its owner can send and receive nothing more)
    /// and the address is free for a new bind, while the owner's tasks wind down unseen.
    pub fn kill(&self, addr: SocketAddr) {
        self.lock().sockets.remove(&addr);
    }

    /// Drops the next `n` datagrams sent from `from` to `to`, whatever the link's settings: a
    /// precise loss for tests (the lost tail of a burst, one handshake packet).
    pub fn drop_next(&self, from: SocketAddr, to: SocketAddr, n: u32) {
        self.lock().drop_next.insert((from, to), n);
    }

    /// Puts the socket bound at `inside` behind a NAT that now maps it to `outside` (a NAT
    /// rebinding, or the host moving to another network): what it sends comes from `outside`,
    /// what is sent to `outside` reaches it, and nothing reaches it at `inside` or at the
    /// outside address it had before.
    pub fn rebind(&self, inside: SocketAddr, outside: SocketAddr) {
        let mut inner = self.lock();
        if let Some(before) = inner.nat_out.insert(inside, outside) {
            inner.nat_in.remove(&before);
        }
        inner.nat_in.insert(outside, inside);
    }

    /// Starts recording the size of every datagram sent (and clears what was recorded).
    pub fn record_sizes(&self) {
        self.lock().recorded = Some(Vec::new());
    }

    /// The datagrams sent since `record_sizes`: (from, to, bytes).
    pub fn recorded_sizes(&self) -> Vec<(SocketAddr, SocketAddr, usize)> {
        self.lock().recorded.clone().unwrap_or_default()
    }

    /// Starts capturing every datagram sent, whole (and clears what was captured): what an
    /// eavesdropper on the network would see. At most [`MAX_CAPTURED`] are kept.
    pub fn capture(&self) {
        self.lock().captured = Some(Vec::new());
    }

    /// The datagrams sent since `capture`: (from, to, bytes).
    pub fn captured(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.lock().captured.clone().unwrap_or_default()
    }

    /// What the network did so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    pub(crate) fn bind_io(&self, mut addr: SocketAddr) -> io::Result<SimIo> {
        let mut inner = self.lock();
        if addr.port() == 0 {
            loop {
                let port = inner.next_port;
                inner.next_port = inner.next_port.checked_add(1).unwrap_or(40000);
                addr.set_port(port);
                if !inner.sockets.contains_key(&addr) {
                    break;
                }
            }
        }
        if inner.sockets.contains_key(&addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        let generation = inner.next_generation;
        inner.next_generation += 1;
        inner.sockets.insert(addr, SocketState { generation, ..SocketState::default() });
        Ok(SimIo { net: self.clone(), addr, generation })
    }

    /// Starts an [`Endpoint`] on this network at `addr` (port 0 picks a free one). Must be
    /// called inside a tokio runtime.
    pub fn endpoint(
        &self,
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<Endpoint, BindError> {
        config.validate()?;
        Endpoint::start(self.bind_io(addr)?, config)
    }

    /// Sends a datagram that claims to come from `from`, which nobody need have bound: what an
    /// off-path attacker who forges source addresses does. Answers go to `from`.
    pub fn spoof(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.send(tokio::time::Instant::now().into_std(), from, to, data);
    }

    /// A bare socket on this network, for tests that speak raw datagrams.
    pub fn raw_socket(&self, addr: SocketAddr) -> io::Result<RawSocket> {
        Ok(RawSocket { io: self.bind_io(addr)? })
    }

    fn send(&self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.stats.sent += 1;
        // Behind a NAT, a socket sends as its outside address and is reached only there.
        let from = inner.nat_out.get(&from).copied().unwrap_or(from);
        let deliver_to = match inner.nat_in.get(&to) {
            Some(inside) => *inside,
            None if inner.nat_out.contains_key(&to) => {
                inner.stats.undeliverable += 1;
                return;
            }
            None => to,
        };
        if let Some(c) = inner.captured.as_mut()
            && c.len() < MAX_CAPTURED
        {
            c.push((from, to, data.to_vec()));
        }
        if let Some(r) = inner.recorded.as_mut() {
            r.push((from, to, data.len()));
        }
        let cfg = inner.overrides.get(&(from, to)).unwrap_or(&inner.config).clone();
        if data.len() > cfg.mtu {
            inner.stats.oversize += 1;
            return;
        }
        let seed = inner.seed;
        let link = inner.links.entry((from, to)).or_insert_with(|| {
            let mut key = [0u8; 36];
            key[..18].copy_from_slice(&addr_bytes(&from));
            key[18..].copy_from_slice(&addr_bytes(&to));
            Link { rng: SplitMix64::new(siphash24(seed, !seed, &key)), seq: 0 }
        });
        let mut cut = inner.down.get(&from).copied().unwrap_or(false)
            || inner.down.get(&to).copied().unwrap_or(false);
        if let Some(n) = inner.drop_next.get_mut(&(from, to)).filter(|n| **n > 0) {
            *n -= 1;
            cut = true;
        }
        // Draw the same numbers whatever the outcome, so one decision never shifts the next.
        let lost = link.rng.next_f64() < cfg.loss;
        let dup = link.rng.next_f64() < cfg.duplicate;
        let mut arrivals = [Duration::ZERO; 2];
        for a in &mut arrivals {
            let jitter = cfg.jitter.mul_f64(link.rng.next_f64());
            let reorder =
                if link.rng.next_f64() < cfg.reorder { cfg.reorder_delay } else { Duration::ZERO };
            *a = cfg.delay + jitter + reorder;
        }
        if lost || cut {
            inner.stats.lost += 1;
            return;
        }
        let copies = if dup { 2 } else { 1 };
        inner.stats.duplicated += copies - 1;
        for arrival in &arrivals[..copies as usize] {
            link.seq += 1;
            let seq = link.seq;
            match inner.sockets.get_mut(&deliver_to) {
                Some(s) if s.queue.len() < cfg.queue_limit => {
                    s.queue.push(Reverse((now + *arrival, from, seq, data.to_vec())));
                    s.arrived = true;
                    inner.stats.delivered += 1;
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                }
                _ => inner.stats.undeliverable += 1,
            }
        }
    }
}

/// One socket on a [`SimNetwork`].
#[derive(Debug)]
pub(crate) struct SimIo {
    net: SimNetwork,
    addr: SocketAddr,
    generation: u64,
}

impl Drop for SimIo {
    fn drop(&mut self) {
        let mut inner = self.net.lock();
        if inner.sockets.get(&self.addr).is_some_and(|s| s.generation == self.generation) {
            inner.sockets.remove(&self.addr);
        }
    }
}

impl SimIo {
    /// This handle's socket, unless it was killed (or its address bound again since).
    fn state<'a>(&self, inner: &'a mut Inner) -> Option<&'a mut SocketState> {
        inner.sockets.get_mut(&self.addr).filter(|s| s.generation == self.generation)
    }

    fn send(&self, now: Instant, to: SocketAddr, data: &[u8]) {
        if self.state(&mut self.net.lock()).is_some() {
            self.net.send(now, self.addr, to, data);
        }
    }

    fn pop(&self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let mut inner = self.net.lock();
        let s = self.state(&mut inner)?;
        match s.queue.peek() {
            Some(Reverse((at, ..))) if *at <= now => {}
            _ => return None,
        }
        let Reverse((_, from, _, data)) = s.queue.pop()?;
        Some((from, data))
    }
}

impl Io for SimIo {
    fn recv_from(&mut self, now: Instant, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (from, data) = self.pop(now).ok_or(io::ErrorKind::WouldBlock)?;
        // Like a kernel: a datagram longer than the buffer is truncated to it.
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    fn send_to(&mut self, now: Instant, to: SocketAddr, buf: &[u8]) -> io::Result<usize> {
        self.send(now, to, buf);
        Ok(buf.len())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Ready when a datagram is due, or once after a new one was queued (so that the owner
    /// re-reads `next_arrival` and sleeps until it).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let now = tokio::time::Instant::now().into_std();
        let mut inner = self.net.lock();
        let Some(s) = self.state(&mut inner) else { return Poll::Pending };
        let due = matches!(s.queue.peek(), Some(Reverse((at, ..))) if *at <= now);
        if due || std::mem::take(&mut s.arrived) {
            return Poll::Ready(Ok(()));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn virtual_time(&self) -> bool {
        true
    }

    fn next_arrival(&self) -> Option<Instant> {
        let mut inner = self.net.lock();
        self.state(&mut inner)?.queue.peek().map(|Reverse((at, ..))| *at)
    }
}

/// A bare datagram socket on a [`SimNetwork`], for tests that send hand-made datagrams.
#[derive(Debug)]
pub struct RawSocket {
    io: SimIo,
}

impl RawSocket {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.io.addr
    }

    /// Sends one datagram.
    pub fn send_to(&self, to: SocketAddr, data: &[u8]) {
        let now = tokio::time::Instant::now().into_std();
        self.io.send(now, to, data);
    }

    /// Receives the next datagram, waiting for it.
    pub async fn recv(&self) -> (SocketAddr, Vec<u8>) {
        loop {
            let now = tokio::time::Instant::now().into_std();
            if let Some(d) = self.io.pop(now) {
                return d;
            }
            let readable = std::future::poll_fn(|cx| self.io.poll_readable(cx).map(|_| ()));
            match self.io.next_arrival() {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        () = readable => {}
                    }
                }
                None => readable.await,
            }
        }
    }

    /// The next datagram if one has arrived, without waiting.
    pub fn try_recv(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.io.pop(tokio::time::Instant::now().into_std())
    }

    /// Receives the next datagram if one is due, or waits at most `timeout` of (virtual) time.
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        tokio::time::timeout(timeout, self.recv()).await.ok()
    }
}
