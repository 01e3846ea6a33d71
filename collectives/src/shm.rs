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
//! [`CollectiveError::Mismatch`] instead of reading past the data.
//!
//! # Lifetime
//!
//! The segment is created by rank 0 of the communicator under a fresh name,
//! the name travels by point-to-point broadcast, every member maps it, and
//! after an allreduce that confirms all mapped it, rank 0 unlinks the name.
//! From then on nothing is left in `/dev/shm` even if ranks are killed.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};

const MAGIC: u64 = 0x4c55_4d45_4e43_4f4c;
const VERSION: u64 = 2;
const HEADER: usize = 4096;
const CONTROL: usize = INLINE_OFFSET + INLINE_DEPTH * INLINE_ENTRY;
const DONE_OFFSET: usize = 64;
const LEN_OFFSET: usize = 8;
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

/// How long a waiter spins before it starts yielding the core.
const SPIN_ROUNDS: u32 = 256;

/// A mapped collective segment.
pub(crate) struct Segment {
    base: NonNull<u8>,
    len: usize,
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
    single_copy: std::sync::atomic::AtomicBool,
    /// This process's probe word, whose address the others try to read.
    probe: Box<AtomicU64>,
}

// SAFETY: the segment is plain shared memory; all cross-process and
// cross-thread accesses go through atomics (flags) or through regions the
// protocol gives to one writer at a time, and the communicator's execution
// lock serialises this rank's use of it.
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

fn slot_index(step: u64) -> usize {
    (step % SLOTS as u64) as usize
}

fn layout(size: usize, slot_bytes: usize) -> (usize, usize) {
    let data = (HEADER + size * CONTROL).next_multiple_of(4096);
    (data, data + SLOTS * size * slot_bytes)
}

fn os_error(what: &str, name: &str) -> String {
    format!("{what} {name}: {}", std::io::Error::last_os_error())
}

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

/// Removes a segment name (the mappings stay valid).
pub(crate) fn unlink(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: `c` is a valid NUL-terminated string; shm_unlink only
        // removes the name.
        unsafe { libc::shm_unlink(c.as_ptr()) };
    }
}

