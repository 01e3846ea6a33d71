//! Non-blocking operations: each `i*` call takes ownership of its buffer,
//! queues the blocking algorithm on the communicator's helper thread
//! (started on first use) and returns a [`Request`].
//!
//! Invariant: operations of one communicator run one at a time in call
//! order. A job holds the execution lock while it runs, and a blocking call
//! first waits until every queued job has finished (`enter`), so every rank
//! executes the same sequence.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use super::{lock, Communicator};
use crate::element::{Element, ReduceOp};
use crate::error::Result;

/// A queued operation for the helper thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

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

impl Communicator {
    pub(super) fn submit<R: Send + 'static>(
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

    pub(super) fn start_worker(&self) -> Option<mpsc::Sender<Job>> {
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
