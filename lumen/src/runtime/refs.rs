//! Ownership and reference counting: the pure state machine behind
//! `ObjectRef` (no IO; the runtime feeds it events and carries out the
//! [`Effect`]s it returns).
//!
//! The design follows Ray's ownership model (Wang et al., "Ownership: A
//! Distributed Futures System for Fine-Grained Tasks", NSDI '21): the rank
//! that creates an object (by `put` or by submitting the task that computes
//! it) **owns** it and alone decides when it is freed; other ranks that hold
//! references are **borrowers**, known to the owner.
//!
//! # Counts
//! - Owned entry: `handles` (live `ObjectRef` handles on the owner: the
//!   clones of one `ObjectRef` share a handle, see `object_ref`) and
//!   `borrowers` (rank → registrations). Freed, exactly once, when both are
//!   zero. The entry then disappears; a result that arrives for a freed
//!   pending object is freed on arrival.
//! - Borrowed entry: `handles`, `holds` (messages being processed that
//!   carried the reference: a task's arguments while it runs, a stored value
//!   that contains it) and `registrations` (how many times some rank
//!   registered this rank with the owner). When handles and holds reach
//!   zero, one `RemoveBorrower { count: registrations }` goes to the owner.
//!
//! # Passing a reference (how the counts stay safe)
//! The *sender* registers the *receiver* before the reference leaves: an
//! owner adds the receiver to its own borrowers; a borrower asks the owner
//! to add it and waits for the acknowledgement. The receiver takes a hold
//! when the message arrives and gives it back when done with the message.
//! So at every instant some registration covers every reference in flight,
//! without the ordering problem of a borrower that forwards a reference and
//! drops its own before the new holder's registration reaches the owner.
//! This costs one round trip to the owner when a borrower forwards a
//! reference (Ray instead reports nested borrowers in task replies, which
//! saves that trip but is more machinery). References inside a task's
//! *result* work the same way: the executing rank registers the task's
//! owner, which holds them as long as the result object lives.
//!
//! A rank that dies loses all its registrations ([`RefTable::rank_died`]).
//!
//! # Actor handles
//! An actor's handles are counted the same way, under an id of its own
//! ([`ObjectId::handles_of`]) owned by the actor's creator: every
//! `ActorHandle` of an unnamed actor carries a counted reference to it, so
//! cloning, passing (registration of the receiver first) and dropping
//! handles anywhere update these counts exactly as for objects, and a
//! caller also holds one while each of its calls is in flight. When the
//! count reaches zero the table returns [`Effect::ActorUnreferenced`]
//! instead of `Free`: no handle is left and every call has completed, so
//! the runtime stops the actor (Ray's actor garbage collection).
//!
//! # Copies
//! The owner also knows where an object's bytes are: the location in its
//! [`ObjectState::Ready`] outcome (the primary copy) and the ranks that
//! pulled a secondary copy into their node's arena ([`RefTable::add_copy`],
//! reported by the puller while it still holds a reference, so the report
//! reaches the owner before the puller's registration can be dropped). The
//! `Free` effect lists them all, and the runtime deletes every copy. A
//! report for an object already freed is refused, and the runtime deletes
//! that late copy at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use lumen_transport::Rank;

use super::ids::{ActorId, ObjectId};
use super::protocol::Outcome;

/// Hashes ids (a rank and a sequence number, or a few such words) with
/// FxHash's multiply-rotate step (rustc's `FxHasher`): a lookup in the
/// tables keyed by object id is on every submit, reply, `get`, `wait` and
/// reference drop, and SipHash (std's default, built against flooding by
/// untrusted keys) cost more than the rest of the lookup. Ids come from
/// this job's authenticated ranks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
}

/// A map keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// State of an owned object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ObjectState {
    /// Its task has not reported yet.
    Pending,
    /// Its value (or failure) is known.
    Ready(Outcome),
}

