//! The core worker of a rank: the IO shell around the pure tables — the
//! reference table ([`refs`](super::refs)), the task table
//! ([`task_table`](super::task_table)) and the scheduler (`lumen-sched`).
//! It submits tasks and actor calls, serves the runtime's messages (an
//! active-message handler on the transport's progress thread, which never
//! blocks: it updates tables, queues work and sends small replies), fetches
//! values, watches peers for death and retries tasks.
//!
//! One file per concern, each an `impl Inner` block:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | `Inner` and its state, start-up, sending, [`Inner::dispatch`] (one line per message kind) |
//! | `tasks.rs` | submitting, running and finishing tasks; cancel |
//! | `objects.rs` | reference counting glue, `put`, `get`/`wait`, copies and their deletion |
//! | `actors.rs` | creating, calling, locating, killing and restarting actors; actor names |
//! | `failures.rs` | the peer monitor, what a rank's death does (retries, restarts, failed calls) |
//! | `requests.rs` | blocking request/reply with other ranks, counters, shutdown |
//! | `groups.rs` | placement-group requests to the head |
//! | `status.rs` | rank 0's `lumen status` service: callers authenticated with the job secret, every rank's counters gathered within a bound |
//!
//! Locks: `state` (reference table, task table, requests) is never held
//! while sending or while running user code; everything that must happen
//! after a state change is collected under the lock and done after it.

mod actors;
mod failures;
mod groups;
mod lineage;
mod liveness;
mod mesh;
mod metrics;
mod objects;
mod requests;
pub(crate) mod status;
mod tasks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use lumen_transport::{Endpoint, Rank, TransportError};

use self::groups::GroupRuntime;
use super::actor::ActorHost;
use super::config::RuntimeConfig;
use super::error::RuntimeError;
use super::executor::Executor;
use super::ids::{ActorId, ObjectId};
use super::object_ref::{collect_refs, ObjectRef, Pinned};
use super::options::ActorOptions;
use super::protocol::{
    decode, encode, ActorAddress, Outcome, RankInfo, RankStats, RtMsg, HEARTBEAT_TAG, RUNTIME_TAG,
};
use super::refs::{IdMap, RefTable};
use super::scheduler::{RankSlot, Scheduler};
use super::store::{Arena, ValueStore};
use super::task_table::TaskTable;
use crate::error::{LumenError, Result};
use lumen_sched::{GroupAnswer, Host, Infeasible};
use serde::Serialize;

/// How `main` runs on the ranks of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rank 0 runs `main` and submits; the other ranks only serve (Ray's
    /// style). `init` does not return on ranks other than 0.
    Driver,
    /// Every rank runs `main`, submits work anywhere and serves (MPI's style).
    Spmd,
}

/// How often the monitor looks for dead peers.
const MONITOR_PERIOD: Duration = Duration::from_millis(20);
/// Longest single sleep of a waiting caller (it re-checks peers after).
const WAIT_SLICE: Duration = Duration::from_millis(50);

static CURRENT: RwLock<Option<Arc<Inner>>> = RwLock::new(None);

/// The runtime of this process, if one is running.
pub(crate) fn current_inner() -> Option<Arc<Inner>> {
    CURRENT.read().ok().and_then(|c| c.clone())
}

pub(crate) fn set_current(inner: Option<Arc<Inner>>) -> Result<()> {
    let mut slot = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    if inner.is_some() && slot.is_some() {
        return Err(LumenError::Runtime(RuntimeError::AlreadyInitialized));
    }
    *slot = inner;
    Ok(())
}

