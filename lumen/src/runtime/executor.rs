//! The task executor of a rank: a pool of threads running tasks from a FIFO
//! queue within the rank's CPU slots.
//!
//! A task needs `num_cpus` slots to start. A task that blocks in `get`,
//! `wait` or a borrower registration gives its slots back while it waits
//! (as Ray's workers release their CPU when blocked in `ray.get`), and if no
//! idle thread is left to use them the pool grows by one (up to
//! [`MAX_THREADS`]), so a chain of nested tasks can never deadlock a rank
//! whose slots are all held by waiting parents.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use lumen_transport::Rank;

use super::core::Inner;
use super::ids::ObjectId;
use super::protocol::TaskSpec;

/// Upper bound on executor threads per rank (blocked tasks included).
pub(crate) const MAX_THREADS: usize = 256;

thread_local! {
    /// Slots held by the task this thread runs (0: not an executor thread).
    static HELD: Cell<f64> = const { Cell::new(0.0) };
}

#[derive(Debug)]
struct Queued {
    spec: TaskSpec,
    from: Rank,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Queued>,
    free: f64,
    total: f64,
    threads: usize,
    idle: usize,
    stopping: bool,
}

/// A rank's executor.
#[derive(Debug)]
pub(crate) struct Executor {
    state: Mutex<State>,
    ready: Condvar,
    runtime: OnceLock<Weak<Inner>>,
}

impl Executor {
    pub(crate) fn new(cpus: f64) -> Arc<Self> {
        Arc::new(Executor {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                free: cpus,
                total: cpus,
                threads: 0,
                idle: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            runtime: OnceLock::new(),
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

    /// Queues a task.
    pub(crate) fn push(self: &Arc<Self>, spec: TaskSpec, from: Rank) {
        let grow = {
            let mut s = self.lock();
            s.queue.push_back(Queued { spec, from });
            // Every thread may be blocked in a `get` with its slots lent
            // out: then nobody would pick this task up.
            s.idle == 0 && s.free > 1e-9
        };
        if grow {
            if let Some(runtime) = self.runtime.get() {
                self.spawn_thread(runtime.clone());
            }
        }
        self.ready.notify_one();
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

    fn run(self: Arc<Self>, runtime: Weak<Inner>) {
        loop {
            let (job, need) = {
                let mut s = self.lock();
                loop {
                    if s.stopping {
                        s.threads -= 1;
                        return;
                    }
                    let fits = s.queue.front().map(|q| {
                        let need = q.spec.options.resources.cpus.max(0.0);
                        // A task larger than the rank still runs when the
                        // rank is otherwise idle (feasibility was checked
                        // by the submitter against the rank's total).
                        (need <= s.free + 1e-9 || s.free >= s.total - 1e-9, need)
                    });
                    if let Some((true, need)) = fits {
                        let job = s.queue.pop_front();
                        if let Some(job) = job {
                            s.free -= need;
                            break (job, need);
                        }
                    }
                    s.idle += 1;
                    s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
                    s.idle -= 1;
                }
            };
            let Some(inner) = runtime.upgrade() else {
                return;
            };
            HELD.with(|h| h.set(need));
            inner.run_task(job.spec, job.from);
            HELD.with(|h| h.set(0.0));
            drop(inner);
            self.lock().free += need;
            self.ready.notify_one();
        }
    }

    /// The calling thread is about to block inside a task: lend its slots.
    /// Returns a token for [`Executor::unblocked`].
    pub(crate) fn blocking(self: &Arc<Self>, runtime: &Arc<Inner>) -> f64 {
        let held = HELD.with(|h| h.replace(0.0));
        if held == 0.0 {
            return 0.0;
        }
        let grow = {
            let mut s = self.lock();
            s.free += held;
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
        self.lock().free -= held;
        HELD.with(|h| h.set(held));
    }
}
