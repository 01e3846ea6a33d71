//! [`DeviceArena`]: objects in one device region (see the module docs of
//! `device`).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{DeviceError, DeviceMemory};
use crate::heap::{block_size_for, Heap, HeapState, Memory, HEADER};
use crate::ObjectId;

/// The allocator's block headers, kept on the host: only the words ever
/// written are stored (four per block; bounded by the distinct block
/// offsets used, at most one per 64 bytes of the region).
#[derive(Debug, Default)]
struct Shadow(HashMap<u64, u64>);

impl Memory for Shadow {
    fn load(&self, at: u64) -> u64 {
        self.0.get(&at).copied().unwrap_or(0)
    }
    fn store(&mut self, at: u64, value: u64) {
        self.0.insert(at, value);
    }
}

/// Why [`DeviceArena::create_with`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError<E> {
    /// The arena refused (full, or the id exists).
    Device(DeviceError),
    /// The fill failed; nothing was kept.
    Fill(E),
}

/// Where a device object's bytes are in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceBlock {
    /// Offset of the first byte in the region.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

#[derive(Debug)]
enum Place {
    /// On the device: the allocator's block at `block`.
    Device { block: u64 },
    /// Evicted to host memory.
    Host(Vec<u8>),
    /// Spilled from host memory to a file.
    Disk(std::path::PathBuf),
}

#[derive(Debug)]
struct Entry {
    place: Place,
    len: u64,
    pins: u32,
    last_use: u64,
    /// Released while pinned: removed at its last unpin.
    doomed: bool,
    /// Being written by `create_with`: not readable yet.
    filling: bool,
}

/// Counters of one device arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceArenaStats {
    /// Objects on the device.
    pub on_device: u64,
    /// Their bytes.
    pub device_bytes: u64,
    /// Objects evicted to host memory.
    pub on_host: u64,
    /// Their bytes.
    pub host_bytes: u64,
    /// Evictions so far.
    pub evictions: u64,
    /// Objects brought back to the device so far.
    pub restores: u64,
    /// Objects spilled from host memory to disk.
    pub on_disk: u64,
    /// Their bytes.
    pub disk_bytes: u64,
    /// Spills so far.
    pub spills: u64,
}

#[derive(Debug)]
struct Inner {
    shadow: Shadow,
    state: HeapState,
    objects: HashMap<ObjectId, Entry>,
    clock: u64,
    stats: DeviceArenaStats,
    /// Where evicted objects go beyond `host_budget` bytes in host memory.
    spill: Option<(std::path::PathBuf, u64)>,
}

impl Inner {
    fn heap(&mut self) -> Heap<'_, Shadow> {
        Heap {
            mem: &mut self.shadow,
            state: &mut self.state,
        }
    }
}

/// Objects in one device region, placed by the boundary-tag allocator,
/// pinned while read, evicted to host memory least recently used first.
#[derive(Debug)]
pub struct DeviceArena<D: DeviceMemory> {
    memory: D,
    inner: Mutex<Inner>,
}

impl<D: DeviceMemory> DeviceArena<D> {
    /// An empty arena over all of `memory`.
    pub fn new(memory: D) -> Self {
        Self::with_spill(memory, None)
    }

    /// As [`DeviceArena::new`]; objects evicted to host memory beyond
    /// `host_budget` bytes are spilled, least recently used first, to files
    /// in `dir` (which must exist), and read back from there.
    pub fn with_spill_dir(memory: D, dir: std::path::PathBuf, host_budget: u64) -> Self {
        Self::with_spill(memory, Some((dir, host_budget)))
    }

    fn with_spill(memory: D, spill: Option<(std::path::PathBuf, u64)>) -> Self {
        let mut shadow = Shadow::default();
        let mut state = HeapState {
            size: 0,
            free_head: 0,
            used: 0,
            blocks: 0,
        };
        Heap::format(&mut shadow, &mut state, memory.len());
        DeviceArena {
            memory,
            inner: Mutex::new(Inner {
                shadow,
                state,
                objects: HashMap::new(),
                clock: 0,
                stats: DeviceArenaStats::default(),
                spill,
            }),
        }
    }

