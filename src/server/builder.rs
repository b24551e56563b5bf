//! Building a [`Server`]: the grain types it hosts, its directory, its token keys and approval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::grains::FleetNet;
use super::{AuthConfig, Host, Registered, Server, ServerConfig, ServerError};
use crate::directory::GrainDirectory;
use crate::error::BindError;
use crate::proto::ids::ServerId;
use crate::proto::rng::SplitMix64;
use crate::proto::token::TokenKey;
use crate::transport::io::UdpOptions;
use crate::transport::{Approve, ClientIdentity, Security};

/// What `ServerBuilder::prepare` gives `Server::start`.
type Prepared = (ServerConfig, Vec<Registered>, ServerId, Stores, Security);

/// Where a server keeps what outlives it, when it is given one: its grain directory and its
/// reminders.
#[derive(Default)]
pub(crate) struct Stores {
    pub(crate) directory: Option<Arc<dyn GrainDirectory>>,
    pub(crate) reminders: Option<crate::persistence::Reminders>,
}

/// Builds a [`Server`].
#[must_use = "a builder does nothing until `bind`"]
pub struct ServerBuilder {
    config: ServerConfig,
    hosts: Vec<(Host, bool)>,
    directory: Option<Arc<dyn GrainDirectory>>,
    reminders: Option<crate::persistence::Reminders>,
    keys: Vec<TokenKey>,
    approve: Option<Arc<dyn Approve>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("hosts", &self.hosts)
            .field("keys", &self.keys)
            .field("approve", &self.approve.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn GrainDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrainDirectory")
    }
}

impl ServerBuilder {
    pub(super) fn new(config: ServerConfig) -> Self {
        Self {
            config,
            hosts: Vec::new(),
            directory: None,
            reminders: None,
            keys: Vec::new(),
            approve: None,
        }
    }

    /// Claims grains in `directory` before activating them (one activation per grain among
    /// the servers that share it), e.g. one `Arc<MemoryDirectory>` for the servers of one
    /// process. Without it, a server with a Redis membership uses a directory in that Redis.
    pub fn directory(mut self, directory: Arc<dyn GrainDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Where this server's grains keep their reminders (`GrainContext::remind`), and looks
    /// for due ones: `Reminders::memory()` (shared by the servers of one process by cloning it)
    /// or `Reminders::redis(..)` (the fleet's). Without it, grains cannot set reminders.
    pub fn reminders(mut self, reminders: crate::persistence::Reminders) -> Self {
        self.reminders = Some(reminders);
        self
    }

    /// Requires connect tokens sealed with one of `keys` (with those of `ServerConfig::auth`,
    /// if any): clients without a valid token naming this server are refused, and every
    /// session's packets are protected.
    pub fn token_keys(mut self, keys: impl IntoIterator<Item = TokenKey>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// The application's approval of each client whose token was verified (its id and user
    /// data): `Err(code)` refuses it, and its connect fails with
    /// `Rejection::Application { code }`. Runs in the endpoint's task before the session
    /// exists: keep it quick. Only with tokens (a trusted network has no identities).
    pub fn approve(
        mut self,
        approve: impl Fn(&ClientIdentity) -> Result<(), u16> + Send + Sync + 'static,
    ) -> Self {
        self.approve = Some(Arc::new(approve));
        self
    }

    /// Hosts a grain type.
    pub fn host(mut self, host: Host) -> Self {
        self.hosts.push((host, true));
        self
    }

    /// Registers a grain type without hosting it yet: it is not in the manifest until
    /// [`Server::set_hosting`] turns it on.
    pub fn register(mut self, host: Host) -> Self {
        self.hosts.push((host, false));
        self
    }

    fn prepare(self) -> Result<Prepared, ServerError> {
        let directory = self.directory;
        let mut config = self.config;
        let mut keys = config.auth.load_keys()?;
        keys.extend(self.keys);
        if keys.is_empty() && matches!(config.auth, AuthConfig::Tokens { .. }) {
            return Err(ServerError::Config("auth mode `tokens` needs at least one key"));
        }
        if keys.is_empty() && self.approve.is_some() {
            return Err(ServerError::Config("`approve` needs token keys (no identities without)"));
        }
        let security = Security {
            keys,
            names: Vec::new(), // known once bound
            tokens_remembered: config.auth.tokens_remembered(),
            approve: self.approve,
            token: None,
            mint: None,
            cluster: crate::proto::ids::cluster_tag(&config.cluster_id, &config.service_id),
        };
        config.transport.accept_incoming = true;
        config.transport.validate().map_err(BindError::from)?;
        config.membership.validate().map_err(ServerError::Config)?;
        let server_id = match &config.server_id {
            Some(id) => ServerId::new(id.as_str()),
            None => ServerId::new(format!(
                "{:016x}",
                SplitMix64::new(crate::sync::os_seed()).next_u64()
            )),
        };
        let mut registry: Vec<Registered> = Vec::new();
        for (h, hosted) in self.hosts {
            if registry.iter().any(|r| r.info.grain_type == h.info.grain_type) {
                return Err(ServerError::DuplicateGrainType(h.info.name));
            }
            h.check()?;
            let (host, hosted) = (registry.len(), Arc::new(AtomicBool::new(hosted)));
            for (slot, info) in h.interfaces().enumerate() {
                registry.push(Registered {
                    info,
                    spawn: h.spawn.clone(),
                    slot: u8::try_from(slot)
                        .map_err(|_| ServerError::Config("a host serves at most 256 interfaces"))?,
                    host,
                    hosted: hosted.clone(),
                    directory: h.directory,
                    authorize: h.authorize.clone(),
                    idle: h.idle,
                });
            }
        }
        let stores = Stores { directory, reminders: self.reminders };
        Ok((config, registry, server_id, stores, security))
    }

    /// Starts the server on a UDP socket at `addr`, on the current tokio runtime.
    pub fn bind(self, addr: SocketAddr) -> Result<Server, ServerError> {
        let (config, registry, server_id, stores, security) = self.prepare()?;
        let options = UdpOptions::from(&config.transport);
        let io = crate::transport::io::UdpIo::bind(addr, options).map_err(BindError::from)?;
        let net = FleetNet::Udp { options };
        Server::start(io, net, config, registry, server_id, stores, security)
    }

    /// Starts the server on a UDP socket the application bound (to learn the port the OS
    /// picked for `:0` before naming the server, or to bind it its own way).
    pub fn bind_socket(self, socket: std::net::UdpSocket) -> Result<Server, ServerError> {
        let (config, registry, server_id, stores, security) = self.prepare()?;
        let options = UdpOptions::from(&config.transport);
        let io = crate::transport::io::UdpIo::from_std(socket, options).map_err(BindError::from)?;
        let net = FleetNet::Udp { options };
        Server::start(io, net, config, registry, server_id, stores, security)
    }

    /// Starts the server on the simulated network at `addr`.
    #[cfg(feature = "test-util")]
    pub fn bind_sim(
        self,
        net: &crate::transport::sim::SimNetwork,
        addr: SocketAddr,
    ) -> Result<Server, ServerError> {
        let (config, registry, server_id, stores, security) = self.prepare()?;
        let io = net.bind_io(addr).map_err(BindError::from)?;
        let net = FleetNet::Sim(net.clone());
        Server::start(io, net, config, registry, server_id, stores, security)
    }
}
