//! Caller-driven reading ([`TcpReaders`]): the connections that waiting
//! callers read themselves with `try_lock`, the poller count that tells the
//! background thread to step aside, and in-order delivery behind striped
//! messages still under assembly.
//!
//! Invariant: one thread reads a connection at a time (its state's lock);
//! messages of one peer are delivered in the order they were sent, even when
//! a striped message ahead of them is still arriving on its lanes.

use std::cell::RefCell;
use std::collections::HashMap;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::stripe::{Claim, PeerStripes};
use crate::sys::{futex_wait, futex_wake_all};
use crate::types::{Message, Rank};

use super::conn::ConnState;
use super::Inbox;

/// One connection read by caller-driven progress.
pub(super) struct Connection {
    pub(super) key: u64,
    pub(super) fd: RawFd,
    pub(super) state: Mutex<ConnState>,
    pub(super) closed: AtomicBool,
}

impl Connection {
    pub(super) fn rank(&self) -> Rank {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rank
    }

    /// Reads what is available; closes the connection on end of stream or bad data.
    pub(super) fn read(
        &self,
        shared: &dyn Inbox,
        state: &mut ConnState,
        scratch: &mut [u8],
    ) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let (progressed, closed) = state.read_available(shared, scratch);
        if let Some(why) = closed {
            self.closed.store(true, Ordering::Release);
            state.closed(shared, &why);
            let _ = state.stream.shutdown(std::net::Shutdown::Both);
            return true;
        }
        progressed
    }
}

pub(super) const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// Receive buffer of a thread that polls sockets (small frames land here first).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The connections that callers read themselves, and the hand-over between
/// polling callers and the background thread (see the module docs).
#[derive(Default)]
pub(crate) struct TcpReaders {
    pub(super) conns: RwLock<Vec<Arc<Connection>>>,
    pub(super) count: AtomicUsize,
    /// Application threads in the spin phase of a wait (they poll the sockets).
    pub(super) pollers: AtomicU32,
    /// Bumped by every caller poll: tells the background thread pollers are alive.
    pub(super) polls: AtomicU64,
    /// Futex word the background thread naps on; bumped to kick it.
    pub(super) nap_word: AtomicU32,
    pub(super) napping: AtomicBool,
    /// Striped messages under assembly and messages held behind them, per peer.
    pub(super) stripes: Mutex<HashMap<Rank, PeerStripes>>,
    /// Messages held in all of `stripes` (0: deliveries skip the lock).
    pub(super) held: AtomicUsize,
    /// The io_uring receiver's ring, when that backend runs: callers reap it.
    pub(super) uring: std::sync::OnceLock<Arc<super::uring::UringCore>>,
}

