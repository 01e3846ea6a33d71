//! Amounts of resources (Ray's `num_cpus`, `num_gpus`, custom `resources`).
//!
//! Amounts are `f64` because Ray's are (a task may ask for half a GPU);
//! comparisons allow `1e-9` of rounding so that reserving and releasing
//! fractional amounts many times never leaves a rank a hair short.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Amounts of resources: what a rank offers, or what a task needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU slots.
    pub cpus: f64,
    /// GPUs.
    pub gpus: f64,
    /// Named custom resources.
    pub custom: BTreeMap<String, f64>,
}

impl Resources {
    /// True when `need` fits in `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        need.cpus <= self.cpus + 1e-9
            && need.gpus <= self.gpus + 1e-9
            && need.custom.iter().all(|(name, amount)| {
                self.custom.get(name).copied().unwrap_or(0.0) + 1e-9 >= *amount
            })
    }

    /// CPUs only (the usual bundle and task shape).
    pub fn cpus(cpus: f64) -> Self {
        Resources {
            cpus,
            ..Resources::default()
        }
    }

    /// True when nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.cpus == 0.0 && self.gpus == 0.0 && self.custom.values().all(|&a| a == 0.0)
    }

    /// True when some amount is negative or not a number.
    pub(crate) fn is_invalid(&self) -> bool {
        let bad = |a: f64| a.is_nan() || a < 0.0;
        bad(self.cpus) || bad(self.gpus) || self.custom.values().any(|&a| bad(a))
    }

    /// Takes `used` out of `self` (a reservation).
    pub(crate) fn subtract(&mut self, used: &Resources) {
        self.cpus -= used.cpus;
        self.gpus -= used.gpus;
        for (name, amount) in &used.custom {
            *self.custom.entry(name.clone()).or_insert(0.0) -= amount;
        }
    }

    /// Gives `freed` back to `self` (a released reservation).
    pub(crate) fn add(&mut self, freed: &Resources) {
        self.cpus += freed.cpus;
        self.gpus += freed.gpus;
        for (name, amount) in &freed.custom {
            *self.custom.entry(name.clone()).or_insert(0.0) += amount;
        }
    }
}

/// `{cpus: 1, gpus: 0.5, ssd: 2}`; amounts of zero are left out.
impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.cpus != 0.0 {
            parts.push(format!("cpus: {}", self.cpus));
        }
        if self.gpus != 0.0 {
            parts.push(format!("gpus: {}", self.gpus));
        }
        for (name, amount) in &self.custom {
            if *amount != 0.0 {
                parts.push(format!("{name}: {amount}"));
            }
        }
        write!(f, "{{{}}}", parts.join(", "))
    }
}
