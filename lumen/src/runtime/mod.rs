//! The core runtime: Ray Core's programming model (remote functions, actors,
//! immutable objects behind futures) over Lumen's transport.
//!
//! ```text
//!  main ─ lumen::init() ─► Runtime ──────────────────────────────────┐
//!           │ (cluster)       │ add::remote(&rt, ..)  put  get        │
//!           │                 ▼                                      │
//!           │   ┌──────────── core worker (core/) ────────────────┐  │
//!           │   │ pure tables: RefTable (refs.rs), TaskTable      │  │
//!           │   │ (task_table.rs), Scheduler + PlacementTable     │  │
//!           │   │ (lumen-sched); requests, borrowed values        │  │
//!           │   └──┬───────────────┬──────────────┬───────────────┘  │
//!           │  send│ RtMsg (0xA0..)│ dispatch     │ run               │
//!           ▼      ▼               │ (progress    ▼                   │
//!   lumen_launcher::bootstrap      │  thread)  executor.rs,           │
//!   (cluster.rs: embedded cluster) │           actor.rs               │
//!        Endpoint ◄────────────────┘  one-sided get of large values   │
//!                                     (store.rs, lumen-objstore)      │
//! ```
//!
//! - [`cluster`]: `init`, the embedded local cluster (spawned by the
//!   launcher's spawner, as `lumen run` does), the worker entry that runs
//!   before `main`, driver and SPMD modes, orderly exit.
//! - `refs` (private): ownership and reference counting, the pure state
//!   machine, after Ray's ownership paper (NSDI '21).
//! - `task_table` (private): tasks and actor calls in flight and what a
//!   rank's death does to them (retry or fail), pure; lineage goes here.
//! - `scheduler`, `options` (private): the placement policy, resources
//!   and placement-group types come from `lumen-sched` (pure); the task and
//!   actor options (retries, restarts, names) are the runtime's.
//! - `placement`: the [`PlacementGroup`] handle and the protocol's docs;
//!   the head's table is `lumen_sched::PlacementTable`.
//! - `core` (private): the IO shell, one file per concern (tasks,
//!   objects, actors, failures, requests, groups) around those tables.
//! - `executor`, `actor`: where tasks and actor methods run.
//! - [`ObjectRef`], [`wait`]: futures to objects.
//!
//! Imports go one way from the pure tables up: `ids`, `error`, `protocol`,
//! `refs`, `task_table`, `options`, `config` and `lumen-sched` import no
//! part of the IO shell. The shell itself is one knot on purpose: the core
//! worker (`core`) owns the executor, the actor host and the handles'
//! state, and those (`executor`, `actor`, `object_ref`, `placement`'s
//! handle) call back into it. The crate's [`LumenError`]
//! names only `runtime/error.rs`, so returning it closes no circle.
//!
//! # Modes
//! **Driver mode** ([`crate::init`]): rank 0 runs `main`; on every other
//! rank `init` serves tasks and actors until the driver's runtime is dropped,
//! then exits the process. **SPMD mode** ([`InitOptions::spmd`]): `init`
//! returns on every rank; every rank submits and serves; dropping the
//! runtime is collective (a barrier).
//!
//! # Objects
//! Values up to 100 KiB (`LUMEN_INLINE_MAX`) travel inline in replies and
//! live in the owner's table. Larger ones go into the node's shared arena
//! (`lumen-objstore`, created by the node's first rank): every rank of the
//! node reads them as zero-copy views, ranks of other nodes pull them in
//! chunks into their own arena (from any node that holds a copy: the
//! owner's answer names them all); without an arena (or when it is full)
//! they stay in the producing rank's memory and are read with one copy (see
//! `store`). A rank that pulls a copy reports it to the owner, so the owner
//! knows every node holding the object. The owner frees an object exactly
//! once, when the last reference anywhere is gone (see `refs`), and then
//! deletes every copy: the primary, each pulled secondary copy (one message
//! per node; any live rank of a node can delete from its arena) and spilled
//! files with them. A copy reported after the free is deleted on arrival.
//!
//! # Actors
//! An actor runs on one rank, its calls one at a time (see `actor`). An
//! unnamed actor lives while any handle to it does, anywhere: its creator
//! counts the handles with the same ownership protocol as objects (clones,
//! handles passed to tasks and actors, handles in results, and each call in
//! flight), and when none is left the host runs the calls still queued,
//! then drops the actor (its `Drop` runs) and frees its thread (Ray's actor
//! garbage collection). A named actor is kept until `kill` or the end of
//! the job, like Ray's detached actors (Ray also collects named actors that
//! are not detached; here a name is what keeps an actor reachable).
//!
//! # Placement groups
//! [`Runtime::placement_group`] reserves bundles of resources together
//! (all or none) with Ray's strategies `PACK`, `SPREAD`, `STRICT_PACK` and
//! `STRICT_SPREAD`, each bundle on one serving rank and the strict ones
//! over nodes; tasks and actors then run in a bundle with
//! `.placement_group(&group, Some(index))` (or `None`: any bundle that
//! fits), out of its reserved CPUs, on its rank. Ordinary placement stays
//! with each submitter, but groups are decided by rank 0 (the head
//! service), which keeps what every rank offers and what the groups hold,
//! so two groups never reserve the same resources; each host's executor
//! moves a reserved bundle's CPUs out of the pool that other tasks use.
//! [`PlacementGroup::ranks`] lists the bundles' ranks in bundle order (to
//! build a communicator over them). Removing a group frees its resources,
//! fails its tasks that have not started and kills its actors. See the
//! `placement` module for the protocol and its limits.
//!
//! # Failures
//! A task whose rank dies is retried elsewhere (`max_retries`, default 3;
//! the submitter keeps the objects its arguments reference alive until the
//! task completes, so a retry finds them even when the caller dropped its
//! references). An actor whose rank dies is restarted by its creator
//! (`max_restarts`, default 0); calls in flight to the dead rank fail with
//! `ActorDied`, or are sent again to the restarted actor with
//! `max_task_retries`. An object whose owner died fails with `OwnerDied`.
//! Errors and panics in tasks come back as [`TaskError`] with the remote
//! message, rank and function.

