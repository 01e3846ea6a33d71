//! The task executor of a rank: a pool of threads running tasks from a FIFO
//! queue within the rank's CPU slots.
//!
//! A task needs `num_cpus` slots to start. A task that blocks in `get`,
//! `wait` or a borrower registration gives its slots back while it waits
//! (as Ray's workers release their CPU when blocked in `ray.get`), and if no
//! idle thread is left to use them the pool grows by one (up to
//! [`MAX_THREADS`]), so a chain of nested tasks can never deadlock a rank
//! whose slots are all held by waiting parents.
//!
//! Placement groups: a bundle reserved on this rank moves its CPUs, custom
//! resources and GPUs (specific device ids) out of the free pool into a
//! pool of its own. A task of a group takes them from its bundle's pool
//! only (its GPU ids are the bundle's devices), every other task from the
//! free pool only, so work outside the group never gets a GPU a bundle
//! reserved; each pool serves its tasks in FIFO order, and a task that
//! does not fit its pool does not hold back the tasks of other pools.
//! Releasing the group gives its pools back (what its running tasks hold
//! comes back as they finish) and returns its queued tasks, which then fail.
//!
//! The accounting (the pools, which queued task may start, which GPU ids
//! it gets) is pure and lives in `lumen_sched` ([`ResourceSlots`] and
//! [`lumen_sched::GpuSlots`], with their invariants and tests); this
//! module is the threads around it: the queue of task specs, the pool of
//! workers, blocking and waking.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use lumen_sched::{Bundle, GpuGrant, GpuSlots, Held, ResourceSlots, Resources};
use lumen_transport::Rank;

use super::core::Inner;
use super::ids::ObjectId;
use super::protocol::TaskSpec;
use lumen_sched::PlacementGroupId;

/// Upper bound on executor threads per rank (blocked tasks included).
pub(crate) const MAX_THREADS: usize = 256;

/// Threads kept for retried and rebuilt tasks: once `MAX_THREADS -
/// RETRY_RESERVE` threads run first attempts (blocked in `get` or not),
/// only retries (attempt > 1) start. Tasks blocked on values lost with a rank wait for those values'
/// rebuilds, which are retries; without a reserve every thread could be
/// blocked on a rebuild that no thread is left to run.
pub(crate) const RETRY_RESERVE: usize = 16;