/// The spin phase of one wait (see [`Inner::pause`]): until `until`, the
/// waiting thread drives progress itself, holding the endpoint's poll
/// session (dropped, so handed back, when the spin ends or the wait
/// returns).
///
/// Default: spin [`AUTO_WAIT_SPIN`](super::config::AUTO_WAIT_SPIN) when
/// the rank is bound to cores of its own, not at all otherwise. Measured
/// here (2 cores, `lumen bench runtime --workers 1`, blocking task round
/// trips): with the driver and the worker each bound to a core, the reply
/// taken on the caller's thread instead of a progress-thread hand-off;
/// with ranks sharing cores, a spinning caller takes the core its peer
/// needs (11-14k round trips/s against 52-85k/s sleeping, before the
/// progress thread learnt to stand by).
pub(super) struct Spin<'a> {
    until: Instant,
    session: Option<lumen_transport::PollSession<'a>>,
    /// No spin: none configured, or another thread of the rank polls.
    refused: bool,
    /// The rank's caller spin to adapt (as the idle executor's: halved
    /// after a spin that ran out, down to a sixteenth, doubled after one
    /// that got its answer), this spin's length, the full spin.
    adapt: Option<(&'a AtomicU64, u64, u64)>,
}

impl Drop for Spin<'_> {
    /// The wait got its answer while spinning: the caller will likely
    /// wait again soon (see `PollSession::linger`), and the next spin may
    /// be longer.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.linger();
            if let Some((now, spin_ns, full)) = self.adapt.take() {
                now.store(spin_ns.saturating_mul(2).min(full), Ordering::Relaxed);
            }
        }
    }
}

/// An answer awaited by a blocked caller.
#[derive(Debug)]
enum Reply {
    Waiting(Rank),
    Ack(Option<String>),
    Name(Option<ActorAddress>),
    Stats(Box<RankStats>),
    /// The creator's answer to `ActorLocate`.
    Located(Option<Rank>),
    /// The head's answer about a placement group.
    Group(GroupAnswer),
    /// A rank's clock (timeline alignment).
    Clock(u64),
    /// A rank's timeline: node, dropped events, events.
    Timeline(u32, u64, Vec<crate::runtime::timeline::Event>),
    Failed,
}

#[derive(Debug)]
struct State {
    refs: RefTable,
    /// Tasks and actor calls in flight (pure, see `task_table`).
    tasks: TaskTable<Pinned>,
    /// Values of borrowed objects: `None` while the owner has not answered.
    remote_values: IdMap<ObjectId, Option<Outcome>>,
    /// Secondary copies of borrowed objects, as the owner last reported.
    remote_copies: HashMap<ObjectId, Vec<Rank>>,
    /// Request id of each outstanding `GetValue`.
    value_requests: HashMap<u64, ObjectId>,
    /// (owner side) borrowers waiting for a pending object's value.
    value_waiters: HashMap<ObjectId, Vec<(Rank, u64)>>,
    replies: HashMap<u64, Reply>,
    dead: HashSet<Rank>,
    /// Why each dead rank is dead (for the errors of what waited on it).
    dead_why: HashMap<Rank, String>,
    dead_actors: HashMap<ActorId, String>,
    /// (creator side) restartable actors this rank created.
    created_actors: HashMap<ActorId, CreatedActor>,
    /// Where actors moved after a restart (overrides the handle's host).
    actor_hosts: HashMap<ActorId, Rank>,
    /// (creator side) where this rank's scheduler placed the actors it
    /// created and that are not stopped yet (counted in its placement).
    placed_actors: HashMap<ActorId, Rank>,
    /// (owner side) retried and rebuilt tasks held back until arguments
    /// this rank owns are computed again (see `failures::retry_task_now`).
    deferred: lineage::Deferred<(Rank, super::protocol::TaskSpec, Option<Pinned>)>,
}

/// What the creator keeps to restart an actor (`max_restarts`).
#[derive(Debug)]
struct CreatedActor {
    address: ActorAddress,
    args: Vec<u8>,
    /// Keeps the constructor's `ObjectRef` arguments alive for restarts.
    pinned: Pinned,
    options: ActorOptions,
    restarts_left: u32,
}

/// A condition variable that skips the wake-up system call when nobody
/// waits: std's futex condvar makes one on every notify, and `on_done`
/// notifies once per task (the caller of a batch is rarely waiting).
/// Waiters count themselves under the mutex the state changes under, so
/// a notifier that changed the state (holding that mutex) and then reads
/// zero knows every later waiter will see the change before it sleeps.
#[derive(Debug, Default)]
struct Changed {
    condvar: Condvar,
    waiters: AtomicUsize,
    /// Waits that slept (see `RankStats::waits_slept`).
    sleeps: AtomicU64,
}

