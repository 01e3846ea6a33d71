//! The arena's block allocator: a pure core over a [`Memory`] of 64-bit words,
//! so that it runs on a `Vec` in unit tests and on the shared segment in the
//! store.
//!
//! Design: Knuth's boundary-tag method (TAOCP vol. 1, 2.5, Algorithm C), with
//! a size and the previous block's size in every block header instead of a
//! footer (as in dlmalloc). Free blocks form one doubly linked list threaded
//! through their headers; allocation is first fit, splitting the block when
//! the rest is large enough to be a block; freeing merges with a free
//! neighbour on each side, so two adjacent free blocks never exist.
//!
//! Layout (offsets relative to the heap's start; all multiples of 64):
//! ```text
//!  block: ┌ word 0: size in bytes (header included) | FREE bit ┐
//!         │ word 1: size of the previous block (0 for the first)│ 64-byte header
//!         │ word 2: next free block (NONE if last or used)      │
//!         │ word 3: previous free block (NONE if first or used) │
//!         └ payload: 64-byte aligned ───────────────────────────┘
//! ```
//! Invariants: blocks tile the heap exactly; `prev_size` of each block equals
//! the size of the block before it; a block is in the free list iff its FREE
//! bit is set; no two neighbours are both free. [`Heap::check`] verifies them
//! (tests, and after a lock recovery). The whole state outside the heap is
//! [`HeapState`], kept in the arena header; [`Heap::rebuild`] rewrites every
//! header from the list of live blocks, which is how a crash inside the
//! allocator is repaired (see `arena`).

/// Alignment of blocks and payloads.
pub(crate) const ALIGN: u64 = 64;
/// Bytes of a block header.
pub(crate) const HEADER: u64 = 64;
/// Smallest block (header + one aligned unit of payload).
pub(crate) const MIN_BLOCK: u64 = HEADER + ALIGN;
/// "No block" in free-list links.
pub(crate) const NONE: u64 = u64::MAX;
const FREE: u64 = 1;

/// Word-addressed memory the heap lives in.
pub(crate) trait Memory {
    /// The word at byte offset `at` (a multiple of 8).
    fn load(&self, at: u64) -> u64;
    /// Stores `value` at byte offset `at`.
    fn store(&mut self, at: u64, value: u64);
}

impl Memory for Vec<u64> {
    fn load(&self, at: u64) -> u64 {
        self[(at / 8) as usize]
    }
    fn store(&mut self, at: u64, value: u64) {
        self[(at / 8) as usize] = value;
    }
}

/// The allocator's state outside the heap (lives in the arena header).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeapState {
    /// Heap bytes (multiple of 64, at least [`MIN_BLOCK`]).
    pub(crate) size: u64,
    /// First free block, or [`NONE`].
    pub(crate) free_head: u64,
    /// Bytes in used blocks (headers included).
    pub(crate) used: u64,
    /// Used blocks.
    pub(crate) blocks: u64,
}

/// Rounds a payload length to the block size that holds it.
pub(crate) fn block_size_for(len: u64) -> Option<u64> {
    let payload = len.max(1).checked_add(ALIGN - 1)? & !(ALIGN - 1);
    payload.checked_add(HEADER)
}

/// The allocator: `state` plus the block headers inside `mem`.
pub(crate) struct Heap<'a, M: Memory> {
    pub(crate) mem: &'a mut M,
    pub(crate) state: &'a mut HeapState,
}

impl<'a, M: Memory> Heap<'a, M> {
    /// Formats an empty heap of `size` bytes (rounded down to 64).
    pub(crate) fn format(mem: &'a mut M, state: &'a mut HeapState, size: u64) -> Self {
        let size = size & !(ALIGN - 1);
        *state = HeapState {
            size,
            free_head: NONE,
            used: 0,
            blocks: 0,
        };
        let mut heap = Heap { mem, state };
        if size >= MIN_BLOCK {
            heap.write_header(0, size, true, 0);
            heap.push_free(0);
        }
        heap
    }

    fn size_of(&self, b: u64) -> u64 {
        self.mem.load(b) & !FREE
    }
    fn is_free(&self, b: u64) -> bool {
        self.mem.load(b) & FREE != 0
    }
    fn prev_size(&self, b: u64) -> u64 {
        self.mem.load(b + 8)
    }
    fn next_free(&self, b: u64) -> u64 {
        self.mem.load(b + 16)
    }
    fn prev_free(&self, b: u64) -> u64 {
        self.mem.load(b + 24)
    }

    fn write_header(&mut self, b: u64, size: u64, free: bool, prev_size: u64) {
        self.mem.store(b, size | if free { FREE } else { 0 });
        self.mem.store(b + 8, prev_size);
        self.mem.store(b + 16, NONE);
        self.mem.store(b + 24, NONE);
    }

