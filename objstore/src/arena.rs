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

use std::cell::UnsafeCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::heap::{block_size_for, Heap, HeapState, Memory, HEADER, NONE};
use lumen_transport::sys::{process_alive, SharedMapping, SharedObject};

use crate::lock::{Acquired, RobustLock};
use crate::table::{
    self, Entry, CREATED, EMPTY, FLAG_EVICTABLE, FLAG_RELEASED, MAX_PROCESSES, SEALED, SPILLED,
};
use crate::{ObjectId, ObjectStoreError};

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

impl Locked<'_> {
    /// The header's process slots.
    fn procs(&mut self) -> &mut [u32; MAX_PROCESSES] {
        // SAFETY: `procs` is only accessed under the lock we hold, through
        // `&mut self`, so this is the only reference.
        unsafe { &mut (*self.inner.map.as_ptr().cast::<Header>()).procs }
    }

    /// Drops slot `s`'s pins everywhere (freeing released objects it was the
    /// last to pin) and frees the slot.
    fn clear_process_slot(&mut self, s: usize) {
        let pinned: Vec<ObjectId> = self
            .table()
            .iter()
            .filter(|e| e.state != EMPTY && e.pinned_by(s))
            .map(|e| e.id)
            .collect();
        let header = self.inner.header();
        for id in pinned {
            let Some(slot) = self.find(id) else { continue };
            let e = &mut self.table()[slot];
            e.set_pinner(s, false);
            let e = *e;
            if e.pins == 0 {
                header.pinned.fetch_sub(1, Ordering::Relaxed);
                if e.flags & FLAG_RELEASED != 0 && e.state != CREATED {
                    self.drop_entry(slot);
                }
            }
        }
        self.procs()[s] = 0;
    }

    /// Clears the slots of processes that are no longer alive; returns how many.
    fn reap_dead_processes(&mut self) -> usize {
        let me = self.inner.pid;
        let dead: Vec<usize> = (0..MAX_PROCESSES)
            .filter(|&s| {
                let pid = self.procs()[s];
                pid != 0 && pid != me && !process_alive(pid)
            })
            .collect();
        for &s in &dead {
            tracing::warn!(
                pid = self.procs()[s],
                "object arena: dropping the pins of a process that died"
            );
            self.clear_process_slot(s);
        }
        dead.len()
    }

    fn table(&mut self) -> &mut [Entry] {
        let inner = self.inner;
        // SAFETY: the table lies at PAGE..PAGE + slots*64 inside the mapping,
        // only touched under the lock we hold; `&mut self` keeps this the only
        // reference in this process.
        unsafe {
            std::slice::from_raw_parts_mut(
                inner.map.as_ptr().add(PAGE as usize).cast::<Entry>(),
                inner.table_slots,
            )
        }
    }

    fn guarded(&mut self) -> &mut Guarded {
        // SAFETY: `guarded` is only accessed under the lock we hold, through
        // `&mut self`, so this is the only reference.
        unsafe { &mut *self.inner.header().guarded.get() }
    }

    /// Runs `f` on the heap allocator.
    fn heap<R>(&mut self, f: impl FnOnce(&mut Heap<'_, ShmMemory>) -> R) -> R {
        let mut mem = ShmMemory {
            base: self.inner.heap_base(),
        };
        let state = &mut self.guarded().heap;
        let mut heap = Heap {
            mem: &mut mem,
            state,
        };
        let r = f(&mut heap);
        let used = heap.state.used;
        self.inner.header().used.store(used, Ordering::Relaxed);
        r
    }

    fn tick(&mut self) -> u64 {
        let g = self.guarded();
        g.clock += 1;
        g.clock
    }

    fn find(&mut self, id: ObjectId) -> Option<usize> {
        table::find(self.table(), id)
    }

    /// Frees the entry's block (if any) and removes it from the table.
    fn drop_entry(&mut self, slot: usize) {
        let e = self.table()[slot];
        let header = self.inner.header();
        match e.state {
            CREATED | SEALED => self.heap(|h| h.free(e.block)),
            SPILLED => {
                if let Some(path) = self.inner.spill_path(e.id) {
                    let _ = std::fs::remove_file(path);
                }
                header.spilled.fetch_sub(1, Ordering::Relaxed);
                header.spilled_bytes.fetch_sub(e.len, Ordering::Relaxed);
            }
            _ => {}
        }
        if e.pins > 0 {
            header.pinned.fetch_sub(1, Ordering::Relaxed);
        }
        table::remove(self.table(), slot);
        header.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Allocates a block of `block` bytes, making room by evicting, spilling
    /// and reclaiming (in that order). `protect` is never touched.
    fn alloc(&mut self, block: u64, len: u64, protect: ObjectId) -> Result<u64, ObjectStoreError> {
        if block <= self.inner.capacity {
            if let Some(b) = self.heap(|h| h.alloc(block)) {
                return Ok(b);
            }
            // 1. Evictable copies, least recently used first.
            for id in self.candidates(protect, true) {
                if let Some(slot) = self.find(id) {
                    self.drop_entry(slot);
                    self.inner
                        .header()
                        .evictions
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(b) = self.heap(|h| h.alloc(block)) {
                        return Ok(b);
                    }
                }
            }
            // 2. Spill the others.
            if self.inner.spill_dir.is_some() {
                for id in self.candidates(protect, false) {
                    if let Some(slot) = self.find(id) {
                        self.spill(slot)?;
                        if let Some(b) = self.heap(|h| h.alloc(block)) {
                            return Ok(b);
                        }
                    }
                }
            }
            // 3. Writers and pins of processes that died.
            if self.reclaim_dead_writers() + self.reap_dead_processes() > 0 {
                if let Some(b) = self.heap(|h| h.alloc(block)) {
                    return Ok(b);
                }
            }
        }
        let pinned = self
            .table()
            .iter()
            .filter(|e| (e.state == SEALED && e.pins > 0) || e.state == CREATED)
            .map(|e| e.block_size)
            .sum();
        Err(ObjectStoreError::OutOfMemory {
            requested: len,
            capacity: self.inner.capacity,
            used: self.guarded().heap.used,
            pinned,
            spill_configured: self.inner.spill_dir.is_some(),
        })
    }

    /// Sealed, unpinned objects, evictable ones (`evictable`) or the others,
    /// least recently used first.
    fn candidates(&mut self, protect: ObjectId, evictable: bool) -> Vec<ObjectId> {
        let mut found: Vec<(u64, ObjectId)> = self
            .table()
            .iter()
            .filter(|e| {
                e.state == SEALED
                    && e.pins == 0
                    && e.id != protect
                    && (e.flags & FLAG_EVICTABLE != 0) == evictable
            })
            .map(|e| (e.last_use, e.id))
            .collect();
        found.sort_unstable();
        found.into_iter().map(|(_, id)| id).collect()
    }

    fn spill(&mut self, slot: usize) -> Result<(), ObjectStoreError> {
        let e = self.table()[slot];
        let Some(path) = self.inner.spill_path(e.id) else {
            return Ok(());
        };
        let spill_err = |source| ObjectStoreError::Spill {
            id: e.id,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(spill_err)?;
        }
        // SAFETY: the entry is SEALED (immutable) and unpinned, and we hold the
        // lock, so nobody frees or writes the block while we read it.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                self.inner.heap_base().add((e.block + HEADER) as usize),
                e.len as usize,
            )
        };
        let mut file = std::fs::File::create(&path).map_err(spill_err)?;
        file.write_all(bytes).map_err(spill_err)?;
        drop(file);
        self.heap(|h| h.free(e.block));
        let t = &mut self.table()[slot];
        t.state = SPILLED;
        t.block = NONE;
        t.block_size = 0;
        let header = self.inner.header();
        header.spills.fetch_add(1, Ordering::Relaxed);
        header.spilled.fetch_add(1, Ordering::Relaxed);
        header.spilled_bytes.fetch_add(e.len, Ordering::Relaxed);
        tracing::debug!(object = %e.id, bytes = e.len, "spilled to {}", path.display());
        Ok(())
    }

    /// Reads spilled `slot` back into the arena.
    fn restore(&mut self, id: ObjectId) -> Result<(), ObjectStoreError> {
        let Some(slot) = self.find(id) else {
            return Ok(());
        };
        let len = self.table()[slot].len;
        let Some(path) = self.inner.spill_path(id) else {
            return Err(ObjectStoreError::Corrupted {
                name: self.inner.name.clone(),
                detail: format!("object {id} is spilled but this arena has no spill directory"),
            });
        };
        let block = block_size_for(len).unwrap_or(u64::MAX);
        let b = self.alloc(block, len, id)?;
        let spill_err = |source| ObjectStoreError::Spill {
            id,
            path: path.clone(),
            source,
        };
        let read = (|| {
            let mut file = std::fs::File::open(&path)?;
            // SAFETY: block `b` was just allocated to us under the lock; nobody
            // else can reach it until the entry points at it.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.inner.heap_base().add((b + HEADER) as usize),
                    len as usize,
                )
            };
            file.read_exact(dst)
        })();
        if let Err(e) = read {
            self.heap(|h| h.free(b));
            return Err(spill_err(e));
        }
        let _ = std::fs::remove_file(&path);
        let block_size = self.heap(|h| h.block_size(b));
        // The slot may have moved while making room (backward shifts).
        let slot = self.find(id).ok_or_else(|| ObjectStoreError::Corrupted {
            name: self.inner.name.clone(),
            detail: format!("object {id} vanished while being restored"),
        })?;
        let t = &mut self.table()[slot];
        t.block = b;
        t.block_size = block_size;
        t.state = SEALED;
        let header = self.inner.header();
        header.restores.fetch_add(1, Ordering::Relaxed);
        header.spilled.fetch_sub(1, Ordering::Relaxed);
        header.spilled_bytes.fetch_sub(len, Ordering::Relaxed);
        Ok(())
    }

    fn reclaim_dead_writers(&mut self) -> usize {
        let dead: Vec<ObjectId> = self
            .table()
            .iter()
            .filter(|e| e.state == CREATED && !process_alive(e.creator))
            .map(|e| e.id)
            .collect();
        for id in &dead {
            if let Some(slot) = self.find(*id) {
                tracing::warn!(object = %id, "reclaiming an unsealed object of a dead process");
                self.drop_entry(slot);
            }
        }
        dead.len()
    }

    /// Rebuilds table and heap after a holder died mid-update.
    fn recover(&mut self) -> Result<(), String> {
        let capacity = self.inner.capacity;
        let entries: Vec<Entry> = self
            .table()
            .iter()
            .filter(|e| e.state != EMPTY)
            .copied()
            .collect();
        for e in self.table().iter_mut() {
            *e = bytemuck::Zeroable::zeroed();
        }
        let mut kept = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in entries {
            let valid = !e.id.is_nil()
                && matches!(e.state, CREATED | SEALED | SPILLED)
                && (e.state == SPILLED
                    || (e.block % 64 == 0
                        && e.block
                            .checked_add(e.block_size)
                            .is_some_and(|end| end <= capacity)
                        && block_size_for(e.len).is_some_and(|b| b <= e.block_size)));
            if valid && seen.insert(e.id) {
                kept.push(e);
            }
        }
        let mut live: Vec<(u64, u64)> = kept
            .iter()
            .filter(|e| e.state != SPILLED)
            .map(|e| (e.block, e.block_size))
            .collect();
        live.sort_unstable();
        self.heap(|h| h.rebuild(&live))?;
        self.heap(|h| h.check())?;
        let header = self.inner.header();
        let (mut pinned, mut spilled, mut spilled_bytes) = (0, 0, 0);
        for e in &kept {
            table::insert(self.table(), *e).ok_or("table overflow while rebuilding")?;
            pinned += u64::from(e.pins > 0);
            if e.state == SPILLED {
                spilled += 1;
                spilled_bytes += e.len;
            }
        }
        header.live.store(kept.len() as u64, Ordering::Relaxed);
        header.pinned.store(pinned, Ordering::Relaxed);
        header.spilled.store(spilled, Ordering::Relaxed);
        header.spilled_bytes.store(spilled_bytes, Ordering::Relaxed);
        tracing::warn!(
            arena = %self.inner.name,
            objects = kept.len(),
            "object arena rebuilt after its lock holder died"
        );
        self.reap_dead_processes();
        Ok(())
    }
}

