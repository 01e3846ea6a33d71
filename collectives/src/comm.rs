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
//! [`CollectiveError::Transport`] within about that long (plus the
//! transport's own detection time), even ranks not waiting on the dead one.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lumen_transport::{tags, Endpoint, Rank, Source, TransportError};

use crate::config::{AllreduceAlgorithm, BcastAlgorithm, CollectiveConfig};
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::schedule::{self, BlockLayout, Combine, Step};

/// How long a receive waits before checking that the job is still alive.
pub const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// How long the yielding receive blocks in the transport once per
/// [`LIVENESS_POLL`], so that the transport looks at its peers' liveness
/// (it checks local peers' pidfds between its naps of up to 2 ms, so a
/// shorter wait never reaches a check). The wait ends early when the
/// message arrives, so it costs nothing in a healthy job.
const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// Largest context id (20 bits); the last one is kept for the liveness probe.
const MAX_CONTEXT: u32 = GROUP_CONTEXT - 1;
/// Context ids `GROUP_CONTEXT + tag` carry the agreement of
/// `create_group` calls (one per 16-bit tag), below the probe's.
const GROUP_CONTEXT: u32 = (1 << 20) - 2 - (1 << 16);
const PROBE_CONTEXT: u64 = (1 << 20) - 1;
const P2P_BIT: u64 = 1 << 39;

/// Next free context id of this process (world is 0).
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Two-level structure of a communicator that spans nodes.
#[derive(Debug)]
struct Hierarchy {
    /// The members on this rank's node (rank 0 of it is the node leader).
    node: Communicator,
    /// The node leaders, present at leaders only.
    leaders: Option<Communicator>,
    /// Node leader (communicator rank) of every member.
    leader_of: Vec<u32>,
}

impl Hierarchy {
    /// Position of `leader` among the leaders (the leaders communicator is
    /// ordered by communicator rank).
    fn leader_index(&self, leader: u32) -> u32 {
        let mut leaders: Vec<u32> = self.leader_of.clone();
        leaders.sort_unstable();
        leaders.dedup();
        leaders.iter().position(|&l| l == leader).unwrap_or(0) as u32
    }

    /// Position of `rank` within its node communicator.
    fn node_index(&self, rank: u32) -> u32 {
        let leader = self.leader_of[rank as usize];
        (0..rank)
            .filter(|&r| self.leader_of[r as usize] == leader)
            .count() as u32
    }

    /// Members in the order of the two-level gather: by node (leaders'
    /// order), then by rank within the node.
    fn gather_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.leader_of.len() as u32).collect();
        order.sort_by_key(|&r| (self.leader_index(self.leader_of[r as usize]), r));
        order
    }
}

type Job = Box<dyn FnOnce() + Send>;

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

/// A non-blocking operation in flight; [`Request::wait`] returns its result
/// (the buffer that was handed over, now holding the output).
#[derive(Debug)]
#[must_use = "a request does nothing visible until waited on"]
pub struct Request<T> {
    slot: Arc<(Mutex<Option<Result<T>>>, Condvar)>,
}

