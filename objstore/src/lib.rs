//! Lumen's object store: one shared-memory arena per node holding sealed,
//! immutable objects that every rank of the node maps (zero-copy reads), with
//! pinning, eviction, spilling to disk, and a chunked pipelined pull of
//! objects between nodes over the transport.
//!
//! **Owns**: the node's host object arena (layout, allocator, seal, pin,
//! evict, spill, recovery: `arena/`, `heap`, `table`, `lock`), object ids,
//! and pulls between nodes (`pull`). **Depends on** only `lumen-transport`
//! among Lumen's crates: its `Endpoint` for pulls and its platform layer
//! (`lumen_transport::sys`: shared mappings, futexes, process liveness), so
//! no shared-memory or futex code of its own. It must not depend on the
//! runtime (`lumen`), the scheduler, the collectives or the launcher: they
//! sit above it.
//!
//! ```text
//!   rank A (first on node)          rank B (same node)            rank C (other node)
//!   NodeArena::create(name) ──┐     NodeArena::open(name)         NodeArena::create(its own)
//!                             ▼            │                               │
//!   /dev/shm/{name}: ┌────────┬────────────┴───────┬──────────────────┐    │ pull(&arena, &ep, A, id, len, opts)
//!                    │ header │ object table       │ heap (64-B       │    │   window of chunk requests ─────► ObjectServer
//!                    │ lock,  │ id → block, len,   │ aligned blocks,  │◄───┼── chunk replies written        (active-message
//!                    │ stats  │ state, pins, flags │ boundary tags)   │    │   straight into the local         handler on A)
//!                    └────────┴────────────────────┴──────────────────┘    │   arena, then sealed
//! ```
//!
//! # Main types
//! - [`ObjectId`]: 16 bytes (`hi`, `lo`), `Pod`, printed as 32 hex digits.
//!   The store gives the bits no meaning; the runtime composes them (owner
//!   rank, task, index).
//! - [`NodeArena`]: a mapped arena. `Clone` is cheap (an `Arc`); `Send + Sync`.
//!   [`NodeArena::create`] (the node's first rank), [`NodeArena::open`] /
//!   [`NodeArena::open_wait`] (the others), [`NodeArena::unlink`] (removes the
//!   name and the spill files; mappings stay valid until dropped).
//! - [`ObjectWriter`]: from [`NodeArena::create_object`]; `DerefMut<Target =
//!   [u8]>` over the object's bytes in the arena; [`ObjectWriter::seal`] makes
//!   it visible to `get`. Dropping it unsealed aborts: the space is freed.
//! - [`ObjectView`]: from [`NodeArena::get`]; `Deref<Target = [u8]>` mapping
//!   the arena (no copy), [`ObjectView::as_slice`] for typed `Pod` reads
//!   (payloads are 64-byte aligned). A view **pins** the object (a count in
//!   shared memory): while any view in any process is alive, the object is
//!   neither evicted, spilled nor freed.
//! - [`ObjectServer`] and [`pull`]: moving an object between nodes.
//! - [`ObjectStoreError`]: every failure, with what to do about it.
//!
//! # Object life cycle
//! ```text
//!  create_object ──► Created ──seal──► Sealed ◄──restore on get── Spilled
//!        (writer drop: freed)            │  └───spill when full────────▲
//!                                        ├──evict when full (only if marked evictable): gone
//!                                        └──release (owner drops its reference):
//!                                             freed now, or when the last pin drops
//! ```
//! - `put_bytes` / `put_pod` = `create_object` + copy + `seal`.
//! - Every object starts *owner-referenced*. [`NodeArena::release`] is the
//!   owner saying "no references left anywhere": the object is freed at once
//!   if unpinned, else when its last view drops. Freed memory is coalesced
//!   with free neighbours and reused.
//! - [`NodeArena::set_evictable`] marks a copy the store may drop when it
//!   needs room (a secondary copy pulled from another node, which can be
//!   pulled again). `get` of an evicted object returns `Ok(None)`.
//!
//! # When the arena is full
//! `create_object` tries, in order: (1) evict sealed, unpinned objects marked
//! evictable, least recently used first; (2) spill sealed, unpinned objects
//! to `ArenaOptions::spill_dir` (a file per object), least recently used
//! first; `get` restores them transparently (into the arena, evicting or
//! spilling others if needed); (3) free space held by writers of processes
//! that died; (4) fail with [`ObjectStoreError::OutOfMemory`]. A pinned or
//! unsealed object is never touched, and a referenced object is never lost
//! (it is only ever spilled, never evicted, unless marked evictable).
//!
//! # Concurrency
//! All metadata (object table, allocator, statistics) lives in the segment
//! and is changed under one process-shared lock in the header: a futex word
//! holding the holder's pid (see `lock`). A waiter that finds the holder's
//! process dead takes the lock over and rebuilds the allocator from the
//! object table (see `arena`), so a process killed inside the store does not
//! wedge the others. Object bytes are written and read outside the lock: a
//! writer owns its unsealed block exclusively; sealed blocks are immutable.
//! Critical sections are short (a hash probe, a first-fit walk), except that
//! spilling and restoring do their file IO under the lock (simple, and rare).
//! Pins are counted per process (each mapping takes one of 256 process slots
//! in the header; an entry records which slots pin it), so the pins and
//! unsealed writers of a process that dies are reclaimed: when space runs
//! out, after a lock recovery, when another process opens the arena, or on
//! [`NodeArena::reclaim_dead_processes`].
//!
//! # Using it from the runtime
//! - Local rank 0 of each node: `NodeArena::create(&arena_name(job, node),
//!   capacity, ArenaOptions { spill_dir: Some(dir), .. })`; the other local
//!   ranks: `NodeArena::open_wait(&name, timeout)` (or open after a barrier).
//!   Local rank 0 calls [`NodeArena::unlink`] when the job ends (it also
//!   deletes the spill files; do not unlink earlier).
//! - Ids: the store only needs them unique per node and non-zero; the owner
//!   rank in `hi` and a per-owner counter in `lo` is enough.
//! - Owner side: `put_*` creates an owner-referenced object; call
//!   [`NodeArena::release`] once the owner's reference count reaches zero
//!   (borrowers' views keep the bytes alive until they drop). A task's
//!   result written by a worker is an object like any other: the worker
//!   puts it, the owner releases it.
//! - Readers on the node: [`NodeArena::get`]; keep the [`ObjectView`] for as
//!   long as the bytes are used (it pins them).
//! - Every rank that may be pulled from registers an [`ObjectServer`] on its
//!   endpoint and keeps driving progress (for example
//!   `Endpoint::spawn_progress_thread`). A rank needing an object that lives
//!   on another node calls [`pull`] with the rank holding a copy and the
//!   object's length (which the owner knows): the copy lands in the local
//!   arena (marked evictable by default), visible to the whole node.
//!   `pull` returns the local copy at once if the node already has it, and
//!   a rank pulling an id that another rank of the node is pulling at that
//!   moment waits for that pull's seal instead of transferring it twice.
//! - Tags: requests use [`PULL_REQUEST_TAG`], replies `0xB1..`; the runtime
//!   must not register handlers in `0xB000_..`-`0xBFFF_..`.
//!
//! ```no_run
//! # fn demo(ep: &lumen_transport::Endpoint) -> Result<(), lumen_objstore::ObjectStoreError> {
//! use lumen_objstore::{arena_name, pull, NodeArena, ObjectId, ObjectServer, PullOptions};
//! let arena = NodeArena::open_wait(&arena_name("job1", 1), std::time::Duration::from_secs(10))?;
//! let _server = ObjectServer::register(ep, &arena)?; // serve this node's objects
//! ep.spawn_progress_thread();
//! let id = ObjectId::new(0, 7); // created by rank 0 on node 0, 1 MiB
//! let view = pull(&arena, ep, 0, id, 1 << 20, &PullOptions::default())?;
//! assert_eq!(view.len(), 1 << 20);
//! # Ok(()) }
//! ```
//!
//! # Example
//! ```
//! use lumen_objstore::{ArenaOptions, NodeArena, ObjectId};
//!
//! # fn main() -> Result<(), lumen_objstore::ObjectStoreError> {
//! let name = format!("lumen-doc-{}", std::process::id());
//! let arena = NodeArena::create(&name, 1 << 20, ArenaOptions::default())?;
//! let id = ObjectId::new(1, 42);
//! arena.put_pod(id, &[1.0f32, 2.0, 3.0])?;
//! {
//!     let view = arena.get(id)?.expect("just put");
//!     assert_eq!(view.as_slice::<f32>()?, &[1.0, 2.0, 3.0]);
//!     // Another process would do the same after `NodeArena::open(&name)`.
//! }
//! arena.release(id)?;
//! assert_eq!(arena.live_objects(), 0);
//! NodeArena::unlink(&name)?;
//! # Ok(()) }
//! ```

/// The recommended arena name of node `node` in job `job_id`:
/// `lumen-{job_id}-objects-n{node}`. The `lumen-{job_id}-` prefix lets the
/// launcher's cleanup of `/dev/shm/lumen-{job_id}-*` remove it after a crash.
pub fn arena_name(job_id: &str, node: u32) -> String {
    format!("lumen-{job_id}-objects-n{node}")
}

mod arena;
pub mod device;
mod error;
mod heap;
mod id;
mod lock;
mod pull;
mod pull_one_sided;
mod table;

#[cfg(test)]
mod fuzz_tests;

pub use arena::{ArenaOptions, ArenaStats, NodeArena, ObjectState, ObjectView, ObjectWriter};
pub use error::ObjectStoreError;
pub use id::ObjectId;
pub use pull::{pull, ObjectServer, PullOptions, OBJECT_TAG_BASE, PULL_REQUEST_TAG};
pub use pull_one_sided::{
    pull_one_sided, OneSidedServer, OneSidedSource, PIN_LEASE, PIN_REQUEST_TAG, UNPIN_TAG,
};
