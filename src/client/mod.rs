//! A client of one game server: connect, call grains through typed references, disconnect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use grainwire::client::{Client, ClientConfig};
//! let client = Client::connect("127.0.0.1:7777".parse()?, ClientConfig::default()).await?;
//! println!("connected to {:?}, hosting {} grain types",
//!     client.server_id(), client.manifest().map_or(0, |m| m.grains.len()));
//! # Ok(()) }
//! ```
//!
//! The client's endpoint task owns the correlation table: a call is queued to it, sent, and
//! completed by its response, by its deadline, or by the loss of the connection, whichever
//! comes first, always exactly once. Dropping a call's future cancels it locally and
//! tells the server.

mod cell;
pub(crate) mod service;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BufMut;
use crossbeam::queue::ArrayQueue;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use self::cell::{CallCell, Outcome};
use self::service::{ClientCmd, ClientService, PREFIX_GAP};
use crate::arena;
use crate::config::{TransportConfig, duration_ms};
use crate::error::{BindError, CallError, CodecError, ConnectError, DisconnectReason};
use crate::grain::{GrainRef, InterfaceInfo, MethodInfo};
use crate::proto::ids::{PeerId, ServerId};
use crate::proto::manifest::{Incompatibility, Manifest};
use crate::proto::stats::CallAccounting;
pub use crate::proto::stats::CallStats;
use crate::proto::wire::rpc::{self, CallHeader, Status};
use crate::sync::lock;
use crate::transport::{Connection, Delivery, Endpoint, EndpointShared};

/// Options of a [`Client`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The transport's options.
    pub transport: TransportConfig,
    /// A call's deadline when neither the method (`#[grain(timeout_ms = ..)]`) nor the call
    /// (`with_timeout`) sets one. Default 5 s.
    #[serde(with = "duration_ms")]
    pub default_timeout: Duration,
    /// How long `connect` waits for the handshake and the server's manifest. Default 5 s.
    #[serde(with = "duration_ms")]
    pub connect_timeout: Duration,
    /// Calls that may be pending at once; more fail at once with `CallError::Overloaded`.
    /// Default 65536.
    pub max_pending_calls: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            default_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_pending_calls: 65536,
        }
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The local endpoint could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The session could not be established.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session was established but the server sent no manifest in time.
    #[error("the server sent no manifest within the connect timeout")]
    NoManifest,
    /// The session ended before the manifest arrived.
    #[error("disconnected during the handshake: {0}")]
    Disconnected(DisconnectReason),
}

/// What the client's task publishes for call futures and `Client` methods.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) server: Option<ServerView>,
}

#[derive(Debug, Clone)]
pub(crate) struct ServerView {
    pub(crate) peer: PeerId,
    pub(crate) conn: Connection,
    pub(crate) manifest: Option<Arc<Manifest>>,
    pub(crate) gone: Option<DisconnectReason>,
}

/// State shared by `Client` handles, grain references and the client's task.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(crate) config: ClientConfig,
    endpoint: Mutex<Option<Endpoint>>,
    task: OnceLock<Arc<EndpointShared>>,
    cmds: crossbeam::channel::Sender<ClientCmd>,
    /// Published by the task, read by callers; held only to copy or replace a small value.
    view: Mutex<View>,
    changed: Notify,
    accounting: Mutex<CallAccounting>,
    pending: AtomicUsize,
    /// Finished calls' cells, reused by later calls (saves an allocation per call).
    spare_cells: ArrayQueue<Arc<CallCell>>,
}

impl ClientShared {
    /// Changes the published view and wakes whoever waits for a change.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut View)) {
        f(&mut lock(&self.view));
        self.changed.notify_waiters();
    }

    pub(crate) fn finished_one(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    fn wake(&self) {
        if let Some(t) = self.task.get() {
            t.wake.notify();
        }
    }

    /// Where a call on `iface` goes: the server session and the type's index there.
    fn target(
        &self,
        iface: &InterfaceInfo,
    ) -> Result<(PeerId, Connection, u32), CallError<Infallible>> {
        let view = lock(&self.view);
        let s = view.server.as_ref().ok_or(CallError::NotConnected)?;
        if let Some(reason) = s.gone {
            return Err(CallError::Disconnected(reason));
        }
        let m = s.manifest.as_ref().ok_or(CallError::NotConnected)?;
        let g = m.compatible(iface.grain_type, iface.id, iface.version, iface.contract).map_err(
            |e| match e {
                Incompatibility::Version { caller, server } => {
                    CallError::IncompatibleVersion { ours: caller, theirs: server }
                }
                Incompatibility::Contract { version } => {
                    CallError::IncompatibleVersion { ours: version, theirs: version }
                }
                _ => CallError::UnknownGrainType,
            },
        )?;
        Ok((s.peer, s.conn.clone(), g.index))
    }
}

