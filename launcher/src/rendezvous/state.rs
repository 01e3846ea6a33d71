//! The store's protocol as a sans-IO state machine: requests in, replies out.
//!
//! [`StoreState`] knows nothing about sockets or clocks. The server shell calls
//! [`StoreState::connect`] when an authenticated rank arrives,
//! [`StoreState::handle`] for each of its requests and
//! [`StoreState::disconnected`] when its connection ends, and sends the
//! returned replies to the ranks they name.
//!
//! # Invariants
//!
//! - At most one connection per rank: a second connection for a rank that is
//!   connected is refused ([`ConnectRefusal::Duplicate`]).
//! - Every request gets exactly one reply with its id, now or later: a `Get`
//!   for a missing key and a `Barrier` wait in the state until they can be
//!   answered or fail.
//! - A rank that disconnects without `Finalize` has probably crashed: from then
//!   on the rendezvous is failed, every waiting `Get` and `Barrier` is answered
//!   with an error naming that rank, and so is every later one that cannot be
//!   answered at once. Values already stored stay readable.
//! - Barrier `epoch`s count 0, 1, 2, ... per rank; barrier `e` completes when
//!   all `size` ranks entered it.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::wire::{PendingBarrier, Reply, ReplyFrame, Request, RequestFrame, StoreStatus};

/// Where a rank stands with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Never connected.
    Absent,
    /// Connected now.
    Connected,
    /// Sent `Finalize` (and may have disconnected since).
    Finalized,
    /// Disconnected without `Finalize`.
    Departed,
}

#[derive(Debug, Clone, Copy)]
struct RankState {
    presence: Presence,
    /// The barrier epoch this rank enters next.
    next_epoch: u64,
}

/// A `Get` waiting for its key.
#[derive(Debug, Clone)]
struct WaitingGet {
    rank: u32,
    id: u64,
    key: String,
}

/// A `Gather` waiting for some of its keys.
#[derive(Debug, Clone)]
struct WaitingGather {
    rank: u32,
    id: u64,
    prefix: String,
    from: u32,
}

/// Most value bytes one `Values` reply carries (half a frame: room for the
/// flatbuffers framing of thousands of small values).
const GATHER_BUDGET: usize = super::MAX_FRAME as usize / 2;

/// `prefix` and `rank` of a key `prefix/rank`.
fn rank_key(key: &str) -> Option<(&str, u32)> {
    let (prefix, rank) = key.rsplit_once('/')?;
    Some((prefix, rank.parse().ok()?))
}

/// Why a rank's connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ConnectRefusal {
    /// The rank number is not below the job size.
    #[error("rank {rank} is outside this job of {size} ranks; check LUMEN_RANK and LUMEN_SIZE of that process")]
    OutOfRange {
        /// The rank that tried to connect.
        rank: u32,
        /// Ranks in the job.
        size: u32,
    },
    /// Another connection already speaks for this rank.
    #[error("rank {rank} is already connected to the rendezvous; two processes claim the same rank, check how the job was launched")]
    Duplicate {
        /// The rank claimed twice.
        rank: u32,
    },
    /// The rank left without finalizing earlier; the job has failed.
    #[error("rank {rank} left the rendezvous earlier without finalizing and cannot rejoin; restart the job")]
    Rejoin {
        /// The rank that tried to come back.
        rank: u32,
    },
}

/// State of the rendezvous store for one job of `size` ranks.
/// (Example: the unit test `examples::store_state_answers_a_get_after_a_put`.)
#[derive(Debug)]
pub(crate) struct StoreState {
    size: u32,
    ranks: Vec<RankState>,
    values: HashMap<String, Vec<u8>>,
    waiting_gets: Vec<WaitingGet>,
    waiting_gathers: Vec<WaitingGather>,
    /// Per prefix, how many keys `prefix/r` (r below the job size) are
    /// stored: a waiting gather is checked only once enough of them are.
    rank_keys: HashMap<String, u32>,
    /// Pending barriers: epoch → (rank → request id).
    barriers: BTreeMap<u64, BTreeMap<u32, u64>>,
    /// The first rank that left without finalizing.
    departed_first: Option<u32>,
}