    /// The memory domain.
    pub fn memory(&self) -> &D {
        &self.memory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `bytes` as object `id` on the device, evicting unpinned
    /// objects to host memory if it needs the room.
    pub fn put(&self, id: ObjectId, bytes: &[u8]) -> Result<DeviceBlock, DeviceError> {
        self.create_with(id, bytes.len() as u64, |memory, offset| {
            memory.write(offset, bytes)
        })
        .map_err(|e| match e {
            CreateError::Device(e) | CreateError::Fill(e) => e,
        })
    }

    /// Creates object `id` of `len` bytes and lets `fill` write its bytes
    /// into the device region at the offset it is given (a transfer
    /// arriving chunk by chunk); the object exists only if `fill` succeeds.
    pub fn create_with<E>(
        &self,
        id: ObjectId,
        len: u64,
        fill: impl FnOnce(&D, u64) -> Result<(), E>,
    ) -> Result<DeviceBlock, CreateError<E>> {
        let block = {
            let mut inner = self.lock();
            if inner.objects.contains_key(&id) {
                return Err(CreateError::Device(DeviceError::Exists(id.to_string())));
            }
            let block = self
                .alloc(&mut inner, len, None)
                .map_err(CreateError::Device)?;
            // Reserved (pinned, so no eviction moves it) while it fills.
            inner.clock += 1;
            let last_use = inner.clock;
            inner.objects.insert(
                id,
                Entry {
                    place: Place::Device { block },
                    len,
                    pins: 1,
                    last_use,
                    doomed: false,
                    filling: true,
                },
            );
            inner.stats.on_device += 1;
            inner.stats.device_bytes += len;
            block
        };
        // Filled without the arena's lock: other objects come and go meanwhile.
        match fill(&self.memory, block + HEADER) {
            Ok(()) => {
                if let Some(entry) = self.lock().objects.get_mut(&id) {
                    entry.filling = false;
                }
                self.unpin(id);
                Ok(DeviceBlock {
                    offset: block + HEADER,
                    len,
                })
            }
            Err(e) => {
                let mut inner = self.lock();
                inner.objects.remove(&id);
                inner.heap().free(block);
                inner.stats.on_device -= 1;
                inner.stats.device_bytes -= len;
                Err(CreateError::Fill(e))
            }
        }
    }

    /// Pins object `id` on the device (bringing it back from host memory
    /// if it was evicted) and returns where it is; [`DeviceArena::unpin`]
    /// releases it.
    pub fn pin(&self, id: ObjectId) -> Result<DeviceBlock, DeviceError> {
        let mut inner = self.lock();
        let (len, evicted) = match inner.objects.get(&id) {
            None => return Err(DeviceError::NotFound(id.to_string())),
            Some(e) if e.filling => {
                return Err(DeviceError::NotFound(format!("{id} (still arriving)")))
            }
            Some(e) => (e.len, !matches!(e.place, Place::Device { .. })),
        };
        if evicted {
            let block = self.alloc(&mut inner, len, Some(id))?;
            let Some(entry) = inner.objects.get_mut(&id) else {
                return Err(DeviceError::NotFound(id.to_string()));
            };
            let was = std::mem::replace(&mut entry.place, Place::Device { block });
            let bytes = match &was {
                Place::Host(bytes) => Ok(bytes.as_slice().to_vec()),
                Place::Disk(path) => read_spilled(path),
                Place::Device { .. } => Err(DeviceError::NotFound(id.to_string())),
            };
            let written = bytes.and_then(|b| self.memory.write(block + HEADER, &b));
            if let Err(e) = written {
                entry.place = was;
                inner.heap().free(block);
                return Err(e);
            }
            let s = &mut inner.stats;
            match was {
                Place::Disk(path) => {
                    let _ = std::fs::remove_file(path);
                    s.on_disk -= 1;
                    s.disk_bytes -= len;
                }
                _ => {
                    s.on_host -= 1;
                    s.host_bytes -= len;
                }
            }
            s.on_device += 1;
            s.device_bytes += len;
            s.restores += 1;
        }
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner
            .objects
            .get_mut(&id)
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        entry.pins += 1;
        entry.last_use = now;
        match entry.place {
            Place::Device { block } => Ok(DeviceBlock {
                offset: block + HEADER,
                len,
            }),
            _ => Err(DeviceError::NotFound(id.to_string())),
        }
    }

    /// Releases one pin of object `id` (and removes it if it was released
    /// while pinned: [`DeviceArena::release`]).
    pub fn unpin(&self, id: ObjectId) {
        let doomed = {
            let mut inner = self.lock();
            match inner.objects.get_mut(&id) {
                Some(entry) => {
                    entry.pins = entry.pins.saturating_sub(1);
                    entry.pins == 0 && entry.doomed
                }
                None => false,
            }
        };
        if doomed {
            let _ = self.remove(id);
        }
    }

    /// Whether object `id` is here (on the device, evicted, spilled, or
    /// still arriving).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.lock().objects.contains_key(&id)
    }