impl NodeArena {
    /// Creates the shared segment `/dev/shm/{name}` with `capacity` heap bytes
    /// (rounded up to 64) plus the header and object table. Fails if it
    /// exists. The node's first rank calls this; the others [`open`](Self::open).
    pub fn create(
        name: &str,
        capacity: u64,
        options: ArenaOptions,
    ) -> Result<Self, ObjectStoreError> {
        check_name(name)?;
        let capacity = capacity
            .checked_add(63)
            .map(|c| c & !63)
            .filter(|&c| c >= crate::heap::MIN_BLOCK)
            .ok_or_else(|| {
                ObjectStoreError::InvalidOptions(format!(
                    "capacity {capacity} must be at least {} bytes",
                    crate::heap::MIN_BLOCK
                ))
            })?;
        if options.max_objects == 0 {
            return Err(ObjectStoreError::InvalidOptions(
                "max_objects must be at least 1".into(),
            ));
        }
        let spill_bytes = match &options.spill_dir {
            Some(dir) => {
                let text = dir.to_str().ok_or_else(|| {
                    ObjectStoreError::InvalidOptions(format!(
                        "spill directory {} is not UTF-8",
                        dir.display()
                    ))
                })?;
                if text.len() > SPILL_DIR_MAX {
                    return Err(ObjectStoreError::InvalidOptions(format!(
                        "spill directory path longer than {SPILL_DIR_MAX} bytes"
                    )));
                }
                text.as_bytes().to_vec()
            }
            None => Vec::new(),
        };
        let max_objects = u64::from(options.max_objects);
        let slots = table::slots_for(max_objects);
        let table_offset = PAGE;
        let heap_offset =
            (table_offset + slots * std::mem::size_of::<Entry>() as u64).div_ceil(PAGE) * PAGE;
        let total = heap_offset + capacity;
        let object = SharedObject::create(name).map_err(|err| {
            let hint = if err.kind() == std::io::ErrorKind::AlreadyExists {
                " (left over from an earlier job? NodeArena::unlink it, or remove the file)"
            } else {
                ""
            };
            io_err(format!("creating arena /dev/shm/{name}{hint}"))(err)
        })?;
        let map = object
            .set_len(total)
            .map_err(io_err(format!("sizing arena {name} to {total} bytes")))
            .and_then(|()| {
                object
                    .map(total as usize)
                    .map_err(io_err(format!("mapping arena {name}")))
            });
        let map = match map {
            Ok(map) => map,
            Err(e) => {
                let _ = SharedMapping::unlink(name);
                return Err(e);
            }
        };
        drop(object);
        let header = map.as_ptr().cast::<Header>();
        let mut spill_dir = [0u8; SPILL_DIR_MAX];
        spill_dir[..spill_bytes.len()].copy_from_slice(&spill_bytes);
        // SAFETY: the mapping is fresh, zeroed, page-aligned and at least PAGE
        // bytes; nobody else can use it before `magic` is published below.
        unsafe {
            header.write(Header {
                magic: AtomicU64::new(0),
                version: VERSION,
                header_size: std::mem::size_of::<Header>() as u32,
                entry_size: std::mem::size_of::<Entry>() as u32,
                flags: AtomicU32::new(0),
                total_size: total,
                table_offset,
                table_slots: slots,
                max_objects,
                heap_offset,
                capacity,
                lock: RobustLock::default(),
                guarded: UnsafeCell::new(Guarded {
                    heap: HeapState {
                        size: 0,
                        free_head: NONE,
                        used: 0,
                        blocks: 0,
                    },
                    clock: 0,
                }),
                used: AtomicU64::new(0),
                live: AtomicU64::new(0),
                pinned: AtomicU64::new(0),
                spilled: AtomicU64::new(0),
                spilled_bytes: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                spills: AtomicU64::new(0),
                restores: AtomicU64::new(0),
                recoveries: AtomicU64::new(0),
                spill_dir_len: spill_bytes.len() as u32,
                _pad: 0,
                spill_dir,
                procs: [0; MAX_PROCESSES],
            });
        }
        let mut inner = Self::from_mapping(name, map, true)?;
        {
            let mut mem = ShmMemory {
                base: inner.heap_base(),
            };
            // SAFETY: not yet published; this process is the only user.
            let guarded = unsafe { &mut *inner.header().guarded.get() };
            Heap::format(&mut mem, &mut guarded.heap, capacity);
        }
        inner.claim_slot()?;
        let arena = NodeArena {
            inner: Arc::new(inner),
        };
        if let Some(dir) = &arena.inner.spill_dir {
            std::fs::create_dir_all(dir).map_err(|source| ObjectStoreError::Spill {
                id: ObjectId::default(),
                path: dir.clone(),
                source,
            })?;
        }
        arena.inner.header().magic.store(MAGIC, Ordering::Release);
        tracing::debug!(arena = name, capacity, slots, "object arena created");
        Ok(arena)
    }

