//! The core worker of a rank: the IO shell around the reference table and
//! the scheduler. It submits tasks and actor calls, serves the runtime's
//! messages (an active-message handler on the transport's progress thread,
//! which never blocks: it updates tables, queues work and sends small
//! replies), fetches values, watches peers for death and retries tasks.
//!
//! Locks: `state` (reference table, in-flight tasks, requests) is never held
//! while sending or while running user code; everything that must happen
//! after a state change is collected under the lock and done after it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use lumen_transport::{Endpoint, Rank, Source, TransportError};

use super::actor::{ActorHost, RawActorHandle};
use super::config::RuntimeConfig;
use super::error::{RuntimeError, TaskError, TaskErrorKind};
use super::executor::Executor;
use super::ids::{ActorId, ObjectId};
use super::object_ref::{collect_refs, Bytes, ObjectRef, Pinned};
use super::options::{ActorOptions, PlacementGroupScheduling, TaskOptions};
use super::placement::{GroupAnswer, GroupRuntime, Host};
use super::protocol::{
    decode, encode, ActorAddress, Outcome, RankInfo, RankStats, RtMsg, TaskSpec, PROBE_TAG,
    RUNTIME_TAG,
};
use super::refs::{Effect, IdMap, ObjectState, RefTable};
use super::registry::{self, TaskFailure};
use super::scheduler::{RankSlot, Request, Scheduler};
use super::store::{Arena, FetchError, ValueStore};
use crate::error::{LumenError, Result};

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

/// A work in flight that the owner must follow up when a rank dies.
#[derive(Debug)]
enum InFlight {
    Task {
        spec: TaskSpec,
        rank: Rank,
        /// Keeps the objects the arguments reference alive while the task
        /// may be retried (the dead rank's registrations go with it; Ray's
        /// submitted-task references). Dropped outside the state lock.
        pinned: Option<Pinned>,
    },
    ActorCall {
        host: Rank,
        actor: ActorId,
        name: String,
        /// The actor's handle count, held while the call is in flight
        /// (unnamed actors), so the actor outlives the calls made to it.
        handles: Option<ObjectId>,
        /// What it takes to send the call again (`max_task_retries`).
        retry: Option<Box<CallRetry>>,
    },
}

/// What a caller keeps to send an actor call again when the actor's rank
/// dies (`max_task_retries`). Dropped outside the state lock (`pinned`
/// unpins through it).
#[derive(Debug)]
struct CallRetry {
    address: ActorAddress,
    method: u64,
    args: Vec<u8>,
    /// Keeps the objects the arguments reference alive while the call may
    /// be sent again (the dead rank's registrations are gone).
    pinned: Pinned,
    retries_left: u32,
}

/// An actor call taken out of flight because its host died.
type LostCall = (
    ObjectId,
    ActorId,
    String,
    Option<ObjectId>,
    Option<Box<CallRetry>>,
);

/// An answer awaited by a blocked caller.
#[derive(Debug)]
enum Reply {
    Waiting(Rank),
    Ack(Option<String>),
    Name(Option<ActorAddress>),
    Stats(RankStats),
    /// The creator's answer to `ActorLocate`.
    Located(Option<Rank>),
    /// The head's answer about a placement group.
    Group(GroupAnswer),
    Failed,
}

#[derive(Debug)]
struct State {
    refs: RefTable,
    in_flight: IdMap<ObjectId, InFlight>,
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
    dead_actors: HashMap<ActorId, String>,
    /// (creator side) restartable actors this rank created.
    created_actors: HashMap<ActorId, CreatedActor>,
    /// Where actors moved after a restart (overrides the handle's host).
    actor_hosts: HashMap<ActorId, Rank>,
    /// (creator side) where this rank's scheduler placed the actors it
    /// created and that are not stopped yet (counted in its placement).
    placed_actors: HashMap<ActorId, Rank>,
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

/// Serialises as `RtMsg::Submit(spec)` (a newtype variant, index 0)
/// without owning the spec; a test checks the bytes are the same.
struct SubmitRef<'a>(&'a TaskSpec);

