//! Where large values live: the interface between the runtime and the
//! bytes of objects too large to travel inline with a reply.
//!
//! [`ValueStore`] keeps each large value in this rank's memory, registered
//! with the endpoint as a one-sided region: a rank on the same node reads it
//! with a single `process_vm_readv` copy, a rank on another node through a
//! streamed one-sided get. `Outcome::Stored { rank, key, len }` names it.
//! The node arena of `lumen-objstore` (zero-copy views for every rank of the
//! node, spilling) is meant to replace this store behind the same three
//! calls: `store`, `fetch`, `release`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lumen_transport::{Endpoint, Rank, RegionKey};

use super::object_ref::Bytes;
use super::protocol::Outcome;

/// Values of this rank that others can read.
#[derive(Debug)]
pub(crate) struct ValueStore {
    endpoint: Endpoint,
    values: Mutex<HashMap<u64, Arc<[u8]>>>,
}

impl ValueStore {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        ValueStore {
            endpoint,
            values: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a copy of `bytes`; returns where it is.
    pub(crate) fn store(&self, bytes: &[u8]) -> Outcome {
        let bytes: Arc<[u8]> = Arc::from(bytes);
        let len = bytes.len() as u64;
        let key = self.endpoint.register_region(bytes.clone());
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.0, bytes);
        Outcome::Stored {
            rank: self.endpoint.rank(),
            key: key.0,
            len,
        }
    }

    /// The bytes at (`rank`, `key`): shared when they are ours, one copy otherwise.
    pub(crate) fn fetch(
        &self,
        rank: Rank,
        key: u64,
        len: u64,
    ) -> Result<Bytes, lumen_transport::TransportError> {
        if rank == self.endpoint.rank() {
            if let Some(bytes) = self
                .values
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                return Ok(Bytes::Shared(bytes.clone()));
            }
        }
        self.endpoint
            .get(rank, RegionKey(key), 0, len)
            .map(|v| Bytes::Owned(Arc::new(v)))
    }

    /// Frees a value of this rank.
    pub(crate) fn release(&self, key: u64) {
        self.endpoint.unregister_region(RegionKey(key));
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Values held now.
    pub(crate) fn len(&self) -> usize {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