mod actor;
mod binding;
pub mod cluster;
mod config;
mod core;
mod device;
pub(crate) mod error;
mod executor;
mod fabric;
mod ids;
pub mod mesh;
mod object_ref;
mod options;
mod placement;
mod protocol;
mod refs;
mod registry;
mod scheduler;
pub mod status;
mod store;
mod task_table;
pub mod timeline;

use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use self::core::Mode;
pub use actor::{ActorClass, ActorHandle, RawActorHandle};
pub use cluster::InitOptions;
pub use config::{BindPolicy, RuntimeConfig, RuntimeConfigError, AUTO_WAIT_SPIN};
pub use device::{DeviceRef, DeviceStats, DeviceView};
pub use error::{RuntimeError, TaskError, TaskErrorKind};
pub use ids::{ActorId, ObjectId};
pub use lumen_sched::topology::RankBinding;
pub use mesh::{mesh_communicator, mesh_member, ActorMesh, ActorNew, MeshSlice};
pub use object_ref::{wait, ObjectRef, ObjectRefFuture, SliceView, Waited};
pub use options::{
    ActorOptions, PlacementGroupScheduling, Resources, SchedulingStrategy, TaskOptions,
};
pub use placement::{PlacementGroup, PlacementGroupId, PlacementStrategy};
pub use protocol::RankStats;
pub use registry::IntoArg;

use self::core::{current_inner, owned_ref, set_current, Inner};
use crate::error::{LumenError, Result};
use cluster::Membership;
use object_ref::collect_refs;

