//! A rank's GPUs, as its executor hands them out: which specific devices a
//! task or actor asking for `num_gpus` gets, Ray's rules, and which of them
//! placement-group bundles hold. Pure accounting; the executor asks
//! [`GpuSlots::acquire_in`] when it starts a task (and the actor host when
//! it starts an actor) and gives the ids back with [`GpuSlots::release`]
//! when the work ends.
//!
//! # Rules (as Ray's `num_gpus`, `ray.get_gpu_ids()`)
//! - Ids are the rank's devices in the order it sees them (CUDA ordinals
//!   of its process), each with a capacity of 1.0.
//! - A whole request (`num_gpus` = 1, 2, ...) gets that many devices that
//!   are entirely free, lowest ids first; nobody else uses them meanwhile.
//! - A fractional request (0 < `num_gpus` < 1) shares one device: the
//!   lowest-id device whose remaining capacity covers it (fractions of
//!   several tasks add up on one device until it is full, as in Ray).
//! - A request above 1 that is not whole is refused ([`GpuRequestError`]):
//!   Ray refuses it too, since a task cannot hold 1.5 devices.
//! - A request that cannot be served now returns `None` and the work
//!   waits; the submitter checked feasibility against the rank's total, so
//!   it fits once enough work has finished.
//!
//! # Pools: the free pool and the bundles' devices
//! Each device is shared out between *pools*: the free pool (work outside
//! placement groups) and the bundles reserved on the rank
//! ([`GpuSlots::reserve`]). A bundle asking for whole GPUs takes whole
//! devices (as Ray gives a bundle specific GPU ids); one asking for a
//! fraction takes that share of one device. Reserving prefers devices
//! nobody uses now, lowest ids first. Work runs on its own pool's shares
//! only: a task of a bundle gets its ids from the bundle's devices, other
//! work never gets a bundle's device, so a task outside the group cannot
//! take a GPU a bundle reserved.
//!
//! A pool's room on a device is its share less what its work holds there,
//! and never more than the device has left in all: a bundle reserved on a
//! device that older work still uses (reserved while that work ran) waits
//! for it to finish instead of sharing it. Releasing a group gives its
//! shares back to the free pool; ids its running work holds come back as
//! that work ends.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Bundle, PlacementGroupId};

/// Why a GPU request can never be served as asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GpuRequestError {
    /// More than one device, but not a whole number of them.
    #[error("num_gpus {0} is above 1 but not a whole number: ask for a fraction of one GPU or for whole GPUs")]
    NotWhole(f64),
    /// More devices than the rank (or the bundle) has.
    #[error("num_gpus {asked} is more than the {has} GPU(s) of this rank")]
    TooMany {
        /// Devices asked for.
        asked: f64,
        /// Devices of the rank.
        has: usize,
    },
    /// More than the placement-group bundle holds on this rank.
    #[error(
        "num_gpus {asked} is more than bundle {bundle} of {group} holds on this rank ({holds})"
    )]
    MoreThanBundle {
        /// Devices asked for.
        asked: f64,
        /// The bundle's group.
        group: PlacementGroupId,
        /// The bundle's index.
        bundle: u32,
        /// Whole devices of the bundle, or its share of one.
        holds: f64,
    },
}

/// What one task or actor holds: the ids, how much of each, and the pool
/// they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuGrant {
    /// The devices, lowest first.
    pub ids: Vec<u32>,
    /// The share of each device held (1.0 for whole requests).
    pub share: f64,
    /// The bundle whose devices they are (`None`: the free pool).
    #[serde(default)]
    pub bundle: Option<Bundle>,
}

/// One pool's part of a device.
#[derive(Debug, Clone)]
struct Share {
    /// `None`: the free pool.
    pool: Option<Bundle>,
    /// The part of the device the pool holds.
    reserved: f64,
    /// What the pool's work holds of it now.
    used: f64,
}

/// One device: its id and how it is shared out (`shares[0]` is the free
/// pool's; the shares' `reserved` add up to 1).
#[derive(Debug, Clone)]
struct Device {
    id: u32,
    shares: Vec<Share>,
}

impl Device {
    fn share(&self, pool: Option<Bundle>) -> Option<&Share> {
        self.shares.iter().find(|s| s.pool == pool)
    }

    fn share_mut(&mut self, pool: Option<Bundle>) -> Option<&mut Share> {
        self.shares.iter_mut().find(|s| s.pool == pool)
    }

    /// What the device has left, whoever's it is.
    fn unused(&self) -> f64 {
        1.0 - self.shares.iter().map(|s| s.used).sum::<f64>()
    }

    /// What work of `pool` may take of it now.
    fn room(&self, pool: Option<Bundle>) -> f64 {
        self.share(pool)
            .map_or(0.0, |s| (s.reserved - s.used).min(self.unused()))
    }

