//! The node arena: a shared-memory segment holding a header, the object
//! table and the heap, mapped by every rank of the node.
//!
//! ```text
//!  offset 0              4096                    heap_offset (4096-aligned)
//!  ┌─────────────────────┬───────────────────────┬──────────────────────────┐
//!  │ Header (#[repr(C)]) │ table: slots × Entry  │ heap: blocks (heap.rs)   │
//!  │ magic, version,     │ (table.rs), 128 B each│ 64-B headers, 64-B       │
//!  │ sizes, lock, stats  │                       │ aligned payloads         │
//!  └─────────────────────┴───────────────────────┴──────────────────────────┘
//! ```
//!
//! Invariants (all under the header's [`RobustLock`]):
//! - every table entry with a block (`CREATED`, `SEALED`) owns exactly that
//!   used heap block, and every used block is owned by one entry;
//! - pins are tracked per process: each mapping of the arena claims one of
//!   256 process slots in the header (its pid); an entry's `pinners` bitmask
//!   has the bits of the slots holding views of it, `pins` counts those bits,
//!   and each process counts its own views in process memory. An entry with
//!   `pins > 0` or in state `CREATED` is never evicted, spilled or freed;
//! - a `SEALED` block's bytes never change; a `CREATED` block is written only
//!   by its [`ObjectWriter`], without the lock.
//!
//! Recovery: when a process dies holding the lock, the next acquirer rebuilds
//! the table (re-inserting each valid entry once) and then the heap from the
//! table ([`Heap::rebuild`]): the table is the source of truth, so an
//! allocation interrupted before its entry was written is simply reclaimed.
//! The pins of a process that died (its slot's pid is no longer alive) and
//! its unsealed writers are reclaimed when space runs out, when a recovery
//! runs, when a new process claims a slot, and on
//! [`NodeArena::reclaim_dead_processes`] (for the runtime to call when it
//! learns that a local rank died): its bits are cleared, and objects the
//! owner had released while that process pinned them are freed.
//!
//! # Layout
//! - `mod.rs`: the segment's layout (`Header`), the per-process state
//!   (`Inner`), options and statistics, and [`NodeArena`] itself;
//! - `setup`: creating, opening (layout and size checks) and unlinking an
//!   arena, through the platform layer's shared mappings
//!   (`lumen_transport::sys`);
//! - `locked`: what runs under the arena lock: allocation with eviction
//!   and spilling, restore, recovery after a holder died, reclaiming the
//!   pins of dead processes;
//! - `objects`: the object API ([`NodeArena::create_object`], `get`,
//!   `release`, ...) and the two handles into the arena, [`ObjectWriter`]
//!   and [`ObjectView`].

mod locked;
mod objects;
mod setup;

use std::cell::UnsafeCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::heap::{HeapState, Memory};
use lumen_transport::sys::SharedMapping;

use crate::lock::{Acquired, RobustLock};
use crate::table::MAX_PROCESSES;
use crate::{ObjectId, ObjectStoreError};

pub use objects::{ObjectView, ObjectWriter};

/// "LUMENARN" in ASCII.
const MAGIC: u64 = 0x4c55_4d45_4e41_524e;
/// Bumped on any change of the header, entry or block layout.
const VERSION: u32 = 2;
const PAGE: u64 = 4096;
const SPILL_DIR_MAX: usize = 1024;
/// `Header::flags`: a recovery failed; the arena is unusable.
const ARENA_CORRUPTED: u32 = 1;

/// Settings fixed when the arena is created (the openers read them from the header).
#[derive(Debug, Clone)]
pub struct ArenaOptions {
    /// Most objects alive at once. The table has twice as many (a power of
    /// two) 128-byte slots. Default 16 384 (4 MiB of table).
    pub max_objects: u32,
    /// Directory for spilled objects (a subdirectory named after the arena is
    /// made in it). `None`: never spill; a full arena fails the put instead.
    pub spill_dir: Option<PathBuf>,
}

impl Default for ArenaOptions {
    fn default() -> Self {
        ArenaOptions {
            max_objects: 16_384,
            spill_dir: None,
        }
    }
}

/// Where an object is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    /// Allocated, being written, not yet visible to `get`.
    Created,
    /// Immutable and readable in the arena.
    Sealed,
    /// Written to the spill directory; `get` restores it.
    Spilled,
}

/// Counters of an arena (a snapshot; other processes keep changing it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Heap bytes.
    pub capacity: u64,
    /// Heap bytes held by objects (64-byte block granularity, one 64-byte
    /// header per object included).
    pub used_bytes: u64,
    /// Objects in the table (created, sealed and spilled).
    pub live_objects: u64,
    /// Objects with at least one live view.
    pub pinned_objects: u64,
    /// Objects currently spilled to disk.
    pub spilled_objects: u64,
    /// Bytes currently spilled to disk.
    pub spilled_bytes: u64,
    /// Evictions since creation.
    pub evictions: u64,
    /// Spills since creation.
    pub spills: u64,
    /// Restores since creation.
    pub restores: u64,
    /// Times a waiter took the lock over from a dead holder.
    pub lock_recoveries: u64,
}

/// State changed only under the lock.
#[repr(C)]
struct Guarded {
    heap: HeapState,
    clock: u64,
}