#[derive(Debug)]
struct Owned {
    handles: u32,
    borrowers: BTreeMap<Rank, u32>,
    state: ObjectState,
    /// Objects referenced by the value; released when this one is freed.
    contained: Vec<ObjectId>,
    /// Ranks that pulled a secondary copy into their node's arena.
    copies: BTreeSet<Rank>,
}

#[derive(Debug, Default)]
struct Borrowed {
    handles: u32,
    holds: u32,
    registrations: u32,
}

/// What the runtime must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// An owned object is free: release its stored value (if any) and every
    /// secondary copy (on the nodes of `copies`), and give back one hold on
    /// each object it contained (call [`RefTable::release`]).
    Free {
        object: ObjectId,
        outcome: Option<Outcome>,
        contained: Vec<ObjectId>,
        copies: Vec<Rank>,
    },
    /// Tell `object.owner` this rank dropped `count` registrations.
    RemoveBorrower { object: ObjectId, count: u32 },
    /// (Creator) no handle of `actor` is left anywhere and none of its
    /// calls is in flight: stop it.
    ActorUnreferenced { actor: ActorId },
}

/// A misuse of the protocol reported by a peer (logged, never a panic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefError {
    /// A borrower registration for an object that is already freed.
    #[error("{0} was already freed when a borrower registered; the reference was not covered by a registration")]
    AlreadyFreed(ObjectId),
    /// A copy reported for an object that is already freed.
    #[error("a copy of {0} was reported after the object was freed")]
    CopyOfFreed(ObjectId),
}

/// One rank's reference table.
#[derive(Debug)]
pub(crate) struct RefTable {
    me: Rank,
    owned: IdMap<ObjectId, Owned>,
    borrowed: IdMap<ObjectId, Borrowed>,
    freed: u64,
}

impl RefTable {
    /// An empty table for rank `me`.
    pub(crate) fn new(me: Rank) -> Self {
        RefTable {
            me,
            owned: IdMap::default(),
            borrowed: IdMap::default(),
            freed: 0,
        }
    }

    /// A new owned object with one handle (the `ObjectRef` just returned).
    pub(crate) fn create(&mut self, object: ObjectId, state: ObjectState) {
        debug_assert_eq!(object.owner, self.me);
        self.owned.insert(
            object,
            Owned {
                handles: 1,
                borrowers: BTreeMap::new(),
                state,
                contained: Vec::new(),
                copies: BTreeSet::new(),
            },
        );
    }

    /// (Creator) starts counting the handles of `actor`, with one handle
    /// (the `ActorHandle` just returned).
    pub(crate) fn create_actor_handles(&mut self, actor: ActorId) -> ObjectId {
        let id = ObjectId::handles_of(actor);
        self.create(id, ObjectState::Ready(Outcome::Inline(Vec::new())));
        id
    }

    /// State of an owned object; `None` when not owned here or freed.
    pub(crate) fn state(&self, object: ObjectId) -> Option<&ObjectState> {
        self.owned.get(&object).map(|o| &o.state)
    }

    /// A new `ObjectRef` (clone or deserialisation) on this rank.
    pub(crate) fn handle_added(&mut self, object: ObjectId) {
        if object.owner == self.me {
            if let Some(entry) = self.owned.get_mut(&object) {
                entry.handles += 1;
            }
            // A handle to a freed object (deserialised from stale bytes) is
            // not counted: its `get` fails.
        } else {
            self.borrowed.entry(object).or_default().handles += 1;
        }
    }

    /// An `ObjectRef` dropped on this rank.
    pub(crate) fn handle_dropped(&mut self, object: ObjectId) -> Vec<Effect> {
        if object.owner == self.me {
            match self.owned.get_mut(&object) {
                Some(entry) if entry.handles > 0 => entry.handles -= 1,
                _ => return Vec::new(),
            }
            self.check_owned(object)
        } else {
            match self.borrowed.get_mut(&object) {
                Some(entry) if entry.handles > 0 => entry.handles -= 1,
                _ => return Vec::new(),
            }
            self.check_borrowed(object)
        }
    }

