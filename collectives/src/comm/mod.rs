//! The [`Communicator`]: a group of ranks with its own message space, and the
//! collective operations over it, executed by running the schedules of
//! [`crate::schedule`] over a [`lumen_transport::Endpoint`].
//!
//! # Message space
//!
//! Every message of a communicator travels under a tag in the collectives'
//! range (`0xC000_...`, [`lumen_transport::tags::COLLECTIVES`]):
//!
//! ```text
//!  63   60 59          40 39 38 37             16 15        0
//! | 0xC   | context (20) | 0 | c | sequence (22) | round (16) |   collectives
//! | 0xC   | context (20) | 1 | user tag (32, bits 31..0)       |   send / recv
//!
//! (`c`: a flow-control credit of that round, see `flow_controlled`.)
//! ```
//!
//! The context id is unique among the communicators that share a rank: world
//! is 0, and `split` agrees on a new one by taking the maximum of the
//! members' next free ids (the allgather that `split` needs anyway carries
//! it), as MPICH does. The sequence number counts the collectives of the
//! communicator, which all members call in the same order (MPI's rule), and
//! the round is the schedule's. Traffic of two communicators therefore never
//! matches, and neither does that of two operations of one communicator.
//!
//! # Execution and non-blocking operations
//!
//! Operations of one communicator run one at a time, in the order they were
//! called. A blocking call runs its schedule on the calling thread. A
//! non-blocking call (`iallreduce`, ...) takes ownership of its buffer,
//! queues the same blocking algorithm on the communicator's helper thread
//! (started on first use) and returns a [`Request`]; a blocking call first
//! waits until every queued request of the communicator has finished, so
//! every rank executes the same sequence. Overlap therefore is between
//! computation and communication, and between communicators, not between two
//! operations of one communicator (the simple, honest design; a
//! progress-driven state machine would overlap those too).
//!
//! Within a step a rank sends, then receives. The transport's `send` returns
//! once the data has been taken (a large message on a node is copied by the
//! receiver's progress, which every waiting rank drives), so the send-first
//! order cannot deadlock. Transfers larger than the configured segment are cut
//! into segments, each received and reduced before the next is taken, so the
//! reduction reads data still in cache.
//!
//! # Failure
//!
//! A receive waits in slices of [`LIVENESS_POLL`]; between slices it asks the
//! transport whether any rank of the job has died. A rank dying during a
//! collective therefore makes every other rank's call return
//! [`CollectiveError::Transport`](crate::CollectiveError::Transport) within about that long (plus the
//! transport's own detection time), even ranks not waiting on the dead one.
//!
//! # Where things are
//!
//! ```text
//!   mod.rs          the Communicator, its shared state (Inner), accessors
//!   construct.rs    world, split, create, create_group; context ids
//!   hierarchy.rs    node and leader sub-communicators (two-level variants)
//!   node_segment.rs the node's shared segment: setup, choice, liveness
//!   tags.rs         the tag layout above (pure)
//!   flow.rs         segmentation and credit flow control (pure)
//!   exec.rs         sends, receives, schedule execution, argument checks
//!   point_to_point.rs  send / recv
//!   bcast.rs        barrier, bcast
//!   reduce.rs       reduce, allreduce, reduce_scatter
//!   gather.rs       allgather(v), gather, scatter
//!   alltoall.rs     alltoall(v)
//!   nonblocking.rs  Request, the helper thread, the i* variants
//! ```
//!
//! Dependencies go one way: this module uses [`crate::shm`]; `shm` reads
//! the liveness period ([`LIVENESS_POLL`], defined in `liveness.rs` below
//! both) and never imports `comm`.

use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};

use lumen_transport::{Endpoint, Rank};

use crate::config::CollectiveConfig;
use crate::schedule::Step;

mod alltoall;
mod bcast;
mod construct;
mod exec;
mod flow;
mod gather;
mod hierarchy;
mod node_segment;
mod nonblocking;
mod point_to_point;
mod reduce;
mod tags;

pub use crate::liveness::LIVENESS_POLL;
pub use nonblocking::Request;

use hierarchy::Hierarchy;
use nonblocking::Job;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kinds of cached schedules (`cached`'s `kind` is below this).
const SCHEDULE_KINDS: usize = 11;

struct Inner {
    endpoint: Endpoint,
    /// Endpoint rank of each member, by communicator rank.
    members: Vec<Rank>,
    rank: u32,
    context: u32,
    sequence: AtomicU32,
    config: CollectiveConfig,
    /// Wait by polling and yielding the core (node oversubscribed).
    yield_wait: bool,
    /// Whether each member shares this rank's node.
    local: Vec<bool>,
    /// Schedules by kind and root (`kind * size + root`), see `cached`.
    schedules: Vec<OnceLock<Box<[Step]>>>,
    /// `outstanding`, readable without the lock (fast path of `enter`).
    pending: AtomicUsize,
    hierarchy: OnceLock<Option<Hierarchy>>,
    /// The node's shared segment (all members on one node), set up by the
    /// first collective that can use it.
    shm: OnceLock<Option<crate::shm::Segment>>,
    /// Held while an operation executes.
    exec: Mutex<()>,
    /// Queued or running non-blocking operations, and its condition.
    outstanding: Mutex<usize>,
    drained: Condvar,
    worker: Mutex<Option<mpsc::Sender<Job>>>,
    started_workers: AtomicUsize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("size", &self.members.len())
            .field("context", &self.context)
            .finish()
    }
}

/// A group of ranks that run collectives together. Cheap to clone (clones
/// are the same communicator: they share its sequence and helper thread).
#[derive(Clone, Debug)]
pub struct Communicator {
    inner: Arc<Inner>,
}

impl Communicator {
    /// This rank within the communicator.
    pub fn rank(&self) -> u32 {
        self.inner.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.inner.members.len() as u32
    }

    /// The job (endpoint) rank of communicator rank `rank`.
    pub fn job_rank(&self, rank: u32) -> Option<Rank> {
        self.inner.members.get(rank as usize).copied()
    }

    /// The context id (unique among communicators sharing a rank).
    pub fn context(&self) -> u32 {
        self.inner.context
    }

    /// The endpoint underneath.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The settings in force.
    pub fn config(&self) -> &CollectiveConfig {
        &self.inner.config
    }

    /// True when collectives use the two-level (node, then leaders) variants.
    pub fn is_hierarchical(&self) -> bool {
        matches!(self.inner.hierarchy.get(), Some(Some(_)))
    }

    fn hierarchy(&self) -> Option<&Hierarchy> {
        self.inner.hierarchy.get().and_then(Option::as_ref)
    }
}
