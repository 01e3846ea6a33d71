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

    /// Keeps how `spec.object` was made (see the module docs).
    pub(crate) fn record(&self, spec: TaskSpec, pinned: Option<Pinned>) {
        if spec.options.max_retries == 0 {
            return;
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
        // Unpinned after the lock (a pin's drop may free objects).
        drop(dropped);
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
        }
        // Newest first: each goes to the front of its rank's queue, so the
        // oldest (the arguments of the others) run first.
        for (spec, pinned) in runs.into_iter().rev() {
            tracing::warn!(
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
