//! Per-call options, with Ray's names: `num_cpus`, `num_gpus`, custom
//! `resources`, `max_retries`, node affinity (`node`, hard; `node_soft`,
//! Ray's `NodeAffinitySchedulingStrategy(soft=True)`), `spread` (Ray's
//! `scheduling_strategy="SPREAD"`), placement groups (`placement_group`,
//! Ray's `PlacementGroupSchedulingStrategy`), and Lumen's exact placement
//! (`rank`).
//!
//! The scheduling vocabulary these options are made of ([`Resources`],
//! [`PlacementGroupScheduling`], [`SchedulingStrategy`]) is `lumen_sched`'s,
//! re-exported here at the paths users know; the options themselves also
//! carry retries, restarts and names, which are the runtime's.

use serde::{Deserialize, Serialize};

use lumen_transport::Rank;

pub use lumen_sched::{PlacementGroupScheduling, Resources, SchedulingStrategy};

/// Options of one task submission (see `f::options()` of a remote function).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// What the task needs while it runs (default: 1 CPU).
    pub resources: Resources,
    /// How often the task is run again when its rank dies (default 3, as Ray).
    pub max_retries: u32,
    /// Run on this node (index in the job), any rank of it.
    pub node: Option<u32>,
    /// Run on exactly this rank.
    pub rank: Option<Rank>,
    /// Run in this placement group, out of its bundle's resources.
    pub placement_group: Option<PlacementGroupScheduling>,
    /// How it is spread over the job: the default (data locality, then the
    /// least loaded), SPREAD, or soft node affinity.
    #[serde(default)]
    pub scheduling: SchedulingStrategy,
    /// Prefer a rank whose NIC is on its NUMA node, when that rank is not
    /// busier (network-heavy work; see `lumen_sched`'s policy docs).
    #[serde(default)]
    pub near_nic: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            resources: Resources {
                cpus: 1.0,
                ..Resources::default()
            },
            max_retries: 3,
            node: None,
            rank: None,
            placement_group: None,
            scheduling: SchedulingStrategy::Default,
            near_nic: false,
        }
    }
}

/// Options of an actor creation (see `Type::actor_options()`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActorOptions {
    /// What the actor needs on its rank (checked for feasibility; the actor
    /// runs on a thread of its own).
    pub resources: Resources,
    /// Host it on this node.
    pub node: Option<u32>,
    /// Host it on exactly this rank.
    pub rank: Option<Rank>,
    /// Host it on the rank of a bundle of this placement group (its
    /// resources must fit the bundle's).
    pub placement_group: Option<PlacementGroupScheduling>,
    /// Register it under this job-wide name (see `Runtime::get_actor`).
    pub name: Option<String>,
    /// How often the creator restarts it (fresh state, on another rank)
    /// when its rank dies (default 0, as Ray). Calls in flight then fail,
    /// unless `max_task_retries` allows them to run again.
    pub max_restarts: u32,
    /// How often a method call whose actor's rank died is sent again, to the
    /// restarted actor (default 0, as Ray; `u32::MAX` for Ray's -1). A call
    /// may then run twice (once partly, on the dead rank): retry only calls
    /// that can be repeated.
    pub max_task_retries: u32,
    /// Its place in an actor mesh (set by `Runtime::actor_mesh`; read in
    /// the actor with `lumen::mesh_member` and `lumen::mesh_communicator`).
    #[doc(hidden)]
    pub mesh: Option<crate::runtime::mesh::MeshMember>,
    /// How it is spread over the job: the default (the rank with the fewest
    /// actors placed by its creator), SPREAD, or soft node affinity.
    #[serde(default)]
    pub scheduling: SchedulingStrategy,
}

