//! All-to-all with equal blocks and with a count per peer.
//!
//! Inside a node through the shared segment; otherwise pairwise exchange
//! (Thakur, Rabenseifner and Gropp 2005, 4.6) or, for small equal blocks,
//! the direct exchange. `alltoallv` is always pairwise: counts differ
//! between ranks, so no rank could know that all others chose direct.

use super::flow::{credit_after, credit_before, piece, pieces};
use super::Communicator;
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::schedule::{self, BlockLayout, Combine};

impl Communicator {
    /// All-to-all with equal blocks: block `j` of `send` goes to rank `j`,
    /// block `i` of `recv` comes from rank `i` (pairwise exchange).
    pub fn alltoall<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let _span = crate::trace::span("alltoall", std::mem::size_of_val(send));
        let p = self.size() as usize;
        self.check_len("alltoall", "receive buffer", recv.len(), send.len())?;
        if send.len() % p != 0 {
            self.check_len("alltoall", "send buffer", send.len(), send.len() / p * p)?;
        }
        let counts = vec![send.len() / p; p];
        {
            let _guard = self.enter();
            if let Some(segment) = self.shm_for(std::mem::size_of_val(send)) {
                let alive = &mut || self.shm_alive("alltoall");
                if self.single_copy_for(segment, std::mem::size_of_val(send) / p) {
                    return segment.alltoall_single_copy(send, recv, self.inner.yield_wait, alive);
                }
                if segment.capacity::<T>() >= p {
                    return segment.alltoall(send, recv, self.inner.yield_wait, alive);
                }
            }
        }
        let direct = self
            .inner
            .config
            .direct(counts[0] * std::mem::size_of::<T>(), p);
        let _guard = self.enter();
        self.alltoallv_impl(send, &counts, recv, &counts, direct)
    }

    /// All-to-all with a count per peer: `send_counts[j]` elements go to rank
    /// `j` (consecutive in `send`), `recv_counts[i]` come from rank `i`.
    pub fn alltoallv<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        let _span = crate::trace::span("alltoallv", std::mem::size_of_val(send));
        let p = self.size() as usize;
        self.check_len("alltoallv", "send counts", send_counts.len(), p)?;
        self.check_len("alltoallv", "receive counts", recv_counts.len(), p)?;
        self.check_len(
            "alltoallv",
            "send buffer",
            send.len(),
            send_counts.iter().sum(),
        )?;
        self.check_len(
            "alltoallv",
            "receive buffer",
            recv.len(),
            recv_counts.iter().sum(),
        )?;
        let _guard = self.enter();
        // Counts differ between ranks, so no rank could know that all
        // others chose the direct exchange: always pairwise.
        self.alltoallv_impl(send, send_counts, recv, recv_counts, false)
    }

    pub(super) fn alltoallv_impl<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
        direct: bool,
    ) -> Result<()> {
        let (r, p) = (self.rank() as usize, self.size() as usize);
        let sends = BlockLayout::from_counts(send_counts);
        let recvs = BlockLayout::from_counts(recv_counts);
        let own_send = sends.elements(&(r..r + 1));
        let own_recv = recvs.elements(&(r..r + 1));
        if own_send.len() != own_recv.len() {
            return Err(CollectiveError::BufferSize {
                op: "alltoallv",
                what: "own receive count",
                got: own_recv.len(),
                expected: own_send.len(),
                rank: self.rank(),
                size: self.size(),
            });
        }
        recv[own_recv].copy_from_slice(&send[own_send]);
        let sequence = self.next_sequence();
        let steps = if direct {
            self.cached(9, 0, || schedule::direct_alltoall(r, p))
        } else {
            self.cached(10, 0, || schedule::pairwise_alltoall(r, p))
        };
        for step in steps.iter() {
            let tag = self.tag(sequence, step.round);
            // Blocks `0..p` of the schedule are `send`'s, `p..2p` `recv`'s.
            let outs: Vec<_> = step
                .sends
                .iter()
                .map(|t| {
                    (
                        t.peer,
                        sends.elements(&t.blocks),
                        self.segment_elements::<T>(t.peer),
                    )
                })
                .collect();
            let ins: Vec<_> = step
                .recvs
                .iter()
                .map(|(u, _)| {
                    let blocks = u.blocks.start.saturating_sub(p)..u.blocks.end.saturating_sub(p);
                    (
                        u.peer,
                        recvs.elements(&blocks),
                        self.segment_elements::<T>(u.peer),
                    )
                })
                .collect();
            let rounds = outs
                .iter()
                .chain(ins.iter())
                .map(|(_, range, segment)| pieces(range, *segment))
                .max()
                .unwrap_or(0);
            for i in 0..rounds {
                for (peer, range, segment) in &outs {
                    if let Some(part) = piece(range.clone(), *segment, i) {
                        if self.flow_controlled(*peer) && credit_before(i, pieces(range, *segment))
                        {
                            self.take_credit("alltoall", *peer, tag)?;
                        }
                        self.send_bytes("alltoall", *peer, tag, bytemuck::cast_slice(&send[part]))?;
                    }
                }
                for (peer, range, segment) in &ins {
                    if let Some(part) = piece(range.clone(), *segment, i) {
                        self.recv_into(
                            "alltoall",
                            *peer,
                            tag,
                            &mut recv[part],
                            Combine::Copy,
                            ReduceOp::Sum,
                        )?;
                        if self.flow_controlled(*peer) && credit_after(i, pieces(range, *segment)) {
                            self.give_credit("alltoall", *peer, tag)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