/// What the macros' generated code uses. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use super::registry::{
        decode_args, encode_output, linkme, stable_id, ActorClassEntry, ActorMethodEntry, Arg,
        ConstructFn, MethodFn, RemoteEntry, TaskFailure, TaskReturn, ACTOR_CLASSES, ACTOR_METHODS,
        REMOTE_FUNCTIONS,
    };

    use super::ids::ObjectId;
    use super::protocol::Outcome;
    use super::refs::{ObjectState, RefTable};
    use lumen_transport::Rank;

    /// The ownership table (`refs.rs`, crate-private) stepped from outside
    /// for `lumen-benches`' criterion benchmarks of its hot steps. Values
    /// are inline; each step that yields effects returns how many (the
    /// effects themselves name crate-private types). Not a stable API.
    #[derive(Debug)]
    pub struct RefTableSteps(RefTable);

    impl RefTableSteps {
        /// An empty table for rank `me`.
        pub fn new(me: Rank) -> Self {
            RefTableSteps(RefTable::new(me))
        }

        /// A new owned object with one handle and an inline value (`put`).
        pub fn create_ready(&mut self, object: ObjectId, value: Vec<u8>) {
            self.0
                .create(object, ObjectState::Ready(Outcome::Inline(value)));
        }

        /// A new owned object with one handle whose task has not reported
        /// (a submission).
        pub fn create_pending(&mut self, object: ObjectId) {
            self.0.create(object, ObjectState::Pending);
        }

        /// (Owner) the task computing `object` returned `value` inline.
        pub fn complete_inline(&mut self, object: ObjectId, value: Vec<u8>) -> usize {
            self.0
                .complete(object, Outcome::Inline(value), Vec::new())
                .len()
        }

        /// A new `ObjectRef` handle on this rank.
        pub fn handle_added(&mut self, object: ObjectId) {
            self.0.handle_added(object);
        }

        /// An `ObjectRef` handle dropped on this rank.
        pub fn handle_dropped(&mut self, object: ObjectId) -> usize {
            self.0.handle_dropped(object).len()
        }

        /// (Owner) registers `borrower`; false when `object` is already freed.
        pub fn add_borrower(&mut self, object: ObjectId, borrower: Rank, count: u32) -> bool {
            self.0.add_borrower(object, borrower, count).is_ok()
        }

        /// (Owner) `borrower` dropped `count` registrations.
        pub fn remove_borrower(&mut self, object: ObjectId, borrower: Rank, count: u32) -> usize {
            self.0.remove_borrower(object, borrower, count).len()
        }

        /// A message carrying a reference to `object` arrived.
        pub fn hold(&mut self, object: ObjectId) {
            self.0.hold(object);
        }

        /// Gives back a hold.
        pub fn release(&mut self, object: ObjectId) -> usize {
            self.0.release(object).len()
        }

        /// Owned objects not yet freed.
        pub fn owned_count(&self) -> usize {
            self.0.owned_count()
        }

        /// Objects borrowed now.
        pub fn borrowed_count(&self) -> usize {
            self.0.borrowed_count()
        }
    }
}

/// A remote function (implemented by `#[lumen::remote]` on the type named
/// like the function).
pub trait RemoteFunction {
    /// What the function returns (`T` of `Result<T, E>`).
    type Output;
    /// Stable id.
    const ID: u64;
    /// `module::path::name`.
    const NAME: &'static str;
}

/// The owner of the job membership: leaving happens when it drops.
#[derive(Debug)]
struct Session {
    inner: Arc<Inner>,
    membership: Mutex<Option<Membership>>,
}

impl Session {
    fn leave(&self) -> Result<()> {
        let Some(membership) = self
            .membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let inner = &self.inner;
        // LUMEN_TIMELINE: rank 0 writes the job's file while every rank
        // still answers (driver: before they stop; SPMD: before the barrier).
        if inner.rank == 0 {
            if let Some(path) = timeline::job_path() {
                match timeline::write_file(&path, |sink| inner.gather_timeline(true, sink)) {
                    Ok(events) => tracing::info!(events, "timeline written to {}", path.display()),
                    Err(e) => eprintln!(
                        "lumen: cannot write the job's timeline to {}: {e}",
                        path.display()
                    ),
                }
            }
        }
        let result = match inner.mode {
            Mode::Driver => {
                inner
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                inner.broadcast_shutdown();
                inner.executor.stop();
                inner.actors.stop_all();
                membership.finish(!inner.any_dead())
            }
            Mode::Spmd => {
                // Others may still send us work until they reach the barrier.
                let left = membership.finish(!inner.any_dead());
                inner
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                inner.executor.stop();
                inner.actors.stop_all();
                left
            }
        };
        timeline::write_if_on(inner.rank, inner.node());
        timeline::reset();
        inner.store.unlink();
        let _ = set_current(None);
        result
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            tracing::warn!("leaving the job: {e}");
        }
    }
}

/// A handle to this process's runtime: submit tasks, create actors, put
/// objects. Cheap to clone. The handles returned by [`crate::init`] own the
/// job membership: when the last of them drops, the runtime shuts down.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
    session: Option<Arc<Session>>,
}

