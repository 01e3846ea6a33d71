//! Placement groups (Ray's `ray.util.placement_group`): bundles of
//! resources reserved together, atomically, on ranks chosen by a strategy,
//! into which tasks and actors are then scheduled.
//!
//! This module is the IO half: the [`PlacementGroup`] handle users hold,
//! the messages between creators, rank 0's head service and the hosts,
//! and what a host does when a bundle is reserved or released. The pure
//! half is `lumen_sched`: the ids and strategies, the head's
//! [`PlacementTable`] (what every rank offers, what the groups hold, the
//! groups waiting for resources; stepped by its tests there) and the
//! strategies' layout of bundles over ranks and nodes (`lumen_sched::place`).
//!
//! # Where the reservation lives
//! Ordinary tasks are placed by each submitter on its own (`scheduler`,
//! against the ranks' *total* resources) and wait for CPU slots in the
//! executing rank's executor, which is where a rank's free CPUs are
//! counted. A group must not be reserved twice over by two submitters, so
//! groups are decided in one place: **rank 0's head service** (as Ray's GCS
//! schedules placement groups), which keeps the [`PlacementTable`]. Its
//! decisions come out as [`Action`]s that this module sends after the
//! table's lock is released.
//!
//! # Life of a group
//! ```text
//!  creator          rank 0 (head)                      hosts
//!  PgCreate ───────► feasible at all? no ─► Infeasible (error, at once)
//!                   yes: Accepted; fits in what is free now?
//!                     no: Pending (queued until a group is removed)
//!                     yes: subtract from the ranks' availability,
//!                          BundleReserve ────────────────► executor pools
//!                   ◄──────────────────────── BundleReserved (each host)
//!                   all acknowledged: Created ─► waiters (ready, ranks)
//!  PgRemove ───────► give the resources back, BundleRelease ─► hosts:
//!                   place pending groups           fail queued tasks of the
//!                                                  group, kill its actors
//! ```
//! Reservation is atomic: the table places all bundles or none. A host
//! moves a bundle's CPUs, custom resources and GPUs (specific device ids,
//! whole or a share of one) from its free pool into a pool of the bundle
//! (`executor`, counted by `lumen_sched::ResourceSlots`); tasks of the
//! group run only out of their bundle's pool (their GPU ids are the
//! bundle's devices), other tasks only out of the free pool, so a task
//! that needs reserved resources waits in the queue until the group is
//! removed. Tasks already running on a rank when a bundle is reserved there
//! finish in place (the rank is briefly over-subscribed); no new task
//! outside the group starts until the free pool has room again. `ready`
//! waits for every host's acknowledgement, so a task submitted after it
//! finds its bundle's pool.
//!
//! Actors in a bundle run on the bundle's rank on a thread of their own,
//! as other actors do (they take no CPU slots); their GPUs come from the
//! bundle's devices when the rank's other devices cannot serve them.
//!
//! # Failures
//! A host that dies while its bundles are being reserved fails the group
//! (the other hosts release theirs; `ready` returns the error). When the
//! rank of a bundle of a created group dies, the head places that bundle
//! again on a live rank, keeping the group's strategy (STRICT_SPREAD: a
//! node without another bundle of the group; STRICT_PACK: the node of the
//! others), and reserves it there (`lumen_sched::PlacementTable`'s
//! "Failures"); until that rank acknowledged, `ready`, `ranks` and new
//! tasks or actors into the group wait, then they go to the new rank.
//! Every rank drops its cached view of such a group when it sees the
//! death. Tasks of the bundle that were running on the dead rank are
//! retried on the new one (as their `max_retries` allows); actors that
//! lived there are not restarted into the bundle. A bundle that no live
//! rank could ever hold under the strategy stays on its dead rank: work
//! sent to it fails as on any dead rank.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lumen_transport::Rank;

use lumen_sched::GroupView;
pub use lumen_sched::{PlacementGroupId, PlacementStrategy};

use super::core::{current_inner, Inner};
use super::error::RuntimeError;
use super::options::{PlacementGroupScheduling, Resources};
use crate::error::{LumenError, Result};

/// A handle to a placement group (see [`crate::Runtime::placement_group`]).
/// Cheap to clone and serialisable: pass it to tasks, which may schedule
/// into the group too. Dropping it does not remove the group (as in Ray:
/// [`crate::Runtime::remove_placement_group`] does, or the end of the job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroup {
    pub(crate) id: PlacementGroupId,
    pub(crate) bundles: Vec<Resources>,
    pub(crate) strategy: PlacementStrategy,
}

impl PlacementGroup {
    /// The group's id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// The bundles, as asked for (Ray's `bundle_specs`).
    pub fn bundles(&self) -> &[Resources] {
        &self.bundles
    }

    /// How many bundles (Ray's `bundle_count`).
    pub fn bundle_count(&self) -> usize {
        self.bundles.len()
    }

    /// The strategy it was created with.
    pub fn strategy(&self) -> PlacementStrategy {
        self.strategy
    }

    /// Waits until every bundle is reserved (Ray's `ray.get(pg.ready())`).
    /// Fails when the group was removed or its reservation failed.
    pub fn ready(&self) -> Result<()> {
        self.view(None).map(|_| ())
    }

    /// Waits up to `timeout` for the group to be created: `true` when it
    /// is (Ray's `pg.wait(timeout_seconds)`).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        match self.view(Some(timeout)) {
            Ok(_) => Ok(true),
            Err(LumenError::Runtime(RuntimeError::Timeout { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The job ranks hosting the bundles, in bundle order (entry `i` is
    /// bundle `i`'s rank; a rank may host several bundles), once the group
    /// is created (waits for it like [`PlacementGroup::ready`]). A
    /// communicator over a group's ranks is built from this list, e.g.
    /// with its distinct ranks in bundle order.
    pub fn ranks(&self) -> Result<Vec<Rank>> {
        self.view(None).map(|view| view.ranks)
    }

    /// The nodes of the bundles' ranks, in bundle order.
    pub fn nodes(&self) -> Result<Vec<u32>> {
        let inner = runtime()?;
        let ranks = self.ranks()?;
        Ok(ranks
            .iter()
            .map(|&r| inner.ranks.get(r as usize).map_or(u32::MAX, |i| i.node))
            .collect())
    }

    /// This group as a task or actor option: bundle `bundle_index`, or any
    /// bundle its resources fit in.
    pub fn bundle(&self, bundle_index: Option<u32>) -> PlacementGroupScheduling {
        PlacementGroupScheduling {
            group: self.id,
            bundle_index,
        }
    }

    fn view(&self, timeout: Option<Duration>) -> Result<GroupView> {
        runtime()?.group_view(self.id, timeout)
    }
}

fn runtime() -> Result<Arc<Inner>> {
    current_inner().ok_or(LumenError::Runtime(RuntimeError::NoRuntime))
}
