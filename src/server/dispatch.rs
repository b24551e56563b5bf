//! Hosting an interface: the `Dispatch` trait `#[grain]` implements and the encoders its code
//! calls live in the role-neutral `rpc` layer (whoever hosts a grain uses them); a server
//! hosts one with [`host`].

use super::Host;
use super::activation::{Alone, Beside};
use super::make::{Plain, WithState};
use crate::persistence::{Persisted, Stateful, Storage};
use crate::proto::ids::GrainId;
pub use crate::rpc::dispatch::{Dispatch, Reply, decode_args, encode_app_err, encode_ok};

/// A [`Host`] for interface `I` implemented by `G`, each activation made by `factory`.
pub fn host<I, G, F>(factory: F) -> Host
where
    I: Dispatch<G>,
    G: Send + 'static,
    F: Fn(&GrainId) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, _, Alone>(Plain(factory))
}

/// A [`Host`] for interface `I`, which has `#[interleave]` methods, implemented by `G`: its
/// `&self` calls run on a shared borrow of the grain, beside interleaving calls.
pub fn host_interleaving<I, G, F>(factory: F) -> Host
where
    I: Dispatch<G>,
    G: Send + Sync + 'static,
    F: Fn(&GrainId) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, _, Beside>(Plain(factory))
}

/// A [`Host`] for interface `I` implemented by `G`, a grain with persisted state: each
/// activation's state is loaded from `storage` before its first call and given to
/// `factory`, and written when the activation ends if it changed.
pub fn host_with_state<I, G, F>(storage: Storage, factory: F) -> Host
where
    I: Dispatch<G>,
    G: Stateful,
    F: Fn(&GrainId, Persisted<G::State>) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, _, Alone>(WithState { storage, factory })
}

/// [`host_with_state`] for an interface with `#[interleave]` methods.
pub fn host_with_state_interleaving<I, G, F>(storage: Storage, factory: F) -> Host
where
    I: Dispatch<G>,
    G: Stateful + Sync,
    F: Fn(&GrainId, Persisted<G::State>) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, _, Beside>(WithState { storage, factory })
}