impl Runtime {
    fn with_session(inner: Arc<Inner>, membership: Membership) -> Self {
        Runtime {
            session: Some(Arc::new(Session {
                inner: inner.clone(),
                membership: Mutex::new(Some(membership)),
            })),
            inner,
        }
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.inner.rank
    }

    /// The GPU ids given to the task or actor running on this thread, as
    /// the CUDA ordinals of this rank's process, lowest first (Ray's
    /// `ray.get_gpu_ids()`): a task or actor with `num_gpus(k)` gets `k`
    /// devices of its own, one with a fraction shares a device with other
    /// fractions. Empty outside a task or actor, or when it asked for none.
    /// The rank's devices come from `LUMEN_NUM_GPUS` (devices `0..n`),
    /// else, under Slurm, from its GPU binding, else from the GPUs its
    /// topology binding puts next to its cores (its process then sees only
    /// those: `CUDA_VISIBLE_DEVICES`, see `runtime/binding.rs`).
    pub fn gpu_ids(&self) -> Vec<u32> {
        executor::gpu_ids()
    }

    /// The cores (and the GPU and NIC next to them) this rank bound itself
    /// to at start-up, or `None` when it did not bind (`LUMEN_BIND`, see
    /// [`BindPolicy`]; the reason is logged at `LUMEN_LOG=info`).
    pub fn binding(&self) -> Option<RankBinding> {
        self.inner.binding.clone()
    }

    /// Ranks in the job.
    pub fn size(&self) -> u32 {
        self.inner.size
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> u32 {
        self.inner
            .ranks
            .iter()
            .map(|r| r.node)
            .max()
            .map_or(1, |n| n + 1)
    }

    /// The node of `rank`.
    pub fn node_of(&self, rank: u32) -> Option<u32> {
        self.inner.ranks.get(rank as usize).map(|r| r.node)
    }

    /// The job's id (as in `LUMEN_JOB_ID`; names its `/dev/shm` files).
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// Driver or SPMD.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The transport endpoint (for collectives and raw messages; tags below
    /// 0x8000_0000_0000_0000 are the application's).
    pub fn endpoint(&self) -> &lumen_transport::Endpoint {
        &self.inner.endpoint
    }

    /// Stores `value` as an object owned by this rank.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        let (encoded, pinned) = collect_refs(|| bincode::serialize(value));
        let refs = pinned.ids();
        let bytes = encoded.map_err(|e| {
            LumenError::Runtime(RuntimeError::Codec {
                what: format!("a {} for put", std::any::type_name::<T>()),
                detail: e.to_string(),
            })
        })?;
        let object = self.inner.put_bytes(&bytes, refs)?;
        Ok(owned_ref(&self.inner, object))
    }

    /// Stores a slice of plain data as its raw bytes (no encoding); `get`
    /// returns a view of it.
    pub fn put_slice<T: bytemuck::Pod>(&self, values: &[T]) -> Result<ObjectRef<[T]>> {
        let object = self
            .inner
            .put_bytes(bytemuck::cast_slice::<T, u8>(values), Vec::new())?;
        Ok(owned_ref(&self.inner, object))
    }

    /// The actor registered under `name` (see `actor_options().name(..)`).
    pub fn get_actor<A: ActorClass>(&self, name: &str) -> Result<ActorHandle<A>> {
        let address = self.inner.lookup_actor(name)?.ok_or_else(|| {
            LumenError::Runtime(RuntimeError::NoSuchActor {
                name: name.to_string(),
            })
        })?;
        if address.class_id != A::CLASS_ID {
            return Err(LumenError::Runtime(RuntimeError::WrongActorClass {
                name: name.to_string(),
                expected: A::CLASS_NAME.to_string(),
                actual: address.class_name,
            }));
        }
        Ok(ActorHandle::new(RawActorHandle::new(
            address,
            Some(name.to_string()),
            None,
        )))
    }

