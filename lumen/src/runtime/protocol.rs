//! The runtime's messages between ranks (one transport tag, [`RUNTIME_TAG`],
//! served by an active-message handler; bincode-encoded), and where an
//! object's value lives ([`Outcome`]).

use serde::{Deserialize, Serialize};

use lumen_transport::Rank;

use super::error::TaskError;
use super::ids::{ActorId, ObjectId};
use super::options::{Resources, TaskOptions};
use lumen_sched::GroupAnswer;
use lumen_sched::{PlacementGroupId, PlacementStrategy};

/// Tag of every runtime message (the runtime's range is 0xA000_...).
pub(crate) const RUNTIME_TAG: u64 = 0xA000_0000_0000_0001;
/// Tag of the bootstrap exchange (build ids and resources).
pub(crate) const HELLO_TAG: u64 = 0xA000_0000_0000_0002;
/// Tag nobody sends on: receiving on it with no wait tells whether a peer is gone.
pub(crate) const PROBE_TAG: u64 = 0xA000_0000_0000_0003;
/// Heartbeats of the failure detector (empty; see `core::liveness`).
pub(crate) const HEARTBEAT_TAG: u64 = 0xA000_0000_0000_0004;

/// Where a ready object's value is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded value itself (small objects, up to the inline limit).
    Inline(Vec<u8>),
    /// In the store of `rank` (see `store`).
    Stored {
        /// The rank holding the bytes.
        rank: Rank,
        /// Its handle there.
        key: u64,
        /// Bytes.
        len: u64,
        /// In the node arena (else in the rank's process memory).
        arena: bool,
    },
    /// The task failed.
    Failed(TaskError),
}

/// A task as sent to the rank that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    /// The result object (its owner is the submitter).
    pub object: ObjectId,
    /// Function id and name.
    pub function: u64,
    pub name: String,
    /// Encoded argument tuple.
    pub args: Vec<u8>,
    /// Objects referenced by `args`, registered as borrowed by the receiver.
    pub refs: Vec<ObjectId>,
    /// Device objects in `args` (and the references counting them), pulled
    /// onto the task's GPU before it runs.
    pub device_args: Vec<(super::device::DeviceMeta, ObjectId)>,
    pub options: TaskOptions,
    /// 1 for the first run.
    pub attempt: u32,
}

/// A serialisable actor handle (see `RawActorHandle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ActorAddress {
    pub id: ActorId,
    pub host: Rank,
    pub class_id: u64,
    pub class_name: String,
    /// How often a caller resends a call in flight when the host dies.
    pub max_task_retries: u32,
}

/// Per-rank facts exchanged at bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RankInfo {
    pub rank: Rank,
    pub node: u32,
    pub build_id: u64,
    pub resources: Resources,
    /// Its one-sided fabric, when it has one (see `runtime::fabric`).
    pub fabric: Option<super::fabric::FabricHello>,
    /// Its binding's NIC is on its NUMA node (NIC affinity).
    pub nic_local: bool,
}

/// Rank 0's answer to the bootstrap exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Welcome {
    /// Everyone's facts, by rank.
    Ok(Vec<RankInfo>),
    /// A rank runs another build.
    Mismatch { rank: Rank, ours: u64, theirs: u64 },
}

