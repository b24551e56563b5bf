//! Identifier newtypes.

use std::fmt;

/// One of the 256 reliable-ordered (or unreliable-sequenced) streams of a connection. Order is
/// kept within a stream; a loss on one stream never delays another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u8);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// One session with one peer, unique within an endpoint for its lifetime. A peer that
/// reconnects (or restarts on the same address) gets a new `PeerId`: nothing of an old session
/// is ever mistaken for the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}
