//! Shared-memory collectives for communicators whose members all share one
//! node: every member maps one segment and the collective moves through it
//! with flag handshakes instead of point-to-point messages.
//!
//! This is the design of Open MPI's `coll/sm` and `coll/xhc` components and
//! of MPICH's intranode "release/gather" collectives (Bayyapu et al.,
//! "Performance Evaluation of Collective Operations on Shared Memory", and
//! Graham & Shipman, "MPI Support for Multi-core Architectures: Optimized
//! Shared Memory Collectives", EuroPVM/MPI 2008): a message between two ranks
//! of a node costs a ring record, a tag match and a receive buffer, while a
//! collective through a shared segment costs one cache-line handshake per
//! phase, and a reduction reads every rank's contribution where it lies.
//!
//! # Layout
//!
//! ```text
//! 0                    Header   magic (written last), version, size, slot_bytes
//! 4096 + C r           Control of rank r (C = 128 + 64 I bytes): arrive, len[D]
//!                      (line 1); done, pid, probe address (line 2); I inline
//!                      entries of two lines (I = INLINE_DEPTH): stamp, length,
//!                      112 bytes of data
//! data + (D r + k) S   slot k of rank r (k = step % D, D = SLOTS), S = slot_bytes
//! ```
//!
//! # Protocol
//!
//! Every member counts the steps it has taken through the segment (`step`,
//! the same on every member because collectives are called in the same
//! order). Step `s` uses slot `s % D` of every rank (`D` = [`SLOTS`]). A rank
//! publishes `arrive = s`
//! once it has finished everything of step `s - 1` and, where it writes its
//! slot in step `s`, once the slot holds its data (release store; readers
//! acquire). Before writing its slot in step `s` a rank waits until every
//! member has arrived at `s - D + 1`: they have then finished step `s - D`,
//! the last reader of that slot. So a slot is never overwritten while read,
//! and a rank that only writes (a broadcast root) runs up to `D - 1` steps
//! ahead of the slowest reader, as an eager sender does.
//!
//! - allreduce, short chunks: write own slot, arrive, wait for all, reduce
//!   every slot in rank order (every rank computes the same bits).
//! - allreduce, long chunks: as above, but rank `r` reduces only portion `r`
//!   of the chunk, writes it back into portion `r` of its own slot (which no
//!   other rank reads in this phase), publishes `done = s`; then every rank
//!   copies the other portions from their owners' slots (reduce-scatter +
//!   allgather through memory: each rank reads the data once).
//! - bcast: the root writes its slot and arrives; the others arrive, wait
//!   for the root, copy out.
//! - barrier: arrive, wait for all.
//! - data of at most 112 bytes (allreduce, bcast) travels in the writer's
//!   inline entry of that step, next to a stamp: a reader waits on the line
//!   it then reads (the second line follows it), so a step costs about one
//!   cache-line transfer per reader instead of two (flag, then slot).
//!
//! Buffers longer than a slot go through in chunks of one slot, in
//! successive slots, so the copies of chunk `i + 1` overlap the reduction of chunk
//! `i` on other ranks.
//!
//! A rank that writes its slot also writes the chunk length next to
//! `arrive` (one word per slot index, guarded like the slot); a reader compares
//! it with its own, so ranks that pass different counts get
//! [`CollectiveError::Mismatch`](crate::CollectiveError::Mismatch) instead of reading past the data.
//!
//! # Lifetime
//!
//! The segment is created by rank 0 of the communicator under a fresh name,
//! the name travels by point-to-point broadcast, every member maps it, and
//! after an allreduce that confirms all mapped it, rank 0 unlinks the name.
//! From then on nothing is left in `/dev/shm` even if ranks are killed.
//!
//! # Where things are
//!
//! ```text
//!   mod.rs          the layout constants and the Segment type
//!   segment.rs      creating, opening and checking the mapping; addresses
//!                   of words, slots and lines inside it
//!   handshake.rs    steps, arrive/done flags, waits (the protocol above)
//!   slots.rs        barrier and the slot-pipeline algorithms
//!   inline.rs       allreduce and bcast of at most INLINE_BYTES
//!   single_copy.rs  algorithms that read peers' buffers (process_vm_readv)
//! ```
//!
//! This module depends on no other part of the communicator: the
//! liveness period comes from `liveness.rs`, below both (re-exported as
//! [`crate::comm::LIVENESS_POLL`]), and the liveness check itself is the
//! `alive` callback every wait receives.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64};