impl<T> Request<T> {
    /// Blocks until the operation has finished.
    pub fn wait(self) -> Result<T> {
        let (value, ready) = &*self.slot;
        let mut guard = lock(value);
        loop {
            if let Some(result) = guard.take() {
                return result;
            }
            guard = ready.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// True once the operation has finished (then `wait` returns at once).
    pub fn is_complete(&self) -> bool {
        lock(&self.slot.0).is_some()
    }
}

/// CPUs of the machine (not of this thread's affinity mask: a rank pinned to
/// one core is not a sign of oversubscription).
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts the CPUs of a kernel CPU list such as `0-3,6,8-9`.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// The tag of round `round` of collective number `sequence` on `context`.
fn collective_tag(context: u32, sequence: u32, round: u32) -> u64 {
    tags::COLLECTIVES
        | (u64::from(context) << 40)
        | ((u64::from(sequence) & 0x3f_ffff) << 16)
        | (u64::from(round) & 0xffff)
}

/// The tag of a point-to-point message with user tag `tag` on `context`.
fn p2p_tag(context: u32, tag: u32) -> u64 {
    tags::COLLECTIVES | (u64::from(context) << 40) | P2P_BIT | u64::from(tag)
}

/// Segments a sender may have in flight to one peer before it waits for
/// credit (with 16 KiB segments: half of a default 1 MiB ring).
const CREDIT_WINDOW: usize = 32;
/// Segments per credit message.
const CREDIT_EVERY: usize = 8;
/// Marks a credit message's tag (the top bit of the sequence field).
const CREDIT_BIT: u64 = 1 << 38;

/// Credits a receiver of `nseg` flow-controlled segments sends.
fn credits(nseg: usize) -> usize {
    nseg.saturating_sub(CREDIT_WINDOW).div_ceil(CREDIT_EVERY)
}

/// Whether the sender must take a credit before sending segment `i` of `nseg`.
fn credit_before(i: usize, nseg: usize) -> bool {
    i >= CREDIT_WINDOW && (i - CREDIT_WINDOW) % CREDIT_EVERY == 0 && i < nseg
}

/// Whether the receiver sends a credit after receiving segment `j` of `nseg`.
fn credit_after(j: usize, nseg: usize) -> bool {
    (j + 1) % CREDIT_EVERY == 0 && (j + 1) / CREDIT_EVERY <= credits(nseg)
}

/// Number of segments `range` is cut into (at least one, even when empty:
/// a zero-length message still travels).
fn pieces(range: &std::ops::Range<usize>, segment: usize) -> usize {
    if segment == 0 {
        1
    } else {
        range.len().div_ceil(segment).max(1)
    }
}

/// Segment `i` of `range`, if it has one.
fn piece(
    range: std::ops::Range<usize>,
    segment: usize,
    i: usize,
) -> Option<std::ops::Range<usize>> {
    if i >= pieces(&range, segment) {
        return None;
    }
    if segment == 0 {
        return Some(range);
    }
    let start = range.start + i * segment;
    Some(start..(start + segment).min(range.end))
}

impl Communicator {
    /// The communicator of every rank of the job (context 0), with settings
    /// from the `LUMEN_COLL_*` variables. Collective: every rank calls it
    /// once (a job that spans nodes builds its node and leader groups here).
    pub fn world(endpoint: Endpoint) -> Result<Self> {
        let config = CollectiveConfig::from_env(|k| std::env::var(k).ok())?;
        Self::world_with_config(endpoint, config)
    }

    /// A handle on every rank of the job, made without communication (no
    /// two-level structure): the parent for [`Communicator::create_group`]
    /// where not every rank takes part, e.g. inside a runtime task or actor.
    /// Collectives on it need every rank of the job, as on `world`.
    pub fn world_handle(endpoint: Endpoint) -> Result<Self> {
        let config = CollectiveConfig::from_env(|k| std::env::var(k).ok())?;
        let members: Vec<Rank> = (0..endpoint.size()).collect();
        Self::build(endpoint, members, 0, config, false)
    }

    /// [`Communicator::world`] with explicit settings.
    pub fn world_with_config(endpoint: Endpoint, config: CollectiveConfig) -> Result<Self> {
        let members: Vec<Rank> = (0..endpoint.size()).collect();
        Self::build(endpoint, members, 0, config, true)
    }

    fn build(
        endpoint: Endpoint,
        members: Vec<Rank>,
        context: u32,
        config: CollectiveConfig,
        hierarchical: bool,
    ) -> Result<Self> {
        let me = endpoint.rank();
        let rank = members.iter().position(|&r| r == me).unwrap_or(0) as u32;
        let members_len = members.len();
        let yield_wait = config.yield_when_idle.unwrap_or_else(|| {
            let local = (0..endpoint.size())
                .filter(|&r| endpoint.is_local(r))
                .count();
            local > online_cpus()
        });
        let comm = Communicator {
            inner: Arc::new(Inner {
                yield_wait,
                local: members.iter().map(|&m| endpoint.is_local(m)).collect(),
                schedules: (0..SCHEDULE_KINDS * members_len)
                    .map(|_| OnceLock::new())
                    .collect(),
                pending: AtomicUsize::new(0),
                endpoint,
                members,
                rank,
                context,
                sequence: AtomicU32::new(0),
                config,
                hierarchy: OnceLock::new(),
                shm: OnceLock::new(),
                exec: Mutex::new(()),
                outstanding: Mutex::new(0),
                drained: Condvar::new(),
                worker: Mutex::new(None),
                started_workers: AtomicUsize::new(0),
            }),
        };
        let hierarchy = if hierarchical {
            comm.build_hierarchy()?
        } else {
            None
        };
        let _ = comm.inner.hierarchy.set(hierarchy);
        Ok(comm)
    }

    /// Node and leader sub-communicators, when the members span several
    /// nodes and some node holds several of them. Whether the members span
    /// nodes is decided by each rank from its own view (`is_local`), which is
    /// the same answer everywhere, so either every member splits or none.
    fn build_hierarchy(&self) -> Result<Option<Hierarchy>> {
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

    /// The node's shared segment, set up on first use (collective: every
    /// member reaches this in the same operation, as every member calls the
    /// same collectives in the same order).
    fn shm(&self) -> Option<&crate::shm::Segment> {
        self.inner.shm.get_or_init(|| self.setup_shm()).as_ref()
    }

    /// Creates the segment at rank 0, maps it everywhere, agrees that every
    /// member has it, and unlinks its name. Uses only point-to-point
    /// algorithms (this runs inside `shm`'s initialisation). Any failure
    /// leaves every member on the point-to-point algorithms, with a warning.
    fn setup_shm(&self) -> Option<crate::shm::Segment> {
        use crate::shm::{unlink, Segment};
        let p = self.size() as usize;
        if !self.inner.config.shm || p < 2 || self.inner.local.iter().any(|&l| !l) {
            return None;
        }
        // At most 64 MiB per communicator and node, whatever the rank count.
        let cap = (64 << 20) / (p * crate::shm::SLOTS);
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
                Ok((name, _)) => unlink(&name),
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
            unlink(&name);
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
    fn shm_for(&self, bytes: usize) -> Option<&crate::shm::Segment> {
        if bytes <= self.inner.config.shm_max {
            self.shm()
        } else {
            None
        }
    }

    /// Whether blocks of `block_bytes` go by single-copy reads.
    fn single_copy_for(&self, segment: &crate::shm::Segment, block_bytes: usize) -> bool {
        segment.single_copy() && block_bytes >= self.inner.config.shm_copy_min
    }

    /// The liveness check of a shared-memory wait: a short blocking receive
    /// (which runs the transport's checks of local peers), then whether any
    /// rank of the job has died.
    fn shm_alive(&self, op: &'static str) -> Result<()> {
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

    // ---------------------------------------------------------------
    // Communicator construction.

    /// Splits into disjoint communicators, as `MPI_Comm_split`: ranks passing
    /// the same `color` form one, ordered by `key` and then by rank here;
    /// `None` (MPI_UNDEFINED) joins none and gets `None`. Collective.
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<Communicator>> {
        let _guard = self.enter();
        self.split_with(color, key, true)
    }

    /// The communicator of the listed ranks (ranks of this communicator), in
    /// that order, as `MPI_Comm_create`; ranks not listed get `None`.
    /// Collective over this communicator; every rank passes the same list.
    pub fn create(&self, ranks: &[u32]) -> Result<Option<Communicator>> {
        for &r in ranks {
            self.check_rank("create", r)?;
        }
        let _guard = self.enter();
        let position = ranks.iter().position(|&r| r == self.rank());
        self.split_with(position.map(|_| 0), position.unwrap_or(0) as i64, true)
    }

    /// A communicator of `ranks` (in that order), collective over those
    /// ranks only (`MPI_Comm_create_group`): the others need not call it,
    /// so a subset of ranks — the ranks hosting a placement group's bundles,
    /// say — can build its communicator on its own. Every member passes the
    /// same `ranks` and `tag`; concurrent calls whose groups share a rank
    /// must use different tags.
    pub fn create_group(&self, ranks: &[u32], tag: u16) -> Result<Communicator> {
        for &r in ranks {
            self.check_rank("create_group", r)?;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(&twice) = ranks.iter().find(|&&r| !seen.insert(r)) {
            return Err(CollectiveError::DuplicateRank {
                op: "create_group",
                rank: twice,
                ranks: ranks.to_vec(),
            });
        }
        if !ranks.contains(&self.rank()) {
            return Err(CollectiveError::NotMember {
                op: "create_group",
                rank: self.rank(),
                ranks: ranks.to_vec(),
            });
        }
        let members: Vec<Rank> = ranks
            .iter()
            .map(|&r| self.inner.members[r as usize])
            .collect();
        // Agree on a context id among the members only, through a
        // communicator in the reserved context of this tag.
        let agreement = Communicator::build(
            self.inner.endpoint.clone(),
            members.clone(),
            GROUP_CONTEXT + u32::from(tag),
            CollectiveConfig {
                shm: false,
                ..self.inner.config.clone()
            },
            false,
        )?;
        let mut next = [u64::from(NEXT_CONTEXT.load(Ordering::Acquire))];
        agreement.allreduce_impl(
            &mut next,
            ReduceOp::Max,
            AllreduceAlgorithm::RecursiveDoubling,
        )?;
        let context = next[0] as u32;
        if context > MAX_CONTEXT {
            return Err(CollectiveError::ContextsExhausted(context));
        }
        NEXT_CONTEXT.fetch_max(context + 1, Ordering::AcqRel);
        Communicator::build(
            self.inner.endpoint.clone(),
            members,
            context,
            self.inner.config.clone(),
            true,
        )
    }

    fn split_with(
        &self,
        color: Option<u32>,
        key: i64,
        hierarchical: bool,
    ) -> Result<Option<Communicator>> {
        let next = NEXT_CONTEXT.load(Ordering::Acquire);
        let mine = [
            u64::from(color.is_some()),
            u64::from(color.unwrap_or(0)),
            key as u64,
            u64::from(next),
        ];
        let p = self.size() as usize;
        let mut table = vec![0u64; 4 * p];
        table[4 * self.rank() as usize..][..4].copy_from_slice(&mine);
        self.allgather_in_place_impl(&mut table)?;
        let context = table.chunks(4).map(|e| e[3]).max().unwrap_or(1) as u32;
        if context > MAX_CONTEXT {
            return Err(CollectiveError::ContextsExhausted(context));
        }
        NEXT_CONTEXT.fetch_max(context + 1, Ordering::AcqRel);
        let Some(color) = color else {
            return Ok(None);
        };
        let mut chosen: Vec<(i64, usize)> = table
            .chunks(4)
            .enumerate()
            .filter(|(_, e)| e[0] == 1 && e[1] == u64::from(color))
            .map(|(r, e)| (e[2] as i64, r))
            .collect();
        chosen.sort();
        let members = chosen.iter().map(|&(_, r)| self.inner.members[r]).collect();
        Communicator::build(
            self.inner.endpoint.clone(),
            members,
            context,
            self.inner.config.clone(),
            hierarchical,
        )
        .map(Some)
    }

    // ---------------------------------------------------------------
    // Plumbing: tags, sends, receives, schedule execution.

    /// This rank's schedule of kind `kind` (and root), built once per
    /// communicator: small operations would otherwise spend a good part of
    /// their time allocating steps. Lock-free after the first use.
    fn cached(
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
    fn enter(&self) -> MutexGuard<'_, ()> {
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

    fn next_sequence(&self) -> u32 {
        self.inner.sequence.fetch_add(1, Ordering::Relaxed)
    }

    fn tag(&self, sequence: u32, round: u32) -> u64 {
        collective_tag(self.inner.context, sequence, round)
    }

    fn p2p_tag(&self, tag: u32) -> u64 {
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
    fn flow_controlled(&self, peer: usize) -> bool {
        self.inner.yield_wait && self.inner.local.get(peer).copied().unwrap_or(false)
    }

    fn take_credit(&self, op: &'static str, peer: usize, tag: u64) -> Result<()> {
        self.recv_bytes(op, peer, tag | CREDIT_BIT).map(|_| ())
    }

    fn give_credit(&self, op: &'static str, peer: usize, tag: u64) -> Result<()> {
        self.send_bytes(op, peer, tag | CREDIT_BIT, &[])
    }

    fn transport_error(&self, op: &'static str, source: TransportError) -> CollectiveError {
        CollectiveError::Transport {
            op,
            rank: self.rank(),
            context: self.inner.context,
            source,
        }
    }

    fn send_bytes(&self, op: &'static str, peer: usize, tag: u64, data: &[u8]) -> Result<()> {
        self.inner
            .endpoint
            .send(self.inner.members[peer], tag, data)
            .map_err(|e| self.transport_error(op, e))
    }

    /// Fails when any rank of the job has died.
    fn check_alive(&self, op: &'static str) -> Result<()> {
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

    fn recv_bytes(&self, op: &'static str, peer: usize, tag: u64) -> Result<Vec<u8>> {
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
    fn recv_yielding(&self, op: &'static str, src: Source, tag: u64) -> Result<Vec<u8>> {
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

    fn recv_into<T: Element>(
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
    fn segment_elements<T>(&self, peer: usize) -> usize {
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
    fn run<T: Element>(
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
    fn run_own<T: Element>(
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

    fn check_rank(&self, op: &'static str, rank: u32) -> Result<()> {
        if rank >= self.size() {
            return Err(CollectiveError::InvalidRank {
                op,
                given: rank,
                size: self.size(),
            });
        }
        Ok(())
    }

    fn check_len(
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

    fn check_op<T: Element>(op: &'static str, reduce: ReduceOp) -> Result<()> {
        if !T::KIND.supports(reduce) {
            return Err(CollectiveError::UnsupportedOp {
                op,
                reduce,
                kind: T::KIND,
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------
    // Point to point.

    /// Sends `data` to communicator rank `dst` under `tag` (a space of its
    /// own per communicator, apart from the collectives').
    pub fn send<T: Element>(&self, dst: u32, tag: u32, data: &[T]) -> Result<()> {
        self.check_rank("send", dst)?;
        self.send_bytes(
            "send",
            dst as usize,
            self.p2p_tag(tag),
            bytemuck::cast_slice(data),
        )
    }

    /// Receives the oldest message with `tag` from communicator rank `src`.
    pub fn recv<T: Element>(&self, src: u32, tag: u32) -> Result<Vec<T>> {
        self.check_rank("recv", src)?;
        let data = self.recv_bytes("recv", src as usize, self.p2p_tag(tag))?;
        if data.len() % std::mem::size_of::<T>() != 0 {
            return Err(CollectiveError::Mismatch {
                op: "recv",
                peer: src,
                got: data.len(),
                expected: data.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>(),
            });
        }
        Ok(bytemuck::pod_collect_to_vec(&data))
    }

    /// Receives into `buffer`, which must have the message's exact length.
    pub fn recv_into_slice<T: Element>(&self, src: u32, tag: u32, buffer: &mut [T]) -> Result<()> {
        self.check_rank("recv", src)?;
        self.recv_into(
            "recv",
            src as usize,
            self.p2p_tag(tag),
            buffer,
            Combine::Copy,
            ReduceOp::Sum,
        )
    }

    // ---------------------------------------------------------------
    // Collectives (blocking).

    /// Returns once every rank has entered (dissemination barrier).
    pub fn barrier(&self) -> Result<()> {
        let _guard = self.enter();
        self.barrier_impl()
    }

    fn barrier_impl(&self) -> Result<()> {
        if let Some(segment) = self.shm() {
            return segment.barrier(self.inner.yield_wait, &mut || self.shm_alive("barrier"));
        }
        self.barrier_p2p()
    }

    fn barrier_p2p(&self) -> Result<()> {
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
        self.check_rank("bcast", root)?;
        let _guard = self.enter();
        self.bcast_impl(buffer, root)
    }

    fn bcast_impl<T: Element>(&self, buffer: &mut [T], root: u32) -> Result<()> {
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

    fn bcast_p2p<T: Element>(&self, buffer: &mut [T], root: u32) -> Result<()> {
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

    fn reduce_impl<T: Element>(&self, buffer: &mut [T], op: ReduceOp, root: u32) -> Result<()> {
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
        Self::check_op::<T>("allreduce", op)?;
        let _guard = self.enter();
        self.allreduce_impl(buffer, op, algorithm)
    }

    fn allreduce_impl<T: Element>(
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

    /// Gathers every rank's `send` (same length everywhere) into `recv`
    /// (`size * send.len()` elements, rank order) at every rank (ring).
    pub fn allgather<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
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
    fn allgather_two_level<T: Element>(
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
        let p = self.size() as usize;
        if buffer.len() % p != 0 {
            self.check_len("allgather", "buffer", buffer.len(), buffer.len() / p * p)?;
        }
        let _guard = self.enter();
        self.allgather_in_place_impl(buffer)
    }

    fn allgather_in_place_impl<T: Element>(&self, buffer: &mut [T]) -> Result<()> {
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
        self.check_allgatherv(send, recv, counts)?;
        let _guard = self.enter();
        self.allgatherv_impl(send, recv, counts)
    }

    fn check_allgatherv<T: Element>(&self, send: &[T], recv: &[T], counts: &[usize]) -> Result<()> {
        let p = self.size() as usize;
        self.check_len("allgatherv", "counts", counts.len(), p)?;
        let r = self.rank() as usize;
        self.check_len("allgatherv", "send buffer", send.len(), counts[r])?;
        let total = counts.iter().sum();
        self.check_len("allgatherv", "receive buffer", recv.len(), total)
    }

    fn allgatherv_impl<T: Element>(
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

    /// Reduce-scatter with equal blocks (`MPI_Reduce_scatter_block`): `send`
    /// has `size * recv.len()` elements; rank `i` gets block `i` reduced.
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
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

    fn reduce_scatter_impl<T: Element>(&self, buffer: &mut [T], op: ReduceOp) -> Result<()> {
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

    /// All-to-all with equal blocks: block `j` of `send` goes to rank `j`,
    /// block `i` of `recv` comes from rank `i` (pairwise exchange).
    pub fn alltoall<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
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

    fn alltoallv_impl<T: Element>(
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

    /// Gathers every rank's `send` (same length) into `recv` at `root`
    /// (`size * send.len()` elements, rank order; ignored elsewhere).
    pub fn gather<T: Element>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<()> {
        let _guard = self.enter();
        self.gather_impl(send, recv, root)
    }

    fn gather_impl<T: Element>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<()> {
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
        let _guard = self.enter();
        self.scatter_impl(send, recv, root)
    }

    fn scatter_impl<T: Element>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<()> {
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

    // ---------------------------------------------------------------
    // Non-blocking variants.

    fn submit<R: Send + 'static>(
        &self,
        op: &'static str,
        job: impl FnOnce(&Communicator) -> Result<R> + Send + 'static,
    ) -> Request<R> {
        let slot: Arc<(Mutex<Option<Result<R>>>, Condvar)> =
            Arc::new((Mutex::new(None), Condvar::new()));
        let comm = self.clone();
        let done = slot.clone();
        let task: Job = Box::new(move || {
            let result = {
                let _guard = lock(&comm.inner.exec);
                job(&comm)
            };
            *lock(&done.0) = Some(result);
            done.1.notify_all();
            let mut outstanding = lock(&comm.inner.outstanding);
            *outstanding -= 1;
            comm.inner.pending.store(*outstanding, Ordering::Release);
            if *outstanding == 0 {
                comm.inner.drained.notify_all();
            }
        });
        {
            let mut outstanding = lock(&self.inner.outstanding);
            *outstanding += 1;
            self.inner.pending.store(*outstanding, Ordering::Release);
        }
        let sent = {
            let mut worker = lock(&self.inner.worker);
            if worker.is_none() {
                *worker = self.start_worker();
            }
            match worker.as_ref() {
                Some(tx) => tx.send(task).map_err(|e| e.0),
                None => Err(task),
            }
        };
        if let Err(task) = sent {
            // No helper thread: run it here (still in order, just blocking).
            tracing::warn!("collectives helper thread unavailable; running {op} inline");
            task();
        }
        Request { slot }
    }

    fn start_worker(&self) -> Option<mpsc::Sender<Job>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let n = self.inner.started_workers.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("lumen-coll-{}-{n}", self.inner.context))
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| tx)
    }

    /// Non-blocking [`Communicator::barrier`].
    pub fn ibarrier(&self) -> Request<()> {
        self.submit("barrier", |c| c.barrier_impl())
    }

    /// Non-blocking [`Communicator::bcast`]; the request returns the buffer.
    pub fn ibcast<T: Element>(&self, mut buffer: Vec<T>, root: u32) -> Request<Vec<T>> {
        self.submit("bcast", move |c| {
            c.check_rank("bcast", root)?;
            c.bcast_impl(&mut buffer, root).map(|_| buffer)
        })
    }

    /// Non-blocking [`Communicator::reduce_in_place`].
    pub fn ireduce<T: Element>(
        &self,
        mut buffer: Vec<T>,
        op: ReduceOp,
        root: u32,
    ) -> Request<Vec<T>> {
        self.submit("reduce", move |c| {
            c.check_rank("reduce", root)?;
            Self::check_op::<T>("reduce", op)?;
            c.reduce_impl(&mut buffer, op, root).map(|_| buffer)
        })
    }

    /// Non-blocking [`Communicator::allreduce`].
    pub fn iallreduce<T: Element>(&self, mut buffer: Vec<T>, op: ReduceOp) -> Request<Vec<T>> {
        self.submit("allreduce", move |c| {
            Self::check_op::<T>("allreduce", op)?;
            c.allreduce_impl(&mut buffer, op, c.inner.config.allreduce)
                .map(|_| buffer)
        })
    }

    /// Non-blocking [`Communicator::allgather_in_place`].
    pub fn iallgather<T: Element>(&self, mut buffer: Vec<T>) -> Request<Vec<T>> {
        self.submit("allgather", move |c| {
            c.allgather_in_place_impl(&mut buffer).map(|_| buffer)
        })
    }

    /// Non-blocking [`Communicator::reduce_scatter_in_place`].
    pub fn ireduce_scatter<T: Element>(&self, mut buffer: Vec<T>, op: ReduceOp) -> Request<Vec<T>> {
        self.submit("reduce_scatter", move |c| {
            Self::check_op::<T>("reduce_scatter", op)?;
            c.reduce_scatter_impl(&mut buffer, op).map(|_| buffer)
        })
    }

    /// Non-blocking [`Communicator::gather`]; returns the gathered blocks at
    /// the root, an empty vector elsewhere.
    pub fn igather<T: Element>(&self, send: Vec<T>, root: u32) -> Request<Vec<T>> {
        self.submit("gather", move |c| {
            c.check_rank("gather", root)?;
            let n = if c.rank() == root {
                send.len() * c.size() as usize
            } else {
                0
            };
            let mut recv = vec![T::zeroed(); n];
            c.gather_impl(&send, &mut recv, root).map(|_| recv)
        })
    }

    /// Non-blocking [`Communicator::scatter`] of `count` elements per rank
    /// (`send` matters at the root only); returns this rank's block.
    pub fn iscatter<T: Element>(&self, send: Vec<T>, count: usize, root: u32) -> Request<Vec<T>> {
        self.submit("scatter", move |c| {
            c.check_rank("scatter", root)?;
            let mut recv = vec![T::zeroed(); count];
            c.scatter_impl(&send, &mut recv, root).map(|_| recv)
        })
    }

    /// Non-blocking [`Communicator::alltoall`]; returns the received blocks.
    pub fn ialltoall<T: Element>(&self, send: Vec<T>) -> Request<Vec<T>> {
        self.submit("alltoall", move |c| {
            let p = c.size() as usize;
            let counts = vec![send.len() / p; p];
            c.check_len("alltoall", "send buffer", send.len(), counts[0] * p)?;
            let mut recv = vec![T::zeroed(); send.len()];
            let direct = c
                .inner
                .config
                .direct(counts[0] * std::mem::size_of::<T>(), p);
            c.alltoallv_impl(&send, &counts, &mut recv, &counts, direct)
                .map(|_| recv)
        })
    }

    /// Non-blocking [`Communicator::allgatherv`]: the result has
    /// `counts.iter().sum()` elements, rank `i`'s in block `i`.
    pub fn iallgatherv<T: Element>(&self, send: Vec<T>, counts: Vec<usize>) -> Request<Vec<T>> {
        self.submit("allgatherv", move |c| {
            let mut recv = vec![T::zeroed(); counts.iter().sum()];
            c.check_allgatherv(&send, &recv, &counts)?;
            c.allgatherv_impl(&send, &mut recv, &counts).map(|_| recv)
        })
    }

    /// Non-blocking [`Communicator::alltoallv`]: the result has
    /// `recv_counts.iter().sum()` elements.
    pub fn ialltoallv<T: Element>(
        &self,
        send: Vec<T>,
        send_counts: Vec<usize>,
        recv_counts: Vec<usize>,
    ) -> Request<Vec<T>> {
        self.submit("alltoallv", move |c| {
            let p = c.size() as usize;
            c.check_len("alltoallv", "send counts", send_counts.len(), p)?;
            c.check_len("alltoallv", "receive counts", recv_counts.len(), p)?;
            c.check_len(
                "alltoallv",
                "send buffer",
                send.len(),
                send_counts.iter().sum(),
            )?;
            let mut recv = vec![T::zeroed(); recv_counts.iter().sum()];
            c.alltoallv_impl(&send, &send_counts, &mut recv, &recv_counts, false)
                .map(|_| recv)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_contexts_operations_and_rounds_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for context in [0, 1, 2, MAX_CONTEXT] {
            for sequence in [0, 1, 0x3f_fffe] {
                for round in [0, 1, 0xffff] {
                    let tag = collective_tag(context, sequence, round);
                    assert_eq!(tag >> 60, 0xC, "collectives' range");
                    assert!(tag < lumen_transport::RESERVED_TAGS);
                    assert!(seen.insert(tag), "duplicate tag {tag:#x}");
                    assert!(seen.insert(tag | CREDIT_BIT), "credit collides");
                }
            }
            for user in [0, 7, u32::MAX] {
                assert!(seen.insert(p2p_tag(context, user)), "p2p collides");
            }
        }
        // The liveness probe's context is never allocated.
        assert!(u64::from(MAX_CONTEXT) < PROBE_CONTEXT);
    }

    #[test]
    fn segments_cover_a_range_exactly_once() {
        for (len, segment) in [(0, 4), (1, 4), (8, 4), (9, 4), (9, 0), (3, 100)] {
            let range = 10..10 + len;
            let n = pieces(&range, segment);
            let parts: Vec<_> = (0..n + 1)
                .filter_map(|i| piece(range.clone(), segment, i))
                .collect();
            assert_eq!(parts.len(), n, "len {len} segment {segment}");
            assert_eq!(parts.first().map(|r| r.start), Some(10));
            assert_eq!(parts.last().map(|r| r.end), Some(10 + len));
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn credits_sent_match_credits_taken_and_come_in_time() {
        for nseg in [0, 1, 31, 32, 33, 40, 41, 100, 1000] {
            let taken: Vec<usize> = (0..nseg).filter(|&i| credit_before(i, nseg)).collect();
            let given: Vec<usize> = (0..nseg).filter(|&j| credit_after(j, nseg)).collect();
            assert_eq!(taken.len(), given.len(), "nseg {nseg}");
            assert_eq!(taken.len(), credits(nseg));
            // Credit c is given after an earlier segment than the one it
            // unlocks, so waits never form a cycle.
            assert!(taken.iter().zip(&given).all(|(t, g)| g < t), "nseg {nseg}");
            // Never more than the window ahead.
            for (c, &t) in taken.iter().enumerate() {
                assert!(t - (c * CREDIT_EVERY) <= CREDIT_WINDOW);
            }
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