    /// Maps an existing arena; checks magic, version and sizes.
    pub fn open(name: &str) -> Result<Self, ObjectStoreError> {
        check_name(name)?;
        let object = SharedObject::open(name).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                ObjectStoreError::NoSuchArena { name: name.into() }
            } else {
                io_err(format!("opening arena /dev/shm/{name}"))(err)
            }
        })?;
        let size = object
            .size()
            .map_err(io_err(format!("stat of arena {name}")))?;
        if size < PAGE {
            return Err(ObjectStoreError::BadArena {
                name: name.into(),
                detail: format!("{size} bytes, smaller than a header (still being created?)"),
            });
        }
        let map = object
            .map(size as usize)
            .map_err(io_err(format!("mapping arena {name}")))?;
        let mut inner = Self::from_mapping(name, map, false)?;
        inner.claim_slot()?;
        Ok(NodeArena {
            inner: Arc::new(inner),
        })
    }

    /// As [`NodeArena::open`], retrying while the arena does not exist or is
    /// still being initialised, up to `timeout`.
    pub fn open_wait(name: &str, timeout: Duration) -> Result<Self, ObjectStoreError> {
        let start = Instant::now();
        loop {
            match Self::open(name) {
                Ok(a) => return Ok(a),
                Err(
                    e @ (ObjectStoreError::NoSuchArena { .. } | ObjectStoreError::BadArena { .. }),
                ) => {
                    if start.elapsed() >= timeout {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn from_mapping(
        name: &str,
        map: SharedMapping,
        creating: bool,
    ) -> Result<Inner, ObjectStoreError> {
        let bad = |detail: String| ObjectStoreError::BadArena {
            name: name.into(),
            detail,
        };
        // SAFETY: the mapping is at least PAGE >= size_of::<Header>() bytes and
        // page-aligned; every bit pattern is valid for Header's fields.
        let header = unsafe { &*map.as_ptr().cast::<Header>() };
        let magic = header.magic.load(Ordering::Acquire);
        if magic != MAGIC && !(creating && magic == 0) {
            return Err(bad(format!(
                "magic {magic:#x}, expected {MAGIC:#x} (not an arena, or not initialised)"
            )));
        }
        if header.version != VERSION {
            return Err(bad(format!(
                "layout version {}, this build reads version {VERSION}",
                header.version
            )));
        }
        if header.header_size as usize != std::mem::size_of::<Header>()
            || header.entry_size as usize != std::mem::size_of::<Entry>()
        {
            return Err(bad("header or entry size differs from this build's".into()));
        }
        let slots = header.table_slots;
        let ok = header.total_size == map.len() as u64
            && header.table_offset == PAGE
            && slots.is_power_of_two()
            && header
                .heap_offset
                .checked_sub(PAGE)
                .is_some_and(|t| t >= slots.saturating_mul(std::mem::size_of::<Entry>() as u64))
            && header.heap_offset.checked_add(header.capacity) == Some(header.total_size);
        if !ok {
            return Err(bad(format!(
                "sizes inconsistent: total {} (mapped {}), table {} slots, heap at {} of {} bytes",
                header.total_size,
                map.len(),
                slots,
                header.heap_offset,
                header.capacity
            )));
        }
        let dir_len = (header.spill_dir_len as usize).min(SPILL_DIR_MAX);
        let spill_dir = if dir_len == 0 {
            None
        } else {
            let text = std::str::from_utf8(&header.spill_dir[..dir_len])
                .map_err(|_| bad("spill directory is not UTF-8".into()))?;
            Some(Path::new(text).join(name))
        };
        let inner = Inner {
            name: name.into(),
            table_slots: slots as usize,
            heap_offset: header.heap_offset,
            capacity: header.capacity,
            max_objects: header.max_objects,
            spill_dir,
            pid: std::process::id(),
            slot: usize::MAX,
            local_pins: Default::default(),
            map,
        };
        Ok(inner)
    }

    /// Removes the name from /dev/shm and the arena's spill files. Existing
    /// mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), ObjectStoreError> {
        check_name(name)?;
        if let Ok(arena) = Self::open(name) {
            if let Some(dir) = &arena.inner.spill_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        if let Err(err) = SharedMapping::unlink(name) {
            if err.kind() == std::io::ErrorKind::NotFound {
                return Err(ObjectStoreError::NoSuchArena { name: name.into() });
            }
            return Err(io_err(format!("unlinking arena {name}"))(err));
        }
        Ok(())
    }

    /// The arena's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Allocates `len` bytes for a new object, owner-referenced and unsealed,
    /// evicting or spilling others if the arena is full (see the crate docs).
    pub fn create_object(&self, id: ObjectId, len: u64) -> Result<ObjectWriter, ObjectStoreError> {
        if id.is_nil() {
            return Err(ObjectStoreError::NilId);
        }
        let inner = &*self.inner;
        let mut g = inner.lock()?;
        if g.find(id).is_some() {
            return Err(ObjectStoreError::AlreadyExists { id });
        }
        if inner.header().live.load(Ordering::Relaxed) >= inner.max_objects {
            return Err(ObjectStoreError::TableFull {
                arena: inner.name.clone(),
                slots: inner.max_objects,
            });
        }
        let block = block_size_for(len).ok_or(ObjectStoreError::OutOfMemory {
            requested: len,
            capacity: inner.capacity,
            used: inner.header().used.load(Ordering::Relaxed),
            pinned: 0,
            spill_configured: inner.spill_dir.is_some(),
        })?;
        let b = g.alloc(block, len, id)?;
        let block_size = g.heap(|h| h.block_size(b));
        let last_use = g.tick();
        table::insert(
            g.table(),
            Entry {
                id,
                state: CREATED,
                flags: 0,
                pins: 0,
                creator: inner.pid,
                block: b,
                block_size,
                len,
                last_use,
                pinners: [0; 4],
                reserved: [0; 4],
            },
        )
        .ok_or_else(|| ObjectStoreError::TableFull {
            arena: inner.name.clone(),
            slots: inner.max_objects,
        })?;
        inner.header().live.fetch_add(1, Ordering::Relaxed);
        drop(g);
        Ok(ObjectWriter {
            arena: self.clone(),
            id,
            // SAFETY: the block lies inside the heap; its payload is `len` bytes.
            ptr: unsafe { inner.heap_base().add((b + HEADER) as usize) },
            len: len as usize,
            done: false,
        })
    }

    /// Stores a copy of `bytes` as sealed object `id`.
    pub fn put_bytes(&self, id: ObjectId, bytes: &[u8]) -> Result<(), ObjectStoreError> {
        let mut w = self.create_object(id, bytes.len() as u64)?;
        w.copy_from_slice(bytes);
        w.seal()
    }

    /// Stores a copy of `values` as sealed object `id` (read back with
    /// [`ObjectView::as_slice`]).
    pub fn put_pod<T: bytemuck::Pod>(
        &self,
        id: ObjectId,
        values: &[T],
    ) -> Result<(), ObjectStoreError> {
        self.put_bytes(id, bytemuck::cast_slice(values))
    }

    /// A pinned, zero-copy view of sealed object `id`, restoring it from disk
    /// first if it was spilled. `Ok(None)`: no such object here, not sealed
    /// yet, or evicted.
    pub fn get(&self, id: ObjectId) -> Result<Option<ObjectView>, ObjectStoreError> {
        let inner = &*self.inner;
        let mut g = inner.lock()?;
        let Some(slot) = g.find(id) else {
            return Ok(None);
        };
        match g.table()[slot].state {
            SEALED => {}
            SPILLED => g.restore(id)?,
            _ => return Ok(None),
        }
        self.pin_locked(&mut g, id).map(Some)
    }

    /// Pins sealed `id` (present) under the lock and makes its view.
    fn pin_locked(&self, g: &mut Locked<'_>, id: ObjectId) -> Result<ObjectView, ObjectStoreError> {
        let now = g.tick();
        let slot = g.find(id).ok_or_else(|| ObjectStoreError::Corrupted {
            name: self.inner.name.clone(),
            detail: format!("object {id} vanished while being pinned"),
        })?;
        let me = self.inner.slot;
        let mut local = self
            .inner
            .local_pins
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = local.entry(id).or_insert(0);
        *count += 1;
        let e = &mut g.table()[slot];
        e.last_use = now;
        if *count == 1 {
            e.set_pinner(me, true);
            if e.pins == 1 {
                self.inner.header().pinned.fetch_add(1, Ordering::Relaxed);
            }
        }
        let e = *e;
        Ok(ObjectView {
            arena: self.clone(),
            id,
            offset: self.inner.heap_offset + e.block + HEADER,
            // SAFETY: a sealed entry's block lies inside the heap.
            ptr: unsafe { self.inner.heap_base().add((e.block + HEADER) as usize) },
            len: e.len as usize,
        })
    }

    fn unpin(&self, id: ObjectId) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let last_here = {
            let mut local = self
                .inner
                .local_pins
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match local.get_mut(&id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    local.remove(&id);
                    true
                }
            }
        };
        if !last_here {
            return;
        }
        let Some(slot) = g.find(id) else { return };
        let me = self.inner.slot;
        let e = &mut g.table()[slot];
        if !e.pinned_by(me) {
            return; // already cleared (this process was taken for dead)
        }
        e.set_pinner(me, false);
        let e = *e;
        if e.pins == 0 {
            self.inner.header().pinned.fetch_sub(1, Ordering::Relaxed);
            if e.flags & FLAG_RELEASED != 0 {
                // `drop_entry` decrements `pinned` only for pinned entries.
                g.drop_entry(slot);
            }
        }
    }

    /// Whether `id` is sealed or spilled here.
    pub fn contains(&self, id: ObjectId) -> bool {
        matches!(
            self.state(id),
            Some(ObjectState::Sealed | ObjectState::Spilled)
        )
    }

    /// The object's state, if it is in the table.
    pub fn state(&self, id: ObjectId) -> Option<ObjectState> {
        let mut g = self.inner.lock().ok()?;
        let slot = g.find(id)?;
        match g.table()[slot].state {
            CREATED => Some(ObjectState::Created),
            SEALED => Some(ObjectState::Sealed),
            SPILLED => Some(ObjectState::Spilled),
            _ => None,
        }
    }

    /// The owner drops its reference (no references are left anywhere): the
    /// object is freed now, or when its last view drops (an unsealed object:
    /// when its writer is sealed or dropped). Returns whether it was present.
    pub fn release(&self, id: ObjectId) -> Result<bool, ObjectStoreError> {
        let mut g = self.inner.lock()?;
        let Some(slot) = g.find(id) else {
            return Ok(false);
        };
        let e = &mut g.table()[slot];
        e.flags |= FLAG_RELEASED;
        let e = *e;
        if e.state == SPILLED || (e.state == SEALED && e.pins == 0) {
            g.drop_entry(slot);
        }
        Ok(true)
    }

    /// Marks `id` as a copy the store may evict when it needs room (a
    /// secondary copy that can be pulled again). Returns whether it is present.
    pub fn set_evictable(&self, id: ObjectId, evictable: bool) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let Some(slot) = g.find(id) else {
            return false;
        };
        let e = &mut g.table()[slot];
        if evictable {
            e.flags |= FLAG_EVICTABLE;
        } else {
            e.flags &= !FLAG_EVICTABLE;
        }
        true
    }

    /// Objects in the table (created, sealed and spilled).
    pub fn live_objects(&self) -> u64 {
        self.inner.header().live.load(Ordering::Relaxed)
    }

    /// Heap bytes in use (block granularity).
    pub fn used_bytes(&self) -> u64 {
        self.inner.header().used.load(Ordering::Relaxed)
    }

    /// Heap bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Counters (read without the lock: each is exact, together a snapshot
    /// that other processes may be changing).
    pub fn stats(&self) -> ArenaStats {
        let h = self.inner.header();
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ArenaStats {
            capacity: self.inner.capacity,
            used_bytes: r(&h.used),
            live_objects: r(&h.live),
            pinned_objects: r(&h.pinned),
            spilled_objects: r(&h.spilled),
            spilled_bytes: r(&h.spilled_bytes),
            evictions: r(&h.evictions),
            spills: r(&h.spills),
            restores: r(&h.restores),
            lock_recoveries: r(&h.recoveries),
        }
    }

    /// Drops the pins and unsealed objects of processes that died (the
    /// runtime calls this when it learns a local rank died; it also happens
    /// by itself when space runs out). Returns how many processes' state was
    /// reclaimed.
    pub fn reclaim_dead_processes(&self) -> Result<usize, ObjectStoreError> {
        let mut g = self.inner.lock()?;
        Ok(g.reap_dead_processes() + g.reclaim_dead_writers())
    }

    /// Verifies the allocator and table invariants under the lock (for tests
    /// and debugging); the error says what is broken.
    pub fn check_consistency(&self) -> Result<(), ObjectStoreError> {
        let mut g = self.inner.lock()?;
        let corrupted = |detail: String| ObjectStoreError::Corrupted {
            name: self.inner.name.clone(),
            detail,
        };
        let (_, blocks) = g.heap(|h| h.check()).map_err(corrupted)?;
        let mut spans: Vec<(u64, u64)> = g
            .table()
            .iter()
            .filter(|e| matches!(e.state, CREATED | SEALED))
            .map(|e| (e.block, e.block_size))
            .collect();
        if spans.len() as u64 != blocks {
            return Err(corrupted(format!(
                "{} objects hold blocks but the heap has {blocks} used blocks",
                spans.len()
            )));
        }
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(corrupted("two objects' blocks overlap".into()));
        }
        if let Some(e) = g
            .table()
            .iter()
            .find(|e| e.state != EMPTY && e.pins != e.pinners.iter().map(|w| w.count_ones()).sum())
        {
            return Err(corrupted(format!(
                "object {} pin count disagrees with its pinners",
                e.id
            )));
        }
        let live = g.table().iter().filter(|e| e.state != EMPTY).count() as u64;
        if live != self.live_objects() {
            return Err(corrupted(format!(
                "{live} entries but the counter says {}",
                self.live_objects()
            )));
        }
        Ok(())
    }

    /// Test support: takes the arena lock and never releases it (the calling
    /// process is expected to die holding it).
    #[doc(hidden)]
    pub fn leak_lock_for_test(&self) -> Result<(), ObjectStoreError> {
        let g = self.inner.lock()?;
        std::mem::forget(g);
        Ok(())
    }

    /// Test support: takes the lock, scrambles the allocator's state the way
    /// a holder killed in the middle of an allocation could leave it, and
    /// never unlocks (the calling process is expected to die next).
    #[doc(hidden)]
    pub fn scramble_allocator_for_test(&self) -> Result<(), ObjectStoreError> {
        let mut g = self.inner.lock()?;
        let heap = &mut g.guarded().heap;
        heap.free_head = 64 * 3; // points into the middle of some block
        heap.used = heap.used.wrapping_add(12_345);
        let mut mem = ShmMemory {
            base: self.inner.heap_base(),
        };
        mem.store(0, 0x40); // the first block's size, half-rewritten
        std::mem::forget(g);
        Ok(())
    }

    fn finish_writer(
        &self,
        id: ObjectId,
        seal: bool,
        pin: bool,
    ) -> Result<Option<ObjectView>, ObjectStoreError> {
        let mut g = self.inner.lock()?;
        let Some(slot) = g.find(id) else {
            return Err(ObjectStoreError::Corrupted {
                name: self.inner.name.clone(),
                detail: format!("unsealed object {id} vanished from the table"),
            });
        };
        let e = g.table()[slot];
        if !seal || e.flags & FLAG_RELEASED != 0 && !pin {
            g.drop_entry(slot);
            return Ok(None);
        }
        let now = g.tick();
        let t = &mut g.table()[slot];
        t.state = SEALED;
        t.last_use = now;
        if pin {
            return self.pin_locked(&mut g, id).map(Some);
        }
        Ok(None)
    }
}

