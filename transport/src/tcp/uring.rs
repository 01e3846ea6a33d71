//! The io_uring TCP receiver, caller-driven: one multishot receive per
//! connection, fed from a ring of provided buffers (kernel 6.0+), so an
//! idle connection holds no buffer and a busy one needs no re-arming per
//! read.
//!
//! Whoever waits reaps: a thread spinning in `recv`, `get` or a send loop
//! takes the ring's lock with `try_lock` ([`UringCore::progress`], called
//! from [`super::TcpReaders::poll`]) and reads the completion queue, which
//! is memory shared with the kernel: no syscall per poll. The background
//! thread does the same when no caller polls, blocking in `io_uring_enter`
//! (GETEVENTS) without holding the lock.
//!
//! The kernel runs a multishot receive's copy as task work of the thread
//! that submitted it, so who arms a connection matters: a connection is
//! armed by the first waiting caller that polls it, and the background
//! thread arms only what no caller armed within [`ADOPT_AFTER`] (a rank
//! that computes and never calls in). A caller that polls a connection the
//! background thread armed cancels that receive and arms its own once the
//! cancellation completes (otherwise every arrival would wake the
//! background thread to run the copy: 23 us instead of 8 for 8 B here). A
//! request whose thread exited ends with `ECANCELED` and is armed again by
//! the next holder; bytes are never lost (they stay in the socket) nor
//! reordered (one request per connection at a time, its completions
//! reaped in order under the lock).
//!
//! An eventfd is polled through the ring (key [`WAKE_KEY`]): shutdown and
//! new connections wake the background thread at once.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};

use super::conn::{ConnState, NewConnection};
use super::Inbox;

const BUFFER_GROUP: u16 = 7;
const ENTRIES: u16 = 64;
const BUFFER_BYTES: usize = 256 * 1024;
/// The user data of the waker's poll.
const WAKE_KEY: u64 = 0;
/// The user data of cancellation requests (their own completions are ignored).
const CANCEL_KEY: u64 = u64::MAX;
/// The background thread arms connections no caller armed for this long.
const ADOPT_AFTER: Duration = Duration::from_millis(5);

/// Provided-buffer ring memory (page-aligned anonymous mapping) and the buffers.
struct BufferRing {
    entries: *mut types::BufRingEntry,
    map_len: usize,
    buffers: Vec<u8>,
    tail: u16,
}

// SAFETY: the ring memory is owned by this struct and used by one thread.
unsafe impl Send for BufferRing {}