    /// Reserves `bundles` of resources together, laid out by `strategy`
    /// (Ray's `placement_group`): all of them or none, on ranks that rank
    /// 0 chooses (see [`PlacementStrategy`]). Returns at once with the
    /// group's handle; [`PlacementGroup::ready`] waits until every bundle
    /// is reserved (a group that fits the job but not what other groups
    /// left free waits for them to be removed). Fails with
    /// [`RuntimeError::Infeasible`], naming what was asked and what the
    /// job offers, when the group can never fit. Schedule tasks and actors
    /// into it with `.placement_group(&group, bundle)`.
    ///
    /// ```no_run
    /// # use lumen::prelude::*;
    /// # use lumen::runtime::{PlacementStrategy, Resources};
    /// # #[lumen::remote] fn work(x: u64) -> u64 { x }
    /// # fn main() -> lumen::Result<()> {
    /// let rt = lumen::init()?;
    /// let pg = rt.placement_group(vec![Resources::cpus(1.0); 2], PlacementStrategy::Spread)?;
    /// pg.ready()?;
    /// let ranks = pg.ranks()?; // bundle i's rank
    /// let on_first = work::options().placement_group(&pg, Some(0)).remote(&rt, 7)?;
    /// assert_eq!(on_first.get()?, 7);
    /// rt.remove_placement_group(&pg)?;
    /// # let _ = ranks; Ok(()) }
    /// ```
    pub fn placement_group(
        &self,
        bundles: Vec<Resources>,
        strategy: PlacementStrategy,
    ) -> Result<PlacementGroup> {
        self.inner.create_group(bundles, strategy)
    }

    /// Removes a placement group (Ray's `remove_placement_group`): its
    /// resources become free again, its tasks that have not started fail
    /// (`TaskErrorKind::PlacementGroupRemoved`; running ones finish), its
    /// actors are killed. Removing a group twice is not an error.
    pub fn remove_placement_group(&self, group: &PlacementGroup) -> Result<()> {
        self.inner.remove_group(group.id())
    }

    /// Counters of `rank` (objects owned, borrowed, stored, freed; tasks run).
    pub fn stats(&self, rank: u32) -> Result<RankStats> {
        self.inner.stats(rank)
    }

    /// Writes one Chrome trace of the whole job so far to `path`, for
    /// ui.perfetto.dev (Ray's `ray timeline`): every rank's recorded
    /// events, gathered here over the runtime's own messages, each rank's
    /// clock moved onto this rank's (see [`timeline`] for how, and what is
    /// recorded). Returns the number of events written. Recording is on
    /// when the job was started with `LUMEN_TIMELINE` set; a rank that is
    /// dead or does not answer within 30 s is left out and named in the
    /// file's `otherData.missing_ranks`.
    pub fn timeline(&self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        let path = path.as_ref();
        if !timeline::on() {
            return Err(LumenError::Runtime(RuntimeError::Cluster(format!(
                "the timeline is not recording: start the job with {}=trace.json (it then also writes that file at the end)",
                timeline::VAR
            ))));
        }
        timeline::write_file(path, |sink| self.inner.gather_timeline(false, sink)).map_err(|e| {
            LumenError::Runtime(RuntimeError::Cluster(format!(
                "writing the timeline to {}: {e}",
                path.display()
            )))
        })
    }

    /// Leaves the job now (what dropping the last handle from `init` does).
    pub fn shutdown(self) -> Result<()> {
        match &self.session {
            Some(session) => session.leave(),
            None => Ok(()),
        }
    }

    /// Submits a remote function (used by `#[lumen::remote]`).
    #[doc(hidden)]
    pub fn __submit_task<F: RemoteFunction, A: Serialize>(
        &self,
        args: &A,
        options: TaskOptions,
    ) -> Result<ObjectRef<F::Output>> {
        let object = self.inner.submit(F::ID, F::NAME, args, options)?;
        Ok(owned_ref(&self.inner, object))
    }

    /// Creates an actor (used by `#[lumen::actor]`).
    #[doc(hidden)]
    pub fn __create_actor<A: ActorClass, Args: Serialize>(
        &self,
        args: &Args,
        options: ActorOptions,
    ) -> Result<ActorHandle<A>> {
        let raw = self
            .inner
            .create_actor(A::CLASS_ID, A::CLASS_NAME, args, options)?;
        Ok(ActorHandle::new(raw))
    }
}

/// The runtime of this process (inside tasks and actors, for nested
/// submissions). The handle does not keep the job alive.
pub fn current() -> Result<Runtime> {
    current_inner()
        .map(|inner| Runtime {
            inner,
            session: None,
        })
        .ok_or(LumenError::Runtime(RuntimeError::NoRuntime))
}