impl Changed {
    fn notify_all(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.condvar.notify_all();
        }
    }

    fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> MutexGuard<'a, T> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        let guard = self
            .condvar
            .wait_timeout(guard, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        guard
    }
}

/// Bounds on what one rank may ask for (see `RuntimeConfig`).
#[derive(Debug)]
struct Limits {
    max_pending: usize,
    submit_timeout: Option<Duration>,
    max_object_bytes: Option<u64>,
    /// Submissions that waited for room under `max_pending`.
    pending_waits: AtomicU64,
    /// The most tasks and calls pending at once.
    pending_peak: AtomicU64,
}

/// One rank's runtime (shared by `Runtime` handles, `ObjectRef`s, the
/// message handler and the executor).
pub(crate) struct Inner {
    pub(crate) endpoint: Endpoint,
    pub(crate) rank: Rank,
    pub(crate) size: u32,
    pub(crate) mode: Mode,
    pub(crate) ranks: Vec<RankInfo>,
    pub(crate) job_id: String,
    state: Mutex<State>,
    changed: Changed,
    scheduler: Mutex<Scheduler>,
    pub(crate) store: ValueStore,
    pub(crate) executor: Arc<Executor>,
    pub(crate) actors: ActorHost,
    next_object: AtomicU64,
    next_request: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// Set when the driver sent `Shutdown` (serving ranks leave).
    pub(crate) shutdown_requested: (Mutex<bool>, Condvar),
    inline_max: usize,
    /// `LUMEN_MAX_PENDING_TASKS`, `LUMEN_SUBMIT_TIMEOUT_MS`,
    /// `LUMEN_MAX_OBJECT_BYTES` (see `RuntimeConfig`).
    limits: Limits,
    /// How long a waiting caller drives progress itself before sleeping.
    spin: Duration,
    /// The callers' spin now, in nanoseconds (0: the full `spin`).
    caller_spin_ns: AtomicU64,
    /// Futures (`.await`) waiting for objects.
    wakers: Mutex<HashMap<ObjectId, Vec<std::task::Waker>>>,
    /// Entries in `wakers` (read without its lock: `wake` skips the lock
    /// when no future waits, the common case).
    waker_entries: AtomicUsize,
    /// Named actors (rank 0 only).
    names: Mutex<HashMap<String, ActorAddress>>,
    /// Placement groups: the head's table (rank 0), known groups, actors
    /// hosted in groups (see `placement`).
    pub(crate) groups: GroupRuntime,
    /// The cores this rank bound itself to (see `runtime::binding`).
    pub(crate) binding: Option<lumen_sched::topology::RankBinding>,
    tasks_executed: AtomicU64,
    /// How long tasks ran here (`lumen_task_run_seconds`).
    pub(crate) task_runs: metrics::Histogram,
    /// How long this rank's tasks and actor calls took from send to
    /// reply (`lumen_call_latency_seconds`).
    pub(crate) call_latency: metrics::Histogram,
    /// Tasks sent again after their rank died.
    pub(crate) tasks_retried: AtomicU64,
    /// Actors this rank created that were restarted after their rank died.
    pub(crate) actors_restarted: AtomicU64,
    /// Object bytes fetched from other ranks, by path (see `Moved`).
    pub(crate) fetched: metrics::PathBytes,
    /// This rank's device objects (see `runtime::device`).
    pub(crate) devices: super::device::DevicePlane,
    /// The failure detector (see `liveness`).
    pub(crate) liveness: liveness::Liveness,
    /// How owned stored objects were made, to rebuild them (see `lineage`).
    pub(crate) lineage: lineage::Lineage,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("mode", &self.mode)
            .finish()
    }
}

fn runtime_error(error: RuntimeError) -> LumenError {
    LumenError::Runtime(error)
}