impl StoreState {
    /// An empty store for a job of `size` ranks.
    pub(crate) fn new(size: u32) -> Self {
        StoreState {
            size,
            ranks: vec![
                RankState {
                    presence: Presence::Absent,
                    next_epoch: 0,
                };
                size as usize
            ],
            values: HashMap::new(),
            waiting_gets: Vec::new(),
            waiting_gathers: Vec::new(),
            rank_keys: HashMap::new(),
            barriers: BTreeMap::new(),
            departed_first: None,
        }
    }

    /// Ranks in the job.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// The value stored under `key`, if any (what an observer reads).
    pub(crate) fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.values.get(key).cloned()
    }

    /// Registers an authenticated connection for `rank`.
    ///
    /// On success the shell sends [`Reply::Welcome`]; on refusal it sends the
    /// refusal as [`Reply::Error`] and closes that connection, leaving the
    /// rank's existing connection (if any) alone.
    pub(crate) fn connect(&mut self, rank: u32) -> Result<(), ConnectRefusal> {
        let size = self.size;
        let state = self
            .ranks
            .get_mut(rank as usize)
            .ok_or(ConnectRefusal::OutOfRange { rank, size })?;
        match state.presence {
            Presence::Connected => Err(ConnectRefusal::Duplicate { rank }),
            Presence::Departed => Err(ConnectRefusal::Rejoin { rank }),
            Presence::Absent | Presence::Finalized => {
                state.presence = Presence::Connected;
                Ok(())
            }
        }
    }

    /// Applies one request from `from` (which must be connected) and returns
    /// the replies to send, each with its destination rank.
    pub(crate) fn handle(&mut self, from: u32, frame: RequestFrame) -> Vec<(u32, ReplyFrame)> {
        let id = frame.id;
        let error = |reason: String| {
            vec![(
                from,
                ReplyFrame {
                    id,
                    reply: Reply::Error { reason },
                },
            )]
        };
        if self.presence(from) != Some(Presence::Connected) {
            return error(format!(
                "rank {from} sent a request without being connected to the rendezvous"
            ));
        }
        match frame.request {
            Request::Put { key, value } => self.put(from, id, key, value),
            Request::Get { key } => {
                if let Some(value) = self.values.get(&key) {
                    let reply = Reply::Value {
                        key,
                        value: value.clone(),
                    };
                    return vec![(from, ReplyFrame { id, reply })];
                }
                if let Some(gone) = self.departed_first {
                    return error(get_failure(gone, from, &key));
                }
                self.waiting_gets.push(WaitingGet {
                    rank: from,
                    id,
                    key,
                });
                Vec::new()
            }
            Request::Barrier { epoch } => self.barrier(from, id, epoch),
            Request::Gather {
                prefix,
                from: first,
            } => {
                if first >= self.size {
                    return error(format!(
                        "rank {from} gathered {prefix:?} from rank {first}, outside this job of {} ranks",
                        self.size
                    ));
                }
                let waiting = WaitingGather {
                    rank: from,
                    id,
                    prefix,
                    from: first,
                };
                if let Some(reply) = self.try_gather(&waiting) {
                    return vec![(from, reply)];
                }
                if let Some(gone) = self.departed_first {
                    return error(get_failure(gone, from, &self.first_missing(&waiting)));
                }
                self.waiting_gathers.push(waiting);
                Vec::new()
            }
            Request::Status => vec![(
                from,
                ReplyFrame {
                    id,
                    reply: Reply::Status(self.status()),
                },
            )],
            Request::Finalize => {
                if let Some(state) = self.ranks.get_mut(from as usize) {
                    state.presence = Presence::Finalized;
                }
                let mut out = vec![(
                    from,
                    ReplyFrame {
                        id,
                        reply: Reply::Done,
                    },
                )];
                out.extend(self.fail_unreachable_barriers());
                out
            }
        }
    }

    /// The connection of `rank` ended. Without a prior `Finalize` this fails
    /// the rendezvous: the returned replies answer every waiting `Get` and
    /// `Barrier` with an error that names `rank`.
    pub(crate) fn disconnected(&mut self, rank: u32) -> Vec<(u32, ReplyFrame)> {
        let Some(state) = self.ranks.get_mut(rank as usize) else {
            return Vec::new();
        };
        if state.presence != Presence::Connected {
            return Vec::new();
        }
        state.presence = Presence::Departed;
        let gone = *self.departed_first.get_or_insert(rank);
        let absent: Vec<u32> = (0..self.size)
            .filter(|&r| self.presence(r) == Some(Presence::Absent))
            .collect();
        let mut out: Vec<(u32, ReplyFrame)> = std::mem::take(&mut self.waiting_gets)
            .into_iter()
            .filter(|get| get.rank != rank)
            .map(|get| {
                let reason = get_failure(gone, get.rank, &get.key) + &never_arrived(&absent);
                (get.rank, error_frame(get.id, reason))
            })
            .collect();
        for gather in std::mem::take(&mut self.waiting_gathers) {
            if gather.rank != rank {
                let key = self.first_missing(&gather);
                let reason = get_failure(gone, gather.rank, &key) + &never_arrived(&absent);
                out.push((gather.rank, error_frame(gather.id, reason)));
            }
        }
        for (_, inside) in std::mem::take(&mut self.barriers) {
            for (waiter, id) in inside {
                if waiter != rank {
                    let reason = barrier_failure(gone) + &never_arrived(&absent);
                    out.push((waiter, error_frame(id, reason)));
                }
            }
        }
        out
    }

    /// Who is connected, gone and waiting in barriers.
    pub(crate) fn status(&self) -> StoreStatus {
        let with = |presence: Presence| -> Vec<u32> {
            (0..self.size)
                .filter(|&rank| self.presence(rank) == Some(presence))
                .collect()
        };
        StoreStatus {
            size: self.size,
            connected: with(Presence::Connected),
            finalized: with(Presence::Finalized),
            departed: with(Presence::Departed),
            barriers: self
                .barriers
                .iter()
                .map(|(&epoch, inside)| PendingBarrier {
                    epoch,
                    ranks: inside.keys().copied().collect(),
                })
                .collect(),
        }
    }

    fn presence(&self, rank: u32) -> Option<Presence> {
        self.ranks.get(rank as usize).map(|state| state.presence)
    }

    fn put(&mut self, from: u32, id: u64, key: String, value: Vec<u8>) -> Vec<(u32, ReplyFrame)> {
        if let Some(existing) = self.values.get(&key) {
            if *existing != value {
                let reason = format!(
                    "rank {from} put key {key:?} again with a different value; each key is written once, so give each rank its own key (e.g. \"name/{from}\")"
                );
                return vec![(from, error_frame(id, reason))];
            }
            return vec![(
                from,
                ReplyFrame {
                    id,
                    reply: Reply::Done,
                },
            )];
        }
        let mut out = vec![(
            from,
            ReplyFrame {
                id,
                reply: Reply::Done,
            },
        )];
        let (ready, waiting): (Vec<WaitingGet>, Vec<WaitingGet>) =
            std::mem::take(&mut self.waiting_gets)
                .into_iter()
                .partition(|get| get.key == key);
        self.waiting_gets = waiting;
        for get in ready {
            let reply = Reply::Value {
                key: key.clone(),
                value: value.clone(),
            };
            out.push((get.rank, ReplyFrame { id: get.id, reply }));
        }
        let prefix = match rank_key(&key) {
            Some((prefix, rank)) if rank < self.size => Some(prefix.to_string()),
            _ => None,
        };
        self.values.insert(key, value);
        if let Some(prefix) = prefix {
            let count = self.rank_keys.entry(prefix.clone()).or_insert(0);
            *count += 1;
            let count = *count;
            let size = self.size;
            let (ready, waiting): (Vec<WaitingGather>, Vec<WaitingGather>) =
                std::mem::take(&mut self.waiting_gathers)
                    .into_iter()
                    .partition(|gather| gather.prefix == prefix && count >= size - gather.from);
            self.waiting_gathers = waiting;
            for gather in ready {
                match self.try_gather(&gather) {
                    Some(reply) => out.push((gather.rank, reply)),
                    None => self.waiting_gathers.push(gather),
                }
            }
        }
        out
    }

    /// The reply to `gather` if all its keys are there: the values from its
    /// first rank on, as many as fit [`GATHER_BUDGET`] (at least one).
    fn try_gather(&self, gather: &WaitingGather) -> Option<ReplyFrame> {
        let mut values = Vec::new();
        let mut bytes = 0;
        for rank in gather.from..self.size {
            let value = self.values.get(&format!("{}/{rank}", gather.prefix))?;
            if values.is_empty() || bytes + value.len() + 16 <= GATHER_BUDGET {
                bytes += value.len() + 16;
                values.push(value);
            }
        }
        let values = values.into_iter().cloned().collect();
        Some(ReplyFrame {
            id: gather.id,
            reply: Reply::Values {
                from: gather.from,
                values,
            },
        })
    }

    /// The first key `gather` still waits for (for error messages).
    fn first_missing(&self, gather: &WaitingGather) -> String {
        (gather.from..self.size)
            .map(|rank| format!("{}/{rank}", gather.prefix))
            .find(|key| !self.values.contains_key(key))
            .unwrap_or_else(|| format!("{}/*", gather.prefix))
    }

    fn barrier(&mut self, from: u32, id: u64, epoch: u64) -> Vec<(u32, ReplyFrame)> {
        let Some(state) = self.ranks.get_mut(from as usize) else {
            return Vec::new();
        };
        if epoch != state.next_epoch {
            let reason = format!(
                "rank {from} entered barrier {epoch} but its next barrier is {}: the ranks' barrier calls are out of step",
                state.next_epoch
            );
            return vec![(from, error_frame(id, reason))];
        }
        state.next_epoch += 1;
        if let Some(gone) = self.departed_first {
            return vec![(from, error_frame(id, barrier_failure(gone)))];
        }
        let inside = self.barriers.entry(epoch).or_default();
        inside.insert(from, id);
        if inside.len() == self.size as usize {
            let inside = self.barriers.remove(&epoch).unwrap_or_default();
            return inside
                .into_iter()
                .map(|(rank, id)| {
                    let reply = Reply::BarrierDone { epoch };
                    (rank, ReplyFrame { id, reply })
                })
                .collect();
        }
        self.fail_unreachable_barriers()
    }

    /// Fails barriers that a finalized rank never entered: they cannot complete.
    fn fail_unreachable_barriers(&mut self) -> Vec<(u32, ReplyFrame)> {
        let mut out = Vec::new();
        let epochs: Vec<u64> = self.barriers.keys().copied().collect();
        for epoch in epochs {
            let quitter = (0..self.size).find(|&rank| {
                self.ranks.get(rank as usize).is_some_and(|state| {
                    state.presence == Presence::Finalized && state.next_epoch <= epoch
                })
            });
            let Some(quitter) = quitter else { continue };
            for (rank, id) in self.barriers.remove(&epoch).unwrap_or_default() {
                let reason = format!(
                    "rank {quitter} finalized its rendezvous without entering barrier {epoch}, so the barrier cannot complete; every rank must make the same barrier calls"
                );
                out.push((rank, error_frame(id, reason)));
            }
        }
        out
    }
}

