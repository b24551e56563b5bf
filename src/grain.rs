//! Grain references and the traits `#[grain]` generated code implements.
//!
//! A `#[grain]` trait `Player` yields a reference type `PlayerRef`:
//! `client.grain::<PlayerRef>(key)` makes one, and its methods are the trait's, returning
//! `Result<T, CallError>` (or `Result<T, CallError<E>>` for methods returning `Result<T, E>`).
//! Generated code reaches only [`crate::__private`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{CallFuture, Client, decode_outcome};
use crate::error::CallError;
use crate::proto::ids::{GrainId, GrainKey, GrainType, InterfaceId, MethodId};
use crate::proto::route::Affinity;

/// What a grain interface is, for routing and compatibility checks.
#[derive(Debug)]
pub struct InterfaceInfo {
    /// The trait's name (also the grain type's name).
    pub name: &'static str,
    /// The interface id.
    pub id: InterfaceId,
    /// The grain type implementing it.
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
}

/// One method of a grain interface.
#[derive(Debug)]
pub struct MethodInfo {
    /// The method's name.
    pub name: &'static str,
    /// Its id (from its name).
    pub id: MethodId,
    /// Reliable, no response (`#[one_way]`).
    pub one_way: bool,
    /// Safe to run twice (`#[idempotent]`): retried once on another server when its server
    /// dies or shuts down while the call is pending.
    pub idempotent: bool,
    /// Its deadline if set on the method (`#[timeout_ms = N]`).
    pub timeout: Option<Duration>,
    /// Expected size of the encoded arguments, to size buffers.
    pub size_hint: usize,
}

/// Implemented by each generated reference type (e.g. `PlayerRef`).
pub trait GrainInterface: Sized + Clone + Send + Sync + 'static {
    /// The interface.
    fn info() -> &'static InterfaceInfo;
    /// Wraps an untyped reference.
    fn from_grain_ref(r: GrainRef) -> Self;
    /// The untyped reference inside.
    fn grain_ref(&self) -> &GrainRef;
}

/// An untyped reference to one grain through one client: what generated references wrap.
#[derive(Debug, Clone)]
pub struct GrainRef {
    pub(crate) client: Client,
    pub(crate) info: &'static InterfaceInfo,
    pub(crate) id: GrainId,
    /// The ordered stream this grain's calls travel on: calls to one grain arrive in order,
    /// calls to different grains do not wait for each other.
    pub(crate) stream: u8,
    /// The grain id's stable hash: its placement under consistent hashing.
    pub(crate) hash: u64,
    pub(crate) timeout: Option<Duration>,
    pub(crate) affinity: Affinity,
}

impl GrainRef {
    pub(crate) fn new(client: Client, info: &'static InterfaceInfo, key: GrainKey) -> Self {
        let id = GrainId { ty: info.grain_type, key };
        // Stream 0 carries control frames; grains use 1..=255.
        let hash = id.stable_hash();
        let stream = 1 + (hash % 255) as u8;
        Self { client, info, id, stream, hash, timeout: None, affinity: Affinity::None }
    }

    /// The grain's id.
    pub fn id(&self) -> &GrainId {
        &self.id
    }

    /// The interface it is called through.
    pub fn interface(&self) -> &'static InterfaceInfo {
        self.info
    }

    /// The same reference with calls' deadline set to `timeout` (overriding the method's and
    /// the client's default).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self.clone() }
    }

    /// The same reference with calls routed by `affinity`: to a preferred server while it is
    /// available, or only to a required one.
    pub fn with_affinity(&self, affinity: Affinity) -> Self {
        Self { affinity, ..self.clone() }
    }

    /// The reference's affinity.
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }

    /// Calls a method that returns `T`.
    pub async fn call<A, T>(&self, method: &MethodInfo, args: &A) -> Result<T, CallError>
    where
        A: Serialize + ?Sized,
        T: for<'de> Deserialize<'de>,
    {
        let outcome = self.start(method, args).await?.await;
        // A method that returns no `Result` has no application error: the server never says
        // `AppError` for it, so one would mean client and server disagree on the interface.
        decode_outcome(outcome, self.info.version, |_| CallError::BadRequest)
    }

    /// Queues the call. A call that fails at once (no server to route it to, say) still
    /// yields once to the runtime before it returns, so a caller that retries in a loop never
    /// starves the tasks that would fix it (the connection pool reconnecting).
    async fn start<A: Serialize + ?Sized, E>(
        &self,
        method: &MethodInfo,
        args: &A,
    ) -> Result<CallFuture, CallError<E>> {
        match self.client.call_raw(self.info, method, self, args) {
            Ok(f) => Ok(f),
            Err(e) => {
                tokio::task::yield_now().await;
                Err(e.map_app(|never| match never {}))
            }
        }
    }

    /// Calls a method that returns `Result<T, E>`.
    pub async fn call_result<A, T, E>(
        &self,
        method: &MethodInfo,
        args: &A,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize + ?Sized,
        T: for<'de> Deserialize<'de>,
        E: for<'de> Deserialize<'de>,
    {
        let outcome = self.start(method, args).await?.await;
        decode_outcome(outcome, self.info.version, |payload| match postcard::from_bytes(payload) {
            Ok(e) => CallError::Application(e),
            Err(e) => CallError::Decode(crate::error::CodecError(e)),
        })
    }

    /// Sends a one-way call (reliable, in order with the grain's other calls, no response):
    /// done once queued behind the calls made before it. A call that fails yields once before
    /// it returns (see [`call`](Self::call)).
    pub async fn call_one_way<A: Serialize + ?Sized>(
        &self,
        method: &MethodInfo,
        args: &A,
    ) -> Result<(), CallError> {
        let queued = self.client.one_way_raw(self.info, method, self, args);
        if queued.is_err() {
            tokio::task::yield_now().await;
        }
        queued.map_err(|e| e.map_app(|never| match never {}))
    }
}

