//! Our `laminar::DatagramSocket`: the [`Gate`] in front of a datagram [`Io`].
//!
//! laminar's manager creates a connection for *any* datagram from a new address (1.57 MB in
//! laminar's own connection type). This socket never hands it one: only datagrams from
//! addresses with a session pass. Handshake packets from strangers are answered here,
//! statelessly, and a `CONNECT` with a valid cookie is set aside for the driver, which creates
//! the session.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use crate::proto::gate::{Gate, Verdict};
use crate::transport::io::Io;

#[derive(Debug)]
pub(crate) struct GatedSocket<I: Io> {
    pub(crate) io: I,
    gate: Gate,
    now: Instant,
    /// Addresses with a session; the flag says whether the peer opened it.
    known: HashMap<SocketAddr, bool>,
    incoming: usize,
    max_incoming: usize,
    /// Datagrams still allowed in this pass.
    budget: usize,
    /// Not reading: the application is behind on events.
    pub(crate) paused: bool,
    /// No new sessions: shutting down.
    pub(crate) refusing: bool,
    reply: Vec<u8>,
    /// Valid `CONNECT`s from new addresses: (address, nonce, client window).
    pub(crate) admitted: Vec<(SocketAddr, u32, u64)>,
    pub(crate) dropped_sends: u64,
    pub(crate) oversize: u64,
}

impl<I: Io> GatedSocket<I> {
    pub(crate) fn new(io: I, gate: Gate, max_incoming: usize, now: Instant) -> Self {
        Self {
            io,
            gate,
            now,
            known: HashMap::new(),
            incoming: 0,
            max_incoming,
            budget: 0,
            paused: false,
            refusing: false,
            reply: Vec::new(),
            admitted: Vec::new(),
            dropped_sends: 0,
            oversize: 0,
        }
    }

    /// Starts a pass of the manager: the clock, and how many datagrams it may read.
    pub(crate) fn begin(&mut self, now: Instant, budget: usize) {
        self.now = now;
        self.budget = budget;
    }

    /// Whether the last pass stopped reading because its budget ran out (more may be waiting).
    pub(crate) fn budget_exhausted(&self) -> bool {
        self.budget == 0 && !self.paused
    }

    pub(crate) fn is_known(&self, addr: &SocketAddr) -> bool {
        self.known.contains_key(addr)
    }

    pub(crate) fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Registers a session we open.
    pub(crate) fn add_outgoing(&mut self, addr: SocketAddr) {
        self.known.insert(addr, false);
    }

    /// A session ended: its address is a stranger again.
    pub(crate) fn forget(&mut self, addr: &SocketAddr) {
        if self.known.remove(addr) == Some(true) {
            self.incoming -= 1;
        }
    }
}

impl<I: Io> laminar::DatagramSocket for GatedSocket<I> {
    fn send_packet(&mut self, addr: &SocketAddr, payload: &[u8]) -> io::Result<usize> {
        match self.io.send_to(self.now, *addr, payload) {
            // A full socket buffer is a loss like any other; retransmission covers it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.dropped_sends += 1;
                Ok(0)
            }
            r => r,
        }
    }

    fn receive_packet<'a>(&mut self, buffer: &'a mut [u8]) -> io::Result<(&'a [u8], SocketAddr)> {
        loop {
            if self.paused || self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let (len, from) = self.io.recv_from(self.now, buffer)?;
            self.budget -= 1;
            if len >= buffer.len() {
                // The buffer is one byte larger than the largest datagram we accept, so a full
                // buffer means the datagram was truncated: drop it.
                self.oversize += 1;
                continue;
            }
            let known = self.known.contains_key(&from);
            let full = self.refusing || self.incoming >= self.max_incoming;
            match self.gate.filter(self.now, from, &buffer[..len], known, full, &mut self.reply) {
                Verdict::Pass => {
                    let buffer: &'a [u8] = buffer;
                    return Ok((&buffer[..len], from));
                }
                Verdict::Drop => {}
                Verdict::Reply => {
                    let _ = self.io.send_to(self.now, from, &self.reply);
                }
                Verdict::Admit { nonce, window } => {
                    self.known.insert(from, true);
                    self.incoming += 1;
                    self.admitted.push((from, nonce, window));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn is_blocking_mode(&self) -> bool {
        false
    }
}
