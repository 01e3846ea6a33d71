//! A rank's resources as its executor counts them: the free pool, and one
//! pool per placement-group bundle reserved on the rank, each holding CPU
//! slots, custom resources and GPU devices ([`ResourceSlots`]). Pure
//! accounting; the executor (threads, its queue of tasks) lives in `lumen`
//! and asks this type which queued task may start and what it holds.
//!
//! CPUs and custom resources are amounts (a pool has so many free out of
//! so many); GPUs are specific devices, counted by [`GpuSlots`] with the
//! same pools (whole devices or shares of one moved into a bundle's pool).
//! One type holds the three so that reserving, releasing and starting a
//! task are one step each.
//!
//! # Invariants
//! - Reserving a bundle moves its CPUs, custom resources and GPUs out of
//!   the free pool into a pool of its own. The free pool's amounts may go
//!   below zero while tasks that started before the reservation finish (the
//!   rank is briefly over-subscribed); no new task outside the group starts
//!   until it has room again (a GPU reserved while in use is not shared:
//!   the bundle's task waits for it).
//! - A task of a bundle takes CPUs, custom resources and GPU ids from that
//!   bundle's pool only, every other task from the free pool only. Each
//!   pool serves its tasks in FIFO order, and a task that does not fit its
//!   pool does not hold back the tasks of other pools
//!   ([`ResourceSlots::next_runnable`]); a task waiting for GPUs does not
//!   hold back tasks that need none.
//! - A task larger than its whole pool (in CPUs or a custom resource)
//!   still runs once that pool is idle, except in the free pool while
//!   bundles are reserved (what it lacks is reserved, not busy):
//!   feasibility was checked by the submitter, against the rank's total or
//!   the bundle's. A GPU request the rank or bundle can never serve is let
//!   through, so that it fails with the reason instead of waiting forever.
//! - Releasing a group gives its pools' free resources back to the free
//!   pool; what its running tasks hold comes back as they finish
//!   ([`ResourceSlots::finish`] for a bundle that is gone credits the free
//!   pool). A released group stays released: its late tasks are refused.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{Bundle, GpuGrant, GpuSlots, PlacementGroupId, Resources};

const EPSILON: f64 = 1e-9;

/// An amount of one resource in a pool.
#[derive(Debug, Clone, Copy, Default)]
struct Amount {
    free: f64,
    total: f64,
}

impl Amount {
    fn whole(amount: f64) -> Self {
        Amount {
            free: amount,
            total: amount,
        }
    }

    /// `need` may be taken: it fits, or (unless `strict`) it is larger than
    /// the whole pool and the pool is idle.
    fn admits(&self, need: f64, strict: bool) -> bool {
        need <= self.free + EPSILON
            || (!strict && need > self.total && self.free >= self.total - EPSILON)
    }
}

/// The CPUs and custom resources of one pool.
#[derive(Debug, Clone, Default)]
struct Pool {
    cpus: Amount,
    custom: BTreeMap<String, Amount>,
}

impl Pool {
    fn of(resources: &Resources) -> Self {
        Pool {
            cpus: Amount::whole(resources.cpus.max(0.0)),
            custom: resources
                .custom
                .iter()
                .map(|(name, &amount)| (name.clone(), Amount::whole(amount.max(0.0))))
                .collect(),
        }
    }

    fn admits(&self, need: &Resources, strict: bool) -> bool {
        self.cpus.admits(need.cpus.max(0.0), strict)
            && need.custom.iter().all(|(name, &amount)| {
                amount <= 0.0
                    || self
                        .custom
                        .get(name)
                        .copied()
                        .unwrap_or_default()
                        .admits(amount, strict)
            })
    }

    /// Adds `sign` × `amounts` to the free (and with `total`, the total)
    /// amounts.
    fn add(&mut self, cpus: f64, custom: &[(String, f64)], sign: f64, total: bool) {
        self.cpus.free += sign * cpus;
        if total {
            self.cpus.total += sign * cpus;
        }
        for (name, amount) in custom {
            let entry = self.custom.entry(name.clone()).or_default();
            entry.free += sign * amount;
            if total {
                entry.total += sign * amount;
            }
        }
    }
}