    /// All of the device is `pool`'s.
    fn wholly(&self, pool: Option<Bundle>) -> bool {
        self.share(pool)
            .is_some_and(|s| s.reserved >= 1.0 - EPSILON)
    }
}

/// The GPUs of one rank (see the module docs).
#[derive(Debug, Clone)]
pub struct GpuSlots {
    devices: Vec<Device>,
    ids: Vec<u32>,
}

const EPSILON: f64 = 1e-9;

impl GpuSlots {
    /// A rank whose devices are `ids` (in the order its process sees them).
    pub fn new(ids: Vec<u32>) -> Self {
        let devices = ids
            .iter()
            .map(|&id| Device {
                id,
                shares: vec![Share {
                    pool: None,
                    reserved: 1.0,
                    used: 0.0,
                }],
            })
            .collect();
        GpuSlots { devices, ids }
    }

    /// A rank with devices `0..count`.
    pub fn with_count(count: usize) -> Self {
        GpuSlots::new((0..count as u32).collect())
    }

    /// The rank's devices.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Capacity the free pool has left, summed over devices.
    pub fn available(&self) -> f64 {
        self.available_in(None)
    }

    /// Capacity `pool` has left, summed over devices.
    pub fn available_in(&self, pool: Option<Bundle>) -> f64 {
        self.devices.iter().map(|d| d.room(pool).max(0.0)).sum()
    }

    /// The devices `bundle` holds here, lowest first (whole or in part).
    pub fn ids_of(&self, bundle: Bundle) -> Vec<u32> {
        self.devices
            .iter()
            .filter(|d| d.share(Some(bundle)).is_some())
            .map(|d| d.id)
            .collect()
    }

    /// Checks the shape of a request (a fraction of one device, or whole
    /// devices), on any rank: what a submitter checks before placing.
    pub fn check_shape(amount: f64) -> Result<(), GpuRequestError> {
        if amount > 1.0 + EPSILON && (amount - amount.round()).abs() > EPSILON {
            return Err(GpuRequestError::NotWhole(amount));
        }
        Ok(())
    }

    /// Checks a request against the rules and this rank's devices, without
    /// taking anything.
    pub fn check(&self, amount: f64) -> Result<(), GpuRequestError> {
        self.check_in(amount, None)
    }

    /// [`GpuSlots::check`] for work of `pool`: a bundle's work must also
    /// fit what the bundle holds (whole devices, or its share of one).
    pub fn check_in(&self, amount: f64, pool: Option<Bundle>) -> Result<(), GpuRequestError> {
        Self::check_shape(amount)?;
        if amount > self.ids.len() as f64 + EPSILON {
            return Err(GpuRequestError::TooMany {
                asked: amount,
                has: self.ids.len(),
            });
        }
        let Some((group, bundle)) = pool else {
            return Ok(());
        };
        if !self.could_serve_in(amount, pool) {
            return Err(GpuRequestError::MoreThanBundle {
                asked: amount,
                group,
                bundle,
                holds: self.holds(amount, pool),
            });
        }
        Ok(())
    }

    /// What `pool` holds for a request of `amount`: its whole devices for
    /// a whole request, its largest share of one device for a fraction.
    fn holds(&self, amount: f64, pool: Option<Bundle>) -> f64 {
        if amount < 1.0 - EPSILON {
            self.devices
                .iter()
                .filter_map(|d| d.share(pool).map(|s| s.reserved))
                .fold(0.0, f64::max)
        } else {
            self.devices.iter().filter(|d| d.wholly(pool)).count() as f64
        }
    }

    /// Whether `pool` could serve `amount` once its work has finished
    /// (what it holds, whatever is in use).
    pub fn could_serve_in(&self, amount: f64, pool: Option<Bundle>) -> bool {
        amount <= EPSILON || amount <= self.holds(amount, pool) + EPSILON
    }

    /// Takes devices of the free pool for `amount` GPUs if it can be served
    /// now; `Ok(None)` when the work must wait; an empty grant for `amount` 0.
    pub fn acquire(&mut self, amount: f64) -> Result<Option<GpuGrant>, GpuRequestError> {
        self.acquire_in(amount, None)
    }

