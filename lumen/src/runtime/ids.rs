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

/// The bit of `ObjectId::seq` that marks an actor's handle count (see
/// [`ObjectId::handles_of`]); object sequence numbers never reach it.
const ACTOR_HANDLES: u64 = 1 << 63;

impl ObjectId {
    /// The id under which the creator of `actor` counts the actor's handles
    /// (an entry of its reference table like an object's, never stored).
    pub(crate) fn handles_of(actor: ActorId) -> ObjectId {
        ObjectId {
            owner: actor.creator,
            seq: actor.seq | ACTOR_HANDLES,
        }
    }

    /// The actor whose handles this id counts, if it is such an id.
    pub(crate) fn counted_actor(&self) -> Option<ActorId> {
        (self.seq & ACTOR_HANDLES != 0).then_some(ActorId {
            creator: self.owner,
            seq: self.seq & !ACTOR_HANDLES,
        })
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.counted_actor() {
            Some(actor) => write!(f, "handles of {actor}"),
            None => write!(f, "object {}:{}", self.owner, self.seq),
        }
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