    /// Whether object `id` is here and whole (not still arriving).
    pub fn ready(&self, id: ObjectId) -> bool {
        self.lock().objects.get(&id).is_some_and(|e| !e.filling)
    }

    /// Deletes object `id` now, or at its last unpin when readers pin it
    /// (the last reference to it is gone, a reader is still copying);
    /// false when it is not here.
    pub fn release(&self, id: ObjectId) -> bool {
        {
            let mut inner = self.lock();
            match inner.objects.get_mut(&id) {
                None => return false,
                Some(entry) if entry.pins > 0 => {
                    entry.doomed = true;
                    return true;
                }
                Some(_) => {}
            }
        }
        self.remove(id).is_ok()
    }

    /// A host copy of object `id`, wherever it is (`get_host`).
    pub fn read_to_host(&self, id: ObjectId) -> Result<Vec<u8>, DeviceError> {
        let inner = self.lock();
        let entry = inner
            .objects
            .get(&id)
            .filter(|e| !e.filling)
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        match &entry.place {
            Place::Host(bytes) => Ok(bytes.clone()),
            Place::Disk(path) => read_spilled(path),
            Place::Device { block } => {
                let mut out = vec![0u8; entry.len as usize];
                self.memory.read(block + HEADER, &mut out)?;
                Ok(out)
            }
        }
    }

    /// Deletes object `id`; refused while it is pinned.
    pub fn remove(&self, id: ObjectId) -> Result<(), DeviceError> {
        let mut inner = self.lock();
        match inner.objects.get(&id) {
            None => return Err(DeviceError::NotFound(id.to_string())),
            Some(e) if e.pins > 0 => {
                return Err(DeviceError::Full {
                    wanted: 0,
                    free: 0,
                    pinned: e.len,
                })
            }
            Some(_) => {}
        }
        let Some(entry) = inner.objects.remove(&id) else {
            return Err(DeviceError::NotFound(id.to_string()));
        };
        match entry.place {
            Place::Device { block } => {
                inner.heap().free(block);
                inner.stats.on_device -= 1;
                inner.stats.device_bytes -= entry.len;
            }
            Place::Host(_) => {
                inner.stats.on_host -= 1;
                inner.stats.host_bytes -= entry.len;
            }
            Place::Disk(path) => {
                let _ = std::fs::remove_file(path);
                inner.stats.on_disk -= 1;
                inner.stats.disk_bytes -= entry.len;
            }
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> DeviceArenaStats {
        self.lock().stats
    }

    /// Verifies the allocator's invariants and that every device object's
    /// block is allocated (tests).
    pub fn check(&self) -> Result<(), String> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (_, used_blocks) = inner.heap().check()?;
        let on_device = inner
            .objects
            .values()
            .filter(|e| matches!(e.place, Place::Device { .. }))
            .count() as u64;
        if used_blocks != on_device {
            return Err(format!(
                "{used_blocks} blocks allocated for {on_device} objects on the device"
            ));
        }
        Ok(())
    }

    /// A block for `len` bytes, evicting least recently used unpinned
    /// objects (never `keep`) to host memory until one fits.
    fn alloc(
        &self,
        inner: &mut Inner,
        len: u64,
        keep: Option<ObjectId>,
    ) -> Result<u64, DeviceError> {
        let size = block_size_for(len).ok_or(DeviceError::Full {
            wanted: len,
            free: 0,
            pinned: 0,
        })?;
        loop {
            let got = inner.heap().alloc(size);
            if let Some(block) = got {
                return Ok(block);
            }
            let victim = inner
                .objects
                .iter()
                .filter(|(id, e)| {
                    e.pins == 0 && Some(**id) != keep && matches!(e.place, Place::Device { .. })
                })
                .min_by_key(|(_, e)| e.last_use)
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                let pinned = inner
                    .objects
                    .values()
                    .filter(|e| e.pins > 0)
                    .map(|e| e.len)
                    .sum();
                return Err(DeviceError::Full {
                    wanted: len,
                    free: inner.state.size - inner.state.used,
                    pinned,
                });
            };
            let Some(entry) = inner.objects.get_mut(&victim) else {
                continue;
            };
            let Place::Device { block } = entry.place else {
                continue;
            };
            let mut bytes = vec![0u8; entry.len as usize];
            self.memory.read(block + HEADER, &mut bytes)?;
            let evicted_len = entry.len;
            entry.place = Place::Host(bytes);
            inner.heap().free(block);
            let s = &mut inner.stats;
            s.on_device -= 1;
            s.device_bytes -= evicted_len;
            s.on_host += 1;
            s.host_bytes += evicted_len;
            s.evictions += 1;
            Self::spill_over_budget(inner);
        }
    }