    fn set_prev_size_of_next(&mut self, b: u64, size: u64) {
        let next = b + size;
        if next < self.state.size {
            self.mem.store(next + 8, size);
        }
    }

    fn push_free(&mut self, b: u64) {
        let head = self.state.free_head;
        self.mem.store(b + 16, head);
        self.mem.store(b + 24, NONE);
        if head != NONE {
            self.mem.store(head + 24, b);
        }
        self.state.free_head = b;
    }

    fn unlink_free(&mut self, b: u64) {
        let (next, prev) = (self.next_free(b), self.prev_free(b));
        if prev == NONE {
            self.state.free_head = next;
        } else {
            self.mem.store(prev + 16, next);
        }
        if next != NONE {
            self.mem.store(next + 24, prev);
        }
    }

    /// Allocates a block of exactly `block` bytes (from [`block_size_for`]);
    /// returns its offset (the payload starts [`HEADER`] bytes later).
    pub(crate) fn alloc(&mut self, block: u64) -> Option<u64> {
        let mut b = self.state.free_head;
        let mut steps = 0u64;
        while b != NONE {
            let size = self.size_of(b);
            if size >= block {
                self.unlink_free(b);
                let prev = self.prev_size(b);
                if size - block >= MIN_BLOCK {
                    let rest = b + block;
                    self.write_header(rest, size - block, true, block);
                    self.set_prev_size_of_next(rest, size - block);
                    self.push_free(rest);
                    self.write_header(b, block, false, prev);
                } else {
                    self.write_header(b, size, false, prev);
                }
                self.state.used += self.size_of(b);
                self.state.blocks += 1;
                return Some(b);
            }
            b = self.next_free(b);
            steps += 1;
            if steps > self.state.size / MIN_BLOCK {
                return None; // a cycle: corrupted list; `check` reports it
            }
        }
        None
    }

    /// The size of the used block at `b` (what [`Heap::alloc`] actually gave).
    pub(crate) fn block_size(&self, b: u64) -> u64 {
        self.size_of(b)
    }

    /// Frees the used block at `b`, merging it with free neighbours.
    pub(crate) fn free(&mut self, b: u64) {
        let mut start = b;
        let mut size = self.size_of(b);
        self.state.used -= size;
        self.state.blocks -= 1;
        let next = b + size;
        if next < self.state.size && self.is_free(next) {
            self.unlink_free(next);
            size += self.size_of(next);
        }
        let prev_size = self.prev_size(b);
        if prev_size != 0 && self.is_free(b - prev_size) {
            start = b - prev_size;
            self.unlink_free(start);
            size += prev_size;
        }
        let before = self.prev_size(start);
        self.write_header(start, size, true, before);
        self.set_prev_size_of_next(start, size);
        self.push_free(start);
    }

    /// Rewrites every header so that exactly `live` (offset, size) blocks are
    /// used and the gaps between them are free. `live` must be sorted by
    /// offset, non-overlapping, aligned and inside the heap (else `Err`).
    pub(crate) fn rebuild(&mut self, live: &[(u64, u64)]) -> Result<(), String> {
        let size = self.state.size;
        let mut at = 0u64;
        let mut prev = 0u64;
        self.state.free_head = NONE;
        self.state.used = 0;
        self.state.blocks = 0;
        let mut free_blocks = Vec::new();
        for &(off, len) in live {
            if off < at
                || off % ALIGN != 0
                || len < MIN_BLOCK
                || len % ALIGN != 0
                || off.checked_add(len).is_none_or(|end| end > size)
            {
                return Err(format!(
                    "live block ({off}, {len}) overlaps or is out of range"
                ));
            }
            let gap = off - at;
            if gap > 0 && gap < MIN_BLOCK {
                return Err(format!("gap of {gap} bytes at {at} cannot be a block"));
            }
            if gap > 0 {
                self.write_header(at, gap, true, prev);
                free_blocks.push(at);
                prev = gap;
            }
            self.write_header(off, len, false, prev);
            self.state.used += len;
            self.state.blocks += 1;
            prev = len;
            at = off + len;
        }
        if at < size {
            let gap = size - at;
            if gap < MIN_BLOCK {
                return Err(format!(
                    "gap of {gap} bytes at the heap end cannot be a block"
                ));
            }
            self.write_header(at, gap, true, prev);
            free_blocks.push(at);
        }
        for b in free_blocks.into_iter().rev() {
            self.push_free(b);
        }
        Ok(())
    }

