//! The node segment: per-pair single-producer/single-consumer rings in one
//! shared-memory object, plus a doorbell and a liveness slot per local rank.
//!
//! This is the "fast box" idea of Open MPI's shared-memory BTL (vader): the
//! sender writes a record into the ring it alone produces into and publishes it
//! with one release store of its length word; the receiver polls the length
//! word at the head of each incoming ring (one cache line for a small
//! message, where polling `tail` cost a second one: 8 B latency 0.25 ->
//! see BENCHMARKS.md).
//! No lock, no syscall on the fast path. Large messages do not go through the
//! ring: the sender publishes a [`crate::wire::ReadyToSend`] record naming its
//! buffer and the receiver copies straight out of the sender's memory with
//! `process_vm_readv` (one copy, as Open MPI's CMA single-copy path), then bumps
//! the pair's completion counter, which the sender waits on.
//!
//! # Layout (all offsets fixed at creation, checked at attach)
//!
//! ```text
//! 0      SegmentHeader   magic (written last, release), version, local_size, ring_bytes, total_len
//! 4096   RankSlot[local_size]           doorbell, sleepers, pid, state (0 joining, 1 alive, 2 departed), standby, polling
//! ...    RingControl[local_size^2]      tail | head | completions           (3 x 64 B each)
//! ...    ring data [local_size^2][ring_bytes]
//! ```
//!
//! Ring `(from, to)` is index `to * local_size + from`: a receiver's incoming
//! rings are contiguous, so the length words it polls share page tables.
//! (Indexed by sender, a rank's 255 incoming rings at 256 ranks lay 256 MiB
//! apart, and every process built a page-table page per ring on its first
//! poll: 65k zeroed pages per node, 20% of `lumen run -n 256`'s start-up
//! time in `perf`.) A record is a u32 length
//! and a u32 pad, then `length` bytes (frame header + payload), padded to 8; a
//! length of `u32::MAX` tells the consumer to skip to the start of the ring.
//!
//! # Invariants
//! - Only local rank `from` advances `tail` of ring `(from, to)`, only `to`
//!   advances `head`; `head <= tail <= head + ring_bytes` always.
//! - A record's bytes are written before its length word is released, and
//!   are not touched by the producer again until `head` passes them. The
//!   word after the last published record is 0 (the producer zeroes it
//!   before it publishes), so the consumer, which reads only the word at
//!   `head`, sees 0 for "nothing yet" and never a stale length of an
//!   earlier lap. `tail` is the producer's own count (for the free-space
//!   check); the consumer does not read it.
//! - The consumer validates every record length against the ring bounds: a
//!   corrupted ring is reported as an error about that peer, never read out of bounds.

use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::frame::{FrameError, FrameHeader, HEADER_LEN};
use crate::sys::{futex_wait, futex_wake_all, SharedMapping};

const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"LUMENSHM");
// 2: records are published by their length word (was: by `tail`).
// 4: rings grouped by receiver.
const SEGMENT_VERSION: u32 = 4;

/// Doorbells this process rang (each a `futex` wake system call).
static DOORBELL_RINGS: AtomicU64 = AtomicU64::new(0);

/// Rings `slot`'s doorbell: bumps it and wakes whoever sleeps on it.
fn ring(slot: &RankSlot) {
    DOORBELL_RINGS.fetch_add(1, Ordering::Relaxed);
    slot.doorbell.fetch_add(1, Ordering::SeqCst);
    futex_wake_all(&slot.doorbell);
}

/// Wake-up system calls this process made ringing shared-memory doorbells
/// so far (a sender rings only when the receiver sleeps): the count of
/// cross-process hand-offs, for benchmarks and tests.
pub fn doorbell_rings() -> u64 {
    DOORBELL_RINGS.load(Ordering::Relaxed)
}
const HEADER_BYTES: usize = 4096;
const WRAP: u32 = u32::MAX;
const RECORD_PREFIX: usize = 8;

/// Slot state: attached and running.
pub(crate) const STATE_ALIVE: u32 = 1;
/// Slot state: closed its endpoint in an orderly way.
pub(crate) const STATE_DEPARTED: u32 = 2;

#[repr(C)]
struct SegmentHeader {
    magic: AtomicU64,
    version: u32,
    local_size: u32,
    ring_bytes: u64,
    total_len: u64,
}

