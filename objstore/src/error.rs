//! Errors of the object store.

use std::path::PathBuf;

use crate::ObjectId;

/// Everything that can go wrong in the object store. Each message says what
/// happened, to which object, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// Nothing more fits, after evicting and spilling what could be.
    #[error(
        "object store out of memory: {requested} bytes requested; arena capacity {capacity} bytes, \
         {used} in use, {pinned} of them pinned by live ObjectViews or unsealed writers{spill}. \
         Drop views you no longer need, release objects nobody references, raise the arena \
         capacity, or configure a spill directory (ArenaOptions::spill_dir)",
        spill = if *.spill_configured { "" } else { " (no spill directory configured)" }
    )]
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Heap bytes of the arena.
        capacity: u64,
        /// Heap bytes in use (block granularity).
        used: u64,
        /// Bytes that could not be evicted or spilled (pinned or unsealed).
        pinned: u64,
        /// Whether spilling to disk was possible.
        spill_configured: bool,
    },
    /// The object table has no free slot.
    #[error(
        "object table full: {slots} objects already live in arena {arena}. Release objects, or \
         create the arena with a larger ArenaOptions::max_objects"
    )]
    TableFull {
        /// Arena name.
        arena: String,
        /// Table size.
        slots: u64,
    },
    /// Every process slot of the arena is taken.
    #[error(
        "object arena {arena} is mapped by {max} live processes already, its limit; \
         run fewer ranks per node"
    )]
    TooManyProcesses {
        /// Arena name.
        arena: String,
        /// The limit.
        max: usize,
    },
    /// An object with this id already exists in the arena.
    #[error("object {id} already exists in this node's arena (ids must be unique)")]
    AlreadyExists {
        /// The id.
        id: ObjectId,
    },
    /// The id is the reserved all-zero id.
    #[error("the all-zero object id is reserved")]
    NilId,
    /// The arena does not exist (yet).
    #[error("no object arena named {name} (in /dev/shm); has the node's first rank created it?")]
    NoSuchArena {
        /// Arena name.
        name: String,
    },
    /// The segment exists but is not a valid arena of this version.
    #[error("shared segment {name} is not a usable object arena: {detail}")]
    BadArena {
        /// Arena name.
        name: String,
        /// What was wrong (magic, version, size).
        detail: String,
    },
    /// Options are invalid.
    #[error("invalid arena options: {0}")]
    InvalidOptions(String),
    /// A typed view was asked of bytes that do not form a `[T]`.
    #[error(
        "object {id} of {len} bytes cannot be viewed as [{type_name}] ({type_size} bytes each, \
         alignment {type_align}): length is not a multiple of the size or the alignment exceeds 64"
    )]
    BadCast {
        /// The object.
        id: ObjectId,
        /// Its length.
        len: u64,
        /// Element type.
        type_name: &'static str,
        /// Element size.
        type_size: usize,
        /// Element alignment.
        type_align: usize,
    },
    /// Spilling an object to disk, or restoring it, failed.
    #[error("spill file {path} of object {id}: {source}")]
    Spill {
        /// The object.
        id: ObjectId,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An OS call on the shared segment failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The transport failed during a pull or while serving one.
    #[error("pulling object {id} from rank {rank}: {source}")]
    Transport {
        /// The object.
        id: ObjectId,
        /// The rank pulled from.
        rank: u32,
        /// The transport's error.
        source: lumen_transport::TransportError,
    },
    /// The remote rank could not serve a pull.
    #[error("rank {rank} could not serve object {id}: {detail}")]
    PullRefused {
        /// The object.
        id: ObjectId,
        /// The rank pulled from.
        rank: u32,
        /// Its reason.
        detail: String,
    },
    /// A one-sided read or its setup failed (fabric errors: a dead peer,
    /// a refused key, a timeout).
    #[error("one-sided pull of object {id} from rank {rank}: {detail}")]
    Fabric {
        /// The object (nil for setup).
        id: ObjectId,
        /// The rank pulled from.
        rank: u32,
        /// The fabric's error.
        detail: String,
    },
    /// The arena's metadata is inconsistent (a bug, or a process that died
    /// inside the store in a way recovery could not repair).
    #[error("object arena {name} is corrupted: {detail}. Recreate it (restart the job's node)")]
    Corrupted {
        /// Arena name.
        name: String,
        /// What was found.
        detail: String,
    },
}
