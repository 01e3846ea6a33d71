//! The mapping: creating a segment under a fresh name, opening it at the
//! other members, checking its header, and the addresses of the words,
//! slots and inline lines inside it. The mapping itself is the
//! transport's platform layer ([`lumen_transport::sys::SharedMapping`]),
//! unmapped when the segment is dropped.
//!
//! Invariants: the header's magic is written last (release) by the
//! creator, and a member that opens the segment checks magic, version,
//! rank count and slot size before it uses anything else, so a stale or
//! foreign object with the same name is refused. Slots start on 4096-byte
//! boundaries, so a slot is aligned for every element type.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lumen_transport::sys::{SharedMapping, SharedObject};

use super::{layout, Segment, CONTROL, DONE_OFFSET, HEADER, LEN_OFFSET, MAGIC, SLOTS, VERSION};
use crate::element::Element;

/// A fresh segment name: pid, time and a counter.
fn fresh_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "/lumen-coll-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a segment name (the mappings stay valid). A name already gone
/// is not an error: the segment works without it.
pub(crate) fn unlink(name: &str) {
    let _ = SharedMapping::unlink(name);
}

impl Segment {
    /// Creates and maps a segment for `size` ranks; returns its name.
    pub(crate) fn create(
        size: usize,
        slot_bytes: usize,
    ) -> std::result::Result<(String, Segment), String> {
        let name = fresh_name();
        let (_, len) = layout(size, slot_bytes);
        let object = SharedObject::create(&name).map_err(|e| format!("shm_open {name}: {e}"))?;
        let mapping = match object.set_len(len as u64).and_then(|()| object.map(len)) {
            Ok(mapping) => mapping,
            Err(e) => {
                unlink(&name);
                return Err(format!("sizing or mapping {name}: {e}"));
            }
        };
        let segment = Segment::attach(mapping, size, 0, slot_bytes)?;
        let header = segment.word(0);
        segment.word(8).store(VERSION, Ordering::Relaxed);
        segment.word(16).store(size as u64, Ordering::Relaxed);
        segment.word(24).store(slot_bytes as u64, Ordering::Relaxed);
        header.store(MAGIC, Ordering::Release);
        Ok((name, segment))
    }

    /// Maps the segment `name` created by rank 0 for `size` ranks.
    pub(crate) fn open(
        name: &str,
        size: usize,
        rank: usize,
        slot_bytes: usize,
    ) -> std::result::Result<Segment, String> {
        let (_, len) = layout(size, slot_bytes);
        let object = SharedObject::open(name).map_err(|e| format!("shm_open {name}: {e}"))?;
        let found = object
            .size()
            .map_err(|e| format!("sizing or mapping {name}: {e}"))?;
        if found != len as u64 {
            return Err(format!(
                "{name}: {found} bytes, not the {len} of {size} ranks with {slot_bytes}-byte slots"
            ));
        }
        let mapping = object
            .map(len)
            .map_err(|e| format!("sizing or mapping {name}: {e}"))?;
        let segment = Segment::attach(mapping, size, rank, slot_bytes)?;
        let valid = segment.word(0).load(Ordering::Acquire) == MAGIC
            && segment.word(8).load(Ordering::Relaxed) == VERSION
            && segment.word(16).load(Ordering::Relaxed) == size as u64
            && segment.word(24).load(Ordering::Relaxed) == slot_bytes as u64;
        if !valid {
            return Err(format!(
                "{name}: header does not match {size} ranks with {slot_bytes}-byte slots"
            ));
        }
        Ok(segment)
    }

    /// Wraps a mapping of `layout(size, slot_bytes).1` bytes.
    fn attach(
        mapping: SharedMapping,
        size: usize,
        rank: usize,
        slot_bytes: usize,
    ) -> std::result::Result<Self, String> {
        let base = NonNull::new(mapping.as_ptr()).ok_or("mmap returned a null mapping")?;
        Ok(Segment {
            base,
            mapping,
            size,
            rank,
            slot_bytes,
            data: layout(size, slot_bytes).0,
            step: AtomicU64::new(0),
            seen: (0..size).map(|_| AtomicU64::new(0)).collect(),
            single_copy: AtomicBool::new(false),
            probe: Box::new(AtomicU64::new(MAGIC ^ rank as u64)),
        })
    }

    /// The 8-byte word at `offset` (8-aligned, inside the header/controls).
    pub(super) fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.data);
        // SAFETY: `offset` is 8-aligned and inside the mapping (the control
        // area precedes the data); the mapping lives as long as `self`, and
        // AtomicU64 has the layout of u64.
        unsafe { &*(self.base.as_ptr().add(offset).cast::<AtomicU64>()) }
    }

    pub(super) fn arrive(&self, rank: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL)
    }

    /// The chunk length of `rank`'s data in slot `index`: only ranks that
    /// write their slot publish one, and by the rule that guards the slot it
    /// is not rewritten before every reader has compared it.
    pub(super) fn len_word(&self, rank: usize, index: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL + LEN_OFFSET + 8 * index)
    }

    pub(super) fn done(&self, rank: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL + DONE_OFFSET)
    }

    pub(super) fn slot_ptr(&self, rank: usize, index: usize) -> *mut u8 {
        let offset = self.data + (SLOTS * rank + index) * self.slot_bytes;
        debug_assert!(offset + self.slot_bytes <= self.mapping.len());
        // SAFETY: inside the mapping by construction of the layout.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// Elements `range` of slot `slot` of `rank`, as a slice.
    ///
    /// # Safety
    /// The protocol must give the caller read access to those bytes now (no
    /// rank writes them until the caller has published its next step), and
    /// `range.end * size_of::<T>() <= slot_bytes`.
    pub(super) unsafe fn slot<T: Element>(
        &self,
        rank: usize,
        slot: usize,
        range: std::ops::Range<usize>,
    ) -> &[T] {
        let p = self.slot_ptr(rank, slot).cast::<T>();
        // SAFETY: slots are 4096-aligned (so aligned for T), the range is
        // inside the slot, and the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(p.add(range.start), range.len()) }
    }

    /// Writes `data` at element offset `at` of this rank's slot `slot`.
    pub(super) fn write_own<T: Element>(&self, slot: usize, at: usize, data: &[T]) {
        debug_assert!((at + data.len()) * std::mem::size_of::<T>() <= self.slot_bytes);
        let p = self.slot_ptr(self.rank, slot).cast::<T>();
        // SAFETY: this rank's slot is written only by this rank, and only
        // once every member has finished the step that last read this
        // slot (`begin_write`); the range is inside the slot.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(at), data.len()) };
    }

    /// Elements of `T` a slot holds.
    pub(crate) fn capacity<T>(&self) -> usize {
        self.slot_bytes / std::mem::size_of::<T>().max(1)
    }
}
