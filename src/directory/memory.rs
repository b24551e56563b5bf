//! A grain directory in one process's memory: shared by the servers of one process (tests,
//! single-node games). Leases run on tokio's clock (virtual in tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, Claim, DirectoryError, GrainDirectory, Owner};
use crate::proto::ids::{GrainId, ServerId};
use crate::sync::lock;

/// A grain directory in memory. Clone the `Arc` it lives in to share it between servers.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    entries: Mutex<HashMap<GrainId, (Owner, Instant)>>,
    /// Votes that a server is dead: by whom, until when.
    votes: Mutex<HashMap<ServerId, HashMap<ServerId, Instant>>>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live entries now (for tests and statistics).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        lock(&self.entries).values().filter(|(_, until)| *until > now).count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl GrainDirectory for MemoryDirectory {
    fn lookup<'a>(
        &'a self,
        grain: &'a GrainId,
    ) -> BoxFuture<'a, Result<Option<Owner>, DirectoryError>> {
        let now = Instant::now();
        let found =
            lock(&self.entries).get(grain).filter(|(_, u)| *u > now).map(|(o, _)| o.clone());
        ready(Ok(found))
    }

    fn claim<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a Owner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DirectoryError>> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        let claim = match entries.get(grain) {
            Some((owner, until)) if *until > now && owner.server != me.server => {
                Claim::Owned(owner.clone())
            }
            _ => {
                entries.insert(grain.clone(), (me.clone(), now + lease));
                Claim::Won
            }
        };
        ready(Ok(claim))
    }

    fn renew<'a>(
        &'a self,
        grains: &'a [GrainId],
        me: &'a ServerId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<GrainId>, DirectoryError>> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        let mut lost = Vec::new();
        for g in grains {
            match entries.get_mut(g) {
                Some((owner, until)) if owner.server == *me && *until > now => *until = now + lease,
                _ => lost.push(g.clone()),
            }
        }
        ready(Ok(lost))
    }

    fn release<'a>(
        &'a self,
        grain: &'a GrainId,
        me: &'a ServerId,
    ) -> BoxFuture<'a, Result<(), DirectoryError>> {
        let mut entries = lock(&self.entries);
        if entries.get(grain).is_some_and(|(o, _)| o.server == *me) {
            entries.remove(grain);
        }
        ready(Ok(()))
    }

    fn suspect<'a>(
        &'a self,
        server: &'a ServerId,
        by: &'a ServerId,
        quorum: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        let now = Instant::now();
        let dead = {
            let mut votes = lock(&self.votes);
            let v = votes.entry(server.clone()).or_default();
            v.retain(|_, until| *until > now);
            v.insert(by.clone(), now + ttl);
            v.len() >= quorum.max(1)
        };
        if dead {
            let mut entries = lock(&self.entries);
            entries.retain(|_, (o, _)| o.server != *server);
        }
        ready(Ok(dead))
    }

    fn release_all<'a>(
        &'a self,
        server: &'a ServerId,
    ) -> BoxFuture<'a, Result<usize, DirectoryError>> {
        let mut entries = lock(&self.entries);
        let now = Instant::now();
        let mut released = 0;
        // Lapsed entries of anyone go too: nobody can renew them.
        entries.retain(|_, (o, until)| {
            let theirs = o.server == *server;
            released += usize::from(theirs && *until > now);
            !theirs && *until > now
        });
        ready(Ok(released))
    }
}
