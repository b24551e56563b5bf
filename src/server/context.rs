//! Who may call: what a grain type's authorization ([`Host::authorize`]) decides about. The
//! caller itself ([`Caller`], [`caller`]) is the role-neutral `rpc::context`'s.
//!
//! [`Host::authorize`]: super::Host::authorize

use std::sync::Arc;

use crate::interface::MethodInfo;
use crate::proto::ids::GrainKey;
pub use crate::rpc::context::{
    Caller, GrainContext, SessionEnded, SessionId, Timer, caller, context,
};

/// What a grain type's authorization decides about: who calls which grain's which method.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// Who calls.
    pub caller: &'a Caller,
    /// The grain's key.
    pub key: &'a GrainKey,
    /// The method.
    pub method: &'a MethodInfo,
}

/// A grain type's authorization: `true` lets the call in, `false` answers it
/// `CallError::Unauthorized` before any activation.
pub(crate) type Authorize = Arc<dyn Fn(&CallInfo<'_>) -> bool + Send + Sync>;
