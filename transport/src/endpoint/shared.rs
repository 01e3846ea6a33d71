//! The state every clone of an [`Endpoint`](super::Endpoint) shares
//! ([`Shared`]): routes, the node segment, ring producer locks, the mailbox,
//! handlers, regions, pending gets, and what is known of each peer's life.
//!
//! Invariants: the atomic counts `mailbox_len` and `handler_count` mirror
//! their tables (updated under the table's lock) so hot paths may skip the
//! lock while they read 0; a peer's state only ever leaves `PEER_ALIVE` once
//! (first cause wins). The TCP readers reach this state only through the
//! [`Inbox`] trait, which keeps `tcp` from importing the endpoint.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::config::TransportConfig;
use crate::error::TransportError;
use crate::shm::{NodeSegment, STATE_DEPARTED};
use crate::sys::{futex_wait, futex_wake_all, ProcessWatch};
use crate::tcp::Inbox;
use crate::tcp::{TcpDomain, TcpReaders};
use crate::types::{Message, Rank, Route, Source, PEER_ALIVE, PEER_DEAD, PEER_DEPARTED};
use crate::wire::GetRequestMsg;

use super::Handler;

#[derive(Default)]
pub(super) struct Mailbox {
    pub(super) queues: HashMap<u64, VecDeque<Message>>,
    pub(super) len: usize,
}

impl Mailbox {
    pub(super) fn push(&mut self, message: Message) {
        self.queues
            .entry(message.tag)
            .or_default()
            .push_back(message);
        self.len += 1;
    }

    pub(super) fn take(&mut self, src: Source, tag: u64) -> Option<Message> {
        let queue = self.queues.get_mut(&tag)?;
        let at = match src {
            Source::Any => 0,
            Source::Rank(r) => queue.iter().position(|m| m.src == r)?,
        };
        let message = queue.remove(at);
        if queue.is_empty() {
            self.queues.remove(&tag);
        }
        if message.is_some() {
            self.len -= 1;
        }
        message
    }

    pub(super) fn remove_tag(&mut self, tag: u64) -> Option<VecDeque<Message>> {
        let queue = self.queues.remove(&tag)?;
        self.len -= queue.len();
        Some(queue)
    }
}

/// Producer side of ring (me → dst), under its lock.
#[derive(Default)]
pub(super) struct Producer {
    /// Rendezvous messages announced so far (the cookie of the last one).
    pub(super) cookies: u64,
    /// Last `head` seen: reloaded only when the ring looks full, so the
    /// consumer's cache line is not pulled over on every push.
    pub(super) head: u64,
}

pub(super) struct ConsumerState {
    pub(super) partial: Vec<Option<(u64, Vec<u8>)>>,
}

/// A doorbell for ranks without a node segment (alone on their node).
#[derive(Default)]
pub(super) struct Bell {
    pub(super) word: AtomicU32,
    pub(super) sleepers: AtomicU32,
}

pub(super) enum GetSlot {
    Waiting,
    Done(Result<Vec<u8>, TransportError>),
}

