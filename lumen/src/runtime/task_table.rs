//! The owner's table of work in flight: every task and actor call this rank
//! submitted and has not heard back about, with what it takes to send it
//! again. Pure (no messages, no locks, no clock): the core worker steps it
//! with what happened (`task_sent`, `call_sent`, `completed`, `rank_died`,
//! `calls_lost`) and carries out what it returns — the shape of
//! quinn-proto's `handle_*`/`poll_*` state machines and of [`super::refs`].
//!
//! Invariants:
//! - an object id is in the table at most once, from the moment its task or
//!   call is sent until its outcome arrives (`completed`) or the table gives
//!   it up (a `TaskEffect::Fail`, a lost call handed back);
//! - a task leaves the table when its rank dies; it comes back through
//!   `task_sent` only for a retry the table asked for (`TaskEffect::Retry`,
//!   with `attempt` already counted), so `attempt` never exceeds
//!   `max_retries + 1`;
//! - the retry records (`P`, the pin that keeps argument objects alive) are
//!   returned to the caller, never dropped inside the table: in the runtime
//!   dropping a pin takes the state lock, which the caller holds while it
//!   steps the table.
//!
//! Lineage (the spec of each object kept while references exist, to rebuild
//! objects lost with their node) is the next state to live here.

use std::time::Instant;

use lumen_transport::Rank;

use super::error::{TaskError, TaskErrorKind};
use super::ids::{ActorId, ObjectId};
use super::protocol::{ActorAddress, Outcome, TaskSpec};
use super::refs::IdMap;

/// A task or actor call in flight, with what its owner must do when the
/// rank running it dies. `P` keeps the argument objects alive while a retry
/// may still need them (the runtime's `Pinned`; `()` in tests).
#[derive(Debug)]
pub(crate) enum InFlight<P> {
    /// A task sent to `rank`.
    Task {
        spec: TaskSpec,
        rank: Rank,
        /// Keeps the objects the arguments reference alive while the task
        /// may be retried (the dead rank's registrations go with it; Ray's
        /// submitted-task references).
        pinned: Option<P>,
        /// When it was sent (the caller's view of its latency).
        sent: Instant,
    },
    /// A call sent to `actor` on `host`.
    ActorCall(ActorCall<P>),
}

/// An actor call in flight (or lost with its host).
#[derive(Debug)]
pub(crate) struct ActorCall<P> {
    /// The call's return object.
    pub(crate) object: ObjectId,
    pub(crate) host: Rank,
    pub(crate) actor: ActorId,
    /// The method's name, for errors.
    pub(crate) name: String,
    /// The actor's handle count, held while the call is in flight
    /// (unnamed actors), so the actor outlives the calls made to it.
    pub(crate) handles: Option<ObjectId>,
    /// What it takes to send the call again (`max_task_retries`).
    pub(crate) retry: Option<Box<CallRetry<P>>>,
    /// For a call sent down a mesh broadcast tree: the ranks it passes
    /// through, and the call, to send it directly when one of them dies.
    pub(crate) relay: Option<Box<Relay>>,
    /// When it was sent (the caller's view of its latency).
    pub(crate) sent: Instant,
}

/// How a mesh broadcast call reaches its host (see `runtime::mesh`).
#[derive(Debug)]
pub(crate) struct Relay {
    /// The ranks the message passes through before its host.
    pub(crate) via: Vec<Rank>,
    /// The call itself, shared by every member's entry.
    pub(crate) payload: std::sync::Arc<MeshPayload>,
}

/// A mesh broadcast's method call.
#[derive(Debug)]
pub(crate) struct MeshPayload {
    pub(crate) method: u64,
    pub(crate) name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) refs: Vec<ObjectId>,
}

/// What a caller keeps to send an actor call again when the actor's rank
/// dies (`max_task_retries`).
#[derive(Debug)]
pub(crate) struct CallRetry<P> {
    pub(crate) address: ActorAddress,
    pub(crate) method: u64,
    pub(crate) args: Vec<u8>,
    /// Device objects in `args` (see `runtime::device`).
    pub(crate) device_args: Vec<(super::device::DeviceMeta, ObjectId)>,
    /// Keeps the objects the arguments reference alive while the call may
    /// be sent again (the dead rank's registrations are gone).
    pub(crate) pinned: P,
    /// Sends left; `u32::MAX` is "forever" (Ray's `-1`).
    pub(crate) retries_left: u32,
}

impl<P> CallRetry<P> {
    /// Counts one more send of the call.
    pub(crate) fn count_attempt(&mut self) {
        if self.retries_left != u32::MAX {
            self.retries_left = self.retries_left.saturating_sub(1);
        }
    }
}

