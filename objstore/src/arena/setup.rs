//! Creating, opening and unlinking an arena. The segment is mapped with the
//! platform layer (`lumen_transport::sys::{SharedObject, SharedMapping}`);
//! this module owns only the arena's own checks.
//!
//! Invariants: the creator writes the header and formats the heap before it
//! publishes `magic` (release); an opener checks magic, version, header and
//! entry sizes and that every offset fits the mapped size before it touches
//! anything else, so a foreign or half-created object is an error
//! (`BadArena`), never a crash.

use std::cell::UnsafeCell;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::heap::{Heap, HeapState, NONE};
use lumen_transport::sys::{SharedMapping, SharedObject};

use crate::lock::RobustLock;
use crate::table::{self, Entry, MAX_PROCESSES};
use crate::{ObjectId, ObjectStoreError};

use super::*;

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

    pub(super) fn from_mapping(
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
}
