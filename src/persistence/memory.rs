//! State kept in this process's memory: one map, one lock held for an operation.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BoxFuture, Fence, StateError, StateStorage, Stored};
use crate::proto::ids::GrainId;
use crate::sync::lock;

#[derive(Debug, Default)]
struct Record {
    data: Option<Vec<u8>>,
    etag: u64,
    epoch: u64,
}

/// State in memory: outlives activations, not the process (tests, single-server games). Keeps
/// a record (its epoch) for every grain ever loaded.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    records: Mutex<HashMap<GrainId, Record>>,
}

impl MemoryStorage {
    /// Grains with a record.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// What is stored for `grain` (its encoded record), without taking an epoch: a peek for
    /// tests and tools, fencing no one.
    pub fn peek(&self, grain: &GrainId) -> Option<Vec<u8>> {
        lock(&self.records).get(grain).and_then(|r| r.data.clone())
    }

    /// Whether no grain has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fenced(
        &self,
        grain: &GrainId,
        fence: Fence,
        f: impl FnOnce(&mut Record),
    ) -> Result<u64, StateError> {
        let mut records = lock(&self.records);
        let r = records.entry(grain.clone()).or_default();
        if r.etag != fence.etag || r.epoch != fence.epoch {
            return Err(StateError::Conflict);
        }
        f(r);
        r.etag += 1;
        Ok(r.etag)
    }
}

impl StateStorage for MemoryStorage {
    fn load<'a>(&'a self, grain: &'a GrainId) -> BoxFuture<'a, Result<Stored, StateError>> {
        let mut records = lock(&self.records);
        let r = records.entry(grain.clone()).or_default();
        r.epoch += 1;
        let stored = Stored { data: r.data.clone(), fence: Fence { etag: r.etag, epoch: r.epoch } };
        Box::pin(std::future::ready(Ok(stored)))
    }

    fn write<'a>(
        &'a self,
        grain: &'a GrainId,
        data: &'a [u8],
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        let r = self.fenced(grain, fence, |r| r.data = Some(data.to_vec()));
        Box::pin(std::future::ready(r))
    }

    fn clear<'a>(
        &'a self,
        grain: &'a GrainId,
        fence: Fence,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        let r = self.fenced(grain, fence, |r| r.data = None);
        Box::pin(std::future::ready(r))
    }
}