pub(crate) struct Shared {
    pub(crate) rank: Rank,
    pub(super) size: u32,
    pub(crate) config: TransportConfig,
    pub(super) routes: Vec<Route>,
    pub(super) local_ranks: Vec<Rank>,
    pub(super) my_local: usize,
    pub(super) segment: Option<NodeSegment>,
    pub(super) own_bell: Bell,
    /// Per local destination: producer lock of ring (me, dst) and its rendezvous cookie count.
    pub(super) ring_producers: Vec<Mutex<Producer>>,
    pub(super) consumer: Mutex<ConsumerState>,
    pub(super) mailbox: Mutex<Mailbox>,
    /// Messages in the mailbox, readable without its lock (a waiting receive
    /// skips the lock while this is 0).
    pub(super) mailbox_len: AtomicUsize,
    pub(super) handlers: RwLock<HashMap<u64, Handler>>,
    /// Registered handlers (delivery skips the handler table while this is 0).
    pub(super) handler_count: AtomicUsize,
    pub(super) pending_handlers: Mutex<VecDeque<Message>>,
    pub(super) get_requests: Mutex<VecDeque<(Rank, GetRequestMsg)>>,
    pub(super) regions: RwLock<HashMap<u64, Arc<[u8]>>>,
    pub(super) next_region: AtomicU64,
    pub(super) gets: Mutex<HashMap<u64, GetSlot>>,
    pub(super) next_get: AtomicU64,
    pub(super) peer_state: Vec<AtomicU8>,
    /// Something arrived from the peer since the last `heard_from` (the
    /// runtime's failure detector counts all traffic as a heartbeat).
    pub(super) heard: Vec<AtomicBool>,
    /// Something was sent to the peer since the last `sent_to`.
    pub(super) sent: Vec<AtomicBool>,
    pub(super) death: Mutex<Vec<Option<String>>>,
    /// Local peers' pidfds, and one epoll set over them: a liveness check
    /// is then one `epoll_wait` that returns nothing while everyone lives,
    /// not one `poll` per peer (256 ranks on a node made that 65k syscalls
    /// a millisecond between them during start-up).
    pub(super) watches: LocalWatches,
    pub(super) single_copy: Vec<bool>,
    pub(super) tcp: Mutex<Option<TcpDomain>>,
    /// The sending halves toward remote ranks (set once TCP is up): sends
    /// take no lock to find them.
    pub(super) tcp_connector: std::sync::OnceLock<Arc<crate::tcp::Connector>>,
    pub(super) tcp_address: SocketAddr,
    pub(super) barrier_epoch: AtomicU64,
    pub(super) closed: AtomicBool,
    pub(super) progress_thread: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
    /// TCP connections that waiting callers read themselves (see `tcp`).
    pub(crate) tcp_readers: Arc<TcpReaders>,
    /// The one-sided rendezvous to other nodes, once attached (`rdma`).
    pub(super) fabric: std::sync::OnceLock<super::rdma::FabricRoute>,
    /// Ready-to-sends waiting for a top-level progress to read them.
    pub(super) rdma_pending: Mutex<VecDeque<(Rank, super::rdma::Rts)>>,
    pub(super) rdma_cookie: AtomicU64,
    /// Sent, received, fallbacks (see `RendezvousStats`).
    pub(super) rdma_stats: [AtomicU64; 3],
    /// An application thread that spins on progress itself (see
    /// [`Standby`]).
    pub(super) standby: Standby,
}

/// The progress thread stands by while an application thread polls.
///
/// A caller blocked in the runtime's `get` (or an idle executor thread)
/// that spins on [`Endpoint::progress`](super::Endpoint::progress) itself
/// receives its reply on its own thread: no hand-off, no wake-up. The
/// progress thread must then neither spin beside it (on a rank bound to
/// one core, two spinners take turns by time slice: a 14 us round trip
/// became 70-100 us, `LUMEN_RT_SPIN_US=30` before this) nor be rung by
/// senders for every message. So while a thread polls, the progress
/// thread stands by: it sleeps on the doorbell without counting as a
/// sleeper, and the node segment's `polling` flag tells senders not to
/// ring for it (see `NodeSegment::notify`). A poller that leaves clears
/// the flag and rings only if something arrived meanwhile; otherwise the
/// next sender rings as usual. The steady state of back-to-back round
/// trips thus makes no system call on either side. At most one thread
/// polls at a time: a second one sleeps at once.
#[derive(Debug, Default)]
pub(crate) struct Standby {
    pub(super) pollers: AtomicU32,
    /// For a rank without a node segment: the progress thread naps on
    /// `word`, and a leaving poller wakes it when `napping`.
    pub(super) word: AtomicU32,
    pub(super) napping: AtomicBool,
    /// Poll sessions begun, and refused because another thread polled.
    pub(super) sessions: AtomicU64,
    pub(super) refused: AtomicU64,
    /// A session ended lingering (see `PollSession::linger`): the
    /// segment's `polling` flag is still set; since `linger_since`
    /// (nanoseconds after `epoch`).
    pub(super) lingering: AtomicBool,
    pub(super) linger_since: AtomicU64,
    pub(super) epoch: std::sync::OnceLock<std::time::Instant>,
}

/// The longest nap of a standing-by progress thread, and so the longest
/// a lingering `polling` flag stands (see `PollSession::linger`).
pub(super) const STANDBY_NAP: Duration = Duration::from_micros(250);

impl Standby {
    fn now_ns(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(std::time::Instant::now);
        epoch.elapsed().as_nanos() as u64
    }
}

