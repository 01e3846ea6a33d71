//! Where large values live: the interface between the runtime and the
//! bytes of objects too large to travel inline with a reply.
//!
//! Three calls: [`ValueStore::store`] (a copy of the bytes, returns the
//! location as `Outcome::Stored`), [`ValueStore::fetch`] and
//! [`ValueStore::release`]. Two backends:
//!
//! - **The node arena** (`lumen-objstore`): one shared-memory segment per
//!   node, created by the node's first rank, mapped by the others. A value
//!   stored by any rank of the node is read by every rank of the node as a
//!   zero-copy view (`ObjectView`, pinned while alive); a rank on another
//!   node pulls it in pipelined chunks (`lumen_objstore::pull`) from any
//!   node holding a copy into its own arena (a secondary copy, marked
//!   evictable, under the same id) and reads it there. The runtime reports
//!   each pulled copy to the object's owner, which deletes every copy when
//!   the object is freed.
//! - **Process memory** (fallback when the arena is disabled with
//!   `LUMEN_ARENA_BYTES=0`, or full): the bytes stay in the storing rank's
//!   heap, registered as a one-sided region of the endpoint; other ranks
//!   read them with one `process_vm_readv` copy (same node) or a streamed
//!   one-sided get (other nodes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_objstore::{NodeArena, ObjectServer, ObjectStoreError, PullOptions};
use lumen_transport::{Endpoint, Rank, RegionKey};

use super::protocol::Outcome;
use std::ops::Deref;