    /// Spills least recently used host-resident objects to disk while host
    /// memory holds more than the budget; a write that fails leaves the
    /// object in host memory (logged).
    fn spill_over_budget(inner: &mut Inner) {
        let Some((dir, budget)) = inner.spill.clone() else {
            return;
        };
        while inner.stats.host_bytes > budget {
            let victim = inner
                .objects
                .iter()
                .filter(|(_, e)| matches!(e.place, Place::Host(_)))
                .min_by_key(|(_, e)| e.last_use)
                .map(|(id, _)| *id);
            let Some(victim) = victim else { return };
            let Some(entry) = inner.objects.get_mut(&victim) else {
                return;
            };
            let path = dir.join(format!("lumen-device-{}-{victim}.obj", std::process::id()));
            let Place::Host(bytes) = &entry.place else {
                return;
            };
            if let Err(e) = std::fs::write(&path, bytes) {
                tracing::warn!("device arena: spilling {victim} to {}: {e}", path.display());
                return;
            }
            let len = entry.len;
            entry.place = Place::Disk(path);
            let s = &mut inner.stats;
            s.on_host -= 1;
            s.host_bytes -= len;
            s.on_disk += 1;
            s.disk_bytes += len;
            s.spills += 1;
        }
    }
}

fn read_spilled(path: &std::path::Path) -> Result<Vec<u8>, DeviceError> {
    std::fs::read(path).map_err(|e| DeviceError::Driver {
        call: "reading a spilled device object",
        detail: format!("{}: {e}", path.display()),
    })
}