/// What a started task holds, to give back when it ends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Held {
    /// The bundle it runs in (`None`: the free pool).
    pub bundle: Option<Bundle>,
    /// CPU slots (its CPUs, at least 0).
    pub cpus: f64,
    /// Custom resources (name, amount).
    pub custom: Vec<(String, f64)>,
    /// Its GPU devices.
    pub gpus: GpuGrant,
}

/// The resources of one rank: the free pool and the bundles' pools (see
/// the module docs).
#[derive(Debug, Clone)]
pub struct ResourceSlots {
    /// The free pool: what bundles do not hold, less what is in use.
    free: Pool,
    /// Bundles reserved here.
    bundles: HashMap<Bundle, Pool>,
    /// The rank's devices and their pools.
    gpus: GpuSlots,
    /// Groups released here (their late tasks are refused).
    released: HashSet<PlacementGroupId>,
}

impl ResourceSlots {
    /// A rank offering `capacity`'s CPUs and custom resources and the GPU
    /// devices of `gpus` (`capacity.gpus` is not read: devices are ids),
    /// none reserved.
    pub fn new(capacity: &Resources, gpus: GpuSlots) -> Self {
        ResourceSlots {
            free: Pool::of(capacity),
            bundles: HashMap::new(),
            gpus,
            released: HashSet::new(),
        }
    }

    /// A rank with `cpus` slots and nothing else.
    pub fn cpus(cpus: f64) -> Self {
        ResourceSlots::new(&Resources::cpus(cpus), GpuSlots::with_count(0))
    }

    /// Free CPU slots of the free pool (below zero while over-subscribed).
    pub fn free(&self) -> f64 {
        self.free.cpus.free
    }

    /// CPU slots of the free pool in all (the rank's CPUs less the
    /// reserved ones).
    pub fn total(&self) -> f64 {
        self.free.cpus.total
    }

    /// Free CPU slots of the pool that tasks of `bundle` take from (`None`:
    /// the free pool; 0 for a bundle not reserved here).
    pub fn free_in(&self, bundle: Option<Bundle>) -> f64 {
        match bundle {
            None => self.free.cpus.free,
            Some(b) => self.bundles.get(&b).map_or(0.0, |p| p.cpus.free),
        }
    }

    /// Free amount of custom resource `name` in the pool of `bundle`.
    pub fn custom_free_in(&self, name: &str, bundle: Option<Bundle>) -> f64 {
        let pool = match bundle {
            None => Some(&self.free),
            Some(b) => self.bundles.get(&b),
        };
        pool.and_then(|p| p.custom.get(name))
            .map_or(0.0, |a| a.free)
    }

    /// The rank's GPUs and their pools.
    pub fn gpus(&self) -> &GpuSlots {
        &self.gpus
    }

    /// True once `group` was released here.
    pub fn is_released(&self, group: PlacementGroupId) -> bool {
        self.released.contains(&group)
    }

