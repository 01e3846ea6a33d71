//! Identifiers of objects and actors. An id names its creator, so any rank
//! can tell whom to ask about it without a central directory (the owner of
//! an object is the rank that created its first `ObjectRef`).

use serde::{Deserialize, Serialize};

use lumen_transport::Rank;

/// An object (and, for task results, the task that produces it): the owner
/// rank and a sequence number unique at that owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    /// The rank that owns the object: tracks its state, copies and references.
    pub owner: Rank,
    /// Unique at the owner.
    pub seq: u64,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "object {}:{}", self.owner, self.seq)
    }
}

/// An actor: the rank that created it and a sequence number unique there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// The creating rank.
    pub creator: Rank,
    /// Unique at the creator.
    pub seq: u64,
}

impl std::fmt::Display for ActorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "actor {}:{}", self.creator, self.seq)
    }
}