/// Builder methods shared by the generated per-function call types
/// (`f::options()`). Used by `#[lumen::remote]`; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_option_methods {
    ([$($vis:tt)*]) => {
        /// CPU slots the task needs (default 1; may be fractional).
        $($vis)* fn num_cpus(mut self, cpus: f64) -> Self {
            self.options.resources.cpus = cpus;
            self
        }
        /// GPUs the task needs.
        $($vis)* fn num_gpus(mut self, gpus: f64) -> Self {
            self.options.resources.gpus = gpus;
            self
        }
        /// An amount of a custom resource the task needs.
        $($vis)* fn resource(mut self, name: &str, amount: f64) -> Self {
            self.options.resources.custom.insert(name.to_string(), amount);
            self
        }
        /// Retries when the executing rank dies (default 3).
        $($vis)* fn max_retries(mut self, retries: u32) -> Self {
            self.options.max_retries = retries;
            self
        }
        /// Prefers a rank whose NIC is on its NUMA node (when not busier):
        /// for network-heavy tasks.
        $($vis)* fn near_nic(mut self) -> Self {
            self.options.near_nic = true;
            self
        }
        /// Runs on a rank of this node.
        $($vis)* fn node(mut self, node: u32) -> Self {
            self.options.node = Some(node);
            self
        }
        /// Runs on exactly this rank.
        $($vis)* fn rank(mut self, rank: u32) -> Self {
            self.options.rank = Some(rank);
            self
        }
        /// Spreads tasks over nodes in round robin, the least loaded rank
        /// of each (Ray's `scheduling_strategy="SPREAD"`).
        $($vis)* fn spread(mut self) -> Self {
            self.options.scheduling = $crate::runtime::SchedulingStrategy::Spread;
            self
        }
        /// Runs on a rank of this node when it has one that fits, else
        /// anywhere (Ray's `NodeAffinitySchedulingStrategy(soft=True)`).
        $($vis)* fn node_soft(mut self, node: u32) -> Self {
            self.options.scheduling = $crate::runtime::SchedulingStrategy::PreferNode(node);
            self
        }
        /// Runs in a placement group, out of the resources reserved for
        /// bundle `bundle_index` (`None`: any bundle they fit in), on that
        /// bundle's rank.
        $($vis)* fn placement_group(
            mut self,
            group: &$crate::runtime::PlacementGroup,
            bundle_index: Option<u32>,
        ) -> Self {
            self.options.placement_group = Some($crate::runtime::PlacementGroupScheduling {
                group: group.id(),
                bundle_index,
            });
            self
        }
        /// All options at once.
        $($vis)* fn with_options(mut self, options: $crate::TaskOptions) -> Self {
            self.options = options;
            self
        }
    };
}

/// Builder methods of the generated actor-creation types
/// (`Type::actor_options()`). Used by `#[lumen::actor]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __actor_option_methods {
    ([$($vis:tt)*]) => {
        /// CPU slots the actor needs on its rank.
        $($vis)* fn num_cpus(mut self, cpus: f64) -> Self {
            self.options.resources.cpus = cpus;
            self
        }
        /// GPUs the actor needs on its rank.
        $($vis)* fn num_gpus(mut self, gpus: f64) -> Self {
            self.options.resources.gpus = gpus;
            self
        }
        /// An amount of a custom resource the actor needs.
        $($vis)* fn resource(mut self, name: &str, amount: f64) -> Self {
            self.options.resources.custom.insert(name.to_string(), amount);
            self
        }
        /// Hosts the actor on a rank of this node.
        $($vis)* fn node(mut self, node: u32) -> Self {
            self.options.node = Some(node);
            self
        }
        /// Hosts the actor on exactly this rank.
        $($vis)* fn rank(mut self, rank: u32) -> Self {
            self.options.rank = Some(rank);
            self
        }
        /// Spreads actors over nodes in round robin (Ray's
        /// `scheduling_strategy="SPREAD"`).
        $($vis)* fn spread(mut self) -> Self {
            self.options.scheduling = $crate::runtime::SchedulingStrategy::Spread;
            self
        }
        /// Hosts the actor on a rank of this node when it has one that
        /// fits, else anywhere (Ray's
        /// `NodeAffinitySchedulingStrategy(soft=True)`).
        $($vis)* fn node_soft(mut self, node: u32) -> Self {
            self.options.scheduling = $crate::runtime::SchedulingStrategy::PreferNode(node);
            self
        }
        /// Hosts the actor on the rank of bundle `bundle_index` of a
        /// placement group (`None`: any bundle its resources fit in).
        /// Removing the group kills the actor.
        $($vis)* fn placement_group(
            mut self,
            group: &$crate::runtime::PlacementGroup,
            bundle_index: Option<u32>,
        ) -> Self {
            self.options.placement_group = Some($crate::runtime::PlacementGroupScheduling {
                group: group.id(),
                bundle_index,
            });
            self
        }
        /// Registers the actor under a job-wide name.
        $($vis)* fn name(mut self, name: &str) -> Self {
            self.options.name = Some(name.to_string());
            self
        }
        /// Restarts the actor (fresh state) up to this many times when its
        /// rank dies.
        $($vis)* fn max_restarts(mut self, restarts: u32) -> Self {
            self.options.max_restarts = restarts;
            self
        }
        /// Sends a call in flight when the actor's rank dies again, to the
        /// restarted actor, up to this many times (needs `max_restarts`).
        $($vis)* fn max_task_retries(mut self, retries: u32) -> Self {
            self.options.max_task_retries = retries;
            self
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting() {
        let mut rank = Resources {
            cpus: 2.0,
            gpus: 1.0,
            ..Resources::default()
        };
        rank.custom.insert("ssd".into(), 1.0);
        let mut need = TaskOptions::default().resources;
        assert!(rank.fits(&need));
        need.cpus = 3.0;
        assert!(!rank.fits(&need));
        need.cpus = 0.5;
        need.custom.insert("ssd".into(), 1.0);
        assert!(rank.fits(&need));
        need.custom.insert("tpu".into(), 1.0);
        assert!(!rank.fits(&need));
    }
}