/// A writable, unsealed object (from [`NodeArena::create_object`]): derefs to
/// its bytes in the arena (uninitialised memory reads as whatever was there).
/// [`seal`](Self::seal) publishes it; dropping it unsealed frees the space.
pub struct ObjectWriter {
    arena: NodeArena,
    id: ObjectId,
    ptr: *mut u8,
    len: usize,
    done: bool,
}

// SAFETY: the writer owns its block exclusively until sealed; the pointer is
// into a mapping kept alive by `arena`.
unsafe impl Send for ObjectWriter {}
// SAFETY: shared access only reads.
unsafe impl Sync for ObjectWriter {}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl ObjectWriter {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Makes the object immutable and visible to `get` in every process.
    pub fn seal(mut self) -> Result<(), ObjectStoreError> {
        self.done = true;
        self.arena.finish_writer(self.id, true, false).map(|_| ())
    }

    /// Seals and returns a pinned view in one step (no window in which the
    /// object could be evicted or spilled).
    pub fn seal_and_get(mut self) -> Result<ObjectView, ObjectStoreError> {
        self.done = true;
        let id = self.id;
        self.arena
            .finish_writer(id, true, true)?
            .ok_or_else(|| ObjectStoreError::Corrupted {
                name: self.arena.inner.name.clone(),
                detail: format!("sealed object {id} could not be pinned"),
            })
    }

