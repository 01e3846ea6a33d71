//! Barrier and broadcast.
//!
//! - barrier: the shared segment's arrive-and-wait inside a node, else the
//!   dissemination barrier (Hensgen, Finkel and Manber, IJPP 1988).
//! - bcast: two levels across nodes (inside the root's node, among the
//!   leaders, inside the other nodes); inside a node the segment (inline
//!   line, single-copy read of the root's buffer, or the slot pipeline);
//!   else a binomial tree, or for long buffers binomial scatter followed by
//!   a ring allgather (van de Geijn; Thakur, Rabenseifner and Gropp 2005).

use super::Communicator;
use crate::config::BcastAlgorithm;
use crate::element::{Element, ReduceOp};
use crate::error::Result;
use crate::schedule::{self, BlockLayout};

impl Communicator {
    /// Returns once every rank has entered (dissemination barrier).
    pub fn barrier(&self) -> Result<()> {
        let _span = crate::trace::span("barrier", 0);
        let _guard = self.enter();
        self.barrier_impl()
    }

    pub(super) fn barrier_impl(&self) -> Result<()> {
        if let Some(segment) = self.shm() {
            return segment.barrier(self.inner.yield_wait, &mut || self.shm_alive("barrier"));
        }
        self.barrier_p2p()
    }

    pub(super) fn barrier_p2p(&self) -> Result<()> {
        let steps = self.cached(0, 0, || {
            schedule::dissemination_barrier(self.rank() as usize, self.size() as usize)
        });
        self.run::<u8>(
            "barrier",
            &steps,
            &mut [],
            &BlockLayout::equal(0, 1),
            ReduceOp::Sum,
        )
    }

    /// Broadcasts `buffer` from `root` to every rank (same length everywhere).
    pub fn bcast<T: Element>(&self, buffer: &mut [T], root: u32) -> Result<()> {
        let _span = crate::trace::span("bcast", std::mem::size_of_val(buffer));
        self.check_rank("bcast", root)?;
        let _guard = self.enter();
        self.bcast_impl(buffer, root)
    }

    pub(super) fn bcast_impl<T: Element>(&self, buffer: &mut [T], root: u32) -> Result<()> {
        let bytes = std::mem::size_of_val(buffer);
        if let (Some(h), BcastAlgorithm::Auto) = (self.hierarchy(), self.inner.config.bcast) {
            // Two levels: inside the root's node, among the leaders, inside
            // the other nodes.
            let root_leader = h.leader_of[root as usize];
            let mine = h.leader_of[self.rank() as usize];
            if mine == root_leader {
                h.node.bcast_impl(buffer, h.node_index(root))?;
            }
            if let Some(leaders) = &h.leaders {
                leaders.bcast_impl(buffer, h.leader_index(root_leader))?;
            }
            if mine != root_leader {
                h.node.bcast_impl(buffer, 0)?;
            }
            return Ok(());
        }
        if matches!(
            self.inner.config.bcast,
            BcastAlgorithm::Auto | BcastAlgorithm::Shm
        ) && bytes <= self.inner.config.shm_max
        {
            if let Some(segment) = self.shm() {
                let alive = &mut || self.shm_alive("bcast");
                if bytes <= crate::shm::INLINE_BYTES {
                    return segment.bcast_inline(
                        buffer,
                        root as usize,
                        self.inner.yield_wait,
                        alive,
                    );
                }
                if segment.single_copy()
                    && !self.inner.yield_wait
                    && bytes >= self.inner.config.shm_bcast_copy_min
                {
                    return segment.bcast_single_copy(
                        buffer,
                        root as usize,
                        self.inner.yield_wait,
                        alive,
                    );
                }
                return segment.bcast(buffer, root as usize, self.inner.yield_wait, alive);
            }
        }
        self.bcast_p2p(buffer, root)
    }

    pub(super) fn bcast_p2p<T: Element>(&self, buffer: &mut [T], root: u32) -> Result<()> {
        let (me, p, root) = (self.rank() as usize, self.size() as usize, root as usize);
        let bytes = std::mem::size_of_val(buffer);
        match self
            .inner
            .config
            .choose_bcast(bytes, p, self.inner.yield_wait)
        {
            BcastAlgorithm::ScatterAllgather if buffer.len() >= p => {
                // Blocks in rank order relative to the root: binomial scatter
                // gives relative rank v block v, the ring completes them.
                let vr = (me + p - root) % p;
                let mut steps = schedule::binomial_scatter(me, p, root);
                let top = steps.iter().map(|s| s.round + 1).max().unwrap_or(0);
                let offset = p.next_power_of_two().trailing_zeros().max(top);
                steps.extend(
                    schedule::ring_allgather(vr, p, offset)
                        .into_iter()
                        .map(|mut s| {
                            for t in s.sends.iter_mut() {
                                t.peer = (t.peer + root) % p;
                            }
                            for (t, _) in s.recvs.iter_mut() {
                                t.peer = (t.peer + root) % p;
                            }
                            s
                        }),
                );
                let layout = BlockLayout::equal(buffer.len(), p);
                self.run("bcast", &steps, buffer, &layout, ReduceOp::Sum)
            }
            _ => {
                let steps = self.cached(1, root, || schedule::binomial_bcast(me, p, root));
                let layout = BlockLayout::equal(buffer.len(), 1);
                self.run("bcast", &steps, buffer, &layout, ReduceOp::Sum)
            }
        }
    }
}
