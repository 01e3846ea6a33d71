//! Allreduce and bcast of at most [`INLINE_BYTES`] through inline lines.
//!
//! Each rank has `INLINE_DEPTH` lines of two cache lines: a stamp, a
//! length and 112 bytes of data. A reader waits on the stamp of the line it
//! then reads, so a step costs about one cache-line transfer per reader
//! instead of two (flag, then slot); the idea is the "fast box" of Open
//! MPI's `btl/sm` and the flag-in-line layout of MPICH's release/gather.
//!
//! Invariant: a writer rewrites a line only after every member has arrived
//! at `step - INLINE_DEPTH + 1` (`begin_write_depth`), i.e. after every
//! reader of the step that last used the line has finished it.

use std::sync::atomic::Ordering;

use super::{Segment, CONTROL, HEADER, INLINE_BYTES, INLINE_DEPTH, INLINE_ENTRY, INLINE_OFFSET};
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};

impl Segment {
    pub(super) fn inline_line(&self, rank: usize, step: u64) -> usize {
        HEADER
            + rank * CONTROL
            + INLINE_OFFSET
            + INLINE_ENTRY * (step % INLINE_DEPTH as u64) as usize
    }

    /// Writes `data` (at most [`INLINE_BYTES`]) into this rank's inline line
    /// of `step` and stamps it.
    pub(super) fn write_inline<T: Element>(&self, step: u64, data: &[T]) {
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
    pub(super) fn read_inline<T: Element>(
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
}
