//! Errors of the runtime. [`TaskError`] crosses the wire (a failure at the
//! executing rank is stored as the task's result and handed to every `get`);
//! [`RuntimeError`] is what a call returns locally.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ids::{ActorId, ObjectId};
use lumen_sched::PlacementGroupId;

/// Why a task, an actor call or an actor creation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The function returned `Err`.
    Error,
    /// The function panicked; the rank keeps serving.
    Panic,
    /// The executing rank has no function (or method, or class) with this id:
    /// it runs a different binary.
    UnknownFunction,
    /// The arguments or the result could not be (de)serialised.
    Codec,
    /// An `ObjectRef` argument failed; its error is in the message.
    DependencyFailed,
    /// The executing rank died, `attempts` times in all (retries included).
    WorkerDied {
        /// Attempts made.
        attempts: u32,
    },
    /// `cancel()` removed the task before it ran.
    Cancelled,
    /// The actor is gone (killed, its rank died, or its constructor failed).
    ActorDied,
    /// The owner of the object died, so its value can no longer be found.
    OwnerDied,
    /// The task was queued in a placement group that was removed before
    /// it started (or sent to it after).
    PlacementGroupRemoved,
    /// The value's only copies were on ranks that died, and it is not
    /// rebuilt (a `put` value, an actor result, a task out of retries, or
    /// lineage full: see `runtime::core::lineage`).
    ObjectLost,
    /// The result encodes to more than `LUMEN_MAX_OBJECT_BYTES`.
    ObjectTooLarge,
}

/// A failure reported by the rank that ran (or was to run) a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{function} failed on rank {rank} ({kind:?}): {message}")]
pub struct TaskError {
    /// Fully qualified name of the function or method.
    pub function: String,
    /// The rank it ran on (or was placed on).
    pub rank: u32,
    /// What went wrong.
    pub kind: TaskErrorKind,
    /// The remote error or panic message.
    pub message: String,
}

/// Everything the runtime's calls can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A task or actor call failed; see [`TaskError`].
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A submission waited longer than `LUMEN_SUBMIT_TIMEOUT_MS` for room
    /// under `LUMEN_MAX_PENDING_TASKS`.
    #[error("{what} was not submitted: this rank has {pending} tasks and actor calls pending (LUMEN_MAX_PENDING_TASKS={limit}) and none finished within {waited:?} (LUMEN_SUBMIT_TIMEOUT_MS); wait for results before submitting more, or raise the limit")]
    TooManyPending {
        /// The task or call.
        what: String,
        /// Pending when it gave up.
        pending: usize,
        /// The limit.
        limit: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// A value larger than `LUMEN_MAX_OBJECT_BYTES`.
    #[error("{what} is {bytes} bytes encoded, above LUMEN_MAX_OBJECT_BYTES={limit}; split it into smaller objects or raise the limit")]
    ObjectTooLarge {
        /// Which value.
        what: String,
        /// Its encoded size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A bounded wait ran out.
    #[error("waiting for {what} timed out after {waited:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// No rank can ever satisfy the request (resources or affinity).
    #[error("no rank can run {what}: {detail}; ask for fewer resources or start ranks that have them (LUMEN_NUM_CPUS, LUMEN_NUM_GPUS, LUMEN_RESOURCES)")]
    Infeasible {
        /// The task or actor.
        what: String,
        /// Why.
        detail: String,
    },
    /// Ranks run different executables; refused at bootstrap.
    #[error("rank {rank} runs a different build (build id {theirs:016x}, rank 0 has {ours:016x}); every rank must run the same executable — rebuild and copy it to every node")]
    BuildMismatch {
        /// The rank that differs.
        rank: u32,
        /// Rank 0's build id.
        ours: u64,
        /// That rank's build id.
        theirs: u64,
    },
    /// A runtime call was made where no runtime is running.
    #[error("no Lumen runtime in this process: call lumen::init() first")]
    NoRuntime,
    /// `init` was called while a runtime is running in this process.
    #[error("a Lumen runtime is already running in this process (one per process)")]
    AlreadyInitialized,
    /// The runtime is shutting down.
    #[error("the Lumen runtime is shutting down")]
    ShuttingDown,
    /// A value could not be encoded or decoded.
    #[error("could not encode or decode {what}: {detail}")]
    Codec {
        /// What.
        what: String,
        /// Why.
        detail: String,
    },
    /// The owner of an object died; its value is gone.
    #[error("the owner (rank {}) of {object} died; its value is lost", object.owner)]
    OwnerDied {
        /// The object.
        object: ObjectId,
    },
    /// A stored value cannot be read (the node arena lost it, or a pull failed).
    #[error("{object} cannot be read: {detail}")]
    ObjectLost {
        /// The object.
        object: ObjectId,
        /// Why.
        detail: String,
    },
    /// A named actor is already registered.
    #[error("an actor named {name:?} already exists; pick another name or use get_actor")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// No actor has this name.
    #[error("no actor named {name:?} (it was never created, or it was killed)")]
    NoSuchActor {
        /// The name.
        name: String,
    },
    /// A named actor is of another class than asked for.
    #[error("actor {name:?} is a {actual}, not a {expected}")]
    WrongActorClass {
        /// The name.
        name: String,
        /// The class asked for.
        expected: String,
        /// Its class.
        actual: String,
    },
    /// An actor is gone.
    #[error("{actor} is dead: {reason}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// A rank this call needed is gone.
    #[error("rank {rank} is gone; {what} cannot complete")]
    RankDied {
        /// The rank.
        rank: u32,
        /// What failed.
        what: String,
    },
    /// The placement group was removed.
    #[error("{group} was removed")]
    PlacementGroupRemoved {
        /// The group.
        group: PlacementGroupId,
    },
    /// The placement group could not be created.
    #[error("{group} could not be created: {reason}")]
    PlacementGroupFailed {
        /// The group.
        group: PlacementGroupId,
        /// Why.
        reason: String,
    },
    /// Starting the embedded local cluster failed.
    #[error("could not start the local cluster: {0}")]
    Cluster(String),
    /// An actor mesh could not be built or used as asked.
    #[error("actor mesh: {detail}")]
    Mesh {
        /// What happened and what to change.
        detail: String,
    },
    /// A device object could not be made, moved or read (no GPU, no
    /// `cuda` feature, a full device arena, a refusing owner).
    #[error("device object on rank {rank}: {detail}")]
    Device {
        /// The rank that reports it.
        rank: u32,
        /// What happened and what to do.
        detail: String,
    },
}
