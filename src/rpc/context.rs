//! Who is calling: the caller of each call, as its host knows it (its address and, with a
//! verified connect token, its identity), available to the method that runs it ([`caller`]).
//! Whoever hosts a grain sets it around each call.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::proto::ids::ServerId;
use crate::transport::ClientIdentity;

tokio::task_local! {
    /// The caller of the grain call being run (set around each call's future).
    static CALLER: Caller;
}

/// Who made a call: its address and, when it connected with a verified connect token, its
/// identity (a player's client id and user data, or the server id of another game server's
/// grain-to-grain client). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    addr: SocketAddr,
    identity: Option<Arc<ClientIdentity>>,
}

impl Caller {
    pub(crate) fn new(addr: SocketAddr, identity: Option<Arc<ClientIdentity>>) -> Self {
        Self { addr, identity }
    }

    /// The address the call came from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity its connect token gave (`None` on a trusted network: nobody proved who
    /// they are).
    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_deref()
    }

    /// The player's client id, as the backend put it in the token (`None` without a token, and
    /// for another server's grain-to-grain calls).
    pub fn client_id(&self) -> Option<u64> {
        self.identity().filter(|i| i.server_id.is_none()).map(|i| i.client_id)
    }

    /// The token's application data (empty without a token).
    pub fn user_data(&self) -> &[u8] {
        self.identity().map_or(&[], |i| &i.user_data)
    }

    /// For a grain-to-grain call from another game server: its id.
    pub fn server_id(&self) -> Option<&ServerId> {
        self.identity().and_then(|i| i.server_id.as_ref())
    }
}

/// The caller of the grain call this code runs in: call it from a grain method (or anything it
/// awaits on its own task). `None` outside a call (activation hooks, spawned tasks).
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// Runs `call` with `caller` as its [`caller`].
pub(crate) fn scope<F: Future>(caller: Caller, call: F) -> impl Future<Output = F::Output> {
    CALLER.scope(caller, call)
}
