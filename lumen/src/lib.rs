//! Lumen: Ray Core's programming model (tasks, actors, objects) as an HPC
//! runtime. This crate is the facade and the core runtime.
//!
//! **Owns**: [`init`] and the [`Runtime`]; remote functions, actors and
//! [`ObjectRef`]s ([`runtime`]: the core worker of each rank, in
//! `runtime/core/`, one file per concern, around the pure ownership and
//! task tables); the [`LumenError`] users see; the `lumen` command line
//! (`run`, `submit`, and `bench`, which runs the `lumen-bench` executable).
//!
//! **Built on, and re-exports where users name them**: `lumen-launcher`
//! ([`bootstrap`], [`submit`]), `lumen-sched` ([`Resources`],
//! [`PlacementStrategy`]), `lumen-transport` ([`transport`]),
//! `lumen-collectives` ([`collectives`]), `lumen-objstore` and
//! `lumen-macros`. **Must not depend on** `lumen-benches` (the benchmarks
//! depend on this crate) or on `lumen-testkit` outside its tests.
//!
//! ```no_run
//! use lumen::prelude::*;
//!
//! #[lumen::remote]
//! fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! #[lumen::actor]
//! struct Counter {
//!     n: u64,
//! }
//!
//! #[lumen::actor]
//! impl Counter {
//!     fn new(start: u64) -> Self {
//!         Counter { n: start }
//!     }
//!     fn incr(&mut self, by: u64) -> u64 {
//!         self.n += by;
//!         self.n
//!     }
//! }
//!
//! fn main() -> lumen::Result<()> {
//!     let rt = lumen::init()?; // bare: an embedded local cluster; else joins the job
//!     let sum = add::remote(&rt, 1, 2)?; // ObjectRef<u64>
//!     let more = add::options().max_retries(1).remote(&rt, &sum, 10)?; // a ref as argument
//!     let big = rt.put_slice(&vec![1.0f32; 1 << 20])?; // ObjectRef<[f32]>
//!     let counter = Counter::new_remote(&rt, 10)?; // ActorHandle<Counter>
//!     let n = counter.incr(5)?; // ObjectRef<u64>; calls run in order
//!     println!("{} {} {} {}", sum.get()?, more.get()?, n.get()?, big.get()?.len());
//!     Ok(())
//! }
//! ```
//!
//! The transport underneath, used directly:
//!
//! ```no_run
//! let job = lumen::bootstrap::join()?;
//! let ep = &job.endpoint;
//! if job.rank() == 0 {
//!     for peer in 1..job.size() {
//!         ep.send(peer, 1, b"hello")?;
//!     }
//! } else {
//!     let m = ep.recv(lumen_transport::Source::Rank(0), 1)?;
//!     assert_eq!(m.data, b"hello");
//! }
//! job.finish()?;
//! # Ok::<(), lumen::LumenError>(())
//! ```

pub use lumen_launcher::bootstrap;
pub mod error;
pub mod runtime;
pub use lumen_launcher::submit;

pub use error::{LumenError, Result};
pub use lumen_macros::{actor, remote};
/// How a device object reached its reader ([`DeviceView::path`]).
pub use lumen_objstore::device::path::TransferPath;
#[doc(hidden)]
pub use runtime::__private;
pub use runtime::{
    current, wait, ActorHandle, ActorOptions, DeviceRef, DeviceStats, DeviceView, InitOptions,
    IntoArg, ObjectRef, PlacementGroup, PlacementStrategy, Resources, Runtime, TaskOptions,
};

/// Starts the runtime in driver mode: joins the job this process was
/// launched in (`lumen run`, `srun`, `mpirun`), or, started bare, starts an
/// embedded local cluster of `LUMEN_NUM_WORKERS` (default: one per core)
/// worker processes. Rank 0 returns; on every other rank `init` serves
/// tasks and actors until rank 0's runtime is dropped, then exits the
/// process. See [`runtime`] and [`InitOptions`] (SPMD mode).
pub fn init() -> Result<Runtime> {
    InitOptions::new().init()
}

/// The names most programs need: `use lumen::prelude::*;`.
pub mod prelude {
    pub use crate::runtime::{ActorHandle, ObjectRef, RemoteFunction, Runtime};
    pub use crate::{actor, remote, wait, LumenError};
}
pub use lumen_collectives as collectives;
pub use lumen_sched::shard;
pub use lumen_transport as transport;
pub use runtime::{mesh_communicator, mesh_member, ActorMesh};

/// The communicator of every rank of a joined job (collective: every rank
/// calls it once; clone the result to share it). Settings come from the
/// `LUMEN_COLL_*` variables, see [`collectives::config`].
pub fn world_communicator(
    job: &bootstrap::Job,
) -> std::result::Result<collectives::Communicator, collectives::CollectiveError> {
    collectives::Communicator::world(job.endpoint.clone())
}

/// The communicator of the ranks hosting `group`'s bundles: each rank once,
/// in the order of its first bundle (communicator rank `i` is the `i`-th
/// distinct rank of [`runtime::PlacementGroup::ranks`]). Collective over
/// those ranks only (`MPI_Comm_create_group`): call it from a task or actor
/// on every one of them — typically one actor per bundle, as model shards
/// are — with the same `tag`; other ranks do not take part. Groups built
/// concurrently on shared ranks need different tags.
pub fn placement_communicator(
    group: &runtime::PlacementGroup,
    tag: u16,
) -> Result<collectives::Communicator> {
    let rt = runtime::current()?;
    let mut ranks: Vec<u32> = Vec::new();
    for rank in group.ranks()? {
        if !ranks.contains(&rank) {
            ranks.push(rank);
        }
    }
    let parent = collectives::Communicator::world_handle(rt.endpoint().clone())?;
    Ok(parent.create_group(&ranks, tag)?)
}