/// A connection to one game server. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) shared: Arc<ClientShared>,
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

impl Client {
    /// Connects to the server at `addr` and waits for its manifest.
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        config.transport.validate().map_err(BindError::from)?;
        let io = crate::transport::io::UdpIo::bind(
            unspecified_for(addr),
            config.transport.socket_buffer_size,
        )
        .map_err(BindError::from)?;
        Self::start(io, addr, config).await
    }

    /// Connects over the simulated network, from `local` (port 0 picks one).
    #[cfg(feature = "test-util")]
    pub async fn connect_sim(
        net: &crate::transport::sim::SimNetwork,
        local: SocketAddr,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        config.transport.validate().map_err(BindError::from)?;
        let io = net.bind_io(local).map_err(BindError::from)?;
        Self::start(io, addr, config).await
    }

    async fn start(
        io: impl crate::transport::io::Io,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let (tx, rx) = crossbeam::channel::unbounded();
        let shared = Arc::new(ClientShared {
            config: config.clone(),
            endpoint: Mutex::new(None),
            task: OnceLock::new(),
            cmds: tx,
            view: Mutex::new(View::default()),
            changed: Notify::new(),
            accounting: Mutex::new(CallAccounting::new(Instant::now())),
            pending: AtomicUsize::new(0),
            spare_cells: ArrayQueue::new(SPARE_CELLS),
        });
        let s = shared.clone();
        let endpoint = Endpoint::start_service(io, config.transport, move |ep| {
            let _ = s.task.set(ep.clone());
            ClientService::new(s, rx)
        })?;
        let connecting = endpoint.connect(addr);
        let client = Self { shared: shared.clone() };
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnectError::Failed(DisconnectReason::Timeout).into()),
        };
        *lock(&shared.endpoint) = Some(endpoint);
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let view = lock(&shared.view);
                if let Some(s) = view.server.as_ref().filter(|s| s.peer == conn.peer_id()) {
                    if let Some(reason) = s.gone {
                        return Err(ClientError::Disconnected(reason));
                    }
                    if s.manifest.is_some() {
                        return Ok(client);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ClientError::NoManifest);
            }
        }
    }

    /// Whether the session is up and the server's manifest known.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.view)
            .server
            .as_ref()
            .is_some_and(|s| s.gone.is_none() && s.manifest.is_some())
    }

    /// The server's id, from its handshake.
    pub fn server_id(&self) -> Option<ServerId> {
        lock(&self.shared.view).server.as_ref()?.manifest.as_ref().map(|m| m.server_id.clone())
    }

    /// What the server hosts.
    pub fn manifest(&self) -> Option<Arc<Manifest>> {
        lock(&self.shared.view).server.as_ref()?.manifest.clone()
    }

    /// Why the session ended, if it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        lock(&self.shared.view).server.as_ref()?.gone
    }

    /// Call statistics of this connection.
    pub fn stats(&self) -> CallStats {
        let pending = self.shared.pending.load(Ordering::Acquire) as u64;
        lock(&self.shared.accounting).snapshot(pending)
    }

    /// The transport statistics of the session to the server.
    pub fn transport_stats(&self) -> Option<crate::transport::ConnectionStats> {
        lock(&self.shared.view).server.as_ref().map(|s| s.conn.stats())
    }

    /// A typed reference to the grain with `key`, e.g. `client.grain::<PlayerRef>(42)`.
    pub fn grain<R: crate::grain::GrainInterface>(
        &self,
        key: impl Into<crate::proto::ids::GrainKey>,
    ) -> R {
        R::from_grain_ref(GrainRef::new(self.clone(), R::info(), key.into()))
    }

    /// Closes the session (pending calls fail with `Disconnected`) and stops the endpoint.
    pub async fn disconnect(&self) {
        let endpoint = lock(&self.shared.endpoint).take();
        if let Some(mut ep) = endpoint {
            ep.close().await;
        }
    }

    /// Queues a call and returns the future of its outcome.
    pub(crate) fn call_raw<A: Serialize + ?Sized>(
        &self,
        iface: &InterfaceInfo,
        method: &MethodInfo,
        r: &GrainRef,
        args: &A,
    ) -> Result<CallFuture, CallError<Infallible>> {
        let shared = &self.shared;
        let (peer, conn, type_index) = shared.target(iface)?;
        let timeout = r.timeout.or(method.timeout).unwrap_or(shared.config.default_timeout);
        let call = CallHeader {
            type_index,
            version: iface.version,
            method: method.id,
            deadline_ms: Some(timeout.as_millis().min(u128::from(u32::MAX)) as u32),
            key: r.id.key.clone(),
        };
        let (frame, encoded) = arena::frame(PREFIX_GAP + 24 + method.size_hint, |out| {
            out.put_bytes(0, PREFIX_GAP);
            let flags = rpc::encode_request_body(out, &call);
            arena::encode(out, args).map(|()| flags)
        });
        let flags = encoded.map_err(|e| CallError::Encode(CodecError(e)))?;
        let max = conn.max_message_size(Delivery::reliable_ordered(r.stream));
        if frame.len() - PREFIX_GAP > max {
            return Err(CallError::TooLarge { size: frame.len() - PREFIX_GAP, max });
        }
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.config.max_pending_calls {
            shared.finished_one();
            return Err(CallError::Overloaded);
        }
        let cell = shared.spare_cells.pop().unwrap_or_else(|| Arc::new(CallCell::new()));
        let cmd =
            ClientCmd::Call { peer, frame, flags, stream: r.stream, timeout, cell: cell.clone() };
        // The receiver lives in the client's task; if it is gone, the cell says so below.
        if shared.cmds.send(cmd).is_err() {
            shared.finished_one();
            return Err(CallError::NotConnected);
        }
        shared.wake();
        Ok(CallFuture { cell, shared: shared.clone() })
    }

    /// Sends a one-way call: queued on the grain's ordered stream, no response.
    pub(crate) fn send_one_way<A: Serialize + ?Sized>(
        &self,
        iface: &InterfaceInfo,
        method: &MethodInfo,
        r: &GrainRef,
        args: &A,
    ) -> Result<(), CallError<Infallible>> {
        let (_, conn, type_index) = self.shared.target(iface)?;
        let call = CallHeader {
            type_index,
            version: iface.version,
            method: method.id,
            deadline_ms: None,
            key: r.id.key.clone(),
        };
        let (frame, encoded) = arena::frame(24 + method.size_hint, |out| {
            rpc::encode_call(out, None, &call);
            arena::encode(out, args)
        });
        encoded.map_err(|e| CallError::Encode(CodecError(e)))?;
        lock(&self.shared.accounting).total += 1;
        conn.send(Delivery::reliable_ordered(r.stream), frame.freeze()).map_err(|e| match e {
            crate::error::SendError::MessageTooLarge { size, max } => {
                CallError::TooLarge { size, max }
            }
            crate::error::SendError::BufferFull { .. } => CallError::Overloaded,
            _ => CallError::NotConnected,
        })
    }
}