thread_local! {
    /// Slots held by the task this thread runs (0: not an executor thread),
    /// and the bundle they came from (`None`: the free pool).
    static HELD: Cell<(f64, Option<Bundle>)> = const { Cell::new((0.0, None)) };
    /// The bundle of the slots lent out by `blocking`, for `unblocked`.
    static BLOCKED_IN: Cell<Option<Bundle>> = const { Cell::new(None) };
    /// This executor thread runs a task now.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// The GPUs of the task or actor this thread runs (see [`gpu_ids`]).
    static GPUS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The GPU ids given to the task or actor running on this thread, lowest
/// first (empty outside one, or when it asked for none): Ray's
/// `ray.get_gpu_ids()`. Kept while a task blocks in `get` (as Ray keeps a
/// blocked task's GPUs).
pub(crate) fn gpu_ids() -> Vec<u32> {
    GPUS.with(|g| g.borrow().clone())
}

/// Sets this thread's GPU ids (the executor for its tasks, the actor host
/// for an actor's thread).
pub(crate) fn set_gpu_ids(ids: Vec<u32>) {
    GPUS.with(|g| *g.borrow_mut() = ids);
}

/// The bundle a task runs in, if any.
fn bundle_of(spec: &TaskSpec) -> Option<Bundle> {
    spec.options
        .placement_group
        .and_then(|p| p.bundle_index.map(|b| (p.group, b)))
}

#[derive(Debug)]
struct Queued {
    spec: TaskSpec,
    from: Rank,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Queued>,
    /// The free pool and the pools of the bundles reserved here (CPUs,
    /// custom resources, GPU ids).
    slots: ResourceSlots,
    threads: usize,
    /// Threads without a task: sleeping, or spinning for one (`spinning`).
    idle: usize,
    /// Idle threads polling the transport themselves (at most one).
    spinning: usize,
    /// Threads running a first attempt of a task (blocked or not).
    first_attempts: usize,
    stopping: bool,
}

/// A rank's executor.
#[derive(Debug)]
pub(crate) struct Executor {
    state: Mutex<State>,
    ready: Condvar,
    runtime: OnceLock<Weak<Inner>>,
    /// Tasks pushed so far (an idle spinner watches it without the lock).
    pushes: AtomicU64,
    /// The idle spin now, in nanoseconds (adapts, see [`Executor::spin_idle`]).
    idle_spin_ns: AtomicU64,
    /// Idle spins that found a task, and that ran out.
    spins_found: AtomicU64,
    spins_empty: AtomicU64,
    /// Times an idle thread slept.
    sleeps: AtomicU64,
}

impl Executor {
    /// An executor of `capacity`'s CPU slots and custom resources over the
    /// rank's `gpus`.
    pub(crate) fn new(capacity: &Resources, gpus: GpuSlots) -> Arc<Self> {
        Arc::new(Executor {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                slots: ResourceSlots::new(capacity, gpus),
                threads: 0,
                idle: 0,
                spinning: 0,
                first_attempts: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            runtime: OnceLock::new(),
            pushes: AtomicU64::new(0),
            idle_spin_ns: AtomicU64::new(u64::MAX),
            spins_found: AtomicU64::new(0),
            spins_empty: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `threads` workers.
    pub(crate) fn start(self: &Arc<Self>, runtime: Weak<Inner>, threads: usize) {
        let _ = self.runtime.set(runtime.clone());
        for _ in 0..threads.max(1) {
            self.spawn_thread(runtime.clone());
        }
    }

    fn spawn_thread(self: &Arc<Self>, runtime: Weak<Inner>) {
        {
            let mut s = self.lock();
            if s.threads >= MAX_THREADS {
                return;
            }
            s.threads += 1;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lumen-exec".into())
            .spawn(move || me.run(runtime));
        if let Err(e) = spawned {
            tracing::error!("could not start an executor thread: {e}");
            self.lock().threads -= 1;
        }
    }

    /// Queues a task; gives it back when its placement group was
    /// released here.
    pub(crate) fn push(self: &Arc<Self>, spec: TaskSpec, from: Rank) -> Result<(), Box<TaskSpec>> {
        let (grow, wake) = {
            let mut s = self.lock();
            let bundle = bundle_of(&spec);
            if bundle.is_some_and(|(group, _)| s.slots.is_released(group)) {
                return Err(Box::new(spec));
            }
            let free = s.slots.free_in(bundle);
            // A retried or rebuilt task goes first: tasks queued and
            // running may be blocked waiting for its value (lineage), and
            // they hold threads the executor can run only so many of.
            if spec.attempt > 1 {
                s.queue.push_front(Queued { spec, from });
            } else {
                s.queue.push_back(Queued { spec, from });
            }
            self.pushes.fetch_add(1, Ordering::Release);
            // Every thread may be blocked in a `get` with its slots lent
            // out: then nobody would pick this task up. A notify with no
            // sleeping idle thread would only cost a system call (std's
            // condvar makes one on every notify). A spinning thread sees
            // `pushes` move and takes the task without a wake-up; it wakes
            // a sleeper when it leaves more queued (see `run`).
            (
                s.idle == 0 && free > 1e-9,
                s.idle > s.spinning && s.spinning == 0,
            )
        };
        if grow {
            if let Some(runtime) = self.runtime.get() {
                self.spawn_thread(runtime.clone());
            }
        }
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Reserves bundles of `group` here (index, resources): they leave the
    /// free pool (which may go below zero while tasks started before the
    /// reservation finish); their GPUs become specific devices of the
    /// bundle. Returns each new bundle's device ids.
    pub(crate) fn reserve(
        &self,
        group: PlacementGroupId,
        bundles: &[(u32, Resources)],
    ) -> Vec<(u32, Vec<u32>)> {
        self.lock().slots.reserve(group, bundles)
    }

    /// Tasks queued or running here, for the submitters' load view
    /// (piggybacked on `Done`): the task of the calling executor thread,
    /// which is reporting its end, is not counted.
    pub(crate) fn queued(&self) -> u32 {
        let s = self.lock();
        let me = usize::from(IN_TASK.with(Cell::get));
        let running = s.threads.saturating_sub(s.idle).saturating_sub(me);
        u32::try_from(s.queue.len() + running).unwrap_or(u32::MAX)
    }

    /// Tasks running on the executor threads now, and tasks queued (for
    /// `lumen status`).
    pub(crate) fn load(&self) -> (u64, u64) {
        let s = self.lock();
        let running = s.threads.saturating_sub(s.idle);
        (running as u64, s.queue.len() as u64)
    }

    /// Releases every bundle of `group` here; returns its queued tasks.
    pub(crate) fn release(&self, group: PlacementGroupId) -> Vec<TaskSpec> {
        let dropped = {
            let mut s = self.lock();
            // Slots held by running tasks come back when they end.
            s.slots.release(group);
            let (dropped, kept): (VecDeque<Queued>, VecDeque<Queued>) = s
                .queue
                .drain(..)
                .partition(|q| bundle_of(&q.spec).is_some_and(|(g, _)| g == group));
            s.queue = kept;
            dropped
        };
        self.ready.notify_all();
        dropped.into_iter().map(|q| q.spec).collect()
    }

    /// True once `group` was released here.
    pub(crate) fn is_released(&self, group: PlacementGroupId) -> bool {
        self.lock().slots.is_released(group)
    }

    /// Removes a queued task; true when it had not started.
    pub(crate) fn remove(&self, object: ObjectId) -> Option<TaskSpec> {
        let mut s = self.lock();
        let at = s.queue.iter().position(|q| q.spec.object == object)?;
        s.queue.remove(at).map(|q| q.spec)
    }

    /// Stops the threads once their tasks end.
    pub(crate) fn stop(&self) {
        self.lock().stopping = true;
        self.ready.notify_all();
    }

    /// The first queued task that may start now, FIFO within each pool,
    /// among those whose GPUs are free (see
    /// [`ResourceSlots::next_runnable`]: a task waiting for a GPU does not
    /// hold back CPU-only tasks; a request the rank can never serve is let
    /// through, to fail).
    fn next_runnable(s: &State) -> Option<usize> {
        if s.first_attempts >= MAX_THREADS - RETRY_RESERVE {
            // Only retries may take the last threads (see RETRY_RESERVE).
            let retries: Vec<usize> = (0..s.queue.len())
                .filter(|&at| s.queue[at].spec.attempt > 1)
                .collect();
            let at = s.slots.next_runnable(retries.iter().map(|&at| {
                let q = &s.queue[at];
                (&q.spec.options.resources, bundle_of(&q.spec))
            }))?;
            return retries.get(at).copied();
        }
        s.slots.next_runnable(
            s.queue
                .iter()
                .map(|q| (&q.spec.options.resources, bundle_of(&q.spec))),
        )
    }

    /// Takes GPUs for an actor starting on this rank (`None`: not now).
    /// The host is not told an actor's bundle (`ActorCreate` carries its
    /// group only), so: from the free pool, or from a bundle's devices when
    /// every device that could serve it is reserved (see
    /// [`ResourceSlots::acquire_gpus_any`]); `ResourceSlots::acquire_gpus`
    /// serves a known bundle exactly.
    pub(crate) fn acquire_gpus(
        &self,
        amount: f64,
        bundle: Option<Bundle>,
    ) -> Result<Option<GpuGrant>, String> {
        let mut s = self.lock();
        match bundle {
            // Pinned to a bundle: its devices (or the free pool's, for a
            // bundle reserved elsewhere or released meanwhile).
            Some(bundle) => s.slots.acquire_gpus(amount, Some(bundle)),
            None => s.slots.acquire_gpus_any(amount, None),
        }
        .map_err(|e| e.to_string())
    }

    /// Gives an actor's GPUs back.
    pub(crate) fn release_gpus(&self, grant: &GpuGrant) {
        let wake = {
            let mut s = self.lock();
            s.slots.release_gpus(grant);
            s.idle > s.spinning && !s.queue.is_empty()
        };
        if wake {
            self.ready.notify_all();
        }
    }

    /// Gives `slots` back to the pool they came from (the free pool when
    /// their bundle was released meanwhile).
    fn give_back(s: &mut State, slots: f64, bundle: Option<Bundle>) {
        s.slots.give_back(slots, bundle);
    }

    fn run(self: Arc<Self>, runtime: Weak<Inner>) {
        loop {
            let (job, held) = {
                let mut s = self.lock();
                let mut spun = false;
                loop {
                    if s.stopping {
                        s.threads -= 1;
                        return;
                    }
                    if let Some(at) = Self::next_runnable(&s) {
                        if let Some(job) = s.queue.remove(at) {
                            s.first_attempts += usize::from(job.spec.attempt <= 1);
                            let bundle = bundle_of(&job.spec);
                            let held = s.slots.start(&job.spec.options.resources, bundle);
                            // More queued than this thread takes: a sleeper
                            // (not woken by `push` while this one spun).
                            if !s.queue.is_empty() && s.idle > s.spinning {
                                self.ready.notify_one();
                            }
                            break (job, held);
                        }
                    }
                    if !spun && s.spinning == 0 {
                        // Poll for the next task before sleeping; then
                        // look at the queue again under the lock.
                        spun = true;
                        s.idle += 1;
                        s.spinning += 1;
                        let seen = self.pushes.load(Ordering::Acquire);
                        drop(s);
                        self.spin_idle(&runtime, seen);
                        s = self.lock();
                        s.spinning -= 1;
                        s.idle -= 1;
                        continue;
                    }
                    s.idle += 1;
                    self.sleeps.fetch_add(1, Ordering::Relaxed);
                    s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
                    s.idle -= 1;
                    spun = false;
                }
            };
            let job_attempt = job.spec.attempt;
            let Some(inner) = runtime.upgrade() else {
                return;
            };
            let held: Option<Held> = match held {
                Ok(held) => {
                    HELD.with(|h| h.set((held.cpus, held.bundle)));
                    set_gpu_ids(held.gpus.ids.clone());
                    if let Some(&gpu) = held.gpus.ids.first() {
                        super::device::bind_gpu_context(gpu);
                        if !job.spec.device_args.is_empty() {
                            inner.prefetch_device_args(&job.spec.device_args);
                        }
                    }
                    IN_TASK.with(|t| t.set(true));
                    inner.run_task(job.spec, job.from);
                    IN_TASK.with(|t| t.set(false));
                    set_gpu_ids(Vec::new());
                    HELD.with(|h| h.set((0.0, None)));
                    Some(held)
                }
                Err(why) => {
                    inner.fail_task(job.spec, &format!("cannot get its GPUs: {why}"));
                    None
                }
            };
            let first = job_attempt <= 1;
            drop(inner);
            let wake = {
                let mut s = self.lock();
                s.first_attempts -= usize::from(first);
                if let Some(held) = &held {
                    s.slots.finish(held);
                }
                s.idle > s.spinning && !s.queue.is_empty()
            };
            if wake {
                self.ready.notify_one();
            }
        }
    }

    /// An idle thread polls the transport itself for the next task (a task
    /// that arrives then is queued by this thread's own progress, and it
    /// starts with no wake-up), for the rank's wait spin at most, adapted:
    /// halved after a spin that found nothing (down to a sixteenth), doubled
    /// after one that found a task, so a rank that gets work rarely burns
    /// little CPU. No spin when the rank's spin is zero (ranks sharing
    /// cores) or another thread of the rank polls already.
    fn spin_idle(&self, runtime: &Weak<Inner>, seen: u64) {
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        let full = inner.wait_spin().as_nanos() as u64;
        if full == 0 {
            return;
        }
        let spin = self.idle_spin_ns.load(Ordering::Relaxed).min(full);
        let Some(found) = inner.poll_until(std::time::Duration::from_nanos(spin), || {
            self.pushes.load(Ordering::Acquire) != seen
        }) else {
            return;
        };
        let next = if found {
            self.spins_found.fetch_add(1, Ordering::Relaxed);
            spin.saturating_mul(2).min(full)
        } else {
            self.spins_empty.fetch_add(1, Ordering::Relaxed);
            (spin / 2).max(full / 16)
        };
        self.idle_spin_ns.store(next, Ordering::Relaxed);
    }

    /// Times an idle thread slept, so far.
    pub(crate) fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::Relaxed)
    }

    /// Idle spins that found a task and that ran out, so far.
    pub(crate) fn spin_counts(&self) -> (u64, u64) {
        (
            self.spins_found.load(Ordering::Relaxed),
            self.spins_empty.load(Ordering::Relaxed),
        )
    }

    /// The calling thread is about to block inside a task: lend its slots.
    /// Returns a token for [`Executor::unblocked`].
    pub(crate) fn blocking(self: &Arc<Self>, runtime: &Arc<Inner>) -> f64 {
        let (held, bundle) = HELD.with(|h| h.replace((0.0, None)));
        if held == 0.0 {
            return 0.0;
        }
        BLOCKED_IN.with(|b| b.set(bundle));
        let grow = {
            let mut s = self.lock();
            Self::give_back(&mut s, held, bundle);
            s.idle == 0 && !s.queue.is_empty()
        };
        self.ready.notify_one();
        if grow {
            self.spawn_thread(Arc::downgrade(runtime));
        }
        held
    }

    /// The calling thread stopped blocking: take the slots back (the rank
    /// may be briefly over-subscribed, as in Ray).
    pub(crate) fn unblocked(&self, held: f64) {
        if held == 0.0 {
            return;
        }
        // The bundle is still this thread's task's (set by `run`).
        let bundle = BLOCKED_IN.with(|b| b.take());
        self.lock().slots.take(held, bundle);
        HELD.with(|h| h.set((held, bundle)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::options::{PlacementGroupScheduling, TaskOptions};

    fn spec(seq: u64, cpus: f64, bundle: Option<Bundle>) -> TaskSpec {
        let mut options = TaskOptions::default();
        options.resources.cpus = cpus;
        options.placement_group = bundle.map(|(group, index)| PlacementGroupScheduling {
            group,
            bundle_index: Some(index),
        });
        TaskSpec {
            object: ObjectId { owner: 0, seq },
            function: 0,
            name: format!("task {seq}"),
            args: Vec::new(),
            refs: Vec::new(),
            device_args: Vec::new(),
            options,
            attempt: 1,
        }
    }

    /// Starts the task `next_runnable` picks, as a worker would.
    fn start(executor: &Executor) -> Option<(u64, f64, Option<Bundle>)> {
        let mut s = executor.lock();
        let at = Executor::next_runnable(&s)?;
        let job = s.queue.remove(at)?;
        let held = s
            .slots
            .start(&job.spec.options.resources, bundle_of(&job.spec))
            .ok()?;
        Some((job.spec.object.seq, held.cpus, held.bundle))
    }

    #[test]
    fn the_last_threads_are_kept_for_retries() {
        let executor = Executor::new(&Resources::cpus(2.0), GpuSlots::with_count(0));
        executor.push(spec(1, 1.0, None), 0).expect("queued");
        let mut retry = spec(2, 1.0, None);
        retry.attempt = 2;
        executor.push(retry, 0).expect("queued");
        executor.push(spec(3, 1.0, None), 0).expect("queued");
        {
            let mut s = executor.lock();
            s.first_attempts = MAX_THREADS - RETRY_RESERVE;
            let at = Executor::next_runnable(&s).expect("the retry may start");
            assert_eq!(s.queue[at].spec.object.seq, 2);
            s.queue.remove(at);
            assert_eq!(Executor::next_runnable(&s), None, "first attempts wait");
            s.first_attempts -= 1;
        }
        // A thread left: first attempts start again, in order.
        assert_eq!(start(&executor), Some((1, 1.0, None)));
    }

    #[test]
    fn bundles_hold_their_cpus_and_do_not_block_each_other() {
        let group = PlacementGroupId { creator: 0, seq: 1 };
        let executor = Executor::new(&Resources::cpus(2.0), GpuSlots::with_count(0));
        executor.reserve(group, &[(0, Resources::cpus(1.0))]);
        // Outside the group: one CPU is free, the second task waits for it.
        executor.push(spec(1, 1.0, None), 0).expect("queued");
        executor.push(spec(2, 1.0, None), 0).expect("queued");
        executor
            .push(spec(3, 1.0, Some((group, 0))), 0)
            .expect("queued");
        assert_eq!(start(&executor), Some((1, 1.0, None)));
        // Task 2 waits for the free pool, task 3 runs in its bundle anyway.
        assert_eq!(start(&executor), Some((3, 1.0, Some((group, 0)))));
        assert_eq!(start(&executor), None);
        // Releasing the group: its CPU comes back once task 3 ends.
        executor
            .push(spec(4, 1.0, Some((group, 0))), 0)
            .expect("queued");
        let dropped = executor.release(group);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].object.seq, 4);
        assert_eq!(start(&executor), None, "task 3 still holds the CPU");
        Executor::give_back(&mut executor.lock(), 1.0, Some((group, 0)));
        assert_eq!(start(&executor), Some((2, 1.0, None)));
        // Late tasks of a released group are refused.
        assert!(executor.push(spec(5, 1.0, Some((group, 0))), 0).is_err());
        let s = executor.lock();
        assert!((s.slots.free() - 0.0).abs() < 1e-9 && (s.slots.total() - 2.0).abs() < 1e-9);
    }
}
