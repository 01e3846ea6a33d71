//! Pulling objects between nodes (API skeleton; implementation follows).

use lumen_transport::{Endpoint, Rank};

use crate::{NodeArena, ObjectId, ObjectStoreError, ObjectView};

/// First tag of the object-store protocol range (top nibble `0xB`).
pub const OBJECT_TAG_BASE: u64 = 0xB000_0000_0000_0000;
/// Tag of chunk requests (served by [`ObjectServer`]'s handler).
pub const PULL_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 1;

/// How a pull moves its object.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Bytes per chunk request. Default 8 MiB.
    pub chunk_bytes: u64,
    /// Chunk requests kept outstanding. Default 4.
    pub window: u32,
    /// Mark the local copy evictable (it is a secondary copy). Default true.
    pub evictable: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            chunk_bytes: 8 << 20,
            window: 4,
            evictable: true,
        }
    }
}

/// Serves chunk requests for objects of the local arena.
#[derive(Debug)]
pub struct ObjectServer {
    _private: (),
}

impl ObjectServer {
    /// Registers the chunk-request handler on `endpoint`.
    pub fn register(endpoint: &Endpoint, arena: &NodeArena) -> Result<Self, ObjectStoreError> {
        let _ = (endpoint, arena);
        todo!()
    }
}

/// Pulls object `id` of `len` bytes from rank `from` into `arena`.
pub fn pull(
    arena: &NodeArena,
    endpoint: &Endpoint,
    from: Rank,
    id: ObjectId,
    len: u64,
    options: &PullOptions,
) -> Result<ObjectView, ObjectStoreError> {
    let _ = (arena, endpoint, from, id, len, options);
    todo!()
}
