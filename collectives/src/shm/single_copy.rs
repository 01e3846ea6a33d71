//! Algorithms that read peers' buffers directly with `process_vm_readv`
//! (through `lumen_transport::read_process_memory`): each byte crosses
//! between processes once (allgather, alltoall, bcast) or twice
//! (allreduce), where the slot pipeline copies it in and out of the
//! segment. The approach of Open MPI's `coll/xhc` and of its
//! single-copy (CMA) mechanism in `smsc/cma`.
//!
//! Invariants: a rank publishes where its buffer lies (address and element
//! count) in its slot of a step, and it does not return, letting its buffer
//! change, before every reader has published `done` for that step
//! (`finish`). Whether single-copy reads work at all (ptrace policies and
//! containers can refuse them) is probed once at setup and agreed by every
//! member (`probe_single_copy`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{slot_index, Segment, CONTROL, HEADER, MAGIC, PID_OFFSET, PROBE_OFFSET};
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};

impl Segment {
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
    pub(super) fn read_peer(&self, q: usize, addr: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let pid = self
            .word(HEADER + q * CONTROL + PID_OFFSET)
            .load(Ordering::Relaxed) as i32;
        lumen_transport::read_process_memory(pid, addr, dst)
    }

    pub(super) fn read_elements<T: Element>(
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
    pub(super) fn post_address<T>(
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
    pub(super) fn address_of(
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
}
