//! The token gate: which keys open tokens, which names this server answers to, and the replay
//! guard that binds each token to the address that proved it holds the token's secrets.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

use smallvec::SmallVec;

use super::Admitted;
use crate::proto::addr::ServerAddr;
use crate::proto::token::{ConnectToken, TokenError, TokenKey, token_id};
use crate::proto::wire::RejectReason;

/// Tokens a gate remembers at most (the replay guard's bound) unless told otherwise.
pub const DEFAULT_TOKENS_REMEMBERED: usize = 65_536;
/// Tokens remembered per client id: a player holding many tokens cannot crowd out others'.
pub const TOKENS_PER_CLIENT: usize = 4;
/// How far in the future a token's issue time may be (the backend's clock ahead of ours).
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Where a token is bound: the address of its session that proved it holds the secrets.
#[derive(Debug, Clone, Copy)]
struct Binding {
    addr: SocketAddr,
    client_id: u64,
}

/// What a gate that requires connect tokens holds: the keys, the names this server answers to,
/// and the replay guard: each token's binding to the one address whose session proved it (see
/// [`Self::prove`]), until the token expires. At most `remembered` tokens, and
/// [`TOKENS_PER_CLIENT`] per client id, are remembered; beyond, the binding that expires first
/// (or the client's own oldest) is forgotten — never a refusal. A forgotten binding only means
/// that a later proof of that token from another address cannot close the old session (it
/// times out instead).
#[derive(Debug)]
pub struct TokenGate {
    keys: Vec<TokenKey>,
    names: Vec<ServerAddr>,
    /// Unix seconds at the gate's epoch (tokens' times are Unix seconds).
    pub(super) unix_at_epoch: u64,
    bound: HashMap<[u8; 12], Binding>,
    /// Token ids bound per client id, oldest first.
    per_client: HashMap<u64, SmallVec<[[u8; 12]; TOKENS_PER_CLIENT]>>,
    expiries: BinaryHeap<Reverse<(u64, [u8; 12])>>,
    remembered: usize,
}

impl TokenGate {
    /// Requires tokens sealed with one of `keys` naming one of `names`; the clock reads
    /// `unix_at_epoch` at the gate's epoch; at most `remembered` tokens are tracked at once.
    pub fn new(
        keys: Vec<TokenKey>,
        names: Vec<ServerAddr>,
        unix_at_epoch: u64,
        remembered: usize,
    ) -> Self {
        Self {
            keys,
            names,
            unix_at_epoch,
            bound: HashMap::new(),
            per_client: HashMap::new(),
            expiries: BinaryHeap::new(),
            remembered: remembered.max(1),
        }
    }

    /// Verifies `sealed` at `unix` (seconds). Binds nothing: see [`Self::prove`].
    pub(super) fn check(&mut self, unix: u64, sealed: &[u8]) -> Result<Admitted, RejectReason> {
        if sealed.is_empty() {
            return Err(RejectReason::TokenRequired);
        }
        let token = ConnectToken::open(sealed, &self.keys, unix).map_err(|e| match e {
            TokenError::UnknownKey | TokenError::BadSeal => RejectReason::WrongKey,
            TokenError::Expired => RejectReason::TokenExpired,
            TokenError::NotForThisServer => RejectReason::NotInToken,
            _ => RejectReason::BadToken,
        })?;
        if token.issued > unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(RejectReason::BadToken); // issued in the future: not a token of now
        }
        if !self.names.iter().any(|n| token.names(n)) {
            return Err(RejectReason::NotInToken);
        }
        let secrets = token.secrets();
        Ok(Admitted {
            token_id: token_id(sealed),
            kind: token.kind,
            client_id: token.client_id,
            expires: token.expires,
            user_data: token.user_data,
            secrets,
        })
    }

    /// The session at `addr` proved it holds the secrets of token `id` (of `client_id`, expiring
    /// at `expires`, Unix seconds), at `unix`: the token is bound to `addr` from now on.
    /// Returns the address it was bound to before, if another: that session (the player before
    /// a restart or a NAT rebinding) is over.
    pub fn prove(
        &mut self,
        id: [u8; 12],
        client_id: u64,
        expires: u64,
        addr: SocketAddr,
        unix: u64,
    ) -> Option<SocketAddr> {
        self.forget_expired(unix);
        if let Some(b) = self.bound.get_mut(&id) {
            let before = std::mem::replace(&mut b.addr, addr);
            return (before != addr).then_some(before);
        }
        let theirs = self.per_client.entry(client_id).or_default();
        if theirs.len() >= TOKENS_PER_CLIENT {
            let oldest = theirs.remove(0);
            self.bound.remove(&oldest);
        }
        theirs.push(id);
        while self.bound.len() >= self.remembered {
            let Some(Reverse((_, old))) = self.expiries.pop() else { break };
            self.forget(old);
        }
        self.bound.insert(id, Binding { addr, client_id });
        self.expiries.push(Reverse((expires, id)));
        None
    }

    fn forget(&mut self, id: [u8; 12]) {
        if let Some(b) = self.bound.remove(&id)
            && let Some(theirs) = self.per_client.get_mut(&b.client_id)
        {
            theirs.retain(|t| *t != id);
            if theirs.is_empty() {
                self.per_client.remove(&b.client_id);
            }
        }
    }

    fn forget_expired(&mut self, unix: u64) {
        while let Some(Reverse((expires, id))) = self.expiries.peek().copied()
            && expires <= unix
        {
            self.expiries.pop();
            self.forget(id);
        }
        // Entries of tokens forgotten early linger in the heap until they expire; rebuild it
        // when they outnumber the live ones.
        if self.expiries.len() > 2 * self.bound.len() + 1024 {
            let bound = &self.bound;
            self.expiries.retain(|Reverse((_, id))| bound.contains_key(id));
        }
    }

    /// Tokens bound by the replay guard now.
    pub fn remembered(&self) -> usize {
        self.bound.len()
    }

    /// The Unix time at `secs` on the gate's clock.
    pub fn unix(&self, secs: u64) -> u64 {
        self.unix_at_epoch + secs
    }
}
