//! Executing point-to-point schedules: sends and receives under the
//! communicator's tags, liveness-checked waits, segmentation with credit
//! flow control, the schedule cache, the execution lock, and the argument
//! checks every operation shares.
//!
//! Within a step a rank sends, then receives (segment `i` of every send,
//! then segment `i` of every receive). The transport's `send` returns once
//! the data has been taken, so that order cannot deadlock.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use lumen_transport::{tags, Source, TransportError};

use super::flow::{credit_after, credit_before, piece, pieces};
use super::tags::{collective_tag, p2p_tag, CREDIT_BIT, PROBE_CONTEXT};
use super::{lock, Communicator};
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::liveness::{LIVENESS_CHECK, LIVENESS_POLL};
use crate::schedule::{BlockLayout, Combine, Step};

impl Communicator {
    /// This rank's schedule of kind `kind` (and root), built once per
    /// communicator: small operations would otherwise spend a good part of
    /// their time allocating steps. Lock-free after the first use.
    pub(super) fn cached(
        &self,
        kind: u8,
        root: usize,
        build: impl FnOnce() -> Vec<Step>,
    ) -> std::borrow::Cow<'_, [Step]> {
        let p = self.inner.members.len();
        match self.inner.schedules.get(usize::from(kind) * p + root) {
            Some(slot) => {
                std::borrow::Cow::Borrowed(slot.get_or_init(|| build().into_boxed_slice()))
            }
            // Not reached with the kinds used here; stay correct anyway.
            None => std::borrow::Cow::Owned(build()),
        }
    }

    /// Waits for queued non-blocking operations, then takes the execution lock.
    pub(super) fn enter(&self) -> MutexGuard<'_, ()> {
        if self.inner.pending.load(Ordering::Acquire) > 0 {
            let mut outstanding = lock(&self.inner.outstanding);
            while *outstanding > 0 {
                outstanding = self
                    .inner
                    .drained
                    .wait(outstanding)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        lock(&self.inner.exec)
    }

    pub(super) fn next_sequence(&self) -> u32 {
        self.inner.sequence.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn tag(&self, sequence: u32, round: u32) -> u64 {
        collective_tag(self.inner.context, sequence, round)
    }

    pub(super) fn p2p_tag(&self, tag: u32) -> u64 {
        p2p_tag(self.inner.context, tag)
    }

    /// Whether transfers with `peer` are flow-controlled by credits: on an
    /// oversubscribed node, long transfers between ranks of the node travel
    /// as eager segments, and a sender that fills the shared-memory ring
    /// waits for room in 2 ms naps (the transport wakes it only when a
    /// message arrives for it). A credit is such a message: the receiver
    /// sends one every `CREDIT_EVERY` segments, and the sender keeps at most
    /// `CREDIT_WINDOW` segments ahead of the credits it has, so it neither
    /// overruns the ring nor naps. A sender's wait for credit `c` depends on
    /// a receive of an earlier segment index, so the waits cannot form a
    /// cycle.
    pub(super) fn flow_controlled(&self, peer: usize) -> bool {
        self.inner.yield_wait && self.inner.local.get(peer).copied().unwrap_or(false)
    }

    pub(super) fn take_credit(&self, op: &'static str, peer: usize, tag: u64) -> Result<()> {
        self.recv_bytes(op, peer, tag | CREDIT_BIT).map(|_| ())
    }

    pub(super) fn give_credit(&self, op: &'static str, peer: usize, tag: u64) -> Result<()> {
        self.send_bytes(op, peer, tag | CREDIT_BIT, &[])
    }

    pub(super) fn transport_error(
        &self,
        op: &'static str,
        source: TransportError,
    ) -> CollectiveError {
        CollectiveError::Transport {
            op,
            rank: self.rank(),
            context: self.inner.context,
            source,
        }
    }

    pub(super) fn send_bytes(
        &self,
        op: &'static str,
        peer: usize,
        tag: u64,
        data: &[u8],
    ) -> Result<()> {
        self.inner
            .endpoint
            .send(self.inner.members[peer], tag, data)
            .map_err(|e| self.transport_error(op, e))
    }

    /// Fails when any rank of the job has died.
    pub(super) fn check_alive(&self, op: &'static str) -> Result<()> {
        let probe = tags::COLLECTIVES | (PROBE_CONTEXT << 40);
        match self
            .inner
            .endpoint
            .recv_timeout(Source::Any, probe, Duration::ZERO)
        {
            Ok(_) | Err(TransportError::Timeout { .. }) => Ok(()),
            Err(e) => Err(self.transport_error(op, e)),
        }
    }

    pub(super) fn recv_bytes(&self, op: &'static str, peer: usize, tag: u64) -> Result<Vec<u8>> {
        let src = Source::Rank(self.inner.members[peer]);
        if self.inner.yield_wait {
            return self.recv_yielding(op, src, tag);
        }
        loop {
            match self.inner.endpoint.recv_timeout(src, tag, LIVENESS_POLL) {
                Ok(message) => return Ok(message.data),
                Err(TransportError::Timeout { .. }) => self.check_alive(op)?,
                Err(e) => return Err(self.transport_error(op, e)),
            }
        }
    }

    /// Receive for oversubscribed nodes (more ranks than cores): poll, and
    /// give the core away between polls, as Open MPI does when it detects
    /// oversubscription (`mpi_yield_when_idle`). The transport's own wait
    /// spins for `LUMEN_SPIN_US` and then sleeps on a futex, which on an
    /// oversubscribed node either burns the time slice the sender needs or
    /// pays a wake-up per message.
    pub(super) fn recv_yielding(&self, op: &'static str, src: Source, tag: u64) -> Result<Vec<u8>> {
        let endpoint = &self.inner.endpoint;
        let mut last_check = Instant::now();
        let mut polls = 0u32;
        loop {
            match endpoint.try_recv(src, tag) {
                Ok(Some(message)) => return Ok(message.data),
                Ok(None) => {}
                Err(e) => return Err(self.transport_error(op, e)),
            }
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 && last_check.elapsed() >= LIVENESS_POLL {
                last_check = Instant::now();
                // A short blocking receive runs the transport's liveness
                // checks (pidfds of local peers, polled only while a
                // receive waits) and reports this peer's death or close...
                match endpoint.recv_timeout(src, tag, LIVENESS_CHECK) {
                    Ok(message) => return Ok(message.data),
                    Err(TransportError::Timeout { .. }) => {}
                    Err(e) => return Err(self.transport_error(op, e)),
                }
                // ...and this one any rank's death.
                self.check_alive(op)?;
            }
            std::thread::yield_now();
        }
    }

    pub(super) fn recv_into<T: Element>(
        &self,
        op: &'static str,
        peer: usize,
        tag: u64,
        local: &mut [T],
        combine: Combine,
        reduce: ReduceOp,
    ) -> Result<()> {
        let data = self.recv_bytes(op, peer, tag)?;
        let expected = std::mem::size_of_val(local);
        if data.len() != expected {
            return Err(CollectiveError::Mismatch {
                op,
                peer: peer as u32,
                got: data.len(),
                expected,
            });
        }
        match combine {
            Combine::Copy => bytemuck::cast_slice_mut::<T, u8>(local).copy_from_slice(&data),
            Combine::Reduce => match bytemuck::try_cast_slice::<u8, T>(&data) {
                Ok(x) => T::reduce_slices(reduce, local, x),
                Err(_) => {
                    let x: Vec<T> = bytemuck::pod_collect_to_vec(&data);
                    T::reduce_slices(reduce, local, &x);
                }
            },
        }
        Ok(())
    }

    /// Elements per pipelined segment of a transfer with `peer` (0: no
    /// segmentation). On an oversubscribed node, transfers between ranks of
    /// the node stay within the transport's eager limit: a larger message is
    /// a rendezvous whose sender waits for the receiver's copy, spinning on
    /// a core the receiver needs. TCP sends stream without waiting for the
    /// receiver, so transfers across nodes keep the configured segment (and
    /// both ends agree: they read the same settings, while `yield_wait` is
    /// only known to agree within a node).
    pub(super) fn segment_elements<T>(&self, peer: usize) -> usize {
        let config = &self.inner.config;
        let local = self.inner.local.get(peer).copied().unwrap_or(false);
        let bytes = if self.inner.yield_wait && local {
            match config.segment {
                0 => config.eager_limit,
                s => s.min(config.eager_limit),
            }
        } else {
            config.segment
        };
        bytes / std::mem::size_of::<T>().max(1)
    }

    /// Runs a schedule whose peers are communicator ranks over `buffer`.
    pub(super) fn run<T: Element>(
        &self,
        op: &'static str,
        steps: &[Step],
        buffer: &mut [T],
        layout: &BlockLayout,
        reduce: ReduceOp,
    ) -> Result<()> {
        self.run_own(op, steps, buffer, layout, reduce, None)
    }

    /// [`Communicator::run`], where sends of block `own.0` read `own.1`
    /// instead of the buffer (allgather sends the caller's input directly:
    /// a block just copied into the buffer would first have to travel from
    /// this core's cache to the reader's).
    pub(super) fn run_own<T: Element>(
        &self,
        op: &'static str,
        steps: &[Step],
        buffer: &mut [T],
        layout: &BlockLayout,
        reduce: ReduceOp,
        own: Option<(usize, &[T])>,
    ) -> Result<()> {
        let sequence = self.next_sequence();
        for step in steps {
            let tag = self.tag(sequence, step.round);
            let rounds = step
                .sends
                .iter()
                .chain(step.recvs.iter().map(|(t, _)| t))
                .map(|t| {
                    pieces(
                        &layout.elements(&t.blocks),
                        self.segment_elements::<T>(t.peer),
                    )
                })
                .max()
                .unwrap_or(0);
            // Segment i of every send, then segment i of every receive: the
            // peer's segment i arrives while we send ours.
            for i in 0..rounds {
                for t in &step.sends {
                    let segment = self.segment_elements::<T>(t.peer);
                    let whole = layout.elements(&t.blocks);
                    let nseg = pieces(&whole, segment);
                    if let Some(range) = piece(whole, segment, i) {
                        if self.flow_controlled(t.peer) && credit_before(i, nseg) {
                            self.take_credit(op, t.peer, tag)?;
                        }
                        let source = match own {
                            Some((block, data)) if t.blocks == (block..block + 1) => {
                                let start = layout.elements(&t.blocks).start;
                                &data[range.start - start..range.end - start]
                            }
                            _ => &buffer[range],
                        };
                        self.send_bytes(op, t.peer, tag, bytemuck::cast_slice::<T, u8>(source))?;
                    }
                }
                for (t, combine) in &step.recvs {
                    let segment = self.segment_elements::<T>(t.peer);
                    let whole = layout.elements(&t.blocks);
                    let nseg = pieces(&whole, segment);
                    if let Some(range) = piece(whole, segment, i) {
                        self.recv_into(op, t.peer, tag, &mut buffer[range], *combine, reduce)?;
                        if self.flow_controlled(t.peer) && credit_after(i, nseg) {
                            self.give_credit(op, t.peer, tag)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_rank(&self, op: &'static str, rank: u32) -> Result<()> {
        if rank >= self.size() {
            return Err(CollectiveError::InvalidRank {
                op,
                given: rank,
                size: self.size(),
            });
        }
        Ok(())
    }

    pub(super) fn check_len(
        &self,
        op: &'static str,
        what: &'static str,
        got: usize,
        expected: usize,
    ) -> Result<()> {
        if got != expected {
            return Err(CollectiveError::BufferSize {
                op,
                what,
                got,
                expected,
                rank: self.rank(),
                size: self.size(),
            });
        }
        Ok(())
    }

    pub(super) fn check_op<T: Element>(op: &'static str, reduce: ReduceOp) -> Result<()> {
        if !T::KIND.supports(reduce) {
            return Err(CollectiveError::UnsupportedOp {
                op,
                reduce,
                kind: T::KIND,
            });
        }
        Ok(())
    }
}
