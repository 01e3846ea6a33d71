//! The names of placement groups (Ray's `ray.util.placement_group`): their
//! ids, their strategies, and the option that schedules a task or an actor
//! into one. The table that reserves them is [`crate::PlacementTable`].

use serde::{Deserialize, Serialize};

use crate::Rank;

/// How a group's bundles are laid out over ranks and nodes (Ray's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes (then ranks) as fit; best effort.
    Pack,
    /// Each bundle on another rank, other nodes first; best effort.
    Spread,
    /// Every bundle on one node, or the group is not created.
    StrictPack,
    /// Every bundle on a node of its own, or the group is not created.
    StrictSpread,
}

impl std::fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

/// A placement group: the rank that created it and a number unique there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacementGroupId {
    /// The creating rank.
    pub creator: Rank,
    /// Unique at the creator.
    pub seq: u64,
}

impl std::fmt::Display for PlacementGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "placement group {}:{}", self.creator, self.seq)
    }
}

/// Runs a task or hosts an actor in a placement group (Ray's
/// `PlacementGroupSchedulingStrategy`): on the rank of one of its bundles,
/// out of that bundle's reserved resources instead of the rank's free ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementGroupScheduling {
    /// The group.
    pub group: PlacementGroupId,
    /// The bundle (Ray's `placement_group_bundle_index`); `None`: any
    /// bundle whose resources fit the request (Ray's -1).
    pub bundle_index: Option<u32>,
}

/// One bundle of a placement group: the group and the bundle's index in
/// it. An executor keeps one pool of resources (CPU slots, custom
/// resources, GPU devices) per bundle reserved on its rank (see
/// [`crate::ResourceSlots`]).
pub type Bundle = (PlacementGroupId, u32);
