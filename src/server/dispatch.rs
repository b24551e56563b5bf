//! Hosting an interface: the `Dispatch` trait `#[grain]` implements and the encoders its code
//! calls live in the role-neutral `rpc` layer (whoever hosts a grain uses them); a server
//! hosts one with [`host`].

use super::Host;
use crate::proto::ids::GrainId;
pub use crate::rpc::dispatch::{Dispatch, Reply, decode_args, encode_app_err, encode_ok};

/// A [`Host`] for interface `I` implemented by `G`, each activation made by `factory`.
pub fn host<I, G, F>(factory: F) -> Host
where
    I: Dispatch<G>,
    G: Send + 'static,
    F: Fn(&GrainId) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, F, super::activation::Alone>(factory)
}

/// A [`Host`] for interface `I`, which has `#[interleave]` methods, implemented by `G`: its
/// `&self` calls run on a shared borrow of the grain, beside interleaving calls.
pub fn host_interleaving<I, G, F>(factory: F) -> Host
where
    I: Dispatch<G>,
    G: Send + Sync + 'static,
    F: Fn(&GrainId) -> G + Send + Sync + 'static,
{
    Host::new::<I, G, F, super::activation::Beside>(factory)
}
