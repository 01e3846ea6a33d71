//! Barrier and the slot-pipeline algorithms: allreduce (short chunks
//! reduced whole by every rank; long chunks reduce-scattered and then
//! allgathered through memory), bcast, allgather(v), reduce_scatter and
//! alltoall.
//!
//! Buffers longer than a slot go through in chunks of one slot, in
//! successive slots, so the copies of chunk `i + 1` overlap the reduction
//! of chunk `i` on other ranks. Every rank reduces in the same order, so
//! all get the same bits. The design is Open MPI's `coll/sm` (Graham and
//! Shipman, EuroPVM/MPI 2008).

use std::sync::atomic::Ordering;

use super::{slot_index, Segment};
use crate::element::{Element, ReduceOp};
use crate::error::Result;

impl Segment {
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