/// What the owner must do about a task whose rank died.
#[derive(Debug)]
pub(crate) enum TaskEffect<P> {
    /// Place `spec` again (its `attempt` already counts this retry), send
    /// it, and put it back with [`TaskTable::task_sent`].
    Retry { spec: TaskSpec, pinned: Option<P> },
    /// The task failed for good: complete `object` with `outcome`. `pinned`
    /// is handed back to be dropped outside the caller's lock.
    Fail {
        object: ObjectId,
        outcome: Outcome,
        pinned: Option<P>,
    },
}

/// The actor calls lost with their host, split by what happens next.
#[derive(Debug)]
pub(crate) struct LostCalls<P> {
    /// Calls with no retries left: they fail with `ActorDied`.
    pub(crate) failed: Vec<ActorCall<P>>,
    /// Calls to send again to the restarted actor, in the order they were
    /// made (`max_task_retries`).
    pub(crate) resend: Vec<ActorCall<P>>,
}

/// Work in flight of one owner (see the module docs).
#[derive(Debug)]
pub(crate) struct TaskTable<P> {
    entries: IdMap<ObjectId, InFlight<P>>,
}

impl<P> Default for TaskTable<P> {
    fn default() -> Self {
        TaskTable {
            entries: IdMap::default(),
        }
    }
}

impl<P> TaskTable<P> {
    /// `spec` was sent to `rank` (first attempt or a retry).
    pub(crate) fn task_sent(&mut self, spec: TaskSpec, rank: Rank, pinned: Option<P>) {
        let sent = Instant::now();
        self.entries.insert(
            spec.object,
            InFlight::Task {
                spec,
                rank,
                pinned,
                sent,
            },
        );
    }

    /// An actor call was sent (or sent again) to `call.host`.
    pub(crate) fn call_sent(&mut self, call: ActorCall<P>) {
        self.entries.insert(call.object, InFlight::ActorCall(call));
    }

    /// `dead` died: the mesh calls in flight whose tree passed through it
    /// and whose host is another rank, each once (its relay is taken out),
    /// oldest first: (object, host, actor, call) to send directly.
    pub(crate) fn relayed_through(
        &mut self,
        dead: Rank,
    ) -> Vec<(ObjectId, Rank, ActorId, std::sync::Arc<MeshPayload>)> {
        let mut out = Vec::new();
        for (id, entry) in self.entries.iter_mut() {
            let InFlight::ActorCall(call) = entry else {
                continue;
            };
            if call.host == dead
                || !call
                    .relay
                    .as_ref()
                    .is_some_and(|relay| relay.via.contains(&dead))
            {
                continue;
            }
            if let Some(relay) = call.relay.take() {
                out.push((*id, call.host, call.actor, relay.payload));
            }
        }
        out.sort_by_key(|(id, ..)| id.seq);
        out
    }

    /// The outcome of `object` arrived: its entry, if it was in flight.
    pub(crate) fn completed(&mut self, object: ObjectId) -> Option<InFlight<P>> {
        self.entries.remove(&object)
    }

    /// The rank running task `object`, while it is in flight (to cancel it).
    pub(crate) fn task_rank(&self, object: ObjectId) -> Option<Rank> {
        match self.entries.get(&object) {
            Some(InFlight::Task { rank, .. }) => Some(*rank),
            _ => None,
        }
    }

    /// Entries in flight.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// `rank` died: each task it was running is retried while it has
    /// retries left (`attempt <= max_retries`), else fails with
    /// `WorkerDied`. Failures come first, then retries, each in the order
    /// the tasks were submitted. Actor calls are handled by
    /// [`TaskTable::calls_lost`].
    pub(crate) fn rank_died(&mut self, rank: Rank, why: &str) -> Vec<TaskEffect<P>> {
        let mut lost: Vec<ObjectId> = self
            .entries
            .iter()
            .filter(|(_, f)| matches!(f, InFlight::Task { rank: r, .. } if *r == rank))
            .map(|(id, _)| *id)
            .collect();
        lost.sort_by_key(|id| id.seq);
        let mut failed = Vec::new();
        let mut retries = Vec::new();
        for id in lost {
            let Some(InFlight::Task {
                mut spec, pinned, ..
            }) = self.entries.remove(&id)
            else {
                continue;
            };
            if spec.attempt <= spec.options.max_retries {
                spec.attempt += 1;
                retries.push(TaskEffect::Retry { spec, pinned });
            } else {
                let detail = format!(
                    "rank {rank} died while running it ({} attempt(s), max_retries {}): {why}",
                    spec.attempt, spec.options.max_retries
                );
                failed.push(TaskEffect::Fail {
                    object: spec.object,
                    outcome: worker_died(&spec, rank, spec.attempt, detail),
                    pinned,
                });
            }
        }
        failed.extend(retries);
        failed
    }