/// Support for the code `#[grain]` generates. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod private {
    use std::future::Future;

    use bytes::BytesMut;
    use serde::{Deserialize, Serialize};

    use crate::arena;
    use crate::proto::ids::RequestId;
    use crate::proto::wire::rpc;

    pub use crate::error::CallError;
    pub use crate::grain::{GrainInterface, GrainRef, InterfaceInfo, MethodInfo};
    pub use crate::proto::ids::{GrainId, GrainKey, GrainType, InterfaceId, MethodId, ServerId};
    pub use crate::proto::route::Affinity;
    pub use crate::proto::wire::rpc::Status;
    pub use crate::server::Host;
    pub use std::time::Duration;

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

    /// Server-side dispatch of one interface to a grain implementation `G`.
    pub trait Dispatch<G>: GrainInterface {
        /// Runs method `method` with postcard-encoded `args`, appending the encoded result (or
        /// application error) to `out`.
        fn dispatch<'a>(
            grain: &'a mut G,
            method: MethodId,
            args: &'a [u8],
            out: &'a mut Reply,
        ) -> impl Future<Output = Status> + Send + 'a;
        /// The activation hook.
        fn activate<'a>(grain: &'a mut G, id: &'a GrainId) -> impl Future<Output = ()> + Send + 'a;
        /// The deactivation hook.
        fn deactivate(grain: &mut G) -> impl Future<Output = ()> + Send + '_;
    }

    /// Decodes a method's argument tuple.
    pub fn decode_args<T: for<'de> Deserialize<'de>>(args: &[u8]) -> Result<T, Status> {
        postcard::from_bytes(args).map_err(|_| Status::BadRequest)
    }

    /// Where a dispatched method leaves its encoded answer: the whole response frame (header
    /// and value), built only when the caller waits for one.
    #[derive(Debug)]
    pub struct Reply {
        to: Option<RequestId>,
        frame: Option<BytesMut>,
    }

    impl Reply {
        /// An answer to request `to`; `None` for a one-way call (nothing is encoded).
        pub(crate) fn new(to: Option<RequestId>) -> Self {
            Self { to, frame: None }
        }

        /// The response frame, if a value or application error was encoded.
        pub(crate) fn take(&mut self) -> Option<BytesMut> {
            self.frame.take()
        }
    }

    /// Encodes a method's return value as the answer.
    pub fn encode_ok<T: Serialize + ?Sized>(out: &mut Reply, value: &T) -> Status {
        encode(out, value, Status::Ok)
    }

    /// Encodes a method's application error as the answer.
    pub fn encode_app_err<E: Serialize + ?Sized>(out: &mut Reply, error: &E) -> Status {
        encode(out, error, Status::AppError)
    }

    fn encode<T: Serialize + ?Sized>(out: &mut Reply, value: &T, status: Status) -> Status {
        let Some(id) = out.to else { return status }; // nobody waits for it
        let (frame, encoded) = arena::frame(64, |buf| {
            rpc::encode_response(buf, id, status);
            arena::encode(buf, value)
        });
        match encoded {
            Ok(()) => {
                out.frame = Some(frame);
                status
            }
            // A serde impl failed: report a bad request rather than send a partial value.
            Err(_) => Status::BadRequest,
        }
    }

    /// A [`Host`] for interface `I` implemented by `G`, each activation made by `factory`.
    pub fn host<I, G, F>(factory: F) -> Host
    where
        I: Dispatch<G>,
        G: Send + 'static,
        F: Fn(&GrainId) -> G + Send + Sync + 'static,
    {
        Host::new::<I, G, F>(factory)
    }
}