impl Serialize for SubmitRef<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("RtMsg", 0, "Submit", self.0)
    }
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
        let guard = self
            .condvar
            .wait_timeout(guard, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        guard
    }
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
    /// How long a waiting caller drives progress itself before sleeping.
    spin: Duration,
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
    tasks_executed: AtomicU64,
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
    /// Builds the runtime of this rank over a connected endpoint and starts
    /// its threads (progress, executor, monitor).
    pub(crate) fn start(
        endpoint: Endpoint,
        mode: Mode,
        ranks: Vec<RankInfo>,
        job_id: String,
        arena: Option<Arena>,
        config: &RuntimeConfig,
    ) -> Result<Arc<Self>> {
        let rank = endpoint.rank();
        let size = endpoint.size();
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
        let inner = Arc::new(Inner {
            store: ValueStore::new(endpoint.clone(), nodes, arena, config.pull_chunk_bytes),
            endpoint,
            rank,
            size,
            mode,
            ranks,
            job_id,
            state: Mutex::new(State {
                refs: RefTable::new(rank),
                in_flight: IdMap::default(),
                remote_values: IdMap::default(),
                remote_copies: HashMap::new(),
                value_requests: HashMap::new(),
                value_waiters: HashMap::new(),
                replies: HashMap::new(),
                dead: HashSet::new(),
                dead_actors: HashMap::new(),
                created_actors: HashMap::new(),
                actor_hosts: HashMap::new(),
                placed_actors: HashMap::new(),
            }),
            changed: Changed::default(),
            scheduler: Mutex::new(Scheduler::new(slots, rank as usize + 1)),
            executor: Executor::new(cpus),
            actors: ActorHost::default(),
            next_object: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            shutdown_requested: (Mutex::new(false), Condvar::new()),
            inline_max,
            spin: config.wait_spin,
            wakers: Mutex::new(HashMap::new()),
            waker_entries: AtomicUsize::new(0),
            names: Mutex::new(HashMap::new()),
            groups: GroupRuntime::new(rank, hosts),
            tasks_executed: AtomicU64::new(0),
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
        inner.endpoint.spawn_progress_thread();
        inner
            .executor
            .start(Arc::downgrade(&inner), cpus.ceil() as usize);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("lumen-monitor".into())
            .spawn(move || monitor(weak))
            .map_err(|e| runtime_error(RuntimeError::Cluster(format!("no monitor thread: {e}"))))?;
        Ok(inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a state change: first drives the transport from this
    /// thread until `spin_until` (a reply then runs its handler here instead
    /// of waking a sleeping thread), then sleeps on the condition variable
    /// for `slice`. The spin is off by default (`LUMEN_RT_SPIN_US`): on the
    /// 2-core test machine, with 3 processes, spinning 50 us doubled the
    /// sync task latency (89 -> 175 us) by taking the core the worker needed.
    /// An idle poll yields the core rather than pausing: `perf sched` showed
    /// the threads of a round trip queued on one core behind a thread that
    /// spins without yielding, each hop then waiting out the whole spin.
    fn pause<'a>(
        &'a self,
        s: MutexGuard<'a, State>,
        spin_until: Instant,
        slice: Duration,
    ) -> MutexGuard<'a, State> {
        if Instant::now() < spin_until {
            drop(s);
            if let Ok(false) = self.endpoint.progress() {
                std::thread::yield_now();
            }
            return self.lock();
        }
        self.changed.wait_timeout(s, slice)
    }

    fn new_object(&self) -> ObjectId {
        ObjectId {
            owner: self.rank,
            seq: self.next_object.fetch_add(1, Ordering::Relaxed),
        }
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

    fn dispatch(self: &Arc<Self>, src: Rank, message: RtMsg) {
        match message {
            RtMsg::Submit(spec) => {
                self.hold_all(&spec.refs);
                if let Err(spec) = self.executor.push(spec, src) {
                    self.fail_removed(*spec);
                }
            }
            RtMsg::Done {
                object,
                outcome,
                refs,
            } => self.on_done(object, outcome, refs),
            RtMsg::Cancel { object } => {
                if let Some(spec) = self.executor.remove(object) {
                    let failure = TaskError {
                        function: spec.name.clone(),
                        rank: self.rank,
                        kind: TaskErrorKind::Cancelled,
                        message: "cancelled before it started".into(),
                    };
                    self.send_or_log(
                        object.owner,
                        &RtMsg::Done {
                            object,
                            outcome: Outcome::Failed(failure),
                            refs: Vec::new(),
                        },
                    );
                    self.release_all(&spec.refs);
                }
            }
            RtMsg::ActorCreate {
                address,
                args,
                refs,
                placement_group,
            } => {
                self.hold_all(&refs);
                let id = address.id;
                self.actors.create(self, address, args, refs);
                if let Some(group) = placement_group {
                    self.actor_in_group(group, id);
                }
            }
            RtMsg::ActorCall {
                actor,
                method,
                name,
                object,
                args,
                refs,
            } => {
                self.hold_all(&refs);
                self.actors
                    .call(self, actor, method, name, object, args, refs);
            }
            RtMsg::ActorKill { actor } => {
                // Dropped after the lock: the record's pins unpin (lock again).
                let _record = {
                    let mut s = self.lock();
                    s.dead_actors.insert(actor, "killed".to_string());
                    s.created_actors.remove(&actor)
                };
                self.forget_placement(actor);
                self.actors.kill(self, actor);
            }
            RtMsg::ActorRelease { actor } => self.actors.release(self, actor),
            RtMsg::ActorLocate { actor, request } => {
                let host = self
                    .lock()
                    .created_actors
                    .get(&actor)
                    .map(|a| a.address.host);
                self.send_or_log(src, &RtMsg::ActorLocation { request, host });
            }
            RtMsg::ActorLocation { request, host } => self.answer(request, Reply::Located(host)),
            RtMsg::AddBorrower {
                object,
                borrower,
                count,
                request,
            } => {
                let result = self.lock().refs.add_borrower(object, borrower, count);
                if let Err(e) = &result {
                    tracing::error!(rank = self.rank, "{e}");
                }
                if let Some(request) = request {
                    let error = result.err().map(|e| e.to_string());
                    self.send_or_log(src, &RtMsg::Ack { request, error });
                }
            }
            RtMsg::RemoveBorrower {
                object,
                borrower,
                count,
            } => {
                let effects = self.lock().refs.remove_borrower(object, borrower, count);
                self.apply(effects);
            }
            RtMsg::Ack { request, error } => self.answer(request, Reply::Ack(error)),
            RtMsg::GetValue { object, request } => {
                let reply = {
                    let mut s = self.lock();
                    match s.refs.state(object) {
                        Some(ObjectState::Ready(outcome)) => {
                            Some((outcome.clone(), s.refs.copies(object)))
                        }
                        Some(ObjectState::Pending) => {
                            s.value_waiters
                                .entry(object)
                                .or_default()
                                .push((src, request));
                            None
                        }
                        None => Some((
                            Outcome::Failed(TaskError {
                                function: String::new(),
                                rank: self.rank,
                                kind: TaskErrorKind::OwnerDied,
                                message: format!("{object} was already freed by its owner"),
                            }),
                            Vec::new(),
                        )),
                    }
                };
                if let Some((outcome, copies)) = reply {
                    self.send_or_log(
                        src,
                        &RtMsg::Value {
                            request,
                            outcome,
                            copies,
                        },
                    );
                }
            }
            RtMsg::Value {
                request,
                outcome,
                copies,
            } => {
                let mut s = self.lock();
                let object = s.value_requests.remove(&request);
                if let Some(object) = object {
                    if let Some(slot) = s.remote_values.get_mut(&object) {
                        *slot = Some(outcome);
                        s.remote_copies.insert(object, copies);
                    }
                }
                drop(s);
                self.changed.notify_all();
                if let Some(object) = object {
                    self.wake(object);
                }
            }
            RtMsg::FreeCopy { rank, key, arena } => self.store.release(rank, key, arena),
            RtMsg::AddCopy {
                object,
                holder,
                rank,
                key,
            } => {
                let added = self.lock().refs.add_copy(object, holder);
                if let Err(e) = added {
                    tracing::debug!(rank = self.rank, "{e}; deleting it");
                    self.send_or_log(
                        src,
                        &RtMsg::FreeCopy {
                            rank,
                            key,
                            arena: true,
                        },
                    );
                }
            }
            RtMsg::NameRegister {
                name,
                address,
                request,
            } => {
                let error = {
                    let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
                    match names.entry(name) {
                        std::collections::hash_map::Entry::Occupied(taken) => {
                            Some(format!("an actor named {:?} already exists", taken.key()))
                        }
                        std::collections::hash_map::Entry::Vacant(free) => {
                            free.insert(address);
                            None
                        }
                    }
                };
                self.send_or_log(src, &RtMsg::Ack { request, error });
            }
            RtMsg::NameRemove { name } => {
                self.names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            }
            RtMsg::NameLookup { name, request } => {
                let address = self
                    .names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .cloned();
                self.send_or_log(src, &RtMsg::NameReply { request, address });
            }
            RtMsg::NameReply { request, address } => self.answer(request, Reply::Name(address)),
            RtMsg::Stats { request } => {
                let stats = self.local_stats();
                self.send_or_log(src, &RtMsg::StatsReply { request, stats });
            }
            RtMsg::StatsReply { request, stats } => self.answer(request, Reply::Stats(stats)),
            RtMsg::Shutdown => {
                let (flag, cv) = &self.shutdown_requested;
                *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cv.notify_all();
            }
            message @ (RtMsg::PgCreate { .. }
            | RtMsg::PgWait { .. }
            | RtMsg::PgRemove { .. }
            | RtMsg::PgAnswer { .. }
            | RtMsg::BundleReserve { .. }
            | RtMsg::BundleReserved { .. }
            | RtMsg::BundleRelease { .. }) => self.on_group_message(src, message),
        }
    }

    /// Sends a placement-group request (`message` is given its request
    /// id) to `to`, the head, and waits for the answer.
    pub(crate) fn ask_group(
        self: &Arc<Self>,
        to: Rank,
        message: impl FnOnce(u64) -> RtMsg,
        timeout: Option<Duration>,
    ) -> Result<GroupAnswer> {
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(to));
        self.send(to, &message(request))?;
        match self.await_reply(request, timeout)? {
            Reply::Group(answer) => Ok(answer),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank: to,
                what: "asking the head about a placement group".into(),
            })),
        }
    }

    pub(crate) fn answer_group(&self, request: u64, answer: GroupAnswer) {
        self.answer(request, Reply::Group(answer));
    }

    /// A task sent to a placement group that was removed here fails.
    pub(crate) fn fail_removed(self: &Arc<Self>, spec: TaskSpec) {
        let group = spec.options.placement_group.map(|p| p.group);
        let failure = TaskFailure::new(
            TaskErrorKind::PlacementGroupRemoved,
            match group {
                Some(group) => format!("{group} was removed before the task started"),
                None => "its placement group was removed before it started".to_string(),
            },
        );
        self.finish(spec.object, &spec.name, Err(failure));
        self.release_all(&spec.refs);
    }

    /// (host) Kills an actor hosted here because its placement group was
    /// removed; its creator learns it too (no restart).
    pub(crate) fn kill_hosted_actor(self: &Arc<Self>, actor: ActorId) {
        self.send_or_log(self.rank, &RtMsg::ActorKill { actor });
        if actor.creator != self.rank && !self.is_dead(actor.creator) {
            self.send_or_log(actor.creator, &RtMsg::ActorKill { actor });
        }
    }

    /// Tasks this rank has outstanding on `rank`, and actors it placed there.
    fn load_on(&self, rank: Rank) -> (u32, u32) {
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .load(rank)
    }

    fn answer(&self, request: u64, reply: Reply) {
        let mut s = self.lock();
        if let Some(slot) = s.replies.get_mut(&request) {
            *slot = reply;
        }
        drop(s);
        self.changed.notify_all();
    }

    fn hold_all(&self, refs: &[ObjectId]) {
        if refs.is_empty() {
            return;
        }
        let mut s = self.lock();
        for &id in refs {
            s.refs.hold(id);
        }
    }

    pub(crate) fn release_all(self: &Arc<Self>, refs: &[ObjectId]) {
        if refs.is_empty() {
            return;
        }
        let io = {
            let mut s = self.lock();
            let effects: Vec<Effect> = refs.iter().flat_map(|&id| s.refs.release(id)).collect();
            Self::settle(&mut s, effects)
        };
        self.carry_out(io);
    }

    /// Carries out the reference table's effects (and those they cause).
    fn apply(self: &Arc<Self>, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let io = Self::settle(&mut self.lock(), effects);
        self.carry_out(io);
    }

    /// The table side of `effects` and of those they cause, done under the
    /// state lock the caller holds (so that dropping a reference takes the
    /// lock once); returns what is left to do after the lock: messages and
    /// store releases ([`Inner::carry_out`]).
    fn settle(s: &mut State, effects: Vec<Effect>) -> Vec<Effect> {
        let mut queue = effects;
        let mut io = Vec::new();
        while let Some(effect) = queue.pop() {
            match effect {
                Effect::Free {
                    object,
                    outcome,
                    contained,
                    copies,
                } => {
                    s.value_waiters.remove(&object);
                    for &id in &contained {
                        queue.extend(s.refs.release(id));
                    }
                    if let Some(Outcome::Stored { .. }) = outcome {
                        io.push(Effect::Free {
                            object,
                            outcome,
                            contained: Vec::new(),
                            copies,
                        });
                    }
                }
                Effect::RemoveBorrower { object, count } => {
                    s.remote_values.remove(&object);
                    s.remote_copies.remove(&object);
                    if !s.dead.contains(&object.owner) {
                        io.push(Effect::RemoveBorrower { object, count });
                    }
                }
                Effect::ActorUnreferenced { actor } => {
                    io.push(Effect::ActorUnreferenced { actor });
                }
            }
        }
        io
    }

    /// The part of settled effects that runs without the state lock.
    fn carry_out(self: &Arc<Self>, io: Vec<Effect>) {
        for effect in io {
            match effect {
                Effect::Free {
                    outcome:
                        Some(Outcome::Stored {
                            rank, key, arena, ..
                        }),
                    copies,
                    ..
                } => self.delete_copies(rank, key, arena, &copies),
                Effect::Free { .. } => {}
                Effect::ActorUnreferenced { actor } => self.retire_actor(actor),
                Effect::RemoveBorrower { object, count } => self.send_or_log(
                    object.owner,
                    &RtMsg::RemoveBorrower {
                        object,
                        borrower: self.rank,
                        count,
                    },
                ),
            }
        }
    }

    /// Deletes every copy of a freed value stored by `rank` under `key`:
    /// the primary and the secondary copies pulled by `copies`, one release
    /// per node (any rank of a node may release what its arena holds, also
    /// when the rank that stored or pulled it has died).
    fn delete_copies(self: &Arc<Self>, rank: Rank, key: u64, arena: bool, copies: &[Rank]) {
        if !arena {
            if rank == self.rank {
                self.store.release(rank, key, false);
            } else if !self.is_dead(rank) {
                self.send_or_log(
                    rank,
                    &RtMsg::FreeCopy {
                        rank,
                        key,
                        arena: false,
                    },
                );
            }
            return;
        }
        let mut nodes: Vec<(u32, Rank)> = Vec::new();
        for &holder in std::iter::once(&rank).chain(copies) {
            let Some(node) = self.node_of(holder) else {
                continue;
            };
            if !nodes.iter().any(|&(n, _)| n == node) {
                nodes.push((node, holder));
            }
        }
        for (node, holder) in nodes {
            if self.node_of(self.rank) == Some(node) {
                self.store.release(rank, key, true);
                continue;
            }
            match self.live_rank_on(node, holder) {
                Some(to) => self.send_or_log(
                    to,
                    &RtMsg::FreeCopy {
                        rank,
                        key,
                        arena: true,
                    },
                ),
                None => tracing::debug!(
                    rank = self.rank,
                    "no live rank on node {node} to delete a copy of value {key} of rank {rank}"
                ),
            }
        }
    }

    fn node_of(&self, rank: Rank) -> Option<u32> {
        self.ranks.get(rank as usize).map(|r| r.node)
    }

    /// `preferred` if alive, else some live rank of `node`.
    fn live_rank_on(&self, node: u32, preferred: Rank) -> Option<Rank> {
        let s = self.lock();
        if !s.dead.contains(&preferred) && self.node_of(preferred) == Some(node) {
            return Some(preferred);
        }
        self.ranks
            .iter()
            .find(|r| r.node == node && !s.dead.contains(&r.rank))
            .map(|r| r.rank)
    }

    /// Where to pull an arena value stored by `rank` from: one live rank
    /// per other node holding a copy (the storing rank's node and those of
    /// `copies`), starting at a place that depends on this rank so that
    /// many readers of one object spread over its copies.
    fn pull_sources(&self, rank: Rank, copies: &[Rank]) -> Vec<Rank> {
        let mine = self.node_of(self.rank);
        let mut sources: Vec<Rank> = Vec::new();
        let mut nodes: Vec<u32> = Vec::new();
        for &holder in std::iter::once(&rank).chain(copies) {
            let Some(node) = self.node_of(holder) else {
                continue;
            };
            if Some(node) == mine || nodes.contains(&node) {
                continue;
            }
            nodes.push(node);
            if let Some(live) = self.live_rank_on(node, holder) {
                sources.push(live);
            }
        }
        if !sources.is_empty() {
            let start = self.rank as usize % sources.len();
            sources.rotate_left(start);
        }
        sources
    }

    /// Tells the owner of `object` that this rank pulled a copy of its
    /// value (stored by `rank` under `key`) into this node's arena.
    fn report_copy(self: &Arc<Self>, object: ObjectId, rank: Rank, key: u64) {
        if object.owner == self.rank {
            let added = self.lock().refs.add_copy(object, self.rank);
            if added.is_err() {
                self.store.release(rank, key, true);
            }
            return;
        }
        if self.is_dead(object.owner) {
            return;
        }
        self.send_or_log(
            object.owner,
            &RtMsg::AddCopy {
                object,
                holder: self.rank,
                rank,
                key,
            },
        );
    }

    /// (Creator) no handle of `actor` is left and none of its calls is in
    /// flight: it will never be restarted, and its host stops it once the
    /// calls queued there have run.
    fn retire_actor(self: &Arc<Self>, actor: ActorId) {
        // The record (constructor arguments, pinned) is dropped after the lock.
        let (host, _record) = {
            let mut s = self.lock();
            let record = s.created_actors.remove(&actor);
            let moved = s.actor_hosts.remove(&actor);
            let host = s.placed_actors.get(&actor).copied().or(moved);
            let stopped = s.dead_actors.contains_key(&actor);
            let host = host.filter(|h| !stopped && !s.dead.contains(h));
            (host, record)
        };
        self.forget_placement(actor);
        if let Some(host) = host {
            tracing::debug!(
                rank = self.rank,
                "{actor} on rank {host} has no handles left"
            );
            self.send_or_log(host, &RtMsg::ActorRelease { actor });
        }
    }

    /// (Creator) `actor` no longer counts in this rank's placement of actors.
    fn forget_placement(&self, actor: ActorId) {
        let placed = self.lock().placed_actors.remove(&actor);
        if let Some(rank) = placed {
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .actor_gone(rank);
        }
    }

    pub(crate) fn handle_added(&self, object: ObjectId) {
        self.lock().refs.handle_added(object);
    }

    pub(crate) fn handle_dropped(self: &Arc<Self>, object: ObjectId) {
        let io = {
            let mut s = self.lock();
            let effects = self.drop_handle_locked(&mut s, object);
            if effects.is_empty() {
                return;
            }
            Self::settle(&mut s, effects)
        };
        self.carry_out(io);
    }

    /// The table side of dropping a handle of `object`; the caller settles
    /// the effects.
    fn drop_handle_locked(&self, s: &mut State, object: ObjectId) -> Vec<Effect> {
        let effects = s.refs.handle_dropped(object);
        if object.owner != self.rank && !s.refs.borrows(object) {
            s.remote_values.remove(&object);
            s.remote_copies.remove(&object);
        }
        effects
    }

    /// Runs `wait` with this thread's executor slots lent out.
    fn blocking<R>(self: &Arc<Self>, wait: impl FnOnce() -> R) -> R {
        let token = self.executor.blocking(self);
        let result = wait();
        self.executor.unblocked(token);
        result
    }

    /// Registers `to` as a borrower of each of `refs` before a message
    /// carrying them leaves (see `refs`): locally for ours, with an
    /// acknowledged request to the owner for borrowed ones.
    fn register(self: &Arc<Self>, refs: &[ObjectId], to: Rank) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let mut requests = Vec::new();
        {
            let mut s = self.lock();
            for &id in refs {
                if id.owner == self.rank {
                    s.refs.add_borrower(id, to, 1).map_err(|e| {
                        runtime_error(RuntimeError::Codec {
                            what: id.to_string(),
                            detail: e.to_string(),
                        })
                    })?;
                } else {
                    if s.dead.contains(&id.owner) {
                        return Err(runtime_error(RuntimeError::OwnerDied { object: id }));
                    }
                    let request = self.new_request();
                    s.replies.insert(request, Reply::Waiting(id.owner));
                    requests.push((id, request));
                }
            }
        }
        for &(id, request) in &requests {
            let message = RtMsg::AddBorrower {
                object: id,
                borrower: to,
                count: 1,
                request: Some(request),
            };
            if let Err(e) = self.send(id.owner, &message) {
                tracing::debug!("registration with rank {} failed: {e}", id.owner);
            }
        }
        for (id, request) in requests {
            match self.await_reply(request, None)? {
                Reply::Ack(None) => {}
                Reply::Ack(Some(error)) => {
                    return Err(runtime_error(RuntimeError::Codec {
                        what: id.to_string(),
                        detail: error,
                    }))
                }
                _ => return Err(runtime_error(RuntimeError::OwnerDied { object: id })),
            }
        }
        Ok(())
    }

    /// Waits for the answer to `request` (registered in `replies`).
    fn await_reply(self: &Arc<Self>, request: u64, timeout: Option<Duration>) -> Result<Reply> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.blocking(|| {
            let spin_until = Instant::now() + self.spin;
            let mut s = self.lock();
            loop {
                match s.replies.get(&request) {
                    Some(Reply::Waiting(_)) => {}
                    Some(_) => {
                        return s
                            .replies
                            .remove(&request)
                            .ok_or(runtime_error(RuntimeError::ShuttingDown));
                    }
                    None => return Err(runtime_error(RuntimeError::ShuttingDown)),
                }
                let slice = match deadline {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            s.replies.remove(&request);
                            return Err(runtime_error(RuntimeError::Timeout {
                                what: format!("request {request}"),
                                waited: timeout.unwrap_or_default(),
                            }));
                        }
                        left.min(WAIT_SLICE)
                    }
                    None => WAIT_SLICE,
                };
                s = self.pause(s, spin_until, slice);
            }
        })
    }

    /// Submits a task of function `F` (see `#[lumen::remote]`).
    pub(crate) fn submit(
        self: &Arc<Self>,
        function: u64,
        name: &str,
        args: &impl Serialize,
        mut options: TaskOptions,
    ) -> Result<ObjectId> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(runtime_error(RuntimeError::ShuttingDown));
        }
        let (encoded, pinned) = collect_refs(|| bincode::serialize(args));
        let refs = pinned.ids();
        let args = encoded.map_err(|e| {
            runtime_error(RuntimeError::Codec {
                what: format!("the arguments of {name}"),
                detail: e.to_string(),
            })
        })?;
        if let Some(scheduling) = options.placement_group {
            let (index, host) = self.choose_bundle(
                name,
                scheduling,
                &options.resources,
                options.rank,
                options.node,
                |r| self.load_on(r).0,
            )?;
            options.placement_group = Some(PlacementGroupScheduling {
                bundle_index: Some(index),
                ..scheduling
            });
            // A retry after this rank dies finds it dead and fails.
            options.rank = Some(host);
        }
        let data_at = self.largest_argument(&refs);
        let target = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place_task(&Request {
                resources: Some(&options.resources),
                node: options.node,
                rank: options.rank,
                data_at,
            })
            .map_err(|e| {
                runtime_error(RuntimeError::Infeasible {
                    what: name.to_string(),
                    detail: e.0,
                })
            })?;
        self.register(&refs, target)?;
        let object = self.new_object();
        let spec = TaskSpec {
            object,
            function,
            name: name.to_string(),
            args,
            refs,
            options,
            attempt: 1,
        };
        let pinned = (spec.options.max_retries > 0 && !spec.refs.is_empty()).then_some(pinned);
        // Encoded from a borrow: the spec itself moves into `in_flight`
        // (kept for retries) instead of being cloned.
        let message = if target == self.rank {
            Err(RtMsg::Submit(spec.clone()))
        } else {
            Ok(encode(&SubmitRef(&spec)))
        };
        {
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            s.in_flight.insert(
                object,
                InFlight::Task {
                    spec,
                    rank: target,
                    pinned,
                },
            );
        }
        let sent = match message {
            Ok(bytes) => self.endpoint.send(target, RUNTIME_TAG, &bytes),
            Err(local) => self.send(target, &local),
        };
        if let Err(e) = sent {
            // The monitor retries it once it sees the rank dead.
            tracing::debug!("submitting {name} to rank {target} failed: {e}");
        }
        Ok(object)
    }

    /// The rank holding the largest stored value among `refs` we own.
    fn largest_argument(&self, refs: &[ObjectId]) -> Option<Rank> {
        if refs.is_empty() {
            return None;
        }
        let s = self.lock();
        refs.iter()
            .filter_map(|&id| match s.refs.state(id) {
                Some(ObjectState::Ready(Outcome::Stored { rank, len, .. })) => Some((*len, *rank)),
                _ => None,
            })
            .max()
            .map(|(_, rank)| rank)
    }

    /// Stores a value owned by this rank (`put`). References inside the
    /// value are registered for this rank and held while the object lives.
    pub(crate) fn put_bytes(
        self: &Arc<Self>,
        bytes: &[u8],
        refs: Vec<ObjectId>,
    ) -> Result<ObjectId> {
        self.register(&refs, self.rank)?;
        let outcome = if bytes.len() > self.inline_max {
            self.store.store(bytes)
        } else {
            Outcome::Inline(bytes.to_vec())
        };
        let object = self.new_object();
        let effects = {
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            s.refs.complete(object, outcome, refs)
        };
        self.apply(effects);
        Ok(object)
    }

    fn on_done(self: &Arc<Self>, object: ObjectId, outcome: Outcome, refs: Vec<ObjectId>) {
        // The entry is dropped after the lock (a retry record unpins). One
        // lock for the table, the borrowers waiting for the value and the
        // actor handle count an actor call held while in flight.
        let (entry, io, waiters) = {
            let mut s = self.lock();
            let entry = s.in_flight.remove(&object);
            let waiters = s.value_waiters.remove(&object).unwrap_or_default();
            let copy = (!waiters.is_empty()).then(|| outcome.clone());
            let mut effects = s.refs.complete(object, outcome, refs);
            if let Some(InFlight::ActorCall {
                handles: Some(handles),
                ..
            }) = &entry
            {
                effects.extend(self.drop_handle_locked(&mut s, *handles));
            }
            let io = Self::settle(&mut s, effects);
            (entry, io, copy.map(|outcome| (waiters, outcome)))
        };
        if let Some(InFlight::Task { rank, .. }) = &entry {
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finished(*rank);
        }
        self.changed.notify_all();
        self.wake(object);
        if let Some((waiters, outcome)) = waiters {
            for (rank, request) in waiters {
                self.send_or_log(
                    rank,
                    &RtMsg::Value {
                        request,
                        outcome: outcome.clone(),
                        copies: Vec::new(),
                    },
                );
            }
        }
        self.carry_out(io);
        drop(entry);
    }

    /// Runs a task on this (executor) thread and reports its outcome.
    pub(crate) fn run_task(self: &Arc<Self>, spec: TaskSpec, _from: Rank) {
        self.tasks_executed.fetch_add(1, Ordering::Relaxed);
        let result = match registry::function(spec.function) {
            None => Err(TaskFailure::new(
                TaskErrorKind::UnknownFunction,
                format!(
                    "rank {} has no remote function with id {:#018x} ({}); do all ranks run the same binary?",
                    self.rank, spec.function, spec.name
                ),
            )),
            Some(entry) => {
                let (result, pinned) = collect_refs(|| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        (entry.invoke)(&spec.args)
                    }))
                    .unwrap_or_else(|payload| {
                        Err(TaskFailure::new(TaskErrorKind::Panic, panic_message(&*payload)))
                    })
                });
                result.map(|bytes| (bytes, pinned))
            }
        };
        self.finish(spec.object, &spec.name, result);
        self.release_all(&spec.refs);
    }

    /// Reports a finished task or actor call to the owner of `object`.
    pub(crate) fn finish(
        self: &Arc<Self>,
        object: ObjectId,
        function: &str,
        result: std::result::Result<(Vec<u8>, Pinned), TaskFailure>,
    ) {
        let failure = |failure: TaskFailure| {
            Outcome::Failed(TaskError {
                function: function.to_string(),
                rank: self.rank,
                kind: failure.kind,
                message: failure.message,
            })
        };
        // `pinned` keeps the result's references alive until the owner of
        // the task is registered for them and the reply is sent.
        let (outcome, refs, _pinned) = match result {
            Ok((bytes, pinned)) => {
                let refs = pinned.ids();
                match self.register(&refs, object.owner) {
                    Ok(()) => {
                        let outcome = if bytes.len() > self.inline_max {
                            self.store.store(&bytes)
                        } else {
                            Outcome::Inline(bytes)
                        };
                        (outcome, refs, Some(pinned))
                    }
                    Err(e) => (
                        failure(TaskFailure::new(
                            TaskErrorKind::DependencyFailed,
                            e.to_string(),
                        )),
                        Vec::new(),
                        Some(pinned),
                    ),
                }
            }
            Err(e) => (failure(e), Vec::new(), None),
        };
        self.send_or_log(
            object.owner,
            &RtMsg::Done {
                object,
                outcome,
                refs,
            },
        );
    }

    /// The value of `object`, waiting for it (see `ObjectRef::get`).
    pub(crate) fn fetch(
        self: &Arc<Self>,
        object: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Bytes> {
        let outcome = self.wait_outcome(object, timeout)?;
        match outcome {
            Outcome::Inline(bytes) => Ok(Bytes::Inline(bytes)),
            Outcome::Stored {
                rank,
                key,
                len,
                arena,
            } => {
                let sources = if arena {
                    let s = self.lock();
                    let copies = if object.owner == self.rank {
                        s.refs.copies(object)
                    } else {
                        s.remote_copies.get(&object).cloned().unwrap_or_default()
                    };
                    drop(s);
                    self.pull_sources(rank, &copies)
                } else {
                    Vec::new()
                };
                let fetched = self.blocking(|| self.store.fetch(rank, key, len, arena, &sources));
                if let Ok((_, true)) = &fetched {
                    self.report_copy(object, rank, key);
                }
                fetched.map(|(bytes, _)| bytes).map_err(|e| match e {
                    FetchError::Transport(
                        TransportError::PeerDied { .. } | TransportError::PeerClosed { .. },
                    ) => runtime_error(RuntimeError::RankDied {
                        rank,
                        what: format!("fetching {object}, whose only copy was there,"),
                    }),
                    FetchError::Transport(other) => LumenError::Transport(other),
                    other => runtime_error(RuntimeError::ObjectLost {
                        object,
                        detail: other.to_string(),
                    }),
                })
            }
            Outcome::Failed(error) => Err(runtime_error(RuntimeError::Task(error))),
        }
    }

    /// Asks the owner for a borrowed object's value unless already asked.
    /// Returns the message to send (after the lock is released).
    fn request_value(&self, s: &mut State, object: ObjectId) -> Option<RtMsg> {
        if s.remote_values.contains_key(&object) {
            return None;
        }
        if s.dead.contains(&object.owner) {
            s.remote_values.insert(object, Some(owner_died(object)));
            return None;
        }
        let request = self.new_request();
        s.remote_values.insert(object, None);
        s.value_requests.insert(request, object);
        Some(RtMsg::GetValue { object, request })
    }

    fn ready_outcome(&self, s: &mut State, object: ObjectId) -> (Option<Outcome>, Option<RtMsg>) {
        if object.owner == self.rank {
            return match s.refs.state(object) {
                Some(ObjectState::Ready(outcome)) => (Some(outcome.clone()), None),
                Some(ObjectState::Pending) => (None, None),
                None => (
                    Some(Outcome::Failed(TaskError {
                        function: String::new(),
                        rank: self.rank,
                        kind: TaskErrorKind::OwnerDied,
                        message: format!(
                            "{object} is not (or no longer) owned by rank {}",
                            self.rank
                        ),
                    })),
                    None,
                ),
            };
        }
        let send = self.request_value(s, object);
        (s.remote_values.get(&object).cloned().flatten(), send)
    }

    fn wait_outcome(
        self: &Arc<Self>,
        object: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Outcome> {
        // Ready already (a batch's later results): no clock, no lending of
        // the executor's slots.
        let (outcome, send) = self.ready_outcome(&mut self.lock(), object);
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        if let Some(message) = send {
            self.send_or_log(object.owner, &message);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.blocking(|| {
            let spin_until = Instant::now() + self.spin;
            let mut s = self.lock();
            loop {
                let (outcome, send) = self.ready_outcome(&mut s, object);
                if let Some(outcome) = outcome {
                    return Ok(outcome);
                }
                if let Some(message) = send {
                    drop(s);
                    self.send_or_log(object.owner, &message);
                    s = self.lock();
                    continue;
                }
                let slice = match deadline {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(runtime_error(RuntimeError::Timeout {
                                what: object.to_string(),
                                waited: timeout.unwrap_or_default(),
                            }));
                        }
                        left.min(WAIT_SLICE)
                    }
                    None => WAIT_SLICE,
                };
                s = self.pause(s, spin_until, slice);
            }
        })
    }

    /// Wakes `waker` when `object` is ready (or something failed).
    pub(crate) fn register_waker(&self, object: ObjectId, waker: &std::task::Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        let list = wakers.entry(object).or_default();
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
        // Published before the future re-checks readiness (under the state
        // lock), so the `wake` of a completion it misses sees the entry.
        self.waker_entries.store(wakers.len(), Ordering::SeqCst);
    }

    fn wake(&self, object: ObjectId) {
        if self.waker_entries.load(Ordering::SeqCst) == 0 {
            return;
        }
        let woken = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            let woken = wakers.remove(&object);
            self.waker_entries.store(wakers.len(), Ordering::SeqCst);
            woken
        };
        for waker in woken.into_iter().flatten() {
            waker.wake();
        }
    }

    fn wake_all(&self) {
        let all: Vec<std::task::Waker> = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            let all = wakers.drain().flat_map(|(_, list)| list).collect();
            self.waker_entries.store(0, Ordering::SeqCst);
            all
        };
        for waker in all {
            waker.wake();
        }
    }

    /// Whether `object` is ready, without copying its outcome; for a
    /// borrowed object, also the request to send to its owner if none was.
    fn readiness(&self, s: &mut State, object: ObjectId) -> (bool, Option<RtMsg>) {
        if object.owner == self.rank {
            // A missing entry is ready: `get` reports it as freed.
            return (
                !matches!(s.refs.state(object), Some(ObjectState::Pending)),
                None,
            );
        }
        let send = self.request_value(s, object);
        (matches!(s.remote_values.get(&object), Some(Some(_))), send)
    }

    pub(crate) fn is_ready(self: &Arc<Self>, object: ObjectId) -> bool {
        let (ready, send) = {
            let mut s = self.lock();
            self.readiness(&mut s, object)
        };
        if let Some(message) = send {
            self.send_or_log(object.owner, &message);
        }
        ready
    }

    /// Waits until `want` of the `count` objects named by `id` (by index)
    /// are ready or `deadline` passes; returns the indices of the first
    /// ready ones in index order, at most `want`. Each scan takes the state
    /// lock once, copies no outcome and stops at the `want`-th ready object.
    pub(crate) fn wait_ready(
        self: &Arc<Self>,
        count: usize,
        id: impl Fn(usize) -> ObjectId,
        want: usize,
        deadline: Option<Instant>,
    ) -> Vec<usize> {
        self.blocking(|| {
            let spin_until = Instant::now() + self.spin;
            let mut ready = Vec::with_capacity(want.min(count));
            let mut sends = Vec::new();
            let mut s = self.lock();
            loop {
                ready.clear();
                for index in 0..count {
                    if ready.len() == want {
                        break;
                    }
                    let object = id(index);
                    let (is_ready, send) = self.readiness(&mut s, object);
                    sends.extend(send.map(|m| (object.owner, m)));
                    if is_ready {
                        ready.push(index);
                    }
                }
                if !sends.is_empty() {
                    drop(s);
                    for (to, message) in sends.drain(..) {
                        self.send_or_log(to, &message);
                    }
                    s = self.lock();
                    continue;
                }
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if ready.len() >= want || left.is_some_and(|l| l.is_zero()) {
                    return ready;
                }
                let slice = left.map_or(WAIT_SLICE, |l| l.min(WAIT_SLICE));
                s = self.pause(s, spin_until, slice);
            }
        })
    }

    pub(crate) fn cancel(self: &Arc<Self>, object: ObjectId) -> Result<()> {
        let target = match self.lock().in_flight.get(&object) {
            Some(InFlight::Task { rank, .. }) => Some(*rank),
            _ => None,
        };
        if let Some(rank) = target {
            self.send_or_log(rank, &RtMsg::Cancel { object });
        }
        Ok(())
    }

    /// Creates an actor (see `#[lumen::actor]`).
    pub(crate) fn create_actor(
        self: &Arc<Self>,
        class_id: u64,
        class_name: &str,
        args: &impl Serialize,
        mut options: ActorOptions,
    ) -> Result<RawActorHandle> {
        let (encoded, pinned) = collect_refs(|| bincode::serialize(args));
        let args = encoded.map_err(|e| {
            runtime_error(RuntimeError::Codec {
                what: format!("the arguments of {class_name}::new"),
                detail: e.to_string(),
            })
        })?;
        if let Some(scheduling) = options.placement_group {
            let (index, host) = self.choose_bundle(
                class_name,
                scheduling,
                &options.resources,
                options.rank,
                options.node,
                |r| self.load_on(r).1,
            )?;
            options.placement_group = Some(PlacementGroupScheduling {
                bundle_index: Some(index),
                ..scheduling
            });
            options.rank = Some(host);
        }
        let host = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place_actor(&Request {
                resources: Some(&options.resources),
                node: options.node,
                rank: options.rank,
                data_at: None,
            })
            .map_err(|e| {
                runtime_error(RuntimeError::Infeasible {
                    what: class_name.to_string(),
                    detail: e.0,
                })
            })?;
        let address = ActorAddress {
            id: ActorId {
                creator: self.rank,
                seq: self.new_object().seq,
            },
            host,
            class_id,
            class_name: class_name.to_string(),
            max_task_retries: if options.max_restarts > 0 {
                options.max_task_retries
            } else {
                0
            },
        };
        self.lock().placed_actors.insert(address.id, host);
        let id = address.id;
        self.launch_actor(address, args, pinned, options)
            .inspect_err(|_| self.forget_placement(id))
    }

    /// Registers the name of a placed actor, sends its creation message and
    /// returns its first handle (counted, for an unnamed actor).
    fn launch_actor(
        self: &Arc<Self>,
        address: ActorAddress,
        args: Vec<u8>,
        pinned: Pinned,
        options: ActorOptions,
    ) -> Result<RawActorHandle> {
        let host = address.host;
        let refs = pinned.ids();
        if let Some(name) = &options.name {
            let request = self.new_request();
            self.lock().replies.insert(request, Reply::Waiting(0));
            self.send(
                0,
                &RtMsg::NameRegister {
                    name: name.clone(),
                    address: address.clone(),
                    request,
                },
            )?;
            match self.await_reply(request, None)? {
                Reply::Ack(None) => {}
                Reply::Ack(Some(_)) => {
                    return Err(runtime_error(RuntimeError::NameTaken {
                        name: name.clone(),
                    }))
                }
                _ => {
                    return Err(runtime_error(RuntimeError::RankDied {
                        rank: 0,
                        what: format!("registering actor name {name:?}"),
                    }))
                }
            }
        }
        self.register(&refs, host)?;
        let message = RtMsg::ActorCreate {
            address: address.clone(),
            args: args.clone(),
            refs,
            placement_group: options.placement_group.map(|p| p.group),
        };
        if options.max_restarts > 0 {
            self.lock().created_actors.insert(
                address.id,
                CreatedActor {
                    address: address.clone(),
                    args,
                    pinned,
                    options: options.clone(),
                    restarts_left: options.max_restarts,
                },
            );
        }
        self.send(host, &message)?;
        let handles = match options.name {
            Some(_) => None,
            None => {
                let id = self.lock().refs.create_actor_handles(address.id);
                Some(owned_ref(self, id))
            }
        };
        Ok(RawActorHandle::new(address, options.name, handles))
    }

    /// (Creator) restarts the actors that lived on `rank`, while they have
    /// restarts left; the others are dead for good.
    fn restart_actors(self: &Arc<Self>, rank: Rank) {
        let lost: Vec<ActorId> = self
            .lock()
            .created_actors
            .iter()
            .filter(|(_, a)| a.address.host == rank)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let placed = {
                let s = self.lock();
                let Some(record) = s.created_actors.get(&id) else {
                    continue;
                };
                if record.restarts_left == 0 {
                    None
                } else {
                    let options = record.options.clone();
                    drop(s);
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .place_actor(&Request {
                            resources: Some(&options.resources),
                            node: options.node,
                            // A pinned rank that died cannot host it again.
                            rank: None,
                            data_at: None,
                        })
                        .ok()
                }
            };
            let Some(host) = placed else {
                let _record = {
                    let mut s = self.lock();
                    s.dead_actors.insert(
                        id,
                        format!("its rank {rank} died and it has no restarts left"),
                    );
                    s.created_actors.remove(&id)
                };
                continue;
            };
            let message = {
                let mut s = self.lock();
                let Some(record) = s.created_actors.get_mut(&id) else {
                    // Stopped meanwhile (killed, or no handle left).
                    drop(s);
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .actor_gone(host);
                    continue;
                };
                record.restarts_left -= 1;
                record.address.host = host;
                let refs = record.pinned.ids();
                // Restarted outside its placement group (its bundle's
                // rank is the one that died).
                let message = RtMsg::ActorCreate {
                    address: record.address.clone(),
                    args: record.args.clone(),
                    refs: refs.clone(),
                    placement_group: None,
                };
                s.actor_hosts.insert(id, host);
                s.placed_actors.insert(id, host);
                (message, refs)
            };
            tracing::info!("restarting {id} on rank {host} (its rank {rank} died)");
            if self.register(&message.1, host).is_ok() {
                self.send_or_log(host, &message.0);
            }
        }
    }

    /// Where actor `address` lives now: its handle's host, or, when that
    /// rank died, wherever its creator restarted it.
    fn actor_host(self: &Arc<Self>, address: &ActorAddress) -> Result<Rank> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (host, dead_host) = {
                let s = self.lock();
                let host = s
                    .actor_hosts
                    .get(&address.id)
                    .copied()
                    .unwrap_or(address.host);
                (host, s.dead.contains(&host))
            };
            if !dead_host {
                return Ok(host);
            }
            let creator = address.id.creator;
            let dead = || {
                runtime_error(RuntimeError::ActorDied {
                    actor: address.id,
                    reason: format!("its rank {host} died"),
                })
            };
            let located = if creator == self.rank {
                self.lock()
                    .created_actors
                    .get(&address.id)
                    .map(|a| a.address.host)
            } else if self.is_dead(creator) {
                None
            } else {
                let request = self.new_request();
                self.lock().replies.insert(request, Reply::Waiting(creator));
                self.send(
                    creator,
                    &RtMsg::ActorLocate {
                        actor: address.id,
                        request,
                    },
                )?;
                match self.await_reply(request, None)? {
                    Reply::Located(host) => host,
                    _ => None,
                }
            };
            match located {
                None => {
                    let error = dead();
                    self.lock()
                        .dead_actors
                        .insert(address.id, format!("its rank {host} died"));
                    return Err(error);
                }
                Some(new) if new != host && !self.is_dead(new) => {
                    self.lock().actor_hosts.insert(address.id, new);
                    return Ok(new);
                }
                // The creator has not noticed the death yet.
                Some(_) if Instant::now() < deadline => {
                    std::thread::sleep(MONITOR_PERIOD);
                }
                Some(_) => return Err(dead()),
            }
        }
    }

    /// Submits a method call to an actor.
    pub(crate) fn call_actor(
        self: &Arc<Self>,
        address: &ActorAddress,
        handles: Option<ObjectId>,
        method: u64,
        name: &str,
        args: &impl Serialize,
    ) -> Result<ObjectId> {
        // One lock for the common case: the actor is alive on a live rank.
        let known_host = {
            let s = self.lock();
            if let Some(reason) = s.dead_actors.get(&address.id) {
                return Err(runtime_error(RuntimeError::ActorDied {
                    actor: address.id,
                    reason: reason.clone(),
                }));
            }
            let host = s
                .actor_hosts
                .get(&address.id)
                .copied()
                .unwrap_or(address.host);
            (!s.dead.contains(&host)).then_some(host)
        };
        let (encoded, pinned) = collect_refs(|| bincode::serialize(args));
        let refs = pinned.ids();
        let args = encoded.map_err(|e| {
            runtime_error(RuntimeError::Codec {
                what: format!("the arguments of {name}"),
                detail: e.to_string(),
            })
        })?;
        let host = match known_host {
            Some(host) => host,
            None => self.actor_host(address)?,
        };
        self.register(&refs, host)?;
        let object = self.new_object();
        let retry = (address.max_task_retries > 0).then(|| {
            Box::new(CallRetry {
                address: address.clone(),
                method,
                args: args.clone(),
                pinned,
                retries_left: address.max_task_retries,
            })
        });
        {
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            if let Some(handles) = handles {
                s.refs.handle_added(handles);
            }
            s.in_flight.insert(
                object,
                InFlight::ActorCall {
                    host,
                    actor: address.id,
                    name: name.to_string(),
                    handles,
                    retry,
                },
            );
            if s.dead.contains(&host) {
                drop(s);
                self.fail_actor_calls(host, "its rank died");
                return Ok(object);
            }
        }
        if let Err(e) = self.send(
            host,
            &RtMsg::ActorCall {
                actor: address.id,
                method,
                name: name.to_string(),
                object,
                args,
                refs,
            },
        ) {
            tracing::debug!("actor call {name} not sent: {e}");
        }
        Ok(object)
    }

    pub(crate) fn kill_actor(
        self: &Arc<Self>,
        address: &ActorAddress,
        name: Option<&str>,
    ) -> Result<()> {
        let host = self.actor_host(address).unwrap_or(address.host);
        let _record = {
            let mut s = self.lock();
            s.dead_actors.insert(address.id, "killed".to_string());
            s.created_actors.remove(&address.id)
        };
        let creator = address.id.creator;
        if creator == self.rank {
            self.forget_placement(address.id);
        }
        if creator != self.rank && creator != host {
            self.send_or_log(creator, &RtMsg::ActorKill { actor: address.id });
        }
        if let Some(name) = name {
            self.send_or_log(
                0,
                &RtMsg::NameRemove {
                    name: name.to_string(),
                },
            );
        }
        self.send(host, &RtMsg::ActorKill { actor: address.id })?;
        Ok(())
    }

    pub(crate) fn lookup_actor(self: &Arc<Self>, name: &str) -> Result<Option<ActorAddress>> {
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(0));
        self.send(
            0,
            &RtMsg::NameLookup {
                name: name.to_string(),
                request,
            },
        )?;
        match self.await_reply(request, None)? {
            Reply::Name(address) => Ok(address),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank: 0,
                what: format!("looking up actor {name:?}"),
            })),
        }
    }

    pub(crate) fn local_stats(&self) -> RankStats {
        let s = self.lock();
        RankStats {
            owned_objects: s.refs.owned_count() as u64,
            borrowed_objects: s.refs.borrowed_count() as u64,
            stored_values: self.store.len() as u64,
            arena_objects: self.store.arena_live().unwrap_or(0),
            freed_objects: s.refs.freed_count(),
            tasks_executed: self.tasks_executed.load(Ordering::Relaxed),
            actors_hosted: self.actors.live(),
            chunks_served: self.store.chunks_served(),
        }
    }

    /// Counters of `rank` (asks it when it is not this rank).
    pub(crate) fn stats(self: &Arc<Self>, rank: Rank) -> Result<RankStats> {
        if rank == self.rank {
            return Ok(self.local_stats());
        }
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(rank));
        self.send(rank, &RtMsg::Stats { request })?;
        match self.await_reply(request, None)? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank,
                what: "asking for its counters".into(),
            })),
        }
    }

    /// The calls in flight to `host` (which died): those with retries left
    /// are sent again to wherever the actor's creator restarts it (on a
    /// thread of their own: finding the actor may wait for the creator);
    /// the others fail with `ActorDied`.
    fn fail_actor_calls(self: &Arc<Self>, host: Rank, reason: &str) {
        let (failed, mut retried): (Vec<LostCall>, Vec<LostCall>) = {
            let mut s = self.lock();
            let ids: Vec<ObjectId> = s
                .in_flight
                .iter()
                .filter(|(_, f)| matches!(f, InFlight::ActorCall { host: h, .. } if *h == host))
                .map(|(id, _)| *id)
                .collect();
            let mut lost = Vec::new();
            for id in ids {
                if let Some(InFlight::ActorCall {
                    actor,
                    name,
                    handles,
                    retry,
                    ..
                }) = s.in_flight.remove(&id)
                {
                    lost.push((id, actor, name, handles, retry));
                }
            }
            lost.into_iter()
                .partition(|(.., retry)| retry.as_ref().is_none_or(|r| r.retries_left == 0))
        };
        for (object, actor, name, handles, _retry) in failed {
            self.fail_lost_call(object, actor, name, handles, host, reason);
        }
        if retried.is_empty() {
            return;
        }
        // In the order they were made (ids grow at the caller).
        retried.sort_by_key(|(object, ..)| object.seq);
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lumen-actor-retry".into())
            .spawn(move || inner.resend_actor_calls(host, retried));
        if let Err(e) = spawned {
            tracing::error!("could not start a thread to resend actor calls: {e}");
        }
    }

    fn fail_lost_call(
        self: &Arc<Self>,
        object: ObjectId,
        actor: ActorId,
        name: String,
        handles: Option<ObjectId>,
        host: Rank,
        reason: &str,
    ) {
        let error = TaskError {
            function: name,
            rank: host,
            kind: TaskErrorKind::ActorDied,
            message: format!("{actor} is dead: {reason}"),
        };
        self.on_done(object, Outcome::Failed(error), Vec::new());
        if let Some(handles) = handles {
            self.handle_dropped(handles);
        }
    }

    /// Sends calls lost with `dead` again to the actor's new host.
    fn resend_actor_calls(self: &Arc<Self>, dead: Rank, calls: Vec<LostCall>) {
        for (object, actor, name, handles, retry) in calls {
            let Some(mut retry) = retry else {
                continue;
            };
            if retry.retries_left != u32::MAX {
                retry.retries_left -= 1;
            }
            let host = match self.actor_host(&retry.address) {
                Ok(host) => host,
                Err(e) => {
                    let reason = format!("its rank {dead} died and it was not restarted ({e})");
                    self.fail_lost_call(object, actor, name, handles, dead, &reason);
                    continue;
                }
            };
            let refs = retry.pinned.ids();
            if let Err(e) = self.register(&refs, host) {
                let reason = format!("its rank {dead} died; resending the call failed: {e}");
                self.fail_lost_call(object, actor, name, handles, dead, &reason);
                continue;
            }
            let message = RtMsg::ActorCall {
                actor,
                method: retry.method,
                name: name.clone(),
                object,
                args: retry.args.clone(),
                refs,
            };
            tracing::info!(
                "resending {name} ({object}) to {actor} on rank {host} (rank {dead} died); \
                 {} retries left",
                retry.retries_left
            );
            let host_dead = {
                let mut s = self.lock();
                s.in_flight.insert(
                    object,
                    InFlight::ActorCall {
                        host,
                        actor,
                        name,
                        handles,
                        retry: Some(retry),
                    },
                );
                s.dead.contains(&host)
            };
            if host_dead {
                self.fail_actor_calls(host, &format!("its rank {host} died"));
            } else {
                self.send_or_log(host, &message);
            }
        }
    }

    /// A peer is gone: drop its registrations, retry or fail its tasks,
    /// fail what waited on it.
    fn on_rank_dead(self: &Arc<Self>, rank: Rank) {
        let (effects, retry, failed) = {
            let mut s = self.lock();
            if !s.dead.insert(rank) {
                return;
            }
            let effects = s.refs.rank_died(rank);
            let lost: Vec<ObjectId> = s
                .in_flight
                .iter()
                .filter(|(_, f)| matches!(f, InFlight::Task { rank: r, .. } if *r == rank))
                .map(|(id, _)| *id)
                .collect();
            let mut retry = Vec::new();
            let mut failed = Vec::new();
            for id in lost {
                if let Some(InFlight::Task { spec, pinned, .. }) = s.in_flight.remove(&id) {
                    if spec.attempt <= spec.options.max_retries {
                        retry.push((spec, pinned));
                    } else {
                        failed.push((spec, pinned));
                    }
                }
            }
            for reply in s.replies.values_mut() {
                if matches!(reply, Reply::Waiting(r) if *r == rank) {
                    *reply = Reply::Failed;
                }
            }
            let orphaned: Vec<ObjectId> = s
                .remote_values
                .iter()
                .filter(|(id, v)| id.owner == rank && v.is_none())
                .map(|(id, _)| *id)
                .collect();
            for id in orphaned {
                s.remote_values.insert(id, Some(owner_died(id)));
            }
            (effects, retry, failed)
        };
        tracing::warn!(rank = self.rank, dead = rank, "rank {rank} died");
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rank_died(rank);
        self.group_rank_died(rank);
        self.changed.notify_all();
        self.wake_all();
        self.apply(effects);
        self.fail_actor_calls(rank, &format!("its rank {rank} died"));
        self.restart_actors(rank);
        for (spec, _pinned) in failed {
            let error = TaskError {
                function: spec.name.clone(),
                rank,
                kind: TaskErrorKind::WorkerDied {
                    attempts: spec.attempt,
                },
                message: format!(
                    "rank {rank} died while running it ({} attempt(s), max_retries {})",
                    spec.attempt, spec.options.max_retries
                ),
            };
            self.on_done(spec.object, Outcome::Failed(error), Vec::new());
        }
        for (mut spec, pinned) in retry {
            spec.attempt += 1;
            let object = spec.object;
            let name = spec.name.clone();
            let placed = self
                .scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .place_task(&Request {
                    resources: Some(&spec.options.resources),
                    node: spec.options.node,
                    rank: spec.options.rank,
                    data_at: None,
                });
            let target = match placed {
                Ok(target) => target,
                Err(e) => {
                    let error = TaskError {
                        function: name,
                        rank,
                        kind: TaskErrorKind::WorkerDied {
                            attempts: spec.attempt - 1,
                        },
                        message: format!(
                            "rank {rank} died and no rank can take the retry: {}",
                            e.0
                        ),
                    };
                    self.on_done(object, Outcome::Failed(error), Vec::new());
                    continue;
                }
            };
            tracing::info!(
                "retrying {name} ({object}) on rank {target}, attempt {}",
                spec.attempt
            );
            if let Err(e) = self.register(&spec.refs, target) {
                let error = TaskError {
                    function: name,
                    rank,
                    kind: TaskErrorKind::DependencyFailed,
                    message: format!("retry after rank {rank} died: {e}"),
                };
                self.on_done(object, Outcome::Failed(error), Vec::new());
                continue;
            }
            self.lock().in_flight.insert(
                object,
                InFlight::Task {
                    spec: spec.clone(),
                    rank: target,
                    pinned,
                },
            );
            self.send_or_log(target, &RtMsg::Submit(spec));
        }
        if rank == 0 && self.mode == Mode::Driver && self.rank != 0 {
            // The driver is gone: nothing will ever be asked of us again.
            let (flag, cv) = &self.shutdown_requested;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
    }

    /// True once some rank is known dead.
    pub(crate) fn any_dead(&self) -> bool {
        !self.lock().dead.is_empty()
    }

    /// True once `rank` is known dead.
    pub(crate) fn is_dead(&self, rank: Rank) -> bool {
        self.lock().dead.contains(&rank)
    }

    /// Tells every live rank to stop serving (driver mode).
    pub(crate) fn broadcast_shutdown(self: &Arc<Self>) {
        for rank in 0..self.size {
            if rank != self.rank && !self.is_dead(rank) {
                self.send_or_log(rank, &RtMsg::Shutdown);
            }
        }
    }
}

