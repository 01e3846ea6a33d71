//! A rank's CPU slots, as its executor counts them: the free pool, and one
//! pool per placement-group bundle reserved on the rank. Pure accounting;
//! the executor (threads, its queue of tasks) lives in `lumen` and asks
//! this type which queued task may start and where its slots come from.
//!
//! # Invariants
//! - Reserving a bundle moves its CPUs out of the free pool into a pool of
//!   its own. The free pool may go below zero while tasks that started
//!   before the reservation finish (the rank is briefly over-subscribed);
//!   no new task outside the group starts until it has room again.
//! - A task of a bundle takes slots from that bundle's pool only, every
//!   other task from the free pool only. Each pool serves its tasks in FIFO
//!   order, and a task that does not fit its pool does not hold back the
//!   tasks of other pools ([`CpuSlots::next_runnable`]).
//! - A task larger than its whole pool still runs once that pool is idle:
//!   feasibility was checked by the submitter, against the rank's total or
//!   the bundle's, so waiting longer would never help.
//! - Releasing a group gives its pools' free CPUs back to the free pool;
//!   slots still held by its running tasks come back as they finish
//!   ([`CpuSlots::give_back`] to a bundle that is gone credits the free
//!   pool). A released group stays released: its late tasks are refused.
//!
//! Only CPUs are counted here: GPUs and custom resources are reserved in
//! the placement-group table (two groups never hold the same GPU), and a
//! task's other resources were checked for feasibility where it was placed.

use std::collections::{HashMap, HashSet};

use crate::{Bundle, PlacementGroupId};

/// The slots of one bundle reserved here.
#[derive(Debug, Clone, Copy)]
struct Pool {
    free: f64,
    total: f64,
}

impl Pool {
    /// A task needing `need` may start: it fits, or it is larger than the
    /// whole pool and the pool is idle (feasibility was checked by the
    /// submitter against the rank's total or the bundle's).
    fn admits(&self, need: f64) -> bool {
        need <= self.free + 1e-9 || (need > self.total && self.free >= self.total - 1e-9)
    }
}

/// The CPU slots of one rank: the free pool and the bundles' pools (see
/// the module docs).
#[derive(Debug, Clone)]
pub struct CpuSlots {
    /// The free pool: CPUs not reserved by bundles, less those in use.
    free: f64,
    /// CPUs not reserved by bundles.
    total: f64,
    /// Bundles reserved here.
    bundles: HashMap<Bundle, Pool>,
    /// Groups released here (their late tasks are refused).
    released: HashSet<PlacementGroupId>,
}

impl CpuSlots {
    /// A rank with `cpus` slots, none reserved.
    pub fn new(cpus: f64) -> Self {
        CpuSlots {
            free: cpus,
            total: cpus,
            bundles: HashMap::new(),
            released: HashSet::new(),
        }
    }

    /// Free slots of the free pool (below zero while it is over-subscribed).
    pub fn free(&self) -> f64 {
        self.free
    }

