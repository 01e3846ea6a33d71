//! The node arena (API skeleton; implementation follows).

use std::path::PathBuf;
use std::time::Duration;

use crate::{ObjectId, ObjectStoreError};

/// Settings fixed when the arena is created (the openers read them from the header).
#[derive(Debug, Clone)]
pub struct ArenaOptions {
    /// Most objects alive at once (object-table slots); 64 bytes of shared
    /// memory each. Default 65 536.
    pub max_objects: u32,
    /// Directory for spilled objects (a subdirectory named after the arena is
    /// made in it). `None`: never spill; a full arena fails the put instead.
    pub spill_dir: Option<PathBuf>,
}

impl Default for ArenaOptions {
    fn default() -> Self {
        ArenaOptions {
            max_objects: 65_536,
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
    /// Heap bytes held by objects (64-byte block granularity, headers included).
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

/// A node's shared-memory object arena. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct NodeArena {
    _private: (),
}

/// A writable, unsealed object (from [`NodeArena::create_object`]).
#[derive(Debug)]
pub struct ObjectWriter {
    _private: (),
}

/// A read-only, zero-copy view of a sealed object; pins it while alive.
#[derive(Debug)]
pub struct ObjectView {
    _private: (),
}

impl NodeArena {
    /// Creates the shared segment `/dev/shm/{name}` with `capacity` heap bytes
    /// (rounded up to 64) plus the header and object table. Fails if it exists.
    pub fn create(
        name: &str,
        capacity: u64,
        options: ArenaOptions,
    ) -> Result<Self, ObjectStoreError> {
        let _ = (name, capacity, options);
        todo!()
    }

    /// Maps an existing arena; checks magic, version and sizes.
    pub fn open(name: &str) -> Result<Self, ObjectStoreError> {
        let _ = name;
        todo!()
    }

    /// As [`NodeArena::open`], retrying while the arena does not exist or is
    /// still being initialised, up to `timeout`.
    pub fn open_wait(name: &str, timeout: Duration) -> Result<Self, ObjectStoreError> {
        let _ = (name, timeout);
        todo!()
    }

    /// Removes the name from /dev/shm and the arena's spill files. Existing
    /// mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<(), ObjectStoreError> {
        let _ = name;
        todo!()
    }

    /// The arena's name.
    pub fn name(&self) -> &str {
        todo!()
    }

    /// Allocates `len` bytes for a new object (evicting or spilling if full).
    pub fn create_object(&self, id: ObjectId, len: u64) -> Result<ObjectWriter, ObjectStoreError> {
        let _ = (id, len);
        todo!()
    }

    /// Stores a copy of `bytes` as sealed object `id`.
    pub fn put_bytes(&self, id: ObjectId, bytes: &[u8]) -> Result<(), ObjectStoreError> {
        let mut w = self.create_object(id, bytes.len() as u64)?;
        w.copy_from_slice(bytes);
        w.seal()
    }

    /// Stores a copy of `values` as sealed object `id`.
    pub fn put_pod<T: bytemuck::Pod>(
        &self,
        id: ObjectId,
        values: &[T],
    ) -> Result<(), ObjectStoreError> {
        self.put_bytes(id, bytemuck::cast_slice(values))
    }

    /// A pinned, zero-copy view of sealed object `id`, restoring it from disk
    /// if spilled. `Ok(None)`: no such object, not sealed yet, or evicted.
    pub fn get(&self, id: ObjectId) -> Result<Option<ObjectView>, ObjectStoreError> {
        let _ = id;
        todo!()
    }

    /// Whether `id` is sealed or spilled here.
    pub fn contains(&self, id: ObjectId) -> bool {
        let _ = id;
        todo!()
    }

    /// The object's state, if it is in the table.
    pub fn state(&self, id: ObjectId) -> Option<ObjectState> {
        let _ = id;
        todo!()
    }

    /// The owner drops its reference: frees `id` now, or when its last view
    /// drops. Returns whether the object was present.
    pub fn release(&self, id: ObjectId) -> Result<bool, ObjectStoreError> {
        let _ = id;
        todo!()
    }

    /// Marks `id` as a copy the store may evict when it needs room.
    pub fn set_evictable(&self, id: ObjectId, evictable: bool) -> bool {
        let _ = (id, evictable);
        todo!()
    }

    /// Objects in the table.
    pub fn live_objects(&self) -> u64 {
        self.stats().live_objects
    }

    /// Heap bytes in use.
    pub fn used_bytes(&self) -> u64 {
        self.stats().used_bytes
    }

    /// Heap bytes.
    pub fn capacity(&self) -> u64 {
        self.stats().capacity
    }

    /// Counters.
    pub fn stats(&self) -> ArenaStats {
        todo!()
    }
}

impl ObjectWriter {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        todo!()
    }

    /// Makes the object immutable and visible to `get`.
    pub fn seal(self) -> Result<(), ObjectStoreError> {
        todo!()
    }

    /// Seals and returns a pinned view in one step.
    pub fn seal_and_get(self) -> Result<ObjectView, ObjectStoreError> {
        todo!()
    }
}

impl std::ops::Deref for ObjectWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        todo!()
    }
}

impl std::ops::DerefMut for ObjectWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        todo!()
    }
}

impl ObjectView {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        todo!()
    }

    /// Offset of the first byte within the arena segment.
    pub fn arena_offset(&self) -> u64 {
        todo!()
    }

    /// The bytes as `[T]` (payloads are 64-byte aligned).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> Result<&[T], ObjectStoreError> {
        todo!()
    }
}

impl std::ops::Deref for ObjectView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        todo!()
    }
}