    /// Verifies the invariants; returns (free bytes, used blocks).
    pub(crate) fn check(&self) -> Result<(u64, u64), String> {
        let size = self.state.size;
        let mut at = 0;
        let mut prev = 0;
        let mut free_bytes = 0;
        let mut free_count = 0u64;
        let mut used_blocks = 0;
        let mut used_bytes = 0;
        let mut prev_free = false;
        while at < size {
            let s = self.size_of(at);
            if s < MIN_BLOCK || s % ALIGN != 0 || at + s > size {
                return Err(format!("block at {at} has bad size {s}"));
            }
            if self.prev_size(at) != prev {
                return Err(format!(
                    "block at {at} records previous size {} but it is {prev}",
                    self.prev_size(at)
                ));
            }
            let free = self.is_free(at);
            if free && prev_free {
                return Err(format!("adjacent free blocks at {at}"));
            }
            if free {
                free_bytes += s;
                free_count += 1;
            } else {
                used_blocks += 1;
                used_bytes += s;
            }
            prev_free = free;
            prev = s;
            at += s;
        }
        if at != size {
            return Err(format!("blocks end at {at}, heap is {size}"));
        }
        let mut b = self.state.free_head;
        let mut listed = 0u64;
        let mut prev_link = NONE;
        while b != NONE {
            if !self.is_free(b) || self.prev_free(b) != prev_link {
                return Err(format!("free list broken at {b}"));
            }
            listed += 1;
            if listed > free_count {
                return Err("free list longer than the free blocks (cycle?)".into());
            }
            prev_link = b;
            b = self.next_free(b);
        }
        if listed != free_count {
            return Err(format!(
                "{listed} blocks listed free, {free_count} are free"
            ));
        }
        if used_bytes != self.state.used || used_blocks != self.state.blocks {
            return Err(format!(
                "state says {} used bytes in {} blocks; headers say {used_bytes} in {used_blocks}",
                self.state.used, self.state.blocks
            ));
        }
        Ok((free_bytes, used_blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(size: u64) -> (Vec<u64>, HeapState) {
        let mut mem = vec![0u64; (size / 8) as usize];
        let mut state = HeapState {
            size: 0,
            free_head: NONE,
            used: 0,
            blocks: 0,
        };
        Heap::format(&mut mem, &mut state, size);
        (mem, state)
    }

    #[test]
    fn alloc_split_free_coalesce_reuse() {
        let (mut mem, mut st) = heap(64 * 1024);
        let mut h = Heap {
            mem: &mut mem,
            state: &mut st,
        };
        let a = h.alloc(block_size_for(100).unwrap()).unwrap();
        let b = h.alloc(block_size_for(1000).unwrap()).unwrap();
        let c = h.alloc(block_size_for(1).unwrap()).unwrap();
        assert_eq!(a % 64, 0);
        assert_eq!(h.block_size(a), 64 + 128);
        assert!(b >= a + 192 && c >= b + 64 + 1024);
        h.check().unwrap();
        h.free(b);
        h.check().unwrap();
        h.free(a);
        h.check().unwrap();
        // a and b merged: a block of 192 + 1088 bytes is available at a.
        let d = h.alloc(192 + 1088).unwrap();
        assert_eq!(d, a);
        h.free(d);
        h.free(c);
        let (free, used) = h.check().unwrap();
        assert_eq!((free, used), (64 * 1024, 0));
        assert_eq!(h.alloc(64 * 1024), Some(0), "everything coalesced back");
        assert_eq!(h.alloc(MIN_BLOCK), None);
    }

    #[test]
    fn random_alloc_free_keeps_invariants() {
        let (mut mem, mut st) = heap(1 << 20);
        let mut h = Heap {
            mem: &mut mem,
            state: &mut st,
        };
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut x = 0x1234_5678_u64;
        for round in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || live.is_empty() {
                let want = block_size_for(x % 20_000).unwrap();
                if let Some(b) = h.alloc(want) {
                    let got = h.block_size(b);
                    assert!(got >= want);
                    for &(o, s) in &live {
                        assert!(b + got <= o || o + s <= b, "overlap");
                    }
                    live.push((b, got));
                }
            } else {
                let (b, _) = live.swap_remove((x as usize / 3) % live.len());
                h.free(b);
            }
            if round % 500 == 0 {
                h.check().unwrap();
            }
        }
        h.check().unwrap();
        // Rebuild from the live list reproduces a valid heap with the same use.
        let used = h.state.used;
        live.sort_unstable();
        h.rebuild(&live).unwrap();
        h.check().unwrap();
        assert_eq!(h.state.used, used);
        for (b, _) in live.drain(..) {
            h.free(b);
        }
        assert_eq!(h.check().unwrap(), (1 << 20, 0));
    }

    #[test]
    fn rebuild_rejects_overlap() {
        let (mut mem, mut st) = heap(8192);
        let mut h = Heap {
            mem: &mut mem,
            state: &mut st,
        };
        assert!(h.rebuild(&[(0, 256), (128, 256)]).is_err());
        assert!(h.rebuild(&[(0, 256), (256, 9000)]).is_err());
        h.rebuild(&[(128, 256)]).unwrap();
        h.check().unwrap();
    }
}
