//! How a server's grains call other grains and observers (and the references they make or
//! decode). Observers: over their clients' sessions with this server ([`ObserverCalls`]).
//! Grains: through the server's own client of its fleet, made on the first call. It follows the fleet this
//! server knows (its peers, or its Redis membership, itself included), so it routes as players'
//! clients do (same manifests, strategies and directory redirects); with token keys, it proves
//! to other servers that it is this server (a server token minted per connection, which
//! callees see as [`Caller::server_id`](super::Caller::server_id)). Its calls made while it is
//! still connecting its first servers wait for them, within their deadlines.
//!
//! The one module of `server` that names `client`: a server is a client of its fleet, and
//! `client` never names `server`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::service::{ObserverCall, ServerCmd};
use crate::client::{Client, ClientConfig, ConnectMode};
use crate::error::CallError;
use crate::proto::ids::{GrainKey, GrainType, InterfaceId, PeerId, RequestId, ServerId};
use crate::proto::token::TokenKey;
use crate::proto::topology::Topology;
use crate::rpc::call::{CallCell, CallKind};
use crate::rpc::encode::Request;
use crate::rpc::reference::{Calls, GrainRef};
use crate::topology::{DiscoveryError, Receiver, StreamingSource, TopologyStream};
use crate::transport::EndpointShared;
use crate::transport::io::UdpIo;

/// The network a server is on, where its fleet client's socket goes (beside the server's, on
/// its IP address).
#[derive(Debug, Clone)]
pub(crate) enum FleetNet {
    /// Real UDP, with this socket buffer size.
    Udp { options: crate::transport::io::UdpOptions },
    /// The simulated network.
    #[cfg(feature = "test-util")]
    Sim(crate::transport::sim::SimNetwork),
}

/// What the fleet client is made of.
#[derive(Debug)]
pub(crate) struct FleetSpec {
    pub(crate) net: FleetNet,
    /// The server's IP address (the client binds a port of its own there).
    pub(crate) ip: IpAddr,
    pub(crate) cluster_id: String,
    pub(crate) service_id: String,
    /// The deadline of a call whose method and reference give none (the server's
    /// `default_deadline`).
    pub(crate) default_timeout: Duration,
    /// The server's first token key and id, when it takes tokens.
    pub(crate) identity: Option<(TokenKey, ServerId)>,
    /// The fleet the server knows, now and at every change.
    pub(crate) fleet: watch::Receiver<Topology>,
}

/// The server's grains' way of calling grains ([`Calls`]): its fleet client, made on the first
/// call.
#[derive(Debug)]
pub(crate) struct FleetCalls {
    spec: FleetSpec,
    /// The client, once made (`None`: it could not be, and every call fails `NotConnected`).
    client: OnceLock<Option<Client>>,
    /// `client`'s seam.
    calls: OnceLock<Option<Arc<dyn Calls>>>,
    /// The servers its client has reached, by address (kept after they go: their ids name
    /// them in the directory's votes).
    seen: std::sync::Mutex<std::collections::HashMap<crate::proto::addr::ServerAddr, ServerId>>,
}

impl FleetCalls {
    pub(crate) fn new(spec: FleetSpec) -> Self {
        Self { spec, client: OnceLock::new(), calls: OnceLock::new(), seen: Default::default() }
    }

    /// The client's seam, making the client on first use.
    fn calls(&self) -> Option<&Arc<dyn Calls>> {
        self.calls.get_or_init(|| self.client().map(Client::calls)).as_ref()
    }

    fn client(&self) -> Option<&Client> {
        self.client
            .get_or_init(|| match self.start() {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::warn!(%error, "the server's fleet client could not start: grain-to-grain calls fail");
                    None
                }
            })
            .as_ref()
    }

    fn start(&self) -> Result<Client, crate::client::ClientError> {
        let spec = &self.spec;
        let config = ClientConfig {
            cluster_id: spec.cluster_id.clone(),
            service_id: spec.service_id.clone(),
            default_timeout: spec.default_timeout,
            mode: ConnectMode::Multi,
            ..ClientConfig::default()
        };
        let mut builder =
            Client::builder().config(config).streaming_source(FleetSource(spec.fleet.clone()));
        if let Some((key, id)) = &spec.identity {
            builder = builder.server_identity(key.clone(), id.clone());
        }
        let local = SocketAddr::new(spec.ip, 0);
        let bind = |e: std::io::Error| crate::client::ClientError::Bind(e.into());
        match &spec.net {
            FleetNet::Udp { options } => {
                builder.start_background(UdpIo::bind(local, *options).map_err(bind)?)
            }
            #[cfg(feature = "test-util")]
            FleetNet::Sim(net) => builder.start_background(net.bind_io(local).map_err(bind)?),
        }
    }

    /// Stops the client at once, if it was made: its sessions close and its pending calls
    /// fail.
    pub(crate) fn close(&self) {
        if let Some(Some(client)) = self.client.get() {
            client.close_now();
        }
    }

    /// Stops the client, if it was made, closing its sessions gracefully.
    pub(crate) async fn shutdown(&self) {
        if let Some(Some(client)) = self.client.get() {
            client.disconnect().await;
        }
    }
}

impl FleetCalls {
    /// Starts the client now (a server with a directory watches its peers' health through it).
    pub(crate) fn start_now(&self) {
        let _ = self.client();
    }
}

