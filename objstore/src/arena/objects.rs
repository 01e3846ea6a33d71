//! The object API of [`NodeArena`] and the two handles into the arena:
//! [`ObjectWriter`] (unsealed, one writer, no lock needed to write) and
//! [`ObjectView`] (sealed, read-only, pinned while it lives).
//!
//! Invariant: a view's bytes never change while it lives (sealed blocks are
//! immutable and pinned blocks are never evicted, spilled or freed).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::heap::{block_size_for, Memory, HEADER};

use crate::table::{self, Entry, CREATED, EMPTY, FLAG_EVICTABLE, FLAG_RELEASED, SEALED, SPILLED};
use crate::{ObjectId, ObjectStoreError};

use super::*;

impl NodeArena {
    /// The arena's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The whole shared mapping of this process (its start and length):
    /// what is registered with a fabric so that peers read objects in
    /// place (see `pull_one_sided`). It stays mapped while any clone of
    /// this arena, view or writer lives.
    pub fn mapping(&self) -> (*const u8, usize) {
        (self.inner.map.as_ptr().cast_const(), self.inner.map.len())
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

    /// Stores a copy of `bytes` as sealed object `id`, its pages asked for
    /// on NUMA node `numa` before they are written (`mbind`
    /// `MPOL_PREFERRED` over the object's block; see
    /// `lumen_transport::sys::prefer_numa_node`). A refused preference is
    /// logged, not an error: the bytes are stored either way.
    pub fn put_bytes_on_node(
        &self,
        id: ObjectId,
        bytes: &[u8],
        numa: u32,
    ) -> Result<(), ObjectStoreError> {
        let mut w = self.create_object(id, bytes.len() as u64)?;
        if let Err(e) = lumen_transport::sys::prefer_numa_node(w.as_mut_ptr(), bytes.len(), numa) {
            tracing::debug!(object = %id, "NUMA node {numa} preference refused: {e}");
        }
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
    pub(super) fn pin_locked(
        &self,
        g: &mut Locked<'_>,
        id: ObjectId,
    ) -> Result<ObjectView, ObjectStoreError> {
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

    pub(super) fn unpin(&self, id: ObjectId) {
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

    pub(super) fn finish_writer(
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
    pub(super) arena: NodeArena,
    pub(super) id: ObjectId,
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
    pub(super) done: bool,
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
    pub(super) arena: NodeArena,
    pub(super) id: ObjectId,
    pub(super) offset: u64,
    pub(super) ptr: *const u8,
    pub(super) len: usize,
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