/// Why a value could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The transport failed (the holder died...).
    #[error(transparent)]
    Transport(#[from] lumen_transport::TransportError),
    /// The arena or the pull failed.
    #[error(transparent)]
    Store(#[from] ObjectStoreError),
    /// The value is not where its location says.
    #[error("value {key} of rank {rank} is gone from the node arena")]
    Missing {
        /// The storing rank.
        rank: Rank,
        /// Its key.
        key: u64,
    },
}

/// The node arena of this rank and its pull server.
#[derive(Debug)]
pub(crate) struct Arena {
    arena: NodeArena,
    server: ObjectServer,
    /// This rank created the segment (and removes its name at the end).
    creator: bool,
    /// Where it spills (objects go to `{spill_dir}/{name}/`).
    spill_dir: std::path::PathBuf,
}

impl Arena {
    /// The node arena itself.
    pub(crate) fn node_arena(&self) -> &NodeArena {
        &self.arena
    }

    /// Creates (`creator`) or opens the arena `name` and serves pulls from it.
    pub(crate) fn attach(
        endpoint: &Endpoint,
        name: &str,
        capacity: u64,
        creator: bool,
        spill_dir: &std::path::Path,
        timeout: Duration,
    ) -> Result<Self, ObjectStoreError> {
        let arena = if creator {
            let options = lumen_objstore::ArenaOptions {
                spill_dir: Some(spill_dir.to_path_buf()),
                ..lumen_objstore::ArenaOptions::default()
            };
            NodeArena::create(name, capacity, options)?
        } else {
            NodeArena::open_wait(name, timeout)?
        };
        let server = ObjectServer::register(endpoint, &arena)?;
        Ok(Arena {
            arena,
            server,
            creator,
            spill_dir: spill_dir.to_path_buf(),
        })
    }

    /// (Creator) removes the segment's name once every rank of the node has
    /// mapped it, so that no crash can leave it in /dev/shm; the mappings
    /// stay valid.
    pub(crate) fn forget_name(&self) {
        if self.creator {
            let name = format!("/{}", self.arena.name());
            if let Err(e) = rustix::shm::unlink(name.as_str()) {
                tracing::warn!("removing the name of arena {name}: {e}");
            }
        }
    }
}

/// Values of this rank that others can read.
#[derive(Debug)]
pub(crate) struct ValueStore {
    endpoint: Endpoint,
    /// Node of every rank.
    nodes: Vec<u32>,
    arena: Option<Arena>,
    values: Mutex<HashMap<u64, Arc<[u8]>>>,
    next_key: AtomicU64,
    pull_chunk_bytes: u64,
    /// The NUMA node this rank is bound to: large objects it stores are
    /// asked for there (see `runtime/binding.rs`, "Memory").
    numa: Option<u32>,
    /// The one-sided fabric, set once after bootstrap (`runtime::fabric`).
    fabric: std::sync::OnceLock<super::fabric::Fabric>,
}

/// Arena ids: `hi` = storing rank + 1 (never nil), `lo` = its key.
fn arena_id(rank: Rank, key: u64) -> lumen_objstore::ObjectId {
    lumen_objstore::ObjectId::new(u64::from(rank) + 1, key)
}

impl ValueStore {
    pub(crate) fn new(
        endpoint: Endpoint,
        nodes: Vec<u32>,
        arena: Option<Arena>,
        pull_chunk_bytes: u64,
        numa: Option<u32>,
    ) -> Self {
        ValueStore {
            endpoint,
            nodes,
            arena,
            values: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            pull_chunk_bytes,
            numa,
            fabric: std::sync::OnceLock::new(),
        }
    }

    /// Pulls between nodes go through `fabric` from now on.
    pub(crate) fn attach_fabric(&self, fabric: super::fabric::Fabric) {
        let _ = self.fabric.set(fabric);
    }

    /// The one-sided fabric, once attached.
    #[cfg(feature = "cuda")]
    pub(crate) fn fabric(&self) -> Option<&super::fabric::Fabric> {
        self.fabric.get()
    }

    /// Objects pulled with one-sided reads so far.
    pub(crate) fn one_sided_pulls(&self) -> u64 {
        self.fabric.get().map_or(0, super::fabric::Fabric::pulls)
    }

    /// True when `rank` shares this rank's node (and arena).
    pub(crate) fn same_node(&self, rank: Rank) -> bool {
        let me = self.endpoint.rank();
        self.nodes.get(rank as usize) == self.nodes.get(me as usize)
    }

    /// Keeps a copy of `bytes`; returns where it is.
    pub(crate) fn store(&self, bytes: &[u8]) -> Outcome {
        let rank = self.endpoint.rank();
        let len = bytes.len() as u64;
        if let Some(arena) = &self.arena {
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            let stored = match self.numa {
                Some(node) if bytes.len() >= super::binding::NUMA_BIND_MIN => arena
                    .arena
                    .put_bytes_on_node(arena_id(rank, key), bytes, node),
                _ => arena.arena.put_bytes(arena_id(rank, key), bytes),
            };
            match stored {
                Ok(()) => {
                    return Outcome::Stored {
                        rank,
                        key,
                        len,
                        arena: true,
                    }
                }
                Err(e) => tracing::warn!(
                    rank,
                    "object arena refused {len} bytes ({e}); keeping them in process memory"
                ),
            }
        }
        let shared: Arc<[u8]> = Arc::from(bytes);
        let key = self.endpoint.register_region(shared.clone());
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.0, shared);
        Outcome::Stored {
            rank,
            key: key.0,
            len,
            arena: false,
        }
    }

    /// The bytes at (`rank`, `key`): a view of the arena, shared when they
    /// are ours, one copy (or a pull) otherwise. An arena value that is not
    /// on this node is pulled from the first of `sources` (ranks of other
    /// nodes holding a copy; the storing rank when empty) that serves it.
    /// The flag says whether this call pulled a new copy into the node's
    /// arena (which the owner must then learn about).
    /// Reads a stored value: from this node's arena (a view), this
    /// rank's memory, or another rank (pulled into the arena, or read with
    /// a get), and says what moved.
    pub(crate) fn fetch(
        &self,
        rank: Rank,
        key: u64,
        len: u64,
        in_arena: bool,
        sources: &[Rank],
    ) -> Result<(Bytes, bool, Moved), FetchError> {
        if in_arena {
            let Some(arena) = &self.arena else {
                return Err(FetchError::Missing { rank, key });
            };
            let id = arena_id(rank, key);
            if let Some(view) = arena.arena.get(id)? {
                return Ok((Bytes::View(Arc::new(view)), false, Moved::Nothing));
            }
            if self.same_node(rank) {
                return Err(FetchError::Missing { rank, key });
            }
            let primary = [rank];
            let sources = if sources.is_empty() {
                &primary[..]
            } else {
                sources
            };
            let mut last = None;
            for &source in sources {
                match self.pull(arena, source, id, len) {
                    Ok((bytes, how)) => return Ok((bytes, true, Moved::From(source, how))),
                    Err(e) => {
                        tracing::debug!(
                            rank = self.endpoint.rank(),
                            source,
                            "pulling {id:?} failed, trying the next copy: {e}"
                        );
                        last = Some(e);
                    }
                }
            }
            return Err(last.unwrap_or(FetchError::Missing { rank, key }));
        }
        if rank == self.endpoint.rank() {
            if let Some(bytes) = self
                .values
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                return Ok((Bytes::Shared(bytes.clone()), false, Moved::Nothing));
            }
        }
        let how = if self.same_node(rank) {
            "shm get"
        } else {
            "tcp get"
        };
        Ok((
            self.endpoint
                .get(rank, RegionKey(key), 0, len)
                .map(|v| Bytes::Owned(Arc::new(v)))?,
            false,
            Moved::From(rank, how),
        ))
    }

    fn pull(
        &self,
        arena: &Arena,
        rank: Rank,
        id: lumen_objstore::ObjectId,
        len: u64,
    ) -> Result<(Bytes, &'static str), FetchError> {
        let options = PullOptions {
            chunk_bytes: self.pull_chunk_bytes,
            ..PullOptions::default()
        };
        if let Some(fabric) = self.fabric.get() {
            match fabric.pull(&arena.arena, &self.endpoint, rank, id, len) {
                Some(Ok(view)) => return Ok((Bytes::View(Arc::new(view)), "one-sided pull")),
                // Another thread of this node pulls it: the loop below waits.
                Some(Err(ObjectStoreError::AlreadyExists { .. })) | None => {}
                Some(Err(e)) => tracing::warn!(
                    rank = self.endpoint.rank(),
                    "one-sided pull of {id:?} from rank {rank} failed ({e}); pulling it in chunks"
                ),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lumen_objstore::pull(&arena.arena, &self.endpoint, rank, id, len, &options) {
                Ok(view) => return Ok((Bytes::View(Arc::new(view)), "chunked pull")),
                // Another thread of this node pulls the same object: wait
                // for its copy.
                Err(ObjectStoreError::AlreadyExists { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                    if let Some(view) = arena.arena.get(id)? {
                        return Ok((Bytes::View(Arc::new(view)), "pulled by another rank"));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Frees a value stored by `rank`: its copy in this node's arena (the
    /// primary when `rank` is of this node, else a pulled secondary copy; a
    /// spilled copy's file goes too), or in this rank's process memory
    /// (`rank` is this rank).
    pub(crate) fn release(&self, rank: Rank, key: u64, in_arena: bool) {
        if in_arena {
            if let Some(arena) = &self.arena {
                let id = arena_id(rank, key);
                if let Err(e) = arena.arena.release(id) {
                    tracing::warn!("releasing {id:?} from the node arena: {e}");
                }
            }
            return;
        }
        if rank != self.endpoint.rank() {
            return;
        }
        self.endpoint.unregister_region(RegionKey(key));
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Values held now in process memory.
    pub(crate) fn len(&self) -> usize {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Chunks of arena objects this rank has served to pullers.
    pub(crate) fn chunks_served(&self) -> u64 {
        self.arena.as_ref().map_or(0, |a| a.server.chunks_served())
    }

    /// The node arena's counters, if there is one.
    pub(crate) fn arena_stats(&self) -> Option<lumen_objstore::ArenaStats> {
        self.arena.as_ref().map(|a| a.arena.stats())
    }

    /// Live objects in the node arena (all ranks of the node), if any.
    pub(crate) fn arena_live(&self) -> Option<u64> {
        self.arena.as_ref().map(|a| a.arena.live_objects())
    }

    /// Removes the arena's spill directory (its creator, when the job ends;
    /// the segment's name is gone since startup, see [`Arena::forget_name`]).
    pub(crate) fn unlink(&self) {
        if let Some(arena) = &self.arena {
            if arena.creator {
                let _ = std::fs::remove_dir_all(arena.spill_dir.join(arena.arena.name()));
            }
        }
    }
}

/// Bytes of an object's value: owned, or shared with the rank's store.
#[derive(Debug, Clone)]
pub(crate) enum Bytes {
    /// A small value that came inline with its task's reply (no `Arc`:
    /// one allocation less per `get`).
    Inline(Vec<u8>),
    Owned(Arc<Vec<u8>>),
    Shared(Arc<[u8]>),
    /// A pinned, zero-copy view of the node arena.
    View(Arc<lumen_objstore::ObjectView>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(v) => v,
            Bytes::Owned(v) => v,
            Bytes::Shared(s) => s,
            Bytes::View(v) => v,
        }
    }
}

/// What a [`Store::fetch`] moved: nothing (the value was here), or bytes
/// from a rank by a path (`one-sided pull`, `chunked pull`, `shm get`,
/// `tcp get`), for the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    Nothing,
    From(Rank, &'static str),
}