/// A runtime message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RtMsg {
    /// Run this task.
    Submit(TaskSpec),
    /// A task or actor call finished (to the owner of `object`).
    Done {
        object: ObjectId,
        outcome: Outcome,
        /// Objects referenced by the value, registered as borrowed by the owner.
        refs: Vec<ObjectId>,
        /// Tasks queued or running on the sending rank besides this one (its
        /// load, as the owner's scheduler sees it: `Scheduler::reported`).
        queued: u32,
    },
    /// Drop the task if it has not started.
    Cancel { object: ObjectId },
    /// Create an actor here.
    ActorCreate {
        address: ActorAddress,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        /// The placement group it is hosted in (killed when it is removed).
        placement_group: Option<PlacementGroupId>,
        /// Its bundle's index in that group, when it was pinned to one (its
        /// GPUs then come from the bundle's devices).
        bundle_index: Option<u32>,
        /// Its `num_gpus`: the host gives it that many of its devices.
        gpus: f64,
        /// Its place in an actor mesh.
        mesh: Option<Box<super::mesh::MeshMember>>,
    },
    /// Run a method of an actor hosted here; reply `Done` to `object`'s owner.
    ActorCall {
        actor: ActorId,
        method: u64,
        name: String,
        object: ObjectId,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        /// Device objects in `args`, pulled onto the actor's GPU first.
        device_args: Vec<(super::device::DeviceMeta, ObjectId)>,
    },
    /// One call to many actors, travelling as a tree (see `runtime::mesh`):
    /// the receiver is `hosts[0]`; it queues the calls of `targets` hosted
    /// here and passes the rest of `hosts` on, split into `fanout` chunks.
    MeshCall {
        hosts: Vec<Rank>,
        /// (host, actor, return object) of every call below this hop.
        targets: Vec<(Rank, ActorId, ObjectId)>,
        method: u64,
        name: String,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        fanout: u16,
    },
    /// Stop an actor hosted here (and, at its creator, never restart it).
    ActorKill { actor: ActorId },
    /// (from the creator to the host) no handle of the actor is left: stop
    /// it once the calls queued here have run.
    ActorRelease { actor: ActorId },
    /// (to the creator) where does this actor live now?
    ActorLocate { actor: ActorId, request: u64 },
    /// The creator's answer: the current host, or `None` (dead for good).
    ActorLocation { request: u64, host: Option<Rank> },
    /// (to the owner) `borrower` holds `count` more registrations of `object`;
    /// answer `Ack { request }` when `request` is given.
    AddBorrower {
        object: ObjectId,
        borrower: Rank,
        count: u32,
        request: Option<u64>,
    },
    /// (from rank 0) `rank` is dead: it exited, closed its connections, or
    /// was silent for the failure detector's bound (see `core::liveness`).
    RankDead { rank: Rank, detail: String },
    /// (to the owner) `borrower` dropped `count` registrations.
    RemoveBorrower {
        object: ObjectId,
        borrower: Rank,
        count: u32,
    },
    /// Generic acknowledgement of a request.
    Ack { request: u64, error: Option<String> },
    /// (to the owner) send me the value of `object` when it is ready.
    GetValue { object: ObjectId, request: u64 },
    /// The owner's answer to `GetValue`, with the ranks that reported
    /// secondary copies (pull sources besides the primary).
    Value {
        request: u64,
        outcome: Outcome,
        copies: Vec<Rank>,
    },
    /// (to a rank of the node holding a copy, or to the storing rank for
    /// process memory) delete the copy of the value stored by `rank` under
    /// `key`.
    FreeCopy { rank: Rank, key: u64, arena: bool },
    /// (to the owner) `holder` pulled a secondary copy of `object` (stored
    /// by `rank` under `key`) into its node's arena.
    AddCopy {
        object: ObjectId,
        holder: Rank,
        rank: Rank,
        key: u64,
    },
    /// (to rank 0) register a named actor.
    NameRegister {
        name: String,
        address: ActorAddress,
        request: u64,
    },
    /// (to rank 0) drop a name.
    NameRemove { name: String },
    /// (to rank 0) look a name up.
    NameLookup { name: String, request: u64 },
    /// Rank 0's answer to a lookup.
    NameReply {
        request: u64,
        address: Option<ActorAddress>,
    },
    /// (to rank 0, from a test or tool) report this rank's live objects.
    Stats { request: u64 },
    /// Answer to `Stats`.
    StatsReply { request: u64, stats: RankStats },
    /// (from a rank gathering the timeline) answer `ClockReply` at once.
    ClockProbe { request: u64 },
    /// This rank's clock, microseconds of `CLOCK_REALTIME`.
    ClockReply { request: u64, now_us: u64 },
    /// Send this rank's timeline events; `last`: for the job's file as
    /// the job ends (the rank then writes no file of its own).
    TimelineGet { request: u64, last: bool },
    /// Answer to `TimelineGet`.
    TimelineReply {
        request: u64,
        node: u32,
        dropped: u64,
        events: Vec<crate::runtime::timeline::Event>,
    },
    /// The driver is done: stop serving and leave.
    Shutdown,
    /// (to rank 0, the head) create a placement group; answered `PgAnswer`
    /// (`Accepted` or `Infeasible`).
    PgCreate {
        group: PlacementGroupId,
        bundles: Vec<Resources>,
        strategy: PlacementStrategy,
        request: u64,
    },
    /// (to the head) answer `PgAnswer` once the group is created (or ended).
    PgWait {
        group: PlacementGroupId,
        request: u64,
    },
    /// (to the head) remove a group; answered `PgAnswer(Removed)`.
    PgRemove {
        group: PlacementGroupId,
        request: u64,
    },
    /// The head's answer about a group.
    PgAnswer { request: u64, answer: GroupAnswer },
    /// (head to host) reserve these bundles (index, resources) here;
    /// answered `BundleReserved`.
    BundleReserve {
        group: PlacementGroupId,
        bundles: Vec<(u32, Resources)>,
    },
    /// (host to head) the bundles of `group` are reserved here.
    BundleReserved { group: PlacementGroupId },
    /// (head to host) `group` is removed: release its bundles here, fail
    /// its queued tasks, kill its actors.
    BundleRelease { group: PlacementGroupId },
}

