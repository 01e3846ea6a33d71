//! Everything that runs under the arena lock ([`Locked`]): table lookups,
//! allocation that evicts or spills unpinned sealed objects when the heap is
//! full, restoring spilled objects, recovery after a holder died, and
//! reclaiming dead processes' pins.
//!
//! Invariant: no function here is entered without the lock held (a
//! `Locked` guard exists only while it is), so the table and the heap are
//! changed by one process at a time.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use crate::heap::{block_size_for, Heap, HEADER, NONE};
use lumen_transport::sys::process_alive;

use crate::table::{
    self, Entry, CREATED, EMPTY, FLAG_EVICTABLE, FLAG_RELEASED, MAX_PROCESSES, SEALED, SPILLED,
};
use crate::{ObjectId, ObjectStoreError};

use super::*;

impl Locked<'_> {
    /// The header's process slots.
    pub(super) fn procs(&mut self) -> &mut [u32; MAX_PROCESSES] {
        // SAFETY: `procs` is only accessed under the lock we hold, through
        // `&mut self`, so this is the only reference.
        unsafe { &mut (*self.inner.map.as_ptr().cast::<Header>()).procs }
    }

    /// Drops slot `s`'s pins everywhere (freeing released objects it was the
    /// last to pin) and frees the slot.
    pub(super) fn clear_process_slot(&mut self, s: usize) {
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
    pub(super) fn reap_dead_processes(&mut self) -> usize {
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

    pub(super) fn table(&mut self) -> &mut [Entry] {
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

    pub(super) fn guarded(&mut self) -> &mut Guarded {
        // SAFETY: `guarded` is only accessed under the lock we hold, through
        // `&mut self`, so this is the only reference.
        unsafe { &mut *self.inner.header().guarded.get() }
    }

    /// Runs `f` on the heap allocator.
    pub(super) fn heap<R>(&mut self, f: impl FnOnce(&mut Heap<'_, ShmMemory>) -> R) -> R {
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

    pub(super) fn tick(&mut self) -> u64 {
        let g = self.guarded();
        g.clock += 1;
        g.clock
    }

    pub(super) fn find(&mut self, id: ObjectId) -> Option<usize> {
        table::find(self.table(), id)
    }

    /// Frees the entry's block (if any) and removes it from the table.
    pub(super) fn drop_entry(&mut self, slot: usize) {
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
    pub(super) fn alloc(
        &mut self,
        block: u64,
        len: u64,
        protect: ObjectId,
    ) -> Result<u64, ObjectStoreError> {
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
    pub(super) fn candidates(&mut self, protect: ObjectId, evictable: bool) -> Vec<ObjectId> {
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

    pub(super) fn spill(&mut self, slot: usize) -> Result<(), ObjectStoreError> {
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
    pub(super) fn restore(&mut self, id: ObjectId) -> Result<(), ObjectStoreError> {
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

    pub(super) fn reclaim_dead_writers(&mut self) -> usize {
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
    pub(super) fn recover(&mut self) -> Result<(), String> {
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