fn error_frame(id: u64, reason: String) -> ReplyFrame {
    ReplyFrame {
        id,
        reply: Reply::Error { reason },
    }
}

fn barrier_failure(gone: u32) -> String {
    format!(
        "rank {gone} left the rendezvous before the barrier: it probably crashed; see its output"
    )
}

/// The tail of a failure message when some ranks never connected: then the
/// rank that left most likely gave up waiting for them (its own timeout).
fn never_arrived(absent: &[u32]) -> String {
    match absent {
        [] => String::new(),
        [rank] => format!(" (rank {rank} never arrived, so it probably gave up waiting for it)"),
        ranks => {
            format!(" (ranks {ranks:?} never arrived, so it probably gave up waiting for them)")
        }
    }
}

fn get_failure(gone: u32, waiter: u32, key: &str) -> String {
    format!(
        "rank {gone} left the rendezvous while rank {waiter} waited for key {key:?}: it probably crashed; see its output"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, request: Request) -> RequestFrame {
        RequestFrame { id, request }
    }

    fn put(key: &str, value: &[u8]) -> Request {
        Request::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    fn get(key: &str) -> Request {
        Request::Get { key: key.into() }
    }

    fn connected(size: u32) -> StoreState {
        let mut store = StoreState::new(size);
        for rank in 0..size {
            assert_eq!(store.connect(rank), Ok(()));
        }
        store
    }

    fn error_text(reply: &ReplyFrame) -> &str {
        match &reply.reply {
            Reply::Error { reason } => reason,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn gather(prefix: &str, from: u32) -> Request {
        Request::Gather {
            prefix: prefix.into(),
            from,
        }
    }

    #[test]
    fn gather_waits_for_every_rank_then_answers_in_frames() {
        let mut store = connected(3);
        assert_eq!(store.handle(0, frame(1, put("ep/0", b"zero"))).len(), 1);
        assert!(store.handle(0, frame(2, gather("ep", 0))).is_empty());
        // Keys of other prefixes and of ranks outside the job do not count.
        assert_eq!(store.handle(1, frame(3, put("ep/7", b"x"))).len(), 1);
        assert_eq!(store.handle(1, frame(4, put("other/1", b"x"))).len(), 1);
        assert_eq!(store.handle(1, frame(5, put("ep/1", b"one"))).len(), 1);
        let out = store.handle(2, frame(6, put("ep/2", b"two")));
        let values = Reply::Values {
            from: 0,
            values: vec![b"zero".to_vec(), b"one".to_vec(), b"two".to_vec()],
        };
        assert_eq!(
            out[1],
            (
                0,
                ReplyFrame {
                    id: 2,
                    reply: values
                }
            )
        );
        // Present now: answered at once, from any first rank.
        let out = store.handle(1, frame(7, gather("ep", 2)));
        let tail = Reply::Values {
            from: 2,
            values: vec![b"two".to_vec()],
        };
        assert_eq!(out, vec![(1, ReplyFrame { id: 7, reply: tail })]);
        assert!(error_text(&store.handle(1, frame(8, gather("ep", 3)))[0].1).contains("outside"));

        // A table above one frame comes in pieces, each at least one value.
        let mut big = connected(3);
        let chunk = vec![5u8; GATHER_BUDGET / 2];
        for rank in 0..3 {
            big.handle(rank, frame(1, put(&format!("b/{rank}"), &chunk)));
        }
        match &big.handle(0, frame(2, gather("b", 0)))[0].1.reply {
            Reply::Values { from: 0, values } => assert_eq!(values.len(), 1),
            other => panic!("expected values, got {other:?}"),
        }
    }

    #[test]
    fn gather_fails_when_a_rank_leaves() {
        let mut store = connected(3);
        store.handle(0, frame(1, put("ep/0", b"a")));
        assert!(store.handle(0, frame(2, gather("ep", 0))).is_empty());
        let out = store.disconnected(2);
        assert_eq!(out.len(), 1);
        let text = error_text(&out[0].1);
        assert!(
            text.contains("rank 2 left") && text.contains("ep/1"),
            "{text}"
        );
    }

    #[test]
    fn get_waits_for_put_and_every_request_is_answered_once() {
        let mut store = connected(3);
        assert!(store.handle(1, frame(10, get("a"))).is_empty());
        assert!(store.handle(2, frame(20, get("a"))).is_empty());
        let out = store.handle(0, frame(1, put("a", b"xyz")));
        let value = Reply::Value {
            key: "a".into(),
            value: b"xyz".to_vec(),
        };
        assert_eq!(
            out,
            vec![
                (
                    0,
                    ReplyFrame {
                        id: 1,
                        reply: Reply::Done
                    }
                ),
                (
                    1,
                    ReplyFrame {
                        id: 10,
                        reply: value.clone()
                    }
                ),
                (
                    2,
                    ReplyFrame {
                        id: 20,
                        reply: value.clone()
                    }
                ),
            ]
        );
        // Later gets are answered at once; an identical second put is fine,
        // a different one is refused.
        assert_eq!(store.handle(1, frame(11, get("a")))[0].1.reply, value);
        assert_eq!(
            store.handle(2, frame(21, put("a", b"xyz")))[0].1.reply,
            Reply::Done
        );
        let refused = store.handle(2, frame(22, put("a", b"other")));
        assert!(error_text(&refused[0].1).contains("rank 2 put key \"a\" again"));
    }

    #[test]
    fn barrier_completes_when_all_entered() {
        let mut store = connected(3);
        assert!(store
            .handle(0, frame(1, Request::Barrier { epoch: 0 }))
            .is_empty());
        assert!(store
            .handle(2, frame(2, Request::Barrier { epoch: 0 }))
            .is_empty());
        let status = store.status();
        assert_eq!(
            status.barriers,
            vec![PendingBarrier {
                epoch: 0,
                ranks: vec![0, 2]
            }]
        );
        assert_eq!(status.missing_from_barrier(0), vec![1]);
        let mut out = store.handle(1, frame(3, Request::Barrier { epoch: 0 }));
        out.sort_by_key(|(rank, _)| *rank);
        let done = |id| ReplyFrame {
            id,
            reply: Reply::BarrierDone { epoch: 0 },
        };
        assert_eq!(out, vec![(0, done(1)), (1, done(3)), (2, done(2))]);
        assert!(store.status().barriers.is_empty());
        // Epochs must come in order.
        let out = store.handle(0, frame(4, Request::Barrier { epoch: 5 }));
        assert!(error_text(&out[0].1).contains("out of step"));
    }

    #[test]
    fn duplicate_and_out_of_range_ranks_are_refused() {
        let mut store = StoreState::new(2);
        assert_eq!(store.connect(1), Ok(()));
        assert_eq!(store.connect(1), Err(ConnectRefusal::Duplicate { rank: 1 }));
        assert_eq!(
            store.connect(2),
            Err(ConnectRefusal::OutOfRange { rank: 2, size: 2 })
        );
        // The refused duplicate did not disturb the first connection.
        assert_eq!(store.status().connected, vec![1]);
        assert!(ConnectRefusal::Duplicate { rank: 1 }
            .to_string()
            .contains("already connected"));
    }

    #[test]
    fn a_rank_giving_up_on_absent_ones_says_so() {
        // Ranks 0..3 of 5 arrive, 3 and 4 never do; rank 1 times out and leaves.
        let mut store = StoreState::new(5);
        for rank in 0..3 {
            assert_eq!(store.connect(rank), Ok(()));
        }
        assert!(store
            .handle(0, frame(1, Request::Barrier { epoch: 0 }))
            .is_empty());
        let out = store.disconnected(1);
        assert_eq!(out.len(), 1);
        assert_eq!(
            error_text(&out[0].1),
            "rank 1 left the rendezvous before the barrier: it probably crashed; see its output (ranks [3, 4] never arrived, so it probably gave up waiting for them)"
        );
    }

    #[test]
    fn crash_fails_waiting_barrier_and_gets_naming_the_rank() {
        let mut store = connected(4);
        assert!(store
            .handle(0, frame(1, Request::Barrier { epoch: 0 }))
            .is_empty());
        assert!(store
            .handle(1, frame(2, Request::Barrier { epoch: 0 }))
            .is_empty());
        assert!(store.handle(2, frame(3, get("ep/3"))).is_empty());
        let mut out = store.disconnected(3);
        out.sort_by_key(|(rank, _)| *rank);
        assert_eq!(out.len(), 3);
        assert_eq!(
            error_text(&out[0].1),
            "rank 3 left the rendezvous before the barrier: it probably crashed; see its output"
        );
        assert_eq!(out[1].1.id, 2);
        assert!(error_text(&out[2].1)
            .contains("rank 3 left the rendezvous while rank 2 waited for key \"ep/3\""));
        // Later requests that cannot be answered fail at once.
        let late = store.handle(2, frame(4, Request::Barrier { epoch: 0 }));
        assert!(error_text(&late[0].1).starts_with("rank 3 left"));
        let late = store.handle(2, frame(5, get("missing")));
        assert!(error_text(&late[0].1).starts_with("rank 3 left"));
        // The crashed rank cannot come back.
        assert_eq!(store.connect(3), Err(ConnectRefusal::Rejoin { rank: 3 }));
        assert_eq!(store.status().departed, vec![3]);
    }

    #[test]
    fn finalized_ranks_leave_quietly() {
        let mut store = connected(2);
        assert!(store.handle(0, frame(1, put("k", b"v"))).len() == 1);
        assert_eq!(
            store.handle(0, frame(2, Request::Finalize))[0].1.reply,
            Reply::Done
        );
        assert!(store.disconnected(0).is_empty());
        let status = store.status();
        assert_eq!((status.connected, status.finalized), (vec![1], vec![0]));
        assert!(matches!(
            store.handle(1, frame(3, get("k")))[0].1.reply,
            Reply::Value { .. }
        ));
        // ... but a barrier the finalized rank never entered fails.
        let out = store.handle(1, frame(4, Request::Barrier { epoch: 0 }));
        assert!(error_text(&out[0].1).contains("rank 0 finalized"));
    }

    #[test]
    fn finalize_fails_barriers_already_waiting() {
        let mut store = connected(2);
        assert!(store
            .handle(1, frame(1, Request::Barrier { epoch: 0 }))
            .is_empty());
        let out = store.handle(0, frame(2, Request::Finalize));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].0, 1);
        assert!(error_text(&out[1].1).contains("without entering barrier 0"));
    }

    #[test]
    fn status_lists_who_never_arrived() {
        let mut store = StoreState::new(6);
        for rank in [0, 1, 3, 4] {
            assert_eq!(store.connect(rank), Ok(()));
        }
        let out = store.handle(0, frame(1, Request::Status));
        match &out[0].1.reply {
            Reply::Status(status) => {
                assert_eq!(status.never_arrived(), vec![2, 5]);
                assert_eq!(status.connected, vec![0, 1, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
        // Requests from a rank that is not connected are refused.
        assert!(error_text(&store.handle(2, frame(1, Request::Status))[0].1)
            .contains("without being connected"));
    }
}

/// The examples of this module's docs, as tests (their items are crate-private).
#[cfg(test)]
mod examples {
    use super::StoreState;
    use crate::wire::{Reply, Request, RequestFrame};

    #[test]
    fn store_state_answers_a_get_after_a_put() {
        let mut store = StoreState::new(2);
        store.connect(0).unwrap();
        store.connect(1).unwrap();
        let put = RequestFrame {
            id: 1,
            request: Request::Put {
                key: "k".into(),
                value: b"v".to_vec(),
            },
        };
        assert_eq!(store.handle(0, put)[0].1.reply, Reply::Done);
        let get = RequestFrame {
            id: 7,
            request: Request::Get { key: "k".into() },
        };
        let replies = store.handle(1, get);
        assert_eq!(replies[0].0, 1);
        assert_eq!(
            replies[0].1.reply,
            Reply::Value {
                key: "k".into(),
                value: b"v".to_vec()
            }
        );
    }
}