/// Counters of one rank, for tests and tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankStats {
    /// Objects owned by this rank and not yet freed.
    pub owned_objects: u64,
    /// Objects this rank borrows.
    pub borrowed_objects: u64,
    /// Values held in this rank's process memory (large objects when the
    /// node arena is off or full).
    pub stored_values: u64,
    /// Live objects in this rank's node arena (every rank of the node).
    pub arena_objects: u64,
    /// Owned objects freed so far.
    pub freed_objects: u64,
    /// Tasks executed here.
    pub tasks_executed: u64,
    /// Actors running on this rank (until their value is dropped).
    pub actors_hosted: u64,
    /// Chunks of arena objects this rank sent to ranks of other nodes.
    pub chunks_served: u64,
    /// Objects this rank pulled from other nodes with one-sided reads
    /// (`LUMEN_FABRIC=ofi`; the others came in chunks).
    pub one_sided_pulls: u64,
    /// Owned objects rebuilt from lineage after their rank died.
    pub objects_rebuilt: u64,
    /// Tasks and actor calls this rank submitted that have not finished.
    pub tasks_pending: u64,
    /// The most of those at once (bounded by `LUMEN_MAX_PENDING_TASKS`).
    pub tasks_pending_peak: u64,
    /// Submissions that waited for room under `LUMEN_MAX_PENDING_TASKS`.
    pub submissions_waited: u64,
    /// Waits (`get`, `wait`, requests) that went to sleep: each one's
    /// answer was handed over by another thread's wake-up (the others got
    /// it on their own thread while spinning).
    pub waits_slept: u64,
    /// Times an idle executor thread went to sleep (a task then has to
    /// wake it: a hand-off).
    pub executor_sleeps: u64,
    /// Times an actor thread slept waiting for its next call (that call
    /// then woke it: a hand-off).
    pub actor_sleeps: u64,
    /// Idle executor spins that found a task (no hand-off), and that ran
    /// out and slept.
    pub idle_spins_found: u64,
    /// See `idle_spins_found`.
    pub idle_spins_empty: u64,
    /// Poll sessions begun by waiting threads (the progress thread stood
    /// by), and refused because another thread of the rank polled.
    pub poll_sessions: u64,
    /// See `poll_sessions`.
    pub polls_refused: u64,
    /// Wake-up system calls this process made ringing doorbells
    /// (`lumen_transport::doorbell_rings`).
    pub doorbell_rings: u64,
    /// Tasks and actor calls running on this rank's executor threads now.
    pub tasks_running: u64,
    /// Tasks queued at this rank's executor, not started yet.
    pub tasks_queued: u64,
    /// Time spent running the tasks that finished here, in nanoseconds.
    pub task_run_nanos: u64,
    /// Tasks and actor calls that finished here (`tasks_executed` counts
    /// them as they start): with `task_run_nanos`, the mean task time.
    pub tasks_finished: u64,
    /// Heap bytes of the node arena in use (every rank of the node).
    pub arena_used_bytes: u64,
    /// Heap bytes of the node arena (0 without one).
    pub arena_capacity: u64,
    /// Objects of the node arena spilled to disk now.
    pub arena_spilled_objects: u64,
    /// Bytes of the node arena spilled to disk now.
    pub arena_spilled_bytes: u64,
    /// Spills of the node arena since it was made.
    pub arena_spills: u64,
    /// This rank's process id.
    pub pid: u64,
    /// Tasks this rank sent again after the rank running them died.
    pub tasks_retried: u64,
    /// Actors this rank created that were restarted after their rank died.
    pub actors_restarted: u64,
    /// Object bytes this rank fetched from other ranks by one-sided reads.
    pub fetched_bytes_one_sided: u64,
    /// ... pulled in chunks into this node's arena (over shm or TCP).
    pub fetched_bytes_chunked: u64,
    /// ... read from another rank's memory on this node.
    pub fetched_bytes_shm: u64,
    /// ... read from another rank's memory on another node.
    pub fetched_bytes_tcp: u64,
}