impl BufferRing {
    fn new() -> io::Result<Self> {
        let map_len =
            (ENTRIES as usize * std::mem::size_of::<types::BufRingEntry>()).next_multiple_of(4096);
        // SAFETY: anonymous private mapping; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = BufferRing {
            entries: ptr.cast(),
            map_len,
            buffers: vec![0u8; ENTRIES as usize * BUFFER_BYTES],
            tail: 0,
        };
        for bid in 0..ENTRIES {
            ring.provide(bid);
        }
        Ok(ring)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let index = (self.tail & (ENTRIES - 1)) as usize;
        // SAFETY: index < ENTRIES, inside the mapping; the kernel reads an entry
        // only after the tail store below publishes it.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(self.buffers.as_ptr().add(bid as usize * BUFFER_BYTES) as u64);
            entry.set_len(BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved field, an aligned u16
        // inside the mapping; the kernel reads it concurrently, hence atomic.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * BUFFER_BYTES;
        &self.buffers[start..start + len.min(BUFFER_BYTES)]
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; the ring was unregistered or
        // the io_uring instance is already gone.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}

/// The ring, its buffers and its connections, shared by every thread that
/// reaps (see the module docs).
pub(crate) struct UringCore {
    ring: IoUring,
    state: Mutex<UringState>,
    /// Connections known to the ring (callers poll while it is above 0).
    pub(super) count: AtomicUsize,
    /// Unarmed connections wait for a caller (or the background thread).
    unarmed_since: Mutex<Option<Instant>>,
}

/// Which thread submitted a connection's receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armer {
    /// A waiting caller.
    Caller,
    /// The background thread.
    Background,
}

struct UringState {
    buffers: BufferRing,
    conns: HashMap<u64, ConnState>,
    unarmed: Vec<u64>,
    /// Connections whose receive the background thread submitted, and
    /// whether a caller has asked to cancel it yet.
    background: HashMap<u64, bool>,
    next_key: u64,
    wake_armed: bool,
    completions: Vec<(u64, i32, u32)>,
}

// SAFETY: the ring's queues are only touched under `state`'s lock (or, for
// `io_uring_enter` without submissions, not at all from user space).
unsafe impl Sync for UringCore {}

impl UringCore {
    /// Sets up the ring; fails where io_uring or provided-buffer rings are refused.
    pub(crate) fn new() -> io::Result<Self> {
        // Cooperative task running: an arrival does not interrupt the
        // arming thread with an IPI (a VM exit here) but raises a flag in
        // the ring that a polling caller sees; a sleeping thread is still
        // woken. Kernels without it (before 5.19) get the default.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(256)
            .or_else(|_| IoUring::new(256))?;
        let buffers = BufferRing::new()?;
        // SAFETY: the buffer ring memory stays mapped for as long as the
        // io_uring instance (both live in this struct; the ring drops first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                ENTRIES,
                BUFFER_GROUP,
                0,
            )?;
        }
        Ok(UringCore {
            ring,
            state: Mutex::new(UringState {
                buffers,
                conns: HashMap::new(),
                unarmed: Vec::new(),
                background: HashMap::new(),
                next_key: 1,
                wake_armed: false,
                completions: Vec::with_capacity(64),
            }),
            count: AtomicUsize::new(0),
            unarmed_since: Mutex::new(None),
        })
    }

    fn push(&self, entry: &io_uring::squeue::Entry) -> bool {
        // SAFETY: called under `state`'s lock, the only place entries are
        // pushed; the entry's fd and buffers outlive the request (see `arm`).
        let pushed = unsafe { self.ring.submission_shared().push(entry).is_ok() };
        if pushed {
            return true;
        }
        let _ = self.ring.submit();
        // SAFETY: as above.
        unsafe { self.ring.submission_shared().push(entry).is_ok() }
    }

    /// Takes a connection in; a caller (or the background thread) arms it.
    fn insert(&self, state: &mut UringState, conn: NewConnection, limits: (u32, u64)) {
        let key = state.next_key;
        state.next_key += 1;
        state
            .conns
            .insert(key, ConnState::new(conn, limits.0, limits.1));
        state.unarmed.push(key);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut since = self.unarmed_since.lock().unwrap_or_else(|p| p.into_inner());
        since.get_or_insert_with(Instant::now);
    }

    /// Arms every unarmed connection from this thread; true when it submitted.
    fn arm_all(&self, state: &mut UringState, armer: Armer) -> bool {
        if state.unarmed.is_empty() {
            return false;
        }
        let mut any = false;
        for key in std::mem::take(&mut state.unarmed) {
            let Some(fd) = state.conns.get(&key).map(ConnState::fd) else {
                continue;
            };
            let entry = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
                .build()
                .user_data(key);
            // The fd stays open while its ConnState lives in `conns` (a
            // closed one is removed only after its last completion).
            if self.push(&entry) {
                any = true;
                if armer == Armer::Background {
                    state.background.insert(key, false);
                }
            } else {
                state.unarmed.push(key);
            }
        }
        if state.unarmed.is_empty() {
            *self.unarmed_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        any
    }

    /// A caller asks to take over the receives the background thread armed.
    fn take_over(&self, state: &mut UringState) -> bool {
        let mut any = false;
        for (&key, asked) in state.background.iter_mut().filter(|(_, asked)| !**asked) {
            let entry = opcode::AsyncCancel::new(key).build().user_data(CANCEL_KEY);
            if self.push(&entry) {
                *asked = true;
                any = true;
            }
        }
        any
    }

    /// Reaps completions (and arms what waits, as `arm`); true when bytes
    /// were handled. `blocking` takes the lock instead of trying it.
    pub(crate) fn progress(&self, shared: &dyn Inbox, blocking: bool, arm: Option<Armer>) -> bool {
        let mut state = if blocking {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.state.try_lock() {
                Ok(state) => state,
                Err(_) => return false, // another thread reaps
            }
        };
        let state = &mut *state;
        let mut submit = false;
        if let Some(armer) = arm {
            submit |= self.arm_all(state, armer);
            if armer == Armer::Caller && !state.background.is_empty() {
                submit |= self.take_over(state);
            }
        }
        // SAFETY: the flags word is only read; queues are touched under the lock.
        if submit || unsafe { self.ring.submission_shared() }.taskrun() {
            // Also runs this thread's pending task work (the copies).
            let _ = self.ring.submit();
        }
        let mut completions = std::mem::take(&mut state.completions);
        completions.clear();
        // SAFETY: the completion queue is only read under `state`'s lock.
        completions.extend(
            unsafe { self.ring.completion_shared() }
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let progressed = !completions.is_empty();
        for &(key, result, flags) in &completions {
            if key == WAKE_KEY {
                if !cqueue::more(flags) {
                    state.wake_armed = false;
                }
                continue;
            }
            if key == CANCEL_KEY {
                continue; // the receive's own last completion says it ended
            }
            if !cqueue::more(flags) {
                state.background.remove(&key);
            }
            let Some(conn) = state.conns.get_mut(&key) else {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    state.buffers.provide(bid);
                }
                continue;
            };
            let outcome = if result == -libc::ENOBUFS || result == -libc::ECANCELED {
                // Every buffer in use, or the arming thread exited: arm again.
                None
            } else if result < 0 {
                Some(format!("failed: {}", io::Error::from_raw_os_error(-result)))
            } else if result == 0 {
                Some("closed without a goodbye".to_string())
            } else if let Some(bid) = cqueue::buffer_select(flags) {
                let fed = conn.feed(shared, state.buffers.buffer(bid, result as usize));
                state.buffers.provide(bid);
                fed.err().map(|e| {
                    tracing::error!(
                        peer = conn.rank,
                        "malformed data, closing the connection: {e}"
                    );
                    format!("sent malformed data ({e})")
                })
            } else {
                Some("completion without a buffer".to_string())
            };
            match outcome {
                Some(why) => {
                    conn.closed(shared, &why);
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    if !cqueue::more(flags) {
                        state.conns.remove(&key);
                        self.count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                None if !cqueue::more(flags) => {
                    state.unarmed.push(key);
                    let mut since = self.unarmed_since.lock().unwrap_or_else(|p| p.into_inner());
                    since.get_or_insert_with(Instant::now);
                }
                None => {}
            }
        }
        state.completions = completions;
        if let Some(armer) = arm {
            if self.arm_all(state, armer) {
                let _ = self.ring.submit();
            }
        }
        progressed
    }

    /// True when connections have waited unarmed longer than [`ADOPT_AFTER`].
    fn unarmed_too_long(&self) -> bool {
        self.unarmed_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() >= ADOPT_AFTER)
    }

    /// The background receiver: registers new connections, keeps the
    /// waker's poll armed, and reaps whenever no caller polls.
    pub(crate) fn run(
        self: Arc<Self>,
        shared: Weak<dyn Inbox>,
        readers: &super::TcpReaders,
        rx: mpsc::Receiver<NewConnection>,
        stop: Arc<AtomicBool>,
        waker: Option<Arc<OwnedFd>>,
        limits: (u32, u64),
    ) {
        let mut last_polls = u64::MAX;
        while !stop.load(Ordering::Acquire) {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                while let Ok(conn) = rx.try_recv() {
                    self.insert(&mut state, conn, limits);
                }
                if let (Some(waker), false) = (&waker, state.wake_armed) {
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(&**waker, &mut count);
                    let entry =
                        opcode::PollAdd::new(types::Fd(waker.as_raw_fd()), libc::POLLIN as u32)
                            .multi(true)
                            .build()
                            .user_data(WAKE_KEY);
                    // The eventfd lives as long as this thread holds `waker`.
                    if self.push(&entry) {
                        state.wake_armed = true;
                        let _ = self.ring.submit();
                    }
                }
            }
            if readers.step_aside(&mut last_polls) {
                continue;
            }
            // Nobody polls: wait for a completion without the lock.
            let ts = types::Timespec::new().nsec(20_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) {
                    tracing::error!("io_uring wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let arm = self.unarmed_too_long().then_some(Armer::Background);
            self.progress(&*shared, true, arm);
            if let Some(waker) = &waker {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&**waker, &mut count);
            }
        }
    }
}
