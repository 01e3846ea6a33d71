//! A rank's GPUs, as its executor hands them out: which specific devices a
//! task or actor asking for `num_gpus` gets, Ray's rules. Pure accounting;
//! the executor asks [`GpuSlots::acquire`] when it starts a task (and the
//! actor host when it starts an actor) and gives the ids back with
//! [`GpuSlots::release`] when the work ends.
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

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a GPU request can never be served as asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GpuRequestError {
    /// More than one device, but not a whole number of them.
    #[error("num_gpus {0} is above 1 but not a whole number: ask for a fraction of one GPU or for whole GPUs")]
    NotWhole(f64),
    /// More devices than the rank has.
    #[error("num_gpus {asked} is more than the {has} GPU(s) of this rank")]
    TooMany {
        /// Devices asked for.
        asked: f64,
        /// Devices of the rank.
        has: usize,
    },
}

/// What one task or actor holds: the ids and how much of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuGrant {
    /// The devices, lowest first.
    pub ids: Vec<u32>,
    /// The share of each device held (1.0 for whole requests).
    pub share: f64,
}

/// The GPUs of one rank (see the module docs).
#[derive(Debug, Clone)]
pub struct GpuSlots {
    ids: Vec<u32>,
    /// Remaining capacity of each device, by position in `ids`.
    free: Vec<f64>,
}

const EPSILON: f64 = 1e-9;

impl GpuSlots {
    /// A rank whose devices are `ids` (in the order its process sees them).
    pub fn new(ids: Vec<u32>) -> Self {
        let free = vec![1.0; ids.len()];
        GpuSlots { ids, free }
    }

    /// A rank with devices `0..count`.
    pub fn with_count(count: usize) -> Self {
        GpuSlots::new((0..count as u32).collect())
    }

    /// The rank's devices.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Capacity left, summed over devices.
    pub fn available(&self) -> f64 {
        self.free.iter().sum()
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
        Self::check_shape(amount)?;
        if amount > self.ids.len() as f64 + EPSILON {
            return Err(GpuRequestError::TooMany {
                asked: amount,
                has: self.ids.len(),
            });
        }
        Ok(())
    }

    /// Takes devices for `amount` GPUs if it can be served now; `Ok(None)`
    /// when the work must wait; an empty grant for `amount` 0.
    pub fn acquire(&mut self, amount: f64) -> Result<Option<GpuGrant>, GpuRequestError> {
        self.check(amount)?;
        if amount <= EPSILON {
            return Ok(Some(GpuGrant::default()));
        }
        if amount < 1.0 - EPSILON {
            let Some(at) = self.free.iter().position(|&f| f + EPSILON >= amount) else {
                return Ok(None);
            };
            self.free[at] -= amount;
            return Ok(Some(GpuGrant {
                ids: vec![self.ids[at]],
                share: amount,
            }));
        }
        let whole = amount.round() as usize;
        let free: Vec<usize> = (0..self.ids.len())
            .filter(|&i| self.free[i] >= 1.0 - EPSILON)
            .take(whole)
            .collect();
        if free.len() < whole {
            return Ok(None);
        }
        for &i in &free {
            self.free[i] = 0.0;
        }
        Ok(Some(GpuGrant {
            ids: free.iter().map(|&i| self.ids[i]).collect(),
            share: 1.0,
        }))
    }

    /// Whether [`GpuSlots::acquire`] would serve `amount` now (false for a
    /// request it refuses).
    pub fn can_acquire(&self, amount: f64) -> bool {
        self.clone().acquire(amount).is_ok_and(|g| g.is_some())
    }

    /// Gives a grant back. Ids the rank does not have are ignored.
    pub fn release(&mut self, grant: &GpuGrant) {
        for id in &grant.ids {
            if let Some(at) = self.ids.iter().position(|i| i == id) {
                self.free[at] = (self.free[at] + grant.share).min(1.0);
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