    /// [`GpuSlots::acquire`] from the devices of `pool` (a bundle reserved
    /// here; `None`: the free pool).
    pub fn acquire_in(
        &mut self,
        amount: f64,
        pool: Option<Bundle>,
    ) -> Result<Option<GpuGrant>, GpuRequestError> {
        self.check_in(amount, pool)?;
        if amount <= EPSILON {
            return Ok(Some(GpuGrant {
                bundle: pool,
                ..GpuGrant::default()
            }));
        }
        if amount < 1.0 - EPSILON {
            let Some(device) = self
                .devices
                .iter_mut()
                .find(|d| d.room(pool) + EPSILON >= amount)
            else {
                return Ok(None);
            };
            if let Some(share) = device.share_mut(pool) {
                share.used += amount;
            }
            return Ok(Some(GpuGrant {
                ids: vec![device.id],
                share: amount,
                bundle: pool,
            }));
        }
        let whole = amount.round() as usize;
        let free: Vec<usize> = (0..self.devices.len())
            .filter(|&i| {
                let d = &self.devices[i];
                d.wholly(pool) && d.room(pool) >= 1.0 - EPSILON
            })
            .take(whole)
            .collect();
        if free.len() < whole {
            return Ok(None);
        }
        for &i in &free {
            if let Some(share) = self.devices[i].share_mut(pool) {
                share.used = 1.0;
            }
        }
        Ok(Some(GpuGrant {
            ids: free.iter().map(|&i| self.devices[i].id).collect(),
            share: 1.0,
            bundle: pool,
        }))
    }

    /// Whether [`GpuSlots::acquire`] would serve `amount` now (false for a
    /// request it refuses).
    pub fn can_acquire(&self, amount: f64) -> bool {
        self.can_acquire_in(amount, None)
    }

    /// Whether [`GpuSlots::acquire_in`] would serve `amount` from `pool` now.
    pub fn can_acquire_in(&self, amount: f64, pool: Option<Bundle>) -> bool {
        self.clone()
            .acquire_in(amount, pool)
            .is_ok_and(|g| g.is_some())
    }

    /// Gives a grant back, to its bundle's devices (to the free pool when
    /// the bundle was released meanwhile). Ids the rank does not have are
    /// ignored.
    pub fn release(&mut self, grant: &GpuGrant) {
        for id in &grant.ids {
            let Some(device) = self.devices.iter_mut().find(|d| d.id == *id) else {
                continue;
            };
            let pool = if device.share(grant.bundle).is_some() {
                grant.bundle
            } else {
                None
            };
            if let Some(share) = device.share_mut(pool) {
                share.used = (share.used - grant.share).max(0.0);
            }
        }
    }

    /// Reserves `amount` GPUs for `bundle`: whole devices of the free pool
    /// for a whole amount, a share of one device for a fraction; devices
    /// nobody uses first, lowest ids first. Returns the ids taken (fewer
    /// than asked when the free pool lacks them; an amount not whole above
    /// one is rounded up to whole devices). Reserving a bundle twice takes
    /// nothing more.
    pub fn reserve(&mut self, bundle: Bundle, amount: f64) -> Vec<u32> {
        let pool = Some(bundle);
        if amount <= EPSILON || self.devices.iter().any(|d| d.share(pool).is_some()) {
            return self.ids_of(bundle);
        }
        let (need, share) = if amount < 1.0 - EPSILON {
            (1, amount)
        } else {
            (amount.ceil() as usize, 1.0)
        };
        // The free pool's devices that can give `share`, idle ones first.
        let mut order: Vec<usize> = (0..self.devices.len())
            .filter(|&i| {
                self.devices[i]
                    .share(None)
                    .is_some_and(|s| s.reserved + EPSILON >= share)
            })
            .collect();
        order.sort_by_key(|&i| {
            let idle = self.devices[i].room(None) + EPSILON >= share;
            (!idle, i)
        });
        let mut taken = Vec::new();
        for &i in order.iter().take(need) {
            let device = &mut self.devices[i];
            if let Some(free) = device.share_mut(None) {
                free.reserved = (free.reserved - share).max(0.0);
            }
            device.shares.push(Share {
                pool,
                reserved: share,
                used: 0.0,
            });
            taken.push(device.id);
        }
        taken.sort_unstable();
        taken
    }