/// Encodes a message.
pub(crate) fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Encoding plain data structs into a Vec cannot fail (no maps with
    // non-string keys, no custom serialisers); an empty message would be
    // refused by the receiver's decoder and logged there.
    bincode::serialize(message).unwrap_or_default()
}

/// Decodes a message.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod fuzz {
    //! The runtime's message decoder given mutated messages from a peer
    //! (lumen_testkit::fuzz; `LUMEN_FUZZ_ITERS` inputs): it may refuse, it
    //! may not panic, hang or allocate what the bytes do not hold.

    use super::*;
    use crate::runtime::options::TaskOptions;

    #[test]
    fn runtime_messages() {
        let object = ObjectId { owner: 2, seq: 77 };
        let spec = TaskSpec {
            object,
            function: 0xfeed,
            name: "module::task".into(),
            args: vec![1, 2, 3, 4],
            refs: vec![ObjectId { owner: 1, seq: 5 }],
            device_args: Vec::new(),
            options: TaskOptions::default(),
            attempt: 1,
        };
        let messages = [
            RtMsg::Submit(spec),
            RtMsg::Done {
                object,
                outcome: Outcome::Inline(vec![9; 20]),
                refs: vec![],
                queued: 3,
            },
            RtMsg::Done {
                object,
                outcome: Outcome::Stored {
                    rank: 1,
                    key: 4,
                    len: 1 << 20,
                    arena: true,
                },
                refs: vec![object],
                queued: 0,
            },
            RtMsg::Cancel { object },
            RtMsg::RankDead {
                rank: 4,
                detail: "rank 4 (node 2) silent".into(),
            },
            RtMsg::RemoveBorrower {
                object,
                borrower: 3,
                count: 2,
            },
            RtMsg::Ack {
                request: 9,
                error: Some("no".into()),
            },
            RtMsg::Shutdown,
        ];
        let seeds: Vec<Vec<u8>> = messages.iter().map(encode).collect();
        lumen_testkit::fuzz::fuzz(
            "runtime_messages",
            &seeds,
            lumen_testkit::fuzz::iterations(),
            |input| {
                let _ = decode::<RtMsg>(input);
                let _ = decode::<Welcome>(input);
            },
        )
        .assert_clean(std::time::Duration::from_secs(1));
    }
}