/// How many finished calls' cells a client keeps for reuse.
const SPARE_CELLS: usize = 256;

/// A pending call. Dropping it before it completes cancels the call.
#[derive(Debug)]
pub(crate) struct CallFuture {
    cell: Arc<CallCell>,
    shared: Arc<ClientShared>,
}

impl Future for CallFuture {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.cell.poll(cx)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if !self.cell.is_finished() {
            if let Some(sent) = self.cell.cancel() {
                self.shared.finished_one();
                if let Some((peer, id)) = sent {
                    if self.shared.cmds.send(ClientCmd::Cancel { peer, id }).is_ok() {
                        self.shared.wake();
                    }
                }
            }
        }
        if let Some(cell) = Arc::get_mut(&mut self.cell) {
            // Nobody else holds the cell any more (the service let go of it): keep it for
            // another call.
            cell.reset();
            let _ = self.shared.spare_cells.push(self.cell.clone());
        }
    }
}

/// Turns a call's outcome into the method's result; `version` is the caller's interface
/// version (for `IncompatibleVersion`), `app` decodes an application error.
pub(crate) fn decode_outcome<T, E>(
    outcome: Outcome,
    version: u8,
    app: impl FnOnce(&[u8]) -> CallError<E>,
) -> Result<T, CallError<E>>
where
    T: for<'de> Deserialize<'de>,
{
    let (status, payload) = outcome.map_err(|e| e.map_app(|never| match never {}))?;
    match status {
        Status::Ok => postcard::from_bytes(&payload).map_err(|e| CallError::Decode(CodecError(e))),
        Status::AppError => Err(app(&payload)),
        other => Err(status_error(other, version, &payload)),
    }
}

/// The local error for a server status other than `Ok`/`AppError`.
pub(crate) fn status_error<E>(status: Status, version: u8, payload: &[u8]) -> CallError<E> {
    match status {
        Status::UnknownGrainType => CallError::UnknownGrainType,
        Status::UnknownMethod => CallError::UnknownMethod,
        Status::IncompatibleVersion => {
            // The server names its version in the payload.
            CallError::IncompatibleVersion {
                ours: version,
                theirs: payload.first().copied().unwrap_or(0),
            }
        }
        Status::DeadlineExceeded => CallError::DeadlineExceeded,
        Status::Overloaded => CallError::Overloaded,
        Status::HandlerPanicked => CallError::HandlerPanicked,
        Status::ShuttingDown => CallError::ShuttingDown,
        _ => CallError::BadRequest,
    }
}