    /// Slots of the free pool in all (the rank's CPUs less the reserved
    /// ones).
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Free slots of the pool that tasks of `bundle` take from (`None`:
    /// the free pool; 0 for a bundle not reserved here).
    pub fn free_in(&self, bundle: Option<Bundle>) -> f64 {
        match bundle {
            None => self.free,
            Some(b) => self.bundles.get(&b).map_or(0.0, |p| p.free),
        }
    }

    /// True once `group` was released here.
    pub fn is_released(&self, group: PlacementGroupId) -> bool {
        self.released.contains(&group)
    }

    /// Reserves bundles of `group` here (index, CPUs): their CPUs leave the
    /// free pool (which may go below zero while tasks started before the
    /// reservation finish). A bundle reserved already is left as it is.
    pub fn reserve(&mut self, group: PlacementGroupId, bundles: &[(u32, f64)]) {
        for &(index, cpus) in bundles {
            let cpus = cpus.max(0.0);
            if self.bundles.contains_key(&(group, index)) {
                continue;
            }
            self.free -= cpus;
            self.total -= cpus;
            self.bundles.insert(
                (group, index),
                Pool {
                    free: cpus,
                    total: cpus,
                },
            );
        }
    }

    /// Releases every bundle of `group` here, for good.
    pub fn release(&mut self, group: PlacementGroupId) {
        self.released.insert(group);
        let mine: Vec<Bundle> = self
            .bundles
            .keys()
            .filter(|b| b.0 == group)
            .copied()
            .collect();
        for bundle in mine {
            if let Some(pool) = self.bundles.remove(&bundle) {
                // Slots held by running tasks come back when they end.
                self.free += pool.free;
                self.total += pool.total;
            }
        }
    }

    /// The first task of `queue` (CPUs asked, bundle; in queue order) that
    /// may start now, FIFO within each pool: its position, the slots it
    /// takes (its CPUs, at least 0) and their pool.
    pub fn next_runnable<I>(&self, queue: I) -> Option<(usize, f64, Option<Bundle>)>
    where
        I: IntoIterator<Item = (f64, Option<Bundle>)>,
    {
        let mut queue = queue.into_iter();
        if self.bundles.is_empty() {
            // No reservation here: the plain FIFO of the free pool (a task
            // larger than the rank still runs when the rank is otherwise
            // idle; feasibility was checked by the submitter).
            let (cpus, bundle) = queue.next()?;
            let need = cpus.max(0.0);
            let fits =
                bundle.is_none() && (need <= self.free + 1e-9 || self.free >= self.total - 1e-9);
            return fits.then_some((0, need, None));
        }
        let mut blocked: Vec<Option<Bundle>> = Vec::new();
        for (at, (cpus, bundle)) in queue.enumerate() {
            if blocked.contains(&bundle) {
                continue;
            }
            let need = cpus.max(0.0);
            let fits = match bundle {
                // Strictly: what the free pool lacks is reserved, not busy.
                None => need <= self.free + 1e-9,
                Some(b) => self.bundles.get(&b).is_some_and(|p| p.admits(need)),
            };
            if fits {
                return Some((at, need, bundle));
            }
            blocked.push(bundle);
            if blocked.len() > self.bundles.len() {
                return None;
            }
        }
        None
    }

    /// A task starts (or stops blocking): `slots` leave the pool of
    /// `bundle` (the free pool when it is `None` or was released).
    pub fn take(&mut self, slots: f64, bundle: Option<Bundle>) {
        match bundle.and_then(|b| self.bundles.get_mut(&b)) {
            Some(pool) => pool.free -= slots,
            None => self.free -= slots,
        }
    }

    /// Gives `slots` back to the pool they came from (the free pool when
    /// their bundle was released meanwhile).
    pub fn give_back(&mut self, slots: f64, bundle: Option<Bundle>) {
        match bundle.and_then(|b| self.bundles.get_mut(&b)) {
            Some(pool) => pool.free += slots,
            None => self.free += slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(seq: u64) -> PlacementGroupId {
        PlacementGroupId { creator: 0, seq }
    }

    #[test]
    fn a_task_larger_than_the_rank_runs_when_it_is_idle() {
        let mut slots = CpuSlots::new(2.0);
        assert_eq!(slots.next_runnable([(4.0, None)]), Some((0, 4.0, None)));
        slots.take(1.0, None);
        assert_eq!(slots.next_runnable([(4.0, None)]), None);
        slots.give_back(1.0, None);
        assert_eq!(slots.next_runnable([(-1.0, None)]), Some((0, 0.0, None)));
    }

    #[test]
    fn pools_are_fifo_and_independent() {
        let g = group(1);
        let mut slots = CpuSlots::new(3.0);
        slots.reserve(g, &[(0, 1.0), (1, 1.0)]);
        slots.reserve(g, &[(0, 5.0)]);
        assert!((slots.free() - 1.0).abs() < 1e-9 && (slots.total() - 1.0).abs() < 1e-9);
        slots.take(1.0, Some((g, 0)));
        // Bundle 0 is full: its second task waits, and so does the one
        // queued behind it in the same pool; the free pool's task runs.
        let queue = [(1.0, Some((g, 0))), (0.5, Some((g, 0))), (1.0, None)];
        assert_eq!(slots.next_runnable(queue), Some((2, 1.0, None)));
        slots.take(1.0, None);
        assert_eq!(slots.next_runnable(queue), None);
        assert_eq!(slots.free_in(Some((g, 1))), 1.0);
        assert_eq!(slots.free_in(Some((group(9), 0))), 0.0);
        // Releasing: the pools' free CPUs return at once, the held one
        // when its task ends.
        slots.release(g);
        assert!(slots.is_released(g));
        assert!((slots.free() - 1.0).abs() < 1e-9 && (slots.total() - 3.0).abs() < 1e-9);
        slots.give_back(1.0, Some((g, 0)));
        assert!((slots.free() - 2.0).abs() < 1e-9);
    }
}
