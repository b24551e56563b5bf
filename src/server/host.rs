//! What a server hosts: a grain type's [`Host`] (its interfaces, how its activations are made,
//! its directory use and authorization), and the registry entry each interface becomes.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::activation::{self, Spawn, Typed};
use super::claims::DirectoryUse;
use super::config::ServerError;
use super::context::{Authorize, CallInfo};
use super::dispatch::Dispatch;
use crate::interface::InterfaceInfo;

/// A grain type to host: made by the `host` function of a `#[grain]` trait, e.g.
/// `Player::host(|id| PlayerState::new(id))`.
pub struct Host {
    pub(super) info: &'static InterfaceInfo,
    pub(super) spawn: Arc<dyn Spawn>,
    pub(super) directory: DirectoryUse,
    pub(super) authorize: Option<Authorize>,
    pub(super) idle: Option<Duration>,
    /// Other interfaces of the grain (`with`), and whether the grain's type implements each.
    also: Vec<(&'static InterfaceInfo, bool)>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("grain", &self.info.name).finish()
    }
}

impl Host {
    pub(crate) fn new<I, G, F, T>(factory: F) -> Self
    where
        I: Dispatch<G>,
        G: Send + 'static,
        F: super::make::Make<G>,
        T: activation::Turns<I, G>,
    {
        let typed = Typed::<I, G, F, T> {
            factory: Arc::new(factory),
            extras: Arc::new([]),
            _types: PhantomData,
        };
        Self {
            info: I::info(),
            spawn: Arc::new(typed),
            directory: DirectoryUse::default(),
            authorize: None,
            idle: None,
            also: Vec::new(),
        }
    }

    /// Also serves interface `I` (another `#[grain]` trait the grain struct `G` implements)
    /// on the same activations: a grain type with several interfaces (a player that is also an
    /// inventory: `#[grain(grain_type = "Player")] trait Inventory`), or another version of
    /// the same interface (`#[grain(name = "Player", version = 1)] trait PlayerV1`, so
    /// callers that know a method as version 1 did are served while it changes). Every
    /// interface's calls run one at a time with the others' (`#[interleave]` methods are
    /// served only on the first interface), every interface's hooks run; the manifest lists
    /// each. The server refuses to start (`ServerError::Interface`) when `G` is not the struct
    /// the host was made for, `I` belongs to another grain type, is hosted twice, or has
    /// `#[interleave]` methods.
    ///
    /// ```
    /// # use grainwire::GrainId;
    /// #[grainwire::grain]
    /// trait Player { async fn name(&self) -> String; }
    /// #[grainwire::grain(grain_type = "Player")]
    /// trait Inventory { async fn items(&self) -> Vec<String>; }
    ///
    /// struct PlayerState;
    /// impl Player for PlayerState { async fn name(&self) -> String { "ann".into() } }
    /// impl Inventory for PlayerState { async fn items(&self) -> Vec<String> { vec![] } }
    ///
    /// let host = Player::host(|_: &GrainId| PlayerState).with::<InventoryRef, PlayerState>();
    /// # let _ = host;
    /// ```
    pub fn with<I: Dispatch<G>, G: Send + 'static>(mut self) -> Self {
        let extra: Box<dyn std::any::Any + Send> = Box::new(activation::Extra::<G>::of::<I>());
        // A host is built by value and shared only once the server starts: it is its
        // spawner's one owner here.
        let fits = Arc::get_mut(&mut self.spawn).is_some_and(|s| s.add(extra));
        self.also.push((I::info(), fits));
        self
    }

    /// Decides who may call this grain type's grains, per call: `false` answers the call
    /// `CallError::Unauthorized` before any activation (the grain is not activated for it).
    /// It sees the caller ([`Caller`](super::Caller): a verified client id and user data with
    /// tokens), the grain's key and the method, e.g. "a player may call only its own player
    /// grain":
    ///
    /// ```
    /// # use grainwire::{GrainKey, server::CallInfo};
    /// let own_grain_only = |call: &CallInfo<'_>| {
    ///     matches!(call.key, GrainKey::Int(k) if call.caller.client_id() == Some(*k as u64))
    /// };
    /// # let _ = own_grain_only;
    /// ```
    ///
    /// Runs in the server's endpoint task for every call to the type: keep it quick (compare,
    /// look up; no I/O).
    pub fn authorize(mut self, f: impl Fn(&CallInfo<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.authorize = Some(Arc::new(f));
        self
    }

    /// How this grain type uses the grain directory (default [`DirectoryUse::FallBack`]: one
    /// activation in the fleet while the directory answers). `Off` for stateless grains any
    /// server may activate; `FailClosed` for grains that must never have two activations.
    pub fn directory(mut self, how: DirectoryUse) -> Self {
        self.directory = how;
        self
    }

    /// How long this grain type's activations may stay idle before they are deactivated
    /// (default: the server's `idle_deactivation`, 5 min): a lobby kept for an hour, a
    /// short-lived match for ten seconds. A grain can also ask to be kept longer
    /// (`GrainContext::keep_alive`) or to go now (`GrainContext::deactivate`).
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// The interface it hosts first.
    pub fn interface(&self) -> &'static InterfaceInfo {
        self.info
    }

    /// Every interface it hosts: the first, then those given to [`with`](Self::with).
    pub fn interfaces(&self) -> impl Iterator<Item = &'static InterfaceInfo> + '_ {
        std::iter::once(self.info).chain(self.also.iter().map(|(i, _)| *i))
    }

    /// Why an interface given to `with` cannot be hosted, if one cannot.
    pub(super) fn check(&self) -> Result<(), ServerError> {
        let refuse = |i: &InterfaceInfo, reason| ServerError::Interface {
            interface: i.name,
            host: self.info.name,
            reason,
        };
        for i in self.interfaces() {
            if i.methods.iter().any(|m| m.exactly_once) && !self.spawn.durable() {
                return Err(refuse(
                    i,
                    "its #[exactly_once] methods record their answers with the grain's state: host it with state (`host_with_state`)",
                ));
            }
        }
        for (n, (i, fits)) in self.also.iter().enumerate() {
            if !fits {
                return Err(refuse(i, "`with` names another grain struct than the host's"));
            }
            if i.grain_type != self.info.grain_type {
                return Err(refuse(i, "it belongs to another grain type (`#[grain(grain_type)]`)"));
            }
            if self.interfaces().take(n + 1).any(|o| (o.id, o.version) == (i.id, i.version)) {
                return Err(refuse(i, "this interface and version is hosted twice"));
            }
            if i.methods.iter().any(|m| m.interleave) {
                return Err(refuse(
                    i,
                    "`#[interleave]` methods are served on the first interface only",
                ));
            }
        }
        Ok(())
    }
}

/// One registered interface of a grain type, at its index in the manifest.
pub(crate) struct Registered {
    pub(crate) info: &'static InterfaceInfo,
    pub(crate) spawn: Arc<dyn Spawn>,
    /// Which of its host's interfaces (0: the first; see `Job::iface`).
    pub(crate) slot: u8,
    /// The index of its host's first interface (whose entry stands for the grain type).
    pub(crate) host: usize,
    /// Whether it is hosted now (in the manifest, calls admitted): one flag per host.
    pub(crate) hosted: Arc<AtomicBool>,
    pub(crate) directory: DirectoryUse,
    pub(crate) authorize: Option<Authorize>,
    /// How long its activations may stay idle (`Host::idle_after`; else the server's).
    pub(crate) idle: Option<Duration>,
}