    /// Raw pointer to the first byte (64-byte aligned), for writers that fill
    /// the object from several threads.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl std::ops::Deref for ObjectWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the block is ours until sealed; `arena` keeps the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for ObjectWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.arena.finish_writer(self.id, false, false) {
                tracing::warn!(object = %self.id, "dropping an unsealed object failed: {e}");
            }
        }
    }
}

/// A read-only, zero-copy view of a sealed object in the node arena. While it
/// lives the object is pinned: no process can evict, spill or free it.
/// Cloning pins again. Dropping unpins (and frees the object if its owner has
/// released it and this was the last pin).
pub struct ObjectView {
    arena: NodeArena,
    id: ObjectId,
    offset: u64,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are immutable while pinned; `arena` keeps the mapping alive.
unsafe impl Send for ObjectView {}
// SAFETY: as above.
unsafe impl Sync for ObjectView {}

impl std::fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectView")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("offset", &self.offset)
            .finish()
    }
}

impl ObjectView {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Offset of the first byte within the arena segment (`/dev/shm/{name}`);
    /// the same in every process of the node.
    pub fn arena_offset(&self) -> u64 {
        self.offset
    }

    /// The bytes as `[T]`: payloads are 64-byte aligned, so any `Pod` type of
    /// alignment up to 64 works when the length is a multiple of its size.
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Result<&[T], ObjectStoreError> {
        bytemuck::try_cast_slice(self).map_err(|_| ObjectStoreError::BadCast {
            id: self.id,
            len: self.len as u64,
            type_name: std::any::type_name::<T>(),
            type_size: std::mem::size_of::<T>(),
            type_align: std::mem::align_of::<T>(),
        })
    }
}

impl Clone for ObjectView {
    fn clone(&self) -> Self {
        // Pin again under the lock. If the lock is unusable (corrupted
        // arena), the clone still refers to pinned bytes: ours.
        if let Ok(_g) = self.arena.inner.lock() {
            let mut local = self
                .arena
                .inner
                .local_pins
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *local.entry(self.id).or_insert(0) += 1;
        }
        ObjectView {
            arena: self.arena.clone(),
            id: self.id,
            offset: self.offset,
            ptr: self.ptr,
            len: self.len,
        }
    }
}

impl std::ops::Deref for ObjectView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the object is sealed (immutable) and pinned while `self`
        // lives; `arena` keeps the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for ObjectView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ObjectView {
    fn drop(&mut self) {
        self.arena.unpin(self.id);
    }
}
