//! A server's side of the grain directory: claiming a grain before its activation runs,
//! renewing the leases of the grains it holds well inside their TTL (`directory::Leases`),
//! releasing a grain when its activation ends, and letting go of grains whose lease it lost or
//! whose own lease was about to lapse unconfirmed.
//! Only activations talk to the directory (once when they start, once when they end); a call
//! to an active grain never does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::duration;
use crate::directory::{Claim, GrainDirectory, Leases, Owner};
use crate::proto::ids::{GrainId, ServerId};
use crate::proto::wire::rpc;

/// How a grain type uses the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectoryUse {
    /// One activation in the fleet while the directory answers; if it cannot be asked, the
    /// grain is activated here anyway (availability over uniqueness). The default.
    #[default]
    FallBack,
    /// One activation in the fleet, or none: if the directory cannot be asked, calls fail with
    /// `CallError::Unavailable` and nothing is activated.
    FailClosed,
    /// Not in the directory: any server activates it (stateless grains).
    Off,
}

/// A server's directory options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Whether grains are claimed in a directory: `None` (the default) uses one when the
    /// server has a Redis membership (`membership.redis`) or was given one
    /// (`ServerBuilder::directory`); `Some(false)` never.
    pub enabled: Option<bool>,
    /// A claim's lease: a server that dies loses its grains this long after its last
    /// renewal (or at once once it has left the membership). Default 30 s.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How long one directory request may take. Default 2 s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Redirects remembered (grain → owner) so that misrouted calls are redirected without
    /// asking the directory again; each for at most a lease. Default 10,000.
    pub remembered_redirects: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            lease: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            remembered_redirects: 10_000,
        }
    }
}

/// What an activation may do after asking the directory.
#[derive(Debug, Clone)]
pub(crate) enum Gate {
    /// Run here.
    Serve,
    /// Another live server owns it: answer every call with this redirect payload.
    Redirect(Owner, Bytes),
    /// The directory could not be asked and the type fails closed.
    Unavailable,
}

/// What a server knows of its peers' health: through its own fleet client, which keeps a
/// session to every server of the fleet and judges one dead after its `health_timeout` of
/// silence (see `grains::FleetCalls`).
pub(crate) trait PeerHealth: Send + Sync + 'static {
    /// Whether the server reached at `endpoint` was lost (or never reached) and is not back.
    fn unreachable(&self, endpoint: &crate::proto::addr::ServerAddr) -> bool;
    /// Servers in the fleet, this one included.
    fn fleet_size(&self) -> usize;
    /// The servers it has known (their ids and where it reached them), dead ones included.
    fn known(&self) -> Vec<(ServerId, crate::proto::addr::ServerAddr)>;
}

/// How often a server looks at its peers' health to vote for the dead ones.
const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// How long a vote that a peer is dead counts.
const VOTE_TTL: Duration = Duration::from_secs(10);

/// The grains this server holds in the directory (their leases), and how it uses it.
pub(crate) struct Claims {
    pub(crate) leases: Arc<Leases>,
    /// Its peers' health, to take over the grains of one found dead.
    peers: std::sync::OnceLock<Arc<dyn PeerHealth>>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims").field("me", self.leases.owner()).finish_non_exhaustive()
    }
}

/// The payload of a redirect to `owner`.
pub(crate) fn redirect_payload(owner: &Owner) -> Bytes {
    let mut out = Vec::with_capacity(32);
    rpc::encode_redirect(&mut out, &owner.server.0, &owner.endpoint.to_string());
    Bytes::from(out)
}

impl Claims {
    pub(crate) fn new(
        directory: Arc<dyn GrainDirectory>,
        me: Owner,
        config: DirectoryConfig,
    ) -> Self {
        let leases = Arc::new(Leases::new(directory, me, config.lease, config.timeout));
        Self { leases, peers: std::sync::OnceLock::new() }
    }

    /// What it learns its peers' health from.
    pub(crate) fn set_peers(&self, peers: Arc<dyn PeerHealth>) {
        let _ = self.peers.set(peers);
    }

    /// The directory.
    pub(crate) fn directory(&self) -> &Arc<dyn GrainDirectory> {
        self.leases.directory()
    }

    /// Claims `grain` before it is activated here.
    pub(crate) async fn claim(&self, grain: &GrainId, how: DirectoryUse) -> Gate {
        if how == DirectoryUse::Off {
            return Gate::Serve;
        }
        let mut claim = self.leases.claim(grain).await;
        if let Ok(Claim::Owned(owner)) = &claim
            && self.dead(owner).await
        {
            // Its owner was declared dead (its grains released): claim it again.
            claim = self.leases.claim(grain).await;
        }
        match claim {
            Ok(Claim::Won) => Gate::Serve,
            Ok(Claim::Owned(owner)) => {
                let payload = redirect_payload(&owner);
                Gate::Redirect(owner, payload)
            }
            Err(error) => self.unavailable(grain, how, &error.to_string()),
        }
    }

    /// Watches its peers for ever (the task ends with its server): every peer it finds
    /// unreachable gets its vote (see [`dead`](Self::dead)), whether or not a call needed one
    /// of its grains, so that a quorum forms even when only one server is asked for them.
    pub(crate) async fn watch_peers(self: Arc<Self>) {
        loop {
            tokio::time::sleep(WATCH_PERIOD).await;
            let Some(peers) = self.peers.get().cloned() else { continue };
            for (server, endpoint) in peers.known() {
                if server != self.leases.owner().server && peers.unreachable(&endpoint) {
                    self.dead(&Owner { server, endpoint }).await;
                }
            }
        }
    }

    /// Whether `owner`, found owning a grain, is dead: this server finds it unreachable, votes
    /// so, and the votes of its peers make a quorum (two servers; one in a fleet of two), so
    /// one slow link never takes a live server's grains. Then the directory released its
    /// grains.
    async fn dead(&self, owner: &Owner) -> bool {
        let Some(peers) = self.peers.get() else { return false };
        if owner.server == self.leases.owner().server || !peers.unreachable(&owner.endpoint) {
            return false;
        }
        let quorum = if peers.fleet_size() <= 2 { 1 } else { 2 };
        let me = &self.leases.owner().server;
        match self.directory().suspect(&owner.server, me, quorum, VOTE_TTL).await {
            Ok(dead) => {
                if dead {
                    tracing::warn!(server = %owner.server, "declared dead by its peers: its grains are taken over");
                }
                dead
            }
            Err(error) => {
                tracing::debug!(%error, "could not vote in the directory");
                false
            }
        }
    }

    fn unavailable(&self, grain: &GrainId, how: DirectoryUse, why: &str) -> Gate {
        match how {
            DirectoryUse::FailClosed => {
                tracing::warn!(%grain, why, "grain directory unavailable: not activated");
                Gate::Unavailable
            }
            _ => {
                tracing::warn!(%grain, why, "grain directory unavailable: activated here anyway");
                Gate::Serve
            }
        }
    }

    /// The activation of `grain` ended: let the directory know (best effort; the lease lapses
    /// anyway).
    pub(crate) async fn release(&self, grain: &GrainId) {
        self.leases.release(grain).await;
    }

    /// Renews the held leases as `Leases::run` does; tells `lost` the grains this server no
    /// longer owns (their activations end before another server may take them over).
    pub(crate) async fn renew_forever(self: Arc<Self>, lost: impl Fn(Vec<GrainId>) + Send) {
        self.leases.clone().run(lost).await;
    }
}