    /// Reserves bundles of `group` here (index, resources): their CPUs and
    /// custom resources leave the free pool (which may go below zero while
    /// tasks started before the reservation finish), their GPUs become
    /// specific devices of the bundle. A bundle reserved already is left
    /// as it is. Returns each new bundle's device ids (empty without GPUs).
    pub fn reserve(
        &mut self,
        group: PlacementGroupId,
        bundles: &[(u32, Resources)],
    ) -> Vec<(u32, Vec<u32>)> {
        let mut devices = Vec::new();
        for (index, resources) in bundles {
            let bundle = (group, *index);
            if self.bundles.contains_key(&bundle) {
                continue;
            }
            let pool = Pool::of(resources);
            let custom: Vec<(String, f64)> = pool
                .custom
                .iter()
                .map(|(n, a)| (n.clone(), a.total))
                .collect();
            self.free.add(pool.cpus.total, &custom, -1.0, true);
            self.bundles.insert(bundle, pool);
            devices.push((*index, self.gpus.reserve(bundle, resources.gpus.max(0.0))));
        }
        devices
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
                // What running tasks hold comes back when they end.
                self.free.cpus.free += pool.cpus.free;
                self.free.cpus.total += pool.cpus.total;
                for (name, amount) in pool.custom {
                    let entry = self.free.custom.entry(name).or_default();
                    entry.free += amount.free;
                    entry.total += amount.total;
                }
            }
        }
        self.gpus.release_group(group);
    }

    /// The pool work of `bundle` runs in: its own when reserved here, else
    /// the free pool.
    fn pool_key(&self, bundle: Option<Bundle>) -> Option<Bundle> {
        bundle.filter(|b| self.bundles.contains_key(b))
    }

    /// Whether a task needing `need` in `bundle` may get its GPUs now (or
    /// never can, and should start to fail).
    fn gpus_ready(&self, need: &Resources, bundle: Option<Bundle>) -> bool {
        let pool = self.pool_key(bundle);
        need.gpus <= 0.0
            || self.gpus.check_in(need.gpus, pool).is_err()
            || self.gpus.can_acquire_in(need.gpus, pool)
    }

    /// The first task of `queue` (what it needs, its bundle; in queue
    /// order) that may start now, FIFO within each pool: its position.
    pub fn next_runnable<'r, I>(&self, queue: I) -> Option<usize>
    where
        I: IntoIterator<Item = (&'r Resources, Option<Bundle>)>,
    {
        let strict_free = !self.bundles.is_empty();
        let mut blocked: Vec<Option<Bundle>> = Vec::new();
        for (at, (need, bundle)) in queue.into_iter().enumerate() {
            if blocked.contains(&bundle) {
                continue;
            }
            // A task waiting for GPUs does not hold back its pool.
            if !self.gpus_ready(need, bundle) {
                continue;
            }
            let fits = match bundle {
                None => self.free.admits(need, strict_free),
                Some(b) => self.bundles.get(&b).is_some_and(|p| p.admits(need, false)),
            };
            if fits {
                return Some(at);
            }
            blocked.push(bundle);
            if blocked.len() > self.bundles.len() {
                return None;
            }
        }
        None
    }

    /// A task needing `need` in `bundle` starts: takes its CPUs, custom
    /// resources and GPUs from its pool (the free pool when the bundle is
    /// not reserved here). Fails, taking nothing, when its GPUs cannot be
    /// had (why, for the task's error).
    pub fn start(&mut self, need: &Resources, bundle: Option<Bundle>) -> Result<Held, String> {
        let pool = self.pool_key(bundle);
        let gpus = match self.gpus.acquire_in(need.gpus.max(0.0), pool) {
            Ok(Some(grant)) => grant,
            Ok(None) => return Err("its GPUs were taken meanwhile".to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let held = Held {
            bundle: pool,
            cpus: need.cpus.max(0.0),
            custom: need
                .custom
                .iter()
                .filter(|(_, &a)| a > 0.0)
                .map(|(n, &a)| (n.clone(), a))
                .collect(),
            gpus,
        };
        self.pool_mut(pool)
            .add(held.cpus, &held.custom, -1.0, false);
        Ok(held)
    }

    /// A task ended: what it held goes back to its pool (the free pool when
    /// its bundle was released meanwhile).
    pub fn finish(&mut self, held: &Held) {
        let pool = self.pool_key(held.bundle);
        self.pool_mut(pool).add(held.cpus, &held.custom, 1.0, false);
        self.gpus.release(&held.gpus);
    }

    fn pool_mut(&mut self, bundle: Option<Bundle>) -> &mut Pool {
        match bundle.and_then(|b| self.bundles.get_mut(&b)) {
            Some(pool) => pool,
            None => &mut self.free,
        }
    }

    /// A task blocks (or stops blocking): `slots` CPU slots go back to (or
    /// are taken again from) the pool of `bundle`. Its custom resources and
    /// GPUs stay held, as Ray keeps a blocked task's GPUs.
    pub fn take(&mut self, slots: f64, bundle: Option<Bundle>) {
        let pool = self.pool_key(bundle);
        self.pool_mut(pool).cpus.free -= slots;
    }

    /// Gives `slots` CPU slots back to the pool they came from (the free
    /// pool when their bundle was released meanwhile).
    pub fn give_back(&mut self, slots: f64, bundle: Option<Bundle>) {
        let pool = self.pool_key(bundle);
        self.pool_mut(pool).cpus.free += slots;
    }

    /// Takes GPUs for an actor of `bundle` (`None`: outside groups) starting
    /// here: `Ok(None)` when it must wait.
    pub fn acquire_gpus(
        &mut self,
        amount: f64,
        bundle: Option<Bundle>,
    ) -> Result<Option<GpuGrant>, crate::GpuRequestError> {
        let pool = self.pool_key(bundle);
        self.gpus.acquire_in(amount, pool)
    }

    /// Takes GPUs for an actor whose bundle is not known: from the free
    /// pool; when the free pool can never serve `amount` (the devices are
    /// reserved), from a bundle of `group` (any group when `None`) that can
    /// serve it now.
    pub fn acquire_gpus_any(
        &mut self,
        amount: f64,
        group: Option<PlacementGroupId>,
    ) -> Result<Option<GpuGrant>, crate::GpuRequestError> {
        if let Some(grant) = self.gpus.acquire_in(amount, None)? {
            return Ok(Some(grant));
        }
        if self.gpus.could_serve_in(amount, None) {
            return Ok(None);
        }
        let mut mine: Vec<Bundle> = self
            .bundles
            .keys()
            .filter(|b| group.is_none_or(|g| b.0 == g))
            .copied()
            .collect();
        mine.sort();
        for bundle in mine {
            if let Ok(Some(grant)) = self.gpus.acquire_in(amount, Some(bundle)) {
                return Ok(Some(grant));
            }
        }
        Ok(None)
    }

    /// Gives GPUs back (an actor's, when it stops).
    pub fn release_gpus(&mut self, grant: &GpuGrant) {
        self.gpus.release(grant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(seq: u64) -> PlacementGroupId {
        PlacementGroupId { creator: 0, seq }
    }

    fn need(cpus: f64) -> Resources {
        Resources::cpus(cpus)
    }

    /// Starts the task `next_runnable` picks, as a worker would.
    fn start(
        slots: &mut ResourceSlots,
        queue: &mut Vec<(Resources, Option<Bundle>)>,
    ) -> Option<Held> {
        let at = slots.next_runnable(queue.iter().map(|(r, b)| (r, *b)))?;
        let (need, bundle) = queue.remove(at);
        Some(slots.start(&need, bundle).expect("starts"))
    }

    #[test]
    fn a_task_larger_than_the_rank_runs_when_it_is_idle() {
        let mut slots = ResourceSlots::cpus(2.0);
        assert_eq!(slots.next_runnable([(&need(4.0), None)]), Some(0));
        slots.take(1.0, None);
        assert_eq!(slots.next_runnable([(&need(4.0), None)]), None);
        slots.give_back(1.0, None);
        assert_eq!(slots.next_runnable([(&need(-1.0), None)]), Some(0));
    }

    #[test]
    fn pools_are_fifo_and_independent() {
        let g = group(1);
        let mut slots = ResourceSlots::cpus(3.0);
        slots.reserve(g, &[(0, need(1.0)), (1, need(1.0))]);
        slots.reserve(g, &[(0, need(5.0))]);
        assert!((slots.free() - 1.0).abs() < 1e-9 && (slots.total() - 1.0).abs() < 1e-9);
        let held = slots.start(&need(1.0), Some((g, 0))).expect("fits");
        // Bundle 0 is full: its second task waits, and so does the one
        // queued behind it in the same pool; the free pool's task runs.
        let mut queue = vec![
            (need(1.0), Some((g, 0))),
            (need(0.5), Some((g, 0))),
            (need(1.0), None),
        ];
        let outside = start(&mut slots, &mut queue).expect("the free pool's task");
        assert_eq!(outside.bundle, None);
        assert_eq!(start(&mut slots, &mut queue), None);
        assert_eq!(slots.free_in(Some((g, 1))), 1.0);
        assert_eq!(slots.free_in(Some((group(9), 0))), 0.0);
        // Releasing: the pools' free CPUs return at once, the held one
        // when its task ends.
        slots.release(g);
        assert!(slots.is_released(g));
        assert!((slots.free() - 1.0).abs() < 1e-9 && (slots.total() - 3.0).abs() < 1e-9);
        slots.finish(&held);
        assert!((slots.free() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn custom_resources_are_counted_per_pool() {
        let g = group(1);
        let mut rank = Resources::cpus(4.0);
        rank.custom.insert("ssd".into(), 2.0);
        let mut slots = ResourceSlots::new(&rank, GpuSlots::with_count(0));
        let mut ssd = Resources::cpus(0.0);
        ssd.custom.insert("ssd".into(), 1.0);
        slots.reserve(g, &[(0, ssd.clone())]);
        let outside = slots.start(&ssd, None).expect("one ssd left outside");
        // The free pool has none left, strictly: the other is reserved.
        assert_eq!(slots.next_runnable([(&ssd, None)]), None);
        let inside = slots.start(&ssd, Some((g, 0))).expect("the bundle's");
        assert_eq!(slots.next_runnable([(&ssd, Some((g, 0)))]), None);
        slots.finish(&outside);
        assert_eq!(slots.next_runnable([(&ssd, None)]), Some(0));
        slots.release(g);
        slots.finish(&inside);
        assert!((slots.custom_free_in("ssd", None) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_bundle_task_gets_the_bundle_gpus_and_others_wait() {
        let g = group(1);
        let mut slots = ResourceSlots::new(&Resources::cpus(4.0), GpuSlots::with_count(2));
        let mut one_gpu = Resources::cpus(1.0);
        one_gpu.gpus = 1.0;
        let reserved = slots.reserve(g, &[(0, one_gpu.clone())]);
        assert_eq!(reserved, vec![(0, vec![0])]);
        let outside = slots.start(&one_gpu, None).expect("device 1");
        assert_eq!(outside.gpus.ids, vec![1]);
        // A second task outside waits for a GPU; a CPU task behind it runs.
        let queue = [(&one_gpu, None), (&need(1.0), None)];
        assert_eq!(slots.next_runnable(queue), Some(1));
        let inside = slots.start(&one_gpu, Some((g, 0))).expect("device 0");
        assert_eq!(inside.gpus.ids, vec![0]);
        slots.finish(&inside);
        // Two GPUs in a one-GPU bundle: let through, to fail with why.
        let mut two = one_gpu.clone();
        two.gpus = 2.0;
        assert_eq!(slots.next_runnable([(&two, Some((g, 0)))]), Some(0));
        assert!(slots.start(&two, Some((g, 0))).is_err());
        // An actor not told its bundle: the free pool is busy but could
        // serve it, so it waits; with every device reserved it gets the
        // bundle's.
        assert_eq!(slots.acquire_gpus_any(1.0, Some(g)).unwrap(), None);
        let mut full = ResourceSlots::new(&Resources::cpus(4.0), GpuSlots::with_count(1));
        full.reserve(g, &[(0, one_gpu.clone())]);
        let grant = full
            .acquire_gpus_any(1.0, Some(g))
            .unwrap()
            .expect("the bundle's");
        assert_eq!((grant.ids.clone(), grant.bundle), (vec![0], Some((g, 0))));
        full.release_gpus(&grant);
        assert_eq!(
            full.acquire_gpus(1.0, Some((g, 0)))
                .unwrap()
                .expect("back")
                .ids,
            vec![0]
        );
    }
}