    /// `host` died: takes out every actor call in flight to it. Those with
    /// no retry record or none left fail; the others are to be sent again,
    /// oldest first (ids grow at the caller), each sending counted.
    pub(crate) fn calls_lost(&mut self, host: Rank) -> LostCalls<P> {
        let ids: Vec<ObjectId> = self
            .entries
            .iter()
            .filter(|(_, f)| matches!(f, InFlight::ActorCall(c) if c.host == host))
            .map(|(id, _)| *id)
            .collect();
        let mut lost = LostCalls {
            failed: Vec::new(),
            resend: Vec::new(),
        };
        for id in ids {
            if let Some(InFlight::ActorCall(mut call)) = self.entries.remove(&id) {
                match call.retry.as_mut() {
                    Some(retry) if retry.retries_left > 0 => {
                        retry.count_attempt();
                        lost.resend.push(call);
                    }
                    _ => lost.failed.push(call),
                }
            }
        }
        lost.failed.sort_by_key(|c| c.object.seq);
        lost.resend.sort_by_key(|c| c.object.seq);
        lost
    }
}

/// The outcome of a task that its rank's death ended after `attempts`.
pub(crate) fn worker_died(spec: &TaskSpec, rank: Rank, attempts: u32, detail: String) -> Outcome {
    Outcome::Failed(TaskError {
        function: spec.name.clone(),
        rank,
        kind: TaskErrorKind::WorkerDied { attempts },
        message: detail,
    })
}

