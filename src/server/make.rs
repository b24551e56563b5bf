//! How an activation's grain instance is made and let go: from a factory alone, or with its
//! persisted state loaded first and written when the activation ends (`host_with_state`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use std::sync::Arc;

use crate::persistence::{Persisted, Stateful, Storage};
use crate::proto::ids::GrainId;
use crate::proto::wire::rpc;
use crate::proto::wire::rpc::Status;
use crate::rpc::dispatch::Reply;
use crate::rpc::turns::Turn;

/// A future a maker returns.
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes and lets go of a grain type's instances.
pub(crate) trait Make<G>: Send + Sync + 'static {
    /// The instance for `id`; `Err` with what its calls are answered while it cannot be made
    /// (`HandlerPanicked`: the factory panicked; `Unavailable`: its state could not be
    /// loaded).
    fn make<'a>(&'a self, id: &'a GrainId) -> Boxed<'a, Result<G, Status>>;
    /// The activation ends: keep what must outlive it.
    fn unmake<'a>(&'a self, grain: &'a mut G) -> Boxed<'a, ()>;
    /// Whether the instance must be made anew before its next call (its state went stale).
    fn stale(&self, grain: &mut G) -> bool;
    /// Whether its instances keep state that `#[exactly_once]` calls are recorded with.
    fn durable(&self) -> bool;
    /// The answer recorded for `#[exactly_once]` call `call`, if it was applied.
    fn applied(&self, grain: &mut G, call: u64) -> Option<(Status, Vec<u8>)>;
    /// Records `#[exactly_once]` call `call`'s answer with the state and writes both (one round
    /// trip); false if that failed (the instance then starts over from what is stored, and the
    /// call's effect with it).
    fn record<'a>(
        &'a self,
        grain: &'a mut G,
        call: u64,
        answer: (Status, Vec<u8>),
    ) -> Boxed<'a, bool>;
}

/// Instances from a factory alone.
pub(crate) struct Plain<F>(pub(crate) F);

impl<G, F> Make<G> for Plain<F>
where
    G: Send + 'static,
    F: Fn(&GrainId) -> G + Send + Sync + 'static,
{
    fn make<'a>(&'a self, id: &'a GrainId) -> Boxed<'a, Result<G, Status>> {
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| (self.0)(id)));
        Box::pin(std::future::ready(made.map_err(|_| Status::HandlerPanicked)))
    }

    fn unmake<'a>(&'a self, _grain: &'a mut G) -> Boxed<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn stale(&self, _grain: &mut G) -> bool {
        false
    }

    fn durable(&self) -> bool {
        false
    }

    fn applied(&self, _grain: &mut G, _call: u64) -> Option<(Status, Vec<u8>)> {
        None
    }

    fn record<'a>(&'a self, _: &'a mut G, _: u64, _: (Status, Vec<u8>)) -> Boxed<'a, bool> {
        Box::pin(std::future::ready(false))
    }
}

/// Instances whose state is loaded from `storage` first (one round trip), given to the
/// factory, and written when the activation ends if it changed.
pub(crate) struct WithState<F> {
    pub(crate) storage: Storage,
    pub(crate) factory: F,
}

impl<G, F> Make<G> for WithState<F>
where
    G: Stateful,
    F: Fn(&GrainId, Persisted<G::State>) -> G + Send + Sync + 'static,
{
    fn make<'a>(&'a self, id: &'a GrainId) -> Boxed<'a, Result<G, Status>> {
        Box::pin(async move {
            let state = match self.storage.load::<G::State>(id).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(grain = %id, %error, "could not load the grain's state");
                    return Err(Status::Unavailable);
                }
            };
            std::panic::catch_unwind(AssertUnwindSafe(|| (self.factory)(id, state)))
                .map_err(|_| Status::HandlerPanicked)
        })
    }

    fn unmake<'a>(&'a self, grain: &'a mut G) -> Boxed<'a, ()> {
        Box::pin(async move {
            if let Err(error) = grain.state().write_if_changed().await {
                tracing::warn!(%error, "the grain's state was not written as it deactivated");
            }
        })
    }

    fn stale(&self, grain: &mut G) -> bool {
        grain.state().is_stale()
    }

    fn durable(&self) -> bool {
        true
    }

    fn applied(&self, grain: &mut G, call: u64) -> Option<(Status, Vec<u8>)> {
        let (status, answer) = grain.state().applied(call)?;
        Some((Status::from_bits(status).ok()?, answer.to_vec()))
    }

    fn record<'a>(
        &'a self,
        grain: &'a mut G,
        call: u64,
        (status, answer): (Status, Vec<u8>),
    ) -> Boxed<'a, bool> {
        Box::pin(async move {
            let state = grain.state();
            state.record_applied(call, status as u8, answer);
            match state.write().await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "an exactly-once call's answer was not recorded: the call is undone");
                    state.mark_stale();
                    false
                }
            }
        })
    }
}

/// Records an `#[exactly_once]` call's answer with the grain's state before it is sent: if
/// that fails, the call is undone (the instance starts over from storage) and answered
/// `Unavailable` (it did not take effect: its caller may send it again).
pub(crate) async fn record_once<G: Send + 'static>(
    g: &mut G,
    call: u64,
    status: Status,
    reply: &mut Reply,
    make: &Arc<dyn Make<G>>,
) -> Turn<Option<Status>> {
    let frame = reply.take();
    let payload = match frame.as_deref().map(rpc::decode_rpc) {
        Some(Ok(rpc::RpcFrame::Response { payload, .. })) => payload.to_vec(),
        _ => Vec::new(),
    };
    if make.record(g, call, (status, payload)).await {
        if let Some(frame) = frame {
            reply.restore(frame);
        }
        Turn::Done(Some(status))
    } else {
        Turn::Done(Some(Status::Unavailable))
    }
}
