//! Objects: the glue between the reference table and the world (holding,
//! releasing and registering references, settling the table's effects),
//! `put`, `get` and `wait` on owned and borrowed objects, futures' wakers,
//! and the copies of stored values on other nodes (where to pull from,
//! reporting a pulled copy, deleting every copy when the object is freed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lumen_transport::{Rank, TransportError};

use super::failures::owner_died;
use super::{runtime_error, Inner, Reply, State, WAIT_SLICE};
use crate::error::{LumenError, Result};
use crate::runtime::error::{RuntimeError, TaskError, TaskErrorKind};
use crate::runtime::ids::ObjectId;
use crate::runtime::protocol::{Outcome, RtMsg};
use crate::runtime::refs::{Effect, ObjectState};
use crate::runtime::store::FetchError;
use crate::runtime::store::{Bytes, Moved};
use crate::runtime::timeline;

/// How long a reader asks again for a value lost with its rank (the
/// owner may be rebuilding it, see `lineage`).
const REBUILD_WAIT: Duration = Duration::from_secs(30);

impl Inner {
    /// (owner) `borrower` holds `count` more references to `object`;
    /// acknowledged when the sender waits for it (`request`).
    pub(super) fn on_add_borrower(
        self: &Arc<Self>,
        src: Rank,
        object: ObjectId,
        borrower: Rank,
        count: u32,
        request: Option<u64>,
    ) {
        let result = self.lock().refs.add_borrower(object, borrower, count);
        if let Err(e) = &result {
            tracing::error!(rank = self.rank, "{e}");
        }
        if let Some(request) = request {
            let error = result.err().map(|e| e.to_string());
            self.send_or_log(src, &RtMsg::Ack { request, error });
        }
    }

    /// (owner) `borrower` dropped `count` references to `object`.
    pub(super) fn on_remove_borrower(
        self: &Arc<Self>,
        object: ObjectId,
        borrower: Rank,
        count: u32,
    ) {
        let effects = self.lock().refs.remove_borrower(object, borrower, count);
        self.apply(effects);
    }