fn owner_died(object: ObjectId) -> Outcome {
    Outcome::Failed(TaskError {
        function: String::new(),
        rank: object.owner,
        kind: TaskErrorKind::OwnerDied,
        message: format!("the owner (rank {}) of {object} died", object.owner),
    })
}

/// Watches peers: a receive on a tag nobody uses, without waiting, reports a
/// dead or departed peer (the transport's progress thread notices deaths
/// through pidfds and closed sockets).
fn monitor(runtime: Weak<Inner>) {
    loop {
        std::thread::sleep(MONITOR_PERIOD);
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        for rank in 0..inner.size {
            if rank == inner.rank || inner.is_dead(rank) {
                continue;
            }
            let probe = inner
                .endpoint
                .recv_timeout(Source::Rank(rank), PROBE_TAG, Duration::ZERO);
            if let Err(TransportError::PeerDied { .. } | TransportError::PeerClosed { .. }) = probe
            {
                if inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                inner.on_rank_dead(rank);
            }
        }
    }
}

/// Shared by `submit` and friends: a typed `ObjectRef` for an owned id.
pub(crate) fn owned_ref<T: ?Sized>(inner: &Arc<Inner>, object: ObjectId) -> ObjectRef<T> {
    ObjectRef::owned(object, inner.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_ref_encodes_as_the_submit_message() {
        let spec = TaskSpec {
            object: ObjectId { owner: 3, seq: 7 },
            function: 0x1234,
            name: "module::function".into(),
            args: vec![1, 2, 3],
            refs: vec![ObjectId { owner: 1, seq: 2 }],
            options: TaskOptions::default(),
            attempt: 1,
        };
        assert_eq!(
            encode(&SubmitRef(&spec)),
            encode(&RtMsg::Submit(spec.clone()))
        );
    }
}