impl<D: DeviceMemory> Drop for DeviceArena<D> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        for entry in inner.objects.values() {
            if let Place::Disk(path) = &entry.place {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::HostDomain;
    use super::*;

    fn id(n: u64) -> ObjectId {
        ObjectId::new(7, n)
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn released_while_pinned_goes_at_the_last_unpin() {
        let arena = DeviceArena::new(HostDomain::new(1 << 20));
        let id = ObjectId::new(1, 1);
        arena.put(id, &[7u8; 1000]).expect("put");
        arena.pin(id).expect("pin");
        arena.pin(id).expect("pin again");
        assert!(arena.release(id), "released (deferred)");
        assert!(arena.contains(id), "still there while pinned");
        arena.unpin(id);
        assert!(arena.contains(id));
        arena.unpin(id);
        assert!(!arena.contains(id), "gone at the last unpin");
        assert_eq!(arena.stats().on_device, 0);
        assert!(!arena.release(id), "not here any more");
        arena.check().expect("consistent");
    }

    #[test]
    fn put_pin_read_and_remove() {
        let arena = DeviceArena::new(HostDomain::new(1 << 20));
        let a = arena.put(id(1), &bytes(1000, 1)).expect("put");
        assert_eq!(a.len, 1000);
        assert_eq!(a.offset % 64, 0, "payloads are aligned");
        assert!(matches!(
            arena.put(id(1), b"x"),
            Err(DeviceError::Exists(_))
        ));
        let pinned = arena.pin(id(1)).expect("pin");
        assert_eq!(pinned, a);
        let mut on_device = vec![0u8; 1000];
        arena
            .memory()
            .read(pinned.offset, &mut on_device)
            .expect("read");
        assert_eq!(on_device, bytes(1000, 1));
        assert_eq!(
            arena.read_to_host(id(1)).expect("host copy"),
            bytes(1000, 1)
        );
        assert!(arena.remove(id(1)).is_err(), "pinned objects stay");
        arena.unpin(id(1));
        arena.remove(id(1)).expect("remove");
        assert!(matches!(arena.pin(id(1)), Err(DeviceError::NotFound(_))));
        arena.check().expect("consistent");
        assert_eq!(arena.stats().device_bytes, 0);
    }

    #[test]
    fn a_full_arena_evicts_the_least_recently_used_and_restores_on_pin() {
        // Room for three 300 KiB objects, not four.
        let arena = DeviceArena::new(HostDomain::new(1 << 20));
        for n in 0..3 {
            arena.put(id(n), &bytes(300 << 10, n as u8)).expect("put");
        }
        // Use 0 so that 1 is the least recently used.
        arena.pin(id(0)).expect("pin");
        arena.unpin(id(0));
        arena
            .put(id(3), &bytes(300 << 10, 3))
            .expect("a put that evicts");
        let s = arena.stats();
        assert_eq!((s.on_device, s.on_host, s.evictions), (3, 1, 1), "{s:?}");
        assert_eq!(
            arena.read_to_host(id(1)).expect("evicted, readable"),
            bytes(300 << 10, 1)
        );
        // Pinning the evicted one brings it back (evicting another).
        let back = arena.pin(id(1)).expect("restore");
        let mut got = vec![0u8; 300 << 10];
        arena.memory().read(back.offset, &mut got).expect("read");
        assert_eq!(got, bytes(300 << 10, 1));
        assert_eq!(arena.stats().restores, 1);
        arena.check().expect("consistent");
        // Everything pinned: a put that needs room is refused, naming why.
        for n in [0, 2, 3] {
            let _ = arena.pin(id(n));
        }
        match arena.put(id(9), &bytes(300 << 10, 9)) {
            Err(DeviceError::Full { pinned, .. }) => assert!(pinned >= 3 * (300 << 10)),
            other => panic!("expected a full arena, got {other:?}"),
        }
        arena.check().expect("consistent");
    }

    #[test]
    fn many_objects_of_many_sizes_stay_consistent() {
        let arena = DeviceArena::new(HostDomain::new(4 << 20));
        let mut live = Vec::new();
        for n in 0..2000u64 {
            let len = ((n * 7919) % 50_000) as usize + 1;
            arena.put(id(n), &bytes(len, n as u8)).expect("put");
            live.push((n, len));
            if n % 3 == 0 {
                let (gone, _) = live.remove((n as usize * 31) % live.len());
                arena.remove(id(gone)).expect("remove");
            }
        }
        arena.check().expect("consistent");
        for &(n, len) in live.iter().step_by(97) {
            assert_eq!(
                arena.read_to_host(id(n)).expect("read"),
                bytes(len, n as u8)
            );
        }
    }

    #[test]
    fn evicted_objects_beyond_the_host_budget_spill_to_disk_and_come_back() {
        let dir = std::env::temp_dir().join(format!("lumen-devspill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a spill directory");
        {
            // Device: three 300 KiB objects; host: one; the rest on disk.
            let arena =
                DeviceArena::with_spill_dir(HostDomain::new(1 << 20), dir.clone(), 400 << 10);
            for n in 0..6 {
                arena.put(id(n), &bytes(300 << 10, n as u8)).expect("put");
            }
            let s = arena.stats();
            assert_eq!((s.on_device, s.on_host, s.on_disk), (3, 1, 2), "{s:?}");
            assert!(s.host_bytes <= 400 << 10);
            // The oldest went furthest: read from disk, and back on the device.
            assert_eq!(
                arena.read_to_host(id(0)).expect("from disk"),
                bytes(300 << 10, 0)
            );
            let back = arena.pin(id(0)).expect("restored from disk");
            let mut got = vec![0u8; 300 << 10];
            arena.memory().read(back.offset, &mut got).expect("read");
            assert_eq!(got, bytes(300 << 10, 0));
            arena.unpin(id(0));
            arena.remove(id(1)).expect("remove a spilled one");
            arena.check().expect("consistent");
        }
        // Dropping the arena removed its files.
        let left = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(left, 0, "spill files outlived the arena");
    }
}
