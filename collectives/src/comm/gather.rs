//! Allgather, allgatherv, gather and scatter.
//!
//! Allgather(v) goes through the shared segment inside a node (slots, or
//! single-copy reads of the peers' buffers for long blocks), in two levels
//! across nodes, else by ring or direct exchange; gather and scatter are
//! binomial trees over blocks in rank order relative to the root (Thakur,
//! Rabenseifner and Gropp 2005, 4.3).

use super::hierarchy::Hierarchy;
use super::Communicator;
use crate::element::{Element, ReduceOp};
use crate::error::Result;
use crate::schedule::{self, BlockLayout};

impl Communicator {
    /// Gathers every rank's `send` (same length everywhere) into `recv`
    /// (`size * send.len()` elements, rank order) at every rank (ring).
    pub fn allgather<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let _span = crate::trace::span("allgather", std::mem::size_of_val(send));
        let n = send.len();
        self.check_len(
            "allgather",
            "receive buffer",
            recv.len(),
            n * self.size() as usize,
        )?;
        let (r, p) = (self.rank() as usize, self.size() as usize);
        let _guard = self.enter();
        if let Some(h) = self.hierarchy() {
            return self.allgather_two_level(h, send, recv);
        }
        if self.shm_for(std::mem::size_of_val(recv)).is_some() {
            // Equal counts: the shared-memory allgatherv.
            return self.allgatherv_impl(send, recv, &vec![n; p]);
        }
        let steps = if self.inner.config.direct(std::mem::size_of_val(send), p) {
            self.cached(8, 0, || schedule::direct_allgather(r, p))
        } else {
            self.cached(6, 0, || schedule::ring_allgather(r, p, 0))
        };
        let layout = BlockLayout::equal(recv.len(), p);
        self.run_own(
            "allgather",
            &steps,
            recv,
            &layout,
            ReduceOp::Sum,
            Some((r, send)),
        )?;
        // The ring sends the own block only from `send`, so it can land last.
        recv[r * n..(r + 1) * n].copy_from_slice(send);
        Ok(())
    }

    /// Two-level allgather: inside each node (shared memory), among the
    /// leaders (each contributes its node's blocks), then the whole result
    /// inside each node; the blocks arrive grouped by node and are put in
    /// rank order at the end.
    pub(super) fn allgather_two_level<T: Element>(
        &self,
        h: &Hierarchy,
        send: &[T],
        recv: &mut [T],
    ) -> Result<()> {
        let n = send.len();
        let mut node_blocks = vec![T::zeroed(); h.node.size() as usize * n];
        h.node.allgather(send, &mut node_blocks)?;
        let mut grouped = vec![T::zeroed(); recv.len()];
        if let Some(leaders) = &h.leaders {
            let mut counts = vec![0usize; leaders.size() as usize];
            for &leader in &h.leader_of {
                counts[h.leader_index(leader) as usize] += n;
            }
            leaders.allgatherv_impl(&node_blocks, &mut grouped, &counts)?;
        }
        h.node.bcast_impl(&mut grouped, 0)?;
        for (i, &rank) in h.gather_order().iter().enumerate() {
            let rank = rank as usize;
            recv[rank * n..(rank + 1) * n].copy_from_slice(&grouped[i * n..(i + 1) * n]);
        }
        Ok(())
    }

    /// Allgather in place: block `rank` of `buffer` (`size` equal blocks) is
    /// this rank's input.
    pub fn allgather_in_place<T: Element>(&self, buffer: &mut [T]) -> Result<()> {
        let _span = crate::trace::span("allgather", std::mem::size_of_val(buffer));
        let p = self.size() as usize;
        if buffer.len() % p != 0 {
            self.check_len("allgather", "buffer", buffer.len(), buffer.len() / p * p)?;
        }
        let _guard = self.enter();
        self.allgather_in_place_impl(buffer)
    }

    pub(super) fn allgather_in_place_impl<T: Element>(&self, buffer: &mut [T]) -> Result<()> {
        let p = self.size() as usize;
        if let Some(segment) = self.shm_for(std::mem::size_of_val(buffer)) {
            let layout = BlockLayout::equal(buffer.len(), p);
            let offsets: Vec<usize> = (0..p)
                .map(|q| layout.elements(&(q..q + 1)).start)
                .chain(std::iter::once(buffer.len()))
                .collect();
            let alive = &mut || self.shm_alive("allgather");
            if self.single_copy_for(segment, std::mem::size_of_val(buffer) / p) {
                return segment.allgatherv_single_copy(
                    None,
                    buffer,
                    &offsets,
                    self.inner.yield_wait,
                    alive,
                );
            }
            return segment.allgatherv(None, buffer, &offsets, self.inner.yield_wait, alive);
        }
        let steps = self.cached(6, 0, || {
            schedule::ring_allgather(self.rank() as usize, p, 0)
        });
        self.run(
            "allgather",
            &steps,
            buffer,
            &BlockLayout::equal(buffer.len(), p),
            ReduceOp::Sum,
        )
    }

    /// Allgather with a count per rank: `recv` holds `counts[i]` elements of
    /// rank `i`, in rank order; `send.len()` must be `counts[rank]`.
    pub fn allgatherv<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        let _span = crate::trace::span("allgatherv", std::mem::size_of_val(send));
        self.check_allgatherv(send, recv, counts)?;
        let _guard = self.enter();
        self.allgatherv_impl(send, recv, counts)
    }

    pub(super) fn check_allgatherv<T: Element>(
        &self,
        send: &[T],
        recv: &[T],
        counts: &[usize],
    ) -> Result<()> {
        let p = self.size() as usize;
        self.check_len("allgatherv", "counts", counts.len(), p)?;
        let r = self.rank() as usize;
        self.check_len("allgatherv", "send buffer", send.len(), counts[r])?;
        let total = counts.iter().sum();
        self.check_len("allgatherv", "receive buffer", recv.len(), total)
    }

    pub(super) fn allgatherv_impl<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        let (r, p) = (self.rank() as usize, self.size() as usize);
        let layout = BlockLayout::from_counts(counts);
        if let Some(segment) = self.shm_for(std::mem::size_of_val(recv)) {
            let offsets: Vec<usize> = (0..p)
                .map(|q| layout.elements(&(q..q + 1)).start)
                .chain(std::iter::once(layout.total()))
                .collect();
            let alive = &mut || self.shm_alive("allgatherv");
            // The smallest block decides (the same on every rank).
            let smallest = counts.iter().min().copied().unwrap_or(0);
            if self.single_copy_for(segment, smallest * std::mem::size_of::<T>()) {
                segment.allgatherv_single_copy(
                    Some(send),
                    recv,
                    &offsets,
                    self.inner.yield_wait,
                    alive,
                )?;
            } else {
                segment.allgatherv(Some(send), recv, &offsets, self.inner.yield_wait, alive)?;
            }
        } else {
            let steps = self.cached(6, 0, || schedule::ring_allgather(r, p, 0));
            self.run_own(
                "allgatherv",
                &steps,
                recv,
                &layout,
                ReduceOp::Sum,
                Some((r, send)),
            )?;
        }
        recv[layout.elements(&(r..r + 1))].copy_from_slice(send);
        Ok(())
    }

    /// Gathers every rank's `send` (same length) into `recv` at `root`
    /// (`size * send.len()` elements, rank order; ignored elsewhere).
    pub fn gather<T: Element>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<()> {
        let _span = crate::trace::span("gather", std::mem::size_of_val(send));
        let _guard = self.enter();
        self.gather_impl(send, recv, root)
    }

    pub(super) fn gather_impl<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        root: u32,
    ) -> Result<()> {
        self.check_rank("gather", root)?;
        let (me, p, n) = (self.rank() as usize, self.size() as usize, send.len());
        if me == root as usize {
            self.check_len("gather", "receive buffer", recv.len(), n * p)?;
        }
        // Binomial tree over blocks in rank order relative to the root.
        let vr = (me + p - root as usize) % p;
        let mut work = vec![T::zeroed(); n * p];
        work[vr * n..(vr + 1) * n].copy_from_slice(send);
        {
            let steps = schedule::binomial_gather(me, p, root as usize);
            self.run(
                "gather",
                &steps,
                &mut work,
                &BlockLayout::equal(n * p, p),
                ReduceOp::Sum,
            )?;
        }
        if me == root as usize {
            // Relative block v belongs to rank (root + v) % p.
            let split = (p - root as usize) * n;
            recv[root as usize * n..].copy_from_slice(&work[..split]);
            recv[..root as usize * n].copy_from_slice(&work[split..]);
        }
        Ok(())
    }

    /// Scatters block `i` of `send` (at `root`, `size * recv.len()`
    /// elements) to rank `i`'s `recv`.
    pub fn scatter<T: Element>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<()> {
        let _span = crate::trace::span("scatter", std::mem::size_of_val(recv));
        let _guard = self.enter();
        self.scatter_impl(send, recv, root)
    }

    pub(super) fn scatter_impl<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        root: u32,
    ) -> Result<()> {
        self.check_rank("scatter", root)?;
        let (me, p, n) = (self.rank() as usize, self.size() as usize, recv.len());
        let mut work = vec![T::zeroed(); n * p];
        if me == root as usize {
            self.check_len("scatter", "send buffer", send.len(), n * p)?;
            let split = (p - root as usize) * n;
            work[..split].copy_from_slice(&send[root as usize * n..]);
            work[split..].copy_from_slice(&send[..root as usize * n]);
        }
        {
            let steps = schedule::binomial_scatter(me, p, root as usize);
            self.run(
                "scatter",
                &steps,
                &mut work,
                &BlockLayout::equal(n * p, p),
                ReduceOp::Sum,
            )?;
        }
        let vr = (me + p - root as usize) % p;
        recv.copy_from_slice(&work[vr * n..(vr + 1) * n]);
        Ok(())
    }
}