    /// (owner) A borrower asks for `object`'s value: answered now when it is
    /// ready, when the task completes otherwise.
    pub(super) fn on_get_value(self: &Arc<Self>, src: Rank, object: ObjectId, request: u64) {
        let reply = {
            let mut s = self.lock();
            match s.refs.state(object) {
                // A lost value (not rebuilt) answers as `ObjectLost`.
                Some(ObjectState::Ready(_)) => {
                    let outcome = self.ready_outcome(&mut s, object).0;
                    outcome.map(|outcome| (outcome, s.refs.copies(object)))
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

    /// (borrower) The owner's answer to a `GetValue`.
    pub(super) fn on_value(&self, request: u64, outcome: Outcome, copies: Vec<Rank>) {
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

    /// (owner) `holder` pulled a copy of `object` (stored by `rank` under
    /// `key`) into its node's arena; a copy of a freed object is deleted.
    pub(super) fn on_add_copy(
        self: &Arc<Self>,
        src: Rank,
        object: ObjectId,
        holder: Rank,
        rank: Rank,
        key: u64,
    ) {
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

    pub(super) fn hold_all(&self, refs: &[ObjectId]) {
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
    pub(super) fn apply(self: &Arc<Self>, effects: Vec<Effect>) {
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
    pub(super) fn settle(s: &mut State, effects: Vec<Effect>) -> Vec<Effect> {
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
                    // Stored values are deleted after the lock; every free
                    // also tells the device plane (its blocks of `object`).
                    io.push(Effect::Free {
                        object,
                        outcome,
                        contained: Vec::new(),
                        copies,
                    });
                }
                Effect::RemoveBorrower { object, count } => {
                    s.remote_values.remove(&object);
                    s.remote_copies.remove(&object);
                    // Pushed also for a dead owner: the device plane drops
                    // this rank's copies (no message then).
                    io.push(Effect::RemoveBorrower { object, count });
                }
                Effect::ActorUnreferenced { actor } => {
                    io.push(Effect::ActorUnreferenced { actor });
                }
            }
        }
        io
    }

    /// The part of settled effects that runs without the state lock.
    pub(super) fn carry_out(self: &Arc<Self>, io: Vec<Effect>) {
        for effect in io {
            match effect {
                Effect::Free {
                    object,
                    outcome,
                    copies,
                    ..
                } => {
                    self.devices.released(object);
                    self.lineage.forget(object);
                    if let Some(Outcome::Stored {
                        rank, key, arena, ..
                    }) = outcome
                    {
                        self.delete_copies(rank, key, arena, &copies);
                    }
                }
                Effect::ActorUnreferenced { actor } => self.retire_actor(actor),
                Effect::RemoveBorrower { object, count } => {
                    self.devices.released(object);
                    if !self.is_dead(object.owner) {
                        self.send_or_log(
                            object.owner,
                            &RtMsg::RemoveBorrower {
                                object,
                                borrower: self.rank,
                                count,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Deletes every copy of a freed value stored by `rank` under `key`:
    /// the primary and the secondary copies pulled by `copies`, one release
    /// per node (any rank of a node may release what its arena holds, also
    /// when the rank that stored or pulled it has died).
    pub(super) fn delete_copies(
        self: &Arc<Self>,
        rank: Rank,
        key: u64,
        arena: bool,
        copies: &[Rank],
    ) {
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

    /// Whether a value stored by `rank` (in its node's arena, or in its
    /// own memory) can no longer be read: its rank is dead and, for an
    /// arena value, so is every rank of its node (the arena outlives a rank).
    pub(super) fn copy_gone(
        &self,
        dead: &std::collections::HashSet<Rank>,
        rank: Rank,
        arena: bool,
    ) -> bool {
        if !dead.contains(&rank) {
            return false;
        }
        if !arena {
            return true;
        }
        let node = self.node_of(rank);
        self.ranks
            .iter()
            .filter(|r| Some(r.node) == node)
            .all(|r| dead.contains(&r.rank))
    }

    pub(super) fn node_of(&self, rank: Rank) -> Option<u32> {
        self.ranks.get(rank as usize).map(|r| r.node)
    }

    /// `preferred` if alive, else some live rank of `node`.
    pub(super) fn live_rank_on(&self, node: u32, preferred: Rank) -> Option<Rank> {
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
    pub(super) fn pull_sources(&self, rank: Rank, copies: &[Rank]) -> Vec<Rank> {
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
    pub(super) fn report_copy(self: &Arc<Self>, object: ObjectId, rank: Rank, key: u64) {
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
    pub(super) fn drop_handle_locked(&self, s: &mut State, object: ObjectId) -> Vec<Effect> {
        let effects = s.refs.handle_dropped(object);
        if object.owner != self.rank && !s.refs.borrows(object) {
            s.remote_values.remove(&object);
            s.remote_copies.remove(&object);
        }
        effects
    }

    /// Registers `to` as a borrower of each of `refs` before a message
    /// carrying them leaves (see `refs`): locally for ours, with an
    /// acknowledged request to the owner for borrowed ones.
    pub(super) fn register(self: &Arc<Self>, refs: &[ObjectId], to: Rank) -> Result<()> {
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

    /// Stores a value owned by this rank (`put`). References inside the
    /// value are registered for this rank and held while the object lives.
    pub(crate) fn put_bytes(
        self: &Arc<Self>,
        bytes: &[u8],
        refs: Vec<ObjectId>,
    ) -> Result<ObjectId> {
        if let Some(limit) = self
            .limits
            .max_object_bytes
            .filter(|&l| bytes.len() as u64 > l)
        {
            return Err(runtime_error(RuntimeError::ObjectTooLarge {
                what: "the value put".into(),
                bytes: bytes.len() as u64,
                limit,
            }));
        }
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

    /// The value of `object`, waiting for it (see `ObjectRef::get`). A
    /// value lost with its rank while being read is asked for again, for a
    /// while: its owner may be rebuilding it (see `lineage`).
    pub(crate) fn fetch(
        self: &Arc<Self>,
        object: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Bytes> {
        let started = Instant::now();
        loop {
            match self.fetch_once(object, timeout) {
                Err(LumenError::Runtime(RuntimeError::RankDied { rank, what }))
                    if started.elapsed() < REBUILD_WAIT =>
                {
                    let rebuilding = {
                        let mut s = self.lock();
                        if object.owner == self.rank {
                            matches!(s.refs.state(object), Some(ObjectState::Pending))
                        } else {
                            // Ask the owner again (it may not know yet).
                            s.remote_values.remove(&object);
                            !s.dead.contains(&object.owner)
                        }
                    };
                    if !rebuilding {
                        return Err(runtime_error(RuntimeError::RankDied { rank, what }));
                    }
                    if object.owner != self.rank {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                other => return other,
            }
        }
    }

    fn fetch_once(self: &Arc<Self>, object: ObjectId, timeout: Option<Duration>) -> Result<Bytes> {
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
                let started = timeline::on().then(timeline::now_us);
                let fetched = self.blocking(|| self.store.fetch(rank, key, len, arena, &sources));
                if let Ok((_, true, _)) = &fetched {
                    self.report_copy(object, rank, key);
                }
                if let Ok((_, _, Moved::From(source, how))) = &fetched {
                    self.fetched.add(how, len);
                    if let Some(started) = started {
                        timeline::transfer(how, len, object, *source, started);
                    }
                }
                fetched.map(|(bytes, _, _)| bytes).map_err(|e| match e {
                    FetchError::Transport(
                        TransportError::PeerDied { .. } | TransportError::PeerClosed { .. },
                    ) => runtime_error(RuntimeError::RankDied {
                        rank,
                        what: format!("fetching {object}, whose only copy was there,"),
                    }),
                    // A read from a rank known dead by now is its death too.
                    FetchError::Transport(TransportError::GetFailed { .. })
                        if self.is_dead(rank) =>
                    {
                        runtime_error(RuntimeError::RankDied {
                            rank,
                            what: format!("fetching {object}, whose only copy was there,"),
                        })
                    }
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
    pub(super) fn request_value(&self, s: &mut State, object: ObjectId) -> Option<RtMsg> {
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

    pub(super) fn ready_outcome(
        &self,
        s: &mut State,
        object: ObjectId,
    ) -> (Option<Outcome>, Option<RtMsg>) {
        if object.owner == self.rank {
            return match s.refs.state(object) {
                Some(ObjectState::Ready(Outcome::Stored { rank, arena, .. }))
                    if self.copy_gone(&s.dead, *rank, *arena)
                        && s.refs
                            .copies(object)
                            .iter()
                            .all(|&c| self.copy_gone(&s.dead, c, true)) =>
                {
                    let message = format!(
                        "{object}'s only copy was on {} and it is not rebuilt (a put value, an actor result, out of retries, or made when the lineage was full: LUMEN_LINEAGE_BYTES)",
                        s.dead_why
                            .get(rank)
                            .cloned()
                            .unwrap_or_else(|| format!("rank {rank}, which died"))
                    );
                    (
                        Some(Outcome::Failed(TaskError {
                            function: String::new(),
                            rank: *rank,
                            kind: TaskErrorKind::ObjectLost,
                            message,
                        })),
                        None,
                    )
                }
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

    pub(super) fn wait_outcome(
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
            let mut spin = self.spin_clock();
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
                s = self.pause(s, &mut spin, slice);
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

    pub(super) fn wake(&self, object: ObjectId) {
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

    pub(super) fn wake_all(&self) {
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
    pub(super) fn readiness(&self, s: &mut State, object: ObjectId) -> (bool, Option<RtMsg>) {
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
            let mut spin = self.spin_clock();
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
                s = self.pause(s, &mut spin, slice);
            }
        })
    }
}