/// Serialises the arguments of `what` (a task, an actor's constructor or
/// method), collecting the `ObjectRef`s inside them: the pin keeps them
/// alive until the receiver is registered as their borrower.
fn encode_args(what: &dyn std::fmt::Display, args: &impl Serialize) -> Result<(Vec<u8>, Pinned)> {
    let (encoded, pinned) = collect_refs(|| bincode::serialize(args));
    let args = encoded.map_err(|e| {
        runtime_error(RuntimeError::Codec {
            what: format!("the arguments of {what}"),
            detail: e.to_string(),
        })
    })?;
    Ok((args, pinned))
}

/// A `num_gpus` that no rank can serve as asked (above 1 but not whole).
fn check_gpu_request(what: &str, gpus: f64) -> Result<()> {
    lumen_sched::GpuSlots::check_shape(gpus).map_err(|e| {
        runtime_error(RuntimeError::Infeasible {
            what: what.to_string(),
            detail: e.to_string(),
        })
    })
}

/// The error of a task or actor (`what`) that no rank can take.
fn infeasible(what: &str) -> impl FnOnce(Infeasible) -> LumenError + '_ {
    move |e| {
        runtime_error(RuntimeError::Infeasible {
            what: what.to_string(),
            detail: e.0,
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl Inner {
    /// The node this rank runs on.
    pub(crate) fn node(&self) -> u32 {
        self.ranks.get(self.rank as usize).map_or(0, |r| r.node)
    }

    /// Builds the runtime of this rank over a connected endpoint and starts
    /// its threads (progress, executor, monitor).
    pub(crate) fn start(
        endpoint: Endpoint,
        mode: Mode,
        ranks: Vec<RankInfo>,
        job_id: String,
        arena: Option<Arena>,
        config: &RuntimeConfig,
        binding: Option<lumen_sched::topology::RankBinding>,
    ) -> Result<Arc<Self>> {
        let rank = endpoint.rank();
        let size = endpoint.size();
        crate::runtime::timeline::enable_from_env();
        let me = ranks
            .get(rank as usize)
            .cloned()
            .ok_or_else(|| LumenError::Bootstrap(format!("no facts for rank {rank}")))?;
        let slots: Vec<RankSlot> = ranks
            .iter()
            .map(|info| RankSlot {
                node: info.node,
                capacity: info.resources.clone(),
                serving: !(mode == Mode::Driver && info.rank == 0 && size > 1),
                alive: true,
                outstanding: 0,
                actors: 0,
            })
            .collect();
        let hosts: Vec<Host> = slots
            .iter()
            .map(|slot| Host {
                node: slot.node,
                capacity: slot.capacity.clone(),
                available: slot.capacity.clone(),
                serving: slot.serving,
                alive: true,
            })
            .collect();
        let inline_max = config.inline_max;
        let cpus = me.resources.cpus.max(1.0);
        let nodes: Vec<u32> = ranks.iter().map(|r| r.node).collect();
        let nic_local: Vec<bool> = ranks.iter().map(|r| r.nic_local).collect();
        let inner = Arc::new(Inner {
            store: ValueStore::new(
                endpoint.clone(),
                nodes,
                arena,
                config.pull_chunk_bytes,
                binding.as_ref().map(|b| b.numa),
            ),
            endpoint,
            rank,
            size,
            mode,
            ranks,
            job_id,
            state: Mutex::new(State {
                refs: RefTable::new(rank),
                tasks: TaskTable::default(),
                remote_values: IdMap::default(),
                remote_copies: HashMap::new(),
                value_requests: HashMap::new(),
                value_waiters: HashMap::new(),
                replies: HashMap::new(),
                dead: HashSet::new(),
                dead_why: HashMap::new(),
                dead_actors: HashMap::new(),
                created_actors: HashMap::new(),
                actor_hosts: HashMap::new(),
                placed_actors: HashMap::new(),
                deferred: lineage::Deferred::default(),
            }),
            changed: Changed::default(),
            scheduler: Mutex::new(
                Scheduler::new(slots, rank as usize + 1).with_nic_local(&nic_local),
            ),
            executor: Executor::new(
                &lumen_sched::Resources {
                    cpus,
                    ..me.resources.clone()
                },
                lumen_sched::GpuSlots::new(config.rank_gpu_ids()),
            ),
            actors: ActorHost::default(),
            next_object: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            shutdown_requested: (Mutex::new(false), Condvar::new()),
            inline_max,
            limits: Limits {
                max_pending: config.max_pending,
                submit_timeout: config.submit_timeout,
                max_object_bytes: config.max_object_bytes,
                pending_waits: AtomicU64::new(0),
                pending_peak: AtomicU64::new(0),
            },
            caller_spin_ns: AtomicU64::new(0),
            spin: config.wait_spin.unwrap_or_else(|| {
                if binding.as_ref().is_some_and(|b| !b.cpus_shared) {
                    super::config::AUTO_WAIT_SPIN
                } else {
                    Duration::ZERO
                }
            }),
            wakers: Mutex::new(HashMap::new()),
            waker_entries: AtomicUsize::new(0),
            names: Mutex::new(HashMap::new()),
            groups: GroupRuntime::new(rank, hosts),
            binding,
            tasks_executed: AtomicU64::new(0),
            task_runs: metrics::Histogram::default(),
            call_latency: metrics::Histogram::default(),
            tasks_retried: AtomicU64::new(0),
            actors_restarted: AtomicU64::new(0),
            fetched: metrics::PathBytes::default(),
            devices: super::device::DevicePlane::default(),
            liveness: liveness::Liveness::new(size, liveness::Liveness::bound_from_env()),
            lineage: lineage::Lineage::from_env(),
        });
        // Tasks may arrive as soon as the handler is in: they need `current`.
        set_current(Some(inner.clone()))?;
        let weak = Arc::downgrade(&inner);
        inner.endpoint.register_handler(
            RUNTIME_TAG,
            Arc::new(move |_endpoint, message| {
                if let Some(inner) = weak.upgrade() {
                    inner.on_message(message.src, &message.data);
                }
            }),
        )?;
        // Heartbeats carry nothing: the arrival is the message.
        inner
            .endpoint
            .register_handler(HEARTBEAT_TAG, Arc::new(|_endpoint, _message| {}))?;
        inner.endpoint.spawn_progress_thread();
        inner
            .executor
            .start(Arc::downgrade(&inner), cpus.ceil() as usize);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("lumen-monitor".into())
            .spawn(move || failures::monitor(weak))
            .map_err(|e| runtime_error(RuntimeError::Cluster(format!("no monitor thread: {e}"))))?;
        // LUMEN_METRICS_PORT: Prometheus text on port + local rank.
        let local_rank = inner
            .ranks
            .iter()
            .filter(|r| r.node == me.node && r.rank < rank)
            .count() as u32;
        match metrics::address_from_env(|name| std::env::var(name).ok(), local_rank) {
            Ok(Some(addr)) => metrics::serve(&inner, addr).map_err(|e| {
                runtime_error(RuntimeError::Cluster(format!(
                    "rank {rank} cannot serve metrics on {addr} ({}): {e}; choose another port",
                    metrics::PORT_VAR
                )))
            })?,
            Ok(None) => {}
            Err(e) => return Err(runtime_error(RuntimeError::Cluster(e))),
        }
        Ok(inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a waiting thread spins on progress before it sleeps.
    pub(crate) fn wait_spin(&self) -> Duration {
        self.spin
    }

    /// Drives progress on this thread (in a poll session: the progress
    /// thread stands by) until `done()` turns true or `spin` passes: an
    /// idle executor or actor thread waiting for its next task or call,
    /// which then arrives through this thread's own progress, with no
    /// wake-up. `Some(found)`; `None` when another thread of the rank
    /// polls already (the caller should sleep).
    pub(crate) fn poll_until(&self, spin: Duration, done: impl Fn() -> bool) -> Option<bool> {
        let session = self.endpoint.begin_polling()?;
        let until = Instant::now() + spin;
        let mut rounds = 0u32;
        let found = loop {
            if done() {
                break true;
            }
            match self.endpoint.progress() {
                Ok(true) => continue,
                Ok(false) => std::hint::spin_loop(),
                Err(_) => break false,
            }
            rounds = rounds.wrapping_add(1);
            if rounds % 16 == 0 && Instant::now() >= until {
                break done();
            }
        };
        if found {
            // It goes to run what it found, then polls again.
            session.linger();
        } else {
            drop(session);
        }
        Some(found)
    }

    /// A waiting caller's spin phase, for [`pause`](Self::pause).
    pub(super) fn spin_clock(&self) -> Spin<'_> {
        let full = self.spin.as_nanos() as u64;
        let spin = match self.caller_spin_ns.load(Ordering::Relaxed) {
            0 => full,
            ns => ns.min(full),
        };
        Spin {
            until: Instant::now() + Duration::from_nanos(spin),
            session: None,
            refused: full == 0,
            adapt: Some((&self.caller_spin_ns, spin, full)),
        }
    }

    /// Waits for a state change: first drives the transport from this
    /// thread until the spin ends (a reply then runs its handler here, on
    /// the caller's own thread, instead of waking it from the progress
    /// thread), then sleeps on the condition variable for `slice`.
    ///
    /// The spin holds the endpoint's poll session ([`Spin`]): the progress
    /// thread stands by meanwhile, and a second waiting thread of this rank
    /// sleeps at once instead of spinning beside the first.
    fn pause<'a>(
        &'a self,
        s: MutexGuard<'a, State>,
        spin: &mut Spin<'a>,
        slice: Duration,
    ) -> MutexGuard<'a, State> {
        if !spin.refused && Instant::now() < spin.until {
            if spin.session.is_none() {
                spin.session = self.endpoint.begin_polling();
                spin.refused = spin.session.is_none();
            }
            if spin.session.is_some() {
                drop(s);
                if let Ok(false) = self.endpoint.progress() {
                    std::hint::spin_loop();
                }
                return self.lock();
            }
        }
        // Progress goes back to the progress thread before this one sleeps;
        // the spin ran out: the next one is shorter.
        if spin.session.take().is_some() {
            if let Some((now, spin_ns, full)) = spin.adapt.take() {
                now.store((spin_ns / 2).max(full / 16), Ordering::Relaxed);
            }
        }
        self.changed.wait_timeout(s, slice)
    }

    fn new_object(&self) -> ObjectId {
        ObjectId {
            owner: self.rank,
            seq: self.next_object.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether `rank` takes tasks and actors (in driver mode rank 0 only
    /// submits).
    pub(crate) fn serves(&self, rank: Rank) -> bool {
        !(self.mode == Mode::Driver && rank == 0 && self.size > 1)
    }

    /// An actor mesh's id, unique in the job: this rank and a number
    /// unique here.
    pub(crate) fn new_mesh_id(&self) -> u64 {
        (u64::from(self.rank) << 40) | (self.new_object().seq & ((1 << 40) - 1))
    }

    fn new_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a runtime message; to ourselves it is handled in place.
    fn send(
        self: &Arc<Self>,
        to: Rank,
        message: &RtMsg,
    ) -> std::result::Result<(), TransportError> {
        if to == self.rank {
            self.dispatch(self.rank, message.clone());
            return Ok(());
        }
        self.endpoint.send(to, RUNTIME_TAG, &encode(message))
    }

    /// Sends, logging failures (a dead peer is handled by the monitor).
    pub(crate) fn send_or_log(self: &Arc<Self>, to: Rank, message: &RtMsg) {
        if let Err(e) = self.send(to, message) {
            tracing::debug!(rank = self.rank, to, "runtime message not sent: {e}");
        }
    }

    fn on_message(self: &Arc<Self>, src: Rank, data: &[u8]) {
        match decode::<RtMsg>(data) {
            Ok(message) => self.dispatch(src, message),
            Err(e) => tracing::error!(
                rank = self.rank,
                from = src,
                "malformed runtime message ({} bytes) ignored: {e}",
                data.len()
            ),
        }
    }

    /// Routes one runtime message to its handler (one line per kind; the
    /// handlers live with their concern: tasks, objects, actors, requests,
    /// groups).
    fn dispatch(self: &Arc<Self>, src: Rank, message: RtMsg) {
        use RtMsg as M;
        match message {
            M::Submit(spec) => self.on_submit(src, spec),
            M::Done {
                object,
                outcome,
                refs,
                queued,
            } => self.on_done_from(src, object, outcome, refs, queued),
            M::Cancel { object } => self.on_cancel(object),
            M::ActorCreate {
                address,
                args,
                refs,
                placement_group,
                bundle_index,
                gpus,
                mesh,
            } => {
                let placement = placement_group.map(|group| (group, bundle_index));
                self.on_actor_create(address, args, refs, placement, gpus, mesh)
            }
            M::ActorCall {
                actor,
                method,
                name,
                object,
                args,
                refs,
                device_args,
            } => self.on_actor_call(actor, method, name, object, (args, refs, device_args)),
            M::MeshCall {
                hosts,
                targets,
                method,
                name,
                args,
                refs,
                fanout,
            } => self.on_mesh_call(hosts, targets, method, name, args, refs, fanout),
            M::ActorKill { actor } => self.on_actor_kill(actor),
            M::ActorRelease { actor } => self.actors.release(self, actor),
            M::ActorLocate { actor, request } => self.on_actor_locate(src, actor, request),
            M::ActorLocation { request, host } => self.answer(request, Reply::Located(host)),
            M::AddBorrower {
                object,
                borrower,
                count,
                request,
            } => self.on_add_borrower(src, object, borrower, count, request),
            M::RemoveBorrower {
                object,
                borrower,
                count,
            } => self.on_remove_borrower(object, borrower, count),
            M::Ack { request, error } => self.answer(request, Reply::Ack(error)),
            M::GetValue { object, request } => self.on_get_value(src, object, request),
            M::Value {
                request,
                outcome,
                copies,
            } => self.on_value(request, outcome, copies),
            M::FreeCopy { rank, key, arena } => self.store.release(rank, key, arena),
            M::AddCopy {
                object,
                holder,
                rank,
                key,
            } => self.on_add_copy(src, object, holder, rank, key),
            M::NameRegister {
                name,
                address,
                request,
            } => self.on_name_register(src, name, address, request),
            M::NameRemove { name } => self.on_name_remove(&name),
            M::NameLookup { name, request } => self.on_name_lookup(src, &name, request),
            M::NameReply { request, address } => self.answer(request, Reply::Name(address)),
            M::Stats { request } => self.on_stats(src, request),
            M::StatsReply { request, stats } => self.answer(request, Reply::Stats(Box::new(stats))),
            M::ClockProbe { request } => self.send_or_log(
                src,
                &RtMsg::ClockReply {
                    request,
                    now_us: crate::runtime::timeline::now_us(),
                },
            ),
            M::ClockReply { request, now_us } => self.answer(request, Reply::Clock(now_us)),
            M::TimelineGet { request, last } => self.on_timeline_get(src, request, last),
            M::TimelineReply {
                request,
                node,
                dropped,
                events,
            } => self.answer(request, Reply::Timeline(node, dropped, events)),
            M::Shutdown => self.on_shutdown(),
            M::RankDead { rank, detail } => self.on_rank_declared_dead(src, rank, detail),
            message @ (M::PgCreate { .. }
            | M::PgWait { .. }
            | M::PgRemove { .. }
            | M::PgAnswer { .. }
            | M::BundleReserve { .. }
            | M::BundleReserved { .. }
            | M::BundleRelease { .. }) => self.on_group_message(src, message),
        }
    }

    /// Runs `wait` with this thread's executor slots lent out.
    fn blocking<R>(self: &Arc<Self>, wait: impl FnOnce() -> R) -> R {
        let token = self.executor.blocking(self);
        let result = wait();
        self.executor.unblocked(token);
        result
    }
}

/// Shared by `submit` and friends: a typed `ObjectRef` for an owned id.
pub(crate) fn owned_ref<T: ?Sized>(inner: &Arc<Inner>, object: ObjectId) -> ObjectRef<T> {
    ObjectRef::owned(object, inner.clone())
}