/// The outcome of a call lost with its actor.
pub(crate) fn actor_died(call_name: String, actor: ActorId, host: Rank, reason: &str) -> Outcome {
    Outcome::Failed(TaskError {
        function: call_name,
        rank: host,
        kind: TaskErrorKind::ActorDied,
        message: format!("{actor} is dead: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::options::TaskOptions;

    fn spec(seq: u64, max_retries: u32) -> TaskSpec {
        TaskSpec {
            object: ObjectId { owner: 0, seq },
            function: 7,
            name: format!("task{seq}"),
            args: Vec::new(),
            refs: Vec::new(),
            device_args: Vec::new(),
            options: TaskOptions {
                max_retries,
                ..TaskOptions::default()
            },
            attempt: 1,
        }
    }

    fn call(seq: u64, host: Rank, retries: Option<u32>) -> ActorCall<()> {
        let actor = ActorId {
            creator: 0,
            seq: 100,
        };
        ActorCall {
            object: ObjectId { owner: 0, seq },
            host,
            actor,
            name: format!("call{seq}"),
            handles: None,
            sent: Instant::now(),
            retry: retries.map(|retries_left| {
                Box::new(CallRetry {
                    address: ActorAddress {
                        id: actor,
                        host,
                        class_id: 1,
                        class_name: "Actor".into(),
                        max_task_retries: retries_left,
                    },
                    method: 2,
                    args: Vec::new(),
                    device_args: Vec::new(),
                    pinned: (),
                    retries_left,
                })
            }),
            relay: None,
        }
    }

    #[test]
    fn a_task_is_retried_until_its_retries_are_spent() {
        let mut table = TaskTable::<()>::default();
        table.task_sent(spec(1, 1), 1, Some(()));
        let effects = table.rank_died(1, "test");
        let [TaskEffect::Retry { spec, pinned }] = &effects[..] else {
            panic!("expected one retry, got {effects:?}");
        };
        assert_eq!(spec.attempt, 2);
        assert!(pinned.is_some());
        assert_eq!(table.len(), 0);
        table.task_sent(spec.clone(), 2, None);
        let effects = table.rank_died(2, "test");
        let [TaskEffect::Fail {
            object,
            outcome: Outcome::Failed(error),
            ..
        }] = &effects[..]
        else {
            panic!("expected one failure, got {effects:?}");
        };
        assert_eq!(object.seq, 1);
        assert_eq!(error.kind, TaskErrorKind::WorkerDied { attempts: 2 });
        assert_eq!(error.rank, 2);
        assert!(error.message.contains("max_retries 1"), "{}", error.message);
    }

    #[test]
    fn a_completed_task_is_not_retried_and_other_ranks_are_untouched() {
        let mut table = TaskTable::<()>::default();
        table.task_sent(spec(1, 3), 1, None);
        table.task_sent(spec(2, 3), 1, None);
        table.task_sent(spec(3, 3), 2, None);
        assert_eq!(table.task_rank(ObjectId { owner: 0, seq: 2 }), Some(1));
        assert!(matches!(
            table.completed(ObjectId { owner: 0, seq: 1 }),
            Some(InFlight::Task { rank: 1, .. })
        ));
        assert!(table.completed(ObjectId { owner: 0, seq: 1 }).is_none());
        let effects = table.rank_died(1, "test");
        assert_eq!(effects.len(), 1);
        assert!(matches!(&effects[0], TaskEffect::Retry { spec, .. } if spec.object.seq == 2));
        assert_eq!(table.task_rank(ObjectId { owner: 0, seq: 3 }), Some(2));
        assert!(table.rank_died(1, "test").is_empty());
    }

    #[test]
    fn failures_come_before_retries_in_submission_order() {
        let mut table = TaskTable::<()>::default();
        for seq in [5, 3, 4, 1, 2] {
            table.task_sent(spec(seq, seq as u32 % 2), 1, None);
        }
        let order: Vec<(bool, u64)> = table
            .rank_died(1, "test")
            .iter()
            .map(|e| match e {
                TaskEffect::Retry { spec, .. } => (true, spec.object.seq),
                TaskEffect::Fail { object, .. } => (false, object.seq),
            })
            .collect();
        assert_eq!(
            order,
            vec![(false, 2), (false, 4), (true, 1), (true, 3), (true, 5)]
        );
    }

    #[test]
    fn lost_actor_calls_split_into_failed_and_resent_oldest_first() {
        let mut table = TaskTable::<()>::default();
        table.call_sent(call(9, 1, Some(2)));
        table.call_sent(call(4, 1, None));
        table.call_sent(call(6, 1, Some(0)));
        table.call_sent(call(5, 1, Some(u32::MAX)));
        table.call_sent(call(7, 2, Some(1)));
        table.task_sent(spec(8, 1), 1, None);
        assert_eq!(table.task_rank(ObjectId { owner: 0, seq: 9 }), None);
        let lost = table.calls_lost(1);
        let failed: Vec<u64> = lost.failed.iter().map(|c| c.object.seq).collect();
        let resend: Vec<(u64, u32)> = lost
            .resend
            .iter()
            .map(|c| (c.object.seq, c.retry.as_ref().map_or(0, |r| r.retries_left)))
            .collect();
        assert_eq!(failed, vec![4, 6]);
        assert_eq!(resend, vec![(5, u32::MAX), (9, 1)]);
        // The task on rank 1 and the call to rank 2 stay in flight.
        assert_eq!(table.len(), 2);
        assert!(table.calls_lost(1).resend.is_empty());
    }

    #[test]
    fn actor_died_names_the_actor_and_the_reason() {
        let actor = ActorId { creator: 0, seq: 3 };
        let Outcome::Failed(error) = actor_died("incr".into(), actor, 4, "its rank 4 died") else {
            panic!("not a failure");
        };
        assert_eq!(error.kind, TaskErrorKind::ActorDied);
        assert_eq!(error.rank, 4);
        assert!(error.message.contains("its rank 4 died"));
    }

    #[test]
    fn calls_relayed_through_a_dead_rank_are_handed_back_once() {
        let payload = std::sync::Arc::new(MeshPayload {
            method: 2,
            name: "step".into(),
            args: Vec::new(),
            refs: Vec::new(),
        });
        let mut table: TaskTable<()> = TaskTable::default();
        for (seq, host, via) in [
            (1, 3, vec![1]),
            (2, 1, vec![]),
            (3, 4, vec![1, 3]),
            (4, 5, vec![2]),
        ] {
            let mut c = call(seq, host, None);
            c.relay = Some(Box::new(Relay {
                via,
                payload: payload.clone(),
            }));
            table.call_sent(c);
        }
        let lost: Vec<(u64, Rank)> = table
            .relayed_through(1)
            .iter()
            .map(|(id, host, ..)| (id.seq, *host))
            .collect();
        // Rank 1's own call is not relayed through it (its host died).
        assert_eq!(lost, vec![(1, 3), (3, 4)]);
        assert!(table.relayed_through(1).is_empty(), "handed back once");
        assert_eq!(table.relayed_through(3).len(), 0, "already taken out");
        assert_eq!(table.len(), 4, "the calls stay in flight");
    }
}