impl super::claims::PeerHealth for FleetCalls {
    fn unreachable(&self, endpoint: &crate::proto::addr::ServerAddr) -> bool {
        self.client.get().and_then(Option::as_ref).is_some_and(|c| c.unreachable(endpoint))
    }

    fn fleet_size(&self) -> usize {
        self.spec.fleet.borrow().nodes().len()
    }

    fn known(&self) -> Vec<(ServerId, crate::proto::addr::ServerAddr)> {
        let mut seen = crate::sync::lock(&self.seen);
        if let Some(Some(c)) = self.client.get() {
            for s in c.servers() {
                seen.insert(s.addr.into(), s.id);
            }
        }
        seen.iter().map(|(addr, id)| (id.clone(), addr.clone())).collect()
    }
}

impl Calls for FleetCalls {
    fn default_timeout(&self) -> Duration {
        self.spec.default_timeout
    }

    fn max_request(&self, class: crate::interface::DeliveryClass) -> usize {
        crate::client::max_request(&crate::config::TransportConfig::default(), class)
    }

    fn cell(&self) -> Arc<CallCell> {
        match self.calls() {
            Some(c) => c.cell(),
            None => Arc::new(CallCell::new()),
        }
    }

    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<Infallible>> {
        match self.calls() {
            Some(c) => c.submit(r, request, kind),
            None => Err(CallError::NotConnected),
        }
    }

    fn cancelled(&self, sent: Option<(PeerId, RequestId)>) {
        if let Some(c) = self.calls() {
            c.cancelled(sent);
        }
    }

    fn recycle(&self, cell: Arc<CallCell>) {
        if let Some(c) = self.calls() {
            c.recycle(cell);
        }
    }

    fn implements(&self, grain_type: GrainType, interface: InterfaceId) -> Option<bool> {
        self.calls().and_then(|c| c.implements(grain_type, interface))
    }

    fn stream_window(&self) -> u32 {
        self.calls().map_or(1, |c| c.stream_window())
    }

    fn credit(&self, to: (PeerId, RequestId), more: u32) {
        if let Some(c) = self.calls() {
            c.credit(to, more);
        }
    }
}

/// The fleet the server knows, as the topology source of its fleet client.
struct FleetSource(watch::Receiver<Topology>);

impl StreamingSource for FleetSource {
    fn seeds(&self) -> Vec<String> {
        vec!["this server's fleet".into()]
    }

    fn subscribe(&self, _seed: usize) -> TopologyStream {
        let mut fleet = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        // Ends when the client stops listening or the server is gone.
        tokio::spawn(async move {
            loop {
                let now = fleet.borrow_and_update().clone();
                if tx.send(Ok(now)).await.is_err() {
                    return;
                }
                if fleet.changed().await.is_err() {
                    let _ = tx.send(Err(DiscoveryError::StreamEnded)).await;
                    return;
                }
            }
        });
        Box::pin(Receiver(rx))
    }
}

/// How a server's grains call observers ([`Calls`]): over the sessions of the clients that
/// host them, through the server's service (see `service::observers`).
#[derive(Debug)]
pub(crate) struct ObserverCalls {
    pub(crate) cmds: crossbeam::channel::Sender<ServerCmd>,
    pub(crate) endpoint: Arc<EndpointShared>,
    pub(crate) default_timeout: Duration,
    pub(crate) max_request: usize,
}

impl ObserverCalls {
    fn command(&self, cmd: ServerCmd) -> bool {
        let sent = self.cmds.send(cmd).is_ok();
        if sent {
            self.endpoint.wake.notify();
        }
        sent
    }
}

impl Calls for ObserverCalls {
    fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    fn max_request(&self, class: crate::interface::DeliveryClass) -> usize {
        match class.is_unreliable() {
            true => crate::client::max_request(&self.endpoint.config, class),
            false => self.max_request,
        }
    }

    fn cell(&self) -> Arc<CallCell> {
        Arc::new(CallCell::new())
    }

    fn submit(
        &self,
        r: &GrainRef,
        request: Request<'_>,
        kind: CallKind<Arc<CallCell>>,
    ) -> Result<(), CallError<Infallible>> {
        let GrainKey::Id(key) = r.id().key else { return Err(CallError::ObserverGone) };
        if request.stream.is_some() {
            // Observers answer calls; a grain streams to a client, not the other way.
            return Err(CallError::UnknownMethod);
        }
        let (frame, flags, timeout) = (request.frame, request.flags, request.timeout);
        let class = request.method.delivery;
        let call = ObserverCall { key, stream: r.stream, frame, flags, timeout, kind, class };
        match self.command(ServerCmd::ObserverCall(call)) {
            true => Ok(()),
            // The server's task is gone.
            false => Err(CallError::ShuttingDown),
        }
    }

    fn cancelled(&self, sent: Option<(PeerId, RequestId)>) {
        if let Some((peer, id)) = sent {
            self.command(ServerCmd::ObserverCancel { peer, id });
        }
    }

    fn recycle(&self, _cell: Arc<CallCell>) {}

    /// Streams are never sent to observers (see `submit`).
    fn credit(&self, _to: (PeerId, RequestId), _more: u32) {}

    /// An observer implements the one interface its client hosts it as (`GrainRef::cast`
    /// checks that before asking).
    fn implements(&self, _: GrainType, _: InterfaceId) -> Option<bool> {
        None
    }
}