#[repr(C, align(64))]
struct RankSlot {
    doorbell: AtomicU32,
    sleepers: AtomicU32,
    pid: AtomicI32,
    state: AtomicU32,
    /// The rank's progress thread sleeps on the doorbell standing by
    /// (counted apart from `sleepers`: see `notify`).
    standby: AtomicU32,
    /// A thread of the rank polls its rings itself now.
    polling: AtomicU32,
}

#[repr(C)]
struct RingControl {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
    completions: CachePadded<AtomicU64>,
}

/// What went wrong with the node segment.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The kernel refused to create or map the segment.
    #[error("shared-memory segment /dev/shm/{name}: {source}")]
    Os {
        /// Segment name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The segment exists but was made by another Lumen build or for another job shape.
    #[error("shared-memory segment /dev/shm/{name} does not match: {detail}")]
    Mismatch {
        /// Segment name.
        name: String,
        /// What differs.
        detail: String,
    },
    /// The creator never finished initialising the segment.
    #[error("shared-memory segment /dev/shm/{name} did not appear within {waited:?}: did local rank 0 start?")]
    Timeout {
        /// Segment name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A ring holds a record that cannot be valid: the peer wrote garbage.
    #[error("corrupted ring from local rank {from}: {detail}")]
    Corrupted {
        /// Local index of the producer.
        from: usize,
        /// What was wrong.
        detail: String,
    },
    /// A frame header in the ring failed verification.
    #[error("bad frame in ring from local rank {from}: {source}")]
    Frame {
        /// Local index of the producer.
        from: usize,
        /// The decoder's finding.
        source: FrameError,
    },
}

/// One node's shared segment as seen by one local rank.
#[derive(Debug)]
pub(crate) struct NodeSegment {
    map: SharedMapping,
    local_size: usize,
    ring_bytes: usize,
    slots_at: usize,
    controls_at: usize,
    data_at: usize,
}

fn layout(local_size: usize, ring_bytes: usize) -> (usize, usize, usize, usize) {
    let slots_at = HEADER_BYTES;
    let controls_at = (slots_at + local_size * std::mem::size_of::<RankSlot>())
        .next_multiple_of(std::mem::align_of::<RingControl>());
    let data_at = (controls_at + local_size * local_size * std::mem::size_of::<RingControl>())
        .next_multiple_of(4096);
    let total = data_at + local_size * local_size * ring_bytes;
    (slots_at, controls_at, data_at, total)
}

/// The length word of the record at `pos` of the ring at `base`.
///
/// # Safety
/// `pos` is an 8-aligned offset inside the ring that starts at `base` (an
/// 8-aligned address in the shared mapping), which outlives the reference.
unsafe fn length_word<'a>(base: *mut u8, pos: u64) -> &'a AtomicU32 {
    // SAFETY: in bounds and aligned by the caller's contract; AtomicU32 has
    // the layout of u32, and every access to this word is atomic.
    unsafe { &*base.add(pos as usize).cast::<AtomicU32>() }
}

impl NodeSegment {
    /// Creates the segment (local rank 0 does this, once per node and job).
    pub(crate) fn create(
        name: &str,
        local_size: usize,
        ring_bytes: usize,
    ) -> Result<Self, ShmError> {
        // The endpoint builder validated the config (`TransportConfig::validate`).
        debug_assert!(ring_bytes.is_power_of_two() && ring_bytes >= crate::config::MIN_RING_BYTES);
        let (slots_at, controls_at, data_at, total) = layout(local_size, ring_bytes);
        let os = |source| ShmError::Os {
            name: name.to_string(),
            source,
        };
        let map = match SharedMapping::create(name, total) {
            Ok(map) => map,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A leftover of a crashed job with the same id: job ids are unique per
                // launch, so nobody live can be using it.
                tracing::warn!(segment = name, "removing stale shared-memory segment");
                SharedMapping::unlink(name).map_err(os)?;
                SharedMapping::create(name, total).map_err(os)?
            }
            Err(e) => return Err(os(e)),
        };
        let segment = NodeSegment {
            map,
            local_size,
            ring_bytes,
            slots_at,
            controls_at,
            data_at,
        };
        let header = segment.header_ptr();
        // SAFETY: the mapping is at least HEADER_BYTES long, zeroed, and nobody
        // else reads the plain fields before `magic` is released below.
        unsafe {
            (*header).version = SEGMENT_VERSION;
            (*header).local_size = local_size as u32;
            (*header).ring_bytes = ring_bytes as u64;
            (*header).total_len = total as u64;
        }
        segment
            .header()
            .magic
            .store(SEGMENT_MAGIC, Ordering::Release);
        Ok(segment)
    }

    /// Maps the segment created by local rank 0, waiting up to `timeout` for it.
    pub(crate) fn attach(
        name: &str,
        local_size: usize,
        ring_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, ShmError> {
        let start = std::time::Instant::now();
        let os = |source| ShmError::Os {
            name: name.to_string(),
            source,
        };
        let map = loop {
            if let Some(map) = SharedMapping::open(name).map_err(os)? {
                if map.len() >= HEADER_BYTES {
                    // SAFETY: at least HEADER_BYTES are mapped; magic is an atomic.
                    let magic = unsafe { &(*map.as_ptr().cast::<SegmentHeader>()).magic };
                    if magic.load(Ordering::Acquire) == SEGMENT_MAGIC {
                        break map;
                    }
                }
            }
            if start.elapsed() > timeout {
                return Err(ShmError::Timeout {
                    name: name.to_string(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let (slots_at, controls_at, data_at, total) = layout(local_size, ring_bytes);
        // SAFETY: magic was observed with acquire, so the creator's header writes are visible.
        let (version, found_size, found_ring, found_total) = unsafe {
            let h = map.as_ptr().cast::<SegmentHeader>();
            (
                (*h).version,
                (*h).local_size as usize,
                (*h).ring_bytes as usize,
                (*h).total_len as usize,
            )
        };
        let mismatch = |detail: String| ShmError::Mismatch {
            name: name.to_string(),
            detail,
        };
        if version != SEGMENT_VERSION {
            return Err(mismatch(format!(
                "layout version {version}, this build uses {SEGMENT_VERSION}"
            )));
        }
        if found_size != local_size || found_ring != ring_bytes {
            return Err(mismatch(format!(
                "made for {found_size} local ranks with {found_ring}-byte rings, this rank expects {local_size} and {ring_bytes}: do all ranks share one LUMEN_SHM_RING_BYTES?"
            )));
        }
        if found_total != total || map.len() < total {
            return Err(mismatch(format!(
                "length {} (header says {found_total}), expected {total}",
                map.len()
            )));
        }
        Ok(NodeSegment {
            map,
            local_size,
            ring_bytes,
            slots_at,
            controls_at,
            data_at,
        })
    }

    fn header_ptr(&self) -> *mut SegmentHeader {
        self.map.as_ptr().cast()
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: the header lies within the mapping, which lives as long as `self`.
        unsafe { &*self.header_ptr() }
    }

    fn slot(&self, local: usize) -> &RankSlot {
        debug_assert!(local < self.local_size);
        // SAFETY: slots_at + local_size slots lie within the mapping (checked at
        // attach); RankSlot holds only atomics, so shared references are sound.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(self.slots_at)
                .cast::<RankSlot>()
                .add(local)
        }
    }

    fn control(&self, from: usize, to: usize) -> &RingControl {
        // SAFETY: as for `slot`; index < local_size^2.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(self.controls_at)
                .cast::<RingControl>()
                .add(self.ring_index(from, to))
        }
    }

    fn ring_data(&self, from: usize, to: usize) -> *mut u8 {
        // SAFETY: the data area holds local_size^2 rings of ring_bytes each.
        unsafe {
            self.map
                .as_ptr()
                .add(self.data_at + self.ring_index(from, to) * self.ring_bytes)
        }
    }

    /// Where ring `(from, to)` sits: grouped by receiver, so the rings a
    /// rank polls are contiguous (see the layout in the module docs).
    fn ring_index(&self, from: usize, to: usize) -> usize {
        to * self.local_size + from
    }

    /// Number of ranks sharing the segment.
    pub(crate) fn local_size(&self) -> usize {
        self.local_size
    }

    /// Largest record payload (header included) that one ring record may carry.
    pub(crate) fn max_record(&self) -> usize {
        self.ring_bytes / 4
    }

    /// Marks `local` as attached and records its pid.
    pub(crate) fn announce(&self, local: usize, pid: i32) {
        let slot = self.slot(local);
        slot.pid.store(pid, Ordering::Relaxed);
        slot.state.store(STATE_ALIVE, Ordering::Release);
    }

    /// Marks `local` as having closed in an orderly way.
    pub(crate) fn depart(&self, local: usize) {
        self.slot(local)
            .state
            .store(STATE_DEPARTED, Ordering::Release);
        self.notify_all();
    }

    /// Slot state of `local`.
    pub(crate) fn state(&self, local: usize) -> u32 {
        self.slot(local).state.load(Ordering::Acquire)
    }

    /// Pid recorded by `local`.
    pub(crate) fn pid(&self, local: usize) -> i32 {
        self.slot(local).pid.load(Ordering::Acquire)
    }

    /// Tries to append one record to ring `(from, to)`; false when it lacks room.
    /// The caller must be the only producer of that ring (a per-ring lock).
    #[cfg(test)]
    pub(crate) fn try_push(
        &self,
        from: usize,
        to: usize,
        header: &FrameHeader,
        payload: &[u8],
    ) -> bool {
        let mut head = 0;
        self.try_push_cached(from, to, header, payload, &mut head)
    }

    /// [`NodeSegment::try_push`] with the producer's cached copy of `head`:
    /// the consumer's `head` line is read only when the ring looks full (a
    /// stale head only understates the free space), which saves a cache-line
    /// transfer per record.
    pub(crate) fn try_push_cached(
        &self,
        from: usize,
        to: usize,
        header: &FrameHeader,
        payload: &[u8],
        cached_head: &mut u64,
    ) -> bool {
        let cap = self.ring_bytes as u64;
        let len = HEADER_LEN + payload.len();
        debug_assert!(len <= self.max_record());
        let need = (RECORD_PREFIX + len).next_multiple_of(8) as u64;
        let control = self.control(from, to);
        let tail = control.tail.load(Ordering::Relaxed);
        let pos = tail % cap;
        let contiguous = cap - pos;
        let wrap = need > contiguous;
        let total = if wrap { contiguous + need } else { need };
        // The record, and the word after it (zeroed: see the module docs).
        let fits = |head: u64| {
            tail.checked_sub(head)
                .is_some_and(|used| used.saturating_add(total + RECORD_PREFIX as u64) <= cap)
        };
        if !fits(*cached_head) {
            *cached_head = control.head.load(Ordering::Acquire);
            if !fits(*cached_head) {
                return false;
            }
        }
        let base = self.ring_data(from, to);
        let start = if wrap { 0 } else { pos };
        let next = (start + need) % cap;
        // SAFETY: [start, start + need) and the 8 bytes at `next` lie inside
        // this ring and, by the free-space check, outside [head, tail) which
        // the consumer may be reading; we are the only producer. Positions
        // are 8-aligned in an 8-aligned mapping, so the length words are
        // aligned for `AtomicU32`; only this producer and the ring's one
        // consumer touch them, and only atomically once published.
        unsafe {
            let at = base.add(start as usize);
            std::ptr::copy_nonoverlapping(
                header.encode().as_ptr(),
                at.add(RECORD_PREFIX),
                HEADER_LEN,
            );
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                at.add(RECORD_PREFIX + HEADER_LEN),
                payload.len(),
            );
            length_word(base, next).store(0, Ordering::Relaxed);
            // Published: the consumer polls this word, not `tail`, so a
            // small message costs it one cache line instead of two.
            length_word(base, start).store(len as u32, Ordering::Release);
            if wrap {
                length_word(base, pos).store(WRAP, Ordering::Release);
            }
        }
        control.tail.store(tail + total, Ordering::Release);
        true
    }

    /// True when ring `(from, to)` holds an unread record.
    #[inline]
    pub(crate) fn has_record(&self, from: usize, to: usize) -> bool {
        let control = self.control(from, to);
        let head = control.head.load(Ordering::Relaxed);
        let base = self.ring_data(from, to);
        // SAFETY: head % cap is an 8-aligned offset inside the ring.
        unsafe { length_word(base, head % self.ring_bytes as u64) }.load(Ordering::Acquire) != 0
    }

    /// Reads the oldest record of ring `(from, to)`, hands header and payload to
    /// `consume`, then frees it. The caller must be the only consumer of the ring.
    pub(crate) fn pop<R>(
        &self,
        from: usize,
        to: usize,
        max_payload: u32,
        consume: impl FnOnce(FrameHeader, &[u8]) -> R,
    ) -> Result<Option<R>, ShmError> {
        let cap = self.ring_bytes as u64;
        let control = self.control(from, to);
        let mut head = control.head.load(Ordering::Relaxed);
        let corrupted = |detail: String| ShmError::Corrupted { from, detail };
        let base = self.ring_data(from, to);
        let mut pos = head % cap;
        // SAFETY: pos < cap and records are 8-aligned, so the word is in
        // bounds and aligned; the producer publishes it last (release).
        let mut len = unsafe { length_word(base, pos) }.load(Ordering::Acquire);
        if len == 0 {
            return Ok(None);
        }
        if len == WRAP {
            head += cap - pos;
            pos = 0;
            // SAFETY: as above, at offset 0 (published before the marker).
            len = unsafe { length_word(base, 0) }.load(Ordering::Acquire);
            if len == 0 || len == WRAP {
                return Err(corrupted("wrap marker before an unpublished record".into()));
            }
        }
        let len = len as usize;
        let need = (RECORD_PREFIX + len).next_multiple_of(8) as u64;
        if len < HEADER_LEN || pos + need > cap || len > self.max_record() {
            return Err(corrupted(format!("record of {len} bytes at offset {pos}")));
        }
        // SAFETY: [pos, pos + need) is inside the ring and inside [head, tail),
        // which the producer will not touch until we release `head`.
        let record =
            unsafe { std::slice::from_raw_parts(base.add(pos as usize + RECORD_PREFIX), len) };
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(&record[..HEADER_LEN]);
        let header = FrameHeader::decode(&header_bytes, max_payload)
            .map_err(|source| ShmError::Frame { from, source })?;
        if header.len as usize != len - HEADER_LEN {
            return Err(corrupted(format!(
                "frame says {} payload bytes, record holds {}",
                header.len,
                len - HEADER_LEN
            )));
        }
        let result = consume(header, &record[HEADER_LEN..]);
        control.head.store(head + need, Ordering::Release);
        Ok(Some(result))
    }

    /// Completion counter of pair `(from, to)`: bumped by `to` after each pull.
    pub(crate) fn completions(&self, from: usize, to: usize) -> u64 {
        self.control(from, to).completions.load(Ordering::Acquire)
    }

    /// Records one completed pull of a `(from, to)` rendezvous message.
    pub(crate) fn complete(&self, from: usize, to: usize) {
        self.control(from, to)
            .completions
            .fetch_add(1, Ordering::Release);
    }

    /// Wakes local rank `to` if it sleeps. Called after publishing anything to it.
    #[inline]
    ///
    /// A progress thread standing by is woken only while no thread of `to`
    /// polls: the poller reads what was published, so ringing would only
    /// cost a system call here and a wake-up there.
    pub(crate) fn notify(&self, to: usize) {
        fence(Ordering::SeqCst);
        let slot = self.slot(to);
        if slot.sleepers.load(Ordering::Relaxed) > 0
            || (slot.standby.load(Ordering::Relaxed) > 0
                && slot.polling.load(Ordering::Relaxed) == 0)
        {
            ring(slot);
        }
    }

    /// A thread of `me` starts (true) or stops (false) polling its rings.
    pub(crate) fn set_polling(&self, me: usize, polling: bool) {
        self.slot(me)
            .polling
            .store(u32::from(polling), Ordering::SeqCst);
    }

    /// The progress thread stands by on `me`'s doorbell unless `ready()`
    /// turns true, at most `timeout`; `notify` wakes it only while nobody
    /// polls (see [`set_polling`](Self::set_polling)).
    pub(crate) fn standby_sleep(&self, me: usize, timeout: Duration, ready: impl FnOnce() -> bool) {
        let slot = self.slot(me);
        slot.standby.fetch_add(1, Ordering::SeqCst);
        let seen = slot.doorbell.load(Ordering::SeqCst);
        if !ready() {
            futex_wait(&slot.doorbell, seen, timeout);
        }
        slot.standby.fetch_sub(1, Ordering::SeqCst);
    }

    fn notify_all(&self) {
        for local in 0..self.local_size {
            self.notify(local);
        }
    }

    /// Sleeps on `me`'s doorbell unless `ready()` turns true; at most `timeout`
    /// (the timeout also bounds the cost of a lost wake-up).
    pub(crate) fn sleep(&self, me: usize, timeout: Duration, ready: impl FnOnce() -> bool) {
        let slot = self.slot(me);
        slot.sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = slot.doorbell.load(Ordering::SeqCst);
        if !ready() {
            futex_wait(&slot.doorbell, seen, timeout);
        }
        slot.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes `me`'s progress thread standing by (and any sleeper).
    pub(crate) fn ring_own_doorbell_standby(&self, me: usize) {
        let slot = self.slot(me);
        if slot.standby.load(Ordering::SeqCst) > 0 || slot.sleepers.load(Ordering::SeqCst) > 0 {
            ring(slot);
        }
    }

    /// Wakes `me`'s own sleepers (used by this rank's TCP thread).
    pub(crate) fn ring_own_doorbell(&self, me: usize) {
        self.notify(me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("lumen-test-{}-{tag}", std::process::id())
    }

    #[test]
    fn push_pop_wraps_and_preserves_order() {
        let n = name("ring");
        let seg = NodeSegment::create(&n, 2, 4096).unwrap();
        let _ = SharedMapping::unlink(&n);
        let mut sent = 0u64;
        let mut got = 0u64;
        for round in 0..2000u64 {
            let len = (round * 37 % 700) as usize;
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 + round) as u8).collect();
            let h = FrameHeader::data(0, round, len as u32, len as u64, false);
            while !seg.try_push(0, 1, &h, &payload) {
                let r = seg
                    .pop(1 - 1, 1, 1 << 20, |h, p| (h.tag, p.to_vec()))
                    .unwrap()
                    .unwrap();
                assert_eq!(r.0, got);
                got += 1;
            }
            sent += 1;
        }
        while let Some((tag, p)) = seg.pop(0, 1, 1 << 20, |h, p| (h.tag, p.to_vec())).unwrap() {
            assert_eq!(tag, got);
            assert_eq!(p.len(), (tag * 37 % 700) as usize);
            assert!(p
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i as u64 + tag) as u8));
            got += 1;
        }
        assert_eq!(sent, got);
    }

    #[test]
    fn layout_keeps_every_structure_aligned() {
        for local_size in 1..=9 {
            let (slots_at, controls_at, data_at, total) = layout(local_size, 4096);
            assert_eq!(slots_at % std::mem::align_of::<RankSlot>(), 0);
            assert_eq!(
                controls_at % std::mem::align_of::<RingControl>(),
                0,
                "local_size {local_size}"
            );
            assert_eq!(data_at % 4096, 0);
            assert_eq!(total, data_at + local_size * local_size * 4096);
        }
    }

    #[test]
    fn attach_checks_shape() {
        let n = name("shape");
        let _seg = NodeSegment::create(&n, 3, 8192).unwrap();
        assert!(NodeSegment::attach(&n, 3, 8192, Duration::from_secs(1)).is_ok());
        let err = NodeSegment::attach(&n, 2, 8192, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("local ranks"), "{err}");
        SharedMapping::unlink(&n).unwrap();
        let err = NodeSegment::attach(&n, 3, 8192, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, ShmError::Timeout { .. }));
    }

    #[test]
    fn corrupted_record_is_an_error() {
        let n = name("corrupt");
        let seg = NodeSegment::create(&n, 2, 4096).unwrap();
        let _ = SharedMapping::unlink(&n);
        let h = FrameHeader::data(0, 1, 4, 4, false);
        assert!(seg.try_push(0, 1, &h, &[1, 2, 3, 4]));
        // SAFETY: test-only scribble over the record length inside the ring.
        unsafe { seg.ring_data(0, 1).cast::<u32>().write(100_000) };
        assert!(matches!(
            seg.pop(0, 1, 1 << 20, |_, _| ()),
            Err(ShmError::Corrupted { .. })
        ));
    }

    #[test]
    fn two_threads_stream_through_a_ring() {
        let n = name("stream");
        let seg = std::sync::Arc::new(NodeSegment::create(&n, 2, 1 << 14).unwrap());
        let _ = SharedMapping::unlink(&n);
        let producer = {
            let seg = seg.clone();
            std::thread::spawn(move || {
                for i in 0..50_000u64 {
                    let payload = i.to_le_bytes();
                    let h = FrameHeader::data(0, i, 8, 8, false);
                    while !seg.try_push(0, 1, &h, &payload) {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut next = 0u64;
        while next < 50_000 {
            if let Some(v) = seg
                .pop(0, 1, 64, |h, p| {
                    (h.tag, u64::from_le_bytes(p.try_into().unwrap()))
                })
                .unwrap()
            {
                assert_eq!(v, (next, next));
                next += 1;
            }
        }
        producer.join().unwrap();
    }
}