impl Shared {
    /// Becomes the polling thread unless another is: true when it did.
    pub(super) fn begin_polling(&self) -> bool {
        let standby = &self.standby;
        let won = standby
            .pollers
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok();
        if !won {
            standby.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        standby.sessions.fetch_add(1, Ordering::Relaxed);
        standby.lingering.store(false, Ordering::SeqCst);
        if let Some(seg) = &self.segment {
            seg.set_polling(self.my_local, true);
        }
        true
    }

    /// The polling thread leaves for a moment (it got what it waited for
    /// and will likely wait again soon): the `polling` flag stays, so a
    /// reply that arrives before its next session makes no ring; the
    /// progress thread clears it after [`STANDBY_NAP`] at most.
    pub(super) fn linger_polling(&self) {
        let standby = &self.standby;
        if self.segment.is_none() {
            return self.end_polling();
        }
        standby
            .linger_since
            .store(standby.now_ns(), Ordering::SeqCst);
        standby.lingering.store(true, Ordering::SeqCst);
        standby.pollers.store(0, Ordering::SeqCst);
    }

    /// The polling thread leaves: the progress thread takes over.
    pub(super) fn end_polling(&self) {
        let standby = &self.standby;
        standby.pollers.store(0, Ordering::SeqCst);
        match &self.segment {
            Some(seg) => {
                seg.set_polling(self.my_local, false);
                // Against a sender that saw `polling` set and did not ring
                // (both sides fence: one of them sees the other).
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.work_pending() {
                    seg.ring_own_doorbell_standby(self.my_local);
                }
            }
            None => {
                standby.word.fetch_add(1, Ordering::SeqCst);
                if standby.napping.load(Ordering::SeqCst) {
                    futex_wake_all(&standby.word);
                }
            }
        }
    }

    /// Something waits for a top-level progress round.
    pub(super) fn work_pending(&self) -> bool {
        self.rings_pending()
            || !lock(&self.pending_handlers).is_empty()
            || !lock(&self.get_requests).is_empty()
            || !lock(&self.rdma_pending).is_empty()
    }

    /// Progress thread side: stands by while an application thread polls;
    /// false (at once) when none does.
    pub(super) fn stand_by(&self) -> bool {
        let standby = &self.standby;
        if standby.pollers.load(Ordering::SeqCst) == 0 {
            if !standby.lingering.load(Ordering::SeqCst) {
                return false;
            }
            let since = standby.linger_since.load(Ordering::SeqCst);
            let waited = standby.now_ns().saturating_sub(since);
            if waited < STANDBY_NAP.as_nanos() as u64 {
                if let Some(seg) = &self.segment {
                    let left = Duration::from_nanos(STANDBY_NAP.as_nanos() as u64 - waited);
                    seg.standby_sleep(self.my_local, left, || {
                        !standby.lingering.load(Ordering::SeqCst)
                    });
                }
                return true;
            }
            // The linger is over and nobody polls: take over (a session
            // begun meanwhile cleared `lingering` and set the flag again).
            if standby
                .lingering
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
                && standby.pollers.load(Ordering::SeqCst) == 0
            {
                if let Some(seg) = &self.segment {
                    seg.set_polling(self.my_local, false);
                    // A session may have begun between the two checks
                    // above: it set the flag before it polls, so set it
                    // again for it.
                    if standby.pollers.load(Ordering::SeqCst) > 0 {
                        seg.set_polling(self.my_local, true);
                    }
                }
            }
            return false;
        }
        match &self.segment {
            Some(seg) => seg.standby_sleep(self.my_local, STANDBY_NAP, || {
                standby.pollers.load(Ordering::SeqCst) == 0
            }),
            None => {
                let word = standby.word.load(Ordering::SeqCst);
                standby.napping.store(true, Ordering::SeqCst);
                // Re-checked after announcing the nap: `end_polling` bumps
                // the word before reading `napping`.
                if standby.pollers.load(Ordering::SeqCst) > 0 {
                    futex_wait(&standby.word, word, STANDBY_NAP);
                }
                standby.napping.store(false, Ordering::SeqCst);
            }
        }
        true
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not take the transport down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Hands a complete message to its handler or to the mailbox, and wakes waiters.
    pub(crate) fn deliver(&self, message: Message) {
        if let Some(heard) = self.heard.get(message.src as usize) {
            // A load first: the flag is mostly set already, and a store on
            // every message would bounce its cache line with the detector.
            if !heard.load(Ordering::Relaxed) {
                heard.store(true, Ordering::Relaxed);
            }
        }
        if message.tag == super::rdma::RDMA_RTS_TAG {
            match super::rdma::Rts::decode(&message.data) {
                Ok(rts) => lock(&self.rdma_pending).push_back((message.src, rts)),
                Err(e) => tracing::warn!(
                    "dropped a malformed ready-to-send from rank {}: {e}",
                    message.src
                ),
            }
            self.wake_self();
            return;
        }
        let has_handler = self.handler_count.load(Ordering::Acquire) > 0
            && self
                .handlers
                .read()
                .map(|h| h.contains_key(&message.tag))
                .unwrap_or(false);
        if has_handler {
            lock(&self.pending_handlers).push_back(message);
        } else {
            self.mailbox_push(message);
        }
        self.wake_self();
    }

    pub(super) fn mailbox_push(&self, message: Message) {
        let mut mailbox = lock(&self.mailbox);
        mailbox.push(message);
        self.mailbox_len.store(mailbox.len, Ordering::Release);
    }

    pub(super) fn mailbox_take(&self, src: Source, tag: u64) -> Option<Message> {
        if self.mailbox_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut mailbox = lock(&self.mailbox);
        let message = mailbox.take(src, tag);
        self.mailbox_len.store(mailbox.len, Ordering::Release);
        message
    }

    pub(crate) fn wake_self(&self) {
        match &self.segment {
            Some(seg) => seg.ring_own_doorbell(self.my_local),
            None => {
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.own_bell.sleepers.load(Ordering::Relaxed) > 0 {
                    self.own_bell.word.fetch_add(1, Ordering::SeqCst);
                    futex_wake_all(&self.own_bell.word);
                }
            }
        }
    }

    pub(crate) fn queue_get_request(&self, from: Rank, request: GetRequestMsg) {
        lock(&self.get_requests).push_back((from, request));
        self.wake_self();
    }

    pub(crate) fn finish_get(&self, request: u64, result: Result<Vec<u8>, TransportError>) {
        if let Some(slot) = lock(&self.gets).get_mut(&request) {
            *slot = GetSlot::Done(result);
        }
        self.wake_self();
    }

    /// Records that a peer is gone (first cause wins) and wakes waiters.
    pub(crate) fn mark_peer(&self, rank: Rank, state: u8, detail: String) {
        let Some(cell) = self.peer_state.get(rank as usize) else {
            return;
        };
        if cell
            .compare_exchange(PEER_ALIVE, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if state == PEER_DEAD {
                tracing::error!(peer = rank, "peer died: {detail}");
            }
            lock(&self.death)[rank as usize] = Some(detail);
        }
        self.wake_self();
    }

    pub(super) fn sleep(&self, timeout: Duration, ready: impl FnOnce() -> bool) {
        match &self.segment {
            Some(seg) => seg.sleep(self.my_local, timeout, ready),
            None => {
                let bell = &self.own_bell;
                bell.sleepers.fetch_add(1, Ordering::SeqCst);
                let seen = bell.word.load(Ordering::SeqCst);
                if !ready() {
                    futex_wait(&bell.word, seen, timeout);
                }
                bell.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Checks local peers' departures and pidfds; called every millisecond
    /// or so while waiting.
    pub(super) fn check_local_peers(&self) {
        let Some(seg) = &self.segment else { return };
        // A departure is a word in the segment, written before the peer
        // unmaps; an exit without one shows as a readable pidfd.
        for local in 0..self.local_ranks.len() {
            let rank = self.local_ranks[local];
            if local != self.my_local
                && seg.state(local) == STATE_DEPARTED
                && self.peer_state[rank as usize].load(Ordering::Acquire) == PEER_ALIVE
            {
                self.mark_peer(rank, PEER_DEPARTED, "closed its endpoint".into());
            }
        }
        for local in self.watches.exited() {
            let rank = self.local_ranks[local];
            if self.peer_state[rank as usize].load(Ordering::Acquire) == PEER_ALIVE {
                self.mark_peer(
                    rank,
                    PEER_DEAD,
                    format!(
                        "process {} exited without closing its endpoint",
                        seg.pid(local)
                    ),
                );
            }
        }
    }

    pub(super) fn peer_error(&self, rank: Rank) -> Option<TransportError> {
        match self.peer_state.get(rank as usize)?.load(Ordering::Acquire) {
            PEER_ALIVE => None,
            state => {
                let detail = lock(&self.death)[rank as usize].clone().unwrap_or_default();
                Some(if state == PEER_DEAD {
                    TransportError::PeerDied { rank, detail }
                } else {
                    TransportError::PeerClosed { rank }
                })
            }
        }
    }

    pub(super) fn any_dead(&self) -> Option<TransportError> {
        (0..self.size)
            .find(|&r| self.peer_state[r as usize].load(Ordering::Acquire) == PEER_DEAD)
            .and_then(|r| self.peer_error(r))
    }

    pub(super) fn rings_pending(&self) -> bool {
        let Some(seg) = &self.segment else {
            return false;
        };
        (0..seg.local_size())
            .any(|from| from != self.my_local && seg.has_record(from, self.my_local))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(seg) = &self.segment {
            seg.depart(self.my_local);
        }
        if let Some(tcp) = lock(&self.tcp).take() {
            tcp.shutdown(self.rank);
        }
    }
}

impl Inbox for Shared {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn readers(&self) -> &Arc<TcpReaders> {
        &self.tcp_readers
    }

    fn deliver(&self, message: Message) {
        Shared::deliver(self, message);
    }

    fn queue_get_request(&self, from: Rank, request: GetRequestMsg) {
        Shared::queue_get_request(self, from, request);
    }

    fn finish_get(&self, request: u64, result: Result<Vec<u8>, TransportError>) {
        Shared::finish_get(self, request, result);
    }

    fn mark_peer(&self, rank: Rank, state: u8, detail: String) {
        Shared::mark_peer(self, rank, state, detail);
    }
}

/// The pidfds of a node's other ranks, by local index.
pub(super) struct LocalWatches {
    watches: Vec<Option<ProcessWatch>>,
    /// Every open pidfd, keyed by local index; `None` where epoll is refused,
    /// and then each pidfd is polled in turn.
    epoll: Option<crate::sys::Epoll>,
    /// Pidfds already reported, out of the epoll set (it is level-triggered).
    reported: Mutex<Vec<bool>>,
}

impl LocalWatches {
    pub(super) fn new(watches: Vec<Option<ProcessWatch>>) -> Self {
        let epoll = crate::sys::Epoll::new().ok().filter(|epoll| {
            watches.iter().enumerate().all(|(local, watch)| {
                watch
                    .as_ref()
                    .is_none_or(|w| epoll.add(w.raw_fd(), local as u64).is_ok())
            })
        });
        let reported = Mutex::new(vec![false; watches.len()]);
        LocalWatches {
            watches,
            epoll,
            reported,
        }
    }

    /// Local indices whose process has exited since the last call.
    fn exited(&self) -> Vec<usize> {
        let mut found = Vec::new();
        match &self.epoll {
            Some(epoll) => {
                let mut keys = Vec::new();
                epoll.wait(&mut keys, Duration::ZERO);
                found.extend(keys.into_iter().map(|key| key as usize));
            }
            None => found.extend(
                (self.watches.iter().enumerate())
                    .filter(|(_, w)| w.as_ref().is_some_and(ProcessWatch::exited))
                    .map(|(local, _)| local),
            ),
        }
        if found.is_empty() {
            return found;
        }
        let mut reported = lock(&self.reported);
        found.retain(|&local| {
            let new = reported.get(local).is_some_and(|done| !done);
            if new {
                reported[local] = true;
                if let (Some(epoll), Some(Some(watch))) = (&self.epoll, self.watches.get(local)) {
                    epoll.delete(watch.raw_fd());
                }
            }
            new
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_matches_source_and_tag_in_order() {
        let mut m = Mailbox::default();
        for (src, tag, b) in [(1, 5, 1u8), (2, 5, 2), (1, 5, 3), (1, 6, 4)] {
            m.push(Message {
                src,
                tag,
                data: vec![b],
            });
        }
        assert_eq!(m.len, 4);
        assert_eq!(m.take(Source::Rank(2), 5).unwrap().data, vec![2]);
        assert_eq!(m.take(Source::Any, 5).unwrap().data, vec![1]);
        assert_eq!(m.take(Source::Rank(1), 5).unwrap().data, vec![3]);
        assert!(m.take(Source::Any, 5).is_none());
        assert_eq!(m.take(Source::Any, 6).unwrap().data, vec![4]);
        assert_eq!(m.len, 0);
    }
}