use lumen_transport::sys::SharedMapping;

mod handshake;
mod inline;
mod segment;
mod single_copy;
mod slots;
#[cfg(test)]
mod tests;

pub(crate) use segment::unlink;

/// "LUMENCOL": written last into the header by the creator, and the seed
/// of every rank's probe word (`MAGIC ^ rank`).
const MAGIC: u64 = 0x4c55_4d45_4e43_4f4c;
/// Layout version; a member that finds another one refuses the segment.
const VERSION: u64 = 2;
/// Bytes of the header page (magic, version, size, slot_bytes).
const HEADER: usize = 4096;
/// Bytes of one rank's control block.
const CONTROL: usize = INLINE_OFFSET + INLINE_DEPTH * INLINE_ENTRY;
/// Offsets inside a control block: the length words of the slots (line 1,
/// after `arrive` at 0), then `done`, the pid and the probe address (line 2).
const LEN_OFFSET: usize = 8;
const DONE_OFFSET: usize = 64;
const PID_OFFSET: usize = 72;
const PROBE_OFFSET: usize = 80;
/// Inline lines (one per slot index): stamp, length, then the data.
const INLINE_OFFSET: usize = 128;
/// Bytes of data an inline line carries.
pub const INLINE_BYTES: usize = INLINE_ENTRY - 16;
/// Bytes of an inline entry (stamp, length, data).
const INLINE_ENTRY: usize = 128;
/// Inline lines per rank: how far an inline writer (a broadcast root) may
/// run ahead of the slowest reader, plus one. Deeper than [`SLOTS`]
/// because a line costs 64 bytes where a slot costs `slot_bytes`.
const INLINE_DEPTH: usize = 32;

/// Slots per rank (`D`): how many steps a writer may run ahead of the
/// slowest reader, plus one. At most 7 (the lengths share a cache line
/// with `arrive`).
pub const SLOTS: usize = 7;
const _: () = assert!(LEN_OFFSET + 8 * SLOTS <= DONE_OFFSET);

/// A mapped collective segment.
pub(crate) struct Segment {
    /// Start of `mapping` (kept as `NonNull` for the pointer arithmetic).
    base: NonNull<u8>,
    /// The shared mapping; `base` is valid as long as it lives.
    mapping: SharedMapping,
    size: usize,
    rank: usize,
    slot_bytes: usize,
    data: usize,
    /// Steps taken (the next step is `step + 1`); only the thread holding
    /// the communicator's execution lock touches it.
    step: AtomicU64,
    /// The arrival of each member this rank last observed (`begin_write`).
    seen: Vec<AtomicU64>,
    /// Whether members read each other's buffers with `process_vm_readv`
    /// (agreed by all at setup, see [`Segment::probe_single_copy`]).
    single_copy: AtomicBool,
    /// This process's probe word, whose address the others try to read.
    probe: Box<AtomicU64>,
}

// SAFETY: `base` points into `mapping`, which the segment owns. The
// segment is plain shared memory: all cross-process and cross-thread
// accesses go through atomics (flags) or through regions the protocol gives
// to one writer at a time, and the communicator's execution lock serialises
// this rank's use of it.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("size", &self.size)
            .field("rank", &self.rank)
            .field("slot_bytes", &self.slot_bytes)
            .finish()
    }
}

/// The slot index step `step` uses.
fn slot_index(step: u64) -> usize {
    (step % SLOTS as u64) as usize
}

/// Offset of the first slot and length of a segment for `size` ranks.
fn layout(size: usize, slot_bytes: usize) -> (usize, usize) {
    let data = (HEADER + size * CONTROL).next_multiple_of(4096);
    (data, data + SLOTS * size * slot_bytes)
}
