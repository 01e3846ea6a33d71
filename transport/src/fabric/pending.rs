//! Completion by polling: [`start_read`] and [`start_write`] return a
//! [`Transfer`] at once, which owns its buffer and is completed with
//! [`Transfer::poll`] (never blocks) or [`Transfer::wait`], so a caller can
//! post many transfers, compute, and collect them later.
//!
//! Underneath, the backends post and reap natively (libfabric and verbs
//! completion queues, each backend's own progress thread); a started
//! transfer's blocking wait runs on one of a small pool of Lumen transfer
//! threads (started on first use, as many as there are CPUs, at most 16),
//! so transfers beyond that many queue until a thread is free. Owning the
//! buffer is what makes this safe: nothing else can touch the bytes until
//! the transfer hands them back.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::{FabricError, OneSided, RemoteKey};

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        let threads = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(2, 16);
        for i in 0..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("lumen-fabric-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut queue = pool.queue.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(job) = queue.pop_front() {
                                break job;
                            }
                            queue = pool.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    job();
                });
            if let Err(e) = spawned {
                tracing::error!("could not start a fabric transfer thread: {e}");
            }
        }
        pool
    })
}

fn submit(job: Job) {
    let pool = pool();
    pool.queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_back(job);
    pool.ready.notify_one();
}

/// A one-sided transfer in flight (see the module docs).
#[derive(Debug)]
pub struct Transfer {
    rx: Receiver<(Result<(), FabricError>, Vec<u8>)>,
    done: Option<(Result<(), FabricError>, Vec<u8>)>,
}

impl Transfer {
    /// The outcome once the transfer completed, without blocking.
    pub fn poll(&mut self) -> Option<&Result<(), FabricError>> {
        if self.done.is_none() {
            match self.rx.try_recv() {
                Ok(done) => self.done = Some(done),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.done = Some((
                        Err(FabricError::Transfer {
                            what: "transfer",
                            detail: "its transfer thread ended without an answer".into(),
                        }),
                        Vec::new(),
                    ));
                }
            }
        }
        self.done.as_ref().map(|(result, _)| result)
    }

    /// Waits for the outcome; returns it with the buffer (for a read, the
    /// bytes read).
    pub fn wait(mut self) -> (Result<(), FabricError>, Vec<u8>) {
        if let Some(done) = self.done.take() {
            return done;
        }
        self.rx.recv().unwrap_or_else(|_| {
            (
                Err(FabricError::Transfer {
                    what: "transfer",
                    detail: "its transfer thread ended without an answer".into(),
                }),
                Vec::new(),
            )
        })
    }
}

/// Starts reading `buffer.len()` bytes at `offset` of the peer's region
/// `key` into `buffer`.
pub fn start_read(
    backend: Arc<dyn OneSided>,
    peer: usize,
    key: RemoteKey,
    offset: u64,
    mut buffer: Vec<u8>,
    timeout: Duration,
) -> Transfer {
    let (tx, rx) = channel();
    submit(Box::new(move || {
        let result = backend.read(peer, &key, offset, &mut buffer, timeout);
        let _ = tx.send((result, buffer));
    }));
    Transfer { rx, done: None }
}

/// Starts writing `buffer` at `offset` of the peer's region `key`.
pub fn start_write(
    backend: Arc<dyn OneSided>,
    peer: usize,
    key: RemoteKey,
    offset: u64,
    buffer: Vec<u8>,
    timeout: Duration,
) -> Transfer {
    let (tx, rx) = channel();
    submit(Box::new(move || {
        let result = backend.write(peer, &key, offset, &buffer, timeout);
        let _ = tx.send((result, buffer));
    }));
    Transfer { rx, done: None }
}
