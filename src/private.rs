//! What the code `#[grain]` generates reaches, and nothing else: the generated items name only
//! `::grainwire::__private`, and nothing in this crate imports this module. Not a public API:
//! it may change in any release.

pub use std::time::Duration;

pub use bytes::Bytes;

pub use crate::client::{GrainInterface, GrainRef};
pub use crate::error::{CallError, ReferenceError};
pub use crate::interface::{DeliveryClass, Interface, InterfaceInfo, MethodInfo, MethodKind};
pub use crate::persistence::{Persisted, Stateful, Storage};
pub use crate::proto::ids::{GrainId, GrainKey, GrainType, InterfaceId, MethodId, ServerId};
pub use crate::proto::route::Affinity;
pub use crate::proto::wire::rpc::Status;
pub use crate::rpc::context::SessionEnded;
pub use crate::rpc::dispatch::{
    Dispatch, Reply, SharedCall, decode_args, encode_app_err, encode_ok, encode_stream,
    encode_stream_result,
};
pub use crate::rpc::reference::Checked;
pub use crate::rpc::stream::{CallStream, GrainStream};
pub use crate::rpc::value::deserialize_typed;
pub use crate::server::Host;
pub use crate::server::dispatch::{
    host, host_interleaving, host_with_state, host_with_state_interleaving,
};
pub use serde;

/// The stable hash of a contract description.
pub const fn contract_hash(description: &str) -> u64 {
    crate::proto::siphash::stable_hash(description.as_bytes())
}

/// Fails compilation (as a constant evaluation error) if two methods share an id.
pub const fn assert_unique_method_ids(interface: &str, ids: &[MethodId]) {
    let mut i = 0;
    while i < ids.len() {
        let mut j = i + 1;
        while j < ids.len() {
            if ids[i].0 == ids[j].0 {
                let _ = interface;
                panic!(
                    "two methods of this #[grain] trait hash to the same method id: rename one, or give it #[id = N]"
                );
            }
            j += 1;
        }
        i += 1;
    }
}
