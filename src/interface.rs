//! What a grain interface is: the metadata `#[grain]` generates for a trait, shared by the
//! client (routing, deadlines, retries) and the server (dispatch, manifests). Depends on the
//! ids only.

use std::time::Duration;

use crate::proto::ids::{GrainType, InterfaceId, MethodId};

/// What a grain interface is, for routing and compatibility checks.
#[derive(Debug)]
pub struct InterfaceInfo {
    /// The interface's name (the trait's, unless `#[grain(name = "...")]`).
    pub name: &'static str,
    /// The interface id.
    pub id: InterfaceId,
    /// The grain type implementing it (named like the interface unless
    /// `#[grain(grain_type = "...")]`: a grain type may implement several interfaces).
    pub grain_type: GrainType,
    /// The interface version (`#[grain(version = N)]`).
    pub version: u8,
    /// Hash of the methods and their signatures.
    pub contract: u64,
    /// The methods.
    pub methods: &'static [MethodInfo],
}

impl InterfaceInfo {
    /// The method with this id.
    pub fn method(&self, id: MethodId) -> Option<&MethodInfo> {
        self.methods.iter().find(|m| m.id == id)
    }

    /// The method named `name`.
    pub fn method_named(&self, name: &str) -> Option<&MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// What a caller of a method waits for. Part of the interface's contract (a caller and a host
/// that disagree are incompatible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// A call: its caller waits for a value, an application error or a typed failure.
    Call,
    /// A one-way call (`#[one_way]`): no response; done once queued.
    OneWay,
    /// A stream (`-> GrainStream<T>`): its caller reads items as the grain produces them,
    /// under flow control, until a typed end.
    Stream,
}

/// How a method's messages travel. Part of the interface's contract (its signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryClass {
    /// Retransmitted until acknowledged, in the order made with the grain's other reliable
    /// calls from the same caller (the default).
    ReliableOrdered,
    /// `#[unreliable]`: sent once, never retransmitted; may arrive out of order or not at all
    /// (a lost request or answer of a call with a result ends in `Timeout` at its deadline).
    /// No order with the grain's reliable calls. Must fit one datagram.
    Unreliable,
    /// `#[sequenced]`: a one-way update, sent once, latest wins: an update older than one
    /// already delivered for the same (caller, grain, method) is dropped, and a queued, not
    /// yet started older one is replaced by the newer (a busy grain runs only the latest).
    /// Updates to other grains or methods never drop each other. No order with the grain's
    /// reliable calls. Must fit one datagram.
    Sequenced,
}

impl DeliveryClass {
    /// Sent once, never retransmitted.
    pub fn is_unreliable(self) -> bool {
        !matches!(self, Self::ReliableOrdered)
    }
}

/// One method of a grain interface.
#[derive(Debug)]
pub struct MethodInfo {
    /// The method's name.
    pub name: &'static str,
    /// Its id (from its name).
    pub id: MethodId,
    /// Hash of its signature (name, argument and result types, kind): a caller and a host
    /// that agree on it agree on the method, whatever else their versions changed.
    pub signature: u64,
    /// What its caller waits for.
    pub kind: MethodKind,
    /// How its messages travel.
    pub delivery: DeliveryClass,
    /// Safe to run twice (`#[idempotent]`): sent again to another server (as the client's
    /// retry policy says) when its server is lost while the call is pending.
    pub idempotent: bool,
    /// Its effect and answer are kept with the grain's persisted state (`#[exactly_once]`):
    /// a call sent again after its server was lost (same call id) is answered from the record
    /// if it ran, and runs if it did not; the retry policy may send it again like an
    /// idempotent one.
    pub exactly_once: bool,
    /// It takes `&self` (a shared borrow of the grain).
    pub shared: bool,
    /// It may run while the grain awaits in a call of another `&self` method
    /// (`#[interleave]`; see GUIDE.md's "References and calls both ways" for its risks).
    pub interleave: bool,
    /// Its deadline if set on the method (`#[timeout_ms = N]`).
    pub timeout: Option<Duration>,
    /// Expected size of the encoded arguments, to size buffers.
    pub size_hint: usize,
}

/// A grain interface: implemented by each generated reference type (e.g. `PlayerRef`), which
/// names its interface wherever one is asked for (`Server::set_hosting::<PlayerRef>`).
pub trait Interface: 'static {
    /// The interface.
    fn info() -> &'static InterfaceInfo;
}