impl TcpReaders {
    /// True when there are sockets for callers to poll.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
            || self
                .uring
                .get()
                .is_some_and(|u| u.count.load(Ordering::Relaxed) > 0)
    }

    /// Caller-driven progress: reads every connection no other thread is reading.
    pub(crate) fn poll(&self, shared: &dyn Inbox) -> bool {
        if !self.active() {
            return false;
        }
        self.polls.fetch_add(1, Ordering::Relaxed);
        if let Some(uring) = self.uring.get() {
            // Reaping runs no handler, so no re-entry guard is needed.
            return uring.progress(shared, false, Some(super::uring::Armer::Caller));
        }
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return false; // re-entered from a handler: the outer poll reads
            };
            if scratch.len() < SCRATCH_BYTES {
                scratch.resize(SCRATCH_BYTES, 0);
            }
            let mut progressed = false;
            for conn in conns.iter() {
                if let Ok(mut state) = conn.state.try_lock() {
                    progressed |= conn.read(shared, &mut state, &mut scratch);
                }
            }
            progressed
        })
    }

    /// A waiting thread starts busy-polling: the background thread may step aside.
    pub(crate) fn register_poller(&self) {
        self.pollers.fetch_add(1, Ordering::SeqCst);
    }

    /// A polling thread stops; `sleeping` when it is about to block, in which
    /// case the background thread must take over now rather than after its nap.
    pub(crate) fn unregister_poller(&self, sleeping: bool) {
        if self.pollers.fetch_sub(1, Ordering::SeqCst) == 1 && sleeping {
            self.nap_word.fetch_add(1, Ordering::SeqCst);
            if self.napping.load(Ordering::SeqCst) {
                futex_wake_all(&self.nap_word);
            }
        }
    }

    /// Background side: naps while callers poll. Returns false when it should read.
    pub(super) fn step_aside(&self, last_polls: &mut u64) -> bool {
        let word = self.nap_word.load(Ordering::SeqCst);
        if self.pollers.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let polls = self.polls.load(Ordering::Relaxed);
        if polls == *last_polls {
            return false; // registered but not polling for a whole nap: take over
        }
        *last_polls = polls;
        self.napping.store(true, Ordering::SeqCst);
        if self.pollers.load(Ordering::SeqCst) > 0 {
            futex_wait(&self.nap_word, word, Duration::from_millis(2));
        }
        self.napping.store(false, Ordering::SeqCst);
        true
    }

    /// Runs `f` on `rank`'s stripe state, then delivers what became
    /// deliverable, in order, and keeps `held` current.
    pub(super) fn with_stripes<R>(
        &self,
        shared: &dyn Inbox,
        rank: Rank,
        f: impl FnOnce(&mut PeerStripes) -> R,
    ) -> R {
        let mut stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        let peer = stripes.entry(rank).or_default();
        let before = peer.held();
        let result = f(peer);
        let mut ready = Vec::new();
        peer.flush(rank, &mut ready);
        let after = peer.held();
        // Delivery only queues the message (handlers run later), so doing it
        // under the lock keeps the order without risking re-entry.
        for message in ready {
            shared.deliver(message);
        }
        if after >= before {
            self.held.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.held.fetch_sub(before - after, Ordering::AcqRel);
        }
        result
    }

    /// Delivers a message from a primary connection, behind any striped
    /// message of the same peer still being assembled.
    pub(crate) fn deliver_in_order(&self, shared: &dyn Inbox, message: Message) {
        if self.held.load(Ordering::Acquire) == 0 {
            shared.deliver(message);
            return;
        }
        let rank = message.src;
        self.with_stripes(shared, rank, |peer| {
            if let Some(message) = peer.arrive(message) {
                shared.deliver(message);
            }
        });
    }

    pub(super) fn stripe_begin(
        &self,
        shared: &dyn Inbox,
        rank: Rank,
        seq: u64,
        tag: u64,
        total: u64,
    ) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.begin(seq, tag, total))
    }

    pub(super) fn stripe_chunk(
        &self,
        shared: &dyn Inbox,
        rank: Rank,
        seq: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.chunk(seq, offset, bytes))
    }

    pub(super) fn stripe_claim(
        &self,
        rank: Rank,
        seq: u64,
        offset: u64,
        len: u32,
    ) -> Result<Option<Claim>, String> {
        let mut stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        stripes.entry(rank).or_default().claim(seq, offset, len)
    }

    pub(super) fn stripe_filled(
        &self,
        shared: &dyn Inbox,
        rank: Rank,
        seq: u64,
        n: usize,
    ) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.filled(seq, n))
    }

    pub(super) fn stripes_held(&self, rank: Rank) -> usize {
        if self.held.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        stripes.get(&rank).map_or(0, PeerStripes::held)
    }

    pub(super) fn insert(&self, conn: Arc<Connection>) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        conns.push(conn);
        self.count.store(conns.len(), Ordering::Relaxed);
    }

    pub(super) fn remove(&self, key: u64) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.key != key);
        self.count.store(conns.len(), Ordering::Relaxed);
    }
}
