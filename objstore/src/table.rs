//! The object table: a fixed-size open-addressing hash table of 128-byte
//! entries in shared memory, id → (block, length, state, pins, flags).
//!
//! Linear probing with backward-shift deletion (Knuth, TAOCP vol. 3, 6.4,
//! Algorithm R), so that no tombstones accumulate and a lookup stops at the
//! first empty slot. The table is only touched under the arena lock. Writes
//! are ordered so that a holder dying mid-update leaves at worst a duplicate
//! entry (during a shift) or an entry still `EMPTY` (during an insert): an
//! entry's `state` is stored after its other fields. The arena's recovery
//! re-inserts every valid entry into a cleared table, dropping duplicates.
//! The table has a power-of-two number of slots, at least twice the most
//! objects allowed, so probes stay short.

use crate::ObjectId;

/// Slot unused.
pub(crate) const EMPTY: u32 = 0;
/// Allocated, being written.
pub(crate) const CREATED: u32 = 1;
/// Immutable, readable.
pub(crate) const SEALED: u32 = 2;
/// On disk; `block` is meaningless.
pub(crate) const SPILLED: u32 = 3;

/// The owner released it: free when the last pin drops.
pub(crate) const FLAG_RELEASED: u32 = 1;
/// A copy the store may drop when full.
pub(crate) const FLAG_EVICTABLE: u32 = 2;

/// One object's record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Entry {
    /// The id.
    pub(crate) id: ObjectId,
    /// `EMPTY`, `CREATED`, `SEALED` or `SPILLED`.
    pub(crate) state: u32,
    /// `FLAG_*` bits.
    pub(crate) flags: u32,
    /// Processes holding at least one view (the number of bits set in `pinners`).
    pub(crate) pins: u32,
    /// Process that created it (to reclaim writers of dead processes).
    pub(crate) creator: u32,
    /// Block offset in the heap.
    pub(crate) block: u64,
    /// Block size (header included).
    pub(crate) block_size: u64,
    /// Object length in bytes.
    pub(crate) len: u64,
    /// LRU clock value of the last seal or get.
    pub(crate) last_use: u64,
    /// Bit `s` set: the process in process slot `s` holds views of this object.
    pub(crate) pinners: [u64; 4],
    /// Zero; room for later fields without changing the entry size.
    pub(crate) reserved: [u64; 4],
}

/// Process slots an arena tracks (bits of [`Entry::pinners`]).
pub(crate) const MAX_PROCESSES: usize = 256;

const _: () = assert!(std::mem::size_of::<Entry>() == 128);

impl Entry {
    /// Whether process slot `s` pins this entry.
    pub(crate) fn pinned_by(&self, s: usize) -> bool {
        self.pinners[s / 64] & (1 << (s % 64)) != 0
    }

    /// Marks or clears process slot `s` as a pinner, keeping `pins` in step.
    pub(crate) fn set_pinner(&mut self, s: usize, on: bool) {
        let bit = 1u64 << (s % 64);
        let word = &mut self.pinners[s / 64];
        if on && *word & bit == 0 {
            *word |= bit;
            self.pins += 1;
        } else if !on && *word & bit != 0 {
            *word &= !bit;
            self.pins -= 1;
        }
    }
}

/// Slots for `max_objects`: a power of two, at least twice as many.
pub(crate) fn slots_for(max_objects: u64) -> u64 {
    (max_objects.max(1) * 2).next_power_of_two()
}

fn home(id: ObjectId, slots: usize) -> usize {
    (id.mix() as usize) & (slots - 1)
}

/// The slot holding `id`, if any.
pub(crate) fn find(table: &[Entry], id: ObjectId) -> Option<usize> {
    let n = table.len();
    let mut i = home(id, n);
    for _ in 0..n {
        let e = &table[i];
        if e.state == EMPTY {
            return None;
        }
        if e.id == id {
            return Some(i);
        }
        i = (i + 1) & (n - 1);
    }
    None
}

/// Writes `entry` (whose id must not be present) into a free slot; `None` if full.
pub(crate) fn insert(table: &mut [Entry], entry: Entry) -> Option<usize> {
    let n = table.len();
    let mut i = home(entry.id, n);
    for _ in 0..n {
        if table[i].state == EMPTY {
            let state = entry.state;
            table[i] = Entry {
                state: EMPTY,
                ..entry
            };
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            table[i].state = state;
            return Some(i);
        }
        i = (i + 1) & (n - 1);
    }
    None
}

/// Empties slot `slot`, shifting later entries of its probe run back.
pub(crate) fn remove(table: &mut [Entry], slot: usize) {
    let n = table.len();
    let mut i = slot;
    table[i].state = EMPTY;
    let mut j = i;
    loop {
        j = (j + 1) & (n - 1);
        if table[j].state == EMPTY || j == slot {
            return;
        }
        let k = home(table[j].id, n);
        // Entry j may stay if its home lies cyclically in (i, j].
        let stays = if i <= j {
            i < k && k <= j
        } else {
            i < k || k <= j
        };
        if stays {
            continue;
        }
        let moved = table[j];
        table[i] = Entry {
            state: EMPTY,
            ..moved
        };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        table[i].state = moved.state;
        table[j].state = EMPTY;
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hi: u64, lo: u64) -> Entry {
        Entry {
            id: ObjectId::new(hi, lo),
            state: SEALED,
            flags: 0,
            pins: 0,
            creator: 1,
            block: lo * 128,
            block_size: 128,
            len: lo,
            last_use: 0,
            pinners: [0; 4],
            reserved: [0; 4],
        }
    }

    #[test]
    fn insert_find_remove_under_collisions() {
        let mut table = vec![Entry::zeroed_entry(); 64];
        let mut present = Vec::new();
        let mut x = 7u64;
        for round in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if present.len() < 40 && (x >> 60) < 9 {
                let e = entry(x >> 58, round + 1);
                assert!(find(&table, e.id).is_none());
                insert(&mut table, e).unwrap();
                present.push(e.id);
            } else if !present.is_empty() {
                let id = present.swap_remove((x >> 20) as usize % present.len());
                let slot = find(&table, id).unwrap();
                remove(&mut table, slot);
                assert!(find(&table, id).is_none());
            }
            for id in &present {
                let slot = find(&table, *id).expect("entry lost by a shift");
                assert_eq!(table[slot].len, id.lo);
            }
        }
        assert_eq!(
            table.iter().filter(|e| e.state != EMPTY).count(),
            present.len()
        );
    }

    #[test]
    fn pinner_bits_track_the_count() {
        let mut e = entry(1, 1);
        e.set_pinner(3, true);
        e.set_pinner(3, true);
        e.set_pinner(200, true);
        assert_eq!(e.pins, 2);
        assert!(e.pinned_by(200) && !e.pinned_by(4));
        e.set_pinner(3, false);
        e.set_pinner(3, false);
        assert_eq!(e.pins, 1);
    }

    #[test]
    fn full_table_refuses() {
        let mut table = vec![Entry::zeroed_entry(); 4];
        for i in 1..=4 {
            insert(&mut table, entry(0, i)).unwrap();
        }
        assert!(insert(&mut table, entry(0, 9)).is_none());
        assert!(find(&table, ObjectId::new(0, 9)).is_none());
        assert_eq!(slots_for(5), 16);
    }

    impl Entry {
        fn zeroed_entry() -> Entry {
            bytemuck::Zeroable::zeroed()
        }
    }
}