    /// (Owner) `borrower` now holds `count` more registrations.
    pub(crate) fn add_borrower(
        &mut self,
        object: ObjectId,
        borrower: Rank,
        count: u32,
    ) -> Result<(), RefError> {
        let entry = self
            .owned
            .get_mut(&object)
            .ok_or(RefError::AlreadyFreed(object))?;
        *entry.borrowers.entry(borrower).or_insert(0) += count;
        Ok(())
    }

    /// (Owner) `borrower` dropped `count` registrations.
    pub(crate) fn remove_borrower(
        &mut self,
        object: ObjectId,
        borrower: Rank,
        count: u32,
    ) -> Vec<Effect> {
        let Some(entry) = self.owned.get_mut(&object) else {
            return Vec::new();
        };
        if let Some(held) = entry.borrowers.get_mut(&borrower) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                entry.borrowers.remove(&borrower);
            }
        }
        self.check_owned(object)
    }

    /// (Owner) `holder` pulled a secondary copy of `object` into its node's
    /// arena. Refused when the object is already freed (the caller then
    /// deletes that copy itself).
    pub(crate) fn add_copy(&mut self, object: ObjectId, holder: Rank) -> Result<(), RefError> {
        let entry = self
            .owned
            .get_mut(&object)
            .ok_or(RefError::CopyOfFreed(object))?;
        entry.copies.insert(holder);
        Ok(())
    }

    /// (Owner) the ranks that reported secondary copies of `object`.
    pub(crate) fn copies(&self, object: ObjectId) -> Vec<Rank> {
        self.owned
            .get(&object)
            .map(|e| e.copies.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A message carrying a reference to `object` arrived, and its sender
    /// registered this rank: hold it until [`RefTable::release`].
    pub(crate) fn hold(&mut self, object: ObjectId) {
        if object.owner == self.me {
            // The sender registered us in our own borrower list; that
            // registration is the hold.
            return;
        }
        let entry = self.borrowed.entry(object).or_default();
        entry.holds += 1;
        entry.registrations += 1;
    }

    /// Gives back a hold taken by [`RefTable::hold`].
    pub(crate) fn release(&mut self, object: ObjectId) -> Vec<Effect> {
        if object.owner == self.me {
            let me = self.me;
            return self.remove_borrower(object, me, 1);
        }
        match self.borrowed.get_mut(&object) {
            Some(entry) if entry.holds > 0 => entry.holds -= 1,
            _ => return Vec::new(),
        }
        self.check_borrowed(object)
    }

    /// (Owner) the task computing `object` finished. `contained` are the
    /// objects its value references (this rank was registered for each).
    /// Returns effects: a `Free` when nobody wanted the result any more.
    pub(crate) fn complete(
        &mut self,
        object: ObjectId,
        outcome: Outcome,
        contained: Vec<ObjectId>,
    ) -> Vec<Effect> {
        for &inner in &contained {
            self.hold(inner);
        }
        match self.owned.get_mut(&object) {
            Some(entry) if entry.state == ObjectState::Pending => {
                entry.state = ObjectState::Ready(outcome);
                entry.contained = contained;
                Vec::new()
            }
            // Freed before its result came, or a duplicate report (a retried
            // task whose first attempt was not dead after all): free what came.
            _ => {
                self.freed += 1;
                vec![Effect::Free {
                    object,
                    outcome: Some(outcome),
                    contained,
                    copies: Vec::new(),
                }]
            }
        }
    }

    /// Owned objects whose stored value and every secondary copy are gone
    /// (`gone(rank, arena)`: that rank's copy can no longer be read): lost
    /// unless rebuilt (lineage, see `core::lineage`).
    pub(crate) fn lost_with(&self, gone: impl Fn(Rank, bool) -> bool) -> Vec<ObjectId> {
        let mut lost: Vec<ObjectId> = self
            .owned
            .iter()
            .filter(|(_, entry)| match &entry.state {
                ObjectState::Ready(Outcome::Stored { rank, arena, .. }) => {
                    gone(*rank, *arena) && entry.copies.iter().all(|&c| gone(c, true))
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        lost.sort();
        lost
    }

    /// Object `object`'s value is lost and will be computed again: it is
    /// pending again, its copies and the holds of what its value contained
    /// go (the new value's come with it). Returns those releases' effects.
    pub(crate) fn rebuild(&mut self, object: ObjectId) -> Vec<Effect> {
        let contained = match self.owned.get_mut(&object) {
            Some(entry) if matches!(entry.state, ObjectState::Ready(_)) => {
                entry.state = ObjectState::Pending;
                entry.copies.clear();
                std::mem::take(&mut entry.contained)
            }
            _ => return Vec::new(),
        };
        contained
            .into_iter()
            .flat_map(|id| self.release(id))
            .collect()
    }

    /// `rank` died: its registrations are gone.
    pub(crate) fn rank_died(&mut self, rank: Rank) -> Vec<Effect> {
        let affected: Vec<ObjectId> = self
            .owned
            .iter_mut()
            .filter_map(|(id, entry)| entry.borrowers.remove(&rank).map(|_| *id))
            .collect();
        affected
            .into_iter()
            .flat_map(|id| self.check_owned(id))
            .collect()
    }

    fn check_owned(&mut self, object: ObjectId) -> Vec<Effect> {
        let free = self
            .owned
            .get(&object)
            .is_some_and(|e| e.handles == 0 && e.borrowers.is_empty());
        if !free {
            return Vec::new();
        }
        let Some(entry) = self.owned.remove(&object) else {
            return Vec::new();
        };
        if let Some(actor) = object.counted_actor() {
            return vec![Effect::ActorUnreferenced { actor }];
        }
        match entry.state {
            // Counted when the result arrives (see `complete`).
            ObjectState::Pending => Vec::new(),
            ObjectState::Ready(outcome) => {
                self.freed += 1;
                vec![Effect::Free {
                    object,
                    outcome: Some(outcome),
                    contained: entry.contained,
                    copies: entry.copies.into_iter().collect(),
                }]
            }
        }
    }

    fn check_borrowed(&mut self, object: ObjectId) -> Vec<Effect> {
        let done = self
            .borrowed
            .get(&object)
            .is_some_and(|e| e.handles == 0 && e.holds == 0);
        if !done {
            return Vec::new();
        }
        match self.borrowed.remove(&object) {
            Some(entry) if entry.registrations > 0 => vec![Effect::RemoveBorrower {
                object,
                count: entry.registrations,
            }],
            _ => Vec::new(),
        }
    }

    /// True while this rank owns `object` (not freed).
    #[cfg(test)]
    pub(crate) fn owns(&self, object: ObjectId) -> bool {
        self.owned.contains_key(&object)
    }

    /// True while this rank borrows `object`.
    pub(crate) fn borrows(&self, object: ObjectId) -> bool {
        self.borrowed.contains_key(&object)
    }

    /// Owned objects not yet freed.
    pub(crate) fn owned_count(&self) -> usize {
        self.owned
            .keys()
            .filter(|id| id.counted_actor().is_none())
            .count()
    }

    /// Objects borrowed now.
    pub(crate) fn borrowed_count(&self) -> usize {
        self.borrowed
            .keys()
            .filter(|id| id.counted_actor().is_none())
            .count()
    }

    /// Owned objects freed so far.
    pub(crate) fn freed_count(&self) -> u64 {
        self.freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(owner: Rank, seq: u64) -> ObjectId {
        ObjectId { owner, seq }
    }

    fn ready() -> ObjectState {
        ObjectState::Ready(Outcome::Inline(vec![1]))
    }

    /// Ranks 0..n with their tables, and a "network" that delivers
    /// `RemoveBorrower` effects to the owner's table.
    struct Cluster {
        tables: Vec<RefTable>,
        frees: Vec<ObjectId>,
    }

    impl Cluster {
        fn new(n: u32) -> Self {
            Cluster {
                tables: (0..n).map(RefTable::new).collect(),
                frees: Vec::new(),
            }
        }

        fn apply(&mut self, from: Rank, effects: Vec<Effect>) {
            for effect in effects {
                match effect {
                    Effect::Free {
                        object, contained, ..
                    } => {
                        self.frees.push(object);
                        for inner in contained {
                            let more = self.tables[from as usize].release(inner);
                            self.apply(from, more);
                        }
                    }
                    Effect::RemoveBorrower { object, count } => {
                        let more =
                            self.tables[object.owner as usize].remove_borrower(object, from, count);
                        self.apply(object.owner, more);
                    }
                    Effect::ActorUnreferenced { actor } => {
                        self.frees.push(ObjectId::handles_of(actor));
                    }
                }
            }
        }

        /// `from` sends a message with a reference to `object` to `to`.
        fn send(&mut self, object: ObjectId, to: Rank) {
            self.tables[object.owner as usize]
                .add_borrower(object, to, 1)
                .expect("registered while alive");
            self.tables[to as usize].hold(object);
        }

        fn release(&mut self, at: Rank, object: ObjectId) {
            let effects = self.tables[at as usize].release(object);
            self.apply(at, effects);
        }

        fn drop_handle(&mut self, at: Rank, object: ObjectId) {
            let effects = self.tables[at as usize].handle_dropped(object);
            self.apply(at, effects);
        }
    }

    #[test]
    fn lost_values_are_found_and_made_pending_again() {
        let mut t = RefTable::new(0);
        let (a, b, c) = (id(0, 1), id(0, 2), id(0, 3));
        let stored = |rank| {
            ObjectState::Ready(Outcome::Stored {
                rank,
                key: 1,
                len: 10,
                arena: true,
            })
        };
        t.create(a, stored(2));
        t.create(b, stored(3));
        t.create(c, stored(2));
        t.add_copy(c, 3).expect("a copy on rank 3");
        for o in [a, b, c] {
            t.handle_added(o);
        }
        // Rank 2 gone: a is lost, c has a live copy on rank 3.
        let gone = |rank: Rank, _arena: bool| rank == 2;
        assert_eq!(t.lost_with(gone), vec![a]);
        assert!(t.rebuild(a).is_empty());
        assert!(matches!(t.state(a), Some(ObjectState::Pending)));
        assert!(t.lost_with(gone).is_empty(), "pending again, not lost");
        // Completing it again makes it ready.
        assert!(t
            .complete(a, Outcome::Inline(vec![1]), Vec::new())
            .is_empty());
        assert!(matches!(
            t.state(a),
            Some(ObjectState::Ready(Outcome::Inline(_)))
        ));
    }

    #[test]
    fn owner_only_frees_when_last_handle_drops() {
        let mut t = RefTable::new(0);
        let a = id(0, 1);
        t.create(a, ready());
        t.handle_added(a);
        assert!(t.handle_dropped(a).is_empty());
        let effects = t.handle_dropped(a);
        assert!(matches!(effects.as_slice(), [Effect::Free { object, .. }] if *object == a));
        assert!(t.handle_dropped(a).is_empty(), "freed once only");
        assert_eq!(t.freed_count(), 1);
    }

    #[test]
    fn reference_passed_through_three_tasks_is_freed_exactly_once() {
        // Rank 0 owns A, passes it to a task on 1, which passes it to a task
        // on 2, which passes it to a task on 3; the owner drops its handle
        // first, and the holders finish in the worst order.
        let mut c = Cluster::new(4);
        let a = id(0, 7);
        c.tables[0].create(a, ready());
        c.send(a, 1);
        c.drop_handle(0, a);
        assert!(c.frees.is_empty());
        // Rank 1 (a borrower) forwards: it registers rank 2 with the owner
        // (synchronously in the runtime) before sending.
        c.send(a, 2);
        c.release(1, a);
        assert!(c.frees.is_empty(), "rank 2 still holds it");
        c.send(a, 3);
        // Rank 3 keeps a handle (stores the ref in an actor, say).
        c.tables[3].handle_added(a);
        c.release(3, a);
        c.release(2, a);
        assert!(c.frees.is_empty(), "rank 3 still has a handle");
        c.drop_handle(3, a);
        assert_eq!(c.frees, vec![a]);
        assert_eq!(c.tables[0].owned_count(), 0);
        assert!(c.tables.iter().all(|t| t.borrowed_count() == 0));
    }

    #[test]
    fn result_of_a_dropped_pending_task_is_freed_on_arrival() {
        let mut t = RefTable::new(0);
        let a = id(0, 1);
        t.create(a, ObjectState::Pending);
        assert!(t.handle_dropped(a).is_empty());
        assert!(!t.owns(a));
        let effects = t.complete(a, Outcome::Inline(vec![]), Vec::new());
        assert!(matches!(effects.as_slice(), [Effect::Free { .. }]));
        assert_eq!(t.freed_count(), 1);
    }

    #[test]
    fn contained_references_live_as_long_as_their_container() {
        // Rank 1 puts B, returns it inside the result R of a task owned by 0.
        let mut c = Cluster::new(2);
        let b = id(1, 1);
        let r = id(0, 1);
        c.tables[1].create(b, ready());
        c.tables[0].create(r, ObjectState::Pending);
        // Executor (rank 1, the owner of B) registers rank 0 as borrower.
        c.tables[1].add_borrower(b, 0, 1).expect("alive");
        c.drop_handle(1, b);
        let effects = c.tables[0].complete(r, Outcome::Inline(vec![]), vec![b]);
        c.apply(0, effects);
        assert!(c.frees.is_empty());
        // Rank 0 deserialises B from R, then drops R: B survives the handle.
        c.tables[0].handle_added(b);
        c.drop_handle(0, r);
        assert_eq!(c.frees, vec![r]);
        c.drop_handle(0, b);
        assert_eq!(c.frees, vec![r, b]);
    }

    #[test]
    fn a_dead_borrower_loses_its_registrations() {
        let mut c = Cluster::new(3);
        let a = id(0, 1);
        c.tables[0].create(a, ready());
        c.send(a, 2);
        c.send(a, 2);
        c.drop_handle(0, a);
        assert!(c.frees.is_empty());
        let effects = c.tables[0].rank_died(2);
        c.apply(0, effects);
        assert_eq!(c.frees, vec![a]);
    }

    #[test]
    fn free_lists_every_reported_copy_and_late_reports_are_refused() {
        let mut t = RefTable::new(0);
        let a = id(0, 1);
        let stored = Outcome::Stored {
            rank: 1,
            key: 9,
            len: 1 << 20,
            arena: true,
        };
        t.create(a, ObjectState::Ready(stored));
        t.add_copy(a, 2).expect("alive");
        t.add_copy(a, 3).expect("alive");
        t.add_copy(a, 2).expect("alive");
        assert_eq!(t.copies(a), vec![2, 3]);
        let effects = t.handle_dropped(a);
        match effects.as_slice() {
            [Effect::Free { copies, .. }] => assert_eq!(copies, &vec![2, 3]),
            other => panic!("expected one Free, got {other:?}"),
        }
        assert_eq!(t.add_copy(a, 4), Err(RefError::CopyOfFreed(a)));
        assert!(t.copies(a).is_empty());
    }

    #[test]
    fn actor_is_unreferenced_after_its_last_handle_and_call_anywhere() {
        // Rank 0 creates the actor and passes a handle to a task on 1,
        // which calls it (holding one more while the call is in flight)
        // and passes it on to 2; the creator drops its handle first.
        let mut c = Cluster::new(3);
        let actor = ActorId { creator: 0, seq: 5 };
        let handles = c.tables[0].create_actor_handles(actor);
        assert_eq!(handles.counted_actor(), Some(actor));
        assert_eq!(c.tables[0].owned_count(), 0, "not an object");
        c.send(handles, 1);
        c.tables[1].handle_added(handles); // deserialised in the task
        c.drop_handle(0, handles);
        c.tables[1].handle_added(handles); // a call in flight
        c.send(handles, 2);
        c.drop_handle(1, handles); // the task's copy
        c.release(1, handles); // the task ends
        c.release(2, handles);
        assert!(c.frees.is_empty(), "rank 1's call is still in flight");
        c.drop_handle(1, handles); // its reply came
        assert_eq!(c.frees, vec![handles]);
        assert!(matches!(c.tables[0].handle_dropped(handles).as_slice(), []));
        assert_eq!(c.tables[0].freed_count(), 0, "no object was freed");
    }

    #[test]
    fn late_registration_is_reported() {
        let mut t = RefTable::new(0);
        let a = id(0, 1);
        t.create(a, ready());
        let _ = t.handle_dropped(a);
        assert_eq!(t.add_borrower(a, 1, 1), Err(RefError::AlreadyFreed(a)));
    }

    /// Random interleavings of the protocol over 4 ranks and a few objects:
    /// handles cloned and dropped, references forwarded (the sender
    /// registers the receiver first), holds released. Whatever the order, an
    /// object is freed exactly once, and only after every handle and hold
    /// anywhere is gone.
    #[test]
    fn random_interleavings_free_exactly_once_and_never_early() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let ranks = 4u32;
            let mut c = Cluster::new(ranks);
            let objects: Vec<ObjectId> = (0..3)
                .map(|i| id(i % ranks, round * 10 + i as u64))
                .collect();
            // What each rank holds: (object, is_handle) entries.
            let mut held: Vec<Vec<(ObjectId, bool)>> = vec![Vec::new(); ranks as usize];
            for &o in &objects {
                c.tables[o.owner as usize].create(o, ready());
                held[o.owner as usize].push((o, true));
            }
            for _ in 0..200 {
                let r = next(ranks as usize);
                if held[r].is_empty() {
                    continue;
                }
                let at = next(held[r].len());
                let (o, is_handle) = held[r][at];
                match next(4) {
                    // Clone a handle (only from something alive here).
                    0 => {
                        c.tables[r].handle_added(o);
                        held[r].push((o, true));
                    }
                    // Forward to another rank: register, then the receiver holds.
                    1 => {
                        let to = next(ranks as usize) as u32;
                        if o.owner == r as u32 {
                            c.tables[r]
                                .add_borrower(o, to, 1)
                                .expect("alive while held");
                        } else {
                            // A borrower asks the owner (acknowledged) first.
                            c.tables[o.owner as usize]
                                .add_borrower(o, to, 1)
                                .expect("alive while held");
                        }
                        c.tables[to as usize].hold(o);
                        held[to as usize].push((o, false));
                    }
                    // Drop what we picked.
                    _ => {
                        held[r].swap_remove(at);
                        if is_handle {
                            c.drop_handle(r as u32, o);
                        } else {
                            c.release(r as u32, o);
                        }
                    }
                }
                for &o in &objects {
                    let anywhere = held.iter().any(|h| h.iter().any(|(x, _)| *x == o));
                    let freed = c.frees.iter().filter(|&&f| f == o).count();
                    assert!(freed <= 1, "{o} freed twice");
                    assert!(!(anywhere && freed == 1), "{o} freed while still held");
                }
            }
            // Everyone lets go.
            for (r, list) in held.iter_mut().enumerate() {
                for (o, is_handle) in std::mem::take(list) {
                    if is_handle {
                        c.drop_handle(r as u32, o);
                    } else {
                        c.release(r as u32, o);
                    }
                }
            }
            for &o in &objects {
                assert_eq!(c.frees.iter().filter(|&&f| f == o).count(), 1, "{o}");
            }
            assert!(c
                .tables
                .iter()
                .all(|t| t.owned_count() == 0 && t.borrowed_count() == 0));
        }
    }

    #[test]
    fn owner_holds_its_own_object_sent_back_to_it() {
        // Rank 1 sends rank 0's object back to rank 0 in a task.
        let mut c = Cluster::new(2);
        let a = id(0, 1);
        c.tables[0].create(a, ready());
        c.send(a, 1);
        c.drop_handle(0, a);
        c.send(a, 0);
        c.release(1, a);
        assert!(c.frees.is_empty());
        c.release(0, a);
        assert_eq!(c.frees, vec![a]);
    }
}