impl Segment {
    /// Creates and maps a segment for `size` ranks; returns its name.
    pub(crate) fn create(
        size: usize,
        slot_bytes: usize,
    ) -> std::result::Result<(String, Segment), String> {
        let name = fresh_name();
        let c = CString::new(name.clone()).map_err(|e| e.to_string())?;
        let (_, len) = layout(size, slot_bytes);
        // SAFETY: valid C string; flags create a new object or fail.
        let fd = unsafe {
            libc::shm_open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600,
            )
        };
        if fd < 0 {
            return Err(os_error("shm_open", &name));
        }
        // SAFETY: `fd` is the descriptor just opened.
        let sized = unsafe { libc::ftruncate(fd, len as libc::off_t) } == 0;
        let mapped = if sized { Self::map(fd, len) } else { None };
        let error = os_error("sizing or mapping", &name);
        // SAFETY: `fd` is ours; the mapping (if any) keeps the object alive.
        unsafe { libc::close(fd) };
        let Some(base) = mapped else {
            unlink(&name);
            return Err(error);
        };
        let segment = Segment::attach(base, len, size, 0, slot_bytes);
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
        let c = CString::new(name).map_err(|e| e.to_string())?;
        let (_, len) = layout(size, slot_bytes);
        // SAFETY: valid C string; opens an existing object.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(os_error("shm_open", name));
        }
        // SAFETY: an all-zero `stat` is a valid value for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is a valid out-pointer.
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_size as usize == len;
        let mapped = if ok { Self::map(fd, len) } else { None };
        let error = os_error("sizing or mapping", name);
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        let base = mapped.ok_or(error)?;
        let segment = Segment::attach(base, len, size, rank, slot_bytes);
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

    fn map(fd: libc::c_int, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: maps `len` bytes of an object of at least that size,
        // shared, at an address the kernel chooses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast())
        }
    }

    fn attach(base: NonNull<u8>, len: usize, size: usize, rank: usize, slot_bytes: usize) -> Self {
        Segment {
            base,
            len,
            size,
            rank,
            slot_bytes,
            data: layout(size, slot_bytes).0,
            step: AtomicU64::new(0),
            seen: (0..size).map(|_| AtomicU64::new(0)).collect(),
            single_copy: std::sync::atomic::AtomicBool::new(false),
            probe: Box::new(AtomicU64::new(MAGIC ^ rank as u64)),
        }
    }

    /// The 8-byte word at `offset` (8-aligned, inside the header/controls).
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.data);
        // SAFETY: `offset` is 8-aligned and inside the mapping (the control
        // area precedes the data); the mapping lives as long as `self`, and
        // AtomicU64 has the layout of u64.
        unsafe { &*(self.base.as_ptr().add(offset).cast::<AtomicU64>()) }
    }

    fn arrive(&self, rank: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL)
    }

    /// The chunk length of `rank`'s data in slot `index`: only ranks that
    /// write their slot publish one, and by the rule that guards the slot it
    /// is not rewritten before every reader has compared it.
    fn len_word(&self, rank: usize, index: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL + LEN_OFFSET + 8 * index)
    }

    fn done(&self, rank: usize) -> &AtomicU64 {
        self.word(HEADER + rank * CONTROL + DONE_OFFSET)
    }

    fn slot_ptr(&self, rank: usize, index: usize) -> *mut u8 {
        let offset = self.data + (SLOTS * rank + index) * self.slot_bytes;
        debug_assert!(offset + self.slot_bytes <= self.len);
        // SAFETY: inside the mapping by construction of the layout.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// Elements `range` of slot `slot` of `rank`, as a slice.
    ///
    /// # Safety
    /// The protocol must give the caller read access to those bytes now (no
    /// rank writes them until the caller has published its next step), and
    /// `range.end * size_of::<T>() <= slot_bytes`.
    unsafe fn slot<T: Element>(
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
    fn write_own<T: Element>(&self, slot: usize, at: usize, data: &[T]) {
        debug_assert!((at + data.len()) * std::mem::size_of::<T>() <= self.slot_bytes);
        let p = self.slot_ptr(self.rank, slot).cast::<T>();
        // SAFETY: this rank's slot is written only by this rank, and only
        // once every member has finished the step that last read this
        // slot (`begin_write`); the range is inside the slot.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(at), data.len()) };
    }

    fn next_step(&self) -> u64 {
        // Only the thread holding the communicator's execution lock gets
        // here, so a load and a store do (no locked read-modify-write).
        let step = self.step.load(Ordering::Relaxed) + 1;
        self.step.store(step, Ordering::Relaxed);
        step
    }

    /// Publishes `arrive = step`, with the length of the data this rank
    /// wrote into its slot in this step, if it wrote one.
    fn publish(&self, step: u64, len: Option<usize>) {
        if let Some(len) = len {
            self.len_word(self.rank, slot_index(step))
                .store(len as u64, Ordering::Relaxed);
        }
        self.arrive(self.rank).store(step, Ordering::Release);
    }

    fn check_len(&self, op: &'static str, peer: usize, step: u64, len: usize) -> Result<()> {
        let got = self
            .len_word(peer, slot_index(step))
            .load(Ordering::Relaxed) as usize;
        if got != len {
            return Err(CollectiveError::Mismatch {
                op,
                peer: peer as u32,
                got,
                expected: len,
            });
        }
        Ok(())
    }

    /// Spins, then yields, until `ready()`; `alive` runs about every
    /// `LIVENESS_POLL` and fails when a rank of the job has died.
    fn wait(
        ready: impl Fn() -> bool,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if ready() {
            return Ok(());
        }
        let mut last = Instant::now();
        let mut rounds = 0u32;
        loop {
            for _ in 0..if yield_wait { 1 } else { 32 } {
                if ready() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            rounds = rounds.wrapping_add(1);
            if yield_wait || rounds > SPIN_ROUNDS {
                std::thread::yield_now();
            }
            if rounds % 64 == 0 && last.elapsed() >= crate::comm::LIVENESS_POLL {
                alive()?;
                last = Instant::now();
            }
        }
    }

    fn wait_all(
        &self,
        flag: impl Fn(&Segment, usize) -> &AtomicU64,
        at_least: u64,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        for q in 0..self.size {
            if q != self.rank {
                Self::wait(
                    || flag(self, q).load(Ordering::Acquire) >= at_least,
                    yield_wait,
                    alive,
                )?;
            }
        }
        Ok(())
    }

    /// Waits until this rank may write its slot in `step`: every member has
    /// arrived at `step - D + 1`. The arrivals seen last time are kept, so
    /// a rank running ahead (a broadcast root) reads the others' control
    /// lines, which their owners keep writing, only every `D - 1` steps.
    fn begin_write(
        &self,
        step: u64,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.begin_write_depth(step, SLOTS, yield_wait, alive)
    }

    /// [`Segment::begin_write`] for a ring of `depth` entries (slots or
    /// inline lines): every member has arrived at `step - depth + 1`.
    fn begin_write_depth(
        &self,
        step: u64,
        depth: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let at_least = step.saturating_sub(depth as u64 - 1);
        for q in 0..self.size {
            if q == self.rank || self.seen[q].load(Ordering::Relaxed) >= at_least {
                continue;
            }
            let flag = self.arrive(q);
            Self::wait(
                || flag.load(Ordering::Acquire) >= at_least,
                yield_wait,
                alive,
            )?;
            self.seen[q].store(flag.load(Ordering::Acquire), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Barrier: every member arrives.
    pub(crate) fn barrier(
        &self,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let step = self.next_step();
        self.publish(step, None);
        self.wait_all(Segment::arrive, step, yield_wait, alive)
    }

    /// Allreduce in place; chunks of at most `small` bytes are reduced whole
    /// by every rank, longer ones split among the ranks.
    pub(crate) fn allreduce<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        small: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let per_chunk = (self.slot_bytes / std::mem::size_of::<T>().max(1)).max(1);
        let p = self.size;
        for chunk in buffer.chunks_mut(per_chunk) {
            let n = chunk.len();
            let step = self.next_step();
            let slot = slot_index(step);
            self.begin_write(step, yield_wait, alive)?;
            self.write_own(slot, 0, chunk);
            self.publish(step, Some(n));
            self.wait_all(Segment::arrive, step, yield_wait, alive)?;
            for q in 0..p {
                if q != self.rank {
                    self.check_len("allreduce", q, step, n)?;
                }
            }
            if std::mem::size_of_val(chunk) <= small || n < p {
                // SAFETY: every member has published step `step`, and none
                // writes that slot index again before this rank publishes
                // step + 1 (`begin_write`).
                chunk.copy_from_slice(unsafe { self.slot::<T>(0, slot, 0..n) });
                for q in 1..p {
                    // SAFETY: as above.
                    T::reduce_slices(op, chunk, unsafe { self.slot::<T>(q, slot, 0..n) });
                }
                continue;
            }
            let portion = |q: usize| q * n / p..(q + 1) * n / p;
            let mine = portion(self.rank);
            {
                // The buffer already holds this rank's contribution; the
                // other ranks copy this portion from here, so the order of
                // the reduction needs no agreement.
                let out = &mut chunk[mine.clone()];
                for q in (0..p).filter(|&q| q != self.rank) {
                    // SAFETY: as above; portion `rank` of every slot is
                    // read only by this rank in this phase.
                    T::reduce_slices(op, out, unsafe { self.slot::<T>(q, slot, mine.clone()) });
                }
            }
            self.write_own(slot, mine.start, &chunk[mine.clone()]);
            self.done(self.rank).store(step, Ordering::Release);
            self.wait_all(Segment::done, step, yield_wait, alive)?;
            for q in 0..p {
                if q != self.rank {
                    let theirs = portion(q);
                    // SAFETY: rank q published `done = step` after writing
                    // its reduced portion, and rewrites that slot only after
                    // this rank publishes step + 1.
                    chunk[theirs.clone()]
                        .copy_from_slice(unsafe { self.slot::<T>(q, slot, theirs) });
                }
            }
        }
        Ok(())
    }

    fn inline_line(&self, rank: usize, step: u64) -> usize {
        HEADER
            + rank * CONTROL
            + INLINE_OFFSET
            + INLINE_ENTRY * (step % INLINE_DEPTH as u64) as usize
    }

    /// Writes `data` (at most [`INLINE_BYTES`]) into this rank's inline line
    /// of `step` and stamps it.
    fn write_inline<T: Element>(&self, step: u64, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        debug_assert!(bytes.len() <= INLINE_BYTES);
        let line = self.inline_line(self.rank, step);
        // SAFETY: the data bytes of this rank's inline entry are written
        // only by this rank, and only after `begin_write` (no reader of the
        // step that last used the line is left); inside the control area.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(line + 16),
                bytes.len(),
            )
        };
        self.word(line + 8)
            .store(bytes.len() as u64, Ordering::Relaxed);
        self.word(line).store(step, Ordering::Release);
    }

    /// Waits for member `q`'s inline line of `step` and returns its data.
    fn read_inline<T: Element>(
        &self,
        op: &'static str,
        q: usize,
        step: u64,
        n: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<&[T]> {
        let line = self.inline_line(q, step);
        let stamp = self.word(line);
        Self::wait(|| stamp.load(Ordering::Acquire) >= step, yield_wait, alive)?;
        let got = self.word(line + 8).load(Ordering::Relaxed) as usize;
        let expected = n * std::mem::size_of::<T>();
        if got != expected {
            return Err(CollectiveError::Mismatch {
                op,
                peer: q as u32,
                got,
                expected,
            });
        }
        // SAFETY: the line is 16-aligned at +16 (aligned for every element
        // type), `expected <= INLINE_BYTES`, and q rewrites it only after
        // this rank has published a later step.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(line + 16).cast::<T>(), n) })
    }

    /// Allreduce of at most [`INLINE_BYTES`] through inline lines; every
    /// rank reduces in rank order, so all get the same bits.
    pub(crate) fn allreduce_inline<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let n = buffer.len();
        let step = self.next_step();
        self.begin_write_depth(step, INLINE_DEPTH, yield_wait, alive)?;
        self.write_inline(step, buffer);
        self.publish(step, None);
        let mut own = [0u64; INLINE_BYTES / 8];
        bytemuck::cast_slice_mut::<u64, u8>(&mut own)[..std::mem::size_of_val(buffer)]
            .copy_from_slice(bytemuck::cast_slice(buffer));
        let own: &[T] = &bytemuck::cast_slice::<u64, T>(&own)[..n];
        for q in 0..self.size {
            let data = if q == self.rank {
                own
            } else {
                self.read_inline("allreduce", q, step, n, yield_wait, alive)?
            };
            if q == 0 {
                buffer.copy_from_slice(data);
            } else {
                T::reduce_slices(op, buffer, data);
            }
        }
        Ok(())
    }

    /// Broadcast of at most [`INLINE_BYTES`] through the root's inline line.
    pub(crate) fn bcast_inline<T: Element>(
        &self,
        buffer: &mut [T],
        root: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let step = self.next_step();
        if self.rank == root {
            self.begin_write_depth(step, INLINE_DEPTH, yield_wait, alive)?;
            self.write_inline(step, buffer);
            self.publish(step, None);
            return Ok(());
        }
        self.publish(step, None);
        let data = self.read_inline("bcast", root, step, buffer.len(), yield_wait, alive)?;
        buffer.copy_from_slice(data);
        Ok(())
    }

    /// Writes `parts` one after the other into this rank's slot of a new
    /// step, publishes it and waits until every member has published it;
    /// returns the step and its slot index. The caller then reads the other
    /// members' slots of that step.
    fn post<T: Element>(
        &self,
        parts: &[&[T]],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(u64, usize)> {
        let step = self.next_step();
        let slot = slot_index(step);
        self.begin_write(step, yield_wait, alive)?;
        let mut at = 0;
        for part in parts {
            self.write_own(slot, at, part);
            at += part.len();
        }
        self.publish(step, Some(at));
        self.wait_all(Segment::arrive, step, yield_wait, alive)?;
        Ok((step, slot))
    }

    /// Publishes this process's pid and the address of its probe word in its
    /// control line (before the setup's agreement, which orders it before
    /// the others' [`Segment::probe_single_copy`]).
    pub(crate) fn announce(&self) {
        let base = HEADER + self.rank * CONTROL;
        self.word(base + PID_OFFSET)
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        self.word(base + PROBE_OFFSET)
            .store(&*self.probe as *const AtomicU64 as u64, Ordering::Release);
    }

    /// Whether this rank can read every other member's memory with
    /// `process_vm_readv` (refused under some ptrace policies and
    /// containers): reads each member's probe word.
    pub(crate) fn probe_single_copy(&self) -> bool {
        (0..self.size).filter(|&q| q != self.rank).all(|q| {
            let base = HEADER + q * CONTROL;
            let addr = self.word(base + PROBE_OFFSET).load(Ordering::Acquire);
            let mut word = [0u8; 8];
            addr != 0
                && self.read_peer(q, addr, &mut word).is_ok()
                && u64::from_ne_bytes(word) == MAGIC ^ q as u64
        })
    }

    /// Turns the single-copy algorithms on (every member agreed).
    pub(crate) fn enable_single_copy(&self) {
        self.single_copy.store(true, Ordering::Relaxed);
    }

    /// Whether the single-copy algorithms are on.
    pub(crate) fn single_copy(&self) -> bool {
        self.single_copy.load(Ordering::Relaxed)
    }

    /// Copies `dst.len()` bytes at address `addr` of member `q` into `dst`.
    fn read_peer(&self, q: usize, addr: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let pid = self
            .word(HEADER + q * CONTROL + PID_OFFSET)
            .load(Ordering::Relaxed) as i32;
        lumen_transport::read_process_memory(pid, addr, dst)
    }

    fn read_elements<T: Element>(
        &self,
        op: &'static str,
        q: usize,
        addr: u64,
        dst: &mut [T],
    ) -> Result<()> {
        self.read_peer(q, addr, bytemuck::cast_slice_mut(dst))
            .map_err(|e| CollectiveError::SingleCopy {
                op,
                peer: q as u32,
                detail: e.to_string(),
            })
    }

    /// Publishes where this rank's data lies (address and element count)
    /// in a new step and waits until every member in `wait_for` has
    /// published theirs; returns the step and slot index.
    fn post_address<T>(
        &self,
        data: &[T],
        wait_for: Option<usize>,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(u64, usize)> {
        let step = self.next_step();
        let slot = slot_index(step);
        self.begin_write(step, yield_wait, alive)?;
        self.write_own(slot, 0, &[data.as_ptr() as u64, data.len() as u64]);
        self.publish(step, Some(2));
        match wait_for {
            None => self.wait_all(Segment::arrive, step, yield_wait, alive)?,
            Some(q) if q == self.rank => {}
            Some(q) => Self::wait(
                || self.arrive(q).load(Ordering::Acquire) >= step,
                yield_wait,
                alive,
            )?,
        }
        Ok((step, slot))
    }

    /// The address and element count member `q` published in `slot`.
    fn address_of(
        &self,
        op: &'static str,
        q: usize,
        step: u64,
        slot: usize,
    ) -> Result<(u64, usize)> {
        self.check_len(op, q, step, 2)?;
        // SAFETY: member q published this step after writing the two words,
        // and rewrites them only after this rank has published a later step.
        let words = unsafe { self.slot::<u64>(q, slot, 0..2) };
        Ok((words[0], words[1] as usize))
    }

    /// Publishes `done = step` and waits until the members in `wait_for`
    /// (all when `None`) have: nobody's buffer is released while read.
    fn finish(
        &self,
        step: u64,
        wait_for: Option<usize>,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.done(self.rank).store(step, Ordering::Release);
        match wait_for {
            None => self.wait_all(Segment::done, step, yield_wait, alive),
            Some(q) if q == self.rank => Ok(()),
            Some(q) => Self::wait(
                || self.done(q).load(Ordering::Acquire) >= step,
                yield_wait,
                alive,
            ),
        }
    }

    /// Allgather(v) by single-copy reads: every rank publishes where its
    /// block lies and reads the others' blocks straight into `recv`. The
    /// own block must already be in `recv` or be `send`.
    pub(crate) fn allgatherv_single_copy<T: Element>(
        &self,
        send: Option<&[T]>,
        recv: &mut [T],
        offsets: &[usize],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let own = offsets[self.rank]..offsets[self.rank + 1];
        let (step, slot) = match send {
            Some(send) => self.post_address(send, None, yield_wait, alive)?,
            None => self.post_address(&recv[own], None, yield_wait, alive)?,
        };
        for q in (0..self.size).filter(|&q| q != self.rank) {
            let (addr, count) = self.address_of("allgather", q, step, slot)?;
            let want = offsets[q + 1] - offsets[q];
            if count != want {
                return Err(CollectiveError::Mismatch {
                    op: "allgather",
                    peer: q as u32,
                    got: count * std::mem::size_of::<T>(),
                    expected: want * std::mem::size_of::<T>(),
                });
            }
            self.read_elements("allgather", q, addr, &mut recv[offsets[q]..offsets[q + 1]])?;
        }
        self.finish(step, None, yield_wait, alive)
    }

    /// Allreduce by single-copy reads, for long buffers: rank `r` reads
    /// portion `r` of every other member's buffer (in pieces that stay in
    /// cache), reduces it into its own buffer, and once all have done so,
    /// reads the other portions' results straight from their owners. Each
    /// byte crosses between processes twice and is copied nowhere else.
    pub(crate) fn allreduce_single_copy<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let p = self.size;
        let n = buffer.len();
        let size = std::mem::size_of::<T>() as u64;
        let (step, slot) = self.post_address(buffer, None, yield_wait, alive)?;
        let mut peers = Vec::with_capacity(p);
        for q in 0..p {
            if q == self.rank {
                peers.push(0);
                continue;
            }
            let (addr, count) = self.address_of("allreduce", q, step, slot)?;
            if count != n {
                return Err(CollectiveError::Mismatch {
                    op: "allreduce",
                    peer: q as u32,
                    got: count * size as usize,
                    expected: n * size as usize,
                });
            }
            peers.push(addr);
        }
        let portion = |q: usize| q * n / p..(q + 1) * n / p;
        let mine = portion(self.rank);
        let piece = (64 * 1024 / size as usize).max(1);
        let mut scratch = vec![T::zeroed(); piece.min(mine.len())];
        let mut at = mine.start;
        while at < mine.end {
            let end = (at + piece).min(mine.end);
            let tmp = &mut scratch[..end - at];
            for q in (0..p).filter(|&q| q != self.rank) {
                self.read_elements("allreduce", q, peers[q] + at as u64 * size, tmp)?;
                T::reduce_slices(op, &mut buffer[at..end], tmp);
            }
            at = end;
        }
        // Every portion is reduced (and nobody reads inputs any more).
        self.done(self.rank).store(step, Ordering::Release);
        self.wait_all(Segment::done, step, yield_wait, alive)?;
        for q in (0..p).filter(|&q| q != self.rank) {
            let theirs = portion(q);
            let addr = peers[q] + theirs.start as u64 * size;
            self.read_elements("allreduce", q, addr, &mut buffer[theirs])?;
        }
        // Nobody returns (and lets its buffer change) while it is read.
        self.barrier(yield_wait, alive)
    }

    /// All-to-all by single-copy reads: this rank reads block `rank` of
    /// every member's `send` into block `q` of `recv`.
    pub(crate) fn alltoall_single_copy<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let p = self.size;
        let n = send.len() / p;
        let (step, slot) = self.post_address(send, None, yield_wait, alive)?;
        for q in 0..p {
            let to = q * n..(q + 1) * n;
            if q == self.rank {
                recv[to].copy_from_slice(&send[self.rank * n..(self.rank + 1) * n]);
                continue;
            }
            let (addr, count) = self.address_of("alltoall", q, step, slot)?;
            if count != send.len() {
                return Err(CollectiveError::Mismatch {
                    op: "alltoall",
                    peer: q as u32,
                    got: count * std::mem::size_of::<T>(),
                    expected: std::mem::size_of_val(send),
                });
            }
            let from = addr + (self.rank * n * std::mem::size_of::<T>()) as u64;
            self.read_elements("alltoall", q, from, &mut recv[to])?;
        }
        self.finish(step, None, yield_wait, alive)
    }

    /// Broadcast by single-copy reads from the root's buffer; the root
    /// returns once every member has read it.
    pub(crate) fn bcast_single_copy<T: Element>(
        &self,
        buffer: &mut [T],
        root: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let (step, slot) = self.post_address(buffer, Some(root), yield_wait, alive)?;
        if self.rank == root {
            self.done(self.rank).store(step, Ordering::Release);
            return self.wait_all(Segment::done, step, yield_wait, alive);
        }
        let (addr, count) = self.address_of("bcast", root, step, slot)?;
        if count != buffer.len() {
            return Err(CollectiveError::Mismatch {
                op: "bcast",
                peer: root as u32,
                got: count * std::mem::size_of::<T>(),
                expected: std::mem::size_of_val(buffer),
            });
        }
        self.read_elements("bcast", root, addr, buffer)?;
        self.finish(step, Some(self.rank), yield_wait, alive)
    }

    /// Elements of `T` a slot holds.
    pub(crate) fn capacity<T>(&self) -> usize {
        self.slot_bytes / std::mem::size_of::<T>().max(1)
    }

    /// Allgather with a count per rank: block `q` of `recv` is
    /// `offsets[q]..offsets[q + 1]`. This rank's block comes from `send`, or
    /// from `recv` itself when `send` is `None` (in place); it is not copied
    /// into `recv` here.
    pub(crate) fn allgatherv<T: Element>(
        &self,
        send: Option<&[T]>,
        recv: &mut [T],
        offsets: &[usize],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let cap = self.capacity::<T>().max(1);
        let count = |q: usize| offsets[q + 1] - offsets[q];
        let longest = (0..self.size).map(count).max().unwrap_or(0);
        for i in 0..longest.div_ceil(cap) {
            let piece = |q: usize| (i * cap).min(count(q))..((i + 1) * cap).min(count(q));
            let mine = piece(self.rank);
            let (step, slot) = {
                let source = match send {
                    Some(send) => &send[mine],
                    None => &recv[offsets[self.rank] + mine.start..offsets[self.rank] + mine.end],
                };
                self.post(&[source], yield_wait, alive)?
            };
            for q in (0..self.size).filter(|&q| q != self.rank) {
                let theirs = piece(q);
                self.check_len("allgather", q, step, theirs.len())?;
                // SAFETY: member q published this step after writing its
                // slot, and rewrites it only after this rank has published
                // a later step (`begin_write`).
                let data = unsafe { self.slot::<T>(q, slot, 0..theirs.len()) };
                recv[offsets[q] + theirs.start..offsets[q] + theirs.end].copy_from_slice(data);
            }
        }
        Ok(())
    }

    /// Reduce-scatter of `size` equal blocks in place: block `rank` of
    /// `buffer` becomes the reduction of every member's block `rank`; the
    /// other blocks are left as they were. Needs `capacity::<T>() >= size`.
    pub(crate) fn reduce_scatter<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let p = self.size;
        let n = buffer.len() / p;
        let cap = (self.capacity::<T>() / p).max(1);
        for i in 0..n.div_ceil(cap) {
            let range = i * cap..((i + 1) * cap).min(n);
            let m = range.len();
            let (step, slot) = {
                let parts: Vec<&[T]> = (0..p)
                    .map(|b| &buffer[b * n + range.start..b * n + range.end])
                    .collect();
                self.post(&parts, yield_wait, alive)?
            };
            let out = &mut buffer[self.rank * n + range.start..self.rank * n + range.end];
            for q in (0..p).filter(|&q| q != self.rank) {
                self.check_len("reduce_scatter", q, step, m * p)?;
                let mine = self.rank * m..(self.rank + 1) * m;
                // SAFETY: as in `allgatherv`.
                T::reduce_slices(op, out, unsafe { self.slot::<T>(q, slot, mine) });
            }
        }
        Ok(())
    }

    /// All-to-all of `size` equal blocks: block `j` of `send` goes to member
    /// `j`, block `i` of `recv` comes from member `i`. Needs
    /// `capacity::<T>() >= size`.
    pub(crate) fn alltoall<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let p = self.size;
        let n = send.len() / p;
        let cap = (self.capacity::<T>() / p).max(1);
        for i in 0..n.div_ceil(cap) {
            let range = i * cap..((i + 1) * cap).min(n);
            let m = range.len();
            let parts: Vec<&[T]> = (0..p)
                .map(|b| &send[b * n + range.start..b * n + range.end])
                .collect();
            let (step, slot) = self.post(&parts, yield_wait, alive)?;
            for (q, part) in parts.iter().enumerate() {
                let to = q * n + range.start..q * n + range.end;
                if q == self.rank {
                    recv[to].copy_from_slice(part);
                    continue;
                }
                self.check_len("alltoall", q, step, m * p)?;
                let mine = self.rank * m..(self.rank + 1) * m;
                // SAFETY: as in `allgatherv`.
                recv[to].copy_from_slice(unsafe { self.slot::<T>(q, slot, mine) });
            }
        }
        Ok(())
    }

    /// Broadcast from `root`.
    pub(crate) fn bcast<T: Element>(
        &self,
        buffer: &mut [T],
        root: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let per_chunk = (self.slot_bytes / std::mem::size_of::<T>().max(1)).max(1);
        for chunk in buffer.chunks_mut(per_chunk) {
            let n = chunk.len();
            let step = self.next_step();
            let slot = slot_index(step);
            if self.rank == root {
                self.begin_write(step, yield_wait, alive)?;
                self.write_own(slot, 0, chunk);
                self.publish(step, Some(n));
            } else {
                self.publish(step, None);
                Self::wait(
                    || self.arrive(root).load(Ordering::Acquire) >= step,
                    yield_wait,
                    alive,
                )?;
                self.check_len("bcast", root, step, n)?;
                // SAFETY: the root published `step` after writing, and
                // rewrites this slot only after every member (this one
                // too) has published step + 1.
                chunk.copy_from_slice(unsafe { self.slot::<T>(root, slot, 0..n) });
            }
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `create`/`open`, and
        // no reference into it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_sized() {
        for size in 1..9 {
            let (data, len) = layout(size, 65536);
            assert_eq!(data % 4096, 0);
            assert!(data >= HEADER + size * CONTROL);
            assert_eq!(len, data + SLOTS * size * 65536);
        }
    }

    #[test]
    fn threads_as_ranks_agree() {
        // Two "ranks" as threads of one process, each with its own mapping.
        let (name, first) = Segment::create(3, 4096).unwrap();
        let others: Vec<Segment> = (1..3)
            .map(|r| Segment::open(&name, 3, r, 4096).unwrap())
            .collect();
        unlink(&name);
        let mut all = vec![first];
        all.extend(others);
        let results: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = all
                .iter()
                .enumerate()
                .map(|(r, seg)| {
                    s.spawn(move || {
                        let mut alive = || Ok(());
                        let mut out = Vec::new();
                        for len in [1usize, 7, 100, 5000] {
                            let mut v: Vec<u64> =
                                (0..len as u64).map(|i| i * 10 + r as u64).collect();
                            seg.allreduce(&mut v, ReduceOp::Sum, 256, false, &mut alive)
                                .unwrap();
                            out.extend(v);
                            let mut b: Vec<u64> = if r == 2 {
                                (0..len as u64).collect()
                            } else {
                                vec![0; len]
                            };
                            seg.bcast(&mut b, 2, false, &mut alive).unwrap();
                            out.extend(b);
                            seg.barrier(false, &mut alive).unwrap();
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut expected = Vec::new();
        for len in [1u64, 7, 100, 5000] {
            expected.extend((0..len).map(|i| 3 * i * 10 + 3));
            expected.extend(0..len);
        }
        for r in results {
            assert_eq!(r, expected);
        }
    }

    #[test]
    fn exchanges_agree_across_threads() {
        let p = 3;
        let (name, first) = Segment::create(p, 4096).unwrap();
        let mut all = vec![first];
        all.extend((1..p).map(|r| Segment::open(&name, p, r, 4096).unwrap()));
        unlink(&name);
        std::thread::scope(|s| {
            for (r, seg) in all.iter().enumerate() {
                s.spawn(move || {
                    let mut alive = || Ok(());
                    // Uneven counts, longer than a slot (512 u64).
                    let counts = [700usize, 3, 1100];
                    let mut offsets = vec![0];
                    for c in counts {
                        offsets.push(offsets.last().unwrap() + c);
                    }
                    let block = |q: usize| -> Vec<u64> {
                        (0..counts[q] as u64).map(|i| i * 7 + q as u64).collect()
                    };
                    let mut recv = vec![0u64; offsets[p]];
                    let mine = block(r);
                    seg.allgatherv(Some(&mine), &mut recv, &offsets, false, &mut alive)
                        .unwrap();
                    recv[offsets[r]..offsets[r + 1]].copy_from_slice(&mine);
                    let expected: Vec<u64> = (0..p).flat_map(block).collect();
                    assert_eq!(recv, expected);

                    let n = 1000;
                    let mut rs: Vec<i64> = (0..(n * p) as i64).map(|i| i + r as i64).collect();
                    seg.reduce_scatter(&mut rs, ReduceOp::Sum, false, &mut alive)
                        .unwrap();
                    let want: Vec<i64> = (r * n..(r + 1) * n).map(|i| 3 * i as i64 + 3).collect();
                    assert_eq!(&rs[r * n..(r + 1) * n], &want[..]);

                    let send: Vec<u32> = (0..(n * p) as u32).map(|i| i * 10 + r as u32).collect();
                    let mut got = vec![0u32; n * p];
                    seg.alltoall(&send, &mut got, false, &mut alive).unwrap();
                    for q in 0..p {
                        for i in 0..n {
                            assert_eq!(got[q * n + i], ((r * n + i) * 10 + q) as u32);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn single_copy_exchanges_agree_across_threads() {
        let p = 3;
        let (name, first) = Segment::create(p, 4096).unwrap();
        let mut all = vec![first];
        all.extend((1..p).map(|r| Segment::open(&name, p, r, 4096).unwrap()));
        unlink(&name);
        for seg in &all {
            seg.announce();
        }
        for seg in &all {
            assert!(seg.probe_single_copy(), "process_vm_readv on our own pid");
        }
        std::thread::scope(|s| {
            for (r, seg) in all.iter().enumerate() {
                s.spawn(move || {
                    let mut alive = || Ok(());
                    let n = 5000;
                    let offsets: Vec<usize> = (0..=p).map(|q| q * n).collect();
                    let mine: Vec<u64> = (0..n as u64).map(|i| i * 7 + r as u64).collect();
                    let mut recv = vec![0u64; n * p];
                    seg.allgatherv_single_copy(Some(&mine), &mut recv, &offsets, false, &mut alive)
                        .unwrap();
                    recv[r * n..(r + 1) * n].copy_from_slice(&mine);
                    for q in 0..p {
                        for i in 0..n {
                            assert_eq!(recv[q * n + i], (i * 7 + q) as u64);
                        }
                    }
                    let send: Vec<u32> = (0..(n * p) as u32).map(|i| i * 10 + r as u32).collect();
                    let mut got = vec![0u32; n * p];
                    seg.alltoall_single_copy(&send, &mut got, false, &mut alive)
                        .unwrap();
                    for q in 0..p {
                        for i in 0..n {
                            assert_eq!(got[q * n + i], ((r * n + i) * 10 + q) as u32);
                        }
                    }
                    let mut v: Vec<f64> = (0..n).map(|i| (i * 3 + r) as f64).collect();
                    seg.allreduce_single_copy(&mut v, ReduceOp::Sum, false, &mut alive)
                        .unwrap();
                    assert!(v.iter().enumerate().all(|(i, &x)| x == (9 * i + 3) as f64));
                    for len in [1usize, 5, 6] {
                        let mut w: Vec<u64> = vec![r as u64 + 1; len];
                        seg.allreduce_inline(&mut w, ReduceOp::Prod, false, &mut alive)
                            .unwrap();
                        assert_eq!(w, vec![6; len]);
                        let mut b: Vec<u64> = vec![r as u64; len];
                        seg.bcast_inline(&mut b, 2, false, &mut alive).unwrap();
                        assert_eq!(b, vec![2; len]);
                    }
                    let mut b: Vec<i32> = if r == 1 {
                        (0..n as i32).collect()
                    } else {
                        vec![0; n]
                    };
                    seg.bcast_single_copy(&mut b, 1, false, &mut alive).unwrap();
                    assert_eq!(b, (0..n as i32).collect::<Vec<_>>());
                });
            }
        });
    }

    #[test]
    fn mismatched_lengths_are_reported() {
        let (name, first) = Segment::create(2, 4096).unwrap();
        let second = Segment::open(&name, 2, 1, 4096).unwrap();
        unlink(&name);
        let errors: Vec<bool> = std::thread::scope(|s| {
            let a = s.spawn(|| {
                let mut v = vec![1u32; 3];
                first
                    .allreduce(&mut v, ReduceOp::Sum, 4096, false, &mut || Ok(()))
                    .is_err()
            });
            let b = s.spawn(|| {
                let mut v = vec![1u32; 4];
                second
                    .allreduce(&mut v, ReduceOp::Sum, 4096, false, &mut || Ok(()))
                    .is_err()
            });
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(errors, vec![true, true]);
    }

    #[test]
    fn open_refuses_a_wrong_shape() {
        let (name, _first) = Segment::create(2, 4096).unwrap();
        assert!(Segment::open(&name, 3, 1, 4096).is_err());
        assert!(Segment::open(&name, 2, 1, 8192).is_err());
        unlink(&name);
        assert!(Segment::open(&name, 2, 1, 4096).is_err());
    }
}
