//! Lineage reconstruction: an object whose only copy is lost with its rank
//! is computed again by running its task again, as Ray does.
//!
//! - The owner keeps the spec of each finished task whose value is stored
//!   on another rank (and the pins of its arguments, so they can be read
//!   again) while the object is referenced, up to `LUMEN_LINEAGE_BYTES` of
//!   specs (default 64 MiB; beyond it new results are not kept, logged
//!   once). Tasks with `max_retries(0)` keep none.
//! - When a rank dies, every owned object whose stored value and secondary
//!   copies were all on dead ranks is pending again and its task resubmitted
//!   (one more attempt, within `max_retries`); its lost arguments are rebuilt
//!   the same way, by their owners, and the task waits for them like for
//!   any pending argument. A reader that was fetching the lost value when
//!   the rank died asks again and gets the rebuilt one.
//! - What is not rebuilt: `put` values (no task made them), actor results
//!   (an actor's state is not replayed), objects whose owner died (fate
//!   sharing: `OwnerDied`), and tasks out of retries: reading them fails
//!   naming the dead rank.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Inner;
use crate::runtime::ids::ObjectId;
use crate::runtime::object_ref::Pinned;
use crate::runtime::protocol::TaskSpec;

/// The owner's record of how its stored objects were made.
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    inner: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    specs: HashMap<ObjectId, (TaskSpec, Option<Pinned>)>,
    bytes: usize,
    limit: usize,
    full_logged: bool,
    rebuilt: u64,
}

fn spec_bytes(spec: &TaskSpec) -> usize {
    spec.args.len() + spec.name.len() + 16 * spec.refs.len() + 128
}

