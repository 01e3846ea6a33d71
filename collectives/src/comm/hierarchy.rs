//! Two-level structure of a communicator that spans nodes: a node
//! communicator (shared memory inside the node) and, at node leaders, a
//! leaders communicator (one rank per node, across the network). The
//! hierarchical variants of allreduce, bcast and allgather run on these
//! (the SMP-aware collectives of MPICH and Open MPI's `coll/han`).
//!
//! Invariant: either every member builds the hierarchy or none does (the
//! decision rests on facts every member sees alike), so the collectives of
//! the node and leader communicators pair up.

use super::Communicator;
use crate::config::AllreduceAlgorithm;
use crate::element::ReduceOp;
use crate::error::{CollectiveError, Result};

/// Two-level structure of a communicator that spans nodes.
#[derive(Debug)]
pub(super) struct Hierarchy {
    /// The members on this rank's node (rank 0 of it is the node leader).
    pub(super) node: Communicator,
    /// The node leaders, present at leaders only.
    pub(super) leaders: Option<Communicator>,
    /// Node leader (communicator rank) of every member.
    pub(super) leader_of: Vec<u32>,
}

impl Hierarchy {
    /// Position of `leader` among the leaders (the leaders communicator is
    /// ordered by communicator rank).
    pub(super) fn leader_index(&self, leader: u32) -> u32 {
        let mut leaders: Vec<u32> = self.leader_of.clone();
        leaders.sort_unstable();
        leaders.dedup();
        leaders.iter().position(|&l| l == leader).unwrap_or(0) as u32
    }

    /// Position of `rank` within its node communicator.
    pub(super) fn node_index(&self, rank: u32) -> u32 {
        let leader = self.leader_of[rank as usize];
        (0..rank)
            .filter(|&r| self.leader_of[r as usize] == leader)
            .count() as u32
    }

    /// Members in the order of the two-level gather: by node (leaders'
    /// order), then by rank within the node.
    pub(super) fn gather_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.leader_of.len() as u32).collect();
        order.sort_by_key(|&r| (self.leader_index(self.leader_of[r as usize]), r));
        order
    }
}

impl Communicator {
    /// Node and leader sub-communicators, when the members span several
    /// nodes and some node holds several of them. Whether the members span
    /// nodes is decided by each rank from its own view (`is_local`), which is
    /// the same answer everywhere, so either every member splits or none.
    pub(super) fn build_hierarchy(&self) -> Result<Option<Hierarchy>> {
        let ep = &self.inner.endpoint;
        let local: Vec<u32> = (0..self.size())
            .filter(|&r| ep.is_local(self.inner.members[r as usize]))
            .collect();
        if local.len() == self.inner.members.len() {
            return Ok(None);
        }
        let leader = local.first().copied().unwrap_or(self.rank());
        let node = self
            .split_with(Some(leader), self.rank() as i64, false)?
            .ok_or_else(|| CollectiveError::Worker {
                op: "split",
                detail: "node split returned no communicator".into(),
            })?;
        let is_leader = leader == self.rank();
        let leaders = self.split_with(is_leader.then_some(0), self.rank() as i64, false)?;
        // Hierarchy pays off only when some node has several members; the
        // answer must be the same everywhere, so ask everyone.
        let mut widest = [node.size() as u64];
        self.allreduce_impl(
            &mut widest,
            ReduceOp::Max,
            AllreduceAlgorithm::RecursiveDoubling,
        )?;
        if widest[0] < 2 {
            return Ok(None);
        }
        let mut leader_of = vec![0u32; self.size() as usize];
        leader_of[self.rank() as usize] = leader;
        self.allgather_in_place_impl(&mut leader_of)?;
        Ok(Some(Hierarchy {
            node,
            leaders,
            leader_of,
        }))
    }
}
