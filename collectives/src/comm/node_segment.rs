//! The node's shared segment of a communicator whose members all share one
//! node ([`crate::shm`]): its collective setup on first use, the choice of
//! whether an operation goes through it, and the liveness check that its
//! waits run.
//!
//! Invariant: every member reaches the setup in the same operation (the
//! first that can use the segment), because every member calls the same
//! collectives in the same order; the setup itself uses only the
//! point-to-point algorithms, and a failure anywhere leaves every member on
//! those.

use lumen_transport::{tags, Source, TransportError};

use super::tags::PROBE_CONTEXT;
use super::Communicator;
use crate::config::AllreduceAlgorithm;
use crate::element::ReduceOp;
use crate::error::Result;
use crate::liveness::LIVENESS_CHECK;
use crate::shm::{self, Segment};

impl Communicator {
    /// The node's shared segment, set up on first use (collective: every
    /// member reaches this in the same operation, as every member calls the
    /// same collectives in the same order).
    pub(super) fn shm(&self) -> Option<&Segment> {
        self.inner.shm.get_or_init(|| self.setup_shm()).as_ref()
    }

    /// Creates the segment at rank 0, maps it everywhere, agrees that every
    /// member has it, and unlinks its name. Uses only point-to-point
    /// algorithms (this runs inside `shm`'s initialisation). Any failure
    /// leaves every member on the point-to-point algorithms, with a warning.
    pub(super) fn setup_shm(&self) -> Option<Segment> {
        let p = self.size() as usize;
        if !self.inner.config.shm || p < 2 || self.inner.local.iter().any(|&l| !l) {
            return None;
        }
        // At most 64 MiB per communicator and node, whatever the rank count.
        let cap = (64 << 20) / (p * shm::SLOTS);
        let slot = (self.inner.config.shm_slot.min(cap) / 4096).max(1) * 4096;
        let mut name_buf = [0u8; 128];
        let mut segment = None;
        let mut created_name = None;
        if self.rank() == 0 {
            match Segment::create(p, slot) {
                Ok((name, s)) if name.len() < name_buf.len() => {
                    name_buf[..name.len()].copy_from_slice(name.as_bytes());
                    created_name = Some(name);
                    segment = Some(s);
                }
                Ok((name, _)) => shm::unlink(&name),
                Err(e) => tracing::warn!(
                    "collectives: no shared-memory segment ({e}); using point-to-point algorithms"
                ),
            }
        }
        if let Err(e) = self.bcast_p2p(&mut name_buf, 0) {
            tracing::warn!("collectives: shared-memory setup failed: {e}");
            return None;
        }
        if self.rank() != 0 && name_buf[0] != 0 {
            let end = name_buf
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_buf.len());
            match std::str::from_utf8(&name_buf[..end]) {
                Ok(name) => match Segment::open(name, p, self.rank() as usize, slot) {
                    Ok(s) => segment = Some(s),
                    Err(e) => tracing::warn!(
                        "collectives: rank {} cannot map the shared segment ({e}); using point-to-point algorithms",
                        self.rank()
                    ),
                },
                Err(_) => tracing::warn!("collectives: shared segment name is not UTF-8"),
            }
        }
        if let Some(s) = &segment {
            s.announce();
        }
        let mut everyone = [u64::from(segment.is_some())];
        let agreed = self
            .allreduce_impl(
                &mut everyone,
                ReduceOp::Min,
                AllreduceAlgorithm::RecursiveDoubling,
            )
            .is_ok();
        if let Some(name) = created_name {
            shm::unlink(&name);
        }
        if !agreed || everyone[0] != 1 {
            return None;
        }
        let segment = segment?;
        // Every member has announced itself before the agreement above.
        let mut readable = [u64::from(segment.probe_single_copy())];
        if self
            .allreduce_impl(
                &mut readable,
                ReduceOp::Min,
                AllreduceAlgorithm::RecursiveDoubling,
            )
            .is_err()
        {
            return None;
        }
        if readable[0] == 1 {
            segment.enable_single_copy();
        } else {
            tracing::info!(
                "collectives: process_vm_readv refused between ranks of this node; large blocks go through the shared segment"
            );
        }
        Some(segment)
    }

    /// The segment, for an operation moving `bytes` bytes per rank (the
    /// same on every member), when the shared-memory algorithms apply.
    pub(super) fn shm_for(&self, bytes: usize) -> Option<&Segment> {
        if bytes <= self.inner.config.shm_max {
            self.shm()
        } else {
            None
        }
    }

    /// Whether blocks of `block_bytes` go by single-copy reads.
    pub(super) fn single_copy_for(&self, segment: &Segment, block_bytes: usize) -> bool {
        segment.single_copy() && block_bytes >= self.inner.config.shm_copy_min
    }

    /// The liveness check of a shared-memory wait: a short blocking receive
    /// (which runs the transport's checks of local peers), then whether any
    /// rank of the job has died.
    pub(super) fn shm_alive(&self, op: &'static str) -> Result<()> {
        let probe = tags::COLLECTIVES | (PROBE_CONTEXT << 40);
        match self
            .inner
            .endpoint
            .recv_timeout(Source::Any, probe, LIVENESS_CHECK)
        {
            Ok(_) | Err(TransportError::Timeout { .. }) => self.check_alive(op),
            Err(e) => Err(self.transport_error(op, e)),
        }
    }
}
