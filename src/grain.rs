//! Grains as users see them: interfaces, references and the testing seam, gathered from where
//! they live (`interface`, `client`, `server::dispatch`). Nothing in the crate imports this
//! module; it is the public face.
//!
//! A `#[grain]` trait `Player` yields a reference type `PlayerRef`:
//! `client.grain::<PlayerRef>(key)` makes one, and its methods are the trait's, returning
//! `Result<T, CallError>` (or `Result<T, CallError<E>>` for methods returning `Result<T, E>`).
//! [`stub`] makes one whose calls an [`Invoker`] answers, for tests without a network.

use std::sync::Arc;

pub use crate::client::{Answer, GrainInterface, GrainRef, Invocation, Invoked, Invoker};
pub use crate::error::ReferenceError;
pub use crate::interface::{Interface, InterfaceInfo, MethodInfo};
pub use crate::proto::ids::{InterfaceId, MethodId};
pub use crate::rpc::reference::Checked;

/// A typed reference to the grain with `key` whose calls `invoker` answers: game code that
/// holds references can be tested without a client, a server or a network.
pub fn stub<R: GrainInterface>(
    invoker: Arc<dyn Invoker>,
    key: impl Into<crate::proto::ids::GrainKey>,
) -> R {
    GrainRef::make(crate::rpc::reference::Via::Invoker(invoker), key.into())
}
