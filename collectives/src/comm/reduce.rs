//! Reduce, allreduce and reduce-scatter.
//!
//! Inside a node these go through the shared segment ([`crate::shm`]);
//! across nodes allreduce is hierarchical where a node holds several
//! members (reduce in the node, allreduce among the leaders, bcast in the
//! node), else ring, Rabenseifner, recursive doubling or direct by size
//! ([`crate::config`] chooses; the schedules and their sources are in
//! [`crate::schedule`]). Every algorithm reduces in an order that is the
//! same on every rank, so all ranks get identical bits.

use super::Communicator;
use crate::config::{AllreduceAlgorithm, CollectiveConfig};
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::schedule::{self, BlockLayout};

impl Communicator {
    /// Reduces every rank's `send` into `recv` at `root`. `recv` must have
    /// `send.len()` elements at the root and is not touched elsewhere (pass
    /// `&mut []`).
    pub fn reduce<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        root: u32,
    ) -> Result<()> {
        let _span = crate::trace::span("reduce", std::mem::size_of_val(send));
        self.check_rank("reduce", root)?;
        Self::check_op::<T>("reduce", op)?;
        if self.rank() == root {
            self.check_len("reduce", "receive buffer", recv.len(), send.len())?;
            recv.copy_from_slice(send);
            let _guard = self.enter();
            self.reduce_impl(recv, op, root)
        } else {
            let mut work = send.to_vec();
            let _guard = self.enter();
            self.reduce_impl(&mut work, op, root)
        }
    }

    /// Reduce in place: `buffer` is every rank's input; at the root it then
    /// holds the result, elsewhere a partial result (unspecified).
    pub fn reduce_in_place<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        root: u32,
    ) -> Result<()> {
        self.check_rank("reduce", root)?;
        Self::check_op::<T>("reduce", op)?;
        let _guard = self.enter();
        self.reduce_impl(buffer, op, root)
    }

    pub(super) fn reduce_impl<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        root: u32,
    ) -> Result<()> {
        // Inside a node the shared-memory allreduce costs less than the
        // binomial tree's messages; every rank then holds the result, which
        // the contract (partial results elsewhere) allows.
        if let Some(segment) = self.shm_for(std::mem::size_of_val(buffer)) {
            let alive = &mut || self.shm_alive("reduce");
            if std::mem::size_of_val(buffer) <= crate::shm::INLINE_BYTES {
                return segment.allreduce_inline(buffer, op, self.inner.yield_wait, alive);
            }
            return segment.allreduce(
                buffer,
                op,
                self.inner.config.shm_small,
                self.inner.yield_wait,
                alive,
            );
        }
        let steps = self.cached(2, root as usize, || {
            schedule::binomial_reduce(self.rank() as usize, self.size() as usize, root as usize)
        });
        let layout = BlockLayout::equal(buffer.len(), 1);
        self.run("reduce", &steps, buffer, &layout, op)
    }

    /// Allreduce in place: every rank's `buffer` becomes the reduction of
    /// all ranks' buffers (the common case of data-parallel training).
    pub fn allreduce<T: Element>(&self, buffer: &mut [T], op: ReduceOp) -> Result<()> {
        self.allreduce_with(buffer, op, self.inner.config.allreduce)
    }

    /// Allreduce from `send` into `recv` (same length).
    pub fn allreduce_into<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        self.check_len("allreduce", "receive buffer", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        self.allreduce(recv, op)
    }

    /// Allreduce with a chosen algorithm (benchmarks, tests); `Auto` selects
    /// by size and topology. Every rank must pass the same algorithm.
    pub fn allreduce_with<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        algorithm: AllreduceAlgorithm,
    ) -> Result<()> {
        let _span = crate::trace::span("allreduce", std::mem::size_of_val(buffer));
        Self::check_op::<T>("allreduce", op)?;
        let _guard = self.enter();
        self.allreduce_impl(buffer, op, algorithm)
    }

    pub(super) fn allreduce_impl<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
        algorithm: AllreduceAlgorithm,
    ) -> Result<()> {
        let (me, p) = (self.rank() as usize, self.size() as usize);
        if p == 1 {
            return Ok(());
        }
        let bytes = std::mem::size_of_val(buffer);
        if matches!(
            algorithm,
            AllreduceAlgorithm::Auto | AllreduceAlgorithm::Shm
        ) && bytes <= self.inner.config.shm_max
        {
            if let Some(segment) = self.shm() {
                let config = &self.inner.config;
                let alive = &mut || self.shm_alive("allreduce");
                if bytes <= crate::shm::INLINE_BYTES {
                    return segment.allreduce_inline(buffer, op, self.inner.yield_wait, alive);
                }
                if segment.single_copy() && bytes >= config.shm_reduce_copy_min && buffer.len() >= p
                {
                    return segment.allreduce_single_copy(buffer, op, self.inner.yield_wait, alive);
                }
                return segment.allreduce(
                    buffer,
                    op,
                    config.shm_small,
                    self.inner.yield_wait,
                    alive,
                );
            }
        }
        let config = CollectiveConfig {
            allreduce: algorithm,
            ..self.inner.config.clone()
        };
        let hierarchy = self.hierarchy();
        match config.choose_allreduce(bytes, p, hierarchy.is_some()) {
            AllreduceAlgorithm::Hierarchical => {
                let Some(h) = hierarchy else {
                    return Err(CollectiveError::Worker {
                        op: "allreduce",
                        detail: "hierarchical algorithm without node groups".into(),
                    });
                };
                // Reduce inside the node (shared memory), allreduce among the
                // leaders (across nodes), broadcast inside the node.
                let _ = self.next_sequence();
                h.node.reduce_impl(buffer, op, 0)?;
                if let Some(leaders) = &h.leaders {
                    leaders.allreduce_impl(buffer, op, AllreduceAlgorithm::Auto)?;
                }
                h.node.bcast_impl(buffer, 0)
            }
            AllreduceAlgorithm::Ring => {
                let steps = self.cached(3, 0, || schedule::ring_allreduce(me, p));
                self.run(
                    "allreduce",
                    &steps,
                    buffer,
                    &BlockLayout::equal(buffer.len(), p),
                    op,
                )
            }
            AllreduceAlgorithm::Rabenseifner => {
                let steps = self.cached(4, 0, || schedule::rabenseifner_allreduce(me, p));
                let layout = BlockLayout::equal(buffer.len(), schedule::rabenseifner_blocks(p));
                self.run("allreduce", &steps, buffer, &layout, op)
            }
            AllreduceAlgorithm::Direct => {
                let n = buffer.len();
                let mut all = vec![T::zeroed(); n * p];
                all[me * n..(me + 1) * n].copy_from_slice(buffer);
                let steps = self.cached(8, 0, || schedule::direct_allgather(me, p));
                let layout = BlockLayout::equal(n * p, p);
                self.run("allreduce", &steps, &mut all, &layout, op)?;
                // Rank order, the same on every rank: identical results.
                let (first, rest) = all.split_at(n);
                buffer.copy_from_slice(first);
                for block in rest.chunks_exact(n.max(1)) {
                    T::reduce_slices(op, buffer, block);
                }
                Ok(())
            }
            AllreduceAlgorithm::RecursiveDoubling
            | AllreduceAlgorithm::Auto
            | AllreduceAlgorithm::Shm => {
                let steps = self.cached(5, 0, || schedule::recursive_doubling_allreduce(me, p));
                self.run(
                    "allreduce",
                    &steps,
                    buffer,
                    &BlockLayout::equal(buffer.len(), 1),
                    op,
                )
            }
        }
    }

    /// Reduce-scatter with equal blocks (`MPI_Reduce_scatter_block`): `send`
    /// has `size * recv.len()` elements; rank `i` gets block `i` reduced.
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let _span = crate::trace::span("reduce_scatter", std::mem::size_of_val(send));
        Self::check_op::<T>("reduce_scatter", op)?;
        let (r, p, n) = (self.rank() as usize, self.size() as usize, recv.len());
        self.check_len("reduce_scatter", "send buffer", send.len(), n * p)?;
        let mut work = send.to_vec();
        {
            let _guard = self.enter();
            self.reduce_scatter_impl(&mut work, op)?;
        }
        recv.copy_from_slice(&work[r * n..(r + 1) * n]);
        Ok(())
    }

    /// Reduce-scatter in place: `buffer` (`size` equal blocks) is the input;
    /// afterwards block `rank` holds this rank's result, the other blocks
    /// partial results.
    pub fn reduce_scatter_in_place<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        Self::check_op::<T>("reduce_scatter", op)?;
        let p = self.size() as usize;
        if buffer.len() % p != 0 {
            self.check_len(
                "reduce_scatter",
                "buffer",
                buffer.len(),
                buffer.len() / p * p,
            )?;
        }
        let _guard = self.enter();
        self.reduce_scatter_impl(buffer, op)
    }

    pub(super) fn reduce_scatter_impl<T: Element>(
        &self,
        buffer: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let p = self.size() as usize;
        if let Some(segment) = self.shm_for(std::mem::size_of_val(buffer)) {
            if buffer.len() % p == 0 && segment.capacity::<T>() >= p {
                return segment.reduce_scatter(buffer, op, self.inner.yield_wait, &mut || {
                    self.shm_alive("reduce_scatter")
                });
            }
        }
        let steps = self.cached(7, 0, || {
            schedule::ring_reduce_scatter(self.rank() as usize, p, 0)
        });
        self.run(
            "reduce_scatter",
            &steps,
            buffer,
            &BlockLayout::equal(buffer.len(), p),
            op,
        )
    }
}