/// The segment's first bytes. Fields before `lock` are written once by the
/// creator before `magic` is published; counters are written under the lock
/// and read without it.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: u32,
    header_size: u32,
    entry_size: u32,
    flags: AtomicU32,
    total_size: u64,
    table_offset: u64,
    table_slots: u64,
    max_objects: u64,
    heap_offset: u64,
    capacity: u64,
    lock: RobustLock,
    guarded: UnsafeCell<Guarded>,
    used: AtomicU64,
    live: AtomicU64,
    pinned: AtomicU64,
    spilled: AtomicU64,
    spilled_bytes: AtomicU64,
    evictions: AtomicU64,
    spills: AtomicU64,
    restores: AtomicU64,
    recoveries: AtomicU64,
    spill_dir_len: u32,
    _pad: u32,
    spill_dir: [u8; SPILL_DIR_MAX],
    /// Process slots: pid of the mapping's process, 0 when free (under the lock).
    procs: [u32; MAX_PROCESSES],
}

const _: () = assert!(std::mem::size_of::<Header>() as u64 <= PAGE);

struct Inner {
    name: String,
    /// The whole segment; every view and writer holds the `Arc<Inner>`
    /// owning it, so it is unmapped only after the last of them.
    map: SharedMapping,
    table_slots: usize,
    heap_offset: u64,
    capacity: u64,
    max_objects: u64,
    /// `{spill_dir}/{name}`, if spilling is configured.
    spill_dir: Option<PathBuf>,
    pid: u32,
    /// This mapping's process slot.
    slot: usize,
    /// Views of this mapping per object (only touched under the arena lock).
    local_pins: std::sync::Mutex<std::collections::HashMap<ObjectId, u32, IdHash>>,
}

/// Hashes an [`ObjectId`] with its own mixer (SipHash would double the cost
/// of a `get`; ids are not attacker-chosen keys here).
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

// SAFETY: the mapping is shared memory; all metadata is changed under the
// process-shared lock, counters are atomics, object bytes are either owned by
// one writer or immutable (see the module invariants).
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

/// A node's shared-memory object arena. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct NodeArena {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeArena")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ObjectStoreError {
    let context = context.into();
    move |source| ObjectStoreError::Io { context, source }
}

/// Checks an arena name: it becomes `/dev/shm/{name}`, so it must be
/// non-empty and free of `/` (the platform layer would refuse it with a less
/// specific error).
fn check_name(name: &str) -> Result<(), ObjectStoreError> {
    if name.is_empty() || name.contains('/') {
        return Err(ObjectStoreError::InvalidOptions(format!(
            "arena name {name:?} must be non-empty and contain no '/'"
        )));
    }
    if name.contains('\0') {
        return Err(ObjectStoreError::InvalidOptions(format!(
            "NUL in arena name {name:?}"
        )));
    }
    Ok(())
}

/// Memory of the heap inside the mapping (word access by byte offset).
struct ShmMemory {
    base: *mut u8,
}

impl Memory for ShmMemory {
    fn load(&self, at: u64) -> u64 {
        // SAFETY: the heap core only addresses block headers inside the heap
        // (offsets < capacity, 8-aligned), and runs under the arena lock.
        unsafe { self.base.add(at as usize).cast::<u64>().read() }
    }
    fn store(&mut self, at: u64, value: u64) {
        // SAFETY: as in `load`.
        unsafe { self.base.add(at as usize).cast::<u64>().write(value) }
    }
}

/// The arena lock, held; gives access to the table and the heap.
struct Locked<'a> {
    inner: &'a Inner,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.inner.header().lock.unlock();
    }
}

impl Inner {
    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (checked at open), is
        // page-aligned and outlives `self`.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn heap_base(&self) -> *mut u8 {
        // SAFETY: heap_offset + capacity <= mapping length (checked at open).
        unsafe { self.map.as_ptr().add(self.heap_offset as usize) }
    }

    fn lock(&self) -> Result<Locked<'_>, ObjectStoreError> {
        let header = self.header();
        let how = header.lock.lock(self.pid);
        let mut locked = Locked { inner: self };
        if let Acquired::Recovered(dead) = how {
            header.recoveries.fetch_add(1, Ordering::Relaxed);
            if let Err(detail) = locked.recover() {
                header.flags.fetch_or(ARENA_CORRUPTED, Ordering::SeqCst);
                return Err(ObjectStoreError::Corrupted {
                    name: self.name.clone(),
                    detail: format!("after process {dead} died holding the lock: {detail}"),
                });
            }
        }
        if header.flags.load(Ordering::Acquire) & ARENA_CORRUPTED != 0 {
            return Err(ObjectStoreError::Corrupted {
                name: self.name.clone(),
                detail: "an earlier recovery failed".into(),
            });
        }
        Ok(locked)
    }

    /// Takes a free process slot for this mapping (after reclaiming the
    /// slots of dead processes).
    fn claim_slot(&mut self) -> Result<(), ObjectStoreError> {
        let slot = {
            let mut g = self.lock()?;
            g.reap_dead_processes();
            let me = self.pid;
            let procs = g.procs();
            let free = procs.iter().position(|&p| p == 0);
            match free {
                Some(s) => {
                    procs[s] = me;
                    s
                }
                None => {
                    return Err(ObjectStoreError::TooManyProcesses {
                        arena: self.name.clone(),
                        max: MAX_PROCESSES,
                    })
                }
            }
        };
        self.slot = slot;
        Ok(())
    }

    fn spill_path(&self, id: ObjectId) -> Option<PathBuf> {
        self.spill_dir.as_ref().map(|d| d.join(id.to_string()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.slot >= MAX_PROCESSES {
            return;
        }
        // Every view holds the Arc of this mapping, so none is left: the slot
        // pins nothing. Clear it anyway (defensive), then free the slot.
        if let Ok(mut g) = self.lock() {
            g.clear_process_slot(self.slot);
        }
    }
}