impl Lineage {
    /// `LUMEN_LINEAGE_BYTES` (bytes, with K, M or G; default 64 MiB).
    pub(crate) fn from_env() -> Self {
        let limit = std::env::var("LUMEN_LINEAGE_BYTES")
            .ok()
            .and_then(|v| lumen_transport::fabric::parse_size(&v))
            .unwrap_or(64 << 20);
        Lineage {
            inner: Mutex::new(Records {
                limit,
                ..Records::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps how `spec.object` was made (see the module docs). Called
    /// under the state lock that completes the object, so a rank death
    /// never finds the value stored without its lineage; what is not kept
    /// comes back, to be dropped after that lock (a pin's drop takes it).
    pub(crate) fn record(
        &self,
        spec: TaskSpec,
        pinned: Option<Pinned>,
    ) -> Option<(TaskSpec, Option<Pinned>)> {
        if spec.options.max_retries == 0 {
            return Some((spec, pinned));
        }
        let size = spec_bytes(&spec);
        let dropped = {
            let mut r = self.lock();
            if r.bytes + size > r.limit {
                if !r.full_logged {
                    r.full_logged = true;
                    tracing::warn!(
                        "lineage full ({} bytes of task specs, LUMEN_LINEAGE_BYTES): results from now on are not rebuilt if lost",
                        r.bytes
                    );
                }
                Some((spec, pinned))
            } else {
                r.bytes += size;
                r.specs.insert(spec.object, (spec, pinned))
            }
        };
        dropped
    }

    /// Forgets `object` (freed).
    pub(crate) fn forget(&self, object: ObjectId) {
        let removed = {
            let mut r = self.lock();
            let removed = r.specs.remove(&object);
            if let Some((spec, _)) = &removed {
                r.bytes = r.bytes.saturating_sub(spec_bytes(spec));
            }
            removed
        };
        drop(removed);
    }

    fn take(&self, object: ObjectId) -> Option<(TaskSpec, Option<Pinned>)> {
        let mut r = self.lock();
        let taken = r.specs.remove(&object);
        if let Some((spec, _)) = &taken {
            r.bytes = r.bytes.saturating_sub(spec_bytes(spec));
        }
        taken
    }

    /// Objects rebuilt so far.
    pub(crate) fn rebuilt(&self) -> u64 {
        self.lock().rebuilt
    }
}

/// Tasks to run again, with their argument pins, and the pins of those
/// that are not (dropped after the state lock: a pin's drop takes it).
pub(super) type Rebuilds = (Vec<(TaskSpec, Option<Pinned>)>, Vec<Option<Pinned>>);

impl Inner {
    /// (owner, under the state lock, as `dead` is marked dead) Makes the
    /// values lost with it pending again and takes their tasks (see the
    /// module docs); returns them and the effects of releasing what the
    /// lost values contained.
    pub(super) fn mark_lost(
        &self,
        s: &mut super::State,
        dead: lumen_transport::Rank,
    ) -> (Rebuilds, Vec<crate::runtime::refs::Effect>) {
        let lost = s
            .refs
            .lost_with(|rank, arena| self.copy_gone(&s.dead, rank, arena));
        let mut runs = Vec::new();
        let mut discarded = Vec::new();
        let mut effects = Vec::new();
        for object in lost {
            let Some((mut spec, pinned)) = self.lineage.take(object) else {
                continue;
            };
            if spec.attempt > spec.options.max_retries {
                tracing::warn!(
                    rank = self.rank,
                    "{object} was lost with rank {dead} and {} is out of retries: not rebuilt",
                    spec.name
                );
                discarded.push(pinned);
                continue;
            }
            spec.attempt += 1;
            effects.extend(s.refs.rebuild(object));
            runs.push((spec, pinned));
        }
        ((runs, discarded), effects)
    }

    /// Submits the tasks [`Inner::mark_lost`] took.
    pub(super) fn run_rebuilds(self: &Arc<Self>, dead: lumen_transport::Rank, rebuilds: Rebuilds) {
        let (runs, discarded) = rebuilds;
        drop(discarded);
        if !runs.is_empty() {
            self.lineage.lock().rebuilt += runs.len() as u64;
            tracing::warn!(
                rank = self.rank,
                "{} values this rank owns were lost with rank {dead}: their tasks run again (lineage)",
                runs.len()
            );
        }
        // Newest first: each goes to the front of its rank's queue, so the
        // oldest (the arguments of the others) run first.
        for (spec, pinned) in runs.into_iter().rev() {
            tracing::info!(
                rank = self.rank,
                "{} was lost with rank {dead}: running {} again (attempt {})",
                spec.object,
                spec.name,
                spec.attempt
            );
            self.retry_task(dead, spec, pinned);
        }
    }
}

/// Retried and rebuilt tasks held back by their owner until the arguments
/// it owns that are pending (being computed again) are ready. Sent at
/// once, each would take an executor thread on its rank and block in
/// `get`, and a rank has only so many threads: with hundreds of values
/// rebuilt at once, every thread ended up waiting on a rebuild that had
/// none left to run on. Ray's owner resolves a task's dependencies before
/// it schedules the task in the same way. Only retries are held: a first
/// attempt still starts at once and may pass a pending reference on
/// without reading it.
#[derive(Debug)]
pub(crate) struct Deferred<T> {
    /// Task → what to send, and how many of its arguments are pending.
    tasks: HashMap<ObjectId, (T, usize)>,
    /// Argument → the tasks waiting for it.
    waiting: HashMap<ObjectId, Vec<ObjectId>>,
}

impl<T> Default for Deferred<T> {
    fn default() -> Self {
        Deferred {
            tasks: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<T> Deferred<T> {
    /// Holds `task` until every one of `pending` (distinct, non-empty)
    /// arrives.
    pub(crate) fn hold(&mut self, task: ObjectId, what: T, pending: &[ObjectId]) {
        for &arg in pending {
            self.waiting.entry(arg).or_default().push(task);
        }
        self.tasks.insert(task, (what, pending.len()));
    }

    /// `arg` is ready (a value or a failure): the tasks it was the last
    /// pending argument of.
    pub(crate) fn arrived(&mut self, arg: ObjectId) -> Vec<T> {
        let Some(waiting) = self.waiting.remove(&arg) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for task in waiting {
            let done = self.tasks.get_mut(&task).is_some_and(|(_, left)| {
                *left = left.saturating_sub(1);
                *left == 0
            });
            if done {
                if let Some((what, _)) = self.tasks.remove(&task) {
                    ready.push(what);
                }
            }
        }
        ready
    }

    /// Tasks held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// The distinct arguments among `refs` that `me` owns and that `pending`
/// says are not computed yet.
pub(crate) fn pending_owned(
    me: lumen_transport::Rank,
    refs: &[ObjectId],
    pending: impl Fn(ObjectId) -> bool,
) -> Vec<ObjectId> {
    let mut out: Vec<ObjectId> = Vec::new();
    for &id in refs {
        if id.owner == me && !out.contains(&id) && pending(id) {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> ObjectId {
        ObjectId { owner: 0, seq }
    }

    #[test]
    fn a_held_task_is_released_by_its_last_pending_argument() {
        let mut d: Deferred<&str> = Deferred::default();
        d.hold(id(10), "combine", &[id(1), id(2)]);
        d.hold(id(11), "checksum", &[id(2)]);
        assert_eq!(d.len(), 2);
        assert!(d.arrived(id(3)).is_empty(), "nobody waits for 3");
        assert!(d.arrived(id(1)).is_empty(), "combine still waits for 2");
        let mut ready = d.arrived(id(2));
        ready.sort_unstable();
        assert_eq!(ready, vec!["checksum", "combine"]);
        assert_eq!(d.len(), 0);
        assert!(d.arrived(id(2)).is_empty(), "released once");
    }

    #[test]
    fn only_distinct_pending_arguments_of_this_owner_hold_a_task() {
        let mine = |seq| ObjectId { owner: 3, seq };
        let theirs = ObjectId { owner: 1, seq: 7 };
        let refs = [mine(1), mine(1), theirs, mine(2), mine(4)];
        let got = pending_owned(3, &refs, |o| o.seq != 4);
        assert_eq!(got, vec![mine(1), mine(2)]);
    }
}