    /// Gives every bundle of `group` back to the free pool; what its
    /// running work holds is counted there until that work ends.
    pub fn release_group(&mut self, group: PlacementGroupId) {
        for device in &mut self.devices {
            let (mut reserved, mut used) = (0.0, 0.0);
            device.shares.retain(|s| {
                let mine = s.pool.is_some_and(|(g, _)| g == group);
                if mine {
                    reserved += s.reserved;
                    used += s.used;
                }
                !mine
            });
            if let Some(free) = device.share_mut(None) {
                free.reserved = (free.reserved + reserved).min(1.0);
                free.used += used;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_gpus_are_exclusive_and_come_back() {
        let mut gpus = GpuSlots::with_count(2);
        let a = gpus.acquire(1.0).unwrap().expect("a GPU");
        let b = gpus.acquire(1.0).unwrap().expect("the other GPU");
        assert_eq!((a.ids.clone(), b.ids.clone()), (vec![0], vec![1]));
        assert_eq!(gpus.acquire(1.0).unwrap(), None, "both are taken");
        gpus.release(&a);
        assert_eq!(gpus.acquire(1.0).unwrap().expect("back").ids, vec![0]);
        gpus.release(&b);
        assert!(!gpus.can_acquire(2.0), "GPU 0 is still held");
    }

    #[test]
    fn fractions_share_a_device_until_it_is_full() {
        let mut gpus = GpuSlots::new(vec![4, 5]);
        let quarter = gpus.acquire(0.25).unwrap().expect("a share");
        let half = gpus.acquire(0.5).unwrap().expect("a share");
        assert_eq!((quarter.ids.clone(), half.ids.clone()), (vec![4], vec![4]));
        let more = gpus.acquire(0.5).unwrap().expect("the next device");
        assert_eq!(more.ids, vec![5]);
        // Device 4 has a quarter left: a whole request needs a free device.
        assert_eq!(gpus.acquire(1.0).unwrap(), None);
        assert_eq!(gpus.acquire(0.25).unwrap().expect("fits").ids, vec![4]);
        gpus.release(&more);
        assert_eq!(gpus.acquire(1.0).unwrap().expect("free again").ids, vec![5]);
        assert!((gpus.available() - 0.0).abs() < 1e-9);
    }

    #[test]
    fn impossible_requests_are_refused_with_a_reason() {
        let mut gpus = GpuSlots::with_count(2);
        assert_eq!(gpus.acquire(1.5), Err(GpuRequestError::NotWhole(1.5)));
        assert!(matches!(
            gpus.acquire(3.0),
            Err(GpuRequestError::TooMany { has: 2, .. })
        ));
        assert_eq!(gpus.acquire(0.0).unwrap(), Some(GpuGrant::default()));
        assert_eq!(gpus.acquire(2.0).unwrap().expect("both").ids, vec![0, 1]);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    fn bundle(seq: u64, index: u32) -> Bundle {
        (PlacementGroupId { creator: 0, seq }, index)
    }

    #[test]
    fn a_bundle_holds_its_devices_against_other_work() {
        let mut gpus = GpuSlots::with_count(2);
        let b = bundle(1, 0);
        assert_eq!(gpus.reserve(b, 1.0), vec![0]);
        assert_eq!(gpus.reserve(b, 1.0), vec![0], "reserved once");
        // Outside the group: only device 1.
        let other = gpus.acquire(1.0).unwrap().expect("device 1");
        assert_eq!(other.ids, vec![1]);
        assert_eq!(gpus.acquire(1.0).unwrap(), None, "device 0 is the bundle's");
        // The bundle's task gets the bundle's device.
        let mine = gpus.acquire_in(1.0, Some(b)).unwrap().expect("device 0");
        assert_eq!((mine.ids.clone(), mine.bundle), (vec![0], Some(b)));
        assert_eq!(gpus.acquire_in(1.0, Some(b)).unwrap(), None);
        assert!(matches!(
            gpus.check_in(2.0, Some(b)),
            Err(GpuRequestError::MoreThanBundle { holds, .. }) if holds == 1.0
        ));
        // Released while its task runs: the device comes back when it ends.
        gpus.release_group(b.0);
        assert_eq!(gpus.acquire(1.0).unwrap(), None);
        gpus.release(&mine);
        assert_eq!(gpus.acquire(1.0).unwrap().expect("back").ids, vec![0]);
        gpus.release(&other);
        assert!((gpus.available() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn fractions_of_a_device_and_devices_in_use() {
        let mut gpus = GpuSlots::with_count(2);
        // Device 0 is in use when the bundles are reserved: they take
        // device 1 first, then wait for device 0 rather than share it.
        let running = gpus.acquire(1.0).unwrap().expect("device 0");
        let half = bundle(1, 0);
        assert_eq!(gpus.reserve(half, 0.5), vec![1]);
        let two = bundle(2, 0);
        assert_eq!(gpus.reserve(two, 1.0), vec![0]);
        assert_eq!(gpus.acquire_in(1.0, Some(two)).unwrap(), None, "in use");
        let share = gpus.acquire_in(0.5, Some(half)).unwrap().expect("share");
        assert_eq!(share.ids, vec![1]);
        assert_eq!(gpus.acquire_in(0.25, Some(half)).unwrap(), None);
        let rest = gpus.acquire(0.5).unwrap().expect("the free half of 1");
        assert_eq!(rest.ids, vec![1]);
        gpus.release(&running);
        assert_eq!(
            gpus.acquire_in(1.0, Some(two))
                .unwrap()
                .expect("free now")
                .ids,
            vec![0]
        );
        assert_eq!(gpus.ids_of(half), vec![1]);
    }
}
